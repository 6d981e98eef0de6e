//! Port forwarding: `-L`/`-D` (direct-tcpip channels) and `-R`
//! (tcpip-forward), each decided by policy as `CommandKind::Forward`.

use crate::server::{decide, Decided, Live};
use russh::{Channel, ChannelMsg};
use sluice_core::sync::MutexExt;
use sluice_core::{CommandKind, Outcome};
use std::sync::Arc;

/// A client's direct-tcpip channel (`ssh -L`, `ssh -D`).
pub(crate) async fn direct(
    live: Arc<Live>,
    channel: Channel<russh::server::Msg>,
    host: String,
    port: u32,
    originator: String,
    originator_port: u32,
    reply: russh::server::ChannelOpenHandle,
) {
    let decided = decide(
        &live,
        CommandKind::Forward {
            kind: "port-forward".into(),
        },
        format!("direct-tcpip {host}:{port}"),
    )
    .await;
    let command_id = match decided {
        Decided::Forward(id) => id,
        Decided::Refuse(denial) => {
            tracing::info!(message = "Port forwarding refused.", session = %live.handle.id(), target = %format!("{host}:{port}"), reason = %denial.message);
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return;
        }
    };
    let recorder = live.handle.recorder();
    let upstream = match live.upstream().await {
        Ok(u) => u,
        Err(e) => {
            reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
            recorder.finished(
                command_id,
                Outcome {
                    error: Some(e.to_string()),
                    ..Outcome::default()
                },
            );
            return;
        }
    };
    let started = std::time::Instant::now();
    match upstream
        .handle
        .channel_open_direct_tcpip(host, port, originator, originator_port)
        .await
    {
        Ok(up) => {
            reply.accept().await;
            let bytes = pump(channel, up, live.closed.clone()).await;
            recorder.finished(
                command_id,
                Outcome {
                    bytes,
                    tag: Some("closed".into()),
                    duration_us: started.elapsed().as_micros() as u64,
                    ..Outcome::default()
                },
            );
        }
        Err(e) => {
            reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
            recorder.finished(
                command_id,
                Outcome {
                    error: Some(format!("the upstream could not connect: {e}")),
                    ..Outcome::default()
                },
            );
        }
    }
}

/// A client's `tcpip-forward` global request (`ssh -R`). Decided inline:
/// the SSH protocol wants the answer before the connection goes on.
pub(crate) async fn remote(
    live: &Live,
    address: &str,
    port: &mut u32,
) -> Result<bool, russh::Error> {
    let decided = decide(
        live,
        CommandKind::Forward {
            kind: "remote-forward".into(),
        },
        format!("tcpip-forward {address}:{port}"),
    )
    .await;
    let command_id = match decided {
        Decided::Forward(id) => id,
        Decided::Refuse(denial) => {
            tracing::info!(message = "Remote forwarding refused.", session = %live.handle.id(), reason = %denial.message);
            return Ok(false);
        }
    };
    let upstream = match live.upstream().await {
        Ok(u) => u,
        Err(_) => return Ok(false),
    };
    // Registered before asking: the upstream may open a forwarded channel
    // as soon as it listens, before its reply arrives.
    let requested = (address.to_string(), *port);
    upstream.forwards.locked().push(requested.clone());
    let unregister = || {
        let mut f = upstream.forwards.locked();
        if let Some(i) = f.iter().position(|r| *r == requested) {
            f.remove(i);
        }
    };
    match upstream.handle.tcpip_forward(address, *port).await {
        Ok(bound) => {
            if bound != 0 && bound != *port {
                unregister();
                *port = bound;
                upstream
                    .forwards
                    .locked()
                    .push((address.to_string(), bound));
            }
            live.handle.recorder().finished(
                command_id,
                Outcome {
                    tag: Some(format!("listening on {address}:{port}")),
                    ..Outcome::default()
                },
            );
            Ok(true)
        }
        Err(e) => {
            unregister();
            live.handle.recorder().finished(
                command_id,
                Outcome {
                    error: Some(format!("the upstream refused the forward: {e}")),
                    ..Outcome::default()
                },
            );
            Ok(false)
        }
    }
}

pub(crate) async fn cancel_remote(
    live: &Live,
    address: &str,
    port: u32,
) -> Result<bool, russh::Error> {
    let Ok(upstream) = live.upstream().await else {
        return Ok(false);
    };
    let known = upstream
        .forwards
        .lock()
        .map(|mut f| {
            let before = f.len();
            f.retain(|(a, p)| !(a == address && *p == port));
            f.len() != before
        })
        .unwrap_or(false);
    if !known {
        return Ok(false);
    }
    Ok(upstream
        .handle
        .cancel_tcpip_forward(address, port)
        .await
        .is_ok())
}

/// Relays bytes both ways between two channels until both sides are done;
/// returns the bytes relayed.
pub(crate) async fn pump<A, B>(
    a: Channel<A>,
    b: Channel<B>,
    mut closed: tokio::sync::watch::Receiver<bool>,
) -> u64
where
    A: From<(russh::ChannelId, ChannelMsg)> + Send + Sync + 'static,
    B: From<(russh::ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    let (mut a_rx, a_tx) = a.split();
    let (mut b_rx, b_tx) = b.split();
    let ab = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(m) = a_rx.wait().await {
            match m {
                ChannelMsg::Data { data } => {
                    n += data.len() as u64;
                    if b_tx.data_bytes(data).await.is_err() {
                        break;
                    }
                }
                ChannelMsg::Eof => {
                    let _ = b_tx.eof().await;
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        let _ = b_tx.close().await;
        n
    });
    let mut n = 0u64;
    loop {
        let m = tokio::select! {
            m = b_rx.wait() => m,
            // The client connection is gone: stop, so the upstream goes too.
            _ = crate::server::connection_gone(&mut closed) => None,
        };
        let Some(m) = m else { break };
        match m {
            ChannelMsg::Data { data } => {
                n += data.len() as u64;
                if a_tx.data_bytes(data).await.is_err() {
                    break;
                }
            }
            ChannelMsg::Eof => {
                let _ = a_tx.eof().await;
            }
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    let _ = a_tx.close().await;
    ab.abort();
    n + ab.await.unwrap_or(0)
}
