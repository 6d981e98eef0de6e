//! A gateway in front of MCP servers: connections of `kind = "mcp"` whose
//! upstream is an MCP server speaking Streamable HTTP.
//!
//! An agent reaches connection NAME at `/mcp/NAME` on the MCP listener with
//! its own bearer token. The gateway admits it (`Gateway::serve`, as every
//! protocol's session; see `upstream_session.rs`), parses each JSON-RPC
//! message and relays only what it can judge: `initialize`, `ping`,
//! `tools/list` and `tools/call` (and the `notifications/initialized`
//! notification). Each relayed request is a
//! command decided by the pipeline and recorded write-ahead before it is
//! sent; the message sent upstream is rebuilt from the parsed values, so a
//! `tools/call` command's text, `NAME CANONICAL_ARGUMENTS_JSON`, is exactly
//! what the upstream receives. Batches, responses from the client, unknown
//! methods and malformed messages are refused. The upstream's credential is
//! the connection's (`bearer`, `basic`, `headers`); the agent's token never
//! leaves the gateway.
//!
//! Answers: a `tools/call` result (text content, structured content, every
//! string in it) goes through the gateway's masker before it reaches the
//! agent and the audit record. A `tools/list` answer passes through
//! unchanged, but every tool definition the gateway has not seen for the
//! connection (`new`) or that differs from the last one accepted
//! (`changed`, by SHA-256 of its canonical JSON) is recorded as a
//! `tools/description` command of its own, judged by the rules (so
//! `match = { mcp = { definition = "changed" } }` with `action = "review"`
//! holds it for a human); a refused definition is left out of the list and
//! calls to that tool are refused until a later definition is accepted.

use crate::upstream_session::{Live, McpSession, SessionKey, Sessions};
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use sluice_core::config::{ConnectionConfig, ConnectionKind};
use sluice_core::masking::SessionMasker;
use sluice_core::model::{Command, CommandKind, Credentials, Decision, Denial, Outcome, Protocol};
use sluice_core::Gateway;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The protocol MCP upstream sessions are recorded under.
pub const PROTOCOL: Protocol = Protocol::new("mcp");
/// `kind = "mcp"`.
pub const KIND: ConnectionKind = ConnectionKind::of(PROTOCOL);
/// The operation of the command recorded for a tool definition seen in `tools/list`.
pub const DEFINITION_OPERATION: &str = "tools/description";
/// The most of an upstream answer the gateway buffers (to parse and mask it).
pub const MAX_UPSTREAM_BODY: usize = 16 * 1024 * 1024;
/// The upstream exchange time unless the connection sets `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// Agent sessions kept open at once (token × connection); the oldest is
/// ended when more arrive.
pub const MAX_SESSIONS: usize = 256;
/// An agent session unused for this long is ended (its next request opens a new one).
pub const SESSION_IDLE: Duration = Duration::from_secs(600);
/// The most of a result kept in the audit record.
const SAMPLE_CHARS: usize = 4096;

type Body = BoxBody<Bytes, Infallible>;
pub(crate) type Client =
    hyper_util::client::legacy::Client<sluice_http::upstream::Connector, Full<Bytes>>;

/// The keys of a `kind = "mcp"` connection: an HTTP connection's, without
/// host routing (agents reach it at `/mcp/NAME`).
pub const MCP_KEYS: &[&str] = &[
    "headers",
    "bearer",
    "basic",
    "ca",
    "upstream_tls",
    "upstream_ca",
    "timeout",
];

/// Checks a `kind = "mcp"` connection: an HTTP connection's settings
/// (`http://` or `https://` upstream URL, one Authorization scheme,
/// injectable headers), no options.
pub fn validate(c: &ConnectionConfig) -> Result<(), (String, String)> {
    sluice_http::settings::HttpSettings::read(c, MCP_KEYS)?.check(c)?;
    let uri: Uri = c.upstream.parse().map_err(|e| {
        (
            "upstream".to_string(),
            format!("{:?} is not a URL: {e}", c.upstream),
        )
    })?;
    if uri.authority().is_none() {
        return Err((
            "upstream".into(),
            "an MCP upstream is an http:// or https:// URL (its Streamable HTTP endpoint)".into(),
        ));
    }
    if !c.options.is_empty() {
        return Err(("options".into(), "kind = \"mcp\" takes no options".into()));
    }
    sluice_http::upstream::default_tls(c).map_err(|e| ("upstream_tls".to_string(), e))?;
    Ok(())
}

/// Canonical JSON: object keys sorted (by code point), no insignificant
/// whitespace; the form a command's text holds and the upstream receives.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(*k) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A tool name the gateway relays: 1–128 of `A-Z a-z 0-9 _ - . /` (the
/// MCP specification's set, plus `/`); anything else is refused, so the
/// command text `NAME ARGUMENTS` parses one way only.
fn valid_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./".contains(&b))
}

/// Upstream session ids remembered per agent session.
const MAX_UPSTREAM_SESSIONS: usize = 16;

/// The upstream MCP relay of the MCP listener.
pub struct Relay {
    gateway: Arc<Gateway>,
    sessions: Arc<Mutex<Sessions>>,
    /// Per connection and tool, whether its current definition was accepted
    /// (`true`) or refused (`false`) by this gateway. Only accepted tools
    /// can be called: a tool never listed, refused, or whose new definition
    /// is being judged (no entry) cannot be called by name.
    judged: Mutex<HashMap<(String, String), bool>>,
    /// Serialises the read-compare-write of a connection's recorded
    /// definitions (a held review blocks that connection's lists only).
    definitions: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A JSON-RPC message as the agent sent it, parsed.
struct Message {
    id: Option<Value>,
    method: String,
    params: Map<String, Value>,
}

impl Relay {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Relay {
            gateway,
            sessions: Arc::new(Mutex::new(HashMap::new())),
            judged: Mutex::new(HashMap::new()),
            definitions: Mutex::new(HashMap::new()),
        }
    }

    /// Serves one request for connection `name` (body already read under the cap).
    pub async fn handle(
        &self,
        name: &str,
        token: &str,
        method: &Method,
        headers: &http::HeaderMap,
        body: &[u8],
        peer: SocketAddr,
    ) -> Response<Body> {
        let config = self.gateway.config();
        let Some(connection) = config
            .connections
            .iter()
            .find(|c| c.name == name && c.kind == KIND)
        else {
            return plain(
                StatusCode::NOT_FOUND,
                "not found: no MCP upstream connection of that name\n",
            );
        };
        if method != Method::POST {
            let mut r = plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "the gateway relays POSTed JSON-RPC messages only\n",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return r;
        }
        let message = match parse(body) {
            Ok(m) => m,
            Err((code, text)) => return rpc_error(&Value::Null, code, &text),
        };
        let live = match self.session(token, connection, peer).await {
            Ok(l) => l,
            Err((status, text)) => {
                return json_response(
                    status,
                    &json!({"jsonrpc": "2.0", "id": message.id.clone().unwrap_or(Value::Null),
                            "error": {"code": -32001, "message": text}}),
                    None,
                )
            }
        };
        let session_id = forwardable(headers, "mcp-session-id");
        if let Some(presented) = &session_id {
            if !lock(&live.upstream_sessions).contains(presented) {
                // The transport's answer to an unknown session (404): the
                // client starts a new one with `initialize`.
                return plain(
                    StatusCode::NOT_FOUND,
                    "sluice: unknown Mcp-Session-Id for this agent session; send initialize again\n",
                );
            }
        }
        let version = forwardable(headers, "mcp-protocol-version");
        let Some(id) = message.id.clone() else {
            // A notification: only `initialized` is relayed (it acts on nothing).
            if message.method == "notifications/initialized" {
                let body = json!({"jsonrpc": "2.0", "method": message.method});
                let _ = self
                    .send(&live, &body.to_string(), session_id, version)
                    .await;
            }
            return status_only(StatusCode::ACCEPTED);
        };
        let (command, forwarded) = match message.method.as_str() {
            "initialize" | "ping" | "tools/list" => {
                let params = Value::Object(message.params.clone());
                let text = format!("{} {}", message.method, canonical_json(&params));
                let body = format!(
                    "{{\"id\":{},\"jsonrpc\":\"2.0\",\"method\":{},\"params\":{}}}",
                    canonical_json(&id),
                    Value::String(message.method.clone()),
                    canonical_json(&params)
                );
                (
                    Command {
                        kind: CommandKind::Other {
                            operation: message.method.clone(),
                        },
                        text,
                        context: Vec::new(),
                    },
                    body,
                )
            }
            "tools/call" => {
                let Some(tool) = message.params.get("name").and_then(Value::as_str) else {
                    return rpc_error(&id, -32602, "tools/call needs params.name (a string)");
                };
                if !valid_tool_name(tool) {
                    return rpc_error(
                        &id,
                        -32602,
                        "sluice: the tool name has characters the gateway does not relay (A-Z a-z 0-9 _ - . / only)",
                    );
                }
                let arguments = match message.params.get("arguments") {
                    None | Some(Value::Null) => Value::Object(Map::new()),
                    Some(v @ Value::Object(_)) => v.clone(),
                    Some(_) => {
                        return rpc_error(&id, -32602, "tools/call arguments must be an object")
                    }
                };
                let args = canonical_json(&arguments);
                let body = format!(
                    "{{\"id\":{},\"jsonrpc\":\"2.0\",\"method\":\"tools/call\",\"params\":{{\"arguments\":{args},\"name\":{}}}}}",
                    canonical_json(&id),
                    Value::String(tool.to_string())
                );
                (
                    Command {
                        kind: CommandKind::Other {
                            operation: "tools/call".into(),
                        },
                        text: format!("{tool} {args}"),
                        context: Vec::new(),
                    },
                    body,
                )
            }
            other => {
                return rpc_error(
                    &id,
                    -32601,
                    &format!(
                        "sluice: {other:?} is not relayed to the upstream MCP server: the gateway relays initialize, ping, tools/list and tools/call only"
                    ),
                )
            }
        };
        let started = Instant::now();
        let is_call = message.method == "tools/call";
        let tool = command.text.split(' ').next().unwrap_or("").to_string();
        let refused_definition = is_call
            && lock(&self.judged).get(&(connection.name.clone(), tool.clone())) != Some(&true);
        let decision = if refused_definition {
            live.handle
                .refuse(
                    command,
                    "sluice:tool-definition",
                    "this tool's current definition (description or schema) has not been accepted: list the tools first (tools/list); a definition that was refused or is held for review cannot be called",
                )
                .await
        } else {
            live.handle.decide(command).await
        };
        let recorder = live.handle.recorder();
        let command_id = match decision {
            Ok(Decision::Forward { command_id }) => command_id,
            Ok(Decision::Refuse { command_id, denial }) => {
                let text = denial_text(&denial);
                recorder.finished(command_id, failed(&text, started));
                return if is_call {
                    tool_error(&id, &text)
                } else {
                    rpc_error(&id, -32003, &text)
                };
            }
            Err(e) => {
                tracing::error!(message = "The audit store refused a command; failing closed.", error = %e);
                return rpc_error(
                    &id,
                    -32003,
                    "sluice: the gateway could not record this request, so it was not sent; try again later",
                );
            }
        };
        let answer = match self.send(&live, &forwarded, session_id, version).await {
            Ok(a) => a,
            Err(e) => {
                recorder.finished(command_id, failed(&e, started));
                return rpc_error(
                    &id,
                    -32002,
                    &format!("sluice: the upstream MCP server failed: {e}"),
                );
            }
        };
        let (upstream_session, mut doc, bytes) = answer;
        let Some(mut doc_obj) = doc.as_object_mut().map(std::mem::take) else {
            recorder.finished(command_id, failed("no answer from the upstream", started));
            return rpc_error(
                &id,
                -32002,
                "sluice: the upstream MCP server sent no answer",
            );
        };
        // Only the answer is relayed, with the agent's own id (the
        // upstream's is not trusted); any other member is dropped.
        let answer = match (doc_obj.remove("result"), doc_obj.remove("error")) {
            (Some(result), _) => ("result", result),
            (None, Some(error)) => ("error", error),
            (None, None) => {
                recorder.finished(command_id, failed("no answer from the upstream", started));
                return rpc_error(
                    &id,
                    -32002,
                    "sluice: the upstream MCP server sent no answer",
                );
            }
        };
        let mut doc_obj = Map::new();
        doc_obj.insert("jsonrpc".into(), Value::String("2.0".into()));
        doc_obj.insert("id".into(), id.clone());
        doc_obj.insert(answer.0.into(), answer.1);
        let mut outcome = Outcome {
            bytes,
            duration_us: started.elapsed().as_micros() as u64,
            ..Default::default()
        };
        if is_call {
            // An error's message and data come from the tool too.
            if let (Some(error), Some(masker)) = (
                doc_obj.get_mut("error"),
                SessionMasker::active(live.handle.masker(), live.handle.info()),
            ) {
                outcome.masked = masker.mask_document(error, &[]).0;
            }
        }
        if let Some(error) = doc_obj.get("error") {
            outcome.error = Some(truncate(&canonical_json(error), SAMPLE_CHARS));
        }
        if is_call {
            if let Some(result) = doc_obj.get_mut("result") {
                if let Some(masker) =
                    SessionMasker::active(live.handle.masker(), live.handle.info())
                {
                    let counts = masker.mask_document(result, &[]);
                    outcome.masked = counts.0.clone();
                }
                let is_error = result.get("isError").and_then(Value::as_bool) == Some(true);
                outcome.tag = Some(
                    if is_error {
                        "tool error"
                    } else {
                        "tool result"
                    }
                    .into(),
                );
                outcome.columns = vec!["result".into()];
                outcome.sample = vec![vec![Some(truncate(&canonical_json(result), SAMPLE_CHARS))]];
            }
            recorder.finished(command_id, outcome);
        } else if message.method == "tools/list" {
            let listed = self
                .definitions(&live, connection, doc_obj.get_mut("result"))
                .await;
            outcome.tag = Some(format!("{} tools", listed.len()));
            outcome.rows = listed.len() as u64;
            outcome.columns = vec!["tool".into()];
            outcome.sample = listed.into_iter().map(|t| vec![Some(t)]).collect();
            recorder.finished(command_id, outcome);
        } else {
            outcome.tag = Some("ok".into());
            recorder.finished(command_id, outcome);
        }
        json_response(StatusCode::OK, &Value::Object(doc_obj), upstream_session)
    }

    /// Records the tool definitions of a `tools/list` result: new and
    /// changed ones are commands of their own; refused ones are removed.
    /// Returns `NAME sha256:DIGEST` per tool relayed.
    async fn definitions(
        &self,
        live: &Live,
        connection: &ConnectionConfig,
        result: Option<&mut Value>,
    ) -> Vec<String> {
        let Some(tools) = result
            .and_then(|r| r.get_mut("tools"))
            .and_then(Value::as_array_mut)
        else {
            return Vec::new();
        };
        let per_connection = lock(&self.definitions)
            .entry(connection.name.clone())
            .or_default()
            .clone();
        let _guard = per_connection.lock().await;
        let path = self
            .gateway
            .config()
            .gateway
            .state_dir
            .join("mcp")
            .join(format!(
                "{}.tools.json",
                hex::encode(connection.name.as_bytes())
            ));
        let mut known: BTreeMap<String, String> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut kept = Vec::new();
        let mut listed = Vec::new();
        let mut changed = false;
        for tool in tools.drain(..) {
            let Some(name) = tool.get("name").and_then(Value::as_str).map(str::to_string) else {
                continue;
            };
            if !valid_tool_name(&name) {
                // A name the gateway would not relay a call to is not listed.
                continue;
            }
            let digest = hex::encode(Sha256::digest(canonical_json(&tool).as_bytes()));
            let status = match known.get(&name) {
                Some(d) if *d == digest => None,
                Some(old) => Some(format!("changed sha256:{digest} was sha256:{old}")),
                None => Some(format!("new sha256:{digest}")),
            };
            let key = (connection.name.clone(), name.clone());
            if let Some(status) = status {
                // Not callable while its new definition is being judged.
                lock(&self.judged).remove(&key);
                let command = Command {
                    kind: CommandKind::Other {
                        operation: DEFINITION_OPERATION.into(),
                    },
                    text: format!("{name} {status} {}", canonical_json(&tool)),
                    context: Vec::new(),
                };
                let started = Instant::now();
                match live.handle.decide(command).await {
                    Ok(Decision::Forward { command_id }) => {
                        live.handle.recorder().finished(
                            command_id,
                            Outcome {
                                tag: Some("definition accepted".into()),
                                duration_us: started.elapsed().as_micros() as u64,
                                ..Default::default()
                            },
                        );
                        known.insert(name.clone(), digest.clone());
                        changed = true;
                        lock(&self.judged).insert(key.clone(), true);
                    }
                    Ok(Decision::Refuse { command_id, denial }) => {
                        live.handle
                            .recorder()
                            .finished(command_id, failed(&denial_text(&denial), started));
                        lock(&self.judged).insert(key, false);
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(message = "The audit store refused a tool definition; leaving the tool out.", error = %e);
                        lock(&self.judged).insert(key, false);
                        continue;
                    }
                }
            } else if !*lock(&self.judged).entry(key).or_insert(true) {
                // Unchanged since it was refused: still left out.
                continue;
            }
            listed.push(format!("{name} sha256:{digest}"));
            kept.push(tool);
        }
        *tools = kept;
        if changed {
            if let Ok(bytes) = serde_json::to_vec(&known) {
                if let Err(e) = sluice_core::fsutil::write_private(&path, &bytes) {
                    tracing::warn!(message = "Could not save the MCP tool definitions seen.", error = %e);
                }
            }
        }
        listed
    }

    /// The agent's session on `connection`: cached per token, re-admitted on every request.
    async fn session(
        &self,
        token: &str,
        connection: &ConnectionConfig,
        peer: SocketAddr,
    ) -> Result<Arc<Live>, (StatusCode, String)> {
        let key: SessionKey = (
            Sha256::digest(token.as_bytes()).into(),
            connection.name.clone(),
        );
        let cached = lock(&self.sessions).get_mut(&key).map(|(at, l, _)| {
            *at = Instant::now();
            l.clone()
        });
        if let Some(live) = cached {
            let credentials = Credentials {
                user: String::new(),
                token: token.to_string(),
            };
            match self.gateway.readmit(&live.handle, &credentials).await {
                Ok(()) if live.handle.end_reason_now().is_none() => return Ok(live),
                _ => {
                    lock(&self.sessions).remove(&key);
                }
            }
        }
        // Core's admission, as for every protocol's session; the session's
        // task lives until core ends it or the cache lets it go.
        let (session, answer) = McpSession::new(token, key, connection, self.sessions.clone());
        let gateway = self.gateway.clone();
        let peer = peer.to_string();
        tokio::spawn(async move {
            if let Err(e) = gateway.serve(session, PROTOCOL, &peer).await {
                tracing::warn!(message = "An MCP upstream session failed.", client = %peer, error = %e);
            }
        });
        answer.await.map_err(|_| {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "sluice: the session could not be opened; retry".to_string(),
            )
        })?
    }

    /// POSTs `body` upstream with the connection's credential; returns the
    /// upstream's session id and its JSON-RPC answer (for a notification, `Null`).
    async fn send(
        &self,
        live: &Live,
        body: &str,
        session_id: Option<HeaderValue>,
        version: Option<HeaderValue>,
    ) -> Result<(Option<HeaderValue>, Value, u64), String> {
        let mut req = Request::post(live.uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let h = req.headers_mut();
        for (name, value) in &live.injected {
            h.insert(name.clone(), value.clone());
        }
        if let Some(v) = session_id {
            h.insert(HeaderName::from_static("mcp-session-id"), v);
        }
        if let Some(v) = version {
            h.insert(HeaderName::from_static("mcp-protocol-version"), v);
        }
        let exchange = async {
            let response = live
                .client
                .request(req)
                .await
                .map_err(|e| format!("cannot reach it ({e})"))?;
            let (parts, body) = response.into_parts();
            let bytes = Limited::new(body, MAX_UPSTREAM_BODY)
                .collect()
                .await
                .map_err(|_| {
                    format!("its answer could not be read or exceeds {MAX_UPSTREAM_BODY} bytes")
                })?
                .to_bytes();
            Ok::<_, String>((parts, bytes))
        };
        let (parts, bytes) = tokio::time::timeout(live.timeout, exchange)
            .await
            .map_err(|_| "it did not answer in time".to_string())??;
        // Before parsing, masking or recording: the gateway's credential never
        // reaches the agent or the audit, whatever the upstream echoes.
        let bytes = match sluice_http::body::Redactor::new(&live.secrets) {
            Some(mut redactor) => Bytes::from(redactor.redact_all(&bytes)),
            None => bytes,
        };
        let upstream_session = parts
            .headers
            .get("mcp-session-id")
            .filter(|v| visible_ascii(v))
            .cloned();
        if let Some(given) = &upstream_session {
            let mut known = lock(&live.upstream_sessions);
            if !known.contains(given) {
                if known.len() >= MAX_UPSTREAM_SESSIONS {
                    known.pop_front();
                }
                known.push_back(given.clone());
            }
        }
        if parts.status == StatusCode::ACCEPTED {
            return Ok((upstream_session, Value::Null, bytes.len() as u64));
        }
        if !parts.status.is_success() {
            return Err(format!("it answered HTTP {}", parts.status.as_u16()));
        }
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let doc = if content_type.starts_with("text/event-stream") {
            sse_answer(&bytes)?
        } else {
            serde_json::from_slice(&bytes).map_err(|_| "its answer is not JSON".to_string())?
        };
        Ok((upstream_session, doc, bytes.len() as u64))
    }
}

/// The JSON-RPC response in a server-sent event stream (the first message
/// with a `result` or an `error`); server requests and notifications in the
/// stream are not relayed.
fn sse_answer(bytes: &[u8]) -> Result<Value, String> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| "its event stream is not UTF-8".to_string())?;
    let text = text.replace("\r\n", "\n");
    for event in text.split("\n\n") {
        let data: Vec<&str> = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        if data.is_empty() {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(&data.join("\n")) else {
            return Err("its event stream holds a message that is not JSON".into());
        };
        if v.get("result").is_some() || v.get("error").is_some() {
            return Ok(v);
        }
    }
    Err("its event stream ended without an answer".into())
}

pub(crate) fn client(tls: Option<Arc<rustls::ClientConfig>>) -> Client {
    sluice_http::upstream::pooled_client(sluice_http::upstream::connector(tls.as_deref(), false))
}

/// Parses one JSON-RPC message; refuses batches, client responses and
/// anything malformed (JSON-RPC code and message).
fn parse(body: &[u8]) -> Result<Message, (i64, String)> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        (
            -32700,
            format!("Parse error: the message is not JSON ({e})"),
        )
    })?;
    let Value::Object(mut obj) = value else {
        return Err((
            -32600,
            "sluice: batches and non-object messages are not relayed; send one JSON-RPC request per POST".into(),
        ));
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err((-32600, "Invalid Request: jsonrpc must be \"2.0\"".into()));
    }
    let Some(method) = obj
        .get("method")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return Err((
            -32600,
            "sluice: only requests and notifications are relayed (the gateway forwards no server requests, so there is nothing to answer)".into(),
        ));
    };
    let id = obj.remove("id");
    if let Some(id) = &id {
        if !(id.is_string() || id.is_i64() || id.is_u64()) {
            return Err((
                -32600,
                "Invalid Request: id must be a string or an integer".into(),
            ));
        }
    }
    let params = match obj.remove("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p,
        Some(_) => return Err((-32602, "Invalid params: params must be an object".into())),
    };
    Ok(Message { id, method, params })
}

fn visible_ascii(v: &HeaderValue) -> bool {
    !v.is_empty() && v.len() <= 256 && v.as_bytes().iter().all(|b| (0x21..=0x7e).contains(b))
}

fn forwardable(headers: &http::HeaderMap, name: &str) -> Option<HeaderValue> {
    headers.get(name).filter(|v| visible_ascii(v)).cloned()
}

fn denial_text(denial: &Denial) -> String {
    // The message names the rule (core builds it from rule names and messages only).
    let mut text = format!("sluice: {}", denial.message);
    if let Some(hint) = &denial.hint {
        text.push(' ');
        text.push_str(hint);
    }
    text
}

fn failed(error: &str, started: Instant) -> Outcome {
    Outcome {
        error: Some(error.to_string()),
        duration_us: started.elapsed().as_micros() as u64,
        ..Default::default()
    }
}

fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn tool_error(id: &Value, text: &str) -> Response<Body> {
    json_response(
        StatusCode::OK,
        &json!({"jsonrpc": "2.0", "id": id, "result": {
            "content": [{"type": "text", "text": text}], "isError": true}}),
        None,
    )
}

fn rpc_error(id: &Value, code: i64, message: &str) -> Response<Body> {
    json_response(
        StatusCode::OK,
        &json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}),
        None,
    )
}

fn json_response(
    status: StatusCode,
    value: &Value,
    session: Option<HeaderValue>,
) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(s) = session {
        response
            .headers_mut()
            .insert(HeaderName::from_static("mcp-session-id"), s);
    }
    response
}

fn status_only(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()).boxed());
    *response.status_mut() = status;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let v: Value =
            serde_json::from_str(r#"{"b":1,"a":{"y":[{"d":1,"c":2}],"x":"é"}}"#).unwrap();
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"x":"é","y":[{"c":2,"d":1}]},"b":1}"#
        );
    }

    #[test]
    fn parse_refuses_what_cannot_be_judged() {
        assert_eq!(parse(b"{").err().unwrap().0, -32700);
        assert_eq!(parse(b"[]").err().unwrap().0, -32600);
        assert_eq!(
            parse(br#"[{"jsonrpc":"2.0","id":1,"method":"tools/call"}]"#)
                .err()
                .unwrap()
                .0,
            -32600
        );
        assert_eq!(
            parse(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#)
                .err()
                .unwrap()
                .0,
            -32600
        );
        assert_eq!(
            parse(br#"{"jsonrpc":"2.0","id":{"x":1},"method":"ping"}"#)
                .err()
                .unwrap()
                .0,
            -32600
        );
        assert_eq!(
            parse(br#"{"jsonrpc":"2.0","id":1,"method":"ping","params":[1]}"#)
                .err()
                .unwrap()
                .0,
            -32602
        );
        let m = parse(br#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"t"}}"#)
            .unwrap();
        assert_eq!(m.method, "tools/call");
        assert_eq!(m.id, Some(Value::String("a".into())));
    }

    #[test]
    fn tool_names_parse_one_way() {
        assert!(valid_tool_name("github.create_issue"));
        assert!(!valid_tool_name("a b"));
        assert!(!valid_tool_name(""));
        assert!(!valid_tool_name(&"x".repeat(129)));
    }

    #[test]
    fn the_answer_is_found_in_an_event_stream() {
        let stream = b"event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\r\n\r\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n";
        assert_eq!(sse_answer(stream).unwrap()["id"], 1);
        assert!(sse_answer(b"data: {\"jsonrpc\":\"2.0\"}\n\n").is_err());
    }
}
