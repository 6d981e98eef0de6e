//! The gateway's OpenTelemetry signals that core produces: metric instruments
//! (through the `opentelemetry` API crate only; the launcher installs the SDK
//! and exporter) and the audit-event tap that turns every audit record into
//! one structured log event (`target: "sluice::audit"`), which the launcher
//! exports as an OTel log record.
//!
//! Without a meter provider installed every instrument is a no-op. The
//! instruments are created on first use, so the launcher must install its
//! provider before the gateway serves (it does, in `telemetry::init`).
//!
//! Attribute values are bounded sets (protocol, connection and rule names from
//! the config, detector names, verdicts); subjects and session ids go to the
//! audit log records, never to metric attributes.

use crate::audit::{AuditEvent, AuditRecord, SessionSummary, Store, StoreError, VerifyReport};
use crate::model::{Action, Outcome, Protocol};
use crate::session::{Refusal, SessionError};
use crate::sync::MutexExt;
use async_trait::async_trait;
use opentelemetry::metrics::{Counter, Histogram, UpDownCounter};
use opentelemetry::KeyValue;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The `tracing` target of audit log events (one per audit record).
pub const AUDIT_LOG_TARGET: &str = "sluice::audit";

/// Every metric name core records, for docs and tests.
pub const METRIC_NAMES: &[&str] = &[
    "sluice.sessions.active",
    "sluice.commands",
    "sluice.masked.values",
    "sluice.upstream.duration",
    "sluice.approval.wait",
    "sluice.errors",
    "sluice.authentication.failures",
    "sluice.sessions.refused",
];

/// Seconds; from sub-millisecond point queries to long approval waits.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 900.0, 3600.0,
];

struct Instruments {
    sessions_active: UpDownCounter<i64>,
    commands: Counter<u64>,
    masked: Counter<u64>,
    upstream_duration: Histogram<f64>,
    approval_wait: Histogram<f64>,
    errors: Counter<u64>,
    auth_failures: Counter<u64>,
    refused: Counter<u64>,
}

fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = opentelemetry::global::meter("sluice");
        Instruments {
            sessions_active: meter
                .i64_up_down_counter("sluice.sessions.active")
                .with_description("Sessions open now, by protocol and connection.")
                .with_unit("{session}")
                .build(),
            commands: meter
                .u64_counter("sluice.commands")
                .with_description(
                    "Commands decided, by verdict (allow/review/deny) and deciding rule.",
                )
                .with_unit("{command}")
                .build(),
            masked: meter
                .u64_counter("sluice.masked.values")
                .with_description("Values masked in responses, by detector or column rule.")
                .with_unit("{value}")
                .build(),
            upstream_duration: meter
                .f64_histogram("sluice.upstream.duration")
                .with_description(
                    "Time from forwarding a command upstream to the end of its response.",
                )
                .with_unit("s")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            approval_wait: meter
                .f64_histogram("sluice.approval.wait")
                .with_description("Time a held command waited for an approval decision.")
                .with_unit("s")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            errors: meter
                .u64_counter("sluice.errors")
                .with_description(
                    "Sessions ended by an error, and commands refused by a gateway fault, by side (client/upstream/internal).",
                )
                .with_unit("{error}")
                .build(),
            auth_failures: meter
                .u64_counter("sluice.authentication.failures")
                .with_description("Clients whose token was missing, invalid or expired.")
                .with_unit("{attempt}")
                .build(),
            refused: meter
                .u64_counter("sluice.sessions.refused")
                .with_description(
                    "Sessions refused before opening, by reason (authentication/access/unavailable).",
                )
                .with_unit("{session}")
                .build(),
        }
    })
}

fn base(protocol: Protocol, connection: &str) -> [KeyValue; 2] {
    [
        KeyValue::new("protocol", protocol.to_string()),
        KeyValue::new("connection", connection.to_string()),
    ]
}

/// A session opened (`+1`) or ended (`-1`).
pub(crate) fn session_active(protocol: Protocol, connection: &str, delta: i64) {
    instruments()
        .sessions_active
        .add(delta, &base(protocol, connection));
}

/// A command was decided.
pub(crate) fn command_decided(
    protocol: Protocol,
    connection: &str,
    action: Action,
    rule: Option<&str>,
) {
    let [p, c] = base(protocol, connection);
    instruments().commands.add(
        1,
        &[
            p,
            c,
            KeyValue::new("verdict", action.to_string()),
            // The connection's default decided when no rule did.
            KeyValue::new("rule", rule.unwrap_or("default").to_string()),
        ],
    );
}

/// A command's response ended: its upstream latency and what was masked.
pub(crate) fn command_finished(protocol: Protocol, connection: &str, outcome: &Outcome) {
    let m = instruments();
    for (detector, n) in &outcome.masked {
        m.masked.add(
            *n,
            &[
                KeyValue::new("connection", connection.to_string()),
                KeyValue::new("detector", detector.clone()),
            ],
        );
    }
    // Refused commands never went upstream: their outcome has no duration.
    if outcome.duration_us > 0 {
        let [p, c] = base(protocol, connection);
        let result = if outcome.error.is_some() {
            "error"
        } else {
            "ok"
        };
        m.upstream_duration.record(
            outcome.duration_us as f64 / 1e6,
            &[p, c, KeyValue::new("result", result)],
        );
    }
}

/// A held command's wait for approval ended (`approved`, `denied`, `expired`, `withdrawn`).
pub(crate) fn approval_waited(rule: &str, result: &'static str, waited: Duration) {
    instruments().approval_wait.record(
        waited.as_secs_f64(),
        &[
            KeyValue::new("rule", rule.to_string()),
            KeyValue::new("result", result),
        ],
    );
}

/// A gateway fault on `side` (`client`, `upstream`, `internal`).
pub fn error(protocol: Protocol, side: &'static str, kind: &'static str) {
    instruments().errors.add(
        1,
        &[
            KeyValue::new("protocol", protocol.to_string()),
            KeyValue::new("side", side),
            KeyValue::new("kind", kind),
        ],
    );
}

/// Which side a session error came from.
pub fn side(e: &SessionError) -> &'static str {
    match e {
        SessionError::Client(_) | SessionError::ClientFailed { .. } | SessionError::Io(_) => {
            "client"
        }
        SessionError::Upstream(_) | SessionError::UpstreamFailed { .. } => "upstream",
        SessionError::Internal(_) | SessionError::Store(_) => "internal",
    }
}

/// A session ended with an error: counted by side. Protocol listeners call
/// this with what `Gateway::serve` returned.
pub fn session_failed(protocol: Protocol, e: &SessionError) {
    error(protocol, side(e), "session");
}

/// A session was refused before it opened. Authentication failures are also
/// counted on their own (`sluice.authentication.failures`).
pub fn session_refused(protocol: Protocol, refusal: &Refusal) {
    let reason = match refusal {
        Refusal::Authentication(_) => "authentication",
        Refusal::Access(_) => "access",
        Refusal::Unavailable(_) => "unavailable",
    };
    let m = instruments();
    let proto = KeyValue::new("protocol", protocol.to_string());
    if matches!(refusal, Refusal::Authentication(_)) {
        m.auth_failures.add(1, std::slice::from_ref(&proto));
    }
    m.refused
        .add(1, &[proto, KeyValue::new("reason", reason.to_string())]);
}

/// Whether any subscriber takes `sluice::audit` events (the stderr log has
/// them off by default; the OTLP log export takes them).
fn audit_logged() -> bool {
    tracing::enabled!(target: AUDIT_LOG_TARGET, tracing::Level::INFO)
}

/// Who a session belongs to, remembered from its start for the records after it.
#[derive(Debug, Clone)]
struct SessionContext {
    subject: Arc<str>,
    connection: Arc<str>,
    protocol: Protocol,
}

/// A `Store` that also emits every appended audit event as one structured
/// log event (target [`AUDIT_LOG_TARGET`]): event type, session id, subject,
/// connection, protocol, command id, verdict and rule, approval state.
///
/// Never the command text, outcome samples or error texts: they can carry
/// secrets a client typed (`ALTER ROLE … PASSWORD '…'`) or data the masking
/// position did not cover; those stay in the tamper-evident store.
pub struct AuditLogStore {
    inner: Arc<dyn Store>,
    sessions: Mutex<HashMap<String, SessionContext>>,
}

impl std::fmt::Debug for AuditLogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLogStore").finish_non_exhaustive()
    }
}

impl AuditLogStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        AuditLogStore {
            inner,
            sessions: Mutex::default(),
        }
    }

    /// Wraps `inner` so its events are also logged.
    pub fn wrap(inner: Arc<dyn Store>) -> Arc<dyn Store> {
        Arc::new(Self::new(inner))
    }

    fn context(&self, session_id: &str, event: &AuditEvent) -> Option<SessionContext> {
        let mut sessions = self.sessions.locked();
        match event {
            AuditEvent::SessionStart {
                identity,
                connection,
                protocol,
                ..
            } => {
                let ctx = SessionContext {
                    subject: identity.subject.as_str().into(),
                    connection: connection.as_str().into(),
                    protocol: *protocol,
                };
                sessions.insert(session_id.to_string(), ctx.clone());
                Some(ctx)
            }
            AuditEvent::SessionEnd { .. } => sessions.remove(session_id),
            _ => sessions.get(session_id).cloned(),
        }
    }

    /// What the log record says about `event` (taken before the store consumes it).
    fn fields(&self, session_id: &str, event: &AuditEvent) -> LogFields {
        let ctx = self.context(session_id, event);
        let mut f = LogFields {
            name: "",
            session_id: session_id.to_string(),
            subject: ctx.as_ref().map(|c| c.subject.to_string()),
            connection: ctx.as_ref().map(|c| c.connection.to_string()),
            protocol: ctx.as_ref().map(|c| c.protocol.to_string()),
            command_id: None,
            verdict: None,
            rule: None,
            approval_id: None,
            state: None,
            reason: None,
        };
        match event {
            AuditEvent::SessionStart { .. } => f.name = "session_start",
            AuditEvent::CommandDecided {
                command_id,
                verdict,
                ..
            } => {
                f.name = "command_decided";
                f.command_id = Some(*command_id);
                f.verdict = Some(verdict.action.to_string());
                f.rule = verdict.rule.clone();
            }
            AuditEvent::CommandFinished {
                command_id,
                outcome,
            } => {
                f.name = "command_finished";
                f.command_id = Some(*command_id);
                f.state = Some(
                    if outcome.error.is_some() {
                        "error"
                    } else {
                        "ok"
                    }
                    .into(),
                );
            }
            AuditEvent::ApprovalRequested {
                approval_id,
                command_id,
                rule,
                ..
            } => {
                f.name = "approval_requested";
                f.command_id = Some(*command_id);
                f.rule = Some(rule.clone());
                f.approval_id = Some(approval_id.clone());
            }
            AuditEvent::ApprovalDecided {
                approval_id, state, ..
            } => {
                f.name = "approval_decided";
                f.approval_id = Some(approval_id.clone());
                f.state = serde_json::to_value(state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string));
            }
            AuditEvent::SessionEnd { reason } => {
                f.name = "session_end";
                f.reason = Some(reason.clone());
            }
            // Recorded output stays in the store; the log says only that it exists.
            AuditEvent::StreamOutput { command_id, .. } => {
                f.name = "stream_output";
                f.command_id = Some(*command_id);
            }
            AuditEvent::WindowResized { command_id, .. } => {
                f.name = "window_resized";
                f.command_id = Some(*command_id);
            }
            AuditEvent::FileTransfer {
                command_id,
                path,
                direction,
                bytes,
            } => {
                f.name = "file_transfer";
                f.command_id = Some(*command_id);
                f.reason = Some(format!("{direction} {path} ({bytes} bytes)"));
            }
        }
        f
    }
}

struct LogFields {
    name: &'static str,
    session_id: String,
    subject: Option<String>,
    connection: Option<String>,
    protocol: Option<String>,
    command_id: Option<u64>,
    verdict: Option<String>,
    rule: Option<String>,
    approval_id: Option<String>,
    state: Option<String>,
    reason: Option<String>,
}

impl LogFields {
    /// `stored`: whether the store took the record (false: the command was refused).
    fn emit(self, stored: bool) {
        tracing::info!(
            target: AUDIT_LOG_TARGET,
            message = self.name,
            session.id = self.session_id,
            subject = self.subject,
            connection = self.connection,
            protocol = self.protocol,
            command.id = self.command_id,
            verdict = self.verdict,
            rule = self.rule,
            approval.id = self.approval_id,
            state = self.state,
            reason = self.reason,
            stored = stored,
        );
    }
}

#[async_trait]
impl Store for AuditLogStore {
    async fn append(&self, session_id: &str, event: AuditEvent) -> Result<(), StoreError> {
        if !audit_logged() {
            // Nobody reads the log events: skip the per-record bookkeeping.
            return self.inner.append(session_id, event).await;
        }
        let fields = self.fields(session_id, &event);
        let starting = matches!(event, AuditEvent::SessionStart { .. });
        let result = self.inner.append(session_id, event).await;
        if starting && result.is_err() {
            // The session is refused: no end record will come to clear it.
            self.sessions.locked().remove(session_id);
        }
        fields.emit(result.is_ok());
        result
    }

    fn append_background(&self, session_id: &str, event: AuditEvent) {
        if audit_logged() {
            self.fields(session_id, &event).emit(true);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Command, CommandKind, Verdict};
    use crate::testing::{person, MemoryStore};

    fn start() -> AuditEvent {
        AuditEvent::SessionStart {
            identity: person("ann", &["agents"]),
            connection: "appdb".into(),
            protocol: Protocol::Postgres,
            client_addr: "127.0.0.1:1".into(),
        }
    }

    #[tokio::test]
    async fn records_pass_through_and_sessions_are_forgotten_at_their_end() {
        // The bookkeeping runs when someone takes the audit log events.
        let _log = tracing::subscriber::set_default(tracing_subscriber::registry());
        let inner = Arc::new(MemoryStore::default());
        let store = AuditLogStore::new(inner.clone());
        store.append("s1", start()).await.unwrap();
        let f = store.fields(
            "s1",
            &AuditEvent::CommandDecided {
                command_id: 1,
                command: Command {
                    kind: CommandKind::SqlSimple,
                    text: "alter role x password 'secret'".into(),
                    context: vec![],
                },
                verdict: Verdict::deny("no-ddl", "no"),
            },
        );
        assert_eq!(f.name, "command_decided");
        assert_eq!(f.subject.as_deref(), Some("ann"));
        assert_eq!(f.connection.as_deref(), Some("appdb"));
        assert_eq!(f.verdict.as_deref(), Some("deny"));
        assert_eq!(f.rule.as_deref(), Some("no-ddl"));
        store.append_background(
            "s1",
            AuditEvent::SessionEnd {
                reason: "closed".into(),
            },
        );
        assert!(store.sessions.lock().unwrap().is_empty());
        assert_eq!(inner.events.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_refused_session_start_is_not_remembered() {
        // The bookkeeping runs when someone takes the audit log events.
        let _log = tracing::subscriber::set_default(tracing_subscriber::registry());
        let inner = Arc::new(MemoryStore {
            fail: true,
            ..MemoryStore::default()
        });
        let store = AuditLogStore::new(inner);
        assert!(store.append("s1", start()).await.is_err());
        assert!(store.sessions.lock().unwrap().is_empty());
    }
}
