//! Detector plugins on the response path: a [`ResponseMasker`] that runs the
//! masker it wraps, then asks each detector plugin for spans to mask in every
//! value. A detector that fails masks the whole value (fail closed).

use crate::loader::{CallError, Plugin};
use serde::Deserialize;
use sluice_core::masking::{
    mask_json_text, JsonPath, MaskCounts, ResponseMasker, RowMasker, StreamMasker,
};
use sluice_core::model::Column;
use sluice_core::pipeline::SessionInfo;
use std::sync::Arc;

/// PostgreSQL type OIDs whose values are text in both formats: a match inside
/// one is replaced in place; any other type's value is replaced by NULL.
const TEXT_TYPES: &[u32] = &[25, 1043, 1042, 19, 705];

/// The count name, and the text-column replacement, when a detector fails.
pub const PLUGIN_ERROR: &str = "plugin-error";

/// Wraps a masker with detector plugins.
pub struct PluginMasker {
    inner: Arc<dyn ResponseMasker>,
    detectors: Arc<[Arc<Plugin>]>,
    exempt_groups: Vec<String>,
}

impl PluginMasker {
    /// `exempt_groups` (`masking.exempt_groups`) see data unmasked, as with
    /// the built-in detectors.
    pub fn new(
        inner: Arc<dyn ResponseMasker>,
        detectors: Vec<Arc<Plugin>>,
        exempt_groups: Vec<String>,
    ) -> Self {
        PluginMasker {
            inner,
            detectors: detectors.into(),
            exempt_groups,
        }
    }

    fn active(&self, session: &SessionInfo) -> bool {
        !self.detectors.is_empty()
            && (self.exempt_groups.is_empty()
                || !session.identity.in_any_group(&self.exempt_groups))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireSpan {
    start: usize,
    end: usize,
    #[serde(default)]
    label: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
    label: String,
}

fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 64
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
}

/// Parses and checks one detector's answer for `value`. Spans are widened to
/// character boundaries when the value is UTF-8.
fn parse_spans(plugin: &Plugin, value: &[u8], out: &[u8]) -> Result<Vec<Span>, CallError> {
    let fail = |reason: String| CallError {
        plugin: plugin.name().to_string(),
        reason,
    };
    if out.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let spans: Vec<WireSpan> = serde_json::from_slice(out)
        .map_err(|e| fail(format!("detector answer is not a JSON span list: {e}")))?;
    let text = std::str::from_utf8(value).ok();
    spans
        .into_iter()
        .map(|s| {
            if s.start >= s.end || s.end > value.len() {
                return Err(fail(format!(
                    "span {}..{} is outside the {}-byte value",
                    s.start,
                    s.end,
                    value.len()
                )));
            }
            let label = s.label.unwrap_or_else(|| plugin.name().to_string());
            if !valid_label(&label) {
                return Err(fail(
                    "a span label must be 1-64 characters of [A-Za-z0-9_.:-]".into(),
                ));
            }
            let (mut start, mut end) = (s.start, s.end);
            if let Some(t) = text {
                while !t.is_char_boundary(start) {
                    start -= 1;
                }
                while !t.is_char_boundary(end) {
                    end += 1;
                }
            }
            Ok(Span { start, end, label })
        })
        .collect()
}

/// Every detector's spans for `value`; the first failure is an error.
fn scan(detectors: &[Arc<Plugin>], value: &[u8]) -> Result<Vec<Span>, CallError> {
    let mut all = Vec::new();
    for d in detectors {
        let out = d.call(value)?;
        all.extend(parse_spans(d, value, &out)?);
    }
    Ok(all)
}

/// Replaces the spans (merged where they overlap) with `[label]`.
fn apply(value: &[u8], mut spans: Vec<Span>, counts: &mut MaskCounts) -> Vec<u8> {
    spans.sort_by_key(|s| (s.start, std::cmp::Reverse(s.end)));
    let mut out = Vec::with_capacity(value.len());
    let mut at = 0;
    for s in spans {
        if s.end <= at {
            continue;
        }
        let start = s.start.max(at);
        out.extend_from_slice(&value[at..start]);
        out.push(b'[');
        out.extend_from_slice(s.label.as_bytes());
        out.push(b']');
        counts.add(&s.label, 1);
        at = s.end;
    }
    out.extend_from_slice(&value[at..]);
    out
}

/// Masks one value: `None` when no detector found anything.
fn mask_value(
    detectors: &[Arc<Plugin>],
    value: &[u8],
    text_like: bool,
    counts: &mut MaskCounts,
) -> Option<Option<Vec<u8>>> {
    match scan(detectors, value) {
        Ok(spans) if spans.is_empty() => None,
        Ok(spans) if text_like => Some(Some(apply(value, spans, counts))),
        Ok(spans) => {
            for s in &spans {
                counts.add(&s.label, 1);
            }
            Some(None)
        }
        Err(e) => {
            tracing::error!(message = "A detector plugin failed; the value is masked whole.", error = %e);
            counts.add(PLUGIN_ERROR, 1);
            Some(text_like.then(|| format!("[{PLUGIN_ERROR}]").into_bytes()))
        }
    }
}

/// Masks free text or a chunk of bytes; a failure replaces all of it.
fn mask_chunk(detectors: &[Arc<Plugin>], bytes: &[u8], counts: &mut MaskCounts) -> Option<Vec<u8>> {
    mask_value(detectors, bytes, true, counts).map(Option::unwrap_or_default)
}

struct Rows {
    inner: Option<Box<dyn RowMasker>>,
    detectors: Arc<[Arc<Plugin>]>,
    text_like: Vec<bool>,
    counts: MaskCounts,
}

impl RowMasker for Rows {
    fn mask_row(&mut self, values: &mut [Option<Vec<u8>>]) -> u64 {
        let mut masked = self.inner.as_mut().map_or(0, |m| m.mask_row(values));
        for (slot, text_like) in values.iter_mut().zip(&self.text_like) {
            let Some(value) = slot.as_deref() else {
                continue;
            };
            if let Some(replacement) =
                mask_value(&self.detectors, value, *text_like, &mut self.counts)
            {
                *slot = replacement;
                masked += 1;
            }
        }
        masked
    }

    fn counts(&self) -> MaskCounts {
        let mut counts = self.inner.as_ref().map(|m| m.counts()).unwrap_or_default();
        counts.merge(&self.counts);
        counts
    }
}

impl ResponseMasker for PluginMasker {
    fn plan(&self, session: &SessionInfo, columns: &[Column]) -> Option<Box<dyn RowMasker>> {
        let inner = self.inner.plan(session, columns);
        if !self.active(session) {
            return inner;
        }
        Some(Box::new(Rows {
            inner,
            detectors: self.detectors.clone(),
            text_like: columns
                .iter()
                .map(|c| TEXT_TYPES.contains(&c.type_oid))
                .collect(),
            counts: MaskCounts::default(),
        }))
    }

    fn wants_table_names(&self) -> bool {
        self.inner.wants_table_names()
    }

    fn has_column_rules(&self, session: &SessionInfo) -> bool {
        self.inner.has_column_rules(session)
    }

    fn column_ruled(&self, session: &SessionInfo, table: &str, column: &str) -> bool {
        self.inner.column_ruled(session, table, column)
    }

    fn ruled_column_of(&self, session: &SessionInfo, table: &str) -> Option<String> {
        self.inner.ruled_column_of(session, table)
    }

    fn mask_text(&self, session: &SessionInfo, text: &str) -> Option<(String, MaskCounts)> {
        let inner = self.inner.mask_text(session, text);
        if !self.active(session) {
            return inner;
        }
        let (current, mut counts) = match &inner {
            Some((t, c)) => (t.as_str(), c.clone()),
            None => (text, MaskCounts::default()),
        };
        match mask_chunk(&self.detectors, current.as_bytes(), &mut counts) {
            Some(bytes) => Some((String::from_utf8_lossy(&bytes).into_owned(), counts)),
            None => inner,
        }
    }

    fn mask_bytes(&self, session: &SessionInfo, bytes: &[u8]) -> Option<(Vec<u8>, MaskCounts)> {
        let inner = self.inner.mask_bytes(session, bytes);
        if !self.active(session) {
            return inner;
        }
        let (current, mut counts) = match &inner {
            Some((b, c)) => (b.as_slice(), c.clone()),
            None => (bytes, MaskCounts::default()),
        };
        match mask_chunk(&self.detectors, current, &mut counts) {
            Some(out) => Some((out, counts)),
            None => inner,
        }
    }

    fn is_active(&self, session: &SessionInfo) -> bool {
        self.inner.is_active(session) || self.active(session)
    }

    /// The wrapped masker's document masking, then the detector plugins over
    /// every string, number and key.
    fn mask_document(
        &self,
        session: &SessionInfo,
        doc: &mut serde_json::Value,
        key_paths: &[JsonPath],
    ) -> MaskCounts {
        let mut counts = self.inner.mask_document(session, doc, key_paths);
        if self.active(session) {
            counts.merge(&mask_json_text(doc, &|text| {
                let mut found = MaskCounts::default();
                mask_chunk(&self.detectors, text.as_bytes(), &mut found)
                    .map(|bytes| (String::from_utf8_lossy(&bytes).into_owned(), found))
            }));
        }
        counts
    }

    /// Byte streams (SSH, exec) get the wrapped masker's stream masker only:
    /// detector plugins see values, not streams (docs/plugins.md).
    fn stream_masker(&self, session: &SessionInfo) -> Option<StreamMasker> {
        self.inner.stream_masker(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(start: usize, end: usize, label: &str) -> Span {
        Span {
            start,
            end,
            label: label.into(),
        }
    }

    #[test]
    fn overlapping_spans_merge_and_count_once_each() {
        let mut counts = MaskCounts::default();
        let out = apply(
            b"id E-123456 and E-999",
            vec![span(3, 11, "emp"), span(5, 9, "inner"), span(16, 21, "emp")],
            &mut counts,
        );
        assert_eq!(out, b"id [emp] and [emp]");
        assert_eq!(counts.get("emp"), 2);
    }

    #[test]
    fn labels_are_restricted() {
        assert!(valid_label("employee_id"));
        assert!(!valid_label("a]b"));
        assert!(!valid_label(""));
    }
}
