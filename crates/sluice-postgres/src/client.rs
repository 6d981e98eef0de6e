//! The client side of the handshake: SSL/GSS negotiation, TLS, the startup
//! message, CancelRequest, and the cleartext password that carries the token.

use crate::frame::{split_message, split_startup_packet, MAX_STARTUP_PACKET};
use crate::relay::Relay;
use crate::upstream::{self, UpstreamTarget};
use crate::{wire, BoxedStream, PgError, Shared};
use async_trait::async_trait;
use bytes::BytesMut;
use pgwire::messages::startup::{PasswordMessageFamily, Startup};
use pgwire::messages::{DecodeContext, Message};
use sluice_core::session::{
    AfterRefusal, Refusal, Session, SessionError, SessionHandle, SessionRequest,
};
use sluice_core::Credentials;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SSL_REQUEST: i32 = 80877103;
const GSSENC_REQUEST: i32 = 80877104;
const CANCEL_REQUEST: i32 = 80877102;
const PROTOCOL_3: i32 = 196608;
/// Connect, TLS, startup and authentication with the upstream, all together.
const UPSTREAM_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// What an accepted TCP connection turned out to be.
pub enum Accepted {
    Cancel {
        pid: i32,
        secret: i32,
        /// Closed cleanly (TLS close_notify) once the cancel is handled;
        /// libpq treats an abrupt TLS close as a failed cancel.
        stream: BoxedStream,
    },
    Session(PgSession),
}

/// A client that has sent its startup message.
pub struct PgSession {
    stream: BoxedStream,
    buf: BytesMut,
    params: BTreeMap<String, String>,
    shared: Arc<Shared>,
}

/// Reads the startup phase: negotiates TLS, answers GSS with "no", and returns
/// either a cancel request or a session awaiting authentication.
pub async fn accept(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> Result<Accepted, PgError> {
    tcp.set_nodelay(true).map_err(PgError::Io)?;
    accept_stream(Box::new(tcp), peer, shared).await
}

/// [`accept`] on any stream (the fuzz targets feed it from memory).
pub(crate) async fn accept_stream(
    mut stream: BoxedStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> Result<Accepted, PgError> {
    let mut buf = BytesMut::with_capacity(1024);
    let mut tls = false;
    loop {
        // A TLS ClientHello first means direct TLS (PostgreSQL 17 `sslnegotiation=direct`).
        if !tls && buf.first() == Some(&0x16) {
            let Some(acceptor) = shared.tls.clone() else {
                return Err(PgError::Client(
                    "direct TLS requested but the listener has no TLS".into(),
                ));
            };
            stream = upgrade(stream, &buf, acceptor, true).await?;
            buf.clear();
            tls = true;
            continue;
        }
        let Some(packet) =
            split_startup_packet(&mut buf).map_err(|e| PgError::Client(e.to_string()))?
        else {
            let n = stream.read_buf(&mut buf).await.map_err(PgError::Io)?;
            if n == 0 {
                return Err(PgError::Client("closed during startup".into()));
            }
            if buf.len() > MAX_STARTUP_PACKET + 8 {
                return Err(PgError::Client("startup packet too large".into()));
            }
            continue;
        };
        let code = i32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        match code {
            SSL_REQUEST if !tls => {
                // Bytes sent after SSLRequest but before the handshake were
                // sent in the clear and must not be trusted (CVE-2021-3935).
                if !buf.is_empty() {
                    return Err(PgError::Client("data sent before the TLS handshake".into()));
                }
                match shared.tls.clone() {
                    Some(acceptor) => {
                        stream.write_all(b"S").await.map_err(PgError::Io)?;
                        stream = upgrade(stream, &buf, acceptor, false).await?;
                        tls = true;
                    }
                    None => stream.write_all(b"N").await.map_err(PgError::Io)?,
                }
            }
            GSSENC_REQUEST if !tls => stream.write_all(b"N").await.map_err(PgError::Io)?,
            CANCEL_REQUEST if packet.len() == 16 => {
                let pid = i32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
                let secret = i32::from_be_bytes([packet[12], packet[13], packet[14], packet[15]]);
                return Ok(Accepted::Cancel {
                    pid,
                    secret,
                    stream,
                });
            }
            c if c >> 16 == 3 => {
                let mut packet = packet;
                let startup = Startup::decode(&mut packet, &DecodeContext::default())
                    .map_err(|e| PgError::Client(format!("bad startup message: {e}")))?
                    .ok_or_else(|| PgError::Client("truncated startup message".into()))?;
                if !tls {
                    if !peer.ip().is_loopback() && !shared.allow_plaintext {
                        let mut out = BytesMut::new();
                        wire::error(
                            &mut out,
                            true,
                            wire::SQLSTATE_NOT_AUTHORIZED,
                            "sluice: this gateway requires TLS (use sslmode=require or stronger)",
                            None,
                            None,
                        );
                        let _ = stream.write_all(&out).await;
                        return Err(PgError::Client("plaintext refused".into()));
                    }
                    if !peer.ip().is_loopback() {
                        tracing::warn!(message = "A client sent its token without TLS.", client = %peer);
                    }
                }
                if c != PROTOCOL_3 {
                    // We speak 3.0; tell a newer client so (NegotiateProtocolVersion).
                    let unsupported: Vec<&String> = startup
                        .parameters
                        .keys()
                        .filter(|k| k.starts_with("_pq_."))
                        .collect();
                    let mut out = BytesMut::new();
                    out.extend_from_slice(b"v");
                    let body_len = 8 + unsupported.iter().map(|s| s.len() + 1).sum::<usize>();
                    out.extend_from_slice(&((body_len + 4) as i32).to_be_bytes());
                    // The newest version we support, in full (3.0), as PostgreSQL sends it.
                    out.extend_from_slice(&PROTOCOL_3.to_be_bytes());
                    out.extend_from_slice(&(unsupported.len() as i32).to_be_bytes());
                    for s in unsupported {
                        out.extend_from_slice(s.as_bytes());
                        out.extend_from_slice(&[0]);
                    }
                    stream.write_all(&out).await.map_err(PgError::Io)?;
                }
                if let Some(why) = startup
                    .parameters
                    .iter()
                    .find_map(|(k, v)| crate::hazard::lexing_hazard(k, v))
                {
                    let mut out = BytesMut::new();
                    wire::error(
                        &mut out,
                        true,
                        wire::SQLSTATE_NOT_AUTHORIZED,
                        &format!("sluice: unsupported session setting: {why}"),
                        None,
                        None,
                    );
                    let _ = stream.write_all(&out).await;
                    return Err(PgError::Client(why));
                }
                if startup.parameters.contains_key("replication") {
                    let mut out = BytesMut::new();
                    wire::error(
                        &mut out,
                        true,
                        wire::SQLSTATE_NOT_AUTHORIZED,
                        "sluice: replication connections are not supported through the gateway",
                        None,
                        None,
                    );
                    let _ = stream.write_all(&out).await;
                    return Err(PgError::Client("replication refused".into()));
                }
                return Ok(Accepted::Session(PgSession {
                    stream,
                    buf,
                    params: startup.parameters,
                    shared,
                }));
            }
            other => {
                let mut out = BytesMut::new();
                wire::error(
                    &mut out,
                    true,
                    wire::SQLSTATE_PROTOCOL,
                    &format!("sluice: unsupported startup code {other}"),
                    None,
                    None,
                );
                let _ = stream.write_all(&out).await;
                return Err(PgError::Client(format!("unsupported startup code {other}")));
            }
        }
    }
}

async fn upgrade(
    stream: BoxedStream,
    early: &[u8],
    acceptor: tokio_rustls::TlsAcceptor,
    direct: bool,
) -> Result<BoxedStream, PgError> {
    let io = crate::Rewind::new(early.to_vec(), stream);
    let tls = acceptor
        .accept(io)
        .await
        .map_err(|e| PgError::Client(format!("TLS handshake failed: {e}")))?;
    if direct && tls.get_ref().1.alpn_protocol() != Some(b"postgresql") {
        return Err(PgError::Client(
            "direct TLS without ALPN \"postgresql\"".into(),
        ));
    }
    Ok(Box::new(tls))
}

impl PgSession {
    async fn flush(&mut self, out: &mut BytesMut) -> Result<(), SessionError> {
        self.stream.write_all(out).await?;
        self.stream.flush().await?;
        out.clear();
        Ok(())
    }
}

#[async_trait]
impl Session for PgSession {
    async fn credentials(&mut self) -> Result<SessionRequest, SessionError> {
        let user = self.params.get("user").cloned().unwrap_or_default();
        // libpq defaults the database to the user name.
        let connection = self
            .params
            .get("database")
            .filter(|d| !d.is_empty())
            .cloned()
            .unwrap_or_else(|| user.clone());
        let mut out = BytesMut::new();
        wire::ask_cleartext_password(&mut out);
        self.flush(&mut out).await?;
        let msg = loop {
            if let Some(m) = split_message(&mut self.buf, MAX_STARTUP_PACKET)
                .map_err(|e| SessionError::client("reading the password message", e))?
            {
                break m;
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(SessionError::Client(
                    "closed before sending a password".into(),
                ));
            }
        };
        if msg.tag != b'p' {
            return Err(SessionError::Client(format!(
                "expected a password message, got {:?}",
                msg.tag as char
            )));
        }
        let mut bytes = msg.bytes;
        let token = PasswordMessageFamily::decode(&mut bytes, &DecodeContext::default())
            .ok()
            .flatten()
            .and_then(|p| p.into_password().ok())
            .map(|p| p.password)
            .ok_or_else(|| SessionError::Client("malformed password message".into()))?;
        Ok(SessionRequest {
            credentials: Credentials { user, token },
            connection,
        })
    }

    async fn refuse(&mut self, refusal: Refusal) -> Result<AfterRefusal, SessionError> {
        let (code, hint) = match &refusal {
            Refusal::Authentication(_) => (
                wire::SQLSTATE_BAD_TOKEN,
                Some("Pass a valid, unexpired Sluice token as the password (sluice token issue, or your identity provider)."),
            ),
            Refusal::Access(_) => (wire::SQLSTATE_NOT_AUTHORIZED, None),
            Refusal::Unavailable(_) => (wire::SQLSTATE_UPSTREAM, None),
        };
        let mut out = BytesMut::new();
        wire::error(&mut out, true, code, &refusal.client_message(), None, hint);
        self.flush(&mut out).await?;
        let _ = self.stream.shutdown().await;
        Ok(AfterRefusal::Close)
    }

    async fn run(mut self, handle: SessionHandle) -> Result<(), SessionError> {
        let conn = handle.shared_connection();
        let target = UpstreamTarget::for_connection(&conn);
        let upstream = match target {
            // One deadline for the whole upstream handshake: an upstream that
            // trickles bytes must not hold the client indefinitely.
            Ok(t) => match tokio::time::timeout(
                UPSTREAM_HANDSHAKE_TIMEOUT,
                upstream::connect(&conn, &t, &self.params),
            )
            .await
            {
                Ok(r) => r.map(|u| (u, t)),
                Err(_) => Err(PgError::Upstream("the upstream handshake timed out".into())),
            },
            Err(e) => Err(e),
        };
        let (mut upstream, target) = match upstream {
            Ok(u) => u,
            Err(e) => {
                // Details go to the log; the client gets a redacted sentence.
                tracing::error!(message = "Upstream connection failed.", connection = %conn.name, error = %e);
                handle.set_end_reason(format!(
                    "upstream connection failed: {}",
                    e.client_message()
                ));
                let mut out = BytesMut::new();
                wire::error(
                    &mut out,
                    true,
                    wire::SQLSTATE_UPSTREAM,
                    &format!(
                        "sluice: cannot open connection {:?}: {}",
                        conn.name,
                        e.client_message()
                    ),
                    None,
                    Some("This is a gateway-side problem; tell the Sluice administrator."),
                );
                self.flush(&mut out).await?;
                return Ok(());
            }
        };
        // The startup parameters went upstream: not kept for the session's life.
        self.params.clear();
        let shared = self.shared.clone();
        let cancel = Arc::new(tokio::sync::Notify::new());
        let canceller = crate::relay::Canceller {
            target: target.clone(),
            pid: upstream.backend_pid,
            secret: upstream.backend_secret.clone(),
        };
        let (key, _guard) = shared.cancels.register(
            target,
            upstream.backend_pid,
            upstream.backend_secret.clone(),
            cancel.clone(),
        );
        let mut out = BytesMut::new();
        wire::auth_ok(&mut out);
        // Taken, not copied: what stays in scope here stays for the session's life.
        out.extend_from_slice(&std::mem::take(&mut upstream.greeting));
        wire::backend_key(&mut out, key.0, key.1);
        wire::ready(&mut out, b'I');
        self.flush(&mut out).await?;
        drop(out);
        let catalog = handle
            .masker()
            .wants_table_names()
            .then(|| self.shared.catalog_for(handle.connection()));
        let resolver = Some(self.shared.catalog_for(handle.connection()));
        Relay::new(
            handle,
            self.stream,
            self.buf,
            upstream,
            catalog,
            resolver,
            cancel,
            Some(canceller),
        )
        .run()
        .await
    }
}
