//! The masking engine in the response position: per result set, each column
//! is kept, masked whole (a column rule), or scanned by the detectors; masked
//! values stay valid for their column type (text-like columns get the styled
//! value, other types get SQL NULL).

use super::{
    JsonMasker, JsonPath, MaskCounts, Masked, MaskingEngine, ResponseMasker, RowMasker, Style,
};
use crate::model::Column;
use crate::pipeline::SessionInfo;
use std::borrow::Cow;

/// PostgreSQL type OIDs whose values are text in both formats.
const TEXT_TYPES: &[u32] = &[25, 1043, 1042, 19, 705, 18, 142];
const JSON: u32 = 114;
const JSONB: u32 = 3802;
/// Text arrays (`text[]`, `varchar[]`, `bpchar[]`), text format only.
const TEXT_ARRAYS: &[u32] = &[1009, 1015, 1014];

/// Masks result rows with a compiled `[masking]` configuration.
#[derive(Debug, Clone)]
pub struct EngineMasker {
    engine: MaskingEngine,
    exempt_groups: Vec<String>,
}

impl EngineMasker {
    pub fn new(engine: MaskingEngine) -> Self {
        EngineMasker {
            engine,
            exempt_groups: Vec::new(),
        }
    }

    /// Members of these groups see data unmasked.
    pub fn with_exempt_groups(mut self, groups: Vec<String>) -> Self {
        self.exempt_groups = groups;
        self
    }

    fn exempt(&self, session: &SessionInfo) -> bool {
        !self.exempt_groups.is_empty() && session.identity.in_any_group(&self.exempt_groups)
    }
}

#[derive(Debug, Clone)]
enum Plan {
    Keep,
    /// A column rule: the whole value, whatever it contains.
    Whole {
        rule: String,
        style: Style,
    },
    /// Scan for detector matches.
    Detect,
}

struct Rows {
    engine: MaskingEngine,
    columns: Vec<(Plan, Column)>,
    counts: MaskCounts,
}

fn text_like(c: &Column) -> bool {
    TEXT_TYPES.contains(&c.type_oid) || (!c.binary && TEXT_ARRAYS.contains(&c.type_oid))
}

impl ResponseMasker for EngineMasker {
    fn plan(&self, session: &SessionInfo, columns: &[Column]) -> Option<Box<dyn RowMasker>> {
        if self.exempt(session) {
            return None;
        }
        let mut any = false;
        let planned: Vec<(Plan, Column)> = columns
            .iter()
            .map(|c| {
                let name = c.source_column.as_deref().unwrap_or(&c.name);
                let plan =
                    match self
                        .engine
                        .column_rule(&session.connection, c.table.as_deref(), name)
                    {
                        Some((rule, style)) => Plan::Whole {
                            rule: rule.to_string(),
                            style,
                        },
                        // An alias can rename a computed column to a masked name.
                        None => match self.engine.column_rule(&session.connection, None, &c.name) {
                            Some((rule, style)) => Plan::Whole {
                                rule: rule.to_string(),
                                style,
                            },
                            None if self.engine.has_detectors() => Plan::Detect,
                            None => Plan::Keep,
                        },
                    };
                any |= !matches!(plan, Plan::Keep);
                (plan, c.clone())
            })
            .collect();
        any.then(|| {
            Box::new(Rows {
                engine: self.engine.clone(),
                columns: planned,
                counts: MaskCounts::default(),
            }) as Box<dyn RowMasker>
        })
    }

    fn wants_table_names(&self) -> bool {
        self.engine.has_column_rules()
    }

    fn has_column_rules(&self, session: &SessionInfo) -> bool {
        !self.exempt(session) && self.engine.has_column_rules_for(&session.connection)
    }

    fn column_ruled(&self, session: &SessionInfo, table: &str, column: &str) -> bool {
        !self.exempt(session)
            && self
                .engine
                .column_rule(&session.connection, Some(table), column)
                .is_some()
    }

    fn ruled_column_of(&self, session: &SessionInfo, table: &str) -> Option<String> {
        if self.exempt(session) {
            return None;
        }
        self.engine.ruled_column_of(&session.connection, table)
    }

    fn mask_text(&self, session: &SessionInfo, text: &str) -> Option<(String, MaskCounts)> {
        if self.exempt(session) {
            return None;
        }
        match self.engine.mask_text(text) {
            (Cow::Owned(s), counts) => Some((s, counts)),
            (Cow::Borrowed(_), _) => None,
        }
    }

    fn mask_bytes(&self, session: &SessionInfo, bytes: &[u8]) -> Option<(Vec<u8>, MaskCounts)> {
        if self.exempt(session) {
            return None;
        }
        match self.engine.mask_bytes(bytes) {
            (Cow::Owned(b), counts) => Some((b, counts)),
            (Cow::Borrowed(_), _) => None,
        }
    }

    fn stream_masker(&self, session: &SessionInfo) -> Option<super::StreamMasker> {
        if self.exempt(session) || !self.engine.has_detectors() {
            return None;
        }
        Some(self.engine.stream())
    }

    fn is_active(&self, session: &SessionInfo) -> bool {
        !self.exempt(session) && self.engine.is_active()
    }

    /// Column rules written as bare key names (`api_key`, `*password*`) mask
    /// that key's value at any depth; then the key paths and the detectors.
    fn mask_document(
        &self,
        session: &SessionInfo,
        doc: &mut serde_json::Value,
        key_paths: &[JsonPath],
    ) -> MaskCounts {
        if self.exempt(session) {
            return MaskCounts::default();
        }
        let mut counts = MaskCounts::default();
        if self.engine.has_column_rules_for(&session.connection) {
            mask_ruled_keys(&self.engine, &session.connection, doc, &mut counts);
        }
        counts.merge(&self.engine.mask_json(doc, key_paths));
        counts
    }
}

/// Masks whole the value of every key a column rule names, at any depth.
fn mask_ruled_keys(
    engine: &MaskingEngine,
    connection: &str,
    v: &mut serde_json::Value,
    counts: &mut MaskCounts,
) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                let Some((rule, style)) = engine.column_rule(connection, None, k) else {
                    mask_ruled_keys(engine, connection, child, counts);
                    continue;
                };
                if child.is_null() {
                    continue;
                }
                let text = match &*child {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                *child = match engine.mask_value_as(rule, &text, style) {
                    Masked::Null => Value::Null,
                    Masked::Text(t) => Value::String(t),
                };
                counts.add(rule, 1);
            }
        }
        Value::Array(items) => {
            for child in items {
                mask_ruled_keys(engine, connection, child, counts);
            }
        }
        _ => {}
    }
}

impl RowMasker for Rows {
    fn mask_row(&mut self, values: &mut [Option<Vec<u8>>]) -> u64 {
        let mut masked = 0;
        for ((plan, column), slot) in self.columns.iter().zip(values.iter_mut()) {
            let Some(value) = slot.as_mut() else {
                continue;
            };
            match plan {
                Plan::Keep => {}
                Plan::Whole { rule, style } => {
                    masked += 1;
                    self.counts.add(rule, 1);
                    *slot = whole(&self.engine, column, rule, *style, value);
                }
                Plan::Detect => {
                    if let Some(replacement) = detect(&self.engine, column, value, &mut self.counts)
                    {
                        masked += 1;
                        *slot = replacement;
                    }
                }
            }
        }
        masked
    }

    fn counts(&self) -> MaskCounts {
        self.counts.clone()
    }

    fn mask_row_changes(&mut self, values: &[Option<&[u8]>]) -> Vec<(usize, Option<Vec<u8>>)> {
        let mut changes = Vec::new();
        for (i, ((plan, column), value)) in self.columns.iter().zip(values).enumerate() {
            let Some(value) = value else {
                continue;
            };
            match plan {
                Plan::Keep => {}
                Plan::Whole { rule, style } => {
                    self.counts.add(rule, 1);
                    changes.push((i, whole(&self.engine, column, rule, *style, value)));
                }
                Plan::Detect => {
                    if let Some(replacement) = detect(&self.engine, column, value, &mut self.counts)
                    {
                        changes.push((i, replacement));
                    }
                }
            }
        }
        changes
    }
}

/// A column rule's replacement, valid for the column's type.
fn whole(
    engine: &MaskingEngine,
    column: &Column,
    rule: &str,
    style: Style,
    value: &[u8],
) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(jsonb_text(column, value)).unwrap_or("");
    match (column.type_oid, engine.mask_value_as(rule, text, style)) {
        (_, Masked::Null) => None,
        (JSON | JSONB, Masked::Text(t)) => Some(with_jsonb_header(
            column,
            serde_json::Value::String(t).to_string().into_bytes(),
        )),
        (_, Masked::Text(t)) if text_like(column) => Some(t.into_bytes()),
        // An int or date column cannot hold a placeholder: SQL NULL.
        _ => None,
    }
}

/// Detector matches inside a value; `None` when nothing was found.
fn detect(
    engine: &MaskingEngine,
    column: &Column,
    value: &[u8],
    counts: &mut MaskCounts,
) -> Option<Option<Vec<u8>>> {
    match column.type_oid {
        JSON | JSONB => {
            let text = jsonb_text(column, value);
            let mut doc: serde_json::Value = serde_json::from_slice(text).ok()?;
            let found = engine.mask_json(&mut doc, &[]);
            if found.is_empty() {
                return None;
            }
            counts.merge(&found);
            Some(Some(with_jsonb_header(
                column,
                doc.to_string().into_bytes(),
            )))
        }
        t if TEXT_ARRAYS.contains(&t) && column.binary => {
            let (out, found) = mask_binary_text_array(engine, value);
            match out {
                // Unreadable array: nothing of it is shown (fail closed).
                None => Some(None),
                Some(None) => None,
                Some(Some(bytes)) => {
                    counts.merge(&found);
                    Some(Some(bytes))
                }
            }
        }
        _ if text_like(column) => match engine.mask_bytes_counted(value, counts) {
            Cow::Borrowed(_) => None,
            Cow::Owned(b) => Some(Some(b)),
        },
        // Numbers in text form can still be card numbers; binary numbers
        // are left to column rules.
        _ if !column.binary => match engine.mask_bytes_counted(value, counts) {
            Cow::Borrowed(_) => None,
            Cow::Owned(_) => Some(None),
        },
        _ => None,
    }
}

/// jsonb in binary format is a version byte and then the JSON text.
fn jsonb_text<'v>(column: &Column, value: &'v [u8]) -> &'v [u8] {
    if column.type_oid == JSONB && column.binary && value.first() == Some(&1) {
        &value[1..]
    } else {
        value
    }
}

fn with_jsonb_header(column: &Column, text: Vec<u8>) -> Vec<u8> {
    if column.type_oid == JSONB && column.binary {
        let mut out = Vec::with_capacity(text.len() + 1);
        out.push(1);
        out.extend_from_slice(&text);
        out
    } else {
        text
    }
}

/// A text array in PostgreSQL's binary format: header, dimensions, then each
/// element as a length and its text. Returns `None` if it cannot be read,
/// `Some(None)` if nothing was masked.
fn mask_binary_text_array(
    engine: &MaskingEngine,
    value: &[u8],
) -> (Option<Option<Vec<u8>>>, MaskCounts) {
    let mut counts = MaskCounts::default();
    let read_i32 = |b: &[u8], at: usize| -> Option<i32> {
        Some(i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let Some(ndim) = read_i32(value, 0).filter(|n| (0..=6).contains(n)) else {
        return (None, counts);
    };
    let header = 12 + 8 * ndim as usize;
    if value.len() < header {
        return (None, counts);
    }
    let mut out = value[..header].to_vec();
    let mut at = header;
    let mut changed = false;
    while at < value.len() {
        let Some(len) = read_i32(value, at) else {
            return (None, counts);
        };
        at += 4;
        if len < 0 {
            out.extend_from_slice(&len.to_be_bytes());
            continue;
        }
        let Some(element) = value.get(at..at + len as usize) else {
            return (None, counts);
        };
        at += len as usize;
        let (masked, found) = engine.mask_bytes(element);
        if let Cow::Owned(_) = masked {
            changed = true;
            counts.merge(&found);
        }
        out.extend_from_slice(&(masked.len() as i32).to_be_bytes());
        out.extend_from_slice(&masked);
    }
    (Some(changed.then_some(out)), counts)
}
