//! The node's writer: one task that chains records and commits them in
//! batches, one transaction for the records of all sessions queued meanwhile
//! (group commit). A durable append's caller waits for its batch's commit.
//!
//! The chain heads of live sessions are cached; the store's row is the
//! truth, and every update is conditional on the head the batch chained
//! from, so a head changed behind the cache (a survivor ended the session
//! while this node was paused) fails the batch instead of forking the chain.

use super::{backend, nodes, PgTarget, QUERY_TIMEOUT};
use sluice_core::audit::{
    chain_hash, AuditEvent, AuditRecord, SessionSummary, StoreError, GENESIS_HASH,
};
use sluice_core::config::AuditSync;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, Statement};

/// Records per transaction, at most, and bytes (roughly): a batch must
/// commit well within the query deadline.
const MAX_BATCH: usize = 1024;
const MAX_BATCH_BYTES: usize = 4 << 20;
/// Bytes (roughly) of records queued and not yet committed beyond which the
/// node fails closed: durable appends are refused (their commands with
/// them), background records dropped loudly, and readiness fails.
pub(super) const MAX_BACKLOG: usize = 64 << 20;

/// The writer's state as the rest of the store sees it.
#[derive(Default)]
pub(super) struct Health {
    /// Bytes of records queued and not yet committed.
    pub backlog: AtomicUsize,
    /// The last batch failed (the store is unreachable or refuses writes).
    pub failing: AtomicBool,
}

/// A record's size for the backlog (what dominates: streamed output, text).
pub(super) fn weight(event: &Option<AuditEvent>) -> usize {
    match event {
        Some(AuditEvent::StreamOutput { chunks, .. }) => {
            chunks.iter().map(|c| c.data.len() + 64).sum::<usize>() + 128
        }
        Some(AuditEvent::CommandDecided { command, .. }) => command.text.len() + 512,
        _ => 256,
    }
}
/// Background records (outputs, session ends) kept for a store that is
/// down; beyond this the oldest are dropped, loudly.
const MAX_CARRIED: usize = 100_000;
/// The pause before retrying a failed batch's background records.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// A record for the writer. `event: None` asks when everything queued
/// before it is committed (`PgStore::flush`).
pub(super) struct Pending {
    pub session_id: String,
    pub event: Option<AuditEvent>,
    pub at_ms: u64,
    /// The waiting caller of a durable append; `None` for a background one.
    pub done: Option<oneshot::Sender<Result<(), StoreError>>>,
    /// `weight(&event)`, counted in the backlog until written or refused.
    pub size: usize,
}

/// The writer's own connection (it holds the node's claim), reopened and
/// re-claimed when it breaks, with the batch statement prepared on it.
pub(super) struct Connection {
    target: PgTarget,
    node: String,
    sync: AuditSync,
    /// The claimed connection `PgStore::open` made, until first used.
    fresh: Option<Client>,
    client: Option<(Client, Statement)>,
}

impl Connection {
    pub(super) fn new(target: PgTarget, node: String, sync: AuditSync, client: Client) -> Self {
        Connection {
            target,
            node,
            sync,
            fresh: Some(client),
            client: None,
        }
    }

    /// The connection and the batch statement: connecting, claiming and
    /// preparing when needed. Under `audit_sync = "normal"` a commit returns
    /// once the store has the records, before its WAL is flushed (records
    /// survive a gateway crash, as with the embedded journal's write);
    /// `full` waits for the flush.
    async fn prepared(&mut self) -> Result<(&Client, &Statement), StoreError> {
        if self.client.as_ref().is_none_or(|(c, _)| c.is_closed()) {
            self.client = None;
            let client = match self.fresh.take().filter(|c| !c.is_closed()) {
                Some(c) => c,
                None => {
                    let c = self.target.connect().await?;
                    nodes::claim(&c, &self.node, &self.target).await?;
                    tracing::info!(message = "Reconnected to the PostgreSQL store.", store = ?self.target);
                    c
                }
            };
            if self.sync == AuditSync::Normal {
                client
                    .batch_execute("SET synchronous_commit = off")
                    .await
                    .map_err(backend)?;
            }
            let statement = client.prepare(BATCH_SQL).await.map_err(backend)?;
            self.client = Some((client, statement));
        }
        let (client, statement) = self
            .client
            .as_ref()
            .ok_or_else(|| self.target.unreachable("not connected"))?;
        Ok((client, statement))
    }
}

/// One batch in one statement (atomic on its own, one round trip): the
/// sessions it starts, its records, and every other session's head moved
/// only from the head the batch chained from. When a head moved meanwhile
/// the final division fails the statement, and nothing of it is written.
const BATCH_SQL: &str = "
WITH starts AS (
    INSERT INTO sluice_sessions (id, node, subject, issuer, groups_json, connection, protocol,
        client_addr, started_at_ms, last_seq, head_hash, commands, ended_at_ms, end_reason)
    SELECT u.id, $1, u.subject, u.issuer, u.groups, u.conn, u.proto, u.addr, u.started,
        u.seq, u.hash, u.commands, u.ended, u.reason
    FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
        $8::text[], $9::int8[], $10::int8[], $11::text[], $12::int8[], $13::int8[], $14::text[])
        AS u(id, subject, issuer, groups, conn, proto, addr, started, seq, hash, commands, ended, reason)
), records AS (
    INSERT INTO sluice_records (session_id, seq, at_ms, node, kind, body, prev_hash, hash)
    SELECT u.sid, u.seq, u.at, $1, u.kind, u.body, u.prev, u.hash
    FROM UNNEST($15::text[], $16::int8[], $17::int8[], $18::text[], $19::text[], $20::text[],
        $21::text[]) AS u(sid, seq, at, kind, body, prev, hash)
), heads AS (
    UPDATE sluice_sessions s SET last_seq = u.seq, head_hash = u.hash,
        commands = s.commands + u.commands,
        ended_at_ms = COALESCE(u.ended, s.ended_at_ms),
        end_reason = COALESCE(u.reason, s.end_reason)
    FROM UNNEST($22::text[], $23::int8[], $24::int8[], $25::text[], $26::int8[], $27::int8[],
        $28::text[]) AS u(id, base, seq, hash, commands, ended, reason)
    WHERE s.id = u.id AND s.last_seq = u.base
    RETURNING 1
)
SELECT 1 / (CASE WHEN (SELECT count(*) FROM heads) = $29 THEN 1 ELSE 0 END)";

/// A session's chain as a batch extends it.
struct Tip {
    /// The head in the store before this batch (0 for a session it starts).
    base_seq: i64,
    /// The session is not in the store yet: this batch inserts it.
    new: bool,
    seq: u64,
    hash: String,
    commands: i64,
    ended: Option<(i64, String)>,
}

type Heads = HashMap<String, (u64, String)>;

/// The columns of one batch, as arrays for `UNNEST`.
#[derive(Default)]
struct Rows {
    session: Vec<String>,
    seq: Vec<i64>,
    at: Vec<i64>,
    kind: Vec<&'static str>,
    body: Vec<String>,
    prev: Vec<String>,
    hash: Vec<String>,
}

/// Sessions a batch starts, as arrays for `UNNEST`.
#[derive(Default)]
struct Starts {
    id: Vec<String>,
    subject: Vec<String>,
    issuer: Vec<String>,
    groups: Vec<String>,
    connection: Vec<String>,
    protocol: Vec<String>,
    client_addr: Vec<String>,
    started: Vec<i64>,
    /// The head each started session ends the batch at (`Moved::split`).
    head: HeadColumns,
}

/// Sessions' heads after a batch, as arrays for `UNNEST`.
#[derive(Default)]
struct HeadColumns {
    seq: Vec<i64>,
    hash: Vec<String>,
    commands: Vec<i64>,
    ended: Vec<Option<i64>>,
    reason: Vec<Option<String>>,
}

impl HeadColumns {
    fn push(&mut self, seq: i64, hash: &str, commands: i64, ended: Option<(i64, &str)>) {
        self.seq.push(seq);
        self.hash.push(hash.to_string());
        self.commands.push(commands);
        self.ended.push(ended.map(|(at, _)| at));
        self.reason.push(ended.map(|(_, r)| r.to_string()));
    }

    fn push_tip(&mut self, tip: &Tip) {
        let ended = tip.ended.as_ref().map(|(at, r)| (*at, r.as_str()));
        self.push(tip.seq as i64, &tip.hash, tip.commands, ended);
    }
}

impl Starts {
    fn push(&mut self, id: &str, event: &AuditEvent, at_ms: u64) {
        let AuditEvent::SessionStart {
            identity,
            connection,
            protocol,
            client_addr,
        } = event
        else {
            return;
        };
        self.id.push(id.to_string());
        self.subject.push(identity.subject.clone());
        self.issuer.push(identity.issuer.clone());
        self.groups
            .push(serde_json::to_string(&identity.groups).unwrap_or_default());
        self.connection.push(connection.clone());
        self.protocol.push(protocol.to_string());
        self.client_addr.push(client_addr.clone());
        self.started.push(at_ms as i64);
    }
}

/// A batch failed as a whole: why, and whether a fresh read of the heads
/// may fix it (a head changed behind the cache).
struct Failed {
    error: StoreError,
    conflict: bool,
}

impl From<StoreError> for Failed {
    fn from(error: StoreError) -> Self {
        Failed {
            error,
            conflict: false,
        }
    }
}

/// Runs until the store is dropped and everything queued is written.
pub(super) async fn run(
    mut queued: mpsc::UnboundedReceiver<Pending>,
    mut conn: Connection,
    ended: Arc<tokio::sync::Notify>,
    health: Arc<Health>,
) {
    let mut heads = Heads::new();
    let mut carried: VecDeque<Pending> = VecDeque::new();
    loop {
        if carried.is_empty() {
            match queued.recv().await {
                Some(p) => carried.push_back(p),
                None => return,
            }
        }
        while carried.len() < MAX_BATCH {
            match queued.try_recv() {
                Ok(p) => carried.push_back(p),
                Err(_) => break,
            }
        }
        let batch = take_batch(&mut carried);
        let mut outcome = write_with_deadline(&mut conn, &mut heads, &batch).await;
        if matches!(&outcome, Err(f) if f.conflict) {
            heads.clear();
            outcome = write_with_deadline(&mut conn, &mut heads, &batch).await;
        }
        match outcome {
            Ok(rejected) => {
                health.failing.store(false, Ordering::Relaxed);
                if batch
                    .iter()
                    .any(|p| matches!(p.event, Some(AuditEvent::SessionEnd { .. })))
                {
                    ended.notify_one();
                }
                let written: usize = batch.iter().map(|p| p.size).sum();
                health.backlog.fetch_sub(written, Ordering::Relaxed);
                answer(batch, rejected)
            }
            Err(failed) => {
                health.failing.store(true, Ordering::Relaxed);
                heads.clear();
                let dropped = keep_background(batch, failed.error, &mut carried);
                health.backlog.fetch_sub(dropped, Ordering::Relaxed);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

async fn write_with_deadline(
    conn: &mut Connection,
    heads: &mut Heads,
    batch: &[Pending],
) -> Result<HashMap<usize, StoreError>, Failed> {
    let target = conn.target.clone();
    let node = conn.node.clone();
    let written = tokio::time::timeout(QUERY_TIMEOUT, async {
        let (client, statement) = conn.prepared().await?;
        write(client, statement, &node, heads, batch).await
    })
    .await;
    match written {
        Ok(result) => {
            if result.is_err() {
                conn.client = conn.client.take().filter(|(c, _)| !c.is_closed());
            }
            result
        }
        Err(_) => {
            // Whether it committed is unknown: the next batch reads the heads afresh.
            conn.client = None;
            Err(target.unreachable("a write took too long").into())
        }
    }
}

/// Answers the waiting callers; `rejected` are the records refused alone.
fn answer(batch: Vec<Pending>, mut rejected: HashMap<usize, StoreError>) {
    for (i, p) in batch.into_iter().enumerate() {
        let result = rejected.remove(&i).map_or(Ok(()), Err);
        match (p.done, result) {
            (Some(done), result) => {
                let _ = done.send(result);
            }
            (None, Err(e)) => {
                tracing::error!(message = "An audit record could not be stored.", session = %p.session_id, error = %e)
            }
            (None, Ok(())) => {}
        }
    }
}

/// The next batch: up to `MAX_BATCH` records and about `MAX_BATCH_BYTES`.
fn take_batch(carried: &mut VecDeque<Pending>) -> Vec<Pending> {
    let mut bytes = 0;
    let mut n = 0;
    for p in carried.iter().take(MAX_BATCH) {
        if n > 0 && bytes + p.size > MAX_BATCH_BYTES {
            break;
        }
        bytes += p.size;
        n += 1;
    }
    carried.drain(..n).collect()
}

/// A failed batch: its durable appends fail (their commands are refused);
/// its background records go back to the front of the queue. Returns the
/// bytes no longer held (refused or dropped).
fn keep_background(
    batch: Vec<Pending>,
    error: StoreError,
    carried: &mut VecDeque<Pending>,
) -> usize {
    let message = error.to_string();
    tracing::error!(message = "The audit store refused a batch of records.", error = %message);
    let mut released = 0;
    for p in batch.into_iter().rev() {
        match p.done {
            Some(done) => {
                released += p.size;
                let _ = done.send(Err(StoreError::Unavailable(message.clone())));
            }
            None => carried.push_front(p),
        }
    }
    while carried.len() > MAX_CARRIED {
        if let Some(lost) = carried.pop_front() {
            released += lost.size;
            tracing::error!(message = "An audit record was dropped: the store has been unreachable too long.", session = %lost.session_id);
        }
    }
    released
}

/// Chains and commits one batch in one statement. Returns the records
/// refused alone (a session the store does not know).
async fn write(
    client: &Client,
    statement: &Statement,
    node: &str,
    heads: &mut Heads,
    batch: &[Pending],
) -> Result<HashMap<usize, StoreError>, Failed> {
    let mut tips: HashMap<String, Tip> = HashMap::new();
    let mut rows = Rows::default();
    let mut starts = Starts::default();
    let mut rejected = HashMap::new();
    for (i, p) in batch.iter().enumerate() {
        let Some(event) = &p.event else { continue };
        if !tips.contains_key(&p.session_id) {
            match head(client, heads, &p.session_id, event).await? {
                Some(tip) => {
                    if tip.new {
                        starts.push(&p.session_id, event, p.at_ms);
                    }
                    tips.insert(p.session_id.clone(), tip);
                }
                None => {
                    rejected.insert(i, StoreError::UnknownSession(p.session_id.clone()));
                    continue;
                }
            }
        }
        let Some(tip) = tips.get_mut(&p.session_id) else {
            continue;
        };
        chain(tip, &p.session_id, event, p.at_ms, &mut rows)?;
    }
    let moved = Moved::split(&tips, &mut starts);
    let batch = Batch {
        starts: &starts,
        rows: &rows,
        moved: &moved,
    };
    batch
        .write(client, statement, node)
        .await
        .map_err(conflict_or_backend)?;
    for (id, tip) in tips {
        if tip.ended.is_some() {
            heads.remove(&id);
        } else {
            heads.insert(id, (tip.seq, tip.hash));
        }
    }
    Ok(rejected)
}

/// The batch statement's deliberate division by zero is a head that moved.
fn conflict_or_backend(e: tokio_postgres::Error) -> Failed {
    if e.code() == Some(&tokio_postgres::error::SqlState::DIVISION_BY_ZERO) {
        return Failed {
            error: StoreError::Unavailable(
                "a session's chain moved in the store meanwhile (ended by another node?)".into(),
            ),
            conflict: true,
        };
    }
    backend(e).into()
}

/// The heads a batch moves of sessions it did not start, as arrays.
#[derive(Default)]
struct Moved {
    id: Vec<String>,
    base: Vec<i64>,
    head: HeadColumns,
}

impl Moved {
    /// Gives the sessions the batch starts their final head (they are
    /// inserted with it); returns the others' moves.
    fn split(tips: &HashMap<String, Tip>, starts: &mut Starts) -> Moved {
        for id in &starts.id {
            if let Some(tip) = tips.get(id) {
                starts.head.push_tip(tip);
            }
        }
        let mut moved = Moved::default();
        for (id, tip) in tips.iter().filter(|(_, t)| !t.new) {
            moved.id.push(id.clone());
            moved.base.push(tip.base_seq);
            moved.head.push_tip(tip);
        }
        moved
    }
}

/// One batch's arrays, written by `BATCH_SQL`.
struct Batch<'a> {
    starts: &'a Starts,
    rows: &'a Rows,
    moved: &'a Moved,
}

impl Batch<'_> {
    async fn write(
        &self,
        client: &impl tokio_postgres::GenericClient,
        statement: &(impl tokio_postgres::ToStatement + Sync + Send + ?Sized),
        node: &str,
    ) -> Result<(), tokio_postgres::Error> {
        let (st, r, m) = (self.starts, self.rows, self.moved);
        let expected = m.id.len() as i64;
        client
            .query(
                statement,
                &[
                    &node,
                    &st.id,
                    &st.subject,
                    &st.issuer,
                    &st.groups,
                    &st.connection,
                    &st.protocol,
                    &st.client_addr,
                    &st.started,
                    &st.head.seq,
                    &st.head.hash,
                    &st.head.commands,
                    &st.head.ended,
                    &st.head.reason,
                    &r.session,
                    &r.seq,
                    &r.at,
                    &r.kind,
                    &r.body,
                    &r.prev,
                    &r.hash,
                    &m.id,
                    &m.base,
                    &m.head.seq,
                    &m.head.hash,
                    &m.head.commands,
                    &m.head.ended,
                    &m.head.reason,
                    &expected,
                ],
            )
            .await
            .map(|_| ())
    }
}

/// The head a session's next record chains from: cached, the store's, or
/// the genesis for a session that starts here. `None`: no such session.
async fn head(
    client: &Client,
    heads: &Heads,
    session_id: &str,
    event: &AuditEvent,
) -> Result<Option<Tip>, Failed> {
    let tip = |seq: u64, hash: String| Tip {
        base_seq: seq as i64,
        new: false,
        seq,
        hash,
        commands: 0,
        ended: None,
    };
    if let Some((seq, hash)) = heads.get(session_id) {
        return Ok(Some(tip(*seq, hash.clone())));
    }
    let stored = client
        .query_opt(
            "SELECT last_seq, head_hash FROM sluice_sessions WHERE id = $1",
            &[&session_id],
        )
        .await
        .map_err(backend)?;
    Ok(match stored {
        Some(row) => Some(tip(row.get::<_, i64>(0) as u64, row.get(1))),
        None if matches!(event, AuditEvent::SessionStart { .. }) => Some(Tip {
            new: true,
            ..tip(0, GENESIS_HASH.to_string())
        }),
        None => None,
    })
}

fn chain(
    tip: &mut Tip,
    session_id: &str,
    event: &AuditEvent,
    at_ms: u64,
    rows: &mut Rows,
) -> Result<(), Failed> {
    let seq = tip.seq + 1;
    let body = serde_json::to_string(event).map_err(backend)?;
    let hash = chain_hash(&tip.hash, session_id, seq, at_ms, &body);
    rows.session.push(session_id.to_string());
    rows.seq.push(seq as i64);
    rows.at.push(at_ms as i64);
    rows.kind.push(event.kind());
    rows.body.push(body);
    rows.prev
        .push(std::mem::replace(&mut tip.hash, hash.clone()));
    rows.hash.push(hash);
    tip.seq = seq;
    match event {
        AuditEvent::CommandDecided { .. } => tip.commands += 1,
        AuditEvent::SessionEnd { reason } => tip.ended = Some((at_ms as i64, reason.clone())),
        _ => {}
    }
    Ok(())
}

/// Copies one verified chain into the store (`sluice store migrate`).
pub(super) async fn import(
    client: &mut Client,
    summary: &SessionSummary,
    records: &[AuditRecord],
    node: &str,
) -> Result<super::Imported, StoreError> {
    let (last_seq, head) = records
        .last()
        .map(|r| (r.seq as i64, r.hash.clone()))
        .unwrap_or((0, GENESIS_HASH.to_string()));
    let tx = client.transaction().await.map_err(backend)?;
    let there = tx
        .query_opt(
            "SELECT last_seq, head_hash FROM sluice_sessions WHERE id = $1",
            &[&summary.id],
        )
        .await
        .map_err(backend)?;
    if let Some(row) = there {
        if row.get::<_, i64>(0) == last_seq && row.get::<_, String>(1) == head {
            return Ok(super::Imported::AlreadyThere);
        }
        return Err(StoreError::Unavailable(format!(
            "session {} is already in the store with another chain",
            summary.id
        )));
    }
    let mut starts = Starts::default();
    starts.id.push(summary.id.clone());
    starts.subject.push(summary.subject.clone());
    starts.issuer.push(summary.issuer.clone());
    starts
        .groups
        .push(serde_json::to_string(&summary.groups).map_err(backend)?);
    starts.connection.push(summary.connection.clone());
    starts.protocol.push(summary.protocol.clone());
    starts.client_addr.push(summary.client_addr.clone());
    starts.started.push(summary.started_at_ms as i64);
    let ended = summary
        .ended_at_ms
        .map(|at| (at as i64, summary.end_reason.as_deref().unwrap_or_default()));
    starts
        .head
        .push(last_seq, &head, summary.commands as i64, ended);
    let mut rows = Rows::default();
    for r in records {
        let kind = r
            .event()
            .map_err(|e| {
                StoreError::Unavailable(format!("session {} #{}: {e}", r.session_id, r.seq))
            })?
            .kind();
        rows.session.push(r.session_id.clone());
        rows.seq.push(r.seq as i64);
        rows.at.push(r.at_ms as i64);
        rows.kind.push(kind);
        rows.body.push(r.body.clone());
        rows.prev.push(r.prev_hash.clone());
        rows.hash.push(r.hash.clone());
    }
    let batch = Batch {
        starts: &starts,
        rows: &rows,
        moved: &Moved::default(),
    };
    batch.write(&tx, BATCH_SQL, node).await.map_err(backend)?;
    tx.commit().await.map_err(backend)?;
    Ok(super::Imported::Copied)
}
