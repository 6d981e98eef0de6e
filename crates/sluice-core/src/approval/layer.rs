//! The approval stage of the pipeline.

use super::{
    fingerprint, now_ms, ApprovalRequest, ApprovalService, Grant, Outcome, ReviewMode,
    UNBOUND_CONTEXT,
};
use crate::model::{Action, Verdict};
use crate::pipeline::{CommandRequest, PipelineError, VerdictService};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service, ServiceExt};
use tracing::Instrument;

#[derive(Clone)]
pub struct ApprovalLayer {
    service: Arc<ApprovalService>,
}

impl ApprovalLayer {
    pub fn new(service: Arc<ApprovalService>) -> Self {
        ApprovalLayer { service }
    }
}

impl Layer<VerdictService> for ApprovalLayer {
    type Service = ApprovalStage;
    fn layer(&self, inner: VerdictService) -> ApprovalStage {
        ApprovalStage {
            service: self.service.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct ApprovalStage {
    service: Arc<ApprovalService>,
    inner: VerdictService,
}

impl Service<CommandRequest> for ApprovalStage {
    type Response = Verdict;
    type Error = PipelineError;
    type Future = Pin<Box<dyn Future<Output = Result<Verdict, PipelineError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), PipelineError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: CommandRequest) -> Self::Future {
        let service = self.service.clone();
        let inner = self.inner.clone();
        Box::pin(async move {
            let verdict = inner.oneshot(req.clone()).await?;
            if verdict.action != Action::Review {
                return Ok(verdict);
            }
            Ok(review(&service, &req, verdict).await)
        })
    }
}

fn deny(verdict: &Verdict, message: String) -> Verdict {
    Verdict {
        action: Action::Deny,
        rule: verdict.rule.clone(),
        message: Some(message),
    }
}

async fn review(service: &ApprovalService, req: &CommandRequest, verdict: Verdict) -> Verdict {
    let rule = verdict.rule.clone().unwrap_or_default();
    // A review without settings cannot be decided by anyone: fail closed.
    let Some(settings) = service.settings(&rule) else {
        return deny(
            &verdict,
            "this command needs a review that is not configured; it was not run".into(),
        );
    };
    let s = &req.session;
    let fp = fingerprint(
        &s.identity,
        &s.connection,
        &req.command.text,
        &req.command.context,
    );
    let what = verdict
        .message
        .clone()
        .unwrap_or_else(|| "this command needs approval".into());
    if settings.mode == ReviewMode::Retry {
        // A re-send can only be matched to what was approved when the whole
        // request is in the fingerprint.
        if let Some(why) = req
            .command
            .context
            .iter()
            .find_map(|c| c.strip_prefix(UNBOUND_CONTEXT))
        {
            return deny(
                &verdict,
                format!("{what}, but this request cannot be approved for a re-send: {why}; it was not run"),
            );
        }
        match service.take_grant(&fp) {
            Grant::Approved(r) => {
                return Verdict {
                    action: Action::Allow,
                    rule: verdict.rule,
                    message: Some(format!(
                        "approved by {} (approval {})",
                        r.decided_by.unwrap_or_default(),
                        r.id
                    )),
                }
            }
            Grant::Pending(r) => {
                return Verdict {
                    action: Action::Review,
                    rule: verdict.rule,
                    message: Some(format!(
                        "{what}; approval {} is still pending (approvers: {}); re-send the same command once it is approved",
                        r.id,
                        r.approvers.join(", ")
                    )),
                }
            }
            Grant::None => {}
        }
    }
    let now = now_ms();
    let request = ApprovalRequest {
        id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
        session_id: s.id.clone(),
        command_id: req.command_id,
        subject: s.identity.subject.clone(),
        issuer: s.identity.issuer.clone(),
        connection: s.connection.clone(),
        command: req.command.text.clone(),
        kind: Some(req.command.kind.clone()),
        context: req.command.context.clone(),
        rule: rule.clone(),
        message: verdict.message.clone(),
        approvers: settings.approvers.clone(),
        mode: settings.mode,
        requested_at_ms: now,
        expires_at_ms: now + settings.timeout.as_millis() as u64,
        state: super::ApprovalState::Pending,
        decided_by: None,
        decided_at_ms: None,
        reason: None,
    };
    let hold = settings.mode == ReviewMode::Hold;
    let (request, waiter) = match service.open(request, fp, hold).await {
        Ok(r) => r,
        // Fail closed: no recorded request, no approval.
        Err(e) => {
            return deny(
                &verdict,
                format!(
                    "the approval request could not be recorded ({e}); the command was not run"
                ),
            )
        }
    };
    let wait = humantime::format_duration(settings.timeout);
    let how = format!(
        "an approver (groups: {}) runs `sluice approvals approve {}`",
        request.approvers.join(", "),
        request.id
    );
    let Some(waiter) = waiter else {
        return Verdict {
            action: Action::Review,
            rule: verdict.rule,
            message: Some(format!(
                "{what}; approval {} requested: {how}, then re-send the same command within {wait}",
                request.id
            )),
        };
    };
    if let Some(n) = &req.notices {
        n.send(format!(
            "sluice: {what}; holding it for approval {} (up to {wait}): {how}",
            request.id
        ));
    }
    // If the session goes away while the command waits, the request is
    // withdrawn: an approval must not run a command nobody is waiting for.
    let mut withdraw = Withdraw {
        service,
        id: Some(request.id.clone()),
    };
    let span = tracing::info_span!(
        "approval_wait",
        approval.id = %request.id,
        rule = %rule,
        result = tracing::field::Empty,
    );
    let waited_since = std::time::Instant::now();
    let outcome = await_decision(service, &request.id, &s.identity, settings.timeout, waiter)
        .instrument(span.clone())
        .await;
    withdraw.id = None;
    let result = match &outcome {
        Some(Outcome::Approved { .. }) => "approved",
        Some(Outcome::Denied { .. }) => "denied",
        _ => "expired",
    };
    span.record("result", result);
    crate::metrics::approval_waited(&rule, result, waited_since.elapsed());
    match outcome {
        // The token may have expired while the command waited: an approval
        // does not outlive the session it was asked in.
        Some(Outcome::Approved { by }) if s.identity.expires_at <= std::time::SystemTime::now() => deny(
            &verdict,
            format!(
                "approval {} was given by {by}, but the session's token expired meanwhile; the command was not run",
                request.id
            ),
        ),
        Some(Outcome::Approved { by }) => Verdict {
            action: Action::Allow,
            rule: verdict.rule,
            message: Some(format!("approved by {by} (approval {})", request.id)),
        },
        Some(Outcome::Withdrawn { reason }) => deny(
            &verdict,
            format!(
                "approval {} was withdrawn: {reason}; the command was not run",
                request.id
            ),
        ),
        Some(Outcome::Denied { by, reason }) => deny(
            &verdict,
            format!(
                "approval {} was denied by {by}{}",
                request.id,
                reason.map(|r| format!(": {r}")).unwrap_or_default()
            ),
        ),
        // Timed out, or the service dropped the request.
        None => {
            service.expire_now(&request.id, "no approver decided in time");
            let when = if s.identity.expires_at <= std::time::SystemTime::now() {
                "before the session's token expired".to_string()
            } else {
                format!("within {wait}")
            };
            deny(
                &verdict,
                format!(
                    "approval {} was not decided {when}; the command was not run",
                    request.id
                ),
            )
        }
    }
}

/// How long a holder whose time ran out waits for a decision already being
/// recorded (an append to the audit store).
const DECIDING_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits for the outcome of held request `id`, at most `timeout` and never
/// past the token's expiry; `None` when none came (the request is then
/// expired, unless a decision was being recorded, which is waited for).
async fn await_decision(
    service: &ApprovalService,
    id: &str,
    identity: &crate::model::Identity,
    timeout: std::time::Duration,
    mut waiter: tokio::sync::oneshot::Receiver<Outcome>,
) -> Option<Outcome> {
    let left = identity
        .expires_at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    if let Ok(outcome) = tokio::time::timeout(timeout.min(left), &mut waiter).await {
        return outcome.ok();
    }
    if service.expire_now(id, "no approver decided in time") {
        return None;
    }
    tokio::time::timeout(DECIDING_GRACE, waiter)
        .await
        .ok()
        .and_then(Result::ok)
}

struct Withdraw<'a> {
    service: &'a ApprovalService,
    id: Option<String>,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.service
                .expire_now(&id, "the client left before a decision");
        }
    }
}
