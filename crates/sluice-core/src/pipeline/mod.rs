//! The per-command pipeline every protocol's commands go through:
//!
//! ```text
//! audit (write-ahead) ▶ [platform layers] ▶ policy ▶ approval ▶ admit
//! ```
//!
//! Each stage is a Tower layer over `Service<CommandRequest, Response = Verdict>`;
//! the audit layer outermost turns the verdict into a durable record and a
//! `Decision` for the protocol, which then makes (or refuses) the upstream call.

pub mod audit;
pub mod policy;

use crate::audit::Store;
use crate::model::{Command, Identity, Protocol, Verdict};
use std::future::{ready, Ready};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service};

/// Who is on a session, where: what every layer may look at.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: String,
    pub identity: Identity,
    pub connection: String,
    pub protocol: Protocol,
    pub client_addr: String,
}

/// A command on its way through the pipeline.
#[derive(Debug, Clone)]
pub struct CommandRequest {
    pub session: Arc<SessionInfo>,
    pub command_id: u64,
    pub command: Arc<Command>,
    /// Messages for the client while the command is pending (e.g. "held for
    /// approval"); the protocol delivers them in its own form (a NOTICE).
    pub notices: Option<crate::sync::QueueSender<String>>,
}

/// Why a stage could not decide. Any such error denies the command.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{stage}: {reason}")]
pub struct PipelineError {
    pub stage: &'static str,
    pub reason: String,
}

/// The inner part of the pipeline: decides a verdict for a command.
pub type VerdictService = BoxCloneSyncService<CommandRequest, Verdict, PipelineError>;

/// The innermost stage: a command nobody objected to is allowed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Admit;

impl Service<CommandRequest> for Admit {
    type Response = Verdict;
    type Error = PipelineError;
    type Future = Ready<Result<Verdict, PipelineError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), PipelineError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: CommandRequest) -> Self::Future {
        ready(Ok(Verdict::allow_by_default()))
    }
}

/// A layer a platform team adds to every command's path (see examples/custom-gateway).
pub type BoxedLayer = Box<dyn Fn(VerdictService) -> VerdictService + Send + Sync>;

/// A Tower layer that can sit in every command's path. Implemented for every
/// layer whose service decides verdicts, so builders need one bound.
pub trait PipelineLayer: Send + Sync + 'static {
    fn boxed(self) -> BoxedLayer;
}

impl<L> PipelineLayer for L
where
    L: Layer<VerdictService> + Send + Sync + 'static,
    L::Service: Service<CommandRequest, Response = Verdict, Error = PipelineError>
        + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as Service<CommandRequest>>::Future: Send + 'static,
{
    fn boxed(self) -> BoxedLayer {
        Box::new(move |inner| BoxCloneSyncService::new(self.layer(inner)))
    }
}

/// Assembles the pipeline from its stages.
#[derive(Default)]
pub struct PipelineBuilder {
    extra: Vec<BoxedLayer>,
    record_limit: Option<usize>,
}

impl PipelineBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a layer between the audit layer and the approval stage: its
    /// verdicts are audited like the policy's. The first added is the outermost.
    pub fn layer<L: PipelineLayer>(mut self, layer: L) -> Self {
        self.extra.push(layer.boxed());
        self
    }

    /// A bound on a command's record other than
    /// [`audit::MAX_COMMAND_RECORD`] (tests).
    pub fn record_limit(mut self, bytes: usize) -> Self {
        self.record_limit = Some(bytes);
        self
    }

    pub fn build(
        self,
        engine: Arc<dyn policy::PolicyEngine>,
        store: Arc<dyn Store>,
        approvals: Option<Arc<crate::approval::ApprovalService>>,
    ) -> audit::AuditService {
        let mut svc: VerdictService =
            BoxCloneSyncService::new(policy::PolicyLayer::new(engine).layer(Admit));
        if let Some(approvals) = approvals {
            svc =
                BoxCloneSyncService::new(crate::approval::ApprovalLayer::new(approvals).layer(svc));
        }
        for wrap in self.extra.into_iter().rev() {
            svc = wrap(svc);
        }
        let audit = audit::AuditLayer::new(store);
        match self.record_limit {
            Some(bytes) => audit.with_record_limit(bytes).layer(svc),
            None => audit.layer(svc),
        }
    }
}

#[cfg(test)]
mod tests;
