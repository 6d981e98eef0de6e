//! A gateway assembled from Sluice's library crates, the way a platform team
//! would: the embedded store, the PostgreSQL listener, and one Tower layer of
//! its own (a per-session command rate limit) in every command's path.
//!
//! Run: `cargo run -p custom-gateway -- examples/quickstart.toml`

mod rate_limit;

use anyhow::{Context, Result};
use sluice_core::{Config, GatewayBuilder};
use sluice_store::{Mode, SqliteStore};
use std::sync::Arc;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let path = std::env::args()
        .nth(1)
        .context("usage: custom-gateway CONFIG.toml")?;
    let config = Config::load(path.as_ref())?;
    let addr = config
        .listen
        .postgres
        .context("the config needs listen.postgres")?;
    let store = Arc::new(SqliteStore::open(
        &config.gateway.state_dir,
        Mode::Writer(config.gateway.audit_sync),
    )?);
    let gateway = GatewayBuilder::new(config, store)
        // The SQL match keys (sql, tables, functions, no_where) for [[rules]].
        .match_key(sluice_postgres::sql_match_key())
        // Our own policy: at most 20 commands per second per session,
        // audited like every other decision.
        .layer(rate_limit::RateLimitLayer::new(20, Duration::from_secs(1)))
        .build()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(message = "Custom gateway ready.", %addr);
    sluice_postgres::PostgresServer::new(Arc::new(gateway))?
        .serve(listener)
        .await?;
    Ok(())
}
