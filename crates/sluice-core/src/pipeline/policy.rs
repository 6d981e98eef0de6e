//! The policy stage and its extension point.
//!
//! Rules (`[[rules]]`) are scoped by connection, group and subject in core;
//! what a rule's `match` table means is contributed by protocols through
//! [`MatchKey`] implementations, so SQL, shell, HTTP and Kubernetes keys plug
//! into one engine instead of special cases.

use super::{CommandRequest, PipelineError};
use crate::config::{Config, RuleConfig};
use crate::model::{Action, Command, CommandKind, Verdict};
use crate::sync::RwLockExt;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// Decides a verdict for a command. Implementations must be fast and must
/// fail closed: an `Err` denies the command.
pub trait PolicyEngine: Send + Sync + 'static {
    fn evaluate(&self, req: &CommandRequest) -> Result<Verdict, PipelineError>;
}

/// A policy engine that a configuration reload can replace while sessions
/// run: every command is judged by the engine current when it arrives.
pub struct ReloadableEngine(std::sync::RwLock<Arc<dyn PolicyEngine>>);

impl ReloadableEngine {
    pub fn new(engine: Arc<dyn PolicyEngine>) -> Self {
        ReloadableEngine(std::sync::RwLock::new(engine))
    }

    pub fn replace(&self, engine: Arc<dyn PolicyEngine>) {
        *self.0.write_locked() = engine;
    }
}

impl PolicyEngine for ReloadableEngine {
    fn evaluate(&self, req: &CommandRequest) -> Result<Verdict, PipelineError> {
        let engine = self.0.read_locked().clone();
        engine.evaluate(req)
    }
}

/// A compiled matcher for one rule's match keys.
pub trait CommandMatcher: Send + Sync {
    /// Whether the command matches. An `Err` (e.g. unparseable input) denies.
    /// `scratch` lives for one command's evaluation across all rules, so work
    /// such as parsing is done once per command, not once per rule.
    fn matches(&self, command: &Command, scratch: &mut Scratch) -> Result<bool, String>;

    /// For commands made of parts that are judged one by one (the programs
    /// a shell line runs): whether each part matches. `None`, the default,
    /// means the matcher judges the command as a whole. Each part then gets
    /// its own verdict (rules matching it, else the connection's default)
    /// and the command takes the strictest, so an allow rule for `ls` does
    /// not carry `ls; rm -rf /` through a default of deny.
    fn part_matches(
        &self,
        _command: &Command,
        _scratch: &mut Scratch,
    ) -> Result<Option<Vec<bool>>, String> {
        Ok(None)
    }

    /// Why part `part` matched, when the command's text does not show it
    /// (a program that runs others the matcher cannot see): appended to
    /// the message of the rule that decided, so the caller can act on it.
    fn part_note(
        &self,
        _command: &Command,
        _scratch: &mut Scratch,
        _part: usize,
    ) -> Option<String> {
        None
    }
}

/// How one rule matched a command.
enum RuleMatch {
    No,
    Whole,
    Parts(Vec<bool>),
}

/// Per-command memo shared by every matcher during one evaluation, keyed by type.
#[derive(Default)]
pub struct Scratch(HashMap<std::any::TypeId, Box<dyn std::any::Any + Send>>);

impl Scratch {
    /// Returns the value of type `T`, computing it on first use.
    pub fn get_or_insert_with<T: Send + 'static>(&mut self, f: impl FnOnce() -> T) -> &mut T {
        let slot = self
            .0
            .entry(std::any::TypeId::of::<T>())
            .or_insert_with(|| Box::new(f()));
        match slot.downcast_mut::<T>() {
            Some(v) => v,
            // The map is keyed by T's TypeId, so the value is a T.
            None => unreachable!("scratch slot holds another type"),
        }
    }
}

/// Match keys a protocol contributes (`sql`, `tables`, `command`, `http`, …).
/// The keys one implementation claims are compiled together, so it can
/// combine them per statement (e.g. "a write *to this table*").
pub trait MatchKey: Send + Sync {
    fn keys(&self) -> &'static [&'static str];
    /// Compiles a rule's values for this implementation's keys (only those the
    /// rule sets); the error is shown by `config check` under the first key.
    fn compile(&self, values: &toml::Table) -> Result<Box<dyn CommandMatcher>, String>;

    /// Compiles knowing the rule's action. A matcher for an `allow` rule
    /// should match only commands that stay entirely within the rule (a read
    /// that also writes is not "a read"), while `deny`/`review` rules match
    /// anything that touches what they name. Defaults to [`MatchKey::compile`].
    fn compile_for(
        &self,
        values: &toml::Table,
        action: Action,
    ) -> Result<Box<dyn CommandMatcher>, String> {
        let _ = action;
        self.compile(values)
    }
}

/// A match key's value as a list of strings: one string or an array of them,
/// never empty (an empty list would silently match nothing). `key` names the
/// key in errors, as `config check` shows them.
pub fn string_list(key: &str, value: &toml::Value) -> Result<Vec<String>, String> {
    let list = match value {
        toml::Value::String(s) => vec![s.clone()],
        toml::Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| format!("{key}: expected a list of strings"))?,
        _ => return Err(format!("{key}: expected a string or a list of strings")),
    };
    if list.is_empty() {
        return Err(format!(
            "{key}: an empty list matches nothing; remove the key instead"
        ));
    }
    Ok(list)
}

/// A `subjects` entry: `alice`, or `alice (https://idp.example.com)` for the
/// subject `alice` of that issuer (the form audit records and approvals
/// show). `alice` from one identity provider is not `alice` from another: a
/// bare entry means a gateway-issued identity in an allow rule, and the
/// subject at any issuer in a deny or review rule (the stricter reading).
#[derive(Debug, Clone)]
struct SubjectPattern {
    subject: String,
    issuer: Option<String>,
}

impl SubjectPattern {
    fn parse(entry: &str) -> SubjectPattern {
        let qualified = entry
            .strip_suffix(')')
            .and_then(|rest| rest.rsplit_once(" ("))
            .filter(|(subject, issuer)| !subject.is_empty() && !issuer.is_empty());
        match qualified {
            Some((subject, issuer)) => SubjectPattern {
                subject: subject.to_string(),
                issuer: Some(crate::auth::normalize_issuer(issuer).to_string()),
            },
            None => SubjectPattern {
                subject: entry.to_string(),
                issuer: None,
            },
        }
    }

    fn matches(&self, identity: &crate::model::Identity, action: Action) -> bool {
        if self.subject != identity.subject {
            return false;
        }
        match &self.issuer {
            Some(issuer) => issuer == crate::auth::normalize_issuer(&identity.issuer),
            None => action != Action::Allow || identity.issuer == crate::token::GATEWAY_ISSUER,
        }
    }
}

struct CompiledRule {
    name: String,
    connections: Option<Vec<String>>,
    groups: Option<Vec<String>>,
    subjects: Option<Vec<SubjectPattern>>,
    matchers: Vec<Box<dyn CommandMatcher>>,
    action: Action,
    message: Option<String>,
}

/// The rules engine: most restrictive verdict wins (deny > review > allow); a
/// connection's `default_action` applies when no rule matches.
pub struct RulesEngine {
    rules: Vec<CompiledRule>,
    defaults: HashMap<String, Action>,
}

impl RulesEngine {
    /// Compiles the config's rules with the match keys this build knows.
    /// Errors name the rule index and key, for `config check`.
    pub fn compile(config: &Config, keys: &[Arc<dyn MatchKey>]) -> Result<Self, (String, String)> {
        let mut rules = Vec::new();
        for (i, r) in config.rules.iter().enumerate() {
            rules.push(compile_rule(i, r, keys)?);
        }
        let defaults = config
            .connections
            .iter()
            .filter_map(|c| c.default_action.map(|a| (c.name.clone(), a)))
            .collect();
        Ok(RulesEngine { rules, defaults })
    }
}

fn compile_rule(
    i: usize,
    r: &RuleConfig,
    keys: &[Arc<dyn MatchKey>],
) -> Result<CompiledRule, (String, String)> {
    let mut matchers = Vec::new();
    let mut grouped: Vec<(usize, toml::Table)> = Vec::new();
    for (name, value) in &r.match_ {
        let owner = keys
            .iter()
            .position(|k| k.keys().contains(&name.as_str()))
            .ok_or_else(|| {
                let known: Vec<_> = keys.iter().flat_map(|k| k.keys().iter().copied()).collect();
                (
                    format!("rules.{i}.match.{name}"),
                    format!(
                        "unknown match key {name:?} (this build knows: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                )
            })?;
        match grouped.iter_mut().find(|(o, _)| *o == owner) {
            Some((_, table)) => {
                table.insert(name.clone(), value.clone());
            }
            None => {
                let mut table = toml::Table::new();
                table.insert(name.clone(), value.clone());
                grouped.push((owner, table));
            }
        }
    }
    for (owner, table) in grouped {
        let first = table.keys().next().cloned().unwrap_or_default();
        matchers.push(
            keys[owner]
                .compile_for(&table, r.action)
                .map_err(|e| (format!("rules.{i}.match.{first}"), e))?,
        );
    }
    Ok(CompiledRule {
        name: r.name.clone(),
        connections: r.connections.clone(),
        groups: r.groups.clone(),
        subjects: r
            .subjects
            .as_ref()
            .map(|list| list.iter().map(|e| SubjectPattern::parse(e)).collect()),
        matchers,
        action: r.action,
        message: r.message.clone(),
    })
}

impl PolicyEngine for RulesEngine {
    fn evaluate(&self, req: &CommandRequest) -> Result<Verdict, PipelineError> {
        let s = &req.session;
        let mut scratch = Scratch::default();
        let mut matched: Vec<(&CompiledRule, RuleMatch)> = Vec::new();
        let mut parts: Option<usize> = None;
        for rule in &self.rules {
            if let Some(c) = &rule.connections {
                if !c.contains(&s.connection) {
                    continue;
                }
            }
            if let Some(g) = &rule.groups {
                if !s.identity.in_any_group(g) {
                    continue;
                }
            }
            if let Some(subj) = &rule.subjects {
                if !subj.iter().any(|p| p.matches(&s.identity, rule.action)) {
                    continue;
                }
            }
            // A matcher that cannot decide must fail closed.
            let failed = |reason: String| PipelineError {
                stage: "policy",
                reason: format!("rule {:?}: {reason}", rule.name),
            };
            let mut m = RuleMatch::Whole;
            for matcher in &rule.matchers {
                match matcher
                    .part_matches(&req.command, &mut scratch)
                    .map_err(failed)?
                {
                    Some(p) => {
                        if *parts.get_or_insert(p.len()) != p.len() {
                            return Err(failed(
                                "match keys disagree on the command's parts".into(),
                            ));
                        }
                        m = match m {
                            RuleMatch::Parts(prev) => RuleMatch::Parts(
                                prev.iter().zip(&p).map(|(a, b)| *a && *b).collect(),
                            ),
                            _ => RuleMatch::Parts(p),
                        };
                    }
                    None => {
                        if !matcher
                            .matches(&req.command, &mut scratch)
                            .map_err(failed)?
                        {
                            m = RuleMatch::No;
                            break;
                        }
                    }
                }
            }
            if !matches!(m, RuleMatch::No) {
                matched.push((rule, m));
            }
        }
        let default = if matches!(req.command.kind, CommandKind::Forward { .. }) {
            // Forwarding opens paths the command policy never sees: only a
            // rule that matches it (e.g. `ssh = ["port-forward"]`) allows it.
            Verdict {
                action: Action::Deny,
                rule: Some("sluice:forwarding".into()),
                message: Some(
                    "forwarding (ssh -L, -D, -R, -A, -X) is denied unless a rule allows it".into(),
                ),
            }
        } else {
            Verdict {
                action: self
                    .defaults
                    .get(&s.connection)
                    .copied()
                    .unwrap_or(Action::Allow),
                rule: None,
                message: None,
            }
        };
        let verdict_of = |rule: &CompiledRule| Verdict {
            action: rule.action,
            rule: Some(rule.name.clone()),
            message: rule.message.clone(),
        };
        // The strictest of the rules that apply to one part (or to the whole).
        let best = |part: Option<usize>| -> Option<&CompiledRule> {
            let mut best: Option<&CompiledRule> = None;
            for (rule, m) in &matched {
                let applies = match (m, part) {
                    (RuleMatch::Whole, _) => true,
                    (RuleMatch::Parts(p), Some(i)) => p.get(i).copied().unwrap_or(false),
                    _ => false,
                };
                if applies && best.is_none_or(|b| rule.action > b.action) {
                    best = Some(rule);
                }
            }
            best
        };
        match parts {
            Some(n) if n > 0 => {
                let mut overall: Option<(Verdict, Option<(&CompiledRule, usize)>)> = None;
                for i in 0..n {
                    let (v, by) = match best(Some(i)) {
                        Some(rule) => (verdict_of(rule), Some((rule, i))),
                        None => (default.clone(), None),
                    };
                    if overall.as_ref().is_none_or(|(o, _)| v.action > o.action) {
                        overall = Some((v, by));
                    }
                }
                let Some((mut v, by)) = overall else {
                    return Ok(default);
                };
                // Why the deciding rule applies to that part, when the
                // line does not show it.
                if let Some((rule, i)) = by.filter(|_| v.action != Action::Allow) {
                    let note = rule
                        .matchers
                        .iter()
                        .find_map(|m| m.part_note(&req.command, &mut scratch, i));
                    if let Some(note) = note {
                        v.message = Some(match v.message {
                            Some(m) => format!("{m} (Why rule {:?} applies: {note})", rule.name),
                            None => format!("(Why rule {:?} applies: {note})", rule.name),
                        });
                    }
                }
                Ok(v)
            }
            _ => Ok(best(None).map(verdict_of).unwrap_or(default)),
        }
    }
}

/// Runs the policy engine; a command it does not allow never reaches the inner stages.
#[derive(Clone)]
pub struct PolicyLayer {
    engine: Arc<dyn PolicyEngine>,
}

impl PolicyLayer {
    pub fn new(engine: Arc<dyn PolicyEngine>) -> Self {
        PolicyLayer { engine }
    }
}

impl<S> Layer<S> for PolicyLayer {
    type Service = PolicyService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        PolicyService {
            engine: self.engine.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct PolicyService<S> {
    engine: Arc<dyn PolicyEngine>,
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<CommandRequest> for PolicyService<S>
where
    S: Service<CommandRequest, Response = Verdict, Error = PipelineError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Verdict;
    type Error = PipelineError;
    type Future = BoxFuture<Result<Verdict, PipelineError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PipelineError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: CommandRequest) -> Self::Future {
        let verdict = {
            let _span = tracing::info_span!("policy", command_id = req.command_id).entered();
            self.engine.evaluate(&req)
        };
        let mut inner = self.inner.clone();
        std::mem::swap(&mut inner, &mut self.inner);
        Box::pin(async move {
            let verdict = verdict?;
            if verdict.action != Action::Allow {
                return Ok(verdict);
            }
            let later = inner.call(req).await?;
            // Most restrictive wins; an allow keeps the rule that allowed it.
            Ok(if later.action > verdict.action {
                later
            } else {
                verdict
            })
        })
    }
}
