//! Message framing: split raw PostgreSQL messages off a read buffer without
//! decoding them, so that messages the gateway does not inspect pass through
//! untouched. Every length prefix is checked before anything is allocated.
//!
//! Memory follows the bytes that arrived, not the length a peer declared: a
//! partial message's buffer grows geometrically as its bytes come in (a
//! client declaring 60 MiB and sending nothing more costs kilobytes), and
//! with [`split_message_charged`] what a buffer holds for a large partial
//! message counts against one gateway-wide budget
//! ([`PartialBudget::gateway`]); a peer over it gets
//! [`FrameError::Budget`] and the session ends.

use bytes::BytesMut;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The largest message accepted from a client (COPY chunks and big binds fit).
pub const MAX_FRONTEND_MESSAGE: usize = 64 << 20;
/// The largest message accepted from an upstream (large rows fit).
pub const MAX_BACKEND_MESSAGE: usize = 512 << 20;
/// Startup-phase packets are small; PostgreSQL itself caps them at 10000 bytes.
pub const MAX_STARTUP_PACKET: usize = 10_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("message {tag:?} declares length {len}, outside 4..={max}")]
    Length { tag: char, len: i64, max: usize },
    #[error("message {tag:?} of {len} bytes does not fit the gateway's memory for partially received messages now ({limit} bytes for all sessions); retry later, or send it in smaller messages")]
    Budget { tag: char, len: usize, limit: usize },
}

/// Bytes a buffer grows by at most per step beyond doubling what it holds,
/// and what a partial message may hold without being charged.
const GROW_STEP: usize = 64 << 10;
/// The default gateway-wide budget for partial messages.
pub const DEFAULT_PARTIAL_BUDGET: usize = 512 << 20;

/// The memory every session together may hold for partially received large
/// messages.
#[derive(Debug)]
pub struct PartialBudget {
    limit: AtomicUsize,
    held: AtomicUsize,
}

static GATEWAY_BUDGET: PartialBudget = PartialBudget::new(DEFAULT_PARTIAL_BUDGET);

impl PartialBudget {
    pub const fn new(limit: usize) -> Self {
        PartialBudget {
            limit: AtomicUsize::new(limit),
            held: AtomicUsize::new(0),
        }
    }

    /// The process-wide budget every [`Charge::gateway`] draws from.
    pub fn gateway() -> &'static PartialBudget {
        &GATEWAY_BUDGET
    }

    pub fn set_limit(&self, bytes: usize) {
        self.limit.store(bytes, Ordering::Relaxed);
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Bytes held now for partial messages.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Takes `bytes` more if they fit.
    fn take(&self, bytes: usize) -> bool {
        let limit = self.limit();
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|n| *n <= limit)
            })
            .is_ok()
    }

    fn give(&self, bytes: usize) {
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                Some(held.saturating_sub(bytes))
            });
    }
}

/// One read buffer's share of a [`PartialBudget`]: what it holds for a
/// large partial message; given back when the message is complete or the
/// charge is dropped (the session ended).
#[derive(Debug)]
pub struct Charge {
    budget: &'static PartialBudget,
    held: usize,
}

impl Charge {
    /// A charge against the gateway-wide budget.
    pub fn gateway() -> Self {
        Charge::against(PartialBudget::gateway())
    }

    pub fn against(budget: &'static PartialBudget) -> Self {
        Charge { budget, held: 0 }
    }

    /// Holds `bytes` in all (more or fewer than now); false if more do not fit.
    fn hold(&mut self, bytes: usize) -> bool {
        if bytes > self.held {
            if !self.budget.take(bytes - self.held) {
                return false;
            }
        } else {
            self.budget.give(self.held - bytes);
        }
        self.held = bytes;
        true
    }
}

impl Default for Charge {
    fn default() -> Self {
        Charge::gateway()
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give(self.held);
    }
}

/// One whole message: type byte, length and body.
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub tag: u8,
    /// The complete message as sent, header included.
    pub bytes: BytesMut,
}

impl RawMessage {
    /// The body after the 5-byte header.
    pub fn body(&self) -> &[u8] {
        &self.bytes[5..]
    }
}

/// Splits the next complete typed message off `buf`, or `None` if more bytes are needed.
/// The buffer grows with the bytes that arrive, never by the declared length at once.
pub fn split_message(buf: &mut BytesMut, max: usize) -> Result<Option<RawMessage>, FrameError> {
    split(buf, max, None)
}

/// [`split_message`], with what `buf` holds for a large partial message
/// counted in `charge` (and its budget): a message whose next growth step
/// does not fit is refused with [`FrameError::Budget`].
pub fn split_message_charged(
    buf: &mut BytesMut,
    max: usize,
    charge: &mut Charge,
) -> Result<Option<RawMessage>, FrameError> {
    split(buf, max, Some(charge))
}

fn split(
    buf: &mut BytesMut,
    max: usize,
    charge: Option<&mut Charge>,
) -> Result<Option<RawMessage>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 || len as usize > max {
        return Err(FrameError::Length {
            tag: tag as char,
            len: len.into(),
            max,
        });
    }
    let total = 1 + len as usize;
    if buf.len() < total {
        // Room for the next bytes only: double what arrived (at least a
        // step), never beyond the message. A peer must send bytes to make
        // the gateway hold them.
        let want = (total - buf.len()).min(buf.len().max(GROW_STEP));
        let capacity = buf.len() + want;
        if let Some(charge) = charge {
            let charged = if total > GROW_STEP { capacity } else { 0 };
            if !charge.hold(charged) {
                return Err(FrameError::Budget {
                    tag: tag as char,
                    len: total,
                    limit: charge.budget.limit(),
                });
            }
        }
        if buf.capacity() < capacity {
            buf.reserve(want);
        }
        return Ok(None);
    }
    if let Some(charge) = charge {
        // Complete: what it held goes with the message to its consumer.
        charge.hold(0);
    }
    Ok(Some(RawMessage {
        tag,
        bytes: buf.split_to(total),
    }))
}

/// Splits an untyped startup-phase packet (length-prefixed, no type byte).
pub fn split_startup_packet(buf: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if !(8..=MAX_STARTUP_PACKET as i32).contains(&len) {
        return Err(FrameError::Length {
            tag: '-',
            len: len.into(),
            max: MAX_STARTUP_PACKET,
        });
    }
    if buf.len() < len as usize {
        return Ok(None);
    }
    Ok(Some(buf.split_to(len as usize)))
}

/// A bounds-checked reader over a message body.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    /// Whether everything has been read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn i16(&mut self) -> Option<i16> {
        let (head, rest) = self.data.split_first_chunk::<2>()?;
        self.data = rest;
        Some(i16::from_be_bytes(*head))
    }

    pub fn i32(&mut self) -> Option<i32> {
        let (head, rest) = self.data.split_first_chunk::<4>()?;
        self.data = rest;
        Some(i32::from_be_bytes(*head))
    }

    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.data.len() < n {
            return None;
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Some(head)
    }

    /// A NUL-terminated string (lossy UTF-8).
    pub fn cstr(&mut self) -> Option<String> {
        let end = self.data.iter().position(|&b| b == 0)?;
        let s = String::from_utf8_lossy(&self.data[..end]).into_owned();
        self.data = &self.data[end + 1..];
        Some(s)
    }
}

/// Splits a DataRow body into its values (`None` for SQL NULL). `None` for a
/// malformed row: a length below -1, or bytes left over after the values
/// (re-encoding such a row would not reproduce what the upstream sent).
pub fn data_row_values(body: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    let mut r = Reader::new(body);
    let n = r.i16()?;
    if n < 0 {
        return None;
    }
    let mut values = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len = r.i32()?;
        values.push(match len {
            -1 => None,
            len if len < 0 => return None,
            len => Some(r.bytes(len as usize)?),
        });
    }
    r.is_empty().then_some(values)
}

/// Encodes a DataRow from borrowed values.
pub fn encode_data_row_refs(values: &[Option<&[u8]>], out: &mut BytesMut) {
    let body_len: usize = 2 + values
        .iter()
        .map(|v| 4 + v.map_or(0, <[u8]>::len))
        .sum::<usize>();
    out.reserve(1 + 4 + body_len);
    out.extend_from_slice(b"D");
    out.extend_from_slice(&((body_len + 4) as i32).to_be_bytes());
    out.extend_from_slice(&(values.len() as i16).to_be_bytes());
    for v in values {
        match v {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(b) => {
                out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                out.extend_from_slice(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `pg_backend` fuzz target: rows with trailing bytes or a
    /// length below -1 were accepted, and re-encoding them changed the row.
    #[test]
    fn malformed_data_rows_are_refused() {
        let trailing = [0, 1, 0, 0, 0, 1, b'x', 0xff];
        assert!(data_row_values(&trailing).is_none());
        let minus_two = [0, 1, 0xff, 0xff, 0xff, 0xfe];
        assert!(data_row_values(&minus_two).is_none());
        let fine = [0, 2, 0, 0, 0, 1, b'x', 0xff, 0xff, 0xff, 0xff];
        let values = data_row_values(&fine).unwrap();
        assert_eq!(values, [Some(&b"x"[..]), None]);
        let mut out = BytesMut::new();
        encode_data_row_refs(&values, &mut out);
        assert_eq!(&out[5..], &fine[..]);
    }

    #[test]
    fn huge_and_negative_lengths_are_refused_before_allocation() {
        for len in [i32::MAX, -1, 0, 3, (MAX_FRONTEND_MESSAGE + 1) as i32] {
            let mut buf = BytesMut::from(&b"Q"[..]);
            buf.extend_from_slice(&len.to_be_bytes());
            assert!(
                split_message(&mut buf, MAX_FRONTEND_MESSAGE).is_err(),
                "{len}"
            );
            assert!(buf.capacity() < 1024);
        }
    }

    /// The regression: a declared 60 MiB message made the gateway reserve
    /// 60 MiB before a byte of it arrived.
    #[test]
    fn a_declared_length_is_not_reserved_up_front() {
        let mut buf = BytesMut::from(&b"Q"[..]);
        buf.extend_from_slice(&(60i32 << 20).to_be_bytes());
        assert!(split_message(&mut buf, MAX_FRONTEND_MESSAGE)
            .unwrap()
            .is_none());
        assert!(buf.capacity() <= 2 * GROW_STEP, "{}", buf.capacity());
        // It grows as bytes arrive, geometrically, and completes.
        let total = 1 + (60 << 20);
        while buf.len() < total {
            let n = (buf.capacity() - buf.len()).min(total - buf.len());
            assert!(n > 0);
            buf.extend_from_slice(&vec![b'x'; n][..]);
            if buf.len() < total {
                assert!(split_message(&mut buf, MAX_FRONTEND_MESSAGE)
                    .unwrap()
                    .is_none());
                assert!(buf.capacity() <= 2 * buf.len().max(GROW_STEP) + 5);
            }
        }
        let m = split_message(&mut buf, MAX_FRONTEND_MESSAGE)
            .unwrap()
            .unwrap();
        assert_eq!(m.bytes.len(), total);
    }

    #[test]
    fn partial_messages_are_charged_to_the_budget_and_refused_beyond_it() {
        static BUDGET: PartialBudget = PartialBudget::new(2 << 20);
        let header = |len: i32| {
            let mut b = BytesMut::from(&b"d"[..]);
            b.extend_from_slice(&len.to_be_bytes());
            b
        };
        let mut a = header(10 << 20);
        a.extend_from_slice(&vec![0; 600 << 10]);
        let mut charge_a = Charge::against(&BUDGET);
        assert!(
            split_message_charged(&mut a, MAX_FRONTEND_MESSAGE, &mut charge_a)
                .unwrap()
                .is_none()
        );
        assert!(BUDGET.held() > 600 << 10);
        // A second session's large message does not fit any more…
        let mut b = header(10 << 20);
        b.extend_from_slice(&vec![0; 500 << 10]);
        let mut charge_b = Charge::against(&BUDGET);
        let e = split_message_charged(&mut b, MAX_FRONTEND_MESSAGE, &mut charge_b).unwrap_err();
        assert!(matches!(e, FrameError::Budget { .. }), "{e}");
        assert!(e.to_string().contains("retry later"));
        // …small messages are never charged…
        let mut c = header(100);
        let mut charge_c = Charge::against(&BUDGET);
        assert!(
            split_message_charged(&mut c, MAX_FRONTEND_MESSAGE, &mut charge_c)
                .unwrap()
                .is_none()
        );
        assert_eq!(charge_c.held, 0);
        // …and a session that ends gives its share back.
        drop(charge_a);
        assert_eq!(BUDGET.held(), 0);
        assert!(
            split_message_charged(&mut b, MAX_FRONTEND_MESSAGE, &mut charge_b)
                .unwrap()
                .is_none()
        );
        drop(charge_b);
        assert_eq!(BUDGET.held(), 0);
    }

    #[test]
    fn partial_then_whole() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x09sel"[..]);
        assert!(split_message(&mut buf, 100).unwrap().is_none());
        buf.extend_from_slice(b"1\0");
        let m = split_message(&mut buf, 100).unwrap().unwrap();
        assert_eq!(m.tag, b'Q');
        assert_eq!(m.body(), b"sel1\0");
        assert!(buf.is_empty());
    }

    #[test]
    fn data_row_round_trip_and_truncation() {
        let mut out = BytesMut::new();
        encode_data_row_refs(&[Some(&b"ab"[..]), None], &mut out);
        let vals = data_row_values(&out[5..]).unwrap();
        assert_eq!(vals, vec![Some(&b"ab"[..]), None]);
        assert!(data_row_values(&out[5..out.len() - 3]).is_none());
        assert!(data_row_values(&[0xff, 0xff]).is_none());
    }

    #[test]
    fn startup_packet_bounds() {
        let mut buf = BytesMut::from(&0x7fff_ffffi32.to_be_bytes()[..]);
        assert!(split_startup_packet(&mut buf).is_err());
        let mut buf = BytesMut::from(&4i32.to_be_bytes()[..]);
        assert!(split_startup_packet(&mut buf).is_err());
    }
}
