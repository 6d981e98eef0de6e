//! A `kind = "kubernetes"` connection's own keys: those of an HTTP
//! connection (sluice-http's `HttpSettings`) plus the API server's
//! credential, `token` or `client_cert` + `client_key`.

use sluice_core::config::{ConnectionConfig, ConnectionKind};
use sluice_http::settings::HttpSettings;

/// The kind this crate serves.
pub const KIND: ConnectionKind = ConnectionKind::Kubernetes;

/// The keys of a `kind = "kubernetes"` connection: an HTTP connection's
/// (`HTTP_KEYS`) and the API server credential.
pub const KEYS: &[&str] = &[
    "headers",
    "bearer",
    "basic",
    "ca",
    "upstream_tls",
    "upstream_ca",
    "hosts",
    "timeout",
    "token",
    "client_cert",
    "client_key",
];

/// A checked connection's settings.
pub fn settings(c: &ConnectionConfig) -> Result<HttpSettings, String> {
    HttpSettings::of(c).map_err(|(key, message)| format!("{key}: {message}"))
}

/// Checks a `kubernetes` connection (`GatewayBuilder::connection_kind`).
pub fn validate(c: &ConnectionConfig) -> Result<(), (String, String)> {
    let s = HttpSettings::read(c, KEYS)?;
    s.check(c)?;
    if s.client_cert.is_some() != s.client_key.is_some() {
        let missing = if s.client_cert.is_some() {
            "client_key"
        } else {
            "client_cert"
        };
        return Err((
            missing.into(),
            "client_cert and client_key go together".into(),
        ));
    }
    if s.token.is_some() && s.authorization_schemes() > 0 {
        return Err((
            "token".into(),
            "give token or bearer, basic or an Authorization header: each sets Authorization"
                .into(),
        ));
    }
    if s.token.is_none() && s.client_cert.is_none() && s.bearer.is_none() {
        return Err((
            "token".into(),
            "a kubernetes connection needs the API server credential: `token = { env = \"…\" }` or `client_cert` and `client_key`".into(),
        ));
    }
    if s.client_cert.is_some() && !c.upstream.starts_with("https://") {
        return Err((
            "client_cert".into(),
            "a client certificate needs an https:// upstream".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn connection(upstream: &str, keys: &str) -> ConnectionConfig {
        let text = format!(
            "[[connections]]\nname = \"k\"\nkind = \"kubernetes\"\nupstream = {upstream:?}\n{keys}\n"
        );
        sluice_core::Config::from_toml_str(&text, "t.toml")
            .unwrap()
            .connections
            .remove(0)
    }

    #[test]
    fn the_api_server_credential_is_checked() {
        validate(&connection("https://k:6443", "token = { env = \"T\" }")).unwrap();
        let bad = |upstream: &str, keys: &str| validate(&connection(upstream, keys)).unwrap_err().0;
        assert_eq!(bad("https://k:6443", ""), "token");
        assert_eq!(
            bad("https://k:6443", "client_cert = { env = \"C\" }"),
            "client_key"
        );
        assert_eq!(
            bad(
                "http://k:6443",
                "client_cert = { env = \"C\" }\nclient_key = { env = \"K\" }"
            ),
            "client_cert"
        );
        assert_eq!(
            bad(
                "https://k:6443",
                "token = { env = \"T\" }\nbearer = { env = \"B\" }"
            ),
            "token"
        );
        assert_eq!(
            bad(
                "https://k:6443",
                "token = { env = \"T\" }\ndatabase = \"x\""
            ),
            "database"
        );
    }
}
