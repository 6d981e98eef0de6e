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
