//! `sluice mcp`: an MCP server on stdin/stdout for local agents, bridged to
//! the gateway's MCP listener with the user's token.
//!
//! The bridge judges nothing and keeps no tool list of its own: each
//! newline-delimited JSON-RPC message from the agent is POSTed to the
//! gateway's `/mcp` endpoint (HTTPS, the gateway's CA) with the user's bearer
//! token, and every message of the answer (a JSON body, or the events of an
//! SSE stream, progress notifications included) is written to stdout as one
//! line. So a local agent gets exactly what a remote one gets.

use crate::server::{ENDPOINT, MAX_BODY_BYTES};
use crate::McpError;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sluice_core::config::UpstreamTls;
use sluice_core::sync::MutexExt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// Connecting to the gateway (TCP and TLS) must finish within this time.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Requests in flight at once; the agent waits for a slot beyond this.
const MAX_IN_FLIGHT: usize = 16;

/// The gateway's MCP endpoint as the bridge reaches it.
#[derive(Clone)]
pub struct Bridge {
    /// `host:port`: dialled, and sent as `Host`.
    addr: String,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    token: String,
    /// The protocol version the agent and the gateway agreed on (sent as
    /// `MCP-Protocol-Version` on every later request).
    protocol_version: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("addr", &self.addr)
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Bridge {
    /// `addr` is `host:port` of `[listen] mcp`; the certificate must chain to
    /// `ca` (the gateway's generated `state_dir/tls/ca.crt`, or `[tls] cert`),
    /// or to a public root without it.
    pub fn new(addr: &str, ca: Option<&Path>, token: String) -> Result<Self, McpError> {
        let server_name = server_name_of(addr)?;
        let config = sluice_core::tls::upstream_client_config(UpstreamTls::VerifyFull, ca)?
            .ok_or_else(|| McpError::Bridge("TLS client configuration is unavailable".into()))?;
        let mut owned = (*config).clone();
        owned.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Bridge {
            addr: addr.to_string(),
            server_name,
            tls: TlsConnector::from(Arc::new(owned)),
            token,
            protocol_version: Arc::new(Mutex::new(None)),
        })
    }

    /// Serves stdin/stdout until stdin closes.
    pub async fn run(self) -> Result<(), McpError> {
        let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<String>(64);
        let writer = tokio::spawn(async move {
            let mut stdout = tokio::io::stdout();
            while let Some(line) = out_rx.recv().await {
                if stdout.write_all(line.as_bytes()).await.is_err()
                    || stdout.write_all(b"\n").await.is_err()
                    || stdout.flush().await.is_err()
                {
                    break;
                }
            }
        });
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let mut line = Vec::new();
            let n = (&mut stdin)
                .take(MAX_BODY_BYTES as u64 + 1)
                .read_until(b'\n', &mut line)
                .await?;
            if n == 0 {
                break;
            }
            if line.last() != Some(&b'\n') && n > MAX_BODY_BYTES {
                // Too long: answer, then skip the rest of the line.
                let _ = out_tx
                    .send(error_line(
                        &Value::Null,
                        -32600,
                        &format!("a message may be at most {MAX_BODY_BYTES} bytes"),
                    ))
                    .await;
                let mut rest = Vec::new();
                stdin.read_until(b'\n', &mut rest).await?;
                continue;
            }
            let text = String::from_utf8_lossy(&line).trim().to_string();
            if text.is_empty() {
                continue;
            }
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let (bridge, out) = (self.clone(), out_tx.clone());
            tasks.spawn(async move {
                bridge.forward(text, &out).await;
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
        drop(out_tx);
        let _ = writer.await;
        Ok(())
    }

    /// Sends one message and writes every message of the answer.
    async fn forward(&self, message: String, out: &tokio::sync::mpsc::Sender<String>) {
        let parsed: Option<Value> = serde_json::from_str(&message).ok();
        let id = parsed
            .as_ref()
            .and_then(|v| v.get("id"))
            .cloned()
            .unwrap_or(Value::Null);
        let is_request = parsed
            .as_ref()
            .is_some_and(|v| v.get("id").is_some() && v.get("method").is_some());
        let is_initialize = parsed
            .as_ref()
            .and_then(|v| v.get("method"))
            .is_some_and(|m| m == "initialize");
        // A request of the current revision names its version in `_meta`
        // (stdio has no headers); over HTTP it goes in the header too.
        let version = parsed
            .as_ref()
            .and_then(|v| v.pointer("/params/_meta/io.modelcontextprotocol~1protocolVersion"))
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let routing = parsed.as_ref().map(routing_headers).unwrap_or_default();
        if let Err(e) = self
            .post(message, out, is_initialize, version, routing)
            .await
        {
            // Only a request expects an answer; for a response or a
            // notification there is nobody to tell but the log.
            if is_request {
                let _ = out.send(error_line(&id, -32603, &e.to_string())).await;
            } else {
                tracing::warn!(message = "A message could not be delivered to the gateway.", error = %e);
            }
        }
    }

    async fn post(
        &self,
        message: String,
        out: &tokio::sync::mpsc::Sender<String>,
        is_initialize: bool,
        version: Option<String>,
        routing: Vec<(&'static str, String)>,
    ) -> Result<(), McpError> {
        let unreachable =
            |reason: String| McpError::Bridge(format!("the gateway at {}: {reason}", self.addr));
        let stream = sluice_core::tls::connect(
            self.addr.as_str(),
            &self.tls,
            self.server_name.clone(),
            CONNECT_TIMEOUT,
        )
        .await
        .map_err(unreachable)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut request = Request::new(Full::new(Bytes::from(message)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = http::Uri::from_static(ENDPOINT);
        let headers = request.headers_mut();
        let value = |s: &str| {
            HeaderValue::from_str(s)
                .map_err(|_| McpError::Bridge(format!("{s:?} is not a valid header value")))
        };
        headers.insert(header::HOST, value(&self.addr)?);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        headers.insert(
            header::AUTHORIZATION,
            value(&format!("Bearer {}", self.token))?,
        );
        let version = version.or_else(|| self.protocol_version.locked().clone());
        if let Some(version) = version {
            headers.insert("mcp-protocol-version", value(&version)?);
        }
        for (name, v) in routing {
            headers.insert(name, value(&v)?);
        }
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let is_sse = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let mut body = response.into_body();
        if status == StatusCode::ACCEPTED {
            return Ok(());
        }
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(2000)]).to_string();
            // A JSON-RPC error body is the answer itself.
            if serde_json::from_str::<Value>(&text)
                .ok()
                .is_some_and(|v| v.get("jsonrpc").is_some())
            {
                let _ = out.send(text).await;
                return Ok(());
            }
            return Err(McpError::Bridge(format!(
                "the gateway answered {status}: {}",
                text.trim()
            )));
        }
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| unreachable(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            if pending.len() > 64 * MAX_BODY_BYTES {
                return Err(unreachable("an answer too large to relay".into()));
            }
            if is_sse {
                while let Some(event) = take_event(&mut pending) {
                    if let Some(data) = event_data(&event) {
                        self.emit(data, out, is_initialize).await;
                    }
                }
            }
        }
        if !is_sse {
            let text = String::from_utf8_lossy(&pending).trim().to_string();
            if !text.is_empty() {
                self.emit(text, out, is_initialize).await;
            }
        }
        Ok(())
    }

    async fn emit(
        &self,
        message: String,
        out: &tokio::sync::mpsc::Sender<String>,
        is_initialize: bool,
    ) {
        if is_initialize {
            let version = serde_json::from_str::<Value>(&message).ok().and_then(|v| {
                v.pointer("/result/protocolVersion")
                    .and_then(|p| p.as_str())
                    .map(str::to_string)
            });
            if let Some(version) = version {
                *self.protocol_version.locked() = Some(version);
            }
        }
        // One message per line: re-serialise so no newline inside survives.
        let line = serde_json::from_str::<Value>(&message)
            .map(|v| v.to_string())
            .unwrap_or(message);
        let _ = out.send(line).await;
    }
}

/// The SEP-2243 routing headers an HTTP client sends with a message
/// (`Mcp-Method`, and `Mcp-Name` from the parameter that names the target),
/// which the current revision requires; stdio messages carry neither.
fn routing_headers(message: &Value) -> Vec<(&'static str, String)> {
    let Some(method) = message.get("method").and_then(Value::as_str) else {
        return Vec::new();
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_graphic()) {
        return Vec::new();
    }
    let mut headers = vec![("mcp-method", method.to_string())];
    let key = match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => Some("uri"),
        "tasks/get" | "tasks/update" | "tasks/cancel" => Some("taskId"),
        _ => None,
    };
    let name = key
        .and_then(|k| message.get("params")?.get(k))
        .and_then(Value::as_str);
    if let Some(name) = name {
        let printable = name.bytes().all(|b| (0x20..0x7f).contains(&b));
        let padded = name.starts_with(' ') || name.ends_with(' ');
        let looks_encoded = name.starts_with("=?base64?") && name.ends_with("?=");
        let plain = !name.is_empty() && printable && !padded && !looks_encoded;
        let value = if plain {
            name.to_string()
        } else {
            use base64::Engine;
            format!(
                "=?base64?{}?=",
                base64::engine::general_purpose::STANDARD.encode(name)
            )
        };
        headers.push(("mcp-name", value));
    }
    headers
}

/// Takes one complete SSE event (up to a blank line) off the front of `buf`.
fn take_event(buf: &mut Vec<u8>) -> Option<String> {
    let text = std::str::from_utf8(buf).ok()?;
    let normalized_end = text
        .find("\n\n")
        .map(|i| (i, 2))
        .or_else(|| text.find("\r\n\r\n").map(|i| (i, 4)))?;
    let (end, sep) = normalized_end;
    let event = text[..end].to_string();
    buf.drain(..end + sep);
    Some(event)
}

/// The `data:` lines of an SSE event, joined; `None` for events without data.
fn event_data(event: &str) -> Option<String> {
    let lines: Vec<&str> = event
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect();
    let data = lines.join("\n");
    (!data.trim().is_empty()).then_some(data)
}

fn error_line(id: &Value, code: i64, message: &str) -> String {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } }).to_string()
}

fn server_name_of(addr: &str) -> Result<ServerName<'static>, McpError> {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Ok(ServerName::IpAddress(sa.ip().into()));
    }
    let bad = || McpError::Bridge(format!("{addr:?} is not host:port"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_string()).map_err(|_| bad())
}

#[cfg(test)]
pub(crate) fn sse_events(mut buf: Vec<u8>) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(e) = take_event(&mut buf) {
        if let Some(d) = event_data(&e) {
            out.push(d);
        }
    }
    out
}
