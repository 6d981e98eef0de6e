//! The HTTP section of `cargo xtask bench`: wrk against an upstream directly,
//! through Sluice and through an nginx reverse proxy (the peer), in one run.
//!
//! Every leg the client sees is HTTPS (Sluice's listener is TLS-only, so the
//! direct and nginx legs are too); the proxies reach the upstream over plain
//! HTTP with keep-alive. The upstream is nginx itself serving a small JSON
//! document, so it is never the bottleneck being measured.
//!
//! Latency: wrk2 (fixed-rate wrk) is not packaged here, so added latency is
//! measured with wrk at a fixed concurrency of 1 (one request in flight, a
//! closed loop): with no queueing, p50 and p99 there are each leg's service
//! time, and Sluice's minus direct's is what the gateway adds per request.
//! Throughput is measured at a higher fixed concurrency.

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

/// What wrk reported.
#[derive(Debug, Clone, Copy, Default)]
struct WrkResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
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
    _daemon: Daemon,
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
    Ok(Nginx {
        _daemon: daemon,
        _dir: dir,
    })
}

struct Gateway {
    port: u16,
    token: String,
    cert: String,
    key: String,
    _daemon: Daemon,
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
        _daemon: daemon,
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
            "--latency",
            "-H",
            &format!("Authorization: Bearer {token}"),
            url,
        ])
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!(
            "wrk failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if let Some(line) = text.lines().find(|l| l.contains("Non-2xx")) {
        bail!("wrk saw errors ({}):\n{text}", line.trim());
    }
    let mut r = WrkResult::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Requests/sec:"), Some(v)) => r.rps = v.parse().unwrap_or(0.0),
            (Some("50%"), Some(v)) => r.p50_ms = duration_ms(v),
            (Some("99%"), Some(v)) => r.p99_ms = duration_ms(v),
            _ => {}
        }
    }
    if r.rps == 0.0 {
        bail!("could not read wrk's output:\n{text}");
    }
    Ok(r)
}

/// `812.00us`, `1.23ms`, `2.00s` → milliseconds.
fn duration_ms(v: &str) -> f64 {
    let split = v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => f64::NAN,
    }
}

/// The HTTP section: prints requests/s at `connections` and latency at 1.
pub(crate) fn bench_http(sluice_bin: Option<&Path>, seconds: u32, connections: u32) -> Result<()> {
    let Some(bin) = sluice_bin else {
        bail!("no sluice binary to benchmark");
    };
    ensure_tools()?;
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
        ),
        (
            "nginx",
            format!("https://127.0.0.1:{proxy_port}/api/item"),
            plain.token.clone(),
        ),
        (
            "sluice",
            format!("https://127.0.0.1:{}/api/item", plain.port),
            plain.token.clone(),
        ),
        (
            "sluice+masking",
            format!("https://127.0.0.1:{}/api/item", masked.port),
            masked.token.clone(),
        ),
    ];
    let mut rows = Vec::new();
    for (name, url, token) in &legs {
        // A short warm-up fills the connection pools.
        let _ = wrk(url, token, connections, 1);
        eprint!("bench: http {name:<15} ... ");
        let load = wrk(url, token, connections, seconds);
        let single = wrk(url, token, 1, seconds);
        match (load, single) {
            (Ok(load), Ok(single)) => {
                eprintln!(
                    "{:>9.0} req/s at -c {connections}; p50 {:.3} ms, p99 {:.3} ms at -c 1",
                    load.rps, single.p50_ms, single.p99_ms
                );
                rows.push((*name, load, single));
            }
            (Err(e), _) | (_, Err(e)) => eprintln!("failed: {e:#}"),
        }
    }
    println!();
    println!(
        "HTTP: wrk --latency, {seconds}s per run, HTTPS to every leg, a {}-byte JSON response; throughput at -c {connections}, latency at -c 1",
        BODY.len()
    );
    println!(
        "{:<16} {:>10} {:>10} {:>10} {:>10} {:>12} {:>12}",
        "leg", "req/s", "÷direct", "÷nginx", "p50 ms", "p99 ms", "p99 added ms"
    );
    let find = |n: &str| {
        rows.iter()
            .find(|(name, _, _)| *name == n)
            .map(|r| (r.1, r.2))
    };
    let direct = find("direct");
    let nginx = find("nginx");
    for (name, load, single) in &rows {
        let ratio = |base: Option<(WrkResult, WrkResult)>| {
            base.map(|(b, _)| format!("{:.2}", load.rps / b.rps))
                .unwrap_or_else(|| "-".into())
        };
        let added = direct
            .map(|(_, d)| format!("{:+.3}", single.p99_ms - d.p99_ms))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<16} {:>10.0} {:>10} {:>10} {:>10.3} {:>12.3} {:>12}",
            name,
            load.rps,
            ratio(direct),
            ratio(nginx),
            single.p50_ms,
            single.p99_ms,
            added
        );
    }
    drop(proxy);
    drop(upstream);
    drop(masked);
    drop(plain);
    Ok(())
}
