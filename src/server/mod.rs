//! Wiring: listeners (plain and TLS), the HTTP/1.1 connection loop (hyper), routing to the
//! WebSocket transport, the HTTP API and the health check, and graceful shutdown. No business
//! logic.

pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{Api, ApiError, ApiRequest, ApiResponse, EventLog};
use crate::config::Config;
use crate::hub::{Hub, HubObserver};
use crate::protocol::{CloseCode, SocketId};
use crate::session::Liveness;
use crate::transport::ws;

pub type Body = BoxBody<Bytes, Infallible>;

/// Shared state of a running server.
pub struct State {
    pub config: Config,
    pub hub: Arc<Hub>,
    pub api: Api,
    pub liveness: Liveness,
    rng: ring::rand::SystemRandom,
    shutdown: watch::Receiver<bool>,
    pub started: std::time::Instant,
    /// Lock-free counters for `/metrics` and the console.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The HTTP fallback sessions (made on the first fallback request).
    pub fallback: std::sync::OnceLock<Arc<crate::transport::fallback::Registry>>,
    /// The web console, when `[console]` is configured.
    pub console: Option<Arc<crate::console::Console>>,
}

/// Stops a running server: every connection is told to reconnect (4200).
pub struct ShutdownHandle(watch::Sender<bool>);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        let _ = self.0.send(true);
    }
}

impl State {
    pub fn new(
        config: Config,
        observer: Arc<dyn HubObserver>,
        log: Option<Arc<dyn EventLog>>,
    ) -> (Arc<State>, ShutdownHandle) {
        let hub = Arc::new(Hub::new(config.apps.clone(), observer));
        let (tx, rx) = watch::channel(false);
        let liveness = Liveness {
            activity_timeout: Duration::from_secs(config.server.activity_timeout),
            pong_timeout: Duration::from_secs(config.server.pong_timeout),
        };
        let console = crate::console::Console::new(&config).map(Arc::new);
        let mut api = Api::new(hub.clone(), log);
        api.tap = console.as_ref().map(|c| c.tap());
        let state = State {
            metrics: Arc::new(crate::metrics::Metrics::new(&config)),
            console,
            fallback: std::sync::OnceLock::new(),
            api,
            hub,
            liveness,
            config,
            rng: ring::rand::SystemRandom::new(),
            shutdown: rx,
            started: std::time::Instant::now(),
        };
        (Arc::new(state), ShutdownHandle(tx))
    }
}

impl State {
    /// A fresh `digits.digits` socket id.
    pub fn new_socket_id(&self) -> SocketId {
        SocketId::random(&self.rng)
    }

    /// Changes to `true` when the server shuts down (connections send 4200 and close).
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }
}

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
    let mut shutdown = state.shutdown.clone();
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
        async move { Ok::<_, Infallible>(route(state, req, peer, secure).await) }
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

pub fn full(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub fn json(status: u16, body: String) -> Response<Body> {
    full(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        "application/json",
        body,
    )
}

fn json_error(status: u16, msg: &str) -> Response<Body> {
    json(status, serde_json::json!({ "error": msg }).to_string())
}

async fn route(
    state: Arc<State>,
    req: Request<Incoming>,
    peer: SocketAddr,
    secure: bool,
) -> Response<Body> {
    // The HTTP API first: it is the hot path of a publishing shop and needs no allocation here.
    if req.uri().path().starts_with("/apps/") && !is_upgrade(&req) {
        let r = api(state.clone(), req, peer).await;
        state.metrics.api_request(r.status().as_u16());
        return r;
    }
    let path = req.uri().path().to_owned();
    let ws_prefix = format!("{}/app/", state.config.server.ws_path);
    if is_upgrade(&req) {
        return websocket(state, req, &path, &ws_prefix, peer);
    }
    if path == "/up" || path == "/ready" {
        return json(200, "{\"status\":\"ok\"}".into());
    }
    if path.starts_with("/apps/") {
        let r = api(state.clone(), req, peer).await;
        state.metrics.api_request(r.status().as_u16());
        return r;
    }
    if path == "/metrics" {
        return metrics(&state, &req, peer);
    }
    if path == "/console" || path.starts_with("/console/") {
        return crate::console::handle(state, req, peer, secure).await;
    }
    if crate::transport::fallback::is_fallback_path(&state.config.server.http_path, &path) {
        return crate::transport::fallback::handle(state, req).await;
    }
    if path.starts_with(&ws_prefix) {
        return json_error(
            400,
            "This is the WebSocket endpoint: connect with a WebSocket client (Upgrade: websocket)",
        );
    }
    json_error(404, &format!("Not found: {path}"))
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    has(header::UPGRADE, "websocket") && has(header::CONNECTION, "upgrade")
}

fn websocket(
    state: Arc<State>,
    mut req: Request<Incoming>,
    path: &str,
    ws_prefix: &str,
    peer: SocketAddr,
) -> Response<Body> {
    let version_ok = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let Some(key) = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|_| version_ok)
    else {
        let mut r = json_error(
            400,
            "Bad WebSocket handshake: Sec-WebSocket-Key and Sec-WebSocket-Version: 13 are required",
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    };
    let accept = crate::transport::wsframe::accept_key(key.as_bytes());
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let query = req.uri().query().unwrap_or("").to_owned();

    // Decide before upgrading; refusals are sent as pusher:error + close code after the upgrade.
    let verdict: Result<Arc<crate::hub::App>, CloseCode> = (|| {
        let key = path
            .strip_prefix(ws_prefix)
            .ok_or(CloseCode::PathNotFound)?;
        if key.is_empty() || key.contains('/') {
            return Err(CloseCode::PathNotFound);
        }
        let app = crate::session::admit(&state.hub, key, &query, origin.as_deref())?;
        if !app.try_connect() {
            return Err(CloseCode::OverQuota);
        }
        Ok(app)
    })();

    let upgrade = hyper::upgrade::on(&mut req);
    let st = state.clone();
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(e) => {
                if let Ok(app) = &verdict {
                    app.disconnected();
                }
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        match verdict {
            Ok(app) => {
                let params = ws::WsParams {
                    liveness: st.liveness,
                    outbound_queue: st.config.server.outbound_queue,
                    coalesce: Duration::from_millis(st.config.server.coalesce_ms),
                    conn_id: st.hub.next_conn_id(),
                    socket_id: SocketId::random(&st.rng),
                    shutdown: st.shutdown.clone(),
                    conn: st
                        .metrics
                        .connection_opened(&app.config.id, crate::metrics::Transport::WebSocket),
                };
                ws::spawn(upgraded, app, params);
            }
            Err(code) => {
                st.metrics.connection_rejected(code.code());
                tracing::info!(
                    %peer,
                    code = code.code(),
                    reason = code.message(),
                    "websocket connection refused"
                );
                ws::refuse(upgraded, code).await;
            }
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// `/metrics`: Prometheus text, if the peer and its token are allowed.
fn metrics(state: &State, req: &Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match state.metrics.check_access(peer.ip(), auth) {
        Ok(()) => full(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.render(&state.hub),
        ),
        Err(refusal) => {
            tracing::info!(%peer, status = refusal.status(), "metrics scrape refused");
            let mut r = json_error(refusal.status(), refusal.message());
            if refusal == crate::metrics::Refusal::Token {
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"pushbox metrics\""),
                );
            }
            r
        }
    }
}

async fn api(state: Arc<State>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let max = state.config.server.max_request_bytes;
    let body = match Limited::new(body, max).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let r = ApiResponse::from(
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    ApiError::BodyTooLarge { max }
                } else {
                    ApiError::UnreadableBody
                },
            );
            return json(r.status, r.body);
        }
    };
    let r = state
        .api
        .handle(ApiRequest {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            body: &body,
        })
        .await;
    if r.status >= 400 {
        tracing::info!(%peer, status = r.status, path = parts.uri.path(), error = %r.body, "api request refused");
    }
    json(r.status, r.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::session::check_protocol;

    #[test]
    fn protocol_versions() {
        assert_eq!(check_protocol(""), Ok(()));
        assert_eq!(check_protocol("protocol=7&client=js"), Ok(()));
        assert_eq!(check_protocol("protocol=5"), Ok(()));
        assert_eq!(
            check_protocol("protocol=4"),
            Err(CloseCode::UnsupportedProtocol)
        );
        assert_eq!(
            check_protocol("protocol=8"),
            Err(CloseCode::UnsupportedProtocol)
        );
        assert_eq!(
            check_protocol("protocol=seven"),
            Err(CloseCode::InvalidVersion)
        );
        assert_eq!(check_protocol("protocol="), Err(CloseCode::InvalidVersion));
    }
}
