//! Cluster events through the store: a node publishes a revocation or a
//! session to end as a row of `sluice_events` and a `NOTIFY`; every node
//! listens, and also polls, so a lost notification (a dropped connection)
//! delays an event by at most `POLL` rather than losing it.

use super::{backend, now_ms, PgTarget, QUERY_TIMEOUT};
use futures_util::StreamExt;
use sluice_core::audit::StoreError;
use sluice_core::cluster::{Cluster, ClusterEvent};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::{AsyncMessage, Client};

/// The notification channel.
const CHANNEL: &str = "sluice_events";
/// How often a node reads events without a notification.
const POLL: Duration = Duration::from_secs(1);
/// Ids are taken at insert and may commit out of order: each read looks
/// this far back and skips what it has applied.
const REREAD: i64 = 256;

/// Publishes this node's events to the others.
pub struct PgCluster {
    target: PgTarget,
    node: String,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl PgCluster {
    pub(super) fn new(target: PgTarget, node: String) -> Self {
        PgCluster {
            target,
            node,
            client: tokio::sync::Mutex::new(None),
        }
    }
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
) -> Result<Seen, StoreError> {
    let client = target.connect().await?;
    let mut seen = Seen::default();
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

/// Event ids applied (or skipped) lately.
#[derive(Default)]
pub(super) struct Seen {
    started: bool,
    last: i64,
    ids: BTreeSet<i64>,
}

async fn listen(
    target: &PgTarget,
    node: &str,
    apply: &Arc<dyn Fn(ClusterEvent) + Send + Sync>,
    seen: &mut Seen,
) -> Result<(), StoreError> {
    let (client, mut connection) = target.connect_raw().await?;
    let (wake, mut woken) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if matches!(message, AsyncMessage::Notification(_)) && wake.send(()).is_err() {
                break;
            }
        }
    });
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
    let rows = client
        .query(
            "SELECT id, origin, kind, body FROM sluice_events
             WHERE id > $1 AND (forget_after IS NULL OR forget_after > $2) ORDER BY id",
            &[&(seen.last - REREAD), &((now_ms() / 1000) as i64)],
        )
        .await
        .map_err(backend)?;
    for row in rows {
        let id: i64 = row.get(0);
        if !seen.ids.insert(id) {
            continue;
        }
        seen.last = seen.last.max(id);
        let (origin, kind, body): (String, String, String) = (row.get(1), row.get(2), row.get(3));
        // Before this node started, only what is still in force matters.
        let lasting = kind == "revoked" || kind == "approval";
        if origin == node || (!seen.started && !lasting) {
            continue;
        }
        match serde_json::from_str::<ClusterEvent>(&body) {
            Ok(event) => apply(event),
            Err(e) => {
                tracing::error!(message = "An event from another node could not be read.", id, error = %e)
            }
        }
    }
    seen.started = true;
    let floor = seen.last - REREAD;
    seen.ids.retain(|id| *id > floor);
    Ok(())
}

/// Forgets events no node needs any more (heartbeat housekeeping).
pub(super) async fn prune(client: &Client) -> Result<(), StoreError> {
    let now = now_ms() as i64;
    client
        .execute(
            "DELETE FROM sluice_events WHERE forget_after < $1
                 OR (forget_after IS NULL AND at_ms < $2)",
            &[&(now / 1000), &(now - 3_600_000)],
        )
        .await
        .map_err(backend)?;
    Ok(())
}
