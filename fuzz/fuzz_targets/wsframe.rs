//! The WebSocket frame decoder (`transport::wsframe`), the first code a stranger's bytes reach.
//!
//! Input: `[cut seed][limit byte][stream...]`. The stream is decoded whole and again in pieces
//! whose sizes come from the seed (as the connection task reads); both must give the same
//! messages and the same ending (the decoder keeps no hidden state across reads), every
//! message must obey the protocol (control payloads ≤ 125 bytes, messages within the limit,
//! close codes a peer may send), and the bytes used never exceed the bytes given. The same
//! bytes are also decoded as server frames (the client side of `pushbox` tools).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushbox::transport::wsframe;
use pushbox_fuzz::wsframe::{check_messages, decode_in_pieces, decode_whole};

fuzz_target!(|data: &[u8]| {
    let [seed, limit, stream @ ..] = data else {
        return;
    };
    // Small limits reach the "too large" paths; 0 maps to pushbox's real 64 KiB ceiling.
    let limit = if *limit == 0 {
        65_536
    } else {
        *limit as usize * 8
    };
    // Piece sizes from the seed, as the connection task reads; the checks are the stable
    // driver's (`tests/fuzz/wsframe.rs`).
    let mut seed = *seed;
    let a = decode_whole(stream, limit);
    let b = decode_in_pieces(stream, limit, |_| {
        seed = seed.rotate_left(3) ^ 0x5b;
        1 + (seed as usize % 37)
    });
    assert_eq!(a, b, "decoding at once and in pieces differ");
    if let Ok(used) = a.1 {
        assert!(used <= stream.len());
    }
    check_messages(&a.0, limit);
    if let Err(e) = &a.1 {
        assert!(matches!(e.close_code(), 1002 | 1007 | 1009), "{e:?}");
    }
    if let Ok(Some(f)) = wsframe::decode_server_frame(stream, limit) {
        assert!(f.used <= stream.len() && f.payload.len() <= limit);
    }
});
