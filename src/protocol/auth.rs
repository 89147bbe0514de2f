//! Auth signatures (PUSHER.md §5): `key:hex(HMAC-SHA256(secret, string_to_sign))` for private,
//! presence and signin, compared in constant time; and the constant-time comparison of the other
//! secrets pushbox checks ([`constant_time_eq`]).

use ring::hmac;

/// Lowercase hex HMAC-SHA256 of `msg` keyed with `secret`.
pub fn sign(secret: &str, msg: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    super::hex(hmac::sign(&key, msg).as_ref())
}

/// An app secret whose HMAC key schedule (the hashed inner and outer pads) is computed once,
/// when the app is loaded, instead of on every signed request.
pub struct MacKey(hmac::Key);

impl MacKey {
    pub fn new(secret: &str) -> MacKey {
        MacKey(hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()))
    }
}

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(..)") // never the secret
    }
}

/// Something that checks HMAC-SHA256 signatures: a secret as configured, or its [`MacKey`].
pub trait Secret {
    /// True when `hex_sig` is the HMAC of `msg` (constant-time comparison of the raw MACs).
    fn verify_hex(&self, msg: &[u8], hex_sig: &str) -> bool;
}

impl Secret for str {
    fn verify_hex(&self, msg: &[u8], hex_sig: &str) -> bool {
        MacKey::new(self).verify_hex(msg, hex_sig)
    }
}

impl Secret for MacKey {
    fn verify_hex(&self, msg: &[u8], hex_sig: &str) -> bool {
        let Some(sig) = super::unhex(hex_sig) else {
            return false;
        };
        hmac::verify(&self.0, msg, &sig).is_ok()
    }
}

/// Compares two secrets (a bearer token, a console password, a CSRF token) in time independent
/// of where they differ: the one constant-time comparison of pushbox's own secrets.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // HMAC both under a throwaway key, then compare the tags in constant time (ring's
    // `hmac::verify`): the lengths of the inputs do not leak through an early return either.
    let rng = ring::rand::SystemRandom::new();
    let Ok(key) = hmac::Key::generate(hmac::HMAC_SHA256, &rng) else {
        return false;
    };
    let tag = hmac::sign(&key, b);
    hmac::verify(&key, a, tag.as_ref()).is_ok()
}

/// Why an `auth` string was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed,
    WrongKey,
    BadSignature,
}

impl AuthError {
    pub fn describe(&self, string_to_sign: &str) -> String {
        match self {
            AuthError::Missing => "Auth value for subscription to a private or presence channel is missing: the app's auth endpoint must return {\"auth\":\"key:signature\"}".to_owned(),
            AuthError::Malformed => "Invalid auth value: expected \"app_key:hex_signature\"".to_owned(),
            AuthError::WrongKey => "Invalid key in auth value: it was signed for another app key".to_owned(),
            AuthError::BadSignature => format!(
                "Invalid signature: Expected HMAC SHA256 hex digest of {string_to_sign}; check that the auth endpoint uses this app's secret"
            ),
        }
    }
}

/// Checks `auth` (`"{key}:{hex}"`) against `app_key` and the HMAC of `string_to_sign`.
pub fn verify_auth<S: Secret + ?Sized>(
    app_key: &str,
    secret: &S,
    auth: Option<&str>,
    string_to_sign: &str,
) -> Result<(), AuthError> {
    let auth = match auth {
        None | Some("") => return Err(AuthError::Missing),
        Some(a) => a,
    };
    let (key, sig) = auth.split_once(':').ok_or(AuthError::Malformed)?;
    if sig.len() != 64 {
        return Err(AuthError::Malformed);
    }
    // The key is public; comparing it in constant time is not needed, the signature is.
    if key != app_key {
        return Err(AuthError::WrongKey);
    }
    if secret.verify_hex(string_to_sign.as_bytes(), sig) {
        Ok(())
    } else {
        Err(AuthError::BadSignature)
    }
}

pub fn private_string(socket_id: &str, channel: &str) -> String {
    format!("{socket_id}:{channel}")
}

pub fn presence_string(socket_id: &str, channel: &str, channel_data: &str) -> String {
    format!("{socket_id}:{channel}:{channel_data}")
}

pub fn signin_string(socket_id: &str, user_data: &str) -> String {
    format!("{socket_id}::user::{user_data}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";

    #[test]
    fn mac_key_verifies_like_the_secret_it_was_made_from() {
        let msg = b"1234.1234:private-foobar";
        let good = "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4";
        let key = MacKey::new(SECRET);
        assert!(key.verify_hex(msg, good));
        assert!(SECRET.verify_hex(msg, good));
        assert!(!key.verify_hex(b"1234.1234:private-other", good));
        assert!(!MacKey::new("another secret").verify_hex(msg, good));
        assert!(!key.verify_hex(msg, "not hex"));
        assert!(!key.verify_hex(msg, &good[..62]));
        assert_eq!(format!("{key:?}"), "MacKey(..)");
    }

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd") && !constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn private_vector() {
        let s = private_string("1234.1234", "private-foobar");
        assert_eq!(
            sign(SECRET, s.as_bytes()),
            "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        let auth =
            format!("{KEY}:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4");
        assert_eq!(verify_auth(KEY, SECRET, Some(&auth), &s), Ok(()));
    }

    #[test]
    fn presence_vector() {
        let s = presence_string(
            "1234.1234",
            "presence-foobar",
            r#"{"user_id":"10","user_info":{"name":"Mr. Channels"}}"#,
        );
        assert_eq!(
            sign(SECRET, s.as_bytes()),
            "4c6d8fc42a207ba96a0779844171b0bb819d96ffceef9609f5cce596ab17a800"
        );
    }

    #[test]
    fn encrypted_channel_uses_private_formula() {
        let s = private_string("1234.1234", "private-encrypted-foobar");
        assert_eq!(
            sign(SECRET, s.as_bytes()),
            "e6a18892d037c5d5e76a2265df4f086ffc38631605530dfd214aa5bff495f533"
        );
    }

    #[test]
    fn signin_vector() {
        let s = signin_string("1234.1234", r#"{"id":"12345"}"#);
        assert_eq!(
            sign(SECRET, s.as_bytes()),
            "4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba"
        );
    }

    #[test]
    fn refusals() {
        let s = private_string("1234.1234", "private-foobar");
        let good = "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4";
        assert_eq!(verify_auth(KEY, SECRET, None, &s), Err(AuthError::Missing));
        assert_eq!(
            verify_auth(KEY, SECRET, Some(""), &s),
            Err(AuthError::Missing)
        );
        assert_eq!(
            verify_auth(KEY, SECRET, Some(good), &s),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            verify_auth(KEY, SECRET, Some(&format!("{KEY}:{}", &good[..63])), &s),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            verify_auth(KEY, SECRET, Some(&format!("otherkey:{good}")), &s),
            Err(AuthError::WrongKey)
        );
        let flipped = format!("{KEY}:{}0", &good[..63]);
        assert_eq!(
            verify_auth(KEY, SECRET, Some(&flipped), &s),
            Err(AuthError::BadSignature)
        );
        let nonhex = format!("{KEY}:{}", "z".repeat(64));
        assert_eq!(
            verify_auth(KEY, SECRET, Some(&nonhex), &s),
            Err(AuthError::BadSignature)
        );
        // Uppercase hex of the right MAC is the same MAC.
        let upper = format!("{KEY}:{}", good.to_uppercase());
        assert_eq!(verify_auth(KEY, SECRET, Some(&upper), &s), Ok(()));
        assert!(AuthError::BadSignature
            .describe(&s)
            .contains("1234.1234:private-foobar"));
    }
}
