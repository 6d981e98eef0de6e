//! The real API server on 127.0.0.1:0 with a real gateway, through the real client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use hyper::{Method, StatusCode};
use sluice_api::client::ApiClient;
use sluice_api::{ApiError, ApiServer, Problem};
use sluice_core::approval::ApprovalState;
use sluice_core::audit::Store;
use sluice_core::pipeline::policy::{CommandMatcher, MatchKey, Scratch};
use sluice_core::{Command, CommandKind, Config, Decision, Gateway, GatewayBuilder, Protocol};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

struct Harness {
    _dir: tempfile::TempDir,
    gateway: Arc<Gateway>,
    addr: SocketAddr,
    ca: std::path::PathBuf,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Harness {
    async fn start() -> Harness {
        Self::start_with("", |b| b).await
    }

    async fn start_with(
        extra_toml: &str,
        customize: impl FnOnce(GatewayBuilder) -> GatewayBuilder,
    ) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            "[gateway]\nstate_dir = {:?}\n\n[listen]\napi = \"127.0.0.1:0\"\n{extra_toml}",
            dir.path().display().to_string()
        );
        let config = Config::from_toml_str(&text, "test.toml").expect("config");
        let store = sluice_store::SqliteStore::open(
            &config.gateway.state_dir,
            sluice_store::Mode::Writer(Default::default()),
        )
        .expect("store");
        // As the launcher composes it: one notifier per [[webhooks]] entry.
        let webhooks = sluice_webhook::WebhookNotifier::all_from_config(&config).expect("webhooks");
        let mut builder = GatewayBuilder::new(config, Arc::new(store) as Arc<dyn Store>)
            // The connection kinds its configs use, as their crates register them.
            .connection_kind(
                sluice_core::config::ConnectionKind::Postgres,
                &["database", "user", "password"],
                |_| Ok(()),
            );
        for w in webhooks {
            builder = builder.approval_notifier(w);
        }
        builder = customize(builder);
        let gateway = Arc::new(builder.build().expect("gateway"));
        let server = ApiServer::new(gateway.clone()).expect("api server");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(server.serve(listener));
        let ca = sluice_core::tls::generated_paths(dir.path()).0;
        Harness {
            _dir: dir,
            gateway,
            addr,
            ca,
            task,
        }
    }

    fn token(&self, subject: &str, groups: &[&str]) -> String {
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        self.gateway
            .tokens()
            .issue(subject, &groups, Duration::from_secs(300))
            .expect("token")
    }

    fn client(&self, token: &str) -> ApiClient {
        ApiClient::new(self.addr, Some(self.ca.clone()), token.to_string()).expect("client")
    }
}

fn problem_of(body: &[u8]) -> Problem {
    serde_json::from_slice(body).expect("problem+json body")
}

#[tokio::test]
async fn healthz_needs_no_token() {
    let h = Harness::start().await;
    let client = h.client("");
    client.health().await.expect("healthz");
    let r = client
        .send(Method::GET, "/healthz", None)
        .await
        .expect("send");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"ok");
    // Ready: not draining, and the audit store takes records.
    let r = client
        .send(Method::GET, "/readyz", None)
        .await
        .expect("send");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"ready");
    let r = client
        .send(Method::POST, "/healthz", None)
        .await
        .expect("send");
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn missing_token_is_401_problem() {
    let h = Harness::start().await;
    let client = h.client("");
    let r = client
        .send(Method::GET, "/api/v1/approvals", None)
        .await
        .expect("send");
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers.get("www-authenticate").map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
    assert_eq!(
        r.headers.get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/problem+json"[..])
    );
    let p = problem_of(&r.body);
    assert_eq!(p.kind, "about:blank");
    assert_eq!(p.status, 401);
    assert_eq!(p.title, "Unauthorized");
    assert!(p.detail.contains("Authorization"), "{}", p.detail);

    match client.list(false).await {
        Err(ApiError::Api {
            status: 401,
            detail,
        }) => assert!(detail.contains("Bearer")),
        other => panic!("expected a 401, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_token_is_401_and_not_echoed() {
    let h = Harness::start().await;
    let bad = "not-a-real-token-0123456789";
    let client = h.client(bad);
    let r = client
        .send(Method::GET, "/api/v1/approvals", None)
        .await
        .expect("send");
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.headers.contains_key("www-authenticate"));
    let text = String::from_utf8_lossy(&r.body);
    assert!(!text.contains(bad), "the token was echoed: {text}");
    let p = problem_of(&r.body);
    assert!(p.detail.contains("refused"), "{}", p.detail);

    // A token of another gateway (another signing key) is refused too.
    let other = Harness::start().await;
    let foreign = other.token("mallory", &["dba"]);
    match h.client(&foreign).approve("x", None).await {
        Err(ApiError::Api { status: 401, .. }) => {}
        other => panic!("expected a 401, got {other:?}"),
    }
}

#[tokio::test]
async fn empty_queue_and_unknown_ids() {
    let h = Harness::start().await;
    let client = h.client(&h.token("bob", &["dba"]));
    assert!(client.list(false).await.expect("list").is_empty());
    assert!(client.list(true).await.expect("list all").is_empty());

    match client.get("0190-nope").await {
        Err(ApiError::Api {
            status: 404,
            detail,
        }) => {
            assert!(detail.contains("0190-nope"), "{detail}")
        }
        other => panic!("expected a 404, got {other:?}"),
    }
    match client.approve("0190-nope", Some("ok".into())).await {
        Err(e @ ApiError::Api { status: 404, .. }) => {
            assert_eq!(e.to_string(), "no approval request 0190-nope")
        }
        other => panic!("expected a 404, got {other:?}"),
    }
    match client.deny("0190-nope", None).await {
        Err(ApiError::Api { status: 404, .. }) => {}
        other => panic!("expected a 404, got {other:?}"),
    }
}

#[tokio::test]
async fn routes_methods_and_bodies() {
    let h = Harness::start().await;
    let client = h.client(&h.token("bob", &["dba"]));

    let r = client
        .send(Method::GET, "/api/v1/nothing", None)
        .await
        .expect("send");
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(problem_of(&r.body).status, 404);

    let r = client
        .send(Method::DELETE, "/api/v1/approvals", None)
        .await
        .expect("send");
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        r.headers.get("allow").map(|v| v.as_bytes()),
        Some(&b"GET"[..])
    );

    let r = client
        .send(Method::GET, "/api/v1/approvals/x/approve", None)
        .await
        .expect("send");
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

    let r = client
        .send(Method::GET, "/api/v1/approvals?all=perhaps", None)
        .await
        .expect("send");
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let r = client
        .send(
            Method::POST,
            "/api/v1/approvals/x/deny",
            Some(b"{not json".to_vec()),
        )
        .await
        .expect("send");
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(problem_of(&r.body).detail.contains("reason"));

    // An oversized body is answered, not reset, while the client still
    // sends it: the server reads it to its end before the 413.
    for size in [70 * 1024, 900 * 1024].repeat(5) {
        let r = client
            .send(
                Method::POST,
                "/api/v1/approvals/x/deny",
                Some(vec![b' '; size]),
            )
            .await
            .expect("send");
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    // An empty body is a decision without a reason.
    let r = client
        .send(Method::POST, "/api/v1/approvals/x/approve", None)
        .await
        .expect("send");
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn stalled_handshake_does_not_block_the_listener() {
    let h = Harness::start().await;
    // A client that connects and never speaks TLS.
    let mut stalled = tokio::net::TcpStream::connect(h.addr)
        .await
        .expect("connect");
    stalled.write_all(b"\x16\x03\x01").await.expect("write");
    let client = h.client("");
    tokio::time::timeout(Duration::from_secs(5), client.health())
        .await
        .expect("healthz answered while another client stalls")
        .expect("healthz");
}

#[tokio::test]
async fn untrusted_ca_is_refused() {
    let h = Harness::start().await;
    let other = Harness::start().await;
    let client = ApiClient::new(h.addr, Some(other.ca.clone()), String::new()).expect("client");
    match client.health().await {
        Err(ApiError::Connect { reason, .. }) => assert!(reason.contains("TLS"), "{reason}"),
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    // The generated certificate also covers localhost.
    let by_name = ApiClient::new(
        format!("localhost:{}", h.addr.port()),
        Some(h.ca.clone()),
        String::new(),
    )
    .expect("client");
    by_name.health().await.expect("healthz via localhost");
}

/// `text = "x"`: a protocol-neutral match key, so that a review rule can
/// open requests without a protocol crate.
struct TextIs;
struct TextMatcher(String);
impl CommandMatcher for TextMatcher {
    fn matches(&self, c: &Command, _: &mut Scratch) -> Result<bool, String> {
        Ok(c.text.trim() == self.0)
    }
}
impl MatchKey for TextIs {
    fn keys(&self) -> &'static [&'static str] {
        &["text"]
    }
    fn compile(&self, v: &toml::Table) -> Result<Box<dyn CommandMatcher>, String> {
        Ok(Box::new(TextMatcher(
            v.get("text")
                .and_then(|t| t.as_str())
                .unwrap_or_default()
                .into(),
        )))
    }
}

/// Receives webhook POSTs as JSON values.
async fn webhook_receiver() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let body = req.into_body().collect().await.expect("body").to_bytes();
                            let _ = tx.send(serde_json::from_slice(&body).expect("json"));
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::new()),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn full_flow_visibility_decisions_and_webhooks() {
    let (hook, mut events) = webhook_receiver().await;
    let h = Harness::start_with(
        &format!(
            r#"
[[connections]]
name = "appdb"
kind = "postgres"
upstream = "127.0.0.1:1"
database = "d"
user = "u"
password = {{ env = "SLUICE_API_TEST_UNUSED" }}
allow_groups = ["agents"]

[[rules]]
name = "reviewed-delete"
match = {{ text = "delete from t" }}
action = "review"
approvers = ["dba"]
mode = "retry"
timeout = "10m"

[[webhooks]]
name = "ops"
url = "http://{hook}/hook"
"#
        ),
        |b| b.match_key(Arc::new(TextIs)),
    )
    .await;

    let agent = h
        .gateway
        .authenticate(&sluice_core::Credentials {
            user: String::new(),
            token: h.token("agent", &["agents"]),
        })
        .await
        .expect("agent identity");
    let session = h
        .gateway
        .open_session(agent, "appdb", Protocol::Postgres, "127.0.0.1:1")
        .await
        .expect("session");
    let delete = || Command {
        kind: CommandKind::SqlSimple,
        text: "delete from t".into(),
        context: vec![],
    };
    let first = session.decide(delete()).await.expect("decision");
    assert!(matches!(first, Decision::Refuse { .. }), "{first:?}");

    let bob = h.client(&h.token("bob", &["dba"]));
    let agent_client = h.client(&h.token("agent", &["agents"]));
    let eve = h.client(&h.token("eve", &["agents", "ops"]));

    let pending = bob.list(false).await.expect("bob lists");
    assert_eq!(pending.len(), 1);
    let id = pending[0].id.clone();
    assert_eq!(pending[0].subject, "agent");
    assert_eq!(pending[0].state, ApprovalState::Pending);
    assert_eq!(agent_client.list(false).await.expect("own").len(), 1);
    assert!(eve.list(true).await.expect("eve lists").is_empty());
    assert!(matches!(
        eve.get(&id).await,
        Err(ApiError::Api { status: 404, .. })
    ));
    assert_eq!(bob.get(&id).await.expect("get").id, id);

    let requested = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("requested webhook in time")
        .expect("event");
    assert_eq!(requested["event"], "approval.requested");
    assert_eq!(requested["approval"]["id"], id.as_str());

    match agent_client.approve(&id, None).await {
        Err(ApiError::Api {
            status: 403,
            detail,
        }) => {
            assert!(detail.contains("own request"), "{detail}")
        }
        other => panic!("self-approval must be 403, got {other:?}"),
    }
    match eve.approve(&id, None).await {
        Err(ApiError::Api {
            status: 403,
            detail,
        }) => {
            assert!(detail.contains("approver group"), "{detail}")
        }
        other => panic!("a non-approver must get 403, got {other:?}"),
    }

    let approved = bob
        .approve(&id, Some("looks fine".into()))
        .await
        .expect("approve");
    assert_eq!(approved.state, ApprovalState::Approved);
    assert_eq!(approved.decided_by.as_deref(), Some("bob"));
    assert_eq!(approved.reason.as_deref(), Some("looks fine"));
    match bob.deny(&id, None).await {
        Err(ApiError::Api {
            status: 409,
            detail,
        }) => {
            assert!(detail.contains("already approved"), "{detail}")
        }
        other => panic!("a second decision must be 409, got {other:?}"),
    }
    assert!(bob.list(false).await.expect("pending").is_empty());
    let all = bob.list(true).await.expect("all");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state, ApprovalState::Approved);

    let decided = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("decided webhook in time")
        .expect("event");
    assert_eq!(decided["event"], "approval.decided");
    assert_eq!(decided["approval"]["state"], "approved");
    assert_eq!(decided["approval"]["decided_by"], "bob");

    // The approved command now runs once.
    let again = session.decide(delete()).await.expect("decision");
    assert!(matches!(again, Decision::Forward { .. }), "{again:?}");
}
