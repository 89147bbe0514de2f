//! Just enough X.509 DER reading for `check` and `cert`: a certificate's validity period and its
//! subject alternative names. Everything is bounds-checked; a malformed certificate is an error,
//! never a panic. (rustls checks that the certificate parses and matches its key.)

use std::net::IpAddr;

/// What `check` reports about a certificate.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CertInfo {
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
}

const SEQUENCE: u8 = 0x30;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const OCTET_STRING: u8 = 0x04;
const BOOLEAN: u8 = 0x01;
const OID: u8 = 0x06;
/// id-ce-subjectAltName, 2.5.29.17.
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];

/// One tag-length-value: `(tag, contents, rest)`.
fn tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let err = || "truncated or malformed DER".to_owned();
    let (&tag, rest) = input.split_first().ok_or_else(err)?;
    let (&first, rest) = rest.split_first().ok_or_else(err)?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return Err(err());
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err(err());
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

fn expect<'a>(input: &'a [u8], want: u8, what: &str) -> Result<(&'a [u8], &'a [u8]), String> {
    let (tag, body, rest) = tlv(input)?;
    if tag != want {
        return Err(format!(
            "unexpected DER tag {tag:#04x} where the {what} should be"
        ));
    }
    Ok((body, rest))
}

/// Reads validity and SANs from a DER certificate.
pub fn parse(der: &[u8]) -> Result<CertInfo, String> {
    let (cert, _) = expect(der, SEQUENCE, "certificate")?;
    let (tbs, _) = expect(cert, SEQUENCE, "tbsCertificate")?;
    let mut rest = tbs;
    // [0] EXPLICIT version, optional.
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2;
    }
    rest = tlv(rest)?.2; // serialNumber
    rest = tlv(rest)?.2; // signature algorithm
    rest = tlv(rest)?.2; // issuer
    let (validity, after_validity) = expect(rest, SEQUENCE, "validity")?;
    let (t1, b1, validity) = tlv(validity)?;
    let (t2, b2, _) = tlv(validity)?;
    let mut info = CertInfo {
        not_before: time(t1, b1)?,
        not_after: time(t2, b2)?,
        ..CertInfo::default()
    };
    rest = tlv(after_validity)?.2; // subject
    rest = tlv(rest)?.2; // subjectPublicKeyInfo
    while !rest.is_empty() {
        let (tag, body, next) = tlv(rest)?;
        rest = next;
        if tag == 0xa3 {
            let (exts, _) = expect(body, SEQUENCE, "extensions")?;
            extensions(exts, &mut info)?;
        }
    }
    Ok(info)
}

fn extensions(mut exts: &[u8], info: &mut CertInfo) -> Result<(), String> {
    while !exts.is_empty() {
        let (ext, next) = expect(exts, SEQUENCE, "extension")?;
        exts = next;
        let (oid, mut ext) = expect(ext, OID, "extension id")?;
        if oid != OID_SAN {
            continue;
        }
        if ext.first() == Some(&BOOLEAN) {
            ext = tlv(ext)?.2;
        }
        let (value, _) = expect(ext, OCTET_STRING, "extension value")?;
        let (mut names, _) = expect(value, SEQUENCE, "subjectAltName")?;
        while !names.is_empty() {
            let (tag, body, next) = tlv(names)?;
            names = next;
            match tag {
                0x82 => info
                    .dns_names
                    .push(String::from_utf8_lossy(body).into_owned()),
                0x87 => match body.len() {
                    4 => info.ips.push(IpAddr::from(
                        <[u8; 4]>::try_from(body).map_err(|_| "bad IPv4 SAN")?,
                    )),
                    16 => info.ips.push(IpAddr::from(
                        <[u8; 16]>::try_from(body).map_err(|_| "bad IPv6 SAN")?,
                    )),
                    _ => return Err("an IP address SAN has a bad length".into()),
                },
                _ => {}
            }
        }
    }
    Ok(())
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) to Unix seconds.
fn time(tag: u8, body: &[u8]) -> Result<i64, String> {
    let s = std::str::from_utf8(body).map_err(|_| "a certificate time is not text".to_owned())?;
    let bad = || format!("unreadable certificate time {s:?}");
    let digits = s.strip_suffix('Z').ok_or_else(bad)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        digits.get(r).and_then(|d| d.parse().ok()).ok_or_else(bad)
    };
    let (year, off) = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            let yy = num(0..2)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, 2)
        }
        (GENERALIZED_TIME, 14) => (num(0..4)?, 4),
        _ => return Err(bad()),
    };
    let (month, day) = (num(off..off + 2)?, num(off + 2..off + 4)?);
    let (h, m, sec) = (
        num(off + 4..off + 6)?,
        num(off + 6..off + 8)?,
        num(off + 8..off + 10)?,
    );
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return Err(bad());
    }
    Ok(days_from_civil(year, month as u32, day as u32) * 86_400 + h * 3600 + m * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `(year, month, day)` of a day number since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m, d)
}

/// `YYYY-MM-DD` of Unix seconds.
pub fn date(secs: i64) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for z in [-1, 0, 59, 11_016, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y as i64, m as u32, d as u32), z);
        }
        assert_eq!(date(951_782_400), "2000-02-29");
    }

    #[test]
    fn times() {
        assert_eq!(time(UTC_TIME, b"000229000000Z").unwrap(), 951_782_400);
        assert_eq!(
            time(GENERALIZED_TIME, b"20000229000000Z").unwrap(),
            951_782_400
        );
        assert!(time(UTC_TIME, b"0002290000Z").is_err());
        assert!(time(UTC_TIME, b"").is_err());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse(&[]).is_err());
        assert!(parse(&[0x30, 0x82, 0xff]).is_err());
        assert!(parse(&[0x30, 0x03, 0x02, 0x01, 0x01]).is_err());
    }
}
