use super::policy::{CommandMatcher, MatchKey, RulesEngine, Scratch};
use super::*;
use crate::audit::AuditEvent;
use crate::config::Config;
use crate::model::{Action, CommandKind, Decision};
use crate::testing::{person, sql_request, MemoryStore};
use tower::ServiceExt;

/// A test match key: `contains = "word"` matches commands whose text has it.
struct Contains;
struct ContainsMatcher(String);
impl CommandMatcher for ContainsMatcher {
    fn matches(&self, c: &Command, _: &mut Scratch) -> Result<bool, String> {
        if c.text.contains("UNPARSEABLE") {
            return Err("cannot parse".into());
        }
        Ok(c.text.contains(&self.0))
    }
}
impl MatchKey for Contains {
    fn keys(&self) -> &'static [&'static str] {
        &["contains"]
    }
    fn compile(&self, v: &toml::Table) -> Result<Box<dyn CommandMatcher>, String> {
        Ok(Box::new(ContainsMatcher(
            v["contains"]
                .as_str()
                .ok_or("expected a string")?
                .to_string(),
        )))
    }
}

fn request(text: &str, groups: &[&str]) -> CommandRequest {
    sql_request(person("agent", groups), text)
}

const RULES: &str = r#"
[[connections]]
name = "appdb"
kind = "postgres"
upstream = "127.0.0.1:1"
database = "d"
user = "u"
password = { env = "X" }
allow_groups = ["agents"]

[[rules]]
name = "no-drop"
groups = ["agents"]
match = { contains = "drop" }
action = "deny"
message = "no drops"

[[rules]]
name = "all-allowed"
action = "allow"
"#;

fn pipeline(store: Arc<dyn Store>) -> audit::AuditService {
    let config = Config::from_toml_str(RULES, "t").unwrap();
    let keys: Vec<Arc<dyn MatchKey>> = vec![Arc::new(Contains)];
    let engine = RulesEngine::compile(&config, &keys).unwrap();
    PipelineBuilder::new().build(Arc::new(engine), store, None)
}

#[tokio::test]
async fn deny_rule_refuses_and_is_audited_before_returning() {
    let store = Arc::new(MemoryStore::default());
    let d = pipeline(store.clone())
        .oneshot(request("drop table x", &["agents"]))
        .await
        .unwrap();
    let Decision::Refuse { denial, .. } = d else {
        panic!("{d:?}")
    };
    assert_eq!(denial.rule.as_deref(), Some("no-drop"));
    assert!(denial.message.contains("no drops"));
    let events = store.events.lock().unwrap();
    assert!(matches!(
        &events[0].1,
        AuditEvent::CommandDecided { verdict, .. } if verdict.action == Action::Deny
    ));
}

#[tokio::test]
async fn rule_scope_by_group() {
    let store = Arc::new(MemoryStore::default());
    let d = pipeline(store)
        .oneshot(request("drop table x", &["dba"]))
        .await
        .unwrap();
    assert!(matches!(d, Decision::Forward { .. }));
}

#[tokio::test]
async fn matcher_error_fails_closed() {
    let store = Arc::new(MemoryStore::default());
    let d = pipeline(store)
        .oneshot(request("UNPARSEABLE", &["agents"]))
        .await
        .unwrap();
    let Decision::Refuse { denial, .. } = d else {
        panic!("{d:?}")
    };
    assert_eq!(denial.rule.as_deref(), Some("sluice:policy-error"));
}

#[tokio::test]
async fn store_failure_refuses_the_command() {
    let store = Arc::new(MemoryStore {
        fail: true,
        ..Default::default()
    });
    let r = pipeline(store)
        .oneshot(request("select 1", &["agents"]))
        .await;
    assert!(r.is_err());
}

/// The pipeline with records bounded at 64 KiB.
fn small_record_pipeline(store: Arc<dyn Store>) -> audit::AuditService {
    let config = Config::from_toml_str(RULES, "t").unwrap();
    let keys: Vec<Arc<dyn MatchKey>> = vec![Arc::new(Contains)];
    let engine = RulesEngine::compile(&config, &keys).unwrap();
    PipelineBuilder::new()
        .record_limit(64 << 10)
        .build(Arc::new(engine), store, None)
}

/// The decision and the text recorded for `text`.
async fn decided(text: &str) -> (Decision, String) {
    let store = Arc::new(MemoryStore::default());
    let d = small_record_pipeline(store.clone())
        .oneshot(request(text, &["agents"]))
        .await
        .unwrap();
    let events = store.events.lock().unwrap();
    let [(_, AuditEvent::CommandDecided { command, .. })] = &events[..] else {
        panic!("{events:?}")
    };
    (d, command.text.clone())
}

#[tokio::test]
async fn a_command_whose_record_would_be_oversized_is_refused_unjudged() {
    // 12,000 control characters: 12 KB of text, 72 KB as JSON. "drop" would
    // have the policy deny it under its own rule; it never sees it.
    let text = format!("drop '{}'", "\u{1}".repeat(12_000));
    let (d, recorded) = decided(&text).await;
    let Decision::Refuse { denial, .. } = d else {
        panic!("{d:?}")
    };
    assert_eq!(
        denial.rule.as_deref(),
        Some(crate::audit::RECORD_LIMIT_RULE),
        "{denial:?}"
    );
    assert!(denial.message.contains("not run"), "{}", denial.message);
    // Abridged, and still naming exactly what was refused.
    assert!(recorded.len() < 4096 + 256, "{}", recorded.len());
    assert!(recorded.starts_with("drop '\u{1}"), "{recorded:?}");
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()));
    assert!(recorded.contains(&digest), "{recorded:?}");
    assert!(
        recorded.contains(&format!("{} bytes", text.len())),
        "{recorded:?}"
    );
}

#[tokio::test]
async fn a_kind_holding_a_huge_name_counts_toward_the_record_and_is_abridged() {
    // A prepared statement's name of control characters, 60 KB as JSON,
    // under the bound alone; with a 6 KB text the record is over it.
    let mut req = request(&format!("select '{}'", "a".repeat(6_000)), &["agents"]);
    let name = "\u{1}".repeat(10_000);
    Arc::make_mut(&mut req.command).kind = CommandKind::SqlExecute {
        statement: name.clone(),
        portal: String::new(),
    };
    let store = Arc::new(MemoryStore::default());
    let d = small_record_pipeline(store.clone())
        .oneshot(req)
        .await
        .unwrap();
    assert!(
        matches!(&d, Decision::Refuse { denial, .. } if denial.rule.as_deref() == Some(crate::audit::RECORD_LIMIT_RULE)),
        "{d:?}"
    );
    let events = store.events.lock().unwrap();
    let [(_, AuditEvent::CommandDecided { command, .. })] = &events[..] else {
        panic!("{events:?}")
    };
    let CommandKind::SqlExecute { statement, .. } = &command.kind else {
        panic!("{command:?}")
    };
    assert!(statement.len() <= 256 + 200, "{}", statement.len());
    let (kept, _) = statement.split_once('…').unwrap();
    assert!(name.starts_with(kept));
    assert!(
        statement.contains(&format!("{} bytes", name.len())),
        "{statement}"
    );
}

#[tokio::test]
async fn the_record_limit_counts_the_record_not_the_text() {
    // The same length in plain text is 12 KB as JSON: judged and recorded
    // whole. So is text that is long but fits (the exact count's path).
    for text in ["select 'a'".repeat(1_200), "select 'a'".repeat(6_500)] {
        let (d, recorded) = decided(&text).await;
        assert!(matches!(d, Decision::Forward { .. }), "{d:?}");
        assert_eq!(recorded, text);
    }
    // Just over the bound in plain text (the escape-free count).
    let (d, _) = decided(&"select 'a'".repeat(6_600)).await;
    assert!(
        matches!(&d, Decision::Refuse { denial, .. } if denial.rule.as_deref() == Some(crate::audit::RECORD_LIMIT_RULE)),
        "{d:?}"
    );
}

#[test]
fn unknown_match_key_is_a_config_error() {
    let config = Config::from_toml_str(RULES, "t").unwrap();
    let err = RulesEngine::compile(&config, &[]).err().unwrap();
    assert_eq!(err.0, "rules.0.match.contains");
    assert!(err.1.contains("unknown match key"));
}

/// A platform team's layer: refuses everything from subject "intern".
#[derive(Clone)]
struct NoInterns<S>(S);
impl<S> Service<CommandRequest> for NoInterns<S>
where
    S: Service<CommandRequest, Response = Verdict, Error = PipelineError>,
    S::Future: Send + 'static,
{
    type Response = Verdict;
    type Error = PipelineError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Verdict, PipelineError>> + Send>>;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PipelineError>> {
        self.0.poll_ready(cx)
    }
    fn call(&mut self, req: CommandRequest) -> Self::Future {
        if req.session.identity.subject == "agent" {
            return Box::pin(async { Ok(Verdict::deny("no-agents-on-fridays", "not today")) });
        }
        Box::pin(self.0.call(req))
    }
}

#[tokio::test]
async fn extra_layers_are_audited() {
    let store = Arc::new(MemoryStore::default());
    let config = Config::from_toml_str(RULES, "t").unwrap();
    let keys: Vec<Arc<dyn MatchKey>> = vec![Arc::new(Contains)];
    let engine = RulesEngine::compile(&config, &keys).unwrap();
    let svc = PipelineBuilder::new()
        .layer(tower::layer::layer_fn(NoInterns))
        .build(Arc::new(engine), store.clone(), None);
    let d = svc.oneshot(request("select 1", &["agents"])).await.unwrap();
    assert!(
        matches!(d, Decision::Refuse { ref denial, .. } if denial.rule.as_deref() == Some("no-agents-on-fridays"))
    );
    assert_eq!(store.events.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn connection_default_action_applies_when_no_rule_matches() {
    let text = RULES
        .replace(
            "allow_groups = [\"agents\"]",
            "allow_groups = [\"agents\"]\ndefault_action = \"deny\"",
        )
        .replace(
            "[[rules]]\nname = \"all-allowed\"\naction = \"allow\"\n",
            "",
        );
    let config = Config::from_toml_str(&text, "t").unwrap();
    let keys: Vec<Arc<dyn MatchKey>> = vec![Arc::new(Contains)];
    let engine = RulesEngine::compile(&config, &keys).unwrap();
    let store = Arc::new(MemoryStore::default());
    let svc = PipelineBuilder::new().build(Arc::new(engine), store, None);
    let d = svc.oneshot(request("select 1", &["agents"])).await.unwrap();
    let Decision::Refuse { denial, .. } = d else {
        panic!("{d:?}")
    };
    assert_eq!(denial.rule, None);
    assert!(denial.message.contains("default policy"), "{denial:?}");
}

/// `alice` from one identity provider is not `alice` from another: a bare
/// subject is read strictly (gateway-issued in an allow rule, any issuer in
/// a deny rule); a qualified one names its issuer.
#[test]
fn subjects_in_rules_are_namespaced_by_issuer() {
    use crate::pipeline::policy::PolicyEngine;
    let config = Config::from_toml_str(
        r#"
[[connections]]
name = "appdb"
kind = "postgres"
upstream = "127.0.0.1:1"
database = "d"
user = "u"
password = { env = "X" }
allow_groups = ["agents"]
default_action = "deny"

[[rules]]
name = "alice-may"
subjects = ["alice"]
action = "allow"

[[rules]]
name = "idp-bob-may"
subjects = ["bob (https://idp.example.com/)"]
action = "allow"

[[rules]]
name = "no-mallory"
subjects = ["mallory"]
match = { contains = "drop" }
action = "deny"

[[rules]]
name = "mallory-may"
subjects = ["mallory (https://other.example.com)"]
action = "allow"
"#,
        "t",
    )
    .unwrap();
    let keys: Vec<Arc<dyn MatchKey>> = vec![Arc::new(Contains)];
    let engine = RulesEngine::compile(&config, &keys).unwrap();
    let verdict = |subject: &str, issuer: &str, text: &str| {
        let mut who = person(subject, &["agents"]);
        who.issuer = issuer.into();
        engine.evaluate(&sql_request(who, text)).unwrap().action
    };
    assert_eq!(verdict("alice", "sluice", "select 1"), Action::Allow);
    assert_eq!(
        verdict("alice", "https://evil.example.com", "select 1"),
        Action::Deny
    );
    assert_eq!(
        verdict("bob", "https://idp.example.com", "select 1"),
        Action::Allow
    );
    assert_eq!(verdict("bob", "sluice", "select 1"), Action::Deny);
    assert_eq!(
        verdict("bob", "https://other.example.com", "select 1"),
        Action::Deny
    );
    // A bare subject in a deny rule reaches that subject at every issuer.
    assert_eq!(
        verdict("mallory", "https://other.example.com", "select 1"),
        Action::Allow
    );
    assert_eq!(
        verdict("mallory", "https://other.example.com", "drop t"),
        Action::Deny
    );
}
