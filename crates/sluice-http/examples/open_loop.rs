//! Open-loop HTTPS load at a fixed request rate, the way wrk2 measures
//! latency, for `cargo xtask bench` (wrk2 is not packaged; wrk's closed loop
//! hides a stall: while one request waits, the next is not sent).
//!
//! Requests are due at fixed times, `1/rate` apart, dealt round-robin over
//! the connections, and each one's latency is counted from when it was due,
//! not from when it went out: a stall delays every request behind it and is
//! counted in all of them (no coordinated omission).
//!
//! `open_loop URL TOKEN RATE SECONDS CONNECTIONS` prints one line:
//! `sent N errors N rate R p50 MS p90 MS p99 MS p999 MS max MS`.
//! The server's certificate is not checked: a loopback benchmark.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::config::UpstreamTls;

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Plan {
    host: String,
    port: u16,
    path: String,
    token: String,
    period: Duration,
    until: Duration,
    connections: u32,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let plan = match parse(&args) {
        Ok(plan) => Arc::new(plan),
        Err(e) => {
            eprintln!("open_loop: {e}\nusage: open_loop URL TOKEN RATE SECONDS CONNECTIONS");
            std::process::exit(2);
        }
    };
    match run(&plan) {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("open_loop: {e}");
            std::process::exit(1);
        }
    }
}

fn parse(args: &[String]) -> Result<Plan, String> {
    let [url, token, rate, seconds, connections] = args else {
        return Err("five arguments expected".into());
    };
    let number = |what: &str, v: &str| -> Result<f64, String> {
        v.parse::<f64>()
            .ok()
            .filter(|n| n.is_finite() && *n > 0.0)
            .ok_or(format!("{what}: `{v}` is not a positive number"))
    };
    let duration = |what: &str, secs: f64| -> Result<Duration, String> {
        Duration::try_from_secs_f64(secs)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or(format!("{what}: out of range"))
    };
    let rest = url
        .strip_prefix("https://")
        .ok_or("URL: only https:// is measured")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| format!("URL: bad port `{p}`"))?),
        None => (authority, 443),
    };
    Ok(Plan {
        host: host.to_string(),
        port,
        path: if path.is_empty() { "/" } else { path }.to_string(),
        token: token.clone(),
        period: duration("RATE", 1.0 / number("RATE", rate)?)?,
        until: duration("SECONDS", number("SECONDS", seconds)?)?,
        connections: (number("CONNECTIONS", connections)? as u32).max(1),
    })
}

/// One thread per connection, each sleeping (nanosleep: tens of µs of
/// slack, where tokio's timer has a millisecond's) until its next request is due.
fn run(plan: &Arc<Plan>) -> Result<String, Error> {
    let mut conns = Vec::new();
    for _ in 0..plan.connections {
        conns.push(connect(plan)?);
    }
    let start = Instant::now() + Duration::from_millis(20);
    let lanes: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(lane, conn)| {
            let plan = plan.clone();
            std::thread::spawn(move || drive(&plan, conn, start, lane))
        })
        .collect();
    let (mut latencies_us, mut errors) = (Vec::new(), 0u64);
    for lane in lanes {
        let (lat, err) = lane.join().map_err(|_| "a connection's thread panicked")?;
        latencies_us.extend(lat);
        errors += err;
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies_us.sort_unstable();
    let ms = |q: f64| -> f64 {
        let at = ((latencies_us.len() as f64 * q).ceil() as usize).saturating_sub(1);
        latencies_us
            .get(at)
            .map_or(f64::NAN, |us| *us as f64 / 1000.0)
    };
    Ok(format!(
        "sent {} errors {errors} rate {:.0} p50 {:.3} p90 {:.3} p99 {:.3} p999 {:.3} max {:.3}",
        latencies_us.len() as u64 + errors,
        latencies_us.len() as f64 / elapsed,
        ms(0.50),
        ms(0.90),
        ms(0.99),
        ms(0.999),
        ms(1.0),
    ))
}

type Conn = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// How long a connect, a write or a read may take before the request counts
/// as an error (a server that never answers must not hang the bench).
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection with its TLS handshake done and one request answered, so
/// that neither is counted in the first measured request.
fn connect(plan: &Plan) -> Result<Conn, Error> {
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(plan.host.as_str(), plan.port))?
        .next()
        .ok_or("the URL's host has no address")?;
    let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    let tls = sluice_core::tls::upstream_client_config(UpstreamTls::Require, None)?
        .ok_or("no TLS client configuration")?;
    let name = rustls::pki_types::ServerName::try_from(plan.host.clone())?;
    let mut conn = rustls::StreamOwned::new(rustls::ClientConnection::new(tls, name)?, tcp);
    while conn.conn.is_handshaking() {
        conn.conn.complete_io(&mut conn.sock)?;
    }
    if !exchange(&mut conn, request(plan).as_bytes(), &mut Vec::new())? {
        return Err("the warm-up request was refused".into());
    }
    Ok(conn)
}

fn request(plan: &Plan) -> String {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}:{}\r\nAuthorization: Bearer {}\r\n\r\n",
        plan.path, plan.host, plan.port, plan.token
    )
}

/// Sends this lane's share of the requests, each at its due time or as soon
/// after as the connection is free; returns latencies from due time, in µs.
/// A non-2xx answer is one error; a lane whose connection fails (or whose
/// response cannot be framed) counts the rest of its requests as errors.
fn drive(plan: &Plan, mut conn: Conn, start: Instant, lane: usize) -> (Vec<u64>, u64) {
    let (mut latencies, mut errors) = (Vec::new(), 0u64);
    let request = request(plan);
    let mut buf = Vec::with_capacity(4096);
    let mut broken = false;
    for n in (lane..).step_by(plan.connections as usize) {
        let offset = plan.period.as_nanos().saturating_mul(n as u128);
        if offset >= plan.until.as_nanos() {
            break;
        }
        let offset = Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX));
        let due = start + offset;
        if broken {
            errors += 1;
            continue;
        }
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        match exchange(&mut conn, request.as_bytes(), &mut buf) {
            Ok(true) => latencies.push(due.elapsed().as_micros() as u64),
            Ok(false) => errors += 1,
            Err(_) => {
                errors += 1;
                broken = true;
            }
        }
    }
    (latencies, errors)
}

/// Writes one request and reads its whole response (Content-Length framed);
/// whether it was a 2xx.
fn exchange(conn: &mut Conn, request: &[u8], buf: &mut Vec<u8>) -> Result<bool, Error> {
    conn.write_all(request)?;
    conn.flush()?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(head_end) = find(buf, b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..head_end])?;

            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .ok_or("response without Content-Length")?;
            if buf.len() >= head_end + 4 + length {
                return Ok(head.starts_with("HTTP/1.1 2"));
            }
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Err("connection closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
