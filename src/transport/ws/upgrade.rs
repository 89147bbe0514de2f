//! The WebSocket handshake (RFC 6455 §4.2) on `{ws_path}/app/{key}`: the `Sec-WebSocket-Key`
//! and `-Version` checks, the accept key, and the admission a Pusher client expects (app
//! lookup, enabled, protocol version, origin, quota). The verdict is reached before the
//! upgrade; a refused client still gets its `101`, then a `pusher:error` and the close code,
//! because that is the only refusal pusher-js understands.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};

use super::{refuse, refuse_with, spawn, WsParams};
use crate::context::Shared;
use crate::http::{self, Body};
use crate::hub::App;
use crate::metrics::AddressSlot;
use crate::protocol::CloseCode;
use crate::resume::{BadToken, Token};
use crate::session;
use crate::transport::wsframe;

/// Does the request ask for a WebSocket (`Upgrade: websocket`, `Connection: upgrade`)?
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    has(header::UPGRADE, "websocket") && has(header::CONNECTION, "upgrade")
}

/// The app key of a WebSocket URL, `{ws_path}/app/{key}`; `Some("")` or a key with a `/` is
/// still the WebSocket endpoint, just not a valid key.
pub fn app_key<'a>(ws_path: &str, path: &'a str) -> Option<&'a str> {
    path.strip_prefix(ws_path)?.strip_prefix("/app/")
}

/// The resume token of a WebSocket URL, `{ws_path}{resume_prefix}/{token}/app/{key}`, and
/// the URL without it (`{ws_path}/app/{key}`); a URL without the prefix has no token.
pub fn resume_token(
    ws_path: &str,
    resume_prefix: &str,
    path: &str,
) -> Result<(Option<Token>, String), BadToken> {
    let Some(rest) = path.strip_prefix(ws_path) else {
        return Ok((None, path.to_owned()));
    };
    match crate::resume::token::split(resume_prefix, rest)? {
        Some((token, rest)) => Ok((Some(token), format!("{ws_path}{rest}"))),
        None => Ok((None, path.to_owned())),
    }
}

/// Answers an upgrade request: `400` for a broken handshake, otherwise `101`, with the
/// connection handed to its own task once hyper lets go of it.
pub fn upgrade(
    shared: &Arc<Shared>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let Some(accept) = accept_key(&req) else {
        let mut r = http::json_error(
            400,
            "Bad WebSocket handshake: a GET over HTTP/1.1 with Sec-WebSocket-Version: 13 and a \
             Sec-WebSocket-Key of 16 base64-encoded bytes is required",
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    };
    let resume = &shared.config.resume;
    let (token, path) = match resume_token(
        &shared.config.server.ws_path,
        &resume.path_prefix,
        req.uri().path(),
    ) {
        Ok(v) => v,
        Err(bad) => return refuse_token(shared, req, peer, bad),
    };
    let origin = crate::resume::Origin {
        token,
        peer: peer_hash(shared, &req, peer),
    };
    // Decide before upgrading; refusals are sent as pusher:error + close code after the upgrade.
    let verdict = admit(shared, &req, &path, peer);
    let upgrade = hyper::upgrade::on(&mut req);
    let shared = shared.clone();
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(e) => {
                if let Ok((app, _slot)) = &verdict {
                    app.disconnected();
                }
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        match verdict {
            Ok((app, slot)) => {
                let socket_id = shared.new_socket_id();
                let params = WsParams {
                    liveness: shared.liveness,
                    outbound_queue: shared.config.server.outbound_queue,
                    coalesce: shared.config.server.coalesce,
                    conn_id: shared.hub.next_conn_id(),
                    socket_id,
                    shutdown: shared.shutdown_signal(),
                    conn: shared.connection_opened(slot, crate::metrics::Transport::WebSocket),
                    resume: origin,
                };
                spawn(upgraded, app, params);
            }
            Err(code) => {
                shared.metrics.connection_rejected(code.code());
                tracing::info!(
                    %peer,
                    code = code.code(),
                    reason = code.message(),
                    "websocket connection refused"
                );
                refuse(upgraded, code).await;
            }
        }
    });
    let mut r = http::empty(StatusCode::SWITCHING_PROTOCOLS);
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// The hash zero-change resume compares (address and user agent), when resume is on.
fn peer_hash<B>(shared: &Shared, req: &Request<B>, peer: SocketAddr) -> u32 {
    if !shared.config.resume.enabled || !shared.config.resume.match_user {
        return 0;
    }
    let agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    crate::resume::peer_hash(&peer.ip().to_string(), agent)
}

/// A malformed resume token: the client still gets its `101`, then a `pusher:error` saying
/// what a token must look like and 4005 (pusher-js does not retry a 40xx).
fn refuse_token(
    shared: &Arc<Shared>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    bad: BadToken,
) -> Response<Body> {
    let accept = accept_key(&req).unwrap_or_default();
    let upgrade = hyper::upgrade::on(&mut req);
    let code = CloseCode::PathNotFound.code();
    shared.metrics.connection_rejected(code);
    tracing::info!(%peer, code, reason = %bad, "websocket connection refused");
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            refuse_with(upgraded, code, &bad.to_string()).await;
        }
    });
    switching(&accept)
}

fn switching(accept: &str) -> Response<Body> {
    let mut r = http::empty(StatusCode::SWITCHING_PROTOCOLS);
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// `Sec-WebSocket-Accept` for the client's key, if the handshake is one we speak (RFC 6455
/// §4.2.1): a `GET` over HTTP/1.1 or later, version 13, and a key that is 16 base64-encoded
/// bytes. Anything else is not a WebSocket client we can trust to frame correctly.
pub(super) fn accept_key<B>(req: &Request<B>) -> Option<String> {
    if req.method() != hyper::Method::GET || req.version() < hyper::Version::HTTP_11 {
        return None;
    }
    let headers = req.headers();
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|_| version_ok)?;
    let nonce = STANDARD.decode(key.as_bytes()).ok()?;
    (nonce.len() == 16).then(|| wsframe::accept_key(key.as_bytes()))
}

/// The app the client may join, counted against its quota and its address's share; or the
/// close code that says why not.
fn admit<B>(
    shared: &Shared,
    req: &Request<B>,
    path: &str,
    peer: SocketAddr,
) -> Result<(Arc<App>, AddressSlot), CloseCode> {
    let key = app_key(&shared.config.server.ws_path, path).ok_or(CloseCode::PathNotFound)?;
    if key.is_empty() || key.contains('/') {
        return Err(CloseCode::PathNotFound);
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    let query = req.uri().query().unwrap_or("");
    let app = session::admit(&shared.hub, key, query, origin)?;
    shared.admit_memory()?;
    let slot = shared.admit_address(&app.config.id, peer)?;
    if !app.try_connect() {
        return Err(CloseCode::OverQuota);
    }
    Ok((app, slot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_tokens_in_ws_urls() {
        let t = "0123456789abcdef0123456789abcdef";
        let (token, path) = resume_token("", "/r", &format!("/r/{t}/app/key")).unwrap();
        assert_eq!(token, Some(Token::parse(t).unwrap()));
        assert_eq!(app_key("", &path), Some("key"));
        let (token, path) = resume_token("/ws", "/r", &format!("/ws/r/{t}/app/key")).unwrap();
        assert!(token.is_some());
        assert_eq!(app_key("/ws", &path), Some("key"));
        assert_eq!(
            resume_token("", "/r", "/app/key").unwrap(),
            (None, "/app/key".into())
        );
        assert!(resume_token("", "/r", "/r/xyz/app/key").is_err());
    }

    #[test]
    fn ws_urls() {
        assert_eq!(app_key("", "/app/key"), Some("key"));
        assert_eq!(app_key("/ws", "/ws/app/key"), Some("key"));
        assert_eq!(app_key("/ws", "/app/key"), None);
        assert_eq!(app_key("", "/app/"), Some(""));
        let req = |headers: &[(&str, &str)]| {
            let mut b = Request::builder().uri("/app/key");
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(()).unwrap()
        };
        let ok = req(&[
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        assert!(is_upgrade(&ok));
        // RFC 6455's own example.
        assert_eq!(
            accept_key(&ok).as_deref(),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        assert!(!is_upgrade(&req(&[("upgrade", "websocket")])));
        assert_eq!(
            accept_key(&req(&[("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")])),
            None
        );
    }
}
