//! RFC 6455 and HTTP/1.1 details a browser never exercises but a stranger's client does: close
//! frames with codes nobody may send, handshakes that are not quite WebSocket, requests without
//! `Host`, and a peer that vanishes without a FIN. Spoken over raw sockets so every byte is the
//! test's choice.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use pushbox::transport::wsframe::{self, OP_CLOSE, OP_TEXT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A valid upgrade request for the test app, with `extra` header lines and the request line
/// `line` (`GET {path} HTTP/1.1` when `None`).
fn upgrade_request(line: Option<&str>, key: &str, extra: &str) -> String {
    let line = line
        .map(str::to_owned)
        .unwrap_or_else(|| format!("GET /app/{KEY}?protocol=7 HTTP/1.1"));
    format!(
        "{line}\r\nHost: pushbox\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n{extra}\r\n"
    )
}

const GOOD_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Sends `request` and returns the status of the answer (0 if there was none).
async fn status_of(addr: SocketAddr, request: &str) -> u16 {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an answer within 5 s")
        .unwrap_or(0);
    status_and_body(&String::from_utf8_lossy(&buf[..n])).0
}

/// A raw WebSocket connection past its handshake and `pusher:connection_established`.
async fn raw_ws(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(upgrade_request(None, GOOD_KEY, "").as_bytes())
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // The 101 head, then the first text frame.
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("handshake within 5 s")
            .expect("read");
        assert!(n > 0, "closed during the handshake");
        got.extend_from_slice(&buf[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        assert!(got.starts_with(b"HTTP/1.1 101"), "upgraded");
        if let Ok(Some(f)) = wsframe::decode_server_frame(&got[end + 4..], 1 << 16) {
            assert_eq!(f.opcode, OP_TEXT);
            assert!(std::str::from_utf8(f.payload)
                .unwrap()
                .contains("connection_established"));
            return s;
        }
    }
}

/// Reads server frames until a close frame; returns its code and the text frames before it.
async fn close_reply(s: &mut TcpStream, within: Duration) -> (Option<u16>, Vec<String>) {
    let deadline = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    let mut texts = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        while let Ok(Some(f)) = wsframe::decode_server_frame(&got, 1 << 16) {
            let (opcode, payload, used) = (f.opcode, f.payload.to_vec(), f.used);
            got.drain(..used);
            match opcode {
                OP_CLOSE => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return (code, texts);
                }
                OP_TEXT => texts.push(String::from_utf8_lossy(&payload).into_owned()),
                _ => {}
            }
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("a close frame in time")
            .expect("read");
        assert!(n > 0, "EOF before a close frame");
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn invalid_close_codes_get_1002_and_bad_reasons_1007() {
    let s = start(|_| {}).await;
    let mut cases: Vec<(Vec<u8>, u16)> = Vec::new();
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
    ] {
        cases.push((code.to_be_bytes().to_vec(), 1002));
    }
    for code in [1000u16, 1001, 1003, 1011, 3000, 4999] {
        cases.push((code.to_be_bytes().to_vec(), code));
    }
    cases.push((vec![], 1000));
    let mut not_utf8 = 1000u16.to_be_bytes().to_vec();
    not_utf8.extend([b'o', b'k', 0xff, 0xfe]);
    cases.push((not_utf8, 1007));
    for (payload, want) in cases {
        let mut ws = raw_ws(s.addr).await;
        let close = wsframe::encode_masked(OP_CLOSE, &payload, [1, 2, 3, 4]);
        ws.write_all(&close).await.unwrap();
        let (code, _) = close_reply(&mut ws, Duration::from_secs(5)).await;
        assert_eq!(code, Some(want), "close payload {payload:?}");
    }
}

#[tokio::test]
async fn broken_handshakes_get_400() {
    let s = start(|_| {}).await;
    assert_eq!(
        status_of(s.addr, &upgrade_request(None, GOOD_KEY, "")).await,
        101
    );
    let path = format!("/app/{KEY}?protocol=7");
    for (what, request) in [
        ("not base64", upgrade_request(None, "not a key!", "")),
        // 15 and 17 bytes, base64-encoded.
        (
            "15 bytes",
            upgrade_request(None, "AAAAAAAAAAAAAAAAAAAA", ""),
        ),
        (
            "17 bytes",
            upgrade_request(None, "AAAAAAAAAAAAAAAAAAAAAAA=", ""),
        ),
        ("empty key", upgrade_request(None, "", "")),
        (
            "POST",
            upgrade_request(Some(&format!("POST {path} HTTP/1.1")), GOOD_KEY, ""),
        ),
        (
            "HTTP/1.0",
            upgrade_request(Some(&format!("GET {path} HTTP/1.0")), GOOD_KEY, ""),
        ),
    ] {
        assert_eq!(status_of(s.addr, &request).await, 400, "{what}");
    }
}

#[tokio::test]
async fn http_11_without_host_gets_400() {
    let s = start(|_| {}).await;
    assert_eq!(
        status_of(s.addr, "GET /up HTTP/1.1\r\nHost: pushbox\r\n\r\n").await,
        200
    );
    assert_eq!(status_of(s.addr, "GET /up HTTP/1.1\r\n\r\n").await, 400);
    let no_host = upgrade_request(None, GOOD_KEY, "").replace("Host: pushbox\r\n", "");
    assert_eq!(status_of(s.addr, &no_host).await, 400);
    // HTTP/1.0 has no Host requirement.
    assert_eq!(status_of(s.addr, "GET /up HTTP/1.0\r\n\r\n").await, 200);
}

// ---- one shape per message: a JSON array is not an object -----------------------------------

#[tokio::test]
async fn json_arrays_are_refused_as_messages_and_channel_data() {
    let s = start(|_| {}).await;
    let mut a = Client::connect(s.addr).await;
    a.send_text("nonsense").await;
    let malformed = a.recv().await;
    assert_eq!(malformed["event"], "pusher:error");
    // serde would read this array as {"event":…,"channel":…,"data":…}.
    a.send_text(r#"["pusher:subscribe",null,{"channel":"orders"}]"#)
        .await;
    let f = a.recv().await;
    assert_eq!(f["event"], "pusher:error", "{f}");
    assert_eq!(f["data"]["code"], malformed["data"]["code"]);
    // A presence channel_data array, correctly signed, is invalid channel_data like any other.
    let f = a
        .subscribe_presence("presence-room", r#"["1",{"name":"x"}]"#)
        .await;
    assert_eq!(f["event"], "pusher:subscription_error", "{f}");
    assert!(
        f["data"]["error"]
            .as_str()
            .unwrap()
            .contains("channel_data"),
        "{f}"
    );
    let ok = a
        .subscribe_presence("presence-room", r#"{"user_id":"1"}"#)
        .await;
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
}

/// A signed `POST` of `body` to the API path; status and body of the answer.
async fn post_signed(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    http(
        addr,
        "POST",
        &signed("POST", path, body, &[]),
        body.as_bytes(),
    )
    .await
}

#[tokio::test]
async fn api_event_bodies_must_be_objects() {
    let s = start(|_| {}).await;
    let path = format!("/apps/{APP_ID}/events");
    let body = r#"["sale","{}",["orders"]]"#;
    let (status, answer) = post_signed(s.addr, &path, body).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("JSON object"), "{answer}");
    let path = format!("/apps/{APP_ID}/batch_events");
    let body = r#"{"batch":[["sale","{}",null,"orders"]]}"#;
    let (status, answer) = post_signed(s.addr, &path, body).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("JSON object"), "{answer}");
    let body = r#"{"batch":[{"name":"sale","data":"{}","channel":"orders"}]}"#;
    let (status, answer) = post_signed(s.addr, &path, body).await;
    assert_eq!(status, 200, "{answer}");
}

// ---- half-open connections ---------------------------------------------------------------------

/// `/proc/net/tcp`'s form of an IPv4 socket address: `0100007F:1F90` for 127.0.0.1:8080.
fn proc_addr(a: SocketAddr) -> String {
    let SocketAddr::V4(v4) = a else {
        panic!("the test server listens on IPv4")
    };
    format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    )
}

/// Does this process (the in-process server) still hold a file descriptor for the server's end
/// of the connection `server` ↔ `client`? Found by the socket's inode, so the other tests
/// running in parallel do not matter.
fn server_holds_fd(server: SocketAddr, client: SocketAddr) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let (local, remote) = (proc_addr(server), proc_addr(client));
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(1) == Some(&local.as_str()) && f.get(2) == Some(&remote.as_str()))
            .then(|| f.get(9).map(|s| s.to_string()))
            .flatten()
    });
    // Inode 0: the socket lingers in the kernel (FIN_WAIT, TIME_WAIT) but no fd refers to it.
    let Some(inode) = inode.filter(|i| i != "0") else {
        return false;
    };
    let want = format!("socket:[{inode}]");
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == want))
}

#[tokio::test]
async fn half_open_connections_are_reaped_with_4201() {
    let (activity, pong) = (Duration::from_secs(1), Duration::from_secs(1));
    let s = start(|c| {
        c.server.activity_timeout = activity;
        c.server.pong_timeout = pong;
    })
    .await;
    // A peer that completes the handshake, then vanishes without a FIN: it never reads, never
    // answers a ping, never closes (the socket stays open on this side, unread).
    let mut ws = raw_ws(s.addr).await;
    let client = ws.local_addr().unwrap();
    let t0 = std::time::Instant::now();
    assert!(
        server_holds_fd(s.addr, client),
        "the server holds the connection"
    );
    let metrics = &s.state.metrics;
    // Each tick of the liveness timer may land up to one check later; half a second of slack.
    let budget = activity + pong + Duration::from_millis(500);
    while server_holds_fd(s.addr, client)
        || metrics.open_connections(pushbox::metrics::Transport::WebSocket) > 0
    {
        assert!(
            t0.elapsed() < budget,
            "still held after {:?} (activity_timeout + pong_timeout = {:?})",
            t0.elapsed(),
            activity + pong
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What the server wrote before letting go: a ping, the 4201 error, the 4201 close, then EOF.
    let (code, texts) = close_reply(&mut ws, Duration::from_secs(1)).await;
    assert_eq!(code, Some(4201));
    assert!(texts.iter().any(|t| t.contains("pusher:ping")), "{texts:?}");
    assert!(texts.iter().any(|t| t.contains("4201")), "{texts:?}");
    let mut rest = [0u8; 64];
    assert_eq!(
        ws.read(&mut rest).await.unwrap_or(0),
        0,
        "the server closed its end"
    );
}
