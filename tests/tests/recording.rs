//! Recording keeps its promise, with real OpenSSH through Sluice: what the
//! client has seen is in the journal within the batch bound even when the
//! command then goes quiet, and a terminal's typed input is recorded (as
//! text where the terminal echoed it, hidden where echo was off).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_e2e::sshd::SshEnv;
use sluice_e2e::{run_with_timeout, stderr, stdout};
use std::io::BufRead;
use std::io::BufReader;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// `echo marker; sleep 6`: the marker reaches the client at once; before the
/// fix it reached the journal only when the channel ended, 6 s later.
#[test]
fn output_of_an_idle_command_is_in_the_journal_within_the_bound() {
    let env = SshEnv::start("");
    let token = env.agent_token();
    let journal = env.state_dir.join("journal.log");
    let mut ssh = env
        .ssh_command(&token, &["echo marker-6d1f; sleep 6"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // When the client saw the marker (connection setup on a loaded machine
    // can take seconds; the bound runs from here).
    let mut out = BufReader::new(ssh.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "marker-6d1f\n");
    let seen = Instant::now();
    let found = loop {
        let text = std::fs::read_to_string(&journal).unwrap_or_default();
        // The command line itself is recorded too; look for the output.
        if text.contains(r#""data":"marker-6d1f\n""#) {
            break Some(seen.elapsed());
        }
        if seen.elapsed() > Duration::from_secs(4) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let still_running = ssh.try_wait().unwrap().is_none();
    let status = ssh.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let found = found.expect("the output was not in the journal while the command ran");
    assert!(still_running, "found only after the command ended");
    // The bound is 500 ms; allow for a loaded machine.
    assert!(found < Duration::from_secs(2), "{found:?}");
}

#[test]
fn typed_input_is_recorded_and_input_with_echo_off_is_hidden() {
    let env = SshEnv::start("");
    let token = env.agent_token();
    let secret = "s3cret-Zq9x";
    let ssh = env.ssh_command(&token, &["-tt"]);
    let mut cmd = env.client("python3", &token);
    // This crate's own directory (not the library's `py_dir`, which a shared
    // target directory may have built from another checkout).
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("py/ssh_pty_typed.py");
    cmd.arg(script)
        .arg(secret)
        .arg(ssh.get_program())
        .args(ssh.get_args());
    let out = run_with_timeout(&mut cmd, None, Duration::from_secs(90));
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("got-11"), "{}", stdout(&out));
    let sessions = env.wait_sessions_ended(1);
    let id = sessions[0]["id"].as_str().unwrap();
    let text = env.replay(id, "text");
    assert!(text.contains("typed| echo typed-$((2*3))"), "{text}");
    assert!(
        text.contains(&format!(
            "typed (hidden, echo off)| {}",
            "•".repeat(secret.len())
        )),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("stdout|") && l.ends_with("typed-6")),
        "{text}"
    );
    // The secret is nowhere in the store: not in the journal, not in replay.
    let journal = std::fs::read_to_string(env.state_dir.join("journal.log")).unwrap();
    assert!(!journal.contains(secret));
    assert!(!text.contains(secret));
    // Typed input is in the asciicast as input events.
    let cast = env.replay(id, "asciicast");
    assert!(cast.contains(r#""i","#), "{cast}");
}
