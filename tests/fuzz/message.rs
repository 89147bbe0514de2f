//! The Pusher message parser (`protocol::message`) and the session behind it: every text
//! frame a WebSocket or an `xhr_send` delivers goes through `ClientMessage::parse`, then
//! `Session::handle_text` (auth checks, presence `channel_data`, signin `user_data`, client
//! events, the hub).
//!
//! Inputs are the messages pusher-js and the SDKs send (public, private and presence
//! subscribes signed for the session's real socket id, signin, client events with object,
//! string or no data, `data` as a string holding the object), then 60 % of them mutated
//! with JSON and protocol tokens. Invariants:
//! - an unmutated message parses to exactly what it was built from;
//! - whatever the input, every frame the session answers with is a JSON object with an
//!   `event` string;
//! - input that does not parse gets one `pusher:error` and nothing else;
//! - correctly signed subscribes really succeed (the generator reaches the hub).

use std::sync::Arc;
use std::time::Duration;

use pushbox::config::AppConfig;
use pushbox::hub::{App, NoObserver, Outbox};
use pushbox::protocol::auth::sign;
use pushbox::protocol::{ClientMessage, SocketId};
use pushbox::session::{Liveness, Session};
use serde_json::{json, Value};

use super::driver::{mutate, Rng, Stats, JSON_TOKENS};

pub const KEY: &str = "278d425bdf160c739803";
pub const SECRET: &str = "7ad3773142a6692b25b8";

/// Characters a channel name may hold (and a few it may not, now and then).
fn channel(rng: &mut Rng, prefix: &str) -> String {
    let alphabet = if rng.chance(5) {
        "ab# é\"/"
    } else {
        "abcXYZ019_-=@,.;"
    };
    format!("{prefix}{}", rng.word(alphabet, 1, 20))
}

fn auth_for(text: &str) -> String {
    format!("{KEY}:{}", sign(SECRET, text.as_bytes()))
}

/// A message a real client sends on the session with socket id `sid`, and what it must parse
/// to.
pub fn valid(rng: &mut Rng, sid: &str) -> (String, ClientMessage) {
    let sub = |data: Value, channel: String, auth, channel_data| {
        (
            json!({"event": "pusher:subscribe", "data": data}).to_string(),
            ClientMessage::Subscribe {
                channel,
                auth,
                channel_data,
            },
        )
    };
    match rng.below(10) {
        0 => (
            json!({"event": "pusher:ping", "data": {}}).to_string(),
            ClientMessage::Ping,
        ),
        1 => {
            let c = channel(rng, "");
            let data = json!({ "channel": c });
            if rng.chance(30) {
                // `data` as a JSON string holding the object, as some clients send it.
                let (text, m) = sub(Value::String(data.to_string()), c, None, None);
                (text, m)
            } else {
                sub(data, c, None, None)
            }
        }
        2 | 3 => {
            let c = channel(rng, "private-");
            let auth = auth_for(&format!("{sid}:{c}"));
            sub(json!({"channel": c, "auth": auth}), c, Some(auth), None)
        }
        4 | 5 => {
            let c = channel(rng, "presence-");
            let id = if rng.chance(20) {
                json!(rng.below(1000))
            } else {
                json!(rng.word("abc123", 1, 8))
            };
            let cd = json!({"user_id": id, "user_info": {"name": rng.text(12)}}).to_string();
            let auth = auth_for(&format!("{sid}:{c}:{cd}"));
            sub(
                json!({"channel": c, "auth": auth, "channel_data": cd}),
                c,
                Some(auth),
                Some(cd),
            )
        }
        6 => {
            let c = channel(rng, "");
            (
                json!({"event": "pusher:unsubscribe", "data": {"channel": c}}).to_string(),
                ClientMessage::Unsubscribe { channel: c },
            )
        }
        7 => {
            let user_data =
                json!({"id": rng.word("abc123", 1, 8), "user_info": {"n": rng.text(8)}})
                    .to_string();
            let auth = auth_for(&format!("{sid}::user::{user_data}"));
            (
                json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}})
                    .to_string(),
                ClientMessage::Signin { auth, user_data },
            )
        }
        8 => {
            let c = channel(rng, "private-");
            let event = format!("client-{}", rng.word("abcdef", 1, 10));
            let (data, expected) = match rng.below(3) {
                0 => {
                    let d = json!({"typing": true, "text": rng.text(20)});
                    (d.clone(), Some(d.to_string()))
                }
                1 => {
                    let s = rng.text(20);
                    (Value::String(s.clone()), Some(s))
                }
                _ => (Value::Null, None),
            };
            let mut m = json!({"event": event, "channel": c});
            if data != Value::Null {
                m["data"] = data;
            }
            (
                m.to_string(),
                ClientMessage::ClientEvent {
                    event,
                    channel: c,
                    data: expected,
                },
            )
        }
        _ => {
            let event = format!("pusher:{}", rng.word("abcxyz_", 1, 10));
            let expected = match event.as_str() {
                "pusher:ping" => ClientMessage::Ping,
                "pusher:pong" => ClientMessage::Pong,
                _ => ClientMessage::UnknownPusher(event.clone()),
            };
            (json!({"event": event}).to_string(), expected)
        }
    }
}

/// A valid message, or one mutated (60 %): `(text, what it must parse to if unmutated)`.
pub fn message(rng: &mut Rng, sid: &str) -> (String, Option<ClientMessage>) {
    let (text, expected) = valid(rng, sid);
    if !rng.chance(60) {
        return (text, Some(expected));
    }
    let mut bytes = text.into_bytes();
    mutate(rng, &mut bytes, JSON_TOKENS);
    (String::from_utf8_lossy(&bytes).into_owned(), None)
}

/// One app for a whole target run; the sessions come and go.
pub fn app() -> Arc<App> {
    let mut c = AppConfig::with_defaults("1", KEY, SECRET);
    c.client_event_rate = 1000;
    Arc::new(App::new(c, Arc::new(NoObserver)))
}

pub fn session(rng: &mut Rng, app: &Arc<App>) -> Session {
    assert!(app.try_connect(), "the quota frees as sessions drop");
    let sid = format!("{}.{}", rng.range(1, 999_999), rng.range(1, 999_999));
    let socket_id = SocketId::parse(&sid).expect("a valid socket id");
    let outbox = Arc::new(Outbox::new(rng.next_u64(), socket_id, 4096));
    let live = Liveness {
        activity_timeout: Duration::from_secs(30),
        pong_timeout: Duration::from_secs(30),
    };
    let s = Session::open(app.clone(), outbox, live);
    drain(&s);
    s
}

/// The frames the session queued, each checked to be a JSON object with an `event` string.
pub fn drain_frames(s: &Session) -> Vec<Value> {
    let mut frames = Vec::new();
    s.outbox().drain(&mut frames);
    frames
        .iter()
        .map(|f| {
            let v: Value = serde_json::from_str(f.as_str())
                .unwrap_or_else(|e| panic!("the session sent invalid JSON ({e}): {}", f.as_str()));
            assert!(
                v.get("event").is_some_and(Value::is_string),
                "a frame without an event: {}",
                f.as_str()
            );
            v
        })
        .collect()
}

/// The events of the frames the session queued (checked as [`drain_frames`] does).
pub fn drain(s: &Session) -> Vec<String> {
    drain_frames(s)
        .iter()
        .map(|v| v["event"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Feeds `text` to the session and checks what it answered against what parsing it gives.
pub fn feed(s: &mut Session, text: &str, expected: Option<&ClientMessage>, stats: &mut Stats) {
    let parsed = ClientMessage::parse(text);
    if let Some(e) = expected {
        assert_eq!(parsed.as_ref(), Ok(e), "parse(encode(x)) == x for {text}");
    }
    // A failed signin closes the connection (4009): nothing more is sent after that.
    let closing = s.outbox().is_closing();
    s.handle_text(text);
    let events = drain(s);
    match &parsed {
        Err(_) => {
            stats.add("parse_error");
            let want: &[&str] = if closing { &[] } else { &["pusher:error"] };
            assert_eq!(
                events, want,
                "unparsable input gets one pusher:error and nothing else: {text:?}"
            );
        }
        Ok(_) => stats.add("parsed"),
    }
    for e in &events {
        match e.as_str() {
            "pusher_internal:subscription_succeeded" => stats.add("subscribed"),
            "pusher:subscription_error" => stats.add("subscription_error"),
            "pusher:signin_success" => stats.add("signed_in"),
            "pusher:error" => stats.add("error_frame"),
            _ => stats.add("other_frame"),
        }
    }
    if events
        .iter()
        .any(|e| e == "pusher_internal:subscription_succeeded")
        && text.contains("presence-")
    {
        stats.add("presence_joined");
    }
}

pub fn one(app: &Arc<App>, rng: &mut Rng, stats: &mut Stats) {
    let mut s = session(rng, app);
    let sid = s.socket_id().as_str().to_owned();
    for _ in 0..rng.range(1, 6) {
        let (text, expected) = message(rng, &sid);
        feed(&mut s, &text, expected.as_ref(), stats);
    }
    drop(s);
}
