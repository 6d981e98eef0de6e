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
                };
                let decision = match (&verdict.action, &verdict.rule) {
                    (Action::Allow, None) => "allowed".to_string(),
                    (a, Some(rule)) => format!("{a} (rule {rule})"),
                    (a, None) => format!("{a} (default)"),
                };
                let _ = writeln!(out, "{at}  [{command_id}] {how}: {}", command.text.trim());
                let _ = writeln!(out, "{:>26}decision: {decision}", "");
            }
            AuditEvent::CommandFinished {
                command_id,
                outcome,
            } => {
                let pad = format!("{:>26}", "");
                if let Some(e) = &outcome.error {
                    let _ = writeln!(out, "{pad}[{command_id}] client saw error: {e}");
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
                        let _ = writeln!(out, "{pad}  | {}", outcome.columns.join(" | "));
                    }
                    for row in &outcome.sample {
                        let cells: Vec<&str> =
                            row.iter().map(|v| v.as_deref().unwrap_or("NULL")).collect();
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
            } => {
                let _ = writeln!(
                    out,
                    "{at}  [{command_id}] approval {approval_id} requested by rule {rule} ({mode:?} mode; approvers: {}; expires {})",
                    approvers.join(", "),
                    time(expires_at_ms)
                );
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
                    reason.map(|r| format!(": {r}")).unwrap_or_default()
                );
            }
            AuditEvent::SessionEnd { reason } => {
                let _ = writeln!(out, "{at}  session ended: {reason}");
            }
        }
    }
    out
}
