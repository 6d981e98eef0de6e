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
use tokio::net::TcpStream;
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
/// listener at `addr`, trusting the gateway's certificate file `ca`.
pub async fn send(
    addr: SocketAddr,
    ca: &Path,
    token: &str,
    connection: &str,
    call: HttpCall,
) -> Result<Value, HttpToolError> {
    let transport = |m: String| HttpToolError::Transport(m);
    // The gateway's own certificate: its chain is checked, not its names
    // (a `[tls]` certificate for a DNS name is reached here by IP).
    let config = sluice_core::tls::upstream_client_config(UpstreamTls::VerifyCa, Some(ca))
        .map_err(|e| transport(e.to_string()))?
        .ok_or_else(|| transport("TLS client configuration is unavailable".into()))?;
    let mut owned = (*config).clone();
    owned.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = TlsConnector::from(Arc::new(owned));
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        tls.connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))
    })
    .await
    .map_err(|_| transport("timed out connecting".into()))?
    .map_err(transport)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| transport(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
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
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| transport(e.to_string()))?;
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
