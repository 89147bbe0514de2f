//! The Pusher message parser (`protocol::message`) and the session behind it
//! (`Session::handle_text`: auth checks, presence `channel_data`, signin `user_data`, client
//! events, the hub), with the invariants of `tests/fuzz/message.rs` (`feed`): every frame the
//! session answers is a JSON object with an `event` string, and input that does not parse gets
//! one `pusher:error` and nothing else.
//!
//! Input: messages separated by `0xff` (a byte UTF-8 never holds), fed in order to one
//! session. A message that is a JSON object with `data.channel` (a subscribe) or
//! `data.user_data` (a signin) is also fed a second time with a correct `auth` for this
//! session, so the fuzzer gets past the signature into presence and signin code.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushbox_fuzz::{app, driver, message, with_auth};

fuzz_target!(|data: &[u8]| {
    let mut rng = driver::Rng::new(data.len() as u64);
    let mut stats = driver::Stats::default();
    let mut s = message::session(&mut rng, app());
    let sid = s.socket_id().as_str().to_owned();
    for raw in data.split(|&b| b == 0xff).take(16) {
        let text = String::from_utf8_lossy(raw);
        message::feed(&mut s, &text, None, &mut stats);
        if let Some(signed) = with_auth(&text, &sid) {
            message::feed(&mut s, &signed, None, &mut stats);
        }
    }
});
