//! `pushbox cert self-signed`: an EC P-256 key and a self-signed leaf certificate (no CA) naming
//! every host and IP of a LAN box, written as `pushbox.key` (mode 0600) and `pushbox.crt`, with
//! instructions for trusting it on clients and configuring pushbox to serve it.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{fail, now_secs, EXIT_USAGE};
use crate::date;

pub const KEY_FILE: &str = "pushbox.key";
pub const CERT_FILE: &str = "pushbox.crt";

/// `pushbox cert self-signed --host NAME [--ip ADDR] [--out DIR] [--days N] [--force]`.
pub fn cert_self_signed(
    hosts: &[String],
    ips: &[String],
    out: &Path,
    days: u32,
    force: bool,
) -> ExitCode {
    let mut names: Vec<String> = Vec::new();
    for h in hosts {
        let h = h.trim();
        if h.is_empty() {
            return fail(
                EXIT_USAGE,
                "--host is empty: give the name clients use, for example --host pushbox.lan",
            );
        }
        names.push(h.to_owned());
    }
    for ip in ips {
        match ip.trim().parse::<IpAddr>() {
            Ok(a) => names.push(a.to_string()),
            Err(_) => {
                return fail(
                    EXIT_USAGE,
                    format!("--ip {ip:?} is not an IP address (for example --ip 192.168.1.10)"),
                )
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    if days == 0 {
        return fail(EXIT_USAGE, "--days must be at least 1");
    }
    let (key_pem, cert_pem, not_after) = match generate(&names, days) {
        Ok(v) => v,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    if let Err(e) = std::fs::create_dir_all(out) {
        return fail(
            1,
            format!("cannot create the output directory {}: {e}", out.display()),
        );
    }
    let dir = std::fs::canonicalize(out).unwrap_or_else(|_| out.to_path_buf());
    let key_path = dir.join(KEY_FILE);
    let cert_path = dir.join(CERT_FILE);
    if !force {
        for p in [&key_path, &cert_path] {
            if p.exists() {
                return fail(
                    1,
                    format!("{} already exists; pass --force to replace it (clients trusting the old certificate must trust the new one), or choose another --out DIR", p.display()),
                );
            }
        }
    }
    if let Err(e) = write_file(&key_path, key_pem.as_bytes(), 0o600) {
        return fail(1, format!("cannot write {}: {e}", key_path.display()));
    }
    if let Err(e) = write_file(&cert_path, cert_pem.as_bytes(), 0o644) {
        return fail(1, format!("cannot write {}: {e}", cert_path.display()));
    }
    print_instructions(&names, &key_path, &cert_path, days, not_after);
    ExitCode::SUCCESS
}

/// The PEM key, the PEM certificate and its expiry (Unix seconds).
fn generate(names: &[String], days: u32) -> Result<(String, String, i64), String> {
    use rcgen::{
        CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256,
    };
    let valid = |n: &str| {
        let n = n.strip_prefix("*.").unwrap_or(n);
        n.parse::<IpAddr>().is_ok()
            || (!n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
    };
    if let Some(bad) = names.iter().find(|n| !valid(n)) {
        return Err(format!(
            "--host {bad:?} is not a host name: use letters, digits, '-' and '.' (for example box.lan), or --ip for an address"
        ));
    }
    let mut params = CertificateParams::new(names.to_vec())
        .map_err(|e| format!("cannot use {names:?} as certificate names ({e}): host names are letters, digits, '-' and '.'"))?;
    let today = now_secs().div_euclid(86_400);
    let ymd = |d: i64| {
        let (y, m, day) = date::civil_from_days(d);
        rcgen::date_time_ymd(y, m, day)
    };
    // From yesterday, so a client whose clock is a little behind accepts it.
    params.not_before = ymd(today - 1);
    // Valid for exactly `days` from not_before (Apple refuses server certificates valid for more
    // than 825 days, the default).
    let expiry_day = today - 1 + i64::from(days);
    params.not_after = ymd(expiry_day);
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    params
        .distinguished_name
        .push(DnType::OrganizationName, "pushbox self-signed");
    params.is_ca = IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("cannot generate a key: {e}"))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("cannot sign the certificate: {e}"))?;
    Ok((key.serialize_pem(), cert.pem(), expiry_day * 86_400))
}

/// Writes `path` atomically (temp file + rename) with `mode`.
fn write_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp: PathBuf = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    // The umask may have cleared bits of `mode`; set it exactly.
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

fn print_instructions(names: &[String], key: &Path, cert: &Path, days: u32, not_after: i64) {
    let (key, cert) = (key.display(), cert.display());
    let first = names.first().map(String::as_str).unwrap_or("pushbox");
    let safe: String = first
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    println!("wrote {key} (EC P-256 private key, mode 0600: keep it secret, readable only by the pushbox user)");
    println!(
        "wrote {cert} (self-signed, valid {days} days until {}, for: {})",
        date::date(not_after),
        names.join(", ")
    );
    println!();
    println!("Serve it: in /etc/pushbox/pushbox.toml");
    println!("  [tls]");
    println!("  cert = \"{cert}\"");
    println!("  key = \"{key}\"");
    println!("  port = 443");
    println!("or in the environment:");
    println!("  PUSHBOX_TLS_CERT={cert}");
    println!("  PUSHBOX_TLS_KEY={key}");
    println!("then let the service user read the key (sudo chown pushbox: {key}), run `pushbox check`, and reload (systemctl reload pushbox).");
    println!();
    println!("Trust it on every client (it is its own authority: there is no CA to install):");
    println!("  Debian/Ubuntu (curl, PHP and Laravel's broadcaster):");
    println!("    sudo cp {cert} /usr/local/share/ca-certificates/pushbox-{safe}.crt && sudo update-ca-certificates");
    println!("  Browsers: import {cert} as a trusted authority (Chrome/Edge: Settings > Privacy and security > Security >");
    println!("    Manage certificates; Firefox: Settings > Privacy & Security > View Certificates > Authorities > Import,");
    println!("    \"trust this CA to identify websites\"); macOS: open it in Keychain Access and set \"Always Trust\";");
    println!("    Windows: certutil -addstore -f Root pushbox.crt");
    println!("  Node.js (pusher SDK, Vite dev server): NODE_EXTRA_CA_CERTS={cert}");
    println!("  Python pusher SDK: it ignores REQUESTS_CA_BUNDLE (it pins its own bundle); pass backend= a pusher.requests.RequestsBackend subclass that sets self.options['verify'] = '{cert}' (docs/CLI.md)");
    println!("  Python requests/httpx/urllib: REQUESTS_CA_BUNDLE={cert} / SSL_CERT_FILE={cert}");
    println!("    (both replace the default bundle; after update-ca-certificates use /etc/ssl/certs/ca-certificates.crt instead)");
    println!("  pushbox trigger: --ca {cert}");
    println!(
        "Clients must connect by one of these names: {}.",
        names.join(", ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x509;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn generated_certificate_names_every_host_and_ip_for_the_days_asked() {
        let names = vec![
            "box.lan".to_owned(),
            "10.0.0.7".to_owned(),
            "::1".to_owned(),
        ];
        let (key, cert, not_after) = generate(&names, 30).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
        let der = rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let info = x509::parse(&der).unwrap();
        assert_eq!(info.dns_names, vec!["box.lan".to_owned()]);
        assert_eq!(
            info.ips,
            vec![
                "10.0.0.7".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert_eq!(info.not_after, not_after);
        let now = now_secs();
        assert!(info.not_before < now && info.not_before > now - 2 * 86_400);
        // Valid exactly `days` from not_before (yesterday 00:00 UTC, for clock skew).
        assert_eq!(info.not_after - info.not_before, 30 * 86_400);
        assert!((28 * 86_400..=30 * 86_400).contains(&(info.not_after - now)));
        assert!(generate(&["bad name!".to_owned()], 1).is_err());
    }
}
