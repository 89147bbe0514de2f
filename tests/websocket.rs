//! The Pusher protocol over real WebSocket connections on 127.0.0.1.

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn handshake_has_string_data_socket_id_and_activity_timeout() {
    let s = start(|c| c.server.activity_timeout = Duration::from_secs(120)).await;
    let mut ws = connect_raw(
        s.addr,
        &format!("/app/{KEY}?protocol=7&client=js&version=8.6.0&flash=false"),
    )
    .await;
    let f = next_json(&mut ws).await.unwrap();
    assert_eq!(f["event"], "pusher:connection_established");
    let data: Value =
        serde_json::from_str(f["data"].as_str().expect("data is a JSON string")).unwrap();
    let sid = data["socket_id"].as_str().expect("socket_id is a string");
    let (a, b) = sid.split_once('.').unwrap();
    assert!(a.bytes().all(|c| c.is_ascii_digit()) && b.bytes().all(|c| c.is_ascii_digit()));
    assert_eq!(data["activity_timeout"], 120);
}

async fn refused_with(s: &TestServer, path: &str) -> (Value, Option<u16>) {
    let mut ws = connect_raw(s.addr, path).await;
    let f = next_json(&mut ws).await.expect("error frame");
    let mut c = Client {
        ws,
        socket_id: String::new(),
    };
    (f, c.closed_with().await)
}

#[tokio::test]
async fn refusals_send_error_then_close_code() {
    let s = start(|c| {
        let mut disabled = pushbox::config::AppConfig::with_defaults("2", "disabled-key", "s");
        disabled.enabled = false;
        let mut origin = pushbox::config::AppConfig::with_defaults("3", "origin-key", "s");
        origin.allowed_origins = vec!["https://shop.example".into()];
        c.apps.push(disabled);
        c.apps.push(origin);
    })
    .await;
    for (path, code) in [
        ("/app/nope?protocol=7", 4001),
        ("/app/disabled-key?protocol=7", 4003),
        (&*format!("/app/{KEY}?protocol=4"), 4007),
        (&*format!("/app/{KEY}?protocol=x"), 4006),
        (&*format!("/app/{KEY}/extra"), 4005),
        ("/elsewhere", 4005),
    ] {
        let (f, close) = refused_with(&s, path).await;
        assert_eq!(f["event"], "pusher:error", "{path}");
        assert_eq!(f["data"]["code"], code, "{path}");
        assert_eq!(close, Some(code), "{path}");
    }
    // Origin check (a browser sends Origin; allowed_origins refuses others with 4009)
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/app/origin-key?protocol=7", s.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Origin", "https://evil.example".parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut c = Client {
        ws,
        socket_id: String::new(),
    };
    assert_eq!(c.recv().await["data"]["code"], 4009);
    let mut req = format!("ws://{}/app/origin-key?protocol=7", s.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Origin", "https://shop.example".parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut c = Client {
        ws,
        socket_id: String::new(),
    };
    assert_eq!(c.recv().await["event"], "pusher:connection_established");
}

#[tokio::test]
async fn connection_quota_4004_and_slot_freed_on_close() {
    let s = start(|c| c.apps[0].max_connections = 1).await;
    let a = Client::connect(s.addr).await;
    let (f, close) = refused_with(&s, &format!("/app/{KEY}?protocol=7")).await;
    assert_eq!(f["data"]["code"], 4004);
    assert_eq!(close, Some(4004));
    drop(a);
    // the slot comes back once the server sees the close
    let mut ok = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut ws = connect_raw(s.addr, &format!("/app/{KEY}?protocol=7")).await;
        if next_json(&mut ws).await.unwrap()["event"] == "pusher:connection_established" {
            ok = true;
            break;
        }
    }
    assert!(ok);
}

#[tokio::test]
async fn publish_reaches_subscribers_with_data_byte_identical() {
    let s = start(|_| {}).await;
    let mut a = Client::connect(s.addr).await;
    let mut b = Client::connect(s.addr).await;
    assert_eq!(
        a.subscribe("orders").await,
        json!({"event":"pusher_internal:subscription_succeeded","channel":"orders","data":"{}"})
    );
    b.subscribe("orders").await;
    let data = "{\"id\":1,\"s\":\"\\u00e9 </script> \\\"q\\\"\"}";
    let (st, v) = trigger(s.addr, "orders", "App\\Events\\OrderShipped", data).await;
    assert_eq!((st, v), (200, json!({})));
    for c in [&mut a, &mut b] {
        let f = c.recv().await;
        assert_eq!(f["event"], "App\\Events\\OrderShipped");
        assert_eq!(f["channel"], "orders");
        assert_eq!(f["data"], data);
    }
    // socket_id exclusion (Laravel's toOthers())
    let body =
        json!({"name":"e","channel":"orders","data":"x","socket_id":a.socket_id}).to_string();
    assert_eq!(
        api(
            s.addr,
            "POST",
            &format!("/apps/{APP_ID}/events"),
            &body,
            &[]
        )
        .await
        .0,
        200
    );
    assert_eq!(b.recv().await["event"], "e");
    a.expect_silence(200).await;
}

#[tokio::test]
async fn private_and_presence_over_the_wire() {
    let s = start(|_| {}).await;
    let mut a = Client::connect(s.addr).await;
    let mut b = Client::connect(s.addr).await;
    assert_eq!(
        a.subscribe_private("private-company.1").await["event"],
        "pusher_internal:subscription_succeeded"
    );
    let bad = b
        .subscribe_private_with("private-company.1", "test-key:0000")
        .await;
    assert_eq!(bad["event"], "pusher:subscription_error");
    assert_eq!(bad["channel"], "private-company.1");

    let r = a
        .subscribe_presence(
            "presence-room",
            r#"{"user_id":"1","user_info":{"name":"A"}}"#,
        )
        .await;
    let d: Value = serde_json::from_str(r["data"].as_str().unwrap()).unwrap();
    assert_eq!(d["presence"]["count"], 1);
    b.subscribe_presence("presence-room", r#"{"user_id":"2"}"#)
        .await;
    let added = a.recv().await;
    assert_eq!(added["event"], "pusher_internal:member_added");
    assert_eq!(
        serde_json::from_str::<Value>(added["data"].as_str().unwrap()).unwrap(),
        json!({"user_id":"2"})
    );
    // client event with user_id on presence, never echoed
    a.send(json!({"event":"client-typing","channel":"presence-room","data":{"t":true}}))
        .await;
    let f = b.recv().await;
    assert_eq!(
        f,
        json!({"event":"client-typing","channel":"presence-room","data":"{\"t\":true}","user_id":"1"})
    );
    a.expect_silence(150).await;
    // b disconnects: a sees member_removed
    drop(b);
    let removed = a.recv_event("pusher_internal:member_removed").await;
    assert_eq!(
        serde_json::from_str::<Value>(removed["data"].as_str().unwrap()).unwrap(),
        json!({"user_id":"2"})
    );
    let (_, v) = api(
        s.addr,
        "GET",
        &format!("/apps/{APP_ID}/channels/presence-room/users"),
        "",
        &[],
    )
    .await;
    assert_eq!(v, json!({"users":[{"id":"1"}]}));
}

impl Client {
    async fn subscribe_private_with(&mut self, channel: &str, auth: &str) -> Value {
        self.send(json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth}}))
            .await;
        self.recv().await
    }
}

#[tokio::test]
async fn malformed_frames_get_errors_and_the_server_keeps_serving() {
    let s = start(|c| c.apps[0].max_message_bytes = 1024).await;
    let mut a = Client::connect(s.addr).await;
    let mut other = Client::connect(s.addr).await;
    other.subscribe("orders").await;
    for bad in [
        "",
        "nonsense",
        "{\"event\":5}",
        "[1,2]",
        "{\"event\":\"pusher:subscribe\",\"data\":\"x\"}",
        "{\"event\":\"hello\"}",
    ] {
        a.send_text(bad).await;
        let f = a.recv().await;
        assert_eq!(f["event"], "pusher:error", "{bad:?}");
        assert!(f["data"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    a.ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(a.recv().await["event"], "pusher:error");
    // oversize (above the app limit, below the transport's hard cap): error, connection stays
    a.send_text(&format!(
        "{{\"event\":\"client-x\",\"channel\":\"private-a\",\"data\":\"{}\"}}",
        "x".repeat(2000)
    ))
    .await;
    assert!(a.recv().await["data"]["message"]
        .as_str()
        .unwrap()
        .contains("too large"));
    a.send(json!({"event":"pusher:ping","data":{}})).await;
    assert_eq!(a.recv().await["event"], "pusher:pong");
    // far above the hard cap: the connection is closed with 1009, others unaffected
    a.send_text(&"y".repeat(200 * 1024)).await;
    assert_eq!(a.closed_with().await, Some(1009));
    trigger(s.addr, "orders", "still", "up").await;
    assert_eq!(other.recv().await["event"], "still");
}

#[tokio::test]
async fn server_pings_idle_clients_and_closes_4201_without_pong() {
    let s = start(|c| {
        c.server.activity_timeout = Duration::from_secs(1);
        c.server.pong_timeout = Duration::from_secs(1);
    })
    .await;
    let mut a = Client::connect(s.addr).await;
    let ping = a.recv().await;
    assert_eq!(ping["event"], "pusher:ping");
    a.send(json!({"event":"pusher:pong","data":{}})).await;
    assert_eq!(
        a.recv().await["event"],
        "pusher:ping",
        "pinged again after the next idle period"
    );
    // no pong this time
    let f = a.recv().await;
    assert_eq!(f["data"]["code"], 4201);
    assert_eq!(a.closed_with().await, Some(4201));
}

#[tokio::test]
async fn control_frame_peers_are_pinged_with_control_frames() {
    let s = start(|c| {
        c.server.activity_timeout = Duration::from_secs(1);
        c.server.pong_timeout = Duration::from_secs(5);
    })
    .await;
    let mut a = Client::connect(s.addr).await;
    a.ws.send(Message::Ping(vec![1].into())).await.unwrap();
    use futures_util::StreamExt;
    let mut got_ping = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, a.ws.next()).await {
        match m {
            Message::Ping(_) => {
                got_ping = true;
                break;
            }
            Message::Text(t) => assert!(
                !t.contains("pusher:ping"),
                "a control-frame peer gets control pings"
            ),
            _ => {}
        }
    }
    assert!(got_ping);
}

#[tokio::test]
async fn rate_limit_sends_4301_frame_and_keeps_the_connection() {
    let s = start(|_| {}).await;
    let mut a = Client::connect(s.addr).await;
    a.subscribe_private("private-chat").await;
    for _ in 0..12 {
        a.send(json!({"event":"client-x","channel":"private-chat","data":{}}))
            .await;
    }
    let f = a.recv().await;
    assert_eq!(f["data"]["code"], 4301);
    a.send(json!({"event":"pusher:ping"})).await;
    assert_eq!(a.recv_event("pusher:pong").await["event"], "pusher:pong");
}

#[tokio::test]
async fn slow_consumer_is_dropped_with_4100_instead_of_queueing() {
    let s = start(|c| c.server.outbound_queue = 16).await;
    let mut slow = Client::connect(s.addr).await;
    slow.subscribe("firehose").await;
    let mut fast = Client::connect(s.addr).await;
    fast.subscribe("firehose").await;
    // Publish far more than the kernel's socket buffers and the queue can hold while `slow`
    // doesn't read (bounded: at most 4000 events of 8 KB, in batches of 10).
    let payload = "z".repeat(8000);
    let item = json!({"channel":"firehose","name":"e","data":payload});
    let body = json!({"batch": vec![item; 10]}).to_string();
    let app = s.state.hub.app_by_id(APP_ID).unwrap().clone();
    let mut closed = false;
    for _ in 0..400 {
        assert_eq!(batch(s.addr, &body).await, 200);
        for _ in 0..10 {
            fast.recv().await;
        }
        if app.channel("firehose").map(|c| c.subscription_count) == Some(1) {
            closed = true;
            break;
        }
    }
    for _ in 0..100 {
        if closed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        closed = app.channel("firehose").map(|c| c.subscription_count) == Some(1);
    }
    assert!(closed, "the slow client was dropped from the channel");
    // Reading now drains what the kernel buffered, then the 4100 close.
    // The close frame may not fit in a full socket: either the 4100 close or a dropped connection.
    let code = slow.closed_with().await;
    assert!(matches!(code, Some(4100) | None), "{code:?}");
}

#[tokio::test]
async fn signin_and_terminate_connections() {
    let s = start(|_| {}).await;
    let mut a = Client::connect(s.addr).await;
    let ud = r#"{"id":"u1"}"#;
    let sig =
        pushbox::protocol::auth::sign(SECRET, format!("{}::user::{ud}", a.socket_id).as_bytes());
    a.send(json!({"event":"pusher:signin","data":{"auth":format!("{KEY}:{sig}"),"user_data":ud}}))
        .await;
    assert_eq!(a.recv().await["event"], "pusher:signin_success");
    assert_eq!(
        a.subscribe("#server-to-user-u1").await["event"],
        "pusher_internal:subscription_succeeded"
    );
    // sendToUser: an event on #server-to-user-u1 via the HTTP API
    assert_eq!(
        trigger(s.addr, "#server-to-user-u1", "hello", "{}").await.0,
        200
    );
    assert_eq!(a.recv().await["event"], "hello");
    let (st, _) = api(
        s.addr,
        "POST",
        &format!("/apps/{APP_ID}/users/u1/terminate_connections"),
        "{}",
        &[],
    )
    .await;
    assert_eq!(st, 200);
    // A signed-in connection is resumable (zero-change resume): a proof ping may come first.
    assert_eq!(a.recv_event("pusher:error").await["data"]["code"], 4009);
    assert_eq!(a.closed_with().await, Some(4009));
}

#[tokio::test]
async fn graceful_shutdown_tells_clients_to_reconnect() {
    let s = start(|_| {}).await;
    let mut a = Client::connect(s.addr).await;
    s.handle.shutdown();
    assert_eq!(a.recv().await["data"]["code"], 4200);
    assert_eq!(a.closed_with().await, Some(4200));
}

/// The shutdown waits for each open connection's task to end (its completion guard), and
/// nothing else: an idle keep-alive HTTP connection does not hold it up.
#[tokio::test]
async fn shutdown_waits_for_connections_not_for_idle_http() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let TestServer {
        addr, mut handle, ..
    } = start(|_| {}).await;
    let mut a = Client::connect(addr).await;
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /up HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(idle.read(&mut buf).await.unwrap() > 0);
    // Not told to stop: the open WebSocket keeps the wait waiting.
    let soon = tokio::time::Instant::now() + Duration::from_millis(300);
    assert!(
        !handle.wait(soon).await,
        "the open WebSocket was not waited for"
    );
    handle.shutdown();
    assert_eq!(a.recv().await["data"]["code"], 4200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    assert!(
        handle.wait(deadline).await,
        "connections still open at the deadline"
    );
    assert_eq!(a.closed_with().await, Some(4200));
    drop(idle);
}

#[tokio::test]
async fn coalescing_window_delivers_everything_in_order() {
    let s = start(|c| c.server.coalesce = Duration::from_millis(5)).await;
    let mut a = Client::connect(s.addr).await;
    a.subscribe("orders").await;
    let items: Vec<Value> = (0..10)
        .map(|i| json!({"channel":"orders","name":"e","data":format!("{i}")}))
        .collect();
    let body = json!({ "batch": items }).to_string();
    assert_eq!(batch(s.addr, &body).await, 200);
    for i in 0..10 {
        assert_eq!(a.recv().await["data"], format!("{i}"));
    }
}

#[tokio::test]
async fn one_address_holds_at_most_max_connections_per_ip() {
    let s = start(|c| c.server.max_connections_per_ip = 2).await;
    let _a = Client::connect(s.addr).await;
    let _b = Client::connect(s.addr).await;
    // The third from 127.0.0.1: pusher:error 4100 (pusher-js backs off and retries), closed.
    let mut third = connect_raw(s.addr, &format!("/app/{KEY}?protocol=7")).await;
    let err = next_json(&mut third).await.expect("a pusher:error");
    assert_eq!(err["event"], "pusher:error", "{err}");
    assert_eq!(err["data"]["code"], 4100, "{err}");
    // Another address on the LAN is not affected.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(([127, 0, 0, 2], 0).into()).unwrap();
    let tcp = tokio_tungstenite::MaybeTlsStream::Plain(sock.connect(s.addr).await.unwrap());
    let url = format!("ws://{}/app/{KEY}?protocol=7", s.addr);
    let (mut other, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    let first = next_json(&mut other).await.expect("handshake frame");
    assert_eq!(first["event"], "pusher:connection_established", "{first}");
    // A closed connection gives its slot back.
    drop(_a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _c = Client::connect(s.addr).await;
    let m = &s.state.metrics;
    assert_eq!(m.refusals(pushbox::metrics::Reason::PerAddress), 1);
}
