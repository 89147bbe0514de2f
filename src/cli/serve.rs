//! `pushbox serve`: the command line's part only — logging, the configuration (or the `--dev`
//! app's), a look at the ports (a pushbox already serving there is said so before anything
//! else is printed), the `--dev` banner (keys, `.env` block, console), then
//! [`crate::server::run`], which owns everything from socket activation to the graceful stop.

use std::process::ExitCode;

use crate::config::{Config, ConfigError};

use super::ops::{self, PortHolder};
use super::ConfigArgs;

fn init_logging() {
    // Compact on a terminal, journald-friendly under systemd (see metrics::logfmt).
    let env = crate::config::ProcessEnv::default();
    crate::metrics::logfmt::init(&crate::config::LogConfig::from_env(&env));
}

/// `pushbox serve [--dev] [--host ADDRESS]`.
pub fn run(args: &ConfigArgs, host: Option<&str>) -> ExitCode {
    init_logging();
    let cfg = match load(args, host) {
        Ok(cfg) => cfg,
        Err(e) => return super::config_failure(e),
    };
    // Under socket activation systemd holds the ports for us: nothing to look at.
    if !crate::config::socket_activated(&crate::config::ProcessEnv::default()) {
        if let Err(why) = ports_free(&cfg, args.dev) {
            eprintln!("pushbox: {why}");
            return ExitCode::FAILURE;
        }
    }
    if args.dev {
        if let Err(e) = crate::dev::save_listen(&cfg) {
            return super::config_failure(e);
        }
        println!("{}", dev_banner(&cfg));
    }
    crate::server::run(cfg)
}

fn load(args: &ConfigArgs, host: Option<&str>) -> Result<Config, ConfigError> {
    if args.dev {
        return crate::dev::config(&super::process_env(args)?, host);
    }
    let mut cfg = super::load_config(args)?;
    if let Some(h) = host {
        cfg.server.host = h.to_owned();
    }
    Ok(cfg)
}

/// Every port the server is about to bind is free, or why not: a running pushbox holds it (as
/// `pushbox check` finds out), or another program does. Other failures (no permission, not an
/// address of this machine) are left to the server's own bind, which names them.
fn ports_free(cfg: &Config, dev: bool) -> Result<(), String> {
    let rt = ops::runtime().ok();
    for l in ops::listeners(cfg) {
        let Some(addr) = l.addr() else { continue };
        let (port, shown) = (l.port, l.shown());
        let elsewhere = match (dev, l.tls) {
            (true, _) => format!(
                "REVERB_SERVER_PORT={} pushbox serve --dev",
                port.saturating_add(1)
            ),
            (false, true) => "[tls] port".to_owned(),
            (false, false) => "[server] port or REVERB_SERVER_PORT".to_owned(),
        };
        match ops::port_holder(rt.as_ref(), addr, l.tls) {
            PortHolder::Free => {}
            PortHolder::Pushbox if dev => return Err(format!(
                "a pushbox already serves on {shown} (it answers /up): use that one (`pushbox env --dev` prints its .env block, `pushbox check --dev` checks it), stop it, or start this one on another port: {elsewhere}"
            )),
            PortHolder::Pushbox => return Err(format!(
                "a pushbox already serves on {shown} (it answers /up; `pushbox check` shows it): use that one, stop it (`systemctl stop pushbox` if it is the service), or give this one another port ({elsewhere})"
            )),
            PortHolder::UnhealthyPushbox(why) => return Err(format!(
                "a pushbox already serves on {shown} but is not healthy (/up answers 503: {why}): stop it (`systemctl stop pushbox` if it is the service) and fix that, or give this one another port ({elsewhere})"
            )),
            PortHolder::Other(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Err(format!(
                "port {port} ({shown}) is in use by another program: find it with `ss -ltnp 'sport = :{port}'` and stop it, or choose another port ({elsewhere})"
            )),
            PortHolder::Other(_) => {}
        }
    }
    Ok(())
}

/// What `serve --dev` prints before serving: the Laravel `.env` block for the host clients
/// use, the console's address and password, and where the dev state lives.
fn dev_banner(cfg: &Config) -> String {
    let (scheme, listen_host, port) = ops::public_listener(cfg);
    let (host, note) = ops::client_host(listen_host, true);
    let Some(app) = cfg.apps.first() else {
        return format!("# no dev app in {}", cfg.state_dir.display());
    };
    let mut out = crate::dev::env_block(app, &host, port, scheme);
    if let Some(note) = note {
        out.push_str(&format!("\n# {note}"));
    }
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let password = cfg.console.as_ref().and_then(|c| c.password.as_deref());
    out.push_str(&format!("\n\n# console: {scheme}://{authority}/console"));
    if let Some(p) = password {
        out.push_str(&format!("\n#   admin password: {p}"));
    }
    out.push_str(&format!(
        "\n#   (or sign in with the app key {} and its secret)",
        app.key
    ));
    out.push_str(&format!(
        "\n# dev state: {} (delete dev-app.toml there to regenerate the keys and the console password)",
        cfg.state_dir.display()
    ));
    out
}
