//! Store backends for Sluice. The embedded default is SQLite in `state_dir`:
//! one writer thread batches appends (group commit), so write-ahead audit
//! costs one short transaction per batch, not one per command.

mod sqlite;

pub use sqlite::{Mode, SqliteStore};
