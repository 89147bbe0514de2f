//! WebSocket transport over an upgraded hyper connection, with our own framing
//! (`wsframe`): reads client frames into the session, writes the session's outbox, drives the
//! liveness timer, and closes with the code the session or the hub asked for. It owns every
//! byte it writes, a frame the socket took only part of included.
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
//!
//! - `connection`: the task — tick, write and read steps, closes;
//! - `direct`: the socket shared with the outbox, and the frame a direct write left unfinished;
//! - `write`: the write queue and the one `writev` layout;
//! - `read`: bytes into decoded frames;
//! - `echo` (feature `autobahn-echo` only): the same handshake, read and write steps echoing
//!   every message, for the Autobahn|Testsuite.

mod connection;
mod direct;
mod read;
mod write;

pub mod upgrade;

/// The Autobahn|Testsuite echo endpoint: test builds only (`--features autobahn-echo`).
#[cfg(feature = "autobahn-echo")]
pub mod echo;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::hub::{App, DirectWrite};
use crate::protocol::{CloseCode, SocketId};
use crate::session::{self, Liveness};
use connection::Connection;
use direct::{DirectTcp, SharedTcp};
use write::WriteQueue;

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
    /// The resume token of the URL and the client's address/agent hash.
    pub resume: crate::resume::Origin,
}

/// The transport's cap on one (reassembled) message: twice the app's `max_message_bytes`, at
/// least 64 KiB. Messages between the app limit and this get a `pusher:error` from the session
/// and the connection stays; above it the decoder closes with 1009 before buffering more.
pub fn frame_limit(max_message_bytes: usize) -> usize {
    (max_message_bytes * 2).max(64 * 1024)
}

/// Refuses an upgraded connection with a Pusher error code (unknown app, quota, origin…).
pub async fn refuse(upgraded: Upgraded, code: CloseCode) {
    let (_, code, reason) = session::refusal(code);
    refuse_with(upgraded, code, reason).await;
}

/// Refuses an upgraded connection with `code` and a reason of our own (a malformed resume
/// token: 4005, so pusher-js stops retrying a URL that cannot work).
pub async fn refuse_with(upgraded: Upgraded, code: u16, reason: &str) {
    let mut io = TokioIo::new(upgraded);
    WriteQueue::default()
        .close(&mut io, code, reason, true)
        .await;
}

/// Runs an accepted connection (already counted against the app's quota) to its end, on a task
/// of its own. That task holds the connection's state and nothing else: awaited inside the
/// upgrade task instead, it would carry that task's locals, the arguments once more and room
/// for both transports' futures — about 0.5 KiB more per idle connection.
pub fn spawn(upgraded: Upgraded, app: Arc<App>, params: WsParams) {
    // Plain TCP (the fan-out path) is written directly; TLS stays behind hyper's boxed I/O.
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let stream = parts.io.into_inner();
            let tcp = Arc::new(DirectTcp::new(stream, params.conn.frame_counter()));
            let direct: Arc<dyn DirectWrite> = tcp.clone();
            let io = SharedTcp(tcp);
            let run = Connection::run(io, parts.read_buf, Some(direct), app, params);
            drop(tokio::spawn(run));
        }
        Err(upgraded) => {
            let io = TokioIo::new(upgraded);
            drop(tokio::spawn(Connection::run(
                io,
                Bytes::new(),
                None,
                app,
                params,
            )));
        }
    }
}
