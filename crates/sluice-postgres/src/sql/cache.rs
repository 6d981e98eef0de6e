//! A small bounded cache of classifications, so that a statement re-sent
//! with the same text (prepared statements, ORMs, pgbench) is parsed once,
//! and one re-sent with other constants inline (the simple protocol) is
//! parsed once per shape when its classification cannot depend on them (see
//! [`super::shape`]).

use super::memo::ShapeMemo;
use super::{classify_reading, Classification, ClassifyError};
use std::sync::Arc;

/// Thread-safe, bounded cache in front of [`super::classify`] (see
/// [`super::memo`] for how it evicts). Errors are cached by text only: a
/// text of the same shape may still parse.
pub struct ClassifierCache {
    memo: ShapeMemo<Classification, ClassifyError>,
}

impl std::fmt::Debug for ClassifierCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassifierCache")
            .field("len", &self.len())
            .finish()
    }
}

impl ClassifierCache {
    /// A cache holding at most `capacity` classifications (at least 2) by
    /// text, and as many by shape.
    pub fn new(capacity: usize) -> Self {
        ClassifierCache {
            memo: ShapeMemo::new(capacity),
        }
    }

    /// Classifies `sql`, from the cache when the same text, or a text of
    /// the same shape whose classification holds for all of them, was seen
    /// recently.
    pub fn classify(&self, sql: &str) -> Result<Arc<Classification>, ClassifyError> {
        self.memo.get(sql, classify_reading)
    }

    /// Number of cached classifications (by text and by shape).
    pub fn len(&self) -> usize {
        self.memo.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
