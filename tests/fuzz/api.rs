//! The signed HTTP API: the query string and its signature (`protocol::signing`), then the
//! request behind a valid signature (`api::Api::handle`: the event body, batch bodies, channel
//! queries, paths).
//!
//! Signatures: queries are signed the way the SDKs sign them (`sign_query`, with extra
//! parameters full of `&`, `=`, `%`, `+` and non-ASCII, and timestamps from now to the ends of
//! `i64`), then some are mutated. Invariants: a signed query verifies exactly when its
//! timestamp is within the window; a mutated one verifies the same way when it still means
//! the same parameters (a case change in a key, an empty pair) and is refused otherwise.
//!
//! Requests: event and batch bodies and GET queries as the SDKs send them, some mutated, then
//! signed (so they get past the signature and into the parsing and validation behind it).
//! Invariants: the answer is a JSON object with a 2xx/4xx status (no event log here, so never
//! 5xx); a valid event is answered 200 and a subscriber gets exactly its name and data.

use std::sync::Arc;

use pushbox::api::{Api, ApiRequest};
use pushbox::config::AppConfig;
use pushbox::hub::{Hub, NoObserver};
use pushbox::protocol::signing::{self, query_pairs, sign_query, SignedRequest, SigningError};
use serde_json::{json, Value};

use super::driver::{mutate, Rng, Stats, JSON_TOKENS};
use super::message::{self, KEY, SECRET};

const NOW: i64 = 1_764_000_000;

/// The decoded parameters as the signature sees them: keys lowercased, sorted; the signature's
/// hex compared without case, and only the last `auth_signature` (it is not signed itself:
/// `verify` checks the last one given). `body_md5` is signed as sent: its case counts.
fn meaning(query: &str) -> Vec<(String, String)> {
    let last_signature = query_pairs(query)
        .filter(|(k, _)| k.eq_ignore_ascii_case("auth_signature"))
        .count();
    let mut seen_signatures = 0;
    let mut v: Vec<(String, String)> = query_pairs(query)
        .filter(|(k, _)| {
            if !k.eq_ignore_ascii_case("auth_signature") {
                return true;
            }
            seen_signatures += 1;
            seen_signatures == last_signature
        })
        .map(|(k, v)| {
            let k = k.to_ascii_lowercase();
            let v = if k == "auth_signature" {
                v.to_ascii_lowercase()
            } else {
                v.into_owned()
            };
            (k, v)
        })
        .collect();
    v.sort();
    v
}

fn timestamp(rng: &mut Rng) -> i64 {
    let off = rng.below(1300) as i64 - 650;
    *rng.pick(&[
        NOW,
        NOW + off,
        NOW - 600,
        NOW + 600,
        NOW - 601,
        0,
        -1,
        i64::MIN,
        i64::MAX,
        i64::MIN + NOW,
        i64::MAX - 5,
    ])
}

/// The signature and query parsing on their own.
pub fn signature(rng: &mut Rng, stats: &mut Stats) {
    let post = rng.chance(50);
    let (method, body) = if post {
        ("POST", rng.text(40).into_bytes())
    } else {
        ("GET", Vec::new())
    };
    let path = format!("/apps/1/{}", rng.word("abc/%2F-_.", 1, 20));
    let extra: Vec<(String, String)> = (0..rng.below(4))
        .map(|_| (rng.word("abcdefgh_", 1, 8), rng.text(12)))
        .filter(|(k, _)| !k.starts_with("auth_") && k != "body_md5")
        .collect();
    let extra_refs: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    let ts = timestamp(rng);
    let query = sign_query(method, &path, KEY, SECRET, ts, &body, &extra_refs);
    let req = SignedRequest {
        method,
        path: &path,
        query: &query,
        body: &body,
    };
    let verdict = signing::verify(&req, KEY, SECRET, NOW);
    let in_window = ts.abs_diff(NOW) <= 600;
    match &verdict {
        Ok(()) => assert!(in_window, "timestamp {ts} accepted at {NOW}"),
        Err(SigningError::Expired { .. }) => assert!(!in_window, "timestamp {ts} refused"),
        Err(e) => panic!("a query signed like the SDKs sign it was refused: {e} ({query})"),
    }
    stats.add(if verdict.is_ok() {
        "signature_ok"
    } else {
        "signature_expired"
    });

    let mut bytes = query.clone().into_bytes();
    mutate(
        rng,
        &mut bytes,
        &[b"&", b"=", b"%", b"%2", b"+", b"auth_key=", b"AUTH_"],
    );
    let mutated = String::from_utf8_lossy(&bytes).into_owned();
    let req = SignedRequest {
        query: &mutated,
        ..req
    };
    let again = signing::verify(&req, KEY, SECRET, NOW);
    if meaning(&mutated) == meaning(&query) {
        assert_eq!(again, verdict, "{query} → {mutated} means the same");
        stats.add("mutation_same_meaning");
    } else {
        assert!(again.is_err(), "{query} → {mutated} still verifies");
        stats.add("mutation_refused");
    }
}

/// The API with one app and a subscriber on `orders`.
pub struct Fixture {
    rt: tokio::runtime::Runtime,
    api: Api,
    subscriber: pushbox::session::Session,
}

impl Fixture {
    pub fn new() -> Fixture {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let mut c = AppConfig::with_defaults("1", KEY, SECRET);
        c.max_connections = 1_000_000;
        let hub = Arc::new(Hub::new(vec![c], Arc::new(NoObserver)));
        let app = hub.app_by_id("1").expect("app 1").clone();
        let mut rng = Rng::new(1);
        let mut subscriber = message::session(&mut rng, &app);
        subscriber.handle_text(r#"{"event":"pusher:subscribe","data":{"channel":"orders"}}"#);
        message::drain(&subscriber);
        Fixture {
            rt,
            api: Api::new(hub, None),
            subscriber,
        }
    }

    /// Signs a request with the real clock (the API checks the timestamp against it), handles
    /// it and checks what every answer must be: a JSON object, 2xx or 4xx (no event log here,
    /// so never 5xx), a 4xx saying why in `error`, and nothing delivered to the subscriber of
    /// `orders` unless it is a 200. The status and what the subscriber got.
    pub fn answer(
        &self,
        method: &str,
        path: &str,
        params: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Vec<Value>) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let query = sign_query(method, path, KEY, SECRET, now, body, params);
        let r = self.rt.block_on(self.api.handle(ApiRequest {
            method,
            path,
            query: &query,
            body,
        }));
        let v: Value = serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("answer {} is not JSON ({e}): {}", r.status, r.body));
        assert!(v.is_object(), "answer is not an object: {}", r.body);
        assert!(
            (200..500).contains(&r.status),
            "{method} {path} answered {}: {}",
            r.status,
            r.body
        );
        if r.status >= 400 {
            assert!(v["error"].is_string(), "an error says why: {}", r.body);
        }
        let got = message::drain_frames(&self.subscriber);
        if r.status != 200 {
            assert!(got.is_empty(), "a refused request delivered {got:?}");
        }
        (r.status, got)
    }
}

/// An event body an SDK sends, and `(name, data)` when it must be published.
fn event(rng: &mut Rng) -> (Value, Option<(String, String)>) {
    let name = rng.word("abc:-_.", 1, 30);
    let (data_json, data) = if rng.chance(70) {
        let s = rng.text(100);
        (Value::String(s.clone()), s)
    } else {
        let v = json!({"id": rng.below(100), "note": rng.text(20)});
        (v.clone(), v.to_string())
    };
    let mut body = json!({"name": name, "data": data_json});
    let to_orders = rng.chance(60);
    if to_orders {
        body["channel"] = json!("orders");
    } else {
        let chans: Vec<String> = (0..rng.range(1, 3))
            .map(|_| rng.word("abcXYZ09_-=@,.;", 1, 12))
            .collect();
        body["channels"] = json!(chans);
    }
    if rng.chance(30) {
        body["socket_id"] = json!(format!("{}.{}", rng.range(1, 99), rng.range(1, 99)));
    }
    if rng.chance(20) {
        body["info"] = json!("subscription_count,user_count");
    }
    (body, to_orders.then_some((name, data)))
}

/// A request to the API: method, path, query parameters (before signing), body, and the
/// `(name, data)` a subscriber of `orders` must get if it is published.
type Request = (
    &'static str,
    String,
    Vec<(String, String)>,
    Vec<u8>,
    Option<(String, String)>,
);

/// A request as an SDK sends it (signed later, over whatever it ends up being).
fn request(rng: &mut Rng) -> Request {
    match rng.below(6) {
        0..=2 => {
            let (body, wanted) = event(rng);
            (
                "POST",
                "/apps/1/events".into(),
                vec![],
                body.to_string().into_bytes(),
                wanted,
            )
        }
        3 => {
            let batch: Vec<Value> = (0..rng.range(1, 4)).map(|_| event(rng).0).collect();
            let body = json!({ "batch": batch }).to_string().into_bytes();
            ("POST", "/apps/1/batch_events".into(), vec![], body, None)
        }
        4 => {
            let params = vec![
                (
                    "filter_by_prefix".to_owned(),
                    rng.pick(&["", "presence-", "or", "%"]).to_string(),
                ),
                (
                    "info".to_owned(),
                    rng.pick(&["", "user_count", "subscription_count", "cache,x"])
                        .to_string(),
                ),
            ];
            ("GET", "/apps/1/channels".into(), params, vec![], None)
        }
        _ => {
            let name = rng.word("abc%2F-_presence", 1, 20);
            let tail = *rng.pick(&["", "/users", "/x/y/z"]);
            let info = vec![(
                "info".to_owned(),
                rng.pick(&["user_count", "subscription_count,cache"])
                    .to_string(),
            )];
            (
                "GET",
                format!("/apps/1/channels/{name}{tail}"),
                info,
                vec![],
                None,
            )
        }
    }
}

/// A request behind a valid signature.
pub fn handle(fx: &mut Fixture, rng: &mut Rng, stats: &mut Stats) {
    let (method, mut path, params, mut body, mut wanted) = request(rng);
    if rng.chance(50) {
        mutate(rng, &mut body, JSON_TOKENS);
        wanted = None;
        stats.add("mutated_body");
    }
    if rng.chance(10) {
        let mut p = path.into_bytes();
        mutate(rng, &mut p, &[b"/", b"%", b"%2F", b"apps/1"]);
        path = String::from_utf8_lossy(&p).into_owned();
        wanted = None;
    }
    let refs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    let (status, got) = fx.answer(method, &path, &refs, &body);
    stats.add(match status {
        200 => "answer_200",
        400 => "answer_400",
        401 => "answer_401",
        404 => "answer_404",
        413 => "answer_413",
        _ => "answer_other",
    });
    // (A refused request delivering anything fails in `answer`.)
    if let Some((name, data)) = wanted {
        assert_eq!(status, 200, "a valid event was refused: {got:?}");
        let frame = got
            .iter()
            .find(|f| f["event"] == name.as_str())
            .unwrap_or_else(|| panic!("the subscriber did not get {name}: {got:?}"));
        assert_eq!(frame["data"], data.as_str(), "published data == sent data");
        assert_eq!(frame["channel"], "orders");
        stats.add("delivered_as_sent");
    }
}
