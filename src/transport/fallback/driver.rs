//! One fallback session's task: it owns the `Session` (the protocol state machine shared with
//! WebSocket), feeds it the frames posted to `xhr_send`, and writes its outbox as SockJS-style
//! lines to whichever receive request is attached (`xhr_streaming` or `xhr` polling). It sends
//! `o` once, heartbeats idle streams, ends polls, stops a stream at pusher-js's rollover point,
//! turns close requests into `c[code,"reason"]`, and destroys the session when nobody has
//! polled or sent for `session_timeout` (`first_poll_timeout` for a session that never came
//! back after its first receive request) — dropping the `Session`, exactly like a WebSocket
//! close.
//!
//! A client that can't keep up is closed like a slow WebSocket: its outbox overflows, the
//! session leaves its channels at once (4100), and its next request learns it: the next
//! receive gets `c[4100,…]`, an `xhr_send` meanwhile is answered as for a closed session. A
//! stream already past the rollover point (the client stopped reading it) is ended then, so
//! the close waits for the receive request that resumes it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use super::frames;
use super::registry::Registry;
use crate::hub::Outbox;
use crate::metrics::{ConnectionGuard, Metrics, Reason};
use crate::protocol::{message, CloseCode, Frame};
use crate::resume::ProofTick;
use crate::session::{Session, Tick};

/// Chunks a streaming response may hold between the session and hyper. Past this the session
/// stops draining its outbox, which then fills and closes with 4100 like a slow WebSocket.
pub(super) const STREAM_CHUNKS: usize = 4;

/// What the HTTP side tells a session's task.
pub(super) enum Cmd {
    /// A receive request arrived; its response body reads from `tx`'s channel.
    Attach(Receiver),
    /// The frames of one `xhr_send` (an empty list is a heartbeat); the task answers whether
    /// the session took them (`false`: it is closed, its close line waits for a receive).
    Send(Vec<String>, oneshot::Sender<bool>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Streaming,
    Polling,
}

pub(super) struct Receiver {
    pub kind: Kind,
    pub tx: mpsc::Sender<Bytes>,
}

/// The receive request currently attached.
struct Attached {
    kind: Kind,
    tx: mpsc::Sender<Bytes>,
    since: Instant,
    last_write: Instant,
    /// Bytes (= characters: the lines are ASCII) written to this response.
    written: usize,
    /// Bytes to send before anything else: the prelude and/or `o`.
    prefix: Vec<u8>,
    /// Set once `written` passed the stream limit: nothing more goes to this response.
    full_since: Option<Instant>,
}

pub(super) struct Driver {
    pub key: String,
    pub id: u64,
    pub registry: Arc<Registry>,
    /// `None` once the session was closed (leaving its channels): only the close line is left
    /// to deliver.
    pub session: Option<Session>,
    pub outbox: Arc<Outbox>,
    pub cmds: mpsc::Receiver<Cmd>,
    pub shutdown: watch::Receiver<bool>,
    /// Counts this session in `/metrics` (transport `http`) while it lives, and its frames.
    pub conn: ConnectionGuard,
    /// Where a session closed for not keeping up is counted.
    pub metrics: Arc<Metrics>,
}

enum Wake {
    Shutdown,
    Cmd(Option<Cmd>),
    Ready,
    Permit(Option<mpsc::OwnedPermit<Bytes>>),
    Detached,
    Timer,
}

async fn reserve(tx: Option<mpsc::Sender<Bytes>>) -> Option<mpsc::OwnedPermit<Bytes>> {
    match tx {
        Some(tx) => tx.reserve_owned().await.ok(),
        None => std::future::pending().await,
    }
}

async fn closed(tx: Option<mpsc::Sender<Bytes>>) {
    match tx {
        Some(tx) => tx.closed().await,
        None => std::future::pending().await,
    }
}

/// A deadline far enough away to mean "never" without overflowing `Instant`.
fn never(now: Instant) -> Instant {
    now + Duration::from_secs(24 * 3600)
}

struct Run {
    attached: Option<Attached>,
    opened: bool,
    /// The outbox may hold something not yet written.
    pending: bool,
    /// Last receive request or `xhr_send`: the session expires `session_timeout` after it
    /// while no receive request is attached.
    last_contact: Instant,
    /// The client came back (a second receive request or an `xhr_send`): until then a
    /// detached session expires after the shorter `first_poll_timeout`, so sessions opened
    /// and abandoned by the thousand hold the app's quota only briefly.
    proven: bool,
    /// The close line went out (and was counted).
    close_sent: bool,
    batch: Vec<Frame>,
}

impl Run {
    /// When a session with no receive request attached expires.
    fn expiry(&self, opts: &super::Options) -> Instant {
        let idle = if self.proven {
            opts.session_timeout
        } else {
            opts.first_poll_timeout.min(opts.session_timeout)
        };
        self.last_contact + idle
    }
}

impl Driver {
    pub(super) async fn run(mut self) {
        let opts = self.registry.options.clone();
        let now = Instant::now();
        let mut r = Run {
            attached: None,
            opened: false,
            pending: true,
            last_contact: now,
            proven: false,
            close_sent: false,
            batch: Vec::new(),
        };
        loop {
            // A close request (overflow, terminate, failed signin) ends the session at once, so
            // it leaves its channels now; the close line waits for a receive request.
            if self.session.is_some() && self.outbox.is_closing() {
                self.session = None;
                r.pending = true;
                // A stream past the rollover point takes no more lines: end it, so the client
                // resumes and its next receive request gets the close line.
                if r.attached.as_ref().is_some_and(|a| a.full_since.is_some()) {
                    r.attached = None;
                    r.last_contact = Instant::now();
                }
            }
            let now = Instant::now();
            let mut deadline = never(now);
            if let Some(s) = &mut self.session {
                match s.tick(now) {
                    Tick::Wait(t) => deadline = t,
                    Tick::Ping => {
                        // pusher-js answers with a pusher:pong through xhr_send.
                        self.outbox.push(Frame::from(message::ping()));
                        continue;
                    }
                    // No pong: pusher-js never pings over HTTP and every xhr_send or receive
                    // request counts as activity, so a quiet session is not closed for it.
                    // Dead sessions go through expiry instead.
                    Tick::Close => {
                        s.activity();
                        continue;
                    }
                }
                // A resumable session proves what it received with pings of its own.
                if s.is_resumable() {
                    match s.proof_tick(now) {
                        ProofTick::Idle => {}
                        ProofTick::At(t) => deadline = deadline.min(t),
                        ProofTick::PingNow => {
                            self.outbox.push(Frame::from(message::ping()));
                            continue;
                        }
                    }
                }
            }
            deadline = match &r.attached {
                Some(a) => deadline.min(match (a.kind, a.full_since) {
                    (Kind::Streaming, None) => a.last_write + opts.heartbeat,
                    (Kind::Streaming, Some(t)) => t + opts.rollover_grace,
                    (Kind::Polling, _) => a.since + opts.poll_hold,
                }),
                None => deadline.min(r.expiry(&opts)),
            };
            let tx = r.attached.as_ref().map(|a| a.tx.clone());
            let want_write =
                r.pending && r.attached.as_ref().is_some_and(|a| a.full_since.is_none());
            let wake = tokio::select! {
                biased;
                _ = self.shutdown.changed() => Wake::Shutdown,
                c = self.cmds.recv() => Wake::Cmd(c),
                // Also while `pending`: a close request (overflow) must be noticed even when
                // nothing can be written.
                _ = self.outbox.ready() => Wake::Ready,
                p = reserve(tx.clone()), if want_write => Wake::Permit(p),
                _ = closed(tx) => Wake::Detached,
                _ = tokio::time::sleep_until(deadline.into()) => Wake::Timer,
            };
            match wake {
                Wake::Shutdown => {
                    self.shutdown_close(&mut r);
                    break;
                }
                Wake::Cmd(None) => break,
                Wake::Cmd(Some(Cmd::Attach(recv))) => {
                    let now = Instant::now();
                    r.proven |= r.opened;
                    let mut prefix = Vec::new();
                    if recv.kind == Kind::Streaming && opts.prelude {
                        prefix.extend_from_slice(&frames::PRELUDE);
                    }
                    if !r.opened {
                        prefix.extend_from_slice(frames::OPEN);
                        r.opened = true;
                    }
                    // A second receive request replaces the first silently: dropping the old
                    // sender ends that response without a close line.
                    r.attached = Some(Attached {
                        kind: recv.kind,
                        tx: recv.tx,
                        since: now,
                        last_write: now,
                        written: 0,
                        prefix,
                        full_since: None,
                    });
                    r.pending = true;
                    r.last_contact = now;
                    if let Some(s) = &mut self.session {
                        s.activity();
                    }
                }
                Wake::Cmd(Some(Cmd::Send(texts, reply))) => {
                    // A closed session's heartbeats don't keep it: it lasts until its close
                    // line is fetched or it expires.
                    let _ = reply.send(self.session.is_some());
                    if let Some(s) = &mut self.session {
                        r.last_contact = Instant::now();
                        r.proven = true;
                        if texts.is_empty() {
                            s.activity();
                        }
                        for t in &texts {
                            self.conn.frame_in(t.len());
                            s.handle_text(t);
                        }
                    }
                }
                Wake::Ready => r.pending = true,
                Wake::Permit(Some(permit)) => {
                    if self.flush(&mut r, permit, &opts) {
                        r.close_sent = true;
                        break;
                    }
                }
                Wake::Permit(None) | Wake::Detached => {
                    r.attached = None;
                    r.last_contact = Instant::now();
                }
                Wake::Timer => {
                    let now = Instant::now();
                    match &mut r.attached {
                        Some(a) if a.kind == Kind::Streaming => {
                            if a.full_since.is_some_and(|t| now >= t + opts.rollover_grace) {
                                // The client never rolled over: end the response (pusher-js
                                // reconnects with a new session).
                                r.attached = None;
                                r.last_contact = now;
                            } else if a.full_since.is_none() && now >= a.last_write + opts.heartbeat
                            {
                                // A full channel means the client isn't reading: skip the beat
                                // (and wait a whole interval again, not spin on the deadline).
                                if a.tx.try_send(Bytes::from_static(frames::HEARTBEAT)).is_ok() {
                                    wrote(a, frames::HEARTBEAT.len(), now, &opts);
                                } else {
                                    a.last_write = now;
                                }
                            }
                        }
                        Some(a) => {
                            if now >= a.since + opts.poll_hold {
                                let _ = a.tx.try_send(Bytes::from_static(frames::HEARTBEAT));
                                r.attached = None;
                                r.last_contact = now;
                            }
                        }
                        None => {
                            if now >= r.expiry(&opts) {
                                tracing::debug!(session = %self.key, proven = r.proven, "fallback session expired");
                                break;
                            }
                        }
                    }
                }
            }
        }
        self.registry.remove(&self.key, self.id);
        // A close line nobody came for still counts.
        if !r.close_sent {
            if let Some(c) = self.outbox.drain(&mut r.batch) {
                self.closed_with(c.code);
            }
        }
        // Dropping the session leaves every channel, presence and signin, and frees the quota slot.
        drop(self.session.take());
    }

    /// Writes the prefix, the queued frames and any close line to the attached response.
    /// Returns `true` when the session is finished (a close line went out).
    fn flush(
        &mut self,
        r: &mut Run,
        permit: mpsc::OwnedPermit<Bytes>,
        opts: &super::Options,
    ) -> bool {
        let Some(a) = r.attached.as_mut() else {
            return false;
        };
        r.pending = false;
        let close = self.outbox.drain(&mut r.batch);
        let mut chunk = std::mem::take(&mut a.prefix);
        if let Some(c) = &close {
            if c.with_error {
                r.batch
                    .push(Frame::from(message::error(Some(c.code), &c.reason)));
            }
        }
        frames::push_array(&mut chunk, &r.batch);
        for f in &r.batch {
            self.conn.frame_out(f.len());
        }
        if !r.batch.is_empty() {
            if let Some(s) = &mut self.session {
                s.wrote();
            }
        }
        r.batch.clear();
        if r.batch.capacity() > 64 {
            r.batch = Vec::new();
        }
        if let Some(c) = &close {
            frames::push_close(&mut chunk, c.code, &c.reason);
            self.closed_with(c.code);
        }
        if chunk.is_empty() {
            return false;
        }
        let now = Instant::now();
        let len = chunk.len();
        permit.send(Bytes::from(chunk));
        wrote(a, len, now, opts);
        if close.is_some() {
            return true;
        }
        if a.kind == Kind::Polling {
            // One batch per poll: ending the response makes pusher-js poll again at once.
            r.attached = None;
            r.last_contact = now;
        }
        false
    }

    /// Counts a session closed because its client did not keep up (4100).
    fn closed_with(&self, code: u16) {
        if code == CloseCode::OverCapacity.code() {
            self.metrics.refused(Reason::SlowFallback);
            tracing::info!(session = %self.key, "fallback session closed with 4100: its client did not keep up");
        }
    }

    /// Server shutdown: tell the attached client to reconnect at once (4200).
    fn shutdown_close(&mut self, r: &mut Run) {
        let Some(a) = r.attached.as_mut() else { return };
        let code = CloseCode::ReconnectNow;
        let mut chunk = std::mem::take(&mut a.prefix);
        frames::push_array(
            &mut chunk,
            &[Frame::from(message::error(
                Some(code.code()),
                code.message(),
            ))],
        );
        frames::push_close(&mut chunk, code.code(), code.message());
        let _ = a.tx.try_send(Bytes::from(chunk));
    }
}

fn wrote(a: &mut Attached, len: usize, now: Instant, opts: &super::Options) {
    a.written += len;
    a.last_write = now;
    if a.kind == Kind::Streaming && a.written > opts.stream_limit && a.full_since.is_none() {
        a.full_since = Some(now);
    }
}
