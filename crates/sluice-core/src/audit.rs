//! Audit events, the per-session hash chain, and the `Store` trait that keeps them.
//!
//! Every session is an append-only chain of records; each record's hash covers
//! the previous hash, its sequence number and its canonical JSON body, so a
//! changed, removed or reordered record breaks the chain at that point.

use crate::model::{Command, Identity, Outcome, Protocol, Verdict};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

/// A piece of a recorded stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamChunk {
    /// Milliseconds since the command started.
    pub offset_ms: u64,
    /// `stdout`, `stderr` or `stdin`.
    pub stream: String,
    /// The bytes as text (invalid UTF-8 replaced; a character split across
    /// chunks is kept whole).
    pub data: String,
}

/// Records one command's streams through `Store::append_background`,
/// batched: a chunk costs a copy into a buffer; a batch is written when it
/// reaches [`StreamRecorder::BATCH_BYTES`], when it is older than
/// [`StreamRecorder::BATCH_AGE`] at the next event, or on [`flush`](Self::flush)/drop.
pub struct StreamRecorder {
    store: std::sync::Arc<dyn Store>,
    session_id: String,
    command_id: u64,
    started: std::time::Instant,
    chunks: Vec<StreamChunk>,
    buffered: usize,
    oldest: Option<std::time::Instant>,
    /// Incomplete UTF-8 sequences at the end of the last chunk, per stream.
    carry: Vec<(String, Vec<u8>)>,
    /// Bytes per stream not recorded once `limit` was reached.
    limit: Option<u64>,
    recorded: u64,
    skipped: u64,
}

impl std::fmt::Debug for StreamRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamRecorder")
            .field("session", &self.session_id)
            .field("command_id", &self.command_id)
            .finish()
    }
}

impl StreamRecorder {
    pub const BATCH_BYTES: usize = 64 * 1024;
    pub const BATCH_AGE: std::time::Duration = std::time::Duration::from_millis(500);

    pub fn new(store: std::sync::Arc<dyn Store>, session_id: &str, command_id: u64) -> Self {
        StreamRecorder {
            store,
            session_id: session_id.to_string(),
            command_id,
            started: std::time::Instant::now(),
            chunks: Vec::new(),
            buffered: 0,
            oldest: None,
            carry: Vec::new(),
            limit: None,
            recorded: 0,
            skipped: 0,
        }
    }

    /// Records at most `bytes` of stream data (then only counts it).
    pub fn with_limit(mut self, bytes: u64) -> Self {
        self.limit = Some(bytes);
        self
    }

    /// Bytes left unrecorded because of the limit.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    fn offset_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Adds bytes of one stream.
    pub fn record(&mut self, stream: &str, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut data = data;
        if let Some(limit) = self.limit {
            let room = limit.saturating_sub(self.recorded) as usize;
            if room < data.len() {
                self.skipped += (data.len() - room) as u64;
                data = &data[..room];
            }
            if data.is_empty() {
                return;
            }
        }
        self.recorded += data.len() as u64;
        let mut bytes = match self.carry.iter().position(|(s, _)| s == stream) {
            Some(i) => self.carry.swap_remove(i).1,
            None => Vec::new(),
        };
        bytes.extend_from_slice(data);
        // Keep an incomplete trailing character for the next chunk.
        let cut = utf8_complete_prefix(&bytes);
        if cut < bytes.len() {
            self.carry.push((stream.to_string(), bytes[cut..].to_vec()));
            bytes.truncate(cut);
        }
        if bytes.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let offset_ms = self.offset_ms();
        self.buffered += text.len();
        match self.chunks.last_mut() {
            // Consecutive output of one stream in the same millisecond is one chunk.
            Some(last) if last.stream == stream && last.offset_ms == offset_ms => {
                last.data.push_str(&text)
            }
            _ => self.chunks.push(StreamChunk {
                offset_ms,
                stream: stream.to_string(),
                data: text,
            }),
        }
        self.oldest.get_or_insert_with(std::time::Instant::now);
        if self.buffered >= Self::BATCH_BYTES
            || self.oldest.is_some_and(|t| t.elapsed() >= Self::BATCH_AGE)
        {
            self.flush();
        }
    }

    /// Records a terminal size (call once when the terminal opens).
    pub fn resize(&mut self, cols: u32, rows: u32) {
        self.flush();
        self.store.append_background(
            &self.session_id,
            AuditEvent::WindowResized {
                command_id: self.command_id,
                offset_ms: self.offset_ms(),
                cols,
                rows,
            },
        );
    }

    /// Writes what is buffered.
    pub fn flush(&mut self) {
        if self.chunks.is_empty() {
            return;
        }
        let chunks = std::mem::take(&mut self.chunks);
        self.buffered = 0;
        self.oldest = None;
        self.store.append_background(
            &self.session_id,
            AuditEvent::StreamOutput {
                command_id: self.command_id,
                chunks,
            },
        );
    }
}

impl Drop for StreamRecorder {
    fn drop(&mut self) {
        for (stream, bytes) in std::mem::take(&mut self.carry) {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            self.chunks.push(StreamChunk {
                offset_ms: self.offset_ms(),
                stream,
                data: text,
            });
        }
        self.flush();
    }
}

/// Length of the longest prefix that does not end inside a UTF-8 character.
fn utf8_complete_prefix(b: &[u8]) -> usize {
    let n = b.len();
    // Look back at most 3 bytes for the start of an unfinished character.
    for back in 1..=3.min(n) {
        let c = b[n - back];
        if c & 0b1100_0000 == 0b1000_0000 {
            continue;
        }
        let want = match c {
            c if c & 0b1110_0000 == 0b1100_0000 => 2,
            c if c & 0b1111_0000 == 0b1110_0000 => 3,
            c if c & 0b1111_1000 == 0b1111_0000 => 4,
            _ => return n,
        };
        return if back < want { n - back } else { n };
    }
    n
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
    hex::encode(h.finalize())
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
    pub groups: Vec<String>,
    pub connection: String,
    pub protocol: String,
    pub client_addr: String,
    /// Unix milliseconds.
    pub started_at_ms: u64,
    pub ended_at_ms: Option<u64>,
    pub end_reason: Option<String>,
    pub commands: u64,
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
    #[error("audit store is shut down")]
    Closed,
    #[error("no session {0}")]
    UnknownSession(String),
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
    async fn session_records(&self, session_id: &str) -> Result<Vec<AuditRecord>, StoreError>;
    async fn verify(&self) -> Result<VerifyReport, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn recorder_keeps_split_characters_whole_and_batches() {
        let store = std::sync::Arc::new(crate::testing::MemoryStore::default());
        {
            let mut r = StreamRecorder::new(store.clone(), "s", 7);
            r.resize(80, 24);
            let euro = "a€b".as_bytes();
            r.record("stdout", &euro[..2]);
            r.record("stdout", &euro[2..]);
            r.record("stderr", b"oops");
        }
        let events = store.events.lock().unwrap();
        let mut text = String::new();
        for (_, e) in events.iter() {
            if let AuditEvent::StreamOutput { chunks, .. } = e {
                for c in chunks {
                    if c.stream == "stdout" {
                        text.push_str(&c.data);
                    }
                }
            }
        }
        assert_eq!(text, "a€b");
        assert!(matches!(
            events[0].1,
            AuditEvent::WindowResized { cols: 80, .. }
        ));
        // One batch for all three chunks.
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn recorder_limit_counts_what_it_skips() {
        let store = std::sync::Arc::new(crate::testing::MemoryStore::default());
        let mut r = StreamRecorder::new(store.clone(), "s", 1).with_limit(4);
        r.record("stdout", b"abcdef");
        assert_eq!(r.skipped(), 2);
    }

    #[test]
    fn utf8_prefix() {
        assert_eq!(utf8_complete_prefix(b"abc"), 3);
        assert_eq!(utf8_complete_prefix(&"€".as_bytes()[..2]), 0);
        assert_eq!(utf8_complete_prefix("a€".as_bytes()), 4);
        assert_eq!(utf8_complete_prefix(b"\xff"), 1);
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
