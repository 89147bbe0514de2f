//! Session tests: auth checks on every channel kind, client-event rules, signin, liveness.

use super::*;
use crate::config::AppConfig;
use crate::hub::NoObserver;
use crate::protocol::auth::sign;
use serde_json::Value;

const KEY: &str = "278d425bdf160c739803";
const SECRET: &str = "7ad3773142a6692b25b8";

fn app(configure: impl FnOnce(&mut AppConfig)) -> Arc<App> {
    let mut c = AppConfig::with_defaults("1", KEY, SECRET);
    configure(&mut c);
    Arc::new(App::new(c, Arc::new(NoObserver)))
}

fn session(app: &Arc<App>, n: u64) -> Session {
    assert!(app.try_connect());
    let outbox = Arc::new(Outbox::new(
        n,
        SocketId::parse(&format!("{n}.{n}")).unwrap(),
        64,
    ));
    let live = Liveness {
        activity_timeout: Duration::from_secs(30),
        pong_timeout: Duration::from_secs(30),
    };
    let s = Session::open(app.clone(), outbox, live);
    let f = frames(&s);
    assert_eq!(f[0]["event"], "pusher:connection_established");
    s
}

fn frames(s: &Session) -> Vec<Value> {
    let mut out = Vec::new();
    s.outbox().drain(&mut out);
    out.iter()
        .map(|f| serde_json::from_str(f.as_str()).unwrap())
        .collect()
}

fn events(s: &Session) -> Vec<String> {
    frames(s)
        .iter()
        .map(|f| f["event"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn sub(channel: &str, auth: &str, cd: Option<&str>) -> String {
    let mut d = serde_json::json!({"channel": channel, "auth": auth});
    if let Some(cd) = cd {
        d["channel_data"] = Value::String(cd.into());
    }
    serde_json::json!({"event":"pusher:subscribe","data":d}).to_string()
}

fn private_auth(sid: &str, ch: &str) -> String {
    format!("{KEY}:{}", sign(SECRET, format!("{sid}:{ch}").as_bytes()))
}

fn presence_auth(sid: &str, ch: &str, cd: &str) -> String {
    format!(
        "{KEY}:{}",
        sign(SECRET, format!("{sid}:{ch}:{cd}").as_bytes())
    )
}

#[test]
fn public_private_and_errors() {
    let app = app(|_| {});
    let mut s = session(&app, 1);
    s.handle_text(&sub("orders", "", None));
    assert_eq!(events(&s), ["pusher_internal:subscription_succeeded"]);
    s.handle_text(&sub(
        "private-orders.1",
        &private_auth("1.1", "private-orders.1"),
        None,
    ));
    assert_eq!(events(&s), ["pusher_internal:subscription_succeeded"]);
    // wrong socket id in the signature, missing auth, wrong key, bad name
    for text in [
        sub("private-x", &private_auth("9.9", "private-x"), None),
        sub("private-x", "", None),
        sub(
            "private-x",
            &private_auth("1.1", "private-x").replace(KEY, "otherkey"),
            None,
        ),
    ] {
        s.handle_text(&text);
        let f = frames(&s);
        assert_eq!(f[0]["event"], "pusher:subscription_error", "{text}");
        assert_eq!(f[0]["channel"], "private-x");
        assert_eq!(f[0]["data"]["status"], 401);
    }
    s.handle_text(&sub("bad channel", "", None));
    assert_eq!(frames(&s)[0]["data"]["type"], "InvalidChannel");
    assert!(app.channel("private-x").is_none());
    // encrypted channels: same formula as private, relayed without decryption
    s.handle_text(&sub(
        "private-encrypted-x",
        &private_auth("1.1", "private-encrypted-x"),
        None,
    ));
    assert_eq!(events(&s), ["pusher_internal:subscription_succeeded"]);
    // malformed frames get a pusher:error and the session carries on
    for bad in [
        "",
        "{",
        "[]",
        "{\"event\":1}",
        "{\"event\":\"nope\"}",
        "{\"event\":\"pusher:subscribe\",\"data\":3}",
    ] {
        s.handle_text(bad);
        let f = frames(&s);
        assert_eq!(f[0]["event"], "pusher:error", "{bad}");
        assert!(f[0]["data"]["code"].is_null());
    }
    s.handle_text(r#"{"event":"pusher:ping","data":{}}"#);
    assert_eq!(events(&s), ["pusher:pong"]);
    // unsubscribing from a channel never joined is silent
    s.handle_text(r#"{"event":"pusher:unsubscribe","data":{"channel":"never"}}"#);
    assert!(frames(&s).is_empty());
}

#[test]
fn oversize_message_is_refused_without_closing() {
    let app = app(|c| c.max_message_bytes = 300);
    let mut s = session(&app, 1);
    let big = format!(
        r#"{{"event":"client-x","channel":"private-a","data":"{}"}}"#,
        "x".repeat(400)
    );
    s.handle_text(&big);
    let f = frames(&s);
    assert!(f[0]["data"]["message"]
        .as_str()
        .unwrap()
        .contains("too large"));
    assert!(!s.outbox().is_closing());
}

#[test]
fn presence_with_numeric_user_id_and_limits() {
    let app = app(|c| c.max_presence_user_info_bytes = 32);
    let mut s = session(&app, 1);
    let cd = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
    s.handle_text(&sub(
        "presence-room",
        &presence_auth("1.1", "presence-room", cd),
        Some(cd),
    ));
    let f = frames(&s);
    let d: Value = serde_json::from_str(f[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(d["presence"]["ids"], serde_json::json!(["10"]));
    // signature over different channel_data bytes fails
    let cd2 = r#"{"user_id":"10","user_info":{"name":"Mr. Channels"}}"#;
    s.handle_text(&sub(
        "presence-b",
        &presence_auth("1.1", "presence-b", cd),
        Some(cd2),
    ));
    assert_eq!(frames(&s)[0]["event"], "pusher:subscription_error");
    // info too large, no user_id, channel_data not JSON, no channel_data and not signed in
    let big = format!(r#"{{"user_id":"1","user_info":"{}"}}"#, "x".repeat(64));
    for cd in [
        big.as_str(),
        r#"{"user_info":{}}"#,
        "not json",
        r#"{"user_id":""}"#,
        r#"{"user_id":[1]}"#,
    ] {
        s.handle_text(&sub(
            "presence-c",
            &presence_auth("1.1", "presence-c", cd),
            Some(cd),
        ));
        let f = frames(&s);
        assert_eq!(f[0]["event"], "pusher:subscription_error", "{cd}");
    }
    s.handle_text(&sub("presence-c", &private_auth("1.1", "presence-c"), None));
    assert_eq!(frames(&s)[0]["event"], "pusher:subscription_error");
}

#[test]
fn client_event_rules_and_rate_limit() {
    let app = app(|c| c.client_event_rate = 3);
    let mut a = session(&app, 1);
    let mut b = session(&app, 2);
    let cd_a = r#"{"user_id":"a"}"#;
    let cd_b = r#"{"user_id":"b"}"#;
    a.handle_text(&sub(
        "presence-chat",
        &presence_auth("1.1", "presence-chat", cd_a),
        Some(cd_a),
    ));
    b.handle_text(&sub(
        "presence-chat",
        &presence_auth("2.2", "presence-chat", cd_b),
        Some(cd_b),
    ));
    a.handle_text(&sub("orders", "", None));
    frames(&a);
    frames(&b);
    a.handle_text(r#"{"event":"client-typing","channel":"presence-chat","data":{"typing":true}}"#);
    assert!(frames(&a).is_empty(), "never echoed to the sender");
    let f = frames(&b);
    assert_eq!(f[0]["event"], "client-typing");
    assert_eq!(f[0]["data"], "{\"typing\":true}");
    assert_eq!(f[0]["user_id"], "a");
    // public channel, not subscribed, encrypted: refused with a non-fatal error
    for text in [
        r#"{"event":"client-x","channel":"orders","data":{}}"#,
        r#"{"event":"client-x","channel":"private-other","data":{}}"#,
        r#"{"event":"client-x","channel":"private-encrypted-x","data":{}}"#,
        r#"{"event":"pusher_internal:member_added","channel":"presence-chat","data":{}}"#,
    ] {
        a.handle_text(text);
        assert_eq!(frames(&a)[0]["event"], "pusher:error", "{text}");
    }
    frames(&b);
    // 3 per second allowed (the first one above counted), then 4301 frames, no close
    let mut limited = 0;
    for _ in 0..5 {
        a.handle_text(r#"{"event":"client-x","channel":"presence-chat"}"#);
        for f in frames(&a) {
            if f["data"]["code"] == 4301 {
                limited += 1;
            }
        }
    }
    assert_eq!(limited, 3);
    assert_eq!(frames(&b).len(), 2);
    assert!(!a.outbox().is_closing());
}

#[test]
fn client_events_can_be_disabled() {
    let app = app(|c| c.client_events = false);
    let mut a = session(&app, 1);
    a.handle_text(&sub("private-a", &private_auth("1.1", "private-a"), None));
    frames(&a);
    a.handle_text(r#"{"event":"client-x","channel":"private-a","data":{}}"#);
    assert!(frames(&a)[0]["data"]["message"]
        .as_str()
        .unwrap()
        .contains("disabled"));
}

#[test]
fn signin_server_to_user_and_failure() {
    let app = app(|_| {});
    let mut s = session(&app, 1);
    // not signed in: #server-to-user refused
    s.handle_text(&sub("#server-to-user-12345", "", None));
    assert_eq!(frames(&s)[0]["event"], "pusher:subscription_error");
    let ud = r#"{"id":"12345","user_info":{"name":"x"}}"#;
    let auth = format!(
        "{KEY}:{}",
        sign(SECRET, format!("1.1::user::{ud}").as_bytes())
    );
    s.handle_text(
        &serde_json::json!({"event":"pusher:signin","data":{"auth":auth,"user_data":ud}})
            .to_string(),
    );
    let f = frames(&s);
    assert_eq!(f[0]["event"], "pusher:signin_success");
    let d: Value = serde_json::from_str(f[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(d["user_data"], ud, "user_data stays the original string");
    s.handle_text(&sub("#server-to-user-12345", "", None));
    assert_eq!(events(&s), ["pusher_internal:subscription_succeeded"]);
    s.handle_text(&sub("#server-to-user-999", "", None));
    assert_eq!(events(&s), ["pusher:subscription_error"]);
    // presence without channel_data uses the signin identity
    s.handle_text(&sub(
        "presence-room",
        &private_auth("1.1", "presence-room"),
        None,
    ));
    let f = frames(&s);
    let d: Value = serde_json::from_str(f[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(d["presence"]["ids"], serde_json::json!(["12345"]));
    assert_eq!(
        d["presence"]["hash"]["12345"],
        serde_json::json!({"name":"x"}),
        "signin's user_info is the presence info"
    );

    let mut t = session(&app, 2);
    t.handle_text(r#"{"event":"pusher:signin","data":{"auth":"278d425bdf160c739803:00","user_data":"{\"id\":\"1\"}"}}"#);
    let mut out = Vec::new();
    let close = t.outbox().drain(&mut out).expect("bad signin closes");
    assert_eq!(close.code, 4009);
    // a valid signature over user_data without an id is refused too
    let mut u = session(&app, 3);
    let ud = r#"{"name":"x"}"#;
    let auth = format!(
        "{KEY}:{}",
        sign(SECRET, format!("3.3::user::{ud}").as_bytes())
    );
    u.handle_text(
        &serde_json::json!({"event":"pusher:signin","data":{"auth":auth,"user_data":ud}})
            .to_string(),
    );
    assert_eq!(u.outbox().drain(&mut out).unwrap().code, 4009);
}

#[test]
fn drop_leaves_everything_and_frees_the_quota_slot() {
    let app = app(|c| c.max_connections = 1);
    let mut s = session(&app, 1);
    s.handle_text(&sub("orders", "", None));
    assert_eq!(app.channel("orders").unwrap().subscription_count, 1);
    assert!(!app.try_connect());
    drop(s);
    assert!(app.channel("orders").is_none());
    assert!(app.try_connect());
}

#[test]
fn liveness_ping_then_close() {
    let app = app(|_| {});
    let mut s = session(&app, 1);
    let t0 = Instant::now();
    assert!(matches!(s.tick(t0), Tick::Wait(_)));
    assert_eq!(s.tick(t0 + Duration::from_secs(31)), Tick::Ping);
    assert!(matches!(
        s.tick(t0 + Duration::from_secs(40)),
        Tick::Wait(_)
    ));
    assert_eq!(s.tick(t0 + Duration::from_secs(62)), Tick::Close);
    s.activity();
    assert!(matches!(s.tick(Instant::now()), Tick::Wait(_)));
}

#[test]
fn protocol_versions() {
    assert_eq!(check_protocol(""), Ok(()));
    assert_eq!(check_protocol("protocol=7&client=js"), Ok(()));
    assert_eq!(check_protocol("protocol=5"), Ok(()));
    assert_eq!(
        check_protocol("protocol=4"),
        Err(CloseCode::UnsupportedProtocol)
    );
    assert_eq!(
        check_protocol("protocol=8"),
        Err(CloseCode::UnsupportedProtocol)
    );
    assert_eq!(
        check_protocol("protocol=seven"),
        Err(CloseCode::InvalidVersion)
    );
    assert_eq!(check_protocol("protocol="), Err(CloseCode::InvalidVersion));
}
