//! What the catalog says about the views and user functions a statement
//! names (`sql::resolve`), for the policy to judge the statement on what
//! they do, cached briefly per connection so that a statement shape costs
//! one catalog lookup per interval, not one per execution.
//!
//! A schema change made through the gateway (any DDL it forwards) empties
//! the cache at once; one made around it is seen within [`TTL`].

use crate::catalog::Catalog;
use crate::sql::Classification;
use crate::PgError;
use sluice_core::sync::MutexExt;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// How long a lookup's answer is reused.
pub(crate) const TTL: Duration = Duration::from_secs(2);
/// Entries kept before the cache starts over.
const MAX_ENTRIES: usize = 4096;

struct Entry {
    at: Instant,
    generation: u64,
    context: Arc<Vec<String>>,
}

static CACHE: LazyLock<Mutex<HashMap<(String, String), Entry>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// A schema change went through the gateway: nothing cached still holds.
pub(crate) fn schema_changed() {
    GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// Forgets what was read: this cache's and `resolver`'s definitions.
pub(crate) fn forget(resolver: Option<&Catalog>) {
    schema_changed();
    if let Some(catalog) = resolver {
        catalog.forget_definitions();
    }
}

/// A session's schema change inside a transaction that is not over yet.
/// Others may read the catalog meanwhile (without the change, which only
/// its commit shows them): what they cache is forgotten again when the
/// server reports the transaction over.
pub(crate) struct Uncommitted {
    /// The relay's sequence number of the last such change (0: none).
    pending: AtomicU64,
    resolver: Option<Arc<Catalog>>,
    /// Exclusive gate holds of forwarded commands that may publish code, by
    /// sequence number: given back at the first ReadyForQuery after the
    /// command completed, when its change is committed (or still private
    /// to its transaction) and the caches are forgotten.
    holds: Mutex<Vec<(u64, super::gate::GateHold, Arc<()>)>>,
    /// Cancels the session's command still running when its hold stops
    /// counting (see `hold_until_ready`).
    canceller: Option<super::Canceller>,
}

impl Uncommitted {
    pub(crate) fn new(
        resolver: Option<Arc<Catalog>>,
        canceller: Option<super::Canceller>,
    ) -> Arc<Self> {
        Arc::new(Uncommitted {
            pending: AtomicU64::new(0),
            resolver,
            holds: Mutex::new(Vec::new()),
            canceller,
        })
    }

    /// Whether a forwarded change holds the gate until a ReadyForQuery:
    /// whether one of its holds still keeps others out, and how old the
    /// oldest is.
    pub(crate) fn holds_age(&self) -> Option<(bool, std::time::Duration)> {
        let holds = self.holds.locked();
        let ages = holds.iter().filter_map(|(_, h, _)| h.age());
        let oldest = ages.clone().max()?;
        let fresh = ages.clone().any(|a| a < super::gate::WAIT);
        Some((fresh, oldest))
    }

    /// Keeps `hold` until the ReadyForQuery after command `seq`. A hold
    /// stops keeping others out after `gate::COUNTS_FOR`; a command still
    /// running on the server `gate::WAIT` after it was taken (`select
    /// pg_sleep(600); create …`) is cancelled, so that what it defines is
    /// not published unguarded.
    pub(crate) fn hold_until_ready(&self, seq: u64, hold: super::gate::GateHold) {
        let running = Arc::new(());
        let still = Arc::downgrade(&running);
        self.holds.locked().push((seq, hold, running));
        let Some(c) = self.canceller.clone() else {
            return;
        };
        tokio::spawn(async move {
            tokio::time::sleep(super::gate::WAIT).await;
            if still.upgrade().is_some() {
                tracing::warn!(
                    message =
                        "A schema change outlasted its hold on the catalog gate; cancelling it."
                );
                let _ = crate::upstream::cancel(&c.target, c.pid, &c.secret).await;
            }
        });
    }

    /// A ReadyForQuery, with commands up to `done` answered: what they
    /// published is committed (or still private to an open transaction,
    /// `COMMIT; BEGIN`) and the caches are forgotten before the holds go.
    pub(crate) fn ready(&self, done: u64) {
        let mut holds = self.holds.locked();
        if holds.iter().any(|(seq, _, _)| *seq <= done) {
            forget(self.resolver.as_deref());
            holds.retain(|(seq, _, _)| *seq > done);
        }
    }

    /// Forwarded command `seq` may define a view or routine.
    pub(crate) fn mark(&self, seq: u64) {
        self.pending.fetch_max(seq, Ordering::SeqCst);
    }

    /// The server reported no transaction open, with commands up to `done`
    /// answered: a transaction that held a change may just have committed
    /// (one before the last marked, too).
    pub(crate) fn ended(&self, done: u64) {
        let pending = self.pending.load(Ordering::SeqCst);
        if pending == 0 {
            return;
        }
        forget(self.resolver.as_deref());
        if done >= pending {
            let _ = self
                .pending
                .compare_exchange(pending, 0, Ordering::SeqCst, Ordering::SeqCst);
        }
    }
}

/// The names a lookup is about: every relation and function the statements
/// name, and which relations' rows they write (what writing runs is looked
/// up only for those).
fn key(classified: &[&Classification]) -> String {
    let mut names = BTreeSet::new();
    for c in classified {
        for st in &c.statements {
            let writes = st.classes.contains(&crate::sql::SqlClass::Write);
            names.extend(st.reads.iter().map(|t| format!("t:{t}")));
            names.extend(
                st.writes
                    .iter()
                    .map(|t| format!("{}:{t}", if writes { "w" } else { "t" })),
            );
            names.extend(st.functions.iter().map(|f| format!("f:{f}")));
        }
    }
    names.into_iter().collect::<Vec<_>>().join("\n")
}

/// The catalog entries for `classified` (and the definitions it runs, e.g.
/// the statement an `EXECUTE` names), as `Command::context` strings. An
/// error means the statement cannot be judged: the caller refuses it.
pub(crate) async fn context(
    connection: &str,
    catalog: &Catalog,
    classified: &[&Classification],
) -> Result<Arc<Vec<String>>, PgError> {
    let key = key(classified);
    if key.is_empty() {
        return Ok(Arc::default());
    }
    let generation = GENERATION.load(Ordering::SeqCst);
    let cache_key = (connection.to_string(), key);
    {
        let cache = CACHE.locked();
        if let Some(e) = cache.get(&cache_key) {
            if e.generation == generation && e.at.elapsed() < TTL {
                return Ok(e.context.clone());
            }
        }
    }
    let mut context = Vec::new();
    for c in classified {
        // Boxed: a lookup is rare (a cache miss) and its future large; inline,
        // it would be part of every idle session's memory.
        context.extend(Box::pin(crate::sql::resolve::catalog_context(catalog, c)).await?);
    }
    let context = Arc::new(context);
    let mut cache = CACHE.locked();
    if cache.len() >= MAX_ENTRIES {
        cache.clear();
    }
    cache.insert(
        cache_key,
        Entry {
            at: Instant::now(),
            generation,
            context: context.clone(),
        },
    );
    Ok(context)
}

/// The view definitions among catalog entries, by the names a statement may
/// write them with (`name` and `schema.name`), for masking's lineage.
pub(crate) fn views(entries: &[String]) -> super::Views {
    let mut views = HashMap::new();
    for e in entries {
        let Some(rest) = e.strip_prefix("\0view\0") else {
            continue;
        };
        let Some((qualified, definition)) = rest.split_once('\0') else {
            continue;
        };
        let definition: Arc<str> = Arc::from(definition);
        if let Some((_, name)) = qualified.split_once('.') {
            views.insert(name.to_string(), definition.clone());
        }
        views.insert(qualified.to_string(), definition);
    }
    Arc::new(views)
}
