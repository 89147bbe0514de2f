//! The HTTP API behind a valid signature (`api::Api::handle`): event and batch bodies, channel
//! queries and paths, as `tests/fuzz/api.rs` checks them: the answer is a JSON object with a
//! 2xx/4xx status (no event log here, so never 5xx), a 4xx says why in `error`, and a request
//! that is refused delivers nothing to a subscriber of `orders`.
//!
//! Input: `[method] path 0xff query-parameters 0xff body`; the harness signs it with the real
//! clock (the fuzzer cannot), so everything gets past the signature into the parsing behind
//! it. A path that does not start with `/` is put under `/apps/1/`.
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use pushbox::protocol::signing::query_pairs;
use pushbox_fuzz::api::Fixture;

fn fixture() -> &'static Mutex<Fixture> {
    static FX: OnceLock<Mutex<Fixture>> = OnceLock::new();
    FX.get_or_init(|| Mutex::new(Fixture::new()))
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
    // The invariants are `tests/fuzz/api.rs`'s, checked in `Fixture::answer`.
    let fx = fixture().lock().unwrap_or_else(|p| p.into_inner());
    let _ = fx.answer(method, &path, &refs, body);
});
