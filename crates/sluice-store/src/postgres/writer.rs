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
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, Transaction};

/// Records per transaction, at most.
const MAX_BATCH: usize = 1024;
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
}

/// The writer's own connection (it holds the node's claim), reopened and
/// re-claimed when it breaks.
pub(super) struct Connection {
    target: PgTarget,
    node: String,
    client: Option<Client>,
}

impl Connection {
    pub(super) fn new(target: PgTarget, node: String, client: Client) -> Self {
        Connection {
            target,
            node,
            client: Some(client),
        }
    }

    async fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            let client = self.target.connect().await?;
            nodes::claim(&client, &self.node, &self.target).await?;
            tracing::info!(message = "Reconnected to the PostgreSQL store.", store = ?self.target);
            self.client = Some(client);
        }
        self.client
            .as_mut()
            .ok_or_else(|| self.target.unreachable("not connected"))
    }
}

/// A session's chain as a batch extends it.
struct Tip {
    /// The head in the store before this batch (0 for a session it starts).
    base_seq: i64,
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
        let batch: Vec<Pending> = carried.drain(..carried.len().min(MAX_BATCH)).collect();
        let mut outcome = write_with_deadline(&mut conn, &mut heads, &batch).await;
        if matches!(&outcome, Err(f) if f.conflict) {
            heads.clear();
            outcome = write_with_deadline(&mut conn, &mut heads, &batch).await;
        }
        match outcome {
            Ok(rejected) => {
                if batch
                    .iter()
                    .any(|p| matches!(p.event, Some(AuditEvent::SessionEnd { .. })))
                {
                    ended.notify_one();
                }
                answer(batch, rejected)
            }
            Err(failed) => {
                heads.clear();
                keep_background(batch, failed.error, &mut carried);
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
        let client = conn.client().await?;
        write(client, &node, heads, batch).await
    })
    .await;
    match written {
        Ok(result) => {
            if result.is_err() {
                // A failed transaction may leave the connection unusable.
                conn.client = conn.client.take().filter(|c| !c.is_closed());
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

/// A failed batch: its durable appends fail (their commands are refused);
/// its background records go back to the front of the queue.
fn keep_background(batch: Vec<Pending>, error: StoreError, carried: &mut VecDeque<Pending>) {
    let message = error.to_string();
    tracing::error!(message = "The audit store refused a batch of records.", error = %message);
    for p in batch.into_iter().rev() {
        match p.done {
            Some(done) => {
                let _ = done.send(Err(StoreError::Unavailable(message.clone())));
            }
            None => carried.push_front(p),
        }
    }
    while carried.len() > MAX_CARRIED {
        if let Some(lost) = carried.pop_front() {
            tracing::error!(message = "An audit record was dropped: the store has been unreachable too long.", session = %lost.session_id);
        }
    }
}

/// Chains and commits one batch in one transaction. Returns the records
/// refused alone (a session the store does not know).
async fn write(
    client: &mut Client,
    node: &str,
    heads: &mut Heads,
    batch: &[Pending],
) -> Result<HashMap<usize, StoreError>, Failed> {
    let tx = client.transaction().await.map_err(backend)?;
    let mut tips: HashMap<String, Tip> = HashMap::new();
    let mut rows = Rows::default();
    let mut starts = Starts::default();
    let mut rejected = HashMap::new();
    for (i, p) in batch.iter().enumerate() {
        let Some(event) = &p.event else { continue };
        if !tips.contains_key(&p.session_id) {
            match head(&tx, heads, &p.session_id, event).await? {
                Some(tip) => {
                    if tip.base_seq == 0 {
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
    insert(&tx, node, &rows, &starts).await?;
    update_heads(&tx, &tips).await?;
    tx.commit().await.map_err(backend)?;
    for (id, tip) in tips {
        if tip.ended.is_some() {
            heads.remove(&id);
        } else {
            heads.insert(id, (tip.seq, tip.hash));
        }
    }
    Ok(rejected)
}

/// The head a session's next record chains from: cached, the store's, or
/// the genesis for a session that starts here. `None`: no such session.
async fn head(
    tx: &Transaction<'_>,
    heads: &Heads,
    session_id: &str,
    event: &AuditEvent,
) -> Result<Option<Tip>, Failed> {
    let tip = |seq: u64, hash: String| Tip {
        base_seq: seq as i64,
        seq,
        hash,
        commands: 0,
        ended: None,
    };
    if let Some((seq, hash)) = heads.get(session_id) {
        return Ok(Some(tip(*seq, hash.clone())));
    }
    let stored = tx
        .query_opt(
            "SELECT last_seq, head_hash FROM sluice_sessions WHERE id = $1",
            &[&session_id],
        )
        .await
        .map_err(backend)?;
    Ok(match stored {
        Some(row) => Some(tip(row.get::<_, i64>(0) as u64, row.get(1))),
        None if matches!(event, AuditEvent::SessionStart { .. }) => {
            Some(tip(0, GENESIS_HASH.to_string()))
        }
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

async fn insert(
    tx: &Transaction<'_>,
    node: &str,
    rows: &Rows,
    starts: &Starts,
) -> Result<(), Failed> {
    if !starts.id.is_empty() {
        tx.execute(
            "INSERT INTO sluice_sessions (id, node, subject, issuer, groups_json, connection,
                 protocol, client_addr, started_at_ms, last_seq, head_hash)
             SELECT u.id, $1, u.subject, u.issuer, u.groups, u.conn, u.proto, u.addr, u.started, 0, $2
             FROM UNNEST($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                         $9::text[], $10::int8[])
                  AS u(id, subject, issuer, groups, conn, proto, addr, started)",
            &[
                &node,
                &GENESIS_HASH,
                &starts.id,
                &starts.subject,
                &starts.issuer,
                &starts.groups,
                &starts.connection,
                &starts.protocol,
                &starts.client_addr,
                &starts.started,
            ],
        )
        .await
        .map_err(backend)?;
    }
    if rows.session.is_empty() {
        return Ok(());
    }
    tx.execute(
        "INSERT INTO sluice_records (session_id, seq, at_ms, node, kind, body, prev_hash, hash)
         SELECT u.sid, u.seq, u.at, $1, u.kind, u.body, u.prev, u.hash
         FROM UNNEST($2::text[], $3::int8[], $4::int8[], $5::text[], $6::text[], $7::text[],
                     $8::text[]) AS u(sid, seq, at, kind, body, prev, hash)",
        &[
            &node,
            &rows.session,
            &rows.seq,
            &rows.at,
            &rows.kind,
            &rows.body,
            &rows.prev,
            &rows.hash,
        ],
    )
    .await
    .map_err(backend)?;
    Ok(())
}

/// Moves each session's head, only from the head the batch chained from.
async fn update_heads(tx: &Transaction<'_>, tips: &HashMap<String, Tip>) -> Result<(), Failed> {
    if tips.is_empty() {
        return Ok(());
    }
    let mut id = Vec::new();
    let (mut base, mut seq, mut hash, mut commands) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut ended, mut reason) = (Vec::new(), Vec::new());
    for (session, tip) in tips {
        id.push(session.as_str());
        base.push(tip.base_seq);
        seq.push(tip.seq as i64);
        hash.push(tip.hash.as_str());
        commands.push(tip.commands);
        ended.push(tip.ended.as_ref().map(|(at, _)| *at));
        reason.push(tip.ended.as_ref().map(|(_, r)| r.as_str()));
    }
    let updated = tx
        .execute(
            "UPDATE sluice_sessions s SET last_seq = u.seq, head_hash = u.hash,
                 commands = s.commands + u.commands,
                 ended_at_ms = COALESCE(u.ended, s.ended_at_ms),
                 end_reason = COALESCE(u.reason, s.end_reason)
             FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::text[], $5::int8[], $6::int8[],
                         $7::text[]) AS u(id, base, seq, hash, commands, ended, reason)
             WHERE s.id = u.id AND s.last_seq = u.base",
            &[&id, &base, &seq, &hash, &commands, &ended, &reason],
        )
        .await
        .map_err(backend)?;
    if updated != tips.len() as u64 {
        return Err(Failed {
            error: StoreError::Unavailable(
                "a session's chain moved in the store meanwhile (ended by another node?)".into(),
            ),
            conflict: true,
        });
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
    let groups = serde_json::to_string(&summary.groups).map_err(backend)?;
    tx.execute(
        "INSERT INTO sluice_sessions (id, node, subject, issuer, groups_json, connection,
             protocol, client_addr, started_at_ms, ended_at_ms, end_reason, commands,
             last_seq, head_hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        &[
            &summary.id,
            &node,
            &summary.subject,
            &summary.issuer,
            &groups,
            &summary.connection,
            &summary.protocol,
            &summary.client_addr,
            &(summary.started_at_ms as i64),
            &summary.ended_at_ms.map(|v| v as i64),
            &summary.end_reason,
            &(summary.commands as i64),
            &last_seq,
            &head,
        ],
    )
    .await
    .map_err(backend)?;
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
    insert(&tx, node, &rows, &Starts::default())
        .await
        .map_err(|f| f.error)?;
    tx.commit().await.map_err(backend)?;
    Ok(super::Imported::Copied)
}
