//! The web console over raw HTTP/1.1 (`tests/console.rs`, and `tests/cluster.rs` for the
//! cluster's panel): a request with headers over any stream, the session cookie of an answer,
//! and signing in with the admin password.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw HTTP/1.1 exchange: (status, head, body).
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("http timeout");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

/// [`exchange`] over a new TCP connection to `addr`.
pub async fn req(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let s = TcpStream::connect(addr).await.expect("connect");
    exchange(s, addr, method, path, headers, body).await
}

/// The `Set-Cookie` value of a response head.
pub fn set_cookie(head: &str) -> Option<String> {
    head.lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .map(|l| l["set-cookie:".len()..].trim().to_owned())
}

/// `name=value` of a `Set-Cookie` value, as a `Cookie` header sends it back.
pub fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap_or("").to_owned()
}

/// Signs in with the admin password `password`: (cookie pair, csrf token).
pub async fn login(addr: SocketAddr, password: &str) -> (String, String) {
    let (status, head, body) = req(
        addr,
        "POST",
        "/console/login",
        &[("Content-Type", "application/json")],
        &json!({ "password": password }).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sc = set_cookie(&head).expect("Set-Cookie");
    let v: Value = serde_json::from_str(&body).unwrap();
    (cookie_pair(&sc), v["csrf"].as_str().unwrap().to_owned())
}
