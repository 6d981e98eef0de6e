//! The gateway-wide log and its signed checkpoints.
//!
//! Every record (of every session) is also a link of one gateway-wide hash
//! chain, in the order the journal holds them: `root(n) = H(root(n-1),
//! hash(record n))`. A checkpoint is that chain's head — size and root —
//! signed with Ed25519, like a Certificate Transparency signed tree head.
//! Kept off the box (or published to telemetry and webhooks), an earlier
//! checkpoint lets `sluice audit verify --checkpoint FILE` detect what the
//! per-session chains cannot: a session rewritten together with its head, a
//! session deleted whole, a journal cut short.

use super::GENESIS_HASH;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The root of the empty log.
pub const EMPTY_ROOT: &str = GENESIS_HASH;

/// The next root of the gateway-wide chain after a record whose
/// (per-session chain) hash is `record_hash`.
pub fn log_hash(prev_root: &str, record_hash: &str) -> String {
    let mut h = Sha256::new();
    for part in [
        b"sluice-log-v1".as_slice(),
        prev_root.as_bytes(),
        record_hash.as_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    super::hex_lower(&h.finalize())
}

/// The head of the gateway-wide chain: how many records, and the root after them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeHead {
    pub size: u64,
    pub root: String,
}

impl Default for TreeHead {
    fn default() -> Self {
        TreeHead {
            size: 0,
            root: EMPTY_ROOT.to_string(),
        }
    }
}

impl TreeHead {
    /// Extends the chain by one record.
    pub fn push(&mut self, record_hash: &str) {
        self.root = log_hash(&self.root, record_hash);
        self.size += 1;
    }
}

/// A signed tree head, as written by `sluice audit checkpoint` and published
/// by the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Format version (1).
    pub version: u32,
    /// Records in the gateway-wide log.
    pub size: u64,
    /// The log's root after `size` records (hex SHA-256).
    pub root: String,
    /// When it was taken (Unix milliseconds).
    pub at_ms: u64,
    /// The signing key's id: the first 8 bytes of SHA-256 of its public key, hex.
    pub key_id: String,
    /// The Ed25519 public key, hex (32 bytes).
    pub public_key: String,
    /// Ed25519 signature of [`Checkpoint::message`], base64url.
    pub signature: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("checkpoint signature: {0}")]
    Signature(String),
    #[error("checkpoint: {0}")]
    Format(String),
}

impl Checkpoint {
    /// The signed bytes: a fixed-format text naming every field.
    pub fn message(size: u64, root: &str, at_ms: u64) -> Vec<u8> {
        format!("sluice-checkpoint-v1\nsize {size}\nroot {root}\nat_ms {at_ms}\n").into_bytes()
    }

    pub fn head(&self) -> TreeHead {
        TreeHead {
            size: self.size,
            root: self.root.clone(),
        }
    }

    pub fn parse(text: &str) -> Result<Checkpoint, CheckpointError> {
        let c: Checkpoint =
            serde_json::from_str(text).map_err(|e| CheckpointError::Format(e.to_string()))?;
        if c.version != 1 {
            return Err(CheckpointError::Format(format!(
                "unknown version {}",
                c.version
            )));
        }
        Ok(c)
    }

    /// Checks the signature with `public_key` (raw 32 bytes); `None`: with
    /// the key the checkpoint names (authentic only if that key is known
    /// good, e.g. its id was published).
    pub fn verify_signature(&self, public_key: Option<&[u8]>) -> Result<(), CheckpointError> {
        let embedded = hex::decode(&self.public_key)
            .map_err(|_| CheckpointError::Format("public_key is not hex".into()))?;
        let key = match public_key {
            Some(k) if k != embedded.as_slice() => {
                return Err(CheckpointError::Signature(format!(
                    "signed by key {}, not by this gateway's checkpoint key {}",
                    self.key_id,
                    key_id(k)
                )))
            }
            Some(k) => k.to_vec(),
            None => embedded,
        };
        let ok = jsonwebtoken::crypto::verify(
            &self.signature,
            &Self::message(self.size, &self.root, self.at_ms),
            &DecodingKey::from_ed_der(&key),
            Algorithm::EdDSA,
        )
        .map_err(|e| CheckpointError::Signature(e.to_string()))?;
        if !ok {
            return Err(CheckpointError::Signature(
                "does not match its contents (the file was changed)".into(),
            ));
        }
        Ok(())
    }
}

fn key_id(public: &[u8]) -> String {
    hex::encode(&Sha256::digest(public)[..8])
}

/// Signs checkpoints with an Ed25519 key (PKCS#8 PEM).
pub struct CheckpointSigner {
    encoding: EncodingKey,
    public: Vec<u8>,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("key_id", &self.key_id())
            .finish()
    }
}

/// Where the generated checkpoint key lives when the config names none.
pub fn default_key_path(state_dir: &Path) -> PathBuf {
    state_dir.join("keys").join("checkpoint-signing.pem")
}

impl CheckpointSigner {
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let pair = rcgen::KeyPair::from_pem(pem).map_err(|e| e.to_string())?;
        if !pair.is_compatible(&rcgen::PKCS_ED25519) {
            return Err("not an Ed25519 key".into());
        }
        Ok(CheckpointSigner {
            encoding: EncodingKey::from_ed_pem(pem.as_bytes()).map_err(|e| e.to_string())?,
            public: pair.public_key_raw().to_vec(),
        })
    }

    /// The key in `path`, generated there (0600) if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, CheckpointError> {
        let err = |reason: String| CheckpointError::Key {
            path: path.display().to_string(),
            reason,
        };
        let pem = match std::fs::read_to_string(path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
                    .map_err(|e| err(e.to_string()))?;
                let pem = key.serialize_pem();
                crate::fsutil::write_private(path, pem.as_bytes())
                    .map_err(|e| err(e.to_string()))?;
                pem
            }
            Err(e) => return Err(err(e.to_string())),
        };
        Self::from_pem(&pem).map_err(err)
    }

    /// The configured key (`[gateway] checkpoint_key`), else the one in
    /// `state_dir/keys` (generated on first use when `create`).
    pub fn from_config(
        config: &crate::config::GatewayConfig,
        create: bool,
    ) -> Result<Option<Self>, CheckpointError> {
        if let Some(secret) = &config.checkpoint_key {
            let pem = secret.resolve().map_err(|e| CheckpointError::Key {
                path: "gateway.checkpoint_key".into(),
                reason: e.to_string(),
            })?;
            return Self::from_pem(&pem)
                .map(Some)
                .map_err(|reason| CheckpointError::Key {
                    path: "gateway.checkpoint_key".into(),
                    reason,
                });
        }
        let path = default_key_path(&config.state_dir);
        if !create && !path.exists() {
            return Ok(None);
        }
        Self::load_or_create(&path).map(Some)
    }

    pub fn public_key(&self) -> &[u8] {
        &self.public
    }

    pub fn key_id(&self) -> String {
        key_id(&self.public)
    }

    pub fn sign(&self, head: &TreeHead, at_ms: u64) -> Result<Checkpoint, CheckpointError> {
        let signature = jsonwebtoken::crypto::sign(
            &Checkpoint::message(head.size, &head.root, at_ms),
            &self.encoding,
            Algorithm::EdDSA,
        )
        .map_err(|e| CheckpointError::Signature(e.to_string()))?;
        Ok(Checkpoint {
            version: 1,
            size: head.size,
            root: head.root.clone(),
            at_ms,
            key_id: self.key_id(),
            public_key: hex::encode(&self.public),
            signature,
        })
    }
}

/// What a log holds compared with an earlier checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum CheckpointMatch {
    /// The log's first `size` records reproduce the checkpoint's root.
    Consistent,
    /// The log holds fewer records than the checkpoint covered.
    Truncated { have: u64, want: u64 },
    /// The first `size` records differ (rewritten, removed, inserted or reordered).
    Diverged { size: u64 },
}

impl std::fmt::Display for CheckpointMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckpointMatch::Consistent => write!(f, "consistent with the checkpoint"),
            CheckpointMatch::Truncated { have, want } => write!(
                f,
                "the log holds {have} records but the checkpoint covered {want}: records were removed (journal truncated or sessions deleted)"
            ),
            CheckpointMatch::Diverged { size } => write!(
                f,
                "the log's first {size} records do not reproduce the checkpoint's root: records were rewritten, removed, inserted or reordered since it was taken"
            ),
        }
    }
}

/// Compares the heads of a log at a checkpoint's size: `at_size` is the
/// log's head after `checkpoint.size` records, or `None` when it holds
/// fewer (then `total` says how many).
pub fn compare(checkpoint: &TreeHead, at_size: Option<&TreeHead>, total: u64) -> CheckpointMatch {
    match at_size {
        None => CheckpointMatch::Truncated {
            have: total,
            want: checkpoint.size,
        },
        Some(h) if h.root == checkpoint.root => CheckpointMatch::Consistent,
        Some(_) => CheckpointMatch::Diverged {
            size: checkpoint.size,
        },
    }
}

/// Somewhere a signed checkpoint is published (a webhook, a transparency
/// log): best effort, never blocking the caller.
pub trait CheckpointSink: Send + Sync + 'static {
    fn publish(&self, checkpoint: &Checkpoint);
}

/// Publishes a checkpoint: as a `sluice::audit` log event (exported to the
/// telemetry pipeline like every audit event) and to every sink.
pub fn publish(checkpoint: &Checkpoint, sinks: &[std::sync::Arc<dyn CheckpointSink>]) {
    tracing::info!(
        target: crate::metrics::AUDIT_LOG_TARGET,
        message = "audit_checkpoint",
        checkpoint.size = checkpoint.size,
        checkpoint.root = %checkpoint.root,
        checkpoint.at_ms = checkpoint.at_ms,
        checkpoint.key_id = %checkpoint.key_id,
        checkpoint.public_key = %checkpoint.public_key,
        checkpoint.signature = %checkpoint.signature,
    );
    for sink in sinks {
        sink.publish(checkpoint);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> CheckpointSigner {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        CheckpointSigner::from_pem(&key.serialize_pem()).unwrap()
    }

    #[test]
    fn signed_checkpoints_verify_and_changes_are_refused() {
        let s = signer();
        let mut head = TreeHead::default();
        head.push("aa");
        head.push("bb");
        let c = s.sign(&head, 1_000).unwrap();
        let text = serde_json::to_string(&c).unwrap();
        let parsed = Checkpoint::parse(&text).unwrap();
        parsed.verify_signature(Some(s.public_key())).unwrap();
        parsed.verify_signature(None).unwrap();
        let mut changed = parsed.clone();
        changed.size = 1;
        assert!(changed.verify_signature(Some(s.public_key())).is_err());
        // A checkpoint signed by another key is not this gateway's.
        let other = signer().sign(&head, 1_000).unwrap();
        assert!(other.verify_signature(Some(s.public_key())).is_err());
    }

    #[test]
    fn the_chain_depends_on_every_record_and_its_order() {
        let mut a = TreeHead::default();
        let mut b = TreeHead::default();
        a.push("x");
        a.push("y");
        b.push("y");
        b.push("x");
        assert_eq!(a.size, 2);
        assert_ne!(a.root, b.root);
        assert_eq!(
            compare(&a, Some(&b), 2),
            CheckpointMatch::Diverged { size: 2 }
        );
        assert_eq!(
            compare(&a, Some(&a.clone()), 2),
            CheckpointMatch::Consistent
        );
        assert_eq!(
            compare(&a, None, 1),
            CheckpointMatch::Truncated { have: 1, want: 2 }
        );
    }
}
