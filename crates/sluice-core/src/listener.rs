//! The listener contract every protocol's accept loop uses: a cap on the
//! connections a listener holds, a cap per peer address, and a stop when the
//! gateway drains (see `Gateway::drain`). Protocols supply only what to do
//! with an accepted connection; they keep their own handshake deadlines.

use crate::config::ListenConfig;
use crate::pinned::PinnedRuntimes;
use crate::sync::MutexExt;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// How many connections a listener holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Connections held at once; further clients wait in the kernel backlog.
    pub max_connections: usize,
    /// Connections one peer address may hold at once (0: unlimited); more
    /// are closed at accept.
    pub max_per_peer: usize,
}

impl ListenerLimits {
    pub fn from_config(listen: &ListenConfig) -> Self {
        ListenerLimits {
            max_connections: listen.max_connections.max(1),
            max_per_peer: listen.max_connections_per_peer,
        }
    }
}

/// A bound socket under the contract. Made by `Gateway::listener`.
#[derive(Debug)]
pub struct Listener {
    tcp: TcpListener,
    name: &'static str,
    limits: ListenerLimits,
    draining: watch::Receiver<bool>,
    /// For a listener that serves through the drain: the sender of its own
    /// never-set signal (a dropped sender would read as "stop").
    own_signal: Option<watch::Sender<bool>>,
    /// Where connections run when they are pinned (see `pinned.rs`); else
    /// on the runtime that accepts them.
    pinned: Option<Arc<PinnedRuntimes>>,
}

impl Listener {
    pub(crate) fn new(
        tcp: TcpListener,
        name: &'static str,
        limits: ListenerLimits,
        draining: watch::Receiver<bool>,
        pinned: Option<Arc<PinnedRuntimes>>,
    ) -> Self {
        Listener {
            tcp,
            name,
            limits,
            draining,
            own_signal: None,
            pinned,
        }
    }

    /// Keeps accepting while the gateway drains (the operator API: revoking,
    /// ending sessions and deciding approvals must work during the grace
    /// period); it stops when the process does.
    pub fn through_drain(mut self) -> Self {
        let (signal, never) = watch::channel(false);
        self.draining = never;
        self.own_signal = Some(signal);
        self
    }

    /// Lowers (never raises) the connection cap, for a protocol with its own limit.
    pub fn at_most(mut self, max_connections: usize) -> Self {
        self.limits.max_connections = self.limits.max_connections.min(max_connections.max(1));
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    pub fn limits(&self) -> ListenerLimits {
        self.limits
    }

    /// Accepts clients, each in its own task running `handle`, until the
    /// gateway drains; then the socket is closed (new clients are refused by
    /// the kernel) and this returns. Live connections run on: the drain
    /// decides how long.
    pub async fn serve<F, Fut>(self, handle: F) -> std::io::Result<()>
    where
        F: Fn(TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Listener {
            tcp,
            name,
            limits,
            mut draining,
            own_signal: _own_signal,
            pinned,
        } = self;
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let peers = PeerCounts::default();
        let handle = Arc::new(handle);
        loop {
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => slot.map_err(std::io::Error::other)?,
                _ = draining.wait_for(|d| *d) => break,
            };
            let accepted = tokio::select! {
                accepted = tcp.accept() => accepted,
                _ = draining.wait_for(|d| *d) => break,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(message = "Accept failed.", listener = name, error = %e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(peer_slot) = peers.enter(peer.ip(), limits.max_per_peer) else {
                tracing::warn!(message = "Connection closed: this peer holds the most connections a listener allows (listen.max_connections_per_peer).", listener = name, client = %peer);
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let slots = (slot, peer_slot);
            spawn_connection(pinned.as_deref(), name, stream, peer, slots, handle.clone());
        }
        tracing::info!(
            message = "Listener stopped accepting: the gateway is draining.",
            listener = name
        );
        Ok(())
    }
}

/// Runs `handle` for an accepted connection in its own task, holding
/// `slots` until it ends: on the least busy pinned runtime if there are any
/// (the socket moves as a plain socket: it belongs to the I/O driver that
/// registered it), else on the current runtime.
fn spawn_connection<F, Fut>(
    pinned: Option<&PinnedRuntimes>,
    listener: &'static str,
    stream: TcpStream,
    peer: SocketAddr,
    slots: impl Send + 'static,
    handle: Arc<F>,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some((runtime, pin)) = pinned.and_then(PinnedRuntimes::least_busy) else {
        tokio::spawn(async move {
            let _slots = slots;
            handle(stream, peer).await;
        });
        return;
    };
    let socket = match stream.into_std() {
        Ok(socket) => socket,
        Err(e) => {
            tracing::warn!(message = "Connection closed: it could not be handed to its thread.", listener, client = %peer, error = %e);
            return;
        }
    };
    runtime.spawn(async move {
        let _slots = (slots, pin);
        match TcpStream::from_std(socket) {
            Ok(stream) => handle(stream, peer).await,
            Err(e) => {
                tracing::warn!(message = "Connection closed: its thread could not take it.", client = %peer, error = %e)
            }
        }
    });
}

/// Open connections per peer address.
#[derive(Debug, Default, Clone)]
struct PeerCounts(Arc<Mutex<HashMap<IpAddr, usize>>>);

impl PeerCounts {
    fn enter(&self, ip: IpAddr, max: usize) -> Option<PeerSlot> {
        let mut counts = self.0.locked();
        let count = counts.entry(ip).or_insert(0);
        if max > 0 && *count >= max {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            counts: self.clone(),
            ip,
        })
    }
}

/// One connection's place in `PeerCounts`, given back on drop.
#[derive(Debug)]
struct PeerSlot {
    counts: PeerCounts,
    ip: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.locked();
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// What a drain did (see `Gateway::drain`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DrainReport {
    /// Sessions live when the drain began.
    pub live_at_start: usize,
    /// Sessions still live at the deadline, told to end.
    pub ended: usize,
    /// Sessions that had not ended a few seconds after being told.
    pub left: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn listener(limits: ListenerLimits) -> (Listener, watch::Sender<bool>, SocketAddr) {
        listener_on(limits, None).await
    }

    async fn listener_on(
        limits: ListenerLimits,
        pinned: Option<Arc<PinnedRuntimes>>,
    ) -> (Listener, watch::Sender<bool>, SocketAddr) {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let (tx, rx) = watch::channel(false);
        (Listener::new(tcp, "test", limits, rx, pinned), tx, addr)
    }

    /// Connections on the accepting runtime, then on pinned threads: the
    /// limits must hold alike.
    fn scheduled_both_ways() -> [Option<Arc<PinnedRuntimes>>; 2] {
        [None, Some(Arc::new(PinnedRuntimes::start(2).unwrap()))]
    }

    /// A handler that holds each connection until its client closes it.
    async fn hold(mut stream: TcpStream, _peer: SocketAddr) {
        let mut buf = [0u8; 16];
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
    }

    #[tokio::test]
    async fn a_peer_over_its_limit_is_closed_at_accept() {
        let limits = ListenerLimits {
            max_connections: 16,
            max_per_peer: 2,
        };
        for pinned in scheduled_both_ways() {
            let (listener, _drain, addr) = listener_on(limits, pinned).await;
            tokio::spawn(listener.serve(hold));
            let _a = TcpStream::connect(addr).await.unwrap();
            let _b = TcpStream::connect(addr).await.unwrap();
            let mut third = TcpStream::connect(addr).await.unwrap();
            let mut buf = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf)).await;
            assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
            drop((_a, _b));
        }
    }

    #[tokio::test]
    async fn draining_stops_accepting_and_closes_the_socket() {
        let limits = ListenerLimits {
            max_connections: 4,
            max_per_peer: 0,
        };
        let (listener, drain, addr) = listener(limits).await;
        let served = tokio::spawn(listener.serve(hold));
        let live = TcpStream::connect(addr).await.unwrap();
        drain.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err());
        drop(live);
    }

    #[tokio::test]
    async fn a_listener_serving_through_the_drain_keeps_accepting() {
        let limits = ListenerLimits {
            max_connections: 4,
            max_per_peer: 0,
        };
        let (listener, drain, addr) = listener(limits).await;
        let served = tokio::spawn(listener.through_drain().serve(hold));
        drain.send_replace(true);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!served.is_finished());
        assert!(TcpStream::connect(addr).await.is_ok());
    }

    #[tokio::test]
    async fn the_cap_holds_clients_until_a_slot_frees() {
        let limits = ListenerLimits {
            max_connections: 1,
            max_per_peer: 0,
        };
        for pinned in scheduled_both_ways() {
            let (listener, _drain, addr) = listener_on(limits, pinned).await;
            let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let counter = accepted.clone();
            tokio::spawn(listener.serve(move |s, p| {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                hold(s, p)
            }));
            let first = TcpStream::connect(addr).await.unwrap();
            let _second = TcpStream::connect(addr).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
            drop(first);
            tokio::time::timeout(Duration::from_secs(5), async {
                while accepted.load(std::sync::atomic::Ordering::SeqCst) < 2 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
            .unwrap();
        }
    }

    /// Pinned, each connection runs on one of the pinned threads, the least
    /// busy one: two held at once are on two threads; once the first ends,
    /// its thread is the least busy again and takes the next.
    #[tokio::test]
    async fn pinned_connections_run_on_the_least_busy_pinned_thread() {
        use tokio::io::AsyncWriteExt;
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let (_drain, rx) = watch::channel(false);
        let pinned = Arc::new(PinnedRuntimes::start(2).unwrap());
        let limits = ListenerLimits {
            max_connections: 8,
            max_per_peer: 0,
        };
        let listener = Listener::new(tcp, "test", limits, rx, Some(pinned.clone()));
        let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
        // Each connection is answered with the name of the thread serving it.
        tokio::spawn(listener.serve(move |mut stream: TcpStream, _| {
            let ended = ended_tx.clone();
            async move {
                let name = std::thread::current().name().unwrap_or("").to_string();
                stream.write_all(name.as_bytes()).await.unwrap();
                stream.write_all(b"\n").await.unwrap();
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
                let _ = ended.send(());
            }
        }));
        async fn thread_of(client: &mut TcpStream) -> String {
            let mut line = Vec::new();
            while !line.ends_with(b"\n") {
                let mut byte = [0u8; 1];
                assert_eq!(client.read(&mut byte).await.unwrap(), 1, "{line:?}");
                line.push(byte[0]);
            }
            String::from_utf8(line).unwrap()
        }
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        let (a, b) = (thread_of(&mut first).await, thread_of(&mut second).await);
        assert!(a.starts_with("sluice-pinned-") && b.starts_with("sluice-pinned-"));
        assert_ne!(a, b);
        drop(first);
        ended.recv().await.unwrap();
        let mut third = TcpStream::connect(addr).await.unwrap();
        assert_eq!(thread_of(&mut third).await, a);
        // Stopping the threads ends the connections still on them.
        tokio::task::spawn_blocking(move || pinned.shutdown())
            .await
            .unwrap();
        let mut rest = Vec::new();
        let _ = second.read_to_end(&mut rest).await;
        let _ = third.read_to_end(&mut rest).await;
    }
}
