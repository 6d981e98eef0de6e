//! `[masking]`: which detectors run, how matches are rewritten, and which
//! columns are masked whatever their content. Checked by [`crate::compile`],
//! whose errors name the offending key (`masking.custom.0.regex`, …).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The `[masking]` section. The default masks nothing.
///
/// `K` is how the embedder references the hash key (sluice-core: a `{ env }`
/// or `{ file }` secret reference); the engine only needs to know whether one
/// is configured, and takes the resolved bytes in [`crate::compile`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskingConfig<K = serde::de::IgnoredAny> {
    /// Built-in content detectors to enable: `email`, `credit_card`, `us_ssn`,
    /// `phone`, `iban`, `aws_access_key`, `aws_secret_key`, `github_token`,
    /// `gitlab_token`, `slack_token`, `jwt`, `private_key`, `url_password`, and
    /// the opt-in `ipv4` and `ipv6`. `"default"` stands for all but the opt-in
    /// ones. An unknown name is a configuration error.
    #[serde(default)]
    pub detectors: Vec<String>,
    /// How matches are rewritten unless `styles` or a rule says otherwise.
    #[serde(default)]
    pub style: Style,
    /// HMAC key for the `hash` style; required as soon as any style is `hash`.
    pub hash_key: Option<K>,
    /// Style per built-in detector, custom detector or column rule name.
    #[serde(default)]
    pub styles: BTreeMap<String, Style>,
    /// Detectors defined here: a regular expression or a word list.
    #[serde(default)]
    pub custom: Vec<CustomDetectorConfig>,
    /// Columns masked whatever their content.
    #[serde(default)]
    pub columns: Vec<ColumnRuleConfig>,
    /// Groups whose members see data unmasked (e.g. on-call DBAs); their
    /// sessions are still recorded, with what they saw.
    #[serde(default)]
    pub exempt_groups: Vec<String>,
}

impl<K> Default for MaskingConfig<K> {
    fn default() -> Self {
        MaskingConfig {
            detectors: Vec::new(),
            style: Style::default(),
            hash_key: None,
            styles: BTreeMap::new(),
            custom: Vec::new(),
            columns: Vec::new(),
            exempt_groups: Vec::new(),
        }
    }
}

/// `[[masking.custom]]`: exactly one of `regex` and `words`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomDetectorConfig {
    /// Names the detector in placeholders (`[employee_id]`), `styles` and audit
    /// counts: letters, digits, `_` and `-`, distinct from every built-in.
    pub name: String,
    /// A regular expression (Rust `regex` syntax). Prefer `(?-u:\b)` to `\b`:
    /// the Unicode word boundary makes non-ASCII text slower to scan.
    pub regex: Option<String>,
    /// Literal words or phrases, matched case-insensitively on word boundaries.
    pub words: Option<Vec<String>>,
    /// Style for this detector; `masking.style` when absent.
    pub style: Option<Style>,
}

/// `[[masking.columns]]`: result columns masked whatever their content.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnRuleConfig {
    /// Names the rule in audit counts and `styles`; `columns[N]` when absent.
    pub name: Option<String>,
    /// Connections the rule applies to; all when absent.
    pub connections: Option<Vec<String>>,
    /// `table.column` globs (`users.ssn`, `*.password*`, `public.users.ssn`) or
    /// column-name-only globs (`api_key`), with `*` and `?`, case-insensitive.
    pub columns: Vec<String>,
    /// Style for this rule; `masking.styles.<name>`, then `masking.style`, when absent.
    pub style: Option<Style>,
}

/// How a sensitive value is rewritten.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Style {
    /// A typed placeholder: `[email]`, `[credit_card]`, `[ssn-columns]`.
    #[default]
    Redact,
    /// Keep what identifies without revealing: the last 4 digits of numbers,
    /// an email's domain, the first characters of anything else.
    Partial,
    /// `[email:ab12cd34ef56]`: the first 12 hex digits of HMAC-SHA256(key, value),
    /// stable within a deployment so joins and GROUP BY still line up.
    Hash,
    /// SQL NULL / JSON null where the value is a whole field; the redact
    /// placeholder inside free text.
    Null,
}

impl fmt::Display for Style {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Style::Redact => "redact",
            Style::Partial => "partial",
            Style::Hash => "hash",
            Style::Null => "null",
        })
    }
}

/// A `[masking]` problem, naming the key (`masking.custom.0.regex`) as
/// `sluice config check` reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct MaskingConfigError {
    /// Dotted key with array indexes, e.g. `masking.columns.1.columns`.
    pub key: String,
    pub message: String,
}

impl MaskingConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        MaskingConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}
