//! SSH end-to-end harness: a real OpenSSH `sshd` (run as root on a free
//! loopback port, host keys generated per test, an unprivileged test account
//! with a per-test authorized key), the `sluice` binary with an SSH listener
//! in front of it, and the real `ssh`/`scp`/`sftp` clients, which get the
//! token through `SSH_ASKPASS` (`SSH_ASKPASS_REQUIRE=force`).
//!
//! Dropping an [`SshEnv`] kills the gateway and sshd.

use crate::{
    issue_token, ok, run_with_timeout, sluice_bin, sluice_cli, wait_output, wait_until,
    COMMAND_TIMEOUT,
};
use sluice_sandbox::free_port;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The unprivileged account sshd logs the gateway in as (shared by tests;
/// each test has its own authorized key file and work directory).
pub const TEST_USER: &str = "sluice-e2e";
/// The SSH connection every [`SshEnv`] configures.
pub const CONNECTION: &str = "host";

/// Creates the test account if needed (idempotent, safe in parallel).
pub fn ensure_test_user() {
    let exists = || {
        Command::new("id")
            .arg("-u")
            .arg(TEST_USER)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !exists() {
        let _ = Command::new("useradd")
            .args(["-m", "-s", "/bin/bash", TEST_USER])
            .output();
        assert!(exists(), "could not create the test account {TEST_USER}");
    }
    // A new account is locked ("!") until it has a password field; `*`
    // allows key logins and no password. Tests run in parallel: retry while
    // another one holds the passwd lock.
    let unlocked = || {
        Command::new("getent")
            .args(["shadow", TEST_USER])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).split(':').nth(1) == Some("*"))
            .unwrap_or(false)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !unlocked() {
        let _ = Command::new("usermod")
            .args(["-p", "*", TEST_USER])
            .output();
        assert!(Instant::now() < deadline, "could not unlock {TEST_USER}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = fs::create_dir_all("/run/sshd");
}

fn keygen(path: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "sluice-e2e", "-f"])
        .arg(path)
        .output()
        .expect("running ssh-keygen");
    assert!(out.status.success(), "ssh-keygen failed: {out:?}");
    fs::read_to_string(path.with_extension("pub"))
        .expect("reading the public key")
        .trim()
        .to_string()
}

/// A real sshd on 127.0.0.1.
pub struct Sshd {
    child: Option<Child>,
    pub port: u16,
    /// `ssh-ed25519 AAAA…` of its host key.
    pub host_key: String,
    pub log: PathBuf,
}

impl Sshd {
    /// Starts sshd in `dir` accepting `authorized` (public key lines) for [`TEST_USER`].
    pub fn start(dir: &Path, authorized: &[String]) -> Sshd {
        ensure_test_user();
        let host_key_path = dir.join("sshd_host_ed25519");
        let host_key = keygen(&host_key_path);
        let authorized_path = dir.join("authorized_keys");
        fs::write(&authorized_path, authorized.join("\n") + "\n").expect("writing authorized_keys");
        fs::set_permissions(&authorized_path, fs::Permissions::from_mode(0o644)).ok();
        let log = dir.join("sshd.log");
        for _ in 0..3 {
            let port = free_port();
            let config = dir.join("sshd_config");
            fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {pid}\n\
                     AuthorizedKeysFile {ak}\nStrictModes no\nPubkeyAuthentication yes\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                     AllowUsers {user}\nSubsystem sftp internal-sftp\nAllowTcpForwarding yes\n\
                     X11Forwarding no\nAcceptEnv *\nLogLevel VERBOSE\n\
                     MaxStartups 100\nMaxSessions 50\nPrintMotd no\n",
                    hk = host_key_path.display(),
                    pid = dir.join("sshd.pid").display(),
                    ak = authorized_path.display(),
                    user = TEST_USER,
                ),
            )
            .expect("writing sshd_config");
            let logf = fs::File::create(&log).expect("creating the sshd log");
            let mut child = Command::new("/usr/sbin/sshd")
                .arg("-f")
                .arg(&config)
                .args(["-D", "-e"])
                .stdin(Stdio::null())
                .stdout(logf.try_clone().expect("log handle"))
                .stderr(logf)
                .spawn()
                .expect("starting sshd");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Sshd {
                        child: Some(child),
                        port,
                        host_key,
                        log,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "sshd did not listen; log:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!(
            "sshd would not start; log:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A gateway binary other than `sluice serve` (an assembled one, e.g.
/// `examples/custom-gateway`), run as `BIN CONFIG` with the given extra
/// `[listen]` lines and environment, ready when its log shows `ready`.
#[derive(Debug, Clone)]
pub struct CustomGateway {
    pub bin: PathBuf,
    pub listen: String,
    pub env: Vec<(String, String)>,
    pub ready: &'static str,
}

/// sshd + the gateway with an SSH listener and one connection, [`CONNECTION`].
pub struct SshEnv {
    gateway: Option<Child>,
    custom: Option<CustomGateway>,
    /// More `[listen]` lines (limits, drain timeout).
    listen: String,
    /// More `[gateway]` lines (a shared store), and the environment they need.
    gateway_toml: String,
    gateway_env: Vec<(String, String)>,
    pub sshd: Sshd,
    /// The gateway's SSH port on 127.0.0.1.
    pub port: u16,
    pub config_path: PathBuf,
    pub state_dir: PathBuf,
    log_path: PathBuf,
    /// A directory owned by the test account (sentinels, transfers).
    pub work: PathBuf,
    pub dir: TempDir,
}

impl std::fmt::Debug for SshEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshEnv").field("port", &self.port).finish()
    }
}

/// A rule denying the programs that delete files on the host.
pub const NO_RM: &str = r#"
[[rules]]
name = "no-rm"
match = { program = ["rm", "shred"] }
action = "deny"
message = "Deleting files on hosts is not allowed."
"#;

/// A gateway with [`NO_RM`], an agent's token and a sentinel file the host
/// account wrote ("keep\n"): a refused command that ran would remove it.
/// Returns the environment, the token, the sentinel and its path as text.
pub fn with_sentinel() -> (SshEnv, String, PathBuf, String) {
    let env = SshEnv::start(NO_RM);
    let token = env.agent_token();
    let sentinel = env.work.join("sentinel");
    let s = sentinel.display().to_string();
    ok(&env.as_user(&format!("echo keep > {s}")));
    (env, token, sentinel, s)
}

impl SshEnv {
    /// Starts with `extra` TOML appended to the config (rules, more connections).
    /// `{SSHD}` in it is the sshd address, `{HOST_KEY}` its host key, `{DIR}` the temp dir,
    /// `{KEY}` the gateway-held private key file, `{OTHER_KEY}` a public key that is not sshd's.
    /// sshd accepts any environment variable, so the gateway's filter is what a test sees.
    pub fn start(extra: &str) -> SshEnv {
        Self::start_with(extra, None, "")
    }

    /// Like [`SshEnv::start`], with `listen` lines added to `[listen]`.
    pub fn start_listen(extra: &str, listen: &str) -> SshEnv {
        Self::start_with(extra, None, listen)
    }

    /// Like [`SshEnv::start`], running `custom` instead of `sluice serve`.
    pub fn start_custom(extra: &str, custom: CustomGateway) -> SshEnv {
        Self::start_with(extra, Some(custom), "")
    }

    /// Like [`SshEnv::start`], as node `store.node` of a shared store whose password is
    /// `password` (see [`crate::SharedStore`]).
    pub fn start_on_store(extra: &str, store: &crate::SharedStore, password: &str) -> SshEnv {
        Self::start_with_gateway(
            extra,
            None,
            "",
            store.gateway_toml(),
            vec![("SLUICE_STORE_PASSWORD".into(), password.into())],
        )
    }

    fn start_with(extra: &str, custom: Option<CustomGateway>, listen: &str) -> SshEnv {
        Self::start_with_gateway(extra, custom, listen, String::new(), Vec::new())
    }

    fn start_with_gateway(
        extra: &str,
        custom: Option<CustomGateway>,
        listen: &str,
        gateway_toml: String,
        gateway_env: Vec<(String, String)>,
    ) -> SshEnv {
        let dir = tempfile::Builder::new()
            .prefix("sluice-ssh-e2e-")
            .tempdir()
            .expect("temp dir");
        // sshd reads authorized_keys as the test account.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).ok();
        let upstream_key = dir.path().join("gateway_upstream_key");
        let upstream_pub = keygen(&upstream_key);
        let sshd = Sshd::start(dir.path(), std::slice::from_ref(&upstream_pub));
        let work = dir.path().join("work");
        fs::create_dir_all(&work).expect("work dir");
        let chown = Command::new("chown")
            .arg(format!("{TEST_USER}:{TEST_USER}"))
            .arg(&work)
            .output()
            .expect("chown");
        assert!(chown.status.success());
        let state_dir = dir.path().join("state");
        let config_path = dir.path().join("sluice.toml");
        let log_path = dir.path().join("gateway.log");
        let extra = extra
            .replace("{SSHD}", &sshd.addr())
            .replace("{HOST_KEY}", &sshd.host_key)
            .replace("{DIR}", &dir.path().display().to_string())
            .replace("{KEY}", &upstream_key.display().to_string())
            .replace("{OTHER_KEY}", &upstream_pub);
        let mut env = SshEnv {
            gateway: None,
            custom,
            listen: listen.to_string(),
            gateway_toml,
            gateway_env,
            port: 0,
            config_path,
            state_dir,
            log_path,
            work,
            sshd,
            dir,
        };
        let body = format!(
            "[[connections]]\nname = \"{CONNECTION}\"\nkind = \"ssh\"\nupstream = \"{}\"\n\
             user = \"{TEST_USER}\"\nprivate_key = {{ file = {:?} }}\nhost_key = \"{}\"\n\
             allow_groups = [\"agents\"]\n\n{extra}\n",
            env.sshd.addr(),
            upstream_key.display().to_string(),
            env.sshd.host_key,
        );
        env.start_gateway(&body);
        env
    }

    fn start_gateway(&mut self, body: &str) {
        for _ in 0..3 {
            self.port = free_port();
            fs::write(
                &self.config_path,
                format!(
                    "[gateway]\nstate_dir = {:?}\n{}\n[listen]\nssh = \"127.0.0.1:{}\"\napi = \"127.0.0.1:{}\"\n{}\n{}\n\n{body}",
                    self.state_dir.display().to_string(),
                    self.gateway_toml,
                    self.port,
                    free_port(),
                    self.custom.as_ref().map_or("", |c| c.listen.as_str()),
                    self.listen,
                ),
            )
            .expect("writing the gateway config");
            let log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log_path)
                .expect("gateway log");
            let mut cmd = match &self.custom {
                Some(custom) => {
                    let mut cmd = Command::new(&custom.bin);
                    cmd.envs(custom.env.iter().map(|(k, v)| (k, v)));
                    cmd
                }
                None => {
                    let mut cmd = Command::new(sluice_bin());
                    cmd.args(["serve", "--config"]);
                    cmd
                }
            };
            let mut child = cmd
                .arg(&self.config_path)
                .envs(self.gateway_env.iter().map(|(k, v)| (k, v)))
                .env("SLUICE_LOG", "info")
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log handle"))
                .stderr(log)
                .spawn()
                .expect("spawning sluice serve");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let log = self.gateway_log();
                let ready = match &self.custom {
                    Some(custom) => log.contains(custom.ready),
                    None => {
                        log.contains("SSH listener ready.")
                            && log.contains("Operator API listener ready.")
                    }
                };
                if ready {
                    self.gateway = Some(child);
                    self.write_client_files();
                    return;
                }
                if let Ok(Some(status)) = child.try_wait() {
                    let log = self.gateway_log();
                    if log.contains("binding the ssh listener")
                        || log.contains("binding the api listener")
                        || log.contains("binding the SSH listener")
                    {
                        break;
                    }
                    panic!(
                        "sluice serve exited ({status}); log:\n{}",
                        self.gateway_log()
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "the gateway did not start; log:\n{}",
                    self.gateway_log()
                );
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        panic!("the gateway could not bind a port");
    }

    /// known_hosts pinning the gateway's generated host key.
    fn write_client_files(&self) {
        let key = self.state_dir.join("keys").join("ssh_host_ed25519_key");
        let out = Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(&key)
            .output()
            .expect("ssh-keygen -y");
        assert!(
            out.status.success(),
            "reading the gateway host key: {out:?}"
        );
        let line = format!(
            "[127.0.0.1]:{} {}",
            self.port,
            String::from_utf8_lossy(&out.stdout).trim()
        );
        fs::write(self.dir.path().join("known_hosts"), line + "\n").expect("known_hosts");
    }

    pub fn gateway_log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The gateway's process id, while it runs.
    pub fn gateway_pid(&self) -> Option<u32> {
        self.gateway.as_ref().map(|c| c.id())
    }

    pub fn gateway_alive(&mut self) -> bool {
        matches!(self.gateway.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Runs `sluice ARGS… --config FILE`.
    pub fn sluice(&self, args: &[&str]) -> Output {
        sluice_cli(&self.config_path, &self.gateway_env, args)
    }

    /// A gateway token for `subject` in `groups`, valid 10 minutes.
    pub fn token(&self, subject: &str, groups: &[&str]) -> String {
        issue_token(|a| self.sluice(a), subject, groups, "10m")
    }

    pub fn agent_token(&self) -> String {
        self.token("agent-1", &["agents"])
    }

    /// Common client options: the gateway's pinned host key, no agent, no config file.
    pub fn client_options(&self) -> Vec<String> {
        [
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=no",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            &format!(
                "UserKnownHostsFile={}",
                self.dir.path().join("known_hosts").display()
            ),
            "-o",
            "PreferredAuthentications=keyboard-interactive,password",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "ConnectTimeout=20",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// A client command that answers password prompts with `token`.
    pub fn client(&self, program: &str, token: &str) -> Command {
        let askpass = self
            .dir
            .path()
            .join(format!("askpass-{}", uuid_like(token)));
        if !askpass.exists() {
            let secret = self.dir.path().join(format!("token-{}", uuid_like(token)));
            fs::write(&secret, token).expect("token file");
            fs::write(
                &askpass,
                format!("#!/bin/sh\ncat {:?}\n", secret.display().to_string()),
            )
            .expect("askpass");
            fs::set_permissions(&askpass, fs::Permissions::from_mode(0o700)).ok();
        }
        let mut cmd = Command::new(program);
        cmd.env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .env_remove("SSH_AUTH_SOCK");
        cmd
    }

    /// `ssh -p PORT host@127.0.0.1 ARGS…` with `token`.
    pub fn ssh_command(&self, token: &str, args: &[&str]) -> Command {
        self.ssh_command_to(CONNECTION, token, args)
    }

    /// `ssh -p PORT CONNECTION@127.0.0.1 ARGS…` with `token`.
    pub fn ssh_command_to(&self, connection: &str, token: &str, args: &[&str]) -> Command {
        let mut cmd = self.client("ssh", token);
        cmd.args(self.client_options())
            .arg("-p")
            .arg(self.port.to_string())
            .arg(format!("{connection}@127.0.0.1"))
            .args(args);
        cmd
    }

    pub fn ssh(&self, token: &str, args: &[&str]) -> Output {
        run_with_timeout(&mut self.ssh_command(token, args), None, COMMAND_TIMEOUT)
    }

    pub fn ssh_input(&self, token: &str, args: &[&str], input: &[u8]) -> Output {
        run_with_timeout(
            &mut self.ssh_command(token, args),
            Some(input),
            COMMAND_TIMEOUT,
        )
    }

    /// `scp -P PORT ARGS…` (`host:` in ARGS means the gateway connection).
    pub fn scp(&self, token: &str, args: &[&str]) -> Output {
        let mut cmd = self.client("scp", token);
        cmd.args(self.client_options())
            .arg("-P")
            .arg(self.port.to_string());
        for a in args {
            cmd.arg(a.replace("host:", &format!("{CONNECTION}@127.0.0.1:")));
        }
        run_with_timeout(&mut cmd, None, COMMAND_TIMEOUT)
    }

    /// Copies `data` up to `name` in the host's work directory with `scp
    /// FLAGS…` and back again, and checks the bytes on the host's own disk
    /// and back at the client (oracles the gateway does not write).
    #[track_caller]
    pub fn scp_up_and_back(&self, token: &str, flags: &[&str], name: &str, data: &[u8]) {
        let local = self.dir.path().join(format!("{name}.up"));
        fs::write(&local, data).expect("local file");
        let remote = format!("host:{}/{name}", self.work.display());
        let up: Vec<&str> = flags
            .iter()
            .copied()
            .chain([local.to_str().unwrap(), &remote])
            .collect();
        ok(&self.scp(token, &up));
        assert!(
            fs::read(self.work.join(name)).expect("uploaded file") == data,
            "upload of {name} (scp {flags:?}) differs"
        );
        let back = self.dir.path().join(format!("{name}.back"));
        let down: Vec<&str> = flags
            .iter()
            .copied()
            .chain([remote.as_str(), back.to_str().unwrap()])
            .collect();
        ok(&self.scp(token, &down));
        assert!(
            fs::read(&back).expect("downloaded file") == data,
            "download of {name} (scp {flags:?}) differs"
        );
    }

    /// `sftp -P PORT -b - host@127.0.0.1` running `batch`.
    pub fn sftp(&self, token: &str, batch: &str) -> Output {
        let file = self.dir.path().join("sftp-batch");
        fs::write(&file, batch).expect("sftp batch");
        let mut cmd = self.client("sftp", token);
        cmd.args(self.client_options())
            .arg("-P")
            .arg(self.port.to_string())
            .arg("-b")
            .arg(&file)
            .arg(format!("{CONNECTION}@127.0.0.1"));
        run_with_timeout(&mut cmd, None, COMMAND_TIMEOUT)
    }

    /// Runs a shell command as the test account directly on the host (not through Sluice).
    pub fn as_user(&self, script: &str) -> Output {
        let mut cmd = Command::new("su");
        cmd.args(["-s", "/bin/sh", "-c", script, TEST_USER]);
        run_with_timeout(&mut cmd, None, COMMAND_TIMEOUT)
    }

    /// `sluice approvals ARGS… --token TOKEN` (the gateway's operator API).
    pub fn approvals(&self, token: &str, args: &[&str]) -> Output {
        let mut all = vec!["approvals"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--token", token]);
        self.sluice(&all)
    }

    /// `sluice sessions list --json`.
    pub fn sessions(&self) -> Vec<serde_json::Value> {
        let text = ok(&self.sluice(&["sessions", "list", "--json"]));
        serde_json::from_str::<Vec<serde_json::Value>>(&text).expect("sessions json")
    }

    /// Waits for `n` ended sessions and returns them.
    pub fn wait_sessions_ended(&self, n: usize) -> Vec<serde_json::Value> {
        wait_until(Duration::from_secs(20), "ended ssh sessions", || {
            let s = self.sessions();
            (s.len() >= n && s.iter().all(|s| !s["ended_at_ms"].is_null())).then_some(s)
        })
    }

    /// `sluice replay` of a session (text, or `asciicast`).
    pub fn replay(&self, session: &str, format: &str) -> String {
        ok(&self.sluice(&["replay", "--format", format, session]))
    }

    /// Spawns a client and returns its output, killing it after `timeout`.
    pub fn run(&self, cmd: Command, timeout: Duration) -> Output {
        let mut cmd = cmd;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning a client");
        wait_output(child, timeout, "client")
    }
}

impl Drop for SshEnv {
    fn drop(&mut self) {
        if let Some(mut c) = self.gateway.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A short file-name-safe tag for a token.
fn uuid_like(token: &str) -> String {
    let mut h: u64 = 1469598103934665603;
    for b in token.bytes() {
        h = (h ^ b as u64).wrapping_mul(1099511628211);
    }
    format!("{h:016x}")
}
