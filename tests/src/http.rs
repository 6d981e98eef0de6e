//! HTTP gateway harness: a real HTTP upstream (`py/http_upstream.py`, stdlib
//! `http.server` on a free port, logging every request it receives), the real
//! `sluice` binary with `listen.http` (HTTPS with its generated CA) and the
//! operator API, and real clients: curl and Python `requests`.

use crate::{
    failed, issue_token, ok, py_dir, run_with_timeout, sluice_cli, stdout, COMMAND_TIMEOUT,
};
use sluice_sandbox::free_port;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The secret the `crm` connection injects as its bearer token.
pub const CRM_SECRET: &str = "crm-upstream-secret-7f3a9c";

/// The log line the gateway prints once its HTTP listener is bound.
const READY_LINE: &str = "HTTP listener ready";

/// A connection only the `ops` group may use (the agents' tokens are refused).
pub const OPS: &str = r#"
[[connections]]
name = "ops"
kind = "http"
upstream = "{UPSTREAM}"
allow_groups = ["ops"]
"#;

/// The default connection, `crm`: a bearer credential from the environment.
const CRM: &str = r#"
[[connections]]
name = "crm"
kind = "http"
upstream = "{UPSTREAM}"
bearer = { env = "CRM_TOKEN" }
allow_groups = ["agents"]
"#;

/// A running upstream: the python server and its request log.
pub struct Upstream {
    child: Child,
    /// `127.0.0.1:port`.
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Upstream {
    /// Starts `py/http_upstream.py` on a free port (TLS with `cert`/`key` when given).
    pub fn start(dir: &std::path::Path, tls: Option<(&str, &str)>) -> Upstream {
        let log = dir.join(format!("upstream-{}.jsonl", free_port()));
        fs::write(&log, "").expect("creating the upstream log");
        for _ in 0..3 {
            let port = free_port();
            let mut cmd = Command::new("python3");
            cmd.arg(py_dir().join("http_upstream.py"))
                .arg(port.to_string())
                .arg(&log)
                .env("PYTHONUNBUFFERED", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Some((cert, key)) = tls {
                cmd.arg(cert).arg(key);
            }
            let mut child = cmd.spawn().expect("starting the python upstream");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if TcpStream::connect(addr).is_ok() {
                    return Upstream { child, addr, log };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("the python upstream did not start");
    }

    /// Every request the upstream received, in order (method, path, query, headers).
    pub fn requests(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The last request whose path is `path`.
    pub fn last(&self, path: &str) -> Option<serde_json::Value> {
        self.requests()
            .into_iter()
            .rev()
            .find(|r| r["path"] == path)
    }
}

/// A header of a logged upstream request (case-insensitive name).
pub fn header<'a>(request: &'a serde_json::Value, name: &str) -> Vec<&'a str> {
    request["headers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        .filter_map(|h| h[1].as_str())
        .collect()
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What to start.
#[derive(Debug, Default, Clone)]
pub struct HttpEnvBuilder {
    extra: Vec<String>,
    env: Vec<(String, String)>,
    no_crm: bool,
    tls_upstream: bool,
}

impl HttpEnvBuilder {
    /// Appends TOML (rules, masking, more connections). `{UPSTREAM}` is the
    /// upstream's `http://127.0.0.1:port`, `{DIR}` the test's temp directory.
    pub fn toml(mut self, toml: &str) -> Self {
        self.extra.push(toml.to_string());
        self
    }

    /// An environment variable for the gateway and CLI commands.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Also starts an HTTPS upstream with a certificate from a test CA:
    /// `{TLS_UPSTREAM}` is its `https://127.0.0.1:port`, `{TLS_CA}` the CA file.
    pub fn tls_upstream(mut self) -> Self {
        self.tls_upstream = true;
        self
    }

    /// Leaves out the default `crm` connection.
    pub fn without_crm(mut self) -> Self {
        self.no_crm = true;
        self
    }

    pub fn start(self) -> HttpEnv {
        let dir = tempfile::Builder::new()
            .prefix("sluice-http-e2e-")
            .tempdir()
            .expect("creating the test temp dir");
        let upstream = Upstream::start(dir.path(), None);
        let tls_upstream = self.tls_upstream.then(|| {
            let (cert, key) = test_ca(dir.path());
            Upstream::start(dir.path(), Some((&cert, &key)))
        });
        let mut env = HttpEnv {
            tls_upstream,
            gateway: None,
            port: 0,
            api_port: 0,
            config_path: dir.path().join("sluice.toml"),
            state_dir: dir.path().join("state"),
            log_path: dir.path().join("gateway.log"),
            gateway_env: vec![
                ("CRM_TOKEN".to_string(), CRM_SECRET.to_string()),
                ("NO_COLOR".to_string(), "1".to_string()),
                (
                    "SLUICE_LOG".to_string(),
                    "info,sluice_http=debug".to_string(),
                ),
            ],
            extra: String::new(),
            upstream,
            dir,
        };
        env.gateway_env.extend(self.env);
        let mut extra = if self.no_crm {
            String::new()
        } else {
            CRM.to_string()
        };
        extra.push_str(&self.extra.join("\n"));
        if let Some(t) = &env.tls_upstream {
            extra = extra
                .replace("{TLS_UPSTREAM}", &format!("https://{}", t.addr))
                .replace(
                    "{TLS_CA}",
                    &env.dir.path().join("ca.crt").display().to_string(),
                );
        }
        env.extra = extra
            .replace("{UPSTREAM}", &format!("http://{}", env.upstream.addr))
            .replace("{DIR}", &env.dir.path().display().to_string());
        env.start_gateway();
        env
    }
}

/// One gateway (HTTP + operator API) in front of one python upstream.
pub struct HttpEnv {
    gateway: Option<Child>,
    /// The HTTPS listener's port on 127.0.0.1.
    pub port: u16,
    /// The operator API's port.
    pub api_port: u16,
    pub config_path: PathBuf,
    pub state_dir: PathBuf,
    log_path: PathBuf,
    gateway_env: Vec<(String, String)>,
    extra: String,
    pub upstream: Upstream,
    /// The HTTPS upstream, when asked for ([`HttpEnvBuilder::tls_upstream`]).
    pub tls_upstream: Option<Upstream>,
    pub dir: TempDir,
}

impl HttpEnv {
    pub fn builder() -> HttpEnvBuilder {
        HttpEnvBuilder::default()
    }

    /// The gateway with the `crm` connection and nothing else.
    pub fn start() -> HttpEnv {
        HttpEnvBuilder::default().start()
    }

    fn write_config(&self) {
        let config = format!(
            "[gateway]\nstate_dir = {state:?}\n\n[listen]\nhttp = \"127.0.0.1:{port}\"\napi = \"127.0.0.1:{api}\"\n\n{extra}\n",
            state = self.state_dir.display().to_string(),
            port = self.port,
            api = self.api_port,
            extra = self.extra,
        );
        fs::write(&self.config_path, config).expect("writing the gateway config");
    }

    fn start_gateway(&mut self) {
        for attempt in 1..=3 {
            self.port = free_port();
            self.api_port = free_port();
            self.write_config();
            match crate::serve_until(
                &self.config_path,
                &self.gateway_env,
                &self.log_path,
                READY_LINE,
            ) {
                Ok(child) => {
                    self.gateway = Some(child);
                    return;
                }
                Err((_, log)) if attempt < 3 && log.contains("binding the") => {}
                Err((status, log)) => {
                    panic!("sluice serve exited ({status}) before it was ready; log:\n{log}")
                }
            }
        }
    }

    /// Rewrites `from` as `to` in the configuration's added TOML and
    /// reloads it (SIGHUP); returns the gateway's log line about the reload.
    pub fn reload_replacing(&mut self, from: &str, to: &str) -> String {
        assert!(self.extra.contains(from), "{from:?} is not in the config");
        self.extra = self.extra.replace(from, to);
        self.write_config();
        crate::reload(self.gateway_pid(), || self.gateway_log())
    }

    /// The gateway's log so far.
    pub fn gateway_log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Panics with the log unless the gateway still runs.
    #[track_caller]
    pub fn assert_alive(&mut self) {
        let alive = matches!(self.gateway.as_mut().map(|c| c.try_wait()), Some(Ok(None)));
        assert!(alive, "the gateway is gone; log:\n{}", self.gateway_log());
    }

    /// The gateway's process id.
    pub fn gateway_pid(&self) -> u32 {
        self.gateway.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `https://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// The generated CA clients trust.
    pub fn ca(&self) -> PathBuf {
        self.state_dir.join("tls").join("ca.crt")
    }

    /// `sluice ARGS… --config FILE`.
    pub fn sluice(&self, args: &[&str]) -> Output {
        sluice_cli(&self.config_path, &self.gateway_env, args)
    }

    /// A gateway token.
    pub fn token(&self, subject: &str, groups: &[&str], ttl: &str) -> String {
        issue_token(|a| self.sluice(a), subject, groups, ttl)
    }

    /// A token for `agent-1` in `agents`.
    pub fn agent_token(&self) -> String {
        self.token("agent-1", &["agents"], "10m")
    }

    /// curl against the gateway (trusting its CA) with `token` as bearer and
    /// extra arguments; `-sS`, status code last on stdout after a newline.
    pub fn curl(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "60", "--cacert"])
            .arg(self.ca())
            .args(["-w", "\n%{http_code}"]);
        if let Some(t) = token {
            cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
        }
        cmd.args(args);
        run_with_timeout(&mut cmd, None, COMMAND_TIMEOUT)
    }

    /// curl `path` (with `args`) → (status, body).
    pub fn get(&self, token: &str, path: &str, args: &[&str]) -> (u16, String) {
        let mut all = args.to_vec();
        let url = self.url(path);
        all.push(&url);
        split_status(&self.curl(Some(token), &all))
    }

    /// `python3 py/http_client.py ARGS…`.
    pub fn python(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("python3");
        cmd.arg(py_dir().join("http_client.py"))
            .args(args)
            .env("PYTHONUNBUFFERED", "1");
        run_with_timeout(&mut cmd, None, COMMAND_TIMEOUT)
    }

    /// One call with Python `requests`, parsed: {"status", "headers", "body"}.
    pub fn requests(&self, token: &str, path: &str, method: &str) -> serde_json::Value {
        let url = self.url(path);
        let ca = self.ca().display().to_string();
        let out = self.python(&["requests", &url, token, &ca, method]);
        serde_json::from_str(ok(&out).trim()).expect("requests output is JSON")
    }

    /// `sluice sessions list --json`.
    pub fn sessions(&self) -> Vec<serde_json::Value> {
        let text = ok(&self.sluice(&["sessions", "list", "--json"]));
        serde_json::from_str(&text).expect("sessions list --json")
    }

    /// Replay of the session whose transcript holds all of `needles` (waits
    /// for it: outcomes are recorded off the data path, after the response).
    pub fn replay_with(&self, needles: &[&str]) -> String {
        let mut last = String::new();
        let found = wait_until_or(Duration::from_secs(15), || {
            self.sessions().iter().find_map(|s| {
                let id = s["id"].as_str()?;
                let text = stdout(&self.sluice(&["replay", id]));
                if text.contains(needles[0]) {
                    last = text.clone();
                }
                needles.iter().all(|n| text.contains(n)).then_some(text)
            })
        });
        found.unwrap_or_else(|| {
            let log = self.gateway_log();
            let tail = &log[log.len().saturating_sub(4000)..];
            let journal = fs::read_to_string(self.state_dir.join("journal.log")).unwrap_or_default();
            let jtail = &journal[journal.len().saturating_sub(3000)..];
            panic!("no replay holds all of {needles:?}; closest:\n{last}\ngateway log (tail):\n{tail}\njournal (tail):\n{jtail}")
        })
    }

    /// `sluice approvals ARGS… --token TOKEN`.
    pub fn approvals(&self, token: &str, args: &[&str]) -> Output {
        let mut all = vec!["approvals"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--token", token]);
        self.sluice(&all)
    }

    /// Approves approval `id` as `approver` (asserting success).
    pub fn approve(&self, approver: &str, id: &str) {
        ok(&self.approvals(approver, &["approve", id]));
    }

    /// Asserts a CLI command failed.
    #[track_caller]
    pub fn fails(&self, out: &Output) -> String {
        failed(out)
    }
}

impl Drop for HttpEnv {
    fn drop(&mut self) {
        if let Some(mut child) = self.gateway.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A CA (`ca.crt`) and a certificate for 127.0.0.1/localhost signed by it,
/// made with the openssl CLI in `dir`; returns the leaf's (cert, key) paths.
fn test_ca(dir: &std::path::Path) -> (String, String) {
    let run = |args: &[&str]| {
        let mut cmd = Command::new("openssl");
        cmd.current_dir(dir).args(args);
        ok(&run_with_timeout(&mut cmd, None, COMMAND_TIMEOUT));
    };
    fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("writing leaf.ext");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=sluice test upstream CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.crt",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
    (
        dir.join("leaf.crt").display().to_string(),
        dir.join("leaf.key").display().to_string(),
    )
}

/// Polls `f` every 100 ms until it returns `Some` or `timeout` passes.
pub fn wait_until_or<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Splits curl's `-w "\n%{http_code}"` output into (status, body).
pub fn split_status(out: &Output) -> (u16, String) {
    let text = stdout(out);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    let code = code.trim().parse().unwrap_or_else(|_| {
        panic!(
            "curl printed no status: stdout {text:?} stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, body.to_string())
}

/// The peak resident memory (VmHWM, KiB) of a process.
pub fn peak_rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
