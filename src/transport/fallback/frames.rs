//! The SockJS-style lines pusher-js reads from a fallback receive response (PUSHER.md §9.3):
//! `o`, `a[...]`, `h`, `c[code,"reason"]`, each ending in `\n`. Lines are pure ASCII (every
//! non-ASCII character is `\u`-escaped), so the byte count the server tracks for the 256 KiB
//! stream rollover equals the `responseText.length` pusher-js compares against.

use bytes::Bytes;

use crate::protocol::Frame;

/// Session opened; sent once per session, never on a resumed stream.
pub const OPEN: &[u8] = b"o\n";
/// Heartbeat.
pub const HEARTBEAT: &[u8] = b"h\n";
/// Streaming prelude: 2048 `h` and a newline, for proxies and old browsers that buffer the
/// first bytes of a response. pusher-js reads it as one heartbeat line.
pub static PRELUDE: [u8; 2049] = {
    let mut p = [b'h'; 2049];
    p[2048] = b'\n';
    p
};

/// Appends `s` as a JSON string literal with only ASCII bytes.
pub fn push_json_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 || (c as u32) >= 0x7f => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.extend_from_slice(b"\\u");
                    for shift in [12, 8, 4, 0] {
                        out.push(HEX[usize::from((*u >> shift) & 0xf)]);
                    }
                }
            }
            // Printable ASCII: the match above covers everything else.
            c => out.push(c as u8),
        }
    }
    out.push(b'"');
}

/// `a["frame", …]\n`; nothing when there are no frames.
pub fn push_array(out: &mut Vec<u8>, frames: &[Frame]) {
    if frames.is_empty() {
        return;
    }
    out.extend_from_slice(b"a[");
    for (i, f) in frames.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_json_string(out, f.as_str());
    }
    out.extend_from_slice(b"]\n");
}

/// `c[code,"reason"]\n`.
pub fn push_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    out.extend_from_slice(format!("c[{code},").as_bytes());
    push_json_string(out, reason);
    out.extend_from_slice(b"]\n");
}

/// The whole body of a refused receive request: `o`, the `pusher:error` frame, the close.
pub fn refusal(error: &Frame, code: u16, reason: &str) -> Bytes {
    let mut out = OPEN.to_vec();
    push_array(&mut out, std::slice::from_ref(error));
    push_close(&mut out, code, reason);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_are_ascii_json_arrays_of_strings() {
        let frames = [
            Frame::from("{\"event\":\"x\",\"data\":\"{\\\"a\\\":\\\"é😀\\n\\\"}\"}"),
            Frame::from("plain"),
        ];
        let mut out = Vec::new();
        push_array(&mut out, &frames);
        assert!(out.is_ascii());
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(&out[..1], b"a");
        let parsed: Vec<String> = serde_json::from_slice(&out[1..]).unwrap();
        assert_eq!(parsed, [frames[0].as_str(), "plain"]);
    }

    #[test]
    fn control_characters_and_close_lines() {
        let mut out = Vec::new();
        push_close(&mut out, 4200, "bye \"now\"\u{1}\u{2028}");
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, "c[4200,\"bye \\\"now\\\"\\u0001\\u2028\"]\n");
        let v: serde_json::Value = serde_json::from_str(&text[1..]).unwrap();
        assert_eq!(v[1], "bye \"now\"\u{1}\u{2028}");
    }

    #[test]
    fn refusal_body() {
        let b = refusal(&Frame::from("{\"event\":\"pusher:error\"}"), 4001, "no");
        assert_eq!(
            &b[..],
            b"o\na[\"{\\\"event\\\":\\\"pusher:error\\\"}\"]\nc[4001,\"no\"]\n"
        );
        assert_eq!(PRELUDE.len(), 2049);
        assert!(PRELUDE[..2048].iter().all(|&c| c == b'h'));
    }
}
