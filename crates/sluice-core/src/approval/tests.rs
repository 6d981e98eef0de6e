use super::*;
use crate::model::{Command, CommandKind, Decision};
use crate::pipeline::policy::{CommandMatcher, MatchKey, RulesEngine, Scratch};
use crate::pipeline::{audit::AuditService, CommandRequest, PipelineBuilder};
use crate::testing::{person, sql_request, MemoryStore};
use tower::ServiceExt;

/// `text = "x"` matches commands whose words are x's words.
struct TextIs;
struct TextMatcher(String);
impl CommandMatcher for TextMatcher {
    fn matches(&self, c: &Command, _: &mut Scratch) -> Result<bool, String> {
        let words = |s: &str| {
            s.trim_end_matches([';', ' '])
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        Ok(words(&c.text) == words(&self.0))
    }
}
impl MatchKey for TextIs {
    fn keys(&self) -> &'static [&'static str] {
        &["text"]
    }
    fn compile(&self, v: &toml::Table) -> Result<Box<dyn CommandMatcher>, String> {
        Ok(Box::new(TextMatcher(
            v["text"].as_str().unwrap_or_default().into(),
        )))
    }
}

fn config(mode: &str, timeout: &str) -> Config {
    Config::from_toml_str(
        &format!(
            r#"
[[connections]]
name = "appdb"
kind = "postgres"
upstream = "127.0.0.1:1"
database = "d"
user = "u"
password = {{ env = "X" }}
allow_groups = ["agents"]

[[rules]]
name = "reviewed-delete"
match = {{ text = "delete from t" }}
action = "review"
approvers = ["dba"]
mode = "{mode}"
timeout = "{timeout}"
message = "deletes are reviewed"
"#
        ),
        "t",
    )
    .unwrap()
}

struct Rig {
    pipeline: AuditService,
    approvals: Arc<ApprovalService>,
    store: Arc<MemoryStore>,
}

fn rig(mode: &str, timeout: &str, store: MemoryStore) -> Rig {
    rig_with_retention(mode, timeout, store, FINISHED_RETENTION)
}

fn rig_with_retention(mode: &str, timeout: &str, store: MemoryStore, retention: Duration) -> Rig {
    let config = config(mode, timeout);
    let store = Arc::new(store);
    let keys: Vec<Arc<dyn MatchKey>> = vec![Arc::new(TextIs)];
    let engine = RulesEngine::compile(&config, &keys).unwrap();
    let approvals = Arc::new(
        ApprovalService::new(
            store.clone(),
            ReviewSettings::from_config(&config).unwrap(),
            vec![],
        )
        .with_finished_retention(retention),
    );
    Rig {
        pipeline: PipelineBuilder::new().build(
            Arc::new(engine),
            store.clone(),
            Some(approvals.clone()),
        ),
        approvals,
        store,
    }
}

fn request(text: &str, notices: Option<crate::sync::QueueSender<String>>) -> CommandRequest {
    CommandRequest {
        notices,
        ..sql_request(person("agent", &["agents", "dba"]), text)
    }
}

async fn pending_id(approvals: &ApprovalService) -> String {
    for _ in 0..200 {
        if let Some(r) = approvals.list(true).first() {
            return r.id.clone();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no pending request")
}

#[tokio::test]
async fn hold_then_approve_runs_on_the_same_call() {
    let rig = rig("hold", "10m", MemoryStore::default());
    let (tx, mut notices) = crate::sync::queue();
    let held = tokio::spawn(
        rig.pipeline
            .clone()
            .oneshot(request("delete from t", Some(tx))),
    );
    let id = pending_id(&rig.approvals).await;
    let notice = notices.recv().await.unwrap();
    assert!(
        notice.contains(&id) && notice.contains("sluice approvals approve"),
        "{notice}"
    );
    // Nobody approves their own request, even in the approver group.
    let own = rig
        .approvals
        .decide(&id, &person("agent", &["dba"]), true, None)
        .await;
    assert!(matches!(own, Err(ApprovalError::SelfApproval(_))));
    let outsider = rig
        .approvals
        .decide(&id, &person("bob", &["devs"]), true, None)
        .await;
    assert!(matches!(outsider, Err(ApprovalError::NotAnApprover { .. })));
    // A token an approver exchanged for agents (narrowed to connections)
    // keeps the groups but not the approver role.
    let narrowed = Identity {
        connections: Some(vec!["appdb".into()]),
        ..person("dana", &["dba"])
    };
    let r = rig.approvals.decide(&id, &narrowed, true, None).await;
    assert!(matches!(r, Err(ApprovalError::NarrowedToken)), "{r:?}");
    let r = rig
        .approvals
        .decide(&id, &person("dana", &["dba"]), true, None)
        .await
        .unwrap();
    assert_eq!(r.state, ApprovalState::Approved);
    assert!(matches!(
        held.await.unwrap().unwrap(),
        Decision::Forward { .. }
    ));
    let events = rig.store.events.lock().unwrap();
    assert!(events
        .iter()
        .any(|(_, e)| matches!(e, AuditEvent::ApprovalRequested { .. })));
    assert!(events
        .iter()
        .any(|(_, e)| matches!(e, AuditEvent::ApprovalDecided { by, .. } if by == "dana")));
}

#[tokio::test]
async fn hold_then_deny_refuses_with_the_reason() {
    let rig = rig("hold", "10m", MemoryStore::default());
    let held = tokio::spawn(rig.pipeline.clone().oneshot(request("delete from t", None)));
    let id = pending_id(&rig.approvals).await;
    rig.approvals
        .decide(
            &id,
            &person("dana", &["dba"]),
            false,
            Some("not during business hours".into()),
        )
        .await
        .unwrap();
    let Decision::Refuse { denial, .. } = held.await.unwrap().unwrap() else {
        panic!("not refused")
    };
    assert!(
        denial
            .message
            .contains("denied by dana: not during business hours"),
        "{denial:?}"
    );
}

#[tokio::test]
async fn finished_requests_are_forgotten_after_the_retention() {
    let rig = rig_with_retention("hold", "10m", MemoryStore::default(), Duration::ZERO);
    let denied = tokio::spawn(rig.pipeline.clone().oneshot(request("delete from t", None)));
    let id = pending_id(&rig.approvals).await;
    rig.approvals
        .decide(&id, &person("dana", &["dba"]), false, None)
        .await
        .unwrap();
    denied.await.unwrap().unwrap();
    // A pending request stays however old the retention makes finished ones.
    let _waiting = tokio::spawn(rig.pipeline.clone().oneshot(request("delete from t", None)));
    let pending = pending_id(&rig.approvals).await;
    let listed: Vec<String> = rig
        .approvals
        .list(false)
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed, vec![pending]);
    assert!(rig.approvals.get(&id).is_none());
}

#[tokio::test]
async fn hold_times_out_as_a_refusal() {
    let rig = rig("hold", "1s", MemoryStore::default());
    let d = rig
        .pipeline
        .clone()
        .oneshot(request("delete from t", None))
        .await
        .unwrap();
    let Decision::Refuse { denial, .. } = d else {
        panic!("not refused")
    };
    assert!(denial.message.contains("not decided within"), "{denial:?}");
    assert_eq!(rig.approvals.list(false)[0].state, ApprovalState::Expired);
}

#[tokio::test]
async fn retry_mode_runs_the_approved_command_once() {
    let rig = rig("retry", "10m", MemoryStore::default());
    let first = rig
        .pipeline
        .clone()
        .oneshot(request("delete from t", None))
        .await
        .unwrap();
    let Decision::Refuse { denial, .. } = first else {
        panic!("not refused")
    };
    let id = rig.approvals.list(true)[0].id.clone();
    assert!(denial.message.contains(&id), "{denial:?}");
    // Asking again before approval names the same request.
    let again = rig
        .pipeline
        .clone()
        .oneshot(request("delete from t", None))
        .await
        .unwrap();
    assert!(matches!(again, Decision::Refuse { ref denial, .. } if denial.message.contains(&id)));
    assert_eq!(rig.approvals.list(false).len(), 1);
    rig.approvals
        .decide(&id, &person("dana", &["dba"]), true, None)
        .await
        .unwrap();
    // Spacing at the ends and a trailing `;` are not part of the command
    // (inner whitespace is: see fingerprints_do_not_normalise_inner_whitespace);
    // it runs once.
    let run = rig
        .pipeline
        .clone()
        .oneshot(request("  delete from t ;", None))
        .await
        .unwrap();
    assert!(matches!(run, Decision::Forward { .. }), "{run:?}");
    let after = rig
        .pipeline
        .clone()
        .oneshot(request("delete from t", None))
        .await
        .unwrap();
    assert!(matches!(after, Decision::Refuse { .. }));
}

#[tokio::test]
async fn store_failure_means_deny() {
    let rig = rig(
        "hold",
        "10m",
        MemoryStore {
            fail: true,
            ..Default::default()
        },
    );
    // The audit layer itself refuses once the store fails; either way nothing runs.
    let r = rig
        .pipeline
        .clone()
        .oneshot(request("delete from t", None))
        .await;
    assert!(!matches!(r, Ok(Decision::Forward { .. })));
    assert!(rig.approvals.list(false).is_empty());
}

#[test]
fn review_rules_need_approvers_and_a_known_mode() {
    let mut c = config("hold", "10m");
    c.rules[0].approvers.clear();
    assert_eq!(
        ReviewSettings::from_config(&c).unwrap_err().0,
        "rules.0.approvers"
    );
    let mut c = config("sometimes", "10m");
    c.rules[0].mode = Some("sometimes".into());
    assert_eq!(
        ReviewSettings::from_config(&c).unwrap_err().0,
        "rules.0.mode"
    );
    let c = config("hold", "30d");
    assert_eq!(
        ReviewSettings::from_config(&c).unwrap_err().0,
        "rules.0.timeout"
    );
}

fn with_context(req: CommandRequest, context: &[&str]) -> CommandRequest {
    let mut command = (*req.command).clone();
    command.context = context.iter().map(|c| c.to_string()).collect();
    CommandRequest {
        command: Arc::new(command),
        ..req
    }
}

fn from_issuer(issuer: &str, subject: &str, groups: &[&str]) -> Identity {
    Identity {
        issuer: issuer.into(),
        ..person(subject, groups)
    }
}

#[tokio::test]
async fn a_retry_grant_is_for_the_exact_request_and_the_same_issuer() {
    let rig = rig("retry", "10m", MemoryStore::default());
    let pod_a = ["kube: GET /api/v1/namespaces/default/pods/a/exec?command=ls"];
    let pod_b = ["kube: GET /api/v1/namespaces/prod/pods/b/exec?command=ls"];
    let send = |req: CommandRequest| rig.pipeline.clone().oneshot(req);
    let first = send(with_context(request("delete from t", None), &pod_a))
        .await
        .unwrap();
    assert!(matches!(first, Decision::Refuse { .. }));
    let id = rig.approvals.list(true)[0].id.clone();
    // alice of another issuer is not the requester: she may decide.
    rig.approvals
        .decide(
            &id,
            &from_issuer("https://idp.example", "agent", &["dba"]),
            true,
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        rig.approvals.get(&id).unwrap().decided_by.as_deref(),
        Some("agent (https://idp.example)")
    );
    // The same text to another target, or by the same subject name from
    // another issuer, is not what was approved.
    let other_pod = send(with_context(request("delete from t", None), &pod_b))
        .await
        .unwrap();
    assert!(
        matches!(other_pod, Decision::Refuse { .. }),
        "{other_pod:?}"
    );
    let mut other_issuer = with_context(request("delete from t", None), &pod_a);
    let mut session = (*other_issuer.session).clone();
    session.identity = from_issuer("https://idp.example", "agent", &["agents"]);
    other_issuer.session = Arc::new(session);
    assert!(matches!(
        send(other_issuer).await.unwrap(),
        Decision::Refuse { .. }
    ));
    // The approved request itself runs once.
    let run = send(with_context(request("delete from t", None), &pod_a))
        .await
        .unwrap();
    assert!(matches!(run, Decision::Forward { .. }), "{run:?}");

    // A request that could not be bound exactly is never granted a re-send.
    let unbound = send(with_context(
        request("delete from t", None),
        &["unbound: body over 1 MiB"],
    ))
    .await
    .unwrap();
    let Decision::Refuse { denial, .. } = unbound else {
        panic!("not refused")
    };
    assert!(
        denial.message.contains("cannot be approved for a re-send"),
        "{denial:?}"
    );
}

/// A retry grant is for the text as sent: moving a `--` comment's end (a
/// newline) or changing spaces inside a literal is another statement.
#[test]
fn fingerprints_do_not_normalise_inner_whitespace() {
    let who = person("agent", &["agents"]);
    let fp = |text: &str| fingerprint(&who, "appdb", text, &[]);
    let approved = fp("delete from t where id = 5 -- or true");
    assert_ne!(approved, fp("delete from t where id = 5 --\nor true"));
    assert_ne!(fp("select 'a  b'"), fp("select 'a b'"));
    // The ends are not part of the statement.
    assert_eq!(approved, fp("  delete from t where id = 5 -- or true;\n"));
}

/// What the approver decides on is on record before anyone decides: the
/// command with its kind and context, in the request and in the audit.
#[tokio::test]
async fn a_held_command_is_recorded_whole_before_anyone_decides() {
    let rig = rig("hold", "10m", MemoryStore::default());
    let req = with_context(
        request("delete from t", None),
        &["body: {\"role\":\"owner\"}"],
    );
    let held = tokio::spawn(rig.pipeline.clone().oneshot(req));
    let id = pending_id(&rig.approvals).await;
    let listed = rig.approvals.get(&id).unwrap();
    assert_eq!(
        listed.context,
        vec!["body: {\"role\":\"owner\"}".to_string()]
    );
    assert_eq!(listed.kind, Some(CommandKind::SqlSimple));
    let recorded = rig
        .store
        .events
        .lock()
        .unwrap()
        .iter()
        .find_map(|(_, e)| match e {
            AuditEvent::ApprovalRequested { command, .. } => command.clone(),
            _ => None,
        });
    let recorded = recorded.expect("the held command is in the audit");
    assert_eq!(recorded.text, "delete from t");
    assert_eq!(recorded.context, listed.context);
    held.abort();
}

/// A session ended while its command waits (token revoked, killed) takes
/// the command with it: a later approval runs nothing.
#[tokio::test]
async fn a_session_that_ends_withdraws_its_held_commands() {
    let rig = rig("hold", "10m", MemoryStore::default());
    let held = tokio::spawn(rig.pipeline.clone().oneshot(request("delete from t", None)));
    let id = pending_id(&rig.approvals).await;
    rig.approvals
        .withdraw_session("s1", "the token was revoked");
    match held.await.unwrap().unwrap() {
        Decision::Refuse { denial, .. } => {
            assert!(denial.message.contains("withdrawn"), "{}", denial.message);
            assert!(denial.message.contains("revoked"), "{}", denial.message);
        }
        other => panic!("{other:?}"),
    }
    let late = rig
        .approvals
        .decide(&id, &person("dana", &["dba"]), true, None)
        .await;
    assert!(
        matches!(late, Err(ApprovalError::NotPending { .. })),
        "{late:?}"
    );
}

/// The wait ends when the session's token expires, and the command is refused.
#[tokio::test]
async fn a_token_that_expires_while_held_ends_the_wait() {
    let rig = rig("hold", "10m", MemoryStore::default());
    let mut req = request("delete from t", None);
    let mut session = (*req.session).clone();
    session.identity.expires_at = std::time::SystemTime::now() + Duration::from_millis(300);
    req.session = Arc::new(session);
    let started = std::time::Instant::now();
    let decision = tokio::time::timeout(Duration::from_secs(5), rig.pipeline.clone().oneshot(req))
        .await
        .expect("the wait outlived the token")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    match decision {
        Decision::Refuse { denial, .. } => {
            assert!(
                denial.message.contains("token expired"),
                "{}",
                denial.message
            )
        }
        other => panic!("{other:?}"),
    }
}

/// Two approvers at once, or a decision racing the request's expiry: one
/// outcome is recorded, and it is the one that takes effect.
#[tokio::test]
async fn concurrent_decisions_record_one_outcome() {
    let rig = slow_rig("1s");
    let held = tokio::spawn(rig.pipeline.clone().oneshot(request("delete from t", None)));
    let id = pending_id(&rig.approvals).await;
    // The approval is being recorded when the request's second runs out.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (dana, erin) = (person("dana", &["dba"]), person("erin", &["dba"]));
    let (a, b) = tokio::join!(
        rig.approvals.decide(&id, &dana, true, None),
        rig.approvals.decide(&id, &erin, false, None),
    );
    assert!(a.is_ok(), "{a:?}");
    assert!(matches!(b, Err(ApprovalError::BeingDecided(_))), "{b:?}");
    assert!(matches!(
        held.await.unwrap().unwrap(),
        Decision::Forward { .. }
    ));
    let outcomes: Vec<_> = rig
        .store
        .events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(_, e)| match e {
            AuditEvent::ApprovalDecided { state, .. } => Some(*state),
            _ => None,
        })
        .collect();
    assert_eq!(outcomes, vec![ApprovalState::Approved], "{outcomes:?}");
}

/// A session that ends while a decision is being recorded: the decision is
/// recorded, and the command is withdrawn all the same.
#[tokio::test]
async fn a_session_ending_during_a_decision_still_withdraws_the_command() {
    let rig = slow_rig("10m");
    let held = tokio::spawn(rig.pipeline.clone().oneshot(request("delete from t", None)));
    let id = pending_id(&rig.approvals).await;
    let approvals = rig.approvals.clone();
    let (id2, dana) = (id.clone(), person("dana", &["dba"]));
    let deciding = tokio::spawn(async move { approvals.decide(&id2, &dana, true, None).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    rig.approvals
        .withdraw_session("s1", "the token was revoked");
    assert!(deciding.await.unwrap().is_ok());
    match held.await.unwrap().unwrap() {
        Decision::Refuse { denial, .. } => {
            assert!(denial.message.contains("withdrawn"), "{}", denial.message)
        }
        other => panic!("{other:?}"),
    }
}

/// A decision abandoned while it is being recorded (the approver's
/// connection closed) releases its claim: another approver can decide.
#[tokio::test]
async fn an_abandoned_decision_releases_the_request() {
    let rig = slow_rig("10m");
    let held = tokio::spawn(rig.pipeline.clone().oneshot(request("delete from t", None)));
    let id = pending_id(&rig.approvals).await;
    let dana = person("dana", &["dba"]);
    let abandoned = tokio::time::timeout(
        Duration::from_millis(50),
        rig.approvals.decide(&id, &dana, true, None),
    )
    .await;
    assert!(abandoned.is_err(), "the decision finished early");
    let erin = person("erin", &["dba"]);
    let r = rig.approvals.decide(&id, &erin, false, None).await;
    assert!(r.is_ok(), "{r:?}");
    assert!(matches!(
        held.await.unwrap().unwrap(),
        Decision::Refuse { .. }
    ));
}

/// A hold rig whose store takes 300 ms per durable record.
fn slow_rig(timeout: &str) -> Rig {
    let slow = MemoryStore {
        slow: Some(Duration::from_millis(300)),
        ..Default::default()
    };
    rig("hold", timeout, slow)
}
