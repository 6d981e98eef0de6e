//! What indexing the embedded store's journal costs per record: writes a
//! journal of pgbench-like sessions, then times a fresh index of it (the
//! work the gateway's indexer thread does as records arrive). Run by
//! `cargo xtask bench`.

use sluice_core::audit::{AuditEvent, Store};
use sluice_core::config::AuditSync;
use sluice_core::model::{Action, Command, CommandKind, Identity, Outcome, Protocol, Verdict};
use sluice_store::{Mode, SqliteStore};
use std::time::{Duration, Instant, SystemTime};

const SESSIONS: u64 = 20;
const COMMANDS: u64 = 2_500;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("index_bench: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let records = {
        let store = SqliteStore::open(dir.path(), Mode::Writer(AuditSync::Normal))?;
        write_sessions(&store).await?
    };
    let journal = std::fs::metadata(dir.path().join("journal.log"))?.len();
    // Index the whole journal again from scratch, in this thread.
    for f in ["sluice.db", "sluice.db-wal", "sluice.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(f));
    }
    let reader = SqliteStore::open(dir.path(), Mode::Reader)?;
    let (start, cpu) = (Instant::now(), process_cpu_seconds());
    let listed = reader.sessions().await?.len();
    let took = start.elapsed().as_secs_f64();
    // CPU time, when the kernel tells it: wall time counts what other
    // processes on a busy machine take from this one.
    let cpu = cpu.zip(process_cpu_seconds()).map(|(a, b)| b - a);
    let db: u64 = ["sluice.db", "sluice.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.path().join(f)).ok())
        .map(|m| m.len())
        .sum();
    let per_record = |s: f64| s * 1e6 / records as f64;
    println!(
        "Audit index (embedded store): {:.1} µs per record ({}) over {records} records of {listed} sessions; journal {} KiB, index {} KiB",
        per_record(took),
        cpu.map_or("wall time".into(), |c| format!("{:.1} µs of CPU", per_record(c))),
        journal >> 10,
        db >> 10
    );
    Ok(())
}

/// This process's user and system time (Linux `/proc`, 100 ticks a second).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

async fn write_sessions(store: &SqliteStore) -> Result<u64, Box<dyn std::error::Error>> {
    let mut records = 0;
    for s in 0..SESSIONS {
        let id = format!("01a25034-a7da-7036-af66-{s:012}");
        store.append(&id, start()).await?;
        for n in 1..=COMMANDS {
            store.append(&id, decided(n)).await?;
            store.append(&id, finished(n)).await?;
        }
        store
            .append(
                &id,
                AuditEvent::SessionEnd {
                    reason: "closed".into(),
                },
            )
            .await?;
        records += 2 + 2 * COMMANDS;
    }
    Ok(records)
}

fn start() -> AuditEvent {
    AuditEvent::SessionStart {
        identity: Identity {
            subject: "bench-agent".into(),
            groups: vec!["agents".into()],
            issuer: "sluice".into(),
            token_id: "t".into(),
            expires_at: SystemTime::now() + Duration::from_secs(3600),
            connections: None,
        },
        connection: "appdb".into(),
        protocol: Protocol::Postgres,
        client_addr: "127.0.0.1:40000".into(),
    }
}

/// pgbench's select, as the relay records it.
fn decided(n: u64) -> AuditEvent {
    AuditEvent::CommandDecided {
        command_id: n,
        command: Command {
            kind: CommandKind::SqlExecute {
                statement: String::new(),
                portal: String::new(),
            },
            text: "SELECT abalance FROM pgbench_accounts WHERE aid = $1;".into(),
            context: vec![],
        },
        verdict: Verdict {
            action: Action::Allow,
            rule: None,
            message: None,
        },
    }
}

fn finished(n: u64) -> AuditEvent {
    AuditEvent::CommandFinished {
        command_id: n,
        outcome: Outcome {
            rows: 1,
            bytes: 11,
            tag: Some("SELECT 1".into()),
            duration_us: 80 + n % 40,
            sample: vec![vec![Some((n * 7 % 5000).to_string())]],
            columns: vec!["abalance".into()],
            ..Outcome::default()
        },
    }
}
