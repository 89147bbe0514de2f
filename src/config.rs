//! Configuration: the TOML file, the environment (`PUSHBOX_*` and Laravel's `REVERB_*` /
//! `PUSHER_*`), a Laravel `.env` file, and validation with errors that name the file or variable
//! and say what to fix. Nothing else in pushbox reads configuration.

use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/pushbox/pushbox.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/pushbox";
/// `EX_CONFIG` from sysexits.h: what `pushbox` exits with on a configuration error.
pub const EXIT_CONFIG: i32 = 78;

/// A configuration problem, one line, naming where it is and what to do.
#[derive(Debug)]
pub enum ConfigError {
    Read {
        path: PathBuf,
        error: String,
    },
    Parse {
        path: PathBuf,
        error: String,
    },
    Invalid {
        source: String,
        message: String,
    },
    Env {
        var: String,
        message: String,
    },
    NoApps {
        path: PathBuf,
    },
    /// `--dev` on a command other than `serve`, with no dev app saved yet.
    NoDevApp {
        dir: PathBuf,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, error } => write!(f, "{}: cannot read the config file ({error}); create it or pass --config PATH", path.display()),
            ConfigError::Parse { path, error } => write!(f, "{}: {}", path.display(), error.trim().replace('\n', " ")),
            ConfigError::Invalid { source, message } => write!(f, "{source}: {message}"),
            ConfigError::Env { var, message } => write!(f, "environment variable {var}: {message}"),
            ConfigError::NoApps { path } => write!(
                f,
                "no app configured: add an [[apps]] table to {} or set REVERB_APP_ID, REVERB_APP_KEY and REVERB_APP_SECRET (or, to develop, run `pushbox serve --dev` and pass --dev to the other commands)",
                path.display()
            ),
            ConfigError::NoDevApp { dir } => write!(
                f,
                "no dev app in {}: start `pushbox serve --dev` in this directory first (it saves its keys there), or set PUSHBOX_STATE_DIR to the dev state directory it printed",
                dir.display()
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

fn d_host() -> String {
    "0.0.0.0".into()
}
fn d_port() -> u16 {
    8080
}
fn d_activity() -> u64 {
    30
}
fn d_pong() -> u64 {
    30
}
fn d_http_path() -> String {
    "/pusher".into()
}
fn d_req_bytes() -> usize {
    1024 * 1024
}
fn d_outbound() -> usize {
    512
}
fn d_true() -> bool {
    true
}
fn d_origins() -> Vec<String> {
    vec!["*".into()]
}
fn d_max_conn() -> usize {
    10_000
}
fn d_10k() -> usize {
    10 * 1024
}
fn d_100() -> usize {
    100
}
fn d_1k() -> usize {
    1024
}
fn d_128() -> usize {
    128
}
fn d_200() -> usize {
    200
}
fn d_10() -> usize {
    10
}
fn d_rate() -> u32 {
    10
}

/// `[server]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "d_host")]
    pub host: String,
    #[serde(default = "d_port")]
    pub port: u16,
    /// Seconds advertised in `connection_established`; a client idle this long is pinged.
    #[serde(default = "d_activity")]
    pub activity_timeout: u64,
    /// Seconds to wait for any frame after a server ping before closing with 4201.
    #[serde(default = "d_pong")]
    pub pong_timeout: u64,
    /// Prefix before `/app/{key}` (pusher-js `wsPath`).
    #[serde(default)]
    pub ws_path: String,
    /// Prefix of the HTTP fallback transports (pusher-js `httpPath`).
    #[serde(default = "d_http_path")]
    pub http_path: String,
    #[serde(default = "d_req_bytes")]
    pub max_request_bytes: usize,
    /// Frames queued per connection before a client that can't keep up is closed with 4100.
    #[serde(default = "d_outbound")]
    pub outbound_queue: usize,
    /// Serve plain HTTP/WebSocket on host:port (turn off to serve TLS only).
    #[serde(default = "d_true")]
    pub plain: bool,
    /// Opt-in write coalescing: a connection with frames to send waits this many milliseconds
    /// for more before one `writev` (fewer syscalls under bursts, at that much latency). 0 = off.
    #[serde(default)]
    pub coalesce_ms: u64,
    /// An HTTP fallback session with no request for this many seconds is closed like a dropped
    /// WebSocket (default: `pong_timeout`).
    #[serde(default)]
    pub fallback_session_timeout: Option<u64>,
    /// HTTP fallback sessions on this server; more are refused with 4100.
    #[serde(default = "d_max_conn")]
    pub max_fallback_sessions: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: d_host(),
            port: d_port(),
            activity_timeout: d_activity(),
            pong_timeout: d_pong(),
            ws_path: String::new(),
            http_path: d_http_path(),
            max_request_bytes: d_req_bytes(),
            outbound_queue: d_outbound(),
            plain: true,
            coalesce_ms: 0,
            fallback_session_timeout: None,
            max_fallback_sessions: d_max_conn(),
        }
    }
}

/// One `[[apps]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub id: String,
    pub key: String,
    pub secret: String,
    #[serde(default = "d_true")]
    pub enabled: bool,
    #[serde(default = "d_true")]
    pub client_events: bool,
    #[serde(default = "d_true")]
    pub user_authentication: bool,
    #[serde(default)]
    pub subscription_count: bool,
    #[serde(default = "d_true")]
    pub watchlist: bool,
    #[serde(default = "d_origins")]
    pub allowed_origins: Vec<String>,
    #[serde(default = "d_max_conn")]
    pub max_connections: usize,
    #[serde(default = "d_10k")]
    pub max_message_bytes: usize,
    #[serde(default = "d_100")]
    pub max_channels_per_connection: usize,
    #[serde(default = "d_100")]
    pub max_presence_members: usize,
    #[serde(default = "d_1k")]
    pub max_presence_user_info_bytes: usize,
    #[serde(default = "d_128")]
    pub max_presence_user_id_length: usize,
    #[serde(default = "d_10k")]
    pub max_event_data_bytes: usize,
    #[serde(default = "d_100")]
    pub max_channels_per_event: usize,
    #[serde(default = "d_10")]
    pub max_batch_events: usize,
    #[serde(default = "d_200")]
    pub max_event_name_length: usize,
    #[serde(default = "d_200")]
    pub max_channel_name_length: usize,
    #[serde(default = "d_rate")]
    pub client_event_rate: u32,
    /// Shorthand for one webhook receiving every kind (`PUSHBOX_WEBHOOK_URL` for the env app).
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// `[[apps.webhooks]]`: where this app's webhooks go and which kinds each URL gets.
    #[serde(default)]
    pub webhooks: Vec<WebhookTarget>,
}

/// One webhook receiver of an app.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebhookTarget {
    pub url: String,
    /// Kinds sent to this URL (`channel_occupied`, `channel_vacated`, `member_added`,
    /// `member_removed`, `client_event`, `cache_miss`, `subscription_count`); empty = all.
    #[serde(default)]
    pub event_types: Vec<String>,
}

/// The webhook kinds PUSHER.md §8 defines.
pub const WEBHOOK_KINDS: [&str; 7] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
    "subscription_count",
];

/// Which of key or secret (with its verb) still holds the text a runbook told the reader to
/// replace (`REVERB_APP_KEY=your-generated-key-here` in the seed's runbook, `changeme`, …).
fn placeholder(key: &str, secret: &str) -> Option<&'static str> {
    const MARKS: [&str; 8] = [
        "your-",
        "your_",
        "-here",
        "_here",
        "changeme",
        "change-me",
        "example",
        "placeholder",
    ];
    let looks = |v: &str| {
        let v = v.to_ascii_lowercase();
        MARKS.iter().any(|m| v.contains(m))
    };
    match (looks(key), looks(secret)) {
        (true, true) => Some("key and the secret look"),
        (true, false) => Some("key looks"),
        (false, true) => Some("secret looks"),
        (false, false) => None,
    }
}

impl AppConfig {
    /// What is wrong with the app's credentials, if anything: a key or secret still holding a
    /// runbook's placeholder, a weak or short one, or a secret equal to the key. `pushbox check`
    /// prints it and `serve` logs it at start; neither refuses to run.
    pub fn credential_warning(&self) -> Option<String> {
        let distinct = |s: &str| s.chars().collect::<std::collections::HashSet<_>>().len();
        let (key, secret) = (&self.key, &self.secret);
        if let Some(which) = placeholder(key, secret) {
            Some(format!("the {which} like a placeholder from a runbook or .env.example, not a generated value: anyone who read the same text knows it; put the values of `pushbox keygen` in the shop's .env and here"))
        } else if secret.len() < 20 || distinct(secret) < 10 {
            Some(format!("the secret is weak ({} characters, {} distinct): anyone who guesses it can publish; use 32+ random characters (`pushbox keygen`)", secret.len(), distinct(secret)))
        } else if key.len() < 8 {
            Some("the key is short: use 16+ random characters (`pushbox keygen`)".into())
        } else if secret == key {
            Some("the secret equals the key, which browsers see: use a separate random secret (`pushbox keygen`)".into())
        } else {
            None
        }
    }

    /// Every webhook receiver: `webhooks` plus `webhook_url` (all kinds).
    pub fn webhook_targets(&self) -> Vec<WebhookTarget> {
        let mut v = self.webhooks.clone();
        if let Some(url) = &self.webhook_url {
            v.push(WebhookTarget {
                url: url.clone(),
                event_types: Vec::new(),
            });
        }
        v
    }
}

/// `durability`: whether an accepted event is fsync'd before the API answers.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    #[default]
    Fsync,
    Memory,
}

fn d_spool_max() -> u64 {
    1024 * 1024 * 1024
}
fn d_events_bytes() -> u64 {
    256 * 1024 * 1024
}
fn d_events_age() -> u64 {
    7 * 24 * 3600
}

/// `[spool]`: the durable log on local disk under `state_dir`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    #[serde(default)]
    pub durability: Durability,
    /// Disk cap for everything the spool keeps; past it the API answers 503.
    #[serde(default = "d_spool_max")]
    pub max_bytes: u64,
    /// The event log keeps at most this much (oldest segments go first).
    #[serde(default = "d_events_bytes")]
    pub events_retain_bytes: u64,
    /// ... and nothing older than this many seconds.
    #[serde(default = "d_events_age")]
    pub events_retain_secs: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            durability: Durability::Fsync,
            max_bytes: d_spool_max(),
            events_retain_bytes: d_events_bytes(),
            events_retain_secs: d_events_age(),
        }
    }
}

/// Events within this window share one webhook request; short, so a batch is in the spool
/// within milliseconds of its first event.
fn d_batch_ms() -> u64 {
    10
}
fn d_wh_timeout() -> u64 {
    4000
}
fn d_backoff_min() -> u64 {
    1000
}
fn d_backoff_max() -> u64 {
    5 * 60 * 1000
}
fn d_wh_age() -> u64 {
    24 * 3600
}
fn d_wh_batch() -> usize {
    20
}

/// `[webhooks]`: batching and delivery policy for every app's webhooks.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Events within this window go out in one request.
    #[serde(default = "d_batch_ms")]
    pub batch_ms: u64,
    /// At most this many events per request.
    #[serde(default = "d_wh_batch")]
    pub batch_max_events: usize,
    #[serde(default = "d_wh_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "d_backoff_min")]
    pub backoff_initial_ms: u64,
    /// The retry interval never grows past this.
    #[serde(default = "d_backoff_max")]
    pub backoff_max_ms: u64,
    /// A batch still failing after this many seconds is parked as a dead letter.
    #[serde(default = "d_wh_age")]
    pub max_age_secs: u64,
    /// Extra CA certificates (PEM) to trust for HTTPS receivers (a shop's private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            batch_ms: d_batch_ms(),
            batch_max_events: d_wh_batch(),
            timeout_ms: d_wh_timeout(),
            backoff_initial_ms: d_backoff_min(),
            backoff_max_ms: d_backoff_max(),
            max_age_secs: d_wh_age(),
            ca_file: None,
        }
    }
}

fn d_tls_port() -> u16 {
    443
}

/// `[tls]`: the TLS listener (beside the plain one unless `server.plain = false`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain (`PUSHBOX_TLS_CERT`).
    pub cert: PathBuf,
    /// PEM private key (`PUSHBOX_TLS_KEY`).
    pub key: PathBuf,
    #[serde(default = "d_host")]
    pub host: String,
    #[serde(default = "d_tls_port")]
    pub port: u16,
}

fn d_session_secs() -> u64 {
    8 * 3600
}

/// `[console]`: the built-in web console at `/console`. Without this section there is no
/// console at all (404).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// The admin password (sees every app). `PUSHBOX_CONSOLE_PASSWORD` overrides it.
    #[serde(default)]
    pub password: Option<String>,
    /// Also allow signing in with an app's key and secret (sees that app only).
    #[serde(default = "d_true")]
    pub app_login: bool,
    /// How long a console session lasts, in seconds.
    #[serde(default = "d_session_secs")]
    pub session_secs: u64,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            password: None,
            app_login: true,
            session_secs: d_session_secs(),
        }
    }
}

/// `[metrics]`: Prometheus text at `/metrics` (on by default, unrestricted).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// Require `Authorization: Bearer <token>`. `PUSHBOX_METRICS_TOKEN` overrides it.
    #[serde(default)]
    pub token: Option<String>,
    /// Only these peer networks may scrape (`"127.0.0.1/32"`, `"10.0.0.0/8"`, `"::1"`); empty = any.
    #[serde(default)]
    pub allow: Vec<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            token: None,
            allow: Vec::new(),
        }
    }
}

/// An address range like `192.168.1.0/24` or a single address (`::1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an address or network like \"10.0.0.0/8\""))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0-{max}")),
            },
        };
        Ok(Cidr { addr, prefix })
    }

    /// True when `ip` is inside this range (IPv4-mapped IPv6 peers count as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(i) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(i) & mask
            }
            _ => false,
        }
    }
}

impl AppConfig {
    /// An app with every default, as defined by the environment or `--dev`.
    pub fn with_defaults(id: &str, key: &str, secret: &str) -> AppConfig {
        let toml = format!(
            "id = {}\nkey = {}\nsecret = {}\n",
            crate::protocol::json_str(id),
            crate::protocol::json_str(key),
            crate::protocol::json_str(secret)
        );
        // The defaults above are total: this parse of our own three string fields cannot fail,
        // but fall back to a minimal literal rather than unwrap.
        toml::from_str(&toml).unwrap_or_else(|_| AppConfig {
            id: id.into(),
            key: key.into(),
            secret: secret.into(),
            enabled: true,
            client_events: true,
            user_authentication: true,
            subscription_count: false,
            watchlist: true,
            allowed_origins: d_origins(),
            max_connections: d_max_conn(),
            max_message_bytes: d_10k(),
            max_channels_per_connection: d_100(),
            max_presence_members: d_100(),
            max_presence_user_info_bytes: d_1k(),
            max_presence_user_id_length: d_128(),
            max_event_data_bytes: d_10k(),
            max_channels_per_event: d_100(),
            max_batch_events: d_10(),
            max_event_name_length: d_200(),
            max_channel_name_length: d_200(),
            client_event_rate: d_rate(),
            webhook_url: None,
            webhooks: Vec::new(),
        })
    }

    /// True when a WebSocket `Origin` header is allowed (absent Origin: non-browser, allowed).
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        self.allowed_origins.iter().any(|o| {
            o == "*" || o.eq_ignore_ascii_case(origin) || {
                // "shop.example" matches any scheme and port on that host.
                let host = origin.split("://").nth(1).unwrap_or(origin);
                let host = host.split(':').next().unwrap_or(host);
                o.eq_ignore_ascii_case(host)
            }
        })
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    state_dir: Option<PathBuf>,
    user: Option<String>,
    #[serde(default)]
    server: ServerConfig,
    tls: Option<TlsConfig>,
    #[serde(default)]
    spool: SpoolConfig,
    #[serde(default)]
    webhooks: WebhooksConfig,
    console: Option<ConsoleConfig>,
    #[serde(default)]
    metrics: MetricsConfig,
    #[serde(default)]
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
    pub apps: Vec<AppConfig>,
    /// Where the configuration came from, for messages.
    pub source: String,
}

/// Environment lookup, so tests can pass their own.
pub trait Env {
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment, overlaid on an optional `.env` file.
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

/// Loads the configuration: the file at `path` (missing is fine when it is the default path),
/// then the environment on top.
pub fn load(path: Option<&Path>, env: &dyn Env) -> Result<Config, ConfigError> {
    let (path, explicit) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let mut source = path.display().to_string();
    let file: FileConfig = match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            error: e.to_string(),
        })?,
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
            source = format!("the environment (there is no {source})");
            FileConfig::default()
        }
        Err(e) => {
            return Err(ConfigError::Read {
                path: path.clone(),
                error: e.to_string(),
            })
        }
    };
    let mut config = Config {
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
        apps: file.apps,
        source: source.clone(),
    };
    apply_env(&mut config, env)?;
    if config.apps.is_empty() {
        return Err(ConfigError::NoApps { path });
    }
    validate(&config)?;
    Ok(config)
}

fn env_first(env: &dyn Env, names: &[&str]) -> Option<(String, String)> {
    names
        .iter()
        .find_map(|n| env.get(n).map(|v| ((*n).to_owned(), v)))
}

fn apply_env(config: &mut Config, env: &dyn Env) -> Result<(), ConfigError> {
    if let Some(dir) = env.get("PUSHBOX_STATE_DIR") {
        config.state_dir = PathBuf::from(dir);
    }
    if let Some(host) = env.get("REVERB_SERVER_HOST") {
        config.server.host = host;
    }
    if let Some(port) = env.get("REVERB_SERVER_PORT") {
        config.server.port = port.trim().parse().map_err(|_| ConfigError::Env {
            var: "REVERB_SERVER_PORT".into(),
            message: format!("{port:?} is not a port number (1-65535)"),
        })?;
    }
    match (env.get("PUSHBOX_TLS_CERT"), env.get("PUSHBOX_TLS_KEY")) {
        (Some(cert), Some(key)) => {
            let (host, port) = config
                .tls
                .as_ref()
                .map(|t| (t.host.clone(), t.port))
                .unwrap_or_else(|| (d_host(), d_tls_port()));
            config.tls = Some(TlsConfig {
                cert: cert.into(),
                key: key.into(),
                host,
                port,
            });
        }
        (None, None) => {}
        (c, _) => {
            let var = if c.is_some() {
                "PUSHBOX_TLS_KEY"
            } else {
                "PUSHBOX_TLS_CERT"
            };
            return Err(ConfigError::Env { var: var.into(), message: "not set: TLS needs both PUSHBOX_TLS_CERT and PUSHBOX_TLS_KEY (PEM files; `pushbox cert self-signed` makes a pair)".into() });
        }
    }
    if let Some(p) = env.get("PUSHBOX_CONSOLE_PASSWORD") {
        config
            .console
            .get_or_insert_with(ConsoleConfig::default)
            .password = Some(p);
    }
    if let Some(t) = env.get("PUSHBOX_METRICS_TOKEN") {
        config.metrics.token = Some(t);
    }
    let id = env_first(env, &["REVERB_APP_ID", "PUSHER_APP_ID"]);
    let key = env_first(env, &["REVERB_APP_KEY", "PUSHER_APP_KEY"]);
    let secret = env_first(env, &["REVERB_APP_SECRET", "PUSHER_APP_SECRET"]);
    match (id, key, secret) {
        (None, None, None) => {}
        (Some((_, id)), Some((_, key)), Some((_, secret))) => {
            let mut app = AppConfig::with_defaults(&id, &key, &secret);
            app.webhook_url = env.get("PUSHBOX_WEBHOOK_URL");
            // The env-defined app replaces a file app with the same id.
            config.apps.retain(|a| a.id != app.id);
            config.apps.push(app);
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
            return Err(ConfigError::Env {
                var: missing.join(", "),
                message: "not set: an app from the environment needs REVERB_APP_ID, REVERB_APP_KEY and REVERB_APP_SECRET (or the PUSHER_APP_* names); run `pushbox keygen` for new values".into(),
            });
        }
    }
    Ok(())
}

fn validate(config: &Config) -> Result<(), ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        source: config.source.clone(),
        message,
    };
    let s = &config.server;
    if s.activity_timeout == 0 {
        return Err(invalid("server.activity_timeout must be at least 1 second (pusher-js refuses a zero activity_timeout)".into()));
    }
    if s.pong_timeout == 0 {
        return Err(invalid(
            "server.pong_timeout must be at least 1 second".into(),
        ));
    }
    if !s.plain && config.tls.is_none() {
        return Err(invalid(
            "server.plain = false but no [tls] is configured: nothing would listen".into(),
        ));
    }
    if config.webhooks.timeout_ms == 0 || config.webhooks.batch_max_events == 0 {
        return Err(invalid(
            "webhooks.timeout_ms and webhooks.batch_max_events must be at least 1".into(),
        ));
    }
    if s.coalesce_ms > 20 {
        return Err(invalid(
            "server.coalesce_ms must be at most 20 (a few milliseconds buy the throughput; more only adds latency)".into(),
        ));
    }
    if s.outbound_queue < 8 {
        return Err(invalid(
            "server.outbound_queue must be at least 8 frames".into(),
        ));
    }
    for (name, p) in [
        ("server.ws_path", &s.ws_path),
        ("server.http_path", &s.http_path),
    ] {
        if !p.is_empty() && (!p.starts_with('/') || p.ends_with('/')) {
            return Err(invalid(format!("{name} = {p:?}: use a path like \"/ws\" (leading slash, no trailing slash) or \"\"")));
        }
    }
    if let Some(c) = &config.console {
        if c.password.as_deref().is_some_and(|p| p.len() < 8) {
            return Err(invalid("console.password must be at least 8 characters (or remove it and sign in with an app's key and secret)".into()));
        }
        if c.password.is_none() && !c.app_login {
            return Err(invalid("[console] has no password and app_login = false: nobody could sign in; set console.password or app_login = true".into()));
        }
        if c.session_secs == 0 {
            return Err(invalid("console.session_secs must be at least 1".into()));
        }
    }
    if config.metrics.token.as_deref() == Some("") {
        return Err(invalid(
            "metrics.token is empty: remove it or set a token".into(),
        ));
    }
    for a in &config.metrics.allow {
        Cidr::parse(a).map_err(|e| invalid(format!("metrics.allow: {e}")))?;
    }
    let mut ids = std::collections::HashSet::new();
    let mut keys = std::collections::HashSet::new();
    for app in &config.apps {
        let what = format!("app {:?}", app.id);
        if app.id.is_empty() || app.key.is_empty() || app.secret.is_empty() {
            return Err(invalid(format!(
                "{what}: id, key and secret must all be non-empty (run `pushbox keygen`)"
            )));
        }
        if app.id.contains('/') || app.key.contains('/') {
            return Err(invalid(format!("{what}: id and key must not contain '/'")));
        }
        if !ids.insert(app.id.as_str()) {
            return Err(invalid(format!(
                "{what}: two apps have this id; ids must be unique"
            )));
        }
        if !keys.insert(app.key.as_str()) {
            return Err(invalid(format!(
                "{what}: its key {:?} is used by another app; keys must be unique",
                app.key
            )));
        }
        if app.max_message_bytes < 256 {
            return Err(invalid(format!(
                "{what}: max_message_bytes must be at least 256"
            )));
        }
        for t in app.webhook_targets() {
            if !(t.url.starts_with("http://") || t.url.starts_with("https://")) {
                return Err(invalid(format!(
                    "{what}: webhook url {:?} must start with http:// or https://",
                    t.url
                )));
            }
            if let Some(k) = t
                .event_types
                .iter()
                .find(|k| !WEBHOOK_KINDS.contains(&k.as_str()))
            {
                return Err(invalid(format!(
                    "{what}: unknown webhook event type {k:?}; use one of {}",
                    WEBHOOK_KINDS.join(", ")
                )));
            }
        }
        if app.client_event_rate == 0 {
            return Err(invalid(format!("{what}: client_event_rate must be at least 1 (use client_events = false to turn them off)")));
        }
    }
    Ok(())
}

/// Parses a Laravel `.env` file: `KEY=value`, `export KEY=value`, quotes, `#` comments, and
/// `${VAR}` references to earlier keys or the process environment.
pub fn parse_env_file(text: &str) -> HashMap<String, String> {
    let mut vars: HashMap<String, String> = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let k = k.trim();
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let v = v.trim();
        let (value, expand) = if let Some(inner) = v
            .strip_prefix('"')
            .and_then(|r| r.rfind('"').map(|i| &r[..i]))
        {
            (inner.replace("\\n", "\n").replace("\\\"", "\""), true)
        } else if let Some(inner) = v
            .strip_prefix('\'')
            .and_then(|r| r.rfind('\'').map(|i| &r[..i]))
        {
            (inner.to_owned(), false)
        } else {
            let unquoted = match v.find(" #") {
                Some(i) => v[..i].trim_end(),
                None => v,
            };
            (unquoted.to_owned(), true)
        };
        let value = if expand {
            expand_refs(&value, &vars)
        } else {
            value
        };
        vars.insert(k.to_owned(), value);
    }
    vars
}

fn expand_refs(value: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                let v = vars
                    .get(name)
                    .cloned()
                    .or_else(|| std::env::var(name).ok())
                    .unwrap_or_default();
                out.push_str(&v);
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("pushbox.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A directory removed when the test ends (pass or fail).
    fn tmpdir(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("pushbox-config-{name}-"))
            .tempdir()
            .unwrap()
    }

    #[test]
    fn laravel_env_defines_an_app() {
        let e = env(&[
            ("REVERB_APP_ID", "1"),
            ("REVERB_APP_KEY", "k"),
            ("REVERB_APP_SECRET", "s"),
            ("REVERB_SERVER_PORT", "8090"),
            ("PUSHBOX_STATE_DIR", "/tmp/x"),
        ]);
        let c = load(Some(Path::new("/nonexistent/pushbox.toml")), &e);
        assert!(
            matches!(c, Err(ConfigError::Read { .. })),
            "explicit missing file is an error"
        );
        let c = load(None, &e).unwrap();
        assert_eq!(c.apps.len(), 1);
        assert_eq!(c.apps[0].key, "k");
        assert!(c.apps[0].client_events && c.apps[0].user_authentication);
        assert_eq!(c.server.port, 8090);
        assert_eq!(c.server.host, "0.0.0.0");
        assert_eq!(c.state_dir, PathBuf::from("/tmp/x"));
        // Messages (and `pushbox check`) say where the app came from, not a file that isn't there.
        assert_eq!(
            c.source,
            format!("the environment (there is no {DEFAULT_CONFIG_PATH})")
        );
    }

    #[test]
    fn pusher_aliases_and_partial_env() {
        let e = env(&[
            ("PUSHER_APP_ID", "1"),
            ("PUSHER_APP_KEY", "k"),
            ("PUSHER_APP_SECRET", "s"),
        ]);
        assert_eq!(load(None, &e).unwrap().apps[0].id, "1");
        let e = env(&[("REVERB_APP_ID", "1")]);
        let err = load(None, &e).unwrap_err().to_string();
        assert!(
            err.contains("REVERB_APP_KEY") && err.contains("REVERB_APP_SECRET"),
            "{err}"
        );
        let e = env(&[
            ("REVERB_APP_ID", "1"),
            ("REVERB_APP_KEY", "k"),
            ("REVERB_APP_SECRET", "s"),
            ("REVERB_SERVER_PORT", "http"),
        ]);
        assert!(load(None, &e)
            .unwrap_err()
            .to_string()
            .contains("REVERB_SERVER_PORT"));
        let err = load(None, &env(&[])).unwrap_err().to_string();
        assert!(err.contains("no app configured"), "{err}");
    }

    #[test]
    fn toml_file_with_several_apps() {
        let tmp = tmpdir("apps");
        let d = tmp.path();
        let p = write(d, "state_dir = \"/srv/pb\"\n[server]\nport = 6001\nactivity_timeout = 120\n[[apps]]\nid = \"a\"\nkey = \"ka\"\nsecret = \"sa\"\nclient_events = false\nmax_presence_members = 2\n[[apps]]\nid = \"b\"\nkey = \"kb\"\nsecret = \"sb\"\nallowed_origins = [\"https://shop.example\"]\n");
        let c = load(Some(&p), &env(&[])).unwrap();
        assert_eq!(c.apps.len(), 2);
        assert!(!c.apps[0].client_events);
        assert_eq!(c.apps[0].max_presence_members, 2);
        assert_eq!(c.server.port, 6001);
        assert_eq!(c.state_dir, PathBuf::from("/srv/pb"));
        assert!(c.apps[1].origin_allowed(Some("https://shop.example")));
        assert!(!c.apps[1].origin_allowed(Some("https://evil.example")));
        assert!(c.apps[1].origin_allowed(None));
        assert!(c.apps[0].origin_allowed(Some("http://anything")));
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let tmp = tmpdir("errors");
        let d = tmp.path();
        let p = write(
            d,
            "[[apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"s\"\nclient_event = true\n",
        );
        let err = load(Some(&p), &env(&[])).unwrap_err().to_string();
        assert!(
            err.contains("pushbox.toml") && err.contains("client_event"),
            "{err}"
        );
        let p = write(d, "[server\n");
        let err = load(Some(&p), &env(&[])).unwrap_err().to_string();
        assert!(err.contains("pushbox.toml"), "{err}");
        assert!(!err.contains('\n'));
        let p = write(d, "[[apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"s\"\n[[apps]]\nid = \"b\"\nkey = \"k\"\nsecret = \"s\"\n");
        assert!(load(Some(&p), &env(&[]))
            .unwrap_err()
            .to_string()
            .contains("unique"));
        let p = write(
            d,
            "[server]\nactivity_timeout = 0\n[[apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"s\"\n",
        );
        assert!(load(Some(&p), &env(&[]))
            .unwrap_err()
            .to_string()
            .contains("activity_timeout"));
        let p = write(d, "[[apps]]\nid = \"a\"\nkey = \"k\"\n");
        assert!(load(Some(&p), &env(&[]))
            .unwrap_err()
            .to_string()
            .contains("secret"));
        let p = write(
            d,
            "[server]\ncoalesce_ms = 50\n[[apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"s\"\n",
        );
        assert!(load(Some(&p), &env(&[]))
            .unwrap_err()
            .to_string()
            .contains("coalesce_ms"));
        let p = write(d, "[server]\nport = 70000\n");
        assert!(load(Some(&p), &env(&[])).is_err());
    }

    #[test]
    fn console_and_metrics_sections() {
        let tmp = tmpdir("console");
        let d = tmp.path();
        let app = "[[apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"s\"\n";
        let p = write(d, app);
        let c = load(Some(&p), &env(&[])).unwrap();
        assert!(c.console.is_none(), "no [console]: no console");
        assert!(c.metrics.enabled && c.metrics.token.is_none() && c.metrics.allow.is_empty());
        let p = write(d, &format!("[console]\npassword = \"correct horse\"\nsession_secs = 60\n[metrics]\ntoken = \"t0k\"\nallow = [\"127.0.0.1/32\", \"::1\"]\n{app}"));
        let c = load(Some(&p), &env(&[])).unwrap();
        let con = c.console.unwrap();
        assert_eq!(con.password.as_deref(), Some("correct horse"));
        assert!(con.app_login);
        assert_eq!(con.session_secs, 60);
        assert_eq!(c.metrics.token.as_deref(), Some("t0k"));
        let p = write(d, &format!("[console]\n{app}"));
        let c = load(
            Some(&p),
            &env(&[("PUSHBOX_CONSOLE_PASSWORD", "from-env-123")]),
        )
        .unwrap();
        assert_eq!(c.console.unwrap().password.as_deref(), Some("from-env-123"));
        for (bad, what) in [
            ("[console]\npassword = \"short\"\n", "console.password"),
            ("[console]\napp_login = false\n", "nobody could sign in"),
            ("[console]\nsession_secs = 0\n", "session_secs"),
            ("[metrics]\nallow = [\"10.0.0.0/33\"]\n", "metrics.allow"),
            ("[metrics]\nallow = [\"localhost\"]\n", "metrics.allow"),
            ("[metrics]\ntoken = \"\"\n", "metrics.token"),
        ] {
            let p = write(d, &format!("{bad}{app}"));
            let err = load(Some(&p), &env(&[])).unwrap_err().to_string();
            assert!(err.contains(what), "{bad}: {err}");
        }
    }

    #[test]
    fn cidr_ranges() {
        use std::net::IpAddr;
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let c = Cidr::parse("192.168.1.0/24").unwrap();
        assert!(c.contains(ip("192.168.1.77")) && !c.contains(ip("192.168.2.1")));
        assert!(c.contains(ip("::ffff:192.168.1.5")), "IPv4-mapped peers");
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        assert!(Cidr::parse("::1").unwrap().contains(ip("::1")));
        assert!(!Cidr::parse("::1").unwrap().contains(ip("127.0.0.1")));
        assert!(Cidr::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(Cidr::parse("1.2.3.4/40").is_err() && Cidr::parse("nope").is_err());
    }

    #[test]
    fn env_file_like_the_seed() {
        let text = "APP_NAME=sellermind\n# comment\nBROADCAST_CONNECTION=reverb\nREVERB_APP_ID=123456\nREVERB_APP_KEY=\"abc\"\nREVERB_APP_SECRET='x${NOPE}'\nREVERB_HOST=\"localhost\"\nREVERB_PORT=8090 # trailing\nVITE_REVERB_APP_KEY=\"${REVERB_APP_KEY}\"\nexport VITE_REVERB_HOST=\"${REVERB_HOST}\"\nbroken line\n=x\n";
        let v = parse_env_file(text);
        assert_eq!(v["REVERB_APP_ID"], "123456");
        assert_eq!(v["REVERB_APP_KEY"], "abc");
        assert_eq!(v["REVERB_APP_SECRET"], "x${NOPE}");
        assert_eq!(v["REVERB_PORT"], "8090");
        assert_eq!(v["VITE_REVERB_APP_KEY"], "abc");
        assert_eq!(v["VITE_REVERB_HOST"], "localhost");
        assert_eq!(parse_env_file("A=${unterminated")["A"], "${unterminated");
    }
}
