//! X.509 certificates as pushbox reads them, in one place: PEM files to DER (rustls' PEM reader)
//! and just enough DER walking for a certificate's validity period and its subject alternative
//! names. `pushbox check` and `pushbox cert`, the console's expiry line and the HTTPS clients'
//! extra roots all read certificates through here. Everything is bounds-checked; a malformed
//! certificate (a truncated length, a non-ASCII time) is an error, never a panic. (rustls checks
//! that a certificate parses and matches its key.)

use std::net::IpAddr;
use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::date::days_from_civil;

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

/// Why a PEM file gave no certificates (said without the path; [`read_pem`] adds it).
#[derive(Debug)]
pub enum PemError {
    Unreadable(String),
    NotPem(String),
    Empty,
}

impl std::fmt::Display for PemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PemError::Unreadable(e) => write!(f, "cannot read it: {e}"),
            PemError::NotPem(e) => write!(f, "not a PEM certificate file ({e})"),
            PemError::Empty => f.write_str("no \"BEGIN CERTIFICATE\" block in it"),
        }
    }
}

/// Every certificate of a PEM file, in order; an error when there is none or one is broken.
pub fn pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| PemError::Unreadable(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| PemError::NotPem(e.to_string()))?;
    if certs.is_empty() {
        return Err(PemError::Empty);
    }
    Ok(certs)
}

/// [`pem_certs`], with the path in the error.
pub fn read_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    pem_certs(path).map_err(|e| match e {
        PemError::Unreadable(e) => format!("cannot read {}: {e}", path.display()),
        e => format!("{}: {e}", path.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_multibyte_character_in_a_time_is_an_error_not_a_panic() {
        // 'é' is two bytes: slicing the time by byte index would cut it in half.
        for t in [
            "0é0229000000Z",
            "é00229000000Z",
            "00022900000éZ",
            "2000022900000éZ",
        ] {
            let err = time(UTC_TIME, t.as_bytes())
                .and(time(GENERALIZED_TIME, t.as_bytes()))
                .unwrap_err();
            assert!(err.contains("unreadable certificate time"), "{err}");
        }
        // The same inside a whole certificate: notAfter "310517000000Z" becomes "3é517000000Z"
        // (the same 13 bytes, so the DER stays well-formed; `&s[..2]` would panic on it).
        let mut params = rcgen::CertificateParams::new(vec!["pushbox.local".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut der = params.self_signed(&key).unwrap().der().to_vec();
        let at = der
            .windows(13)
            .position(|w| w == b"310517000000Z")
            .expect("notAfter as UTCTime");
        der[at + 1..at + 3].copy_from_slice("é".as_bytes());
        let err = parse(&der).unwrap_err();
        assert!(err.contains("unreadable certificate time"), "{err}");
    }

    #[test]
    fn reads_every_certificate_of_a_pem_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["pushbox.local".into()]).unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        let path = dir.path().join("chain.pem");
        std::fs::write(&path, format!("{pem}{pem}")).unwrap();
        assert_eq!(read_pem(&path).unwrap().len(), 2);
        std::fs::write(&path, "hello").unwrap();
        assert!(read_pem(&path).unwrap_err().contains("BEGIN CERTIFICATE"));
        assert!(read_pem(&dir.path().join("none.pem")).is_err());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse(&[]).is_err());
        assert!(parse(&[0x30, 0x82, 0xff]).is_err());
        assert!(parse(&[0x30, 0x03, 0x02, 0x01, 0x01]).is_err());
    }
}
