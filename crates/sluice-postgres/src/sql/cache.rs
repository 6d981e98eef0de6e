//! A small bounded cache of classifications, so that a statement re-sent
//! with the same text (prepared statements, ORMs, pgbench) is parsed once.

use super::{classify, Classification, ClassifyError};
use sluice_core::sync::MutexExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Longer texts are classified every time rather than kept as cache keys.
const MAX_CACHED_SQL_LEN: usize = 16 * 1024;

type Entry = Result<Arc<Classification>, ClassifyError>;

/// Thread-safe, bounded cache in front of [`classify`]. Errors are cached
/// too.
///
/// Eviction is by generation: entries live in `recent`; when it is full it
/// becomes `older` and the previous `older` is dropped. A hit in `older` is
/// moved back to `recent`. This keeps the statements in use at the cost of
/// at most `capacity` entries, without a per-entry list.
pub struct ClassifierCache {
    half: usize,
    inner: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    recent: HashMap<String, Entry>,
    older: HashMap<String, Entry>,
}

impl std::fmt::Debug for ClassifierCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassifierCache")
            .field("capacity", &(self.half * 2))
            .field("len", &self.len())
            .finish()
    }
}

impl ClassifierCache {
    /// A cache holding at most `capacity` classifications (at least 2).
    pub fn new(capacity: usize) -> Self {
        ClassifierCache {
            half: (capacity / 2).max(1),
            inner: Mutex::new(Generations::default()),
        }
    }

    /// Classifies `sql`, from the cache when the same text was seen recently.
    pub fn classify(&self, sql: &str) -> Result<Arc<Classification>, ClassifyError> {
        if sql.len() > MAX_CACHED_SQL_LEN {
            return classify(sql).map(Arc::new);
        }
        {
            let mut g = self.lock();
            if let Some(hit) = g.recent.get(sql) {
                return hit.clone();
            }
            if let Some(hit) = g.older.remove(sql) {
                self.insert(&mut g, sql, hit.clone());
                return hit;
            }
        }
        // Parse without holding the lock; a concurrent miss on the same text
        // parses twice, which is harmless.
        let entry = classify(sql).map(Arc::new);
        let mut g = self.lock();
        self.insert(&mut g, sql, entry.clone());
        entry
    }

    /// Number of cached classifications.
    pub fn len(&self) -> usize {
        let g = self.lock();
        g.recent.len() + g.older.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, g: &mut Generations, sql: &str, entry: Entry) {
        if g.recent.len() >= self.half {
            g.older = std::mem::take(&mut g.recent);
        }
        g.recent.insert(sql.to_owned(), entry);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // The maps hold no invariant a panicking holder could break.
        self.inner.locked()
    }
}
