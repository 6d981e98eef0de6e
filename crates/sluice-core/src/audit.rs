//! Audit events, the per-session hash chain, and the `Store` trait that keeps them.
//!
//! Every session is an append-only chain of records; each record's hash covers
//! the previous hash, its sequence number and its canonical JSON body, so a
//! changed, removed or reordered record breaks the chain at that point.

use crate::model::{Command, Identity, Outcome, Protocol, Verdict};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub(crate) mod bounds;
mod checkpoint;
mod recorder;
pub use bounds::{
    command_fits_a_record, text_fits_a_record, MAX_COMMAND_RECORD, RECORD_LIMIT_RULE,
};
pub use checkpoint::{
    compare as compare_checkpoint, default_key_path as default_checkpoint_key_path, log_hash,
    publish as publish_checkpoint, Checkpoint, CheckpointError, CheckpointMatch, CheckpointSigner,
    CheckpointSink, TreeHead, EMPTY_ROOT,
};
pub use recorder::{StreamRecorder, STDIN, STDIN_HIDDEN};

/// The hash a session chain starts from.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Something worth keeping about a session.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    SessionStart {
        identity: Identity,
        connection: String,
        protocol: Protocol,
        client_addr: String,
    },
    /// Written durably before the command may reach the target.
    CommandDecided {
        command_id: u64,
        command: Command,
        verdict: Verdict,
    },
    CommandFinished {
        command_id: u64,
        outcome: Outcome,
    },
    /// A review rule opened an approval request for a command.
    ApprovalRequested {
        approval_id: String,
        command_id: u64,
        rule: String,
        approvers: Vec<String>,
        mode: crate::approval::ReviewMode,
        expires_at_ms: u64,
        /// The command as the approvers are shown it (its context included),
        /// durable before anyone decides: a command whose client leaves, or
        /// whose gateway stops, while it waits is still on record.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        command: Option<crate::model::Command>,
    },
    /// An approver (or the clock) decided a request.
    ApprovalDecided {
        approval_id: String,
        state: crate::approval::ApprovalState,
        by: String,
        reason: Option<String>,
    },
    SessionEnd {
        reason: String,
    },
    /// What a command's streams carried (terminal output, exec stdout and
    /// stderr, optionally input), in batches written off the data path.
    StreamOutput {
        command_id: u64,
        chunks: Vec<StreamChunk>,
    },
    /// A terminal's size: when it opened (offset 0) and on every change.
    WindowResized {
        command_id: u64,
        /// Milliseconds since the command started.
        offset_ms: u64,
        cols: u32,
        rows: u32,
    },
    /// A file moved by a command (scp, sftp); contents are not recorded.
    FileTransfer {
        command_id: u64,
        path: String,
        /// `upload` (to the target) or `download`.
        direction: String,
        bytes: u64,
    },
}

impl AuditEvent {
    /// The event's name as stored (`session_start`, `command_decided`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            AuditEvent::SessionStart { .. } => "session_start",
            AuditEvent::CommandDecided { .. } => "command_decided",
            AuditEvent::CommandFinished { .. } => "command_finished",
            AuditEvent::ApprovalRequested { .. } => "approval_requested",
            AuditEvent::ApprovalDecided { .. } => "approval_decided",
            AuditEvent::SessionEnd { .. } => "session_end",
            AuditEvent::StreamOutput { .. } => "stream_output",
            AuditEvent::WindowResized { .. } => "window_resized",
            AuditEvent::FileTransfer { .. } => "file_transfer",
        }
    }
}

/// A piece of a recorded stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamChunk {
    /// Milliseconds since the command started.
    pub offset_ms: u64,
    /// `stdout`, `stderr`, `stdin` (typed input the terminal echoed) or
    /// `stdin_hidden` (typed input it did not echo: `•` per character).
    pub stream: String,
    /// The bytes as text (invalid UTF-8 replaced; a character split across
    /// chunks is kept whole).
    pub data: String,
}

/// An event as stored: placed in its session's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub session_id: String,
    pub seq: u64,
    /// Unix time in milliseconds.
    pub at_ms: u64,
    /// Canonical JSON of the `AuditEvent`.
    pub body: String,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditRecord {
    pub fn event(&self) -> Result<AuditEvent, serde_json::Error> {
        serde_json::from_str(&self.body)
    }
}

/// Lowercase hex of `bytes`, as every hash and digest in records is written.
/// The crate's slice encoder: `hex::encode` collects its `String` one `char`
/// at a time, four to six times slower, and this runs several times for every
/// record (its chain hash, the gateway-wide root, a context digest).
pub fn hex_lower(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    match hex::encode_to_slice(bytes, &mut out) {
        Ok(()) => String::from_utf8(out).unwrap_or_else(|_| hex::encode(bytes)),
        // Not reached: the buffer is exactly twice the input.
        Err(_) => hex::encode(bytes),
    }
}

/// The chain hash of one record.
pub fn chain_hash(prev_hash: &str, session_id: &str, seq: u64, at_ms: u64, body: &str) -> String {
    let mut h = Sha256::new();
    for part in [
        prev_hash.as_bytes(),
        session_id.as_bytes(),
        &seq.to_be_bytes(),
        &at_ms.to_be_bytes(),
        body.as_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    hex_lower(&h.finalize())
}

/// What is wrong with a chain, naming the first bad record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainBreak {
    pub session_id: String,
    pub seq: u64,
    pub problem: String,
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "session {} record #{}: {}",
            self.session_id, self.seq, self.problem
        )
    }
}

/// Checks one session's records, in stored order, against the chain and against
/// the head (last seq and hash) the store kept for the session.
pub fn verify_chain(
    session_id: &str,
    records: &[AuditRecord],
    head: Option<(u64, &str)>,
) -> Result<(), ChainBreak> {
    let broken = |seq: u64, problem: String| ChainBreak {
        session_id: session_id.to_string(),
        seq,
        problem,
    };
    let mut prev = GENESIS_HASH.to_string();
    for (i, r) in records.iter().enumerate() {
        let expected_seq = i as u64 + 1;
        if r.seq != expected_seq {
            return Err(broken(
                expected_seq,
                format!("missing or reordered (found #{} in its place)", r.seq),
            ));
        }
        if r.prev_hash != prev {
            return Err(broken(
                r.seq,
                "does not follow the previous record (removed or reordered)".into(),
            ));
        }
        if chain_hash(&r.prev_hash, session_id, r.seq, r.at_ms, &r.body) != r.hash {
            return Err(broken(r.seq, "content changed (hash mismatch)".into()));
        }
        if r.event().is_err() {
            return Err(broken(r.seq, "body is not a valid audit event".into()));
        }
        prev = r.hash.clone();
    }
    if let Some((last_seq, last_hash)) = head {
        let have = records.len() as u64;
        if have < last_seq {
            return Err(broken(
                have + 1,
                format!("missing: the chain ends at #{have} but {last_seq} records were written"),
            ));
        }
        if have > last_seq {
            return Err(broken(
                last_seq + 1,
                "not written by the gateway (beyond the recorded head)".into(),
            ));
        }
        if last_seq > 0 && prev != last_hash {
            return Err(broken(
                last_seq,
                "last record differs from the recorded head".into(),
            ));
        }
    }
    Ok(())
}

/// One line of `sluice sessions list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionSummary {
    pub id: String,
    pub subject: String,
    /// The issuer of the identity that opened the session: `subject` is
    /// theirs there (the same name at another provider is someone else).
    #[serde(default)]
    pub issuer: String,
    pub groups: Vec<String>,
    pub connection: String,
    pub protocol: String,
    pub client_addr: String,
    /// Unix milliseconds.
    pub started_at_ms: u64,
    pub ended_at_ms: Option<u64>,
    pub end_reason: Option<String>,
    pub commands: u64,
    /// The gateway node that served it (a shared store); empty for the embedded store.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
}

/// The outcome of `sluice audit verify`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub sessions: u64,
    pub records: u64,
    pub first_break: Option<ChainBreak>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("audit store unavailable: {0}")]
    Unavailable(String),
    /// The backend failed; its error is kept as the source.
    #[error("audit store unavailable: {context}: {source}")]
    Backend {
        context: String,
        #[source]
        source: crate::session::BoxError,
    },
    #[error("audit store is shut down")]
    Closed,
    #[error("no session {0}")]
    UnknownSession(String),
}

impl StoreError {
    /// The backend failed while doing `context`.
    pub fn backend(
        context: impl Into<String>,
        source: impl Into<crate::session::BoxError>,
    ) -> Self {
        StoreError::Backend {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// Durable storage of sessions and their audit chains.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Appends an event and returns once it is durable (write-ahead audit).
    async fn append(&self, session_id: &str, event: AuditEvent) -> Result<(), StoreError>;
    /// Appends in order without waiting (outcomes, a session end from `Drop`).
    /// A failure here makes the next `append` fail, so the session fails closed.
    fn append_background(&self, session_id: &str, event: AuditEvent);
    async fn sessions(&self) -> Result<Vec<SessionSummary>, StoreError>;
    /// One session's summary (`None`: no such session). Stores with many
    /// sessions look it up by id.
    async fn session(&self, id: &str) -> Result<Option<SessionSummary>, StoreError> {
        Ok(self.sessions().await?.into_iter().find(|s| s.id == id))
    }
    async fn session_records(&self, session_id: &str) -> Result<Vec<AuditRecord>, StoreError>;
    async fn verify(&self) -> Result<VerifyReport, StoreError>;
    /// Whether the store takes records now (a readiness probe): an error
    /// says why not. Commands fail closed while it is not.
    async fn ready(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answers, computed outside Rust (Python's hashlib over the same
    /// length-prefixed parts): the written form of a record's hash and of
    /// the gateway-wide root, which journals and checkpoints already hold.
    #[test]
    fn hashes_are_written_as_lowercase_hex_of_sha256() {
        let hash = chain_hash(GENESIS_HASH, "s", 7, 1234, r#"{"type":"x"}"#);
        assert_eq!(
            hash,
            "54dacd7cb3489d33ef533e2ea62a9e1678f34e0987a49c8e441282bcdbb3e880"
        );
        assert_eq!(
            checkpoint::log_hash(GENESIS_HASH, &hash),
            "5de141d7588b3c54ba9a2e6fe5aadb38b4681651219e7ea6c98376096fc9656e"
        );
        for bytes in [&[][..], &[0x00, 0x0f, 0xa0, 0xff][..]] {
            assert_eq!(hex_lower(bytes), hex::encode(bytes));
        }
    }

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH.to_string();
        (1..=n)
            .map(|seq| {
                let body = serde_json::to_string(&AuditEvent::SessionEnd {
                    reason: format!("r{seq}"),
                })
                .unwrap();
                let hash = chain_hash(&prev, "s", seq, 1000 + seq, &body);
                let r = AuditRecord {
                    session_id: "s".into(),
                    seq,
                    at_ms: 1000 + seq,
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
    fn intact_chain_verifies() {
        let c = chain(3);
        verify_chain("s", &c, Some((3, &c[2].hash))).unwrap();
    }

    #[test]
    fn changed_byte_is_named() {
        let mut c = chain(3);
        c[1].body = c[1].body.replace("r2", "r9");
        let b = verify_chain("s", &c, None).unwrap_err();
        assert_eq!(b.seq, 2);
        assert!(b.problem.contains("changed"));
    }

    #[test]
    fn removed_and_reordered_records_are_named() {
        let c = chain(4);
        let mut removed = c.clone();
        removed.remove(1);
        assert_eq!(verify_chain("s", &removed, None).unwrap_err().seq, 2);
        let mut swapped = c.clone();
        swapped.swap(1, 2);
        assert_eq!(verify_chain("s", &swapped, None).unwrap_err().seq, 2);
        let truncated = &c[..3];
        let b = verify_chain("s", truncated, Some((4, &c[3].hash))).unwrap_err();
        assert_eq!(b.seq, 4);
    }
}
