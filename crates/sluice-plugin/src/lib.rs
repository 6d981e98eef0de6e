//! Sluice plugins loaded at run time (`[[plugins]]` in the config): a stable,
//! versioned C ABI ([`abi`]), the loader ([`Plugin`]), and adapters that plug
//! each kind into core's extension points:
//!
//! | kind | core extension point | on failure |
//! |---|---|---|
//! | `detector` | [`PluginMasker`], a `ResponseMasker` wrapping the configured one | the value is masked whole |
//! | `policy` | [`PolicyHookLayer`], a pipeline layer before the rules | the command is denied (`sluice:plugin-error`) |
//! | `notifier` | [`PluginNotifier`], an `ApprovalNotifier` | logged and counted |
//! | `audit_sink` | [`AuditSinkStore`], a `Store` tap after the durable write | logged and counted |
//!
//! Libraries are never unloaded. See `docs/plugins.md` for the ABI and how to
//! write a plugin.

pub mod abi;
mod detector;
pub mod guest;
mod loader;
mod policy;
mod sink;

pub use detector::{PluginMasker, PLUGIN_ERROR};
pub use loader::{CallError, LoadError, Plugin};
pub use policy::{PolicyHook, PolicyHookLayer, DECIDE_TIMEOUT, PLUGIN_ERROR_RULE};
pub use sink::{AuditSinkStore, PluginNotifier, Worker};

use sluice_core::approval::ApprovalNotifier;
use sluice_core::audit::Store;
use sluice_core::config::{PluginConfig, PluginKind};
use sluice_core::masking::ResponseMasker;
use std::sync::Arc;

/// Every configured plugin, loaded and initialised, sorted by kind.
#[derive(Debug, Default)]
pub struct Plugins {
    detectors: Vec<Arc<Plugin>>,
    policies: Vec<Arc<Plugin>>,
    notifiers: Vec<Arc<Plugin>>,
    audit_sinks: Vec<Arc<Plugin>>,
}

impl Plugins {
    /// Loads every `[[plugins]]` entry; the first that fails stops it, with
    /// an error naming the library.
    pub fn load(configs: &[PluginConfig]) -> Result<Plugins, LoadError> {
        let mut plugins = Plugins::default();
        for config in configs {
            let plugin = Arc::new(Plugin::load(config)?);
            tracing::info!(message = "Plugin loaded.", plugin = %plugin.name(), path = %config.path.display(), kind = ?config.kind);
            match config.kind {
                PluginKind::Detector => plugins.detectors.push(plugin),
                PluginKind::Policy => plugins.policies.push(plugin),
                PluginKind::Notifier => plugins.notifiers.push(plugin),
                PluginKind::AuditSink => plugins.audit_sinks.push(plugin),
            }
        }
        Ok(plugins)
    }

    /// `masker` with the detector plugins after it (itself when there are none).
    pub fn masker(
        &self,
        masker: Arc<dyn ResponseMasker>,
        exempt_groups: Vec<String>,
    ) -> Arc<dyn ResponseMasker> {
        if self.detectors.is_empty() {
            return masker;
        }
        Arc::new(PluginMasker::new(
            masker,
            self.detectors.clone(),
            exempt_groups,
        ))
    }

    /// The policy plugins as one pipeline layer; `None` when there are none.
    pub fn policy_layer(&self) -> Option<PolicyHookLayer> {
        (!self.policies.is_empty()).then(|| PolicyHookLayer::new(self.policies.clone()))
    }

    /// The notifier plugins, each with its delivery thread.
    pub fn notifiers(&self) -> std::io::Result<Vec<Arc<dyn ApprovalNotifier>>> {
        self.notifiers
            .iter()
            .map(|p| {
                Worker::start(p.clone())
                    .map(|w| Arc::new(PluginNotifier(w)) as Arc<dyn ApprovalNotifier>)
            })
            .collect()
    }

    /// `store` with the audit sink plugins tapping it (itself when there are none).
    pub fn store(&self, store: Arc<dyn Store>) -> std::io::Result<Arc<dyn Store>> {
        let sinks = self
            .audit_sinks
            .iter()
            .map(|p| Worker::start(p.clone()))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(AuditSinkStore::wrap(store, sinks))
    }
}
