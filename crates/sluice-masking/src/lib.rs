//! Sluice's masking engine, pure (no I/O) and protocol-neutral so that it can
//! be tested and fuzzed alone: [`compile`] turns a `[masking]` section into a
//! [`MaskingEngine`] (content detectors compiled into one multi-pattern
//! automaton, masking styles, column rules), with a [`StreamMasker`] for byte
//! streams and a [`JsonMasker`] for JSON. Protocols never call it directly:
//! sluice-core's `ResponseMasker` is the extension point, and its
//! `EngineMasker` puts this engine in that position.
//!
//! Built-in detectors and what a candidate must pass:
//!
//! | name | finds | validation |
//! |---|---|---|
//! | `email` | `local@domain.tld`, internationalised letters allowed | local part ≤ 64, no `..`; labels not starting/ending with `-` |
//! | `credit_card` | 13–19 digits, one kind of separator (space or `-`) | Luhn; issuer prefix and length (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay, Maestro); a valid prefix ending at a separator is kept |
//! | `us_ssn` | `123-45-6789`, `123 45 6789` | area not 000, 666 or 9xx; group not 00; serial not 0000 |
//! | `phone` | E.164 (`+44 20 7946 0958`), NANP with separators, national numbers with a trunk 0 | digit counts per form (8–15 for E.164); balanced parentheses; national forms not a slice of a longer digit-group run |
//! | `iban` | two letters, two digits, then the country's length (spaces allowed) | country length table; ISO 13616 mod-97 |
//! | `aws_access_key` | `AKIA…`/`ASIA…` and the other key-id prefixes + 16 | prefix and length |
//! | `aws_secret_key` | 40 base64 characters after a key name (`aws_secret_access_key =`, `"SecretAccessKey":`) | ends there; only the value is masked |
//! | `github_token` | `ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_` + 36, `github_pat_…` | prefix and length |
//! | `gitlab_token` | `glpat-`, `gldt-`, `glrt-`, … + 20 | prefix and length |
//! | `slack_token` | `xox[abposre]-…`, `xapp-…`, `hooks.slack.com` webhook paths | prefix and length; a webhook's path only |
//! | `jwt` | `eyJ….….…` (a two-segment prefix too) | the header decodes (base64url) to a JSON object with `alg`; not the tail of a longer token |
//! | `private_key` | PEM `-----BEGIN … PRIVATE KEY-----` blocks, also with `\n`-escaped newlines | at least 16 base64 characters of key material |
//! | `url_password` | `scheme://user:SECRET@`, `password=SECRET` (also `PGPASSWORD=`, quoted), `"password": "SECRET"` | only the secret is masked |
//! | `ipv4` (opt-in) | dotted quads | octets ≤ 255, no leading zeros, not part of a longer dotted sequence |
//! | `ipv6` (opt-in) | colon-hex forms, `::`, IPv4-mapped | `Ipv6Addr` parses it; a digit present; not inside a word |
//!
//! Overlaps: the earliest match wins, the longest at one position, custom
//! detectors before built-ins on ties; a phone or card number that ran on into
//! a later secret is cut back before it when it stays valid.

mod config;
mod detectors;
mod engine;
pub mod glob;
mod json;
mod prefilter;
mod stream;

#[cfg(test)]
mod tests;

pub use config::{
    ColumnRuleConfig, CustomDetectorConfig, MaskingConfig, MaskingConfigError, Style,
};
pub use engine::{compile, MaskCounts, Masked, MaskingEngine, MAX_HOLDBACK, MIN_HASH_KEY_LEN};
pub use json::{mask_document_as_text, mask_json_text, JsonMasker, JsonPath};
pub use stream::{StreamMasker, TextMask};
