//! Masking Kubernetes responses.
//!
//! **Secrets, always.** In any response to a request for core `secrets` (get,
//! list, watch, and the object that create, update, patch and delete return),
//! and in any object whose `kind` is `Secret` (or a `SecretList`'s items):
//!
//! - every value of `data` becomes `W3NlY3JldF0=` (base64 of `[secret]`, so
//!   typed clients still decode it) and every value of `stringData` `[secret]`;
//!   the keys stay, so an agent can see which keys exist;
//! - the `kubectl.kubernetes.io/last-applied-configuration` annotation (which
//!   `kubectl apply` fills with the whole manifest, values included) is masked
//!   the same way, or replaced whole when it does not parse;
//! - in a `Table` (what `kubectl get` asks for), each row's embedded `object`
//!   is masked, and cells outside the built-in columns (Name, Type, Data, Age)
//!   become `[secret]`, since a printer column may show a value.
//!
//! **Minted tokens, always.** A `TokenRequest`'s `status.token` (what
//! `kubectl create token` prints) is a credential for the API server itself;
//! it becomes `[secret]`.
//!
//! **Detectors, when `[masking]` configures them**: every string value (and
//! object key) of every JSON response is scanned, as for HTTP.
//!
//! Documents are buffered up to the listener's cap and masked whole; watch
//! streams are masked one event (one JSON object) at a time, never buffered
//! whole.

use serde_json::Value;
use sluice_core::masking::{MaskCounts, SessionMasker};
use sluice_http::body::JsonValues;
use sluice_http::{BodyTransformer, TransformError};

/// What a masked `stringData` value or table cell reads.
pub const PLACEHOLDER: &str = "[secret]";
/// What a masked `data` value reads: base64 of [`PLACEHOLDER`].
pub const PLACEHOLDER_B64: &str = "W3NlY3JldF0=";
/// The name masked Secret values are counted under in the audit record.
pub const COUNT_NAME: &str = "kube_secret";
/// The annotation `kubectl apply` fills with the applied manifest.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// Built-in Secret table columns that never hold a value.
const SAFE_COLUMNS: [&str; 4] = ["name", "type", "data", "age"];

/// Masks parsed documents: Secret values, then the detectors.
#[derive(Debug, Clone)]
pub struct DocMasker {
    /// The request addressed core secrets: every object in the response is one.
    pub secrets: bool,
    /// The gateway's masker on this session, when anything may be masked.
    pub masker: Option<SessionMasker>,
}

impl DocMasker {
    /// Masks `doc` in place; returns what was masked.
    pub fn mask(&self, doc: &mut Value) -> MaskCounts {
        let mut counts = MaskCounts::default();
        walk(doc, self.secrets, &mut counts);
        if let Some(masker) = &self.masker {
            counts.merge(&masker.mask_document(doc, &[]));
        }
        counts
    }
}

fn kind_of(map: &serde_json::Map<String, Value>) -> &str {
    map.get("kind").and_then(Value::as_str).unwrap_or("")
}

/// Finds the objects a response carries (the document itself, `items`,
/// Table rows, a watch event's `object`) and masks those that are Secrets.
fn walk(v: &mut Value, secret: bool, counts: &mut MaskCounts) {
    let Value::Object(map) = v else {
        return;
    };
    let kind = kind_of(map).to_string();
    let secret = secret || kind == "Secret" || kind == "SecretList";
    if kind == "Table" {
        table(map, secret, counts);
        return;
    }
    if let Some(Value::Array(items)) = map.get_mut("items") {
        for item in items {
            walk(item, secret, counts);
        }
    }
    // A watch event: {"type": "ADDED", "object": {…}}.
    if let Some(object @ Value::Object(_)) = map.get_mut("object") {
        walk(object, secret, counts);
    }
    if secret && kind != "SecretList" && kind != "Status" {
        secret_object(map, counts);
    }
    if kind == "TokenRequest" {
        // `kubectl create token`: a bearer token for the API server itself,
        // which would let the caller go around the gateway.
        if let Some(token @ Value::String(_)) =
            map.get_mut("status").and_then(|s| s.get_mut("token"))
        {
            *token = Value::String(PLACEHOLDER.to_string());
            counts.add(COUNT_NAME, 1);
        }
    }
}

fn secret_object(map: &mut serde_json::Map<String, Value>, counts: &mut MaskCounts) {
    for (field, placeholder) in [("data", PLACEHOLDER_B64), ("stringData", PLACEHOLDER)] {
        match map.get_mut(field) {
            Some(Value::Object(values)) => {
                for value in values.values_mut() {
                    if !value.is_null() {
                        *value = Value::String(placeholder.to_string());
                        counts.add(COUNT_NAME, 1);
                    }
                }
            }
            // Not the shape a Secret has: replace it whole rather than guess.
            Some(other) if !other.is_null() => {
                *other = Value::String(placeholder.to_string());
                counts.add(COUNT_NAME, 1);
            }
            _ => {}
        }
    }
    let annotation = map
        .get_mut("metadata")
        .and_then(|m| m.get_mut("annotations"))
        .and_then(|a| a.get_mut(LAST_APPLIED));
    if let Some(Value::String(text)) = annotation {
        let masked = match serde_json::from_str::<Value>(text) {
            Ok(mut applied) => {
                let mut inner = MaskCounts::default();
                walk(&mut applied, true, &mut inner);
                counts.merge(&inner);
                applied.to_string()
            }
            Err(_) => {
                counts.add(COUNT_NAME, 1);
                PLACEHOLDER.to_string()
            }
        };
        *text = masked;
    }
}

/// A `meta.k8s.io` Table: rows' embedded objects, and their cells when the
/// row is a Secret.
fn table(map: &mut serde_json::Map<String, Value>, secret: bool, counts: &mut MaskCounts) {
    let safe: Vec<bool> = map
        .get("columnDefinitions")
        .and_then(Value::as_array)
        .map(|cols| {
            cols.iter()
                .map(|c| {
                    c.get("name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| SAFE_COLUMNS.iter().any(|s| s.eq_ignore_ascii_case(n)))
                })
                .collect()
        })
        .unwrap_or_default();
    let Some(Value::Array(rows)) = map.get_mut("rows") else {
        return;
    };
    for row in rows {
        let Value::Object(row) = row else { continue };
        let row_secret = secret
            || row
                .get("object")
                .and_then(Value::as_object)
                .is_some_and(|o| kind_of(o) == "Secret");
        if let Some(object) = row.get_mut("object") {
            walk(object, row_secret, counts);
        }
        if !row_secret {
            continue;
        }
        if let Some(Value::Array(cells)) = row.get_mut("cells") {
            for (i, cell) in cells.iter_mut().enumerate() {
                if !safe.get(i).copied().unwrap_or(false) {
                    *cell = Value::String(PLACEHOLDER.to_string());
                    counts.add(COUNT_NAME, 1);
                }
            }
        }
    }
}

fn too_large(max: usize) -> TransformError {
    TransformError::new(format!(
        "the response is larger than the {} MiB the gateway buffers to mask it, so it was not passed on; narrow the request (a label or field selector, --chunk-size)",
        max / (1024 * 1024)
    ))
}

/// A whole JSON document: buffered (up to the cap), masked at the end.
pub struct DocumentTransformer {
    masker: DocMasker,
    buf: Vec<u8>,
    max: usize,
    counts: MaskCounts,
}

impl DocumentTransformer {
    pub fn new(masker: DocMasker, max: usize) -> Self {
        DocumentTransformer {
            masker,
            buf: Vec::new(),
            max,
            counts: MaskCounts::default(),
        }
    }
}

impl BodyTransformer for DocumentTransformer {
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, TransformError> {
        if self.buf.len() + chunk.len() > self.max {
            return Err(too_large(self.max));
        }
        self.buf.extend_from_slice(chunk);
        Ok(Vec::new())
    }

    fn finish(&mut self) -> Result<Vec<u8>, TransformError> {
        let buf = std::mem::take(&mut self.buf);
        if buf.iter().all(u8::is_ascii_whitespace) {
            return Ok(buf);
        }
        let mut doc: Value = serde_json::from_slice(&buf).map_err(|_| {
            TransformError::new(
                "the upstream's response is not the JSON it was labelled as, so it could not be masked and was not passed on",
            )
        })?;
        self.counts.merge(&self.masker.mask(&mut doc));
        let mut out = serde_json::to_vec(&doc)
            .map_err(|_| TransformError::new("the masked response could not be written"))?;
        out.push(b'\n');
        Ok(out)
    }

    fn counts(&self) -> MaskCounts {
        self.counts.clone()
    }
}

/// A watch stream: one JSON object per event (the API server ends each with
/// a newline, which is not relied on), each masked as it completes. Only
/// the current, incomplete event is held back.
pub struct WatchTransformer(JsonValues);

impl WatchTransformer {
    pub fn new(masker: DocMasker, max: usize) -> Self {
        WatchTransformer(JsonValues::new(
            move |doc| masker.mask(doc),
            max,
            "watch event",
        ))
    }
}

impl BodyTransformer for WatchTransformer {
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, TransformError> {
        self.0.push(chunk)
    }

    fn finish(&mut self) -> Result<Vec<u8>, TransformError> {
        self.0.finish()
    }

    fn counts(&self) -> MaskCounts {
        self.0.counts()
    }
}

#[cfg(test)]
mod tests;
