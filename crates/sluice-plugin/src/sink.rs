//! Fire-and-forget plugins: approval notifiers and audit sinks. Each plugin
//! gets one worker thread that delivers events in order; a failing call is
//! logged and counted and never holds up a session (the store, not the sink,
//! is the record of truth).

use crate::loader::Plugin;
use async_trait::async_trait;
use sluice_core::approval::{ApprovalNotifier, ApprovalRequest};
use sluice_core::audit::{
    AuditEvent, AuditRecord, SessionSummary, Store, StoreError, VerifyReport,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

/// Events waiting for a slow plugin; beyond this they are dropped (and counted).
const QUEUE: usize = 4096;

/// One plugin's delivery thread.
pub struct Worker {
    name: String,
    tx: SyncSender<Vec<u8>>,
    failures: Arc<AtomicU64>,
}

impl Worker {
    pub fn start(plugin: Arc<Plugin>) -> std::io::Result<Worker> {
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE);
        let failures = Arc::new(AtomicU64::new(0));
        let counted = failures.clone();
        let name = plugin.name().to_string();
        std::thread::Builder::new()
            .name(format!("plugin-{name}"))
            .spawn(move || {
                for event in rx {
                    if let Err(e) = plugin.call(&event) {
                        let total = counted.fetch_add(1, Ordering::Relaxed) + 1;
                        tracing::error!(message = "A plugin failed to take an event; it is dropped.", error = %e, failures = total);
                    }
                }
            })?;
        Ok(Worker { name, tx, failures })
    }

    fn send(&self, event: Vec<u8>) {
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                let total = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::error!(message = "A plugin is not keeping up; an event is dropped.", plugin = %self.name, failures = total);
            }
        }
    }

    /// Events this plugin failed to take or that were dropped.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

/// An approval notifier plugin: gets `{"event": "requested"|"decided", "request": {…}}`.
pub struct PluginNotifier(pub Worker);

impl PluginNotifier {
    fn send(&self, event: &str, request: &ApprovalRequest) {
        match serde_json::to_vec(&serde_json::json!({"event": event, "request": request})) {
            Ok(json) => self.0.send(json),
            Err(e) => {
                tracing::error!(message = "An approval event could not be encoded for a plugin.", error = %e)
            }
        }
    }
}

impl ApprovalNotifier for PluginNotifier {
    fn requested(&self, request: &ApprovalRequest) {
        self.send("requested", request);
    }

    fn decided(&self, request: &ApprovalRequest) {
        self.send("decided", request);
    }
}

/// A store that also hands every event to audit sink plugins, after the
/// wrapped store accepted it: `{"session_id": "…", "event": {…}}`.
pub struct AuditSinkStore {
    inner: Arc<dyn Store>,
    sinks: Vec<Worker>,
}

impl AuditSinkStore {
    pub fn wrap(inner: Arc<dyn Store>, sinks: Vec<Worker>) -> Arc<dyn Store> {
        if sinks.is_empty() {
            return inner;
        }
        Arc::new(AuditSinkStore { inner, sinks })
    }

    fn encode(session_id: &str, event: &AuditEvent) -> Option<Vec<u8>> {
        serde_json::to_vec(&serde_json::json!({"session_id": session_id, "event": event}))
            .map_err(|e| tracing::error!(message = "An audit event could not be encoded for a plugin.", error = %e))
            .ok()
    }

    fn deliver(&self, json: Option<Vec<u8>>) {
        if let Some(json) = json {
            for sink in &self.sinks {
                sink.send(json.clone());
            }
        }
    }
}

#[async_trait]
impl Store for AuditSinkStore {
    async fn append(&self, session_id: &str, event: AuditEvent) -> Result<(), StoreError> {
        let json = Self::encode(session_id, &event);
        self.inner.append(session_id, event).await?;
        self.deliver(json);
        Ok(())
    }

    fn append_background(&self, session_id: &str, event: AuditEvent) {
        let json = Self::encode(session_id, &event);
        self.inner.append_background(session_id, event);
        self.deliver(json);
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
