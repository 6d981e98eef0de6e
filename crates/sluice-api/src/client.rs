//! A small HTTPS client for the operator API (what `sluice approvals` uses).

use crate::problem::Problem;
use crate::ApiError;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use sluice_core::approval::ApprovalRequest;
use sluice_core::config::UpstreamTls;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use tokio_rustls::TlsConnector;

/// Connecting (TCP and TLS) must finish within this time.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole request (after connecting) must finish within this time.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Responses larger than this are refused.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// A raw answer of the API (see [`ApiClient::send`]).
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A client of one gateway's operator API, authenticated with one token.
pub struct ApiClient {
    /// `host:port` as given: dialled, and sent as `Host`.
    addr: String,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    token: String,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("addr", &self.addr)
            .field("server_name", &self.server_name)
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// `addr` is a `SocketAddr` or `host:port`. The server certificate must
    /// chain to (or be) a certificate of `ca_pem` (the gateway's generated
    /// `state_dir/tls/ca.crt`, or the `[tls] cert` chain); without `ca_pem`,
    /// to a public root (webpki roots). The name checked is the address's
    /// host (an IP address is checked against the certificate's IP names;
    /// the generated certificate covers localhost, 127.0.0.1 and ::1).
    /// An empty `token` sends no `Authorization` header.
    pub fn new(
        addr: impl std::fmt::Display,
        ca_pem: Option<PathBuf>,
        token: String,
    ) -> Result<Self, ApiError> {
        let addr = addr.to_string();
        let server_name = server_name_of(&addr)?;
        let mut config =
            sluice_core::tls::upstream_client_config(UpstreamTls::VerifyFull, ca_pem.as_deref())?
                .ok_or_else(|| ApiError::Config("TLS client configuration is unavailable".into()))?;
        let mut owned = (*config).clone();
        owned.alpn_protocols = vec![b"http/1.1".to_vec()];
        config = std::sync::Arc::new(owned);
        Ok(ApiClient {
            addr,
            server_name,
            tls: TlsConnector::from(config),
            token,
        })
    }

    /// Checks the certificate against `name` instead of the address's host
    /// (e.g. a `[tls]` certificate issued for a DNS name, dialled by IP).
    pub fn with_server_name(mut self, name: &str) -> Result<Self, ApiError> {
        self.server_name = ServerName::try_from(name.to_string())
            .map_err(|_| ApiError::Config(format!("{name:?} is not a valid server name")))?;
        Ok(self)
    }

    /// Pending requests the caller may decide, and the caller's own; with
    /// `all`, decided and expired ones too.
    pub async fn list(&self, all: bool) -> Result<Vec<ApprovalRequest>, ApiError> {
        let path = if all {
            "/api/v1/approvals?all=true"
        } else {
            "/api/v1/approvals"
        };
        self.call(Method::GET, path, None).await
    }

    pub async fn get(&self, id: &str) -> Result<ApprovalRequest, ApiError> {
        self.call(
            Method::GET,
            &format!("/api/v1/approvals/{}", encode(id)),
            None,
        )
        .await
    }

    pub async fn approve(
        &self,
        id: &str,
        reason: Option<String>,
    ) -> Result<ApprovalRequest, ApiError> {
        self.decide(id, "approve", reason).await
    }

    pub async fn deny(
        &self,
        id: &str,
        reason: Option<String>,
    ) -> Result<ApprovalRequest, ApiError> {
        self.decide(id, "deny", reason).await
    }

    /// Live sessions the caller may see (`GET /api/v1/sessions`).
    pub async fn live_sessions(
        &self,
    ) -> Result<Vec<sluice_core::session::LiveSessionInfo>, ApiError> {
        self.call(Method::GET, "/api/v1/sessions", None).await
    }

    /// Ends a live session (`POST /api/v1/sessions/{id}/kill`).
    pub async fn kill_session(
        &self,
        id: &str,
        reason: Option<String>,
    ) -> Result<crate::identity::KillResponse, ApiError> {
        let body = to_body(&crate::identity::KillRequest { reason })?;
        self.call(
            Method::POST,
            &format!("/api/v1/sessions/{}/kill", encode(id)),
            Some(body),
        )
        .await
    }

    /// Revokes a token by id or by the token itself (`POST /api/v1/tokens/revoke`).
    pub async fn revoke(
        &self,
        request: &crate::identity::RevokeRequest,
    ) -> Result<crate::identity::RevokeResponse, ApiError> {
        self.call(
            Method::POST,
            "/api/v1/tokens/revoke",
            Some(to_body(request)?),
        )
        .await
    }

    /// Trades the client's token for one narrowed to a connection (`POST /api/v1/token/exchange`).
    pub async fn exchange(
        &self,
        request: &crate::identity::ExchangeRequest,
    ) -> Result<crate::identity::ExchangeResponse, ApiError> {
        self.call(
            Method::POST,
            "/api/v1/token/exchange",
            Some(to_body(request)?),
        )
        .await
    }

    /// `GET /healthz` (no token needed).
    pub async fn health(&self) -> Result<(), ApiError> {
        let response = self.send(Method::GET, "/healthz", None).await?;
        if response.status.is_success() {
            Ok(())
        } else {
            Err(api_error(&response))
        }
    }

    async fn decide(
        &self,
        id: &str,
        verb: &str,
        reason: Option<String>,
    ) -> Result<ApprovalRequest, ApiError> {
        let body = serde_json::to_vec(&serde_json::json!({ "reason": reason }))
            .map_err(|e| ApiError::Protocol(e.to_string()))?;
        self.call(
            Method::POST,
            &format!("/api/v1/approvals/{}/{verb}", encode(id)),
            Some(body),
        )
        .await
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ApiError> {
        let response = self.send(method, path, body).await?;
        if !response.status.is_success() {
            return Err(api_error(&response));
        }
        serde_json::from_slice(&response.body)
            .map_err(|e| ApiError::Protocol(format!("{path}: {e}")))
    }

    /// One request, answered as is (any status). Used by the typed methods,
    /// and by tests that look at statuses and headers.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<ApiResponse, ApiError> {
        let unreachable = |reason: String| ApiError::Connect {
            addr: self.addr.clone(),
            reason,
        };
        let stream = sluice_core::tls::connect(
            self.addr.as_str(),
            &self.tls,
            self.server_name.clone(),
            CONNECT_TIMEOUT,
        )
        .await
        .map_err(unreachable)?;

        let mut request = Request::new(Full::new(Bytes::from(body.clone().unwrap_or_default())));
        *request.method_mut() = method;
        *request.uri_mut() = path
            .parse()
            .map_err(|_| ApiError::Config(format!("{path:?} is not a valid request path")))?;
        let headers = request.headers_mut();
        headers.insert(
            header::HOST,
            HeaderValue::from_str(&self.addr)
                .map_err(|_| ApiError::Config(format!("{:?} is not a valid address", self.addr)))?,
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("sluice/", env!("CARGO_PKG_VERSION"))),
        );
        if body.is_some() {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        if !self.token.is_empty() {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", self.token.trim()))
                .map_err(|_| ApiError::Config("the token contains invalid characters".into()))?;
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }

        tokio::time::timeout(REQUEST_TIMEOUT, async {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
            let driver = tokio::spawn(connection);
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let (parts, incoming) = response.into_parts();
            let body = Limited::new(incoming, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| ApiError::Protocol(format!("reading the response: {e}")))?
                .to_bytes();
            drop(sender);
            driver.abort();
            Ok(ApiResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        })
        .await
        .map_err(|_| unreachable("the request timed out".into()))?
    }
}

fn to_body<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(|e| ApiError::Protocol(e.to_string()))
}

/// The problem detail of an error response (or the best description there is).
fn api_error(response: &ApiResponse) -> ApiError {
    let detail = match serde_json::from_slice::<Problem>(&response.body) {
        Ok(p) if !p.detail.is_empty() => p.detail,
        Ok(p) if !p.title.is_empty() => p.title,
        _ => {
            let text = String::from_utf8_lossy(&response.body);
            let text = text.trim();
            if text.is_empty() {
                format!("the API answered {}", response.status)
            } else {
                format!(
                    "the API answered {}: {}",
                    response.status,
                    text.chars().take(300).collect::<String>()
                )
            }
        }
    };
    ApiError::Api {
        status: response.status.as_u16(),
        detail,
    }
}

/// The name the server's certificate must carry for `addr`.
fn server_name_of(addr: &str) -> Result<ServerName<'static>, ApiError> {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Ok(ServerName::IpAddress(sa.ip().into()));
    }
    let bad = || ApiError::Config(format!("{addr:?} is not host:port"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_string()).map_err(|_| bad())
}

/// Percent-encodes a path segment (ids are UUIDs; anything else stays one segment).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        assert!(matches!(
            server_name_of("127.0.0.1:8081"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name_of("[::1]:8081"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name_of("gateway.example.com:443"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(server_name_of("gateway.example.com").is_err());
        assert!(server_name_of("host:notaport").is_err());
    }

    #[test]
    fn encodes_segments() {
        assert_eq!(encode("0190-abc_D.~"), "0190-abc_D.~");
        assert_eq!(encode("a/b?c"), "a%2Fb%3Fc");
    }
}
