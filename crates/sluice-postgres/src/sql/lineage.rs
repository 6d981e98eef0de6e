//! Column lineage: which source columns each output column of a statement
//! may derive from, so that a column masking rule follows the data and not
//! the column's name.
//!
//! PostgreSQL names a result column's source (table OID and attribute
//! number in the RowDescription) only when the column is a plain reference
//! to a table column. Anything computed (`reverse(national_id)`,
//! `national_id || ''`, `row_to_json(c)`, `string_agg(…)`, a UNION, a
//! window function, a scalar subquery) arrives with table OID 0. This module
//! reads the statement with PostgreSQL's own parser and computes, for each
//! top-level output column, the set of source columns it *may* derive from:
//! column references resolved through FROM aliases, subqueries, CTEs
//! (recursive ones to a fixpoint), joins and LATERAL; whole-row references
//! (`c`, `c.*`, `row_to_json(c)`) derive from every column of `c`; `*`
//! expands. The analysis over-approximates: an unqualified name with several
//! relations in scope may come from any of them; every column referenced in
//! an expression counts (CASE conditions included), except those that only
//! filter, group or order rows (WHERE, HAVING, JOIN ON, GROUP BY, ORDER BY,
//! FILTER, window PARTITION/ORDER), which are documented oracles.
//!
//! Without a catalog, `*` over a table has an unknown number of columns. The
//! analysis is aligned with the RowDescription the server sent: columns of a
//! table expanded by `*` and plain references carry a table OID, computed
//! ones do not; when several alignments remain, a computed column gets the
//! sources of every one of them, and when none fits, it derives from every
//! relation the statement names.
//!
//! Three entry points for the relay: [`apply_lineage`] labels the computed
//! columns of a result with the ruled source they derive from (so core's
//! column-rule plan masks them whole); [`side_channel`] refuses statements
//! that carry a ruled column somewhere other than their own result
//! (`pg_notify`, `set_config`, INSERT … SELECT, UPDATE SET, CREATE TABLE AS,
//! views, COPY, procedural code, `pg_stats`); [`references_ruled`] says
//! whether a statement reads a ruled column at all, so that values the
//! server echoes in errors and notices can be blanked.
//!
//! For the relay (when column rules apply on the session,
//! `ResponseMasker::has_column_rules`):
//! - before forwarding a statement (Query, Parse, PREPARE): `side_channel`;
//!   an `Err` is a refusal with that reason;
//! - on each RowDescription, after the catalog named the plain columns:
//!   `apply_lineage` with the text of the statement that produces the rows
//!   (for `FETCH`, the cursor's `DECLARE`; for `EXECUTE` and a Bind of a
//!   prepared statement, its `PREPARE`/Parse text); an `Err` withholds the
//!   rows with that reason. Views are followed when `SessionRules::views`
//!   holds their definitions (`pg_get_viewdef`), looked up for the names
//!   `relations` returns;
//! - for ErrorResponse/NoticeResponse of a statement where
//!   `references_ruled` is true: blank the values the server quotes
//!   (detail, the quoted parts of the message), not only the detectors.
//!
//! Everything is cached by statement text (bounded), and by shape when
//! the analysis holds for every text of it (`super::shape`), so a prepared
//! statement executed many times, or a simple-protocol one re-sent with
//! other constants, is analysed once; results whose columns all carry
//! their source (plain references) are not analysed at all.

// The relay calls these entry points; until it does, only the tests use them.
#![cfg_attr(not(test), allow(dead_code))]

use serde_json::{Map, Value};
use sluice_core::masking::ResponseMasker;
use sluice_core::pipeline::SessionInfo;
use sluice_core::Column;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, OnceLock};

type Obj = Map<String, Value>;

/// What the relay asks of the masking configuration for one session.
pub(crate) trait RuledColumns {
    /// Whether any column rule applies on this session.
    fn any(&self) -> bool;
    /// Whether a rule masks `column` of `table` (`table` as written in SQL:
    /// `customers` or `public.customers`).
    fn column(&self, table: &str, column: &str) -> bool;
    /// For a whole-row reference: a column of `table` a rule masks, named
    /// so the rule matches it; `None` when no rule applies to the table.
    fn any_column(&self, table: &str) -> Option<String>;
    /// The definition (`pg_get_viewdef`) of `table` when it is a view or a
    /// materialized view, so that its columns are followed to their base
    /// tables; `None` for a table or when not known.
    fn view(&self, _table: &str) -> Option<Arc<str>> {
        None
    }
}

/// The session's masker as [`RuledColumns`].
pub(crate) struct SessionRules<'a> {
    pub masker: &'a dyn ResponseMasker,
    pub session: &'a SessionInfo,
    /// View definitions by name as the statement writes it (see
    /// [`relations`]); the relay looks them up in the catalog.
    pub views: Option<&'a HashMap<String, Arc<str>>>,
}

impl RuledColumns for SessionRules<'_> {
    fn any(&self) -> bool {
        self.masker.has_column_rules(self.session)
    }
    fn column(&self, table: &str, column: &str) -> bool {
        self.masker.column_ruled(self.session, table, column)
    }
    fn any_column(&self, table: &str) -> Option<String> {
        self.masker.ruled_column_of(self.session, table)
    }
    fn view(&self, table: &str) -> Option<Arc<str>> {
        self.views?.get(table).cloned()
    }
}

/// The tables and views a statement names (as written), so the relay can
/// look up which are views before [`apply_lineage`] runs.
pub(crate) fn relations(sql: &str) -> Result<BTreeSet<String>, String> {
    analyse(sql).map(|l| l.tables.clone())
}

/// Labels every column of a result whose source the server did not name
/// (table OID 0, or a whole-row reference) with a ruled source column it may
/// derive from, so that the column rule masks it whole.
///
/// `sql` is the text of the statement that produced the rows: for `FETCH`
/// the `DECLARE … CURSOR FOR` text, for `EXECUTE` the `PREPARE` body (or the
/// protocol-level Parse text). `Err(reason)`: the result cannot be judged;
/// refuse it (withhold the rows).
pub(crate) fn apply_lineage(
    sql: &str,
    columns: &mut [Column],
    rules: &dyn RuledColumns,
) -> Result<(), String> {
    apply_lineage_at(sql, None, columns, rules)
}

/// [`apply_lineage`] for the result of statement `statement` (0-based) of a
/// multi-statement string; `None`: any of them (their sources are merged).
pub(crate) fn apply_lineage_at(
    sql: &str,
    statement: Option<usize>,
    columns: &mut [Column],
    rules: &dyn RuledColumns,
) -> Result<(), String> {
    if !rules.any() {
        return Ok(());
    }
    // Plain columns of a view: the server names the view, not its base
    // table; follow the view's definition.
    for col in columns.iter_mut().filter(|c| !needs_lineage(c)) {
        let (Some(table), Some(source)) = (&col.table, &col.source_column) else {
            continue;
        };
        let written = view_name(rules, table);
        let Some(written) = written else {
            continue;
        };
        let sources = Sources::from([Source::Column(written, source.clone())]);
        if let Some((t, c)) = first_ruled(&sources, rules) {
            col.table = Some(t);
            col.source_column = Some(c);
        }
    }
    let needs: Vec<usize> = (0..columns.len())
        .filter(|&i| needs_lineage(&columns[i]))
        .collect();
    if needs.is_empty() {
        return Ok(());
    }
    let lineage = analyse(sql)?;
    if let Some(reason) = lineage.opaque.first() {
        return Err(reason.clone());
    }
    let mut attributed: Option<Vec<Sources>> = None;
    let outputs = match statement {
        Some(i) => lineage.statements.get(i..=i).unwrap_or(&[]),
        None => &lineage.statements[..],
    };
    for output in outputs {
        match output {
            Output::Rows(shape) => {
                if let Some(per_column) = attribute(shape, columns) {
                    let acc = attributed.get_or_insert_with(|| vec![Sources::new(); columns.len()]);
                    for (a, s) in acc.iter_mut().zip(per_column) {
                        a.extend(s);
                    }
                }
            }
            Output::Indirect(command) => {
                return Err(format!(
                    "the gateway cannot tell which source columns the computed columns of this \
                     {command} derive from; select the columns directly, or run the query itself"
                ));
            }
            Output::Nothing => {}
        }
    }
    // No alignment fits: every computed column may derive from every
    // relation the statement names.
    let fallback: Sources = lineage
        .tables
        .iter()
        .map(|t| Source::Row(t.clone()))
        .chain(lineage.refs.iter().cloned())
        .collect();
    for i in needs {
        let sources = match &attributed {
            Some(a) => &a[i],
            None => &fallback,
        };
        if let Some((table, column)) = first_ruled(sources, rules) {
            columns[i].table = Some(table);
            columns[i].source_column = Some(column);
        }
    }
    Ok(())
}

/// `Err(reason)` when the statement would carry a ruled column's values
/// somewhere other than its own (masked) result: a notification, a setting,
/// another table or column, a view, a file, procedural code the gateway
/// cannot follow; or reads the planner statistics, which hold sample values.
pub(crate) fn side_channel(sql: &str, rules: &dyn RuledColumns) -> Result<(), String> {
    if !rules.any() {
        return Ok(());
    }
    let lineage = analyse(sql)?;
    if let Some(reason) = lineage.opaque.first() {
        return Err(reason.clone());
    }
    if let Some(rel) = &lineage.stats {
        return Err(format!(
            "{rel} holds sample values of every column (most_common_vals, histogram_bounds) and \
             is not readable while column masking rules apply"
        ));
    }
    for sink in &lineage.sinks {
        let Some((table, column)) = first_ruled(&sink.sources, rules) else {
            continue;
        };
        // Copied into a column the same rules mask: it stays masked.
        if let Some((t, c)) = &sink.target {
            if rules.column(t, c) {
                continue;
            }
        }
        return Err(format!(
            "{} would carry values of the masked column {table}.{column} outside the query \
             result; masked columns can only be read, masked, in query results",
            sink.what
        ));
    }
    Ok(())
}

/// Whether the statement references a ruled column anywhere (predicates
/// included), or something the gateway cannot follow: values the server
/// echoes in its errors and notices for such a statement (`national_id::int`
/// → `invalid input syntax for type integer: "123-45-6789"`) must be blanked.
pub(crate) fn references_ruled(sql: &str, rules: &dyn RuledColumns) -> bool {
    if !rules.any() {
        return false;
    }
    match analyse(sql) {
        Ok(l) => !l.opaque.is_empty() || first_ruled(&l.refs, rules).is_some(),
        // Fail closed: a statement that cannot be read is treated as one that may.
        Err(_) => true,
    }
}

/// Whether the user functions and procedures a statement calls (the
/// catalog's entries in its context, found to a fixed point through views
/// and bodies) can carry a masked column out of sight. What a function reads
/// is not in the statement's text, and its result comes back as a computed
/// column: a body in SQL or PL/pgSQL is read like a statement, and one that
/// references a ruled column, or does something masking cannot follow, is
/// refused; code the gateway cannot read (C, other languages, aggregates)
/// is refused too while column rules apply, since it may read anything.
pub(crate) fn catalog_side_channel(
    context: &[String],
    rules: &dyn RuledColumns,
) -> Result<(), String> {
    if !rules.any() {
        return Ok(());
    }
    // A rule's actions run with a write of its table (the entry says what a
    // write runs only for tables the statement writes): like a routine's
    // body, they may copy a masked column where masking cannot follow.
    for e in context {
        let Some(super::resolve::Entry::Table { name, on_write, .. }) = super::resolve::entry(e)
        else {
            continue;
        };
        let rules_text = pg_query::split_with_parser(on_write).unwrap_or_else(|_| vec![on_write]);
        for action in rules_text {
            let rule = action
                .trim_start()
                .get(..11)
                .is_some_and(|p| p.eq_ignore_ascii_case("CREATE RULE"));
            if rule && references_ruled(action, rules) {
                return Err(format!(
                    "a rule on {name} runs statements that read a masked column (or that masking \
                     cannot follow) when it is written, which masking cannot follow; write to \
                     the tables directly"
                ));
            }
        }
    }
    let cache = crate::policy::shared_classifier();
    for routine in super::resolve::user_routines(context) {
        let (name, language, body) = (routine.name, routine.language, routine.body);
        let bare = routine.bare();
        if NOT_VALUES.contains(&bare) {
            return Err(format!(
                "{name}() has the name of the built-in {bare}(), which masking reads as \
                 returning no column values; the gateway cannot tell which of the two the \
                 server calls, so it is refused while column masking rules apply. Rename the \
                 function"
            ));
        }
        if !super::resolve::body_is_readable(language, body, cache) {
            return Err(format!(
                "{name}() is {} whose code the gateway cannot read, so it cannot follow what \
                 it reads for masked columns; query the tables directly",
                if matches!(language, "sql" | "plpgsql") {
                    "an aggregate, or a routine running SQL built at run time,".to_string()
                } else {
                    format!("a {language} routine")
                }
            ));
        }
        if references_ruled(super::resolve::sql_text(body).0, rules) {
            return Err(format!(
                "{name}() reads a masked column, or does something masking cannot follow, \
                 and what it returns or does with it cannot be masked; query the tables directly"
            ));
        }
    }
    Ok(())
}

/// The name `views` knows a catalog-named table (`schema.table`) by, when
/// it is a view.
fn view_name(rules: &dyn RuledColumns, table: &str) -> Option<String> {
    if rules.view(table).is_some() {
        return Some(table.to_owned());
    }
    let bare = table.rsplit_once('.').map(|(_, t)| t)?;
    rules.view(bare).is_some().then(|| bare.to_owned())
}

fn needs_lineage(c: &Column) -> bool {
    c.table_oid == 0 || c.column_number <= 0 || c.source_column.is_none()
}

fn first_ruled(sources: &Sources, rules: &dyn RuledColumns) -> Option<(String, String)> {
    first_ruled_at(sources, rules, 0, &mut HashSet::new())
}

/// Views over views are followed this deep; deeper, a view counts as
/// deriving from every ruled column it could (refused by the caller).
const MAX_VIEW_DEPTH: usize = 8;

fn first_ruled_at(
    sources: &Sources,
    rules: &dyn RuledColumns,
    depth: usize,
    seen: &mut HashSet<Source>,
) -> Option<(String, String)> {
    sources.iter().find_map(|s| {
        let direct = match s {
            Source::Column(t, c) => rules.column(t, c).then(|| (t.clone(), c.clone())),
            Source::Row(t) => rules.any_column(t).map(|c| (t.clone(), c)),
        };
        // Each view column is followed once, however many paths reach it.
        direct.or_else(|| {
            if seen.insert(s.clone()) {
                through_view(s, rules, depth, seen)
            } else {
                None
            }
        })
    })
}

/// A source in a view: the ruled base column it derives from, if any.
fn through_view(
    source: &Source,
    rules: &dyn RuledColumns,
    depth: usize,
    seen: &mut HashSet<Source>,
) -> Option<(String, String)> {
    let (table, column) = match source {
        Source::Column(t, c) => (t, Some(c)),
        Source::Row(t) => (t, None),
    };
    let definition = rules.view(table)?;
    let lineage = analyse(&definition).ok()?;
    let segs = match lineage.statements.as_slice() {
        [Output::Rows(shape)] if depth < MAX_VIEW_DEPTH => shape.flatten(),
        // Nested too deep: the view may carry any ruled column of the
        // tables it names.
        _ => {
            return lineage
                .tables
                .iter()
                .find_map(|t| rules.any_column(t).map(|c| (t.clone(), c)))
        }
    };
    let view = Rel {
        name: table.clone(),
        kind: Kind::Derived(segs),
        colnames: Vec::new(),
    };
    let inner = match column {
        Some(c) => view.lookup(c).0,
        None => view.whole(),
    };
    first_ruled_at(&inner, rules, depth + 1, seen)
}

// ---- the model

/// Where a value may come from. Table names are as written in the statement
/// (`customers`, `public.customers`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Source {
    /// One column of a table.
    Column(String, String),
    /// Any column of a table (a whole-row reference, or a column that cannot
    /// be named without the catalog).
    Row(String),
}

pub(crate) type Sources = BTreeSet<Source>;

/// A run of output columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    /// One column. `name` is the output name when known (`None`: any name);
    /// `origin` is set when the server names its source (a plain reference
    /// to a table column): it then carries a table OID.
    One {
        name: Option<String>,
        sources: Sources,
        origin: Option<(String, String)>,
    },
    /// Zero or more columns (a `*` whose width is not known here). With
    /// `base`, they are the columns of that table, each with its table OID.
    Many {
        base: Option<String>,
        sources: Sources,
    },
}

impl Segment {
    fn sources(&self) -> &Sources {
        match self {
            Segment::One { sources, .. } | Segment::Many { sources, .. } => sources,
        }
    }
}

/// The columns of a query; several branches for a set operation (each
/// branch produces the same columns).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Shape {
    pub branches: Vec<Vec<Segment>>,
}

impl Shape {
    fn one(segments: Vec<Segment>) -> Self {
        Shape {
            branches: vec![segments],
        }
    }

    fn all_sources(&self) -> Sources {
        self.branches
            .iter()
            .flatten()
            .flat_map(|s| s.sources().iter().cloned())
            .collect()
    }

    /// The columns as a derived table sees them.
    fn flatten(&self) -> Vec<Segment> {
        match self.branches.as_slice() {
            [] => Vec::new(),
            [one] => one.clone(),
            [first, rest @ ..] => {
                let fixed = |b: &Vec<Segment>| b.iter().all(|s| matches!(s, Segment::One { .. }));
                if fixed(first) && rest.iter().all(|b| fixed(b) && b.len() == first.len()) {
                    let mut out = first.clone();
                    for (i, seg) in out.iter_mut().enumerate() {
                        if let Segment::One {
                            sources, origin, ..
                        } = seg
                        {
                            *origin = None;
                            for b in rest {
                                sources.extend(b[i].sources().iter().cloned());
                            }
                        }
                    }
                    out
                } else {
                    vec![Segment::Many {
                        base: None,
                        sources: self.all_sources(),
                    }]
                }
            }
        }
    }
}

/// What one statement returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Output {
    Rows(Shape),
    /// Rows of another statement (FETCH, EXECUTE): not analysable from this text.
    Indirect(&'static str),
    /// No rows, or rows that carry no table data (SHOW, EXPLAIN).
    Nothing,
}

/// A place data goes other than the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sink {
    pub what: String,
    /// The destination column, when it is one.
    pub target: Option<(String, String)>,
    pub sources: Sources,
}

/// The analysis of one query string (independent of the rules, so cached).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Lineage {
    pub statements: Vec<Output>,
    /// Every table (or view) named.
    pub tables: BTreeSet<String>,
    /// Every source referenced anywhere (predicates included).
    pub refs: Sources,
    pub sinks: Vec<Sink>,
    /// Things that cannot be followed (why), refused when rules apply.
    pub opaque: Vec<String>,
    /// A planner-statistics relation read.
    pub stats: Option<String>,
}

// ---- the cache

/// Analyses kept by text, and as many by shape.
const CACHE_CAPACITY: usize = 1024;

type Entry = Result<Arc<Lineage>, String>;

fn cache() -> &'static ShapeMemo<Lineage, String> {
    static CACHE: OnceLock<ShapeMemo<Lineage, String>> = OnceLock::new();
    CACHE.get_or_init(|| ShapeMemo::new(CACHE_CAPACITY))
}

/// The analysis of `sql`, from a bounded cache keyed by the text (errors
/// are cached too), or by its shape when the analysis of a text of that
/// shape read neither a constant (the walk never sees their values) nor
/// the text, and every constant of the text is a plain literal of the tree:
/// as the classifier's shape cache, with the same proof (`super::shape`).
pub(crate) fn analyse(sql: &str) -> Entry {
    cache().get(sql, analyse_uncached)
}

pub(super) fn analyse_uncached(sql: &str) -> Result<(Lineage, Reads), String> {
    // libpg_query is foreign code: a panic on hostile input fails closed.
    std::panic::catch_unwind(|| analyse_tree(sql))
        .unwrap_or_else(|_| Err("the SQL parser failed on this statement".into()))
}

fn analyse_tree(sql: &str) -> Result<(Lineage, Reads), String> {
    let parsed = pg_query::parse(sql, 0).map_err(|e| match e {
        pg_query::Error::Decode(_) => "the statement is nested too deeply to analyse".to_owned(),
        other => format!("cannot parse SQL: {other}"),
    })?;
    let mut a = Analyzer::default();
    let mut reads = Reads::default();
    for raw in &parsed.protobuf.stmts {
        let Some(stmt) = raw.stmt.as_ref() else {
            continue;
        };
        let mut tree =
            serde_json::to_value(stmt).map_err(|e| format!("cannot read the parse tree: {e}"))?;
        // The analysis follows columns, never constants' values: they are
        // taken out of the tree, and nothing here reads them.
        take_constants(&mut tree, &mut reads.constants_at);
        a.text = statement_text(sql, raw.stmt_location, raw.stmt_len).to_owned();
        let output = a.statement_value(&tree);
        a.out.statements.push(output);
    }
    if a.steps > MAX_STEPS {
        return Err("the statement is too complex to follow masked columns through".into());
    }
    reads.values = a.read_text;
    reads.constants_at.sort_unstable();
    Ok((a.out, reads))
}

// ---- alignment with the RowDescription

/// Sources per result column, or `None` when the shape cannot produce
/// these columns.
fn attribute(shape: &Shape, columns: &[Column]) -> Option<Vec<Sources>> {
    // Set operations report no source for any column.
    let constrained = shape.branches.len() == 1;
    let mut out = vec![Sources::new(); columns.len()];
    for branch in &shape.branches {
        // The first branch names the columns.
        let named = std::ptr::eq(branch, &shape.branches[0]);
        let per = align(branch, columns, constrained, named)
            .or_else(|| align(branch, columns, false, named))?;
        for (o, s) in out.iter_mut().zip(per) {
            o.extend(s);
        }
    }
    Some(out)
}

/// Every way the segments can produce the columns (a `Many` takes zero or
/// more): for each column, the sources of every segment that may produce
/// it in some complete alignment. `constrained` also uses what the server
/// said about each column (a table OID for plain references).
///
/// With `named`, the columns carry this branch's output names, so a
/// column taken from a table's `*` is that table's column of the same name.
fn align(
    segs: &[Segment],
    columns: &[Column],
    constrained: bool,
    named: bool,
) -> Option<Vec<Sources>> {
    let (k, n) = (segs.len(), columns.len());
    let at = |s: usize, p: usize| s * (n + 1) + p;
    let fits = |s: usize, p: usize| !constrained || compatible(&segs[s], &columns[p]);
    let mut fwd = vec![false; (k + 1) * (n + 1)];
    fwd[at(0, 0)] = true;
    for s in 0..k {
        for p in 0..=n {
            if !fwd[at(s, p)] {
                continue;
            }
            match &segs[s] {
                Segment::One { .. } => {
                    if p < n && fits(s, p) {
                        fwd[at(s + 1, p + 1)] = true;
                    }
                }
                Segment::Many { .. } => {
                    fwd[at(s + 1, p)] = true;
                    if p < n && fits(s, p) {
                        fwd[at(s, p + 1)] = true;
                    }
                }
            }
        }
    }
    if !fwd[at(k, n)] {
        return None;
    }
    let mut bwd = vec![false; (k + 1) * (n + 1)];
    bwd[at(k, n)] = true;
    for s in (0..k).rev() {
        for p in (0..=n).rev() {
            bwd[at(s, p)] = match &segs[s] {
                Segment::One { .. } => p < n && fits(s, p) && bwd[at(s + 1, p + 1)],
                Segment::Many { .. } => {
                    bwd[at(s + 1, p)] || (p < n && fits(s, p) && bwd[at(s, p + 1)])
                }
            };
        }
    }
    let mut out = vec![Sources::new(); n];
    for (p, o) in out.iter_mut().enumerate() {
        for (s, seg) in segs.iter().enumerate() {
            let next = match seg {
                Segment::One { .. } => at(s + 1, p + 1),
                Segment::Many { .. } => at(s, p + 1),
            };
            if fwd[at(s, p)] && fits(s, p) && bwd[next] {
                match seg {
                    Segment::Many { base: Some(t), .. } if named => {
                        o.insert(Source::Column(t.clone(), columns[p].name.clone()));
                    }
                    _ => o.extend(seg.sources().iter().cloned()),
                }
            }
        }
    }
    Some(out)
}

/// Whether a column the server described may be this segment's.
fn compatible(seg: &Segment, col: &Column) -> bool {
    match seg {
        Segment::One {
            origin: Some((t, c)),
            ..
        } => {
            col.table_oid != 0
                && col.table.as_deref().is_none_or(|ct| table_matches(t, ct))
                && col
                    .source_column
                    .as_deref()
                    .is_none_or(|sc| sc.eq_ignore_ascii_case(c))
        }
        Segment::Many { base: Some(t), .. } => {
            col.table_oid != 0 && col.table.as_deref().is_none_or(|ct| table_matches(t, ct))
        }
        _ => true,
    }
}

/// `written` as in the statement (`t` or `s.t`), `resolved` as the catalog
/// names it (`s.t`).
fn table_matches(written: &str, resolved: &str) -> bool {
    if written.contains('.') {
        written.eq_ignore_ascii_case(resolved)
    } else {
        let last = resolved.rsplit_once('.').map_or(resolved, |(_, t)| t);
        written.eq_ignore_ascii_case(last)
    }
}

// ---- scopes

#[derive(Debug, Clone)]
struct Rel {
    /// The name it is referenced by (alias, table or function name).
    name: String,
    kind: Kind,
    /// Column aliases (`AS c(a, b)`).
    colnames: Vec<String>,
}

#[derive(Debug, Clone)]
enum Kind {
    /// A table or view, as written.
    Base(String),
    /// A subquery, CTE or VALUES with known columns.
    Derived(Vec<Segment>),
    /// Columns not known (a function, XMLTABLE, a recursive CTE): each may
    /// derive from any of these.
    Opaque(Sources),
    Join {
        using: Vec<String>,
        natural: bool,
        children: Vec<Rel>,
    },
}

impl Rel {
    fn segments(&self) -> Vec<Segment> {
        match &self.kind {
            Kind::Derived(segs) => renamed(segs, &self.colnames),
            _ => Vec::new(),
        }
    }

    /// The sources of column `name` of this relation, and its origin when
    /// the server will name it.
    fn lookup(&self, name: &str) -> (Sources, Option<(String, String)>) {
        match &self.kind {
            Kind::Base(t) => {
                if self.colnames.iter().any(|c| c.eq_ignore_ascii_case(name)) {
                    // Renamed: which column it is needs the catalog.
                    (Sources::from([Source::Row(t.clone())]), None)
                } else {
                    (
                        Sources::from([Source::Column(t.clone(), name.to_owned())]),
                        Some((t.clone(), name.to_owned())),
                    )
                }
            }
            Kind::Derived(raw) => {
                // A column alias that lands behind a `*` names a column that
                // cannot be placed: it may be any of them.
                let cut = raw
                    .iter()
                    .take(self.colnames.len())
                    .any(|s| matches!(s, Segment::Many { .. }));
                if cut && self.colnames.iter().any(|c| c.eq_ignore_ascii_case(name)) {
                    return (self.whole(), None);
                }
                let segs = self.segments();
                let mut sources = Sources::new();
                let mut origins = Vec::new();
                let mut exact = true;
                let mut matched = false;
                for seg in &segs {
                    match seg {
                        Segment::One {
                            name: Some(n),
                            sources: s,
                            origin,
                        } if n.eq_ignore_ascii_case(name) => {
                            sources.extend(s.iter().cloned());
                            origins.push(origin.clone());
                            matched = true;
                        }
                        Segment::One { name: Some(_), .. } => {}
                        Segment::One {
                            name: None,
                            sources: s,
                            ..
                        } => {
                            sources.extend(s.iter().cloned());
                            exact = false;
                            matched = true;
                        }
                        Segment::Many { base, sources: s } => {
                            match base {
                                Some(t) => {
                                    sources.insert(Source::Column(t.clone(), name.to_owned()));
                                }
                                None => sources.extend(s.iter().cloned()),
                            }
                            exact = false;
                            matched = true;
                        }
                    }
                }
                if !matched {
                    // The server found it here: our naming of the column differs.
                    return (self.whole(), None);
                }
                let origin = match origins.as_slice() {
                    [one] if exact => one.clone(),
                    _ => None,
                };
                (sources, origin)
            }
            Kind::Opaque(s) => (s.clone(), None),
            Kind::Join { children, .. } => {
                if !self.colnames.is_empty() {
                    return (self.whole(), None);
                }
                let mut sources = Sources::new();
                let mut origins = Vec::new();
                for c in children.iter().filter(|c| c.may_have(name)) {
                    let (s, o) = c.lookup(name);
                    sources.extend(s);
                    origins.push(o);
                }
                let origin = match origins.as_slice() {
                    [one] => one.clone(),
                    _ => None,
                };
                (sources, origin)
            }
        }
    }

    /// Whether an unqualified `name` may be a column of this relation.
    fn may_have(&self, name: &str) -> bool {
        match &self.kind {
            Kind::Base(_) | Kind::Opaque(_) => true,
            Kind::Derived(_) => self.segments().iter().any(|s| match s {
                Segment::One { name: Some(n), .. } => n.eq_ignore_ascii_case(name),
                _ => true,
            }),
            Kind::Join { children, .. } => {
                !self.colnames.is_empty() || children.iter().any(|c| c.may_have(name))
            }
        }
    }

    /// Everything a whole-row reference to this relation carries.
    fn whole(&self) -> Sources {
        match &self.kind {
            Kind::Base(t) => Sources::from([Source::Row(t.clone())]),
            Kind::Derived(segs) => segs
                .iter()
                .flat_map(|s| s.sources().iter().cloned())
                .collect(),
            Kind::Opaque(s) => s.clone(),
            Kind::Join { children, .. } => children.iter().flat_map(Rel::whole).collect(),
        }
    }

    /// The columns `rel.*` (or `*`) expands to.
    fn expand(&self) -> Vec<Segment> {
        match &self.kind {
            Kind::Base(t) => vec![Segment::Many {
                // Column aliases rename the table's columns.
                base: self.colnames.is_empty().then(|| t.clone()),
                sources: Sources::from([Source::Row(t.clone())]),
            }],
            Kind::Derived(_) => self.segments(),
            Kind::Opaque(s) => vec![Segment::Many {
                base: None,
                sources: s.clone(),
            }],
            Kind::Join {
                using,
                natural,
                children,
            } => {
                if *natural || !self.colnames.is_empty() {
                    return vec![Segment::Many {
                        base: None,
                        sources: self.whole(),
                    }];
                }
                let mut out: Vec<Segment> = using
                    .iter()
                    .map(|u| Segment::One {
                        name: Some(u.clone()),
                        sources: children.iter().flat_map(|c| c.lookup(u).0).collect(),
                        origin: None,
                    })
                    .collect();
                for c in children {
                    out.extend(c.expand().into_iter().filter(|s| match s {
                        Segment::One { name: Some(n), .. } => {
                            !using.iter().any(|u| u.eq_ignore_ascii_case(n))
                        }
                        _ => true,
                    }));
                }
                out
            }
        }
    }
}

/// Applies column aliases to the leading columns whose position is known.
fn renamed(segs: &[Segment], colnames: &[String]) -> Vec<Segment> {
    let mut out = segs.to_vec();
    let mut cut = None;
    for (i, (seg, alias)) in out.iter_mut().zip(colnames).enumerate() {
        match seg {
            Segment::One { name, .. } => *name = Some(alias.clone()),
            // Positions after a `*` are unknown: later aliases cannot be placed.
            Segment::Many { .. } => {
                cut = Some(i);
                break;
            }
        }
    }
    // Columns from there on may be renamed: a table's `*` no longer has
    // that table's column names.
    for seg in out.iter_mut().skip(cut.unwrap_or(usize::MAX)) {
        if let Segment::Many { base, .. } = seg {
            *base = None;
        }
    }
    out
}

#[derive(Debug, Default)]
struct Level {
    /// FROM items in order (what `*` expands to).
    items: Vec<Rel>,
    /// Relations visible by name.
    rels: Vec<Rel>,
}

#[derive(Default)]
struct Analyzer {
    /// CTEs in scope, innermost last.
    /// CTEs in scope (name, columns, column aliases), innermost last.
    ctes: Vec<(String, Kind, Vec<String>)>,
    levels: Vec<Level>,
    out: Lineage,
    /// The text of the top-level statement (the PL/pgSQL parser reads a
    /// whole CREATE FUNCTION).
    text: String,
    /// Whether the analysis read `text` (it holds the constants' values).
    read_text: bool,
    /// Nodes visited; past [`MAX_STEPS`] the analysis gives up (fail
    /// closed) instead of letting nested recursive CTEs multiply the work.
    steps: usize,
}

/// Work allowed per query string (nodes visited, re-visits included).
const MAX_STEPS: usize = 200_000;

/// Functions that send their arguments somewhere other than the result.
const SINK_FUNCTIONS: &[&str] = &[
    "pg_notify",
    "set_config",
    "setval",
    "pg_logical_emit_message",
    "lo_from_bytea",
    "lo_put",
    "lowrite",
    "pg_file_write",
    "dblink_exec",
    "dblink_send_query",
    "dblink_open",
    "dblink",
    "dblink_connect",
    "dblink_connect_u",
];

/// Function name prefixes that are sinks too: advisory lock keys are shown
/// to every session in `pg_locks`.
const SINK_PREFIXES: &[&str] = &["pg_advisory", "pg_try_advisory"];

/// Built-ins whose result carries no value of their arguments (`count`: a
/// number of rows). A user function of the same name is refused while
/// column rules apply ([`catalog_side_channel`]): the server may call it
/// instead.
const NOT_VALUES: &[&str] = &["count"];

/// Functions that read data the statement does not name (SQL given as
/// text, whole tables or schemas, cursors, statistics).
const OPAQUE_FUNCTIONS: &[&str] = &[
    "query_to_xml",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "table_to_xml",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xml_and_xmlschema",
    "ts_stat",
    "ts_rewrite",
    // Extensions' (tablefunc, xml2): SQL, or a table and columns, as text.
    "crosstab",
    "crosstab2",
    "crosstab3",
    "crosstab4",
    "connectby",
    "xpath_table",
    "dblink",
    "dblink_fetch",
    "dblink_get_result",
    "pg_mcv_list_items",
];

/// Built-in functions of a whole row (record, anyelement or "any"
/// arguments) that `rel.name` column notation can call: `c.row_to_json` is
/// `row_to_json(c)`. A user function taking the table's row type can be
/// called so too; its body is not followed (documented).
const RECORD_FUNCTIONS: &[&str] = &[
    "row_to_json",
    "to_json",
    "to_jsonb",
    "json_agg",
    "jsonb_agg",
    "array_agg",
    "concat",
    "concat_ws",
    "json_build_array",
    "json_build_object",
    "jsonb_build_array",
    "jsonb_build_object",
    "record_out",
    "record_send",
    "quote_literal",
    "quote_nullable",
];

/// Planner statistics: sample values of every column.
const STATS_RELATIONS: &[&str] = &[
    "pg_stats",
    "pg_statistic",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_statistic_ext_data",
];

/// Fields of a SelectStmt handled by [`Analyzer::select`] itself.
const SELECT_HANDLED: &[&str] = &[
    "with_clause",
    "larg",
    "rarg",
    "values_lists",
    "from_clause",
    "target_list",
    "into_clause",
];

impl Analyzer {
    fn exhausted(&mut self) -> bool {
        self.steps += 1;
        self.steps > MAX_STEPS
    }

    fn sink(
        &mut self,
        what: impl Into<String>,
        target: Option<(String, String)>,
        sources: Sources,
    ) {
        if !sources.is_empty() {
            self.out.sinks.push(Sink {
                what: what.into(),
                target,
                sources,
            });
        }
    }

    fn opaque(&mut self, reason: String) {
        if !self.out.opaque.contains(&reason) {
            self.out.opaque.push(reason);
        }
    }

    /// A statement node (tagged, or an untagged SelectStmt).
    fn statement_value(&mut self, v: &Value) -> Output {
        match tagged(v) {
            Some((tag, body)) => self.statement(tag, body),
            None => match v {
                Value::Object(m) if is_select(m) => Output::Rows(self.select(m)),
                _ => {
                    self.expr(v);
                    Output::Nothing
                }
            },
        }
    }

    fn statement(&mut self, tag: &str, b: &Obj) -> Output {
        if self.exhausted() {
            return Output::Nothing;
        }
        match tag {
            "SelectStmt" => Output::Rows(self.select(b)),
            "InsertStmt" => self.insert(b),
            "UpdateStmt" => self.update(b),
            "DeleteStmt" => self.delete(b),
            "MergeStmt" => self.merge(b),
            "CreateTableAsStmt" | "ViewStmt" => {
                let what = if tag == "ViewStmt" {
                    "CREATE VIEW"
                } else {
                    "CREATE TABLE AS"
                };
                let output = b.get("query").map(|q| self.statement_value(q));
                self.copied(what, output);
                Output::Nothing
            }
            "CopyStmt" => {
                if bool_field(b, "is_from") {
                    self.expr_fields(b, &["relation", "query"]);
                    return Output::Nothing;
                }
                if let Some(q) = b.get("query").filter(|q| !q.is_null()) {
                    let output = self.statement_value(q);
                    self.copied("COPY", Some(output));
                } else if let Some(Value::Object(rel)) = b.get("relation") {
                    let r = self.range_var(rel);
                    let attlist = string_items(b.get("attlist"));
                    let sources: Sources = if attlist.is_empty() {
                        r.whole()
                    } else {
                        attlist.iter().flat_map(|c| r.lookup(c).0).collect()
                    };
                    self.out.refs.extend(sources.iter().cloned());
                    self.sink("COPY", None, sources);
                }
                Output::Nothing
            }
            "DeclareCursorStmt" | "PrepareStmt" => match b.get("query") {
                Some(q) => self.statement_value(q),
                None => Output::Nothing,
            },
            "ExplainStmt" => {
                // The plan's text carries no row values; what it runs is
                // still judged for side channels.
                if let Some(q) = b.get("query") {
                    self.statement_value(q);
                }
                Output::Rows(Shape::one(vec![Segment::Many {
                    base: None,
                    sources: Sources::new(),
                }]))
            }
            "ExecuteStmt" => {
                let params = self.expr(b.get("params").unwrap_or(&Value::Null));
                self.sink("EXECUTE with parameters", None, params);
                Output::Indirect("EXECUTE")
            }
            "FetchStmt" => Output::Indirect("FETCH"),
            "CallStmt" => {
                let args = self.expr(b.get("funccall").unwrap_or(&Value::Null));
                self.sink("CALL", None, args.clone());
                Output::Rows(Shape::one(vec![Segment::Many {
                    base: None,
                    sources: args,
                }]))
            }
            "DoStmt" => {
                self.procedural_do(b);
                Output::Nothing
            }
            "CreateFunctionStmt" => {
                self.function_body(b);
                Output::Nothing
            }
            "CreateTrigStmt" => {
                // Its function sees every column of the table's rows (NEW
                // and OLD), whatever it then does with them.
                if let Some(Value::Object(rel)) = b.get("relation") {
                    let rows = self.range_var(rel).whole();
                    self.sink("CREATE TRIGGER", None, rows);
                }
                self.expr(b.get("when_clause").unwrap_or(&Value::Null));
                Output::Nothing
            }
            "RuleStmt" => {
                // NEW and OLD are rows of the rule's table.
                let mut level = Level::default();
                if let Some(Value::Object(rel)) = b.get("relation") {
                    let r = self.range_var(rel);
                    for name in ["new", "old"] {
                        level.rels.push(Rel {
                            name: name.into(),
                            ..r.clone()
                        });
                    }
                }
                self.levels.push(level);
                self.expr(b.get("where_clause").unwrap_or(&Value::Null));
                if let Some(Value::Array(actions)) = b.get("actions") {
                    for action in actions {
                        let output = self.statement_value(action);
                        self.copied("CREATE RULE", Some(output));
                    }
                }
                self.levels.pop();
                Output::Nothing
            }
            _ => {
                // Anything else: whatever data it reaches is going somewhere
                // that is not a result.
                let sources = self.expr_fields(b, &[]);
                self.sink(tag.trim_end_matches("Stmt"), None, sources);
                Output::Nothing
            }
        }
    }

    /// Data of `output` stored or sent elsewhere by `what`.
    fn copied(&mut self, what: &str, output: Option<Output>) {
        match output {
            Some(Output::Rows(shape)) => {
                let sources = shape.all_sources();
                self.sink(what, None, sources);
            }
            Some(Output::Indirect(command)) => {
                // Cannot be followed; refused when rules apply.
                self.opaque(format!(
                    "{what} of a {command} cannot be followed for masked columns; run the query \
                     it names directly"
                ));
            }
            _ => {}
        }
    }

    // ---- queries

    fn select(&mut self, b: &Obj) -> Shape {
        let pushed = self.enter_with(b.get("with_clause"));
        let shape = if int_field(b, "op") > 1 {
            let mut branches = Vec::new();
            for side in ["larg", "rarg"] {
                if let Some(Value::Object(s)) = b.get(side) {
                    branches.extend(self.select(s).branches);
                }
            }
            self.expr_fields(b, SELECT_HANDLED);
            Shape { branches }
        } else if let Some(Value::Array(rows)) = b.get("values_lists").filter(|v| !is_empty(v)) {
            let mut segs: Vec<Segment> = Vec::new();
            let mut ragged = false;
            for row in rows {
                let items = list_items(row);
                if !segs.is_empty() && segs.len() != items.len() {
                    ragged = true;
                }
                for (i, item) in items.iter().enumerate() {
                    let sources = self.expr(item);
                    match segs.get_mut(i) {
                        Some(Segment::One { sources: s, .. }) => s.extend(sources),
                        _ => segs.push(Segment::One {
                            name: Some(format!("column{}", i + 1)),
                            sources,
                            origin: None,
                        }),
                    }
                }
            }
            self.expr_fields(b, SELECT_HANDLED);
            let shape = Shape::one(segs);
            if ragged {
                Shape::one(vec![Segment::Many {
                    base: None,
                    sources: shape.all_sources(),
                }])
            } else {
                shape
            }
        } else {
            self.levels.push(Level::default());
            if let Some(Value::Array(items)) = b.get("from_clause") {
                for item in items {
                    let rel = self.relation_item(item);
                    if let Some(level) = self.levels.last_mut() {
                        level.items.push(rel);
                    }
                }
            }
            let segs = self.targets(b.get("target_list"));
            self.expr_fields(b, SELECT_HANDLED);
            self.levels.pop();
            Shape::one(segs)
        };
        if !is_null(b, "into_clause") {
            self.sink("SELECT INTO", None, shape.all_sources());
        }
        self.ctes.truncate(self.ctes.len().saturating_sub(pushed));
        shape
    }

    /// A subquery's columns as a derived table sees them.
    fn subquery(&mut self, v: Option<&Value>) -> Vec<Segment> {
        match v.map(|v| self.statement_value(v)) {
            Some(Output::Rows(shape)) => shape.flatten(),
            _ => Vec::new(),
        }
    }

    /// A target list (SELECT or RETURNING) in the current scope.
    fn targets(&mut self, list: Option<&Value>) -> Vec<Segment> {
        let mut segs = Vec::new();
        let Some(Value::Array(items)) = list else {
            return segs;
        };
        for item in items {
            let Some(("ResTarget", rt)) = tagged(item) else {
                let sources = self.expr(item);
                segs.push(Segment::One {
                    name: None,
                    sources,
                    origin: None,
                });
                continue;
            };
            let Some(val) = rt.get("val") else {
                continue;
            };
            let alias = Some(str_field(rt, "name")).filter(|n| !n.is_empty());
            match tagged(val) {
                Some(("ColumnRef", cr)) if is_star(cr) => {
                    let expanded = self.star(cr);
                    segs.extend(expanded);
                }
                Some(("ColumnRef", cr)) => {
                    let (sources, origin) = self.column_ref(cr);
                    segs.push(Segment::One {
                        name: alias.map(str::to_owned).or_else(|| figure(val)),
                        sources,
                        origin,
                    });
                }
                Some(("AIndirection", ind)) if ends_with_star(ind.get("indirection")) => {
                    let sources = self.expr(ind.get("arg").unwrap_or(&Value::Null));
                    segs.push(Segment::Many {
                        base: None,
                        sources,
                    });
                }
                _ => {
                    let sources = self.expr(val);
                    segs.push(Segment::One {
                        name: alias.map(str::to_owned).or_else(|| figure(val)),
                        sources,
                        origin: None,
                    });
                }
            }
        }
        segs
    }

    /// `*` or `rel.*` as output columns.
    fn star(&mut self, cr: &Obj) -> Vec<Segment> {
        let names = string_items(cr.get("fields"));
        let segs: Vec<Segment> = match names.last() {
            None => self
                .levels
                .last()
                .map(|l| l.items.iter().flat_map(Rel::expand).collect())
                .unwrap_or_default(),
            Some(q) => match self.find_rel(q) {
                Some(rel) => rel.expand(),
                None => vec![Segment::Many {
                    base: None,
                    sources: self.all_visible(),
                }],
            },
        };
        for s in &segs {
            self.out.refs.extend(s.sources().iter().cloned());
        }
        segs
    }

    fn all_visible(&self) -> Sources {
        self.levels
            .iter()
            .flat_map(|l| l.rels.iter().flat_map(Rel::whole))
            .collect()
    }

    fn find_rel(&self, name: &str) -> Option<Rel> {
        self.levels.iter().rev().find_map(|l| {
            l.rels
                .iter()
                .rev()
                .find(|r| r.name.eq_ignore_ascii_case(name))
                .cloned()
        })
    }

    /// A column reference in an expression: its sources and, when the
    /// server will name it, its origin.
    fn column_ref(&mut self, cr: &Obj) -> (Sources, Option<(String, String)>) {
        let names = string_items(cr.get("fields"));
        let star = is_star(cr);
        let (sources, origin) = match (names.as_slice(), star) {
            ([], _) => {
                // `*` inside an expression: whole rows of the innermost FROM.
                let s = self
                    .levels
                    .last()
                    .map(|l| l.rels.iter().flat_map(Rel::whole).collect())
                    .unwrap_or_default();
                (s, None)
            }
            ([.., q], true) => match self.find_rel(q) {
                Some(rel) => (rel.whole(), None),
                None => (self.all_visible(), None),
            },
            ([name], false) => self.unqualified(name),
            ([.., q, c], false) => match self.find_rel(q) {
                // `c.row_to_json` is `row_to_json(c)` (column notation).
                Some(rel) if RECORD_FUNCTIONS.contains(&c.to_ascii_lowercase().as_str()) => {
                    let (mut s, _) = rel.lookup(c);
                    s.extend(rel.whole());
                    (s, None)
                }
                Some(rel) => rel.lookup(c),
                // Not a relation: a composite column's field.
                None => (self.unqualified(names[0]).0, None),
            },
        };
        self.out.refs.extend(sources.iter().cloned());
        (sources, origin)
    }

    /// An unqualified name: a column of any relation in scope (any level),
    /// or the whole row of a relation so named.
    fn unqualified(&self, name: &str) -> (Sources, Option<(String, String)>) {
        let mut sources = Sources::new();
        let mut origins = Vec::new();
        for level in self.levels.iter().rev() {
            for rel in &level.rels {
                if rel.may_have(name) {
                    let (s, o) = rel.lookup(name);
                    sources.extend(s);
                    origins.push(o);
                }
                if rel.name.eq_ignore_ascii_case(name) {
                    sources.extend(rel.whole());
                    origins.push(None);
                }
            }
        }
        let origin = match origins.as_slice() {
            [one] => one.clone(),
            _ => None,
        };
        (sources, origin)
    }

    // ---- FROM

    /// One FROM item; the relations it makes visible are added to the
    /// current level as they appear (so LATERAL items see earlier ones).
    fn relation_item(&mut self, v: &Value) -> Rel {
        let rel = match tagged(v) {
            Some(("RangeVar", b)) => self.range_var(b),
            Some(("RangeSubselect", b)) => {
                let segs = self.subquery(b.get("subquery"));
                let (name, colnames) = alias(b);
                Rel {
                    name,
                    kind: Kind::Derived(segs),
                    colnames,
                }
            }
            Some(("JoinExpr", b)) => {
                let left = self.relation_item(b.get("larg").unwrap_or(&Value::Null));
                let right = self.relation_item(b.get("rarg").unwrap_or(&Value::Null));
                self.expr(b.get("quals").unwrap_or(&Value::Null));
                let (name, colnames) = alias(b);
                let join = Rel {
                    name,
                    kind: Kind::Join {
                        using: string_items(b.get("using_clause"))
                            .into_iter()
                            .map(str::to_owned)
                            .collect(),
                        natural: bool_field(b, "is_natural"),
                        children: vec![left, right],
                    },
                    colnames,
                };
                if !join.name.is_empty() {
                    self.visible(join.clone());
                }
                return join;
            }
            Some(("RangeTableSample", b)) => {
                self.expr_fields(b, &["relation"]);
                return self.relation_item(b.get("relation").unwrap_or(&Value::Null));
            }
            Some(("RangeFunction", b)) => {
                let sources = self.expr_fields(b, &["alias"]);
                let (mut name, colnames) = alias(b);
                if name.is_empty() {
                    name = first_function_name(b.get("functions")).unwrap_or_default();
                }
                Rel {
                    name,
                    kind: Kind::Opaque(sources),
                    colnames,
                }
            }
            Some((_, b)) => {
                let sources = self.expr_fields(b, &["alias"]);
                let (name, colnames) = alias(b);
                Rel {
                    name,
                    kind: Kind::Opaque(sources),
                    colnames,
                }
            }
            None => match v {
                Value::Object(m) if is_range_var(m) => self.range_var(m),
                _ => Rel {
                    name: String::new(),
                    kind: Kind::Opaque(self.expr(v)),
                    colnames: Vec::new(),
                },
            },
        };
        self.visible(rel.clone());
        rel
    }

    fn visible(&mut self, rel: Rel) {
        if self.levels.is_empty() {
            self.levels.push(Level::default());
        }
        if let Some(level) = self.levels.last_mut() {
            level.rels.push(rel);
        }
    }

    fn range_var(&mut self, b: &Obj) -> Rel {
        let schema = str_field(b, "schemaname");
        let relname = str_field(b, "relname");
        let (alias_name, colnames) = alias(b);
        let name = if alias_name.is_empty() {
            relname.to_owned()
        } else {
            alias_name
        };
        if schema.is_empty() {
            if let Some((_, kind, cte_names)) = self.ctes.iter().rev().find(|(n, ..)| n == relname)
            {
                // Aliases rename the first columns; the CTE's own the rest.
                let mut names = colnames;
                names.extend(cte_names.iter().skip(names.len()).cloned());
                return Rel {
                    name,
                    kind: kind.clone(),
                    colnames: names,
                };
            }
        }
        if STATS_RELATIONS.contains(&relname.to_ascii_lowercase().as_str())
            && (schema.is_empty() || schema.eq_ignore_ascii_case("pg_catalog"))
        {
            self.out.stats = Some(relname.to_owned());
        }
        let full = if schema.is_empty() {
            relname.to_owned()
        } else {
            format!("{schema}.{relname}")
        };
        self.out.tables.insert(full.clone());
        Rel {
            name,
            kind: Kind::Base(full),
            colnames,
        }
    }

    /// Brings a WITH clause's CTEs into scope; returns how many it pushed.
    fn enter_with(&mut self, with: Option<&Value>) -> usize {
        let Some(Value::Object(with)) = with else {
            return 0;
        };
        let ctes: Vec<&Obj> = match with.get("ctes") {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|i| match tagged(i) {
                    Some(("CommonTableExpr", body)) => Some(body),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let before = self.ctes.len();
        if !bool_field(with, "recursive") {
            for cte in ctes {
                let segs = self.subquery(cte.get("ctequery"));
                let colnames = owned_strings(cte.get("aliascolnames"));
                self.ctes.push((
                    str_field(cte, "ctename").to_owned(),
                    Kind::Derived(segs),
                    colnames,
                ));
            }
            return self.ctes.len() - before;
        }
        // WITH RECURSIVE: every CTE sees every other and itself. Iterate to
        // a fixpoint where each CTE's columns may derive from everything
        // its body produced so far (sources only grow, and are finite).
        let mut acc: Vec<Sources> = vec![Sources::new(); ctes.len()];
        let mut widths: Vec<Vec<Option<String>>> = vec![Vec::new(); ctes.len()];
        for _ in 0..16 {
            let mut changed = false;
            for (i, cte) in ctes.iter().enumerate() {
                for (j, other) in ctes.iter().enumerate() {
                    self.ctes.push((
                        str_field(other, "ctename").to_owned(),
                        Kind::Opaque(acc[j].clone()),
                        Vec::new(),
                    ));
                }
                let segs = self.subquery(cte.get("ctequery"));
                self.ctes.truncate(before);
                let mut grown = acc[i].clone();
                grown.extend(segs.iter().flat_map(|s| s.sources().iter().cloned()));
                if grown != acc[i] {
                    acc[i] = grown;
                    changed = true;
                }
                widths[i] = if segs.iter().all(|s| matches!(s, Segment::One { .. })) {
                    segs.iter()
                        .map(|s| match s {
                            Segment::One { name, .. } => name.clone(),
                            Segment::Many { .. } => None,
                        })
                        .collect()
                } else {
                    Vec::new()
                };
            }
            if !changed {
                break;
            }
        }
        for (i, cte) in ctes.iter().enumerate() {
            let colnames = owned_strings(cte.get("aliascolnames"));
            let kind = if widths[i].is_empty() {
                Kind::Opaque(acc[i].clone())
            } else {
                let segs: Vec<Segment> = widths[i]
                    .iter()
                    .map(|name| Segment::One {
                        name: name.clone(),
                        sources: acc[i].clone(),
                        origin: None,
                    })
                    .collect();
                Kind::Derived(segs)
            };
            self.ctes
                .push((str_field(cte, "ctename").to_owned(), kind, colnames));
        }
        self.ctes.len() - before
    }

    // ---- data changes

    /// The target of INSERT/UPDATE/DELETE/MERGE.
    fn target(&mut self, b: &Obj) -> (Rel, String) {
        match b.get("relation").and_then(untag) {
            Some(Value::Object(m)) => {
                let rel = self.range_var(m);
                let table = match &rel.kind {
                    Kind::Base(t) => t.clone(),
                    _ => rel.name.clone(),
                };
                // A constraint violation quotes the whole row it failed on
                // ("Failing row contains (…)"), ruled columns included.
                self.out.refs.extend(rel.whole());
                (rel, table)
            }
            _ => (
                Rel {
                    name: String::new(),
                    kind: Kind::Opaque(Sources::new()),
                    colnames: Vec::new(),
                },
                String::new(),
            ),
        }
    }

    fn returning(&mut self, b: &Obj, target: &Rel) -> Output {
        let list = match b.get("returning_clause") {
            Some(Value::Object(rc)) => rc.get("exprs"),
            _ => b.get("returning_list"),
        };
        if list.is_none_or(is_empty) {
            return Output::Nothing;
        }
        // RETURNING may name the target's OLD and NEW rows (PostgreSQL 18).
        for name in ["old", "new"] {
            self.visible(Rel {
                name: name.into(),
                ..target.clone()
            });
        }
        Output::Rows(Shape::one(self.targets(list)))
    }

    fn insert(&mut self, b: &Obj) -> Output {
        let pushed = self.enter_with(b.get("with_clause"));
        let (target, table) = self.target(b);
        let cols: Vec<String> = match b.get("cols") {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|i| match tagged(i) {
                    Some(("ResTarget", rt)) => Some(str_field(rt, "name").to_owned()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let data = self.subquery(b.get("select_stmt"));
        let positional = data.iter().all(|s| matches!(s, Segment::One { .. }));
        let what = format!("INSERT into {table}");
        let mut all = Sources::new();
        for (i, seg) in data.iter().enumerate() {
            let dest = cols
                .get(i)
                .filter(|_| positional)
                .map(|c| (table.clone(), c.clone()));
            all.extend(seg.sources().iter().cloned());
            self.sink(what.clone(), dest, seg.sources().clone());
        }
        self.levels.push(Level::default());
        self.visible(target.clone());
        if let Some(Value::Object(oc)) = b.get("on_conflict_clause").and_then(untag) {
            // EXCLUDED is the proposed row: the target's columns, filled
            // from the inserted data.
            let excluded = Rel {
                name: "excluded".into(),
                kind: Kind::Join {
                    using: Vec::new(),
                    natural: false,
                    children: vec![
                        target.clone(),
                        Rel {
                            name: String::new(),
                            kind: Kind::Opaque(all),
                            colnames: Vec::new(),
                        },
                    ],
                },
                colnames: Vec::new(),
            };
            self.visible(excluded);
            self.assignments(oc.get("target_list"), &table);
            self.expr_fields(oc, &["target_list"]);
        }
        if let Some(level) = self.levels.last_mut() {
            level.items.push(target.clone());
        }
        let output = self.returning(b, &target);
        self.levels.pop();
        self.ctes.truncate(self.ctes.len().saturating_sub(pushed));
        output
    }

    /// `SET col = expr` lists: each value goes into `table.col`.
    fn assignments(&mut self, list: Option<&Value>, table: &str) {
        let Some(Value::Array(items)) = list else {
            return;
        };
        for item in items {
            let Some(("ResTarget", rt)) = tagged(item) else {
                let s = self.expr(item);
                self.sink(format!("UPDATE of {table}"), None, s);
                continue;
            };
            let col = str_field(rt, "name").to_owned();
            let sources = self.expr(rt.get("val").unwrap_or(&Value::Null));
            // `SET (a, b) = …` targets one column each; `col.field` and
            // `col[1]` still land in `col`.
            self.sink(
                format!("UPDATE of {table}.{col}"),
                Some((table.to_owned(), col)),
                sources,
            );
        }
    }

    fn update(&mut self, b: &Obj) -> Output {
        let pushed = self.enter_with(b.get("with_clause"));
        self.levels.push(Level::default());
        let (target, table) = self.target(b);
        self.visible(target.clone());
        let mut items = vec![target.clone()];
        if let Some(Value::Array(from)) = b.get("from_clause") {
            for item in from {
                items.push(self.relation_item(item));
            }
        }
        if let Some(level) = self.levels.last_mut() {
            level.items = items;
        }
        self.assignments(b.get("target_list"), &table);
        self.expr(b.get("where_clause").unwrap_or(&Value::Null));
        let output = self.returning(b, &target);
        self.levels.pop();
        self.ctes.truncate(self.ctes.len().saturating_sub(pushed));
        output
    }

    fn delete(&mut self, b: &Obj) -> Output {
        let pushed = self.enter_with(b.get("with_clause"));
        self.levels.push(Level::default());
        let (target, _) = self.target(b);
        self.visible(target.clone());
        let mut items = vec![target.clone()];
        if let Some(Value::Array(using)) = b.get("using_clause") {
            for item in using {
                items.push(self.relation_item(item));
            }
        }
        if let Some(level) = self.levels.last_mut() {
            level.items = items;
        }
        self.expr(b.get("where_clause").unwrap_or(&Value::Null));
        let output = self.returning(b, &target);
        self.levels.pop();
        self.ctes.truncate(self.ctes.len().saturating_sub(pushed));
        output
    }

    fn merge(&mut self, b: &Obj) -> Output {
        let pushed = self.enter_with(b.get("with_clause"));
        self.levels.push(Level::default());
        let (target, table) = self.target(b);
        self.visible(target.clone());
        let source = self.relation_item(b.get("source_relation").unwrap_or(&Value::Null));
        if let Some(level) = self.levels.last_mut() {
            level.items = vec![target.clone(), source];
        }
        self.expr(b.get("join_condition").unwrap_or(&Value::Null));
        if let Some(Value::Array(clauses)) = b.get("merge_when_clauses") {
            for clause in clauses {
                let Some(("MergeWhenClause", w)) = tagged(clause) else {
                    continue;
                };
                self.expr(w.get("condition").unwrap_or(&Value::Null));
                match w.get("values") {
                    Some(Value::Array(values)) if !values.is_empty() => {
                        let cols: Vec<String> = match w.get("target_list") {
                            Some(Value::Array(t)) => t
                                .iter()
                                .filter_map(|i| match tagged(i) {
                                    Some(("ResTarget", rt)) => {
                                        Some(str_field(rt, "name").to_owned())
                                    }
                                    _ => None,
                                })
                                .collect(),
                            _ => Vec::new(),
                        };
                        for (i, v) in values.iter().enumerate() {
                            let sources = self.expr(v);
                            let dest = cols.get(i).map(|c| (table.clone(), c.clone()));
                            self.sink(format!("MERGE into {table}"), dest, sources);
                        }
                    }
                    _ => self.assignments(w.get("target_list"), &table),
                }
            }
        }
        let output = self.returning(b, &target);
        self.levels.pop();
        self.ctes.truncate(self.ctes.len().saturating_sub(pushed));
        output
    }

    // ---- procedural code

    fn procedural_do(&mut self, b: &Obj) {
        let mut body = None;
        let mut language = "plpgsql".to_owned();
        if let Some(Value::Array(args)) = b.get("args") {
            for arg in args {
                let Some(("DefElem", d)) = tagged(arg) else {
                    continue;
                };
                let value = d
                    .get("arg")
                    .and_then(tagged)
                    .map(|(_, s)| str_field(s, "sval"));
                match str_field(d, "defname") {
                    "as" => body = value.map(str::to_owned),
                    "language" => language = value.unwrap_or("").to_ascii_lowercase(),
                    _ => {}
                }
            }
        }
        match body {
            Some(body) if language == "plpgsql" => {
                let tag = dollar_tag(&body);
                let wrapped = format!(
                    "CREATE FUNCTION sluice_do() RETURNS void LANGUAGE plpgsql AS {tag}{body}{tag}"
                );
                self.plpgsql("DO block", &wrapped);
            }
            _ => self.opaque(format!(
                "a DO block in {language} cannot be followed for masked columns"
            )),
        }
    }

    fn function_body(&mut self, b: &Obj) {
        let RoutineDefinition {
            language,
            source: body,
            ..
        } = routine_definition(b);
        if let Some(sql_body) = b.get("sql_body").filter(|v| !v.is_null()) {
            let refs = self.nested_refs(|a| {
                a.expr(sql_body);
            });
            self.sink("CREATE FUNCTION", None, refs);
            return;
        }
        match (language.as_str(), body) {
            ("sql", Some(body)) => match pg_query::parse(&body, 0) {
                Ok(parsed) => {
                    let trees: Vec<Value> = parsed
                        .protobuf
                        .stmts
                        .iter()
                        .filter_map(|r| r.stmt.as_ref())
                        .filter_map(|s| serde_json::to_value(s).ok())
                        .collect();
                    let refs = self.nested_refs(|a| {
                        for t in &trees {
                            a.statement_value(t);
                        }
                    });
                    self.sink("CREATE FUNCTION", None, refs);
                }
                Err(_) => self.opaque(
                    "a SQL function body that does not parse cannot be followed for masked columns"
                        .into(),
                ),
            },
            ("plpgsql", Some(body)) => {
                self.read_text = true;
                if returns_trigger(b) {
                    // The parser cannot print a trigger function's tree.
                    let definition = super::resolve::trigger_definition(&body);
                    self.plpgsql("CREATE FUNCTION", &definition);
                } else {
                    let text = std::mem::take(&mut self.text);
                    self.plpgsql("CREATE FUNCTION", &text);
                    self.text = text;
                }
            }
            // C and internal functions name existing code; other languages
            // (plpython, plperl, …) cannot be followed.
            ("c" | "internal", _) => {}
            (other, _) => self.opaque(format!(
                "a function body in {} cannot be followed for masked columns",
                if other.is_empty() {
                    "this language"
                } else {
                    other
                }
            )),
        }
    }

    /// Runs `f` and returns every source it referenced.
    fn nested_refs(&mut self, f: impl FnOnce(&mut Analyzer)) -> Sources {
        let before = std::mem::take(&mut self.out.refs);
        f(self);
        let found = std::mem::replace(&mut self.out.refs, before);
        self.out.refs.extend(found.iter().cloned());
        found
    }

    /// A PL/pgSQL body (a whole CREATE FUNCTION text): every SQL query and
    /// expression in it is analysed; if any reaches a ruled column, the
    /// code could send it anywhere (RAISE, NOTIFY, a table), so it is a sink.
    fn plpgsql(&mut self, what: &str, create_function: &str) {
        let tree = match pg_query::parse_plpgsql(create_function) {
            Ok(tree) => tree,
            Err(_) => {
                self.opaque(format!(
                    "the PL/pgSQL code of this {what} cannot be read to follow masked columns"
                ));
                return;
            }
        };
        let mut queries = Vec::new();
        collect_queries(&tree, &mut queries);
        let mut trees = Vec::new();
        for q in &queries {
            let parsed = pg_query::parse(q, 0)
                .or_else(|_| pg_query::parse(&format!("SELECT {q}"), 0))
                // `target := expr`: read as a comparison, the same data.
                .or_else(|_| pg_query::parse(&format!("SELECT {}", q.replacen(":=", "=", 1)), 0));
            match parsed {
                Ok(p) => trees.extend(
                    p.protobuf
                        .stmts
                        .iter()
                        .filter_map(|r| r.stmt.as_ref())
                        .filter_map(|s| serde_json::to_value(s).ok()),
                ),
                Err(_) => {
                    self.opaque(format!(
                        "an expression in the PL/pgSQL code of this {what} cannot be read to \
                         follow masked columns"
                    ));
                    return;
                }
            }
        }
        let refs = self.nested_refs(|a| {
            for t in &trees {
                a.statement_value(t);
            }
        });
        self.sink(what, None, refs);
    }

    // ---- expressions

    /// Everything `v` may derive from. Predicates, grouping and ordering
    /// inside it are visited (for sinks and references) but do not count.
    fn expr(&mut self, v: &Value) -> Sources {
        if self.exhausted() {
            return Sources::new();
        }
        match v {
            Value::Array(items) => items.iter().flat_map(|i| self.expr(i)).collect(),
            Value::Object(m) => match tagged(v) {
                Some((tag, body)) => self.node(tag, body),
                None if is_select(m) => self.select(m).all_sources(),
                None if is_func_call(m) => self.func_call(m),
                None if is_range_var(m) => Sources::new(),
                None => self.expr_fields(m, &[]),
            },
            _ => Sources::new(),
        }
    }

    fn expr_fields(&mut self, m: &Obj, skip: &[&str]) -> Sources {
        let mut out = Sources::new();
        for (key, value) in m {
            if !skip.contains(&key.as_str()) {
                out.extend(self.expr(value));
            }
        }
        out
    }

    fn node(&mut self, tag: &str, b: &Obj) -> Sources {
        match tag {
            "ColumnRef" => self.column_ref(b).0,
            "FuncCall" => self.func_call(b),
            "SubLink" => {
                let mut s = match b.get("subselect") {
                    Some(q) => match self.statement_value(q) {
                        Output::Rows(shape) => shape.all_sources(),
                        _ => Sources::new(),
                    },
                    None => Sources::new(),
                };
                s.extend(self.expr(b.get("testexpr").unwrap_or(&Value::Null)));
                s
            }
            "SortBy" => self.expr(b.get("node").unwrap_or(&Value::Null)),
            // Row filters, grouping and ordering: visited, not data.
            "WindowDef" => {
                self.expr_fields(b, &[]);
                Sources::new()
            }
            "RangeVar" => {
                self.range_var(b);
                Sources::new()
            }
            t if t.ends_with("Stmt") => match self.statement(t, b) {
                Output::Rows(shape) => shape.all_sources(),
                _ => Sources::new(),
            },
            _ => self.expr_fields(b, &[]),
        }
    }

    fn func_call(&mut self, b: &Obj) -> Sources {
        let parts = string_items(b.get("funcname"));
        let name = parts
            .last()
            .map(|s| s.to_ascii_lowercase())
            .unwrap_or_default();
        // As the parser gives them: a quoted `"COUNT"` is not `count`.
        let exact = parts.last().copied().unwrap_or_default();
        let builtin = super::functions::is_builtin(&parts);
        let mut data = self.expr(b.get("args").unwrap_or(&Value::Null));
        // An ordered-set aggregate's WITHIN GROUP (ORDER BY x) is its data
        // (`mode()`, `percentile_disc`); other aggregates' ORDER BY is
        // counted too, conservatively.
        data.extend(self.expr(b.get("agg_order").unwrap_or(&Value::Null)));
        self.expr(b.get("agg_filter").unwrap_or(&Value::Null));
        self.expr(b.get("over").unwrap_or(&Value::Null));
        if SINK_FUNCTIONS.contains(&name.as_str())
            || SINK_PREFIXES.iter().any(|p| name.starts_with(p))
        {
            self.sink(format!("{name}()"), None, data.clone());
        }
        if OPAQUE_FUNCTIONS.contains(&name.as_str()) {
            self.opaque(format!(
                "{name}() reads data the statement does not name, which cannot be followed for \
                 masked columns; query the tables directly"
            ));
        }
        if builtin && NOT_VALUES.contains(&exact) {
            return Sources::new();
        }
        data
    }
}

/// PostgreSQL's name for an output column without an alias
/// (FigureColname); `None` where this code does not know it (then any name
/// may match).
fn figure(v: &Value) -> Option<String> {
    let (tag, b) = tagged(v)?;
    match tag {
        "ColumnRef" => {
            let names = string_items(b.get("fields"));
            if is_star(b) {
                None
            } else {
                names.last().map(|s| (*s).to_owned())
            }
        }
        "AIndirection" => {
            let last = match b.get("indirection") {
                Some(Value::Array(items)) => items.last().and_then(tagged),
                _ => None,
            };
            match last {
                Some(("String", s)) => Some(str_field(s, "sval").to_owned()),
                _ => figure(b.get("arg")?),
            }
        }
        "FuncCall" => string_items(b.get("funcname"))
            .last()
            .map(|s| (*s).to_owned()),
        "TypeCast" => figure(b.get("arg")?).or_else(|| {
            b.get("type_name").and_then(|t| match t {
                Value::Object(t) => string_items(t.get("names")).last().map(|s| (*s).to_owned()),
                _ => None,
            })
        }),
        "CollateClause" => figure(b.get("arg")?),
        "CaseExpr" => Some("case".into()),
        "AArrayExpr" => Some("array".into()),
        "RowExpr" => Some("row".into()),
        "CoalesceExpr" => Some("coalesce".into()),
        "GroupingFunc" => Some("grouping".into()),
        "AConst" | "BoolExpr" | "NullTest" | "BooleanTest" | "ParamRef" => Some("?column?".into()),
        _ => None,
    }
}

/// Every `query` string in a PL/pgSQL parse tree (its SQL statements and
/// expressions).
fn collect_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| collect_queries(i, out)),
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("query", Value::String(q)) => out.push(q.clone()),
                    _ => collect_queries(v, out),
                }
            }
        }
        _ => {}
    }
}

/// A dollar-quote tag that does not occur in `body`.
fn dollar_tag(body: &str) -> String {
    let mut n = 0u32;
    loop {
        let tag = format!("$sluice{n}$");
        if !body.contains(&tag) {
            return tag;
        }
        n += 1;
    }
}

// ---- reading the serialised tree (the shared readers are in walk.rs)

use super::memo::ShapeMemo;
use super::walk::{
    bool_field, is_func_call, is_range_var, is_select, returns_trigger, routine_definition,
    statement_text, str_field, tagged, take_constants, Reads, RoutineDefinition,
};

/// A field typed as a message may come tagged or not.
fn untag(v: &Value) -> Option<&Value> {
    match v {
        Value::Object(m) if m.len() == 1 && m.contains_key("node") => m.get("node").and_then(untag),
        Value::Object(m) if m.len() == 1 => match m.iter().next() {
            Some((k, inner)) if k.starts_with(|c: char| c.is_ascii_uppercase()) => Some(inner),
            _ => Some(v),
        },
        Value::Null => None,
        _ => Some(v),
    }
}

fn is_star(cr: &Obj) -> bool {
    ends_with_star(cr.get("fields"))
}

fn ends_with_star(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Array(items)) => matches!(items.last().and_then(tagged), Some(("AStar", _))),
        _ => false,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn is_null(m: &Obj, key: &str) -> bool {
    m.get(key).is_none_or(is_empty)
}

fn int_field(m: &Obj, key: &str) -> i64 {
    m.get(key).and_then(Value::as_i64).unwrap_or(0)
}

fn string_items(v: Option<&Value>) -> Vec<&str> {
    let Some(Value::Array(items)) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|i| match tagged(i) {
            Some(("String", s)) => Some(str_field(s, "sval")),
            _ => None,
        })
        .collect()
}

fn owned_strings(v: Option<&Value>) -> Vec<String> {
    string_items(v).into_iter().map(str::to_owned).collect()
}

/// The items of a `List` node (a VALUES row).
fn list_items(v: &Value) -> Vec<Value> {
    match tagged(v) {
        Some(("List", l)) => match l.get("items") {
            Some(Value::Array(items)) => items.clone(),
            _ => Vec::new(),
        },
        _ => vec![v.clone()],
    }
}

/// An item's alias name and column aliases.
fn alias(b: &Obj) -> (String, Vec<String>) {
    match b.get("alias") {
        Some(Value::Object(a)) => (
            str_field(a, "aliasname").to_owned(),
            owned_strings(a.get("colnames")),
        ),
        _ => (String::new(), Vec::new()),
    }
}

fn first_function_name(functions: Option<&Value>) -> Option<String> {
    let Some(Value::Array(fs)) = functions else {
        return None;
    };
    let first = fs.first()?;
    let items = match tagged(first) {
        Some(("List", l)) => l.get("items")?.as_array()?.clone(),
        _ => vec![first.clone()],
    };
    let (_, call) = tagged(items.first()?)?;
    string_items(call.get("funcname"))
        .last()
        .map(|s| (*s).to_owned())
}

#[cfg(test)]
mod tests;
