//! The web UI's listener: at most [`MAX_CONNECTIONS`] connections at once, and
//! a connection that does not get its answer within [`RESPONSE_DEADLINE`] of
//! sending (or opening with) a request is closed.
//!
//! Other users of the machine can reach the loopback port. Without a cap and a
//! deadline, one of them could open thousands of connections that send half a
//! request and never finish (measured: 5,000 held; with `ulimit -n 1024` the
//! owner's own requests timed out). The deadline runs from the first byte of a
//! request (or from the accept) until the first byte of a response, so a request
//! that is never completed cannot hold a slot for long, while an event stream,
//! which is answered at once and then only written to, is never cut.
//! Past the cap, new connections wait in the kernel's backlog until a slot is
//! free instead of being refused: the owner's request is served late, not lost.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Connections the web UI serves at once (one person's browser tabs use a few).
pub const MAX_CONNECTIONS: usize = 64;
/// How long a request may take from its first byte to the first byte of its
/// answer. Generous: an API call that needs the node waits for it.
pub const RESPONSE_DEADLINE: Duration = Duration::from_secs(30);

/// A TCP listener with a connection cap and a response deadline.
pub struct BoundedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    deadline: Duration,
}

impl BoundedListener {
    /// Wraps `inner`: at most `max_connections` at once, `deadline` per request.
    pub fn new(inner: TcpListener, max_connections: usize, deadline: Duration) -> BoundedListener {
        BoundedListener {
            inner,
            slots: Arc::new(Semaphore::new(max_connections)),
            deadline,
        }
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = DeadlineStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // Wait for a free slot before accepting: past the cap, connections wait
        // in the backlog.
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    return (DeadlineStream::new(stream, slot, self.deadline), addr);
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait, then retry.
                    tracing::debug!(error = %e, "web UI accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that fails its reads once a request has waited too long for
/// the first byte of its answer; holds its slot until dropped.
pub struct DeadlineStream {
    inner: TcpStream,
    _slot: OwnedSemaphorePermit,
    deadline: Duration,
    /// Armed from the accept and from the first byte read after a write;
    /// disarmed by a write.
    timer: Option<Pin<Box<Sleep>>>,
}

impl DeadlineStream {
    fn new(inner: TcpStream, slot: OwnedSemaphorePermit, deadline: Duration) -> DeadlineStream {
        DeadlineStream {
            inner,
            _slot: slot,
            deadline,
            timer: Some(Box::pin(tokio::time::sleep(deadline))),
        }
    }
}

impl AsyncRead for DeadlineStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(timer) = self.timer.as_mut()
            && timer.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "a request was not completed in time",
            )));
        }
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(())))
            && buf.filled().len() > before
            && self.timer.is_none()
        {
            let deadline = Instant::now() + self.deadline;
            let mut timer = Box::pin(tokio::time::sleep_until(deadline));
            // Registers this task to be woken at the deadline.
            let _ = timer.as_mut().poll(cx);
            self.timer = Some(timer);
        }
        poll
    }
}

impl AsyncWrite for DeadlineStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.timer = None;
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.timer = None;
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn serve(max: usize, deadline: Duration) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
        tokio::spawn(async move {
            axum::serve(BoundedListener::new(listener, max, deadline), router)
                .await
                .unwrap();
        });
        addr
    }

    async fn get(addr: std::net::SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn half_sent_requests_are_closed_at_the_deadline_and_the_owner_is_served_after() {
        let addr = serve(4, Duration::from_millis(300)).await;
        // Four connections fill the cap with requests that never finish.
        let mut stalled = Vec::new();
        for _ in 0..4 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
            stalled.push(s);
        }
        // The owner's request waits for a slot, then is answered.
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(10), get(addr))
            .await
            .expect("served once the stalled ones are closed");
        assert!(answer.ends_with("hello"), "{answer}");
        assert!(started.elapsed() >= Duration::from_millis(250));
        // Each stalled connection was closed by the server.
        for mut s in stalled {
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("closed by the server");
            assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        }
    }

    #[tokio::test]
    async fn a_connection_answered_in_time_is_not_cut_while_idle() {
        let addr = serve(4, Duration::from_millis(200)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        for _ in 0..2 {
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).ends_with("hello"));
            // Idle past the deadline between requests: still open (keep-alive,
            // like an event stream that is only written to).
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    }
}
