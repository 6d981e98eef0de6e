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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::runtime::Handle;

/// The pinned runtimes, each with the connections it holds.
#[derive(Debug)]
pub struct PinnedRuntimes {
    runtimes: Vec<(Handle, Arc<AtomicUsize>)>,
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
    /// single-threaded runtime for the life of the process.
    pub fn start(threads: usize) -> std::io::Result<PinnedRuntimes> {
        let mut runtimes = Vec::new();
        for n in 0..threads.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(format!("sluice-pinned-{n}"))
                .build()?;
            let handle = runtime.handle().clone();
            std::thread::Builder::new()
                .name(format!("sluice-pinned-{n}"))
                .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
            runtimes.push((handle, Arc::new(AtomicUsize::new(0))));
        }
        Ok(PinnedRuntimes { runtimes })
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

    pub fn len(&self) -> usize {
        self.runtimes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.runtimes.is_empty()
    }
}
