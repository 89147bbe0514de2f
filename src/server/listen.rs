//! Listening: binding an address (with an error that says what to do), the accept loops of the
//! plain and TLS listeners (each socket counted against the open-files budget, see `conns`),
//! and one hyper HTTP/1.1 connection per accepted socket, with its phases tracked.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use super::conns::{Admission, Conn, ConnHandle, REFUSAL_503};
use super::{route, tls, State};
use crate::config::Config;
use crate::http::Body;
use crate::metrics::{Reason, Transport};

/// Binds the configured plain address.
pub async fn bind(config: &Config) -> std::io::Result<TcpListener> {
    bind_addr(&config.server.host, config.server.port).await
}

/// Binds `host:port` with an error that says what to do.
pub async fn bind_addr(host: &str, port: u16) -> std::io::Result<TcpListener> {
    let addr = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let fail = |e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e} (is another server using the port? set REVERB_SERVER_PORT or [server] port)"))
    };
    let mut last = None;
    for sa in tokio::net::lookup_host(&addr).await.map_err(fail)? {
        match listen(sa) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(fail(last.unwrap_or_else(|| {
        std::io::ErrorKind::AddrNotAvailable.into()
    })))
}

/// Connections the kernel may hold for us before `accept`: a LAN box that restarts sees every
/// client reconnect at once, so the default 1024 overflows into SYN retries.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(sa: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if sa.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(sa)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts plain connections until shutdown.
pub async fn serve(state: Arc<State>, listener: TcpListener) {
    accept_loop(state, listener, None).await
}

/// Accepts TLS connections until shutdown; each handshake uses the certificate current then.
pub async fn serve_tls(state: Arc<State>, listener: TcpListener, tls: Arc<tls::Tls>) {
    accept_loop(state, listener, Some(tls)).await
}

/// How long a client may take to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn accept_loop(state: Arc<State>, listener: TcpListener, tls: Option<Arc<tls::Tls>>) {
    let mut shutdown = state.shared.shutdown_signal();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(conn) = admit(&state, &stream, peer, tls.is_some()) else {
                        continue;
                    };
                    let state = state.clone();
                    let _ = stream.set_nodelay(true);
                    match &tls {
                        None => {
                            tokio::spawn(async move { connection(state, stream, peer, false, conn).await });
                        }
                        Some(tls) => {
                            let acceptor = tls.acceptor();
                            tokio::spawn(async move {
                                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                    Ok(Ok(s)) => connection(state, s, peer, true, conn).await,
                                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                                }
                            });
                        }
                    }
                }
                Err(e) => {
                    // EMFILE and friends: something outside the connection budget took the
                    // descriptors. Make room by closing the slowest connection and retry soon;
                    // otherwise back off instead of spinning.
                    let out_of_fds = matches!(e.raw_os_error(), Some(nix::libc::EMFILE | nix::libc::ENFILE));
                    let pause = if out_of_fds && state.conns.evict_one() {
                        state.metrics.refused(Reason::Evicted);
                        Duration::from_millis(10)
                    } else {
                        Duration::from_millis(100)
                    };
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// Counts a new socket against the open-files budget. `None`: there was no room, and the
/// client was answered 503 (plain) or closed (TLS, which cannot read a plain answer).
fn admit(state: &State, stream: &TcpStream, peer: SocketAddr, secure: bool) -> Option<ConnHandle> {
    let websockets = state.metrics.open_connections(Transport::WebSocket).max(0) as u64;
    match state.conns.admit(websockets) {
        (Admission::Serve(conn), evicted) => {
            if evicted {
                state.metrics.refused(Reason::Evicted);
                tracing::info!(%peer, "near the open-files limit: closed the slowest HTTP connection to serve a new one");
            }
            Some(conn)
        }
        (Admission::Refuse, _) => {
            state.metrics.refused(Reason::FdReserve);
            tracing::warn!(%peer, "near the open-files limit with no slow connection to close: new connection answered 503 (raise LimitNOFILE)");
            if !secure {
                // A fresh socket's send buffer is empty: this never blocks, and a short write
                // only cuts the answer.
                let _ = stream.try_write(REFUSAL_503);
            }
            None
        }
    }
}

/// One HTTP/1.1 connection until it ends, is upgraded, or is told to close (a deadline, or
/// evicted to make room); its phases are tracked in `conn`.
async fn connection<I>(
    state: Arc<State>,
    stream: I,
    peer: SocketAddr,
    secure: bool,
    conn: ConnHandle,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let timeout = state.conns.timeout;
    let tracked = conn.conn.clone();
    let svc = service_fn(move |req| {
        let state = state.clone();
        let phase = tracked.clone();
        async move {
            phase.busy();
            let r = route::route(state, req, peer, secure).await;
            phase.busy();
            Ok::<_, Infallible>(r.map(|body| Tracked { body, phase }.boxed()))
        }
    });
    let http = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .max_buf_size(64 * 1024)
        // The head, and the wait for the next one on an idle keep-alive connection.
        .header_read_timeout(timeout)
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::select! {
        r = http => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "http connection error");
            }
        }
        _ = conn.conn.closed() => tracing::debug!(%peer, "http connection closed: deadline passed or evicted"),
    }
}

/// A response body that tells its connection's phase: data handed to hyper restarts the
/// deadline, a body waiting for our data (a fallback stream between events) has none.
struct Tracked {
    body: Body,
    phase: Arc<Conn>,
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Infallible>>> {
        let p = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if p.is_pending() {
            self.phase.quiet();
        } else {
            self.phase.busy();
        }
        p
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
