//! SQL classification on PostgreSQL's own grammar.
//!
//! Every statement is parsed by libpg_query (the PostgreSQL server's parser,
//! through the `pg_query` crate), so statement boundaries, comments, quoting,
//! `E''` strings and dollar quoting are understood exactly as the server will
//! understand them. Nothing here matches substrings.
//!
//! The parse tree is then walked *generically*: every nested node is visited
//! (CTEs, subqueries, set operations, function arguments, LATERAL, EXISTS,
//! `RETURNING`, `ON CONFLICT`, defaults, …), so a write or a side-effect
//! function hidden anywhere in a statement is seen. When the classifier is
//! unsure, it adds classes rather than dropping them: this is a security
//! boundary and over-classification only costs an unnecessary review.
//!
//! What the classifier cannot see is listed in [`LIMITS`].

mod bounds;
mod cache;
mod functions;
pub(crate) mod lineage;
mod memo;
pub(crate) mod resolve;
mod shape;
mod walk;

#[cfg(test)]
mod tests;

pub use cache::ClassifierCache;
pub use functions::{SENSITIVE_SETTINGS, SIDE_EFFECT_FUNCTIONS};

use std::collections::BTreeSet;

/// What the classifier cannot see; callers should document these to users.
pub const LIMITS: &[&str] = &[
    "Bodies of functions, procedures, triggers, rules and views are not visible to `classify`: \
     a call to a user-defined function or a read of a view is classified by its name only \
     (`functions`, `reads`). Only the built-in functions in SIDE_EFFECT_FUNCTIONS add classes. \
     `resolve::catalog_context` looks views and functions up in the catalog so that the \
     policy judges their bodies too; triggers and rules stay invisible.",
    "DO blocks are opaque procedural code and get every class.",
    "EXECUTE of a prepared statement has no classes of its own: the caller resolves them from \
     the PREPARE it recorded (`executes` names it).",
    "Table names are as written: unqualified names carry no schema and resolve through \
     search_path at run time (SET search_path is Utility).",
    "Functions reached through operators, casts, column notation or column defaults are not \
     listed in `functions`.",
    "Functions that run SQL given as a string (query_to_xml, ts_stat, dblink, …) hide the \
     tables they read; they are classified Admin for that reason.",
];

/// What a statement may do. Rules match on these (`match = { sql = ["write"] }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SqlClass {
    /// Reads data (SELECT, COPY TO, reading tables in a subquery, SHOW).
    Read,
    /// Changes data or takes row/table locks (INSERT, UPDATE, DELETE, MERGE,
    /// TRUNCATE, COPY FROM, SELECT FOR UPDATE, LOCK, nextval, …).
    Write,
    /// Changes the schema (CREATE, ALTER, DROP, COMMENT, CREATE TABLE AS, …).
    Ddl,
    /// Changes privileges or identity (GRANT, REVOKE, roles, SET ROLE, …).
    Dcl,
    /// Transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, …).
    Tx,
    /// Session utilities (SET, RESET, SHOW, LISTEN, NOTIFY, cursors, …).
    Utility,
    /// Server administration or reaching outside the database (server files,
    /// programs, other servers, backends, configuration, maintenance).
    Admin,
}

impl SqlClass {
    pub const ALL: [SqlClass; 7] = [
        SqlClass::Read,
        SqlClass::Write,
        SqlClass::Ddl,
        SqlClass::Dcl,
        SqlClass::Tx,
        SqlClass::Utility,
        SqlClass::Admin,
    ];

    /// The name used in configuration (`"read"`, `"write"`, …).
    pub fn name(&self) -> &'static str {
        match self {
            SqlClass::Read => "read",
            SqlClass::Write => "write",
            SqlClass::Ddl => "ddl",
            SqlClass::Dcl => "dcl",
            SqlClass::Tx => "tx",
            SqlClass::Utility => "utility",
            SqlClass::Admin => "admin",
        }
    }

    /// Parses a configuration name, case-insensitively (`"transaction"` is
    /// accepted for `tx`).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("transaction") {
            return Some(SqlClass::Tx);
        }
        SqlClass::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(s))
    }
}

impl std::fmt::Display for SqlClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What one statement of a query string does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatementInfo {
    /// The top-level command, e.g. `"SELECT"`, `"DELETE"`, `"CREATE TABLE"`,
    /// `"EXPLAIN"`, `"DO"`, `"COPY"`.
    pub command: String,
    /// Everything the statement may do, including nested effects (writes in
    /// CTEs, side-effect functions in subqueries, the statement an EXPLAIN
    /// ANALYZE or a PREPARE carries, …).
    pub classes: BTreeSet<SqlClass>,
    /// Tables and views read. Names as the parser sees them: unquoted
    /// identifiers are lowercase, quoted ones keep their case; a schema is
    /// present only when written (`"users"`, `"audit.log"`). CTE names are
    /// not tables and are left out.
    pub reads: BTreeSet<String>,
    /// Tables written: INSERT/UPDATE/DELETE/MERGE/TRUNCATE targets, the COPY
    /// FROM target, the table CREATE TABLE AS / SELECT INTO creates, LOCK
    /// targets, and the relations DDL, GRANT and maintenance commands act on.
    pub writes: BTreeSet<String>,
    /// Functions and procedures called, as written (schema-qualified when
    /// written so, `"pg_catalog.set_config"`). Matching should also consider
    /// the bare name.
    pub functions: BTreeSet<String>,
    /// A write somewhere in the statement (CTEs included) is not bounded by
    /// a predicate: an UPDATE or DELETE whose WHERE is missing or does not
    /// bound the rows (`where true`, `where id = id`, `where x or true`), a
    /// TRUNCATE, a MERGE that updates or deletes matched rows without a
    /// bounding join or condition, an `INSERT … ON CONFLICT DO UPDATE` fed by
    /// an unbounded SELECT. The rule is structural; see `bounds.rs` and
    /// docs/guardrails.md for what it cannot see.
    pub no_where: bool,
    /// The statement can change how *later* statement text is lexed or
    /// resolved, or which prepared statements exist: SET/RESET of any
    /// setting, `set_config()`, a write to `pg_settings`, DISCARD, PREPARE,
    /// DEALLOCATE, DO, CALL, LOAD, ALTER SYSTEM/ROLE/DATABASE … SET, DDL,
    /// the end of a transaction (which reverts `SET LOCAL` and the SETs of
    /// a rolled-back transaction), and any call of a function not known to
    /// be a PostgreSQL built-in (user functions can call `set_config`).
    /// The relay makes such a statement a barrier: nothing after it is
    /// forwarded until the server has answered it.
    pub changes_session: bool,
    /// The statement may define, replace, rename or drop a view, rule or
    /// routine (or runs code that may): what the catalog lookup reads
    /// (`resolve`), so its cached answers may not hold after it. Adding a
    /// column or a constraint to a table, creating an enum or an index do
    /// not.
    pub defines_code: bool,
    /// `PREPARE name AS stmt`: the name and the text of the inner statement.
    pub prepares: Option<(String, String)>,
    /// `EXECUTE name` (also inside EXPLAIN or CREATE TABLE AS): the name.
    pub executes: Option<String>,
    /// `DEALLOCATE name` → `Some(Some(name))`; `DEALLOCATE ALL` → `Some(None)`.
    pub deallocates: Option<Option<String>>,
}

/// The statements of one query string, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub statements: Vec<StatementInfo>,
}

impl Classification {
    /// The union of all statements' classes.
    pub fn classes(&self) -> BTreeSet<SqlClass> {
        self.statements
            .iter()
            .flat_map(|s| s.classes.iter().copied())
            .collect()
    }

    /// Whether any statement can change how later statements are lexed or
    /// resolved (see [`StatementInfo::changes_session`]).
    pub fn changes_session(&self) -> bool {
        self.statements.iter().any(|s| s.changes_session)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    /// PostgreSQL's grammar rejects the input; the server would too.
    #[error("cannot parse SQL: {0}")]
    Parse(String),
    /// The input parsed but could not be classified; deny it.
    #[error("{0}")]
    Unsupported(String),
}

/// Classifies every statement of a query string.
///
/// Empty input (or only comments and semicolons) gives zero statements.
/// Input PostgreSQL cannot parse is an error: a statement that cannot be
/// classified must be denied, never passed through.
pub fn classify(sql: &str) -> Result<Classification, ClassifyError> {
    classify_reading(sql).map(|(c, _)| c)
}

/// [`classify`], and what the classification read besides the statement's
/// shape (for the shape cache).
fn classify_reading(sql: &str) -> Result<(Classification, walk::Reads), ClassifyError> {
    // libpg_query and the crate's own post-processing are foreign code; if
    // either panics on a hostile input, fail closed with an error instead of
    // taking the session task down.
    std::panic::catch_unwind(|| walk::classify(sql)).unwrap_or_else(|_| {
        Err(ClassifyError::Unsupported(
            "the SQL parser failed on this statement".into(),
        ))
    })
}

/// Query strings longer than this are not described (the console shows the text).
pub const DESCRIBE_MAX_BYTES: usize = 64 * 1024;

/// A query string as the operator console shows it to an approver: per
/// statement, the command, its classes, the tables read and written, the
/// functions called and whether a write is unbounded; or why it does not
/// parse. The same classification the rules matched on.
pub fn describe(sql: &str) -> serde_json::Value {
    if sql.len() > DESCRIBE_MAX_BYTES {
        return serde_json::json!({ "error": "too long to describe" });
    }
    match classify(sql) {
        Ok(c) => serde_json::json!({
            "statements": c.statements.iter().map(|s| serde_json::json!({
                "command": s.command,
                "classes": s.classes.iter().map(|c| c.name()).collect::<Vec<_>>(),
                "reads": s.reads,
                "writes": s.writes,
                "functions": s.functions,
                "unbounded_write": s.no_where,
            })).collect::<Vec<_>>(),
        }),
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    }
}
