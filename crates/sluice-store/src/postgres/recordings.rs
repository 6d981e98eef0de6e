//! A node's recordings task: writes ended sessions' chains to object
//! storage, woken when one of its sessions ends and every few seconds for
//! sessions that ended otherwise (ended by a survivor, or while the object
//! store was down). Any node may write any ended session: the object is
//! the chain, so a second write is the same object.

use super::{record, PgTarget, QUERY_TIMEOUT, RECORD_COLUMNS};
use crate::Archive;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::Client;

/// How often to look for ended sessions not yet written.
const SWEEP: Duration = Duration::from_secs(5);
/// Sessions written per round.
const PER_ROUND: i64 = 50;

pub(super) async fn run(target: PgTarget, archive: Archive, ended: Arc<tokio::sync::Notify>) {
    let mut client: Option<Client> = None;
    loop {
        tokio::select! {
            _ = ended.notified() => {}
            _ = tokio::time::sleep(SWEEP) => {}
        }
        if client.as_ref().is_none_or(Client::is_closed) {
            client = match target.connect().await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(message = "Session recordings wait for the store.", error = %e);
                    None
                }
            };
        }
        let Some(c) = client.as_ref() else { continue };
        if let Err(e) = write_ended(c, &archive).await {
            tracing::warn!(message = "Session recordings could not be written to object storage; retrying.", error = %e);
        }
    }
}

async fn write_ended(client: &Client, archive: &Archive) -> Result<(), String> {
    let ids = tokio::time::timeout(
        QUERY_TIMEOUT,
        client.query(
            "SELECT id FROM sluice_sessions WHERE ended_at_ms IS NOT NULL AND archive_key IS NULL
             ORDER BY ended_at_ms LIMIT $1",
            &[&PER_ROUND],
        ),
    )
    .await
    .map_err(|_| "listing ended sessions took too long".to_string())?
    .map_err(|e| e.to_string())?;
    let sql =
        format!("SELECT {RECORD_COLUMNS} FROM sluice_records WHERE session_id = $1 ORDER BY seq");
    for row in ids {
        let id: String = row.get(0);
        let records: Vec<_> = client
            .query(&sql, &[&id])
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .map(record)
            .collect();
        let archived = archive
            .put(&id, &records)
            .await
            .map_err(|e| e.to_string())?;
        client
            .execute(
                "UPDATE sluice_sessions SET archive_key = $2, archive_sha256 = $3, archived_records = $4
                 WHERE id = $1 AND archive_key IS NULL",
                &[&id, &archived.key, &archived.sha256, &(archived.records as i64)],
            )
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
