//! Watchlists in a cluster: `online` when a watched user's first signed-in connection anywhere
//! appears, `offline` when the last one anywhere is gone (a `kill -9`ed node's included, within
//! the lease), once, for watchers on every node; a watcher's initial state as one box sends it.
//! Real `pushbox serve` processes on 127.0.0.1 sharing a private `redis-server` (started here on
//! a free port, in a temp dir, without persistence); clients are the raw WebSocket client of
//! `tests/common`, signing in as pusher-js does (`pusher:signin` with `user_data.watchlist`).
//!
//! `redis-server` must be installed (`scripts/setup.sh` does it: `apt-get install -y
//! redis-server`); without it these tests fail and say so, as `tests/cluster.rs` does.
//! `PUSHBOX_TEST_REDIS_SERVER=/path/to/valkey-server` runs them on Valkey.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::cluster::{Node, NodeConfig, Redis};
use common::{Client, KEY, SECRET};

/// One inline command on the Redis at `port`; its whole answer (a bulk string's body, or the
/// status line). [`Monitor::mark`] reads the `ECHO` body back, which `Redis::cmd`'s first line
/// does not hold.
fn command_on(port: u16, cmd: &str) -> String {
    use std::io::{BufRead, Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("{cmd}\r\n").as_bytes()).is_err() {
        return String::new();
    }
    let mut r = std::io::BufReader::new(s);
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return String::new();
    }
    let Some(len) = line.strip_prefix('$') else {
        return line;
    };
    let len: usize = len.trim().parse().unwrap_or(0);
    let mut body = vec![0u8; len];
    let _ = r.read_exact(&mut body);
    String::from_utf8_lossy(&body).into_owned()
}

/// Every command Redis runs, from `MONITOR` (commands run inside scripts included, as `[0 lua]`
/// lines), collected by a thread until dropped: what the watchlist costs, measured.
struct Monitor {
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    port: u16,
    marks: u32,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Monitor {
    fn start(redis: &Redis) -> Monitor {
        use std::io::{BufRead, Write};
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut s = std::net::TcpStream::connect(("127.0.0.1", redis.port)).expect("monitor");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        s.write_all(b"MONITOR\r\n").unwrap();
        let (l, st) = (lines.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut r = std::io::BufReader::new(s);
            let mut line = String::new();
            // Bounded: the test drops the monitor (or ends) well within this.
            let deadline = Instant::now() + Duration::from_secs(300);
            while !st.load(Ordering::Relaxed) && Instant::now() < deadline {
                match r.read_line(&mut line) {
                    Ok(0) => return,
                    Ok(_) => l.lock().unwrap().push(std::mem::take(&mut line)),
                    // A read timeout may leave half a line in `line`: keep it for the rest.
                    Err(_) => {}
                }
            }
        });
        Monitor {
            lines,
            stop,
            port: redis.port,
            marks: 0,
        }
    }

    /// A mark in the command stream (an `ECHO`), once the monitor has seen it: its index.
    fn mark(&mut self) -> usize {
        self.marks += 1;
        let text = format!("watch-mark-{}", self.marks);
        let r = command_on(self.port, &format!("ECHO {text}"));
        assert!(r.contains(&text), "ECHO answered {r:?}");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let seen = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .position(|l| l.contains(&text));
            if let Some(i) = seen {
                return i;
            }
            assert!(Instant::now() < deadline, "MONITOR did not show {text}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The commands between two marks that the clients caused, counted by name (`lua:` for
    /// those a script ran). Left out: the nodes' heartbeats and janitor (their scripts, their
    /// `TIME`, the keys `nodes`, `conns`, `epoch`), the forwarder's `fwd`, bus and hook reads, and this
    /// test's marks.
    fn between(&self, from: usize, to: usize) -> Vec<(String, usize)> {
        let lines = self.lines.lock().unwrap();
        let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
        for l in &lines[from + 1..to] {
            let lua = l.contains("[0 lua]");
            let words: Vec<&str> = l.split('"').skip(1).step_by(2).collect();
            let Some(cmd) = words.first().map(|c| c.to_lowercase()) else {
                continue;
            };
            let key = words.get(1).copied().unwrap_or("");
            let background = [
                "xread",
                "xreadgroup",
                "xautoclaim",
                "xpending",
                "ping",
                "echo",
                "info",
                // The heartbeat's and the janitor's clock (the watchlist scripts read none).
                "time",
            ]
            .contains(&cmd.as_str())
                || ["nodes", "conns", "epoch", "fwd"]
                    .iter()
                    .any(|k| key.ends_with(k));
            // A client's script names this node and then a socket id (`123.456`); the
            // heartbeat names the node and then a lease, the janitor a flag.
            let client_script = words.get(5).is_some_and(|w| is_socket_id(w));
            if background || (cmd == "evalsha" && !client_script) {
                continue;
            }
            let name = if cmd == "script" {
                format!("script {}", key.to_lowercase())
            } else if lua {
                format!("lua:{cmd}")
            } else {
                cmd
            };
            *counts.entry(name).or_default() += 1;
        }
        counts.into_iter().collect()
    }
}

fn is_socket_id(w: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    w.split_once('.')
        .is_some_and(|(a, b)| digits(a) && digits(b))
}

/// A `pushbox serve` of the test cluster on `redis`: lease 3 s, heartbeat (and janitor) 1 s.
fn start_node(redis: &Redis, name: &str) -> Node {
    Node::start(redis, name, &NodeConfig::default())
}

/// A connection signed in as `user` watching `watchlist`, as pusher-js signs in.
async fn signed_in(addr: SocketAddr, user: &str, watchlist: &[&str]) -> Client {
    let mut c = Client::connect(addr).await;
    let ud = if watchlist.is_empty() {
        json!({ "id": user })
    } else {
        json!({ "id": user, "watchlist": watchlist })
    }
    .to_string();
    let sig =
        pushbox::protocol::auth::sign(SECRET, format!("{}::user::{ud}", c.socket_id).as_bytes());
    c.send(json!({"event":"pusher:signin","data":{"auth":format!("{KEY}:{sig}"),"user_data":ud}}))
        .await;
    assert_eq!(c.recv().await["event"], "pusher:signin_success");
    c
}

/// The `events` of the next `watchlist_events` frame within `ms`, as `[(name, [ids])]`; `None`
/// on silence. Other frames are skipped.
async fn next_watch(c: &mut Client, ms: u64) -> Option<Vec<(String, Vec<String>)>> {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    loop {
        match tokio::time::timeout_at(deadline, c.ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).expect("JSON frames");
                if v["event"] != "pusher_internal:watchlist_events" {
                    continue;
                }
                let d: Value = serde_json::from_str(v["data"].as_str().expect("string data"))
                    .expect("JSON data");
                let evs = d["events"]
                    .as_array()
                    .expect("events")
                    .iter()
                    .map(|e| {
                        let ids = e["user_ids"].as_array().expect("user_ids");
                        let ids = ids.iter().map(|i| i.as_str().unwrap().to_owned());
                        (e["name"].as_str().unwrap().to_owned(), ids.collect())
                    })
                    .collect();
                return Some(evs);
            }
            Ok(Some(Ok(_))) => continue,
            Ok(_) | Err(_) => return None,
        }
    }
}

/// Every watchlist frame until `ms` of silence.
async fn watch_frames(c: &mut Client, ms: u64) -> Vec<Vec<(String, Vec<String>)>> {
    let mut out = Vec::new();
    while let Some(f) = next_watch(c, ms).await {
        out.push(f);
    }
    out
}

fn ev(name: &str, ids: &[&str]) -> (String, Vec<String>) {
    (name.to_owned(), ids.iter().map(|s| s.to_string()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_is_online_from_its_first_connection_anywhere_to_its_last() {
    let redis = Redis::start();
    let node_a = start_node(&redis, "a");
    let node_b = start_node(&redis, "b");
    let (a, b) = (node_a.addr(), node_b.addr());
    let mut monitor = Monitor::start(&redis);
    let none: Vec<Vec<(String, Vec<String>)>> = Vec::new();

    // Watchers on both nodes; nobody they watch is signed in yet.
    let m0 = monitor.mark();
    let mut w_a = signed_in(a, "wa", &["u1", "u2"]).await;
    assert_eq!(
        next_watch(&mut w_a, 5000).await.expect("initial state"),
        [ev("online", &[]), ev("offline", &["u1", "u2"])]
    );
    let m1 = monitor.mark();
    let mut w_b = signed_in(b, "wb", &["u1"]).await;
    assert_eq!(
        next_watch(&mut w_b, 5000).await.expect("initial state"),
        [ev("online", &[]), ev("offline", &["u1"])]
    );

    // u1's first connection, on B: online once, on both nodes.
    let m2 = monitor.mark();
    let u1_b = signed_in(b, "u1", &[]).await;
    let online = [vec![ev("online", &["u1"])]];
    assert_eq!(watch_frames(&mut w_a, 1500).await, online);
    assert_eq!(watch_frames(&mut w_b, 300).await, online);
    let m3 = monitor.mark();

    // A watcher that signs in now (on A, u1 is on B) starts from the cluster's state.
    let mut late = signed_in(a, "late", &["u2", "u1"]).await;
    assert_eq!(
        next_watch(&mut late, 5000).await.expect("initial state"),
        [ev("online", &["u1"]), ev("offline", &["u2"])]
    );

    // A second connection of u1, on A: nothing. Closing one of the two: nothing.
    let m4 = monitor.mark();
    let u1_a = signed_in(a, "u1", &[]).await;
    assert_eq!(watch_frames(&mut w_a, 1500).await, none);
    let m5 = monitor.mark();
    drop(u1_b);
    assert_eq!(watch_frames(&mut w_a, 1500).await, none);
    assert_eq!(watch_frames(&mut w_b, 300).await, none);
    let m6 = monitor.mark();

    // The last one: offline once, everywhere.
    drop(u1_a);
    let offline = [vec![ev("offline", &["u1"])]];
    assert_eq!(watch_frames(&mut w_a, 1500).await, offline);
    assert_eq!(watch_frames(&mut w_b, 300).await, offline);
    assert_eq!(watch_frames(&mut late, 300).await, offline);
    let m7 = monitor.mark();

    // A watcher's watchlist leaves with it: u2 was watched only by wa and late.
    drop(w_a);
    drop(late);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m8 = monitor.mark();
    let u2 = signed_in(b, "u2", &[]).await;
    assert_eq!(watch_frames(&mut w_b, 1500).await, none);
    let m9 = monitor.mark();
    let unwatched = monitor.between(m8, m9);
    assert!(
        unwatched.iter().any(|(k, _)| k == "evalsha"),
        "the monitor saw the signin: {unwatched:?}"
    );
    assert!(
        !unwatched.iter().any(|(k, _)| k.ends_with("xadd")),
        "a user nobody watches goes online without a bus entry: {unwatched:?}"
    );
    drop(u2);

    // What it costs, measured (printed for BENCHMARKS.md: `cargo test -- --nocapture`).
    let report = [
        ("signin of a watcher of 2 users, nobody online", m0, m1),
        ("signin of a watcher of 1 user", m1, m2),
        ("first signin of a user 2 connections watch", m2, m3),
        ("second connection of that user", m4, m5),
        ("signout of one of its two connections", m5, m6),
        ("signout of its last connection", m6, m7),
        ("signin of a user nobody watches", m8, m9),
    ];
    for (what, from, to) in report {
        println!("redis, {what}: {:?}", monitor.between(from, to));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_signed_in_users_go_offline_once_within_the_lease() {
    let redis = Redis::start();
    let a = start_node(&redis, "a");
    let b = start_node(&redis, "b");
    let mut c = start_node(&redis, "c");
    let mut watcher = signed_in(a.addr(), "w", &["only-c", "b-and-c"]).await;
    let _ = next_watch(&mut watcher, 5000).await.expect("initial state");
    // only-c: two connections, both on C. b-and-c: one on B, one on C.
    let _c1 = signed_in(c.addr(), "only-c", &[]).await;
    let _c2 = signed_in(c.addr(), "only-c", &[]).await;
    let _bc_b = signed_in(b.addr(), "b-and-c", &[]).await;
    let _bc_c = signed_in(c.addr(), "b-and-c", &[]).await;
    let got = watch_frames(&mut watcher, 1500).await;
    assert_eq!(
        got.iter().flatten().filter(|(n, _)| n == "online").count(),
        2,
        "one online each: {got:?}"
    );

    let killed = Instant::now();
    c.served.child.kill().expect("kill -9 node c");
    let _ = c.served.child.wait();
    // Lease 3 s, heartbeat (and janitor) 1 s: well within 6 s.
    let got = watch_frames(&mut watcher, 6000).await;
    assert_eq!(
        got,
        [vec![ev("offline", &["only-c"])]],
        "only-c offline once, b-and-c still online on B"
    );
    assert!(killed.elapsed() < Duration::from_secs(14));

    // A watcher signing in now agrees.
    let mut after = signed_in(b.addr(), "w2", &["only-c", "b-and-c"]).await;
    assert_eq!(
        next_watch(&mut after, 5000).await.expect("initial state"),
        [ev("online", &["b-and-c"]), ev("offline", &["only-c"])]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_frozen_past_its_lease_goes_offline_then_puts_its_users_and_watchers_back() {
    let redis = Redis::start();
    let a = start_node(&redis, "a");
    let c = start_node(&redis, "c");
    let mut w_a = signed_in(a.addr(), "wa", &["cu"]).await;
    let _ = next_watch(&mut w_a, 5000).await.expect("initial state");
    // au, on A, is watched only from C.
    let au = signed_in(a.addr(), "au", &[]).await;
    let mut w_c = signed_in(c.addr(), "wc", &["au"]).await;
    assert_eq!(
        next_watch(&mut w_c, 5000).await.expect("initial state"),
        [ev("online", &["au"])]
    );
    let _cu = signed_in(c.addr(), "cu", &[]).await;
    assert_eq!(
        watch_frames(&mut w_a, 1500).await,
        [vec![ev("online", &["cu"])]]
    );

    // SIGSTOP: C is alive but says nothing, like a box cut off from Redis.
    c.signal("-STOP");
    let got = watch_frames(&mut w_a, 6000).await;
    // While C is reaped, au goes: nobody counts w_c as a watcher now, so no bus entry says so.
    drop(au);
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.signal("-CONT");
    assert_eq!(got, [vec![ev("offline", &["cu"])]], "cu reaped once");
    // Back: its lease is gone, so it tells Redis again who is signed in there: cu comes back
    // once, and w_c gets its watchlist's state again, au now offline.
    assert_eq!(
        watch_frames(&mut w_a, 5000).await,
        [vec![ev("online", &["cu"])]],
        "cu back once"
    );
    let got = watch_frames(&mut w_c, 1000).await;
    assert_eq!(
        got.last(),
        Some(&vec![ev("online", &[]), ev("offline", &["au"])]),
        "w_c ends with the cluster's state: {got:?}"
    );
}
