//! A hostile SSH client speaking the protocol directly (russh), not OpenSSH:
//! channels opened and dropped without a request, channels held idle, a
//! denied and an unjudgeable exec. The oracles are outside the gateway: the
//! host's sentinel file and sshd's own log of the sessions it started.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use russh::client;
use russh::keys::PublicKeyOrCertificate;
use russh::ChannelMsg;
use sluice_e2e::sshd::{with_sentinel, SshEnv, CONNECTION};
use std::fs;
use std::sync::Arc;
use std::time::Duration;

struct AnyHostKey;

impl client::Handler for AnyHostKey {
    type Error = russh::Error;
    async fn check_server_key(&mut self, _: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// Runs `command` on a new channel: (exit status, stdout).
async fn exec(h: &client::Handle<AnyHostKey>, command: &[u8]) -> (Option<u32>, Vec<u8>) {
    let mut ch = h.channel_open_session().await.unwrap();
    ch.exec(true, command.to_vec()).await.unwrap();
    let (mut status, mut out) = (None, Vec::new());
    while let Some(m) = ch.wait().await {
        match m {
            ChannelMsg::Data { data } => out.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    (status, out)
}

/// What sshd started: one "Starting session:" line per exec it ran.
fn sessions_started(env: &SshEnv) -> usize {
    fs::read_to_string(&env.sshd.log)
        .unwrap_or_default()
        .matches("Starting session:")
        .count()
}

#[test]
fn requestless_and_refused_channels_run_nothing_upstream() {
    let (env, token, sentinel, s) = with_sentinel();
    let before = sessions_started(&env);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let config = Arc::new(client::Config::default());
        let mut h = client::connect(config, ("127.0.0.1", env.port), AnyHostKey)
            .await
            .unwrap();
        let auth = h.authenticate_password(CONNECTION, token).await.unwrap();
        assert!(auth.success());
        // Past the gateway's bound on early upstream opens, and back again.
        for _ in 0..40 {
            let ch = h.channel_open_session().await.unwrap();
            ch.close().await.unwrap();
        }
        // Held open without a request.
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(h.channel_open_session().await.unwrap());
        }
        let (status, _) = exec(&h, format!("rm -rf {s}").as_bytes()).await;
        assert_eq!(status, Some(126));
        let mut unjudgeable = format!("rm -rf {s} # ").into_bytes();
        unjudgeable.push(0xff);
        let (status, _) = exec(&h, &unjudgeable).await;
        assert_eq!(status, Some(126));
        // Ordinary work still runs on the same connection.
        let (status, out) = exec(&h, format!("cat {s}").as_bytes()).await;
        assert_eq!((status, out.as_slice()), (Some(0), &b"keep\n"[..]));
        drop(idle);
    });
    assert_eq!(fs::read_to_string(&sentinel).unwrap(), "keep\n");
    // sshd started exactly one session: the `cat`.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sessions_started(&env) < before + 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        sessions_started(&env),
        before + 1,
        "{}",
        fs::read_to_string(&env.sshd.log).unwrap()
    );
}
