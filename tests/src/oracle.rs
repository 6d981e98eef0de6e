//! The oracle that does not trust the gateway: what the PostgreSQL server says it executed
//! (its own statement log, see [`sluice_sandbox::TempPostgres::executed_statements`]) against
//! what Sluice says it judged (its write-ahead journal, `state_dir/journal.log`).
//!
//! The invariant, for every statement the server executed on a gateway session:
//! - Sluice judged a command with exactly that text and forwarded it (verdict `allow`), and
//!   that decision was written no later than the server ran it (the journal is write-ahead);
//! - for an SQL-level `EXECUTE`, the text of the `PREPARE` (or protocol Parse) that created
//!   the statement it runs was judged and forwarded too;
//! - no text Sluice refused (and never forwarded) appears.
//!
//! Texts are compared, never statement names: the gateway may choose its own upstream names.
//! Sessions of the PostgreSQL superuser (the harness's own setup and checks) and sessions a
//! test opens directly on the server with `application_name` [`DIRECT_APPLICATION`] are not
//! gateway sessions (a hostile client could name itself so: the suite's clients never do); the gateway's own catalog lookups (on a connection of its own) are recognised by
//! their exact text, digits aside ([`GATEWAY_QUERIES`]).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::path::Path;

use sluice_sandbox::{LoggedStatement, StatementKind};

/// The gateway's own queries on its catalog connection (`crates/sluice-postgres/src/catalog.rs`),
/// as (prefix, suffix): what lies between may hold only digits, commas and spaces. A new
/// gateway query must be added here, or the oracle reports it as unjudged.
pub const GATEWAY_QUERIES: &[(&str, &str)] = &[
    (
        "SELECT c.oid, n.nspname, c.relname, a.attnum, a.attname \
         FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid \
         WHERE c.oid IN (",
        ") AND a.attnum > 0 AND NOT a.attisdropped",
    ),
    // The catalog connection's timeouts, set once it connects.
    ("SET lock_timeout = 2000; SET statement_timeout = ", ""),
];

/// The gateway's lookups of views and functions by name (`sql/resolve.rs`), as (prefix,
/// suffix): what lies between is a list of hex-encoded names only.
pub const GATEWAY_NAME_QUERIES: &[(&str, &str)] = &[
    (
        "SELECT n.nspname, c.relname, pg_catalog.pg_get_viewdef(c.oid) \
         FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('v', 'm') AND c.relname = ANY (ARRAY[",
        "]::text[])",
    ),
    (
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
         WHERE p.proname = ANY (ARRAY[",
        "]::text[])",
    ),
    (
        "\
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
         WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm') AND c.relname = ANY (ARRAY[",
        "]::text[])",
    ),
];

/// Whether `middle` is a list of `pg_catalog.convert_from(pg_catalog.decode('HEX', 'hex'), 'UTF8')`.
fn hex_name_list(middle: &str) -> bool {
    let mut rest = middle;
    loop {
        let Some(r) = rest.strip_prefix("pg_catalog.convert_from(pg_catalog.decode('") else {
            return false;
        };
        let hex_len = r.chars().take_while(|c| c.is_ascii_hexdigit()).count();
        let Some(r) = r[hex_len..].strip_prefix("', 'hex'), 'UTF8')") else {
            return false;
        };
        if r.is_empty() {
            return true;
        }
        match r.strip_prefix(", ") {
            Some(r) => rest = r,
            None => return false,
        }
    }
}

/// The `application_name` of a test's own direct connection to the server (not through the
/// gateway), which the oracle leaves out.
pub const DIRECT_APPLICATION: &str = "sluice-e2e-direct";

/// Whether the oracle holds `s` to the invariant: not the harness's (superuser or
/// [`DIRECT_APPLICATION`]) and not one of the gateway's own catalog lookups.
fn on_gateway_session(s: &LoggedStatement, superuser: &str) -> bool {
    s.user != superuser && s.application_name != DIRECT_APPLICATION && !is_gateway_query(&s.text)
}

/// Whether `text` is one of the gateway's own catalog lookups.
pub fn is_gateway_query(text: &str) -> bool {
    let by_name = GATEWAY_NAME_QUERIES.iter().any(|(prefix, suffix)| {
        text.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(suffix))
            .is_some_and(hex_name_list)
    });
    by_name
        || GATEWAY_QUERIES.iter().any(|(prefix, suffix)| {
            text.strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(suffix))
                .is_some_and(|middle| {
                    !middle.is_empty()
                        && middle
                            .chars()
                            .all(|c| c.is_ascii_digit() || c == ',' || c == ' ')
                })
        })
}

/// One `command_decided` record of the journal.
#[derive(Debug, Clone)]
pub struct Judged {
    /// The gateway session.
    pub session: String,
    /// When the decision was written (ms since the epoch).
    pub at_ms: u64,
    /// The command's `kind` object (`{"type": "sql_simple"}`, …).
    pub kind: serde_json::Value,
    /// The text judged.
    pub text: String,
    /// `allow`, `review` or `deny`.
    pub action: String,
    /// The deciding rule.
    pub rule: Option<String>,
}

impl Judged {
    /// Whether the command was forwarded (the final verdict is `allow`).
    pub fn forwarded(&self) -> bool {
        self.action == "allow"
    }
}

/// A `command_decided` record's body as the oracle reads it.
pub fn judged(session: &str, at_ms: u64, body: &str) -> Option<Judged> {
    let body: serde_json::Value = serde_json::from_str(body).ok()?;
    let command = &body["command"];
    Some(Judged {
        session: session.to_string(),
        at_ms,
        kind: command["kind"].clone(),
        text: command["text"].as_str()?.to_string(),
        action: body["verdict"]["action"].as_str()?.to_string(),
        rule: body["verdict"]["rule"].as_str().map(str::to_string),
    })
}

/// Every `command_decided` record in `state_dir/journal.log` (complete lines only).
pub fn journal_decisions(state_dir: &Path) -> Vec<Judged> {
    let text = fs::read(state_dir.join("journal.log"))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete
        .lines()
        .filter_map(|line| {
            // session \t seq \t at_ms \t prev \t hash \t kind \t body
            let mut f = line.splitn(7, '\t');
            let session = f.next()?.to_string();
            let _seq = f.next()?;
            let at_ms = f.next()?.parse().ok()?;
            let (_prev, _hash) = (f.next()?, f.next()?);
            if f.next()? != "command_decided" {
                return None;
            }
            judged(&session, at_ms, f.next()?)
        })
        .collect()
}

/// One breach of the invariant.
#[derive(Debug, Clone)]
pub struct Violation {
    /// What is wrong.
    pub what: &'static str,
    /// The server's record.
    pub statement: LoggedStatement,
    /// The text at fault (the statement's, or its `PREPARE`'s).
    pub text: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = match &self.statement.kind {
            StatementKind::Simple => "simple query".to_string(),
            StatementKind::Execute { name, fetch } => {
                format!("execute{} {name}", if *fetch { " fetch from" } else { "" })
            }
            StatementKind::FastPath { oid } => format!("fast-path call oid {oid}"),
        };
        write!(
            f,
            "{}: {:?} (server session {}, user {}, {how}, at {} ms)",
            self.what,
            self.text,
            self.statement.session_id,
            self.statement.user,
            self.statement.at_ms
        )
    }
}

/// Timestamps are milliseconds from the same clock; allow this much rounding.
const CLOCK_SLACK_MS: u64 = 2;

/// Checks the invariant; `superuser` names the role whose sessions are the harness's own.
pub fn check(executed: &[LoggedStatement], judged: &[Judged], superuser: &str) -> Vec<Violation> {
    // Earliest forward decision per text; refused texts.
    let mut forwarded: HashMap<&str, u64> = HashMap::new();
    let mut forwarded_calls: HashMap<u64, u64> = HashMap::new();
    let mut refused: HashSet<&str> = HashSet::new();
    for j in judged {
        if j.forwarded() {
            let at = forwarded.entry(j.text.as_str()).or_insert(j.at_ms);
            *at = (*at).min(j.at_ms);
            if j.kind["type"] == "function_call" {
                if let Some(oid) = j.kind["function_oid"].as_u64() {
                    let at = forwarded_calls.entry(oid).or_insert(j.at_ms);
                    *at = (*at).min(j.at_ms);
                }
            }
        } else {
            refused.insert(j.text.as_str());
        }
    }
    let mut out = Vec::new();
    for s in executed {
        if !on_gateway_session(s, superuser) {
            continue;
        }
        let decided_at = match &s.kind {
            StatementKind::FastPath { oid } => forwarded_calls.get(&u64::from(*oid)),
            _ => forwarded.get(s.text.as_str()),
        };
        let violation = |what, text: &str| Violation {
            what,
            statement: s.clone(),
            text: text.to_string(),
        };
        match decided_at {
            None if refused.contains(s.text.as_str()) => {
                out.push(violation("a statement Sluice refused ran", &s.text))
            }
            None => out.push(violation(
                "the server ran a statement Sluice never judged and forwarded",
                &s.text,
            )),
            Some(at) if *at > s.at_ms + CLOCK_SLACK_MS => out.push(violation(
                "the server ran a statement before Sluice recorded its decision",
                &s.text,
            )),
            Some(_) => {}
        }
        if let Some(prepared) = &s.prepared {
            if !forwarded.contains_key(prepared.as_str()) {
                out.push(violation(
                    "an EXECUTE ran a prepared statement whose text Sluice never judged and forwarded",
                    prepared,
                ));
            }
        }
    }
    out
}

/// What the oracle saw, for messages.
#[derive(Debug, Default)]
pub struct OracleReport {
    /// Statements the server executed on gateway sessions.
    pub executed: Vec<LoggedStatement>,
    /// The gateway's decisions.
    pub judged: Vec<Judged>,
    /// Breaches.
    pub violations: Vec<Violation>,
}

impl OracleReport {
    /// Builds the report from the server's log and the journal.
    pub fn new(executed: Vec<LoggedStatement>, judged: Vec<Judged>, superuser: &str) -> Self {
        let violations = check(&executed, &judged, superuser);
        let executed = executed
            .into_iter()
            .filter(|s| on_gateway_session(s, superuser))
            .collect();
        OracleReport {
            executed,
            judged,
            violations,
        }
    }

    /// Whether the server's log shows `needle` (a substring, case-insensitive) in any
    /// statement it executed on a gateway session.
    pub fn server_ran(&self, needle: &str) -> bool {
        let needle = needle.to_lowercase();
        self.executed.iter().any(|s| {
            s.text.to_lowercase().contains(&needle)
                || s.prepared
                    .as_ref()
                    .is_some_and(|p| p.to_lowercase().contains(&needle))
        })
    }

    /// Panics, listing every violation and both sides, unless there is none.
    #[track_caller]
    pub fn assert_clean(&self) {
        if self.violations.is_empty() {
            return;
        }
        let list: Vec<String> = self.violations.iter().map(|v| format!("- {v}")).collect();
        let executed: Vec<String> = self
            .executed
            .iter()
            .map(|s| format!("  {} {:?}", s.session_id, s.text))
            .collect();
        let judged: Vec<String> = self
            .judged
            .iter()
            .map(|j| format!("  {} {} {:?}", j.session, j.action, j.text))
            .collect();
        panic!(
            "oracle: the server's log and Sluice's journal disagree ({} violation(s)):\n{}\n\
             --- executed by the server on gateway sessions ---\n{}\n\
             --- judged by Sluice ---\n{}",
            self.violations.len(),
            list.join("\n"),
            executed.join("\n"),
            judged.join("\n"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logged(user: &str, text: &str, at_ms: u64, prepared: Option<&str>) -> LoggedStatement {
        LoggedStatement {
            at_ms,
            user: user.into(),
            database: "app".into(),
            application_name: String::new(),
            session_id: "s".into(),
            kind: StatementKind::Simple,
            text: text.into(),
            prepared: prepared.map(str::to_string),
        }
    }

    fn judged(text: &str, action: &str, at_ms: u64) -> Judged {
        Judged {
            session: "g".into(),
            at_ms,
            kind: serde_json::json!({"type": "sql_simple"}),
            text: text.into(),
            action: action.into(),
            rule: None,
        }
    }

    #[test]
    fn invariant() {
        let catalog = format!(
            "{}16384, 16390{}",
            GATEWAY_QUERIES[0].0, GATEWAY_QUERIES[0].1
        );
        let exec = [
            logged("app", "select 1", 10, None),
            logged("postgres", "create table t()", 10, None),
            logged("app", &catalog, 10, None),
        ];
        let j = [judged("select 1", "allow", 9)];
        assert!(check(&exec, &j, "postgres").is_empty());

        // Never judged; refused; judged after it ran; PREPARE never judged.
        let exec = [
            logged("app", "delete from orders", 10, None),
            logged("app", "truncate orders", 10, None),
            logged("app", "select 2", 10, None),
            logged("app", "execute s", 10, Some("delete from orders")),
        ];
        let j = [
            judged("truncate orders", "deny", 5),
            judged("select 2", "allow", 50),
            judged("execute s", "allow", 1),
        ];
        let v = check(&exec, &j, "postgres");
        let what: Vec<_> = v.iter().map(|v| (v.what, v.text.as_str())).collect();
        assert_eq!(v.len(), 4, "{what:#?}");
        assert!(v[0].what.contains("never judged"));
        assert!(v[1].what.contains("refused"));
        assert!(v[2].what.contains("before"));
        assert_eq!(v[3].text, "delete from orders");
        // A catalog-shaped text with anything but numbers inside is not the gateway's.
        assert!(!is_gateway_query(&format!(
            "{}1) OR (true{}",
            GATEWAY_QUERIES[0].0, GATEWAY_QUERIES[0].1
        )));
    }
}
