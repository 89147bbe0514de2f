//! Listening: binding an address (with an error that says what to do), the accept loops of the
//! plain and TLS listeners, and one hyper HTTP/1.1 connection per accepted socket.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::{route, tls, State};
use crate::config::Config;

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
                    let state = state.clone();
                    let _ = stream.set_nodelay(true);
                    match &tls {
                        None => {
                            tokio::spawn(async move { connection(state, stream, peer, false).await });
                        }
                        Some(tls) => {
                            let acceptor = tls.acceptor();
                            tokio::spawn(async move {
                                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                    Ok(Ok(s)) => connection(state, s, peer, true).await,
                                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                                }
                            });
                        }
                    }
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn connection<I>(state: Arc<State>, stream: I, peer: SocketAddr, secure: bool)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(route::route(state, req, peer, secure).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .max_buf_size(64 * 1024)
        .header_read_timeout(Duration::from_secs(30))
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "http connection error");
    }
}
