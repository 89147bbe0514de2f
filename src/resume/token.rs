//! The resume token: 128 random bits a pusher-js instance puts in its `wsPath` (and `httpPath`)
//! as 32 hex characters, `{path_prefix}/{token}/app/{key}`. The path is fixed for the life of a
//! Pusher instance, so every reconnect of one tab carries the same token and a reload carries a
//! new one (RESUME.md B1): the token names exactly one client's history.

use std::fmt;

/// A parsed token (16 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Token(pub [u8; 16]);

/// Why a path's token was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadToken(pub String);

impl fmt::Display for BadToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Malformed resume token {:?}: use 32 hex characters (128 random bits), e.g. wsPath: '/r/' + a hex string from crypto.getRandomValues(new Uint8Array(16))",
            self.0
        )
    }
}

impl Token {
    /// 32 hex characters (either case).
    pub fn parse(s: &str) -> Result<Token, BadToken> {
        let bad = || BadToken(s.chars().take(64).collect());
        if s.len() != 32 {
            return Err(bad());
        }
        let mut out = [0u8; 16];
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            let hi = hex_val(pair[0]).ok_or_else(bad)?;
            let lo = hex_val(pair[1]).ok_or_else(bad)?;
            out[i] = hi << 4 | lo;
        }
        Ok(Token(out))
    }

    /// Lower-case hex, as stored in the state file.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Splits `{prefix}/{token}{rest}` off a path (after the transport's own `wsPath` / `httpPath`
/// was stripped): `Ok(None)` when the path does not start with the prefix (a client without a
/// token), `Err` when it does but the token is malformed, else the token and the rest
/// (`/app/…`).
pub fn split<'a>(prefix: &str, path: &'a str) -> Result<Option<(Token, &'a str)>, BadToken> {
    let Some(after) = path.strip_prefix(prefix).and_then(|p| p.strip_prefix('/')) else {
        return Ok(None);
    };
    let (token, rest) = after.split_at(after.find('/').unwrap_or(after.len()));
    Token::parse(token).map(|t| Some((t, rest)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "0123456789abcdefABCDEF0123456789";

    #[test]
    fn tokens_are_32_hex_characters() {
        let t = Token::parse(T).unwrap();
        assert_eq!(t.to_hex(), T.to_ascii_lowercase());
        assert!(Token::parse(&T[..31]).is_err());
        assert!(Token::parse(&format!("{T}0")).is_err());
        assert!(Token::parse("g123456789abcdef0123456789abcdef").is_err());
        assert!(Token::parse("").is_err());
        let msg = Token::parse("short").unwrap_err().to_string();
        assert!(msg.contains("32 hex characters"), "{msg}");
    }

    #[test]
    fn split_takes_the_token_after_the_prefix() {
        let path = format!("/r/{T}/app/key");
        let (t, rest) = split("/r", &path).unwrap().unwrap();
        assert_eq!(t, Token::parse(T).unwrap());
        assert_eq!(rest, "/app/key");
        assert_eq!(split("/r", "/app/key").unwrap(), None);
        assert_eq!(split("/r", "/rx/app/key").unwrap(), None);
        assert!(split("/r", "/r/nothex/app/key").is_err());
        assert!(split("/r", "/r//app/key").is_err());
    }
}
