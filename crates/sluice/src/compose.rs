//! Composition: store + gateway + listeners. Everything here wires crates
//! together; behaviour belongs in the crates.

use crate::stores::Opened;
use anyhow::{Context, Result};
use sluice_core::config::SessionScheduling;
use sluice_core::{Config, GatewayBuilder};
use sluice_store::SqliteStore;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    serving_runtime(None, SessionScheduling::Shared)
}

/// The gateway's runtime: `gateway.worker_threads` threads, or one per CPU;
/// one thread when sessions run on pinned threads of their own (it keeps
/// the accept loops and background work).
pub fn serving_runtime(
    worker_threads: Option<usize>,
    scheduling: SessionScheduling,
) -> Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    match (scheduling, worker_threads) {
        (SessionScheduling::Pinned, _) => {
            builder.worker_threads(1);
        }
        (SessionScheduling::Shared, Some(n)) => {
            builder.worker_threads(n);
        }
        (SessionScheduling::Shared, None) => {}
    }
    Ok(builder.enable_all().build()?)
}

/// The match keys the protocols in this build contribute to `[[rules]]`.
fn match_keys() -> Vec<Arc<dyn sluice_core::pipeline::policy::MatchKey>> {
    vec![
        sluice_postgres::sql_match_key(),
        sluice_http::http_match_key(),
        sluice_kube::kube_match_key(),
        sluice_shell::shell_match_key(),
        sluice_ssh::ssh_match_key(),
        sluice_mcp::mcp_match_key(),
    ]
}

/// The connection kinds this binary serves, each checked by its crate.
fn connection_kinds() -> sluice_core::gateway::ConnectionKinds {
    let mut kinds = sluice_core::gateway::ConnectionKinds::default();
    kinds.add(
        sluice_postgres::settings::KIND,
        sluice_postgres::settings::KEYS,
        Arc::new(sluice_postgres::settings::validate),
    );
    kinds.add(
        sluice_ssh::settings::KIND,
        sluice_ssh::settings::KEYS,
        Arc::new(sluice_ssh::settings::validate),
    );
    kinds.add(
        sluice_http::settings::KIND,
        sluice_http::settings::HTTP_KEYS,
        Arc::new(sluice_http::settings::validate),
    );
    kinds.add(
        sluice_kube::settings::KIND,
        sluice_kube::settings::KEYS,
        Arc::new(sluice_kube::settings::validate),
    );
    kinds.add(
        sluice_mcp::upstream::KIND,
        sluice_mcp::upstream::MCP_KEYS,
        Arc::new(sluice_mcp::upstream::validate),
    );
    kinds
}

/// The connection kinds the HTTP listener serves, and the flavor of each.
fn http_flavors() -> sluice_http::FlavorRegistry {
    let mut flavors = sluice_http::default_flavors();
    flavors.insert(
        sluice_core::config::ConnectionKind::Kubernetes,
        sluice_kube::kube_flavor(),
    );
    flavors
}

/// Everything `config check` can verify without starting listeners.
pub fn check(config: &Config) -> Result<()> {
    GatewayBuilder::check_rules(config, &match_keys())?;
    // Every connection kind this binary serves, checked by its crate.
    connection_kinds().check(config)?;
    sluice_core::token::TokenAuthority::check_config(config)?;
    if let Some(name) = config.listen.protocols.keys().next() {
        return Err(config
            .error_at(
                &format!("listen.protocols.{name}"),
                "this binary serves no contributed protocol; run a gateway assembled with that protocol's crate (see examples/kv-protocol)",
            )
            .into());
    }
    for c in &config.connections {
        let secrets = c.secret_references();
        for secret in &secrets {
            if let Err(e) = secret.resolve() {
                tracing::warn!(message = "A connection's secret is not readable here.", connection = %c.name, error = %e);
            }
        }
    }
    sluice_oidc::OidcProvider::all_from_config(config)?;
    for w in &config.webhooks {
        if let Err(e) = sluice_webhook::WebhookNotifier::from_config(w) {
            tracing::warn!(message = "A webhook is not usable here.", error = %e);
        }
    }
    // Loading runs each plugin's ABI checks and its `init` on its config.
    sluice_plugin::Plugins::load(&config.plugins)?;
    Ok(())
}

pub async fn serve(config: Config) -> Result<()> {
    serve_with_reload(config, None).await
}

/// Serves; with `reload_from`, SIGHUP re-reads that file and applies it to the
/// running gateway (see `Gateway::reload` for what changes in place).
pub async fn serve_with_reload(config: Config, reload_from: Option<PathBuf>) -> Result<()> {
    check(&config)?;
    let opened = Opened::open(&config, true).await?;
    let closed = opened.close_orphaned_sessions("gateway restarted").await?;
    if closed > 0 {
        tracing::warn!(
            message = "Closed sessions left open by a previous gateway process.",
            count = closed
        );
    }
    // A configured checkpoint key that cannot be read stops the start (fail closed).
    let signer = sluice_core::audit::CheckpointSigner::from_config(&config.gateway, true)?;
    let checkpoint_store = opened.embedded().cloned();
    if checkpoint_store.is_none() && signer.is_some() {
        tracing::info!(message = "Signed checkpoints cover the embedded store's journal; a shared store publishes none.");
    }
    let checkpoint_interval = config.gateway.checkpoint_interval.0;
    let listen = config.listen.clone();
    let webhooks = sluice_webhook::WebhookNotifier::all_from_config(&config)?;
    let mut checkpoint_sinks = config
        .webhooks
        .iter()
        .map(|w| {
            sluice_webhook::WebhookNotifier::from_config(w)
                .map(|n| Arc::new(n) as Arc<dyn sluice_core::audit::CheckpointSink>)
        })
        .collect::<Result<Vec<_>, _>>()?;
    // The console's audit page shows the last checkpoint published.
    let latest_checkpoint = Arc::new(sluice_api::LatestCheckpoint::default());
    checkpoint_sinks.push(latest_checkpoint.clone());
    let masking = masking_engine(&config)?;
    let masking_exempt = config.masking.exempt_groups.clone();
    let oidc = sluice_oidc::OidcProvider::all_from_config(&config)?;
    // Run-time plugins; they stay loaded for the life of the process.
    let plugins = sluice_plugin::Plugins::load(&config.plugins)?;
    // Every audit event is also a `sluice::audit` log event (exported as an OTel log).
    let store = sluice_core::metrics::AuditLogStore::wrap(opened.store());
    let store = plugins
        .store(store)
        .context("starting the audit sink plugins")?;
    let mut builder = GatewayBuilder::new(config, store);
    for webhook in webhooks {
        builder = builder.approval_notifier(webhook);
    }
    for notifier in plugins
        .notifiers()
        .context("starting the notifier plugins")?
    {
        builder = builder.approval_notifier(notifier);
    }
    let masker: Arc<dyn sluice_core::masking::ResponseMasker> = match masking {
        Some(engine) => Arc::new(
            sluice_core::masking::EngineMasker::new(engine)
                .with_exempt_groups(masking_exempt.clone()),
        ),
        None => Arc::new(sluice_core::masking::NoMasking),
    };
    builder = builder.masker(plugins.masker(masker, masking_exempt.clone()));
    if let Some(layer) = plugins.policy_layer() {
        builder = builder.layer(layer);
    }
    for key in match_keys() {
        builder = builder.match_key(key);
    }
    builder = builder.connection_kinds(connection_kinds());
    for provider in oidc {
        let warm = provider.clone();
        tokio::spawn(async move { warm.warm_up().await });
        builder = builder.authenticator(provider);
    }
    if let Some(cluster) = opened.cluster() {
        builder = builder.cluster(cluster);
    }
    let gateway = Arc::new(builder.build()?);
    opened.follow(&gateway).await?;
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = listen.postgres {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the postgres listener on {addr}"))?;
        let server = sluice_postgres::PostgresServer::new(gateway.clone())?;
        tracing::info!(message = "PostgreSQL listener ready.", addr = %listener.local_addr()?);
        tasks.spawn(async move { server.serve(listener).await.map_err(anyhow::Error::from) });
    }
    if let Some(addr) = listen.api {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the api listener on {addr}"))?;
        let server = sluice_api::ApiServer::new(gateway.clone())?
            .describe_commands_with(std::sync::Arc::new(
                |protocol: &str, text: &str| match protocol {
                    "postgres" => Some(sluice_postgres::sql::describe(text)),
                    "kubernetes" => sluice_kube::path::describe_request(text),
                    "ssh" => sluice_ssh::describe_line(text),
                    _ => None,
                },
            ))
            .show_checkpoints_from(latest_checkpoint.clone());
        tracing::info!(message = "Operator API listener ready.", addr = %listener.local_addr()?);
        tasks.spawn(async move { server.serve(listener).await.map_err(anyhow::Error::from) });
    }
    if let Some(addr) = listen.http {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the http listener on {addr}"))?;
        let server = sluice_http::HttpServer::new(gateway.clone(), http_flavors());
        tracing::info!(message = "HTTP listener ready (HTTPS).", addr = %listener.local_addr()?);
        tasks.spawn(async move { server.serve(listener).await.map_err(anyhow::Error::from) });
    }
    if let Some(addr) = listen.mcp {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the mcp listener on {addr}"))?;
        let server = sluice_mcp::McpServer::new(gateway.clone())?;
        tracing::info!(message = "MCP listener ready (HTTPS, /mcp).", addr = %listener.local_addr()?);
        tasks.spawn(async move { server.serve(listener).await.map_err(anyhow::Error::from) });
    }
    if let Some(addr) = listen.ssh {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the ssh listener on {addr}"))?;
        let server = sluice_ssh::SshServer::new(gateway.clone())?;
        tracing::info!(message = "SSH listener ready.", addr = %listener.local_addr()?);
        tasks.spawn(async move { server.serve(listener).await.map_err(anyhow::Error::from) });
    }
    if tasks.is_empty() {
        anyhow::bail!(
            "no listener configured: set listen.postgres, listen.ssh, listen.http, listen.mcp or listen.api"
        );
    }
    if let Some(path) = reload_from {
        tasks.spawn(reload_on_sighup(gateway.clone(), path));
    }
    let checkpoints = Checkpoints {
        store: checkpoint_store,
        signer: signer.map(Arc::new),
        sinks: checkpoint_sinks,
    };
    let periodic = checkpoints.clone();
    tasks.spawn(async move {
        periodic.every(checkpoint_interval).await;
        Ok(())
    });
    let result = tokio::select! {
        r = tasks.join_next() => match r {
            Some(Ok(Err(e))) => Err(e),
            Some(Err(e)) => Err(e.into()),
            _ => Ok(()),
        },
        _ = shutdown_signal() => {
            tracing::info!(message = "Shutting down.");
            Ok(())
        }
    };
    if result.is_ok() {
        // A second signal skips the rest of the drain.
        tokio::select! {
            report = gateway.drain(listen.drain_timeout.0) => tracing::info!(
                message = "Drained.",
                live_at_start = report.live_at_start,
                ended = report.ended,
                left = report.left
            ),
            _ = shutdown_signal() => tracing::warn!(message = "Second signal: stopping without waiting for live sessions."),
        }
    }
    // The listeners stop first: one still accepting (the API's) would hand
    // a connection to a pinned thread that is gone.
    tasks.shutdown().await;
    // Pinned sessions still running end here, on their own threads, and
    // record their ends before the checkpoint and the store's flush.
    let stopping = gateway.clone();
    let _ = tokio::task::spawn_blocking(move || stopping.stop_pinned()).await;
    checkpoints.publish().await;
    opened.flush().await;
    result
}

/// Signed checkpoints of the audit log, published periodically and on shutdown.
#[derive(Clone)]
struct Checkpoints {
    /// The embedded store (a shared store has no gateway-wide journal).
    store: Option<Arc<SqliteStore>>,
    signer: Option<Arc<sluice_core::audit::CheckpointSigner>>,
    sinks: Vec<Arc<dyn sluice_core::audit::CheckpointSink>>,
}

impl Checkpoints {
    async fn every(&self, interval: Duration) {
        let mut ticks = tokio::time::interval(interval.max(Duration::from_secs(1)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.publish().await;
        }
    }

    async fn publish(&self) {
        let (Some(signer), Some(store)) = (&self.signer, &self.store) else {
            return;
        };
        match store.checkpoint(signer).await {
            Ok(c) => sluice_core::audit::publish_checkpoint(&c, &self.sinks),
            Err(e) => {
                tracing::error!(message = "The audit checkpoint could not be taken.", error = %e)
            }
        }
    }
}

/// Compiles `[masking]`; `None` when it masks nothing. The `hash` style's key
/// is `masking.hash_key`, or one generated once into `state_dir/keys`.
fn masking_engine(config: &Config) -> Result<Option<sluice_core::masking::MaskingEngine>> {
    let m = &config.masking;
    if m.detectors.is_empty() && m.custom.is_empty() && m.columns.is_empty() {
        // Masking is off: no key to read or generate.
        return Ok(None);
    }
    let key = match &config.masking.hash_key {
        Some(secret) => secret.resolve()?.into_bytes(),
        None => {
            let path = config
                .gateway
                .state_dir
                .join("keys")
                .join("masking-hmac.key");
            match std::fs::read(&path) {
                Ok(k) => k,
                Err(_) => {
                    let key = format!(
                        "{}{}",
                        uuid::Uuid::new_v4().simple(),
                        uuid::Uuid::new_v4().simple()
                    );
                    sluice_core::fsutil::write_private(&path, key.as_bytes())?;
                    key.into_bytes()
                }
            }
        }
    };
    let engine = sluice_core::masking::compile(&config.masking, Some(&key))?;
    Ok(engine.is_active().then_some(engine))
}

/// Applies the config file again on every SIGHUP. A file that does not load or
/// compile changes nothing: the gateway keeps serving on the config it has.
async fn reload_on_sighup(gateway: Arc<sluice_core::Gateway>, path: PathBuf) -> Result<()> {
    #[cfg(unix)]
    {
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?;
        while hangup.recv().await.is_some() {
            let loaded = Config::load(&path)
                .map_err(anyhow::Error::from)
                .and_then(|c| check(&c).map(|()| c));
            let result = loaded.and_then(|c| gateway.reload(c).map_err(anyhow::Error::from));
            match result {
                Ok(report) => tracing::info!(
                    message = "Configuration reloaded.",
                    file = %path.display(),
                    sessions_ended = report.sessions_ended,
                    needs_restart = ?report.needs_restart
                ),
                Err(e) => tracing::error!(
                    message = "Configuration not reloaded; the gateway keeps its current configuration.",
                    file = %path.display(),
                    error = %format!("{e:#}")
                ),
            }
        }
    }
    std::future::pending::<()>().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
            return;
        }
    }
    let _ = ctrl_c.await;
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

pub async fn list_sessions(config: Config, json: bool) -> Result<()> {
    let sessions = Opened::open(&config, false)
        .await?
        .store()
        .sessions()
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&sessions)?);
        return Ok(());
    }
    // The node column appears with a shared store (several nodes).
    let nodes = sessions.iter().any(|s| !s.node.is_empty());
    let node = |n: &str| {
        if nodes {
            format!("  {n:<12}")
        } else {
            String::new()
        }
    };
    println!(
        "{:<36}  {:<16}  {:<12}  {:<20}  {:<20}  {:>8}{}",
        "ID",
        "SUBJECT",
        "CONNECTION",
        "START",
        "END",
        "COMMANDS",
        node("NODE")
    );
    for s in sessions {
        println!(
            "{:<36}  {:<16}  {:<12}  {:<20}  {:<20}  {:>8}{}",
            s.id,
            s.subject,
            s.connection,
            time(s.started_at_ms),
            s.ended_at_ms.map(time).unwrap_or_else(|| "(open)".into()),
            s.commands,
            node(&s.node)
        );
    }
    Ok(())
}

pub async fn replay(config: Config, session_id: &str, format: &str) -> Result<()> {
    let records = Opened::open(&config, false)
        .await?
        .store()
        .session_records(session_id)
        .await?;
    if format == "asciicast" {
        let cast = sluice_core::replay::asciicast(&records, None)
            .map_err(|e| anyhow::anyhow!("session {session_id}: {e}"))?;
        print!("{cast}");
        return Ok(());
    }
    print!("{}", sluice_core::replay::transcript(&records));
    Ok(())
}

pub async fn verify(config: Config, checkpoint: Option<PathBuf>) -> Result<bool> {
    let opened = Opened::open(&config, false).await?;
    let report = opened.store().verify().await?;
    let mut intact = match report.first_break {
        None => {
            println!(
                "audit: {} sessions, {} records, all chains intact",
                report.sessions, report.records
            );
            true
        }
        Some(b) => {
            eprintln!("audit: broken chain: {b}");
            false
        }
    };
    if let Some(path) = checkpoint {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the checkpoint {}", path.display()))?;
        let c = sluice_core::audit::Checkpoint::parse(&text)
            .with_context(|| format!("reading the checkpoint {}", path.display()))?;
        // Checked against this gateway's key when it is here; a key kept
        // off the box leaves the key the checkpoint names (its id is printed).
        let signer = sluice_core::audit::CheckpointSigner::from_config(&config.gateway, false)?;
        if let Err(e) = c.verify_signature(signer.as_ref().map(|s| s.public_key())) {
            eprintln!("audit: checkpoint {}: {e}", path.display());
            return Ok(false);
        }
        let embedded = opened
            .embedded()
            .context("checkpoints are of the embedded store's journal; a shared store has none")?;
        match embedded.verify_checkpoint(&c.head()).await? {
            sluice_core::audit::CheckpointMatch::Consistent => println!(
                "audit: consistent with the checkpoint of {} ({} records, key {})",
                time(c.at_ms),
                c.size,
                c.key_id
            ),
            m => {
                eprintln!(
                    "audit: checkpoint {} (taken {}): {m}",
                    path.display(),
                    time(c.at_ms)
                );
                intact = false;
            }
        }
    }
    Ok(intact)
}

/// `sluice audit checkpoint`: a signed checkpoint of the log as it is now.
pub async fn checkpoint(config: Config) -> Result<()> {
    let signer = sluice_core::audit::CheckpointSigner::from_config(&config.gateway, true)?
        .context("no checkpoint key")?;
    let opened = Opened::open(&config, false).await?;
    let c = opened
        .embedded()
        .context("checkpoints are of the embedded store's journal; a shared store has none")?
        .checkpoint(&signer)
        .await?;
    println!("{}", serde_json::to_string_pretty(&c)?);
    Ok(())
}

/// The embedded quickstart config (the same file as examples/quickstart.toml).
const QUICKSTART: &str = include_str!("../../../examples/quickstart.toml");

/// The demo's SSH host and HTTP API, added to the quickstart when they start.
const DEMO_SSH: &str = include_str!("demo_ssh.toml");
const DEMO_HTTP: &str = include_str!("demo_http.toml");
const DEMO_SSH_LISTEN: &str = "127.0.0.1:15422";
const DEMO_HTTP_LISTEN: &str = "127.0.0.1:15443";

/// The demo's configuration: the quickstart on the sandbox PostgreSQL at
/// `pg`, plus the SSH host and the HTTP API when they are running.
fn demo_config(
    pg: std::net::SocketAddr,
    state_dir: &std::path::Path,
    ssh: Option<&sluice_sandbox::DemoSshd>,
    api: Option<&sluice_sandbox::DemoApi>,
) -> Result<Config> {
    let mut text = QUICKSTART
        .replace("127.0.0.1:54320", &pg.to_string())
        .replace(
            "state_dir = \".sluice-demo\"",
            &format!("state_dir = {:?}", state_dir.display().to_string()),
        );
    if let Some(ssh) = ssh {
        text.push('\n');
        text.push_str(
            &DEMO_SSH
                .replace("{SSH_UPSTREAM}", &ssh.addr().to_string())
                .replace("{SSH_USER}", &ssh.user)
                .replace("{SSH_KEY}", &ssh.gateway_key.display().to_string())
                .replace("{SSH_HOST_KEY}", &ssh.host_key),
        );
    }
    if let Some(api) = api {
        text.push('\n');
        text.push_str(&DEMO_HTTP.replace("{API_UPSTREAM}", &api.addr().to_string()));
    }
    let mut config = Config::from_toml_str(
        &text,
        "examples/quickstart.toml (embedded, with the demo's targets)",
    )?;
    if ssh.is_some() {
        config.listen.ssh = Some(DEMO_SSH_LISTEN.parse()?);
    }
    if api.is_some() {
        config.listen.http = Some(DEMO_HTTP_LISTEN.parse()?);
    }
    Ok(config)
}

pub fn demo(state_dir: PathBuf) -> Result<()> {
    let pg = sluice_sandbox::TempPostgres::start(sluice_sandbox::TempPostgresOptions {
        port: Some(54320).filter(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok()),
        ..Default::default()
    })
    .context("starting the demo PostgreSQL")?;
    let db = pg.seed_demo().context("loading demo data")?;
    // The demo upstream's port and password are only known now; the embedded
    // config names them by reference.
    std::env::set_var("SLUICE_DEMO_PASSWORD", &db.password);
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let ssh = match sluice_sandbox::DemoSshd::start(&state_dir.join("demo-sshd")) {
        Ok(ssh) => Some(ssh),
        Err(e) => {
            eprintln!("sluice demo: no SSH host in this demo: {e}");
            None
        }
    };
    let api = match sluice_sandbox::DemoApi::start() {
        Ok(api) => Some(api),
        Err(e) => {
            eprintln!("sluice demo: no HTTP API in this demo: {e}");
            None
        }
    };
    if let Some(api) = &api {
        std::env::set_var("SLUICE_DEMO_API_TOKEN", &api.token);
    }
    let config = demo_config(pg.addr(), &state_dir, ssh.as_ref(), api.as_ref())?;
    let listen = config
        .listen
        .postgres
        .context("the quickstart config has no postgres listener")?;
    let authority = sluice_core::token::TokenAuthority::from_config(&config)?;
    let token = authority.issue(
        "demo-agent",
        &["agents".to_string()],
        Duration::from_secs(3600),
    )?;
    let dba = authority.issue("demo-dba", &["dba".to_string()], Duration::from_secs(3600))?;
    println!("Sluice demo: PostgreSQL with demo customers, an SSH host and an HTTP API behind the gateway.\n");
    println!("Token for subject demo-agent (groups: agents), valid 1h:\n  {token}\n");
    // The token goes in the environment, not in a client's arguments, where
    // `ps` shows it to every local user.
    println!("Try:");
    println!("  export PGPASSWORD={token}");
    println!("  psql \"postgresql://demo-agent@{listen}/appdb\" -c 'select name, email, card_number from customers limit 5'");
    println!("  psql \"postgresql://demo-agent@{listen}/appdb\" -c 'delete from orders'   # refused: no WHERE");
    println!("  psql \"postgresql://demo-agent@{listen}/appdb\" -c 'drop table customers'   # refused: no DDL");
    println!("  psql \"postgresql://demo-agent@{listen}/appdb\" -c \"update customers set name = 'Ada' where id = 1\"   # held for a DBA");
    let ca = sluice_core::tls::generated_paths(&config.gateway.state_dir).0;
    if let (Some(addr), Some(_)) = (config.listen.ssh, &ssh) {
        let port = addr.port();
        println!("\nSSH host demo-host (the token is the password; SSH_ASKPASS or paste it):");
        println!("  ssh -p {port} demo-host@127.0.0.1 'uname -a; ls'");
        println!(
            "  ssh -p {port} demo-host@127.0.0.1 'rm -rf ~/notes'   # refused: no-rm-on-hosts"
        );
        println!("  ssh -p {port} demo-host@127.0.0.1 'chmod 600 ~/.profile'   # held for a DBA");
    }
    if let (Some(addr), Some(_)) = (config.listen.http, &api) {
        println!("\nHTTP API crm (the gateway holds its credential; card numbers and emails are masked):");
        println!("  export TOKEN={token}");
        // The header goes in on curl's standard input.
        let bearer = "printf 'Authorization: Bearer %s\\n' \"$TOKEN\" | curl -H @-";
        println!(
            "  {bearer} --cacert {} https://{addr}/crm/customers",
            ca.display()
        );
        println!(
            "  {bearer} --cacert {} -X DELETE https://{addr}/crm/customers/1   # refused",
            ca.display()
        );
    }
    if let Some(api) = config.listen.api {
        println!("\nOperator console (sign in with the demo-dba token below; the certificate is the demo's own, self-signed):");
        println!("  https://{api}{}", sluice_api::CONSOLE_PATH);
    }
    if let Some(mcp) = config.listen.mcp {
        println!("\nMCP (tools appdb.query, appdb.list_tables, appdb.describe_table, and demo-host.exec and crm.request when they run), for an agent's client config:");
        println!(
            "  {}",
            serde_json::json!({ "mcpServers": { "sluice": {
                "type": "http",
                "url": format!("https://{mcp}/mcp"),
                "headers": { "Authorization": format!("Bearer {token}") }
            } } })
        );
        println!(
            "  (it must trust the gateway's CA, {}; or run the stdio bridge: SLUICE_TOKEN=... sluice mcp --config examples/quickstart.toml)",
            ca.display()
        );
    }
    println!("\nOr approve it as demo-dba (groups: dba), from the repository root:");
    println!("  export SLUICE_TOKEN={dba}");
    println!("  cargo run -q -p sluice -- approvals list --config examples/quickstart.toml");
    println!("  cargo run -q -p sluice -- approvals approve ID --config examples/quickstart.toml");
    println!("\nThen:");
    println!("  cargo run -q -p sluice -- sessions list --config examples/quickstart.toml");
    println!("  cargo run -q -p sluice -- replay --config examples/quickstart.toml SESSION_ID");
    println!("  cargo run -q -p sluice -- audit verify --config examples/quickstart.toml");
    println!(
        "\nState (store, keys, certificates) is in {}. Press Ctrl-C to stop.\n",
        state_dir.display()
    );
    // A closed terminal sends SIGHUP: stop as on Ctrl-C or SIGTERM, so the
    // sandbox PostgreSQL is stopped too (its drop below).
    let result = runtime()?.block_on(async {
        tokio::select! {
            r = serve(config) => r,
            _ = hangup() => {
                tracing::info!(message = "Hang-up: stopping the demo.");
                Ok(())
            }
        }
    });
    drop((ssh, api, pg));
    result
}

/// Resolves on SIGHUP (never where there are no such signals).
async fn hangup() {
    #[cfg(unix)]
    if let Ok(mut h) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        h.recv().await;
        return;
    }
    std::future::pending::<()>().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shipped example config parses and its rules compile with this build's match keys.
    #[test]
    fn shipped_example_configs_check() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
                check(&config).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                checked += 1;
            }
        }
        assert!(checked >= 1);
    }
}
