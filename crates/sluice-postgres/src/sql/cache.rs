//! A small bounded cache of classifications, so that a statement re-sent
//! with the same text (prepared statements, ORMs, pgbench) is parsed once,
//! and one re-sent with other constants inline (the simple protocol) is
//! parsed once per shape when its classification cannot depend on them (see
//! [`super::shape`]).

use super::shape::Shape;
use super::{classify, classify_reading, Classification, ClassifyError};
use sluice_core::sync::MutexExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Longer texts are classified every time rather than kept as cache keys.
const MAX_CACHED_SQL_LEN: usize = 16 * 1024;

type Entry = Result<Arc<Classification>, ClassifyError>;

/// Thread-safe, bounded cache in front of [`classify`]. Errors are cached
/// by text only: a text of the same shape may still parse.
///
/// Eviction is by generation: entries live in `recent`; when it is full it
/// becomes `older` and the previous `older` is dropped. A hit in `older` is
/// moved back to `recent`. This keeps the statements in use at the cost of
/// at most `capacity` entries per map, without a per-entry list.
pub struct ClassifierCache {
    half: usize,
    inner: Mutex<Maps>,
}

#[derive(Default)]
struct Maps {
    /// By exact text.
    texts: Generations,
    /// By shape, for classifications every text of the shape shares.
    shapes: Generations,
}

#[derive(Default)]
struct Generations {
    recent: HashMap<String, Entry>,
    older: HashMap<String, Entry>,
}

impl Generations {
    fn get(&mut self, key: &str, half: usize) -> Option<Entry> {
        if let Some(hit) = self.recent.get(key) {
            return Some(hit.clone());
        }
        let hit = self.older.remove(key)?;
        self.insert(key, hit.clone(), half);
        Some(hit)
    }

    fn insert(&mut self, key: &str, entry: Entry, half: usize) {
        if self.recent.len() >= half {
            self.older = std::mem::take(&mut self.recent);
        }
        self.recent.insert(key.to_owned(), entry);
    }

    fn len(&self) -> usize {
        self.recent.len() + self.older.len()
    }
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
    /// A cache holding at most `capacity` classifications (at least 2) by
    /// text, and as many by shape.
    pub fn new(capacity: usize) -> Self {
        ClassifierCache {
            half: (capacity / 2).max(1),
            inner: Mutex::new(Maps::default()),
        }
    }

    /// Classifies `sql`, from the cache when the same text, or a text of
    /// the same shape whose classification holds for all of them, was seen
    /// recently.
    pub fn classify(&self, sql: &str) -> Result<Arc<Classification>, ClassifyError> {
        if sql.len() > MAX_CACHED_SQL_LEN {
            return classify(sql).map(Arc::new);
        }
        if let Some(hit) = self.lock().texts.get(sql, self.half) {
            return hit;
        }
        let shape = Shape::of(sql);
        if let Some(shape) = &shape {
            if let Some(hit) = self.lock().shapes.get(&shape.key, self.half) {
                return hit;
            }
        }
        // Parse without holding the lock; a concurrent miss on the same text
        // parses twice, which is harmless.
        let (entry, shared) = match classify_reading(sql) {
            Ok((c, reads)) => {
                // A text without constants is its own shape: kept by text only.
                let shared = shape.filter(|s| {
                    !s.constants_at.is_empty() && s.shared_by(&reads.constants_at, reads.values)
                });
                (Ok(Arc::new(c)), shared)
            }
            Err(e) => (Err(e), None),
        };
        let mut g = self.lock();
        g.texts.insert(sql, entry.clone(), self.half);
        if let Some(shape) = shared {
            g.shapes.insert(&shape.key, entry.clone(), self.half);
        }
        entry
    }

    /// Number of cached classifications (by text and by shape).
    pub fn len(&self) -> usize {
        let g = self.lock();
        g.texts.len() + g.shapes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        // The maps hold no invariant a panicking holder could break.
        self.inner.locked()
    }
}
