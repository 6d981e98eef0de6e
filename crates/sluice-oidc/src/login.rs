//! The OAuth clients behind `sluice login`: the device authorization grant
//! (RFC 8628) and the authorization code grant with PKCE (RFC 7636) on a
//! loopback redirect (RFC 8252).

use crate::http::HttpClient;
use crate::provider::Discovery;
use crate::OidcError;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Which client to log in as, and what to ask for.
#[derive(Debug, Clone)]
pub struct LoginClient {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub scopes: Vec<String>,
    /// RFC 8707 resource indicator (providers that issue JWT access tokens per resource).
    pub resource: Option<String>,
}

/// What the token endpoint returned.
#[derive(Clone, Serialize, Deserialize)]
pub struct TokenSet {
    pub access_token: String,
    #[serde(default)]
    pub token_type: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("access_token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// The device authorization response: what the person must do.
#[derive(Debug, Clone, Deserialize)]
pub struct DeviceCode {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    #[serde(default)]
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    #[serde(default)]
    pub interval: Option<u64>,
}

#[derive(Deserialize)]
struct OAuthError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

impl LoginClient {
    fn basic(&self) -> Option<(&str, &str)> {
        self.client_secret
            .as_deref()
            .map(|s| (self.client_id.as_str(), s))
    }

    fn base_form(&self) -> Vec<(&str, &str)> {
        let mut form = vec![("client_id", self.client_id.as_str())];
        if let Some(resource) = &self.resource {
            form.push(("resource", resource.as_str()));
        }
        form
    }

    /// Starts the device flow; show the returned codes to the person, then
    /// call [`LoginClient::device_poll`].
    pub async fn device_start(
        &self,
        client: &HttpClient,
        discovery: &Discovery,
    ) -> Result<DeviceCode, OidcError> {
        let endpoint = discovery.device_authorization_endpoint.as_deref().ok_or_else(|| {
            OidcError::Idp(format!(
                "{} does not offer the device authorization grant (no device_authorization_endpoint); use --browser",
                self.issuer
            ))
        })?;
        let scope = self.scopes.join(" ");
        let mut form = self.base_form();
        form.push(("scope", &scope));
        let response = client.post_form(endpoint, &form, self.basic()).await?;
        if !response.status.is_success() {
            return Err(oauth_error("device authorization", &response));
        }
        response.json("device authorization")
    }

    /// Polls the token endpoint until the person approved, denied, or the code expired.
    pub async fn device_poll(
        &self,
        client: &HttpClient,
        discovery: &Discovery,
        code: &DeviceCode,
    ) -> Result<TokenSet, OidcError> {
        let endpoint = token_endpoint(discovery)?;
        let deadline = Instant::now() + Duration::from_secs(code.expires_in.clamp(1, 3600));
        let mut interval = Duration::from_secs(code.interval.unwrap_or(5).clamp(1, 60));
        loop {
            tokio::time::sleep(interval).await;
            if Instant::now() > deadline {
                return Err(OidcError::Idp(
                    "the device code expired before it was approved; run sluice login again".into(),
                ));
            }
            let mut form = self.base_form();
            form.push(("grant_type", "urn:ietf:params:oauth:grant-type:device_code"));
            form.push(("device_code", &code.device_code));
            let response = client.post_form(endpoint, &form, self.basic()).await?;
            if response.status.is_success() {
                return response.json("token");
            }
            match serde_json::from_slice::<OAuthError>(&response.body) {
                Ok(e) if e.error == "authorization_pending" => {}
                Ok(e) if e.error == "slow_down" => interval += Duration::from_secs(5),
                _ => return Err(oauth_error("device token", &response)),
            }
        }
    }

    /// Authorization code + PKCE: listens on a loopback port for the
    /// redirect, tells `show` the URL to open, and trades the code.
    pub async fn browser_login(
        &self,
        client: &HttpClient,
        discovery: &Discovery,
        show: impl FnOnce(&str),
        wait: Duration,
    ) -> Result<TokenSet, OidcError> {
        let endpoint = discovery.authorization_endpoint.as_deref().ok_or_else(|| {
            OidcError::Idp(format!("{} has no authorization_endpoint", self.issuer))
        })?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| OidcError::Config(format!("cannot listen on loopback: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| OidcError::Config(e.to_string()))?
            .port();
        let redirect_uri = format!("http://127.0.0.1:{port}/callback");
        let verifier = random_token();
        let challenge = pkce_challenge(&verifier);
        let state = random_token();
        let scope = self.scopes.join(" ");
        let mut params = vec![
            ("response_type", "code"),
            ("client_id", self.client_id.as_str()),
            ("redirect_uri", redirect_uri.as_str()),
            ("scope", scope.as_str()),
            ("state", state.as_str()),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ];
        if let Some(resource) = &self.resource {
            params.push(("resource", resource.as_str()));
        }
        let sep = if endpoint.contains('?') { '&' } else { '?' };
        let url = format!("{endpoint}{sep}{}", crate::http::form_encode(&params));
        show(&url);
        let query = tokio::time::timeout(wait, accept_callback(&listener))
            .await
            .map_err(|_| {
                OidcError::Idp("no browser came back to the loopback redirect in time".into())
            })??;
        let get = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        if let Some(error) = get("error") {
            return Err(OidcError::Idp(format!(
                "the identity provider refused the login: {error} {}",
                get("error_description").unwrap_or_default()
            )));
        }
        // The state binds the redirect to this login (CSRF).
        if get("state").as_deref() != Some(state.as_str()) {
            return Err(OidcError::Idp(
                "the redirect's state does not match this login".into(),
            ));
        }
        let code =
            get("code").ok_or_else(|| OidcError::Idp("the redirect carries no code".into()))?;
        let mut form = self.base_form();
        form.push(("grant_type", "authorization_code"));
        form.push(("code", &code));
        form.push(("redirect_uri", &redirect_uri));
        form.push(("code_verifier", &verifier));
        let response = client
            .post_form(token_endpoint(discovery)?, &form, self.basic())
            .await?;
        if !response.status.is_success() {
            return Err(oauth_error("token", &response));
        }
        response.json("token")
    }
}

/// An authorization request of a web application (the operator console):
/// send the browser to `url`; keep `state` (bound to the browser) and
/// `verifier` (never sent before the code is traded) for the redirect.
#[derive(Clone)]
pub struct WebLogin {
    pub url: String,
    pub state: String,
    pub verifier: String,
}

impl std::fmt::Debug for WebLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebLogin")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl LoginClient {
    /// Authorization code + PKCE where the redirect comes back to a web
    /// application at `redirect_uri` (registered with the provider).
    pub fn web_start(
        &self,
        discovery: &Discovery,
        redirect_uri: &str,
    ) -> Result<WebLogin, OidcError> {
        let endpoint = discovery.authorization_endpoint.as_deref().ok_or_else(|| {
            OidcError::Idp(format!("{} has no authorization_endpoint", self.issuer))
        })?;
        let verifier = random_token();
        let challenge = pkce_challenge(&verifier);
        let state = random_token();
        let scope = self.scopes.join(" ");
        let mut params = vec![
            ("response_type", "code"),
            ("client_id", self.client_id.as_str()),
            ("redirect_uri", redirect_uri),
            ("scope", scope.as_str()),
            ("state", state.as_str()),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ];
        if let Some(resource) = &self.resource {
            params.push(("resource", resource.as_str()));
        }
        let sep = if endpoint.contains('?') { '&' } else { '?' };
        Ok(WebLogin {
            url: format!("{endpoint}{sep}{}", crate::http::form_encode(&params)),
            state,
            verifier,
        })
    }

    /// Trades the code the provider redirected back with (after the caller
    /// checked `state`) for tokens.
    pub async fn web_finish(
        &self,
        client: &HttpClient,
        discovery: &Discovery,
        redirect_uri: &str,
        code: &str,
        verifier: &str,
    ) -> Result<TokenSet, OidcError> {
        let mut form = self.base_form();
        form.push(("grant_type", "authorization_code"));
        form.push(("code", code));
        form.push(("redirect_uri", redirect_uri));
        form.push(("code_verifier", verifier));
        let response = client
            .post_form(token_endpoint(discovery)?, &form, self.basic())
            .await?;
        if !response.status.is_success() {
            return Err(oauth_error("token", &response));
        }
        response.json("token")
    }
}

/// Client credentials (machine clients; used by tests and agents' tooling).
pub async fn client_credentials(
    client: &HttpClient,
    discovery: &Discovery,
    login: &LoginClient,
) -> Result<TokenSet, OidcError> {
    let scope = login.scopes.join(" ");
    let mut form = login.base_form();
    form.push(("grant_type", "client_credentials"));
    if !scope.is_empty() {
        form.push(("scope", &scope));
    }
    let response = client
        .post_form(token_endpoint(discovery)?, &form, login.basic())
        .await?;
    if !response.status.is_success() {
        return Err(oauth_error("token", &response));
    }
    response.json("token")
}

fn token_endpoint(discovery: &Discovery) -> Result<&str, OidcError> {
    discovery
        .token_endpoint
        .as_deref()
        .ok_or_else(|| OidcError::Idp("the provider has no token_endpoint".into()))
}

fn oauth_error(what: &str, response: &crate::http::HttpResponse) -> OidcError {
    match serde_json::from_slice::<OAuthError>(&response.body) {
        Ok(e) => OidcError::Idp(format!(
            "{what}: {}{}",
            e.error,
            e.error_description
                .map(|d| format!(": {}", d.chars().take(300).collect::<String>()))
                .unwrap_or_default()
        )),
        Err(_) => OidcError::Idp(format!(
            "{what}: the identity provider answered {}",
            response.status
        )),
    }
}

/// 256 bits from the OS generator, base64url.
fn random_token() -> String {
    let mut bytes = Vec::with_capacity(32);
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `S256`: base64url(sha256(verifier)).
pub fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Serves the one redirect: reads `GET /callback?…`, answers a short page.
async fn accept_callback(
    listener: &tokio::net::TcpListener,
) -> Result<Vec<(String, String)>, OidcError> {
    loop {
        let (mut stream, _) = listener
            .accept()
            .await
            .map_err(|e| OidcError::Config(e.to_string()))?;
        let mut buf = vec![0u8; 8192];
        let mut len = 0;
        // The request line is all that matters; read until the head ends.
        while len < buf.len() {
            let n = match stream.read(&mut buf[len..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            len += n;
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let head = String::from_utf8_lossy(&buf[..len]).to_string();
        let target = head
            .lines()
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or("");
        let Some(query) = target.strip_prefix("/callback?") else {
            let _ = stream
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
            continue;
        };
        let body = "Sluice: login complete. You can close this window.";
        let _ = stream
            .write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await;
        return Ok(parse_query(query));
    }
}

fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(k), form_decode(v))
        })
        .collect()
}

fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < bytes.len() && s.is_char_boundary(i + 3) => {
                match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_is_base64url_of_sha256() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gXk-3XNvE"),
            "qTNokcbVxkzLGi4saTcwfHMoArYx80mTyYWhES1I8rw"
        );
    }

    #[test]
    fn queries() {
        assert_eq!(
            parse_query("code=a%2Bb&state=x+y&e"),
            vec![
                ("code".into(), "a+b".into()),
                ("state".into(), "x y".into()),
                ("e".into(), String::new())
            ]
        );
        assert_eq!(form_decode("%zz%4"), "%zz%4");
    }
}
