//! Sluice core: the protocol-neutral model, the session sequence every
//! protocol goes through, the per-command pipeline (audit ▶ policy ▶ admit),
//! the masking position, tokens, configuration and the `Store` trait.
//!
//! Core knows no wire format; protocol crates make no security decision.

pub mod approval;
pub mod audit;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod fsutil;
pub mod gateway;
pub mod io;
pub use sluice_masking::glob;
pub mod listener;
pub mod masking;
pub mod metrics;
pub mod model;
pub mod pinned;
pub mod pipeline;
pub mod replay;
pub mod session;
pub mod sync;
pub mod tls;
pub mod token;

/// Fakes for tests of code built on core (an in-memory `Store`, identities,
/// requests): enable the `testing` feature.
#[cfg(any(test, feature = "testing"))]
pub mod testing;

// What a platform team assembling a gateway, or a contributor writing a
// protocol crate, needs most, at the crate root.
pub use audit::{AuditEvent, AuditRecord, Store, StoreError};
pub use auth::{AuthError, Authenticator};
pub use config::{Config, ConnectionConfig, ConnectionKind, Secret};
pub use gateway::{ConnectionKinds, Gateway, GatewayBuilder, GatewayError};
pub use listener::{DrainReport, Listener, ListenerLimits};
pub use masking::{ResponseMasker, RowMasker, SessionMasker};
pub use model::*;
pub use pipeline::policy::{CommandMatcher, MatchKey};
pub use pipeline::{PipelineLayer, SessionInfo};
pub use session::{
    AfterRefusal, Refusal, RequestOpening, Session, SessionError, SessionHandle, SessionRequest,
};
/// Match keys receive rule values as TOML; protocols use this re-export so versions agree.
pub use toml;
