//! The HTTP API behind a valid signature (`api::Api::handle`): event and batch bodies, channel
//! queries and paths, as `tests/fuzz/api.rs` checks them: the answer is a JSON object with a
//! 2xx/4xx status (no event log here, so never 5xx), a 4xx says why in `error`, and a request
//! that is refused delivers nothing to a subscriber of `orders`.
//!
//! Input: `[method] path 0xff query-parameters 0xff body`; the harness signs it with the real
//! clock (the fuzzer cannot), so everything gets past the signature into the parsing behind
//! it. A path that does not start with `/` is put under `/apps/1/`.
#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use pushbox::api::{Api, ApiRequest};
use pushbox::config::AppConfig;
use pushbox::hub::{Hub, NoObserver};
use pushbox::protocol::signing::{query_pairs, sign_query};
use pushbox::session::Session;
use pushbox_fuzz::driver::Rng;
use pushbox_fuzz::message::{self, KEY, SECRET};
use serde_json::Value;

struct Fixture {
    rt: tokio::runtime::Runtime,
    api: Api,
    subscriber: Session,
}

fn fixture() -> &'static Mutex<Fixture> {
    static FX: OnceLock<Mutex<Fixture>> = OnceLock::new();
    FX.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let mut c = AppConfig::with_defaults("1", KEY, SECRET);
        c.max_connections = 1_000_000;
        let hub = Arc::new(Hub::new(vec![c], Arc::new(NoObserver)));
        let app = hub.app_by_id("1").expect("app 1").clone();
        let mut subscriber = message::session(&mut Rng::new(1), &app);
        subscriber.handle_text(r#"{"event":"pusher:subscribe","data":{"channel":"orders"}}"#);
        message::drain(&subscriber);
        Mutex::new(Fixture {
            rt,
            api: Api::new(hub, None),
            subscriber,
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let [m, rest @ ..] = data else {
        return;
    };
    let method = ["POST", "GET", "PUT", "DELETE"][*m as usize & 3];
    let mut fields = rest.splitn(3, |&b| b == 0xff);
    let raw_path = String::from_utf8_lossy(fields.next().unwrap_or_default());
    let path = if raw_path.starts_with('/') {
        raw_path.into_owned()
    } else {
        format!("/apps/1/{raw_path}")
    };
    let params = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    let body = fields.next().unwrap_or_default();
    let extra: Vec<(String, String)> = query_pairs(&params)
        .map(|(k, v)| (k.to_ascii_lowercase(), v.into_owned()))
        .filter(|(k, _)| !k.starts_with("auth_") && k != "body_md5")
        .collect();
    let refs: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let query = sign_query(method, &path, KEY, SECRET, now, body, &refs);

    let fx = fixture().lock().unwrap_or_else(|p| p.into_inner());
    let r = fx.rt.block_on(fx.api.handle(ApiRequest {
        method,
        path: &path,
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
    let got = message::drain_frames(&fx.subscriber);
    if r.status != 200 {
        assert!(got.is_empty(), "a refused request delivered {got:?}");
    }
});
