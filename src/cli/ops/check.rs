//! `pushbox check`: the troubleshooting list as one command. One line per check (`ok`, `warn`,
//! `FAIL` and what to do); exit 0 when nothing failed, 1 otherwise, 78 when the configuration
//! itself does not load.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use super::http;
use super::{is_unspecified, now_secs, runtime};
use crate::cli::ConfigArgs;
use crate::config::{Config, TlsConfig};
use crate::http_client::{self, Target};
use crate::{date, x509};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

struct Report {
    lines: Vec<(Level, String, String)>,
}

impl Report {
    fn add(&mut self, level: Level, what: impl Into<String>, msg: impl Into<String>) {
        let (what, msg) = (what.into(), msg.into());
        let tag = match level {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        println!("{tag:<4}  {what:<12} {msg}");
        self.lines.push((level, what, msg));
    }
    fn ok(&mut self, what: &str, msg: impl Into<String>) {
        self.add(Level::Ok, what, msg)
    }
    fn warn(&mut self, what: &str, msg: impl Into<String>) {
        self.add(Level::Warn, what, msg)
    }
    fn fail(&mut self, what: &str, msg: impl Into<String>) {
        self.add(Level::Fail, what, msg)
    }
}

/// `pushbox check`.
pub fn check(args: &ConfigArgs) -> ExitCode {
    let mut r = Report { lines: Vec::new() };
    let config = match crate::cli::load_config(args) {
        Ok(c) => c,
        Err(e) => {
            r.fail("config", e.to_string());
            return ExitCode::from(crate::config::EXIT_CONFIG as u8);
        }
    };
    let n = config.apps.len();
    r.ok(
        "config",
        format!(
            "{} loads: {n} app{}",
            config.source,
            if n == 1 { "" } else { "s" }
        ),
    );
    keys(&mut r, &config);
    user(&mut r, &config);
    ports(&mut r, &config);
    if let Some(tls) = &config.tls {
        certificate(&mut r, tls);
    }
    state_dir(&mut r, &config);
    if config.cluster.enabled() {
        cluster(&mut r, &config);
    }
    let failed = r.lines.iter().filter(|l| l.0 == Level::Fail).count();
    let warned = r.lines.iter().filter(|l| l.0 == Level::Warn).count();
    if failed > 0 {
        println!("{failed} check(s) failed, {warned} warning(s): fix the FAIL lines above and run `pushbox check` again");
        ExitCode::FAILURE
    } else {
        println!("all checks passed ({warned} warning(s))");
        ExitCode::SUCCESS
    }
}

fn keys(r: &mut Report, config: &Config) {
    for app in &config.apps {
        let what = format!("app {}", app.id);
        if let Some(w) = app.credential_warning() {
            r.warn(&what, w);
        } else if !app.enabled {
            r.warn(
                &what,
                "disabled (enabled = false): clients and the API are refused",
            );
        } else {
            r.ok(
                &what,
                format!(
                    "key {} and a {}-character secret are set",
                    app.key,
                    app.secret.len()
                ),
            );
        }
    }
}

fn user(r: &mut Report, config: &Config) {
    let Some(name) = &config.user else { return };
    match nix::unistd::User::from_name(name) {
        Ok(Some(_)) => r.ok("user", format!("{name:?} exists (pushbox drops to it after binding)")),
        Ok(None) => r.fail("user", format!("user {name:?} does not exist: create it (useradd --system {name}) or change `user =`")),
        Err(e) => r.warn("user", format!("cannot look up user {name:?}: {e}")),
    }
}

/// A listener the configuration asks for.
pub struct Listener {
    /// How `check` names it: `port` or `tls port`.
    pub what: &'static str,
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl Listener {
    /// `host:port`, with brackets around an IPv6 host.
    pub fn shown(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The socket address to bind, if the host resolves.
    pub fn addr(&self) -> Option<SocketAddr> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        (host, self.port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
    }
}

/// The plain listener (unless `server.plain = false`) and the TLS one (with `[tls]`).
pub fn listeners(config: &Config) -> Vec<Listener> {
    let mut listeners = Vec::new();
    if config.server.plain {
        listeners.push(Listener {
            what: "port",
            host: config.server.host.clone(),
            port: config.server.port,
            tls: false,
        });
    }
    if let Some(tls) = &config.tls {
        listeners.push(Listener {
            what: "tls port",
            host: tls.host.clone(),
            port: tls.port,
            tls: true,
        });
    }
    listeners
}

fn ports(r: &mut Report, config: &Config) {
    let listeners = listeners(config);
    if let [a, b] = listeners.as_slice() {
        let (h1, h2, p1) = (&a.host, &b.host, a.port);
        if a.port == b.port && (h1 == h2 || is_unspecified(h1) || is_unspecified(h2)) {
            r.fail(
                "ports",
                format!(
                    "[server] and [tls] both use port {p1}: give [tls] its own port (443 is usual)"
                ),
            );
            return;
        }
    }
    let rt = match runtime() {
        Ok(rt) => Some(rt),
        Err(e) => {
            r.warn(
                "ports",
                format!("{e}; cannot ask a port's owner whether it is pushbox"),
            );
            None
        }
    };
    let mut held = Vec::new();
    for l in listeners {
        let (what, host, port, tls, shown) = (l.what, &l.host, l.port, l.tls, l.shown());
        let Some(addr) = l.addr() else {
            r.fail(what, format!("{host:?} is not an address of this machine: set [server] host (or [tls] host) to an IP, or 0.0.0.0 for all"));
            continue;
        };
        match port_holder(rt.as_ref(), addr, tls) {
            PortHolder::Free => r.ok(what, format!("{shown} is free")),
            PortHolder::Pushbox => {
                r.ok(
                    what,
                    format!("{shown} is held by a running pushbox (it answers /up)"),
                );
                held.push((addr, tls));
            }
            PortHolder::Other(e) => {
                match e.kind() {
                    std::io::ErrorKind::AddrInUse => r.fail(
                        what,
                        format!("port {port} ({shown}) is in use by another program: find it with `ss -ltnp 'sport = :{port}'` and stop it, or choose another port in {}", if tls { "[tls] port" } else { "[server] port (or REVERB_SERVER_PORT)" }),
                    ),
                    std::io::ErrorKind::PermissionDenied => r.warn(
                        what,
                        format!("cannot test port {port} as this user (ports below 1024 need root or CAP_NET_BIND_SERVICE; the systemd unit grants it): run `sudo pushbox check`"),
                    ),
                    std::io::ErrorKind::AddrNotAvailable => r.fail(
                        what,
                        format!("{host} is not an address of this machine: set its host to one of this machine's IPs, or 0.0.0.0"),
                    ),
                    _ => r.fail(what, format!("cannot listen on {shown}: {e}")),
                }
            }
        }
    }
    if let Some(rt) = &rt {
        for (addr, tls) in held {
            rt.block_on(clients_connect(r, config, addr, tls));
        }
    }
}

/// The "WebSocket not connected" question itself, asked of the running server: each enabled
/// app's key opens `/app/{key}` and must get `pusher:connection_established`. A refusal there
/// while the config is fine means the running server has another configuration.
async fn clients_connect(r: &mut Report, config: &Config, addr: SocketAddr, tls: bool) {
    let target = local_target(addr, tls);
    let probe = if tls {
        match http_client::accept_any_config() {
            Ok(c) => Some(c),
            Err(e) => {
                r.warn(
                    "websocket",
                    format!("cannot open a TLS client to test {}: {e}", target.url()),
                );
                return;
            }
        }
    } else {
        None
    };
    let scheme = if tls { "wss" } else { "ws" };
    for app in config.apps.iter().filter(|a| a.enabled) {
        let what = format!("ws {}", app.id);
        let url = format!("{scheme}://{}/app/{}", target.authority(), app.key);
        match http::websocket_probe(&target, probe.clone(), &app.key, Duration::from_secs(3)).await {
            Ok(http::WsProbe::Connected { socket_id }) => r.ok(
                &what,
                format!("a client connects to {url} (pusher:connection_established, socket {socket_id})"),
            ),
            Ok(http::WsProbe::Refused { code, message }) if code == 4001 => r.fail(
                &what,
                format!("the running pushbox does not know key {}: {code} {message:?}. It was started with another configuration: restart it to load this one (systemctl restart pushbox)", app.key),
            ),
            Ok(http::WsProbe::Refused { code, message }) => r.fail(
                &what,
                format!("{url} refused the client: {code} {message:?}"),
            ),
            Ok(http::WsProbe::NotUpgraded { status, body }) => r.fail(
                &what,
                format!("{url} answered HTTP {status} instead of a WebSocket upgrade: {body:?}"),
            ),
            Err(e) => r.fail(&what, format!("{url}: {e}")),
        }
    }
}

/// Where to reach a local listener: loopback for a wildcard address.
fn local_target(addr: SocketAddr, tls: bool) -> Target {
    let ip = if addr.ip().is_unspecified() {
        if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        }
    } else {
        addr.ip()
    };
    Target {
        https: tls,
        host: ip.to_string(),
        port: addr.port(),
    }
}

/// Who holds a listening address.
pub enum PortHolder {
    /// Nobody: it can be bound.
    Free,
    /// A running pushbox (it answers `GET /up`).
    Pushbox,
    /// Binding failed for another reason (another program, no permission, not an address).
    Other(std::io::Error),
}

/// Tries to bind `addr`; when that fails, asks whoever answers there (with `rt`) whether it is a
/// pushbox.
pub fn port_holder(
    rt: Option<&tokio::runtime::Runtime>,
    addr: SocketAddr,
    tls: bool,
) -> PortHolder {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => PortHolder::Free,
        Err(_) if rt.is_some_and(|rt| rt.block_on(is_pushbox(addr, tls))) => PortHolder::Pushbox,
        Err(e) => PortHolder::Other(e),
    }
}

/// True when whatever listens at `addr` answers `GET /up` the way pushbox does.
async fn is_pushbox(addr: SocketAddr, tls: bool) -> bool {
    let target = local_target(addr, tls);
    let config = if tls {
        match http_client::accept_any_config() {
            Ok(c) => Some(c),
            Err(_) => return false,
        }
    } else {
        None
    };
    match http::request(
        &target,
        config,
        "GET",
        "/up",
        Vec::new(),
        Duration::from_secs(3),
    )
    .await
    {
        Ok(reply) => {
            reply.status == 200
                && serde_json::from_slice::<serde_json::Value>(&reply.body)
                    .is_ok_and(|v| v.get("status").and_then(|s| s.as_str()) == Some("ok"))
        }
        Err(_) => false,
    }
}

fn certificate(r: &mut Report, tls: &TlsConfig) {
    let certs = match x509::read_pem(&tls.cert) {
        Ok(c) => c,
        Err(e) => {
            r.fail("certificate", format!("{e}: check [tls] cert / PUSHBOX_TLS_CERT (PEM; `pushbox cert self-signed` makes one) and that the pushbox user can read it"));
            return;
        }
    };
    use rustls::pki_types::pem::PemObject;
    let key = match rustls::pki_types::PrivateKeyDer::from_pem_file(&tls.key) {
        Ok(k) => k,
        Err(e) => {
            r.fail("tls key", format!("{}: cannot read a PEM private key ({e}): check [tls] key / PUSHBOX_TLS_KEY and that the pushbox user can read it", tls.key.display()));
            return;
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    match rustls::sign::CertifiedKey::from_der(certs.clone(), key, &provider) {
        Ok(_) => r.ok(
            "tls key",
            format!("{} matches the certificate", tls.key.display()),
        ),
        Err(e) => {
            r.fail("tls key", format!("{} does not belong to {} ({e}): use the key the certificate was made with, or make a new pair", tls.key.display(), tls.cert.display()));
            return;
        }
    }
    key_permissions(r, &tls.key);
    let Some(leaf) = certs.first() else { return };
    let info = match x509::parse(leaf) {
        Ok(i) => i,
        Err(e) => {
            r.fail("certificate", format!("{}: the first certificate does not parse ({e}): put the server certificate first, then its chain", tls.cert.display()));
            return;
        }
    };
    let now = now_secs();
    let days = (info.not_after - now).div_euclid(86_400);
    let names: Vec<String> = info
        .dns_names
        .iter()
        .cloned()
        .chain(info.ips.iter().map(|i| i.to_string()))
        .collect();
    let names = if names.is_empty() {
        "no subject alternative names: clients will refuse it".to_owned()
    } else {
        names.join(", ")
    };
    let what = "certificate";
    let cert = tls.cert.display();
    if info.not_after <= now {
        r.fail(what, format!("{cert} expired on {}: renew it (`pushbox cert self-signed --force ...` for a LAN box), then `systemctl reload pushbox`", date::date(info.not_after)));
    } else if info.not_before > now {
        r.warn(
            what,
            format!(
                "{cert} is not valid until {}: check this machine's clock",
                date::date(info.not_before)
            ),
        );
    } else if days < 30 {
        r.warn(what, format!("{cert} expires in {days} days ({}): renew it soon and `systemctl reload pushbox` (for {names})", date::date(info.not_after)));
    } else {
        r.ok(
            what,
            format!(
                "{cert} valid for {days} more days (until {}), for {names}",
                date::date(info.not_after)
            ),
        );
    }
}

fn key_permissions(r: &mut Report, key: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(key) {
        if meta.permissions().mode() & 0o004 != 0 {
            r.warn(
                "tls key",
                format!(
                    "{} is readable by every user: chmod 600 it (owned by the pushbox user)",
                    key.display()
                ),
            );
        }
    }
}

/// `[cluster]`: Redis answers, its settings keep the cluster's state, and the nodes it knows.
fn cluster(r: &mut Report, config: &Config) {
    let probe = match runtime() {
        Ok(rt) => rt.block_on(crate::cluster::probe(config)),
        Err(e) => Err(e),
    };
    let p = match probe {
        Ok(p) => p,
        Err(e) => {
            r.fail("cluster", format!("{e}; check cluster.redis_url (PUSHBOX_REDIS_URL), that Redis runs and that this box reaches it"));
            return;
        }
    };
    r.ok("cluster", format!("{} answers", p.version));
    match p.appendonly.as_deref() {
        Some("yes") => r.ok("cluster", "appendonly yes: a Redis restart loses at most a second"),
        Some(v) => r.warn("cluster", format!("appendonly {v}: a Redis restart loses presence and webhooks of the outage; set appendonly yes")),
        None => r.warn("cluster", "cannot read appendonly (CONFIG not allowed for this user): make sure it is yes"),
    }
    match p.eviction.as_deref() {
        Some("noeviction") => r.ok("cluster", "maxmemory-policy noeviction"),
        Some(v) => r.fail("cluster", format!("maxmemory-policy {v}: Redis may evict presence members and counts; set maxmemory-policy noeviction")),
        None => r.warn("cluster", "cannot read maxmemory-policy (CONFIG not allowed for this user): make sure it is noeviction"),
    }
    for (app, nodes) in p.nodes {
        let list: Vec<String> = nodes
            .iter()
            .map(|(n, left)| format!("{n} ({left:.0} s left)"))
            .collect();
        let text = if list.is_empty() {
            "no node holds a lease (none running?)".to_owned()
        } else {
            list.join(", ")
        };
        r.ok(
            "cluster",
            format!("app {app}: {} node(s): {text}", nodes.len()),
        );
    }
}

fn state_dir(r: &mut Report, config: &Config) {
    let dir = &config.state_dir;
    let what = "state dir";
    if !dir.exists() {
        // It does not exist: can pushbox create it? Find the nearest existing parent.
        let parent = dir.ancestors().skip(1).find(|p| p.exists());
        match parent {
            Some(p) if nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok() => {
                r.ok(what, format!("{} does not exist yet; pushbox will create it (in {})", dir.display(), p.display()));
                free_space(r, config, p);
            }
            Some(p) => r.fail(what, format!("{} does not exist and {} is not writable: create it for the pushbox user (`install -d -o pushbox {}`) or set state_dir / PUSHBOX_STATE_DIR", dir.display(), p.display(), dir.display())),
            None => r.fail(what, format!("{} does not exist and cannot be created", dir.display())),
        }
        return;
    }
    if !dir.is_dir() {
        r.fail(
            what,
            format!(
                "{} is not a directory: set state_dir / PUSHBOX_STATE_DIR to a directory",
                dir.display()
            ),
        );
        return;
    }
    let probe = dir.join(format!(".pushbox-check-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)?;
        f.write_all(b"pushbox check\n")?;
        f.sync_all()
    };
    let result = write();
    let _ = std::fs::remove_file(&probe);
    match result {
        Ok(()) => {
            r.ok(what, format!("{} is writable", dir.display()));
            free_space(r, config, dir);
        }
        Err(e) => r.fail(what, format!("cannot write in {} ({e}): `chown -R pushbox: {}` (the user pushbox runs as), or set state_dir / PUSHBOX_STATE_DIR", dir.display(), dir.display())),
    }
}

fn free_space(r: &mut Report, config: &Config, dir: &Path) {
    let stat = match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => s,
        Err(e) => {
            r.warn(
                "disk",
                format!("cannot read free space of {}: {e}", dir.display()),
            );
            return;
        }
    };
    let free = (stat.blocks_available() as u64).saturating_mul(stat.fragment_size() as u64);
    let mib = |b: u64| b / (1024 * 1024);
    let cap = config.spool.max_bytes;
    if free < 16 * 1024 * 1024 {
        r.fail(
            "disk",
            format!(
                "only {} MiB free on {}: free some space (the spool needs room to accept events)",
                mib(free),
                dir.display()
            ),
        );
    } else if free < cap {
        r.warn("disk", format!("{} MiB free on {}, less than spool.max_bytes ({} MiB): lower spool.max_bytes or free space, or the disk fills before the cap", mib(free), dir.display(), mib(cap)));
    } else {
        r.ok(
            "disk",
            format!(
                "{} MiB free on {} (spool cap {} MiB)",
                mib(free),
                dir.display(),
                mib(cap)
            ),
        );
    }
}
