//! A small HTTP/1.1 client for talking to identity providers: discovery,
//! JWKS, userinfo, token and device endpoints. `https://` with certificate
//! verification (system roots or a configured CA), `http://` on loopback
//! only; bounded in time and size.

use crate::OidcError;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use sluice_core::config::{is_loopback_http, UpstreamTls};
use std::path::Path;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Connecting (TCP and TLS) must finish within this time.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole exchange must finish within this time.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// IdP answers larger than this are refused.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// An answer: status and body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub body: Bytes,
}

impl HttpResponse {
    /// The body as JSON, for a 2xx answer.
    pub fn json<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T, OidcError> {
        if !self.status.is_success() {
            return Err(OidcError::Idp(format!(
                "{what}: the identity provider answered {}",
                self.status
            )));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| OidcError::Idp(format!("{what}: not the JSON expected: {e}")))
    }
}

/// A client for one provider (its TLS trust settings).
#[derive(Clone)]
pub struct HttpClient {
    tls: TlsConnector,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

impl HttpClient {
    /// Trusts `ca` (PEM) when given, else the public web roots.
    pub fn new(ca: Option<&Path>) -> Result<Self, OidcError> {
        let config = sluice_core::tls::upstream_client_config(UpstreamTls::VerifyFull, ca)
            .map_err(|e| OidcError::Config(e.to_string()))?
            .ok_or_else(|| OidcError::Config("TLS client configuration is unavailable".into()))?;
        let mut owned = (*config).clone();
        owned.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(HttpClient {
            tls: TlsConnector::from(std::sync::Arc::new(owned)),
        })
    }

    pub async fn get(&self, url: &str, bearer: Option<&str>) -> Result<HttpResponse, OidcError> {
        self.send(Method::GET, url, bearer, None, None).await
    }

    /// `POST` an `application/x-www-form-urlencoded` body, optionally with
    /// HTTP Basic client authentication (`client_secret_basic`).
    pub async fn post_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> Result<HttpResponse, OidcError> {
        self.send(Method::POST, url, None, Some(form_encode(form)), basic)
            .await
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        bearer: Option<&str>,
        form: Option<String>,
        basic: Option<(&str, &str)>,
    ) -> Result<HttpResponse, OidcError> {
        let target = Target::parse(url)?;
        let unreachable = |reason: String| OidcError::Unreachable {
            url: target.display.clone(),
            reason,
        };
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((target.host.as_str(), target.port)),
        )
        .await
        .map_err(|_| unreachable("timed out connecting".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let mut request = Request::new(Full::new(Bytes::from(form.clone().unwrap_or_default())));
        *request.method_mut() = method;
        *request.uri_mut() = target
            .path
            .parse()
            .map_err(|_| OidcError::Config(format!("{url:?} is not a valid URL")))?;
        let headers = request.headers_mut();
        headers.insert(
            header::HOST,
            HeaderValue::from_str(&target.authority)
                .map_err(|_| OidcError::Config(format!("{url:?} is not a valid URL")))?,
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("sluice/", env!("CARGO_PKG_VERSION"))),
        );
        if form.is_some() {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
        }
        let credential = match (bearer, basic) {
            (Some(token), _) => Some(format!("Bearer {token}")),
            (None, Some((id, secret))) => {
                use base64::Engine;
                // RFC 6749 2.3.1: both parts are form-encoded before joining.
                let pair = format!("{}:{}", form_component(id), form_component(secret));
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }
            (None, None) => None,
        };
        if let Some(credential) = credential {
            let mut value = HeaderValue::from_str(&credential)
                .map_err(|_| OidcError::Config("a credential has invalid characters".into()))?;
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
        let exchange = async {
            let response = if target.tls {
                let name = ServerName::try_from(target.host.clone())
                    .map_err(|_| unreachable("not a valid server name".into()))?;
                let stream = self
                    .tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| unreachable(format!("TLS: {e}")))?;
                roundtrip(TokioIo::new(stream), request).await
            } else {
                roundtrip(TokioIo::new(tcp), request).await
            };
            response.map_err(unreachable)
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| OidcError::Unreachable {
                url: target.display.clone(),
                reason: "the request timed out".into(),
            })?
    }
}

async fn roundtrip<T>(io: TokioIo<T>, request: Request<Full<Bytes>>) -> Result<HttpResponse, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let (parts, incoming) = response.into_parts();
        let body = Limited::new(incoming, MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok(HttpResponse {
            status: parts.status,
            body,
        })
    }
    .await;
    driver.abort();
    result
}

/// Where a URL points.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    tls: bool,
    host: String,
    port: u16,
    authority: String,
    path: String,
    /// The URL without its query (for messages).
    display: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, OidcError> {
        let bad = |why: &str| OidcError::Config(format!("{url:?}: {why}"));
        let uri: Uri = url.parse().map_err(|_| bad("not a valid URL"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") if is_loopback_http(url) => false,
            Some("http") => {
                return Err(bad(
                    "identity providers must use https:// (http:// only on loopback)",
                ))
            }
            _ => return Err(bad("not an http(s) URL")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials in URLs are not accepted"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into());
        Ok(Target {
            tls,
            host,
            port,
            authority: authority.as_str().to_string(),
            display: url.split('?').next().unwrap_or(url).to_string(),
            path,
        })
    }
}

/// `application/x-www-form-urlencoded`.
pub fn form_encode(form: &[(&str, &str)]) -> String {
    form.iter()
        .map(|(k, v)| format!("{}={}", form_component(k), form_component(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes one form component (space as `+`).
pub fn form_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("https://idp.example.com/.well-known/openid-configuration").unwrap();
        assert!(t.tls);
        assert_eq!((t.host.as_str(), t.port), ("idp.example.com", 443));
        assert_eq!(t.path, "/.well-known/openid-configuration");
        let t = Target::parse("http://127.0.0.1:3000/jwks?x=1").unwrap();
        assert!(!t.tls);
        assert_eq!((t.port, t.path.as_str()), (3000, "/jwks?x=1"));
        assert_eq!(t.display, "http://127.0.0.1:3000/jwks");
        let t = Target::parse("http://[::1]:3000").unwrap();
        assert_eq!((t.host.as_str(), t.path.as_str()), ("::1", "/"));
        assert!(Target::parse("http://idp.example.com/jwks").is_err());
        assert!(Target::parse("ftp://idp.example.com/").is_err());
        assert!(Target::parse("https://user:pw@idp.example.com/").is_err());
    }

    #[test]
    fn forms() {
        assert_eq!(
            form_encode(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("a b", "c&d")
            ]),
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&a+b=c%26d"
        );
    }
}
