//! The own keys of HTTP-based connections (`kind = "http"`, and the kinds
//! built on this crate: `kubernetes`, `mcp`), read and checked here.
//!
//! ```toml
//! [[connections]]
//! name = "crm"
//! kind = "http"
//! upstream = "https://crm.internal:8443/api"
//! bearer = { env = "CRM_TOKEN" }       # or basic = { user, password }, or headers
//! headers = { X-Tenant = { env = "CRM_TENANT" } }
//! hosts = ["crm.gateway.example"]      # routed by Host besides /crm/
//! timeout = "30s"                      # one upstream exchange; default 60s
//! ca = { file = "/etc/sluice/crm-ca.pem" }
//! ```

use sluice_core::config::{
    BasicAuth, ConnectionConfig, ConnectionKind, HumanDuration, KindSettings, Secret, UpstreamTls,
};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The kind this crate serves.
pub const KIND: ConnectionKind = ConnectionKind::Http;

/// The keys of a `kind = "http"` connection.
pub const HTTP_KEYS: &[&str] = &[
    "headers",
    "bearer",
    "basic",
    "ca",
    "upstream_tls",
    "upstream_ca",
    "hosts",
    "timeout",
];

/// The settings an HTTP-based connection may have; a kind reads the keys it
/// takes (`HttpSettings::read`), the others stay empty.
#[derive(Debug, Clone, Default)]
pub struct HttpSettings {
    /// Headers injected into every upstream request (values by reference).
    pub headers: BTreeMap<String, Secret>,
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
    /// How the upstream's certificate is verified (see `upstream::default_tls`).
    pub upstream_tls: UpstreamTls,
    /// CA bundle path, the older spelling of `ca = { file = … }`.
    pub upstream_ca: Option<PathBuf>,
    /// Host names routed to this connection (besides the `/<connection>/` path prefix).
    pub hosts: Vec<String>,
    /// Upper bound for one upstream request/response exchange.
    pub timeout: Option<HumanDuration>,
}

impl HttpSettings {
    /// Reads the keys of `known` (any other key is an error naming it).
    pub fn read(c: &ConnectionConfig, known: &[&str]) -> Result<HttpSettings, (String, String)> {
        HttpSettings::from_keys(c.settings_for(known)?)
    }

    /// The settings of a connection the gateway already checked (its kind's
    /// validator ran at start and on reload); unknown keys are not re-judged.
    pub fn of(c: &ConnectionConfig) -> Result<HttpSettings, (String, String)> {
        HttpSettings::from_keys(c.kind_settings())
    }

    fn from_keys(s: KindSettings<'_>) -> Result<HttpSettings, (String, String)> {
        Ok(HttpSettings {
            headers: s.get("headers")?.unwrap_or_default(),
            bearer: s.get("bearer")?,
            basic: s.get("basic")?,
            token: s.get("token")?,
            client_cert: s.get("client_cert")?,
            client_key: s.get("client_key")?,
            ca: s.get("ca")?,
            upstream_tls: s.get("upstream_tls")?.unwrap_or_default(),
            upstream_ca: s.get("upstream_ca")?,
            hosts: s.get("hosts")?.unwrap_or_default(),
            timeout: s.get("timeout")?,
        })
    }

    /// How many of bearer, basic and an `Authorization` header are set.
    pub fn authorization_schemes(&self) -> usize {
        let header = self
            .headers
            .keys()
            .any(|h| h.eq_ignore_ascii_case("authorization"));
        [header, self.bearer.is_some(), self.basic.is_some()]
            .iter()
            .filter(|b| **b)
            .count()
    }

    /// The checks every HTTP-based kind shares: the upstream URL, TLS mode,
    /// one Authorization scheme, injectable header names, host names.
    pub fn check(&self, c: &ConnectionConfig) -> Result<(), (String, String)> {
        if !(c.upstream.starts_with("http://") || c.upstream.starts_with("https://")) {
            return Err((
                "upstream".into(),
                format!(
                    "a {} connection's upstream is a URL (https://host:port)",
                    c.kind
                ),
            ));
        }
        if c.upstream.contains(['?', '#']) {
            return Err((
                "upstream".into(),
                "an upstream URL has no query or fragment".into(),
            ));
        }
        if c.upstream.starts_with("https://") && self.upstream_tls == UpstreamTls::Disable {
            return Err((
                "upstream_tls".into(),
                "\"disable\" contradicts an https:// upstream; use an http:// URL for plaintext"
                    .into(),
            ));
        }
        if self.authorization_schemes() > 1 {
            return Err((
                "bearer".into(),
                "give one of bearer, basic or an Authorization header: each sets Authorization"
                    .into(),
            ));
        }
        for name in self.headers.keys() {
            check_header_name(name).map_err(|m| ("headers".to_string(), m))?;
        }
        for host in &self.hosts {
            if host.is_empty() || host.contains(['/', ':', ' ']) {
                return Err((
                    "hosts".into(),
                    format!("{host:?} is not a host name (no scheme, port or path; `*` allowed)"),
                ));
            }
        }
        Ok(())
    }
}

/// A header the gateway may inject: a token, and not one it manages.
fn check_header_name(name: &str) -> Result<(), String> {
    let token = |ch: char| ch.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(ch);
    if name.is_empty() || !name.chars().all(token) {
        return Err(format!("{name:?} is not an HTTP header name"));
    }
    const MANAGED: [&str; 5] = [
        "host",
        "connection",
        "transfer-encoding",
        "content-length",
        "upgrade",
    ];
    if MANAGED.iter().any(|h| name.eq_ignore_ascii_case(h)) {
        return Err(format!(
            "{name:?} is managed by the gateway and cannot be injected"
        ));
    }
    Ok(())
}

/// Checks an `http` connection (`GatewayBuilder::connection_kind`).
pub fn validate(c: &ConnectionConfig) -> Result<(), (String, String)> {
    HttpSettings::read(c, HTTP_KEYS)?.check(c)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn connection(upstream: &str, keys: &str) -> ConnectionConfig {
        let text = format!(
            "[[connections]]\nname = \"crm\"\nkind = \"http\"\nupstream = {upstream:?}\n{keys}\n"
        );
        sluice_core::Config::from_toml_str(&text, "t.toml")
            .unwrap()
            .connections
            .remove(0)
    }

    #[test]
    fn settings_are_typed_and_errors_name_the_key() {
        let c = connection(
            "https://crm:8443",
            "bearer = { env = \"T\" }\nhosts = [\"crm.example\"]\ntimeout = \"5s\"",
        );
        validate(&c).unwrap();
        let s = HttpSettings::of(&c).unwrap();
        assert_eq!(s.hosts, ["crm.example"]);
        assert_eq!(s.timeout.unwrap().0, std::time::Duration::from_secs(5));
        let bad = |upstream: &str, keys: &str| validate(&connection(upstream, keys)).unwrap_err().0;
        assert_eq!(bad("crm:8443", ""), "upstream");
        assert_eq!(bad("https://crm?x=1", ""), "upstream");
        assert_eq!(
            bad("https://crm", "upstream_tls = \"disable\""),
            "upstream_tls"
        );
        assert_eq!(
            bad(
                "https://crm",
                "bearer = { env = \"T\" }\nbasic = { user = \"u\", password = { env = \"P\" } }"
            ),
            "bearer"
        );
        assert_eq!(
            bad("https://crm", "headers = { Host = { env = \"H\" } }"),
            "headers"
        );
        assert_eq!(bad("https://crm", "hosts = [\"crm:80\"]"), "hosts");
        assert_eq!(bad("https://crm", "timeout = \"soon\""), "timeout");
        // Another kind's key is a mistake here.
        assert_eq!(bad("https://crm", "token = { env = \"T\" }"), "token");
    }
}
