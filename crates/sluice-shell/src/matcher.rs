//! The `command` and `program` match keys, for every `CommandKind::Exec`
//! whatever the protocol (SSH exec, `kubectl exec`):
//!
//! ```toml
//! match = { command = ["rm -rf *", "systemctl stop *"] }
//! match = { program = ["rm", "shred", "mkfs*"] }
//! ```
//!
//! `command` globs match `program arg1 arg2 …` of one program the line runs
//! (program by base name, or as written with its path); `program` globs
//! match the program's name or path. When a rule sets both, both must hold
//! for the same program. Each program of a line is judged on its own (see
//! `CommandMatcher::part_matches`). A part that may run anything
//! ([`Invocation::runs_anything`]) matches every deny and review rule, and
//! an allow rule only through a `command` pattern matching its arguments. A line that cannot be judged
//! ([`super::Unjudgeable`]) makes the matcher fail, which denies the command.

use super::{analyze, Invocation};
use sluice_core::glob::Glob;
use sluice_core::model::{Action, Command, CommandKind};
use sluice_core::pipeline::policy::{CommandMatcher, MatchKey, Scratch};
use std::sync::Arc;

/// Registers `command` and `program`.
pub fn shell_match_key() -> Arc<dyn MatchKey> {
    Arc::new(ShellMatchKey)
}

struct ShellMatchKey;

fn strings(values: &sluice_core::toml::Table, key: &str) -> Result<Option<Vec<Glob>>, String> {
    let Some(v) = values.get(key) else {
        return Ok(None);
    };
    let list = sluice_core::pipeline::policy::string_list(key, v)?;
    if list.iter().any(|p| p.trim().is_empty()) {
        return Err(format!("{key}: an empty pattern"));
    }
    Ok(Some(list.iter().map(|p| Glob::new(p.trim())).collect()))
}

impl MatchKey for ShellMatchKey {
    fn keys(&self) -> &'static [&'static str] {
        &["command", "program"]
    }

    fn compile(
        &self,
        values: &sluice_core::toml::Table,
    ) -> Result<Box<dyn CommandMatcher>, String> {
        // Without the rule's action, judge as the strictest (an allow rule
        // admitting less, never more).
        self.compile_for(values, Action::Allow)
    }

    fn compile_for(
        &self,
        values: &sluice_core::toml::Table,
        action: Action,
    ) -> Result<Box<dyn CommandMatcher>, String> {
        Ok(Box::new(ShellMatcher {
            commands: strings(values, "command")?,
            programs: strings(values, "program")?,
            allows: action == Action::Allow,
        }))
    }
}

struct ShellMatcher {
    commands: Option<Vec<Glob>>,
    programs: Option<Vec<Glob>>,
    /// The rule allows: a part that may run anything matches it only when
    /// a `command` pattern names the program and its arguments.
    allows: bool,
}

/// One command line analysed once for all rules.
struct Analyzed(Result<Vec<Invocation>, String>);

impl ShellMatcher {
    fn invocation_matches(&self, inv: &Invocation) -> bool {
        if inv.runs_anything {
            if !self.allows {
                // A deny or review rule on programs or commands: what such a
                // part runs is unknown, so it may be what the rule names.
                return true;
            }
            if self.commands.is_none() {
                // `program = ["awk"]` does not say which awk programs.
                return false;
            }
        }
        if let Some(globs) = &self.programs {
            let hit = globs.iter().any(|g| {
                g.matches(&inv.program) || inv.path.as_deref().is_some_and(|p| g.matches(p))
            });
            if !hit {
                return false;
            }
        }
        if let Some(globs) = &self.commands {
            let text = inv.text();
            let with_path = inv.path.as_ref().map(|p| {
                let mut t = p.clone();
                for a in &inv.args {
                    t.push(' ');
                    t.push_str(a);
                }
                t
            });
            let hit = globs
                .iter()
                .any(|g| g.matches(&text) || with_path.as_deref().is_some_and(|t| g.matches(t)));
            if !hit {
                return false;
            }
        }
        true
    }
}

impl CommandMatcher for ShellMatcher {
    fn matches(&self, command: &Command, scratch: &mut Scratch) -> Result<bool, String> {
        Ok(self
            .part_matches(command, scratch)?
            .is_some_and(|p| p.iter().any(|m| *m)))
    }

    fn part_matches(
        &self,
        command: &Command,
        scratch: &mut Scratch,
    ) -> Result<Option<Vec<bool>>, String> {
        if command.kind != CommandKind::Exec {
            return Ok(None);
        }
        let analyzed = scratch
            .get_or_insert_with(|| Analyzed(analyze(&command.text).map_err(|e| e.to_string())));
        let invocations = analyzed.0.as_ref().map_err(|e| e.clone())?;
        Ok(Some(
            invocations
                .iter()
                .map(|inv| self.invocation_matches(inv))
                .collect(),
        ))
    }
}
