//! Live sessions, revocation and token exchange.
//!
//! Who may do what (documented in docs/identity.md):
//! - list live sessions: everyone sees their own (same subject and issuer);
//!   members of `auth.admin_groups` see all;
//! - end a session: its owner, or an admin;
//! - revoke a token: anyone who presents the token itself (possession is
//!   proof, as in RFC 7009); by id only: an admin, or the owner of a live
//!   session opened with that id;
//! - exchange: the caller trades its own token (or a `subject_token` it
//!   holds) for a narrower one; it must be allowed to open the connection.

use crate::server::{json, method_not_allowed, problem, read_json, truncate, Body};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use sluice_core::gateway::ExchangeError;
use sluice_core::session::LiveSessionInfo;
use sluice_core::{AuthError, Credentials, Gateway, Identity};
use std::net::SocketAddr;
use std::time::{Duration, UNIX_EPOCH};

pub(crate) enum Route {
    Sessions,
    Kill(String),
    Revoke,
    Exchange,
}

pub(crate) fn route(path: &str) -> Option<Route> {
    let path = path.trim_end_matches('/');
    match path {
        "/api/v1/sessions" => return Some(Route::Sessions),
        "/api/v1/tokens/revoke" => return Some(Route::Revoke),
        "/api/v1/token/exchange" => return Some(Route::Exchange),
        _ => {}
    }
    let id = path
        .strip_prefix("/api/v1/sessions/")?
        .strip_suffix("/kill")?;
    (!id.is_empty() && !id.contains('/')).then(|| Route::Kill(id.to_string()))
}

/// `POST /api/v1/sessions/{id}/kill` body.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KillRequest {
    pub reason: Option<String>,
}

/// `POST /api/v1/tokens/revoke` body: `token_id` (a `jti`) or `token`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeResponse {
    pub token_id: String,
    /// Live sessions told to end.
    pub sessions_ended: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KillResponse {
    pub session_id: String,
    pub ended: bool,
}

/// `POST /api/v1/token/exchange` body (RFC 8693 in spirit: the subject
/// token is the bearer token unless `subject_token` is given; the audience
/// is one connection).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeRequest {
    pub connection: String,
    /// `5m`, `1h`; default 15m, capped by the subject token's own expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_token: Option<String>,
}

/// RFC 8693 section 2.2.1 response fields.
#[derive(Clone, Serialize, Deserialize)]
pub struct ExchangeResponse {
    pub access_token: String,
    pub issued_token_type: String,
    pub token_type: String,
    pub expires_in: u64,
    /// The connection the token opens (alone).
    pub connection: String,
    pub token_id: String,
}

impl std::fmt::Debug for ExchangeResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeResponse")
            .field("access_token", &"<redacted>")
            .field("connection", &self.connection)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

const DEFAULT_EXCHANGE_TTL: Duration = Duration::from_secs(15 * 60);

/// A token narrowed to connections (handed to agents) never carries its
/// owner's admin role.
pub(crate) fn is_admin(gateway: &Gateway, identity: &Identity) -> bool {
    identity.connections.is_none() && identity.in_any_group(&gateway.config().auth.admin_groups)
}

/// Whether `id` is a session open on another node of a shared store that
/// the caller may end (an admin, or its own subject at its own issuer).
async fn open_on_another_node(
    gateway: &Gateway,
    id: &str,
    caller: &Identity,
) -> Result<bool, sluice_core::StoreError> {
    let Some(s) = gateway.store().session(id).await? else {
        return Ok(false);
    };
    Ok(s.ended_at_ms.is_none()
        && !s.node.is_empty()
        && (is_admin(gateway, caller)
            || (s.subject == caller.subject && s.issuer == caller.issuer)))
}

pub(crate) fn owns(session: &LiveSessionInfo, identity: &Identity) -> bool {
    session.subject == identity.subject && session.issuer == identity.issuer
}

fn who(identity: &Identity) -> String {
    if identity.issuer == sluice_core::token::GATEWAY_ISSUER {
        identity.subject.clone()
    } else {
        format!("{} ({})", identity.subject, identity.issuer)
    }
}

pub(crate) async fn handle(
    gateway: &Gateway,
    route: Route,
    req: Request<Incoming>,
    identity: &Identity,
    peer: SocketAddr,
) -> Response<Body> {
    match route {
        Route::Sessions => {
            if req.method() != Method::GET {
                return method_not_allowed("GET");
            }
            let admin = is_admin(gateway, identity);
            let visible: Vec<LiveSessionInfo> = gateway
                .live_sessions()
                .list()
                .into_iter()
                .filter(|s| admin || owns(s, identity))
                .collect();
            json(StatusCode::OK, &visible)
        }
        Route::Kill(id) => {
            if req.method() != Method::POST {
                return method_not_allowed("POST");
            }
            let body: KillRequest = match read_json(req, "{\"reason\": \"…\"}").await {
                Ok(b) => b.unwrap_or_default(),
                Err(r) => return r,
            };
            let live = gateway
                .live_sessions()
                .list()
                .into_iter()
                .find(|s| s.id == id);
            let may_end = match &live {
                Some(s) => is_admin(gateway, identity) || owns(s, identity),
                None => match open_on_another_node(gateway, &id, identity).await {
                    Ok(may) => may,
                    Err(e) => return problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
                },
            };
            // Sessions the caller may not end do not exist for them.
            if !may_end {
                return problem(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no live session {} that you may end on this gateway (see GET /api/v1/sessions)",
                        truncate(&id, 80)
                    ),
                );
            }
            let reason = match body.reason.filter(|r| !r.trim().is_empty()) {
                Some(r) => format!("ended by {}: {}", who(identity), truncate(&r, 200)),
                None => format!("ended by {}", who(identity)),
            };
            let ended = match gateway.end_session_anywhere(&id, &reason).await {
                Ok(ended) => ended,
                Err(e) => return problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            };
            tracing::warn!(message = "Session ended through the API.", session = %id, by = %who(identity), client = %peer);
            let session = live.map(|s| s.id).unwrap_or(id);
            json(
                StatusCode::OK,
                &KillResponse {
                    session_id: session,
                    ended,
                },
            )
        }
        Route::Revoke => {
            if req.method() != Method::POST {
                return method_not_allowed("POST");
            }
            let body: RevokeRequest =
                match read_json(req, "{\"token_id\": \"…\"} or {\"token\": \"…\"}").await {
                    Ok(Some(b)) => b,
                    Ok(None) => {
                        return problem(StatusCode::BAD_REQUEST, "give token_id (a jti) or token")
                    }
                    Err(r) => return r,
                };
            revoke(gateway, body, identity).await
        }
        Route::Exchange => {
            if req.method() != Method::POST {
                return method_not_allowed("POST");
            }
            let body: ExchangeRequest =
                match read_json(req, "{\"connection\": \"appdb\", \"ttl\": \"5m\"}").await {
                    Ok(Some(b)) => b,
                    Ok(None) => return problem(StatusCode::BAD_REQUEST, "give the connection"),
                    Err(r) => return r,
                };
            exchange(gateway, body, identity).await
        }
    }
}

async fn revoke(gateway: &Gateway, body: RevokeRequest, caller: &Identity) -> Response<Body> {
    let reason = body.reason.filter(|r| !r.trim().is_empty());
    let by = who(caller);
    let (token_id, expires_at) = match (body.token_id, body.token) {
        (Some(_), Some(_)) => {
            return problem(StatusCode::BAD_REQUEST, "give token_id or token, not both")
        }
        (None, None) => return problem(StatusCode::BAD_REQUEST, "give token_id (a jti) or token"),
        (None, Some(token)) => {
            // Whoever holds a token may revoke it; it must verify, so that
            // nobody fills the list with made-up ids.
            match gateway
                .authenticate(&Credentials {
                    user: String::new(),
                    token,
                })
                .await
            {
                Ok(identity) => (identity.token_id, Some(identity.expires_at)),
                Err(AuthError::Revoked) => {
                    return problem(StatusCode::CONFLICT, "that token is already revoked")
                }
                Err(e) => {
                    return problem(
                        StatusCode::BAD_REQUEST,
                        format!("the token to revoke was refused: {e}"),
                    )
                }
            }
        }
        (Some(id), None) => {
            let id = id.trim().to_string();
            if id.is_empty() || id.len() > 256 {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "token_id must be 1 to 256 characters",
                );
            }
            let sessions: Vec<LiveSessionInfo> = gateway
                .live_sessions()
                .list()
                .into_iter()
                .filter(|s| s.token_id == id)
                .collect();
            let owner = !sessions.is_empty() && sessions.iter().all(|s| owns(s, caller));
            if !is_admin(gateway, caller) && !owner {
                return problem(
                    StatusCode::FORBIDDEN,
                    "revoking a token by id needs membership of auth.admin_groups (or present the token itself)",
                );
            }
            let expires_at = sessions
                .iter()
                .map(|s| UNIX_EPOCH + Duration::from_secs(s.expires_at))
                .max();
            (id, expires_at)
        }
    };
    match gateway
        .revoke_token(&token_id, expires_at, &by, reason)
        .await
    {
        Ok(sessions_ended) => json(
            StatusCode::OK,
            &RevokeResponse {
                token_id,
                sessions_ended,
            },
        ),
        // Not persisted: say so rather than pretend.
        Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn exchange(gateway: &Gateway, body: ExchangeRequest, caller: &Identity) -> Response<Body> {
    let subject = match body.subject_token {
        Some(token) => match gateway
            .authenticate(&Credentials {
                user: String::new(),
                token,
            })
            .await
        {
            Ok(identity) => identity,
            Err(e) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    format!("the subject_token was refused: {e}"),
                )
            }
        },
        None => caller.clone(),
    };
    let ttl = match body.ttl.as_deref() {
        None => DEFAULT_EXCHANGE_TTL,
        Some(t) => match humantime::parse_duration(t) {
            Ok(d) => d,
            Err(_) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    format!("ttl {:?} is not a duration like 5m or 1h", truncate(t, 40)),
                )
            }
        },
    };
    match gateway.exchange(&subject, &body.connection, ttl) {
        Ok(issued) => json(
            StatusCode::OK,
            &ExchangeResponse {
                access_token: issued.token,
                issued_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
                token_type: "Bearer".into(),
                expires_in: issued
                    .expires_at
                    .duration_since(std::time::SystemTime::now())
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                connection: body.connection,
                token_id: issued.token_id,
            },
        ),
        Err(e @ ExchangeError::Forbidden(_)) => problem(StatusCode::FORBIDDEN, e.to_string()),
        Err(e @ ExchangeError::Invalid(_)) => problem(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(matches!(route("/api/v1/sessions"), Some(Route::Sessions)));
        assert!(matches!(route("/api/v1/sessions/"), Some(Route::Sessions)));
        assert!(matches!(route("/api/v1/sessions/abc/kill"), Some(Route::Kill(id)) if id == "abc"));
        assert!(route("/api/v1/sessions//kill").is_none());
        assert!(route("/api/v1/sessions/a/b/kill").is_none());
        assert!(matches!(
            route("/api/v1/tokens/revoke"),
            Some(Route::Revoke)
        ));
        assert!(matches!(
            route("/api/v1/token/exchange"),
            Some(Route::Exchange)
        ));
        assert!(route("/api/v1/approvals").is_none());
    }
}
