//! Names of the tables behind result columns. A RowDescription carries each
//! column's source table OID and attribute number; column masking rules are
//! written with names (`users.ssn`), so OIDs are looked up in the upstream's
//! catalog over a separate gateway connection and cached per connection.

use crate::frame::{data_row_values, split_message, MAX_BACKEND_MESSAGE};
use crate::upstream::{self, error_fields, Upstream, UpstreamTarget};
use crate::PgError;
use sluice_core::config::ConnectionConfig;
use sluice_core::sync::MutexExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Set on the catalog connection: its queries end before `LOOKUP_TIMEOUT`.
pub const CATALOG_TIMEOUTS: &str = "SET lock_timeout = 2000; SET statement_timeout = 8000";

/// A table as the catalog names it, with its columns by attribute number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub schema: String,
    pub name: String,
    pub columns: HashMap<i16, String>,
}

/// The catalog cache of one connection, shared by its sessions.
pub struct Catalog {
    connection: ConnectionConfig,
    tables: std::sync::Mutex<HashMap<u32, Arc<TableInfo>>>,
    client: tokio::sync::Mutex<Option<Upstream>>,
    /// View and function definitions by kind and bare name (`sql::resolve`),
    /// with when they were read; empty when the name is neither.
    definitions: std::sync::Mutex<HashMap<String, Definitions>>,
}

/// When definitions were read, the generation they were read in, and the
/// context entries they gave.
type Definitions = (Instant, u64, Arc<Vec<String>>);

/// Counts `forget_definitions` calls on every catalog: an answer read across
/// one is not kept (it may predate the schema change), nor used after one
/// (two connection names may reach the same database).
static FORGOTTEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How long a view's or function's definition is trusted without asking the
/// catalog again (the relay also forgets them after DDL on the connection).
pub(crate) const DEFINITIONS_TTL: Duration = Duration::from_secs(10);

impl Catalog {
    pub fn new(connection: ConnectionConfig) -> Self {
        Catalog {
            connection,
            tables: std::sync::Mutex::new(HashMap::new()),
            client: tokio::sync::Mutex::new(None),
            definitions: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Taken before a definitions query; passed to [`Self::cache_definitions`].
    pub(crate) fn definitions_generation(&self) -> u64 {
        FORGOTTEN.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Definitions read less than [`DEFINITIONS_TTL`] ago, by key.
    pub(crate) fn cached_definitions(&self, key: &str) -> Option<Arc<Vec<String>>> {
        let cache = self.definitions.locked();
        let (at, generation, entries) = cache.get(key)?;
        (at.elapsed() < DEFINITIONS_TTL && *generation == self.definitions_generation())
            .then(|| entries.clone())
    }

    /// Keeps definitions read since `generation` (unless DDL went through
    /// meanwhile: then they may be stale, and are not kept).
    pub(crate) fn cache_definitions(&self, key: String, entries: Vec<String>, generation: u64) {
        {
            let mut cache = self.definitions.locked();
            if self.definitions_generation() != generation {
                return;
            }
            if cache.len() >= 4096 {
                cache.retain(|_, (at, _, _)| at.elapsed() < DEFINITIONS_TTL);
                if cache.len() >= 4096 {
                    cache.clear();
                }
            }
            cache.insert(key, (Instant::now(), generation, Arc::new(entries)));
        }
    }

    /// Forgets every view and function definition read (call after DDL).
    pub(crate) fn forget_definitions(&self) {
        let mut cache = self.definitions.locked();
        FORGOTTEN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        cache.clear();
    }

    fn cached(&self, oid: u32) -> Option<Arc<TableInfo>> {
        self.tables.locked().get(&oid).cloned()
    }

    /// The tables for `oids` (0 = no table). A lookup that fails is an error:
    /// callers must fail closed (mask, or refuse), not guess.
    pub async fn tables(&self, oids: &[u32]) -> Result<HashMap<u32, Arc<TableInfo>>, PgError> {
        let mut out = HashMap::new();
        let mut missing: Vec<u32> = Vec::new();
        for &oid in oids {
            if oid == 0 || out.contains_key(&oid) || missing.contains(&oid) {
                continue;
            }
            match self.cached(oid) {
                Some(t) => {
                    out.insert(oid, t);
                }
                None => missing.push(oid),
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let found = tokio::time::timeout(LOOKUP_TIMEOUT, self.lookup(&missing))
            .await
            .map_err(|_| PgError::Upstream("catalog lookup timed out".into()))??;
        {
            let mut cache = self.tables.locked();
            for (oid, t) in &found {
                cache.insert(*oid, t.clone());
            }
        }
        out.extend(found);
        Ok(out)
    }

    async fn lookup(&self, oids: &[u32]) -> Result<HashMap<u32, Arc<TableInfo>>, PgError> {
        let list = oids
            .iter()
            .map(|o| o.to_string())
            .collect::<Vec<_>>()
            .join(",");
        // OIDs are numbers we format ourselves: nothing to quote.
        let sql = format!(
            "SELECT c.oid, n.nspname, c.relname, a.attnum, a.attname \
             FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid \
             WHERE c.oid IN ({list}) AND a.attnum > 0 AND NOT a.attisdropped"
        );
        let mut tables: HashMap<u32, TableInfo> = HashMap::new();
        for row in self.run(&sql).await? {
            let [Some(oid), Some(schema), Some(name), Some(attnum), Some(attname)] = &row[..]
            else {
                continue;
            };
            let (Ok(oid), Ok(attnum)) = (oid.parse::<u32>(), attnum.parse::<i16>()) else {
                continue;
            };
            tables
                .entry(oid)
                .or_insert_with(|| TableInfo {
                    schema: schema.clone(),
                    name: name.clone(),
                    columns: HashMap::new(),
                })
                .columns
                .insert(attnum, attname.clone());
        }
        Ok(tables.into_iter().map(|(k, v)| (k, Arc::new(v))).collect())
    }
}

impl Catalog {
    /// Runs one catalog query on the gateway's own connection (rows as
    /// text), with the lookup timeout. An error or a timeout is an error:
    /// callers fail closed.
    pub(crate) async fn query(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PgError> {
        tokio::time::timeout(LOOKUP_TIMEOUT, self.run(sql))
            .await
            .map_err(|_| PgError::Upstream("catalog lookup timed out".into()))?
    }

    /// Runs one query on the catalog connection. The connection is taken
    /// out while the query runs and put back only after a whole answer: a
    /// query that fails, or is abandoned (its lookup timed out, the future
    /// dropped), takes the connection with it, and the next one connects
    /// anew instead of reading the abandoned query's answer as its own.
    async fn run(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PgError> {
        let mut client = self.client.lock().await;
        let mut up = match client.take() {
            Some(up) => up,
            None => {
                let target = UpstreamTarget::for_connection(&self.connection)?;
                let mut up = upstream::connect(&self.connection, &target, &BTreeMap::new()).await?;
                // A lookup waiting on a lock (a view in another session's
                // migration) ends on the server before the gateway gives
                // up on it: an abandoned backend would keep waiting.
                simple_query(&mut up, CATALOG_TIMEOUTS).await?;
                up
            }
        };
        let rows = simple_query(&mut up, sql).await?;
        *client = Some(up);
        Ok(rows)
    }
}

/// Runs one simple query on an idle upstream connection; rows as text.
async fn simple_query(up: &mut Upstream, sql: &str) -> Result<Vec<Vec<Option<String>>>, PgError> {
    let mut msg = Vec::with_capacity(sql.len() + 6);
    msg.push(b'Q');
    msg.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
    msg.extend_from_slice(sql.as_bytes());
    msg.push(0);
    let io = |e: std::io::Error| PgError::Upstream(e.to_string());
    up.stream.write_all(&msg).await.map_err(io)?;
    up.stream.flush().await.map_err(io)?;
    let mut rows = Vec::new();
    let mut error = None;
    loop {
        let m = match split_message(&mut up.pending, MAX_BACKEND_MESSAGE)
            .map_err(|e| PgError::Upstream(e.to_string()))?
        {
            Some(m) => m,
            None => {
                if up.stream.read_buf(&mut up.pending).await.map_err(io)? == 0 {
                    return Err(PgError::Upstream("catalog connection closed".into()));
                }
                continue;
            }
        };
        match m.tag {
            b'D' => {
                let values = data_row_values(m.body())
                    .ok_or_else(|| PgError::Upstream("malformed DataRow".into()))?;
                rows.push(
                    values
                        .into_iter()
                        .map(|v| v.map(|b| String::from_utf8_lossy(b).into_owned()))
                        .collect(),
                );
            }
            b'E' => error = Some(error_fields(m.body()).1),
            b'Z' => break,
            _ => {}
        }
    }
    match error {
        Some(e) => Err(PgError::Upstream(format!("catalog lookup failed: {e}"))),
        None => Ok(rows),
    }
}
