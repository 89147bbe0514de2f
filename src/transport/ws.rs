//! WebSocket transport (tokio-tungstenite over an upgraded hyper connection): reads text
//! frames into the session, writes the session's outbox, drives the liveness timer, and closes
//! with the code the session or the hub asked for. Buffers are sized for Pusher's 10 KB
//! messages, not for bulk transfer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::hub::{App, Frame, Outbox};
use crate::protocol::{message, CloseCode, SocketId};
use crate::session::{self, Liveness, Session, Tick};

/// How long one write of a backlog may take before the peer is considered gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(20);

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// Everything a connection needs from the server.
pub struct WsParams {
    pub liveness: Liveness,
    pub outbound_queue: usize,
    pub conn_id: u64,
    pub socket_id: SocketId,
    pub shutdown: watch::Receiver<bool>,
    /// Counts this connection in `/metrics` while it is open, and its frames and bytes.
    pub conn: crate::metrics::ConnectionGuard,
}

fn ws_config(max_message: usize) -> WebSocketConfig {
    let hard = (max_message * 2).max(64 * 1024);
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(Some(hard))
        .max_frame_size(Some(hard))
}

async fn close_with(ws: &mut Ws, code: u16, reason: &str, with_error: bool) {
    let work = async {
        if with_error {
            ws.feed(Message::Text(message::error(Some(code), reason).into()))
                .await?;
        }
        let reason: String = reason.chars().take(100).collect();
        ws.send(Message::Close(Some(CloseFrame {
            code: WsCloseCode::from(code),
            reason: reason.into(),
        })))
        .await
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), work).await;
}

/// Resolves once the outbox is marked for closing (overflow, terminate, bad signin).
async fn closing(outbox: &Outbox) {
    while !outbox.is_closing() {
        outbox.ready().await;
    }
}

/// Refuses an upgraded connection with a Pusher error code (unknown app, quota, origin…).
pub async fn refuse(upgraded: Upgraded, code: CloseCode) {
    let mut ws = WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        Role::Server,
        Some(ws_config(10 * 1024)),
    )
    .await;
    let (_, code, reason) = session::refusal(code);
    close_with(&mut ws, code, reason, true).await;
}

/// Runs an accepted connection (already counted against the app's quota) to its end.
pub async fn run(upgraded: Upgraded, app: Arc<App>, params: WsParams) {
    let mut ws = WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        Role::Server,
        Some(ws_config(app.config.max_message_bytes)),
    )
    .await;
    let outbox = Arc::new(Outbox::new(
        params.conn_id,
        params.socket_id,
        params.outbound_queue,
    ));
    let mut session = Session::open(app, outbox.clone(), params.liveness);
    let mut shutdown = params.shutdown;
    let mut batch: Vec<Frame> = Vec::new();
    // Peers that keep alive with WebSocket control frames (mobile SDKs) are pinged the same way.
    let mut control_pinger = false;
    // Set when the outbox has (or may have) something: drained before waiting again.
    let mut ready = false;
    loop {
        if ready {
            ready = false;
            let close = outbox.drain(&mut batch);
            if !batch.is_empty() {
                let conn = &params.conn;
                let write = async {
                    for f in batch.drain(..) {
                        conn.frame_out(f.len());
                        ws.feed(Message::Text(f)).await?;
                    }
                    ws.flush().await
                };
                tokio::select! {
                    biased;
                    r = tokio::time::timeout(WRITE_TIMEOUT, write) => if !matches!(r, Ok(Ok(()))) {
                        let reason = match r {
                            Err(_) => "write timed out (peer not reading)".to_owned(),
                            Ok(Err(e)) => e.to_string(),
                            Ok(Ok(())) => String::new(),
                        };
                        tracing::info!(socket_id = %session.socket_id(), %reason, "websocket connection error");
                        break
                    },
                    // Overflow or a close request while a slow peer blocks the write: stop writing.
                    _ = closing(&outbox) => {}
                }
                batch.clear();
                if batch.capacity() > 64 {
                    batch = Vec::new();
                }
                // More may have been queued meanwhile (its wake-up consumed by `closing`).
                ready = true;
                continue;
            }
            if let Some(c) = close {
                close_with(&mut ws, c.code, &c.reason, c.with_error).await;
                break;
            }
        }
        let deadline = match session.tick(Instant::now()) {
            Tick::Wait(t) => t,
            Tick::Ping => {
                let ping = if control_pinger {
                    Message::Ping(Default::default())
                } else {
                    let p = message::ping();
                    params.conn.frame_out(p.len());
                    Message::Text(p.into())
                };
                if tokio::time::timeout(WRITE_TIMEOUT, ws.send(ping))
                    .await
                    .map_or(true, |r| r.is_err())
                {
                    break;
                }
                continue;
            }
            Tick::Close => {
                tracing::info!(socket_id = %session.socket_id(), reason = CloseCode::PongTimeout.message(), "websocket connection closed (4201)");
                close_with(
                    &mut ws,
                    CloseCode::PongTimeout.code(),
                    CloseCode::PongTimeout.message(),
                    true,
                )
                .await;
                break;
            }
        };
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                close_with(&mut ws, CloseCode::ReconnectNow.code(), CloseCode::ReconnectNow.message(), true).await;
                break;
            }
            _ = outbox.ready() => ready = true,
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    params.conn.frame_in(t.len());
                    session.handle_text(&t)
                }
                Some(Ok(Message::Ping(_))) => {
                    control_pinger = true;
                    session.activity();
                }
                Some(Ok(Message::Pong(_))) => session.activity(),
                Some(Ok(Message::Binary(b))) => {
                    params.conn.frame_in(b.len());
                    session.activity();
                    outbox.push(Frame::from(message::error(None, "Binary frames are not part of the Pusher protocol: send JSON text frames")));
                }
                Some(Ok(Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(e)) => {
                    use tokio_tungstenite::tungstenite::Error;
                    if let Error::Capacity(_) = e {
                        close_with(&mut ws, 1009, "Message too large", false).await;
                    }
                    match e {
                        // A peer that vanished without a close frame: routine on mobile networks.
                        Error::Protocol(_) | Error::Io(_) | Error::ConnectionClosed | Error::AlreadyClosed => {
                            tracing::debug!(socket_id = %session.socket_id(), error = %e, "websocket read error")
                        }
                        _ => tracing::info!(socket_id = %session.socket_id(), reason = %e, "websocket connection error"),
                    }
                    break;
                }
            },
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
    }
    // Dropping the session leaves every channel, presence and signin, and frees the quota slot.
    drop(session);
}
