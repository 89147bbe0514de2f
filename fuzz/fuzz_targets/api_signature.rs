//! The HTTP API's signature and query parsing (`protocol::signing`): `query_pairs`,
//! `percent_decode` and `verify` on any query, path and body; then a round trip: the input's
//! path, body and extra parameters signed the way the SDKs sign them (`sign_query`) must
//! verify exactly when the timestamp is within the window, and must stop verifying when one
//! byte of the body changes.
//!
//! Input: `[flags][timestamp offset: 2 bytes] path 0xff query 0xff body (0xff key 0xff value)*`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushbox::protocol::signing::{
    self, percent_decode, query_pairs, sign_query, SignedRequest, SigningError,
};
use pushbox_fuzz::message::{KEY, SECRET};

const NOW: i64 = 1_764_000_000;

fuzz_target!(|data: &[u8]| {
    let [flags, t0, t1, rest @ ..] = data else {
        return;
    };
    let mut fields = rest.split(|&b| b == 0xff).map(String::from_utf8_lossy);
    let path = fields.next().unwrap_or_default();
    let query = fields.next().unwrap_or_default();
    let body = fields.next().unwrap_or_default();
    let method = if flags & 1 == 0 { "GET" } else { "POST" };

    // Any query: parsed, decoded and verified without a panic; a raw input almost never holds
    // a valid HMAC, so only the inputs the fuzzer could not have signed are checked further.
    for (k, v) in query_pairs(&query) {
        let _ = (k.len(), v.len());
    }
    let _ = percent_decode(&path);
    let raw = SignedRequest {
        method,
        path: &path,
        query: &query,
        body: body.as_bytes(),
    };
    if let Err(e) = signing::verify(&raw, KEY, SECRET, NOW) {
        assert!(!e.to_string().is_empty());
    }

    // The round trip.
    let mut extra: Vec<(String, String)> = Vec::new();
    while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
        let k = k.to_ascii_lowercase();
        if !k.starts_with("auth_") && k != "body_md5" {
            extra.push((k, v.into_owned()));
        }
    }
    let refs: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    let offset = i16::from_le_bytes([*t0, *t1]) as i64;
    let ts = match flags >> 1 & 3 {
        0 => NOW + offset,
        1 => i64::MIN + offset.abs(),
        2 => i64::MAX - offset.abs(),
        _ => offset,
    };
    let signed = sign_query(method, &path, KEY, SECRET, ts, body.as_bytes(), &refs);
    let req = SignedRequest {
        query: &signed,
        ..raw
    };
    let verdict = signing::verify(&req, KEY, SECRET, NOW);
    let in_window = ts.abs_diff(NOW) <= 600;
    match &verdict {
        Ok(()) => assert!(in_window, "timestamp {ts} accepted at {NOW}"),
        Err(SigningError::Expired { .. }) => assert!(!in_window, "timestamp {ts} refused"),
        Err(e) => panic!("a query signed like the SDKs sign it was refused: {e} ({signed})"),
    }
    if in_window {
        let mut other = body.as_bytes().to_vec();
        other.push(b'x');
        let changed = SignedRequest {
            body: &other,
            ..req
        };
        assert!(
            signing::verify(&changed, KEY, SECRET, NOW).is_err(),
            "a changed body still verifies"
        );
    }
});
