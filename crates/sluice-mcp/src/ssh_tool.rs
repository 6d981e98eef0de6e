//! A minimal SSH client for the gateway's own SSH listener.
//!
//! A `CONN.exec` tool call is `ssh -p PORT CONN@loopback COMMAND` with the
//! caller's token as the password, exactly what an ssh user would do: the
//! SSH gateway judges the command line (approval notices and refusals on
//! stderr, a non-zero exit status), records it and masks its output. The
//! gateway's host key is pinned (the key in its state directory).

use russh::client;
use russh::keys::{PrivateKey, PublicKey, PublicKeyOrCertificate};
use russh::ChannelMsg;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Connecting and logging in must finish within this time.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Bytes of stdout and of stderr returned to the agent (each).
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum SshToolError {
    /// The gateway refused the login (token, group): its words.
    #[error("{0}")]
    Refused(String),
    #[error("the gateway's SSH listener: {0}")]
    Transport(String),
}

/// Where the SSH listener keeps its host key (sluice-ssh's `host_key_path`;
/// this crate does not depend on a protocol crate).
pub fn host_key_path(state_dir: &Path) -> PathBuf {
    state_dir.join("keys").join("ssh_host_ed25519_key")
}

/// The gateway's public host key, read from its private key file.
pub fn gateway_host_key(path: &Path) -> Result<PublicKey, SshToolError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        SshToolError::Transport(format!("the gateway's host key {}: {e}", path.display()))
    })?;
    let key: PrivateKey = russh::keys::decode_secret_key(&text, None).map_err(|e| {
        SshToolError::Transport(format!("the gateway's host key {}: {e}", path.display()))
    })?;
    Ok(key.public_key().clone())
}

struct Pinned(PublicKey);

impl client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        // Pinning is by key: a certificate is not the gateway's key.
        Ok(match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.key_data() == self.0.key_data(),
            PublicKeyOrCertificate::Certificate(_) => false,
        })
    }
}

/// Output of one stream, capped.
#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    total: usize,
}

impl Captured {
    fn push(&mut self, data: &[u8]) {
        self.total += data.len();
        let room = MAX_OUTPUT_BYTES.saturating_sub(self.bytes.len());
        self.bytes.extend_from_slice(&data[..data.len().min(room)]);
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    fn truncated(&self) -> bool {
        self.total > self.bytes.len()
    }
}

/// Runs `command` on the connection `connection` through the gateway's SSH
/// listener at `addr`. `on_stderr` sees stderr as it arrives (approval
/// notices while a command is held).
pub async fn exec(
    addr: SocketAddr,
    host_key: PublicKey,
    token: &str,
    connection: &str,
    command: &str,
    mut on_stderr: impl FnMut(&str),
) -> Result<Value, SshToolError> {
    let transport = |e: String| SshToolError::Transport(e);
    let config = Arc::new(client::Config {
        client_id: russh::SshId::Standard("SSH-2.0-Sluice-MCP".into()),
        nodelay: true,
        ..Default::default()
    });
    let handle = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let mut handle = client::connect(config, addr, Pinned(host_key))
            .await
            .map_err(|e| transport(e.to_string()))?;
        let auth = handle
            .authenticate_password(connection, token)
            .await
            .map_err(|e| transport(e.to_string()))?;
        if !auth.success() {
            return Err(SshToolError::Refused(format!(
                "the gateway refused the login to {connection:?} (an expired or revoked token, or a connection outside your groups)"
            )));
        }
        Ok(handle)
    })
    .await
    .map_err(|_| transport("timed out connecting".into()))??;
    let mut channel = handle
        .channel_open_session()
        .await
        .map_err(|e| transport(e.to_string()))?;
    channel
        .exec(true, command)
        .await
        .map_err(|e| transport(e.to_string()))?;
    let (mut stdout, mut stderr) = (Captured::default(), Captured::default());
    let mut status = None;
    let mut signal = None;
    while let Some(msg) = channel.wait().await {
        match msg {
            ChannelMsg::Data { data } => stdout.push(&data),
            ChannelMsg::ExtendedData { data, ext: 1 } => {
                on_stderr(&String::from_utf8_lossy(&data));
                stderr.push(&data);
            }
            ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            ChannelMsg::ExitSignal { signal_name, .. } => signal = Some(format!("{signal_name:?}")),
            ChannelMsg::Failure => {
                return Err(transport("the gateway refused the exec request".into()))
            }
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    let mut doc = json!({
        "exit_status": status,
        "stdout": stdout.text(),
        "stderr": stderr.text(),
    });
    if let Some(signal) = signal {
        doc["signal"] = json!(signal);
    }
    if stdout.truncated() || stderr.truncated() {
        doc["truncated"] = json!(true);
        doc["note"] = json!(format!(
            "only the first {MAX_OUTPUT_BYTES} bytes of stdout and of stderr are returned"
        ));
    }
    Ok(doc)
}
