//! WebSocket transport over an upgraded hyper connection, with our own framing
//! (`wsframe`): reads client frames into the session, writes the session's outbox, drives the
//! liveness timer, and closes with the code the session or the hub asked for.
//!
//! Built for many idle connections on a small box: an idle connection holds no read or write
//! buffer. Reads go through a stack buffer during the poll and only an incomplete frame is
//! kept on the heap; writes hand each queued `Frame` (shared by every subscriber) to the kernel
//! with `writev`, header and payload side by side, without copying it.
//!
//! Built for fan-out. A plain TCP connection is taken back from hyper and shared with its
//! outbox as a [`DirectWrite`]: while the connection is idle, a published frame goes to the
//! socket from the fan-out itself, and this task is not even woken. Only a backlog (the socket
//! was full, or the task had frames of its own in hand) reaches the task, where one poll drains
//! the outbox, writes, and reads. TLS connections stay behind hyper's boxed I/O and take the
//! queued path.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::wsframe::{self, Decoder, Incoming, WsError};
use crate::hub::{App, DirectWrite, Outbox, Wrote};
use crate::protocol::{message, CloseCode, Frame, SocketId};
use crate::session::{self, Liveness, Session, Tick};

/// How long a queued write may make no progress before the peer is considered gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a closing handshake may take to flush.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes read per poll (on the stack, never kept per connection).
const READ_CHUNK: usize = 4096;
/// Frames handed to one `writev` (two slices each, within Linux's `IOV_MAX` of 1024): a
/// socket's backlog goes out in one call.
const MAX_FRAMES: usize = 512;
/// Frames laid out on the stack; more take one allocation per `writev`.
const INLINE_FRAMES: usize = 8;

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

/// A plain TCP connection, shared by its task (reads, backlog and control frames) and its
/// outbox (direct writes of published frames while the task has nothing in hand).
struct DirectTcp {
    stream: TcpStream,
    frames: crate::metrics::FrameCounter,
    /// A frame a direct write began and the socket didn't take whole: the task finishes it
    /// before it writes anything else. Boxed: one word while empty (the common case, by far),
    /// allocated only while a socket is full mid-frame.
    unfinished: std::sync::Mutex<Option<Box<Unfinished>>>,
}

/// The rest of a frame a direct write began.
struct Unfinished {
    frame: Frame,
    /// Bytes of its encoding (header and payload) already on the wire.
    written: usize,
}

impl DirectWrite for DirectTcp {
    fn try_write(&self, frames: &VecDeque<Frame>) -> Wrote {
        let n = frames.len().min(MAX_FRAMES);
        // Never waits: tokio answers `WouldBlock` without a syscall while the socket is known
        // to be full. An error is left for the task's own write to meet and report.
        let written = if n <= INLINE_FRAMES {
            let mut headers = [[0u8; 10]; INLINE_FRAMES];
            let mut slices = [IoSlice::new(&[]); 2 * INLINE_FRAMES];
            let count = lay_out_text(frames, n, &mut headers, &mut slices);
            self.stream.try_write_vectored(&slices[..count])
        } else {
            let mut headers = vec![[0u8; 10]; n];
            let mut slices = vec![IoSlice::new(&[]); 2 * n];
            let count = lay_out_text(frames, n, &mut headers, &mut slices);
            self.stream.try_write_vectored(&slices[..count])
        };
        let mut left = written.unwrap_or(0);
        let (mut wrote, mut bytes) = (Wrote::default(), 0);
        for f in frames.iter().take(n) {
            if left == 0 {
                break;
            }
            let total = wsframe::header_len(f.len()) + f.len();
            if left < total {
                // Ours to finish from now on: the outbox only learns that we are busy.
                let mut slot = self.unfinished.lock().unwrap_or_else(|e| e.into_inner());
                debug_assert!(
                    slot.is_none(),
                    "no direct write while a frame is unfinished"
                );
                *slot = Some(Box::new(Unfinished {
                    frame: f.clone(),
                    written: left,
                }));
                wrote.unfinished = true;
            }
            left = left.saturating_sub(total);
            wrote.frames += 1;
            bytes += f.len();
        }
        self.frames.frames_out(wrote.frames as u64, bytes);
        wrote
    }
}

/// Fills `slices` with the first `n` frames as WebSocket text frames (header, payload); returns
/// how many slices are in use.
fn lay_out_text<'a>(
    frames: &'a VecDeque<Frame>,
    n: usize,
    headers: &'a mut [[u8; 10]],
    slices: &mut [IoSlice<'a>],
) -> usize {
    let mut count = 0;
    for (f, header) in frames.iter().take(n).zip(headers.iter_mut()) {
        let hlen = wsframe::encode_header(wsframe::OP_TEXT, f.len(), &mut *header);
        let header: &'a [u8; 10] = header;
        slices[count] = IoSlice::new(&header[..hlen]);
        slices[count + 1] = IoSlice::new(f.as_bytes());
        count += 2;
    }
    count
}

/// The task's side of a [`DirectTcp`]: async reads and writes over the shared stream.
struct SharedTcp(Arc<DirectTcp>);

/// The task's connection I/O, asked after every take from the outbox for a frame a direct
/// write left unfinished (only a [`SharedTcp`] ever has one).
trait TakeUnfinished {
    fn take_unfinished(&self) -> Option<Box<Unfinished>> {
        None
    }
}

impl TakeUnfinished for SharedTcp {
    fn take_unfinished(&self) -> Option<Box<Unfinished>> {
        self.0
            .unfinished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

impl TakeUnfinished for TokioIo<Upgraded> {}

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let stream = &self.0.stream;
        loop {
            std::task::ready!(stream.poll_read_ready(cx))?;
            match stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let stream = &self.0.stream;
        loop {
            std::task::ready!(stream.poll_write_ready(cx))?;
            match stream.try_write_vectored(bufs) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
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

    /// Fills `slices` with the first `n` frames (header, payload), skipping what of the first
    /// was already written; returns how many slices are in use.
    fn lay_out<'a>(
        &'a self,
        n: usize,
        headers: &'a mut [[u8; 10]],
        slices: &mut [IoSlice<'a>],
    ) -> usize {
        for (i, out) in self.frames.iter().take(n).enumerate() {
            if let Out::Text(f) = out {
                wsframe::encode_header(wsframe::OP_TEXT, f.len(), &mut headers[i]);
            }
        }
        let headers: &'a [[u8; 10]] = headers;
        let mut count = 0;
        let mut skip = self.offset;
        for (i, out) in self.frames.iter().take(n).enumerate() {
            let hlen = match out {
                Out::Text(f) => wsframe::header_len(f.len()),
                Out::Raw(_) => 0,
            };
            for part in [&headers[i][..hlen], out.payload()] {
                if skip >= part.len() {
                    skip -= part.len();
                    continue;
                }
                slices[count] = IoSlice::new(&part[skip..]);
                skip = 0;
                count += 1;
            }
        }
        count
    }

    /// Writes as much as the socket takes; `Ready(Ok)` once everything is written.
    fn poll_flush<I: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut I,
    ) -> Poll<std::io::Result<()>> {
        while !self.frames.is_empty() {
            let n = self.frames.len().min(MAX_FRAMES);
            // The usual case (a frame or a few) is laid out on the stack without touching more
            // of it than it needs; a long backlog (a burst) takes one allocation per `writev`.
            let result = if n <= INLINE_FRAMES {
                let mut headers = [[0u8; 10]; INLINE_FRAMES];
                let mut slices = [IoSlice::new(&[]); 2 * INLINE_FRAMES];
                let count = self.lay_out(n, &mut headers, &mut slices);
                Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count])
            } else {
                let mut headers = vec![[0u8; 10]; n];
                let mut slices = vec![IoSlice::new(&[]); 2 * n];
                let count = self.lay_out(n, &mut headers, &mut slices);
                Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count])
            };
            let written = match result {
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

/// Marks the outbox busy before the task writes a frame of its own, taking what it had queued
/// first (see [`Outbox::hold`]).
fn hold(
    outbox: &Outbox,
    io: &impl TakeUnfinished,
    queue: &mut WriteQueue,
    conn: &crate::metrics::ConnectionGuard,
) {
    let mut tally = Tally::default();
    outbox.hold(tally.taker(&mut queue.frames));
    tally.count(conn);
    finish_first(io, queue);
}

/// Puts a frame a direct write left unfinished first in the write queue. Asked right after
/// each take from the outbox: the outbox was idle when the direct write began it, so the task
/// had written everything it had, and whatever it just took was pushed later.
fn finish_first(io: &impl TakeUnfinished, queue: &mut WriteQueue) {
    if let Some(u) = io.take_unfinished() {
        debug_assert_eq!(queue.offset, 0, "one frame in flight at a time");
        queue.frames.push_front(Out::Text(u.frame));
        queue.offset = u.written;
    }
}

/// Frames taken from the outbox into the write queue, counted once per take.
#[derive(Default)]
struct Tally {
    frames: u64,
    bytes: usize,
}

impl Tally {
    /// The consumer an outbox take hands each frame to.
    fn taker<'a>(&'a mut self, frames: &'a mut VecDeque<Out>) -> impl FnMut(Frame) + 'a {
        move |f| {
            self.frames += 1;
            self.bytes += f.len();
            frames.push_back(Out::Text(f));
        }
    }

    fn count(&self, conn: &crate::metrics::ConnectionGuard) {
        conn.frames_out(self.frames, self.bytes);
    }
}

/// What the socket or the outbox did while we waited.
enum IoEvent {
    /// A write could not finish: the write timeout starts now.
    Stalled,
    /// Frames were taken from an idle outbox and the coalescing window is on: wait, then write.
    Coalesce,
    /// The session or the hub asked to close (after the frames taken with it).
    Close(crate::hub::CloseRequest),
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
    /// Decodes bytes hyper had already read past the upgrade request.
    fn feed(&mut self, data: &[u8], limit: usize, incoming: &mut Vec<Incoming>) -> IoEvent {
        let mut buf = data.to_vec();
        match self.decoder.decode(&mut buf, limit, incoming) {
            Ok(used) => {
                self.partial = buf.split_off(used);
                IoEvent::Read
            }
            Err(e) => IoEvent::Protocol(e),
        }
    }

    fn poll_read<I: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut I,
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
async fn close_with<I: AsyncWrite + Unpin>(
    io: &mut I,
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

/// Runs an accepted connection (already counted against the app's quota) to its end, on a task
/// of its own. That task holds the connection's state and nothing else: awaited inside the
/// upgrade task instead, it would carry that task's locals, the arguments once more and room
/// for both transports' futures — about 0.5 KiB more per idle connection.
pub fn spawn(upgraded: Upgraded, app: Arc<App>, params: WsParams) {
    // Plain TCP (the fan-out path) is written directly; TLS stays behind hyper's boxed I/O.
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let tcp = Arc::new(DirectTcp {
                stream: parts.io.into_inner(),
                frames: params.conn.frame_counter(),
                unfinished: Default::default(),
            });
            let direct: Arc<dyn DirectWrite> = tcp.clone();
            drop(tokio::spawn(run_io(
                SharedTcp(tcp),
                parts.read_buf,
                Some(direct),
                app,
                params,
            )));
        }
        Err(upgraded) => {
            drop(tokio::spawn(run_io(
                TokioIo::new(upgraded),
                Bytes::new(),
                None,
                app,
                params,
            )));
        }
    }
}

async fn run_io<I: AsyncRead + AsyncWrite + TakeUnfinished + Unpin>(
    mut io: I,
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
    } = params;
    // The transport's own cap; messages between the app limit and this get a pusher:error.
    let limit = (app.config.max_message_bytes * 2).max(64 * 1024);
    let outbox = Arc::new(Outbox::new(conn_id, socket_id, outbound_queue));
    // The opt-in coalescing window wants frames to wait and share a write: queued path only.
    if let Some(d) = direct.filter(|_| coalesce.is_zero()) {
        outbox.set_direct(d);
    }
    let mut session = Session::open(app, outbox.clone(), liveness);
    let mut shutdown = shutdown;
    let stop_check = shutdown.clone();
    let mut queue = WriteQueue::default();
    let mut read = ReadState::default();
    let mut incoming: Vec<Incoming> = Vec::new();
    // Peers that keep alive with WebSocket control frames (mobile SDKs) are pinged the same way.
    let mut control_pinger = false;
    // Set after a coalescing wait: take what else arrived before writing.
    let mut ready = false;
    // What the client sent right after the upgrade request, decoded before the first wait.
    // Only the undecoded rest is kept: the bytes are a view of hyper's whole read buffer, which
    // must not live on with every connection.
    let mut early = (!read_ahead.is_empty()).then(|| read.feed(&read_ahead, limit, &mut incoming));
    drop(read_ahead);
    let mut stalled_since: Option<Instant> = None;
    // Long-lived waits, registered once rather than on every wake-up: the shutdown signal and
    // the liveness/write timer (re-armed only when its deadline moves).
    let shutdown_signal = shutdown.changed();
    tokio::pin!(shutdown_signal);
    // Polled once to register this task with the signal. After that it is looked at only when
    // the signal's version moved (an atomic load per wake-up, not a lock): the waker it holds
    // stays this task's, so the shutdown still wakes us.
    let stopping = poll_fn(|cx| Poll::Ready(shutdown_signal.as_mut().poll(cx).is_ready())).await;
    let timer = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    let mut liveness: Option<Instant> = None;

    loop {
        if ready {
            ready = false;
            let mut tally = Tally::default();
            let close = outbox.drain_with(tally.taker(&mut queue.frames));
            tally.count(&conn);
            if let Some(c) = close {
                early = Some(IoEvent::Close(c));
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
                    hold(&outbox, &io, &mut queue, &conn);
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
                    hold(&outbox, &io, &mut queue, &conn);
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
        let event = match early.take() {
            Some(ev) => ev,
            None => tokio::select! {
                biased;
                _ = poll_fn(|_| {
                    if stopping || stop_check.has_changed().unwrap_or(true) {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }
                }) => {
                    hold(&outbox, &io, &mut queue, &conn);
                    let c = CloseCode::ReconnectNow;
                    Box::pin(close_with(&mut io, &mut queue, c.code(), c.message(), true)).await;
                    break;
                }
                ev = poll_fn(|cx| {
                    let mut flushed = false;
                    loop {
                        if !queue.is_empty() {
                            match queue.poll_flush(cx, &mut io) {
                                Poll::Ready(Ok(())) => {
                                    stalled_since = None;
                                    flushed = true;
                                }
                                Poll::Ready(Err(e)) => {
                                    return Poll::Ready(IoEvent::Failed(e.to_string()))
                                }
                                Poll::Pending => {
                                    // While a write is in flight only a close request
                                    // (overflow, terminate) matters; frames queued meanwhile
                                    // wait in the bounded outbox.
                                    if let Poll::Ready(c) = outbox.poll_close(cx) {
                                        return Poll::Ready(IoEvent::Close(c));
                                    }
                                    if stalled_since.is_none() {
                                        stalled_since = Some(Instant::now());
                                        return Poll::Ready(IoEvent::Stalled);
                                    }
                                    break;
                                }
                            }
                        }
                        let mut tally = Tally::default();
                        let taken = outbox.poll_drain(cx, tally.taker(&mut queue.frames));
                        tally.count(&conn);
                        let close = match taken {
                            Poll::Ready(close) => close,
                            Poll::Pending => break,
                        };
                        finish_first(&io, &mut queue);
                        if let Some(c) = close {
                            return Poll::Ready(IoEvent::Close(c));
                        }
                        if !flushed && !coalesce.is_zero() {
                            return Poll::Ready(IoEvent::Coalesce);
                        }
                        // Otherwise write what was taken at once.
                    }
                    read.poll_read(cx, &mut io, limit, &mut incoming)
                }) => ev,
                _ = &mut timer => { armed = None; liveness = None; continue }
            },
        };
        match event {
            // The deadline is recomputed with the stall at the top of the loop.
            IoEvent::Stalled => {}
            IoEvent::Coalesce => {
                Box::pin(tokio::time::sleep(coalesce)).await;
                ready = true;
            }
            IoEvent::Close(c) => {
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
                            hold(&outbox, &io, &mut queue, &conn);
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
                            hold(&outbox, &io, &mut queue, &conn);
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
            }
            IoEvent::Eof => break,
            IoEvent::Failed(e) => {
                tracing::debug!(socket_id = %session.socket_id(), error = %e, "websocket connection error");
                break;
            }
            IoEvent::Protocol(e) => {
                tracing::info!(socket_id = %session.socket_id(), reason = %e, "websocket protocol error");
                hold(&outbox, &io, &mut queue, &conn);
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
    // The socket closes with this task, not whenever the last holder of the outbox lets go.
    outbox.detach_direct();
    // Dropping the session leaves every channel, presence and signin, and frees the quota slot.
    drop(session);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Metrics, Transport};
    use tokio::io::AsyncReadExt;

    fn frame_counter() -> crate::metrics::FrameCounter {
        let app = crate::config::AppConfig::with_defaults("1", "k", "s");
        let metrics = Metrics::new(&crate::config::Config {
            state_dir: std::env::temp_dir(),
            user: None,
            server: Default::default(),
            tls: None,
            spool: Default::default(),
            webhooks: Default::default(),
            console: None,
            metrics: Default::default(),
            apps: vec![app],
            source: "test".into(),
        });
        metrics
            .connection_opened("1", Transport::WebSocket)
            .frame_counter()
    }

    /// A connected pair over 127.0.0.1 whose server side takes little at once.
    async fn small_socket() -> (TcpStream, TcpStream) {
        // Accepted sockets inherit the listener's buffer sizes.
        let listener = tokio::net::TcpSocket::new_v4().unwrap();
        listener.set_send_buffer_size(4096).unwrap();
        listener.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = listener.listen(1).unwrap();
        let client = tokio::net::TcpSocket::new_v4().unwrap();
        client.set_recv_buffer_size(4096).unwrap();
        let client = client
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (server, client)
    }

    fn text(payload: &str) -> Vec<u8> {
        wsframe::encode(wsframe::OP_TEXT, payload.as_bytes())
    }

    #[tokio::test]
    async fn a_frame_a_direct_write_began_is_finished_by_the_task_before_anything_else() {
        let (server, mut client) = small_socket().await;
        let tcp = Arc::new(DirectTcp {
            stream: server,
            frames: frame_counter(),
            unfinished: Default::default(),
        });
        let outbox = Outbox::new(1, SocketId::parse("1.1").unwrap(), 16);
        outbox.set_direct(tcp.clone());
        let idle = Context::from_waker(std::task::Waker::noop());
        assert!(outbox.poll_drain(&idle, |_| {}).is_pending());
        // Far more than the socket takes at once: the direct write begins it and stops.
        let big = "x".repeat(1 << 20);
        assert!(outbox.push(Frame::from(big.as_str())));
        assert!(outbox.push(Frame::from("after")));
        assert_eq!(
            outbox.len(),
            1,
            "only the frame behind the begun one is queued"
        );
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        // The task's side: take from the outbox, the begun frame first, and write it all.
        let io = SharedTcp(tcp.clone());
        let mut queue = WriteQueue::default();
        let mut frames = VecDeque::new();
        let close = poll_fn(|cx| outbox.poll_drain(cx, |f| frames.push_back(Out::Text(f)))).await;
        assert!(close.is_none());
        queue.frames = frames;
        finish_first(&io, &mut queue);
        assert!(queue.offset > 0, "part of it is on the wire already");
        let mut io = io;
        poll_fn(|cx| queue.poll_flush(cx, &mut io)).await.unwrap();
        // The socket closes with its last holder: the reader then sees the end.
        drop((io, outbox, tcp));
        let got = reader.await.unwrap();
        assert_eq!(got, [text(&big), text("after")].concat());
    }
}
