//! Node membership: each node holds a session-level advisory lock on its id
//! (one process per node id, like the embedded journal's file lock),
//! heartbeats, and ends the live sessions of any node whose heartbeat lapsed
//! (its process died with them open).

use super::{backend, now_ms, PgTarget, QUERY_TIMEOUT};
use sluice_core::audit::{chain_hash, AuditEvent, StoreError};
use std::time::Duration;
use tokio_postgres::Client;

/// How often a node records that it is alive.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node silent this long is taken for dead: its open sessions are ended.
pub const HEARTBEAT_LAPSE: Duration = Duration::from_secs(5);

/// Claims `node` on this connection and registers it. Fails when another
/// live process holds the id: two processes with one id would end each
/// other's sessions.
pub(super) async fn claim(
    client: &Client,
    node: &str,
    target: &PgTarget,
) -> Result<(), StoreError> {
    let key = format!("sluice-node:{node}");
    let locked: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
            &[&key],
        )
        .await
        .map_err(backend)?
        .get(0);
    if !locked {
        return Err(StoreError::Unavailable(format!(
            "node id {node:?} is in use by another gateway process on the store {target:?}; give each node its own gateway.node"
        )));
    }
    client
        .execute(
            "INSERT INTO sluice_nodes (id, started_at_ms, heartbeat_at_ms)
             VALUES ($1, $2, (extract(epoch FROM clock_timestamp()) * 1000)::bigint)
             ON CONFLICT (id) DO UPDATE SET started_at_ms = EXCLUDED.started_at_ms,
                 heartbeat_at_ms = EXCLUDED.heartbeat_at_ms",
            &[&node, &(now_ms() as i64)],
        )
        .await
        .map_err(backend)?;
    Ok(())
}

/// Heartbeats and ends the sessions of lapsed nodes, on its own connection,
/// until the store is dropped. A failed round is logged and retried.
pub(super) async fn heartbeat(target: PgTarget, node: String) {
    let mut client: Option<Client> = None;
    // Since when this node's heartbeats succeed without a gap: after an
    // outage every node's heartbeat is stale, so none reaps until its own
    // have run longer than the lapse (the others have beaten again by then).
    let mut beating_since: Option<std::time::Instant> = None;
    let mut ticks = tokio::time::interval(HEARTBEAT);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if client.as_ref().is_none_or(Client::is_closed) {
            client = target.connect().await.ok();
        }
        let Some(c) = client.as_mut() else {
            beating_since = None;
            continue;
        };
        let may_reap = beating_since.is_some_and(|t| t.elapsed() > HEARTBEAT_LAPSE + HEARTBEAT * 2);
        let round = tokio::time::timeout(QUERY_TIMEOUT, beat_and_reap(c, &node, may_reap)).await;
        if matches!(round, Ok(Ok(_))) {
            beating_since.get_or_insert_with(std::time::Instant::now);
        } else {
            beating_since = None;
        }
        match round {
            Ok(Ok(0)) => {}
            Ok(Ok(ended)) => tracing::warn!(
                message = "Ended the sessions of gateway nodes that stopped heartbeating.",
                count = ended
            ),
            Ok(Err(e)) => tracing::warn!(message = "A store heartbeat failed.", error = %e),
            Err(_) => {
                tracing::warn!(message = "A store heartbeat took too long.");
                client = None;
            }
        }
    }
}

/// One round: this node's heartbeat, then every open session of a lapsed
/// node ended with the reason. Times are the database's clock, so nodes'
/// clocks need not agree.
async fn beat_and_reap(
    client: &mut Client,
    node: &str,
    may_reap: bool,
) -> Result<usize, StoreError> {
    client
        .execute(
            "UPDATE sluice_nodes SET heartbeat_at_ms =
                 (extract(epoch FROM clock_timestamp()) * 1000)::bigint WHERE id = $1",
            &[&node],
        )
        .await
        .map_err(backend)?;
    if !may_reap {
        return Ok(0);
    }
    let lapse = HEARTBEAT_LAPSE.as_millis() as i64;
    let tx = client.transaction().await.map_err(backend)?;
    // SKIP LOCKED: survivors reaping at once each take different sessions,
    // and a session its node is writing right now is left for the next round.
    let lapsed = tx
        .query(
            "SELECT s.id, s.node, s.last_seq, s.head_hash,
                    (extract(epoch FROM clock_timestamp()) * 1000)::bigint - n.heartbeat_at_ms
             FROM sluice_sessions s JOIN sluice_nodes n ON n.id = s.node
             WHERE s.ended_at_ms IS NULL AND s.node <> $1
               AND n.heartbeat_at_ms < (extract(epoch FROM clock_timestamp()) * 1000)::bigint - $2
             FOR UPDATE OF s SKIP LOCKED",
            &[&node, &lapse],
        )
        .await
        .map_err(backend)?;
    for row in &lapsed {
        let (id, dead): (String, String) = (row.get(0), row.get(1));
        let silent_s = row.get::<_, i64>(4) / 1000;
        let reason = format!(
            "gateway node {dead} stopped (no heartbeat for {silent_s} s); ended by node {node}"
        );
        let seq = row.get::<_, i64>(2) + 1;
        let prev: String = row.get(3);
        let at = now_ms() as i64;
        let end = AuditEvent::SessionEnd {
            reason: reason.clone(),
        };
        let body = serde_json::to_string(&end).map_err(backend)?;
        let hash = chain_hash(&prev, &id, seq as u64, at as u64, &body);
        tx.execute(
            "INSERT INTO sluice_records (session_id, seq, at_ms, node, kind, body, prev_hash, hash)
             VALUES ($1, $2, $3, $4, 'session_end', $5, $6, $7)",
            &[&id, &seq, &at, &node, &body, &prev, &hash],
        )
        .await
        .map_err(backend)?;
        tx.execute(
            "UPDATE sluice_sessions SET last_seq = $2, head_hash = $3, ended_at_ms = $4,
                 end_reason = $5 WHERE id = $1",
            &[&id, &seq, &hash, &at, &reason],
        )
        .await
        .map_err(backend)?;
    }
    tx.commit().await.map_err(backend)?;
    super::events::prune(client).await?;
    Ok(lapsed.len())
}
