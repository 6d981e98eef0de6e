//! The HTTP section of `cargo xtask bench`: wrk against an upstream directly,
//! through Sluice and through an nginx reverse proxy (the peer), in one run.
//!
//! Every leg the client sees is HTTPS (Sluice's listener is TLS-only, so the
//! direct and nginx legs are too); the proxies reach the upstream over plain
//! HTTP with keep-alive. The upstream is nginx itself serving a small JSON
//! document, so it is never the bottleneck being measured.
//!
//! Throughput: wrk at each fixed concurrency (`--http-connections`).
//!
//! Latency: at a fixed request rate (`--http-rate`), open loop, the way wrk2
//! measures it (wrk2 is not packaged here): `sluice-http`'s `open_loop`
//! example sends each request when it is due and counts its latency from
//! then, so a stall in the gateway shows in every request it delays. The
//! added p50 and p99 are Sluice's minus the direct leg's.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sluice_sandbox::free_port;

use super::{describe, spawn_gateway, Daemon, ScratchDir};
use crate::{command_exists, run_inherit};

/// The upstream's response: small JSON with one email (masked on the masking leg).
const BODY: &str =
    r#"{"id":42,"name":"Ada","email":"ada@example.com","status":"active","tags":["a","b","c"]}"#;

/// The HTTP section's settings.
pub(crate) struct Options {
    /// wrk's concurrency for each throughput run.
    pub(crate) connections: Vec<u32>,
    /// Requests per second of the fixed-rate latency run.
    pub(crate) rate: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connections: vec![16, 64],
            rate: 2000,
        }
    }
}

/// Connections the fixed-rate run deals its requests over.
const OPEN_LOOP_CONNECTIONS: u32 = 16;

/// What wrk reported.
#[derive(Debug, Clone, Copy, Default)]
struct WrkResult {
    rps: f64,
    /// The proxy's CPU (user + system, workers included) per request, in µs.
    cpu_us: Option<f64>,
}

/// What the fixed-rate run reported (milliseconds).
#[derive(Debug, Clone, Copy, Default)]
struct Latency {
    rate: f64,
    p50: f64,
    p99: f64,
    p999: f64,
}

/// Installs wrk and nginx with apt-get when missing (as root).
fn ensure_tools() -> Result<()> {
    let mut missing = Vec::new();
    if !command_exists("wrk") {
        missing.push("wrk");
    }
    if nginx_bin().is_none() {
        missing.push("nginx-light");
    }
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("bench: installing {}", missing.join(" "));
    run_inherit(Command::new("apt-get").arg("update").stdout(Stdio::null()))?;
    run_inherit(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )
}

fn nginx_bin() -> Option<&'static str> {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

struct Nginx {
    daemon: Daemon,
    _dir: ScratchDir,
}

/// nginx with `servers` (server blocks), `workers` worker processes, its own
/// temp paths and logs in a scratch directory, in the foreground.
fn start_nginx(name: &str, workers: u32, servers: &str, port: u16) -> Result<Nginx> {
    let nginx = nginx_bin().context("nginx is not installed")?;
    let dir = ScratchDir::new(&format!("sluice-bench-{name}"), None)?;
    let d = dir.path().display().to_string();
    let conf = format!(
        "daemon off;\nworker_processes {workers};\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           keepalive_requests 1000000;\n{servers}\n}}\n"
    );
    let conf_path = dir.path().join("nginx.conf");
    fs::write(&conf_path, conf)?;
    let log = dir.path().join("stderr.log");
    let mut cmd = Command::new(nginx);
    cmd.arg("-c")
        .arg(&conf_path)
        .arg("-p")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log)?)
        .stderr(fs::File::create(&log)?);
    let child = cmd
        .spawn()
        .with_context(|| format!("running {}", describe(&cmd)))?;
    let mut daemon = Daemon {
        child,
        pidfile: None,
        stop_signal: Some("QUIT"),
    };
    daemon
        .wait_ready(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(10),
            &log,
        )
        .with_context(|| format!("nginx ({name})"))?;
    Ok(Nginx { daemon, _dir: dir })
}

struct Gateway {
    port: u16,
    token: String,
    cert: String,
    key: String,
    daemon: Daemon,
    _dir: ScratchDir,
}

/// Sluice with one HTTP connection `api` to the upstream (a bearer injected),
/// optionally with masking.
fn start_gateway(bin: &Path, upstream: u16, masking: bool) -> Result<Gateway> {
    let dir = ScratchDir::new("sluice-bench-http", None)?;
    let port = free_port();
    let config = dir.path().join("sluice.toml");
    let state = dir.path().join("state");
    let masking = if masking {
        "[masking]\ndetectors = [\"default\"]\n"
    } else {
        ""
    };
    fs::write(
        &config,
        format!(
            "[gateway]\nstate_dir = {state:?}\n\n[listen]\nhttp = \"127.0.0.1:{port}\"\n\n\
             [[connections]]\nname = \"api\"\nkind = \"http\"\nupstream = \"http://127.0.0.1:{upstream}\"\n\
             bearer = {{ env = \"BENCH_API_TOKEN\" }}\nallow_groups = [\"bench\"]\n\n{masking}",
            state = state.display().to_string(),
        ),
    )?;
    let daemon = spawn_gateway(
        bin,
        &config,
        &[
            ("BENCH_API_TOKEN", "bench-upstream-credential"),
            ("SLUICE_LOG", "warn"),
        ],
        dir.path(),
        port,
    )
    .context("sluice serve (http)")?;
    let out = Command::new(bin)
        .args(["token", "issue", "--config"])
        .arg(&config)
        .args(["--subject", "bench", "--groups", "bench", "--ttl", "1h"])
        .env("BENCH_API_TOKEN", "bench-upstream-credential")
        .output()
        .context("sluice token issue")?;
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || token.is_empty() {
        bail!(
            "sluice token issue failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let tls = state.join("tls");
    Ok(Gateway {
        port,
        token,
        cert: tls.join("server.crt").display().to_string(),
        key: tls.join("server.key").display().to_string(),
        daemon,
        _dir: dir,
    })
}

/// Runs wrk and parses requests/s and the latency distribution.
fn wrk(url: &str, token: &str, connections: u32, seconds: u32) -> Result<WrkResult> {
    let threads = connections.clamp(1, 2);
    let out = Command::new("wrk")
        .args([
            "-t",
            &threads.to_string(),
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{seconds}s"),
            "-H",
            &format!("Authorization: Bearer {token}"),
            url,
        ])
        .output();
    let text = stdout_of("wrk", out)?;
    if let Some(line) = text.lines().find(|l| l.contains("Non-2xx")) {
        bail!("wrk saw errors ({}):\n{text}", line.trim());
    }
    let mut r = WrkResult::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some("Requests/sec:"), Some(v)) = (words.next(), words.next()) {
            r.rps = v.parse().unwrap_or(0.0);
        }
    }
    if r.rps == 0.0 {
        bail!("could not read wrk's output:\n{text}");
    }
    Ok(r)
}

/// Builds the open-loop generator (a release example of `sluice-http`).
fn build_open_loop() -> Result<std::path::PathBuf> {
    run_inherit(
        crate::cargo()
            .args(["build", "--quiet", "--release", "-p", "sluice-http"])
            .args(["--example", "open_loop"])
            .current_dir(crate::workspace_root()),
    )
    .context("building the open_loop example")?;
    Ok(super::target_dir()
        .join("release")
        .join("examples")
        .join("open_loop"))
}

/// Runs the open-loop generator at `rate` requests/s.
fn open_loop(bin: &Path, url: &str, token: &str, rate: u32, seconds: u32) -> Result<Latency> {
    let out = Command::new(bin)
        .args([url, token])
        .arg(rate.to_string())
        .arg(seconds.to_string())
        .arg(OPEN_LOOP_CONNECTIONS.to_string())
        .output();
    parse_open_loop(&stdout_of("open_loop", out)?)
}

/// A tool's standard output, or its standard error as the failure.
fn stdout_of(tool: &str, out: std::io::Result<std::process::Output>) -> Result<String> {
    let out = out.with_context(|| format!("running {tool}"))?;
    if !out.status.success() {
        bail!(
            "{tool} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// `sent N errors N rate R p50 MS p90 MS p99 MS p999 MS max MS`.
fn parse_open_loop(text: &str) -> Result<Latency> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let field = |name: &str| -> Option<f64> {
        let at = words.iter().position(|w| *w == name)?;
        words.get(at + 1)?.parse().ok()
    };
    let read = || -> Option<Latency> {
        if field("errors")? != 0.0 {
            return None;
        }
        Some(Latency {
            rate: field("rate")?,
            p50: field("p50")?,
            p99: field("p99")?,
            p999: field("p999")?,
        })
    };
    read().with_context(|| format!("open_loop saw errors or printed no result: {text}"))
}

/// The HTTP section: requests/s at each concurrency, and latency at a
/// fixed rate.
pub(crate) fn bench_http(sluice_bin: Option<&Path>, seconds: u32, opts: &Options) -> Result<()> {
    let Some(bin) = sluice_bin else {
        bail!("no sluice binary to benchmark");
    };
    ensure_tools()?;
    let generator = build_open_loop()?;
    let up_port = free_port();
    let up_tls_port = free_port();
    let plain = start_gateway(bin, up_port, false)?;
    let masked = start_gateway(bin, up_port, true)?;
    // The upstream: plain HTTP for the proxies, HTTPS (Sluice's generated
    // certificate) for the direct leg.
    let upstream = start_nginx(
        "upstream",
        1,
        &format!(
            "  server {{ listen 127.0.0.1:{up_port}; listen 127.0.0.1:{up_tls_port} ssl;\n\
               ssl_certificate {cert}; ssl_certificate_key {key};\n\
               location / {{ default_type application/json; return 200 '{BODY}'; }} }}",
            cert = plain.cert,
            key = plain.key,
        ),
        up_port,
    )?;
    let proxy_port = free_port();
    let proxy = start_nginx(
        "proxy",
        2,
        &format!(
            "  upstream backend {{ server 127.0.0.1:{up_port}; keepalive 64; }}\n\
               server {{ listen 127.0.0.1:{proxy_port} ssl; ssl_certificate {cert}; ssl_certificate_key {key};\n\
               location /api/ {{ proxy_pass http://backend/; proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\"; proxy_set_header Authorization \"Bearer bench-upstream-credential\"; }} }}",
            cert = plain.cert,
            key = plain.key,
        ),
        proxy_port,
    )?;
    let legs = [
        (
            "direct",
            format!("https://127.0.0.1:{up_tls_port}/item"),
            plain.token.clone(),
            None,
        ),
        (
            "nginx",
            format!("https://127.0.0.1:{proxy_port}/api/item"),
            plain.token.clone(),
            Some(proxy.daemon.child.id()),
        ),
        (
            "sluice",
            format!("https://127.0.0.1:{}/api/item", plain.port),
            plain.token.clone(),
            Some(plain.daemon.child.id()),
        ),
        (
            "sluice+masking",
            format!("https://127.0.0.1:{}/api/item", masked.port),
            masked.token.clone(),
            Some(masked.daemon.child.id()),
        ),
    ];
    let mut rows = Vec::new();
    for (name, url, token, proxy_pid) in &legs {
        crate::interrupt::check()?;
        // A short warm-up fills the connection pools.
        let _ = wrk(url, token, opts.connections[0], 1);
        eprint!("bench: http {name:<15} ... ");
        let mut loads = Vec::new();
        for &c in &opts.connections {
            crate::interrupt::check()?;
            let before = proxy_pid.and_then(super::tree_cpu_seconds);
            let load = wrk(url, token, c, seconds).map(|mut load| {
                let after = proxy_pid.and_then(super::tree_cpu_seconds);
                let requests = load.rps * f64::from(seconds);
                if let (Some(a), Some(b)) = (before, after) {
                    load.cpu_us = (requests > 0.0).then(|| (b - a) * 1e6 / requests);
                }
                load
            });
            loads.push(load);
        }
        let latency = open_loop(&generator, url, token, opts.rate, seconds);
        match (loads.into_iter().collect::<Result<Vec<_>>>(), latency) {
            (Ok(loads), Ok(latency)) => {
                for (c, load) in opts.connections.iter().zip(&loads) {
                    eprint!("{:.0} req/s at -c {c}; ", load.rps);
                }
                eprintln!(
                    "at {:.0} req/s: p50 {:.3} ms, p99 {:.3} ms",
                    latency.rate, latency.p50, latency.p99
                );
                rows.push((*name, loads, latency));
            }
            (Err(e), _) | (_, Err(e)) => eprintln!("failed: {e:#}"),
        }
    }
    print_table(&rows, seconds, opts);
    drop(proxy);
    drop(upstream);
    drop(masked);
    drop(plain);
    Ok(())
}

type Row<'a> = (&'a str, Vec<WrkResult>, Latency);

fn print_table(rows: &[Row<'_>], seconds: u32, opts: &Options) {
    println!();
    println!(
        "HTTP: HTTPS to every leg, a {}-byte JSON response, {seconds}s per run; \
         throughput by wrk at each -c, with the proxy's CPU (its workers' included) per request; latency open-loop at {} req/s over {OPEN_LOOP_CONNECTIONS} connections",
        BODY.len(),
        opts.rate
    );
    let mut header = format!("{:<16}", "leg");
    for c in &opts.connections {
        header += &format!(
            " {:>12} {:>8} {:>8} {:>10}",
            format!("req/s c={c}"),
            "÷direct",
            "÷nginx",
            "CPU µs/req"
        );
    }
    header += &format!(
        " {:>8} {:>8} {:>8} {:>10} {:>10}",
        "p50 ms", "p99 ms", "p99.9 ms", "+p50 ms", "+p99 ms"
    );
    println!("{header}");
    let find = |n: &str| rows.iter().find(|(name, _, _)| *name == n);
    let (direct, nginx) = (find("direct"), find("nginx"));
    for (name, loads, latency) in rows {
        let mut line = format!("{name:<16}");
        for (i, load) in loads.iter().enumerate() {
            let ratio = |base: Option<&Row<'_>>| {
                base.and_then(|b| b.1.get(i))
                    .map(|b| format!("{:.2}", load.rps / b.rps))
                    .unwrap_or_else(|| "-".into())
            };
            let cpu = load
                .cpu_us
                .map_or_else(|| "-".to_string(), |us| format!("{us:.1}"));
            line += &format!(
                " {:>12.0} {:>8} {:>8} {:>10}",
                load.rps,
                ratio(direct),
                ratio(nginx),
                cpu
            );
        }
        let added = |pick: fn(&Latency) -> f64| {
            direct
                .map(|d| format!("{:+.3}", pick(latency) - pick(&d.2)))
                .unwrap_or_else(|| "-".into())
        };
        line += &format!(
            " {:>8.3} {:>8.3} {:>8.3} {:>10} {:>10}",
            latency.p50,
            latency.p99,
            latency.p999,
            added(|l| l.p50),
            added(|l| l.p99)
        );
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_loop_line_is_read_and_errors_refused() {
        let line =
            "sent 20000 errors 0 rate 1999 p50 0.412 p90 0.530 p99 0.910 p999 2.100 max 4.000\n";
        let l = parse_open_loop(line).unwrap();
        assert_eq!((l.rate, l.p50, l.p99, l.p999), (1999.0, 0.412, 0.910, 2.1));
        assert!(parse_open_loop(&line.replace("errors 0", "errors 3")).is_err());
        assert!(parse_open_loop("open_loop: connection refused").is_err());
    }
}
