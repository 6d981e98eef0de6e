//! Sluice's operator API over HTTPS (`[listen] api`): the approval queue,
//! live sessions, revocation and token exchange;
//! and [`client::ApiClient`], which the `sluice approvals` commands use.
//!
//! Routes (all but `/healthz` need `Authorization: Bearer TOKEN`; errors are
//! `application/problem+json`):
//!
//! | method | path | does |
//! |---|---|---|
//! | GET | `/healthz` | `ok` |
//! | GET | `/api/v1/approvals[?all=true]` | requests the caller may decide, and their own; pending only unless `all` |
//! | GET | `/api/v1/approvals/{id}` | one request |
//! | POST | `/api/v1/approvals/{id}/approve` | body `{"reason": "…"}` optional |
//! | POST | `/api/v1/approvals/{id}/deny` | body `{"reason": "…"}` optional |
//! | GET | `/api/v1/sessions` | live sessions: the caller's own; all for `auth.admin_groups` |
//! | POST | `/api/v1/sessions/{id}/kill` | ends a live session (owner or admin); `{"reason": "…"}` optional |
//! | POST | `/api/v1/tokens/revoke` | `{"token": "…"}` (anyone holding it) or `{"token_id": "jti"}` (admin or owner) |
//! | POST | `/api/v1/token/exchange` | `{"connection": "appdb", "ttl": "5m"}`: a gateway token for that connection only |
//!
//! The operator console (see `console`, docs/console.md) is served on the
//! same listener: `/` redirects to `/console/`; the pages sign in with
//! `POST /console/session` (a token, exchanged for an `HttpOnly; Secure;
//! SameSite=Strict` cookie) and then call the routes above with that cookie
//! instead of a bearer token (a CSRF header on every POST), plus
//! `GET /console/events` (server-sent events: the approval queue and live
//! sessions) and `GET /console/api/…` (history, timeline, recordings, audit
//! status, connections).

pub mod client;
mod console;
pub mod identity;
mod problem;
mod server;

pub use console::{LatestCheckpoint, CONSOLE_PATH};
pub use problem::Problem;
pub use server::{
    ApiServer, BODY_READ_TIMEOUT, HEADER_READ_TIMEOUT, MAX_BODY_BYTES, MAX_CONNECTIONS,
    TLS_HANDSHAKE_TIMEOUT,
};

/// Describes a command for the console: given the session's protocol
/// (`postgres`, `ssh`, …) and the command text, a JSON value the page shows
/// next to the text (for SQL: each statement's classes, tables, functions),
/// or `None`.
pub type CommandDescriber =
    std::sync::Arc<dyn Fn(&str, &str) -> Option<serde_json::Value> + Send + Sync>;

/// Errors of the API server's setup and of the client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The listener certificate, or the client's CA file, could not be loaded.
    #[error(transparent)]
    Tls(#[from] sluice_core::tls::TlsError),
    /// A bad address or similar client-side setting.
    #[error("{0}")]
    Config(String),
    /// The API could not be reached (connect, TLS, timeout).
    #[error("cannot reach the Sluice API at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The API answered with an error; `detail` is its problem detail.
    #[error("{detail}")]
    Api { status: u16, detail: String },
    /// The API answered something this client does not understand.
    #[error("unexpected answer from the Sluice API: {0}")]
    Protocol(String),
}
