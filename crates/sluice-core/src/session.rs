//! The `Session` trait every protocol implements, and the core-owned session
//! handle whose lifetime is the session's.
//!
//! Core runs the security sequence (credentials → authentication → connection
//! access → session record) for every protocol, so they cannot drift apart;
//! a protocol only supplies the transport steps.

use crate::audit::{AuditEvent, Store, StoreError};
use crate::config::{ConnectionConfig, SharedConnection};
use crate::masking::ResponseMasker;
use crate::model::{Command, Credentials, Decision, Outcome};
use crate::pipeline::audit::AuditService;
use crate::pipeline::{CommandRequest, SessionInfo};
use crate::sync::{MutexExt, QueueReceiver, QueueSender};
use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tower::ServiceExt;

/// What a client asked for during its handshake.
#[derive(Debug, Clone)]
pub struct SessionRequest {
    pub credentials: Credentials,
    /// The connection name the client selected.
    pub connection: String,
}

impl SessionRequest {
    /// A bearer token's request for `connection` (protocols without a user
    /// name in the handshake: HTTP, MCP).
    pub fn bearer(token: &str, connection: &str) -> Self {
        SessionRequest {
            credentials: Credentials {
                user: String::new(),
                token: token.to_string(),
            },
            connection: connection.to_string(),
        }
    }
}

/// The handshake of a session opened by a request that waits for what came
/// of it (HTTP-like protocols, where a client connection carries a session
/// per token and connection): `credentials` hands the request to core once,
/// `answer` tells the waiting request the outcome.
#[derive(Debug)]
pub struct RequestOpening<T> {
    request: Option<SessionRequest>,
    answer: Option<tokio::sync::oneshot::Sender<T>>,
}

impl<T> RequestOpening<T> {
    /// The opening, and where the waiting request hears the outcome.
    pub fn new(request: SessionRequest) -> (Self, tokio::sync::oneshot::Receiver<T>) {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let opening = RequestOpening {
            request: Some(request),
            answer: Some(answer),
        };
        (opening, answered)
    }

    /// For `Session::credentials`: the request, once.
    pub fn credentials(&mut self) -> Result<SessionRequest, SessionError> {
        self.request.take().ok_or_else(|| {
            SessionError::Internal("a request-opened session reads its credentials once".into())
        })
    }

    /// Tells the waiting request the outcome (the first answer only).
    pub fn answer(&mut self, outcome: T) {
        if let Some(answer) = self.answer.take() {
            let _ = answer.send(outcome);
        }
    }
}

/// Why a session was not opened, as the client will read it (no secrets, no
/// upstream details).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The token was missing, invalid or expired.
    Authentication(String),
    /// Authenticated, but not allowed to open this connection.
    Access(String),
    /// The gateway cannot serve the session (store down, misconfiguration).
    Unavailable(String),
}

impl Refusal {
    pub fn client_message(&self) -> String {
        match self {
            Refusal::Authentication(why) => format!("sluice: authentication failed: {why}"),
            Refusal::Access(why) => format!("sluice: access denied: {why}"),
            Refusal::Unavailable(why) => format!("sluice: session unavailable: {why}"),
        }
    }
}

/// An underlying error kept as the source of a session failure.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Which side a session failure came from (for logs and metrics). Variants
/// with a source keep the error that caused them (`Error::source`).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client: {0}")]
    Client(String),
    #[error("client: {context}: {source}")]
    ClientFailed {
        context: String,
        #[source]
        source: BoxError,
    },
    #[error("upstream: {0}")]
    Upstream(String),
    #[error("upstream: {context}: {source}")]
    UpstreamFailed {
        context: String,
        #[source]
        source: BoxError,
    },
    #[error("internal: {0}")]
    Internal(String),
    #[error("client i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SessionError {
    /// The client failed while the gateway was doing `context`.
    pub fn client(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        SessionError::ClientFailed {
            context: context.into(),
            source: source.into(),
        }
    }

    /// The upstream failed while the gateway was doing `context`.
    pub fn upstream(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        SessionError::UpstreamFailed {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// What a protocol does after telling its client a session was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterRefusal {
    /// The client is gone or was told goodbye: nothing more to admit.
    Close,
    /// The protocol lets the client try other credentials on the same
    /// transport (an SSH client's next authentication method): core reads
    /// them with `credentials` again, within the same handshake deadline.
    Retry,
}

/// The transport half of a session. Implemented by every protocol crate:
/// PostgreSQL and SSH per client connection, HTTP and Kubernetes per token
/// and connection on a client connection (see `sluice-http`).
/// `Gateway::serve` drives it through core's one admission path.
#[async_trait]
pub trait Session: Send + Sized {
    /// Reads the client's handshake up to its credentials and connection choice.
    async fn credentials(&mut self) -> Result<SessionRequest, SessionError>;
    /// Tells the client the session was refused, in the client's language.
    async fn refuse(&mut self, refusal: Refusal) -> Result<AfterRefusal, SessionError>;
    /// Connects upstream with the gateway-held credential and relays the
    /// session, sending every command through `handle.decide`.
    async fn run(self, handle: SessionHandle) -> Result<(), SessionError>;
    /// How long the client has, from the start of `Gateway::serve`, to
    /// present credentials core admits (retries included).
    fn handshake_timeout(&self) -> Duration {
        crate::gateway::HANDSHAKE_TIMEOUT
    }
}

/// A live session. Deliberately not `Clone`: dropping it records the session's end.
pub struct SessionHandle {
    /// Boxed: protocols move the handle through several futures, each of
    /// which keeps room for it for the session's life.
    parts: Box<HandleParts>,
}

struct HandleParts {
    info: Arc<SessionInfo>,
    connection: SharedConnection,
    pipeline: AuditService,
    engine: Arc<dyn crate::pipeline::policy::PolicyEngine>,
    store: Arc<dyn Store>,
    masker: Arc<dyn ResponseMasker>,
    next_command: AtomicU64,
    end_reason: Mutex<Option<String>>,
    notices: QueueSender<String>,
    notices_rx: Mutex<Option<QueueReceiver<String>>>,
    live: Arc<LiveSessions>,
    terminated: tokio::sync::watch::Receiver<Option<String>>,
}

/// The gateway's live sessions, so that an operator or a revoked token can end them.
#[derive(Debug, Default)]
pub struct LiveSessions {
    sessions: Mutex<std::collections::HashMap<String, LiveSession>>,
    on_end: EndHook,
}

/// Told the id and reason of every session ended here (revoked, killed,
/// shut down), after its end is signalled.
type OnEnd = Arc<dyn Fn(&str, &str) + Send + Sync>;

#[derive(Default)]
struct EndHook(std::sync::OnceLock<OnEnd>);

impl std::fmt::Debug for EndHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "EndHook(set)"
        } else {
            "EndHook"
        })
    }
}

#[derive(Debug)]
struct LiveSession {
    token_id: String,
    info: Arc<SessionInfo>,
    started_at_ms: u64,
    terminate: tokio::sync::watch::Sender<Option<String>>,
}

/// A live session as operators see it (`GET /api/v1/sessions`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LiveSessionInfo {
    pub id: String,
    pub subject: String,
    pub issuer: String,
    pub connection: String,
    pub protocol: crate::model::Protocol,
    pub client_addr: String,
    pub token_id: String,
    pub started_at_ms: u64,
    /// Unix seconds when the session's credential expires.
    pub expires_at: u64,
}

impl LiveSessions {
    fn register(&self, info: &Arc<SessionInfo>) -> tokio::sync::watch::Receiver<Option<String>> {
        let (terminate, rx) = tokio::sync::watch::channel(None);
        let started_at_ms = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        {
            let mut s = self.sessions.locked();
            s.insert(
                info.id.clone(),
                LiveSession {
                    token_id: info.identity.token_id.clone(),
                    info: info.clone(),
                    started_at_ms,
                    terminate,
                },
            );
        }
        rx
    }

    /// How many sessions are live.
    pub fn len(&self) -> usize {
        self.sessions.locked().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits up to `limit` for every live session to end; whether they did.
    pub async fn wait_empty(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.is_empty() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// Sets what is told of every session ended here (once; later calls
    /// are ignored): the gateway withdraws the session's held approvals.
    pub fn on_end(&self, hook: OnEnd) {
        let _ = self.on_end.0.set(hook);
    }

    /// Tells the end hook, outside the sessions' lock.
    fn ended(&self, ended: &[(String, String)]) {
        if let Some(hook) = self.on_end.0.get() {
            for (id, reason) in ended {
                hook(id, reason);
            }
        }
    }

    /// Ends every live session for which `why` gives a reason; returns how many.
    pub fn terminate_where(&self, why: impl Fn(&SessionInfo) -> Option<String>) -> usize {
        let mut told = Vec::new();
        let ended = self.terminate_matching(|live| why(&live.info), &mut told);
        self.ended(&told);
        ended
    }

    /// Signals the end of every session `why` gives a reason for, noting
    /// each in `told`.
    fn terminate_matching(
        &self,
        why: impl Fn(&LiveSession) -> Option<String>,
        told: &mut Vec<(String, String)>,
    ) -> usize {
        let s = self.sessions.locked();
        let mut ended = 0;
        for (id, live) in s.iter() {
            if let Some(reason) = why(live) {
                told.push((id.clone(), reason.clone()));
                live.terminate.send_replace(Some(reason));
                ended += 1;
            }
        }
        ended
    }

    /// The sessions live in this process, oldest first.
    pub fn list(&self) -> Vec<LiveSessionInfo> {
        let mut out: Vec<LiveSessionInfo> = self
            .sessions
            .locked()
            .iter()
            .map(|(id, l)| LiveSessionInfo {
                id: id.clone(),
                subject: l.info.identity.subject.clone(),
                issuer: l.info.identity.issuer.clone(),
                connection: l.info.connection.clone(),
                protocol: l.info.protocol,
                client_addr: l.info.client_addr.clone(),
                token_id: l.token_id.clone(),
                started_at_ms: l.started_at_ms,
                expires_at: l
                    .info
                    .identity
                    .expires_at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            })
            .collect();
        out.sort_by(|a, b| (a.started_at_ms, &a.id).cmp(&(b.started_at_ms, &b.id)));
        out
    }

    fn remove(&self, id: &str) {
        self.sessions.locked().remove(id);
    }

    /// Ends one live session; `reason` is told to the client. False when not live here.
    pub fn terminate(&self, session_id: &str, reason: &str) -> bool {
        let live = {
            let s = self.sessions.locked();
            s.get(session_id)
                .map(|live| live.terminate.send_replace(Some(reason.to_string())))
                .is_some()
        };
        if live {
            self.ended(&[(session_id.to_string(), reason.to_string())]);
        }
        live
    }

    /// Ends every live session opened with the token `token_id`; returns how many.
    pub fn terminate_token(&self, token_id: &str, reason: &str) -> usize {
        let mut told = Vec::new();
        let ended = self.terminate_matching(
            |live| (live.token_id == token_id).then(|| reason.to_string()),
            &mut told,
        );
        self.ended(&told);
        ended
    }

    /// Ids of the sessions live in this process.
    pub fn ids(&self) -> Vec<String> {
        self.sessions.locked().keys().cloned().collect()
    }
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHandle")
            .field("id", &self.parts.info.id)
            .finish()
    }
}

impl SessionHandle {
    pub(crate) fn new(
        info: SessionInfo,
        connection: SharedConnection,
        pipeline: AuditService,
        engine: Arc<dyn crate::pipeline::policy::PolicyEngine>,
        store: Arc<dyn Store>,
        masker: Arc<dyn ResponseMasker>,
        live: Arc<LiveSessions>,
    ) -> Self {
        let (notices, notices_rx) = crate::sync::queue();
        let info = Arc::new(info);
        let terminated = live.register(&info);
        crate::metrics::session_active(info.protocol, &info.connection, 1);
        let parts = HandleParts {
            live,
            terminated,
            info,
            connection,
            pipeline,
            engine,
            store,
            masker,
            next_command: AtomicU64::new(1),
            end_reason: Mutex::new(None),
            notices,
            notices_rx: Mutex::new(Some(notices_rx)),
        };
        SessionHandle {
            parts: Box::new(parts),
        }
    }

    /// Messages the pipeline has for the client while a command is pending
    /// (e.g. held for approval). The protocol takes this once and delivers
    /// them as they come (PostgreSQL: NoticeResponse).
    pub fn take_notices(&self) -> Option<QueueReceiver<String>> {
        self.parts.notices_rx.locked().take()
    }

    pub fn info(&self) -> &Arc<SessionInfo> {
        &self.parts.info
    }

    pub fn id(&self) -> &str {
        &self.parts.info.id
    }

    /// The connection's configuration, including the gateway-held credential reference.
    pub fn connection(&self) -> &ConnectionConfig {
        &self.parts.connection
    }

    /// [`Self::connection`], to keep beyond a borrow of the handle (a pointer, not a copy).
    pub fn shared_connection(&self) -> SharedConnection {
        self.parts.connection.clone()
    }

    pub fn masker(&self) -> &Arc<dyn ResponseMasker> {
        &self.parts.masker
    }

    /// Runs a command through the pipeline. On `Forward` the decision is
    /// already durable; an `Err` means the audit store failed and the command
    /// must not be forwarded.
    pub async fn decide(&self, command: Command) -> Result<Decision, StoreError> {
        let command_id = self.parts.next_command.fetch_add(1, Ordering::Relaxed);
        self.parts
            .pipeline
            .clone()
            .oneshot(CommandRequest {
                session: self.parts.info.clone(),
                command_id,
                command: Arc::new(command),
                notices: Some(self.parts.notices.clone()),
            })
            .await
    }

    /// Records `command` as refused by the gateway's own stage `rule` (e.g.
    /// `sluice:masking`: the statement would carry a masked column where
    /// masking cannot follow) and returns the refusal. Like `decide`, the
    /// record is durable before this returns; an `Err` means the store failed.
    pub async fn refuse(
        &self,
        command: Command,
        rule: &str,
        message: &str,
    ) -> Result<Decision, StoreError> {
        let command_id = self.parts.next_command.fetch_add(1, Ordering::Relaxed);
        let (command, verdict) = crate::audit::bounds::recordable(
            command,
            crate::Verdict::deny(rule, message),
            crate::audit::MAX_COMMAND_RECORD,
        );
        self.parts
            .store
            .append(
                &self.parts.info.id,
                AuditEvent::CommandDecided {
                    command_id,
                    command,
                    verdict: verdict.clone(),
                },
            )
            .await?;
        crate::metrics::command_decided(
            self.parts.info.protocol,
            &self.parts.info.connection,
            verdict.action,
            verdict.rule.as_deref(),
        );
        Ok(Decision::Refuse {
            command_id,
            denial: crate::pipeline::audit::denial_for(&verdict),
        })
    }

    /// Whether the policy alone would deny `command` (an error counts as a
    /// denial), without recording anything. For protocols that learn a
    /// command before it can run (a PostgreSQL Parse) and should refuse it
    /// there: they then call `decide`, which records the refusal.
    pub fn policy_refuses(&self, command: Command) -> bool {
        self.policy_action(command) == crate::Action::Deny
    }

    /// What the policy alone would do with `command` (an error: deny),
    /// without recording anything; see [`Self::policy_refuses`].
    pub fn policy_action(&self, command: Command) -> crate::Action {
        let request = CommandRequest {
            session: self.parts.info.clone(),
            command_id: 0,
            command: Arc::new(command),
            notices: None,
        };
        self.parts
            .engine
            .evaluate(&request)
            .map_or(crate::Action::Deny, |v| v.action)
    }

    /// A cheap handle for the response path to record outcomes with.
    pub fn recorder(&self) -> OutcomeRecorder {
        OutcomeRecorder {
            session_id: self.parts.info.id.clone(),
            info: self.parts.info.clone(),
            store: self.parts.store.clone(),
        }
    }

    /// Sets the reason recorded when the session ends (the last one set wins).
    pub fn set_end_reason(&self, reason: impl Into<String>) {
        *self.parts.end_reason.locked() = Some(reason.into());
    }

    /// Why the session must end, if it must already (without waiting): the
    /// credential expired, or the session was terminated.
    pub fn end_reason_now(&self) -> Option<String> {
        if self.parts.info.identity.expires_at <= SystemTime::now() {
            return Some("token expired".into());
        }
        self.parts.terminated.borrow().clone()
    }

    /// Resolves when the session must end: its credential expired, its token
    /// was revoked or an operator ended it. The protocol then ends the session
    /// and tells the client the returned reason (it is also recorded).
    pub async fn ended(&self) -> String {
        let left = self
            .parts
            .info
            .identity
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let mut terminated = self.parts.terminated.clone();
        let reason = tokio::select! {
            _ = tokio::time::sleep(left) => "token expired".to_string(),
            r = terminated.wait_for(Option::is_some) => match r {
                Ok(reason) => reason.clone().unwrap_or_default(),
                // The registry is gone only when the gateway is: end the session.
                Err(_) => "the gateway is shutting down".to_string(),
            },
        };
        self.set_end_reason(reason.clone());
        reason
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        self.parts.live.remove(&self.parts.info.id);
        crate::metrics::session_active(self.parts.info.protocol, &self.parts.info.connection, -1);
        let reason = self
            .parts
            .end_reason
            .locked()
            .take()
            .unwrap_or_else(|| "closed".to_string());
        tracing::info!(message = "Session ended.", session = %self.parts.info.id, reason = %reason);
        self.parts
            .store
            .append_background(&self.parts.info.id, AuditEvent::SessionEnd { reason });
    }
}

/// Records command outcomes from the response path, off the data path.
#[derive(Clone)]
pub struct OutcomeRecorder {
    session_id: String,
    info: Arc<SessionInfo>,
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for OutcomeRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutcomeRecorder")
            .field("session", &self.session_id)
            .finish()
    }
}

impl OutcomeRecorder {
    pub fn finished(&self, command_id: u64, mut outcome: Outcome) {
        crate::audit::bounds::bound_outcome(&mut outcome);
        crate::metrics::command_finished(self.info.protocol, &self.info.connection, &outcome);
        self.store.append_background(
            &self.session_id,
            AuditEvent::CommandFinished {
                command_id,
                outcome,
            },
        );
    }
}
