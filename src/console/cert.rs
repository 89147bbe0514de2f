//! The TLS certificate's expiry for the console: the first certificate of the configured PEM
//! chain, read with a bounds-checked DER walk down to `tbsCertificate.validity.notAfter`.

use std::path::Path;

/// The first certificate's `notAfter`, Unix seconds.
pub fn not_after(path: &Path) -> Result<i64, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let der = CertificateDer::pem_slice_iter(&pem)
        .next()
        .ok_or_else(|| format!("{}: no PEM certificate in the file", path.display()))?
        .map_err(|e| format!("{}: {e:?}", path.display()))?;
    not_after_der(&der).map_err(|e| format!("{}: {e}", path.display()))
}

fn tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let err = || "truncated or malformed DER".to_owned();
    let (&tag, rest) = input.split_first().ok_or_else(err)?;
    let (&first, rest) = rest.split_first().ok_or_else(err)?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err(err());
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err(err());
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version?, serial, signature,
/// issuer, validity SEQUENCE { notBefore, notAfter }, … }, … }`.
pub fn not_after_der(der: &[u8]) -> Result<i64, String> {
    let (tag, cert, _) = tlv(der)?;
    let (tag2, mut tbs, _) = tlv(cert)?;
    if tag != 0x30 || tag2 != 0x30 {
        return Err("not an X.509 certificate".into());
    }
    if tbs.first() == Some(&0xa0) {
        tbs = tlv(tbs)?.2;
    }
    for _ in 0..3 {
        tbs = tlv(tbs)?.2; // serial, signature algorithm, issuer
    }
    let (tag, validity, _) = tlv(tbs)?;
    if tag != 0x30 {
        return Err("no validity in the certificate".into());
    }
    let (_, _, rest) = tlv(validity)?;
    let (tag, t, _) = tlv(rest)?;
    parse_time(tag, t)
}

fn parse_time(tag: u8, t: &[u8]) -> Result<i64, String> {
    let s = std::str::from_utf8(t).map_err(|_| "bad certificate time".to_owned())?;
    let (year, rest) = match tag {
        0x17 if s.len() >= 12 => {
            let y: i64 = s[..2].parse().map_err(|_| "bad UTCTime")?;
            (if y < 50 { 2000 + y } else { 1900 + y }, &s[2..])
        }
        0x18 if s.len() >= 14 => (s[..4].parse().map_err(|_| "bad GeneralizedTime")?, &s[4..]),
        _ => return Err("unexpected certificate time format".into()),
    };
    let n = |i: usize| -> Result<i64, String> {
        rest.get(i..i + 2)
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| "bad certificate time".to_owned())
    };
    let (mo, d, h, mi, sec) = (n(0)?, n(2)?, n(4)?, n(6)?, n(8)?);
    Ok(days_from_civil(year, mo, d) * 86400 + h * 3600 + mi * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_not_after_of_a_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["pushbox.local".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let at = not_after_der(cert.der()).unwrap();
        assert_eq!(at, days_from_civil(2031, 5, 17) * 86400);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11017);
        assert!(not_after_der(b"\x30\x03\x02\x01").is_err());
        assert!(not_after(Path::new("/nonexistent.pem")).is_err());
    }
}
