//! The MCP relay's side of core's `Session` trait.
//!
//! An agent's session on a `kind = "mcp"` connection is keyed by its token
//! and the connection, and cached across its HTTP requests (an MCP client
//! sends each message as its own request). The first request becomes an
//! [`McpSession`], which `Gateway::serve` admits like any protocol's session;
//! `run` builds the upstream leg, publishes the session in the relay's cache
//! and keeps it until core ends it (the cache forgets it at once, so that
//! its record closes) or the cache evicts it.

use crate::upstream::{client, Client, DEFAULT_TIMEOUT, MAX_SESSIONS, SESSION_IDLE};
use http::header::{HeaderName, HeaderValue};
use http::{StatusCode, Uri};
use sluice_core::config::ConnectionConfig;
use sluice_core::{
    AfterRefusal, Refusal, RequestOpening, Session, SessionError, SessionHandle, SessionRequest,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub(crate) struct Live {
    pub handle: SessionHandle,
    pub client: Client,
    pub uri: Uri,
    pub injected: Vec<(HeaderName, HeaderValue)>,
    /// The injected credential's secrets: an answer that echoes one (an
    /// error text, a debug tool) has it redacted before anything reads it.
    pub secrets: Vec<Vec<u8>>,
    pub timeout: Duration,
    /// The upstream's session ids given to this agent session (the last
    /// few): an agent may present only these, never another agent's.
    pub upstream_sessions: Mutex<std::collections::VecDeque<HeaderValue>>,
}

pub(crate) type SessionKey = ([u8; 32], String);

/// A cached session: when it was last used, the session, and the sender
/// whose drop (the entry leaving the map) ends its `run`.
pub(crate) type Sessions = HashMap<SessionKey, (Instant, Arc<Live>, oneshot::Sender<()>)>;

/// A refusal or failure as the relay answers it: status and text.
pub(crate) type Problem = (StatusCode, String);

/// What the first request hears: the session, or why not.
type Opening = RequestOpening<Result<Arc<Live>, Problem>>;

/// The first request of an agent's session on a connection.
pub(crate) struct McpSession {
    opening: Opening,
    key: SessionKey,
    connection: ConnectionConfig,
    sessions: Arc<Mutex<Sessions>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl McpSession {
    /// The session `token` opens on `connection`, and where the request
    /// waiting for it hears the outcome.
    pub fn new(
        token: &str,
        key: SessionKey,
        connection: &ConnectionConfig,
        sessions: Arc<Mutex<Sessions>>,
    ) -> (Self, oneshot::Receiver<Result<Arc<Live>, Problem>>) {
        let (opening, answer) =
            RequestOpening::new(SessionRequest::bearer(token, &connection.name));
        let session = McpSession {
            opening,
            key,
            connection: connection.clone(),
            sessions,
        };
        (session, answer)
    }

    /// The session's upstream leg with the connection's credential.
    fn live(&self, handle: SessionHandle) -> Result<Live, Problem> {
        let connection = &self.connection;
        let injected = sluice_http::inject::default_credentials(connection)
            .map_err(|p| (StatusCode::BAD_GATEWAY, p.detail.clone()))?;
        let tls = sluice_http::upstream::default_tls(connection).map_err(|e| {
            (
                StatusCode::BAD_GATEWAY,
                format!("sluice: upstream TLS: {e}"),
            )
        })?;
        let uri: Uri = connection.upstream.parse().map_err(|_| {
            (
                StatusCode::BAD_GATEWAY,
                "sluice: bad upstream URL".to_string(),
            )
        })?;
        Ok(Live {
            handle,
            client: client(tls),
            uri,
            injected: injected.headers().to_vec(),
            secrets: injected.secrets().to_vec(),
            timeout: sluice_http::settings::HttpSettings::of(connection)
                .map_err(|(key, message)| {
                    (StatusCode::BAD_GATEWAY, format!("sluice: {key}: {message}"))
                })?
                .timeout
                .map(|t| t.0)
                .unwrap_or(DEFAULT_TIMEOUT),
            upstream_sessions: Mutex::new(std::collections::VecDeque::new()),
        })
    }

    /// Caches the session (evicting idle and, at the cap, the oldest);
    /// returns what ends its `run` when the entry leaves the cache.
    fn publish(&self, live: &Arc<Live>) -> oneshot::Receiver<()> {
        let (evicted, gone) = oneshot::channel::<()>();
        let mut map = lock(&self.sessions);
        // Sessions idle for long end (a call in flight keeps its own).
        map.retain(|_, (at, _, _)| at.elapsed() < SESSION_IDLE);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, (at, _, _))| *at)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(self.key.clone(), (Instant::now(), live.clone(), evicted));
        gone
    }
}

#[async_trait::async_trait]
impl Session for McpSession {
    async fn credentials(&mut self) -> Result<SessionRequest, SessionError> {
        self.opening.credentials()
    }

    async fn refuse(&mut self, refusal: Refusal) -> Result<AfterRefusal, SessionError> {
        self.opening.answer(Err((
            StatusCode::FORBIDDEN,
            format!("sluice: {}", refusal.client_message()),
        )));
        Ok(AfterRefusal::Close)
    }

    async fn run(mut self, handle: SessionHandle) -> Result<(), SessionError> {
        // Held calls simply wait; there is no channel for notices.
        drop(handle.take_notices());
        let live = match self.live(handle) {
            Ok(live) => Arc::new(live),
            Err(problem) => {
                self.opening.answer(Err(problem));
                return Ok(());
            }
        };
        let mut gone = self.publish(&live);
        self.opening.answer(Ok(live.clone()));
        // A session the gateway ends (revocation, drain, an operator) leaves
        // the cache at once, so that its record closes.
        tokio::select! {
            _ = live.handle.ended() => {
                let mut map = lock(&self.sessions);
                if map.get(&self.key).is_some_and(|(_, l, _)| Arc::ptr_eq(l, &live)) {
                    map.remove(&self.key);
                }
            }
            _ = &mut gone => {}
        }
        Ok(())
    }
}
