//! Slow and silent HTTP clients over real sockets on 127.0.0.1: every phase of a request has
//! a deadline (head, idle keep-alive, body), and near its open-files limit the box still
//! serves a new client (the real binary under a 256-descriptor limit, flooded by bodiless
//! requests from 127.0.0.2).

mod common;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Reads until the server closes the connection; what it sent, or `None` if it was still
/// open after `within`.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> Option<String> {
    let mut out = Vec::new();
    match tokio::time::timeout(within, s.read_to_end(&mut out)).await {
        Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
        Err(_) => None,
    }
}

/// A request head announcing a 100-byte body that never comes.
fn bodiless_publish(addr: SocketAddr) -> String {
    format!("POST /apps/{APP_ID}/events HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
}

#[tokio::test]
async fn a_body_that_never_comes_gets_408_and_the_connection_closes() {
    let s = start(|c| c.server.request_timeout = Duration::from_secs(1)).await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(bodiless_publish(s.addr).as_bytes())
        .await
        .unwrap();
    let started = Instant::now();
    let answer = read_until_closed(&mut c, Duration::from_secs(5))
        .await
        .expect("closed within request_timeout, not held forever");
    assert!(started.elapsed() >= Duration::from_millis(900));
    let (status, body) = status_and_body(&answer);
    assert_eq!(status, 408, "{answer}");
    assert!(body.contains("request_timeout"), "{body}");
    let m = &s.state.metrics;
    assert_eq!(m.refusals(pushbox::metrics::Reason::HttpTimeout), 1);
}

#[tokio::test]
async fn a_silent_connection_and_an_idle_keep_alive_one_are_closed() {
    let s = start(|c| c.server.request_timeout = Duration::from_secs(1)).await;
    // Nothing at all after connecting.
    let mut silent = TcpStream::connect(s.addr).await.unwrap();
    // One request, then idle on a keep-alive connection.
    let mut idle = TcpStream::connect(s.addr).await.unwrap();
    let head = format!("GET /up HTTP/1.1\r\nHost: {}\r\n\r\n", s.addr);
    idle.write_all(head.as_bytes()).await.unwrap();
    for c in [&mut silent, &mut idle] {
        read_until_closed(c, Duration::from_secs(4))
            .await
            .expect("closed after request_timeout (the default is 30 s)");
    }
}

/// 127.0.0.2 → the server: another address on the same machine (Linux routes 127/8 to lo).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((from, 0)))?;
    sock.connect(to).await
}

#[test]
fn near_the_open_files_limit_a_new_client_is_still_served() {
    const LIMIT: u64 = 256;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut serve = serve_in(dir.path(), &config_toml(port, "", ""));
    serve.stdout(Stdio::null()).stderr(Stdio::null());
    // Soft and hard: the server raises its soft limit to the hard one at start.
    unsafe {
        serve.pre_exec(|| {
            use nix::sys::resource::{setrlimit, Resource};
            setrlimit(Resource::RLIMIT_NOFILE, LIMIT as _, LIMIT as _).map_err(std::io::Error::from)
        });
    }
    let served = Served::start(&mut serve, port, Ready::Up);
    let addr = served.addr();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // More bodiless requests than the process has descriptors, from another address.
        let mut held = Vec::new();
        for _ in 0..LIMIT + 40 {
            let mut c = connect_from([127, 0, 0, 2], addr).await.expect("connect");
            let _ = c.write_all(bodiless_publish(addr).as_bytes()).await;
            held.push(c);
        }
        // A new client still gets its answer, promptly (today it waits in the backlog for
        // as long as the flood is held).
        let up = tokio::time::timeout(Duration::from_secs(5), http(addr, "GET", "/up", b""))
            .await
            .expect("a new client is served near the open-files limit");
        assert_eq!(up.0, 200, "{up:?}");
        let (status, text) = http(addr, "GET", "/metrics", b"").await;
        assert_eq!(status, 200);
        let evicted = text
            .lines()
            .find_map(|l| l.strip_prefix("pushbox_refusals_total{reason=\"evicted\"} "))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(
            evicted >= 40,
            "slow connections closed to make room: {evicted}\n{text}"
        );
        drop(held);
    });
    drop(served);
}
