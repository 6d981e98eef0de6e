//! `cargo xtask soak`: many concurrent PostgreSQL sessions through the gateway
//! on loopback for several minutes. Reports the gateway's RSS and open fds
//! over time, the memory per idle session, and checks pass/fail: memory flat
//! under load, no fd left behind once the sessions close, and as many audit
//! records as commands sent.
//!
//! The gateway opens one upstream connection per session, so the sandbox
//! PostgreSQL runs with `max_connections = sessions + 100`: the soak measures
//! the real thing end to end (each session is a live upstream backend), not
//! idle client sockets against a bounded pool the gateway does not have.
//!
//! Other protocols plug in as a [`Workload`]. `--ssh-sessions N` soaks the SSH
//! gateway the same way: a real sshd behind it, N OpenSSH ControlMaster
//! connections logged in with the token (each one gateway session), each
//! running `ssh … true` exec requests over its connection.

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use sluice_sandbox::{random_hex, TempPostgres, TempPostgresOptions};

use crate::bench::{start_sluice_in, target_dir, DB, ROLE};
use crate::pgwire::{PgClient, Reply};
use crate::run_inherit;

const USAGE: &str = "usage: cargo xtask soak [--sessions 1000] [--ssh-sessions 0] [--minutes 3] \
                     [--interval-ms 1000] [--sluice-bin PATH] [--debug]";

pub(crate) struct Options {
    pub(crate) sessions: usize,
    minutes: f64,
    interval: Duration,
    ssh_sessions: usize,
    pub(crate) sluice_bin: Option<PathBuf>,
    pub(crate) debug: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        sessions: 1000,
        minutes: 3.0,
        interval: Duration::from_millis(1000),
        ssh_sessions: 0,
        sluice_bin: None,
        debug: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (a.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| anyhow!("{key} needs a value\n{USAGE}"))
        };
        match key {
            "--sessions" => o.sessions = value()?.parse().context("--sessions")?,
            "--minutes" => o.minutes = value()?.parse().context("--minutes")?,
            "--interval-ms" => {
                o.interval = Duration::from_millis(value()?.parse().context("--interval-ms")?)
            }
            "--ssh-sessions" => o.ssh_sessions = value()?.parse().context("--ssh-sessions")?,
            "--sluice-bin" => o.sluice_bin = Some(PathBuf::from(value()?)),
            "--debug" => o.debug = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown option `{other}`\n{USAGE}"),
        }
    }
    if (o.sessions == 0 && o.ssh_sessions == 0) || o.minutes <= 0.0 {
        bail!("nothing to run\n{USAGE}");
    }
    Ok(o)
}

/// One protocol's sessions in the soak.
pub(crate) trait Workload: Sync {
    type Client: Send;
    fn open(&self) -> Result<Self::Client>;
    /// Runs command number `n` on the session; Ok(true) if acknowledged.
    fn command(&self, client: &mut Self::Client, n: u64) -> Result<bool>;
    fn close(&self, client: Self::Client);
}

pub(crate) struct PostgresWorkload {
    pub(crate) addr: SocketAddr,
    pub(crate) token: String,
}

impl Workload for PostgresWorkload {
    type Client = PgClient;
    fn open(&self) -> Result<PgClient> {
        PgClient::connect(self.addr, ROLE, DB, &self.token, Duration::from_secs(60))
    }
    fn command(&self, c: &mut PgClient, n: u64) -> Result<bool> {
        Ok(matches!(c.query(&format!("select {n}"))?, Reply::Done(_)))
    }
    fn close(&self, c: PgClient) {
        c.close()
    }
}

/// SSH sessions: one OpenSSH ControlMaster connection each (logged in with
/// the token through SSH_ASKPASS), commands as `ssh … true` over it.
pub(crate) struct SshWorkload {
    port: u16,
    askpass: PathBuf,
    dir: PathBuf,
    next: AtomicU64,
}

pub(crate) struct SshClient {
    master: std::process::Child,
    socket: PathBuf,
}

impl SshWorkload {
    fn ssh(&self, socket: &std::path::Path) -> Command {
        let mut c = Command::new("ssh");
        c.env("SSH_ASKPASS", &self.askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .args(["-F", "/dev/null", "-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.dir.join("known_hosts").display()
            ))
            .args(["-o", "LogLevel=ERROR", "-o", "BatchMode=no"])
            .args([
                "-o",
                "PreferredAuthentications=keyboard-interactive,password",
            ])
            .arg("-o")
            .arg(format!("ControlPath={}", socket.display()))
            .args(["-p", &self.port.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    }
}

impl Workload for SshWorkload {
    type Client = SshClient;
    fn open(&self) -> Result<SshClient> {
        let socket = self
            .dir
            .join(format!("cm-{}", self.next.fetch_add(1, Ordering::Relaxed)));
        let mut master = self
            .ssh(&socket)
            .args(["-o", "ControlMaster=yes", "-N", "bench@127.0.0.1"])
            .spawn()
            .context("starting ssh")?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while !socket.exists() {
            if let Ok(Some(status)) = master.try_wait() {
                bail!("ssh exited before it was logged in ({status})");
            }
            if Instant::now() > deadline {
                let _ = master.kill();
                let _ = master.wait();
                bail!("ssh did not log in within 120 s");
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(SshClient { master, socket })
    }
    fn command(&self, c: &mut SshClient, _n: u64) -> Result<bool> {
        let status = self
            .ssh(&c.socket)
            .args(["-o", "ControlMaster=no", "bench@127.0.0.1", "true"])
            .status()?;
        Ok(status.success())
    }
    fn close(&self, mut c: SshClient) {
        let _ = self
            .ssh(&c.socket)
            .args(["-O", "exit", "bench@127.0.0.1"])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !matches!(c.master.try_wait(), Ok(Some(_))) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        let _ = c.master.kill();
        let _ = c.master.wait();
    }
}

/// Resident memory (KiB) and open fds of a process, from /proc.
pub(crate) fn usage(pid: u32) -> (u64, usize) {
    let rss = fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss, fds)
}

/// Raises this process's open-file limit (children inherit it) with prlimit.
pub(crate) fn raise_fd_limit(want: u64) -> Result<()> {
    let pid = std::process::id().to_string();
    let current = Command::new("prlimit")
        .args([
            "--pid",
            &pid,
            "--nofile",
            "--output=SOFT,HARD",
            "--noheadings",
        ])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let soft: u64 = current
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if soft >= want {
        return Ok(());
    }
    let limit = format!("--nofile={want}:{want}");
    let ok = Command::new("prlimit")
        .args(["--pid", &pid, &limit])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        bail!(
            "could not raise the open-file limit to {want} (now {soft}); run as root or `ulimit -n {want}` first"
        );
    }
    eprintln!("soak: open-file limit raised to {want}");
    Ok(())
}

/// The sandbox PostgreSQL with a `bench` role and database for the gateway.
pub(crate) fn start_postgres(max_connections: usize) -> Result<(TempPostgres, String)> {
    let pg = TempPostgres::start(TempPostgresOptions {
        extra_conf: vec![
            format!("max_connections = {max_connections}"),
            // Idle backends are what the soak holds open; keep each small.
            "shared_buffers = 64MB".into(),
        ],
        ..TempPostgresOptions::default()
    })?;
    let password = random_hex(16)?;
    pg.psql(
        "postgres",
        &format!(
            "CREATE ROLE {ROLE} LOGIN PASSWORD '{password}';\nCREATE DATABASE {DB} OWNER {ROLE};\n"
        ),
    )?;
    Ok((pg, password))
}

/// Builds (or takes) the gateway binary.
pub(crate) fn gateway_bin(sluice_bin: &Option<PathBuf>, debug: bool) -> Result<PathBuf> {
    if let Some(bin) = sluice_bin {
        // The gateway runs in its scratch directory: resolve the path here.
        return bin
            .canonicalize()
            .with_context(|| format!("--sluice-bin {}", bin.display()));
    }
    let mut cmd = crate::cargo();
    cmd.args(["build", "-p", "sluice"]);
    if !debug {
        cmd.arg("--release");
    }
    run_inherit(&mut cmd)?;
    Ok(target_dir()
        .join(if debug { "debug" } else { "release" })
        .join("sluice"))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub(crate) fn soak(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    raise_fd_limit(((o.sessions + o.ssh_sessions) as u64) * 4 + 2048)?;
    let bin = gateway_bin(&o.sluice_bin, o.debug)?;
    let mut reports = Vec::new();
    if o.sessions > 0 {
        eprintln!(
            "soak: PostgreSQL with max_connections = {}",
            o.sessions + 100
        );
        let (pg, password) = start_postgres(o.sessions + 100)?;
        let gateway = start_sluice_in(&bin, &pg, &password, "", None)?;
        let work = Arc::new(PostgresWorkload {
            addr: SocketAddr::from(([127, 0, 0, 1], gateway.port)),
            token: gateway.token.clone(),
        });
        let cli = |a: &[&str]| gateway.cli(a);
        let report = run(&o, o.sessions, gateway.pid(), &cli, work, Some(64.0))?;
        drop(gateway);
        drop(pg);
        reports.push(("PostgreSQL", report));
    }
    if o.ssh_sessions > 0 {
        reports.push(("SSH", soak_ssh(&o, &bin)?));
    }
    let mut passed = true;
    for (name, report) in &reports {
        println!("\n== {name}");
        report.print();
        passed &= report.passed();
    }
    if !passed {
        bail!("soak failed");
    }
    Ok(())
}

/// The SSH gateway in front of a real sshd (the bench's), soaked by
/// `--ssh-sessions` ControlMaster connections.
fn soak_ssh(o: &Options, bin: &std::path::Path) -> Result<Report> {
    use crate::bench::ssh;
    ssh::ensure_user()?;
    let dir = ssh::Scratch::new()?;
    let d = dir.0.clone();
    let client_key = ssh::keygen(&d.join("client_key"))?;
    let sshd = ssh::Sshd::start(&d, "target", &client_key)?;
    let gateway = ssh::Gateway::start(bin, &d, &sshd)?;
    let work = Arc::new(SshWorkload {
        port: gateway.port,
        askpass: gateway.askpass.clone(),
        dir: d.clone(),
        next: AtomicU64::new(0),
    });
    let cli = |a: &[&str]| gateway.cli(a);
    // Each ssh session holds an sshd connection and child too; the per-idle-session
    // figure is reported for the gateway process only, without a target.
    run(o, o.ssh_sessions, gateway.pid(), &cli, work, None)
}

struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

#[derive(Default)]
struct Report {
    lines: Vec<String>,
    checks: Vec<Check>,
}

impl Report {
    fn check(&mut self, name: &'static str, ok: bool, detail: String) {
        self.checks.push(Check { name, ok, detail });
    }
    fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
    fn print(&self) {
        println!();
        for l in &self.lines {
            println!("{l}");
        }
        println!();
        for c in &self.checks {
            println!(
                "{:<4} {:<34} {}",
                if c.ok { "PASS" } else { "FAIL" },
                c.name,
                c.detail
            );
        }
        let failed = self.checks.iter().filter(|c| !c.ok).count();
        println!("{} passed, {} failed", self.checks.len() - failed, failed);
    }
}

type Cli<'a> = dyn Fn(&[&str]) -> Result<std::process::Output> + 'a;

fn run<W>(
    o: &Options,
    n: usize,
    pid: u32,
    cli: &Cli<'_>,
    work: Arc<W>,
    memory_target_kib: Option<f64>,
) -> Result<Report>
where
    W: Workload + Send + 'static,
    W::Client: 'static,
{
    let mut report = Report::default();
    // Warm the gateway (first session, TLS and catalog setup) before the baseline.
    {
        let mut c = work.open()?;
        work.command(&mut c, 0)?;
        work.close(c);
    }
    thread::sleep(Duration::from_secs(2));
    let (rss0, fds0) = usage(pid);
    report.lines.push(format!(
        "baseline (1 session opened and closed): RSS {}, {fds0} fds",
        mib(rss0)
    ));

    let ready = Arc::new(Barrier::new(n + 1));
    let go = Arc::new(Barrier::new(n + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let open_failures = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut threads = Vec::with_capacity(n);
    for i in 0..n {
        let (work, ready, go, stop) = (work.clone(), ready.clone(), go.clone(), stop.clone());
        let (acked, sent, failures, open_failures) = (
            acked.clone(),
            sent.clone(),
            failures.clone(),
            open_failures.clone(),
        );
        let interval = o.interval;
        threads.push(
            thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || {
                    let client = work.open();
                    ready.wait();
                    go.wait();
                    let Ok(mut client) = client else {
                        open_failures.fetch_add(1, Ordering::Relaxed);
                        return;
                    };
                    // Spread the sessions over the interval.
                    thread::sleep(interval.mul_f64((i as f64) / (n as f64)));
                    let mut k = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        sent.fetch_add(1, Ordering::Relaxed);
                        match work.command(&mut client, (i as u64) << 32 | k) {
                            Ok(true) => {
                                acked.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {
                                failures.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                        }
                        k += 1;
                        thread::sleep(interval);
                    }
                    work.close(client);
                })
                .context("spawning a session thread")?,
        );
    }
    ready.wait();
    let opened = started.elapsed();
    thread::sleep(Duration::from_secs(3));
    let (rss1, fds1) = usage(pid);
    let opened_ok = n as u64 - open_failures.load(Ordering::Relaxed);
    let per_session = (rss1.saturating_sub(rss0) as f64) / (n as f64);
    report.lines.push(format!(
        "{n} idle sessions opened in {:.1} s: RSS {}, {fds1} fds; {:.1} KiB RSS per idle session",
        opened.as_secs_f64(),
        mib(rss1),
        per_session
    ));
    report.check(
        "sessions opened",
        opened_ok == n as u64,
        format!("{opened_ok} of {n}"),
    );
    if let Some(target) = memory_target_kib {
        report.check(
            "memory per idle session",
            per_session <= target,
            format!("{per_session:.1} KiB (target ≤ {target} KiB)"),
        );
    }

    go.wait();
    let duration = Duration::from_secs_f64(o.minutes * 60.0);
    let load_start = Instant::now();
    let mut samples: Vec<(f64, u64, usize)> = Vec::new();
    report
        .lines
        .push("t (s)    RSS         fds    commands acknowledged".into());
    while load_start.elapsed() < duration {
        thread::sleep(Duration::from_secs(10).min(duration.saturating_sub(load_start.elapsed())));
        let (rss, fds) = usage(pid);
        let t = load_start.elapsed().as_secs_f64();
        samples.push((t, rss, fds));
        let line = format!(
            "{t:>6.0}   {:<10}  {fds:>5}  {}",
            mib(rss),
            acked.load(Ordering::Relaxed)
        );
        eprintln!("soak: {line}");
        report.lines.push(line);
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let sent = sent.load(Ordering::Relaxed);
    let acked = acked.load(Ordering::Relaxed);
    let failures = failures.load(Ordering::Relaxed);
    report.lines.push(format!(
        "{sent} commands sent in {:.0} s ({:.0}/s), {acked} acknowledged, {failures} failed",
        duration.as_secs_f64(),
        sent as f64 / duration.as_secs_f64()
    ));
    report.check(
        "every command acknowledged",
        failures == 0 && acked == sent,
        format!("{acked} of {sent}"),
    );

    // Memory flat: after the first third (caches, buffers warm), the last
    // sample is within 10% (+16 MiB) of the first.
    let steady: Vec<&(f64, u64, usize)> = samples
        .iter()
        .filter(|s| s.0 >= duration.as_secs_f64() / 3.0)
        .collect();
    if let (Some(first), Some(last)) = (steady.first(), steady.last()) {
        let limit = first.1 + first.1 / 10 + 16 * 1024;
        report.check(
            "memory flat under load",
            last.1 <= limit,
            format!(
                "RSS {} at {:.0} s → {} at {:.0} s (limit {})",
                mib(first.1),
                first.0,
                mib(last.1),
                last.0,
                mib(limit)
            ),
        );
    }

    // Sessions closed: every socket (client and upstream) is released.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut rss2, mut fds2) = usage(pid);
    while fds2 > fds0 + 4 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(500));
        (rss2, fds2) = usage(pid);
    }
    report.lines.push(format!(
        "after closing: RSS {}, {fds2} fds (baseline {fds0})",
        mib(rss2)
    ));
    report.check(
        "no fd leak after close",
        fds2 <= fds0 + 4,
        format!("{fds2} fds, baseline {fds0}"),
    );

    // Audit: as many command records as commands sent (plus the warm-up one),
    // and every session recorded as ended.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (recorded, sessions, ended) = loop {
        let out = cli(&["sessions", "list", "--json"])?;
        if !out.status.success() {
            bail!(
                "sluice sessions list failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let list: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).context("parsing sluice sessions list --json")?;
        let recorded: u64 = list.iter().filter_map(|s| s["commands"].as_u64()).sum();
        let ended = list.iter().filter(|s| s["ended_at_ms"].is_u64()).count();
        if (recorded > sent && ended == list.len()) || Instant::now() > deadline {
            break (recorded, list.len(), ended);
        }
        thread::sleep(Duration::from_secs(1));
    };
    report.check(
        "audit records = commands sent",
        recorded == sent + 1,
        format!("{recorded} recorded, {} sent (incl. warm-up)", sent + 1),
    );
    report.check(
        "every session ended in the store",
        ended == sessions && sessions == n + 1,
        format!("{ended} of {sessions} ended, {} opened", n + 1),
    );
    Ok(report)
}
