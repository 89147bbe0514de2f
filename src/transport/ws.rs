//! WebSocket transport over an upgraded hyper connection, with our own framing
//! (`wsframe`): reads client frames into the session, writes the session's outbox, drives the
//! liveness timer, and closes with the code the session or the hub asked for.
//!
//! Built for many idle connections on a small box: an idle connection holds no read or write
//! buffer. Reads go through a stack buffer during the poll and only an incomplete frame is
//! kept on the heap; writes hand each queued `Frame` (shared by every subscriber) to the kernel
//! with `writev`, header and payload side by side, without copying it.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use super::wsframe::{self, Decoder, Incoming, WsError};
use crate::hub::{App, Frame, Outbox};
use crate::protocol::{message, CloseCode, SocketId};
use crate::session::{self, Liveness, Session, Tick};

/// How long a queued write may make no progress before the peer is considered gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a closing handshake may take to flush.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes read per poll (on the stack, never kept per connection).
const READ_CHUNK: usize = 4096;
/// Frames handed to one `writev`.
const MAX_IOV: usize = 64;

type Io = TokioIo<Upgraded>;

/// Everything a connection needs from the server.
pub struct WsParams {
    pub liveness: Liveness,
    pub outbound_queue: usize,
    /// Opt-in: wait this long after the first queued frame so more share one `writev`.
    pub coalesce: Duration,
    pub conn_id: u64,
    pub socket_id: SocketId,
    pub shutdown: watch::Receiver<bool>,
    /// Counts this connection in `/metrics` while it is open, and its frames and bytes.
    pub conn: crate::metrics::ConnectionGuard,
}

/// One queued server frame: a shared text `Frame` (header added on write) or raw bytes
/// (control frames).
enum Out {
    Text(Frame),
    Raw(Vec<u8>),
}

impl Out {
    fn payload(&self) -> &[u8] {
        match self {
            Out::Text(f) => f.as_bytes(),
            Out::Raw(b) => b,
        }
    }
}

/// Frames waiting for the kernel; the first may be partly written.
#[derive(Default)]
struct WriteQueue {
    frames: VecDeque<Out>,
    /// Bytes of the first frame (header + payload) already written.
    offset: usize,
}

impl WriteQueue {
    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Keeps only a partly written first frame (it must be finished to keep the stream valid).
    fn truncate_unsent(&mut self) {
        let keep = usize::from(self.offset > 0);
        self.frames.truncate(keep);
    }

    /// Writes as much as the socket takes; `Ready(Ok)` once everything is written.
    fn poll_flush(&mut self, cx: &mut Context<'_>, io: &mut Io) -> Poll<std::io::Result<()>> {
        while !self.frames.is_empty() {
            let mut headers = [[0u8; 10]; MAX_IOV / 2];
            let mut lens = [0usize; MAX_IOV / 2];
            let n = self.frames.len().min(MAX_IOV / 2);
            for (i, out) in self.frames.iter().take(n).enumerate() {
                lens[i] = match out {
                    Out::Text(f) => {
                        wsframe::encode_header(wsframe::OP_TEXT, f.len(), &mut headers[i])
                    }
                    Out::Raw(_) => 0,
                };
            }
            let mut slices: [IoSlice<'_>; MAX_IOV] = [IoSlice::new(&[]); MAX_IOV];
            let mut count = 0;
            let mut skip = self.offset;
            for (i, out) in self.frames.iter().take(n).enumerate() {
                for part in [&headers[i][..lens[i]], out.payload()] {
                    if skip >= part.len() {
                        skip -= part.len();
                        continue;
                    }
                    slices[count] = IoSlice::new(&part[skip..]);
                    skip = 0;
                    count += 1;
                }
            }
            let written = match Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(w)) => w,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            let mut left = written;
            while left > 0 {
                let Some(first) = self.frames.front() else {
                    break;
                };
                let total = match first {
                    Out::Text(f) => wsframe::header_len(f.len()) + f.len(),
                    Out::Raw(b) => b.len(),
                };
                let remaining = total - self.offset;
                if left >= remaining {
                    left -= remaining;
                    self.offset = 0;
                    self.frames.pop_front();
                } else {
                    self.offset += left;
                    left = 0;
                }
            }
        }
        if self.frames.capacity() > 64 {
            self.frames = VecDeque::new();
        }
        match Pin::new(&mut *io).poll_flush(cx) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// What the socket did while we waited.
enum IoEvent {
    /// Everything queued was written.
    Flushed,
    /// Bytes arrived and were decoded into `incoming`.
    Read,
    /// The peer closed the TCP stream.
    Eof,
    Failed(String),
    Protocol(WsError),
}

/// The read side's state: an incomplete frame (only while one is in flight) and reassembly.
#[derive(Default)]
struct ReadState {
    partial: Vec<u8>,
    decoder: Decoder,
}

impl ReadState {
    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut Io,
        limit: usize,
        incoming: &mut Vec<Incoming>,
    ) -> Poll<IoEvent> {
        // Not zeroed: this runs on every wake-up, and only the bytes read are looked at.
        let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut rb = ReadBuf::uninit(&mut chunk);
        match Pin::new(&mut *io).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(IoEvent::Failed(e.to_string())),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(IoEvent::Eof);
                }
                let result = if self.partial.is_empty() {
                    let data = rb.filled_mut();
                    self.decoder.decode(data, limit, incoming).map(|used| {
                        if used < n {
                            self.partial.extend_from_slice(&data[used..]);
                        }
                    })
                } else {
                    self.partial.extend_from_slice(rb.filled());
                    let mut buf = std::mem::take(&mut self.partial);
                    self.decoder.decode(&mut buf, limit, incoming).map(|used| {
                        buf.drain(..used);
                        if buf.capacity() > 2 * READ_CHUNK && buf.len() < READ_CHUNK {
                            buf.shrink_to_fit();
                        }
                        self.partial = buf;
                    })
                };
                match result {
                    Ok(()) => Poll::Ready(IoEvent::Read),
                    Err(e) => Poll::Ready(IoEvent::Protocol(e)),
                }
            }
        }
    }
}

/// Writes `frames` and a close frame, bounded by `CLOSE_TIMEOUT`.
async fn close_with(
    io: &mut Io,
    queue: &mut WriteQueue,
    code: u16,
    reason: &str,
    with_error: bool,
) {
    if with_error {
        queue
            .frames
            .push_back(Out::Text(Frame::from(message::error(Some(code), reason))));
    }
    queue
        .frames
        .push_back(Out::Raw(wsframe::close_frame(code, reason)));
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, poll_fn(|cx| queue.poll_flush(cx, io))).await;
}

/// Refuses an upgraded connection with a Pusher error code (unknown app, quota, origin…).
pub async fn refuse(upgraded: Upgraded, code: CloseCode) {
    let mut io = TokioIo::new(upgraded);
    let (_, code, reason) = session::refusal(code);
    close_with(&mut io, &mut WriteQueue::default(), code, reason, true).await;
}

/// Runs an accepted connection (already counted against the app's quota) to its end.
pub async fn run(upgraded: Upgraded, app: Arc<App>, params: WsParams) {
    // Taken apart at once: a struct partly moved out of stays in the future as a whole.
    let WsParams {
        liveness,
        outbound_queue,
        coalesce,
        conn_id,
        socket_id,
        shutdown,
        conn,
    } = params;
    let mut io = TokioIo::new(upgraded);
    // The transport's own cap; messages between the app limit and this get a pusher:error.
    let limit = (app.config.max_message_bytes * 2).max(64 * 1024);
    let outbox = Arc::new(Outbox::new(conn_id, socket_id, outbound_queue));
    let mut session = Session::open(app, outbox.clone(), liveness);
    let mut shutdown = shutdown;
    let mut queue = WriteQueue::default();
    let mut read = ReadState::default();
    let mut incoming: Vec<Incoming> = Vec::new();
    // Peers that keep alive with WebSocket control frames (mobile SDKs) are pinged the same way.
    let mut control_pinger = false;
    // The outbox may hold frames: drain it before waiting.
    let mut ready = true;
    let mut stalled_since: Option<Instant> = None;
    // Long-lived waits, registered once rather than on every wake-up: the shutdown signal and
    // the liveness/write timer (re-armed only when its deadline moves).
    let shutdown_signal = shutdown.changed();
    tokio::pin!(shutdown_signal);
    let timer = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    let mut liveness: Option<Instant> = None;
    let outbox_wake = outbox.notified();
    tokio::pin!(outbox_wake);

    loop {
        if ready {
            ready = false;
            let close = outbox.drain_with(|f| {
                conn.frame_out(f.len());
                queue.frames.push_back(Out::Text(f));
            });
            if let Some(c) = close {
                if c.code == CloseCode::OverCapacity.code() {
                    // A client that can't keep up: don't wait for its backlog.
                    queue.truncate_unsent();
                }
                Box::pin(close_with(
                    &mut io,
                    &mut queue,
                    c.code,
                    &c.reason,
                    c.with_error,
                ))
                .await;
                break;
            }
        }
        // The liveness deadline only moves when the peer says something or the timer fires:
        // a wake-up that only brings frames to send doesn't read the clock.
        let mut deadline = match liveness {
            Some(d) => d,
            None => match session.tick(Instant::now()) {
                Tick::Wait(t) => {
                    liveness = Some(t);
                    t
                }
                Tick::Ping => {
                    if control_pinger {
                        queue
                            .frames
                            .push_back(Out::Raw(wsframe::encode(wsframe::OP_PING, b"")));
                    } else {
                        let ping = Frame::from(message::ping());
                        conn.frame_out(ping.len());
                        queue.frames.push_back(Out::Text(ping));
                    }
                    continue;
                }
                Tick::Close => {
                    tracing::info!(socket_id = %session.socket_id(), reason = CloseCode::PongTimeout.message(), "websocket connection closed (4201)");
                    let c = CloseCode::PongTimeout;
                    Box::pin(close_with(&mut io, &mut queue, c.code(), c.message(), true)).await;
                    break;
                }
            },
        };
        // A write the socket would not take (set in the poll below); most writes finish at once
        // and never touch the timer.
        if let Some(since) = stalled_since {
            if Instant::now() >= since + WRITE_TIMEOUT {
                tracing::info!(socket_id = %session.socket_id(), reason = "write timed out (peer not reading)", "websocket connection error");
                break;
            }
            deadline = deadline.min(since + WRITE_TIMEOUT);
        }
        if armed != Some(deadline) {
            timer.as_mut().reset(deadline.into());
            armed = Some(deadline);
        }
        let writing = !queue.is_empty();
        let event = tokio::select! {
            biased;
            _ = &mut shutdown_signal => {
                let c = CloseCode::ReconnectNow;
                Box::pin(close_with(&mut io, &mut queue, c.code(), c.message(), true)).await;
                break;
            }
            // While a write is in flight only a close request (overflow, terminate) matters;
            // frames queued meanwhile are drained once the write is done.
            _ = &mut outbox_wake => {
                outbox_wake.set(outbox.notified());
                if !writing || outbox.is_closing() {
                    ready = true;
                    if !writing && !coalesce.is_zero() && !outbox.is_closing() {
                        Box::pin(tokio::time::sleep(coalesce)).await;
                    }
                }
                continue;
            }
            ev = poll_fn(|cx| {
                if writing {
                    match queue.poll_flush(cx, &mut io) {
                        Poll::Ready(Ok(())) => return Poll::Ready(IoEvent::Flushed),
                        Poll::Ready(Err(e)) => return Poll::Ready(IoEvent::Failed(e.to_string())),
                        Poll::Pending => {
                            stalled_since.get_or_insert_with(Instant::now);
                        }
                    }
                }
                read.poll_read(cx, &mut io, limit, &mut incoming)
            }) => ev,
            _ = &mut timer => { armed = None; liveness = None; continue }
        };
        match event {
            IoEvent::Flushed => {
                stalled_since = None;
                // More may have been queued while we were writing.
                ready = true;
            }
            IoEvent::Read => {
                liveness = None;
                let mut closed = false;
                for msg in incoming.drain(..) {
                    match msg {
                        Incoming::Text(t) => {
                            conn.frame_in(t.len());
                            session.handle_text(&t);
                        }
                        Incoming::Ping(payload) => {
                            control_pinger = true;
                            session.activity();
                            queue
                                .frames
                                .push_back(Out::Raw(wsframe::encode(wsframe::OP_PONG, &payload)));
                        }
                        Incoming::Pong => session.activity(),
                        Incoming::Binary(len) => {
                            conn.frame_in(len);
                            session.activity();
                            outbox.push(Frame::from(message::error(None, "Binary frames are not part of the Pusher protocol: send JSON text frames")));
                        }
                        Incoming::Close(code) => {
                            // Answer the closing handshake with the peer's code.
                            let echo = match code {
                                Some(c)
                                    if (1000..=4999).contains(&c)
                                        && !matches!(c, 1004..=1006 | 1015) =>
                                {
                                    c
                                }
                                _ => 1000,
                            };
                            queue
                                .frames
                                .push_back(Out::Raw(wsframe::close_frame(echo, "")));
                            // Boxed, like every close path: rare awaits must not grow every
                            // connection's future (an idle connection's whole footprint).
                            let _ = Box::pin(tokio::time::timeout(
                                CLOSE_TIMEOUT,
                                poll_fn(|cx| queue.poll_flush(cx, &mut io)),
                            ))
                            .await;
                            closed = true;
                            break;
                        }
                    }
                }
                if closed {
                    break;
                }
                ready = true;
            }
            IoEvent::Eof => break,
            IoEvent::Failed(e) => {
                tracing::debug!(socket_id = %session.socket_id(), error = %e, "websocket connection error");
                break;
            }
            IoEvent::Protocol(e) => {
                tracing::info!(socket_id = %session.socket_id(), reason = %e, "websocket protocol error");
                queue.truncate_unsent();
                Box::pin(close_with(
                    &mut io,
                    &mut queue,
                    e.close_code(),
                    &e.to_string(),
                    false,
                ))
                .await;
                break;
            }
        }
    }
    // Dropping the session leaves every channel, presence and signin, and frees the quota slot.
    drop(session);
}
