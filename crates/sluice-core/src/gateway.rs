//! The composed gateway: config, store, token authority, pipeline and masker.
//! Protocol listeners hand each accepted client to [`Gateway::serve`].

use crate::approval::{ApprovalNotifier, ApprovalService, ReviewSettings};
use crate::audit::{AuditEvent, Store};
use crate::config::{Config, ConnectionKind};
use crate::masking::{NoMasking, ResponseMasker};
use crate::model::{Credentials, Identity, Protocol};
use crate::pipeline::policy::{MatchKey, PolicyEngine, RulesEngine};
use crate::pipeline::{audit::AuditService, PipelineBuilder, PipelineLayer, SessionInfo};
use crate::session::{LiveSessions, Refusal, Session, SessionError, SessionHandle};
use crate::token::{TokenAuthority, TokenError};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// How long a client may take to present credentials.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{key}: {message}")]
    Config { key: String, message: String },
    #[error(transparent)]
    Token(#[from] TokenError),
}

pub struct Gateway {
    config: Arc<Config>,
    store: Arc<dyn Store>,
    tokens: TokenAuthority,
    pipeline: AuditService,
    masker: Arc<dyn ResponseMasker>,
    approvals: Arc<ApprovalService>,
    live: Arc<LiveSessions>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

/// Assembles a gateway; platform teams use it to add their own layers,
/// match keys, policy engine or masker (see examples/custom-gateway).
pub struct GatewayBuilder {
    config: Config,
    store: Arc<dyn Store>,
    keys: Vec<Arc<dyn MatchKey>>,
    pipeline: PipelineBuilder,
    engine: Option<Arc<dyn PolicyEngine>>,
    masker: Arc<dyn ResponseMasker>,
    notifiers: Vec<Arc<dyn ApprovalNotifier>>,
}

impl GatewayBuilder {
    pub fn new(config: Config, store: Arc<dyn Store>) -> Self {
        GatewayBuilder {
            config,
            store,
            keys: Vec::new(),
            pipeline: PipelineBuilder::new(),
            engine: None,
            masker: Arc::new(NoMasking),
            notifiers: Vec::new(),
        }
    }

    /// Tells `notifier` about approval requests and decisions.
    pub fn approval_notifier(mut self, notifier: Arc<dyn ApprovalNotifier>) -> Self {
        self.notifiers.push(notifier);
        self
    }

    /// Registers a match key for `[[rules]] match` tables.
    pub fn match_key(mut self, key: Arc<dyn MatchKey>) -> Self {
        self.keys.push(key);
        self
    }

    /// Adds a layer to every command's path, inside the audit layer.
    pub fn layer<L: PipelineLayer>(mut self, layer: L) -> Self {
        self.pipeline = self.pipeline.layer(layer);
        self
    }

    /// Replaces the rules engine.
    pub fn policy_engine(mut self, engine: Arc<dyn PolicyEngine>) -> Self {
        self.engine = Some(engine);
        self
    }

    pub fn masker(mut self, masker: Arc<dyn ResponseMasker>) -> Self {
        self.masker = masker;
        self
    }

    /// Checks the rules against the registered match keys without building.
    pub fn check_rules(config: &Config, keys: &[Arc<dyn MatchKey>]) -> Result<(), GatewayError> {
        RulesEngine::compile(config, keys)
            .map_err(|(key, message)| GatewayError::Config { key, message })?;
        ReviewSettings::from_config(config)
            .map(|_| ())
            .map_err(|(key, message)| GatewayError::Config { key, message })
    }

    pub fn build(self) -> Result<Gateway, GatewayError> {
        let engine = match self.engine {
            Some(e) => e,
            None => Arc::new(
                RulesEngine::compile(&self.config, &self.keys)
                    .map_err(|(key, message)| GatewayError::Config { key, message })?,
            ),
        };
        let tokens = TokenAuthority::load_or_create(
            &self.config.gateway.state_dir,
            self.config.auth.token_max_ttl.0,
        )?;
        let settings = ReviewSettings::from_config(&self.config)
            .map_err(|(key, message)| GatewayError::Config { key, message })?;
        let approvals = Arc::new(ApprovalService::new(
            self.store.clone(),
            settings,
            self.notifiers,
        ));
        Ok(Gateway {
            pipeline: self
                .pipeline
                .build(engine, self.store.clone(), Some(approvals.clone())),
            config: Arc::new(self.config),
            store: self.store,
            tokens,
            masker: self.masker,
            approvals,
            live: Arc::default(),
        })
    }
}

impl Gateway {
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn tokens(&self) -> &TokenAuthority {
        &self.tokens
    }

    /// The approval queue (the operator API lists and decides through it).
    pub fn approvals(&self) -> &Arc<ApprovalService> {
        &self.approvals
    }

    /// Sessions live in this process (operators end them; revocation reaches them).
    pub fn live_sessions(&self) -> &Arc<LiveSessions> {
        &self.live
    }

    /// Verifies the presented token. The error is safe to show the client.
    pub async fn authenticate(&self, credentials: &Credentials) -> Result<Identity, TokenError> {
        let identity = self.tokens.verify(credentials.token.trim())?;
        Ok(identity)
    }

    /// Checks access to a connection and durably records the session's start.
    pub async fn open_session(
        &self,
        identity: Identity,
        connection: &str,
        protocol: Protocol,
        client_addr: &str,
    ) -> Result<SessionHandle, Refusal> {
        let conn = self.config.connection(connection).ok_or_else(|| {
            Refusal::Access(format!(
                "no connection named {connection:?} is available to you"
            ))
        })?;
        let expected = match protocol {
            Protocol::Postgres => ConnectionKind::Postgres,
            Protocol::Ssh => ConnectionKind::Ssh,
            Protocol::Http => ConnectionKind::Http,
            Protocol::Kubernetes => ConnectionKind::Kubernetes,
        };
        if conn.kind != expected {
            return Err(Refusal::Access(format!(
                "connection {connection:?} is a {} connection, not {protocol}",
                conn.kind
            )));
        }
        if !identity.in_any_group(&conn.allow_groups) {
            return Err(Refusal::Access(format!(
                "{:?} is not in a group allowed to open {connection:?} (ask an administrator to add one of your groups to its allow_groups)",
                identity.subject
            )));
        }
        let info = SessionInfo {
            id: uuid::Uuid::now_v7().to_string(),
            identity,
            connection: connection.to_string(),
            protocol,
            client_addr: client_addr.to_string(),
        };
        self.store
            .append(
                &info.id,
                AuditEvent::SessionStart {
                    identity: info.identity.clone(),
                    connection: info.connection.clone(),
                    protocol,
                    client_addr: info.client_addr.clone(),
                },
            )
            .await
            // A store failure must fail closed: no unrecorded sessions.
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        Ok(SessionHandle::new(
            info,
            conn.clone(),
            self.pipeline.clone(),
            self.store.clone(),
            self.masker.clone(),
            self.live.clone(),
        ))
    }

    /// Runs the security sequence for one client, then hands the session to its protocol.
    pub async fn serve<S: Session>(
        &self,
        mut session: S,
        protocol: Protocol,
        client_addr: &str,
    ) -> Result<(), SessionError> {
        let request = tokio::time::timeout(HANDSHAKE_TIMEOUT, session.credentials())
            .await
            .map_err(|_| SessionError::Client("handshake timed out".into()))??;
        let identity = match self.authenticate(&request.credentials).await {
            Ok(identity) => identity,
            Err(e) => {
                tracing::warn!(message = "Authentication failed.", %protocol, client = %client_addr, user = %request.credentials.user, connection = %request.connection, reason = %e);
                return session.refuse(Refusal::Authentication(e.to_string())).await;
            }
        };
        let subject = identity.subject.clone();
        let handle = match self
            .open_session(identity, &request.connection, protocol, client_addr)
            .await
        {
            Ok(h) => h,
            Err(refusal) => {
                tracing::warn!(message = "Session refused.", %protocol, client = %client_addr, subject = %subject, connection = %request.connection, reason = ?refusal);
                return session.refuse(refusal).await;
            }
        };
        let span = tracing::info_span!("session", id = %handle.id(), %subject, connection = %request.connection, %protocol);
        tracing::info!(parent: &span, message = "Session opened.", client = %client_addr);
        session.run(handle).instrument(span).await
    }
}
