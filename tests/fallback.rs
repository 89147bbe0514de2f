//! pusher-js's HTTP fallback transports (PUSHER.md §9) over raw HTTP/1.1 on 127.0.0.1:
//! xhr_streaming, xhr polling and xhr_send framing, heartbeats, expiry, the 256 KiB rollover,
//! one receive request per session, refusals, CORS and preflight, bad bodies, shutdown,
//! bounded queues. (The 1,000-session memory check is `tests/fallback_memory.rs`.)

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use pushbox::hub::NoObserver;
use pushbox::server;
use pushbox::transport::fallback::Options;

const P: &str = "protocol=7&client=js&version=8.6.0&t=1&n=1";

fn fast() -> Options {
    Options {
        heartbeat: Duration::from_millis(300),
        poll_hold: Duration::from_millis(300),
        session_timeout: Duration::from_millis(600),
        stream_limit: 256 * 1024,
        rollover_grace: Duration::from_secs(10),
        first_poll_timeout: Duration::from_secs(10),
        max_sessions: 10_000,
        prelude: true,
    }
}

/// A test server whose fallback sessions run with `opts` (made with the server, at start-up).
async fn server(configure: impl FnOnce(&mut pushbox::config::Config), opts: Options) -> TestServer {
    let cfg = config(configure);
    let listener = server::bind(&cfg).await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().unwrap();
    let (state, handle) = server::State::with_fallback(cfg, Arc::new(NoObserver), None, opts);
    tokio::spawn(server::serve(state.clone(), listener));
    TestServer {
        addr,
        handle,
        state,
    }
}

fn url(key: &str, session: &str, endpoint: &str) -> String {
    let q = if endpoint == "xhr_send" { "t=1&n=2" } else { P };
    format!("/pusher/app/{key}/7/{session}/{endpoint}?{q}")
}

/// An HTTP response read incrementally (chunked or Content-Length), line by line.
struct Resp {
    r: BufReader<TcpStream>,
    status: u16,
    headers: Vec<(String, String)>,
    chunked: bool,
    remaining: Option<usize>,
    buf: Vec<u8>,
    done: bool,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Reads more body bytes into `buf`; false at the end of the body.
    async fn fill(&mut self) -> bool {
        if self.done {
            return false;
        }
        if self.chunked {
            let mut line = String::new();
            if self.r.read_line(&mut line).await.unwrap_or(0) == 0 {
                self.done = true;
                return false;
            }
            let size = usize::from_str_radix(line.trim(), 16).expect("chunk size");
            if size == 0 {
                self.done = true;
                return false;
            }
            let mut data = vec![0; size + 2];
            if self.r.read_exact(&mut data).await.is_err() {
                self.done = true;
                return false;
            }
            data.truncate(size);
            self.buf.extend_from_slice(&data);
            true
        } else {
            let want = self.remaining.unwrap_or(usize::MAX).min(64 * 1024);
            if want == 0 {
                self.done = true;
                return false;
            }
            let mut data = vec![0; want];
            let n = self.r.read(&mut data).await.unwrap_or(0);
            if n == 0 {
                self.done = true;
                return false;
            }
            self.buf.extend_from_slice(&data[..n]);
            if let Some(r) = &mut self.remaining {
                *r -= n;
            }
            true
        }
    }

    /// The next body line (without `\n`), `None` at the end of the body. Panics after `ms`.
    async fn line_within(&mut self, ms: u64) -> Option<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(String::from_utf8(line[..i].to_vec()).expect("utf-8 line"));
            }
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Ok(true) => {}
                Ok(false) => return None,
                Err(_) => panic!(
                    "no line within {ms} ms (buffered: {:?})",
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
    }

    async fn line(&mut self) -> Option<String> {
        self.line_within(5000).await
    }

    /// The next line that is not a heartbeat.
    async fn data_line(&mut self) -> Option<String> {
        loop {
            let l = self.line().await?;
            if !l.starts_with('h') {
                return Some(l);
            }
        }
    }

    /// The frames of the next `a[...]` line, parsed.
    async fn frames(&mut self) -> Vec<Value> {
        let l = self.data_line().await.expect("an a[...] line");
        parse_a(&l)
    }

    /// The next frame with this event, skipping others.
    async fn event(&mut self, event: &str) -> Value {
        for _ in 0..100 {
            for f in self.frames().await {
                if f["event"] == event {
                    return f;
                }
            }
        }
        panic!("no {event}");
    }

    /// Everything left in the body.
    async fn rest(&mut self) -> String {
        while tokio::time::timeout(Duration::from_secs(5), self.fill())
            .await
            .expect("body did not end")
        {}
        String::from_utf8(std::mem::take(&mut self.buf)).unwrap()
    }

    /// True when the body ends within `ms` (no more lines).
    async fn ends_within(&mut self, ms: u64) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Ok(true) => continue,
                Ok(false) => return true,
                Err(_) => return false,
            }
        }
    }
}

fn parse_a(line: &str) -> Vec<Value> {
    assert!(line.starts_with("a["), "expected a[...], got {line:?}");
    let strings: Vec<String> = serde_json::from_str(&line[1..]).expect("array of strings");
    strings
        .iter()
        .map(|s| serde_json::from_str(s).expect("each string is a JSON frame"))
        .collect()
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut r = BufReader::new(s);
    let mut status_line = String::new();
    tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut status_line))
        .await
        .expect("response head within 5 s")
        .unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).await.unwrap();
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let mut resp = Resp {
        r,
        status,
        headers,
        chunked: false,
        remaining: None,
        buf: Vec::new(),
        done: false,
    };
    resp.chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    resp.remaining = resp.header("content-length").and_then(|v| v.parse().ok());
    if method == "OPTIONS" || status == 204 {
        resp.remaining = Some(0);
    }
    resp
}

async fn post(addr: SocketAddr, path: &str, body: &[u8]) -> Resp {
    request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body,
    )
    .await
}

/// Posts frames to xhr_send; returns the status.
async fn send(addr: SocketAddr, session: &str, frames: &[Value]) -> u16 {
    let body: Vec<String> = frames.iter().map(|f| f.to_string()).collect();
    let body = serde_json::to_vec(&body).unwrap();
    post(addr, &url(KEY, session, "xhr_send"), &body)
        .await
        .status
}

fn subscribe(channel: &str, auth: &str) -> Value {
    json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth}})
}

/// Opens a streaming session and reads up to the handshake; returns it and the socket id.
async fn open_stream(addr: SocketAddr, session: &str) -> (Resp, String) {
    let mut r = post(addr, &url(KEY, session, "xhr_streaming"), b"").await;
    assert_eq!(r.status, 200);
    let prelude = r.line().await.unwrap();
    assert!(prelude.len() == 2048 && prelude.bytes().all(|b| b == b'h'));
    assert_eq!(r.line().await.as_deref(), Some("o"));
    let f = r.frames().await;
    assert_eq!(f[0]["event"], "pusher:connection_established");
    let data: Value = serde_json::from_str(f[0]["data"].as_str().unwrap()).unwrap();
    (r, data["socket_id"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn streaming_opens_once_then_carries_frames_both_ways() {
    let s = server(
        |_| {},
        Options {
            heartbeat: Duration::from_secs(30),
            ..fast()
        },
    )
    .await;
    let (mut r, socket_id) = open_stream(s.addr, "stream01").await;
    assert_eq!(
        r.header("content-type"),
        Some("application/javascript; charset=UTF-8")
    );
    assert_eq!(
        r.header("cache-control"),
        Some("no-store, no-cache, must-revalidate, max-age=0")
    );
    assert_eq!(r.header("x-accel-buffering"), Some("no"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r.chunked, "streaming responses are chunked");

    assert_eq!(
        send(s.addr, "stream01", &[subscribe("orders", "")]).await,
        204
    );
    let f = r.frames().await;
    assert_eq!(f[0]["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(f[0]["data"], "{}");

    // Private channel with a real signature, an event from the HTTP API, and a non-ASCII payload.
    let auth = private_auth(&socket_id, "private-orders.1");
    assert_eq!(
        send(s.addr, "stream01", &[subscribe("private-orders.1", &auth)]).await,
        204
    );
    r.event("pusher_internal:subscription_succeeded").await;
    let (st, _) = trigger(
        s.addr,
        "private-orders.1",
        "App\\Events\\Shipped",
        "{\"x\":\"é😀\"}",
    )
    .await;
    assert_eq!(st, 200);
    let e = r.event("App\\Events\\Shipped").await;
    assert_eq!(e["channel"], "private-orders.1");
    assert_eq!(e["data"], "{\"x\":\"é😀\"}");

    // pusher:ping over xhr_send gets a pong; `[]` is a heartbeat and gets nothing.
    assert_eq!(send(s.addr, "stream01", &[]).await, 204);
    assert_eq!(
        send(
            s.addr,
            "stream01",
            &[json!({"event":"pusher:ping","data":{}})]
        )
        .await,
        204
    );
    assert_eq!(r.frames().await[0]["event"], "pusher:pong");

    // Client events reach a WebSocket subscriber of the same channel, and back.
    let mut ws = Client::connect(s.addr).await;
    assert_eq!(
        ws.subscribe_private("private-orders.1").await["event"],
        "pusher_internal:subscription_succeeded"
    );
    assert_eq!(
        send(
            s.addr,
            "stream01",
            &[json!({"event":"client-typing","channel":"private-orders.1","data":{"who":"http"}})]
        )
        .await,
        204
    );
    let got = ws.recv_event("client-typing").await;
    assert_eq!(got["data"], "{\"who\":\"http\"}");
    ws.send(json!({"event":"client-typing","channel":"private-orders.1","data":{"who":"ws"}}))
        .await;
    assert_eq!(r.event("client-typing").await["data"], "{\"who\":\"ws\"}");
}

#[tokio::test]
async fn streaming_heartbeats_when_idle() {
    let s = server(|_| {}, fast()).await;
    let (mut r, _) = open_stream(s.addr, "beat0001").await;
    let t = Instant::now();
    assert_eq!(r.line().await.as_deref(), Some("h"));
    assert_eq!(r.line().await.as_deref(), Some("h"));
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn polling_sends_o_once_holds_then_heartbeats() {
    let s = server(|_| {}, fast()).await;
    let mut r = post(s.addr, &url(KEY, "poll0001", "xhr"), b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/javascript; charset=UTF-8")
    );
    let body = r.rest().await;
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines[0], "o", "{body}");
    assert_eq!(
        parse_a(lines[1])[0]["event"],
        "pusher:connection_established"
    );
    assert_eq!(lines.len(), 2, "{body}");

    // Nothing queued: the poll is held, then answered with h.
    let t = Instant::now();
    let mut r = post(s.addr, &url(KEY, "poll0001", "xhr"), b"").await;
    assert_eq!(r.rest().await, "h\n");
    assert!(t.elapsed() >= Duration::from_millis(250));

    // A held poll is answered as soon as a frame is queued; never another `o`.
    let poll = tokio::spawn({
        let addr = s.addr;
        async move {
            post(addr, &url(KEY, "poll0001", "xhr"), b"")
                .await
                .rest()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        send(s.addr, "poll0001", &[subscribe("news", "")]).await,
        204
    );
    let body = poll.await.unwrap();
    let first = body.lines().next().unwrap();
    assert_eq!(
        parse_a(first)[0]["event"],
        "pusher_internal:subscription_succeeded"
    );

    // Frames queued between polls wait for the next poll, in order.
    for i in 0..3 {
        trigger(s.addr, "news", "n", &i.to_string()).await;
    }
    let body = post(s.addr, &url(KEY, "poll0001", "xhr"), b"")
        .await
        .rest()
        .await;
    let got: Vec<Value> = body
        .lines()
        .filter(|l| l.starts_with('a'))
        .flat_map(parse_a)
        .map(|f| f["data"].clone())
        .collect();
    assert_eq!(got, [json!("0"), json!("1"), json!("2")]);
}

#[tokio::test]
async fn expiry_destroys_the_session_like_a_websocket_close() {
    let s = server(|_| {}, fast()).await;
    let mut ws = Client::connect(s.addr).await;
    ws.subscribe_presence("presence-room", "{\"user_id\":\"ws\"}")
        .await;
    let body = post(s.addr, &url(KEY, "expire01", "xhr"), b"")
        .await
        .rest()
        .await;
    let est = parse_a(body.lines().nth(1).unwrap());
    let data: Value = serde_json::from_str(est[0]["data"].as_str().unwrap()).unwrap();
    let socket_id = data["socket_id"].as_str().unwrap();
    let cd = "{\"user_id\":\"http\"}";
    let sig =
        pushbox::protocol::auth::sign(SECRET, format!("{socket_id}:presence-room:{cd}").as_bytes());
    let sub = json!({"event":"pusher:subscribe","data":{"channel":"presence-room","auth":format!("{KEY}:{sig}"),"channel_data":cd}});
    assert_eq!(send(s.addr, "expire01", &[sub]).await, 204);
    let added = ws.recv_event("pusher_internal:member_added").await;
    assert!(added["data"].as_str().unwrap().contains("http"));

    // Keep it alive with sends alone (no receive attached) past the timeout.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(send(s.addr, "expire01", &[]).await, 204);
    }
    // Then stop: the member leaves within the timeout plus a little.
    let t = Instant::now();
    let removed = ws.recv_event("pusher_internal:member_removed").await;
    assert!(removed["data"].as_str().unwrap().contains("http"));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(send(s.addr, "expire01", &[]).await, 404);
    // The same ids on a receive URL now open a new session (with `o`).
    let body = post(s.addr, &url(KEY, "expire01", "xhr"), b"")
        .await
        .rest()
        .await;
    assert!(body.starts_with("o\n"), "{body}");
}

#[tokio::test]
async fn streaming_client_gone_then_session_expires() {
    let s = server(
        |_| {},
        Options {
            heartbeat: Duration::from_secs(30),
            ..fast()
        },
    )
    .await;
    let mut ws = Client::connect(s.addr).await;
    ws.subscribe_presence("presence-s", "{\"user_id\":\"ws\"}")
        .await;
    let (r, socket_id) = open_stream(s.addr, "gone0001").await;
    let cd = "{\"user_id\":\"http\"}";
    let sig =
        pushbox::protocol::auth::sign(SECRET, format!("{socket_id}:presence-s:{cd}").as_bytes());
    let sub = json!({"event":"pusher:subscribe","data":{"channel":"presence-s","auth":format!("{KEY}:{sig}"),"channel_data":cd}});
    assert_eq!(send(s.addr, "gone0001", &[sub]).await, 204);
    ws.recv_event("pusher_internal:member_added").await;
    // The client aborts its request (no heartbeat is due): the server notices the closed
    // connection, detaches, and expires the session.
    drop(r);
    let t = Instant::now();
    ws.recv_event("pusher_internal:member_removed").await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[tokio::test]
async fn stream_rollover_resumes_the_same_session_without_loss() {
    let s = server(
        |_| {},
        Options {
            heartbeat: Duration::from_secs(30),
            stream_limit: 4096,
            prelude: false,
            ..fast()
        },
    )
    .await;
    let mut r = post(s.addr, &url(KEY, "roll0001", "xhr_streaming"), b"").await;
    assert_eq!(r.line().await.as_deref(), Some("o"));
    let mut total = 2 + r.line().await.unwrap().len() + 1;
    assert_eq!(
        send(s.addr, "roll0001", &[subscribe("bulk", "")]).await,
        204
    );
    total += r.line().await.unwrap().len() + 1;
    let payload = "x".repeat(500);
    let n = 30;
    for i in 0..n {
        trigger(s.addr, "bulk", "e", &format!("{i}:{payload}")).await;
    }
    // Read like pusher-js: once more than the limit has been read and nothing is left, the
    // server has stopped writing to this response.
    let mut got = Vec::new();
    while total <= 4096 {
        let l = r.line().await.unwrap();
        total += l.len() + 1;
        for f in parse_a(&l) {
            got.push(
                f["data"]
                    .as_str()
                    .unwrap()
                    .split(':')
                    .next()
                    .unwrap()
                    .to_owned(),
            );
        }
    }
    assert!(
        got.len() < n,
        "the limit stops the stream early ({} events)",
        got.len()
    );
    assert!(
        !r.ends_within(300).await,
        "the old response stays open, silent"
    );
    assert!(r.buf.is_empty(), "nothing written past the limit");
    // The client's rollover: abort and open a new stream for the SAME session: no `o`.
    drop(r);
    let mut r2 = post(s.addr, &url(KEY, "roll0001", "xhr_streaming"), b"").await;
    while got.len() < n {
        let l = r2.line().await.unwrap();
        assert_ne!(l, "o", "a resumed stream must not reopen the session");
        for f in parse_a(&l) {
            got.push(
                f["data"]
                    .as_str()
                    .unwrap()
                    .split(':')
                    .next()
                    .unwrap()
                    .to_owned(),
            );
        }
    }
    let want: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    assert_eq!(got, want, "every event exactly once, in order");
}

#[tokio::test]
async fn real_256k_rollover_counts_the_prelude_and_stops_on_a_line_boundary() {
    let s = server(
        |_| {},
        Options {
            heartbeat: Duration::from_secs(30),
            ..fast()
        },
    )
    .await;
    let (mut r, _) = open_stream(s.addr, "roll0002").await;
    assert_eq!(send(s.addr, "roll0002", &[subscribe("big", "")]).await, 204);
    r.frames().await;
    let payload = "y".repeat(9000);
    for i in 0..40 {
        trigger(s.addr, "big", "e", &format!("{i}:{payload}")).await;
    }
    let mut received = 0;
    while let Ok(Some(l)) = tokio::time::timeout(Duration::from_millis(500), r.line()).await {
        received += l.len();
    }
    assert!(r.buf.is_empty());
    // 2049 prelude + ... : over 256 KiB in total but well under 40 * 9 KB.
    assert!(received > 250 * 1024 && received < 300 * 1024, "{received}");
    drop(r);
    let mut r2 = post(s.addr, &url(KEY, "roll0002", "xhr_streaming"), b"").await;
    assert!(
        r2.line().await.unwrap().starts_with("hhhh"),
        "prelude again"
    );
    let next = r2.line().await.unwrap();
    assert!(next.starts_with("a["), "{}", &next[..10]);
}

#[tokio::test]
async fn a_second_receive_request_detaches_the_first_silently() {
    let s = server(
        |_| {},
        Options {
            heartbeat: Duration::from_secs(30),
            ..fast()
        },
    )
    .await;
    let (mut a, _) = open_stream(s.addr, "dup00001").await;
    let mut b = post(s.addr, &url(KEY, "dup00001", "xhr_streaming"), b"").await;
    assert!(b.line().await.unwrap().starts_with("hhh"));
    // The first ends without a close line.
    assert_eq!(a.rest().await, "");
    assert_eq!(send(s.addr, "dup00001", &[subscribe("c", "")]).await, 204);
    let l = b.data_line().await.unwrap();
    assert_ne!(l, "o");
    assert_eq!(
        parse_a(&l)[0]["event"],
        "pusher_internal:subscription_succeeded"
    );
}

async fn refusal(addr: SocketAddr, path: &str, origin: Option<&str>) -> (u16, String) {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(o) = origin {
        headers.push(("Origin", o));
    }
    let mut r = request(addr, "POST", path, &headers, b"").await;
    let status = r.status;
    let body = r.rest().await;
    (status, body)
}

fn check_refusal(status: u16, body: &str, code: u16) {
    assert_eq!(status, 200, "refusals are still 200: {body}");
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 3, "{body}");
    assert_eq!(lines[0], "o");
    let err = &parse_a(lines[1])[0];
    assert_eq!(err["event"], "pusher:error");
    assert_eq!(err["data"]["code"], code);
    let c: Value = serde_json::from_str(&lines[2][1..]).unwrap();
    assert_eq!(c[0], code, "{body}");
    assert!(c[1].is_string());
}

#[tokio::test]
async fn refusals_are_o_error_close_with_status_200() {
    let s = server(
        |c| {
            let mut disabled = pushbox::config::AppConfig::with_defaults("2", "disabled-key", "s");
            disabled.enabled = false;
            let mut origin = pushbox::config::AppConfig::with_defaults("3", "origin-key", "s");
            origin.allowed_origins = vec!["https://shop.example".into()];
            let mut quota = pushbox::config::AppConfig::with_defaults("4", "quota-key", "s");
            quota.max_connections = 1;
            c.apps.extend([disabled, origin, quota]);
        },
        fast(),
    )
    .await;
    for (path, code) in [
        (url("nope", "ref00001", "xhr_streaming"), 4001),
        (url("disabled-key", "ref00002", "xhr"), 4003),
        (format!("/pusher/app/{KEY}/1/ref00003/xhr?protocol=4"), 4007),
        (
            format!("/pusher/app/{KEY}/1/ref00004/xhr_streaming?protocol=x"),
            4006,
        ),
    ] {
        let (st, body) = refusal(s.addr, &path, None).await;
        check_refusal(st, &body, code);
    }
    let (st, body) = refusal(
        s.addr,
        &url("origin-key", "ref00005", "xhr"),
        Some("https://evil.example"),
    )
    .await;
    check_refusal(st, &body, 4009);
    let (_, body) = refusal(
        s.addr,
        &url("origin-key", "ref00006", "xhr"),
        Some("https://shop.example"),
    )
    .await;
    assert!(body.starts_with("o\na["), "{body}");
    // App quota: the second session of a max_connections = 1 app.
    let (_, body) = refusal(s.addr, &url("quota-key", "ref00007", "xhr"), None).await;
    assert!(body.contains("connection_established"), "{body}");
    let (st, body) = refusal(s.addr, &url("quota-key", "ref00008", "xhr"), None).await;
    check_refusal(st, &body, 4004);
}

#[tokio::test]
async fn the_fallback_session_cap_refuses_with_4100() {
    let s = server(
        |_| {},
        Options {
            max_sessions: 2,
            ..fast()
        },
    )
    .await;
    for id in ["cap00001", "cap00002"] {
        let body = post(s.addr, &url(KEY, id, "xhr"), b"").await.rest().await;
        assert!(body.starts_with("o\n"));
    }
    let (st, body) = refusal(s.addr, &url(KEY, "cap00003", "xhr"), None).await;
    check_refusal(st, &body, 4100);
    // Existing sessions keep working.
    assert_eq!(send(s.addr, "cap00001", &[]).await, 204);
    // After they expire there is room again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let body = post(s.addr, &url(KEY, "cap00003", "xhr"), b"")
        .await
        .rest()
        .await;
    assert!(body.starts_with("o\n"), "{body}");
}

#[tokio::test]
async fn cors_on_every_response_and_preflight() {
    let s = server(|_| {}, fast()).await;
    let mut r = request(
        s.addr,
        "OPTIONS",
        &url(KEY, "cors0001", "xhr_send"),
        &[
            ("Origin", "http://shop.local:8000"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type,x-custom"),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://shop.local:8000")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("OPTIONS, POST")
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("content-type,x-custom")
    );
    assert!(r.header("access-control-max-age").is_some());
    assert_eq!(r.rest().await, "");
    // Without Access-Control-Request-Headers: Content-Type.
    let r = request(
        s.addr,
        "OPTIONS",
        &url(KEY, "cors0001", "xhr"),
        &[("Origin", "http://a")],
        b"",
    )
    .await;
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("Content-Type")
    );

    let o = [
        ("Origin", "http://shop.local:8000"),
        ("Content-Type", "application/json"),
    ];
    let mut r = request(s.addr, "POST", &url(KEY, "cors0001", "xhr"), &o, b"").await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://shop.local:8000")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    r.rest().await;
    let r = request(s.addr, "POST", &url(KEY, "cors0001", "xhr_send"), &o, b"[]").await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://shop.local:8000")
    );
    let r = request(s.addr, "POST", &url(KEY, "nosuch01", "xhr_send"), &o, b"[]").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://shop.local:8000")
    );
    // Refusals too, and no Origin → *.
    let mut r = post(s.addr, &url("nope", "cors0002", "xhr"), b"").await;
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r.header("access-control-allow-credentials").is_none());
    r.rest().await;
}

#[tokio::test]
async fn bad_requests_get_errors_and_the_server_keeps_serving() {
    let s = server(|c| c.server.max_request_bytes = 4096, fast()).await;
    let body = post(s.addr, &url(KEY, "bad00001", "xhr"), b"")
        .await
        .rest()
        .await;
    assert!(body.starts_with("o\n"));
    for bad in [
        &b"not json"[..],
        b"{\"event\":\"x\"}",
        b"[1,2]",
        b"",
        b"[\"a\"",
    ] {
        let mut r = post(s.addr, &url(KEY, "bad00001", "xhr_send"), bad).await;
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(bad));
        assert!(r.rest().await.contains("JSON array of strings"));
    }
    let big = serde_json::to_vec(&vec!["x".repeat(5000)]).unwrap();
    assert_eq!(
        post(s.addr, &url(KEY, "bad00001", "xhr_send"), &big)
            .await
            .status,
        413
    );
    assert_eq!(send(s.addr, "nosession", &[]).await, 404);
    // Unknown endpoint, wrong shape, wrong method.
    assert_eq!(
        post(
            s.addr,
            &format!("/pusher/app/{KEY}/1/bad00001/eventsource"),
            b""
        )
        .await
        .status,
        404
    );
    assert_eq!(
        post(s.addr, &format!("/pusher/app/{KEY}"), b"")
            .await
            .status,
        404
    );
    let r = request(s.addr, "GET", &url(KEY, "bad00001", "xhr"), &[], b"").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("OPTIONS, POST"));
    // A frame that is not a Pusher message: a pusher:error on the session, which stays open.
    assert_eq!(
        post(s.addr, &url(KEY, "bad00001", "xhr_send"), b"[\"{oops\"]")
            .await
            .status,
        204
    );
    let body = post(s.addr, &url(KEY, "bad00001", "xhr"), b"")
        .await
        .rest()
        .await;
    assert_eq!(
        parse_a(body.lines().next().unwrap())[0]["event"],
        "pusher:error"
    );
    assert_eq!(
        send(s.addr, "bad00001", &[subscribe("still", "")]).await,
        204
    );
    let body = post(s.addr, &url(KEY, "bad00001", "xhr"), b"")
        .await
        .rest()
        .await;
    assert_eq!(
        parse_a(body.lines().next().unwrap())[0]["event"],
        "pusher_internal:subscription_succeeded"
    );
    // The WebSocket side is unaffected.
    Client::connect(s.addr).await;
}

#[tokio::test]
async fn shutdown_sends_c4200() {
    let s = server(
        |_| {},
        Options {
            heartbeat: Duration::from_secs(30),
            ..fast()
        },
    )
    .await;
    let (mut r, _) = open_stream(s.addr, "shut0001").await;
    s.handle.shutdown();
    let f = r.frames().await;
    assert_eq!(f[0]["event"], "pusher:error");
    assert_eq!(f[0]["data"]["code"], 4200);
    let c = r.line().await.unwrap();
    assert!(c.starts_with("c[4200,"), "{c}");
}

#[tokio::test]
async fn a_session_that_stops_polling_is_closed_with_4100_not_grown() {
    let s = server(
        |c| c.server.outbound_queue = 8,
        Options {
            session_timeout: Duration::from_secs(30),
            ..fast()
        },
    )
    .await;
    post(s.addr, &url(KEY, "slow0001", "xhr"), b"")
        .await
        .rest()
        .await;
    assert_eq!(
        send(s.addr, "slow0001", &[subscribe("firehose", "")]).await,
        204
    );
    for i in 0..20 {
        trigger(s.addr, "firehose", "e", &i.to_string()).await;
    }
    // The session left its channel at once (the channel is vacated)...
    let (_, v) = api(s.addr, "GET", &format!("/apps/{APP_ID}/channels"), "", &[]).await;
    assert_eq!(v["channels"], json!({}), "{v}");
    // ...and the next poll gets the close.
    let body = post(s.addr, &url(KEY, "slow0001", "xhr"), b"")
        .await
        .rest()
        .await;
    let lines: Vec<&str> = body.lines().collect();
    assert!(lines.last().unwrap().starts_with("c[4100,"), "{body}");
    assert_eq!(send(s.addr, "slow0001", &[]).await, 404);
}

#[tokio::test]
async fn a_stalled_stream_is_closed_with_4100_and_its_next_requests_learn_it() {
    // The case, scaled down: a stream that stopped being read reaches the rollover
    // point, then its outbox overflows.
    let s = server(
        |c| c.server.outbound_queue = 16,
        Options {
            stream_limit: 16 * 1024,
            rollover_grace: Duration::from_secs(60),
            session_timeout: Duration::from_secs(30),
            ..fast()
        },
    )
    .await;
    let (mut stalled, _) = open_stream(s.addr, "stall001").await;
    assert_eq!(
        send(s.addr, "stall001", &[subscribe("firehose", "")]).await,
        204
    );
    let kb = "x".repeat(1024);
    for _ in 0..60 {
        trigger(s.addr, "firehose", "e", &kb).await;
    }
    // The session left its channel at once, like a slow WebSocket.
    let (_, v) = api(s.addr, "GET", &format!("/apps/{APP_ID}/channels"), "", &[]).await;
    assert_eq!(v["channels"], json!({}), "{v}");
    // Its heartbeats are answered as for a closed session (not 204)...
    assert_eq!(send(s.addr, "stall001", &[]).await, 404);
    // ...the stalled stream was ended (not held until rollover_grace)...
    assert!(stalled.ends_within(3000).await, "the stalled stream ends");
    // ...and the receive request that resumes it gets the close.
    let body = post(s.addr, &url(KEY, "stall001", "xhr_streaming"), b"")
        .await
        .rest()
        .await;
    let last = body.lines().last().unwrap_or_default().to_owned();
    assert!(last.starts_with("c[4100,"), "{body}");
    let m = &s.state.metrics;
    assert_eq!(m.refusals(pushbox::metrics::Reason::SlowFallback), 1);
}

#[tokio::test]
async fn a_session_that_never_polls_again_frees_its_quota_soon() {
    let s = server(
        |c| c.apps[0].max_connections = 1,
        Options {
            session_timeout: Duration::from_secs(30),
            first_poll_timeout: Duration::from_millis(300),
            ..fast()
        },
    )
    .await;
    // Opened (`o`), then abandoned.
    post(s.addr, &url(KEY, "gone0001", "xhr"), b"")
        .await
        .rest()
        .await;
    let (status, body) = refusal(s.addr, &url(KEY, "real0001", "xhr"), None).await;
    check_refusal(status, &body, 4004);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Well before session_timeout (30 s) the quota is free again.
    let body = post(s.addr, &url(KEY, "real0001", "xhr"), b"")
        .await
        .rest()
        .await;
    assert!(body.starts_with("o\n"), "{body}");
}

#[tokio::test]
async fn one_address_holds_at_most_max_connections_per_ip_sessions() {
    let s = server(|c| c.server.max_connections_per_ip = 2, fast()).await;
    let (_a, _) = open_stream(s.addr, "addr0001").await;
    let (_b, _) = open_stream(s.addr, "addr0002").await;
    let (status, body) = refusal(s.addr, &url(KEY, "addr0003", "xhr_streaming"), None).await;
    check_refusal(status, &body, 4100);
    let m = &s.state.metrics;
    assert_eq!(m.refusals(pushbox::metrics::Reason::PerAddress), 1);
}

/// Resume over xhr polling: `httpPath: '/pusher/r/<token>'` puts the token before `/app/`.
fn token_url(token: &str, session: &str, endpoint: &str) -> String {
    let q = if endpoint == "xhr_send" { "t=1&n=2" } else { P };
    format!("/pusher/r/{token}/app/{KEY}/7/{session}/{endpoint}?{q}")
}

/// One poll's frames (empty for a heartbeat-only answer).
async fn poll(addr: SocketAddr, token: &str, session: &str) -> Vec<Value> {
    let body = post(addr, &token_url(token, session, "xhr"), b"")
        .await
        .rest()
        .await;
    body.lines()
        .filter(|l| l.starts_with("a["))
        .flat_map(parse_a)
        .collect()
}

async fn send_token(addr: SocketAddr, token: &str, session: &str, frames: &[Value]) -> u16 {
    let body: Vec<String> = frames.iter().map(|f| f.to_string()).collect();
    let body = serde_json::to_vec(&body).unwrap();
    post(addr, &token_url(token, session, "xhr_send"), &body)
        .await
        .status
}

#[tokio::test]
async fn a_polling_client_with_a_token_that_misses_polls_gets_what_it_missed() {
    const T: &str = "0123456789abcdef0123456789abcdef";
    let s = server(|_| {}, fast()).await;
    let first = poll(s.addr, T, "tok00001").await;
    assert_eq!(first[0]["event"], "pusher:connection_established");
    assert_eq!(
        send_token(s.addr, T, "tok00001", &[subscribe("orders", "")]).await,
        204
    );
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.extend(poll(s.addr, T, "tok00001").await);
        if seen
            .iter()
            .any(|f| f["event"] == "pusher_internal:subscription_succeeded")
        {
            break;
        }
    }
    assert!(trigger(s.addr, "orders", "e", "1").await.0 == 200);
    // Poll until 1 and the proof ping after it came, answer the ping (the client is up).
    let mut got_one = false;
    for _ in 0..10 {
        let frames = poll(s.addr, T, "tok00001").await;
        got_one |= frames.iter().any(|f| f["data"] == "1");
        if got_one && frames.iter().any(|f| f["event"] == "pusher:ping") {
            let pong = json!({"event":"pusher:pong","data":{}});
            assert_eq!(send_token(s.addr, T, "tok00001", &[pong]).await, 204);
            break;
        }
    }
    assert!(got_one, "the first event was polled");
    // The client stops polling: 2 and 3 wait in its session, which expires (600 ms).
    trigger(s.addr, "orders", "e", "2").await;
    trigger(s.addr, "orders", "e", "3").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(send_token(s.addr, T, "tok00001", &[]).await, 404, "expired");
    // pusher-js opens a new session with the same httpPath: the token resumes it.
    let first = poll(s.addr, T, "tok00002").await;
    assert_eq!(first[0]["event"], "pusher:connection_established");
    send_token(s.addr, T, "tok00002", &[subscribe("orders", "")]).await;
    let mut events = Vec::new();
    for _ in 0..5 {
        events.extend(poll(s.addr, T, "tok00002").await);
        if events.iter().filter(|f| f["event"] == "e").count() >= 2 {
            break;
        }
    }
    let names: Vec<&str> = events
        .iter()
        .filter(|f| !f["event"].as_str().unwrap().starts_with("pusher:"))
        .map(|f| f["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["pusher_internal:subscription_succeeded", "e", "e"],
        "{events:?}"
    );
    let data: Vec<&Value> = events
        .iter()
        .filter(|f| f["event"] == "e")
        .map(|f| &f["data"])
        .collect();
    assert_eq!(
        data,
        [&json!("2"), &json!("3")],
        "what it missed, once, in order"
    );
}
