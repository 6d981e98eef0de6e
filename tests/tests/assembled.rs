//! A gateway assembled in-process from the library crates (as a platform team
//! would), with a test masker in the masking position: result rows must reach
//! it decoded, with their column metadata, in text and binary formats, and
//! what it writes is what clients receive.

// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_core::masking::{ResponseMasker, RowMasker};
use sluice_core::pipeline::SessionInfo;
use sluice_core::{Column, Config, GatewayBuilder};
use sluice_e2e::*;
use sluice_sandbox::{free_port, TempPostgres, TempPostgresOptions};
use sluice_store::{Mode, SqliteStore};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Masks every column named `email`; remembers the metadata it was shown.
#[derive(Default)]
struct EmailMasker {
    seen: Mutex<Vec<Column>>,
}

struct EmailRows {
    columns: Vec<usize>,
}

impl ResponseMasker for EmailMasker {
    fn plan(&self, _: &SessionInfo, columns: &[Column]) -> Option<Box<dyn RowMasker>> {
        self.seen.lock().unwrap().extend(columns.iter().cloned());
        let columns: Vec<usize> = columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.name == "email")
            .map(|(i, _)| i)
            .collect();
        (!columns.is_empty()).then(|| Box::new(EmailRows { columns }) as Box<dyn RowMasker>)
    }
}

impl RowMasker for EmailRows {
    fn mask_row(&mut self, values: &mut [Option<Vec<u8>>]) -> u64 {
        // text is sent as its UTF-8 bytes in both formats, so one value fits both.
        for &i in &self.columns {
            if let Some(v) = values.get_mut(i).and_then(Option::as_mut) {
                *v = b"[masked-email]".to_vec();
            }
        }
        self.columns.len() as u64
    }
}

#[test]
fn masking_position_receives_decoded_rows_with_column_metadata() {
    let pg = TempPostgres::start(TempPostgresOptions::default()).unwrap();
    let db = pg.seed_demo().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("db-password");
    std::fs::write(&secret, &db.password).unwrap();
    let port = free_port();
    let config = Config::from_toml_str(
        &format!(
            r#"
[gateway]
state_dir = {state:?}
[listen]
postgres = "127.0.0.1:{port}"
[[connections]]
name = "appdb"
kind = "postgres"
upstream = "{upstream}"
database = "app"
user = "app"
password = {{ file = {secret:?} }}
allow_groups = ["agents"]
upstream_tls = "disable"
"#,
            state = dir.path().join("state").display().to_string(),
            upstream = pg.addr(),
            secret = secret.display().to_string(),
        ),
        "assembled.toml",
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let masker = Arc::new(EmailMasker::default());
    let store = Arc::new(
        SqliteStore::open(&config.gateway.state_dir, Mode::Writer(Default::default())).unwrap(),
    );
    let gateway = Arc::new(
        GatewayBuilder::new(config, store)
            .connection_kind(
                sluice_postgres::settings::KIND,
                sluice_postgres::settings::KEYS,
                sluice_postgres::settings::validate,
            )
            .masker(masker.clone())
            .build()
            .unwrap(),
    );
    let token = gateway
        .tokens()
        .issue("agent-1", &["agents".into()], Duration::from_secs(300))
        .unwrap();
    let server = sluice_postgres::PostgresServer::new(gateway).unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
        .unwrap();
    runtime.spawn(server.serve(listener));
    let url = format!("postgresql://agent-1:{token}@127.0.0.1:{port}/appdb?sslmode=disable");

    // Simple protocol, text format.
    let mut psql = std::process::Command::new(pg.binaries().tool("psql"));
    clean_pg_env(&mut psql).args([
        "-X",
        "-A",
        "-t",
        "-d",
        &url,
        "-c",
        "select id, email, name from customers order by id limit 3",
    ]);
    let out = ok(&run_with_timeout(&mut psql, None, Duration::from_secs(30)));
    assert_eq!(out.matches("[masked-email]").count(), 3, "{out}");
    assert!(!out.contains("@example.com"), "{out}");
    assert!(out.contains("Alice"), "other columns pass untouched: {out}");

    // Extended protocol with binary results (psycopg), and an alias.
    let script = r#"
import sys, psycopg
with psycopg.connect(sys.argv[1]) as c:
    cur = c.cursor(binary=True)
    rows = cur.execute("select id, email as email from customers where id < %s order by id", (4,)).fetchall()
    assert [r[1] for r in rows] == ["[masked-email]"] * 3, rows
    assert isinstance(rows[0][0], int), rows
print("OK")
"#;
    let mut py = std::process::Command::new("python3");
    py.args(["-c", script, &url]);
    let out = run_with_timeout(&mut py, None, Duration::from_secs(30));
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));

    let seen = masker.seen.lock().unwrap();
    let email = seen
        .iter()
        .find(|c| c.name == "email")
        .expect("the masker saw an email column");
    assert_ne!(email.table_oid, 0, "source table is known: {email:?}");
    assert_eq!(email.type_oid, 25, "text: {email:?}");
    assert!(
        seen.iter().any(|c| c.name == "id" && c.binary),
        "binary result formats reach the masker: {seen:?}"
    );
    drop(seen);
    runtime.shutdown_timeout(Duration::from_secs(2));
}
