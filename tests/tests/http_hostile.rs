//! Bad input on the HTTP listener: plaintext clients, malformed requests,
//! request smuggling, header floods, slowloris, oversized bodies and path
//! tricks that try to escape a connection's prefix or a path rule. Each
//! gets a clear refusal, nothing reaches the upstream, the gateway lives on.

// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_e2e::http::*;
use sluice_e2e::*;
use std::time::Duration;

const RULES: &str = r#"
[[connections]]
name = "billing"
kind = "http"
upstream = "{UPSTREAM}/billing"
allow_groups = ["agents"]

[[rules]]
name = "no-admin"
match = { http = { paths = ["/admin/*"] } }
action = "deny"
"#;

fn raw(env: &HttpEnv, mode: &str, input: &[u8], extra: &[&str]) -> serde_json::Value {
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(py_dir().join("http_raw.py"))
        .arg(env.port.to_string())
        .arg(env.ca())
        .arg(mode)
        .args(extra);
    let out = run_with_timeout(&mut cmd, Some(input), Duration::from_secs(90));
    serde_json::from_str(ok(&out).trim()).unwrap()
}

fn status_of(response: &serde_json::Value) -> u16 {
    response["response"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn plaintext_and_malformed_requests_get_clear_errors() {
    let mut env = HttpEnv::builder().toml(RULES).start();
    let token = env.agent_token();
    // Plain HTTP on the TLS port: told to use https, in HTTP.
    let r = raw(
        &env,
        "plain",
        b"GET /crm/echo HTTP/1.1\r\nHost: x\r\n\r\n",
        &[],
    );
    assert_eq!(status_of(&r), 400, "{r}");
    assert!(
        r["response"].as_str().unwrap().contains("HTTPS only"),
        "{r}"
    );
    // Garbage instead of a TLS handshake or an HTTP request.
    let r = raw(&env, "plain", &[0u8; 64], &[]);
    assert_eq!(status_of(&r), 400, "{r}");
    let auth = format!("Authorization: Bearer {token}\r\n");
    for (what, request) in [
        ("garbage", b"\x00\x01\x02 not http\r\n\r\n".to_vec()),
        ("bad request line", b"GET\r\n\r\n".to_vec()),
        ("bad header", format!("GET /crm/echo HTTP/1.1\r\nHost: x\r\n{auth}Bad Header\r\n\r\n").into_bytes()),
        (
            "two content lengths",
            format!("POST /crm/echo HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 1\r\nContent-Length: 2\r\n\r\nab").into_bytes(),
        ),
    ] {
        let r = raw(&env, "send", &request, &[]);
        let status = status_of(&r);
        assert!(status == 400 || status == 0, "{what}: {r}");
    }
    // Smuggling with both lengths: chunked wins (RFC 9112), the connection is
    // closed after the one response, and the smuggled request never runs.
    let r = raw(
        &env,
        "send",
        format!("POST /crm/echo HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /crm/smuggled HTTP/1.1\r\nHost: x\r\n{auth}\r\n").as_bytes(),
        &[],
    );
    assert_eq!(
        r["response"].as_str().unwrap().matches("HTTP/1.1 ").count(),
        1,
        "{r}"
    );
    assert!(env.upstream.last("/smuggled").is_none());
    // An absolute-form target naming another host is routed by its path only.
    let r = raw(
        &env,
        "send",
        format!("GET https://evil.example/crm/admin/x HTTP/1.1\r\nHost: evil.example\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
        &[],
    );
    assert_eq!(status_of(&r), 403, "{r}");
    assert!(
        env.upstream
            .requests()
            .iter()
            .all(|q| q["path"] != "/admin/x"),
        "{:?}",
        env.upstream.requests()
    );
    env.assert_alive();
}

#[test]
fn header_floods_and_oversized_heads_are_refused() {
    let mut env = HttpEnv::start();
    let token = env.agent_token();
    let mut many =
        format!("GET /crm/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n");
    for i in 0..500 {
        many.push_str(&format!("X-Flood-{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    let r = raw(&env, "send", many.as_bytes(), &[]);
    assert_eq!(status_of(&r), 431, "{r}");
    let big = format!(
        "GET /crm/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let r = raw(&env, "send", big.as_bytes(), &[]);
    assert_eq!(status_of(&r), 431, "{r}");
    // curl over HTTP/2 with a flood of headers.
    let mut args: Vec<String> = vec!["--http2".into()];
    for i in 0..300 {
        args.push("-H".into());
        args.push(format!("X-Flood-{i}: {}", "v".repeat(300)));
    }
    args.push(env.url("/crm/echo"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = env.curl(Some(&token), &args);
    let text = stdout(&out);
    assert!(
        !text.ends_with("\n200"),
        "an HTTP/2 header flood passed: {text}"
    );
    assert!(env.upstream.requests().is_empty());
    env.assert_alive();
}

#[test]
fn slowloris_is_cut_off_by_the_header_read_timeout() {
    let mut env = HttpEnv::start();
    let r = raw(&env, "slowloris", b"", &["40"]);
    let after = r["closed_after"].as_f64().unwrap();
    assert!(
        after < 25.0,
        "a slow client held the connection for {after}s: {r}"
    );
    assert!(env.upstream.requests().is_empty());
    // Others are served meanwhile and after.
    let (status, _) = env.get(&env.agent_token(), "/crm/echo", &[]);
    assert_eq!(status, 200);
    env.assert_alive();
}

#[test]
fn oversized_bodies_are_refused_with_413() {
    let mut env = HttpEnv::start();
    let token = env.agent_token();
    // Declared too large: refused before the body is read (curl sends
    // Expect: 100-continue and gets the 413 instead) or the upstream contacted.
    let sparse = env.dir.path().join("sparse.bin");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    let data = format!("@{}", sparse.display());
    // (HTTP/1.1: over HTTP/2 the 413 is sent too, but the stream reset that
    // refuses the unread body makes curl 7.88 report a framing error.)
    // Under load curl has (rarely) reported the interim 100 as the status;
    // the 413 must come within three tries, and nothing else is accepted.
    let upload = |args: &[&str]| {
        let mut last = (0, String::new());
        for _ in 0..3 {
            last = env.get(&token, "/crm/upload", args);
            assert!(last.0 == 413 || last.0 == 100, "{}: {}", last.0, last.1);
            if last.0 == 413 {
                break;
            }
        }
        last
    };
    let (status, body) = upload(&["--http1.1", "--data-binary", &data]);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("67108864"), "{body}");
    // A raw client that declares 100 MB and sends 3 bytes is not waited for.
    let r = raw(
        &env,
        "send",
        format!("POST /crm/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 100000000\r\n\r\nabc").as_bytes(),
        &[],
    );
    assert!(r["closed_after"].as_f64().unwrap() < 20.0, "{r}");
    assert!(env.upstream.requests().is_empty());
    // Chunked past the limit: cut off at the limit.
    let file = env.dir.path().join("big.bin");
    std::fs::write(&file, vec![b'x'; 70 << 20]).unwrap();
    let data = format!("@{}", file.display());
    let (status, body) = upload(&[
        "--http1.1",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &data,
    ]);
    assert_eq!(status, 413, "{body}");
    // Over HTTP/2, a refused request with a body gets its answer (bodies far
    // beyond the flow-control window can make curl 7.88 report the stream
    // reset that follows instead; see docs/http.md).
    let small = env.dir.path().join("small.bin");
    // One DATA frame: the request is whole before the refusal goes out (a
    // body still streaming gets the refusal and then a stream reset, which
    // curl 7.88 sometimes reports instead of the answer).
    std::fs::write(&small, vec![b'y'; 1_000]).unwrap();
    let data = format!("@{}", small.display());
    // curl 7.88 sometimes reports a transport error (status 0) for a stream
    // the server answered and closed: an answer must come within three tries,
    // and nothing but 403 or that error is acceptable.
    let token = env.token("nobody", &["none"], "5m");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (status, body) = env.get(&token, "/crm/upload", &["--http2", "--data-binary", &data]);
        assert!(status == 403 || status == 0, "{status}: {body}");
        seen.push(status);
        if status == 403 {
            break;
        }
    }
    assert_eq!(seen.last(), Some(&403), "{seen:?}");
    env.assert_alive();
}

#[test]
fn path_tricks_do_not_escape_a_prefix_or_a_rule() {
    let mut env = HttpEnv::builder().toml(RULES).start();
    let token = env.agent_token();
    // Refused outright (400): dot-dot in any spelling, encoded slashes and
    // backslashes, path parameters, control characters.
    for path in [
        "/crm/../billing/x",
        "/crm/%2e%2e/billing/x",
        "/crm/%2E%2E/admin/x",
        "/crm/.%2e/admin/x",
        "/crm/x/..",
        "/crm/admin%2Fx",
        "/crm/admin%2fx",
        "/crm%2Fadmin/x",
        "/crm/admin%5Cx",
        "/crm/..%5C..%5Cbilling",
        "/crm/admin;jsessionid=1/x",
        "/crm/..;/billing/x",
        "/crm/a%00b",
        "/crm/a%0d%0aX-Injected:%201",
        "/crm/%zz",
    ] {
        let out = env.curl(Some(&token), &["--path-as-is", &env.url(path)]);
        let (status, body) = split_status(&out);
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["type"],
            "https://sluice.dev/problems/bad-request",
            "{path}"
        );
    }
    // Normalised, then judged by the rule: the rule still holds.
    for path in [
        "//crm//admin/x",
        "/crm/./admin/x",
        "/crm/%61%64%6d%69%6e/x",
        "/crm/Admin/x",
        "/crm/admin/./x/",
    ] {
        let out = env.curl(Some(&token), &["--path-as-is", &env.url(path)]);
        let (status, body) = split_status(&out);
        assert_eq!(status, 403, "{path}: {body}");
    }
    // What the upstream sees is what policy saw, canonically encoded.
    let out = env.curl(
        Some(&token),
        &["--path-as-is", &env.url("//crm/./a%20b/%7Euser/")],
    );
    assert_eq!(split_status(&out).0, 200);
    let seen = env.upstream.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["path"], "/a%20b/~user/");
    env.assert_alive();
}

/// A request line is what the upstream runs: method and URL override headers
/// never reach it, a `_method` parameter is refused, HEAD is judged as GET.
#[test]
fn method_and_url_overrides_never_change_what_the_upstream_runs() {
    let env = HttpEnv::builder()
        .toml(
            r#"
[[rules]]
name = "no-deletes"
match = { http = { methods = ["DELETE"] } }
action = "deny"

[[rules]]
name = "no-secret-reads"
match = { http = { methods = ["GET"], paths = ["/secret/*"] } }
action = "deny"

[[rules]]
name = "no-force"
match = { http = { query = { force = "true" } } }
action = "deny"
"#,
        )
        .start();
    let token = env.agent_token();

    // Override headers: the request is judged as POST /echo and forwarded
    // as exactly that, without the headers.
    let (status, body) = env.get(
        &token,
        "/crm/echo",
        &[
            "-X",
            "POST",
            "-d",
            "{}",
            "-H",
            "X-HTTP-Method-Override: DELETE",
            "-H",
            "X-HTTP-Method: DELETE",
            "-H",
            "X-Method-Override: DELETE",
            "-H",
            "X-Original-URL: /secret/keys",
            "-H",
            "X-Rewrite-URL: /secret/keys",
            "-H",
            "X-Forwarded-Prefix: /secret",
            "-H",
            "X-Request-Id: kept",
        ],
    );
    assert_eq!(status, 200, "{body}");
    let seen = env.upstream.last("/echo").unwrap();
    assert_eq!(seen["method"], "POST");
    for gone in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-original-url",
        "x-rewrite-url",
        "x-forwarded-prefix",
    ] {
        assert!(
            header(&seen, gone).is_empty(),
            "{gone} reached the upstream: {seen}"
        );
    }
    assert_eq!(header(&seen, "x-request-id"), ["kept"]);

    // `_method` query overrides are refused before the upstream.
    let before = env.upstream.requests().len();
    for path in [
        "/crm/echo?_method=DELETE",
        "/crm/echo?a=1&%5Fmethod=DELETE",
        "/crm/echo?_method[]=DELETE",
        "/crm/echo?a=1;_method=DELETE",
    ] {
        let (status, body) = env.get(&token, path, &["-X", "POST", "-d", "{}"]);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("method"), "{body}");
    }
    // The same in a form body (Rails, Laravel, Symfony read it there).
    let (status, body) = env.get(&token, "/crm/echo", &["-d", "name=x&_method=DELETE"]);
    assert_eq!(status, 400, "{body}");
    let (status, body) = env.get(&token, "/crm/echo", &["-F", "_method=DELETE", "-F", "a=1"]);
    assert_eq!(status, 400, "{body}");
    // Whatever the media type: a JSON key (Laravel, Symfony), an untyped
    // body (Rack reads it as a form), a multipart name in capitals.
    for args in [
        &[
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"_method":"DELETE"}"#,
        ][..],
        &[
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"a":1,"_METHOD":"DELETE"}"#,
        ],
        &["-H", "Content-Type:", "-d", "_method=DELETE"],
        &["-H", "Content-Type: text/plain", "-d", "a=1&_method=DELETE"],
        &[
            "-H",
            "Content-Type: multipart/form-data; boundary=b",
            "--data-binary",
            "--b\r\nContent-Disposition: form-data; NAME=\"_method\"\r\n\r\nDELETE\r\n--b--\r\n",
        ],
    ] {
        let (status, body) = env.get(&token, "/crm/users/7", args);
        assert_eq!(status, 400, "{args:?}: {body}");
        assert!(
            body.contains("_method") || body.contains("_METHOD"),
            "{body}"
        );
    }
    // A top-level JSON key in a body too long to parse whole before
    // judging (the rest streams): found in the start the gateway read.
    let filler = "x".repeat(1100 * 1024);
    let hidden = env.dir.path().join("hidden.json");
    std::fs::write(
        &hidden,
        format!("{{\"_method\":\"DELETE\",\"a\":\"{filler}\"}}"),
    )
    .unwrap();
    let (status, body) = env.get(
        &token,
        "/crm/echo",
        &[
            "--http1.1",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &format!("@{}", hidden.display()),
        ],
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("_method"), "{body}");
    // Query spellings a lenient parser reads as `force=true`.
    for path in ["/crm/echo?force[]=true", "/crm/echo?a=1;force=true"] {
        let (status, body) = env.get(&token, path, &["-X", "POST", "-d", "{}"]);
        assert_eq!(status, 403, "{path}: {body}");
    }
    // HEAD is judged as GET.
    let out = env.curl(Some(&token), &["-I", &env.url("/crm/secret/keys")]);
    let (status, _) = split_status(&out);
    assert_eq!(status, 403);
    assert_eq!(env.upstream.requests().len(), before);

    // Ordinary requests still pass, forms included.
    let (status, body) = env.get(&token, "/crm/echo", &["-d", "name=x&method=card"]);
    assert_eq!(status, 200, "{body}");
    let (status, body) = env.get(&token, "/crm/echo", &["-F", "title=_method", "-F", "a=1"]);
    assert_eq!(status, 200, "{body}");
    // Ordinary JSON (a key merely containing "method", a string holding
    // `&_method=`), and large bodies: JSON and a type no framework reads
    // fields from.
    let big = env.dir.path().join("big.json");
    std::fs::write(&big, format!("{{\"a\":\"{filler}\"}}")).unwrap();
    let at_big = format!("@{}", big.display());
    let (status, body) = env.get(
        &token,
        "/crm/echo",
        &[
            "--http1.1",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &at_big,
        ],
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = env.get(
        &token,
        "/crm/echo",
        &[
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"payment_method":"card","note":"a&_method=DELETE"}"#,
        ],
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = env.get(
        &token,
        "/crm/echo",
        &[
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &at_big,
        ],
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = env.get(&token, "/crm/echo?method=card&page=2", &[]);
    assert_eq!(status, 200, "{body}");
    let out = env.curl(Some(&token), &["-I", &env.url("/crm/echo")]);
    assert_eq!(split_status(&out).0, 200);
}

/// A method-override field past the first 1 MiB of a POST body (what the
/// gateway reads before judging) is found as the rest streams upstream:
/// the upload is stopped before the piece holding it, so the upstream (a
/// framework stand-in that dispatches a request once its body is whole and
/// honours `_method`) never runs it; the client gets the refusal, and the
/// audit records the command as not completed.
#[test]
fn method_overrides_past_the_first_mib_stop_the_upload() {
    let mut env = HttpEnv::builder()
        .toml(
            r#"
[[rules]]
name = "no-deletes"
match = { http = { methods = ["DELETE"] } }
action = "deny"
"#,
        )
        .start();
    let token = env.agent_token();
    let acted = || -> Vec<serde_json::Value> {
        env.upstream
            .requests()
            .into_iter()
            .filter(|r| r.get("acted").is_some())
            .collect()
    };
    let file = |name: &str, data: &[u8]| {
        let path = env.dir.path().join(name);
        std::fs::write(&path, data).unwrap();
        path.display().to_string()
    };
    let filler = "x".repeat(1200 * 1024);
    let refused = |status: u16, body: &str| {
        assert_eq!(status, 400, "{body}");
        assert!(
            body.contains("asks the upstream to run another method than POST"),
            "{body}"
        );
    };

    // The control: a long form without one is run (as POST) by the stand-in.
    let plain = file("plain.form", format!("a={filler}&b=DELETE").as_bytes());
    let (status, body) = env.get(
        &token,
        "/crm/act",
        &["--http1.1", "--data-binary", &format!("@{plain}")],
    );
    assert_eq!(status, 200, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["acted"], "POST", "{body}");
    assert_eq!(acted().len(), 1);

    // curl's default type (a form), Content-Length framed, and multipart
    // and JSON: each holds a field asking for another method past the
    // first MiB.
    let form = file(
        "override.form",
        format!("a={filler}&_method=DELETE&b=2").as_bytes(),
    );
    let multipart = file(
        "override.multipart",
        format!(
            "--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n{filler}\r\n--b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--b--\r\n"
        )
        .as_bytes(),
    );
    let json_body = file(
        "override.json",
        format!("{{\"a\":\"{filler}\",\"b\":{{\"_method\":1}},\"_method\":\"DELETE\"}}").as_bytes(),
    );
    // A field without a value ends this one: judged before the bytes that
    // complete the body are sent.
    let trailing = file("trailing.form", format!("a={filler}&_method").as_bytes());
    for (path, ctype) in [
        (&form, None),
        (&trailing, None),
        (
            &multipart,
            Some("Content-Type: multipart/form-data; boundary=b"),
        ),
        (&json_body, Some("Content-Type: application/json")),
    ] {
        let data = format!("@{path}");
        let mut args = vec!["--http1.1", "--data-binary", &data];
        if let Some(ctype) = ctype {
            args.extend(["-H", ctype]);
        }
        let (status, body) = env.get(&token, "/crm/act", &args);
        refused(status, &body);
    }

    // Chunked, with the field's name split between two chunks sent apart.
    let first = file("first.chunk", format!("a={filler}&_met").as_bytes());
    let second = file("second.chunk", b"hod=DELETE&b=2");
    let url = env.url("/crm/act");
    let ca = env.ca().display().to_string();
    let out = env.python(&[
        "chunked",
        &url,
        &token,
        &ca,
        "application/x-www-form-urlencoded",
        "0.5",
        &first,
        &second,
    ]);
    let r: serde_json::Value = serde_json::from_str(ok(&out).trim()).unwrap();
    refused(
        r["status"].as_u64().unwrap_or(0) as u16,
        r["body"].as_str().unwrap_or(""),
    );

    // The stand-in saw the heads (the uploads were started) but never a
    // whole request: it ran nothing but the control.
    let heads = env
        .upstream
        .requests()
        .into_iter()
        .filter(|r| r["path"] == "/act")
        .count();
    assert_eq!(heads, 6);
    assert_eq!(acted().len(), 1, "{:?}", acted());
    // Recorded as refused, with where the upload was stopped: for the split
    // name, at the second chunk (what came before was sent on).
    let stopped = format!(
        "the upload was stopped after {} bytes",
        format!("a={filler}&_met").len()
    );
    env.replay_with(&["POST /act", "client saw error", &stopped]);
    env.assert_alive();
}

/// The injected credential echoed back in other forms (the status line's
/// reason phrase, `\u`-escaped JSON, base64, percent-encoding) is redacted;
/// a body the masker cannot read is refused on a masking connection.
#[test]
fn echoed_credentials_in_any_encoding_and_unreadable_bodies_are_kept_out() {
    use base64::Engine as _;
    let env = HttpEnv::builder()
        .toml("[masking]\ndetectors = [\"email\"]\n")
        .start();
    let token = env.agent_token();
    let out = env.curl(Some(&token), &["-i", &env.url("/crm/reason")]);
    let (status, text) = split_status(&out);
    assert_eq!(status, 200, "{text}");
    assert!(!text.contains(CRM_SECRET), "{text}");

    let escaped: String = CRM_SECRET
        .chars()
        .map(|c| format!("\\u{:04x}", c as u32))
        .collect();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let echoes = [
        (
            "application/json",
            format!("{{\"seen\": \"Bearer {escaped}\"}}"),
        ),
        (
            "text/plain",
            b64(&format!("Authorization: Bearer {CRM_SECRET}")),
        ),
        (
            "text/plain",
            b64(&format!("{{\"h\":\"Bearer {CRM_SECRET}\"}}")),
        ),
        (
            "application/json",
            format!("{{\"u\": \"{}\"}}", b64(&format!("x:{CRM_SECRET}"))),
        ),
        (
            "text/plain",
            format!(
                "next=%2Fcb%3Ftoken%3D{}",
                CRM_SECRET
                    .bytes()
                    .map(|b| format!("%{b:02X}"))
                    .collect::<String>()
            ),
        ),
    ];
    for (ctype, body) in &echoes {
        let (status, text) = env.get(
            &token,
            "/crm/raw",
            &[
                "-G",
                "--data-urlencode",
                &format!("type={ctype}"),
                "--data-urlencode",
                &format!("body={body}"),
            ],
        );
        assert_eq!(status, 200, "{text}");
        assert_ne!(&text, body, "{ctype}: echoed as is: {text}");
    }

    // A zip or protobuf body cannot be masked: refused, not passed on.
    for ctype in ["application/zip", "application/x-protobuf"] {
        let (status, text) = env.get(
            &token,
            "/crm/raw",
            &[
                "-G",
                "--data-urlencode",
                &format!("type={ctype}"),
                "--data-urlencode",
                "body=PK ada@example.com",
            ],
        );
        assert_eq!(status, 502, "{ctype}: {text}");
        assert!(!text.contains("ada@example.com"), "{text}");
    }
    // JSON labelled text/json is masked as JSON.
    let (status, text) = env.get(
        &token,
        "/crm/raw",
        &[
            "-G",
            "--data-urlencode",
            "type=text/json",
            "--data-urlencode",
            "body={\"email\": \"ada@example.com\"}",
        ],
    );
    assert_eq!(status, 200, "{text}");
    assert!(!text.contains("ada@example.com"), "{text}");
}

/// A token the gateway has verified is remembered by its digest; copies of
/// it get no credit from that. With the genuine token accepted first, a copy
/// with one signature character flipped and a copy whose claims were
/// rewritten (another subject, the `ops` group) under the old signature are
/// each refused with 401, and the upstream's own log shows that neither
/// request reached it.
#[test]
fn copies_of_a_remembered_token_are_checked_in_full() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let env = HttpEnv::builder().toml(OPS).start();
    let token = env.agent_token();
    let (status, body) = env.get(&token, "/crm/echo?genuine=1", &[]);
    assert_eq!(status, 200, "{body}");
    let (status, body) = env.get(&token, "/ops/echo?genuine=2", &[]);
    assert_eq!(status, 403, "{body}");

    let (signed, sig) = token.rsplit_once('.').unwrap();
    let flipped = format!(
        "{signed}.{}{}",
        if sig.starts_with('A') { 'B' } else { 'A' },
        &sig[1..]
    );
    let (header, rest) = token.split_once('.').unwrap();
    let (claims, sig) = rest.split_once('.').unwrap();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&b64.decode(claims).unwrap()).unwrap();
    claims["sub"] = "root".into();
    claims["groups"] = serde_json::json!(["agents", "ops"]);
    let rewritten = format!("{header}.{}.{sig}", b64.encode(claims.to_string()));
    for (n, forged) in [&flipped, &rewritten].into_iter().enumerate() {
        for path in ["crm", "ops"] {
            let (status, body) = env.get(forged, &format!("/{path}/echo?forged={n}"), &[]);
            assert_eq!(status, 401, "{path} {n}: {body}");
        }
    }
    let reached: Vec<String> = env
        .upstream
        .requests()
        .iter()
        .map(|r| r["query"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(reached, ["genuine=1"], "{reached:?}");
}

/// An upstream that echoes its injected credential in a response header (a
/// Content-Disposition it was asked to send) has it redacted there; the
/// upstream's log shows it was asked to send exactly that.
#[test]
fn a_credential_echoed_in_a_response_header_is_redacted() {
    let env = HttpEnv::builder().start();
    let token = env.agent_token();
    let disposition = format!("attachment; filename=\"{CRM_SECRET}.txt\"");
    let out = env.curl(
        Some(&token),
        &[
            "-i",
            "-G",
            &env.url("/crm/raw"),
            "--data-urlencode",
            &format!("disposition={disposition}"),
            "--data-urlencode",
            "body=x",
        ],
    );
    let (status, text) = split_status(&out);
    assert_eq!(status, 200, "{text}");
    assert!(!text.contains(CRM_SECRET), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-disposition: attachment; filename=\"[redacted-credential].txt\""),
        "{text}"
    );
    let seen = env.upstream.last("/raw").expect("the upstream saw /raw");
    assert!(
        seen["query"].as_str().unwrap().contains(CRM_SECRET),
        "{seen}"
    );
}
