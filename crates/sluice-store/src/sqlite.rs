use rusqlite::{params, Connection, OptionalExtension};
use sluice_core::audit::{
    chain_hash, compare_checkpoint, verify_chain, AuditEvent, AuditRecord, ChainBreak,
    CheckpointMatch, SessionSummary, Store, StoreError, TreeHead, VerifyReport, GENESIS_HASH,
};
use sluice_core::config::AuditSync;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

mod commit;
use crate::now_ms;
use commit::{Journal, Queue};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    groups_json TEXT NOT NULL,
    connection TEXT NOT NULL,
    protocol TEXT NOT NULL,
    client_addr TEXT NOT NULL,
    issuer TEXT NOT NULL DEFAULT '',
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
    -- Empty when `line_at` is set: the body is read from the journal.
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    -- Where the record's line starts in the journal, and its length.
    line_at INTEGER,
    line_len INTEGER
);
-- Rows are appended in journal order; the index serves replay and verify.
CREATE UNIQUE INDEX IF NOT EXISTS events_by_session ON events (session_id, seq);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
-- The head of the gateway-wide chain over the indexed journal lines (the
-- writer resumes from it; verification recomputes it from the journal).
CREATE TABLE IF NOT EXISTS log_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    size INTEGER NOT NULL,
    root TEXT NOT NULL
);
";

/// Index files written before sessions recorded their issuer get the column,
/// filled from each session's first record (its `session_start`; such
/// indexes still hold bodies in their rows).
fn add_issuer_column(conn: &rusqlite::Connection) -> Result<(), StoreError> {
    add_column_once(
        conn,
        ("sessions", "issuer"),
        "BEGIN IMMEDIATE;
         ALTER TABLE sessions ADD COLUMN issuer TEXT NOT NULL DEFAULT '';
         UPDATE sessions SET issuer = COALESCE((
             SELECT json_extract(e.body, '$.identity.issuer') FROM events e
             WHERE e.session_id = sessions.id AND e.seq = 1), '');
         COMMIT;",
    )
}

/// Index files written before records pointed into the journal get the
/// columns; their rows keep their bodies (`line_at` NULL).
fn add_line_columns(conn: &rusqlite::Connection) -> Result<(), StoreError> {
    add_column_once(
        conn,
        ("events", "line_at"),
        "BEGIN IMMEDIATE;
         ALTER TABLE events ADD COLUMN line_at INTEGER;
         ALTER TABLE events ADD COLUMN line_len INTEGER;
         COMMIT;",
    )
}

/// Runs `migration`, a transaction that adds `(table, column)`, unless the
/// column is there. Safe to run from a reader and the writer at once: the
/// one that loses the race finds the column added.
fn add_column_once(
    conn: &rusqlite::Connection,
    (table, column): (&str, &str),
    migration: &str,
) -> Result<(), StoreError> {
    let present = || -> Result<bool, StoreError> {
        let mut stmt = conn
            .prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")
            .map_err(backend)?;
        stmt.exists(params![table, column]).map_err(backend)
    };
    if present()? {
        return Ok(());
    }
    match conn.execute_batch(migration) {
        Ok(()) => Ok(()),
        Err(e) => {
            // The failed batch left its transaction open.
            let _ = conn.execute_batch("ROLLBACK");
            if present()? {
                Ok(())
            } else {
                Err(backend(e))
            }
        }
    }
}

/// How a process uses the store: the gateway appends; CLI commands only read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Writer(AuditSync),
    Reader,
}

/// The embedded store: `state_dir/journal.log` (the write-ahead, hash-chained
/// audit log) indexed into `state_dir/sluice.db` for queries.
///
/// An append returns once its line is in the journal: durable against a
/// gateway crash (`audit_sync = "full"`: an fdatasync, against a host
/// crash). Concurrent appends share one write (group commit, `commit.rs`).
/// An indexer thread moves journal lines into SQLite in batches; readers
/// catch the index up before reading.
pub struct SqliteStore {
    db_path: PathBuf,
    journal_path: PathBuf,
    writer: Option<Arc<Journal>>,
    stop_indexer: Option<mpsc::Sender<()>>,
    indexer: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.db_path)
            .finish()
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if let Some(stop) = self.stop_indexer.take() {
            let _ = stop.send(());
        }
        // The indexer shares the journal writer (and its file lock): wait for
        // it, so a store reopened right after this one finds the lock free.
        if let Some(indexer) = self.indexer.take() {
            let _ = indexer.join();
        }
        if let Some(j) = &self.writer {
            if let Err(e) = j.write_all_blocking() {
                tracing::error!(message = "Audit records queued at shutdown could not be written.", error = %e);
            }
        }
        // Leave the index complete for the next reader.
        if let Ok(conn) = open_connection(&self.db_path) {
            let _ = catch_up(&conn, &self.journal_path);
        }
    }
}

/// The embedded store's SQLite or file system failed: the cause is kept.
fn backend<E: std::error::Error + Send + Sync + 'static>(e: E) -> StoreError {
    StoreError::backend("the embedded store", e)
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(backend)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(backend)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(backend)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(backend)?;
    // The journal is the write-ahead log; the index can checkpoint lazily.
    conn.pragma_update(None, "wal_autocheckpoint", 8192)
        .map_err(backend)?;
    Ok(conn)
}

/// How often the indexer moves journal lines into SQLite.
const INDEX_INTERVAL: Duration = Duration::from_millis(200);
/// Journal bytes indexed per transaction at most.
const INDEX_CHUNK: u64 = 8 << 20;

impl SqliteStore {
    /// Opens (creating) the store in `state_dir`. A writer takes an exclusive
    /// lock on the journal: one gateway process per state directory.
    pub fn open(state_dir: &Path, mode: Mode) -> Result<Self, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|e| {
            StoreError::backend(format!("cannot create {}", state_dir.display()), e)
        })?;
        let db_path = state_dir.join("sluice.db");
        let journal_path = state_dir.join("journal.log");
        let conn = open_connection(&db_path)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        add_issuer_column(&conn)?;
        add_line_columns(&conn)?;
        let Mode::Writer(sync) = mode else {
            return Ok(SqliteStore {
                db_path,
                journal_path,
                writer: None,
                stop_indexer: None,
                indexer: None,
            });
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&journal_path)
            .map_err(|e| StoreError::backend(journal_path.display().to_string(), e))?;
        file.try_lock().map_err(|_| {
            unavailable(format!(
                "{} is in use by another gateway process",
                journal_path.display()
            ))
        })?;
        let len = drop_torn_tail(&file).map_err(backend)?;
        // Everything a previous process wrote is indexed before we append, so
        // chain heads of its sessions, and the gateway-wide head, can be read
        // from the index.
        catch_up(&conn, &journal_path)?;
        let log = match read_log_head(&conn)? {
            Some(head) => head,
            // Indexed by a version before the gateway-wide chain: compute it.
            None => scan_log(&journal_path, len, None)?.0,
        };
        let sync_file = file.try_clone().map_err(backend)?;
        let state = JournalWriter {
            queue: Queue::new(file, len),
            heads: HashMap::new(),
            ended: std::collections::VecDeque::new(),
            db: conn,
            log,
        };
        let writer = Arc::new(Journal::new(state, sync, sync_file));
        let (stop, stopped) = mpsc::channel();
        let indexer_db = db_path.clone();
        let indexer_journal = journal_path.clone();
        let indexer_writer = writer.clone();
        let indexer = std::thread::Builder::new()
            .name("sluice-indexer".into())
            .spawn(move || index_loop(&indexer_db, &indexer_journal, &indexer_writer, stopped))
            .map_err(backend)?;
        Ok(SqliteStore {
            db_path,
            journal_path,
            writer: Some(writer),
            stop_indexer: Some(stop),
            indexer: Some(indexer),
        })
    }

    pub fn path(&self) -> &Path {
        &self.db_path
    }

    /// Ends sessions a previous gateway process left open (it crashed or was
    /// killed), appending a `session_end` record to each chain.
    pub async fn close_orphaned_sessions(&self, reason: &str) -> Result<usize, StoreError> {
        let open: Vec<String> = self
            .read(|conn| {
                let mut stmt = conn
                    .prepare("SELECT id FROM sessions WHERE ended_at_ms IS NULL")
                    .map_err(backend)?;
                let ids = stmt
                    .query_map([], |r| r.get::<_, String>(0))
                    .map_err(backend)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(backend)?;
                Ok(ids)
            })
            .await?;
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

    /// The head of the gateway-wide chain, for a checkpoint. The gateway's
    /// own head covers every record appended, all of them written and
    /// synced first (so a checkpoint never covers what a crash could lose);
    /// a reader recomputes it from the journal.
    pub async fn tree_head(&self) -> Result<TreeHead, StoreError> {
        if let Some(j) = &self.writer {
            let (head, target, batch) = {
                let mut w = j.lock()?;
                let (head, target) = (w.log.clone(), w.queue.queued());
                (head, target, j.take_batch(&mut w))
            };
            j.commit(target, batch).await?;
            // Synced outside the lock: appends go on meanwhile.
            let j = j.clone();
            tokio::task::spawn_blocking(move || j.sync_written())
                .await
                .map_err(backend)??;
            return Ok(head);
        }
        let journal = self.journal_path.clone();
        tokio::task::spawn_blocking(move || scan_log(&journal, u64::MAX, None).map(|(h, _)| h))
            .await
            .map_err(backend)?
    }

    /// A signed checkpoint of the gateway-wide chain as it is now.
    pub async fn checkpoint(
        &self,
        signer: &sluice_core::audit::CheckpointSigner,
    ) -> Result<sluice_core::audit::Checkpoint, StoreError> {
        let head = self.tree_head().await?;
        signer.sign(&head, now_ms()).map_err(backend)
    }

    /// Compares the journal with an earlier checkpoint's head: does the
    /// gateway-wide chain over its first `head.size` records end at `head.root`?
    pub async fn verify_checkpoint(&self, head: &TreeHead) -> Result<CheckpointMatch, StoreError> {
        self.write_queued().await?;
        let journal = self.journal_path.clone();
        let want = head.clone();
        tokio::task::spawn_blocking(move || {
            let (total, at) = scan_log(&journal, u64::MAX, Some(want.size))?;
            Ok(compare_checkpoint(&want, at.as_ref(), total.size))
        })
        .await
        .map_err(backend)?
    }

    /// Runs a query on a fresh connection after bringing the index up to date.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.read_with(false, f).await
    }

    /// Like `read`, but a journal the index cannot catch up with (e.g. it was
    /// truncated) does not stop the query: verification must name what broke.
    async fn read_even_if_behind<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.read_with(true, f).await
    }

    async fn read_with<T: Send + 'static>(
        &self,
        tolerate_behind: bool,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.write_queued().await?;
        let db = self.db_path.clone();
        let journal = self.journal_path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = open_connection(&db)?;
            match catch_up(&conn, &journal) {
                Err(e) if tolerate_behind => {
                    tracing::warn!(message = "The journal could not be indexed; verifying what is there.", error = %e);
                }
                other => other?,
            }
            f(&conn)
        })
        .await
        .map_err(backend)?
    }

    fn journal(&self) -> Result<&Arc<Journal>, StoreError> {
        self.writer
            .as_ref()
            .ok_or_else(|| unavailable("this store was opened read-only"))
    }

    /// Returns once every record appended so far is in the journal.
    async fn write_queued(&self) -> Result<(), StoreError> {
        let Some(j) = &self.writer else {
            return Ok(());
        };
        let (target, batch) = {
            let mut w = j.lock()?;
            (w.queue.queued(), j.take_batch(&mut w))
        };
        j.commit(target, batch).await
    }
}

/// The chain state of the journal and its queue of lines, under the
/// journal's mutex: records are chained in the order their lines are queued.
struct JournalWriter {
    queue: Queue,
    heads: HashMap<String, (u64, String)>,
    /// Heads of sessions that ended recently, oldest first: records can
    /// still follow an end (an approval decided just after the client left)
    /// before the indexer has the session in the database.
    ended: std::collections::VecDeque<(String, (u64, String))>,
    db: Connection,
    /// The gateway-wide chain's head over every record appended (written or queued).
    log: TreeHead,
}

/// Ended sessions whose chain heads stay in memory (far more than the
/// indexer can fall behind by; the database has the older ones).
const RECENTLY_ENDED: usize = 1024;

impl JournalWriter {
    fn head(&mut self, session_id: &str, starting: bool) -> Result<(u64, String), StoreError> {
        if let Some(h) = self.heads.get(session_id) {
            return Ok(h.clone());
        }
        if let Some((_, h)) = self.ended.iter().rev().find(|(id, _)| id == session_id) {
            return Ok(h.clone());
        }
        if starting {
            return Ok((0, GENESIS_HASH.to_string()));
        }
        // A session of a previous process (all of its records are indexed).
        self.db
            .query_row(
                "SELECT last_seq, head_hash FROM sessions WHERE id = ?1",
                [session_id],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)),
            )
            .optional()
            .map_err(backend)?
            .ok_or_else(|| StoreError::UnknownSession(session_id.to_string()))
    }

    /// Chains a record and queues its line; returns the journal length that
    /// includes it. Background records ride with the next batch; durable
    /// ones wait for theirs (`Journal::commit`).
    fn append(
        &mut self,
        session_id: &str,
        event: &AuditEvent,
        at_ms: u64,
    ) -> Result<u64, StoreError> {
        if session_id.contains(['\t', '\n']) {
            return Err(unavailable("invalid session id"));
        }
        self.queue.check_healthy()?;
        let starting = matches!(event, AuditEvent::SessionStart { .. });
        let (last, prev) = self.head(session_id, starting)?;
        let seq = last + 1;
        let body = serde_json::to_string(event).map_err(backend)?;
        let hash = chain_hash(&prev, session_id, seq, at_ms, &body);
        let kind = event.kind();
        let numbers = format!("\t{seq}\t{at_ms}\t");
        // Queued in chain order: the journal's order is the chains' order.
        // The line is `session seq at prev hash kind body`, tab-separated.
        let target = self.queue.push(&[
            session_id.as_bytes(),
            numbers.as_bytes(),
            prev.as_bytes(),
            b"\t",
            hash.as_bytes(),
            b"\t",
            kind.as_bytes(),
            b"\t",
            body.as_bytes(),
            b"\n",
        ]);
        // The same write carries the record into the gateway-wide chain: its
        // link is recomputed from the journal's order, so nothing more is written.
        self.log.push(&hash);
        let live = self.heads.remove(session_id).is_some();
        if !live {
            // A record after the end: keep the recently-ended head current.
            self.ended.retain(|(id, _)| id != session_id);
        }
        if matches!(event, AuditEvent::SessionEnd { .. }) || (!live && !starting) {
            if self.ended.len() >= RECENTLY_ENDED {
                self.ended.pop_front();
            }
            self.ended.push_back((session_id.to_string(), (seq, hash)));
        } else {
            self.heads.insert(session_id.to_string(), (seq, hash));
        }
        Ok(target)
    }
}

/// Truncates a last line a crash left half-written; returns the length.
fn drop_torn_tail(file: &File) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    let mut f = file.try_clone()?;
    // Back from the end, a window at a time, to the last newline: a torn
    // record can be longer than any window (a very long command).
    const WINDOW: u64 = 1 << 20;
    let mut end = len;
    let keep = loop {
        let start = end.saturating_sub(WINDOW);
        f.seek(SeekFrom::Start(start))?;
        let mut window = Vec::new();
        (&mut f).take(end - start).read_to_end(&mut window)?;
        if end == len && window.last() == Some(&b'\n') {
            return Ok(len);
        }
        match window.iter().rposition(|&b| b == b'\n') {
            Some(i) => break start + i as u64 + 1,
            None if start == 0 => break 0,
            None => end = start,
        }
    };
    tracing::warn!(
        message = "Dropped a half-written journal record left by a crash.",
        bytes = len - keep
    );
    file.set_len(keep)?;
    Ok(keep)
}

fn index_loop(db: &Path, journal: &Path, writer: &Arc<Journal>, stop: mpsc::Receiver<()>) {
    let mut conn = None;
    loop {
        match stop.recv_timeout(INDEX_INTERVAL) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        if let Err(e) = writer.write_queued() {
            tracing::error!(message = "Writing background audit records failed.", error = %e);
        }
        if conn.is_none() {
            conn = open_connection(db).ok();
        }
        if let Some(c) = &conn {
            if let Err(e) = catch_up(c, journal) {
                tracing::error!(message = "Indexing the audit journal failed.", error = %e);
                conn = None;
            }
        }
    }
}

/// Moves journal lines past the indexed offset into SQLite, up to where the
/// journal ended when called: a writer appending all the while does not
/// keep it going (the gateway's indexer then takes what accumulated at its
/// next tick, in larger transactions; a reader has all that existed when it
/// asked). Safe to run from several processes: the offset is read and
/// advanced in one write transaction.
fn catch_up(conn: &Connection, journal: &Path) -> Result<(), StoreError> {
    let mut file = match File::open(journal) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(backend(e)),
    };
    let stop_at = file.metadata().map_err(backend)?.len();
    loop {
        // IMMEDIATE: the offset is read under the write lock, so two
        // indexers (gateway and a CLI reader) never index the same bytes twice.
        let tx =
            rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)
                .map_err(backend)?;
        let offset = indexed_offset(&tx)?;
        let len = file.metadata().map_err(backend)?.len();
        if len < offset {
            return Err(unavailable(format!(
                "the journal is shorter ({len} bytes) than what was indexed ({offset}); it was truncated or replaced"
            )));
        }
        if offset >= stop_at {
            return Ok(());
        }
        file.seek(SeekFrom::Start(offset)).map_err(backend)?;
        let mut chunk = Vec::new();
        (&mut file)
            .take(INDEX_CHUNK.min(stop_at - offset))
            .read_to_end(&mut chunk)
            .map_err(backend)?;
        if chunk.len() as u64 == INDEX_CHUNK && !chunk.contains(&b'\n') {
            // One record longer than a chunk (a very long command): read it
            // whole, or the index would stop here for good.
            std::io::BufReader::new(&mut file)
                .read_until(b'\n', &mut chunk)
                .map_err(backend)?;
        }
        let Some(end) = chunk.iter().rposition(|&b| b == b'\n') else {
            return Ok(());
        };
        let mut sessions: HashMap<String, SessionDelta> = HashMap::new();
        let mut log = match read_log_head(&tx)? {
            Some(head) => head,
            // An index from before the gateway-wide chain: compute its head once.
            None => scan_log(journal, offset, None)?.0,
        };
        let mut pos = offset;
        for raw in chunk[..=end].split(|&b| b == b'\n') {
            let at = pos;
            pos += raw.len() as u64 + 1;
            if raw.is_empty() {
                continue;
            }
            let line = parse_line(raw).ok_or_else(|| {
                unavailable(format!("journal line at byte {at} is not a valid record"))
            })?;
            index_line(&tx, &line, (at, raw.len()), &mut sessions)?;
            log.push(line.hash);
        }
        tx.execute(
            "INSERT INTO log_head (id, size, root) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET size = excluded.size, root = excluded.root",
            params![log.size as i64, log.root],
        )
        .map_err(backend)?;
        for (id, d) in sessions {
            tx.prepare_cached(
                "UPDATE sessions SET last_seq = MAX(last_seq, ?2),
                    head_hash = CASE WHEN ?2 >= last_seq THEN ?3 ELSE head_hash END,
                    commands = commands + ?4,
                    ended_at_ms = COALESCE(?5, ended_at_ms),
                    end_reason = COALESCE(?6, end_reason)
                 WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.execute(params![
                    id,
                    d.last_seq as i64,
                    d.head,
                    d.commands,
                    d.ended_at_ms,
                    d.end_reason
                ])
            })
            .map_err(backend)?;
        }
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('journal_offset', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [(offset + end as u64 + 1) as i64],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
    }
}

/// How far into the journal the index reaches, in bytes. (A negative value,
/// which only tampering leaves, reads as past any journal: `catch_up` then
/// refuses it, and `verify` compares every line with the index.)
fn indexed_offset(conn: &Connection) -> Result<u64, StoreError> {
    Ok(conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'journal_offset'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .optional()
        .map_err(backend)?
        .unwrap_or(0) as u64)
}

fn read_log_head(conn: &Connection) -> Result<Option<TreeHead>, StoreError> {
    conn.query_row("SELECT size, root FROM log_head WHERE id = 1", [], |r| {
        Ok(TreeHead {
            size: r.get::<_, i64>(0)? as u64,
            root: r.get(1)?,
        })
    })
    .optional()
    .map_err(backend)
}

/// Recomputes the gateway-wide chain from the journal's first `max_bytes`
/// (whole lines only): the head after all of them, and the head after
/// `at_size` records if the journal holds that many.
fn scan_log(
    journal: &Path,
    max_bytes: u64,
    at_size: Option<u64>,
) -> Result<(TreeHead, Option<TreeHead>), StoreError> {
    use std::io::BufRead;
    let mut head = TreeHead::default();
    let mut at = (at_size == Some(0)).then(TreeHead::default);
    let file = match File::open(journal) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((head, at)),
        Err(e) => return Err(backend(e)),
    };
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file.take(max_bytes));
    let mut raw = Vec::new();
    let mut pos = 0u64;
    loop {
        raw.clear();
        let n = reader.read_until(b'\n', &mut raw).map_err(backend)?;
        if n == 0 || raw.last() != Some(&b'\n') {
            // The end, or a line still being written.
            break;
        }
        let line = parse_line(&raw[..n - 1]).ok_or_else(|| {
            unavailable(format!("journal line at byte {pos} is not a valid record"))
        })?;
        pos += n as u64;
        head.push(line.hash);
        if Some(head.size) == at_size {
            at = Some(head.clone());
        }
    }
    Ok((head, at))
}

struct JournalLine<'a> {
    session_id: &'a str,
    seq: u64,
    at_ms: u64,
    prev_hash: &'a str,
    hash: &'a str,
    kind: &'a str,
    body: &'a str,
}

fn parse_line(raw: &[u8]) -> Option<JournalLine<'_>> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut f = text.splitn(7, '\t');
    Some(JournalLine {
        session_id: f.next()?,
        seq: f.next()?.parse().ok()?,
        at_ms: f.next()?.parse().ok()?,
        prev_hash: f.next()?,
        hash: f.next()?,
        kind: f.next()?,
        body: f.next()?,
    })
}

#[derive(Default)]
struct SessionDelta {
    last_seq: u64,
    head: String,
    commands: i64,
    ended_at_ms: Option<i64>,
    end_reason: Option<String>,
}

/// Indexes one journal line, found at `(offset, length)` in the journal. The
/// index keeps what finds, orders and chains a record; its body stays in the
/// journal alone (read back by `records`), which halves what the indexer
/// writes.
fn index_line(
    tx: &rusqlite::Transaction<'_>,
    line: &JournalLine<'_>,
    (line_at, line_len): (u64, usize),
    sessions: &mut HashMap<String, SessionDelta>,
) -> Result<(), StoreError> {
    let kind = match line.kind {
        k @ ("session_start" | "command_decided" | "command_finished" | "approval_requested"
        | "approval_decided" | "session_end" | "stream_output" | "window_resized"
        | "file_transfer") => k,
        other => {
            return Err(unavailable(format!(
                "journal record of {} #{} has unknown kind {other:?}",
                line.session_id, line.seq
            )))
        }
    };
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO events
                (session_id, seq, at_ms, kind, body, prev_hash, hash, line_at, line_len)
             VALUES (?1, ?2, ?3, ?4, '', ?5, ?6, ?7, ?8)",
        )
        .and_then(|mut s| {
            s.execute(params![
                line.session_id,
                line.seq as i64,
                line.at_ms as i64,
                kind,
                line.prev_hash,
                line.hash,
                line_at as i64,
                line_len as i64
            ])
        })
        .map_err(backend)?;
    if inserted == 0 {
        return Ok(());
    }
    // Only the records that change a session's summary are decoded here.
    let event: Option<AuditEvent> = match kind {
        "session_start" | "session_end" => Some(serde_json::from_str(line.body).map_err(|e| {
            unavailable(format!(
                "journal record of {} #{}: {e}",
                line.session_id, line.seq
            ))
        })?),
        _ => None,
    };
    if let Some(AuditEvent::SessionStart {
        identity,
        connection,
        protocol,
        client_addr,
    }) = &event
    {
        tx.prepare_cached(
            "INSERT OR IGNORE INTO sessions (id, subject, groups_json, connection, protocol,
                client_addr, started_at_ms, last_seq, head_hash, issuer)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .and_then(|mut s| {
            s.execute(params![
                line.session_id,
                identity.subject,
                serde_json::to_string(&identity.groups).unwrap_or_default(),
                connection,
                protocol.to_string(),
                client_addr,
                line.at_ms as i64,
                line.seq as i64,
                line.hash,
                identity.issuer
            ])
        })
        .map_err(backend)?;
    }
    let d = sessions.entry(line.session_id.to_string()).or_default();
    if line.seq >= d.last_seq {
        d.last_seq = line.seq;
        d.head = line.hash.to_string();
    }
    if kind == "command_decided" {
        d.commands += 1;
    }
    if let Some(AuditEvent::SessionEnd { reason }) = event {
        d.ended_at_ms = Some(line.at_ms as i64);
        d.end_reason = Some(reason);
    }
    Ok(())
}

/// A session's records in order, their bodies read back from the journal.
/// `Err(break)`: an indexed record's journal line is not that record (the
/// journal or its index was changed).
fn records(
    conn: &Connection,
    journal: &Path,
    session_id: &str,
) -> Result<Result<Vec<AuditRecord>, ChainBreak>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, at_ms, body, prev_hash, hash, line_at, line_len FROM events
             WHERE session_id = ?1 ORDER BY seq",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map([session_id], |r| {
            let record = AuditRecord {
                session_id: session_id.to_string(),
                seq: r.get::<_, i64>(0)? as u64,
                at_ms: r.get::<_, i64>(1)? as u64,
                body: r.get(2)?,
                prev_hash: r.get(3)?,
                hash: r.get(4)?,
            };
            Ok((
                record,
                r.get::<_, Option<i64>>(5)?,
                r.get::<_, Option<i64>>(6)?,
            ))
        })
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    let mut file: Option<(File, u64)> = None;
    let mut out = Vec::with_capacity(rows.len());
    for (mut record, line_at, line_len) in rows {
        let refused = |record: AuditRecord, problem: String| {
            Ok(Err(ChainBreak {
                session_id: record.session_id,
                seq: record.seq,
                problem,
            }))
        };
        match (line_at, line_len) {
            (Some(at), Some(len)) => {
                let (file, size) = match &mut file {
                    Some(open) => open,
                    None => file.insert(open_journal(journal)?),
                };
                match journal_body(file, *size, at, len, &record)? {
                    Some(body) => record.body = body,
                    None => return refused(record, format!(
                        "the journal line the index points at (byte {at}) is not this record: the journal or its index was changed"
                    )),
                }
            }
            // Rows indexed before bodies moved out keep theirs; those never
            // had an empty body.
            (None, None) if !record.body.is_empty() => {}
            _ => {
                return refused(
                    record,
                    "the index row has neither a body nor a whole pointer into the journal: the index was changed".into(),
                )
            }
        }
        out.push(record);
    }
    Ok(Ok(out))
}

fn open_journal(journal: &Path) -> Result<(File, u64), StoreError> {
    let file = File::open(journal).map_err(|e| {
        StoreError::backend(
            format!("{} (it holds the records' bodies)", journal.display()),
            e,
        )
    })?;
    let size = file.metadata().map_err(backend)?.len();
    Ok((file, size))
}

/// The body of `record`'s journal line, `len` bytes at `at`; `None` unless
/// the bytes there (of a journal `size` long) are one whole line that is that
/// record as indexed (session, seq, time, both hashes) and still hashes to
/// its hash.
fn journal_body(
    file: &mut File,
    size: u64,
    at: i64,
    len: i64,
    record: &AuditRecord,
) -> Result<Option<String>, StoreError> {
    let (Ok(at), Ok(len)) = (u64::try_from(at), u64::try_from(len)) else {
        return Ok(None);
    };
    if at.checked_add(len).is_none_or(|end| end >= size) {
        return Ok(None);
    }
    // The line and the newline that ends it. Reading stops at the first
    // newline, so a tampered length never sizes more than one real line.
    let mut raw = Vec::new();
    file.seek(SeekFrom::Start(at)).map_err(backend)?;
    std::io::BufReader::new(file.take(len + 1))
        .read_until(b'\n', &mut raw)
        .map_err(backend)?;
    if raw.len() as u64 != len + 1 || raw.pop() != Some(b'\n') {
        return Ok(None);
    }
    Ok(parse_line(&raw)
        .filter(|l| {
            l.session_id == record.session_id
                && l.seq == record.seq
                && l.at_ms == record.at_ms
                && l.prev_hash == record.prev_hash
                && l.hash == record.hash
                && chain_hash(l.prev_hash, l.session_id, l.seq, l.at_ms, l.body) == l.hash
        })
        .map(|l| l.body.to_string()))
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn ready(&self) -> Result<(), StoreError> {
        self.journal()?.lock()?.queue.check_healthy()
    }

    async fn append(&self, session_id: &str, event: AuditEvent) -> Result<(), StoreError> {
        let j = self.journal()?;
        let (target, batch) = {
            let mut w = j.lock()?;
            let target = w.append(session_id, &event, now_ms())?;
            (target, j.take_batch(&mut w))
        };
        j.commit(target, batch).await
    }

    fn append_background(&self, session_id: &str, event: AuditEvent) {
        let queued = self
            .journal()
            .and_then(|j| j.lock()?.append(session_id, &event, now_ms()));
        if let Err(e) = queued {
            tracing::error!(message = "An audit record could not be stored.", session = %session_id, error = %e);
        }
    }

    async fn sessions(&self) -> Result<Vec<SessionSummary>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT id, subject, groups_json, connection, protocol, client_addr,
                            started_at_ms, ended_at_ms, end_reason, commands, issuer
                     FROM sessions ORDER BY started_at_ms, id",
                )
                .map_err(backend)?;
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
                        issuer: r.get(10)?,
                        node: String::new(),
                    })
                })
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            Ok(rows)
        })
        .await
    }

    async fn session_records(&self, session_id: &str) -> Result<Vec<AuditRecord>, StoreError> {
        let id = session_id.to_string();
        let journal = self.journal_path.clone();
        self.read(move |conn| {
            let known: Option<i64> = conn
                .query_row("SELECT 1 FROM sessions WHERE id = ?1", [&id], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            if known.is_none() {
                return Err(StoreError::UnknownSession(id));
            }
            records(conn, &journal, &id)?.map_err(|b| {
                unavailable(format!(
                    "session {} record #{}: {}",
                    b.session_id, b.seq, b.problem
                ))
            })
        })
        .await
    }

    async fn verify(&self) -> Result<VerifyReport, StoreError> {
        let journal = self.journal_path.clone();
        self.read_even_if_behind(move |conn| {
            // One snapshot of the index throughout: the gateway's indexer
            // may commit while this runs.
            let tx = rusqlite::Transaction::new_unchecked(
                conn,
                rusqlite::TransactionBehavior::Deferred,
            )
            .map_err(backend)?;
            let conn: &Connection = &tx;
            let indexed = indexed_offset(conn)?;
            let mut report = VerifyReport::default();
            let mut stmt = conn
                .prepare("SELECT id, last_seq, head_hash FROM sessions ORDER BY started_at_ms, id")
                .map_err(backend)?;
            let heads = stmt
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, String>(2)?))
                })
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            for (id, last_seq, head) in &heads {
                let recs = match records(conn, &journal, id)? {
                    Ok(recs) => recs,
                    // The walk over the journal names the first change more precisely.
                    Err(b) => {
                        report.first_break =
                            Some(verify_journal(conn, &journal, indexed)?.unwrap_or(b));
                        return Ok(report);
                    }
                };
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
                .map_err(backend)?;
            if let Some(id) = orphan {
                report.first_break = Some(sluice_core::audit::ChainBreak {
                    session_id: id,
                    seq: 1,
                    problem: "records of a session the store has no entry for (session removed?)".into(),
                });
                return Ok(report);
            }
            report.first_break = verify_journal(conn, &journal, indexed)?;
            Ok(report)
        })
        .await
    }
}

/// The journal holds every record whole (the index keeps only hashes and
/// where each line is, and bodies of old indexes): each line must hash
/// correctly, follow its session's previous line, and match the index.
/// Lines past the `indexed` offset of the index's snapshot were appended
/// since (a live gateway writes on): they are checked but for the index
/// comparison, and a last line still without its newline is left alone.
fn verify_journal(
    conn: &Connection,
    journal: &Path,
    indexed: u64,
) -> Result<Option<sluice_core::audit::ChainBreak>, StoreError> {
    use sluice_core::audit::ChainBreak;
    // Streamed a line at a time: a journal can be far larger than memory.
    let mut file = match File::open(journal) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(backend(e)),
    };
    // Up to where the journal ends now: a gateway writing on does not keep
    // this going (and holding the index's read snapshot open). A line cut
    // there is the unfinished tail.
    let end = file.metadata().map_err(backend)?.len();
    // Lines past `indexed` are not compared with the index: it must end
    // where a line does, or a changed offset would hide lines from that
    // comparison.
    if !ends_a_line(&mut file, end, indexed).map_err(backend)? {
        return Ok(Some(ChainBreak {
            session_id: "(journal)".into(),
            seq: 0,
            problem: format!(
                "the index says it covers the journal up to byte {indexed}, which is not where a record ends: the index was changed"
            ),
        }));
    }
    file.seek(SeekFrom::Start(0)).map_err(backend)?;
    let mut reader = std::io::BufReader::new(file.take(end));
    let mut heads: HashMap<String, (u64, String)> = HashMap::new();
    let mut stmt = conn
        .prepare_cached("SELECT hash FROM events WHERE session_id = ?1 AND seq = ?2")
        .map_err(backend)?;
    let mut raw = Vec::new();
    let mut offset = 0u64;
    loop {
        raw.clear();
        let read = reader.read_until(b'\n', &mut raw).map_err(backend)?;
        // The end, or a last line still being written: left alone.
        if read == 0 || raw.pop() != Some(b'\n') {
            break;
        }
        let at = offset;
        offset += read as u64;
        if raw.is_empty() {
            continue;
        }
        let Some(line) = parse_line(&raw) else {
            return Ok(Some(ChainBreak {
                session_id: "(journal)".into(),
                seq: 0,
                problem: format!("journal line at byte {at} is not a valid record"),
            }));
        };
        let broken = |problem: String| {
            Some(ChainBreak {
                session_id: line.session_id.to_string(),
                seq: line.seq,
                problem: format!("journal (byte {at}): {problem}"),
            })
        };
        if chain_hash(
            line.prev_hash,
            line.session_id,
            line.seq,
            line.at_ms,
            line.body,
        ) != line.hash
        {
            return Ok(broken("content changed (hash mismatch)".into()));
        }
        let (last_seq, last_hash) = heads
            .get(line.session_id)
            .map_or((0, GENESIS_HASH), |(seq, hash)| (*seq, hash.as_str()));
        if line.seq != last_seq + 1 || line.prev_hash != last_hash {
            return Ok(broken(
                "does not follow the session's previous record".into(),
            ));
        }
        match heads.get_mut(line.session_id) {
            Some(head) => {
                head.0 = line.seq;
                line.hash.clone_into(&mut head.1);
            }
            None => {
                heads.insert(line.session_id.to_owned(), (line.seq, line.hash.to_owned()));
            }
        }
        if at >= indexed {
            continue;
        }
        let stored: Option<String> = stmt
            .query_row(params![line.session_id, line.seq as i64], |r| r.get(0))
            .optional()
            .map_err(backend)?;
        if stored.as_deref() != Some(line.hash) {
            return Ok(broken("differs from the stored record".into()));
        }
    }
    // Every stored record must still be in the journal.
    let mut sessions = conn
        .prepare("SELECT id, last_seq FROM sessions ORDER BY started_at_ms, id")
        .map_err(backend)?;
    let rows = sessions
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    for (id, last_seq) in rows {
        let in_journal = heads.get(id.as_str()).map_or(0, |h| h.0);
        if in_journal < last_seq {
            return Ok(Some(ChainBreak {
                session_id: id,
                seq: in_journal + 1,
                problem: format!(
                    "missing from the journal (it ends at #{in_journal}, the store has #{last_seq})"
                ),
            }));
        }
    }
    Ok(None)
}

/// Whether `at` is where a line of the journal's first `len` bytes starts
/// (or past its last whole line): byte `at - 1` is a newline, or no newline
/// follows `at` before `len`.
fn ends_a_line(file: &mut File, len: u64, at: u64) -> std::io::Result<bool> {
    if at == 0 || at >= len {
        return Ok(true);
    }
    file.seek(SeekFrom::Start(at - 1))?;
    let mut reader = std::io::BufReader::new((&mut *file).take(len - (at - 1)));
    let mut before = [0u8; 1];
    reader.read_exact(&mut before)?;
    if before[0] == b'\n' {
        return Ok(true);
    }
    // Inside a line: a break, unless it is the unfinished last one.
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok(true);
        }
        if chunk.contains(&b'\n') {
            return Ok(false);
        }
        let n = chunk.len();
        reader.consume(n);
    }
}

#[cfg(test)]
mod tests;
