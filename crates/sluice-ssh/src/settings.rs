//! A `kind = "ssh"` connection's own keys, read and checked here.
//!
//! ```toml
//! [[connections]]
//! name = "web1"
//! kind = "ssh"
//! upstream = "10.0.0.5:22"
//! user = "deploy"                                  # the account on the host
//! private_key = { file = "/etc/sluice/web1_key" }  # or password = { env = … }
//! host_key = "ssh-ed25519 AAAA…"                   # the host's pinned key
//! ```

use sluice_core::config::{ConnectionConfig, ConnectionKind, Secret};

/// The kind this crate serves.
pub const KIND: ConnectionKind = ConnectionKind::Ssh;

/// The keys of a connection of this kind, besides core's own.
pub const KEYS: &[&str] = &["user", "private_key", "password", "host_key"];

/// The settings of an SSH connection.
#[derive(Debug, Clone)]
pub struct SshSettings {
    /// The account on the host.
    pub user: String,
    /// Private key (OpenSSH or PEM) the gateway logs in with.
    pub private_key: Option<Secret>,
    /// Password the gateway logs in with (when there is no key, or besides).
    pub password: Option<Secret>,
    /// The upstream's pinned host public key, as in `known_hosts`
    /// (`ssh-ed25519 AAAA…`); a mismatch refuses the session.
    pub host_key: String,
}

impl SshSettings {
    /// Reads a connection's settings; the error names the key.
    pub fn of(c: &ConnectionConfig) -> Result<SshSettings, (String, String)> {
        let s = c.settings_for(KEYS)?;
        let user = s.require(
            "user",
            "an ssh connection needs `user` (the account on the host)",
        )?;
        let private_key: Option<Secret> = s.get("private_key")?;
        let password: Option<Secret> = s.get("password")?;
        if private_key.is_none() && password.is_none() {
            return Err((
                "private_key".into(),
                "an ssh connection needs `private_key` or `password`".into(),
            ));
        }
        let host_key: String = s.require(
            "host_key",
            "an ssh connection needs the upstream's pinned `host_key` (a known_hosts line such as \"ssh-ed25519 AAAA…\")",
        )?;
        if !looks_like_public_key(&host_key) {
            return Err((
                "host_key".into(),
                "host_key must be a public key line such as \"ssh-ed25519 AAAA…\" (the host's /etc/ssh/ssh_host_ed25519_key.pub, or a known_hosts entry)".into(),
            ));
        }
        Ok(SshSettings {
            user,
            private_key,
            password,
            host_key,
        })
    }
}

/// Checks an `ssh` connection (`GatewayBuilder::connection_kind`).
pub fn validate(c: &ConnectionConfig) -> Result<(), (String, String)> {
    SshSettings::of(c)?;
    c.require_host_port()
}

/// `ssh-ed25519 AAAA…` (optionally after host names, before a comment):
/// a key type word followed by base64 key data.
fn looks_like_public_key(line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    words.windows(2).any(|w| {
        (w[0].starts_with("ssh-") || w[0].starts_with("ecdsa-sha2-") || w[0].starts_with("sk-"))
            && w[1].len() >= 16
            && w[1]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '=')
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO4k3y";

    fn connection(upstream: &str, keys: &str) -> ConnectionConfig {
        let text = format!(
            "[[connections]]\nname = \"web\"\nkind = \"ssh\"\nupstream = {upstream:?}\n{keys}\n"
        );
        sluice_core::Config::from_toml_str(&text, "t.toml")
            .unwrap()
            .connections
            .remove(0)
    }

    #[test]
    fn settings_are_typed_and_errors_name_the_key() {
        let full =
            format!("user = \"deploy\"\nprivate_key = {{ env = \"K\" }}\nhost_key = {KEY:?}");
        let s = SshSettings::of(&connection("h:22", &full)).unwrap();
        assert_eq!(s.user, "deploy");
        assert!(s.password.is_none());
        let err = validate(&connection(
            "h:22",
            "user = \"deploy\"\nprivate_key = { env = \"K\" }",
        ))
        .unwrap_err();
        assert_eq!(err.0, "host_key");
        let err = validate(&connection(
            "h:22",
            &format!("user = \"d\"\nhost_key = {KEY:?}"),
        ))
        .unwrap_err();
        assert_eq!(err.0, "private_key");
        let err = validate(&connection("h:22", &full.replace(KEY, "not a key"))).unwrap_err();
        assert_eq!(err.0, "host_key");
        let err = validate(&connection("h", &full)).unwrap_err();
        assert_eq!(err.0, "upstream");
        let err = validate(&connection("h:22", &format!("{full}\ndatabase = \"x\""))).unwrap_err();
        assert_eq!(err.0, "database");
    }
}
