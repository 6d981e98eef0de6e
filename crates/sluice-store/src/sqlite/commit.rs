//! Group commit of the journal.
//!
//! An append chains its record under the journal mutex (per-session and
//! gateway-wide hashes, in the order the lines will have in the file) and
//! queues the line. Writing happens outside the mutex, by one leader at a
//! time: the caller that finds no write in progress takes the journal file
//! and every queued line (its own and those of concurrent sessions) and
//! writes them with one `write(2)` (and one fdatasync under
//! `audit_sync = "full"`). Callers whose lines were queued while a write was
//! in progress wait for a wakeup, then find their line written or take the
//! next batch themselves. So an append still returns only once its own line
//! is in the journal: the write-ahead invariant holds per record.
//!
//! No task is ever handed the leadership: the leader gives the file back and
//! wakes every waiter, and whoever still has a line queued takes the next
//! batch. A waiter that is cancelled therefore cannot strand the queue.
//!
//! A failed write (or sync) fails the journal closed: the waiting appends
//! and every later one get an error, and nothing more is written until the
//! gateway restarts and recovers from the file (dropping a torn last line).
//! Retrying instead would chain later records after lines of unknown fate,
//! and after a failed fdatasync the kernel may have dropped the dirty pages
//! while reporting the next sync as clean. The file is not cut back: the
//! indexer may already have indexed whole lines of the failed batch, and a
//! journal shorter than its index is refused at restart as tampering. So a
//! failed batch's whole lines may stay: records whose appends failed (their
//! commands were refused), never the reverse.

use super::{unavailable, JournalWriter};
use sluice_core::audit::StoreError;
use sluice_core::config::AuditSync;
use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The journal: chain state and queue under one mutex, the wakeup for
/// appends waiting on someone else's write, and a handle for syncs.
pub(super) struct Journal {
    state: Mutex<JournalWriter>,
    written: tokio::sync::Notify,
    sync: AuditSync,
    /// A second handle on the journal file, for the fdatasync of a checkpoint
    /// (the main handle travels with the leader).
    sync_file: File,
}

/// Where the journal's bytes are: the part of `JournalWriter` the group
/// commit owns.
pub(super) struct Queue {
    /// The journal file; `None` while a leader writes a batch with it.
    file: Option<File>,
    /// Length of the journal file: every byte below is written (and synced
    /// under "full").
    written: u64,
    /// `written` plus the batch in flight plus `pending`: the length the file
    /// has once everything chained so far is written.
    queued: u64,
    /// Chained lines not yet taken by a leader, in chain order.
    pending: Vec<u8>,
    /// An emptied batch buffer kept for the next batch.
    spare: Vec<u8>,
    /// Why the journal stopped taking records (a failed write or sync).
    failed: Option<String>,
    /// Batches written so far.
    batches: u64,
}

impl Queue {
    pub(super) fn new(file: File, len: u64) -> Self {
        Queue {
            file: Some(file),
            written: len,
            queued: len,
            pending: Vec::new(),
            spare: Vec::new(),
            failed: None,
            batches: 0,
        }
    }

    /// Refuses new records once a write has failed.
    pub(super) fn check_healthy(&self) -> Result<(), StoreError> {
        match &self.failed {
            Some(e) => Err(failed_closed(e)),
            None => Ok(()),
        }
    }

    #[cfg(test)]
    pub(super) fn batches(&self) -> u64 {
        self.batches
    }

    #[cfg(test)]
    pub(super) fn pending_lines(&self) -> usize {
        self.pending.iter().filter(|&&b| b == b'\n').count()
    }

    /// Lets a test make the next write fail (a handle opened read-only).
    #[cfg(test)]
    pub(super) fn replace_file(&mut self, file: File) {
        self.file = Some(file);
    }

    /// The length the journal has once everything queued is written.
    pub(super) fn queued(&self) -> u64 {
        self.queued
    }

    /// Queues one chained line, given as the parts it is made of (copied
    /// straight into the batch); returns the journal length that includes it.
    pub(super) fn push(&mut self, parts: &[&[u8]]) -> u64 {
        let before = self.pending.len();
        for part in parts {
            self.pending.extend_from_slice(part);
        }
        self.queued += (self.pending.len() - before) as u64;
        self.queued
    }

    /// Whether the journal holds its first `target` bytes; an error once it
    /// failed short of them.
    fn reached(&self, target: u64) -> Result<bool, StoreError> {
        if self.written >= target {
            return Ok(true);
        }
        self.check_healthy().map(|()| false)
    }
}

fn failed_closed(e: &str) -> StoreError {
    unavailable(format!(
        "the audit journal cannot be written ({e}); no record is accepted until the gateway restarts"
    ))
}

/// Lines taken from the queue, with the journal file, by the leader of the
/// moment. However it ends (written, failed, or dropped unwritten by a
/// panic), dropping it gives the file back, publishes the outcome and wakes
/// the waiters.
pub(super) struct Batch {
    journal: Arc<Journal>,
    file: Option<File>,
    bytes: Vec<u8>,
    end: u64,
    outcome: Option<Result<(), String>>,
}

impl Batch {
    /// Writes the batch at the journal's end (and syncs under "full");
    /// returns once the outcome is published.
    pub(super) fn run(mut self) -> Result<(), StoreError> {
        let outcome = self.write();
        self.outcome = Some(outcome.clone());
        outcome.map_err(|e| failed_closed(&e))
    }

    fn write(&mut self) -> Result<(), String> {
        match self.file.as_mut() {
            Some(file) => write_lines(file, &self.bytes, self.journal.sync),
            None => Err("the journal file is missing".to_string()),
        }
    }
}

impl Drop for Batch {
    /// A batch dropped before it ran (its blocking-pool job discarded by a
    /// runtime shutting down) is written here; one dropped by a panic in
    /// its write is abandoned, and the journal fails closed.
    fn drop(&mut self) {
        let outcome = match self.outcome.take() {
            Some(outcome) => outcome,
            None if !std::thread::panicking() => self.write(),
            None => Err("a journal write was abandoned".to_string()),
        };
        let bytes = std::mem::take(&mut self.bytes);
        self.journal
            .finish(self.file.take(), bytes, self.end, outcome);
    }
}

/// One `write(2)` for the whole batch (and one fdatasync under "full").
fn write_lines(file: &mut File, bytes: &[u8], sync: AuditSync) -> Result<(), String> {
    file.write_all(bytes)
        .map_err(|e| format!("journal write failed: {e}"))?;
    if sync == AuditSync::Full {
        file.sync_data()
            .map_err(|e| format!("journal sync failed: {e}"))?;
    }
    Ok(())
}

impl Journal {
    pub(super) fn new(state: JournalWriter, sync: AuditSync, sync_file: File) -> Self {
        Journal {
            state: Mutex::new(state),
            written: tokio::sync::Notify::new(),
            sync,
            sync_file,
        }
    }

    pub(super) fn lock(&self) -> Result<MutexGuard<'_, JournalWriter>, StoreError> {
        self.state
            .lock()
            .map_err(|_| unavailable("journal lock poisoned"))
    }

    /// Takes every queued line and the file, unless a write is in progress
    /// (its leader or a waiter takes them next) or nothing is queued.
    pub(super) fn take_batch(self: &Arc<Self>, w: &mut JournalWriter) -> Option<Batch> {
        let q = &mut w.queue;
        if q.pending.is_empty() || q.failed.is_some() {
            return None;
        }
        let file = q.file.take()?;
        let bytes = std::mem::replace(&mut q.pending, std::mem::take(&mut q.spare));
        Some(Batch {
            journal: self.clone(),
            file: Some(file),
            end: q.queued,
            bytes,
            outcome: None,
        })
    }

    fn finish(
        &self,
        file: Option<File>,
        mut bytes: Vec<u8>,
        end: u64,
        outcome: Result<(), String>,
    ) {
        match self.state.lock() {
            Ok(mut w) => {
                let q = &mut w.queue;
                q.file = file;
                match outcome {
                    Ok(()) => {
                        q.written = end;
                        q.batches += 1;
                    }
                    Err(e) => {
                        tracing::error!(message = "The audit journal failed; no record is accepted until the gateway restarts.", error = %e);
                        q.failed = Some(e);
                    }
                }
                bytes.clear();
                if bytes.capacity() > q.spare.capacity() {
                    q.spare = bytes;
                }
            }
            // Every waiter sees the poisoned lock as an error when it wakes.
            Err(_) => {
                tracing::error!(message = "The journal lock is poisoned; audit records fail.")
            }
        }
        self.written.notify_waiters();
    }

    /// Returns once the journal holds its first `target` bytes, writing the
    /// queue itself if no one else is (`batch`: already taken by the caller).
    pub(super) async fn commit(
        self: &Arc<Self>,
        target: u64,
        batch: Option<Batch>,
    ) -> Result<(), StoreError> {
        if let Some(batch) = batch {
            // The caller's line is in its own batch: nothing more to wait for.
            return self.lead(batch).await;
        }
        loop {
            // Registered before looking, so a wakeup between the look and
            // the wait is not missed.
            let notified = self.written.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let batch = {
                let mut w = self.lock()?;
                if w.queue.reached(target)? {
                    return Ok(());
                }
                self.take_batch(&mut w)
            };
            match batch {
                Some(batch) => return self.lead(batch).await,
                None => notified.await,
            }
        }
    }

    /// Writes a batch on this thread, fdatasync included under "full", as
    /// the append did before group commit: at most one runtime thread is
    /// blocked in it at a time (one leader), the others keep serving and
    /// queue the next batch. Handing the sync to the blocking pool cost a
    /// single session about 60 µs of CPU per command in
    /// `journal_append_rate`, and bought nothing measurable in the bench.
    ///
    /// Except on a pinned session thread under "full": blocked there, the
    /// fdatasync would stall every session the thread holds, and no other
    /// thread takes them over, so the batch goes to the blocking pool. The
    /// batch moves with the job: dropping this future does not abandon it,
    /// and a job the pool discards unrun (the thread stopping) writes its
    /// batch as it is dropped.
    async fn lead(&self, batch: Batch) -> Result<(), StoreError> {
        if self.sync == AuditSync::Full && sluice_core::pinned::on_pinned_thread() {
            return tokio::task::spawn_blocking(move || batch.run())
                .await
                .unwrap_or_else(|_| Err(unavailable("the journal write task failed")));
        }
        batch.run()
    }

    /// Writes whatever is queued, on this thread, if no write is in progress
    /// (background records between durable appends: the indexer's tick).
    pub(super) fn write_queued(self: &Arc<Self>) -> Result<(), StoreError> {
        let batch = self.take_batch(&mut *self.lock()?);
        batch.map_or(Ok(()), Batch::run)
    }

    /// Everything queued so far is written (not waiting for a runtime):
    /// for closing the store. A batch in flight on another thread (an
    /// append still running while the store is dropped) is waited for, so
    /// that the file, and its lock, are free once the store is gone.
    pub(super) fn write_all_blocking(self: &Arc<Self>) -> Result<(), StoreError> {
        for _ in 0..10_000 {
            let batch = {
                let mut w = self.lock()?;
                if w.queue.file.is_some() && w.queue.reached(w.queue.queued)? {
                    return Ok(());
                }
                self.take_batch(&mut w)
            };
            match batch {
                Some(batch) => batch.run()?,
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        Err(unavailable("a journal write did not finish within 10 s"))
    }

    /// Syncs the journal file: everything written so far is on disk.
    pub(super) fn sync_written(&self) -> Result<(), StoreError> {
        if self.sync == AuditSync::Full {
            // Every batch was synced before it counted as written.
            return Ok(());
        }
        self.sync_file
            .sync_data()
            .map_err(|e| unavailable(format!("journal sync failed: {e}")))
    }
}
