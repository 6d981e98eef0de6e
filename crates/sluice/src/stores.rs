//! Which store a process opens: the embedded one (SQLite and the journal in
//! `state_dir`), or the PostgreSQL store several nodes share.

use anyhow::{Context, Result};
use sluice_core::audit::Store;
use sluice_core::Config;
use sluice_store::{Mode, PgMode, PgStore, PgTarget, SqliteStore};
use std::path::PathBuf;
use std::sync::Arc;

pub enum Opened {
    Embedded(Arc<SqliteStore>),
    Shared(Arc<PgStore>),
}

/// The PostgreSQL store's address and password from `[gateway]`.
pub fn shared_target(config: &Config) -> Result<Option<PgTarget>> {
    let Some(url) = config.gateway.shared_store() else {
        return Ok(None);
    };
    let password = match &config.gateway.store_password {
        Some(secret) => Some(secret.resolve().context("gateway.store_password")?),
        None => None,
    };
    PgTarget::parse(url, password.as_deref(), config.gateway.store_ca.as_deref())
        .map(Some)
        .map_err(|e| anyhow::anyhow!("gateway.store: {e}"))
}

/// The object storage `[gateway] recordings` names, if any.
pub fn archive(config: &Config) -> Result<Option<sluice_store::Archive>> {
    let g = &config.gateway;
    let Some(url) = &g.recordings else {
        return Ok(None);
    };
    let secret = |s: &Option<sluice_core::Secret>, key: &str| -> Result<Option<String>> {
        s.as_ref()
            .map(|s| s.resolve().with_context(|| format!("gateway.{key}")))
            .transpose()
    };
    let settings = sluice_store::ArchiveSettings {
        url: url.clone(),
        endpoint: g.recordings_endpoint.clone(),
        region: g.recordings_region.clone(),
        access_key_id: secret(&g.recordings_access_key_id, "recordings_access_key_id")?,
        secret_access_key: secret(
            &g.recordings_secret_access_key,
            "recordings_secret_access_key",
        )?,
    };
    sluice_store::Archive::open(&settings)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("gateway.recordings: {e}"))
}

/// The embedded store's directory: `sqlite:PATH`, or `state_dir`.
pub fn embedded_dir(config: &Config) -> PathBuf {
    match config
        .gateway
        .store
        .as_deref()
        .and_then(|s| s.strip_prefix("sqlite:"))
    {
        Some(path) => PathBuf::from(path),
        None => config.gateway.state_dir.clone(),
    }
}

pub fn open_embedded(dir: &std::path::Path, mode: Mode) -> Result<Arc<SqliteStore>> {
    Ok(Arc::new(SqliteStore::open(dir, mode).with_context(
        || format!("opening the store in {}", dir.display()),
    )?))
}

impl Opened {
    /// Opens the configured store; a gateway (`writer`) appends to it as its node.
    pub async fn open(config: &Config, writer: bool) -> Result<Opened> {
        if let Some(target) = shared_target(config)? {
            let shown = format!("{target:?}");
            let mode = match writer {
                true => PgMode::Node(config.gateway.node_id(), config.gateway.audit_sync),
                false => PgMode::Reader,
            };
            let mut store = PgStore::open(target, mode)
                .await
                .with_context(|| format!("opening the store {shown}"))?;
            if let Some(archive) = archive(config)? {
                store = store.with_recordings(archive);
            }
            return Ok(Opened::Shared(Arc::new(store)));
        }
        let mode = match writer {
            true => Mode::Writer(config.gateway.audit_sync),
            false => Mode::Reader,
        };
        open_embedded(&embedded_dir(config), mode).map(Opened::Embedded)
    }

    pub fn store(&self) -> Arc<dyn Store> {
        match self {
            Opened::Embedded(s) => s.clone(),
            Opened::Shared(s) => s.clone(),
        }
    }

    /// The embedded store, for what only it has (the journal's checkpoints).
    pub fn embedded(&self) -> Option<&Arc<SqliteStore>> {
        match self {
            Opened::Embedded(s) => Some(s),
            Opened::Shared(_) => None,
        }
    }

    /// How this node tells the others what it decides (a shared store).
    pub fn cluster(&self) -> Option<Arc<dyn sluice_core::cluster::Cluster>> {
        match self {
            Opened::Shared(s) => s
                .cluster()
                .map(|c| c as Arc<dyn sluice_core::cluster::Cluster>),
            Opened::Embedded(_) => None,
        }
    }

    /// Applies the other nodes' revocations and session ends to `gateway`
    /// (those in force before it returns: the node serves after).
    pub async fn follow(&self, gateway: &Arc<sluice_core::Gateway>) -> Result<()> {
        if let Opened::Shared(s) = self {
            let gateway = Arc::downgrade(gateway);
            s.follow(Arc::new(move |event| {
                if let Some(g) = gateway.upgrade() {
                    g.apply(event);
                }
            }))
            .await
            .context("reading the other nodes' revocations")?;
        }
        Ok(())
    }

    /// Ends the sessions this process's previous run left open.
    pub async fn close_orphaned_sessions(&self, reason: &str) -> Result<usize> {
        Ok(match self {
            Opened::Embedded(s) => s.close_orphaned_sessions(reason).await?,
            Opened::Shared(s) => s.close_orphaned_sessions(reason).await?,
        })
    }

    /// Waits until every record queued so far is written (at shutdown).
    pub async fn flush(&self) {
        if let Opened::Shared(s) = self {
            if let Err(e) = s.flush().await {
                tracing::error!(message = "Audit records queued at shutdown could not be written.", error = %e);
            }
        }
    }
}

/// `sluice store migrate`: copies the embedded store's history in `from`
/// (default `state_dir`) into the configured PostgreSQL store. The source
/// must verify first; each session's chain is read back and compared, and
/// the whole store verified after. Sessions already copied are skipped, so
/// an interrupted run can be repeated.
pub async fn migrate(config: Config, from: Option<PathBuf>) -> Result<()> {
    let target = shared_target(&config)?
        .context("gateway.store is not a postgres:// store: set it to the store to migrate into")?;
    let dir = from.unwrap_or_else(|| embedded_dir(&config));
    if !dir.join("sluice.db").is_file() {
        anyhow::bail!("no embedded store in {}", dir.display());
    }
    let source = open_embedded(&dir, Mode::Reader)?;
    if let Some(b) = source.verify().await?.first_break {
        anyhow::bail!(
            "the embedded store in {} does not verify ({b}); nothing was migrated",
            dir.display()
        );
    }
    let shown = format!("{target:?}");
    let dest = PgStore::open(target, PgMode::Reader)
        .await
        .with_context(|| format!("opening the store {shown}"))?;
    let node = config.gateway.node_id();
    let (mut copied, mut skipped, mut records) = (0, 0, 0);
    for summary in source.sessions().await? {
        let chain = source.session_records(&summary.id).await?;
        match dest.import(&summary, &chain, &node).await? {
            sluice_store::Imported::Copied => copied += 1,
            sluice_store::Imported::AlreadyThere => skipped += 1,
        }
        if dest.session_records(&summary.id).await? != chain {
            anyhow::bail!(
                "session {}: the copy in {shown} differs from the source",
                summary.id
            );
        }
        records += chain.len();
    }
    let report = dest.verify().await?;
    if let Some(b) = report.first_break {
        anyhow::bail!("{shown} does not verify after the migration: {b}");
    }
    println!(
        "store: {copied} sessions copied, {skipped} already there ({records} records) from {} to {shown}; every chain compared and verified ({} sessions in the store)",
        dir.display(),
        report.sessions
    );
    Ok(())
}
