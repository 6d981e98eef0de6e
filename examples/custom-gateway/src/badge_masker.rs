//! A platform team's own masker, in the one masking position every protocol
//! uses: employee badge numbers (`EMP-` and six digits) become `EMP-######`
//! in PostgreSQL rows, SSH output, HTTP and Kubernetes bodies and errors.
//! It runs after the gateway's own `[masking]` (the wrapped masker), so the
//! configured detectors and column rules still apply.

use sluice_core::masking::{MaskCounts, ResponseMasker, RowMasker, StreamMasker};
use sluice_core::pipeline::SessionInfo;
use sluice_core::Column;
use std::sync::Arc;

const PREFIX: &[u8] = b"EMP-";
const DIGITS: usize = 6;
/// The name badge numbers are counted under in the audit record.
pub const LABEL: &str = "badge_number";

pub struct BadgeMasker {
    inner: Arc<dyn ResponseMasker>,
}

impl BadgeMasker {
    pub fn new(inner: Arc<dyn ResponseMasker>) -> Self {
        BadgeMasker { inner }
    }
}

/// Masks every badge number in `bytes`; `None` when there is none.
pub fn mask_badges(bytes: &[u8]) -> Option<(Vec<u8>, MaskCounts)> {
    let mut out = bytes.to_vec();
    let mut counts = MaskCounts::default();
    let mut i = 0;
    while let Some(at) = find(&out[i..], PREFIX).map(|p| p + i) {
        let digits = &out[at + PREFIX.len()..];
        let is_badge = digits.len() >= DIGITS
            && digits[..DIGITS].iter().all(u8::is_ascii_digit)
            && !digits.get(DIGITS).is_some_and(u8::is_ascii_digit);
        if is_badge {
            let start = at + PREFIX.len();
            out[start..start + DIGITS].fill(b'#');
            counts.add(LABEL, 1);
        }
        i = at + PREFIX.len();
    }
    (!counts.is_empty()).then_some((out, counts))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Then-badges: whatever `first` changed, badge numbers masked on top.
fn then_badges(
    first: Option<(Vec<u8>, MaskCounts)>,
    original: &[u8],
) -> Option<(Vec<u8>, MaskCounts)> {
    let (current, mut counts) = match &first {
        Some((b, c)) => (b.as_slice(), c.clone()),
        None => (original, MaskCounts::default()),
    };
    match mask_badges(current) {
        Some((masked, c)) => {
            counts.merge(&c);
            Some((masked, counts))
        }
        None => first,
    }
}

impl ResponseMasker for BadgeMasker {
    fn plan(&self, session: &SessionInfo, columns: &[Column]) -> Option<Box<dyn RowMasker>> {
        Some(Box::new(BadgeRows {
            inner: self.inner.plan(session, columns),
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
        let first = self
            .inner
            .mask_text(session, text)
            .map(|(t, c)| (t.into_bytes(), c));
        then_badges(first, text.as_bytes())
            .map(|(b, c)| (String::from_utf8_lossy(&b).into_owned(), c))
    }

    fn mask_bytes(&self, session: &SessionInfo, bytes: &[u8]) -> Option<(Vec<u8>, MaskCounts)> {
        then_badges(self.inner.mask_bytes(session, bytes), bytes)
    }

    /// SSH output and exec streams: line by line (a badge number never spans
    /// lines), after the gateway's own stream masker when it has one.
    fn stream_masker(&self, session: &SessionInfo) -> Option<StreamMasker> {
        let inner = self.inner.clone();
        let session = session.clone();
        Some(StreamMasker::lines(
            Arc::new(move |line: &[u8]| then_badges(inner.mask_bytes(&session, line), line)),
            64 * 1024,
        ))
    }

    // `mask_document` (JSON bodies) keeps core's default: the wrapped
    // masker's key paths are lost, so forward them explicitly.
    fn mask_document(
        &self,
        session: &SessionInfo,
        doc: &mut serde_json::Value,
        key_paths: &[sluice_core::masking::JsonPath],
    ) -> MaskCounts {
        let mut counts = self.inner.mask_document(session, doc, key_paths);
        counts.merge(&sluice_core::masking::mask_json_text(doc, &|text| {
            mask_badges(text.as_bytes()).map(|(b, c)| (String::from_utf8_lossy(&b).into_owned(), c))
        }));
        counts
    }
}

struct BadgeRows {
    inner: Option<Box<dyn RowMasker>>,
    counts: MaskCounts,
}

impl RowMasker for BadgeRows {
    fn mask_row(&mut self, values: &mut [Option<Vec<u8>>]) -> u64 {
        let mut masked = self.inner.as_mut().map_or(0, |m| m.mask_row(values));
        for value in values.iter_mut().flatten() {
            // Replacing digits with '#' keeps text valid; a binary integer
            // column never holds the "EMP-" prefix.
            if let Some((out, counts)) = mask_badges(value) {
                *value = out;
                self.counts.merge(&counts);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn badges_are_masked_and_lookalikes_kept() {
        let (out, counts) = mask_badges(b"EMP-123456, EMP-1234567, EMP-12, xEMP-654321").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "EMP-######, EMP-1234567, EMP-12, xEMP-######"
        );
        assert_eq!(counts.get(LABEL), 2);
        assert!(mask_badges(b"no badge here").is_none());
    }
}
