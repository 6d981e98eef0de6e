//! `sluice`: the launcher. Parses the CLI and config and composes the library
//! crates; the logic lives in them.

mod approvals;
mod compose;
mod telemetry;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use sluice_core::Config;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "An access gateway between AI agents and production systems"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args, Clone)]
struct ConfigArg {
    /// Configuration file (TOML).
    #[arg(long, short = 'c', env = "SLUICE_CONFIG", global = true)]
    config: Option<PathBuf>,
}

impl ConfigArg {
    fn load(&self) -> Result<Config> {
        let path = self
            .config
            .as_ref()
            .context("no configuration: pass --config FILE or set SLUICE_CONFIG")?;
        Ok(Config::load(path)?)
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway.
    Serve(ConfigArg),
    /// Run an embedded quickstart: a throwaway PostgreSQL with demo data behind the gateway.
    Demo {
        /// State directory for the demo gateway.
        #[arg(long, default_value = ".sluice-demo")]
        state_dir: PathBuf,
    },
    /// Configuration commands.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Gateway-signed tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Recorded sessions.
    #[command(subcommand)]
    Sessions(SessionsCmd),
    /// Print a readable transcript of a session.
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        /// The session id (from `sluice sessions list`).
        session_id: String,
        /// `text` (a transcript) or `asciicast` (v2, the session's terminal, for `asciinema play`).
        #[arg(long, default_value = "text", value_parser = ["text", "asciicast"])]
        format: String,
    },
    /// Audit chain commands.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// The approval queue (through the gateway's operator API, `[listen] api`).
    Approvals {
        #[command(flatten)]
        config: ConfigArg,
        /// Your own token (approvers approve as themselves).
        #[arg(long, env = "SLUICE_TOKEN", global = true, hide_env_values = true)]
        token: Option<String>,
        #[command(subcommand)]
        command: approvals::ApprovalsCmd,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a configuration file.
    Check(ConfigArg),
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Print a new short-lived token on stdout.
    Issue {
        #[command(flatten)]
        config: ConfigArg,
        /// Who the token identifies.
        #[arg(long)]
        subject: String,
        /// Comma-separated groups.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Lifetime, e.g. 10m, 1h.
        #[arg(long, default_value = "15m")]
        ttl: humantime::Duration,
    },
}

#[derive(Subcommand)]
enum SessionsCmd {
    /// List sessions: id, subject, connection, start, end, commands.
    List {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Exit 0 if every audit chain is intact; otherwise name the first broken record.
    Verify(ConfigArg),
}

fn main() {
    let cli = Cli::parse();
    if !matches!(cli.command, Cmd::Serve(_)) {
        telemetry::init_logs();
    }
    if let Err(e) = run(cli) {
        eprintln!("sluice: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Serve(c) => {
            let config = c.load()?;
            let runtime = compose::runtime()?;
            // The batch exporter needs the runtime's context to start.
            let _guard = runtime.block_on(async { telemetry::init(&config.telemetry) })?;
            runtime.block_on(compose::serve(config))
        }
        Cmd::Demo { state_dir } => compose::demo(state_dir),
        Cmd::Config(ConfigCmd::Check(c)) => {
            let config = c.load()?;
            compose::check(&config)?;
            println!(
                "{}: ok ({} connections, {} rules)",
                c.config.unwrap_or_default().display(),
                config.connections.len(),
                config.rules.len()
            );
            Ok(())
        }
        Cmd::Token(TokenCmd::Issue {
            config,
            subject,
            groups,
            ttl,
        }) => {
            let config = config.load()?;
            let authority = sluice_core::token::TokenAuthority::load_or_create(
                &config.gateway.state_dir,
                config.auth.token_max_ttl.0,
            )?;
            let groups: Vec<String> = groups.into_iter().filter(|g| !g.is_empty()).collect();
            println!("{}", authority.issue(&subject, &groups, ttl.into())?);
            Ok(())
        }
        Cmd::Sessions(SessionsCmd::List { config, json }) => {
            compose::runtime()?.block_on(compose::list_sessions(config.load()?, json))
        }
        Cmd::Replay {
            config,
            session_id,
            format,
        } => compose::runtime()?.block_on(compose::replay(config.load()?, &session_id, &format)),
        Cmd::Approvals {
            config,
            token,
            command,
        } => approvals::run(&config.load()?, token, command),
        Cmd::Audit(AuditCmd::Verify(c)) => {
            let ok = compose::runtime()?.block_on(compose::verify(c.load()?))?;
            if !ok {
                bail!("audit verification failed");
            }
            Ok(())
        }
    }
}
