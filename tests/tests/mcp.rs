//! Sluice as an MCP server, driven by the official MCP Python SDK
//! (tests/py/mcp_client.py) over Streamable HTTP and over stdio (`sluice
//! mcp`): tools filtered by group, masked rows, a refusal naming its rule, a
//! held write approved with `sluice approvals approve`, every call in the
//! audit journal and `sluice replay` (and the oracle: what PostgreSQL ran is
//! what the gateway judged). Then hostile input: no token, bad tokens,
//! malformed JSON-RPC, oversized messages, unknown methods, a flood.

// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use sluice_e2e::*;
use std::process::{Command, Output};
use std::thread;
use std::time::Duration;

/// A second PostgreSQL connection only DBAs may open (same database).
const DBA_CONNECTION: &str = r#"
[[connections]]
name = "admindb"
kind = "postgres"
upstream = "{PG}"
database = "app"
user = "app"
password = { env = "APPDB_PASSWORD" }
allow_groups = ["dba"]
upstream_tls = "prefer"
"#;

/// Interns may open appdb but every command there is refused: no tools.
const INTERNS: &str = r#"
[[rules]]
name = "interns-read-nothing"
connections = ["appdb"]
groups = ["interns"]
action = "deny"
message = "Interns have no database access yet."
"#;

/// Batch agents' order writes wait for a DBA in retry mode.
const RETRY_RULE: &str = r#"
[[rules]]
name = "retry-review"
match = { sql = ["write"], tables = ["orders"] }
groups = ["batch"]
action = "review"
approvers = ["dba"]
mode = "retry"
timeout = "5m"
"#;

/// The MCP listener as a client reaches it.
struct Mcp {
    url: String,
    mcp_addr: String,
    ca: std::path::PathBuf,
}

impl Mcp {
    /// Waits for the listener (configured on port 0: its log line gives the
    /// address) and the gateway's CA.
    fn ready(state_dir: &std::path::Path, log: impl Fn() -> String) -> Mcp {
        let (mcp_addr, ca) = mcp_listener(state_dir, log);
        let mcp_addr = mcp_addr.to_string();
        Mcp {
            url: format!("https://{mcp_addr}/mcp"),
            mcp_addr,
            ca,
        }
    }
}

fn start() -> (Env, Mcp) {
    let api = sluice_sandbox::free_port();
    let env = Env::builder()
        .extra_toml(DBA_CONNECTION)
        .extra_toml(RETRY_RULE)
        .extra_toml(INTERNS)
        .extra_toml(&quickstart_policy())
        .gateway_env("SLUICE_LISTEN__MCP", ANY_LOCAL_PORT)
        .gateway_env("SLUICE_LISTEN__API", &format!("127.0.0.1:{api}"))
        .start();
    let mcp = Mcp::ready(&env.state_dir, || env.gateway_log());
    (env, mcp)
}

impl Mcp {
    fn client_command(&self, token: &str, mode: &str, action: &[&str]) -> Command {
        let ca = &self.ca;
        let mut cmd = Command::new("python3");
        cmd.arg(py_dir().join("mcp_client.py"))
            .args(["http", &self.url, &ca.display().to_string(), token])
            .args(["--mode", mode])
            .args(action)
            .env("PYTHONUNBUFFERED", "1");
        cmd
    }

    fn client(&self, token: &str, mode: &str, action: &[&str]) -> Value {
        let out = run_with_timeout(
            &mut self.client_command(token, mode, action),
            None,
            COMMAND_TIMEOUT,
        );
        parse(&out)
    }

    fn tool_names(&self, token: &str, mode: &str) -> (String, Vec<String>) {
        let listed = self.client(token, mode, &["list"]);
        let names = listed["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("no tools in {listed}"))
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect();
        (listed["protocol"].as_str().unwrap_or("").to_string(), names)
    }

    fn call(&self, token: &str, name: &str, arguments: Value) -> Value {
        self.client(token, "legacy", &["call", name, &arguments.to_string()])
    }

    /// `curl` against the MCP listener: the status line's code, headers and body.
    fn curl(&self, token: Option<&str>, path: &str, body: Option<&[u8]>) -> (u16, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let headers = dir.path().join("headers");
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "30", "--cacert"])
            .arg(&self.ca)
            .arg("-D")
            .arg(&headers)
            .args(["-H", "Accept: application/json, text/event-stream"]);
        if let Some(token) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
        }
        if body.is_some() {
            cmd.args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                "@-",
            ]);
        }
        cmd.arg(format!("https://{}{path}", self.mcp_addr));
        let out = run_with_timeout(&mut cmd, body, COMMAND_TIMEOUT);
        let head = std::fs::read_to_string(&headers).unwrap_or_default();
        // The last status line (curl also dumps a `100 Continue`).
        let code = head
            .lines()
            .rfind(|l| l.starts_with("HTTP/"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status from curl: {}", stderr(&out)));
        (code, head, stdout(&out))
    }
}

fn parse(out: &Output) -> Value {
    let text = stdout(out);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "mcp_client.py printed no JSON ({e}); status {}\nstdout: {text}\nstderr: {}",
            out.status,
            stderr(out)
        )
    })
}

/// The quickstart masks emails partially: `****@example.com`.
fn masked_email(value: &str) -> bool {
    value.starts_with('*') && value.contains('@')
}

fn approvals(env: &Env, token: &str, args: &[&str]) -> Output {
    let mut all = vec!["approvals"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--token", token]);
    env.sluice(&all)
}

fn customer_name(env: &Env, id: i32) -> String {
    env.direct_sql(
        "app",
        &format!("select name from customers where id = {id}"),
    )
    .trim()
    .to_string()
}

#[test]
fn mcp_tools_run_through_the_gateway_pipeline() {
    let (env, m) = start();
    let env = &env;
    let agent = env.agent_token();
    let dba = env.token("dana", &["dba"], "10m");

    // tools/list shows only the connections the caller may open, over the
    // previous protocol revision (initialize handshake) and the current one.
    let (protocol, names) = m.tool_names(&agent, "legacy");
    assert_eq!(protocol, "2025-11-25");
    assert_eq!(
        names,
        ["appdb.query", "appdb.list_tables", "appdb.describe_table"]
    );
    let (protocol, names) = m.tool_names(&agent, "auto");
    assert_eq!(protocol, "2026-07-28");
    assert_eq!(names.len(), 3, "{names:?}");
    let (_, names) = m.tool_names(&dba, "legacy");
    assert_eq!(
        names,
        [
            "admindb.query",
            "admindb.list_tables",
            "admindb.describe_table"
        ]
    );

    // A connection where a rule refuses the caller everything lists no tools;
    // a call anyway is refused by that rule at the gateway.
    let intern = env.token("ivy", &["agents", "interns"], "10m");
    let (_, names) = m.tool_names(&intern, "legacy");
    assert!(names.is_empty(), "{names:?}");
    let refused = m.call(
        &intern,
        "appdb.query",
        serde_json::json!({ "sql": "select 1" }),
    );
    assert_eq!(refused["is_error"], true, "{refused}");
    assert!(
        refused["text"]
            .as_str()
            .unwrap()
            .contains("interns-read-nothing"),
        "{refused}"
    );

    // A read: rows as JSON with column types, masked by the gateway's rules.
    let read = m.call(
        &agent,
        "appdb.query",
        serde_json::json!({ "sql": "select id, name, email, national_id from customers order by id limit 3" }),
    );
    assert_eq!(read["is_error"], false, "{read}");
    let s = &read["structured"];
    assert_eq!(
        s["columns"],
        serde_json::json!([
            { "name": "id", "type": "int4" },
            { "name": "name", "type": "text" },
            { "name": "email", "type": "text" },
            { "name": "national_id", "type": "text" }
        ]),
        "{read}"
    );
    let rows = s["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{read}");
    assert_eq!(rows[0][0], 1);
    for row in rows {
        let email = row[2].as_str().unwrap();
        assert!(masked_email(email), "email not masked: {read}");
        assert!(row[3].is_null(), "national_id not masked: {read}");
    }

    // The same over the current revision.
    let modern = m.client(
        &agent,
        "auto",
        &[
            "call",
            "appdb.query",
            r#"{"sql": "select email from customers order by id limit 1"}"#,
        ],
    );
    assert_eq!(modern["protocol"], "2026-07-28", "{modern}");
    assert!(
        masked_email(modern["structured"]["rows"][0][0].as_str().unwrap()),
        "{modern}"
    );

    // Parameters, and the catalog tools.
    let one = m.call(
        &agent,
        "appdb.query",
        serde_json::json!({ "sql": "select id, name from customers where id = $1", "params": [2] }),
    );
    assert_eq!(one["structured"]["rows"][0][0], 2, "{one}");
    let tables = m.call(&agent, "appdb.list_tables", serde_json::json!({}));
    assert!(
        tables["text"].as_str().unwrap().contains("\"customers\""),
        "{tables}"
    );
    let described = m.call(
        &agent,
        "appdb.describe_table",
        serde_json::json!({ "table": "customers" }),
    );
    assert!(
        described["text"].as_str().unwrap().contains("\"email\""),
        "{described}"
    );

    // A refusal is a tool error naming the rule and what to do next.
    let ddl = m.call(
        &agent,
        "appdb.query",
        serde_json::json!({ "sql": "drop table customers" }),
    );
    assert_eq!(ddl["is_error"], true, "{ddl}");
    let text = ddl["text"].as_str().unwrap();
    assert!(text.contains("no-ddl"), "{ddl}");
    assert!(text.contains("migrations"), "{ddl}");
    assert!(
        !env.direct_sql("app", "select to_regclass('customers')")
            .trim()
            .is_empty(),
        "the table is still there"
    );

    // A tool the caller may not use is unknown to it.
    let hidden = m.call(
        &agent,
        "admindb.query",
        serde_json::json!({ "sql": "select 1" }),
    );
    assert_eq!(hidden["error"]["code"], -32602, "{hidden}");

    // A held write waits for a DBA, then completes on the same call.
    let before = customer_name(env, 2);
    let mut held = m.client_command(
        &agent,
        "legacy",
        &[
            "call",
            "appdb.query",
            &serde_json::json!({ "sql": "update customers set name = 'MCP Name' where id = 2 returning name" }).to_string(),
        ],
    );
    let client = thread::spawn(move || run_with_timeout(&mut held, None, COMMAND_TIMEOUT));
    let request = wait_until(Duration::from_secs(30), "a pending approval", || {
        let out = approvals(env, &dba, &["list", "--json"]);
        let list: Vec<Value> = serde_json::from_str(&stdout(&out)).ok()?;
        list.into_iter().next()
    });
    assert_eq!(request["rule"], "reviewed-customer-writes");
    assert_eq!(request["subject"], "agent-1");
    assert_eq!(
        customer_name(env, 2),
        before,
        "nothing runs before approval"
    );
    let id = request["id"].as_str().unwrap().to_string();
    ok(&approvals(env, &dba, &["approve", &id]));
    let done = parse(&client.join().unwrap());
    assert_eq!(done["is_error"], false, "{done}");
    assert_eq!(done["structured"]["rows"][0][0], "MCP Name", "{done}");
    assert_eq!(done["structured"]["command"], "UPDATE 1", "{done}");
    assert!(
        !done["progress"].as_array().unwrap().is_empty(),
        "the hold was reported as progress: {done}"
    );
    assert_eq!(customer_name(env, 2), "MCP Name");

    // Retry mode: refused now naming the approval; once approved, the same
    // call runs, once.
    let batch = env.token("batch-agent", &["agents", "batch"], "10m");
    let retried = serde_json::json!({ "sql": "update orders set status = 'retried' where id = 4" });
    let first = m.call(&batch, "appdb.query", retried.clone());
    assert_eq!(first["is_error"], true, "{first}");
    let request = wait_until(Duration::from_secs(30), "a pending approval", || {
        let out = approvals(env, &dba, &["list", "--json"]);
        let list: Vec<Value> = serde_json::from_str(&stdout(&out)).ok()?;
        list.into_iter().find(|r| r["rule"] == "retry-review")
    });
    let id = request["id"].as_str().unwrap().to_string();
    assert!(
        first["text"].as_str().unwrap().contains(&id),
        "the refusal names the approval: {first}"
    );
    ok(&approvals(env, &dba, &["approve", &id]));
    let second = m.call(&batch, "appdb.query", retried.clone());
    assert_eq!(second["structured"]["command"], "UPDATE 1", "{second}");
    let third = m.call(&batch, "appdb.query", retried);
    assert_eq!(
        third["is_error"], true,
        "the approval was for one run: {third}"
    );

    // A grant for a statement with parameters is for those values only.
    let update = "update orders set status = $1 where id = $2";
    let approved = serde_json::json!({ "sql": update, "params": ["approved", 5] });
    let first = m.call(&batch, "appdb.query", approved.clone());
    assert_eq!(first["is_error"], true, "{first}");
    let request = wait_until(Duration::from_secs(30), "a pending approval", || {
        let out = approvals(env, &dba, &["list", "--json"]);
        let list: Vec<Value> = serde_json::from_str(&stdout(&out)).ok()?;
        list.into_iter().find(|r| {
            first["text"]
                .as_str()
                .unwrap()
                .contains(r["id"].as_str().unwrap())
        })
    });
    ok(&approvals(
        env,
        &dba,
        &["approve", request["id"].as_str().unwrap()],
    ));
    let other = m.call(
        &batch,
        "appdb.query",
        serde_json::json!({ "sql": update, "params": ["other", 6] }),
    );
    assert_eq!(
        other["is_error"], true,
        "other values are another request: {other}"
    );
    let same = m.call(&batch, "appdb.query", approved);
    assert_eq!(same["structured"]["command"], "UPDATE 1", "{same}");
    assert_eq!(
        env.direct_sql("app", "select id, status from orders where id in (5, 6) and status in ('approved', 'other') order by id")
            .trim(),
        "5|approved"
    );

    // Every call is a recorded session of the caller's, shown by replay.
    let sessions = env.wait_sessions_ended(1);
    let replays: String = sessions
        .iter()
        .filter(|s| s["subject"] == "agent-1")
        .map(|s| env.replay(s["id"].as_str().unwrap()))
        .collect();
    for expected in [
        "drop table customers",
        "no-ddl",
        "update customers set name = 'MCP Name' where id = 2 returning name",
        "select id, name, email, national_id from customers order by id limit 3",
    ] {
        assert!(
            replays.contains(expected),
            "{expected:?} not in the replays:\n{replays}"
        );
    }
    ok(&env.sluice(&["audit", "verify"]));
    // The sessions are from loopback; the agent's address is in the log.
    let log = env.gateway_log();
    assert!(
        log.lines().any(|l| l.contains("MCP tool call.")
            && l.contains("tool=appdb.query")
            && l.contains("client=127.0.0.1:")),
        "{log}"
    );
    env.assert_oracle();
}

#[test]
fn mcp_over_stdio_bridges_to_the_gateway() {
    let (env, m) = start();
    let env = &env;
    let agent = env.agent_token();
    let stdio = |action: &[&str]| {
        let mut cmd = Command::new("python3");
        cmd.arg(py_dir().join("mcp_client.py"))
            .arg("stdio")
            .arg(sluice_bin())
            .arg(&env.config_path)
            .arg(&agent)
            .args(["--env", &format!("SLUICE_LISTEN__MCP={}", m.mcp_addr)])
            .args(action)
            .env("PYTHONUNBUFFERED", "1");
        parse(&run_with_timeout(&mut cmd, None, COMMAND_TIMEOUT))
    };
    // The current revision (stateless, server/discover) through the bridge too.
    let modern = stdio(&["--mode", "auto", "list"]);
    assert_eq!(modern["protocol"], "2026-07-28", "{modern}");
    assert_eq!(
        modern["tools"].as_array().map(Vec::len),
        Some(3),
        "{modern}"
    );
    let one = stdio(&[
        "--mode",
        "auto",
        "call",
        "appdb.query",
        r#"{"sql": "select 1 as one"}"#,
    ]);
    assert_eq!(one["protocol"], "2026-07-28", "{one}");
    assert_eq!(one["structured"]["rows"], serde_json::json!([[1]]), "{one}");
    let listed = stdio(&["list"]);
    assert_eq!(listed["protocol"], "2025-11-25", "{listed}");
    let names: Vec<&str> = listed["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{listed}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["appdb.query", "appdb.list_tables", "appdb.describe_table"]
    );
    let read = stdio(&[
        "call",
        "appdb.query",
        r#"{"sql": "select email from customers order by id limit 1"}"#,
    ]);
    assert_eq!(read["is_error"], false, "{read}");
    assert!(
        masked_email(read["structured"]["rows"][0][0].as_str().unwrap()),
        "{read}"
    );
    let ddl = stdio(&["call", "appdb.query", r#"{"sql": "truncate orders"}"#]);
    assert_eq!(ddl["is_error"], true, "{ddl}");
    assert!(ddl["text"].as_str().unwrap().contains("no-"), "{ddl}");
    env.assert_oracle();
}

#[test]
fn mcp_listener_refuses_bad_input_and_keeps_serving() {
    let (mut env, m) = start();
    let agent = env.agent_token();

    // No token: 401 pointing at the protected-resource metadata (RFC 9728).
    let (code, head, _) = m.curl(
        None,
        "/mcp",
        Some(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#),
    );
    assert_eq!(code, 401, "{head}");
    let challenge = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"))
        .unwrap_or_else(|| panic!("no WWW-Authenticate: {head}"))
        .to_string();
    assert!(challenge.contains("Bearer"), "{challenge}");
    assert!(
        challenge.contains("resource_metadata=\"https://")
            && challenge.contains("/.well-known/oauth-protected-resource"),
        "{challenge}"
    );
    let (code, _, body) = m.curl(None, "/.well-known/oauth-protected-resource/mcp", None);
    assert_eq!(code, 200, "{body}");
    let metadata: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        metadata["resource"],
        format!("https://{}/mcp", m.mcp_addr),
        "{metadata}"
    );
    assert_eq!(metadata["bearer_methods_supported"][0], "header");

    // A forged, an expired-looking and a revoked-issuer token: 401 invalid_token.
    for bad in [
        "not-a-token",
        "eyJhbGciOiJub25lIn0.e30.",
        &format!("{agent}x"),
    ] {
        let (code, head, _) = m.curl(
            Some(bad),
            "/mcp",
            Some(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#),
        );
        assert_eq!(code, 401, "{bad}: {head}");
        assert!(head.contains("invalid_token"), "{head}");
    }

    // Malformed JSON-RPC, an unknown method, an oversized message.
    let (code, _, body) = m.curl(
        Some(&agent),
        "/mcp",
        Some(b"{\"jsonrpc\": \"2.0\", \"id\": 1, "),
    );
    assert_eq!(code, 400, "malformed JSON: {body}");
    assert!(body.contains("-32700"), "malformed JSON: {body}");
    let initialize = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}"#;
    let (code, _, body) = m.curl(Some(&agent), "/mcp", Some(initialize));
    assert_eq!(code, 200, "{body}");
    let (code, _, body) = m.curl(
        Some(&agent),
        "/mcp",
        Some(br#"{"jsonrpc":"2.0","id":2,"method":"no/such/method","params":{}}"#),
    );
    assert!(body.contains("-32601"), "unknown method: {code} {body}");
    let mut huge = br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"appdb.query","arguments":{"sql":"select '"#.to_vec();
    huge.extend(std::iter::repeat_n(b'a', 3 * 1024 * 1024));
    huge.extend_from_slice(br#"'"}}}"#);
    let (code, _, body) = m.curl(Some(&agent), "/mcp", Some(&huge));
    assert_eq!(code, 413, "oversized: {body}");
    let (code, _, _) = m.curl(Some(&agent), "/elsewhere", None);
    assert_eq!(code, 404);
    // Stateless: no server-initiated stream to hold open, no session to delete.
    let (code, _, body) = m.curl(Some(&agent), "/mcp", None);
    assert_eq!(code, 405, "GET /mcp: {body}");

    // A flood of requests on one connection's worth of tools: all answered.
    let script = format!(
        r#"
import asyncio, ssl, httpx2, json, sys
async def main():
    ctx = ssl.create_default_context(cafile={ca:?})
    async with httpx2.AsyncClient(verify=ctx, timeout=60, headers={{"Authorization": "Bearer {agent}", "Accept": "application/json, text/event-stream"}}) as c:
        async def one(i):
            r = await c.post({url:?}, json={{"jsonrpc": "2.0", "id": i, "method": "tools/list"}}, headers={{"MCP-Protocol-Version": "2025-11-25"}})
            return r.status_code
        codes = await asyncio.gather(*(one(i) for i in range(300)))
    print(json.dumps(sorted(set(codes))))
asyncio.run(main())
"#,
        ca = m.ca.display().to_string(),
        url = m.url,
    );
    let mut flood = Command::new("python3");
    flood.args(["-c", &script]);
    let out = run_with_timeout(&mut flood, None, COMMAND_TIMEOUT);
    assert_eq!(stdout(&out).trim(), "[200]", "{}", stderr(&out));

    // One row larger than MCP returns is refused without being buffered
    // whole; a first row over the result budget is counted, not returned.
    let huge = m.call(
        &agent,
        "appdb.query",
        serde_json::json!({ "sql": "select repeat('x', 9000000) as blob" }),
    );
    assert_eq!(huge["is_error"], true, "{huge}");
    assert!(
        huge["text"]
            .as_str()
            .unwrap()
            .contains("larger than MCP returns"),
        "{huge}"
    );
    let big = m.call(
        &agent,
        "appdb.query",
        serde_json::json!({ "sql": "select repeat('x', 5000000) as blob" }),
    );
    assert_eq!(big["is_error"], false, "{big}");
    assert_eq!(big["structured"]["truncated"], true, "{big}");
    assert_eq!(big["structured"]["row_count"], 1, "{big}");
    assert_eq!(big["structured"]["rows"], serde_json::json!([]), "{big}");

    // The gateway is alive and serves a real client.
    env.assert_gateway_alive();
    let (_, names) = m.tool_names(&agent, "legacy");
    assert_eq!(names.len(), 3);
}

const CRM: &str = r#"
[[connections]]
name = "crm"
kind = "http"
upstream = "{CRM}"
bearer = { env = "CRM_TOKEN" }
allow_groups = ["agents"]

[[rules]]
name = "crm-no-deletes"
connections = ["crm"]
match = { http = { methods = ["DELETE"] } }
action = "deny"
message = "Agents do not delete CRM records."
"#;

#[test]
fn mcp_http_request_tool_goes_through_the_http_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = sluice_e2e::http::Upstream::start(dir.path(), None);
    let http = sluice_sandbox::free_port();
    let env = Env::builder()
        .extra_toml(&CRM.replace("{CRM}", &format!("http://{}", upstream.addr)))
        .extra_toml(&quickstart_policy())
        .gateway_env("CRM_TOKEN", sluice_e2e::http::CRM_SECRET)
        .gateway_env("SLUICE_LISTEN__MCP", ANY_LOCAL_PORT)
        .gateway_env("SLUICE_LISTEN__HTTP", &format!("127.0.0.1:{http}"))
        .start();
    let m = Mcp::ready(&env.state_dir, || env.gateway_log());
    let agent = env.agent_token();
    let (_, names) = m.tool_names(&agent, "legacy");
    assert!(names.contains(&"crm.request".to_string()), "{names:?}");

    // A read: the gateway injected the credential (the agent never sees it)
    // and masked the response.
    let read = m.call(
        &agent,
        "crm.request",
        serde_json::json!({ "path": "/customers", "query": { "limit": "2" } }),
    );
    assert_eq!(read["is_error"], false, "{read}");
    assert_eq!(read["structured"]["status"], 200, "{read}");
    let text = read["text"].as_str().unwrap();
    assert!(!text.contains(sluice_e2e::http::CRM_SECRET), "{read}");
    let reached = upstream
        .last("/customers")
        .expect("the upstream saw the request");
    assert_eq!(reached["query"], "limit=2", "{reached}");
    assert_eq!(
        sluice_e2e::http::header(&reached, "authorization"),
        [format!("Bearer {}", sluice_e2e::http::CRM_SECRET)]
    );

    // A refused method: a tool error with the gateway's problem naming the rule.
    let delete = m.call(
        &agent,
        "crm.request",
        serde_json::json!({ "method": "DELETE", "path": "/customers/1" }),
    );
    assert_eq!(delete["is_error"], true, "{delete}");
    assert_eq!(delete["structured"]["status"], 403, "{delete}");
    assert!(
        delete["text"].as_str().unwrap().contains("crm-no-deletes"),
        "{delete}"
    );
    assert!(upstream.last("/customers/1").is_none());

    // The tool sets Authorization itself.
    let smuggled = m.call(
        &agent,
        "crm.request",
        serde_json::json!({ "path": "/echo", "headers": { "Authorization": "Bearer x" } }),
    );
    assert_eq!(smuggled["error"]["code"], -32602, "{smuggled}");
}

#[test]
fn mcp_ssh_exec_tool_goes_through_the_ssh_gateway() {
    // SshEnv writes its own [listen]; the gateway it starts inherits this
    // process's environment (nextest runs each test in its own process).
    std::env::set_var("SLUICE_LISTEN__MCP", ANY_LOCAL_PORT);
    let env = sluice_e2e::sshd::SshEnv::start(
        r#"
[[rules]]
name = "no-rm"
match = { program = ["rm", "shred"] }
action = "deny"
message = "Deleting files on hosts is not allowed."
"#,
    );
    let m = Mcp::ready(&env.state_dir, || env.gateway_log());
    let agent = env.agent_token();
    let (_, names) = m.tool_names(&agent, "legacy");
    assert_eq!(names, [format!("{}.exec", sluice_e2e::sshd::CONNECTION)]);
    let tool = format!("{}.exec", sluice_e2e::sshd::CONNECTION);

    let who = m.call(
        &agent,
        &tool,
        serde_json::json!({ "command": "whoami; echo err >&2" }),
    );
    assert_eq!(who["is_error"], false, "{who}");
    assert_eq!(
        who["structured"]["stdout"],
        format!("{}\n", sluice_e2e::sshd::TEST_USER)
    );
    assert_eq!(who["structured"]["stderr"], "err\n", "{who}");
    assert_eq!(who["structured"]["exit_status"], 0, "{who}");

    let failing = m.call(&agent, &tool, serde_json::json!({ "command": "exit 3" }));
    assert_eq!(failing["is_error"], true, "{failing}");
    assert_eq!(failing["structured"]["exit_status"], 3, "{failing}");

    let sentinel = env.work.join("sentinel");
    std::fs::write(&sentinel, "keep").unwrap();
    let rm = m.call(
        &agent,
        &tool,
        serde_json::json!({ "command": format!("rm -f {}", sentinel.display()) }),
    );
    assert_eq!(rm["is_error"], true, "{rm}");
    assert!(
        rm["structured"]["stderr"]
            .as_str()
            .unwrap()
            .contains("no-rm"),
        "{rm}"
    );
    assert!(sentinel.exists(), "the refused command did not run");

    let ids: Vec<String> = env
        .sessions()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    env.wait_sessions_ended(ids.len());
    let replays: String = ids.iter().map(|id| env.replay(id, "text")).collect();
    assert!(replays.contains("exec: whoami"), "{replays}");
    assert!(replays.contains("no-rm"), "{replays}");
}

#[test]
fn mcp_accepts_oidc_access_tokens_as_every_listener_does() {
    let idp = sluice_e2e::oidc::Idp::start();
    let env = Env::builder()
        .extra_toml(&idp.toml("clock_skew = \"1s\"\n"))
        .extra_toml("[[auth.group_map]]\nidp_group = \"sluice-agents\"\ngroups = [\"agents\"]\n")
        .gateway_env("SLUICE_LISTEN__MCP", ANY_LOCAL_PORT)
        .start();
    let m = Mcp::ready(&env.state_dir, || env.gateway_log());

    // The protected-resource metadata names the IdP.
    let (code, _, body) = m.curl(None, "/.well-known/oauth-protected-resource", None);
    assert_eq!(code, 200, "{body}");
    let metadata: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        metadata["authorization_servers"],
        serde_json::json!([idp.issuer()])
    );

    // An access token for the gateway's audience lists and runs the tools;
    // the tool call's session is the IdP subject's.
    let token = idp.client_token("agent", "urn:sluice");
    let (_, names) = m.tool_names(&token, "legacy");
    assert_eq!(
        names,
        ["appdb.query", "appdb.list_tables", "appdb.describe_table"]
    );
    let one = m.call(
        &token,
        "appdb.query",
        serde_json::json!({ "sql": "select 1 as one" }),
    );
    assert_eq!(one["structured"]["rows"], serde_json::json!([[1]]), "{one}");
    let sessions = env.wait_sessions_ended(1);
    assert!(
        sessions.iter().any(|s| s["subject"] == "agent"),
        "{sessions:?}"
    );

    // A token for another audience is refused with 401 invalid_token.
    let other = idp.client_token("agent", "urn:other");
    let (code, head, _) = m.curl(
        Some(&other),
        "/mcp",
        Some(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#),
    );
    assert_eq!(code, 401, "{head}");
    assert!(head.contains("invalid_token"), "{head}");
    env.assert_oracle();
}

#[test]
fn mcp_kubernetes_tools_go_through_the_kubernetes_gateway() {
    use sluice_e2e::kube::{KubeEnv, SECRET_VALUE, SECRET_VALUE_B64, UPSTREAM_TOKEN};
    let env = KubeEnv::builder()
        .extra_toml(
            r#"
[[rules]]
name = "no-deletes"
connections = ["k8s"]
match = { kube = { verbs = ["delete", "deletecollection"] } }
action = "deny"
message = "Agents do not delete cluster objects."

[[rules]]
name = "no-rm"
connections = ["k8s"]
match = { kube = { verbs = ["exec"], commands = ["rm *", "*rm -rf*"] } }
action = "deny"
message = "Deleting files in pods is not allowed."
"#,
        )
        .gateway_env("SLUICE_LISTEN__MCP", ANY_LOCAL_PORT)
        .start();
    let m = Mcp::ready(&env.state_dir, || env.gateway_log());
    let agent = env.token("agent-1", &["agents"]);
    let (_, names) = m.tool_names(&agent, "legacy");
    assert_eq!(
        names,
        [
            "k8s.get",
            "k8s.list",
            "k8s.logs",
            "k8s.delete",
            "k8s.apply",
            "k8s.exec"
        ]
    );

    // exec over the WebSocket channel protocol, judged on its command line.
    let ls = m.call(
        &agent,
        "k8s.exec",
        serde_json::json!({ "name": "web-1", "command": ["ls", "-la", "/srv"] }),
    );
    assert_eq!(ls["is_error"], false, "{ls}");
    assert_eq!(ls["structured"]["stdout"], "ran: ls -la /srv\n", "{ls}");
    assert_eq!(ls["structured"]["exit_status"], 0, "{ls}");
    let failing = m.call(
        &agent,
        "k8s.exec",
        serde_json::json!({ "name": "web-1", "command": ["false"] }),
    );
    assert_eq!(failing["is_error"], true, "{failing}");
    assert_eq!(failing["structured"]["exit_status"], 3, "{failing}");
    let rm = m.call(
        &agent,
        "k8s.exec",
        serde_json::json!({ "name": "web-1", "command": ["rm", "-rf", "/srv"] }),
    );
    assert_eq!(rm["is_error"], true, "{rm}");
    assert!(rm["text"].as_str().unwrap().contains("no-rm"), "{rm}");

    let pods = m.call(
        &agent,
        "k8s.list",
        serde_json::json!({ "resource": "pods" }),
    );
    assert_eq!(pods["is_error"], false, "{pods}");
    let items = pods["structured"]["body"]["items"].as_array().unwrap();
    assert!(
        items.iter().any(|p| p["metadata"]["name"] == "web-1"),
        "{pods}"
    );

    // Secret values never leave the gateway, whatever the client.
    let secret = m.call(
        &agent,
        "k8s.get",
        serde_json::json!({ "resource": "secrets", "name": "db-credentials" }),
    );
    assert_eq!(secret["structured"]["status"], 200, "{secret}");
    let text = secret["text"].as_str().unwrap();
    assert!(
        !text.contains(SECRET_VALUE) && !text.contains(SECRET_VALUE_B64),
        "{secret}"
    );

    let logs = m.call(
        &agent,
        "k8s.logs",
        serde_json::json!({ "name": "web-1", "tail_lines": 5 }),
    );
    assert_eq!(logs["structured"]["status"], 200, "{logs}");

    // A refused delete: a tool error carrying the Status that names the rule.
    let delete = m.call(
        &agent,
        "k8s.delete",
        serde_json::json!({ "resource": "pods", "name": "web-2" }),
    );
    assert_eq!(delete["is_error"], true, "{delete}");
    assert!(
        delete["text"].as_str().unwrap().contains("no-deletes"),
        "{delete}"
    );

    let requests = env.upstream_requests();
    assert!(
        !requests.iter().any(|r| r["method"] == "DELETE"),
        "{requests:?}"
    );
    assert!(
        !requests
            .iter()
            .any(|r| r["path"].as_str().unwrap_or("").contains("command=rm")),
        "the refused exec never reached the API server: {requests:?}"
    );
    for r in &requests {
        assert_eq!(
            r["authorization"].as_str().unwrap_or(""),
            format!("Bearer {UPSTREAM_TOKEN}"),
            "{r}"
        );
        assert!(!r.to_string().contains(&agent), "{r}");
    }
}
