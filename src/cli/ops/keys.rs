//! `pushbox keygen` (new app credentials) and `pushbox env` (the Laravel `.env` block for an app
//! of this box, matching how clients reach it).

use std::process::ExitCode;

use super::{client_host, fail, pick_app, public_listener, EXIT_USAGE};
use crate::cli::ConfigArgs;

/// `pushbox keygen`: a new random app id, key and secret as `REVERB_*` lines and as a TOML
/// `[[apps]]` entry.
pub fn keygen() -> ExitCode {
    let (id, key, secret) = match crate::dev::generate_app() {
        Ok(creds) => creds,
        Err(e) => return fail(1, format!("{e}; cannot generate keys on this machine")),
    };
    println!("# New pushbox app credentials. For Laravel's .env:");
    println!("REVERB_APP_ID={id}");
    println!("REVERB_APP_KEY={key}");
    println!("REVERB_APP_SECRET={secret}");
    println!();
    println!("# ... and the same app for the server, in /etc/pushbox/pushbox.toml:");
    println!("[[apps]]");
    println!("id = \"{id}\"");
    println!("key = \"{key}\"");
    println!("secret = \"{secret}\"");
    println!();
    println!("# (or give the server the three REVERB_APP_* variables above; then `pushbox env` prints the full .env block)");
    ExitCode::SUCCESS
}

/// `pushbox env [--app ID] [--host NAME]`.
pub fn env(args: &ConfigArgs, app: Option<&str>, host: Option<&str>) -> ExitCode {
    let config = match crate::cli::load_config(args) {
        Ok(c) => c,
        Err(e) => return crate::cli::config_failure(e),
    };
    let app = match pick_app(&config, app) {
        Ok(a) => a,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let (scheme, listen_host, port) = public_listener(&config);
    let host = match host {
        Some(h) => h.to_owned(),
        None => {
            let (h, note) = client_host(listen_host, args.dev);
            if let Some(note) = note {
                eprintln!("# {note}");
            }
            h
        }
    };
    if scheme == "https" {
        let cert = if args.dev {
            "PUSHBOX_TLS_CERT"
        } else {
            "[tls] cert"
        };
        eprintln!(
            "# REVERB_SCHEME=https: clients must trust the certificate in {cert} (see `pushbox cert self-signed` for how)"
        );
    }
    println!("{}", crate::dev::env_block(app, &host, port, scheme));
    ExitCode::SUCCESS
}
