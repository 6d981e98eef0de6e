//! Response bodies on their way to the client: echoed credentials redacted,
//! masked per the flavor's plan, counted and sampled for the audit record.

use crate::flavor::{Body, BodyTransformer, BoxError, TransformError};
use bytes::Bytes;
use http_body::Frame;
use memchr::memmem;
use sluice_core::masking::{JsonPath, MaskCounts, SessionMasker, StreamMasker};
use sluice_core::sync::MutexExt;
use std::pin::Pin;
use std::task::{Context, Poll};

/// What replaces an echoed injected credential.
pub const REDACTED: &[u8] = b"[redacted-credential]";
/// Bytes of what the client saw kept in the audit record (for replay).
pub const SAMPLE_BYTES: usize = 1024;

/// Replaces injected credentials in a byte stream. Holds back at most the
/// longest secret's length minus one byte, so a secret split across chunks
/// is still found. Built once per session and cloned per response (the
/// finders are shared: a clone allocates nothing).
#[derive(Clone)]
pub struct Redactor {
    finders: std::sync::Arc<[memmem::Finder<'static>]>,
    holdback: usize,
    buf: Vec<u8>,
    pub redacted: u64,
}

/// The forms an echoed credential can take in a response: as is; JSON with
/// `/` escaped or every character `\uXXXX`-escaped; percent-encoded (upper
/// and lower hex, `+` for a space); and base64 / base64url at each of the
/// three alignments it can have inside a longer encoded text (only the
/// characters that depend on the secret alone, so the match holds whatever
/// surrounds it).
fn encodings(s: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let mut out = vec![s.to_vec()];
    if s.contains(&b'/') {
        let mut escaped = Vec::with_capacity(s.len() + 4);
        for &b in s {
            if b == b'/' {
                escaped.push(b'\\');
            }
            escaped.push(b);
        }
        out.push(escaped);
    }
    if let Ok(text) = std::str::from_utf8(s) {
        for upper in [false, true] {
            let mut u = String::new();
            for unit in text.encode_utf16() {
                if upper {
                    u.push_str(&format!("\\u{unit:04X}"));
                } else {
                    u.push_str(&format!("\\u{unit:04x}"));
                }
            }
            out.push(u.into_bytes());
        }
    }
    for (upper, plus) in [(true, false), (false, false), (true, true), (false, true)] {
        let mut p = String::new();
        for &b in s {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                p.push(b as char);
            } else if plus && b == b' ' {
                p.push('+');
            } else if upper {
                p.push_str(&format!("%{b:02X}"));
            } else {
                p.push_str(&format!("%{b:02x}"));
            }
        }
        out.push(p.into_bytes());
    }
    // Every byte escaped (some encoders and hostile echoes do).
    for upper in [true, false] {
        let all: String = s
            .iter()
            .map(|b| {
                if upper {
                    format!("%{b:02X}")
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect();
        out.push(all.into_bytes());
    }
    for engine in [
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        for k in 0..3usize {
            let mut padded = vec![0u8; k];
            padded.extend_from_slice(s);
            let text = engine.encode(&padded);
            // Characters whose 6 bits lie wholly within the secret's bits.
            let first = (8 * k).div_ceil(6);
            let end = (8 * (k + s.len())) / 6;
            if end > first && end - first >= 8 {
                if let Some(mid) = text.get(first..end) {
                    out.push(mid.as_bytes().to_vec());
                }
            }
        }
    }
    out
}

impl Redactor {
    /// `None` when there is nothing to redact.
    pub fn new(secrets: &[Vec<u8>]) -> Option<Redactor> {
        if secrets.is_empty() {
            return None;
        }
        let mut variants: Vec<Vec<u8>> = Vec::new();
        for s in secrets {
            for v in encodings(s) {
                if !v.is_empty() && !variants.contains(&v) {
                    variants.push(v);
                }
            }
        }
        let holdback = variants.iter().map(Vec::len).max().unwrap_or(1) - 1;
        Some(Redactor {
            finders: variants
                .into_iter()
                .map(|v| memmem::Finder::new(&v).into_owned())
                .collect(),
            holdback,
            buf: Vec::new(),
            redacted: 0,
        })
    }

    /// Redacts in a complete buffer.
    pub fn redact_all(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = self.push(input);
        out.extend(self.finish());
        out
    }

    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.buf.extend_from_slice(chunk);
        self.drain(false)
    }

    pub fn finish(&mut self) -> Vec<u8> {
        self.drain(true)
    }

    /// For a stream that went idle: releases everything but the longest tail
    /// that could still become a secret (a proper prefix of one), so a watch
    /// event or a log line is not held back until more data arrives.
    pub fn flush(&mut self) -> Vec<u8> {
        let mut out = self.drain(false);
        let keep = self
            .finders
            .iter()
            .map(|f| {
                let needle = f.needle();
                (1..needle.len().min(self.buf.len() + 1))
                    .rev()
                    .find(|&k| self.buf[self.buf.len() - k..] == needle[..k])
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        let release = self.buf.len() - keep;
        out.extend(self.buf.drain(..release));
        out
    }

    fn drain(&mut self, all: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.buf.len());
        let mut pos = 0;
        loop {
            let next = self
                .finders
                .iter()
                .filter_map(|f| {
                    f.find(&self.buf[pos..])
                        .map(|at| (pos + at, f.needle().len()))
                })
                .min_by_key(|&(at, len)| (at, usize::MAX - len));
            match next {
                Some((at, len)) => {
                    out.extend_from_slice(&self.buf[pos..at]);
                    out.extend_from_slice(REDACTED);
                    self.redacted += 1;
                    pos = at + len;
                }
                None => break,
            }
        }
        let keep = if all {
            0
        } else {
            self.holdback.min(self.buf.len() - pos)
        };
        let release = self.buf.len() - keep;
        out.extend_from_slice(&self.buf[pos..release]);
        self.buf.drain(..release);
        out
    }
}

/// Redacts secrets in a header value's text; `None` when none is present.
/// `template` is a session's redactor as built, nothing pushed into it.
pub fn redact_text(template: &Redactor, text: &[u8]) -> Option<Vec<u8>> {
    // Redacting finds at least one secret exactly when one is present.
    if !template.finders.iter().any(|f| f.find(text).is_some()) {
        return None;
    }
    let mut r = template.clone();
    let out = r.redact_all(text);
    (r.redacted > 0).then_some(out)
}

/// Masks a complete JSON document with the gateway's masker (key paths,
/// key-name column rules, detectors, or whatever a platform team's masker
/// does). `Err` when it is not JSON. The result is always re-serialised
/// from the parsed document, masked or not.
pub fn mask_json_document(
    masker: &SessionMasker,
    key_paths: &[JsonPath],
    bytes: &[u8],
) -> Result<(Vec<u8>, MaskCounts), TransformError> {
    let mut doc: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| {
        TransformError::new(
            "the upstream labelled its body JSON but it is not valid JSON, so it could not be masked",
        )
    })?;
    let counts = masker.mask_document(&mut doc, key_paths);
    // Always the document that was checked, never the original bytes: a
    // duplicate key's other copies (which a client may read instead) and
    // anything else the parser read past are not passed on.
    let out = serde_json::to_vec(&doc)
        .map_err(|_| TransformError::new("the masked JSON document could not be written"))?;
    Ok((out, counts))
}

/// Newline-delimited JSON (NDJSON, JSON Lines, Kubernetes watch events):
/// each value masked by `mask` as its line completes and re-serialised from
/// what was checked; only the incomplete line is held back (up to `max`). A
/// line that is not JSON ends the body: it cannot be masked.
pub struct JsonLines {
    mask: Box<dyn FnMut(&mut serde_json::Value) -> MaskCounts + Send>,
    buf: Vec<u8>,
    max: usize,
    counts: MaskCounts,
    /// What one line is, for errors ("watch event", "line").
    what: &'static str,
}

impl JsonLines {
    pub fn new(
        mask: impl FnMut(&mut serde_json::Value) -> MaskCounts + Send + 'static,
        max: usize,
        what: &'static str,
    ) -> Self {
        JsonLines {
            mask: Box::new(mask),
            buf: Vec::new(),
            max,
            counts: MaskCounts::default(),
            what,
        }
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<u8>) -> Result<(), TransformError> {
        if line.iter().all(u8::is_ascii_whitespace) {
            out.extend_from_slice(line);
            out.push(b'\n');
            return Ok(());
        }
        let what = self.what;
        let mut doc: serde_json::Value = serde_json::from_slice(line).map_err(|_| {
            TransformError::new(format!(
                "a {what} from the upstream is not JSON, so it could not be masked; the stream was ended"
            ))
        })?;
        self.counts.merge(&(self.mask)(&mut doc));
        serde_json::to_writer(&mut *out, &doc)
            .map_err(|_| TransformError::new(format!("a masked {what} could not be written")))?;
        out.push(b'\n');
        Ok(())
    }
}

impl BodyTransformer for JsonLines {
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, TransformError> {
        let mut out = Vec::new();
        let mut rest = chunk;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (line, tail) = rest.split_at(nl);
            rest = &tail[1..];
            let mut whole = std::mem::take(&mut self.buf);
            whole.extend_from_slice(line);
            self.line(&whole, &mut out)?;
        }
        if self.buf.len() + rest.len() > self.max {
            return Err(TransformError::new(format!(
                "a {} from the upstream is longer than the {} bytes the gateway buffers to mask it, so the stream was ended",
                self.what, self.max
            )));
        }
        self.buf.extend_from_slice(rest);
        Ok(out)
    }

    fn finish(&mut self) -> Result<Vec<u8>, TransformError> {
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.buf);
        if !rest.is_empty() {
            self.line(&rest, &mut out)?;
        }
        Ok(out)
    }

    fn counts(&self) -> MaskCounts {
        self.counts.clone()
    }
}

/// A stream of JSON objects or arrays, one after another, with or without
/// whitespace between them (a Kubernetes watch writes one event per object,
/// usually newline-terminated; the newline is not relied on). Each value is
/// masked as soon as its closing bracket arrives and written on its own
/// line; only the current, incomplete value is held back.
pub struct JsonValues {
    mask: Box<dyn FnMut(&mut serde_json::Value) -> MaskCounts + Send>,
    /// The incomplete value so far (empty between values).
    buf: Vec<u8>,
    /// Open brackets outside strings, and the string state, of `buf`.
    depth: usize,
    in_string: bool,
    escaped: bool,
    max: usize,
    counts: MaskCounts,
    /// What one value is, for errors ("watch event").
    what: &'static str,
}

impl JsonValues {
    pub fn new(
        mask: impl FnMut(&mut serde_json::Value) -> MaskCounts + Send + 'static,
        max: usize,
        what: &'static str,
    ) -> Self {
        JsonValues {
            mask: Box::new(mask),
            buf: Vec::new(),
            depth: 0,
            in_string: false,
            escaped: false,
            max,
            counts: MaskCounts::default(),
            what,
        }
    }

    fn not_json(&self) -> TransformError {
        TransformError::new(format!(
            "a {} from the upstream is not a JSON object, so it could not be masked; the stream was ended",
            self.what
        ))
    }

    /// Follows one byte of a value; true when it closed the value.
    fn step(&mut self, b: u8) -> bool {
        if self.in_string {
            match (self.escaped, b) {
                (true, _) => self.escaped = false,
                (false, b'\\') => self.escaped = true,
                (false, b'"') => self.in_string = false,
                _ => {}
            }
            return false;
        }
        match b {
            b'"' => self.in_string = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => self.depth -= 1,
            _ => {}
        }
        self.depth == 0
    }

    /// Masks the complete value in `buf` onto `out`.
    fn emit(&mut self, out: &mut Vec<u8>) -> Result<(), TransformError> {
        let value = std::mem::take(&mut self.buf);
        let mut doc: serde_json::Value =
            serde_json::from_slice(&value).map_err(|_| self.not_json())?;
        self.counts.merge(&(self.mask)(&mut doc));
        serde_json::to_writer(&mut *out, &doc).map_err(|_| {
            TransformError::new(format!("a masked {} could not be written", self.what))
        })?;
        out.push(b'\n');
        Ok(())
    }
}

impl BodyTransformer for JsonValues {
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, TransformError> {
        let mut out = Vec::new();
        for &b in chunk {
            if self.buf.is_empty() {
                if b.is_ascii_whitespace() {
                    continue;
                }
                if b != b'{' && b != b'[' {
                    return Err(self.not_json());
                }
            }
            self.buf.push(b);
            if self.step(b) {
                self.emit(&mut out)?;
            } else if self.buf.len() > self.max {
                return Err(TransformError::new(format!(
                    "a {} from the upstream is longer than the {} bytes the gateway buffers to mask it, so the stream was ended",
                    self.what, self.max
                )));
            }
        }
        Ok(out)
    }

    fn finish(&mut self) -> Result<Vec<u8>, TransformError> {
        if self.buf.is_empty() {
            return Ok(Vec::new());
        }
        Err(TransformError::new(format!(
            "the upstream's stream ended inside a {}, which could not be masked and was not passed on",
            self.what
        )))
    }

    fn counts(&self) -> MaskCounts {
        self.counts.clone()
    }
}

/// The streaming text plan as a transformer.
pub struct TextMasking(pub StreamMasker);

impl BodyTransformer for TextMasking {
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, TransformError> {
        Ok(self.0.push(chunk))
    }
    /// An idle upstream releases complete lines only: a value the upstream
    /// pauses in the middle of stays held until its line ends.
    fn flush(&mut self) -> Result<Vec<u8>, TransformError> {
        Ok(self.0.flush_lines())
    }
    fn finish(&mut self) -> Result<Vec<u8>, TransformError> {
        Ok(self.0.flush())
    }
    fn counts(&self) -> MaskCounts {
        self.0.counts().clone()
    }
}

/// HTML text: character references that spell ordinary characters
/// (`&#64;`, `&#x40;`, `&commat;`, `&period;` …) are decoded before the text
/// masker sees the bytes, so `ada&#64;example&#46;com` is found as an email.
/// Only letters, digits and `@ . _ + - : / %` are decoded: those mean the
/// same in HTML text and attributes either way; markup-significant
/// references (`&lt;`, `&amp;`, `&quot;`) are left as they are.
pub struct HtmlText {
    inner: TextMasking,
    /// An unfinished reference at the end of the last chunk.
    carry: Vec<u8>,
}

/// The longest reference decoded (`&#x0000040;` is valid HTML).
const MAX_REFERENCE: usize = 12;

impl HtmlText {
    pub fn new(inner: StreamMasker) -> Self {
        HtmlText {
            inner: TextMasking(inner),
            carry: Vec::new(),
        }
    }

    /// Decodes `input`; with `all == false` an unfinished reference at its
    /// end is kept back for the next chunk.
    fn decode(&mut self, input: &[u8], all: bool) -> Vec<u8> {
        let mut bytes = std::mem::take(&mut self.carry);
        bytes.extend_from_slice(input);
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] != b'&' {
                out.push(bytes[i]);
                i += 1;
                continue;
            }
            let window = &bytes[i..bytes.len().min(i + MAX_REFERENCE)];
            match window.iter().position(|&b| b == b';') {
                Some(end) => match neutral_reference(&window[1..end]) {
                    Some(c) => {
                        out.push(c);
                        i += end + 1;
                    }
                    None => {
                        out.push(b'&');
                        i += 1;
                    }
                },
                None if !all && bytes.len() - i < MAX_REFERENCE => {
                    self.carry = bytes[i..].to_vec();
                    break;
                }
                None => {
                    out.push(b'&');
                    i += 1;
                }
            }
        }
        out
    }
}

/// The character a reference's name (`#64`, `#x40`, `commat`) spells, when it
/// is one that means the same decoded.
fn neutral_reference(name: &[u8]) -> Option<u8> {
    let name = std::str::from_utf8(name).ok()?;
    let c = if let Some(hex) = name.strip_prefix("#x").or_else(|| name.strip_prefix("#X")) {
        u32::from_str_radix(hex, 16).ok()?
    } else if let Some(dec) = name.strip_prefix('#') {
        dec.parse::<u32>().ok()?
    } else {
        match name {
            "commat" => '@' as u32,
            "period" => '.' as u32,
            "lowbar" | "UnderBar" => '_' as u32,
            "plus" => '+' as u32,
            "colon" => ':' as u32,
            "sol" => '/' as u32,
            "percnt" => '%' as u32,
            _ => return None,
        }
    };
    let c = u8::try_from(c).ok()?;
    (c.is_ascii_alphanumeric() || b"@._+-:/%".contains(&c)).then_some(c)
}

impl BodyTransformer for HtmlText {
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, TransformError> {
        let decoded = self.decode(chunk, false);
        self.inner.push(&decoded)
    }
    fn flush(&mut self) -> Result<Vec<u8>, TransformError> {
        self.inner.flush()
    }
    fn finish(&mut self) -> Result<Vec<u8>, TransformError> {
        let decoded = self.decode(&[], true);
        let mut out = self.inner.push(&decoded)?;
        out.extend(self.inner.finish()?);
        Ok(out)
    }
    fn counts(&self) -> MaskCounts {
        self.inner.counts()
    }
}

/// A CSV (or TSV) document: buffered to the masking cap, its first record
/// read as column names, and every later record masked as a result row by
/// the gateway's masker (column rules by name, detectors in every value),
/// then written back. A body that does not parse as CSV is refused.
pub struct CsvDocument {
    masker: SessionMasker,
    delimiter: u8,
    buf: Vec<u8>,
    max: usize,
    counts: MaskCounts,
}

impl CsvDocument {
    pub fn new(masker: SessionMasker, delimiter: u8, max: usize) -> Self {
        CsvDocument {
            masker,
            delimiter,
            buf: Vec::new(),
            max,
            counts: MaskCounts::default(),
        }
    }

    fn mask(&mut self) -> Result<Vec<u8>, TransformError> {
        let unreadable = || {
            TransformError::new(
                "the upstream labelled its body CSV but it could not be read as CSV, so it could not be masked",
            )
        };
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(self.delimiter)
            .from_reader(self.buf.as_slice());
        let records = reader
            .byte_records()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| unreadable())?;
        let width = records.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut rows = records.iter();
        let header: Vec<Vec<u8>> = rows
            .next()
            .map(|h| h.iter().map(<[u8]>::to_vec).collect())
            .unwrap_or_default();
        let columns: Vec<sluice_core::Column> = (0..width)
            .map(|i| sluice_core::Column {
                name: header
                    .get(i)
                    .map(|h| String::from_utf8_lossy(h).trim().to_string())
                    .unwrap_or_default(),
                table_oid: 0,
                column_number: 0,
                type_oid: 25,
                binary: false,
                table: None,
                source_column: None,
            })
            .collect();
        let mut plan = self.masker.plan(&columns);
        let mut writer = csv::WriterBuilder::new()
            .flexible(true)
            .delimiter(self.delimiter)
            .from_writer(Vec::new());
        let header_out: Vec<Vec<u8>> = header
            .iter()
            .map(|h| match self.masker.mask_bytes(h) {
                Some((masked, counts)) => {
                    self.counts.merge(&counts);
                    masked
                }
                None => h.clone(),
            })
            .collect();
        if !header.is_empty() || !records.is_empty() {
            writer.write_record(&header_out).map_err(|_| unreadable())?;
        }
        for record in rows {
            let mut values: Vec<Option<Vec<u8>>> = (0..width)
                .map(|i| record.get(i).map(<[u8]>::to_vec))
                .collect();
            if let Some(plan) = plan.as_mut() {
                plan.mask_row(&mut values);
            }
            let fields: Vec<Vec<u8>> = values
                .into_iter()
                .take(record.len())
                .map(Option::unwrap_or_default)
                .collect();
            writer.write_record(&fields).map_err(|_| unreadable())?;
        }
        if let Some(plan) = &plan {
            self.counts.merge(&plan.counts());
        }
        writer.into_inner().map_err(|_| unreadable())
    }
}

impl BodyTransformer for CsvDocument {
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, TransformError> {
        if self.buf.len() + chunk.len() > self.max {
            return Err(TransformError::new(format!(
                "the CSV body is larger than the {}-byte masking buffer, so it was not passed on",
                self.max
            )));
        }
        self.buf.extend_from_slice(chunk);
        Ok(Vec::new())
    }

    fn finish(&mut self) -> Result<Vec<u8>, TransformError> {
        self.mask()
    }

    fn counts(&self) -> MaskCounts {
        self.counts.clone()
    }
}

/// What a response body was, for the audit record.
#[derive(Debug, Default, Clone)]
pub struct BodyStats {
    pub bytes: u64,
    pub sample: Vec<u8>,
    pub truncated: bool,
    pub masked: MaskCounts,
    pub error: Option<String>,
}

impl BodyStats {
    pub fn saw(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        let room = SAMPLE_BYTES.saturating_sub(self.sample.len());
        self.sample
            .extend_from_slice(&chunk[..room.min(chunk.len())]);
        if chunk.len() > room {
            self.truncated = true;
        }
    }
}

/// Passes the upstream body through, counting it; `on_end` runs once when
/// the body ends, fails or is dropped (client gone).
pub struct CountingBody<F: FnOnce(BodyStats) + Send> {
    inner: Body,
    stats: BodyStats,
    on_end: Option<F>,
}

impl<F: FnOnce(BodyStats) + Send> CountingBody<F> {
    pub fn new(inner: Body, on_end: F) -> Self {
        CountingBody {
            inner,
            stats: BodyStats::default(),
            on_end: Some(on_end),
        }
    }

    fn end(&mut self, error: Option<String>) {
        if let Some(f) = self.on_end.take() {
            let mut stats = std::mem::take(&mut self.stats);
            stats.error = error;
            f(stats);
        }
    }
}

impl<F: FnOnce(BodyStats) + Send + Unpin> http_body::Body for CountingBody<F> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.stats.saw(data);
                }
                // With a known length the server stops polling after the
                // last byte, so the end is recorded here.
                if this.inner.is_end_stream() {
                    this.end(None);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.end(Some(format!("upstream body failed: {e}")));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.end(None);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<F: FnOnce(BodyStats) + Send> Drop for CountingBody<F> {
    fn drop(&mut self) {
        if self.on_end.is_some() {
            self.end(Some("the client went away before the body ended".into()));
        }
    }
}

/// A request body over the limit.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than the gateway's limit")]
pub struct TooLarge;

/// A method-override field found in a request body as it streamed
/// upstream: the upload was stopped before the piece holding it.
#[derive(Debug, thiserror::Error)]
#[error("the request body's field {name:?} asks for another method ({at} bytes in)")]
pub struct OverrideInBody {
    /// The field's name, decoded.
    pub name: String,
    /// How many bytes of the body the upstream may have received (the
    /// pieces before the one holding it).
    pub at: u64,
}

/// The client's request body on its way upstream, cut at `max` bytes. On
/// overflow, or a method-override field found as it streams, the client's
/// body is handed back through `stash` (see [`Holding`]) rather than
/// dropped.
pub struct Capped {
    /// Bytes already read from the client (to digest them), sent first.
    prefix: Option<Bytes>,
    inner: Option<hyper::body::Incoming>,
    seen: u64,
    max: u64,
    stash: std::sync::Arc<std::sync::Mutex<Option<hyper::body::Incoming>>>,
    /// Reads the body for method-override fields (already fed the prefix);
    /// `None` once the body ended without one.
    scan: Option<crate::overrides::scan::BodyScanner>,
    /// The length the upstream is told (`Content-Length`): the body is
    /// whole there once that many bytes are sent.
    declared: Option<u64>,
}

impl Capped {
    pub fn new(
        inner: hyper::body::Incoming,
        max: u64,
        stash: std::sync::Arc<std::sync::Mutex<Option<hyper::body::Incoming>>>,
    ) -> Self {
        Capped {
            prefix: None,
            inner: Some(inner),
            seen: 0,
            max,
            stash,
            scan: None,
            declared: None,
        }
    }
}

impl Capped {
    /// Sends `prefix` (the body's start, already read) before the rest.
    pub fn with_prefix(mut self, prefix: Option<Bytes>) -> Self {
        self.prefix = prefix.filter(|p| !p.is_empty());
        self
    }

    /// Checks the rest of the body for method-override fields as it
    /// streams (`scan` has read the prefix): a piece holding one, and all
    /// after it, are not sent, and the upload fails with
    /// [`OverrideInBody`], so the upstream never receives a whole request.
    /// `declared` is the `Content-Length` the upstream is told: the last
    /// field is judged before the bytes that complete the body go out.
    pub fn with_scan(
        mut self,
        scan: Option<crate::overrides::scan::BodyScanner>,
        declared: Option<u64>,
    ) -> Self {
        self.scan = scan;
        self.declared = declared;
        self
    }

    /// Whether the body is whole with what was read (the upstream may take
    /// it as complete once it is sent).
    fn at_end(&self) -> bool {
        self.declared.is_some_and(|n| self.seen >= n)
            || self
                .inner
                .as_ref()
                .is_none_or(http_body::Body::is_end_stream)
    }

    /// Reads `data` (`None`: nothing new), and the end of the body when it
    /// is whole; a field found stops the upload (the client's body kept).
    fn scan(&mut self, data: Option<&[u8]>, ended: bool) -> Option<BoxError> {
        let scan = self.scan.as_mut()?;
        let mut found = data.and_then(|d| scan.push(d));
        if found.is_none() && ended {
            found = scan.finish();
        }
        let Some((crate::overrides::scan::Found(name), at)) = found else {
            if ended {
                self.scan = None;
            }
            return None;
        };
        if let Some(body) = self.inner.take() {
            *self.stash.locked() = Some(body);
        }
        Some(Box::new(OverrideInBody { name, at }))
    }
}

impl http_body::Body for Capped {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(prefix) = this.prefix.take() {
            this.seen += prefix.len() as u64;
            if this.seen > this.max {
                return Poll::Ready(Some(Err(Box::new(TooLarge))));
            }
            // The scanner has read the prefix; it may be the whole body.
            if let Some(e) = this.scan(None, this.at_end()) {
                return Poll::Ready(Some(Err(e)));
            }
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Some(Err(Box::new(TooLarge))));
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.max {
                        if let Some(body) = this.inner.take() {
                            *this.stash.locked() = Some(body);
                        }
                        return Poll::Ready(Some(Err(Box::new(TooLarge))));
                    }
                }
                // Trailers end the body as well.
                let ended = frame.data_ref().is_none() || this.at_end();
                if let Some(e) = this.scan(frame.data_ref().map(|d| &d[..]), ended) {
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => match this.scan(None, true) {
                Some(e) => Poll::Ready(Some(Err(e))),
                None => Poll::Ready(None),
            },
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        // While fields are read, the end is seen by polling (and judged
        // before it is passed on).
        self.scan.is_none()
            && self.prefix.is_none()
            && self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let rest = self
            .inner
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_default();
        let before = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(rest.lower() + before);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + before);
        }
        hint
    }
}

/// The most of a request body read before it is judged, to bind approvals
/// to its digest; a longer body is streamed and marked unbound.
pub const DIGEST_LIMIT: usize = 1024 * 1024;

/// The start of a request body: up to `limit` bytes, and whether that is
/// all of it. Trailers are not kept.
pub async fn read_start(
    body: &mut hyper::body::Incoming,
    limit: usize,
) -> Result<(Bytes, bool), hyper::Error> {
    use http_body_util::BodyExt;
    let mut buf = bytes::BytesMut::new();
    while buf.len() <= limit {
        match body.frame().await {
            Some(frame) => {
                if let Ok(data) = frame?.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            None => return Ok((buf.freeze(), true)),
        }
    }
    Ok((buf.freeze(), false))
}

/// The context line binding a command to its request body (see
/// `sluice_core::approval::fingerprint`).
pub fn body_context(bytes: &[u8], complete: bool) -> String {
    use sha2::Digest;
    if !complete {
        return format!(
            "{}the request body is over {} KiB, too large to digest before judging",
            sluice_core::approval::UNBOUND_CONTEXT,
            DIGEST_LIMIT / 1024
        );
    }
    let digest = sha2::Sha256::digest(bytes);
    let mut line = format!(
        "body sha256:{} ({} bytes)",
        sluice_core::audit::hex_lower(&digest),
        bytes.len()
    );
    // What an approver reads: the start of a text body, escaped (control
    // characters cannot disguise it); the digest binds the whole body.
    if let Ok(text) = std::str::from_utf8(bytes) {
        if !text.is_empty() {
            let excerpt: String = text.chars().take(BODY_EXCERPT_CHARS).collect();
            let more = if excerpt.len() < text.len() {
                "…"
            } else {
                ""
            };
            line.push_str(&format!(": {excerpt:?}{more}"));
        }
    }
    line
}

/// Characters of a text request body shown in its context line.
const BODY_EXCERPT_CHARS: usize = 200;

/// A response body that keeps the unread request body until it ends.
pub struct Holding {
    inner: Body,
    _held: Option<hyper::body::Incoming>,
}

impl Holding {
    pub fn new(inner: Body, held: hyper::body::Incoming) -> Self {
        Holding {
            inner,
            _held: Some(held),
        }
    }
}

impl http_body::Body for Holding {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `JsonValues` that replaces every `"secret"` key's value.
    fn values(max: usize) -> JsonValues {
        JsonValues::new(
            |doc| {
                let mut counts = MaskCounts::default();
                if let Some(v) = doc.get_mut("secret") {
                    *v = serde_json::Value::from("[masked]");
                    counts.add("secret", 1);
                }
                counts
            },
            max,
            "event",
        )
    }

    #[test]
    fn json_values_are_masked_one_by_one_with_or_without_newlines() {
        // Strings holding brackets, quotes and backslashes do not end a value.
        let a = r#"{"secret":"s3cr3t","note":"} ] \" {"}"#;
        let b = r#"[1,{"x":"]"}]"#;
        let c = r#"{"secret":"hunter22"}"#;
        for stream in [format!("{a}{b}{c}"), format!("{a}\n {b}\r\n\n{c}\n")] {
            for split in 0..=stream.len() {
                let mut t = values(1 << 10);
                let (x, y) = stream.as_bytes().split_at(split);
                let mut out = t.push(x).unwrap();
                if split >= a.len() {
                    // Released as soon as its closing brace arrives.
                    assert!(out.starts_with(br#"{"note""#), "{split}");
                }
                out.extend(t.push(y).unwrap());
                out.extend(t.finish().unwrap());
                let text = String::from_utf8(out).unwrap();
                assert_eq!(text.lines().count(), 3, "{text}");
                assert!(
                    !text.contains("s3cr3t") && !text.contains("hunter22"),
                    "{text}"
                );
                assert_eq!(t.counts().get("secret"), 2);
            }
        }
    }

    #[test]
    fn json_values_refuse_what_they_cannot_mask() {
        assert!(values(1 << 10).push(b"garbage").is_err());
        assert!(values(1 << 10).push(br#"{"a":1}x"#).is_err());
        assert!(values(1 << 10).push(b"{]").is_err());
        assert!(values(16).push(br#"{"secret":"0123456789"}"#).is_err());
        // The stream ends inside a value: its start is never released.
        let mut t = values(1 << 10);
        assert!(t.push(br#"{"secret":"s3cr3t""#).unwrap().is_empty());
        assert!(t.finish().is_err());
    }

    #[test]
    fn the_body_context_binds_the_digest_and_shows_an_escaped_excerpt() {
        let line = body_context("{\"id\": 7}\u{202e}\n".as_bytes(), true);
        assert!(line.starts_with("body sha256:"), "{line}");
        assert!(
            line.ends_with(r#"(13 bytes): "{\"id\": 7}\u{202e}\n""#),
            "{line}"
        );
        let long = "x".repeat(500);
        let line = body_context(long.as_bytes(), true);
        assert!(line.ends_with("…") && line.len() < 400, "{line}");
        // Binary bodies: the digest only.
        assert!(body_context(&[0xff, 0xfe], true).ends_with("(2 bytes)"));
    }

    #[test]
    fn echoes_in_other_encodings_are_redacted() {
        use base64::Engine as _;
        let secret = b"crm-upstream-secret/7f3a 9c".to_vec();
        let r = Redactor::new(std::slice::from_ref(&secret)).unwrap();
        let text = std::str::from_utf8(&secret).unwrap();
        let escaped: String = text
            .chars()
            .map(|c| format!("\\u{:04x}", c as u32))
            .collect();
        let mut cases = vec![
            format!("{{\"auth\": \"{escaped}\"}}"),
            "x=crm-upstream-secret%2F7f3a%209c&y=1".to_string(),
            "x=crm-upstream-secret%2f7f3a+9c".to_string(),
        ];
        for prefix in ["", "a", "ab", "Authorization: Bearer "] {
            let mut whole = prefix.as_bytes().to_vec();
            whole.extend_from_slice(&secret);
            whole.extend_from_slice(b" tail");
            cases.push(base64::engine::general_purpose::STANDARD.encode(&whole));
            cases.push(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&whole));
        }
        for case in cases {
            let mut r = r.clone();
            let out = r.redact_all(case.as_bytes());
            assert!(r.redacted > 0, "not found in {case}");
            assert_ne!(out, case.as_bytes());
        }
        // Ordinary text is left alone.
        let mut r = r.clone();
        r.redact_all(b"nothing to see here, aGVsbG8gd29ybGQ=");
        assert_eq!(r.redacted, 0);
    }

    #[test]
    fn idle_flush_holds_only_a_possible_secret_prefix() {
        let mut r = Redactor::new(&[b"Bearer upstream-token".to_vec()]).unwrap();
        let mut out = r.push(b"{\"type\":\"ADDED\"}\n");
        out.extend(r.flush());
        assert_eq!(out, b"{\"type\":\"ADDED\"}\n");
        let mut out = r.push(b"line ends with Bearer up");
        out.extend(r.flush());
        assert_eq!(out, b"line ends with ");
        out.extend(r.push(b"stream-token!"));
        out.extend(r.finish());
        assert_eq!(out, b"line ends with [redacted-credential]!");
    }

    #[test]
    fn redacts_secrets_split_across_chunks() {
        let secret = b"s3cr3t-token/value".to_vec();
        let text = b"echo: s3cr3t-token/value and json \"s3cr3t-token\\/value\" end".to_vec();
        for split in 0..text.len() {
            let mut r = Redactor::new(std::slice::from_ref(&secret)).unwrap();
            let mut out = r.push(&text[..split]);
            out.extend(r.push(&text[split..]));
            out.extend(r.finish());
            let out = String::from_utf8(out).unwrap();
            assert_eq!(
                out, "echo: [redacted-credential] and json \"[redacted-credential]\" end",
                "split at {split}"
            );
            assert_eq!(r.redacted, 2);
        }
    }

    #[test]
    fn nothing_to_redact_is_untouched() {
        assert!(Redactor::new(&[]).is_none());
        let r = Redactor::new(&[b"abcdefgh".to_vec()]).unwrap();
        assert_eq!(redact_text(&r, b"nothing here"), None);
        assert_eq!(
            redact_text(&r, b"x abcdefgh").unwrap(),
            b"x [redacted-credential]"
        );
    }
}
