//! Console sign-in sessions: a cookie holding `scope|expiry|nonce`, HMAC-SHA256-signed with a
//! key drawn at process start (a restart signs everyone out), and the CSRF token derived from
//! it that state-changing requests must echo in a header.

use std::fmt;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::protocol::{hex, unhex};

pub const COOKIE: &str = "pushbox_console";
pub const CSRF_HEADER: &str = "x-pushbox-csrf";

/// Who is signed in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The admin password: every app.
    Admin,
    /// An app's key and secret: that app (by id) only.
    App(String),
}

impl Scope {
    pub fn allows(&self, app_id: &str) -> bool {
        match self {
            Scope::Admin => true,
            Scope::App(id) => id == app_id,
        }
    }
}

/// A verified session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub scope: Scope,
    /// Unix seconds.
    pub expires: u64,
    /// The signed part of the cookie (hex), from which the CSRF token is derived.
    payload: String,
}

/// Why a request is not signed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed,
    BadSignature,
    Expired,
    Csrf,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthError::Missing => "Not signed in: sign in at /console",
            AuthError::Malformed => "Invalid console session cookie: sign in again at /console",
            AuthError::BadSignature => {
                "Console session not valid (was the server restarted?): sign in again at /console"
            }
            AuthError::Expired => "Console session expired: sign in again at /console",
            AuthError::Csrf => {
                "Missing or wrong X-Pushbox-Csrf header: reload /console and try again"
            }
        })
    }
}

/// Issues and checks sessions with this process's key.
pub struct Sessions {
    key: hmac::Key,
    rng: SystemRandom,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new()
    }
}

impl Sessions {
    pub fn new() -> Sessions {
        let rng = SystemRandom::new();
        let mut bytes = [0u8; 32];
        // The system RNG failing leaves a zero key only in a broken OS; still unique per
        // process is not guaranteed then, so mix in the time and pid.
        if rng.fill(&mut bytes).is_err() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            bytes[..16].copy_from_slice(&t.to_le_bytes());
            bytes[16..20].copy_from_slice(&std::process::id().to_le_bytes());
        }
        Sessions {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
            rng,
        }
    }

    /// A cookie value for `scope` valid until `expires` (Unix seconds).
    pub fn issue(&self, scope: &Scope, expires: u64) -> (String, Session) {
        let mut nonce = [0u8; 12];
        let _ = self.rng.fill(&mut nonce);
        let scope_s = match scope {
            Scope::Admin => "*".to_owned(),
            Scope::App(id) => format!("app:{id}"),
        };
        let payload = hex(format!("v1|{scope_s}|{expires}|{}", hex(&nonce)).as_bytes());
        let mac = hex(hmac::sign(&self.key, payload.as_bytes()).as_ref());
        (
            format!("{payload}.{mac}"),
            Session {
                scope: scope.clone(),
                expires,
                payload,
            },
        )
    }

    /// Checks the `Cookie` header(s) of a request at `now` (Unix seconds).
    pub fn verify<'a>(
        &self,
        cookie_headers: impl Iterator<Item = &'a str>,
        now: u64,
    ) -> Result<Session, AuthError> {
        let value = cookie_headers
            .flat_map(|h| h.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| *k == COOKIE)
            .map(|(_, v)| v.trim().trim_matches('"'))
            .ok_or(AuthError::Missing)?;
        let (payload, mac) = value.split_once('.').ok_or(AuthError::Malformed)?;
        let mac = unhex(mac).ok_or(AuthError::Malformed)?;
        hmac::verify(&self.key, payload.as_bytes(), &mac).map_err(|_| AuthError::BadSignature)?;
        let text = unhex(payload)
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(AuthError::Malformed)?;
        let mut parts = text.splitn(4, '|');
        let (Some("v1"), Some(scope), Some(expires), Some(_nonce)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let expires: u64 = expires.parse().map_err(|_| AuthError::Malformed)?;
        if now >= expires {
            return Err(AuthError::Expired);
        }
        let scope = match scope {
            "*" => Scope::Admin,
            s => Scope::App(
                s.strip_prefix("app:")
                    .ok_or(AuthError::Malformed)?
                    .to_owned(),
            ),
        };
        Ok(Session {
            scope,
            expires,
            payload: payload.to_owned(),
        })
    }

    /// The CSRF token of a session (sent to the page, echoed in `X-Pushbox-Csrf`).
    pub fn csrf(&self, session: &Session) -> String {
        let tag = hmac::sign(&self.key, format!("csrf:{}", session.payload).as_bytes());
        hex(&tag.as_ref()[..16])
    }

    /// Checks a request's CSRF header in constant time.
    pub fn check_csrf(&self, session: &Session, header: Option<&str>) -> Result<(), AuthError> {
        let want = self.csrf(session);
        match header {
            Some(h)
                if crate::protocol::auth::constant_time_eq(
                    h.trim().as_bytes(),
                    want.as_bytes(),
                ) =>
            {
                Ok(())
            }
            _ => Err(AuthError::Csrf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_round_trip_and_refuse_tampering() {
        let s = Sessions::new();
        let (v, sess) = s.issue(&Scope::App("42".into()), 1000);
        let header = format!("a=b; {COOKIE}={v}; c=d");
        let got = s.verify([header.as_str()].into_iter(), 999).unwrap();
        assert_eq!(got.scope, Scope::App("42".into()));
        assert_eq!(got, sess);
        assert_eq!(
            s.verify([header.as_str()].into_iter(), 1000),
            Err(AuthError::Expired)
        );
        assert_eq!(s.verify(["a=b"].into_iter(), 0), Err(AuthError::Missing));
        // Flip a payload digit: the MAC no longer matches.
        let mut t = v.clone().into_bytes();
        t[3] = if t[3] == b'0' { b'1' } else { b'0' };
        let t = format!("{COOKIE}={}", String::from_utf8(t).unwrap());
        assert_eq!(
            s.verify([t.as_str()].into_iter(), 0),
            Err(AuthError::BadSignature)
        );
        // Another process (key) does not accept it.
        let other = Sessions::new();
        assert_eq!(
            other.verify([header.as_str()].into_iter(), 0),
            Err(AuthError::BadSignature)
        );
        let bad = format!("{COOKIE}=zz.zz");
        assert_eq!(
            s.verify([bad.as_str()].into_iter(), 0),
            Err(AuthError::Malformed)
        );
        let token = s.csrf(&got);
        assert!(s.check_csrf(&got, Some(&token)).is_ok());
        assert_eq!(s.check_csrf(&got, Some("x")), Err(AuthError::Csrf));
        assert_eq!(s.check_csrf(&got, None), Err(AuthError::Csrf));
        assert!(Scope::Admin.allows("1") && !Scope::App("2".into()).allows("1"));
        assert_eq!(unhex(&hex(b"\x00\xffab")).unwrap(), b"\x00\xffab");
    }
}
