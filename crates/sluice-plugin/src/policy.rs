//! Policy plugins as a pipeline layer: before the rules, each policy plugin
//! sees the command and may deny it. A plugin that fails, answers something
//! unreadable or takes too long denies the command (`sluice:plugin-error`).

use crate::loader::{CallError, Plugin};
use serde::Deserialize;
use sluice_core::model::Verdict;
use sluice_core::pipeline::{CommandRequest, PipelineError};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service};

/// The rule name of a denial because a policy plugin could not decide.
pub const PLUGIN_ERROR_RULE: &str = "sluice:plugin-error";

/// How long a policy plugin may take for one command before it is denied.
pub const DECIDE_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks the policy plugins, in config order, before the layers inside it.
#[derive(Clone)]
pub struct PolicyHookLayer {
    plugins: Arc<[Arc<Plugin>]>,
    timeout: Duration,
}

impl PolicyHookLayer {
    pub fn new(plugins: Vec<Arc<Plugin>>) -> Self {
        PolicyHookLayer {
            plugins: plugins.into(),
            timeout: DECIDE_TIMEOUT,
        }
    }
}

impl<S> Layer<S> for PolicyHookLayer {
    type Service = PolicyHook<S>;

    fn layer(&self, inner: S) -> PolicyHook<S> {
        PolicyHook {
            inner,
            plugins: self.plugins.clone(),
            timeout: self.timeout,
        }
    }
}

#[derive(Clone)]
pub struct PolicyHook<S> {
    inner: S,
    plugins: Arc<[Arc<Plugin>]>,
    timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum WireAction {
    Allow,
    Deny,
}

#[derive(Debug, Deserialize)]
struct WireVerdict {
    action: WireAction,
    #[serde(default)]
    message: Option<String>,
}

/// What the plugin sees: the session and the command, as JSON.
fn request_json(req: &CommandRequest) -> Result<Vec<u8>, serde_json::Error> {
    let s = &req.session;
    serde_json::to_vec(&serde_json::json!({
        "session": {
            "id": s.id,
            "subject": s.identity.subject,
            "groups": s.identity.groups,
            "connection": s.connection,
            "protocol": s.protocol.to_string(),
            "client_addr": s.client_addr,
        },
        "command_id": req.command_id,
        "command": &*req.command,
    }))
}

/// One plugin's verdict: `None` lets the command go on to the next stage.
async fn ask(
    plugin: Arc<Plugin>,
    input: Arc<Vec<u8>>,
    timeout: Duration,
) -> Result<Option<Verdict>, CallError> {
    let name = plugin.name().to_string();
    let fail = |reason: String| CallError {
        plugin: name.clone(),
        reason,
    };
    let call = tokio::task::spawn_blocking(move || plugin.call(&input));
    let out = match tokio::time::timeout(timeout, call).await {
        Err(_) => return Err(fail(format!("no verdict within {timeout:?}"))),
        Ok(Err(e)) => return Err(fail(format!("the call did not complete: {e}"))),
        Ok(Ok(out)) => out?,
    };
    let verdict: WireVerdict = serde_json::from_slice(&out).map_err(|e| {
        fail(format!(
            "the verdict is not {{\"action\": \"allow\"|\"deny\"}}: {e}"
        ))
    })?;
    Ok(match verdict.action {
        WireAction::Allow => None,
        WireAction::Deny => Some(Verdict::deny(
            format!("plugin:{name}"),
            verdict
                .message
                .unwrap_or_else(|| format!("denied by the policy plugin {name}")),
        )),
    })
}

impl<S> Service<CommandRequest> for PolicyHook<S>
where
    S: Service<CommandRequest, Response = Verdict, Error = PipelineError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Verdict;
    type Error = PipelineError;
    type Future = Pin<Box<dyn Future<Output = Result<Verdict, PipelineError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PipelineError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: CommandRequest) -> Self::Future {
        // The ready service goes with this call; a fresh clone stays behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let plugins = self.plugins.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            if !plugins.is_empty() {
                let input = match request_json(&req) {
                    Ok(json) => Arc::new(json),
                    Err(e) => return Ok(plugin_error(&format!("encoding the request: {e}"))),
                };
                for plugin in plugins.iter() {
                    match ask(plugin.clone(), input.clone(), timeout).await {
                        Ok(None) => {}
                        Ok(Some(deny)) => return Ok(deny),
                        Err(e) => return Ok(plugin_error(&e.to_string())),
                    }
                }
            }
            inner.call(req).await
        })
    }
}

fn plugin_error(detail: &str) -> Verdict {
    tracing::error!(message = "A policy plugin could not decide; the command is denied.", error = %detail);
    Verdict::deny(
        PLUGIN_ERROR_RULE,
        "a policy check could not be completed, so the command was not run; retry later or ask an operator to check the gateway's policy plugins",
    )
}
