//! `cargo xtask bench`: pgbench `-S` (read-only point selects) against PostgreSQL directly,
//! through PgBouncer and through Sluice, in one run, printed side by side.

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use sluice_sandbox::{
    chown_to, command_as, free_port, random_hex, wait_for_port, PgBinaries, TempPostgres,
    TempPostgresOptions,
};

use crate::{command_exists, describe, run_inherit, workspace_root};

mod http;
pub(crate) mod ssh;

const USAGE: &str = "usage: cargo xtask bench [--seconds N] [--clients 1,4,16] \
                     [--modes simple,extended,prepared] [--sslmode MODE] [--sluice-bin PATH] \
                     [--only pg|http|ssh] [--http-connections 16,64] [--http-rate N] \
                     [--ssh-mib N]";
const SCALE: u32 = 10;
pub(crate) const DB: &str = "bench";
pub(crate) const ROLE: &str = "bench";

struct Options {
    seconds: u32,
    clients: Vec<u32>,
    modes: Vec<String>,
    /// Passed to every pgbench as PGSSLMODE; unset = libpq's default (`prefer`).
    sslmode: Option<String>,
    /// A prebuilt gateway binary; default: build `target/release/sluice`.
    sluice_bin: Option<PathBuf>,
    /// Run only the PostgreSQL (`pg`) or the HTTP (`http`) section.
    only: Option<String>,
    /// The HTTP section's connection counts and fixed request rate.
    http: http::Options,
    /// Size of the file the SSH section copies with scp (MiB).
    ssh_mib: u64,
}

fn parse_options(args: &[String]) -> Result<Options> {
    let mut opts = Options {
        seconds: 10,
        // Issue 15 names its targets at -c 4 and -c 16; -c 1 gives the added latency.
        clients: vec![1, 4, 16],
        modes: ["simple", "extended", "prepared"]
            .map(String::from)
            .to_vec(),
        // Every leg in plaintext by default: the bench PostgreSQL and PgBouncer
        // have no TLS, and the gateway would otherwise negotiate it.
        sslmode: Some("disable".to_string()),
        sluice_bin: None,
        only: None,
        http: http::Options::default(),
        ssh_mib: 1024,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        if matches!(key, "-h" | "--help") {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let mut value = || -> Result<String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| anyhow!("{key} needs a value\n{USAGE}"))
        };
        match key {
            "--seconds" => {
                opts.seconds = value()?.parse().context("--seconds: not a number")?;
            }
            "--clients" => {
                opts.clients = value()?
                    .split(',')
                    .map(|c| c.trim().parse::<u32>())
                    .collect::<Result<_, _>>()
                    .context("--clients: expected numbers like 1,4")?;
            }
            "--modes" => {
                opts.modes = value()?.split(',').map(|m| m.trim().to_string()).collect();
                if let Some(bad) = opts
                    .modes
                    .iter()
                    .find(|m| !["simple", "extended", "prepared"].contains(&m.as_str()))
                {
                    bail!("--modes: unknown mode `{bad}` (simple, extended, prepared)");
                }
            }
            "--sslmode" => opts.sslmode = Some(value()?),
            // Absolute: the services are started from other directories.
            "--sluice-bin" => {
                let bin = PathBuf::from(value()?);
                opts.sluice_bin = Some(
                    bin.canonicalize()
                        .with_context(|| format!("--sluice-bin: {}", bin.display()))?,
                );
            }
            "--only" => {
                let only = value()?;
                if !["pg", "http", "ssh"].contains(&only.as_str()) {
                    bail!("--only: `{only}` is not pg, http or ssh");
                }
                opts.only = Some(only);
            }
            "--http-connections" => {
                opts.http.connections = value()?
                    .split(',')
                    .map(|n| n.trim().parse::<u32>().ok().filter(|n| *n > 0))
                    .collect::<Option<Vec<_>>>()
                    .filter(|list| !list.is_empty())
                    .context("--http-connections: a list of positive numbers")?;
            }
            "--http-rate" => {
                opts.http.rate = value()?
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .context("--http-rate: a positive number of requests per second")?;
            }
            "--ssh-mib" => {
                opts.ssh_mib = value()?.parse().context("--ssh-mib: not a number")?;
            }
            other => bail!("unknown option `{other}`\n{USAGE}"),
        }
    }
    if opts.seconds == 0 || opts.clients.is_empty() || opts.modes.is_empty() {
        bail!("nothing to run\n{USAGE}");
    }
    Ok(opts)
}

/// A server pgbench can be pointed at.
struct Target {
    name: &'static str,
    port: u16,
    user: String,
    password: String,
    /// The proxy process whose CPU is measured (none for the direct leg).
    pid: Option<u32>,
}

#[derive(Clone, Copy)]
struct Sample {
    tps: f64,
    latency_ms: f64,
    /// The median transaction latency from pgbench's per-transaction log
    /// (kept at `-c 1` only), in µs.
    p50_us: Option<f64>,
    /// The proxy's CPU (user + system) per statement, in µs.
    cpu_us: Option<f64>,
}

/// `/proc/<which>/stat`'s fields after the command name (which may hold
/// spaces): `[0]` is the state, `[1]` the parent pid, `[11]` and `[12]` utime
/// and stime, `[13]` and `[14]` cutime and cstime (in clock ticks).
fn proc_stat(which: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{which}/stat")).ok()?;
    Some(
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .map(String::from)
            .collect(),
    )
}

/// The clock-tick fields `at` and `at + 1` of a process's stat, summed, in seconds.
fn stat_seconds(which: &str, at: usize) -> Option<f64> {
    seconds_in(&proc_stat(which)?, at)
}

/// The clock-tick fields `at` and `at + 1` of stat `fields`, summed, in seconds.
fn seconds_in(fields: &[String], at: usize) -> Option<f64> {
    let ticks: f64 =
        fields.get(at)?.parse::<f64>().ok()? + fields.get(at + 1)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

/// A process's CPU time so far (user + system: utime and stime).
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    stat_seconds(&pid.to_string(), 11)
}

/// The CPU time (user + system) of this process's children that have been
/// waited for, theirs included: a client run with `output()` adds its own.
pub(crate) fn waited_children_cpu_seconds() -> Option<f64> {
    stat_seconds("self", 13)
}

/// The CPU time of a process and of its direct children (nginx's workers).
pub(crate) fn tree_cpu_seconds(pid: u32) -> Option<f64> {
    let mut total = cpu_seconds(pid)?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(fields) = proc_stat(&child.to_string()) else {
            continue;
        };
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            total += seconds_in(&fields, 11).unwrap_or(0.0);
        }
    }
    Some(total)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux when unknown).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

pub(crate) fn bench(args: &[String]) -> Result<()> {
    let opts = parse_options(args)?;

    // Build the gateway first so a build failure is reported early (the bench goes on without).
    let sluice_bin = match &opts.sluice_bin {
        Some(bin) => Some(bin.clone()),
        None => match run_inherit(crate::cargo().args(["build", "--release", "-p", "sluice"])) {
            Ok(()) => Some(target_dir().join("release").join("sluice")),
            Err(err) => {
                eprintln!("bench: cannot build sluice ({err:#}); continuing without it");
                None
            }
        },
    };

    // A Ctrl-C during the build ends the bench here, and one during the
    // last step of a section still makes it fail.
    crate::interrupt::check()?;
    if opts.only.as_deref() == Some("http") {
        let measured = http::bench_http(sluice_bin.as_deref(), opts.seconds, &opts.http);
        crate::interrupt::check()?;
        return measured;
    }
    if opts.only.as_deref() == Some("ssh") {
        let measured = ssh::bench(sluice_bin.as_deref(), opts.ssh_mib);
        crate::interrupt::check()?;
        return measured;
    }
    eprintln!("bench: starting PostgreSQL and loading pgbench data (scale {SCALE})");
    let pg = TempPostgres::start(TempPostgresOptions::default())?;
    let bins = pg.binaries().clone();
    let password = random_hex(16)?;
    pg.psql(
        "postgres",
        &format!(
            "CREATE ROLE {ROLE} LOGIN PASSWORD '{password}';\n\
             CREATE DATABASE {DB} OWNER {ROLE};\n"
        ),
    )?;
    let mut init = Command::new(bins.tool("pgbench"));
    init.args(["-i", "-q", "-s", &SCALE.to_string()])
        .args(["-h", "127.0.0.1", "-p", &pg.port.to_string()])
        .args(["-U", &pg.superuser, DB]);
    pg_env(&mut init, &pg.superuser_password, None);
    let out = init.output().context("running pgbench -i")?;
    if !out.status.success() {
        bail!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    pg.psql(
        DB,
        &[
            "pgbench_accounts",
            "pgbench_branches",
            "pgbench_tellers",
            "pgbench_history",
        ]
        .map(|t| format!("ALTER TABLE {t} OWNER TO {ROLE};\n"))
        .concat(),
    )?;
    let version = pg.psql("postgres", "SHOW server_version")?;

    let mut targets = vec![Target {
        name: "direct",
        port: pg.port,
        user: ROLE.to_string(),
        password: password.clone(),
        pid: None,
    }];

    let pgbouncer = match start_pgbouncer(&pg, &password) {
        Ok(bouncer) => {
            targets.push(Target {
                name: "pgbouncer",
                port: bouncer.port,
                user: ROLE.to_string(),
                password: password.clone(),
                pid: bouncer._daemon.server_pid(),
            });
            Some(bouncer)
        }
        Err(err) => {
            eprintln!("bench: PgBouncer unavailable: {err:#}");
            None
        }
    };

    let sluice = measured(&mut targets, "sluice", sluice_bin.as_deref(), |bin| {
        start_sluice(bin, &pg, &password, "")
    });
    // The same gateway with 20 SQL rules in force: decision caching keeps
    // prepared statements from being parsed again per execution.
    let sluice_rules = measured(&mut targets, "sluice+rules", sluice_bin.as_deref(), |bin| {
        start_sluice(bin, &pg, &password, &twenty_rules())
    });
    // The gateway on a shared PostgreSQL store (issue: >= 0.8x the embedded store's TPS).
    let sluice_shared = measured(
        &mut targets,
        "sluice+pgstore",
        sluice_bin.as_deref(),
        |bin| start_sluice_shared(bin, &pg, &password),
    );

    // A third gateway with masking on, for the wide-result comparison.
    pg.psql(DB, MASKING_TABLE)?;
    let sluice_masking = match &sluice_bin {
        Some(bin) => match start_sluice(bin, &pg, &password, MASKING_CONFIG) {
            Ok(gateway) => Some(gateway),
            Err(err) => {
                eprintln!("bench: Sluice with masking unavailable: {err:#}");
                None
            }
        },
        None => None,
    };

    let work = ScratchDir::new("sluice-bench-runs", None)?;
    let mut results: HashMap<(String, u32, &'static str), Sample> = HashMap::new();
    for mode in &opts.modes {
        for &clients in &opts.clients {
            for target in &targets {
                crate::interrupt::check()?;
                eprint!(
                    "bench: {:<9} -M {mode:<8} -c {clients:<2} ... ",
                    target.name
                );
                let cpu_before = target.pid.and_then(cpu_seconds);
                match pgbench(&bins, target, mode, clients, &opts, work.path()) {
                    Ok(mut sample) => {
                        let statements = sample.tps * opts.seconds as f64;
                        sample.cpu_us = match (cpu_before, target.pid.and_then(cpu_seconds)) {
                            (Some(a), Some(b)) if statements > 0.0 => {
                                Some((b - a) * 1e6 / statements)
                            }
                            _ => None,
                        };
                        eprintln!(
                            "{:>10.0} tps, {:.3} ms average latency{}{}",
                            sample.tps,
                            sample.latency_ms,
                            sample
                                .p50_us
                                .map_or(String::new(), |p| format!(", p50 {p:.0} µs")),
                            sample
                                .cpu_us
                                .map_or(String::new(), |c| format!(", {c:.1} µs CPU/stmt"))
                        );
                        results.insert((mode.clone(), clients, target.name), sample);
                    }
                    Err(err) => eprintln!("failed: {err:#}"),
                }
            }
        }
    }

    println!();
    println!(
        "pgbench -n -S -T {} (scale {SCALE}), PostgreSQL {}, {} CPU(s){}",
        opts.seconds,
        version.trim(),
        thread::available_parallelism().map_or(0, |n| n.get()),
        opts.sslmode
            .as_deref()
            .map(|m| format!(", PGSSLMODE={m}"))
            .unwrap_or_default()
    );
    print_table(&opts, &results);
    if pgbouncer.is_none() || sluice.is_none() {
        println!("(- = not measured; see the messages above)");
    }
    println!();
    if let (Some(plain), Some(masked)) = (&sluice, &sluice_masking) {
        let script = work.path().join("wide-select.sql");
        fs::write(&script, "SELECT * FROM customers_bench;\n")?;
        let script = script.to_string_lossy().to_string();
        let mut line = Vec::new();
        for (name, g) in [("sluice", plain), ("sluice+masking", masked)] {
            crate::interrupt::check()?;
            let target = Target {
                name: if name == "sluice" {
                    "wide"
                } else {
                    "wide-masked"
                },
                port: g.port,
                user: ROLE.to_string(),
                password: g.token.clone(),
                pid: Some(g.pid()),
            };
            match pgbench_workload(
                &bins,
                &target,
                "simple",
                1,
                &opts,
                work.path(),
                &["-f", &script],
            ) {
                Ok(s) => line.push((name, s.tps)),
                Err(e) => eprintln!("bench: wide select through {name} failed: {e:#}"),
            }
        }
        if let [(_, plain_tps), (_, masked_tps)] = line[..] {
            println!(
                "10,000-row SELECT (-c 1): without masking {plain_tps:.1}/s, with masking {masked_tps:.1}/s, ratio {:.2} ({:.0} vs {:.0} rows/s)",
                masked_tps / plain_tps,
                plain_tps * 10_000.0,
                masked_tps * 10_000.0
            );
        }
    }
    println!();
    crate::interrupt::check()?;
    run_example_bench("sluice-postgres", "classify_bench");
    crate::interrupt::check()?;
    run_example_bench("sluice-core", "mask_bench");
    crate::interrupt::check()?;
    run_example_bench("sluice-store", "index_bench");
    drop(sluice_masking);
    drop(sluice_shared);
    drop(sluice_rules);
    drop(sluice);
    drop(pgbouncer);
    if opts.only.is_none() {
        crate::interrupt::check()?;
        if let Err(e) = http::bench_http(sluice_bin.as_deref(), opts.seconds, &opts.http) {
            eprintln!("bench: the HTTP section failed: {e:#}");
        }
        crate::interrupt::check()?;
        if let Err(e) = ssh::bench(sluice_bin.as_deref(), opts.ssh_mib) {
            eprintln!("bench: the SSH section failed: {e:#}");
        }
    }
    crate::interrupt::check()
}

fn print_table(opts: &Options, results: &HashMap<(String, u32, &'static str), Sample>) {
    let header = [
        "mode",
        "clients",
        "direct tps",
        "pgbouncer tps",
        "sluice tps",
        "sluice/direct",
        "sluice/pgbouncer",
        "direct ms",
        "pgbouncer ms",
        "sluice ms",
        "sluice added p50 µs (c=1)",
        "+20 rules tps",
        "rules/no rules",
        "pgbouncer CPU µs/stmt",
        "sluice CPU µs/stmt",
        "+rules CPU µs/stmt",
        "sluice/pgbouncer CPU",
        "pgstore tps",
        "pgstore/embedded",
        "pgstore CPU µs/stmt",
    ];
    let mut rows = vec![header.map(String::from).to_vec()];
    for mode in &opts.modes {
        for &clients in &opts.clients {
            let get = |name| results.get(&(mode.clone(), clients, name)).copied();
            let (direct, bouncer, sluice) = (get("direct"), get("pgbouncer"), get("sluice"));
            let with_rules = get("sluice+rules");
            let shared = get("sluice+pgstore");
            let tps = |s: Option<Sample>| s.map_or("-".into(), |s| format!("{:.0}", s.tps));
            let lat = |s: Option<Sample>| s.map_or("-".into(), |s| format!("{:.3}", s.latency_ms));
            let ratio = |a: Option<Sample>, b: Option<Sample>| match (a, b) {
                (Some(a), Some(b)) if b.tps > 0.0 => format!("{:.2}", a.tps / b.tps),
                _ => "-".into(),
            };
            let cpu = |s: Option<Sample>| {
                s.and_then(|s| s.cpu_us)
                    .map_or("-".into(), |c| format!("{c:.1}"))
            };
            let added = match (clients, sluice, direct) {
                (
                    1,
                    Some(Sample {
                        p50_us: Some(s), ..
                    }),
                    Some(Sample {
                        p50_us: Some(d), ..
                    }),
                ) => {
                    format!("{:.0}", s - d)
                }
                _ => "-".into(),
            };
            rows.push(vec![
                mode.clone(),
                clients.to_string(),
                tps(direct),
                tps(bouncer),
                tps(sluice),
                ratio(sluice, direct),
                ratio(sluice, bouncer),
                lat(direct),
                lat(bouncer),
                lat(sluice),
                added,
                tps(with_rules),
                ratio(with_rules, sluice),
                cpu(bouncer),
                cpu(sluice),
                cpu(with_rules),
                match (
                    sluice.and_then(|s| s.cpu_us),
                    bouncer.and_then(|s| s.cpu_us),
                ) {
                    (Some(s), Some(b)) if b > 0.0 => format!("{:.2}", s / b),
                    _ => "-".into(),
                },
                tps(shared),
                ratio(shared, sluice),
                cpu(shared),
            ]);
        }
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for (n, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, &w))| {
                if i < 2 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        println!("{}", cells.join("  ").trim_end());
        if n == 0 {
            let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
            println!("{}", rule.join("  "));
        }
    }
}

/// Sets the libpq environment for a client run: only what we pass counts.
pub(crate) fn pg_env(cmd: &mut Command, password: &str, sslmode: Option<&str>) {
    for var in [
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGSERVICE",
        "PGOPTIONS",
        "PGSSLMODE",
        "PGPASSFILE",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10");
    if let Some(mode) = sslmode {
        cmd.env("PGSSLMODE", mode);
    }
}

fn pgbench(
    bins: &PgBinaries,
    target: &Target,
    mode: &str,
    clients: u32,
    opts: &Options,
    work: &Path,
) -> Result<Sample> {
    pgbench_workload(bins, target, mode, clients, opts, work, &["-S"])
}

/// pgbench with `workload` arguments (`-S`, or `-f SCRIPT`).
fn pgbench_workload(
    bins: &PgBinaries,
    target: &Target,
    mode: &str,
    clients: u32,
    opts: &Options,
    work: &Path,
    workload: &[&str],
) -> Result<Sample> {
    let stem = format!("{}-{mode}-{clients}-{}", target.name, workload.len());
    let stdout_path = work.join(format!("{stem}.out"));
    let stderr_path = work.join(format!("{stem}.err"));
    let log_prefix = work.join(format!("{stem}-log"));
    let mut cmd = Command::new(bins.tool("pgbench"));
    if clients == 1 {
        // Per-transaction latencies, for the median the added latency is judged by.
        cmd.arg("-l")
            .arg(format!("--log-prefix={}", log_prefix.display()));
    }
    cmd.arg("-n")
        .args(workload)
        .args(["-T", &opts.seconds.to_string(), "-M", mode])
        .args(["-c", &clients.to_string(), "-j", &clients.to_string()])
        .args(["-h", "127.0.0.1", "-p", &target.port.to_string()])
        .args(["-U", &target.user, DB])
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout_path)?)
        .stderr(fs::File::create(&stderr_path)?);
    pg_env(&mut cmd, &target.password, opts.sslmode.as_deref());
    let mut child = cmd.spawn().context("running pgbench")?;
    // A stalled server would keep pgbench waiting past -T: give up a minute later.
    let deadline = Instant::now() + Duration::from_secs(u64::from(opts.seconds) + 60);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("pgbench did not finish in time");
        }
        thread::sleep(Duration::from_millis(100));
    };
    let stdout = fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
    if !status.success() {
        bail!("{status}: {}", tail(&stderr, 5));
    }
    let mut sample = parse_pgbench(&stdout)
        .ok_or_else(|| anyhow!("unexpected pgbench output:\n{stdout}{stderr}"))?;
    if clients == 1 {
        sample.p50_us = Some(median_logged_latency(&log_prefix)?);
    }
    Ok(sample)
}

/// The median of the latencies (third field, µs) in pgbench's transaction
/// logs `PREFIX.PID[.THREAD]`, which are removed once read.
fn median_logged_latency(prefix: &Path) -> Result<f64> {
    let dir = prefix.parent().context("log prefix has no directory")?;
    let name = prefix
        .file_name()
        .and_then(|n| n.to_str())
        .context("log prefix is not UTF-8")?;
    let mut latencies = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let is_log = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&format!("{name}.")));
        if !is_log {
            continue;
        }
        latencies.extend(parse_transaction_log(&fs::read_to_string(&path)?));
        fs::remove_file(&path)?;
    }
    median(&mut latencies).context("pgbench logged no transactions")
}

fn parse_transaction_log(log: &str) -> impl Iterator<Item = f64> + '_ {
    log.lines()
        .filter_map(|line| line.split_whitespace().nth(2)?.parse::<f64>().ok())
}

pub(crate) fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

fn parse_pgbench(stdout: &str) -> Option<Sample> {
    let value = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    Some(Sample {
        tps: value("tps = ")?,
        latency_ms: value("latency average = ")?,
        p50_us: None,
        cpu_us: None,
    })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(crate) fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A directory under the system temp dir, owned by `user` if given, removed on drop.
pub(crate) struct ScratchDir(PathBuf);

impl ScratchDir {
    pub(crate) fn new(prefix: &str, user: Option<&str>) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", random_hex(6)?));
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        let dir = Self(path);
        chown_to(user, dir.path())?;
        Ok(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A background server process, stopped on drop.
impl Daemon {
    /// The server's pid: from its pid file when started through `runuser`.
    pub(crate) fn server_pid(&self) -> Option<u32> {
        match &self.pidfile {
            Some(path) => std::fs::read_to_string(path).ok()?.trim().parse().ok(),
            None => Some(self.child.id()),
        }
    }
}

pub(crate) struct Daemon {
    pub(crate) child: Child,
    /// For servers started through `runuser`: the server's own pid file.
    pidfile: Option<PathBuf>,
    /// The signal that stops the server and its workers gracefully (nginx:
    /// `QUIT`); without one the child is killed outright.
    stop_signal: Option<&'static str>,
}

impl Daemon {
    /// Waits until `addr` accepts connections; fails early if the process exits.
    fn wait_ready(&mut self, addr: SocketAddr, timeout: Duration, log: &Path) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                let output = tail(&fs::read_to_string(log).unwrap_or_default(), 20);
                if output.is_empty() {
                    bail!("exited ({status}) without output");
                }
                bail!("exited ({status}):\n{output}");
            }
            if wait_for_port(addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "not listening on {addr} after {timeout:?}:\n{}",
                    tail(&fs::read_to_string(log).unwrap_or_default(), 20)
                );
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(signal) = self.stop_signal {
            // Killing nginx's master outright leaves its workers running.
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &self.child.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        if let Some(pid) = self
            .pidfile
            .as_ref()
            .and_then(|p| fs::read_to_string(p).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()))
        {
            let _ = Command::new("kill")
                .args(["-TERM", &pid])
                .stderr(Stdio::null())
                .status();
        }
        // Let `runuser` reap the server it started before killing it outright.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.pidfile.is_some() && Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct PgBouncer {
    port: u16,
    _daemon: Daemon,
    _dir: ScratchDir,
}

fn find_pgbouncer() -> Option<PathBuf> {
    if command_exists("pgbouncer") {
        return Some(PathBuf::from("pgbouncer"));
    }
    ["/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// PgBouncer in session mode in front of `pg`, as the same unprivileged user when root.
fn start_pgbouncer(pg: &TempPostgres, password: &str) -> Result<PgBouncer> {
    let program = find_pgbouncer().ok_or_else(|| {
        anyhow!("pgbouncer not installed (apt-get install pgbouncer, or cargo xtask setup)")
    })?;
    let user = pg.os_user();
    let dir = ScratchDir::new("sluice-bench-pgbouncer", None)?;
    let port = free_port();
    let ini = dir.path().join("pgbouncer.ini");
    let userlist = dir.path().join("userlist.txt");
    let log = dir.path().join("pgbouncer.log");
    let pidfile = dir.path().join("pgbouncer.pid");
    fs::write(
        &ini,
        format!(
            "[databases]\n\
             {DB} = host=127.0.0.1 port={pgport} dbname={DB}\n\
             \n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = scram-sha-256\n\
             auth_file = {userlist}\n\
             pool_mode = session\n\
             max_client_conn = 100\n\
             default_pool_size = 20\n\
             ignore_startup_parameters = extra_float_digits\n\
             logfile = {log}\n\
             pidfile = {pidfile}\n",
            pgport = pg.port,
            userlist = userlist.display(),
            log = log.display(),
            pidfile = pidfile.display(),
        ),
    )?;
    // PgBouncer accepts plain-text passwords in the auth file for scram-sha-256.
    fs::write(&userlist, format!("\"{ROLE}\" \"{password}\"\n"))?;
    fs::set_permissions(&userlist, fs::Permissions::from_mode(0o600))?;
    chown_to(user, dir.path())?;
    let stderr = dir.path().join("stderr.txt");
    let mut cmd = command_as(user, &program);
    cmd.arg(&ini)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&stderr)?);
    let child = cmd
        .spawn()
        .with_context(|| format!("running {}", describe(&cmd)))?;
    let mut daemon = Daemon {
        child,
        pidfile: Some(pidfile),
        stop_signal: None,
    };
    daemon
        .wait_ready(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(15),
            &stderr,
        )
        .context("pgbouncer")?;
    eprintln!("bench: PgBouncer listening on 127.0.0.1:{port}");
    Ok(PgBouncer {
        port,
        _daemon: daemon,
        _dir: dir,
    })
}

pub(crate) struct Sluice {
    pub(crate) port: u16,
    pub(crate) token: String,
    pub(crate) daemon: Daemon,
    pub(crate) bin: PathBuf,
    pub(crate) config: PathBuf,
    pub(crate) state: PathBuf,
    password: String,
    pub(crate) dir: ScratchDir,
}

/// Starts a gateway with `start` (when there is a binary) and adds it to
/// the measured `targets` as `name`; a gateway that does not start is
/// reported and left out.
fn measured(
    targets: &mut Vec<Target>,
    name: &'static str,
    bin: Option<&Path>,
    start: impl FnOnce(&Path) -> Result<Sluice>,
) -> Option<Sluice> {
    match start(bin?) {
        Ok(gateway) => {
            targets.push(Target {
                name,
                port: gateway.port,
                user: ROLE.to_string(),
                password: gateway.token.clone(),
                pid: Some(gateway.pid()),
            });
            Some(gateway)
        }
        Err(err) => {
            eprintln!("bench: {name} unavailable: {err:#}");
            None
        }
    }
}

/// The gateway in front of `pg`, with one connection `bench` and a token for subject `bench`.
fn start_sluice(bin: &Path, pg: &TempPostgres, password: &str, rules: &str) -> Result<Sluice> {
    start_sluice_in(bin, pg, password, rules, None)
}

/// Like `start_sluice`, with the state directory at `state` (default: in the scratch dir).
pub(crate) fn start_sluice_in(
    bin: &Path,
    pg: &TempPostgres,
    password: &str,
    rules: &str,
    state: Option<&Path>,
) -> Result<Sluice> {
    start_sluice_on(bin, pg, password, rules, state, None)
}

/// The gateway as node `bench` of a shared PostgreSQL store: database
/// `sluice_store` on `pg` itself (the same two cores), as its superuser.
fn start_sluice_shared(bin: &Path, pg: &TempPostgres, password: &str) -> Result<Sluice> {
    pg.psql("postgres", "CREATE DATABASE sluice_store")?;
    let store = format!(
        "store = \"postgres://{}@127.0.0.1:{}/sluice_store\"\n\
         store_password = {{ env = \"BENCH_STORE_PASSWORD\" }}\n\
         node = \"bench\"\n",
        pg.superuser, pg.port
    );
    start_sluice_on(
        bin,
        pg,
        password,
        "",
        None,
        Some((&store, &pg.superuser_password)),
    )
}

/// `start_sluice_in`, with `[gateway]` lines for a shared store and its password.
fn start_sluice_on(
    bin: &Path,
    pg: &TempPostgres,
    password: &str,
    rules: &str,
    state: Option<&Path>,
    shared: Option<(&str, &str)>,
) -> Result<Sluice> {
    let dir = ScratchDir::new("sluice-bench-gateway", None)?;
    let port = free_port();
    let config = dir.path().join("sluice.toml");
    let state = state
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.path().join("state"));
    fs::write(
        &config,
        format!(
            "[gateway]\n\
             state_dir = {state}\n\
             {store}\n\
             [listen]\n\
             postgres = \"127.0.0.1:{port}\"\n\
             \n\
             [[connections]]\n\
             name = \"{DB}\"\n\
             kind = \"postgres\"\n\
             upstream = \"127.0.0.1:{pgport}\"\n\
             database = \"{DB}\"\n\
             user = \"{ROLE}\"\n\
             password = {{ env = \"BENCH_DB_PASSWORD\" }}\n\
             allow_groups = [\"bench\"]\n\
             {rules}",
            state = toml_str(&state.to_string_lossy()),
            pgport = pg.port,
            store = shared.map_or("", |(toml, _)| toml),
        ),
    )?;
    let mut env = vec![("BENCH_DB_PASSWORD", password)];
    if let Some((_, store_password)) = shared {
        env.push(("BENCH_STORE_PASSWORD", store_password));
    }
    let daemon = spawn_gateway(bin, &config, &env, dir.path(), port)?;
    let mut issue = Command::new(bin);
    issue
        .args(["token", "issue", "--config"])
        .arg(&config)
        .args(["--subject", ROLE, "--groups", "bench", "--ttl", "1h"])
        .envs(env.iter().copied())
        .current_dir(dir.path())
        .stdin(Stdio::null());
    let out = issue.output().context("running sluice token issue")?;
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || token.is_empty() {
        bail!(
            "sluice token issue failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    eprintln!("bench: Sluice listening on 127.0.0.1:{port}");
    Ok(Sluice {
        port,
        token,
        daemon,
        bin: bin.to_path_buf(),
        config,
        state,
        password: password.to_string(),
        dir,
    })
}

/// `sluice serve` with `config`, logging to `dir/sluice.log` (appended), ready on `port`.
/// Runs `sluice serve` on `config` in `dir` with `env`, logging to
/// `dir/sluice.log`, and waits until it listens on `port`.
pub(crate) fn spawn_gateway(
    bin: &Path,
    config: &Path,
    env: &[(&str, &str)],
    dir: &Path,
    port: u16,
) -> Result<Daemon> {
    let log = dir.join("sluice.log");
    let log_file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    // The gateway runs in `dir`: a relative binary path must not depend on it.
    let bin = bin
        .canonicalize()
        .with_context(|| format!("the gateway binary {}", bin.display()))?;
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    let child = cmd
        .spawn()
        .with_context(|| format!("running {}", describe(&cmd)))?;
    let mut daemon = Daemon {
        child,
        pidfile: None,
        stop_signal: None,
    };
    daemon
        .wait_ready(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(30),
            &log,
        )
        .context("sluice serve")?;
    Ok(daemon)
}

impl Sluice {
    pub(crate) fn pid(&self) -> u32 {
        self.daemon.child.id()
    }

    /// Starts the gateway again on the same config, state and port (after a crash).
    pub(crate) fn restart(&mut self) -> Result<()> {
        let _ = self.daemon.child.kill();
        let _ = self.daemon.child.wait();
        self.daemon = spawn_gateway(
            &self.bin,
            &self.config,
            &[("BENCH_DB_PASSWORD", self.password.as_str())],
            self.dir.path(),
            self.port,
        )?;
        Ok(())
    }

    /// Runs a `sluice` CLI command on this gateway's config.
    pub(crate) fn cli(&self, args: &[&str]) -> Result<std::process::Output> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .arg("--config")
            .arg(&self.config)
            .env("BENCH_DB_PASSWORD", &self.password)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        cmd.output()
            .with_context(|| format!("running {}", describe(&cmd)))
    }
}

/// 10,000 customer-like rows: every row has an email, a card, an SSN and a phone.
const MASKING_TABLE: &str = "CREATE TABLE customers_bench AS
  SELECT g AS id, 'Customer ' || g AS name,
         'customer' || g || '@example.com' AS email,
         '4111 1111 1111 1111' AS card_number,
         lpad((100 + g % 500)::text, 3, '0') || '-' || lpad((10 + g % 89)::text, 2, '0') || '-' || lpad((1000 + g)::text, 4, '0') AS national_id,
         '+1 202-555-0' || lpad((100 + g % 99)::text, 3, '0') AS phone,
         'Ordered ' || g || ' items, shipped to warehouse ' || (g % 17) AS note
  FROM generate_series(1, 10000) g;
ALTER TABLE customers_bench OWNER TO bench;";

const MASKING_CONFIG: &str = "
[masking]
detectors = [\"default\"]
[masking.styles]
email = \"partial\"
[[masking.columns]]
name = \"national-ids\"
columns = [\"customers_bench.national_id\"]
style = \"null\"
";

/// Twenty rules of the kinds a deployment has; none matches pgbench's SELECT.
fn twenty_rules() -> String {
    let mut out = String::from("\n");
    let kinds = [
        r#"match = { sql = ["ddl"] }"#,
        r#"match = { sql = ["dcl"] }"#,
        r#"match = { sql = ["admin"] }"#,
        r#"match = { sql = ["write"], no_where = true }"#,
        r#"match = { sql = ["write"], tables = ["pgbench_branches"] }"#,
        r#"match = { functions = ["pg_read_*", "dblink*", "lo_*"] }"#,
        r#"match = { tables = ["*.secrets", "vault_*"] }"#,
        r#"match = { sql = ["write"], tables = ["audit.*"] }"#,
        r#"match = { sql = ["utility"], functions = ["set_config"] }"#,
        r#"match = { sql = ["write"], tables = ["payments", "invoices"] }"#,
    ];
    for n in 0..20 {
        out.push_str(&format!(
            "[[rules]]\nname = \"bench-rule-{n}\"\n{}\naction = \"deny\"\n\n",
            kinds[n % kinds.len()]
        ));
    }
    out
}

/// Runs a microbenchmark kept as a release example of a library crate (not
/// linked into xtask, so that xtask builds before `setup` installs libclang):
/// `sluice-postgres/classify_bench` (parse + classify per statement),
/// `sluice-core/mask_bench` (the default detectors' scan rate) and
/// `sluice-store/index_bench` (the embedded store's indexing per record).
fn run_example_bench(package: &str, example: &str) {
    let mut cmd = Command::new("cargo");
    cmd.args([
        "run",
        "--quiet",
        "--release",
        "-p",
        package,
        "--example",
        example,
    ])
    .current_dir(workspace_root());
    if let Err(e) = run_inherit(&mut cmd) {
        eprintln!("bench: {package} example {example} failed: {e:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pgbench_output() {
        let out = "transaction type: <builtin: select only>\n\
                   latency average = 0.081 ms\n\
                   initial connection time = 2.345 ms\n\
                   tps = 12345.678901 (without initial connection time)\n";
        let s = parse_pgbench(out).unwrap();
        assert!((s.tps - 12345.678901).abs() < 1e-6);
        assert!((s.latency_ms - 0.081).abs() < 1e-9);
        assert!(parse_pgbench("nothing").is_none());
    }

    #[test]
    fn proc_stat_fields_are_indexed_from_the_state() {
        let me = proc_stat("self").unwrap();
        assert_eq!(me[1], std::os::unix::process::parent_id().to_string());
        let pid = std::process::id();
        assert_eq!(proc_stat(&pid.to_string()).unwrap()[1], me[1]);
        let own = cpu_seconds(pid).unwrap();
        assert!(own >= 0.0 && tree_cpu_seconds(pid).unwrap() >= own);
        assert!(waited_children_cpu_seconds().unwrap() >= 0.0);
    }

    #[test]
    fn the_median_is_read_off_the_transaction_log() {
        // client_id transaction_no time(µs) script_no time_epoch time_us
        let log =
            "0 0 120 0 1700000000 1\n0 1 95 0 1700000000 2\n0 2 3000 0 1700000000 3\nbad line\n";
        let mut values: Vec<f64> = parse_transaction_log(log).collect();
        assert_eq!(values, [120.0, 95.0, 3000.0]);
        assert_eq!(median(&mut values), Some(120.0));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn parses_options() {
        let args: Vec<String> = ["--seconds", "3", "--clients=1,8", "--modes", "prepared"]
            .map(String::from)
            .to_vec();
        let o = parse_options(&args).unwrap();
        assert_eq!(o.seconds, 3);
        assert_eq!(o.clients, [1, 8]);
        assert_eq!(o.modes, ["prepared"]);
        assert!(parse_options(&["--modes".into(), "fast".into()]).is_err());
        assert!(parse_options(&["--bogus".into()]).is_err());
    }
}
