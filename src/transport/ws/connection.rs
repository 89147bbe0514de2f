//! `Connection`: one WebSocket connection's task, from the upgrade to the close. It waits on
//! four things at once — the socket, the outbox, a timer and the shutdown signal — and each
//! turn of its loop is made of three steps:
//!
//! - **tick** ([`Connection::tick`]): the liveness timer. Pings a client that has been quiet for
//!   the activity timeout, closes with 4201 one that didn't answer, and gives up on a peer that
//!   stopped reading (a write stalled for [`WRITE_TIMEOUT`]).
//! - **write** ([`Connection::poll_write`]): writes what the task has in hand (a frame a direct
//!   write began first), then takes what the outbox has, until the socket is full or nothing is
//!   left — then the outbox may write to the socket directly again.
//! - **read** ([`Connection::poll_read`], [`Connection::on_frames`]): decodes what the client
//!   sent and hands it to the session, which answers through the outbox.
//!
//! Every close goes the same way: frames already queued, an optional `pusher:error`, the close
//! frame, bounded by a timeout. Rare awaits (closes, the coalescing sleep) are boxed:
//! an idle connection's whole footprint is this task's future, so it must not carry them.

use std::future::{poll_fn, Future};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::direct::TakeUnfinished;
use super::read::{Read, ReadState};
use super::write::{Out, WriteQueue, CLOSE_TIMEOUT};
use super::WsParams;
use crate::hub::{App, CloseRequest, DirectWrite, Outbox};
use crate::metrics::ConnectionGuard;
use crate::protocol::{message, CloseCode, Frame};
use crate::resume::ProofTick;
use crate::session::{Session, Tick};
use crate::transport::wsframe::{self, Incoming};

/// How long a queued write may make no progress before the peer is considered gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a resumable connection closed for a shutdown waits for the client's answering
/// Close, which proves what it received (`Session::close_answered`). pusher-js answers within
/// a round trip; a client that does not (its link is down) costs the shutdown this much at
/// most, since every connection waits in its own task, at the same time.
const CLOSE_ANSWER_WAIT: Duration = Duration::from_secs(1);

/// One connection's state, held by its task.
pub(super) struct Connection<I> {
    io: I,
    outbox: Arc<Outbox>,
    session: Session,
    /// Counts this connection in `/metrics` while it is open, and its frames and bytes.
    conn: ConnectionGuard,
    queue: WriteQueue,
    read: ReadState,
    incoming: Vec<Incoming>,
    /// The transport's own cap; messages between the app limit and this get a pusher:error.
    limit: usize,
    /// Opt-in: wait this long after the first queued frame so more share one `writev`.
    coalesce: Duration,
    /// Peers that keep alive with WebSocket control frames (mobile SDKs) are pinged the same way.
    control_pinger: bool,
    /// Since when a write the socket would not take has been waiting.
    stalled_since: Option<Instant>,
    /// The session's liveness deadline, once asked (see [`tick`](Self::tick)).
    liveness: Option<Instant>,
    /// A resumable session's frames were taken: once written, the tick step may prove them.
    prove: bool,
}

/// What the write or read step, the timer or the shutdown signal brought while we waited.
enum IoEvent {
    /// A write could not finish: the write timeout starts now.
    Stalled,
    /// Frames were taken from an idle outbox and the coalescing window is on: wait, then write.
    Coalesce,
    /// The session or the hub asked to close (after the frames taken with it).
    Close(CloseRequest),
    Read(Read),
    WriteFailed(String),
    /// The liveness or write-timeout deadline passed.
    Timer,
    /// A resumable session's frames are written: time for the tick step's proof.
    Wrote,
    /// The server is shutting down.
    Shutdown,
}

/// What the loop does next.
enum Then {
    /// Go round: write what is queued, wait again.
    Go,
    /// Wait for the coalescing window, then take what else arrived.
    Coalesce,
    /// Close with this request after what is queued.
    Close(CloseRequest),
    /// The peer closed: flush the answer to its closing handshake, then end.
    Reply,
    End,
}

impl<I: AsyncRead + AsyncWrite + TakeUnfinished + Unpin> Connection<I> {
    /// Runs a connection to its end. `read_ahead`: what hyper read past the upgrade request;
    /// `direct`: the socket's direct write path, if it has one.
    pub(super) async fn run(
        io: I,
        read_ahead: Bytes,
        direct: Option<Arc<dyn DirectWrite>>,
        app: Arc<App>,
        params: WsParams,
    ) {
        // Taken apart at once: a struct partly moved out of stays in the future as a whole.
        let WsParams {
            liveness,
            outbound_queue,
            coalesce,
            conn_id,
            socket_id,
            shutdown,
            conn,
            resume,
        } = params;
        let limit = super::frame_limit(app.config.max_message_bytes);
        let outbox = Arc::new(Outbox::new(conn_id, socket_id, outbound_queue));
        // The opt-in coalescing window wants frames to wait and share a write: queued path only.
        if let Some(d) = direct.filter(|_| coalesce.is_zero()) {
            outbox.set_direct(d);
        }
        let session = Session::connect(app, outbox.clone(), liveness, resume).await;
        let mut c = Connection {
            io,
            session,
            outbox,
            conn,
            queue: WriteQueue::default(),
            read: ReadState::default(),
            incoming: Vec::new(),
            limit,
            coalesce,
            control_pinger: false,
            stalled_since: None,
            liveness: None,
            prove: false,
        };
        // What the client sent right after the upgrade request, decoded before the first wait.
        // Only the undecoded rest is kept: the bytes are a view of hyper's whole read buffer,
        // which must not live on with every connection.
        let mut early = (!read_ahead.is_empty())
            .then(|| IoEvent::Read(c.read.feed(&read_ahead, limit, &mut c.incoming)));
        drop(read_ahead);
        // Set after a coalescing wait: take what else arrived before writing.
        let mut ready = false;
        // Long-lived waits, registered once rather than on every wake-up: the shutdown signal
        // and the liveness/write timer (re-armed only when its deadline moves).
        let mut shutdown = shutdown;
        let stop_check = shutdown.clone();
        let shutdown_signal = shutdown.changed();
        tokio::pin!(shutdown_signal);
        // Polled once to register this task with the signal. After that it is looked at only
        // when the signal's version moved (an atomic load per wake-up, not a lock): the waker
        // it holds stays this task's, so the shutdown still wakes us.
        let stopping =
            poll_fn(|cx| Poll::Ready(shutdown_signal.as_mut().poll(cx).is_ready())).await;
        let timer = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;

        loop {
            if ready {
                ready = false;
                if let Some(close) = c.take_all() {
                    early = Some(IoEvent::Close(close));
                }
            }
            let then = match c.tick() {
                Err(then) => then,
                Ok(deadline) => {
                    if armed != Some(deadline) {
                        timer.as_mut().reset(deadline.into());
                        armed = Some(deadline);
                    }
                    let event = match early.take() {
                        Some(event) => event,
                        None => tokio::select! {
                            biased;
                            _ = poll_fn(|_| {
                                if stopping || stop_check.has_changed().unwrap_or(true) {
                                    Poll::Ready(())
                                } else {
                                    Poll::Pending
                                }
                            }) => IoEvent::Shutdown,
                            event = poll_fn(|cx| match c.poll_write(cx) {
                                Poll::Ready(event) => Poll::Ready(event),
                                Poll::Pending => c.poll_read(cx),
                            }) => event,
                            _ = &mut timer => {
                                armed = None;
                                IoEvent::Timer
                            }
                        },
                    };
                    c.on_event(event)
                }
            };
            match then {
                Then::Go => {}
                Then::Coalesce => {
                    Box::pin(tokio::time::sleep(c.coalesce)).await;
                    ready = true;
                }
                Then::Close(r) => {
                    Box::pin(c.close(r)).await;
                    break;
                }
                Then::Reply => {
                    let flush = poll_fn(|cx| c.queue.poll_flush(cx, &mut c.io));
                    let _ = Box::pin(tokio::time::timeout(CLOSE_TIMEOUT, flush)).await;
                    break;
                }
                Then::End => break,
            }
        }
        c.end();
    }

    /// The tick step: the deadline to wake up at if nothing else happens — the session's
    /// liveness deadline or a stalled write's timeout — or what to do now.
    fn tick(&mut self) -> Result<Instant, Then> {
        // The liveness deadline only moves when the peer says something or the timer fires:
        // a wake-up that only brings frames to send doesn't read the clock.
        let mut deadline = match self.liveness {
            Some(d) => d,
            None => match self.session.tick(Instant::now()) {
                Tick::Wait(t) => {
                    self.liveness = Some(t);
                    t
                }
                Tick::Ping => {
                    self.ping();
                    return Err(Then::Go);
                }
                Tick::Close => {
                    let code = CloseCode::PongTimeout;
                    tracing::info!(socket_id = %self.session.socket_id(), reason = code.message(), "websocket connection closed (4201)");
                    self.hold();
                    return Err(Then::Close(request(code)));
                }
            },
        };
        // A resumable connection proves what it received with pings of its own.
        if self.session.is_resumable() {
            match self.session.proof_tick(Instant::now()) {
                ProofTick::Idle => {}
                ProofTick::At(t) => deadline = deadline.min(t),
                ProofTick::PingNow => {
                    self.ping();
                    return Err(Then::Go);
                }
            }
        }
        // A write the socket would not take (set in the write step); most writes finish at
        // once and never touch the timer.
        if let Some(since) = self.stalled_since {
            if Instant::now() >= since + WRITE_TIMEOUT {
                tracing::info!(socket_id = %self.session.socket_id(), reason = "write timed out (peer not reading)", "websocket connection error");
                return Err(Then::End);
            }
            deadline = deadline.min(since + WRITE_TIMEOUT);
        }
        Ok(deadline)
    }

    /// Queues a server ping, the way the peer keeps alive.
    fn ping(&mut self) {
        self.hold();
        if self.control_pinger {
            let ping = wsframe::encode(wsframe::OP_PING, b"");
            self.queue.push(Out::Raw(ping));
        } else {
            let ping = Frame::from(message::ping());
            self.conn.frame_out(ping.len());
            self.queue.push(Out::Text(ping));
        }
    }

    /// The write step: writes what the task has in hand, then takes what the outbox has, until
    /// the socket is full or nothing is left. `Pending` when it is done for now: everything is
    /// written and the outbox idle (it may write directly), or the socket is full and the stall
    /// already known.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<IoEvent> {
        let mut flushed = false;
        loop {
            if !self.queue.is_empty() {
                match self.queue.poll_flush(cx, &mut self.io) {
                    Poll::Ready(Ok(())) => {
                        self.stalled_since = None;
                        flushed = true;
                        if std::mem::take(&mut self.prove) {
                            return Poll::Ready(IoEvent::Wrote);
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(IoEvent::WriteFailed(e.to_string())),
                    Poll::Pending => {
                        // While a write is in flight only a close request (overflow,
                        // terminate) matters; frames queued meanwhile wait in the bounded
                        // outbox.
                        if let Poll::Ready(c) = self.outbox.poll_close(cx) {
                            return Poll::Ready(IoEvent::Close(c));
                        }
                        if self.stalled_since.is_none() {
                            self.stalled_since = Some(Instant::now());
                            return Poll::Ready(IoEvent::Stalled);
                        }
                        return Poll::Pending;
                    }
                }
            }
            let close = match self.take(|outbox, f| outbox.poll_drain(cx, f)) {
                Poll::Ready(close) => close,
                Poll::Pending => return Poll::Pending,
            };
            self.queue.finish_first(&self.io);
            if let Some(c) = close {
                return Poll::Ready(IoEvent::Close(c));
            }
            if !flushed && !self.coalesce.is_zero() {
                return Poll::Ready(IoEvent::Coalesce);
            }
            // Otherwise write what was taken at once.
        }
    }

    /// The read step: decodes what the socket has into `incoming`.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<IoEvent> {
        let read = self
            .read
            .poll_read(cx, &mut self.io, self.limit, &mut self.incoming);
        read.map(IoEvent::Read)
    }

    fn on_event(&mut self, event: IoEvent) -> Then {
        match event {
            // The deadline is recomputed with the stall by the next tick.
            IoEvent::Stalled | IoEvent::Wrote => Then::Go,
            IoEvent::Timer => {
                self.liveness = None;
                Then::Go
            }
            IoEvent::Coalesce => Then::Coalesce,
            IoEvent::Close(c) => {
                if c.code == CloseCode::OverCapacity.code() {
                    // A client that can't keep up: don't wait for its backlog.
                    self.queue.truncate_unsent();
                }
                Then::Close(c)
            }
            IoEvent::Shutdown => {
                self.hold_for_close();
                Then::Close(request(CloseCode::ReconnectNow))
            }
            IoEvent::Read(Read::Frames) => self.on_frames(),
            IoEvent::Read(Read::Eof) => Then::End,
            IoEvent::Read(Read::Failed(e)) | IoEvent::WriteFailed(e) => {
                tracing::debug!(socket_id = %self.session.socket_id(), error = %e, "websocket connection error");
                Then::End
            }
            IoEvent::Read(Read::Protocol(e)) => {
                tracing::info!(socket_id = %self.session.socket_id(), reason = %e, "websocket protocol error");
                self.hold();
                self.queue.truncate_unsent();
                Then::Close(CloseRequest {
                    code: e.close_code(),
                    reason: e.to_string(),
                    with_error: false,
                })
            }
        }
    }

    /// The rest of the read step: hands each decoded frame to the session.
    fn on_frames(&mut self) -> Then {
        self.liveness = None;
        let mut incoming = std::mem::take(&mut self.incoming);
        let mut then = Then::Go;
        for msg in incoming.drain(..) {
            match msg {
                Incoming::Text(t) => {
                    self.conn.frame_in(t.len());
                    self.session.handle_text(&t);
                }
                Incoming::Ping(payload) => {
                    self.hold();
                    self.control_pinger = true;
                    self.session.activity();
                    let pong = wsframe::encode(wsframe::OP_PONG, &payload);
                    self.queue.push(Out::Raw(pong));
                }
                Incoming::Pong => self.session.control_pong(),
                Incoming::Binary(data) => {
                    self.conn.frame_in(data.len());
                    self.session.activity();
                    self.outbox.push(Frame::from(message::error(
                        None,
                        "Binary frames are not part of the Pusher protocol: send JSON text frames",
                    )));
                }
                Incoming::Close(code) => {
                    // A Close the client starts proves nothing about delivery: frames the
                    // server wrote may cross it on the wire, and a browser drops messages
                    // that arrive once it is closing. Only an answer to the server's own
                    // Close does (`close_answer`).
                    self.session.peer_closed(code);
                    // Answer the closing handshake.
                    self.hold();
                    self.queue.push(Out::Raw(wsframe::close_reply(code)));
                    then = Then::Reply;
                    break;
                }
            }
        }
        // Kept (empty) for the next read: its capacity is reused.
        self.incoming = incoming;
        then
    }

    /// Marks the outbox busy before the task writes a frame of its own, taking what it had
    /// queued first (see [`Outbox::hold`]).
    fn hold(&mut self) {
        self.take(|outbox, f| outbox.hold(f));
        self.queue.finish_first(&self.io);
    }

    /// [`hold`](Self::hold) before the shutdown's Close. A resumable connection takes its last
    /// frames with the app's position index locked, so the head it notes is exactly what went
    /// ahead of the Close: a fan-out in progress would otherwise put a later event in the
    /// stream (replayed too: a duplicate) or leave one out of it.
    fn hold_for_close(&mut self) {
        let Some(r) = self.session.resume_app() else {
            return self.hold();
        };
        let index = r.index();
        self.hold();
        // A closing outbox (overflow: its queue was cleared; a terminate) lost frames at or
        // below the head: its Close proves nothing.
        if !self.outbox.is_closing() {
            self.session.close_queued(r.head());
        }
        drop(index);
    }

    /// Writes what is queued and the Close. A resumable connection closed by the shutdown
    /// then waits (bounded) for the client's answering Close: it proves every frame before
    /// the server's Close was read.
    async fn close(&mut self, r: CloseRequest) {
        let written = self
            .queue
            .close(&mut self.io, r.code, &r.reason, r.with_error)
            .await;
        if !written || !self.session.awaits_close_answer() {
            return;
        }
        let answer = poll_fn(|cx| self.poll_close_answer(cx, r.code));
        let answered = matches!(
            tokio::time::timeout(CLOSE_ANSWER_WAIT, answer).await,
            Ok(true)
        );
        tracing::debug!(socket_id = %self.session.socket_id(), answered, "resume: the client's answer to the server's close");
        if answered {
            self.session.close_answered();
        }
    }

    /// Reads until the client's Close: `true` when it answers the server's `code`. Browsers and
    /// pusher-js echo the code they got; a Close with another code is one the client started
    /// itself while ours was on the way (it may not have read what went before ours), and
    /// proves nothing. Everything else the client sends now is ignored: the session is over.
    fn poll_close_answer(&mut self, cx: &mut Context<'_>, code: u16) -> Poll<bool> {
        loop {
            let read = self
                .read
                .poll_read(cx, &mut self.io, self.limit, &mut self.incoming);
            match std::task::ready!(read) {
                Read::Frames => {
                    let close = self.incoming.iter().find_map(|m| match m {
                        Incoming::Close(c) => Some(*c),
                        _ => None,
                    });
                    self.incoming.clear();
                    if let Some(c) = close {
                        return Poll::Ready(c == Some(code));
                    }
                }
                Read::Eof | Read::Failed(_) | Read::Protocol(_) => return Poll::Ready(false),
            }
        }
    }

    /// Takes everything the outbox has, with a pending close request (after a coalescing wait).
    fn take_all(&mut self) -> Option<CloseRequest> {
        let close = self.take(|outbox, f| outbox.drain_with(f));
        self.queue.finish_first(&self.io);
        close
    }

    /// Runs one take from the outbox into the write queue, counting the frames once.
    fn take<R>(&mut self, from: impl FnOnce(&Outbox, &mut dyn FnMut(Frame)) -> R) -> R {
        let (mut frames, mut bytes) = (0, 0);
        let queue = &mut self.queue;
        let result = from(&self.outbox, &mut |f: Frame| {
            frames += 1;
            bytes += f.len();
            queue.push(Out::Text(f));
        });
        self.conn.frames_out(frames, bytes);
        if frames > 0 && self.session.is_resumable() {
            self.session.wrote();
            self.prove = true;
        }
        result
    }

    fn end(self) {
        // The socket closes with this task, not whenever the last holder of the outbox lets go.
        self.outbox.detach_direct();
        // Dropping the session leaves every channel, presence and signin, and frees the quota
        // slot.
        drop(self.session);
    }
}

/// A close request for one of Pusher's codes, with a `pusher:error` first.
fn request(code: CloseCode) -> CloseRequest {
    CloseRequest {
        code: code.code(),
        reason: code.message().into(),
        with_error: true,
    }
}
