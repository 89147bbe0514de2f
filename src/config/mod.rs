//! Configuration: the TOML file, the environment (`PUSHBOX_*` and Laravel's `REVERB_*` /
//! `PUSHER_*`), a Laravel `.env` file, and validation with errors that name the file or variable
//! and say what to fix. Nothing else in pushbox reads configuration or the environment.
//!
//! One file per job:
//!
//! | file | owns |
//! | --- | --- |
//! | `mod.rs` | `Config`, the load entry points (`load`, `Config::dev` with its `DevApp`) |
//! | `sections.rs` | one struct per TOML section, each with its one `Default` |
//! | `units.rs` | seconds / milliseconds in the file, `Duration` in Rust |
//! | `env.rs` | the `Env` trait, the environment overlay (`PUSHBOX_*` shared with `--dev`), socket activation |
//! | `dotenv.rs` | Laravel `.env` files and their `${VAR}` references |
//! | `logging.rs` | the logging variables (`PUSHBOX_LOG`, `PUSHBOX_LOG_FORMAT`, …) |
//! | `validate.rs` | the rules a loaded configuration must meet, credential warnings |
//! | `cidr.rs` | address ranges for `metrics.allow` |
//! | `error.rs` | `ConfigError`, one line each |

mod cidr;
mod dotenv;
mod env;
mod error;
mod logging;
mod sections;
mod units;
mod validate;

pub use cidr::Cidr;
pub use dotenv::parse_env_file;
pub use env::{socket_activated, Env, ProcessEnv};
pub use error::ConfigError;
pub use logging::LogConfig;
pub use sections::{
    AppConfig, ClusterConfig, ConsoleConfig, Durability, MetricsConfig, ResumeConfig, ServerConfig,
    SpoolConfig, TlsConfig, WebhookTarget, WebhooksConfig, WEBHOOK_KINDS,
};
pub use validate::{redact, AGE_MAX, COALESCE_MAX, TIMER_MAX};

use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/pushbox/pushbox.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/pushbox";
/// Where `serve --dev` keeps its app unless `PUSHBOX_STATE_DIR` says otherwise: the current
/// directory, so each project checkout has its own dev keys.
pub const DEV_STATE_DIR: &str = ".pushbox-dev";
/// `EX_CONFIG` from sysexits.h: what `pushbox` exits with on a configuration error.
pub const EXIT_CONFIG: i32 = 78;

/// The file as written: every section optional.
#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct FileConfig {
    state_dir: Option<PathBuf>,
    user: Option<String>,
    server: ServerConfig,
    tls: Option<TlsConfig>,
    spool: SpoolConfig,
    webhooks: WebhooksConfig,
    console: Option<ConsoleConfig>,
    metrics: MetricsConfig,
    cluster: ClusterConfig,
    resume: ResumeConfig,
    apps: Vec<AppConfig>,
}

/// The whole, validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub state_dir: PathBuf,
    /// Started as root, drop to this user once the ports are bound.
    pub user: Option<String>,
    pub server: ServerConfig,
    pub tls: Option<TlsConfig>,
    pub spool: SpoolConfig,
    pub webhooks: WebhooksConfig,
    /// `None`: no console (404).
    pub console: Option<ConsoleConfig>,
    pub metrics: MetricsConfig,
    /// `[cluster]`: Redis/Valkey shared by several boxes (`redis_url` unset: one box).
    pub cluster: ClusterConfig,
    /// `[resume]`: replay of missed events to a reconnecting client.
    pub resume: ResumeConfig,
    pub apps: Vec<AppConfig>,
    /// Where the configuration came from, for messages.
    pub source: String,
}

impl Config {
    fn from_file(file: FileConfig, source: String) -> Config {
        Config {
            state_dir: file
                .state_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            user: file.user,
            server: file.server,
            tls: file.tls,
            spool: file.spool,
            webhooks: file.webhooks,
            console: file.console,
            metrics: file.metrics,
            cluster: file.cluster,
            resume: file.resume,
            apps: file.apps,
            source,
        }
    }

    /// The `--dev` configuration for `dev.app` (whose keys `dev` keeps in `state_dir`): every
    /// default, on 127.0.0.1 so a laptop's dev server is not on the network (unless `dev.host`
    /// says otherwise: `serve --dev --host`), on `REVERB_SERVER_PORT`, else `dev.port`, else
    /// 8080, with the console on (`dev.console_password`, else app login only). pushbox's own
    /// variables apply as they do without `--dev` (`PUSHBOX_WEBHOOK_URL` to the dev app,
    /// `PUSHBOX_TLS_CERT` / `PUSHBOX_TLS_KEY`, `PUSHBOX_CONSOLE_PASSWORD`,
    /// `PUSHBOX_METRICS_TOKEN`); no file, and no `REVERB_APP_*` app, applies: the dev app is
    /// the one app.
    pub fn dev(state_dir: PathBuf, dev: DevApp, env: &dyn Env) -> Result<Config, ConfigError> {
        let mut config = Config::from_file(FileConfig::default(), "pushbox serve --dev".into());
        config.state_dir = state_dir;
        config.server.host = dev.host.unwrap_or_else(|| "127.0.0.1".into());
        if let Some(port) = env::server_port(env)?.or(dev.port) {
            config.server.port = port;
        }
        config.console = Some(ConsoleConfig {
            password: dev.console_password,
            ..ConsoleConfig::default()
        });
        env::apply_pushbox(&mut config, env)?;
        let mut app = dev.app;
        app.webhook_url = env::webhook_url(env);
        config.apps = vec![app];
        validate::validate(&config)?;
        Ok(config)
    }

    /// Where the `--dev` app lives: `PUSHBOX_STATE_DIR`, else `DEV_STATE_DIR`.
    pub fn dev_state_dir(env: &dyn Env) -> PathBuf {
        env::state_dir(env).unwrap_or_else(|| PathBuf::from(DEV_STATE_DIR))
    }
}

/// What `--dev` runs with besides the defaults: the dev app, its console password, and where
/// to listen (`None`: 127.0.0.1 and 8080).
#[derive(Clone, Debug)]
pub struct DevApp {
    pub app: AppConfig,
    pub console_password: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
}

impl DevApp {
    /// `app` with its console password, on the default address.
    pub fn new(app: AppConfig, console_password: Option<String>) -> DevApp {
        DevApp {
            app,
            console_password,
            host: None,
            port: None,
        }
    }
}

/// Loads the configuration: the file at `path` (missing is fine when it is the default path),
/// then the environment on top, then validation.
pub fn load(path: Option<&Path>, env: &dyn Env) -> Result<Config, ConfigError> {
    let (path, explicit) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let (file, source) = read_file(&path, explicit)?;
    let mut config = Config::from_file(file, source);
    env::apply(&mut config, env)?;
    if config.apps.is_empty() {
        return Err(ConfigError::NoApps { path });
    }
    validate::validate(&config)?;
    Ok(config)
}

/// The parsed file and how messages name it. The default path may be missing (an app from the
/// environment alone is a complete configuration); a path the user gave must exist.
fn read_file(path: &Path, explicit: bool) -> Result<(FileConfig, String), ConfigError> {
    let source = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text)
            .map(|file| (file, source))
            .map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                error: e.to_string(),
            }),
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => Ok((
            FileConfig::default(),
            format!("the environment (there is no {source})"),
        )),
        Err(e) => Err(ConfigError::Read {
            path: path.to_path_buf(),
            error: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests;
