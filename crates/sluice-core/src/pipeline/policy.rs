//! The policy stage and its extension point.
//!
//! Rules (`[[rules]]`) are scoped by connection, group and subject in core;
//! what a rule's `match` table means is contributed by protocols through
//! [`MatchKey`] implementations, so SQL, shell, HTTP and Kubernetes keys plug
//! into one engine instead of special cases.

use super::{CommandRequest, PipelineError};
use crate::config::{Config, RuleConfig};
use crate::model::{Action, Command, Verdict};
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

/// A compiled matcher for one rule's match keys.
pub trait CommandMatcher: Send + Sync {
    /// Whether the command matches. An `Err` (e.g. unparseable input) denies.
    /// `scratch` lives for one command's evaluation across all rules, so work
    /// such as parsing is done once per command, not once per rule.
    fn matches(&self, command: &Command, scratch: &mut Scratch) -> Result<bool, String>;
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
}

struct CompiledRule {
    name: String,
    connections: Option<Vec<String>>,
    groups: Option<Vec<String>>,
    subjects: Option<Vec<String>>,
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
                .compile(&table)
                .map_err(|e| (format!("rules.{i}.match.{first}"), e))?,
        );
    }
    Ok(CompiledRule {
        name: r.name.clone(),
        connections: r.connections.clone(),
        groups: r.groups.clone(),
        subjects: r.subjects.clone(),
        matchers,
        action: r.action,
        message: r.message.clone(),
    })
}

impl PolicyEngine for RulesEngine {
    fn evaluate(&self, req: &CommandRequest) -> Result<Verdict, PipelineError> {
        let s = &req.session;
        let mut best: Option<Verdict> = None;
        let mut scratch = Scratch::default();
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
                if !subj.contains(&s.identity.subject) {
                    continue;
                }
            }
            let mut all = true;
            for m in &rule.matchers {
                // A matcher that cannot decide must fail closed.
                if !m
                    .matches(&req.command, &mut scratch)
                    .map_err(|reason| PipelineError {
                        stage: "policy",
                        reason: format!("rule {:?}: {reason}", rule.name),
                    })?
                {
                    all = false;
                    break;
                }
            }
            if !all {
                continue;
            }
            let v = Verdict {
                action: rule.action,
                rule: Some(rule.name.clone()),
                message: rule.message.clone(),
            };
            if best.as_ref().is_none_or(|b| v.action > b.action) {
                best = Some(v);
            }
        }
        Ok(best.unwrap_or_else(|| Verdict {
            action: self
                .defaults
                .get(&s.connection)
                .copied()
                .unwrap_or(Action::Allow),
            rule: None,
            message: None,
        }))
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
