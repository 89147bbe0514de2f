//! pusher-js's HTTP fallback transports (PUSHER.md §9): `xhr_streaming`, `xhr` (polling) and
//! `xhr_send` under `{http_path}/app/{key}/{server}/{session}/`. This module owns the HTTP side
//! — URL parsing, the admission checks a WebSocket gets (unknown key 4001, disabled 4003,
//! protocol 4006/4007, origin 4009, quota 4004, and 4100 past the fallback session cap),
//! response headers, CORS and preflight, request bodies. Each session runs in its own task
//! (`driver`) around the same `Session` state machine WebSocket uses; no protocol logic here.

mod driver;
mod frames;
mod registry;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::{mpsc, oneshot};

pub use registry::{Options, Registry};

use crate::context::Shared;
use crate::http::{self, Body, BodyError};
use crate::hub::Outbox;
use crate::protocol::CloseCode;
use crate::resume::{BadToken, Token};
use crate::session::{self, Session};
use driver::{Cmd, Driver, Kind, Receiver};

/// How long an `xhr_send` may wait for its session to take the frames.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Does `path` belong to the fallback transports (`{http_path}/app/…`, or with a resume
/// token `{http_path}{resume_prefix}/{token}/app/…`, a malformed token included)?
pub fn is_fallback_path(http_path: &str, resume_prefix: &str, path: &str) -> bool {
    path.strip_prefix(http_path).is_some_and(|rest| {
        rest.starts_with("/app/")
            || rest
                .strip_prefix(resume_prefix)
                .and_then(|r| r.strip_prefix('/'))
                .is_some_and(|r| r.contains("/app/"))
    })
}

/// The resume token of a fallback URL and the URL without it (see [`is_fallback_path`]).
fn split_token<'a>(
    http_path: &str,
    resume_prefix: &str,
    path: &'a str,
) -> Result<(Option<Token>, std::borrow::Cow<'a, str>), BadToken> {
    let Some(rest) = path.strip_prefix(http_path) else {
        return Ok((None, path.into()));
    };
    match crate::resume::token::split(resume_prefix, rest)? {
        Some((token, rest)) => Ok((Some(token), format!("{http_path}{rest}").into())),
        None => Ok((None, path.into())),
    }
}

/// Which endpoint a request is for.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint {
    Receive(Kind),
    Send,
}

/// `{key}/{server}/{session}/{endpoint}` after `{http_path}/app/`.
#[derive(Debug, PartialEq, Eq)]
struct Target<'a> {
    key: &'a str,
    server: &'a str,
    session: &'a str,
    endpoint: Endpoint,
}

/// Session and server ids: pusher-js uses 0–999 and 8 chars of `[0-9a-v]`; accept any short
/// token SockJS clients could use, nothing that could smuggle path syntax.
fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn parse_target<'a>(http_path: &str, path: &'a str) -> Option<Target<'a>> {
    let rest = path.strip_prefix(http_path)?.strip_prefix("/app/")?;
    let mut parts = rest.split('/');
    let (key, server, session, endpoint) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || key.is_empty() || !valid_id(server) || !valid_id(session) {
        return None;
    }
    let endpoint = match endpoint {
        "xhr_streaming" => Endpoint::Receive(Kind::Streaming),
        "xhr" => Endpoint::Receive(Kind::Polling),
        "xhr_send" => Endpoint::Send,
        _ => return None,
    };
    Some(Target {
        key,
        server,
        session,
        endpoint,
    })
}

/// Serves one request under `{http_path}/app/`; every answer carries CORS headers.
pub async fn handle(
    shared: &Shared,
    registry: &Arc<Registry>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut resp = if req.method() == Method::OPTIONS {
        preflight(req.headers())
    } else {
        dispatch(shared, registry, req, peer).await
    };
    cors(resp.headers_mut(), origin);
    resp
}

async fn dispatch(
    shared: &Shared,
    registry: &Arc<Registry>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let http_path = &shared.config.server.http_path;
    let (token, path) = match split_token(
        http_path,
        &shared.config.resume.path_prefix,
        req.uri().path(),
    ) {
        Ok((token, path)) => (token, path.into_owned()),
        Err(bad) => return text(StatusCode::BAD_REQUEST, bad.to_string()),
    };
    let Some(target) = parse_target(http_path, &path) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("Not found: {path}. The HTTP fallback URLs are {http_path}/app/{{key}}/{{server}}/{{session}}/xhr_streaming, /xhr and /xhr_send (pusher-js builds them from httpHost, httpPort and httpPath)"),
        );
    };
    if req.method() != Method::POST {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "The HTTP fallback endpoints take POST (as pusher-js sends them)",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("OPTIONS, POST"));
        return r;
    }
    let key = format!("{}/{}/{}", target.key, target.server, target.session);
    match target.endpoint {
        Endpoint::Send => send(shared, registry, &key, req).await,
        Endpoint::Receive(kind) => {
            let origin = req
                .headers()
                .get(header::ORIGIN)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let query = req.uri().query().unwrap_or("").to_owned();
            let agent = req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let resume = crate::resume::Origin {
                token,
                peer: if shared.config.resume.enabled && shared.config.resume.match_user {
                    crate::resume::peer_hash(&peer.ip().to_string(), agent)
                } else {
                    0
                },
            };
            // The request body (pusher-js sends none) is not read.
            drop(req);
            let client = Client {
                app_key: target.key,
                origin: origin.as_deref(),
                query: &query,
                peer,
                resume,
            };
            receive(shared, registry, &key, kind, client).await
        }
    }
}

/// What a receive request says about its client: the WebSocket handshake's admission checks
/// run on these.
struct Client<'a> {
    app_key: &'a str,
    origin: Option<&'a str>,
    query: &'a str,
    peer: SocketAddr,
    /// The resume token of the URL and the address/agent hash.
    resume: crate::resume::Origin,
}

/// A receive request: attach to the session, or open it (running the WebSocket handshake's
/// checks, in the same order and with the same codes), and stream its lines.
async fn receive(
    shared: &Shared,
    registry: &Arc<Registry>,
    key: &str,
    kind: Kind,
    client: Client<'_>,
) -> Response<Body> {
    let capacity = match kind {
        Kind::Streaming => driver::STREAM_CHUNKS,
        Kind::Polling => 1,
    };
    // An existing session resumes without `o` (stream rollover, next poll).
    if let Some(h) = registry.get(key) {
        let (tx, rx) = mpsc::channel(capacity);
        if h.tx.send(Cmd::Attach(Receiver { kind, tx })).await.is_ok() {
            return receive_response(rx);
        }
        // The session ended meanwhile: an unknown session on a receive URL is a new one.
    }
    let app = match session::admit(&shared.hub, client.app_key, client.query, client.origin) {
        Ok(app) => app,
        Err(code) => return refused(shared, code),
    };
    let opened = registry.open(key, || {
        shared.admit_memory()?;
        let slot = shared.admit_address(&app.config.id, client.peer)?;
        if app.try_connect() {
            Ok(slot)
        } else {
            Err(CloseCode::OverQuota)
        }
    });
    let (handle, new) = match opened {
        Ok(v) => v,
        Err(Ok(registry::OpenError::Full)) => {
            tracing::warn!(
                max = registry.options.max_sessions,
                "fallback session refused: too many HTTP fallback sessions"
            );
            return refused(shared, CloseCode::OverCapacity);
        }
        Err(Err(code)) => return refused(shared, code),
    };
    if let Some((id, cmds, slot)) = new {
        let outbox = Arc::new(Outbox::new(
            shared.hub.next_conn_id(),
            shared.new_socket_id(),
            shared.config.server.outbound_queue,
        ));
        let conn = shared.connection_opened(slot, crate::metrics::Transport::Http);
        let session = Session::connect(app, outbox.clone(), shared.liveness, client.resume).await;
        let d = Driver {
            key: key.to_owned(),
            id,
            registry: registry.clone(),
            session: Some(session),
            outbox,
            cmds,
            shutdown: shared.shutdown_signal(),
            conn,
            metrics: shared.metrics.clone(),
        };
        tokio::spawn(d.run());
    }
    let (tx, rx) = mpsc::channel(capacity);
    if handle
        .tx
        .send(Cmd::Attach(Receiver { kind, tx }))
        .await
        .is_err()
    {
        // Shut down between registering and attaching.
        return refused(shared, CloseCode::ReconnectNow);
    }
    receive_response(rx)
}

/// A refused receive request: `o`, `a[pusher:error]`, `c[code,"reason"]`, still 200 (pusher-js
/// reads lines only from a 200 response).
fn refused(shared: &Shared, code: CloseCode) -> Response<Body> {
    shared.metrics.connection_rejected(code.code());
    tracing::info!(
        code = code.code(),
        reason = code.message(),
        "fallback connection refused"
    );
    let (error, code, reason) = session::refusal(code);
    let mut r = Response::new(Full::new(frames::refusal(&error, code, reason)).boxed());
    receive_headers(r.headers_mut());
    r
}

/// `xhr_send`: a JSON array of strings, each a Pusher frame; `[]` is a heartbeat.
async fn send(
    shared: &Shared,
    registry: &Registry,
    key: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let server = &shared.config.server;
    let (max, timeout) = (server.max_request_bytes, server.request_timeout);
    let body = match http::read_body(req.into_body(), max, timeout).await {
        Ok(b) => b,
        Err(e) => {
            let status = match e {
                BodyError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                BodyError::Unreadable => StatusCode::BAD_REQUEST,
                BodyError::TimedOut => {
                    shared.metrics.refused(crate::metrics::Reason::HttpTimeout);
                    StatusCode::REQUEST_TIMEOUT
                }
            };
            let why = e.message(max, timeout);
            return text(
                status,
                format!("xhr_send: {why} (server.max_request_bytes, server.request_timeout)"),
            );
        }
    };
    let frames = match parse_send_body(&body) {
        Ok(f) => f,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("xhr_send body must be a JSON array of strings, each a Pusher frame (e.g. [\"{{\\\"event\\\":\\\"pusher:ping\\\",\\\"data\\\":{{}}}}\"]): {e}"),
            )
        }
    };
    let Some(h) = registry.get(key) else {
        return text(
            StatusCode::NOT_FOUND,
            "Unknown or expired session: open it with an xhr_streaming or xhr request first",
        );
    };
    let (reply, taken) = oneshot::channel();
    let sent = async {
        h.tx.send(Cmd::Send(frames, reply)).await.ok()?;
        taken.await.ok()
    };
    match tokio::time::timeout(SEND_TIMEOUT, sent).await {
        Ok(Some(true)) => {
            let mut r = http::empty(StatusCode::NO_CONTENT);
            no_store(r.headers_mut());
            r
        }
        // Ended, or closed (4100, terminated…) with its close line waiting for a receive.
        Ok(Some(false) | None) => text(
            StatusCode::NOT_FOUND,
            "Session closed: its next xhr_streaming or xhr request gets the close code",
        ),
        Err(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "Session busy: frames not taken in time, retry",
        ),
    }
}

/// The body of an `xhr_send`: a JSON array of strings, each a Pusher frame (`[]` is a
/// heartbeat). Anything else is an error the client is told about; the frames themselves are
/// parsed by the session like a WebSocket's.
pub fn parse_send_body(body: &[u8]) -> Result<Vec<String>, serde_json::Error> {
    serde_json::from_slice(body)
}

/// A streaming or polling response fed by the session's task; each chunk is flushed as sent.
fn receive_response(rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    let mut r = Response::new(ChunkBody(rx).boxed());
    receive_headers(r.headers_mut());
    r
}

/// The body of a receive response: chunks from the session's task until it drops the sender.
struct ChunkBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChunkBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|c| c.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

fn no_store(h: &mut HeaderMap) {
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache, must-revalidate, max-age=0"),
    );
}

fn receive_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/javascript; charset=UTF-8"),
    );
    no_store(h);
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut r = http::full(status, "text/plain; charset=UTF-8", body.into() + "\n");
    no_store(r.headers_mut());
    r
}

/// CORS preflight (pusher-js sends `Content-Type: application/json`, so browsers ask first).
fn preflight(req: &HeaderMap) -> Response<Body> {
    let mut r = http::empty(StatusCode::NO_CONTENT);
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("OPTIONS, POST"),
    );
    let allow_headers = req
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("Content-Type"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers);
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    r
}

/// Every fallback response may be read cross-origin: echo the page's Origin (with
/// credentials), or `*` without one.
fn cors(h: &mut HeaderMap, origin: Option<HeaderValue>) {
    match origin {
        Some(o) => {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        None => {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_tokens_in_fallback_paths() {
        let t = "0123456789abcdef0123456789abcdef";
        let path = format!("/pusher/r/{t}/app/key/123/abcdefgh/xhr");
        assert!(is_fallback_path("/pusher", "/r", &path));
        let (token, rest) = split_token("/pusher", "/r", &path).unwrap();
        assert_eq!(token, Token::parse(t).ok());
        assert_eq!(rest, "/pusher/app/key/123/abcdefgh/xhr");
        assert!(parse_target("/pusher", &rest).is_some());
        assert!(is_fallback_path(
            "/pusher",
            "/r",
            "/pusher/r/bad/app/key/1/s/xhr"
        ));
        assert!(split_token("/pusher", "/r", "/pusher/r/bad/app/key/1/s/xhr").is_err());
        let (token, rest) = split_token("/pusher", "/r", "/pusher/app/key/1/s/xhr").unwrap();
        assert_eq!((token, rest.as_ref()), (None, "/pusher/app/key/1/s/xhr"));
    }

    #[test]
    fn paths() {
        assert!(is_fallback_path("/pusher", "/r", "/pusher/app/k/1/abc/xhr"));
        assert!(!is_fallback_path("/pusher", "/r", "/app/k"));
        assert!(!is_fallback_path("/pusher", "/r", "/pusherx/app/k"));
        assert!(is_fallback_path("", "/r", "/app/k/1/abc/xhr"));
        let t = parse_target("/pusher", "/pusher/app/key/123/abcdefgh/xhr_streaming").unwrap();
        assert_eq!(
            t,
            Target {
                key: "key",
                server: "123",
                session: "abcdefgh",
                endpoint: Endpoint::Receive(Kind::Streaming)
            }
        );
        assert_eq!(
            parse_target("/pusher", "/pusher/app/key/1/s/xhr").map(|t| t.endpoint),
            Some(Endpoint::Receive(Kind::Polling))
        );
        assert_eq!(
            parse_target("/pusher", "/pusher/app/key/1/s/xhr_send").map(|t| t.endpoint),
            Some(Endpoint::Send)
        );
        for bad in [
            "/pusher/app/key/1/s/eventsource",
            "/pusher/app/key/1/s/xhr/more",
            "/pusher/app/key/1/xhr",
            "/pusher/app//1/s/xhr",
            "/pusher/app/key/1/s.x/xhr",
            "/pusher/app/key//s/xhr",
            "/pusher/app/key",
        ] {
            assert_eq!(parse_target("/pusher", bad), None, "{bad}");
        }
    }
}
