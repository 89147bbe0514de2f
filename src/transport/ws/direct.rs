//! The direct path of a plain TCP connection: the socket is shared by its task (reads,
//! backlog and control frames) and its outbox, which writes published frames straight to it
//! while the task has nothing in hand — no task wake-up, no poll (see `hub::outbox`). A frame
//! the socket takes only part of stays here, ours to finish: the task takes it first, after its
//! next take from the outbox, so the outbox never counts bytes.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::write::{advance, writev, Wire, MAX_FRAMES};
use crate::hub::{DirectWrite, Wrote};
use crate::metrics::FrameCounter;
use crate::protocol::Frame;

/// A plain TCP connection, shared by its task and its outbox.
pub(super) struct DirectTcp {
    pub stream: TcpStream,
    pub frames: FrameCounter,
    /// A frame a direct write began and the socket didn't take whole: the task finishes it
    /// before it writes anything else. Boxed: one word while empty (the common case, by far),
    /// allocated only while a socket is full mid-frame.
    pub unfinished: Mutex<Option<Box<Unfinished>>>,
}

/// The rest of a frame a direct write began.
pub(super) struct Unfinished {
    pub frame: Frame,
    /// Bytes of its encoding (header and payload) already on the wire.
    pub written: usize,
}

impl DirectTcp {
    pub fn new(stream: TcpStream, frames: FrameCounter) -> DirectTcp {
        DirectTcp {
            stream,
            frames,
            unfinished: Mutex::default(),
        }
    }
}

impl DirectWrite for DirectTcp {
    fn try_write(&self, frames: &VecDeque<Frame>) -> Wrote {
        let n = frames.len().min(MAX_FRAMES);
        // Never waits: tokio answers `WouldBlock` without a syscall while the socket is known
        // to be full. An error is left for the task's own write to meet and report.
        let written = writev(frames.iter(), n, 0, |slices| {
            self.stream.try_write_vectored(slices)
        })
        .unwrap_or(0);
        let (whole, begun) = advance(frames.iter().take(n).map(Wire::wire_len), 0, written);
        let mut wrote = Wrote {
            frames: whole,
            unfinished: false,
        };
        if begun > 0 {
            // Ours to finish from now on: the outbox only learns that we are busy.
            let mut slot = self.unfinished.lock().unwrap_or_else(|e| e.into_inner());
            debug_assert!(
                slot.is_none(),
                "no direct write while a frame is unfinished"
            );
            *slot = Some(Box::new(Unfinished {
                frame: frames[whole].clone(),
                written: begun,
            }));
            wrote = Wrote {
                frames: whole + 1,
                unfinished: true,
            };
        }
        let bytes = frames.iter().take(wrote.frames).map(|f| f.len()).sum();
        self.frames.frames_out(wrote.frames as u64, bytes);
        wrote
    }
}

/// The task's side of a [`DirectTcp`]: async reads and writes over the shared stream.
pub(super) struct SharedTcp(pub Arc<DirectTcp>);

/// The task's connection I/O, asked after every take from the outbox for a frame a direct
/// write left unfinished (only a [`SharedTcp`] ever has one).
pub(super) trait TakeUnfinished {
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

/// TLS stays behind hyper's boxed I/O: no direct path, nothing ever unfinished.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Outbox;
    use crate::metrics::Transport;
    use crate::protocol::SocketId;
    use crate::transport::ws::write::{Out, WriteQueue};
    use crate::transport::wsframe;
    use std::future::poll_fn;
    use std::task::Context;
    use tokio::io::AsyncReadExt;

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
        let tcp = Arc::new(DirectTcp::new(
            server,
            FrameCounter::detached(Transport::WebSocket),
        ));
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
        let close = poll_fn(|cx| outbox.poll_drain(cx, |f| queue.push(Out::Text(f)))).await;
        assert!(close.is_none());
        queue.finish_first(&io);
        assert!(queue.offset > 0, "part of it is on the wire already");
        let mut io = io;
        poll_fn(|cx| queue.poll_flush(cx, &mut io)).await.unwrap();
        // The socket closes with its last holder: the reader then sees the end.
        drop((io, outbox, tcp));
        let got = reader.await.unwrap();
        assert_eq!(got, [text(&big), text("after")].concat());
    }
}
