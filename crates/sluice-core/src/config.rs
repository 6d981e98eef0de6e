//! Gateway configuration: TOML with `SLUICE_<SECTION>__<KEY>` environment overrides
//! (figment), secrets only by reference, errors that name the file, key and line.

use crate::model::Action;
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// Shared store URL for several gateway nodes; the embedded SQLite store when absent.
    pub store: Option<String>,
    /// `normal`: audit records survive a gateway crash; `full`: they also survive
    /// a power loss (an fsync per batch).
    #[serde(default)]
    pub audit_sync: AuditSync,
    /// Plaintext PostgreSQL is accepted from non-loopback clients only when true
    /// (it is always warned about).
    #[serde(default = "default_true")]
    pub allow_plaintext: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            state_dir: default_state_dir(),
            store: None,
            audit_sync: AuditSync::default(),
            allow_plaintext: true,
        }
    }
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

#[derive(Debug, Clone, Default, Deserialize)]
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
    /// The longest TTL `sluice token issue` may grant.
    #[serde(default = "default_max_ttl")]
    pub token_max_ttl: HumanDuration,
    /// OpenID Connect providers (not available in this build).
    pub oidc: Option<toml::Value>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token_max_ttl: default_max_ttl(),
            oidc: None,
        }
    }
}

fn default_max_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(8 * 3600))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionKind {
    Postgres,
    Ssh,
    Http,
    Kubernetes,
}

impl fmt::Display for ConnectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectionKind::Postgres => "postgres",
            ConnectionKind::Ssh => "ssh",
            ConnectionKind::Http => "http",
            ConnectionKind::Kubernetes => "kubernetes",
        })
    }
}

/// How the gateway secures its own leg to the upstream (libpq's `sslmode` names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// The name clients select (PostgreSQL database name, SSH user, HTTP path prefix).
    pub name: String,
    pub kind: ConnectionKind,
    /// `host:port` of the target.
    pub upstream: String,
    /// PostgreSQL database on the upstream.
    pub database: Option<String>,
    /// The gateway-held account on the upstream.
    pub user: Option<String>,
    /// The gateway-held secret; never inline.
    pub password: Option<Secret>,
    /// Groups that may open this connection; no entry means nobody.
    #[serde(default)]
    pub allow_groups: Vec<String>,
    /// TLS to the upstream: disable | prefer | require | verify-ca | verify-full.
    #[serde(default)]
    pub upstream_tls: UpstreamTls,
    /// CA bundle (PEM) for verify-ca / verify-full; the system roots when absent.
    pub upstream_ca: Option<PathBuf>,
    /// The action when no rule matches a command (default `allow`).
    pub default_action: Option<Action>,

    // --- SSH ---
    /// Private key (OpenSSH or PEM) the gateway logs in to the SSH upstream with.
    pub private_key: Option<Secret>,
    /// The upstream's pinned host public key, as in `known_hosts`
    /// (`ssh-ed25519 AAAA…`); a mismatch refuses the session.
    pub host_key: Option<String>,

    // --- HTTP and Kubernetes ---
    /// Headers injected into every upstream request (values by reference).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, Secret>,
    /// `Authorization: Bearer …` injected into upstream requests.
    pub bearer: Option<Secret>,
    /// `Authorization: Basic …` injected into upstream requests.
    pub basic: Option<BasicAuth>,
    /// Kubernetes service-account (or other) bearer token for the API server.
    pub token: Option<Secret>,
    /// Client certificate (PEM) presented to the upstream (Kubernetes mTLS).
    pub client_cert: Option<Secret>,
    /// The client certificate's private key (PEM).
    pub client_key: Option<Secret>,
    /// CA bundle (PEM) that verifies the upstream's certificate, by reference.
    pub ca: Option<Secret>,
    /// Host names routed to this connection (besides the `/<connection>/` path prefix).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Upper bound for one upstream request/response exchange (HTTP); default 60s.
    pub timeout: Option<HumanDuration>,
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
        Ok(config)
    }

    /// Checks what serde cannot: references between sections and required fields per kind.
    fn validate(&self, text: &str, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            file: origin.to_string(),
            line: locate_key(text, &key),
            key,
            message,
        };
        if self.auth.oidc.is_some() {
            return Err(invalid(
                "auth.oidc".into(),
                "OIDC providers are not available in this build yet; use gateway-issued tokens (sluice token issue)".into(),
            ));
        }
        if let Some(store) = &self.gateway.store {
            if !store.starts_with("sqlite:") {
                return Err(invalid(
                    "gateway.store".into(),
                    "only the embedded SQLite store (omit the key, or sqlite:PATH) is available in this build".into(),
                ));
            }
        }
        if let Err(e) = self.masking.validate() {
            return Err(invalid(e.key.clone(), e.message.clone()));
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
            match c.kind {
                ConnectionKind::Postgres => {
                    for (field, present) in [
                        ("database", c.database.is_some()),
                        ("user", c.user.is_some()),
                        ("password", c.password.is_some()),
                    ] {
                        if !present {
                            return Err(invalid(
                                key(field),
                                format!("a postgres connection needs `{field}`"),
                            ));
                        }
                    }
                }
                ConnectionKind::Ssh => {
                    if c.user.is_none() {
                        return Err(invalid(
                            key("user"),
                            "an ssh connection needs `user` (the account on the host)".into(),
                        ));
                    }
                    if c.password.is_none() && c.private_key.is_none() {
                        return Err(invalid(
                            key("private_key"),
                            "an ssh connection needs `private_key` or `password`".into(),
                        ));
                    }
                    if c.host_key.is_none() {
                        return Err(invalid(
                            key("host_key"),
                            "an ssh connection needs the upstream's pinned `host_key` (a known_hosts line such as \"ssh-ed25519 AAAA…\")".into(),
                        ));
                    }
                }
                ConnectionKind::Http | ConnectionKind::Kubernetes => {
                    if !(c.upstream.starts_with("http://") || c.upstream.starts_with("https://")) {
                        return Err(invalid(
                            key("upstream"),
                            format!(
                                "a {} connection's upstream is a URL (https://host:port)",
                                c.kind
                            ),
                        ));
                    }
                }
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

    pub fn connection(&self, name: &str) -> Option<&ConnectionConfig> {
        self.connections.iter().find(|c| c.name == name)
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
