use rusqlite::{params, Connection, OptionalExtension};
use sluice_core::audit::{
    chain_hash, verify_chain, AuditEvent, AuditRecord, SessionSummary, Store, StoreError,
    VerifyReport, GENESIS_HASH,
};
use sluice_core::config::AuditSync;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// Appends taken into one transaction at most.
const MAX_BATCH: usize = 1024;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    groups_json TEXT NOT NULL,
    connection TEXT NOT NULL,
    protocol TEXT NOT NULL,
    client_addr TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL,
    ended_at_ms INTEGER,
    end_reason TEXT,
    commands INTEGER NOT NULL DEFAULT 0,
    last_seq INTEGER NOT NULL,
    head_hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
";

struct Job {
    session_id: String,
    event: AuditEvent,
    at_ms: u64,
    done: Option<oneshot::Sender<Result<(), StoreError>>>,
}

/// The embedded store: `state_dir/sluice.db`.
pub struct SqliteStore {
    path: PathBuf,
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(unavailable)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(unavailable)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(unavailable)?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating) `state_dir/sluice.db` and starts its writer thread.
    pub fn open(state_dir: &Path, sync: AuditSync) -> Result<Self, StoreError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| unavailable(format!("cannot create {}: {e}", state_dir.display())))?;
        let path = state_dir.join("sluice.db");
        let conn = open_connection(&path)?;
        // NORMAL in WAL mode: a committed batch survives a gateway crash;
        // FULL also survives power loss (one fsync per batch).
        conn.pragma_update(
            None,
            "synchronous",
            match sync {
                AuditSync::Normal => "NORMAL",
                AuditSync::Full => "FULL",
            },
        )
        .map_err(unavailable)?;
        conn.execute_batch(SCHEMA).map_err(unavailable)?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("sluice-store-writer".into())
            .spawn(move || Writer::new(conn).run(rx))
            .map_err(unavailable)?;
        Ok(SqliteStore { path, jobs: tx })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Ends sessions a previous gateway process left open (it crashed or was
    /// killed), appending a `session_end` record to each chain.
    pub async fn close_orphaned_sessions(&self, reason: &str) -> Result<usize, StoreError> {
        let path = self.path.clone();
        let open: Vec<String> = tokio::task::spawn_blocking(move || {
            let conn = open_connection(&path)?;
            let mut stmt = conn
                .prepare("SELECT id FROM sessions WHERE ended_at_ms IS NULL")
                .map_err(unavailable)?;
            let ids = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(unavailable)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(unavailable)?;
            Ok::<_, StoreError>(ids)
        })
        .await
        .map_err(unavailable)??;
        for id in &open {
            self.append(
                id,
                AuditEvent::SessionEnd {
                    reason: reason.to_string(),
                },
            )
            .await?;
        }
        Ok(open.len())
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || f(&open_connection(&path)?))
            .await
            .map_err(unavailable)?
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        self.jobs.send(job).map_err(|_| StoreError::Closed)
    }
}

fn records(conn: &Connection, session_id: &str) -> Result<Vec<AuditRecord>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, at_ms, body, prev_hash, hash FROM events WHERE session_id = ?1 ORDER BY seq",
        )
        .map_err(unavailable)?;
    let rows = stmt
        .query_map([session_id], |r| {
            Ok(AuditRecord {
                session_id: session_id.to_string(),
                seq: r.get::<_, i64>(0)? as u64,
                at_ms: r.get::<_, i64>(1)? as u64,
                body: r.get(2)?,
                prev_hash: r.get(3)?,
                hash: r.get(4)?,
            })
        })
        .map_err(unavailable)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(unavailable)?;
    Ok(rows)
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn append(&self, session_id: &str, event: AuditEvent) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.send(Job {
            session_id: session_id.to_string(),
            event,
            at_ms: now_ms(),
            done: Some(done),
        })?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    fn append_background(&self, session_id: &str, event: AuditEvent) {
        if self
            .send(Job {
                session_id: session_id.to_string(),
                event,
                at_ms: now_ms(),
                done: None,
            })
            .is_err()
        {
            tracing::error!(message = "Audit store is closed; a background record was lost.", session = %session_id);
        }
    }

    async fn sessions(&self) -> Result<Vec<SessionSummary>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT id, subject, groups_json, connection, protocol, client_addr,
                            started_at_ms, ended_at_ms, end_reason, commands
                     FROM sessions ORDER BY started_at_ms, id",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map([], |r| {
                    let groups: String = r.get(2)?;
                    Ok(SessionSummary {
                        id: r.get(0)?,
                        subject: r.get(1)?,
                        groups: serde_json::from_str(&groups).unwrap_or_default(),
                        connection: r.get(3)?,
                        protocol: r.get(4)?,
                        client_addr: r.get(5)?,
                        started_at_ms: r.get::<_, i64>(6)? as u64,
                        ended_at_ms: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
                        end_reason: r.get(8)?,
                        commands: r.get::<_, i64>(9)? as u64,
                    })
                })
                .map_err(unavailable)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(unavailable)?;
            Ok(rows)
        })
        .await
    }

    async fn session_records(&self, session_id: &str) -> Result<Vec<AuditRecord>, StoreError> {
        let id = session_id.to_string();
        self.read(move |conn| {
            let known: Option<i64> = conn
                .query_row("SELECT 1 FROM sessions WHERE id = ?1", [&id], |r| r.get(0))
                .optional()
                .map_err(unavailable)?;
            if known.is_none() {
                return Err(StoreError::UnknownSession(id));
            }
            records(conn, &id)
        })
        .await
    }

    async fn verify(&self) -> Result<VerifyReport, StoreError> {
        self.read(|conn| {
            let mut report = VerifyReport::default();
            let mut stmt = conn
                .prepare("SELECT id, last_seq, head_hash FROM sessions ORDER BY started_at_ms, id")
                .map_err(unavailable)?;
            let heads = stmt
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, String>(2)?))
                })
                .map_err(unavailable)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(unavailable)?;
            for (id, last_seq, head) in &heads {
                let recs = records(conn, id)?;
                report.sessions += 1;
                report.records += recs.len() as u64;
                if let Err(b) = verify_chain(id, &recs, Some((*last_seq, head))) {
                    report.first_break = Some(b);
                    return Ok(report);
                }
            }
            // Records of a session the store has no head for were not written by us.
            let orphan: Option<String> = conn
                .query_row(
                    "SELECT session_id FROM events WHERE session_id NOT IN (SELECT id FROM sessions) LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            if let Some(id) = orphan {
                report.first_break = Some(sluice_core::audit::ChainBreak {
                    session_id: id,
                    seq: 1,
                    problem: "records of a session the store has no entry for (session removed?)".into(),
                });
            }
            Ok(report)
        })
        .await
    }
}

/// The single writer: assigns each event its place in its session's chain.
struct Writer {
    conn: Connection,
    heads: HashMap<String, (u64, String)>,
}

impl Writer {
    fn new(conn: Connection) -> Self {
        Writer {
            conn,
            heads: HashMap::new(),
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            if let Err(e) = self.write(&batch) {
                // The cache may hold heads of the rolled-back batch.
                self.heads.clear();
                if batch.len() == 1 {
                    self.reply(batch, Err(e));
                    continue;
                }
                // One bad event must not sink its neighbours: retry one by one.
                for job in batch {
                    let result = self.write(std::slice::from_ref(&job));
                    if result.is_err() {
                        self.heads.clear();
                    }
                    self.reply(vec![job], result);
                }
                continue;
            }
            self.reply(batch, Ok(()));
        }
    }

    fn reply(&self, batch: Vec<Job>, result: Result<(), String>) {
        if let Err(e) = &result {
            tracing::error!(message = "Audit store write failed; the commands it covers are refused.", error = %e);
        }
        for job in batch {
            match job.done {
                Some(done) => {
                    let _ = done.send(result.clone().map_err(unavailable));
                }
                None if result.is_err() => {
                    tracing::error!(message = "A background audit record could not be stored.", session = %job.session_id);
                }
                None => {}
            }
        }
    }

    fn write(&mut self, batch: &[Job]) -> Result<(), String> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| e.to_string())?;
        for job in batch {
            let head = match self.heads.get(&job.session_id) {
                Some(h) => h.clone(),
                None => tx
                    .query_row(
                        "SELECT last_seq, head_hash FROM sessions WHERE id = ?1",
                        [&job.session_id],
                        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)),
                    )
                    .optional()
                    .map_err(|e| e.to_string())?
                    .unwrap_or((0, GENESIS_HASH.to_string())),
            };
            let seq = head.0 + 1;
            let body = serde_json::to_string(&job.event).map_err(|e| e.to_string())?;
            let hash = chain_hash(&head.1, &job.session_id, seq, job.at_ms, &body);
            let kind = match &job.event {
                AuditEvent::SessionStart { .. } => "session_start",
                AuditEvent::CommandDecided { .. } => "command_decided",
                AuditEvent::CommandFinished { .. } => "command_finished",
                AuditEvent::SessionEnd { .. } => "session_end",
            };
            tx.prepare_cached(
                "INSERT INTO events (session_id, seq, at_ms, kind, body, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    job.session_id,
                    seq as i64,
                    job.at_ms as i64,
                    kind,
                    body,
                    head.1,
                    hash
                ])
            })
            .map_err(|e| e.to_string())?;
            match &job.event {
                AuditEvent::SessionStart {
                    identity,
                    connection,
                    protocol,
                    client_addr,
                } => {
                    tx.prepare_cached(
                        "INSERT INTO sessions (id, subject, groups_json, connection, protocol,
                            client_addr, started_at_ms, last_seq, head_hash)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            job.session_id,
                            identity.subject,
                            serde_json::to_string(&identity.groups).unwrap_or_default(),
                            connection,
                            protocol.to_string(),
                            client_addr,
                            job.at_ms as i64,
                            seq as i64,
                            hash
                        ])
                    })
                    .map_err(|e| e.to_string())?;
                }
                other => {
                    let (commands, ended, reason) = match other {
                        AuditEvent::CommandDecided { .. } => (1, None, None),
                        AuditEvent::SessionEnd { reason } => {
                            (0, Some(job.at_ms as i64), Some(reason.as_str()))
                        }
                        _ => (0, None, None),
                    };
                    let changed = tx
                        .prepare_cached(
                            "UPDATE sessions SET last_seq = ?2, head_hash = ?3,
                                commands = commands + ?4,
                                ended_at_ms = COALESCE(?5, ended_at_ms),
                                end_reason = COALESCE(?6, end_reason)
                             WHERE id = ?1",
                        )
                        .and_then(|mut s| {
                            s.execute(params![
                                job.session_id,
                                seq as i64,
                                hash,
                                commands,
                                ended,
                                reason
                            ])
                        })
                        .map_err(|e| e.to_string())?;
                    if changed != 1 {
                        return Err(format!("event for unknown session {}", job.session_id));
                    }
                }
            }
            self.heads.insert(job.session_id.clone(), (seq, hash));
        }
        tx.commit().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests;
