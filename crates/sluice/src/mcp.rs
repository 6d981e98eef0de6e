//! `sluice mcp`: the stdio MCP bridge (crates/sluice-mcp/src/stdio.rs), with
//! the address and CA of the configured gateway and the caller's token.

use anyhow::{Context, Result};
use sluice_core::Config;

pub fn run(config: Option<&Config>, token: Option<String>, addr: Option<String>) -> Result<()> {
    let token = crate::login::caller_token(token)?;
    let addr = match (addr, config) {
        (Some(addr), _) => addr,
        (None, Some(config)) => crate::approvals::dialable(config.listen.mcp.context(
            "listen.mcp is not set: sluice mcp bridges to the gateway's MCP listener (or pass --addr HOST:PORT)",
        )?)
        .to_string(),
        (None, None) => anyhow::bail!(
            "no gateway: pass --config FILE (its listen.mcp) or --addr HOST:PORT"
        ),
    };
    // The gateway's CA from the config; without one, public roots.
    let ca = config
        .map(|config| match &config.tls {
            Some(tls) => tls.cert.clone(),
            None => sluice_core::tls::generated_paths(&config.gateway.state_dir).0,
        })
        .filter(|ca| ca.exists());
    let bridge = sluice_mcp::stdio::Bridge::new(&addr, ca.as_deref(), token)?;
    crate::compose::runtime()?.block_on(bridge.run())?;
    Ok(())
}
