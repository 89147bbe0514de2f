//! `[cluster]`: two or three real `pushbox serve` processes on 127.0.0.1 sharing a private
//! `redis-server` (started here on a free port, in a temp dir, without persistence). Clients
//! are the raw WebSocket client of `tests/common`; webhooks go to a receiver in this file.
//!
//! `redis-server` must be installed (`scripts/setup.sh` does it: `apt-get install -y
//! redis-server`); without it these tests fail and say so, they never pass silently.

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
    _dir: tempfile::TempDir,
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
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): the cluster tests need it; run scripts/setup.sh (it runs `apt-get install -y redis-server`)")
            });
        let r = Redis {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !r.ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        r
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
    _dir: tempfile::TempDir,
}

impl Node {
    fn addr(&self) -> SocketAddr {
        self.served.addr()
    }
}

/// `name`'s config: the test app (with `app_more`), the cluster on `redis`, a short lease.
fn start_node(redis: &Redis, name: &str, app_more: &str) -> Node {
    let dir = tempfile::tempdir().expect("a temp dir");
    let port = free_port();
    let cluster = format!(
        "[cluster]\nredis_url = \"redis://127.0.0.1:{}\"\nnode_name = \"{name}\"\nlease = \"3s\"\nheartbeat = \"1s\"\n",
        redis.port
    );
    let toml = config_toml(port, &cluster, app_more);
    let mut cmd = serve_in(dir.path(), &toml);
    let log = dir.path().join("stderr.log");
    // Up means: the event log is open and Redis answered (`/up` is 503 until then).
    let served =
        tokio::task::block_in_place(|| Served::start_logged(&mut cmd, port, Ready::Up, log));
    Node { served, _dir: dir }
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
                            hh.events.lock().unwrap().extend(evs.iter().cloned());
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

    fn names(&self) -> Vec<(String, String)> {
        self.events
            .lock()
            .unwrap()
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
