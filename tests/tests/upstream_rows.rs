//! Rows from an upstream that break the protocol: while masking is on, a
//! DataRow the gateway cannot split into values never reaches the client
//! (it could hold anything the detectors would have masked); the session ends
//! with a protocol error instead. Found by the `pg_backend` fuzz target.

// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_e2e::raw::{message, RawConn};
use sluice_e2e::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

fn read_message(s: &mut std::net::TcpStream, typed: bool) -> Option<(u8, Vec<u8>)> {
    let mut tag = [0u8; 1];
    if typed {
        s.read_exact(&mut tag).ok()?;
    }
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; (i32::from_be_bytes(len) as usize).saturating_sub(4)];
    s.read_exact(&mut body).ok()?;
    Some((tag[0], body))
}

/// A PostgreSQL stand-in: trusts the login, then answers every query with
/// one text column and `row` as its DataRow body.
fn fake_upstream(row: Vec<u8>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { return };
            let row = row.clone();
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(30))).ok();
                let Some(_) = read_message(&mut s, false) else {
                    return;
                };
                let mut out = message(b'R', &0i32.to_be_bytes());
                let mut key = 7i32.to_be_bytes().to_vec();
                key.extend_from_slice(&9i32.to_be_bytes());
                out.extend(message(b'K', &key));
                out.extend(message(b'Z', b"I"));
                s.write_all(&out).ok();
                while let Some((tag, _)) = read_message(&mut s, true) {
                    if tag == b'X' {
                        return;
                    }
                    let mut desc = 1i16.to_be_bytes().to_vec();
                    desc.extend_from_slice(b"note\0");
                    desc.extend_from_slice(&0i32.to_be_bytes());
                    desc.extend_from_slice(&0i16.to_be_bytes());
                    desc.extend_from_slice(&25i32.to_be_bytes());
                    desc.extend_from_slice(&(-1i16).to_be_bytes());
                    desc.extend_from_slice(&(-1i32).to_be_bytes());
                    desc.extend_from_slice(&0i16.to_be_bytes());
                    let mut out = message(b'T', &desc);
                    out.extend(message(b'D', &row));
                    out.extend(message(b'C', b"SELECT 1\0"));
                    out.extend(message(b'Z', b"I"));
                    if s.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

fn row(values: &[&[u8]], trailing: &[u8]) -> Vec<u8> {
    let mut b = (values.len() as i16).to_be_bytes().to_vec();
    for v in values {
        b.extend_from_slice(&(v.len() as i32).to_be_bytes());
        b.extend_from_slice(v);
    }
    b.extend_from_slice(trailing);
    b
}

fn env_with(port_ok: u16, port_bad: u16) -> Env {
    let mut toml = String::from("[masking]\ndetectors = [\"email\"]\n\n");
    for (name, port) in [("fakeok", port_ok), ("fakebad", port_bad)] {
        toml.push_str(&format!(
            "[[connections]]\nname = \"{name}\"\nkind = \"postgres\"\nupstream = \"127.0.0.1:{port}\"\n\
             database = \"app\"\nuser = \"app\"\npassword = {{ env = \"APPDB_PASSWORD\" }}\n\
             allow_groups = [\"agents\"]\nupstream_tls = \"disable\"\n\n"
        ));
    }
    Env::builder().extra_toml(&toml).start()
}

#[test]
fn a_malformed_row_is_not_passed_unmasked() {
    let email: &[u8] = b"ann@example.com";
    let ok_port = fake_upstream(row(&[email], b""));
    // The same value with a declared length past the end of the row: the
    // gateway cannot split it (before the fix it was passed on unmasked).
    let mut truncated = 1i16.to_be_bytes().to_vec();
    truncated.extend_from_slice(&((email.len() + 1) as i32).to_be_bytes());
    truncated.extend_from_slice(email);
    let bad_port = fake_upstream(truncated);
    let env = env_with(ok_port, bad_port);
    let token = env.agent_token();

    // A well-formed row is masked.
    let mut ok = RawConn::login(env.addr(), "agent-1", "fakeok", &token).unwrap();
    ok.send(&raw::query_message("select note")).unwrap();
    let msgs = ok.read_until_ready();
    let rows = raw::rows(&msgs);
    assert_eq!(rows.len(), 1, "{msgs:?}");
    let value = rows[0][0].clone().unwrap();
    assert!(!value.contains("ann@example.com"), "masked: {value}");

    // A malformed one ends the session, and its bytes never arrive.
    let mut bad = RawConn::login(env.addr(), "agent-1", "fakebad", &token).unwrap();
    bad.send(&raw::query_message("select note")).unwrap();
    let mut seen = Vec::new();
    let mut error = None;
    while let Ok(Some(m)) = bad.read_msg() {
        if m.tag == b'E' {
            error = Some(m.fields());
        }
        seen.push(m);
    }
    assert!(
        !seen
            .iter()
            .any(|m| contains_bytes(&m.body, b"ann@example.com")),
        "the unmasked value reached the client: {seen:?}"
    );
    let error = error.unwrap_or_else(|| {
        panic!(
            "an ErrorResponse before the session ends: {seen:?}\n{}",
            env.gateway_log()
        )
    });
    assert_eq!(error.code(), "08P01");
    assert!(error.message().contains("malformed row"), "{error:?}");
}
