//! One session channel: its setup requests (pty, env), the request that
//! decides what it is (exec, shell, subsystem), the decision, then the relay
//! to an upstream channel with masking and recording.

use crate::server::{decide_command, Decided, Live};
use crate::sftp::SftpTracker;
use bytes::Bytes;
use russh::server::Msg;
use russh::{Channel, ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Pty};
use sluice_core::audit::{AuditEvent, StreamRecorder};
use sluice_core::masking::StreamMasker;
use sluice_core::sync::MutexExt;
use sluice_core::{Command, CommandKind, Denial, Outcome};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Exit status for a command the gateway did not run (as a shell's
/// "found but cannot execute").
pub const EXIT_DENIED: u32 = 126;
/// Exit status when the gateway could not reach the upstream (as ssh's own).
pub const EXIT_GATEWAY: u32 = 255;
/// Client bytes kept while a command waits for its decision.
const MAX_EARLY: usize = 1024 * 1024;
/// Exec output recorded per command (the rest is counted).
const EXEC_RECORD_LIMIT: u64 = 64 * 1024;
/// Masked output held back is released after this much upstream silence:
/// quickly on a terminal (a prompt must show), later for exec output, so
/// that a secret printed in two parts a moment apart is still seen whole.
const MASK_IDLE_PTY: Duration = Duration::from_millis(30);
const MASK_IDLE_EXEC: Duration = Duration::from_secs(2);

/// Environment variables passed to the upstream; others are refused. A
/// locale must be C, POSIX or UTF-8: in a multibyte encoding such as GBK or
/// SJIS, the last byte of a character can be a backslash or quote to the
/// host's shell, which would then split the line differently from how it
/// was judged.
pub(crate) fn env_allowed(name: &str, value: &str) -> bool {
    if matches!(name, "TERM" | "COLORTERM" | "TZ") {
        return true;
    }
    let locale = name == "LANG" || LOCALE_CATEGORIES.contains(&name);
    locale && utf8_or_plain_locale(value) || (!locale && name.starts_with("LC_"))
}

/// The categories the C library reads from `LC_*` (others are plain
/// variables, which OpenSSH users pass under that prefix).
const LOCALE_CATEGORIES: &[&str] = &[
    "LC_ALL",
    "LC_CTYPE",
    "LC_COLLATE",
    "LC_MESSAGES",
    "LC_NUMERIC",
    "LC_TIME",
    "LC_MONETARY",
    "LC_PAPER",
    "LC_NAME",
    "LC_ADDRESS",
    "LC_TELEPHONE",
    "LC_MEASUREMENT",
    "LC_IDENTIFICATION",
];

/// `C`, `POSIX`, empty, or a locale whose codeset is UTF-8
/// (`en_US.UTF-8`, `de_DE.utf8@euro`, `C.UTF-8`).
fn utf8_or_plain_locale(value: &str) -> bool {
    let base = value.split('@').next().unwrap_or_default();
    matches!(base, "" | "C" | "POSIX")
        || base.rsplit_once('.').is_some_and(|(_, codeset)| {
            codeset.eq_ignore_ascii_case("UTF-8") || codeset.eq_ignore_ascii_case("utf8")
        })
}

struct PtyRequest {
    term: String,
    cols: u32,
    rows: u32,
    px: u32,
    py: u32,
    modes: Vec<(Pty, u32)>,
}

enum Main {
    Exec(Vec<u8>),
    Shell,
    Subsystem(String),
}

/// What the channel carries, for recording and masking.
#[derive(Clone)]
enum Carries {
    /// Exec output: masked, recorded up to a limit.
    Exec,
    /// A terminal: masked, fully recorded with its sizes.
    Shell,
    /// scp: file contents, neither masked nor recorded; metadata only.
    Scp { path: String, upload: bool },
    /// SFTP: packets parsed for metadata; contents neither masked nor recorded.
    Sftp,
    /// Another subsystem: relayed as is.
    Raw,
}

/// What a channel asked for before its main request, and that request.
struct Setup {
    main: Main,
    pty: Option<PtyRequest>,
    env: Vec<(String, String)>,
    /// Data the client sent before the command was decided (bounded).
    early: Vec<Bytes>,
    early_len: usize,
    client_eof: bool,
}

impl Setup {
    fn newline(&self) -> &'static str {
        if self.pty.is_some() {
            "\r\n"
        } else {
            "\n"
        }
    }

    /// Keeps data sent early; `false` when it is over the bound.
    fn keep_early(&mut self, data: Bytes) -> bool {
        self.early_len += data.len();
        self.early.push(data);
        self.early_len <= MAX_EARLY
    }

    fn resize(&mut self, cols: u32, rows: u32, px: u32, py: u32) {
        if let Some(p) = &mut self.pty {
            (p.cols, p.rows, p.px, p.py) = (cols, rows, px, py);
        }
    }
}

/// Reads the channel's requests up to its main one (exec, shell or a
/// subsystem): pty, environment (filtered), window size, early data.
/// `None` when the client closed the channel or sent too much first.
async fn setup(
    live: &Live,
    rx: &mut ChannelReadHalf,
    tx: &ChannelWriteHalf<Msg>,
    id: russh::ChannelId,
) -> Option<Setup> {
    let mut pty: Option<PtyRequest> = None;
    let mut env: Vec<(String, String)> = Vec::new();
    let mut early: Vec<Bytes> = Vec::new();
    let mut early_len = 0usize;
    let mut client_eof = false;
    let main = loop {
        let msg = rx.wait().await?;
        match msg {
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                terminal_modes,
                ..
            } => {
                pty = Some(PtyRequest {
                    term,
                    cols: col_width,
                    rows: row_height,
                    px: pix_width,
                    py: pix_height,
                    modes: terminal_modes,
                });
                let _ = live.client.channel_success(id).await;
            }
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } => {
                // The reply went out from the handler (`env_request`).
                if env_allowed(&variable_name, &variable_value) {
                    env.push((variable_name, variable_value));
                } else {
                    tracing::info!(message = "Refused an environment variable.", session = %live.handle.id(), name = %variable_name);
                }
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                pix_width,
                pix_height,
            } => {
                if let Some(p) = &mut pty {
                    (p.cols, p.rows, p.px, p.py) = (col_width, row_height, pix_width, pix_height);
                }
            }
            ChannelMsg::Exec { command, .. } => break Main::Exec(command),
            ChannelMsg::RequestShell { .. } => break Main::Shell,
            ChannelMsg::RequestSubsystem { name, .. } => break Main::Subsystem(name),
            ChannelMsg::Data { data } => {
                early_len += data.len();
                if early_len > MAX_EARLY {
                    let _ = tx.close().await;
                    return None;
                }
                early.push(data);
            }
            ChannelMsg::Eof => client_eof = true,
            ChannelMsg::Close => return None,
            // Agent and X11 requests are decided by the connection handler.
            _ => {}
        }
    };
    Some(Setup {
        main,
        pty,
        env,
        early,
        early_len,
        client_eof,
    })
}

/// The command a channel's main request is, as policy judges it, and what
/// the channel will carry; `Err` with the refusal when it cannot be judged.
fn classify(
    main: &Main,
    pty: Option<&PtyRequest>,
) -> Result<(CommandKind, String, Carries), &'static str> {
    Ok(match main {
        Main::Exec(bytes) => {
            let Ok(text) = String::from_utf8(bytes.clone()) else {
                return Err("sluice: the command is not valid UTF-8, so it cannot be judged; it was not run");
            };
            let carries = scp_transfer(&text).unwrap_or(if is_sftp_server(&text) {
                Carries::Sftp
            } else {
                Carries::Exec
            });
            (CommandKind::Exec, text, carries)
        }
        Main::Shell => (
            CommandKind::Shell { pty: pty.is_some() },
            match pty {
                Some(p) => format!("shell (pty {} {}x{})", p.term, p.cols, p.rows),
                None => "shell".to_string(),
            },
            Carries::Shell,
        ),
        Main::Subsystem(name) => (
            CommandKind::Subsystem { name: name.clone() },
            name.clone(),
            if name == "sftp" {
                Carries::Sftp
            } else {
                Carries::Raw
            },
        ),
    })
}

/// How a command's context names the terminal it runs on.
pub(crate) const TERMINAL: &str = "terminal (pty) ";

/// An exec given a terminal (`ssh -t host CMD`) says so in its context: what
/// is typed into it (a pager's `!cmd`, an editor's shell escape) is recorded,
/// not judged, so `ssh = ["shell"]` rules cover it as they cover a shell.
fn terminal_context(kind: &CommandKind, pty: Option<&PtyRequest>) -> Vec<String> {
    match (kind, pty) {
        (CommandKind::Exec, Some(p)) => {
            vec![format!("{TERMINAL}{} {}x{}", p.term, p.cols, p.rows)]
        }
        _ => Vec::new(),
    }
}

/// Opens the upstream session channel while the client's requests arrive
/// and the command is decided (an open channel runs nothing until a request
/// is sent), saving round trips; a refused command closes it unused.
fn open_upstream_channel(
    live: &Arc<Live>,
) -> tokio::task::JoinHandle<Result<Channel<russh::client::Msg>, String>> {
    let live = live.clone();
    tokio::spawn(async move {
        let upstream = live.upstream().await.map_err(|e| e.to_string())?;
        upstream.handle.channel_open_session().await.map_err(|e| {
            tracing::warn!(message = "The upstream refused a session channel.", error = %e);
            "the upstream refused a session channel".to_string()
        })
    })
}

/// Decides the command, delivering approval-hold messages and watching the
/// client: a client that leaves takes its pending command (and approval)
/// with it (`None`).
async fn decide_watching(
    live: &Arc<Live>,
    command: Command,
    rx: &mut ChannelReadHalf,
    tx: &ChannelWriteHalf<Msg>,
    setup: &mut Setup,
) -> Option<Decided> {
    let nl = setup.newline();
    let decision = decide_command(live, command);
    tokio::pin!(decision);
    let mut notices = live.notices.try_lock().ok();
    let decided = loop {
        tokio::select! {
            d = &mut decision => break d,
            Some(n) = recv_notice(&mut notices) => {
                let _ = tx.extended_data_bytes(1, Bytes::from(format!("{n}{nl}"))).await;
            }
            m = rx.wait() => match m {
                None | Some(ChannelMsg::Close) => return None,
                Some(ChannelMsg::Eof) => setup.client_eof = true,
                Some(ChannelMsg::Data { data }) => {
                    let kept = setup.keep_early(data);
                    if !kept {
                        let _ = tx.close().await;
                        return None;
                    }
                }
                Some(ChannelMsg::WindowChange { col_width, row_height, pix_width, pix_height }) => {
                    setup.resize(col_width, row_height, pix_width, pix_height);
                }
                _ => {}
            },
        }
    };
    drop(notices);
    Some(decided)
}

type Opening = tokio::task::JoinHandle<Result<Channel<russh::client::Msg>, String>>;

/// One session channel: set up, judged, requested upstream, relayed both
/// ways (masked, recorded), and its outcome recorded.
pub(crate) async fn run(live: Arc<Live>, channel: Channel<Msg>) {
    let first_channel = live.close_order.channel_started();
    let id = channel.id();
    let (mut rx, tx) = channel.split();
    // The upstream channel opens while the client sends its requests: an
    // OpenSSH client waits for our open confirmation before it sends them
    // (unless this connection closed channels unused; see `EarlyOpen`).
    let early = live
        .early_open
        .claim()
        .then(|| open_upstream_channel(&live));
    let Some(mut setup) = setup(&live, &mut rx, &tx, id).await else {
        close_unused(early).await;
        return;
    };
    let Some((command_id, carries, opening)) =
        judge(&live, &mut rx, &tx, id, &mut setup, early).await
    else {
        return;
    };
    let started = Instant::now();
    let Some((up_rx, up_tx, before)) =
        start_upstream(&live, opening, &setup, &tx, id, command_id).await
    else {
        return;
    };
    let _ = live.client.channel_success(id).await;
    let relayed = Relayed {
        live,
        id,
        command_id,
        carries,
        first_channel,
        started,
    };
    relayed.run(setup, rx, tx, up_rx, up_tx, before).await;
}

/// Classifies and decides the channel's request while the upstream channel
/// opens (`early`, or from here); a refusal is told on the channel (exit
/// 126) and the upstream channel closed unused. Returns the command's id,
/// what the channel carries and the opening upstream.
async fn judge(
    live: &Arc<Live>,
    rx: &mut ChannelReadHalf,
    tx: &ChannelWriteHalf<Msg>,
    id: russh::ChannelId,
    setup: &mut Setup,
    early: Option<Opening>,
) -> Option<(u64, Carries, Opening)> {
    let nl = setup.newline();
    let (kind, text, carries) = match classify(&setup.main, setup.pty.as_ref()) {
        Ok(classified) => classified,
        Err(refusal) => {
            let _ = live.client.channel_success(id).await;
            refuse_locally(tx, &format!("{refusal}{nl}"), EXIT_DENIED).await;
            close_unused(early).await;
            return None;
        }
    };
    let was_early = early.is_some();
    let opening = early.unwrap_or_else(|| open_upstream_channel(live));
    let command = Command {
        context: terminal_context(&kind, setup.pty.as_ref()),
        kind,
        text,
    };
    let Some(decided) = decide_watching(live, command, rx, tx, setup).await else {
        close_unused(Some(opening)).await;
        return None;
    };
    match decided {
        Decided::Forward(command_id) => {
            if was_early {
                live.early_open.used();
            }
            Some((command_id, carries, opening))
        }
        Decided::Refuse(denial) => {
            let _ = live.client.channel_success(id).await;
            refuse_locally(tx, &denial_text(&denial, nl), EXIT_DENIED).await;
            close_unused(Some(opening)).await;
            None
        }
    }
}

/// Sends the judged request on the upstream channel (environment, pty,
/// then exec, shell or subsystem) and waits for its answer, keeping what
/// arrives before it. A failure is told to the client and recorded.
async fn start_upstream(
    live: &Arc<Live>,
    opening: Opening,
    setup: &Setup,
    tx: &ChannelWriteHalf<Msg>,
    id: russh::ChannelId,
    command_id: u64,
) -> Option<(
    ChannelReadHalf,
    ChannelWriteHalf<russh::client::Msg>,
    Vec<ChannelMsg>,
)> {
    let record_failure = |message: String| {
        live.handle.recorder().finished(
            command_id,
            Outcome {
                error: Some(message),
                ..Outcome::default()
            },
        );
    };
    let up = match opening.await {
        Ok(Ok(c)) => c,
        failed => {
            let why = match failed {
                Ok(Err(e)) => e,
                _ => "internal error".to_string(),
            };
            let conn_name = &live.handle.connection().name;
            let message = format!("cannot open connection {conn_name:?}: {why}");
            let _ = live.client.channel_success(id).await;
            let nl = setup.newline();
            refuse_locally(tx, &format!("sluice: {message}{nl}"), EXIT_GATEWAY).await;
            record_failure(message);
            return None;
        }
    };
    let (mut up_rx, up_tx) = up.split();
    for (k, v) in &setup.env {
        let _ = up_tx.set_env(false, k.as_str(), v.as_str()).await;
    }
    if let Some(p) = &setup.pty {
        let _ = up_tx
            .request_pty(false, &p.term, p.cols, p.rows, p.px, p.py, &p.modes)
            .await;
    }
    let sent = match &setup.main {
        Main::Exec(cmd) => up_tx.exec(true, cmd.clone()).await,
        Main::Shell => up_tx.request_shell(true).await,
        Main::Subsystem(name) => up_tx.request_subsystem(true, name.as_str()).await,
    };
    let mut before: Vec<ChannelMsg> = Vec::new();
    let accepted = sent.is_ok()
        && loop {
            match up_rx.wait().await {
                Some(ChannelMsg::Success) => break true,
                Some(ChannelMsg::Failure) | Some(ChannelMsg::Close) | None => break false,
                Some(other) => before.push(other),
            }
        };
    if !accepted {
        let _ = live.client.channel_failure(id).await;
        let _ = up_tx.close().await;
        let _ = tx.close().await;
        record_failure("the upstream refused the request".into());
        return None;
    }
    Some((up_rx, up_tx, before))
}

/// A channel whose request the upstream accepted.
struct Relayed {
    live: Arc<Live>,
    id: russh::ChannelId,
    command_id: u64,
    carries: Carries,
    first_channel: bool,
    started: Instant,
}

impl Relayed {
    /// Relays both ways until the upstream ends (or the client connection
    /// goes), closes the channel in the order the client expects, and
    /// records the outcome.
    async fn run(
        self,
        mut setup: Setup,
        rx: ChannelReadHalf,
        tx: ChannelWriteHalf<Msg>,
        mut up_rx: ChannelReadHalf,
        up_tx: ChannelWriteHalf<russh::client::Msg>,
        before: Vec<ChannelMsg>,
    ) {
        let live = &self.live;
        let record = self.recording(&setup);
        let sftp = matches!(self.carries, Carries::Sftp)
            .then(|| Arc::new(Mutex::new(SftpTracker::default())));
        let up_counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let client_eof_seen = Arc::new(std::sync::atomic::AtomicBool::new(setup.client_eof));
        let mut input = spawn_input(
            &mut setup,
            rx,
            up_tx,
            record.clone(),
            sftp.clone(),
            up_counter.clone(),
            client_eof_seen.clone(),
        );
        let masks = matches!(self.carries, Carries::Exec | Carries::Shell);
        let new_masker = || {
            masks
                .then(|| live.handle.masker().stream_masker(live.handle.info()))
                .flatten()
        };
        let mut out = Output {
            tx,
            live: live.clone(),
            id: self.id,
            stdout: new_masker(),
            stderr: new_masker(),
            record: record.clone(),
            sftp: sftp.clone(),
            bytes: 0,
            status: None,
            masked: Default::default(),
            eof: false,
            eof_sent: false,
        };
        let mask_idle = if setup.pty.is_some() {
            MASK_IDLE_PTY
        } else {
            MASK_IDLE_EXEC
        };
        out.pump(before, &mut up_rx, mask_idle).await;
        // A multiplexing client that has sent EOF closes the channel itself once
        // it has the exit status and our EOF; let it (see `CloseOrder`). A plain
        // `ssh host CMD` waits for our close, so it gets it at once.
        let grace = live.close_order.grace(self.first_channel);
        if client_eof_seen.load(std::sync::atomic::Ordering::Relaxed) && !grace.is_zero() {
            let closed_first = tokio::time::timeout(grace, &mut input).await.is_ok();
            live.close_order.learn(closed_first);
        }
        let _ = out.tx.close().await;
        input.abort();
        let up_bytes = up_counter.load(std::sync::atomic::Ordering::Relaxed);
        self.finish(&out, record.as_ref(), sftp.as_deref(), up_bytes);
    }

    /// The terminal recording of an exec (up to a limit) or a shell.
    fn recording(&self, setup: &Setup) -> Option<Arc<Mutex<StreamRecorder>>> {
        let store = self.live.gateway.store().clone();
        let session_id = self.live.handle.id().to_string();
        let mut record = match self.carries {
            Carries::Exec => StreamRecorder::new(store, &session_id, self.command_id)
                .with_limit(EXEC_RECORD_LIMIT),
            Carries::Shell => StreamRecorder::new(store, &session_id, self.command_id),
            _ => return None,
        };
        if let Some(p) = &setup.pty {
            record.resize(p.cols, p.rows);
        }
        Some(Arc::new(Mutex::new(record)))
    }

    /// Records the command's outcome (and a transfer's metadata).
    fn finish(
        &self,
        out: &Output,
        record: Option<&Arc<Mutex<StreamRecorder>>>,
        sftp: Option<&Mutex<SftpTracker>>,
        up_bytes: u64,
    ) {
        if let Some(r) = record {
            r.locked().flush();
        }
        let truncated = record.is_some_and(|r| r.locked().skipped() > 0);
        record_transfers(
            &self.carries,
            &self.live,
            self.command_id,
            up_bytes,
            out.bytes,
            sftp,
        );
        self.live.handle.recorder().finished(
            self.command_id,
            Outcome {
                bytes: out.bytes,
                tag: Some(out.status.clone().unwrap_or_else(|| "closed".into())),
                duration_us: self.started.elapsed().as_micros() as u64,
                truncated,
                masked: out.masked.0.clone(),
                ..Outcome::default()
            },
        );
    }
}

/// The client → upstream half, in its own task: first what the client sent
/// before the command was decided, then the live stream.
fn spawn_input(
    setup: &mut Setup,
    rx: ChannelReadHalf,
    up_tx: ChannelWriteHalf<russh::client::Msg>,
    record: Option<Arc<Mutex<StreamRecorder>>>,
    sftp: Option<Arc<Mutex<SftpTracker>>>,
    counter: Arc<std::sync::atomic::AtomicU64>,
    eof_seen: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let input = Input {
        up_tx,
        record,
        sftp,
        counter,
        has_pty: setup.pty.is_some(),
    };
    let early = std::mem::take(&mut setup.early);
    let client_eof = setup.client_eof;
    tokio::spawn(async move {
        // Keys typed before the shell was decided are typed input too.
        for data in early {
            if !input.forward(data).await {
                return;
            }
        }
        if client_eof {
            let _ = input.up_tx.eof().await;
        }
        client_to_upstream(rx, input, eof_seen).await;
    })
}

/// Where the client's bytes go: counted, recorded (a terminal's keystrokes),
/// noted for SFTP, then sent upstream.
struct Input {
    up_tx: ChannelWriteHalf<russh::client::Msg>,
    record: Option<Arc<Mutex<StreamRecorder>>>,
    sftp: Option<Arc<Mutex<SftpTracker>>>,
    counter: Arc<std::sync::atomic::AtomicU64>,
    has_pty: bool,
}

impl Input {
    /// Passes one chunk on; false once the upstream channel is gone.
    async fn forward(&self, data: Bytes) -> bool {
        self.counter
            .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        // A terminal's keystrokes: recorded as typed where echoed, else as hidden.
        if let (true, Some(r)) = (self.has_pty, &self.record) {
            r.locked().record_input(&data);
        }
        if let Some(s) = &self.sftp {
            s.locked().client_data(&data);
        }
        self.up_tx.data_bytes(data).await.is_ok()
    }
}

/// The file-transfer metadata of an scp or SFTP channel, for the audit record.
fn record_transfers(
    carries: &Carries,
    live: &Live,
    command_id: u64,
    up_bytes: u64,
    down_bytes: u64,
    sftp: Option<&Mutex<SftpTracker>>,
) {
    let store = live.gateway.store();
    let session_id = live.handle.id();
    match &carries {
        Carries::Scp { path, upload } => {
            let bytes = if *upload { up_bytes } else { down_bytes };
            store.append_background(
                session_id,
                AuditEvent::FileTransfer {
                    command_id,
                    path: path.clone(),
                    direction: if *upload { "upload" } else { "download" }.into(),
                    bytes,
                },
            );
        }
        Carries::Sftp => {
            if let Some(s) = &sftp {
                {
                    let mut s = s.locked();
                    for t in s.finish() {
                        store.append_background(
                            session_id,
                            AuditEvent::FileTransfer {
                                command_id,
                                path: t.path,
                                direction: t.direction.into(),
                                bytes: t.bytes,
                            },
                        );
                    }
                }
            }
        }
        _ => {}
    }
}

async fn client_to_upstream(
    mut rx: ChannelReadHalf,
    input: Input,
    eof_seen: Arc<std::sync::atomic::AtomicBool>,
) {
    let Input {
        ref up_tx,
        ref record,
        has_pty,
        ..
    } = input;
    while let Some(m) = rx.wait().await {
        match m {
            ChannelMsg::Data { data } => {
                let passed_on = input.forward(data).await;
                if !passed_on {
                    break;
                }
            }
            ChannelMsg::Eof => {
                eof_seen.store(true, std::sync::atomic::Ordering::Relaxed);
                let _ = up_tx.eof().await;
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                pix_width,
                pix_height,
            } if has_pty => {
                if let Some(r) = &record {
                    r.locked().resize(col_width, row_height);
                }
                let _ = up_tx
                    .window_change(col_width, row_height, pix_width, pix_height)
                    .await;
            }
            ChannelMsg::Signal { signal } => {
                let _ = up_tx.signal(signal).await;
            }
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    let _ = up_tx.close().await;
}

/// The upstream → client half.
struct Output {
    tx: ChannelWriteHalf<Msg>,
    live: Arc<Live>,
    id: russh::ChannelId,
    stdout: Option<StreamMasker>,
    stderr: Option<StreamMasker>,
    record: Option<Arc<Mutex<StreamRecorder>>>,
    sftp: Option<Arc<Mutex<SftpTracker>>>,
    bytes: u64,
    status: Option<String>,
    masked: sluice_core::masking::MaskCounts,
    /// The upstream sent EOF; `eof_sent`: it was passed on.
    eof: bool,
    eof_sent: bool,
}

impl Output {
    /// Upstream → client until the upstream ends or the client connection
    /// goes: what arrived before the request's answer first, then the
    /// stream; held-back masker bytes are released after `mask_idle` of
    /// upstream silence. Ends with the maskers flushed and EOF sent.
    async fn pump(
        &mut self,
        before: Vec<ChannelMsg>,
        up_rx: &mut ChannelReadHalf,
        mask_idle: std::time::Duration,
    ) {
        for m in before {
            if !self.handle(m).await {
                break;
            }
        }
        let mut closed = self.live.closed.clone();
        loop {
            let pending = self.stdout.as_ref().is_some_and(|m| m.pending() > 0)
                || self.stderr.as_ref().is_some_and(|m| m.pending() > 0);
            tokio::select! {
                _ = crate::server::connection_gone(&mut closed) => break,
                m = up_rx.wait() => {
                    let Some(m) = m else { break };
                    if !self.handle(m).await {
                        break;
                    }
                }
                _ = tokio::time::sleep(mask_idle), if pending => self.flush_maskers().await,
            }
        }
        self.flush_maskers().await;
        self.eof = true;
        self.send_eof().await;
    }

    /// Handles one upstream message; false when the channel is done.
    async fn handle(&mut self, m: ChannelMsg) -> bool {
        match m {
            ChannelMsg::Data { data } => {
                if let Some(s) = &self.sftp {
                    s.locked().server_data(&data);
                }
                let data = match &mut self.stdout {
                    Some(m) => Bytes::from(m.push(&data)),
                    None => data,
                };
                self.send(None, data).await
            }
            ChannelMsg::ExtendedData { data, ext } => {
                let data = match (&mut self.stderr, ext) {
                    (Some(m), 1) => Bytes::from(m.push(&data)),
                    _ => data,
                };
                self.send(Some(ext), data).await
            }
            ChannelMsg::ExitStatus { exit_status } => {
                self.flush_maskers().await;
                self.status = Some(format!("exit {exit_status}"));
                let _ = self.tx.exit_status(exit_status).await;
                self.send_eof().await;
                true
            }
            ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                error_message,
                lang_tag,
            } => {
                self.flush_maskers().await;
                self.status = Some(format!("signal {signal_name:?}"));
                let _ = self
                    .live
                    .client
                    .exit_signal_request(self.id, signal_name, core_dumped, error_message, lang_tag)
                    .await;
                self.send_eof().await;
                true
            }
            ChannelMsg::Eof => {
                // Held until the exit status is out: a client that sees EOF
                // both ways may close the channel, and an exit status sent
                // after that is lost (ssh would report 255).
                self.flush_maskers().await;
                self.eof = true;
                true
            }
            ChannelMsg::Close => false,
            _ => true,
        }
    }

    /// Sends the upstream's EOF once (after the exit status, or at close).
    async fn send_eof(&mut self) {
        if self.eof && !self.eof_sent {
            self.eof_sent = true;
            let _ = self.tx.eof().await;
        }
    }

    async fn send(&mut self, ext: Option<u32>, data: Bytes) -> bool {
        if data.is_empty() {
            return true;
        }
        self.bytes += data.len() as u64;
        if let Some(r) = &self.record {
            r.locked()
                .record(if ext.is_some() { "stderr" } else { "stdout" }, &data);
        }
        let sent = match ext {
            None => self.tx.data_bytes(data).await,
            Some(e) => self.tx.extended_data_bytes(e, data).await,
        };
        sent.is_ok()
    }

    /// Releases what the maskers hold back (idle stream, exit, EOF).
    async fn flush_maskers(&mut self) {
        if let Some(m) = &mut self.stdout {
            let held = m.flush();
            self.masked.merge(&m.take_counts());
            self.send(None, Bytes::from(held)).await;
        }
        if let Some(m) = &mut self.stderr {
            let held = m.flush();
            self.masked.merge(&m.take_counts());
            self.send(Some(1), Bytes::from(held)).await;
        }
    }
}

/// Closes an upstream channel opened for a command that will not run.
async fn close_unused(opening: Option<Opening>) {
    let Some(opening) = opening else { return };
    if let Ok(Ok(channel)) = opening.await {
        let _ = channel.close().await;
    }
}

/// Ends a channel the gateway answers itself: text on stderr, an exit status.
async fn refuse_locally(tx: &ChannelWriteHalf<Msg>, text: &str, status: u32) {
    let _ = tx
        .extended_data_bytes(1, Bytes::from(text.to_string()))
        .await;
    let _ = tx.exit_status(status).await;
    let _ = tx.eof().await;
    let _ = tx.close().await;
}

/// The denial as an agent reads it on stderr: the rule, its message, what next.
pub(crate) fn denial_text(denial: &Denial, nl: &str) -> String {
    let mut s = format!("sluice: {}{nl}", denial.message);
    if let Some(hint) = &denial.hint {
        s.push_str(&format!("sluice: {hint}{nl}"));
    }
    s
}

async fn recv_notice(
    notices: &mut Option<
        tokio::sync::MutexGuard<'_, Option<sluice_core::sync::QueueReceiver<String>>>,
    >,
) -> Option<String> {
    match notices.as_mut().and_then(|g| g.as_mut()) {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The words of a line that is exactly one command: no separators,
/// pipes, redirections, substitutions, expansions or assignments, so that
/// what runs is that one program and nothing else.
fn sole_command(text: &str) -> Option<Vec<String>> {
    // Unquoted shell syntax anywhere (even after `||`, or in a comment)
    // means the line is more than one transfer command.
    let mut chars = text.trim_end_matches(['\n', ' ']).chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some('\''), '\'') | (Some('"'), '"') => quote = None,
            (Some('\''), _) => {}
            (Some('"'), '$' | '`' | '\\') => return None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '\\') => {
                chars.next();
            }
            (None, c) if ";&|<>()`$\n#".contains(c) => return None,
            (None, _) => {}
        }
    }
    if quote.is_some() {
        return None;
    }
    let mut commands = sluice_shell::parse(text).ok()?;
    if commands.len() != 1 {
        return None;
    }
    let cmd = commands.pop()?;
    if !cmd.assignments.is_empty()
        || cmd.stdin_redirected
        // A glob (`scp -f /var/log/*.log`) expands to names, not code.
        || cmd.words.iter().any(|w| w.dynamic)
    {
        return None;
    }
    Some(cmd.words.into_iter().map(|w| w.text).collect())
}

/// `scp -t PATH` (upload) or `scp -f PATH` (download), when that is the
/// whole exec line: a line that merely mentions scp
/// (`cat ~/.aws/credentials; true || scp -t /tmp`) is an ordinary command,
/// masked and recorded as such.
fn scp_transfer(text: &str) -> Option<Carries> {
    let words = sole_command(text)?;
    let (program, args) = words.split_first()?;
    if !is_transfer_program(program, "scp") {
        return None;
    }
    let upload = scp_sink_direction(args)?;
    let path = args
        .iter()
        .rev()
        .find(|a| !a.starts_with('-'))
        .cloned()
        .unwrap_or_default();
    Some(Carries::Scp { path, upload })
}

/// The direction of a server-side scp (`-t`: upload, `-f`: download) when
/// its options are only the harmless ones the client sends (`-d -p -q -r -v`
/// and the protocol flags `-3 -4 -6 -T`); `None` for anything else, since
/// options such as `-S program`, `-o ProxyCommand=…`, `-F file` or `-J host`
/// make scp run other programs.
pub(crate) fn scp_sink_direction(args: &[String]) -> Option<bool> {
    const HARMLESS: &str = "dpqrv346T";
    let mut upload = None;
    for a in args {
        if a == "--" {
            break;
        }
        let Some(flags) = a.strip_prefix('-') else {
            continue;
        };
        if flags.is_empty() || flags.starts_with('-') {
            return None;
        }
        for c in flags.chars() {
            match c {
                't' => upload = Some(true),
                'f' => upload = Some(false),
                c if HARMLESS.contains(c) => {}
                _ => return None,
            }
        }
    }
    upload
}

/// An exec of the SFTP server program (`/usr/lib/openssh/sftp-server`), when
/// that is the whole exec line.
fn is_sftp_server(text: &str) -> bool {
    sole_command(text)
        .and_then(|w| w.first().cloned())
        .is_some_and(|p| is_transfer_program(&p, "sftp-server"))
}

/// Where OpenSSH installs `scp` and `sftp-server` (Debian, Fedora, Arch,
/// Gentoo, the BSDs, macOS, source builds).
const TRANSFER_DIRS: &[&str] = &[
    "/usr/bin",
    "/bin",
    "/usr/local/bin",
    "/usr/lib/openssh",
    "/usr/libexec/openssh",
    "/usr/libexec",
    "/usr/lib/ssh",
    "/usr/lib/misc",
    "/usr/local/libexec",
];

/// Whether `program`, as written on the exec line, is the host's own `name`
/// (`scp`, `sftp-server`): the bare name, or that name in a directory
/// OpenSSH installs to. A transfer's output is read as file transfer, not
/// masked as text, so `/tmp/sftp-server` (a script an agent uploaded) must
/// not pass for one.
pub(crate) fn is_transfer_program(program: &str, name: &str) -> bool {
    program.rsplit('/').next() == Some(name) && sluice_shell::written_in(program, TRANSFER_DIRS)
}

#[cfg(test)]
mod transfer_tests {
    use super::*;

    #[test]
    fn only_a_line_that_is_one_transfer_command_is_a_transfer() {
        assert!(matches!(
            scp_transfer("scp -t /tmp"),
            Some(Carries::Scp { upload: true, .. })
        ));
        assert!(matches!(
            scp_transfer("scp -f -- '/srv/a b'"),
            Some(Carries::Scp { upload: false, .. })
        ));
        for line in [
            "cat ~/.aws/credentials; true || scp -t /tmp",
            "cat ~/.aws/credentials && scp -t /tmp",
            "scp -t /tmp; cat /etc/shadow",
            "scp -t /tmp | cat",
            "scp -t $(cat /etc/shadow)",
            "scp -t /tmp > /dev/null",
            "X=1 scp -t /tmp",
            "scp -t /tmp # comment",
            "scp -t /tmp\ncat /etc/shadow",
            "scp -S /tmp/x -t /tmp",
            "exec scp -t /tmp",
            "echo scp -t /tmp",
        ] {
            assert!(scp_transfer(line).is_none(), "{line:?}");
        }
        assert!(is_sftp_server("/usr/lib/openssh/sftp-server"));
        assert!(!is_sftp_server(
            "cat /etc/shadow; /usr/lib/openssh/sftp-server"
        ));
        assert!(!is_sftp_server("cat /etc/shadow | sftp-server"));
    }

    #[test]
    fn locales_are_passed_only_in_encodings_the_line_was_judged_in() {
        for (name, value) in [
            ("LANG", "en_US.UTF-8"),
            ("LC_ALL", "C"),
            ("LC_CTYPE", "de_DE.utf8@euro"),
            ("LC_MESSAGES", "POSIX"),
            ("LC_TEST", "anything"),
            ("TERM", "xterm"),
        ] {
            assert!(env_allowed(name, value), "{name}={value}");
        }
        for (name, value) in [
            ("LANG", "zh_CN.GBK"),
            ("LC_ALL", "ja_JP.SJIS"),
            ("LC_CTYPE", "zh_TW.Big5"),
            ("LANG", "zh_CN"),
            ("LD_PRELOAD", "/tmp/x.so"),
        ] {
            assert!(!env_allowed(name, value), "{name}={value}");
        }
    }

    #[test]
    fn a_transfer_program_must_be_the_hosts_own() {
        assert!(is_sftp_server("/usr/libexec/openssh/sftp-server"));
        assert!(scp_transfer("/usr/bin/scp -t /tmp").is_some());
        for line in [
            "/tmp/sftp-server",
            "./sftp-server",
            "/usr/lib/openssh/../../../tmp/sftp-server",
            "/usr/lib/openssh//sftp-server",
            "~/sftp-server",
        ] {
            assert!(!is_sftp_server(line), "{line:?}");
        }
        for line in ["/tmp/scp -t /tmp", "./scp -f /etc/hosts", "bin/scp -t /"] {
            assert!(scp_transfer(line).is_none(), "{line:?}");
        }
    }
}
