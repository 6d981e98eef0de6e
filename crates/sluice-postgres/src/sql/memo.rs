//! The bounded memo behind the classifier's and the lineage's caches: by
//! exact text, and by shape (see [`super::shape`]) for results that hold
//! for every text of their shape.
//!
//! Eviction is by generation: entries live in `recent`; when it is full it
//! becomes `older` and the previous `older` is dropped. A hit in `older` is
//! moved back to `recent`. This keeps the statements in use at the cost of
//! at most `capacity` entries per map, without a per-entry list.

use super::shape::Shape;
use super::walk::Reads;
use sluice_core::sync::MutexExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Longer texts are computed every time rather than kept as keys.
const MAX_KEY_LEN: usize = 16 * 1024;

type Entry<T, E> = Result<Arc<T>, E>;

pub(super) struct ShapeMemo<T, E> {
    half: usize,
    maps: Mutex<Maps<T, E>>,
}

struct Maps<T, E> {
    /// By exact text (errors included).
    texts: Generations<T, E>,
    /// By shape: only results that read no constant's value and no text,
    /// of texts whose every constant is a plain literal of the tree.
    shapes: Generations<T, E>,
}

struct Generations<T, E> {
    recent: HashMap<String, Entry<T, E>>,
    older: HashMap<String, Entry<T, E>>,
}

impl<T, E: Clone> Generations<T, E> {
    fn new() -> Self {
        Generations {
            recent: HashMap::new(),
            older: HashMap::new(),
        }
    }

    fn get(&mut self, key: &str, half: usize) -> Option<Entry<T, E>> {
        if let Some(hit) = self.recent.get(key) {
            return Some(hit.clone());
        }
        let hit = self.older.remove(key)?;
        self.insert(key, hit.clone(), half);
        Some(hit)
    }

    fn insert(&mut self, key: &str, entry: Entry<T, E>, half: usize) {
        if self.recent.len() >= half {
            self.older = std::mem::take(&mut self.recent);
        }
        self.recent.insert(key.to_owned(), entry);
    }

    fn len(&self) -> usize {
        self.recent.len() + self.older.len()
    }
}

impl<T, E: Clone> ShapeMemo<T, E> {
    /// At most `capacity` entries (at least 2) by text, and as many by shape.
    pub(super) fn new(capacity: usize) -> Self {
        ShapeMemo {
            half: (capacity / 2).max(1),
            maps: Mutex::new(Maps {
                texts: Generations::new(),
                shapes: Generations::new(),
            }),
        }
    }

    /// The result for `sql`: remembered for this text, or for its shape, or
    /// computed (without the lock: a concurrent miss on the same text
    /// computes twice, which is harmless). Errors are remembered by text
    /// only: another text of the shape may succeed.
    pub(super) fn get(
        &self,
        sql: &str,
        compute: impl FnOnce(&str) -> Result<(T, Reads), E>,
    ) -> Entry<T, E> {
        if sql.len() > MAX_KEY_LEN {
            return compute(sql).map(|(v, _)| Arc::new(v));
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
        let (entry, shared) = match compute(sql) {
            Ok((value, reads)) => {
                // A text without constants is its own shape: kept by text.
                let shared = shape.filter(|s| {
                    !s.constants_at.is_empty() && s.shared_by(&reads.constants_at, reads.values)
                });
                (Ok(Arc::new(value)), shared)
            }
            Err(e) => (Err(e), None),
        };
        let mut maps = self.lock();
        maps.texts.insert(sql, entry.clone(), self.half);
        if let Some(shape) = shared {
            maps.shapes.insert(&shape.key, entry.clone(), self.half);
        }
        entry
    }

    /// Entries held, by text and by shape.
    pub(super) fn len(&self) -> usize {
        let maps = self.lock();
        maps.texts.len() + maps.shapes.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps<T, E>> {
        // The maps hold no invariant a panicking holder could break.
        self.maps.locked()
    }
}
