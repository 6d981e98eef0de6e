//! The composed gateway: config, store, token authority, pipeline and masker.
//! Protocol listeners hand each accepted client to [`Gateway::serve`].

use crate::approval::{ApprovalNotifier, ApprovalService, ReviewSettings};
use crate::audit::{AuditEvent, Store};
use crate::auth::{
    unverified_issuer, AuthError, Authenticator, GroupMap, Lineage, RevocationError,
    RevocationList, MAX_EXCHANGE_DEPTH,
};
use crate::config::{
    Config, ConnectionConfig, ConnectionKind, SessionScheduling, SharedConnection,
};
use crate::listener::{DrainReport, Listener, ListenerLimits};
use crate::masking::{NoMasking, ResponseMasker};
use crate::model::{Credentials, Identity, Protocol};
use crate::pinned::PinnedRuntimes;
use crate::pipeline::policy::{MatchKey, PolicyEngine, ReloadableEngine, RulesEngine};
use crate::pipeline::{audit::AuditService, PipelineBuilder, PipelineLayer, SessionInfo};
use crate::session::{AfterRefusal, LiveSessions, Refusal, Session, SessionError, SessionHandle};
use crate::sync::RwLockExt;
use crate::token::{IssuedToken, TokenAuthority, TokenError, TokenRequest, GATEWAY_ISSUER};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tracing::Instrument;

/// How long a client may take to present credentials.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{key}: {message}")]
    Config { key: String, message: String },
    /// A configuration error located in its file.
    #[error(transparent)]
    Invalid(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Revocations(#[from] RevocationError),
}

/// Why a token exchange was refused; the text is safe for the caller.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The caller may not have a token for that connection.
    #[error("{0}")]
    Forbidden(String),
    /// The request itself is not acceptable (TTL, unknown connection).
    #[error("{0}")]
    Invalid(String),
}

pub struct Gateway {
    /// Replaced by a configuration reload; readers take a snapshot.
    config: RwLock<Arc<Config>>,
    store: Arc<dyn Store>,
    tokens: TokenAuthority,
    pipeline: AuditService,
    /// The policy stage alone, for checks that record nothing (see
    /// `SessionHandle::policy_refuses`).
    engine: Arc<dyn PolicyEngine>,
    /// The built-in rules engine, recompiled on reload (`None` when the
    /// assembler supplied its own engine, which reloads itself if it wants).
    rules: Option<Arc<ReloadableEngine>>,
    keys: Vec<Arc<dyn MatchKey>>,
    masker: Arc<dyn ResponseMasker>,
    approvals: Arc<ApprovalService>,
    live: Arc<LiveSessions>,
    authenticators: Vec<Arc<dyn Authenticator>>,
    group_map: RwLock<Arc<GroupMap>>,
    revocations: RevocationList,
    /// Which exchanged tokens descend from which, so that a revocation ends
    /// the live sessions of every descendant, at any depth.
    lineage: Lineage,
    /// Set once by `drain`: listeners stop accepting, admission refuses.
    draining: tokio::sync::watch::Sender<bool>,
    /// Contributed connection kinds, checked again on reload.
    kinds: ConnectionKinds,
    /// The other nodes of a shared store (none for one node).
    cluster: Option<Arc<dyn crate::cluster::Cluster>>,
    /// The threads connections are pinned to, under
    /// `session_scheduling = "pinned"`.
    pinned: Option<Arc<PinnedRuntimes>>,
}

/// What a configuration reload did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Live sessions ended because their connection went away or no longer admits them.
    pub sessions_ended: usize,
    /// Changed sections that were kept as they were: they take effect after a restart.
    pub needs_restart: Vec<String>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

/// Checks the settings of a connection kind (its own keys, or its
/// `options`). An error names the key under the connection (`database`,
/// `options.port`) and says what is wrong.
pub type KindValidator =
    Arc<dyn Fn(&ConnectionConfig) -> Result<(), (String, String)> + Send + Sync>;

/// A connection kind a gateway serves: the keys its connections may have
/// besides core's own, and its crate's validator.
#[derive(Clone)]
struct KindEntry {
    kind: ConnectionKind,
    keys: &'static [&'static str],
    validate: KindValidator,
}

/// The connection kinds a gateway serves, each with its crate's keys and
/// validator. A connection of a kind not added here is refused, built-in
/// kinds included: no crate of this assembly would check or serve it.
#[derive(Clone, Default)]
pub struct ConnectionKinds(Vec<KindEntry>);

impl ConnectionKinds {
    /// Serves `kind`, whose connections may have `keys` (besides name,
    /// kind, upstream, allow_groups, default_action and options) and are
    /// checked by `validate`.
    pub fn add(
        &mut self,
        kind: ConnectionKind,
        keys: &'static [&'static str],
        validate: KindValidator,
    ) {
        self.0.push(KindEntry {
            kind,
            keys,
            validate,
        });
    }

    /// Every connection is of a kind added here, has only its kind's keys
    /// (a misspelt key is named), and its kind's validator accepts it.
    pub fn check(&self, config: &Config) -> Result<(), GatewayError> {
        for (i, c) in config.connections.iter().enumerate() {
            let Some(entry) = self.0.iter().find(|e| e.kind == c.kind) else {
                let served: Vec<String> = self.0.iter().map(|e| e.kind.to_string()).collect();
                return Err(config
                    .error_at(
                        &format!("connections.{i}.kind"),
                        format!(
                            "unknown connection kind {:?}; this gateway serves {}",
                            c.kind.as_str(),
                            if served.is_empty() {
                                "no connection kind".to_string()
                            } else {
                                served.join(", ")
                            }
                        ),
                    )
                    .into());
            };
            let checked = c.settings_for(entry.keys).and_then(|_| (entry.validate)(c));
            checked.map_err(|(key, message)| {
                config.error_at(&format!("connections.{i}.{key}"), message)
            })?;
        }
        Ok(())
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
    authenticators: Vec<Arc<dyn Authenticator>>,
    kinds: ConnectionKinds,
    cluster: Option<Arc<dyn crate::cluster::Cluster>>,
}

impl GatewayBuilder {
    /// Tells the other nodes of a shared store what this one decides
    /// (revocations, sessions ended); they apply it with `Gateway::apply`.
    pub fn cluster(mut self, cluster: Arc<dyn crate::cluster::Cluster>) -> Self {
        self.cluster = Some(cluster);
        self
    }

    pub fn new(config: Config, store: Arc<dyn Store>) -> Self {
        GatewayBuilder {
            config,
            store,
            keys: Vec::new(),
            pipeline: PipelineBuilder::new(),
            engine: None,
            masker: Arc::new(NoMasking),
            notifiers: Vec::new(),
            authenticators: Vec::new(),
            kinds: ConnectionKinds::default(),
            cluster: None,
        }
    }

    /// Wraps the recording stage: every audit record the gateway writes and
    /// every read goes through `wrap(store)` (to tap, export or filter
    /// reads; the wrapper must keep the `Store` contract: an append returns
    /// once the record is durable). Wrappers nest in the order given.
    pub fn recording(mut self, wrap: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>) -> Self {
        self.store = wrap(self.store);
        self
    }

    /// Serves connections of `kind` (built-in or contributed by a protocol
    /// crate outside core), whose connections may have `keys` besides
    /// core's own; `validate` checks each such connection's settings at
    /// build and on every reload. Connections of kinds not added are refused.
    pub fn connection_kind(
        mut self,
        kind: ConnectionKind,
        keys: &'static [&'static str],
        validate: impl Fn(&ConnectionConfig) -> Result<(), (String, String)> + Send + Sync + 'static,
    ) -> Self {
        self.kinds.add(kind, keys, Arc::new(validate));
        self
    }

    /// Serves every kind in `kinds` (see `connection_kind`).
    pub fn connection_kinds(mut self, kinds: ConnectionKinds) -> Self {
        self.kinds.0.extend(kinds.0);
        self
    }

    /// Accepts tokens `authenticator` vouches for (e.g. an OIDC provider),
    /// besides gateway-issued ones. Tried in registration order.
    pub fn authenticator(mut self, authenticator: Arc<dyn Authenticator>) -> Self {
        self.authenticators.push(authenticator);
        self
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
        self.kinds.check(&self.config)?;
        let (engine, rules): (Arc<dyn PolicyEngine>, _) = match self.engine {
            Some(e) => (e, None),
            None => {
                let rules = Arc::new(ReloadableEngine::new(Arc::new(
                    RulesEngine::compile(&self.config, &self.keys)
                        .map_err(|(key, message)| GatewayError::Config { key, message })?,
                )));
                (rules.clone(), Some(rules))
            }
        };
        let tokens = TokenAuthority::from_config(&self.config)?;
        let settings = ReviewSettings::from_config(&self.config)
            .map_err(|(key, message)| GatewayError::Config { key, message })?;
        let group_map = GroupMap::from_config(&self.config.auth);
        let revocations = RevocationList::load(&self.config.gateway.state_dir)?;
        let mut approvals = ApprovalService::new(self.store.clone(), settings, self.notifiers);
        if let Some(cluster) = &self.cluster {
            approvals = approvals.with_cluster(cluster.clone());
        }
        let approvals = Arc::new(approvals);
        // A session that ends takes its held commands with it.
        let live = Arc::new(LiveSessions::default());
        let held = Arc::downgrade(&approvals);
        live.on_end(Arc::new(move |session_id: &str, reason: &str| {
            if let Some(approvals) = held.upgrade() {
                approvals.withdraw_session(session_id, reason);
            }
        }));
        let pinned = match self.config.gateway.session_scheduling {
            SessionScheduling::Shared => None,
            SessionScheduling::Pinned => {
                let threads =
                    self.config.gateway.worker_threads.unwrap_or_else(|| {
                        std::thread::available_parallelism().map_or(1, |n| n.get())
                    });
                Some(Arc::new(PinnedRuntimes::start(threads).map_err(|e| {
                    GatewayError::Config {
                        key: "gateway.session_scheduling".into(),
                        message: format!("cannot start the pinned threads: {e}"),
                    }
                })?))
            }
        };
        Ok(Gateway {
            pipeline: self.pipeline.build(
                engine.clone(),
                self.store.clone(),
                Some(approvals.clone()),
            ),
            engine,
            config: RwLock::new(Arc::new(self.config)),
            store: self.store,
            tokens,
            rules,
            keys: self.keys,
            masker: self.masker,
            approvals,
            live,
            authenticators: self.authenticators,
            group_map: RwLock::new(Arc::new(group_map)),
            revocations,
            lineage: Lineage::default(),
            draining: tokio::sync::watch::channel(false).0,
            kinds: self.kinds,
            cluster: self.cluster,
            pinned,
        })
    }
}

impl Gateway {
    /// The configuration in force (a snapshot: a reload replaces it).
    pub fn config(&self) -> Arc<Config> {
        self.config.read_locked().clone()
    }

    /// Applies a new configuration to the running gateway: connections,
    /// rules, review settings and group mapping take effect for every command
    /// from now on, including on live sessions.
    /// Live sessions whose connection was removed, changed kind or upstream,
    /// or no longer admits the session's identity are ended. Settings that
    /// need a restart (listeners, state, TLS, identity providers, masking,
    /// telemetry, webhooks)
    /// are kept and named in the report. Nothing changes when the new
    /// configuration does not compile.
    pub fn reload(&self, config: Config) -> Result<ReloadReport, GatewayError> {
        let config_error = |(key, message)| GatewayError::Config { key, message };
        let rules = match &self.rules {
            Some(_) => Some(RulesEngine::compile(&config, &self.keys).map_err(config_error)?),
            None => None,
        };
        let settings = ReviewSettings::from_config(&config).map_err(config_error)?;
        self.kinds.check(&config)?;
        let old = self.config();
        let mut report = ReloadReport::default();
        let unchanged =
            |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") == format!("{b:?}");
        for (key, same) in [
            ("gateway", unchanged(&old.gateway, &config.gateway)),
            ("listen", unchanged(&old.listen, &config.listen)),
            ("tls", unchanged(&old.tls, &config.tls)),
            ("auth.oidc", unchanged(&old.auth.oidc, &config.auth.oidc)),
            (
                "auth.token_max_ttl",
                old.auth.token_max_ttl == config.auth.token_max_ttl,
            ),
            // Keys are read at start: a rotation step is a restart.
            (
                "auth.signing_key",
                old.auth.signing_key == config.auth.signing_key,
            ),
            (
                "auth.verification_keys",
                old.auth.verification_keys == config.auth.verification_keys,
            ),
            ("telemetry", unchanged(&old.telemetry, &config.telemetry)),
            ("webhooks", unchanged(&old.webhooks, &config.webhooks)),
            ("masking", unchanged(&old.masking, &config.masking)),
        ] {
            if !same {
                report.needs_restart.push(key.to_string());
            }
        }
        // Keep what cannot change in place, so the config the gateway reports is the one in force.
        let mut config = config;
        config.gateway = old.gateway.clone();
        config.listen = old.listen.clone();
        config.tls = old.tls.clone();
        config.auth.oidc = old.auth.oidc.clone();
        config.auth.token_max_ttl = old.auth.token_max_ttl;
        config.auth.signing_key = old.auth.signing_key.clone();
        config.auth.verification_keys = old.auth.verification_keys.clone();
        config.telemetry = old.telemetry.clone();
        config.webhooks = old.webhooks.clone();
        config.masking = old.masking.clone();

        if let (Some(engine), Some(rules)) = (&self.rules, rules) {
            engine.replace(Arc::new(rules));
        }
        self.approvals.replace_settings(settings);
        *self.group_map.write_locked() = Arc::new(GroupMap::from_config(&config.auth));
        let config = Arc::new(config);
        *self.config.write_locked() = config.clone();
        report.sessions_ended = self.live.terminate_where(|session| {
            let name = &session.connection;
            let before = old.connection(name);
            match config.connection(name) {
                None => Some(format!(
                    "connection {name:?} was removed from the gateway's configuration"
                )),
                Some(now)
                    if before.is_some_and(|b| b.kind != now.kind || b.upstream != now.upstream) =>
                {
                    Some(format!(
                        "connection {name:?} now points elsewhere; reconnect"
                    ))
                }
                Some(now) if !session.identity.in_any_group(&now.allow_groups) => Some(format!(
                    "{:?} is no longer in a group allowed to open {name:?}",
                    session.identity.subject
                )),
                Some(_) => None,
            }
        });
        Ok(report)
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

    /// The tokens `token_id` was exchanged from, nearest first (empty: issued
    /// directly, or not seen by this process); revoking any of them revokes it.
    pub fn token_lineage(&self, token_id: &str) -> Vec<String> {
        self.lineage.ancestors(token_id)
    }

    /// Verifies the presented token: a gateway token, or one a registered
    /// authenticator vouches for (its IdP groups mapped to Sluice groups);
    /// revoked tokens are refused. The error is safe to show the client.
    pub async fn authenticate(&self, credentials: &Credentials) -> Result<Identity, AuthError> {
        // A node that may have missed another node's revocation admits no one.
        if let Some(cluster) = &self.cluster {
            cluster.in_sync().map_err(AuthError::Unavailable)?;
        }
        let token = credentials.token.trim();
        // The unverified issuer only picks the verifier; each verifies it.
        // With no other verifier there is nothing to pick (and no decode to pay).
        let issuer = if self.authenticators.is_empty() {
            None
        } else {
            unverified_issuer(token)
        };
        let identity =
            if self.authenticators.is_empty() || issuer.as_deref() == Some(GATEWAY_ISSUER) {
                let verified = self.tokens.verify_full(token)?;
                // Revoking any token up the exchange chain revokes this one.
                if self
                    .revocations
                    .any_revoked(&verified.identity.token_id, &verified.lineage)
                {
                    return Err(AuthError::Revoked);
                }
                self.lineage.record(
                    &verified.identity.token_id,
                    &verified.lineage,
                    verified.identity.expires_at,
                );
                verified.identity
            } else {
                let mut found = None;
                for authenticator in &self.authenticators {
                    if let Some(identity) = authenticator.authenticate(token).await? {
                        found = Some(identity);
                        break;
                    }
                }
                let Some(mut identity) = found else {
                    return Err(AuthError::UnknownIssuer(match issuer {
                        Some(iss) => format!(" (its issuer is {:?})", truncate(&iss, 120)),
                        None => String::new(),
                    }));
                };
                identity.groups = self
                    .group_map
                    .read_locked()
                    .apply(&identity.issuer, &identity.groups);
                // Only gateway tokens carry a connection narrowing.
                identity.connections = None;
                identity
            };
        if self.revocations.any_revoked(
            &identity.token_id,
            &self.lineage.ancestors(&identity.token_id),
        ) {
            return Err(AuthError::Revoked);
        }
        // Verifiers tolerate clock skew; admission does not: no request or
        // session starts on a credential expired by this gateway's clock.
        if identity.expires_at <= SystemTime::now() {
            return Err(AuthError::Token(TokenError::Expired));
        }
        Ok(identity)
    }

    /// Revokes a token id (persistently, before returning) on this node and,
    /// with a shared store, on every node; ends the live sessions opened with
    /// it or with tokens exchanged from it, at any depth. Returns how many
    /// sessions this node told to end.
    pub async fn revoke_token(
        &self,
        token_id: &str,
        expires_at: Option<SystemTime>,
        by: &str,
        reason: Option<String>,
    ) -> Result<usize, RevocationError> {
        let revocation = self
            .revocations
            .revoke(token_id, expires_at, by, reason.clone())?;
        tracing::warn!(message = "Token revoked.", token_id = %token_id, by = %by, reason = ?reason);
        let ended = self.end_revoked_sessions(&revocation);
        if let Some(cluster) = &self.cluster {
            let event = crate::cluster::ClusterEvent::Revoked { revocation };
            cluster.publish(&event).await.map_err(|e| RevocationError {
                path: "the shared store".into(),
                reason: format!("revoked on this node only; the other nodes were not told: {e}"),
            })?;
        }
        Ok(ended)
    }

    fn end_revoked_sessions(&self, revocation: &crate::auth::Revocation) -> usize {
        let message = match &revocation.reason {
            Some(r) => format!("token revoked by {}: {r}", revocation.revoked_by),
            None => format!("token revoked by {}", revocation.revoked_by),
        };
        self.live.terminate_where(|session| {
            self.lineage
                .descends_from(&session.identity.token_id, &revocation.token_id)
                .then(|| message.clone())
        })
    }

    /// Ends a live session on whichever node runs it: here when it is
    /// live here, otherwise through the shared store. `Ok(false)`: no node
    /// can be told (one node, and it is not here).
    pub async fn end_session_anywhere(
        &self,
        session_id: &str,
        reason: &str,
    ) -> Result<bool, crate::audit::StoreError> {
        if self.live.terminate(session_id, reason) {
            return Ok(true);
        }
        let Some(cluster) = &self.cluster else {
            return Ok(false);
        };
        let event = crate::cluster::ClusterEvent::EndSession {
            session_id: session_id.to_string(),
            reason: reason.to_string(),
        };
        cluster.publish(&event).await.map(|()| true)
    }

    /// Applies what another node decided.
    pub fn apply(&self, event: crate::cluster::ClusterEvent) {
        match event {
            crate::cluster::ClusterEvent::Revoked { revocation } => {
                if let Err(e) = self.revocations.insert(revocation.clone()) {
                    // Still enforced in memory; the file catches up on the next change.
                    tracing::error!(message = "A revocation from another node could not be saved.", error = %e);
                }
                let ended = self.end_revoked_sessions(&revocation);
                tracing::warn!(message = "Token revoked on another node.", token_id = %revocation.token_id, sessions_ended = ended);
            }
            crate::cluster::ClusterEvent::EndSession { session_id, reason } => {
                if self.live.terminate(&session_id, &reason) {
                    tracing::warn!(message = "Session ended from another node.", session = %session_id);
                }
            }
            crate::cluster::ClusterEvent::Approval { request } => self.approvals.mirror(*request),
            crate::cluster::ClusterEvent::DecideApproval {
                id,
                approver,
                approve,
                reason,
            } => {
                let approvals = self.approvals.clone();
                tokio::spawn(async move {
                    approvals
                        .decide_for_another_node(&id, &approver, approve, reason)
                        .await
                });
            }
        }
    }

    /// Whether `token_id` is on the revocation list.
    pub fn is_revoked(&self, token_id: &str) -> bool {
        self.revocations.is_revoked(token_id)
    }

    /// Trades `identity`'s credential for a gateway token that opens only
    /// `connection`, for at most `ttl` and never past the credential's own
    /// expiry (RFC 8693 style: an agent hands a sub-agent less than it holds).
    pub fn exchange(
        &self,
        identity: &Identity,
        connection: &str,
        ttl: Duration,
    ) -> Result<IssuedToken, ExchangeError> {
        let config = self.config();
        let conn = config
            .connection(connection)
            .ok_or_else(|| ExchangeError::Invalid(format!("no connection named {connection:?}")))?;
        if !identity.may_open(connection) {
            return Err(ExchangeError::Forbidden(format!(
                "your token is narrowed to {:?} and cannot be exchanged for {connection:?}",
                identity.connections.clone().unwrap_or_default()
            )));
        }
        if !identity.in_any_group(&conn.allow_groups) {
            return Err(ExchangeError::Forbidden(format!(
                "{:?} is not in a group allowed to open {connection:?}, so it cannot hand it on",
                identity.subject
            )));
        }
        let left = identity
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        if left < Duration::from_secs(1) {
            return Err(ExchangeError::Forbidden("your token has expired".into()));
        }
        if ttl.is_zero() || ttl > self.tokens.max_ttl() {
            return Err(ExchangeError::Invalid(format!(
                "ttl {} must be between 1s and {} (auth.token_max_ttl)",
                humantime::format_duration(ttl),
                humantime::format_duration(self.tokens.max_ttl())
            )));
        }
        let ancestors = self.lineage.ancestors(&identity.token_id);
        if ancestors.len() >= MAX_EXCHANGE_DEPTH {
            return Err(ExchangeError::Forbidden(format!(
                "your token is already {} exchanges from the token it came from; exchange a token nearer the original",
                ancestors.len()
            )));
        }
        let issued = self
            .tokens
            .issue_with(&TokenRequest {
                subject: identity.subject.clone(),
                groups: identity.groups.clone(),
                ttl: ttl.min(left),
                connections: Some(vec![connection.to_string()]),
                parent_token_id: Some(identity.token_id.clone()),
                ancestor_token_ids: ancestors.clone(),
                // An IdP's alice stays that IdP's alice, not the gateway's.
                subject_issuer: Some(identity.issuer.clone()),
            })
            .map_err(|e| ExchangeError::Invalid(e.to_string()))?;
        let lineage: Vec<String> = std::iter::once(identity.token_id.clone())
            .chain(ancestors)
            .collect();
        self.lineage
            .record(&issued.token_id, &lineage, issued.expires_at);
        tracing::info!(message = "Token exchanged.", subject = %identity.subject, connection = %connection, parent = %identity.token_id, token_id = %issued.token_id);
        Ok(issued)
    }

    /// Checks access to a connection and durably records the session's start.
    pub async fn open_session(
        &self,
        identity: Identity,
        connection: &str,
        protocol: Protocol,
        client_addr: &str,
    ) -> Result<SessionHandle, Refusal> {
        let conn = SharedConnection::find(self.config(), connection).ok_or_else(|| {
            Refusal::Access(format!(
                "no connection named {connection:?} is available to you"
            ))
        })?;
        if conn.kind != ConnectionKind::of(protocol) {
            return Err(Refusal::Access(format!(
                "connection {connection:?} is a {} connection, not {protocol}",
                conn.kind
            )));
        }
        if !identity.may_open(connection) {
            return Err(Refusal::Access(format!(
                "this token was exchanged for {:?} only and cannot open {connection:?} (exchange your own token for it: sluice token exchange --connection {connection})",
                identity.connections.clone().unwrap_or_default()
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
            conn,
            self.pipeline.clone(),
            self.engine.clone(),
            self.store.clone(),
            self.masker.clone(),
            self.live.clone(),
        ))
    }

    /// Puts `tcp` under the listener contract (connection caps from
    /// `[listen]`, stop on drain). `name` names it in logs.
    pub fn listener(&self, tcp: tokio::net::TcpListener, name: &'static str) -> Listener {
        Listener::new(
            tcp,
            name,
            ListenerLimits::from_config(&self.config().listen),
            self.draining.subscribe(),
            self.pinned.clone(),
        )
    }

    /// Stops the pinned threads (`session_scheduling = "pinned"`), ending the
    /// sessions still on them; call after [`Self::drain`]. Blocks until the
    /// threads are gone.
    pub fn stop_pinned(&self) {
        if let Some(pinned) = &self.pinned {
            pinned.shutdown();
        }
    }

    /// Whether the gateway is draining (no new sessions).
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Graceful shutdown: listeners stop accepting and admission refuses;
    /// live sessions may finish for up to `grace`, then each is told to end
    /// ("the gateway is shutting down"), which its protocol tells its client
    /// and its session end records. Waits a few seconds more for those ends.
    pub async fn drain(&self, grace: Duration) -> DrainReport {
        const ENDING: Duration = Duration::from_secs(5);
        self.draining.send_replace(true);
        let mut report = DrainReport {
            live_at_start: self.live.len(),
            ..DrainReport::default()
        };
        tracing::info!(message = "Draining: new connections are refused; live sessions may finish.", live = report.live_at_start, grace = %humantime::format_duration(grace));
        if !self.live.wait_empty(grace).await {
            report.ended = self
                .live
                .terminate_where(|_| Some("the gateway is shutting down".to_string()));
            tracing::warn!(
                message = "Drain deadline reached: ending live sessions.",
                sessions = report.ended
            );
            if !self.live.wait_empty(ENDING).await {
                report.left = self.live.len();
            }
        }
        report
    }

    /// The one admission path every protocol and front uses: authentication
    /// (signature, issuer, revocation up the exchange chain, expiry), then
    /// the connection's kind, the token's narrowing and `allow_groups`, then
    /// the durable session start; refusals are logged and counted here.
    pub async fn admit(
        &self,
        credentials: &Credentials,
        connection: &str,
        protocol: Protocol,
        client_addr: &str,
    ) -> Result<SessionHandle, Refusal> {
        if self.is_draining() {
            let refusal =
                Refusal::Unavailable("the gateway is shutting down; retry shortly".into());
            crate::metrics::session_refused(protocol, &refusal);
            return Err(refusal);
        }
        let identity = match self.authenticate(credentials).await {
            Ok(identity) => identity,
            Err(e) => {
                tracing::warn!(message = "Authentication failed.", %protocol, client = %client_addr, user = %credentials.user, %connection, reason = %e);
                let refusal = Refusal::Authentication(e.to_string());
                crate::metrics::session_refused(protocol, &refusal);
                return Err(refusal);
            }
        };
        let subject = identity.subject.clone();
        match self
            .open_session(identity, connection, protocol, client_addr)
            .await
        {
            Ok(handle) if self.is_draining() => {
                // The drain began while this admission was under way: the
                // session ends here, recorded, rather than be cut at exit.
                handle.set_end_reason("the gateway is shutting down");
                drop(handle);
                let refusal =
                    Refusal::Unavailable("the gateway is shutting down; retry shortly".into());
                crate::metrics::session_refused(protocol, &refusal);
                Err(refusal)
            }
            Ok(handle) => {
                tracing::info!(message = "Session opened.", session = %handle.id(), %protocol, client = %client_addr, %subject, %connection);
                Ok(handle)
            }
            Err(refusal) => {
                tracing::warn!(message = "Session refused.", %protocol, client = %client_addr, %subject, %connection, reason = ?refusal);
                crate::metrics::session_refused(protocol, &refusal);
                Err(refusal)
            }
        }
    }

    /// Admission again, for a protocol that carries a credential on every
    /// request of a session it keeps (HTTP): the credential must still
    /// authenticate, be the very token that opened `handle`, and the session
    /// must not have been ended (revocation, expiry, an operator, a reload).
    pub async fn readmit(
        &self,
        handle: &SessionHandle,
        credentials: &Credentials,
    ) -> Result<(), Refusal> {
        let info = handle.info();
        let identity = self.authenticate(credentials).await.map_err(|e| {
            let refusal = Refusal::Authentication(e.to_string());
            crate::metrics::session_refused(info.protocol, &refusal);
            refusal
        })?;
        if identity.token_id != info.identity.token_id {
            return Err(Refusal::Access(
                "this session was opened with another token".into(),
            ));
        }
        match handle.end_reason_now() {
            Some(reason) => Err(Refusal::Access(format!("the session was ended: {reason}"))),
            None => Ok(()),
        }
    }

    /// Runs the security sequence for one client of a connection-per-session
    /// protocol, then hands the session to it.
    pub async fn serve<S: Session>(
        &self,
        mut session: S,
        protocol: Protocol,
        client_addr: &str,
    ) -> Result<(), SessionError> {
        // One deadline for the whole handshake: every attempt and its admission.
        let deadline = tokio::time::Instant::now() + session.handshake_timeout();
        let admitted = tokio::time::timeout_at(deadline, async {
            loop {
                let request = session.credentials().await?;
                match self
                    .admit(
                        &request.credentials,
                        &request.connection,
                        protocol,
                        client_addr,
                    )
                    .await
                {
                    Ok(handle) => return Ok::<_, SessionError>(Some((request, handle))),
                    Err(refusal) => match session.refuse(refusal).await? {
                        AfterRefusal::Close => return Ok(None),
                        AfterRefusal::Retry => continue,
                    },
                }
            }
        })
        .await
        .map_err(|_| SessionError::Client("handshake timed out".into()))?;
        let Some((request, handle)) = admitted? else {
            return Ok(());
        };
        let subject = &handle.info().identity.subject;
        let span = tracing::info_span!("session", id = %handle.id(), %subject, connection = %request.connection, %protocol);
        // The client's credentials are not kept for the session's life.
        drop(request);
        session.run(handle).instrument(span).await
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests;
