//! Several gateway nodes: what one node decides that every node must apply
//! (a revoked token, a session ended by an operator, approval requests and
//! decisions). A shared store
//! carries these events (`sluice-store`'s PostgreSQL store: a table read on
//! `LISTEN/NOTIFY`, with polling as the fallback); one node alone has none.

use crate::approval::ApprovalRequest;
use crate::audit::StoreError;
use crate::auth::Revocation;
use crate::model::Identity;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// An event for every node of the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ClusterEvent {
    /// A token revoked on one node is revoked on all: new sessions are
    /// refused and live ones, with their descendants, end.
    Revoked { revocation: Revocation },
    /// End a live session wherever it runs.
    EndSession { session_id: String, reason: String },
    /// A node's approval request as it stands (opened, decided, expired,
    /// used): the other nodes list it.
    Approval { request: Box<ApprovalRequest> },
    /// A decision made through one node for a request another node holds;
    /// the holder checks and records it as its own.
    DecideApproval {
        id: String,
        approver: Identity,
        approve: bool,
        reason: Option<String>,
    },
}

/// Delivers events to the other nodes.
#[async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// Whether this node has the other nodes' events (revocations) up to
    /// date; while it has not, it admits no one (the error says why).
    fn in_sync(&self) -> Result<(), String> {
        Ok(())
    }

    /// Stores `event` for every other node; returns once it is durable (a
    /// node that was down applies revocations when it starts).
    async fn publish(&self, event: &ClusterEvent) -> Result<(), StoreError>;
}
