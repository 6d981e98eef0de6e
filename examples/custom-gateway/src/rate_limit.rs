//! A platform team's own pipeline layer: refuse commands beyond a per-session
//! budget. It sits inside the audit layer, so its refusals are audited and
//! rendered to clients like the built-in rules'.

use sluice_core::pipeline::{CommandRequest, PipelineError};
use sluice_core::Verdict;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower::{Layer, Service};

#[derive(Clone)]
pub struct RateLimitLayer {
    state: Arc<Mutex<HashMap<String, (Instant, u32)>>>,
    max: u32,
    per: Duration,
}

impl RateLimitLayer {
    pub fn new(max: u32, per: Duration) -> Self {
        RateLimitLayer {
            state: Arc::default(),
            max,
            per,
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            limits: self.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct RateLimit<S> {
    limits: RateLimitLayer,
    inner: S,
}

impl<S> RateLimit<S> {
    /// Counts the command against its session's window; false when over budget.
    fn admit(&self, session: &str) -> bool {
        let Ok(mut state) = self.limits.state.lock() else {
            // A poisoned lock must fail closed.
            return false;
        };
        let now = Instant::now();
        let entry = state.entry(session.to_string()).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.limits.per {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 <= self.limits.max
    }
}

impl<S> Service<CommandRequest> for RateLimit<S>
where
    S: Service<CommandRequest, Response = Verdict, Error = PipelineError>,
    S::Future: Send + 'static,
{
    type Response = Verdict;
    type Error = PipelineError;
    type Future = Pin<Box<dyn Future<Output = Result<Verdict, PipelineError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PipelineError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: CommandRequest) -> Self::Future {
        if !self.admit(&req.session.id) {
            let message = format!(
                "more than {} commands in {:?} on this session; slow down",
                self.limits.max, self.limits.per
            );
            return Box::pin(async move { Ok(Verdict::deny("custom:rate-limit", message)) });
        }
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::audit::{
        AuditEvent, AuditRecord, SessionSummary, Store, StoreError, VerifyReport,
    };
    use sluice_core::pipeline::policy::RulesEngine;
    use sluice_core::pipeline::{PipelineBuilder, SessionInfo};
    use sluice_core::{Command, CommandKind, Config, Decision, Identity, Protocol};
    use std::time::SystemTime;
    use tower::ServiceExt;

    #[derive(Default)]
    struct Events(Mutex<Vec<AuditEvent>>);

    #[async_trait::async_trait]
    impl Store for Events {
        async fn append(&self, _: &str, e: AuditEvent) -> Result<(), StoreError> {
            self.0.lock().unwrap().push(e);
            Ok(())
        }
        fn append_background(&self, _: &str, e: AuditEvent) {
            self.0.lock().unwrap().push(e);
        }
        async fn sessions(&self) -> Result<Vec<SessionSummary>, StoreError> {
            Ok(vec![])
        }
        async fn session_records(&self, _: &str) -> Result<Vec<AuditRecord>, StoreError> {
            Ok(vec![])
        }
        async fn verify(&self) -> Result<VerifyReport, StoreError> {
            Ok(VerifyReport::default())
        }
    }

    #[tokio::test]
    async fn over_budget_commands_are_refused_and_audited() {
        let store = Arc::new(Events::default());
        let engine = RulesEngine::compile(&Config::default(), &[]).unwrap();
        let pipeline = PipelineBuilder::new()
            .layer(RateLimitLayer::new(2, Duration::from_secs(60)))
            .build(Arc::new(engine), store.clone(), None);
        let session = Arc::new(SessionInfo {
            id: "s".into(),
            identity: Identity {
                subject: "agent".into(),
                groups: vec![],
                issuer: "sluice".into(),
                token_id: "t".into(),
                expires_at: SystemTime::now() + Duration::from_secs(60),
                connections: None,
            },
            connection: "appdb".into(),
            protocol: Protocol::Postgres,
            client_addr: "127.0.0.1:1".into(),
        });
        let mut decisions = Vec::new();
        for n in 1..=3 {
            let req = CommandRequest {
                session: session.clone(),
                command_id: n,
                command: Arc::new(Command {
                    kind: CommandKind::SqlSimple,
                    text: "select 1".into(),
                    context: vec![],
                }),
                notices: None,
            };
            decisions.push(pipeline.clone().oneshot(req).await.unwrap());
        }
        assert!(matches!(decisions[0], Decision::Forward { .. }));
        assert!(matches!(decisions[1], Decision::Forward { .. }));
        assert!(
            matches!(&decisions[2], Decision::Refuse { denial, .. } if denial.rule.as_deref() == Some("custom:rate-limit"))
        );
        assert_eq!(store.0.lock().unwrap().len(), 3);
    }
}
