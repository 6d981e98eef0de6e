//! Single-threaded runtimes that connections are pinned to
//! (`gateway.session_scheduling = "pinned"`).
//!
//! On the shared work-stealing runtime, a worker that takes an I/O event
//! wakes a parked sibling to steal from it; with one busy session the two
//! threads hand each statement back and forth (measured: 3.5 context
//! switches per statement against PgBouncer's 2.0). Pinned, a connection's
//! task, its upstream socket and every task it spawns live on one thread
//! with its own I/O driver and timers, so nothing wakes another thread; the
//! threads together still use every core. The cost: a busy connection
//! cannot move off a crowded thread, so each new one goes to the thread
//! holding the fewest.

use crate::sync::MutexExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// How long a stopping thread waits for its blocking tasks.
const STOP_BLOCKING_WAIT: Duration = Duration::from_secs(2);

/// The pinned runtimes, each with the connections it holds.
#[derive(Debug)]
pub struct PinnedRuntimes {
    runtimes: Vec<(Handle, Arc<AtomicUsize>)>,
    /// Each thread's stop signal and handle, until [`Self::shutdown`].
    threads: Mutex<Vec<(oneshot::Sender<()>, JoinHandle<()>)>>,
}

/// Counts a connection on its runtime while it lives.
#[derive(Debug)]
pub struct Pin {
    count: Arc<AtomicUsize>,
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PinnedRuntimes {
    /// Starts `threads` threads (at least one), each running its own
    /// single-threaded runtime until [`Self::shutdown`].
    pub fn start(threads: usize) -> std::io::Result<PinnedRuntimes> {
        // On an error below, dropping `pinned` stops the threads started.
        let mut pinned = PinnedRuntimes {
            runtimes: Vec::new(),
            threads: Mutex::new(Vec::new()),
        };
        for n in 0..threads.max(1) {
            let (stop, stopped) = oneshot::channel::<()>();
            let (ready, handle) = std::sync::mpsc::channel();
            // The runtime is built and dropped on its own thread: a runtime
            // may not be dropped where the caller may be (async code).
            let thread = std::thread::Builder::new()
                .name(format!("sluice-pinned-{n}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .thread_name(format!("sluice-pinned-{n}"))
                        .build();
                    let runtime = match runtime {
                        Ok(runtime) => runtime,
                        Err(e) => return drop(ready.send(Err(e))),
                    };
                    let _ = ready.send(Ok(runtime.handle().clone()));
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                    // Dropping the connections' tasks ends their sessions
                    // (each records its end).
                    runtime.shutdown_timeout(STOP_BLOCKING_WAIT);
                })?;
            pinned.threads.locked().push((stop, thread));
            let handle = handle.recv().map_err(|_| {
                std::io::Error::other("a pinned thread ended before its runtime started")
            })??;
            pinned
                .runtimes
                .push((handle, Arc::new(AtomicUsize::new(0))));
        }
        Ok(pinned)
    }

    /// The runtime holding the fewest connections, and the count that keeps
    /// the new one on it.
    pub fn least_busy(&self) -> Option<(&Handle, Pin)> {
        let (handle, count) = self
            .runtimes
            .iter()
            .min_by_key(|(_, count)| count.load(Ordering::Relaxed))?;
        count.fetch_add(1, Ordering::Relaxed);
        let pin = Pin {
            count: count.clone(),
        };
        Some((handle, pin))
    }

    /// Stops every thread: the connections still on them are dropped (their
    /// sessions end and record it), then the threads are joined. Idempotent.
    pub fn shutdown(&self) {
        let threads = std::mem::take(&mut *self.threads.locked());
        let mut joins = Vec::new();
        for (stop, thread) in threads {
            let _ = stop.send(());
            joins.push(thread);
        }
        let me = std::thread::current().id();
        for thread in joins {
            // Dropped from a pinned thread itself: it stops once this returns.
            if thread.thread().id() != me {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for PinnedRuntimes {
    fn drop(&mut self) {
        self.shutdown();
    }
}
