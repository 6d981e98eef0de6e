//! The HTTPS listener and the request router.

use crate::console::Console;
use crate::problem::{Problem, PROBLEM_JSON};
use crate::ApiError;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use sluice_core::approval::{ApprovalError, ApprovalRequest};
use sluice_core::{Credentials, Gateway, Identity};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// A client must finish the TLS handshake within this time.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A request's head must arrive within this time (also closes idle keep-alive connections).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A request's body must arrive within this time.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Request bodies larger than this are refused (413).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// An oversized body up to this size is read to its end (and discarded)
/// before the 413: a client still sending it would otherwise see the
/// connection reset instead of the answer. Larger ones are cut off.
const DRAINED_BODY_BYTES: u64 = 1 << 20;
/// Connections served at once; further clients wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 256;

const APPROVALS: &str = "/api/v1/approvals";

/// Response bodies: whole (JSON, pages) or streamed (console events).
pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// The operator API listener (HTTPS only).
pub struct ApiServer {
    gateway: Arc<Gateway>,
    tls: TlsAcceptor,
    console: Console,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer").finish_non_exhaustive()
    }
}

impl ApiServer {
    /// Builds the listener's TLS from the gateway config (`[tls]`, or the
    /// certificate generated into `state_dir/tls`).
    pub fn new(gateway: Arc<Gateway>) -> Result<Self, ApiError> {
        let tls = sluice_core::tls::server_config(&gateway.config(), &[b"http/1.1"])?;
        Ok(ApiServer {
            gateway,
            tls: TlsAcceptor::from(tls),
            console: Console::default(),
        })
    }

    /// Lets the console describe commands to approvers (e.g. a SQL
    /// statement's classes, tables and functions); the launcher plugs in
    /// each protocol crate's describer, as this crate knows no wire format.
    pub fn describe_commands_with(mut self, describer: crate::CommandDescriber) -> Self {
        self.console.describer = Some(describer);
        self
    }

    /// Shows the last checkpoint `latest` received on the console's audit
    /// page (register it as a checkpoint sink too).
    pub fn show_checkpoints_from(mut self, latest: Arc<crate::LatestCheckpoint>) -> Self {
        self.console.checkpoint = Some(latest);
        self
    }

    /// Accepts clients until the listener fails; each connection runs in its own task.
    /// Keeps serving while the gateway drains (operators act during the grace period).
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        let listener = self
            .gateway
            .listener(listener, "api")
            .at_most(MAX_CONNECTIONS)
            .through_drain();
        let ApiServer {
            gateway,
            tls,
            console,
        } = self;
        let console = Arc::new(console);
        listener
            .serve(move |tcp, peer| {
                let (gateway, tls, console) = (gateway.clone(), tls.clone(), console.clone());
                async move {
                    if let Err(e) = serve_connection(tcp, peer, tls, gateway, console).await {
                        tracing::debug!(message = "API connection ended with an error.", client = %peer, error = %e);
                    }
                }
            })
            .await
    }
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: TlsAcceptor,
    gateway: Arc<Gateway>,
    console: Arc<Console>,
) -> Result<(), String> {
    let stream = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let service = hyper::service::service_fn(move |req| {
        let (gateway, console) = (gateway.clone(), console.clone());
        async move { Ok::<_, Infallible>(handle(&gateway, &console, req, peer).await) }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BODY_BYTES.max(8192))
        .serve_connection(TokioIo::new(stream), service)
        .await
        .map_err(|e| e.to_string())
}

enum Route {
    List,
    Get(String),
    Decide { id: String, approve: bool },
}

fn route(path: &str) -> Option<Route> {
    let rest = path.strip_prefix(APPROVALS)?;
    if rest.is_empty() || rest == "/" {
        return Some(Route::List);
    }
    let rest = rest.strip_prefix('/')?;
    let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    match parts.as_slice() {
        [id] if !id.is_empty() => Some(Route::Get(decode(id))),
        [id, "approve"] if !id.is_empty() => Some(Route::Decide {
            id: decode(id),
            approve: true,
        }),
        [id, "deny"] if !id.is_empty() => Some(Route::Decide {
            id: decode(id),
            approve: false,
        }),
        _ => None,
    }
}

/// Percent-decodes a path segment (the client encodes ids); invalid input stays as is.
pub(crate) fn decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied(),
            bytes.get(i + 2).copied(),
        ) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                let value = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(value as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| segment.to_string())
}

async fn handle(
    gateway: &Arc<Gateway>,
    console: &Console,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut response = dispatch(gateway, console, req, peer).await;
    // Every answer of this listener, pages and JSON alike.
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(crate::console::CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    tracing::debug!(message = "API request.", client = %peer, method = %method, path = %truncate(&path, 200), status = response.status().as_u16());
    response
}

async fn dispatch(
    gateway: &Arc<Gateway>,
    console: &Console,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let path = req.uri().path();
    if path == "/healthz" {
        return match *req.method() {
            Method::GET | Method::HEAD => text(StatusCode::OK, "ok"),
            _ => method_not_allowed("GET, HEAD"),
        };
    }
    if path == "/readyz" {
        return match *req.method() {
            Method::GET | Method::HEAD => readiness(gateway).await,
            _ => method_not_allowed("GET, HEAD"),
        };
    }
    if path == "/" {
        return crate::console::redirect(crate::console::CONSOLE_PATH);
    }
    if path == "/console" || path.starts_with("/console/") {
        return console.handle(gateway, req, peer).await;
    }
    // The console's pages call these routes with their session cookie
    // instead of a bearer token (and a CSRF token on POST).
    let from_console = if req.headers().contains_key(header::AUTHORIZATION) {
        None
    } else {
        crate::console::api_identity(console, gateway, &req).await
    };
    let path = req.uri().path();
    let authenticated = match from_console {
        Some(Ok(identity)) => Ok(identity),
        Some(Err(response)) => return response,
        None => authenticate(gateway, req.headers()).await,
    };
    let identity = match authenticated {
        Ok(identity) => identity,
        Err(detail) => {
            tracing::warn!(message = "API authentication failed.", client = %peer, reason = %detail);
            let mut response = problem(StatusCode::UNAUTHORIZED, detail);
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    };
    if let Some(route) = crate::identity::route(path) {
        return crate::identity::handle(gateway, route, req, &identity, peer).await;
    }
    let Some(route) = route(path) else {
        return problem(
            StatusCode::NOT_FOUND,
            format!(
                "no API route {}; see /api/v1/approvals and /api/v1/sessions",
                truncate(path, 200)
            ),
        );
    };
    match route {
        Route::List => {
            if req.method() != Method::GET {
                return method_not_allowed("GET");
            }
            let all = match query_flag(req.uri().query(), "all") {
                Ok(all) => all,
                Err(detail) => return problem(StatusCode::BAD_REQUEST, detail),
            };
            let visible: Vec<ApprovalRequest> = gateway
                .approvals()
                .list(!all)
                .into_iter()
                .filter(|r| visible_to(r, &identity))
                .collect();
            json(StatusCode::OK, &visible)
        }
        Route::Get(id) => {
            if req.method() != Method::GET {
                return method_not_allowed("GET");
            }
            match gateway.approvals().get(&id) {
                // Requests the caller may not see do not exist for them.
                Some(r) if visible_to(&r, &identity) => json(StatusCode::OK, &r),
                _ => approval_error(ApprovalError::NotFound(id)),
            }
        }
        Route::Decide { id, approve } => {
            if req.method() != Method::POST {
                return method_not_allowed("POST");
            }
            let reason = match read_reason(req).await {
                Ok(reason) => reason,
                Err(response) => return response,
            };
            match gateway
                .approvals()
                .decide(&id, &identity, approve, reason)
                .await
            {
                Ok(r) => json(StatusCode::OK, &r),
                Err(e) => approval_error(e),
            }
        }
    }
}

/// `/readyz`: 200 while the gateway takes new sessions and its store takes
/// records; 503 with the reason otherwise (a load balancer stops sending
/// clients). `/healthz` says only that the process answers.
async fn readiness(gateway: &Gateway) -> Response<Body> {
    if gateway.is_draining() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining: the gateway is shutting down",
        );
    }
    match gateway.store().ready().await {
        Ok(()) => text(StatusCode::OK, "ready"),
        Err(e) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("the audit store does not take records: {e}"),
        ),
    }
}

/// The caller may decide it (an approver who did not ask), or asked for it.
/// A token narrowed to connections sees only its own requests.
pub(crate) fn visible_to(request: &ApprovalRequest, identity: &Identity) -> bool {
    is_requester(request, identity)
        || (identity.connections.is_none() && identity.in_any_group(&request.approvers))
}

/// Whether `identity` asked for `request`: the same subject at the same
/// issuer (the same name at another identity provider is someone else).
pub(crate) fn is_requester(request: &ApprovalRequest, identity: &Identity) -> bool {
    request.subject == identity.subject && request.issuer == identity.issuer
}

/// The identity behind `Authorization: Bearer …`; the error never contains the token.
async fn authenticate(gateway: &Gateway, headers: &HeaderMap) -> Result<Identity, String> {
    use sluice_core::token::{bearer_from_header, BearerError};
    let token = bearer_from_header(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()))
        .map_err(|e| match e {
            BearerError::Missing => "this API needs an Authorization: Bearer <token> header (a gateway-issued token from sluice token issue, or an access token of a configured identity provider)".to_string(),
            other => other.to_string(),
        })?;
    gateway
        .authenticate(&Credentials {
            user: String::new(),
            token: token.to_string(),
        })
        .await
        .map_err(|e| format!("the bearer token was refused: {e}"))
}

/// `?all=true`: true for `true`/`1`/bare `all`, false for `false`/`0`/absent.
fn query_flag(query: Option<&str>, name: &str) -> Result<bool, String> {
    let mut flag = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, "true"));
        if key != name {
            continue;
        }
        flag = match value {
            "true" | "1" | "" => true,
            "false" | "0" => false,
            _ => return Err(format!("query parameter {name} must be true or false")),
        };
    }
    Ok(flag)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecideBody {
    reason: Option<String>,
}

/// The optional `{"reason": …}` body of approve/deny.
async fn read_reason(req: Request<Incoming>) -> Result<Option<String>, Response<Body>> {
    let body: Option<DecideBody> = read_json(req, "{\"reason\": \"…\"}").await?;
    Ok(body.and_then(|b| b.reason).filter(|r| !r.trim().is_empty()))
}

/// A JSON body (bounded in size and time); `None` when the body is empty.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    shape: &str,
) -> Result<Option<T>, Response<Body>> {
    let too_large = || {
        problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAINED_BODY_BYTES) {
        return Err(too_large());
    }
    let mut body = req.into_body();
    let mut bytes = Vec::new();
    let mut seen = 0u64;
    // Kept up to the limit; past it, read on (discarded) to the end, so the
    // client gets the 413, unless it exceeds the drained size too.
    let read = async {
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            seen += data.len() as u64;
            if seen > DRAINED_BODY_BYTES {
                break;
            }
            if seen <= MAX_BODY_BYTES as u64 {
                bytes.extend_from_slice(&data);
            }
        }
        Ok::<(), hyper::Error>(())
    };
    match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
        Err(_) => {
            return Err(problem(
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time",
            ))
        }
        Ok(Err(_)) => {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            ))
        }
        Ok(Ok(())) if seen > MAX_BODY_BYTES as u64 => return Err(too_large()),
        Ok(Ok(())) => {}
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        problem(
            StatusCode::BAD_REQUEST,
            format!("the body must be JSON like {shape}: {e}"),
        )
    })
}

fn approval_error(e: ApprovalError) -> Response<Body> {
    let status = match &e {
        ApprovalError::NotFound(_) => StatusCode::NOT_FOUND,
        ApprovalError::NotPending { .. } | ApprovalError::BeingDecided(_) => StatusCode::CONFLICT,
        ApprovalError::SelfApproval(_)
        | ApprovalError::NotAnApprover { .. }
        | ApprovalError::NarrowedToken => StatusCode::FORBIDDEN,
        ApprovalError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    problem(status, e.to_string())
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

pub(crate) fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    respond(
        status,
        "text/plain; charset=utf-8",
        body.as_bytes().to_vec(),
    )
}

pub(crate) fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => respond(status, "application/json", body),
        Err(e) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the response could not be encoded: {e}"),
        ),
    }
}

pub(crate) fn problem(status: StatusCode, detail: impl Into<String>) -> Response<Body> {
    let body = serde_json::to_vec(&Problem::new(status, detail)).unwrap_or_default();
    respond(status, PROBLEM_JSON, body)
}

pub(crate) fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = problem(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("this route accepts {allow}"),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(matches!(route("/api/v1/approvals"), Some(Route::List)));
        assert!(matches!(route("/api/v1/approvals/"), Some(Route::List)));
        assert!(matches!(route("/api/v1/approvals/abc"), Some(Route::Get(id)) if id == "abc"));
        assert!(matches!(
            route("/api/v1/approvals/abc/approve"),
            Some(Route::Decide { id, approve: true }) if id == "abc"
        ));
        assert!(matches!(
            route("/api/v1/approvals/abc/deny/"),
            Some(Route::Decide { id, approve: false }) if id == "abc"
        ));
        assert!(route("/api/v1/approvalsx").is_none());
        assert!(route("/api/v1/approvals//approve").is_none());
        assert!(route("/api/v1/approvals/abc/other").is_none());
        assert!(route("/api/v2/approvals").is_none());
        assert!(matches!(route("/api/v1/approvals/a%2Fb"), Some(Route::Get(id)) if id == "a/b"));
        assert_eq!(decode("%zz%4"), "%zz%4");
        assert_eq!(decode("%C3%A9"), "é");
    }

    #[test]
    fn visibility() {
        use sluice_core::approval::{ApprovalState, ReviewMode};
        let who = |subject: &str, groups: &[&str]| Identity {
            subject: subject.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            issuer: "sluice".into(),
            token_id: "t".into(),
            expires_at: std::time::SystemTime::now(),
            connections: None,
        };
        let request = ApprovalRequest {
            id: "a1".into(),
            session_id: "s1".into(),
            command_id: 1,
            subject: "agent".into(),
            issuer: "sluice".into(),
            connection: "appdb".into(),
            command: "delete from t".into(),
            kind: None,
            context: Vec::new(),
            rule: "reviewed-writes".into(),
            message: None,
            approvers: vec!["dba".into()],
            mode: ReviewMode::Hold,
            requested_at_ms: 0,
            expires_at_ms: 0,
            state: ApprovalState::Pending,
            decided_by: None,
            decided_at_ms: None,
            reason: None,
        };
        assert!(visible_to(&request, &who("bob", &["dba"])));
        assert!(visible_to(&request, &who("agent", &["agents"])));
        assert!(!visible_to(&request, &who("eve", &["agents", "ops"])));
        // The same subject at another identity provider is someone else.
        let elsewhere = Identity {
            issuer: "https://idp.example".into(),
            ..who("agent", &["agents"])
        };
        assert!(!visible_to(&request, &elsewhere));
    }

    /// Serves one connection whose requests are read with `read_json`: 200
    /// when the body was read, else `read_json`'s answer.
    async fn json_reader() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(|req| async move {
                let answer = match read_json::<serde_json::Value>(req, "{}").await {
                    Ok(_) => problem(StatusCode::OK, "read"),
                    Err(refused) => refused,
                };
                Ok::<_, Infallible>(answer)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await;
        });
        addr
    }

    /// Sends `total` bytes of JSON whitespace, chunked (no declared length),
    /// and returns the response's status line.
    async fn post_chunked(total: usize) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = json_reader().await;
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut read, mut write) = tcp.into_split();
        let sender = tokio::spawn(async move {
            let head = "POST /api/v1/approvals/a/approve HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
            write.write_all(head.as_bytes()).await?;
            let chunk = vec![b' '; 16 * 1024];
            let mut sent = 0;
            while sent < total {
                let n = chunk.len().min(total - sent);
                write.write_all(format!("{n:x}\r\n").as_bytes()).await?;
                write.write_all(&chunk[..n]).await?;
                write.write_all(b"\r\n").await?;
                sent += n;
            }
            write.write_all(b"0\r\n\r\n").await?;
            // Kept open until the answer is read: hyper closes on a half-close.
            Ok::<_, std::io::Error>(write)
        });
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        let status = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            while !answer.windows(2).any(|w| w == b"\r\n") {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
            }
            String::from_utf8_lossy(&answer)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .await
        .expect("no answer in time");
        // The server may stop reading before the sender is done.
        drop(sender.await);
        status
    }

    /// Bodies without a declared length are bounded as declared ones are:
    /// kept up to the limit, read on (discarded) to the drained size, and
    /// refused with 413 past either, never an unbounded read.
    #[tokio::test]
    async fn chunked_bodies_past_the_limit_are_refused() {
        let status = post_chunked(1024).await;
        assert!(status.contains(" 200"), "{status:?}");
        for total in [MAX_BODY_BYTES + 1, 900 * 1024, 3 << 20] {
            let status = post_chunked(total).await;
            assert!(status.contains(" 413"), "{total} bytes: {status:?}");
        }
    }

    #[test]
    fn all_flag() {
        assert_eq!(query_flag(None, "all"), Ok(false));
        assert_eq!(query_flag(Some("all=true"), "all"), Ok(true));
        assert_eq!(query_flag(Some("x=1&all=1"), "all"), Ok(true));
        assert_eq!(query_flag(Some("all"), "all"), Ok(true));
        assert_eq!(query_flag(Some("all=false"), "all"), Ok(false));
        assert!(query_flag(Some("all=maybe"), "all").is_err());
    }
}
