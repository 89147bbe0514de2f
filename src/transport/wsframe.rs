//! A server-side WebSocket codec (RFC 6455) sized for the Pusher protocol: it parses client
//! frames out of whatever bytes arrived (unmasking, reassembling fragments, enforcing the
//! message size limit, validating UTF-8 and the control-frame rules) and encodes the short
//! unmasked headers of server frames, so a frame's payload can be written straight from the
//! shared `Frame` bytes with `writev`. It keeps no buffer of its own between messages.
//!
//! The client side is here too, for `pushbox check`'s WebSocket probe: a masked client frame
//! ([`encode_masked`]) and one unmasked server frame ([`decode_server_frame`]). The server's
//! decode path does not go through them.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A complete message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    /// Pushbox refuses binary messages; the bytes are kept for the Autobahn echo endpoint (moved
    /// out of the decoder, not copied).
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
}

/// A violation of the WebSocket protocol; the connection is closed with `close_code()`.
#[derive(Debug, PartialEq, Eq)]
pub enum WsError {
    /// RSV bits without a negotiated extension, an unknown opcode, an unmasked client frame,
    /// a fragmented or oversized control frame, a continuation without a start.
    Protocol(&'static str),
    /// A message above the size limit.
    TooLarge { limit: usize },
    /// A text message that is not UTF-8.
    InvalidUtf8,
}

impl WsError {
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::Protocol(_) => 1002,
            WsError::TooLarge { .. } => 1009,
            WsError::InvalidUtf8 => 1007,
        }
    }
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WsError::Protocol(why) => write!(f, "WebSocket protocol error: {why}"),
            WsError::TooLarge { limit } => write!(f, "WebSocket message larger than {limit} bytes"),
            WsError::InvalidUtf8 => write!(f, "WebSocket text message is not valid UTF-8"),
        }
    }
}

/// Reassembly state between reads (empty and allocation-free when idle).
#[derive(Default)]
pub struct Decoder {
    /// A fragmented data message in progress: (opcode, payload so far).
    fragments: Option<(u8, Vec<u8>)>,
}

struct Header {
    fin: bool,
    opcode: u8,
    len: usize,
    mask: [u8; 4],
    header_len: usize,
}

/// The payload length a frame header announces (7-bit, 16-bit or 64-bit form) and the offset
/// just after it; `None` until those bytes have arrived. `buf` holds at least two bytes.
#[inline]
fn payload_len(buf: &[u8]) -> Option<(u64, usize)> {
    match buf[1] & 0x7f {
        126 => {
            let b = buf.get(2..4)?;
            Some((u64::from(u16::from_be_bytes([b[0], b[1]])), 4))
        }
        127 => {
            let b: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            Some((u64::from_be_bytes(b), 10))
        }
        n => Some((u64::from(n), 2)),
    }
}

fn parse_header(buf: &[u8], limit: usize) -> Result<Option<Header>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(WsError::Protocol("reserved bits set without an extension"));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    if !matches!(
        opcode,
        OP_CONT | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Err(WsError::Protocol("unknown opcode"));
    }
    if b1 & 0x80 == 0 {
        return Err(WsError::Protocol("client frames must be masked"));
    }
    let Some((len, mut at)) = payload_len(buf) else {
        return Ok(None);
    };
    if opcode >= OP_CLOSE {
        if !fin {
            return Err(WsError::Protocol("fragmented control frame"));
        }
        if len > 125 {
            return Err(WsError::Protocol("control frame payload over 125 bytes"));
        }
    }
    if len > limit as u64 {
        return Err(WsError::TooLarge { limit });
    }
    if buf.len() < at + 4 {
        return Ok(None);
    }
    let mask = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
    at += 4;
    Ok(Some(Header {
        fin,
        opcode,
        len: len as usize,
        mask,
        header_len: at,
    }))
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

impl Decoder {
    /// Decodes as many complete frames as `buf` holds; returns the messages and how many bytes
    /// were consumed (the rest is an incomplete frame to keep until more bytes arrive).
    /// `limit` bounds a whole (reassembled) message.
    pub fn decode(
        &mut self,
        buf: &mut [u8],
        limit: usize,
        out: &mut Vec<Incoming>,
    ) -> Result<usize, WsError> {
        let mut pos = 0;
        while let Some(h) = parse_header(&buf[pos..], limit)? {
            let end = pos + h.header_len + h.len;
            if buf.len() < end {
                break;
            }
            let payload = &mut buf[pos + h.header_len..end];
            unmask(payload, h.mask);
            pos = end;
            match h.opcode {
                OP_PING => out.push(Incoming::Ping(payload.to_vec())),
                OP_PONG => out.push(Incoming::Pong),
                OP_CLOSE => {
                    out.push(Incoming::Close(close_code(payload)?));
                    return Ok(pos);
                }
                OP_TEXT | OP_BINARY => {
                    if self.fragments.is_some() {
                        return Err(WsError::Protocol(
                            "new message before the previous one finished",
                        ));
                    }
                    if h.fin {
                        out.push(finish(h.opcode, payload.to_vec())?);
                    } else {
                        self.fragments = Some((h.opcode, payload.to_vec()));
                    }
                }
                _ => {
                    let Some((op, mut data)) = self.fragments.take() else {
                        return Err(WsError::Protocol("continuation frame without a message"));
                    };
                    if data.len() + payload.len() > limit {
                        return Err(WsError::TooLarge { limit });
                    }
                    data.extend_from_slice(payload);
                    if h.fin {
                        out.push(finish(op, data)?);
                    } else {
                        self.fragments = Some((op, data));
                    }
                }
            }
        }
        Ok(pos)
    }
}

/// The status code of a close frame's payload, checked as RFC 6455 §7.4 asks: a code no
/// endpoint may send (0–999, 1004–1006, 1015, the unassigned 1016–2999, 5000 and up) is a
/// protocol error (1002), a reason that is not UTF-8 is 1007. Checked here, once per close,
/// so the answer is never an echo of a code the peer had no right to send.
fn close_code(payload: &[u8]) -> Result<Option<u16>, WsError> {
    let Some((code, reason)) = payload.split_first_chunk::<2>() else {
        return if payload.is_empty() {
            Ok(None)
        } else {
            Err(WsError::Protocol("close frame with a 1-byte payload"))
        };
    };
    let code = u16::from_be_bytes(*code);
    if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
        return Err(WsError::Protocol("close frame with an invalid status code"));
    }
    if std::str::from_utf8(reason).is_err() {
        return Err(WsError::InvalidUtf8);
    }
    Ok(Some(code))
}

fn finish(opcode: u8, data: Vec<u8>) -> Result<Incoming, WsError> {
    if opcode == OP_TEXT {
        String::from_utf8(data)
            .map(Incoming::Text)
            .map_err(|_| WsError::InvalidUtf8)
    } else {
        Ok(Incoming::Binary(data))
    }
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2: base64 of the SHA-1 of
/// the key and the protocol's GUID).
pub fn accept_key(key: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    STANDARD.encode(ctx.finish().as_ref())
}

/// The length of a server frame header for a payload of `len` bytes.
pub fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= u16::MAX as usize {
        4
    } else {
        10
    }
}

/// Writes the header of an unmasked, final server frame into `out`; returns its length.
pub fn encode_header(opcode: u8, len: usize, out: &mut [u8; 10]) -> usize {
    out[0] = 0x80 | opcode;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// A whole small server frame (control frames, close frames, errors).
pub fn encode(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 10];
    let n = encode_header(opcode, payload.len(), &mut h);
    let mut v = Vec::with_capacity(n + payload.len());
    v.extend_from_slice(&h[..n]);
    v.extend_from_slice(payload);
    v
}

/// The answer to a peer's close frame (RFC 6455 §5.5.1): its own code back (the decoder lets
/// only valid ones through), 1000 when it sent none.
pub fn close_reply(code: Option<u16>) -> Vec<u8> {
    close_frame(code.unwrap_or(1000), "")
}

/// A close frame with `code` and a reason cut to fit a control frame.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    p.extend_from_slice(&reason.as_bytes()[..cut]);
    encode(OP_CLOSE, &p)
}

/// Client side: a whole final frame masked with `mask`, as a client must send it.
pub fn encode_masked(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut v = encode(opcode, payload);
    let at = v.len() - payload.len();
    v[1] |= 0x80;
    v.splice(at..at, mask);
    unmask(&mut v[at + 4..], mask);
    v
}

/// One frame from the server, read by a client.
#[derive(Debug, PartialEq, Eq)]
pub struct ServerFrame<'a> {
    pub opcode: u8,
    pub payload: &'a [u8],
    /// The bytes of `buf` the frame took, header included.
    pub used: usize,
}

/// Client side: the unmasked server frame at the start of `buf`; `None` until all of it has
/// arrived. A masked frame or a payload over `limit` is an error.
pub fn decode_server_frame(buf: &[u8], limit: usize) -> Result<Option<ServerFrame<'_>>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[1] & 0x80 != 0 {
        return Err(WsError::Protocol("server frames must not be masked"));
    }
    let Some((len, at)) = payload_len(buf) else {
        return Ok(None);
    };
    if len > limit as u64 {
        return Err(WsError::TooLarge { limit });
    }
    let end = at + len as usize;
    match buf.get(at..end) {
        Some(payload) => Ok(Some(ServerFrame {
            opcode: buf[0] & 0x0f,
            payload,
            used: end,
        })),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut v = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let len = payload.len();
        if len < 126 {
            v.push(0x80 | len as u8);
        } else if len <= 65535 {
            v.push(0x80 | 126);
            v.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            v.push(0x80 | 127);
            v.extend_from_slice(&(len as u64).to_be_bytes());
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        v
    }

    fn decode_all(bytes: &[u8], limit: usize) -> Result<(Vec<Incoming>, usize), WsError> {
        let mut buf = bytes.to_vec();
        let mut d = Decoder::default();
        let mut out = Vec::new();
        let n = d.decode(&mut buf, limit, &mut out)?;
        Ok((out, n))
    }

    #[test]
    fn text_ping_close_in_one_read() {
        let mut bytes = client_frame(true, OP_TEXT, b"{\"event\":\"pusher:ping\"}", [1, 2, 3, 4]);
        bytes.extend(client_frame(true, OP_PING, b"hi", [9, 9, 9, 9]));
        bytes.extend(client_frame(
            true,
            OP_CLOSE,
            &1000u16.to_be_bytes(),
            [5, 6, 7, 8],
        ));
        let (msgs, n) = decode_all(&bytes, 1024).unwrap();
        assert_eq!(n, bytes.len());
        assert_eq!(
            msgs,
            vec![
                Incoming::Text("{\"event\":\"pusher:ping\"}".into()),
                Incoming::Ping(b"hi".to_vec()),
                Incoming::Close(Some(1000))
            ]
        );
    }

    #[test]
    fn every_split_point_yields_the_same_messages() {
        let payload = "x".repeat(300);
        let mut bytes = client_frame(false, OP_TEXT, &payload.as_bytes()[..100], [1, 2, 3, 4]);
        bytes.extend(client_frame(true, OP_PONG, b"", [0, 0, 0, 1]));
        bytes.extend(client_frame(
            true,
            OP_CONT,
            &payload.as_bytes()[100..],
            [4, 3, 2, 1],
        ));
        for split in 0..bytes.len() {
            let mut d = Decoder::default();
            let mut out = Vec::new();
            let mut first = bytes[..split].to_vec();
            let used = d.decode(&mut first, 1024, &mut out).unwrap();
            let mut rest = first[used..].to_vec();
            rest.extend_from_slice(&bytes[split..]);
            let used2 = d.decode(&mut rest, 1024, &mut out).unwrap();
            assert_eq!(used2, rest.len(), "split {split}");
            assert_eq!(
                out,
                vec![Incoming::Pong, Incoming::Text(payload.clone())],
                "split {split}"
            );
            assert!(d.fragments.is_none());
        }
    }

    #[test]
    fn extended_lengths() {
        for len in [125usize, 126, 65535, 65536] {
            let p = vec![b'a'; len];
            let (msgs, _) =
                decode_all(&client_frame(true, OP_TEXT, &p, [7, 7, 7, 7]), 1 << 20).unwrap();
            assert_eq!(msgs, vec![Incoming::Text("a".repeat(len))]);
            let mut h = [0u8; 10];
            let n = encode_header(OP_TEXT, len, &mut h);
            assert_eq!(
                n,
                if len < 126 {
                    2
                } else if len < 65536 {
                    4
                } else {
                    10
                }
            );
        }
    }

    #[test]
    fn protocol_violations() {
        let unmasked = vec![0x81, 0x02, b'h', b'i'];
        assert_eq!(decode_all(&unmasked, 100).unwrap_err().close_code(), 1002);
        let mut rsv = client_frame(true, OP_TEXT, b"x", [1, 1, 1, 1]);
        rsv[0] |= 0x40;
        assert_eq!(decode_all(&rsv, 100).unwrap_err().close_code(), 1002);
        let mut unknown = client_frame(true, OP_TEXT, b"x", [1, 1, 1, 1]);
        unknown[0] = 0x83;
        assert!(decode_all(&unknown, 100).is_err());
        assert!(decode_all(&client_frame(false, OP_PING, b"x", [1, 1, 1, 1]), 100).is_err());
        assert!(decode_all(&client_frame(true, OP_PING, &[0; 126], [1, 1, 1, 1]), 1000).is_err());
        assert!(decode_all(&client_frame(true, OP_CONT, b"x", [1, 1, 1, 1]), 100).is_err());
        let mut two_starts = client_frame(false, OP_TEXT, b"a", [1, 1, 1, 1]);
        two_starts.extend(client_frame(true, OP_TEXT, b"b", [1, 1, 1, 1]));
        assert!(decode_all(&two_starts, 100).is_err());
        assert_eq!(
            decode_all(
                &client_frame(true, OP_TEXT, &[0xff, 0xfe], [1, 2, 3, 4]),
                100
            )
            .unwrap_err(),
            WsError::InvalidUtf8
        );
        assert_eq!(
            decode_all(
                &client_frame(true, OP_TEXT, &[b'a'; 101], [1, 2, 3, 4]),
                100
            )
            .unwrap_err(),
            WsError::TooLarge { limit: 100 }
        );
        // The size limit applies to the reassembled message, and to a header that announces more.
        let mut frags = client_frame(false, OP_TEXT, &[b'a'; 60], [1, 2, 3, 4]);
        frags.extend(client_frame(true, OP_CONT, &[b'a'; 60], [1, 2, 3, 4]));
        assert_eq!(decode_all(&frags, 100).unwrap_err().close_code(), 1009);
        let huge_header = [0x81u8, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            decode_all(&huge_header, 100).unwrap_err().close_code(),
            1009
        );
        assert!(decode_all(&client_frame(true, OP_CLOSE, &[3], [1, 2, 3, 4]), 100).is_err());
    }

    #[test]
    fn close_codes_and_reasons_are_checked() {
        let close =
            |payload: &[u8]| decode_all(&client_frame(true, OP_CLOSE, payload, [9, 8, 7, 6]), 100);
        for code in [1000u16, 1001, 1003, 1007, 1011, 1014, 3000, 4201, 4999] {
            let (msgs, _) = close(&code.to_be_bytes()).unwrap();
            assert_eq!(msgs, vec![Incoming::Close(Some(code))], "{code}");
        }
        for code in [
            0u16, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
        ] {
            assert_eq!(
                close(&code.to_be_bytes()).unwrap_err().close_code(),
                1002,
                "{code}"
            );
        }
        assert_eq!(close(&[]).unwrap().0, vec![Incoming::Close(None)]);
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.extend([0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xff]);
        assert_eq!(close(&bad_reason).unwrap_err(), WsError::InvalidUtf8);
        let mut good_reason = 1000u16.to_be_bytes().to_vec();
        good_reason.extend("κόσμε".as_bytes());
        assert_eq!(
            close(&good_reason).unwrap().0,
            vec![Incoming::Close(Some(1000))]
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x2545F4914F6CDD1Du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            let mut buf: Vec<u8> = (0..len).map(|i| (seed >> (i % 56)) as u8).collect();
            let mut d = Decoder::default();
            let mut out = Vec::new();
            if let Ok(n) = d.decode(&mut buf, 64, &mut out) {
                assert!(n <= len);
            }
        }
    }

    #[test]
    fn accept_key_matches_rfc6455() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        // The standard alphabet, padded, as RFC 6455 asks.
        assert_eq!(STANDARD.encode(b""), "");
        assert_eq!(STANDARD.encode(b"f"), "Zg==");
        assert_eq!(STANDARD.encode(b"fo"), "Zm8=");
        assert_eq!(STANDARD.encode(b"foo"), "Zm9v");
    }

    #[test]
    fn client_side_frames() {
        // A masked close 1000 with a zero mask, as `pushbox check` sends it.
        assert_eq!(
            encode_masked(OP_CLOSE, &1000u16.to_be_bytes(), [0; 4]),
            vec![0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]
        );
        // What a client encodes, the server decodes; what the server encodes, a client decodes.
        for len in [0usize, 5, 125, 126, 300, 65535, 65536] {
            let p: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let masked = encode_masked(OP_BINARY, &p, [9, 8, 7, 6]);
            assert_eq!(masked, client_frame(true, OP_BINARY, &p, [9, 8, 7, 6]));
            let (msgs, n) = decode_all(&masked, 1 << 20).unwrap();
            assert_eq!((msgs, n), (vec![Incoming::Binary(p.clone())], masked.len()));
            let mut wire = encode(OP_TEXT, &p);
            let used = wire.len();
            wire.extend_from_slice(b"next");
            assert_eq!(
                decode_server_frame(&wire, 1 << 20).unwrap(),
                Some(ServerFrame {
                    opcode: OP_TEXT,
                    payload: &p[..],
                    used
                })
            );
            for cut in [0, 1, used - 1] {
                assert_eq!(decode_server_frame(&wire[..cut], 1 << 20).unwrap(), None);
            }
        }
        assert!(decode_server_frame(&encode_masked(OP_TEXT, b"hi", [1, 2, 3, 4]), 100).is_err());
        assert_eq!(
            decode_server_frame(&encode(OP_TEXT, &[b'a'; 101]), 100).unwrap_err(),
            WsError::TooLarge { limit: 100 }
        );
    }

    #[test]
    fn server_frames() {
        assert_eq!(encode(OP_TEXT, b"hi"), vec![0x81, 2, b'h', b'i']);
        let c = close_frame(4201, "Pong reply not received");
        assert_eq!(&c[..4], &[0x88, 25, 0x10, 0x69]);
        let long = "é".repeat(100);
        let c = close_frame(4100, &long);
        assert!(c.len() <= 127);
        assert!(std::str::from_utf8(&c[4..]).is_ok());
    }
}
