//! The HTTP gateway with real clients (curl, Python requests, a WebSocket
//! client) against a real upstream (`py/http_upstream.py`): credential
//! injection, denials, reviews (hold and retry), masking, streaming,
//! WebSocket, HTTP/2, sessions and replay.

// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_e2e::http::*;
use sluice_e2e::*;
use std::thread;
use std::time::Duration;

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn injected_credential_reaches_the_upstream_and_the_token_never_does() {
    let env = HttpEnv::builder()
        .env("API_KEY", "key-for-the-inventory-api")
        .env("BASIC_PW", "basic-password-42")
        .toml(
            r#"
[[connections]]
name = "inventory"
kind = "http"
upstream = "{UPSTREAM}/base/"
headers = { X-Api-Key = { env = "API_KEY" } }
allow_groups = ["agents"]

[[connections]]
name = "legacy"
kind = "http"
upstream = "{UPSTREAM}"
basic = { user = "svc", password = { env = "BASIC_PW" } }
allow_groups = ["agents"]
"#,
        )
        .start();
    let token = env.agent_token();

    // curl, with a spoofed X-Forwarded-For and the client's own Host.
    let (status, body) = env.get(
        &token,
        "/crm/echo?x=1",
        &["-H", "X-Forwarded-For: 6.6.6.6", "-H", "Cookie: a=b"],
    );
    assert_eq!(status, 200, "{body}");
    let seen = env.upstream.last("/echo").expect("the upstream saw /echo");
    assert_eq!(
        header(&seen, "authorization"),
        [format!("Bearer {CRM_SECRET}")]
    );
    assert_eq!(seen["query"], "x=1");
    assert_eq!(header(&seen, "host"), [env.upstream.addr.to_string()]);
    assert_eq!(header(&seen, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(header(&seen, "x-forwarded-proto"), ["https"]);
    assert_eq!(header(&seen, "cookie"), ["a=b"]);
    let all = serde_json::to_string(&env.upstream.requests()).unwrap();
    assert!(
        !all.contains(&token),
        "the Sluice token reached the upstream"
    );
    // The upstream echoes its credential back: the client never sees it.
    assert!(!body.contains(CRM_SECRET), "{body}");
    assert!(body.contains("[redacted-credential]"), "{body}");

    // Hop-by-hop headers, and those Connection names, stop at the gateway.
    let (status, _) = env.get(
        &token,
        "/crm/echo",
        &[
            "--http1.1",
            "-H",
            "Connection: keep-alive, X-Drop-Me",
            "-H",
            "X-Drop-Me: 1",
            "-H",
            "Keep-Alive: timeout=5",
            "-H",
            "Proxy-Authorization: Basic eDp5",
            "-H",
            "X-Keep-Me: 1",
        ],
    );
    assert_eq!(status, 200);
    let seen = env.upstream.last("/echo").unwrap();
    for gone in ["x-drop-me", "keep-alive", "proxy-authorization"] {
        assert!(
            header(&seen, gone).is_empty(),
            "{gone} reached the upstream: {seen}"
        );
    }
    assert_eq!(header(&seen, "x-keep-me"), ["1"]);
    assert_eq!(
        header(&seen, "x-forwarded-host"),
        [format!("127.0.0.1:{}", env.port)]
    );

    // A redirect into the upstream comes back as one through the gateway.
    let out = env.curl(Some(&token), &["-i", &env.url("/crm/redirect")]);
    let text = stdout(&out).to_ascii_lowercase();
    assert!(text.contains("location: /crm/echo?from=redirect"), "{text}");

    // Named headers, and a base path on the upstream URL.
    let (status, body) = env.get(&token, "/inventory/echo", &[]);
    assert_eq!(status, 200, "{body}");
    let seen = env.upstream.last("/base/echo").expect("base path kept");
    assert_eq!(header(&seen, "x-api-key"), ["key-for-the-inventory-api"]);
    assert!(header(&seen, "authorization").is_empty());
    assert!(!body.contains("key-for-the-inventory-api"), "{body}");

    // Basic credentials, through Python requests.
    let r = env.requests(&token, "/legacy/echo", "GET");
    assert_eq!(r["status"], 200, "{r}");
    let seen = env.upstream.last("/echo").unwrap();
    assert_eq!(
        header(&seen, "authorization"),
        ["Basic c3ZjOmJhc2ljLXBhc3N3b3JkLTQy"]
    );
    let text = r.to_string();
    assert!(
        !text.contains("c3ZjOmJhc2ljLXBhc3N3b3JkLTQy") && !text.contains("basic-password-42"),
        "{text}"
    );

    // A compressed body could hide an echo: refused even without masking.
    let (status, body) = env.get(&token, "/crm/gzip", &["--compressed"]);
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("gzip-encoded"), "{body}");

    // Nothing secret in the log or the recordings.
    let log = env.gateway_log();
    for secret in [
        CRM_SECRET,
        "key-for-the-inventory-api",
        "basic-password-42",
        token.as_str(),
    ] {
        assert!(!log.contains(secret), "the gateway log holds a secret");
    }
    let replay = env.replay_with(&["GET /echo", "HTTP 200"]);
    assert!(
        !replay.contains(CRM_SECRET) && !replay.contains("basic-password-42"),
        "{replay}"
    );
}

#[test]
fn unauthenticated_and_unknown_are_refused_before_the_upstream() {
    let env = HttpEnv::builder().toml(OPS).start();
    let url = env.url("/crm/echo");
    let (status, body) = split_status(&env.curl(None, &[&url]));
    assert_eq!(status, 401, "{body}");
    assert!(
        json(&body)["detail"].as_str().unwrap().contains("Bearer"),
        "{body}"
    );
    let (status, body) = split_status(&env.curl(Some("not-a-token"), &[&url]));
    assert_eq!(status, 401, "{body}");
    let (status, body) = split_status(&env.curl(None, &["-H", "Authorization: Basic YTpi", &url]));
    assert_eq!(status, 401, "{body}");
    let token = env.agent_token();
    let (status, body) = env.get(&token, "/nosuch/echo", &[]);
    assert_eq!(status, 404, "{body}");
    let (status, body) = env.get(&token, "/ops/echo", &[]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("allow_groups"), "{body}");
    // Past its expiry and core's 5 s clock-skew leeway.
    let expired = env.token("agent-1", &["agents"], "1s");
    thread::sleep(Duration::from_millis(6500));
    let (status, _) = env.get(&expired, "/crm/echo", &[]);
    assert_eq!(status, 401);
    assert!(
        env.upstream.requests().is_empty(),
        "{:?}",
        env.upstream.requests()
    );
}

#[test]
fn deny_rules_answer_403_problem_json_naming_the_rule() {
    let env = HttpEnv::builder()
        .toml(
            r#"
[[rules]]
name = "no-deletes"
match = { http = { methods = ["DELETE"] } }
action = "deny"
message = "Deletes go through the CRM admin UI."

[[rules]]
name = "no-admin"
match = { http = { paths = ["/admin/*"] } }
action = "deny"

[[rules]]
name = "no-force"
match = { http = { query = { force = "true" } } }
action = "deny"
"#,
        )
        .start();
    let token = env.agent_token();
    let out = env.curl(
        Some(&token),
        &["-X", "DELETE", "-i", &env.url("/crm/customers/1")],
    );
    let (status, text) = split_status(&out);
    assert_eq!(status, 403);
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{text}"
    );
    let body = json(text.split("\r\n\r\n").last().unwrap());
    assert_eq!(body["rule"], "no-deletes");
    assert_eq!(body["status"], 403);
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("Deletes go through the CRM admin UI."));
    assert!(body["hint"].as_str().is_some());
    // Python requests sees the same.
    let r = env.requests(&token, "/crm/customers/1", "DELETE");
    assert_eq!(r["status"], 403);
    assert_eq!(r["body"]["rule"], "no-deletes");

    for path in [
        "/crm/admin",
        "/crm/admin/",
        "/crm/ADMIN/users",
        "/crm//admin/users",
        "/crm/./admin/x",
        "/crm/%61dmin/x",
    ] {
        let out = env.curl(Some(&token), &["--path-as-is", &env.url(path)]);
        let (status, body) = split_status(&out);
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(json(&body)["rule"], "no-admin", "{path}");
    }
    // HEAD over HTTP/2: the refusal is a head without a body (a body would be a protocol error).
    let out = env.curl(Some(&token), &["--http2", "-I", &env.url("/crm/admin/x")]);
    assert_eq!(
        split_status(&out).0,
        403,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, _) = env.get(&token, "/crm/items?force=true", &[]);
    assert_eq!(status, 403);
    let (status, _) = env.get(&token, "/crm/items?%66orce=%74rue", &[]);
    assert_eq!(status, 403);
    let (status, _) = env.get(&token, "/crm/items?force=false", &[]);
    assert_eq!(status, 200);
    let (status, _) = env.get(&token, "/crm/administrators", &[]);
    assert_eq!(status, 200);
    let reached: Vec<String> = env
        .upstream
        .requests()
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["method"].as_str().unwrap(),
                r["path"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(reached, ["GET /items", "GET /administrators"]);
    env.replay_with(&["DELETE /customers/1", "deny (rule no-deletes)", "403"]);
}

const REVIEWS: &str = r#"
[[rules]]
name = "reviewed-refunds"
match = { http = { methods = ["POST"], paths = ["/refunds"] } }
action = "review"
approvers = ["finance"]
timeout = "60s"
message = "Refunds are approved by finance."

[[rules]]
name = "retry-exports"
match = { http = { paths = ["/exports/*"] } }
action = "review"
approvers = ["finance"]
mode = "retry"
timeout = "5m"
"#;

fn pending(env: &HttpEnv, approver: &str) -> serde_json::Value {
    wait_until(Duration::from_secs(20), "a pending approval", || {
        let out = env.approvals(approver, &["list", "--json"]);
        let list: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).ok()?;
        list.into_iter().find(|r| r["state"] == "pending")
    })
}

#[test]
fn review_hold_keeps_the_request_waiting_until_approved() {
    let env = HttpEnv::builder().toml(REVIEWS).start();
    let token = env.agent_token();
    let finance = env.token("fay", &["finance"], "10m");
    let url = env.url("/crm/refunds");
    let ca = env.ca();
    let client = thread::spawn(move || {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sS", "--max-time", "60", "--cacert"])
            .arg(ca)
            .args(["-w", "\n%{http_code}", "-X", "POST", "-d", "{\"amount\":5}"])
            .arg("-H")
            .arg(format!("Authorization: Bearer {token}"))
            .arg(url);
        run_with_timeout(&mut cmd, None, Duration::from_secs(60))
    });
    let request = pending(&env, &finance);
    assert_eq!(request["command"], "POST /refunds");
    assert_eq!(request["subject"], "agent-1");
    assert!(
        env.upstream.last("/refunds").is_none(),
        "nothing reaches the upstream before approval"
    );
    env.approve(&finance, request["id"].as_str().unwrap());
    let (status, body) = split_status(&client.join().unwrap());
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        env.upstream
            .requests()
            .iter()
            .filter(|r| r["path"] == "/refunds")
            .count(),
        1
    );

    // Denied by the approver: 403 naming the decision.
    let token = env.agent_token();
    let url = env.url("/crm/refunds");
    let ca = env.ca();
    let client = thread::spawn(move || {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sS", "--max-time", "60", "--cacert"])
            .arg(ca)
            .args(["-w", "\n%{http_code}", "-X", "POST"])
            .arg("-H")
            .arg(format!("Authorization: Bearer {token}"))
            .arg(url);
        run_with_timeout(&mut cmd, None, Duration::from_secs(60))
    });
    let request = pending(&env, &finance);
    ok(&env.approvals(
        &finance,
        &[
            "deny",
            request["id"].as_str().unwrap(),
            "--reason",
            "not today",
        ],
    ));
    let (status, body) = split_status(&client.join().unwrap());
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not today"), "{body}");
    assert_eq!(
        env.upstream
            .requests()
            .iter()
            .filter(|r| r["path"] == "/refunds")
            .count(),
        1
    );
}

#[test]
fn review_retry_answers_409_then_the_same_request_passes_once() {
    let env = HttpEnv::builder().toml(REVIEWS).start();
    let token = env.agent_token();
    let finance = env.token("fay", &["finance"], "10m");
    let (status, body) = env.get(&token, "/crm/exports/customers?format=csv", &[]);
    assert_eq!(status, 409, "{body}");
    let problem = json(&body);
    assert_eq!(problem["rule"], "retry-exports");
    let id = problem["approval"]
        .as_str()
        .expect("the approval id")
        .to_string();
    assert!(problem["detail"].as_str().unwrap().contains(&id));
    // Still pending: the same request is told so, and does not pass.
    let (status, body) = env.get(&token, "/crm/exports/customers?format=csv", &[]);
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("still pending"), "{body}");
    // The agent's session ended with its connection; the store indexes
    // ended sessions in the background (see the report: a decision appended
    // before that fails), so let a reader index it first.
    wait_until(Duration::from_secs(10), "the session indexed", || {
        (!env.sessions().is_empty()).then_some(())
    });
    env.approve(&finance, &id);
    // A different request does not ride on the approval.
    let (status, _) = env.get(&token, "/crm/exports/orders?format=csv", &[]);
    assert_eq!(status, 409);
    // The approved one passes once, from a new client connection (Python requests).
    let r = env.requests(&token, "/crm/exports/customers?format=csv", "GET");
    assert_eq!(r["status"], 200, "{r}");
    let (status, _) = env.get(&token, "/crm/exports/customers?format=csv", &[]);
    assert_eq!(status, 409, "an approval is used once");
    assert_eq!(
        env.upstream
            .requests()
            .iter()
            .filter(|r| r["path"] == "/exports/customers")
            .count(),
        1
    );
}

const MASKING: &str = r#"
[masking]
detectors = ["email", "credit_card"]

[[masking.columns]]
name = "passwords"
columns = ["*password*"]
"#;

#[test]
fn json_and_text_responses_are_masked_and_counted() {
    let env = HttpEnv::builder().toml(MASKING).start();
    let token = env.agent_token();
    let (status, body) = env.get(&token, "/crm/customers", &[]);
    assert_eq!(status, 200, "{body}");
    let doc = json(&body);
    let ada = &doc["customers"][0];
    assert_eq!(ada["name"], "Ada");
    assert_eq!(ada["email"], "[email]");
    assert_eq!(ada["card"], "[credit_card]");
    assert_eq!(ada["password"], "[passwords]");
    for leaked in [
        "ada@example.com",
        "4111 1111 1111 1111",
        "hunter22",
        "swordfish",
    ] {
        assert!(!body.contains(leaked), "{leaked} leaked: {body}");
    }
    let r = env.requests(&token, "/crm/customers", "GET");
    assert_eq!(r["body"]["customers"][1]["email"], "[email]", "{r}");

    let (status, body) = env.get(&token, "/crm/text", &[]);
    assert_eq!(status, 200);
    assert_eq!(body, "contact: [email]\nall good\n");

    // A compressed body that would need masking is refused, never passed on.
    let (status, body) = env.get(&token, "/crm/gzip", &["--compressed"]);
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("gzip"), "{body}");
    let seen = env.upstream.last("/customers").unwrap();
    assert_eq!(header(&seen, "accept-encoding"), ["identity"]);

    let replay = env.replay_with(&["GET /customers", "HTTP 200", "email=2", "passwords=2"]);
    assert!(!replay.contains("ada@example.com"), "{replay}");
}

#[test]
fn exempt_groups_see_data_unmasked() {
    let env = HttpEnv::builder()
        .toml("[masking]\ndetectors = [\"email\"]\nexempt_groups = [\"oncall\"]\n")
        .start();
    let oncall = env.token("olly", &["agents", "oncall"], "10m");
    let (status, body) = env.get(&oncall, "/crm/customers", &[]);
    assert_eq!(status, 200);
    assert!(body.contains("ada@example.com"), "{body}");
    let (_, body) = env.get(&env.agent_token(), "/crm/customers", &[]);
    assert!(!body.contains("ada@example.com"), "{body}");
}

#[test]
fn large_bodies_stream_without_being_buffered() {
    let env = HttpEnv::builder().toml(MASKING).start();
    let token = env.agent_token();
    // What the gateway holds before the bodies (started, one request
    // served): the allocator's and the binary's share depends on the build.
    let (status, _) = env.get(&token, "/crm/customers", &[]);
    assert_eq!(status, 200);
    let before = peak_rss_kib(env.gateway_pid());
    let out_file = env.dir.path().join("large.out");
    let out_path = out_file.display().to_string();
    // 100 MiB of text through the stream masker.
    let (status, _) = env.get(&token, "/crm/large?mb=100", &["-o", &out_path]);
    assert_eq!(status, 200);
    assert_eq!(
        std::fs::metadata(&out_file).unwrap().len(),
        100 * 1024 * 1024
    );
    // 60 MiB up, streamed to the upstream (chunked), checked end to end.
    let up = env.dir.path().join("up.bin");
    let mut data = Vec::with_capacity(60 << 20);
    let mut x: u32 = 12345;
    while data.len() < 60 << 20 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        data.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(&up, &data).unwrap();
    let up_arg = format!("@{}", up.display());
    let (status, body) = env.get(
        &token,
        "/crm/upload",
        // curl's default type, a form: read for `_method` fields as it
        // streams, and passed on whole.
        &["-H", "Transfer-Encoding: chunked", "--data-binary", &up_arg],
    );
    assert_eq!(status, 200, "{body}");
    let expected = {
        let mut cmd = std::process::Command::new("sha256sum");
        cmd.arg(&up);
        ok(&run_with_timeout(&mut cmd, None, COMMAND_TIMEOUT))
    };
    let reply = json(&body);
    assert_eq!(reply["length"], 60 << 20);
    assert!(expected.starts_with(reply["sha256"].as_str().unwrap()));
    // Neither body was held in memory: the gateway's peak RSS grew by far
    // less than the smaller of them (60 MiB).
    let peak = peak_rss_kib(env.gateway_pid());
    assert!(
        before > 0 && peak.saturating_sub(before) < 30 * 1024,
        "peak RSS {before} KiB before the bodies, {peak} KiB after"
    );
}

#[test]
fn websocket_echo_is_relayed_counted_and_masked() {
    let env = HttpEnv::builder().toml(MASKING).start();
    let token = env.agent_token();
    let url = env.url("/crm/ws");
    let ca = env.ca().display().to_string();
    let out = env.python(&["ws", &url, &token, &ca, "hello", "write to ada@example.com"]);
    let r: serde_json::Value = serde_json::from_str(ok(&out).trim()).unwrap();
    assert_eq!(r["status"], 101, "{r}");
    assert_eq!(r["echoes"][0], "hello");
    assert_eq!(
        r["echoes"][1], "write to [email]",
        "upstream text frames are masked"
    );
    assert_eq!(r["binary_ok"], true);
    assert_eq!(r["pong"], true);
    assert_eq!(r["close"], 1000);
    let seen = env.upstream.last("/ws").unwrap();
    assert_eq!(
        header(&seen, "authorization"),
        [format!("Bearer {CRM_SECRET}")]
    );
    env.replay_with(&["GET /ws", "HTTP 101 upgraded: 5 frames", "email=1"]);
    // The client offered permessage-deflate: frames are decoded to be masked
    // and recorded, so no extension is offered upstream, and an upstream
    // that negotiates one anyway is not relayed.
    assert!(
        header(&seen, "sec-websocket-extensions").is_empty(),
        "{seen}"
    );
    let out = env.python(&["ws", &env.url("/crm/ws?deflate=1"), &token, &ca, "hello"]);
    let r: serde_json::Value = serde_json::from_str(ok(&out).trim()).unwrap();
    assert_eq!(r["status"], 502, "{r}");
    assert!(
        r["body"].as_str().unwrap().contains("permessage-deflate"),
        "{r}"
    );

    // A denied upgrade never reaches the upstream.
    let env = HttpEnv::builder()
        .toml("[[rules]]\nname = \"no-ws\"\nmatch = { http = { paths = [\"/ws\"] } }\naction = \"deny\"\n")
        .start();
    let token = env.agent_token();
    let url = env.url("/crm/ws");
    let ca = env.ca().display().to_string();
    let out = env.python(&["ws", &url, &token, &ca, "hello"]);
    let r: serde_json::Value = serde_json::from_str(ok(&out).trim()).unwrap();
    assert_eq!(r["status"], 403, "{r}");
    assert!(env.upstream.requests().is_empty());
}

#[test]
fn http2_over_tls_and_http1_both_work() {
    let env = HttpEnv::start();
    let token = env.agent_token();
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let url = env.url("/crm/echo");
        let out = env.curl(
            Some(&token),
            &[flag, "-o", "/dev/null", "-w", "%{http_version}", &url],
        );
        let text = stdout(&out);
        assert!(
            text.starts_with(version),
            "{flag}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Many requests on one HTTP/2 connection are one session.
    let urls: Vec<String> = (0..5)
        .map(|i| env.url(&format!("/crm/items/{i}")))
        .collect();
    let mut args = vec!["--http2", "--parallel"];
    args.extend(urls.iter().map(String::as_str));
    ok(&env.curl(Some(&token), &args));
    let needles: Vec<String> = (0..5).map(|i| format!("GET /items/{i}")).collect();
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
    env.replay_with(&needles);
}

#[test]
fn host_routing_and_sessions_list_show_http_calls() {
    let env = HttpEnv::builder()
        .toml(
            r#"
[[connections]]
name = "billing"
kind = "http"
upstream = "{UPSTREAM}/billing"
hosts = ["billing.internal", "*.billing.test"]
allow_groups = ["agents"]
"#,
        )
        .start();
    let token = env.agent_token();
    let (status, body) = env.get(&token, "/v1/invoices", &["-H", "Host: billing.internal"]);
    assert_eq!(status, 200, "{body}");
    assert!(env.upstream.last("/billing/v1/invoices").is_some());
    let (status, _) = env.get(&token, "/v1/x", &["-H", "Host: eu.billing.test:443"]);
    assert_eq!(status, 200);
    // HTTP/1.1 routes by Host as HTTP/2 does by :authority.
    let (status, _) = env.get(
        &token,
        "/v1/h1",
        &["--http1.1", "-H", "Host: BILLING.internal"],
    );
    assert_eq!(status, 200);
    assert!(env.upstream.last("/billing/v1/h1").is_some());
    assert!(env.upstream.last("/billing/v1/x").is_some());
    let sessions = env.sessions();
    assert!(
        sessions.iter().any(|s| s["connection"] == "billing"),
        "{sessions:?}"
    );
    env.replay_with(&["GET /v1/invoices", "[http]", "HTTP 200"]);
}

#[test]
fn a_reload_that_moves_a_connection_sends_new_sessions_to_its_new_upstream() {
    let mut env = HttpEnv::builder()
        .toml(
            r#"
[[connections]]
name = "moving"
kind = "http"
upstream = "{UPSTREAM}/old"
allow_groups = ["agents"]
"#,
        )
        .start();
    let token = env.agent_token();
    let (status, body) = env.get(&token, "/moving/before", &[]);
    assert_eq!(status, 200, "{body}");
    assert!(env.upstream.last("/old/before").is_some());
    let line = env.reload_replacing("/old\"", "/new\"");
    assert!(line.contains("Configuration reloaded."), "{line}");
    // Each curl is a new client connection, so a new session.
    let (status, body) = env.get(&token, "/moving/after", &[]);
    assert_eq!(status, 200, "{body}");
    assert!(
        env.upstream.last("/new/after").is_some() && env.upstream.last("/old/after").is_none(),
        "a session after the reload reached the old upstream: {:?}",
        env.upstream.requests()
    );
}

#[test]
fn upstream_failures_and_timeouts_are_clear() {
    let dead = sluice_sandbox::free_port();
    let env = HttpEnv::builder()
        .toml(&format!(
            r#"
[[connections]]
name = "dead"
kind = "http"
upstream = "http://127.0.0.1:{dead}"
allow_groups = ["agents"]

[[connections]]
name = "slow"
kind = "http"
upstream = "{{UPSTREAM}}"
timeout = "1s"
allow_groups = ["agents"]
"#
        ))
        .start();
    let token = env.agent_token();
    let (status, body) = env.get(&token, "/dead/x", &[]);
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("could not be reached"), "{body}");
    let (status, body) = env.get(&token, "/slow/slow?s=5", &[]);
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("did not answer within"), "{body}");
    env.replay_with(&["GET /slow", "client saw error"]);
}

#[test]
fn https_upstreams_are_verified_against_the_configured_ca() {
    let env = HttpEnv::builder()
        .tls_upstream()
        .toml(
            r#"
[[connections]]
name = "secure"
kind = "http"
upstream = "{TLS_UPSTREAM}"
ca = { file = "{TLS_CA}" }
bearer = { env = "CRM_TOKEN" }
allow_groups = ["agents"]

[[connections]]
name = "untrusted"
kind = "http"
upstream = "{TLS_UPSTREAM}"
allow_groups = ["agents"]

[[connections]]
name = "unverified"
kind = "http"
upstream = "{TLS_UPSTREAM}"
upstream_tls = "require"
allow_groups = ["agents"]
"#,
        )
        .start();
    let token = env.agent_token();
    let (status, body) = env.get(&token, "/secure/echo", &[]);
    assert_eq!(status, 200, "{body}");
    let tls = env.tls_upstream.as_ref().unwrap();
    let seen = tls.last("/echo").unwrap();
    assert_eq!(
        header(&seen, "authorization"),
        [format!("Bearer {CRM_SECRET}")]
    );
    // No CA configured: the system roots do not know the test CA.
    let (status, body) = env.get(&token, "/untrusted/echo", &[]);
    assert_eq!(status, 502, "{body}");
    assert_eq!(tls.requests().len(), 1);
    // `require`: encrypted, not verified (an explicit opt-out).
    let (status, body) = env.get(&token, "/unverified/echo", &[]);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_reload_that_tightens_upstream_tls_applies_to_the_next_session() {
    let mut env = HttpEnv::builder()
        .tls_upstream()
        .toml(
            r#"
[[connections]]
name = "tightened"
kind = "http"
upstream = "{TLS_UPSTREAM}"
upstream_tls = "require"
allow_groups = ["agents"]
"#,
        )
        .start();
    let token = env.agent_token();
    let (status, body) = env.get(&token, "/tightened/echo", &[]);
    assert_eq!(status, 200, "{body}");
    // Verified from now on, against roots that do not know the test CA.
    let line = env.reload_replacing("upstream_tls = \"require\"\n", "");
    assert!(line.contains("Configuration reloaded."), "{line}");
    let (status, body) = env.get(&token, "/tightened/echo", &[]);
    assert_eq!(status, 502, "{body}");
    let seen = env.tls_upstream.as_ref().unwrap().requests();
    assert_eq!(seen.len(), 1, "reached the unverified upstream: {seen:?}");
}

#[test]
fn a_session_ends_when_its_token_expires() {
    let env = HttpEnv::start();
    let token = env.token("agent-1", &["agents"], "2s");
    let url = env.url("/crm/echo");
    let ca = env.ca().display().to_string();
    let out = env.python(&["keepalive", &url, &token, &ca, "3"]);
    let r: serde_json::Value = serde_json::from_str(ok(&out).trim()).unwrap();
    assert_eq!(r["first"], 200, "{r}");
    assert_eq!(r["second"], 401, "{r}");
    assert!(
        r["second_body"].as_str().unwrap().contains("token expired"),
        "{r}"
    );
    assert_eq!(env.upstream.requests().len(), 1);
    env.replay_with(&["GET /echo", "session ended: token expired"]);
}

/// One kept-alive Python `http.client` connection to the gateway, driven a
/// request at a time.
struct Conn {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl Conn {
    fn open(env: &HttpEnv) -> Conn {
        let mut child = std::process::Command::new("python3")
            .arg(py_dir().join("http_client.py"))
            .args(["conn", &env.url(""), &env.ca().display().to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        Conn { child, out }
    }

    fn send(&mut self, method: &str, path: &str, token: &str) -> (u16, String, bool) {
        use std::io::{BufRead, Write};
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{method} {path} {token}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let v = json(&line);
        (
            v["status"].as_u64().unwrap() as u16,
            v["body"].as_str().unwrap().to_string(),
            v["reconnected"].as_bool().unwrap(),
        )
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn revocation_holds_for_every_request_on_a_kept_alive_connection_and_every_exchange() {
    let env = HttpEnv::start();
    let root = env.agent_token();
    let exchange = |token: &str| {
        ok(&env.sluice(&["token", "exchange", "--connection", "crm", "--token", token]))
            .trim()
            .to_string()
    };
    let child = exchange(&root);
    let grandchild = exchange(&child);

    // Connection A: the root token is verified (a 404 for an unknown
    // connection name), but opens no session there.
    let mut a = Conn::open(&env);
    let (status, body, _) = a.send("GET", "/nope/echo", &root);
    assert_eq!(status, 404, "{body}");
    // Connection B: a token exchanged from a token exchanged from the root.
    let mut b = Conn::open(&env);
    let (status, body, _) = b.send("GET", "/crm/echo", &grandchild);
    assert_eq!(status, 200, "{body}");
    let before = env.upstream.requests().len();

    // The holder revokes the root token.
    ok(&env.sluice(&["token", "revoke", &root, "--reason", "leaked"]));

    // The grandchild's session is ended, within a second of the revocation
    // (recorded once the client connection is closed).
    let ended = wait_until_or(Duration::from_secs(3), || {
        env.sessions().into_iter().find(|s| {
            s["end_reason"]
                .as_str()
                .is_some_and(|r| r.contains("revoked"))
        })
    });
    assert!(ended.is_some(), "{:?}", env.sessions());

    // The same client connection, the revoked token: admission runs again.
    let (status, body, reconnected) = a.send("GET", "/crm/echo", &root);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("revoked"), "{body}");
    assert!(!reconnected, "the gateway closed connection A");
    let (status, body, _) = b.send("GET", "/crm/echo", &grandchild);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("revoked"), "{body}");
    assert_eq!(env.upstream.requests().len(), before);

    // An unrelated token keeps working on the same kept-alive connection.
    let other = env.agent_token();
    let (status, body, reconnected) = a.send("GET", "/crm/echo", &other);
    assert_eq!(status, 200, "{body}");
    assert!(!reconnected);
}

/// JSON is masked completely: numbers are seen by the detectors, and the
/// client gets the document that was checked, never the upstream's bytes (a
/// duplicate key's other copy, which a client may read, is not passed on).
#[test]
fn json_numbers_and_duplicate_keys_are_masked() {
    let env = HttpEnv::builder().toml(MASKING).start();
    let token = env.agent_token();
    let raw = |body: &str| {
        let (status, text) = env.get(
            &token,
            "/crm/raw",
            &["-G", "--data-urlencode", &format!("body={body}")],
        );
        assert_eq!(status, 200, "{text}");
        text
    };
    let body = raw(r#"{"card": 4111111111111111, "n": [5500000000000004, 7]}"#);
    assert!(!body.contains("4111111111111111"), "{body}");
    assert!(!body.contains("5500000000000004"), "{body}");
    let doc = json(&body);
    assert_eq!(doc["n"][1], 7);

    for dup in [
        r#"{"card": "4111111111111111", "card": "none"}"#,
        r#"{"card": "none", "card": "4111111111111111"}"#,
        r#"{"a": {"email": "ada@example.com", "email": 1}}"#,
    ] {
        let body = raw(dup);
        assert!(
            !body.contains("4111111111111111") && !body.contains("ada@example.com"),
            "{dup} -> {body}"
        );
        json(&body);
    }
    // Nothing to mask: still well-formed JSON with the same content.
    let body = raw(r#"{"id": 7, "name": "widget", "price": 12.5}"#);
    assert_eq!(
        json(&body),
        serde_json::json!({"id": 7, "name": "widget", "price": 12.5})
    );
}

/// A retry approval is for the request's body too: the approved re-send
/// must carry the body that was approved.
#[test]
fn a_retry_approval_is_bound_to_the_request_body() {
    let env = HttpEnv::builder().toml(REVIEWS).start();
    let token = env.agent_token();
    let finance = env.token("fay", &["finance"], "10m");
    let post = |body: &str| {
        env.get(
            &token,
            "/crm/exports/run",
            &[
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "-d",
                body,
            ],
        )
    };
    let (status, body) = post(r#"{"table": "customers", "limit": 10}"#);
    assert_eq!(status, 409, "{body}");
    let id = json(&body)["approval"].as_str().unwrap().to_string();
    wait_until(Duration::from_secs(10), "the session indexed", || {
        (!env.sessions().is_empty()).then_some(())
    });
    env.approve(&finance, &id);
    // Same method, path and query, another body: not what was approved.
    let (status, body) = post(r#"{"table": "customers", "limit": 1000000, "drop": true}"#);
    assert_eq!(status, 409, "{body}");
    assert_ne!(json(&body)["approval"].as_str().unwrap(), id);
    assert!(env.upstream.last("/exports/run").is_none());
    // The approved body passes, once.
    let (status, body) = post(r#"{"table": "customers", "limit": 10}"#);
    assert_eq!(status, 200, "{body}");
    let (status, _) = post(r#"{"table": "customers", "limit": 10}"#);
    assert_eq!(status, 409);
    let sent: Vec<_> = env
        .upstream
        .requests()
        .into_iter()
        .filter(|r| r["path"] == "/exports/run")
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
}

#[test]
fn an_idle_keepalive_connection_is_closed_and_clients_reconnect() {
    let env = HttpEnv::builder()
        .env("SLUICE_LISTEN__IDLE_TIMEOUT", "2s")
        .start();
    let token = env.agent_token();
    let mut conn = Conn::open(&env);
    let (status, _, reconnected) = conn.send("GET", "/crm/items", &token);
    assert_eq!(status, 200);
    assert!(!reconnected);
    // Busy: requests within the timeout keep the connection.
    std::thread::sleep(Duration::from_millis(800));
    let (status, _, reconnected) = conn.send("GET", "/crm/items", &token);
    assert_eq!((status, reconnected), (200, false));
    // Idle past the timeout: the gateway closed it; the client reconnects.
    std::thread::sleep(Duration::from_secs(4));
    let (status, _, reconnected) = conn.send("GET", "/crm/items", &token);
    assert_eq!(status, 200);
    assert!(reconnected, "the idle connection was kept open");
}

#[test]
fn data_in_response_headers_is_masked() {
    let env = HttpEnv::builder()
        .toml("[masking]\ndetectors = [\"email\"]\n")
        .start();
    let token = env.agent_token();
    let out = env.curl(
        Some(&token),
        &[
            "-D",
            "-",
            "-o",
            "/dev/null",
            &env.url("/crm/raw?type=text/plain&body=ok&disposition=attachment%3B%20filename%3D%22ada%40example.com.csv%22"),
        ],
    );
    let head = stdout(&out);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-disposition: attachment"),
        "{head}"
    );
    assert!(!head.contains("ada@example.com"), "{head}");
    // Structure is left alone.
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{head}"
    );
}

#[test]
fn ndjson_lines_get_column_rules_like_json_documents() {
    let env = HttpEnv::builder().toml(MASKING).start();
    let token = env.agent_token();
    // Two JSON lines; the key-name rule and the detectors apply to each.
    let body = "%7B%22user%22%3A%22ada%22%2C%22db_password%22%3A%22hunter22%22%7D%0A%7B%22contact%22%3A%22ada%40example.com%22%7D%0A";
    let (status, out) = env.get(
        &token,
        &format!("/crm/raw?type=application/x-ndjson&body={body}"),
        &[],
    );
    assert_eq!(status, 200, "{out}");
    assert!(
        !out.contains("hunter22") && !out.contains("ada@example.com"),
        "{out}"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(json(lines[0])["db_password"], "[passwords]", "{out}");
    // A line that is not JSON cannot be masked: the stream is ended, not passed.
    let (_, out) = env.get(
        &token,
        "/crm/raw?type=application/x-ndjson&body=not%20json%20hunter22%0A",
        &[],
    );
    assert!(!out.contains("hunter22"), "{out}");
}

#[test]
fn html_character_references_do_not_hide_values_from_the_detectors() {
    let env = HttpEnv::builder().toml(MASKING).start();
    let token = env.agent_token();
    // <p>ada&#64;example&#46;com &lt;b&gt;</p>, URL-encoded.
    let body = "%3Cp%3Eada%26%2364%3Bexample%26%2346%3Bcom%20%26lt%3Bb%26gt%3B%3C%2Fp%3E";
    let (status, out) = env.get(&token, &format!("/crm/raw?type=text/html&body={body}"), &[]);
    assert_eq!(status, 200, "{out}");
    assert!(
        !out.contains("ada@example.com") && !out.contains("&#64;"),
        "{out}"
    );
    assert!(out.contains("[email]"), "{out}");
    // Markup-significant references are left as they are.
    assert!(out.contains("&lt;b&gt;"), "{out}");
}

/// A range of a masked body would be masked out of context (here a CSV row
/// without its header, so no column rule): the whole body is asked for, and
/// a partial answer is refused.
#[test]
fn ranges_are_not_forwarded_where_responses_are_masked() {
    let env = HttpEnv::builder().toml(MASKING).start();
    let token = env.agent_token();
    let body = "name%2Cdb_password%0Aada%2Chunter22%0A";
    let path = format!("/crm/raw?type=text/csv&body={body}");
    let (status, out) = env.get(
        &token,
        &path,
        &["-H", "Range: bytes=17-", "-H", "If-Range: x"],
    );
    assert_eq!(status, 200, "{out}");
    assert_eq!(out, "name,db_password\nada,[passwords]\n");
    let seen = env.upstream.last("/raw").unwrap();
    assert!(
        header(&seen, "range").is_empty() && header(&seen, "if-range").is_empty(),
        "{seen}"
    );
    // An upstream that answers with a part anyway.
    let (status, out) = env.get(&token, &format!("{path}&partial=1"), &[]);
    assert_eq!(status, 502, "{out}");
    assert!(!out.contains("hunter22") && out.contains("206"), "{out}");
}

#[test]
fn csv_tables_get_column_rules_by_header() {
    let env = HttpEnv::builder().toml(MASKING).start();
    let token = env.agent_token();
    // name,db_password,contact / ada,hunter22,"ada@example.com" (quoted).
    let body = "name%2Cdb_password%2Ccontact%0Aada%2Chunter22%2C%22ada%40example.com%22%0A";
    let (status, out) = env.get(&token, &format!("/crm/raw?type=text/csv&body={body}"), &[]);
    assert_eq!(status, 200, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "name,db_password,contact", "{out}");
    assert_eq!(lines[1], "ada,[passwords],[email]", "{out}");
}
