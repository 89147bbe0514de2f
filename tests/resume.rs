//! Resume over real sockets on 127.0.0.1 (README "Resume"): a client that reconnects with the
//! same token in its URL (pusher-js `wsPath: '/r/<token>'`) gets the events it missed, exactly
//! once and in order, right after `subscription_succeeded` and before later live events.
//!
//! The raw client here plays pusher-js: it answers the server's `pusher:ping` with
//! `pusher:pong` while it is "up", and stops answering during a "cut" (pusher-js abandons a
//! connection and never answers again). Link cuts in a network namespace with real pusher-js
//! are the browser/namespace tests' job (tests/resume-netns, branch r-resume-test); these
//! check the server's rules one by one.

mod common;

use std::time::{Duration, Instant};

use common::{api, connect_raw, next_json, trigger, Client, APP_ID, KEY, SECRET};
use futures_util::StreamExt;
use serde_json::{json, Value};

const TOKEN: &str = "00112233445566778899aabbccddeeff";
const OTHER: &str = "ffeeddccbbaa99887766554433221100";

/// A client on `/r/{token}/app/{key}`.
async fn connect_token(addr: std::net::SocketAddr, token: &str) -> Client {
    let mut ws = connect_raw(
        addr,
        &format!("/r/{token}/app/{KEY}?protocol=7&client=js&version=8.6.0&flash=false"),
    )
    .await;
    let first = next_json(&mut ws).await.expect("handshake frame");
    assert_eq!(first["event"], "pusher:connection_established", "{first}");
    let data: Value = serde_json::from_str(first["data"].as_str().unwrap()).unwrap();
    let socket_id = data["socket_id"].as_str().unwrap().to_owned();
    Client { ws, socket_id }
}

/// The next frame that is not a server ping; pings are answered (the client is up).
async fn next(c: &mut Client) -> Value {
    for _ in 0..100 {
        let v = c.recv().await;
        if v["event"] == "pusher:ping" {
            c.send(json!({"event":"pusher:pong","data":{}})).await;
            continue;
        }
        return v;
    }
    panic!("only pings");
}

/// Answers pings until the server's proof ping after the last event came and its pong went
/// back, then makes sure the server read that pong (its answer to our own ping comes after).
async fn prove(c: &mut Client) {
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
async fn events_within(c: &mut Client, ms: u64) -> Vec<Value> {
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

fn data(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["data"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn publish(addr: std::net::SocketAddr, channel: &str, n: u32) {
    let (status, body) = trigger(addr, channel, "e", &n.to_string()).await;
    assert_eq!(status, 200, "{body}");
}

async fn publish_except(addr: std::net::SocketAddr, channel: &str, n: u32, socket_id: &str) {
    let body = json!({"name":"e","channel":channel,"data":n.to_string(),"socket_id":socket_id})
        .to_string();
    let (status, v) = api(addr, "POST", &format!("/apps/{APP_ID}/events"), &body, &[]).await;
    assert_eq!(status, 200, "{v}");
}

/// A subscribed token client that received `1` and proved it.
async fn up_with_one(addr: std::net::SocketAddr, channel: &str) -> Client {
    let mut c = connect_token(addr, TOKEN).await;
    let ack = c.subscribe(channel).await;
    assert_eq!(
        ack["event"], "pusher_internal:subscription_succeeded",
        "{ack}"
    );
    publish(addr, channel, 1).await;
    let e = next(&mut c).await;
    assert_eq!(e["data"], "1", "{e}");
    prove(&mut c).await;
    c
}

#[tokio::test]
async fn a_token_reconnect_gets_what_it_missed_once_in_order_before_live_events() {
    let s = common::start(|_| {}).await;
    let mut c1 = up_with_one(s.addr, "orders").await;
    // The cut: the client gets 2 and 3 on the wire but never answers again (pusher-js
    // abandoned the socket), then the socket ends; 4 reaches nobody.
    publish(s.addr, "orders", 2).await;
    publish(s.addr, "orders", 3).await;
    let _ = c1.recv().await;
    drop(c1);
    publish(s.addr, "orders", 4).await;

    let mut c2 = connect_token(s.addr, TOKEN).await;
    let ack = c2.subscribe("orders").await;
    assert_eq!(
        ack["event"], "pusher_internal:subscription_succeeded",
        "{ack}"
    );
    let replay = [
        next(&mut c2).await,
        next(&mut c2).await,
        next(&mut c2).await,
    ];
    assert_eq!(data(&replay), ["2", "3", "4"], "{replay:?}");
    publish(s.addr, "orders", 5).await;
    let live = events_within(&mut c2, 500).await;
    assert_eq!(
        data(&live),
        ["5"],
        "nothing twice, the live event after the replay"
    );

    let metrics = common::http(s.addr, "GET", "/metrics", b"").await.1;
    assert!(
        metrics.contains("pushbox_resume_attempts_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pushbox_resume_succeeded_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pushbox_resume_replayed_events_total 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn events_the_client_published_with_to_others_are_not_replayed() {
    let s = common::start(|_| {}).await;
    let c1 = up_with_one(s.addr, "orders").await;
    let old = c1.socket_id.clone();
    drop(c1);
    publish_except(s.addr, "orders", 2, &old).await;
    publish_except(s.addr, "orders", 3, "123.456").await;
    let mut c2 = connect_token(s.addr, TOKEN).await;
    c2.subscribe("orders").await;
    assert_eq!(data(&events_within(&mut c2, 500).await), ["3"]);
}

#[tokio::test]
async fn a_private_channel_replays_only_after_a_fresh_auth_with_the_new_socket_id() {
    let s = common::start(|_| {}).await;
    let mut c1 = connect_token(s.addr, TOKEN).await;
    let ack = c1.subscribe_private("private-orders").await;
    assert_eq!(
        ack["event"], "pusher_internal:subscription_succeeded",
        "{ack}"
    );
    drop(c1);
    publish(s.addr, "private-orders", 1).await;
    let mut c2 = connect_token(s.addr, TOKEN).await;
    // The app refused (or the old signature is replayed): no replay, no events.
    let stale = common::private_auth("1.1", "private-orders");
    c2.send(json!({"event":"pusher:subscribe","data":{"channel":"private-orders","auth":stale}}))
        .await;
    let err = next(&mut c2).await;
    assert_eq!(err["event"], "pusher:subscription_error", "{err}");
    assert!(events_within(&mut c2, 300).await.is_empty());
    // Authorised now: the replay comes.
    let ack = c2.subscribe_private("private-orders").await;
    assert_eq!(
        ack["event"], "pusher_internal:subscription_succeeded",
        "{ack}"
    );
    assert_eq!(data(&events_within(&mut c2, 500).await), ["1"]);
}

#[tokio::test]
async fn past_max_events_nothing_partial_and_the_failure_event_when_asked() {
    let s = common::start(|c| {
        c.resume.max_events = 3;
        c.resume.failure_event = true;
    })
    .await;
    let c1 = up_with_one(s.addr, "orders").await;
    drop(c1);
    for n in 2..=6 {
        publish(s.addr, "orders", n).await;
    }
    let mut c2 = connect_token(s.addr, TOKEN).await;
    c2.subscribe("orders").await;
    let got = events_within(&mut c2, 500).await;
    assert_eq!(got.len(), 1, "no partial replay: {got:?}");
    assert_eq!(got[0]["event"], "pushbox:resume_failed");
    let reason: Value = serde_json::from_str(got[0]["data"].as_str().unwrap()).unwrap();
    assert!(
        ["too_many", "expired"].contains(&reason["reason"].as_str().unwrap()),
        "{reason}"
    );
    let metrics = common::http(s.addr, "GET", "/metrics", b"").await.1;
    assert!(
        metrics.contains("pushbox_resume_succeeded_total 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn past_the_window_nothing_is_replayed() {
    let s = common::start(|c| {
        c.resume.window = Duration::from_secs(1);
        c.resume.failure_event = true;
    })
    .await;
    let c1 = up_with_one(s.addr, "orders").await;
    drop(c1);
    publish(s.addr, "orders", 2).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let mut c2 = connect_token(s.addr, TOKEN).await;
    c2.subscribe("orders").await;
    let got = events_within(&mut c2, 500).await;
    assert!(
        got.iter().all(|e| e["event"] != "e"),
        "no stale event: {got:?}"
    );
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["event"], "pushbox:resume_failed");
}

#[tokio::test]
async fn a_new_token_a_cache_channel_and_resume_disabled_replay_nothing() {
    let s = common::start(|_| {}).await;
    let c1 = up_with_one(s.addr, "orders").await;
    drop(c1);
    publish(s.addr, "orders", 2).await;
    // A reload: a new Pusher instance, a new token.
    let mut other = connect_token(s.addr, OTHER).await;
    other.subscribe("orders").await;
    assert!(events_within(&mut other, 300).await.is_empty());

    // A cache channel: the cached event once (Pusher's behaviour), no replay.
    let mut c = connect_token(s.addr, "0000000000000000000000000000000a").await;
    c.subscribe("cache-prices").await;
    let _ = events_within(&mut c, 200).await;
    drop(c);
    publish(s.addr, "cache-prices", 7).await;
    publish(s.addr, "cache-prices", 8).await;
    let mut c = connect_token(s.addr, "0000000000000000000000000000000a").await;
    c.subscribe("cache-prices").await;
    assert_eq!(data(&events_within(&mut c, 400).await), ["8"]);

    let off = common::start(|c| c.resume.enabled = false).await;
    let c1 = connect_token(off.addr, TOKEN).await;
    drop(c1);
    let mut c1 = connect_token(off.addr, TOKEN).await;
    c1.subscribe("orders").await;
    drop(c1);
    publish(off.addr, "orders", 2).await;
    let mut c2 = connect_token(off.addr, TOKEN).await;
    c2.subscribe("orders").await;
    assert!(events_within(&mut c2, 300).await.is_empty());
    let metrics = common::http(off.addr, "GET", "/metrics", b"").await.1;
    assert!(
        !metrics.contains("pushbox_resume_attempts_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn terminate_connections_discards_the_users_resume_state() {
    let s = common::start(|_| {}).await;
    let mut c1 = connect_token(s.addr, TOKEN).await;
    let user_data = r#"{"id":"u1"}"#;
    let sig = pushbox::protocol::auth::sign(
        SECRET,
        format!("{}::user::{user_data}", c1.socket_id).as_bytes(),
    );
    c1.send(json!({"event":"pusher:signin","data":{"auth":format!("{KEY}:{sig}"),"user_data":user_data}}))
        .await;
    assert_eq!(next(&mut c1).await["event"], "pusher:signin_success");
    c1.subscribe("orders").await;
    let (status, v) = api(
        s.addr,
        "POST",
        &format!("/apps/{APP_ID}/users/u1/terminate_connections"),
        "{}",
        &[],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(c1.closed_with().await, Some(4009));
    publish(s.addr, "orders", 2).await;
    let mut c2 = connect_token(s.addr, TOKEN).await;
    c2.subscribe("orders").await;
    assert!(events_within(&mut c2, 300).await.is_empty());
}

#[tokio::test]
async fn a_malformed_token_is_refused_with_4005_and_a_reason() {
    let s = common::start(|_| {}).await;
    let mut ws = connect_raw(s.addr, &format!("/r/not-a-token/app/{KEY}?protocol=7")).await;
    let err = next_json(&mut ws).await.expect("an error frame");
    assert_eq!(err["event"], "pusher:error", "{err}");
    assert_eq!(err["data"]["code"], 4005, "{err}");
    assert!(
        err["data"]["message"]
            .as_str()
            .unwrap()
            .contains("32 hex characters"),
        "{err}"
    );
}

#[tokio::test]
async fn zero_change_presence_resume_needs_the_same_user_and_no_page_unload() {
    let s = common::start(|_| {}).await;
    let cd = r#"{"user_id":"u7"}"#;
    let presence_up = |addr| async move {
        let mut c = Client::connect(addr).await;
        let ack = c.subscribe_presence("presence-shop", cd).await;
        assert_eq!(
            ack["event"], "pusher_internal:subscription_succeeded",
            "{ack}"
        );
        c
    };
    let mut c1 = presence_up(s.addr).await;
    publish(s.addr, "presence-shop", 1).await;
    assert_eq!(next(&mut c1).await["data"], "1");
    prove(&mut c1).await;
    c1.ws.close(None).await.unwrap();
    publish(s.addr, "presence-shop", 2).await;
    let mut c2 = presence_up(s.addr).await;
    let got = events_within(&mut c2, 500).await;
    assert_eq!(
        data(&got),
        ["2"],
        "the same user, address and agent: {got:?}"
    );

    // A page unload (1001) is never resumed by user.
    use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
    c2.ws
        .close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "".into(),
        }))
        .await
        .unwrap();
    publish(s.addr, "presence-shop", 3).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c3 = presence_up(s.addr).await;
    assert!(events_within(&mut c3, 300).await.is_empty());
}

/// `systemctl restart`: the lineages go to the state directory, the events are read back from
/// the event log, and the client that reconnects gets what it missed.
#[test]
fn a_graceful_restart_resumes_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let config = common::config_toml(port, "", "");
    let served = common::Served::start(
        &mut common::serve_in(dir.path(), &config),
        port,
        common::Ready::Up,
    );
    let addr = served.addr();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let c1 = rt.block_on(async {
        let mut c1 = up_with_one(addr, "orders").await;
        publish(addr, "orders", 2).await;
        let _ = c1.recv().await;
        c1
    });
    publish_blocking(&served, 3);
    served.stop();
    drop(c1);
    let served = common::Served::start(
        &mut common::serve_in(dir.path(), &config),
        port,
        common::Ready::Up,
    );
    rt.block_on(async {
        let mut c2 = connect_token(addr, TOKEN).await;
        let ack = c2.subscribe("orders").await;
        assert_eq!(
            ack["event"], "pusher_internal:subscription_succeeded",
            "{ack}"
        );
        assert_eq!(data(&events_within(&mut c2, 700).await), ["2", "3"]);
    });
    served.stop();
}

fn publish_blocking(served: &common::Served, n: u32) {
    let (status, body) = served.trigger("e", "orders", &n.to_string());
    assert_eq!(status, 200, "{body}");
}

/// Zero-change resume by signin id: channels subscribed after `pusher:signin` on the new
/// connection replay; a client that never signs in gets nothing.
#[tokio::test]
async fn zero_change_signin_resume_covers_channels_subscribed_after_the_signin() {
    let s = common::start(|_| {}).await;
    async fn signed_in(addr: std::net::SocketAddr, id: &str) -> Client {
        let mut c = Client::connect(addr).await;
        let user_data = format!(r#"{{"id":"{id}"}}"#);
        let sig = pushbox::protocol::auth::sign(
            SECRET,
            format!("{}::user::{user_data}", c.socket_id).as_bytes(),
        );
        c.send(json!({"event":"pusher:signin","data":{"auth":format!("{KEY}:{sig}"),"user_data":user_data}}))
            .await;
        assert_eq!(next(&mut c).await["event"], "pusher:signin_success");
        c
    }
    let mut c1 = signed_in(s.addr, "u9").await;
    let ack = c1.subscribe_private("private-till").await;
    assert_eq!(
        ack["event"], "pusher_internal:subscription_succeeded",
        "{ack}"
    );
    publish(s.addr, "private-till", 1).await;
    assert_eq!(next(&mut c1).await["data"], "1");
    prove(&mut c1).await;
    c1.ws.close(None).await.unwrap();
    publish(s.addr, "private-till", 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Not signed in: not the same user as far as the server can tell.
    let mut anon = Client::connect(s.addr).await;
    anon.subscribe_private("private-till").await;
    assert!(events_within(&mut anon, 300).await.is_empty());

    let mut c2 = signed_in(s.addr, "u9").await;
    let ack = c2.subscribe_private("private-till").await;
    assert_eq!(
        ack["event"], "pusher_internal:subscription_succeeded",
        "{ack}"
    );
    assert_eq!(data(&events_within(&mut c2, 500).await), ["2"]);
}
