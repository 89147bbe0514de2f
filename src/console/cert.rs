//! The TLS certificate's expiry for the console: the `notAfter` of the first certificate of the
//! configured PEM chain, read by [`crate::x509`].

use std::path::Path;

use crate::x509;

/// The first certificate's `notAfter`, Unix seconds.
pub fn not_after(path: &Path) -> Result<i64, String> {
    let certs = x509::read_pem(path)?; // never empty
    not_after_der(&certs[0]).map_err(|e| format!("{}: {e}", path.display()))
}

/// The `notAfter` of a DER certificate, Unix seconds.
pub fn not_after_der(der: &[u8]) -> Result<i64, String> {
    x509::parse(der).map(|info| info.not_after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::date::days_from_civil;

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
