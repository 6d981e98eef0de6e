//! The outermost stage: write-ahead audit. The decided command is durable in
//! the store before the protocol may forward it; if the store cannot take it,
//! the command is refused.

use super::{CommandRequest, PipelineError, VerdictService};
use crate::audit::bounds;
use crate::audit::{AuditEvent, Store, StoreError};
use crate::model::{Action, Decision, Denial, Verdict};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service, ServiceExt};
use tracing::Instrument;

use crate::audit::MAX_COMMAND_RECORD;

#[derive(Clone)]
pub struct AuditLayer {
    store: Arc<dyn Store>,
    record_limit: usize,
}

impl AuditLayer {
    pub fn new(store: Arc<dyn Store>) -> Self {
        AuditLayer {
            store,
            record_limit: MAX_COMMAND_RECORD,
        }
    }

    /// A bound other than [`MAX_COMMAND_RECORD`] (tests).
    pub fn with_record_limit(mut self, bytes: usize) -> Self {
        self.record_limit = bytes;
        self
    }
}

impl Layer<VerdictService> for AuditLayer {
    type Service = AuditService;
    fn layer(&self, inner: VerdictService) -> AuditService {
        AuditService {
            store: self.store.clone(),
            record_limit: self.record_limit,
            inner,
        }
    }
}

/// The assembled pipeline a protocol calls once per command.
#[derive(Clone)]
pub struct AuditService {
    store: Arc<dyn Store>,
    record_limit: usize,
    inner: VerdictService,
}

impl std::fmt::Debug for AuditService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditService")
    }
}

impl Service<CommandRequest> for AuditService {
    type Response = Decision;
    type Error = StoreError;
    type Future = Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), StoreError>> {
        // Readiness of the inner stages is awaited per call (`oneshot`), so a
        // slow stage cannot wedge the audit layer.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: CommandRequest) -> Self::Future {
        let store = self.store.clone();
        let inner = self.inner.clone();
        let record_limit = self.record_limit;
        let span = tracing::info_span!(
            "command",
            session = %req.session.id,
            command_id = req.command_id,
            verdict = tracing::field::Empty,
            rule = tracing::field::Empty,
        );
        Box::pin(
            async move {
                let session_id = req.session.id.clone();
                let command_id = req.command_id;
                let (protocol, connection) = (req.session.protocol, req.session.connection.clone());
                let (command, mut verdict) =
                    match bounds::record_len_over(&req.command, record_limit) {
                        // Never judged: an approval would hold, and a webhook
                        // carry, what the record cannot.
                        Some(len) => (
                            bounds::abridged(&req.command),
                            bounds::too_large_to_record(len, record_limit),
                        ),
                        None => {
                            let command = (*req.command).clone();
                            match inner.oneshot(req).await {
                                Ok(v) => (command, v),
                                // A stage that cannot decide must fail closed.
                                Err(e) => {
                                    crate::metrics::error(protocol, "internal", "pipeline");
                                    (command, failed_closed(&e))
                                }
                            }
                        }
                    };
                bounds::bound_message(&mut verdict);
                let current = tracing::Span::current();
                current.record("verdict", tracing::field::display(verdict.action));
                if let Some(rule) = &verdict.rule {
                    current.record("rule", rule.as_str());
                }
                let stored = store
                    .append(
                        &session_id,
                        AuditEvent::CommandDecided {
                            command_id,
                            command,
                            verdict: verdict.clone(),
                        },
                    )
                    .await;
                if let Err(e) = stored {
                    crate::metrics::error(protocol, "internal", "store");
                    return Err(e);
                }
                crate::metrics::command_decided(
                    protocol,
                    &connection,
                    verdict.action,
                    verdict.rule.as_deref(),
                );
                Ok(match verdict.action {
                    Action::Allow => Decision::Forward { command_id },
                    _ => Decision::Refuse {
                        command_id,
                        denial: denial_for(&verdict),
                    },
                })
            }
            .instrument(span),
        )
    }
}

fn failed_closed(e: &PipelineError) -> Verdict {
    tracing::warn!(message = "A pipeline stage failed; denying the command.", stage = e.stage, reason = %e.reason);
    Verdict {
        action: Action::Deny,
        rule: Some(format!("sluice:{}-error", e.stage)),
        message: Some(format!(
            "the gateway could not evaluate this command ({e}); it was not run"
        )),
    }
}

/// What the caller reads: the rule, its message, and what to do next.
pub fn denial_for(verdict: &Verdict) -> Denial {
    let rule = verdict.rule.clone();
    let message = match (&rule, &verdict.message) {
        (Some(r), Some(m)) => format!("command denied by rule {r:?}: {m}"),
        (Some(r), None) => format!("command denied by rule {r:?}"),
        (None, Some(m)) => format!("command denied: {m}"),
        (None, None) => "command denied by the connection's default policy".to_string(),
    };
    let hint = Some(match verdict.action {
        Action::Review => "This command needs approval; ask an approver to run `sluice approvals approve ID`.".to_string(),
        _ => "The command was not run. Change the command to stay within policy, or ask a Sluice administrator about this rule.".to_string(),
    });
    Denial {
        rule,
        message,
        hint,
    }
}
