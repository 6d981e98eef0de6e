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
//! ([`Invocation::runs_anything`]) matches every deny and review rule that
//! sets `program` or `command`, and an allow rule only through a `command`
//! pattern matching its arguments. `writes` globs judge the files a part's
//! redirections on the line write ([`Invocation::writes`]; what a program
//! writes by itself is not visible, so a `writes`-only rule judges a part
//! that may run anything by its redirections too): an allow rule admits a
//! part that writes only if every target matches them (never a computed
//! one), a deny or review rule matches a part writing to a matching (or
//! computed) target. Allow
//! rules admit a program written with a directory by its base name only
//! from a system directory. A line that cannot be judged
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
        &["command", "program", "writes"]
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
        let m = ShellMatcher {
            commands: strings(values, "command")?,
            programs: strings(values, "program")?,
            writes: strings(values, "writes")?,
            allows: action == Action::Allow,
        };
        if m.allows && m.writes.is_some() && m.commands.is_none() && m.programs.is_none() {
            // Alone, it would admit every program that writes nothing.
            return Err(
                "writes: an allow rule with `writes` must also name the programs it \
                        admits with `program` or `command`"
                    .into(),
            );
        }
        Ok(Box::new(m))
    }
}

struct ShellMatcher {
    commands: Option<Vec<Glob>>,
    programs: Option<Vec<Glob>>,
    writes: Option<Vec<Glob>>,
    /// The rule allows: a part that may run anything matches it only when
    /// a `command` pattern names the program and its arguments.
    allows: bool,
}

/// One command line analysed once for all rules.
struct Analyzed(Result<Vec<Invocation>, String>);

/// Directories whose programs an allow rule admits by base name: a
/// program written with any other directory (`/tmp/x/ls`, `./ls`) is
/// admitted only by a pattern matching the path as written.
const SYSTEM_DIRS: &[&str] = &[
    "/usr/bin",
    "/bin",
    "/usr/sbin",
    "/sbin",
    "/usr/local/bin",
    "/usr/local/sbin",
];

/// `target` with `//` and `.` components removed and `..` resolved
/// lexically (`~/./.ssh//rc` → `~/.ssh/rc`, `/tmp/../etc/x` → `/etc/x`).
fn normalised(target: &str) -> String {
    let absolute = target.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            ".." if absolute => {}
            c => parts.push(c),
        }
    }
    let joined = parts.join("/");
    if absolute {
        format!("/{joined}")
    } else {
        joined
    }
}

impl ShellMatcher {
    fn invocation_matches(&self, inv: &Invocation) -> bool {
        self.check(inv, true)
    }

    /// Whether the rule matches `inv`. With `presume`, a deny or review
    /// rule also matches what it cannot rule out: a part that may run
    /// anything, a write whose target is computed at run time.
    fn check(&self, inv: &Invocation, presume: bool) -> bool {
        if inv.runs_anything {
            if !self.allows && presume && self.names_programs() {
                // A deny or review rule on programs or commands: what such a
                // part runs is unknown, so it may be what the rule names.
                return true;
            }
            if self.allows && self.commands.is_none() {
                // `program = ["awk"]` does not say which awk programs.
                return false;
            }
        }
        // An allow rule admits a program written with a directory by its
        // base name only from a system directory: `/tmp/x/ls` is not `ls`.
        let by_name = !self.allows
            || inv
                .path
                .as_deref()
                .is_none_or(|p| crate::written_in(p, SYSTEM_DIRS));
        if let Some(globs) = &self.programs {
            let hit = globs.iter().any(|g| {
                (by_name && g.matches(&inv.program))
                    || inv.path.as_deref().is_some_and(|p| g.matches(p))
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
            let hit = globs.iter().any(|g| {
                (by_name && g.matches(&text)) || with_path.as_deref().is_some_and(|t| g.matches(t))
            });
            if !hit {
                return false;
            }
        }
        if self.allows {
            // Every file the part writes must be one the rule names.
            if !inv.writes.is_empty() {
                let Some(globs) = &self.writes else {
                    return false;
                };
                let admitted = inv.writes.iter().all(|w| {
                    // A computed target could be any file; a `..` could
                    // leave the directory a pattern names.
                    !w.computed
                        && !w.target.split('/').any(|c| c == "..")
                        && globs
                            .iter()
                            .any(|g| g.matches(&w.target) || g.matches(&normalised(&w.target)))
                });
                if !admitted {
                    return false;
                }
            }
        } else if let Some(globs) = &self.writes {
            // Some file the part writes is one the rule names, or may be.
            let hit = inv.writes.iter().any(|w| {
                (w.computed && presume)
                    || globs
                        .iter()
                        .any(|g| g.matches(&w.target) || g.matches(&normalised(&w.target)))
            });
            if !hit {
                return false;
            }
        }
        true
    }

    /// The rule names programs (`program` or `command`), not only `writes`.
    fn names_programs(&self) -> bool {
        self.programs.is_some() || self.commands.is_some()
    }

    /// Why a deny or review rule matches `inv` though the line does not
    /// show what it names, for the caller's message.
    fn note(&self, inv: &Invocation) -> Option<String> {
        if self.allows || !self.check(inv, true) || self.check(inv, false) {
            return None;
        }
        let text = inv.text();
        if inv.runs_anything && self.names_programs() {
            return Some(format!(
                "`{text}` runs programs the gateway cannot see on the command line, so this \
                 rule applies in case they include what it names. Run those programs directly \
                 instead, or ask a Sluice administrator to admit this command with an allow \
                 rule whose `command` pattern matches it (e.g. `command = [{text:?}]`) for \
                 sessions this rule does not cover."
            ));
        }
        let computed: Vec<&str> = inv
            .writes
            .iter()
            .filter(|w| w.computed)
            .map(|w| w.target.as_str())
            .collect();
        Some(format!(
            "the redirection target {} is only known when the command runs, so this rule \
             applies in case it is a file the rule names. Write the path literally.",
            computed
                .iter()
                .map(|t| format!("`{t}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    fn invocations<'s>(
        command: &Command,
        scratch: &'s mut Scratch,
    ) -> Result<Option<&'s [Invocation]>, String> {
        if command.kind != CommandKind::Exec {
            return Ok(None);
        }
        let analyzed = scratch
            .get_or_insert_with(|| Analyzed(analyze(&command.text).map_err(|e| e.to_string())));
        analyzed.0.as_deref().map(Some).map_err(|e| e.clone())
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
        Ok(Self::invocations(command, scratch)?.map(|invocations| {
            invocations
                .iter()
                .map(|inv| self.invocation_matches(inv))
                .collect()
        }))
    }

    fn part_note(&self, command: &Command, scratch: &mut Scratch, part: usize) -> Option<String> {
        let invocations = Self::invocations(command, scratch).ok()??;
        self.note(invocations.get(part)?)
    }
}
