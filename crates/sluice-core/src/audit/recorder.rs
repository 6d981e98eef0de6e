//! `StreamRecorder`: what a command's streams carried, in batches written
//! off the data path, and on a timer so that what the client has seen is in
//! the journal within [`StreamRecorder::BATCH_AGE`] even when the stream
//! goes quiet.

use super::{AuditEvent, Store, StreamChunk};
use crate::sync::MutexExt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// The stream name of typed input the terminal echoed (recorded as text).
pub const STDIN: &str = "stdin";
/// The stream name of typed input the terminal did not echo (a password at
/// a prompt): recorded as one `•` per character, never as text.
pub const STDIN_HIDDEN: &str = "stdin_hidden";

/// Records one command's streams through `Store::append_background`,
/// batched: a chunk costs a copy into a buffer; a batch is written when it
/// reaches [`StreamRecorder::BATCH_BYTES`], [`StreamRecorder::BATCH_AGE`]
/// after its first chunk (a timer on the tokio runtime, so an idle stream is
/// still written), or on [`flush`](Self::flush)/drop.
///
/// Terminal input ([`record_input`](Self::record_input)) is held until the
/// terminal answers: the part it echoed is recorded as typed text
/// ([`STDIN`]), the part it did not echo (echo off: a password prompt) as
/// hidden keystrokes ([`STDIN_HIDDEN`]).
pub struct StreamRecorder {
    state: Arc<Mutex<State>>,
}

struct State {
    store: Arc<dyn Store>,
    session_id: String,
    command_id: u64,
    started: Instant,
    chunks: Vec<StreamChunk>,
    buffered: usize,
    /// When the batch's first chunk was added (no runtime: checked at the next event).
    oldest: Option<Instant>,
    /// Counts batches; a timer writes only the batch it was armed for.
    generation: u64,
    /// Incomplete UTF-8 sequences at the end of the last chunk, per stream.
    carry: Vec<(String, Vec<u8>)>,
    limit: Option<u64>,
    recorded: u64,
    skipped: u64,
    /// Typed bytes not yet classified as echoed or hidden, and when the first was typed.
    typed: Vec<u8>,
    typed_at: Option<(u64, Instant)>,
}

impl std::fmt::Debug for StreamRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = lock(&self.state);
        f.debug_struct("StreamRecorder")
            .field("session", &s.session_id)
            .field("command_id", &s.command_id)
            .finish()
    }
}

/// The recorder's bookkeeping is never skipped: a poisoned lock (a panic
/// elsewhere while holding it) still records.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.locked()
}

impl StreamRecorder {
    pub const BATCH_BYTES: usize = 64 * 1024;
    /// A batch's age at most before it goes to the store. The store writes
    /// background records within its own tick (200 ms for the embedded
    /// store), so output reaches the journal file within 500 ms.
    pub const BATCH_AGE: Duration = Duration::from_millis(300);
    /// Typed input with no answer from the terminal for this long is
    /// recorded as hidden (echo is off, or the terminal is not answering).
    pub const ECHO_WAIT: Duration = Duration::from_secs(1);

    pub fn new(store: Arc<dyn Store>, session_id: &str, command_id: u64) -> Self {
        StreamRecorder {
            state: Arc::new(Mutex::new(State {
                store,
                session_id: session_id.to_string(),
                command_id,
                started: Instant::now(),
                chunks: Vec::new(),
                buffered: 0,
                oldest: None,
                generation: 0,
                carry: Vec::new(),
                limit: None,
                recorded: 0,
                skipped: 0,
                typed: Vec::new(),
                typed_at: None,
            })),
        }
    }

    /// Records at most `bytes` of stream data (then only counts it).
    pub fn with_limit(self, bytes: u64) -> Self {
        lock(&self.state).limit = Some(bytes);
        self
    }

    /// Bytes left unrecorded because of the limit.
    pub fn skipped(&self) -> u64 {
        lock(&self.state).skipped
    }

    /// Adds bytes of one output stream (`stdout`, `stderr`). Typed input
    /// waiting for its echo is classified against them first.
    pub fn record(&mut self, stream: &str, data: &[u8]) {
        let due = {
            let mut s = lock(&self.state);
            let was_empty = s.chunks.is_empty();
            if !s.typed.is_empty() {
                s.classify_typed(Some(data));
            }
            s.add(stream, data);
            s.due(was_empty)
        };
        self.after_add(due);
    }

    /// Adds bytes typed at a terminal (client → target). They are recorded
    /// when the terminal answers: as [`STDIN`] text where it echoed them,
    /// as [`STDIN_HIDDEN`] where it did not.
    pub fn record_input(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let first = {
            let mut s = lock(&self.state);
            if s.typed_at.is_none() {
                let offset = s.offset_ms();
                s.typed_at = Some((offset, Instant::now()));
            }
            // Bounded like output: input beyond the limit is counted only.
            let room = s
                .limit
                .map_or(data.len(), |l| l.saturating_sub(s.recorded) as usize);
            let take = room.min(data.len());
            s.skipped += (data.len() - take) as u64;
            s.recorded += take as u64;
            s.typed.extend_from_slice(&data[..take]);
            // The first input waiting for an answer: a terminal that never
            // answers still gets it recorded (as hidden).
            let first = take > 0 && s.typed.len() == take;
            if s.typed.len() >= MAX_UNANSWERED {
                // A flood the terminal does not answer: recorded as hidden
                // now, not held for the echo wait, so what waits stays
                // bounded (a paste well under it still meets its echo).
                let was_empty = s.chunks.is_empty();
                s.classify_typed(None);
                (first, s.due(was_empty))
            } else {
                (first, Add::Nothing)
            }
        };
        let (first, due) = first;
        self.after_add(due);
        if first {
            self.arm_echo_timer();
        }
    }

    fn after_add(&self, arm: Add) {
        match arm {
            Add::Nothing => {}
            Add::Full => lock(&self.state).flush(),
            Add::First(generation) => self.arm_batch_timer(generation),
        }
    }

    /// Writes the batch `BATCH_AGE` after its first chunk, if it is still
    /// unwritten then. Without a tokio runtime the batch is written at the
    /// next event past its age, or on flush/drop.
    fn arm_batch_timer(&self, generation: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let state: Weak<Mutex<State>> = Arc::downgrade(&self.state);
        runtime.spawn(async move {
            tokio::time::sleep(StreamRecorder::BATCH_AGE).await;
            if let Some(state) = state.upgrade() {
                let mut s = lock(&state);
                if s.generation == generation {
                    s.flush();
                }
            }
        });
    }

    fn arm_echo_timer(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let state: Weak<Mutex<State>> = Arc::downgrade(&self.state);
        runtime.spawn(async move {
            let mut wait = StreamRecorder::ECHO_WAIT;
            loop {
                tokio::time::sleep(wait).await;
                let Some(state) = state.upgrade() else { return };
                let mut s = lock(&state);
                let Some((_, since)) = s.typed_at else { return };
                let age = since.elapsed();
                if age < StreamRecorder::ECHO_WAIT {
                    // Classified meanwhile and typed again: wait for that input.
                    wait = StreamRecorder::ECHO_WAIT - age;
                    continue;
                }
                s.classify_typed(None);
                s.flush();
                return;
            }
        });
    }

    /// Records a terminal size (call once when the terminal opens).
    pub fn resize(&mut self, cols: u32, rows: u32) {
        let mut s = lock(&self.state);
        s.flush();
        let event = AuditEvent::WindowResized {
            command_id: s.command_id,
            offset_ms: s.offset_ms(),
            cols,
            rows,
        };
        s.store.append_background(&s.session_id, event);
    }

    /// Writes what is buffered.
    pub fn flush(&mut self) {
        lock(&self.state).flush();
    }
}

enum Add {
    Nothing,
    /// The batch is full: write it now.
    Full,
    /// The first chunk of batch `generation`: arm its timer.
    First(u64),
}

impl State {
    fn offset_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn add(&mut self, stream: &str, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut data = data;
        if let Some(limit) = self.limit {
            let room = limit.saturating_sub(self.recorded) as usize;
            if room < data.len() {
                self.skipped += (data.len() - room) as u64;
                data = &data[..room];
            }
            if data.is_empty() {
                return;
            }
        }
        self.recorded += data.len() as u64;
        let mut bytes = match self.carry.iter().position(|(s, _)| s == stream) {
            Some(i) => self.carry.swap_remove(i).1,
            None => Vec::new(),
        };
        bytes.extend_from_slice(data);
        // Keep an incomplete trailing character for the next chunk.
        let cut = utf8_complete_prefix(&bytes);
        if cut < bytes.len() {
            self.carry.push((stream.to_string(), bytes[cut..].to_vec()));
            bytes.truncate(cut);
        }
        if bytes.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let offset_ms = self.offset_ms();
        self.push(stream, offset_ms, text);
    }

    fn push(&mut self, stream: &str, offset_ms: u64, text: String) {
        if self.chunks.is_empty() {
            self.oldest = Some(Instant::now());
        }
        self.buffered += text.len();
        match self.chunks.last_mut() {
            // Consecutive output of one stream in the same millisecond is one chunk.
            Some(last) if last.stream == stream && last.offset_ms == offset_ms => {
                last.data.push_str(&text)
            }
            _ => self.chunks.push(StreamChunk {
                offset_ms,
                stream: stream.to_string(),
                data: text,
            }),
        }
    }

    /// What to do after adding to a batch that was empty or not before.
    fn due(&self, was_empty: bool) -> Add {
        if self.chunks.is_empty() {
            Add::Nothing
        } else if self.buffered >= StreamRecorder::BATCH_BYTES
            || self
                .oldest
                .is_some_and(|t| t.elapsed() >= StreamRecorder::BATCH_AGE)
        {
            Add::Full
        } else if was_empty {
            Add::First(self.generation)
        } else {
            Add::Nothing
        }
    }

    /// Records typed input against the terminal's answer `output` (`None`:
    /// no answer came; all of it is hidden).
    fn classify_typed(&mut self, output: Option<&[u8]>) {
        let Some((offset_ms, _)) = self.typed_at else {
            return;
        };
        let segments = match output {
            Some(out) => classify(&self.typed, out),
            None => vec![(self.typed.len(), false)],
        };
        let typed = std::mem::take(&mut self.typed);
        let mut from = 0;
        for (end, echoed) in segments {
            if end <= from {
                continue;
            }
            let part = &typed[from..end];
            if echoed {
                self.push(STDIN, offset_ms, String::from_utf8_lossy(part).into_owned());
            } else {
                self.push(STDIN_HIDDEN, offset_ms, hidden(part));
            }
            from = end;
        }
        self.typed = typed[from..].to_vec();
        self.typed_at = if self.typed.is_empty() {
            None
        } else if from > 0 {
            Some((offset_ms, Instant::now()))
        } else {
            self.typed_at
        };
    }

    fn flush(&mut self) {
        if self.chunks.is_empty() {
            return;
        }
        let chunks = std::mem::take(&mut self.chunks);
        self.buffered = 0;
        self.oldest = None;
        self.generation += 1;
        self.store.append_background(
            &self.session_id,
            AuditEvent::StreamOutput {
                command_id: self.command_id,
                chunks,
            },
        );
    }
}

impl Drop for StreamRecorder {
    fn drop(&mut self) {
        let mut s = lock(&self.state);
        // Input the terminal never answered is recorded as hidden.
        s.classify_typed(None);
        for (stream, bytes) in std::mem::take(&mut s.carry) {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let offset_ms = s.offset_ms();
            s.push(&stream, offset_ms, text);
        }
        s.flush();
    }
}

/// Hidden keystrokes: a `•` per character typed, line ends kept.
fn hidden(typed: &[u8]) -> String {
    tokens(typed, false)
        .into_iter()
        .filter_map(|(t, _)| match t {
            Token::Enter => Some('\r'),
            Token::Char(_) => Some('•'),
            Token::Neutral | Token::Redraw => None,
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// A character that the terminal echoes as itself (its bytes' first byte
    /// for multi-byte characters, compared with the echo's).
    Char(u8),
    /// CR or LF (a terminal echoes Enter as CR LF).
    Enter,
    /// Control keys and escape sequences: not compared (the echo of a
    /// backspace or an arrow key is a cursor movement).
    Neutral,
    /// A lone CR in the terminal's output.
    Redraw,
}

/// Splits a byte stream into tokens with the byte index just past each.
/// CR LF is one Enter; escape sequences are neutral; `output`: the
/// terminal's side.
fn tokens(b: &[u8], output: bool) -> Vec<(Token, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let (token, next) = match c {
            b'\r' if b.get(i + 1) == Some(&b'\n') => (Token::Enter, i + 2),
            // Typed, CR is Enter. Echoed, a lone CR returns the cursor: a
            // line editor redrawing (wrapping a long line) writes some of
            // what it echoed again after it.
            b'\r' if output => (Token::Redraw, i + 1),
            b'\r' | b'\n' => (Token::Enter, i + 1),
            0x1b => (Token::Neutral, escape_end(b, i)),
            0x00..=0x1f | 0x7f => (Token::Neutral, i + 1),
            // A UTF-8 continuation byte belongs to the character before it.
            0x80..=0xbf => (Token::Neutral, i + 1),
            c => (Token::Char(c), i + 1),
        };
        out.push((token, next));
        i = next;
    }
    out
}

/// The index just past an escape sequence starting at `i` (CSI, OSC/DCS,
/// SS3, or ESC and one character).
fn escape_end(b: &[u8], i: usize) -> usize {
    match b.get(i + 1) {
        Some(b'[') => {
            let mut j = i + 2;
            while j < b.len() && !(0x40..=0x7e).contains(&b[j]) {
                j += 1;
            }
            (j + 1).min(b.len())
        }
        Some(b']') | Some(b'P') => {
            let mut j = i + 2;
            while j < b.len() {
                if b[j] == 0x07 {
                    return j + 1;
                }
                if b[j] == 0x1b && b.get(j + 1) == Some(&b'\\') {
                    return j + 2;
                }
                j += 1;
            }
            b.len()
        }
        Some(b'O') => (i + 3).min(b.len()),
        Some(_) => i + 2,
        None => i + 1,
    }
}

/// Typed runs compared with the terminal's answer, at most this many keys
/// each (a longer paste is judged by its start).
const MAX_COMPARED: usize = 512;
/// Typed input held for its echo, at most.
const MAX_UNANSWERED: usize = 1 << 20;

/// How the terminal answered typed input: consecutive segments of `typed`
/// (end byte, echoed) that are decided; the rest waits for more output.
///
/// Typed input is split into runs at Enter. A run is echoed when the
/// terminal's answer contains it whole (its characters in order, escape
/// sequences and control bytes aside; Enter as a line end), so a run
/// recorded as text is one the output shows anyway; or, for keys echoed one
/// at a time, when the answer is exactly the run's next keys. A run older
/// than one the terminal echoed, which the terminal did not echo, was typed
/// with echo off: hidden. A run not answered yet waits (see `ECHO_WAIT`).
fn classify(typed: &[u8], output: &[u8]) -> Vec<(usize, bool)> {
    let typed_tokens = tokens(typed, false);
    if typed_tokens.iter().all(|(t, _)| *t == Token::Neutral) {
        // Control keys only (arrows, Ctrl-C): nothing secret, recorded as typed.
        return vec![(typed.len(), true)];
    }
    let out: Vec<u8> = tokens(output, true)
        .into_iter()
        .filter_map(|(t, _)| key(t))
        .collect();
    // Runs: (keys, end byte), each ending at an Enter (the last maybe not).
    let mut runs: Vec<(Vec<u8>, usize)> = Vec::new();
    let mut keys = Vec::new();
    for (t, end) in &typed_tokens {
        if let Some(k) = key(*t) {
            keys.push(k);
        }
        if *t == Token::Enter {
            runs.push((std::mem::take(&mut keys), *end));
        }
    }
    if !keys.is_empty() {
        runs.push((keys, typed.len()));
    } else if let Some(last) = runs.last_mut() {
        // Trailing control keys ride with the last run.
        last.1 = typed.len();
    }
    let found: Vec<bool> = runs
        .iter()
        .map(|(keys, _)| {
            let want = &keys[..keys.len().min(MAX_COMPARED)];
            matches!(echo_match(&out, want), Echo::Whole)
        })
        .collect();
    let mut segments = Vec::new();
    let decided = found.iter().rposition(|f| *f).map_or(0, |i| i + 1);
    for i in 0..decided {
        segments.push((runs[i].1, found[i]));
    }
    // Keys echoed one at a time: the answer is exactly the next run's start.
    if let Some((keys, _)) = runs.get(decided) {
        if let Echo::Prefix(n) = echo_match(&out, &keys[..keys.len().min(MAX_COMPARED)]) {
            let from = if decided == 0 { 0 } else { runs[decided - 1].1 };
            let mut seen = 0;
            for (t, end) in &typed_tokens {
                if *end <= from {
                    continue;
                }
                if key(*t).is_some() {
                    seen += 1;
                    if seen == n {
                        segments.push((*end, true));
                        break;
                    }
                }
            }
        }
    }
    segments
}

/// The key a token is compared by (`None`: not compared).
fn key(t: Token) -> Option<u8> {
    match t {
        Token::Char(c) => Some(c),
        Token::Enter => Some(b'\n'),
        // Never a typed key's value (typed control bytes are not compared).
        Token::Redraw => Some(REDRAW),
        Token::Neutral => None,
    }
}

const REDRAW: u8 = b'\r';
/// Keys a redraw may repeat at most.
const MAX_REDRAWN: usize = 256;

enum Echo {
    /// `want` is echoed whole in `out`.
    Whole,
    /// `out`, from its start, echoes the first `n` keys of `want` and ends there.
    Prefix(usize),
    No,
}

/// Whether the terminal's output keys `out` echo the typed keys `want`: in
/// order, adjacent, except that after a lone CR (a redraw) the output may
/// repeat keys it already echoed. It never lets an unechoed typed key match.
fn echo_match(out: &[u8], want: &[u8]) -> Echo {
    let Some(&first) = want.first() else {
        return Echo::No;
    };
    let mut prefix = None;
    for start in 0..out.len() {
        if out[start] != first {
            continue;
        }
        let (mut j, mut k) = (0, start);
        while j < want.len() && k < out.len() {
            if out[k] == REDRAW {
                k += 1;
                // The longest run of keys already echoed that the redraw repeats.
                let most = j.min(MAX_REDRAWN).min(out.len() - k);
                let repeated = (1..=most)
                    .rev()
                    .find(|&l| want[j - l..j] == out[k..k + l])
                    .unwrap_or(0);
                k += repeated;
            } else if out[k] == want[j] {
                j += 1;
                k += 1;
            } else {
                break;
            }
        }
        if j == want.len() {
            return Echo::Whole;
        }
        let from_start = out[..start].iter().all(|&c| c == REDRAW);
        if k == out.len() && from_start && prefix.is_none() {
            prefix = Some(j);
        }
    }
    prefix.map_or(Echo::No, Echo::Prefix)
}

/// Length of the longest prefix that does not end inside a UTF-8 character.
pub(super) fn utf8_complete_prefix(b: &[u8]) -> usize {
    let n = b.len();
    // Look back at most 3 bytes for the start of an unfinished character.
    for back in 1..=3.min(n) {
        let c = b[n - back];
        if c & 0b1100_0000 == 0b1000_0000 {
            continue;
        }
        let want = match c {
            c if c & 0b1110_0000 == 0b1100_0000 => 2,
            c if c & 0b1111_0000 == 0b1110_0000 => 3,
            c if c & 0b1111_1000 == 0b1111_0000 => 4,
            _ => return n,
        };
        return if back < want { n - back } else { n };
    }
    n
}

#[cfg(test)]
mod tests;
