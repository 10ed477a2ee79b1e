//! Backpressure between a connection's replies and its requests.
//!
//! capnp-rpc queues every reply in memory until the stream takes it. A client
//! that sends requests but never reads the replies (say, fetches of 4 MiB each)
//! would grow that queue without limit. So the node stops reading a
//! connection's requests while its replies cannot be written: once the QUIC
//! stream pushes back (the peer's flow-control window is full), the reader waits
//! until a write goes through again. The client's own sends then block on QUIC
//! flow control, and the node holds at most the replies of the calls already in
//! flight (which the call budget bounds).

use std::cell::{Cell, RefCell};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use futures::io::{AsyncRead, AsyncWrite};

/// Whether a connection's replies are stuck, shared by its two halves.
#[derive(Default)]
struct Congestion {
    stuck: Cell<bool>,
    /// The reader waiting for the writer to move again.
    reader: RefCell<Option<Waker>>,
}

impl Congestion {
    fn set(&self, stuck: bool) {
        self.stuck.set(stuck);
        if !stuck && let Some(w) = self.reader.borrow_mut().take() {
            w.wake();
        }
    }
}

/// Wraps a connection's two halves so that its requests are read only while its
/// replies can be written.
pub fn couple<R, W>(reader: R, writer: W) -> (GatedReader<R>, WatchedWriter<W>) {
    let congestion = Rc::new(Congestion::default());
    (
        GatedReader {
            inner: reader,
            congestion: congestion.clone(),
        },
        WatchedWriter {
            inner: writer,
            congestion,
        },
    )
}

/// The request half: pauses while the reply half is stuck.
pub struct GatedReader<R> {
    inner: R,
    congestion: Rc<Congestion>,
}

impl<R: AsyncRead + Unpin> AsyncRead for GatedReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if self.congestion.stuck.get() {
            *self.congestion.reader.borrow_mut() = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// The reply half: tells the request half whether writes go through.
pub struct WatchedWriter<W> {
    inner: W,
    congestion: Rc<Congestion>,
}

impl<W> WatchedWriter<W> {
    fn observe<T>(&self, poll: Poll<T>) -> Poll<T> {
        self.congestion.set(poll.is_pending());
        poll
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for WatchedWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.observe(poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.observe(poll)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Closing: nothing more will be read either way.
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::{AsyncReadExt, AsyncWriteExt};
    use futures::task::noop_waker;
    use std::future::Future;

    /// A writer that refuses to take anything until opened.
    struct Valve {
        open: Rc<Cell<bool>>,
        written: Vec<u8>,
    }

    impl AsyncWrite for Valve {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if !self.open.get() {
                return Poll::Pending;
            }
            self.written.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn requests_are_not_read_while_replies_cannot_be_written() {
        let open = Rc::new(Cell::new(false));
        let requests: &[u8] = b"request bytes";
        let (mut reader, mut writer) = couple(
            requests,
            Valve {
                open: open.clone(),
                written: Vec::new(),
            },
        );
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut buf = [0u8; 4];
        // Before any reply, requests flow.
        assert!(matches!(
            Pin::new(&mut reader).poll_read(&mut cx, &mut buf),
            Poll::Ready(Ok(4))
        ));
        // A reply the peer does not take: reading stops.
        let mut write = writer.write_all(b"reply");
        assert!(Pin::new(&mut write).poll(&mut cx).is_pending());
        assert!(
            Pin::new(&mut reader)
                .poll_read(&mut cx, &mut buf)
                .is_pending()
        );
        // The peer reads again: the reply goes out and so do requests.
        open.set(true);
        assert!(matches!(
            Pin::new(&mut write).poll(&mut cx),
            Poll::Ready(Ok(()))
        ));
        let mut rest = Vec::new();
        futures::executor::block_on(reader.read_to_end(&mut rest)).unwrap();
        assert_eq!(rest, b"est bytes");
    }
}
