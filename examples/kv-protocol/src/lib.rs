//! An example protocol crate: a small line-based key-value protocol, plugged
//! into Sluice from outside `sluice-core` — the shape every protocol crate
//! has. It contributes:
//! - a connection kind, `kv`, with its own typed settings
//!   (`[connections.options]`, validated with errors that name file, key and
//!   line) — [`register`];
//! - a match key for `[[rules]]`, `kv = ["DEL *", "FLUSH*"]` — [`policy`];
//! - a listener on core's listener contract (`[listen.protocols] kv = …`),
//!   whose sessions go through core's one admission path by implementing
//!   the shared `Session` trait — [`KvServer`], [`session`].
//!
//! The wire protocol: the client's first line is `AUTH <connection> <token>`;
//! then one command per line (`GET key`, `SET key value`, `DEL key`,
//! `KEYS`), each answered by one line (`+…` or `-ERR …`). The gateway logs in
//! to the upstream with `AUTH <password>`, the gateway-held secret.

pub mod policy;
pub mod session;

use serde::Deserialize;
use sluice_core::config::{ConnectionConfig, ConnectionKind, Secret};
use sluice_core::{Gateway, GatewayBuilder, Protocol};
use std::sync::Arc;
use tokio::net::TcpListener;

/// The protocol, as sessions and audit records name it.
pub const PROTOCOL: Protocol = Protocol::new("kv");
/// The connection kind (`kind = "kv"`).
pub const KIND: ConnectionKind = ConnectionKind::of(PROTOCOL);
/// The longest line either side may send.
pub const MAX_LINE: usize = 64 * 1024;

/// A `kv` connection's own settings: `[connections.options]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvOptions {
    /// The gateway-held password the upstream expects in `AUTH`.
    pub password: Option<Secret>,
}

impl KvOptions {
    /// Reads a connection's options; the error names the offending key
    /// under the connection (`options.password`).
    pub fn of(connection: &ConnectionConfig) -> Result<KvOptions, (String, String)> {
        sluice_core::toml::Value::Table(connection.options.clone())
            .try_into()
            .map_err(|e: sluice_core::toml::de::Error| {
                ("options".to_string(), e.message().to_string())
            })
    }
}

/// Checks a `kv` connection: an upstream `host:port` and valid options.
pub fn validate(connection: &ConnectionConfig) -> Result<(), (String, String)> {
    KvOptions::of(connection)?;
    connection.require_host_port()
}

/// Adds the `kv` kind and its match key to a gateway being assembled.
pub fn register(builder: GatewayBuilder) -> GatewayBuilder {
    builder
        // No keys of its own beside core's: its settings are `options`.
        .connection_kind(KIND, &[], validate)
        .match_key(policy::kv_match_key())
}

/// The `kv` listener.
pub struct KvServer {
    gateway: Arc<Gateway>,
}

impl KvServer {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        KvServer { gateway }
    }

    /// Accepts clients through core's listener contract until the gateway
    /// drains; each session is admitted by `Gateway::serve`.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        let gateway = self.gateway;
        gateway
            .listener(listener, "kv")
            .serve(move |tcp, peer| {
                let gateway = gateway.clone();
                async move {
                    let session = session::KvSession::new(tcp);
                    if let Err(e) = gateway.serve(session, PROTOCOL, &peer.to_string()).await {
                        tracing::info!(message = "kv session ended with an error.", client = %peer, error = %e);
                    }
                }
            })
            .await
    }
}
