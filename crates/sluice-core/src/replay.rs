//! A readable transcript of a session from its audit records.

use crate::audit::{AuditEvent, AuditRecord};
use crate::model::{Action, CommandKind};
use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

fn time(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Renders records (in chain order) as text: who, where, each command with
/// its decision and what the client saw.
pub fn transcript(records: &[AuditRecord]) -> String {
    let mut out = String::new();
    let mut lines = StreamLines::default();
    for r in records {
        let at = time(r.at_ms);
        let Ok(event) = r.event() else {
            let _ = writeln!(out, "{at}  #{} <unreadable record>", r.seq);
            continue;
        };
        match event {
            AuditEvent::SessionStart {
                identity,
                connection,
                protocol,
                client_addr,
            } => {
                let _ = writeln!(
                    out,
                    "{at}  session {} opened by {} (groups: {}; token {} issued by {}) on {connection} [{protocol}] from {client_addr}",
                    r.session_id,
                    identity.subject,
                    identity.groups.join(", "),
                    identity.token_id,
                    identity.issuer,
                );
            }
            AuditEvent::CommandDecided {
                command_id,
                command,
                verdict,
            } => {
                let how = match &command.kind {
                    CommandKind::SqlSimple => "query".to_string(),
                    CommandKind::SqlExecute { statement, .. } if statement.is_empty() => {
                        "execute".to_string()
                    }
                    CommandKind::SqlExecute { statement, .. } => format!("execute {statement}"),
                    CommandKind::FunctionCall { function_oid } => {
                        format!("function call {function_oid}")
                    }
                    CommandKind::Exec => "exec".into(),
                    CommandKind::HttpRequest { .. } => "request".into(),
                    CommandKind::KubeRequest { verb, resource, .. } => {
                        format!("kube {verb} {resource}").trim_end().to_string()
                    }
                    CommandKind::Shell { pty: true } => "shell (pty)".into(),
                    CommandKind::Shell { pty: false } => "shell".into(),
                    CommandKind::Subsystem { name } => format!("subsystem {name}"),
                    CommandKind::Forward { kind } => kind.clone(),
                    CommandKind::Other { operation } => operation.to_lowercase(),
                };
                let decision = match (&verdict.action, &verdict.rule) {
                    (Action::Allow, None) => "allowed".to_string(),
                    (a, Some(rule)) => format!("{a} (rule {rule})"),
                    (a, None) => format!("{a} (default)"),
                };
                let _ = writeln!(out, "{at}  [{command_id}] {how}: {}", shown(&command.text));
                let _ = writeln!(out, "{:>26}decision: {decision}", "");
            }
            AuditEvent::CommandFinished {
                command_id,
                outcome,
            } => {
                lines.finish(&mut out, Some(command_id));
                let pad = format!("{:>26}", "");
                if let Some(e) = &outcome.error {
                    let _ = writeln!(out, "{pad}[{command_id}] client saw error: {}", shown(e));
                } else {
                    let _ = writeln!(
                        out,
                        "{pad}[{command_id}] {} — {} rows, {} bytes, {:.3} ms",
                        outcome.tag.as_deref().unwrap_or("done"),
                        outcome.rows,
                        outcome.bytes,
                        outcome.duration_us as f64 / 1000.0
                    );
                }
                if !outcome.masked.is_empty() {
                    let counts: Vec<String> = outcome
                        .masked
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    let _ = writeln!(out, "{pad}  masked: {}", counts.join(", "));
                }
                if !outcome.sample.is_empty() {
                    if !outcome.columns.is_empty() {
                        let _ = writeln!(
                            out,
                            "{pad}  | {}",
                            escaped(&outcome.columns.join(" | "), &[])
                        );
                    }
                    for row in &outcome.sample {
                        let cells: Vec<String> = row
                            .iter()
                            .map(|v| escaped(v.as_deref().unwrap_or("NULL"), &[]))
                            .collect();
                        let _ = writeln!(out, "{pad}  | {}", cells.join(" | "));
                    }
                    if outcome.truncated {
                        let _ = writeln!(out, "{pad}  | … ({} rows in all)", outcome.rows);
                    }
                }
            }
            AuditEvent::ApprovalRequested {
                approval_id,
                command_id,
                rule,
                approvers,
                mode,
                expires_at_ms,
                command,
            } => {
                let _ = writeln!(
                    out,
                    "{at}  [{command_id}] approval {approval_id} requested by rule {rule} ({mode:?} mode; approvers: {}; expires {})",
                    approvers.join(", "),
                    time(expires_at_ms)
                );
                // A command whose decision never came is on record here only.
                if let Some(command) = command {
                    let _ = writeln!(out, "{:>26}held: {}", "", shown(&command.text));
                }
            }
            AuditEvent::ApprovalDecided {
                approval_id,
                state,
                by,
                reason,
            } => {
                let _ = writeln!(
                    out,
                    "{at}  approval {approval_id} {state} by {by}{}",
                    reason
                        .map(|r| format!(": {}", escaped(&r, &[])))
                        .unwrap_or_default()
                );
            }
            AuditEvent::SessionEnd { reason } => {
                lines.finish(&mut out, None);
                let _ = writeln!(out, "{at}  session ended: {reason}");
            }
            AuditEvent::StreamOutput { command_id, chunks } => {
                for chunk in &chunks {
                    lines.add(&mut out, command_id, &chunk.stream, &chunk.data);
                }
            }
            AuditEvent::WindowResized {
                command_id,
                cols,
                rows,
                ..
            } => {
                let _ = writeln!(out, "{:>26}[{command_id}] terminal {cols}x{rows}", "");
            }
            AuditEvent::FileTransfer {
                command_id,
                path,
                direction,
                bytes,
            } => {
                let _ = writeln!(
                    out,
                    "{at}  [{command_id}] file {direction}: {path} ({bytes} bytes)"
                );
            }
        }
    }
    lines.finish(&mut out, None);
    out
}

/// Stream text as whole lines: a terminal's output and its keystrokes come
/// in pieces (a character at a time as typed and echoed); the transcript
/// shows each stream's lines. Typed input (`stdin`, `stdin_hidden`) ends a
/// line at Enter.
#[derive(Default)]
struct StreamLines {
    /// Unfinished line per (command, stream), in first-seen order.
    partial: Vec<((u64, String), String)>,
}

impl StreamLines {
    fn add(&mut self, out: &mut String, command_id: u64, stream: &str, data: &str) {
        let input = stream.starts_with("stdin");
        let key = (command_id, stream.to_string());
        let i = match self.partial.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                self.partial.push((key, String::new()));
                self.partial.len() - 1
            }
        };
        for c in data.chars() {
            let ends = c == '\n' || (input && c == '\r');
            if ends {
                let line = std::mem::take(&mut self.partial[i].1);
                let line = line.strip_suffix('\r').unwrap_or(&line);
                Self::line(out, command_id, stream, line);
            } else {
                self.partial[i].1.push(c);
            }
        }
    }

    fn line(out: &mut String, command_id: u64, stream: &str, line: &str) {
        let stream = match stream {
            crate::audit::STDIN => "typed",
            crate::audit::STDIN_HIDDEN => "typed (hidden, echo off)",
            other => other,
        };
        let _ = writeln!(
            out,
            "{:>26}[{command_id}] {stream}| {}",
            "",
            printable(line)
        );
    }

    /// Writes the unfinished lines of `command_id` (all when `None`).
    fn finish(&mut self, out: &mut String, command_id: Option<u64>) {
        let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.partial)
            .into_iter()
            .partition(|((id, _), _)| command_id.is_none_or(|c| c == *id));
        self.partial = keep;
        for ((id, stream), line) in done {
            if !line.is_empty() {
                Self::line(out, id, &stream, &line);
            }
        }
    }
}

/// A command (or an error quoting one) in the transcript: its lines kept,
/// each continuation marked so that no line of it can pass for a record.
fn shown(text: &str) -> String {
    escaped(text.trim(), &['\t', '\n']).replace('\n', &format!("\n{:>26}· ", ""))
}

/// Terminal output as readable text: control characters (escape sequences)
/// shown escaped rather than acted on.
fn printable(line: &str) -> String {
    escaped(line, &['\t'])
}

/// Text an agent chose, as a person reads it on a terminal: control
/// characters (C0, DEL, C1: escape sequences, carriage returns, newlines)
/// and invisible format characters (bidi overrides, zero-width marks) are
/// shown escaped, so a command cannot redraw the line it is shown on or
/// read as something else. `keep` lists controls left as they are.
pub fn escaped(text: &str, keep: &[char]) -> String {
    text.chars()
        .map(|c| {
            if (c.is_control() || is_format(c)) && !keep.contains(&c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Unicode format characters (category Cf) that change how text reads
/// without showing: bidi embeddings, overrides and isolates, zero-width
/// spaces and joiners, the BOM, soft hyphen, invisible operators.
fn is_format(c: char) -> bool {
    matches!(c,
        '\u{AD}' | '\u{61C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// A session's terminal as an asciicast v2 recording (`asciinema play`):
/// the output of `command_id`, or of the session's first shell (else its
/// first command with recorded output), with its window-size changes.
pub fn asciicast(records: &[AuditRecord], command_id: Option<u64>) -> Result<String, String> {
    let events: Vec<(u64, AuditEvent)> = records
        .iter()
        .filter_map(|r| r.event().ok().map(|e| (r.at_ms, e)))
        .collect();
    let wanted = command_id
        .or_else(|| {
            events.iter().find_map(|(_, e)| match e {
                AuditEvent::CommandDecided {
                    command_id,
                    command,
                    ..
                } if matches!(command.kind, CommandKind::Shell { .. }) => Some(*command_id),
                _ => None,
            })
        })
        .or_else(|| {
            events.iter().find_map(|(_, e)| match e {
                AuditEvent::StreamOutput { command_id, .. } => Some(*command_id),
                _ => None,
            })
        })
        .ok_or("this session recorded no terminal or command output")?;
    let mut started_ms = None;
    let mut size: Option<(u32, u32)> = None;
    let mut lines = Vec::new();
    for (at_ms, e) in &events {
        match e {
            AuditEvent::CommandDecided { command_id, .. } if *command_id == wanted => {
                started_ms = Some(*at_ms);
            }
            AuditEvent::WindowResized {
                command_id,
                offset_ms,
                cols,
                rows,
            } if *command_id == wanted => {
                if size.is_none() {
                    size = Some((*cols, *rows));
                } else {
                    lines.push(serde_json::json!([
                        *offset_ms as f64 / 1000.0,
                        "r",
                        format!("{cols}x{rows}")
                    ]));
                }
            }
            AuditEvent::StreamOutput { command_id, chunks } if *command_id == wanted => {
                for c in chunks {
                    let kind = if c.stream.starts_with("stdin") {
                        "i"
                    } else {
                        "o"
                    };
                    lines.push(serde_json::json!([
                        c.offset_ms as f64 / 1000.0,
                        kind,
                        c.data
                    ]));
                }
            }
            _ => {}
        }
    }
    let (width, height) = size.unwrap_or((80, 24));
    let header = serde_json::json!({
        "version": 2,
        "width": width,
        "height": height,
        "timestamp": started_ms.unwrap_or(0) / 1000,
        "title": format!("sluice session {} command {wanted}", records.first().map(|r| r.session_id.as_str()).unwrap_or("")),
    });
    let mut out = header.to_string();
    out.push('\n');
    for l in lines {
        out.push_str(&l.to_string());
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{chain_hash, StreamChunk, GENESIS_HASH};
    use crate::model::{Command, Verdict};

    fn records(events: Vec<AuditEvent>) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH.to_string();
        events
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let body = serde_json::to_string(&e).unwrap();
                let seq = i as u64 + 1;
                let hash = chain_hash(&prev, "s", seq, 1_000_000 + seq, &body);
                let r = AuditRecord {
                    session_id: "s".into(),
                    seq,
                    at_ms: 1_000_000 + seq,
                    body,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                r
            })
            .collect()
    }

    #[test]
    fn asciicast_has_header_output_and_resizes() {
        let recs = records(vec![
            AuditEvent::CommandDecided {
                command_id: 1,
                command: Command {
                    kind: CommandKind::Shell { pty: true },
                    text: "shell".into(),
                    context: vec![],
                },
                verdict: Verdict::allow_by_default(),
            },
            AuditEvent::WindowResized {
                command_id: 1,
                offset_ms: 0,
                cols: 100,
                rows: 30,
            },
            AuditEvent::StreamOutput {
                command_id: 1,
                chunks: vec![StreamChunk {
                    offset_ms: 1500,
                    stream: "stdout".into(),
                    data: "$ ls\r\n".into(),
                }],
            },
            AuditEvent::WindowResized {
                command_id: 1,
                offset_ms: 2000,
                cols: 120,
                rows: 40,
            },
        ]);
        let cast = asciicast(&recs, None).unwrap();
        let lines: Vec<serde_json::Value> = cast
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["version"], 2);
        assert_eq!(lines[0]["width"], 100);
        assert_eq!(lines[0]["height"], 30);
        assert_eq!(lines[1], serde_json::json!([1.5, "o", "$ ls\r\n"]));
        assert_eq!(lines[2], serde_json::json!([2.0, "r", "120x40"]));
        assert!(transcript(&recs).contains("stdout| $ ls"));
    }

    #[test]
    fn transcript_shows_typed_and_hidden_input_as_lines() {
        let chunk = |offset_ms, stream: &str, data: &str| StreamChunk {
            offset_ms,
            stream: stream.into(),
            data: data.into(),
        };
        let recs = records(vec![AuditEvent::StreamOutput {
            command_id: 1,
            chunks: vec![
                chunk(0, "stdout", "$ "),
                chunk(1, "stdin", "l"),
                chunk(1, "stdout", "l"),
                chunk(2, "stdin", "s\r"),
                chunk(2, "stdout", "s\r\nfile\r\nPassword: "),
                chunk(3, "stdin_hidden", "•••\r"),
                chunk(4, "stdout", "\r\n"),
            ],
        }]);
        let t = transcript(&recs);
        assert!(t.contains("[1] typed| ls\n"), "{t}");
        assert!(t.contains("[1] stdout| $ ls\n"), "{t}");
        assert!(t.contains("[1] stdout| file\n"), "{t}");
        assert!(t.contains("[1] typed (hidden, echo off)| •••\n"), "{t}");
        assert!(t.contains("[1] stdout| Password: \n"), "{t}");
    }
}
