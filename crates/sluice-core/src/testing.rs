//! Shared fakes for core's unit tests.

use crate::audit::{AuditEvent, AuditRecord, SessionSummary, Store, StoreError, VerifyReport};
use async_trait::async_trait;
use std::sync::Mutex;

#[derive(Default)]
pub struct MemoryStore {
    pub events: Mutex<Vec<(String, AuditEvent)>>,
    pub fail: bool,
}

#[async_trait]
impl Store for MemoryStore {
    async fn append(&self, session_id: &str, event: AuditEvent) -> Result<(), StoreError> {
        if self.fail {
            return Err(StoreError::Unavailable("disk full".into()));
        }
        self.events.lock().unwrap().push((session_id.into(), event));
        Ok(())
    }
    fn append_background(&self, session_id: &str, event: AuditEvent) {
        self.events.lock().unwrap().push((session_id.into(), event));
    }
    async fn sessions(&self) -> Result<Vec<SessionSummary>, StoreError> {
        Ok(vec![])
    }
    async fn session_records(&self, _: &str) -> Result<Vec<AuditRecord>, StoreError> {
        Ok(vec![])
    }
    async fn verify(&self) -> Result<VerifyReport, StoreError> {
        Ok(VerifyReport::default())
    }
}
