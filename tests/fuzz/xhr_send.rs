//! The HTTP fallback's `xhr_send` body (`transport::fallback::parse_send_body`): a JSON array
//! of strings, each a Pusher frame, from anyone who guesses a session URL.
//!
//! Inputs are what pusher-js posts (an array of the messages `message::valid` builds, `[]` as
//! a heartbeat), then 60 % of them mutated. Invariants: an unmutated body parses back to the
//! frames it was built from; a body that parses feeds its frames to a real session, which
//! must answer each with well-formed frames (checked by `message::feed`); a body that does not
//! parse is an error and nothing else.

use std::sync::Arc;

use pushbox::hub::App;
use pushbox::transport::fallback::parse_send_body;

use super::driver::{mutate, Rng, Stats, JSON_TOKENS};
use super::message;

pub fn one(app: &Arc<App>, rng: &mut Rng, stats: &mut Stats) {
    let mut s = message::session(rng, app);
    let sid = s.socket_id().as_str().to_owned();
    let frames: Vec<(String, _)> = (0..rng.below(5))
        .map(|_| message::valid(rng, &sid))
        .collect();
    let texts: Vec<&String> = frames.iter().map(|(t, _)| t).collect();
    let mut body = serde_json::to_vec(&texts).expect("strings serialise");
    let mutated = rng.chance(60);
    if mutated {
        mutate(rng, &mut body, JSON_TOKENS);
    }
    match parse_send_body(&body) {
        Ok(parsed) => {
            stats.add("parsed");
            if !mutated {
                assert_eq!(
                    parsed.iter().collect::<Vec<_>>(),
                    texts,
                    "parse(encode(x)) == x"
                );
            }
            for (i, text) in parsed.iter().enumerate() {
                let expected = (!mutated).then(|| &frames[i].1);
                message::feed(&mut s, text, expected, stats);
            }
            stats.add_n("frames", parsed.len() as u64);
        }
        Err(e) => {
            assert!(mutated, "a body pusher-js sends is refused: {e}");
            assert!(!e.to_string().is_empty());
            stats.add("refused");
        }
    }
}
