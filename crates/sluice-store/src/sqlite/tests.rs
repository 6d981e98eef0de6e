use super::*;
use crate::test_events::{decided, finished, identity, start_event};
use sluice_core::model::{Outcome, Protocol};
use std::sync::Arc;
use std::time::Duration;

async fn session(store: &SqliteStore, id: &str, commands: u64) {
    start(store, id).await;
    for n in 1..=commands {
        command(store, id, n).await.unwrap();
    }
    store
        .append(
            id,
            AuditEvent::SessionEnd {
                reason: "closed".into(),
            },
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn sessions_are_listed_and_chains_verify() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Normal)).unwrap();
    session(&store, "s1", 3).await;
    session(&store, "s2", 1).await;
    let list = store.sessions().await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].commands, 3);
    assert_eq!(list[0].end_reason.as_deref(), Some("closed"));
    let report = store.verify().await.unwrap();
    assert_eq!(report.sessions, 2);
    assert_eq!(report.records, 2 + 6 + 2 + 2);
    assert!(report.first_break.is_none());
}

fn tamper(dir: &Path, sql: &str) {
    let conn = Connection::open(dir.join("sluice.db")).unwrap();
    conn.execute_batch(sql).unwrap();
}

#[tokio::test]
async fn changed_record_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Normal)).unwrap();
    session(&store, "s1", 3).await;
    store.sessions().await.unwrap(); // indexed
                                     // The index holds no body (see below): change what it does hold.
    tamper(
        dir.path(),
        "UPDATE events SET at_ms = at_ms + 1 WHERE session_id = 's1' AND seq = 4",
    );
    let b = store.verify().await.unwrap().first_break.unwrap();
    assert_eq!((b.session_id.as_str(), b.seq), ("s1", 4));
    assert!(b.problem.contains("is not this record"), "{}", b.problem);
}

/// The index holds no bodies; they are read back from the journal line the
/// index points at, which must be that very record.
#[tokio::test]
async fn bodies_are_read_from_the_journal_line_the_index_points_at() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Normal)).unwrap();
    session(&store, "s1", 3).await;
    let records = store.session_records("s1").await.unwrap();
    assert_eq!(records.len(), 8);
    assert!(records[3].body.contains("select 2"), "{}", records[3].body);
    let conn = Connection::open(dir.path().join("sluice.db")).unwrap();
    let with_body: i64 = conn
        .query_row("SELECT count(*) FROM events WHERE body != ''", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(with_body, 0);
    let (at, len): (i64, i64) = conn
        .query_row(
            "SELECT line_at, line_len FROM events WHERE session_id = 's1' AND seq = 4",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let restore = format!(
        "UPDATE events SET line_at = {at}, line_len = {len} WHERE session_id = 's1' AND seq = 4"
    );
    // Record 4 pointed at record 6's line: both readers refuse it.
    tamper(
        dir.path(),
        "UPDATE events SET line_at = (SELECT line_at FROM events WHERE session_id = 's1' AND seq = 6),
             line_len = (SELECT line_len FROM events WHERE session_id = 's1' AND seq = 6)
         WHERE session_id = 's1' AND seq = 4",
    );
    let b = store.verify().await.unwrap().first_break.unwrap();
    assert_eq!((b.session_id.as_str(), b.seq), ("s1", 4));
    let err = store.session_records("s1").await.unwrap_err().to_string();
    assert!(
        err.contains("record #4") && err.contains("was changed"),
        "{err}"
    );
    tamper(dir.path(), &restore);
    assert_eq!(store.session_records("s1").await.unwrap(), records);
    // Pointers that are not exactly the record's line, and a half pointer.
    for change in [
        "line_len = line_len - 1",
        "line_len = line_len + 1",
        "line_at = line_at + 1, line_len = line_len - 1",
        "line_len = 9223372036854775807",
        "line_len = 8388609",
        "line_at = -1",
        "line_len = NULL",
        "line_at = NULL, line_len = NULL",
    ] {
        tamper(
            dir.path(),
            &format!("UPDATE events SET {change} WHERE session_id = 's1' AND seq = 4"),
        );
        let err = store.session_records("s1").await.unwrap_err().to_string();
        assert!(err.contains("record #4"), "{change}: {err}");
        let b = store.verify().await.unwrap().first_break.unwrap();
        assert_eq!((b.session_id.as_str(), b.seq), ("s1", 4), "{change}");
        tamper(dir.path(), &restore);
    }
    // A body changed in the journal alone is refused, not shown.
    let journal = dir.path().join("journal.log");
    let text = std::fs::read_to_string(&journal).unwrap();
    std::fs::write(&journal, text.replacen("select 2", "select 9", 1)).unwrap();
    let err = store.session_records("s1").await.unwrap_err().to_string();
    assert!(err.contains("record #4"), "{err}");
}

/// An index written before bodies moved to the journal alone gets the new
/// columns on open and its rows keep serving their own bodies.
#[tokio::test]
async fn an_index_with_bodies_in_its_rows_is_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Normal)).unwrap();
    session(&store, "s1", 2).await;
    let before = store.session_records("s1").await.unwrap();
    drop(store);
    let conn = Connection::open(dir.path().join("sluice.db")).unwrap();
    for r in &before {
        conn.execute(
            "UPDATE events SET body = ?1 WHERE session_id = 's1' AND seq = ?2",
            params![r.body, r.seq as i64],
        )
        .unwrap();
    }
    conn.execute_batch(
        "ALTER TABLE events DROP COLUMN line_at; ALTER TABLE events DROP COLUMN line_len;",
    )
    .unwrap();
    drop(conn);
    let store = SqliteStore::open(dir.path(), Mode::Reader).unwrap();
    assert_eq!(store.session_records("s1").await.unwrap(), before);
    assert!(store.verify().await.unwrap().first_break.is_none());
}

#[tokio::test]
async fn removed_last_record_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Normal)).unwrap();
    session(&store, "s1", 2).await;
    store.sessions().await.unwrap(); // indexed
    tamper(
        dir.path(),
        "DELETE FROM events WHERE session_id = 's1' AND seq = 6",
    );
    let b = store.verify().await.unwrap().first_break.unwrap();
    assert_eq!(b.seq, 6);
}

#[tokio::test]
async fn orphaned_sessions_are_closed_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Normal)).unwrap();
        store
            .append(
                "s1",
                AuditEvent::SessionStart {
                    identity: identity(),
                    connection: "appdb".into(),
                    protocol: Protocol::Postgres,
                    client_addr: "x".into(),
                },
            )
            .await
            .unwrap();
    }
    let store = SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Full)).unwrap();
    assert_eq!(
        store
            .close_orphaned_sessions("gateway restarted")
            .await
            .unwrap(),
        1
    );
    let s = &store.sessions().await.unwrap()[0];
    assert_eq!(s.end_reason.as_deref(), Some("gateway restarted"));
    assert!(store.verify().await.unwrap().first_break.is_none());
}

#[tokio::test]
async fn unwritable_store_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Normal)).unwrap();
    session(&store, "s1", 1).await;
    // An event for a session that was never started is refused, not guessed at.
    let r = store
        .append("nope", AuditEvent::SessionEnd { reason: "x".into() })
        .await;
    assert!(r.is_err());
    // The writer keeps serving afterwards.
    session(&store, "s2", 1).await;
}

#[tokio::test]
async fn a_reader_sees_what_the_writer_appended() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Normal)).unwrap();
    session(&store, "s1", 2).await;
    let reader = SqliteStore::open(dir.path(), Mode::Reader).unwrap();
    assert_eq!(reader.sessions().await.unwrap()[0].commands, 2);
    assert!(reader
        .append("s1", AuditEvent::SessionEnd { reason: "x".into() })
        .await
        .is_err());
    // A second writer on the same state directory is refused.
    assert!(SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Normal)).is_err());
}

#[tokio::test]
async fn a_torn_last_line_is_dropped_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Normal)).unwrap();
        session(&store, "s1", 1).await;
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("journal.log"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"s1\t5\t123\tabc").unwrap();
    drop(f);
    let store = SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Normal)).unwrap();
    session(&store, "s2", 1).await;
    assert!(store.verify().await.unwrap().first_break.is_none());
    assert_eq!(store.sessions().await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_changed_journal_line_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Normal)).unwrap();
    session(&store, "s1", 3).await;
    store.sessions().await.unwrap();
    let path = dir.path().join("journal.log");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("select 2", "select 7", 1)).unwrap();
    let b = store.verify().await.unwrap().first_break.unwrap();
    assert_eq!((b.session_id.as_str(), b.seq), ("s1", 4));
    assert!(
        b.problem.contains("journal (byte") && b.problem.contains("content changed"),
        "{b}"
    );
}

#[tokio::test]
async fn a_removed_journal_tail_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Normal)).unwrap();
    session(&store, "s1", 2).await;
    store.sessions().await.unwrap();
    drop(store);
    let path = dir.path().join("journal.log");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.pop();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let reader = SqliteStore::open(dir.path(), Mode::Reader).unwrap();
    let b = reader.verify().await.unwrap().first_break.unwrap();
    assert_eq!((b.session_id.as_str(), b.seq), ("s1", 6), "{b}");
}

/// A record can follow a session's end at once (an approval decided just
/// after the client left), before the indexer has the session in the
/// database; the chain stays whole.
#[tokio::test]
async fn a_record_right_after_the_end_extends_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Normal)).unwrap();
    session(&store, "s1", 1).await;
    for n in [7, 8] {
        store
            .append(
                "s1",
                AuditEvent::CommandFinished {
                    command_id: n,
                    outcome: Outcome::default(),
                },
            )
            .await
            .unwrap();
    }
    let report = store.verify().await.unwrap();
    assert!(report.first_break.is_none(), "{:?}", report.first_break);
    assert_eq!(report.records, 1 + 2 + 1 + 2);
}

/// What someone who can write `state_dir` can do: rewrite the journal with
/// every session chain recomputed (hashes, heads) and the index rebuilt.
/// `edit` gets and returns (session, kind, body) lines in journal order.
fn forge(
    dir: &Path,
    edit: impl FnOnce(Vec<(String, String, String)>) -> Vec<(String, String, String)>,
) {
    let path = dir.join("journal.log");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<(String, String, String, String)> = text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(7, '\t').collect();
            (f[0].into(), f[2].into(), f[5].into(), f[6].into())
        })
        .collect();
    let plain = lines
        .iter()
        .map(|(s, _, k, b)| (s.clone(), k.clone(), b.clone()))
        .collect();
    let edited = edit(plain);
    let mut heads: HashMap<String, (u64, String)> = HashMap::new();
    let mut out = String::new();
    for (session, kind, body) in edited {
        let (last, prev) = heads
            .get(&session)
            .cloned()
            .unwrap_or((0, GENESIS_HASH.to_string()));
        let seq = last + 1;
        let at_ms = 1_000 + seq;
        let hash = chain_hash(&prev, &session, seq, at_ms, &body);
        out.push_str(&format!(
            "{session}\t{seq}\t{at_ms}\t{prev}\t{hash}\t{kind}\t{body}\n"
        ));
        heads.insert(session, (seq, hash));
    }
    std::fs::write(&path, out).unwrap();
    for f in ["sluice.db", "sluice.db-wal", "sluice.db-shm"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}

/// Two sessions written, a checkpoint taken, the gateway stopped.
async fn checkpointed() -> (tempfile::TempDir, TreeHead) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Normal)).unwrap();
    session(&store, "s1", 2).await;
    session(&store, "s2", 1).await;
    let head = store.tree_head().await.unwrap();
    assert_eq!(head.size, 2 + 4 + 2 + 2);
    drop(store);
    (dir, head)
}

#[tokio::test]
async fn an_untouched_store_matches_its_checkpoints() {
    let (dir, head) = checkpointed().await;
    let reader = SqliteStore::open(dir.path(), Mode::Reader).unwrap();
    assert_eq!(reader.tree_head().await.unwrap(), head);
    assert_eq!(
        reader.verify_checkpoint(&head).await.unwrap(),
        CheckpointMatch::Consistent
    );
    // The gateway resumes the chain after a restart; the old checkpoint
    // still holds for the longer log.
    let store = SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Normal)).unwrap();
    session(&store, "s3", 1).await;
    let later = store.tree_head().await.unwrap();
    assert_eq!(later.size, head.size + 4);
    assert_eq!(
        store.verify_checkpoint(&head).await.unwrap(),
        CheckpointMatch::Consistent
    );
    drop(store);
    let reader = SqliteStore::open(dir.path(), Mode::Reader).unwrap();
    assert_eq!(reader.tree_head().await.unwrap(), later);
    assert!(reader.verify().await.unwrap().first_break.is_none());
}

#[tokio::test]
async fn a_rewritten_session_is_detected_against_a_checkpoint() {
    let (dir, head) = checkpointed().await;
    forge(dir.path(), |lines| {
        lines
            .into_iter()
            .map(|(s, k, b)| (s, k, b.replace("select 2", "select 9")))
            .collect()
    });
    let reader = SqliteStore::open(dir.path(), Mode::Reader).unwrap();
    // The per-session chains alone cannot tell: they were recomputed.
    assert!(reader.verify().await.unwrap().first_break.is_none());
    assert_eq!(
        reader.verify_checkpoint(&head).await.unwrap(),
        CheckpointMatch::Diverged { size: head.size }
    );
}

#[tokio::test]
async fn a_deleted_session_is_detected_against_a_checkpoint() {
    let (dir, head) = checkpointed().await;
    forge(dir.path(), |lines| {
        lines.into_iter().filter(|(s, _, _)| s != "s1").collect()
    });
    let reader = SqliteStore::open(dir.path(), Mode::Reader).unwrap();
    assert!(reader.verify().await.unwrap().first_break.is_none());
    assert_eq!(reader.sessions().await.unwrap().len(), 1);
    assert_eq!(
        reader.verify_checkpoint(&head).await.unwrap(),
        CheckpointMatch::Truncated {
            have: 4,
            want: head.size
        }
    );
}

#[tokio::test]
async fn a_truncated_journal_is_detected_against_a_checkpoint() {
    let (dir, head) = checkpointed().await;
    forge(dir.path(), |mut lines| {
        lines.truncate(5);
        lines
    });
    let reader = SqliteStore::open(dir.path(), Mode::Reader).unwrap();
    assert_eq!(
        reader.verify_checkpoint(&head).await.unwrap(),
        CheckpointMatch::Truncated {
            have: 5,
            want: head.size
        }
    );
    // Replaced by as many forged records: the count matches, the root does not.
    forge(dir.path(), |mut lines| {
        while lines.len() < head.size as usize {
            lines.push(lines[0].clone());
        }
        lines
    });
    let reader = SqliteStore::open(dir.path(), Mode::Reader).unwrap();
    assert_eq!(
        reader.verify_checkpoint(&head).await.unwrap(),
        CheckpointMatch::Diverged { size: head.size }
    );
}

/// A store indexed before the gateway-wide chain existed (no log_head):
/// the writer resumes the chain from the journal, not from empty.
#[tokio::test]
async fn an_index_without_a_log_head_resumes_from_the_journal() {
    let (dir, head) = checkpointed().await;
    tamper(dir.path(), "DELETE FROM log_head");
    let store = SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Normal)).unwrap();
    assert_eq!(store.tree_head().await.unwrap(), head);
    session(&store, "s3", 1).await;
    let later = store.tree_head().await.unwrap();
    drop(store);
    let reader = SqliteStore::open(dir.path(), Mode::Reader).unwrap();
    assert_eq!(reader.tree_head().await.unwrap(), later);
}

async fn command(store: &SqliteStore, id: &str, n: u64) -> Result<(), StoreError> {
    store.append(id, decided(n)).await?;
    store.append_background(id, finished(n));
    Ok(())
}

async fn start(store: &SqliteStore, id: &str) {
    store.append(id, start_event()).await.unwrap();
}

/// Sessions appending at once share writes; every acknowledged record is
/// in the journal when its append returns, and the chains and the
/// gateway-wide chain verify as with one writer.
async fn concurrent_sessions_share_writes(sync: AuditSync) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path(), Mode::Writer(sync)).unwrap());
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let store = store.clone();
            let journal = dir.path().join("journal.log");
            tokio::spawn(async move {
                let id = format!("s{t}");
                start(&store, &id).await;
                for n in 1..=50 {
                    command(&store, &id, n).await.unwrap();
                    // Write-ahead: the record is in the file once acknowledged.
                    if n % 10 == 0 {
                        let text = std::fs::read_to_string(&journal).unwrap();
                        let needle = format!("\"text\":\"select {n}\"");
                        assert!(text
                            .lines()
                            .any(|l| l.starts_with(&format!("{id}\t")) && l.contains(&needle)));
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let head = store.tree_head().await.unwrap();
    let report = store.verify().await.unwrap();
    assert!(report.first_break.is_none(), "{:?}", report.first_break);
    assert_eq!(report.records, 16 * (1 + 100));
    assert_eq!(head.size, 16 * (1 + 100));
    drop(store);
    let reader = SqliteStore::open(dir.path(), Mode::Reader).unwrap();
    assert_eq!(
        reader.verify_checkpoint(&head).await.unwrap(),
        CheckpointMatch::Consistent
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_share_writes_normal() {
    concurrent_sessions_share_writes(AuditSync::Normal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_share_writes_full() {
    concurrent_sessions_share_writes(AuditSync::Full).await;
}

/// On a pinned session thread, a "full" batch is written and synced on the
/// blocking pool: every append still returns only once its record is in
/// the file, and the chains verify.
#[tokio::test]
async fn concurrent_sessions_share_writes_full_on_a_pinned_thread() {
    let pinned = sluice_core::pinned::PinnedRuntimes::start(1).unwrap();
    let (runtime, _pin) = pinned.least_busy().unwrap();
    runtime
        .spawn(async {
            assert!(sluice_core::pinned::on_pinned_thread());
            concurrent_sessions_share_writes(AuditSync::Full).await;
        })
        .await
        .unwrap();
    tokio::task::spawn_blocking(move || pinned.shutdown())
        .await
        .unwrap();
}

/// A batch dropped before it ran (a blocking-pool job discarded at
/// shutdown) is written as it is dropped: the journal stays healthy and
/// its records are there.
#[tokio::test]
async fn a_batch_dropped_unrun_is_written_not_abandoned() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Full)).unwrap();
    start(&store, "s1").await;
    let journal = store.journal().unwrap();
    let batch = {
        let mut w = journal.lock().unwrap();
        w.append("s1", &decided(1), now_ms()).unwrap();
        journal.take_batch(&mut w).expect("the line is queued")
    };
    drop(batch);
    let text = std::fs::read_to_string(dir.path().join("journal.log")).unwrap();
    assert!(text.contains("\"text\":\"select 1\""), "{text}");
    command(&store, "s1", 2).await.unwrap();
    let report = store.verify().await.unwrap();
    assert!(report.first_break.is_none(), "{:?}", report.first_break);
}

/// Appends cancelled while they wait for someone else's write strand
/// nothing: the others finish and the chains verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_appends_strand_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Full)).unwrap());
    let tasks: Vec<_> = (0..12)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let id = format!("s{t}");
                start(&store, &id).await;
                for n in 1..=30 {
                    command(&store, &id, n).await.unwrap();
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    for t in tasks.iter().step_by(3) {
        t.abort();
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("an append hung after others were cancelled");
    }
    command(&store, "s1", 99).await.unwrap();
    let report = store.verify().await.unwrap();
    assert!(report.first_break.is_none(), "{:?}", report.first_break);
}

/// A failed write fails every waiting append and every later one with a
/// clear error; nothing half-written stays, and what was acknowledged
/// verifies after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_fails_the_journal_closed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.log");
    let store = SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Normal)).unwrap();
    session(&store, "s1", 2).await;
    start(&store, "s2").await;
    let len = std::fs::metadata(&path).unwrap().len();
    store.ready().await.unwrap();
    {
        let j = store.journal().unwrap();
        let mut w = j.lock().unwrap();
        w.queue.replace_file(File::open(&path).unwrap());
    }
    let e = command(&store, "s2", 1).await.unwrap_err().to_string();
    assert!(e.contains("audit journal cannot be written"), "{e}");
    let e = command(&store, "s2", 2).await.unwrap_err().to_string();
    assert!(e.contains("until the gateway restarts"), "{e}");
    // A readiness probe says so too (`/readyz` answers 503).
    let e = store.ready().await.unwrap_err().to_string();
    assert!(e.contains("until the gateway restarts"), "{e}");
    assert!(store.tree_head().await.is_err());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
    drop(store);
    let store = SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Normal)).unwrap();
    command(&store, "s2", 3).await.unwrap();
    let report = store.verify().await.unwrap();
    assert!(report.first_break.is_none(), "{:?}", report.first_break);
    assert_eq!(report.records, 6 + 1 + 2);
}

/// Appends that arrive while a write is in progress wait and then go out
/// together in the next write, not one write each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_during_a_write_share_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Normal)).unwrap());
    start(&store, "s0").await;
    let j = store.journal().unwrap().clone();
    let before = j.lock().unwrap().queue.batches();
    // A write in progress: a batch taken and not yet run.
    store.append_background("s0", AuditEvent::SessionEnd { reason: "x".into() });
    let in_flight = {
        let mut w = j.lock().unwrap();
        j.take_batch(&mut w).unwrap()
    };
    let tasks: Vec<_> = (1..=10)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move { start(&store, &format!("s{t}")).await })
        })
        .collect();
    while j.lock().unwrap().queue.pending_lines() < 10 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(tasks.iter().all(|t| !t.is_finished()));
    in_flight.run().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(j.lock().unwrap().queue.batches(), before + 2);
    assert!(store.verify().await.unwrap().first_break.is_none());
}

/// This process's user + system CPU time (Linux), for the micro benchmark.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<u64> = after_name
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // Fields 14 and 15 of stat (utime, stime) in clock ticks of 10 ms.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Micro benchmark of the write-ahead path, not a test: `sessions` tasks on
/// two runtime threads each append `commands` durable `command_decided`
/// records with a background `command_finished`, as the PostgreSQL relay
/// does per statement. Run with
/// `cargo test --release -p sluice-store journal_append_rate -- --ignored --nocapture`
/// (`SLUICE_BENCH_DIR` puts the state directory on the disk to measure).
#[test]
#[ignore]
fn journal_append_rate() {
    for sync in [AuditSync::Normal, AuditSync::Full] {
        for sessions in [1, 4, 16] {
            let commands = match sync {
                AuditSync::Normal => 200_000 / sessions,
                AuditSync::Full => 6_000 / sessions,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let base =
                std::env::var_os("SLUICE_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
            let dir = tempfile::tempdir_in(base).unwrap();
            let store = Arc::new(SqliteStore::open(dir.path(), Mode::Writer(sync)).unwrap());
            let (cpu, wall) = (cpu_time(), std::time::Instant::now());
            rt.block_on(async {
                let tasks: Vec<_> = (0..sessions)
                    .map(|t| {
                        let store = store.clone();
                        tokio::spawn(async move {
                            let id = format!("s{t}");
                            start(&store, &id).await;
                            for n in 1..=commands {
                                command(&store, &id, n as u64).await.unwrap();
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            });
            let (cpu, wall) = (cpu_time() - cpu, wall.elapsed());
            let batches = store.journal().unwrap().lock().unwrap().queue.batches();
            println!("  {batches} writes");
            let total = (sessions * commands) as f64;
            println!(
                "sync={sync:?} sessions={sessions:>2}: {:>8.0} commands/s, {:>6.1} µs CPU per command (wall {:.2} s)",
                total / wall.as_secs_f64(),
                cpu.as_secs_f64() * 1e6 / total,
                wall.as_secs_f64()
            );
            drop(store);
        }
    }
}

/// An index written before sessions recorded their issuer gets the column,
/// filled from each session's start record, by whichever process opens it.
#[tokio::test]
async fn an_index_without_issuers_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Normal)).unwrap();
        start(&store, "s1").await;
        store.write_queued().await.unwrap();
        // Index what the journal holds, as a reader would before reading.
        assert_eq!(store.sessions().await.unwrap().len(), 1);
        let start = store.session_records("s1").await.unwrap().remove(0);
        // The index as an older version left it: no issuer column, and
        // bodies in its rows.
        let conn = rusqlite::Connection::open(dir.path().join("sluice.db")).unwrap();
        conn.execute(
            "UPDATE events SET body = ?1 WHERE session_id = 's1' AND seq = 1",
            [&start.body],
        )
        .unwrap();
        conn.execute_batch(
            "ALTER TABLE sessions DROP COLUMN issuer;
             ALTER TABLE events DROP COLUMN line_at; ALTER TABLE events DROP COLUMN line_len;",
        )
        .unwrap();
    }
    let reader = SqliteStore::open(dir.path(), Mode::Reader).unwrap();
    let sessions = reader.sessions().await.unwrap();
    assert_eq!(sessions[0].issuer, "sluice");
    let writer = SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Normal)).unwrap();
    start(&writer, "s2").await;
    assert!(writer
        .sessions()
        .await
        .unwrap()
        .iter()
        .all(|s| s.issuer == "sluice"));
}

/// A pointer is read no further than the first newline, however long the
/// index says the line is: a tampered length sizes no allocation.
#[test]
fn a_pointer_is_read_no_further_than_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.log");
    std::fs::write(&path, b"s1\t1\t0\tx\ty\tsession_start\t{}\n").unwrap();
    let mut file = File::open(&path).unwrap();
    let record = AuditRecord {
        session_id: "s1".into(),
        seq: 1,
        at_ms: 0,
        body: String::new(),
        prev_hash: "x".into(),
        hash: "y".into(),
    };
    // Told the journal is huge: the read stops at the line's newline (a
    // read of the whole length would fail with an error, not give `None`).
    let huge = i64::MAX / 4;
    assert_eq!(
        journal_body(&mut file, u64::MAX / 2, 0, huge, &record).unwrap(),
        None
    );
    assert_eq!(
        journal_body(&mut file, u64::MAX / 2, -1, 10, &record).unwrap(),
        None
    );
}

/// A record longer than the indexer's chunk (a command of megabytes) is
/// indexed and read back, and a gateway restarted after it continues the
/// chains from it; a torn record of that size is dropped whole on restart.
#[tokio::test]
async fn records_longer_than_a_chunk_are_indexed_and_torn_ones_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let long = "x".repeat(INDEX_CHUNK as usize + (1 << 20));
    {
        let store = SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Normal)).unwrap();
        start(&store, "s1").await;
        let mut event = decided(1);
        if let AuditEvent::CommandDecided { command, .. } = &mut event {
            command.text = format!("select '{long}'");
        }
        store.append("s1", event).await.unwrap();
        command(&store, "s1", 2).await.unwrap();
        let records = store.session_records("s1").await.unwrap();
        assert_eq!(records.len(), 1 + 1 + 2);
        assert!(records[1].body.contains(&long));
    }
    // A crash in the middle of another long record.
    let path = dir.path().join("journal.log");
    let mut torn = std::fs::read(&path).unwrap();
    let whole = torn.len();
    torn.extend_from_slice(b"s1\t6\t0\t");
    torn.extend_from_slice(long.as_bytes());
    std::fs::write(&path, &torn).unwrap();
    let store = SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Normal)).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), whole as u64);
    command(&store, "s1", 3).await.unwrap();
    let records = store.session_records("s1").await.unwrap();
    assert_eq!(records.last().unwrap().seq, 6);
    assert!(store.verify().await.unwrap().first_break.is_none());
}

/// `audit verify` while the gateway writes on: lines appended after the
/// index's snapshot, and a last line still being written, are not breaks.
#[tokio::test]
async fn verify_ignores_what_was_appended_after_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Normal)).unwrap();
    session(&store, "s1", 2).await;
    store.sessions().await.unwrap();
    let conn = Connection::open(dir.path().join("sluice.db")).unwrap();
    let path = dir.path().join("journal.log");
    let journal = std::fs::read(&path).unwrap();
    let tx = conn.unchecked_transaction().unwrap();
    let indexed = indexed_offset(&tx).unwrap();
    assert_eq!(indexed, journal.len() as u64);
    // A whole session appended past the index, then half a line.
    session(&store, "s2", 1).await;
    store.write_queued().await.unwrap();
    let mut grown = std::fs::read(&path).unwrap();
    assert!(grown.len() > journal.len());
    grown.extend_from_slice(b"s3\t1\t12");
    std::fs::write(&path, &grown).unwrap();
    assert_eq!(verify_journal(&tx, &path, indexed).unwrap(), None);
    // A changed line past the snapshot is still a break.
    let (before, after) = grown.split_at(journal.len());
    let after = String::from_utf8(after.to_vec())
        .unwrap()
        .replacen("select 1", "select 8", 1);
    std::fs::write(&path, [before, after.as_bytes()].concat()).unwrap();
    let b = verify_journal(&tx, &path, indexed).unwrap().unwrap();
    assert_eq!(b.session_id, "s2");
}

/// The index's journal offset cannot be moved into a line to keep the lines
/// past it from being compared with the index.
#[tokio::test]
async fn an_indexed_offset_inside_a_line_is_a_break() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Normal)).unwrap();
    session(&store, "s1", 2).await;
    store.sessions().await.unwrap();
    drop(store);
    tamper(
        dir.path(),
        "UPDATE meta SET value = value - 10 WHERE key = 'journal_offset'",
    );
    let store = SqliteStore::open(dir.path(), Mode::Reader).unwrap();
    let b = store.verify().await.unwrap().first_break.unwrap();
    assert!(b.problem.contains("not where a record ends"), "{b}");
}

/// `verify` streams the journal; the index offset's check reads around that
/// offset only, across lines longer than the reader's buffer.
#[test]
fn an_offset_ends_a_line_only_at_a_line_start_or_in_the_unfinished_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.log");
    let long = "x".repeat(20_000);
    // Lines start at 0, 4, 20_005 (an empty one) and 20_006; the
    // unfinished tail at 20_010.
    std::fs::write(&path, format!("abc\n{long}\n\nend\n{long}")).unwrap();
    let mut file = File::open(&path).unwrap();
    let len = file.metadata().unwrap().len();
    for (at, expected) in [
        (0, true),
        (2, false),
        (4, true),
        (5, false),
        (10_000, false),
        (20_004, false),
        (20_005, true),
        (20_006, true),
        (20_008, false),
        (20_010, true),
        (20_011, true),
        (30_000, true),
        (len, true),
        (len + 7, true),
    ] {
        assert_eq!(
            super::ends_a_line(&mut file, len, at).unwrap(),
            expected,
            "offset {at}"
        );
    }
}
