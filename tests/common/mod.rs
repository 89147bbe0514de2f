//! Shared helpers for the integration tests (`mod common;` in each `tests/*.rs`): an
//! in-process server on 127.0.0.1 with a real listener, a WebSocket test client, a signed raw
//! HTTP/1.1 client, and ([`process`]) the real binary as a child process; [`cluster`] (a test
//! Redis and nodes on it), [`webhook`] (a webhook receiver), [`console`] (the console's sign-in
//! over raw HTTP), [`pki`] (a private CA) and [`resume`] (delivery proof and event collection for
//! the resume tests) for the files that need them.
// Each test file is its own crate and uses only some of these.
#![allow(dead_code)]

pub mod cluster;
pub mod console;
pub mod pki;
pub mod process;
pub mod resume;
pub mod webhook;

#[allow(unused_imports)]
pub use process::{config_toml, free_port, http_blocking, pushbox, serve_in, Ready, Served, BIN};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use pushbox::config::{AppConfig, Config, ServerConfig};
use pushbox::hub::{HubObserver, NoObserver};
use pushbox::server::{self, ShutdownHandle};

pub const KEY: &str = "test-key";
pub const SECRET: &str = "test-secret";
pub const APP_ID: &str = "42";

pub struct TestServer {
    pub addr: SocketAddr,
    pub handle: ShutdownHandle,
    pub state: Arc<server::State>,
}

pub fn config(configure: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config {
        state_dir: std::env::temp_dir(),
        user: None,
        tls: None,
        spool: Default::default(),
        webhooks: Default::default(),
        console: None,
        metrics: Default::default(),
        cluster: Default::default(),
        resume: Default::default(),
        server: ServerConfig {
            host: "127.0.0.1".into(),
            port: 0,
            ..ServerConfig::default()
        },
        apps: vec![AppConfig::with_defaults(APP_ID, KEY, SECRET)],
        source: "test".into(),
    };
    configure(&mut c);
    c
}

pub async fn start(configure: impl FnOnce(&mut Config)) -> TestServer {
    start_with(config(configure), Arc::new(NoObserver)).await
}

pub async fn start_with(cfg: Config, observer: Arc<dyn HubObserver>) -> TestServer {
    let listener = server::bind(&cfg).await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().unwrap();
    let (state, handle) = server::State::new(cfg, observer, None);
    tokio::spawn(server::serve(state.clone(), listener));
    TestServer {
        addr,
        handle,
        state,
    }
}

pub type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

pub struct Client {
    pub ws: WsStream,
    pub socket_id: String,
}

pub async fn connect_raw(addr: SocketAddr, path: &str) -> WsStream {
    let url = format!("ws://{addr}{path}");
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .expect("connect timeout")
    .expect("connect");
    ws
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Self::connect_key(addr, KEY).await
    }

    pub async fn connect_key(addr: SocketAddr, key: &str) -> Client {
        Self::connect_path(
            addr,
            &format!("/app/{key}?protocol=7&client=js&version=8.6.0&flash=false"),
        )
        .await
    }

    /// A client on `/r/{token}/app/{key}`, as pusher-js connects with `wsPath: '/r/<token>'`
    /// (README "Resume").
    pub async fn connect_token(addr: SocketAddr, token: &str) -> Client {
        Self::connect_path(
            addr,
            &format!("/r/{token}/app/{KEY}?protocol=7&client=js&version=8.6.0&flash=false"),
        )
        .await
    }

    /// A client on `path`, once `pusher:connection_established` came.
    pub async fn connect_path(addr: SocketAddr, path: &str) -> Client {
        let mut ws = connect_raw(addr, path).await;
        let first = next_json(&mut ws).await.expect("handshake frame");
        assert_eq!(first["event"], "pusher:connection_established", "{first}");
        let data: Value =
            serde_json::from_str(first["data"].as_str().expect("string data")).unwrap();
        let socket_id = data["socket_id"].as_str().unwrap().to_owned();
        Client { ws, socket_id }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn send_text(&mut self, t: &str) {
        self.ws
            .send(Message::Text(t.to_owned().into()))
            .await
            .expect("send");
    }

    /// The next text frame as JSON (panics after 5 s).
    pub async fn recv(&mut self) -> Value {
        next_json(&mut self.ws).await.expect("a frame")
    }

    /// The next frame whose event is `event`, skipping others.
    pub async fn recv_event(&mut self, event: &str) -> Value {
        for _ in 0..50 {
            let v = self.recv().await;
            if v["event"] == event {
                return v;
            }
        }
        panic!("no {event} within 50 frames");
    }

    /// Asserts nothing arrives within `ms`.
    pub async fn expect_silence(&mut self, ms: u64) {
        if let Ok(Some(Ok(m))) =
            tokio::time::timeout(Duration::from_millis(ms), self.ws.next()).await
        {
            panic!("expected silence, got {m:?}");
        }
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        self.send(
            serde_json::json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":""}}),
        )
        .await;
        self.recv().await
    }

    pub async fn subscribe_private(&mut self, channel: &str) -> Value {
        let auth = private_auth(&self.socket_id, channel);
        self.send(
            serde_json::json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth}}),
        )
        .await;
        self.recv().await
    }

    pub async fn subscribe_presence(&mut self, channel: &str, channel_data: &str) -> Value {
        let sig = pushbox::protocol::auth::sign(
            SECRET,
            format!("{}:{channel}:{channel_data}", self.socket_id).as_bytes(),
        );
        self.send(serde_json::json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":format!("{KEY}:{sig}"),"channel_data":channel_data}})).await;
        self.recv().await
    }

    /// Waits for the close frame and returns its code.
    pub async fn closed_with(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Close(f)))) => return f.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_))) | Ok(None) => return None,
                Err(_) => panic!("connection not closed within 10 s"),
            }
        }
    }
}

/// A WebSocket subscriber for tests that run blocking code against a real `pushbox serve`: it
/// owns a small runtime, subscribes to one channel and collects the `data` of every event on
/// it in the background (so a test can publish hundreds of events without reading).
pub struct Subscriber {
    rt: tokio::runtime::Runtime,
    rx: std::sync::mpsc::Receiver<String>,
}

impl Subscriber {
    pub fn start(addr: SocketAddr, channel: &str) -> Subscriber {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let mut client = rt.block_on(Client::connect(addr));
        let ack = rt.block_on(client.subscribe(channel));
        assert_eq!(
            ack["event"], "pusher_internal:subscription_succeeded",
            "{ack}"
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let channel = channel.to_owned();
        rt.spawn(async move {
            while let Some(Ok(m)) = client.ws.next().await {
                let Message::Text(t) = m else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&t) else {
                    continue;
                };
                if v["channel"] == channel.as_str() {
                    let data = v["data"].as_str().unwrap_or_default().to_owned();
                    if tx.send(data).is_err() {
                        return;
                    }
                }
            }
        });
        Subscriber { rt, rx }
    }

    /// The `data` of the events received since the last call, after waiting `settle` for
    /// what may still be on its way.
    pub fn received(&self, settle: Duration) -> Vec<String> {
        self.rt.block_on(async { tokio::time::sleep(settle).await });
        self.rx.try_iter().collect()
    }
}

pub fn private_auth(socket_id: &str, channel: &str) -> String {
    format!(
        "{KEY}:{}",
        pushbox::protocol::auth::sign(SECRET, format!("{socket_id}:{channel}").as_bytes())
    )
}

pub async fn next_json(ws: &mut WsStream) -> Option<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                return Some(serde_json::from_str(&t).expect("server frames are JSON"))
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(_))) => continue,
            Err(_) => panic!("no frame within 5 s"),
        }
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A raw HTTP/1.1 request; returns (status, body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!("{method} {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("http timeout")
        .expect("read");
    status_and_body(&String::from_utf8_lossy(&out))
}

/// The status code and the body of a raw HTTP/1.1 response (status 0 if there is none).
pub fn status_and_body(response: &str) -> (u16, String) {
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `path?query`, the query signed for `method` and `body` as an SDK signs it (the test app's key
/// and secret, the time now), with the `extra` parameters.
pub fn signed(method: &str, path: &str, body: &str, extra: &[(&str, &str)]) -> String {
    let q = pushbox::protocol::signing::sign_query(
        method,
        path,
        KEY,
        SECRET,
        now(),
        body.as_bytes(),
        extra,
    );
    format!("{path}?{q}")
}

/// A signed API call, like an SDK makes it.
pub async fn api(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let signed = signed(method, path, body, extra);
    let (status, text) = http(addr, method, &signed, body.as_bytes()).await;
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (status, v)
}

pub async fn trigger(addr: SocketAddr, channel: &str, name: &str, data: &str) -> (u16, Value) {
    let body = serde_json::json!({"name": name, "channels": [channel], "data": data}).to_string();
    api(addr, "POST", &format!("/apps/{APP_ID}/events"), &body, &[]).await
}

/// A signed `POST /apps/{id}/batch_events` with `body`; returns the status.
pub async fn batch(addr: SocketAddr, body: &str) -> u16 {
    api(
        addr,
        "POST",
        &format!("/apps/{APP_ID}/batch_events"),
        body,
        &[],
    )
    .await
    .0
}
