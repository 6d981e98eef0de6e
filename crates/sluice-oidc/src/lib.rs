//! OpenID Connect for Sluice.
//!
//! - [`OidcProvider`]: a [`sluice_core::Authenticator`] that accepts an IdP's
//!   access tokens (JWTs): discovery, the JWKS cached and refetched on an
//!   unknown `kid` (rate-limited) or expiry, an allow-list of asymmetric
//!   algorithms, `iss`/`aud`/`exp`/`nbf`/`iat` with a small skew, the
//!   identity and groups from configurable claim paths (userinfo fallback).
//! - [`login`]: the OAuth clients `sluice login` uses (device authorization
//!   grant; authorization code with PKCE on a loopback redirect).
//!
//! Core stays free of HTTP clients: it only knows the `Authenticator` trait.

pub mod claims;
pub mod http;
pub mod login;
mod provider;

pub use provider::{token_fingerprint, Discovery, OidcProvider, MIN_REFRESH_INTERVAL};

/// What can go wrong talking to an identity provider.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// A setting is unusable (URL, CA file, algorithm).
    #[error("{0}")]
    Config(String),
    /// The provider could not be reached.
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The provider answered something unusable or an error.
    #[error("{0}")]
    Idp(String),
}

#[cfg(test)]
mod tests;

/// A JWT's claims read WITHOUT verification: for display only (the subject
/// `sluice connect` puts in a URL), never for a decision.
pub fn unverified_claims(token: &str) -> Option<serde_json::Value> {
    provider::raw_parts(token).map(|(_, claims)| claims)
}
