//! The example protocol crate (`examples/kv-protocol`) plugged into a gateway
//! without any change to `sluice-core`: its connection kind and settings, its
//! match key, its listener on core's contract, and core's admission, rules,
//! masking and audit on every command. The upstream's own command log is the
//! oracle of what ran.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_e2e::*;
use sluice_sandbox::free_port;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "kv-upstream-secret-51f0";

fn kv_gateway_bin() -> PathBuf {
    let bin = target_dir().join("debug").join("kv-gateway");
    assert!(
        bin.is_file(),
        "kv-gateway is missing at {}: `cargo build -p sluice-example-kv`",
        bin.display()
    );
    bin
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_upstream(dir: &Path) -> (Running, u16, PathBuf) {
    let log = dir.join("upstream-commands.log");
    std::fs::write(&log, "").unwrap();
    let port = free_port();
    let child = Command::new("python3")
        .arg(py_dir().join("kv_upstream.py"))
        .arg(port.to_string())
        .arg(PASSWORD)
        .arg(&log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), "the kv upstream", || {
        TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    });
    (Running(child), port, log)
}

fn config(dir: &Path, listen: u16, upstream: u16, options: &str) -> PathBuf {
    let path = dir.join("kv.toml");
    std::fs::write(
        &path,
        format!(
            r#"[gateway]
state_dir = {state:?}

[listen]
drain_timeout = "2s"

[listen.protocols]
kv = "127.0.0.1:{listen}"

[[connections]]
name = "cache"
kind = "kv"
upstream = "127.0.0.1:{upstream}"
allow_groups = ["agents"]

[connections.options]
{options}

[[rules]]
name = "no-deletes"
action = "deny"
match = {{ kv = ["DEL *"] }}
message = "deleting keys needs a human"

[masking]
detectors = ["email"]
"#,
            state = dir.join("state").display().to_string(),
        ),
    )
    .unwrap();
    path
}

fn start_gateway(config: &Path, log: &Path) -> Result<Running, String> {
    let file = std::fs::File::create(log).unwrap();
    let mut child = Command::new(kv_gateway_bin())
        .arg(config)
        .env("KV_PASSWORD", PASSWORD)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("kv gateway ready.") {
            return Ok(Running(child));
        }
        if let Ok(Some(_)) = child.try_wait() {
            return Err(text);
        }
        assert!(
            Instant::now() < deadline,
            "kv-gateway did not start: {text}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A raw client of the line protocol.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(port: u16) -> Client {
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Client {
            reader: BufReader::new(tcp.try_clone().unwrap()),
            writer: tcp,
        }
    }

    fn call(&mut self, line: &str) -> String {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
        let mut reply = String::new();
        self.reader.read_line(&mut reply).unwrap();
        reply.trim_end().to_string()
    }
}

#[test]
fn a_protocol_crate_outside_core_gets_admission_rules_masking_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let (_upstream, upstream_port, commands) = start_upstream(dir.path());
    let port = free_port();
    let config = config(
        dir.path(),
        port,
        upstream_port,
        "password = { env = \"KV_PASSWORD\" }",
    );
    let _gateway = start_gateway(&config, &dir.path().join("gateway.log")).unwrap();
    let sluice = |args: &[&str]| sluice_cli(&config, &[], args);
    let token = issue_token(sluice, "agent-1", &["agents"], "10m");
    let outsider = issue_token(sluice, "visitor", &["visitors"], "10m");

    // Core's admission: a forged token and a group without access are refused.
    let mut c = Client::connect(port);
    let reply = c.call("AUTH cache not-a-token");
    assert!(
        reply.starts_with("-ERR sluice: authentication failed"),
        "{reply}"
    );
    let mut c = Client::connect(port);
    let reply = c.call(&format!("AUTH cache {outsider}"));
    assert!(reply.starts_with("-ERR sluice: access denied"), "{reply}");

    let mut c = Client::connect(port);
    let reply = c.call(&format!("AUTH cache {token}"));
    assert!(reply.starts_with("+OK sluice session"), "{reply}");
    assert_eq!(c.call("SET owner alice@example.com"), "+OK");
    // The configured detectors mask the answer; the upstream holds the value.
    let got = c.call("GET owner");
    assert!(
        got.starts_with('+') && !got.contains("alice@example.com"),
        "{got}"
    );
    // The crate's match key, judged on what the upstream runs: spacing and
    // case do not slip past it.
    for attempt in ["DEL owner", "del    owner", "DeL\towner"] {
        let reply = c.call(attempt);
        assert!(
            reply.contains("denied (rule no-deletes)") && reply.contains("needs a human"),
            "{attempt:?}: {reply}"
        );
    }
    assert_eq!(c.call("KEYS"), "+owner");
    // An upstream that echoes the gateway-held password does not hand it out.
    assert_eq!(c.call("CONFIG"), "+requirepass [redacted-credential]");
    drop(c);

    // The upstream ran exactly the allowed commands (the oracle).
    let ran = std::fs::read_to_string(&commands).unwrap();
    assert_eq!(
        ran, "SET owner alice@example.com\nGET owner\nKEYS\nCONFIG\n",
        "{ran}"
    );

    // Audit: the session under the crate's protocol name, every command recorded.
    let sessions = wait_until(Duration::from_secs(15), "the kv session to end", || {
        let out = sluice(&["sessions", "list", "--json"]);
        let all: Vec<serde_json::Value> = serde_json::from_str(&ok(&out)).ok()?;
        let s = all
            .into_iter()
            .find(|s| s["protocol"] == "kv" && s["subject"] == "agent-1")?;
        (!s["ended_at_ms"].is_null()).then_some(s)
    });
    let replay = ok(&sluice(&["replay", sessions["id"].as_str().unwrap()]));
    for expected in [
        "set: SET owner",
        "get: GET owner",
        "no-deletes",
        "keys: KEYS",
    ] {
        assert!(replay.contains(expected), "{expected:?} not in:\n{replay}");
    }
    assert!(
        !replay.contains(PASSWORD),
        "the gateway-held secret leaked:\n{replay}"
    );
    ok(&sluice(&["audit", "verify"]));
}

#[test]
fn a_protocol_crates_settings_are_validated_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        free_port(),
        1,
        "passwrd = { env = \"KV_PASSWORD\" }",
    );
    let log = std::fs::read_to_string({
        let log = dir.path().join("gateway.log");
        let err = start_gateway(&config, &log)
            .err()
            .expect("a bad option must stop the start");
        std::fs::write(&log, err).unwrap();
        log
    })
    .unwrap();
    assert!(log.contains("connections.0.options"), "{log}");
    assert!(log.contains("passwrd"), "{log}");
    // Named by file and line: `[connections.options]` is line 16.
    assert!(log.contains("kv.toml:16:"), "{log}");

    // The stock binary does not serve the kind, and says so.
    let good = config_without_listener_check(dir.path());
    let out = sluice_cli(&good, &[], &["config", "check"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown connection kind \"kv\""),
        "{}",
        stderr(&out)
    );
}

/// A config with a `kv` connection the stock `sluice` binary must refuse.
fn config_without_listener_check(dir: &Path) -> PathBuf {
    let path = dir.join("stock.toml");
    std::fs::write(
        &path,
        format!(
            "[gateway]\nstate_dir = {:?}\n\n[[connections]]\nname = \"cache\"\nkind = \"kv\"\nupstream = \"127.0.0.1:1\"\nallow_groups = [\"agents\"]\n",
            dir.join("state2").display().to_string()
        ),
    )
    .unwrap();
    path
}
