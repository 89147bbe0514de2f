//! The Pusher Channels protocol as pure types and rules: client and server messages, channel
//! names and kinds, socket ids, auth signatures (HMAC-SHA256), HTTP API request signing, and the
//! close/error codes. Nothing here does I/O or knows about tokio; every other module builds on it.

pub mod auth;
pub mod channel;
pub mod codes;
pub mod frame;
mod hex;
pub mod message;
pub mod presence;
pub mod signing;
pub mod socket_id;

pub use channel::{ChannelKind, ChannelNameError};
pub use codes::CloseCode;
pub use frame::Frame;
pub use hex::{hex, unhex};
pub use message::{ClientMessage, MessageError};
pub use socket_id::SocketId;

/// Appends `s` to `out` as a JSON string literal (with quotes and escapes).
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    let bytes = s.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let esc: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0x08 => Some("\\b"),
            0x0c => Some("\\f"),
            0..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match esc {
            Some(e) => out.push_str(e),
            None => {
                out.push_str("\\u00");
                out.push_str(&hex(&[b]));
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// `s` as a JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_json_str(&mut out, s);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_str_escapes_like_serde() {
        for s in [
            "plain",
            "quote\" back\\slash",
            "ctl\u{1}\u{1f}\n\r\t\u{8}\u{c}",
            "unicode ü 漢字 😀",
            "</script>",
            "",
        ] {
            let ours = json_str(s);
            let back: String = serde_json::from_str(&ours).unwrap();
            assert_eq!(back, s);
            assert_eq!(ours, serde_json::to_string(s).unwrap());
        }
    }
}
