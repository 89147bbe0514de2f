//! The HTTP fallback's `xhr_send` body (`transport::fallback::parse_send_body`): a JSON array
//! of strings, each a Pusher frame, from anyone who guesses a session URL. A body that parses
//! feeds its frames to a real session, checked as `tests/fuzz/message.rs` (`feed`) checks
//! them; a body that does not parse is an error and nothing else.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushbox::transport::fallback::parse_send_body;
use pushbox_fuzz::{app, driver, message, with_auth};

fuzz_target!(|data: &[u8]| {
    let frames = match parse_send_body(data) {
        Ok(f) => f,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    // What parsed is what a JSON encoder gives back (no frame is lost or changed).
    let again = serde_json::to_vec(&frames).expect("strings serialise");
    assert_eq!(parse_send_body(&again).ok(), Some(frames.clone()));
    let mut rng = driver::Rng::new(data.len() as u64);
    let mut stats = driver::Stats::default();
    let mut s = message::session(&mut rng, app());
    let sid = s.socket_id().as_str().to_owned();
    for text in frames.iter().take(16) {
        message::feed(&mut s, text, None, &mut stats);
        if let Some(signed) = with_auth(text, &sid) {
            message::feed(&mut s, &signed, None, &mut stats);
        }
    }
});
