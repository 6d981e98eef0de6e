//! Bounded memory for hostile lengths: a client that declares a huge
//! message and sends nothing more must not make the gateway reserve it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_e2e::raw::RawConn;
use sluice_e2e::*;
use std::time::Duration;

/// `VmSize` and `VmRSS` of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    };
    (field("VmSize:"), field("VmRSS:"))
}

/// Before the fix each of these connections made the gateway reserve the
/// declared 60 MiB at once (12 of them: over 700 MiB of address space,
/// memory it would hand out as the bytes arrived).
#[test]
fn declared_lengths_are_not_reserved() {
    let mut env = Env::start();
    let token = env.agent_token();
    let url = env.url("agent-1", &token, "appdb");
    assert_eq!(ok(&env.psql(&url, &["-c", "select 1"])).trim(), "1");
    let pid = env.gateway_pid().unwrap();
    // Warm up what a session costs, then measure.
    let mut warm: Vec<RawConn> = (0..2)
        .map(|_| RawConn::login(env.addr(), "agent-1", "appdb", &token).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let (size_before, rss_before) = memory_kib(pid);
    let mut held = Vec::new();
    for _ in 0..12 {
        let mut conn = RawConn::login(env.addr(), "agent-1", "appdb", &token).unwrap();
        let mut header = vec![b'Q'];
        header.extend_from_slice(&(60i32 << 20).to_be_bytes());
        header.extend_from_slice(b"select ");
        conn.send(&header).unwrap();
        held.push(conn);
    }
    std::thread::sleep(Duration::from_millis(500));
    let (size_after, rss_after) = memory_kib(pid);
    let grew_mib = size_after.saturating_sub(size_before) / 1024;
    assert!(
        grew_mib < 300,
        "address space grew by {grew_mib} MiB for 12 declared 60 MiB messages"
    );
    assert!(
        rss_after.saturating_sub(rss_before) / 1024 < 100,
        "{rss_before} -> {rss_after} KiB"
    );
    // The gateway still serves everyone else.
    assert_eq!(
        ok(&env.psql(&url, &["-c", "select 'still-serving'"])).trim(),
        "still-serving"
    );
    warm.clear();
    drop(held);
    env.assert_gateway_alive();
}
