//! End-to-end harness: a throwaway PostgreSQL with the demo data, the real `sluice` binary in
//! front of it, and real clients (psql, pgbench, python psycopg, raw sockets).
//!
//! Every test builds its own [`Env`] (own PostgreSQL, own state dir, own free port), so tests
//! run in parallel. Dropping an [`Env`] kills the gateway and stops PostgreSQL.
//!
//! The harness panics on any setup failure: that is how a test fails.

// A test harness: panicking with a clear message is how it reports failures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod http;
pub mod kube;
pub mod oidc;
pub mod oracle;
pub mod pgfuzz;
pub mod pgwire;
pub mod plugins;
pub mod raw;
pub mod s3;
pub mod sshd;

use oracle::OracleReport;
use sluice_sandbox::{free_port, DemoDatabase, TempPostgres, TempPostgresOptions};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long any client command may run before the harness kills it and fails the test.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the gateway may take to log that its listener is ready.
const GATEWAY_START_TIMEOUT: Duration = Duration::from_secs(30);
/// The log line the gateway prints once its PostgreSQL listener is bound.
const READY_LINE: &str = "PostgreSQL listener ready.";

/// The workspace's target directory: `$CARGO_TARGET_DIR` if set, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace.join(dir)
            }
        }
        None => workspace.join("target"),
    }
}

/// The `sluice` binary built from this workspace (`$SLUICE_BIN` overrides it).
///
/// Panics with instructions when it has not been built: the binary lives in another package,
/// so `cargo nextest run -p sluice-e2e` alone does not build it.
pub fn sluice_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SLUICE_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    let bin = target_dir().join("debug").join("sluice");
    assert!(
        bin.is_file(),
        "the sluice binary is missing at {}: build it first with \
         `cargo build -p sluice` (or run `cargo xtask test`, which builds the workspace), \
         or point SLUICE_BIN at one",
        bin.display()
    );
    bin
}

/// The `custom-gateway` example's binary (`$CUSTOM_GATEWAY_BIN` overrides it).
pub fn custom_gateway_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("CUSTOM_GATEWAY_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    let bin = target_dir().join("debug").join("custom-gateway");
    assert!(
        bin.is_file(),
        "the custom-gateway binary is missing at {}: build it first with \
         `cargo build -p custom-gateway` (or run `cargo xtask test`)",
        bin.display()
    );
    bin
}

/// Directory of the python client scripts (`tests/py`).
pub fn py_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("py")
}

/// Runs `cmd` to completion with `stdin` (or /dev/null), capturing stdout and stderr; kills it
/// and panics if it runs longer than `timeout`.
pub fn run_with_timeout(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let writer = match (stdin, child.stdin.take()) {
        (Some(input), Some(mut pipe)) => {
            let input = input.to_vec();
            Some(thread::spawn(move || {
                // The child may exit early; its status tells why.
                let _ = pipe.write_all(&input);
            }))
        }
        _ => None,
    };
    let out = wait_output(child, timeout, &what);
    if let Some(w) = writer {
        let _ = w.join();
    }
    out
}

/// Waits for a spawned child (stdout/stderr piped), killing it after `timeout`.
pub fn wait_output(mut child: Child, timeout: Duration, what: &str) -> Output {
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                let err = stderr.map(|h| h.join().unwrap_or_default());
                panic!(
                    "{what} did not finish within {timeout:?}; stderr:\n{}",
                    String::from_utf8_lossy(&err.unwrap_or_default())
                );
            }
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    };
    Output {
        status,
        stdout: stdout
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default(),
        stderr: stderr
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default(),
    }
}

fn drain(mut r: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Panics (showing both streams) unless the command succeeded; returns stdout.
#[track_caller]
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "command failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

/// Panics (showing both streams) unless the command failed; returns stderr.
#[track_caller]
pub fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "command unexpectedly succeeded:\n--- stdout ---\n{}\n--- stderr ---\n{}",
        stdout(out),
        stderr(out)
    );
    stderr(out)
}

/// Sends the gateway `pid` SIGHUP and waits until its log (read by
/// `log`) tells the outcome: `Configuration reloaded.` or `Configuration
/// not reloaded`. Returns that log line.
pub fn reload(pid: u32, log: impl Fn() -> String) -> String {
    let offset = log().len();
    let sent = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(sent.success(), "kill -HUP failed");
    wait_until(
        Duration::from_secs(10),
        "the gateway to log the reload",
        || {
            log()
                .get(offset..)?
                .lines()
                .find(|l| {
                    l.contains("Configuration reloaded.")
                        || l.contains("Configuration not reloaded")
                })
                .map(str::to_string)
        },
    )
}

/// Polls `f` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
#[track_caller]
pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A listener address for the gateway to bind on a port the kernel picks;
/// [`bound_addr`] reads which from the log.
pub const ANY_LOCAL_PORT: &str = "127.0.0.1:0";

/// The address a listener configured on port 0 bound: waits (60 s) for the
/// gateway's `ready` log line (`… ready … addr=IP:PORT`) and reads it from
/// there. The kernel picks the port at bind time, so no parallel test or
/// outgoing connection can take it in between, as can happen to a port
/// chosen in advance. The log accumulates across the harness's start
/// attempts, so the last complete such line counts. Fails at once, with the
/// log, if this listener could not bind (`binding the NAME listener`).
#[track_caller]
pub fn bound_addr(log: impl Fn() -> String, ready: &str, name: &str) -> SocketAddr {
    let bind_error = format!("binding the {name} listener");
    wait_until(Duration::from_secs(60), ready, || {
        let text = strip_ansi(&log());
        assert!(
            !text.contains(&bind_error),
            "the {name} listener could not bind:\n{text}"
        );
        let line = text
            .split_inclusive('\n')
            .rfind(|l| l.ends_with('\n') && l.contains(ready))?;
        let addr = line.split_once("addr=")?.1.split_whitespace().next()?;
        Some(
            addr.parse()
                .unwrap_or_else(|e| panic!("no address in {line:?}: {e}")),
        )
    })
}

/// The MCP listener's address (configured on [`ANY_LOCAL_PORT`]) and the
/// gateway's CA certificate that its TLS chains to, once both are there.
#[track_caller]
pub fn mcp_listener(state_dir: &Path, log: impl Fn() -> String) -> (SocketAddr, PathBuf) {
    let addr = bound_addr(log, "MCP listener ready", "mcp");
    let ca = state_dir.join("tls").join("ca.crt");
    wait_until(Duration::from_secs(10), "the gateway's CA", || {
        ca.is_file().then_some(())
    });
    (addr, ca)
}

/// `text` without terminal colour sequences (`ESC [ … m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `needle` occurs in `haystack` (bytes).
/// Runs `sluice ARGS… --config CONFIG` with `env`, bounded by the command timeout.
pub fn sluice_cli(config: &Path, env: &[(String, String)], args: &[&str]) -> Output {
    let mut cmd = Command::new(sluice_bin());
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .envs(env.iter().map(|(k, v)| (k, v)));
    run_with_timeout(&mut cmd, None, COMMAND_TIMEOUT)
}

/// Issues a gateway token through `sluice` (an environment's CLI runner).
pub fn issue_token(
    sluice: impl Fn(&[&str]) -> Output,
    subject: &str,
    groups: &[&str],
    ttl: &str,
) -> String {
    let groups = groups.join(",");
    let out = sluice(&[
        "token",
        "issue",
        "--subject",
        subject,
        "--groups",
        &groups,
        "--ttl",
        ttl,
    ]);
    let token = ok(&out).trim().to_string();
    assert!(!token.is_empty(), "sluice token issue printed nothing");
    token
}

pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Removes libpq environment variables that could send a client somewhere else.
pub fn clean_pg_env(cmd: &mut Command) -> &mut Command {
    for var in [
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGPASSWORD",
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGOPTIONS",
        "PGSSLMODE",
        "PGSSLROOTCERT",
        "PGPASSFILE",
        "PGAPPNAME",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("PGCONNECT_TIMEOUT", "10")
}

/// The `[[rules]]` and `[masking]` sections of `examples/quickstart.toml`.
pub fn quickstart_policy() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart.toml");
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let start = text
        .find("[[rules]]")
        .expect("examples/quickstart.toml has [[rules]]");
    text[start..].to_string()
}

/// Runs `sluice serve --config CONFIG` with `env`, its output appended to `log_path`, and
/// waits until it logs that its PostgreSQL listener is ready. `Err` with its exit status and
/// what it logged if it exits first (a caller may retry on another port); panics if it is
/// not ready within [`GATEWAY_START_TIMEOUT`].
pub fn serve_until_ready(
    config: &Path,
    env: &[(String, String)],
    log_path: &Path,
) -> Result<Child, (ExitStatus, String)> {
    serve_until(config, env, log_path, READY_LINE)
}

/// [`serve_until_ready`], waiting for `ready` in the log instead.
pub fn serve_until(
    config: &Path,
    env: &[(String, String)],
    log_path: &Path,
    ready: &str,
) -> Result<Child, (ExitStatus, String)> {
    let offset = fs::metadata(log_path).map(|m| m.len()).unwrap_or(0) as usize;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .expect("opening the gateway log");
    let mut child = Command::new(sluice_bin())
        .arg("serve")
        .arg("--config")
        .arg(config)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("cloning the log file handle"))
        .stderr(log)
        .spawn()
        .expect("spawning sluice serve");
    let deadline = Instant::now() + GATEWAY_START_TIMEOUT;
    loop {
        let text = fs::read(log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let new = text.get(offset..).unwrap_or_default();
        if new.contains(ready) {
            return Ok(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err((status, new.to_string()));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sluice serve was not ready within {GATEWAY_START_TIMEOUT:?}; log:\n{new}");
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// What to start: PostgreSQL settings, extra gateway config, gateway environment.
#[derive(Debug, Default, Clone)]
pub struct EnvBuilder {
    pg_conf: Vec<String>,
    pg_ssl: bool,
    extra_toml: Vec<String>,
    gateway_env: Vec<(String, String)>,
    files: Vec<(String, String)>,
    log_level: Option<String>,
    without_oracle: bool,
    drain_timeout: Option<String>,
    shared_store: Option<SharedStoreOption>,
    gateway_lines: Vec<String>,
}

impl EnvBuilder {
    /// `listen.drain_timeout` (default `3s`, so that stopping a gateway with
    /// live sessions stays quick in tests).
    pub fn drain_timeout(mut self, timeout: &str) -> Self {
        self.drain_timeout = Some(timeout.to_string());
        self
    }

    /// Appends a line to the PostgreSQL server's `postgresql.conf`.
    pub fn pg_conf(mut self, line: &str) -> Self {
        self.pg_conf.push(line.to_string());
        self
    }

    /// Starts PostgreSQL with `ssl = on` (a self-signed `server.crt` for localhost and
    /// 127.0.0.1 in its data directory; `{PGDATA}` in [`EnvBuilder::extra_toml`] names it).
    pub fn pg_ssl(mut self) -> Self {
        self.pg_ssl = true;
        self
    }

    /// Appends TOML to the gateway config (after the `appdb` connection). `{PG}` is replaced
    /// with the PostgreSQL server's `127.0.0.1:port`, `{DIR}` with the test's temp directory.
    pub fn extra_toml(mut self, toml: &str) -> Self {
        self.extra_toml.push(toml.to_string());
        self
    }

    /// Adds a line to the gateway config's `[gateway]` table, e.g.
    /// `session_scheduling = "pinned"`.
    pub fn gateway_line(mut self, line: &str) -> Self {
        self.gateway_lines.push(line.to_string());
        self
    }

    /// Sets an environment variable for the gateway and the CLI commands.
    pub fn gateway_env(mut self, key: &str, value: &str) -> Self {
        self.gateway_env.push((key.to_string(), value.to_string()));
        self
    }

    /// Writes `contents` to `path` (relative to the test's temp directory) before the gateway
    /// starts, e.g. a `{ file = "{DIR}/NAME" }` secret. `{MD5_PASSWORD}` in `contents` is
    /// replaced with the demo `legacy` role's password.
    pub fn file(mut self, path: &str, contents: &str) -> Self {
        self.files.push((path.to_string(), contents.to_string()));
        self
    }

    /// No statement log on the server and no oracle check when the environment drops (for
    /// load tests whose log would be large; every SQL test keeps the oracle).
    /// The gateway as node `node` of a shared PostgreSQL store: database `sluice_store` on
    /// the test's PostgreSQL server, or with `separate`, on a server of its own (so that
    /// the store can be stopped while the target runs).
    pub fn shared_store(mut self, node: &str, separate: bool) -> Self {
        self.shared_store = Some(SharedStoreOption {
            node: node.to_string(),
            separate,
            recordings: None,
        });
        self
    }

    /// With a shared store: ended sessions' recordings go to bucket `sluice-recordings` (prefix
    /// `e2e`) on the S3-compatible server at `endpoint`.
    pub fn recordings(mut self, endpoint: &str) -> Self {
        if let Some(opt) = self.shared_store.as_mut() {
            opt.recordings = Some(endpoint.to_string());
        }
        self
    }

    pub fn without_oracle(mut self) -> Self {
        self.without_oracle = true;
        self
    }

    /// `SLUICE_LOG` for the gateway (default `info`).
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = Some(level.to_string());
        self
    }

    /// Starts PostgreSQL (with the demo data), writes the config and starts the gateway.
    pub fn start(self) -> Env {
        let pg = TempPostgres::start(TempPostgresOptions {
            extra_conf: self.pg_conf.clone(),
            ssl: self.pg_ssl,
            statement_log: !self.without_oracle,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("starting PostgreSQL: {e}"));
        assert!(
            pg.ssl || !self.pg_ssl,
            "PostgreSQL with ssl = on needs the openssl CLI"
        );
        let db = pg
            .seed_demo()
            .unwrap_or_else(|e| panic!("seeding the demo data: {e}"));
        let dir = tempfile::Builder::new()
            .prefix("sluice-e2e-")
            .tempdir()
            .expect("creating the test temp dir");
        for (path, contents) in &self.files {
            let contents = contents.replace("{MD5_PASSWORD}", &db.md5_password);
            fs::write(dir.path().join(path), contents).expect("writing a test file");
        }
        let state_dir = dir.path().join("state");
        let config_path = dir.path().join("sluice.toml");
        let log_path = dir.path().join("gateway.log");
        let mut gateway_env = vec![
            ("APPDB_PASSWORD".to_string(), db.password.clone()),
            ("NO_COLOR".to_string(), "1".to_string()),
            (
                "SLUICE_LOG".to_string(),
                self.log_level.clone().unwrap_or_else(|| "info".into()),
            ),
        ];
        gateway_env.extend(self.gateway_env.iter().cloned());
        let extra = self
            .extra_toml
            .iter()
            .map(|t| {
                t.replace("{PG}", &pg.addr().to_string())
                    .replace("{DIR}", &dir.path().display().to_string())
                    .replace("{PGDATA}", &pg.data_dir.display().to_string())
            })
            .collect::<Vec<_>>()
            .join("\n");
        let (store_pg, shared_store) = match &self.shared_store {
            None => (None, None),
            Some(opt) => {
                let own = opt.separate.then(|| {
                    TempPostgres::start(TempPostgresOptions::default())
                        .unwrap_or_else(|e| panic!("starting the store's PostgreSQL: {e}"))
                });
                let server = own.as_ref().unwrap_or(&pg);
                let mut store = SharedStore::create(server, &opt.node);
                store.recordings = opt.recordings.clone();
                gateway_env.push((
                    "SLUICE_STORE_PASSWORD".into(),
                    server.superuser_password.clone(),
                ));
                gateway_env.push(("SLUICE_S3_KEY".into(), "testing".into()));
                gateway_env.push(("SLUICE_S3_SECRET".into(), "testing".into()));
                (own, Some(store))
            }
        };
        let mut env = Env {
            store_pg,
            shared_store,
            gateway: None,
            port: 0,
            config_path,
            state_dir,
            log_path,
            gateway_env,
            extra_toml: extra,
            gateway_lines: self.gateway_lines.join("\n"),
            drain_timeout: self.drain_timeout.clone().unwrap_or_else(|| "3s".into()),
            db,
            pg,
            dir,
        };
        env.start_gateway();
        env
    }
}

#[derive(Debug, Clone)]
struct SharedStoreOption {
    node: String,
    separate: bool,
    recordings: Option<String>,
}

/// A shared PostgreSQL store (database `sluice_store`, as the superuser) and a node's id in it.
#[derive(Debug, Clone)]
pub struct SharedStore {
    /// `postgres://postgres@127.0.0.1:PORT/sluice_store` (the password is in the
    /// gateway's environment, `SLUICE_STORE_PASSWORD`).
    pub url: String,
    pub node: String,
    /// The S3-compatible endpoint for recordings (`EnvBuilder::recordings`).
    pub recordings: Option<String>,
}

impl SharedStore {
    /// Creates the store's database on `server` (if it is not there yet).
    pub fn create(server: &TempPostgres, node: &str) -> SharedStore {
        let exists = server
            .psql(
                "postgres",
                "SELECT 1 FROM pg_database WHERE datname = 'sluice_store'",
            )
            .unwrap_or_default();
        if exists.trim().is_empty() {
            server
                .psql("postgres", "CREATE DATABASE sluice_store")
                .unwrap_or_else(|e| panic!("creating the store database: {e}"));
        }
        SharedStore {
            url: format!(
                "postgres://{}@{}/sluice_store",
                server.superuser,
                server.addr()
            ),
            node: node.to_string(),
            recordings: None,
        }
    }

    /// The `[gateway]` lines that make a gateway this node of the store.
    pub fn gateway_toml(&self) -> String {
        let mut toml = format!(
            "store = {:?}\nstore_password = {{ env = \"SLUICE_STORE_PASSWORD\" }}\nnode = {:?}\n",
            self.url, self.node
        );
        if let Some(endpoint) = &self.recordings {
            toml.push_str(&format!(
                "recordings = \"s3://sluice-recordings/e2e\"\n\
                 recordings_endpoint = {endpoint:?}\n\
                 recordings_region = \"us-east-1\"\n\
                 recordings_access_key_id = {{ env = \"SLUICE_S3_KEY\" }}\n\
                 recordings_secret_access_key = {{ env = \"SLUICE_S3_SECRET\" }}\n"
            ));
        }
        toml
    }

    /// What the store holds as judged (the oracle's view), read with psql, not the gateway.
    pub fn decisions(&self, server: &TempPostgres) -> Vec<oracle::Judged> {
        let rows = server
            .psql(
                "sluice_store",
                "SELECT session_id || E'\\t' || at_ms || E'\\t' || body FROM sluice_records
                 WHERE kind = 'command_decided' ORDER BY at_ms, session_id, seq",
            )
            .unwrap_or_default();
        rows.lines()
            .filter_map(|line| {
                let mut f = line.splitn(3, '\t');
                let (session, at_ms) = (f.next()?, f.next()?.parse().ok()?);
                oracle::judged(session, at_ms, f.next()?)
            })
            .collect()
    }
}

/// One PostgreSQL + one gateway, private to a test.
pub struct Env {
    gateway: Option<Child>,
    /// The gateway's PostgreSQL listener port on 127.0.0.1.
    pub port: u16,
    /// The gateway config file.
    pub config_path: PathBuf,
    /// `gateway.state_dir` (store, signing key, generated TLS).
    pub state_dir: PathBuf,
    log_path: PathBuf,
    gateway_env: Vec<(String, String)>,
    extra_toml: String,
    /// Lines of the `[gateway]` table (`EnvBuilder::gateway_line`).
    gateway_lines: String,
    drain_timeout: String,
    /// The shared store's own server (`shared_store(…, separate = true)`).
    pub store_pg: Option<TempPostgres>,
    /// The shared store the gateway is a node of, if any.
    pub shared_store: Option<SharedStore>,
    /// The demo database's roles and passwords (the gateway-held secrets).
    pub db: DemoDatabase,
    /// The upstream PostgreSQL server.
    pub pg: TempPostgres,
    /// The test's temp directory (config, state, logs).
    pub dir: TempDir,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("port", &self.port)
            .field("config_path", &self.config_path)
            .field("pg", &self.pg)
            .finish()
    }
}

impl Env {
    /// The default environment: PostgreSQL with demo data and one connection, `appdb`
    /// (user `app`, group `agents`).
    pub fn start() -> Env {
        EnvBuilder::default().start()
    }

    /// A builder for a customised environment.
    pub fn builder() -> EnvBuilder {
        EnvBuilder::default()
    }

    /// The `appdb` connection with the rules and masking of `examples/quickstart.toml` (what
    /// `sluice demo` runs): no-ddl, no-unbounded-writes, no-server-side-effects, reviewed
    /// customer writes, detectors and the national-id column rule.
    pub fn quickstart() -> EnvBuilder {
        EnvBuilder::default().extra_toml(&quickstart_policy())
    }

    /// Writes the config for the current port.
    fn write_config(&self) {
        let config = format!(
            "[gateway]\n\
             state_dir = {state:?}\n\
             {store}\n\
             {gateway_lines}\n\
             \n\
             [listen]\n\
             postgres = \"127.0.0.1:{port}\"\n\
             drain_timeout = {drain:?}\n\
             \n\
             [auth]\n\
             token_max_ttl = \"8h\"\n\
             \n\
             [[connections]]\n\
             name = \"appdb\"\n\
             kind = \"postgres\"\n\
             upstream = \"{upstream}\"\n\
             database = \"{database}\"\n\
             user = \"{user}\"\n\
             password = {{ env = \"APPDB_PASSWORD\" }}\n\
             allow_groups = [\"agents\"]\n\
             upstream_tls = \"prefer\"\n\
             \n\
             {extra}\n",
            state = self.state_dir.display().to_string(),
            store = self
                .shared_store
                .as_ref()
                .map(SharedStore::gateway_toml)
                .unwrap_or_default(),
            gateway_lines = self.gateway_lines,
            port = self.port,
            upstream = self.pg.addr(),
            database = self.db.database,
            user = self.db.user,
            extra = self.extra_toml,
            drain = self.drain_timeout,
        );
        fs::write(&self.config_path, config).expect("writing the gateway config");
    }

    /// Starts the gateway (a no-op if it runs) and waits until its listener is ready. Retries
    /// on another port if the chosen one was taken meanwhile.
    pub fn start_gateway(&mut self) {
        if self.gateway.is_some() {
            return;
        }
        if self.port == 0 {
            self.port = free_port();
        }
        for attempt in 1..=3 {
            self.write_config();
            match serve_until_ready(&self.config_path, &self.gateway_env, &self.log_path) {
                Ok(child) => {
                    self.gateway = Some(child);
                    return;
                }
                Err((_, log)) if attempt < 3 && log.contains("binding the postgres listener") => {
                    self.port = free_port();
                }
                Err((status, log)) => {
                    panic!("sluice serve exited ({status}) before it was ready; log:\n{log}")
                }
            }
        }
    }

    /// Rewrites the config with `extra_toml` in place of the builder's extra
    /// sections, sends SIGHUP and waits until the gateway logs the outcome
    /// (`Configuration reloaded.` or `Configuration not reloaded`). Returns that log line.
    pub fn reload_gateway(&mut self, extra_toml: &str) -> String {
        self.extra_toml = extra_toml
            .replace("{PG}", &self.pg.addr().to_string())
            .replace("{DIR}", &self.dir.path().display().to_string());
        self.write_config();
        let pid = self
            .gateway
            .as_ref()
            .expect("the gateway is not running")
            .id();
        reload(pid, || self.gateway_log())
    }

    /// Stops the gateway: SIGTERM, then SIGKILL after 10 s. Returns its exit status.
    pub fn stop_gateway(&mut self) -> Option<ExitStatus> {
        let mut child = self.gateway.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the gateway outright (SIGKILL), like a crash.
    pub fn kill_gateway(&mut self) {
        if let Some(mut child) = self.gateway.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the gateway and starts it again on the same port (if still free).
    pub fn restart_gateway(&mut self) {
        self.stop_gateway();
        self.start_gateway();
    }

    /// Whether the gateway process is still running (`false` if it exited or was stopped).
    pub fn gateway_alive(&mut self) -> bool {
        match self.gateway.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Panics, with the gateway log, unless the gateway process is still running.
    #[track_caller]
    pub fn assert_gateway_alive(&mut self) {
        if !self.gateway_alive() {
            panic!("the gateway process is gone; log:\n{}", self.gateway_log());
        }
    }

    /// Everything the gateway wrote to stdout/stderr so far (all runs, appended).
    pub fn gateway_log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The running gateway's process id.
    pub fn gateway_pid(&self) -> Option<u32> {
        self.gateway.as_ref().map(Child::id)
    }

    /// The gateway listener address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The SQLite store file.
    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("sluice.db")
    }

    /// The generated CA certificate clients can trust (waits for the gateway to write it).
    pub fn ca_path(&self) -> PathBuf {
        let path = self.state_dir.join("tls").join("ca.crt");
        wait_until(
            Duration::from_secs(10),
            "the gateway's generated ca.crt",
            || path.is_file().then_some(()),
        );
        path
    }

    /// Runs `sluice ARGS… --config FILE` with the gateway's environment.
    pub fn sluice(&self, args: &[&str]) -> Output {
        sluice_cli(&self.config_path, &self.gateway_env, args)
    }

    /// Issues a gateway token (`sluice token issue`); `ttl` like `10m`.
    pub fn token(&self, subject: &str, groups: &[&str], ttl: &str) -> String {
        issue_token(|a| self.sluice(a), subject, groups, ttl)
    }

    /// A token for subject `agent-1` in group `agents`, valid 10 minutes.
    pub fn agent_token(&self) -> String {
        self.token("agent-1", &["agents"], "10m")
    }

    /// `agent-1` on the `appdb` connection, speaking the raw protocol.
    pub fn raw_agent(&self) -> raw::RawConn {
        raw::RawConn::login(self.addr(), "agent-1", "appdb", &self.agent_token())
            .unwrap_or_else(|e| panic!("login refused: {}", e.message()))
    }

    /// `postgresql://SUBJECT:TOKEN@127.0.0.1:PORT/CONNECTION`.
    pub fn url(&self, subject: &str, token: &str, connection: &str) -> String {
        format!(
            "postgresql://{subject}:{token}@127.0.0.1:{}/{connection}",
            self.port
        )
    }

    /// A URL for `appdb` as `agent-1` with a fresh token.
    pub fn agent_url(&self) -> String {
        self.url("agent-1", &self.agent_token(), "appdb")
    }

    /// A client tool from the server's PostgreSQL installation (`psql`, `pgbench`).
    pub fn pg_tool(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.pg.binaries().tool(name));
        clean_pg_env(&mut cmd);
        cmd
    }

    /// `psql -X -q -A -t -v ON_ERROR_STOP=1 -d URL ARGS…` with stdin closed.
    pub fn psql(&self, url: &str, args: &[&str]) -> Output {
        self.psql_input(url, args, None)
    }

    /// Like [`Env::psql`], feeding `input` on stdin (use `-f -` to run it as a script).
    pub fn psql_input(&self, url: &str, args: &[&str], input: Option<&str>) -> Output {
        let mut cmd = self.psql_command(url, args);
        run_with_timeout(&mut cmd, input.map(str::as_bytes), COMMAND_TIMEOUT)
    }

    /// The psql command line [`Env::psql`] runs, for callers that spawn it themselves.
    pub fn psql_command(&self, url: &str, args: &[&str]) -> Command {
        let mut cmd = self.pg_tool("psql");
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url])
            .args(args);
        cmd
    }

    /// Runs `sql` directly on the upstream as the PostgreSQL superuser (not through Sluice).
    pub fn direct_sql(&self, db: &str, sql: &str) -> String {
        self.pg
            .psql(db, sql)
            .unwrap_or_else(|e| panic!("direct psql failed: {e}"))
    }

    /// `sluice sessions list --json`, parsed.
    pub fn sessions(&self) -> Vec<serde_json::Value> {
        let out = self.sluice(&["sessions", "list", "--json"]);
        let text = ok(&out);
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(serde_json::Value::Array(a)) => a,
            other => panic!("sessions list --json is not a JSON array: {other:?}\n{text}"),
        }
    }

    /// Waits until at least `n` sessions are recorded and all of them have ended.
    pub fn wait_sessions_ended(&self, n: usize) -> Vec<serde_json::Value> {
        wait_until(
            Duration::from_secs(15),
            &format!("{n} ended sessions in `sluice sessions list`"),
            || {
                let s = self.sessions();
                (s.len() >= n && s.iter().all(|s| !s["ended_at_ms"].is_null())).then_some(s)
            },
        )
    }

    /// `sluice replay SESSION_ID`'s stdout (asserting success).
    pub fn replay(&self, session_id: &str) -> String {
        ok(&self.sluice(&["replay", session_id]))
    }

    /// Runs `sql` on the gateway's SQLite store with the `sqlite3` CLI; returns stdout.
    pub fn sqlite(&self, sql: &str) -> String {
        let mut cmd = Command::new("sqlite3");
        cmd.arg(self.db_path()).arg(sql);
        ok(&run_with_timeout(&mut cmd, None, COMMAND_TIMEOUT))
    }

    /// Runs `python3 tests/py/SCRIPT ARGS…` with a clean libpq environment.
    pub fn python(&self, script: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new("python3");
        clean_pg_env(&mut cmd);
        cmd.arg(py_dir().join(script))
            .args(args)
            .env("PYTHONUNBUFFERED", "1");
        run_with_timeout(&mut cmd, None, COMMAND_TIMEOUT)
    }

    /// The upstream server's text log.
    pub fn pg_log(&self) -> String {
        self.pg.log_text()
    }

    /// The oracle's view now: what the server executed on gateway sessions against what
    /// Sluice judged (see [`oracle`]). Panics if the server runs without its statement log.
    pub fn oracle(&self) -> OracleReport {
        let executed = self
            .pg
            .executed_statements()
            .unwrap_or_else(|e| panic!("reading the server's statement log: {e}"));
        let judged = match &self.shared_store {
            Some(store) => store.decisions(self.store_pg.as_ref().unwrap_or(&self.pg)),
            None => oracle::journal_decisions(&self.state_dir),
        };
        OracleReport::new(executed, judged, &self.pg.superuser)
    }

    /// Panics unless every statement the server executed on a gateway session was judged and
    /// forwarded by Sluice with that exact text, and nothing Sluice refused ran; returns the
    /// report. The same check runs when the environment drops (unless the test is already
    /// failing), so every SQL test is held to it.
    #[track_caller]
    pub fn assert_oracle(&self) -> OracleReport {
        let report = self.oracle();
        report.assert_clean();
        report
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.kill_gateway();
        // The journal is write-ahead: what the gateway decided is on disk already. A test
        // that passed still fails here if the server ran what Sluice did not judge.
        if self.pg.statement_log && !thread::panicking() {
            self.oracle().assert_clean();
        }
        // Then the fields drop: PostgreSQL stops, the temp dir goes away.
    }
}

/// What a [`HostileUpstream`] does with each connection it accepts.
#[derive(Debug, Clone)]
pub enum Hostility {
    /// Reads a little, then sends these bytes and keeps the socket open.
    Send(Vec<u8>),
    /// Accepts and never answers.
    Silent,
    /// Accepts and closes at once.
    Close,
    /// Sends these bytes one at a time, `interval` apart.
    Drip(Vec<u8>, Duration),
}

/// A fake "PostgreSQL server" on 127.0.0.1 that misbehaves; stopped on drop.
#[derive(Debug)]
pub struct HostileUpstream {
    /// Its port.
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl HostileUpstream {
    /// Binds a free port and serves each connection (in its own thread) the `how` way.
    pub fn start(how: Hostility) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a hostile upstream");
        let port = listener.local_addr().expect("local addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let how = how.clone();
                let flag = flag.clone();
                thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
                    let mut buf = [0u8; 1024];
                    match how {
                        Hostility::Send(bytes) => {
                            let _ = conn.read(&mut buf);
                            let _ = conn.write_all(&bytes);
                        }
                        Hostility::Silent => {}
                        Hostility::Close => return,
                        Hostility::Drip(bytes, interval) => {
                            let _ = conn.read(&mut buf);
                            for b in bytes {
                                if flag.load(Ordering::SeqCst) || conn.write_all(&[b]).is_err() {
                                    return;
                                }
                                thread::sleep(interval);
                            }
                        }
                    }
                    // Hold the socket open (reading and discarding) until the peer leaves
                    // or the upstream is stopped.
                    while !flag.load(Ordering::SeqCst) {
                        match conn.read(&mut buf) {
                            Ok(0) => return,
                            Ok(_) => {}
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) => {}
                            Err(_) => return,
                        }
                    }
                });
            }
        });
        HostileUpstream {
            port,
            stop,
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for HostileUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Another gateway node on an [`Env`]'s shared store: the same config (connections,
/// rules, the same token and masking keys, copied from the first node's `state_dir/keys`)
/// with its own node id, port, state directory and log, and an operator API listener
/// (for `sluice token revoke`, `sluice sessions kill` through it). Killed on drop.
pub struct OtherNode {
    child: Option<Child>,
    /// Its PostgreSQL listener port on 127.0.0.1.
    pub port: u16,
    pub config_path: PathBuf,
    log_path: PathBuf,
    gateway_env: Vec<(String, String)>,
    _dir: TempDir,
}

impl Env {
    /// Starts node `node` next to this one (see [`OtherNode`]).
    pub fn start_other_node(&self, node: &str) -> OtherNode {
        let store = self.shared_store.as_ref().expect("a shared store");
        let dir = tempfile::Builder::new()
            .prefix("sluice-node-")
            .tempdir()
            .expect("creating the node's temp dir");
        let state = dir.path().join("state");
        fs::create_dir_all(state.join("keys")).expect("creating the node's state dir");
        for entry in fs::read_dir(self.state_dir.join("keys")).expect("the first node's keys") {
            let entry = entry.expect("reading the keys dir");
            fs::copy(entry.path(), state.join("keys").join(entry.file_name()))
                .expect("copying a key");
        }
        let port = free_port();
        let api_port = free_port();
        let config = fs::read_to_string(&self.config_path)
            .expect("reading the first node's config")
            .replacen(
                "[listen]\n",
                &format!("[listen]\napi = \"127.0.0.1:{api_port}\"\n"),
                1,
            )
            .replace(
                &format!("{:?}", self.state_dir.display().to_string()),
                &format!("{:?}", state.display().to_string()),
            )
            .replace(
                &format!("postgres = \"127.0.0.1:{}\"", self.port),
                &format!("postgres = \"127.0.0.1:{port}\""),
            )
            .replace(
                &format!("node = {:?}", store.node),
                &format!("node = {node:?}"),
            );
        let config_path = dir.path().join("sluice.toml");
        fs::write(&config_path, config).expect("writing the node's config");
        let log_path = dir.path().join("gateway.log");
        let mut other = OtherNode {
            child: None,
            port,
            config_path,
            log_path,
            gateway_env: self.gateway_env.clone(),
            _dir: dir,
        };
        other.start();
        other
    }
}

impl OtherNode {
    /// Starts the node (again) and waits for its listener.
    pub fn start(&mut self) {
        match serve_until_ready(&self.config_path, &self.gateway_env, &self.log_path) {
            Ok(child) => self.child = Some(child),
            Err((status, log)) => panic!("the other node exited ({status}); log:\n{log}"),
        }
    }

    /// Kills the node outright (SIGKILL), like a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Runs `sluice ARGS… --config FILE` as this node.
    pub fn sluice(&self, args: &[&str]) -> Output {
        sluice_cli(&self.config_path, &self.gateway_env, args)
    }

    /// `postgresql://SUBJECT:TOKEN@127.0.0.1:PORT/CONNECTION` through this node.
    pub fn url(&self, subject: &str, token: &str, connection: &str) -> String {
        format!(
            "postgresql://{subject}:{token}@127.0.0.1:{}/{connection}",
            self.port
        )
    }
}

impl Drop for OtherNode {
    fn drop(&mut self) {
        self.kill();
    }
}
