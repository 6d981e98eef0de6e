//! Inline masking through the gateway with real clients: column rules follow
//! the source column through aliases, detectors catch values in computed
//! columns and in echoed error messages, masked values stay valid for their
//! types, COPY cannot leak what a column rule hides, and the audit trail
//! holds only what the client saw.

// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_e2e::*;

const MASKING: &str = r#"
[masking]
detectors = ["email", "credit_card", "us_ssn"]
style = "redact"
exempt_groups = ["dba"]

[masking.styles]
email = "partial"

[[masking.columns]]
name = "national-ids"
columns = ["customers.national_id"]
style = "null"
"#;

fn env() -> Env {
    Env::builder().extra_toml(MASKING).start()
}

fn raw(env: &Env, sql: &str) -> String {
    env.direct_sql("app", sql)
}

/// Customer 1's national ID reversed: a form of it no detector knows.
fn reversed_national_id(env: &Env) -> String {
    raw(env, "select national_id from customers where id = 1")
        .trim()
        .chars()
        .rev()
        .collect()
}

/// Sends `attack` and checks that it was refused with a message holding one of `why`, and
/// that no value carrying `reversed` came back.
fn assert_refused(conn: &mut sluice_e2e::raw::RawConn, attack: &str, reversed: &str, why: &[&str]) {
    let answer = conn.query(attack);
    let received = values(&answer);
    assert!(
        !received.iter().any(|v| v.contains(reversed)),
        "{attack}: the masked ID came back reversed: {received:?}"
    );
    let errors = sluice_e2e::raw::errors(&answer);
    assert!(
        errors
            .iter()
            .any(|e| why.iter().any(|w| e.message().contains(w))),
        "{attack}: not refused: {errors:?} {received:?}"
    );
}

/// Every value of every row the client received.
fn values(answer: &[sluice_e2e::raw::Msg]) -> Vec<String> {
    sluice_e2e::raw::rows(answer)
        .into_iter()
        .flatten()
        .flatten()
        .collect()
}

#[test]
fn rows_are_masked_by_column_rules_and_detectors() {
    let env = env();
    let url = env.agent_url();
    let ssn = raw(&env, "select national_id from customers where id = 1");
    let card = raw(&env, "select card_number from customers where id = 1");
    let email = raw(&env, "select email from customers where id = 1");

    let out = ok(&env.psql(
        &url,
        &[
            "-F",
            "|",
            "-c",
            "select id, name, email, card_number, national_id from customers order by id limit 3",
        ],
    ));
    let first: Vec<&str> = out.lines().next().unwrap().split('|').collect();
    assert_eq!(first[0], "1");
    assert!(first[1].contains("Alice"), "names pass: {out}");
    let domain = email.trim().split('@').nth(1).unwrap();
    assert!(
        first[2].ends_with(&format!("@{domain}"))
            && !first[2].contains(email.trim().split('@').next().unwrap()),
        "email partial: {out}"
    );
    assert_eq!(first[3], "[credit_card]", "{out}");
    assert_eq!(first[4], "", "national_id is NULL: {out}");
    assert!(
        !out.contains(card.trim()) && !out.contains(ssn.trim()),
        "{out}"
    );

    // An alias does not hide the source column; a value computed from a
    // ruled column is masked by its rule (column lineage); other computed
    // values meet the detectors.
    let out = ok(&env.psql(&url, &["-At", "-c", "select national_id as x, lower(national_id) as y, card_number || '' as z from customers where id = 1"]));
    assert!(
        !out.contains(ssn.trim()) && !out.contains(card.trim()),
        "{out}"
    );
    assert_eq!(out.trim(), "||[credit_card]", "{out}");

    // A value echoed by an error message is masked too: the message of a
    // statement that reads a ruled column is withheld (the SQLSTATE stays).
    let out = env.psql(
        &url,
        &[
            "-v",
            "VERBOSITY=verbose",
            "-c",
            "select national_id::int from customers where id = 1",
        ],
    );
    let se = failed(&out);
    assert!(
        se.contains("22P02") && se.contains("withheld") && !se.contains(ssn.trim()),
        "{se}"
    );
    let out = env.psql(
        &url,
        &["-c", "select card_number::int from customers where id = 1"],
    );
    let se = failed(&out);
    assert!(
        se.contains("[credit_card]") && !se.contains(card.trim()),
        "detectors mask other echoed values: {se}"
    );

    // Masked values stay valid for the type: a card number stored in a bigint becomes NULL.
    let out = ok(&env.psql(
        &url,
        &[
            "-c",
            "select replace(card_number, ' ', '')::bigint as n from customers where id = 1",
        ],
    ));
    assert_eq!(out.trim(), "", "{out}");
}

#[test]
fn binary_results_and_prepared_statements_are_masked() {
    let env = env();
    let ssn = raw(&env, "select national_id from customers where id = 1");
    let script = r#"
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as c:
    for binary in (False, True):
        cur = c.cursor(binary=binary)
        for _ in range(3):
            row = cur.execute("select id, email, national_id, card_number from customers where id = %s", (1,), prepare=True).fetchone()
            assert row[0] == 1, row
            assert row[1].startswith("*") and "@" in row[1], row
            assert row[2] is None, row
            assert row[3] == "[credit_card]", row
print("OK")
"#;
    let mut py = std::process::Command::new("python3");
    py.args(["-c", script, &env.agent_url()]);
    let out = run_with_timeout(&mut py, None, std::time::Duration::from_secs(60));
    assert!(
        out.status.success() && stdout(&out).contains("OK"),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(!stdout(&out).contains(ssn.trim()));
}

#[test]
fn copy_cannot_leak_what_a_column_rule_hides() {
    let env = env();
    let ssn = raw(&env, "select national_id from customers where id = 1");
    let out = env.psql(&env.agent_url(), &["-c", "\\copy customers to stdout"]);
    assert!(!stdout(&out).contains(ssn.trim()));
    // Refused before it runs (the statement carries a masked column out of
    // a query result); a COPY the gateway only notices at CopyOutResponse is
    // withheld there.
    let err = failed(&out);
    assert!(
        err.contains("COPY would carry values of the masked column")
            || err.contains("COPY TO STDOUT cannot be masked"),
        "{err}"
    );
    // The session stays usable.
    let url = env.agent_url();
    assert_eq!(
        ok(&env.psql(&url, &["-c", "select count(*) from orders"])).trim(),
        "100"
    );
}

#[test]
fn the_audit_trail_holds_what_the_client_saw_and_counts_it() {
    let env = env();
    let email = raw(&env, "select email from customers where id = 1");
    ok(&env.psql(
        &env.agent_url(),
        &[
            "-c",
            "select email, national_id from customers order by id limit 5",
        ],
    ));
    let sessions = env.wait_sessions_ended(1);
    let replay = env.replay(sessions[0]["id"].as_str().unwrap());
    assert!(
        replay.contains("masked: email=5, national-ids=5"),
        "{replay}"
    );
    assert!(!replay.contains(email.trim()), "{replay}");
    let journal = std::fs::read_to_string(env.db_path().with_file_name("journal.log")).unwrap();
    assert!(
        !journal.contains(email.trim()),
        "the journal holds no unmasked value"
    );
}

/// One seeded value per detector type, in plain, JSON and array columns,
/// reached through a view, aliases, `lower`, `concat` and `jsonb` functions.
#[test]
fn seeded_values_of_every_detector_never_reach_the_client() {
    let env = Env::builder()
        .extra_toml(
            r#"
[masking]
detectors = ["default"]
"#,
        )
        .start();
    // Test values shaped like real secrets (not real credentials).
    let secrets = [
        ("email", "grace.hopper@navy.example.org"),
        ("credit_card", "5555 5555 5555 4444"),
        ("us_ssn", "078-05-1120"),
        ("phone", "+44 20 7946 0958"),
        ("iban", "GB82 WEST 1234 5698 7654 32"),
        ("aws_access_key", "AKIAIOSFODNN7EXAMPLE"),
        ("github_token", "ghp_0123456789abcdefghijklmnopqrstuvwxyZ"),
        ("slack_token", "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"),
        ("jwt", "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
        ("url_password", "postgres://app:S3cr3t-Pa55@db.internal:5432/app"),
    ];
    let mut sql = String::from(
        "create table vault (id int, note text, doc jsonb, tags text[]);\ngrant select on vault to app;\n",
    );
    for (i, (_, v)) in secrets.iter().enumerate() {
        sql.push_str(&format!(
            "insert into vault values ({i}, 'see: {v} (kept)', jsonb_build_object('k', '{v}', 'n', {i}), array['x', '{v}']);\n"
        ));
    }
    sql.push_str("create view vault_view as select id, note as remark from vault;\ngrant select on vault_view to app;\n");
    env.direct_sql("app", &sql);
    let url = env.agent_url();
    for query in [
        "select * from vault",
        "select remark from vault_view",
        "select lower(note) as a, concat('x', note, 'y') as b from vault",
        "select doc::text, doc->>'k', tags::text from vault",
        "select jsonb_agg(doc) from vault",
    ] {
        let out = ok(&env.psql(&url, &["-c", query]));
        for (name, v) in &secrets {
            // `url_password` masks the password only.
            let needle = if *name == "url_password" {
                "S3cr3t-Pa55"
            } else {
                v
            };
            assert!(!out.contains(needle), "{name} leaked by {query:?}:\n{out}");
            // Where lower case loses nothing, `lower()` must not get a value past either.
            if ["email", "iban", "aws_access_key"].contains(name) {
                assert!(
                    !out.to_lowercase().contains(&needle.to_lowercase()),
                    "{name} leaked (lower case) by {query:?}:\n{out}"
                );
            }
        }
        assert!(
            out.contains("(kept)") || !query.contains("note"),
            "non-sensitive text survives: {out}"
        );
    }
    // Binary results from psycopg.
    let script = r#"
import sys, psycopg
secrets = sys.argv[2:]
with psycopg.connect(sys.argv[1], autocommit=True) as c:
    rows = c.cursor(binary=True).execute("select note, doc, tags from vault").fetchall()
    blob = repr(rows)
    for s in secrets:
        assert s not in blob, (s, blob)
    assert "(kept)" in blob
print("OK")
"#;
    let mut py = std::process::Command::new("python3");
    py.args(["-c", script, &url]);
    for (name, v) in &secrets {
        py.arg(if *name == "url_password" {
            "S3cr3t-Pa55"
        } else {
            v
        });
    }
    let out = run_with_timeout(&mut py, None, std::time::Duration::from_secs(60));
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
}

#[test]
fn exempt_groups_see_data_unmasked_and_are_still_recorded() {
    let env = env();
    let email = raw(&env, "select email from customers where id = 1");
    let dba = env.url(
        "dana",
        &env.token("dana", &["agents", "dba"], "10m"),
        "appdb",
    );
    let out = ok(&env.psql(&dba, &["-c", "select email from customers where id = 1"]));
    assert_eq!(out.trim(), email.trim());
    // Everyone else still gets it masked.
    let out = ok(&env.psql(
        &env.agent_url(),
        &["-c", "select email from customers where id = 1"],
    ));
    assert_ne!(out.trim(), email.trim());
    let sessions = env.wait_sessions_ended(2);
    assert!(sessions.iter().any(|s| s["subject"] == "dana"));
}

/// A value the target holds that is shaped so the email detector finds and rejects a
/// candidate at every byte (a 256 KiB local part), with a card number after it, read by a
/// raw-protocol client. Before the scan had a budget this took hours of gateway CPU (the
/// client's read times out); now it is answered, and neither the card nor the domain (which the partial email style
/// would keep) is shown. The target's own copy of the value is the oracle.
#[test]
fn a_value_shaped_for_endless_rejection_is_masked_and_answered() {
    let env = env();
    raw(
        &env,
        "create table notes (v text);
         insert into notes values (repeat('a', 262144) || '@example.com 4111 1111 1111 1111')",
    );
    raw(&env, &format!("grant select on notes to {}", env.db.user));
    assert!(raw(&env, "select right(v, 19) from notes").contains("4111 1111 1111 1111"));
    let mut conn = env.raw_agent();
    let answer = conn.query("select v from notes");
    let rows = sluice_e2e::raw::rows(&answer);
    let errors = sluice_e2e::raw::errors(&answer);
    assert!(
        errors.is_empty(),
        "{:?}",
        errors
            .iter()
            .map(|e| e.message().to_string())
            .collect::<Vec<_>>()
    );
    let v = rows[0][0].clone().unwrap_or_default();
    assert!(
        !v.contains("4111") && !v.contains("example.com"),
        "{}",
        &v[v.len().saturating_sub(100)..]
    );
}

/// Numbers the target holds that run on into the next secret, as an agent
/// could store them to get that secret shown: a phone number whose digit
/// groups run into an SSN (the phone number is cut back before it), another
/// straight into a card number, a card number right before an IBAN. Nothing
/// of any of them reaches a raw-protocol client. The target's own copy is
/// the oracle.
#[test]
fn numbers_run_on_into_secrets_hide_both() {
    let env = Env::builder()
        .extra_toml("[masking]\ndetectors = [\"default\"]\n")
        .start();
    let values = [
        "+44 20 7946 0958 078-05-1120",
        "+1 415 555 2671 4111111111111111",
        "5555 5555 5555 4444 GB82 WEST 1234 5698 7654 32",
    ];
    let mut sql = String::from("create table ledger (v text);\n");
    for v in values {
        sql.push_str(&format!("insert into ledger values ('{v}');\n"));
    }
    sql.push_str(&format!("grant select on ledger to {};\n", env.db.user));
    raw(&env, &sql);
    let held = raw(&env, "select v from ledger");
    let pieces = [
        "078-05-1120",
        "05-1120",
        "4111111111111111",
        "5698 7654",
        "4444",
        "0958",
        "2671",
    ];
    for piece in pieces {
        assert!(held.contains(piece), "the target holds {piece}: {held}");
    }
    let mut conn = env.raw_agent();
    let answer = conn.query("select v from ledger");
    assert!(sluice_e2e::raw::errors(&answer).is_empty());
    let shown: Vec<String> = sluice_e2e::raw::rows(&answer)
        .into_iter()
        .map(|r| r[0].clone().unwrap_or_default())
        .collect();
    assert_eq!(shown.len(), values.len(), "{shown:?}");
    for piece in pieces {
        assert!(
            shown.iter().all(|v| !v.contains(piece)),
            "{piece} shown: {shown:?}"
        );
    }
}

/// A function that runs SQL given as text (`ts_rewrite`'s second argument)
/// hides the masked column it reads: its arguments are constants, so the
/// column cannot be followed, and the statement is refused while column
/// rules apply. Sent on a raw socket with the ID reversed (no detector
/// knows that shape); the target's own answer to the same query, and its
/// statement log, are the oracles.
#[test]
fn sql_run_from_text_cannot_carry_a_masked_column_out() {
    let env = env();
    let attack = "select ts_rewrite('x'::tsquery, $q$select 'x'::tsquery, \
                  quote_literal(reverse(national_id))::tsquery from customers where id = 1$q$)";
    let reversed = reversed_national_id(&env);
    assert!(
        raw(&env, attack).contains(&reversed),
        "the attack does not carry the ID out even directly"
    );
    let mut conn = env.raw_agent();
    let answer = conn.query(attack);
    let received = values(&answer);
    assert!(
        !received.iter().any(|v| v.contains(&reversed)),
        "the masked ID came back reversed: {received:?}"
    );
    assert!(
        !sluice_e2e::raw::errors(&answer).is_empty(),
        "not refused: {received:?}"
    );
    let report = env.assert_oracle();
    assert!(!report.server_ran("ts_rewrite"), "the server ran it");
}

/// A function that already exists in the database reads what the statement does not name, and
/// its result comes back as a computed column: the gateway reads its body from the catalog.
/// One that reads a masked column is refused (here it returns the ID reversed, a form no
/// detector knows); one that does not is served.
#[test]
fn a_routine_in_the_database_cannot_carry_a_masked_column_out() {
    let env = env();
    raw(
        &env,
        "create function ids_reversed() returns setof text language sql \
         as 'select reverse(national_id) from customers'; \
         create function ids_reversed_pl() returns setof text language plpgsql \
         as $$ begin return query select reverse(national_id) from customers; end $$; \
         create function customer_count() returns bigint language sql \
         as 'select count(*) from customers'",
    );
    let reversed = reversed_national_id(&env);
    assert!(
        raw(&env, "select ids_reversed()").contains(&reversed),
        "the function does not carry the ID out even directly"
    );
    let mut conn = env.raw_agent();
    for attack in [
        "select ids_reversed()",
        "select * from ids_reversed_pl()",
        // Named with its database: the same function.
        "select app.public.ids_reversed()",
    ] {
        assert_refused(&mut conn, attack, &reversed, &["masked column"]);
    }
    let answer = conn.query("select customer_count()");
    assert!(
        sluice_e2e::raw::errors(&answer).is_empty(),
        "a routine that reads no masked column was refused: {:?}",
        sluice_e2e::raw::errors(&answer)
    );
    let report = env.assert_oracle();
    assert!(report.server_ran("customer_count"), "{report:?}");
    assert!(!report.server_ran("ids_reversed"), "the server ran it");
}

/// A user function named like a built-in is what the server calls for the unqualified name
/// when its argument types fit better: `count(national_id)` runs `public.count(text)`, not the
/// aggregate. The gateway judges it by its body, not by the built-in's name.
#[test]
fn a_user_function_named_like_a_built_in_is_judged_by_its_body() {
    let env = env();
    raw(
        &env,
        "create function public.count(text) returns text language sql immutable \
         as 'select reverse($1)'; \
         create function public.lower(integer) returns setof text language sql \
         as 'select reverse(national_id) from customers'",
    );
    let reversed = reversed_national_id(&env);
    for attack in [
        "select count(national_id) from customers",
        "select lower(1)",
    ] {
        assert!(
            raw(&env, attack).contains(&reversed),
            "{attack}: the server does not call the user function even directly"
        );
    }
    let mut conn = env.raw_agent();
    for attack in [
        "select count(national_id) from customers",
        "select lower(1)",
    ] {
        assert_refused(&mut conn, attack, &reversed, &["masked column", "built-in"]);
    }
    // A quoted name is not the built-in's: the same function, spelled otherwise.
    raw(
        &env,
        "create function public.\"COUNT\"(text) returns text language sql immutable \
         as 'select reverse($1)'",
    );
    let answer = conn.query("select \"COUNT\"(national_id) from customers");
    let received = values(&answer);
    assert!(
        !received.iter().any(|v| v.contains(&reversed)),
        "the masked ID came back reversed: {received:?}"
    );
    // The built-ins themselves, named as such, are served; so are an
    // extension's functions that share a built-in's name (pgcrypto's
    // `gen_random_uuid`, citext's `max`).
    raw(&env, "create extension pgcrypto; create extension citext");
    let answer = conn.query(
        "select gen_random_uuid() is not null, max(name::citext), \
         pg_catalog.lower('A'), pg_catalog.count(*) from customers",
    );
    assert!(
        sluice_e2e::raw::errors(&answer).is_empty(),
        "{:?}",
        sluice_e2e::raw::errors(&answer)
    );
    let report = env.assert_oracle();
    assert!(!report.server_ran("lower(1)"), "the server ran it");
    assert!(
        !report.server_ran("count(national_id)"),
        "the server ran it"
    );
}

/// A statement waiting its turn on the server (pipelined behind `pg_sleep`) was judged on the
/// catalog as it was when it arrived; a routine another session publishes meanwhile would run
/// in it unjudged. The publication waits until the statement is finished.
#[test]
fn a_routine_published_by_another_session_waits_for_statements_judged_before_it() {
    let env = env();
    let reversed = reversed_national_id(&env);
    let mut reader = env.raw_agent();
    let mut publisher = env.raw_agent();
    reader
        .send(&sluice_e2e::raw::query_message(
            "select pg_sleep(1.5); select count(national_id) from customers",
        ))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    let answer = publisher.query(
        "create function public.count(text) returns text language sql immutable \
         as 'select reverse($1)'",
    );
    assert!(
        sluice_e2e::raw::errors(&answer).is_empty(),
        "{:?}",
        sluice_e2e::raw::errors(&answer)
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(900),
        "published while the statement judged before it was still to run"
    );
    let answer = reader.read_until_ready();
    let received = values(&answer);
    assert!(
        !received.iter().any(|v| v.contains(&reversed)),
        "the masked ID came back reversed: {received:?}"
    );
    assert!(
        received.iter().any(|v| v.parse::<u64>().is_ok()),
        "{received:?}"
    );
    // Published: judged as the user function it is from now on.
    assert_refused(
        &mut reader,
        "select count(national_id) from customers",
        &reversed,
        &["masked column", "built-in"],
    );
    // Inside a transaction, the change is published by the COMMIT, which waits the same way.
    publisher.query("begin");
    let answer = publisher.query(
        "create or replace function public.count(text) returns text language sql immutable \
         as 'select $1'",
    );
    assert!(sluice_e2e::raw::errors(&answer).is_empty());
    reader
        .send(&sluice_e2e::raw::query_message("select pg_sleep(1.5), 1"))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    let answer = publisher.query("commit");
    assert!(sluice_e2e::raw::errors(&answer).is_empty());
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(900),
        "committed while a statement judged before it was still to run"
    );
    assert!(sluice_e2e::raw::errors(&reader.read_until_ready()).is_empty());
    // A schema change parsed and never executed publishes nothing: other
    // sessions are not held up by it.
    let mut parse = b"\0create view parsed_only as select 1\0".to_vec();
    parse.extend_from_slice(&0i16.to_be_bytes());
    // No Flush: the server does not answer the Parse yet.
    publisher
        .send(&sluice_e2e::raw::message(b'P', &parse))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    let answer = reader.query("select name from customers where id = 1");
    assert!(
        sluice_e2e::raw::errors(&answer).is_empty(),
        "{:?}",
        sluice_e2e::raw::errors(&answer)
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "held up for {:?}",
        started.elapsed()
    );
}

/// A routine that reads a masked column, attached where the server runs it without a call in
/// any statement's text (a trigger, an operator), would carry the column out of sight. The DDL
/// that attaches it is judged on the routine's body and refused.
#[test]
fn attaching_a_routine_that_reads_a_masked_column_is_refused() {
    let env = env();
    raw(
        &env,
        "create table notes (body text); \
         create function copy_ids() returns trigger language plpgsql as \
         $$ begin insert into notes select reverse(national_id) from customers; return new; end $$; \
         create function ids_op(int, int) returns setof text language sql \
         as 'select reverse(national_id) from customers'; \
         create operator %%% (function = ids_op, leftarg = int, rightarg = int); \
         create function touch() returns trigger language plpgsql as \
         $$ begin insert into notes values ('touched'); return new; end $$",
    );
    let reversed = reversed_national_id(&env);
    assert!(
        raw(&env, "select 1 %%% 2").contains(&reversed),
        "the operator does not carry the ID out even directly"
    );
    let mut conn = env.raw_agent();
    for attack in [
        "create trigger leak after insert on orders for each statement \
         execute function copy_ids()",
        "create operator ### (function = public.ids_op, leftarg = int, rightarg = int)",
        // Any trigger on the masked table: its function sees NEW and OLD.
        "create trigger rows_out after update on customers for each row \
         execute function touch()",
    ] {
        let answer = conn.query(attack);
        let errors = sluice_e2e::raw::errors(&answer);
        assert!(
            errors.iter().any(|e| e.message().contains("masked column")),
            "{attack}: not refused: {errors:?}"
        );
    }
    assert_eq!(
        raw(
            &env,
            "select count(*) from pg_trigger where tgname = 'leak'"
        )
        .trim(),
        "0"
    );
    assert_eq!(
        raw(
            &env,
            "select count(*) from pg_operator where oprname = '###'"
        )
        .trim(),
        "0"
    );
    assert_eq!(
        raw(
            &env,
            "select count(*) from pg_trigger where tgname = 'rows_out'"
        )
        .trim(),
        "0"
    );
    // Attaching a routine that reads no masked column is ordinary work.
    let answer = conn.query(
        "create trigger touched after insert on orders for each statement execute function touch()",
    );
    assert!(
        sluice_e2e::raw::errors(&answer).is_empty(),
        "{:?}",
        sluice_e2e::raw::errors(&answer)
    );
    // The function is replaced after it was attached (here directly, as on
    // a connection without column rules): a write that fires it is judged on
    // what it does now.
    raw(
        &env,
        "grant all on notes to app; \
         create or replace function touch() returns trigger language plpgsql as \
         $$ begin insert into notes select reverse(national_id) from customers; \
         return new; end $$",
    );
    // Reading the table runs no trigger: served.
    assert_write_refused_read_served(&env, &mut conn, "orders", "masked column", &reversed);
    // A rule runs its actions with a write of its table.
    raw(
        &env,
        "create table ruled (id int); grant all on ruled to app; \
         create rule copy_ids as on insert to ruled do also \
         insert into notes select reverse(national_id) from customers",
    );
    assert_write_refused_read_served(&env, &mut conn, "ruled", "a rule on", &reversed);
}

/// A write of `table` (which runs code copying the reversed IDs into `notes`) is refused for
/// `why`, nothing reached `notes`, and a read of `table` is served.
fn assert_write_refused_read_served(
    env: &Env,
    conn: &mut sluice_e2e::raw::RawConn,
    table: &str,
    why: &str,
    reversed: &str,
) {
    let answer = conn.query(&format!("insert into {table} default values"));
    let errors = sluice_e2e::raw::errors(&answer);
    assert!(
        errors.iter().any(|e| e.message().contains(why)),
        "a write of {table} was not refused: {errors:?}"
    );
    let copied = format!("select count(*) from notes where body = '{reversed}'");
    assert_eq!(raw(env, &copied).trim(), "0");
    let answer = conn.query(&format!("select count(*) from {table}"));
    let errors = sluice_e2e::raw::errors(&answer);
    assert!(errors.is_empty(), "{errors:?}");
}

/// The server runs an IMMUTABLE routine with constant arguments when it plans a statement (at
/// Bind), before the gateway judges its Execute: what the routine raises then would reach the
/// client. A routine that reads a masked column is refused where the statement is parsed.
#[test]
fn a_routine_folded_at_bind_cannot_raise_a_masked_column() {
    let env = env();
    raw(
        &env,
        "create function folded(int) returns int language plpgsql immutable as \
         $$ declare v text; begin \
            select string_agg(reverse(national_id), ',') into v from customers; \
            raise notice '%', v; return $1; end $$",
    );
    let reversed = reversed_national_id(&env);
    let mut conn = env.raw_agent();
    let answer = conn.extended("select folded(1)");
    let seen: Vec<String> = answer
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect();
    assert!(
        !seen.iter().any(|b| b.contains(&reversed)),
        "the masked ID reached the client: {seen:?}"
    );
    let errors = sluice_e2e::raw::errors(&answer);
    assert!(
        errors.iter().any(|e| e.message().contains("masked column")),
        "not refused: {errors:?}"
    );
    assert!(
        !env.assert_oracle().server_ran("folded"),
        "the server ran it"
    );
}

/// The gateway reads the catalog on its own connection, which does not see a routine defined in
/// the agent's open transaction: until it commits, statements that use tables or functions are
/// refused rather than judged on the catalog as it was.
#[test]
fn a_routine_defined_in_an_open_transaction_is_not_used_before_commit() {
    let env = env();
    let reversed = reversed_national_id(&env);
    let mut conn = env.raw_agent();
    let no_errors = |answer: &[sluice_e2e::raw::Msg]| {
        let errors = sluice_e2e::raw::errors(answer);
        assert!(errors.is_empty(), "{errors:?}");
    };
    // Ordinary work in a transaction: a table is not code.
    for sql in [
        "begin",
        "create table scratch (a int)",
        "insert into scratch values (1)",
        "alter table scratch add column b int default 0",
        "create type mood as enum ('ok', 'not ok')",
        "insert into scratch values (2, 2)",
        "commit",
    ] {
        no_errors(&conn.query(sql));
    }
    no_errors(&conn.query("begin"));
    no_errors(&conn.query(
        "create function public.count(text) returns text language sql immutable \
         as 'select reverse($1)'",
    ));
    let answer = conn.query("select count(national_id) from customers");
    assert!(
        !values(&answer).iter().any(|v| v.contains(&reversed)),
        "the masked ID came back reversed: {:?}",
        values(&answer)
    );
    let errors = sluice_e2e::raw::errors(&answer);
    assert!(
        errors
            .iter()
            .any(|e| e.message().contains("until it is committed")),
        "not refused: {errors:?}"
    );
    no_errors(&conn.query("rollback"));
    // Once the transaction is over, statements are judged again.
    no_errors(&conn.query("select count(*) from customers"));

    // A routine that defines one when it runs is DDL too.
    raw(
        &env,
        "create function mk() returns void language plpgsql as $$ begin \
         create function public.count(text) returns text language sql immutable \
         as 'select reverse($1)'; end $$",
    );
    let answer = conn.query("select mk(); select count(national_id) from customers");
    let errors = sluice_e2e::raw::errors(&answer);
    assert!(
        errors
            .iter()
            .any(|e| e.message().contains("may change the schema")),
        "not refused: {errors:?}"
    );
    // Run at Bind by an IMMUTABLE routine folded when its statement is
    // planned, before any Execute: refused where it is parsed, and the
    // statements after it in the batch with it.
    raw(
        &env,
        "create function folded(int) returns int language plpgsql immutable as \
         $$ begin perform mk(); return $1; end $$",
    );
    let mut batch = sluice_e2e::raw::extended_message("select folded(1)");
    batch.truncate(batch.len() - 10 - 5); // Parse and Bind only: no Execute, no Sync
    batch.extend(sluice_e2e::raw::extended_message(
        "select count(national_id) from customers",
    ));
    conn.send(&batch).unwrap();
    let answer = conn.read_until_ready();
    assert!(
        !values(&answer).iter().any(|v| v.contains(&reversed)),
        "the masked ID came back reversed: {:?}",
        values(&answer)
    );
    assert!(
        !sluice_e2e::raw::errors(&answer).is_empty(),
        "the statement after the folded routine was not refused"
    );
    assert!(
        sluice_e2e::raw::errors(&answer)
            .iter()
            .any(|e| e.message().contains("at Bind")),
        "{:?}",
        sluice_e2e::raw::errors(&answer)
    );
    // It did not run.
    assert_eq!(
        raw(
            &env,
            "select count(*) from pg_proc where proname = 'count' \
             and pronamespace = 'public'::regnamespace"
        )
        .trim(),
        "0"
    );
    // Attaching such a routine where the server runs it unasked.
    raw(
        &env,
        "create function mk_trg() returns trigger language plpgsql as $$ begin \
         create function public.count(text) returns text language sql immutable \
         as 'select reverse($1)'; return null; end $$",
    );
    let answer = conn.query(
        "create trigger mk after insert on scratch for each statement execute function mk_trg()",
    );
    assert!(
        sluice_e2e::raw::errors(&answer)
            .iter()
            .any(|e| e.message().contains("changes the schema itself")),
        "{:?}",
        sluice_e2e::raw::errors(&answer)
    );
    no_errors(&conn.query("begin"));
    no_errors(&conn.query("select mk()"));
    let answer = conn.query("select count(national_id) from customers");
    assert!(
        !values(&answer).iter().any(|v| v.contains(&reversed)),
        "the masked ID came back reversed: {:?}",
        values(&answer)
    );
    assert!(
        sluice_e2e::raw::errors(&answer)
            .iter()
            .any(|e| e.message().contains("until it is committed")),
        "{:?}",
        sluice_e2e::raw::errors(&answer)
    );
    no_errors(&conn.query("rollback"));
    // The server's log: none of the refused statements ran.
    let report = env.assert_oracle();
    assert!(
        !report.server_ran("count(national_id)"),
        "the server ran it"
    );
}

/// A fast-path function call names its function by OID alone: with column rules on, the gateway
/// cannot follow what it reads, and refuses it (psql's large-object commands use them).
#[test]
fn fast_path_function_calls_are_refused_while_column_rules_apply() {
    let env = env();
    let input = env.dir.path().join("blob.bin");
    std::fs::write(&input, b"bytes").unwrap();
    let script = format!("\\lo_import '{}'\n", input.display());
    let out = env.psql_input(&env.agent_url(), &["-f", "-"], Some(&script));
    let err = stderr(&out);
    assert!(
        err.contains("fast-path function call"),
        "not refused as a fast-path call: {err} / {}",
        stdout(&out)
    );
    assert_eq!(
        raw(&env, "select count(*) from pg_largeobject_metadata").trim(),
        "0",
        "a large object was created"
    );
}

/// A cursor's query runs at FETCH: the views it reads are looked up with the FETCH, so a
/// view's columns are masked by the column rules of the table they come from.
#[test]
fn a_cursor_over_a_view_is_masked_at_fetch() {
    let env = env();
    raw(
        &env,
        "create view customer_view as select id, national_id || '' as nid from customers; \
         grant select on customer_view to app",
    );
    let id = raw(&env, "select national_id from customers where id = 1")
        .trim()
        .to_string();
    let mut conn = env.raw_agent();
    conn.query("begin");
    let declared = conn.query("declare c cursor for select * from customer_view");
    assert!(
        sluice_e2e::raw::errors(&declared).is_empty(),
        "{:?}",
        sluice_e2e::raw::errors(&declared)
    );
    let answer = conn.query("fetch all from c");
    let received = values(&answer);
    assert!(received.len() > 1, "{answer:?}");
    assert!(
        !received.iter().any(|v| v.contains(&id)),
        "the national ID came back unmasked: {received:?}"
    );
    conn.query("commit");
}
