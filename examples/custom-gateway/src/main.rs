//! A gateway assembled from Sluice's library crates, the way a platform team
//! would, with something of its own at each stage of the stack:
//! - **authentication**: its own service keys for batch jobs
//!   (`CUSTOM_GATEWAY_SERVICE_KEYS`), next to core's gateway tokens;
//! - **policy**: a Tower layer of its own (a per-session command rate limit)
//!   in every command's path, next to the configured `[[rules]]`;
//! - **masking**: its own masker (employee badge numbers) wrapping the
//!   configured `[masking]`, reaching PostgreSQL, SSH and HTTP alike;
//! - **recording**: its own audit tap in front of the embedded store.
//!
//! It serves the PostgreSQL, SSH and HTTP listeners the config names, through
//! core's listener contract (connection caps, graceful drain on Ctrl-C/SIGTERM).
//!
//! Run: `cargo run -p custom-gateway -- examples/quickstart.toml`

mod audit_tap;
mod badge_masker;
mod rate_limit;
mod service_keys;

use anyhow::{Context, Result};
use sluice_core::masking::{EngineMasker, NoMasking, ResponseMasker};
use sluice_core::{Config, Gateway, GatewayBuilder};
use sluice_store::{Mode, SqliteStore};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let path = std::env::args()
        .nth(1)
        .context("usage: custom-gateway CONFIG.toml")?;
    let config = Config::load(path.as_ref())?;
    let store = Arc::new(SqliteStore::open(
        &config.gateway.state_dir,
        Mode::Writer(config.gateway.audit_sync),
    )?);
    let masker = badge_masker::BadgeMasker::new(configured_masker(&config)?);
    let listen = config.listen.clone();
    let mut builder = GatewayBuilder::new(config, store)
        // Our own recording stage: every audit record is also tapped.
        .recording(|store| Arc::new(audit_tap::AuditTap::new(store)));
    if let Some(keys) = service_keys::ServiceKeys::from_env()? {
        builder = builder.authenticator(Arc::new(keys));
    }
    let gateway = Arc::new(
        builder
            // The match keys for [[rules]]: SQL, HTTP, shell and SSH.
            .match_key(sluice_postgres::sql_match_key())
            .match_key(sluice_http::http_match_key())
            .match_key(sluice_shell::shell_match_key())
            .match_key(sluice_ssh::ssh_match_key())
            // The connection kinds we serve, each checked by its crate.
            .connection_kind(
                sluice_postgres::settings::KIND,
                sluice_postgres::settings::KEYS,
                sluice_postgres::settings::validate,
            )
            .connection_kind(
                sluice_ssh::settings::KIND,
                sluice_ssh::settings::KEYS,
                sluice_ssh::settings::validate,
            )
            .connection_kind(
                sluice_http::settings::KIND,
                sluice_http::settings::HTTP_KEYS,
                sluice_http::settings::validate,
            )
            // Our own policy: at most 20 commands per second per session,
            // audited like every other decision.
            .layer(rate_limit::RateLimitLayer::new(20, Duration::from_secs(1)))
            .masker(Arc::new(masker))
            .build()?,
    );
    let mut listeners = tokio::task::JoinSet::new();
    if let Some(addr) = listen.postgres {
        let server = sluice_postgres::PostgresServer::new(gateway.clone())?;
        let listener = bind(addr, "PostgreSQL").await?;
        listeners.spawn(async move { server.serve(listener).await.map_err(anyhow::Error::from) });
    }
    if let Some(addr) = listen.ssh {
        let server = sluice_ssh::SshServer::new(gateway.clone())?;
        let listener = bind(addr, "SSH").await?;
        listeners.spawn(async move { server.serve(listener).await.map_err(anyhow::Error::from) });
    }
    if let Some(addr) = listen.http {
        let server = sluice_http::HttpServer::new(gateway.clone(), sluice_http::default_flavors());
        let listener = bind(addr, "HTTP").await?;
        listeners.spawn(async move { server.serve(listener).await.map_err(anyhow::Error::from) });
    }
    anyhow::ensure!(
        !listeners.is_empty(),
        "the config names no postgres, ssh or http listener"
    );
    tracing::info!(message = "Custom gateway ready.");
    tokio::select! {
        Some(Ok(Err(e))) = listeners.join_next() => return Err(e),
        _ = tokio::signal::ctrl_c() => {}
        _ = terminated() => {}
    }
    drain(&gateway, listen.drain_timeout.0).await;
    // Sessions still on the pinned threads end there and record their ends.
    tokio::task::spawn_blocking(move || gateway.stop_pinned()).await?;
    Ok(())
}

/// The configured `[masking]` as core's masker, or none.
fn configured_masker(config: &Config) -> Result<Arc<dyn ResponseMasker>> {
    let key = config
        .masking
        .hash_key
        .as_ref()
        .map(|k| k.resolve())
        .transpose()?;
    let engine = sluice_core::masking::compile(&config.masking, key.as_deref().map(str::as_bytes))?;
    Ok(if engine.is_active() {
        Arc::new(EngineMasker::new(engine).with_exempt_groups(config.masking.exempt_groups.clone()))
    } else {
        Arc::new(NoMasking)
    })
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} listener on {addr}"))?;
    tracing::info!(message = "Listener ready.", protocol = what, addr = %listener.local_addr()?);
    Ok(listener)
}

async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            term.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

async fn drain(gateway: &Gateway, grace: Duration) {
    let report = gateway.drain(grace).await;
    tracing::info!(
        message = "Drained.",
        ended = report.ended,
        left = report.left
    );
}
