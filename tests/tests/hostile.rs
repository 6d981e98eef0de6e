//! Hostile peers: malformed, oversized, truncated and stalled clients; upstreams that send
//! garbage or nothing. The gateway must end such connections in bounded time, without
//! blocking anyone else, and keep serving.

// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_e2e::raw::{self, RawConn};
use sluice_e2e::*;
use std::io::Write;
use std::net::Shutdown;
use std::thread;
use std::time::{Duration, Instant};

const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// A connection that sent these bytes and nothing more; returns what came back before close.
#[track_caller]
fn send_and_expect_close(env: &Env, bytes: &[u8]) -> raw::Closed {
    let mut conn = RawConn::connect(env.addr());
    // The gateway may close before everything is written: that is fine.
    let _ = conn.send(bytes);
    conn.read_to_close(CLOSE_WITHIN)
}

/// A quick psql query through the gateway must work, and fast.
#[track_caller]
fn assert_serves(env: &mut Env, url: &str) {
    let started = Instant::now();
    let out = env.psql(url, &["-c", "select 'still-serving'"]);
    assert_eq!(
        ok(&out).trim(),
        "still-serving",
        "gateway log:\n{}",
        env.gateway_log()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "psql took {:?}",
        started.elapsed()
    );
    env.assert_gateway_alive();
}

/// Logs in and returns the authenticated raw connection.
fn authed(env: &Env, token: &str) -> RawConn {
    RawConn::login(env.addr(), "agent-1", "appdb", token).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn hostile_clients_are_cut_off_and_do_not_block_others() {
    let mut env = Env::start();
    let token = env.agent_token();
    let url = env.url("agent-1", &token, "appdb");
    let opened = Instant::now();

    // Stalled clients: silent after connect, after the startup message, after SSLRequest.
    let mut stalled: Vec<(&str, RawConn)> = Vec::new();
    for _ in 0..3 {
        stalled.push(("silent", RawConn::connect(env.addr())));
    }
    let mut after_startup = RawConn::connect(env.addr());
    after_startup
        .send(&raw::startup_packet(&[
            ("user", "agent-1"),
            ("database", "appdb"),
        ]))
        .unwrap();
    let ask = after_startup.read_msg().unwrap().unwrap();
    assert_eq!(ask.tag, b'R');
    stalled.push(("after startup", after_startup));
    let mut after_ssl = RawConn::connect(env.addr());
    after_ssl
        .send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .unwrap();
    let mut s = [0u8; 1];
    std::io::Read::read_exact(&mut after_ssl.stream, &mut s).unwrap();
    assert_eq!(&s, b"S");
    stalled.push(("after SSLRequest", after_ssl));
    // A slowloris: the startup message one byte per second.
    let addr = env.addr();
    let slowloris = thread::spawn(move || {
        let mut conn = RawConn::connect(addr);
        let packet = raw::startup_packet(&[("user", "agent-1"), ("database", "appdb")]);
        let started = Instant::now();
        for b in packet.iter().take(packet.len() - 1) {
            if conn.stream.write_all(&[*b]).is_err() {
                return started.elapsed();
            }
            thread::sleep(Duration::from_secs(1));
            if started.elapsed() > Duration::from_secs(40) {
                break;
            }
        }
        let _ = conn.read_to_close(Duration::from_secs(30));
        started.elapsed()
    });

    // With all of them open, a normal client is served.
    assert_serves(&mut env, &url);

    // Garbage instead of a startup message (an HTTP request).
    let closed = send_and_expect_close(&env, b"GET / HTTP/1.1\r\nHost: sluice\r\n\r\n");
    assert!(!contains_bytes(&closed.bytes, b"HTTP/"), "{closed:?}");
    // Random bytes.
    send_and_expect_close(
        &env,
        &[0xde, 0xad, 0xbe, 0xef, 0x00, 0x01, 0x02, 0x03, 0xff],
    );
    // Startup packets with absurd lengths: 2 GiB, negative, too short, just over 10000.
    for len in [0x7fff_ffff_u32, 0x8000_0000, 0xffff_ffff, 4, 0, 10_001] {
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(&196608u32.to_be_bytes());
        bytes.extend_from_slice(b"user\0agent-1\0");
        send_and_expect_close(&env, &bytes);
    }
    // A startup packet cut short by the client closing.
    let mut conn = RawConn::connect(env.addr());
    let packet = raw::startup_packet(&[("user", "agent-1"), ("database", "appdb")]);
    conn.send(&packet[..packet.len() / 2]).unwrap();
    conn.stream.shutdown(Shutdown::Write).unwrap();
    conn.read_to_close(CLOSE_WITHIN);
    // Protocol 2.0: refused with a protocol error.
    let mut v2 = 16u32.to_be_bytes().to_vec();
    v2.extend_from_slice(&0x0002_0000u32.to_be_bytes());
    v2.extend_from_slice(b"user\0x\0\0");
    let closed = send_and_expect_close(&env, &v2);
    assert!(
        closed.errors().iter().all(|e| e.code() == "08P01"),
        "{:?}",
        closed.errors()
    );
    // SSLRequest with the startup message pipelined behind it in the clear (CVE-2021-3935):
    // no 'S', connection closed.
    let mut pipelined = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    pipelined.extend_from_slice(&packet);
    let closed = send_and_expect_close(&env, &pipelined);
    assert!(closed.bytes.first() != Some(&b'S'), "{closed:?}");
    // A password message with a 2 GiB length.
    let mut conn = RawConn::connect(env.addr());
    conn.send(&packet).unwrap();
    assert_eq!(conn.read_msg().unwrap().unwrap().tag, b'R');
    conn.send(&[b'p', 0x7f, 0xff, 0xff, 0xff, b'x']).unwrap();
    conn.read_to_close(CLOSE_WITHIN);
    // Something other than a password where the password belongs.
    let mut conn = RawConn::connect(env.addr());
    conn.send(&packet).unwrap();
    assert_eq!(conn.read_msg().unwrap().unwrap().tag, b'R');
    conn.send(&raw::query_message("select 1")).unwrap();
    let closed = conn.read_to_close(CLOSE_WITHIN);
    assert!(
        !closed.messages.iter().any(|m| m.tag == b'Z'),
        "no ReadyForQuery without a password: {closed:?}"
    );

    // After authentication: a typed message with a 2 GiB (0x7fffffff) length.
    let mut conn = authed(&env, &token);
    conn.send(&[b'Q', 0x7f, 0xff, 0xff, 0xff, b's', b'e', b'l'])
        .unwrap();
    let closed = conn.read_to_close(CLOSE_WITHIN);
    for e in closed.errors() {
        assert_eq!(e.code(), "08P01", "{e}");
    }
    // An unknown message type ('z'): the session ends (the strict check that the FATAL
    // 08P01 arrives first is `unknown_message_type_after_auth_is_a_fatal_protocol_error`).
    let mut conn = authed(&env, &token);
    conn.send(&raw::message(b'z', b"whatever\0")).unwrap();
    for e in conn.read_to_close(CLOSE_WITHIN).errors() {
        assert_eq!(e.code(), "08P01", "{e}");
    }
    // A negative length and a length below 4.
    for header in [[b'Q', 0xff, 0xff, 0xff, 0xff], [b'Q', 0, 0, 0, 3]] {
        let mut conn = authed(&env, &token);
        conn.send(&header).unwrap();
        conn.read_to_close(CLOSE_WITHIN);
    }
    // A message 100 MiB long (over the 64 MiB limit) whose body is never sent.
    let mut conn = authed(&env, &token);
    conn.send(&[b'Q', 0x06, 0x40, 0x00, 0x00]).unwrap();
    conn.read_to_close(CLOSE_WITHIN);
    // A truncated message, then the client closes: the session ends and is recorded.
    let mut conn = authed(&env, &token);
    conn.send(&[b'Q', 0, 0, 0, 100, b's', b'e', b'l']).unwrap();
    conn.stream.shutdown(Shutdown::Write).unwrap();
    conn.read_to_close(CLOSE_WITHIN);
    // A Query whose string lacks its terminating NUL.
    let mut conn = authed(&env, &token);
    conn.send(&raw::message(b'Q', b"select 1")).unwrap();
    let closed = conn.read_to_close(CLOSE_WITHIN);
    assert!(
        !closed.messages.iter().any(|m| m.tag == b'D'),
        "a malformed Query must not run: {closed:?}"
    );
    // A Bind that lies about its parameter lengths.
    let mut conn = authed(&env, &token);
    let mut parse = b"\0select $1::text\0".to_vec();
    parse.extend_from_slice(&0i16.to_be_bytes());
    let mut bind = b"\0\0".to_vec();
    bind.extend_from_slice(&0i16.to_be_bytes()); // no parameter formats
    bind.extend_from_slice(&1i16.to_be_bytes()); // one parameter …
    bind.extend_from_slice(&1_000_000i32.to_be_bytes()); // … of 1 MB, not there
    bind.extend_from_slice(b"abc");
    let mut bytes = raw::message(b'P', &parse);
    bytes.extend(raw::message(b'B', &bind));
    bytes.extend(raw::message(b'S', &[]));
    conn.send(&bytes).unwrap();
    // Either an error or the end of the session, in bounded time; never a hang.
    conn.stream.set_read_timeout(Some(CLOSE_WITHIN)).unwrap();
    loop {
        match conn.read_msg() {
            Ok(Some(m)) if m.tag == b'E' || m.tag == b'Z' => break,
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => {
                assert!(
                    !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                    "no answer to a malformed Bind within {CLOSE_WITHIN:?}"
                );
                break;
            }
        }
    }
    drop(conn);

    assert_serves(&mut env, &url);

    // The stalled clients are cut off by the gateway's startup/handshake timeouts.
    for (what, mut conn) in stalled {
        let left = Duration::from_secs(25).saturating_sub(opened.elapsed());
        let closed = conn.read_to_close(left.max(Duration::from_secs(1)));
        assert!(
            closed.bytes.is_empty() || closed.errors().len() <= 1,
            "{what}: {closed:?}"
        );
    }
    let slow = slowloris.join().unwrap();
    assert!(
        slow < Duration::from_secs(30),
        "a slowloris client was kept {slow:?}"
    );

    assert_serves(&mut env, &url);
    // Sessions that reached the relay were recorded and ended.
    let sessions = env.wait_sessions_ended(8);
    assert!(sessions.iter().all(|s| s["subject"] == "agent-1"));
    let out = env.sluice(&["audit", "verify"]);
    ok(&out);
}

/// The FATAL 08P01 must reach the client before the close (a regression once: the relay
/// ended the session before writing it, so the client saw a bare close).
#[test]
fn unknown_message_type_after_auth_is_a_fatal_protocol_error() {
    let env = Env::start();
    let token = env.agent_token();
    let mut conn = authed(&env, &token);
    assert_eq!(
        raw::rows(&conn.query("select 'before'"))[0][0].as_deref(),
        Some("before")
    );
    conn.send(&raw::message(b'z', b"whatever\0")).unwrap();
    let closed = conn.read_to_close(CLOSE_WITHIN);
    let errors = closed.errors();
    assert_eq!(
        errors.len(),
        1,
        "expected one FATAL ErrorResponse before the close, got {:?} ({} bytes)\n\
         gateway log:\n{}",
        closed.messages,
        closed.bytes.len(),
        env.gateway_log()
    );
    assert_eq!(errors[0].severity(), "FATAL", "{}", errors[0]);
    assert_eq!(errors[0].code(), "08P01", "{}", errors[0]);
    assert!(
        errors[0].message().contains("unsupported message type"),
        "{}",
        errors[0]
    );
    let sessions = env.wait_sessions_ended(1);
    assert_eq!(sessions[0]["commands"], 1, "{sessions:?}");

    // The same for a message whose length is out of bounds.
    let mut conn = authed(&env, &token);
    conn.send(&[b'Q', 0x7f, 0xff, 0xff, 0xff, b's']).unwrap();
    let closed = conn.read_to_close(CLOSE_WITHIN);
    let errors = closed.errors();
    assert_eq!(errors.len(), 1, "{:?}", closed.messages);
    assert_eq!(errors[0].code(), "08P01", "{}", errors[0]);
    assert!(
        errors[0].message().contains("invalid message"),
        "{}",
        errors[0]
    );
}

/// Waits for a raw login on `connection` to be refused; returns the refusal and how long
/// it took.
fn refused_within(
    env: &Env,
    token: &str,
    connection: &str,
    within: Duration,
) -> (raw::ErrorFields, Duration) {
    let started = Instant::now();
    match RawConn::login_within(env.addr(), "agent-1", connection, token, within) {
        Ok(_) => panic!("a session on {connection} was opened"),
        Err(e) => (e, started.elapsed()),
    }
}

#[test]
fn hostile_upstreams_fail_in_bounded_time() {
    let garbage = HostileUpstream::start(Hostility::Send(b"R\xff\xff\xff\xffgarbage".to_vec()));
    let silent = HostileUpstream::start(Hostility::Silent);
    let closer = HostileUpstream::start(Hostility::Close);
    let bad_ssl_answer = HostileUpstream::start(Hostility::Send(b"X".to_vec()));
    // An AuthenticationRequest of an unknown kind.
    let odd_auth = HostileUpstream::start(Hostility::Send(
        b"R\x00\x00\x00\x08\x00\x00\x00\x63".to_vec(),
    ));
    let mut toml = String::new();
    for (name, upstream, tls) in [
        ("hostile", &garbage, "disable"),
        ("silent", &silent, "disable"),
        ("closer", &closer, "disable"),
        ("badssl", &bad_ssl_answer, "prefer"),
        ("oddauth", &odd_auth, "disable"),
    ] {
        toml.push_str(&format!(
            "[[connections]]\nname = \"{name}\"\nkind = \"postgres\"\nupstream = \"{}\"\n\
             database = \"app\"\nuser = \"app\"\npassword = {{ env = \"APPDB_PASSWORD\" }}\n\
             allow_groups = [\"agents\"]\nupstream_tls = \"{tls}\"\n\n",
            upstream.addr()
        ));
    }
    toml.push_str(
        "[[connections]]\nname = \"nothing\"\nkind = \"postgres\"\nupstream = \"127.0.0.1:1\"\n\
         database = \"app\"\nuser = \"app\"\npassword = { env = \"APPDB_PASSWORD\" }\n\
         allow_groups = [\"agents\"]\n",
    );
    let mut env = Env::builder().extra_toml(&toml).start();
    let token = env.agent_token();
    let url = env.url("agent-1", &token, "appdb");

    // The silent one runs in the background while the others are tried.
    let silent_attempt = {
        let addr = env.addr();
        let token = token.clone();
        thread::spawn(move || {
            let started = Instant::now();
            let r =
                RawConn::login_within(addr, "agent-1", "silent", &token, Duration::from_secs(20));
            (r.err(), started.elapsed())
        })
    };

    for name in ["hostile", "closer", "badssl", "oddauth", "nothing"] {
        let (e, took) = refused_within(&env, &token, name, Duration::from_secs(20));
        assert_eq!(e.severity(), "FATAL", "{name}: {e}");
        assert_eq!(e.code(), "08006", "{name}: {e}");
        assert!(
            e.message()
                .contains(&format!("sluice: cannot open connection \"{name}\"")),
            "{name}: {e}"
        );
        assert!(took < Duration::from_secs(5), "{name}: took {took:?}");
        // psql shows the same.
        let se = failed(&env.psql(&env.url("agent-1", &token, name), &["-c", "select 1"]));
        assert!(se.contains("cannot open connection"), "{name}: {se}");
        assert_serves(&mut env, &url);
    }

    let (e, took) = silent_attempt.join().unwrap();
    let e = e.expect("a session on the silent upstream was opened");
    assert_eq!(e.code(), "08006", "{e}");
    assert!(took < Duration::from_secs(20), "silent upstream: {took:?}");
    assert_serves(&mut env, &url);
}

/// An upstream that answers one byte at a time keeps every single read short, so only an
/// overall deadline on the upstream handshake bounds it (per-read timeouts alone let the
/// client wait as long as the upstream keeps trickling).
#[test]
fn a_trickling_upstream_fails_in_bounded_time() {
    // A plausible AuthenticationOk … ParameterStatus stream, 1 byte every 2 s.
    let mut stream = b"R\x00\x00\x00\x08\x00\x00\x00\x00".to_vec();
    stream.extend_from_slice(b"S\x00\x00\x00\x40");
    stream.extend(std::iter::repeat_n(b'a', 60));
    let drip = HostileUpstream::start(Hostility::Drip(stream, Duration::from_secs(2)));
    let env = Env::builder()
        .extra_toml(&format!(
            "[[connections]]\nname = \"trickle\"\nkind = \"postgres\"\nupstream = \"{}\"\n\
             database = \"app\"\nuser = \"app\"\npassword = {{ env = \"APPDB_PASSWORD\" }}\n\
             allow_groups = [\"agents\"]\nupstream_tls = \"disable\"\n",
            drip.addr()
        ))
        .start();
    let token = env.agent_token();
    let started = Instant::now();
    let attempt = thread::spawn({
        let addr = env.addr();
        move || RawConn::login_within(addr, "agent-1", "trickle", &token, Duration::from_secs(20))
    });
    let result = attempt.join();
    let took = started.elapsed();
    match result {
        Ok(Err(e)) => {
            assert_eq!(e.code(), "08006", "{e}");
            assert!(
                took < Duration::from_secs(20),
                "the upstream handshake took {took:?}"
            );
        }
        Ok(Ok(_)) => panic!("a session on the trickling upstream was opened"),
        Err(_) => panic!(
            "no refusal within 20 s (the client gave up after {took:?}); gateway log:\n{}",
            env.gateway_log()
        ),
    }
}
