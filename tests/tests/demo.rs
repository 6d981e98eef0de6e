//! `sluice demo` as a newcomer runs it: PostgreSQL, an SSH host and an HTTP
//! API behind the gateway, each tried with its real client (psql, ssh, curl)
//! using the token the demo prints; then SIGTERM stops the gateway and the
//! demo's servers with it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_e2e::{clean_pg_env, run_with_timeout, sluice_bin, stderr, stdout, wait_until};
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);

struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    printed: Vec<String>,
}

impl Demo {
    fn start(state_dir: &std::path::Path) -> Demo {
        let mut child = Command::new(sluice_bin())
            .args(["demo", "--state-dir"])
            .arg(state_dir)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting sluice demo");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut demo = Demo {
            child,
            lines,
            printed: Vec::new(),
        };
        demo.read_until("Press Ctrl-C to stop.");
        // The listeners start right after the instructions are printed.
        for port in [15432, 15422, 15443] {
            sluice_sandbox::wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("the demo's listener on {port}: {e}"));
        }
        demo
    }

    fn read_until(&mut self, marker: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !self.printed.iter().any(|l| l.contains(marker)) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.printed.push(line),
                Err(_) => panic!("the demo never printed {marker:?}: {:#?}", self.printed),
            }
        }
    }

    /// The line after `heading` (the demo prints the token below it).
    fn after(&self, heading: &str) -> String {
        let i = self
            .printed
            .iter()
            .position(|l| l.starts_with(heading))
            .unwrap_or_else(|| panic!("no {heading:?} in {:#?}", self.printed));
        self.printed[i + 1].trim().to_string()
    }
}

impl Drop for Demo {
    /// SIGTERM first, so that a failing test does not leave the demo's
    /// PostgreSQL and sshd behind; SIGKILL if it does not stop.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ssh(dir: &std::path::Path, token: &str, line: &str) -> Output {
    let askpass = dir.join("askpass.sh");
    let secret = dir.join("token");
    fs::write(&secret, token).unwrap();
    fs::write(
        &askpass,
        format!("#!/bin/sh\ncat {:?}\n", secret.display().to_string()),
    )
    .unwrap();
    fs::set_permissions(&askpass, fs::Permissions::from_mode(0o700)).unwrap();
    let mut cmd = Command::new("ssh");
    cmd.args([
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "PreferredAuthentications=password,keyboard-interactive",
        "-p",
        "15422",
        "demo-host@127.0.0.1",
        line,
    ])
    .env("SSH_ASKPASS", &askpass)
    .env("SSH_ASKPASS_REQUIRE", "force")
    .env("DISPLAY", ":0")
    .env_remove("SSH_AUTH_SOCK");
    run_with_timeout(&mut cmd, None, TIMEOUT)
}

/// Runs a command line the demo printed, as a user pastes it after the
/// `export VAR=TOKEN` it printed too (`var`).
fn run_printed(demo: &Demo, var: &str, token: &str, which: impl Fn(&str) -> bool) -> Output {
    let line = demo
        .printed
        .iter()
        .map(|l| l.trim())
        .find(|l| which(l))
        .unwrap_or_else(|| panic!("no such line in {:#?}", demo.printed));
    assert!(!line.contains(token), "the printed line holds the token");
    assert!(
        demo.printed
            .iter()
            .any(|l| l.trim() == format!("export {var}={token}")),
        "the demo did not print how to set {var}"
    );
    let mut cmd = Command::new("bash");
    clean_pg_env(&mut cmd).arg("-c").arg(line).env(var, token);
    run_with_timeout(&mut cmd, None, TIMEOUT)
}

#[test]
fn the_demo_serves_postgres_ssh_and_http_and_stops_on_sigterm() {
    let dir = tempfile::Builder::new()
        .prefix("sluice-demo-e2e-")
        .tempdir()
        .unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let state = dir.path().join("state");
    let mut demo = Demo::start(&state);
    let token = demo.after("Token for subject demo-agent");

    // PostgreSQL, masked, with the psql line the demo printed.
    let out = run_printed(&demo, "PGPASSWORD", &token, |l| {
        l.starts_with("psql ") && l.contains("card_number")
    });
    assert!(out.status.success(), "{}", stderr(&out));
    let row = stdout(&out);
    assert!(
        row.contains("****@") && row.contains("[credit_card]"),
        "{row}"
    );

    // SSH: a command runs on the demo host; a denied one never does.
    let out = ssh(dir.path(), &token, "echo hello from $(whoami)");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("hello from "), "{}", stdout(&out));
    let out = ssh(dir.path(), &token, "rm -rf /tmp/nothing-here");
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
    assert!(stderr(&out).contains("no-rm-on-hosts"), "{}", stderr(&out));

    // HTTP, with the curl lines the demo printed: the API's card numbers
    // are masked; DELETE is refused.
    let out = run_printed(&demo, "TOKEN", &token, |l| l.ends_with("/crm/customers"));
    let body = stdout(&out);
    assert!(
        body.contains("\"card_number\":\"[credit_card]\""),
        "{body} {}",
        stderr(&out)
    );
    let out = run_printed(&demo, "TOKEN", &token, |l| l.contains("-X DELETE"));
    assert!(stdout(&out).contains("crm-no-deletes"), "{}", stdout(&out));

    // SIGTERM stops the gateway and the demo's servers with it.
    let sshd_config = state.join("demo-sshd").join("sshd_config");
    let sshd_running = || processes_mentioning(&sshd_config.display().to_string()) > 0;
    assert!(sshd_running(), "the demo's sshd is not running");
    let kill = Command::new("kill")
        .args(["-TERM", &demo.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    wait_until(TIMEOUT, "the demo to exit", || {
        demo.child.try_wait().unwrap()
    });
    wait_until(Duration::from_secs(10), "sshd to stop", || {
        (!sshd_running()).then_some(())
    });
    wait_until(Duration::from_secs(20), "PostgreSQL to stop", || {
        let out = Command::new("pg_isready")
            .args(["-h", "127.0.0.1", "-p", "54320"])
            .output()
            .ok()?;
        (!out.status.success()).then_some(())
    });
}

/// Processes whose command line contains `needle` (from /proc).
fn processes_mentioning(needle: &str) -> usize {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .count()
}
