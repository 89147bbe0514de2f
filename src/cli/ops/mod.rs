//! The operator's tools: `keygen`, `env`, `check`, `trigger` and `cert self-signed`. Each command
//! has its own file; this one holds what they share: choosing the app, working out how clients
//! reach this box, and the exit statuses.

mod cert;
mod check;
mod http;
mod keys;
mod trigger;

pub use cert::cert_self_signed;
pub use check::{check, listeners, port_holder, PortHolder};
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

/// This machine's address on the LAN: the source address of its default route (found by
/// connecting a UDP socket, which sends nothing), if it has one.
fn lan_address() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind(("0.0.0.0", 0)).ok()?;
    socket.connect(("192.0.2.1", 9)).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// The host name clients use to reach a server listening on `listen_host`, and a note about
/// it (for stderr, or the `serve --dev` banner). `dev`: the messages speak of `serve --dev`,
/// and on every address the LAN address is used (a phone resolves it without DNS).
pub fn client_host(listen_host: &str, dev: bool) -> (String, Option<String>) {
    let h = listen_host.to_owned();
    if is_unspecified(listen_host) {
        if dev {
            if let Some(ip) = lan_address() {
                return (ip.to_string(), Some(format!(
                    "pushbox listens on {listen_host} (every address): REVERB_HOST is this machine's LAN address {ip}, which a phone on the same network can reach (pass --host NAME to `pushbox env --dev` for another name)"
                )));
            }
        }
        let name = machine_hostname().unwrap_or_else(|| "localhost".into());
        let note = format!(
            "pushbox listens on {listen_host} (every address): REVERB_HOST is this machine's host name {name:?}; \
             pass --host NAME (or an IP) for the name browsers and the shop server use to reach it"
        );
        return (name, Some(note));
    }
    let loopback = h == "localhost"
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let note = match (loopback, dev) {
        (false, _) => None,
        (true, true) => Some(format!(
            "the dev server listens on {h}: only programs on this machine can connect; for a phone or another computer on the LAN, start it with `pushbox serve --dev --host 0.0.0.0`"
        )),
        (true, false) => Some(format!(
            "pushbox listens on {h}: only programs on this machine can connect; \
             set [server] host = \"0.0.0.0\" and pass --host NAME for browsers on the LAN"
        )),
    };
    (h, note)
}

/// How clients reach the server: `(scheme, listen host, port)`. TLS wins when configured.
pub fn public_listener(config: &Config) -> (&'static str, &str, u16) {
    match &config.tls {
        Some(tls) => ("https", tls.host.as_str(), tls.port),
        None => ("http", config.server.host.as_str(), config.server.port),
    }
}

/// A current-thread tokio runtime for the commands that make network calls.
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
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
