//! `SocketId`: the `digits.digits` connection identifier every SDK validates.

use std::fmt;

/// A connection's id, `^\d+\.\d+$`, as sent in `pusher:connection_established`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SocketId(String);

impl SocketId {
    /// A new id from two random non-zero 32-bit halves.
    pub fn random(rng: &dyn ring::rand::SecureRandom) -> SocketId {
        let mut buf = [0u8; 8];
        // SystemRandom only fails when the OS has no entropy source; fall back to the clock.
        if rng.fill(&mut buf).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1);
            buf = nanos.to_le_bytes();
        }
        let a = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]).max(1);
        let b = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]).max(1);
        SocketId(format!("{a}.{b}"))
    }

    /// Parses a socket id as sent by an SDK (`socket_id` on trigger); `None` if malformed.
    pub fn parse(s: &str) -> Option<SocketId> {
        if is_valid(s) {
            Some(SocketId(s.to_owned()))
        } else {
            None
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `^\d+\.\d+$` with each part at most 20 digits.
pub fn is_valid(s: &str) -> bool {
    let Some((a, b)) = s.split_once('.') else {
        return false;
    };
    let ok = |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|c| c.is_ascii_digit());
    ok(a) && ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_have_the_sdk_shape_and_differ() {
        let rng = ring::rand::SystemRandom::new();
        let a = SocketId::random(&rng);
        let b = SocketId::random(&rng);
        assert!(is_valid(a.as_str()), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn validation() {
        assert!(is_valid("1234.1234"));
        assert!(is_valid("0.0"));
        for bad in [
            "",
            ".",
            "1.",
            ".1",
            "1.2.3",
            "a.1",
            "1,2",
            " 1.2",
            "1.2 ",
            "-1.2",
            "123456789012345678901.1",
        ] {
            assert!(!is_valid(bad), "{bad:?}");
        }
        assert!(SocketId::parse("12.34").is_some());
        assert!(SocketId::parse("12").is_none());
    }
}
