//! Memory bound of the HTTP fallback: 1,000 concurrent xhr polling sessions against a real
//! `pushbox serve` process on 127.0.0.1, each subscribed and with a held poll. Reports the
//! server's RSS per session (the figure for BENCHMARKS.md) and checks that the sessions are all
//! destroyed by expiry once their clients go away.
//!
//! The figure: `cargo test --release --test fallback_memory -- --nocapture`

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{api, config_toml, free_port, pushbox, Ready, Served, APP_ID, KEY};

const SESSIONS: usize = 1000;
const EXPIRY_SECS: u64 = 2;

/// The server under test and its state directory.
struct Server {
    served: Served,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Server {
    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.served.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            })
            .expect("VmRSS of the server process")
    }
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let config = dir.path().join("pushbox.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {state:?}\n{}",
            config_toml(
                port,
                // Every session comes from 127.0.0.1: the per-address limit (1,000 by default, tested in
                // tests/fallback.rs) would refuse the last ones before memory is measured.
                &format!("pong_timeout = {EXPIRY_SECS}\nmax_connections_per_ip = 0\n\n"),
                "max_connections = 100000\n"
            )
        ),
    )
    .unwrap();
    let mut cmd = pushbox(&["serve", "--config"]);
    cmd.arg(&config)
        .env("PUSHBOX_STATE_DIR", &state)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let served = tokio::task::block_in_place(|| Served::start(&mut cmd, port, Ready::Up));
    Server {
        addr: served.addr(),
        served,
        _dir: dir,
    }
}

/// A complete request with `Connection: close`; the whole raw response.
async fn send_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).as_bytes()).await?;
    s.write_all(body).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

async fn req(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> String {
    tokio::time::timeout(
        Duration::from_secs(10),
        send_request(addr, method, path, body),
    )
    .await
    .expect("response within 10 s")
    .expect("request")
}

fn url(session: &str, endpoint: &str) -> String {
    format!("/pusher/app/{KEY}/1/{session}/{endpoint}?protocol=7&client=js&version=8.6.0&t=1&n=1")
}

/// Opens a polling session, subscribes it, and leaves a poll waiting on it.
async fn polling_session(addr: SocketAddr, i: usize) -> TcpStream {
    let id = format!("m{i:07}");
    let r = req(addr, "POST", &url(&id, "xhr"), b"").await;
    assert!(
        r.contains("\r\n\r\n") && r.contains("connection_established"),
        "{r}"
    );
    let sub = serde_json::to_vec(&[serde_json::json!({"event":"pusher:subscribe","data":{"channel":format!("room-{}", i % 50)}}).to_string()]).unwrap();
    let r = req(addr, "POST", &url(&id, "xhr_send"), &sub).await;
    assert!(r.starts_with("HTTP/1.1 204"), "{r}");
    let r = req(addr, "POST", &url(&id, "xhr"), b"").await;
    assert!(r.contains("subscription_succeeded"), "{r}");
    let mut held = TcpStream::connect(addr).await.unwrap();
    held.write_all(
        format!(
            "POST {} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n",
            url(&id, "xhr")
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    held
}

/// For comparison: the same number of idle keep-alive HTTP connections (one `GET /up` each)
/// on a fresh server — the share of a fallback session that is hyper's connection, not the
/// session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_thousand_idle_keep_alive_connections_for_comparison() {
    let _ = pushbox::sys::limits::raise_nofile_limit();
    let s = start().await;
    let open = |addr: SocketAddr| async move {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(format!("GET /up HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = c.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        c
    };
    let mut warm = Vec::new();
    for _ in 0..20 {
        warm.push(open(s.addr).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = s.rss_kib();
    let mut held = Vec::with_capacity(SESSIONS);
    for _ in 0..SESSIONS {
        held.push(open(s.addr).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = s.rss_kib();
    let per = (after.saturating_sub(before)) * 1024 / SESSIONS as u64;
    println!(
        "fallback memory (comparison): {SESSIONS} idle keep-alive HTTP connections: server RSS {before} KiB -> {after} KiB = {per} bytes per connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_thousand_polling_sessions_stay_small_and_expire() {
    let _ = pushbox::sys::limits::raise_nofile_limit();
    let s = start().await;
    for i in 0..20 {
        drop(polling_session(s.addr, 1_000_000 + i).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = s.rss_kib();
    let t = Instant::now();
    let mut held = Vec::with_capacity(SESSIONS);
    for i in 0..SESSIONS {
        held.push(polling_session(s.addr, i).await);
    }
    let setup = t.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = s.rss_kib();
    let per_session = (after.saturating_sub(before)) * 1024 / SESSIONS as u64;
    println!(
        "fallback memory: {SESSIONS} concurrent xhr polling sessions (each subscribed, one poll held): server RSS {before} KiB -> {after} KiB = {per_session} bytes per session (opened in {setup:?})"
    );
    let (status, v) = api(s.addr, "GET", &format!("/apps/{APP_ID}/channels"), "", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(v["channels"].as_object().map(|c| c.len()), Some(50), "{v}");
    assert!(
        per_session < 48 * 1024,
        "{per_session} bytes per fallback session"
    );

    // Clients gone: every session expires and leaves its channel.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(EXPIRY_SECS + 10);
    loop {
        let (_, v) = api(s.addr, "GET", &format!("/apps/{APP_ID}/channels"), "", &[]).await;
        if v["channels"].as_object().is_some_and(|c| c.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "sessions did not expire: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "fallback memory: after expiry of all sessions server RSS {} KiB",
        s.rss_kib()
    );
}
