//! Authentication and access failures: each is refused with the documented SQLSTATE and
//! message, and none of them reaches the upstream.

// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_e2e::raw::{ErrorFields, RawConn};
use sluice_e2e::*;
use std::fs;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64url_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn b64url_decode(text: &str) -> Vec<u8> {
    let vals: Vec<u32> = text
        .bytes()
        .map(|c| {
            B64.iter()
                .position(|&b| b == c)
                .expect("base64url character") as u32
        })
        .collect();
    let mut out = Vec::new();
    for chunk in vals.chunks(4) {
        let mut n = 0u32;
        for (i, v) in chunk.iter().enumerate() {
            n |= v << (18 - 6 * i);
        }
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// A token issued by a different gateway (its own state dir, hence its own signing key).
fn foreign_token(env: &Env) -> String {
    let other = env.dir.path().join("other");
    fs::create_dir_all(&other).unwrap();
    let config = other.join("other.toml");
    fs::write(
        &config,
        format!(
            "[gateway]\nstate_dir = {:?}\n",
            other.join("state").display().to_string()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(sluice_bin());
    cmd.args([
        "token",
        "issue",
        "--subject",
        "agent-1",
        "--groups",
        "agents",
    ])
    .args(["--ttl", "10m", "--config"])
    .arg(&config);
    let token = ok(&run_with_timeout(&mut cmd, None, COMMAND_TIMEOUT))
        .trim()
        .to_string();
    assert_ne!(token, env.agent_token());
    token
}

/// Asserts psql is refused with `message` and the raw protocol with `code` + `message`.
/// (psql itself refuses to send an empty password, so only the raw client tries that.)
#[track_caller]
fn assert_refused(env: &Env, user: &str, token: &str, connection: &str, code: &str, message: &str) {
    if !token.is_empty() {
        let out = env.psql(&env.url(user, token, connection), &["-w", "-c", "select 1"]);
        let se = failed(&out);
        assert!(
            se.contains(message),
            "psql as {user} on {connection}: expected {message:?} in:\n{se}"
        );
        assert!(se.contains("FATAL"), "{se}");
    }
    let refusal: ErrorFields = match RawConn::login(env.addr(), user, connection, token) {
        Ok(_) => panic!("raw login as {user} on {connection} was accepted"),
        Err(e) => e,
    };
    assert_eq!(refusal.severity(), "FATAL", "{refusal}");
    assert_eq!(refusal.code(), code, "{refusal}");
    assert!(refusal.message().contains(message), "{refusal}");
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn refused_logins_never_reach_the_upstream() {
    let env = Env::builder()
        .pg_conf("log_connections = on")
        .pg_conf("log_disconnections = on")
        .start();
    // Issued first, so that it has expired (5 s leeway) by the time it is used.
    let expiring = env.token("agent-1", &["agents"], "1s");
    let issued = Instant::now();
    // Issued now, checked at the end: a live session ends when its token expires.
    let short = env.token("agent-1", &["agents"], "4s");
    let mut live = RawConn::login(env.addr(), "agent-1", "appdb", &short).unwrap();
    let live_started = Instant::now();

    // The live session's upstream login is logged in two lines, the second
    // possibly after the client is already in: count once both are there.
    let before = wait_until(
        Duration::from_secs(10),
        "the live session's login in the server log",
        || {
            let log = env.pg_log();
            (count(&log, "connection authorized: user=app ") > 0).then_some(log)
        },
    );
    let received_before = count(&before, "connection received");
    assert!(received_before > 0, "log_connections is on:\n{before}");
    let authorized_before = count(&before, "connection authorized: user=app ");

    let good = env.agent_token();
    let auth_failed = "sluice: authentication failed";
    // Garbage tokens.
    assert_refused(&env, "agent-1", "x", "appdb", "28P01", auth_failed);
    assert_refused(&env, "agent-1", "", "appdb", "28P01", auth_failed);
    let oversized = "a".repeat(9000);
    assert_refused(&env, "agent-1", &oversized, "appdb", "28P01", auth_failed);
    // A token from another gateway.
    let foreign = foreign_token(&env);
    assert_refused(&env, "agent-1", &foreign, "appdb", "28P01", auth_failed);
    // Tampering: the gateway's own token with the groups changed, signature kept.
    let analyst = env.token("agent-2", &["analysts"], "10m");
    let parts: Vec<&str> = analyst.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT: {analyst}");
    let claims = String::from_utf8(b64url_decode(parts[1])).unwrap();
    assert!(claims.contains("analysts"), "{claims}");
    // The forgery below is well-formed: re-encoding reproduces the original segment.
    assert_eq!(b64url_encode(claims.as_bytes()), parts[1]);
    let escalated = claims.replace("\"analysts\"", "\"agents\"");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64url_encode(escalated.as_bytes()),
        parts[2]
    );
    assert_refused(&env, "agent-2", &tampered, "appdb", "28P01", auth_failed);
    // The same claims, unsigned (alg none).
    let none = format!(
        "{}.{}.",
        b64url_encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64url_encode(escalated.as_bytes())
    );
    assert_refused(&env, "agent-2", &none, "appdb", "28P01", auth_failed);
    // A flipped signature character.
    let mut flipped = good.clone().into_bytes();
    let last = flipped.len() - 2;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    assert_refused(&env, "agent-1", &flipped, "appdb", "28P01", auth_failed);

    // Authenticated but not allowed: wrong groups, no groups, unknown connection.
    let denied = "sluice: access denied";
    assert_refused(&env, "agent-2", &analyst, "appdb", "28000", denied);
    let nogroups = env.token("agent-3", &[], "10m");
    assert_refused(&env, "agent-3", &nogroups, "appdb", "28000", denied);
    assert_refused(
        &env,
        "agent-1",
        &good,
        "nosuchdb",
        "28000",
        "no connection named",
    );
    assert_refused(&env, "agent-1", &good, "app", "28000", denied);

    // The expired token.
    let wait = Duration::from_secs(7).saturating_sub(issued.elapsed());
    thread::sleep(wait);
    assert_refused(
        &env,
        "agent-1",
        &expiring,
        "appdb",
        "28P01",
        "token expired",
    );

    // Nothing of the above reached PostgreSQL: not even a TCP connection.
    let after = env.pg_log();
    assert_eq!(
        count(&after, "connection received"),
        received_before,
        "a refused login reached the upstream:\n{}",
        &after[before.len()..]
    );
    assert_eq!(
        count(&after, "connection authorized: user=app "),
        authorized_before
    );
    // Control: a good login does show up there.
    ok(&env.psql(&env.url("agent-1", &good, "appdb"), &["-c", "select 1"]));
    let control = env.pg_log();
    assert_eq!(
        count(&control, "connection authorized: user=app database=app"),
        authorized_before + 1,
        "{}",
        &control[after.len()..]
    );

    // The gateway logged the refusals, without the presented tokens.
    let log = env.gateway_log();
    assert!(log.contains("Authentication failed."), "{log}");
    assert!(log.contains("Session refused."), "{log}");
    for secret in [&foreign, &tampered, &none, &flipped] {
        let signature = secret.rsplit('.').next().unwrap_or_default();
        assert!(
            signature.is_empty() || !log.contains(signature),
            "a presented token was logged"
        );
    }

    // The 4 s session was ended by the gateway when its token expired.
    let closed = live.read_to_close(Duration::from_secs(15));
    let lived = live_started.elapsed();
    let errors = closed.errors();
    assert_eq!(errors.len(), 1, "{:?}", closed.messages);
    assert_eq!(errors[0].code(), "57P01", "{}", errors[0]);
    assert!(
        errors[0].message().contains("token expired"),
        "{}",
        errors[0]
    );
    assert!(lived < Duration::from_secs(15), "{lived:?}");
    let sessions = env.wait_sessions_ended(2);
    assert!(
        sessions.iter().any(|s| s["end_reason"] == "token expired"),
        "{sessions:?}"
    );
    // Refused logins opened no session: the two are the live one and the control.
    assert_eq!(sessions.len(), 2, "{sessions:#?}");
}
