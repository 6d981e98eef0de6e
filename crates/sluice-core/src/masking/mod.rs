//! The masking position on the response path. Protocols hand result rows, with
//! their column metadata, to a [`ResponseMasker`] before they reach the client
//! (and bodies, streams and free text to the same masker); the engine itself
//! lives in the `sluice-masking` crate and plugs in here as [`EngineMasker`].
//! A platform team's masker or a detector plugin takes the same position.

mod response;

#[cfg(test)]
mod tests;

pub use response::EngineMasker;
pub use sluice_masking::{
    compile, mask_json_text, ColumnRuleConfig, CustomDetectorConfig, JsonMasker, JsonPath,
    MaskCounts, Masked, MaskingConfigError, MaskingEngine, StreamMasker, Style, TextMask,
    MAX_HOLDBACK, MIN_HASH_KEY_LEN,
};

/// The `[masking]` section, its hash key referenced as a gateway secret.
pub type MaskingConfig = sluice_masking::MaskingConfig<crate::config::Secret>;

use crate::model::Column;
use crate::pipeline::SessionInfo;
use std::sync::Arc;

/// Plans masking for one result set. Called once per set of columns (e.g. per
/// PostgreSQL RowDescription), never per row.
pub trait ResponseMasker: Send + Sync + 'static {
    /// `None` means nothing in this result set needs masking, so the protocol
    /// may pass rows through untouched.
    fn plan(&self, session: &SessionInfo, columns: &[Column]) -> Option<Box<dyn RowMasker>>;

    /// Whether `plan` needs `Column::table` and `Column::source_column`
    /// resolved (column rules are written with table and column names).
    fn wants_table_names(&self) -> bool {
        false
    }

    /// Whether column rules apply on this session: output the protocol cannot
    /// split into columns (PostgreSQL `COPY … TO STDOUT`) is then refused.
    fn has_column_rules(&self, _session: &SessionInfo) -> bool {
        false
    }

    /// Whether a column rule masks `column` of `table` on this session
    /// (`table` as written in SQL: `customers` or `public.customers`). Used to
    /// follow masked columns through expressions (column lineage): an output
    /// derived from such a column is labelled with it and masked whole.
    fn column_ruled(&self, _session: &SessionInfo, _table: &str, _column: &str) -> bool {
        false
    }

    /// For a reference to a whole row of `table` (`row_to_json(t)`, `t::text`)
    /// when its columns are not known: a column name of `table` that a column
    /// rule masks on this session, spelled so that `plan` applies the rule to
    /// a column labelled with it; `None` when no rule can apply to the table.
    fn ruled_column_of(&self, _session: &SessionInfo, _table: &str) -> Option<String> {
        None
    }

    /// Masks free text from the upstream (error and notice messages); `None`
    /// when nothing changes.
    fn mask_text(&self, _session: &SessionInfo, _text: &str) -> Option<(String, MaskCounts)> {
        None
    }

    /// Masks a chunk of output the protocol cannot split into values (COPY
    /// rows); `None` when nothing changes.
    fn mask_bytes(&self, _session: &SessionInfo, _bytes: &[u8]) -> Option<(Vec<u8>, MaskCounts)> {
        None
    }

    /// A masker for one byte stream (SSH stdout/stderr, an exec stream) that
    /// handles secrets split across chunks; `None` when nothing is masked on
    /// this session, so the protocol passes bytes through untouched.
    fn stream_masker(&self, _session: &SessionInfo) -> Option<StreamMasker> {
        None
    }

    /// Whether anything may be masked on this session. A protocol that must
    /// buffer or re-encode a response to mask it (HTTP, Kubernetes) skips
    /// that when this is `false`. The default is `true`: a masker is asked.
    fn is_active(&self, _session: &SessionInfo) -> bool {
        true
    }

    /// Masks a parsed JSON document in place (HTTP and Kubernetes bodies):
    /// the values at `key_paths` whole, and whatever the masker finds in
    /// strings, numbers and keys. Returns what was masked. The default
    /// replaces key-path values with `"[masked]"` and runs every string
    /// through `mask_text`, so a masker that only masks text reaches JSON
    /// bodies too.
    fn mask_document(
        &self,
        session: &SessionInfo,
        doc: &mut serde_json::Value,
        key_paths: &[JsonPath],
    ) -> MaskCounts {
        sluice_masking::mask_document_as_text(doc, key_paths, &|text| self.mask_text(session, text))
    }
}

/// The longest piece the line-wise fallback masks at once.
const LINE_FALLBACK_MAX: usize = 64 * 1024;

/// A masker bound to one session, for response paths that outlive a borrow
/// of either (HTTP bodies, WebSocket frames, Kubernetes watch streams).
#[derive(Clone)]
pub struct SessionMasker {
    masker: Arc<dyn ResponseMasker>,
    session: Arc<SessionInfo>,
}

impl std::fmt::Debug for SessionMasker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionMasker")
            .field("session", &self.session.id)
            .finish_non_exhaustive()
    }
}

impl SessionMasker {
    /// `masker` for `session`; `None` when nothing may be masked on it.
    pub fn active(masker: &Arc<dyn ResponseMasker>, session: &Arc<SessionInfo>) -> Option<Self> {
        masker.is_active(session).then(|| SessionMasker {
            masker: masker.clone(),
            session: session.clone(),
        })
    }

    /// The `[masking]` engine alone, on `session` (tools, benchmarks, tests).
    pub fn for_engine(engine: MaskingEngine, session: SessionInfo) -> Self {
        SessionMasker {
            masker: Arc::new(EngineMasker::new(engine)),
            session: Arc::new(session),
        }
    }

    pub fn session(&self) -> &SessionInfo {
        &self.session
    }

    /// See [`ResponseMasker::mask_document`].
    pub fn mask_document(&self, doc: &mut serde_json::Value, key_paths: &[JsonPath]) -> MaskCounts {
        self.masker.mask_document(&self.session, doc, key_paths)
    }

    /// See [`ResponseMasker::plan`]: tabular data (CSV) masked as rows.
    pub fn plan(&self, columns: &[Column]) -> Option<Box<dyn RowMasker>> {
        self.masker.plan(&self.session, columns)
    }

    /// See [`ResponseMasker::mask_text`].
    pub fn mask_text(&self, text: &str) -> Option<(String, MaskCounts)> {
        self.masker.mask_text(&self.session, text)
    }

    /// See [`ResponseMasker::mask_bytes`].
    pub fn mask_bytes(&self, bytes: &[u8]) -> Option<(Vec<u8>, MaskCounts)> {
        self.masker.mask_bytes(&self.session, bytes)
    }

    /// See [`ResponseMasker::stream_masker`]. A masker that has no stream
    /// masker of its own (detector plugins, a platform team's text masker)
    /// still masks streamed bodies: line by line through its `mask_bytes`.
    pub fn stream(&self) -> Option<StreamMasker> {
        self.masker.stream_masker(&self.session).or_else(|| {
            let (masker, session) = (self.masker.clone(), self.session.clone());
            Some(StreamMasker::lines(
                Arc::new(move |piece: &[u8]| masker.mask_bytes(&session, piece)),
                LINE_FALLBACK_MAX,
            ))
        })
    }
}

/// Masks the rows of one result set in place.
pub trait RowMasker: Send {
    /// Rewrites values (text or binary, per column) and returns how many it masked.
    /// A masked value must stay valid for its column's type and format.
    fn mask_row(&mut self, values: &mut [Option<Vec<u8>>]) -> u64;

    /// What was masked so far, by detector or column rule, for the audit record.
    fn counts(&self) -> MaskCounts {
        MaskCounts::default()
    }

    /// Like `mask_row`, on borrowed values: returns only the values that
    /// change (index, new value), so an untouched row is forwarded as it came.
    fn mask_row_changes(&mut self, values: &[Option<&[u8]>]) -> Vec<(usize, Option<Vec<u8>>)> {
        let mut owned: Vec<Option<Vec<u8>>> =
            values.iter().map(|v| v.map(<[u8]>::to_vec)).collect();
        self.mask_row(&mut owned);
        owned
            .into_iter()
            .enumerate()
            .filter(|(i, v)| v.as_deref() != values[*i])
            .collect()
    }
}

/// The default: no masking configured.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoMasking;

impl ResponseMasker for NoMasking {
    fn plan(&self, _: &SessionInfo, _: &[Column]) -> Option<Box<dyn RowMasker>> {
        None
    }

    fn is_active(&self, _: &SessionInfo) -> bool {
        false
    }

    fn mask_document(
        &self,
        _: &SessionInfo,
        _: &mut serde_json::Value,
        _: &[JsonPath],
    ) -> MaskCounts {
        MaskCounts::default()
    }
}
