use super::*;
use hyper::body::Incoming;
use sluice_core::approval::ReviewMode;
use sluice_core::config::Secret;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use tokio::sync::mpsc;

/// What the test server received.
#[derive(Debug)]
struct Received {
    path: String,
    headers: hyper::HeaderMap,
    body: Vec<u8>,
}

/// A webhook receiver on 127.0.0.1:0 answering the scripted statuses (then 200).
async fn receiver(script: Vec<u16>) -> (SocketAddr, mpsc::UnboundedReceiver<Received>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    let script = Arc::new(Mutex::new(VecDeque::from(script)));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            let script = script.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let tx = tx.clone();
                    let script = script.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let headers = req.headers().clone();
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .expect("body")
                            .to_bytes()
                            .to_vec();
                        let _ = tx.send(Received {
                            path,
                            headers,
                            body,
                        });
                        let status = script.lock().expect("script").pop_front().unwrap_or(200);
                        let mut response = hyper::Response::new(Full::new(Bytes::from("thanks")));
                        *response.status_mut() = StatusCode::from_u16(status).expect("status");
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, rx)
}

fn config(url: String, secret: Option<Secret>, format: WebhookFormat) -> WebhookConfig {
    WebhookConfig {
        name: "test-hook".into(),
        url,
        secret,
        format,
        rules: None,
    }
}

fn secret_file(dir: &tempfile::TempDir, value: &str) -> Secret {
    let path = dir.path().join("webhook.secret");
    std::fs::write(&path, format!("{value}\n")).expect("write secret");
    Secret::File(path)
}

fn request() -> ApprovalRequest {
    ApprovalRequest {
        id: "0190c0de-aaaa-7bbb-8ccc-000000000001".into(),
        session_id: "0190c0de-session".into(),
        command_id: 7,
        subject: "agent-7".into(),
        issuer: "sluice".into(),
        connection: "appdb".into(),
        command: "DELETE FROM orders\n  WHERE id < 10 AND note <> 'a&b'".into(),
        kind: None,
        context: Vec::new(),
        rule: "reviewed-writes".into(),
        message: Some("Writes need a DBA.".into()),
        approvers: vec!["dba".into()],
        mode: ReviewMode::Hold,
        requested_at_ms: 1_700_000_000_000,
        expires_at_ms: 1_700_000_600_000,
        state: ApprovalState::Pending,
        decided_by: None,
        decided_at_ms: None,
        reason: None,
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the webhook was called in time")
        .expect("receiver open")
}

/// An independent HMAC-SHA256 (RFC 2104) over sha2, to check the notifier's.
fn reference_hmac(key: &[u8], data: &[u8]) -> String {
    use sha2_011::{Digest, Sha256};
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(data)
        .finalize();
    let outer = Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    format!("sha256={}", hex::encode(outer))
}

#[test]
fn signature_matches_rfc4231() {
    // RFC 4231 test case 2.
    assert_eq!(
        signature(b"Jefe", b"what do ya want for nothing?"),
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    let long_key = [7u8; 100];
    assert_eq!(
        signature(&long_key, b"body"),
        reference_hmac(&long_key, b"body")
    );
}

#[tokio::test]
async fn json_event_is_signed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, mut rx) = receiver(vec![]).await;
    let notifier = WebhookNotifier::from_config(&config(
        format!("http://{addr}/hooks/sluice?x=1"),
        Some(secret_file(&dir, "s3cret-key")),
        WebhookFormat::Json,
    ))
    .expect("notifier");
    let r = request();
    notifier.requested(&r);
    let got = next(&mut rx).await;
    assert_eq!(got.path, "/hooks/sluice");
    assert_eq!(
        got.headers.get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/json"[..])
    );
    assert_eq!(
        got.headers.get(EVENT_HEADER).map(|v| v.as_bytes()),
        Some(&b"approval.requested"[..])
    );
    let sig = got
        .headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .expect("signature header");
    assert_eq!(sig, reference_hmac(b"s3cret-key", &got.body));
    let body: serde_json::Value = serde_json::from_slice(&got.body).expect("json");
    assert_eq!(body["event"], "approval.requested");
    let approval: ApprovalRequest =
        serde_json::from_value(body["approval"].clone()).expect("approval");
    assert_eq!(approval, r);

    let mut decided = r.clone();
    decided.state = ApprovalState::Denied;
    decided.decided_by = Some("bob".into());
    decided.reason = Some("not today".into());
    notifier.decided(&decided);
    let got = next(&mut rx).await;
    let body: serde_json::Value = serde_json::from_slice(&got.body).expect("json");
    assert_eq!(body["event"], "approval.decided");
    assert_eq!(body["approval"]["state"], "denied");
    assert_eq!(body["approval"]["decided_by"], "bob");
    assert_eq!(
        got.headers
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok()),
        Some(reference_hmac(b"s3cret-key", &got.body).as_str())
    );
}

#[tokio::test]
async fn unsigned_without_secret() {
    let (addr, mut rx) = receiver(vec![]).await;
    let notifier =
        WebhookNotifier::from_config(&config(format!("http://{addr}"), None, WebhookFormat::Json))
            .expect("notifier");
    notifier.requested(&request());
    let got = next(&mut rx).await;
    assert_eq!(got.path, "/");
    assert!(!got.headers.contains_key(SIGNATURE_HEADER));
}

#[tokio::test]
async fn slack_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, mut rx) = receiver(vec![]).await;
    let notifier = WebhookNotifier::from_config(&config(
        format!("http://{addr}/slack"),
        Some(secret_file(&dir, "k")),
        WebhookFormat::Slack,
    ))
    .expect("notifier");
    let r = request();
    notifier.requested(&r);
    let got = next(&mut rx).await;
    let body: serde_json::Value = serde_json::from_slice(&got.body).expect("json");
    let object = body.as_object().expect("object");
    assert_eq!(object.len(), 1, "only text: {body}");
    let text = body["text"].as_str().expect("text");
    for needle in [
        r.id.as_str(),
        "agent-7",
        "appdb",
        "reviewed-writes",
        "DELETE FROM orders WHERE id &lt; 10 AND note &lt;&gt; 'a&amp;b'",
        "Writes need a DBA.",
        "sluice approvals approve 0190c0de-aaaa-7bbb-8ccc-000000000001",
        "sluice approvals deny 0190c0de-aaaa-7bbb-8ccc-000000000001",
        "2023-11-14T22:",
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
    assert_eq!(
        got.headers
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok()),
        Some(reference_hmac(b"k", &got.body).as_str())
    );

    let mut decided = r;
    decided.state = ApprovalState::Approved;
    decided.decided_by = Some("bob".into());
    notifier.decided(&decided);
    let got = next(&mut rx).await;
    let body: serde_json::Value = serde_json::from_slice(&got.body).expect("json");
    let text = body["text"].as_str().expect("text");
    assert!(text.contains("approved by *bob*"), "{text}");
    assert!(
        text.contains("0190c0de-aaaa-7bbb-8ccc-000000000001"),
        "{text}"
    );
}

#[tokio::test]
async fn retries_server_errors() {
    let (addr, mut rx) = receiver(vec![500, 503]).await;
    let notifier = WebhookNotifier::from_config(&config(
        format!("http://{addr}/"),
        None,
        WebhookFormat::Json,
    ))
    .expect("notifier");
    notifier
        .deliver(Event::Requested, &request())
        .await
        .expect("third attempt succeeds");
    for _ in 0..3 {
        next(&mut rx).await;
    }
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn gives_up_after_three_attempts_and_on_client_errors() {
    let (addr, mut rx) = receiver(vec![500, 500, 500, 500]).await;
    let notifier = WebhookNotifier::from_config(&config(
        format!("http://{addr}/"),
        None,
        WebhookFormat::Json,
    ))
    .expect("notifier");
    let e = notifier
        .deliver(Event::Requested, &request())
        .await
        .expect_err("gives up");
    assert!(e.contains("3 attempts"), "{e}");
    for _ in 0..3 {
        next(&mut rx).await;
    }
    assert!(rx.try_recv().is_err());

    let (addr, mut rx) = receiver(vec![400]).await;
    let notifier = WebhookNotifier::from_config(&config(
        format!("http://{addr}/"),
        None,
        WebhookFormat::Json,
    ))
    .expect("notifier");
    let e = notifier
        .deliver(Event::Requested, &request())
        .await
        .expect_err("400 is final");
    assert!(e.contains("400"), "{e}");
    next(&mut rx).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(rx.try_recv().is_err(), "a 4xx is not retried");
}

#[tokio::test]
async fn unreachable_webhook_is_an_error_not_a_panic() {
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let notifier = WebhookNotifier::from_config(&config(
        format!("http://127.0.0.1:{port}/"),
        None,
        WebhookFormat::Json,
    ))
    .expect("notifier");
    let e = notifier
        .deliver(Event::Decided, &request())
        .await
        .expect_err("unreachable");
    assert!(e.contains("connect"), "{e}");
}

#[tokio::test]
async fn only_configured_rules() {
    let (addr, mut rx) = receiver(vec![]).await;
    let mut cfg = config(format!("http://{addr}/"), None, WebhookFormat::Json);
    cfg.rules = Some(vec!["other-rule".into()]);
    let notifier = WebhookNotifier::from_config(&cfg).expect("notifier");
    assert!(!notifier.wants("reviewed-writes"));
    notifier.requested(&request());
    notifier.decided(&request());
    let mut other = request();
    other.rule = "other-rule".into();
    notifier.requested(&other);
    let got = next(&mut rx).await;
    let body: serde_json::Value = serde_json::from_slice(&got.body).expect("json");
    assert_eq!(body["approval"]["rule"], "other-rule");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.try_recv().is_err());
}

#[test]
fn without_a_runtime_events_are_dropped() {
    let notifier = WebhookNotifier::from_config(&config(
        "http://127.0.0.1:9/".into(),
        None,
        WebhookFormat::Json,
    ))
    .expect("notifier");
    // Must neither panic nor block.
    notifier.requested(&request());
    notifier.decided(&request());
}

#[test]
fn config_errors() {
    let missing = WebhookNotifier::from_config(&config(
        "https://hooks.example.com/x".into(),
        Some(Secret::Env(
            "SLUICE_TEST_WEBHOOK_SECRET_THAT_IS_NOT_SET".into(),
        )),
        WebhookFormat::Json,
    ))
    .expect_err("unset secret");
    let text = missing.to_string();
    assert!(text.contains("test-hook"), "{text}");
    assert!(
        text.contains("SLUICE_TEST_WEBHOOK_SECRET_THAT_IS_NOT_SET"),
        "{text}"
    );
    for url in ["ftp://example.com/", "not a url", "/relative"] {
        assert!(
            WebhookNotifier::from_config(&config(url.into(), None, WebhookFormat::Json)).is_err(),
            "{url}"
        );
    }
    let https = WebhookNotifier::from_config(&config(
        "https://hooks.example.com/services/T0".into(),
        None,
        WebhookFormat::Slack,
    ))
    .expect("https webhook");
    assert_eq!(https.inner.authority, "hooks.example.com:443");
    let v6 = WebhookNotifier::from_config(&config(
        "http://[::1]:9000/x".into(),
        None,
        WebhookFormat::Json,
    ))
    .expect("ipv6 webhook");
    assert_eq!(v6.inner.authority, "[::1]:9000");
}
