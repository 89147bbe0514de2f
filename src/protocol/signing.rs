//! HTTP API request signing (PUSHER.md §7.2): `auth_*` query parameters, `body_md5`, the sorted
//! parameter string and HMAC-SHA256 over `METHOD\nPATH\nparams`, with a ±600 s timestamp window.

use super::auth::Secret;
use md5::{Digest, Md5};
use std::borrow::Cow;
use std::fmt;

/// MD5 of the empty body, which the Python SDK signs on every GET.
pub const EMPTY_MD5: &str = "d41d8cd98f00b204e9800998ecf8427e";

/// How far `auth_timestamp` may be from the server's clock.
pub const TIMESTAMP_WINDOW_SECS: i64 = 600;

/// Why a signed request was refused (all answered with 401).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SigningError {
    Missing(&'static str),
    WrongKey,
    BadVersion(String),
    BadTimestamp,
    Expired { timestamp: i64, now: i64 },
    BodyMd5Missing,
    BodyMd5Mismatch,
    BadSignature { string_to_sign: String },
}

impl fmt::Display for SigningError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SigningError::Missing(p) => write!(f, "Missing query parameter {p}: sign the request with a Pusher SDK"),
            SigningError::WrongKey => write!(f, "Invalid auth_key: it does not belong to this app id; check the app id and key the client uses"),
            SigningError::BadVersion(v) => write!(f, "Unsupported auth_version {v:?}: use 1.0"),
            SigningError::BadTimestamp => write!(f, "Invalid auth_timestamp: expected Unix seconds"),
            SigningError::Expired { timestamp, now } => write!(
                f,
                "Timestamp expired: Given timestamp ({timestamp}) not within 600s of server time ({now}); check the clocks of the sender and this server (NTP)"
            ),
            SigningError::BodyMd5Missing => write!(f, "Missing body_md5 for a request with a body"),
            SigningError::BodyMd5Mismatch => write!(f, "Invalid body_md5: it is not the MD5 of the body received (was the body changed by a proxy?)"),
            SigningError::BadSignature { string_to_sign } => write!(
                f,
                "Invalid signature: you should have sent HmacSHA256Hex({string_to_sign:?}, your_secret_key); check the app secret (and any proxy path prefix)"
            ),
        }
    }
}

impl std::error::Error for SigningError {}

/// A request as received: method, the raw request path, the raw query string, and the body.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub body: &'a [u8],
}

/// Lowercase hex MD5.
pub fn md5_hex(bytes: &[u8]) -> String {
    super::hex(&Md5::digest(bytes))
}

/// Builds the string to sign from decoded, lowercased params (without `auth_signature`),
/// sorted by key (then value) and joined `k=v` with `&`.
pub fn string_to_sign<K: AsRef<str>, V: AsRef<str>>(
    method: &str,
    path: &str,
    params: &[(K, V)],
) -> String {
    let mut sorted: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_ref(), v.as_ref()))
        .collect();
    sorted.sort_unstable();
    let len = method.len()
        + path.len()
        + 2
        + sorted
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>();
    let mut out = String::with_capacity(len);
    out.push_str(method);
    out.make_ascii_uppercase();
    out.push('\n');
    out.push_str(path);
    out.push('\n');
    for (i, (k, v)) in sorted.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// The query's `key=value` pairs, percent- and `+`-decoded like `application/x-www-form-urlencoded`;
/// borrowed from `query` unless a pair needs decoding (the SDKs mostly send plain values).
pub fn query_pairs(query: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode_component(k), decode_component(v))
    })
}

fn decode_component(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b == b'%' || b == b'+') {
        let bytes: Vec<u8> = form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned().into_bytes())
            .unwrap_or_default();
        Cow::Owned(String::from_utf8_lossy(&bytes).into_owned())
    } else {
        Cow::Borrowed(s)
    }
}

/// Verifies `req` for the app with `key` and `secret` at Unix time `now`.
pub fn verify<S: Secret + ?Sized>(
    req: &SignedRequest<'_>,
    key: &str,
    secret: &S,
    now: i64,
) -> Result<(), SigningError> {
    let mut params: Vec<(Cow<'_, str>, Cow<'_, str>)> = Vec::with_capacity(8);
    let mut signature: Option<Cow<'_, str>> = None;
    for (k, v) in query_pairs(req.query) {
        let k = if k.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(k.to_ascii_lowercase())
        } else {
            k
        };
        if k == "auth_signature" {
            signature = Some(v);
        } else {
            params.push((k, v));
        }
    }
    let get = |name: &'static str| -> Result<&str, SigningError> {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_ref())
            .ok_or(SigningError::Missing(name))
    };
    let signature = signature.ok_or(SigningError::Missing("auth_signature"))?;
    if get("auth_key")? != key {
        return Err(SigningError::WrongKey);
    }
    let version = get("auth_version")?;
    if version != "1.0" {
        return Err(SigningError::BadVersion(version.to_owned()));
    }
    let timestamp: i64 = get("auth_timestamp")?
        .trim()
        .parse()
        .map_err(|_| SigningError::BadTimestamp)?;

    match params.iter().find(|(k, _)| k == "body_md5") {
        Some((_, md5)) => {
            let expected = if req.body.is_empty() {
                EMPTY_MD5.to_owned()
            } else {
                md5_hex(req.body)
            };
            if !md5.eq_ignore_ascii_case(&expected) {
                return Err(SigningError::BodyMd5Mismatch);
            }
        }
        None if !req.body.is_empty() => return Err(SigningError::BodyMd5Missing),
        None => {}
    }

    let sts = string_to_sign(req.method, req.path, &params);
    let mut ok = secret.verify_hex(sts.as_bytes(), &signature);
    if !ok {
        // Channel names in paths may arrive percent-encoded; the SDK signed the raw name.
        let decoded = percent_decode(req.path);
        if decoded != req.path {
            let alt = string_to_sign(req.method, &decoded, &params);
            ok = secret.verify_hex(alt.as_bytes(), &signature);
        }
    }
    if !ok {
        return Err(SigningError::BadSignature {
            string_to_sign: sts,
        });
    }
    // `abs_diff`: `(timestamp - now).abs()` overflowed for a timestamp near `i64::MIN` (a
    // panic in a debug build, and in a release build a wrapped difference that passed the
    // window check). Found by tests/fuzz.rs.
    if timestamp.abs_diff(now) > TIMESTAMP_WINDOW_SECS.unsigned_abs() {
        return Err(SigningError::Expired { timestamp, now });
    }
    Ok(())
}

/// Percent-decodes a path (no `+` handling: that is a query convention).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hi = (bytes[i + 1] as char).to_digit(16);
            let lo = (bytes[i + 2] as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hi, lo) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Signs a request the way the SDKs do (used by `pushbox trigger` and tests): returns the query
/// string including `auth_signature`.
pub fn sign_query(
    method: &str,
    path: &str,
    key: &str,
    secret: &str,
    timestamp: i64,
    body: &[u8],
    extra: &[(&str, &str)],
) -> String {
    let mut params: Vec<(String, String)> = vec![
        ("auth_key".into(), key.into()),
        ("auth_timestamp".into(), timestamp.to_string()),
        ("auth_version".into(), "1.0".into()),
    ];
    if !body.is_empty() {
        params.push(("body_md5".into(), md5_hex(body)));
    }
    for (k, v) in extra {
        params.push(((*k).to_owned(), (*v).to_owned()));
    }
    let sts = string_to_sign(method, path, &params);
    let sig = super::auth::sign(secret, sts.as_bytes());
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &params {
        ser.append_pair(k, v);
    }
    ser.append_pair("auth_signature", &sig);
    ser.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";
    const TS: i64 = 1353088179;

    #[test]
    fn post_vector() {
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(md5_hex(body), "ec365a775a4cd0599faeb73354201b6f");
        let q = "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f&auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";
        let req = SignedRequest {
            method: "POST",
            path: "/apps/3/events",
            query: q,
            body,
        };
        assert_eq!(verify(&req, KEY, SECRET, TS), Ok(()));
        assert_eq!(verify(&req, KEY, SECRET, TS + 600), Ok(()));
        assert!(matches!(
            verify(&req, KEY, SECRET, TS + 601),
            Err(SigningError::Expired { .. })
        ));
        assert!(matches!(
            verify(&req, KEY, SECRET, TS - 601),
            Err(SigningError::Expired { .. })
        ));
        assert!(matches!(
            verify(&req, KEY, "wrong", TS),
            Err(SigningError::BadSignature { .. })
        ));
        assert_eq!(
            verify(&req, "otherkey", SECRET, TS),
            Err(SigningError::WrongKey)
        );
        let tampered = SignedRequest { body: b"{}", ..req };
        assert_eq!(
            verify(&tampered, KEY, SECRET, TS),
            Err(SigningError::BodyMd5Mismatch)
        );
    }

    #[test]
    fn timestamps_at_the_ends_of_i64_are_expired_not_a_panic() {
        // Regression (tests/fuzz.rs): `(timestamp - now).abs()` overflowed here; in a release
        // build `i64::MIN + now` wrapped to a difference that passed the window.
        for ts in [i64::MIN, i64::MIN + TS, i64::MAX, i64::MAX - 5, TS + 601] {
            let q = sign_query("GET", "/apps/3/channels", KEY, SECRET, ts, b"", &[]);
            let req = SignedRequest {
                method: "GET",
                path: "/apps/3/channels",
                query: &q,
                body: b"",
            };
            assert!(
                matches!(
                    verify(&req, KEY, SECRET, TS),
                    Err(SigningError::Expired { .. })
                ),
                "{ts}"
            );
        }
    }

    #[test]
    fn get_vectors_node_and_python() {
        let node = "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&filter_by_prefix=presence-&info=user_count&auth_signature=16819168891cb5dfd72b5c7a5d3d602605b26c6ba1930033b5e2eeeb65010291";
        let req = SignedRequest {
            method: "GET",
            path: "/apps/3/channels",
            query: node,
            body: b"",
        };
        assert_eq!(verify(&req, KEY, SECRET, TS), Ok(()));
        let python = "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=d41d8cd98f00b204e9800998ecf8427e&filter_by_prefix=presence-&info=user_count&auth_signature=f3f17c61ae491cc9085db68b22076e9b772e3bcb301659d655153ee3f9782aba";
        let req = SignedRequest {
            query: python,
            ..req
        };
        assert_eq!(verify(&req, KEY, SECRET, TS), Ok(()));
    }

    #[test]
    fn percent_encoded_query_like_guzzle() {
        // PHP sends `,` as %2C and the signature over the decoded value.
        let params = vec![
            ("auth_key".to_owned(), KEY.to_owned()),
            ("auth_timestamp".to_owned(), TS.to_string()),
            ("auth_version".to_owned(), "1.0".to_owned()),
            (
                "info".to_owned(),
                "user_count,subscription_count".to_owned(),
            ),
        ];
        let sig = crate::protocol::auth::sign(
            SECRET,
            string_to_sign("GET", "/apps/3/channels/presence-x", &params).as_bytes(),
        );
        let q = format!("auth_key={KEY}&auth_timestamp={TS}&auth_version=1.0&info=user_count%2Csubscription_count&auth_signature={sig}");
        let req = SignedRequest {
            method: "GET",
            path: "/apps/3/channels/presence-x",
            query: &q,
            body: b"",
        };
        assert_eq!(verify(&req, KEY, SECRET, TS), Ok(()));
    }

    #[test]
    fn encoded_path_retry() {
        let q = sign_query("GET", "/apps/3/channels/a;b@c", KEY, SECRET, TS, b"", &[]);
        let req = SignedRequest {
            method: "GET",
            path: "/apps/3/channels/a%3Bb%40c",
            query: &q,
            body: b"",
        };
        assert_eq!(verify(&req, KEY, SECRET, TS), Ok(()));
    }

    #[test]
    fn missing_and_malformed_params() {
        let body = b"{}";
        let full = sign_query("POST", "/apps/3/events", KEY, SECRET, TS, body, &[]);
        for drop in [
            "auth_key",
            "auth_timestamp",
            "auth_version",
            "auth_signature",
            "body_md5",
        ] {
            let q: Vec<&str> = full
                .split('&')
                .filter(|p| !p.starts_with(&format!("{drop}=")))
                .collect();
            let q = q.join("&");
            let req = SignedRequest {
                method: "POST",
                path: "/apps/3/events",
                query: &q,
                body,
            };
            assert!(
                verify(&req, KEY, SECRET, TS).is_err(),
                "dropping {drop} must fail"
            );
        }
        let q = full.replace("auth_version=1.0", "auth_version=2.0");
        let req = SignedRequest {
            method: "POST",
            path: "/apps/3/events",
            query: &q,
            body,
        };
        assert!(matches!(
            verify(&req, KEY, SECRET, TS),
            Err(SigningError::BadVersion(_))
        ));
        let q = full.replace(&format!("auth_timestamp={TS}"), "auth_timestamp=abc");
        let req = SignedRequest {
            method: "POST",
            path: "/apps/3/events",
            query: &q,
            body,
        };
        assert!(verify(&req, KEY, SECRET, TS).is_err());
        let req = SignedRequest {
            method: "POST",
            path: "/apps/3/events",
            query: "",
            body,
        };
        assert_eq!(
            verify(&req, KEY, SECRET, TS),
            Err(SigningError::Missing("auth_signature"))
        );
        let req = SignedRequest {
            method: "POST",
            path: "/apps/3/events",
            query: "%zz=%%&&=",
            body,
        };
        assert!(verify(&req, KEY, SECRET, TS).is_err());
        // A GET with a body_md5 that is not the empty MD5 is refused.
        let q = sign_query(
            "GET",
            "/apps/3/channels",
            KEY,
            SECRET,
            TS,
            b"",
            &[("body_md5", "00000000000000000000000000000000")],
        );
        let req = SignedRequest {
            method: "GET",
            path: "/apps/3/channels",
            query: &q,
            body: b"",
        };
        assert_eq!(
            verify(&req, KEY, SECRET, TS),
            Err(SigningError::BodyMd5Mismatch)
        );
        assert!(SigningError::Expired {
            timestamp: 1,
            now: 700
        }
        .to_string()
        .contains("Timestamp expired"));
    }

    #[test]
    fn percent_decode_is_total() {
        assert_eq!(percent_decode("a%3Bb"), "a;b");
        assert_eq!(percent_decode("a%3"), "a%3");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
    }
}

#[cfg(test)]
mod query_tests {
    use super::*;

    #[test]
    fn query_pairs_decode_only_what_needs_it() {
        let pairs: Vec<(Cow<'_, str>, Cow<'_, str>)> =
            query_pairs("a=1&info=user_count%2Csubscription_count&b=x+y&&c&d=e=f&%41=%zz")
                .collect();
        let plain: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_ref()))
            .collect();
        assert_eq!(
            plain,
            [
                ("a", "1"),
                ("info", "user_count,subscription_count"),
                ("b", "x y"),
                ("c", ""),
                ("d", "e=f"),
                ("A", "%zz")
            ]
        );
        assert!(matches!(pairs[0].0, Cow::Borrowed(_)) && matches!(pairs[0].1, Cow::Borrowed(_)));
        // Agrees with form_urlencoded on everything it returns.
        let q = "x=%E2%9C%93&y=%FF&z=a%20b";
        let ours: Vec<(String, String)> = query_pairs(q)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let theirs: Vec<(String, String)> =
            form_urlencoded::parse(q.as_bytes()).into_owned().collect();
        assert_eq!(ours, theirs);
    }
}
