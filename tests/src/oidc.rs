//! A real OpenID provider for the identity tests: npm `oidc-provider` run by
//! `tests/oidc/provider.mjs` on a loopback port (its dependencies are
//! installed by `cargo xtask setup`). Tokens are fetched with curl, the
//! provider's pages are driven by `tests/oidc/approve.mjs`.

use crate::{ok, run_with_timeout, wait_output, COMMAND_TIMEOUT};
use sluice_sandbox::free_port;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `tests/oidc`.
pub fn oidc_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc")
}

/// The test provider, stopped on drop.
#[derive(Debug)]
pub struct Idp {
    child: Option<Child>,
    /// `CONSOLE_REDIRECT_URI` for the provider: registers the `console` web client.
    console_redirect: Option<String>,
    /// Its loopback port.
    pub port: u16,
}

impl Idp {
    /// Starts the provider on a free port and waits until it listens.
    pub fn start() -> Idp {
        // A free port can be taken before node binds it, and node starts
        // slowly on a loaded machine: try a few ports before giving up.
        for _ in 0..2 {
            let mut idp = Idp {
                child: None,
                console_redirect: None,
                port: free_port(),
            };
            if idp.try_start() {
                return idp;
            }
        }
        let mut idp = Idp {
            child: None,
            console_redirect: None,
            port: free_port(),
        };
        idp.start_again();
        idp
    }

    /// Like [`Idp::start`], with a `console` web client (public, code + PKCE)
    /// whose one redirect URI is `redirect_uri` (the operator console's callback).
    pub fn start_with_console(redirect_uri: &str) -> Idp {
        let mut idp = Idp {
            child: None,
            console_redirect: Some(redirect_uri.to_string()),
            port: free_port(),
        };
        if !idp.try_start() {
            idp.port = free_port();
            idp.start_again();
        }
        idp
    }

    /// `http://127.0.0.1:PORT` (the `iss` of its tokens).
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts it again on the same port (a new process: new signing key, no state).
    pub fn start_again(&mut self) {
        if !self.try_start() {
            panic!("the OpenID provider did not start on port {}", self.port);
        }
    }

    /// Starts the provider on `self.port`; false if it was not ready in time.
    fn try_start(&mut self) -> bool {
        assert!(self.child.is_none(), "the provider is already running");
        let dir = oidc_dir();
        assert!(
            dir.join("node_modules").join("oidc-provider").is_dir(),
            "tests/oidc/node_modules is missing: run `cargo xtask setup` (npm ci in tests/oidc)"
        );
        let mut cmd = Command::new("node");
        if let Some(uri) = &self.console_redirect {
            cmd.env("CONSOLE_REDIRECT_URI", uri);
        }
        let mut child = cmd
            .arg(dir.join("provider.mjs"))
            .arg(self.port.to_string())
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting node tests/oidc/provider.mjs (is node installed? cargo xtask setup)");
        let stdout = child.stdout.take().expect("provider stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("ready ") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(45)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        self.child = Some(child);
        true
    }

    /// Stops it (the IdP is down: connections are refused).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Replaces its signing key (a new kid; the old key is no longer published).
    pub fn rotate(&self) {
        let out = curl(&["-X", "POST", &format!("{}/admin/rotate", self.issuer())]);
        assert!(out.contains("kid"), "rotate answered {out}");
    }

    /// Its current public signing key (SPKI PEM).
    pub fn public_pem(&self) -> String {
        curl(&[&format!("{}/admin/public.pem", self.issuer())])
    }

    /// A client-credentials access token (a JWT) for `client`; `resource`
    /// picks the audience (`urn:sluice` → `sluice`, `urn:other` → `other`).
    pub fn client_token(&self, client: &str, resource: &str) -> String {
        let out = curl(&[
            "-u",
            &format!("{client}:{client}-secret"),
            "-d",
            "grant_type=client_credentials",
            "-d",
            &format!("resource={resource}"),
            &format!("{}/token", self.issuer()),
        ]);
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("token endpoint answered {out}: {e}"));
        v["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {out}"))
            .to_string()
    }

    /// An `[[auth.oidc]]` table for this provider (audience `sluice`), plus `extra` lines.
    pub fn toml(&self, extra: &str) -> String {
        format!(
            "[[auth.oidc]]\nissuer = \"{}\"\naudience = \"sluice\"\nclient_id = \"cli\"\nresource = \"urn:sluice\"\n{extra}\n",
            self.issuer()
        )
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs curl (`-sS --fail-with-body`), returns its stdout.
pub fn curl(args: &[&str]) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "--fail-with-body"])
        .args(args);
    ok(&run_with_timeout(&mut cmd, None, COMMAND_TIMEOUT))
}

/// Drives the provider's pages from `url` as the person `login` (see approve.mjs).
pub fn approve(url: &str, login: &str) {
    let mut cmd = Command::new("node");
    cmd.arg(oidc_dir().join("approve.mjs"))
        .arg(url)
        .arg(login)
        .current_dir(oidc_dir());
    ok(&run_with_timeout(&mut cmd, None, COMMAND_TIMEOUT));
}

/// Spawns `cmd` (stderr piped), waits for the first stderr line containing
/// `http://` and returns that URL along with the running child.
pub fn spawn_until_url(mut cmd: Command) -> (Child, String, std::sync::mpsc::Receiver<String>) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawning");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
                if let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) {
                    return (child, url.to_string(), rx);
                }
            }
            Err(_) => {
                let _ = child.kill();
                let out = wait_output(child, Duration::from_secs(5), "the login command");
                panic!(
                    "no URL printed; stderr so far:\n{seen}\nstdout:\n{}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
    }
}
