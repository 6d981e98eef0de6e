//! The gateway's leg to the upstream host: key exchange with the pinned
//! host key, login with the gateway-held key or password.

use crate::{PACKET_SIZE, UPSTREAM_TIMEOUT, WINDOW_SIZE};
use russh::client;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use sluice_core::config::ConnectionConfig;
use sluice_core::sync::MutexExt;
use std::sync::{Arc, Mutex};

/// Why the upstream leg failed, as the client may read it (no secrets, no
/// upstream-provided text).
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("the upstream host is unreachable")]
    Unreachable(String),
    #[error("the upstream host did not complete the SSH handshake in time")]
    Timeout,
    #[error("the upstream host's key does not match the pinned host_key (refused; possible interception or a re-keyed host)")]
    HostKeyMismatch { presented: String },
    #[error("the upstream host refused the gateway's credential")]
    Refused,
    #[error("the gateway is misconfigured for this connection")]
    Config(String),
    #[error("the upstream SSH connection failed")]
    Protocol(String),
}

impl UpstreamError {
    /// Details for the log (never sent to the client).
    pub(crate) fn detail(&self) -> String {
        match self {
            UpstreamError::Unreachable(d)
            | UpstreamError::Config(d)
            | UpstreamError::Protocol(d) => d.clone(),
            UpstreamError::HostKeyMismatch { presented } => format!("presented {presented}"),
            other => other.to_string(),
        }
    }
}

/// Parses a `known_hosts`-style pin: `ssh-ed25519 AAAA…`, optionally with
/// host names before it or a comment after it.
pub(crate) fn parse_pin(text: &str) -> Result<PublicKey, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    for pair in words.windows(2) {
        if let Ok(key) = PublicKey::from_openssh(&format!("{} {}", pair[0], pair[1])) {
            return Ok(key);
        }
    }
    Err("host_key is not a public key line such as \"ssh-ed25519 AAAA…\"".into())
}

/// Remote forwards the client asked for and the policy allowed; the
/// upstream may only open forwarded channels for these.
pub(crate) type RemoteForwards = Arc<Mutex<Vec<(String, u32)>>>;

pub(crate) struct UpstreamHandler {
    pin: PublicKey,
    closed: tokio::sync::watch::Receiver<bool>,
    mismatch: Arc<Mutex<Option<String>>>,
    /// The client's connection, to open forwarded-tcpip channels on.
    client: Option<russh::server::Handle>,
    forwards: RemoteForwards,
}

impl client::Handler for UpstreamHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let presented = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            // A certificate is not the pinned key: pinning is by key.
            PublicKeyOrCertificate::Certificate(_) => {
                *self.mismatch.locked() = Some("an SSH certificate".into());
                return Ok(false);
            }
        };
        if presented.key_data() == self.pin.key_data() {
            return Ok(true);
        }
        {
            let mut m = self.mismatch.locked();
            *m = Some(format!(
                "{} {}",
                presented.algorithm(),
                presented.fingerprint(HashAlg::Sha256)
            ));
        }
        Ok(false)
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: russh::Channel<client::Msg>,
        connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: russh::client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let requested = self
            .forwards
            .lock()
            .map(|f| {
                f.iter()
                    .any(|(a, p)| a == connected_address && *p == connected_port)
            })
            .unwrap_or(false);
        let Some(client) = self.client.clone().filter(|_| requested) else {
            // Not a forward this gateway asked for (fail closed).
            drop(reply);
            return Ok(());
        };
        let (addr, orig) = (
            connected_address.to_string(),
            originator_address.to_string(),
        );
        let closed = self.closed.clone();
        tokio::spawn(async move {
            match client
                .channel_open_forwarded_tcpip(addr, connected_port, orig, originator_port)
                .await
            {
                Ok(to_client) => {
                    reply.accept().await;
                    crate::forward::pump(to_client, channel, closed).await;
                }
                Err(e) => {
                    tracing::info!(message = "The client refused a forwarded connection.", error = %e);
                    drop(reply);
                }
            }
        });
        Ok(())
    }
}

/// A logged-in upstream connection.
pub(crate) struct Upstream {
    pub handle: client::Handle<UpstreamHandler>,
    pub forwards: RemoteForwards,
}

/// Connects, verifies the pinned host key and logs in, within one deadline.
pub(crate) async fn connect(
    conn: &ConnectionConfig,
    client: russh::server::Handle,
    closed: tokio::sync::watch::Receiver<bool>,
) -> Result<Upstream, UpstreamError> {
    match tokio::time::timeout(UPSTREAM_TIMEOUT, connect_inner(conn, client, closed)).await {
        Ok(r) => r,
        Err(_) => Err(UpstreamError::Timeout),
    }
}

async fn connect_inner(
    conn: &ConnectionConfig,
    client: russh::server::Handle,
    closed: tokio::sync::watch::Receiver<bool>,
) -> Result<Upstream, UpstreamError> {
    let settings = crate::SshSettings::of(conn)
        .map_err(|(key, message)| UpstreamError::Config(format!("{key}: {message}")))?;
    let pin = parse_pin(&settings.host_key).map_err(UpstreamError::Config)?;
    let user = settings.user.clone();
    let key = match &settings.private_key {
        Some(secret) => {
            let text = secret
                .resolve()
                .map_err(|e| UpstreamError::Config(e.to_string()))?;
            Some(
                russh::keys::decode_secret_key(&text, None)
                    .map_err(|e| UpstreamError::Config(format!("private_key: {e}")))?,
            )
        }
        None => None,
    };
    let password = match &settings.password {
        Some(secret) => Some(
            secret
                .resolve()
                .map_err(|e| UpstreamError::Config(e.to_string()))?,
        ),
        None => None,
    };
    let config = Arc::new(client::Config {
        client_id: russh::SshId::Standard("SSH-2.0-Sluice".into()),
        // On this leg the gateway chooses: AES-GCM first, which CPUs with
        // AES instructions run several times faster than ChaCha20-Poly1305.
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Borrowed(&[
                russh::cipher::AES_256_GCM,
                russh::cipher::AES_128_GCM,
                russh::cipher::CHACHA20_POLY1305,
                russh::cipher::AES_256_CTR,
                russh::cipher::AES_192_CTR,
                russh::cipher::AES_128_CTR,
            ]),
            ..russh::Preferred::DEFAULT
        },
        window_size: WINDOW_SIZE,
        maximum_packet_size: PACKET_SIZE,
        channel_buffer_size: 64,
        keepalive_interval: Some(std::time::Duration::from_secs(30)),
        keepalive_max: 4,
        nodelay: true,
        ..Default::default()
    });
    let tcp = tokio::net::TcpStream::connect(&conn.upstream)
        .await
        .map_err(|e| UpstreamError::Unreachable(format!("{}: {e}", conn.upstream)))?;
    let _ = tcp.set_nodelay(true);
    let mismatch = Arc::new(Mutex::new(None));
    let forwards: RemoteForwards = Arc::default();
    let handler = UpstreamHandler {
        pin,
        closed,
        mismatch: mismatch.clone(),
        client: Some(client),
        forwards: forwards.clone(),
    };
    // Read ahead: russh reads each packet in two pieces.
    let tcp = sluice_core::io::ReadAhead::new(tcp);
    let mut handle = match client::connect_stream(config, tcp, handler).await {
        Ok(h) => h,
        Err(e) => {
            if let Some(presented) = mismatch.locked().clone() {
                return Err(UpstreamError::HostKeyMismatch { presented });
            }
            return Err(UpstreamError::Protocol(e.to_string()));
        }
    };
    let mut ok = false;
    if let Some(key) = key {
        let hash = handle
            .best_supported_rsa_hash()
            .await
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?
            .flatten();
        let r = handle
            .authenticate_publickey(
                user.clone(),
                PrivateKeyWithHashAlg::new(Arc::new(key), hash),
            )
            .await
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        ok = r.success();
    }
    if !ok {
        if let Some(password) = password {
            let r = handle
                .authenticate_password(user, password)
                .await
                .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
            ok = r.success();
        }
    }
    if !ok {
        return Err(UpstreamError::Refused);
    }
    Ok(Upstream { handle, forwards })
}
