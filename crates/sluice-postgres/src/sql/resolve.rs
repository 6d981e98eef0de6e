//! Rules follow the catalog: a statement is judged on what the views it
//! reads or writes and the user functions and procedures it calls do.
//!
//! The relay calls [`catalog_context`] before the policy decides; it looks up
//! the views and non-built-in functions a statement names (and, to a fixed
//! point, the ones their definitions name) and returns them as
//! `Command::context` entries. The policy ([`fold`]) then adds to each
//! statement what those definitions do: a view's base tables (written too
//! when the view is written: auto-updatable views write their base table),
//! its functions; a function's or procedure's classes, tables and functions,
//! from its body (SQL bodies parse as SQL, PL/pgSQL through libpg_query's
//! PL/pgSQL parser), or, where the body cannot be read (another language),
//! from its volatility (volatile may write). Dynamic SQL (`EXECUTE` of a
//! string) is opaque and gets every class, like a DO block.
//!
//! Context entries start with a NUL, which no prepared statement name (the
//! other kind of entry, `name\0sql`) can:
//! - `\0view\0schema.name\0definition`
//! - `\0function\0schema.name\0language\0volatility\0body` (body is
//!   `prosrc` for SQL functions, `pg_get_functiondef` for SQL `BEGIN ATOMIC`
//!   and PL/pgSQL, empty for aggregates and when unknown).
//! - `\0table\0schema.name\0on_read\0on_write`: what the server runs
//!   for a table without a statement naming it, as SQL text the classifier
//!   reads. Reading it runs its row-level security policies' conditions;
//!   writing it, those and its triggers' functions, its rules' actions, its
//!   column defaults, generated columns, CHECK and domain constraints, index
//!   expressions, and writes of the tables that inherit from it. A table
//!   without any has no entry.

use super::functions::is_builtin;
use super::{ClassifierCache, SqlClass, StatementInfo};
use crate::catalog::Catalog;
use crate::PgError;
use serde_json::Value;
use std::collections::BTreeSet;

/// Rounds of "definitions name more objects" before giving up (fail closed).
const MAX_DEPTH: usize = 8;

/// A view's entry for `Command::context`.
pub fn view_context(schema: &str, name: &str, definition: &str) -> String {
    format!("\0view\0{schema}.{name}\0{definition}")
}

/// A table's entry for `Command::context`: the SQL the server evaluates
/// when the table is read, and, besides that, when it is written.
pub fn table_context(schema: &str, name: &str, on_read: &str, on_write: &str) -> String {
    table_entry(&format!("{schema}.{name}"), on_read, on_write)
}

/// A table's entry for its qualified name.
fn table_entry(qualified: &str, on_read: &str, on_write: &str) -> String {
    format!("\0table\0{qualified}\0{on_read}\0{on_write}")
}

/// A function's or procedure's entry for `Command::context`.
pub fn function_context(
    schema: &str,
    name: &str,
    language: &str,
    volatility: &str,
    body: &str,
) -> String {
    format!("\0function\0{schema}.{name}\0{language}\0{volatility}\0{body}")
}

pub(crate) enum Entry<'a> {
    View {
        name: &'a str,
        definition: &'a str,
    },
    Function {
        name: &'a str,
        language: &'a str,
        volatility: &'a str,
        body: &'a str,
    },
    Table {
        name: &'a str,
        on_read: &'a str,
        on_write: &'a str,
    },
}

/// A context entry's parts; `None` for a prepared statement's entry.
pub(crate) fn entry(s: &str) -> Option<Entry<'_>> {
    let rest = s.strip_prefix('\0')?;
    if let Some(v) = rest.strip_prefix("view\0") {
        let (name, definition) = v.split_once('\0')?;
        return Some(Entry::View { name, definition });
    }
    if let Some(t) = rest.strip_prefix("table\0") {
        let mut parts = t.splitn(3, '\0');
        return Some(Entry::Table {
            name: parts.next()?,
            on_read: parts.next()?,
            on_write: parts.next()?,
        });
    }
    let f = rest.strip_prefix("function\0")?;
    let mut parts = f.splitn(4, '\0');
    Some(Entry::Function {
        name: parts.next()?,
        language: parts.next()?,
        volatility: parts.next()?,
        body: parts.next()?,
    })
}

/// Whether a name as written (`v`, `s.v`, `db.s.v`) may be the catalog's
/// `schema.name`: an unqualified name may be any schema's (search_path is
/// the session's). A three-part name runs only in the database it names
/// (PostgreSQL refuses any other), so its last two parts are what it names.
fn names(written: &str, qualified: &str) -> bool {
    // A quoted name may hold a dot (`"my.app".f`): as written, it is the
    // catalog's name itself.
    // Unqualified (any schema's), or a quoted name holding a dot (`"x.t"`).
    if written == qualified || names_bare(qualified, written) {
        return true;
    }
    // Written with a schema (and maybe its database) before a name that may
    // itself hold dots: some split of it is the catalog's.
    written.match_indices('.').any(|(i, _)| {
        let (prefix, name) = (&written[..i], &written[i + 1..]);
        let schema = prefix.rsplit('.').next().unwrap_or(prefix);
        let Some(catalog_schema) = qualified
            .strip_suffix(name)
            .and_then(|s| s.strip_suffix('.'))
        else {
            return false;
        };
        catalog_schema == schema
            || catalog_schema == prefix
            // `pg_temp` is the session's own temporary schema, which the
            // catalog calls `pg_temp_N`.
            || (schema == "pg_temp"
                && catalog_schema
                    .strip_prefix("pg_temp_")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
    })
}

/// The names without a schema a written name may be (a quoted name may
/// hold dots: `"x.t"` is `x.t` or `t` of schema `x`): every dotted suffix.
fn bare_candidates(written: &str) -> impl Iterator<Item = &str> {
    std::iter::once(written).chain(written.match_indices('.').map(|(i, _)| &written[i + 1..]))
}

/// Whether a routine's body can be read (SQL or PL/pgSQL that parses,
/// without SQL built at run time): what it reads and does is then known.
pub(crate) fn body_is_readable(language: &str, body: &str, cache: &ClassifierCache) -> bool {
    read_body(language, body, cache).is_some()
}

/// A routine's body as statements, when it can be read.
fn read_body(language: &str, body: &str, cache: &ClassifierCache) -> Option<Vec<StatementInfo>> {
    match language {
        "sql" if !body.trim().is_empty() => sql_body(body, cache),
        "plpgsql" if !body.trim().is_empty() => plpgsql_body(body, cache),
        _ => None,
    }
}

/// A user routine's catalog entry.
pub(crate) struct Routine<'a> {
    /// `schema.name`.
    pub name: &'a str,
    pub language: &'a str,
    pub volatility: &'a str,
    pub body: &'a str,
}

impl Routine<'_> {
    /// The name without its schema.
    pub(crate) fn bare(&self) -> &str {
        self.name.rsplit_once('.').map_or(self.name, |(_, n)| n)
    }
}

/// The routines among catalog entries other than the server's own
/// (`pg_catalog`'s are judged as built-ins, by name).
pub(crate) fn user_routines(entries: &[String]) -> impl Iterator<Item = Routine<'_>> {
    entries.iter().filter_map(|e| match entry(e) {
        Some(Entry::Function {
            name,
            language,
            volatility,
            body,
        }) if !name.starts_with("pg_catalog.") => Some(Routine {
            name,
            language,
            volatility,
            body,
        }),
        _ => None,
    })
}

/// Whether a statement names a table, view or function (what the catalog
/// lookup would be asked about).
pub(crate) fn names_objects(st: &StatementInfo) -> bool {
    !st.reads.is_empty() || !st.writes.is_empty() || !st.functions.is_empty()
}

/// Whether catalog entries hold a user routine named like a built-in: the
/// text's classification took a call of that name for the built-in, which
/// cannot change the session; the user routine may (`set_config`).
pub(crate) fn shadows_a_builtin(entries: &[String]) -> bool {
    user_routines(entries).any(|r| is_builtin(&[r.bare()]))
}

/// Whether a context entry is a catalog entry (not a prepared statement).
pub(crate) fn is_catalog_entry(s: &str) -> bool {
    s.starts_with('\0')
}

/// Adds to `st` what the views and functions it names do, as the context's
/// catalog entries describe them, to a fixed point.
pub(crate) fn fold(
    st: &mut StatementInfo,
    context: &[String],
    cache: &ClassifierCache,
) -> Result<(), String> {
    let entries: Vec<Entry<'_>> = context.iter().filter_map(|c| entry(c)).collect();
    if entries.is_empty() {
        return Ok(());
    }
    let mut done_tables: BTreeSet<String> = BTreeSet::new();
    let mut done_implicit: BTreeSet<String> = BTreeSet::new();
    let mut done_functions: BTreeSet<String> = BTreeSet::new();
    for _ in 0..=MAX_DEPTH * 4 {
        let named = || {
            st.reads
                .iter()
                .map(|t| (t.clone(), false))
                .chain(st.writes.iter().map(|t| (t.clone(), true)))
        };
        let tables: Vec<(String, bool)> = named()
            .filter(|(t, w)| !done_tables.contains(&key(t, *w)))
            .collect();
        // A table's triggers, defaults and constraints run when rows are
        // written, not when DDL or a grant names it.
        let dml = st.classes.contains(&SqlClass::Write);
        let implicit: Vec<(String, bool)> = named()
            .map(|(t, w)| (t, w && dml))
            .filter(|(t, w)| !done_implicit.contains(&key(t, *w)))
            .collect();
        let functions: Vec<String> = st
            .functions
            .iter()
            .filter(|f| !done_functions.contains(*f))
            .cloned()
            .collect();
        if tables.is_empty() && implicit.is_empty() && functions.is_empty() {
            return Ok(());
        }
        for (table, written) in implicit {
            done_implicit.insert(key(&table, written));
            for e in &entries {
                if let Entry::Table {
                    name,
                    on_read,
                    on_write,
                } = e
                {
                    if names(&table, name) {
                        merge_implicit(st, on_read, cache)?;
                        if written {
                            merge_implicit(st, on_write, cache)?;
                        }
                    }
                }
            }
        }
        for (table, written) in tables {
            done_tables.insert(key(&table, written));
            for e in &entries {
                let Entry::View { name, definition } = e else {
                    continue;
                };
                if !names(&table, name) {
                    continue;
                }
                let def = cache.classify(definition).map_err(|e| e.to_string())?;
                for d in &def.statements {
                    st.reads.extend(d.reads.iter().cloned());
                    st.functions.extend(d.functions.iter().cloned());
                    st.classes.extend(d.classes.iter().copied());
                    st.changes_session |= d.changes_session;
                    if written {
                        // An auto-updatable view writes its base table.
                        st.writes.extend(d.reads.iter().cloned());
                        st.classes.insert(SqlClass::Write);
                    }
                }
            }
        }
        for function in functions {
            done_functions.insert(function.clone());
            for e in &entries {
                let Entry::Function {
                    name,
                    language,
                    volatility,
                    body,
                } = e
                else {
                    continue;
                };
                if !names(&function, name) {
                    continue;
                }
                let does = function_effects(language, volatility, body, cache);
                merge(st, &does);
            }
        }
    }
    Err("views and functions nest too deeply to judge".into())
}

/// Adds what the server runs for a table (a table entry's SQL) to `st`.
fn merge_implicit(
    st: &mut StatementInfo,
    sql: &str,
    cache: &ClassifierCache,
) -> Result<(), String> {
    if sql.trim().is_empty() {
        return Ok(());
    }
    let effects = cache.classify(sql).map_err(|e| e.to_string())?;
    for s in &effects.statements {
        let mut s = s.clone();
        if s.command == "CREATE RULE" || s.command == "CREATE TRIGGER" {
            // A rule's actions run (DML or NOTIFY), a trigger's condition
            // and function, not their definitions.
            s.classes.remove(&SqlClass::Ddl);
            s.defines_code = false;
        }
        merge(st, &s);
    }
    Ok(())
}

fn key(table: &str, written: bool) -> String {
    format!("{}{table}", if written { "w:" } else { "r:" })
}

pub(super) fn merge(st: &mut StatementInfo, other: &StatementInfo) {
    st.classes.extend(other.classes.iter().copied());
    st.reads.extend(other.reads.iter().cloned());
    st.writes.extend(other.writes.iter().cloned());
    st.functions.extend(other.functions.iter().cloned());
    st.no_where |= other.no_where;
    st.changes_session |= other.changes_session;
    st.defines_code |= other.defines_code;
}

/// What calling a function does, from its body or its volatility.
pub(super) fn function_effects(
    language: &str,
    volatility: &str,
    body: &str,
    cache: &ClassifierCache,
) -> StatementInfo {
    let mut out = StatementInfo {
        // A user function is user code: it may call set_config.
        changes_session: true,
        ..StatementInfo::default()
    };
    match read_body(language, body, cache) {
        Some(statements) => {
            for s in &statements {
                merge(&mut out, s);
            }
        }
        None if body.trim().is_empty() && matches!(language, "c" | "internal") => {
            // Compiled code (a superuser installed it): only the volatility
            // says anything. A volatile function may write. A procedural
            // language's code (plperl, plv8, …), which the agent may have
            // written itself, is opaque.
            out.classes.insert(SqlClass::Read);
            if volatility != "i" && volatility != "s" {
                out.classes.insert(SqlClass::Write);
            }
        }
        None => opaque(&mut out),
    }
    out
}

/// Code the gateway cannot read (dynamic SQL, a body that does not parse):
/// every class, and it may write every row.
fn opaque(out: &mut StatementInfo) {
    out.classes.extend(SqlClass::ALL);
    out.no_where = true;
    out.defines_code = true;
}

/// An SQL function's body: `prosrc` (statements), or the `CREATE FUNCTION …
/// BEGIN ATOMIC` definition, whose statements are walked as part of it.
/// Marks a SQL function's body that is the server's `BEGIN ATOMIC`
/// definition (`CREATE OR REPLACE FUNCTION … BEGIN ATOMIC … END`) rather
/// than its source text: a NUL, which PostgreSQL text never holds.
const ATOMIC: char = '\0';

/// A SQL function body's text, and whether it is a `BEGIN ATOMIC`
/// definition (whose CREATE is not run, only its body).
pub(crate) fn sql_text(body: &str) -> (&str, bool) {
    match body.strip_prefix(ATOMIC) {
        Some(definition) => (definition, true),
        None => (body, false),
    }
}

fn sql_body(body: &str, cache: &ClassifierCache) -> Option<Vec<StatementInfo>> {
    let (text, atomic) = sql_text(body);
    let c = cache.classify(text).ok()?;
    Some(
        c.statements
            .iter()
            .cloned()
            .map(|mut s| {
                if atomic
                    && (s.command.starts_with("CREATE FUNCTION")
                        || s.command.starts_with("CREATE PROCEDURE"))
                {
                    // The definition itself is not run, only its body
                    // (which cannot contain DDL in BEGIN ATOMIC). A source
                    // text's CREATE FUNCTION is run: DDL.
                    s.classes.remove(&SqlClass::Ddl);
                    s.defines_code = false;
                }
                s
            })
            .collect(),
    )
}

/// Whether a user routine among catalog entries may change the schema when
/// it runs (DDL in its body, or code that cannot be read): the catalog's
/// answers may not hold after it, as after DDL in the text.
///
/// Code that cannot be read is not counted: the policy sees it as every
/// class (DDL included), and masking refuses it.
pub(crate) fn routines_define_code(entries: &[String], cache: &ClassifierCache) -> bool {
    user_routines(entries).any(|r| {
        read_body(r.language, r.body, cache)
            .is_some_and(|statements| statements.iter().any(|s| s.defines_code))
    })
}

/// Whether catalog entries hold an IMMUTABLE or STABLE user routine: the
/// server may run one when it plans a statement (at Bind, folding constants
/// or estimating selectivity), before its Execute.
pub(crate) fn calls_foldable_routine(entries: &[String]) -> bool {
    user_routines(entries).any(|r| r.volatility == "i" || r.volatility == "s")
}

/// A PL/pgSQL function's statements and expressions, each classified; `None`
/// (opaque) when it runs dynamic SQL or something does not parse.
fn plpgsql_body(definition: &str, cache: &ClassifierCache) -> Option<Vec<StatementInfo>> {
    let tree = std::panic::catch_unwind(|| pg_query::parse_plpgsql(definition))
        .ok()?
        .ok()?;
    let mut queries = Vec::new();
    if !plpgsql_queries(&tree, &mut queries) {
        return None;
    }
    let mut out = Vec::new();
    for (mode, query) in queries {
        let text = match mode {
            // A whole statement.
            0 => query.clone(),
            // An expression, or `target = expr`.
            _ => format!("SELECT {query}"),
        };
        let c = match cache.classify(&text) {
            Ok(c) => c,
            // `target := expr`: read as a comparison, the same data (the
            // first `:=` is the operator's when the text parses so).
            Err(_) if (3..=5).contains(&mode) => cache
                .classify(&format!("SELECT {}", query.replacen(":=", "=", 1)))
                .ok()?,
            Err(_) => return None,
        };
        out.extend(c.statements.iter().cloned());
    }
    Some(out)
}

/// Collects `(parseMode, query)` of every PL/pgSQL expression; false when the
/// function runs SQL built at run time.
fn plpgsql_queries(v: &Value, out: &mut Vec<(i64, String)>) -> bool {
    match v {
        Value::Array(items) => items.iter().all(|i| plpgsql_queries(i, out)),
        Value::Object(m) => {
            for (k, val) in m {
                if k.starts_with("PLpgSQL_stmt_dyn") || k == "dynquery" {
                    return false;
                }
                if k == "PLpgSQL_expr" {
                    if let Value::Object(e) = val {
                        let query = e.get("query").and_then(Value::as_str).unwrap_or("");
                        let mode = e.get("parseMode").and_then(Value::as_i64).unwrap_or(0);
                        out.push((mode, query.to_owned()));
                    }
                }
                if !plpgsql_queries(val, out) {
                    return false;
                }
            }
            true
        }
        _ => true,
    }
}

/// The catalog entries (views, user functions and procedures) that the
/// statements of `classified` name, to a fixed point, as `Command::context`
/// strings for the policy: pass them along with the prepared-statement
/// entries (`policy::prepared_context`) in the judged command's `context`.
///
/// For the relay, before `decide`: call it for every SQL command that is
/// judged (simple Query, Parse, SQL PREPARE — with the classification of
/// the text being judged; for `EXECUTE name`, of the prepared definition
/// too). Names are looked up in every schema (an unqualified name resolves
/// through the *session's* search_path, which the gateway's catalog
/// connection does not share), so all candidates are judged. Built-in
/// names are looked up too, for user functions of the same name (an
/// overload the server may call instead); the built-ins themselves are
/// judged by name. On error (catalog unreachable, timeout,
/// definitions nesting deeper than the limit) the caller must refuse the
/// command: it cannot be judged. Definitions are cached on the `Catalog`
/// for `DEFINITIONS_TTL` (negative answers too, so a plain table costs no
/// round trip after the first); call `Catalog::forget_definitions` once a
/// DDL statement has completed (this function also forgets when it sees
/// one). A message with DDL that may define or rename a view, rule or
/// function, followed by statements naming tables or functions, is refused:
/// those would be judged on definitions from before the DDL ran.
// The relay calls this (issue 12); until it is wired, nothing else does.
#[allow(dead_code)]
pub(crate) async fn catalog_context(
    catalog: &Catalog,
    classified: &super::Classification,
) -> Result<Vec<String>, PgError> {
    // DDL changes what names mean: forget what was read, and do not judge a
    // later statement of the same message on definitions from before it ran
    // (unless the DDL cannot define a view or function or rename one).
    if classified
        .statements
        .iter()
        .any(|s| s.classes.contains(&SqlClass::Ddl))
    {
        catalog.forget_definitions();
    }
    if let Some(i) = classified.statements.iter().position(|s| s.defines_code) {
        // Built-in names count too: the DDL may define a function of the
        // same name that the server calls instead.
        if classified.statements[i + 1..].iter().any(names_objects) {
            return Err(PgError::Client(
                "a schema change and statements that use tables or functions cannot be judged \
                 in one message: send the schema change on its own first"
                    .into(),
            ));
        }
    }
    let mut named = Named::default();
    for st in &classified.statements {
        named.add(st);
    }
    let cache = super::ClassifierCache::new(64);
    let mut asked_tables: BTreeSet<String> = BTreeSet::new();
    let mut asked_functions: BTreeSet<String> = BTreeSet::new();
    // Tables whose rows may not be written, with their entries: what a
    // write runs (and the entry saying it) waits until one is.
    let mut unwritten: Vec<(String, String, String)> = Vec::new();
    let mut context = Vec::new();
    for _ in 0..MAX_DEPTH {
        unwritten.retain(|(table, on_write, full)| {
            let written = named.writes(table);
            if written {
                named.add_sql(on_write, &cache);
                context.push(full.clone());
            }
            !written
        });
        let new_tables: Vec<String> = named.tables.difference(&asked_tables).cloned().collect();
        let new_functions: Vec<String> = named
            .functions
            .difference(&asked_functions)
            .cloned()
            .collect();
        asked_tables.extend(new_tables.iter().cloned());
        asked_functions.extend(new_functions.iter().cloned());
        if new_tables.is_empty() && new_functions.is_empty() {
            return Ok(context);
        }
        let found = lookup(catalog, &new_tables, &new_functions).await?;
        for e in found {
            // What the definition names is looked up next round.
            match entry(&e) {
                Some(Entry::View { definition, .. }) => named.add_sql(definition, &cache),
                Some(Entry::Function {
                    language,
                    volatility,
                    body,
                    ..
                }) => named.add(&function_effects(language, volatility, body, &cache)),
                Some(Entry::Table {
                    name,
                    on_read,
                    on_write,
                }) => {
                    // Read-side only until a statement writes its rows.
                    named.add_sql(on_read, &cache);
                    unwritten.push((name.to_string(), on_write.to_string(), e.clone()));
                    context.push(table_entry(name, on_read, ""));
                    continue;
                }
                None => {}
            }
            context.push(e);
        }
        // A written view writes its base tables (`fold`).
        for e in &context {
            if let Some(Entry::View { name, definition }) = entry(e) {
                if named.writes(name) {
                    if let Ok(c) = cache.classify(definition) {
                        for s in &c.statements {
                            named.written.extend(s.reads.iter().cloned());
                        }
                    }
                }
            }
        }
    }
    Err(PgError::Upstream(
        "views and functions nest too deeply to judge".into(),
    ))
}

/// The names a statement and what it runs reach, for the catalog lookup.
#[derive(Default)]
struct Named {
    tables: BTreeSet<String>,
    functions: BTreeSet<String>,
    /// Tables whose rows are written (as `fold` sees them: named in the
    /// writes of a statement that writes).
    written: BTreeSet<String>,
}

impl Named {
    fn add(&mut self, st: &StatementInfo) {
        self.tables
            .extend(st.reads.iter().chain(st.writes.iter()).cloned());
        self.functions.extend(st.functions.iter().cloned());
        if st.classes.contains(&SqlClass::Write) {
            self.written.extend(st.writes.iter().cloned());
        }
    }

    /// Whether a statement writes rows of the catalog's `qualified`.
    fn writes(&self, qualified: &str) -> bool {
        self.written.iter().any(|t| names(t, qualified))
    }

    /// What SQL text from the catalog names (unreadable text: nothing; `fold`
    /// refuses it).
    fn add_sql(&mut self, sql: &str, cache: &ClassifierCache) {
        if let Ok(c) = cache.classify(sql) {
            for s in &c.statements {
                self.add(s);
            }
        }
    }
}

/// The views and functions of these names, from the catalog's cache (read
/// less than `DEFINITIONS_TTL` ago) or the catalog; a qualified name keeps
/// only its schema's.
async fn lookup(
    catalog: &Catalog,
    tables: &[String],
    functions: &[String],
) -> Result<Vec<String>, PgError> {
    let mut out: Vec<String> = Vec::new();
    let mut missing_tables = BTreeSet::new();
    let mut missing_functions = BTreeSet::new();
    for (kind, names, missing) in [
        ("view", tables, &mut missing_tables),
        ("function", functions, &mut missing_functions),
    ] {
        for bare in names.iter().flat_map(|n| bare_candidates(n)) {
            match catalog.cached_definitions(&format!("{kind}\0{bare}")) {
                Some(entries) => out.extend(entries.iter().cloned()),
                None => {
                    missing.insert(bare.to_string());
                }
            }
        }
    }
    let (missing_tables, missing_functions): (Vec<String>, Vec<String>) = (
        missing_tables.into_iter().collect(),
        missing_functions.into_iter().collect(),
    );
    if !missing_tables.is_empty() || !missing_functions.is_empty() {
        let generation = catalog.definitions_generation();
        let found = query(catalog, &missing_tables, &missing_functions).await?;
        for (kind, names) in [("view", &missing_tables), ("function", &missing_functions)] {
            for b in names {
                let entries: Vec<String> = found
                    .iter()
                    .filter(|e| match entry(e) {
                        Some(Entry::View { name, .. } | Entry::Table { name, .. })
                            if kind == "view" =>
                        {
                            names_bare(name, b)
                        }
                        Some(Entry::Function { name, .. }) if kind == "function" => {
                            names_bare(name, b)
                        }
                        _ => false,
                    })
                    .cloned()
                    .collect();
                catalog.cache_definitions(format!("{kind}\0{b}"), entries.clone(), generation);
                out.extend(entries);
            }
        }
    }
    // A qualified name keeps only its schema's; duplicates go.
    let mut seen = BTreeSet::new();
    out.retain(|e| {
        let keep = match entry(e) {
            Some(Entry::View { name, .. } | Entry::Table { name, .. }) => {
                tables.iter().any(|t| names(t, name))
            }
            Some(Entry::Function { name, .. }) => functions.iter().any(|f| names(f, name)),
            None => false,
        };
        keep && seen.insert(e.clone())
    });
    Ok(out)
}

/// Whether the catalog's `schema.name` has the name `bare`.
fn names_bare(qualified: &str, bare: &str) -> bool {
    qualified
        .strip_suffix(bare)
        .is_some_and(|schema| schema.len() > 1 && schema.ends_with('.'))
}

/// Queries the catalog for views and functions of these bare names, in
/// every schema.
async fn query(
    catalog: &Catalog,
    tables: &[String],
    functions: &[String],
) -> Result<Vec<String>, PgError> {
    let mut out = Vec::new();
    if !tables.is_empty() {
        let sql = format!(
            "SELECT n.nspname, c.relname, pg_catalog.pg_get_viewdef(c.oid) \
             FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('v', 'm') AND c.relname = ANY (ARRAY[{}]::text[])",
            literals(tables)
        );
        for row in catalog.query(&sql).await? {
            let [Some(schema), Some(name), definition] = &row[..] else {
                continue;
            };
            out.push(view_context(
                schema,
                name,
                definition.as_deref().unwrap_or(""),
            ));
        }
        let sql = format!(
            "{TABLE_EFFECTS} AND c.relname = ANY (ARRAY[{}]::text[])",
            literals(tables)
        );
        for row in catalog.query(&sql).await? {
            let [Some(schema), Some(name), on_read, on_write] = &row[..] else {
                continue;
            };
            if on_read.is_some() || on_write.is_some() {
                out.push(table_context(
                    schema,
                    name,
                    on_read.as_deref().unwrap_or(""),
                    on_write.as_deref().unwrap_or(""),
                ));
            }
        }
    }
    if !functions.is_empty() {
        let sql = format!(
            "SELECT n.nspname, p.proname, l.lanname, p.provolatile, \
             CASE WHEN p.prokind = 'a' THEN NULL \
                  WHEN l.lanname = 'sql' AND p.prosrc <> '' THEN p.prosrc \
                  WHEN l.lanname = 'plpgsql' AND p.prorettype IN \
                       ('pg_catalog.trigger'::pg_catalog.regtype, \
                        'pg_catalog.event_trigger'::pg_catalog.regtype) THEN p.prosrc \
                  WHEN l.lanname IN ('sql', 'plpgsql') THEN pg_catalog.pg_get_functiondef(p.oid) \
                  ELSE NULL END, \
             CASE WHEN l.lanname = 'plpgsql' AND p.prorettype IN \
                       ('pg_catalog.trigger'::pg_catalog.regtype, \
                        'pg_catalog.event_trigger'::pg_catalog.regtype) THEN 'trigger' \
                  WHEN l.lanname = 'sql' AND p.prosrc = '' THEN 'atomic' \
                  ELSE '' END, \
             (EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
                      WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass \
                      AND d.objid = p.oid AND d.deptype = 'e') \
              AND EXISTS (SELECT 1 FROM pg_catalog.pg_roles r \
                          WHERE r.oid = p.proowner AND r.rolsuper))::text, \
             pg_catalog.pg_get_expr(p.proargdefaults, 0) \
             FROM pg_catalog.pg_proc p \
             JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
             JOIN pg_catalog.pg_language l ON l.oid = p.prolang \
             WHERE p.proname = ANY (ARRAY[{}]::text[])",
            literals(functions)
        );
        for row in catalog.query(&sql).await? {
            let [Some(schema), Some(name), Some(language), Some(volatility), body, form, installed, defaults] =
                &row[..]
            else {
                continue;
            };
            // A built-in is judged by its name; a user function of the
            // same name (which the server may call instead) by its body.
            // An extension's own (pgcrypto's `gen_random_uuid`, citext's
            // `max`), installed by a superuser, is trusted like a built-in.
            if is_builtin(&[name])
                && (schema == "pg_catalog" || installed.as_deref() == Some("true"))
            {
                continue;
            }
            let body = body.as_deref().unwrap_or("");
            let body = match form.as_deref() {
                Some("trigger") => trigger_definition(body),
                // Marked with a character no body can hold (see `sql_text`).
                Some("atomic") => format!("{ATOMIC}{body}"),
                _ => body.to_string(),
            };
            out.push(function_context(schema, name, language, volatility, &body));
            // Parameter defaults are evaluated in the caller's statement
            // (when it is planned): they count as part of the call.
            if let Some(defaults) = defaults {
                let select = format!("SELECT {defaults}");
                out.push(function_context(schema, name, "sql", volatility, &select));
            }
        }
    }
    Ok(out)
}

/// What the server runs for a table or view (`c`) that no statement names,
/// as SQL text: on reads, its row-level security policies' conditions
/// (whether or not security is enabled: enabling it in an open transaction
/// is not seen by the catalog connection); on writes also its triggers'
/// functions (as calls) and `WHEN` conditions (as their definitions), its
/// rules (their actions), its defaults and generated columns, CHECK
/// constraints, its columns' domains' (and their base and element types')
/// CHECK constraints and defaults, index expressions and predicates, the
/// partition keys of it and its ancestors, and writes of the tables that
/// inherit from it (rows routed to a partition, or updated through the
/// parent; as a bounded write: the statement bounds its rows). Disabled
/// triggers count: the agent may enable them.
// Foreign keys that cascade write the referencing table too, but only on
// DELETE or UPDATE of the key, which a statement's tables do not tell apart
// from an INSERT: they are not followed (see docs/guardrails.md).
const TABLE_EFFECTS: &str = "\
SELECT n.nspname, c.relname, \
 (SELECT pg_catalog.string_agg(pg_catalog.format('SELECT %s', \
          pg_catalog.pg_get_expr(p.polqual, p.polrelid)), E';\\n') \
  FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid AND p.polqual IS NOT NULL), \
 (SELECT pg_catalog.string_agg(e.sql, E';\\n') FROM ( \
  SELECT pg_catalog.format('SELECT %I.%I()', fn.nspname, f.proname) AS sql \
   FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc f ON f.oid = t.tgfoid \
   JOIN pg_catalog.pg_namespace fn ON fn.oid = f.pronamespace \
   WHERE t.tgrelid = c.oid AND NOT t.tgisinternal \
  UNION ALL SELECT pg_catalog.pg_get_triggerdef(t.oid) FROM pg_catalog.pg_trigger t \
   WHERE t.tgrelid = c.oid AND NOT t.tgisinternal AND t.tgqual IS NOT NULL \
  UNION ALL SELECT pg_catalog.pg_get_ruledef(r.oid) FROM pg_catalog.pg_rewrite r \
   WHERE r.ev_class = c.oid AND r.rulename <> '_RETURN' \
  UNION ALL SELECT pg_catalog.format('SELECT %s', pg_catalog.pg_get_expr(d.adbin, d.adrelid)) \
   FROM pg_catalog.pg_attrdef d WHERE d.adrelid = c.oid \
  UNION ALL SELECT pg_catalog.format('SELECT %s', pg_catalog.pg_get_expr(k.conbin, k.conrelid)) \
   FROM pg_catalog.pg_constraint k WHERE k.conrelid = c.oid AND k.contype = 'c' \
  UNION ALL (WITH RECURSIVE ty(oid) AS ( \
    SELECT a.atttypid FROM pg_catalog.pg_attribute a \
    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
    UNION SELECT u.oid FROM ty JOIN pg_catalog.pg_type y ON y.oid = ty.oid, \
    LATERAL (VALUES (y.typbasetype), (y.typelem)) u(oid) WHERE u.oid <> 0) \
   SELECT pg_catalog.format('SELECT %s', pg_catalog.pg_get_expr(k.conbin, 0)) \
   FROM ty JOIN pg_catalog.pg_constraint k ON k.contypid = ty.oid WHERE k.contype = 'c' \
   UNION ALL SELECT pg_catalog.format('SELECT %s', pg_catalog.pg_get_expr(y.typdefaultbin, 0)) \
   FROM ty JOIN pg_catalog.pg_type y ON y.oid = ty.oid WHERE y.typdefaultbin IS NOT NULL) \
  UNION ALL SELECT pg_catalog.format('SELECT %s', pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid)) \
   FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid AND p.polwithcheck IS NOT NULL \
  UNION ALL SELECT pg_catalog.format('SELECT %s', pg_catalog.pg_get_expr(x.e, i.indrelid)) \
   FROM pg_catalog.pg_index i, LATERAL (VALUES (i.indexprs), (i.indpred)) x(e) \
   WHERE i.indrelid = c.oid AND x.e IS NOT NULL \
  UNION ALL SELECT pg_catalog.format('SELECT %s', pg_catalog.pg_get_expr(pt.partexprs, pt.partrelid)) \
   FROM pg_catalog.pg_partitioned_table pt \
   WHERE pt.partrelid IN (SELECT pa.relid FROM pg_catalog.pg_partition_ancestors(c.oid) pa) \
   AND pt.partexprs IS NOT NULL \
  UNION ALL SELECT pg_catalog.format('DELETE FROM %I.%I WHERE ctid = ''(0,0)''', \
   rn.nspname, rc.relname) \
   FROM pg_catalog.pg_class rc JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace \
   WHERE rc.oid IN (SELECT h.inhrelid FROM pg_catalog.pg_inherits h WHERE h.inhparent = c.oid) \
 ) e) \
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm')";

/// The variables PL/pgSQL gives a trigger (or event trigger) function.
const TRIGGER_VARIABLES: &str = "new record, old record, tg_name text, tg_when text, \
     tg_level text, tg_op text, tg_relid oid, tg_relname text, tg_table_name text, \
     tg_table_schema text, tg_nargs integer, tg_argv text[], tg_event text, tg_tag text";

/// A definition of a PL/pgSQL trigger function's body (`prosrc`) that the
/// PL/pgSQL parser reads: its output for a function returning `trigger`
/// is not valid JSON, so the body is read as that of a function taking
/// the trigger's variables as arguments, the same statements and
/// expressions.
pub(crate) fn trigger_definition(source: &str) -> String {
    let mut tag = String::from("$sluice$");
    while source.contains(tag.trim_end_matches('$')) {
        tag.insert(tag.len() - 1, '_');
    }
    format!(
        "CREATE FUNCTION pg_temp.sluice_trigger({TRIGGER_VARIABLES})\n RETURNS record\n \
         LANGUAGE plpgsql\nAS {tag}{source}{tag}\n"
    )
}

/// Bare names as SQL text values that no setting of the catalog
/// connection can make mean anything else (hex-decoded).
fn literals(names: &[String]) -> String {
    names
        .iter()
        .map(|bare| {
            let hex = sluice_core::audit::hex_lower(bare.as_bytes());
            format!("pg_catalog.convert_from(pg_catalog.decode('{hex}', 'hex'), 'UTF8')")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::sql::{classify, SqlClass::*};

    fn folded(sql: &str, context: &[String]) -> StatementInfo {
        let cache = ClassifierCache::new(64);
        let mut st = classify(sql).unwrap().statements.remove(0);
        fold(&mut st, context, &cache).unwrap();
        st
    }

    fn plpgsql(name: &str, body: &str) -> String {
        format!(
            "CREATE OR REPLACE FUNCTION public.{name}()\n RETURNS void\n LANGUAGE plpgsql\n\
             AS $function$ {body} $function$\n"
        )
    }

    #[test]
    fn reads_and_writes_through_views_reach_the_base_tables() {
        let ctx = [
            view_context("public", "v", " SELECT c.id, c.email\n   FROM customers c;"),
            view_context("public", "v2", " SELECT v.id FROM v;"),
            view_context("audit", "x", " SELECT * FROM audit.log;"),
        ];
        let st = folded("select * from v", &ctx);
        assert!(st.reads.contains("customers"), "{st:?}");
        assert!(st.writes.is_empty());
        assert_eq!(st.classes, [Read].into_iter().collect());
        // An auto-updatable view writes its base table.
        let st = folded("delete from v where id = 1", &ctx);
        assert!(st.writes.contains("customers"), "{st:?}");
        assert!(!st.no_where);
        // Views of views, to the base table.
        let st = folded("select * from v2", &ctx);
        assert!(st.reads.contains("customers"), "{st:?}");
        // A qualified name is that schema's only; an unqualified one any schema's.
        assert!(!folded("select * from public.x", &ctx)
            .reads
            .contains("audit.log"));
        assert!(folded("select * from x", &ctx).reads.contains("audit.log"));
        // Nothing in the context: as before.
        assert_eq!(folded("select * from v", &[]).reads.len(), 1);
    }

    #[test]
    fn functions_are_judged_on_their_bodies() {
        let ctx = [
            function_context("public", "purge", "sql", "v", "delete from orders"),
            function_context(
                "public",
                "total",
                "sql",
                "s",
                "select sum(amount) from orders",
            ),
            function_context(
                "public",
                "atomic",
                "sql",
                "v",
                "\0CREATE OR REPLACE FUNCTION public.atomic()\n RETURNS void\n LANGUAGE sql\n\
                 BEGIN ATOMIC\n DELETE FROM orders WHERE (id = 1);\nEND",
            ),
            function_context(
                "public",
                "pl",
                "plpgsql",
                "v",
                &plpgsql(
                    "pl",
                    "declare n int; begin select count(*) into n from customers; \
                     n := n + 1; if n > 5 then update orders set status = 'x'; end if; end",
                ),
            ),
            function_context(
                "public",
                "dyn",
                "plpgsql",
                "v",
                &plpgsql("dyn", "begin execute 'drop table ' || 'orders'; end"),
            ),
            function_context(
                "public",
                "sess",
                "plpgsql",
                "v",
                &plpgsql(
                    "sess",
                    "begin perform set_config('search_path', 'evil', false); end",
                ),
            ),
            function_context("public", "c_volatile", "c", "v", ""),
            function_context("public", "c_stable", "c", "s", ""),
            function_context("public", "p", "sql", "v", "insert into audit values (1)"),
            function_context("public", "outer_fn", "sql", "v", "select purge()"),
        ];
        let st = folded("select purge()", &ctx);
        assert!(
            st.classes.contains(&Write) && st.writes.contains("orders"),
            "{st:?}"
        );
        assert!(st.no_where && st.changes_session);

        let st = folded("select total()", &ctx);
        assert!(!st.classes.contains(&Write), "{st:?}");
        assert!(st.reads.contains("orders"));

        let st = folded("select atomic()", &ctx);
        assert!(st.classes.contains(&Write), "{st:?}");
        assert!(!st.classes.contains(&Ddl), "{st:?}");
        assert!(!st.no_where);

        let st = folded("select pl()", &ctx);
        assert!(st.reads.contains("customers"), "{st:?}");
        assert!(st.writes.contains("orders") && st.no_where, "{st:?}");
        assert!(!st.classes.contains(&Ddl), "{st:?}");

        // Dynamic SQL is opaque: every class.
        let st = folded("select dyn()", &ctx);
        assert_eq!(st.classes, SqlClass::ALL.into_iter().collect(), "{st:?}");

        let st = folded("select sess()", &ctx);
        assert!(st.classes.contains(&Admin) && st.changes_session, "{st:?}");

        // Other languages: by volatility.
        assert!(folded("select c_volatile()", &ctx).classes.contains(&Write));
        assert!(!folded("select c_stable()", &ctx).classes.contains(&Write));

        // Procedures, and functions calling functions.
        let st = folded("call p()", &ctx);
        assert!(st.writes.contains("audit"), "{st:?}");
        let st = folded("select outer_fn()", &ctx);
        assert!(st.writes.contains("orders"), "{st:?}");

        // A function named in a view's definition.
        let with_view = [
            ctx.to_vec(),
            vec![view_context("public", "w", " SELECT purge() AS purge;")],
        ]
        .concat();
        assert!(folded("select * from w", &with_view)
            .writes
            .contains("orders"));

        // Built-ins and unknown functions are left as they were.
        let st = folded("select count(*), lower('A') from t group by 1", &ctx);
        assert_eq!(st.classes, [Read].into_iter().collect(), "{st:?}");
        // A user function with a built-in's name (the lookup finds it; the
        // server may call it for the unqualified name) is judged by its body.
        let shadow = [function_context(
            "public",
            "lower",
            "sql",
            "v",
            "delete from orders",
        )];
        let st = folded("select lower(1)", &shadow);
        assert!(st.writes.contains("orders") && st.no_where, "{st:?}");
        assert!(!folded("select pg_catalog.lower('A')", &shadow)
            .writes
            .contains("orders"));
    }

    #[test]
    fn what_the_server_runs_for_a_table_is_added_to_its_reads_and_writes() {
        let ctx = [
            table_context(
                "public",
                "guarded",
                "SELECT check_owner(id)",
                "SELECT public.stamp();\nCREATE RULE r AS ON INSERT TO public.guarded \
                 DO ALSO DELETE FROM orders;\n\
                 DELETE FROM public.child WHERE ctid = '(0,0)'",
            ),
            function_context("public", "check_owner", "sql", "s", "select true"),
            function_context("public", "stamp", "sql", "v", "insert into log values (1)"),
        ];
        // Read: the policy's condition.
        let st = folded("select * from guarded", &ctx);
        assert!(st.functions.contains("check_owner"), "{st:?}");
        assert!(!st.functions.contains("public.stamp"), "{st:?}");
        assert!(st.writes.is_empty());
        // Written: the trigger's function, the rule's actions (not its
        // definition), the child table.
        let st = folded("insert into guarded values (1)", &ctx);
        assert!(st.functions.contains("public.stamp"), "{st:?}");
        for t in ["log", "orders", "public.child"] {
            assert!(st.writes.contains(t), "{t}: {st:?}");
        }
        assert!(st.no_where, "{st:?}");
        assert!(!st.classes.contains(&Ddl) && !st.defines_code, "{st:?}");
        // A child written with its parent's rows is not unbounded for it.
        let mut bounded = ctx.clone();
        bounded[0] = table_context(
            "public",
            "guarded",
            "",
            "DELETE FROM public.child WHERE ctid = '(0,0)'",
        );
        assert!(!folded("insert into guarded values (1)", &bounded).no_where);
        // DDL and grants name the table without writing rows.
        let st = folded("alter table guarded add column note text", &ctx);
        assert!(!st.functions.contains("public.stamp"), "{st:?}");
        assert!(!st.writes.contains("orders"), "{st:?}");
    }

    #[test]
    fn trigger_functions_are_read_through_their_variables() {
        let cache = ClassifierCache::new(8);
        for source in [
            " begin insert into notes select reverse(national_id) from customers; \
             return new; end ",
            " begin new.updated := now(); if tg_op = 'DELETE' then return old; end if; \
             insert into log values (tg_argv[0], $sluice$x$sluice$); return new; end ",
        ] {
            let definition = trigger_definition(source);
            let read = plpgsql_body(&definition, &cache);
            assert!(read.is_some(), "{definition}");
        }
        let st = &plpgsql_body(
            &trigger_definition(" begin delete from orders; return null; end "),
            &cache,
        )
        .unwrap()[0];
        assert!(st.writes.contains("orders") && st.no_where, "{st:?}");
        // A SQL body that creates a function runs DDL; the server's BEGIN
        // ATOMIC definition (marked) only its body.
        let mk = function_context(
            "public",
            "mk",
            "sql",
            "v",
            "create function public.count(text) returns text language sql as 'select 1'",
        );
        assert!(routines_define_code(&[mk], &cache));
        let atomic = function_context(
            "public",
            "a",
            "sql",
            "v",
            "\0CREATE OR REPLACE FUNCTION public.a()\n RETURNS void\n LANGUAGE sql\n\
             BEGIN ATOMIC\n DELETE FROM orders WHERE (id = 1);\nEND",
        );
        assert!(!routines_define_code(&[atomic], &cache));
        // Code that cannot be read is every class for the policy already,
        // and refused by masking: not counted (its calls stay pipelined).
        let dynamic = function_context(
            "public",
            "dyn",
            "plpgsql",
            "v",
            &plpgsql("dyn", "begin execute 'select 1'; end"),
        );
        assert!(!routines_define_code(&[dynamic], &cache));
        // An assignment written with `=` keeps a quoted name holding `:=`.
        let read = plpgsql_body(
            &plpgsql(
                "f",
                "declare v int; begin v = \"x:=y\"(); v := \"a:=b\"(); end",
            ),
            &cache,
        )
        .unwrap();
        let called: BTreeSet<&str> = read
            .iter()
            .flat_map(|s| s.functions.iter().map(String::as_str))
            .collect();
        assert_eq!(called, ["a:=b", "x:=y"].into_iter().collect(), "{read:?}");
        // The body cannot end the quoting early.
        let d = trigger_definition("$sluice$ language sql as $$ select 1 $$; --");
        assert!(plpgsql_body(&d, &cache).is_none(), "{d}");
    }

    #[test]
    fn a_name_with_its_database_names_the_same_object() {
        assert!(names("f", "public.f"));
        assert!(names("public.f", "public.f"));
        assert!(names("app.public.f", "public.f"));
        assert!(!names("app.other.f", "public.f"));
        assert!(!names("other.f", "public.f"));
        assert!(!names("g", "public.f"));
        assert!(names("my.app.f", "my.app.f"), "a schema with a dot");
        // A quoted name with a dot, and the session's temporary schema.
        assert!(names("x.t", "public.x.t"));
        assert!(bare_candidates("x.t").eq(["x.t", "t"]));
        assert!(names("pg_temp.f", "pg_temp_3.f"));
        assert!(!names("pg_temp.f", "pg_temp_3.g"));
        assert!(!names("pg_temp.f", "pg_toast_temp_3.f"));
        assert!(!names("pg_temp.f", "public.f"));
        assert!(names("pg_temp.x.f", "pg_temp_3.x.f"));
        assert!(names("mydb.public.x.f", "public.x.f"));
        assert!(!names("mydb.other.x.f", "public.x.f"));
        assert!(!names("public.x", "audit.x"));
        // The policy folds a routine called with its database's name too.
        let ctx = [function_context(
            "public",
            "purge",
            "sql",
            "v",
            "delete from orders",
        )];
        let st = folded("select app.public.purge()", &ctx);
        assert!(st.writes.contains("orders"), "{st:?}");
        assert!(st.no_where, "{st:?}");
    }

    #[test]
    fn catalog_entries_do_not_answer_for_prepared_names() {
        assert!(is_catalog_entry(&view_context("s", "v", "select 1")));
        assert!(!is_catalog_entry(&crate::policy::prepared_context(
            "view", "select 1"
        )));
        assert!(entry(&crate::policy::prepared_context("view", "select 1")).is_none());
    }

    /// A catalog whose upstream refuses connections: lookups fail.
    fn unreachable_catalog() -> Catalog {
        let connection: sluice_core::config::ConnectionConfig = sluice_core::toml::from_str(
            "name = \"db\"\nkind = \"postgres\"\nupstream = \"127.0.0.1:1\"\n\
             database = \"db\"\nuser = \"u\"\npassword = { file = \"/dev/null\" }\n",
        )
        .unwrap();
        Catalog::new(connection)
    }

    #[tokio::test]
    async fn catalog_context_fails_closed() {
        let catalog = unreachable_catalog();
        // Nothing to look up: no round trip, no error.
        let c = classify("select 1, 'a' || 'b'").unwrap();
        assert!(catalog_context(&catalog, &c).await.unwrap().is_empty());
        // Built-in names are looked up too: a user function may share one.
        let c = classify("select now(), count(*) from generate_series(1, 3)").unwrap();
        assert!(catalog_context(&catalog, &c).await.is_err());
        // A lookup that fails is an error, never "no views".
        let c = classify("select * from v").unwrap();
        assert!(catalog_context(&catalog, &c).await.is_err());
        let c = classify("select f()").unwrap();
        assert!(catalog_context(&catalog, &c).await.is_err());
        // An answer read across a schema change is not kept.
        let before = catalog.definitions_generation();
        catalog.forget_definitions();
        catalog.cache_definitions("view\0v".into(), vec![], before);
        assert!(catalog.cached_definitions("view\0v").is_none());
        // A cached answer is used without asking.
        catalog.cache_definitions(
            "view\0v".into(),
            vec![view_context("s", "v", "select 1")],
            catalog.definitions_generation(),
        );
        let c = classify("select * from v").unwrap();
        assert_eq!(catalog_context(&catalog, &c).await.unwrap().len(), 1);
        // DDL that may define code, then statements naming objects in the
        // same message: refused, and the cache is forgotten.
        for sql in [
            "create view w as select 1; select * from v",
            "create function g() returns int language sql as 'select 1'; select g()",
            "alter table v rename to w; select * from w",
            "create function lower(int) returns int language sql as 'select 1'; select lower(1)",
        ] {
            let c = classify(sql).unwrap();
            assert!(
                matches!(catalog_context(&catalog, &c).await, Err(PgError::Client(_))),
                "{sql}"
            );
            assert!(catalog.cached_definitions("view\0v").is_none());
            catalog.cache_definitions("view\0v".into(), vec![], catalog.definitions_generation());
        }
        // A table created and used in one message (psql -c "…; …") is looked
        // up (here: the catalog is unreachable), not refused as such.
        let c =
            classify("create temp table m (a int); insert into m values (1); select sum(a) from m")
                .unwrap();
        assert!(matches!(
            catalog_context(&catalog, &c).await,
            Err(PgError::Upstream(_))
        ));
    }

    #[test]
    fn names_are_hex_literals() {
        let l = literals(&["public.o'; drop table t; --".into()]);
        let hex = l
            .strip_prefix("pg_catalog.convert_from(pg_catalog.decode('")
            .and_then(|r| r.strip_suffix("', 'hex'), 'UTF8')"))
            .unwrap();
        assert!(hex.chars().all(|c| c.is_ascii_hexdigit()), "{l}");
    }
}
