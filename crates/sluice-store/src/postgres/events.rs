//! Cluster events through the store: a node publishes a revocation or a
//! session to end as a row of `sluice_events` and a `NOTIFY`; every node
//! listens, and also polls, so a lost notification (a dropped connection)
//! delays an event by at most `POLL` rather than losing it.

use super::{backend, now_ms, PgTarget, QUERY_TIMEOUT};
use sluice_core::audit::StoreError;
use sluice_core::cluster::{Cluster, ClusterEvent};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::Client;

/// The notification channel.
const CHANNEL: &str = "sluice_events";
/// How often a node reads events without a notification.
const POLL: Duration = Duration::from_secs(1);
/// Ids are taken at insert and may commit out of order: each read looks
/// this far back and skips what it has applied.
const REREAD: i64 = 256;

/// Events older than this unread mean a node may miss a revocation: it
/// admits no one until it reads them again.
pub const OUT_OF_SYNC: std::time::Duration = std::time::Duration::from_secs(10);

/// Publishes this node's events to the others.
pub struct PgCluster {
    target: PgTarget,
    node: String,
    client: tokio::sync::Mutex<Option<Client>>,
    synced: Arc<AtomicU64>,
}

impl PgCluster {
    pub(super) fn new(target: PgTarget, node: String, synced: Arc<AtomicU64>) -> Self {
        PgCluster {
            target,
            node,
            client: tokio::sync::Mutex::new(None),
            synced,
        }
    }
}

/// Whether the other nodes' events were read lately (see [`OUT_OF_SYNC`]).
pub(super) fn in_sync(synced: &AtomicU64) -> Result<(), String> {
    let last = synced.load(Ordering::Relaxed);
    let age = now_ms().saturating_sub(last);
    if last == 0 || age > OUT_OF_SYNC.as_millis() as u64 {
        return Err(format!(
            "this gateway node has not read the other nodes' revocations for {} s (the store is unreachable?); it admits no one until it has",
            age / 1000
        ));
    }
    Ok(())
}

/// An event's kind, and when no node needs it any more (unix seconds) for
/// the events a starting node must read: revocations and open requests.
fn kind(event: &ClusterEvent) -> (&'static str, Option<i64>) {
    match event {
        ClusterEvent::Revoked { revocation } => ("revoked", Some(revocation.forget_after as i64)),
        ClusterEvent::Approval { request } => {
            ("approval", Some((request.expires_at_ms / 1000) as i64 + 60))
        }
        ClusterEvent::EndSession { .. } => ("end_session", None),
        ClusterEvent::DecideApproval { .. } => ("decide_approval", None),
    }
}

#[async_trait::async_trait]
impl Cluster for PgCluster {
    fn in_sync(&self) -> Result<(), String> {
        in_sync(&self.synced)
    }

    async fn publish(&self, event: &ClusterEvent) -> Result<(), StoreError> {
        let body = serde_json::to_string(event).map_err(backend)?;
        let (kind, forget_after) = kind(event);
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = Some(self.target.connect().await?);
        }
        let client = slot
            .as_ref()
            .ok_or_else(|| self.target.unreachable("not connected"))?;
        let at = now_ms() as i64;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
            [&at, &self.node, &kind, &forget_after, &body, &CHANNEL];
        // One statement: the row and its notification commit together.
        let insert = client.execute(
            "WITH e AS (INSERT INTO sluice_events (at_ms, origin, kind, forget_after, body)
                        VALUES ($1, $2, $3, $4, $5) RETURNING id)
             SELECT pg_notify($6, id::text) FROM e",
            &params,
        );
        tokio::time::timeout(QUERY_TIMEOUT, insert)
            .await
            .map_err(|_| self.target.unreachable("publishing an event took too long"))?
            .map_err(backend)?;
        Ok(())
    }
}

/// Applies every revocation still in force (before the node serves, so a
/// token revoked elsewhere is never admitted here); returns where
/// [`follow`] goes on from.
pub(super) async fn catch_up(
    target: &PgTarget,
    node: &str,
    apply: &Arc<dyn Fn(ClusterEvent) + Send + Sync>,
    synced: Arc<AtomicU64>,
) -> Result<Seen, StoreError> {
    let client = target.connect().await?;
    let mut seen = Seen {
        started: false,
        last: 0,
        ids: BTreeSet::new(),
        synced,
    };
    tokio::time::timeout(QUERY_TIMEOUT, read_new(&client, node, apply, &mut seen))
        .await
        .map_err(|_| target.unreachable("reading events took too long"))??;
    Ok(seen)
}

/// Applies the other nodes' events as they come, until the process ends.
pub(super) async fn follow(
    target: PgTarget,
    node: String,
    apply: Arc<dyn Fn(ClusterEvent) + Send + Sync>,
    mut seen: Seen,
) {
    loop {
        if let Err(e) = listen(&target, &node, &apply, &mut seen).await {
            tracing::warn!(message = "Following the other nodes' events failed; retrying.", error = %e);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Event ids applied (or skipped) lately, and when the events were last read.
pub(super) struct Seen {
    started: bool,
    last: i64,
    ids: BTreeSet<i64>,
    /// Unix ms of the last complete read, shared with `PgStore`/`PgCluster`.
    synced: Arc<AtomicU64>,
}

async fn listen(
    target: &PgTarget,
    node: &str,
    apply: &Arc<dyn Fn(ClusterEvent) + Send + Sync>,
    seen: &mut Seen,
) -> Result<(), StoreError> {
    let (client, mut woken, driver) = target.connect_notified().await?;
    let listening = client.batch_execute(&format!("LISTEN {CHANNEL}")).await;
    let result = match listening {
        Ok(()) => loop {
            let read = tokio::time::timeout(QUERY_TIMEOUT, read_new(&client, node, apply, seen));
            match read.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => break Err(e),
                Err(_) => break Err(target.unreachable("reading events took too long")),
            }
            tokio::select! {
                _ = woken.recv() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
            if client.is_closed() {
                break Err(target.unreachable("the connection closed"));
            }
        },
        Err(e) => Err(backend(e)),
    };
    driver.abort();
    result
}

async fn read_new(
    client: &Client,
    node: &str,
    apply: &Arc<dyn Fn(ClusterEvent) + Send + Sync>,
    seen: &mut Seen,
) -> Result<(), StoreError> {
    // Ids first; bodies only of the events not seen yet (a re-read window of
    // large events must not be fetched again every second).
    let ids: Vec<i64> = client
        .query(
            "SELECT id FROM sluice_events WHERE id > $1 AND (forget_after IS NULL
                 OR forget_after > extract(epoch FROM now())::bigint) ORDER BY id",
            &[&(seen.last - REREAD)],
        )
        .await
        .map_err(backend)?
        .iter()
        .map(|r| r.get(0))
        .filter(|id| !seen.ids.contains(id))
        .collect();
    for chunk in ids.chunks(64) {
        let rows = client
            .query(
                "SELECT id, origin, kind, body FROM sluice_events WHERE id = ANY($1) ORDER BY id",
                &[&chunk],
            )
            .await
            .map_err(backend)?;
        for row in rows {
            let id: i64 = row.get(0);
            seen.ids.insert(id);
            seen.last = seen.last.max(id);
            let (origin, kind, body): (String, String, String) =
                (row.get(1), row.get(2), row.get(3));
            if skip(seen.started, origin == node, &kind) {
                continue;
            }
            match serde_json::from_str::<ClusterEvent>(&body) {
                Ok(event) => apply(event),
                Err(e) => {
                    tracing::error!(message = "An event from another node could not be read.", id, error = %e)
                }
            }
        }
    }
    seen.started = true;
    seen.synced.store(now_ms(), Ordering::Relaxed);
    let floor = seen.last - REREAD;
    seen.ids.retain(|id| *id > floor);
    Ok(())
}

/// Which events a node leaves alone: its own as it runs (applied when made);
/// before it starts, everything but what is still in force, and its own
/// approval requests (that process is gone). Its own revocations are
/// applied again: its state directory may be new.
fn skip(started: bool, own: bool, kind: &str) -> bool {
    match (started, kind) {
        (true, _) => own,
        (false, "revoked") => false,
        (false, "approval") => own,
        (false, _) => true,
    }
}

/// Forgets events no node needs any more (heartbeat housekeeping).
pub(super) async fn prune(client: &Client) -> Result<(), StoreError> {
    let now = now_ms() as i64;
    client
        .execute(
            "DELETE FROM sluice_events WHERE forget_after < extract(epoch FROM now())::bigint
                 OR (forget_after IS NULL AND at_ms < $1)",
            &[&(now - 3_600_000)],
        )
        .await
        .map_err(backend)?;
    Ok(())
}
