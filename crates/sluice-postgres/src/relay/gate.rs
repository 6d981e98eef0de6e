//! Schema changes that define code, kept apart from the statements judged
//! before them.
//!
//! The gateway judges a statement on the catalog as it reads it; the server
//! resolves the statement's names when it runs it, which for a statement
//! pipelined behind a slow one (`select pg_sleep(3); select count(…)`) is
//! seconds later. A view or routine another session commits in between
//! would run unjudged. The gate keeps the two apart, one for the process
//! (two connection names may reach one database):
//! - a session holds it shared from before it judges a message that names
//!   tables or functions until the server has finished that message;
//! - a session that may publish a schema change (DDL, a routine that runs
//!   DDL, the COMMIT of a transaction that made one) holds it exclusively
//!   from once its message is decided until the server's ReadyForQuery
//!   after it, when the definitions caches have been forgotten.
//!
//! A session never waits for itself. A waiting exclusive holder keeps new
//! shared holders of other sessions out (unless they already hold it: their
//! earlier messages may be what it waits for), so a steady stream of
//! statements cannot starve it. Waits are bounded (a server lock can make
//! two sessions wait for each other): past [`WAIT`], the statement is
//! refused, unrun, and can be retried. An exclusive hold stops keeping
//! others out after [`COUNTS_FOR`] (a client that never sends its Sync
//! would stall every session); the session takes it again before the Sync
//! that publishes its change, and a message still running by then is
//! cancelled on the server.

use sluice_core::sync::MutexExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long a statement waits for the gate before it is refused.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// How long an exclusive hold keeps other sessions out: a little longer
/// than `WAIT`, after which a command still running under it is cancelled
/// (`catalog_context::Uncommitted::hold_until_ready`).
pub(crate) const COUNTS_FOR: Duration = Duration::from_secs(12);

/// How often a wait looks again without being woken.
const RECHECK: Duration = Duration::from_millis(250);

/// Why a statement that waited too long was refused.
pub(crate) const WAITED_TOO_LONG: &str =
    "another session is publishing a schema change that defines a view or routine, or is \
     running statements judged before one, and this statement could not be judged around it \
     in time; it was not run: retry it";

#[derive(Default)]
pub(crate) struct Gate {
    state: Mutex<State>,
    changed: Notify,
}

/// Holds and waits, per session.
#[derive(Default)]
struct State {
    shared: HashMap<u64, usize>,
    /// When each exclusive hold was taken.
    exclusive: HashMap<u64, Vec<Instant>>,
    /// Sessions waiting for an exclusive hold.
    waiting: HashMap<u64, usize>,
}

impl State {
    fn admits(&self, session: u64, exclusive: bool) -> bool {
        let others = |m: &HashMap<u64, usize>| m.keys().any(|&s| s != session);
        let publishing = self
            .exclusive
            .iter()
            .any(|(&s, taken)| s != session && taken.iter().any(|t| t.elapsed() < COUNTS_FOR));
        !publishing
            && if exclusive {
                !others(&self.shared)
            } else {
                !others(&self.waiting) || self.shared.contains_key(&session)
            }
    }
}

fn count_up(map: &mut HashMap<u64, usize>, session: u64) {
    *map.entry(session).or_default() += 1;
}

fn count_down(map: &mut HashMap<u64, usize>, session: u64) {
    if let Some(n) = map.get_mut(&session) {
        *n -= 1;
        if *n == 0 {
            map.remove(&session);
        }
    }
}

/// A hold on the gate, given back when dropped.
pub(crate) struct GateHold {
    gate: Arc<Gate>,
    session: u64,
    /// When an exclusive hold was taken; `None`: shared.
    exclusive: Option<Instant>,
}

impl GateHold {
    pub(crate) fn is_exclusive(&self) -> bool {
        self.exclusive.is_some()
    }

    /// How long an exclusive hold has been held.
    pub(crate) fn age(&self) -> Option<Duration> {
        self.exclusive.map(|t| t.elapsed())
    }
}

impl Drop for GateHold {
    fn drop(&mut self) {
        {
            let mut s = self.gate.state.locked();
            match self.exclusive {
                Some(taken) => {
                    if let Some(holds) = s.exclusive.get_mut(&self.session) {
                        if let Some(i) = holds.iter().position(|t| *t == taken) {
                            holds.swap_remove(i);
                        }
                        if holds.is_empty() {
                            s.exclusive.remove(&self.session);
                        }
                    }
                }
                None => count_down(&mut s.shared, self.session),
            }
        }
        self.gate.changed.notify_waiters();
    }
}

/// A session's wait for an exclusive hold, withdrawn however the wait ends.
struct Waiting<'a> {
    gate: &'a Gate,
    session: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        count_down(&mut self.gate.state.locked().waiting, self.session);
        self.gate.changed.notify_waiters();
    }
}

/// The gate.
pub(crate) fn global() -> &'static Arc<Gate> {
    static GATE: std::sync::LazyLock<Arc<Gate>> = std::sync::LazyLock::new(Arc::default);
    &GATE
}

/// A new session's name at the gate.
pub(crate) fn new_session() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Gate {
    /// A hold for `session`, once no other session's hold conflicts with
    /// it; `None` after waiting `wait` ([`WAIT`]).
    pub(crate) async fn enter(
        self: &Arc<Self>,
        session: u64,
        exclusive: bool,
        wait: Duration,
    ) -> Option<GateHold> {
        tokio::time::timeout(wait, self.admitted(session, exclusive))
            .await
            .ok()
    }

    async fn admitted(self: &Arc<Self>, session: u64, exclusive: bool) -> GateHold {
        let _waiting = exclusive.then(|| {
            count_up(&mut self.state.locked().waiting, session);
            Waiting {
                gate: self,
                session,
            }
        });
        loop {
            // Registered before the check, so a release between the two
            // still wakes this wait.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.state.locked();
                if s.admits(session, exclusive) {
                    let taken = exclusive.then(Instant::now);
                    match taken {
                        Some(t) => s.exclusive.entry(session).or_default().push(t),
                        None => count_up(&mut s.shared, session),
                    }
                    return GateHold {
                        gate: self.clone(),
                        session,
                        exclusive: taken,
                    };
                }
            }
            // A hold that stops counting (see `COUNTS_FOR`) wakes no one:
            // look again.
            let _ = tokio::time::timeout(RECHECK, notified).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `f` once: `Some` if it is ready without waiting.
    fn now<T>(f: impl std::future::Future<Output = T>) -> Option<T> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }

    #[tokio::test]
    async fn exclusive_waits_for_other_sessions_only() {
        let gate = Arc::new(Gate::default());
        let a = gate.admitted(1, false).await;
        // The same session publishes behind its own statements.
        let own = now(gate.admitted(1, true)).expect("own shared hold does not block");
        assert!(own.is_exclusive());
        drop(own);
        // Another session waits until the statement is finished.
        assert!(now(gate.admitted(2, true)).is_none());
        drop(a);
        let b = now(gate.admitted(2, true)).expect("admitted once released");
        // While it publishes, other sessions' statements wait; its own do not.
        assert!(now(gate.admitted(3, false)).is_none());
        assert!(now(gate.admitted(2, false)).is_some());
        drop(b);
        assert!(now(gate.admitted(3, false)).is_some());
    }

    #[tokio::test]
    async fn a_waiting_publisher_keeps_new_statements_out() {
        let gate = Arc::new(Gate::default());
        let a = gate.admitted(1, false).await;
        let g = gate.clone();
        let publisher = tokio::spawn(async move { g.admitted(2, true).await.is_exclusive() });
        tokio::task::yield_now().await;
        assert!(now(gate.admitted(3, false)).is_none(), "queued behind");
        drop(a);
        assert!(publisher.await.unwrap());
        assert!(now(gate.admitted(3, false)).is_some());
    }

    #[tokio::test]
    async fn a_session_already_inside_is_not_kept_out_by_a_waiting_publisher() {
        let gate = Arc::new(Gate::default());
        // Its earlier message (a Parse, not yet answered) holds it shared.
        let earlier = gate.admitted(1, false).await;
        let g = gate.clone();
        let publisher = tokio::spawn(async move { g.admitted(2, true).await.is_exclusive() });
        tokio::task::yield_now().await;
        // The next message of the same batch is admitted: waiting for the
        // publisher, which waits for the earlier one, would deadlock.
        let next = now(gate.admitted(1, false)).expect("admitted");
        drop((earlier, next));
        assert!(publisher.await.unwrap());
    }

    #[tokio::test]
    async fn waits_are_bounded() {
        let gate = Arc::new(Gate::default());
        let _a = gate.admitted(1, false).await;
        let wait = Duration::from_millis(20);
        assert!(gate.enter(2, true, wait).await.is_none());
        // The withdrawn wait no longer holds others back.
        assert!(now(gate.admitted(3, false)).is_some());
    }
}
