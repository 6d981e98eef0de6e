//! HTTP's side of core's `Session` trait.
//!
//! A session is one client connection + one token + one Sluice connection.
//! The first request that names that pair becomes an [`HttpSession`], which
//! `Gateway::serve` admits like any protocol's session: its credentials are
//! the request's token and connection, a refusal is answered to that request
//! as a problem, and `run` publishes the [`Live`] session on the client
//! connection (every later request is a command on it) and keeps it until
//! core ends it or the client connection closes (its task is aborted then).

use crate::body::Redactor;
use crate::flavor::Flavor;
use crate::inject::Injected;
use crate::problem::{Problem, ProblemKind};
use crate::server::Shared;
use crate::upstream::Upstream;
use sluice_core::config::ConnectionConfig;
use sluice_core::sync::MutexExt;
use sluice_core::{
    AfterRefusal, Refusal, RequestOpening, Session, SessionError, SessionHandle, SessionRequest,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// A session's key on its client connection: the token's digest and the
/// connection's name.
pub(crate) type SessionKey = ([u8; 32], String);

/// The client connection's live sessions.
pub(crate) type Sessions = Arc<Mutex<HashMap<SessionKey, Arc<Live>>>>;

/// A live session on a client connection.
pub(crate) struct Live {
    pub handle: SessionHandle,
    pub injected: Injected,
    /// Finds the injected values in responses (`None`: nothing injected).
    pub redactor: Option<Redactor>,
    pub upstream: Arc<Upstream>,
    /// `Some(reason)` once core ended the session (set by its `run`).
    pub ended_reason: Mutex<Option<String>>,
}

impl Live {
    /// Resolves with the reason when core ends the session (token expiry,
    /// revocation, an operator); also for bodies and upgraded connections
    /// that outlive their client connection's request loop.
    pub async fn ended(&self) -> String {
        self.handle.ended().await
    }

    pub fn ended_reason(&self) -> Option<String> {
        self.ended_reason.locked().clone()
    }
}

/// What the first request hears: the live session, or why not.
pub(crate) type Opening = RequestOpening<Result<Arc<Live>, Problem>>;

/// The first request of a (token, connection) pair on a client connection.
pub(crate) struct HttpSession {
    pub opening: Opening,
    pub key: SessionKey,
    pub connection: ConnectionConfig,
    pub flavor: Arc<dyn Flavor>,
    pub shared: Arc<Shared>,
    pub sessions: Sessions,
    /// Woken when core ends the session, so the client connection closes.
    pub ended_notify: Arc<Notify>,
}

impl HttpSession {
    /// The session's upstream leg and injected credentials.
    fn live(&self, handle: SessionHandle) -> Result<Live, Problem> {
        let injected = self.flavor.credentials(&self.connection)?;
        let upstream = self
            .shared
            .upstream(&self.connection, self.flavor.as_ref())?;
        Ok(Live {
            handle,
            redactor: Redactor::new(injected.secrets()),
            injected,
            upstream,
            ended_reason: Mutex::new(None),
        })
    }
}

#[async_trait::async_trait]
impl Session for HttpSession {
    async fn credentials(&mut self) -> Result<SessionRequest, SessionError> {
        self.opening.credentials()
    }

    async fn refuse(&mut self, refusal: Refusal) -> Result<AfterRefusal, SessionError> {
        self.opening.answer(Err(refusal_problem(&refusal)));
        // The next request with a token opens a new session.
        Ok(AfterRefusal::Close)
    }

    async fn run(mut self, handle: SessionHandle) -> Result<(), SessionError> {
        // HTTP has no channel for notices while a request is held; the
        // client's request simply waits. Dropping the receiver discards them.
        drop(handle.take_notices());
        let live = match self.live(handle) {
            Ok(live) => Arc::new(live),
            Err(problem) => {
                // The handle drops here: the session's end is recorded.
                self.opening.answer(Err(problem));
                return Ok(());
            }
        };
        let existing = {
            let mut map = self.sessions.locked();
            match map.get(&self.key) {
                // A concurrent request (HTTP/2) opened it first; ours ends unused.
                Some(existing) => Some(existing.clone()),
                None => {
                    map.insert(self.key.clone(), live.clone());
                    None
                }
            }
        };
        if let Some(existing) = existing {
            self.opening.answer(Ok(existing));
            return Ok(());
        }
        self.opening.answer(Ok(live.clone()));
        let reason = live.ended().await;
        tracing::info!(message = "Session ended by the gateway.", session = %live.handle.id(), reason = %reason);
        *live.ended_reason.locked() = Some(reason);
        self.ended_notify.notify_one();
        Ok(())
    }
}

/// A refusal from core's admission, as an RFC 9457 problem.
pub(crate) fn refusal_problem(refusal: &Refusal) -> Problem {
    let kind = match refusal {
        Refusal::Authentication(_) => ProblemKind::Unauthenticated,
        Refusal::Access(_) => ProblemKind::Forbidden,
        Refusal::Unavailable(_) => ProblemKind::Unavailable,
    };
    let problem = Problem::new(kind, refusal.client_message());
    match refusal {
        Refusal::Authentication(_) => problem.with_hint("Send a valid Sluice token as Authorization: Bearer <token> (sluice token issue, or your identity provider's access token)."),
        _ => problem,
    }
}
