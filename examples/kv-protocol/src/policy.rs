//! The `kv` match key: globs over the command line, case-insensitive.
//!
//! ```toml
//! [[rules]]
//! name = "no-deletes"
//! action = "deny"
//! match = { kv = ["DEL *", "FLUSH*"] }
//! ```

use sluice_core::glob::Glob;
use sluice_core::pipeline::policy::{string_list, CommandMatcher, MatchKey, Scratch};
use sluice_core::{toml, Command, CommandKind};
use std::sync::Arc;

/// Registers the `kv` match key.
pub fn kv_match_key() -> Arc<dyn MatchKey> {
    Arc::new(KvMatchKey)
}

struct KvMatchKey;

impl MatchKey for KvMatchKey {
    fn keys(&self) -> &'static [&'static str] {
        &["kv"]
    }

    fn compile(&self, values: &toml::Table) -> Result<Box<dyn CommandMatcher>, String> {
        let value = values.get("kv").ok_or("kv: expected a list of globs")?;
        let globs = string_list("kv", value)?
            .iter()
            .map(|g| Glob::new(g))
            .collect();
        Ok(Box::new(KvMatcher(globs)))
    }
}

struct KvMatcher(Vec<Glob>);

impl CommandMatcher for KvMatcher {
    fn matches(&self, command: &Command, _: &mut Scratch) -> Result<bool, String> {
        if !matches!(command.kind, CommandKind::Other { .. }) {
            return Ok(false);
        }
        // Judge the line as the upstream will read it: words split on runs
        // of whitespace, so "DEL  key" cannot slip past "DEL *".
        let normal = command
            .text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        Ok(self.0.iter().any(|g| g.matches(&normal)))
    }
}
