//! Resume in a cluster (README "Resume", "Several boxes as one"): a private `redis-server` and
//! pushbox nodes on 127.0.0.1 (tests/common/cluster.rs). A client with a token in its URL that
//! reconnects, to the same node or to another one, gets what it missed exactly once, in bus
//! order, right after `subscription_succeeded`; all or nothing past the window or before the
//! node's rings begin; its own `toOthers` events are skipped and private channels are
//! authorised again with the new socket id.
//!
//! The raw client plays pusher-js as in tests/resume.rs: it answers `pusher:ping` while it is
//! "up" and stops answering during a "cut".

mod common;

use std::time::Duration;

use common::cluster::{Cluster, Node, NodeConfig};
use common::resume::{data, events_within, next, prove, reconnect_with};
use common::{api, trigger, Client, APP_ID, KEY, SECRET};
use serde_json::{json, Value};

const TOKEN: &str = "00112233445566778899aabbccddeeff";

/// Nodes with resume on; `more`: further `[resume]` keys.
fn config(more: &str) -> NodeConfig {
    NodeConfig {
        more: format!("[resume]\nenabled = true\n{more}"),
        ..NodeConfig::default()
    }
}

async fn publish(node: &Node, channel: &str, n: u32) {
    let (status, body) = trigger(node.addr(), channel, "e", &n.to_string()).await;
    assert_eq!(status, 200, "{body}");
}

async fn publish_except(node: &Node, channel: &str, n: u32, socket_id: &str) {
    let body = json!({"name":"e","channel":channel,"data":n.to_string(),"socket_id":socket_id})
        .to_string();
    let path = format!("/apps/{APP_ID}/events");
    let (status, v) = api(node.addr(), "POST", &path, &body, &[]).await;
    assert_eq!(status, 200, "{v}");
}

/// A subscribed token client on `node` that received `1` (through the bus) and proved it.
async fn up_with_one(node: &Node, channel: &str) -> Client {
    let mut c = reconnect_with(node.addr(), TOKEN, channel).await;
    publish(node, channel, 1).await;
    let e = next(&mut c).await;
    assert_eq!(e["data"], "1", "{e}");
    prove(&mut c).await;
    c
}

/// The node has seen the end of a dropped connection and written its lineage to Redis.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

async fn metrics(node: &Node) -> String {
    common::http(node.addr(), "GET", "/metrics", b"").await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_reconnect_to_the_same_node_gets_what_it_missed_once_in_order() {
    let n = Cluster::start_with(&["a", "b"], &config(""));
    let mut c1 = up_with_one(&n[0], "orders").await;
    // The cut: 2 and 3 reach the socket but are never answered for, 4 reaches nobody.
    publish(&n[1], "orders", 2).await;
    publish(&n[1], "orders", 3).await;
    let _ = c1.recv().await;
    drop(c1);
    publish(&n[1], "orders", 4).await;
    settle().await;

    let mut c2 = reconnect_with(n[0].addr(), TOKEN, "orders").await;
    let replay = [
        next(&mut c2).await,
        next(&mut c2).await,
        next(&mut c2).await,
    ];
    assert_eq!(data(&replay), ["2", "3", "4"], "{replay:?}");
    publish(&n[1], "orders", 5).await;
    assert_eq!(
        data(&events_within(&mut c2, 800).await),
        ["5"],
        "nothing twice, the live event after the replay"
    );
    let m = metrics(&n[0]).await;
    assert!(m.contains("pushbox_resume_succeeded_total 1"), "{m}");
    assert!(m.contains("pushbox_resume_replayed_events_total 3"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_reconnect_to_another_node_gets_what_it_missed_once_in_order() {
    let n = Cluster::start_with(&["a", "b"], &config(""));
    let c1 = up_with_one(&n[0], "orders").await;
    drop(c1);
    settle().await;
    for i in 2..=4 {
        publish(&n[1], "orders", i).await;
    }
    let mut c2 = reconnect_with(n[1].addr(), TOKEN, "orders").await;
    let replay = [
        next(&mut c2).await,
        next(&mut c2).await,
        next(&mut c2).await,
    ];
    assert_eq!(data(&replay), ["2", "3", "4"], "{replay:?}");
    publish(&n[0], "orders", 5).await;
    assert_eq!(data(&events_within(&mut c2, 800).await), ["5"]);
    let m = metrics(&n[1]).await;
    assert!(m.contains("pushbox_resume_succeeded_total 1"), "{m}");
    assert!(m.contains("pushbox_resume_replayed_events_total 3"), "{m}");

    // The lineage is in Redis under the app's hash tag, held by the new connection, for at
    // most twice the window (120 s by default).
    let key = format!("pb:v1:{{{APP_ID}}}:lin:{TOKEN}");
    let pttl: i64 = n
        .redis
        .cmd(&format!("PTTL {key}"))
        .trim()
        .trim_start_matches(':')
        .parse()
        .unwrap();
    assert!(pttl > 0 && pttl <= 240_000, "PTTL {pttl}");
    let owner = n.redis.cmd(&format!("HGET {key} o"));
    assert!(owner.starts_with('$'), "an owner: {owner:?}");
}

/// The old socket is still open on A (its node has not seen the cut) when the client is
/// already back on B: B claims the lineage, and A's late end does not overwrite it, so a third
/// connection, back on A, continues from what the one on B proved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_on_another_node_wins_over_the_old_sockets_late_end() {
    let n = Cluster::start_with(&["a", "b"], &config(""));
    let mut c1 = up_with_one(&n[0], "orders").await;
    // A proof a second later goes to Redis (proofs are written at most once a second).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    publish(&n[0], "orders", 2).await;
    assert_eq!(next(&mut c1).await["data"], "2");
    prove(&mut c1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The cut: 3 goes to c1, which never answers again, and stays open.
    publish(&n[0], "orders", 3).await;

    let mut c2 = reconnect_with(n[1].addr(), TOKEN, "orders").await;
    assert_eq!(data(&events_within(&mut c2, 800).await), ["3"]);
    publish(&n[0], "orders", 4).await;
    assert_eq!(next(&mut c2).await["data"], "4");
    prove(&mut c2).await;
    drop(c2);
    settle().await;
    drop(c1);
    settle().await;
    publish(&n[1], "orders", 5).await;

    let mut c3 = reconnect_with(n[0].addr(), TOKEN, "orders").await;
    assert_eq!(
        data(&events_within(&mut c3, 800).await),
        ["5"],
        "from what c2 proved, not from c1's stale lineage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_channel_replays_on_another_node_only_after_a_fresh_auth() {
    let n = Cluster::start_with(&["a", "b"], &config(""));
    let mut c1 = Client::connect_token(n[0].addr(), TOKEN).await;
    let ack = c1.subscribe_private("private-orders").await;
    assert_eq!(
        ack["event"], "pusher_internal:subscription_succeeded",
        "{ack}"
    );
    drop(c1);
    settle().await;
    publish(&n[1], "private-orders", 1).await;

    let mut c2 = Client::connect_token(n[1].addr(), TOKEN).await;
    let stale = common::private_auth("1.1", "private-orders");
    c2.send(json!({"event":"pusher:subscribe","data":{"channel":"private-orders","auth":stale}}))
        .await;
    let err = next(&mut c2).await;
    assert_eq!(err["event"], "pusher:subscription_error", "{err}");
    assert!(events_within(&mut c2, 400).await.is_empty());
    let ack = c2.subscribe_private("private-orders").await;
    assert_eq!(
        ack["event"], "pusher_internal:subscription_succeeded",
        "{ack}"
    );
    assert_eq!(data(&events_within(&mut c2, 800).await), ["1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_window_nothing_partial_on_another_node() {
    let n = Cluster::start_with(
        &["a", "b"],
        &config("window = \"1s\"\nfailure_event = true\n"),
    );
    let c1 = up_with_one(&n[0], "orders").await;
    drop(c1);
    settle().await;
    publish(&n[1], "orders", 2).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    publish(&n[1], "orders", 3).await;
    settle().await;
    let mut c2 = reconnect_with(n[1].addr(), TOKEN, "orders").await;
    let got = events_within(&mut c2, 800).await;
    assert_eq!(
        got.len(),
        1,
        "no partial replay (3 alone would be): {got:?}"
    );
    assert_eq!(got[0]["event"], "pushbox:resume_failed", "{got:?}");
    let m = metrics(&n[1]).await;
    assert!(m.contains("pushbox_resume_succeeded_total 0"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_the_client_published_with_to_others_are_not_replayed_on_another_node() {
    let n = Cluster::start_with(&["a", "b"], &config(""));
    let c1 = up_with_one(&n[0], "orders").await;
    let old = c1.socket_id.clone();
    drop(c1);
    settle().await;
    publish_except(&n[1], "orders", 2, &old).await;
    publish_except(&n[1], "orders", 3, "123.456").await;
    let mut c2 = reconnect_with(n[1].addr(), TOKEN, "orders").await;
    assert_eq!(data(&events_within(&mut c2, 800).await), ["3"]);
}

/// A node that started after the client's position has no ring that far back: all or nothing
/// holds, the app is told, and live events flow.
/// A node that starts (or restarts) after the client left reads the bus's last window and
/// replays from it: a client that reconnects to it gets what it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_after_the_client_left_replays_from_the_bus_history() {
    let cfg = config("failure_event = true\n");
    let mut n = Cluster::start_with(&["a"], &cfg);
    let c1 = up_with_one(&n[0], "orders").await;
    drop(c1);
    publish(&n[0], "orders", 2).await;
    settle().await;
    let late = Node::start(&n.redis, "late", &cfg);
    n.nodes.push(late);
    let mut c2 = reconnect_with(n[1].addr(), TOKEN, "orders").await;
    let got = events_within(&mut c2, 800).await;
    assert_eq!(data(&got), ["2"], "{got:?}");
    publish(&n[0], "orders", 3).await;
    assert_eq!(data(&events_within(&mut c2, 800).await), ["3"]);
    let m = metrics(&n[1]).await;
    assert!(m.contains("pushbox_resume_succeeded_total 1"), "{m}");
}

/// The history a node reads at start holds the last window only: a client whose position is
/// older than it gets `resume_failed`, never the part the node has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_later_replays_nothing_partial() {
    let cfg = config("window = \"2s\"\nfailure_event = true\n");
    let mut n = Cluster::start_with(&["a"], &cfg);
    let c1 = up_with_one(&n[0], "orders").await;
    drop(c1);
    settle().await;
    publish(&n[0], "orders", 2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    publish(&n[0], "orders", 3).await;
    // 2 is out of the window when the late node reads the bus; 3 is in it.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let late = Node::start(&n.redis, "late", &cfg);
    n.nodes.push(late);
    let mut c2 = reconnect_with(n[1].addr(), TOKEN, "orders").await;
    let got = events_within(&mut c2, 800).await;
    assert_eq!(
        got.len(),
        1,
        "no partial replay (3 alone would be): {got:?}"
    );
    assert_eq!(got[0]["event"], "pushbox:resume_failed", "{got:?}");
    let reason: Value = serde_json::from_str(got[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(reason["reason"], "expired", "{reason}");
    publish(&n[0], "orders", 4).await;
    assert_eq!(data(&events_within(&mut c2, 800).await), ["4"]);
}

/// `terminate_connections` through one node discards the user's resume state on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_connections_on_one_node_discards_resume_on_all() {
    let n = Cluster::start_with(&["a", "b"], &config(""));
    let mut c1 = Client::connect_token(n[0].addr(), TOKEN).await;
    let user_data = r#"{"id":"u1"}"#;
    let sig = pushbox::protocol::auth::sign(
        SECRET,
        format!("{}::user::{user_data}", c1.socket_id).as_bytes(),
    );
    c1.send(json!({"event":"pusher:signin","data":{"auth":format!("{KEY}:{sig}"),"user_data":user_data}}))
        .await;
    assert_eq!(next(&mut c1).await["event"], "pusher:signin_success");
    c1.send(json!({"event":"pusher:subscribe","data":{"channel":"orders"}}))
        .await;
    assert_eq!(
        next(&mut c1).await["event"],
        "pusher_internal:subscription_succeeded"
    );
    settle().await;
    let path = format!("/apps/{APP_ID}/users/u1/terminate_connections");
    let (status, v) = api(n[1].addr(), "POST", &path, "{}", &[]).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(c1.closed_with().await, Some(4009));
    settle().await;
    publish(&n[1], "orders", 2).await;
    let mut c2 = reconnect_with(n[1].addr(), TOKEN, "orders").await;
    assert!(events_within(&mut c2, 600).await.is_empty());
}
