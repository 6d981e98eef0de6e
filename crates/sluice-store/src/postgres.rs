//! The PostgreSQL store several gateway nodes share (`[gateway] store =
//! "postgres://…"`): the same `Store` contract as the embedded store, with
//! each record committed before `append` returns (write-ahead audit). One
//! writer task per node batches the records of all its sessions into one
//! transaction (group commit); every node heartbeats, and the survivors end
//! the sessions of a node whose heartbeat lapsed.

use sluice_core::audit::{
    verify_chain, AuditEvent, AuditRecord, SessionSummary, Store, StoreError, VerifyReport,
};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

mod events;
use crate::now_ms;
mod nodes;
mod recordings;
mod schema;
mod writer;

pub use events::PgCluster;
pub use nodes::HEARTBEAT_LAPSE;

/// How long a connection attempt to the store may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The server notices a vanished client within about 25 s.
const SERVER_KEEPALIVES: &str =
    "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3";
/// How long opening (migrations included) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one query or batch may take before the store counts as unreachable.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// A database error: logged whole for the operator; what reaches a client
/// (through a refusal) names no host, table row or other session.
pub(crate) fn backend<E: std::error::Error + Send + Sync + 'static>(e: E) -> StoreError {
    tracing::warn!(message = "The PostgreSQL store failed an operation.", error = %e);
    StoreError::Unavailable(
        "the PostgreSQL store failed the operation (see the gateway log)".into(),
    )
}

/// Where the store is and how to log in. The password comes from a secret
/// reference, never the URL, and is never shown. TLS, when used, always
/// verifies the server (`store_ca`, or the public roots); it is required
/// unless the store is on this host or the URL says `sslmode`.
#[derive(Clone)]
pub struct PgTarget {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    shown: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl PgTarget {
    /// Parses a `postgres://user@host:port/db` URL; a password in it is refused
    /// (it would sit in the config file), `password` supplies it instead.
    pub fn parse(url: &str, password: Option<&str>, ca: Option<&Path>) -> Result<Self, String> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| format!("not a PostgreSQL URL: {e}"))?;
        if config.get_password().is_some() {
            return Err(
                "the store URL holds a password; give it as gateway.store_password = { env = … } or { file = … }"
                    .into(),
            );
        }
        if let Some(p) = password {
            config.password(p);
        }
        // Server-side keepalives too: a node cut off by the network must lose
        // its node-id lock within a minute, not the kernel's two hours.
        let options = match config.get_options() {
            Some(o) => format!("{o} {SERVER_KEEPALIVES}"),
            None => SERVER_KEEPALIVES.to_string(),
        };
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .options(&options)
            .application_name("sluice");
        // `prefer` (libpq's default) would let a network attacker answer "no
        // TLS": off this host only an explicit `sslmode=disable` allows plaintext.
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Prefer
            && !on_this_host(&config)
        {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        let tls = sluice_core::tls::upstream_client_config(
            sluice_core::config::UpstreamTls::VerifyFull,
            ca,
        )
        .map_err(|e| format!("store TLS: {e}"))?
        .ok_or("store TLS: no client configuration")?;
        let shown = shown(&config);
        Ok(PgTarget {
            config,
            tls: MakeRustlsConnect::new((*tls).clone()),
            shown,
        })
    }

    async fn open(
        &self,
    ) -> Result<
        (
            Client,
            tokio_postgres::Connection<
                tokio_postgres::Socket,
                <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<
                    tokio_postgres::Socket,
                >>::Stream,
            >,
        ),
        StoreError,
    > {
        tokio::time::timeout(CONNECT_TIMEOUT, self.config.connect(self.tls.clone()))
            .await
            .map_err(|_| self.unreachable("no answer"))?
            .map_err(|e| self.unreachable(&e.to_string()))
    }

    /// A new connection whose notifications wake the returned receiver
    /// (its driver runs until the connection ends or the driver is aborted).
    pub(crate) async fn connect_notified(
        &self,
    ) -> Result<
        (
            Client,
            mpsc::UnboundedReceiver<()>,
            tokio::task::JoinHandle<()>,
        ),
        StoreError,
    > {
        let (client, mut connection) = self.open().await?;
        let (wake, woken) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = futures_util::StreamExt::next(&mut messages).await {
                let notified = matches!(message, tokio_postgres::AsyncMessage::Notification(_));
                if notified && wake.send(()).is_err() {
                    break;
                }
            }
        });
        Ok((client, woken, driver))
    }

    /// A new connection; its driver runs on the current runtime.
    pub(crate) async fn connect(&self) -> Result<Client, StoreError> {
        let (client, connection) = self.open().await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(message = "A store connection ended.", error = %e);
            }
        });
        Ok(client)
    }

    pub(crate) fn unreachable(&self, why: &str) -> StoreError {
        tracing::warn!(message = "The PostgreSQL store is unreachable.", store = ?self, error = %why);
        StoreError::Unavailable("cannot reach the PostgreSQL store (see the gateway log)".into())
    }
}

/// Whether the URL names hosts and every one is a Unix socket or a loopback
/// address, and so is every `hostaddr` (which is where it connects).
fn on_this_host(config: &tokio_postgres::Config) -> bool {
    let hosts = config.get_hosts();
    let local = |h: &tokio_postgres::config::Host| match h {
        tokio_postgres::config::Host::Unix(_) => true,
        tokio_postgres::config::Host::Tcp(h) => {
            h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    };
    !hosts.is_empty()
        && hosts.iter().all(local)
        && config.get_hostaddrs().iter().all(|a| a.is_loopback())
}

/// The URL as shown in logs: user, hosts, port and database.
fn shown(config: &tokio_postgres::Config) -> String {
    let hosts = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect::<Vec<_>>()
        .join(",");
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{hosts}:{port}/{}",
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or("")
    )
}

/// A shared connection for reads, reopened when it breaks.
struct Reader {
    target: PgTarget,
    client: Mutex<Option<Arc<Client>>>,
}

impl Reader {
    async fn client(&self) -> Result<Arc<Client>, StoreError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let client = Arc::new(self.target.connect().await?);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Runs a read with the store's query deadline.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let client = self.client().await?;
        tokio::time::timeout(QUERY_TIMEOUT, client.query(sql, params))
            .await
            .map_err(|_| self.target.unreachable("a read took too long"))?
            .map_err(backend)
    }
}

/// How a process uses the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgMode {
    /// A gateway node with this id: it appends (committing as `audit_sync`
    /// says), heartbeats and ends the sessions of nodes that stopped.
    Node(String, sluice_core::config::AuditSync),
    /// CLI commands: reads only.
    Reader,
}

/// The PostgreSQL store (see the module docs).
pub struct PgStore {
    target: PgTarget,
    reader: Reader,
    node: Option<String>,
    writer: Option<mpsc::UnboundedSender<writer::Pending>>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    /// `sluice store migrate`'s connection (a transaction per session).
    importer: Mutex<Option<Client>>,
    /// Where ended sessions' recordings go (`[gateway] recordings`).
    archive: Option<crate::Archive>,
    /// Woken by the writer when a session ends (the recordings task waits on it).
    ended: Arc<tokio::sync::Notify>,
    /// When the other nodes' events were last read (unix ms; 0: not yet).
    synced: Arc<std::sync::atomic::AtomicU64>,
    /// The writer's backlog and whether it is failing.
    health: Arc<writer::Health>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.target)
            .field("node", &self.node)
            .finish()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
    }
}

impl PgStore {
    /// Connects, applies the schema migrations, and for a node claims its id
    /// (one process per node id), registers it and starts its writer and heartbeat.
    pub async fn open(target: PgTarget, mode: PgMode) -> Result<Self, StoreError> {
        let mut client = target.connect().await?;
        tokio::time::timeout(OPEN_TIMEOUT, schema::migrate(&mut client))
            .await
            .map_err(|_| target.unreachable("migrating the schema took too long"))??;
        let reader = Reader {
            target: target.clone(),
            client: Mutex::new(None),
        };
        let PgMode::Node(node, sync) = mode else {
            return Ok(PgStore {
                target,
                reader,
                node: None,
                writer: None,
                heartbeat: None,
                importer: Mutex::new(None),
                archive: None,
                ended: Arc::default(),
                synced: Arc::default(),
                health: Arc::default(),
            });
        };
        tokio::time::timeout(QUERY_TIMEOUT, nodes::claim(&client, &node, &target))
            .await
            .map_err(|_| target.unreachable("claiming the node id took too long"))??;
        let (tx, rx) = mpsc::unbounded_channel();
        let ended = Arc::new(tokio::sync::Notify::new());
        let health = Arc::new(writer::Health::default());
        tokio::spawn(writer::run(
            rx,
            writer::Connection::new(target.clone(), node.clone(), sync, client),
            ended.clone(),
            health.clone(),
        ));
        let heartbeat = tokio::spawn(nodes::heartbeat(target.clone(), node.clone()));
        Ok(PgStore {
            target,
            reader,
            node: Some(node),
            writer: Some(tx),
            heartbeat: Some(heartbeat),
            importer: Mutex::new(None),
            archive: None,
            ended,
            synced: Arc::default(),
            health,
        })
    }

    /// Publishes this node's cluster events (none for a reader).
    pub fn cluster(&self) -> Option<Arc<PgCluster>> {
        let node = self.node.clone()?;
        Some(Arc::new(PgCluster::new(
            self.target.clone(),
            node,
            self.synced.clone(),
        )))
    }

    /// Applies the other nodes' events with `apply` (a node only): the
    /// revocations still in force before it returns, then each new event
    /// within a second of its publication.
    pub async fn follow(
        &self,
        apply: Arc<dyn Fn(sluice_core::cluster::ClusterEvent) + Send + Sync>,
    ) -> Result<(), StoreError> {
        let Some(node) = &self.node else {
            return Ok(());
        };
        let seen = events::catch_up(&self.target, node, &apply, self.synced.clone()).await?;
        tokio::spawn(events::follow(
            self.target.clone(),
            node.clone(),
            apply,
            seen,
        ));
        Ok(())
    }

    /// Keeps ended sessions' recordings in `archive`; a node writes them
    /// there (its own and any other ended session not yet written), readers
    /// read them back.
    pub fn with_recordings(mut self, archive: crate::Archive) -> Self {
        if self.node.is_some() {
            tokio::spawn(recordings::run(
                self.target.clone(),
                archive.clone(),
                self.ended.clone(),
            ));
        }
        self.archive = Some(archive);
        self
    }

    /// This node's id (none for a reader).
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    fn writer(&self) -> Result<&mpsc::UnboundedSender<writer::Pending>, StoreError> {
        self.writer
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("the store was opened read-only".into()))
    }

    async fn send(&self, session_id: &str, event: Option<AuditEvent>) -> Result<(), StoreError> {
        self.within_backlog()?;
        let (done, wait) = oneshot::channel();
        self.queue(session_id, event, Some(done))?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues a record for the writer, counted in its backlog.
    fn queue(
        &self,
        session_id: &str,
        event: Option<AuditEvent>,
        done: Option<oneshot::Sender<Result<(), StoreError>>>,
    ) -> Result<(), StoreError> {
        let size = writer::weight(&event);
        self.health.backlog.fetch_add(size, Ordering::Relaxed);
        let sent = self.writer().and_then(|w| {
            w.send(writer::Pending {
                session_id: session_id.to_string(),
                event,
                at_ms: now_ms(),
                done,
                size,
            })
            .map_err(|_| StoreError::Closed)
        });
        if sent.is_err() {
            self.health.backlog.fetch_sub(size, Ordering::Relaxed);
        }
        sent
    }

    /// Fails closed while the writer holds more than it may.
    fn within_backlog(&self) -> Result<(), StoreError> {
        let backlog = self.health.backlog.load(Ordering::Relaxed);
        if backlog > writer::MAX_BACKLOG {
            return Err(StoreError::Unavailable(format!(
                "the audit store is behind: {} MiB of records wait to be written; commands are refused until they are",
                backlog >> 20
            )));
        }
        Ok(())
    }

    /// Returns once every record queued before it is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.send("", None).await
    }

    /// Ends the sessions this node left open when it stopped (crashed or
    /// killed), appending a `session_end` to each chain.
    pub async fn close_orphaned_sessions(&self, reason: &str) -> Result<usize, StoreError> {
        let node = self.node.clone().unwrap_or_default();
        let open = self
            .reader
            .query(
                "SELECT id FROM sluice_sessions WHERE node = $1 AND ended_at_ms IS NULL",
                &[&node],
            )
            .await?;
        for row in &open {
            let id: String = row.get(0);
            let end = AuditEvent::SessionEnd {
                reason: reason.to_string(),
            };
            self.append(&id, end).await?;
        }
        Ok(open.len())
    }

    /// Copies one session's verified chain from another store (`sluice store
    /// migrate`); a session already here with the same head is skipped.
    pub async fn import(
        &self,
        summary: &SessionSummary,
        records: &[AuditRecord],
        node: &str,
    ) -> Result<Imported, StoreError> {
        let mut slot = self.importer.lock().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = Some(self.target.connect().await?);
        }
        let client = slot
            .as_mut()
            .ok_or_else(|| self.target.unreachable("not connected"))?;
        writer::import(client, summary, records, node).await
    }
}

impl PgStore {
    /// The recording object a session row names, with the archive to read it.
    fn archived(&self, row: &tokio_postgres::Row) -> Option<(&crate::Archive, crate::Archived)> {
        let key: Option<String> = row.get("archive_key");
        let archived = crate::Archived {
            key: key?,
            sha256: row.get::<_, Option<String>>("archive_sha256")?,
            records: row.get::<_, Option<i64>>("archived_records").unwrap_or(0) as u64,
        };
        Some((self.archive.as_ref()?, archived))
    }

    /// Why a session's recording object does not match its chain, if it does not.
    async fn check_recording(
        &self,
        row: &tokio_postgres::Row,
        records: &[AuditRecord],
    ) -> Option<String> {
        let key: Option<String> = row.get("archive_key");
        let key = key?;
        if row.get::<_, Option<String>>("archive_sha256").is_none() {
            return Some(format!("its recording {key} has no hash in the store"));
        }
        let Some((archive, archived)) = self.archived(row) else {
            return Some(format!(
                "its recording {key} is in object storage, and no [gateway] recordings is configured here to check it"
            ));
        };
        let recorded = match archive.get(&archived).await {
            Ok(r) => r,
            Err(problem) => return Some(format!("{problem} ({key})")),
        };
        let stored = records.get(..archived.records as usize).unwrap_or(records);
        if recorded.len() != archived.records as usize || recorded != stored {
            let at = recorded
                .iter()
                .zip(stored)
                .position(|(a, b)| a != b)
                .unwrap_or(recorded.len().min(stored.len()));
            return Some(format!(
                "its recording object ({key}) differs from the store's chain at record #{}",
                at + 1
            ));
        }
        None
    }
}

/// What `PgStore::import` did with a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    Copied,
    AlreadyThere,
}

fn summary(row: &tokio_postgres::Row) -> SessionSummary {
    let groups: String = row.get("groups_json");
    SessionSummary {
        id: row.get("id"),
        subject: row.get("subject"),
        issuer: row.get("issuer"),
        groups: serde_json::from_str(&groups).unwrap_or_default(),
        connection: row.get("connection"),
        protocol: row.get("protocol"),
        client_addr: row.get("client_addr"),
        started_at_ms: row.get::<_, i64>("started_at_ms") as u64,
        ended_at_ms: row.get::<_, Option<i64>>("ended_at_ms").map(|v| v as u64),
        end_reason: row.get("end_reason"),
        commands: row.get::<_, i64>("commands") as u64,
        node: row.get("node"),
    }
}

fn record(row: &tokio_postgres::Row) -> AuditRecord {
    AuditRecord {
        session_id: row.get("session_id"),
        seq: row.get::<_, i64>("seq") as u64,
        at_ms: row.get::<_, i64>("at_ms") as u64,
        body: row.get("body"),
        prev_hash: row.get("prev_hash"),
        hash: row.get("hash"),
    }
}

const RECORD_COLUMNS: &str = "session_id, seq, at_ms, body, prev_hash, hash";

#[async_trait::async_trait]
impl Store for PgStore {
    async fn ready(&self) -> Result<(), StoreError> {
        self.reader.query("SELECT 1", &[]).await?;
        self.within_backlog()?;
        // After a failed batch, an empty one tells whether writes work again
        // (an idle node would otherwise stay unready).
        if self.health.failing.load(Ordering::Relaxed)
            && !matches!(
                tokio::time::timeout(QUERY_TIMEOUT, self.flush()).await,
                Ok(Ok(()))
            )
        {
            return Err(StoreError::Unavailable(
                "the audit store refuses this node's records (see the gateway log)".into(),
            ));
        }
        if self.node.is_some() && self.synced.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            events::in_sync(&self.synced).map_err(StoreError::Unavailable)?;
        }
        Ok(())
    }

    async fn append(&self, session_id: &str, event: AuditEvent) -> Result<(), StoreError> {
        self.send(session_id, Some(event)).await
    }

    fn append_background(&self, session_id: &str, event: AuditEvent) {
        // Beyond the backlog the record is dropped, loudly; the node refuses
        // commands meanwhile (`send`) and is not ready.
        let queued = self
            .within_backlog()
            .and_then(|()| self.queue(session_id, Some(event), None));
        if let Err(e) = queued {
            tracing::error!(message = "An audit record could not be stored.", session = %session_id, error = %e);
        }
    }

    async fn sessions(&self) -> Result<Vec<SessionSummary>, StoreError> {
        let rows = self
            .reader
            .query(
                "SELECT * FROM sluice_sessions ORDER BY started_at_ms, id",
                &[],
            )
            .await?;
        Ok(rows.iter().map(summary).collect())
    }

    async fn session(&self, id: &str) -> Result<Option<SessionSummary>, StoreError> {
        let rows = self
            .reader
            .query("SELECT * FROM sluice_sessions WHERE id = $1", &[&id])
            .await?;
        Ok(rows.first().map(summary))
    }

    async fn session_records(&self, session_id: &str) -> Result<Vec<AuditRecord>, StoreError> {
        let known = self
            .reader
            .query(
                "SELECT archive_key, archive_sha256, archived_records FROM sluice_sessions WHERE id = $1",
                &[&session_id],
            )
            .await?;
        if known.is_empty() {
            return Err(StoreError::UnknownSession(session_id.to_string()));
        }
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM sluice_records WHERE session_id = $1 ORDER BY seq"
        );
        let rows = self.reader.query(&sql, &[&session_id]).await?;
        let stored: Vec<AuditRecord> = rows.iter().map(record).collect();
        // The recording object when there is one (read back and checked);
        // records after it (an approval decided after the end) from the store.
        match self.archived(&known[0]) {
            Some((archive, archived)) => match archive.get(&archived).await {
                Ok(mut recorded) => {
                    recorded.extend(stored.into_iter().skip(archived.records as usize));
                    Ok(recorded)
                }
                Err(problem) => {
                    tracing::warn!(message = "Replaying from the store.", session = %session_id, problem = %problem);
                    Ok(stored)
                }
            },
            None => Ok(stored),
        }
    }

    async fn verify(&self) -> Result<VerifyReport, StoreError> {
        let heads = self
            .reader
            .query(
                "SELECT id, last_seq, head_hash, archive_key, archive_sha256, archived_records
                 FROM sluice_sessions ORDER BY started_at_ms, id",
                &[],
            )
            .await?;
        let mut report = VerifyReport::default();
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM sluice_records WHERE session_id = $1 ORDER BY seq"
        );
        for head in &heads {
            let id: String = head.get(0);
            let last_seq = head.get::<_, i64>(1) as u64;
            let head_hash: String = head.get(2);
            let records: Vec<AuditRecord> = self
                .reader
                .query(&sql, &[&id])
                .await?
                .iter()
                .map(record)
                .collect();
            report.sessions += 1;
            report.records += records.len() as u64;
            if let Err(b) = verify_chain(&id, &records, Some((last_seq, &head_hash))) {
                report.first_break = Some(b);
                return Ok(report);
            }
            if let Some(problem) = self.check_recording(head, &records).await {
                report.first_break = Some(sluice_core::audit::ChainBreak {
                    session_id: id,
                    seq: 1,
                    problem,
                });
                return Ok(report);
            }
        }
        // Records of a session the store has no head for were not written by a gateway.
        let orphan = self
            .reader
            .query(
                "SELECT session_id FROM sluice_records r WHERE NOT EXISTS
                     (SELECT 1 FROM sluice_sessions s WHERE s.id = r.session_id) LIMIT 1",
                &[],
            )
            .await?;
        if let Some(row) = orphan.first() {
            report.first_break = Some(sluice_core::audit::ChainBreak {
                session_id: row.get(0),
                seq: 1,
                problem: "records of a session the store has no entry for (session removed?)"
                    .into(),
            });
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests;
