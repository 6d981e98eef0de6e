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
