//! The raw client's side of resume (`tests/resume.rs`, `tests/cluster_resume.rs`): reconnecting
//! with a token, reading past pings and subscription counts, proving
//! delivery the way pusher-js does (answering the server's proof ping), and collecting the
//! channel events that arrive while the client is up.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use std::net::SocketAddr;

use super::Client;

/// A client with `token` in its URL (a first connection or a reconnect), subscribed to
/// `channel`; a replay, if any, comes next.
pub async fn reconnect_with(addr: SocketAddr, token: &str, channel: &str) -> Client {
    let mut c = Client::connect_token(addr, token).await;
    c.send(json!({"event":"pusher:subscribe","data":{"channel":channel}}))
        .await;
    let ack = next(&mut c).await;
    assert_eq!(
        ack["event"], "pusher_internal:subscription_succeeded",
        "{ack}"
    );
    c
}

/// The next frame that is not a server ping or a subscription count; pings are answered.
pub async fn next(c: &mut Client) -> Value {
    for _ in 0..100 {
        let v = c.recv().await;
        if v["event"] == "pusher:ping" {
            c.send(json!({"event":"pusher:pong","data":{}})).await;
            continue;
        }
        if v["event"] == "pusher_internal:subscription_count" {
            continue;
        }
        return v;
    }
    panic!("only pings");
}

/// Answers pings until the server's proof ping after the last event came and its pong went
/// back, then makes sure the server read that pong (its answer to our own ping comes after).
pub async fn prove(c: &mut Client) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        assert!(Instant::now() < deadline, "no proof ping within 3 s");
        let v = c.recv().await;
        if v["event"] == "pusher:ping" {
            c.send(json!({"event":"pusher:pong","data":{}})).await;
            break;
        }
    }
    c.send(json!({"event":"pusher:ping","data":{}})).await;
    loop {
        let v = c.recv().await;
        if v["event"] == "pusher:pong" {
            return;
        }
        if v["event"] == "pusher:ping" {
            c.send(json!({"event":"pusher:pong","data":{}})).await;
        }
    }
}

/// The events on channels (not `pusher…` frames) arriving within `ms`, pings answered.
pub async fn events_within(c: &mut Client, ms: u64) -> Vec<Value> {
    let mut out = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_millis(ms);
    loop {
        let Ok(Some(Ok(m))) = tokio::time::timeout_at(until, c.ws.next()).await else {
            return out;
        };
        let Ok(t) = m.to_text() else { continue };
        let Ok(v) = serde_json::from_str::<Value>(t) else {
            continue;
        };
        if v["event"] == "pusher:ping" {
            c.send(json!({"event":"pusher:pong","data":{}})).await;
        } else if !v["event"].as_str().unwrap_or("").starts_with("pusher") {
            out.push(v);
        }
    }
}

pub fn data(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["data"].as_str().unwrap_or_default().to_owned())
        .collect()
}
