//! The operator console: hand-written pages (HTML, CSS, vanilla JavaScript
//! under `crates/sluice-api/console/`, embedded with `include_bytes!`)
//! served under `/console/`, a cookie session opened with a pasted gateway
//! token, and server-sent events that keep the approval queue and the live
//! sessions current.
//!
//! The pages act through the same routes as the bearer API
//! (`/api/v1/approvals/{id}/approve`, `/api/v1/sessions/{id}/kill`, …): the
//! cookie only replaces the `Authorization` header, so who may see and
//! decide what is decided by the same code. What only the console needs
//! (history, timelines, recordings, audit status, client commands) lives
//! under `/console/api/`.
//!
//! Security: every response carries a Content-Security-Policy without
//! inline script; the pages insert untrusted text with `textContent` only;
//! state-changing requests need the session's CSRF token and a same-origin
//! `Origin` (see [`session`]).

mod events;
mod oidc;
pub(crate) mod session;
mod views;

use crate::server::{json, method_not_allowed, problem, read_json, Body};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use session::{ConsoleSessions, Signed};
use sluice_core::audit::{Checkpoint, CheckpointSink};
use sluice_core::sync::MutexExt;
use sluice_core::{Credentials, Gateway, Identity};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

/// The policy every response of the API listener carries: only this
/// origin's scripts, styles and connections; no inline script or style, no
/// framing, no plugins.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Where the console lives on the API listener.
pub const CONSOLE_PATH: &str = "/console/";

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/console/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../console/index.html"),
    },
    Asset {
        path: "/console/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../console/app.js"),
    },
    Asset {
        path: "/console/player.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../console/player.js"),
    },
    Asset {
        path: "/console/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../console/app.css"),
    },
];

/// Keeps the last signed checkpoint the gateway published, for the
/// console's audit page (add it to the gateway's checkpoint sinks).
#[derive(Default)]
pub struct LatestCheckpoint(std::sync::Mutex<Option<Checkpoint>>);

impl LatestCheckpoint {
    pub fn get(&self) -> Option<Checkpoint> {
        self.0.locked().clone()
    }
}

impl CheckpointSink for LatestCheckpoint {
    fn publish(&self, checkpoint: &Checkpoint) {
        *self.0.locked() = Some(checkpoint.clone());
    }
}

/// The console's state in the API server.
pub(crate) struct Console {
    pub(crate) sessions: Arc<ConsoleSessions>,
    streams: Arc<tokio::sync::Semaphore>,
    /// Event streams per person (issuer, subject): whoever holds a token
    /// can sign in (an agent too), and must not take every stream.
    streams_by_subject: Arc<std::sync::Mutex<HashMap<(String, String), usize>>>,
    pub(crate) describer: Option<crate::CommandDescriber>,
    oidc: oidc::OidcLogins,
    pub(crate) checkpoint: Option<Arc<LatestCheckpoint>>,
}

/// Event streams one person may have open (tabs, devices).
pub(crate) const MAX_EVENT_STREAMS_PER_SUBJECT: usize = 8;

/// Event streams open at once (each polls the queue a few times a second).
const MAX_EVENT_STREAMS: usize = 64;

impl Default for Console {
    fn default() -> Self {
        Console {
            sessions: Arc::new(ConsoleSessions::default()),
            streams: Arc::new(tokio::sync::Semaphore::new(MAX_EVENT_STREAMS)),
            streams_by_subject: Arc::default(),
            describer: None,
            oidc: oidc::OidcLogins::default(),
            checkpoint: None,
        }
    }
}

/// Who the console is signed in as (`GET /console/session`).
#[derive(Debug, Serialize)]
struct Me {
    subject: String,
    issuer: String,
    groups: Vec<String>,
    /// Member of `auth.admin_groups`: sees and ends every live session.
    admin: bool,
    /// Unix seconds when the token (and so this console session) expires.
    expires_at: u64,
    /// Send it back in the `x-sluice-csrf` header on every POST.
    csrf: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    token: String,
}

pub(crate) fn redirect(to: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()).boxed());
    *response.status_mut() = StatusCode::SEE_OTHER;
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    response
}

fn me(gateway: &Gateway, identity: &Identity, csrf: String) -> Me {
    Me {
        subject: identity.subject.clone(),
        issuer: identity.issuer.clone(),
        groups: identity.groups.clone(),
        admin: crate::identity::is_admin(gateway, identity),
        expires_at: identity
            .expires_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        csrf,
    }
}

fn unauthorized(detail: impl Into<String>) -> Response<Body> {
    let mut response = problem(StatusCode::UNAUTHORIZED, detail);
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie());
    response
}

impl Console {
    /// Serves a path under `/console`.
    pub(crate) async fn handle(
        &self,
        gateway: &Arc<Gateway>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let path = req.uri().path().to_string();
        if path == "/console" || path == "/console/index.html" {
            return redirect(CONSOLE_PATH);
        }
        if let Some(asset) = ASSETS.iter().find(|a| a.path == path) {
            if !matches!(*req.method(), Method::GET | Method::HEAD) {
                return method_not_allowed("GET, HEAD");
            }
            let mut response = Response::new(Full::new(Bytes::from_static(asset.body)).boxed());
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            return response;
        }
        match path.as_str() {
            "/console/session" if req.method() == Method::POST => {
                return self.sign_in(gateway, req, peer).await
            }
            "/console/session" if req.method() != Method::GET => {
                return method_not_allowed("GET, POST")
            }
            "/console/oidc/providers" | "/console/oidc/start" | oidc::CALLBACK_PATH
                if req.method() != Method::GET =>
            {
                return method_not_allowed("GET")
            }
            "/console/oidc/providers" => return oidc::providers(gateway),
            "/console/oidc/start" => return self.oidc.start(gateway, req).await,
            oidc::CALLBACK_PATH => {
                return self.oidc.callback(gateway, &self.sessions, req, peer).await
            }
            _ => {}
        }
        // Everything else needs a signed-in session.
        let signed = match self.sessions.resolve(gateway, req.headers()).await {
            Some(Ok(signed)) => signed,
            Some(Err(detail)) => return unauthorized(detail),
            // No cookie came (e.g. a cross-site navigation, which SameSite
            // keeps it from): nothing to clear, the real one stays.
            None => return problem(StatusCode::UNAUTHORIZED, "not signed in to the console"),
        };
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            if let Err(detail) = session::check_csrf(req.headers(), &signed.csrf) {
                tracing::warn!(message = "Console request refused by the CSRF check.", client = %peer, path = %crate::server::truncate(&path, 100), reason = %detail);
                return problem(StatusCode::FORBIDDEN, detail);
            }
        }
        match path.as_str() {
            "/console/session" => json(
                StatusCode::OK,
                &me(gateway, &signed.identity, signed.csrf.clone()),
            ),
            "/console/session/end" => {
                if req.method() != Method::POST {
                    return method_not_allowed("POST");
                }
                self.sessions.remove(&signed.id);
                tracing::info!(message = "Console sign-out.", subject = %signed.identity.subject, client = %peer);
                let mut response = json(StatusCode::OK, &serde_json::json!({"signed_out": true}));
                response
                    .headers_mut()
                    .insert(header::SET_COOKIE, session::clear_cookie());
                response
            }
            "/console/events" => {
                if req.method() != Method::GET {
                    return method_not_allowed("GET");
                }
                events::stream(self, gateway, signed).await
            }
            _ => views::handle(gateway, &signed, self.checkpoint.as_deref(), req).await,
        }
    }

    async fn sign_in(
        &self,
        gateway: &Gateway,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        // A cross-site page must not sign a browser in either (login CSRF);
        // JSON bodies also need a CORS preflight this listener never grants.
        if let Err(detail) = session::check_origin(req.headers()) {
            return problem(StatusCode::FORBIDDEN, detail);
        }
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !is_json {
            return problem(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "sign in with a JSON body {\"token\": \"…\"}",
            );
        }
        let body: SignIn = match read_json(req, "{\"token\": \"…\"}").await {
            Ok(Some(b)) => b,
            Ok(None) => return problem(StatusCode::BAD_REQUEST, "give the token"),
            Err(r) => return r,
        };
        let token = body.token.trim().to_string();
        let identity = match gateway
            .authenticate(&Credentials {
                user: String::new(),
                token: token.clone(),
            })
            .await
        {
            Ok(identity) => identity,
            Err(e) => {
                tracing::warn!(message = "Console sign-in refused.", client = %peer, reason = %e);
                return problem(
                    StatusCode::UNAUTHORIZED,
                    format!("the token was refused: {e}"),
                );
            }
        };
        if identity.connections.is_some() {
            // Exchanged tokens are handed to agents: not a console identity.
            return problem(
                StatusCode::FORBIDDEN,
                "a token narrowed to connections cannot sign in to the console; use your own token (sluice login or sluice token issue)",
            );
        }
        let (id, csrf) = match self.sessions.create(token, &identity) {
            Ok(pair) => pair,
            Err(e) => return problem(StatusCode::SERVICE_UNAVAILABLE, e),
        };
        tracing::info!(message = "Console sign-in.", subject = %identity.subject, issuer = %identity.issuer, client = %peer);
        let mut response = json(StatusCode::OK, &me(gateway, &identity, csrf));
        if let Some(cookie) = session::set_cookie(&id, identity.expires_at) {
            response.headers_mut().insert(header::SET_COOKIE, cookie);
        }
        response
    }
}

/// Resolves the console session of a bearer-less `/api/v1` request, and
/// checks CSRF on a state-changing one: the console acts through the same
/// routes as the CLI.
pub(crate) async fn api_identity(
    console: &Console,
    gateway: &Gateway,
    req: &Request<Incoming>,
) -> Option<Result<Identity, Response<Body>>> {
    let result = console.sessions.resolve(gateway, req.headers()).await?;
    Some(match result {
        Err(detail) => Err(unauthorized(detail)),
        Ok(Signed { identity, csrf, .. }) => {
            if matches!(*req.method(), Method::GET | Method::HEAD) {
                Ok(identity)
            } else {
                match session::check_csrf(req.headers(), &csrf) {
                    Ok(()) => Ok(identity),
                    Err(detail) => {
                        tracing::warn!(message = "API request with a console cookie refused by the CSRF check.", path = %crate::server::truncate(req.uri().path(), 100), reason = %detail);
                        Err(problem(StatusCode::FORBIDDEN, detail))
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests;
