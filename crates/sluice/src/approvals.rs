//! `sluice approvals …`: the approval queue, through the gateway's operator API.

use anyhow::{Context, Result};
use sluice_api::client::ApiClient;
use sluice_core::approval::ApprovalRequest;
use sluice_core::replay::escaped;
use sluice_core::Config;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, UNIX_EPOCH};

#[derive(clap::Subcommand, Debug, Clone)]
pub enum ApprovalsCmd {
    /// List pending requests you may decide, and your own.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Include decided and expired requests.
        #[arg(long)]
        all: bool,
    },
    /// Print one request whole: the command, what kind it is and its
    /// context (an HTTP body's excerpt, a pod, a statement's definition),
    /// all of which an approval covers.
    Show {
        /// The approval id (from `sluice approvals list`).
        id: String,
    },
    /// Approve a request (as the token's subject).
    Approve {
        /// The approval id (from `sluice approvals list`).
        id: String,
        /// Why; recorded in the requester's session.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deny a request (as the token's subject).
    Deny {
        /// The approval id (from `sluice approvals list`).
        id: String,
        /// Why; recorded and shown to the requester.
        #[arg(long)]
        reason: Option<String>,
    },
}

/// Runs one approvals command against the gateway's `[listen] api`.
pub fn run(config: &Config, token: Option<String>, cmd: ApprovalsCmd) -> Result<()> {
    let token = token.filter(|t| !t.trim().is_empty()).context(
        "pass --token or set SLUICE_TOKEN (your own token; approvers approve as themselves)",
    )?;
    let client = api_client(config, token)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cmd {
            ApprovalsCmd::List { json, all } => {
                let requests = client.list(all).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&requests)?);
                } else {
                    print_table(&requests);
                }
            }
            ApprovalsCmd::Show { id } => {
                let requests = client.list(true).await?;
                let r = requests
                    .iter()
                    .find(|r| r.id == id)
                    .with_context(|| format!("no approval request {id} you may see"))?;
                print!("{}", described(r));
            }
            ApprovalsCmd::Approve { id, reason } => {
                let r = client.approve(&id, reason).await?;
                println!("approval {} {}", r.id, r.state);
            }
            ApprovalsCmd::Deny { id, reason } => {
                let r = client.deny(&id, reason).await?;
                println!("approval {} {}", r.id, r.state);
            }
        }
        Ok(())
    })
}

/// A client of the gateway's `[listen] api`, trusting its certificate.
pub fn api_client(config: &Config, token: String) -> Result<ApiClient> {
    let addr = config.listen.api.context(
        "listen.api is not set: approvals, live sessions and tokens go through the gateway's operator API",
    )?;
    let addr = dialable(addr);
    let ca = match &config.tls {
        Some(tls) => tls.cert.clone(),
        None => sluice_core::tls::generated_paths(&config.gateway.state_dir).0,
    };
    if !ca.exists() {
        anyhow::bail!(
            "the gateway's certificate {} does not exist yet; start the gateway (sluice serve) first",
            ca.display()
        );
    }
    Ok(ApiClient::new(addr, Some(ca), token)?)
}

/// A listener bound to all interfaces is reached on loopback.
pub fn dialable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// One line, at most `max` characters.
/// A request as `sluice approvals show` prints it. Everything the agent
/// chose is escaped: it cannot redraw the terminal it is read on.
fn described(r: &ApprovalRequest) -> String {
    let shown = |s: &str| escaped(s, &['\t']);
    let mut out = format!(
        "approval {}  {}  rule {}  ({} mode; approvers: {}; expires {})\nrequested by {} on {}\n",
        r.id,
        r.state,
        shown(&r.rule),
        serde_json::to_value(r.mode)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        r.approvers.join(", "),
        time(r.expires_at_ms),
        shown(&r.requester()),
        shown(&r.connection),
    );
    if let Some(kind) = &r.kind {
        let kind = serde_json::to_string(kind).unwrap_or_default();
        out.push_str(&format!("kind: {}\n", shown(&kind)));
    }
    out.push_str("command:\n");
    for line in r.command.lines() {
        out.push_str(&format!("  | {}\n", shown(line)));
    }
    if !r.context.is_empty() {
        out.push_str("context (covered by the approval too):\n");
        for line in &r.context {
            out.push_str(&format!("  - {}\n", shown(line)));
        }
    }
    out
}

fn clip(text: &str, max: usize) -> String {
    let line = escaped(&text.split_whitespace().collect::<Vec<_>>().join(" "), &[]);
    if line.chars().count() <= max {
        return line;
    }
    let mut out: String = line.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn print_table(requests: &[ApprovalRequest]) {
    // Columns as wide as their longest value (within reason).
    let width = |header: &str, value: fn(&ApprovalRequest) -> &str| {
        requests
            .iter()
            .map(|r| value(r).chars().count())
            .chain([header.len()])
            .max()
            .unwrap_or(0)
            .min(40)
    };
    let id = width("ID", |r| &r.id);
    let subject = width("SUBJECT", |r| &r.subject);
    let connection = width("CONNECTION", |r| &r.connection);
    let rule = width("RULE", |r| &r.rule);
    println!(
        "{:<id$}  {:<8}  {:<subject$}  {:<connection$}  {:<rule$}  {:<5}  {:<20}  COMMAND",
        "ID", "STATE", "SUBJECT", "CONNECTION", "RULE", "MODE", "EXPIRES"
    );
    for r in requests {
        let mode = serde_json::to_value(r.mode)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        println!(
            "{:<id$}  {:<8}  {:<subject$}  {:<connection$}  {:<rule$}  {:<5}  {:<20}  {}",
            r.id,
            r.state.to_string(),
            r.subject,
            r.connection,
            r.rule,
            mode,
            time(r.expires_at_ms),
            clip(&r.command, 60)
                + &if r.context.is_empty() {
                    String::new()
                } else {
                    format!(
                        " [+{} context: `sluice approvals show {}`]",
                        r.context.len(),
                        r.id
                    )
                }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_an_agent_wrote_cannot_redraw_the_terminal() {
        let text = "DROP TABLE users /*\x1b[2K\x1b[1G\u{202e}SELECT 1 */";
        assert!(!clip(text, 200).contains('\x1b'));
        assert!(!clip(text, 200).contains('\u{202e}'));
        let r: ApprovalRequest = serde_json::from_value(serde_json::json!({
            "id": "a1", "session_id": "s", "command_id": 1, "subject": "agent",
            "connection": "db", "command": "update t set x = $1\n[7] query: SELECT 1\x1b[A",
            "context": ["parameters: \u{1b}[2Kowner"], "rule": "r", "message": null,
            "approvers": ["dba"], "mode": "hold", "requested_at_ms": 0, "expires_at_ms": 0,
            "state": "pending", "decided_by": null, "decided_at_ms": null, "reason": null
        }))
        .expect("request");
        let shown = described(&r);
        assert!(!shown.contains('\x1b'), "{shown}");
        // Every line of the command is marked as the command's.
        assert!(shown.contains("  | [7] query: SELECT 1"), "{shown}");
        assert!(shown.contains("  - parameters: \\u{1b}[2Kowner"), "{shown}");
    }

    #[test]
    fn clips_commands() {
        assert_eq!(clip("select 1", 60), "select 1");
        assert_eq!(clip("select\n  1", 60), "select 1");
        let long = "x".repeat(100);
        let clipped = clip(&long, 60);
        assert_eq!(clipped.chars().count(), 60);
        assert!(clipped.ends_with('…'));
    }

    #[test]
    fn unspecified_listeners_are_dialled_on_loopback() {
        let a: SocketAddr = "0.0.0.0:8081".parse().expect("addr");
        assert_eq!(dialable(a).to_string(), "127.0.0.1:8081");
        let a: SocketAddr = "[::]:8081".parse().expect("addr");
        assert_eq!(dialable(a).to_string(), "[::1]:8081");
        let a: SocketAddr = "10.0.0.5:8081".parse().expect("addr");
        assert_eq!(dialable(a), a);
    }
}
