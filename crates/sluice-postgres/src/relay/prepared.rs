//! SQL-level prepared statements (`PREPARE name AS …`, `EXECUTE name`,
//! `DEALLOCATE`), tracked so that `EXECUTE name` is judged by what it runs.
//!
//! A statement that prepares or deallocates is a barrier (see `barrier`):
//! its effects are applied only once the server has answered it without an
//! error, so a failed `PREPARE s` never makes the gateway believe `s` is
//! something the server does not hold.

use crate::sql::Classification;
use std::collections::HashMap;

#[derive(Default)]
pub(crate) struct SqlPrepared {
    definitions: HashMap<String, String>,
    /// `DECLARE name CURSOR FOR …` texts by cursor name: a FETCH's result
    /// columns derive from the cursor's query (masking lineage).
    cursors: HashMap<String, String>,
}

/// What a forwarded statement does to the session's prepared statements.
#[derive(Debug, Default, Clone)]
pub(crate) struct PreparedEffects {
    prepared: Vec<(String, String)>,
    deallocated: Vec<Option<String>>,
    /// `DISCARD ALL`: every statement, portal and setting goes.
    pub discard_all: bool,
    /// A lone `DECLARE name CURSOR FOR …`: (name, its text).
    declared: Option<(String, String)>,
}

impl PreparedEffects {
    pub fn is_empty(&self) -> bool {
        self.prepared.is_empty()
            && self.deallocated.is_empty()
            && !self.discard_all
            && self.declared.is_none()
    }

    /// Every prepared statement of the session goes, protocol-level ones included.
    pub fn clears_all_statements(&self) -> bool {
        self.discard_all || self.deallocated.iter().any(Option::is_none)
    }
}

impl SqlPrepared {
    /// The definitions `EXECUTE`s in `classified` refer to (as
    /// `Command::context`), and what the statement does to the set.
    pub fn context_for(
        &self,
        classified: &Classification,
        sql: &str,
    ) -> (Vec<String>, PreparedEffects) {
        let mut effects = PreparedEffects::default();
        if let [st] = classified.statements.as_slice() {
            if st.command == "DECLARE CURSOR" {
                if let Some((true, name)) = cursor_of(sql) {
                    effects.declared = Some((name, sql.to_string()));
                }
            }
        }
        let mut context = Vec::new();
        // Each definition once, however often the string executes it.
        let mut named: std::collections::HashSet<(&str, &str)> = Default::default();
        let mut local: HashMap<&str, &str> = HashMap::new();
        for st in &classified.statements {
            if let Some((name, inner)) = &st.prepares {
                local.insert(name, inner);
                effects.prepared.push((name.clone(), inner.clone()));
            }
            if let Some(name) = &st.executes {
                let def = local
                    .get(name.as_str())
                    .copied()
                    .or_else(|| self.definitions.get(name).map(String::as_str));
                if let Some(def) = def.filter(|def| named.insert((name.as_str(), *def))) {
                    context.push(crate::policy::prepared_context(name, def));
                }
            }
            if let Some(d) = &st.deallocates {
                effects.deallocated.push(d.clone());
            }
            if st.command == "DISCARD" && st.classes.contains(&crate::sql::SqlClass::Dcl) {
                effects.discard_all = true;
            }
        }
        (context, effects)
    }

    /// The definition of a SQL-level prepared statement (a protocol Bind may
    /// name one).
    pub fn definition(&self, name: &str) -> Option<&str> {
        self.definitions.get(name).map(String::as_str)
    }

    /// The `DECLARE` text of the cursor a lone `FETCH` reads, if known.
    pub fn fetched_cursor(&self, classified: &Classification, sql: &str) -> Option<&str> {
        let [st] = classified.statements.as_slice() else {
            return None;
        };
        if st.command != "FETCH" {
            return None;
        }
        match cursor_of(sql) {
            Some((false, name)) => self.cursors.get(&name).map(String::as_str),
            _ => None,
        }
    }

    /// Applies the effects of a statement the server completed.
    pub fn apply(&mut self, effects: &PreparedEffects) {
        if effects.discard_all {
            self.definitions.clear();
            self.cursors.clear();
        }
        if let Some((name, text)) = &effects.declared {
            self.cursors.insert(name.clone(), text.clone());
        }
        for d in &effects.deallocated {
            match d {
                Some(name) => {
                    self.definitions.remove(name);
                }
                None => self.definitions.clear(),
            }
        }
        for (name, def) in &effects.prepared {
            self.definitions.insert(name.clone(), def.clone());
        }
    }
}

impl PreparedEffects {
    /// A protocol Close of a SQL-level prepared statement.
    pub fn deallocate(name: &str) -> Self {
        PreparedEffects {
            deallocated: vec![Some(name.to_string())],
            ..PreparedEffects::default()
        }
    }
}

/// The cursor a lone `DECLARE` defines (`true`) or a lone `FETCH` reads.
fn cursor_of(sql: &str) -> Option<(bool, String)> {
    use pg_query::NodeEnum;
    let parsed = pg_query::parse(sql, 0).ok()?;
    let [stmt] = parsed.protobuf.stmts.as_slice() else {
        return None;
    };
    match stmt.stmt.as_ref()?.node.as_ref()? {
        NodeEnum::DeclareCursorStmt(d) => Some((true, d.portalname.clone())),
        NodeEnum::FetchStmt(f) if !f.ismove => Some((false, f.portalname.clone())),
        _ => None,
    }
}
