//! JSON-aware masking: detectors over string values and object keys, and
//! whole values at key paths.
//!
//! Key paths are a small JSONPath subset: `$` (the root), `.key`, `['key']`,
//! `[N]`, `[*]` / `.*` (every element or member), and `..key` (recursive
//! descent: `key` at any depth). Keys are globs (`*`, `?`, case-insensitive),
//! so `$..*password*` covers `password`, `db_password` and `Password`. For
//! safety, `.key` and `..key` also look through arrays on the way
//! (`$.customers.ssn` reaches every customer), which strict JSONPath does not.

use crate::config::{MaskingConfigError, Style};
use crate::engine::{MaskCounts, Masked, MaskingEngine};
use crate::glob::Glob;
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Child(Glob),
    Index(usize),
    Any,
    Descendant(Glob),
}

/// A parsed key path, e.g. `$.customers[*].ssn`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct JsonPath {
    text: String,
    segments: Vec<Segment>,
    /// The last segment's key when it is literal, for placeholders (`[ssn]`);
    /// `masked` otherwise.
    label: String,
    style: Option<Style>,
}

impl JsonPath {
    /// Parses a path; the error's key is the path itself.
    pub fn parse(text: &str) -> Result<JsonPath, MaskingConfigError> {
        let fail = |message: String| MaskingConfigError::new(text, message);
        let bytes = text.as_bytes();
        if bytes.first() != Some(&b'$') {
            return Err(fail("a key path starts with `$`".into()));
        }
        let mut segments = Vec::new();
        let mut label = None;
        let mut i = 1;
        // A key name runs to the next `.` or `[`.
        let name_at = |i: usize| {
            let end = text[i..].find(['.', '[']).map_or(text.len(), |n| i + n);
            (&text[i..end], end)
        };
        while i < bytes.len() {
            if text[i..].starts_with("..") {
                let (name, end) = name_at(i + 2);
                if name.is_empty() {
                    return Err(fail(format!("`..` at byte {i} needs a key after it")));
                }
                label = Some(name);
                segments.push(Segment::Descendant(Glob::new(name)));
                i = end;
            } else if bytes[i] == b'.' {
                let (name, end) = name_at(i + 1);
                if name.is_empty() {
                    return Err(fail(format!("`.` at byte {i} needs a key after it")));
                }
                if name == "*" {
                    label = None;
                    segments.push(Segment::Any);
                } else {
                    label = Some(name);
                    segments.push(Segment::Child(Glob::new(name)));
                }
                i = end;
            } else if bytes[i] == b'[' {
                let close = text[i..]
                    .find(']')
                    .map(|n| i + n)
                    .ok_or_else(|| fail(format!("`[` at byte {i} is not closed")))?;
                let inner = text[i + 1..close].trim();
                let quoted = inner.len() >= 2
                    && ((inner.starts_with('\'') && inner.ends_with('\''))
                        || (inner.starts_with('"') && inner.ends_with('"')));
                if inner == "*" {
                    label = None;
                    segments.push(Segment::Any);
                } else if quoted {
                    let key = &inner[1..inner.len() - 1];
                    label = Some(key);
                    segments.push(Segment::Child(Glob::new(key)));
                } else if let Ok(n) = inner.parse::<usize>() {
                    label = None;
                    segments.push(Segment::Index(n));
                } else {
                    return Err(fail(format!(
                        "`[{inner}]` is not `[*]`, an index or a quoted key"
                    )));
                }
                i = close + 1;
            } else {
                return Err(fail(format!(
                    "unexpected {:?} at byte {i}; expected `.`, `..` or `[`",
                    text[i..].chars().next().unwrap_or(' ')
                )));
            }
        }
        if segments.is_empty() {
            return Err(fail("the whole document (`$`) cannot be a key path".into()));
        }
        let label = label
            .filter(|l| !l.contains(['*', '?']))
            .filter(|l| {
                l.chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
            })
            .unwrap_or("masked")
            .to_string();
        Ok(JsonPath {
            text: text.to_string(),
            segments,
            label,
            style: None,
        })
    }

    /// Masks values at this path with `style` instead of the engine's default.
    pub fn with_style(mut self, style: Style) -> Self {
        self.style = Some(style);
        self
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl TryFrom<String> for JsonPath {
    type Error = MaskingConfigError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        JsonPath::parse(&s)
    }
}

impl std::str::FromStr for JsonPath {
    type Err = MaskingConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JsonPath::parse(s)
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Masks parsed JSON documents (HTTP and Kubernetes bodies).
pub trait JsonMasker {
    /// Replaces whole values at `key_paths` (counted under the path's text;
    /// `null` style gives JSON null, other styles a string), then masks
    /// detector matches in every string value and object key (a string that
    /// is entirely a match of a `null`-styled detector becomes JSON null).
    /// Returns how many values were masked, by detector or path.
    fn mask_json(&self, value: &mut Value, key_paths: &[JsonPath]) -> MaskCounts;
}

impl JsonMasker for MaskingEngine {
    fn mask_json(&self, value: &mut Value, key_paths: &[JsonPath]) -> MaskCounts {
        let mut counts = MaskCounts::default();
        for path in key_paths {
            let style = path.style.unwrap_or(self.default_style());
            let mut n = 0;
            walk(value, &path.segments, &mut |v: &mut Value| {
                let masked = match &*v {
                    Value::Null => return,
                    Value::String(s) => self.mask_value_as(&path.label, s, style),
                    other => self.mask_value_as(&path.label, &other.to_string(), style),
                };
                *v = match masked {
                    Masked::Null => Value::Null,
                    Masked::Text(t) => Value::String(t),
                };
                n += 1;
            });
            counts.add(&path.text, n);
        }
        if self.has_detectors() {
            mask_strings(self as &dyn FieldMasker, value, &mut counts);
        }
        counts
    }
}

fn walk(v: &mut Value, segments: &[Segment], f: &mut dyn FnMut(&mut Value)) {
    let Some((seg, rest)) = segments.split_first() else {
        f(v);
        return;
    };
    match (seg, v) {
        (Segment::Child(key), Value::Object(map)) => {
            for (k, child) in map.iter_mut() {
                if key.matches(k) {
                    walk(child, rest, f);
                }
            }
        }
        (Segment::Child(_), Value::Array(items)) => {
            for child in items {
                walk(child, segments, f);
            }
        }
        (Segment::Index(n), Value::Array(items)) => {
            if let Some(child) = items.get_mut(*n) {
                walk(child, rest, f);
            }
        }
        (Segment::Any, Value::Array(items)) => {
            for child in items {
                walk(child, rest, f);
            }
        }
        (Segment::Any, Value::Object(map)) => {
            for child in map.values_mut() {
                walk(child, rest, f);
            }
        }
        (Segment::Descendant(key), Value::Object(map)) => {
            for (k, child) in map.iter_mut() {
                if key.matches(k) {
                    walk(child, rest, f);
                }
                walk(child, segments, f);
            }
        }
        (Segment::Descendant(_), Value::Array(items)) => {
            for child in items {
                walk(child, segments, f);
            }
        }
        _ => {}
    }
}

/// What masks the strings of a document: a whole field (`None`: it becomes
/// null), and an object key (never null).
pub(crate) trait FieldMasker {
    fn field<'a>(&self, value: &'a str) -> (Option<Cow<'a, str>>, MaskCounts);
    fn key<'a>(&self, key: &'a str) -> (Cow<'a, str>, MaskCounts);
}

impl FieldMasker for MaskingEngine {
    fn field<'a>(&self, value: &'a str) -> (Option<Cow<'a, str>>, MaskCounts) {
        self.mask_field(value)
    }

    fn key<'a>(&self, key: &'a str) -> (Cow<'a, str>, MaskCounts) {
        self.mask_text(key)
    }
}

/// A text masking function (`None`: unchanged) as a `FieldMasker`.
struct TextFn<'f>(&'f dyn Fn(&str) -> Option<(String, MaskCounts)>);

impl FieldMasker for TextFn<'_> {
    fn field<'a>(&self, value: &'a str) -> (Option<Cow<'a, str>>, MaskCounts) {
        let (text, counts) = self.key(value);
        (Some(text), counts)
    }

    fn key<'a>(&self, key: &'a str) -> (Cow<'a, str>, MaskCounts) {
        match (self.0)(key) {
            Some((masked, counts)) => (Cow::Owned(masked), counts),
            None => (Cow::Borrowed(key), MaskCounts::default()),
        }
    }
}

/// Runs every string, number and object key of `doc` through `mask` (the
/// text masking of a masker that knows no JSON); returns what was masked.
pub fn mask_json_text(
    doc: &mut Value,
    mask: &dyn Fn(&str) -> Option<(String, MaskCounts)>,
) -> MaskCounts {
    let mut counts = MaskCounts::default();
    mask_strings(&TextFn(mask), doc, &mut counts);
    counts
}

/// Masks a document with a text masker alone (`ResponseMasker::mask_document`'s
/// default in sluice-core): values at `key_paths` become `"[masked]"`, then
/// every string, number and key goes through `mask_text`.
pub fn mask_document_as_text(
    doc: &mut Value,
    key_paths: &[JsonPath],
    mask_text: &dyn Fn(&str) -> Option<(String, MaskCounts)>,
) -> MaskCounts {
    let mut counts = MaskCounts::default();
    for path in key_paths {
        let mut n = 0;
        walk(doc, &path.segments, &mut |v: &mut Value| {
            if !v.is_null() {
                *v = Value::String("[masked]".into());
                n += 1;
            }
        });
        counts.add(&path.text, n);
    }
    counts.merge(&mask_json_text(doc, mask_text));
    counts
}

pub(crate) fn mask_strings(engine: &dyn FieldMasker, v: &mut Value, counts: &mut MaskCounts) {
    match v {
        Value::String(s) => match engine.field(s) {
            (Some(Cow::Borrowed(_)), _) => {}
            (Some(Cow::Owned(m)), c) => {
                *s = m;
                counts.merge(&c);
            }
            (None, c) => {
                *v = Value::Null;
                counts.merge(&c);
            }
        },
        // A card number or an id is as sensitive as a number as it is as a
        // string (`{"card": 4111111111111111}`): detectors see its digits.
        // A masked number becomes the masked text (or null).
        Value::Number(n) => {
            let text = n.to_string();
            match engine.field(&text) {
                (Some(Cow::Borrowed(_)), _) => {}
                (Some(Cow::Owned(m)), c) => {
                    *v = Value::String(m);
                    counts.merge(&c);
                }
                (None, c) => {
                    *v = Value::Null;
                    counts.merge(&c);
                }
            }
        }
        Value::Array(items) => {
            for child in items {
                mask_strings(engine, child, counts);
            }
        }
        Value::Object(map) => {
            // Keys can be sensitive too (a map keyed by email address).
            let mut renamed = Vec::new();
            for k in map.keys() {
                let (masked, c) = engine.key(k);
                if let Cow::Owned(m) = masked {
                    renamed.push((k.clone(), m));
                    counts.merge(&c);
                }
            }
            for (old, mut new) in renamed {
                if let Some(child) = map.remove(&old) {
                    // Two keys may mask alike; keep both values.
                    let mut n = 2;
                    let base = new.clone();
                    while map.contains_key(&new) {
                        new = format!("{base}~{n}");
                        n += 1;
                    }
                    map.insert(new, child);
                }
            }
            for child in map.values_mut() {
                mask_strings(engine, child, counts);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn detectors_see_numbers() {
        let config: crate::MaskingConfig = toml::from_str(r#"detectors = ["default"]"#).unwrap();
        let engine = crate::compile(&config, Some(b"test-key-0123456789abcdef")).unwrap();
        let mut doc = json!({
            "card": 4111111111111111u64,
            "cards": [5500005555555559u64, 42],
            "total": 1234567890123u64,
            "ratio": 0.5,
        });
        let counts = engine.mask_json(&mut doc, &[]);
        assert_eq!(counts.total(), 2, "{doc}");
        let text = doc.to_string();
        assert!(!text.contains("4111111111111111"), "{text}");
        assert!(!text.contains("5500005555555559"), "{text}");
        assert_eq!(doc["cards"][1], 42);
        assert_eq!(doc["total"], 1234567890123u64);
        assert_eq!(doc["ratio"], 0.5);
    }
}
