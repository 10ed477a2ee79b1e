//! Backpressure between a connection's replies and its requests.
//!
//! capnp-rpc queues every reply in memory until the stream takes it. A client
//! that sends requests but never reads the replies (say, fetches of 4 MiB each)
//! would grow that queue without limit. So the node stops reading a
//! connection's requests while its replies cannot be written: once the QUIC
//! stream pushes back (the peer's flow-control window is full), the reader waits
//! until a write goes through again. The client's own sends then block on QUIC
//! flow control.
//!
//! That bounds what new requests can add, not the replies of calls already read
//! (long-polls woken later): those reserve their bytes in the connection's
//! budget before they are built, and the writer here gives the bytes back as the
//! stream takes them, or all at once when the connection ends
//! (`ConnectionBudget::reserve_reply`). A connection whose replies stay stuck for
//! too long is closed by its server loop ([`CongestionWatch::stuck_for`]).

use std::cell::{Cell, RefCell};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures::io::{AsyncRead, AsyncWrite};
use quicnprotochat_actors::core::budget::ConnectionBudget;

/// Whether a connection's replies are stuck, shared by its two halves.
#[derive(Default)]
struct Congestion {
    stuck: Cell<bool>,
    /// Since when writes have been refused (`None` while they go through).
    stuck_since: Cell<Option<Instant>>,
    /// The reader waiting for the writer to move again.
    reader: RefCell<Option<Waker>>,
}

impl Congestion {
    fn set(&self, stuck: bool) {
        self.stuck.set(stuck);
        if stuck {
            if self.stuck_since.get().is_none() {
                self.stuck_since.set(Some(Instant::now()));
            }
        } else {
            self.stuck_since.set(None);
            if let Some(w) = self.reader.borrow_mut().take() {
                w.wake();
            }
        }
    }
}

/// Tells a connection's server loop how long its replies have been stuck.
#[derive(Clone)]
pub struct CongestionWatch {
    congestion: Rc<Congestion>,
}

impl CongestionWatch {
    /// How long writes have been refused without a break (`None`: they go
    /// through).
    pub fn stuck_for(&self) -> Option<Duration> {
        self.congestion.stuck_since.get().map(|t| t.elapsed())
    }
}

/// Wraps a connection's two halves so that its requests are read only while its
/// replies can be written, and the bytes written are given back to `budget`.
pub fn couple<R, W>(
    reader: R,
    writer: W,
    budget: ConnectionBudget,
) -> (GatedReader<R>, WatchedWriter<W>, CongestionWatch) {
    let congestion = Rc::new(Congestion::default());
    (
        GatedReader {
            inner: reader,
            congestion: congestion.clone(),
        },
        WatchedWriter {
            inner: writer,
            congestion: congestion.clone(),
            budget,
        },
        CongestionWatch { congestion },
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

/// The reply half: tells the request half whether writes go through, and the
/// budget how many reply bytes left memory.
pub struct WatchedWriter<W> {
    inner: W,
    congestion: Rc<Congestion>,
    budget: ConnectionBudget,
}

impl<W> WatchedWriter<W> {
    fn observe<T>(&self, poll: Poll<T>) -> Poll<T> {
        self.congestion.set(poll.is_pending());
        poll
    }
}

impl<W> Drop for WatchedWriter<W> {
    fn drop(&mut self) {
        // The connection is gone, and with it every reply still queued.
        self.budget.replies_dropped();
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for WatchedWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll {
            self.budget.replies_written(*n as u64);
        }
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
        let budget = quicnprotochat_actors::core::budget::NodeBudget::new(Default::default());
        let connection = budget.connection();
        connection.reserve_reply(5).unwrap();
        let (mut reader, mut writer, watch) = couple(
            requests,
            Valve {
                open: open.clone(),
                written: Vec::new(),
            },
            connection.clone(),
        );
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut buf = [0u8; 4];
        // Before any reply, requests flow.
        assert!(matches!(
            Pin::new(&mut reader).poll_read(&mut cx, &mut buf),
            Poll::Ready(Ok(4))
        ));
        // A reply the peer does not take: reading stops, and its bytes stay
        // counted.
        let mut write = writer.write_all(b"reply");
        assert!(Pin::new(&mut write).poll(&mut cx).is_pending());
        assert!(watch.stuck_for().is_some());
        assert_eq!(connection.replies_queued(), 5);
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
        assert_eq!(watch.stuck_for(), None);
        assert_eq!(connection.replies_queued(), 0, "written: given back");
        let mut rest = Vec::new();
        futures::executor::block_on(reader.read_to_end(&mut rest)).unwrap();
        assert_eq!(rest, b"est bytes");
        // A connection that ends gives back whatever replies it still had.
        connection.reserve_reply(100).unwrap();
        drop(writer);
        assert_eq!(budget.reply_bytes_queued(), 0);
    }
}
