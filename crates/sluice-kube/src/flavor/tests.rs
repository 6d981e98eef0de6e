use super::*;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use sluice_core::toml;

fn connection() -> ConnectionConfig {
    toml::from_str(
        r#"
        name = "k8s"
        kind = "kubernetes"
        upstream = "https://127.0.0.1:6443"
        token = { env = "SLUICE_KUBE_TEST_TOKEN" }
        "#,
    )
    .unwrap()
}

fn commands(
    method: &str,
    path: &str,
    query: Option<&str>,
    upgrade: Option<&str>,
) -> Result<Vec<Command>, Problem> {
    let conn = connection();
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let headers = HeaderMap::new();
    let head = RequestHead::new(&method, path, query, &headers, &conn).with_upgrade(upgrade);
    KubeFlavor::default().commands(&head)
}

#[test]
fn requests_become_kube_commands() {
    let cmds = commands("DELETE", "/api/v1/namespaces/prod/pods/web-1", None, None).unwrap();
    assert_eq!(cmds.len(), 1);
    assert_eq!(cmds[0].text, "DELETE /api/v1/namespaces/prod/pods/web-1");
    assert_eq!(
        cmds[0].kind,
        CommandKind::KubeRequest {
            method: "DELETE".into(),
            path: "/api/v1/namespaces/prod/pods/web-1".into(),
            verb: "delete".into(),
            resource: "pods".into(),
            namespace: Some("prod".into()),
            name: Some("web-1".into()),
        }
    );
    assert_eq!(cmds[0].context, vec!["delete pods/web-1 -n prod"]);
    let cmds = commands("GET", "/api/v1/secrets", Some("watch=1"), None).unwrap();
    assert_eq!(cmds[0].text, "GET /api/v1/secrets?watch=1");
    assert!(matches!(&cmds[0].kind, CommandKind::KubeRequest { verb, .. } if verb == "watch"));
}

#[test]
fn exec_is_its_command() {
    let q = "command=sh&command=-c&command=echo+%27hi%27+%3E+%2Ftmp%2Fx&container=app&stdout=true";
    let cmds = commands(
        "GET",
        "/api/v1/namespaces/default/pods/web-1/exec",
        Some(q),
        Some("websocket"),
    )
    .unwrap();
    assert_eq!(cmds.len(), 1);
    assert_eq!(cmds[0].kind, CommandKind::Exec);
    assert_eq!(cmds[0].text, r#"sh -c 'echo '\''hi'\'' > /tmp/x'"#);
    assert_eq!(
        cmds[0].context,
        vec![
            format!("kube: GET /api/v1/namespaces/default/pods/web-1/exec?{q}"),
            "exec pods/web-1 -n default -c app".to_string()
        ]
    );
    let err = commands(
        "GET",
        "/api/v1/namespaces/default/pods/web-1/exec",
        Some("stdout=true"),
        Some("websocket"),
    )
    .unwrap_err();
    assert_eq!(err.kind, ProblemKind::BadRequest);
}

#[test]
fn bad_paths_are_refused_before_judging() {
    let err = commands(
        "GET",
        "/api/v1/namespaces/default/pods/%2e%2e/secrets",
        None,
        None,
    )
    .unwrap_err();
    assert_eq!(err.kind, ProblemKind::BadRequest);
    let err = commands("TRACE", "/api/v1/pods", None, None).unwrap_err();
    assert_eq!(err.kind, ProblemKind::BadRequest);
}

#[test]
fn shell_quoting() {
    for (argv, text) in [
        (vec!["ls", "-la", "/"], "ls -la /"),
        (vec!["echo", ""], "echo ''"),
        (vec!["rm", "-rf", "/tmp/a b"], "rm -rf '/tmp/a b'"),
        (vec!["sh", "-c", "a;b"], "sh -c 'a;b'"),
        (vec!["it's"], r"'it'\''s'"),
        (vec!["$(id)"], "'$(id)'"),
    ] {
        let argv: Vec<String> = argv.into_iter().map(String::from).collect();
        assert_eq!(sluice_shell::quote_argv(&argv), text);
    }
}

async fn body_json(resp: http::Response<Body>) -> serde_json::Value {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

fn denial() -> Problem {
    Problem::from_denial(&sluice_core::model::Denial {
        rule: Some("no-exec".into()),
        message: "command denied by rule \"no-exec\": no shells in prod".into(),
        hint: Some("Ask a Sluice administrator.".into()),
    })
}

#[tokio::test]
async fn denials_render_as_status() {
    let flavor = KubeFlavor::default();
    let resp = flavor.render(None, &denial());
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    let doc = body_json(resp).await;
    assert_eq!(doc["kind"], "Status");
    assert_eq!(doc["status"], "Failure");
    assert_eq!(doc["reason"], "Forbidden");
    assert_eq!(doc["code"], 403);
    let msg = doc["message"].as_str().unwrap();
    assert!(
        msg.contains("no-exec") && msg.contains("Ask a Sluice administrator"),
        "{msg}"
    );
    let review = Problem::from_denial(&sluice_core::model::Denial {
        rule: Some("reviewed".into()),
        message: "command denied by rule \"reviewed\": deletes need a look; approval 0123456789ab requested: an approver runs it".into(),
        hint: None,
    });
    let doc = body_json(flavor.render(None, &review)).await;
    assert_eq!(doc["code"], 403);
    assert!(doc["message"].as_str().unwrap().contains("0123456789ab"));
    assert_eq!(doc["details"]["causes"][1]["message"], "0123456789ab");
}

#[tokio::test]
async fn spdy_retry_of_a_refused_exec_gets_the_same_refusal() {
    let flavor = KubeFlavor::default();
    let conn = connection();
    let headers = HeaderMap::new();
    let q = Some("command=rm&command=-rf&command=%2F&stdout=true");
    let path = "/api/v1/namespaces/prod/pods/web/exec";
    let get = Method::GET;
    let ws = RequestHead::new(&get, path, q, &headers, &conn).with_upgrade(Some("websocket"));
    let _ = flavor.render(Some(&ws), &denial());
    let post = Method::POST;
    let spdy = RequestHead::new(&post, path, q, &headers, &conn).with_upgrade(Some("spdy/3.1"));
    let err = flavor.commands(&spdy).unwrap_err();
    assert_eq!(err.rule.as_deref(), Some("no-exec"));
    let other = RequestHead::new(&post, path, Some("command=ls"), &headers, &conn)
        .with_upgrade(Some("spdy/3.1"));
    let err = flavor.commands(&other).unwrap_err();
    assert_eq!(err.kind, ProblemKind::NotSupported);
    // Whatever problem the proxy renders for the SPDY retry, the client reads the denial.
    let doc = body_json(flavor.render(Some(&spdy), &err)).await;
    assert!(doc["message"].as_str().unwrap().contains("no-exec"));
}

fn upgrade_allowed(path: &str, query: Option<&str>, upgrade: &str) -> bool {
    let conn = connection();
    let headers = HeaderMap::new();
    let get = Method::GET;
    let head = RequestHead::new(&get, path, query, &headers, &conn).with_upgrade(Some(upgrade));
    KubeFlavor::default().allow_upgrade(&head)
}

#[test]
fn upgrades_only_for_exec_attach_and_portforward() {
    let pod = "/api/v1/namespaces/prod/pods/web";
    let allowed = [
        (format!("{pod}/exec"), Some("command=id")),
        (format!("{pod}/attach"), Some("stdout=1")),
        (format!("{pod}/portforward"), Some("ports=5432")),
        (
            "/api/v1/nodes/n1/proxy/exec/prod/web/app".into(),
            Some("command=id"),
        ),
        ("/api/v1/nodes/n1/proxy/portForward/prod/web".into(), None),
    ];
    for (path, query) in &allowed {
        assert!(upgrade_allowed(path, *query, "websocket"), "{path}");
        assert!(!upgrade_allowed(path, *query, "spdy/3.1"), "{path}");
    }
    let refused = [
        (
            "/api/v1/namespaces/prod/secrets".to_string(),
            Some("watch=1"),
        ),
        ("/api/v1/watch/namespaces/prod/secrets".into(), None),
        ("/api/v1/namespaces/prod/secrets/db".into(), None),
        (format!("{pod}/log"), Some("follow=1")),
        (
            "/api/v1/nodes/n1/proxy/containerLogs/prod/web/app".into(),
            None,
        ),
        ("/api/v1/nodes/n1/proxy/stats/summary".into(), None),
        (
            "/apis/apps/v1/namespaces/prod/deployments".into(),
            Some("watch=true"),
        ),
    ];
    for (path, query) in &refused {
        assert!(!upgrade_allowed(path, *query, "websocket"), "{path}");
    }
    let conn = connection();
    let headers = HeaderMap::new();
    let get = Method::GET;
    let head = RequestHead::new(&get, &refused[0].0, refused[0].1, &headers, &conn)
        .with_upgrade(Some("websocket"));
    let problem = KubeFlavor::default().upgrade_refusal(&head);
    assert_eq!(problem.status, StatusCode::NOT_IMPLEMENTED);
    assert!(problem
        .detail
        .contains("only for exec, attach and port-forward"));
}

#[test]
fn ranges_are_not_forwarded_and_partial_answers_refused() {
    let flavor = KubeFlavor::default();
    let conn = connection();
    let client = HeaderMap::new();
    let get = Method::GET;
    let head = RequestHead::new(
        &get,
        "/api/v1/namespaces/default/pods/web/log",
        None,
        &client,
        &conn,
    );
    let mut up = HeaderMap::new();
    up.insert(header::RANGE, HeaderValue::from_static("bytes=10-"));
    up.insert(header::IF_RANGE, HeaderValue::from_static("\"abc\""));
    flavor.prepare_upstream(&head, &mut up).unwrap();
    assert!(!up.contains_key(header::RANGE) && !up.contains_key(header::IF_RANGE));
    let session = session_info();
    let ctx = MaskingContext::new(None, &session, 1 << 20);
    for path in [
        "/api/v1/namespaces/default/pods/web/log",
        "/api/v1/namespaces/default/secrets/db",
    ] {
        let head = RequestHead::new(&get, path, None, &client, &conn);
        let (parts, _) = http::Response::builder()
            .status(206)
            .header(header::CONTENT_TYPE, "text/plain")
            .header(header::CONTENT_RANGE, "bytes 10-20/100")
            .body(())
            .unwrap()
            .into_parts();
        let p = flavor.response_plan(&head, &parts, &ctx);
        assert!(matches!(p.body, BodyPlan::Refuse(_)), "{path}");
    }
}

/// A real API server labels a JSON watch `application/json`: it is a
/// stream of events however it is labelled.
#[test]
fn watches_are_streams_of_events_whatever_their_label() {
    let event = |v: &str| {
        format!(
            r#"{{"type":"ADDED","object":{{"kind":"Secret","metadata":{{"name":"db"}},"data":{{"password":"{v}"}}}}}}"#
        )
    };
    let stream = format!("{}\n{}", event("aHVudGVyMjI="), event("c3dvcmRmaXNo"));
    for query in ["watch=1", "watch=true&resourceVersion=100"] {
        let p = plan(
            "/api/v1/namespaces/default/secrets",
            Some(query),
            "application/json",
            None,
        );
        assert!(p.streaming, "{query}");
        let BodyPlan::Transform(mut t) = p.body else {
            panic!("{query}: {:?}", p.body)
        };
        let (a, b) = stream.split_at(stream.len() / 2 + 3);
        let mut out = t.push(a.as_bytes()).unwrap();
        assert_eq!(
            out.iter().filter(|&&b| b == b'\n').count(),
            1,
            "the first event is out"
        );
        out.extend(t.push(b.as_bytes()).unwrap());
        out.extend(t.finish().unwrap());
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(
            !text.contains("aHVudGVyMjI=") && !text.contains("c3dvcmRmaXNo"),
            "{text}"
        );
    }
    let p = plan(
        "/api/v1/watch/namespaces/default/pods",
        None,
        "application/json",
        None,
    );
    assert!(matches!(p.body, BodyPlan::PassThrough) && p.streaming);
}

#[test]
fn upstream_headers() {
    let flavor = KubeFlavor::default();
    let conn = connection();
    let mut client = HeaderMap::new();
    client.insert("accept", HeaderValue::from_static("application/yaml"));
    let get = Method::GET;
    let head = RequestHead::new(
        &get,
        "/api/v1/namespaces/default/secrets/db",
        None,
        &client,
        &conn,
    );
    let mut up = client.clone();
    up.insert("impersonate-user", HeaderValue::from_static("system:admin"));
    up.append(
        "impersonate-group",
        HeaderValue::from_static("system:masters"),
    );
    up.insert("impersonate-extra-scopes", HeaderValue::from_static("x"));
    flavor.prepare_upstream(&head, &mut up).unwrap();
    assert!(up.keys().all(|k| !k.as_str().starts_with("impersonate")));
    assert_eq!(up[header::ACCEPT], "application/json");
    assert_eq!(up[header::ACCEPT_ENCODING], "identity");
    let table = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
    let mut up = HeaderMap::new();
    up.insert("accept", HeaderValue::from_static(table));
    flavor.prepare_upstream(&head, &mut up).unwrap();
    assert_eq!(up[header::ACCEPT], table);
    let proxy = RequestHead::new(
        &get,
        "/api/v1/namespaces/default/services/web/proxy/index.html",
        None,
        &client,
        &conn,
    );
    let mut up = HeaderMap::new();
    up.insert("accept", HeaderValue::from_static("text/html"));
    flavor.prepare_upstream(&proxy, &mut up).unwrap();
    assert_eq!(up[header::ACCEPT], "text/html");
    let mut up = HeaderMap::new();
    up.insert(
        "accept",
        HeaderValue::from_static("application/vnd.kubernetes.protobuf, application/json"),
    );
    flavor.prepare_upstream(&head, &mut up).unwrap();
    assert_eq!(up[header::ACCEPT], "application/json");
}

#[test]
fn credentials_inject_the_token() {
    std::env::set_var("SLUICE_KUBE_TEST_TOKEN", "upstream-sa-token-0123\n");
    let injected = KubeFlavor::default().credentials(&connection()).unwrap();
    let (name, value) = &injected.headers()[0];
    assert_eq!(name, header::AUTHORIZATION);
    assert_eq!(value, "Bearer upstream-sa-token-0123");
    assert!(injected
        .secrets()
        .iter()
        .any(|s| s == b"upstream-sa-token-0123"));
}

fn plan(
    path: &str,
    query: Option<&str>,
    ctype: &str,
    engine: Option<&sluice_core::masking::MaskingEngine>,
) -> ResponsePlan {
    let conn = connection();
    let headers = HeaderMap::new();
    let get = Method::GET;
    let head = RequestHead::new(&get, path, query, &headers, &conn);
    let (parts, _) = http::Response::builder()
        .header(header::CONTENT_TYPE, ctype)
        .body(())
        .unwrap()
        .into_parts();
    let session = session_info();
    let masker = engine.map(|e| SessionMasker::for_engine(e.clone(), session.clone()));
    let ctx = MaskingContext::new(masker.as_ref(), &session, 1 << 20);
    KubeFlavor::default().response_plan(&head, &parts, &ctx)
}

#[test]
fn response_plans() {
    let p = plan(
        "/api/v1/namespaces/default/secrets",
        None,
        "application/json",
        None,
    );
    assert!(matches!(p.body, BodyPlan::Transform(_)) && !p.streaming);
    let p = plan(
        "/api/v1/namespaces/default/secrets",
        Some("watch=1"),
        "application/json;stream=watch",
        None,
    );
    assert!(matches!(p.body, BodyPlan::Transform(_)) && p.streaming);
    let p = plan(
        "/api/v1/namespaces/default/secrets/x",
        None,
        "application/vnd.kubernetes.protobuf",
        None,
    );
    assert!(matches!(p.body, BodyPlan::Refuse(_)));
    let p = plan(
        "/api/v1/namespaces/default/secrets/x",
        None,
        "application/yaml",
        None,
    );
    assert!(matches!(p.body, BodyPlan::Refuse(_)));
    let p = plan(
        "/api/v1/namespaces/default/serviceaccounts/default/token",
        None,
        "application/json",
        None,
    );
    assert!(matches!(p.body, BodyPlan::Transform(_)));
    let p = plan(
        "/api/v1/namespaces/default/pods",
        None,
        "application/json",
        None,
    );
    assert!(matches!(p.body, BodyPlan::PassThrough));
    let p = plan(
        "/api/v1/namespaces/default/pods",
        Some("watch=true"),
        "application/json;stream=watch",
        None,
    );
    assert!(matches!(p.body, BodyPlan::PassThrough) && p.streaming);
    let engine = sluice_core::masking::compile(
        &sluice_core::masking::MaskingConfig {
            detectors: vec!["email".into()],
            ..Default::default()
        },
        None,
    )
    .unwrap();
    let p = plan(
        "/api/v1/namespaces/default/configmaps",
        None,
        "application/json",
        Some(&engine),
    );
    assert!(matches!(p.body, BodyPlan::Transform(_)));
    let p = plan(
        "/api/v1/namespaces/default/configmaps",
        None,
        "application/vnd.kubernetes.protobuf",
        Some(&engine),
    );
    assert!(matches!(p.body, BodyPlan::Refuse(_)));
    let p = plan(
        "/openapi/v2",
        None,
        "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
        Some(&engine),
    );
    assert!(matches!(p.body, BodyPlan::PassThrough));
    let p = plan(
        "/api/v1/namespaces/default/pods/web/log",
        Some("follow=true"),
        "text/plain",
        Some(&engine),
    );
    assert!(matches!(p.body, BodyPlan::Text) && p.streaming);
}

#[test]
fn exec_output_masked_by_frame() {
    let engine = sluice_core::masking::compile(
        &sluice_core::masking::MaskingConfig {
            detectors: vec!["email".into()],
            ..Default::default()
        },
        None,
    )
    .unwrap();
    let mut hook = ExecFrames {
        masker: Some(SessionMasker::for_engine(engine, session_info())),
        streams: None,
        counts: MaskCounts::default(),
    };
    let mut f = Frame {
        fin: true,
        opcode: 2,
        payload: b"\x01mail ops.lead@example.com\n".to_vec(),
    };
    hook.frame(Direction::UpstreamToClient, &mut f).unwrap();
    assert_eq!(f.payload[0], 1);
    assert!(!String::from_utf8_lossy(&f.payload).contains("ops.lead@example.com"));
    let mut status = Frame {
        fin: true,
        opcode: 2,
        payload: b"\x03{\"status\":\"Success\"}".to_vec(),
    };
    let before = status.clone();
    hook.frame(Direction::UpstreamToClient, &mut status)
        .unwrap();
    assert_eq!(status, before);
    let mut text = Frame {
        fin: true,
        opcode: 1,
        payload: b"1aGk=".to_vec(),
    };
    assert!(hook.frame(Direction::UpstreamToClient, &mut text).is_err());
    assert_eq!(hook.counts().get("email"), 1);
}

fn session_info() -> sluice_core::pipeline::SessionInfo {
    sluice_core::pipeline::SessionInfo {
        id: "s".into(),
        identity: sluice_core::model::Identity {
            subject: "a".into(),
            groups: vec![],
            issuer: "sluice".into(),
            token_id: "t".into(),
            expires_at: std::time::SystemTime::now(),
            connections: None,
        },
        connection: "k8s".into(),
        protocol: Protocol::Kubernetes,
        client_addr: "127.0.0.1:1".into(),
    }
}

/// The hook of a non-interactive exec with the email detector: output
/// masked as streams, one per channel.
fn streamed_email_masking() -> ExecFrames {
    let engine = sluice_core::masking::compile(
        &sluice_core::masking::MaskingConfig {
            detectors: vec!["email".into()],
            ..Default::default()
        },
        None,
    )
    .unwrap();
    let masker = SessionMasker::for_engine(engine, session_info());
    ExecFrames {
        streams: Some([masker.stream(), masker.stream()]),
        masker: Some(masker),
        counts: MaskCounts::default(),
    }
}

/// A non-interactive exec's output is masked as a stream: an address split
/// across two frames is held until its line ends, and the held tail goes out
/// before the status frame.
#[test]
fn exec_output_split_across_frames_is_masked_whole() {
    let mut hook = streamed_email_masking();
    let mut sent = Vec::new();
    for chunk in [
        &b"\x01line one\nmail ops.lead@exa"[..],
        b"\x01mple.com\ntail without newline",
    ] {
        let mut f = Frame {
            fin: true,
            opcode: 2,
            payload: chunk.to_vec(),
        };
        hook.frame(Direction::UpstreamToClient, &mut f).unwrap();
        assert_eq!(f.payload[0], 1);
        sent.extend_from_slice(&f.payload[1..]);
    }
    let status = Frame {
        fin: true,
        opcode: 2,
        payload: b"\x03{\"status\":\"Success\"}".to_vec(),
    };
    for early in hook.before(Direction::UpstreamToClient, &status) {
        assert_eq!(early.payload[0], 1);
        sent.extend_from_slice(&early.payload[1..]);
    }
    let text = String::from_utf8(sent).unwrap();
    assert_eq!(text, "line one\nmail [email]\ntail without newline");
    assert_eq!(hook.counts().get("email"), 1);
}

/// A server-to-client WebSocket frame (unmasked, payload under 64 KiB).
fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match u16::try_from(payload.len()) {
        Ok(n) if n < 126 => out.push(n as u8),
        Ok(n) => {
            out.push(126);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Err(_) => panic!("test frames stay under 64 KiB"),
    }
    out.extend_from_slice(payload);
    out
}

/// The frames of an unmasked server-to-client stream, as (opcode, payload).
fn ws_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while let [head, len, rest @ ..] = bytes {
        let (n, rest) = match *len {
            126 => (
                usize::from(u16::from_be_bytes([rest[0], rest[1]])),
                &rest[2..],
            ),
            n => (usize::from(n), rest),
        };
        frames.push((head & 0x0f, rest[..n].to_vec()));
        bytes = &rest[n..];
    }
    frames
}

/// A command that exits at once: its output, its status and the close come
/// from the upstream in one read. The client gets the whole output, masked,
/// then the status, then the close, in that order.
#[tokio::test]
async fn exec_output_arriving_with_its_status_and_close_goes_out_first() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hook = streamed_email_masking();
    let (client, mut client_peer) = tokio::io::duplex(64 * 1024);
    let (upstream, mut upstream_peer) = tokio::io::duplex(64 * 1024);
    let status = b"\x03{\"status\":\"Success\"}";
    let mut burst = ws_frame(2, b"\x01ran: id\nmail ops.lead@example.com, no newline");
    burst.extend(ws_frame(2, status));
    burst.extend(ws_frame(8, &1000u16.to_be_bytes()));
    let peers = async {
        upstream_peer.write_all(&burst).await.unwrap();
        upstream_peer.shutdown().await.unwrap();
        client_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        client_peer.read_to_end(&mut got).await.unwrap();
        got
    };
    let relay = sluice_http::ws::relay(
        client,
        upstream,
        Some(Box::new(hook)),
        std::future::pending(),
    );
    let (stats, got) = tokio::join!(relay, peers);
    assert_eq!(stats.error, None);
    let frames = ws_frames(&got);
    let output: Vec<u8> = frames
        .iter()
        .take_while(|(_, p)| p.first() == Some(&1))
        .flat_map(|(_, p)| p[1..].to_vec())
        .collect();
    assert_eq!(
        String::from_utf8_lossy(&output),
        "ran: id\nmail [email], no newline"
    );
    let rest: Vec<&(u8, Vec<u8>)> = frames
        .iter()
        .skip_while(|(_, p)| p.first() == Some(&1))
        .collect();
    assert_eq!(rest.len(), 2, "{frames:?}");
    assert_eq!(rest[0], &(2, status.to_vec()));
    assert_eq!(rest[1].0, 8);
}
