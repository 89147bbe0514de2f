//! An echo endpoint for the Autobahn|Testsuite (`tests/autobahn/run.sh`), built only with the
//! off-by-default `autobahn-echo` feature, so no production build can serve it.
//!
//! It is pushbox's WebSocket code with the Pusher session swapped for an echo: the same
//! handshake checks (`upgrade::accept_key`), the same read step (`ReadState`: the stack buffer,
//! the partial frame, `wsframe`'s decoder with the transport's real size limit), the same write
//! queue and `writev` layout, the same close answers. What the suite finds here, it finds in
//! the server.

use std::future::poll_fn;

use hyper::body::Incoming as Body;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::read::{Read, ReadState};
use super::upgrade::{accept_key, is_upgrade};
use super::write::{Out, WriteQueue};
use crate::http;
use crate::protocol::Frame;
use crate::transport::wsframe::{self, Incoming};

/// Accepts connections on `listener` until the task is dropped, echoing every message of
/// every WebSocket; `limit` caps a message as [`super::frame_limit`] does in the server.
pub async fn serve(listener: TcpListener, limit: usize) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let svc = service_fn(move |req| {
            std::future::ready(Ok::<_, std::convert::Infallible>(answer(req, limit)))
        });
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            let _ = conn.await;
        });
    }
}

/// `101` and an echo task for a good handshake, `400` for anything else.
fn answer(mut req: Request<Body>, limit: usize) -> Response<http::Body> {
    let accept = is_upgrade(&req).then(|| accept_key(&req)).flatten();
    let Some(accept) = accept.and_then(|a| HeaderValue::from_str(&a).ok()) else {
        return http::json_error(400, "a WebSocket handshake is expected");
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            echo(TokioIo::new(upgraded), limit).await;
        }
    });
    let mut r = http::empty(StatusCode::SWITCHING_PROTOCOLS);
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    r
}

/// One connection: read, queue the echoes, write, until a close or an error.
async fn echo<I>(mut io: I, limit: usize)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut read = ReadState::default();
    let mut queue = WriteQueue::default();
    let mut incoming = Vec::new();
    loop {
        match poll_fn(|cx| read.poll_read(cx, &mut io, limit, &mut incoming)).await {
            Read::Frames => {}
            Read::Eof | Read::Failed(_) => return,
            Read::Protocol(e) => {
                // The frames decoded before the violation are answered first, as the server does.
                queue_echoes(&mut queue, &mut incoming);
                queue
                    .close(&mut io, e.close_code(), &e.to_string(), false)
                    .await;
                return;
            }
        }
        let closing = queue_echoes(&mut queue, &mut incoming);
        if poll_fn(|cx| queue.poll_flush(cx, &mut io)).await.is_err() || closing {
            return;
        }
    }
}

/// Queues the answer to each decoded message; true once the peer's close was answered.
fn queue_echoes(queue: &mut WriteQueue, incoming: &mut Vec<Incoming>) -> bool {
    for msg in incoming.drain(..) {
        match msg {
            Incoming::Text(t) => queue.push(Out::Text(Frame::from(t))),
            Incoming::Binary(b) => queue.push(Out::Raw(wsframe::encode(wsframe::OP_BINARY, &b))),
            Incoming::Ping(p) => queue.push(Out::Raw(wsframe::encode(wsframe::OP_PONG, &p))),
            Incoming::Pong => {}
            Incoming::Close(code) => {
                queue.push(Out::Raw(wsframe::close_reply(code)));
                return true;
            }
        }
    }
    false
}
