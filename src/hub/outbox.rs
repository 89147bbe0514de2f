//! `Outbox`: one connection's bounded queue of outgoing frames. The hub and the session push;
//! the transport drains. A queue that would pass its capacity marks the connection for closing
//! with 4100 instead of growing: a client that can't keep up never grows the server's memory.
//!
//! Wake-ups cost nothing extra: the consumer's `Waker` lives under the queue's own lock (taken
//! anyway to push), so a delivery is one uncontended lock and, when the queue was empty, one
//! wake — no separate notifier with a lock of its own.
//!
//! The queue is for backlog. A transport that can write without waiting registers a
//! [`DirectWrite`]: while its connection is idle (nothing queued, nothing being written) the
//! socket is written from outside the transport's task — no task wake-up, no poll. A push does
//! it at once; the hub's fan-out instead *defers* it ([`Outbox::push_deferred`]): the frame is
//! queued and the outbox handed to a [`Flusher`], which writes every deferred outbox's whole
//! queue in one `writev` once the publishing task yields. Events published meanwhile share that
//! write (a burst costs one syscall per socket, not one per frame), and the writes happen
//! outside the hub's lock. The flusher yields to the runtime every [`FLUSH_CHUNK`] sockets, so
//! a fan-out to ten thousand subscribers does not stall reads, pings and the HTTP API for the
//! ~80 ms its writes take on one core. Whatever the socket doesn't take is left to the transport, so order,
//! the bound and back-pressure are unchanged.
//!
//! The outbox counts frames, never bytes: a frame the socket took only part of is the
//! transport's from then on (it finishes it before anything else goes to that socket), and all
//! the outbox learns is that the transport has something in hand ([`Wrote::unfinished`]).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::protocol::{CloseCode, Frame, SocketId};

/// What a [`DirectWrite`] took off the front of the queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wrote {
    /// Leading frames the transport took: all wholly on the wire, except the last one when
    /// `unfinished`.
    pub frames: usize,
    /// The socket took only part of the last frame: the transport kept the rest and finishes
    /// it itself, so it is busy until it next takes from the outbox.
    pub unfinished: bool,
}

/// A transport's non-blocking write path (see the module doc). Called under the outbox's lock,
/// never concurrently with the transport's own writes: those only happen while the outbox
/// knows the transport is busy. Writes as much of `frames`, from the front, as the socket takes
/// at once (nothing when it is full or failed: the transport's own write will say); a frame
/// begun is the transport's to finish.
pub trait DirectWrite: Send + Sync {
    fn try_write(&self, frames: &VecDeque<Frame>) -> Wrote;
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
    /// The transport waiting for frames or a close request.
    waker: Option<Waker>,
    /// Something was pushed (onto an empty queue) or a close requested since [`Outbox::ready`]
    /// last resolved: one stored permit, so a wake-up is never lost between two waits.
    signalled: bool,
    direct: Option<Arc<dyn DirectWrite>>,
    /// The transport has frames of its own in hand (taken from here, or control frames): no
    /// direct write may go between them.
    busy: bool,
    /// A direct write left a frame for the transport to finish: it may not go idle before it
    /// takes from the outbox again (and so learns of it).
    unfinished: bool,
    /// The queue waits for a [`Flusher`] to write it (the transport was not woken).
    deferred: bool,
}

impl Inner {
    /// Marks the outbox ready and returns the waiter to wake (after the lock is released).
    fn signal(&mut self) -> Option<Waker> {
        self.signalled = true;
        self.waker.take()
    }

    /// Hands every queued frame to `f`; the transport now has them in hand.
    fn take_all(&mut self, f: &mut impl FnMut(Frame)) {
        self.busy = true;
        self.unfinished = false;
        self.deferred = false;
        for frame in self.queue.drain(..) {
            f(frame);
        }
        if self.queue.capacity() > 64 {
            self.queue.shrink_to_fit();
        }
    }

    /// Writes the queue through the direct path; `true` when all of it went (`false`: the
    /// transport is due, for what is left or for a frame to finish).
    fn write_direct(&mut self) -> bool {
        let Some(direct) = &self.direct else {
            return false;
        };
        let wrote = direct.try_write(&self.queue);
        self.queue.drain(..wrote.frames.min(self.queue.len()));
        if wrote.unfinished {
            self.busy = true;
            self.unfinished = true;
            return false;
        }
        if self.queue.is_empty() {
            if self.queue.capacity() > 64 {
                self.queue = VecDeque::new();
            }
            true
        } else {
            false
        }
    }

    fn register(&mut self, cx: &Context<'_>) {
        match &self.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => self.waker = Some(cx.waker().clone()),
        }
    }
}

pub struct Outbox {
    /// Process-unique connection number (cheap hashing).
    pub conn_id: u64,
    pub socket_id: SocketId,
    capacity: usize,
    inner: Mutex<Inner>,
    closed: AtomicBool,
}

impl Outbox {
    pub fn new(conn_id: u64, socket_id: SocketId, capacity: usize) -> Outbox {
        Outbox {
            conn_id,
            socket_id,
            capacity,
            inner: Mutex::new(Inner::default()),
            closed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves a queue of frames, still consistent: recover.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame, or writes it straight to an idle socket; `false` when the connection is
    /// closing or its queue is full (in which case it is now marked for closing with 4100).
    pub fn push(&self, frame: Frame) -> bool {
        self.enqueue(frame, false) != Pushed::Dropped
    }

    /// Like [`push`](Self::push), but an idle socket is not written now: the frame waits with
    /// the outbox for [`flush_deferred`](Self::flush_deferred), which the caller must arrange
    /// when this answers [`Pushed::Deferred`] (see [`Flusher`]).
    pub fn push_deferred(&self, frame: Frame) -> Pushed {
        self.enqueue(frame, true)
    }

    fn enqueue(&self, frame: Frame, defer: bool) -> Pushed {
        if self.closed.load(Ordering::Relaxed) {
            return Pushed::Dropped;
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
            let waker = inner.signal();
            drop(inner);
            wake(waker);
            return Pushed::Dropped;
        }
        let was_empty = inner.queue.is_empty();
        inner.queue.push_back(frame);
        if was_empty && !inner.busy && inner.direct.is_some() {
            if defer {
                inner.deferred = true;
                return Pushed::Deferred;
            }
            if inner.write_direct() {
                return Pushed::Queued;
            }
        }
        // While deferred the queue is not empty: the flusher, not the transport, is due.
        let waker = if was_empty { inner.signal() } else { None };
        drop(inner);
        wake(waker);
        Pushed::Queued
    }

    /// Writes a deferred queue through the direct path, unless the transport took it over
    /// meanwhile; what the socket doesn't take is left to the transport (woken).
    pub fn flush_deferred(&self) {
        let mut inner = self.lock();
        if !std::mem::take(&mut inner.deferred) || inner.busy {
            return;
        }
        if inner.write_direct() {
            return;
        }
        let waker = inner.signal();
        drop(inner);
        wake(waker);
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
        let waker = inner.signal();
        drop(inner);
        wake(waker);
    }

    /// Lets `push` write straight to the socket while the transport is idle.
    pub fn set_direct(&self, direct: Arc<dyn DirectWrite>) {
        self.lock().direct = Some(direct);
    }

    /// The transport is about to write frames of its own (a ping, a pong, a close): no direct
    /// write until it next finds the outbox empty in [`poll_drain`](Self::poll_drain). What is
    /// queued goes to `f` first, to be written before them (and after a frame a direct write
    /// left unfinished, which the transport already has).
    pub fn hold(&self, mut f: impl FnMut(Frame)) {
        self.lock().take_all(&mut f);
    }

    /// Stops direct writes for this connection: every frame goes through its transport, which
    /// is then woken by each push. A resumable connection needs that: its transport counts
    /// what it writes to know when to prove delivery (`resume::proof`).
    pub fn disable_direct(&self) {
        self.lock().direct = None;
    }

    /// Drops the direct write path for good (the connection is ending: its socket must close
    /// with the transport, not live on in a queue that outlasts it).
    pub fn detach_direct(&self) {
        let mut inner = self.lock();
        inner.busy = true;
        inner.direct = None;
    }

    pub fn is_closing(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Moves every queued frame into `out`; returns a pending close request, if any. Frames
    /// queued before the close request are still delivered first.
    pub fn drain(&self, out: &mut Vec<Frame>) -> Option<CloseRequest> {
        self.drain_with(|f| out.push(f))
    }

    /// Like [`drain`](Self::drain), handing each frame to `f` (no intermediate vector).
    pub fn drain_with(&self, mut f: impl FnMut(Frame)) -> Option<CloseRequest> {
        let mut inner = self.lock();
        inner.take_all(&mut f);
        inner.close.clone()
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Frames that can still be queued before the connection is closed with 4100.
    pub fn room(&self) -> usize {
        self.capacity.saturating_sub(self.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves when something was pushed or a close was requested since it last resolved
    /// (edge-triggered: frames left queued on purpose don't wake the waiter again).
    pub async fn ready(&self) {
        poll_fn(|cx| {
            let mut inner = self.lock();
            if std::mem::take(&mut inner.signalled) {
                Poll::Ready(())
            } else {
                inner.register(cx);
                Poll::Pending
            }
        })
        .await
    }

    /// For a transport that polls, called only when it has written everything it had: hands
    /// every queued frame to `f` and returns `Ready` with a pending close request, if any, when
    /// there was something to do (frames, a close, or a frame a direct write left unfinished);
    /// or registers `cx` to be woken by the next push or close request, marks the transport
    /// idle (direct writes may go ahead) and returns `Pending`. One lock either way.
    pub fn poll_drain(
        &self,
        cx: &Context<'_>,
        mut f: impl FnMut(Frame),
    ) -> Poll<Option<CloseRequest>> {
        let mut inner = self.lock();
        if inner.queue.is_empty() && inner.close.is_none() && !inner.unfinished {
            inner.register(cx);
            inner.busy = false;
            return Poll::Pending;
        }
        inner.signalled = false;
        inner.take_all(&mut f);
        Poll::Ready(inner.close.clone())
    }

    /// For a transport whose socket is busy (it takes no frames meanwhile): `Ready` with the
    /// close request once there is one (overflow, terminate), else registers `cx` and returns
    /// `Pending`. A push may wake it spuriously.
    pub fn poll_close(&self, cx: &Context<'_>) -> Poll<CloseRequest> {
        let mut inner = self.lock();
        match &inner.close {
            Some(c) => Poll::Ready(c.clone()),
            None => {
                inner.register(cx);
                Poll::Pending
            }
        }
    }
}

/// What became of a pushed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// The connection is closing (or just overflowed): not delivered.
    Dropped,
    /// Queued for the transport, or already written.
    Queued,
    /// Queued for a [`Flusher`]: the caller hands the outbox to one.
    Deferred,
}

/// Outboxes a [`Flusher`] writes between two yields to the runtime (tokio's own scheduler
/// polls the I/O driver every 61 tasks).
pub const FLUSH_CHUNK: usize = 128;

/// Outboxes whose deferred queues are due to be written (see the module doc). Filled by a
/// fan-out, flushed by one task spawned when the list stops being empty — on a runtime, after
/// the publishing task yields; without one (unit tests), at once.
#[derive(Default)]
pub struct Flusher {
    due: Mutex<Vec<Arc<Outbox>>>,
}

impl Flusher {
    /// Pushes `frame` to each outbox in `to`; returns how many accepted it.
    pub fn fan_out<'a>(
        self: &Arc<Self>,
        to: impl Iterator<Item = &'a Arc<Outbox>>,
        frame: &Frame,
    ) -> usize {
        let mut n = 0;
        let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
        let was_empty = due.is_empty();
        for outbox in to {
            match outbox.push_deferred(frame.clone()) {
                Pushed::Dropped => continue,
                Pushed::Queued => {}
                Pushed::Deferred => due.push(outbox.clone()),
            }
            n += 1;
        }
        let schedule = was_empty && !due.is_empty();
        drop(due);
        if schedule {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    let this = self.clone();
                    drop(rt.spawn(async move { this.flush_yielding().await }));
                }
                Err(_) => self.flush(),
            }
        }
        n
    }

    /// Like [`flush`](Self::flush), but yields to the runtime after every [`FLUSH_CHUNK`]
    /// outboxes: the I/O driver and the sockets' own tasks run between the chunks instead of
    /// waiting behind ten thousand writes. Safe: an outbox taken here keeps a non-empty queue
    /// until written, so a frame pushed meanwhile only queues behind the deferred ones.
    pub async fn flush_yielding(&self) {
        let due = std::mem::take(&mut *self.due.lock().unwrap_or_else(|e| e.into_inner()));
        for (i, outbox) in due.iter().enumerate() {
            if i > 0 && i % FLUSH_CHUNK == 0 {
                tokio::task::yield_now().await;
            }
            outbox.flush_deferred();
        }
    }

    /// Writes every due outbox (in the order they became due).
    pub fn flush(&self) {
        let due = std::mem::take(&mut *self.due.lock().unwrap_or_else(|e| e.into_inner()));
        for outbox in &due {
            outbox.flush_deferred();
        }
    }
}

fn wake(waker: Option<Waker>) {
    if let Some(w) = waker {
        w.wake();
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

    /// A waker that counts its wake-ups.
    struct Counter(std::sync::atomic::AtomicUsize);
    impl std::task::Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting_waker() -> (Arc<Counter>, Waker) {
        let counter = Arc::new(Counter(Default::default()));
        (counter.clone(), Waker::from(counter))
    }

    #[test]
    fn poll_drain_takes_everything_then_waits_for_the_next_push() {
        let o = outbox(10);
        let (counter, waker) = counting_waker();
        let cx = Context::from_waker(&waker);
        let mut got = Vec::new();
        assert!(o.poll_drain(&cx, |f| got.push(f)).is_pending());
        o.push(Frame::from("a"));
        o.push(Frame::from("b"));
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            1,
            "woken once: when the queue stopped being empty"
        );
        assert_eq!(o.poll_drain(&cx, |f| got.push(f)), Poll::Ready(None));
        assert_eq!(
            got.iter().map(|f| f.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(o.poll_drain(&cx, |f| got.push(f)).is_pending());
        o.close(4009, "bye", false);
        assert_eq!(counter.0.load(Ordering::SeqCst), 2, "a close request wakes");
        match o.poll_drain(&cx, |f| got.push(f)) {
            Poll::Ready(Some(c)) => assert_eq!(c.code, 4009),
            other => panic!("expected the close request, got {other:?}"),
        }
    }

    #[test]
    fn poll_close_sees_an_overflow_while_the_socket_is_busy() {
        let o = outbox(2);
        let (counter, waker) = counting_waker();
        let cx = Context::from_waker(&waker);
        assert!(o.poll_close(&cx).is_pending());
        o.push(Frame::from("a"));
        o.push(Frame::from("b"));
        assert!(o.poll_close(&cx).is_pending(), "frames alone are no close");
        assert!(!o.push(Frame::from("c")));
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);
        match o.poll_close(&cx) {
            Poll::Ready(c) => assert_eq!(c.code, 4100),
            Poll::Pending => panic!("the overflow must be seen"),
        }
    }

    #[tokio::test]
    async fn ready_is_edge_triggered_frames_left_queued_do_not_wake_again() {
        let o = outbox(10);
        o.push(Frame::from("a"));
        tokio::time::timeout(std::time::Duration::from_secs(5), o.ready())
            .await
            .expect("a push before waiting is not lost");
        let again = tokio::time::timeout(std::time::Duration::from_millis(50), o.ready()).await;
        assert!(
            again.is_err(),
            "the frame is still queued but nothing new came"
        );
        o.push(Frame::from("b"));
        assert_eq!(o.len(), 2);
    }

    /// Takes what it is told to from the front of the queue and records it; keeps a frame it
    /// began, as a transport does. The real socket path (`DirectTcp` in `transport::ws`) is
    /// exercised over 127.0.0.1 by its own tests and `tests/websocket.rs`; this checks the
    /// outbox's side of the contract: when a direct write may happen and what follows from it.
    struct Scripted {
        /// Whole frames the socket takes per call (`usize::MAX`: all) and bytes of the next.
        answer: Mutex<(usize, usize)>,
        written: Mutex<Vec<String>>,
        calls: std::sync::atomic::AtomicUsize,
        /// The frame begun and not finished, with the bytes written: the transport's to finish.
        unfinished: Mutex<Option<(String, usize)>>,
    }

    impl DirectWrite for Scripted {
        fn try_write(&self, frames: &VecDeque<Frame>) -> Wrote {
            self.calls.fetch_add(1, Ordering::SeqCst);
            assert!(
                self.unfinished.lock().unwrap().is_none(),
                "a direct write while a frame is unfinished"
            );
            let (whole, partial) = *self.answer.lock().unwrap();
            let whole = whole.min(frames.len());
            let mut written = self.written.lock().unwrap();
            written.extend(frames.iter().take(whole).map(|f| f.as_str().to_owned()));
            let partial = if whole < frames.len() { partial } else { 0 };
            if partial > 0 {
                written.push(format!("{}…", &frames[whole].as_str()[..partial]));
                *self.unfinished.lock().unwrap() = Some((frames[whole].as_str().into(), partial));
            }
            Wrote {
                frames: whole + usize::from(partial > 0),
                unfinished: partial > 0,
            }
        }
    }

    impl Scripted {
        /// The transport takes the frame it has to finish.
        fn finish(&self) -> Option<(String, usize)> {
            self.unfinished.lock().unwrap().take()
        }
    }

    const ALL: (usize, usize) = (usize::MAX, 0);
    const FULL: (usize, usize) = (0, 0);

    fn direct_outbox() -> (Outbox, Arc<Scripted>) {
        let o = outbox(10);
        let d = Arc::new(Scripted {
            answer: Mutex::new(ALL),
            written: Mutex::new(Vec::new()),
            calls: Default::default(),
            unfinished: Default::default(),
        });
        o.set_direct(d.clone());
        (o, d)
    }

    fn names(frames: &[Frame]) -> Vec<&str> {
        frames.iter().map(|f| f.as_str()).collect()
    }

    #[test]
    fn an_idle_connection_gets_frames_written_directly_a_busy_one_gets_them_queued() {
        let (o, d) = direct_outbox();
        let (counter, waker) = counting_waker();
        let cx = Context::from_waker(&waker);
        // A new connection's transport has nothing in hand: idle from the start.
        assert!(o.push(Frame::from("a")));
        assert_eq!(o.len(), 0, "written, not queued");
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            0,
            "a direct write wakes nobody"
        );
        o.hold(|_| panic!("nothing was queued"));
        o.push(Frame::from("b"));
        o.push(Frame::from("c"));
        assert_eq!(o.len(), 2, "the transport has frames of its own in hand");
        let mut got = Vec::new();
        assert!(o.poll_drain(&cx, |f| got.push(f)).is_ready());
        assert!(o.poll_drain(&cx, |_| {}).is_pending());
        o.push(Frame::from("d"));
        assert_eq!(*d.written.lock().unwrap(), ["a", "d"]);
        assert_eq!(o.len(), 0);
        assert_eq!(names(&got), ["b", "c"]);
    }

    #[test]
    fn what_the_socket_does_not_take_is_queued_in_order_and_the_transport_woken() {
        let (o, d) = direct_outbox();
        let (counter, waker) = counting_waker();
        let cx = Context::from_waker(&waker);
        assert!(o.poll_drain(&cx, |_| {}).is_pending());
        *d.answer.lock().unwrap() = (0, 3);
        o.push(Frame::from("half"));
        *d.answer.lock().unwrap() = ALL;
        o.push(Frame::from("next"));
        assert_eq!(
            *d.written.lock().unwrap(),
            ["hal…"],
            "nothing goes direct behind a queued frame"
        );
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        let mut got = Vec::new();
        assert_eq!(
            o.poll_drain(&cx, |f| got.push(f)),
            Poll::Ready(None),
            "the transport is due: it has a frame to finish"
        );
        assert_eq!(
            d.finish(),
            Some(("half".into(), 3)),
            "the transport finishes the frame"
        );
        assert_eq!(names(&got), ["next"]);
        assert!(o.poll_drain(&cx, |_| {}).is_pending());
        *d.answer.lock().unwrap() = FULL;
        o.push(Frame::from("full"));
        assert_eq!(o.len(), 1);
        assert_eq!(counter.0.load(Ordering::SeqCst), 2, "a blocked write wakes");
        o.detach_direct();
        assert!(o.poll_drain(&cx, |_| {}).is_ready());
        assert!(o.poll_drain(&cx, |_| {}).is_pending());
        *d.answer.lock().unwrap() = ALL;
        o.push(Frame::from("after"));
        assert_eq!(o.len(), 1, "detached: queued from now on");
    }

    #[test]
    fn a_frame_a_direct_write_began_stays_the_transports_and_nothing_goes_direct_behind_it() {
        let (o, d) = direct_outbox();
        let (counter, waker) = counting_waker();
        let cx = Context::from_waker(&waker);
        assert!(o.poll_drain(&cx, |_| {}).is_pending());
        *d.answer.lock().unwrap() = (0, 2);
        o.push(Frame::from("begun"));
        assert_eq!(o.len(), 0, "taken by the transport");
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "which is woken");
        *d.answer.lock().unwrap() = ALL;
        o.push(Frame::from("queued"));
        assert_eq!(o.len(), 1, "busy: queued behind the unfinished frame");
        let mut got = Vec::new();
        o.hold(|f| got.push(f));
        assert_eq!(d.finish(), Some(("begun".into(), 2)));
        assert_eq!(names(&got), ["queued"]);
        assert_eq!(d.calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn deferred_pushes_share_one_write_when_flushed_and_wake_nobody() {
        let (o, d) = direct_outbox();
        let (counter, waker) = counting_waker();
        let cx = Context::from_waker(&waker);
        assert!(o.poll_drain(&cx, |_| {}).is_pending());
        assert_eq!(o.push_deferred(Frame::from("a")), Pushed::Deferred);
        assert_eq!(
            o.push_deferred(Frame::from("b")),
            Pushed::Queued,
            "already due: the caller must not hand it over twice"
        );
        assert_eq!(d.calls.load(Ordering::SeqCst), 0, "nothing written yet");
        o.flush_deferred();
        assert_eq!(d.calls.load(Ordering::SeqCst), 1, "one write for both");
        assert_eq!(*d.written.lock().unwrap(), ["a", "b"]);
        assert_eq!(o.len(), 0);
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
        o.flush_deferred();
        assert_eq!(
            d.calls.load(Ordering::SeqCst),
            1,
            "a second flush has nothing to do"
        );
        // What the socket doesn't take goes to the transport, in order, after the begun frame.
        assert_eq!(o.push_deferred(Frame::from("c")), Pushed::Deferred);
        o.push_deferred(Frame::from("d"));
        o.push_deferred(Frame::from("e"));
        *d.answer.lock().unwrap() = (1, 1);
        o.flush_deferred();
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            1,
            "the transport is woken"
        );
        let mut got = Vec::new();
        assert_eq!(o.poll_drain(&cx, |f| got.push(f)), Poll::Ready(None));
        assert_eq!(d.finish(), Some(("d".into(), 1)));
        assert_eq!(names(&got), ["e"]);
    }

    #[test]
    fn a_transport_that_takes_a_deferred_queue_over_is_not_written_behind_its_back() {
        let (o, d) = direct_outbox();
        assert_eq!(o.push_deferred(Frame::from("a")), Pushed::Deferred);
        let mut got = Vec::new();
        o.hold(|f| got.push(f));
        o.flush_deferred();
        assert_eq!(d.calls.load(Ordering::SeqCst), 0);
        assert_eq!(names(&got), ["a"]);
        // Busy from the start (a transport writing a frame of its own): queued, not deferred.
        assert_eq!(o.push_deferred(Frame::from("b")), Pushed::Queued);
        assert_eq!(o.len(), 1);
    }

    #[test]
    fn flusher_writes_every_due_outbox_once_and_counts_deliveries() {
        let flusher = Arc::new(Flusher::default());
        let (a, da) = direct_outbox();
        let (b, db) = direct_outbox();
        let plain = outbox(1);
        let to = [Arc::new(a), Arc::new(b), Arc::new(plain)];
        // No runtime here: the flusher writes before fan_out returns.
        assert_eq!(flusher.fan_out(to.iter(), &Frame::from("x")), 3);
        assert_eq!(*da.written.lock().unwrap(), ["x"]);
        assert_eq!(*db.written.lock().unwrap(), ["x"]);
        assert_eq!(to[2].len(), 1, "no direct path: queued for its transport");
        assert_eq!(
            flusher.fan_out(to.iter(), &Frame::from("y")),
            2,
            "the full plain outbox overflowed"
        );
        assert_eq!(*da.written.lock().unwrap(), ["x", "y"]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn on_a_runtime_the_flush_waits_until_the_publisher_yields() {
        let flusher = Arc::new(Flusher::default());
        let (a, da) = direct_outbox();
        let to = [Arc::new(a)];
        flusher.fan_out(to.iter(), &Frame::from("1"));
        flusher.fan_out(to.iter(), &Frame::from("2"));
        assert_eq!(da.calls.load(Ordering::SeqCst), 0);
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert_eq!(da.calls.load(Ordering::SeqCst), 1, "both events, one write");
        assert_eq!(*da.written.lock().unwrap(), ["1", "2"]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_flusher_lets_other_tasks_run_between_chunks_and_keeps_each_sockets_order() {
        let flusher = Arc::new(Flusher::default());
        let n = 2 * FLUSH_CHUNK + 1;
        let (outboxes, scripts): (Vec<_>, Vec<_>) = (0..n)
            .map(|_| {
                let (o, d) = direct_outbox();
                (Arc::new(o), d)
            })
            .unzip();
        assert_eq!(flusher.fan_out(outboxes.iter(), &Frame::from("1")), n);
        let written = |scripts: &[Arc<Scripted>]| {
            scripts
                .iter()
                .filter(|d| d.calls.load(Ordering::SeqCst) > 0)
                .count()
        };
        assert_eq!(
            written(&scripts),
            0,
            "the flush waits for the publisher to yield"
        );
        // A task spawned after the publish: without yields it would only ever see 0 or n.
        let probe = {
            let (flusher, outboxes, scripts) = (flusher.clone(), outboxes.clone(), scripts.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..100 {
                    let w = written(&scripts);
                    if w > 0 && w < n && seen.is_empty() {
                        // Publish again mid-flush: written sockets get it deferred anew, the
                        // others queue it behind the frame they are still waiting for.
                        assert_eq!(flusher.fan_out(outboxes.iter(), &Frame::from("2")), n);
                    }
                    seen.push(w);
                    if w == n {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                seen
            })
        };
        let seen = probe.await.unwrap();
        assert!(
            seen.iter().any(|&w| w > 0 && w < n),
            "another task ran while the flush was part-way: {seen:?}"
        );
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        for d in &scripts {
            assert_eq!(*d.written.lock().unwrap(), ["1", "2"]);
        }
    }
}
