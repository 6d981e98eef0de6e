//! SSH for Sluice: a listener that speaks SSH to clients (`ssh`, `scp`,
//! `sftp`), authenticates them with a token as the password (password or
//! keyboard-interactive; the SSH user name selects the connection), and
//! relays each channel to the upstream host with the gateway-held key,
//! after the core pipeline has decided on it:
//!
//! - `exec` requests are `CommandKind::Exec` commands (judged per program by
//!   core's shell parser); `scp` is an exec.
//! - `shell` requests are `CommandKind::Shell`, judged as a whole and
//!   recorded (output and window sizes; `sluice replay --format asciicast`).
//! - subsystems (`sftp`) are `CommandKind::Subsystem`; SFTP transfers are
//!   recorded as metadata (path, direction, bytes).
//! - forwarding (`-L`/`-D` direct-tcpip, `-R` tcpip-forward, agent, X11) is
//!   `CommandKind::Forward`, denied unless a rule allows it.
//!
//! This crate translates; it makes no security decision.

mod channel;
mod forward;
mod policy;
mod server;
pub mod settings;
mod sftp;
mod upstream;

pub use policy::ssh_match_key;
pub use settings::SshSettings;

use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, PrivateKey};
use sluice_core::{Gateway, Protocol};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long a client may take from TCP connect to a successful login.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Connect, key exchange and authentication with the upstream, together.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(15);
/// Channel window and packet sizes, on both legs: OpenSSH's own defaults.
/// With 16 MiB windows an OpenSSH client spent far more CPU per byte on an
/// upload through the gateway (docs/ssh.md, "Performance", has the runs).
const WINDOW_SIZE: u32 = 2 * 1024 * 1024;
const PACKET_SIZE: u32 = 32 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("host key: {0}")]
    HostKey(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Where the gateway's SSH host key lives unless one is placed there.
pub fn host_key_path(state_dir: &Path) -> PathBuf {
    state_dir.join("keys").join("ssh_host_ed25519_key")
}

/// Reads the gateway host key, or generates an Ed25519 key there (0600).
pub fn load_or_create_host_key(path: &Path) -> Result<PrivateKey, SshError> {
    match std::fs::read_to_string(path) {
        Ok(text) => russh::keys::decode_secret_key(&text, None)
            .map_err(|e| SshError::HostKey(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed)
                .map_err(|e| SshError::HostKey(format!("no randomness: {e}")))?;
            let pair = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed);
            let key = PrivateKey::from(pair);
            let text = key
                .to_openssh(LineEnding::LF)
                .map_err(|e| SshError::HostKey(e.to_string()))?;
            sluice_core::fsutil::write_private(path, text.as_bytes())?;
            tracing::info!(message = "Generated the gateway's SSH host key.", path = %path.display());
            Ok(key)
        }
        Err(e) => Err(SshError::HostKey(format!("{}: {e}", path.display()))),
    }
}

/// The public half of a host key as a `known_hosts` entry (`ssh-ed25519 AAAA…`).
pub fn public_key_line(key: &PrivateKey) -> String {
    key.public_key().to_openssh().unwrap_or_default()
}

/// The SSH listener.
pub struct SshServer {
    gateway: Arc<Gateway>,
    config: Arc<russh::server::Config>,
}

impl std::fmt::Debug for SshServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshServer").finish_non_exhaustive()
    }
}

impl SshServer {
    /// Uses the host key in `state_dir/keys/ssh_host_ed25519_key` (generated when absent).
    pub fn new(gateway: Arc<Gateway>) -> Result<Self, SshError> {
        let key = load_or_create_host_key(&host_key_path(&gateway.config().gateway.state_dir))?;
        Ok(Self::with_host_key(gateway, key))
    }

    pub fn with_host_key(gateway: Arc<Gateway>, key: PrivateKey) -> Self {
        debug_assert!(key.algorithm() != Algorithm::Dsa);
        let mut methods = russh::MethodSet::empty();
        methods.push(russh::MethodKind::KeyboardInteractive);
        methods.push(russh::MethodKind::Password);
        let config = russh::server::Config {
            server_id: russh::SshId::Standard("SSH-2.0-Sluice".into()),
            methods,
            keys: vec![key],
            // A wrong token costs the guesser a second (brute force).
            auth_rejection_time: Duration::from_secs(1),
            auth_rejection_time_initial: Some(Duration::ZERO),
            max_auth_attempts: 6,
            window_size: WINDOW_SIZE,
            maximum_packet_size: PACKET_SIZE,
            channel_buffer_size: 64,
            event_buffer_size: 64,
            // Long silent commands are normal for agents: detect dead peers
            // with keepalives instead of an inactivity timeout.
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_max: 4,
            nodelay: true,
            ..Default::default()
        };
        SshServer {
            gateway,
            config: Arc::new(config),
        }
    }

    /// Accepts clients until the listener fails; each runs in its own task.
    /// Stops accepting when the gateway drains.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        let listener = self.gateway.listener(listener, "ssh");
        let SshServer { gateway, config } = self;
        listener
            .serve(move |tcp, peer| {
                let (gateway, config) = (gateway.clone(), config.clone());
                async move {
                    // The listener's slot is held until the connection is gone.
                    let served = match server::SshSession::start(config, gateway.clone(), tcp).await {
                        Ok((session, closer)) => {
                            let served = gateway.serve(session, Protocol::Ssh, &peer.to_string()).await;
                            let closed = closer.close(served.is_err()).await;
                            served.and(closed)
                        }
                        Err(e) => Err(e),
                    };
                    if let Err(e) = served {
                        tracing::info!(message = "SSH client connection ended with an error.", client = %peer, error = %e);
                    }
                }
            })
            .await
    }
}

/// A command line as the operator console shows it to an approver: the
/// programs it would run (wrappers unwrapped, as rules match them), with
/// those that can run anything flagged. `None` when the text is not a
/// command line the gateway judges (a shell or subsystem request).
pub fn describe_line(text: &str) -> Option<serde_json::Value> {
    let programs = sluice_shell::analyze(text).ok()?;
    Some(serde_json::json!({
        "programs": programs
            .iter()
            .map(|p| serde_json::json!({ "command": p.text(), "runs_anything": p.runs_anything }))
            .collect::<Vec<_>>(),
    }))
}

#[cfg(test)]
mod describe_tests {
    #[test]
    fn describe_line_lists_the_programs() {
        let d = super::describe_line("sudo -u app sh -c 'rm -rf /tmp/x; ls'").unwrap();
        let programs: Vec<String> = d["programs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["command"].as_str().unwrap().to_string())
            .collect();
        assert!(
            programs.iter().any(|p| p == "rm -rf /tmp/x"),
            "{programs:?}"
        );
        assert!(programs.iter().any(|p| p == "ls"), "{programs:?}");
    }
}
