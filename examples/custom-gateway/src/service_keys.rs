//! A platform team's own authentication stage, next to gateway tokens:
//! long-lived service keys for batch jobs, kept outside the config file.
//! `CUSTOM_GATEWAY_SERVICE_KEYS` holds one key per line as
//! `KEY SUBJECT GROUP[,GROUP…]`; a key is accepted only in full (compared in
//! constant time) and is at least 32 characters. The groups are IdP-style
//! groups: like an OIDC provider's, they grant nothing until
//! `[[auth.group_map]]` maps them. Each use gets an
//! identity valid for a few minutes, so sessions opened with a key end and
//! are re-admitted regularly (and a key removed from the environment stops
//! working at the next restart).

use async_trait::async_trait;
use sluice_core::{AuthError, Authenticator, Identity};
use std::time::{Duration, SystemTime};

/// The issuer service-key identities carry.
pub const ISSUER: &str = "service-keys";
const PREFIX: &str = "sk-";
const MIN_LEN: usize = 32;
const VALIDITY: Duration = Duration::from_secs(300);

struct Key {
    key: String,
    subject: String,
    groups: Vec<String>,
}

pub struct ServiceKeys(Vec<Key>);

impl ServiceKeys {
    /// Reads `CUSTOM_GATEWAY_SERVICE_KEYS`; `None` when it is unset or empty.
    pub fn from_env() -> anyhow::Result<Option<ServiceKeys>> {
        let Ok(text) = std::env::var("CUSTOM_GATEWAY_SERVICE_KEYS") else {
            return Ok(None);
        };
        let mut keys = Vec::new();
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let words: Vec<&str> = line.split_whitespace().collect();
            let [key, subject, groups] = words[..] else {
                anyhow::bail!(
                    "CUSTOM_GATEWAY_SERVICE_KEYS line {}: expected KEY SUBJECT GROUPS",
                    n + 1
                );
            };
            anyhow::ensure!(
                key.starts_with(PREFIX) && key.len() >= MIN_LEN,
                "CUSTOM_GATEWAY_SERVICE_KEYS line {}: a key starts with {PREFIX:?} and has at least {MIN_LEN} characters",
                n + 1
            );
            keys.push(Key {
                key: key.to_string(),
                subject: subject.to_string(),
                groups: groups.split(',').map(str::to_string).collect(),
            });
        }
        Ok((!keys.is_empty()).then_some(ServiceKeys(keys)))
    }
}

/// Equal in time independent of where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[async_trait]
impl Authenticator for ServiceKeys {
    fn name(&self) -> &str {
        ISSUER
    }

    async fn authenticate(&self, token: &str) -> Result<Option<Identity>, AuthError> {
        if !token.starts_with(PREFIX) {
            return Ok(None);
        }
        let found = self.0.iter().fold(None, |found, k| {
            if same(k.key.as_bytes(), token.as_bytes()) {
                Some(k)
            } else {
                found
            }
        });
        let Some(key) = found else {
            return Err(AuthError::Rejected("unknown service key".into()));
        };
        Ok(Some(Identity {
            subject: key.subject.clone(),
            groups: key.groups.clone(),
            issuer: ISSUER.into(),
            // Revocable by id like any token: the key's subject names it.
            token_id: format!("service-key:{}", key.subject),
            expires_at: SystemTime::now() + VALIDITY,
            connections: None,
        }))
    }
}
