//! `cargo xtask faults`: the gateway under faults, pass/fail per scenario.
//!
//! - `kill9`: SIGKILL the gateway under write load; after a restart every
//!   acknowledged command has its audit record, nothing reached the database
//!   unrecorded, and `sluice audit verify` passes.
//! - `full_disk`: the state directory on a 1 MiB tmpfs (mounted as root),
//!   filled up: commands are refused with a clear error and never forwarded;
//!   new sessions are refused.
//! - `upstream_restart`: PostgreSQL restarts under open sessions: each ends
//!   with an error within a bound; new sessions work once it is back.
//! - `upstream_stall`: a session's backend is frozen (SIGSTOP): when its
//!   client gives up, the session still ends and is recorded; with the whole
//!   server frozen, a new session gets a clear error within the handshake bound.
//! - `half_open`: clients that connect and go silent, or stop mid-handshake,
//!   are dropped within the startup bound; a client that half-closes ends its
//!   session; an upstream that accepts and never answers yields a clear error.
//!
//! Other protocols add scenarios here (SSH: kill -9 during an exec, a stalled
//! sshd; HTTP: a slowloris client, a stalled upstream) by writing a function
//! like the ones below and listing it in `SCENARIOS`.

use std::collections::HashSet;
use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use sluice_sandbox::{command_as, is_root, TempPostgres};

use crate::bench::{start_sluice_in, ScratchDir, Sluice, DB, ROLE};
use crate::pgwire::{PgClient, Reply};
use crate::soak::{gateway_bin, start_postgres};

type Scenario = fn(&Bench) -> Result<String>;

const SCENARIOS: &[(&str, Scenario)] = &[
    ("kill9", kill9),
    ("full_disk", full_disk),
    ("upstream_restart", upstream_restart),
    ("upstream_stall", upstream_stall),
    ("half_open", half_open),
];

/// How long a session may take to end after its fault (the handshake
/// deadlines are 15 s; the rest is margin for a loaded machine).
const BOUND: Duration = Duration::from_secs(25);

struct Bench {
    bin: std::path::PathBuf,
    pg: Mutex<TempPostgres>,
    password: String,
}

impl Bench {
    fn gateway(&self, extra: &str, state: Option<&Path>) -> Result<Sluice> {
        let pg = self.pg.lock().map_err(|_| anyhow!("lock"))?;
        start_sluice_in(&self.bin, &pg, &self.password, extra, state)
    }

    fn sql(&self, sql: &str) -> Result<String> {
        let pg = self.pg.lock().map_err(|_| anyhow!("lock"))?;
        Ok(pg.psql(DB, sql)?)
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<()> {
        let pg = self.pg.lock().map_err(|_| anyhow!("lock"))?;
        // The restarted server inherits pg_ctl's stdio: give it a log file and
        // no pipes, or waiting for pg_ctl's output would wait for the server.
        let log = pg.data_dir.join("restart.log");
        let mut cmd = command_as(pg.os_user(), pg.binaries().tool("pg_ctl"));
        cmd.arg("-D")
            .arg(&pg.data_dir)
            .arg("-l")
            .arg(&log)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let status = cmd.status().context("running pg_ctl")?;
        if !status.success() {
            bail!(
                "pg_ctl {args:?} failed ({status}): {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Ok(())
    }
}

fn client(g: &Sluice) -> Result<PgClient> {
    PgClient::connect(
        SocketAddr::from(([127, 0, 0, 1], g.port)),
        ROLE,
        DB,
        &g.token,
        Duration::from_secs(30),
    )
}

fn signal(pid: &str, sig: &str) -> Result<()> {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), pid])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        bail!("kill -{sig} {pid} failed");
    }
    Ok(())
}

/// Sessions in the store as JSON.
fn sessions(g: &Sluice) -> Result<Vec<serde_json::Value>> {
    let out = g.cli(&["sessions", "list", "--json"])?;
    if !out.status.success() {
        bail!(
            "sessions list: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Waits until the store shows `n` ended sessions; returns how long it took.
fn wait_ended(g: &Sluice, n: usize, within: Duration) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let ended = sessions(g)?
            .iter()
            .filter(|s| s["ended_at_ms"].is_u64())
            .count();
        if ended >= n {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            bail!("only {ended} of {n} sessions recorded as ended after {within:?}");
        }
        thread::sleep(Duration::from_millis(250));
    }
}

fn kill9(b: &Bench) -> Result<String> {
    b.sql("DROP TABLE IF EXISTS fault_t; CREATE TABLE fault_t (id bigint PRIMARY KEY); ALTER TABLE fault_t OWNER TO bench;")?;
    let mut g = b.gateway("", None)?;
    let acked = Arc::new(Mutex::new(Vec::<u64>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for t in 0..16u64 {
        let mut c = client(&g)?;
        let (acked, stop) = (acked.clone(), stop.clone());
        threads.push(thread::spawn(move || {
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = t * 1_000_000 + k;
                match c.query(&format!("insert into fault_t values ({id})")) {
                    Ok(Reply::Done(_)) => acked.lock().map(|mut a| a.push(id)).unwrap_or(()),
                    _ => return,
                }
                k += 1;
            }
        }));
    }
    thread::sleep(Duration::from_secs(3));
    // SIGKILL: no shutdown path runs.
    g.daemon.child.kill()?;
    let _ = g.daemon.child.wait();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let acked = acked.lock().map_err(|_| anyhow!("lock"))?.clone();
    if acked.is_empty() {
        bail!("no command was acknowledged before the kill");
    }
    g.restart()?;
    let verify = g.cli(&["audit", "verify"])?;
    if !verify.status.success() {
        bail!(
            "sluice audit verify failed after the crash: {}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
    }
    // Every command the journal holds, by the id it inserted.
    let journal = fs::read_to_string(g.state.join("journal.log"))?;
    let mut audited = HashSet::new();
    for part in journal.split("insert into fault_t values (").skip(1) {
        if let Some(id) = part.split(')').next().and_then(|s| s.parse::<u64>().ok()) {
            audited.insert(id);
        }
    }
    let missing: Vec<u64> = acked
        .iter()
        .filter(|id| !audited.contains(id))
        .copied()
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} acknowledged commands have no audit record (e.g. {:?})",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }
    // Nothing reached the database without its record.
    let rows = b.sql("SELECT id FROM fault_t")?;
    let unrecorded: Vec<&str> = rows
        .lines()
        .map(str::trim)
        .filter(|l| l.parse::<u64>().is_ok_and(|id| !audited.contains(&id)))
        .collect();
    if !unrecorded.is_empty() {
        bail!(
            "{} rows reached the database without an audit record",
            unrecorded.len()
        );
    }
    // The restarted gateway serves again.
    let mut c = client(&g)?;
    if !matches!(c.query("select 1")?, Reply::Done(_)) {
        bail!("the restarted gateway does not serve");
    }
    c.close();
    Ok(format!(
        "{} acknowledged inserts, all audited; {} rows in the table, none unrecorded; audit verify ok",
        acked.len(),
        rows.lines().count()
    ))
}

/// A tmpfs mounted for the scenario, unmounted on drop.
struct Tmpfs(ScratchDir);

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs> {
        let dir = ScratchDir::new("sluice-faults-state", None)?;
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            bail!("mount -t tmpfs failed (needs root and mount rights)");
        }
        Ok(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

fn fill(dir: &Path) -> Result<()> {
    // Write until the filesystem refuses: exactly full, whatever the overhead.
    let mut f = fs::File::create(dir.join("filler"))?;
    let block = vec![0u8; 4096];
    loop {
        if std::io::Write::write_all(&mut f, &block).is_err() {
            break;
        }
    }
    let mut f = fs::File::create(dir.join("filler-tail"))?;
    while std::io::Write::write_all(&mut f, &[0u8]).is_ok() {}
    Ok(())
}

fn full_disk(b: &Bench) -> Result<String> {
    if !is_root() {
        bail!("skipped: mounting a small tmpfs for the state directory needs root");
    }
    b.sql("DROP TABLE IF EXISTS fault_disk; CREATE TABLE fault_disk (id int); ALTER TABLE fault_disk OWNER TO bench;")?;
    let fs_dir = Tmpfs::mount("2m")?;
    let state = fs_dir.0.path().join("state");
    let g = b.gateway("", Some(&state))?;
    let mut c = client(&g)?;
    if !matches!(
        c.query("insert into fault_disk values (0)")?,
        Reply::Done(_)
    ) {
        bail!("the gateway did not serve before the disk filled");
    }
    fill(fs_dir.0.path())?;
    // The journal's last page may still have room: commands keep running
    // while their records fit, then must be refused. Either way, none may
    // run without its record.
    let mut refused = 0;
    let mut ran_after_full = 0;
    let mut messages = Vec::new();
    for i in 1..=2000 {
        match c.query(&format!("insert into fault_disk values ({i})")) {
            Ok(Reply::Error(code, msg)) => {
                refused += 1;
                messages.push(format!("{code}: {msg}"));
                if refused == 3 {
                    break;
                }
            }
            Ok(Reply::Done(_)) => ran_after_full += 1,
            // The session ended: also a refusal, as long as nothing ran unrecorded.
            Err(_) => {
                refused += 1;
                break;
            }
        }
    }
    if refused == 0 {
        bail!("2000 commands ran with the state disk full");
    }
    let journal = fs::read_to_string(state.join("journal.log"))?;
    let mut audited = HashSet::new();
    for part in journal.split("insert into fault_disk values (").skip(1) {
        if let Some(id) = part.split(')').next().and_then(|s| s.parse::<u64>().ok()) {
            audited.insert(id);
        }
    }
    let rows = b.sql("SELECT id FROM fault_disk WHERE id > 0")?;
    let unrecorded = rows
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .filter(|id| !audited.contains(id))
        .count();
    if unrecorded > 0 {
        bail!("{unrecorded} commands reached the database without an audit record");
    }
    let clear = messages
        .first()
        .is_some_and(|m| m.contains("cannot record") || m.contains("audit"));
    if !clear {
        bail!("the refusal does not say why: {messages:?}");
    }
    // A new session cannot be recorded either: refused at startup.
    let new = client(&g);
    let new_session = match new {
        Ok(mut c2) => match c2.query("select 1") {
            Ok(Reply::Done(_)) => bail!("a new session ran a command with the state disk full"),
            other => format!("new session's command refused ({other:?})"),
        },
        Err(e) => format!("new session refused: {e:#}"),
    };
    drop(g);
    Ok(format!(
        "{ran_after_full} commands still fit in the journal's last page and ran recorded, then {refused} refused and none forwarded unrecorded: \"{}\"; {new_session}",
        messages.first().cloned().unwrap_or_default()
    ))
}

fn upstream_restart(b: &Bench) -> Result<String> {
    let g = b.gateway("", None)?;
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut c = client(&g)?;
        c.query("select 1")?;
        clients.push(c);
    }
    let started = Instant::now();
    b.pg_ctl(&["restart", "-m", "fast", "-w", "-t", "30"])?;
    let mut errors = Vec::new();
    for c in &mut clients {
        let e = match c.query("select 2") {
            Ok(Reply::Error(code, msg)) => format!("{code} {msg}"),
            Ok(Reply::Done(_)) => bail!("a session kept running across an upstream restart"),
            Err(_) => "closed".to_string(),
        };
        errors.push(e);
    }
    for c in clients {
        c.close();
    }
    wait_ended(&g, 8, BOUND)?;
    let took = started.elapsed();
    // New sessions work again.
    let mut c = client(&g)?;
    if !matches!(c.query("select 3")?, Reply::Done(_)) {
        bail!("no new session after the upstream came back");
    }
    c.close();
    Ok(format!(
        "8 sessions ended ({}), recorded within {:.1} s of the restart; new sessions work",
        errors.first().cloned().unwrap_or_default(),
        took.as_secs_f64()
    ))
}

fn backend_pids(b: &Bench) -> Result<Vec<String>> {
    let out = b.sql(&format!(
        "SELECT pid FROM pg_stat_activity WHERE usename = '{ROLE}' AND datname = '{DB}'"
    ))?;
    Ok(out
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

fn upstream_stall(b: &Bench) -> Result<String> {
    let g = b.gateway("", None)?;
    // (1) One session's backend frozen mid-query; the client gives up.
    let mut c = client(&g)?;
    c.query("select 1")?;
    let pids = backend_pids(b)?;
    let [pid] = pids.as_slice() else {
        bail!("expected one backend, found {pids:?}");
    };
    signal(pid, "STOP")?;
    let result = (|| -> Result<Duration> {
        c.send_query("select 2")?;
        thread::sleep(Duration::from_secs(2));
        c.close();
        wait_ended(&g, 1, BOUND)
    })();
    signal(pid, "CONT")?;
    let ended_in = result.context("a session whose upstream stalled did not end")?;

    // (2) The whole server frozen: a new session gets a clear error in time.
    let postmaster = {
        let pg = b.pg.lock().map_err(|_| anyhow!("lock"))?;
        fs::read_to_string(pg.data_dir.join("postmaster.pid"))?
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    signal(&postmaster, "STOP")?;
    let started = Instant::now();
    let attempt = client(&g);
    let waited = started.elapsed();
    signal(&postmaster, "CONT")?;
    let message = match attempt {
        Ok(_) => bail!("a session opened while the upstream was frozen"),
        Err(e) => format!("{e:#}"),
    };
    if waited > BOUND {
        bail!("the refusal took {waited:?}");
    }
    Ok(format!(
        "stalled backend: session ended {:.1} s after its client left; frozen server: refused in {:.1} s ({})",
        ended_in.as_secs_f64(),
        waited.as_secs_f64(),
        message.lines().last().unwrap_or_default()
    ))
}

fn half_open(b: &Bench) -> Result<String> {
    // An upstream that accepts and never says a word.
    let silent = TcpListener::bind("127.0.0.1:0")?;
    let silent_port = silent.local_addr()?.port();
    let held = Arc::new(Mutex::new(Vec::new()));
    {
        let held = held.clone();
        thread::spawn(move || {
            for s in silent.incoming().flatten() {
                if let Ok(mut h) = held.lock() {
                    h.push(s);
                }
            }
        });
    }
    let extra = format!(
        "\n[[connections]]\nname = \"silent\"\nkind = \"postgres\"\nupstream = \"127.0.0.1:{silent_port}\"\n\
         database = \"x\"\nuser = \"x\"\npassword = {{ env = \"BENCH_DB_PASSWORD\" }}\nallow_groups = [\"bench\"]\n"
    );
    let g = b.gateway(&extra, None)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], g.port));
    let mut lines = Vec::new();

    // A client that connects and sends nothing, and one that stops after startup.
    for (what, bytes) in [
        ("silent client", Vec::new()),
        ("client stopped before its password", {
            let mut body = 196608i32.to_be_bytes().to_vec();
            body.extend_from_slice(b"user\0bench\0database\0bench\0\0");
            let mut m = ((body.len() + 4) as i32).to_be_bytes().to_vec();
            m.extend_from_slice(&body);
            m
        }),
    ] {
        let mut s = TcpStream::connect(addr)?;
        std::io::Write::write_all(&mut s, &bytes)?;
        s.set_read_timeout(Some(BOUND))?;
        let started = Instant::now();
        let mut buf = [0u8; 1024];
        loop {
            match std::io::Read::read(&mut s, &mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    bail!("{what}: still connected after {BOUND:?}")
                }
                Err(_) => break,
            }
        }
        lines.push(format!(
            "{what} dropped after {:.1} s",
            started.elapsed().as_secs_f64()
        ));
    }

    // A client that half-closes mid-session.
    let c = client(&g)?;
    c.shutdown_write();
    let took = wait_ended(&g, 1, BOUND).context("a half-closed client's session did not end")?;
    lines.push(format!(
        "half-closed client's session ended in {:.1} s",
        took.as_secs_f64()
    ));

    // A connection whose upstream never answers.
    let started = Instant::now();
    match PgClient::connect(
        addr,
        ROLE,
        "silent",
        &g.token,
        BOUND + Duration::from_secs(5),
    ) {
        Ok(_) => bail!("a session opened against a silent upstream"),
        Err(e) => {
            let waited = started.elapsed();
            if waited > BOUND {
                bail!("the silent upstream's refusal took {waited:?}");
            }
            lines.push(format!(
                "silent upstream refused in {:.1} s ({})",
                waited.as_secs_f64(),
                format!("{e:#}").lines().last().unwrap_or_default()
            ));
        }
    }
    drop(held);
    Ok(lines.join("; "))
}

pub(crate) fn faults(args: &[String]) -> Result<()> {
    let mut only: Vec<String> = Vec::new();
    let mut sluice_bin = None;
    let mut debug = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--scenario" => only.push(it.next().cloned().ok_or_else(|| anyhow!("--scenario needs a value"))?),
            "--sluice-bin" => sluice_bin = it.next().map(std::path::PathBuf::from),
            "--debug" => debug = true,
            other => bail!(
                "unknown option `{other}`\nusage: cargo xtask faults [--scenario {}]... [--sluice-bin PATH] [--debug]",
                SCENARIOS.iter().map(|s| s.0).collect::<Vec<_>>().join("|")
            ),
        }
    }
    for s in &only {
        if !SCENARIOS.iter().any(|(n, _)| n == s) {
            bail!("unknown scenario `{s}`");
        }
    }
    let bin = gateway_bin(&sluice_bin, debug)?;
    let (pg, password) = start_postgres(200)?;
    let bench = Bench {
        bin,
        pg: Mutex::new(pg),
        password,
    };
    let mut results = Vec::new();
    for (name, scenario) in SCENARIOS {
        if !only.is_empty() && !only.iter().any(|s| s == name) {
            continue;
        }
        eprintln!("faults: {name} ...");
        let started = Instant::now();
        let r = scenario(&bench);
        eprintln!(
            "faults: {name} done in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        results.push((*name, r));
    }
    println!();
    let mut failed = 0;
    for (name, r) in &results {
        match r {
            Ok(detail) => println!("PASS {name:<17} {detail}"),
            Err(e) => {
                failed += 1;
                println!("FAIL {name:<17} {e:#}");
            }
        }
    }
    println!("{} passed, {} failed", results.len() - failed, failed);
    if failed > 0 {
        bail!("{failed} fault scenario(s) failed");
    }
    Ok(())
}
