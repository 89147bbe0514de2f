//! `Outbox`: one connection's bounded queue of outgoing frames. The hub and the session push;
//! the transport drains. A queue that would pass its capacity marks the connection for closing
//! with 4100 instead of growing: a client that can't keep up never grows the server's memory.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::protocol::{CloseCode, SocketId};

/// A serialised frame: a refcounted JSON string, encoded once and shared by every subscriber
/// (a queue entry is two words).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame(Arc<str>);

impl Frame {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Frame {
    fn from(s: String) -> Frame {
        Frame(Arc::from(s))
    }
}

impl From<&str> for Frame {
    fn from(s: &str) -> Frame {
        Frame(Arc::from(s))
    }
}

impl std::ops::Deref for Frame {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// Why and how a connection is to be closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseRequest {
    pub code: u16,
    pub reason: String,
    /// Send a `pusher:error` with the code before closing.
    pub with_error: bool,
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<Frame>,
    close: Option<CloseRequest>,
}

pub struct Outbox {
    /// Process-unique connection number (cheap hashing).
    pub conn_id: u64,
    pub socket_id: SocketId,
    capacity: usize,
    inner: Mutex<Inner>,
    notify: Notify,
    closed: AtomicBool,
}

impl Outbox {
    pub fn new(conn_id: u64, socket_id: SocketId, capacity: usize) -> Outbox {
        Outbox {
            conn_id,
            socket_id,
            capacity,
            inner: Mutex::new(Inner::default()),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves a queue of frames, still consistent: recover.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame; `false` when the connection is closing or its queue is full (in which
    /// case it is now marked for closing with 4100).
    pub fn push(&self, frame: Frame) -> bool {
        if self.closed.load(Ordering::Relaxed) {
            return false;
        }
        let mut inner = self.lock();
        if inner.queue.len() >= self.capacity {
            inner.queue.clear();
            inner.queue.shrink_to_fit();
            inner.close = Some(CloseRequest {
                code: CloseCode::OverCapacity.code(),
                reason: "Client too slow: outbound queue full, reconnect".into(),
                with_error: true,
            });
            self.closed.store(true, Ordering::Relaxed);
            drop(inner);
            self.notify.notify_one();
            return false;
        }
        let was_empty = inner.queue.is_empty();
        inner.queue.push_back(frame);
        drop(inner);
        if was_empty {
            self.notify.notify_one();
        }
        true
    }

    /// Asks the transport to close the connection (first request wins).
    pub fn close(&self, code: u16, reason: &str, with_error: bool) {
        let mut inner = self.lock();
        if inner.close.is_none() {
            inner.close = Some(CloseRequest {
                code,
                reason: reason.to_owned(),
                with_error,
            });
        }
        self.closed.store(true, Ordering::Relaxed);
        drop(inner);
        self.notify.notify_one();
    }

    pub fn is_closing(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Moves every queued frame into `out`; returns a pending close request, if any. Frames
    /// queued before the close request are still delivered first.
    pub fn drain(&self, out: &mut Vec<Frame>) -> Option<CloseRequest> {
        let mut inner = self.lock();
        out.extend(inner.queue.drain(..));
        if inner.queue.capacity() > 64 {
            inner.queue.shrink_to_fit();
        }
        inner.close.clone()
    }

    /// Like [`drain`](Self::drain), handing each frame to `f` (no intermediate vector).
    pub fn drain_with(&self, mut f: impl FnMut(Frame)) -> Option<CloseRequest> {
        let mut inner = self.lock();
        for frame in inner.queue.drain(..) {
            f(frame);
        }
        if inner.queue.capacity() > 64 {
            inner.queue.shrink_to_fit();
        }
        inner.close.clone()
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves when something was pushed or a close was requested since the last drain.
    pub async fn ready(&self) {
        self.notify.notified().await
    }

    /// [`ready`](Self::ready) as a nameable future, for a transport that keeps one waiting
    /// across wake-ups instead of registering a new one each time.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(cap: usize) -> Outbox {
        Outbox::new(1, SocketId::parse("1.1").unwrap(), cap)
    }

    #[test]
    fn bounded_queue_closes_with_4100_instead_of_growing() {
        let o = outbox(3);
        for i in 0..3 {
            assert!(o.push(Frame::from(format!("f{i}"))));
        }
        assert!(!o.push(Frame::from("overflow")));
        assert!(!o.push(Frame::from("after")));
        let mut out = Vec::new();
        let close = o.drain(&mut out).expect("close requested");
        assert_eq!(close.code, 4100);
        assert!(
            out.is_empty(),
            "the backlog of a client that can't keep up is dropped"
        );
    }

    #[test]
    fn frames_before_close_are_kept_in_order() {
        let o = outbox(10);
        o.push(Frame::from("a"));
        o.push(Frame::from("b"));
        o.close(4009, "bye", true);
        o.close(4200, "second", false);
        assert!(!o.push(Frame::from("c")));
        let mut out = Vec::new();
        let close = o.drain(&mut out).unwrap();
        assert_eq!(
            out.iter().map(|f| f.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(close.code, 4009);
    }

    #[tokio::test]
    async fn ready_wakes_on_push() {
        let o = std::sync::Arc::new(outbox(10));
        let o2 = o.clone();
        let waiter = tokio::spawn(async move {
            o2.ready().await;
            let mut out = Vec::new();
            o2.drain(&mut out);
            out.len()
        });
        tokio::task::yield_now().await;
        o.push(Frame::from("x"));
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1);
    }
}
