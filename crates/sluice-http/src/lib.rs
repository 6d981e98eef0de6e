//! Sluice's HTTP API gateway: a reverse proxy routed by `/<connection>/…`
//! (or by host), where the client's bearer token authenticates to Sluice and
//! the connection's own credential is injected upstream; every request is a
//! command decided by the core pipeline, every response masked by content
//! type and recorded.
//!
//! Connection kinds customise the proxy through [`Flavor`] (the Kubernetes
//! gateway is one); [`HttpFlavor`] is plain HTTP.

pub mod body;
pub mod flavor;
pub mod inject;
pub mod masking;
pub mod overrides;
pub mod path;
pub mod policy;
pub mod problem;
mod proxy;
mod server;
mod session;
pub mod settings;
pub mod upstream;
pub mod ws;

pub use flavor::{
    Body, BodyPlan, BodyTransformer, BoxError, Direction, Flavor, FlavorRegistry, Frame, FrameHook,
    MaskingContext, RequestBody, RequestHead, ResponsePlan, TransformError,
};
pub use policy::http_match_key;
pub use problem::{Problem, ProblemDetails, ProblemKind};

use sluice_core::config::ConnectionKind;
use sluice_core::model::{Command, CommandKind};
use sluice_core::Gateway;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Why the HTTP listener could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Tls(#[from] sluice_core::tls::TlsError),
    #[error("http listener: {0}")]
    Config(String),
    #[error("http listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Size and time limits of the listener (see docs/http.md).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// A request's head must arrive within this time (slowloris).
    pub header_read_timeout: Duration,
    /// The TLS handshake must finish within this time.
    pub tls_handshake_timeout: Duration,
    /// Request header fields accepted.
    pub max_headers: usize,
    /// Total size of a request head (request line and headers).
    pub max_header_bytes: usize,
    /// Request bodies larger than this are refused (413).
    pub max_request_body: u64,
    /// The most a response body is buffered for masking (JSON documents,
    /// flavors' transformers); a larger body that must be masked is refused.
    pub max_masked_body: usize,
    /// Upstream exchange time unless the connection sets `timeout`.
    pub default_timeout: Duration,
    /// Client connections served at once.
    pub max_connections: usize,
    /// A client connection (HTTP/1.1 keep-alive or HTTP/2) with no request
    /// in flight for this long is closed gracefully.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            max_request_body: 64 * 1024 * 1024,
            max_masked_body: 16 * 1024 * 1024,
            default_timeout: Duration::from_secs(60),
            max_connections: 1024,
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// The HTTP listener: `Gateway` + flavors per connection kind.
pub struct HttpServer {
    gateway: Arc<Gateway>,
    flavors: FlavorRegistry,
    limits: Limits,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("kinds", &self.flavors)
            .finish_non_exhaustive()
    }
}

impl HttpServer {
    /// A listener serving the connection kinds in `flavors` (see [`default_flavors`]).
    pub fn new(gateway: Arc<Gateway>, flavors: FlavorRegistry) -> Self {
        let limits = Limits {
            idle_timeout: gateway.config().listen.idle_timeout.0,
            ..Limits::default()
        };
        HttpServer {
            gateway,
            flavors,
            limits,
        }
    }

    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Serves clients (HTTPS, HTTP/1.1 and HTTP/2 by ALPN) until the listener fails.
    pub async fn serve(self, listener: TcpListener) -> Result<(), HttpError> {
        let shared = Arc::new(server::Shared::new(self.gateway, self.flavors, self.limits));
        server::serve(shared, listener).await
    }
}

/// Serves `listener` with `gateway` and the flavors in `flavors`.
pub async fn serve(
    gateway: Arc<Gateway>,
    flavors: FlavorRegistry,
    listener: TcpListener,
) -> Result<(), HttpError> {
    HttpServer::new(gateway, flavors).serve(listener).await
}

/// The registry with plain HTTP only (`ConnectionKind::Http` → [`HttpFlavor`]).
pub fn default_flavors() -> FlavorRegistry {
    let mut flavors = FlavorRegistry::new();
    flavors.insert(
        ConnectionKind::Http,
        Arc::new(HttpFlavor) as Arc<dyn Flavor>,
    );
    flavors
}

/// Plain HTTP: one command per request, `METHOD /path?query`.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpFlavor;

impl Flavor for HttpFlavor {
    fn commands(&self, head: &RequestHead<'_>) -> Result<Vec<Command>, Problem> {
        Ok(vec![http_command(head)])
    }

    /// Text frames from the upstream go through the detectors when masking is on.
    fn frame_hook(
        &self,
        _head: &RequestHead<'_>,
        masking: &MaskingContext<'_>,
    ) -> Option<Box<dyn FrameHook>> {
        masking
            .masker
            .map(|m| Box::new(ws::TextFrameMasking::new(m.clone())) as Box<dyn FrameHook>)
    }
}

/// The command for an HTTP request: kind `HttpRequest` with the method and
/// the normalised path; text `METHOD /path?query` (the approval fingerprint).
pub fn http_command(head: &RequestHead<'_>) -> Command {
    let text = match head.query {
        Some(q) if !q.is_empty() => format!("{} {}?{q}", head.method, head.path),
        _ => format!("{} {}", head.method, head.path),
    };
    Command {
        kind: CommandKind::HttpRequest {
            method: head.method.to_string(),
            path: head.path.to_string(),
        },
        text,
        context: Vec::new(),
    }
}
