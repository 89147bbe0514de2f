//! Routing: which module answers a request. The HTTP API goes first (a publishing shop's hot
//! path), then WebSocket upgrades, the health check, `/metrics`, the console and the fallback
//! transports. `/metrics` and the API's body reading live here: they are the server's own
//! small endpoints around modules that know no HTTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};

use super::State;
use crate::api::{ApiError, ApiRequest, ApiResponse, LogStatus};
use crate::http::{self, json, json_error, Body, BodyError};
use crate::metrics::Reason;
use crate::transport::{fallback, ws::upgrade};

pub(super) async fn route(
    state: Arc<State>,
    req: Request<Incoming>,
    peer: SocketAddr,
    secure: bool,
) -> Response<Body> {
    let shared = &state.shared;
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is answered 400 (hyper lets it through).
    if req.version() == hyper::Version::HTTP_11 && !req.headers().contains_key(header::HOST) {
        return json_error(400, "Bad request: HTTP/1.1 requires a Host header");
    }
    // The HTTP API first: it is the hot path of a publishing shop and needs no allocation here.
    if req.uri().path().starts_with("/apps/") && !upgrade::is_upgrade(&req) {
        let r = api(&state, req, peer).await;
        shared.metrics.api_request(r.status().as_u16());
        return r;
    }
    if upgrade::is_upgrade(&req) {
        return upgrade::upgrade(shared, req, peer);
    }
    let path = req.uri().path();
    if path == "/up" || path == "/ready" {
        return up(&state);
    }
    if path == "/metrics" {
        return metrics(&state, &req, peer);
    }
    if path == "/console" || path.starts_with("/console/") {
        let console = state.console.as_ref();
        return crate::console::handle(shared, console, &state.api, req, peer, secure).await;
    }
    let resume_prefix = &shared.config.resume.path_prefix;
    if fallback::is_fallback_path(&shared.config.server.http_path, resume_prefix, path) {
        return fallback::handle(shared, &state.fallback, req, peer).await;
    }
    if upgrade::app_key(&shared.config.server.ws_path, path).is_some() {
        return json_error(
            400,
            "This is the WebSocket endpoint: connect with a WebSocket client (Upgrade: websocket)",
        );
    }
    json_error(404, &format!("Not found: {path}"))
}

/// `/up`: 200 while events can be published; also 200 (with the reason) while the event log
/// is full, which clears by itself; 503 with the reason while it cannot write at all (its
/// directory removed, an I/O error), which needs an operator.
fn up(state: &State) -> Response<Body> {
    if let Some(Err(why)) = state.cluster.as_ref().map(|c| c.health()) {
        return json(
            503,
            serde_json::json!({ "status": "error", "cluster": why }).to_string(),
        );
    }
    match state.api.log_status() {
        LogStatus::Ok => json(200, "{\"status\":\"ok\"}".into()),
        LogStatus::Full(why) => json(
            200,
            serde_json::json!({ "status": "ok", "event_log": why }).to_string(),
        ),
        LogStatus::Down(why) => json(
            503,
            serde_json::json!({ "status": "error", "event_log": why }).to_string(),
        ),
    }
}

/// `/metrics`: Prometheus text, if the peer and its token are allowed.
fn metrics(state: &State, req: &Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let m = &state.shared.metrics;
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match m.check_access(peer.ip(), auth) {
        Ok(()) => http::full(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            m.render(&state.hub),
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

/// `/apps/…`: reads the body (capped) and hands the request to the API as plain parts.
async fn api(state: &State, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let server = &state.shared.config.server;
    let (max, timeout) = (server.max_request_bytes, server.request_timeout);
    let body = match http::read_body(body, max, timeout).await {
        Ok(b) => b,
        Err(e) => {
            let refused = ApiResponse::from(match e {
                BodyError::TooLarge => ApiError::BodyTooLarge { max },
                BodyError::Unreadable => ApiError::UnreadableBody,
                BodyError::TimedOut => return body_timed_out(state, peer, &e, timeout),
            });
            return json(refused.status, refused.body);
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

/// 408 for a body that did not arrive in time, logged and counted.
fn body_timed_out(
    state: &State,
    peer: SocketAddr,
    e: &BodyError,
    timeout: Duration,
) -> Response<Body> {
    state.metrics.refused(Reason::HttpTimeout);
    tracing::info!(%peer, "request body not received within request_timeout: 408");
    let mut r = json_error(408, &e.message(0, timeout));
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}
