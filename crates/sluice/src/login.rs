//! `sluice login`: an IdP access token for the person at the keyboard (device
//! authorization grant, or authorization code + PKCE on a loopback redirect),
//! kept in the user's config dir with mode 0600.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sluice_core::Config;
use sluice_oidc::http::HttpClient;
use sluice_oidc::login::LoginClient;
use sluice_oidc::Discovery;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(clap::Args, Debug, Clone)]
pub struct LoginArgs {
    /// The identity provider's issuer URL (default: the only `[auth.oidc]` issuer of --config).
    #[arg(long)]
    pub issuer: Option<String>,
    /// OAuth client id (default: the provider's `client_id` in --config, else `sluice`).
    #[arg(long)]
    pub client_id: Option<String>,
    /// Resource indicator (RFC 8707) to ask the token for.
    #[arg(long)]
    pub resource: Option<String>,
    /// Scopes (comma-separated; default `openid`).
    #[arg(long, value_delimiter = ',')]
    pub scope: Vec<String>,
    /// Use the authorization code flow in a browser (loopback redirect) instead of the device flow.
    #[arg(long)]
    pub browser: bool,
    /// A CA bundle (PEM) for the identity provider's certificate.
    #[arg(long)]
    pub ca: Option<PathBuf>,
}

/// What `sluice login` stores.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredLogin {
    pub issuer: String,
    pub access_token: String,
    /// Unix seconds.
    pub expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

impl std::fmt::Debug for StoredLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredLogin")
            .field("issuer", &self.issuer)
            .field("access_token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// `$XDG_CONFIG_HOME/sluice` or `~/.config/sluice`.
pub fn config_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("sluice"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither XDG_CONFIG_HOME nor HOME is set: nowhere to keep the login")?;
    Ok(PathBuf::from(home).join(".config").join("sluice"))
}

fn login_path() -> Result<PathBuf> {
    Ok(config_dir()?.join("login.json"))
}

/// The stored login, if any (an expired one is reported as such).
pub fn stored() -> Result<Option<StoredLogin>> {
    let path = login_path()?;
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is not a sluice login; run sluice login again",
                path.display()
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The caller's token: `--token`/`SLUICE_TOKEN`, else the stored login.
pub fn caller_token(explicit: Option<String>) -> Result<String> {
    if let Some(t) = explicit.filter(|t| !t.trim().is_empty()) {
        return Ok(t.trim().to_string());
    }
    match stored()? {
        Some(login) => {
            if login.expires_at.is_some_and(|e| e <= unix_now()) {
                bail!(
                    "your login to {} has expired; run sluice login again",
                    login.issuer
                );
            }
            Ok(login.access_token)
        }
        None => bail!("no token: pass --token, set SLUICE_TOKEN, or run sluice login"),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn run(config: Option<&Config>, args: LoginArgs) -> Result<()> {
    let providers = config.map(|c| c.auth.oidc.clone()).unwrap_or_default();
    let issuer = match (&args.issuer, providers.as_slice()) {
        (Some(i), _) => i.clone(),
        (None, [one]) => one.issuer.clone(),
        (None, []) => bail!("pass --issuer URL (or --config with an [auth.oidc] provider)"),
        (None, _) => bail!("several [auth.oidc] providers are configured: pass --issuer URL"),
    };
    let provider = providers
        .iter()
        .find(|p| p.issuer.trim_end_matches('/') == issuer.trim_end_matches('/'));
    if !issuer.starts_with("https://") && !sluice_core::config::is_loopback_http(&issuer) {
        bail!("{issuer:?}: an issuer must be an https:// URL (http:// only on loopback)");
    }
    let client_secret = match provider.and_then(|p| p.client_secret.as_ref()) {
        Some(s) => Some(s.resolve()?),
        None => None,
    };
    let login = LoginClient {
        issuer: issuer.clone(),
        client_id: args
            .client_id
            .or_else(|| provider.and_then(|p| p.client_id.clone()))
            .unwrap_or_else(|| "sluice".into()),
        client_secret,
        scopes: if args.scope.is_empty() {
            provider
                .and_then(|p| p.scopes.clone())
                .unwrap_or_else(|| vec!["openid".into()])
        } else {
            args.scope
        },
        resource: args
            .resource
            .or_else(|| provider.and_then(|p| p.resource.clone())),
    };
    let ca = args.ca.or_else(|| provider.and_then(|p| p.ca.clone()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tokens = runtime.block_on(async {
        let http = HttpClient::new(ca.as_deref())?;
        let discovery = Discovery::fetch(&http, &issuer).await?;
        if args.browser {
            login
                .browser_login(
                    &http,
                    &discovery,
                    |url| {
                        eprintln!("Open this URL in a browser to log in:\n\n  {url}\n");
                        eprintln!("Waiting for the browser to come back to this machine…");
                    },
                    Duration::from_secs(300),
                )
                .await
        } else {
            let code = login.device_start(&http, &discovery).await?;
            match &code.verification_uri_complete {
                Some(complete) => eprintln!(
                    "To log in, open\n\n  {complete}\n\nand check that it shows the code {}\n",
                    code.user_code
                ),
                None => eprintln!(
                    "To log in, open\n\n  {}\n\nand enter the code {}\n",
                    code.verification_uri, code.user_code
                ),
            }
            eprintln!("Waiting for you to approve…");
            login.device_poll(&http, &discovery, &code).await
        }
    })?;
    let stored = StoredLogin {
        issuer: issuer.clone(),
        access_token: tokens.access_token,
        expires_at: tokens.expires_in.map(|s| unix_now() + s),
        refresh_token: tokens.refresh_token,
    };
    let path = login_path()?;
    sluice_core::fsutil::write_private(&path, &serde_json::to_vec_pretty(&stored)?)
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "Logged in to {issuer}; token stored in {}{}.",
        path.display(),
        stored
            .expires_at
            .map(|e| format!(
                ", valid until {}",
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(e))
            ))
            .unwrap_or_default()
    );
    eprintln!("Next: sluice connect CONNECTION --config FILE");
    Ok(())
}
