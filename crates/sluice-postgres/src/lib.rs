//! PostgreSQL for Sluice: a listener that speaks the PostgreSQL wire protocol
//! to clients (psql, libpq, JDBC, psycopg, …), authenticates them with a token
//! in the password field, and relays each session to the upstream with the
//! gateway-held credential, sending every statement through the core pipeline.
//!
//! This crate translates; it makes no security decision.

mod catalog;
mod client;
mod frame;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod hazard;
mod policy;
mod relay;
pub mod settings;
pub mod sql;
mod upstream;
mod wire;

pub use frame::{
    split_message_charged, Charge, FrameError, PartialBudget, DEFAULT_PARTIAL_BUDGET,
    MAX_BACKEND_MESSAGE, MAX_FRONTEND_MESSAGE,
};
pub use policy::sql_match_key;
pub use settings::PostgresSettings;
pub use upstream::FORWARDED_PARAMETERS;

use sluice_core::sync::MutexExt;
use sluice_core::SessionError;
use sluice_core::{Gateway, Protocol};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use upstream::UpstreamTarget;

/// How long a client may take from TCP connect to its startup message.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Any client or upstream transport (TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}
pub type BoxedStream = Box<dyn Io>;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("client: {0}")]
    Client(String),
    #[error("client i/o: {0}")]
    Io(std::io::Error),
    #[error("upstream: {0}")]
    Upstream(String),
    #[error("upstream refused the gateway's credential: {0}")]
    UpstreamRefused(String),
    #[error("gateway credential unavailable: {0}")]
    Credential(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl PgError {
    /// What a client may read: whose side failed, without upstream details.
    pub fn client_message(&self) -> String {
        match self {
            PgError::Client(m) => m.clone(),
            PgError::Io(_) => "connection error".into(),
            PgError::Upstream(_) => "the upstream database is unreachable or failed".into(),
            PgError::UpstreamRefused(_) => "the upstream refused the gateway's credential".into(),
            PgError::Credential(_) | PgError::Config(_) => {
                "the gateway is misconfigured for this connection".into()
            }
            PgError::Internal(_) => "internal gateway error".into(),
        }
    }
}

/// State shared by every session on one listener.
pub struct Shared {
    tls: Option<tokio_rustls::TlsAcceptor>,
    allow_plaintext: bool,
    cancels: CancelRegistry,
    /// Catalog caches by connection name (for masking by source table).
    catalogs: Mutex<HashMap<String, Arc<catalog::Catalog>>>,
}

impl Shared {
    fn catalog_for(
        &self,
        connection: &sluice_core::config::ConnectionConfig,
    ) -> Arc<catalog::Catalog> {
        let mut map = self.catalogs.locked();
        map.entry(connection.name.clone())
            .or_insert_with(|| Arc::new(catalog::Catalog::new(connection.clone())))
            .clone()
    }
}

/// Maps the keys the gateway gave clients to upstream backends. Clients never
/// see upstream keys, so a guessed key cannot cancel another tenant's query.
#[derive(Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<(i32, i32), CancelTarget>>,
}

/// An upstream backend as a CancelRequest must address it.
#[derive(Clone)]
struct CancelTarget {
    upstream: UpstreamTarget,
    pid: i32,
    secret: Vec<u8>,
    /// Wakes the session: a command still waiting for its decision (held
    /// for approval) is withdrawn rather than run later.
    session: Arc<tokio::sync::Notify>,
}

pub struct CancelGuard<'a> {
    registry: &'a CancelRegistry,
    key: (i32, i32),
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        self.registry.map.locked().remove(&self.key);
    }
}

impl CancelRegistry {
    fn register(
        &self,
        target: UpstreamTarget,
        pid: i32,
        secret: Vec<u8>,
        session: Arc<tokio::sync::Notify>,
    ) -> ((i32, i32), CancelGuard<'_>) {
        let mut map = self.map.locked();
        let key = loop {
            let b = *uuid::Uuid::new_v4().as_bytes();
            let key = (
                i32::from_be_bytes([b[0] & 0x7f, b[1], b[2], b[3]]),
                i32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            );
            if !map.contains_key(&key) {
                break key;
            }
        };
        map.insert(
            key,
            CancelTarget {
                upstream: target,
                pid,
                secret,
                session,
            },
        );
        (
            key,
            CancelGuard {
                registry: self,
                key,
            },
        )
    }

    fn lookup(&self, key: (i32, i32)) -> Option<CancelTarget> {
        self.map.locked().get(&key).cloned()
    }
}

/// The PostgreSQL listener.
pub struct PostgresServer {
    gateway: Arc<Gateway>,
    shared: Arc<Shared>,
}

impl PostgresServer {
    /// Builds the listener's TLS from the gateway config (`[tls]` or a generated certificate).
    pub fn new(gateway: Arc<Gateway>) -> Result<Self, PgError> {
        let config = gateway.config();
        let tls = sluice_core::tls::server_config(&config, &[b"postgresql"])
            .map_err(|e| PgError::Config(e.to_string()))?;
        let shared = Arc::new(Shared {
            tls: Some(tokio_rustls::TlsAcceptor::from(tls)),
            allow_plaintext: config.gateway.allow_plaintext,
            cancels: CancelRegistry::default(),
            catalogs: Mutex::new(HashMap::new()),
        });
        Ok(PostgresServer { gateway, shared })
    }

    /// Accepts clients until the listener fails; each runs in its own task.
    /// Stops accepting when the gateway drains.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        let listener = self.gateway.listener(listener, "postgres");
        let PostgresServer { gateway, shared } = self;
        listener
            .serve(move |tcp, peer| {
                let (gateway, shared) = (gateway.clone(), shared.clone());
                async move {
                    if let Err(e) = handle_client(tcp, peer, gateway, shared).await {
                        tracing::info!(message = "PostgreSQL client session ended with an error.", client = %peer, error = %e);
                    }
                }
            })
            .await
    }
}

async fn handle_client(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    gateway: Arc<Gateway>,
    shared: Arc<Shared>,
) -> Result<(), SessionError> {
    let accepted = tokio::time::timeout(STARTUP_TIMEOUT, client::accept(tcp, peer, shared.clone()))
        .await
        .map_err(|_| SessionError::Client("startup timed out".into()))?
        .map_err(|e| SessionError::client("the startup", e))?;
    match accepted {
        client::Accepted::Cancel {
            pid,
            secret,
            mut stream,
        } => {
            let result = match shared.cancels.lookup((pid, secret)) {
                Some(t) => {
                    tracing::info!(message = "Forwarding a cancel request.", client = %peer);
                    t.session.notify_waiters();
                    upstream::cancel(&t.upstream, t.pid, &t.secret)
                        .await
                        .map_err(|e| SessionError::upstream("forwarding a cancel request", e))
                }
                None => {
                    tracing::warn!(message = "Cancel request with an unknown key.", client = %peer);
                    Ok(())
                }
            };
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
            result
        }
        client::Accepted::Session(session) => gateway
            .serve(session, Protocol::Postgres, &peer.to_string())
            .await
            .inspect_err(|e| sluice_core::metrics::session_failed(Protocol::Postgres, e)),
    }
}

/// Replays bytes already read before handing the stream to TLS.
pub(crate) struct Rewind {
    prefix: Vec<u8>,
    inner: BoxedStream,
}

impl Rewind {
    pub(crate) fn new(prefix: Vec<u8>, inner: BoxedStream) -> Self {
        Rewind { prefix, inner }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.drain(..n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
