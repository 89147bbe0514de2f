//! The sections of `pushbox.toml`, one struct each, with their defaults. Each section has one
//! `impl Default` and `#[serde(default)]`, so a key left out of the file takes the value written
//! here and nowhere else; `deny_unknown_fields` turns a typo into an error naming the key.
//! Durations are `Duration`s; the TOML key (and so its unit) stays what users' files say,
//! through `rename` and the helpers in `units`.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// The address every listener binds unless told otherwise.
const ANY_HOST: &str = "0.0.0.0";

/// `[server]`
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Advertised in `connection_established`; a client idle this long is pinged (seconds).
    #[serde(deserialize_with = "super::units::secs")]
    pub activity_timeout: Duration,
    /// How long to wait for any frame after a server ping before closing with 4201 (seconds).
    #[serde(deserialize_with = "super::units::secs")]
    pub pong_timeout: Duration,
    /// Prefix before `/app/{key}` (pusher-js `wsPath`).
    pub ws_path: String,
    /// Prefix of the HTTP fallback transports (pusher-js `httpPath`).
    pub http_path: String,
    pub max_request_bytes: usize,
    /// Frames queued per connection before a client that can't keep up is closed with 4100.
    pub outbound_queue: usize,
    /// Serve plain HTTP/WebSocket on host:port (turn off to serve TLS only).
    pub plain: bool,
    /// Opt-in write coalescing (`coalesce_ms`): a connection with frames to send waits this long
    /// for more before one `writev` (fewer syscalls under bursts, at that much latency). 0 = off.
    #[serde(rename = "coalesce_ms", deserialize_with = "super::units::millis")]
    pub coalesce: Duration,
    /// An HTTP fallback session with no request for this long is closed like a dropped
    /// WebSocket (seconds; default: `pong_timeout`).
    #[serde(deserialize_with = "super::units::opt_secs")]
    pub fallback_session_timeout: Option<Duration>,
    /// HTTP fallback sessions on this server; more are refused with 4100.
    pub max_fallback_sessions: usize,
    /// Every phase of an HTTP request has this deadline (seconds): the head, then the body; an
    /// idle keep-alive connection is closed after it, and one whose client stops reading a
    /// response or whose request has gone nowhere for twice as long is dropped.
    #[serde(deserialize_with = "super::units::secs")]
    pub request_timeout: Duration,
    /// Connections (WebSocket and HTTP fallback sessions) one source address may hold per app;
    /// more are refused with 4100. 0 = no limit (`PUSHBOX_MAX_CONNECTIONS_PER_IP`).
    pub max_connections_per_ip: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: ANY_HOST.into(),
            port: 8080,
            activity_timeout: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(30),
            ws_path: String::new(),
            http_path: "/pusher".into(),
            max_request_bytes: 1024 * 1024,
            outbound_queue: 512,
            plain: true,
            coalesce: Duration::ZERO,
            fallback_session_timeout: None,
            max_fallback_sessions: 10_000,
            request_timeout: Duration::from_secs(30),
            // A shop device (a till, a kiosk, a staff browser with a dozen tabs) holds a few
            // connections; even everyone behind one NAT or reverse proxy in a large shop stays
            // in the hundreds. A stranger needs ten addresses to fill the default quota.
            max_connections_per_ip: 1_000,
        }
    }
}

/// `[tls]`: the TLS listener (beside the plain one unless `server.plain = false`). `cert` and
/// `key` have no useful default: validation refuses a `[tls]` without them.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain (`PUSHBOX_TLS_CERT`).
    pub cert: PathBuf,
    /// PEM private key (`PUSHBOX_TLS_KEY`).
    pub key: PathBuf,
    pub host: String,
    pub port: u16,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: PathBuf::new(),
            key: PathBuf::new(),
            host: ANY_HOST.into(),
            port: 443,
        }
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

/// `[spool]`: the durable log on local disk under `state_dir`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    pub durability: Durability,
    /// Disk cap for everything the spool keeps; past it the API answers 503.
    pub max_bytes: u64,
    /// The event log keeps at most this much (oldest segments go first).
    pub events_retain_bytes: u64,
    /// ... and nothing older than this (`events_retain_secs`).
    #[serde(rename = "events_retain_secs", deserialize_with = "super::units::secs")]
    pub events_retain_age: Duration,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            durability: Durability::Fsync,
            max_bytes: 1024 * 1024 * 1024,
            events_retain_bytes: 256 * 1024 * 1024,
            events_retain_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// `[webhooks]`: batching and delivery policy for every app's webhooks.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Events within this window go out in one request (`batch_ms`).
    #[serde(rename = "batch_ms", deserialize_with = "super::units::millis")]
    pub batch_window: Duration,
    /// At most this many events per request.
    pub batch_max_events: usize,
    /// A receiver must answer within this (`timeout_ms`).
    #[serde(rename = "timeout_ms", deserialize_with = "super::units::millis")]
    pub timeout: Duration,
    /// The first retry interval (`backoff_initial_ms`); it doubles per failure.
    #[serde(
        rename = "backoff_initial_ms",
        deserialize_with = "super::units::millis"
    )]
    pub backoff_initial: Duration,
    /// The retry interval never grows past this (`backoff_max_ms`).
    #[serde(rename = "backoff_max_ms", deserialize_with = "super::units::millis")]
    pub backoff_max: Duration,
    /// A batch still failing this long after it was made is parked as a dead letter
    /// (`max_age_secs`).
    #[serde(rename = "max_age_secs", deserialize_with = "super::units::secs")]
    pub max_age: Duration,
    /// Extra CA certificates (PEM) to trust for HTTPS receivers (a shop's private CA).
    pub ca_file: Option<PathBuf>,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            // Short, so a batch is in the spool within milliseconds of its first event.
            batch_window: Duration::from_millis(10),
            batch_max_events: 20,
            timeout: Duration::from_millis(4000),
            backoff_initial: Duration::from_millis(1000),
            backoff_max: Duration::from_secs(5 * 60),
            max_age: Duration::from_secs(24 * 3600),
            ca_file: None,
        }
    }
}

/// `[console]`: the built-in web console at `/console`. Without this section there is no
/// console at all (404).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// The admin password (sees every app). `PUSHBOX_CONSOLE_PASSWORD` overrides it.
    pub password: Option<String>,
    /// Also allow signing in with an app's key and secret (sees that app only).
    pub app_login: bool,
    /// How long a console session lasts (`session_secs`).
    #[serde(rename = "session_secs", deserialize_with = "super::units::secs")]
    pub session_lifetime: Duration,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            password: None,
            app_login: true,
            session_lifetime: Duration::from_secs(8 * 3600),
        }
    }
}

/// `[metrics]`: Prometheus text at `/metrics` (on by default, unrestricted).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Require `Authorization: Bearer <token>`. `PUSHBOX_METRICS_TOKEN` overrides it.
    pub token: Option<String>,
    /// Only these peer networks may scrape (`"127.0.0.1/32"`, `"10.0.0.0/8"`, `"::1"`); empty = any.
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

/// One `[[apps]]` entry. `id`, `key` and `secret` default to empty only so the other keys can
/// default; validation refuses an app without them.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppConfig {
    pub id: String,
    pub key: String,
    pub secret: String,
    pub enabled: bool,
    pub client_events: bool,
    pub user_authentication: bool,
    pub subscription_count: bool,
    pub watchlist: bool,
    pub allowed_origins: Vec<String>,
    pub max_connections: usize,
    pub max_message_bytes: usize,
    pub max_channels_per_connection: usize,
    pub max_presence_members: usize,
    pub max_presence_user_info_bytes: usize,
    pub max_presence_user_id_length: usize,
    pub max_event_data_bytes: usize,
    pub max_channels_per_event: usize,
    pub max_batch_events: usize,
    pub max_event_name_length: usize,
    pub max_channel_name_length: usize,
    pub client_event_rate: u32,
    /// Shorthand for one webhook receiving every kind (`PUSHBOX_WEBHOOK_URL` for the env app).
    pub webhook_url: Option<String>,
    /// `[[apps.webhooks]]`: where this app's webhooks go and which kinds each URL gets.
    pub webhooks: Vec<WebhookTarget>,
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            id: String::new(),
            key: String::new(),
            secret: String::new(),
            enabled: true,
            client_events: true,
            user_authentication: true,
            subscription_count: false,
            watchlist: true,
            allowed_origins: vec!["*".into()],
            max_connections: 10_000,
            max_message_bytes: 10 * 1024,
            max_channels_per_connection: 100,
            max_presence_members: 100,
            max_presence_user_info_bytes: 1024,
            max_presence_user_id_length: 128,
            max_event_data_bytes: 10 * 1024,
            max_channels_per_event: 100,
            max_batch_events: 10,
            max_event_name_length: 200,
            max_channel_name_length: 200,
            client_event_rate: 10,
            webhook_url: None,
            webhooks: Vec::new(),
        }
    }
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

impl AppConfig {
    /// An app with every default, as defined by the environment or `--dev`.
    pub fn with_defaults(id: &str, key: &str, secret: &str) -> AppConfig {
        AppConfig {
            id: id.into(),
            key: key.into(),
            secret: secret.into(),
            ..AppConfig::default()
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

/// `[cluster]`: several boxes as one, on the shop's Redis or Valkey. Without `redis_url` (the
/// default: no section at all) pushbox is a single box and opens no Redis connection.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://[user:pass@]host:port[/db]` or `rediss://…` (TLS, rustls). `PUSHBOX_REDIS_URL`.
    pub redis_url: Option<String>,
    /// Extra CA certificate (PEM) to trust for `rediss://` (a shop's private CA).
    pub ca_file: Option<PathBuf>,
    /// Every key starts `{key_prefix}:v1:{<app id>}:`. `PUSHBOX_CLUSTER_PREFIX`.
    pub key_prefix: String,
    /// This box's name among the nodes (default: the host name). `PUSHBOX_NODE_NAME`.
    pub node_name: Option<String>,
    /// A node that has not renewed its lease for this long is taken for dead: its members
    /// leave (`"15s"`, or a whole number of seconds).
    #[serde(deserialize_with = "super::units::human_duration")]
    pub lease: Duration,
    /// How often a node renews its lease (`"3s"`).
    #[serde(deserialize_with = "super::units::human_duration")]
    pub heartbeat: Duration,
    /// `/up` answers 503 when this node is further behind the bus than this (`"10s"`).
    #[serde(deserialize_with = "super::units::human_duration")]
    pub max_lag: Duration,
}

/// `[cluster] key_prefix` when none is given.
pub const DEFAULT_CLUSTER_PREFIX: &str = "pb";

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: None,
            ca_file: None,
            key_prefix: DEFAULT_CLUSTER_PREFIX.into(),
            node_name: None,
            lease: Duration::from_secs(15),
            heartbeat: Duration::from_secs(3),
            max_lag: Duration::from_secs(10),
        }
    }
}

impl ClusterConfig {
    /// Whether this box is part of a cluster.
    pub fn enabled(&self) -> bool {
        self.redis_url.is_some()
    }
}
/// `[resume]`: give a client that reconnects what it missed (README "Resume"). The windows and
/// caps bound what is kept in memory; nothing is kept for connections that carry neither a
/// resume token (`{path_prefix}/{token}` in pusher-js's `wsPath`) nor a signed user.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResumeConfig {
    /// `PUSHBOX_RESUME_ENABLED`.
    pub enabled: bool,
    /// How long after a connection ends a reconnect may still resume it, and how far back
    /// events are kept for it (`"120s"`, `"2m"`, or seconds; `PUSHBOX_RESUME_WINDOW`).
    #[serde(deserialize_with = "super::units::human_duration")]
    pub window: Duration,
    /// A resume that would replay more events than this on one channel replays none
    /// (`PUSHBOX_RESUME_MAX_EVENTS`).
    pub max_events: usize,
    /// ... or more bytes than this (`"1MiB"`, `"512KiB"`, or bytes; `PUSHBOX_RESUME_MAX_BYTES`).
    #[serde(deserialize_with = "super::units::human_bytes")]
    pub max_bytes: u64,
    /// For the TCP-acknowledgement proof of delivery: ACK progress after a stall this long is
    /// not proof (RESUME.md B4). Accepted and validated; pushbox proves delivery with
    /// ping/pong today, which needs no guard (`PUSHBOX_RESUME_STALL_GUARD`).
    #[serde(deserialize_with = "super::units::human_duration")]
    pub stall_guard: Duration,
    /// Zero-change resume: a reconnect proven to be the same signed user (presence `user_id`
    /// or signin id) from the same address and user agent (`PUSHBOX_RESUME_MATCH_USER`).
    pub match_user: bool,
    /// Send `pushbox:resume_failed` `{"reason": …}` on a channel whose missed events could not
    /// all be replayed (`PUSHBOX_RESUME_FAILURE_EVENT`).
    pub failure_event: bool,
    /// `{ws_path}{path_prefix}/{token}/app/{key}` carries a resume token
    /// (`PUSHBOX_RESUME_PATH_PREFIX`).
    pub path_prefix: String,
}

impl Default for ResumeConfig {
    fn default() -> Self {
        ResumeConfig {
            enabled: true,
            window: Duration::from_secs(120),
            max_events: 300,
            max_bytes: 1024 * 1024,
            stall_guard: Duration::from_secs(1),
            match_user: true,
            failure_event: false,
            path_prefix: "/r".into(),
        }
    }
}
