//! The environment: the `Env` trait every variable is read through (so tests pass their own and
//! nothing reads `std::env` behind the configuration's back), the process environment overlaid
//! on a `.env` file, and the overlay of `PUSHBOX_*` and Laravel's `REVERB_*` / `PUSHER_*`
//! variables on top of the file's configuration.

use std::collections::HashMap;
use std::path::PathBuf;

use super::sections::{AppConfig, ConsoleConfig, TlsConfig};
use super::{Config, ConfigError};

/// Environment lookup, so tests can pass their own. An empty value counts as unset: a
/// `REVERB_APP_KEY=` line left blank in a `.env` must not define an app with an empty key.
pub trait Env {
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment, overlaid on an optional `.env` file (the real environment wins).
#[derive(Default)]
pub struct ProcessEnv {
    pub file: HashMap<String, String>,
}

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name)
            .ok()
            .or_else(|| self.file.get(name).cloned())
            .filter(|v| !v.is_empty())
    }
}

impl Env for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned().filter(|v| !v.is_empty())
    }
}

/// The first of `names` that is set, with its name (for messages).
fn first(env: &dyn Env, names: &[&str]) -> Option<(String, String)> {
    names
        .iter()
        .find_map(|n| env.get(n).map(|v| ((*n).to_owned(), v)))
}

/// `PUSHBOX_STATE_DIR`, if set.
pub fn state_dir(env: &dyn Env) -> Option<PathBuf> {
    env.get("PUSHBOX_STATE_DIR").map(PathBuf::from)
}

/// `REVERB_SERVER_PORT`, if set; a value that is not a port is an error naming the variable.
pub fn server_port(env: &dyn Env) -> Result<Option<u16>, ConfigError> {
    let Some(port) = env.get("REVERB_SERVER_PORT") else {
        return Ok(None);
    };
    port.trim().parse().map(Some).map_err(|_| ConfigError::Env {
        var: "REVERB_SERVER_PORT".into(),
        message: format!("{port:?} is not a port number (1-65535)"),
    })
}

/// `PUSHBOX_MAX_CONNECTIONS_PER_IP`, if set; a value that is not a count is an error naming it.
fn max_connections_per_ip(env: &dyn Env) -> Result<Option<u32>, ConfigError> {
    let var = "PUSHBOX_MAX_CONNECTIONS_PER_IP";
    let Some(n) = env.get(var) else {
        return Ok(None);
    };
    n.trim().parse().map(Some).map_err(|_| ConfigError::Env {
        var: var.into(),
        message: format!(
            "{n:?} is not a count: use a whole number of connections per address (0 = no limit)"
        ),
    })
}

/// Lays the environment over `config` (the file's values): each variable set wins.
pub fn apply(config: &mut Config, env: &dyn Env) -> Result<(), ConfigError> {
    if let Some(dir) = state_dir(env) {
        config.state_dir = dir;
    }
    if let Some(host) = env.get("REVERB_SERVER_HOST") {
        config.server.host = host;
    }
    if let Some(port) = server_port(env)? {
        config.server.port = port;
    }
    apply_pushbox(config, env)?;
    if let Some(app) = env_app(env)? {
        // The env-defined app replaces a file app with the same id.
        config.apps.retain(|a| a.id != app.id);
        config.apps.push(app);
    }
    Ok(())
}

/// pushbox's own settings variables (`PUSHBOX_TLS_CERT` / `PUSHBOX_TLS_KEY`,
/// `PUSHBOX_CONSOLE_PASSWORD`, `PUSHBOX_METRICS_TOKEN`, `PUSHBOX_MAX_CONNECTIONS_PER_IP`), which apply the same way with and
/// without `--dev`.
pub fn apply_pushbox(config: &mut Config, env: &dyn Env) -> Result<(), ConfigError> {
    if let Some(n) = max_connections_per_ip(env)? {
        config.server.max_connections_per_ip = n;
    }
    apply_tls(config, env)?;
    if let Some(p) = env.get("PUSHBOX_CONSOLE_PASSWORD") {
        config
            .console
            .get_or_insert_with(ConsoleConfig::default)
            .password = Some(p);
    }
    if let Some(t) = env.get("PUSHBOX_METRICS_TOKEN") {
        config.metrics.token = Some(t);
    }
    apply_cluster(config, env);
    apply_resume(&mut config.resume, env)
}

/// `PUSHBOX_RESUME_*`: the `[resume]` keys; a value that does not parse is an error naming it.
fn apply_resume(r: &mut super::ResumeConfig, env: &dyn Env) -> Result<(), ConfigError> {
    let bad = |var: &str, message: String| ConfigError::Env {
        var: var.into(),
        message,
    };
    let flag = |var: &str, v: String| match v.trim() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(bad(var, format!("{v:?} is not true or false"))),
    };
    if let Some(v) = env.get("PUSHBOX_RESUME_ENABLED") {
        r.enabled = flag("PUSHBOX_RESUME_ENABLED", v)?;
    }
    if let Some(v) = env.get("PUSHBOX_RESUME_MATCH_USER") {
        r.match_user = flag("PUSHBOX_RESUME_MATCH_USER", v)?;
    }
    if let Some(v) = env.get("PUSHBOX_RESUME_FAILURE_EVENT") {
        r.failure_event = flag("PUSHBOX_RESUME_FAILURE_EVENT", v)?;
    }
    if let Some(v) = env.get("PUSHBOX_RESUME_WINDOW") {
        r.window = super::units::parse_duration(&v).map_err(|e| bad("PUSHBOX_RESUME_WINDOW", e))?;
    }
    if let Some(v) = env.get("PUSHBOX_RESUME_STALL_GUARD") {
        r.stall_guard =
            super::units::parse_duration(&v).map_err(|e| bad("PUSHBOX_RESUME_STALL_GUARD", e))?;
    }
    if let Some(v) = env.get("PUSHBOX_RESUME_MAX_EVENTS") {
        r.max_events = v.trim().parse().map_err(|_| {
            bad(
                "PUSHBOX_RESUME_MAX_EVENTS",
                format!("{v:?} is not a count of events"),
            )
        })?;
    }
    if let Some(v) = env.get("PUSHBOX_RESUME_MAX_BYTES") {
        r.max_bytes =
            super::units::parse_bytes(&v).map_err(|e| bad("PUSHBOX_RESUME_MAX_BYTES", e))?;
    }
    if let Some(v) = env.get("PUSHBOX_RESUME_PATH_PREFIX") {
        r.path_prefix = v;
    }
    Ok(())
}

/// `PUSHBOX_REDIS_URL`, `PUSHBOX_CLUSTER_PREFIX`, `PUSHBOX_NODE_NAME`: the `[cluster]` keys.
fn apply_cluster(config: &mut Config, env: &dyn Env) {
    let c = &mut config.cluster;
    if let Some(url) = env.get("PUSHBOX_REDIS_URL") {
        c.redis_url = Some(url);
    }
    if let Some(p) = env.get("PUSHBOX_CLUSTER_PREFIX") {
        c.key_prefix = p;
    }
    if let Some(n) = env.get("PUSHBOX_NODE_NAME") {
        c.node_name = Some(n);
    }
}

/// `PUSHBOX_WEBHOOK_URL`: one receiver of every webhook kind for the app the environment (or
/// `--dev`) defines.
pub fn webhook_url(env: &dyn Env) -> Option<String> {
    env.get("PUSHBOX_WEBHOOK_URL")
}

/// True when systemd passed this process its listening sockets (`LISTEN_PID` is our pid):
/// the ports are then held by systemd, not by another server.
pub fn socket_activated(env: &dyn Env) -> bool {
    env.get("LISTEN_PID")
        .and_then(|p| p.trim().parse::<u32>().ok())
        .is_some_and(|pid| pid == std::process::id())
}

/// `PUSHBOX_TLS_CERT` + `PUSHBOX_TLS_KEY`: both or neither (one alone is a mistake, not a
/// request for half a listener). They keep the file's `[tls]` host and port.
fn apply_tls(config: &mut Config, env: &dyn Env) -> Result<(), ConfigError> {
    match (env.get("PUSHBOX_TLS_CERT"), env.get("PUSHBOX_TLS_KEY")) {
        (Some(cert), Some(key)) => {
            let tls = config.tls.get_or_insert_with(TlsConfig::default);
            tls.cert = cert.into();
            tls.key = key.into();
            Ok(())
        }
        (None, None) => Ok(()),
        (cert, _) => {
            let var = if cert.is_some() {
                "PUSHBOX_TLS_KEY"
            } else {
                "PUSHBOX_TLS_CERT"
            };
            Err(ConfigError::Env { var: var.into(), message: "not set: TLS needs both PUSHBOX_TLS_CERT and PUSHBOX_TLS_KEY (PEM files; `pushbox cert self-signed` makes a pair)".into() })
        }
    }
}

/// The single app Laravel's `.env` defines (`REVERB_APP_*`, or the `PUSHER_APP_*` names), if any;
/// a partial set is an error naming what is missing.
fn env_app(env: &dyn Env) -> Result<Option<AppConfig>, ConfigError> {
    let id = first(env, &["REVERB_APP_ID", "PUSHER_APP_ID"]);
    let key = first(env, &["REVERB_APP_KEY", "PUSHER_APP_KEY"]);
    let secret = first(env, &["REVERB_APP_SECRET", "PUSHER_APP_SECRET"]);
    match (id, key, secret) {
        (None, None, None) => Ok(None),
        (Some((_, id)), Some((_, key)), Some((_, secret))) => {
            let mut app = AppConfig::with_defaults(&id, &key, &secret);
            app.webhook_url = webhook_url(env);
            Ok(Some(app))
        }
        (id, key, secret) => {
            let missing: Vec<&str> = [
                (id.is_none(), "REVERB_APP_ID"),
                (key.is_none(), "REVERB_APP_KEY"),
                (secret.is_none(), "REVERB_APP_SECRET"),
            ]
            .iter()
            .filter(|(m, _)| *m)
            .map(|(_, n)| *n)
            .collect();
            Err(ConfigError::Env {
                var: missing.join(", "),
                message: "not set: an app from the environment needs REVERB_APP_ID, REVERB_APP_KEY and REVERB_APP_SECRET (or the PUSHER_APP_* names); run `pushbox keygen` for new values".into(),
            })
        }
    }
}
