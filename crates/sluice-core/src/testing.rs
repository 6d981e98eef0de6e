//! Fakes for tests: core's own, and (with the `testing` feature) those of
//! crates built on core.

use crate::audit::{AuditEvent, AuditRecord, SessionSummary, Store, StoreError, VerifyReport};
use crate::model::{Command, CommandKind, Identity, Protocol};
use crate::pipeline::{CommandRequest, SessionInfo};
use async_trait::async_trait;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// A gateway-issued identity valid for ten minutes.
pub fn person(subject: &str, groups: &[&str]) -> Identity {
    Identity {
        subject: subject.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        issuer: "sluice".into(),
        token_id: "t".into(),
        expires_at: SystemTime::now() + Duration::from_secs(600),
        connections: None,
    }
}

/// Command 1 of session `s1` on `appdb`: a simple SQL query by `identity`.
pub fn sql_request(identity: Identity, text: &str) -> CommandRequest {
    CommandRequest {
        session: Arc::new(SessionInfo {
            id: "s1".into(),
            identity,
            connection: "appdb".into(),
            protocol: Protocol::Postgres,
            client_addr: "127.0.0.1:1".into(),
        }),
        command_id: 1,
        command: Arc::new(Command {
            kind: CommandKind::SqlSimple,
            text: text.into(),
            context: vec![],
        }),
        notices: None,
    }
}

/// A `Store` in memory: every event appended, in order; `fail` makes
/// `append` fail (to test fail-closed paths); `slow` makes it take that
/// long (to test what happens meanwhile).
#[derive(Default)]
pub struct MemoryStore {
    pub events: Mutex<Vec<(String, AuditEvent)>>,
    pub fail: bool,
    pub slow: Option<Duration>,
}

#[async_trait]
impl Store for MemoryStore {
    async fn append(&self, session_id: &str, event: AuditEvent) -> Result<(), StoreError> {
        if let Some(slow) = self.slow {
            tokio::time::sleep(slow).await;
        }
        if self.fail {
            return Err(StoreError::Unavailable("disk full".into()));
        }
        crate::sync::MutexExt::locked(&self.events).push((session_id.into(), event));
        Ok(())
    }
    fn append_background(&self, session_id: &str, event: AuditEvent) {
        crate::sync::MutexExt::locked(&self.events).push((session_id.into(), event));
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
