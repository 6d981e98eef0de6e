//! Sluice core: the protocol-neutral model, the session sequence every
//! protocol goes through, the per-command pipeline (audit ▶ policy ▶ admit),
//! the masking position, tokens, configuration and the `Store` trait.
//!
//! Core knows no wire format; protocol crates make no security decision.

pub mod approval;
pub mod audit;
pub mod auth;
pub mod config;
pub mod fsutil;
pub mod gateway;
pub mod glob;
pub mod listener;
pub mod masking;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod replay;
pub mod session;
pub mod sync;
pub mod tls;
pub mod token;

#[cfg(test)]
pub(crate) mod testing;

pub use audit::{AuditEvent, AuditRecord, Store, StoreError};
pub use auth::{AuthError, Authenticator};
pub use config::Config;
pub use gateway::{Gateway, GatewayBuilder};
pub use model::*;
pub use session::{Refusal, Session, SessionError, SessionHandle, SessionRequest};
/// Match keys receive rule values as TOML; protocols use this re-export so versions agree.
pub use toml;
