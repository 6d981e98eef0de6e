//! The outermost stage: write-ahead audit. The decided command is durable in
//! the store before the protocol may forward it; if the store cannot take it,
//! the command is refused.

use super::{CommandRequest, PipelineError, VerdictService};
use crate::audit::{AuditEvent, Store, StoreError};
use crate::model::{Action, Command, CommandKind, Decision, Denial, Verdict};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service, ServiceExt};
use tracing::Instrument;

/// The most a command's record may hold, as JSON: twice the largest message
/// a protocol reads (PostgreSQL's 64 MiB). JSON writes most control
/// characters as 6-byte escapes, so unbounded, one 64 MiB query of them made
/// a 384 MiB record, serialised, journaled and indexed whole: an agent could
/// make the gateway allocate gigabytes with a few sessions. A command over
/// the bound is refused before any stage judges it, and recorded abridged.
pub const MAX_COMMAND_RECORD: usize = 128 << 20;

/// How much of a refused oversized command's text its record keeps.
const ABRIDGED_TEXT: usize = 4096;
/// How much of each name in its kind (statement, path).
const ABRIDGED_NAME: usize = 256;

/// The rule an oversized command is refused under.
pub const RECORD_LIMIT_RULE: &str = "sluice:record-limit";

#[derive(Clone)]
pub struct AuditLayer {
    store: Arc<dyn Store>,
    record_limit: usize,
}

impl AuditLayer {
    pub fn new(store: Arc<dyn Store>) -> Self {
        AuditLayer {
            store,
            record_limit: MAX_COMMAND_RECORD,
        }
    }

    /// A bound other than [`MAX_COMMAND_RECORD`] (tests).
    pub fn with_record_limit(mut self, bytes: usize) -> Self {
        self.record_limit = bytes;
        self
    }
}

impl Layer<VerdictService> for AuditLayer {
    type Service = AuditService;
    fn layer(&self, inner: VerdictService) -> AuditService {
        AuditService {
            store: self.store.clone(),
            record_limit: self.record_limit,
            inner,
        }
    }
}

/// The assembled pipeline a protocol calls once per command.
#[derive(Clone)]
pub struct AuditService {
    store: Arc<dyn Store>,
    record_limit: usize,
    inner: VerdictService,
}

impl std::fmt::Debug for AuditService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditService")
    }
}

impl Service<CommandRequest> for AuditService {
    type Response = Decision;
    type Error = StoreError;
    type Future = Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), StoreError>> {
        // Readiness of the inner stages is awaited per call (`oneshot`), so a
        // slow stage cannot wedge the audit layer.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: CommandRequest) -> Self::Future {
        let store = self.store.clone();
        let inner = self.inner.clone();
        let record_limit = self.record_limit;
        let span = tracing::info_span!(
            "command",
            session = %req.session.id,
            command_id = req.command_id,
            verdict = tracing::field::Empty,
            rule = tracing::field::Empty,
        );
        Box::pin(
            async move {
                let session_id = req.session.id.clone();
                let command_id = req.command_id;
                let (protocol, connection) = (req.session.protocol, req.session.connection.clone());
                let (command, verdict) = match record_len_over(&req.command, record_limit) {
                    // Never judged: an approval would hold, and a webhook
                    // carry, what the record cannot.
                    Some(len) => (
                        abridged(&req.command),
                        too_large_to_record(len, record_limit),
                    ),
                    None => {
                        let command = (*req.command).clone();
                        match inner.oneshot(req).await {
                            Ok(v) => (command, v),
                            // A stage that cannot decide must fail closed.
                            Err(e) => {
                                crate::metrics::error(protocol, "internal", "pipeline");
                                (command, failed_closed(&e))
                            }
                        }
                    }
                };
                let current = tracing::Span::current();
                current.record("verdict", tracing::field::display(verdict.action));
                if let Some(rule) = &verdict.rule {
                    current.record("rule", rule.as_str());
                }
                let stored = store
                    .append(
                        &session_id,
                        AuditEvent::CommandDecided {
                            command_id,
                            command,
                            verdict: verdict.clone(),
                        },
                    )
                    .await;
                if let Err(e) = stored {
                    crate::metrics::error(protocol, "internal", "store");
                    return Err(e);
                }
                crate::metrics::command_decided(
                    protocol,
                    &connection,
                    verdict.action,
                    verdict.rule.as_deref(),
                );
                Ok(match verdict.action {
                    Action::Allow => Decision::Forward { command_id },
                    _ => Decision::Refuse {
                        command_id,
                        denial: denial_for(&verdict),
                    },
                })
            }
            .instrument(span),
        )
    }
}

/// Whether a command with `text` can fit a record: when not, it will be
/// refused unjudged, and a protocol need not analyse it first (PostgreSQL's
/// parse tree of such text is itself several times its size).
pub fn text_fits_a_record(text: &str) -> bool {
    json_len_over(&text, text.len(), MAX_COMMAND_RECORD).is_none()
}

/// The length of `command` as JSON when it is over `limit`, or at least
/// `limit + 1` (the count stops there); `None` when it fits.
fn record_len_over(command: &Command, limit: usize) -> Option<usize> {
    // The kind's strings (a statement name, a path) are counted exactly:
    // they are short, except from a hostile client.
    let mut counter = Counter { len: 0, limit };
    if serde_json::to_writer(&mut counter, &command.kind).is_err() {
        return Some(counter.len);
    }
    let raw = command.text.len() + command.context.iter().map(String::len).sum::<usize>();
    json_len_over(command, raw.saturating_add(counter.len), limit)
}

/// [`record_len_over`] for any value whose strings total `raw` bytes at
/// most (escapes excluded).
fn json_len_over(value: &impl serde::Serialize, raw: usize, limit: usize) -> Option<usize> {
    // An escape is at most 6 bytes (`\u001f`): short values fit uncounted.
    if raw.saturating_mul(6).saturating_add(1024) <= limit {
        return None;
    }
    let mut counter = Counter { len: 0, limit };
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) if counter.len <= limit => None,
        _ => Some(counter.len),
    }
}

/// Counts what is written, failing past `limit` so the count stops early.
struct Counter {
    len: usize,
    limit: usize,
}

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.len += buf.len();
        if self.len > self.limit {
            return Err(std::io::Error::other("over the record limit"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What is recorded of an oversized command: the start of its text, its
/// length and the SHA-256 of the whole text, so that the record still names
/// exactly what was refused. Definitions it referred to are left out: it
/// was judged by its size alone.
fn abridged(command: &Command) -> Command {
    let text = &command.text;
    let mut kind = command.kind.clone();
    for name in kind_strings(&mut kind) {
        if name.len() > ABRIDGED_NAME {
            *name = format!("{}…", prefix(name, ABRIDGED_NAME));
        }
    }
    Command {
        kind,
        text: format!(
            "{}… [abridged by sluice: the text is {} bytes, SHA-256 {}; refused unrun]",
            prefix(text, ABRIDGED_TEXT),
            text.len(),
            hex::encode(Sha256::digest(text.as_bytes()))
        ),
        context: Vec::new(),
    }
}

/// At most `max` bytes of the start of `s`, cut at a character boundary.
fn prefix(s: &str, max: usize) -> &str {
    let mut cut = max.min(s.len());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// The strings a command's kind holds, which a client chose.
fn kind_strings(kind: &mut CommandKind) -> Vec<&mut String> {
    match kind {
        CommandKind::SqlSimple
        | CommandKind::FunctionCall { .. }
        | CommandKind::Exec
        | CommandKind::Shell { .. } => Vec::new(),
        CommandKind::SqlExecute { statement, portal } => vec![statement, portal],
        CommandKind::HttpRequest { method, path } => vec![method, path],
        CommandKind::KubeRequest {
            method,
            path,
            verb,
            resource,
            namespace,
            name,
        } => {
            let mut all = vec![method, path, verb, resource];
            all.extend(namespace.as_mut());
            all.extend(name.as_mut());
            all
        }
        CommandKind::Subsystem { name } => vec![name],
        CommandKind::Forward { kind } => vec![kind],
        CommandKind::Other { operation } => vec![operation],
    }
}

fn too_large_to_record(len: usize, limit: usize) -> Verdict {
    let mib = |n: usize| n as f64 / f64::from(1 << 20);
    Verdict {
        action: Action::Deny,
        rule: Some(RECORD_LIMIT_RULE.to_string()),
        message: Some(format!(
            "the command's audit record would be over {:.1} MiB (a record holds at most {:.0} MiB; \
             control characters count six bytes each); it was not run. Split it into \
             smaller commands",
            mib(len),
            mib(limit)
        )),
    }
}

fn failed_closed(e: &PipelineError) -> Verdict {
    tracing::warn!(message = "A pipeline stage failed; denying the command.", stage = e.stage, reason = %e.reason);
    Verdict {
        action: Action::Deny,
        rule: Some(format!("sluice:{}-error", e.stage)),
        message: Some(format!(
            "the gateway could not evaluate this command ({e}); it was not run"
        )),
    }
}

/// What the caller reads: the rule, its message, and what to do next.
pub fn denial_for(verdict: &Verdict) -> Denial {
    let rule = verdict.rule.clone();
    let message = match (&rule, &verdict.message) {
        (Some(r), Some(m)) => format!("command denied by rule {r:?}: {m}"),
        (Some(r), None) => format!("command denied by rule {r:?}"),
        (None, Some(m)) => format!("command denied: {m}"),
        (None, None) => "command denied by the connection's default policy".to_string(),
    };
    let hint = Some(match verdict.action {
        Action::Review => "This command needs approval; ask an approver to run `sluice approvals approve ID`.".to_string(),
        _ => "The command was not run. Change the command to stay within policy, or ask a Sluice administrator about this rule.".to_string(),
    });
    Denial {
        rule,
        message,
        hint,
    }
}
