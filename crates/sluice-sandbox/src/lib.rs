//! Throwaway local targets for demos and tests.
//!
//! Everything here is synchronous (std::process) and meant for loopback-only, disposable
//! setups: the launcher's `sluice demo`, the end-to-end tests and `cargo xtask bench`.
//!
//! The main item is [`TempPostgres`]: a real PostgreSQL server in a temporary directory, on an
//! ephemeral 127.0.0.1 port, stopped and removed on drop. When the current process runs as
//! root (as CI does), the server runs as an unprivileged OS user (`postgres`, or `sluicepg`,
//! created on demand), because `initdb` and `postgres` refuse to run as root.

use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

mod demo;
mod s3;
mod statement_log;
mod targets;

pub use demo::{demo_sensitive_values, DemoDatabase};
pub use s3::TempS3;
pub use statement_log::{parse_statement_log, LoggedStatement, StatementKind, MARKER_APPLICATION};
pub use targets::{DemoApi, DemoSshd, DEMO_SSH_ACCOUNT};

#[cfg(test)]
mod tests;

/// Errors from starting or talking to a sandbox target.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// No usable PostgreSQL installation was found.
    #[error("PostgreSQL binaries not found: {0}")]
    BinariesNotFound(String),
    /// A file-system or process-spawning operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An external command exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line (program and arguments, no secrets).
        command: String,
        /// Its exit status.
        status: String,
        /// Its standard error (trimmed).
        stderr: String,
    },
    /// A TCP port did not accept connections in time.
    #[error("timed out after {timeout:?} waiting for {addr} to accept connections")]
    Timeout {
        /// The address waited for.
        addr: SocketAddr,
        /// How long we waited.
        timeout: Duration,
    },
    /// The PostgreSQL server did not start.
    #[error("PostgreSQL failed to start: {message}\n--- server log (tail) ---\n{log_tail}")]
    Start {
        /// What failed.
        message: String,
        /// The last lines of the server log.
        log_tail: String,
    },
    /// The sandbox cannot run in this environment (e.g. no unprivileged user as root).
    #[error("{0}")]
    Environment(String),
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let context = context.into();
    move |source| SandboxError::Io { context, source }
}

/// Returns a TCP port that was free on 127.0.0.1 a moment ago (bind to port 0, read, drop).
///
/// Another process may take it before the caller binds it; callers that can retry should.
/// Returns 0 only if the loopback interface cannot be bound at all.
pub fn free_port() -> u16 {
    TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or(0)
}

/// Waits until `addr` accepts TCP connections, or `timeout` elapses.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> Result<(), SandboxError> {
    let deadline = Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt = remaining.clamp(Duration::from_millis(1), Duration::from_millis(500));
        if TcpStream::connect_timeout(&addr, attempt).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(SandboxError::Timeout { addr, timeout });
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Returns `n` random bytes from `/dev/urandom`, hex-encoded (`2 * n` characters).
pub fn random_hex(n: usize) -> Result<String, SandboxError> {
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(io_err("reading /dev/urandom"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether this process runs with effective uid 0 (checked once with `id -u`).
pub fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .stdin(Stdio::null())
            .output()
            .map(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "0")
            .unwrap_or(false)
    })
}

/// The unprivileged OS user sandbox servers run as: `None` when not root (run as ourselves);
/// when root, `postgres` if it exists, else `sluicepg` (created with `useradd` if needed).
pub fn sandbox_user() -> Result<Option<String>, SandboxError> {
    if !is_root() {
        return Ok(None);
    }
    static USER: OnceLock<String> = OnceLock::new();
    if let Some(user) = USER.get() {
        return Ok(Some(user.clone()));
    }
    let user = if user_exists("postgres") {
        "postgres".to_string()
    } else {
        let name = "sluicepg";
        if !user_exists(name) {
            let out = Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    name,
                ])
                .stdin(Stdio::null())
                .output()
                .map_err(io_err("running useradd"))?;
            // Another process may have created it concurrently: re-check before failing.
            if !out.status.success() && !user_exists(name) {
                return Err(command_error("useradd sluicepg", &out));
            }
        }
        name.to_string()
    };
    Ok(Some(USER.get_or_init(|| user).clone()))
}

pub(crate) fn user_exists(name: &str) -> bool {
    Command::new("id")
        .args(["-u", name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A command for `program` that runs as `user` (through `runuser -u USER --`) when given,
/// or directly as the current user when `None`.
pub fn command_as(user: Option<&str>, program: impl AsRef<OsStr>) -> Command {
    match user {
        Some(user) => {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", user, "--"]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Recursively gives `path` to `user` (`chown -R user: path`); a no-op for `None`.
pub fn chown_to(user: Option<&str>, path: &Path) -> Result<(), SandboxError> {
    let Some(user) = user else {
        return Ok(());
    };
    let mut cmd = Command::new("chown");
    cmd.arg("-R").arg(format!("{user}:")).arg(path);
    run(&mut cmd, "chown -R").map(|_| ())
}

fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

pub(crate) fn command_error(what: &str, out: &Output) -> SandboxError {
    let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if stderr.is_empty() {
        stderr = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    SandboxError::Command {
        command: what.to_string(),
        status: out.status.to_string(),
        stderr,
    }
}

/// Runs `cmd` to completion (stdin closed), returning its output if it succeeded.
pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<Output, SandboxError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(format!("running {}", describe(cmd))))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(command_error(what, &out))
    }
}

/// Where the PostgreSQL server binaries (`initdb`, `pg_ctl`, `postgres`, `psql`, `pgbench`) are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    /// The directory holding them.
    pub bin_dir: PathBuf,
}

impl PgBinaries {
    /// Finds them: `$SLUICE_PG_BIN`, else `pg_config --bindir` (if it holds `initdb`), else the
    /// newest `/usr/lib/postgresql/*/bin`.
    pub fn find() -> Result<Self, SandboxError> {
        if let Some(dir) = std::env::var_os("SLUICE_PG_BIN").filter(|d| !d.is_empty()) {
            let bin_dir = PathBuf::from(dir);
            if bin_dir.join("initdb").is_file() {
                return Ok(Self { bin_dir });
            }
            return Err(SandboxError::BinariesNotFound(format!(
                "SLUICE_PG_BIN={} has no initdb",
                bin_dir.display()
            )));
        }
        if let Ok(out) = Command::new("pg_config")
            .arg("--bindir")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
        {
            if out.status.success() {
                let bin_dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                if bin_dir.join("initdb").is_file() {
                    return Ok(Self { bin_dir });
                }
            }
        }
        let newest = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version = entry.file_name().to_string_lossy().parse::<f64>().ok()?;
                let bin_dir = entry.path().join("bin");
                bin_dir
                    .join("initdb")
                    .is_file()
                    .then_some((version, bin_dir))
            })
            .max_by(|a, b| a.0.total_cmp(&b.0));
        match newest {
            Some((_, bin_dir)) => Ok(Self { bin_dir }),
            None => Err(SandboxError::BinariesNotFound(
                "set SLUICE_PG_BIN, put pg_config on PATH, or install postgresql \
                 (`cargo xtask setup`)"
                    .to_string(),
            )),
        }
    }

    /// The path of the tool `name` (e.g. `"psql"`) in [`Self::bin_dir`].
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}

/// Options for [`TempPostgres::start`].
#[derive(Debug, Clone, Default)]
pub struct TempPostgresOptions {
    /// The TCP port on 127.0.0.1; `None` picks a free one.
    pub port: Option<u16>,
    /// Generate a self-signed server certificate (CN=localhost) with the `openssl` CLI and set
    /// `ssl = on`. Skipped silently when `openssl` is not installed.
    pub ssl: bool,
    /// Lines appended to `postgresql.conf`.
    pub extra_conf: Vec<String>,
    /// Log every statement the server executes (`log_statement = 'all'`) as JSON through the
    /// logging collector, for [`TempPostgres::executed_statements`]. The text log then goes
    /// to `DATA/log/postgresql.log` ([`TempPostgres::log_tail`] reads both).
    pub statement_log: bool,
}

/// A throwaway PostgreSQL server on 127.0.0.1, stopped and deleted on drop.
pub struct TempPostgres {
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    /// The superuser role name (`postgres`).
    pub superuser: String,
    /// The superuser's password (scram-sha-256 over TCP).
    pub superuser_password: String,
    /// The data directory (also holds `log.txt` and the Unix socket).
    pub data_dir: PathBuf,
    /// Whether the server was started with `ssl = on`.
    pub ssl: bool,
    /// Whether the server logs every statement ([`TempPostgresOptions::statement_log`]).
    pub statement_log: bool,
    root: tempfile::TempDir,
    os_user: Option<String>,
    bins: PgBinaries,
    running: bool,
}

impl fmt::Debug for TempPostgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TempPostgres")
            .field("port", &self.port)
            .field("superuser", &self.superuser)
            .field("superuser_password", &"<redacted>")
            .field("data_dir", &self.data_dir)
            .field("ssl", &self.ssl)
            .field("statement_log", &self.statement_log)
            .field("os_user", &self.os_user)
            .field("running", &self.running)
            .finish()
    }
}

const START_ATTEMPTS: usize = 3;

impl TempPostgres {
    /// Creates a cluster in a new temporary directory and starts it; returns once the TCP port
    /// accepts connections.
    pub fn start(opts: TempPostgresOptions) -> Result<Self, SandboxError> {
        let bins = PgBinaries::find()?;
        let os_user = sandbox_user()?;
        let user = os_user.as_deref();

        let tmp = std::env::temp_dir();
        if user.is_some() {
            ensure_traversable(&tmp)?;
        }
        let root = tempfile::Builder::new()
            .prefix("sluice-pg-")
            .tempdir_in(&tmp)
            .map_err(io_err(format!("creating a temp dir in {}", tmp.display())))?;
        let data_dir = root.path().join("data");
        let superuser = "postgres".to_string();
        let superuser_password = random_hex(16)?;

        let pwfile = root.path().join("pwfile");
        fs::write(&pwfile, format!("{superuser_password}\n"))
            .map_err(io_err("writing the password file"))?;
        chown_to(user, root.path())?;

        let mut initdb = command_as(user, bins.tool("initdb"));
        initdb
            .current_dir(root.path())
            .arg("-D")
            .arg(&data_dir)
            .args([
                "-U",
                &superuser,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()));
        run(&mut initdb, "initdb")?;
        let _ = fs::remove_file(&pwfile);

        let mut port = opts.port.unwrap_or_else(free_port);
        let mut conf = format!(
            "\n# --- sluice-sandbox ---\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{}'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             max_connections = 200\n\
             password_encryption = 'scram-sha-256'\n",
            data_dir.display()
        );
        let ssl = opts.ssl && make_server_cert(&data_dir, user)?;
        if ssl {
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        if opts.statement_log {
            conf.push_str(statement_log::STATEMENT_LOG_CONF);
        }
        for line in &opts.extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        append(&data_dir.join("postgresql.conf"), &conf)?;
        fs::write(
            data_dir.join("pg_hba.conf"),
            "# sluice-sandbox: md5 for the `legacy` role must precede the scram line\n\
             local all all                 trust\n\
             host  all legacy 127.0.0.1/32 md5\n\
             host  all all    127.0.0.1/32 scram-sha-256\n\
             host  all all    ::1/128      scram-sha-256\n",
        )
        .map_err(io_err("writing pg_hba.conf"))?;
        chown_to(user, root.path())?;

        let mut pg = Self {
            port,
            superuser,
            superuser_password,
            data_dir,
            ssl,
            statement_log: opts.statement_log,
            root,
            os_user,
            bins,
            running: false,
        };
        // From here on, dropping `pg` stops whatever pg_ctl may have left running.
        pg.running = true;
        let mut attempt = 1;
        loop {
            match pg.pg_ctl_start() {
                Ok(()) => break,
                // The free port may have been taken between free_port() and the bind: retry
                // on another one (the last `port =` line in postgresql.conf wins).
                Err(err)
                    if opts.port.is_none()
                        && attempt < START_ATTEMPTS
                        && err.to_string().contains("could not bind") =>
                {
                    attempt += 1;
                    port = free_port();
                    append(
                        &pg.data_dir.join("postgresql.conf"),
                        &format!("port = {port}\n"),
                    )?;
                    pg.port = port;
                }
                Err(err) => return Err(err),
            }
        }
        if let Err(err) = wait_for_port(pg.addr(), Duration::from_secs(30)) {
            return Err(SandboxError::Start {
                message: err.to_string(),
                log_tail: pg.log_tail(30),
            });
        }
        Ok(pg)
    }

    fn pg_ctl_start(&self) -> Result<(), SandboxError> {
        let mut cmd = command_as(self.os_user.as_deref(), self.bins.tool("pg_ctl"));
        cmd.current_dir(self.root.path())
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "60", "start"])
            .stdout(Stdio::null());
        match run(&mut cmd, "pg_ctl start") {
            Ok(_) => Ok(()),
            Err(err) => Err(SandboxError::Start {
                message: err.to_string(),
                log_tail: self.log_tail(30),
            }),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir.join("log.txt")
    }

    /// The server's text log: `log.txt` (pg_ctl's), then what the logging collector wrote
    /// (with `statement_log`).
    pub fn log_text(&self) -> String {
        let mut log = fs::read(self.log_path()).unwrap_or_default();
        if let Ok(collected) = fs::read(self.data_dir.join("log").join("postgresql.log")) {
            log.extend_from_slice(&collected);
        }
        String::from_utf8_lossy(&log).into_owned()
    }

    /// The last `lines` lines of the server log (empty if there is none yet).
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log_text();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The OS user the server runs as when this process is root (`None` otherwise).
    pub fn os_user(&self) -> Option<&str> {
        self.os_user.as_deref()
    }

    /// The PostgreSQL binaries this server was started with.
    pub fn binaries(&self) -> &PgBinaries {
        &self.bins
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `postgresql://user:password@127.0.0.1:port/db` (user and password are not URL-encoded:
    /// use URL-safe ones).
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "postgresql://{user}:{password}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    /// Runs `sql` (one or more statements) with `psql` as the superuser over TCP on database
    /// `db`, with `-X -q -A -t -v ON_ERROR_STOP=1`; returns psql's standard output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, SandboxError> {
        let mut cmd = Command::new(self.bins.tool("psql"));
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", &self.superuser, "-d", db, "-f", "-"]);
        clean_pg_env(&mut cmd).env("PGPASSWORD", &self.superuser_password);
        run_with_stdin(&mut cmd, sql, "psql")
    }

    /// Starts a server [`stop`](Self::stop) stopped, on the same port and data (an
    /// outage that ends). A no-op while it runs.
    pub fn start_again(&mut self) -> Result<(), SandboxError> {
        if self.running {
            return Ok(());
        }
        self.pg_ctl_start()?;
        self.running = true;
        wait_for_port(self.addr(), Duration::from_secs(30)).map_err(|err| SandboxError::Start {
            message: err.to_string(),
            log_tail: self.log_tail(30),
        })
    }

    /// Stops the server (`pg_ctl stop -m fast`, falling back to `-m immediate`). Idempotent;
    /// also called on drop. Never panics.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        for mode in ["fast", "immediate"] {
            let mut cmd = command_as(self.os_user.as_deref(), self.bins.tool("pg_ctl"));
            cmd.current_dir(self.root.path())
                .arg("-D")
                .arg(&self.data_dir)
                .args(["-m", mode, "-w", "-t", "30", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if run(&mut cmd, "pg_ctl stop").is_ok() {
                return;
            }
        }
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        self.stop();
        // The TempDir field removes the directory when it is dropped right after this.
    }
}

/// Removes libpq environment variables that could redirect a client away from the sandbox.
fn clean_pg_env(cmd: &mut Command) -> &mut Command {
    for var in [
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGOPTIONS",
        "PGSSLMODE",
        "PGPASSFILE",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("PGCONNECT_TIMEOUT", "10")
}

/// Runs `cmd` feeding `input` on stdin (from a thread, so large inputs cannot deadlock);
/// returns stdout on success, an error carrying stderr otherwise.
fn run_with_stdin(cmd: &mut Command, input: &str, what: &str) -> Result<String, SandboxError> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(format!("running {what}")))?;
    let writer = child.stdin.take().map(|mut stdin| {
        let input = input.to_string();
        thread::spawn(move || {
            // A write error means the child exited early; its status and stderr say why.
            let _ = stdin.write_all(input.as_bytes());
        })
    });
    let out = child
        .wait_with_output()
        .map_err(io_err(format!("waiting for {what}")))?;
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(command_error(what, &out))
    }
}

fn append(path: &Path, text: &str) -> Result<(), SandboxError> {
    fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(io_err(format!("appending to {}", path.display())))
}

/// As root, the unprivileged server user must be able to traverse the parent temp dir.
fn ensure_traversable(dir: &Path) -> Result<(), SandboxError> {
    let meta = fs::metadata(dir).map_err(io_err(format!("inspecting {}", dir.display())))?;
    let mode = meta.permissions().mode();
    if mode & 0o001 == 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o001))
            .map_err(io_err(format!("making {} traversable", dir.display())))?;
    }
    Ok(())
}

fn program_exists(name: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Writes a self-signed `server.crt`/`server.key` (CN=localhost) into `data_dir`, owned by the
/// server user, key mode 0600. Returns `false` when `openssl` is unavailable.
fn make_server_cert(data_dir: &Path, user: Option<&str>) -> Result<bool, SandboxError> {
    if !program_exists("openssl") {
        return Ok(false);
    }
    let crt = data_dir.join("server.crt");
    let key = data_dir.join("server.key");
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256"])
        .args(["-days", "3650", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt);
    run(&mut cmd, "openssl req")?;
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600))
        .map_err(io_err("setting server.key permissions"))?;
    chown_to(user, &crt)?;
    chown_to(user, &key)?;
    Ok(true)
}
