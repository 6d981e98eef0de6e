//! A minimal HTTPS client for the gateway's own HTTP listener.
//!
//! A `CONN.request` tool call is one request to
//! `https://LOOPBACK:PORT/CONN/path` with the caller's token as the bearer,
//! exactly what curl would send: the HTTP gateway routes, judges, injects the
//! upstream credential, masks and records it. The gateway's certificate is
//! checked against its own CA (or `[tls]` chain).

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sluice_core::config::UpstreamTls;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// Connecting (TCP and TLS) must finish within this time.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Bytes of a response body returned to the agent.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// Request headers the tool sets itself (the caller's may not replace them).
const RESERVED: &[&str] = &[
    "authorization",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-authorization",
];

/// One request as the agent described it.
#[derive(Debug)]
pub struct HttpCall {
    pub method: Method,
    /// The path below the connection, starting with `/`, and the query.
    pub path_and_query: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Vec<u8>,
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum HttpToolError {
    #[error("{0}")]
    Invalid(String),
    #[error("the gateway's HTTP listener: {0}")]
    Transport(String),
}

impl HttpCall {
    /// Builds a call from the tool's arguments: `method`, `path`, `query`
    /// (an object of strings), `headers` (an object of strings), `body`
    /// (a string, or any JSON value sent as JSON).
    pub fn from_arguments(args: &serde_json::Map<String, Value>) -> Result<Self, HttpToolError> {
        let invalid = |m: String| HttpToolError::Invalid(m);
        for key in args.keys() {
            if !["method", "path", "query", "headers", "body"].contains(&key.as_str()) {
                return Err(invalid(format!("unknown argument {key:?}")));
            }
        }
        let method = match args.get("method") {
            None | Some(Value::Null) => Method::GET,
            Some(Value::String(m)) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| invalid(format!("{m:?} is not an HTTP method")))?,
            Some(_) => return Err(invalid("argument \"method\" must be a string".into())),
        };
        let path = match args.get("path") {
            Some(Value::String(p)) if p.starts_with('/') => p.clone(),
            Some(Value::String(_)) => {
                return Err(invalid("argument \"path\" must start with \"/\"".into()))
            }
            _ => return Err(invalid("argument \"path\" is required (a string)".into())),
        };
        if path.contains('?') || path.contains('#') {
            return Err(invalid(
                "argument \"path\" may not hold a query or fragment: pass \"query\"".into(),
            ));
        }
        // The request must stay below this tool's connection: no segment
        // that could climb out of `/CONN/` once the gateway normalises it.
        let lower = path.to_ascii_lowercase();
        if path.split('/').any(|seg| seg == "." || seg == "..")
            || path.contains('\\')
            || ["%2e", "%2f", "%5c"].iter().any(|e| lower.contains(e))
        {
            return Err(invalid(
                "argument \"path\" may not hold dot segments, backslashes or encoded dots and slashes"
                    .into(),
            ));
        }
        let mut path_and_query = path;
        match args.get("query") {
            None | Some(Value::Null) => {}
            Some(Value::Object(pairs)) => {
                let mut sep = '?';
                for (k, v) in pairs {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Null => String::new(),
                        other => other.to_string(),
                    };
                    path_and_query.push(sep);
                    path_and_query.push_str(&encode(k));
                    path_and_query.push('=');
                    path_and_query.push_str(&encode(&v));
                    sep = '&';
                }
            }
            Some(_) => return Err(invalid("argument \"query\" must be an object".into())),
        }
        let mut headers = Vec::new();
        let mut json_body = false;
        match args.get("headers") {
            None | Some(Value::Null) => {}
            Some(Value::Object(pairs)) => {
                for (k, v) in pairs {
                    let Value::String(v) = v else {
                        return Err(invalid(format!("header {k:?} must be a string")));
                    };
                    let name = HeaderName::from_bytes(k.as_bytes())
                        .map_err(|_| invalid(format!("{k:?} is not a header name")))?;
                    if RESERVED.contains(&name.as_str()) {
                        return Err(invalid(format!(
                            "header {k:?} is set by the gateway, not by the tool call"
                        )));
                    }
                    let value = HeaderValue::from_str(v)
                        .map_err(|_| invalid(format!("header {k:?} has an invalid value")))?;
                    headers.push((name, value));
                }
            }
            Some(_) => return Err(invalid("argument \"headers\" must be an object".into())),
        }
        let body = match args.get("body") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => s.clone().into_bytes(),
            Some(other) => {
                json_body = true;
                other.to_string().into_bytes()
            }
        };
        if json_body && !headers.iter().any(|(n, _)| n == header::CONTENT_TYPE) {
            headers.push((
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ));
        }
        Ok(HttpCall {
            method,
            path_and_query,
            headers,
            body,
        })
    }
}

/// Percent-encodes a query component (RFC 3986 unreserved characters stay).
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Sends `call` to the connection `connection` on the gateway's HTTP
/// listener at `addr`, trusting the gateway's certificate file `ca`, and
/// returns the status, headers and body.
pub async fn send(
    addr: SocketAddr,
    ca: &Path,
    token: &str,
    connection: &str,
    call: HttpCall,
) -> Result<Value, HttpToolError> {
    let response = request(addr, ca, token, connection, call).await?;
    answer(response).await
}

/// Sends one request; the connection serves upgrades (Kubernetes exec).
async fn request(
    addr: SocketAddr,
    ca: &Path,
    token: &str,
    connection: &str,
    call: HttpCall,
) -> Result<hyper::Response<hyper::body::Incoming>, HttpToolError> {
    let transport = |m: String| HttpToolError::Transport(m);
    // The gateway's own certificate: its chain is checked, not its names
    // (a `[tls]` certificate for a DNS name is reached here by IP).
    let config = sluice_core::tls::upstream_client_config(UpstreamTls::VerifyCa, Some(ca))
        .map_err(|e| transport(e.to_string()))?
        .ok_or_else(|| transport("TLS client configuration is unavailable".into()))?;
    let mut owned = (*config).clone();
    owned.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = TlsConnector::from(Arc::new(owned));
    let stream = sluice_core::tls::connect(
        addr,
        &tls,
        ServerName::IpAddress(addr.ip().into()),
        CONNECT_TIMEOUT,
    )
    .await
    .map_err(transport)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| transport(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let uri = format!("/{}{}", encode_segment(connection), call.path_and_query);
    let mut request = Request::new(Full::new(Bytes::from(call.body)));
    *request.method_mut() = call.method;
    *request.uri_mut() = uri
        .parse()
        .map_err(|_| HttpToolError::Invalid(format!("{uri:?} is not a valid request target")))?;
    let headers = request.headers_mut();
    for (name, value) in call.headers {
        headers.append(name, value);
    }
    headers.insert(
        header::HOST,
        HeaderValue::from_str(&addr.to_string()).map_err(|e| transport(e.to_string()))?,
    );
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| HttpToolError::Invalid("the token is not a valid header value".into()))?,
    );
    sender
        .send_request(request)
        .await
        .map_err(|e| transport(e.to_string()))
}

/// The status, headers and body (JSON as JSON) of a response, capped.
async fn answer(response: hyper::Response<hyper::body::Incoming>) -> Result<Value, HttpToolError> {
    let transport = |m: String| HttpToolError::Transport(m);
    let status = response.status();
    let mut header_doc = serde_json::Map::new();
    for (name, value) in response.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match header_doc.get_mut(name.as_str()) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            _ => {
                header_doc.insert(name.as_str().to_string(), Value::String(value));
            }
        }
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let v = v.to_ascii_lowercase();
            v.starts_with("application/json") || v.contains("+json")
        });
    let (body, truncated) = match Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
    {
        Ok(collected) => (collected.to_bytes(), false),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            (Bytes::new(), true)
        }
        Err(e) => return Err(transport(e.to_string())),
    };
    let body_value = if truncated {
        Value::Null
    } else if is_json {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
    } else {
        Value::String(String::from_utf8_lossy(&body).into_owned())
    };
    let mut doc = json!({
        "status": status.as_u16(),
        "headers": header_doc,
        "body": body_value,
    });
    if truncated {
        doc["truncated"] = json!(true);
        doc["note"] = json!(format!(
            "the response body is larger than {MAX_RESPONSE_BYTES} bytes and is not returned"
        ));
    }
    Ok(doc)
}

/// A connection name as one path segment.
fn encode_segment(s: &str) -> String {
    encode(s)
}

/// Output of one exec stream, capped.
#[derive(Default)]
struct Stream {
    bytes: Vec<u8>,
    total: usize,
}

impl Stream {
    fn push(&mut self, data: &[u8]) {
        self.total += data.len();
        let room = MAX_EXEC_OUTPUT_BYTES.saturating_sub(self.bytes.len());
        self.bytes.extend_from_slice(&data[..data.len().min(room)]);
    }
}

/// Bytes of stdout and of stderr a Kubernetes exec returns to the agent (each).
pub const MAX_EXEC_OUTPUT_BYTES: usize = 1024 * 1024;
/// A WebSocket frame longer than this ends the exec (the output cap is far below).
const MAX_FRAME_BYTES: u64 = 16 * 1024 * 1024;

/// A Kubernetes exec (`call` is the pod's `exec` path) as kubectl runs it:
/// a WebSocket upgrade offering the `v5`/`v4.channel.k8s.io` protocols, then
/// stdout (channel 1), stderr (2) and the final Status (3) read until the
/// server closes. A refusal is an ordinary HTTP answer (403 Status).
pub async fn exec(
    addr: SocketAddr,
    ca: &Path,
    token: &str,
    connection: &str,
    mut call: HttpCall,
) -> Result<Value, HttpToolError> {
    let transport = |m: String| HttpToolError::Transport(m);
    let key = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0);
        let a = h.finish();
        h.write_u64(1);
        let b = h.finish();
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&a.to_be_bytes());
        nonce[8..].copy_from_slice(&b.to_be_bytes());
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(nonce)
    };
    for (name, value) in [
        ("connection", "Upgrade".to_string()),
        ("upgrade", "websocket".to_string()),
        ("sec-websocket-version", "13".to_string()),
        ("sec-websocket-key", key),
        (
            "sec-websocket-protocol",
            "v5.channel.k8s.io, v4.channel.k8s.io".to_string(),
        ),
    ] {
        call.headers.push((
            HeaderName::from_static(name),
            HeaderValue::from_str(&value).map_err(|e| transport(e.to_string()))?,
        ));
    }
    let response = request(addr, ca, token, connection, call).await?;
    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        return answer(response).await;
    }
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(|e| transport(e.to_string()))?;
    let mut io = TokioIo::new(upgraded);
    let (mut stdout, mut stderr) = (Stream::default(), Stream::default());
    let mut status: Option<Value> = None;
    let mut channel = None;
    loop {
        let Some((fin, opcode, payload)) = read_frame(&mut io).await? else {
            break;
        };
        match opcode {
            // Text, binary and their continuations: channel byte, then data.
            0..=2 => {
                let data = if opcode == 0 {
                    &payload[..]
                } else {
                    channel = payload.first().copied();
                    payload.get(1..).unwrap_or_default()
                };
                match channel {
                    Some(1) => stdout.push(data),
                    Some(2) => stderr.push(data),
                    Some(3) => {
                        status = serde_json::from_slice(data).ok();
                    }
                    _ => {}
                }
                if fin {
                    channel = None;
                }
            }
            8 => {
                // Answer the close (a client frame is masked; the mask may
                // be zero), so the server need not wait for one.
                use tokio::io::AsyncWriteExt;
                let _ = io.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]).await;
                let _ = io.flush().await;
                break;
            }
            _ => {}
        }
    }
    let exit_status = match &status {
        Some(s) if s["status"] == "Success" => Some(0),
        Some(s) => s["details"]["causes"].as_array().and_then(|causes| {
            causes
                .iter()
                .find(|c| c["reason"] == "ExitCode")
                .and_then(|c| c["message"].as_str()?.parse::<i64>().ok())
        }),
        None => None,
    };
    let mut doc = json!({
        "exit_status": exit_status,
        "stdout": String::from_utf8_lossy(&stdout.bytes),
        "stderr": String::from_utf8_lossy(&stderr.bytes),
    });
    if let Some(s) = status.filter(|s| s["status"] != "Success") {
        doc["status"] = s;
    }
    if stdout.total > stdout.bytes.len() || stderr.total > stderr.bytes.len() {
        doc["truncated"] = json!(true);
    }
    Ok(doc)
}

/// One WebSocket frame from the server: (FIN, opcode, payload); `None` at EOF.
async fn read_frame(
    io: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Result<Option<(bool, u8, Vec<u8>)>, HttpToolError> {
    use tokio::io::AsyncReadExt;
    let transport = |e: std::io::Error| HttpToolError::Transport(e.to_string());
    let mut head = [0u8; 2];
    match io.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(transport(e)),
    }
    let fin = head[0] & 0x80 != 0;
    let opcode = head[0] & 0x0f;
    let masked = head[1] & 0x80 != 0;
    let len = match head[1] & 0x7f {
        126 => u64::from(io.read_u16().await.map_err(transport)?),
        127 => io.read_u64().await.map_err(transport)?,
        n => u64::from(n),
    };
    if len > MAX_FRAME_BYTES {
        return Err(HttpToolError::Transport(format!(
            "a WebSocket frame of {len} bytes"
        )));
    }
    let mut mask = [0u8; 4];
    if masked {
        io.read_exact(&mut mask).await.map_err(transport)?;
    }
    let mut payload = vec![0u8; len as usize];
    io.read_exact(&mut payload).await.map_err(transport)?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok(Some((fin, opcode, payload)))
}
