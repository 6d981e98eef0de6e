//! A platform team's own recording stage: every audit record still goes to
//! the embedded store first (write-ahead, fail closed), then a one-line
//! summary goes to the team's log pipeline (here: a `tracing` event).

use async_trait::async_trait;
use sluice_core::audit::{
    AuditEvent, AuditRecord, SessionSummary, Store, StoreError, VerifyReport,
};
use std::sync::Arc;

pub struct AuditTap {
    inner: Arc<dyn Store>,
}

impl AuditTap {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        AuditTap { inner }
    }
}

fn tap(session_id: &str, kind: &str) {
    tracing::info!(target: "audit_tap", message = "Audit record.", session = %session_id, kind);
}

#[async_trait]
impl Store for AuditTap {
    async fn append(&self, session_id: &str, event: AuditEvent) -> Result<(), StoreError> {
        let kind = event.kind();
        self.inner.append(session_id, event).await?;
        tap(session_id, kind);
        Ok(())
    }

    fn append_background(&self, session_id: &str, event: AuditEvent) {
        tap(session_id, event.kind());
        self.inner.append_background(session_id, event);
    }

    async fn sessions(&self) -> Result<Vec<SessionSummary>, StoreError> {
        self.inner.sessions().await
    }

    async fn session(&self, id: &str) -> Result<Option<SessionSummary>, StoreError> {
        self.inner.session(id).await
    }

    async fn session_records(&self, session_id: &str) -> Result<Vec<AuditRecord>, StoreError> {
        self.inner.session_records(session_id).await
    }

    async fn verify(&self) -> Result<VerifyReport, StoreError> {
        self.inner.verify().await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.inner.ready().await
    }
}
