//! The webhook notifier (`plugins/sluice-webhook`) as a run-time plugin: the
//! same code the gateway links in for `[[webhooks]]`, behind the plugin ABI.
//!
//! ```toml
//! [[plugins]]
//! path = "libsluice_webhook_plugin.so"
//! kind = "notifier"
//! config = { name = "ops", url = "https://hooks.example.com/sluice", secret = { env = "HOOK_SECRET" }, format = "json" }
//! ```
//!
//! `config` is a `[[webhooks]]` entry. Each event is delivered (with the
//! webhook's retries) on the host's delivery thread for this plugin; a
//! delivery that fails in the end is an error status, which the gateway logs
//! and counts.

use serde::Deserialize;
use sluice_core::approval::ApprovalRequest;
use sluice_core::config::WebhookConfig;
use sluice_plugin::guest::Guest;
use sluice_webhook::{Event, WebhookNotifier};

struct WebhookPlugin {
    notifier: WebhookNotifier,
    runtime: tokio::runtime::Runtime,
}

#[derive(Deserialize)]
struct Notification {
    event: String,
    request: ApprovalRequest,
}

impl Guest for WebhookPlugin {
    fn init(config: &[u8]) -> Result<Self, String> {
        let config: WebhookConfig = serde_json::from_slice(config)
            .map_err(|e| format!("config is not a [[webhooks]] entry: {e}"))?;
        let notifier = WebhookNotifier::from_config(&config).map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting the delivery runtime: {e}"))?;
        Ok(WebhookPlugin { notifier, runtime })
    }

    fn notify(&self, event: &[u8]) -> Result<(), String> {
        let n: Notification =
            serde_json::from_slice(event).map_err(|e| format!("unreadable event: {e}"))?;
        let event = match n.event.as_str() {
            "requested" => Event::Requested,
            "decided" => Event::Decided,
            other => return Err(format!("unknown event {other:?}")),
        };
        if !self.notifier.wants(&n.request.rule) {
            return Ok(());
        }
        self.runtime
            .block_on(self.notifier.deliver(event, &n.request))
    }
}

#[allow(unsafe_code)]
mod entry {
    sluice_plugin::export_plugin!(
        super::WebhookPlugin,
        c"webhook",
        sluice_plugin::abi::CAP_NOTIFIER
    );
}
