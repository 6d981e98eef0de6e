//! `sluice connect CONNECTION`: ready-to-use client settings (psql URL, ssh
//! command, curl line, kubeconfig) for the logged-in user.

use anyhow::{bail, Context, Result};
use sluice_core::config::ConnectionKind;
use sluice_core::Config;
use std::net::SocketAddr;

#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    /// The connection to open (a `[[connections]]` name).
    pub connection: String,
    /// The gateway's host name as clients reach it (default: the listener's address).
    #[arg(long)]
    pub host: Option<String>,
    /// First trade the token for one that opens only this connection, valid this long (e.g. 15m).
    #[arg(long)]
    pub narrow: Option<String>,
    /// Your token (default: SLUICE_TOKEN, else the one `sluice login` stored).
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

pub fn run(config: &Config, args: ConnectArgs) -> Result<()> {
    let conn = config.connection(&args.connection).with_context(|| {
        format!(
            "no connection named {:?} in the config (see [[connections]])",
            args.connection
        )
    })?;
    let mut token = crate::login::caller_token(args.token.clone())?;
    if let Some(ttl) = &args.narrow {
        let client = crate::approvals::api_client(config, token.clone())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let response =
            runtime.block_on(client.exchange(&sluice_api::identity::ExchangeRequest {
                connection: args.connection.clone(),
                ttl: Some(ttl.clone()),
                subject_token: None,
            }))?;
        token = response.access_token;
    }
    let claims = sluice_oidc::unverified_claims(&token).unwrap_or_default();
    let issuer = claims.get("iss").and_then(|v| v.as_str()).unwrap_or("");
    let identity_claim = config
        .auth
        .oidc
        .iter()
        .find(|p| p.issuer.trim_end_matches('/') == issuer.trim_end_matches('/'))
        .map(|p| p.identity_claim.as_str())
        .unwrap_or("sub");
    let subject =
        sluice_oidc::claims::claim_string(&claims, identity_claim).unwrap_or_else(|| "me".into());
    let listener = |addr: Option<SocketAddr>, key: &str| -> Result<String> {
        let addr = addr.with_context(|| {
            format!(
                "this gateway has no {} listener (listen.{key}), so {:?} cannot be reached",
                conn.kind, args.connection
            )
        })?;
        let host = match &args.host {
            Some(h) => h.clone(),
            None if addr.ip().is_unspecified() => "localhost".into(),
            None if addr.is_ipv6() => format!("[{}]", addr.ip()),
            None => addr.ip().to_string(),
        };
        Ok(format!("{host}:{}", addr.port()))
    };
    let ca = match &config.tls {
        Some(tls) => tls.cert.clone(),
        None => sluice_core::tls::generated_paths(&config.gateway.state_dir).0,
    };
    let name = &args.connection;
    println!("# {name} ({}) as {subject}", conn.kind);
    match conn.kind {
        ConnectionKind::Postgres => {
            let at = listener(config.listen.postgres, "postgres")?;
            let user = url_component(&subject);
            println!("export PGPASSWORD='{token}'");
            println!("psql \"postgresql://{user}@{at}/{name}\"");
            println!("# or as one URL:");
            println!("postgresql://{user}:{token}@{at}/{name}");
        }
        ConnectionKind::Ssh => {
            let at = listener(config.listen.ssh, "ssh")?;
            let (host, port) = at.rsplit_once(':').unwrap_or((at.as_str(), "22"));
            println!("# the token is the password");
            println!("export SSHPASS='{token}'");
            println!("sshpass -e ssh -p {port} {name}@{host}");
            println!(
                "# or: ssh -p {port} {name}@{host}   (paste the token at the password prompt)"
            );
        }
        ConnectionKind::Http => {
            let at = listener(config.listen.http, "http")?;
            // The header comes from standard input: in curl's arguments any
            // local user would read the token in `ps`.
            println!(
                "printf 'Authorization: Bearer %s\\n' '{token}' | curl --cacert {} -H @- https://{at}/{name}/",
                ca.display()
            );
        }
        ConnectionKind::Kubernetes => {
            let at = listener(config.listen.http, "http")?;
            println!("# save as a kubeconfig and use: kubectl --kubeconfig FILE get pods");
            println!("apiVersion: v1");
            println!("kind: Config");
            println!("clusters:");
            println!("- name: sluice-{name}");
            println!("  cluster:");
            println!("    server: https://{at}/{name}");
            println!("    certificate-authority: {}", ca.display());
            println!("users:");
            println!("- name: {}", yaml_scalar(&subject));
            println!("  user:");
            println!("    token: {token}");
            println!("contexts:");
            println!("- name: sluice-{name}");
            println!("  context:");
            println!("    cluster: sluice-{name}");
            println!("    user: {}", yaml_scalar(&subject));
            println!("current-context: sluice-{name}");
        }
        kind if kind == sluice_mcp::upstream::KIND => {
            let at = listener(config.listen.mcp, "mcp")?;
            println!(
                "# an MCP client configuration (Streamable HTTP); trust the gateway's CA {}",
                ca.display()
            );
            let mut servers = serde_json::Map::new();
            servers.insert(
                name.clone(),
                serde_json::json!({
                    "type": "http",
                    "url": format!("https://{at}/mcp/{name}"),
                    "headers": { "Authorization": format!("Bearer {token}") },
                }),
            );
            let snippet = serde_json::json!({ "mcpServers": servers });
            println!("{snippet:#}");
        }
        other => {
            return Err(anyhow::anyhow!(
                "connection {name:?} is of kind {other}, which this binary does not serve"
            ))
        }
    }
    if token.is_empty() {
        bail!("empty token");
    }
    Ok(())
}

/// Percent-encodes a URL user name (emails carry `@`).
fn url_component(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn yaml_scalar(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"user\"".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_user_names() {
        assert_eq!(url_component("alice@example.com"), "alice%40example.com");
        assert_eq!(url_component("agent-1"), "agent-1");
        assert_eq!(yaml_scalar("a: b"), "\"a: b\"");
    }
}
