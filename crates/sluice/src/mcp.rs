//! `sluice mcp`: the stdio MCP bridge (crates/sluice-mcp/src/stdio.rs), with
//! the address and CA of the configured gateway and the caller's token.

use anyhow::{Context, Result};
use sluice_core::Config;

pub fn run(config: &Config, token: Option<String>, addr: Option<String>) -> Result<()> {
    let token = crate::login::caller_token(token)?;
    let addr = match addr {
        Some(addr) => addr,
        None => crate::approvals::dialable(config.listen.mcp.context(
            "listen.mcp is not set: sluice mcp bridges to the gateway's MCP listener (or pass --addr HOST:PORT)",
        )?)
        .to_string(),
    };
    let ca = match &config.tls {
        Some(tls) => tls.cert.clone(),
        None => sluice_core::tls::generated_paths(&config.gateway.state_dir).0,
    };
    let ca = ca.exists().then_some(ca);
    let bridge = sluice_mcp::stdio::Bridge::new(&addr, ca.as_deref(), token)?;
    crate::compose::runtime()?.block_on(bridge.run())?;
    Ok(())
}
