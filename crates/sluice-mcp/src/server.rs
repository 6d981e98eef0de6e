//! The MCP listener: HTTPS (the gateway's listener certificate), the bearer
//! check, the protected-resource metadata (RFC 9728), and the Streamable
//! HTTP transport of the official SDK behind them.

use crate::tools::{Caller, SluiceTools};
use crate::upstream::Relay;
use crate::McpError;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use sluice_core::{Credentials, Gateway};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::Service;

/// The MCP endpoint's path.
pub const ENDPOINT: &str = "/mcp";
/// RFC 9728 protected-resource metadata (the root form, and the form for `/mcp`).
pub const RESOURCE_METADATA: &str = "/.well-known/oauth-protected-resource";
/// A client must finish the TLS handshake within this time.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A request's head must arrive within this time (also closes idle keep-alive connections).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A JSON-RPC message (one POST body) larger than this is refused with 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// A request body must arrive within this time.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; further clients wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 512;

type Body = BoxBody<Bytes, Infallible>;

/// The MCP listener (HTTPS only). Tool calls go through the gateway's own
/// listeners as native clients (see `crate::tools`).
pub struct McpServer {
    gateway: Arc<Gateway>,
    tls: TlsAcceptor,
    mcp: StreamableHttpService<SluiceTools, NeverSessionManager>,
    relay: Arc<Relay>,
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServer").finish_non_exhaustive()
    }
}

impl McpServer {
    /// Builds the listener's TLS from the gateway config (`[tls]`, or the
    /// certificate generated into `state_dir/tls`) and the tool set.
    pub fn new(gateway: Arc<Gateway>) -> Result<Self, McpError> {
        let tls = sluice_core::tls::server_config(&gateway.config(), &[b"http/1.1"])?;
        let tools = SluiceTools::new(gateway.clone());
        let mut config = StreamableHttpServerConfig::default();
        // Stateless: every POST carries its own bearer token and is
        // authenticated on its own; the gateway keeps no MCP session state
        // a flood of initializes could grow.
        config.legacy_session_mode = false;
        config.json_response = true;
        config.max_request_body_bytes = MAX_BODY_BYTES;
        // Every request needs a valid token; the Host allow-list (a defence
        // for unauthenticated local servers against DNS rebinding) would
        // only refuse a gateway reached by its public name.
        config.allowed_hosts = Vec::new();
        let mcp = StreamableHttpService::new(
            move || Ok(tools.clone()),
            Arc::new(NeverSessionManager::default()),
            config,
        );
        Ok(McpServer {
            relay: Arc::new(Relay::new(gateway.clone())),
            gateway,
            tls: TlsAcceptor::from(tls),
            mcp,
        })
    }

    /// Accepts clients until the gateway drains; each connection runs in its own task.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        let listener = self
            .gateway
            .listener(listener, "mcp")
            .at_most(MAX_CONNECTIONS);
        let shared = Arc::new(Shared {
            gateway: self.gateway,
            mcp: self.mcp,
            relay: self.relay,
        });
        let tls = self.tls;
        listener
            .serve(move |tcp, peer| {
                let (shared, tls) = (shared.clone(), tls.clone());
                async move {
                    if let Err(e) = serve_connection(tcp, peer, tls, shared).await {
                        tracing::debug!(message = "MCP connection ended with an error.", client = %peer, error = %e);
                    }
                }
            })
            .await
    }
}

struct Shared {
    gateway: Arc<Gateway>,
    mcp: StreamableHttpService<SluiceTools, NeverSessionManager>,
    /// Connections of `kind = "mcp"`, at `/mcp/NAME`.
    relay: Arc<Relay>,
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: TlsAcceptor,
    shared: Arc<Shared>,
) -> Result<(), String> {
    let stream = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(&shared, req, peer).await) }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await
        .map_err(|e| e.to_string())
}

async fn handle(shared: &Shared, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path == RESOURCE_METADATA || path == format!("{RESOURCE_METADATA}{ENDPOINT}") {
        if req.method() != Method::GET {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        }
        return resource_metadata(&shared.gateway, &req);
    }
    let upstream = path
        .strip_prefix(ENDPOINT)
        .and_then(|rest| rest.strip_prefix('/'))
        .map(str::to_string);
    if path != ENDPOINT && upstream.is_none() {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: the MCP endpoint is /mcp\n",
        );
    }
    let Some(token) = bearer(&req) else {
        return unauthorized(&req, None);
    };
    let identity = match shared
        .gateway
        .authenticate(&Credentials {
            user: String::new(),
            token: token.clone(),
        })
        .await
    {
        Ok(identity) => identity,
        Err(e) => {
            tracing::info!(message = "MCP request refused: the token did not authenticate.", client = %peer, error = %e);
            return unauthorized(&req, Some(&e.to_string()));
        }
    };
    if let Some(name) = upstream {
        // An upstream MCP server behind the gateway: the relay admits
        // the caller to the connection (as every listener does).
        let (parts, body) = req.into_parts();
        let body = match read_body(body, &parts.headers).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        return shared
            .relay
            .handle(&name, &token, &parts.method, &parts.headers, &body, peer)
            .await;
    }
    // The body is read here, under the cap and a deadline, so that neither
    // a slow nor an oversized message reaches the transport.
    let (mut parts, body) = req.into_parts();
    let body = match read_body(body, &parts.headers).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    // A body that is not JSON gets JSON-RPC's parse error (the transport
    // would answer 415, which tells a client nothing about its message).
    if parts.method == Method::POST {
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
            return json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({
                    "jsonrpc": "2.0",
                    "id": null,
                    "error": { "code": -32700, "message": format!("Parse error: the message is not JSON ({e})") }
                }),
            );
        }
    }
    parts.extensions.insert(Caller {
        identity,
        token,
        client_addr: peer,
    });
    let req = Request::from_parts(parts, Full::new(body));
    let mut mcp = shared.mcp.clone();
    match mcp.call(req).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// Reads a request body under [`MAX_BODY_BYTES`] and [`BODY_READ_TIMEOUT`].
/// A body declared larger is refused before any of it is read (so a client
/// waiting for `100 Continue` gets the 413 instead of a reset upload).
async fn read_body(body: Incoming, headers: &http::HeaderMap) -> Result<Bytes, Response<Body>> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("a message may be at most {MAX_BODY_BYTES} bytes\n"),
        ));
    }
    match tokio::time::timeout(
        BODY_READ_TIMEOUT,
        Limited::new(body, MAX_BODY_BYTES).collect(),
    )
    .await
    {
        Err(_) => Err(plain(
            StatusCode::REQUEST_TIMEOUT,
            "the request body was too slow\n",
        )),
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return Err(plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("a message may be at most {MAX_BODY_BYTES} bytes\n"),
                ));
            }
            Err(plain(
                StatusCode::BAD_REQUEST,
                "the request body could not be read\n",
            ))
        }
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// The bearer token of `Authorization`, if any.
fn bearer(req: &Request<Incoming>) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_string())
}

/// `https://HOST` as the client addressed us (the `Host` header; this
/// listener serves HTTPS only).
fn origin(req: &Request<Incoming>) -> String {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    format!("https://{host}")
}

fn unauthorized(req: &Request<Incoming>, error: Option<&str>) -> Response<Body> {
    let metadata = format!("{}{RESOURCE_METADATA}{ENDPOINT}", origin(req));
    let challenge = match error {
        None => format!("Bearer resource_metadata=\"{metadata}\""),
        Some(e) => format!(
            "Bearer error=\"invalid_token\", error_description=\"{}\", resource_metadata=\"{metadata}\"",
            quoted(e)
        ),
    };
    let detail = match error {
        None => "a bearer token is required (Authorization: Bearer TOKEN): a gateway token (sluice token issue) or an access token of the configured identity provider".to_string(),
        Some(e) => format!("the bearer token was refused: {e}"),
    };
    let mut response = json(
        StatusCode::UNAUTHORIZED,
        &serde_json::json!({ "error": if error.is_some() { "invalid_token" } else { "unauthorized" }, "error_description": detail }),
    );
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// A header quoted-string's content: no quotes, backslashes or control characters.
fn quoted(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .take(200)
        .collect()
}

/// RFC 9728: this resource, the authorization servers whose tokens it
/// accepts (the configured OIDC issuers; gateway tokens come from
/// `sluice token issue` or `sluice token exchange`), and bearer in the header only.
fn resource_metadata(gateway: &Gateway, req: &Request<Incoming>) -> Response<Body> {
    let config = gateway.config();
    let issuers: Vec<String> = config.auth.oidc.iter().map(|o| o.issuer.clone()).collect();
    let audiences: Vec<String> = config
        .auth
        .oidc
        .iter()
        .flat_map(|o| o.audience.iter().cloned())
        .collect();
    let mut doc = serde_json::json!({
        "resource": format!("{}{ENDPOINT}", origin(req)),
        "authorization_servers": issuers,
        "bearer_methods_supported": ["header"],
        "resource_name": "Sluice MCP gateway",
    });
    if !audiences.is_empty() {
        // Not an RFC 9728 field: the audience an access token must carry.
        doc["sluice_audiences"] = serde_json::json!(audiences);
    }
    json(StatusCode::OK, &doc)
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(text.to_string())).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
