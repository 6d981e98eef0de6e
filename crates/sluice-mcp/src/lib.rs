//! Sluice as an MCP server (Model Context Protocol): every connection the
//! caller may open, as tools named `CONNECTION.tool`.
//!
//! The listener (`[listen] mcp`, Streamable HTTP over HTTPS at `/mcp`)
//! authenticates each request's bearer token with `Gateway::authenticate`
//! (gateway tokens and OIDC access tokens, as every listener accepts them)
//! and answers a missing or refused token with 401 and RFC 9728
//! protected-resource metadata. A tool call then runs as a native client of
//! the gateway's own listener for its connection (PostgreSQL today), on
//! loopback and with the caller's own token: admission, rules, approvals,
//! write-ahead recording and masking are the ones every psql user goes
//! through, by construction. This crate makes no security decision.
//!
//! `stdio` bridges `sluice mcp` (an MCP server on stdin/stdout for local
//! agents) to that listener with the user's token.

pub mod http_tool;
pub mod kube_tool;
pub mod pg;
pub mod server;
pub mod ssh_tool;
pub mod stdio;
pub mod tools;
pub mod upstream;
pub mod upstream_policy;
mod upstream_session;

pub use server::McpServer;
pub use tools::{Caller, SluiceTools};
pub use upstream_policy::mcp_match_key;

/// This crate's errors.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error(transparent)]
    Tls(#[from] sluice_core::tls::TlsError),
    /// The stdio bridge could not reach or talk to the gateway.
    #[error("{0}")]
    Bridge(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests;
