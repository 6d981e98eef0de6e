//! Audit events for the stores' tests (both backends).

use sluice_core::audit::AuditEvent;
use sluice_core::model::{Action, Command, CommandKind, Identity, Outcome, Protocol, Verdict};
use std::time::{Duration, SystemTime};

pub(crate) fn identity() -> Identity {
    Identity {
        subject: "agent".into(),
        groups: vec!["agents".into()],
        issuer: "sluice".into(),
        token_id: "t".into(),
        expires_at: SystemTime::now() + Duration::from_secs(60),
        connections: None,
    }
}

/// `agent` opens `appdb` over PostgreSQL.
pub(crate) fn start_event() -> AuditEvent {
    AuditEvent::SessionStart {
        identity: identity(),
        connection: "appdb".into(),
        protocol: Protocol::Postgres,
        client_addr: "127.0.0.1:5".into(),
    }
}

/// `select N`, allowed.
pub(crate) fn decided(n: u64) -> AuditEvent {
    AuditEvent::CommandDecided {
        command_id: n,
        command: Command {
            kind: CommandKind::SqlSimple,
            text: format!("select {n}"),
            context: vec![],
        },
        verdict: Verdict {
            action: Action::Allow,
            rule: None,
            message: None,
        },
    }
}

pub(crate) fn finished(n: u64) -> AuditEvent {
    AuditEvent::CommandFinished {
        command_id: n,
        outcome: Outcome::default(),
    }
}
