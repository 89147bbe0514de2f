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

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::resume::{data, events_within, next, prove, reconnect_with};
use common::{api, connect_raw, next_json, trigger, Client, APP_ID, KEY, SECRET};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "00112233445566778899aabbccddeeff";
const OTHER: &str = "ffeeddccbbaa99887766554433221100";

async fn publish(addr: SocketAddr, channel: &str, n: u32) {
    let (status, body) = trigger(addr, channel, "e", &n.to_string()).await;
    assert_eq!(status, 200, "{body}");
}

async fn publish_except(addr: SocketAddr, channel: &str, n: u32, socket_id: &str) {
    let body = json!({"name":"e","channel":channel,"data":n.to_string(),"socket_id":socket_id})
        .to_string();
    let (status, v) = api(addr, "POST", &format!("/apps/{APP_ID}/events"), &body, &[]).await;
    assert_eq!(status, 200, "{v}");
}

/// A subscribed token client that received `1` and proved it.
async fn up_with_one(addr: SocketAddr, channel: &str) -> Client {
    let mut c = reconnect_with(addr, TOKEN, channel).await;
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

    let mut c2 = reconnect_with(s.addr, TOKEN, "orders").await;
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
    let mut c2 = reconnect_with(s.addr, TOKEN, "orders").await;
    assert_eq!(data(&events_within(&mut c2, 500).await), ["3"]);
}

#[tokio::test]
async fn a_private_channel_replays_only_after_a_fresh_auth_with_the_new_socket_id() {
    let s = common::start(|_| {}).await;
    let mut c1 = Client::connect_token(s.addr, TOKEN).await;
    let ack = c1.subscribe_private("private-orders").await;
    assert_eq!(
        ack["event"], "pusher_internal:subscription_succeeded",
        "{ack}"
    );
    drop(c1);
    publish(s.addr, "private-orders", 1).await;
    let mut c2 = Client::connect_token(s.addr, TOKEN).await;
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
    let mut c2 = reconnect_with(s.addr, TOKEN, "orders").await;
    let got = events_within(&mut c2, 500).await;
    assert_eq!(got.len(), 1, "no partial replay: {got:?}");
    assert_eq!(got[0]["event"], "pushbox:resume_failed");
    let reason: Value = serde_json::from_str(got[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(
        reason["reason"], "too_many",
        "the cap, not the window: {reason}"
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
    let mut c2 = reconnect_with(s.addr, TOKEN, "orders").await;
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
    let mut other = reconnect_with(s.addr, OTHER, "orders").await;
    assert!(events_within(&mut other, 300).await.is_empty());

    // A cache channel: the cached event once (Pusher's behaviour), no replay.
    let mut c = reconnect_with(s.addr, "0000000000000000000000000000000a", "cache-prices").await;
    let _ = events_within(&mut c, 200).await;
    drop(c);
    publish(s.addr, "cache-prices", 7).await;
    publish(s.addr, "cache-prices", 8).await;
    let mut c = reconnect_with(s.addr, "0000000000000000000000000000000a", "cache-prices").await;
    assert_eq!(data(&events_within(&mut c, 400).await), ["8"]);

    let off = common::start(|c| c.resume.enabled = false).await;
    let c1 = Client::connect_token(off.addr, TOKEN).await;
    drop(c1);
    let c1 = reconnect_with(off.addr, TOKEN, "orders").await;
    drop(c1);
    publish(off.addr, "orders", 2).await;
    let mut c2 = reconnect_with(off.addr, TOKEN, "orders").await;
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
    let mut c1 = Client::connect_token(s.addr, TOKEN).await;
    signin(&mut c1, "u1").await;
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
    let mut c2 = reconnect_with(s.addr, TOKEN, "orders").await;
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

/// `pushbox serve` on `port` with its config and state in `dir`, up (the same `dir` and `port`
/// again: a restart on the same state directory).
fn serve(dir: &Path, port: u16) -> common::Served {
    let config = common::config_toml(port, "", "");
    common::Served::start(&mut common::serve_in(dir, &config), port, common::Ready::Up)
}

/// `systemctl restart`: the lineages go to the state directory, the events are read back from
/// the event log, and the client that reconnects gets what it missed.
#[test]
fn a_graceful_restart_resumes_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let served = serve(dir.path(), port);
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
    // c1 is not read during the stop, so it never answers the server's Close: 2 reached it
    // but nothing proves that, and 2 comes again after the restart (at least once).
    served.stop();
    drop(c1);
    let served = serve(dir.path(), port);
    rt.block_on(async {
        let mut c2 = reconnect_with(addr, TOKEN, "orders").await;
        assert_eq!(data(&events_within(&mut c2, 700).await), ["2", "3"]);
    });
    served.stop();
}

/// F1 of the end-to-end run: a graceful stop while the client reads. Events 2 and 3 reached
/// the client after its last pong (no proof ping answered), then the server said 4200 and the
/// client answered that Close, which proves it read 2 and 3: after the restart only what it
/// really missed (4) comes, nothing twice.
#[test]
fn a_close_answered_at_a_graceful_stop_proves_delivery_no_duplicates_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let served = serve(dir.path(), port);
    let addr = served.addr();
    // A worker thread: the client keeps reading (and answers the Close) while this thread
    // waits for the server to stop.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut c1 = rt.block_on(async {
        let mut c1 = up_with_one(addr, "orders").await;
        publish(addr, "orders", 2).await;
        publish(addr, "orders", 3).await;
        // Read without answering the proof ping: 2 and 3 are delivered, not proven by a pong.
        let mut got = Vec::new();
        while got.len() < 2 {
            let v = c1.recv().await;
            if v["event"] == "e" {
                got.push(v);
            }
        }
        assert_eq!(data(&got), ["2", "3"]);
        c1
    });
    // Reads to the end of the stream: tungstenite answers the server's Close with the same
    // code on the read after it, as browsers and pusher-js do.
    let reader = rt.spawn(async move {
        let mut close = None;
        for _ in 0..100 {
            match tokio::time::timeout(Duration::from_secs(10), c1.ws.next()).await {
                Ok(Some(Ok(Message::Close(f)))) => close = f.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_))) | Ok(None) | Err(_) => break,
            }
        }
        close
    });
    served.stop();
    assert_eq!(
        rt.block_on(reader).unwrap(),
        Some(4200),
        "the server said 4200"
    );
    let served = serve(dir.path(), port);
    publish_blocking(&served, 4);
    rt.block_on(async {
        let mut c2 = reconnect_with(addr, TOKEN, "orders").await;
        assert_eq!(
            data(&events_within(&mut c2, 700).await),
            ["4"],
            "2 and 3 were read before the answered Close: not again"
        );
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
    async fn signed_in(addr: SocketAddr, id: &str) -> Client {
        let mut c = Client::connect(addr).await;
        signin(&mut c, id).await;
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

/// `pusher:signin` for `id` on `c` (signed as the app's auth endpoint would).
async fn signin(c: &mut Client, id: &str) {
    let user_data = format!(r#"{{"id":"{id}"}}"#);
    let sig = pushbox::protocol::auth::sign(
        SECRET,
        format!("{}::user::{user_data}", c.socket_id).as_bytes(),
    );
    c.send(json!({"event":"pusher:signin","data":{"auth":format!("{KEY}:{sig}"),"user_data":user_data}}))
        .await;
    assert_eq!(next(c).await["event"], "pusher:signin_success");
}

/// F4 of the end-to-end run: on a reconnect pusher-js subscribes at once and signs in only
/// after its user-auth round trip. A channel subscribed before the signin gets what the same
/// user's ended connection missed when the signin comes, if nothing of it went out live in
/// between; if something did, the replay would come out of order, and nothing is sent
/// (`overtaken`).
#[tokio::test]
async fn zero_change_signin_resume_replays_channels_subscribed_before_the_signin() {
    let s = common::start(|c| c.resume.failure_event = true).await;
    // An ended connection of u7 on `till` (proven up to 1) and of u8 on `desk`.
    let mut a = Client::connect(s.addr).await;
    signin(&mut a, "u7").await;
    a.subscribe("till").await;
    let mut b = Client::connect(s.addr).await;
    signin(&mut b, "u8").await;
    b.subscribe("desk").await;
    publish(s.addr, "till", 1).await;
    publish(s.addr, "desk", 1).await;
    assert_eq!(next(&mut a).await["data"], "1");
    assert_eq!(next(&mut b).await["data"], "1");
    prove(&mut a).await;
    prove(&mut b).await;
    a.ws.close(None).await.unwrap();
    b.ws.close(None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    publish(s.addr, "till", 2).await;
    publish(s.addr, "till", 3).await;
    publish(s.addr, "desk", 2).await;

    // u7 comes back the pusher-js way: subscribe first, signin after.
    let mut a2 = Client::connect(s.addr).await;
    let ack = a2.subscribe("till").await;
    assert_eq!(
        ack["event"], "pusher_internal:subscription_succeeded",
        "{ack}"
    );
    assert!(
        events_within(&mut a2, 200).await.is_empty(),
        "nothing before the signin proves the user"
    );
    signin(&mut a2, "u7").await;
    publish(s.addr, "till", 4).await;
    assert_eq!(
        data(&events_within(&mut a2, 500).await),
        ["2", "3", "4"],
        "the missed events at the signin, then the live one"
    );

    // u8 comes back, but `desk` has a live event before the signin: 2 would follow it.
    let mut b2 = Client::connect(s.addr).await;
    b2.subscribe("desk").await;
    publish(s.addr, "desk", 3).await;
    assert_eq!(data(&events_within(&mut b2, 300).await), ["3"]);
    signin(&mut b2, "u8").await;
    let got = events_within(&mut b2, 300).await;
    assert_eq!(got.len(), 1, "no replay out of order: {got:?}");
    assert_eq!(got[0]["event"], "pushbox:resume_failed");
    assert_eq!(got[0]["data"], r#"{"reason":"overtaken"}"#);
}
