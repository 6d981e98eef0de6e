//! Connection negotiation details: GSSAPI encryption requests, newer protocol versions.

// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_e2e::raw::{self, RawConn};
use sluice_e2e::*;
use std::io::Read;
use std::time::Duration;

#[test]
fn gss_encryption_request_is_declined_and_startup_continues() {
    let env = Env::start();
    let token = env.agent_token();
    let mut conn = RawConn::connect(env.addr());
    conn.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).unwrap();
    let mut answer = [0u8; 1];
    conn.stream.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"N");
    conn.send(&raw::startup_packet(&[
        ("user", "agent-1"),
        ("database", "appdb"),
    ]))
    .unwrap();
    let ask = conn.read_msg().unwrap().unwrap();
    assert_eq!(
        (ask.tag, ask.body.as_slice()),
        (b'R', &3i32.to_be_bytes()[..])
    );
    let mut password = token.into_bytes();
    password.push(0);
    conn.send(&raw::message(b'p', &password)).unwrap();
    let login = conn.read_until_ready();
    assert!(raw::errors(&login).is_empty(), "{login:?}");
    assert_eq!(
        raw::rows(&conn.query("select 'after-gss-no'"))[0][0].as_deref(),
        Some("after-gss-no")
    );
}

/// PostgreSQL answers a startup message for 3.x (x > 0) or with unknown `_pq_.` options with
/// NegotiateProtocolVersion carrying the *full* newest version it supports (196608 for 3.0;
/// version"). The gateway once sent 0 there.
#[test]
fn newer_protocol_minor_version_is_negotiated_down() {
    let env = Env::start();
    let token = env.agent_token();

    // Raw: ask for 3.2 with an unknown protocol option.
    let mut conn = RawConn::connect(env.addr());
    let mut packet = raw::startup_packet(&[
        ("user", "agent-1"),
        ("database", "appdb"),
        ("_pq_.e2e_option", "1"),
    ]);
    packet[4..8].copy_from_slice(&0x0003_0002u32.to_be_bytes());
    conn.send(&packet).unwrap();
    let v = conn.read_msg().unwrap().unwrap();
    assert_eq!(v.tag, b'v', "NegotiateProtocolVersion first: {v:?}");
    let newest = i32::from_be_bytes([v.body[0], v.body[1], v.body[2], v.body[3]]);
    let unknown = i32::from_be_bytes([v.body[4], v.body[5], v.body[6], v.body[7]]);
    assert_eq!(unknown, 1, "{v:?}");
    assert_eq!(&v.body[8..], b"_pq_.e2e_option\0");
    let ask = conn.read_msg().unwrap().unwrap();
    assert_eq!(ask.tag, b'R');
    let mut password = token.clone().into_bytes();
    password.push(0);
    conn.send(&raw::message(b'p', &password)).unwrap();
    conn.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(raw::errors(&conn.read_until_ready()).is_empty());
    assert_eq!(
        raw::rows(&conn.query("select 'on-3.0'"))[0][0].as_deref(),
        Some("on-3.0")
    );
    assert_eq!(
        newest, 0x0003_0000,
        "the newest version field must be 3.0 (196608)"
    );

    // A real client: libpq 18 through psycopg.
    let out = env.python("negotiate.py", &[&env.url("agent-1", &token, "appdb")]);
    assert!(
        out.status.success() && stdout(&out).lines().last() == Some("OK"),
        "negotiate.py failed:\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
}
