//! Validation of a loaded configuration, run once after the file and the environment are merged:
//! every rule returns a message naming the key and saying what to write instead. Also the
//! credential warnings (`pushbox check` prints them, `serve` logs them) that do not stop a start.

use std::collections::HashSet;
use std::time::Duration;

use super::cidr::Cidr;
use super::sections::{AppConfig, WEBHOOK_KINDS};
use super::units::Unit;
use super::{Config, ConfigError};

/// The longest a timer setting may be. Timers are added to `Instant::now()` on every connection,
/// session or request, and `Instant + Duration` panics on overflow: a huge `activity_timeout`
/// once crashed every connection task. A day is far past any useful value and far from overflow.
pub const TIMER_MAX: Duration = Duration::from_secs(24 * 3600);

/// The longest an age setting may be (event retention, dead-letter age, console session). Ages
/// are compared with wall-clock milliseconds; ten years outlives the box and keeps that
/// arithmetic far from `u64` overflow.
pub const AGE_MAX: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Write coalescing above this only adds latency: a few milliseconds buy the throughput.
pub const COALESCE_MAX: Duration = Duration::from_millis(20);

const SECOND: Duration = Duration::from_secs(1);
const MILLISECOND: Duration = Duration::from_millis(1);

/// One group of rules: the first problem it finds, as a message naming the key.
type Rule = fn(&Config) -> Result<(), String>;

/// Checks `config`; the first problem found is the error.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    let checks: [Rule; 7] = [
        durations, listeners, console, metrics, cluster, resume, apps,
    ];
    for check in checks {
        check(config).map_err(|message| ConfigError::Invalid {
            source: config.source.clone(),
            message,
        })?;
    }
    Ok(())
}

/// A duration setting and the range it must be in: (key, value, unit, min, max).
type Range = (&'static str, Duration, Unit, Duration, Duration);

/// Every duration setting within its bounds (see `TIMER_MAX`, `AGE_MAX`).
fn durations(config: &Config) -> Result<(), String> {
    use Unit::{Millis, Secs};
    let (s, w, zero) = (&config.server, &config.webhooks, Duration::ZERO);
    let mut ranges: Vec<Range> = vec![
        (
            "server.activity_timeout",
            s.activity_timeout,
            Secs,
            SECOND,
            TIMER_MAX,
        ),
        (
            "server.pong_timeout",
            s.pong_timeout,
            Secs,
            SECOND,
            TIMER_MAX,
        ),
        ("server.coalesce_ms", s.coalesce, Millis, zero, COALESCE_MAX),
        (
            "server.request_timeout",
            s.request_timeout,
            Secs,
            SECOND,
            TIMER_MAX,
        ),
        (
            "spool.events_retain_secs",
            config.spool.events_retain_age,
            Secs,
            zero,
            AGE_MAX,
        ),
        ("webhooks.batch_ms", w.batch_window, Millis, zero, TIMER_MAX),
        (
            "webhooks.timeout_ms",
            w.timeout,
            Millis,
            MILLISECOND,
            TIMER_MAX,
        ),
        (
            "webhooks.backoff_initial_ms",
            w.backoff_initial,
            Millis,
            zero,
            TIMER_MAX,
        ),
        (
            "webhooks.backoff_max_ms",
            w.backoff_max,
            Millis,
            zero,
            TIMER_MAX,
        ),
        ("webhooks.max_age_secs", w.max_age, Secs, zero, AGE_MAX),
    ];
    if let Some(t) = s.fallback_session_timeout {
        // 0 has always been accepted here (the fallback transport reads it as 1 second).
        ranges.push(("server.fallback_session_timeout", t, Secs, zero, TIMER_MAX));
    }
    if let Some(c) = &config.console {
        ranges.push((
            "console.session_secs",
            c.session_lifetime,
            Secs,
            SECOND,
            AGE_MAX,
        ));
    }
    ranges.into_iter().try_for_each(in_range)
}

/// `key = value is out of range: use min to max (unit)`, in the unit the file uses.
fn in_range((key, value, unit, min, max): Range) -> Result<(), String> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    let n = |d| unit.count(d);
    Err(format!(
        "{key} = {} is out of range: use {} to {} ({}){}",
        n(value),
        n(min),
        n(max),
        unit.name(),
        reason(key, value < min)
    ))
}

/// Why a bound is what it is, where a user would not guess it.
fn reason(key: &str, below: bool) -> &'static str {
    match (key, below) {
        ("server.activity_timeout", true) => " (pusher-js refuses a zero activity_timeout)",
        ("server.coalesce_ms", false) => {
            " (a few milliseconds buy the throughput; more only adds latency)"
        }
        _ => "",
    }
}

/// What the listeners and their queues need to serve anything at all.
fn listeners(config: &Config) -> Result<(), String> {
    let s = &config.server;
    if !s.plain && config.tls.is_none() {
        return Err("server.plain = false but no [tls] is configured: nothing would listen".into());
    }
    if let Some(tls) = &config.tls {
        if tls.cert.as_os_str().is_empty() || tls.key.as_os_str().is_empty() {
            return Err("[tls] needs both cert and key (PEM files; `pushbox cert self-signed` makes a pair), or remove [tls]".into());
        }
    }
    if config.webhooks.batch_max_events == 0 {
        return Err("webhooks.batch_max_events must be at least 1".into());
    }
    if s.outbound_queue < 8 {
        return Err("server.outbound_queue must be at least 8 frames".into());
    }
    if s.memory_pressure_percent != 0 && !(50..=99).contains(&s.memory_pressure_percent) {
        return Err(format!(
            "server.memory_pressure_percent = {} is out of range: use 50 to 99 (% of the cgroup's memory limit), or 0 to never refuse connections for memory",
            s.memory_pressure_percent
        ));
    }
    if !(16..=1_000_000).contains(&s.open_files_reserve) {
        return Err(format!(
            "server.open_files_reserve = {} is out of range: use 16 to 1000000 descriptors (an idle server holds 18; 64 is the default)",
            s.open_files_reserve
        ));
    }
    for (name, p) in [
        ("server.ws_path", &s.ws_path),
        ("server.http_path", &s.http_path),
    ] {
        if !p.is_empty() && (!p.starts_with('/') || p.ends_with('/')) {
            return Err(format!("{name} = {p:?}: use a path like \"/ws\" (leading slash, no trailing slash) or \"\""));
        }
    }
    Ok(())
}

/// Somebody must be able to sign in to a configured console, and not with a guessable password.
fn console(config: &Config) -> Result<(), String> {
    let Some(c) = &config.console else {
        return Ok(());
    };
    if c.password.as_deref().is_some_and(|p| p.len() < 8) {
        return Err("console.password must be at least 8 characters (or remove it and sign in with an app's key and secret)".into());
    }
    if c.password.is_none() && !c.app_login {
        return Err("[console] has no password and app_login = false: nobody could sign in; set console.password or app_login = true".into());
    }
    Ok(())
}

/// `[cluster]`: a URL Redis understands, a prefix and node name that fit in a key, a lease
/// several heartbeats long.
fn cluster(config: &Config) -> Result<(), String> {
    let c = &config.cluster;
    let Some(url) = &c.redis_url else {
        return Ok(());
    };
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(format!("cluster.redis_url / PUSHBOX_REDIS_URL = {:?}: use redis://[user:password@]host:port[/db] or rediss://… for TLS", redact(url)));
    }
    let plain = |v: &str| {
        !v.is_empty()
            && v.len() <= 64
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    if !plain(&c.key_prefix) {
        return Err(format!("cluster.key_prefix / PUSHBOX_CLUSTER_PREFIX = {:?}: use 1-64 letters, digits, '-', '_' or '.'", c.key_prefix));
    }
    if let Some(n) = &c.node_name {
        if !plain(n) {
            return Err(format!("cluster.node_name / PUSHBOX_NODE_NAME = {n:?}: use 1-64 letters, digits, '-', '_' or '.'"));
        }
    }
    in_range((
        "cluster.heartbeat",
        c.heartbeat,
        Unit::Millis,
        Duration::from_millis(100),
        Duration::from_secs(60),
    ))?;
    in_range((
        "cluster.lease",
        c.lease,
        Unit::Millis,
        Duration::from_secs(1),
        Duration::from_secs(600),
    ))?;
    in_range((
        "cluster.max_lag",
        c.max_lag,
        Unit::Millis,
        SECOND,
        TIMER_MAX,
    ))?;
    if c.lease < c.heartbeat * 3 {
        return Err(format!("cluster.lease ({:?}) must be at least three heartbeats ({:?} each): one lost heartbeat must not declare a live node dead", c.lease, c.heartbeat));
    }
    Ok(())
}

/// A Redis URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

fn metrics(config: &Config) -> Result<(), String> {
    if config.metrics.token.as_deref() == Some("") {
        return Err("metrics.token is empty: remove it or set a token".into());
    }
    for a in &config.metrics.allow {
        Cidr::parse(a).map_err(|e| format!("metrics.allow: {e}"))?;
    }
    Ok(())
}

/// `[resume]`: bounded window and caps, a replay that fits a connection's queue, a usable prefix.
fn resume(config: &Config) -> Result<(), String> {
    let r = &config.resume;
    if !(SECOND..=TIMER_MAX).contains(&r.window) {
        return Err(format!(
            "resume.window = {}s is out of range: use \"1s\" to \"24h\"",
            r.window.as_secs()
        ));
    }
    if !(MILLISECOND..=TIMER_MAX).contains(&r.stall_guard) {
        return Err("resume.stall_guard is out of range: use \"1ms\" to \"24h\"".into());
    }
    // Replayed frames go through the connection's bounded queue right after
    // subscription_succeeded: a replay larger than the queue could never be sent.
    let most = config.server.outbound_queue.saturating_sub(8);
    if r.max_events == 0 || r.max_events > most {
        return Err(format!(
            "resume.max_events = {} is out of range: use 1 to {most} (server.outbound_queue less 8: replayed events pass through that queue)",
            r.max_events
        ));
    }
    if r.max_bytes == 0 || r.max_bytes > 256 * 1024 * 1024 {
        return Err("resume.max_bytes is out of range: use 1 byte to \"256MiB\"".into());
    }
    let p = &r.path_prefix;
    if !p.starts_with('/') || p.ends_with('/') || p.len() < 2 || p.contains("/app/") {
        return Err(format!(
            "resume.path_prefix = {p:?}: use a path like \"/r\" (leading slash, no trailing slash)"
        ));
    }
    Ok(())
}

/// Each app on its own, then ids and keys unique across apps (a key picks the app of a
/// connection, an id the app of an API call).
fn apps(config: &Config) -> Result<(), String> {
    let mut ids = HashSet::new();
    let mut keys = HashSet::new();
    for app in &config.apps {
        let what = format!("app {:?}", app.id);
        app_alone(app).map_err(|e| format!("{what}: {e}"))?;
        if !ids.insert(app.id.as_str()) {
            return Err(format!("{what}: two apps have this id; ids must be unique"));
        }
        if !keys.insert(app.key.as_str()) {
            return Err(format!(
                "{what}: its key {:?} is used by another app; keys must be unique",
                app.key
            ));
        }
    }
    Ok(())
}

fn app_alone(app: &AppConfig) -> Result<(), String> {
    let missing: Vec<&str> = [("id", &app.id), ("key", &app.key), ("secret", &app.secret)]
        .iter()
        .filter(|(_, v)| v.is_empty())
        .map(|(n, _)| *n)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "missing or empty {}: id, key and secret must all be non-empty (run `pushbox keygen`)",
            missing.join(", ")
        ));
    }
    if app.id.contains('/') || app.key.contains('/') {
        return Err("id and key must not contain '/'".into());
    }
    if app.max_message_bytes < 256 {
        return Err("max_message_bytes must be at least 256".into());
    }
    for t in app.webhook_targets() {
        if !(t.url.starts_with("http://") || t.url.starts_with("https://")) {
            return Err(format!(
                "webhook url {:?} must start with http:// or https://",
                t.url
            ));
        }
        if let Some(k) = t
            .event_types
            .iter()
            .find(|k| !WEBHOOK_KINDS.contains(&k.as_str()))
        {
            return Err(format!(
                "unknown webhook event type {k:?}; use one of {}",
                WEBHOOK_KINDS.join(", ")
            ));
        }
    }
    if app.client_event_rate == 0 {
        return Err(
            "client_event_rate must be at least 1 (use client_events = false to turn them off)"
                .into(),
        );
    }
    Ok(())
}

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
        let distinct = |s: &str| s.chars().collect::<HashSet<_>>().len();
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
}
