//! The built-in web console at `/console`: a small page embedded in the binary (HTML, JS, CSS
//! and a vendored pusher-js 8), sign-in (admin password or an app's key and secret), and the
//! JSON endpoints the page polls: live state (connections by transport, channels with
//! subscribers and presence members, webhook queue, TLS certificate expiry, uptime, version),
//! the stream of published events (fed by a lossy, bounded tap of the HTTP API), and a "send
//! test event" endpoint that publishes through the HTTP API's own path.
//!
//! Nothing here exists unless `[console]` is configured (every path answers 404). JSON
//! endpoints need the signed session cookie (HttpOnly, SameSite=Strict, Secure over TLS);
//! state-changing ones also need the CSRF token in `X-Pushbox-Csrf`. The page renders every
//! value with `textContent`, never as HTML, and is served with a strict Content-Security-Policy.

pub mod cert;
pub mod session;
pub mod throttle;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::api::{AcceptedEvent, Api, EventTap};
use crate::config::{Config, ConsoleConfig};
use crate::context::Shared;
use crate::http::{Body, BodyError};
use crate::metrics::{Reason, Transport};
use session::{AuthError, Scope, Session, Sessions, CSRF_HEADER};

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
/// pusher-js 8.6.0 (MIT, Pusher), `dist/web/pusher.min.js`.
const PUSHER_JS: &str = include_str!("assets/pusher.min.js");

/// Events kept for the page (older ones drop off).
const RING: usize = 500;
/// Published events waiting in the tap for the console to read them; when full, the oldest are
/// overwritten (counted as lost), never blocking a publish.
const TAP_CAPACITY: usize = 1024;
/// Event data longer than this is cut for display.
const MAX_DATA_SHOWN: usize = 4096;
/// Largest login / publish request body.
const MAX_BODY: usize = 64 * 1024;
/// How long a failed sign-in waits before answering (slows guessing).
const FAILED_LOGIN_DELAY: Duration = Duration::from_millis(300);

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

struct Entry {
    seq: u64,
    at_ms: u64,
    event: Arc<AcceptedEvent>,
}

struct EventRing {
    rx: broadcast::Receiver<(u64, Arc<AcceptedEvent>)>,
    buf: VecDeque<Entry>,
    next_seq: u64,
    lost: u64,
}

impl EventRing {
    /// Moves what the tap holds into the ring.
    fn drain(&mut self) {
        loop {
            match self.rx.try_recv() {
                Ok((at_ms, event)) => {
                    self.next_seq += 1;
                    if self.buf.len() == RING {
                        self.buf.pop_front();
                    }
                    self.buf.push_back(Entry {
                        seq: self.next_seq,
                        at_ms,
                        event,
                    });
                }
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.lost += n,
                Err(_) => break,
            }
        }
    }
}

/// The console of a running server (present only when `[console]` is configured).
pub struct Console {
    config: ConsoleConfig,
    sessions: Sessions,
    tap: EventTap,
    ring: Mutex<EventRing>,
    /// Failed sign-ins per source address.
    throttle: throttle::LoginThrottle,
}

impl Console {
    /// `None` when the configuration has no `[console]`.
    pub fn new(config: &Config) -> Option<Console> {
        let c = config.console.clone()?;
        let (tap, rx) = broadcast::channel(TAP_CAPACITY);
        Some(Console {
            config: c,
            sessions: Sessions::new(),
            tap,
            ring: Mutex::new(EventRing {
                rx,
                buf: VecDeque::new(),
                next_seq: 0,
                lost: 0,
            }),
            throttle: Default::default(),
        })
    }

    /// The sender the HTTP API publishes event summaries into.
    pub fn tap(&self) -> EventTap {
        self.tap.clone()
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn respond(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = crate::http::full(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        content_type,
        body,
    );
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

fn json_response(status: u16, v: Value) -> Response<Body> {
    respond(status, "application/json", v.to_string())
}

fn error(status: u16, msg: impl std::fmt::Display) -> Response<Body> {
    json_response(status, json!({ "error": msg.to_string() }))
}

fn not_found() -> Response<Body> {
    error(404, "Not found")
}

/// Handles every path under `/console`: `console` is `None` when it is off, `api` publishes
/// the test event, `secure`: the request came over TLS.
pub async fn handle(
    shared: &Shared,
    console: Option<&Console>,
    api: &Api,
    req: Request<Incoming>,
    peer: SocketAddr,
    secure: bool,
) -> Response<Body> {
    let Some(console) = console else {
        return error(
            404,
            "Not found: the console is off; add a [console] section (password = \"…\") to the config to turn it on",
        );
    };
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (method, path.as_str()) {
        (Method::GET, "/console" | "/console/") => {
            let mut r = respond(200, "text/html; charset=utf-8", INDEX_HTML);
            r.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            );
            r
        }
        (Method::GET, "/console/app.js") => respond(200, "text/javascript; charset=utf-8", APP_JS),
        (Method::GET, "/console/app.css") => respond(200, "text/css; charset=utf-8", APP_CSS),
        (Method::GET, "/console/pusher.min.js") => {
            respond(200, "text/javascript; charset=utf-8", PUSHER_JS)
        }
        (Method::POST, "/console/login") => login(shared, console, req, peer, secure).await,
        (Method::POST, "/console/logout") => {
            let mut r = json_response(200, json!({}));
            if let Ok(v) = HeaderValue::from_str(&cookie_header("", 0, secure)) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        (Method::GET, "/console/api/state") => match authed(console, &req) {
            Ok(s) => json_response(200, snapshot(shared, console, &s)),
            Err(e) => error(401, e),
        },
        (Method::GET, "/console/api/events") => match authed(console, &req) {
            Ok(s) => {
                let after = req
                    .uri()
                    .query()
                    .and_then(|q| {
                        form_urlencoded::parse(q.as_bytes())
                            .find(|(k, _)| k == "after")
                            .and_then(|(_, v)| v.parse::<u64>().ok())
                    })
                    .unwrap_or(0);
                json_response(200, events(console, &s, after))
            }
            Err(e) => error(401, e),
        },
        (Method::POST, "/console/api/publish") => {
            let session = match authed(console, &req) {
                Ok(s) => s,
                Err(e) => return error(401, e),
            };
            let csrf = req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            if let Err(e) = console.sessions.check_csrf(&session, csrf) {
                return error(403, e);
            }
            publish(shared, api, &session, req).await
        }
        (_, "/console" | "/console/" | "/console/login" | "/console/logout")
        | (_, "/console/api/state" | "/console/api/events" | "/console/api/publish") => {
            error(405, "Method not allowed")
        }
        _ => not_found(),
    }
}

fn authed(console: &Console, req: &Request<Incoming>) -> Result<Session, AuthError> {
    console.sessions.verify(
        req.headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok()),
        now_secs(),
    )
}

fn cookie_header(value: &str, max_age: u64, secure: bool) -> String {
    format!(
        "{}={value}; Path=/console; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        session::COOKIE,
        if secure { "; Secure" } else { "" }
    )
}

async fn read_body(shared: &Shared, req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    let timeout = shared.config.server.request_timeout;
    crate::http::read_body(req.into_body(), MAX_BODY, timeout)
        .await
        .map_err(|e| {
            let status = match e {
                BodyError::TooLarge => 413,
                BodyError::Unreadable => 400,
                BodyError::TimedOut => {
                    shared.metrics.refused(Reason::HttpTimeout);
                    408
                }
            };
            error(status, e.message(MAX_BODY, timeout))
        })
}

#[derive(Deserialize)]
struct LoginBody {
    password: Option<String>,
    key: Option<String>,
    secret: Option<String>,
}

async fn login(
    shared: &Shared,
    console: &Console,
    req: Request<Incoming>,
    peer: SocketAddr,
    secure: bool,
) -> Response<Body> {
    // Before anything is read or checked: a throttled address learns nothing from trying.
    let failures = match console
        .throttle
        .attempt(peer.ip(), std::time::Instant::now())
    {
        Ok(n) => n,
        Err(t) => return throttled(shared, peer, &t),
    };
    let body = match read_body(shared, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(b) = serde_json::from_slice::<LoginBody>(&body) else {
        return error(
            400,
            "Send JSON: {\"password\":\"…\"} or {\"key\":\"…\",\"secret\":\"…\"}",
        );
    };
    let cfg = &console.config;
    let scope = match (&b.password, &b.key, &b.secret) {
        (Some(p), _, _) => cfg
            .password
            .as_deref()
            .filter(|want| crate::protocol::auth::constant_time_eq(p.as_bytes(), want.as_bytes()))
            .map(|_| Scope::Admin),
        (None, Some(k), Some(s)) if cfg.app_login => shared.hub.app_by_key(k).and_then(|app| {
            crate::protocol::auth::constant_time_eq(s.as_bytes(), app.config.secret.as_bytes())
                .then(|| Scope::App(app.config.id.clone()))
        }),
        _ => None,
    };
    let Some(scope) = scope else {
        shared.metrics.refused(Reason::LoginFailed);
        tracing::warn!(%peer, failures, "console sign-in refused: wrong password or app key/secret");
        tokio::time::sleep(FAILED_LOGIN_DELAY).await;
        return error(
            401,
            "Wrong password, or wrong app key and secret: check [console] password (PUSHBOX_CONSOLE_PASSWORD) or the app's credentials",
        );
    };
    console.throttle.succeeded(peer.ip());
    let expires = now_secs().saturating_add(cfg.session_lifetime.as_secs());
    let (value, session) = console.sessions.issue(&scope, expires);
    tracing::info!(%peer, scope = ?scope, "console sign-in");
    let mut r = json_response(
        200,
        json!({ "csrf": console.sessions.csrf(&session), "expires": expires }),
    );
    if let Ok(v) = HeaderValue::from_str(&cookie_header(
        &value,
        cfg.session_lifetime.as_secs(),
        secure,
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// 429 with `Retry-After` for a sign-in from an address that failed too often; logged.
fn throttled(shared: &Shared, peer: SocketAddr, t: &throttle::Throttled) -> Response<Body> {
    shared.metrics.refused(Reason::LoginThrottled);
    tracing::warn!(%peer, retry_after = t.retry_after, locked = t.locked, "console sign-in throttled");
    let mut r = error(429, t.message());
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(t.retry_after));
    r
}

fn snapshot(shared: &Shared, console: &Console, session: &Session) -> Value {
    let m = &shared.metrics;
    let mut apps = Vec::new();
    let (mut ws, mut http) = (0i64, 0i64);
    for app in shared.hub.apps() {
        if !session.scope.allows(&app.config.id) {
            continue;
        }
        let am = m.app(&app.config.id);
        let a_ws = am
            .transport(Transport::WebSocket)
            .open
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(0);
        let a_http = am
            .transport(Transport::Http)
            .open
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(0);
        ws += a_ws;
        http += a_http;
        let channels: Vec<Value> = app
            .channels("")
            .into_iter()
            .take(500)
            .map(|c| {
                let members = c
                    .user_count
                    .map(|_| app.users(&c.name).into_iter().take(100).collect::<Vec<_>>());
                json!({
                    "name": c.name,
                    "subscribers": c.subscription_count,
                    "user_count": c.user_count,
                    "members": members,
                })
            })
            .collect();
        apps.push(json!({
            "id": app.config.id,
            "key": app.config.key,
            "enabled": app.config.enabled,
            "connections": { "websocket": a_ws, "http": a_http, "total": a_ws + a_http },
            "messages_in": app.counters.messages_in.load(std::sync::atomic::Ordering::Relaxed),
            "messages_out": app.counters.messages_out.load(std::sync::atomic::Ordering::Relaxed),
            "api_events": app.counters.api_events.load(std::sync::atomic::Ordering::Relaxed),
            "channels": channels,
        }));
    }
    let webhooks = m.webhooks().map(|w| {
        json!({
            "queue_depth": w.queue_depth,
            "oldest_pending_age_ms": w.oldest_pending_age_ms,
            "delivered": w.delivered,
            "failed_attempts": w.failed_attempts,
            "dead_letters": w.dead_letters,
            "events_dropped": w.events_dropped,
        })
    });
    let tls = match &shared.config.tls {
        None => json!({ "configured": false }),
        Some(t) => match cert::not_after(&t.cert) {
            Ok(at) => {
                let now = now_secs() as i64;
                json!({ "configured": true, "not_after": at, "days_left": (at - now).div_euclid(86400), "expired": at <= now })
            }
            Err(e) => json!({ "configured": true, "error": e }),
        },
    };
    let spool = m.spool().map(|s| {
        s.bytes
            .iter()
            .map(|(n, b)| (n.to_string(), json!(b)))
            .collect::<serde_json::Map<_, _>>()
    });
    let cluster = m.cluster().map(|c| {
        json!({ "redis_up": c.redis_up, "nodes": c.nodes, "lag_seconds": c.lag_seconds, "lag_entries": c.lag_entries })
    });
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": m.uptime_secs(),
        "scope": match &session.scope { Scope::Admin => "admin".to_owned(), Scope::App(id) => format!("app {id}") },
        "expires": session.expires,
        "csrf": console.sessions.csrf(session),
        "connections": { "websocket": ws, "http": http, "total": ws + http },
        "apps": apps,
        "webhooks": webhooks,
        "tls": tls,
        "spool": spool,
        "cluster": cluster,
        "ws_path": shared.config.server.ws_path,
        "http_path": shared.config.server.http_path,
    })
}

fn events(console: &Console, session: &Session, after: u64) -> Value {
    let mut ring = console.ring.lock().unwrap_or_else(|e| e.into_inner());
    ring.drain();
    let list: Vec<Value> = ring
        .buf
        .iter()
        .filter(|e| e.seq > after && session.scope.allows(&e.event.app_id))
        .map(|e| {
            let ev = &e.event;
            let (data, cut) = if ev.data.len() > MAX_DATA_SHOWN {
                let mut n = MAX_DATA_SHOWN;
                while !ev.data.is_char_boundary(n) {
                    n -= 1;
                }
                (&ev.data[..n], true)
            } else {
                (ev.data.as_str(), false)
            };
            json!({
                "seq": e.seq,
                "time_ms": e.at_ms,
                "app": ev.app_id,
                "name": ev.name,
                "channels": ev.channels,
                "data": data,
                "truncated": cut,
                "socket_id": ev.socket_id,
                "delivered": ev.delivered,
            })
        })
        .collect();
    json!({ "events": list, "next": ring.next_seq, "lost": ring.lost })
}

#[derive(Deserialize)]
struct PublishBody {
    app: Option<String>,
    channel: String,
    event: String,
    data: String,
}

async fn publish(
    shared: &Shared,
    api: &Api,
    session: &Session,
    req: Request<Incoming>,
) -> Response<Body> {
    let body = match read_body(shared, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(b) = serde_json::from_slice::<PublishBody>(&body) else {
        return error(
            400,
            "Send JSON: {\"app\":\"…\",\"channel\":\"…\",\"event\":\"…\",\"data\":\"…\"}",
        );
    };
    let app_id = match (b.app, &session.scope) {
        (Some(a), _) => a,
        (None, Scope::App(id)) => id.clone(),
        (None, Scope::Admin) => match shared.hub.apps().first() {
            Some(a) => a.config.id.clone(),
            None => return error(400, "No app configured"),
        },
    };
    if !session.scope.allows(&app_id) {
        return error(
            403,
            format!("This session may not publish to app {app_id:?}"),
        );
    }
    let api_body = json!({ "name": b.event, "channel": b.channel, "data": b.data }).to_string();
    let r = api.trigger_trusted(&app_id, api_body.as_bytes()).await;
    tracing::info!(app = %app_id, channel = %b.channel, event = %b.event, status = r.status, "console test event");
    respond(r.status, "application/json", r.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_embedded_and_small() {
        assert!(INDEX_HTML.contains("app.js") && INDEX_HTML.contains("pusher.min.js"));
        assert!(PUSHER_JS.contains("Released under the MIT licence"));
        assert!(
            !APP_JS.contains("innerHTML"),
            "render with textContent only"
        );
        let total = INDEX_HTML.len() + APP_JS.len() + APP_CSS.len() + PUSHER_JS.len();
        assert!(total < 120 * 1024, "console assets grew to {total} bytes");
    }

    #[test]
    fn cookie_attributes() {
        let c = cookie_header("v", 60, true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("; Secure"));
        assert!(c.contains("Max-Age=60") && c.contains("Path=/console"));
        assert!(!cookie_header("v", 60, false).contains("Secure"));
    }
}
