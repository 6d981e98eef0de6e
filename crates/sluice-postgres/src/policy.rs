//! The SQL match keys this crate contributes to the core rules engine:
//!
//! ```toml
//! match = { sql = ["write", "ddl"], tables = ["public.users", "*.secrets"],
//!           functions = ["pg_read_*", "dblink*"], no_where = true }
//! ```
//!
//! All keys of one rule must hold for the *same* statement. A message with
//! several statements is judged statement by statement (each gets the rules
//! that match it, else the connection's default) and takes the strictest
//! verdict, so one denied statement refuses the whole message and an allow
//! rule for one statement never carries another.
//! Statements are classified with PostgreSQL's own parser (see `sql`), once
//! per distinct text (cached) and once per command (scratch).

use crate::sql::resolve::{fold, is_catalog_entry};
use crate::sql::{Classification, ClassifierCache, SqlClass, StatementInfo};
use sluice_core::glob::Glob;
use sluice_core::pipeline::policy::{string_list, CommandMatcher, MatchKey, Scratch};
use sluice_core::toml;
use sluice_core::{Action, Command, CommandKind};
use std::collections::BTreeSet;
use std::sync::Arc;

/// Distinct statement texts whose classification is kept.
const CACHE_CAPACITY: usize = 4096;

/// The process-wide classification cache (policy and relay share it).
pub(crate) fn shared_classifier() -> &'static Arc<ClassifierCache> {
    static CACHE: std::sync::LazyLock<Arc<ClassifierCache>> =
        std::sync::LazyLock::new(|| Arc::new(ClassifierCache::new(CACHE_CAPACITY)));
    &CACHE
}

/// Registers `sql`, `tables`, `functions` and `no_where`.
pub fn sql_match_key() -> Arc<dyn MatchKey> {
    Arc::new(SqlMatchKey {
        cache: shared_classifier().clone(),
    })
}

struct SqlMatchKey {
    cache: Arc<ClassifierCache>,
}

impl MatchKey for SqlMatchKey {
    fn keys(&self) -> &'static [&'static str] {
        &["sql", "tables", "functions", "no_where"]
    }

    fn compile(&self, values: &toml::Table) -> Result<Box<dyn CommandMatcher>, String> {
        self.compile_for(values, Action::Deny)
    }

    fn compile_for(
        &self,
        values: &toml::Table,
        action: Action,
    ) -> Result<Box<dyn CommandMatcher>, String> {
        let strings = |key: &str| -> Result<Option<Vec<String>>, String> {
            values.get(key).map(|v| string_list(key, v)).transpose()
        };
        let classes = strings("sql")?
            .map(|names| {
                names
                    .iter()
                    .map(|n| {
                        SqlClass::parse(n).ok_or_else(|| {
                            let known: Vec<_> = SqlClass::ALL.iter().map(|c| c.name()).collect();
                            format!("sql: unknown class {n:?} (known: {})", known.join(", "))
                        })
                    })
                    .collect::<Result<BTreeSet<_>, _>>()
            })
            .transpose()?;
        let tables = strings("tables")?.map(|v| v.iter().map(|p| TableGlob::new(p)).collect());
        let functions = strings("functions")?.map(|v| v.iter().map(|p| Glob::new(p)).collect());
        let no_where = match values.get("no_where") {
            None => None,
            Some(toml::Value::Boolean(b)) => Some(*b),
            Some(_) => return Err("no_where: expected true or false".into()),
        };
        Ok(Box::new(SqlMatcher {
            cache: self.cache.clone(),
            classes,
            tables,
            functions,
            no_where,
            within: action == Action::Allow,
        }))
    }
}

struct SqlMatcher {
    cache: Arc<ClassifierCache>,
    classes: Option<BTreeSet<SqlClass>>,
    tables: Option<Vec<TableGlob>>,
    functions: Option<Vec<Glob>>,
    no_where: Option<bool>,
    /// For allow rules: a statement matches only when everything it does is
    /// within the lists (all its classes, every table and function it
    /// touches), so an allowed read never carries a write along.
    within: bool,
}

/// A table pattern split once into its schema and name parts.
struct TableGlob {
    schema: Option<Glob>,
    name: Glob,
}

impl TableGlob {
    fn new(pattern: &str) -> Self {
        match pattern.rsplit_once('.') {
            Some((schema, name)) => TableGlob {
                schema: Some(Glob::new(schema)),
                name: Glob::new(name),
            },
            None => TableGlob {
                schema: None,
                name: Glob::new(pattern),
            },
        }
    }

    /// `users` matches the table in any schema; `s.users` matches `s.users`,
    /// and an unqualified `users` (its schema depends on search_path, which a
    /// session can change, so it is not assumed to be `public`).
    fn matches(&self, table: &str) -> bool {
        let (t_schema, t_name) = match table.rsplit_once('.') {
            Some((s, n)) => (Some(s), n),
            None => (None, table),
        };
        self.name.matches(t_name)
            && match (&self.schema, t_schema) {
                (Some(p), Some(s)) => p.matches(s),
                _ => true,
            }
    }
}

/// One command's statements, classified once for all rules.
struct Classified(Result<Statements, String>);

/// Statements as classified (shared with the cache), or with EXECUTEs resolved.
enum Statements {
    Cached(Arc<Classification>),
    Resolved(Vec<StatementInfo>),
}

impl Statements {
    fn as_slice(&self) -> &[StatementInfo] {
        match self {
            Statements::Cached(c) => &c.statements,
            Statements::Resolved(v) => v,
        }
    }
}

impl SqlMatcher {
    fn statements(&self, command: &Command) -> Result<Statements, String> {
        let text = match &command.kind {
            CommandKind::SqlSimple | CommandKind::SqlExecute { .. } => &command.text,
            // A fast-path call runs a function by OID with no SQL to read:
            // judged as the worst a function can do.
            CommandKind::FunctionCall { function_oid } => {
                return Ok(Statements::Resolved(vec![StatementInfo {
                    command: "FUNCTION CALL".into(),
                    classes: [SqlClass::Write, SqlClass::Admin].into_iter().collect(),
                    functions: [format!("oid:{function_oid}")].into_iter().collect(),
                    changes_session: true,
                    ..StatementInfo::default()
                }]))
            }
            _ => return Ok(Statements::Resolved(Vec::new())),
        };
        let classified = self.cache.classify(text).map_err(|e| e.to_string())?;
        let catalog = command.context.iter().any(|c| is_catalog_entry(c));
        if !catalog && classified.statements.iter().all(|st| st.executes.is_none()) {
            return Ok(Statements::Cached(classified));
        }
        let mut statements = resolve(&classified, &command.context, &self.cache)?;
        if catalog {
            // Views and user functions are judged on what they do.
            for st in &mut statements {
                fold(st, &command.context, &self.cache)?;
            }
        }
        Ok(Statements::Resolved(statements))
    }

    fn statement_matches(&self, st: &StatementInfo) -> bool {
        if let Some(classes) = &self.classes {
            let hit = if self.within {
                !st.classes.is_empty() && st.classes.is_subset(classes)
            } else {
                !st.classes.is_disjoint(classes)
            };
            if !hit {
                return false;
            }
        }
        if let Some(globs) = &self.tables {
            let table_hit = |t: &String| globs.iter().any(|g| g.matches(t));
            let mut names = st.reads.iter().chain(st.writes.iter());
            let hit = if self.within {
                names.clone().next().is_some() && names.all(table_hit)
            } else {
                names.any(table_hit)
            };
            if !hit {
                return false;
            }
        }
        if let Some(globs) = &self.functions {
            let function_hit = |f: &String| globs.iter().any(|g| name_matches(g, f));
            let hit = if self.within {
                !st.functions.is_empty() && st.functions.iter().all(function_hit)
            } else {
                st.functions.iter().any(function_hit)
            };
            if !hit {
                return false;
            }
        }
        if let Some(want) = self.no_where {
            if st.no_where != want {
                return false;
            }
        }
        true
    }
}

/// Resolves `EXECUTE name` statements with what `PREPARE name` defined (the
/// relay passes those definitions as the command's context).
///
/// The statement that carries the EXECUTE keeps its own classes, tables and
/// functions and gains the prepared statement's: `CREATE TABLE t AS EXECUTE
/// s` is DDL and a write whatever `s` is, `EXPLAIN ANALYZE EXECUTE s` runs
/// `s`. Replacing the outer statement by the inner one would let a `no-ddl`
/// rule pass `prepare s as select 1; create table pwned as execute s`.
fn resolve(
    classified: &Classification,
    context: &[String],
    cache: &ClassifierCache,
) -> Result<Vec<StatementInfo>, String> {
    let mut out = Vec::new();
    for st in &classified.statements {
        match &st.executes {
            None => out.push(st.clone()),
            Some(name) => {
                let definition = context
                    .iter()
                    .filter(|c| !is_catalog_entry(c))
                    .find_map(|c| c.strip_prefix(&format!("{name}\u{0}")))
                    .ok_or_else(|| {
                        // Fail closed: we cannot judge what we did not see prepared.
                        format!("EXECUTE {name}: no PREPARE of that name was seen on this session")
                    })?;
                let inner = cache.classify(definition).map_err(|e| e.to_string())?;
                out.push(carrying(st, name, &inner.statements));
            }
        }
    }
    Ok(out)
}

/// `outer` (an EXECUTE, or a statement wrapping one) with everything the
/// prepared statements `inner` do added to it.
fn carrying(outer: &StatementInfo, name: &str, inner: &[StatementInfo]) -> StatementInfo {
    let mut st = outer.clone();
    let inner_commands: Vec<&str> = inner.iter().map(|i| i.command.as_str()).collect();
    st.command = if outer.command == "EXECUTE" {
        format!("EXECUTE {name} ({})", inner_commands.join("; "))
    } else {
        format!(
            "{} EXECUTE {name} ({})",
            outer.command,
            inner_commands.join("; ")
        )
    };
    for i in inner {
        st.classes.extend(i.classes.iter().copied());
        st.reads.extend(i.reads.iter().cloned());
        st.writes.extend(i.writes.iter().cloned());
        st.functions.extend(i.functions.iter().cloned());
        st.no_where |= i.no_where;
        st.changes_session |= i.changes_session;
    }
    st
}

/// Encodes a prepared statement's definition for `Command::context`.
pub fn prepared_context(name: &str, sql: &str) -> String {
    format!("{name}\u{0}{sql}")
}

impl CommandMatcher for SqlMatcher {
    fn matches(&self, command: &Command, scratch: &mut Scratch) -> Result<bool, String> {
        let classified = scratch.get_or_insert_with(|| Classified(self.statements(command)));
        let statements = classified.0.as_ref().map_err(|e| e.clone())?;
        Ok(statements
            .as_slice()
            .iter()
            .any(|st| self.statement_matches(st)))
    }

    /// Each statement of a multi-statement message is judged on its own, so
    /// an allow rule for reads does not carry `select 1; drop table t`
    /// through a connection whose default is deny.
    fn part_matches(
        &self,
        command: &Command,
        scratch: &mut Scratch,
    ) -> Result<Option<Vec<bool>>, String> {
        if !matches!(
            command.kind,
            CommandKind::SqlSimple
                | CommandKind::SqlExecute { .. }
                | CommandKind::FunctionCall { .. }
        ) {
            return Ok(None);
        }
        let classified = scratch.get_or_insert_with(|| Classified(self.statements(command)));
        let statements = classified.0.as_ref().map_err(|e| e.clone())?;
        Ok(Some(
            statements
                .as_slice()
                .iter()
                .map(|st| self.statement_matches(st))
                .collect(),
        ))
    }
}

/// Function patterns match the bare name or the schema-qualified one.
fn name_matches(glob: &Glob, name: &str) -> bool {
    glob.matches(name)
        || name
            .rsplit_once('.')
            .is_some_and(|(_, bare)| glob.matches(bare))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(sql: &str, prepared: &[(&str, &str)]) -> Vec<StatementInfo> {
        let cache = ClassifierCache::new(16);
        let context: Vec<String> = prepared
            .iter()
            .map(|(n, s)| prepared_context(n, s))
            .collect();
        let classified = cache.classify(sql).unwrap();
        resolve(&classified, &context, &cache).unwrap()
    }

    #[test]
    fn a_statement_wrapping_execute_keeps_its_own_classes() {
        // `prepare s as select 1; create table pwned as execute s` under no-ddl.
        let st = resolved("create table pwned as execute s", &[("s", "select 1")]);
        assert_eq!(st.len(), 1);
        assert!(st[0].classes.contains(&SqlClass::Ddl), "{st:?}");
        assert!(st[0].classes.contains(&SqlClass::Write));
        assert!(st[0].classes.contains(&SqlClass::Read));
        assert!(st[0].writes.contains("pwned"));

        let st = resolved(
            "explain analyze execute d",
            &[("d", "delete from orders where true")],
        );
        assert!(st[0].classes.contains(&SqlClass::Write), "{st:?}");
        assert!(st[0].writes.contains("orders"));
        assert!(st[0].no_where);

        let st = resolved(
            "execute q; select 1",
            &[("q", "select * from customers where id = $1")],
        );
        assert_eq!(st.len(), 2);
        assert!(st[0].reads.contains("customers"));
        assert_eq!(st[0].classes, [SqlClass::Read].into_iter().collect());
        assert!(!st[0].no_where);

        // EXECUTE's own arguments stay judged too.
        let st = resolved("execute q(pg_read_file('x'))", &[("q", "select $1")]);
        assert!(st[0].classes.contains(&SqlClass::Admin), "{st:?}");
    }

    #[test]
    fn rules_follow_catalog_context() {
        let rule: toml::Table = toml::from_str(r#"sql = ["write"]"#).unwrap();
        let matcher = sql_match_key().compile(&rule).unwrap();
        let command = |text: &str, context: Vec<String>| Command {
            kind: CommandKind::SqlSimple,
            text: text.into(),
            context,
        };
        let purge = crate::sql::resolve::function_context(
            "public",
            "purge",
            "sql",
            "v",
            "delete from orders",
        );
        let view = crate::sql::resolve::view_context("public", "v", "select * from orders");
        let hit = |c: &Command| matcher.matches(c, &mut Scratch::default()).unwrap();
        assert!(!hit(&command("select purge()", vec![])));
        assert!(hit(&command("select purge()", vec![purge.clone()])));
        assert!(!hit(&command("select * from v", vec![view.clone()])));
        // With a prepared statement too.
        let both = vec![prepared_context("s", "select purge()"), purge, view];
        assert!(hit(&command("execute s", both.clone())));
        assert!(!hit(&command("select count(*) from v group by 1", both)));
    }

    #[test]
    fn table_patterns_do_not_assume_the_schema() {
        let m = |p: &str, t: &str| TableGlob::new(p).matches(t);
        assert!(m("users", "users"));
        assert!(m("users", "audit.users"));
        assert!(m("public.users", "users"));
        assert!(m("public.users", "public.users"));
        assert!(!m("public.users", "audit.users"));
        assert!(m("*.secrets", "vault.secrets"));
        assert!(!m("orders", "users"));
    }

    #[test]
    fn function_patterns_match_qualified_names() {
        assert!(name_matches(
            &Glob::new("pg_read_*"),
            "pg_catalog.pg_read_file"
        ));
        assert!(name_matches(
            &Glob::new("pg_catalog.set_config"),
            "pg_catalog.set_config"
        ));
        assert!(!name_matches(&Glob::new("dblink*"), "lower"));
    }
}
