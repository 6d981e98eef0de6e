//! Statements after which nothing is forwarded until the server answered.
//!
//! The gateway judges each statement on its own parse. A statement that can
//! change how *later* text is lexed or resolved (`standard_conforming_strings`,
//! `client_encoding`, `search_path`, the role), or which prepared statements
//! exist, must not share the wire with what follows it: a pipelined statement
//! judged under the old settings could run under the new ones. Such a
//! statement is a barrier: the request half forwards it, asks the server to
//! answer (Flush), waits for the answer (the response half checks the new
//! settings and ends the session on a hazardous one, see `hazard`), applies
//! what it changed, and only then goes on. Ordinary statements keep pipelining.

use crate::sql::{Classification, SqlClass};

/// Commands that change session state later statements depend on.
const SESSION_COMMANDS: &[&str] = &[
    "SET",
    "RESET",
    "DISCARD",
    "PREPARE",
    "DEALLOCATE",
    "DO",
    "CALL",
    "LOAD",
    "EXECUTE",
];

/// Built-in functions that change settings or session state.
const SESSION_FUNCTIONS: &[&str] = &["set_config", "pg_catalog.set_config"];

/// Whether a classified statement text must be answered before anything
/// after it is forwarded.
pub(crate) fn is_barrier(classified: &Classification) -> bool {
    // The classifier's own judgement (user functions included), and the
    // relay's wider net on top.
    classified.changes_session()
        || classified.statements.iter().any(|st| {
            SESSION_COMMANDS.contains(&st.command.as_str())
                || st.command.starts_with("EXECUTE")
                || st.classes.contains(&SqlClass::Admin)
                || st.classes.contains(&SqlClass::Dcl)
                || st.classes.contains(&SqlClass::Ddl)
                || st.prepares.is_some()
                || st.deallocates.is_some()
                || st
                    .functions
                    .iter()
                    .any(|f| SESSION_FUNCTIONS.contains(&f.to_ascii_lowercase().as_str()))
                || st.writes.iter().chain(st.reads.iter()).any(|t| {
                    let t = t.to_ascii_lowercase();
                    t == "pg_settings" || t == "pg_catalog.pg_settings"
                })
        })
}

/// Progress of the response half: the sequence number of the last forwarded
/// command whose answer is complete, and whether it succeeded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    pub done: u64,
    pub ok: bool,
    /// ReadyForQuery messages seen: the server reports changed settings
    /// (ParameterStatus) only before one, so a barrier answered inside an
    /// extended-protocol batch is settled only by the next.
    pub ready: u64,
    /// `ready` when the command `done` completed.
    pub done_ready: u64,
    /// `ready` at the last ReadyForQuery that reported no open transaction.
    pub last_idle: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn barrier(sql: &str) -> bool {
        is_barrier(&crate::sql::classify(sql).unwrap())
    }

    #[test]
    fn settings_and_prepared_statements_are_barriers() {
        for sql in [
            "set standard_conforming_strings = off",
            "reset all",
            "select set_config('standard_conforming_strings', 'off', false)",
            "update pg_settings set setting = 'off' where name = 'standard_conforming_strings'",
            "discard all",
            "prepare s as select 1",
            "deallocate all",
            "execute s",
            "do $$ begin perform 1; end $$",
            "select my_function(1)",
            "select * from customers where public.f(id)",
            "set role postgres",
            "select 1; set search_path = evil",
        ] {
            assert!(barrier(sql), "{sql}");
        }
    }

    #[test]
    fn ordinary_statements_pipeline() {
        for sql in [
            "select 1",
            "select abalance from pgbench_accounts where aid = $1",
            "update pgbench_accounts set abalance = abalance + $1 where aid = $2",
            "insert into t values (1)",
            "select count(*), lower(name) from customers c join orders o on o.customer_id = c.id group by 2",
            "begin",
        ] {
            assert!(!barrier(sql), "{sql}");
        }
    }
}
