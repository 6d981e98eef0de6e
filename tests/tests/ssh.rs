//! SSH through Sluice with real OpenSSH: an sshd upstream, the ssh, scp and
//! sftp clients, a pty for the interactive shell. Guardrail tests check the
//! host's real state (a sentinel file that must survive).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_e2e::sshd::{with_sentinel, SshEnv, NO_RM, TEST_USER};
use sluice_e2e::{
    failed, ok, py_dir, run_with_timeout, stderr, stdout, HostileUpstream, Hostility,
    COMMAND_TIMEOUT,
};
use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

fn session_ids(env: &SshEnv) -> Vec<String> {
    env.sessions()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn exec_output_and_exit_status_are_relayed_exactly() {
    let env = SshEnv::start("");
    let token = env.agent_token();
    let out = env.ssh(&token, &["printf 'a\\nb\\0c'; echo err >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(out.stdout, b"a\nb\0c");
    assert_eq!(stderr(&out), "err\n");
    assert_eq!(ok(&env.ssh(&token, &["whoami"])), format!("{TEST_USER}\n"));
    // stdin reaches the command, EOF included.
    let out = env.ssh_input(&token, &["wc -c"], &vec![b'x'; 100_000]);
    assert_eq!(ok(&out).trim(), "100000");
    // A killed command's signal comes back (ssh exits 255 on a signal).
    let out = env.ssh(&token, &["kill -TERM $$"]);
    assert_ne!(out.status.code(), Some(0));
    // The session and its commands are recorded, output included.
    let ids = session_ids(&env);
    env.wait_sessions_ended(ids.len());
    let replay = env.replay(&ids[0], "text");
    assert!(replay.contains("exec: printf"), "{replay}");
    assert!(replay.contains("exit 7"), "{replay}");
    assert!(replay.contains("stderr| err"), "{replay}");
    // The gateway-held key never shows up in its log or its state.
    let key = fs::read_to_string(env.dir.path().join("gateway_upstream_key")).unwrap();
    let body = key.lines().nth(2).unwrap();
    assert!(body.len() > 40);
    assert!(!env.gateway_log().contains(body));
    let journal = fs::read_to_string(env.state_dir.join("journal.log")).unwrap();
    assert!(!journal.contains(body));
}

/// Channel windows are 2 MiB on both legs: a transfer several windows long,
/// each way, through an exec's stdin and stdout and through SFTP, waits on
/// window adjustments many times and must still arrive byte for byte. The
/// oracles are the bytes on the host and at the client.
#[test]
fn transfers_longer_than_the_channel_window_arrive_whole_both_ways() {
    let env = SshEnv::start("");
    let token = env.agent_token();
    // 7 MiB that repeats only every 251 bytes (no detector matches it).
    let data: Vec<u8> = (0..7u32 << 20)
        .map(|i| b'a' + (i % 251 % 26) as u8)
        .collect();
    let w = env.work.display().to_string();
    // Up through an exec's stdin, back through its stdout.
    ok(&env.ssh_input(&token, &[&format!("cat > {w}/big-exec.bin")], &data));
    assert!(
        fs::read(env.work.join("big-exec.bin")).unwrap() == data,
        "upload by exec differs"
    );
    let out = env.ssh(&token, &[&format!("cat {w}/big-exec.bin")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data, "download by exec differs");
    // Up and back by SFTP.
    env.scp_up_and_back(&token, &["-s"], "big-sftp.bin", &data);
}

#[test]
fn wrong_token_and_wrong_group_are_refused_and_the_gateway_keeps_serving() {
    let mut env = SshEnv::start("");
    let out = env.ssh("not-a-token", &["true"]);
    let err = failed(&out);
    assert!(err.contains("sluice: authentication failed"), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    // The password method carries the token too.
    let password_only = |token: &str| {
        let mut cmd = env.client("ssh", token);
        cmd.args(["-o", "PreferredAuthentications=password"])
            .args(env.client_options())
            .args([
                "-p",
                &env.port.to_string(),
                "host@127.0.0.1",
                "echo via-password",
            ]);
        run_with_timeout(&mut cmd, None, Duration::from_secs(60))
    };
    assert_eq!(ok(&password_only(&env.agent_token())), "via-password\n");
    let err = failed(&password_only("not-a-token"));
    assert!(err.contains("Permission denied"), "{err}");
    let outsider = env.token("intruder", &["visitors"]);
    let err = failed(&env.ssh(&outsider, &["true"]));
    assert!(err.contains("sluice: access denied"), "{err}");
    assert!(err.contains("allow_groups"), "{err}");
    assert!(env.gateway_alive());
    ok(&env.ssh(&env.agent_token(), &["true"]));
}

#[test]
fn denied_commands_never_reach_the_host() {
    let (env, token, sentinel, s) = with_sentinel();
    let w = env.work.display().to_string();
    let encoded = {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("printf 'rm -rf {s}' | base64 -w0"))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let bypasses = [
        format!("rm -rf {s}"),
        format!("ls; rm -rf {s}"),
        format!("true && rm -rf {s}"),
        format!("false || rm -rf {s}"),
        format!("echo x | rm -rf {s}"),
        format!("echo $(rm -rf {s})"),
        format!("echo `rm -rf {s}`"),
        format!("echo a\nrm -rf {s}"),
        format!("bash -c 'rm -rf {s}'"),
        format!("sh -c \"cd /; rm -rf {s}\""),
        format!("env rm -rf {s}"),
        format!("env -i PATH=/bin rm -rf {s}"),
        format!("sudo rm -rf {s}"),
        format!("sudo -u {TEST_USER} rm -rf {s}"),
        format!("sudo LANG=C rm -rf {s}"),
        format!("/bin/rm -rf {s}"),
        format!("/usr/bin/../bin/rm -rf {s}"),
        format!("r''m -rf {s}"),
        format!("\"rm\" -rf {s}"),
        format!("\\rm -rf {s}"),
        format!("$'\\x72m' -rf {s}"),
        format!("(rm -rf {s})"),
        format!("{{ rm -rf {s}; }}"),
        format!("nice -n 5 timeout 10 rm -rf {s}"),
        format!("echo {s} | xargs rm -rf"),
        format!("find {w} -name sentinel -exec rm -rf {{}} \\;"),
        format!("echo {encoded} | base64 -d | sh"),
        format!("echo rm -rf {s} | bash"),
        format!("bash <<EOF\nrm -rf {s}\nEOF\n"),
        format!("X=rm; $X -rf {s}"),
        format!("\"$(echo rm)\" -rf {s}"),
        format!("eval 'rm -rf {s}'"),
        format!("{{rm,-rf,{s}}}"),
        format!("echo 'unbalanced; rm -rf {s}"),
    ];
    for line in &bypasses {
        let out = env.ssh(&token, &[line]);
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(126),
            "{line:?} was not refused: {err}"
        );
        assert!(err.starts_with("sluice: command denied"), "{line:?}: {err}");
        assert!(
            fs::read_to_string(&sentinel).is_ok_and(|t| t == "keep\n"),
            "{line:?} removed the sentinel"
        );
    }
    // The message names the rule and says what to do next.
    let err = stderr(&env.ssh(&token, &[&format!("rm -rf {s}")]));
    assert!(err.contains("rule \"no-rm\""), "{err}");
    assert!(
        err.contains("Deleting files on hosts is not allowed."),
        "{err}"
    );
    assert!(err.contains("The command was not run."), "{err}");
    // Harmless lines still run, and the sentinel was real.
    assert_eq!(ok(&env.ssh(&token, &[&format!("cat {s}")])), "keep\n");
}

/// A command the gateway cannot judge (not UTF-8) is refused, and the
/// upstream channel opened while it arrived runs nothing: the host's state is
/// the oracle (bash would run the line up to its comment). The next command
/// on a new connection still runs.
#[test]
fn an_unjudgeable_command_runs_nothing_upstream() {
    use std::os::unix::ffi::OsStrExt;
    let (env, token, sentinel, s) = with_sentinel();
    let mut line = format!("rm -rf {s} # ").into_bytes();
    line.push(0xff);
    let mut cmd = env.ssh_command(&token, &[]);
    cmd.arg(std::ffi::OsStr::from_bytes(&line));
    let out = env.run(cmd, COMMAND_TIMEOUT);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(126), "{err}");
    assert!(err.contains("not valid UTF-8"), "{err}");
    assert!(
        fs::read_to_string(&sentinel).is_ok_and(|t| t == "keep\n"),
        "the host ran the refused line"
    );
    assert_eq!(ok(&env.ssh(&token, &[&format!("cat {s}")])), "keep\n");
}

/// Issue 13: the POSIX `for NAME do` form and programs that run programs
/// (the inner command is judged, or the part may run anything, which every
/// deny rule on programs matches). Ordinary work still runs.
#[test]
fn launchers_and_loops_cannot_hide_a_denied_program() {
    let (env, token, sentinel, s) = with_sentinel();
    let bypasses = [
        format!("set -- 1; for x do rm -rf {s}; done"),
        format!("unshare rm -rf {s}"),
        format!("unshare --user rm -rf {s}"),
        format!("script -qc 'rm -rf {s}' /dev/null"),
        "script -q /dev/null".to_string(),
        format!("strace -o /dev/null rm -rf {s}"),
        format!("strace -f rm -rf {s}"),
        format!("sed -n '1e rm -rf {s}' /etc/hostname"),
        format!("awk 'BEGIN{{system(\"rm -rf {s}\")}}'"),
        format!("prlimit --nofile=1024 rm -rf {s}"),
        format!("setpriv --nnp rm -rf {s}"),
        format!("chrt -o 0 rm -rf {s}"),
        format!("env rm -rf {s} -S true"),
        format!("perl -e 'unlink q({s})'"),
        format!("x='a[$(rm -rf {s})]'; echo $((x))"),
    ];
    for line in &bypasses {
        let out = env.ssh(&token, &[line]);
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(126),
            "{line:?} was not refused: {err}"
        );
        assert!(err.starts_with("sluice: "), "{line:?}: {err}");
        assert!(
            fs::read_to_string(&sentinel).is_ok_and(|t| t == "keep\n"),
            "{line:?} removed the sentinel"
        );
    }
    for line in [
        "ls -la",
        "cat /etc/hostname | grep -c . | wc -l",
        "ps aux",
        "df -h",
        "awk -F: '{print $1}' /etc/passwd",
        "sed -n '1p' /etc/hostname",
        "for f in /etc/hostname; do wc -c \"$f\"; done",
        "nice -n 5 uname -a",
    ] {
        let out = env.ssh(&token, &[line]);
        assert!(out.status.success(), "{line:?}: {}", stderr(&out));
    }
}

/// Issue 13: a line that mentions scp is not a file transfer; its output is
/// masked and recorded like any command's.
#[test]
fn a_line_that_mentions_scp_is_masked_and_recorded() {
    let env = SshEnv::start(
        r#"
[masking]
detectors = ["email"]
"#,
    );
    let token = env.agent_token();
    let secret = env.work.join("credentials");
    ok(&env.as_user(&format!(
        "echo 'owner alice.smith@example.com' > {}",
        secret.display()
    )));
    let line = format!("cat {}; true || scp -t /tmp", secret.display());
    let out = env.ssh(&token, &[&line]);
    let text = ok(&out);
    assert!(text.starts_with("owner "), "{text}");
    assert!(!text.contains("alice.smith@example.com"), "{text}");
    let ids = session_ids(&env);
    env.wait_sessions_ended(1);
    let replay = env.replay(&ids[0], "text");
    assert!(replay.contains("owner "), "{replay}");
    assert!(!replay.contains("alice.smith@example.com"), "{replay}");
}

#[test]
fn review_rules_name_the_approval_request() {
    let env = SshEnv::start(
        r#"
[[rules]]
name = "restarts"
match = { command = ["systemctl restart *"] }
action = "review"
approvers = ["oncall"]
mode = "retry"
message = "Service restarts need an on-call approval."
"#,
    );
    let out = env.ssh(
        &env.agent_token(),
        &["echo before; systemctl restart nginx"],
    );
    assert_eq!(out.status.code(), Some(126));
    let err = stderr(&out);
    assert!(
        err.contains("Service restarts need an on-call approval."),
        "{err}"
    );
    assert!(err.contains("sluice approvals approve"), "{err}");
    assert!(stdout(&out).is_empty(), "nothing ran: {}", stdout(&out));
}

#[test]
fn interactive_shell_through_a_pty_is_recorded_and_replays_as_asciicast() {
    let env = SshEnv::start("");
    let token = env.agent_token();
    let mut ssh = env.ssh_command(&token, &["-tt"]);
    let mut cmd = env.client("python3", &token);
    cmd.arg(py_dir().join("ssh_pty.py"))
        .arg(ssh.get_program())
        .args(ssh.get_args());
    let _ = &mut ssh;
    let out = run_with_timeout(&mut cmd, None, Duration::from_secs(90));
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let screen = stdout(&out);
    assert!(screen.contains("hello-42"), "{screen}");
    assert!(screen.contains("50 132"), "{screen}");
    let ids = session_ids(&env);
    env.wait_sessions_ended(1);
    let cast = env.replay(&ids[0], "asciicast");
    let lines: Vec<serde_json::Value> = cast
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["version"], 2);
    assert_eq!(lines[0]["width"], 120);
    assert_eq!(lines[0]["height"], 40);
    let output: String = lines[1..]
        .iter()
        .filter(|e| e[1] == "o")
        .map(|e| e[2].as_str().unwrap().to_string())
        .collect();
    assert!(output.contains("hello-42"), "{cast}");
    assert!(output.contains("50 132"), "{cast}");
    assert!(
        lines.iter().any(|e| e[1] == "r" && e[2] == "132x50"),
        "{cast}"
    );
    let text = env.replay(&ids[0], "text");
    assert!(text.contains("shell (pty)"), "{text}");
    assert!(text.contains("terminal 120x40"), "{text}");
}

#[test]
fn shells_can_be_denied_as_a_whole() {
    let env = SshEnv::start(
        r#"
[[rules]]
name = "no-shells"
match = { ssh = ["shell"] }
action = "deny"
message = "Use exec with explicit commands."
"#,
    );
    let out = env.ssh_input(&env.agent_token(), &[], b"echo should-not-run\n");
    assert_eq!(out.status.code(), Some(126));
    let err = stderr(&out);
    assert!(err.contains("no-shells"), "{err}");
    assert!(!stdout(&out).contains("should-not-run"));
    // A command on a terminal takes keystrokes nobody judges (a pager's
    // `!cmd`): it is a shell as far as the rule goes. Without one it runs.
    let sentinel = env.work.join("sentinel");
    let touch = format!("touch {}", sentinel.display());
    let out = env.ssh(&env.agent_token(), &["-tt", &touch]);
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
    assert!(!sentinel.exists(), "the command on a terminal ran");
    ok(&env.ssh(&env.agent_token(), &[&touch]));
    assert!(sentinel.exists());
}

#[test]
fn scp_and_sftp_transfers_work_and_are_recorded_as_metadata() {
    let env = SshEnv::start("");
    let token = env.agent_token();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let w = env.work.display().to_string();
    // Legacy scp protocol (an exec of scp -t / scp -f).
    env.scp_up_and_back(&token, &["-O"], "up-scp.bin", &data);
    // scp over SFTP (the default) and sftp itself.
    let local = env.dir.path().join("payload.bin");
    fs::write(&local, &data).unwrap();
    ok(&env.scp(
        &token,
        &[local.to_str().unwrap(), &format!("host:{w}/up-sftp.bin")],
    ));
    assert_eq!(fs::read(env.work.join("up-sftp.bin")).unwrap(), data);
    let got = env.dir.path().join("got-sftp.bin");
    let out = env.sftp(
        &token,
        &format!("get {w}/up-sftp.bin {}\nrm {w}/up-scp.bin\n", got.display()),
    );
    ok(&out);
    assert_eq!(fs::read(&got).unwrap(), data);
    assert!(!env.work.join("up-scp.bin").exists());
    let ids = session_ids(&env);
    env.wait_sessions_ended(ids.len());
    let all: String = ids.iter().map(|id| env.replay(id, "text")).collect();
    assert!(
        all.contains(&format!("file upload: {w}/up-scp.bin")),
        "{all}"
    );
    assert!(
        all.contains(&format!("file download: {w}/up-scp.bin")),
        "{all}"
    );
    assert!(
        all.contains(&format!("file upload: {w}/up-sftp.bin (300000 bytes)")),
        "{all}"
    );
    assert!(
        all.contains(&format!("file download: {w}/up-sftp.bin (300000 bytes)")),
        "{all}"
    );
    assert!(
        all.contains(&format!("file remove: {w}/up-scp.bin")),
        "{all}"
    );
    assert!(all.contains("subsystem sftp"), "{all}");
}

#[test]
fn file_transfer_is_by_policy() {
    let env = SshEnv::start(
        r#"
[[rules]]
name = "no-file-transfer"
match = { ssh = ["scp", "sftp"] }
action = "deny"
message = "Copy files through the deployment pipeline."
"#,
    );
    let token = env.agent_token();
    let local = env.dir.path().join("f.txt");
    fs::write(&local, "x").unwrap();
    let w = env.work.display().to_string();
    let err = failed(&env.scp(
        &token,
        &["-O", local.to_str().unwrap(), &format!("host:{w}/f")],
    ));
    assert!(err.contains("no-file-transfer"), "{err}");
    let err = failed(&env.sftp(&token, &format!("put {} {w}/f\n", local.display())));
    assert!(
        err.contains("Copy files through the deployment pipeline."),
        "{err}"
    );
    assert!(!env.work.join("f").exists());
    // A subsystem request by name, through plain ssh -s.
    let out = env.ssh(&token, &["-s", "sftp"]);
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
    // An unknown subsystem is allowed by policy here and refused by sshd: a clean failure.
    let out = env.ssh(&token, &["-s", "no-such-subsystem"]);
    assert_ne!(out.status.code(), Some(0));
    // Ordinary commands still work.
    ok(&env.ssh(&token, &["true"]));
}

/// An allow-list that permits only scp transfers: a line that merely mentions
/// scp, or an scp whose options make it run another program, is not "an scp"
/// and falls to the connection's default (deny). The host's sentinel is the
/// oracle: none of these lines may run anything there.
/// An allow rule on `cat` does not carry a write redirection: `cat - > FILE`
/// (here a stand-in for `~/.ssh/rc`, which sshd runs at every login) is
/// refused and writes nothing, while the same `cat` without one runs.
#[test]
fn an_allow_rule_without_writes_refuses_a_write_redirection() {
    let env = SshEnv::start(
        r#"
[[connections]]
name = "files"
kind = "ssh"
upstream = "{SSHD}"
user = "sluice-e2e"
private_key = { file = "{KEY}" }
host_key = "{HOST_KEY}"
allow_groups = ["agents"]
default_action = "deny"

[[rules]]
name = "reads"
connections = ["files"]
match = { command = ["cat *"] }
action = "allow"
"#,
    );
    let token = env.agent_token();
    let w = env.work.display().to_string();
    let target = env.work.join("rc");
    let t = target.display().to_string();
    for line in [
        format!("cat - > {t}"),
        format!("cat - >> {t}"),
        format!("cat - 1>{t}"),
        format!("{{ cat -; }} > {t}"),
        format!("(cat -) > {t}"),
        format!("cat - > {w}/./rc"),
        format!("sh -c 'cat - > {t}'"),
    ] {
        let mut cmd = env.ssh_command_to("files", &token, &[&line]);
        let out = run_with_timeout(&mut cmd, Some(b"touch /tmp/owned\n"), COMMAND_TIMEOUT);
        assert_eq!(out.status.code(), Some(126), "{line:?}: {}", stderr(&out));
        assert!(!target.exists(), "{line:?} wrote on the host");
    }
    // The same cat without a redirection runs.
    let mut cmd = env.ssh_command_to("files", &token, &["cat -"]);
    let out = run_with_timeout(&mut cmd, Some(b"hello\n"), COMMAND_TIMEOUT);
    assert_eq!(ok(&out), "hello\n");
    let mut cmd = env.ssh_command_to("files", &token, &["cat - 2>/dev/null"]);
    let out = run_with_timeout(&mut cmd, Some(b"hello\n"), COMMAND_TIMEOUT);
    assert_eq!(ok(&out), "hello\n");
}

#[test]
fn an_scp_allow_rule_admits_only_a_plain_transfer() {
    let env = SshEnv::start(
        r#"
[[connections]]
name = "files"
kind = "ssh"
upstream = "{SSHD}"
user = "sluice-e2e"
private_key = { file = "{KEY}" }
host_key = "{HOST_KEY}"
allow_groups = ["agents"]
default_action = "deny"

[[rules]]
name = "transfers-only"
connections = ["files"]
match = { ssh = "scp" }
action = "allow"
"#,
    );
    let token = env.agent_token();
    let w = env.work.display().to_string();
    let sentinel = env.work.join("sentinel");
    let s = sentinel.display().to_string();
    let planted = env.work.join("bin/scp");
    fs::create_dir_all(planted.parent().unwrap()).unwrap();
    fs::write(&planted, format!("#!/bin/sh\ntouch {s}\n")).unwrap();
    fs::set_permissions(
        &planted,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    for line in [
        format!("touch {s}; true || scp -t {w}"),
        format!("scp '-oProxyCommand=touch {s}' -t {w}"),
        format!("scp -S /usr/bin/touch -t {s}"),
        format!("scp -t {w} && touch {s}"),
        format!("sh -c 'scp -t {w}; touch {s}'"),
        // A program merely named scp is not the host's scp.
        format!("{w}/bin/scp -t {w}"),
    ] {
        let mut cmd = env.ssh_command_to("files", &token, &[&line]);
        let out = run_with_timeout(&mut cmd, None, COMMAND_TIMEOUT);
        assert_eq!(out.status.code(), Some(126), "{line:?}: {}", stderr(&out));
        assert!(!sentinel.exists(), "{line:?} ran on the host");
    }
    // The plain transfer the rule is for still works.
    let local = env.dir.path().join("f.txt");
    fs::write(&local, "payload").unwrap();
    let out = env.scp(
        &token,
        &[
            "-O",
            local.to_str().unwrap(),
            &format!("files@127.0.0.1:{w}/f"),
        ],
    );
    ok(&out);
    assert_eq!(fs::read_to_string(env.work.join("f")).unwrap(), "payload");
}

/// A one-shot TCP echo server on the loopback; returns its port.
fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming().take(4) {
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn forwarding_is_denied_unless_a_rule_allows_it() {
    let env = SshEnv::start("");
    let token = env.agent_token();
    let port = echo_server();
    // -W is a direct-tcpip channel, like each -L or -D connection.
    let out = env.ssh_input(&token, &["-W", &format!("127.0.0.1:{port}")], b"ping");
    let err = failed(&out);
    assert!(err.contains("administratively prohibited"), "{err}");
    // -L: the listener opens, each connection through it is refused.
    let lport = sluice_sandbox::free_port();
    let mut fwd = env.ssh_command(&token, &["-N", "-L", &format!("{lport}:127.0.0.1:{port}")]);
    let mut child = fwd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut conn = loop {
        if let Ok(c) = std::net::TcpStream::connect(("127.0.0.1", lport)) {
            break c;
        }
        assert!(Instant::now() < deadline, "ssh -L did not listen");
        std::thread::sleep(Duration::from_millis(50));
    };
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = conn.write_all(b"ping");
    let mut buf = [0u8; 4];
    assert!(
        !matches!(conn.read(&mut buf), Ok(4)),
        "data went through -L"
    );
    let _ = child.kill();
    let _ = child.wait();
    // -R: the remote listener is refused.
    let out = env.ssh(
        &token,
        &[
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            &format!("0:127.0.0.1:{port}"),
            "sleep 1",
        ],
    );
    let err = failed(&out);
    assert!(err.contains("remote port forwarding failed"), "{err}");
    // -A: agent forwarding is refused, the command still runs without an agent.
    let sock = env.dir.path().join("agent.sock");
    let mut agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    sluice_e2e::wait_until(Duration::from_secs(10), "ssh-agent socket", || {
        sock.exists().then_some(())
    });
    let mut cmd = env.ssh_command(&token, &["-A", "echo ${SSH_AUTH_SOCK:-none}"]);
    cmd.env("SSH_AUTH_SOCK", &sock);
    let out = run_with_timeout(&mut cmd, None, Duration::from_secs(60));
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(ok(&out).trim(), "none");
    // Every refusal is audited.
    let ids = session_ids(&env);
    env.wait_sessions_ended(ids.len());
    let all: String = ids.iter().map(|id| env.replay(id, "text")).collect();
    assert!(
        all.contains(&format!("port-forward: direct-tcpip 127.0.0.1:{port}")),
        "{all}"
    );
    assert!(all.contains("remote-forward: tcpip-forward"), "{all}");
    assert!(all.contains("agent-forward"), "{all}");
}

#[test]
fn forwarding_allowed_by_a_rule_relays_bytes() {
    let env = SshEnv::start(
        r#"
[[rules]]
name = "tunnels"
match = { ssh = ["port-forward"] }
action = "allow"
"#,
    );
    let port = echo_server();
    let out = env.ssh_input(
        &env.agent_token(),
        &["-W", &format!("127.0.0.1:{port}")],
        b"ping",
    );
    assert_eq!(out.stdout, b"ping", "{}", stderr(&out));
}

#[test]
fn a_second_channel_on_the_same_connection_is_judged_too() {
    let env = SshEnv::start(NO_RM);
    let token = env.agent_token();
    let sentinel = env.work.join("sentinel");
    ok(&env.as_user(&format!("echo keep > {}", sentinel.display())));
    let control = env.dir.path().join("cm");
    let mux = |args: &[&str]| {
        let mut all = vec![
            "-o".to_string(),
            format!("ControlPath={}", control.display()),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        env.ssh(&token, &refs)
    };
    assert_eq!(
        ok(&mux(&[
            "-o",
            "ControlMaster=yes",
            "-o",
            "ControlPersist=30",
            "echo first"
        ])),
        "first\n"
    );
    // The master goes to the background once its first command is done;
    // wait until it answers on the control socket.
    sluice_e2e::wait_until(Duration::from_secs(10), "the control master", || {
        mux(&["-O", "check"]).status.success().then_some(())
    });
    // These go over the master's connection as new channels.
    assert_eq!(
        ok(&mux(&["-o", "ControlMaster=no", "echo second"])),
        "second\n"
    );
    let out = mux(&[
        "-o",
        "ControlMaster=no",
        &format!("rm -rf {}", sentinel.display()),
    ]);
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
    assert!(sentinel.exists());
    let _ = mux(&["-O", "exit"]);
    // One session: every channel was on the same connection.
    let sessions = env.wait_sessions_ended(1);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0]["commands"], 3);
}

#[test]
fn environment_requests_are_filtered() {
    let env = SshEnv::start("");
    let out = env.ssh(
        &env.agent_token(),
        &[
            "-o",
            "SetEnv=LC_TEST=kept LD_PRELOAD=/tmp/evil.so BASH_ENV=/tmp/x",
            "echo ${LC_TEST:-none} ${LD_PRELOAD:-none} ${BASH_ENV:-none}",
        ],
    );
    assert_eq!(ok(&out).trim(), "kept none none");
    // A locale in an encoding whose bytes the host's shell could read as
    // quotes or backslashes does not reach it; a UTF-8 or C one does.
    let out = env.ssh(
        &env.agent_token(),
        &[
            "-o",
            "SetEnv=LC_CTYPE=zh_CN.GBK LC_MESSAGES=C.UTF-8",
            "echo ${LC_CTYPE:-none} ${LC_MESSAGES:-none}",
        ],
    );
    assert_eq!(ok(&out).trim(), "none C.UTF-8");
    // A refused variable alone does not fail the exec that follows it
    // (OpenSSH asks no reply to `env`; a late one was read as the exec's).
    let out = env.ssh(
        &env.agent_token(),
        &["-o", "SetEnv=BASH_ENV=/tmp/x", "echo ran"],
    );
    assert_eq!(ok(&out).trim(), "ran");
}

#[test]
fn output_is_masked_across_chunk_boundaries() {
    let env = SshEnv::start(
        r#"
[masking]
detectors = ["email", "credit_card"]
"#,
    );
    let out = env.ssh(
        &env.agent_token(),
        &["printf 'contact alice.smith@exa'; sleep 0.3; printf 'mple.com card 4111 1111 1111 1111\\n'; echo bob@example.org >&2"],
    );
    let text = ok(&out);
    assert!(!text.contains("alice.smith@example.com"), "{text}");
    assert!(!text.contains("4111 1111 1111 1111"), "{text}");
    assert!(text.starts_with("contact "), "{text}");
    assert!(
        !stderr(&out).contains("bob@example.org"),
        "{}",
        stderr(&out)
    );
    let ids = session_ids(&env);
    env.wait_sessions_ended(1);
    let replay = env.replay(&ids[0], "text");
    assert!(!replay.contains("alice.smith@example.com"), "{replay}");
    assert!(replay.contains("masked: "), "{replay}");
}

#[test]
fn upstream_host_key_mismatch_is_refused_and_audited() {
    let mut env = SshEnv::start(
        r#"
[[connections]]
name = "impostor"
kind = "ssh"
upstream = "{SSHD}"
user = "sluice-e2e"
private_key = { file = "{KEY}" }
host_key = "{OTHER_KEY}"
allow_groups = ["agents"]
"#,
    );
    let token = env.agent_token();
    let mut cmd = env.client("ssh", &token);
    cmd.args(env.client_options()).args([
        "-p",
        &env.port.to_string(),
        "impostor@127.0.0.1",
        "echo ran",
    ]);
    let out = run_with_timeout(&mut cmd, None, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(255));
    let err = stderr(&out);
    assert!(err.contains("does not match the pinned host_key"), "{err}");
    assert!(!stdout(&out).contains("ran"));
    let sessions = env.wait_sessions_ended(1);
    let reason = sessions[0]["end_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("host_key"), "{sessions:?}");
    assert!(
        env.gateway_log().contains("SHA256:"),
        "the log names the presented key"
    );
    assert!(env.gateway_alive());
    ok(&env.ssh(&token, &["true"]));
}

#[test]
fn hostile_upstreams_fail_cleanly_and_the_gateway_keeps_serving() {
    let garbage = HostileUpstream::start(Hostility::Send(vec![0xff; 4096]));
    let banner = HostileUpstream::start(Hostility::Drip(
        b"junk line before the banner\r\n".repeat(100_000),
        Duration::from_millis(1),
    ));
    let silent = HostileUpstream::start(Hostility::Silent);
    let closes = HostileUpstream::start(Hostility::Close);
    let mut extra = String::new();
    for (name, h) in [
        ("garbage", &garbage),
        ("banner", &banner),
        ("silent", &silent),
        ("closes", &closes),
    ] {
        extra.push_str(&format!(
            "[[connections]]\nname = \"{name}\"\nkind = \"ssh\"\nupstream = \"{}\"\nuser = \"x\"\n\
             private_key = {{ file = \"{{KEY}}\" }}\nhost_key = \"{{HOST_KEY}}\"\nallow_groups = [\"agents\"]\n\n",
            h.addr()
        ));
    }
    let mut env = SshEnv::start(&extra);
    let token = env.agent_token();
    for name in ["garbage", "banner", "silent", "closes"] {
        let started = Instant::now();
        let mut cmd = env.client("ssh", &token);
        cmd.args(env.client_options()).args([
            "-p",
            &env.port.to_string(),
            &format!("{name}@127.0.0.1"),
            "true",
        ]);
        let out = run_with_timeout(&mut cmd, None, Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(255), "{name}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("sluice: cannot open connection \"{name}\"")),
            "{name}: {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "{name} took {:?}",
            started.elapsed()
        );
        assert!(env.gateway_alive(), "{name}");
    }
    ok(&env.ssh(&token, &["true"]));
}

#[test]
fn a_held_command_runs_on_the_open_channel_after_approval() {
    let env = SshEnv::start(
        r#"
[[rules]]
name = "reviewed-touch"
match = { program = ["touch"] }
action = "review"
approvers = ["oncall"]
timeout = "5m"
message = "Creating files needs an on-call approval."
"#,
    );
    let marker = env.work.join("approved");
    let token = env.agent_token();
    let oncall = env.token("olga", &["oncall"]);
    let mut cmd = env.ssh_command(
        &token,
        &[&format!("touch {} && echo done", marker.display())],
    );
    let client =
        std::thread::spawn(move || run_with_timeout(&mut cmd, None, Duration::from_secs(90)));
    let request = sluice_e2e::wait_until(Duration::from_secs(30), "a pending approval", || {
        let out = env.approvals(&oncall, &["list", "--json"]);
        let list: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).ok()?;
        list.into_iter().next()
    });
    let id = request["id"].as_str().unwrap().to_string();
    assert_eq!(request["rule"], "reviewed-touch");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!marker.exists(), "nothing runs before approval");
    ok(&env.approvals(&oncall, &["approve", &id]));
    let out = client.join().unwrap();
    assert_eq!(ok(&out), "done\n");
    let err = stderr(&out);
    assert!(
        err.contains(&format!("holding it for approval {id}")),
        "{err}"
    );
    assert!(marker.exists());
}

#[test]
fn remote_forwarding_allowed_by_a_rule_relays_connections_back() {
    let env = SshEnv::start(
        r#"
[[rules]]
name = "reverse-tunnels"
match = { ssh = ["remote-forward"] }
action = "allow"
"#,
    );
    let port = echo_server();
    let rport = sluice_sandbox::free_port();
    let mut cmd = env.ssh_command(
        &env.agent_token(),
        &[
            "-o",
            "ExitOnForwardFailure=yes",
            "-N",
            "-R",
            &format!("{rport}:127.0.0.1:{port}"),
        ],
    );
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The upstream host listens on rport; its connections come back through the gateway.
    let mut conn = sluice_e2e::wait_until(Duration::from_secs(20), "the remote listener", || {
        std::net::TcpStream::connect(("127.0.0.1", rport)).ok()
    });
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_session_ends_when_its_token_expires() {
    let env = SshEnv::start("");
    let out = env.sluice(&[
        "token",
        "issue",
        "--subject",
        "agent-1",
        "--groups",
        "agents",
        "--ttl",
        "3s",
    ]);
    let token = ok(&out).trim().to_string();
    let started = Instant::now();
    let out = env.ssh(&token, &["sleep 60; echo finished"]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(!stdout(&out).contains("finished"));
    let err = stderr(&out);
    assert!(
        err.contains("sluice: session ended: token expired"),
        "{err}"
    );
    let sessions = env.wait_sessions_ended(1);
    assert_eq!(sessions[0]["end_reason"], "token expired");
}
