//! `sluice token revoke|exchange` and `sluice sessions kill|live`: through
//! the gateway's operator API, as the caller.

use anyhow::{bail, Result};
use sluice_api::identity::{ExchangeRequest, RevokeRequest};
use sluice_core::Config;

fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// Revokes `--id JTI` or the token given as an argument.
pub fn revoke(
    config: &Config,
    caller: Option<String>,
    id: Option<String>,
    token: Option<String>,
    reason: Option<String>,
) -> Result<()> {
    let request = match (id, token) {
        (Some(id), None) => RevokeRequest {
            token_id: Some(id),
            token: None,
            reason,
        },
        (None, Some(token)) => RevokeRequest {
            token_id: None,
            token: Some(token.trim().to_string()),
            reason,
        },
        _ => bail!("give either --id JTI or the TOKEN to revoke"),
    };
    // Revoking a token one holds needs no other credential: it authenticates itself.
    let caller = match (&request.token, crate::login::caller_token(caller)) {
        (_, Ok(t)) => t,
        (Some(t), Err(_)) => t.clone(),
        (None, Err(e)) => return Err(e),
    };
    let client = crate::approvals::api_client(config, caller)?;
    let response = block_on(async { Ok(client.revoke(&request).await?) })?;
    println!(
        "token {} revoked; {} live session(s) ended",
        response.token_id, response.sessions_ended
    );
    Ok(())
}

/// Prints a gateway token narrowed to one connection.
pub fn exchange(
    config: &Config,
    caller: Option<String>,
    connection: String,
    ttl: String,
    json: bool,
) -> Result<()> {
    let client = crate::approvals::api_client(config, crate::login::caller_token(caller)?)?;
    let response = block_on(async {
        Ok(client
            .exchange(&ExchangeRequest {
                connection,
                ttl: Some(ttl),
                subject_token: None,
            })
            .await?)
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&response)?);
    } else {
        println!("{}", response.access_token);
    }
    Ok(())
}

pub fn kill(
    config: &Config,
    caller: Option<String>,
    id: String,
    reason: Option<String>,
) -> Result<()> {
    let client = crate::approvals::api_client(config, crate::login::caller_token(caller)?)?;
    let response = block_on(async { Ok(client.kill_session(&id, reason).await?) })?;
    if !response.ended {
        bail!("session {} had already ended", response.session_id);
    }
    println!("session {} is ending", response.session_id);
    Ok(())
}

pub fn live(config: &Config, caller: Option<String>, json: bool) -> Result<()> {
    let client = crate::approvals::api_client(config, crate::login::caller_token(caller)?)?;
    let sessions = block_on(async { Ok(client.live_sessions().await?) })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&sessions)?);
        return Ok(());
    }
    println!(
        "{:<36}  {:<20}  {:<12}  {:<10}  TOKEN",
        "ID", "SUBJECT", "CONNECTION", "PROTOCOL"
    );
    for s in sessions {
        println!(
            "{:<36}  {:<20}  {:<12}  {:<10}  {}",
            s.id, s.subject, s.connection, s.protocol, s.token_id
        );
    }
    Ok(())
}
