//! The compiled masking engine: every detector in one multi-pattern automaton,
//! candidate validation, overlap resolution and rewriting.
//!
//! How a text is scanned: the leftmost-first automaton finds the earliest
//! position where any detector's pattern matches, and the first pattern
//! matching there. Every later pattern whose matches can start with that
//! byte (read off its NFA, see `prefilter.rs`) is tried there with an
//! anchored search; each match is validated (Luhn, mod-97, …) and the
//! longest valid one wins, earlier detectors breaking ties. A winner is
//! rewritten and the scan resumes after it; when no candidate there is valid
//! the scan resumes one byte later. Text without candidates costs one pass of
//! the lazy DFA and no allocation.

use crate::config::{MaskingConfig, MaskingConfigError, Style};
use crate::detectors::{self, Builtin, Hit, Partial};
use crate::glob::Glob;
use crate::prefilter::Facts;
use hmac::{Hmac, KeyInit, Mac};
use regex_automata::meta::Regex;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, Match, MatchKind, PatternID, PatternSet};
use serde::{Deserialize, Serialize};
use sha2_011::Sha256;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;

/// The stream masker never holds back more than this many bytes. Detectors
/// whose matches can be longer (PEM keys, JWTs, emails, passwords, custom
/// regexes without an upper bound) are guaranteed across chunk boundaries
/// only up to this length; JWTs and PEM keys cut by it are still masked to
/// their end (see [`crate::StreamMasker`]).
pub const MAX_HOLDBACK: usize = 4096;

/// Matches up to this long are checked for overlapping a later match that
/// extends past them (see `next_hit`); the check looks this far ahead.
const STRADDLE: usize = 64;

/// Bytes a scan may read per byte of its window, plus a floor, before it
/// stops judging rejected candidates and masks the rest of the window
/// (see `find_hit`). Ordinary text reads each byte a few times.
const RESCAN_PER_BYTE: usize = 16;
const RESCAN_FLOOR: usize = 64 * 1024;

/// Shortest HMAC key accepted for the `hash` style.
pub const MIN_HASH_KEY_LEN: usize = 16;

/// Reusable search state (allocated on the first candidate only).
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    set: Option<PatternSet>,
}

/// How many values each detector or rule masked, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MaskCounts(pub BTreeMap<String, u64>);

impl MaskCounts {
    pub fn add(&mut self, name: &str, n: u64) {
        if n == 0 {
            return;
        }
        match self.0.get_mut(name) {
            Some(v) => *v += n,
            None => {
                self.0.insert(name.to_string(), n);
            }
        }
    }

    /// Adds `other`'s counts into these.
    pub fn merge(&mut self, other: &MaskCounts) {
        for (name, n) in &other.0 {
            self.add(name, *n);
        }
    }

    pub fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

/// A whole value after masking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Masked {
    Text(String),
    /// The `null` style: the caller writes SQL NULL / JSON null.
    Null,
}

#[derive(Debug)]
pub(crate) enum Kind {
    Builtin(Builtin),
    Custom,
}

impl Kind {
    /// A candidate `hay[start..end]` checked: a custom match is taken whole.
    fn validate(&self, form: usize, hay: &[u8], start: usize, end: usize) -> Option<Hit> {
        match self {
            Kind::Builtin(b) => b.validate(form, hay, start, end),
            Kind::Custom => Some(Hit::whole(start, end)),
        }
    }

    /// See [`Builtin::runs_on`]; a custom pattern may run on.
    fn runs_on(&self) -> bool {
        match self {
            Kind::Builtin(b) => b.runs_on(),
            Kind::Custom => true,
        }
    }

    /// See [`Builtin::may_end_past_candidate`]; a custom hit is its match.
    fn may_end_past_candidate(&self) -> bool {
        match self {
            Kind::Builtin(b) => b.may_end_past_candidate(),
            Kind::Custom => false,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Detector {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) style: Style,
    pub(crate) partial: Partial,
}

#[derive(Debug)]
struct PatternInfo {
    detector: usize,
    form: usize,
}

#[derive(Debug)]
struct ColumnRule {
    name: String,
    connections: Option<Vec<String>>,
    patterns: Vec<ColumnPattern>,
    style: Style,
}

#[derive(Debug)]
struct ColumnPattern {
    /// `None`: a column-name-only pattern, matching in any table (or none).
    table: Option<(Option<Glob>, Glob)>,
    column: Glob,
}

/// The leftmost-first scan, searched with a cache kept per thread.
///
/// The regex's own cache pool gives its fast slot to one thread only; a
/// session's task moves between the runtime's threads, so most searches took
/// the pool's locked path (about a tenth of a masked result's CPU).
struct Scan {
    regex: Regex,
    /// Names this scan's caches in [`SCAN_CACHES`].
    id: u64,
}

/// Caches a thread keeps, for the most recently used scans (a reload
/// compiles a new engine; the old one's cache ages out).
const SCAN_CACHES_PER_THREAD: usize = 4;

thread_local! {
    static SCAN_CACHES: std::cell::RefCell<Vec<(u64, regex_automata::meta::Cache)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl Scan {
    fn new(regex: Regex) -> Self {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Scan { regex, id }
    }

    fn search(&self, input: &Input<'_>) -> Option<Match> {
        SCAN_CACHES.with(|caches| match caches.try_borrow_mut() {
            Ok(mut caches) => self.regex.search_with(self.cache_in(&mut caches), input),
            // Not reentered today; the pool's path stays correct if it is.
            Err(_) => self.regex.search(input),
        })
    }

    fn cache_in<'a>(
        &self,
        caches: &'a mut Vec<(u64, regex_automata::meta::Cache)>,
    ) -> &'a mut regex_automata::meta::Cache {
        let at = match caches.iter().position(|(id, _)| *id == self.id) {
            Some(at) => at,
            None => {
                if caches.len() >= SCAN_CACHES_PER_THREAD {
                    caches.remove(0);
                }
                caches.push((self.id, self.regex.create_cache()));
                caches.len() - 1
            }
        };
        &mut caches[at].1
    }
}

struct Inner {
    /// Leftmost-first over all patterns: finds where candidates start.
    scan: Option<Scan>,
    /// All-matches over the same patterns, which lists the patterns that
    /// match at a start: only built for the plain path (`matches_at_plain`).
    probe: Option<Regex>,
    patterns: Vec<PatternInfo>,
    /// For each byte, the patterns a match of which may start with it, by id.
    starting: Vec<Vec<PatternID>>,
    /// For each byte, the patterns whose matches can contain it, leaving
    /// out those of detectors that may end a hit past its candidate: the
    /// only ones a match running on past a byte can belong to.
    containing: Vec<Vec<usize>>,
    /// The patterns of detectors that may end a hit past its candidate.
    ending_past: Vec<usize>,
    /// Each pattern's facts, by id.
    facts: Vec<Facts>,
    /// Whether the shortcuts derived from [`Facts`] are used (always, except
    /// for the reference path the differential tests compare them with).
    optimized: bool,
    detectors: Vec<Detector>,
    columns: Vec<ColumnRule>,
    default_style: Style,
    mac: Option<Hmac<Sha256>>,
    holdback: usize,
}

/// The compiled `[masking]` configuration. Cheap to clone (shared), `Send + Sync`.
#[derive(Clone)]
pub struct MaskingEngine {
    inner: Arc<Inner>,
}

impl fmt::Debug for MaskingEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaskingEngine")
            .field(
                "detectors",
                &self
                    .inner
                    .detectors
                    .iter()
                    .map(|d| &d.name)
                    .collect::<Vec<_>>(),
            )
            .field(
                "columns",
                &self
                    .inner
                    .columns
                    .iter()
                    .map(|c| &c.name)
                    .collect::<Vec<_>>(),
            )
            .field("style", &self.inner.default_style)
            .field("hash_key", &self.inner.mac.is_some())
            .finish()
    }
}

impl Default for MaskingEngine {
    /// Masks nothing: no detectors, no column rules.
    fn default() -> Self {
        MaskingEngine {
            inner: Arc::new(Inner {
                scan: None,
                probe: None,
                patterns: Vec::new(),
                starting: Vec::new(),
                containing: Vec::new(),
                ending_past: Vec::new(),
                facts: Vec::new(),
                optimized: true,
                detectors: Vec::new(),
                columns: Vec::new(),
                default_style: Style::default(),
                mac: None,
                holdback: 0,
            }),
        }
    }
}

impl<K> MaskingConfig<K> {
    /// Checks the section without the hash key's value (for `config check`):
    /// everything `compile` checks, with a stand-in key when one is configured.
    pub fn validate(&self) -> Result<(), MaskingConfigError> {
        let stand_in = [0u8; MIN_HASH_KEY_LEN];
        let key = self.hash_key.as_ref().map(|_| &stand_in[..]);
        compile(self, key).map(|_| ())
    }
}

fn err(key: impl Into<String>, message: impl Into<String>) -> MaskingConfigError {
    MaskingConfigError::new(key, message)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Characters with a meaning in regex syntax; all may be escaped.
fn escape_into(word: &str, out: &mut String) {
    for c in word.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
}

/// A case-insensitive alternation of literal words, longest first, with ASCII
/// word boundaries where a word starts or ends with a word character.
fn words_pattern(words: &[String]) -> String {
    let mut sorted: Vec<&str> = words.iter().map(|w| w.trim()).collect();
    sorted.sort_by_key(|w| std::cmp::Reverse(w.len()));
    sorted.dedup();
    let is_word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let mut p = String::from("(?i:");
    for (i, w) in sorted.iter().enumerate() {
        if i > 0 {
            p.push('|');
        }
        if is_word(w.chars().next()) {
            p.push_str(r"(?-u:\b)");
        }
        escape_into(w, &mut p);
        if is_word(w.chars().last()) {
            p.push_str(r"(?-u:\b)");
        }
    }
    p.push(')');
    p
}

/// Parses a pattern; returns its maximum match length in bytes (`None`: unbounded).
fn check_pattern(pattern: &str) -> Result<Option<usize>, String> {
    let hir = syntax::parse(pattern).map_err(|e| format!("invalid regex: {e}"))?;
    let props = hir.properties();
    if props.minimum_len() == Some(0) {
        return Err("the regex matches the empty string".into());
    }
    Ok(props.maximum_len())
}

fn parse_column_pattern(p: &str) -> Result<ColumnPattern, String> {
    let p = p.trim();
    if p.is_empty() {
        return Err("empty column pattern".into());
    }
    let (table, column) = match p.rsplit_once('.') {
        None => (None, p),
        Some((table, column)) => {
            let (schema, table) = match table.rsplit_once('.') {
                Some((s, t)) => (Some(s), t),
                None => (None, table),
            };
            if column.is_empty() || table.is_empty() || schema.is_some_and(str::is_empty) {
                return Err(format!(
                    "{p:?} is not `column`, `table.column` or `schema.table.column`"
                ));
            }
            (Some((schema.map(Glob::new), Glob::new(table))), column)
        }
    };
    Ok(ColumnPattern {
        table,
        column: Glob::new(column),
    })
}

/// Compiles `[masking]`. `hash_key` is the resolved `masking.hash_key` secret;
/// it is required when any style is `hash`.
pub fn compile<K>(
    config: &MaskingConfig<K>,
    hash_key: Option<&[u8]>,
) -> Result<MaskingEngine, MaskingConfigError> {
    compile_as(config, hash_key, true)
}

/// [`compile`] without the shortcuts: the plain full scan, the reference
/// the differential tests hold the optimized path to.
#[cfg(test)]
pub(crate) fn compile_unoptimized<K>(
    config: &MaskingConfig<K>,
    hash_key: Option<&[u8]>,
) -> Result<MaskingEngine, MaskingConfigError> {
    compile_as(config, hash_key, false)
}

fn compile_as<K>(
    config: &MaskingConfig<K>,
    hash_key: Option<&[u8]>,
    optimized: bool,
) -> Result<MaskingEngine, MaskingConfigError> {
    let default_style = config.style;
    let mut detectors: Vec<Detector> = Vec::new();
    let mut patterns: Vec<String> = Vec::new();
    let mut infos: Vec<PatternInfo> = Vec::new();
    let mut max_len: Option<usize> = Some(0);
    let mut names: HashSet<String> = HashSet::new();
    let style_for = |name: &str, own: Option<Style>| {
        own.or_else(|| config.styles.get(name).copied())
            .unwrap_or(default_style)
    };

    // Custom detectors come first: at equal spans they win over built-ins.
    for (i, c) in config.custom.iter().enumerate() {
        let key = |field: &str| format!("masking.custom.{i}.{field}");
        if !valid_name(&c.name) {
            return Err(err(
                key("name"),
                format!(
                    "{:?} is not a valid detector name (letters, digits, _ and -)",
                    c.name
                ),
            ));
        }
        if Builtin::from_name(&c.name).is_some() || c.name == "default" {
            return Err(err(
                key("name"),
                format!("{:?} is the name of a built-in detector", c.name),
            ));
        }
        if !names.insert(c.name.clone()) {
            return Err(err(
                key("name"),
                format!("duplicate detector name {:?}", c.name),
            ));
        }
        let (pattern, field) = match (&c.regex, &c.words) {
            (Some(r), None) => (r.clone(), "regex"),
            (None, Some(words)) => {
                if words.is_empty() {
                    return Err(err(key("words"), "list at least one word"));
                }
                if words.iter().any(|w| w.trim().is_empty()) {
                    return Err(err(key("words"), "words must not be empty"));
                }
                (words_pattern(words), "words")
            }
            (Some(_), Some(_)) => {
                return Err(err(
                    key("regex"),
                    "give either `regex` or `words`, not both",
                ))
            }
            (None, None) => {
                return Err(err(
                    format!("masking.custom.{i}"),
                    format!("custom detector {:?} needs `regex` or `words`", c.name),
                ))
            }
        };
        let len = check_pattern(&pattern).map_err(|m| err(key(field), m))?;
        // Also catches what only compilation sees (size limits).
        Regex::new(&pattern).map_err(|e| err(key(field), format!("invalid regex: {e}")))?;
        max_len = max_len.zip(len).map(|(a, b)| a.max(b));
        infos.push(PatternInfo {
            detector: detectors.len(),
            form: 0,
        });
        patterns.push(pattern);
        detectors.push(Detector {
            name: c.name.clone(),
            kind: Kind::Custom,
            style: style_for(&c.name, c.style),
            partial: Partial::Prefix,
        });
    }

    let mut enabled: Vec<Builtin> = Vec::new();
    for name in &config.detectors {
        if name == "default" {
            enabled.extend(detectors::ALL.iter().filter(|b| !b.opt_in()));
        } else if let Some(b) = Builtin::from_name(name) {
            enabled.push(b);
        } else {
            let known: Vec<&str> = detectors::ALL.iter().map(|b| b.name()).collect();
            return Err(err(
                "masking.detectors",
                format!(
                    "unknown detector {name:?}; known: default, {}",
                    known.join(", ")
                ),
            ));
        }
    }
    enabled.sort();
    enabled.dedup();
    for b in enabled {
        for (form, p) in b.patterns().iter().enumerate() {
            let len = check_pattern(p).map_err(|m| err("masking.detectors", m))?;
            max_len = max_len.zip(len).map(|(a, b)| a.max(b));
            infos.push(PatternInfo {
                detector: detectors.len(),
                form,
            });
            patterns.push((*p).to_string());
        }
        detectors.push(Detector {
            name: b.name().to_string(),
            kind: Kind::Builtin(b),
            style: style_for(b.name(), None),
            partial: b.partial(),
        });
    }

    let mut columns: Vec<ColumnRule> = Vec::new();
    for (i, r) in config.columns.iter().enumerate() {
        let key = |field: &str| format!("masking.columns.{i}.{field}");
        let name = match &r.name {
            Some(n) => {
                if !valid_name(n) {
                    return Err(err(
                        key("name"),
                        format!("{n:?} is not a valid rule name (letters, digits, _ and -)"),
                    ));
                }
                if Builtin::from_name(n).is_some() || names.contains(n) {
                    return Err(err(
                        key("name"),
                        format!("{n:?} is already the name of a detector"),
                    ));
                }
                if columns.iter().any(|c| &c.name == n) {
                    return Err(err(
                        key("name"),
                        format!("duplicate column rule name {n:?}"),
                    ));
                }
                n.clone()
            }
            None => format!("columns[{i}]"),
        };
        if r.columns.is_empty() {
            return Err(err(key("columns"), "list at least one column pattern"));
        }
        if r.connections.as_ref().is_some_and(Vec::is_empty) {
            return Err(err(
                key("connections"),
                "list at least one connection, or omit the key for all",
            ));
        }
        let patterns = r
            .columns
            .iter()
            .map(|p| parse_column_pattern(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| err(key("columns"), m))?;
        let style = style_for(&name, r.style);
        columns.push(ColumnRule {
            name,
            connections: r.connections.clone(),
            patterns,
            style,
        });
    }

    for name in config.styles.keys() {
        let known = Builtin::from_name(name).is_some()
            || names.contains(name)
            || columns.iter().any(|c| &c.name == name);
        if !known {
            return Err(err(
                format!("masking.styles.{name}"),
                format!("no built-in detector, custom detector or column rule is named {name:?}"),
            ));
        }
    }

    let active = !detectors.is_empty() || !columns.is_empty();
    let uses_hash = (active && default_style == Style::Hash)
        || detectors.iter().any(|d| d.style == Style::Hash)
        || columns.iter().any(|c| c.style == Style::Hash);
    let mac = match hash_key {
        Some(k) if k.len() < MIN_HASH_KEY_LEN => {
            return Err(err(
                "masking.hash_key",
                format!(
                    "the hash key must be at least {MIN_HASH_KEY_LEN} bytes (e.g. `openssl rand -hex 32`)"
                ),
            ))
        }
        Some(k) => Some(
            <Hmac<Sha256> as KeyInit>::new_from_slice(k)
                .map_err(|e| err("masking.hash_key", format!("unusable hash key: {e}")))?,
        ),
        None if uses_hash => {
            return Err(err(
                "masking.hash_key",
                "the hash style needs a key: hash_key = { env = \"SLUICE_MASK_KEY\" }",
            ))
        }
        None => None,
    };

    let (scan, probe) = if patterns.is_empty() {
        (None, None)
    } else {
        let build = |kind: MatchKind| {
            Regex::builder()
                .configure(Regex::config().match_kind(kind))
                .build_many(&patterns)
                .map_err(|e| {
                    err(
                        "masking",
                        format!("cannot compile the detectors together: {e}"),
                    )
                })
        };
        let probe = if optimized {
            None
        } else {
            Some(build(MatchKind::All)?)
        };
        (Some(Scan::new(build(MatchKind::LeftmostFirst)?)), probe)
    };
    // Deciding a match may look up to 2 × STRADDLE bytes past its start.
    let holdback = match max_len {
        _ if patterns.is_empty() => 0,
        None => MAX_HOLDBACK,
        Some(n) => n.clamp(2 * STRADDLE, MAX_HOLDBACK),
    };

    let facts: Vec<Facts> = patterns.iter().map(|p| Facts::of(p)).collect();
    let ends_past: Vec<bool> = infos
        .iter()
        .map(|info| detectors[info.detector].kind.may_end_past_candidate())
        .collect();
    let ByteTables {
        starting,
        containing,
        ending_past,
    } = ByteTables::of(&facts, &ends_past);

    Ok(MaskingEngine {
        inner: Arc::new(Inner {
            scan,
            probe,
            patterns: infos,
            starting,
            containing,
            ending_past,
            facts,
            optimized,
            detectors,
            columns,
            default_style,
            mac,
            holdback,
        }),
    })
}

/// Per-byte lookups read off the patterns' facts, for the shortcuts of
/// `matches_at` and `may_be_overrun`.
struct ByteTables {
    starting: Vec<Vec<PatternID>>,
    containing: Vec<Vec<usize>>,
    ending_past: Vec<usize>,
}

impl ByteTables {
    /// `ends_past[i]`: pattern `i` belongs to a detector that may end a hit
    /// past its candidate.
    fn of(facts: &[Facts], ends_past: &[bool]) -> Self {
        let ends_past = |i: &usize| ends_past.get(*i).copied().unwrap_or(true);
        let per_byte = |keep: &dyn Fn(usize, u8) -> bool| -> Vec<Vec<usize>> {
            (0..=255u8)
                .map(|b| (0..facts.len()).filter(|&i| keep(i, b)).collect())
                .collect()
        };
        let starting = per_byte(&|i, b| facts[i].leading[0].contains(b))
            .into_iter()
            .map(|ids| {
                ids.into_iter()
                    .filter_map(|i| PatternID::new(i).ok())
                    .collect()
            })
            .collect();
        ByteTables {
            starting,
            containing: per_byte(&|i, b| !ends_past(&i) && facts[i].bytes.contains(b)),
            ending_past: (0..facts.len()).filter(ends_past).collect(),
        }
    }
}

impl MaskingEngine {
    /// Whether anything is configured (detectors or column rules).
    pub fn is_active(&self) -> bool {
        self.inner.scan.is_some() || !self.inner.columns.is_empty()
    }

    /// Whether any column rule is configured.
    pub fn has_column_rules(&self) -> bool {
        !self.inner.columns.is_empty()
    }

    /// Whether a column rule applies on `connection`.
    pub fn has_column_rules_for(&self, connection: &str) -> bool {
        self.inner.columns.iter().any(|r| {
            r.connections
                .as_ref()
                .is_none_or(|c| c.iter().any(|c| c == connection))
        })
    }

    /// Whether content detectors are configured (free text can change).
    pub fn has_detectors(&self) -> bool {
        self.inner.scan.is_some()
    }

    /// The enabled detectors' names, custom ones first.
    pub fn detector_names(&self) -> impl Iterator<Item = &str> {
        self.inner.detectors.iter().map(|d| d.name.as_str())
    }

    /// The style used when nothing more specific is configured.
    pub fn default_style(&self) -> Style {
        self.inner.default_style
    }

    /// Bytes the stream masker holds back: the longest match any enabled
    /// detector can make, capped at [`MAX_HOLDBACK`].
    pub fn holdback(&self) -> usize {
        self.inner.holdback
    }

    /// Masks every detector match in `input`. Returns the input itself (no
    /// allocation) when nothing matched.
    pub fn mask_text<'a>(&self, input: &'a str) -> (Cow<'a, str>, MaskCounts) {
        match self.mask_bytes(input.as_bytes()) {
            (Cow::Borrowed(_), counts) => (Cow::Borrowed(input), counts),
            (Cow::Owned(bytes), counts) => (Cow::Owned(into_string(bytes)), counts),
        }
    }

    /// [`Self::mask_text`] for bytes that need not be UTF-8 (COPY data, error
    /// payloads): everything outside matches is kept byte for byte.
    pub fn mask_bytes<'a>(&self, input: &'a [u8]) -> (Cow<'a, [u8]>, MaskCounts) {
        let mut counts = MaskCounts::default();
        let out = self.mask_bytes_counted(input, &mut counts);
        (out, counts)
    }

    /// [`Self::mask_bytes`], adding what it masked to `counts`: a result's
    /// values share one tally instead of a map each.
    pub fn mask_bytes_counted<'a>(
        &self,
        input: &'a [u8],
        counts: &mut MaskCounts,
    ) -> Cow<'a, [u8]> {
        let mut scratch = Scratch::default();
        match self.next_hit(input, 0, input.len(), &mut scratch) {
            None => Cow::Borrowed(input),
            Some(first) => Cow::Owned(self.rewrite(input, first, &mut scratch, counts)),
        }
    }

    /// Masks one field (a text column value, a JSON string): like
    /// [`Self::mask_text`], except that a value that is entirely one match of
    /// a detector styled `null` gives `None`, for the caller to write SQL
    /// NULL or JSON null.
    pub fn mask_field<'a>(&self, value: &'a str) -> (Option<Cow<'a, str>>, MaskCounts) {
        let bytes = value.as_bytes();
        let mut scratch = Scratch::default();
        let Some(first) = self.next_hit(bytes, 0, bytes.len(), &mut scratch) else {
            return (Some(Cow::Borrowed(value)), MaskCounts::default());
        };
        let (det, h) = first;
        let d = &self.inner.detectors[det];
        let whole = h.start == 0
            && h.secret_start == 0
            && h.end == bytes.len()
            && h.secret_end == bytes.len();
        if whole && d.style == Style::Null {
            let mut counts = MaskCounts::default();
            counts.add(&d.name, 1);
            return (None, counts);
        }
        let mut counts = MaskCounts::default();
        let out = self.rewrite(bytes, first, &mut scratch, &mut counts);
        (Some(Cow::Owned(into_string(out))), counts)
    }

    /// Rewrites `input` from its first hit on.
    fn rewrite(
        &self,
        input: &[u8],
        first: (usize, Hit),
        scratch: &mut Scratch,
        counts: &mut MaskCounts,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len() + 16);
        let mut pos = 0;
        let mut hit = first;
        loop {
            let (det, h) = hit;
            out.extend_from_slice(&input[pos..h.start]);
            self.write_hit(det, input, &h, &mut out);
            counts.add(&self.inner.detectors[det].name, 1);
            pos = h.end;
            match self.next_hit(input, pos, input.len(), scratch) {
                Some(next) => hit = next,
                None => break,
            }
        }
        out.extend_from_slice(&input[pos..]);
        out
    }

    /// Masks a whole value (a column rule's or a JSON key path's) regardless of
    /// its content, labelled `masked` in placeholders.
    pub fn mask_value(&self, value: &str, style_override: Option<Style>) -> Masked {
        self.mask_value_as(
            "masked",
            value,
            style_override.unwrap_or(self.inner.default_style),
        )
    }

    /// Masks a whole value with `label` in placeholders (`[ssn-columns]`,
    /// `[ssn-columns:ab12cd34ef56]`). `partial` keeps an email's domain, the
    /// last 4 digits of number-like values, or the first characters of others.
    pub fn mask_value_as(&self, label: &str, value: &str, style: Style) -> Masked {
        if style == Style::Null {
            return Masked::Null;
        }
        let mut out = Vec::with_capacity(value.len().max(16));
        self.render(
            style,
            label,
            guess_partial(value),
            value.as_bytes(),
            &mut out,
        );
        Masked::Text(into_string(out))
    }

    /// The first column rule that masks `column` of `table` ("schema.table" or
    /// "table"; `None` for computed columns, which only column-name-only
    /// patterns match) on `connection`: its name and style.
    pub fn column_rule(
        &self,
        connection: &str,
        table: Option<&str>,
        column: &str,
    ) -> Option<(&str, Style)> {
        let (schema, table) = match table {
            Some(t) => match t.rsplit_once('.') {
                Some((s, t)) => (Some(s), Some(t)),
                None => (None, Some(t)),
            },
            None => (None, None),
        };
        for rule in &self.inner.columns {
            if let Some(conns) = &rule.connections {
                if !conns.iter().any(|c| c == connection) {
                    continue;
                }
            }
            for p in &rule.patterns {
                if !p.column.matches(column) {
                    continue;
                }
                let hit = match (&p.table, table) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some((ps, pt)), Some(t)) => {
                        // A schema in the pattern is checked when the table's is known.
                        pt.matches(t)
                            && match (ps, schema) {
                                (Some(ps), Some(s)) => ps.matches(s),
                                _ => true,
                            }
                    }
                };
                if hit {
                    return Some((rule.name.as_str(), rule.style));
                }
            }
        }
        None
    }

    /// A column of `table` that a column rule on `connection` may mask, for
    /// a reference to the whole row of a table whose columns are not known
    /// here (`row_to_json(t)`, `t::text`). The answer is the first matching
    /// pattern's column glob, which matches its own text, so that
    /// [`Self::column_rule`] with that name finds the rule. A column-name-only
    /// pattern (`api_key`) may name a column of any table, so it answers for
    /// every table. `None`: no rule can apply to any column of `table`.
    pub fn ruled_column_of(&self, connection: &str, table: &str) -> Option<String> {
        let (schema, table) = match table.rsplit_once('.') {
            Some((s, t)) => (Some(s), t),
            None => (None, table),
        };
        for rule in &self.inner.columns {
            if let Some(conns) = &rule.connections {
                if !conns.iter().any(|c| c == connection) {
                    continue;
                }
            }
            for p in &rule.patterns {
                let hit = match &p.table {
                    None => true,
                    Some((ps, pt)) => {
                        pt.matches(table)
                            && match (ps, schema) {
                                (Some(ps), Some(s)) => ps.matches(s),
                                _ => true,
                            }
                    }
                };
                if hit {
                    return Some(p.column.as_string());
                }
            }
        }
        None
    }

    /// The next validated match starting at or after `pos` whose candidate
    /// starts before `limit`.
    ///
    /// Earliest wins, but not at the cost of cutting another secret: when a
    /// short match of a detector that can run on into what follows (phone and
    /// card numbers: digit groups; custom regexes) overlaps a later match
    /// that extends past it, it is cut back to end before the later one if
    /// it is still valid there.
    pub(crate) fn next_hit(
        &self,
        hay: &[u8],
        pos: usize,
        limit: usize,
        scratch: &mut Scratch,
    ) -> Option<(usize, Hit)> {
        // A hit is never empty (`best_at`): none starts at the very end.
        // (The shortcuts here are skipped on the reference path, so the
        // differential tests check them too.)
        if self.inner.optimized && pos >= hay.len() {
            return None;
        }
        let (pid, hit) = self.find_hit(hay, pos, limit, hay.len(), scratch)?;
        let det = self.inner.patterns[pid].detector;
        let runs_on = self.inner.detectors[det].kind.runs_on();
        let bound = (hit.end + STRADDLE).min(hay.len());
        // Only a match ending past this one's end can make it cut back: none
        // can when it ends where the text does (a whole column value).
        let may_cut = bound > hit.end || !self.inner.optimized;
        if runs_on
            && hit.end - hit.start <= STRADDLE
            && may_cut
            && self.may_be_overrun(hay, &hit, bound)
        {
            if let Some((_, next)) = self.find_hit(hay, hit.start + 1, hit.end, bound, scratch) {
                if next.end > hit.end {
                    if let Some(cut) = self.cut_before(pid, hay, hit.start, next.start) {
                        return Some((det, cut));
                    }
                }
            }
        }
        Some((det, hit))
    }

    /// Whether a hit starting inside `hit` (after its first byte) can end
    /// past it within `hay[..bound]`, as far as each pattern's facts tell.
    /// When none can, `next_hit` need not look for one: what it looks for
    /// is the first hit starting there, and it acts only if that one ends
    /// past `hit`.
    fn may_be_overrun(&self, hay: &[u8], hit: &Hit, bound: usize) -> bool {
        let inner = &*self.inner;
        if !inner.optimized {
            return true;
        }
        let (from, at) = (hit.start + 1, hit.end);
        // A pattern's match that runs on past `at` contains `hay[at]`.
        let spanning = hay
            .get(at)
            .and_then(|&b| inner.containing.get(usize::from(b)))
            .map_or(&[][..], Vec::as_slice);
        let fact = |pid: &usize| inner.facts.get(*pid);
        // A detector that may end a hit past its candidate: the candidate
        // need not reach past `hit`, so any start inside it counts.
        inner
            .ending_past
            .iter()
            .filter_map(fact)
            .any(|facts| (from..at).any(|s| facts.may_start_at(hay, s, bound)))
            || spanning
                .iter()
                .filter_map(fact)
                .any(|facts| facts.may_span(hay, from, at, bound))
    }

    /// `pid`'s match at `start` within `hay[..cut]`, if still valid.
    fn cut_before(&self, pid: usize, hay: &[u8], start: usize, cut: usize) -> Option<Hit> {
        let scan = self.inner.scan.as_ref()?;
        let info = self.inner.patterns.get(pid)?;
        let m = scan.search(
            &Input::new(hay)
                .range(start..cut)
                .anchored(Anchored::Pattern(PatternID::new(pid).ok()?)),
        )?;
        let hit =
            self.inner.detectors[info.detector]
                .kind
                .validate(info.form, hay, start, m.end())?;
        (hit.start == start && hit.end <= cut).then_some(hit)
    }

    /// The first validated match at or after `pos` whose candidate starts
    /// before `limit`, searching `hay[..end]`, with its pattern. Bytes before
    /// `pos` are still seen as look-behind context (`\b`, validators).
    fn find_hit(
        &self,
        hay: &[u8],
        pos: usize,
        limit: usize,
        end: usize,
        scratch: &mut Scratch,
    ) -> Option<(usize, Hit)> {
        let scan = self.inner.scan.as_ref()?;
        let budget = (end - pos.min(end)) * RESCAN_PER_BYTE + RESCAN_FLOOR;
        let mut read = 0;
        let mut at = pos;
        while at <= end {
            let m = scan.search(&Input::new(hay).range(at..end))?;
            if m.start() >= limit {
                return None;
            }
            if let Some(found) = self.best_at(hay, m, pos, end, scratch) {
                return Some(found);
            }
            // A rejected candidate is searched again from one byte later:
            // text shaped to be found and rejected at every byte would cost
            // quadratic time. Past the budget, stop judging and redact up to
            // `limit` (fail closed: more is hidden, never less; a stream's
            // held-back bytes stay held back for the next chunk).
            read += m.end() - at;
            if read > budget {
                let mut rest = Hit::whole(m.start(), limit.max(m.start() + 1).min(end));
                rest.unjudged = true;
                return Some((m.pattern().as_usize(), rest));
            }
            at = m.start() + 1;
        }
        None
    }

    /// Every pattern matching at `m`'s start, validated; the longest wins,
    /// the earliest pattern on ties.
    fn best_at(
        &self,
        hay: &[u8],
        m: Match,
        pos: usize,
        end: usize,
        scratch: &mut Scratch,
    ) -> Option<(usize, Hit)> {
        let inner = &*self.inner;
        let s = m.start();
        let mut best: Option<(usize, Hit)> = None;
        let mut consider = |pid: PatternID, end: usize| {
            let Some(info) = inner.patterns.get(pid.as_usize()) else {
                return;
            };
            let d = &inner.detectors[info.detector];
            let hit = d.kind.validate(info.form, hay, s, end);
            let Some(h) = hit.filter(|h| h.start >= pos && h.end > h.start) else {
                return;
            };
            // `may_be_overrun` relies on it.
            debug_assert!(
                d.kind.may_end_past_candidate() || h.end <= end,
                "{} ended its hit past its candidate",
                d.name
            );
            let better = match &best {
                None => true,
                Some((_, b)) => h.start < b.start || (h.start == b.start && h.end > b.end),
            };
            if better {
                best = Some((pid.as_usize(), h));
            }
        };
        if inner.optimized {
            self.matches_at(hay, m, end, &mut consider);
        } else {
            self.matches_at_plain(hay, m, end, scratch, &mut consider);
        }
        best
    }

    /// Calls `each` with every pattern matching at `m`'s start and its end
    /// there, in pattern order. `m` is leftmost-first: no pattern before
    /// `m.pattern()` matches at its start, and its end there is `m.end()`. A
    /// later pattern matches there only if it can start with that byte: one
    /// short anchored search for each that can.
    fn matches_at(
        &self,
        hay: &[u8],
        m: Match,
        end: usize,
        each: &mut impl FnMut(PatternID, usize),
    ) {
        each(m.pattern(), m.end());
        let s = m.start();
        // Matches are never empty, so there is a byte at `s`.
        let Some(&first) = hay.get(s) else { return };
        let facts = &self.inner.facts;
        let later = self.inner.starting[usize::from(first)]
            .iter()
            .filter(|&&pid| pid > m.pattern())
            .filter(|&&pid| {
                facts
                    .get(pid.as_usize())
                    .is_none_or(|f| f.may_start_at(hay, s, end))
            });
        for &pid in later {
            if let Some(other) = self.anchored(hay, s, end, pid) {
                each(pid, other.end());
            }
        }
    }

    /// [`Self::matches_at`] the plain way, the reference for the tests: an
    /// all-matches probe lists the patterns matching at `m`'s start.
    fn matches_at_plain(
        &self,
        hay: &[u8],
        m: Match,
        end: usize,
        scratch: &mut Scratch,
        each: &mut impl FnMut(PatternID, usize),
    ) {
        let inner = &*self.inner;
        let Some(probe) = inner.probe.as_ref().filter(|_| inner.patterns.len() > 1) else {
            return each(m.pattern(), m.end());
        };
        let s = m.start();
        let set = scratch
            .set
            .get_or_insert_with(|| PatternSet::new(inner.patterns.len()));
        set.clear();
        probe
            .which_overlapping_matches(&Input::new(hay).range(s..end).anchored(Anchored::Yes), set);
        if !set.contains(m.pattern()) {
            each(m.pattern(), m.end());
        }
        for pid in set.iter() {
            if pid == m.pattern() {
                each(pid, m.end());
            } else if let Some(other) = self.anchored(hay, s, end, pid) {
                each(pid, other.end());
            }
        }
    }

    /// `pid`'s leftmost-first match starting at `s` in `hay[..end]`.
    fn anchored(&self, hay: &[u8], s: usize, end: usize, pid: PatternID) -> Option<Match> {
        self.inner.scan.as_ref()?.search(
            &Input::new(hay)
                .range(s..end)
                .anchored(Anchored::Pattern(pid)),
        )
    }

    pub(crate) fn detector(&self, det: usize) -> &Detector {
        &self.inner.detectors[det]
    }

    /// Writes `hay[h.start..h.end]` with its secret part rewritten.
    pub(crate) fn write_hit(&self, det: usize, hay: &[u8], h: &Hit, out: &mut Vec<u8>) {
        let d = &self.inner.detectors[det];
        out.extend_from_slice(&hay[h.start..h.secret_start]);
        // Unjudged text is not a match: a partial rendering would show parts
        // of it (a domain, last digits) that may be other secrets.
        let style = match (h.unjudged, d.style) {
            (true, Style::Partial) => Style::Redact,
            (_, style) => style,
        };
        // `null` has no meaning inside text: it reads as the placeholder.
        self.render(
            style,
            &d.name,
            d.partial,
            &hay[h.secret_start..h.secret_end],
            out,
        );
        out.extend_from_slice(&hay[h.secret_end..h.end]);
    }

    fn render(
        &self,
        style: Style,
        label: &str,
        partial: Partial,
        secret: &[u8],
        out: &mut Vec<u8>,
    ) {
        match (style, &self.inner.mac) {
            (Style::Partial, _) => render_partial(partial, secret, out),
            (Style::Hash, Some(mac)) => {
                let digest = mac.clone().chain_update(secret).finalize().into_bytes();
                out.push(b'[');
                out.extend_from_slice(label.as_bytes());
                out.push(b':');
                // Into a stack buffer: no `String` per masked value.
                let mut tag = [0u8; 12];
                if hex::encode_to_slice(&digest[..6], &mut tag).is_ok() {
                    out.extend_from_slice(&tag);
                }
                out.push(b']');
            }
            // Redact, Null, and Hash without a key (compile refuses that).
            _ => {
                out.push(b'[');
                out.extend_from_slice(label.as_bytes());
                out.push(b']');
            }
        }
    }
}

/// Rewritten UTF-8 text back into a `String`. Matches and replacements are
/// whole UTF-8 sequences, so this is always valid; the lossy path only
/// guards the invariant without a panic.
fn into_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// How `partial` treats a whole value whose type is unknown.
fn guess_partial(value: &str) -> Partial {
    let email = value.split_once('@').is_some_and(|(l, d)| {
        !l.is_empty() && d.contains('.') && !d.contains('@') && !value.contains(char::is_whitespace)
    });
    let digits = value.chars().filter(char::is_ascii_digit).count();
    if email {
        Partial::EmailDomain
    } else if digits >= 6
        && value
            .chars()
            .all(|c| c.is_ascii_digit() || " -.()+/".contains(c))
    {
        Partial::LastFour
    } else {
        Partial::Prefix
    }
}

fn render_partial(partial: Partial, secret: &[u8], out: &mut Vec<u8>) {
    let text = String::from_utf8_lossy(secret);
    match partial {
        Partial::LastFour => {
            let total = text.chars().filter(|c| c.is_alphanumeric()).count();
            let hide = total.saturating_sub(4);
            let mut seen = 0;
            let mut buf = [0u8; 4];
            for c in text.chars() {
                if c.is_alphanumeric() {
                    seen += 1;
                    if seen <= hide {
                        out.push(b'*');
                        continue;
                    }
                }
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
        Partial::EmailDomain => match text.rfind('@') {
            Some(at) => {
                out.extend_from_slice(b"****");
                out.extend_from_slice(text[at..].as_bytes());
            }
            None => render_partial(Partial::Prefix, secret, out),
        },
        Partial::Prefix => {
            // Up to 4 characters, never more than a third of the value.
            let keep = (text.chars().count() / 3).min(4);
            let end = text.char_indices().nth(keep).map_or(text.len(), |(i, _)| i);
            out.extend_from_slice(text[..end].as_bytes());
            out.extend_from_slice("…".as_bytes());
        }
    }
}
