//! The client side: login with the token, then one task per channel.

use crate::upstream::{self, Upstream, UpstreamError};
use crate::LOGIN_TIMEOUT;
use russh::server::{self, Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId};
use sluice_core::sync::MutexExt;
use sluice_core::{
    AfterRefusal, Command, CommandKind, Credentials, Decision, Denial, Gateway, Refusal,
    SessionError, SessionHandle, SessionRequest,
};
use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio::sync::oneshot;

/// The prompt contains "password" so that tools such as sshpass recognise it.
const TOKEN_PROMPT: &str = "Sluice token (password): ";

/// A logged-in connection: the core session and the upstream leg.
pub(crate) struct Live {
    pub handle: SessionHandle,
    pub gateway: Arc<Gateway>,
    pub client: server::Handle,
    upstream: tokio::sync::OnceCell<Result<Arc<Upstream>, UpstreamError>>,
    /// Approval-hold messages; the channel deciding a command delivers them.
    pub notices: tokio::sync::Mutex<Option<sluice_core::sync::QueueReceiver<String>>>,
    /// Becomes true when the client connection is gone: channel tasks stop
    /// relaying, so the upstream and the session (and its end record) go too.
    pub closed: tokio::sync::watch::Receiver<bool>,
    /// Who closes exec channels first on this connection (see `CloseOrder`).
    pub close_order: CloseOrder,
    /// Upstream channels opened before their request (see `EarlyOpen`).
    pub early_open: EarlyOpen,
}

/// Whether a session channel's upstream channel may open before its request
/// arrives (saving a round trip), counted per connection.
///
/// An upstream channel that ends unused is closed by the gateway first, and
/// russh 0.65's client keeps the state of a channel it closed first for the
/// connection's life (the same defect as on the server side, see
/// `CloseOrder`). A client that opens channels and closes them without a
/// request would make every one of them cost that. So at most `LIMIT` early
/// opens may be outstanding (opened, and not yet used by a forwarded
/// command) on a connection; an early open that ends unused stays counted.
/// Past that, channels open upstream once their request is in, as before.
#[derive(Default)]
pub(crate) struct EarlyOpen {
    outstanding: std::sync::atomic::AtomicU32,
}

impl EarlyOpen {
    /// Early opens outstanding or ended unused, after which none is made.
    const LIMIT: u32 = 8;

    /// Claims an early open; false once `LIMIT` are outstanding.
    pub fn claim(&self) -> bool {
        self.outstanding
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < Self::LIMIT).then_some(n + 1)
            })
            .is_ok()
    }

    /// An early open was used by a forwarded command.
    pub fn used(&self) {
        let _ = self
            .outstanding
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

/// Whether this connection's client closes a finished session channel itself.
///
/// OpenSSH's client never closes a session channel first: it waits for the
/// server's CLOSE, so any wait for it is a stall at the end of every `ssh
/// host CMD` and scp. A multiplexing master (ControlMaster) does close first,
/// and must be let to: russh 0.65 ignores the CLOSE that answers a
/// server-initiated one and keeps the channel's sender for the connection's
/// life (about 2.6 KB per exec). So the first channel of a connection never
/// waits; a later one (the connection is multiplexed) waits briefly once to
/// learn the client's habit, then waits only if the client closes first.
#[derive(Default)]
pub(crate) struct CloseOrder {
    channels: std::sync::atomic::AtomicU32,
    /// 0: not known yet, 1: the client closes first, 2: it waits for us.
    client_first: std::sync::atomic::AtomicU8,
}

impl CloseOrder {
    /// How long to wait for a client close when a channel ends.
    const PROBE: std::time::Duration = std::time::Duration::from_millis(250);
    const GRACE: std::time::Duration = std::time::Duration::from_secs(2);

    /// Counts a session channel; returns whether it is the connection's first.
    pub fn channel_started(&self) -> bool {
        self.channels.fetch_add(1, Ordering::Relaxed) == 0
    }

    /// The wait for the client's own close at the end of a channel.
    pub fn grace(&self, first_channel: bool) -> std::time::Duration {
        if first_channel {
            return std::time::Duration::ZERO;
        }
        match self.client_first.load(Ordering::Relaxed) {
            0 => Self::PROBE,
            1 => Self::GRACE,
            _ => std::time::Duration::ZERO,
        }
    }

    /// Remembers whether the client closed first within the wait.
    pub fn learn(&self, client_closed_first: bool) {
        let v = if client_closed_first { 1 } else { 2 };
        let _ = self
            .client_first
            .compare_exchange(0, v, Ordering::Relaxed, Ordering::Relaxed);
    }
}

impl Live {
    /// The upstream connection, opened on first use; a failure is kept, so
    /// every channel reports the same one.
    pub async fn upstream(&self) -> Result<Arc<Upstream>, UpstreamError> {
        self.upstream
            .get_or_init(|| async {
                let conn = self.handle.shared_connection();
                match upstream::connect(&conn, self.client.clone(), self.closed.clone()).await {
                    Ok(u) => Ok(Arc::new(u)),
                    Err(e) => {
                        tracing::warn!(message = "Upstream SSH connection failed.", connection = %conn.name, error = %e, detail = %e.detail());
                        self.handle
                            .set_end_reason(format!("upstream connection failed: {e}"));
                        Err(e)
                    }
                }
            })
            .await
            .clone()
    }
}

/// Resolves once the client connection is gone.
pub(crate) async fn connection_gone(closed: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *closed.borrow_and_update() {
            return;
        }
        if closed.changed().await.is_err() {
            return;
        }
    }
}

/// A command's decision as a channel acts on it.
pub(crate) enum Decided {
    Forward(u64),
    Refuse(Denial),
}

/// Runs a command through the pipeline. A store failure refuses it.
pub(crate) async fn decide(live: &Live, kind: CommandKind, text: String) -> Decided {
    decide_command(
        live,
        Command {
            kind,
            text,
            context: Vec::new(),
        },
    )
    .await
}

/// [`decide`] for a command built by the caller (with its context).
pub(crate) async fn decide_command(live: &Live, command: Command) -> Decided {
    match live.handle.decide(command).await {
        Ok(Decision::Forward { command_id }) => Decided::Forward(command_id),
        Ok(Decision::Refuse { denial, .. }) => Decided::Refuse(denial),
        // Write-ahead audit failed: the command must not run.
        Err(e) => {
            tracing::error!(message = "Audit store failed; refusing the command.", error = %e);
            Decided::Refuse(Denial::unrecorded())
        }
    }
}

/// A login the handler hands to core's admission (through [`SshSession`]),
/// and where the answer goes: the session, or the refusal to show.
struct LoginAttempt {
    request: SessionRequest,
    answer: oneshot::Sender<Result<SessionHandle, String>>,
}

pub(crate) struct ClientHandler {
    gateway: Arc<Gateway>,
    attempts: mpsc::Sender<LoginAttempt>,
    pending: Option<SessionHandle>,
    live: Option<Arc<Live>>,
    /// A keyboard-interactive failure already told to the client.
    told: bool,
    watcher: Arc<Mutex<Option<tokio::task::AbortHandle>>>,
    closed: tokio::sync::watch::Receiver<bool>,
}

impl ClientHandler {
    /// Asks core to admit the token for connection `user` and waits for its
    /// answer; a refusal comes back as the text to show the client.
    async fn login(&mut self, user: &str, token: &str) -> Result<(), String> {
        let (answer, answered) = oneshot::channel();
        let attempt = LoginAttempt {
            request: SessionRequest {
                credentials: Credentials {
                    user: user.to_string(),
                    token: token.to_string(),
                },
                connection: user.to_string(),
            },
            answer,
        };
        let gone = || "sluice: the login is no longer being served".to_string();
        self.attempts.send(attempt).await.map_err(|_| gone())?;
        self.pending = Some(answered.await.map_err(|_| gone())??);
        Ok(())
    }

    fn live(&self) -> Option<Arc<Live>> {
        self.live.clone()
    }
}

fn reject() -> Auth {
    Auth::reject()
}

impl server::Handler for ClientHandler {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(reject())
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        Ok(match self.login(user, password).await {
            Ok(()) => Auth::Accept,
            Err(_) => reject(),
        })
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        let Some(mut response) = response else {
            self.told = false;
            return Ok(Auth::Partial {
                name: Cow::Borrowed(""),
                instructions: Cow::Borrowed(""),
                prompts: Cow::Owned(vec![(Cow::Borrowed(TOKEN_PROMPT), false)]),
            });
        };
        if self.told {
            // The client acknowledged the failure message.
            self.told = false;
            return Ok(reject());
        }
        let token = response
            .next()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        match self.login(user, &token).await {
            Ok(()) => Ok(Auth::Accept),
            Err(message) => {
                // Keyboard-interactive can show text: say why, then refuse.
                self.told = true;
                Ok(Auth::Partial {
                    name: Cow::Borrowed(""),
                    instructions: Cow::Owned(format!(
                        "{message}\nPass a valid, unexpired Sluice token as the password (sluice token issue, or your identity provider).\n"
                    )),
                    prompts: Cow::Owned(Vec::new()),
                })
            }
        }
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        let Some(handle) = self.pending.take() else {
            return Err(russh::Error::Inconsistent);
        };
        let notices = handle.take_notices();
        let live = Arc::new(Live {
            handle,
            gateway: self.gateway.clone(),
            client: session.handle(),
            upstream: tokio::sync::OnceCell::new(),
            notices: tokio::sync::Mutex::new(notices),
            closed: self.closed.clone(),
            close_order: CloseOrder::default(),
            early_open: EarlyOpen::default(),
        });
        // The session ends when its token expires or is revoked.
        let watched = live.clone();
        let task = tokio::spawn(async move {
            let reason = watched.handle.ended().await;
            let _ = watched
                .client
                .disconnect(
                    russh::Disconnect::ByApplication,
                    format!("sluice: session ended: {reason}"),
                    "en".into(),
                )
                .await;
        });
        *self.watcher.locked() = Some(task.abort_handle());
        self.live = Some(live);
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(live) = self.live() else {
            drop(reply);
            return Ok(());
        };
        reply.accept().await;
        tokio::spawn(crate::channel::run(live, channel));
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(live) = self.live() else {
            drop(reply);
            return Ok(());
        };
        tokio::spawn(crate::forward::direct(
            live,
            channel,
            host_to_connect.to_string(),
            port_to_connect,
            originator_address.to_string(),
            originator_port,
            reply,
        ));
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(live) = self.live() {
            // Judged and audited like -L; relaying Unix sockets is not supported.
            let d = decide(
                &live,
                CommandKind::Forward {
                    kind: "port-forward".into(),
                },
                format!("direct-streamlocal {socket_path}"),
            )
            .await;
            if matches!(d, Decided::Forward(_)) {
                tracing::info!(message = "Unix-socket forwarding is not supported; refused.");
            }
        }
        drop(reply);
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Some(live) = self.live() else {
            return Ok(false);
        };
        crate::forward::remote(&live, address, port).await
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Some(live) = self.live() else {
            return Ok(false);
        };
        crate::forward::cancel_remote(&live, address, port).await
    }

    /// Answered here, while the request is the channel's latest: the
    /// session answers only a request that asked for a reply, and OpenSSH
    /// sends `env` without asking and its exec right after, so an answer
    /// from the channel's task came late and was read as the exec's.
    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let _ = if crate::channel::env_allowed(variable_name, variable_value) {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        };
        Ok(())
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        if let Some(live) = self.live() {
            let d = decide(
                &live,
                CommandKind::Forward {
                    kind: "agent-forward".into(),
                },
                "auth-agent-req@openssh.com".into(),
            )
            .await;
            if matches!(d, Decided::Forward(_)) {
                // Allowed by policy, but the gateway does not relay agents:
                // the upstream gets the gateway's key, never the caller's agent.
                tracing::info!(
                    message = "Agent forwarding allowed by policy but not supported; refused."
                );
            }
        }
        Ok(false)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(live) = self.live() {
            let d = decide(
                &live,
                CommandKind::Forward { kind: "x11".into() },
                "x11-req".into(),
            )
            .await;
            if matches!(d, Decided::Forward(_)) {
                tracing::info!(
                    message = "X11 forwarding allowed by policy but not supported; refused."
                );
            }
        }
        session.channel_failure(channel)?;
        Ok(())
    }
}

/// One SSH client connection as a core [`Session`]: russh drives the
/// handshake in its own task and hands each login attempt here, so that
/// `Gateway::serve` admits it like any protocol's; a refused attempt is told
/// to the client, which may try again (another method, another token) until
/// russh's attempt limit or the login deadline.
pub(crate) struct SshSession {
    attempts: mpsc::Receiver<LoginAttempt>,
    answer: Option<oneshot::Sender<Result<SessionHandle, String>>>,
    /// Becomes true when russh's task has ended.
    finished: tokio::sync::watch::Receiver<bool>,
    closed: tokio::sync::watch::Sender<bool>,
    watcher: Arc<Mutex<Option<tokio::task::AbortHandle>>>,
}

/// What ends a client connection for certain once its session is over, and
/// holds the listener's slot until it has: russh runs the connection in a
/// task of its own, which a handle can only ask to disconnect (russh ignores
/// that during a key exchange), so the socket itself is shut down.
pub(crate) struct Closer {
    client: server::Handle,
    socket: std::net::TcpStream,
    finished: tokio::sync::watch::Receiver<bool>,
    russh: tokio::task::JoinHandle<Result<(), russh::Error>>,
}

impl Closer {
    /// Waits for russh to end the connection; when the login did not
    /// complete, says so first, and shuts the socket down if russh is slow.
    pub async fn close(mut self, login_failed: bool) -> Result<(), SessionError> {
        const GRACE: std::time::Duration = std::time::Duration::from_secs(1);
        if login_failed && !*self.finished.borrow() {
            let bye = self.client.disconnect(
                russh::Disconnect::ByApplication,
                "sluice: login did not complete".into(),
                "en".into(),
            );
            let _ = tokio::time::timeout(GRACE, bye).await;
            let _ = tokio::time::timeout(GRACE, self.finished.wait_for(|f| *f)).await;
        }
        if !*self.finished.borrow() {
            let _ = self.socket.shutdown(std::net::Shutdown::Both);
        }
        match (&mut self.russh).await {
            Ok(result) => result.map_err(|e| SessionError::client("the SSH connection", e)),
            Err(e) => Err(SessionError::Internal(format!(
                "the SSH connection task: {e}"
            ))),
        }
    }
}

impl Drop for Closer {
    fn drop(&mut self) {
        // Dropped without `close` (the gateway is stopping): end it anyway.
        if !*self.finished.borrow() {
            let _ = self.socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl SshSession {
    /// Exchanges versions with the client (bounded) and starts russh's task.
    pub(crate) async fn start(
        config: Arc<server::Config>,
        gateway: Arc<Gateway>,
        tcp: tokio::net::TcpStream,
    ) -> Result<(SshSession, Closer), SessionError> {
        let io = |e: std::io::Error| SessionError::client("the client socket", e);
        // A second handle on the socket, to shut it down whatever russh does.
        let std_tcp = tcp.into_std().map_err(io)?;
        let socket = std_tcp.try_clone().map_err(io)?;
        let tcp = tokio::net::TcpStream::from_std(std_tcp).map_err(io)?;
        let watcher: Arc<Mutex<Option<tokio::task::AbortHandle>>> = Arc::default();
        let (closed_tx, closed) = tokio::sync::watch::channel(false);
        // One attempt at a time: russh waits for each answer.
        let (attempts_tx, attempts) = mpsc::channel(1);
        let handler = ClientHandler {
            closed,
            gateway,
            attempts: attempts_tx,
            pending: None,
            live: None,
            told: false,
            watcher: watcher.clone(),
        };
        // Read ahead: russh reads each packet in two pieces.
        let tcp = sluice_core::io::ReadAhead::new(tcp);
        let started = server::run_stream(config, tcp, handler);
        let running = match tokio::time::timeout(LOGIN_TIMEOUT, started).await {
            Ok(Ok(running)) => running,
            Ok(Err(e)) => return Err(SessionError::client("the SSH handshake", e)),
            Err(_) => {
                let _ = socket.shutdown(std::net::Shutdown::Both);
                return Err(SessionError::Client(
                    "the client did not start SSH in time".into(),
                ));
            }
        };
        let client = running.handle();
        let (finished_tx, finished) = tokio::sync::watch::channel(false);
        let russh = tokio::spawn(async move {
            let result = running.await;
            finished_tx.send_replace(true);
            result
        });
        let session = SshSession {
            attempts,
            answer: None,
            finished: finished.clone(),
            closed: closed_tx,
            watcher,
        };
        let closer = Closer {
            client,
            socket,
            finished,
            russh,
        };
        Ok((session, closer))
    }
}

#[async_trait::async_trait]
impl sluice_core::Session for SshSession {
    async fn credentials(&mut self) -> Result<SessionRequest, SessionError> {
        let attempt = self
            .attempts
            .recv()
            .await
            .ok_or_else(|| SessionError::Client("the client left before logging in".into()))?;
        self.answer = Some(attempt.answer);
        Ok(attempt.request)
    }

    async fn refuse(&mut self, refusal: Refusal) -> Result<AfterRefusal, SessionError> {
        if let Some(answer) = self.answer.take() {
            let _ = answer.send(Err(refusal.client_message()));
        }
        Ok(AfterRefusal::Retry)
    }

    async fn run(mut self, handle: SessionHandle) -> Result<(), SessionError> {
        let answer = self
            .answer
            .take()
            .ok_or_else(|| SessionError::Internal("no login is waiting for its session".into()))?;
        // If the client left meanwhile, the handle comes back and its drop
        // records the session's end.
        answer
            .send(Ok(handle))
            .map_err(|_| SessionError::Client("the client left while logging in".into()))?;
        // The connection's end is russh's; `Closer::close` reports how it went.
        let _ = self.finished.wait_for(|f| *f).await;
        Ok(())
    }

    fn handshake_timeout(&self) -> std::time::Duration {
        LOGIN_TIMEOUT
    }
}

impl Drop for SshSession {
    fn drop(&mut self) {
        self.closed.send_replace(true);
        if let Some(w) = self.watcher.locked().take() {
            w.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EarlyOpen;

    #[test]
    fn early_opens_are_bounded_until_used() {
        let early = EarlyOpen::default();
        for _ in 0..EarlyOpen::LIMIT {
            assert!(early.claim());
        }
        // Outstanding (in flight or closed unused): no more.
        assert!(!early.claim());
        // One used by a command frees its place.
        early.used();
        assert!(early.claim());
        assert!(!early.claim());
    }
}
