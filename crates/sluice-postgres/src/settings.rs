//! A `kind = "postgres"` connection's own keys, read and checked here.
//!
//! ```toml
//! [[connections]]
//! name = "appdb"
//! kind = "postgres"
//! upstream = "127.0.0.1:5432"
//! database = "app"
//! user = "app"
//! password = { env = "APPDB_PASSWORD" }
//! upstream_tls = "verify-full"        # libpq's sslmode names; default prefer
//! upstream_ca = "/etc/ssl/app-ca.pem" # for verify-ca / verify-full
//! ```

use sluice_core::config::{ConnectionConfig, ConnectionKind, Secret, UpstreamTls};
use std::path::PathBuf;

/// The kind this crate serves.
pub const KIND: ConnectionKind = ConnectionKind::Postgres;

/// The keys of a connection of this kind, besides core's own.
pub const KEYS: &[&str] = &[
    "database",
    "user",
    "password",
    "upstream_tls",
    "upstream_ca",
];

/// The settings of a PostgreSQL connection.
#[derive(Debug, Clone)]
pub struct PostgresSettings {
    /// The database on the upstream.
    pub database: String,
    /// The gateway-held account on the upstream.
    pub user: String,
    /// The gateway-held secret; never inline.
    pub password: Secret,
    /// TLS to the upstream: disable | prefer | require | verify-ca | verify-full.
    pub upstream_tls: UpstreamTls,
    /// CA bundle (PEM) for verify-ca / verify-full; the system roots when absent.
    pub upstream_ca: Option<PathBuf>,
}

impl PostgresSettings {
    /// Reads a connection's settings; the error names the key.
    pub fn of(c: &ConnectionConfig) -> Result<PostgresSettings, (String, String)> {
        let s = c.settings_for(KEYS)?;
        let needs = |key: &str| format!("a postgres connection needs `{key}`");
        Ok(PostgresSettings {
            database: s.require("database", &needs("database"))?,
            user: s.require("user", &needs("user"))?,
            password: s.require("password", &needs("password"))?,
            upstream_tls: s.get("upstream_tls")?.unwrap_or_default(),
            upstream_ca: s.get("upstream_ca")?,
        })
    }
}

/// Checks a `postgres` connection (`GatewayBuilder::connection_kind`).
pub fn validate(c: &ConnectionConfig) -> Result<(), (String, String)> {
    PostgresSettings::of(c).map(|_| ())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn connection(keys: &str) -> ConnectionConfig {
        let text = format!(
            "[[connections]]\nname = \"db\"\nkind = \"postgres\"\nupstream = \"127.0.0.1:5432\"\n{keys}\n"
        );
        sluice_core::Config::from_toml_str(&text, "t.toml")
            .unwrap()
            .connections
            .remove(0)
    }

    #[test]
    fn settings_are_typed_and_errors_name_the_key() {
        let full = "database = \"app\"\nuser = \"app\"\npassword = { env = \"X\" }";
        let s = PostgresSettings::of(&connection(full)).unwrap();
        assert_eq!((s.database.as_str(), s.user.as_str()), ("app", "app"));
        assert_eq!(s.upstream_tls, UpstreamTls::Prefer);
        let err = validate(&connection("user = \"app\"\npassword = { env = \"X\" }")).unwrap_err();
        assert_eq!(err.0, "database");
        assert!(err.1.contains("needs `database`"), "{err:?}");
        let err = validate(&connection(&format!("{full}\ndatbase = \"x\""))).unwrap_err();
        assert_eq!(err.0, "datbase");
        let err = validate(&connection(&format!(
            "{full}\nupstream_tls = \"sometimes\""
        )))
        .unwrap_err();
        assert_eq!(err.0, "upstream_tls");
        let inline = "database = \"app\"\nuser = \"app\"\npassword = \"hunter2\"";
        let err = validate(&connection(inline)).unwrap_err();
        assert_eq!(err.0, "password");
        assert!(err.1.contains("inline secrets are not allowed"), "{err:?}");
        assert!(!err.1.contains("hunter2"), "{err:?}");
    }
}
