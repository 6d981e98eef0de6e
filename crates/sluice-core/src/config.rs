//! Gateway configuration: TOML with `SLUICE_<SECTION>__<KEY>` environment overrides
//! (figment), secrets only by reference, errors that name the file, key and line.

use crate::model::{Action, Protocol};
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The text a configuration was parsed from (errors name its lines).
#[derive(Clone)]
struct ConfigSource {
    origin: String,
    text: String,
}

impl fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// State, store and audit durability.
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// Listener addresses; a protocol without an address is disabled.
    #[serde(default)]
    pub listen: ListenConfig,
    /// Listener certificate. Without it a self-signed one is generated into `state_dir`.
    pub tls: Option<TlsConfig>,
    /// How callers authenticate.
    #[serde(default)]
    pub auth: AuthConfig,
    /// The targets agents may open.
    #[serde(default)]
    pub connections: Vec<ConnectionConfig>,
    /// Guardrail rules, evaluated by the policy layer.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Tracing export.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Webhooks told about approval requests and decisions.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// Response masking: content detectors, styles and column rules (off by default).
    #[serde(default)]
    pub masking: crate::masking::MaskingConfig,
    /// Plugins loaded at run time through the C ABI (see docs/plugins.md).
    #[serde(default)]
    pub plugins: Vec<PluginConfig>,
    /// Where the configuration was read from, to locate later errors.
    #[serde(skip)]
    source: Option<std::sync::Arc<ConfigSource>>,
}

/// A plugin loaded at start (`[[plugins]]`): a shared library exporting the
/// Sluice plugin ABI. A plugin that does not load, has another ABI version or
/// refuses its `config` stops `config check` and `serve`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The shared library (`libfoo.so`); relative to the working directory.
    pub path: PathBuf,
    /// What it is used for; the library must declare that capability.
    pub kind: PluginKind,
    /// Handed to the plugin's `init` as one JSON object.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// The extension point a plugin serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginKind {
    /// Told about approval requests and decisions.
    Notifier,
    /// A masking detector: finds values to mask in result data.
    Detector,
    /// A policy hook: may deny a command before the rules see it.
    Policy,
    /// Receives every audit event once it is durable.
    AuditSink,
}

/// A webhook notified of approval requests and decisions (HMAC-signed JSON).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub name: String,
    /// `https://…` (or `http://` on loopback).
    pub url: String,
    /// HMAC-SHA256 key; the signature is sent as `X-Sluice-Signature: sha256=<hex>`.
    pub secret: Option<Secret>,
    /// `json` (default) or `slack` (a Slack-compatible `{"text": …}` message).
    #[serde(default)]
    pub format: WebhookFormat,
    /// Review rules it is told about; all when absent.
    pub rules: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    #[default]
    Json,
    Slack,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Directory for the embedded store, the signing key and generated certificates.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Shared store URL for several gateway nodes (`postgres://user@host:port/db`);
    /// the embedded SQLite store when absent (or `sqlite:PATH`).
    pub store: Option<String>,
    /// The shared store's password, by reference (never in the URL).
    pub store_password: Option<Secret>,
    /// CA certificates (PEM) that the shared store's TLS certificate must
    /// chain to; the public roots when absent. TLS is required for a store
    /// not on this host unless the URL sets `sslmode`.
    pub store_ca: Option<PathBuf>,
    /// This node's id in a shared store: unique per gateway process (default:
    /// the host name). It is in every session and record the node writes.
    pub node: Option<String>,
    /// Ended sessions' recordings in object storage (`s3://bucket/prefix`, any
    /// S3-compatible service); with a shared store.
    pub recordings: Option<String>,
    /// The S3-compatible endpoint (`https://…`, or `http://` for a local test
    /// server); AWS when absent (or `AWS_ENDPOINT`).
    pub recordings_endpoint: Option<String>,
    pub recordings_region: Option<String>,
    /// Object storage credentials, by reference; the standard `AWS_*`
    /// environment (or an instance role) when absent.
    pub recordings_access_key_id: Option<Secret>,
    pub recordings_secret_access_key: Option<Secret>,
    /// `normal`: audit records survive a gateway crash; `full`: they also survive
    /// a power loss (an fsync per batch).
    #[serde(default)]
    pub audit_sync: AuditSync,
    /// Plaintext PostgreSQL is accepted from non-loopback clients only when true
    /// (it is always warned about).
    #[serde(default = "default_true")]
    pub allow_plaintext: bool,
    /// Ed25519 key (PKCS#8 PEM) that signs audit checkpoints; keep it off
    /// the box (a mounted secret). Default: generated into `state_dir/keys`.
    pub checkpoint_key: Option<Secret>,
    /// How often the gateway publishes a signed checkpoint of the audit log
    /// (also on shutdown).
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: HumanDuration,
    /// Runtime threads that serve sessions; default: one per CPU. On a host
    /// the gateway shares with busy neighbours, fewer threads spend less CPU
    /// per statement (fewer cross-thread wake-ups; see docs/operations.md).
    pub worker_threads: Option<usize>,
    /// Where a connection's work runs: `pinned` (the default: each
    /// connection on one of `worker_threads` single-threaded runtimes, no
    /// cross-thread wake-ups within a session) or `shared` (one
    /// work-stealing runtime).
    #[serde(default)]
    pub session_scheduling: SessionScheduling,
}

/// See [`GatewayConfig::session_scheduling`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionScheduling {
    Shared,
    #[default]
    Pinned,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            state_dir: default_state_dir(),
            store: None,
            store_password: None,
            store_ca: None,
            node: None,
            recordings: None,
            recordings_endpoint: None,
            recordings_region: None,
            recordings_access_key_id: None,
            recordings_secret_access_key: None,
            audit_sync: AuditSync::default(),
            allow_plaintext: true,
            checkpoint_key: None,
            checkpoint_interval: default_checkpoint_interval(),
            worker_threads: None,
            session_scheduling: SessionScheduling::default(),
        }
    }
}

fn default_checkpoint_interval() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(300))
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(".sluice")
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditSync {
    #[default]
    Normal,
    Full,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// PostgreSQL listener, e.g. `127.0.0.1:15432`.
    pub postgres: Option<SocketAddr>,
    /// SSH listener.
    pub ssh: Option<SocketAddr>,
    /// HTTP and Kubernetes listener.
    pub http: Option<SocketAddr>,
    /// Operator API listener.
    pub api: Option<SocketAddr>,
    /// MCP listener (Streamable HTTP over HTTPS, endpoint `/mcp`): every
    /// connection the caller may open, as tools (`sluice-mcp`).
    #[serde(default)]
    pub mcp: Option<SocketAddr>,
    /// Listeners of contributed protocols, by kind name (`kv = "127.0.0.1:7000"`).
    #[serde(default)]
    pub protocols: std::collections::BTreeMap<String, SocketAddr>,
    /// Client connections each listener holds at once; more wait in the
    /// kernel's backlog until one closes.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Client connections one peer address may hold on a listener at once
    /// (0: no per-peer limit). Connections over it are closed at accept.
    #[serde(default)]
    pub max_connections_per_peer: usize,
    /// An HTTP client connection (keep-alive or HTTP/2) with no request in
    /// flight for this long is closed gracefully.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// On SIGTERM or Ctrl-C, how long live sessions may run on before the
    /// gateway ends them (each with its protocol's message, recorded).
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: HumanDuration,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            postgres: None,
            ssh: None,
            http: None,
            api: None,
            mcp: None,
            protocols: Default::default(),
            max_connections: default_max_connections(),
            max_connections_per_peer: 0,
            idle_timeout: default_idle_timeout(),
            drain_timeout: default_drain_timeout(),
        }
    }
}

fn default_max_connections() -> usize {
    4096
}

fn default_idle_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(120))
}

fn default_drain_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The longest TTL `sluice token issue` (and token exchange) may grant.
    #[serde(default = "default_max_ttl")]
    pub token_max_ttl: HumanDuration,
    /// OpenID Connect providers whose access tokens are accepted: one
    /// `[auth.oidc]` table or several `[[auth.oidc]]`.
    #[serde(default, deserialize_with = "one_or_many")]
    pub oidc: Vec<OidcProviderConfig>,
    /// IdP groups mapped to Sluice groups (used by allow_groups, rules and approvers).
    #[serde(default)]
    pub group_map: Vec<GroupMapConfig>,
    /// Groups allowed to end other people's sessions and revoke any token
    /// through the operator API (`sluice sessions kill`, `sluice token revoke`).
    #[serde(default)]
    pub admin_groups: Vec<String>,
    /// The Ed25519 key (PKCS#8 PEM) gateway tokens are signed with, by
    /// reference, so that several nodes sign and verify the same tokens.
    /// Absent: generated once into `state_dir/keys/token-signing.pem`.
    pub signing_key: Option<Secret>,
    /// More keys tokens may be signed with (public `PUBLIC KEY` PEMs, or
    /// private keys), accepted but never used to sign: the previous key
    /// during a rotation.
    #[serde(default)]
    pub verification_keys: Vec<Secret>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token_max_ttl: default_max_ttl(),
            oidc: Vec::new(),
            group_map: Vec::new(),
            admin_groups: Vec::new(),
            signing_key: None,
            verification_keys: Vec::new(),
        }
    }
}

/// One OpenID Connect provider (`[auth.oidc]` or an entry of `[[auth.oidc]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcProviderConfig {
    /// The issuer URL exactly as tokens carry it in `iss`; `https://`
    /// (`http://` only on loopback). Discovery reads
    /// `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// Accepted `aud` values (a string or a list); at least one must match.
    #[serde(deserialize_with = "string_or_list")]
    pub audience: Vec<String>,
    /// Claim holding the caller's groups; a dotted path reaches nested
    /// claims (`realm_access.roles`). Strings and arrays of strings are read.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Claim naming the caller (default `sub`; e.g. `email`, or `client_id`
    /// for machine clients).
    #[serde(default = "default_identity_claim")]
    pub identity_claim: String,
    /// Splits a groups claim that is one string (not an array) at this
    /// separator, e.g. `","` or `" "`; absent: one string is one group.
    pub groups_separator: Option<String>,
    /// Accept tokens WITHOUT `aud` when their `client_id` claim is one of
    /// these (AWS Cognito access tokens); empty (default): `aud` is required.
    #[serde(default, deserialize_with = "string_or_list")]
    pub accept_client_id: Vec<String>,
    /// Signature algorithms accepted from this provider (RS256, RS384, RS512,
    /// PS256, PS384, PS512, ES256, ES384, EdDSA); `none` and HMAC never are.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Ask the userinfo endpoint for the groups when a token lacks the claim.
    #[serde(default = "default_true")]
    pub userinfo_fallback: bool,
    /// Keep the IdP's group names as Sluice groups as well as the mapped ones.
    #[serde(default)]
    pub keep_idp_groups: bool,
    /// How long fetched signing keys are trusted (also while the IdP is unreachable).
    #[serde(default = "default_jwks_ttl")]
    pub jwks_ttl: HumanDuration,
    /// Clock skew tolerated on `exp`, `nbf` and `iat` (default 30s).
    #[serde(default = "default_clock_skew")]
    pub clock_skew: HumanDuration,
    /// OAuth client for `sluice login` (device flow, authorization code + PKCE).
    pub client_id: Option<String>,
    /// The client's secret, by reference (confidential clients only).
    pub client_secret: Option<Secret>,
    /// Scopes `sluice login` asks for (default `openid`).
    pub scopes: Option<Vec<String>>,
    /// Resource indicator (RFC 8707) `sluice login` asks tokens for, when the IdP needs one.
    pub resource: Option<String>,
    /// A CA bundle (PEM) that verifies the IdP's certificate; system roots when absent.
    pub ca: Option<PathBuf>,
}

/// `[[auth.group_map]]`: members of `idp_group` are in `groups`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupMapConfig {
    /// An IdP group name (`*` and `?` wildcards allowed).
    pub idp_group: String,
    /// The Sluice groups its members get.
    pub groups: Vec<String>,
    /// Only for tokens from this issuer; every provider when absent.
    pub issuer: Option<String>,
}

fn default_groups_claim() -> String {
    "groups".into()
}

fn default_identity_claim() -> String {
    "sub".into()
}

fn default_algorithms() -> Vec<String> {
    ["RS256", "PS256", "ES256", "EdDSA"]
        .map(String::from)
        .to_vec()
}

fn default_clock_skew() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

fn default_jwks_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
}

/// Algorithms an OIDC provider may be allowed (asymmetric signatures only).
pub const OIDC_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// Whether `url` is `http://` on a loopback host (allowed for local IdPs and tests).
pub fn is_loopback_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<OidcProviderConfig>, D::Error> {
    // One table or an array of tables; parsed from a value so that a mistake
    // in a provider table is reported with its field.
    let value = toml::Value::deserialize(d)?;
    match value {
        toml::Value::Array(items) => items
            .into_iter()
            .map(|v| OidcProviderConfig::deserialize(v).map_err(serde::de::Error::custom))
            .collect(),
        other => OidcProviderConfig::deserialize(other)
            .map(|p| vec![p])
            .map_err(serde::de::Error::custom),
    }
}

fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Repr::deserialize(d)? {
        Repr::One(s) => vec![s],
        Repr::Many(v) => v,
    })
}

fn default_max_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(8 * 3600))
}

/// What a connection is: the name of the protocol that serves it. Open like
/// [`Protocol`]: the built-in kinds are constants; a protocol crate's kind is
/// accepted when the gateway was assembled with it
/// (`GatewayBuilder::connection_kind`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConnectionKind(Protocol);

// Named like the enum variants they replace, so code using them keeps compiling.
#[allow(non_upper_case_globals)]
impl ConnectionKind {
    pub const Postgres: ConnectionKind = ConnectionKind(Protocol::Postgres);
    pub const Ssh: ConnectionKind = ConnectionKind(Protocol::Ssh);
    pub const Http: ConnectionKind = ConnectionKind(Protocol::Http);
    pub const Kubernetes: ConnectionKind = ConnectionKind(Protocol::Kubernetes);

    /// The kinds of the protocol crates in this workspace. Core checks no
    /// kind's own settings: the crate that serves a kind does, for these as
    /// for contributed ones (`GatewayBuilder::connection_kind`).
    pub const BUILT_IN: [ConnectionKind; 4] = [
        ConnectionKind::Postgres,
        ConnectionKind::Ssh,
        ConnectionKind::Http,
        ConnectionKind::Kubernetes,
    ];

    /// The kind served by `protocol`.
    pub const fn of(protocol: Protocol) -> ConnectionKind {
        ConnectionKind(protocol)
    }

    /// The protocol that serves this kind.
    pub fn protocol(self) -> Protocol {
        self.0
    }

    pub fn as_str(self) -> &'static str {
        self.0.as_str()
    }

    pub fn is_built_in(self) -> bool {
        ConnectionKind::BUILT_IN.contains(&self)
    }
}

impl fmt::Display for ConnectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for ConnectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// How the gateway secures its own leg to the upstream (libpq's `sslmode` names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// A `[[connections]]` entry. Core reads the keys every kind has; the
/// kind's own keys (`database`, `host_key`, `bearer`, …) are `settings`,
/// read into a typed struct and validated by the protocol crate that serves
/// the kind (`GatewayBuilder::connection_kind`; e.g. `sluice_postgres::
/// PostgresSettings`), whose errors name the key and core the file and line.
#[derive(Debug, Clone, Deserialize)]
pub struct ConnectionConfig {
    /// The name clients select (PostgreSQL database name, SSH user, HTTP path prefix).
    pub name: String,
    pub kind: ConnectionKind,
    /// The target: `host:port`, or a URL for HTTP-based kinds.
    pub upstream: String,
    /// Groups that may open this connection; no entry means nobody.
    #[serde(default)]
    pub allow_groups: Vec<String>,
    /// The action when no rule matches a command (default `allow`).
    pub default_action: Option<Action>,
    /// Settings of a contributed kind kept in their own table
    /// (`[connections.options]`), read by that kind's crate.
    #[serde(default)]
    pub options: toml::Table,
    /// Every other key of the entry: the kind's own settings.
    #[serde(flatten)]
    pub settings: toml::Table,
}

impl ConnectionConfig {
    /// The kind's own keys, for the crate that serves it: any key outside
    /// `known` is refused (naming it), so a misspelt key is an error.
    pub fn settings_for(&self, known: &[&str]) -> Result<KindSettings<'_>, (String, String)> {
        if let Some(unknown) = self.settings.keys().find(|k| !known.contains(&k.as_str())) {
            return Err((
                unknown.clone(),
                format!(
                    "unknown key for a {} connection; it takes {}",
                    self.kind,
                    known.join(", ")
                ),
            ));
        }
        Ok(self.kind_settings())
    }

    /// The kind's own keys, unchecked: for a connection its kind's
    /// validator already accepted (at start and on every reload).
    pub fn kind_settings(&self) -> KindSettings<'_> {
        KindSettings {
            table: &self.settings,
        }
    }

    /// Checks that `upstream` is `host:port`, for kinds that dial TCP.
    pub fn require_host_port(&self) -> Result<(), (String, String)> {
        let port_ok = self
            .upstream
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if port_ok {
            return Ok(());
        }
        Err((
            "upstream".into(),
            format!(
                "the upstream of a {} connection is host:port, not {:?}",
                self.kind, self.upstream
            ),
        ))
    }

    /// Every secret reference among the connection's settings and options
    /// (`{ env = … }` or `{ file = … }`, at any depth), for checks that
    /// they can be read.
    pub fn secret_references(&self) -> Vec<Secret> {
        fn walk(value: &toml::Value, found: &mut Vec<Secret>) {
            match value {
                toml::Value::Table(t) => {
                    let reference = !t.is_empty()
                        && t.len() == 1
                        && t.keys().all(|k| k == "env" || k == "file");
                    match reference.then(|| value.clone().try_into::<Secret>()) {
                        Some(Ok(secret)) => found.push(secret),
                        _ => t.values().for_each(|v| walk(v, found)),
                    }
                }
                toml::Value::Array(a) => a.iter().for_each(|v| walk(v, found)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        for value in self.settings.values().chain(self.options.values()) {
            walk(value, &mut found);
        }
        found
    }
}

/// A connection's own keys (see [`ConnectionConfig::settings_for`]).
#[derive(Debug, Clone, Copy)]
pub struct KindSettings<'a> {
    table: &'a toml::Table,
}

impl KindSettings<'_> {
    /// The value of `key`, typed; an error names the key.
    pub fn get<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, (String, String)> {
        self.table
            .get(key)
            .map(|v| {
                v.clone()
                    .try_into::<T>()
                    .map_err(|e| (key.to_string(), e.message().to_string()))
            })
            .transpose()
    }

    /// The value of `key`; its absence is an error saying the kind needs it.
    pub fn require<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        needed: &str,
    ) -> Result<T, (String, String)> {
        self.get(key)?
            .ok_or_else(|| (key.to_string(), needed.to_string()))
    }
}

/// `basic = { user = "…", password = { env = "…" } }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub user: String,
    pub password: Secret,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    /// Connections the rule applies to; all when absent.
    pub connections: Option<Vec<String>>,
    /// Groups the rule applies to; everyone when absent.
    pub groups: Option<Vec<String>>,
    /// Subjects the rule applies to; everyone when absent.
    pub subjects: Option<Vec<String>>,
    /// Match keys contributed by protocols (see the policy module); empty matches every command.
    #[serde(rename = "match", default)]
    pub match_: toml::Table,
    pub action: Action,
    /// Told to the caller when the rule decides.
    pub message: Option<String>,
    /// Groups that may approve (review rules).
    #[serde(default)]
    pub approvers: Vec<String>,
    pub timeout: Option<HumanDuration>,
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP collector endpoint, e.g. `http://127.0.0.1:4318`. Export is off when absent.
    pub otlp_endpoint: Option<String>,
    /// `http/protobuf` (default) or `grpc`.
    pub otlp_protocol: Option<String>,
    /// `service.name` resource attribute (default `sluice`).
    pub service_name: Option<String>,
    /// Fraction of sessions traced, 0.0–1.0 (default 1.0).
    pub sampling_ratio: Option<f64>,
    /// How often metrics are exported, e.g. `30s` (default 60s).
    pub export_interval: Option<HumanDuration>,
}

/// A duration written the human way: `10m`, `1h 30m`, `45s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }
}

/// A reference to a secret held outside the config file. Its value is read only
/// when needed and never printed.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Env(String),
    File(PathBuf),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Env(name) => write!(f, "Secret(env {name})"),
            Secret::File(path) => write!(f, "Secret(file {})", path.display()),
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Reference {
            env: Option<String>,
            file: Option<PathBuf>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            // Only its presence matters: inline values are refused.
            Inline(#[allow(dead_code)] String),
            Reference(Reference),
        }
        const HOW: &str = "secrets are references: { env = \"VAR\" } or { file = \"/path\" }";
        match Repr::deserialize(d).map_err(|_| serde::de::Error::custom(HOW))? {
            Repr::Inline(_) => Err(serde::de::Error::custom(format!(
                "inline secrets are not allowed; {HOW}"
            ))),
            Repr::Reference(Reference {
                env: Some(v),
                file: None,
            }) => Ok(Secret::Env(v)),
            Repr::Reference(Reference {
                env: None,
                file: Some(p),
            }) => Ok(Secret::File(p)),
            Repr::Reference(_) => Err(serde::de::Error::custom(format!(
                "give exactly one of env or file; {HOW}"
            ))),
        }
    }
}

impl Secret {
    /// Reads the secret. The error names where it was looked for, never its value.
    pub fn resolve(&self) -> Result<String, ConfigError> {
        match self {
            Secret::Env(name) => std::env::var(name).map_err(|_| ConfigError::Secret {
                reference: format!("environment variable {name}"),
                reason: "not set".into(),
            }),
            Secret::File(path) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| ConfigError::Secret {
                    reference: format!("file {}", path.display()),
                    reason: e.kind().to_string(),
                }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}{line}: {key}: {message}", line = line.map(|l| format!(":{l}")).unwrap_or_default(), key = if key.is_empty() { "(top level)" } else { key.as_str() })]
    Invalid {
        file: String,
        key: String,
        line: Option<usize>,
        message: String,
    },
    #[error("cannot read secret from {reference}: {reason}")]
    Secret { reference: String, reason: String },
}

impl GatewayConfig {
    /// Whether `store` names a shared PostgreSQL store.
    pub fn shared_store(&self) -> Option<&str> {
        self.store
            .as_deref()
            .filter(|s| s.starts_with("postgres://") || s.starts_with("postgresql://"))
    }

    /// This node's id: `node`, or the host name.
    pub fn node_id(&self) -> String {
        self.node.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "sluice".into())
        })
    }
}

impl Config {
    /// Loads `path` (TOML), then applies `SLUICE_<SECTION>__<KEY>` overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
            file: file.clone(),
            key: String::new(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        Self::from_toml_str(&text, &file)
    }

    /// Parses configuration text; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        // SLUICE_CONFIG and SLUICE_LOG are CLI settings, not config keys: only
        // sectioned variables (with `__`) are overrides.
        let env = Env::prefixed("SLUICE_")
            .filter(|k| k.as_str().contains("__"))
            .split("__");
        let config: Config = Figment::new()
            .merge(Toml::string(text))
            .merge(env)
            .extract()
            .map_err(|e| figment_error(e, text, origin))?;
        config.validate(text, origin)?;
        let mut config = config;
        config.source = Some(std::sync::Arc::new(ConfigSource {
            origin: origin.to_string(),
            text: text.to_string(),
        }));
        Ok(config)
    }

    /// An error about `key` (e.g. `connections.2.options.port`) of this
    /// configuration, naming its file and line when it was read from text.
    pub fn error_at(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self
                .source
                .as_ref()
                .map_or_else(String::new, |s| s.origin.clone()),
            line: self.source.as_ref().and_then(|s| locate_key(&s.text, key)),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// Checks what serde cannot: references between sections. Each kind's
    /// own keys are checked by the crate that serves it.
    fn validate(&self, text: &str, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            file: origin.to_string(),
            line: locate_key(text, &key),
            key,
            message,
        };
        self.validate_auth()
            .map_err(|(key, message)| invalid(key, message))?;
        self.validate_store()
            .map_err(|(key, message)| invalid(key.into(), message))?;
        if let Err(e) = self.masking.validate() {
            return Err(invalid(e.key.clone(), e.message.clone()));
        }
        if self.gateway.worker_threads == Some(0) {
            return Err(invalid(
                "gateway.worker_threads".into(),
                "must be at least 1 (omit it for one per CPU)".into(),
            ));
        }
        if self.listen.max_connections == 0 {
            return Err(invalid(
                "listen.max_connections".into(),
                "must be at least 1".into(),
            ));
        }
        let mut names = HashSet::new();
        for (i, c) in self.connections.iter().enumerate() {
            let key = |field: &str| format!("connections.{i}.{field}");
            if c.name.is_empty()
                || !c
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
            {
                return Err(invalid(
                    key("name"),
                    format!(
                        "{:?} is not a valid connection name (letters, digits, - and _)",
                        c.name
                    ),
                ));
            }
            if !names.insert(c.name.as_str()) {
                return Err(invalid(
                    key("name"),
                    format!("duplicate connection name {:?}", c.name),
                ));
            }
            if c.kind.is_built_in() && !c.options.is_empty() {
                return Err(invalid(
                    key("options"),
                    format!("`options` holds the settings of contributed connection kinds; a {} connection takes its keys directly", c.kind),
                ));
            }
            if c.default_action == Some(Action::Review) {
                return Err(invalid(
                    key("default_action"),
                    "review needs a rule with approvers; use allow or deny".into(),
                ));
            }
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            let loopback = ["http://127.", "http://localhost", "http://[::1]"]
                .iter()
                .any(|p| w.url.starts_with(p));
            if !w.url.starts_with("https://") && !loopback {
                return Err(invalid(
                    format!("webhooks.{i}.url"),
                    "webhooks must use https:// (http:// only on loopback)".into(),
                ));
            }
            for rule in w.rules.iter().flatten() {
                if !self.rules.iter().any(|r| &r.name == rule) {
                    return Err(invalid(
                        format!("webhooks.{i}.rules"),
                        format!("webhook {:?} names unknown rule {rule:?}", w.name),
                    ));
                }
            }
        }
        for (i, r) in self.rules.iter().enumerate() {
            if let Some(conns) = &r.connections {
                for name in conns {
                    if !names.contains(name.as_str()) {
                        return Err(invalid(
                            format!("rules.{i}.connections"),
                            format!("rule {:?} names unknown connection {name:?}", r.name),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// `[auth]`: providers (issuer scheme, audience, algorithms, claim paths) and group maps.
    fn validate_store(&self) -> Result<(), (&'static str, String)> {
        let g = &self.gateway;
        match g.store.as_deref() {
            None => {}
            Some(s) if s.starts_with("sqlite:") => {}
            Some(_) if g.shared_store().is_some() => {}
            Some(_) => {
                return Err((
                    "gateway.store",
                    "a store is postgres://user@host:port/db (shared by several nodes), or sqlite:PATH (omit the key for the embedded store in state_dir)".into(),
                ))
            }
        }
        if g.checkpoint_key.is_some() && g.shared_store().is_some() {
            return Err((
                "gateway.checkpoint_key",
                "signed checkpoints cover the embedded store's journal; a shared store has none (its chains are checked by audit verify, and by their recordings in object storage)".into(),
            ));
        }
        if g.store_password.is_some() && g.shared_store().is_none() {
            return Err((
                "gateway.store_password",
                "only a postgres:// store takes a password".into(),
            ));
        }
        if let Some(url) = &g.recordings {
            if !url.starts_with("s3://") || url.len() <= "s3://".len() {
                return Err((
                    "gateway.recordings",
                    "recordings is s3://bucket/prefix".into(),
                ));
            }
            if g.shared_store().is_none() {
                return Err((
                    "gateway.recordings",
                    "recordings in object storage go with a shared store (gateway.store = \"postgres://…\"); the embedded store keeps them in state_dir".into(),
                ));
            }
        }
        if let Some(node) = &g.node {
            let valid = !node.is_empty()
                && node.len() <= 64
                && node
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !valid {
                return Err((
                    "gateway.node",
                    "a node id is 1 to 64 letters, digits, '.', '_' or '-'".into(),
                ));
            }
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), (String, String)> {
        let many = self.auth.oidc.len() > 1;
        let mut issuers = HashSet::new();
        for (i, p) in self.auth.oidc.iter().enumerate() {
            let key = |field: &str| {
                if many {
                    format!("auth.oidc.{i}.{field}")
                } else {
                    format!("auth.oidc.{field}")
                }
            };
            if !p.issuer.starts_with("https://") && !is_loopback_http(&p.issuer) {
                return Err((
                    key("issuer"),
                    format!(
                        "{:?}: an issuer must be an https:// URL (http:// only on loopback)",
                        p.issuer
                    ),
                ));
            }
            if !issuers.insert(p.issuer.trim_end_matches('/')) {
                return Err((key("issuer"), format!("duplicate issuer {:?}", p.issuer)));
            }
            if p.audience.is_empty() || p.audience.iter().any(|a| a.trim().is_empty()) {
                return Err((
                    key("audience"),
                    "give the audience (aud) Sluice's tokens carry, e.g. audience = \"sluice\""
                        .into(),
                ));
            }
            if p.algorithms.is_empty() {
                return Err((key("algorithms"), "allow at least one algorithm".into()));
            }
            for alg in &p.algorithms {
                if !OIDC_ALGORITHMS.contains(&alg.as_str()) {
                    return Err((
                        key("algorithms"),
                        format!(
                            "{alg:?} is not allowed (only asymmetric signatures: {})",
                            OIDC_ALGORITHMS.join(", ")
                        ),
                    ));
                }
            }
            for (field, path) in [
                ("groups_claim", &p.groups_claim),
                ("identity_claim", &p.identity_claim),
            ] {
                if path.is_empty() || path.split('.').any(str::is_empty) {
                    return Err((
                        key(field),
                        format!("{path:?} is not a claim path (names joined by dots)"),
                    ));
                }
            }
            if p.clock_skew.0 > Duration::from_secs(300) {
                return Err((key("clock_skew"), "at most 5m".into()));
            }
            if p.jwks_ttl.0.is_zero() {
                return Err((key("jwks_ttl"), "must be longer than zero".into()));
            }
        }
        for (i, m) in self.auth.group_map.iter().enumerate() {
            if m.idp_group.trim().is_empty() {
                return Err((
                    format!("auth.group_map.{i}.idp_group"),
                    "name the IdP group".into(),
                ));
            }
            if m.groups.is_empty() || m.groups.iter().any(|g| g.trim().is_empty()) {
                return Err((
                    format!("auth.group_map.{i}.groups"),
                    "list the Sluice groups its members get".into(),
                ));
            }
            if let Some(issuer) = &m.issuer {
                let known = self
                    .auth
                    .oidc
                    .iter()
                    .any(|p| p.issuer.trim_end_matches('/') == issuer.trim_end_matches('/'));
                if !known {
                    return Err((
                        format!("auth.group_map.{i}.issuer"),
                        format!("{issuer:?} is not a configured [auth.oidc] issuer"),
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn connection(&self, name: &str) -> Option<&ConnectionConfig> {
        self.connections.iter().find(|c| c.name == name)
    }
}

/// One connection of a configuration, shared rather than copied: a session
/// keeps the configuration it was admitted under alive (a reload does not
/// change a running session's connection) and costs one pointer, where a copy
/// of the connection's tables cost every session a few KiB.
#[derive(Clone)]
pub struct SharedConnection {
    config: std::sync::Arc<Config>,
    index: usize,
}

impl SharedConnection {
    /// The connection named `name` in `config`.
    pub fn find(config: std::sync::Arc<Config>, name: &str) -> Option<Self> {
        let index = config.connections.iter().position(|c| c.name == name)?;
        Some(SharedConnection { config, index })
    }
}

impl std::ops::Deref for SharedConnection {
    type Target = ConnectionConfig;

    fn deref(&self) -> &ConnectionConfig {
        // `index` was found in this very (immutable) configuration.
        &self.config.connections[self.index]
    }
}

impl fmt::Debug for SharedConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

fn figment_error(e: figment::Error, text: &str, origin: &str) -> ConfigError {
    let key = e.path.join(".");
    let mut message = e.kind.to_string();
    // figment reports TOML syntax errors with the parser's message, which
    // already names the line; keep it whole.
    if let figment::error::Kind::Message(m) = &e.kind {
        message = m.clone();
    }
    let from_env = e
        .metadata
        .as_ref()
        .map(|m| m.name.contains("environment"))
        .unwrap_or(false);
    ConfigError::Invalid {
        file: if from_env {
            "environment (SLUICE_*)".into()
        } else {
            origin.to_string()
        },
        line: if from_env {
            None
        } else {
            locate_key(text, &key)
        },
        key,
        message,
    }
}

/// Finds the 1-based line that sets a dotted key such as `connections.1.password`,
/// walking `[section]` and `[[array]]` headers the way TOML reads them.
pub fn locate_key(text: &str, key: &str) -> Option<usize> {
    let parts: Vec<&str> = key.split('.').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return None;
    }
    // Split the key into the table path (with array indexes) and the leaf.
    let mut header_path = Vec::new();
    let mut index = None;
    let mut leaf_at = parts.len() - 1;
    for (i, p) in parts.iter().enumerate() {
        if let Ok(n) = p.parse::<usize>() {
            index = Some(n);
            leaf_at = i + 1;
            break;
        }
        header_path.push(*p);
    }
    let (table, leaf) = if index.is_some() {
        (header_path.join("."), parts.get(leaf_at).copied())
    } else if parts.len() == 1 {
        (String::new(), Some(parts[0]))
    } else {
        (parts[..parts.len() - 1].join("."), parts.last().copied())
    };
    let mut seen = 0usize;
    let mut in_target = table.is_empty();
    let mut header_line = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(h) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
            let current = h.trim();
            in_target = false;
            if current == table {
                if Some(seen) == index {
                    in_target = true;
                    header_line = Some(n + 1);
                }
                seen += 1;
            }
            continue;
        }
        if let Some(h) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            // A sub-table of the element (`[connections.options]`) is the leaf itself.
            if in_target
                && index.is_some()
                && leaf.is_some_and(|l| h.trim() == format!("{table}.{l}"))
            {
                return Some(n + 1);
            }
            in_target = index.is_none() && h.trim() == table;
            if in_target {
                header_line = Some(n + 1);
            }
            continue;
        }
        if in_target {
            if let Some(leaf) = leaf {
                let k = line.split('=').next().unwrap_or("").trim();
                if k == leaf || k.trim_matches('"') == leaf {
                    return Some(n + 1);
                }
            }
        }
    }
    header_line
}

#[cfg(test)]
mod tests;
