//! The gateway-held credential, injected into upstream requests. Values are
//! resolved once per session from their `{ env }` / `{ file }` references,
//! marked sensitive (never logged by hyper), and remembered so that an
//! upstream echoing them back has them redacted from the response.

use crate::problem::{Problem, ProblemKind};
use crate::settings::HttpSettings;
use base64::Engine as _;
use http::{header, HeaderName, HeaderValue};
use sluice_core::config::{ConnectionConfig, Secret};

/// Headers to set on every upstream request of a session, and the secret
/// byte strings to redact from responses.
#[derive(Clone, Default)]
pub struct Injected {
    headers: Vec<(HeaderName, HeaderValue)>,
    secrets: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injected")
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

/// Secrets shorter than this are not searched for in responses: a 3-byte
/// "secret" would redact ordinary text, and is no secret anyway.
pub const MIN_REDACTED_LEN: usize = 6;

impl Injected {
    /// Sets `name: value` on upstream requests (replacing a client's header
    /// of that name); `value` and the parts in `secrets` are redacted from responses.
    pub fn header(
        &mut self,
        name: HeaderName,
        value: &str,
        secrets: &[&str],
    ) -> Result<(), Problem> {
        let mut v = HeaderValue::from_str(value).map_err(|_| {
            misconfigured(&format!(
                "the value injected as header {name} is not a valid header value"
            ))
        })?;
        v.set_sensitive(true);
        self.headers.push((name, v));
        self.secret(value);
        for s in secrets {
            self.secret(s);
        }
        Ok(())
    }

    /// Redacts `value` from responses without injecting it.
    pub fn secret(&mut self, value: &str) {
        let bytes = value.as_bytes().to_vec();
        if bytes.len() >= MIN_REDACTED_LEN && !self.secrets.contains(&bytes) {
            self.secrets.push(bytes);
        }
    }

    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.headers
    }

    pub fn secrets(&self) -> &[Vec<u8>] {
        &self.secrets
    }
}

fn misconfigured(what: &str) -> Problem {
    Problem::new(
        ProblemKind::Unavailable,
        format!("the connection's credential is misconfigured: {what}; ask a Sluice administrator"),
    )
}

/// Resolves a secret reference; the problem names the reference, never a value.
pub fn resolve(secret: &Secret, field: &str) -> Result<String, Problem> {
    secret.resolve().map_err(|e| {
        tracing::warn!(message = "A connection secret could not be read.", field, error = %e);
        misconfigured(&format!("{field} could not be read"))
    })
}

/// `headers = { Name = { env } }`, `bearer = { env }`, `basic = { user, password }`.
pub fn default_credentials(connection: &ConnectionConfig) -> Result<Injected, Problem> {
    let settings = HttpSettings::of(connection)
        .map_err(|(key, _)| misconfigured(&format!("{key} is invalid")))?;
    let mut injected = Injected::default();
    for (name, secret) in &settings.headers {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| misconfigured(&format!("{name:?} is not a header name")))?;
        let value = resolve(secret, &format!("headers.{name}"))?;
        // `Bearer xyz`: the token alone is redacted too.
        let parts: Vec<&str> = value.split_whitespace().skip(1).collect();
        injected.header(header, &value, &parts)?;
    }
    if let Some(secret) = &settings.bearer {
        let token = resolve(secret, "bearer")?;
        injected.header(header::AUTHORIZATION, &format!("Bearer {token}"), &[&token])?;
    }
    if let Some(basic) = &settings.basic {
        let password = resolve(&basic.password, "basic.password")?;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{password}", basic.user));
        injected.header(
            header::AUTHORIZATION,
            &format!("Basic {encoded}"),
            &[&encoded, &password],
        )?;
    }
    Ok(injected)
}
