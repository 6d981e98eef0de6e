//! The locking policy: a poisoned lock (a thread panicked while holding it)
//! is recovered, never skipped. Security bookkeeping — registering a live
//! session, recording why it ended, a revocation — must happen even after an
//! unrelated panic, so every `std::sync` lock in Sluice is taken through
//! these helpers instead of `lock()`'s `Result`.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub trait MutexExt<T: ?Sized> {
    /// Locks, recovering the data of a poisoned mutex.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> MutexExt<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub trait RwLockExt<T: ?Sized> {
    /// Read-locks, recovering the data of a poisoned lock.
    fn read_locked(&self) -> RwLockReadGuard<'_, T>;
    /// Write-locks, recovering the data of a poisoned lock.
    fn write_locked(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RwLockExt<T> for RwLock<T> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An unbounded single-consumer queue that holds no memory while empty.
///
/// For per-session queues that are idle most of the time: tokio's unbounded
/// channel allocates a block of 32 slots up front, which for a queue of
/// 120-byte entries is 4 KB per session. Items wait in a `VecDeque`, whose
/// room is given back whenever it drains: one allocation per burst of items,
/// against holding its smallest room (4 entries) through every idle wait.
pub fn queue<T>() -> (QueueSender<T>, QueueReceiver<T>) {
    let shared = std::sync::Arc::new(QueueShared {
        items: Mutex::new(Items {
            queue: std::collections::VecDeque::new(),
            senders: 1,
            closed: false,
            receiver_gone: false,
        }),
        ready: tokio::sync::Notify::new(),
    });
    (
        QueueSender {
            shared: shared.clone(),
        },
        QueueReceiver { shared },
    )
}

struct Items<T> {
    queue: std::collections::VecDeque<T>,
    /// Live [`QueueSender`]s.
    senders: usize,
    /// Every sender is gone: once drained, `recv` answers `None`.
    closed: bool,
    /// The receiver is gone: what is sent is dropped, not kept.
    receiver_gone: bool,
}

struct QueueShared<T> {
    items: Mutex<Items<T>>,
    ready: tokio::sync::Notify,
}

/// The sending half of [`queue`]; dropping the last clone closes the queue.
pub struct QueueSender<T> {
    shared: std::sync::Arc<QueueShared<T>>,
}

impl<T> QueueSender<T> {
    /// Queues `item`; dropped at once when the receiver is gone (a session
    /// that reads no notices must not keep them).
    pub fn send(&self, item: T) {
        let mut items = self.shared.items.locked();
        if items.receiver_gone {
            return;
        }
        items.queue.push_back(item);
        drop(items);
        self.shared.ready.notify_one();
    }
}

impl<T> std::fmt::Debug for QueueSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueSender").finish_non_exhaustive()
    }
}

impl<T> Clone for QueueSender<T> {
    fn clone(&self) -> Self {
        self.shared.items.locked().senders += 1;
        QueueSender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for QueueSender<T> {
    fn drop(&mut self) {
        let mut items = self.shared.items.locked();
        items.senders -= 1;
        if items.senders == 0 {
            items.closed = true;
            drop(items);
            self.shared.ready.notify_one();
        }
    }
}

/// The receiving half of [`queue`].
pub struct QueueReceiver<T> {
    shared: std::sync::Arc<QueueShared<T>>,
}

impl<T> QueueReceiver<T> {
    /// The next item, waiting for one; `None` once the sender is gone and
    /// the queue drained. Cancel-safe: an item is only taken by a call
    /// that returns it.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            {
                let mut items = self.shared.items.locked();
                if let Some(item) = Self::pop(&mut items) {
                    return Some(item);
                }
                if items.closed {
                    return None;
                }
            }
            // `notify_one` leaves a permit when no one waits, so a send
            // between the check above and this wait is not missed.
            self.shared.ready.notified().await;
        }
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Option<T> {
        Self::pop(&mut self.shared.items.locked())
    }

    fn pop(items: &mut Items<T>) -> Option<T> {
        let item = items.queue.pop_front();
        if items.queue.is_empty() {
            items.queue.shrink_to(0);
        }
        item
    }
}

impl<T> Drop for QueueReceiver<T> {
    fn drop(&mut self) {
        let mut items = self.shared.items.locked();
        items.receiver_gone = true;
        items.queue = std::collections::VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_queue_delivers_in_order_wakes_its_receiver_and_closes() {
        let (tx, mut rx) = queue();
        assert_eq!(rx.try_recv(), None);
        tx.send(1);
        tx.send(2);
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.try_recv(), Some(2));
        // A waiting receiver is woken by a send from another task.
        let waiter = tokio::spawn(async move {
            let got = rx.recv().await;
            (got, rx)
        });
        tokio::task::yield_now().await;
        tx.send(3);
        let (got, mut rx) = waiter.await.unwrap();
        assert_eq!(got, Some(3));
        // A receive cancelled while waiting loses nothing.
        let cancelled = tokio::time::timeout(std::time::Duration::from_millis(10), rx.recv()).await;
        assert!(cancelled.is_err());
        tx.send(4);
        assert_eq!(rx.recv().await, Some(4));
        // Items sent before the sender goes are delivered, then `None`.
        tx.send(5);
        drop(tx);
        assert_eq!(rx.recv().await, Some(5));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_queue_closes_when_its_last_sender_is_dropped() {
        let (tx, mut rx) = queue();
        let other = tx.clone();
        drop(tx);
        other.send(1);
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.try_recv(), None);
        drop(other);
        assert_eq!(rx.recv().await, None);
    }

    #[test]
    fn what_is_sent_after_the_receiver_is_gone_is_not_kept() {
        let (tx, rx) = queue();
        tx.send(1);
        let shared = rx.shared.clone();
        drop(rx);
        tx.send(2);
        let items = shared.items.locked();
        assert!(items.queue.is_empty());
        assert_eq!(items.queue.capacity(), 0);
    }

    #[test]
    fn a_drained_queue_gives_back_its_room() {
        let (tx, mut rx) = queue();
        for i in 0..1000 {
            tx.send(i);
        }
        while rx.try_recv().is_some() {}
        assert_eq!(rx.shared.items.locked().queue.capacity(), 0);
    }

    #[test]
    fn a_poisoned_lock_is_recovered_not_skipped() {
        let m = Arc::new(Mutex::new(1));
        let poisoner = m.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.lock();
            panic!("poison");
        })
        .join();
        assert!(m.is_poisoned());
        *m.locked() += 1;
        assert_eq!(*m.locked(), 2);
        let rw = RwLock::new(1);
        *rw.write_locked() += 1;
        assert_eq!(*rw.read_locked(), 2);
    }
}
