//! Authentication beyond gateway tokens: the [`Authenticator`] extension point
//! (OpenID Connect providers live in `sluice-oidc`, so core needs no HTTP
//! client), IdP group mapping, and the persistent revocation list.

use crate::config::AuthConfig;
use crate::model::Identity;
use crate::sync::MutexExt;
use crate::token::TokenError;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a credential was refused. `Display` is safe to show the client: it
/// never contains the token or the IdP's raw answers.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A gateway-issued token that is not valid.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The token is an authenticator's kind but not acceptable (signature,
    /// audience, expiry, algorithm …); the text says which.
    #[error("{0}")]
    Rejected(String),
    /// The authenticator cannot decide now (e.g. the IdP is unreachable and
    /// no signing keys are cached); fails closed.
    #[error("{0}")]
    Unavailable(String),
    #[error("token has been revoked")]
    Revoked,
    #[error("token was not issued by this gateway or by a configured identity provider{0}")]
    UnknownIssuer(String),
}

/// A source of identities other than gateway tokens (an OIDC provider, a
/// platform team's own scheme). Registered with `GatewayBuilder::authenticator`.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// A name for logs (an OIDC provider's issuer URL).
    fn name(&self) -> &str;

    /// `Ok(None)`: not this authenticator's token (another issuer or kind);
    /// `Ok(Some)`: verified, with the IdP's own group names (the gateway maps
    /// them); `Err`: this authenticator's token, but invalid or undecidable.
    async fn authenticate(&self, token: &str) -> Result<Option<Identity>, AuthError>;
}

/// `[[auth.group_map]]` compiled: IdP groups to Sluice groups.
#[derive(Debug, Clone, Default)]
pub struct GroupMap {
    entries: Vec<(crate::glob::Glob, Vec<String>, Option<String>)>,
    /// Issuers whose group names are also kept as they are (`keep_idp_groups`).
    keep: Vec<String>,
}

impl GroupMap {
    pub fn from_config(auth: &AuthConfig) -> Self {
        GroupMap {
            entries: auth
                .group_map
                .iter()
                .map(|m| {
                    (
                        crate::glob::Glob::new(&m.idp_group),
                        m.groups.clone(),
                        m.issuer.as_ref().map(|i| normalize_issuer(i).to_string()),
                    )
                })
                .collect(),
            keep: auth
                .oidc
                .iter()
                .filter(|p| p.keep_idp_groups)
                .map(|p| normalize_issuer(&p.issuer).to_string())
                .collect(),
        }
    }

    /// The Sluice groups of an IdP identity: mapped groups only, unless its
    /// provider keeps IdP group names. An unmapped IdP group grants nothing,
    /// so a group created in the IdP cannot silently become a Sluice group.
    pub fn apply(&self, issuer: &str, idp_groups: &[String]) -> Vec<String> {
        let issuer = normalize_issuer(issuer);
        let mut out: Vec<String> = Vec::new();
        if self.keep.iter().any(|k| k == issuer) {
            out.extend(idp_groups.iter().cloned());
        }
        for (pattern, groups, only) in &self.entries {
            if only.as_deref().is_some_and(|o| o != issuer) {
                continue;
            }
            if idp_groups.iter().any(|g| pattern.matches(g)) {
                out.extend(groups.iter().cloned());
            }
        }
        let mut seen = std::collections::HashSet::new();
        out.retain(|g| seen.insert(g.clone()));
        out
    }
}

/// Issuers compare without a trailing slash.
pub fn normalize_issuer(issuer: &str) -> &str {
    issuer.trim_end_matches('/')
}

/// The `iss` claim of a JWT, read WITHOUT verifying anything: only to pick
/// which verifier to run. Nothing else may use it.
pub fn unverified_issuer(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    jsonwebtoken::dangerous::insecure_decode_claims::<Iss>(token)
        .ok()
        .and_then(|c| c.iss)
}

/// How long a token revoked by id alone (expiry unknown) stays on the list.
pub const REVOKED_ID_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// One revoked token id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub token_id: String,
    /// Unix seconds after which the entry may be forgotten (the token expired).
    pub forget_after: u64,
    pub revoked_at: u64,
    pub revoked_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("revocation list {path}: {reason}")]
pub struct RevocationError {
    pub path: PathBuf,
    pub reason: String,
}

/// Revoked token ids, kept in `state_dir/auth/revoked.json` (replaced atomically on
/// every change) so that they stay revoked across restarts.
#[derive(Debug)]
pub struct RevocationList {
    path: PathBuf,
    entries: Mutex<HashMap<String, Revocation>>,
}

impl RevocationList {
    /// Loads the list; a missing file is an empty list. An unreadable or
    /// corrupt file is an error: starting without it would re-admit revoked
    /// tokens, so this must fail closed.
    pub fn load(state_dir: &Path) -> Result<Self, RevocationError> {
        let path = state_dir.join("auth").join("revoked.json");
        let err = |reason: String| RevocationError {
            path: path.clone(),
            reason,
        };
        let entries = match std::fs::read(&path) {
            Ok(bytes) => {
                let list: Vec<Revocation> =
                    serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
                list.into_iter().map(|r| (r.token_id.clone(), r)).collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(err(e.to_string())),
        };
        Ok(RevocationList {
            path,
            entries: Mutex::new(entries),
        })
    }

    /// Whether `token_id` is revoked.
    pub fn is_revoked(&self, token_id: &str) -> bool {
        self.entries.locked().contains_key(token_id)
    }

    /// Whether `token_id` or any token in its `lineage` is revoked: a token
    /// exchanged (at any depth) from a revoked one is revoked too.
    pub fn any_revoked<'a>(
        &self,
        token_id: &str,
        lineage: impl IntoIterator<Item = &'a String>,
    ) -> bool {
        let e = self.entries.locked();
        e.contains_key(token_id) || lineage.into_iter().any(|t| e.contains_key(t.as_str()))
    }

    /// Adds `token_id` and persists the list before returning.
    pub fn revoke(
        &self,
        token_id: &str,
        expires_at: Option<SystemTime>,
        by: &str,
        reason: Option<String>,
    ) -> Result<Revocation, RevocationError> {
        let now = unix(SystemTime::now());
        let forget_after = match expires_at {
            // The verifier's leeway could still admit it briefly after expiry.
            Some(t) => unix(t) + 60,
            None => now + REVOKED_ID_RETENTION.as_secs(),
        };
        let revocation = Revocation {
            token_id: token_id.to_string(),
            forget_after,
            revoked_at: now,
            revoked_by: by.to_string(),
            reason,
        };
        self.insert(revocation.clone())?;
        Ok(revocation)
    }

    /// Adds a revocation (this node's or another's) and persists the list.
    pub fn insert(&self, revocation: Revocation) -> Result<(), RevocationError> {
        let now = unix(SystemTime::now());
        let mut entries = self.entries.locked();
        entries.retain(|_, r| r.forget_after > now);
        entries.insert(revocation.token_id.clone(), revocation);
        let mut list: Vec<&Revocation> = entries.values().collect();
        list.sort_by(|a, b| a.token_id.cmp(&b.token_id));
        let bytes = serde_json::to_vec_pretty(&list).map_err(|e| RevocationError {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        crate::fsutil::write_private(&self.path, &bytes).map_err(|e| RevocationError {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    pub fn list(&self) -> Vec<Revocation> {
        self.entries.locked().values().cloned().collect()
    }
}

/// How many exchanges deep a chain of tokens may go (each one narrows; a
/// deeper chain only grows the token).
pub const MAX_EXCHANGE_DEPTH: usize = 16;

/// Which tokens descend from which, for the exchanged tokens this process has
/// seen: a revocation ends the live sessions of every descendant, at any
/// depth. Entries are kept until the token expires (a session never outlives
/// its token). Refusing a revoked descendant does not depend on this map: the
/// token itself carries its lineage (`ptid` and `anc` claims) and
/// [`RevocationList::any_revoked`] checks all of it.
#[derive(Debug, Default)]
pub struct Lineage {
    entries: Mutex<HashMap<String, (Vec<String>, SystemTime)>>,
}

impl Lineage {
    /// Remembers that `token_id` (valid until `expires_at`) descends from
    /// `ancestors`, nearest first. Tokens without ancestors are not kept.
    pub fn record(&self, token_id: &str, ancestors: &[String], expires_at: SystemTime) {
        if ancestors.is_empty() {
            return;
        }
        let mut entries = self.entries.locked();
        if entries.len() >= 1024 && !entries.contains_key(token_id) {
            let now = SystemTime::now();
            entries.retain(|_, (_, exp)| *exp > now);
        }
        entries.insert(token_id.to_string(), (ancestors.to_vec(), expires_at));
    }

    /// The ancestors of `token_id`, nearest first (empty: issued directly, or
    /// not seen by this process).
    pub fn ancestors(&self, token_id: &str) -> Vec<String> {
        self.entries
            .locked()
            .get(token_id)
            .map(|(a, _)| a.clone())
            .unwrap_or_default()
    }

    /// Whether `token_id` is `ancestor` or descends from it.
    pub fn descends_from(&self, token_id: &str, ancestor: &str) -> bool {
        token_id == ancestor
            || self
                .entries
                .locked()
                .get(token_id)
                .is_some_and(|(a, _)| a.iter().any(|t| t == ancestor))
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{GroupMapConfig, OidcProviderConfig};

    fn auth(keep: bool) -> AuthConfig {
        let mut a = AuthConfig::default();
        a.oidc.push(
            toml::from_str::<OidcProviderConfig>(&format!(
                "issuer = \"https://idp.example.com/\"\naudience = \"sluice\"\nkeep_idp_groups = {keep}"
            ))
            .unwrap(),
        );
        a.group_map = vec![
            GroupMapConfig {
                idp_group: "eng-*".into(),
                groups: vec!["agents".into()],
                issuer: None,
            },
            GroupMapConfig {
                idp_group: "dba".into(),
                groups: vec!["dba".into(), "agents".into()],
                issuer: Some("https://idp.example.com".into()),
            },
        ];
        a
    }

    #[test]
    fn groups_are_mapped() {
        let map = GroupMap::from_config(&auth(false));
        let g = |issuer: &str, groups: &[&str]| {
            map.apply(
                issuer,
                &groups.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(g("https://idp.example.com", &["eng-db"]), ["agents"]);
        assert_eq!(
            g("https://idp.example.com/", &["dba", "eng-x"]),
            ["agents", "dba"]
        );
        // Issuer-scoped entries do not apply to another provider.
        assert_eq!(
            g("https://other.example.com", &["dba"]),
            Vec::<String>::new()
        );
        // Unmapped groups grant nothing.
        assert_eq!(
            g("https://idp.example.com", &["admins"]),
            Vec::<String>::new()
        );
        let keep = GroupMap::from_config(&auth(true));
        assert_eq!(
            keep.apply(
                "https://idp.example.com",
                &["admins".into(), "eng-a".into()]
            ),
            ["admins", "eng-a", "agents"]
        );
    }

    #[test]
    fn revocations_survive_a_reload_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let list = RevocationList::load(dir.path()).unwrap();
        assert!(!list.is_revoked("a"));
        list.revoke("a", None, "admin", Some("leaked".into()))
            .unwrap();
        list.revoke(
            "old",
            Some(SystemTime::now() - Duration::from_secs(3600)),
            "admin",
            None,
        )
        .unwrap();
        let again = RevocationList::load(dir.path()).unwrap();
        assert!(again.is_revoked("a"));
        // Pruned on the next change once past expiry.
        again.revoke("b", None, "admin", None).unwrap();
        let third = RevocationList::load(dir.path()).unwrap();
        assert!(third.is_revoked("a") && third.is_revoked("b"));
        assert!(!third.is_revoked("old"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("auth").join("revoked.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn corrupt_list_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("auth")).unwrap();
        std::fs::write(dir.path().join("auth").join("revoked.json"), b"{not json").unwrap();
        let err = RevocationList::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("revoked.json"), "{err}");
    }

    #[test]
    fn reads_issuer_without_trusting_it() {
        // header {"alg":"none"} . payload {"iss":"https://x"} . (no signature)
        let token = "eyJhbGciOiJub25lIn0.eyJpc3MiOiJodHRwczovL3gifQ.";
        assert_eq!(unverified_issuer(token).as_deref(), Some("https://x"));
        assert_eq!(unverified_issuer("garbage"), None);
    }
}
