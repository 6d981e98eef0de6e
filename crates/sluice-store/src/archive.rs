//! Session recordings in object storage (`[gateway] recordings =
//! "s3://bucket/prefix"`, any S3-compatible service). When a session ends,
//! its chain is written as one object, `PREFIX/sessions/ID.jsonl` (one
//! record per line), and the object's SHA-256 and record count are kept
//! with the session in the store. `replay` reads the object back; `audit
//! verify` reports an object that is missing, altered, or differs from the
//! store's chain.

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use sluice_core::audit::{AuditRecord, StoreError};
use std::sync::Arc;

/// Where the recordings go and how to reach it.
#[derive(Clone, Default)]
pub struct ArchiveSettings {
    /// `s3://bucket/prefix`.
    pub url: String,
    /// An S3-compatible endpoint (`http://127.0.0.1:9000`); AWS when absent.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl std::fmt::Debug for ArchiveSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveSettings")
            .field("url", &self.url)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// The object store that keeps session recordings.
#[derive(Clone)]
pub struct Archive {
    objects: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    shown: String,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// What was written for one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    pub key: String,
    pub sha256: String,
    pub records: u64,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("recordings: {what}: {e}"))
}

impl Archive {
    /// Credentials not given here come from the standard `AWS_*` environment.
    pub fn open(settings: &ArchiveSettings) -> Result<Self, String> {
        let rest = settings
            .url
            .strip_prefix("s3://")
            .ok_or("recordings is s3://bucket/prefix")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err("recordings names no bucket (s3://bucket/prefix)".into());
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(endpoint) = &settings.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        if let Some(region) = &settings.region {
            builder = builder.with_region(region);
        }
        if let Some(key) = &settings.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &settings.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let objects = builder.build().map_err(|e| format!("recordings: {e}"))?;
        Ok(Archive {
            objects: Arc::new(objects),
            prefix: ObjectPath::from(prefix.trim_matches('/')),
            shown: settings.url.clone(),
        })
    }

    /// One object per session and length: nodes writing a session at once
    /// (one saw a record more) never overwrite each other's object.
    fn key(&self, session_id: &str, records: usize) -> ObjectPath {
        self.prefix
            .clone()
            .join("sessions")
            .join(format!("{session_id}-{records}.jsonl"))
    }

    /// Writes a session's chain as one object.
    pub async fn put(
        &self,
        session_id: &str,
        records: &[AuditRecord],
    ) -> Result<Archived, StoreError> {
        let mut body = Vec::new();
        for r in records {
            serde_json::to_writer(&mut body, r).map_err(|e| unavailable("encoding", e))?;
            body.push(b'\n');
        }
        let sha256 = hex::encode(Sha256::digest(&body));
        let key = self.key(session_id, records.len());
        self.objects
            .put(&key, PutPayload::from(body))
            .await
            .map_err(|e| unavailable(&format!("writing {key}"), e))?;
        Ok(Archived {
            key: key.to_string(),
            sha256,
            records: records.len() as u64,
        })
    }

    /// Reads a session's object back and checks it against what the store
    /// recorded when it was written.
    pub async fn get(&self, archived: &Archived) -> Result<Vec<AuditRecord>, ArchiveProblem> {
        let key = ObjectPath::from(archived.key.as_str());
        let bytes = match self.objects.get(&key).await {
            Ok(got) => got
                .bytes()
                .await
                .map_err(|e| ArchiveProblem::Unreadable(e.to_string()))?,
            Err(object_store::Error::NotFound { .. }) => return Err(ArchiveProblem::Missing),
            Err(e) => return Err(ArchiveProblem::Unreadable(e.to_string())),
        };
        if hex::encode(Sha256::digest(&bytes)) != archived.sha256 {
            return Err(ArchiveProblem::Altered);
        }
        bytes
            .split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_slice(line).map_err(|_| ArchiveProblem::Altered))
            .collect()
    }
}

/// Why a recording could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveProblem {
    #[error("its recording object is missing")]
    Missing,
    #[error("its recording object was altered (its SHA-256 differs from the one recorded)")]
    Altered,
    #[error("its recording object could not be read: {0}")]
    Unreadable(String),
}
