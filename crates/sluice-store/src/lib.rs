//! Store backends for Sluice. The embedded default is SQLite in `state_dir`:
//! appends are group-committed to a write-ahead journal (one write, and
//! under `audit_sync = "full"` one fdatasync, for the records of all
//! sessions queued meanwhile), and an indexer thread moves the journal into
//! SQLite in batches, off the command path. Several nodes share a
//! PostgreSQL store instead (`postgres.rs`).

mod archive;
mod postgres;
mod sqlite;
#[cfg(test)]
mod test_events;

/// Unix milliseconds now (record times; 0 before 1970).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub use archive::{Archive, ArchiveProblem, ArchiveSettings, Archived};
pub use postgres::{Imported, PgMode, PgStore, PgTarget, HEARTBEAT_LAPSE};
pub use sqlite::{Mode, SqliteStore};
