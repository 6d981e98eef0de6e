//! The `kube` match key:
//!
//! ```toml
//! match = { kube = { verbs = ["delete", "deletecollection"], resources = ["pods", "deployments.apps"],
//!                    namespaces = ["prod-*"], names = ["*"] } }
//! ```
//!
//! Every key given must match (a missing key matches anything); within a key,
//! any pattern may match. Patterns are globs (`*`, `?`, case-insensitive).
//!
//! - `verbs`: get, list, watch, create, update, patch, delete,
//!   deletecollection, exec, attach, portforward, proxy, log, or `*`.
//! - `resources`: `RESOURCE[.GROUP][/SUBRESOURCE]`. Without `.GROUP` any API
//!   group matches; `.core` names the core group (`secrets.core`). A pattern
//!   without `/` matches the resource itself, not its subresources (as in
//!   RBAC): `pods` does not cover `pods/exec`; write `pods/*` for every
//!   subresource, `*/exec`, or `*` for everything.
//! - `commands`: globs over the command line of an exec (its argv,
//!   shell-quoted: `kubectl exec web -- rm -rf /tmp` is `rm -rf /tmp`); a
//!   request that is not an exec never matches. This is a plain text match:
//!   `sh -c 'rm -rf /'` is not `rm *`. Shell-aware matching (pipelines,
//!   `sh -c`) is the `command` key's, which judges the same exec command.
//! - `namespaces`, `names`: the request's namespace and object name. A request
//!   without one (a list across all namespaces, a cluster-scoped resource, a
//!   collection) has the empty name, which only `*` (or `""`) matches: a rule
//!   scoped to `namespaces = ["dev"]` never grants a request that reaches
//!   beyond `dev`.
//!
//! Commands it applies to: Kubernetes API requests (`CommandKind::KubeRequest`)
//! and the command of an exec/attach (`CommandKind::Exec` whose context holds
//! its API request), so one rule can combine `kube` with command keys.

use crate::path::{parse, ApiRequest, Verb};
use sluice_core::glob::Glob;
use sluice_core::model::Action;
use sluice_core::pipeline::policy::{string_list, CommandMatcher, MatchKey, Scratch};
use sluice_core::toml;
use sluice_core::{Command, CommandKind};
use std::collections::HashMap;
use std::sync::Arc;

/// The prefix of the context line that ties an exec command to its API request.
pub const CONTEXT_PREFIX: &str = "kube: ";

/// Registers the `kube` match key.
pub fn kube_match_key() -> Arc<dyn MatchKey> {
    Arc::new(KubeMatchKey)
}

struct KubeMatchKey;

const FIELDS: [&str; 5] = ["verbs", "resources", "namespaces", "names", "commands"];

impl MatchKey for KubeMatchKey {
    fn keys(&self) -> &'static [&'static str] {
        &["kube"]
    }

    fn compile(&self, values: &toml::Table) -> Result<Box<dyn CommandMatcher>, String> {
        self.compile_for(values, Action::Deny)
    }

    /// An allow rule admits a request only when everything it touches is
    /// within the rule (every object a field selector names); deny and
    /// review rules match when anything it touches is.
    fn compile_for(
        &self,
        values: &toml::Table,
        action: Action,
    ) -> Result<Box<dyn CommandMatcher>, String> {
        let table = match values.get("kube") {
            Some(toml::Value::Table(t)) => t,
            _ => {
                return Err(
                    "kube: expected a table, e.g. kube = { verbs = [\"delete\"], resources = [\"pods\"] }"
                        .into(),
                )
            }
        };
        if let Some(unknown) = table.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(format!(
                "kube: unknown key {unknown:?} (known: {})",
                FIELDS.join(", ")
            ));
        }
        if table.is_empty() {
            return Err(format!(
                "kube: give at least one of {}; an empty table would match every request",
                FIELDS.join(", ")
            ));
        }
        let strings = |key: &str| -> Result<Option<Vec<String>>, String> {
            table
                .get(key)
                .map(|v| string_list(&format!("kube.{key}"), v))
                .transpose()
        };
        let verbs = strings("verbs")?
            .map(|names| {
                names
                    .iter()
                    .map(|n| {
                        if n == "*" {
                            return Ok(Verb::ALL.to_vec());
                        }
                        Verb::parse(n).map(|v| vec![v]).ok_or_else(|| {
                            let known: Vec<_> = Verb::ALL.iter().map(|v| v.name()).collect();
                            format!(
                                "kube.verbs: unknown verb {n:?} (known: {}, *)",
                                known.join(", ")
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(|v| v.into_iter().flatten().collect::<Vec<_>>())
            })
            .transpose()?;
        let resources = strings("resources")?
            .map(|v| v.iter().map(|p| ResourcePattern::new(p)).collect())
            .transpose()?;
        let globs = |key: &str| -> Result<Option<Vec<Glob>>, String> {
            Ok(strings(key)?.map(|v| v.iter().map(|p| Glob::new(p)).collect()))
        };
        Ok(Box::new(KubeMatcher {
            verbs,
            resources,
            namespaces: globs("namespaces")?,
            names: globs("names")?,
            commands: globs("commands")?,
            allow: action == Action::Allow,
        }))
    }
}

/// `RESOURCE[.GROUP][/SUBRESOURCE]`, split once at compile time.
struct ResourcePattern {
    resource: Glob,
    /// `None`: any group.
    group: Option<Glob>,
    /// `None`: only requests without a subresource (unless `everything`).
    subresource: Option<Glob>,
    /// The pattern `*`: every resource and subresource.
    everything: bool,
}

impl ResourcePattern {
    fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("kube.resources: an empty pattern matches nothing".into());
        }
        let (left, sub) = match pattern.split_once('/') {
            Some((l, s)) => (l, Some(s)),
            None => (pattern, None),
        };
        let (resource, group) = match left.split_once('.') {
            Some((r, g)) => (r, Some(g)),
            None => (left, None),
        };
        let group = group.map(|g| {
            if g.eq_ignore_ascii_case("core") {
                Glob::new("")
            } else {
                Glob::new(g)
            }
        });
        Ok(ResourcePattern {
            resource: Glob::new(resource),
            group,
            subresource: sub.map(Glob::new),
            everything: pattern == "*",
        })
    }

    fn matches(&self, req: &ApiRequest) -> bool {
        if req.resource.is_empty() {
            return false;
        }
        if self.everything {
            return true;
        }
        self.resource.matches(&req.resource)
            && self.group.as_ref().is_none_or(|g| g.matches(&req.group))
            && match (&self.subresource, &req.subresource) {
                (None, None) => true,
                (Some(p), Some(s)) => p.matches(s),
                _ => false,
            }
    }
}

struct KubeMatcher {
    verbs: Option<Vec<Verb>>,
    resources: Option<Vec<ResourcePattern>>,
    namespaces: Option<Vec<Glob>>,
    names: Option<Vec<Glob>>,
    commands: Option<Vec<Glob>>,
    /// Compiled for an allow rule (see [`KubeMatchKey::compile_for`]).
    allow: bool,
}

/// One command's parsed request, shared by every rule (keyed by request line).
#[derive(Default)]
struct Parsed(HashMap<(String, String), Result<ApiRequest, String>>);

/// The API request a command stands for, if any: `(method, target)`.
pub fn request_line(command: &Command) -> Option<(String, String)> {
    match &command.kind {
        CommandKind::KubeRequest { method, path, .. } => Some((method.clone(), path.clone())),
        CommandKind::Exec => command.context.iter().find_map(|c| {
            let line = c.strip_prefix(CONTEXT_PREFIX)?;
            let (m, p) = line.split_once(' ')?;
            Some((m.to_string(), p.to_string()))
        }),
        _ => None,
    }
}

impl CommandMatcher for KubeMatcher {
    fn matches(&self, command: &Command, scratch: &mut Scratch) -> Result<bool, String> {
        let Some(line) = request_line(command) else {
            return Ok(false);
        };
        if let Some(globs) = &self.commands {
            if command.kind != CommandKind::Exec || !globs.iter().any(|g| g.matches(&command.text))
            {
                return Ok(false);
            }
        }
        let parsed = scratch.get_or_insert_with(Parsed::default);
        let req = parsed
            .0
            .entry(line)
            .or_insert_with_key(|(m, p)| parse(m, p).map_err(|e| e.0))
            .as_ref()
            // A request the parser refuses cannot be judged: fail closed.
            .map_err(|e| format!("unparseable Kubernetes request: {e}"))?;
        // What the request touches: its object, or for a request without
        // one, the collection (the empty name) and any object a field
        // selector narrows it to (`fieldSelector=metadata.name=db`).
        let allow = self.allow;
        let touched = |one: &Option<String>, selected: &[String]| -> Vec<String> {
            match one {
                Some(v) => vec![v.clone()],
                // An allow rule: the selected objects alone (the selector
                // narrows the request to them), all of which must match.
                None if allow && !selected.is_empty() => selected.to_vec(),
                None => std::iter::once(String::new())
                    .chain(selected.iter().cloned())
                    .collect(),
            }
        };
        let any = |globs: &[Glob], values: &[String]| {
            let hit = |v: &String| globs.iter().any(|g| g.matches(v));
            if allow {
                values.iter().all(hit)
            } else {
                values.iter().any(hit)
            }
        };
        Ok(self.verbs.as_ref().is_none_or(|v| v.contains(&req.verb))
            && self
                .resources
                .as_ref()
                .is_none_or(|r| r.iter().any(|p| p.matches(req)))
            && self
                .namespaces
                .as_ref()
                .is_none_or(|n| any(n, &touched(&req.namespace, &req.selected_namespaces)))
            && self
                .names
                .as_ref()
                .is_none_or(|n| any(n, &touched(&req.name, &req.selected_names))))
    }
}

/// The command a Kubernetes API request is judged as.
pub fn request_command(method: &str, target: &str, req: &ApiRequest) -> Command {
    Command {
        kind: CommandKind::KubeRequest {
            method: method.to_string(),
            path: target.to_string(),
            verb: req.verb.name().to_string(),
            resource: match req.scope {
                crate::path::Scope::Resource => req.resource_key(),
                _ => String::new(),
            },
            namespace: req.namespace.clone(),
            name: req.name.clone(),
        },
        text: format!("{method} {target}"),
        context: vec![req.describe()],
    }
}

#[cfg(test)]
mod tests;
