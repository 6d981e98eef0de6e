use std::process::Command;

use super::demo::{customers, luhn_valid, CUSTOMERS, ORDERS};
use super::*;

/// Runs `psql URL -c SQL` as a client would (password from PGPASSWORD); returns stdout or
/// stderr.
fn psql_url(pg: &TempPostgres, url: &str, password: &str, sql: &str) -> Result<String, String> {
    let mut cmd = Command::new(pg.binaries().tool("psql"));
    cmd.args([
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        sql,
        url,
    ]);
    clean_pg_env(&mut cmd).env("PGPASSWORD", password);
    let out = cmd.output().expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

#[test]
fn free_port_is_bindable() {
    // Other tests pick ports concurrently, so a rare collision is possible: retry a little.
    let bound = (0..5).any(|_| {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).is_ok()
    });
    assert!(bound, "free_port() returned a usable port");
}

#[test]
fn wait_for_port_times_out_on_closed_port() {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let err = wait_for_port(addr, Duration::from_millis(200)).expect_err("nothing listens");
    assert!(matches!(err, SandboxError::Timeout { .. }), "{err}");
}

#[test]
fn random_hex_is_random() {
    let a = random_hex(16).unwrap();
    assert_eq!(a.len(), 32);
    assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a, random_hex(16).unwrap());
}

#[test]
fn demo_data_is_deterministic_and_plausible() {
    let rows = customers();
    assert_eq!(rows.len(), CUSTOMERS);
    assert_eq!(rows[0].card_number, "4111111111111111");
    assert_eq!(rows[0].national_id, "123-45-6789");
    for c in &rows {
        assert!(luhn_valid(&c.card_number), "{} fails Luhn", c.card_number);
        let parts: Vec<&str> = c.national_id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [3, 2, 4],
            "{}",
            c.national_id
        );
        assert!(c.email.ends_with("@example.com") && !c.email.contains('\''));
    }
    let emails: std::collections::HashSet<_> = rows.iter().map(|c| &c.email).collect();
    assert_eq!(emails.len(), CUSTOMERS, "emails are unique");
    assert_eq!(
        customers()
            .iter()
            .map(|c| &c.card_number)
            .collect::<Vec<_>>(),
        rows.iter().map(|c| &c.card_number).collect::<Vec<_>>()
    );
}

#[test]
fn luhn() {
    assert!(luhn_valid("4111111111111111"));
    assert!(luhn_valid("378282246310005"));
    assert!(!luhn_valid("4111111111111112"));
    assert!(!luhn_valid("7"));
}

#[test]
fn temp_postgres_seed_demo_and_both_auth_methods() {
    let mut pg = TempPostgres::start(TempPostgresOptions {
        extra_conf: vec!["log_connections = on".to_string()],
        ..Default::default()
    })
    .expect("start PostgreSQL");
    let demo = pg.seed_demo().expect("seed demo");
    assert_eq!(demo.database, "app");

    let count = pg.psql("app", "SELECT count(*) FROM customers").unwrap();
    assert_eq!(count.trim(), CUSTOMERS.to_string());
    let count = pg.psql("app", "SELECT count(*) FROM orders").unwrap();
    assert_eq!(count.trim(), ORDERS.to_string());
    let owner = pg
        .psql(
            "app",
            "SELECT tableowner FROM pg_tables WHERE tablename = 'customers'",
        )
        .unwrap();
    assert_eq!(owner.trim(), "app");
    let stored = pg
        .psql(
            "postgres",
            "SELECT rolname || ' ' || CASE \
             WHEN rolpassword LIKE 'SCRAM-SHA-256$%' THEN 'scram' \
             WHEN rolpassword LIKE 'md5%' THEN 'md5' ELSE '?' END \
             FROM pg_authid WHERE rolname IN ('app', 'legacy') ORDER BY rolname",
        )
        .unwrap();
    assert_eq!(
        stored.lines().collect::<Vec<_>>(),
        ["app scram", "legacy md5"]
    );

    // Errors carry psql's stderr.
    let err = pg.psql("app", "SELECT * FROM no_such_table").unwrap_err();
    assert!(err.to_string().contains("no_such_table"), "{err}");

    // scram-sha-256 as `app`.
    let url = pg.url(&demo.user, &demo.password, &demo.database);
    let who = psql_url(&pg, &url, &demo.password, "SELECT current_user").unwrap();
    assert_eq!(who, "app");
    let card = psql_url(
        &pg,
        &url,
        &demo.password,
        "SELECT card_number FROM customers ORDER BY id LIMIT 1",
    )
    .unwrap();
    assert_eq!(card, "4111111111111111");

    // md5 as `legacy`, which can read the tables too.
    let url = pg.url(&demo.md5_user, &demo.md5_password, &demo.database);
    let n = psql_url(
        &pg,
        &url,
        &demo.md5_password,
        "SELECT current_user || ' ' || count(*) FROM orders",
    )
    .unwrap();
    assert_eq!(n, format!("legacy {ORDERS}"));

    // A wrong password is refused.
    let bad = pg.url(&demo.user, "wrong", &demo.database);
    let err = psql_url(&pg, &bad, "wrong", "SELECT 1").unwrap_err();
    assert!(err.contains("password authentication failed"), "{err}");

    let log = pg.log_tail(200);
    assert!(log.contains("method=md5"), "legacy used md5:\n{log}");
    assert!(
        log.contains("method=scram-sha-256"),
        "app used scram:\n{log}"
    );

    let addr = pg.addr();
    let dir = pg.data_dir.clone();
    pg.stop();
    pg.stop(); // idempotent
    assert!(TcpStream::connect(addr).is_err(), "server stopped");
    drop(pg);
    assert!(!dir.exists(), "data dir removed on drop");
}

#[test]
fn temp_postgres_with_ssl() {
    let pg = TempPostgres::start(TempPostgresOptions {
        ssl: true,
        ..Default::default()
    })
    .expect("start PostgreSQL");
    if !pg.ssl {
        eprintln!("openssl not installed: SSL not tested");
        return;
    }
    let url = format!(
        "{}?sslmode=require",
        pg.url(&pg.superuser, &pg.superuser_password, "postgres")
    );
    let ssl = psql_url(
        &pg,
        &url,
        &pg.superuser_password,
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .unwrap();
    assert_eq!(ssl, "t");
}

#[test]
fn statement_log_shows_what_the_server_executed() {
    let pg = TempPostgres::start(TempPostgresOptions {
        statement_log: true,
        ..Default::default()
    })
    .expect("start PostgreSQL");
    let demo = pg.seed_demo().expect("seed demo");
    let url = pg.url(&demo.user, &demo.password, &demo.database);
    psql_url(&pg, &url, &demo.password, "SELECT 41 + 1; SELECT 'two'").unwrap();
    let executed = pg.executed_statements().expect("statement log");
    let ours: Vec<_> = executed.iter().filter(|s| s.user == demo.user).collect();
    assert_eq!(ours.len(), 1, "{executed:#?}");
    assert_eq!(ours[0].text, "SELECT 41 + 1; SELECT 'two'");
    assert_eq!(ours[0].kind, StatementKind::Simple);
    assert_eq!(ours[0].database, "app");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        ours[0].at_ms <= now && now - ours[0].at_ms < 120_000,
        "{ours:?}"
    );
    // The seed ran as the superuser; the marker queries are left out.
    assert!(executed
        .iter()
        .any(|s| s.text.contains("CREATE TABLE customers")));
    assert!(!executed
        .iter()
        .any(|s| s.text.contains("sluice-log-marker")));
    // The text log still reads (now through the collector's file).
    assert!(pg.log_tail(500).contains("statement: SELECT 41 + 1"));
}
