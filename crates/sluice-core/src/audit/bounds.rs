//! How large a record may grow from what a client sends or an upstream
//! answers. JSON writes most control characters as 6-byte escapes, so
//! unbounded, one 64 MiB query of them made a 384 MiB record, serialised,
//! journaled and indexed whole, and an upstream's error echoing a value
//! could make one of gigabytes: an agent could make the gateway allocate
//! gigabytes with a few sessions. A decided command over the bound is
//! refused (whichever stage decided it) and recorded abridged; a stage's
//! message and a command's outcome are cut to sizes that name them.

use crate::model::{Action, Command, CommandKind, Outcome, Verdict};
use sha2::{Digest, Sha256};

/// The most a command's record may hold, as JSON: twice the largest message
/// a protocol reads (PostgreSQL's 64 MiB).
pub const MAX_COMMAND_RECORD: usize = 128 << 20;

/// The rule an oversized command is refused under.
pub const RECORD_LIMIT_RULE: &str = "sluice:record-limit";

/// How much of a refused oversized command's text its record keeps.
const ABRIDGED_TEXT: usize = 4096;
/// How much of each name a client chose (statement, path, completion tag).
const ABRIDGED_NAME: usize = 256;
/// How much of a denial's message or an outcome's error a record keeps (a
/// parser's error may quote the rest of the input; an upstream's error may
/// echo a value of any length).
const MAX_MESSAGE: usize = 4096;
/// The text an outcome's sample of rows may hold in all.
const MAX_SAMPLE: usize = 256 << 10;

/// Whether a command with `text` can fit a record: when not, it will be
/// refused unjudged, and a protocol need not analyse it first (PostgreSQL's
/// parse tree of such text is itself several times its size).
pub fn text_fits_a_record(text: &str) -> bool {
    json_len_over(&text, text.len(), MAX_COMMAND_RECORD).is_none()
}

/// Whether `command` can fit a record: when not, it will be refused
/// unjudged (its text, context and names all count).
pub fn command_fits_a_record(command: &Command) -> bool {
    record_len_over(command, MAX_COMMAND_RECORD).is_none()
}

/// The command and verdict to record for a decision: as decided, the
/// verdict's message cut to a bound; or, when the command's record would be
/// over `limit`, the command abridged and refused under
/// [`RECORD_LIMIT_RULE`] whatever was decided.
pub(crate) fn recordable(
    command: Command,
    mut verdict: Verdict,
    limit: usize,
) -> (Command, Verdict) {
    if let Some(len) = record_len_over(&command, limit) {
        return (abridged(&command), too_large_to_record(len, limit));
    }
    bound_message(&mut verdict);
    (command, verdict)
}

/// Cuts a verdict's message to [`MAX_MESSAGE`] (a stage's reason may quote
/// the command: a parse error).
pub(crate) fn bound_message(verdict: &mut Verdict) {
    if let Some(message) = &mut verdict.message {
        abridge(message, MAX_MESSAGE);
    }
}

/// The length of `command` as JSON when it is over `limit`, or at least
/// `limit + 1` (the count stops there); `None` when it fits.
pub(crate) fn record_len_over(command: &Command, limit: usize) -> Option<usize> {
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

/// The command an approval request holds, as its `approval_requested`
/// record keeps it: abridged like any command over a record's bound.
pub(crate) fn held_command(request: &crate::approval::ApprovalRequest) -> Command {
    let command = Command {
        kind: request
            .kind
            .clone()
            .unwrap_or(crate::model::CommandKind::Exec),
        text: request.command.clone(),
        context: request.context.clone(),
    };
    if command_fits_a_record(&command) {
        command
    } else {
        abridged(&command)
    }
}

/// What is recorded of an oversized command: the start of its text, and
/// the length and SHA-256 of its text and of its context (definitions it
/// referred to), so that the record still names exactly what was refused.
pub(crate) fn abridged(command: &Command) -> Command {
    let text = &command.text;
    let mut kind = command.kind.clone();
    for name in kind_strings(&mut kind) {
        abridge(name, ABRIDGED_NAME);
    }
    let context = if command.context.is_empty() {
        String::new()
    } else {
        let mut digest = Sha256::new();
        let mut bytes = 0;
        for entry in &command.context {
            // Lengths first, so that entries cannot be regrouped unseen.
            digest.update((entry.len() as u64).to_be_bytes());
            digest.update(entry.as_bytes());
            bytes += entry.len();
        }
        format!(
            "; its context is {} entries of {bytes} bytes, SHA-256 {}",
            command.context.len(),
            hex::encode(digest.finalize())
        )
    };
    Command {
        kind,
        text: format!(
            "{}… [abridged by sluice: the text is {} bytes, SHA-256 {}{context}; refused unrun]",
            prefix(text, ABRIDGED_TEXT),
            text.len(),
            hex::encode(Sha256::digest(text.as_bytes()))
        ),
        context: Vec::new(),
    }
}

/// Cuts `s` to its first `max` bytes, then its length and SHA-256, when it
/// is longer.
fn abridge(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    *s = format!(
        "{}… [abridged by sluice: {} bytes, SHA-256 {}]",
        prefix(s, max),
        s.len(),
        hex::encode(Sha256::digest(s.as_bytes()))
    );
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

pub(crate) fn too_large_to_record(len: usize, limit: usize) -> Verdict {
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

/// An outcome as recorded: its error and tag cut to a bound, its sample of
/// rows to [`MAX_SAMPLE`] bytes of text (`truncated` then set).
pub(crate) fn bound_outcome(outcome: &mut Outcome) {
    if let Some(error) = &mut outcome.error {
        abridge(error, MAX_MESSAGE);
    }
    if let Some(tag) = &mut outcome.tag {
        abridge(tag, ABRIDGED_NAME);
    }
    for column in &mut outcome.columns {
        abridge(column, ABRIDGED_NAME);
    }
    let mut budget = MAX_SAMPLE;
    let keep = outcome
        .sample
        .iter()
        .take_while(|row| {
            let len: usize = row.iter().flatten().map(String::len).sum();
            let fits = len <= budget;
            budget = budget.saturating_sub(len);
            fits
        })
        .count();
    if keep < outcome.sample.len() {
        outcome.sample.truncate(keep);
        outcome.truncated = true;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn outcomes_are_cut_to_their_bounds() {
        let echoed = "\u{1}".repeat(1 << 20);
        let mut outcome = Outcome {
            error: Some(format!(
                "invalid input syntax for type integer: \"{echoed}\""
            )),
            tag: Some("x".repeat(10_000)),
            sample: vec![vec![Some("y".repeat(MAX_SAMPLE / 2)), None]; 5],
            columns: vec!["c".repeat(1_000)],
            ..Outcome::default()
        };
        let full_error = outcome.error.clone().unwrap();
        bound_outcome(&mut outcome);
        let error = outcome.error.as_deref().unwrap();
        assert!(error.len() < MAX_MESSAGE + 200, "{}", error.len());
        assert!(error.starts_with("invalid input syntax"), "{error:?}");
        assert!(
            error.contains(&hex::encode(Sha256::digest(full_error.as_bytes()))),
            "{error:?}"
        );
        assert!(outcome.tag.as_deref().unwrap().len() < ABRIDGED_NAME + 200);
        assert!(outcome.columns[0].len() < ABRIDGED_NAME + 200);
        assert_eq!(
            outcome.sample.len(),
            2,
            "rows that fill 256 KiB exactly are kept"
        );
        assert!(outcome.truncated);
        // Within bounds: untouched.
        let mut small = Outcome {
            error: Some("division by zero".into()),
            sample: vec![vec![Some("1".into())]],
            ..Outcome::default()
        };
        bound_outcome(&mut small);
        assert_eq!(small.error.as_deref(), Some("division by zero"));
        assert_eq!(small.sample.len(), 1);
        assert!(!small.truncated);
    }

    #[test]
    fn an_oversized_command_keeps_digests_of_its_text_and_context() {
        let command = Command {
            kind: CommandKind::SqlSimple,
            text: "execute a".into(),
            context: vec!["a\0select 1".into(); 3],
        };
        let (recorded, verdict) = recordable(command.clone(), Verdict::allow_by_default(), 16);
        assert_eq!(verdict.rule.as_deref(), Some(RECORD_LIMIT_RULE));
        assert_eq!(verdict.action, Action::Deny);
        assert!(recorded.context.is_empty());
        assert!(
            recorded.text.contains("3 entries of 30 bytes"),
            "{}",
            recorded.text
        );
        let (kept, verdict) = recordable(command.clone(), Verdict::allow_by_default(), 1 << 20);
        assert_eq!(kept.context, command.context);
        assert_eq!(verdict.action, Action::Allow);
    }
}
