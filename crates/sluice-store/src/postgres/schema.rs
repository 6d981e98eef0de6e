//! The PostgreSQL store's schema: versioned migrations applied at start.
//!
//! Several nodes may start at once: the migrations run in one transaction
//! under a transaction-scoped advisory lock, so one node applies them and
//! the others find them applied.

use super::backend;
use sluice_core::audit::StoreError;
use tokio_postgres::Client;

/// The advisory lock key that serialises migrations (any fixed number;
/// this one spells "sluice" in ASCII).
const MIGRATION_LOCK: i64 = 0x736c_7569_6365;

/// Migrations in order; a version is never edited once released, only
/// followed by a new one.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "
    CREATE TABLE sluice_sessions (
        id TEXT PRIMARY KEY,
        node TEXT NOT NULL,
        subject TEXT NOT NULL,
        issuer TEXT NOT NULL,
        groups_json TEXT NOT NULL,
        connection TEXT NOT NULL,
        protocol TEXT NOT NULL,
        client_addr TEXT NOT NULL,
        started_at_ms BIGINT NOT NULL,
        ended_at_ms BIGINT,
        end_reason TEXT,
        commands BIGINT NOT NULL DEFAULT 0,
        last_seq BIGINT NOT NULL,
        head_hash TEXT NOT NULL
    );
    CREATE INDEX sluice_sessions_open ON sluice_sessions (node) WHERE ended_at_ms IS NULL;
    CREATE TABLE sluice_records (
        session_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        at_ms BIGINT NOT NULL,
        node TEXT NOT NULL,
        kind TEXT NOT NULL,
        body TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        PRIMARY KEY (session_id, seq)
    );
    CREATE TABLE sluice_nodes (
        id TEXT PRIMARY KEY,
        started_at_ms BIGINT NOT NULL,
        heartbeat_at_ms BIGINT NOT NULL
    );
    ",
    ),
    (
        2,
        "
    CREATE TABLE sluice_events (
        id BIGSERIAL PRIMARY KEY,
        at_ms BIGINT NOT NULL,
        origin TEXT NOT NULL,
        kind TEXT NOT NULL,
        forget_after BIGINT,
        body TEXT NOT NULL
    );
    ",
    ),
    (
        3,
        "
    ALTER TABLE sluice_sessions
        ADD COLUMN archive_key TEXT,
        ADD COLUMN archive_sha256 TEXT,
        ADD COLUMN archived_records BIGINT;
    CREATE INDEX sluice_sessions_unarchived ON sluice_sessions (ended_at_ms)
        WHERE ended_at_ms IS NOT NULL AND archive_key IS NULL;
    ",
    ),
];

/// The newest schema version this build knows.
pub(super) fn latest() -> i32 {
    MIGRATIONS.last().map(|(v, _)| *v).unwrap_or(0)
}

/// Applies the migrations the store has not seen; returns the version it is at.
/// A store migrated by a newer build is refused rather than written with an
/// older idea of its tables.
pub(super) async fn migrate(client: &mut Client) -> Result<i32, StoreError> {
    let tx = client.transaction().await.map_err(backend)?;
    // A migration waiting behind a long query would stall every node's writes.
    tx.batch_execute("SET LOCAL lock_timeout = '10s'")
        .await
        .map_err(backend)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(backend)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS sluice_migrations (
             version INTEGER PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(backend)?;
    let current: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM sluice_migrations",
            &[],
        )
        .await
        .map_err(backend)?
        .get(0);
    if current > latest() {
        return Err(StoreError::Unavailable(format!(
            "the store's schema is at version {current}, newer than this gateway's {}; upgrade the gateway",
            latest()
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(sql).await.map_err(backend)?;
        tx.execute(
            "INSERT INTO sluice_migrations (version) VALUES ($1)",
            &[version],
        )
        .await
        .map_err(backend)?;
    }
    tx.commit().await.map_err(backend)?;
    Ok(latest())
}
