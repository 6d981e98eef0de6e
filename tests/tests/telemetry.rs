//! OTLP export: with `[telemetry] otlp_endpoint` set, session and command
//! spans reach an OTLP/HTTP receiver as protobuf.

// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_e2e::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

/// A minimal OTLP/HTTP receiver: answers 200 to every POST and hands over
/// (path, content-type, body).
fn receiver() -> (u16, mpsc::Receiver<(String, String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string();
            let (mut length, mut content_type) = (0usize, String::new());
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                let lower = h.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if let Some(v) = lower.strip_prefix("content-type:") {
                    content_type = v.trim().to_string();
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = tx.send((path, content_type, body));
        }
    });
    (port, rx)
}

#[test]
fn session_and_command_spans_are_exported_over_otlp_http() {
    let (port, received) = receiver();
    let mut env = Env::builder()
        .extra_toml(&format!(
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:{port}\"\nservice_name = \"sluice-e2e\"\n"
        ))
        .start();
    ok(&env.psql(&env.agent_url(), &["-c", "select 42"]));
    // A clean stop flushes the batch exporter.
    env.stop_gateway();
    let mut bodies = Vec::new();
    while let Ok((path, content_type, body)) = received.recv_timeout(Duration::from_secs(15)) {
        assert_eq!(path, "/v1/traces");
        assert_eq!(content_type, "application/x-protobuf");
        bodies.extend(body);
        if contains_bytes(&bodies, b"command") && contains_bytes(&bodies, b"session") {
            break;
        }
    }
    assert!(
        contains_bytes(&bodies, b"sluice-e2e"),
        "service.name exported"
    );
    assert!(contains_bytes(&bodies, b"session"), "a session span");
    assert!(contains_bytes(&bodies, b"command"), "a command span");
}
