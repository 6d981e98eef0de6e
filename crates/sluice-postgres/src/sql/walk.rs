//! The parse-tree walk and the per-statement rules.
//!
//! libpg_query's tree is serialised to a JSON value (the protobuf types
//! derive `Serialize`) and walked generically, so that no node type and no
//! field is skipped because nobody listed it: every nested statement,
//! relation and function call is visited wherever it sits. A node wrapper
//! serialises as `{"node": {"Tag": {fields}}}`; fields typed as a specific
//! message (such as `InsertStmt.relation: RangeVar`) serialise untagged, so
//! the few types that matter there (RangeVar, FuncCall, SelectStmt) are also
//! recognised by their fields.
//!
//! **Invariant:** a statement type this file does not know gets every class
//! (see the fallback arm in [`Walker::statement`]); a new PostgreSQL
//! statement can never classify as harmless by omission.

use super::bounds::{bounds, bounds_write, select_bounded, Target};
use super::functions::{changes_session_function, function_classes, is_builtin, setting_classes};
use super::SqlClass::{self, Admin, Dcl, Ddl, Read, Tx, Utility, Write};
use super::{Classification, ClassifyError, StatementInfo};
use pg_query::protobuf::{
    AlterTableType, CmdType, DiscardMode, LockClauseStrength, MergeMatchKind, ObjectType,
    OnConflictAction, RoleStmtType, Token, TransactionStmtKind, VariableSetKind,
};
use serde_json::{Map, Value};

pub(super) type Obj = Map<String, Value>;

/// What a classification read besides the shape of the statement: the
/// constants' values or its text. See [`super::cache`]'s shape cache, which
/// reuses a classification for another text only when it read neither.
#[derive(Debug, Default)]
pub(super) struct Reads {
    /// The start offsets of the constants (`A_Const` nodes) in the tree,
    /// sorted: where the parser put a constant's value.
    pub(super) constants_at: Vec<i32>,
    /// Whether the walk read a constant's value or the statement's text.
    pub(super) values: bool,
}

pub(super) fn classify(sql: &str) -> Result<(Classification, Reads), ClassifyError> {
    let parsed = pg_query::parse(sql, 0).map_err(parse_error)?;
    let mut statements = Vec::with_capacity(parsed.protobuf.stmts.len());
    let mut reads = Reads::default();
    for raw in &parsed.protobuf.stmts {
        let Some(stmt) = raw.stmt.as_ref() else {
            continue;
        };
        let mut tree = serde_json::to_value(stmt)
            .map_err(|e| ClassifyError::Unsupported(format!("cannot read the parse tree: {e}")))?;
        let mut walker = Walker {
            info: StatementInfo::default(),
            ctes: Vec::new(),
            text: statement_text(sql, raw.stmt_location, raw.stmt_len),
            constants: take_constants(&mut tree, &mut reads.constants_at),
            read_values: false,
            error: None,
        };
        walker.info.command = walker.query(&tree, Mode::Read);
        if let Some(e) = walker.error {
            return Err(e);
        }
        reads.values |= walker.read_values;
        statements.push(walker.finish());
    }
    reads.constants_at.sort_unstable();
    Ok((Classification { statements }, reads))
}

/// Moves every constant's value out of the tree, leaving its index in the
/// returned list (`"constant": n`) and its location in `locations`. The walk
/// can then read a value only through [`Walker::constant_text`], which
/// records that it did: nothing else can see one.
pub(super) fn take_constants(tree: &mut Value, locations: &mut Vec<i32>) -> Vec<Value> {
    fn visit(v: &mut Value, locations: &mut Vec<i32>, values: &mut Vec<Value>) {
        match v {
            Value::Array(items) => {
                for item in items {
                    visit(item, locations, values);
                }
            }
            Value::Object(m) => {
                let single = m.len() == 1;
                if let Some(Value::Object(c)) = m.get_mut("AConst").filter(|_| single) {
                    if let Some(val) = c.remove("val") {
                        c.insert("constant".into(), Value::from(values.len()));
                        values.push(val);
                    }
                    locations.push(int_field(c, "location"));
                    return;
                }
                for child in m.values_mut() {
                    visit(child, locations, values);
                }
            }
            _ => {}
        }
    }
    let mut values = Vec::new();
    visit(tree, locations, &mut values);
    values
}

/// Syntax errors are the server's too; a tree too deep to read is ours.
///
/// The protobuf decoder stops at 100 nested messages (roughly 45 chained
/// binary operators such as `a || b || …`, or 15 nested scalar subqueries);
/// libpg_query stops at its own stack and depth limits. Lifting the decoder's
/// limit would let a hostile statement recurse deep enough to overflow a
/// worker thread's stack, so such statements are refused instead.
fn parse_error(e: pg_query::Error) -> ClassifyError {
    const TOO_DEEP: &str = "the statement is nested too deeply to classify";
    match e {
        pg_query::Error::Decode(_) => ClassifyError::Unsupported(TOO_DEEP.into()),
        pg_query::Error::Parse(m)
            if m.contains("stack depth limit exceeded") || m.contains("nested too deeply") =>
        {
            ClassifyError::Unsupported(TOO_DEEP.into())
        }
        pg_query::Error::Parse(m) => ClassifyError::Parse(m),
        other => ClassifyError::Parse(other.to_string()),
    }
}

/// The text of one statement of a multi-statement string (byte offsets from
/// the parser; a length of 0 means "to the end").
pub(super) fn statement_text(sql: &str, location: i32, len: i32) -> &str {
    let start = usize::try_from(location).unwrap_or(0);
    let end = match usize::try_from(len) {
        Ok(0) | Err(_) => sql.len(),
        Ok(n) => start.saturating_add(n).min(sql.len()),
    };
    sql.get(start..end).unwrap_or("")
}

/// How relations met under the current node are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Executed; relations are read.
    Read,
    /// Executed; relations are the targets the statement writes or acts on.
    Write,
    /// Planned but not executed (EXPLAIN without ANALYZE): relations are
    /// recorded as reads, nothing adds classes.
    Plan,
}

impl Mode {
    /// The mode for a node's ordinary children.
    fn inner(self) -> Mode {
        match self {
            Mode::Plan => Mode::Plan,
            _ => Mode::Read,
        }
    }

    /// The mode for a statement's target fields.
    fn target(self) -> Mode {
        match self {
            Mode::Plan => Mode::Plan,
            _ => Mode::Write,
        }
    }
}

struct Walker<'a> {
    info: StatementInfo,
    /// CTE names in scope, innermost last.
    ctes: Vec<String>,
    /// The text of the statement being walked (for PREPARE's body); read
    /// through [`Walker::text`].
    text: &'a str,
    /// The values of the tree's constants (see [`take_constants`]); read
    /// through [`Walker::constant_text`].
    constants: Vec<Value>,
    /// Whether the walk read a constant's value or the text.
    read_values: bool,
    error: Option<ClassifyError>,
}

/// What a statement rule decided before its fields are walked.
struct Rule {
    classes: Vec<SqlClass>,
    /// Fields whose relations are targets (walked in Write mode).
    targets: &'static [&'static str],
    /// Fields the rule walked itself.
    skip: &'static [&'static str],
}

impl Rule {
    fn new(classes: &[SqlClass]) -> Self {
        Rule {
            classes: classes.to_vec(),
            targets: &[],
            skip: &[],
        }
    }

    fn targets(mut self, targets: &'static [&'static str]) -> Self {
        self.targets = targets;
        self
    }
}

impl<'a> Walker<'a> {
    /// The statement's text (recorded: it holds the constants' values).
    fn text(&mut self) -> &'a str {
        self.read_values = true;
        self.text
    }

    /// The text of a string or integer constant node (recorded).
    fn constant_text(&mut self, v: &Value) -> Option<String> {
        let Some(("AConst", c)) = tagged(v) else {
            return None;
        };
        self.read_values = true;
        let at = c.get("constant").and_then(Value::as_u64)?;
        match self
            .constants
            .get(usize::try_from(at).ok()?)
            .and_then(tagged)
        {
            Some(("Sval", s)) => Some(str_field(s, "sval").to_owned()),
            Some(("Ival", i)) => Some(int_field(i, "ival").to_string()),
            _ => None,
        }
    }

    /// A routine replaced where it may be attached (a trigger, a default, a
    /// policy, a deferred constraint trigger already queued) runs its new
    /// body from statements that do not name it, judged on the old one: the
    /// replacement is judged on what the new body does, as a call would be.
    fn replaced_routine(&mut self, b: &Obj) {
        if b.get("sql_body").is_some_and(|v| !v.is_null()) {
            // A `BEGIN ATOMIC` body is part of this statement's tree: walked
            // with it.
            return;
        }
        let RoutineDefinition {
            mut language,
            volatility,
            source,
        } = routine_definition(b);
        if language.is_empty() {
            language.push_str("sql");
        }
        let definition = self.text();
        let body = match (language.as_str(), source) {
            ("plpgsql", Some(source)) if returns_trigger(b) => {
                super::resolve::trigger_definition(&source)
            }
            ("plpgsql", _) => definition.to_owned(),
            (_, source) => source.unwrap_or_default(),
        };
        let cache = super::ClassifierCache::new(8);
        let does = super::resolve::function_effects(&language, volatility, &body, &cache);
        super::resolve::merge(&mut self.info, &does);
    }

    fn finish(mut self) -> StatementInfo {
        if !self.info.reads.is_empty() {
            self.info.classes.insert(Read);
        }
        // DDL changes what later names resolve to (a function overload, a
        // temporary table, a schema); privileges change which schemas of
        // search_path are visible; pg_settings is SET as a table.
        if self.info.classes.contains(&Ddl)
            || self.info.classes.contains(&Dcl)
            || self
                .info
                .writes
                .iter()
                .any(|t| t.rsplit('.').next() == Some("pg_settings"))
        {
            self.info.changes_session = true;
        }
        self.info
    }

    fn add(&mut self, mode: Mode, classes: &[SqlClass]) {
        if mode != Mode::Plan {
            self.info.classes.extend(classes.iter().copied());
        }
    }

    /// Walks a node that is a statement in its own right (the top level, or
    /// the query an EXPLAIN, PREPARE, DECLARE or COPY carries) and returns
    /// its command.
    fn query(&mut self, v: &Value, mode: Mode) -> String {
        match tagged(v) {
            Some((tag, body)) if is_statement(tag) => self.statement(tag, body, mode, true),
            _ => {
                self.walk(v, mode);
                String::new()
            }
        }
    }

    fn walk(&mut self, v: &Value, mode: Mode) {
        match v {
            Value::Array(items) => {
                for item in items {
                    self.walk(item, mode);
                }
            }
            Value::Object(m) => self.object(m, mode),
            _ => {}
        }
    }

    fn object(&mut self, m: &Obj, mode: Mode) {
        if m.len() == 1 {
            if let Some((key, value)) = m.iter().next() {
                if key == "node" {
                    return self.walk(value, mode);
                }
                if key.starts_with(|c: char| c.is_ascii_uppercase()) {
                    if let Value::Object(body) = value {
                        return self.node(key, body, mode);
                    }
                    return self.walk(value, mode);
                }
            }
        }
        // Untagged: a field typed as a specific message.
        if is_range_var(m) {
            self.range_var(m, mode);
        } else if is_func_call(m) {
            self.func_call(m, mode);
        } else if is_select(m) {
            self.statement("SelectStmt", m, mode, false);
        } else {
            self.fields(m, mode, &[], &[]);
        }
    }

    fn node(&mut self, tag: &str, body: &Obj, mode: Mode) {
        match tag {
            "RangeVar" => self.range_var(body, mode),
            "FuncCall" => self.func_call(body, mode),
            // Containers that carry their parent's intent to their items.
            "List" | "VacuumRelation" => self.fields(body, mode, &[], &[]),
            t if is_statement(t) => {
                self.statement(t, body, mode, false);
            }
            _ => self.fields(body, mode.inner(), &[], &[]),
        }
    }

    /// Walks an object's fields: `targets` in the target mode, `skip` not at
    /// all, the rest in `mode`. A WITH clause brings its CTE names into
    /// scope for the whole object.
    fn fields(&mut self, m: &Obj, mode: Mode, targets: &[&str], skip: &[&str]) {
        let scoped = match m.get("with_clause") {
            Some(Value::Object(with)) => self.enter_with(with, mode),
            _ => 0,
        };
        for (key, value) in m {
            if key == "with_clause" || skip.contains(&key.as_str()) {
                continue;
            }
            if targets.contains(&key.as_str()) {
                self.walk(value, mode.target());
            } else {
                self.walk(value, mode);
            }
        }
        let keep = self.ctes.len().saturating_sub(scoped);
        self.ctes.truncate(keep);
    }

    /// Walks a WITH clause's CTEs with the right names visible and leaves all
    /// of its names in scope; returns how many names it pushed. Without
    /// RECURSIVE a CTE sees only the ones before it (a CTE named like a
    /// table and reading that table reads the table).
    fn enter_with(&mut self, with: &Obj, mode: Mode) -> usize {
        let recursive = with.get("recursive") == Some(&Value::Bool(true));
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
        let name = |c: &Obj| str_field(c, "ctename").to_owned();
        let before = self.ctes.len();
        if recursive {
            self.ctes.extend(ctes.iter().map(|c| name(c)));
        }
        for cte in &ctes {
            self.fields(cte, mode.inner(), &[], &[]);
            if !recursive {
                self.ctes.push(name(cte));
            }
        }
        // Anything in the clause besides the CTE list (none today).
        for (key, value) in with {
            if key != "ctes" {
                self.walk(value, mode.inner());
            }
        }
        self.ctes.len() - before
    }

    fn range_var(&mut self, m: &Obj, mode: Mode) {
        let schema = str_field(m, "schemaname");
        let rel = str_field(m, "relname");
        if rel.is_empty() {
            return;
        }
        // A catalog name, if written, must be the current database; leaving
        // it out keeps names comparable with rules written as schema.table.
        let name = if schema.is_empty() {
            rel.to_owned()
        } else {
            format!("{schema}.{rel}")
        };
        match mode {
            Mode::Write => {
                self.info.writes.insert(name);
            }
            Mode::Read | Mode::Plan => {
                if schema.is_empty() && self.ctes.iter().any(|c| c == rel) {
                    return;
                }
                self.info.reads.insert(name);
            }
        }
    }

    fn func_call(&mut self, m: &Obj, mode: Mode) {
        let parts = string_items(m.get("funcname"));
        if let Some(bare) = parts.last() {
            self.add(mode, function_classes(bare));
            self.info.functions.insert(parts.join("."));
            if !is_builtin(&parts) || changes_session_function(bare) {
                self.info.changes_session = true;
            }
        }
        self.fields(m, mode.inner(), &[], &["funcname"]);
    }

    /// Records relations named by a list of names (DROP, COMMENT, SECURITY
    /// LABEL), when the object is a relation.
    fn named_relations(&mut self, objtype: i32, objects: Option<&Value>, mode: Mode) {
        if !is_relation_type(objtype) {
            return;
        }
        let objects: Vec<&Value> = match objects {
            Some(Value::Array(items)) => items.iter().collect(),
            Some(v) => vec![v],
            None => Vec::new(),
        };
        for object in objects {
            let Some(("List", list)) = tagged(object) else {
                continue;
            };
            let parts = string_items(list.get("items"));
            let start = parts.len().saturating_sub(2);
            let name = parts[start..].join(".");
            if name.is_empty() {
                continue;
            }
            if mode == Mode::Plan {
                self.info.reads.insert(name);
            } else {
                self.info.writes.insert(name);
            }
        }
    }

    /// The rules per statement type. Returns the command tag.
    fn statement(&mut self, tag: &str, b: &Obj, mode: Mode, query_level: bool) -> String {
        if changes_session_statement(tag, b) {
            self.info.changes_session = true;
        }
        self.info.functions.extend(attached_routines(tag, b));
        self.info.defines_code |= defines_code(tag, b);
        let (command, rule): (String, Rule) = match tag {
            // ---- queries and data changes
            "SelectStmt" => self.select(b, query_level),
            "InsertStmt" => {
                if mode != Mode::Plan && unbounded_upsert(b) {
                    self.info.no_where = true;
                }
                ("INSERT".into(), Rule::new(&[Write]).targets(&["relation"]))
            }
            "UpdateStmt" | "DeleteStmt" => {
                let others = b.get("from_clause").or_else(|| b.get("using_clause"));
                if mode != Mode::Plan
                    && !bounds_write(b.get("where_clause"), Target::of(b.get("relation")), others)
                {
                    self.info.no_where = true;
                }
                let command = if tag == "UpdateStmt" {
                    "UPDATE"
                } else {
                    "DELETE"
                };
                (command.into(), Rule::new(&[Write]).targets(&["relation"]))
            }
            "MergeStmt" => {
                if mode != Mode::Plan && unbounded_merge(b) {
                    self.info.no_where = true;
                }
                ("MERGE".into(), Rule::new(&[Write]).targets(&["relation"]))
            }
            "TruncateStmt" => {
                // Every row, by definition.
                if mode != Mode::Plan {
                    self.info.no_where = true;
                }
                (
                    "TRUNCATE".into(),
                    Rule::new(&[Write]).targets(&["relations"]),
                )
            }
            "CopyStmt" => {
                let from = bool_field(b, "is_from");
                let mut rule = Rule::new(&[if from { Write } else { Read }]);
                if from {
                    rule.targets = &["relation"];
                }
                // PROGRAM runs a shell command; a file name is a server file.
                if bool_field(b, "is_program") || !str_field(b, "filename").is_empty() {
                    rule.classes.push(Admin);
                }
                if let Some(q) = b.get("query") {
                    self.query(q, mode);
                }
                rule.skip = &["query"];
                ("COPY".into(), rule)
            }
            "CallStmt" => ("CALL".into(), Rule::new(&[Write])),
            // The body is procedural code the parser does not look into.
            "DoStmt" => ("DO".into(), Rule::new(&SqlClass::ALL)),

            // ---- EXPLAIN, prepared statements, cursors
            "ExplainStmt" => {
                let inner = if explain_analyze(b.get("options")) {
                    mode
                } else {
                    Mode::Plan
                };
                if let Some(q) = b.get("query") {
                    self.query(q, inner);
                }
                let mut rule = Rule::new(&[Read]);
                rule.skip = &["query"];
                ("EXPLAIN".into(), rule)
            }
            "PrepareStmt" => {
                if let Some(q) = b.get("query") {
                    self.query(q, mode);
                }
                match prepare_body(self.text()) {
                    Some(body) => {
                        self.info.prepares = Some((str_field(b, "name").to_owned(), body));
                    }
                    None => {
                        self.error = Some(ClassifyError::Unsupported(
                            "cannot find the statement a PREPARE carries".into(),
                        ))
                    }
                }
                let mut rule = Rule::new(&[]);
                rule.skip = &["query"];
                ("PREPARE".into(), rule)
            }
            "ExecuteStmt" => {
                self.info.executes = Some(str_field(b, "name").to_owned());
                ("EXECUTE".into(), Rule::new(&[]))
            }
            "DeallocateStmt" => {
                let name = str_field(b, "name");
                self.info.deallocates = Some(if bool_field(b, "isall") || name.is_empty() {
                    None
                } else {
                    Some(name.to_owned())
                });
                ("DEALLOCATE".into(), Rule::new(&[Utility]))
            }
            "DeclareCursorStmt" => {
                if let Some(q) = b.get("query") {
                    self.query(q, mode);
                }
                let mut rule = Rule::new(&[Utility]);
                rule.skip = &["query"];
                ("DECLARE CURSOR".into(), rule)
            }
            "FetchStmt" => {
                let command = if bool_field(b, "ismove") {
                    "MOVE"
                } else {
                    "FETCH"
                };
                (command.into(), Rule::new(&[Utility]))
            }
            "ClosePortalStmt" => ("CLOSE CURSOR".into(), Rule::new(&[Utility])),

            // ---- session
            "VariableSetStmt" => set_rule(self, b),
            "VariableShowStmt" => ("SHOW".into(), Rule::new(&[Read, Utility])),
            "DiscardStmt" => {
                // DISCARD ALL also resets the role.
                let all = DiscardMode::try_from(int_field(b, "target"))
                    .map_or(true, |t| t == DiscardMode::DiscardAll);
                let classes: &[SqlClass] = if all { &[Utility, Dcl] } else { &[Utility] };
                ("DISCARD".into(), Rule::new(classes))
            }
            "ListenStmt" => ("LISTEN".into(), Rule::new(&[Utility])),
            "UnlistenStmt" => ("UNLISTEN".into(), Rule::new(&[Utility])),
            "NotifyStmt" => ("NOTIFY".into(), Rule::new(&[Utility])),
            "LoadStmt" => ("LOAD".into(), Rule::new(&[Utility, Admin])),
            "LockStmt" => (
                "LOCK TABLE".into(),
                Rule::new(&[Utility, Write]).targets(&["relations"]),
            ),
            "ConstraintsSetStmt" => ("SET CONSTRAINTS".into(), Rule::new(&[Utility, Tx])),
            "TransactionStmt" => (transaction_command(b).into(), Rule::new(&[Tx])),

            // ---- maintenance
            "CheckPointStmt" => ("CHECKPOINT".into(), Rule::new(&[Admin])),
            "VacuumStmt" => {
                let command = if bool_field(b, "is_vacuumcmd") {
                    "VACUUM"
                } else {
                    "ANALYZE"
                };
                (command.into(), Rule::new(&[Admin]).targets(&["rels"]))
            }
            "ClusterStmt" => (
                "CLUSTER".into(),
                Rule::new(&[Ddl, Admin]).targets(&["relation"]),
            ),
            "ReindexStmt" => (
                "REINDEX".into(),
                Rule::new(&[Ddl, Admin]).targets(&["relation"]),
            ),

            // ---- DDL on relations
            "CreateTableAsStmt" => {
                let command = if bool_field(b, "is_select_into") {
                    "SELECT INTO"
                } else if ObjectType::try_from(int_field(b, "objtype"))
                    == Ok(ObjectType::ObjectMatview)
                {
                    "CREATE MATERIALIZED VIEW"
                } else {
                    "CREATE TABLE AS"
                };
                (command.into(), Rule::new(&[Ddl, Write]).targets(&["into"]))
            }
            "CreateStmt" => (
                "CREATE TABLE".into(),
                Rule::new(&[Ddl]).targets(&["relation"]),
            ),
            "CreateForeignTableStmt" => (
                "CREATE FOREIGN TABLE".into(),
                Rule::new(&[Ddl]).targets(&["base_stmt"]),
            ),
            "ViewStmt" => ("CREATE VIEW".into(), Rule::new(&[Ddl]).targets(&["view"])),
            "IndexStmt" => (
                "CREATE INDEX".into(),
                Rule::new(&[Ddl]).targets(&["relation"]),
            ),
            "CreateSeqStmt" => (
                "CREATE SEQUENCE".into(),
                Rule::new(&[Ddl]).targets(&["sequence"]),
            ),
            "AlterSeqStmt" => (
                "ALTER SEQUENCE".into(),
                Rule::new(&[Ddl]).targets(&["sequence"]),
            ),
            "AlterTableStmt" => {
                let (object, extra) = object_type(int_field(b, "objtype"));
                let mut rule = Rule::new(&[Ddl]).targets(&["relation"]);
                rule.classes.extend_from_slice(extra);
                if alter_table_touches_privileges(b) {
                    rule.classes.push(Dcl);
                }
                (format!("ALTER {object}"), rule)
            }
            "ReplicaIdentityStmt" => ("ALTER TABLE".into(), Rule::new(&[Ddl])),
            "CreateTrigStmt" => (
                "CREATE TRIGGER".into(),
                Rule::new(&[Ddl]).targets(&["relation"]),
            ),
            "RuleStmt" => (
                "CREATE RULE".into(),
                Rule::new(&[Ddl]).targets(&["relation"]),
            ),
            "CreatePolicyStmt" => (
                "CREATE POLICY".into(),
                Rule::new(&[Ddl, Dcl]).targets(&["table"]),
            ),
            "AlterPolicyStmt" => (
                "ALTER POLICY".into(),
                Rule::new(&[Ddl, Dcl]).targets(&["table"]),
            ),
            "RefreshMatViewStmt" => (
                "REFRESH MATERIALIZED VIEW".into(),
                Rule::new(&[Ddl, Write]).targets(&["relation"]),
            ),
            "CreateStatsStmt" => ("CREATE STATISTICS".into(), Rule::new(&[Ddl])),
            "AlterStatsStmt" => ("ALTER STATISTICS".into(), Rule::new(&[Ddl])),
            "CompositeTypeStmt" => (
                "CREATE TYPE".into(),
                Rule::new(&[Ddl]).targets(&["typevar"]),
            ),

            // ---- DDL on any object
            "DropStmt" => {
                let objtype = int_field(b, "remove_type");
                self.named_relations(objtype, b.get("objects"), mode);
                let (object, extra) = object_type(objtype);
                let mut rule = Rule::new(&[Ddl]);
                rule.classes.extend_from_slice(extra);
                (format!("DROP {object}"), rule)
            }
            "CommentStmt" => {
                let objtype = int_field(b, "objtype");
                self.named_relations(objtype, b.get("object"), mode);
                ("COMMENT".into(), Rule::new(&[Ddl]))
            }
            "SecLabelStmt" => {
                let objtype = int_field(b, "objtype");
                self.named_relations(objtype, b.get("object"), mode);
                ("SECURITY LABEL".into(), Rule::new(&[Dcl]))
            }
            "RenameStmt"
            | "AlterObjectSchemaStmt"
            | "AlterOwnerStmt"
            | "AlterObjectDependsStmt" => {
                let key = if tag == "RenameStmt" {
                    "rename_type"
                } else {
                    "object_type"
                };
                let (object, extra) = object_type(int_field(b, key));
                let mut rule = Rule::new(&[Ddl]).targets(&["relation"]);
                rule.classes.extend_from_slice(extra);
                if tag == "AlterOwnerStmt" {
                    rule.classes.push(Dcl);
                }
                (format!("ALTER {object}"), rule)
            }
            "DefineStmt" => {
                let (object, extra) = object_type(int_field(b, "kind"));
                let mut rule = Rule::new(&[Ddl]);
                rule.classes.extend_from_slice(extra);
                (format!("CREATE {object}"), rule)
            }
            "CreateFunctionStmt" => {
                let command = if bool_field(b, "is_procedure") {
                    "CREATE PROCEDURE"
                } else {
                    "CREATE FUNCTION"
                };
                if bool_field(b, "replace") {
                    self.replaced_routine(b);
                }
                (command.into(), Rule::new(&[Ddl]))
            }
            "AlterFunctionStmt" => {
                let (object, _) = object_type(int_field(b, "objtype"));
                (format!("ALTER {object}"), Rule::new(&[Ddl]))
            }
            "CreateSchemaStmt" => ("CREATE SCHEMA".into(), Rule::new(&[Ddl])),
            "CreateDomainStmt" => ("CREATE DOMAIN".into(), Rule::new(&[Ddl])),
            "AlterDomainStmt" => ("ALTER DOMAIN".into(), Rule::new(&[Ddl])),
            "CreateEnumStmt" | "CreateRangeStmt" => ("CREATE TYPE".into(), Rule::new(&[Ddl])),
            "AlterEnumStmt" | "AlterTypeStmt" => ("ALTER TYPE".into(), Rule::new(&[Ddl])),
            "CreateConversionStmt" => ("CREATE CONVERSION".into(), Rule::new(&[Ddl])),
            "CreateCastStmt" => ("CREATE CAST".into(), Rule::new(&[Ddl])),
            "CreateTransformStmt" => ("CREATE TRANSFORM".into(), Rule::new(&[Ddl])),
            "CreateOpClassStmt" => ("CREATE OPERATOR CLASS".into(), Rule::new(&[Ddl])),
            "CreateOpFamilyStmt" => ("CREATE OPERATOR FAMILY".into(), Rule::new(&[Ddl])),
            "AlterOpFamilyStmt" => ("ALTER OPERATOR FAMILY".into(), Rule::new(&[Ddl])),
            "AlterOperatorStmt" => ("ALTER OPERATOR".into(), Rule::new(&[Ddl])),
            "AlterCollationStmt" => ("ALTER COLLATION".into(), Rule::new(&[Ddl])),
            "AlterTsdictionaryStmt" => ("ALTER TEXT SEARCH DICTIONARY".into(), Rule::new(&[Ddl])),
            "AlterTsconfigurationStmt" => {
                ("ALTER TEXT SEARCH CONFIGURATION".into(), Rule::new(&[Ddl]))
            }

            // ---- DDL that reaches the server, other servers or superuser powers
            "CreateExtensionStmt" => ("CREATE EXTENSION".into(), Rule::new(&[Ddl, Admin])),
            "AlterExtensionStmt" | "AlterExtensionContentsStmt" => {
                ("ALTER EXTENSION".into(), Rule::new(&[Ddl, Admin]))
            }
            "AlterSystemStmt" => ("ALTER SYSTEM".into(), Rule::new(&[Ddl, Admin])),
            "CreatedbStmt" => ("CREATE DATABASE".into(), Rule::new(&[Ddl, Admin])),
            "DropdbStmt" => ("DROP DATABASE".into(), Rule::new(&[Ddl, Admin])),
            "AlterDatabaseStmt" | "AlterDatabaseRefreshCollStmt" => {
                ("ALTER DATABASE".into(), Rule::new(&[Ddl, Admin]))
            }
            "CreateTableSpaceStmt" => ("CREATE TABLESPACE".into(), Rule::new(&[Ddl, Admin])),
            "DropTableSpaceStmt" => ("DROP TABLESPACE".into(), Rule::new(&[Ddl, Admin])),
            "AlterTableSpaceOptionsStmt" => ("ALTER TABLESPACE".into(), Rule::new(&[Ddl, Admin])),
            "AlterTableMoveAllStmt" => ("ALTER TABLE".into(), Rule::new(&[Ddl, Admin])),
            "CreatePublicationStmt" => ("CREATE PUBLICATION".into(), Rule::new(&[Ddl, Admin])),
            "AlterPublicationStmt" => ("ALTER PUBLICATION".into(), Rule::new(&[Ddl, Admin])),
            "CreateSubscriptionStmt" => ("CREATE SUBSCRIPTION".into(), Rule::new(&[Ddl, Admin])),
            "AlterSubscriptionStmt" => ("ALTER SUBSCRIPTION".into(), Rule::new(&[Ddl, Admin])),
            "DropSubscriptionStmt" => ("DROP SUBSCRIPTION".into(), Rule::new(&[Ddl, Admin])),
            "CreateFdwStmt" => (
                "CREATE FOREIGN DATA WRAPPER".into(),
                Rule::new(&[Ddl, Admin]),
            ),
            "AlterFdwStmt" => (
                "ALTER FOREIGN DATA WRAPPER".into(),
                Rule::new(&[Ddl, Admin]),
            ),
            "CreateForeignServerStmt" => ("CREATE SERVER".into(), Rule::new(&[Ddl, Admin])),
            "AlterForeignServerStmt" => ("ALTER SERVER".into(), Rule::new(&[Ddl, Admin])),
            "CreateUserMappingStmt" => {
                ("CREATE USER MAPPING".into(), Rule::new(&[Ddl, Dcl, Admin]))
            }
            "AlterUserMappingStmt" => ("ALTER USER MAPPING".into(), Rule::new(&[Ddl, Dcl, Admin])),
            "DropUserMappingStmt" => ("DROP USER MAPPING".into(), Rule::new(&[Ddl, Dcl, Admin])),
            "ImportForeignSchemaStmt" => ("IMPORT FOREIGN SCHEMA".into(), Rule::new(&[Ddl, Admin])),
            "CreateAmStmt" => ("CREATE ACCESS METHOD".into(), Rule::new(&[Ddl, Admin])),
            "CreatePlangStmt" => ("CREATE LANGUAGE".into(), Rule::new(&[Ddl, Admin])),
            "CreateEventTrigStmt" => ("CREATE EVENT TRIGGER".into(), Rule::new(&[Ddl, Admin])),
            "AlterEventTrigStmt" => ("ALTER EVENT TRIGGER".into(), Rule::new(&[Ddl, Admin])),

            // ---- privileges and roles
            "GrantStmt" | "GrantRoleStmt" => {
                let command = if bool_field(b, "is_grant") {
                    "GRANT"
                } else {
                    "REVOKE"
                };
                (command.into(), Rule::new(&[Dcl]).targets(&["objects"]))
            }
            "AlterDefaultPrivilegesStmt" => ("ALTER DEFAULT PRIVILEGES".into(), Rule::new(&[Dcl])),
            "CreateRoleStmt" => {
                let command = match RoleStmtType::try_from(int_field(b, "stmt_type")) {
                    Ok(RoleStmtType::RolestmtUser) => "CREATE USER",
                    Ok(RoleStmtType::RolestmtGroup) => "CREATE GROUP",
                    _ => "CREATE ROLE",
                };
                (command.into(), Rule::new(&[Dcl]))
            }
            "AlterRoleStmt" => ("ALTER ROLE".into(), Rule::new(&[Dcl])),
            "AlterRoleSetStmt" | "AlterDatabaseSetStmt" => {
                // The setting applies to later sessions: judge it as a SET.
                let mut rule = match b.get("setstmt") {
                    Some(Value::Object(set)) => set_rule(self, set).1,
                    _ => Rule::new(&[Utility, Admin]),
                };
                let command = if tag == "AlterRoleSetStmt" {
                    rule.classes.push(Dcl);
                    "ALTER ROLE"
                } else {
                    rule.classes.extend([Ddl, Admin]);
                    "ALTER DATABASE"
                };
                (command.into(), rule)
            }
            "DropRoleStmt" => ("DROP ROLE".into(), Rule::new(&[Dcl])),
            "DropOwnedStmt" => ("DROP OWNED".into(), Rule::new(&[Ddl, Dcl])),
            "ReassignOwnedStmt" => ("REASSIGN OWNED".into(), Rule::new(&[Dcl])),

            // ---- pieces of other statements, harmless by themselves
            "ReturnStmt" => ("RETURN".into(), Rule::new(&[])),
            "PlassignStmt" | "SetOperationStmt" | "RawStmt" => (tag.into(), Rule::new(&[])),

            // A statement type this classifier does not know: assume the worst.
            _ => (tag.into(), Rule::new(&SqlClass::ALL)),
        };
        self.add(mode, &rule.classes);
        self.fields(b, mode.inner(), rule.targets, rule.skip);
        command
    }

    fn select(&mut self, b: &Obj, query_level: bool) -> (String, Rule) {
        let mut rule = Rule::new(if query_level { &[Read] } else { &[] });
        let mut command = "SELECT";
        let strongest = match b.get("locking_clause") {
            Some(Value::Array(items)) if !items.is_empty() => items
                .iter()
                .filter_map(|i| tagged(i).map(|(_, body)| int_field(body, "strength")))
                .max()
                .or(Some(LockClauseStrength::LcsForupdate as i32)),
            _ => None,
        };
        if let Some(strength) = strongest {
            // Row locks block writers: treat as a write.
            rule.classes.push(Write);
            command = match LockClauseStrength::try_from(strength) {
                Ok(LockClauseStrength::LcsForkeyshare) => "SELECT FOR KEY SHARE",
                Ok(LockClauseStrength::LcsForshare) => "SELECT FOR SHARE",
                Ok(LockClauseStrength::LcsFornokeyupdate) => "SELECT FOR NO KEY UPDATE",
                _ => "SELECT FOR UPDATE",
            };
        }
        if !is_null(b, "into_clause") {
            // SELECT … INTO creates and fills a table.
            rule.classes.extend([Write, Ddl]);
            rule.targets = &["into_clause"];
            command = "SELECT INTO";
        }
        (command.into(), rule)
    }
}

/// `INSERT … ON CONFLICT DO UPDATE` whose rows come from an unbounded SELECT
/// and whose `DO UPDATE … WHERE` does not bound the target: it may update
/// every row of the target.
fn unbounded_upsert(b: &Obj) -> bool {
    let Some(Value::Object(conflict)) = b.get("on_conflict_clause") else {
        return false;
    };
    OnConflictAction::try_from(int_field(conflict, "action"))
        == Ok(OnConflictAction::OnconflictUpdate)
        && !select_bounded(b.get("select_stmt"))
        && !bounds(conflict.get("where_clause"), Target::of(b.get("relation")))
}

/// `MERGE … WHEN MATCHED THEN UPDATE/DELETE` where neither the join
/// condition nor the clause's own condition bounds the target, or `WHEN NOT
/// MATCHED BY SOURCE THEN UPDATE/DELETE` without a bounding condition.
fn unbounded_merge(b: &Obj) -> bool {
    let target = Target::of(b.get("relation"));
    let joined = bounds_write(b.get("join_condition"), target, b.get("source_relation"));
    let Some(Value::Array(clauses)) = b.get("merge_when_clauses") else {
        return false;
    };
    clauses.iter().any(|c| {
        let Some(("MergeWhenClause", w)) = tagged(c) else {
            return true;
        };
        let changes = matches!(
            CmdType::try_from(int_field(w, "command_type")),
            Ok(CmdType::CmdUpdate | CmdType::CmdDelete)
        );
        let guarded = bounds(w.get("condition"), target);
        changes
            && match MergeMatchKind::try_from(int_field(w, "match_kind")) {
                Ok(MergeMatchKind::MergeWhenMatched) => !joined && !guarded,
                Ok(MergeMatchKind::MergeWhenNotMatchedByTarget) => false,
                _ => !guarded,
            }
    })
}

/// Statements that change the session's settings or prepared statements
/// whatever their fields, or run code that may (DO, CALL, EXECUTE of a
/// statement prepared earlier).
fn changes_session_statement(tag: &str, b: &Obj) -> bool {
    match tag {
        "VariableSetStmt"
        | "DiscardStmt"
        | "PrepareStmt"
        | "DeallocateStmt"
        | "ExecuteStmt"
        | "DoStmt"
        | "CallStmt"
        | "LoadStmt"
        | "AlterSystemStmt"
        | "AlterRoleSetStmt"
        | "AlterDatabaseSetStmt" => true,
        // The end of a transaction reverts SET LOCAL, and ROLLBACK every SET
        // made in the transaction.
        "TransactionStmt" => matches!(
            TransactionStmtKind::try_from(int_field(b, "kind")),
            Ok(TransactionStmtKind::TransStmtCommit
                | TransactionStmtKind::TransStmtRollback
                | TransactionStmtKind::TransStmtRollbackTo
                | TransactionStmtKind::TransStmtPrepare)
                | Err(_)
        ),
        _ => false,
    }
}

fn set_rule(walker: &mut Walker, b: &Obj) -> (String, Rule) {
    let kind = VariableSetKind::try_from(int_field(b, "kind"));
    let name = str_field(b, "name").to_ascii_lowercase();
    let mut rule = Rule::new(&[Utility]);
    rule.classes.extend_from_slice(setting_classes(&name));
    if moves_statement_boundaries(&name, b, |v| walker.constant_text(v)) {
        rule.classes.push(Admin);
    }
    let command = match kind {
        Ok(VariableSetKind::VarResetAll) => {
            // RESET ALL may reset the role.
            rule.classes.push(Dcl);
            "RESET"
        }
        Ok(VariableSetKind::VarReset) => "RESET",
        _ => "SET",
    };
    (command.into(), rule)
}

/// The command and classes a statement of type `tag` gets with no fields at
/// all: shows which types reach the worst-case fallback.
#[cfg(test)]
pub(super) fn bare_statement(tag: &str) -> (String, std::collections::BTreeSet<SqlClass>) {
    let mut w = Walker {
        info: StatementInfo::default(),
        ctes: Vec::new(),
        text: "",
        constants: Vec::new(),
        read_values: false,
        error: None,
    };
    let command = w.statement(tag, &Obj::new(), Mode::Read, true);
    (command, w.info.classes)
}

/// Whether a SET changes how the server will split and read the statement
/// text of later messages away from how this classifier reads it (UTF-8,
/// `standard_conforming_strings = on`). With `client_encoding` set to SJIS,
/// BIG5, GBK, … a multibyte character can swallow the backslash of `\'` in
/// an `E''` string; with `standard_conforming_strings = off`, `'\''` stops
/// being a whole string. Either way one statement here is two on the server.
/// Setting them back to the default is harmless.
fn moves_statement_boundaries(
    name: &str,
    b: &Obj,
    mut constant_text: impl FnMut(&Value) -> Option<String>,
) -> bool {
    let safe: fn(&str) -> bool = match name {
        "standard_conforming_strings" => |v| {
            ["on", "true", "yes", "1"]
                .iter()
                .any(|ok| v.eq_ignore_ascii_case(ok))
        },
        "client_encoding" => |v| {
            let v: String = v
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect::<String>()
                .to_ascii_lowercase();
            v == "utf8" || v == "unicode"
        },
        _ => return false,
    };
    match VariableSetKind::try_from(int_field(b, "kind")) {
        Ok(
            VariableSetKind::VarSetDefault
            | VariableSetKind::VarReset
            | VariableSetKind::VarResetAll,
        ) => false,
        Ok(VariableSetKind::VarSetValue) => {
            let values: Vec<String> = match b.get("args") {
                Some(Value::Array(args)) => args.iter().filter_map(&mut constant_text).collect(),
                _ => Vec::new(),
            };
            !(values.len() == 1 && values.iter().all(|v| safe(v)))
        }
        _ => true,
    }
}

fn transaction_command(b: &Obj) -> &'static str {
    match TransactionStmtKind::try_from(int_field(b, "kind")) {
        Ok(TransactionStmtKind::TransStmtBegin) => "BEGIN",
        Ok(TransactionStmtKind::TransStmtStart) => "START TRANSACTION",
        Ok(TransactionStmtKind::TransStmtCommit) => "COMMIT",
        Ok(TransactionStmtKind::TransStmtRollback) => "ROLLBACK",
        Ok(TransactionStmtKind::TransStmtSavepoint) => "SAVEPOINT",
        Ok(TransactionStmtKind::TransStmtRelease) => "RELEASE",
        Ok(TransactionStmtKind::TransStmtRollbackTo) => "ROLLBACK TO SAVEPOINT",
        Ok(TransactionStmtKind::TransStmtPrepare) => "PREPARE TRANSACTION",
        Ok(TransactionStmtKind::TransStmtCommitPrepared) => "COMMIT PREPARED",
        Ok(TransactionStmtKind::TransStmtRollbackPrepared) => "ROLLBACK PREPARED",
        _ => "TRANSACTION",
    }
}

/// Whether EXPLAIN's options ask it to run the statement. Anything but an
/// explicit false/off/0 counts as yes, as does an option PostgreSQL would
/// reject (it is then refused by the server anyway).
fn explain_analyze(options: Option<&Value>) -> bool {
    let Some(Value::Array(items)) = options else {
        return false;
    };
    items.iter().any(|item| {
        let Some(("DefElem", def)) = tagged(item) else {
            return false;
        };
        if !str_field(def, "defname").eq_ignore_ascii_case("analyze") {
            return false;
        }
        match def.get("arg").and_then(tagged) {
            None => true,
            Some(("String", s)) => {
                let v = str_field(s, "sval");
                !(v.eq_ignore_ascii_case("false") || v.eq_ignore_ascii_case("off"))
            }
            Some(("Integer", i)) => int_field(i, "ival") != 0,
            Some(("Boolean", v)) => v.get("boolval") != Some(&Value::Bool(false)),
            Some(_) => true,
        }
    })
}

/// The text after `PREPARE name [(types)] AS`, found with PostgreSQL's own
/// scanner so that comments and quoting cannot move it.
fn prepare_body(text: &str) -> Option<String> {
    let scan = pg_query::scan(text).ok()?;
    let as_token = scan.tokens.iter().find(|t| t.token == Token::As as i32)?;
    let end = usize::try_from(as_token.end).ok()?;
    let body = text.get(end..)?.trim();
    (!body.is_empty()).then(|| body.to_owned())
}

/// ALTER TABLE subcommands that change who may see or do what.
fn alter_table_touches_privileges(b: &Obj) -> bool {
    let Some(Value::Array(cmds)) = b.get("cmds") else {
        return false;
    };
    cmds.iter().any(|c| {
        let Some(("AlterTableCmd", cmd)) = tagged(c) else {
            return false;
        };
        matches!(
            AlterTableType::try_from(int_field(cmd, "subtype")),
            Ok(AlterTableType::AtChangeOwner
                | AlterTableType::AtEnableRowSecurity
                | AlterTableType::AtDisableRowSecurity
                | AlterTableType::AtForceRowSecurity
                | AlterTableType::AtNoForceRowSecurity)
        )
    })
}

fn is_relation_type(objtype: i32) -> bool {
    matches!(
        ObjectType::try_from(objtype),
        Ok(ObjectType::ObjectTable
            | ObjectType::ObjectView
            | ObjectType::ObjectMatview
            | ObjectType::ObjectForeignTable
            | ObjectType::ObjectSequence
            | ObjectType::ObjectIndex)
    )
}

/// An object type's name in commands, and the classes acting on it adds
/// beyond Ddl.
fn object_type(objtype: i32) -> (&'static str, &'static [SqlClass]) {
    use ObjectType as O;
    let Ok(t) = O::try_from(objtype) else {
        return ("OBJECT", &SqlClass::ALL);
    };
    match t {
        O::ObjectAccessMethod => ("ACCESS METHOD", &[Admin]),
        O::ObjectAggregate => ("AGGREGATE", &[]),
        O::ObjectAmop | O::ObjectOperator => ("OPERATOR", &[]),
        O::ObjectAmproc | O::ObjectFunction => ("FUNCTION", &[]),
        O::ObjectAttribute | O::ObjectType => ("TYPE", &[]),
        O::ObjectCast => ("CAST", &[]),
        O::ObjectColumn | O::ObjectTabconstraint | O::ObjectTable => ("TABLE", &[]),
        O::ObjectCollation => ("COLLATION", &[]),
        O::ObjectConversion => ("CONVERSION", &[]),
        O::ObjectDatabase => ("DATABASE", &[Admin]),
        O::ObjectDefault => ("DEFAULT", &[]),
        O::ObjectDefacl => ("DEFAULT PRIVILEGES", &[Dcl]),
        O::ObjectDomain | O::ObjectDomconstraint => ("DOMAIN", &[]),
        O::ObjectEventTrigger => ("EVENT TRIGGER", &[Admin]),
        O::ObjectExtension => ("EXTENSION", &[Admin]),
        O::ObjectFdw => ("FOREIGN DATA WRAPPER", &[Admin]),
        O::ObjectForeignServer => ("SERVER", &[Admin]),
        O::ObjectForeignTable => ("FOREIGN TABLE", &[]),
        O::ObjectIndex => ("INDEX", &[]),
        O::ObjectLanguage => ("LANGUAGE", &[Admin]),
        O::ObjectLargeobject => ("LARGE OBJECT", &[Write]),
        O::ObjectMatview => ("MATERIALIZED VIEW", &[]),
        O::ObjectOpclass => ("OPERATOR CLASS", &[]),
        O::ObjectOpfamily => ("OPERATOR FAMILY", &[]),
        O::ObjectParameterAcl => ("PARAMETER", &[Dcl, Admin]),
        O::ObjectPolicy => ("POLICY", &[Dcl]),
        O::ObjectProcedure => ("PROCEDURE", &[]),
        O::ObjectPublication | O::ObjectPublicationNamespace | O::ObjectPublicationRel => {
            ("PUBLICATION", &[Admin])
        }
        O::ObjectRole => ("ROLE", &[Dcl]),
        O::ObjectRoutine => ("ROUTINE", &[]),
        O::ObjectRule => ("RULE", &[]),
        O::ObjectSchema => ("SCHEMA", &[]),
        O::ObjectSequence => ("SEQUENCE", &[]),
        O::ObjectSubscription => ("SUBSCRIPTION", &[Admin]),
        O::ObjectStatisticExt => ("STATISTICS", &[]),
        O::ObjectTablespace => ("TABLESPACE", &[Admin]),
        O::ObjectTransform => ("TRANSFORM", &[]),
        O::ObjectTrigger => ("TRIGGER", &[]),
        O::ObjectTsconfiguration => ("TEXT SEARCH CONFIGURATION", &[]),
        O::ObjectTsdictionary => ("TEXT SEARCH DICTIONARY", &[]),
        O::ObjectTsparser => ("TEXT SEARCH PARSER", &[]),
        O::ObjectTstemplate => ("TEXT SEARCH TEMPLATE", &[]),
        O::ObjectUserMapping => ("USER MAPPING", &[Dcl, Admin]),
        O::ObjectView => ("VIEW", &[]),
        O::Undefined => ("OBJECT", &SqlClass::ALL),
    }
}

// ---- reading the serialised tree

/// Unwraps node wrappers down to `(tag, body)`.
pub(super) fn tagged(v: &Value) -> Option<(&str, &Obj)> {
    let Value::Object(m) = v else {
        return None;
    };
    if m.len() != 1 {
        return None;
    }
    let (key, value) = m.iter().next()?;
    if key == "node" {
        return tagged(value);
    }
    match value {
        Value::Object(body) if key.starts_with(|c: char| c.is_ascii_uppercase()) => {
            Some((key.as_str(), body))
        }
        _ => None,
    }
}

fn is_statement(tag: &str) -> bool {
    tag.ends_with("Stmt")
}

pub(super) fn is_range_var(m: &Obj) -> bool {
    m.contains_key("relname") && m.contains_key("relpersistence")
}

pub(super) fn is_func_call(m: &Obj) -> bool {
    m.contains_key("funcname") && m.contains_key("agg_star")
}

pub(super) fn is_select(m: &Obj) -> bool {
    m.contains_key("target_list") && m.contains_key("locking_clause") && m.contains_key("larg")
}

pub(super) fn str_field<'a>(m: &'a Obj, key: &str) -> &'a str {
    m.get(key).and_then(Value::as_str).unwrap_or("")
}

pub(super) fn bool_field(m: &Obj, key: &str) -> bool {
    m.get(key).and_then(Value::as_bool).unwrap_or(false)
}

pub(super) fn int_field(m: &Obj, key: &str) -> i32 {
    m.get(key)
        .and_then(Value::as_i64)
        .and_then(|i| i32::try_from(i).ok())
        .unwrap_or(0)
}

pub(super) fn is_null(m: &Obj, key: &str) -> bool {
    matches!(m.get(key), None | Some(Value::Null))
}

/// What a CREATE FUNCTION or PROCEDURE says of its code.
pub(super) struct RoutineDefinition {
    /// Lowercase; empty when not given.
    pub language: String,
    /// `i`, `s` or `v`.
    pub volatility: &'static str,
    /// The `AS` source text.
    pub source: Option<String>,
}

pub(super) fn routine_definition(b: &Obj) -> RoutineDefinition {
    let mut def = RoutineDefinition {
        language: String::new(),
        volatility: "v",
        source: None,
    };
    for d in list_items(b.get("options")).filter_map(|o| match tagged(o) {
        Some(("DefElem", d)) => Some(d),
        _ => None,
    }) {
        match (str_field(d, "defname"), d.get("arg").and_then(tagged)) {
            ("language", Some((_, s))) => def.language = str_field(s, "sval").to_ascii_lowercase(),
            ("volatility", Some((_, s))) => {
                def.volatility = match str_field(s, "sval") {
                    "immutable" => "i",
                    "stable" => "s",
                    _ => "v",
                }
            }
            ("as", Some(("List", l))) => {
                def.source = string_items(l.get("items"))
                    .first()
                    .map(|s| (*s).to_owned())
            }
            ("as", Some(("String", s))) => def.source = Some(str_field(s, "sval").to_owned()),
            _ => {}
        }
    }
    def
}

/// Whether a CREATE FUNCTION defines a trigger or event trigger function.
pub(super) fn returns_trigger(b: &Obj) -> bool {
    // A TypeName message, not a node: untagged.
    let names = match b.get("return_type") {
        Some(Value::Object(t)) => string_items(t.get("names")),
        _ => Vec::new(),
    };
    matches!(
        names.as_slice(),
        [.., "trigger" | "event_trigger"] if names.len() == 1 || names[0] == "pg_catalog"
    )
}

/// Whether a statement of this type may define, replace, rename or drop a
/// view, rule or routine (see `StatementInfo::defines_code`). A rename or
/// a schema move counts whatever its object type says: `ALTER TABLE v
/// RENAME` renames a view as well.
fn defines_code(tag: &str, b: &Obj) -> bool {
    use ObjectType as O;
    // CASCADE drops the views and routines that depend on the object too.
    const CASCADE: i32 = 2;
    let cascades = |m: &Obj| int_field(m, "behavior") == CASCADE;
    let object = |key: &str| O::try_from(int_field(b, key));
    match tag {
        "ViewStmt"
        | "CreateFunctionStmt"
        | "AlterFunctionStmt"
        | "RuleStmt"
        | "AlterObjectSchemaStmt"
        | "DefineStmt"
        | "CreateRangeStmt"
        | "CreateExtensionStmt"
        | "AlterExtensionStmt"
        | "AlterExtensionContentsStmt"
        | "DoStmt"
        | "CreatePlangStmt"
        | "DropOwnedStmt"
        | "ReassignOwnedStmt" => true,
        // Constraints, triggers, policies and statistics are not relations.
        "RenameStmt" => !matches!(
            object("rename_type"),
            Ok(O::ObjectTabconstraint
                | O::ObjectDomconstraint
                | O::ObjectTrigger
                | O::ObjectPolicy
                | O::ObjectStatisticExt)
        ),
        // The owner decides whether an extension's routine is trusted.
        "AlterOwnerStmt" => matches!(
            object("object_type"),
            Ok(O::ObjectFunction
                | O::ObjectProcedure
                | O::ObjectRoutine
                | O::ObjectAggregate
                | O::ObjectView
                | O::ObjectMatview)
        ),
        "CreateTableAsStmt" => object("objtype") == Ok(O::ObjectMatview),
        "DropStmt" => {
            cascades(b)
                || !matches!(
                    object("remove_type"),
                    Ok(O::ObjectTable
                        | O::ObjectIndex
                        | O::ObjectSequence
                        | O::ObjectForeignTable
                        | O::ObjectTrigger
                        | O::ObjectPolicy
                        | O::ObjectDomain
                        | O::ObjectType
                        | O::ObjectStatisticExt)
                )
        }
        // A table that joins an inheritance tree is written, and its
        // triggers run, by writes of the parent, which the catalog connection
        // sees only once committed.
        "AlterTableStmt" => list_items(b.get("cmds")).any(|c| match tagged(c) {
            Some(("AlterTableCmd", cmd)) => {
                cascades(cmd)
                    || matches!(
                        AlterTableType::try_from(int_field(cmd, "subtype")),
                        Ok(AlterTableType::AtAddInherit | AlterTableType::AtAttachPartition)
                    )
            }
            _ => false,
        }),
        _ => false,
    }
}

/// Options of CREATE OPERATOR, AGGREGATE, TYPE, TEXT SEARCH PARSER and
/// TEMPLATE, ALTER OPERATOR and CREATE TYPE … AS RANGE that name a routine.
const ROUTINE_OPTIONS: &[&str] = &[
    "function",
    "procedure",
    "restrict",
    "join",
    "sfunc",
    "sfunc1",
    "finalfunc",
    "combinefunc",
    "serialfunc",
    "deserialfunc",
    "msfunc",
    "minvfunc",
    "mfinalfunc",
    "input",
    "output",
    "receive",
    "send",
    "typmod_in",
    "typmod_out",
    "analyze",
    "subscript",
    "start",
    "gettoken",
    "end",
    "headline",
    "lextypes",
    "init",
    "lexize",
    "subtype_diff",
    "canonical",
    "handler",
    "validator",
];

/// The routines a DDL statement attaches for the server to run without a
/// call in any later statement's text (a trigger's function, an operator's,
/// a cast's, an aggregate's or a type's support functions), as called
/// names: the catalog lookup then judges their bodies with the statement
/// that attaches them.
fn attached_routines(tag: &str, b: &Obj) -> Vec<String> {
    let qualified = |parts: Vec<&str>| (!parts.is_empty()).then(|| parts.join("."));
    let object = |v: Option<&Value>| match v {
        Some(Value::Object(o)) => qualified(string_items(o.get("objname"))),
        _ => None,
    };
    match tag {
        "CreateTrigStmt" | "CreateEventTrigStmt" => qualified(string_items(b.get("funcname")))
            .into_iter()
            .collect(),
        "CreateConversionStmt" => qualified(string_items(b.get("func_name")))
            .into_iter()
            .collect(),
        "CreateCastStmt" => object(b.get("func")).into_iter().collect(),
        "CreateTransformStmt" => [object(b.get("fromsql")), object(b.get("tosql"))]
            .into_iter()
            .flatten()
            .collect(),
        "CreateOpClassStmt" | "AlterOpFamilyStmt" => list_items(b.get("items"))
            .filter_map(|i| match tagged(i) {
                // 2: a support function (1 is an operator).
                Some(("CreateOpClassItem", item)) if int_field(item, "itemtype") == 2 => {
                    object(item.get("name"))
                }
                _ => None,
            })
            .collect(),
        "DefineStmt" => routine_options(b.get("definition")),
        "AlterOperatorStmt" => routine_options(b.get("options")),
        "CreateRangeStmt" => routine_options(b.get("params")),
        "CreatePlangStmt" => ["plhandler", "plinline", "plvalidator"]
            .into_iter()
            .filter_map(|k| qualified(string_items(b.get(k))))
            .collect(),
        "CreateFdwStmt" | "AlterFdwStmt" => routine_options(b.get("func_options")),
        _ => Vec::new(),
    }
}

/// The routines named by `ROUTINE_OPTIONS` among DefElems.
fn routine_options(v: Option<&Value>) -> Vec<String> {
    list_items(v)
        .filter_map(|i| match tagged(i) {
            Some(("DefElem", d)) if ROUTINE_OPTIONS.contains(&str_field(d, "defname")) => {
                let parts = match d.get("arg").and_then(tagged) {
                    Some(("TypeName", t)) => string_items(t.get("names")),
                    Some(("List", l)) => string_items(l.get("items")),
                    Some(("String", s)) => vec![str_field(s, "sval")],
                    _ => Vec::new(),
                };
                (!parts.is_empty()).then(|| parts.join("."))
            }
            _ => None,
        })
        .collect()
}

fn list_items(v: Option<&Value>) -> impl Iterator<Item = &Value> {
    match v {
        Some(Value::Array(items)) => items.iter(),
        _ => [].iter(),
    }
}

/// The strings of a list of `String` nodes (a qualified name).
pub(super) fn string_items(v: Option<&Value>) -> Vec<&str> {
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
