//! The end of an exec channel: OpenSSH's client waits for the server to close
//! a finished session channel, so the gateway must close it at once (it once
//! waited two seconds for a close that never came, at the end of every
//! `ssh host CMD` and scp).

// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_e2e::ok;
use sluice_e2e::sshd::SshEnv;
use std::time::{Duration, Instant};

#[test]
fn one_command_per_connection_ends_without_waiting() {
    let env = SshEnv::start("");
    let token = env.agent_token();
    // Warm up (host keys, the upstream's first login).
    ok(&env.ssh_input(&token, &["true"], b""));
    let mut slowest = Duration::ZERO;
    for _ in 0..3 {
        let started = Instant::now();
        // stdin at EOF, as an agent's subprocess call has it.
        ok(&env.ssh_input(&token, &["echo done"], b""));
        let took = started.elapsed();
        eprintln!("ssh CMD through the gateway: {took:?}");
        slowest = slowest.max(took);
    }
    // The stall was a fixed 2 s; a round trip here takes well under one.
    assert!(
        slowest < Duration::from_millis(1500),
        "ssh CMD through the gateway took {slowest:?}"
    );
}

/// A client that sends its version and then stalls the key exchange is cut
/// off at the login deadline (russh ignores a disconnect request during a
/// key exchange, so the gateway shuts the socket down), and the gateway
/// keeps serving others.
#[test]
fn a_client_that_stalls_its_login_is_cut_off() {
    use std::io::{Read, Write};
    let env = SshEnv::start("");
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", env.port)).unwrap();
    tcp.write_all(b"SSH-2.0-stalling\r\n").unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // A reset is as good as a close.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "the stalled connection was not closed: {e} after {:?}",
                started.elapsed()
            ),
        }
    }
    let took = started.elapsed();
    assert!(
        got.starts_with(b"SSH-2.0-Sluice"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    // The login deadline is 30 s; the close follows within a few seconds.
    assert!(took < Duration::from_secs(40), "closed after {took:?}");
    ok(&env.ssh_input(&env.agent_token(), &["true"], b""));
}

/// SIGTERM with SSH sessions live: a command that ends within the drain
/// deadline finishes with its output; one that does not is ended with a
/// message the client shows; both are in the audit journal, and the
/// gateway exits by itself.
#[test]
fn sigterm_lets_running_commands_finish_and_ends_the_rest_with_a_message() {
    use std::process::Stdio;
    let mut env = SshEnv::start_listen("", "drain_timeout = \"4s\"");
    let token = env.agent_token();
    let spawn = |script: &str| {
        env.ssh_command(&token, &[script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let short = spawn("sleep 2; echo finished");
    let long = spawn("sleep 60; echo never");
    // Both commands decided (and so running upstream).
    sluice_e2e::wait_until(Duration::from_secs(20), "two commands running", || {
        let live = env.sessions();
        let running = live
            .iter()
            .filter(|s| s["ended_at_ms"].is_null() && s["commands"].as_u64() >= Some(1))
            .count();
        (running >= 2).then_some(())
    });
    let pid = env.gateway_pid().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let short = sluice_e2e::wait_output(short, Duration::from_secs(20), "the short command");
    assert_eq!(ok(&short), "finished\n");
    let long = sluice_e2e::wait_output(long, Duration::from_secs(20), "the long command");
    let said = String::from_utf8_lossy(&long.stderr).into_owned();
    assert!(!long.status.success(), "{said}");
    assert!(said.contains("the gateway is shutting down"), "{said}");
    assert!(!String::from_utf8_lossy(&long.stdout).contains("never"));
    sluice_e2e::wait_until(Duration::from_secs(20), "the gateway to exit", || {
        (!env.gateway_alive()).then_some(())
    });
    let journal = std::fs::read_to_string(env.state_dir.join("journal.log")).unwrap();
    assert!(journal.contains("sleep 2; echo finished"), "{journal}");
    assert!(journal.contains("sleep 60; echo never"), "{journal}");
    // Every session's end is recorded, the cut one with its reason.
    let ended = env.wait_sessions_ended(2);
    assert!(
        ended.iter().any(|s| s["end_reason"]
            .as_str()
            .is_some_and(|r| r.contains("shutting down"))),
        "{ended:?}"
    );
}
