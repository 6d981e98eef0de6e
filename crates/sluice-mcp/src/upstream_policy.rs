//! The `mcp` match key, for connections of `kind = "mcp"`:
//!
//! ```toml
//! match = { mcp = { tools = ["github.*"], arguments = { repo = "acme/*" } } }
//! match = { mcp = { methods = ["tools/list"] } }
//! match = { mcp = { definition = ["changed"] } }
//! ```
//!
//! Every given part must hold. `tools` globs the tool name of a
//! `tools/call` (or, with `definition`, of a recorded tool definition);
//! `arguments` names top-level arguments whose value must match the glob.
//! Values are compared leaf by leaf: a string as is, a number in its
//! shortest form (`42.0` and `4.2e1` are `42`), `true`/`false`/`null` as
//! words, and the leaves of arrays and objects. An `allow` rule matches only
//! when the argument is present and every leaf matches (nothing outside the
//! rule); a `deny` or `review` rule matches when any leaf matches or the
//! argument is missing (the tool's default is not known). `methods` globs the JSON-RPC method (`initialize`,
//! `ping`, `tools/list`, `tools/call`); `definition` matches the
//! `tools/description` commands the gateway records when `tools/list` shows
//! a tool definition it has not seen for the connection (`new`) or one that
//! differs from the last one recorded (`changed`). Globs are
//! case-insensitive, like every match key's.

use crate::upstream::DEFINITION_OPERATION;
use sluice_core::glob::Glob;
use sluice_core::pipeline::policy::{string_list, CommandMatcher, MatchKey, Scratch};
use sluice_core::toml;
use sluice_core::{Action, Command, CommandKind};
use std::sync::Arc;

/// Registers the `mcp` match key.
pub fn mcp_match_key() -> Arc<dyn MatchKey> {
    Arc::new(McpMatchKey)
}

struct McpMatchKey;

#[derive(Default)]
struct McpMatcher {
    /// An allow rule: arguments must stay entirely within it.
    allow: bool,
    methods: Option<Vec<Glob>>,
    tools: Option<Vec<Glob>>,
    arguments: Option<Vec<(String, Glob)>>,
    definition: Option<Vec<String>>,
}

impl MatchKey for McpMatchKey {
    fn keys(&self) -> &'static [&'static str] {
        &["mcp"]
    }

    fn compile(&self, values: &toml::Table) -> Result<Box<dyn CommandMatcher>, String> {
        self.compile_for(values, Action::Deny)
    }

    fn compile_for(
        &self,
        values: &toml::Table,
        action: Action,
    ) -> Result<Box<dyn CommandMatcher>, String> {
        let table = values
            .get("mcp")
            .and_then(|v| v.as_table())
            .ok_or("mcp: expected a table { tools, arguments, methods, definition }")?;
        let mut m = McpMatcher {
            allow: action == Action::Allow,
            ..McpMatcher::default()
        };
        for (key, v) in table {
            match key.as_str() {
                "methods" => {
                    m.methods = Some(
                        string_list("mcp.methods", v)?
                            .iter()
                            .map(|s| Glob::new(s))
                            .collect(),
                    )
                }
                "tools" => {
                    m.tools = Some(
                        string_list("mcp.tools", v)?
                            .iter()
                            .map(|s| Glob::new(s))
                            .collect(),
                    )
                }
                "arguments" => {
                    let t = v
                        .as_table()
                        .ok_or("mcp.arguments: expected a table { name = \"glob\" }")?;
                    if t.is_empty() {
                        return Err(
                            "mcp.arguments: an empty table matches nothing; remove the key instead"
                                .into(),
                        );
                    }
                    let mut args = Vec::new();
                    for (name, glob) in t {
                        let glob = glob.as_str().ok_or_else(|| {
                            format!("mcp.arguments.{name}: expected a glob string")
                        })?;
                        args.push((name.clone(), Glob::new(glob)));
                    }
                    m.arguments = Some(args);
                }
                "definition" => {
                    let list = string_list("mcp.definition", v)?;
                    for s in &list {
                        if s != "new" && s != "changed" {
                            return Err(format!(
                                "mcp.definition: {s:?} is not \"new\" or \"changed\""
                            ));
                        }
                    }
                    m.definition = Some(list);
                }
                other => {
                    return Err(format!(
                        "mcp: unknown key {other:?} (known: tools, arguments, methods, definition)"
                    ))
                }
            }
        }
        if m.methods.is_none()
            && m.tools.is_none()
            && m.arguments.is_none()
            && m.definition.is_none()
        {
            return Err("mcp: give at least one of tools, arguments, methods, definition".into());
        }
        if m.definition.is_some() && (m.arguments.is_some() || m.methods.is_some()) {
            return Err("mcp.definition: combine it with tools only".into());
        }
        Ok(Box::new(m))
    }
}

/// The parts of an MCP command: its JSON-RPC method, and for a
/// `tools/call` the tool name and its arguments' canonical JSON (for a
/// `tools/description` the tool name and `new`/`changed …`).
pub fn command_parts(command: &Command) -> Option<(&str, &str, &str)> {
    let CommandKind::Other { operation } = &command.kind else {
        return None;
    };
    let (first, rest) = command
        .text
        .split_once(' ')
        .unwrap_or((command.text.as_str(), ""));
    Some((operation.as_str(), first, rest))
}

impl CommandMatcher for McpMatcher {
    fn matches(&self, command: &Command, _scratch: &mut Scratch) -> Result<bool, String> {
        let Some((operation, name, rest)) = command_parts(command) else {
            return Ok(false);
        };
        if let Some(statuses) = &self.definition {
            if operation != DEFINITION_OPERATION {
                return Ok(false);
            }
            let status = rest.split(' ').next().unwrap_or("");
            if !statuses.iter().any(|s| s == status) {
                return Ok(false);
            }
            return Ok(self
                .tools
                .as_ref()
                .is_none_or(|t| t.iter().any(|g| g.matches(name))));
        }
        if let Some(methods) = &self.methods {
            if !methods.iter().any(|g| g.matches(operation)) {
                return Ok(false);
            }
        }
        if self.tools.is_none() && self.arguments.is_none() {
            return Ok(operation != DEFINITION_OPERATION);
        }
        if operation != "tools/call" {
            return Ok(false);
        }
        if let Some(tools) = &self.tools {
            if !tools.iter().any(|g| g.matches(name)) {
                return Ok(false);
            }
        }
        if let Some(args) = &self.arguments {
            // The text holds the canonical JSON of exactly what was forwarded;
            // an unparseable text is an error, which denies.
            let value: serde_json::Value = serde_json::from_str(rest)
                .map_err(|e| format!("mcp: the arguments are not JSON: {e}"))?;
            for (key, glob) in args {
                let hit = match value.get(key) {
                    // An allow rule admits only what it names; for a deny or
                    // review rule a missing argument may mean anything.
                    None => !self.allow,
                    Some(v) => {
                        let mut leaves = Vec::new();
                        leaf_texts(v, &mut leaves);
                        if self.allow {
                            !leaves.is_empty() && leaves.iter().all(|t| glob.matches(t))
                        } else {
                            leaves.is_empty() || leaves.iter().any(|t| glob.matches(t))
                        }
                    }
                };
                if !hit {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

/// The texts a glob is compared with: every scalar leaf of `v`, numbers in
/// their shortest form (an integral float below 2^53 as an integer).
fn leaf_texts(v: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Number(n) => out.push(match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => {
                (f as i64).to_string()
            }
            _ => n.to_string(),
        }),
        Value::Bool(b) => out.push(b.to_string()),
        Value::Null => out.push("null".into()),
        Value::Array(items) => items.iter().for_each(|i| leaf_texts(i, out)),
        Value::Object(map) => map.values().for_each(|i| leaf_texts(i, out)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, args: &str) -> Command {
        Command {
            kind: CommandKind::Other {
                operation: "tools/call".into(),
            },
            text: format!("{name} {args}"),
            context: Vec::new(),
        }
    }

    fn rule(text: &str) -> Box<dyn CommandMatcher> {
        rule_for(text, Action::Allow)
    }

    fn rule_for(text: &str, action: Action) -> Box<dyn CommandMatcher> {
        let table: toml::Table = toml::from_str(text).unwrap();
        McpMatchKey.compile_for(&table, action).unwrap()
    }

    /// A deny rule on an argument catches it however it is sent: missing
    /// (the tool's default), inside an array or object, or as another
    /// spelling of the same number; an allow rule admits only what stays
    /// entirely within it.
    #[test]
    fn deny_rules_match_anything_that_touches_the_argument() {
        let mut s = Scratch::default();
        let deny = rule_for(
            r#"mcp = { arguments = { path = "/etc/*", id = "42" } }"#,
            Action::Deny,
        );
        for args in [
            r#"{"path":"/etc/shadow","id":42}"#,
            r#"{"path":["/tmp/x","/etc/shadow"],"id":42.0}"#,
            r#"{"path":{"a":"/etc/passwd"},"id":4.2e1}"#,
            r#"{"id":"42"}"#,
            r#"{"path":"/etc/x"}"#,
        ] {
            assert!(deny.matches(&call("t", args), &mut s).unwrap(), "{args}");
        }
        assert!(!deny
            .matches(&call("t", r#"{"path":"/tmp/x","id":42}"#), &mut s)
            .unwrap());
        let allow = rule_for(
            r#"mcp = { arguments = { repo = "*acme*" } }"#,
            Action::Allow,
        );
        assert!(allow
            .matches(&call("t", r#"{"repo":["acme/a","acme/b"]}"#), &mut s)
            .unwrap());
        for args in [r#"{"repo":["evil/x","acme"]}"#, r#"{}"#, r#"{"repo":[]}"#] {
            assert!(!allow.matches(&call("t", args), &mut s).unwrap(), "{args}");
        }
    }

    #[test]
    fn tools_and_arguments() {
        let r = rule(r#"mcp = { tools = ["repo.*"], arguments = { repo = "acme/*" } }"#);
        let mut s = Scratch::default();
        assert!(r
            .matches(&call("repo.read", r#"{"repo":"acme/x"}"#), &mut s)
            .unwrap());
        assert!(!r
            .matches(&call("repo.read", r#"{"repo":"evil/x"}"#), &mut s)
            .unwrap());
        assert!(!r.matches(&call("repo.read", r#"{}"#), &mut s).unwrap());
        assert!(!r
            .matches(&call("other", r#"{"repo":"acme/x"}"#), &mut s)
            .unwrap());
        let n = rule(r#"mcp = { arguments = { n = "4?" } }"#);
        assert!(n.matches(&call("t", r#"{"n":42}"#), &mut s).unwrap());
    }

    #[test]
    fn definitions() {
        let r = rule(r#"mcp = { definition = "changed" }"#);
        let mut s = Scratch::default();
        let def = |status: &str| Command {
            kind: CommandKind::Other {
                operation: DEFINITION_OPERATION.into(),
            },
            text: format!("t {status} sha256:00"),
            context: Vec::new(),
        };
        assert!(r.matches(&def("changed"), &mut s).unwrap());
        assert!(!r.matches(&def("new"), &mut s).unwrap());
        assert!(!r.matches(&call("t", "{}"), &mut s).unwrap());
    }
}
