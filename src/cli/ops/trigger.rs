//! `pushbox trigger`: a signed `POST /apps/{id}/events` to the running server, the seed's
//! `php artisan tinker` broadcast test without PHP.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use super::http;
use super::{fail, is_unspecified, now_secs, pick_app, runtime, EXIT_USAGE};
use crate::cli::ConfigArgs;
use crate::config::Config;
use crate::http_client::{ClientError, Target};

/// What to publish.
pub struct TriggerArgs<'a> {
    pub channel: &'a str,
    pub event: &'a str,
    pub data: &'a str,
    pub app: Option<&'a str>,
    pub url: Option<&'a str>,
    pub ca: Option<&'a Path>,
}

/// `pushbox trigger --channel C --event E --data JSON [--app ID] [--url URL] [--ca FILE]`.
pub fn trigger(args: &ConfigArgs, t: &TriggerArgs<'_>) -> ExitCode {
    let config = match crate::cli::load_config(args) {
        Ok(c) => c,
        Err(e) => return crate::cli::config_failure(e),
    };
    let app = match pick_app(&config, t.app) {
        Ok(a) => a,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let target = match t.url {
        Some(u) => match http::parse_url(u) {
            Ok(t) => t,
            Err(e) => return fail(EXIT_USAGE, e),
        },
        None => default_target(&config),
    };
    let tls = if target.https {
        // Trust --ca, else the server's own certificate (a self-signed box), plus the system's.
        let own = config.tls.as_ref().map(|t| t.cert.as_path());
        let extra: Vec<&Path> = t.ca.or(own).into_iter().collect();
        match http::client_config(&extra) {
            Ok(c) => Some(c),
            Err(e) => {
                return fail(
                    1,
                    format!("{e} (pass --ca FILE with the server's certificate)"),
                )
            }
        }
    } else {
        None
    };
    if serde_json::from_str::<serde::de::IgnoredAny>(t.data).is_err() {
        eprintln!("pushbox: note: --data is not JSON; sending it as a plain string");
    }
    let body =
        serde_json::json!({ "name": t.event, "channels": [t.channel], "data": t.data }).to_string();
    let path = format!("/apps/{}/events", app.id);
    let query = crate::protocol::signing::sign_query(
        "POST",
        &path,
        &app.key,
        &app.secret,
        now_secs(),
        body.as_bytes(),
        &[],
    );
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(1, e),
    };
    let reply = rt.block_on(http::request(
        &target,
        tls,
        "POST",
        &format!("{path}?{query}"),
        body.into_bytes(),
        Duration::from_secs(10),
    ));
    match reply {
        Ok(r) if r.status == 200 => {
            println!(
                "sent {:?} to channel {:?} (app {}) via {}: {} {}",
                t.event,
                t.channel,
                app.id,
                target.url(),
                r.status,
                String::from_utf8_lossy(&r.body).trim()
            );
            ExitCode::SUCCESS
        }
        Ok(r) => {
            let text = String::from_utf8_lossy(&r.body);
            let msg = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| text.trim().to_owned());
            let hint = match r.status {
                401 => format!(" (app {}: compare its key and secret with the server's config and REVERB_APP_*; check the clocks agree)", app.id),
                404 => " (is --app the id the server has? is --url a pushbox?)".to_owned(),
                413 => " (the event is too large: see max_event_data_bytes)".to_owned(),
                503 => " (the server's spool is full or stopping: see `pushbox queue status` and the server log)".to_owned(),
                _ => String::new(),
            };
            fail(1, format!("{} answered {} {}: {msg}{hint}", target.url(), r.status, r.reason))
        }
        Err(ClientError::Refused(e)) if args.dev => fail(1, format!("{e}: is the dev server running? start `pushbox serve --dev` in this directory (or pass --url with the address it serves on)")),
        Err(ClientError::Refused(e)) => fail(1, format!("{e}: is pushbox running? (systemctl status pushbox)")),
        Err(ClientError::Tls(e)) => fail(
            1,
            format!("{e}: the certificate must be trusted (--ca FILE) and name the host in --url (--url https://NAME:PORT)"),
        ),
        Err(ClientError::Timeout) => fail(1, format!("{} did not answer within 10 s: is it pushbox, and is it overloaded?", target.url())),
        Err(ClientError::Other(e)) => fail(1, e),
    }
}

/// `http://127.0.0.1:{port}` (or the configured address), or the TLS port when plain is off.
fn default_target(config: &Config) -> Target {
    let local = |host: &str| {
        if is_unspecified(host) {
            "127.0.0.1".to_owned()
        } else {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned()
        }
    };
    match (&config.tls, config.server.plain) {
        (Some(tls), false) => Target {
            https: true,
            host: local(&tls.host),
            port: tls.port,
        },
        _ => Target {
            https: false,
            host: local(&config.server.host),
            port: config.server.port,
        },
    }
}
