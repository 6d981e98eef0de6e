//! Masking byte streams (SSH output, HTTP bodies) chunk by chunk.
//!
//! **Hold-back bound.** After each [`StreamMasker::push`] at most
//! [`MaskingEngine::holdback`] bytes stay buffered: the longest match any
//! enabled detector can make (at least 128 bytes, the overlap look-ahead),
//! capped at [`crate::MAX_HOLDBACK`] = 4 KiB. With the default detectors it is
//! the cap, since emails, JWTs, PEM keys and passwords have no fixed upper
//! length; with, say, only `credit_card` and `us_ssn` it is 128. A candidate
//! that starts before the last `holdback` bytes has all the bytes it can span
//! and look at, so it is decided exactly as [`MaskingEngine::mask_text`] would
//! decide it on the whole stream: a secret split across chunks, at any offset,
//! is still masked. Each push rescans at most the held-back tail.
//!
//! Longer secrets: a JWT or PEM private key still running when the buffer
//! edge is reached is masked up to the edge, and the bytes of its alphabet
//! that follow in later chunks are swallowed (the placeholder already stands
//! for them). Other matches longer than the hold-back (a 5 KB email local part,
//! an unbounded custom regex) are only guaranteed when they arrive whole.
//!
//! Interactive streams: held-back bytes are released by the next push or by
//! [`StreamMasker::flush`], which the caller should invoke when the stream has
//! been idle briefly (e.g. 20-50 ms of SSH silence), so a prompt is not held.
//! A secret arriving across a flush is decided on what was there at the flush.
//!
//! Bytes outside matches are passed through byte for byte, including invalid
//! UTF-8 (the automaton runs on bytes; matches are valid UTF-8).

use crate::engine::{Kind, MaskCounts, MaskingEngine, Scratch};
use std::sync::Arc;

/// Bytes of already released input kept as look-behind context (`\b`, the
/// character before a JWT or an IP address).
const CONTEXT: usize = 8;

/// A masker's free-text masking of a complete piece of a stream (`None`:
/// unchanged), for maskers without an engine (see [`StreamMasker::lines`]).
pub type TextMask = Arc<dyn Fn(&[u8]) -> Option<(Vec<u8>, MaskCounts)> + Send + Sync>;

/// Masks one byte stream. Create with [`MaskingEngine::stream`], or
/// [`StreamMasker::lines`] for a masker of its own.
pub struct StreamMasker {
    engine: MaskingEngine,
    /// Set for a line-wise stream: `engine` is then unused.
    lines: Option<(TextMask, usize)>,
    /// `context | pending`: the last released input bytes, then the held-back ones.
    buf: Vec<u8>,
    /// Length of the context prefix of `buf`.
    ctx: usize,
    counts: MaskCounts,
    /// Set while a long JWT or PEM key cut at a buffer edge may continue.
    continuation: Option<fn(u8) -> bool>,
    scratch: Scratch,
}

impl MaskingEngine {
    /// A masker for one byte stream.
    pub fn stream(&self) -> StreamMasker {
        StreamMasker {
            engine: self.clone(),
            lines: None,
            buf: Vec::new(),
            ctx: 0,
            counts: MaskCounts::default(),
            continuation: None,
            scratch: Scratch::default(),
        }
    }
}

impl std::fmt::Debug for StreamMasker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamMasker")
            .field("pending", &self.pending())
            .field("lines", &self.lines.is_some())
            .finish_non_exhaustive()
    }
}

impl StreamMasker {
    /// A stream masked by `mask` one line at a time: bytes are held until a
    /// newline, or until `max_line` bytes are pending (then that much is
    /// masked as one piece), so a value split across chunks is masked whole
    /// when it lies within a line.
    pub fn lines(mask: TextMask, max_line: usize) -> Self {
        StreamMasker {
            engine: MaskingEngine::default(),
            lines: Some((mask, max_line.max(1))),
            buf: Vec::new(),
            ctx: 0,
            counts: MaskCounts::default(),
            continuation: None,
            scratch: Scratch::default(),
        }
    }

    /// Adds a chunk; returns what can be released now (possibly nothing).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if self.lines.is_some() {
            self.buf.extend_from_slice(chunk);
            self.release_lines(false, &mut out);
            return out;
        }
        if !self.engine.has_detectors() {
            out.extend_from_slice(chunk);
            return out;
        }
        let chunk = self.swallow_continuation(chunk);
        self.buf.extend_from_slice(chunk);
        self.process(false, &mut out);
        out
    }

    /// Releases everything held back, deciding pending candidates on what has
    /// arrived so far. The stream can continue afterwards.
    pub fn flush(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.lines.is_some() {
            self.release_lines(true, &mut out);
            return out;
        }
        self.process(true, &mut out);
        out
    }

    /// Releases what is held up to its last line end, deciding candidates
    /// there as at the end of the stream; an unfinished line stays held (up
    /// to the hold-back bound). For line-oriented streams (event streams,
    /// logs) paused by the upstream: a pause in the middle of a line cannot
    /// split a value into two unmasked halves.
    pub fn flush_lines(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.lines.is_some() {
            // Line mode already releases every complete line.
            return out;
        }
        let Some(nl) = self.buf[self.ctx..].iter().rposition(|&b| b == b'\n') else {
            return out;
        };
        let tail = self.buf.split_off(self.ctx + nl + 1);
        self.process(true, &mut out);
        self.buf.extend_from_slice(&tail);
        out
    }

    /// Line mode: masks and releases every complete line (all of the buffer
    /// at a flush, or `max_line` bytes when no newline came).
    fn release_lines(&mut self, all: bool, out: &mut Vec<u8>) {
        let Some((mask, max_line)) = self.lines.clone() else {
            return;
        };
        loop {
            let end = match self.buf.iter().position(|&b| b == b'\n') {
                Some(i) if i < max_line => i + 1,
                // No line end in reach: cut after the last blank in the
                // second half, so a value (an address, a token) is not split.
                _ if self.buf.len() >= max_line => self.buf[max_line / 2..max_line]
                    .iter()
                    .rposition(|b| b.is_ascii_whitespace())
                    .map_or(max_line, |i| max_line / 2 + i + 1),
                _ if all && !self.buf.is_empty() => self.buf.len(),
                _ => return,
            };
            let piece: Vec<u8> = self.buf.drain(..end).collect();
            match mask(&piece) {
                Some((masked, counts)) => {
                    out.extend_from_slice(&masked);
                    self.counts.merge(&counts);
                }
                None => out.extend_from_slice(&piece),
            }
        }
    }

    /// Ends the stream: everything still held back, masked.
    pub fn finish(mut self) -> Vec<u8> {
        self.flush()
    }

    /// Ends the stream, also returning the counts.
    pub fn finish_counted(mut self) -> (Vec<u8>, MaskCounts) {
        let out = self.flush();
        (out, self.counts)
    }

    /// How many values each detector masked so far.
    pub fn counts(&self) -> &MaskCounts {
        &self.counts
    }

    /// Takes the counts so far (e.g. to attribute them to one command).
    pub fn take_counts(&mut self) -> MaskCounts {
        std::mem::take(&mut self.counts)
    }

    /// Bytes currently held back.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.ctx
    }

    /// Drops the leading bytes of `chunk` that continue a secret cut earlier.
    fn swallow_continuation<'c>(&mut self, chunk: &'c [u8]) -> &'c [u8] {
        let Some(class) = self.continuation else {
            return chunk;
        };
        let n = chunk.iter().take_while(|&&b| class(b)).count();
        if n < chunk.len() {
            self.continuation = None;
        }
        // Nothing is pending while a continuation is open: keep the swallowed
        // bytes only as context.
        self.buf.extend_from_slice(&chunk[..n]);
        self.ctx = self.buf.len();
        self.trim_context();
        &chunk[n..]
    }

    fn trim_context(&mut self) {
        let drop = self.ctx.saturating_sub(CONTEXT);
        if drop > 0 {
            self.buf.drain(..drop);
            self.ctx -= drop;
        }
    }

    fn process(&mut self, finish: bool, out: &mut Vec<u8>) {
        let len = self.buf.len();
        let limit = if finish {
            len
        } else {
            len.saturating_sub(self.engine.holdback())
        };
        let mut pos = self.ctx;
        if limit <= pos {
            return;
        }
        while let Some((det, hit)) = self
            .engine
            .next_hit(&self.buf, pos, limit, &mut self.scratch)
        {
            out.extend_from_slice(&self.buf[pos..hit.start]);
            self.engine.write_hit(det, &self.buf, &hit, out);
            let d = self.engine.detector(det);
            self.counts.add(&d.name, 1);
            pos = hit.end;
            // A long secret running into the buffer edge may go on.
            if let Kind::Builtin(b) = d.kind {
                if let Some(class) = b.continuation(&self.buf[hit.start..hit.end]) {
                    if self.buf[pos..].iter().all(|&c| class(c)) {
                        pos = len;
                        self.continuation = Some(class);
                        break;
                    }
                }
            }
        }
        if pos < limit {
            out.extend_from_slice(&self.buf[pos..limit]);
            pos = limit;
        }
        self.ctx = pos;
        self.trim_context();
    }
}
