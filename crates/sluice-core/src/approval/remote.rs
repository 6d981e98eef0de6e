//! Approval requests held on other nodes of a shared store. The node that
//! holds a command owns its request: it announces the request and every
//! change of it (`ClusterEvent::Approval`), and other nodes keep a mirror
//! to list it. A decision made through another node's API travels to the
//! owner (`ClusterEvent::DecideApproval`), which checks and records it as
//! its own decision, releases the command, and announces the outcome.

use super::{now_ms, ApprovalRequest, ApprovalState};
use crate::cluster::{Cluster, ClusterEvent};
use crate::sync::MutexExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How much of a command other nodes are told (they list it; the holder
/// keeps the whole command).
const ANNOUNCED_COMMAND: usize = 4096;

/// How long a decision sent to the owner may take to be confirmed.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Default)]
pub(super) struct Remote {
    cluster: Option<Arc<dyn Cluster>>,
    mirror: Mutex<HashMap<String, ApprovalRequest>>,
}

impl Remote {
    pub(super) fn new(cluster: Option<Arc<dyn Cluster>>) -> Self {
        Remote {
            cluster,
            mirror: Mutex::default(),
        }
    }

    /// Tells the other nodes about this node's request as it is now. A
    /// failure is logged: the request stands here (approvers reach it
    /// through this node's API).
    pub(super) fn announce(&self, request: &ApprovalRequest) {
        let (Some(cluster), Ok(runtime)) =
            (self.cluster.clone(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let mut request = request.clone();
        // Listing needs the start of the command, not 64 MiB of it.
        if request.command.len() > ANNOUNCED_COMMAND {
            let cut = request.command.floor_char_boundary(ANNOUNCED_COMMAND);
            let total = request.command.len();
            request.command.truncate(cut);
            request
                .command
                .push_str(&format!("… ({total} bytes in all)"));
        }
        // So does its context: what fits, then how much was left out.
        let mut room = ANNOUNCED_COMMAND;
        if let Some(over) = request.context.iter().position(|line| {
            let fits = line.len() <= room;
            room = room.saturating_sub(line.len());
            !fits
        }) {
            let left = request.context.len() - over;
            request.context.truncate(over);
            request.context.push(format!(
                "… ({left} more context lines on the node holding it)"
            ));
        }
        let event = ClusterEvent::Approval {
            request: Box::new(request),
        };
        runtime.spawn(async move {
            if let Err(e) = cluster.publish(&event).await {
                tracing::warn!(message = "The other nodes could not be told about an approval request.", error = %e);
            }
        });
    }

    /// Another node's request as it announced it.
    pub(super) fn mirror(&self, request: ApprovalRequest, retention_ms: u64) {
        let now = now_ms();
        let mut mirror = self.mirror.locked();
        mirror
            .retain(|_, r| r.expires_at_ms.max(r.decided_at_ms.unwrap_or(0)) + retention_ms > now);
        mirror.insert(request.id.clone(), request);
    }

    /// Mirrored requests as they stand now (past their time: expired).
    pub(super) fn list(&self) -> Vec<ApprovalRequest> {
        let now = now_ms();
        self.mirror
            .locked()
            .values()
            .map(|r| {
                let mut r = r.clone();
                if now >= r.expires_at_ms && r.state == ApprovalState::Pending {
                    r.state = ApprovalState::Expired;
                }
                r
            })
            .collect()
    }

    pub(super) fn get(&self, id: &str) -> Option<ApprovalRequest> {
        self.list().into_iter().find(|r| r.id == id)
    }

    /// Sends a decision to the node that holds the request and waits for it
    /// to announce the outcome.
    pub(super) async fn decide(
        &self,
        id: &str,
        approver: &crate::model::Identity,
        approve: bool,
        reason: Option<String>,
    ) -> Result<ApprovalRequest, super::ApprovalError> {
        let cluster = self
            .cluster
            .as_ref()
            .ok_or_else(|| super::ApprovalError::NotFound(id.to_string()))?;
        let event = ClusterEvent::DecideApproval {
            id: id.to_string(),
            approver: approver.clone(),
            approve,
            reason,
        };
        cluster
            .publish(&event)
            .await
            .map_err(|e| super::ApprovalError::Store(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
        loop {
            if let Some(r) = self.get(id).filter(|r| r.state != ApprovalState::Pending) {
                return Ok(r);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(super::ApprovalError::Store(format!(
                    "the decision was sent to the node that holds request {id}, which did not confirm it within {} s",
                    CONFIRM_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
