//! `/up` answers while the hub is busy: it reads atomics and the spools' own small state, never
//! a lock the fan-out holds, so a health check (systemd, a load balancer) does not time out
//! while a large publish is being delivered and restart a box that is merely working.
//!
//! The real `pushbox serve`, pinned to one CPU when `taskset` is there (so it runs the
//! current-thread runtime a single-core board runs: the worst case), with 5,000 WebSocket
//! subscribers on one channel; ten 16 KB events are published to all of them (800 MB of
//! frames) while `/up` is asked every 20 ms. Every `/up` during the fan-out must answer 200,
//! and within a liveness bound far above any real latency (5 s, what a health check waits);
//! the latencies are printed. This is not a performance test: BENCHMARKS.md has those.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, http_blocking, Ready, Served, KEY};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

const SUBSCRIBERS: usize = 5_000;
const EVENTS: usize = 10;
const EVENT_BYTES: usize = 16 * 1024;
const MARKER: &[u8] = b"END-OF-FAN-OUT";

fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let want = 65_536.max(hard);
        let _ = setrlimit(Resource::RLIMIT_NOFILE, want, want)
            .or_else(|_| setrlimit(Resource::RLIMIT_NOFILE, hard, hard));
    }
}

fn serve(work: &std::path::Path, port: u16) -> Served {
    let config = common::config_toml(
        port,
        "max_connections_per_ip = 0\noutbound_queue = 4096\n",
        "max_connections = 20000\nmax_event_data_bytes = 65536\n",
    );
    std::fs::write(work.join("pushbox.toml"), config).unwrap();
    let pinned = Command::new("taskset").arg("-V").output().is_ok();
    let mut cmd = if pinned {
        let mut c = Command::new("taskset");
        c.args(["-c", "0", common::BIN]);
        c
    } else {
        Command::new(common::BIN)
    };
    cmd.args(["serve", "--config"])
        .arg(work.join("pushbox.toml"))
        .env("PUSHBOX_STATE_DIR", work.join("state"))
        .env("PUSHBOX_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS");
    println!("server pinned to one CPU: {pinned}");
    Served::start_logged(&mut cmd, port, Ready::Up, work.join("serve.log"))
}

/// A subscriber of `orders`; then its socket, read raw (no frame parsing on the test's side)
/// until the marker has gone by. Counts itself in `done`.
async fn subscriber(addr: SocketAddr, done: Arc<AtomicUsize>) -> tokio::task::JoinHandle<()> {
    let mut ws = common::connect_raw(addr, &format!("/app/{KEY}?protocol=7")).await;
    let first = common::next_json(&mut ws).await.unwrap();
    assert_eq!(first["event"], "pusher:connection_established");
    let sub = r#"{"event":"pusher:subscribe","data":{"channel":"orders"}}"#;
    ws.send(Message::Text(sub.into())).await.unwrap();
    let ok = common::next_json(&mut ws).await.unwrap();
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
    tokio::spawn(async move {
        let MaybeTlsStream::Plain(tcp) = ws.get_mut() else {
            panic!("plain TCP");
        };
        let mut buf = vec![0u8; 64 * 1024];
        let mut tail: Vec<u8> = Vec::new();
        loop {
            let n = match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            tail.extend_from_slice(&buf[..n]);
            if tail.windows(MARKER.len()).any(|w| w == MARKER) {
                done.fetch_add(1, Ordering::SeqCst);
                return;
            }
            let keep = tail.len().saturating_sub(MARKER.len());
            tail.drain(..keep);
        }
    })
}

#[test]
fn up_answers_while_a_large_fan_out_runs() {
    raise_nofile();
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let s = serve(work.path(), port);
    let addr = s.addr();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let readers: Vec<_> = rt.block_on(async {
        futures_util::stream::iter(0..SUBSCRIBERS)
            .map(|_| subscriber(addr, done.clone()))
            .buffer_unordered(64)
            .collect()
            .await
    });
    println!(
        "{SUBSCRIBERS} subscribers connected in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The publisher: ten big events, the last one carrying the marker.
    let publisher = std::thread::spawn(move || {
        let body = "x".repeat(EVENT_BYTES);
        for i in 0..EVENTS {
            let data = if i + 1 == EVENTS {
                format!(
                    "{}{}",
                    &body[MARKER.len()..],
                    String::from_utf8_lossy(MARKER)
                )
            } else {
                body.clone()
            };
            let b =
                serde_json::json!({"name": "big", "channel": "orders", "data": data}).to_string();
            let signed =
                common::signed("POST", &format!("/apps/{}/events", common::APP_ID), &b, &[]);
            let (st, answer) = http_blocking(addr, "POST", &signed, &b).unwrap();
            assert_eq!(st, 200, "{answer}");
        }
    });

    // /up every 20 ms until every subscriber has had every event.
    let fan_out = Instant::now();
    let deadline = fan_out + Duration::from_secs(120);
    let mut latencies = Vec::new();
    while done.load(Ordering::SeqCst) < SUBSCRIBERS && Instant::now() < deadline {
        let t = Instant::now();
        let (status, body) = http_blocking(addr, "GET", "/up", "").expect("/up answers");
        let took = t.elapsed();
        assert_eq!(status, 200, "{body}");
        assert!(
            took < Duration::from_secs(5),
            "/up took {took:?} during the fan-out: a health check would have given up"
        );
        latencies.push(took);
        std::thread::sleep(Duration::from_millis(20));
    }
    let window = fan_out.elapsed();
    publisher.join().expect("the publisher");
    assert_eq!(
        done.load(Ordering::SeqCst),
        SUBSCRIBERS,
        "every subscriber got every event within 120 s"
    );
    latencies.sort();
    let pct = |p: usize| latencies[(latencies.len() - 1) * p / 100];
    println!(
        "fan-out of {EVENTS} × {} KB to {SUBSCRIBERS} took {:.2} s; /up answered {} times meanwhile: median {:?}, p99 {:?}, max {:?}",
        EVENT_BYTES / 1024,
        window.as_secs_f64(),
        latencies.len(),
        pct(50),
        pct(99),
        pct(100)
    );
    assert!(
        latencies.len() >= 3,
        "the fan-out was too short to ask /up during it ({window:?})"
    );
    drop(readers);
    s.assert_no_panic();
}
