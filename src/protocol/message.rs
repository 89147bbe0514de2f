//! Client → server messages (parsed leniently, PUSHER.md §1 and §3) and server → client frames
//! (built with string `data` exactly as official Pusher sends them).

use serde::Deserialize;
use serde_json::value::RawValue;
use std::fmt;

use super::{json_str, push_json_str};

/// A message a client sent, after parsing.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMessage {
    Subscribe {
        channel: String,
        auth: Option<String>,
        /// The exact `channel_data` string (kept byte-for-byte for the HMAC).
        channel_data: Option<String>,
    },
    Unsubscribe {
        channel: String,
    },
    Ping,
    Pong,
    Signin {
        auth: String,
        user_data: String,
    },
    /// A `client-*` event; `data` is the string to relay (objects are stringified).
    ClientEvent {
        event: String,
        channel: String,
        data: Option<String>,
    },
    /// A `pusher:*` event this server does not know: ignored.
    UnknownPusher(String),
}

/// Why a client message was refused (answered with a non-fatal `pusher:error`).
#[derive(Debug, PartialEq, Eq)]
pub enum MessageError {
    NotJson,
    MissingEvent,
    MissingData(&'static str),
    BadData(&'static str, String),
    MissingChannel(String),
    ReservedEvent(String),
    NotClientEvent(String),
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageError::NotJson => write!(f, "Invalid message format: expected a JSON object like {{\"event\":\"…\",\"data\":{{…}}}}"),
            MessageError::MissingEvent => write!(f, "Invalid message format: the \"event\" field (a string) is missing"),
            MessageError::MissingData(ev) => write!(f, "{ev} needs a \"data\" object"),
            MessageError::BadData(ev, why) => write!(f, "Invalid data for {ev}: {why}"),
            MessageError::MissingChannel(ev) => write!(f, "Event {ev} needs a \"channel\""),
            MessageError::ReservedEvent(ev) => write!(f, "Event {ev} is reserved for the server"),
            MessageError::NotClientEvent(ev) => write!(
                f,
                "Event {ev} not allowed: client events must be named client-…"
            ),
        }
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    #[serde(borrow)]
    channel: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct SubscribeData<'a> {
    channel: Option<String>,
    #[serde(borrow)]
    auth: Option<&'a RawValue>,
    #[serde(borrow)]
    channel_data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct SigninData<'a> {
    #[serde(borrow)]
    auth: Option<&'a RawValue>,
    #[serde(borrow)]
    user_data: Option<&'a RawValue>,
}

/// A JSON value as a string: a JSON string's content, or any other value's JSON text.
fn stringish(raw: &RawValue) -> Option<String> {
    let text = raw.get();
    if text.starts_with('"') {
        serde_json::from_str::<String>(text).ok()
    } else if text == "null" {
        None
    } else {
        Some(text.to_owned())
    }
}

/// A JSON string's content only.
fn string_only(raw: Option<&RawValue>) -> Option<String> {
    raw.and_then(|r| serde_json::from_str::<String>(r.get()).ok())
}

/// Data that should be an object may also arrive as a JSON string holding the object.
fn object_text(raw: &RawValue) -> Option<String> {
    let text = raw.get();
    if text.starts_with('{') {
        Some(text.to_owned())
    } else if text.starts_with('"') {
        let inner: String = serde_json::from_str(text).ok()?;
        inner.trim_start().starts_with('{').then_some(inner)
    } else {
        None
    }
}

/// Is `json` (still to be parsed) a JSON object? serde's derived structs also accept a JSON
/// array, field by field in order, so `["pusher:subscribe",{…}]` would pass as a message and
/// `["1"]` as presence `channel_data`. No Pusher client or SDK sends that; refusing it here
/// keeps one shape per message. Looks only at the first non-blank byte.
pub fn is_json_object(json: &[u8]) -> bool {
    json.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{')
}

impl ClientMessage {
    pub fn parse(text: &str) -> Result<ClientMessage, MessageError> {
        if !is_json_object(text.as_bytes()) {
            return Err(MessageError::NotJson);
        }
        let env: Envelope<'_> = serde_json::from_str(text).map_err(|_| MessageError::NotJson)?;
        let event = string_only(env.event).ok_or(MessageError::MissingEvent)?;
        match event.as_str() {
            "pusher:ping" => Ok(ClientMessage::Ping),
            "pusher:pong" => Ok(ClientMessage::Pong),
            "pusher:subscribe" | "pusher:unsubscribe" => {
                let ev: &'static str = if event == "pusher:subscribe" {
                    "pusher:subscribe"
                } else {
                    "pusher:unsubscribe"
                };
                let data = env.data.ok_or(MessageError::MissingData(ev))?;
                let obj = object_text(data)
                    .ok_or_else(|| MessageError::BadData(ev, "expected an object".into()))?;
                let sd: SubscribeData<'_> = serde_json::from_str(&obj)
                    .map_err(|e| MessageError::BadData(ev, e.to_string()))?;
                let channel = sd.channel.ok_or_else(|| {
                    MessageError::BadData(ev, "\"channel\" (a string) is missing".into())
                })?;
                if ev == "pusher:unsubscribe" {
                    return Ok(ClientMessage::Unsubscribe { channel });
                }
                Ok(ClientMessage::Subscribe {
                    channel,
                    auth: sd.auth.and_then(stringish),
                    channel_data: sd.channel_data.and_then(stringish),
                })
            }
            "pusher:signin" => {
                let data = env.data.ok_or(MessageError::MissingData("pusher:signin"))?;
                let obj = object_text(data).ok_or_else(|| {
                    MessageError::BadData("pusher:signin", "expected an object".into())
                })?;
                let sd: SigninData<'_> = serde_json::from_str(&obj)
                    .map_err(|e| MessageError::BadData("pusher:signin", e.to_string()))?;
                let auth = sd.auth.and_then(stringish).ok_or_else(|| {
                    MessageError::BadData("pusher:signin", "\"auth\" is missing".into())
                })?;
                let user_data = sd.user_data.and_then(stringish).ok_or_else(|| {
                    MessageError::BadData("pusher:signin", "\"user_data\" is missing".into())
                })?;
                Ok(ClientMessage::Signin { auth, user_data })
            }
            e if e.starts_with("pusher_internal:") => Err(MessageError::ReservedEvent(event)),
            e if e.starts_with("pusher:") => Ok(ClientMessage::UnknownPusher(event)),
            e if e.starts_with("client-") => {
                let channel =
                    string_only(env.channel).ok_or(MessageError::MissingChannel(event.clone()))?;
                Ok(ClientMessage::ClientEvent {
                    data: env.data.and_then(stringish),
                    event,
                    channel,
                })
            }
            _ => Err(MessageError::NotClientEvent(event)),
        }
    }
}

/// `{"event":E[,"channel":C][,"data":"<string>"][,"user_id":U]}` with `data` as a JSON string.
pub fn frame(
    event: &str,
    channel: Option<&str>,
    data: Option<&str>,
    user_id: Option<&str>,
) -> String {
    let mut out = String::with_capacity(
        32 + event.len()
            + channel.map_or(0, str::len)
            + data.map_or(0, |d| d.len() + d.len() / 8)
            + user_id.map_or(0, str::len),
    );
    out.push_str("{\"event\":");
    push_json_str(&mut out, event);
    if let Some(c) = channel {
        out.push_str(",\"channel\":");
        push_json_str(&mut out, c);
    }
    if let Some(d) = data {
        out.push_str(",\"data\":");
        push_json_str(&mut out, d);
    }
    if let Some(u) = user_id {
        out.push_str(",\"user_id\":");
        push_json_str(&mut out, u);
    }
    out.push('}');
    out
}

pub fn connection_established(socket_id: &str, activity_timeout: u64) -> String {
    let data = format!(
        "{{\"socket_id\":{},\"activity_timeout\":{activity_timeout}}}",
        json_str(socket_id)
    );
    frame("pusher:connection_established", None, Some(&data), None)
}

/// `pusher:error` with an object `data`; `code` `None` serialises as `null` (non-fatal errors).
pub fn error(code: Option<u16>, message: &str) -> String {
    let code = code.map_or_else(|| "null".to_owned(), |c| c.to_string());
    format!(
        "{{\"event\":\"pusher:error\",\"data\":{{\"code\":{code},\"message\":{}}}}}",
        json_str(message)
    )
}

pub fn subscription_succeeded(channel: &str, data: &str) -> String {
    frame(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        Some(data),
        None,
    )
}

/// `pusher:subscription_error` with the channel and `{type, error, status}`, the shape pusher-js
/// itself emits when its auth call fails.
pub fn subscription_error(channel: &str, kind: &str, error: &str, status: u16) -> String {
    format!(
        "{{\"event\":\"pusher:subscription_error\",\"channel\":{},\"data\":{{\"type\":{},\"error\":{},\"status\":{status}}}}}",
        json_str(channel),
        json_str(kind),
        json_str(error)
    )
}

/// `user_info` is raw JSON text (or `None` for no info).
pub fn member_added(channel: &str, user_id: &str, user_info: Option<&str>) -> String {
    let data = match user_info {
        Some(info) => format!("{{\"user_id\":{},\"user_info\":{info}}}", json_str(user_id)),
        None => format!("{{\"user_id\":{}}}", json_str(user_id)),
    };
    frame(
        "pusher_internal:member_added",
        Some(channel),
        Some(&data),
        None,
    )
}

pub fn member_removed(channel: &str, user_id: &str) -> String {
    let data = format!("{{\"user_id\":{}}}", json_str(user_id));
    frame(
        "pusher_internal:member_removed",
        Some(channel),
        Some(&data),
        None,
    )
}

pub fn subscription_count(channel: &str, count: usize) -> String {
    let data = format!("{{\"subscription_count\":{count}}}");
    frame(
        "pusher_internal:subscription_count",
        Some(channel),
        Some(&data),
        None,
    )
}

pub fn cache_miss(channel: &str) -> String {
    frame("pusher:cache_miss", Some(channel), None, None)
}

pub fn pong() -> &'static str {
    "{\"event\":\"pusher:pong\",\"data\":{}}"
}

pub fn ping() -> &'static str {
    "{\"event\":\"pusher:ping\",\"data\":{}}"
}

pub fn signin_success(user_data: &str) -> String {
    let data = format!("{{\"user_data\":{}}}", json_str(user_data));
    frame("pusher:signin_success", None, Some(&data), None)
}

/// `pusher_internal:watchlist_events` with `[(name, user_ids)]`.
pub fn watchlist_events(events: &[(&str, Vec<String>)]) -> String {
    let items: Vec<String> = events
        .iter()
        .map(|(name, ids)| {
            let ids: Vec<String> = ids.iter().map(|i| json_str(i)).collect();
            format!(
                "{{\"name\":{},\"user_ids\":[{}]}}",
                json_str(name),
                ids.join(",")
            )
        })
        .collect();
    let data = format!("{{\"events\":[{}]}}", items.join(","));
    frame("pusher_internal:watchlist_events", None, Some(&data), None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn data_of(frame: &str) -> Value {
        let v: Value = serde_json::from_str(frame).unwrap();
        let s = v["data"].as_str().expect("data must be a JSON string");
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn connection_established_has_string_data() {
        let f = connection_established("123.456", 30);
        let d = data_of(&f);
        assert_eq!(d["socket_id"], "123.456");
        assert_eq!(d["activity_timeout"], 30);
    }

    #[test]
    fn server_frames_match_official_shapes() {
        let v: Value = serde_json::from_str(&error(Some(4001), "nope")).unwrap();
        assert_eq!(v["data"]["code"], 4001);
        let v: Value = serde_json::from_str(&error(None, "x")).unwrap();
        assert!(v["data"]["code"].is_null());
        assert_eq!(
            data_of(&subscription_succeeded("a", "{}")),
            serde_json::json!({})
        );
        let d = data_of(&member_added("presence-x", "12", Some(r#"{"name":"Cy"}"#)));
        assert_eq!(
            d,
            serde_json::json!({"user_id":"12","user_info":{"name":"Cy"}})
        );
        assert_eq!(
            data_of(&member_removed("presence-x", "12")),
            serde_json::json!({"user_id":"12"})
        );
        assert_eq!(
            data_of(&subscription_count("c", 42)),
            serde_json::json!({"subscription_count":42})
        );
        let v: Value = serde_json::from_str(&cache_miss("cache-x")).unwrap();
        assert_eq!(v["channel"], "cache-x");
        let d = data_of(&signin_success(r#"{"id":"1"}"#));
        assert_eq!(d["user_data"], r#"{"id":"1"}"#);
        let d = data_of(&watchlist_events(&[(
            "online",
            vec!["1".into(), "2".into()],
        )]));
        assert_eq!(d["events"][0]["user_ids"][1], "2");
        let v: Value =
            serde_json::from_str(&subscription_error("private-x", "AuthError", "bad", 401))
                .unwrap();
        assert_eq!(v["data"]["status"], 401);
        let v: Value = serde_json::from_str(&frame(
            "e",
            Some("c"),
            Some("{\"x\":\"</script>\"}"),
            Some("7"),
        ))
        .unwrap();
        assert_eq!(v["data"], "{\"x\":\"</script>\"}");
        assert_eq!(v["user_id"], "7");
        serde_json::from_str::<Value>(pong()).unwrap();
        serde_json::from_str::<Value>(ping()).unwrap();
    }

    #[test]
    fn parse_subscribe_variants() {
        let m = ClientMessage::parse(
            r#"{"event":"pusher:subscribe","data":{"channel":"orders","auth":""}}"#,
        )
        .unwrap();
        assert_eq!(
            m,
            ClientMessage::Subscribe {
                channel: "orders".into(),
                auth: Some("".into()),
                channel_data: None
            }
        );
        // channel_data kept byte for byte, including PHP's escaped slashes.
        let cd = r#"{\"user_id\":\"10\",\"user_info\":{\"url\":\"a\\/b\"}}"#;
        let text = format!(
            r#"{{"event":"pusher:subscribe","data":{{"channel":"presence-x","auth":"k:s","channel_data":"{cd}"}}}}"#
        );
        match ClientMessage::parse(&text).unwrap() {
            ClientMessage::Subscribe {
                channel_data: Some(d),
                ..
            } => {
                assert_eq!(d, r#"{"user_id":"10","user_info":{"url":"a\/b"}}"#)
            }
            other => panic!("{other:?}"),
        }
        // data as a JSON string holding the object (lenient)
        let m =
            ClientMessage::parse(r#"{"event":"pusher:subscribe","data":"{\"channel\":\"a\"}"}"#)
                .unwrap();
        assert!(matches!(m, ClientMessage::Subscribe { ref channel, .. } if channel == "a"));
        let m = ClientMessage::parse(r#"{"event":"pusher:unsubscribe","data":{"channel":"a"}}"#)
            .unwrap();
        assert_eq!(
            m,
            ClientMessage::Unsubscribe {
                channel: "a".into()
            }
        );
    }

    #[test]
    fn parse_client_events_accept_object_string_or_absent() {
        let m = ClientMessage::parse(
            r#"{"event":"client-typing","channel":"private-x","data":{"typing":true}}"#,
        )
        .unwrap();
        assert_eq!(
            m,
            ClientMessage::ClientEvent {
                event: "client-typing".into(),
                channel: "private-x".into(),
                data: Some(r#"{"typing":true}"#.into())
            }
        );
        let m = ClientMessage::parse(
            r#"{"event":"client-typing","channel":"private-x","data":"{\"a\":1}"}"#,
        )
        .unwrap();
        assert!(
            matches!(m, ClientMessage::ClientEvent { data: Some(ref d), .. } if d == r#"{"a":1}"#)
        );
        let m = ClientMessage::parse(r#"{"event":"client-typing","channel":"private-x"}"#).unwrap();
        assert!(matches!(m, ClientMessage::ClientEvent { data: None, .. }));
    }

    #[test]
    fn malformed_messages() {
        type Check = fn(&MessageError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| *e == MessageError::NotJson),
            ("not json", |e| *e == MessageError::NotJson),
            ("[]", |e| *e == MessageError::NotJson),
            ("42", |e| *e == MessageError::NotJson),
            ("null", |e| *e == MessageError::NotJson),
            ("{\"event\":", |e| *e == MessageError::NotJson),
            ("{}", |e| *e == MessageError::MissingEvent),
            (r#"{"event":42}"#, |e| *e == MessageError::MissingEvent),
            (r#"{"event":null}"#, |e| *e == MessageError::MissingEvent),
            (r#"{"event":"pusher:subscribe"}"#, |e| {
                matches!(e, MessageError::MissingData(_))
            }),
            (r#"{"event":"pusher:subscribe","data":42}"#, |e| {
                matches!(e, MessageError::BadData(..))
            }),
            (r#"{"event":"pusher:subscribe","data":"nope"}"#, |e| {
                matches!(e, MessageError::BadData(..))
            }),
            (r#"{"event":"pusher:subscribe","data":{}}"#, |e| {
                matches!(e, MessageError::BadData(..))
            }),
            (
                r#"{"event":"pusher:subscribe","data":{"channel":5}}"#,
                |e| matches!(e, MessageError::BadData(..)),
            ),
            (
                r#"{"event":"pusher:subscribe","data":"{\"channel\":"}"#,
                |e| matches!(e, MessageError::BadData(..)),
            ),
            (r#"{"event":"pusher:signin","data":{"auth":"x"}}"#, |e| {
                matches!(e, MessageError::BadData(..))
            }),
            (
                r#"{"event":"pusher:signin","data":{"user_data":"{}"}}"#,
                |e| matches!(e, MessageError::BadData(..)),
            ),
            (
                r#"{"event":"pusher_internal:member_added","data":{}}"#,
                |e| matches!(e, MessageError::ReservedEvent(_)),
            ),
            (r#"{"event":"hello","channel":"x"}"#, |e| {
                matches!(e, MessageError::NotClientEvent(_))
            }),
            (r#"{"event":"client-x"}"#, |e| {
                matches!(e, MessageError::MissingChannel(_))
            }),
            (r#"{"event":"client-x","channel":7}"#, |e| {
                matches!(e, MessageError::MissingChannel(_))
            }),
        ];
        for (text, check) in cases {
            let err = ClientMessage::parse(text).expect_err(text);
            assert!(check(&err), "{text}: {err:?}");
            assert!(!err.to_string().is_empty());
        }
        assert_eq!(
            ClientMessage::parse(r#"{"event":"pusher:ping"}"#).unwrap(),
            ClientMessage::Ping
        );
        assert_eq!(
            ClientMessage::parse(r#"{"event":"pusher:ping","data":"x"}"#).unwrap(),
            ClientMessage::Ping
        );
        assert!(matches!(
            ClientMessage::parse(r#"{"event":"pusher:foo"}"#).unwrap(),
            ClientMessage::UnknownPusher(_)
        ));
        // Deeply nested data must not blow the stack: it is relayed untouched (size limits bound it).
        let nested = format!("{}{}", "[".repeat(10000), "]".repeat(10000));
        let deep = format!(r#"{{"event":"client-x","channel":"private-a","data":{nested}}}"#);
        assert!(
            matches!(ClientMessage::parse(&deep), Ok(ClientMessage::ClientEvent { data: Some(ref d), .. }) if *d == nested)
        );
    }
}
