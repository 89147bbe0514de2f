//! Fuzzing of the parsers a stranger can reach, on stable Rust, in every `cargo test`: the
//! WebSocket frame decoder, the Pusher message parser and the session behind it, the HTTP
//! API's signature and query parsing and the requests behind a valid signature, the HTTP
//! fallback's `xhr_send` body, and the spool's record decoder with recovery from damaged
//! segment files.
//!
//! Each target builds valid inputs from a model of what real clients (or a real spool) produce,
//! mutates most of them (bytes and protocol tokens), and checks invariants beyond "no panic":
//! what was encoded decodes back, garbage gets an error and nothing else, and a counter per
//! stage shows the inputs got past the first check (asserted, so a generator that stops
//! reaching deep code fails). The driver (`fuzz/driver.rs`) says how to run longer:
//! `FUZZ_SECS=600 cargo test --release --test fuzz -- --nocapture`, and how a failure names the
//! seed to reproduce it.

mod fuzz {
    pub mod api;
    pub mod driver;
    pub mod message;
    pub mod spool;
    pub mod wsframe;
    pub mod xhr_send;
}

use fuzz::driver::run;
use fuzz::{api, message, spool, wsframe, xhr_send};

#[test]
fn fuzz_websocket_frame_decoder() {
    let stats = run("wsframe", 50_000, wsframe::one);
    stats.assert_reached("decoded_a_message", 40);
    stats.assert_reached("mutated", 40);
    for stage in [
        "error_1002",
        "error_1009",
        "incomplete_tail",
        "server_frames",
    ] {
        stats.assert_reached(stage, 1);
    }
}

#[test]
fn fuzz_pusher_message_parser_and_session() {
    let app = message::app();
    let stats = run("message", 50_000, |rng, stats| {
        message::one(&app, rng, stats)
    });
    stats.assert_reached("parsed", 40);
    stats.assert_reached("parse_error", 20);
    // Correctly signed private and presence subscribes and signins got through the auth
    // checks into the hub.
    stats.assert_reached("subscribed", 20);
    stats.assert_reached("presence_joined", 5);
    stats.assert_reached("signed_in", 3);
}

#[test]
fn fuzz_http_api_signature_and_query_parsing() {
    let stats = run("signing", 50_000, api::signature);
    stats.assert_reached("signature_ok", 10);
    stats.assert_reached("signature_expired", 10);
    stats.assert_reached("mutation_refused", 30);
    stats.assert_reached("mutation_same_meaning", 0);
}

#[test]
fn fuzz_http_api_requests_behind_a_valid_signature() {
    let mut fx = api::Fixture::new();
    let stats = run("api", 20_000, |rng, stats| api::handle(&mut fx, rng, stats));
    stats.assert_reached("answer_200", 20);
    stats.assert_reached("answer_400", 10);
    stats.assert_reached("delivered_as_sent", 10);
}

#[test]
fn fuzz_fallback_xhr_send_body() {
    let app = message::app();
    let stats = run("xhr_send", 50_000, |rng, stats| {
        xhr_send::one(&app, rng, stats)
    });
    stats.assert_reached("parsed", 40);
    stats.assert_reached("refused", 20);
    stats.assert_reached("subscribed", 10);
}

#[test]
fn fuzz_spool_records_and_recovery() {
    let stats = run("spool", 2_000, spool::one);
    stats.assert_reached("recovered", 100);
    stats.assert_reached("recovery_reported_damage", 30);
    stats.assert_reached("kept_records_after_damage", 20);
    stats.assert_reached("reader_read", 10);
}
