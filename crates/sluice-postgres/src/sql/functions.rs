//! Built-in functions and settings whose effect is not visible in the shape
//! of the statement that uses them.

use super::SqlClass::{self, Admin, Dcl, Ddl, Read, Utility, Write};

/// Functions with side effects, by bare name (matched case-insensitively,
/// whatever schema they are qualified with). Each entry lists the classes a
/// call adds to its statement, wherever the call is nested.
///
/// - Remote or background SQL (`dblink*`, `pg_background_launch`) runs
///   arbitrary statements outside this transaction and escapes read-only
///   transactions: Write + Admin.
/// - Server files and directories: Admin (+ Write when they create or change
///   something).
/// - Large objects that are created or changed: Write.
/// - Sequences: `nextval`/`setval` change state even in a SELECT: Write.
/// - `set_config` is `SET` in function form and can set `role`: Utility +
///   Dcl + Admin.
/// - Backends, WAL, replication, configuration, statistics: Admin.
/// - Functions that run SQL passed as a string hide the tables they read:
///   Read + Admin.
pub const SIDE_EFFECT_FUNCTIONS: &[(&str, &[SqlClass])] = &[
    // Remote SQL.
    ("dblink", &[Write, Admin]),
    ("dblink_exec", &[Write, Admin]),
    ("dblink_send_query", &[Write, Admin]),
    ("dblink_open", &[Write, Admin]),
    ("dblink_fetch", &[Write, Admin]),
    ("dblink_connect", &[Write, Admin]),
    ("dblink_connect_u", &[Write, Admin]),
    // pg_background runs a statement in a background worker.
    ("pg_background_launch", &[Write, Admin]),
    // Server files.
    ("pg_read_file", &[Read, Admin]),
    ("pg_read_binary_file", &[Read, Admin]),
    ("pg_stat_file", &[Read, Admin]),
    ("pg_ls_dir", &[Read, Admin]),
    ("pg_ls_logdir", &[Read, Admin]),
    ("pg_ls_waldir", &[Read, Admin]),
    ("pg_ls_tmpdir", &[Read, Admin]),
    ("pg_ls_archive_statusdir", &[Read, Admin]),
    ("pg_ls_logicalsnapdir", &[Read, Admin]),
    ("pg_ls_logicalmapdir", &[Read, Admin]),
    ("pg_ls_replslotdir", &[Read, Admin]),
    ("pg_ls_summariesdir", &[Read, Admin]),
    ("pg_file_write", &[Write, Admin]),
    ("pg_file_rename", &[Write, Admin]),
    ("pg_file_unlink", &[Write, Admin]),
    ("pg_file_sync", &[Admin]),
    ("pg_logdir_ls", &[Read, Admin]),
    // Large objects: server files in and out, and changes.
    ("lo_import", &[Write, Admin]),
    ("lo_export", &[Read, Write, Admin]),
    ("lo_unlink", &[Write]),
    ("lo_create", &[Write]),
    ("lo_creat", &[Write]),
    ("lo_from_bytea", &[Write]),
    ("lo_put", &[Write]),
    ("lowrite", &[Write]),
    ("lo_truncate", &[Write]),
    ("lo_truncate64", &[Write]),
    // Sequences.
    ("nextval", &[Write]),
    ("setval", &[Write]),
    // Settings and notifications.
    ("set_config", &[Utility, Dcl, Admin]),
    ("pg_notify", &[Utility]),
    // Backends, configuration, WAL, backups.
    ("pg_terminate_backend", &[Admin]),
    ("pg_cancel_backend", &[Admin]),
    ("pg_reload_conf", &[Admin]),
    ("pg_rotate_logfile", &[Admin]),
    ("pg_log_backend_memory_contexts", &[Admin]),
    ("pg_switch_wal", &[Admin]),
    ("pg_switch_xlog", &[Admin]),
    ("pg_promote", &[Admin]),
    ("pg_create_restore_point", &[Admin]),
    ("pg_start_backup", &[Admin]),
    ("pg_stop_backup", &[Admin]),
    ("pg_backup_start", &[Admin]),
    ("pg_backup_stop", &[Admin]),
    ("pg_wal_replay_pause", &[Admin]),
    ("pg_wal_replay_resume", &[Admin]),
    ("pg_log_standby_snapshot", &[Admin]),
    ("pg_import_system_collations", &[Ddl, Admin]),
    // Replication: slots and origins; reading a slot returns every change.
    ("pg_create_physical_replication_slot", &[Admin]),
    ("pg_create_logical_replication_slot", &[Admin]),
    ("pg_copy_physical_replication_slot", &[Admin]),
    ("pg_copy_logical_replication_slot", &[Admin]),
    ("pg_drop_replication_slot", &[Admin]),
    ("pg_replication_slot_advance", &[Admin]),
    ("pg_sync_replication_slots", &[Admin]),
    ("pg_logical_slot_get_changes", &[Read, Write, Admin]),
    ("pg_logical_slot_get_binary_changes", &[Read, Write, Admin]),
    ("pg_logical_slot_peek_changes", &[Read, Admin]),
    ("pg_logical_slot_peek_binary_changes", &[Read, Admin]),
    ("pg_logical_emit_message", &[Write, Admin]),
    ("pg_replication_origin_create", &[Admin]),
    ("pg_replication_origin_drop", &[Admin]),
    ("pg_replication_origin_advance", &[Admin]),
    ("pg_replication_origin_session_setup", &[Admin]),
    // Statistics resets.
    ("pg_stat_reset", &[Admin]),
    ("pg_stat_reset_shared", &[Admin]),
    ("pg_stat_reset_single_table_counters", &[Admin]),
    ("pg_stat_reset_single_function_counters", &[Admin]),
    ("pg_stat_reset_slru", &[Admin]),
    ("pg_stat_reset_replication_slot", &[Admin]),
    ("pg_stat_reset_subscription_stats", &[Admin]),
    ("pg_stat_statements_reset", &[Admin]),
    // SQL passed as a string: the tables it reads are invisible here.
    ("query_to_xml", &[Read, Admin]),
    ("query_to_xmlschema", &[Read, Admin]),
    ("query_to_xml_and_xmlschema", &[Read, Admin]),
    ("cursor_to_xml", &[Read, Admin]),
    ("table_to_xml", &[Read, Admin]),
    ("table_to_xmlschema", &[Read, Admin]),
    ("table_to_xml_and_xmlschema", &[Read, Admin]),
    ("schema_to_xml", &[Read, Admin]),
    ("schema_to_xmlschema", &[Read, Admin]),
    ("schema_to_xml_and_xmlschema", &[Read, Admin]),
    ("database_to_xml", &[Read, Admin]),
    ("database_to_xmlschema", &[Read, Admin]),
    ("database_to_xml_and_xmlschema", &[Read, Admin]),
    ("ts_stat", &[Read, Admin]),
    ("ts_rewrite", &[Read, Admin]),
];

/// Run-time settings whose change matters beyond the session's comfort, by
/// name (matched case-insensitively, as PostgreSQL does). `SET`/`RESET` of
/// any setting is Utility; these add classes.
pub const SENSITIVE_SETTINGS: &[(&str, &[SqlClass])] = &[
    // Changes who the session acts as.
    ("role", &[Dcl]),
    ("session_authorization", &[Dcl]),
    // Disables triggers (audit triggers included) and rules.
    ("session_replication_role", &[Admin]),
    // Leaves read-only or changes isolation: transaction control.
    ("transaction_read_only", &[SqlClass::Tx]),
    ("default_transaction_read_only", &[SqlClass::Tx]),
    ("transaction_isolation", &[SqlClass::Tx]),
    ("default_transaction_isolation", &[SqlClass::Tx]),
    ("transaction_deferrable", &[SqlClass::Tx]),
    ("default_transaction_deferrable", &[SqlClass::Tx]),
    // `SET TRANSACTION …`, `SET SESSION CHARACTERISTICS AS TRANSACTION …`.
    ("transaction", &[SqlClass::Tx]),
    ("session characteristics", &[SqlClass::Tx]),
    ("transaction snapshot", &[SqlClass::Tx]),
];

/// Classes a call to `bare_name` adds, if it is a known side-effect function.
pub(super) fn function_classes(bare_name: &str) -> &'static [SqlClass] {
    lookup(SIDE_EFFECT_FUNCTIONS, bare_name)
}

/// Classes setting `name` adds beyond Utility.
pub(super) fn setting_classes(name: &str) -> &'static [SqlClass] {
    lookup(SENSITIVE_SETTINGS, name)
}

fn lookup(
    table: &'static [(&'static str, &'static [SqlClass])],
    name: &str,
) -> &'static [SqlClass] {
    table
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, c)| *c)
        .unwrap_or(&[])
}

/// Names of PostgreSQL's built-in functions (`pg_catalog`), one a line,
/// sorted bytewise; generated from PostgreSQL 15's `pg_proc` (the query is
/// in the file's header). A name missing here (a newer built-in, an
/// extension's function, a user function) is treated as user code.
const BUILTIN_FUNCTIONS: &str = include_str!("builtin_functions.txt");

/// Whether a call of `parts` (the name as written, maybe schema-qualified)
/// is known to reach a PostgreSQL built-in: an unqualified or
/// `pg_catalog`-qualified name of a `pg_catalog` function. Names are
/// compared exactly, as the parser folded them (`"LOWER"` is not `lower`).
///
/// A user function of the same name in another schema with a better-matching
/// signature can still win overload resolution: the catalog lookup reads
/// those (`resolve::catalog_context`).
pub(super) fn is_builtin(parts: &[&str]) -> bool {
    let name = match parts {
        [name] | ["pg_catalog", name] => *name,
        _ => return false,
    };
    builtin_names().binary_search(&name).is_ok()
}

fn builtin_names() -> &'static [&'static str] {
    static NAMES: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
        let mut names: Vec<&str> = BUILTIN_FUNCTIONS
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        names.sort_unstable();
        names
    });
    &NAMES
}

/// Built-ins that change session settings (`set_config`; `pg_reload_conf`
/// after ALTER SYSTEM) or run SQL given as text, which may call them.
pub const SESSION_FUNCTIONS: &[&str] = &[
    "set_config",
    "pg_reload_conf",
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "ts_stat",
    "ts_rewrite",
];

/// Whether a call to `bare_name` (any schema) can change session settings.
pub(super) fn changes_session_function(bare_name: &str) -> bool {
    SESSION_FUNCTIONS
        .iter()
        .any(|n| n.eq_ignore_ascii_case(bare_name))
}
