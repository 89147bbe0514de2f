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
use pushbox::transport::wsframe::{self, Decoder, Incoming, WsError};

type Outcome = (Vec<Incoming>, Result<usize, WsError>);

fn whole(bytes: &[u8], limit: usize) -> Outcome {
    let mut buf = bytes.to_vec();
    let mut out = Vec::new();
    let r = Decoder::default().decode(&mut buf, limit, &mut out);
    (out, r)
}

fn in_pieces(bytes: &[u8], limit: usize, mut seed: u8) -> Outcome {
    let (mut d, mut out, mut buf) = (Decoder::default(), Vec::new(), Vec::new());
    let (mut pos, mut used_total) = (0, 0);
    while pos < bytes.len() {
        seed = seed.rotate_left(3) ^ 0x5b;
        let n = (1 + (seed as usize % 37)).min(bytes.len() - pos);
        buf.extend_from_slice(&bytes[pos..pos + n]);
        pos += n;
        match d.decode(&mut buf, limit, &mut out) {
            Err(e) => return (out, Err(e)),
            Ok(used) => {
                assert!(used <= buf.len(), "used {used} of {} bytes", buf.len());
                used_total += used;
                buf.drain(..used);
                if matches!(out.last(), Some(Incoming::Close(_))) {
                    break;
                }
            }
        }
    }
    (out, Ok(used_total))
}

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
    let a = whole(stream, limit);
    let b = in_pieces(stream, limit, *seed);
    assert_eq!(a, b, "decoding at once and in pieces differ");
    if let Ok(used) = a.1 {
        assert!(used <= stream.len());
    }
    for m in &a.0 {
        match m {
            Incoming::Ping(p) => assert!(p.len() <= 125, "ping of {} bytes", p.len()),
            Incoming::Text(t) => assert!(t.len() <= limit),
            Incoming::Binary(b) => assert!(b.len() <= limit),
            Incoming::Close(Some(c)) => assert!(
                matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999),
                "close code {c} let through"
            ),
            Incoming::Close(None) | Incoming::Pong => {}
        }
    }
    if let Err(e) = &a.1 {
        assert!(matches!(e.close_code(), 1002 | 1007 | 1009), "{e:?}");
    }
    if let Ok(Some(f)) = wsframe::decode_server_frame(stream, limit) {
        assert!(f.used <= stream.len() && f.payload.len() <= limit);
    }
});
