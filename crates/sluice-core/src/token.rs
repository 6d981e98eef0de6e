//! Gateway-issued tokens: short-lived Ed25519-signed JWTs. The signing key is
//! configured by reference (`[auth] signing_key`, shared by several nodes) or
//! generated into `state_dir` on first use and never leaves it; a token names
//! its key (`kid`), so that the previous key can verify during a rotation
//! (`[auth] verification_keys`).

use crate::model::Identity;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `iss` and `aud` of gateway tokens.
pub const GATEWAY_ISSUER: &str = "sluice";
/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Clock skew tolerated on `exp`, `nbf` and `iat`.
const LEEWAY_SECS: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token signature or format is invalid")]
    Invalid,
    #[error("token was not issued by this gateway")]
    WrongIssuer,
    #[error("requested ttl {requested:?} exceeds the maximum {max:?} (auth.token_max_ttl)")]
    TtlTooLong { requested: Duration, max: Duration },
    #[error("token subject must not be empty")]
    EmptySubject,
    #[error("signing key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    sub: String,
    #[serde(default)]
    groups: Vec<String>,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    /// Connections the token may open (exchanged tokens); all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    connections: Option<Vec<String>>,
    /// The id of the token this one was exchanged for (revoking it revokes this one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ptid: Option<String>,
    /// The ids of the parent's own ancestors, nearest first (a chain of
    /// exchanges): revoking any of them revokes this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    anc: Vec<String>,
    /// The issuer of the identity an exchanged token stands for, when that
    /// is an identity provider: the subject is theirs there, not the
    /// gateway's (set only by this gateway's exchange, under its signature).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    oiss: Option<String>,
}

/// A token to mint (see [`TokenAuthority::issue_with`]).
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    pub subject: String,
    pub groups: Vec<String>,
    pub ttl: Duration,
    /// Connections the token is narrowed to.
    pub connections: Option<Vec<String>>,
    /// The token it was exchanged for.
    pub parent_token_id: Option<String>,
    /// The parent's own ancestors, nearest first (empty for a parent issued
    /// directly): carried in the token so that a revocation anywhere up the
    /// chain refuses it, across restarts too.
    pub ancestor_token_ids: Vec<String>,
    /// The identity provider the subject belongs to (an exchanged IdP
    /// identity); `None` for the gateway's own subjects.
    pub subject_issuer: Option<String>,
}

/// A minted token and what it says.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub token_id: String,
    pub expires_at: SystemTime,
}

/// A verified gateway token.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub identity: Identity,
    /// The token it was exchanged for, if any.
    pub parent_token_id: Option<String>,
    /// Every token it descends from, nearest first: the parent, the parent's
    /// parent, … (empty for a token issued directly).
    pub lineage: Vec<String>,
}

/// Mints and verifies gateway tokens.
pub struct TokenAuthority {
    encoding: EncodingKey,
    key_id: String,
    /// Keys tokens are verified with, by key id: the signing key's, then
    /// the configured verification keys'.
    verifying: Vec<(String, DecodingKey)>,
    max_ttl: Duration,
    /// Tokens whose signature was checked, by their SHA-256 (see
    /// [`TokenAuthority::verify_full`]).
    verified: std::sync::Mutex<std::collections::HashMap<[u8; 32], Verified>>,
}

/// The most tokens [`TokenAuthority`] remembers as verified; past this the
/// memory is emptied (a flood of distinct valid tokens costs a signature
/// check each, as it did without it).
const VERIFIED_MAX: usize = 4096;

/// A token whose signature, issuer, audience, key and subject were checked:
/// all fixed by its bytes. Its times are checked again on every use.
#[derive(Clone)]
struct Verified {
    token: VerifiedToken,
    exp: u64,
    nbf: u64,
    iat: u64,
}

impl Verified {
    /// The time checks of a full verification (jsonwebtoken's, with the
    /// same leeway, then the issue time's), at `now`.
    fn check_times(&self, now: u64) -> Result<(), TokenError> {
        if self.exp < now.saturating_sub(LEEWAY_SECS) {
            return Err(TokenError::Expired);
        }
        if self.nbf > now + LEEWAY_SECS || self.iat > now + LEEWAY_SECS {
            return Err(TokenError::NotYetValid);
        }
        Ok(())
    }
}

impl std::fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuthority")
            .field("key_id", &self.key_id)
            .finish()
    }
}

impl TokenAuthority {
    /// Loads `state_dir/keys/token-signing.pem`, generating it (mode 0600) when absent.
    pub fn load_or_create(state_dir: &Path, max_ttl: Duration) -> Result<Self, TokenError> {
        let dir = state_dir.join("keys");
        let path = dir.join("token-signing.pem");
        let key_err = |reason: String| TokenError::Key {
            path: path.clone(),
            reason,
        };
        let pem = match std::fs::read_to_string(&path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
                    .map_err(|e| key_err(e.to_string()))?;
                let pem = key.serialize_pem();
                crate::fsutil::write_private(&path, pem.as_bytes())
                    .map_err(|e| key_err(e.to_string()))?;
                pem
            }
            Err(e) => return Err(key_err(e.to_string())),
        };
        Self::from_pem(&pem, max_ttl).map_err(key_err)
    }

    /// The gateway's authority as configured: `[auth] signing_key` (by
    /// reference) or the key generated into `state_dir`, and any
    /// `verification_keys` (the previous key during a rotation).
    pub fn from_config(config: &crate::Config) -> Result<Self, TokenError> {
        let auth = &config.auth;
        let mut authority = match Self::configured(config)? {
            Some(authority) => authority,
            None => Self::load_or_create(&config.gateway.state_dir, auth.token_max_ttl.0)?,
        };
        authority.verifying.extend(verification_keys(config)?);
        Ok(authority)
    }

    /// Reads and checks the configured keys without generating one
    /// (`sluice config check`).
    pub fn check_config(config: &crate::Config) -> Result<(), TokenError> {
        Self::configured(config)?;
        verification_keys(config).map(|_| ())
    }

    /// The authority of `[auth] signing_key`, when one is configured.
    fn configured(config: &crate::Config) -> Result<Option<Self>, TokenError> {
        let Some(secret) = &config.auth.signing_key else {
            return Ok(None);
        };
        let key_err = |reason: String| TokenError::Key {
            path: PathBuf::from(format!("auth.signing_key ({secret:?})")),
            reason,
        };
        let pem = secret.resolve().map_err(|e| key_err(e.to_string()))?;
        Self::from_pem(&pem, config.auth.token_max_ttl.0)
            .map(Some)
            .map_err(key_err)
    }

    fn from_pem(pem: &str, max_ttl: Duration) -> Result<Self, String> {
        let pair = private_key(pem)?;
        if !pair.is_compatible(&rcgen::PKCS_ED25519) {
            return Err("not an Ed25519 key".into());
        }
        let (key_id, decoding) = verifying_key(pair.public_key_raw());
        Ok(TokenAuthority {
            encoding: EncodingKey::from_ed_pem(pem.as_bytes())
                .map_err(|_| "the key cannot sign (not an Ed25519 PKCS#8 key)".to_string())?,
            verifying: vec![(key_id.clone(), decoding)],
            key_id,
            max_ttl,
            verified: Default::default(),
        })
    }

    /// The key a token names (`kid`), among those this gateway verifies with.
    fn decoding_key(&self, token: &str) -> Result<&DecodingKey, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        let kid = header.kid.ok_or(TokenError::Invalid)?;
        self.verifying
            .iter()
            .find(|(id, _)| *id == kid)
            .map(|(_, key)| key)
            .ok_or(TokenError::Invalid)
    }

    pub fn max_ttl(&self) -> Duration {
        self.max_ttl
    }

    /// Mints a token for `subject` in `groups`, valid for `ttl`.
    pub fn issue(
        &self,
        subject: &str,
        groups: &[String],
        ttl: Duration,
    ) -> Result<String, TokenError> {
        self.issue_with(&TokenRequest {
            subject: subject.into(),
            groups: groups.to_vec(),
            ttl,
            ..TokenRequest::default()
        })
        .map(|t| t.token)
    }

    /// Mints a token, possibly narrowed to some connections.
    pub fn issue_with(&self, request: &TokenRequest) -> Result<IssuedToken, TokenError> {
        if request.subject.trim().is_empty() {
            return Err(TokenError::EmptySubject);
        }
        let ttl = request.ttl;
        if ttl > self.max_ttl || ttl.is_zero() {
            return Err(TokenError::TtlTooLong {
                requested: ttl,
                max: self.max_ttl,
            });
        }
        let now = unix_now();
        let claims = Claims {
            iss: GATEWAY_ISSUER.into(),
            aud: GATEWAY_ISSUER.into(),
            sub: request.subject.clone(),
            groups: request.groups.clone(),
            exp: now + ttl.as_secs().max(1),
            nbf: now,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            connections: request.connections.clone(),
            ptid: request.parent_token_id.clone(),
            oiss: request
                .subject_issuer
                .clone()
                .filter(|i| i != GATEWAY_ISSUER),
            anc: if request.parent_token_id.is_some() {
                request.ancestor_token_ids.clone()
            } else {
                Vec::new()
            },
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.key_id.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|_| TokenError::Invalid)?;
        Ok(IssuedToken {
            token,
            token_id: claims.jti,
            expires_at: UNIX_EPOCH + Duration::from_secs(claims.exp),
        })
    }

    /// Verifies signature, algorithm, issuer, audience and validity window.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        self.verify_full(token).map(|v| v.identity)
    }

    /// Like [`TokenAuthority::verify`], also returning the parent token id.
    ///
    /// An agent presents the same token on every HTTP request, and checking
    /// its Ed25519 signature was about a fifth of the gateway's CPU per
    /// request: a token seen verified is known by its SHA-256, and only its
    /// times are checked again. The keys never change for an authority, and
    /// revocation is checked by the caller on every use.
    pub fn verify_full(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        use crate::sync::MutexExt;
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Invalid);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let known = self.verified.locked().get(&digest).cloned();
        if let Some(known) = known {
            known.check_times(unix_now())?;
            return Ok(known.token);
        }
        let verified = self.verify_signed(token)?;
        let mut memory = self.verified.locked();
        if memory.len() >= VERIFIED_MAX {
            memory.clear();
        }
        memory.insert(digest, verified.clone());
        Ok(verified.token)
    }

    /// The full check of a token: signature, claims and times.
    fn verify_signed(&self, token: &str) -> Result<Verified, TokenError> {
        // Only EdDSA is accepted: `alg: none` and HMAC-with-the-public-key
        // confusions fail here, before any signature work.
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_issuer(&[GATEWAY_ISSUER]);
        validation.set_audience(&[GATEWAY_ISSUER]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        let decoding = self.decoding_key(token)?;
        let data =
            jsonwebtoken::decode::<Claims>(token, decoding, &validation).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                    jsonwebtoken::errors::ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                    jsonwebtoken::errors::ErrorKind::InvalidIssuer
                    | jsonwebtoken::errors::ErrorKind::InvalidAudience => TokenError::WrongIssuer,
                    _ => TokenError::Invalid,
                }
            })?;
        let claims = data.claims;
        if claims.iat > unix_now() + LEEWAY_SECS {
            return Err(TokenError::NotYetValid);
        }
        if claims.sub.trim().is_empty() {
            return Err(TokenError::EmptySubject);
        }
        let (exp, nbf, iat) = (claims.exp, claims.nbf, claims.iat);
        let token = VerifiedToken {
            identity: Identity {
                subject: claims.sub,
                groups: claims.groups,
                issuer: claims.oiss.unwrap_or_else(|| GATEWAY_ISSUER.into()),
                token_id: claims.jti,
                expires_at: UNIX_EPOCH + Duration::from_secs(claims.exp),
                connections: claims.connections,
            },
            lineage: claims
                .ptid
                .iter()
                .chain(claims.anc.iter())
                .cloned()
                .collect(),
            parent_token_id: claims.ptid,
        };
        Ok(Verified {
            token,
            exp,
            nbf,
            iat,
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Why an `Authorization` header carries no usable bearer token. The
/// messages never contain the header's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    #[error("no Authorization: Bearer <token> header")]
    Missing,
    #[error("the Authorization header is not valid text")]
    NotText,
    #[error("the Authorization header must use the Bearer scheme")]
    NotBearer,
    #[error("the Authorization header has an empty bearer token")]
    Empty,
}

/// The token in an `Authorization: Bearer <token>` header value (the scheme
/// is case-insensitive, surrounding spaces are ignored). Shared by every
/// HTTP-speaking front end (operator API, HTTP and Kubernetes gateways).
pub fn bearer_from_header(value: Option<&[u8]>) -> Result<&str, BearerError> {
    let value = value.ok_or(BearerError::Missing)?;
    let value = std::str::from_utf8(value).map_err(|_| BearerError::NotText)?;
    let token = match value.trim().split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => return Err(BearerError::NotBearer),
    };
    if token.is_empty() {
        return Err(BearerError::Empty);
    }
    Ok(token)
}

#[cfg(test)]
mod tests;

/// The keys of `[auth] verification_keys`, by key id.
fn verification_keys(config: &crate::Config) -> Result<Vec<(String, DecodingKey)>, TokenError> {
    let mut keys = Vec::new();
    for (i, secret) in config.auth.verification_keys.iter().enumerate() {
        let key_err = |reason: String| TokenError::Key {
            path: PathBuf::from(format!("auth.verification_keys.{i} ({secret:?})")),
            reason,
        };
        let pem = secret.resolve().map_err(|e| key_err(e.to_string()))?;
        let public = public_key_of(&pem).map_err(key_err)?;
        keys.push(verifying_key(&public));
    }
    Ok(keys)
}

/// A raw Ed25519 public key's id (the first 8 bytes of its SHA-256, hex)
/// and verifying key.
fn verifying_key(public: &[u8]) -> (String, DecodingKey) {
    (
        hex::encode(&Sha256::digest(public)[..8]),
        DecodingKey::from_ed_der(public),
    )
}

/// The raw Ed25519 public key of a PEM: a `PUBLIC KEY` (SubjectPublicKeyInfo)
/// or a private key.
fn public_key_of(pem: &str) -> Result<Vec<u8>, String> {
    use rustls::pki_types::{pem::PemObject, SubjectPublicKeyInfoDer};
    if pem.contains("PUBLIC KEY-----") {
        // SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING (32 bytes) }
        const ED25519_SPKI: [u8; 12] = [
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        let der = SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| format!("not a PEM public key: {e}"))?;
        return match der.as_ref().strip_prefix(&ED25519_SPKI[..]) {
            Some(key) if key.len() == 32 => Ok(key.to_vec()),
            _ => Err("not an Ed25519 public key".into()),
        };
    }
    let pair = private_key(pem)?;
    if !pair.is_compatible(&rcgen::PKCS_ED25519) {
        return Err("not an Ed25519 key".into());
    }
    Ok(pair.public_key_raw().to_vec())
}

/// Parses a private key PEM. The parser's own error can quote the PEM's
/// lines (the key itself), so only a fixed message is kept.
fn private_key(pem: &str) -> Result<rcgen::KeyPair, String> {
    rcgen::KeyPair::from_pem(pem).map_err(|_| {
        "not a readable PKCS#8 PEM private key (openssl genpkey -algorithm ed25519)".into()
    })
}
