//! The HTTP side over real sockets: health check, routing, body limits, keep-alive,
//! `Expect: 100-continue` (PHP's curl sends it), and the signing edge cases.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[tokio::test]
async fn up_and_not_found() {
    let s = start(|_| {}).await;
    assert_eq!(
        http(s.addr, "GET", "/up", b"").await,
        (200, "{\"status\":\"ok\"}".to_string())
    );
    let (st, body) = http(s.addr, "GET", "/nope", b"").await;
    assert_eq!(st, 404);
    assert!(body.contains("error"));
    let (st, body) = http(s.addr, "GET", &format!("/app/{KEY}"), b"").await;
    assert_eq!(st, 400);
    assert!(body.contains("WebSocket"));
}

#[tokio::test]
async fn oversize_request_body_is_413() {
    let s = start(|c| c.server.max_request_bytes = 4096).await;
    let body = json!({"name":"e","channel":"a","data":"x".repeat(5000)}).to_string();
    let (st, v) = api(
        s.addr,
        "POST",
        &format!("/apps/{APP_ID}/events"),
        &body,
        &[],
    )
    .await;
    assert_eq!(st, 413);
    assert!(v["error"].as_str().unwrap().contains("max_request_bytes"));
}

#[tokio::test]
async fn keep_alive_and_expect_continue() {
    let s = start(|_| {}).await;
    let mut conn = BufReader::new(TcpStream::connect(s.addr).await.unwrap());
    let path = format!("/apps/{APP_ID}/events");
    for i in 0..3 {
        let body = json!({"name":"e","channel":"orders","data":format!("{i}")}).to_string();
        let q = pushbox::protocol::signing::sign_query(
            "POST",
            &path,
            KEY,
            SECRET,
            now(),
            body.as_bytes(),
            &[],
        );
        let head = format!("POST {path}?{q} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n", body.len());
        conn.get_mut().write_all(head.as_bytes()).await.unwrap();
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(5), conn.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        assert!(line.starts_with("HTTP/1.1 100"), "{line}");
        conn.read_line(&mut line).await.unwrap();
        conn.get_mut().write_all(body.as_bytes()).await.unwrap();
        let mut status = String::new();
        conn.read_line(&mut status).await.unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            conn.read_line(&mut h).await.unwrap();
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if h.to_ascii_lowercase().starts_with("content-type:") {
                assert_eq!(h.trim(), "content-type: application/json");
            }
        }
        let mut b = vec![0u8; len];
        conn.read_exact(&mut b).await.unwrap();
        assert_eq!(b, b"{}");
    }
}

#[tokio::test]
async fn python_sdk_signs_body_md5_on_get_and_php_encodes_commas() {
    let s = start(|_| {}).await;
    let mut c = Client::connect(s.addr).await;
    c.subscribe_presence("presence-room", r#"{"user_id":"7"}"#)
        .await;
    let path = format!("/apps/{APP_ID}/channels");
    let q = pushbox::protocol::signing::sign_query(
        "GET",
        &path,
        KEY,
        SECRET,
        now(),
        b"",
        &[
            ("body_md5", "d41d8cd98f00b204e9800998ecf8427e"),
            ("filter_by_prefix", "presence-"),
            ("info", "user_count,subscription_count"),
        ],
    );
    assert!(
        q.contains("user_count%2Csubscription_count"),
        "the comma goes percent-encoded, as Guzzle sends it"
    );
    let (st, body) = http(s.addr, "GET", &format!("{path}?{q}"), b"").await;
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        json!({"channels":{"presence-room":{"user_count":1,"subscription_count":1}}})
    );
}

#[tokio::test]
async fn garbage_requests_do_not_hurt_the_server() {
    let s = start(|_| {}).await;
    for junk in [
        &b"\x00\x01\x02\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /apps/42/events HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
        b"GET /up HTTP/1.1\r\nHost: x\r\nX: \xff\xfe\r\n\r\n",
    ] {
        let mut t = TcpStream::connect(s.addr).await.unwrap();
        t.write_all(junk).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), t.read_to_end(&mut out)).await;
    }
    // A WebSocket upgrade without a key is refused with 400.
    let (st, _) = {
        let mut t = TcpStream::connect(s.addr).await.unwrap();
        t.write_all(format!("GET /app/{KEY} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        (text.split(' ').nth(1).unwrap_or("").to_owned(), text)
    };
    assert_eq!(st, "400");
    assert_eq!(http(s.addr, "GET", "/up", b"").await.0, 200);
}
