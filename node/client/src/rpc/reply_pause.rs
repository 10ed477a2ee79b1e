//! Test hook: a connection that stops reading the node's replies, as a hostile
//! client would.

/// Test hook: whether a connection reads the node's replies (see
/// [`NodeConnection::connect_with_reply_pause`]).
#[doc(hidden)]
#[derive(Default)]
pub struct ReplyPause {
    paused: std::cell::Cell<bool>,
    waker: std::cell::RefCell<Option<std::task::Waker>>,
}

impl ReplyPause {
    /// Stops reading replies.
    pub fn pause(&self) {
        self.paused.set(true);
    }

    /// Reads replies again.
    pub fn resume(&self) {
        self.paused.set(false);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

pub(super) struct PausableReader<R> {
    pub(super) inner: R,
    pub(super) pause: Option<std::rc::Rc<ReplyPause>>,
}

impl<R: futures::io::AsyncRead + Unpin> futures::io::AsyncRead for PausableReader<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if let Some(p) = &self.pause
            && p.paused.get()
        {
            *p.waker.borrow_mut() = Some(cx.waker().clone());
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}
