//! Reads that hold no buffer while the peer is silent.
//!
//! A gateway keeps thousands of sessions open that send nothing for minutes.
//! `read_buf` into a session's own buffer keeps that buffer allocated across
//! the wait. [`read_buf_lean`] waits with nothing allocated: when the buffer
//! is empty it is given back, and the read lands in a per-thread scratch
//! buffer that is copied out as soon as bytes arrive (PgBouncer's buffer
//! pool does the same for its idle clients). [`ReadAhead`] does the same for
//! a stream read through a library that asks for a message in pieces.

use bytes::{Buf, BufMut, BytesMut};
use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The per-thread scratch a read of an idle stream lands in: also the most
/// one such read takes.
const SCRATCH_LEN: usize = 16 * 1024;

/// The least a buffer allocated for arriving bytes holds, so the reads that
/// complete a partial message are not tiny.
const MIN_CAPACITY: usize = 4 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_LEN].into_boxed_slice());
}

/// Like `AsyncReadExt::read_buf`, appending to `buf` and returning how many
/// bytes were read (0 at end of stream), but an empty `buf` is released
/// before the wait rather than held through it.
///
/// Cancel-safe, as `read_buf` is: bytes are in `buf` by the time the future
/// completes, and a future dropped before then has consumed none.
pub async fn read_buf_lean<R>(reader: &mut R, buf: &mut BytesMut) -> io::Result<usize>
where
    R: AsyncRead + Unpin + ?Sized,
{
    if !buf.is_empty() {
        // A partial message is waiting for its rest: read into its buffer.
        return reader.read_buf(buf).await;
    }
    *buf = BytesMut::new();
    poll_fn(|cx| {
        poll_via_scratch(Pin::new(&mut *reader), cx, |bytes| {
            buf.reserve(bytes.len().max(MIN_CAPACITY));
            buf.extend_from_slice(bytes);
        })
    })
    .await
}

fn poll_via_scratch<R>(
    reader: Pin<&mut R>,
    cx: &mut Context<'_>,
    take: impl FnOnce(&[u8]),
) -> Poll<io::Result<usize>>
where
    R: AsyncRead + ?Sized,
{
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => poll_into(reader, cx, &mut scratch, take),
        // A reader that itself reads this way on this thread (none does
        // today): a scratch of its own.
        Err(_) => poll_into(reader, cx, &mut vec![0; SCRATCH_LEN], take),
    })
}

/// One read into `scratch`, whatever arrived given to `take`.
fn poll_into<R>(
    reader: Pin<&mut R>,
    cx: &mut Context<'_>,
    scratch: &mut [u8],
    take: impl FnOnce(&[u8]),
) -> Poll<io::Result<usize>>
where
    R: AsyncRead + ?Sized,
{
    let mut read = ReadBuf::new(scratch);
    let polled = reader.poll_read(cx, &mut read);
    let filled = read.filled_mut();
    let n = filled.len();
    if let Poll::Ready(Ok(())) = polled {
        take(filled);
    }
    // Zeroed again: the scratch is shared by the thread's sessions, and a
    // reader that claimed bytes it did not write must find no one else's.
    filled.fill(0);
    polled.map_ok(|()| n)
}

/// The most a [`ReadAhead`] reads ahead.
const MAX_READ_AHEAD: usize = 64 * 1024;

/// A stream whose reads take everything that has arrived (up to 64 KiB) and
/// serve the next reads from it, holding no buffer while the peer is silent.
///
/// russh reads each SSH packet in two pieces (its first cipher block, then
/// the rest), so on a bare socket every packet costs two `recv` calls, and
/// a 32 KiB data packet is read in two. Here one `recv` takes the packets
/// that have arrived together. The read-ahead grows while reads keep filling
/// it (a bulk transfer) and is released as soon as it is drained and the
/// socket has nothing more, so an idle session holds none (as
/// [`read_buf_lean`]). Writes go straight to the inner stream.
#[derive(Debug)]
pub struct ReadAhead<S> {
    inner: S,
    /// Read and not yet handed out. No allocation while the stream is idle.
    buf: BytesMut,
    /// How much the next read may take: doubled, up to [`MAX_READ_AHEAD`],
    /// each time a read fills it; 0 while the stream is idle.
    fill: usize,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> Self {
        ReadAhead {
            inner,
            buf: BytesMut::new(),
            fill: 0,
        }
    }

    /// Bytes held for later reads, and the buffer's capacity (for tests).
    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        (self.buf.len(), self.buf.capacity())
    }
}

impl<S: AsyncRead + Unpin> ReadAhead<S> {
    /// Refills the drained read-ahead from the inner stream; `Ok(0)` at its
    /// end. Bytes may go to `out` directly. Releases the buffer when the
    /// stream has nothing (idle).
    fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<usize>> {
        if self.fill == 0 {
            // Idle until now: read into the thread's scratch, and allocate
            // only for bytes the caller cannot take at once.
            let (buf, fill) = (&mut self.buf, &mut self.fill);
            return poll_via_scratch(Pin::new(&mut self.inner), cx, |bytes| {
                let direct = bytes.len().min(out.remaining());
                out.put_slice(&bytes[..direct]);
                let rest = &bytes[direct..];
                if !rest.is_empty() {
                    // A full scratch: more is coming, read it in larger reads.
                    *fill = if bytes.len() == SCRATCH_LEN {
                        2 * SCRATCH_LEN
                    } else {
                        MIN_CAPACITY
                    };
                    buf.reserve(rest.len().max(*fill));
                    buf.extend_from_slice(rest);
                }
            });
        }
        // Drained: reuse the allocation when it holds `fill`, else a new one
        // of that size (growing in place would keep the consumed bytes).
        self.buf.clear();
        if !self.buf.try_reclaim(self.fill) {
            self.buf = BytesMut::with_capacity(self.fill);
        }
        let polled = {
            let mut room = (&mut self.buf).limit(self.fill);
            let read = self.inner.read_buf(&mut room);
            tokio::pin!(read);
            read.poll(cx)
        };
        match polled {
            Poll::Pending => {
                self.go_idle();
                Poll::Pending
            }
            Poll::Ready(Ok(n)) => {
                if n == self.fill {
                    self.fill = (2 * self.fill).min(MAX_READ_AHEAD);
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }

    /// Nothing to read: the buffer goes (it is drained).
    fn go_idle(&mut self) {
        (self.buf, self.fill) = (BytesMut::new(), 0);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.buf.is_empty() {
            if out.remaining() >= MAX_READ_AHEAD {
                // As large as a read-ahead: nothing to gain from one.
                let polled = Pin::new(&mut this.inner).poll_read(cx, out);
                if polled.is_pending() {
                    this.go_idle();
                }
                return polled;
            }
            let before = out.filled().len();
            let n = std::task::ready!(this.poll_fill(cx, out))?;
            if n == 0 || out.filled().len() > before {
                // The end of the stream, or bytes handed out directly.
                return Poll::Ready(Ok(()));
            }
        }
        let n = out.remaining().min(this.buf.len());
        out.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_silent_stream_is_waited_on_with_no_buffer_held() {
        let (mut reader, mut writer) = tokio::io::duplex(64 * 1024);
        let mut buf = BytesMut::with_capacity(2048);
        {
            let read = read_buf_lean(&mut reader, &mut buf);
            tokio::pin!(read);
            assert!(futures_poll_once(read.as_mut()).await.is_none());
            // Cancelled while waiting: nothing consumed, nothing lost.
        }
        assert_eq!(buf.capacity(), 0, "the idle wait released the buffer");
        writer.write_all(b"hello").await.unwrap();
        assert_eq!(read_buf_lean(&mut reader, &mut buf).await.unwrap(), 5);
        assert_eq!(&buf[..], b"hello");
        assert!(buf.capacity() >= MIN_CAPACITY);
    }

    #[tokio::test]
    async fn a_partial_message_is_completed_in_place_and_large_input_arrives_whole() {
        let (mut reader, mut writer) = tokio::io::duplex(256 * 1024);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let send = tokio::spawn(async move {
            writer.write_all(&sent).await.unwrap();
            writer.shutdown().await.unwrap();
        });
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        loop {
            let n = read_buf_lean(&mut reader, &mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            assert!(n <= SCRATCH_LEN.max(buf.capacity()));
            // Leave an odd tail behind, as a split message would.
            let keep = buf.len() % 7;
            got.extend_from_slice(&buf.split_to(buf.len() - keep));
        }
        got.extend_from_slice(&buf);
        send.await.unwrap();
        assert_eq!(got, data);
    }

    #[tokio::test]
    async fn read_ahead_hands_out_exactly_what_arrived_in_any_pieces() {
        let (reader, mut writer) = tokio::io::duplex(256 * 1024);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let send = tokio::spawn(async move {
            // Written in uneven pieces, some larger than the read-ahead.
            let mut at = 0;
            for size in [1, 16, 5000, 70_000, 3, 40_000].iter().cycle() {
                let end = (at + size).min(sent.len());
                writer.write_all(&sent[at..end]).await.unwrap();
                at = end;
                if at == sent.len() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            writer.shutdown().await.unwrap();
        });
        let mut reader = ReadAhead::new(reader);
        let mut got = Vec::new();
        // Read as russh does: a small head, then a larger rest, and now and
        // then a read larger than the read-ahead.
        for size in [16usize, 32_768, 4, 100_000, 1].iter().cycle() {
            let mut piece = vec![0; *size];
            let n = within_a_second(reader.read(&mut piece)).await;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&piece[..n]);
            assert!(got.len() <= data.len(), "more bytes than were sent");
            assert!(reader.held().1 <= MAX_READ_AHEAD, "{:?}", reader.held());
        }
        // Bounded: a reader that stopped early leaves the writer blocked.
        tokio::time::timeout(std::time::Duration::from_secs(5), send)
            .await
            .expect("the reader stopped before the end")
            .unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "the bytes differ from what was sent");
    }

    #[tokio::test]
    async fn read_ahead_grows_to_64_kib_on_a_bulk_transfer_and_no_further() {
        let (reader, mut writer) = tokio::io::duplex(1 << 20);
        let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
        writer.write_all(&data).await.unwrap();
        drop(writer);
        let mut reader = ReadAhead::new(reader);
        let (mut got, mut largest) = (Vec::new(), 0);
        // A packet's first block, then its rest, as russh reads them.
        for size in [16usize, 32_752].iter().cycle() {
            let mut piece = vec![0; *size];
            let n = within_a_second(reader.read(&mut piece)).await;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&piece[..n]);
            largest = largest.max(reader.held().1);
            assert!(largest <= MAX_READ_AHEAD, "{:?}", reader.held());
        }
        // (The capacity seen past the bytes already handed out.)
        assert!(largest > MAX_READ_AHEAD / 2, "it never grew: {largest}");
        assert!(got == data, "the bytes differ from what was sent");
    }

    #[tokio::test]
    async fn read_ahead_takes_what_arrived_together_and_holds_nothing_when_idle() {
        let (reader, mut writer) = tokio::io::duplex(64 * 1024);
        let mut reader = ReadAhead::new(reader);
        writer
            .write_all(b"0123456789abcdef-and-the-rest")
            .await
            .unwrap();
        let mut head = [0u8; 16];
        within_a_second(reader.read_exact(&mut head)).await;
        assert_eq!(&head, b"0123456789abcdef");
        assert_eq!(reader.held().0, 13, "the rest was read in the same read");
        let mut rest = [0u8; 13];
        within_a_second(reader.read_exact(&mut rest)).await;
        assert_eq!(&rest, b"-and-the-rest");
        {
            let mut more = [0u8; 16];
            let read = reader.read(&mut more);
            tokio::pin!(read);
            assert!(futures_poll_once(read.as_mut()).await.is_none());
        }
        assert_eq!(reader.held(), (0, 0), "the idle wait released the buffer");
        writer.write_all(b"x").await.unwrap();
        drop(writer);
        let mut all = Vec::new();
        within_a_second(reader.read_to_end(&mut all)).await;
        assert_eq!(all, b"x");
    }

    #[tokio::test]
    async fn read_ahead_passes_writes_through() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut a = ReadAhead::new(a);
        a.write_all(b"ping").await.unwrap();
        a.flush().await.unwrap();
        let mut got = [0u8; 4];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
    }

    /// The read's result; fails the test if it waits a second (bytes lost).
    async fn within_a_second<T>(read: impl std::future::Future<Output = io::Result<T>>) -> T {
        tokio::time::timeout(std::time::Duration::from_secs(1), read)
            .await
            .expect("the read waited for bytes that had been sent")
            .unwrap()
    }

    /// Polls once: `Some` if the future completed.
    async fn futures_poll_once<F: std::future::Future + Unpin>(mut f: F) -> Option<F::Output> {
        poll_fn(|cx| match Pin::new(&mut f).poll(cx) {
            Poll::Ready(v) => Poll::Ready(Some(v)),
            Poll::Pending => Poll::Ready(None),
        })
        .await
    }
}
