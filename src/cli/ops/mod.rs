//! The operator's tools: `keygen`, `env`, `check`, `trigger` and `cert self-signed`. Each command
//! has its own file; this one holds what they share: choosing the app, working out how clients
//! reach this box, and the exit statuses.

mod cert;
mod check;
mod http;
mod keys;
mod trigger;

pub use cert::cert_self_signed;
pub use check::check;
pub use keys::{env, keygen};
pub use trigger::{trigger, TriggerArgs};

use std::process::ExitCode;

use crate::config::{AppConfig, Config};

/// Exit status for a usage error the operator can fix on the command line (unknown app, bad
/// argument).
const EXIT_USAGE: u8 = 2;

/// The app named by `--app`, or the first configured one; the error lists the ids there are.
fn pick_app<'a>(config: &'a Config, id: Option<&str>) -> Result<&'a AppConfig, String> {
    match id {
        None => config
            .apps
            .first()
            .ok_or_else(|| format!("no app configured in {}", config.source)),
        Some(id) => config.apps.iter().find(|a| a.id == id).ok_or_else(|| {
            let ids: Vec<&str> = config.apps.iter().map(|a| a.id.as_str()).collect();
            format!(
                "unknown app {id:?}: {} configures {} (pass one of those to --app, or add an [[apps]] entry)",
                config.source,
                ids.join(", ")
            )
        }),
    }
}

/// Prints `pushbox: {msg}` and returns `code`.
fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("pushbox: {msg}");
    ExitCode::from(code)
}

/// True for `0.0.0.0`, `::` and the empty string: listening on every address.
fn is_unspecified(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.is_empty()
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified())
}

/// This machine's host name (Linux), if it can be read.
fn machine_hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
}

/// How clients reach the server: `(scheme, listen host, port)`. TLS wins when configured.
fn public_listener(config: &Config) -> (&'static str, &str, u16) {
    match &config.tls {
        Some(tls) => ("https", tls.host.as_str(), tls.port),
        None => ("http", config.server.host.as_str(), config.server.port),
    }
}

/// A current-thread tokio runtime for the commands that make network calls.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// Seconds since the Unix epoch.
fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
