//! The PostgreSQL store against a real PostgreSQL server (`sluice-sandbox`).

use super::*;
use crate::test_events::{decided, finished, start_event};
use sluice_core::audit::Store;
use sluice_core::config::AuditSync;
use sluice_sandbox::{TempPostgres, TempPostgresOptions};
use std::time::{Duration, Instant};

struct Server {
    pg: TempPostgres,
}

impl Server {
    fn start() -> Server {
        let pg = TempPostgres::start(TempPostgresOptions::default()).expect("starting PostgreSQL");
        pg.psql("postgres", "CREATE DATABASE store").unwrap();
        Server { pg }
    }

    fn target(&self) -> PgTarget {
        let url = format!("postgres://{}@{}/store", self.pg.superuser, self.pg.addr());
        PgTarget::parse(&url, Some(&self.pg.superuser_password), None).unwrap()
    }

    async fn node(&self, id: &str) -> PgStore {
        PgStore::open(self.target(), PgMode::Node(id.into(), AuditSync::Full))
            .await
            .unwrap()
    }

    fn sql(&self, sql: &str) -> String {
        self.pg.psql("store", sql).unwrap()
    }
}

async fn wait_for<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sessions appending at once share transactions; each acknowledged record
/// is in the store when its append returns, chained, under its node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_committed_before_they_return_and_chains_verify() {
    let server = Server::start();
    let store = Arc::new(server.node("a").await);
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let id = format!("s{t}");
                store.append(&id, start_event()).await.unwrap();
                for n in 1..=40 {
                    store.append(&id, decided(n)).await.unwrap();
                    store.append_background(&id, finished(n));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // Every acknowledged decision is committed: another connection sees it.
    let decided_rows =
        server.sql("SELECT count(*) FROM sluice_records WHERE kind = 'command_decided'");
    assert_eq!(decided_rows.trim(), "320");
    store.flush().await.unwrap();
    let batches = server.sql("SELECT count(DISTINCT xmin::text) FROM sluice_records");
    assert!(
        batches.trim().parse::<u64>().unwrap() < 8 + 8 * 40 * 2,
        "records were not group-committed: {batches} transactions"
    );
    let sessions = store.sessions().await.unwrap();
    assert_eq!(sessions.len(), 8);
    assert!(sessions.iter().all(|s| s.commands == 40 && s.node == "a"));
    let report = store.verify().await.unwrap();
    assert_eq!((report.sessions, report.records), (8, 8 * 81));
    assert!(report.first_break.is_none(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_or_removed_record_is_named_by_verify() {
    let server = Server::start();
    let store = server.node("a").await;
    store.append("s1", start_event()).await.unwrap();
    for n in 1..=3 {
        store.append("s1", decided(n)).await.unwrap();
    }
    server.sql(
        "UPDATE sluice_records SET body = replace(body, 'select 2', 'select 9') WHERE seq = 3",
    );
    let broken = store.verify().await.unwrap().first_break.expect("a break");
    assert_eq!(
        (broken.session_id.as_str(), broken.seq),
        ("s1", 3),
        "{broken}"
    );
    server.sql(
        "UPDATE sluice_records SET body = replace(body, 'select 9', 'select 2') WHERE seq = 3",
    );
    assert!(store.verify().await.unwrap().first_break.is_none());
    server.sql("DELETE FROM sluice_records WHERE seq = 4");
    let broken = store.verify().await.unwrap().first_break.expect("a break");
    assert_eq!(broken.seq, 4, "{broken}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_see_each_others_sessions_and_one_node_id_is_one_process() {
    let server = Server::start();
    let a = server.node("a").await;
    let b = server.node("b").await;
    a.append("on-a", start_event()).await.unwrap();
    b.append("on-b", start_event()).await.unwrap();
    for store in [&a, &b] {
        let nodes: Vec<(String, String)> = store
            .sessions()
            .await
            .unwrap()
            .into_iter()
            .map(|s| (s.id, s.node))
            .collect();
        assert_eq!(
            nodes,
            [("on-a".into(), "a".into()), ("on-b".into(), "b".into())]
        );
    }
    assert_eq!(b.session_records("on-a").await.unwrap().len(), 1);
    let err = PgStore::open(server.target(), PgMode::Node("a".into(), AuditSync::Normal))
        .await
        .expect_err("a second process with node id a");
    assert!(
        err.to_string()
            .contains("in use by another gateway process"),
        "{err}"
    );
    assert!(matches!(
        a.append("nobody", decided(1)).await,
        Err(StoreError::UnknownSession(_))
    ));
}

/// A node that stops heartbeating has its open sessions ended by a
/// survivor, with the reason in the chain; the node rejoins under its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_nodes_sessions_are_ended_by_a_survivor() {
    let server = Server::start();
    let a = server.node("a").await;
    let b = server.node("b").await;
    a.append("on-a", start_event()).await.unwrap();
    a.append("on-a", decided(1)).await.unwrap();
    b.append("on-b", start_event()).await.unwrap();
    drop(a);
    let started = Instant::now();
    let ended = wait_for("a's session ended by b", async || {
        let s = b.sessions().await.unwrap();
        s.into_iter()
            .find(|s| s.id == "on-a" && s.ended_at_ms.is_some())
    })
    .await;
    assert!(started.elapsed() >= HEARTBEAT_LAPSE - Duration::from_secs(1));
    let reason = ended.end_reason.unwrap_or_default();
    assert!(
        reason.contains("node a stopped") && reason.contains("by node b"),
        "{reason}"
    );
    assert!(b.verify().await.unwrap().first_break.is_none());
    let live_b = b.sessions().await.unwrap();
    assert!(live_b
        .iter()
        .any(|s| s.id == "on-b" && s.ended_at_ms.is_none()));
    // The id is free again; a restarted node closes nothing twice.
    let a = server.node("a").await;
    assert_eq!(a.close_orphaned_sessions("restarted").await.unwrap(), 0);
    // A record after the end chains from the survivor's end record.
    a.append("on-a", finished(1)).await.unwrap();
    assert!(a.verify().await.unwrap().first_break.is_none());
}

/// The store down: durable appends fail with a message that says so, and
/// nothing is acknowledged that is not committed; background records wait
/// and are written when it returns, and appends work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_fails_appends_and_service_resumes() {
    let mut server = Server::start();
    let store = server.node("a").await;
    store.append("s1", start_event()).await.unwrap();
    store.append("s1", decided(1)).await.unwrap();
    server.pg.stop();
    store.append_background("s1", finished(1));
    let err = store
        .append("s1", decided(2))
        .await
        .expect_err("the store is down");
    assert!(err.to_string().contains("audit store unavailable"), "{err}");
    assert!(store.ready().await.is_err());
    server.pg.start_again().unwrap();
    wait_for("appends to work again", async || {
        store.append("s1", decided(3)).await.ok()
    })
    .await;
    store.flush().await.unwrap();
    let records = store.session_records("s1").await.unwrap();
    let kinds: Vec<String> = records
        .iter()
        .map(|r| r.event().unwrap().kind().to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "session_start",
            "command_decided",
            "command_finished",
            "command_decided"
        ]
    );
    assert!(!records.iter().any(|r| r.body.contains("select 2")));
    assert!(store.verify().await.unwrap().first_break.is_none());
    store.ready().await.unwrap();
}

/// Nodes starting together race to migrate; one applies, all agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_at_once_migrate_once() {
    let server = Server::start();
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let target = server.target();
            tokio::spawn(async move { PgStore::open(target, PgMode::Reader).await.map(|_| ()) })
        })
        .collect();
    for o in opens {
        o.await.unwrap().unwrap();
    }
    assert_eq!(
        server
            .sql("SELECT string_agg(version::text, ',' ORDER BY version) FROM sluice_migrations")
            .trim(),
        (1..=schema::latest())
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
}

#[test]
fn a_password_in_the_url_is_refused_and_never_shown() {
    let err = PgTarget::parse("postgres://u:hunter2@127.0.0.1/db", None, None).unwrap_err();
    assert!(
        err.contains("store_password") && !err.contains("hunter2"),
        "{err}"
    );
    let target = PgTarget::parse("postgres://u@127.0.0.1:6000/db", Some("hunter2"), None).unwrap();
    assert_eq!(format!("{target:?}"), "postgres://u@127.0.0.1:6000/db");
}

/// An archive in bucket `recordings` of a throwaway S3-compatible server.
fn archive(s3: &sluice_sandbox::TempS3) -> crate::Archive {
    s3.create_bucket("recordings").unwrap();
    crate::Archive::open(&crate::ArchiveSettings {
        url: "s3://recordings/unit".into(),
        endpoint: Some(s3.endpoint()),
        region: Some("us-east-1".into()),
        access_key_id: Some("k".into()),
        secret_access_key: Some("s".into()),
    })
    .unwrap()
}

/// An ended session's chain is written to object storage and read back by
/// `session_records`; `verify` names an object that is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_sessions_recording_goes_to_object_storage() {
    let server = Server::start();
    let s3 = sluice_sandbox::TempS3::start().expect("moto's S3 server");
    let archive = archive(&s3);
    let store = server.node("a").await.with_recordings(archive.clone());
    store.append("s1", start_event()).await.unwrap();
    store.append("s1", decided(1)).await.unwrap();
    store
        .append(
            "s1",
            AuditEvent::SessionEnd {
                reason: "done".into(),
            },
        )
        .await
        .unwrap();
    let key = wait_for("the recording", async || {
        let row = server.sql("SELECT archive_key FROM sluice_sessions WHERE id = 's1'");
        let key = row.trim().to_string();
        (!key.is_empty()).then_some(key)
    })
    .await;
    assert_eq!(key, "unit/sessions/s1-3.jsonl");
    assert_eq!(store.session_records("s1").await.unwrap().len(), 3);
    assert!(store.verify().await.unwrap().first_break.is_none());
}

/// TLS to the store verifies the server: with its certificate as the CA the
/// node opens; with the public roots alone it is refused, never downgraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_store_verifies_the_server() {
    let pg = TempPostgres::start(TempPostgresOptions {
        ssl: true,
        ..Default::default()
    })
    .expect("starting PostgreSQL with ssl");
    if !pg.ssl {
        eprintln!("skipped: no openssl CLI to make a server certificate");
        return;
    }
    pg.psql("postgres", "CREATE DATABASE store").unwrap();
    let url = format!(
        "postgres://{}@localhost:{}/store?hostaddr=127.0.0.1&sslmode=require",
        pg.superuser, pg.port
    );
    let password = Some(pg.superuser_password.as_str());
    let ca = pg.data_dir.join("server.crt");
    let trusted = PgTarget::parse(&url, password, Some(&ca)).unwrap();
    let store = PgStore::open(trusted, PgMode::Node("tls".into(), AuditSync::Normal))
        .await
        .unwrap();
    store.append("s1", start_event()).await.unwrap();
    let encrypted = pg
        .psql(
            "store",
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = 'sluice' AND s.ssl",
        )
        .unwrap();
    assert!(encrypted.trim().parse::<u32>().unwrap() >= 1, "{encrypted}");
    let unverified = PgTarget::parse(&url, password, None).unwrap();
    let err = PgStore::open(unverified, PgMode::Reader).await.unwrap_err();
    assert!(err.to_string().contains("cannot reach"), "{err}");
}

#[test]
fn tls_is_required_for_a_store_on_another_host_unless_the_url_says_otherwise() {
    use tokio_postgres::config::SslMode;
    let mode = |url: &str| {
        PgTarget::parse(url, None, None)
            .unwrap()
            .config
            .get_ssl_mode()
    };
    assert_eq!(mode("postgres://u@db.internal:5432/x"), SslMode::Require);
    assert_eq!(mode("postgres://u@10.0.0.5/x"), SslMode::Require);
    assert_eq!(mode("postgres://u@127.0.0.1/x"), SslMode::Prefer);
    assert_eq!(mode("postgres://u@localhost/x"), SslMode::Prefer);
    assert_eq!(
        mode("postgres://u@db.internal/x?sslmode=disable"),
        SslMode::Disable
    );
    assert_eq!(
        mode("postgres://u@db.internal/x?sslmode=prefer"),
        SslMode::Require
    );
    assert_eq!(
        mode("postgres://u@localhost/x?hostaddr=10.0.0.5"),
        SslMode::Require
    );
    assert_eq!(mode("postgres://u@/x?hostaddr=10.0.0.5"), SslMode::Require);
}
