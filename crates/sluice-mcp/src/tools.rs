//! The tools: every connection the caller may open, as `CONNECTION.tool`.
//!
//! A tool call is a native client of the gateway's own listener for the
//! connection's protocol, on loopback, with the caller's token: the call is
//! admitted, judged, held, recorded and masked by the same code as any
//! psql/ssh/curl client (one admission path, one pipeline). Nothing here
//! decides whether a command may run; the tool only translates.

use crate::http_tool::{HttpCall, HttpToolError};
use crate::kube_tool::Verb;
use crate::pg::{PgClient, PgClientError};
use crate::ssh_tool::SshToolError;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    InitializeResult, JsonObject, ListToolsResult, PaginatedRequestParams,
    ProgressNotificationParam, ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{json, Value};
use sluice_core::config::{ConnectionConfig, ConnectionKind};
use sluice_core::{Action, Config, Gateway, Identity};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Who made the request: set by the listener after the bearer check, read
/// by the tools from the request's HTTP parts.
#[derive(Clone)]
pub struct Caller {
    pub identity: Identity,
    /// The bearer token, presented again to the gateway's listeners.
    pub token: String,
    pub client_addr: SocketAddr,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("subject", &self.identity.subject)
            .field("token", &"<redacted>")
            .field("client_addr", &self.client_addr)
            .finish()
    }
}

/// The MCP server handler: lists and runs the caller's tools.
#[derive(Clone)]
pub struct SluiceTools {
    gateway: Arc<Gateway>,
}

impl std::fmt::Debug for SluiceTools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SluiceTools").finish_non_exhaustive()
    }
}

/// The tool kinds, by connection kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolKind {
    Query,
    ListTables,
    DescribeTable,
    Request,
    Exec,
    Kube(Verb),
}

impl ToolKind {
    pub fn for_kind(kind: &ConnectionKind) -> &'static [ToolKind] {
        if *kind == ConnectionKind::Postgres {
            &[
                ToolKind::Query,
                ToolKind::ListTables,
                ToolKind::DescribeTable,
            ]
        } else if *kind == ConnectionKind::Http {
            &[ToolKind::Request]
        } else if *kind == ConnectionKind::Ssh {
            &[ToolKind::Exec]
        } else if *kind == ConnectionKind::Kubernetes {
            &[
                ToolKind::Kube(Verb::Get),
                ToolKind::Kube(Verb::List),
                ToolKind::Kube(Verb::Logs),
                ToolKind::Kube(Verb::Delete),
                ToolKind::Kube(Verb::Apply),
                ToolKind::Kube(Verb::Exec),
            ]
        } else {
            &[]
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ToolKind::Query => "query",
            ToolKind::ListTables => "list_tables",
            ToolKind::DescribeTable => "describe_table",
            ToolKind::Request => "request",
            ToolKind::Exec => "exec",
            ToolKind::Kube(Verb::Get) => "get",
            ToolKind::Kube(Verb::List) => "list",
            ToolKind::Kube(Verb::Logs) => "logs",
            ToolKind::Kube(Verb::Delete) => "delete",
            ToolKind::Kube(Verb::Apply) => "apply",
            ToolKind::Kube(Verb::Exec) => "exec",
        }
    }
}

/// Splits `CONNECTION.tool` at its last dot (connection names may hold dots).
pub fn split_tool_name(name: &str) -> Option<(&str, &str)> {
    let (connection, tool) = name.rsplit_once('.')?;
    (!connection.is_empty() && !tool.is_empty()).then_some((connection, tool))
}

/// Whether the caller may open `connection` (its token's narrowing and the
/// connection's `allow_groups`), for listing only: the gateway's admission
/// decides again when the call opens its session.
pub fn visible(identity: &Identity, connection: &ConnectionConfig) -> bool {
    identity.may_open(&connection.name) && identity.in_any_group(&connection.allow_groups)
}

/// Whether a rule denies every command `identity` could send on
/// `connection` (no match keys, no subject patterns, action deny): its tools
/// are left out of the listing. A listing convenience only: a call is still
/// judged, and refused by that rule, at the gateway.
pub fn denied_outright(config: &Config, identity: &Identity, connection: &str) -> bool {
    config.rules.iter().any(|r| {
        r.action == Action::Deny
            && r.match_.is_empty()
            && r.subjects.is_none()
            && r.connections
                .as_ref()
                .is_none_or(|c| c.iter().any(|n| n == connection))
            && r.groups.as_ref().is_none_or(|g| identity.in_any_group(g))
    })
}

fn schema(value: Value) -> Arc<JsonObject> {
    match value {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(JsonObject::new()),
    }
}

fn tool(connection: &ConnectionConfig, kind: ToolKind) -> Tool {
    let name = format!("{}.{}", connection.name, kind.name());
    let c = &connection.name;
    let read_only = ToolAnnotations::new()
        .read_only(true)
        .destructive(false)
        .idempotent(true);
    match kind {
        ToolKind::Query => Tool::new(
            name,
            format!(
                "Run one SQL statement on the PostgreSQL connection {c:?} through the Sluice gateway. \
                 Parameters are $1, $2, … (sent as text; null is NULL). Rows come back as JSON with \
                 column names and types; sensitive values are masked. The gateway's rules may refuse \
                 a statement (the error names the rule and what to do) or hold it for human approval \
                 (the call waits, with progress notifications)."
            ),
            schema(json!({
                "type": "object",
                "properties": {
                    "sql": { "type": "string", "description": "One SQL statement." },
                    "params": {
                        "type": "array",
                        "description": "Values for $1, $2, … (strings, numbers, booleans, null; objects and arrays are sent as JSON text).",
                        "items": {}
                    }
                },
                "required": ["sql"],
                "additionalProperties": false
            })),
        ),
        ToolKind::ListTables => Tool::new(
            name,
            format!("List the tables and views of the PostgreSQL connection {c:?} (schema, name, type)."),
            schema(json!({
                "type": "object",
                "properties": {
                    "schema": { "type": "string", "description": "Only this schema (default: every schema but the system ones)." }
                },
                "additionalProperties": false
            })),
        )
        .with_annotations(read_only),
        ToolKind::DescribeTable => Tool::new(
            name,
            format!("Describe a table or view of the PostgreSQL connection {c:?}: its columns, types, nullability and defaults."),
            schema(json!({
                "type": "object",
                "properties": {
                    "table": { "type": "string", "description": "The table's name." },
                    "schema": { "type": "string", "description": "Its schema (default: public)." }
                },
                "required": ["table"],
                "additionalProperties": false
            })),
        )
        .with_annotations(read_only),
        ToolKind::Exec => Tool::new(
            name,
            format!(
                "Run one command line on the SSH host of the connection {c:?} through the Sluice gateway \
                 (as `ssh {c}@gateway COMMAND` would). Returns stdout, stderr and the exit status; \
                 sensitive values are masked. The gateway's rules may refuse a command (stderr names the \
                 rule, non-zero exit status) or hold it for human approval."
            ),
            schema(json!({
                "type": "object",
                "properties": {
                    "command": { "type": "string", "description": "The command line, as a shell would read it." }
                },
                "required": ["command"],
                "additionalProperties": false
            })),
        ),
        ToolKind::Kube(verb) => kube_tool_definition(name, c, verb),
        ToolKind::Request => Tool::new(
            name,
            format!(
                "Send one HTTP request to the API of the connection {c:?} through the Sluice gateway \
                 (the gateway adds the API's credential). Returns the status, headers and body (JSON \
                 bodies as JSON); sensitive values are masked. The gateway's rules may refuse a request \
                 (a 403 problem naming the rule) or hold it for human approval."
            ),
            schema(json!({
                "type": "object",
                "properties": {
                    "method": { "type": "string", "description": "GET (default), POST, PUT, PATCH, DELETE, …" },
                    "path": { "type": "string", "description": "The path below the API's base, starting with /." },
                    "query": { "type": "object", "description": "Query parameters.", "additionalProperties": { "type": "string" } },
                    "headers": { "type": "object", "description": "Request headers (not Authorization: the gateway injects the credential).", "additionalProperties": { "type": "string" } },
                    "body": { "description": "The body: a string as is, any other JSON value as application/json." }
                },
                "required": ["path"],
                "additionalProperties": false
            })),
        ),
    }
}

fn kube_tool_definition(name: String, c: &str, verb: Verb) -> Tool {
    let name_arg = json!({ "type": "string", "description": "The object's name." });
    let namespace = json!({ "type": "string", "description": "The namespace (default: default; ignored for cluster-scoped resources)." });
    let resource = json!({ "type": "string", "description": "The resource, plural and lower case: pods, deployments, secrets, …" });
    let api_version = json!({ "type": "string", "description": "Group/version for resources that are not built in (e.g. example.com/v1)." });
    let (what, properties, required): (&str, Value, Vec<&str>) = match verb {
        Verb::Get => (
            "Read one object",
            json!({ "resource": resource, "name": name_arg, "namespace": namespace, "api_version": api_version }),
            vec!["resource", "name"],
        ),
        Verb::List => (
            "List objects of a resource",
            json!({
                "resource": resource, "namespace": namespace, "api_version": api_version,
                "label_selector": { "type": "string" }, "field_selector": { "type": "string" },
                "limit": { "type": "integer" }
            }),
            vec!["resource"],
        ),
        Verb::Logs => (
            "Read a pod's logs",
            json!({
                "name": { "type": "string", "description": "The pod." }, "namespace": namespace,
                "container": { "type": "string" }, "tail_lines": { "type": "integer" },
                "previous": { "type": "boolean" }
            }),
            vec!["name"],
        ),
        Verb::Delete => (
            "Delete one object",
            json!({ "resource": resource, "name": name_arg, "namespace": namespace, "api_version": api_version }),
            vec!["resource", "name"],
        ),
        Verb::Exec => (
            "Run a command in a pod's container (no stdin, no terminal)",
            json!({
                "name": { "type": "string", "description": "The pod." }, "namespace": namespace,
                "container": { "type": "string" },
                "command": { "type": "array", "items": { "type": "string" }, "description": "The program and its arguments (argv, not a shell line)." }
            }),
            vec!["name", "command"],
        ),
        Verb::Apply => (
            "Create or update an object with server-side apply (field manager sluice-mcp)",
            json!({
                "resource": resource,
                "manifest": { "type": "object", "description": "The object (apiVersion, kind, metadata.name, …)." },
                "namespace": namespace,
                "force": { "type": "boolean", "description": "Take over fields other managers own." }
            }),
            vec!["resource", "manifest"],
        ),
    };
    let tool = Tool::new(
        name,
        format!(
            "{what} on the Kubernetes connection {c:?} through the Sluice gateway (as kubectl would; \
             the gateway holds the cluster credential). Returns the status and the API's JSON answer; \
             Secret values are masked. The gateway's rules may refuse a request (a Status naming the \
             rule) or hold it for human approval."
        ),
        schema(json!({
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": false
        })),
    );
    match verb {
        Verb::Get | Verb::List | Verb::Logs => tool.with_annotations(
            ToolAnnotations::new()
                .read_only(true)
                .destructive(false)
                .idempotent(true),
        ),
        Verb::Delete | Verb::Apply | Verb::Exec => tool,
    }
}

/// A listener bound to all interfaces is reached on loopback.
fn dialable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

fn text_error(text: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(text.into())])
}

/// A JSON argument as a text parameter.
fn param(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn string_arg<'a>(args: &'a JsonObject, key: &str) -> Result<Option<&'a str>, ErrorData> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ErrorData::invalid_params(
            format!("argument {key:?} must be a string"),
            None,
        )),
    }
}

impl SluiceTools {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        SluiceTools { gateway }
    }

    /// The tools `identity` may use, in config order.
    pub fn tools_for(&self, identity: &Identity) -> Vec<Tool> {
        let config = self.gateway.config();
        config
            .connections
            .iter()
            .filter(|c| visible(identity, c) && !denied_outright(&config, identity, &c.name))
            .flat_map(|c| ToolKind::for_kind(&c.kind).iter().map(move |k| tool(c, *k)))
            .collect()
    }

    async fn call(
        &self,
        caller: &Caller,
        request: CallToolRequestParams,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let unknown = || {
            ErrorData::invalid_params(
                format!(
                    "unknown tool {:?}: tools/list names the tools you may use",
                    request.name
                ),
                None,
            )
        };
        let (connection, tool_name) = split_tool_name(&request.name).ok_or_else(unknown)?;
        let config = self.gateway.config();
        // A connection the caller may not open is an unknown tool, as in tools/list.
        let conn = config
            .connection(connection)
            .filter(|c| visible(&caller.identity, c))
            .ok_or_else(unknown)?;
        let kind = ToolKind::for_kind(&conn.kind)
            .iter()
            .copied()
            .find(|k| k.name() == tool_name)
            .ok_or_else(unknown)?;
        let args = request.arguments.clone().unwrap_or_default();
        match kind {
            ToolKind::Request => return self.call_http(caller, conn, &args, context).await,
            ToolKind::Exec => return self.call_ssh(caller, conn, &args, context).await,
            ToolKind::Kube(verb) => {
                let call = crate::kube_tool::call(verb, &args)
                    .map_err(|e| ErrorData::invalid_params(e.to_string(), None))?;
                return self
                    .send_http(caller, conn, call, verb == Verb::Exec, context)
                    .await;
            }
            _ => {}
        }
        let (sql, params) = sql_for(kind, &args)?;
        let Some(listen) = config.listen.postgres else {
            return Ok(text_error(
                "this gateway serves no PostgreSQL listener (listen.postgres), so PostgreSQL tools cannot run",
            ));
        };
        Ok(self
            .run_sql(caller, dialable(listen), &conn.name, &sql, &params, context)
            .await)
    }

    /// `CONN.exec`: one command line through the gateway's SSH listener.
    async fn call_ssh(
        &self,
        caller: &Caller,
        conn: &ConnectionConfig,
        args: &JsonObject,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let config = self.gateway.config();
        if let Some(extra) = args.keys().find(|k| *k != "command") {
            return Err(ErrorData::invalid_params(
                format!("unknown argument {extra:?}"),
                None,
            ));
        }
        let command = string_arg(args, "command")?
            .ok_or_else(|| ErrorData::invalid_params("argument \"command\" is required", None))?;
        let Some(listen) = config.listen.ssh else {
            return Ok(text_error(
                "this gateway serves no SSH listener (listen.ssh), so SSH tools cannot run",
            ));
        };
        let host_key = match crate::ssh_tool::gateway_host_key(&crate::ssh_tool::host_key_path(
            &config.gateway.state_dir,
        )) {
            Ok(key) => key,
            Err(e) => {
                tracing::warn!(message = "An MCP tool call could not read the gateway's SSH host key.", error = %e);
                return Ok(text_error(format!("the call could not run: {e}")));
            }
        };
        let (notices, forward) = progress_forwarder(context);
        let run = crate::ssh_tool::exec(
            dialable(listen),
            host_key,
            &caller.token,
            &conn.name,
            command,
            |text| {
                let _ = notices.try_send(text.to_string());
            },
        );
        let outcome = tokio::select! {
            r = run => Some(r),
            _ = context.ct.cancelled() => None,
        };
        forward.abort();
        Ok(match outcome {
            None => text_error("cancelled by the client"),
            Some(Ok(doc)) => {
                let failed = doc["exit_status"].as_u64() != Some(0);
                let content = vec![ContentBlock::text(doc.to_string())];
                let mut out = if failed {
                    CallToolResult::error(content)
                } else {
                    CallToolResult::success(content)
                };
                out.structured_content = Some(doc);
                out
            }
            Some(Err(SshToolError::Refused(text))) => text_error(text),
            Some(Err(e)) => {
                tracing::warn!(message = "An MCP tool call could not reach the gateway's SSH listener.", connection = %conn.name, error = %e);
                text_error(format!("the call could not run: {e}"))
            }
        })
    }

    /// `CONN.request`: one request through the gateway's HTTP listener.
    async fn call_http(
        &self,
        caller: &Caller,
        conn: &ConnectionConfig,
        args: &JsonObject,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let call = HttpCall::from_arguments(args)
            .map_err(|e| ErrorData::invalid_params(e.to_string(), None))?;
        self.send_http(caller, conn, call, false, context).await
    }

    /// One request through the gateway's HTTP listener (HTTP and Kubernetes connections).
    async fn send_http(
        &self,
        caller: &Caller,
        conn: &ConnectionConfig,
        call: HttpCall,
        exec: bool,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let config = self.gateway.config();
        let Some(listen) = config.listen.http else {
            return Ok(text_error(
                "this gateway serves no HTTP listener (listen.http), so HTTP tools cannot run",
            ));
        };
        let ca = match &config.tls {
            Some(tls) => tls.cert.clone(),
            None => sluice_core::tls::generated_paths(&config.gateway.state_dir).0,
        };
        let addr = dialable(listen);
        let run = async {
            if exec {
                crate::http_tool::exec(addr, &ca, &caller.token, &conn.name, call).await
            } else {
                crate::http_tool::send(addr, &ca, &caller.token, &conn.name, call).await
            }
        };
        let outcome = tokio::select! {
            r = run => r,
            _ = context.ct.cancelled() => return Ok(text_error("cancelled by the client")),
        };
        Ok(match outcome {
            Ok(doc) => {
                // An HTTP answer of 400 or more, or an exec that did not exit 0.
                let failed = match doc.get("exit_status") {
                    Some(code) => code.as_i64() != Some(0),
                    None => doc["status"].as_u64().is_none_or(|s| s >= 400),
                };
                let content = vec![ContentBlock::text(doc.to_string())];
                let mut out = if failed {
                    CallToolResult::error(content)
                } else {
                    CallToolResult::success(content)
                };
                out.structured_content = Some(doc);
                out
            }
            Err(HttpToolError::Invalid(e)) => {
                return Err(ErrorData::invalid_params(e, None));
            }
            Err(e) => {
                tracing::warn!(message = "An MCP tool call could not reach the gateway's HTTP listener.", connection = %conn.name, error = %e);
                text_error(format!("the call could not run: {e}"))
            }
        })
    }

    async fn run_sql(
        &self,
        caller: &Caller,
        addr: SocketAddr,
        connection: &str,
        sql: &str,
        params: &[Option<String>],
        context: &RequestContext<RoleServer>,
    ) -> CallToolResult {
        let (notices, forward) = progress_forwarder(context);
        let run = async {
            let mut client =
                PgClient::connect(addr, &caller.identity.subject, &caller.token, connection)
                    .await?;
            let result = client
                .query(sql, params, |n| {
                    let _ = notices.try_send(n.to_string());
                })
                .await;
            client.close().await;
            result
        };
        let outcome = tokio::select! {
            r = run => Some(r),
            // The client cancelled: dropping the connection ends the gateway session.
            _ = context.ct.cancelled() => None,
        };
        forward.abort();
        match outcome {
            None => text_error("cancelled by the client"),
            Some(Ok(result)) => {
                let doc = result.to_json();
                let mut out = CallToolResult::success(vec![ContentBlock::text(doc.to_string())]);
                out.structured_content = Some(doc);
                out
            }
            Some(Err(PgClientError::Refused(text))) => text_error(text),
            Some(Err(e)) => {
                tracing::warn!(message = "An MCP tool call could not reach the gateway's PostgreSQL listener.", connection = %connection, error = %e);
                text_error(format!("the call could not run: {e}"))
            }
        }
    }
}

/// The statement a PostgreSQL tool runs, and its text parameters.
fn sql_for(kind: ToolKind, args: &JsonObject) -> Result<(String, Vec<Option<String>>), ErrorData> {
    Ok(match kind {
        ToolKind::Query => {
            let sql = string_arg(args, "sql")?
                .ok_or_else(|| ErrorData::invalid_params("argument \"sql\" is required", None))?;
            let params = match args.get("params") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(values)) => values.iter().map(param).collect(),
                Some(_) => {
                    return Err(ErrorData::invalid_params(
                        "argument \"params\" must be an array",
                        None,
                    ))
                }
            };
            if let Some(extra) = args.keys().find(|k| *k != "sql" && *k != "params") {
                return Err(ErrorData::invalid_params(
                    format!("unknown argument {extra:?}"),
                    None,
                ));
            }
            (sql.to_string(), params)
        }
        ToolKind::ListTables => match string_arg(args, "schema")? {
            Some(schema) => (
                "select table_schema, table_name, table_type from information_schema.tables \
                 where table_schema = $1 order by 1, 2"
                    .to_string(),
                vec![Some(schema.to_string())],
            ),
            None => (
                "select table_schema, table_name, table_type from information_schema.tables \
                 where table_schema not in ('pg_catalog', 'information_schema') order by 1, 2"
                    .to_string(),
                Vec::new(),
            ),
        },
        ToolKind::DescribeTable => {
            let table = string_arg(args, "table")?
                .ok_or_else(|| ErrorData::invalid_params("argument \"table\" is required", None))?;
            let schema = string_arg(args, "schema")?.unwrap_or("public");
            (
                "select column_name, data_type, is_nullable, column_default \
                 from information_schema.columns where table_schema = $1 and table_name = $2 \
                 order by ordinal_position"
                    .to_string(),
                vec![Some(schema.to_string()), Some(table.to_string())],
            )
        }
        ToolKind::Request | ToolKind::Exec | ToolKind::Kube(_) => {
            return Err(ErrorData::invalid_params("not a PostgreSQL tool", None))
        }
    })
}

/// Progress notifications waiting for a client that reads slowly; past this
/// they are dropped (the output itself is captured, bounded, in the result).
const PROGRESS_BACKLOG: usize = 64;

/// Notices (an approval hold says so) become progress notifications when
/// the client asked for progress. Abort the task when the call ends. The
/// queue is bounded: a client that stops reading cannot make it grow.
fn progress_forwarder(
    context: &RequestContext<RoleServer>,
) -> (
    tokio::sync::mpsc::Sender<String>,
    tokio::task::JoinHandle<()>,
) {
    let (notices, mut notices_rx) = tokio::sync::mpsc::channel::<String>(PROGRESS_BACKLOG);
    let progress_token = context.meta.get_progress_token();
    let peer = context.peer.clone();
    let forward = tokio::spawn(async move {
        let mut step = 0.0;
        while let Some(text) = notices_rx.recv().await {
            if let Some(token) = &progress_token {
                step += 1.0;
                let _ = peer
                    .notify_progress(
                        ProgressNotificationParam::new(token.clone(), step).with_message(text),
                    )
                    .await;
            }
        }
    });
    (notices, forward)
}

fn caller(context: &RequestContext<RoleServer>) -> Result<Caller, ErrorData> {
    // Fail closed: no authenticated caller, no tools.
    context
        .extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Caller>())
        .cloned()
        .ok_or_else(|| ErrorData::invalid_request("no authenticated caller", None))
}

impl ServerHandler for SluiceTools {
    fn get_info(&self) -> ServerConfig {
        InitializeResult::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("sluice", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Sluice is an access gateway: each tool runs on a production connection under the \
                 gateway's rules. A refused call is a tool error naming the rule and what to do next; \
                 a call held for human approval waits until someone decides. Every call is recorded.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let caller = caller(&context)?;
        Ok(ListToolsResult::with_all_items(
            self.tools_for(&caller.identity),
        ))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let caller = caller(&context)?;
        // The gateway session the call opens is from loopback: the agent's
        // own address is here.
        tracing::info!(
            message = "MCP tool call.",
            subject = %caller.identity.subject,
            tool = %request.name,
            client = %caller.client_addr
        );
        self.call(&caller, request, &context).await.map(Into::into)
    }
}
