//! Reads that hold no buffer while the peer is silent.
//!
//! A gateway keeps thousands of sessions open that send nothing for minutes.
//! `read_buf` into a session's own buffer keeps that buffer allocated across
//! the wait. [`read_buf_lean`] waits with nothing allocated: when the buffer
//! is empty it is given back, and the read lands in a per-thread scratch
//! buffer that is copied out as soon as bytes arrive (PgBouncer's buffer
//! pool does the same for its idle clients).

use bytes::BytesMut;
use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

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
    poll_fn(|cx| poll_via_scratch(Pin::new(&mut *reader), cx, buf)).await
}

fn poll_via_scratch<R>(
    reader: Pin<&mut R>,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>>
where
    R: AsyncRead + ?Sized,
{
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => poll_into(reader, cx, &mut scratch, buf),
        // A reader that itself reads this way on this thread (none does
        // today): a scratch of its own.
        Err(_) => poll_into(reader, cx, &mut vec![0; SCRATCH_LEN], buf),
    })
}

/// One read into `scratch`, whatever arrived appended to `buf`.
fn poll_into<R>(
    reader: Pin<&mut R>,
    cx: &mut Context<'_>,
    scratch: &mut [u8],
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>>
where
    R: AsyncRead + ?Sized,
{
    let mut read = ReadBuf::new(scratch);
    let polled = reader.poll_read(cx, &mut read);
    let filled = read.filled_mut();
    let n = filled.len();
    if let Poll::Ready(Ok(())) = polled {
        buf.reserve(n.max(MIN_CAPACITY));
        buf.extend_from_slice(filled);
    }
    // Zeroed again: the scratch is shared by the thread's sessions, and a
    // reader that claimed bytes it did not write must find no one else's.
    filled.fill(0);
    polled.map_ok(|()| n)
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

    /// Polls once: `Some` if the future completed.
    async fn futures_poll_once<F: std::future::Future + Unpin>(mut f: F) -> Option<F::Output> {
        poll_fn(|cx| match Pin::new(&mut f).poll(cx) {
            Poll::Ready(v) => Poll::Ready(Some(v)),
            Poll::Pending => Poll::Ready(None),
        })
        .await
    }
}
