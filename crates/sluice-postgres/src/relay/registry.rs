//! The prepared statements and portals of one session, as the gateway
//! created them upstream.
//!
//! The gateway chooses the upstream name of every named statement itself
//! (`sluice_s1`, `sluice_s2`, …, never reused), and keeps the exact text it
//! forwarded under that name. Whatever a client does with names — reuse,
//! failed Parses, SQL-level `PREPARE` of the same name, pipelining — the
//! server holds under `sluice_sN` either that text or nothing, so the text a
//! portal runs is known exactly when it is bound and never re-derived later.
//! The unnamed statement keeps the unnamed upstream slot: the server drops
//! the old one before parsing a new one, so it is the last forwarded Parse or
//! nothing.

use std::collections::HashMap;
use std::sync::Arc;

/// Upstream statement names the gateway creates start with this.
pub(crate) const RESERVED_PREFIX: &str = "sluice_s";

/// A statement the gateway forwarded a Parse for.
#[derive(Debug, Clone)]
pub(crate) struct Statement {
    pub upstream: Arc<str>,
    pub text: Arc<str>,
    /// The client asked for its description (so its columns will be known).
    pub described: bool,
}

/// A portal the gateway forwarded a Bind for, with the text it runs.
#[derive(Debug, Clone)]
pub(crate) struct Portal {
    /// The client's name of the statement it was bound from.
    pub statement: String,
    pub text: Arc<str>,
    /// Its columns will be known before its rows arrive.
    pub described: bool,
    /// The context line naming its Bind's parameter values (a digest), when
    /// it has parameters: a retry grant is for these values only.
    pub parameters: Option<Arc<str>>,
}

/// Why a client message naming an object cannot be forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NameError {
    /// `42P05`: a named statement of that name exists.
    DuplicateStatement(String),
    /// `26000`: no statement of that name.
    UnknownStatement(String),
    /// `34000`: no portal of that name was bound through the gateway.
    UnknownPortal(String),
}

impl NameError {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            NameError::DuplicateStatement(_) => "42P05",
            NameError::UnknownStatement(_) => "26000",
            NameError::UnknownPortal(_) => "34000",
        }
    }

    pub fn message(&self) -> String {
        match self {
            NameError::DuplicateStatement(n) => format!("prepared statement \"{n}\" already exists"),
            NameError::UnknownStatement(n) => format!("prepared statement \"{n}\" does not exist"),
            NameError::UnknownPortal(n) => format!(
                "sluice: portal \"{n}\" was not bound on this connection through the gateway, so what it runs cannot be judged"
            ),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Registry {
    statements: HashMap<String, Statement>,
    portals: HashMap<String, Portal>,
    next: u64,
}

impl Registry {
    /// A client Parse of `text` as `name`: the upstream name to create.
    pub fn parse(&mut self, name: &str, text: &str) -> Result<Arc<str>, NameError> {
        let upstream: Arc<str> = if name.is_empty() {
            Arc::from("")
        } else {
            if self.statements.contains_key(name) {
                return Err(NameError::DuplicateStatement(name.to_string()));
            }
            self.next += 1;
            Arc::from(format!("{RESERVED_PREFIX}{}", self.next))
        };
        self.statements.insert(
            name.to_string(),
            Statement {
                upstream: upstream.clone(),
                text: Arc::from(text),
                described: false,
            },
        );
        Ok(upstream)
    }

    pub fn statement(&self, name: &str) -> Option<&Statement> {
        self.statements.get(name)
    }

    /// A client Describe of a statement: its upstream name.
    pub fn describe_statement(&mut self, name: &str) -> Result<Arc<str>, NameError> {
        let st = self
            .statements
            .get_mut(name)
            .ok_or_else(|| NameError::UnknownStatement(name.to_string()))?;
        st.described = true;
        Ok(st.upstream.clone())
    }

    /// A client Close of a statement: its upstream name, if it exists
    /// (closing a missing statement is not an error in PostgreSQL).
    pub fn close_statement(&mut self, name: &str) -> Option<Arc<str>> {
        self.statements.remove(name).map(|s| s.upstream)
    }

    /// A client Bind of `portal` to `statement`, whose text is `text` and
    /// upstream name `upstream` (from this registry or elsewhere, e.g. a SQL
    /// `PREPARE`). The portal replaces any earlier one of that name.
    pub fn bind(
        &mut self,
        portal: &str,
        statement: &str,
        text: Arc<str>,
        described: bool,
        parameters: Option<Arc<str>>,
    ) {
        self.portals.insert(
            portal.to_string(),
            Portal {
                statement: statement.to_string(),
                text,
                described,
                parameters,
            },
        );
    }

    /// A client Describe of a portal; false when it was never bound.
    pub fn describe_portal(&mut self, portal: &str) -> bool {
        match self.portals.get_mut(portal) {
            Some(p) => {
                p.described = true;
                true
            }
            None => false,
        }
    }

    pub fn portal(&self, portal: &str) -> Result<&Portal, NameError> {
        self.portals
            .get(portal)
            .ok_or_else(|| NameError::UnknownPortal(portal.to_string()))
    }

    pub fn close_portal(&mut self, portal: &str) {
        self.portals.remove(portal);
    }

    /// The server reported that the Parse creating `upstream` did not happen
    /// (it failed, or was skipped after an earlier error).
    pub fn parse_failed(&mut self, upstream: &str) {
        self.statements.retain(|_, s| &*s.upstream != upstream);
    }

    /// A simple Query replaces (and then drops) the unnamed statement and the
    /// unnamed portal on the server: neither exists afterwards.
    pub fn simple_query(&mut self) {
        self.statements.remove("");
        self.portals.remove("");
    }

    /// `DEALLOCATE ALL` / `DISCARD ALL` removed every prepared statement.
    pub fn clear_statements(&mut self) {
        self.statements.clear();
    }

    /// `DISCARD ALL` and `CLOSE ALL` closed every portal.
    pub fn clear_portals(&mut self) {
        self.portals.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_statements_get_fresh_upstream_names() {
        let mut r = Registry::default();
        let a = r.parse("s", "select 1").unwrap();
        assert_eq!(&*a, "sluice_s1");
        assert_eq!(
            r.parse("s", "delete from t"),
            Err(NameError::DuplicateStatement("s".into()))
        );
        // The duplicate did not replace the judged text.
        assert_eq!(&*r.statement("s").unwrap().text, "select 1");
        r.close_statement("s");
        let b = r.parse("s", "select 2").unwrap();
        assert_eq!(&*b, "sluice_s2", "an upstream name is never reused");
    }

    #[test]
    fn unnamed_statement_is_replaced_by_the_next_parse() {
        let mut r = Registry::default();
        assert_eq!(&*r.parse("", "delete from t").unwrap(), "");
        assert_eq!(&*r.parse("", "select 1").unwrap(), "");
        assert_eq!(&*r.statement("").unwrap().text, "select 1");
    }

    #[test]
    fn a_portal_keeps_the_text_it_was_bound_to() {
        let mut r = Registry::default();
        r.parse("", "delete from orders").unwrap();
        let st = r.statement("").unwrap().clone();
        r.bind("", "", st.text, st.described, None);
        // A later Parse of the unnamed statement does not change the portal.
        r.parse("", "select 1").unwrap();
        assert_eq!(&*r.portal("").unwrap().text, "delete from orders");
    }

    #[test]
    fn a_simple_query_drops_the_unnamed_statement_and_portal() {
        let mut r = Registry::default();
        r.parse("", "select 1").unwrap();
        r.parse("s", "select 2").unwrap();
        r.bind("", "", Arc::from("select 1"), false, None);
        r.bind("p", "s", Arc::from("select 2"), false, None);
        r.simple_query();
        assert!(r.statement("").is_none());
        assert!(r.portal("").is_err());
        assert!(r.statement("s").is_some());
        assert!(r.portal("p").is_ok());
    }

    #[test]
    fn failed_parse_forgets_the_statement() {
        let mut r = Registry::default();
        let up = r.parse("s", "select * from missing").unwrap();
        r.parse_failed(&up);
        assert!(r.statement("s").is_none());
        assert!(r.parse("s", "select 1").is_ok());
    }

    #[test]
    fn unknown_names_are_errors_with_server_codes() {
        let mut r = Registry::default();
        assert_eq!(r.describe_statement("x").unwrap_err().sqlstate(), "26000");
        assert_eq!(r.portal("p").unwrap_err().sqlstate(), "34000");
        assert!(!r.describe_portal("p"));
        assert!(r.close_statement("x").is_none());
    }

    #[test]
    fn describe_marks_statement_and_portal() {
        let mut r = Registry::default();
        r.parse("s", "select 1").unwrap();
        assert_eq!(&*r.describe_statement("s").unwrap(), "sluice_s1");
        assert!(r.statement("s").unwrap().described);
        r.bind("p", "s", Arc::from("select 1"), false, None);
        assert!(!r.portal("p").unwrap().described);
        assert!(r.describe_portal("p"));
        assert!(r.portal("p").unwrap().described);
        r.clear_statements();
        r.clear_portals();
        assert!(r.statement("s").is_none());
        assert!(r.portal("p").is_err());
    }
}
