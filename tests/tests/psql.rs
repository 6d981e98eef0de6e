//! psql through the gateway: queries, transactions, errors, notices, multi-statement strings,
//! COPY both ways, large results and TLS on both legs.

// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_e2e::*;
use std::fmt::Write as _;
use std::fs;
use std::process::Command;

#[test]
fn simple_queries_match_the_upstream() {
    let env = Env::start();
    let url = env.agent_url();
    for sql in [
        "select 1 + 1",
        "select count(*) from customers",
        "select id, name, email from customers order by id limit 5",
        "select status, count(*), sum(amount) from orders group by status order by status",
        "select null::text is null, 'ünïcødé ✓', E'tab\\there'",
    ] {
        let through = ok(&env.psql(&url, &["-c", sql]));
        let direct = env.direct_sql("app", sql);
        assert_eq!(through, direct, "{sql}");
        assert!(!through.trim().is_empty(), "{sql}: empty output");
    }
    assert_eq!(
        ok(&env.psql(&url, &["-c", "select current_user, current_database()"])).trim(),
        "app|app",
        "the session runs as the gateway-held account on the configured database"
    );
}

#[test]
fn transactions_commit_and_rollback() {
    let env = Env::start();
    let url = env.agent_url();
    let script = "create table tx_t (x int);\n\
                  begin;\n\
                  insert into tx_t values (1);\n\
                  commit;\n\
                  begin;\n\
                  insert into tx_t values (2);\n\
                  select count(*) from tx_t;\n\
                  rollback;\n\
                  start transaction isolation level serializable;\n\
                  insert into tx_t values (3);\n\
                  savepoint s1;\n\
                  insert into tx_t values (4);\n\
                  rollback to savepoint s1;\n\
                  commit;\n\
                  select string_agg(x::text, ',' order by x) from tx_t;\n";
    let out = ok(&env.psql_input(&url, &["-f", "-"], Some(script)));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        ["2", "1,3"],
        "inside the open transaction 2 rows, after: 1 and 3"
    );
    // The upstream agrees.
    assert_eq!(
        env.direct_sql(
            "app",
            "select string_agg(x::text, ',' order by x) from tx_t"
        )
        .trim(),
        "1,3"
    );
}

#[test]
fn error_mid_transaction_then_rollback_keeps_the_session_usable() {
    let env = Env::start();
    let url = env.agent_url();
    // One psql process, one session: later statements run after the errors.
    let script = "create table err_t (x int);\n\
                  select pg_backend_pid() as pid \\gset\n\
                  begin;\n\
                  insert into err_t values (10);\n\
                  select 1/0;\n\
                  select 'inside-failed-transaction';\n\
                  rollback;\n\
                  select 'after-rollback', count(*) from err_t;\n\
                  select 'same-backend', pg_backend_pid() = :pid;\n\
                  select * from no_such_table;\n\
                  select 'after-plain-error';\n";
    let out = env.psql_input(&url, &["-v", "ON_ERROR_STOP=0", "-f", "-"], Some(script));
    let (so, se) = (stdout(&out), stderr(&out));
    assert!(se.contains("division by zero"), "stderr: {se}");
    assert!(
        se.contains("current transaction is aborted"),
        "the failed transaction rejects statements until rollback; stderr: {se}"
    );
    assert!(
        se.contains("relation \"no_such_table\" does not exist"),
        "stderr: {se}"
    );
    assert!(!so.contains("inside-failed-transaction"), "stdout: {so}");
    assert!(so.contains("after-rollback|0"), "rolled back; stdout: {so}");
    assert!(
        so.contains("same-backend|t"),
        "one upstream session; stdout: {so}"
    );
    assert!(so.contains("after-plain-error"), "stdout: {so}");
}

#[test]
fn notices_are_relayed() {
    let env = Env::start();
    let url = env.agent_url();
    let out = env.psql(
        &url,
        &[
            "-c",
            "DO $$ BEGIN RAISE NOTICE 'hello-notice'; RAISE WARNING 'careful-warning'; END $$",
        ],
    );
    ok(&out);
    let se = stderr(&out);
    assert!(se.contains("NOTICE:  hello-notice"), "stderr: {se}");
    assert!(se.contains("WARNING:  careful-warning"), "stderr: {se}");
}

#[test]
fn multi_statement_query_strings() {
    let env = Env::start();
    let url = env.agent_url();
    // One Query message with several statements: psql (15+) prints every result.
    let out = ok(&env.psql(
        &url,
        &[
            "-c",
            "select 'first'; create temp table m (a int); insert into m values (1), (2), (40); \
             select sum(a) from m; select 'last'",
        ],
    ));
    let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines, ["first", "43", "last"], "{out}");

    // A failing statement aborts the rest of the string and rolls back the implicit
    // transaction the string runs in.
    ok(&env.psql(&url, &["-c", "create table ms_t (x int)"]));
    let out = env.psql(
        &url,
        &[
            "-c",
            "insert into ms_t values (1); select 1/0; insert into ms_t values (2)",
        ],
    );
    let se = failed(&out);
    assert!(se.contains("division by zero"), "{se}");
    assert_eq!(
        ok(&env.psql(&url, &["-c", "select count(*) from ms_t"])).trim(),
        "0",
        "the implicit transaction was rolled back"
    );
}

#[test]
fn copy_in_and_out() {
    let env = Env::start();
    let url = env.agent_url();
    ok(&env.psql(
        &url,
        &[
            "-c",
            "create table cp (id int primary key, name text, note text)",
        ],
    ));

    // \copy from a client-side file (COPY ... FROM STDIN on the wire).
    let input = env.dir.path().join("in.csv");
    let mut csv = String::new();
    for i in 1..=5000 {
        let _ = writeln!(csv, "{i},name-{i},\"quoted, with comma {i}\"");
    }
    fs::write(&input, &csv).unwrap();
    let out = ok(&env.psql(
        &url,
        &[
            "-c",
            &format!("\\copy cp from '{}' with (format csv)", input.display()),
        ],
    ));
    assert!(out.is_empty() || out.contains("COPY 5000"), "{out}");
    assert_eq!(
        env.direct_sql(
            "app",
            "select count(*), sum(id), count(distinct name) from cp"
        )
        .trim(),
        "5000|12502500|5000"
    );

    // \copy to a client-side file (COPY ... TO STDOUT on the wire), byte-identical.
    let output = env.dir.path().join("out.csv");
    ok(&env.psql(
        &url,
        &[
            "-c",
            &format!(
                "\\copy (select * from cp order by id) to '{}' with (format csv)",
                output.display()
            ),
        ],
    ));
    assert_eq!(fs::read_to_string(&output).unwrap(), csv);

    // COPY FROM STDIN inline in a script, then COPY TO STDOUT.
    let script = "COPY cp (id, name) FROM STDIN;\n\
                  100001\tinline-a\n\
                  100002\tinline-b\n\
                  \\.\n\
                  COPY (select id, name from cp where id > 100000 order by id) TO STDOUT;\n";
    let out = ok(&env.psql_input(&url, &["-f", "-"], Some(script)));
    assert_eq!(out, "100001\tinline-a\n100002\tinline-b\n");

    // A COPY that fails on the server mid-stream leaves the session usable.
    let bad = env.dir.path().join("bad.csv");
    fs::write(&bad, "200001,ok,\nnot-a-number,bad,\n200003,ok,\n").unwrap();
    let script = format!(
        "\\copy cp from '{}' with (format csv)\n\
         select 'after-copy-error', count(*) from cp where id > 200000;\n",
        bad.display()
    );
    let out = env.psql_input(&url, &["-v", "ON_ERROR_STOP=0", "-f", "-"], Some(&script));
    assert!(
        stderr(&out).contains("invalid input syntax for type integer"),
        "{}",
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("after-copy-error|0"),
        "{}",
        stdout(&out)
    );
}

/// psql's large-object commands use libpq's fast-path function calls (FunctionCall 'F').
#[test]
fn large_objects_through_fast_path_function_calls() {
    let env = Env::start();
    let url = env.agent_url();
    let input = env.dir.path().join("blob.bin");
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(&input, &blob).unwrap();
    let output = env.dir.path().join("blob.out");
    let script = format!(
        "\\lo_import '{}'\n\
         \\set oid :LASTOID\n\
         \\lo_export :oid '{}'\n\
         select 'size', length(lo_get(:oid));\n\
         \\lo_unlink :oid\n\
         select 'left', count(*) from pg_largeobject_metadata;\n",
        input.display(),
        output.display()
    );
    let out = env.psql_input(&url, &["-f", "-"], Some(&script));
    let so = ok(&out);
    assert!(so.contains("size|300000"), "{so}");
    assert!(so.contains("left|0"), "{so}");
    assert!(fs::read(&output).unwrap() == blob, "exported bytes differ");
    // The function calls were recorded.
    let sessions = env.wait_sessions_ended(1);
    let replay = env.replay(sessions[0]["id"].as_str().unwrap());
    assert!(replay.contains("function call"), "{replay}");
}

#[test]
fn large_result() {
    let env = Env::start();
    let url = env.agent_url();
    let out = env.psql(
        &url,
        &[
            "-c",
            "select g, repeat('x', 1000) from generate_series(1, 20000) g",
        ],
    );
    let text = ok(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 20000);
    let x1000 = "x".repeat(1000);
    assert_eq!(lines[0], format!("1|{x1000}"));
    assert_eq!(lines[19999], format!("20000|{x1000}"));
    assert!(lines
        .iter()
        .enumerate()
        .all(|(i, l)| *l == format!("{}|{x1000}", i + 1)));

    // A wide single value (16 MiB) goes through in one DataRow.
    let out = ok(&env.psql(
        &url,
        &["-c", "select length(repeat('y', 16 * 1024 * 1024))"],
    ));
    assert_eq!(out.trim(), "16777216");
    let out = env.psql(&url, &["-c", "select repeat('y', 16 * 1024 * 1024)"]);
    assert_eq!(ok(&out).trim_end().len(), 16 * 1024 * 1024);
}

#[test]
fn tls_between_client_and_gateway() {
    let env = Env::start();
    let token = env.agent_token();
    let base = env.url("agent-1", &token, "appdb");

    let conninfo = |url: &str| env.psql(url, &["-c", "\\conninfo"]);

    let out = ok(&conninfo(&format!("{base}?sslmode=require")));
    assert!(out.contains("SSL connection"), "{out}");

    let ca = env.ca_path();
    let verified = format!(
        "postgresql://agent-1:{token}@localhost:{}/appdb?sslmode=verify-full&sslrootcert={}",
        env.port,
        ca.display()
    );
    let out = ok(&conninfo(&verified));
    assert!(out.contains("SSL connection"), "{out}");
    assert_eq!(
        ok(&env.psql(&verified, &["-c", "select count(*) from customers"])).trim(),
        "50"
    );

    // Plaintext is allowed on loopback, and is really plaintext.
    let out = ok(&conninfo(&format!("{base}?sslmode=disable")));
    assert!(!out.contains("SSL connection"), "{out}");

    // verify-full against an unrelated CA must fail: the client really verifies.
    let other_ca = env.dir.path().join("other-ca.crt");
    let other_key = env.dir.path().join("other-ca.key");
    let mut openssl = Command::new("openssl");
    openssl
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=not-sluice"])
        .arg("-keyout")
        .arg(&other_key)
        .arg("-out")
        .arg(&other_ca);
    ok(&run_with_timeout(&mut openssl, None, COMMAND_TIMEOUT));
    let wrong = format!(
        "postgresql://agent-1:{token}@localhost:{}/appdb?sslmode=verify-full&sslrootcert={}",
        env.port,
        other_ca.display()
    );
    let se = failed(&env.psql(&wrong, &["-c", "select 1"]));
    assert!(se.contains("certificate verify failed"), "{se}");
}

/// Runs openssl with these arguments (in `dir`), asserting success.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let mut cmd = Command::new("openssl");
    cmd.current_dir(dir).args(args);
    ok(&run_with_timeout(&mut cmd, None, COMMAND_TIMEOUT));
}

/// Gives the upstream a CA-signed certificate (CA in `{DIR}/upstream-ca.crt`) for localhost and
/// 127.0.0.1, and reloads it.
fn install_ca_signed_upstream_cert(env: &Env) {
    let dir = env.dir.path();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend(["-days", "2", "-subj", "/CN=e2e-upstream-ca"]);
    args.extend(["-keyout", "upstream-ca.key", "-out", "upstream-ca.crt"]);
    openssl(dir, &args);
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend([
        "-subj",
        "/CN=localhost",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
    ]);
    openssl(dir, &args);
    fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "upstream-ca.crt",
            "-CAkey",
            "upstream-ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
            "-out",
            "leaf.crt",
        ],
    );
    let data = &env.pg.data_dir;
    fs::copy(dir.join("leaf.crt"), data.join("server.crt")).unwrap();
    fs::copy(dir.join("leaf.key"), data.join("server.key")).unwrap();
    for f in ["server.crt", "server.key"] {
        sluice_sandbox::chown_to(env.pg.os_user(), &data.join(f)).unwrap();
    }
    env.direct_sql("postgres", "select pg_reload_conf()");
    // The reload is asynchronous: wait until libpq verifies the new certificate.
    let ca = dir.join("upstream-ca.crt");
    wait_until(
        std::time::Duration::from_secs(10),
        "the upstream serving the CA-signed certificate",
        || {
            let url = format!(
                "postgresql://app:{}@localhost:{}/app?sslmode=verify-full&sslrootcert={}&application_name={}",
                env.db.password,
                env.pg.port,
                ca.display(),
                oracle::DIRECT_APPLICATION
            );
            env.psql(&url, &["-c", "select 1"])
                .status
                .success()
                .then_some(())
        },
    );
}

const UPSTREAM_TLS_CONNECTIONS: &str = r#"
[[connections]]
name = "securedb"
kind = "postgres"
upstream = "{PG}"
database = "app"
user = "app"
password = { env = "APPDB_PASSWORD" }
allow_groups = ["agents"]
upstream_tls = "verify-full"
upstream_ca = "{DIR}/upstream-ca.crt"

[[connections]]
name = "selfsigned"
kind = "postgres"
upstream = "{PG}"
database = "app"
user = "app"
password = { env = "APPDB_PASSWORD" }
allow_groups = ["agents"]
upstream_tls = "verify-full"
upstream_ca = "{PGDATA}/server.crt"

[[connections]]
name = "wrongca"
kind = "postgres"
upstream = "{PG}"
database = "app"
user = "app"
password = { env = "APPDB_PASSWORD" }
allow_groups = ["agents"]
upstream_tls = "verify-full"
upstream_ca = "{DIR}/state/tls/ca.crt"

[[connections]]
name = "plainup"
kind = "postgres"
upstream = "{PG}"
database = "app"
user = "app"
password = { env = "APPDB_PASSWORD" }
allow_groups = ["agents"]
upstream_tls = "disable"
"#;

const SSL_QUERY: &str = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";

/// A gateway whose upstream serves a certificate signed by the test CA, with
/// the connections of [`UPSTREAM_TLS_CONNECTIONS`].
fn upstream_tls_env() -> Env {
    let env = Env::builder()
        .pg_ssl()
        .extra_toml(UPSTREAM_TLS_CONNECTIONS)
        .start();
    install_ca_signed_upstream_cert(&env);
    env
}

#[test]
fn tls_between_gateway_and_upstream() {
    let env = upstream_tls_env();
    let token = env.agent_token();

    let out = env.psql(&env.url("agent-1", &token, "securedb"), &["-c", SSL_QUERY]);
    assert_eq!(ok(&out).trim(), "t", "the gateway's upstream leg is TLS");
    let out = env.psql(&env.url("agent-1", &token, "appdb"), &["-c", SSL_QUERY]);
    assert_eq!(
        ok(&out).trim(),
        "t",
        "upstream_tls = prefer uses TLS when offered"
    );
    let out = env.psql(&env.url("agent-1", &token, "plainup"), &["-c", SSL_QUERY]);
    assert_eq!(ok(&out).trim(), "f", "upstream_tls = disable");

    // A CA that did not sign the upstream's certificate: refused, with a redacted message.
    let _ = env.ca_path();
    let se = failed(&env.psql(&env.url("agent-1", &token, "wrongca"), &["-c", "select 1"]));
    assert!(
        se.contains("sluice: cannot open connection \"wrongca\""),
        "{se}"
    );
}

/// The gateway builds one upstream TLS config per CA file and shares it between sessions. An
/// operator who withdraws a CA by rewriting the file must not be overruled by that cache: the
/// next session verifies against the file as it is now. Judged by the server's own log: the
/// statement sent after the withdrawal never runs.
#[test]
fn a_withdrawn_upstream_ca_is_not_trusted_by_the_next_session() {
    let env = upstream_tls_env();
    let token = env.agent_token();
    let url = env.url("agent-1", &token, "securedb");
    let ca = env.dir.path().join("upstream-ca.crt");
    let trusted = fs::read(&ca).unwrap();

    let out = env.psql(&url, &["-c", SSL_QUERY]);
    assert_eq!(ok(&out).trim(), "t", "verified TLS with the upstream's CA");

    // Rewritten in place (same inode) with a CA that did not sign the upstream's certificate.
    fs::write(&ca, fs::read(env.ca_path()).unwrap()).unwrap();
    let se = failed(&env.psql(&url, &["-c", "select 'after-withdrawal'"]));
    assert!(
        se.contains("sluice: cannot open connection \"securedb\""),
        "{se}"
    );
    let report = env.assert_oracle();
    assert!(!report.server_ran("after-withdrawal"));

    // Trusted again once the file says so.
    fs::write(&ca, &trusted).unwrap();
    let out = env.psql(&url, &["-c", "select 'trusted-again'"]);
    assert_eq!(ok(&out).trim(), "trusted-again");
    assert!(env.assert_oracle().server_ran("trusted-again"));
}

/// PostgreSQL's documented way to set up server TLS is a self-signed certificate that clients
/// use as their root (`sslrootcert=server.crt`); libpq verifies it with verify-full, and so
/// must the gateway (webpki alone rejects it as CaUsedAsEndEntity).
#[test]
fn upstream_verify_full_accepts_a_self_signed_certificate_like_libpq() {
    let env = Env::builder()
        .pg_ssl()
        .extra_toml(UPSTREAM_TLS_CONNECTIONS)
        .start();
    // libpq, directly: works.
    let direct = format!(
        "postgresql://app:{}@localhost:{}/app?sslmode=verify-full&sslrootcert={}&application_name={}",
        env.db.password,
        env.pg.port,
        env.pg.data_dir.join("server.crt").display(),
        oracle::DIRECT_APPLICATION
    );
    assert_eq!(ok(&env.psql(&direct, &["-c", SSL_QUERY])).trim(), "t");
    // Through the gateway with the same trust anchor.
    let out = env.psql(
        &env.url("agent-1", &env.agent_token(), "selfsigned"),
        &["-c", SSL_QUERY],
    );
    assert!(
        out.status.success() && stdout(&out).trim() == "t",
        "{}\ngateway log:\n{}",
        stderr(&out),
        env.gateway_log()
    );
}
