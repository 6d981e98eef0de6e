//! Relaying an upgraded (WebSocket) connection: bytes pass through as they
//! come while their frames are counted; with a flavor's [`FrameHook`], each
//! frame is assembled, unmasked, shown to the hook, and re-encoded.

use crate::flavor::{Direction, Frame, FrameHook};
use sluice_core::masking::MaskCounts;
use sluice_core::sync::MutexExt;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Frames larger than this are refused when a hook must see them whole.
pub const MAX_HOOKED_FRAME: u64 = 16 * 1024 * 1024;

/// What went over an upgraded connection, for the audit record.
#[derive(Debug, Default, Clone)]
pub struct RelayStats {
    pub client_bytes: u64,
    pub upstream_bytes: u64,
    pub client_frames: u64,
    pub upstream_frames: u64,
    pub masked: MaskCounts,
    pub error: Option<String>,
}

type SharedHook = Arc<Mutex<Box<dyn FrameHook>>>;

enum State {
    /// Collecting a frame header (up to 14 bytes).
    Header(Vec<u8>),
    /// Inside a payload: bytes left, and (when hooked) the frame so far.
    Payload {
        remaining: u64,
        hooked: Option<Hooked>,
    },
}

struct Hooked {
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    payload: Vec<u8>,
}

/// Follows one direction's frames.
struct Scanner {
    direction: Direction,
    hook: Option<SharedHook>,
    state: State,
    frames: u64,
    bytes: u64,
    /// A close frame went this way: the peer may now drop the connection abruptly.
    saw_close: bool,
}

/// The header's total length once enough bytes are there to know it.
fn header_len(h: &[u8]) -> Option<usize> {
    if h.len() < 2 {
        return None;
    }
    let masked = h[1] & 0x80 != 0;
    let ext = match h[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    Some(2 + ext + if masked { 4 } else { 0 })
}

impl Scanner {
    fn new(direction: Direction, hook: Option<SharedHook>) -> Self {
        Scanner {
            direction,
            hook,
            state: State::Header(Vec::with_capacity(14)),
            frames: 0,
            bytes: 0,
            saw_close: false,
        }
    }

    /// Consumes `input`, appending what to forward to `out`.
    fn process(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        self.bytes += input.len() as u64;
        while !input.is_empty() {
            match &mut self.state {
                State::Header(h) => {
                    let want = header_len(h).unwrap_or(2);
                    let take = (want - h.len()).min(input.len());
                    h.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    let Some(full) = header_len(h) else { continue };
                    if h.len() < full {
                        continue;
                    }
                    let header = std::mem::take(h);
                    if header[0] & 0x70 != 0 {
                        // No extension is negotiated (see `upstream_headers`):
                        // RSV bits mean data (e.g. compressed) the gateway cannot read.
                        return Err("a WebSocket frame with RSV bits set (an extension the gateway did not negotiate) was refused".into());
                    }
                    let fin = header[0] & 0x80 != 0;
                    let opcode = header[0] & 0x0f;
                    let mut len = u64::from(header[1] & 0x7f);
                    let mut at = 2;
                    if len == 126 {
                        len = u64::from(u16::from_be_bytes([header[2], header[3]]));
                        at = 4;
                    } else if len == 127 {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&header[2..10]);
                        len = u64::from_be_bytes(b);
                        at = 10;
                    }
                    let mask = (header[1] & 0x80 != 0)
                        .then(|| [header[at], header[at + 1], header[at + 2], header[at + 3]]);
                    self.frames += 1;
                    self.saw_close |= opcode == 8;
                    let hooked = match &self.hook {
                        Some(_) => {
                            if len > MAX_HOOKED_FRAME {
                                return Err(format!(
                                    "a WebSocket frame of {len} bytes exceeds the {MAX_HOOKED_FRAME}-byte limit for inspected frames"
                                ));
                            }
                            Some(Hooked {
                                fin,
                                opcode,
                                mask,
                                payload: Vec::with_capacity(len as usize),
                            })
                        }
                        None => {
                            out.extend_from_slice(&header);
                            None
                        }
                    };
                    self.state = State::Payload {
                        remaining: len,
                        hooked,
                    };
                    self.finish_frame_if_done(out)?;
                }
                State::Payload { remaining, hooked } => {
                    let take = (*remaining).min(input.len() as u64) as usize;
                    match hooked {
                        Some(f) => f.payload.extend_from_slice(&input[..take]),
                        None => out.extend_from_slice(&input[..take]),
                    }
                    *remaining -= take as u64;
                    input = &input[take..];
                    self.finish_frame_if_done(out)?;
                }
            }
        }
        Ok(())
    }

    fn finish_frame_if_done(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        let State::Payload { remaining: 0, .. } = &self.state else {
            return Ok(());
        };
        let State::Payload { hooked, .. } =
            std::mem::replace(&mut self.state, State::Header(Vec::with_capacity(14)))
        else {
            return Ok(());
        };
        let Some(mut f) = hooked else {
            return Ok(());
        };
        if let Some(key) = f.mask {
            apply_mask(&mut f.payload, key);
        }
        let mut frame = Frame {
            fin: f.fin,
            opcode: f.opcode,
            payload: f.payload,
        };
        if let Some(hook) = &self.hook {
            // Deliberately not recovered: a hook that panicked mid-frame may
            // hold a half-masked frame; the relay ends instead (fail closed).
            let mut hook = hook
                .lock()
                .map_err(|_| "the frame hook failed".to_string())?;
            // Already final (masked): sent as they are.
            for early in hook.before(self.direction, &frame) {
                encode(&early, f.mask, out);
            }
            hook.frame(self.direction, &mut frame)?;
        }
        encode(&frame, f.mask, out);
        Ok(())
    }
}

fn apply_mask(payload: &mut [u8], key: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// Writes a frame (masked with `mask` when given).
fn encode(frame: &Frame, mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    out.push(if frame.fin { 0x80 } else { 0 } | (frame.opcode & 0x0f));
    let m = if mask.is_some() { 0x80 } else { 0 };
    let len = frame.payload.len();
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let start = out.len();
    if let Some(key) = mask {
        out.extend_from_slice(&key);
        out.extend_from_slice(&frame.payload);
        apply_mask(&mut out[start + 4..], key);
    } else {
        out.extend_from_slice(&frame.payload);
    }
}

/// A close frame from the gateway to the client (1008 policy violation).
fn close_frame(reason: &str) -> Vec<u8> {
    let mut payload = 1008u16.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..reason.len().min(120)]);
    let mut out = Vec::new();
    encode(
        &Frame {
            fin: true,
            opcode: 8,
            payload,
        },
        None,
        &mut out,
    );
    out
}

async fn pump<R, W>(mut from: R, mut to: W, scanner: &mut Scanner) -> Result<(), String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::with_capacity(16 * 1024);
    // After a close frame, a peer that drops the connection (reset, no TLS
    // close_notify) has closed it; before one, that is an error to record.
    let io_end = |e: std::io::Error, scanner: &Scanner| -> Result<(), String> {
        let abrupt = matches!(
            e.kind(),
            std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
        );
        if abrupt && (scanner.saw_close || e.kind() == std::io::ErrorKind::UnexpectedEof) {
            Ok(())
        } else {
            Err(e.to_string())
        }
    };
    loop {
        let n = match from.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                io_end(e, scanner)?;
                0
            }
        };
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        out.clear();
        scanner.process(&buf[..n], &mut out)?;
        if !out.is_empty() {
            if let Err(e) = to.write_all(&out).await {
                return io_end(e, scanner);
            }
            if let Err(e) = to.flush().await {
                return io_end(e, scanner);
            }
        }
    }
}

/// Masks text frames from the upstream with the detectors (each frame on
/// its own: a value split across fragments is not seen whole).
pub struct TextFrameMasking {
    masker: sluice_core::masking::SessionMasker,
    counts: MaskCounts,
}

impl TextFrameMasking {
    pub fn new(masker: sluice_core::masking::SessionMasker) -> Self {
        TextFrameMasking {
            masker,
            counts: MaskCounts::default(),
        }
    }
}

impl FrameHook for TextFrameMasking {
    fn frame(&mut self, direction: Direction, frame: &mut Frame) -> Result<(), String> {
        if direction == Direction::UpstreamToClient && matches!(frame.opcode, 0 | 1) {
            if let Some((masked, counts)) = self.masker.mask_bytes(&frame.payload) {
                frame.payload = masked;
                self.counts.merge(&counts);
            }
        }
        Ok(())
    }

    fn counts(&self) -> MaskCounts {
        self.counts.clone()
    }
}

/// Relays until both sides close, a hook refuses a frame, or `ended`
/// resolves (the session must end; its reason closes the client's side).
/// Records the data frames of an upgraded connection into the session's
/// recording (after the flavor's hook, so masked as the client saw them),
/// on the recorder's timer like SSH output.
pub(crate) struct RecordingHook {
    pub inner: Option<Box<dyn FrameHook>>,
    pub recorder: sluice_core::audit::StreamRecorder,
    pub flavor: Arc<dyn crate::Flavor>,
}

impl RecordingHook {
    fn record(&mut self, direction: Direction, frame: &Frame) {
        if let Some((stream, range)) = self.flavor.recorded_stream(direction, frame) {
            if let Some(data) = frame.payload.get(range) {
                self.recorder.record(stream, data);
            }
        }
    }
}

impl FrameHook for RecordingHook {
    fn before(&mut self, direction: Direction, frame: &Frame) -> Vec<Frame> {
        let Some(inner) = &mut self.inner else {
            return Vec::new();
        };
        let early = inner.before(direction, frame);
        for f in &early {
            self.record(direction, f);
        }
        early
    }

    fn frame(&mut self, direction: Direction, frame: &mut Frame) -> Result<(), String> {
        if let Some(inner) = &mut self.inner {
            inner.frame(direction, frame)?;
        }
        self.record(direction, frame);
        Ok(())
    }

    fn counts(&self) -> MaskCounts {
        self.inner.as_ref().map(|h| h.counts()).unwrap_or_default()
    }
}

pub async fn relay<C, U>(
    client: C,
    upstream: U,
    hook: Option<Box<dyn FrameHook>>,
    ended: impl std::future::Future<Output = String>,
) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Send + Unpin,
    U: AsyncRead + AsyncWrite + Send + Unpin,
{
    let hook: Option<SharedHook> = hook.map(|h| Arc::new(Mutex::new(h)));
    let (client_r, mut client_w) = tokio::io::split(client);
    let (upstream_r, upstream_w) = tokio::io::split(upstream);
    let mut up = Scanner::new(Direction::ClientToUpstream, hook.clone());
    let mut down = Scanner::new(Direction::UpstreamToClient, hook.clone());
    let mut stats = RelayStats::default();
    {
        let both = async {
            let (a, b) = tokio::join!(
                pump(client_r, upstream_w, &mut up),
                pump(upstream_r, &mut client_w, &mut down)
            );
            a.and(b)
        };
        tokio::select! {
            r = both => {
                if let Err(e) = r {
                    stats.error = Some(e);
                }
            }
            reason = ended => {
                stats.error = Some(format!("session ended: {reason}"));
            }
        }
    }
    if let Some(e) = &stats.error {
        let _ = client_w.write_all(&close_frame(e)).await;
        let _ = client_w.shutdown().await;
    }
    stats.client_bytes = up.bytes;
    stats.client_frames = up.frames;
    stats.upstream_bytes = down.bytes;
    stats.upstream_frames = down.frames;
    if let Some(hook) = &hook {
        {
            let h = hook.locked();
            stats.masked = h.counts();
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = Vec::new();
        encode(
            &Frame {
                fin: true,
                opcode,
                payload: payload.to_vec(),
            },
            mask,
            &mut out,
        );
        out
    }

    struct Upper;
    impl FrameHook for Upper {
        fn frame(&mut self, _: Direction, frame: &mut Frame) -> Result<(), String> {
            if frame.payload == b"forbidden" {
                return Err("refused".into());
            }
            frame.payload.make_ascii_uppercase();
            Ok(())
        }
    }

    #[test]
    fn counts_frames_split_anywhere_and_passes_bytes_through() {
        let mut stream = frame(1, b"hello", Some([1, 2, 3, 4]));
        stream.extend(frame(2, &vec![7u8; 300], Some([9, 9, 9, 9])));
        stream.extend(frame(1, &vec![b'x'; 70_000], None));
        for split in [0, 1, 3, 7, 8, 100, 320, stream.len()] {
            let mut s = Scanner::new(Direction::ClientToUpstream, None);
            let mut out = Vec::new();
            s.process(&stream[..split], &mut out).unwrap();
            s.process(&stream[split..], &mut out).unwrap();
            assert_eq!(out, stream);
            assert_eq!(s.frames, 3);
        }
    }

    #[test]
    fn frames_with_rsv_bits_are_refused_hooked_or_not() {
        let mut compressed = frame(1, b"\xf2\x48\xcd\xc9\xc9\x07\x00", None);
        compressed[0] |= 0x40; // RSV1: permessage-deflate
        for hook in [
            None,
            Some(Arc::new(Mutex::new(Box::new(Upper) as Box<dyn FrameHook>))),
        ] {
            let mut s = Scanner::new(Direction::UpstreamToClient, hook);
            let mut out = Vec::new();
            let err = s.process(&compressed, &mut out).unwrap_err();
            assert!(err.contains("RSV"), "{err}");
            assert!(out.is_empty(), "nothing of the frame was forwarded");
        }
    }

    #[test]
    fn hooks_see_unmasked_payloads_and_may_rewrite_or_refuse() {
        let hook: SharedHook = Arc::new(Mutex::new(Box::new(Upper)));
        let mut s = Scanner::new(Direction::ClientToUpstream, Some(hook.clone()));
        let input = frame(1, b"hello", Some([1, 2, 3, 4]));
        let mut out = Vec::new();
        for b in &input {
            s.process(std::slice::from_ref(b), &mut out).unwrap();
        }
        assert_eq!(out, frame(1, b"HELLO", Some([1, 2, 3, 4])));
        let mut s = Scanner::new(Direction::UpstreamToClient, Some(hook));
        assert!(s
            .process(&frame(1, b"forbidden", None), &mut Vec::new())
            .is_err());
    }
}
