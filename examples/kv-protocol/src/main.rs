//! `kv-gateway CONFIG.toml`: a gateway assembled from `sluice-core`, the
//! embedded store and this example protocol crate — no change to core.
//! It serves `[listen.protocols] kv = "host:port"` and stops gracefully on
//! Ctrl-C or SIGTERM.

use anyhow::{Context, Result};
use sluice_core::masking::{EngineMasker, NoMasking, ResponseMasker};
use sluice_core::{Config, GatewayBuilder};
use sluice_example_kv::{register, KvServer};
use sluice_store::{Mode, SqliteStore};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let path = std::env::args()
        .nth(1)
        .context("usage: kv-gateway CONFIG.toml")?;
    let config = Config::load(path.as_ref())?;
    let addr = *config
        .listen
        .protocols
        .get("kv")
        .context("the config needs [listen.protocols] kv = \"host:port\"")?;
    let drain = config.listen.drain_timeout.0;
    let store = Arc::new(SqliteStore::open(
        &config.gateway.state_dir,
        Mode::Writer(config.gateway.audit_sync),
    )?);
    let masker = masker(&config)?;
    let gateway = Arc::new(
        register(GatewayBuilder::new(config, store))
            .masker(masker)
            .build()?,
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the kv listener on {addr}"))?;
    tracing::info!(message = "kv gateway ready.", addr = %listener.local_addr()?);
    let server = tokio::spawn(KvServer::new(gateway.clone()).serve(listener));
    tokio::select! {
        r = server => r??,
        _ = tokio::signal::ctrl_c() => {}
        _ = terminated() => {}
    }
    gateway.drain(drain).await;
    // Sessions still on the pinned threads end there and record their ends.
    tokio::task::spawn_blocking(move || gateway.stop_pinned()).await?;
    Ok(())
}

/// The configured `[masking]`, or none.
fn masker(config: &Config) -> Result<Arc<dyn ResponseMasker>> {
    let key = config
        .masking
        .hash_key
        .as_ref()
        .map(|k| k.resolve())
        .transpose()?;
    let engine = sluice_core::masking::compile(&config.masking, key.as_deref().map(str::as_bytes))?;
    Ok(if engine.is_active() {
        Arc::new(EngineMasker::new(engine))
    } else {
        Arc::new(NoMasking)
    })
}

async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            term.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
