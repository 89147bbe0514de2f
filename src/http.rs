//! The server side of HTTP, shared by whatever answers a request (routing, the console, the
//! WebSocket upgrade, the fallback transports): the one body type hyper serves, the response
//! shapes pushbox uses, and reading a request body with a size cap.
//!
//! It sits low: it knows hyper and bytes, nothing of pushbox, so the modules that answer
//! requests share it without importing the server that routes to them.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

/// Every response body: boxed, so a fixed answer and a streamed one share one type.
pub type Body = BoxBody<Bytes, Infallible>;

/// A response with a body that is all there from the start.
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

/// A response without a body (`101`, `204`).
pub fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = status;
    r
}

/// A JSON response; an out-of-range `status` becomes a 500 rather than a panic.
pub fn json(status: u16, body: String) -> Response<Body> {
    full(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        "application/json",
        body,
    )
}

/// `{"error": msg}` with `status`: how every JSON endpoint says no.
pub fn json_error(status: u16, msg: &str) -> Response<Body> {
    json(status, serde_json::json!({ "error": msg }).to_string())
}

/// Why a request body could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// More than the cap: the answer is `413`.
    TooLarge,
    /// The client went away or sent a broken body: `400`.
    Unreadable,
    /// Not all there within the deadline (`server.request_timeout`): `408`. A client that
    /// announces a body and never sends it would otherwise hold its socket forever.
    TimedOut,
}

impl BodyError {
    /// What to tell the client, with `max` the cap and `timeout` the deadline it missed.
    pub fn message(&self, max: usize, timeout: Duration) -> String {
        match self {
            BodyError::TooLarge => format!("Request body larger than {max} bytes"),
            BodyError::Unreadable => "Could not read the request body".into(),
            BodyError::TimedOut => format!(
                "Request body not received within {} s (server.request_timeout): send the whole body at once",
                timeout.as_secs()
            ),
        }
    }
}

/// Reads a whole request body of at most `max` bytes within `timeout`. The cap is checked as
/// bytes arrive, so an oversized body is refused without being buffered.
pub async fn read_body<B>(body: B, max: usize, timeout: Duration) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let read = tokio::time::timeout(timeout, Limited::new(body, max).collect());
    match read.await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(BodyError::TooLarge)
        }
        Ok(Err(_)) => Err(BodyError::Unreadable),
        Err(_) => Err(BodyError::TimedOut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn body_cap() {
        let body = || Full::new(Bytes::from_static(b"0123456789"));
        let t = Duration::from_secs(1);
        assert_eq!(
            read_body(body(), 10, t).await.as_deref(),
            Ok(&b"0123456789"[..])
        );
        assert_eq!(read_body(body(), 9, t).await, Err(BodyError::TooLarge));
        let never = http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<hyper::body::Frame<Bytes>, std::io::Error>,
        >());
        let t = Duration::from_millis(10);
        assert_eq!(read_body(never, 9, t).await, Err(BodyError::TimedOut));
        let r = json_error(413, "too big");
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
    }
}
