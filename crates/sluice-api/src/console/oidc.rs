//! Console sign-in with an identity provider: the authorization code grant
//! with PKCE against an `[auth.oidc]` provider that has a `client_id`.
//!
//! `GET /console/oidc/start?issuer=…` remembers a state and a PKCE
//! verifier server-side, binds the state to the browser with a short-lived
//! `__Host-sluice_oidc` cookie (`SameSite=Lax`: it must come back on the
//! provider's top-level redirect) and sends the browser to the provider.
//! `GET /console/oidc/callback` checks the cookie against the state (one
//! use), trades the code, and signs the console in with the access token
//! exactly as a pasted token: `Gateway::authenticate`, the provider's group
//! mapping, re-checked on every request.

use super::redirect;
use super::session::{self, ConsoleSessions};
use crate::server::{json, problem, truncate, Body};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use sluice_core::config::OidcProviderConfig;
use sluice_core::sync::MutexExt;
use sluice_core::{Credentials, Gateway};
use sluice_oidc::http::HttpClient;
use sluice_oidc::login::LoginClient;
use sluice_oidc::Discovery;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const STATE_COOKIE: &str = "__Host-sluice_oidc";
/// A sign-in must come back from the provider within this time.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(600);
/// Sign-ins under way at once; the oldest is dropped beyond it.
const MAX_PENDING: usize = 1_000;
pub(crate) const CALLBACK_PATH: &str = "/console/oidc/callback";

struct Pending {
    issuer: String,
    verifier: String,
    redirect_uri: String,
    started: Instant,
}

/// Sign-ins waiting for the provider's redirect.
#[derive(Default)]
pub(crate) struct OidcLogins {
    pending: Mutex<HashMap<String, Pending>>,
}

#[derive(Serialize)]
struct ProviderView {
    issuer: String,
    start: String,
}

fn browser_clients(gateway: &Gateway) -> Vec<OidcProviderConfig> {
    gateway
        .config()
        .auth
        .oidc
        .iter()
        .filter(|p| p.client_id.is_some())
        .cloned()
        .collect()
}

/// `GET /console/oidc/providers`: the providers the sign-in page offers.
pub(crate) fn providers(gateway: &Gateway) -> Response<Body> {
    let list: Vec<ProviderView> = browser_clients(gateway)
        .into_iter()
        .map(|p| ProviderView {
            start: format!(
                "/console/oidc/start?issuer={}",
                sluice_oidc::http::form_component(&p.issuer)
            ),
            issuer: p.issuer,
        })
        .collect();
    json(StatusCode::OK, &list)
}

fn login_client(p: &OidcProviderConfig) -> Result<LoginClient, String> {
    let client_secret = match &p.client_secret {
        Some(s) => Some(s.resolve().map_err(|e| e.to_string())?),
        None => None,
    };
    Ok(LoginClient {
        issuer: p.issuer.clone(),
        client_id: p.client_id.clone().unwrap_or_default(),
        client_secret,
        scopes: p.scopes.clone().unwrap_or_else(|| vec!["openid".into()]),
        resource: p.resource.clone(),
    })
}

async fn discover(p: &OidcProviderConfig) -> Result<(HttpClient, Discovery), String> {
    let client = HttpClient::new(p.ca.as_deref()).map_err(|e| e.to_string())?;
    let discovery = Discovery::fetch(&client, &p.issuer)
        .await
        .map_err(|e| e.to_string())?;
    Ok((client, discovery))
}

/// The console's own callback URL, from the `Host` the browser used.
fn redirect_uri(req: &Request<Incoming>) -> Option<String> {
    let host = req.headers().get(header::HOST)?.to_str().ok()?;
    let plain = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    plain.then(|| format!("https://{host}{CALLBACK_PATH}"))
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            (
                crate::server::decode(k),
                crate::server::decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

fn state_cookie(headers: &hyper::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == STATE_COOKIE)
        .map(|(_, v)| v.trim().to_string())
}

impl OidcLogins {
    /// `GET /console/oidc/start?issuer=…`.
    pub(crate) async fn start(&self, gateway: &Gateway, req: Request<Incoming>) -> Response<Body> {
        let q = query(&req);
        let wanted = q.get("issuer").cloned().unwrap_or_default();
        let Some(provider) = browser_clients(gateway)
            .into_iter()
            .find(|p| p.issuer == wanted)
        else {
            return problem(
                StatusCode::NOT_FOUND,
                format!(
                    "no [auth.oidc] provider {} with a client_id for browser sign-in",
                    truncate(&wanted, 200)
                ),
            );
        };
        let Some(redirect_uri) = redirect_uri(&req) else {
            return problem(StatusCode::BAD_REQUEST, "the request has no usable Host");
        };
        let login = match login_client(&provider) {
            Ok(l) => l,
            Err(e) => return problem(StatusCode::SERVICE_UNAVAILABLE, e),
        };
        let discovery = match discover(&provider).await {
            Ok((_, d)) => d,
            Err(e) => {
                return problem(
                    StatusCode::BAD_GATEWAY,
                    format!("the identity provider could not be reached: {e}"),
                )
            }
        };
        let web = match login.web_start(&discovery, &redirect_uri) {
            Ok(w) => w,
            Err(e) => return problem(StatusCode::BAD_GATEWAY, e.to_string()),
        };
        {
            let mut pending = self.pending.locked();
            pending.retain(|_, p| p.started.elapsed() < LOGIN_TIMEOUT);
            if pending.len() >= MAX_PENDING {
                // Refuse rather than evict: a flood of starts (no sign-in is
                // needed to send them) must not cancel people mid-login.
                return problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many sign-ins in progress; try again in a few minutes",
                );
            }
            pending.insert(
                web.state.clone(),
                Pending {
                    issuer: provider.issuer.clone(),
                    verifier: web.verifier.clone(),
                    redirect_uri,
                    started: Instant::now(),
                },
            );
        }
        let mut response = Response::new(http_body_util::BodyExt::boxed(
            http_body_util::Full::new(bytes::Bytes::new()),
        ));
        *response.status_mut() = StatusCode::SEE_OTHER;
        let headers = response.headers_mut();
        match HeaderValue::from_str(&web.url) {
            Ok(v) => headers.insert(header::LOCATION, v),
            Err(_) => {
                return problem(
                    StatusCode::BAD_GATEWAY,
                    "the authorization URL is not a valid header",
                )
            }
        };
        if let Ok(v) = HeaderValue::from_str(&format!(
            "{STATE_COOKIE}={}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Lax",
            web.state,
            LOGIN_TIMEOUT.as_secs()
        )) {
            headers.insert(header::SET_COOKIE, v);
        }
        response
    }

    /// `GET /console/oidc/callback?code=…&state=…`.
    pub(crate) async fn callback(
        &self,
        gateway: &Gateway,
        sessions: &ConsoleSessions,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let q = query(&req);
        let state = q.get("state").cloned().unwrap_or_default();
        // The redirect must come back to the browser that started it.
        if state.is_empty() || state_cookie(req.headers()).as_deref() != Some(state.as_str()) {
            return problem(
                StatusCode::FORBIDDEN,
                "this sign-in was not started in this browser; start it again from the console",
            );
        }
        let Some(pending) = self.pending.locked().remove(&state) else {
            return problem(
                StatusCode::BAD_REQUEST,
                "this sign-in expired or was already used; start it again from the console",
            );
        };
        if pending.started.elapsed() >= LOGIN_TIMEOUT {
            return problem(
                StatusCode::BAD_REQUEST,
                "this sign-in expired; start it again",
            );
        }
        if let Some(error) = q.get("error") {
            return problem(
                StatusCode::UNAUTHORIZED,
                format!(
                    "the identity provider refused the sign-in: {} {}",
                    truncate(error, 100),
                    truncate(q.get("error_description").map_or("", |s| s.as_str()), 300)
                ),
            );
        }
        let Some(code) = q.get("code") else {
            return problem(StatusCode::BAD_REQUEST, "the redirect carries no code");
        };
        let Some(provider) = browser_clients(gateway)
            .into_iter()
            .find(|p| p.issuer == pending.issuer)
        else {
            return problem(
                StatusCode::NOT_FOUND,
                "the provider is no longer configured",
            );
        };
        let token = match async {
            let login = login_client(&provider)?;
            let (client, discovery) = discover(&provider).await?;
            login
                .web_finish(
                    &client,
                    &discovery,
                    &pending.redirect_uri,
                    code,
                    &pending.verifier,
                )
                .await
                .map_err(|e| e.to_string())
        }
        .await
        {
            Ok(tokens) => tokens.access_token,
            Err(e) => {
                tracing::warn!(message = "Console sign-in with the identity provider failed.", issuer = %provider.issuer, client = %peer, reason = %e);
                return problem(
                    StatusCode::BAD_GATEWAY,
                    format!("the code could not be traded: {e}"),
                );
            }
        };
        let identity = match gateway
            .authenticate(&Credentials {
                user: String::new(),
                token: token.clone(),
            })
            .await
        {
            Ok(identity) => identity,
            Err(e) => {
                return problem(
                    StatusCode::UNAUTHORIZED,
                    format!("the identity provider's access token was refused: {e}"),
                )
            }
        };
        let (id, _csrf) = match sessions.create(token, &identity) {
            Ok(pair) => pair,
            Err(e) => return problem(StatusCode::SERVICE_UNAVAILABLE, e),
        };
        tracing::info!(message = "Console sign-in with the identity provider.", subject = %identity.subject, issuer = %identity.issuer, client = %peer);
        let mut response = redirect(super::CONSOLE_PATH);
        let headers = response.headers_mut();
        if let Some(cookie) = session::set_cookie(&id, identity.expires_at) {
            headers.append(header::SET_COOKIE, cookie);
        }
        headers.append(
            header::SET_COOKIE,
            HeaderValue::from_static(
                "__Host-sluice_oidc=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Lax",
            ),
        );
        response
    }
}
