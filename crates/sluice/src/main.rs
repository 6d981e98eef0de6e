//! `sluice`: the launcher. Parses the CLI and config and composes the library
//! crates; the logic lives in them.

mod approvals;
mod compose;
mod connect;
mod login;
mod mcp;
mod stores;
mod telemetry;
mod tokens;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use sluice_core::Config;
use std::path::PathBuf;

/// jemalloc: per-thread caches make the many short-lived allocations of a
/// relayed statement (parse trees, audit records, buffers) cheaper than
/// glibc's malloc, at about the same memory per idle session. Measured in
/// docs/operations.md ("Allocator").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Store commands.
    #[command(subcommand)]
    Store(StoreCmd),
    /// Log in to an identity provider (device flow, or --browser for code + PKCE);
    /// the token is kept in ~/.config/sluice (0600).
    Login {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        args: login::LoginArgs,
    },
    /// Print ready-to-use client settings for a connection, as the logged-in user.
    Connect {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        args: connect::ConnectArgs,
    },
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
    /// An MCP server on stdin/stdout for a local agent, bridged to the
    /// gateway's MCP listener (`[listen] mcp`) with your token.
    Mcp {
        #[command(flatten)]
        config: ConfigArg,
        /// Your own token (default: SLUICE_TOKEN, else your sluice login).
        #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// The gateway's MCP listener as host:port (default: listen.mcp of the
        /// config; without a config, its certificate must chain to a public root).
        #[arg(long)]
        addr: Option<String>,
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
    /// Revoke a token (by its id, or the token itself); its live sessions end.
    Revoke {
        #[command(flatten)]
        config: ConfigArg,
        /// The token id (jti) to revoke (admins, or the owner of a live session using it).
        // Token ids are base64url and may start with '-'.
        #[arg(long, conflicts_with = "revoked", allow_hyphen_values = true)]
        id: Option<String>,
        /// The token to revoke (whoever holds it may revoke it).
        #[arg(value_name = "TOKEN", required_unless_present = "id")]
        revoked: Option<String>,
        /// Why; told to the sessions that end.
        #[arg(long)]
        reason: Option<String>,
        /// Your own token (default: SLUICE_TOKEN, else your sluice login).
        #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Trade your token for a gateway token that opens only one connection, for a shorter time.
    Exchange {
        #[command(flatten)]
        config: ConfigArg,
        /// The only connection the new token opens.
        #[arg(long)]
        connection: String,
        /// Lifetime, e.g. 5m (never past your token's own expiry).
        #[arg(long, default_value = "15m")]
        ttl: String,
        /// Print the RFC 8693-style JSON answer instead of the bare token.
        #[arg(long)]
        json: bool,
        /// Your own token (default: SLUICE_TOKEN, else your sluice login).
        #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
        token: Option<String>,
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
    /// Sessions live on the running gateway (yours; all for auth.admin_groups).
    Live {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
        /// Your own token (default: SLUICE_TOKEN, else your sluice login).
        #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// End a live session now (its owner, or auth.admin_groups).
    Kill {
        #[command(flatten)]
        config: ConfigArg,
        /// The session id (from `sluice sessions list` or `live`).
        id: String,
        /// Why; told to the client.
        #[arg(long)]
        reason: Option<String>,
        /// Your own token (default: SLUICE_TOKEN, else your sluice login).
        #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Exit 0 if every audit chain is intact; otherwise name the first broken record.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
        /// Also check the log against a checkpoint taken earlier (`sluice audit
        /// checkpoint`): detects rewritten, deleted or truncated records.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Print a signed checkpoint (size and root of the gateway-wide log) to keep off the box.
    Checkpoint(ConfigArg),
}

#[derive(Subcommand)]
enum StoreCmd {
    /// Copy an embedded node's history (SQLite and journal) into the
    /// PostgreSQL store `gateway.store` names, verified chain by chain.
    Migrate {
        #[command(flatten)]
        config: ConfigArg,
        /// The embedded store's directory (default: `gateway.state_dir`).
        #[arg(long)]
        from: Option<PathBuf>,
    },
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
            let runtime = compose::serving_runtime(
                config.gateway.worker_threads,
                config.gateway.session_scheduling,
            )?;
            // The batch exporter needs the runtime's context to start.
            let _guard = runtime.block_on(async {
                telemetry::init(&config.telemetry, &config.gateway.node_id())
            })?;
            runtime.block_on(compose::serve_with_reload(config, c.config.clone()))
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
            let authority = sluice_core::token::TokenAuthority::from_config(&config)?;
            let groups: Vec<String> = groups.into_iter().filter(|g| !g.is_empty()).collect();
            println!("{}", authority.issue(&subject, &groups, ttl.into())?);
            Ok(())
        }
        Cmd::Token(TokenCmd::Revoke {
            config,
            id,
            revoked,
            reason,
            token,
        }) => tokens::revoke(&config.load()?, token, id, revoked, reason),
        Cmd::Token(TokenCmd::Exchange {
            config,
            connection,
            ttl,
            json,
            token,
        }) => tokens::exchange(&config.load()?, token, connection, ttl, json),
        Cmd::Sessions(SessionsCmd::Live {
            config,
            json,
            token,
        }) => tokens::live(&config.load()?, token, json),
        Cmd::Sessions(SessionsCmd::Kill {
            config,
            id,
            reason,
            token,
        }) => tokens::kill(&config.load()?, token, id, reason),
        Cmd::Login { config, args } => {
            let config = match &config.config {
                Some(_) => Some(config.load()?),
                None => None,
            };
            login::run(config.as_ref(), args)
        }
        Cmd::Connect { config, args } => connect::run(&config.load()?, args),
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
        Cmd::Audit(AuditCmd::Verify { config, checkpoint }) => {
            let ok = compose::runtime()?.block_on(compose::verify(config.load()?, checkpoint))?;
            if !ok {
                bail!("audit verification failed");
            }
            Ok(())
        }
        Cmd::Mcp {
            config,
            token,
            addr,
        } => {
            // With --addr, the config (for the gateway's CA) is optional.
            let config = match (&config.config, &addr) {
                (None, Some(_)) => None,
                _ => Some(config.load()?),
            };
            mcp::run(config.as_ref(), token, addr)
        }
        Cmd::Store(StoreCmd::Migrate { config, from }) => {
            compose::runtime()?.block_on(stores::migrate(config.load()?, from))
        }
        Cmd::Audit(AuditCmd::Checkpoint(c)) => {
            compose::runtime()?.block_on(compose::checkpoint(c.load()?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Token ids are base64url: one may start with '-'.
    #[test]
    fn revoke_accepts_ids_starting_with_a_dash() {
        let cli = Cli::try_parse_from(["sluice", "token", "revoke", "--id", "-jX_1"]);
        match cli.map(|c| c.command) {
            Ok(Cmd::Token(TokenCmd::Revoke { id, revoked, .. })) => {
                assert_eq!(id.as_deref(), Some("-jX_1"));
                assert!(revoked.is_none());
            }
            Ok(_) => panic!("parsed as another command"),
            Err(e) => panic!("{e}"),
        }
        assert!(Cli::try_parse_from(["sluice", "token", "revoke"]).is_err());
    }
}
