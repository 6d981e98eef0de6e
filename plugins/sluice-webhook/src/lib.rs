//! Approval notifications to webhooks (`[[webhooks]]`).
//!
//! Each approval request and decision is POSTed, in its own task, as
//! `{"event": "approval.requested" | "approval.decided", "approval": {…}}`
//! (format `json`) or as a Slack-compatible `{"text": "…"}` message (format
//! `slack`). With a secret, the body is signed:
//! `X-Sluice-Signature: sha256=<hex HMAC-SHA256(secret, body)>`.
//! Delivery is best effort (three attempts, then a warning); it never holds
//! up or changes the outcome of a command.

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use sluice_core::approval::{ApprovalNotifier, ApprovalRequest, ApprovalState};
use sluice_core::config::{UpstreamTls, WebhookConfig, WebhookFormat};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// One delivery attempt (connect, send, read the answer) must finish within this time.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per event (network errors, timeouts and 5xx/429 answers are retried).
pub const ATTEMPTS: u32 = 3;
/// Waits before the second and third attempts.
const BACKOFF: [Duration; 2] = [Duration::from_millis(500), Duration::from_secs(2)];
/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-sluice-signature";
/// The event header (`approval.requested` / `approval.decided`).
pub const EVENT_HEADER: &str = "x-sluice-event";
/// Longest command text put in a Slack message.
const SLACK_COMMAND_CHARS: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook {name}: {reason}")]
    Config { name: String, reason: String },
}

/// Which event a delivery is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Requested,
    Decided,
    /// A signed checkpoint of the audit log (JSON webhooks only).
    Checkpoint,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Requested => "approval.requested",
            Event::Decided => "approval.decided",
            Event::Checkpoint => "audit.checkpoint",
        }
    }
}

/// A webhook told about approval requests and decisions.
#[derive(Clone)]
pub struct WebhookNotifier {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    uri: Uri,
    /// `host:port` to dial.
    authority: String,
    /// Set for https.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    secret: Option<Vec<u8>>,
    format: WebhookFormat,
    rules: Option<Vec<String>>,
}

impl std::fmt::Debug for WebhookNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookNotifier")
            .field("name", &self.inner.name)
            .field("url", &self.inner.uri)
            .field("signed", &self.inner.secret.is_some())
            .finish_non_exhaustive()
    }
}

impl WebhookNotifier {
    /// Parses the URL, builds the TLS client (public roots) and resolves the secret.
    pub fn from_config(cfg: &WebhookConfig) -> Result<Self, WebhookError> {
        let err = |reason: String| WebhookError::Config {
            name: cfg.name.clone(),
            reason,
        };
        let uri: Uri = cfg
            .url
            .parse()
            .map_err(|e| err(format!("url {:?} is not valid: {e}", cfg.url)))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(err(format!(
                    "url {:?} must be http:// or https://",
                    cfg.url
                )))
            }
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| err(format!("url {:?} has no host", cfg.url)))?;
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let authority = if bare_host.contains(':') {
            format!("[{bare_host}]:{port}")
        } else {
            format!("{bare_host}:{port}")
        };
        let tls = if https {
            let config = sluice_core::tls::upstream_client_config(UpstreamTls::VerifyFull, None)
                .map_err(|e| err(e.to_string()))?
                .ok_or_else(|| err("TLS client configuration is unavailable".into()))?;
            let mut config = (*config).clone();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = ServerName::try_from(bare_host.to_string())
                .map_err(|_| err(format!("{bare_host:?} is not a valid server name")))?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        let secret = match &cfg.secret {
            Some(s) => {
                let value = s.resolve().map_err(|e| err(format!("secret: {e}")))?;
                if value.is_empty() {
                    return Err(err("secret: the referenced secret is empty".into()));
                }
                Some(value.into_bytes())
            }
            None => None,
        };
        Ok(WebhookNotifier {
            inner: Arc::new(Inner {
                name: cfg.name.clone(),
                uri,
                authority,
                tls,
                secret,
                format: cfg.format,
                rules: cfg.rules.clone(),
            }),
        })
    }

    /// One notifier per `[[webhooks]]` entry.
    pub fn all_from_config(
        config: &sluice_core::Config,
    ) -> Result<Vec<Arc<dyn ApprovalNotifier>>, WebhookError> {
        config
            .webhooks
            .iter()
            .map(|w| Self::from_config(w).map(|n| Arc::new(n) as Arc<dyn ApprovalNotifier>))
            .collect()
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Whether this webhook is told about requests of `rule`.
    pub fn wants(&self, rule: &str) -> bool {
        self.inner
            .rules
            .as_ref()
            .is_none_or(|rules| rules.iter().any(|r| r == rule))
    }

    /// The body POSTed for `event`.
    pub fn body(&self, event: Event, request: &ApprovalRequest) -> Vec<u8> {
        let value = match self.inner.format {
            WebhookFormat::Json => serde_json::json!({
                "event": event.as_str(),
                "approval": request,
            }),
            WebhookFormat::Slack => serde_json::json!({ "text": slack_text(event, request) }),
        };
        serde_json::to_vec(&value).unwrap_or_default()
    }

    /// Delivers `event` now, with retries; the error is the last failure.
    pub async fn deliver(&self, event: Event, request: &ApprovalRequest) -> Result<(), String> {
        let body = Bytes::from(self.body(event, request));
        self.inner.deliver(event, body).await
    }

    fn notify(&self, event: Event, request: &ApprovalRequest) {
        if !self.wants(&request.rule) {
            return;
        }
        let body = Bytes::from(self.body(event, request));
        let inner = self.inner.clone();
        let id = request.id.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = inner.deliver(event, body).await {
                        tracing::warn!(message = "Webhook delivery failed.", webhook = %inner.name, event = event.as_str(), approval = %id, error = %e);
                    }
                });
            }
            Err(_) => {
                tracing::warn!(message = "Webhook not notified: no async runtime.", webhook = %inner.name, event = event.as_str(), approval = %id);
            }
        }
    }
}

/// Signed audit checkpoints, POSTed as `{"event": "audit.checkpoint",
/// "checkpoint": {…}}` to `json` webhooks (a chat channel is not told every
/// few minutes), whatever their `rules`.
impl sluice_core::audit::CheckpointSink for WebhookNotifier {
    fn publish(&self, checkpoint: &sluice_core::audit::Checkpoint) {
        if self.inner.format != WebhookFormat::Json {
            return;
        }
        let body =
            serde_json::json!({ "event": Event::Checkpoint.as_str(), "checkpoint": checkpoint });
        let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let inner = self.inner.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = inner.deliver(Event::Checkpoint, body).await {
                    tracing::warn!(message = "Webhook delivery failed.", webhook = %inner.name, event = Event::Checkpoint.as_str(), error = %e);
                }
            });
        }
    }
}

impl ApprovalNotifier for WebhookNotifier {
    fn requested(&self, request: &ApprovalRequest) {
        self.notify(Event::Requested, request);
    }

    fn decided(&self, request: &ApprovalRequest) {
        self.notify(Event::Decided, request);
    }
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = match <Hmac<sha2_011::Sha256> as KeyInit>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

enum Failure {
    /// Worth another attempt (network, timeout, 5xx, 429).
    Transient(String),
    Permanent(String),
}

impl Inner {
    async fn deliver(&self, event: Event, body: Bytes) -> Result<(), String> {
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                let wait = BACKOFF
                    .get(attempt as usize - 1)
                    .copied()
                    .unwrap_or(Duration::from_secs(2));
                tokio::time::sleep(wait).await;
            }
            match tokio::time::timeout(ATTEMPT_TIMEOUT, self.attempt(event, body.clone())).await {
                Ok(Ok(())) => {
                    tracing::debug!(message = "Webhook delivered.", webhook = %self.name, event = event.as_str(), attempt = attempt + 1);
                    return Ok(());
                }
                Ok(Err(Failure::Permanent(e))) => return Err(e),
                Ok(Err(Failure::Transient(e))) => last = e,
                Err(_) => last = format!("no answer within {ATTEMPT_TIMEOUT:?}"),
            }
            tracing::debug!(message = "Webhook attempt failed.", webhook = %self.name, attempt = attempt + 1, error = %last);
        }
        Err(format!("{ATTEMPTS} attempts failed; last: {last}"))
    }

    async fn attempt(&self, event: Event, body: Bytes) -> Result<(), Failure> {
        let tcp = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| Failure::Transient(format!("connect {}: {e}", self.authority)))?;
        let _ = tcp.set_nodelay(true);
        let request = self.request(event, body)?;
        let status = match &self.tls {
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| Failure::Transient(format!("TLS: {e}")))?;
                send(stream, request).await?
            }
            None => send(tcp, request).await?,
        };
        if status.is_success() {
            Ok(())
        } else if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            Err(Failure::Transient(format!("the webhook answered {status}")))
        } else {
            Err(Failure::Permanent(format!("the webhook answered {status}")))
        }
    }

    fn request(&self, event: Event, body: Bytes) -> Result<Request<Full<Bytes>>, Failure> {
        let bad = |what: &str| Failure::Permanent(format!("cannot build the request: {what}"));
        let signature = self.secret.as_ref().map(|s| signature(s, &body));
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .parse()
            .map_err(|_| bad("path"))?;
        let host = self.uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let headers = request.headers_mut();
        headers.insert(
            header::HOST,
            HeaderValue::from_str(host).map_err(|_| bad("host"))?,
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("sluice-webhook/", env!("CARGO_PKG_VERSION"))),
        );
        headers.insert(EVENT_HEADER, HeaderValue::from_static(event.as_str()));
        if let Some(sig) = signature {
            headers.insert(
                SIGNATURE_HEADER,
                HeaderValue::from_str(&sig).map_err(|_| bad("signature"))?,
            );
        }
        Ok(request)
    }
}

/// Sends one request on a fresh connection; returns the status once the answer is read.
async fn send<S>(stream: S, request: Request<Full<Bytes>>) -> Result<StatusCode, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failure::Transient(e.to_string()))?;
    let driver = tokio::spawn(connection);
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| Failure::Transient(e.to_string()))?;
        let status = response.status();
        // Drain a bounded answer so the peer sees a complete exchange.
        let _ = Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await;
        Ok(status)
    }
    .await;
    driver.abort();
    result
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Slack's mrkdwn needs `&`, `<` and `>` escaped.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn short_command(command: &str) -> String {
    let one_line = command.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out: String = one_line.chars().take(SLACK_COMMAND_CHARS).collect();
    if one_line.chars().count() > SLACK_COMMAND_CHARS {
        out.push('…');
    }
    // A backtick would end the code span early.
    slack_escape(&out.replace('`', "'"))
}

/// The readable sentence of a `slack`-format message.
pub fn slack_text(event: Event, r: &ApprovalRequest) -> String {
    let id = slack_escape(&r.id);
    let subject = slack_escape(&r.requester());
    let connection = slack_escape(&r.connection);
    let rule = slack_escape(&r.rule);
    let command = short_command(&r.command);
    match event {
        Event::Requested => {
            let mut text = format!(
                ":raised_hand: Approval requested: *{subject}* wants to run `{command}` on connection *{connection}* (rule *{rule}*). Approvers: {approvers}. Expires {expires}.",
                approvers = slack_escape(&r.approvers.join(", ")),
                expires = time(r.expires_at_ms),
            );
            if let Some(m) = &r.message {
                text.push_str(&format!(" Rule says: {}", slack_escape(m)));
            }
            if !r.context.is_empty() {
                // The approval covers it too (a body, a pod, a definition).
                text.push_str(&format!(
                    " The request carries more than its text: `sluice approvals show {id}`."
                ));
            }
            text.push_str(&format!(
                "\nApprove: `sluice approvals approve {id}`  Deny: `sluice approvals deny {id} --reason \"…\"`  (id {id})"
            ));
            text
        }
        // Not sent to chat webhooks.
        Event::Checkpoint => String::new(),
        Event::Decided => {
            let (icon, verb) = match r.state {
                ApprovalState::Approved => (":white_check_mark:", "approved"),
                ApprovalState::Denied => (":no_entry:", "denied"),
                ApprovalState::Expired => (":hourglass:", "expired"),
                ApprovalState::Used => (":white_check_mark:", "used"),
                ApprovalState::Pending => (":raised_hand:", "pending"),
            };
            let by = r
                .decided_by
                .as_deref()
                .map(|b| format!(" by *{}*", slack_escape(b)))
                .unwrap_or_default();
            let reason = r
                .reason
                .as_deref()
                .map(|x| format!(" Reason: {}", slack_escape(x)))
                .unwrap_or_default();
            format!(
                "{icon} Approval {id} {verb}{by}: *{subject}*'s `{command}` on connection *{connection}* (rule *{rule}*).{reason}"
            )
        }
    }
}

#[cfg(test)]
mod tests;
