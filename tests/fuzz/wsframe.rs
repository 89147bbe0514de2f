//! The WebSocket frame decoder (`transport::wsframe`), the first code a stranger's bytes reach.
//!
//! Inputs are streams of client frames built from a model (text and binary messages, some
//! fragmented with control frames between the fragments, pings, pongs, a close at the end;
//! every length form, random masks), then half of them mutated. Invariants:
//! - a valid stream decodes to exactly the messages it was built from (decode ∘ encode = id),
//!   whole or cut anywhere;
//! - any stream, valid or not, decodes to the same messages and the same error whether it
//!   arrives at once or in random pieces (the decoder keeps no hidden state across reads);
//! - what comes out obeys the protocol (control payloads ≤ 125 bytes, messages within the
//!   limit, close codes a peer may send);
//! - server frames (`encode`, `close_frame`) decode back on the client side.

use pushbox::transport::wsframe::{
    self, Decoder, Incoming, WsError, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT,
};

use super::driver::{mutate, Rng, Stats};

/// The message size limit under test: small, so oversized messages are reached too.
const LIMIT: usize = 2048;

/// One client frame, masked, in the length form asked for (RFC 6455 wants the shortest; the
/// decoder must cope with any).
fn frame(rng: &mut Rng, fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask: [u8; 4] = rng.next_u64().to_le_bytes()[..4]
        .try_into()
        .unwrap_or([0; 4]);
    let mut v = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let len = payload.len();
    let form = if len < 126 {
        rng.below(3)
    } else if len <= 0xffff {
        rng.range(1, 2)
    } else {
        2
    };
    match form {
        0 => v.push(0x80 | len as u8),
        1 => {
            v.push(0x80 | 126);
            v.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            v.push(0x80 | 127);
            v.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    v.extend_from_slice(&mask);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    v
}

/// A control frame that may sit between fragments, and what it decodes to.
fn control(rng: &mut Rng) -> (Vec<u8>, Incoming) {
    if rng.chance(50) {
        let n = rng.below(126);
        let p = rng.bytes(n);
        (frame(rng, true, OP_PING, &p), Incoming::Ping(p))
    } else {
        let n = rng.below(126);
        let p = rng.bytes(n);
        (frame(rng, true, OP_PONG, &p), Incoming::Pong)
    }
}

/// A valid stream: its bytes and the messages it must decode to.
fn valid_stream(rng: &mut Rng) -> (Vec<u8>, Vec<Incoming>) {
    let (mut bytes, mut expected) = (Vec::new(), Vec::new());
    for _ in 0..rng.range(1, 5) {
        match rng.below(5) {
            0..=2 => {
                let hi = if rng.chance(10) { 500 } else { 60 };
                let text = rng.text(hi);
                let binary = rng.chance(20);
                let payload = if binary {
                    rng.bytes(text.len())
                } else {
                    text.clone().into_bytes()
                };
                // Split anywhere, even inside a UTF-8 character: validity is checked on the
                // whole message.
                let mut cuts: Vec<usize> = (0..rng.below(4))
                    .map(|_| rng.below(payload.len() + 1))
                    .collect();
                cuts.sort_unstable();
                cuts.dedup();
                let mut start = 0;
                let pieces: Vec<&[u8]> = cuts
                    .iter()
                    .chain(std::iter::once(&payload.len()))
                    .map(|&end| {
                        let p = &payload[start..end.max(start)];
                        start = end.max(start);
                        p
                    })
                    .collect();
                let mut between = Vec::new();
                for (i, piece) in pieces.iter().enumerate() {
                    let op = if i == 0 {
                        if binary {
                            OP_BINARY
                        } else {
                            OP_TEXT
                        }
                    } else {
                        OP_CONT
                    };
                    bytes.extend(frame(rng, i + 1 == pieces.len(), op, piece));
                    if i + 1 < pieces.len() && rng.chance(30) {
                        let (b, m) = control(rng);
                        bytes.extend(b);
                        between.push(m);
                    }
                }
                // Control frames between fragments are delivered before the message they split.
                expected.extend(between);
                expected.push(if binary {
                    Incoming::Binary(payload)
                } else {
                    Incoming::Text(text)
                });
            }
            _ => {
                let (b, m) = control(rng);
                bytes.extend(b);
                expected.push(m);
            }
        }
    }
    if rng.chance(30) {
        let code: u16 = *rng.pick(&[1000, 1001, 1003, 1007, 1011, 1014, 3000, 4100, 4999]);
        let mut p = code.to_be_bytes().to_vec();
        let reason = rng.text(10);
        p.extend_from_slice(&reason.as_bytes()[..reason.len().min(100)]);
        if std::str::from_utf8(&p[2..]).is_ok() {
            bytes.extend(frame(rng, true, OP_CLOSE, &p));
            expected.push(Incoming::Close(Some(code)));
        }
    }
    (bytes, expected)
}

/// What decoding a stream gave: the messages, and how it ended (bytes used, or the error).
pub type Outcome = (Vec<Incoming>, Result<usize, WsError>);

pub fn decode_whole(bytes: &[u8], limit: usize) -> Outcome {
    let mut buf = bytes.to_vec();
    let mut out = Vec::new();
    let r = Decoder::default().decode(&mut buf, limit, &mut out);
    (out, r)
}

/// As the connection task reads: pieces of the sizes `piece` gives (asked with what is left),
/// the unused rest kept for the next.
pub fn decode_in_pieces(
    bytes: &[u8],
    limit: usize,
    mut piece: impl FnMut(usize) -> usize,
) -> Outcome {
    let (mut d, mut out, mut buf) = (Decoder::default(), Vec::new(), Vec::new());
    let (mut pos, mut used_total) = (0, 0);
    while pos < bytes.len() {
        let n = piece(bytes.len() - pos).clamp(1, bytes.len() - pos);
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

/// What comes out obeys the protocol: control payloads ≤ 125 bytes, messages within `limit`,
/// close codes a peer may send.
pub fn check_messages(out: &[Incoming], limit: usize) {
    for m in out {
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
}

/// Server frames decode on the client side, whole and not before they are complete.
fn server_side(rng: &mut Rng, stats: &mut Stats) {
    let n = *rng.pick(&[0usize, 1, 125, 126, 300, 65535, 65536]);
    let payload = rng.bytes(n);
    let mut wire = wsframe::encode(OP_TEXT, &payload);
    let used = wire.len();
    let cut = rng.below(used);
    assert_eq!(
        wsframe::decode_server_frame(&wire[..cut], 1 << 20),
        Ok(None)
    );
    wire.extend_from_slice(b"next");
    let f = wsframe::decode_server_frame(&wire, 1 << 20)
        .expect("a server frame decodes")
        .expect("complete");
    assert_eq!((f.opcode, f.payload, f.used), (OP_TEXT, &payload[..], used));
    let reason = rng.text(80);
    let code = rng.range(3000, 4999) as u16;
    let close = wsframe::close_frame(code, &reason);
    assert!(close.len() <= 127, "a close frame fits a control frame");
    let f = wsframe::decode_server_frame(&close, 125).expect("close decodes");
    let p = f.expect("complete").payload;
    assert_eq!(u16::from_be_bytes([p[0], p[1]]), code);
    assert!(
        reason.as_bytes().starts_with(&p[2..]),
        "the reason is cut, not changed"
    );
    // Arbitrary bytes on the client side: an answer or an error, never a panic.
    let mut junk = wire;
    mutate(rng, &mut junk, &[]);
    let _ = wsframe::decode_server_frame(&junk, 1 << 16);
    stats.add("server_frames");
}

pub fn one(rng: &mut Rng, stats: &mut Stats) {
    let (mut bytes, expected) = valid_stream(rng);
    let mutated = rng.chance(60);
    if mutated {
        mutate(
            rng,
            &mut bytes,
            &[&[0x81, 0xfe], &[0x88, 0x82], &[0x80, 0x80], &[0x7f; 8]],
        );
        stats.add("mutated");
    }
    let whole = decode_whole(&bytes, LIMIT);
    let pieces = decode_in_pieces(&bytes, LIMIT, |left| rng.range(1, left.min(64)));
    assert_eq!(
        whole, pieces,
        "decoding at once and in pieces differ for {bytes:02x?}"
    );
    check_messages(&whole.0, LIMIT);
    if !mutated {
        assert_eq!(whole.1, Ok(bytes.len()), "a valid stream is used up");
        assert_eq!(whole.0, expected, "decode(encode(x)) == x");
    }
    stats.add_n("messages", whole.0.len() as u64);
    if !whole.0.is_empty() {
        stats.add("decoded_a_message");
    }
    match &whole.1 {
        Ok(n) if *n < bytes.len() => stats.add("incomplete_tail"),
        Ok(_) => stats.add("used_up"),
        Err(e) => match e.close_code() {
            1002 => stats.add("error_1002"),
            1007 => stats.add("error_1007"),
            _ => stats.add("error_1009"),
        },
    }
    if rng.chance(10) {
        server_side(rng, stats);
    }
}
