//! The listener: TLS (HTTP/1.1 and HTTP/2 by ALPN), limits, and one
//! [`ClientConn`] per client connection, which owns that connection's sessions.

use crate::flavor::{Body, FlavorRegistry};
use crate::problem::{full, problem_json, Problem, ProblemKind};
use crate::proxy::ClientConn;
use crate::upstream::Upstream;
use crate::{HttpError, Limits};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sluice_core::config::ConnectionConfig;
use sluice_core::glob::Glob;
use sluice_core::sync::MutexExt;
use sluice_core::Gateway;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// What every client connection shares.
pub(crate) struct Shared {
    pub gateway: Arc<Gateway>,
    pub flavors: FlavorRegistry,
    pub limits: Limits,
    /// `hosts` routing: host glob → connection name, in config order.
    pub hosts: Vec<(Glob, String)>,
    /// Per connection name: the configuration the clients were built for
    /// (its `Debug` text) and the clients.
    upstreams: Mutex<HashMap<String, (String, Arc<Upstream>)>>,
}

impl Shared {
    pub fn new(gateway: Arc<Gateway>, flavors: FlavorRegistry, limits: Limits) -> Self {
        let hosts = gateway
            .config()
            .connections
            .iter()
            .filter(|c| flavors.get(c.kind).is_some())
            .flat_map(|c| {
                let hosts = match crate::settings::HttpSettings::of(c) {
                    Ok(s) => s.hosts,
                    Err((key, message)) => {
                        // Its kind's validator let it through: not routed by host.
                        tracing::error!(message = "A connection's hosts cannot be read; it is reachable by path only.", connection = %c.name, key = %key, error = %message);
                        Vec::new()
                    }
                };
                hosts
                    .into_iter()
                    .map(|h| (Glob::new(&h), c.name.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        Shared {
            gateway,
            flavors,
            limits,
            hosts,
            upstreams: Mutex::default(),
        }
    }

    /// The connection's upstream clients, built once per configuration of
    /// the connection (pooled across clients): after a reload that changes
    /// the connection (its URL, TLS, timeout), new sessions get new clients,
    /// and the old ones go when the sessions using them end.
    pub fn upstream(
        &self,
        connection: &ConnectionConfig,
        flavor: &dyn crate::Flavor,
    ) -> Result<Arc<Upstream>, Problem> {
        // Secrets are references (env names, files) in the configuration: the
        // identity holds no secret value.
        let identity = format!("{connection:?}");
        {
            let map = self.upstreams.locked();
            if let Some((built_for, u)) = map.get(&connection.name) {
                if *built_for == identity {
                    return Ok(u.clone());
                }
            }
        }
        let built = flavor
            .upstream_tls(connection)
            .and_then(|tls| Upstream::new(connection, tls))
            .map_err(|e| {
                tracing::warn!(message = "The connection's upstream is misconfigured.", connection = %connection.name, error = %e);
                Problem::new(
                    ProblemKind::Unavailable,
                    format!(
                        "connection {:?} cannot reach its upstream: its TLS or URL configuration is invalid; ask a Sluice administrator",
                        connection.name
                    ),
                )
            })?;
        let built = Arc::new(built);
        self.upstreams
            .locked()
            .insert(connection.name.clone(), (identity, built.clone()));
        Ok(built)
    }

    /// The connection a `Host` routes to, if any.
    pub fn route_host(&self, host: &str) -> Option<&str> {
        let host = host.trim_end_matches('.');
        self.hosts
            .iter()
            .find(|(g, _)| g.matches(host))
            .map(|(_, name)| name.as_str())
    }
}

/// Runs the listener.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) -> Result<(), HttpError> {
    let tls = sluice_core::tls::server_config(&shared.gateway.config(), &[b"h2", b"http/1.1"])?;
    let tls = TlsAcceptor::from(tls);
    let listener = shared
        .gateway
        .listener(listener, "http")
        .at_most(shared.limits.max_connections);
    listener
        .serve(move |tcp, peer| {
            let (shared, tls) = (shared.clone(), tls.clone());
            async move {
                if let Err(e) = connection(shared, tls, tcp, peer).await {
                    tracing::debug!(message = "HTTP client connection ended with an error.", client = %peer, error = %e);
                }
            }
        })
        .await?;
    Ok(())
}

/// What a plain-HTTP client on the TLS port reads before the connection closes.
fn plaintext_refusal() -> Vec<u8> {
    let body = serde_json::json!({
        "type": format!("{}tls-required", crate::problem::PROBLEM_TYPE_BASE),
        "title": "TLS required",
        "status": 400,
        "detail": "this Sluice port speaks HTTPS only; use https:// (the gateway's CA is state_dir/tls/ca.crt unless [tls] is configured)",
    })
    .to_string();
    format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        crate::problem::PROBLEM_JSON,
        body.len()
    )
    .into_bytes()
}

async fn connection(
    shared: Arc<Shared>,
    tls: TlsAcceptor,
    mut tcp: TcpStream,
    peer: SocketAddr,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let _ = tcp.set_nodelay(true);
    let limits = shared.limits.clone();
    // A TLS client starts with a handshake record (0x16); anything else is
    // a plain-HTTP client, told in its own protocol to use https.
    let mut first = [0u8; 1];
    let n = tokio::time::timeout(limits.tls_handshake_timeout, tcp.peek(&mut first)).await??;
    if n == 0 {
        return Ok(());
    }
    if first[0] != 0x16 {
        let _ = tcp.write_all(&plaintext_refusal()).await;
        let _ = tcp.shutdown().await;
        return Ok(());
    }
    let stream = tokio::time::timeout(limits.tls_handshake_timeout, tls.accept(tcp)).await??;
    let conn = Arc::new(ClientConn::new(shared, peer));
    let service_conn = conn.clone();
    let service = hyper::service::service_fn(move |req| {
        let conn = service_conn.clone();
        async move { Ok::<_, Infallible>(conn.handle(req).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let serving = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(serving);
    let ended = conn.ended_notify();
    let mut idle_check = tokio::time::interval(limits.idle_timeout.max(Duration::from_secs(1)) / 4);
    loop {
        tokio::select! {
            r = serving.as_mut() => return r,
            _ = ended.notified() => {
                // A session on this connection was ended: finish what is in
                // flight (its bodies are cut by the session's own signal), then close.
                serving.as_mut().graceful_shutdown();
                break;
            }
            _ = idle_check.tick() => {
                // HTTP/1.1 keep-alive and HTTP/2 alike: responses still
                // streaming finish; the connection then closes.
                if conn.idle_for() >= limits.idle_timeout {
                    tracing::debug!(message = "Idle HTTP connection closed.", client = %peer);
                    serving.as_mut().graceful_shutdown();
                    break;
                }
            }
        }
    }
    serving.await
}

/// A problem as a response, for places with no flavor at hand.
pub(crate) fn render_default(problem: &Problem) -> http::Response<Body> {
    problem_json(problem)
}

/// An empty body.
pub(crate) fn empty() -> Body {
    full(bytes::Bytes::new())
}
