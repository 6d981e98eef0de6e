//! Console sign-in sessions: a random id in an `HttpOnly; Secure;
//! SameSite=Strict` cookie names a server-side entry holding the token the
//! operator signed in with. Every request re-authenticates that token through
//! `Gateway::authenticate`, so expiry, revocation and group changes apply to
//! the console exactly as to the bearer API.
//!
//! State-changing requests must also carry the session's CSRF token in
//! [`CSRF_HEADER`] and, when the browser sends one, an `Origin` equal to the
//! listener's own.

use hyper::header::{self, HeaderMap, HeaderValue};
use sluice_core::sync::MutexExt;
use sluice_core::{Credentials, Gateway, Identity};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// The cookie's name. The `__Host-` prefix makes browsers insist on
/// `Secure`, `Path=/` and no `Domain`, so no other host can set it.
pub(crate) const COOKIE: &str = "__Host-sluice_console";
/// The header that carries the CSRF token on state-changing requests.
pub(crate) const CSRF_HEADER: &str = "x-sluice-csrf";
/// A console session ends after this long without a request, and never
/// outlives the token it was made from.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(8 * 3600);
/// Console sessions held at once; the oldest idle one is dropped beyond it.
const MAX_SESSIONS: usize = 10_000;
/// Console sessions one person (issuer, subject) holds; their own oldest is
/// dropped beyond it, so signing in over and over evicts nobody else.
pub(crate) const MAX_SESSIONS_PER_SUBJECT: usize = 32;

struct Entry {
    token: String,
    csrf: String,
    last_seen: Instant,
    who: (String, String),
}

/// A signed-in console request.
pub(crate) struct Signed {
    pub id: String,
    pub identity: Identity,
    pub csrf: String,
}

/// The console sessions of this process (they end with it).
#[derive(Default)]
pub(crate) struct ConsoleSessions {
    entries: Mutex<HashMap<String, Entry>>,
}

/// 32 random bytes from the OS, hex-encoded.
pub(crate) fn random_hex() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no OS randomness: {e}"))?;
    Ok(hex::encode(bytes))
}

impl ConsoleSessions {
    /// Opens a session for a token that just authenticated; returns its id
    /// (the cookie value) and CSRF token.
    pub(crate) fn create(
        &self,
        token: String,
        identity: &Identity,
    ) -> Result<(String, String), String> {
        let id = random_hex()?;
        let csrf = random_hex()?;
        let who = (identity.issuer.clone(), identity.subject.clone());
        let mut entries = self.entries.locked();
        let now = Instant::now();
        entries.retain(|_, e| now.duration_since(e.last_seen) < IDLE_TIMEOUT);
        let oldest = |entries: &HashMap<String, Entry>, mine: bool| {
            entries
                .iter()
                .filter(|(_, e)| !mine || e.who == who)
                .min_by_key(|(_, e)| e.last_seen)
                .map(|(k, _)| k.clone())
        };
        if entries.values().filter(|e| e.who == who).count() >= MAX_SESSIONS_PER_SUBJECT {
            if let Some(k) = oldest(&entries, true) {
                entries.remove(&k);
            }
        }
        if entries.len() >= MAX_SESSIONS {
            if let Some(k) = oldest(&entries, false) {
                entries.remove(&k);
            }
        }
        entries.insert(
            id.clone(),
            Entry {
                token,
                csrf: csrf.clone(),
                last_seen: now,
                who,
            },
        );
        Ok((id, csrf))
    }

    pub(crate) fn remove(&self, id: &str) {
        self.entries.locked().remove(id);
    }

    /// The session named by the request's cookie: `None` without a cookie,
    /// an error when it is unknown, idle too long, or its token no longer
    /// authenticates (the entry is then forgotten).
    pub(crate) async fn resolve(
        &self,
        gateway: &Gateway,
        headers: &HeaderMap,
    ) -> Option<Result<Signed, String>> {
        let id = cookie_value(headers)?;
        Some(self.resolve_id(gateway, &id).await)
    }

    pub(crate) async fn resolve_id(&self, gateway: &Gateway, id: &str) -> Result<Signed, String> {
        let (token, csrf) =
            {
                let mut entries = self.entries.locked();
                let now = Instant::now();
                match entries.get_mut(id) {
                    Some(e) if now.duration_since(e.last_seen) < IDLE_TIMEOUT => {
                        e.last_seen = now;
                        (e.token.clone(), e.csrf.clone())
                    }
                    Some(_) => {
                        entries.remove(id);
                        return Err("the console session timed out; sign in again".into());
                    }
                    None => return Err(
                        "not signed in to the console (or the gateway restarted); sign in again"
                            .into(),
                    ),
                }
            };
        match gateway
            .authenticate(&Credentials {
                user: String::new(),
                token,
            })
            .await
        {
            Ok(identity) => Ok(Signed {
                id: id.to_string(),
                identity,
                csrf,
            }),
            Err(e) => {
                self.remove(id);
                Err(format!(
                    "the token this console session was opened with is refused now: {e}"
                ))
            }
        }
    }
}

/// The console cookie's value, if the request carries one.
pub(crate) fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_string())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// `Set-Cookie` for a new session, expiring with the token (at most
/// [`IDLE_TIMEOUT`] from now).
pub(crate) fn set_cookie(id: &str, token_expires: SystemTime) -> Option<HeaderValue> {
    let left = token_expires
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .min(IDLE_TIMEOUT);
    HeaderValue::from_str(&format!(
        "{COOKIE}={id}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
        left.as_secs()
    ))
    .ok()
}

/// `Set-Cookie` that removes the session cookie.
pub(crate) fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "__Host-sluice_console=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict",
    )
}

/// A browser's `Origin` must be this listener's (`https://` + `Host`).
/// Requests without one (not from a browser page) pass this check and rely
/// on the CSRF token.
pub(crate) fn check_origin(headers: &HeaderMap) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
            Some("same-origin") | Some("none") | None => Ok(()),
            Some(other) => Err(format!(
                "refused a {other} request (cross-site request forgery protection)"
            )),
        };
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !host.is_empty() && origin.as_bytes() == format!("https://{host}").as_bytes() {
        Ok(())
    } else {
        Err("refused a request from another origin (cross-site request forgery protection)".into())
    }
}

/// A state-changing request: same origin, and the session's CSRF token.
pub(crate) fn check_csrf(headers: &HeaderMap, expected: &str) -> Result<(), String> {
    check_origin(headers)?;
    let given = headers
        .get(CSRF_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or(b"");
    if constant_time_eq(given, expected.as_bytes()) {
        Ok(())
    } else {
        Err(format!(
            "this request needs the console's {CSRF_HEADER} header (cross-site request forgery protection)"
        ))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests;
