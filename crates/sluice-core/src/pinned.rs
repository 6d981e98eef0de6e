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
//! that has been least busy lately (each thread measures its own busy
//! share every 250 ms; connections placed since count as presumed load, and
//! a thread that stopped measuring counts as full), and among threads about
//! as busy, to the one holding the fewest connections: idle connections do
//! not make a thread look busy.

use crate::sync::MutexExt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// Set on the threads [`PinnedRuntimes`] starts.
    static ON_PINNED_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// This pinned thread's [`PerThread`] values, per owner still alive.
    static THREAD_VALUES: std::cell::RefCell<Vec<ThreadValue>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A pinned thread's copy of a [`PerThread`] value, with its owner's token.
type ThreadValue = (std::sync::Weak<()>, Box<dyn std::any::Any>);

/// Whether this is one of the pinned session threads.
pub fn on_pinned_thread() -> bool {
    ON_PINNED_THREAD.get()
}

/// A value with a copy per pinned thread: one shared value elsewhere.
///
/// For state that holds I/O, such as a pool of upstream connections: a
/// pooled connection's I/O runs on the runtime that opened it, so a pinned
/// session that used a pool shared with other threads would wake another
/// thread for every exchange. Each pinned thread builds its own copy on first
/// use. Once the `PerThread` is dropped (a reload builds new ones), each
/// thread drops its copy at its next `get` of any `PerThread`, or when it ends.
pub struct PerThread<T> {
    shared: T,
    make: Box<dyn Fn() -> T + Send + Sync>,
    /// Names this value's copies in the threads' lists.
    alive: Arc<()>,
}

impl<T: Clone + 'static> PerThread<T> {
    pub fn new(make: impl Fn() -> T + Send + Sync + 'static) -> Self {
        PerThread {
            shared: make(),
            make: Box::new(make),
            alive: Arc::new(()),
        }
    }

    /// This pinned thread's copy, or the shared value off pinned threads.
    pub fn get(&self) -> T {
        if !on_pinned_thread() {
            return self.shared.clone();
        }
        // `make` runs, and dropped owners' copies are dropped, with the list
        // released: either may use another `PerThread`.
        let (mine, gone) = THREAD_VALUES.with(|values| {
            let mut values = values.borrow_mut();
            let gone: Vec<ThreadValue> = values
                .extract_if(.., |(alive, _)| alive.strong_count() == 0)
                .collect();
            // A live Weak keeps its allocation, so no other owner shares its address.
            let mine = values
                .iter()
                .find(|(alive, _)| std::ptr::eq(alive.as_ptr(), Arc::as_ptr(&self.alive)))
                .and_then(|(_, value)| value.downcast_ref::<T>())
                .cloned();
            (mine, gone)
        });
        drop(gone);
        if let Some(value) = mine {
            return value;
        }
        let value = (self.make)();
        let copy: Box<dyn std::any::Any> = Box::new(value.clone());
        THREAD_VALUES.with(|values| {
            values
                .borrow_mut()
                .push((Arc::downgrade(&self.alive), copy))
        });
        value
    }
}

impl<T> std::fmt::Debug for PerThread<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerThread").finish_non_exhaustive()
    }
}

/// How long a stopping thread waits for its blocking tasks.
const STOP_BLOCKING_WAIT: Duration = Duration::from_secs(2);

/// How often each pinned thread measures how busy it was.
const LOAD_WINDOW: Duration = Duration::from_millis(250);
/// Threads whose loads differ by less than this (thousandths of a thread)
/// count as equally busy, and connection counts decide.
const BUSY_TOLERANCE: u32 = 100;
/// The load presumed of a connection placed since its thread last measured
/// itself: a burst of new connections is spread, not herded onto the
/// thread that was quietest before it.
const FRESH_LOAD: u32 = 100;
/// A thread that has not measured itself for this long is taken as fully
/// busy: something (a long poll, a blocking call) keeps it from running
/// its measurement.
const STALE_AFTER: Duration = Duration::from_secs(1);
/// A fully busy thread's load.
const FULL_LOAD: u32 = 1000;

/// One pinned runtime: its handle, the connections it holds, and what it
/// measures of itself.
#[derive(Debug)]
struct Runtime {
    handle: Handle,
    connections: Arc<AtomicUsize>,
    load: Arc<Load>,
}

/// What a pinned thread publishes about itself for placement.
#[derive(Debug)]
struct Load {
    /// Busy share of the last [`LOAD_WINDOW`], in thousandths.
    busy: AtomicU32,
    /// When `busy` was published, in ms after `since`.
    published_ms: AtomicU64,
    since: Instant,
    /// Connections placed on the thread since then.
    fresh: AtomicU32,
}

impl Load {
    fn new() -> Self {
        Load {
            busy: AtomicU32::new(0),
            published_ms: AtomicU64::new(0),
            since: Instant::now(),
            fresh: AtomicU32::new(0),
        }
    }

    fn publish(&self, busy: u32) {
        let at = self.since.elapsed().as_millis() as u64;
        self.busy.store(busy, Ordering::Relaxed);
        self.published_ms.store(at, Ordering::Relaxed);
        self.fresh.store(0, Ordering::Relaxed);
    }

    /// The thread's load in thousandths: its last busy share plus what the
    /// connections placed since are presumed to add; full when stale.
    fn current(&self, now: Instant) -> u32 {
        let at = now.saturating_duration_since(self.since).as_millis() as u64;
        let age = at.saturating_sub(self.published_ms.load(Ordering::Relaxed));
        let fresh = self
            .fresh
            .load(Ordering::Relaxed)
            .saturating_mul(FRESH_LOAD);
        let measured = if age > STALE_AFTER.as_millis() as u64 {
            FULL_LOAD
        } else {
            self.busy.load(Ordering::Relaxed)
        };
        measured.saturating_add(fresh)
    }
}

/// The pinned runtimes.
#[derive(Debug)]
pub struct PinnedRuntimes {
    runtimes: Vec<Runtime>,
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
                    ON_PINNED_THREAD.set(true);
                    let load = Arc::new(Load::new());
                    let _ = ready.send(Ok((runtime.handle().clone(), load.clone())));
                    runtime.block_on(async {
                        let measuring = tokio::spawn(measure_busy(load));
                        let _ = stopped.await;
                        measuring.abort();
                    });
                    // Dropping the connections' tasks ends their sessions
                    // (each records its end).
                    runtime.shutdown_timeout(STOP_BLOCKING_WAIT);
                })?;
            pinned.threads.locked().push((stop, thread));
            let (handle, load) = handle.recv().map_err(|_| {
                std::io::Error::other("a pinned thread ended before its runtime started")
            })??;
            pinned.runtimes.push(Runtime {
                handle,
                connections: Arc::new(AtomicUsize::new(0)),
                load,
            });
        }
        Ok(pinned)
    }

    /// The runtime for a new connection, and the count that keeps it there:
    /// of the runtimes about as loaded as the least loaded one (see
    /// [`Load::current`]), the one holding the fewest connections.
    pub fn least_busy(&self) -> Option<(&Handle, Pin)> {
        let now = Instant::now();
        let seen: Vec<(u32, usize)> = self
            .runtimes
            .iter()
            .map(|r| (r.load.current(now), r.connections.load(Ordering::Relaxed)))
            .collect();
        let chosen = &self.runtimes[choose(&seen)?];
        chosen.load.fresh.fetch_add(1, Ordering::Relaxed);
        chosen.connections.fetch_add(1, Ordering::Relaxed);
        let pin = Pin {
            count: chosen.connections.clone(),
        };
        Some((&chosen.handle, pin))
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

/// Of threads seen as (load, connections), the index of the one with the
/// fewest connections among those within [`BUSY_TOLERANCE`] of the least
/// loaded; `None` only when there is no thread.
fn choose(seen: &[(u32, usize)]) -> Option<usize> {
    let quietest = seen.iter().map(|&(load, _)| load).min()?;
    (0..seen.len())
        .filter(|&i| seen[i].0 < quietest.saturating_add(BUSY_TOLERANCE))
        .min_by_key(|&i| seen[i].1)
}

/// Publishes, every [`LOAD_WINDOW`], the share of it this thread's runtime
/// spent busy (not parked), in thousandths: the runtime's own measure, so a
/// thread that runs a busy session shows busy whatever it holds.
async fn measure_busy(load: Arc<Load>) {
    let metrics = Handle::current().metrics();
    let mut last = (Instant::now(), metrics.worker_total_busy_duration(0));
    let mut tick = tokio::time::interval(LOAD_WINDOW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = (Instant::now(), metrics.worker_total_busy_duration(0));
        let window = now.0.duration_since(last.0).as_secs_f64();
        let spent = now.1.saturating_sub(last.1).as_secs_f64();
        if window > 0.0 {
            let share = (spent / window * f64::from(FULL_LOAD)).min(f64::from(FULL_LOAD));
            load.publish(share as u32);
        }
        last = now;
    }
}

impl Drop for PinnedRuntimes {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on pinned thread `n` and returns what it returned.
    fn on<R: Send + 'static>(
        pinned: &PinnedRuntimes,
        n: usize,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> R {
        let (tx, rx) = std::sync::mpsc::channel();
        pinned.runtimes[n].handle.spawn(async move {
            let _ = tx.send(f());
        });
        rx.recv().unwrap()
    }

    /// Counts its drops: a copy is dropped once its last clone is.
    struct Marker(Arc<AtomicUsize>);

    impl Drop for Marker {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn each_pinned_thread_builds_its_own_copy_and_drops_it_with_its_owner() {
        let built = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicUsize::new(0));
        let (counter, drops) = (built.clone(), dropped.clone());
        // Each value is the number of the build that made it.
        let per = Arc::new(PerThread::new(move || {
            (
                counter.fetch_add(1, Ordering::SeqCst),
                Arc::new(Marker(drops.clone())),
            )
        }));
        assert_eq!(per.get().0, 0, "off pinned threads: the shared value");
        let pinned = PinnedRuntimes::start(2).unwrap();
        let twice = |n| {
            let per = per.clone();
            on(&pinned, n, move || {
                (on_pinned_thread(), per.get().0, per.get().0)
            })
        };
        let first = twice(0);
        let second = twice(1);
        assert!(first.0 && second.0);
        assert_eq!(first.1, first.2, "a thread keeps its copy");
        assert_eq!(second.1, second.2);
        assert_ne!(first.1, second.1, "each thread has its own");
        assert_ne!(first.1, 0);
        assert_eq!(twice(0).1, first.1);
        assert_eq!(built.load(Ordering::SeqCst), 3);
        assert_eq!(per.get().0, 0);
        // A new owner (a reload) builds anew; the dropped one's copies go
        // at each thread's next get, and the shared value with the owner.
        drop(per);
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "the shared value");
        let reloaded = Arc::new(PerThread::new(|| String::from("new")));
        for n in 0..2 {
            let reloaded = reloaded.clone();
            let (value, copies) = on(&pinned, n, move || {
                (reloaded.get(), THREAD_VALUES.with(|v| v.borrow().len()))
            });
            assert_eq!((value.as_str(), copies), ("new", 1));
        }
        assert_eq!(dropped.load(Ordering::SeqCst), 3, "both threads' copies");
        pinned.shutdown();
    }

    /// Load decides before connections; fresh connections count as load
    /// until measured; a thread that stopped measuring itself is full.
    #[test]
    fn placement_weighs_load_then_connections() {
        assert_eq!(choose(&[]), None);
        assert_eq!(choose(&[(0, 5), (0, 0)]), Some(1), "equally quiet: fewer");
        assert_eq!(choose(&[(0, 3), (500, 0)]), Some(0), "not the busy one");
        assert_eq!(choose(&[(0, 3), (99, 0)]), Some(1), "within the tolerance");
        let stale = Load::new();
        assert_eq!(stale.current(stale.since + STALE_AFTER * 2), FULL_LOAD);
        let fresh = Load::new();
        fresh.publish(30);
        fresh.fresh.store(2, Ordering::Relaxed);
        assert_eq!(fresh.current(Instant::now()), 30 + 2 * FRESH_LOAD);
        // A burst of connections, placed before either thread measures
        // again, is spread, not herded onto the one quieter before it.
        let loads = [Load::new(), Load::new()];
        loads[0].publish(0);
        loads[1].publish(150);
        let mut connections = [0usize; 2];
        for _ in 0..8 {
            let now = Instant::now();
            let seen: Vec<(u32, usize)> = (0..2)
                .map(|i| (loads[i].current(now), connections[i]))
                .collect();
            let i = choose(&seen).unwrap();
            loads[i].fresh.fetch_add(1, Ordering::Relaxed);
            connections[i] += 1;
        }
        assert!(connections[1] >= 3, "{connections:?}");
    }

    /// Which runtime a pick chose.
    fn index_of(pinned: &PinnedRuntimes, pin: &Pin) -> usize {
        let same = |r: &Runtime| Arc::ptr_eq(&r.connections, &pin.count);
        pinned.runtimes.iter().position(same).unwrap()
    }

    /// A thread busy with a session is not given the next connection, even
    /// when it holds fewer connections; once it is quiet again, connection
    /// counts decide.
    #[test]
    fn a_new_connection_goes_to_the_thread_that_was_least_busy_lately() {
        let pinned = PinnedRuntimes::start(2).unwrap();
        // Idle threads: by count, alternately.
        let (_, first) = pinned.least_busy().unwrap();
        let (_, second) = pinned.least_busy().unwrap();
        assert_ne!(index_of(&pinned, &first), index_of(&pinned, &second));
        let (_, third) = pinned.least_busy().unwrap();
        let idle_one = index_of(&pinned, &third);
        let busy_one = 1 - idle_one;
        // Now `idle_one` holds two connections, `busy_one` one: keep
        // `busy_one` busy (a blocking task hardly lets it park) for a while.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spinning = stop.clone();
        pinned.runtimes[busy_one].handle.spawn(async move {
            while !spinning.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
                tokio::task::yield_now().await;
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let wait_until = |measured: &dyn Fn(u32) -> bool, what: &str| {
            while !measured(pinned.runtimes[busy_one].load.busy.load(Ordering::Relaxed)) {
                assert!(
                    Instant::now() < deadline,
                    "the thread never measured {what}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        wait_until(&|share| share >= 500, "busy");
        let (_, fourth) = pinned.least_busy().unwrap();
        assert_eq!(index_of(&pinned, &fourth), idle_one, "not the busy thread");
        stop.store(true, Ordering::Relaxed);
        wait_until(&|share| share < BUSY_TOLERANCE, "quiet again");
        let (_, fifth) = pinned.least_busy().unwrap();
        assert_eq!(index_of(&pinned, &fifth), busy_one, "fewer connections");
        pinned.shutdown();
    }
}
