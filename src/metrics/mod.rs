//! Metrics: the lock-free counters the hot path bumps (connections by app and transport,
//! frames and bytes, HTTP API statuses, refused connections by close code), the hooks other
//! modules plug their own numbers into (webhook queue, spool), the Prometheus text rendering
//! at `/metrics` with its optional token / peer-address restriction, and the log format
//! (`logfmt`: human on a terminal, journald-friendly under systemd).
//!
//! Everything a connection or a publish touches is an atomic with `Relaxed` ordering; a scrape
//! only loads atomics, plus a brief read lock of each app's channel table (the same read lock a
//! publish takes, so it never waits on a publish nor makes one wait) for channel and
//! subscription counts.

pub mod addresses;
pub mod logfmt;
pub mod refusals;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::config::{Cidr, Config, MetricsConfig};
use crate::hub::Hub;
use crate::protocol::auth::constant_time_eq;
use crate::protocol::CloseCode;
use crate::spool::Condition;
use addresses::{Addresses, NO_SLOT};
pub use refusals::Reason;
use refusals::Refusals;

/// How a connection reaches pushbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    /// pusher-js's `xhr_streaming` / `xhr_polling` (the HTTP fallback).
    Http,
}

impl Transport {
    pub const ALL: [Transport; 2] = [Transport::WebSocket, Transport::Http];

    pub fn label(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Http => "http",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of one transport of one app.
#[derive(Default, Debug)]
pub struct TransportCounters {
    pub open: AtomicI64,
    pub opened_total: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

/// Counters of one app, per transport, and its open connections per source address.
#[derive(Debug)]
pub struct AppMetrics {
    transports: [TransportCounters; 2],
    pub addresses: Addresses,
}

impl AppMetrics {
    fn new(max_connections_per_ip: u32) -> AppMetrics {
        AppMetrics {
            transports: Default::default(),
            addresses: Addresses::new(max_connections_per_ip),
        }
    }
}

impl AppMetrics {
    pub fn transport(&self, t: Transport) -> &TransportCounters {
        &self.transports[t.index()]
    }
}

/// One open connection, counted in the `connections` gauge (and in its source address's
/// share, see [`addresses`]) until dropped. Transports count their frames through it.
///
/// 24 bytes, in every idle WebSocket: the address slot sits in what would be padding.
#[derive(Debug)]
pub struct ConnectionGuard {
    app: Arc<AppMetrics>,
    transport: Transport,
    /// Where this connection is counted in `app.addresses` ([`NO_SLOT`]: nowhere).
    slot: u32,
    /// Keeps a graceful shutdown waiting while the connection lives: the guard lives exactly
    /// as long as the connection, dropped after its session, so it carries that too.
    _done: crate::shutdown::Done,
}

#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<ConnectionGuard>() == 24);

/// A connection counted against its source address's share before it exists (admission runs
/// before the WebSocket upgrade or the fallback session); given back when dropped unless it
/// became a [`ConnectionGuard`].
#[derive(Debug)]
pub struct AddressSlot {
    app: Arc<AppMetrics>,
    slot: u32,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        self.app.addresses.release(self.slot);
    }
}

impl ConnectionGuard {
    /// Makes the server's shutdown wait for this connection to end (see `crate::shutdown`).
    pub fn with_done(mut self, done: crate::shutdown::Done) -> ConnectionGuard {
        self._done = done;
        self
    }

    fn counters(&self) -> &TransportCounters {
        self.app.transport(self.transport)
    }

    fn counter(&self) -> FrameCounter {
        FrameCounter {
            app: self.app.clone(),
            transport: self.transport,
        }
    }

    /// A frame of `bytes` payload bytes came from the client.
    #[inline]
    pub fn frame_in(&self, bytes: usize) {
        let c = self.counters();
        c.frames_in.fetch_add(1, Relaxed);
        c.bytes_in.fetch_add(bytes as u64, Relaxed);
    }

    /// A frame of `bytes` payload bytes went to the client.
    #[inline]
    pub fn frame_out(&self, bytes: usize) {
        self.frames_out(1, bytes);
    }

    /// Counts a batch of frames at once (a transport that drains its outbox in one go).
    pub fn frames_out(&self, frames: u64, bytes: usize) {
        count_out(self.counters(), frames, bytes);
    }

    /// A handle that counts this connection's outgoing frames from outside its task (frames
    /// written straight from the fan-out); it doesn't hold the connection open in the gauge.
    pub fn frame_counter(&self) -> FrameCounter {
        self.counter()
    }
}

/// See [`ConnectionGuard::frame_counter`].
#[derive(Clone, Debug)]
pub struct FrameCounter {
    app: Arc<AppMetrics>,
    transport: Transport,
}

impl FrameCounter {
    /// A counter of an app of its own, for a transport's unit tests.
    #[cfg(test)]
    pub fn detached(transport: Transport) -> FrameCounter {
        FrameCounter {
            app: Arc::new(AppMetrics::new(0)),
            transport,
        }
    }

    fn counters(&self) -> &TransportCounters {
        self.app.transport(self.transport)
    }

    /// `frames` frames of `bytes` payload bytes in all went to the client.
    pub fn frames_out(&self, frames: u64, bytes: usize) {
        count_out(self.counters(), frames, bytes);
    }
}

fn count_out(c: &TransportCounters, frames: u64, bytes: usize) {
    if frames == 0 {
        return;
    }
    c.frames_out.fetch_add(frames, Relaxed);
    c.bytes_out.fetch_add(bytes as u64, Relaxed);
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.counters().open.fetch_sub(1, Relaxed);
        self.app.addresses.release(self.slot);
    }
}

/// What the webhook service reports (plugged in with [`Metrics::set_webhooks`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WebhookSnapshot {
    /// Batches waiting in the queue (not yet delivered or dead-lettered).
    pub queue_depth: u64,
    /// Age of the oldest waiting batch, ms.
    pub oldest_pending_age_ms: Option<u64>,
    /// Batches delivered (2xx) since start.
    pub delivered: u64,
    /// Failed delivery attempts since start.
    pub failed_attempts: u64,
    /// Dead letters parked now.
    pub dead_letters: u64,
    /// Hub events dropped because the webhook pipeline was full, since start.
    pub events_dropped: u64,
}

/// What the spool reports (plugged in with [`Metrics::set_spool`]): bytes on disk per spool,
/// and whether a spool takes records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpoolSnapshot {
    /// `(spool name, bytes)`, e.g. `("events", 12345)`.
    pub bytes: Vec<(&'static str, u64)>,
    /// `(spool name, condition)`, e.g. `("events", Condition::DiskFull)`.
    pub conditions: Vec<(&'static str, Condition)>,
}

/// What the cluster reports (plugged in with [`Metrics::set_cluster`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterSnapshot {
    /// Redis answered this node's last request.
    pub redis_up: bool,
    /// How far behind the bus this node's delivery is.
    pub lag_seconds: f64,
    /// Bus entries read and not yet delivered.
    pub lag_entries: u64,
    /// Nodes holding a lease.
    pub nodes: u64,
}

type ClusterProvider = Box<dyn Fn() -> ClusterSnapshot + Send + Sync>;
type WebhookProvider = Box<dyn Fn() -> WebhookSnapshot + Send + Sync>;
type SpoolProvider = Box<dyn Fn() -> SpoolSnapshot + Send + Sync>;

/// The lowest close code counted individually in `connections_rejected_total`.
const REJECT_BASE: u16 = 4000;
const REJECT_SLOTS: usize = 400;

/// All counters of a running server.
pub struct Metrics {
    apps: HashMap<String, Arc<AppMetrics>>,
    /// Connections of an app id not in the table (cannot happen with the hub's apps).
    other_app: Arc<AppMetrics>,
    /// HTTP API answers by status, index `status - 100`.
    api_status: Box<[AtomicU64]>,
    /// Connections refused by close code, index `code - 4000`; others in `rejected_other`.
    rejected: Box<[AtomicU64]>,
    rejected_other: AtomicU64,
    refusals: Refusals,
    memory: Memory,
    webhooks: OnceLock<WebhookProvider>,
    spool: OnceLock<SpoolProvider>,
    cluster: OnceLock<ClusterProvider>,
    started: Instant,
    config: MetricsConfig,
    allow: Vec<Cidr>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn atomics(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl Metrics {
    pub fn new(config: &Config) -> Metrics {
        Metrics {
            apps: config
                .apps
                .iter()
                .map(|a| {
                    let m = AppMetrics::new(config.server.max_connections_per_ip);
                    (a.id.clone(), Arc::new(m))
                })
                .collect(),
            other_app: Arc::new(AppMetrics::new(0)),
            api_status: atomics(500),
            rejected: atomics(REJECT_SLOTS),
            rejected_other: AtomicU64::new(0),
            refusals: Refusals::default(),
            memory: Memory::default(),
            webhooks: OnceLock::new(),
            spool: OnceLock::new(),
            cluster: OnceLock::new(),
            started: Instant::now(),
            // Validated by `config`: a bad entry cannot get here, but skip rather than panic.
            allow: config
                .metrics
                .allow
                .iter()
                .filter_map(|a| Cidr::parse(a).ok())
                .collect(),
            config: config.metrics.clone(),
        }
    }

    /// The counters of app `app_id`.
    pub fn app(&self, app_id: &str) -> &Arc<AppMetrics> {
        self.apps.get(app_id).unwrap_or(&self.other_app)
    }

    /// Counts an open connection of `app_id` over `transport` until the guard is dropped.
    pub fn connection_opened(&self, app_id: &str, transport: Transport) -> ConnectionGuard {
        self.opened(self.app(app_id).clone(), transport, NO_SLOT)
    }

    /// Counts one more connection of `app_id` from `ip`, or `None` when that address already
    /// holds `server.max_connections_per_ip` of the app's connections.
    pub fn address_slot(&self, app_id: &str, ip: IpAddr) -> Option<AddressSlot> {
        let app = self.app(app_id).clone();
        let slot = app.addresses.acquire(ip)?;
        Some(AddressSlot { app, slot })
    }

    /// [`connection_opened`](Self::connection_opened) for a connection admitted with `slot`:
    /// the guard gives the slot back when the connection ends.
    pub fn connection_opened_from(
        &self,
        mut slot: AddressSlot,
        transport: Transport,
    ) -> ConnectionGuard {
        let n = std::mem::replace(&mut slot.slot, NO_SLOT);
        self.opened(slot.app.clone(), transport, n)
    }

    fn opened(&self, app: Arc<AppMetrics>, transport: Transport, slot: u32) -> ConnectionGuard {
        let c = app.transport(transport);
        c.open.fetch_add(1, Relaxed);
        c.opened_total.fetch_add(1, Relaxed);
        ConnectionGuard {
            app,
            transport,
            slot,
            _done: Default::default(),
        }
    }

    /// Open connections of one transport over all apps.
    pub fn open_connections(&self, transport: Transport) -> i64 {
        self.apps
            .values()
            .chain(std::iter::once(&self.other_app))
            .map(|a| a.transport(transport).open.load(Relaxed))
            .sum()
    }

    /// A connection was refused with Pusher close `code` (4001 unknown app, 4004 over quota…).
    pub fn connection_rejected(&self, code: u16) {
        match code
            .checked_sub(REJECT_BASE)
            .and_then(|i| self.rejected.get(usize::from(i)))
        {
            Some(a) => a.fetch_add(1, Relaxed),
            None => self.rejected_other.fetch_add(1, Relaxed),
        };
    }

    /// Something was refused or cut off to protect the box (see [`Reason`]).
    pub fn refused(&self, reason: Reason) {
        self.refusals.count(reason);
    }

    /// How often `reason` happened since start.
    pub fn refusals(&self, reason: Reason) -> u64 {
        self.refusals.get(reason)
    }

    /// The memory watch's last reading: bytes in use and the cgroup's limit (both 0 when there
    /// is no limit), and whether that is past the pressure threshold.
    pub fn set_memory(&self, used: u64, limit: u64, pressure: bool) {
        self.memory.used.store(used, Relaxed);
        self.memory.limit.store(limit, Relaxed);
        self.memory.pressure.store(pressure, Relaxed);
    }

    /// True while the process is near its cgroup's memory limit: new connections are refused.
    /// One atomic load: read on every admission.
    pub fn memory_pressure(&self) -> bool {
        self.memory.pressure.load(Relaxed)
    }

    /// `(used, limit)` bytes of the last memory reading (zeros without a limit).
    pub fn memory(&self) -> (u64, u64) {
        (
            self.memory.used.load(Relaxed),
            self.memory.limit.load(Relaxed),
        )
    }

    /// The HTTP API answered with `status`.
    pub fn api_request(&self, status: u16) {
        if let Some(a) = status
            .checked_sub(100)
            .and_then(|i| self.api_status.get(usize::from(i)))
        {
            a.fetch_add(1, Relaxed);
        }
    }

    /// Plugs in the webhook service's numbers (first call wins).
    pub fn set_webhooks(&self, provider: impl Fn() -> WebhookSnapshot + Send + Sync + 'static) {
        let _ = self.webhooks.set(Box::new(provider));
    }

    /// Plugs in the spool's numbers (first call wins).
    /// Plugs in the cluster's status (`[cluster]` only).
    pub fn set_cluster(&self, provider: impl Fn() -> ClusterSnapshot + Send + Sync + 'static) {
        let _ = self.cluster.set(Box::new(provider));
    }

    /// The cluster's status, when `[cluster]` is configured.
    pub fn cluster(&self) -> Option<ClusterSnapshot> {
        self.cluster.get().map(|p| p())
    }

    pub fn set_spool(&self, provider: impl Fn() -> SpoolSnapshot + Send + Sync + 'static) {
        let _ = self.spool.set(Box::new(provider));
    }

    /// The webhook numbers, or `None` when webhooks are not plugged in.
    pub fn webhooks(&self) -> Option<WebhookSnapshot> {
        self.webhooks.get().map(|f| f())
    }

    pub fn spool(&self) -> Option<SpoolSnapshot> {
        self.spool.get().map(|f| f())
    }

    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    pub fn config(&self) -> &MetricsConfig {
        &self.config
    }

    /// Whether a scrape from `peer` with this `Authorization` header may see the metrics.
    pub fn check_access(&self, peer: IpAddr, authorization: Option<&str>) -> Result<(), Refusal> {
        if !self.config.enabled {
            return Err(Refusal::Disabled);
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|c| c.contains(peer)) {
            return Err(Refusal::Address);
        }
        if let Some(token) = &self.config.token {
            let given = authorization
                .and_then(|h| h.strip_prefix("Bearer "))
                .map(str::trim)
                .unwrap_or("");
            if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
                return Err(Refusal::Token);
            }
        }
        Ok(())
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, hub: &Hub) -> String {
        let mut out = String::with_capacity(4096);
        let w = &mut out;
        header(
            w,
            "pushbox_build_info",
            "gauge",
            "Version of the running pushbox.",
        );
        let _ = writeln!(
            w,
            "pushbox_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        header(
            w,
            "pushbox_uptime_seconds",
            "gauge",
            "Seconds since the server started.",
        );
        let _ = writeln!(w, "pushbox_uptime_seconds {}", self.uptime_secs());

        let apps = hub.apps();
        let per_transport =
            |w: &mut String, name: &str, get: &dyn Fn(&TransportCounters) -> i128| {
                for app in apps {
                    let m = self.app(&app.config.id);
                    for t in Transport::ALL {
                        let _ = writeln!(
                            w,
                            "{name}{{app=\"{}\",transport=\"{}\"}} {}",
                            escape(&app.config.id),
                            t.label(),
                            get(m.transport(t))
                        );
                    }
                }
            };
        type Get = fn(&TransportCounters) -> i128;
        let series: [(&str, &str, &str, Get); 6] = [
            (
                "pushbox_connections",
                "gauge",
                "Open connections by app and transport.",
                |c| i128::from(c.open.load(Relaxed).max(0)),
            ),
            (
                "pushbox_connections_opened_total",
                "counter",
                "Connections accepted since start, by app and transport.",
                |c| i128::from(c.opened_total.load(Relaxed)),
            ),
            (
                "pushbox_frames_in_total",
                "counter",
                "Frames received from clients.",
                |c| i128::from(c.frames_in.load(Relaxed)),
            ),
            (
                "pushbox_frames_out_total",
                "counter",
                "Frames sent to clients.",
                |c| i128::from(c.frames_out.load(Relaxed)),
            ),
            (
                "pushbox_bytes_in_total",
                "counter",
                "Payload bytes received from clients.",
                |c| i128::from(c.bytes_in.load(Relaxed)),
            ),
            (
                "pushbox_bytes_out_total",
                "counter",
                "Payload bytes sent to clients.",
                |c| i128::from(c.bytes_out.load(Relaxed)),
            ),
        ];
        for (name, kind, help, get) in series {
            header(w, name, kind, help);
            per_transport(w, name, &get);
        }

        let occupancy: Vec<(usize, usize)> = apps.iter().map(|a| a.subscription_total()).collect();
        header(
            w,
            "pushbox_channels",
            "gauge",
            "Channels with at least one subscriber, by app.",
        );
        for (app, (channels, _)) in apps.iter().zip(&occupancy) {
            let _ = writeln!(
                w,
                "pushbox_channels{{app=\"{}\"}} {channels}",
                escape(&app.config.id)
            );
        }
        header(
            w,
            "pushbox_subscriptions",
            "gauge",
            "Channel subscriptions (connection x channel), by app.",
        );
        for (app, (_, subs)) in apps.iter().zip(&occupancy) {
            let _ = writeln!(
                w,
                "pushbox_subscriptions{{app=\"{}\"}} {subs}",
                escape(&app.config.id)
            );
        }
        let app_counter =
            |w: &mut String, name: &str, help: &str, get: &dyn Fn(&crate::hub::App) -> u64| {
                header(w, name, "counter", help);
                for app in apps {
                    let _ = writeln!(
                        w,
                        "{name}{{app=\"{}\"}} {}",
                        escape(&app.config.id),
                        get(app)
                    );
                }
            };
        app_counter(
            w,
            "pushbox_messages_in_total",
            "Protocol messages received from clients, by app.",
            &|a| a.counters.messages_in.load(Relaxed),
        );
        app_counter(
            w,
            "pushbox_messages_out_total",
            "Protocol messages queued to clients (fan-out counts each recipient), by app.",
            &|a| a.counters.messages_out.load(Relaxed),
        );
        app_counter(
            w,
            "pushbox_api_events_total",
            "Events accepted by the HTTP API, by app.",
            &|a| a.counters.api_events.load(Relaxed),
        );

        header(
            w,
            "pushbox_http_api_requests_total",
            "counter",
            "HTTP API requests (/apps/...) by answer status.",
        );
        for (i, a) in self.api_status.iter().enumerate() {
            let n = a.load(Relaxed);
            if n > 0 {
                let _ = writeln!(
                    w,
                    "pushbox_http_api_requests_total{{status=\"{}\"}} {n}",
                    i + 100
                );
            }
        }
        header(
            w,
            "pushbox_connections_rejected_total",
            "counter",
            "Connections refused, by Pusher close code.",
        );
        for (i, a) in self.rejected.iter().enumerate() {
            let n = a.load(Relaxed);
            if n > 0 {
                let code = REJECT_BASE as usize + i;
                let _ = writeln!(
                    w,
                    "pushbox_connections_rejected_total{{code=\"{code}\",reason=\"{}\"}} {n}",
                    CloseCode::from_code(code as u16).map_or("other", CloseCode::label)
                );
            }
        }
        let other = self.rejected_other.load(Relaxed);
        if other > 0 {
            let _ = writeln!(
                w,
                "pushbox_connections_rejected_total{{code=\"other\",reason=\"other\"}} {other}"
            );
        }

        header(
            w,
            "pushbox_refusals_total",
            "counter",
            "Requests and connections refused or closed to protect the box, by reason.",
        );
        for r in Reason::ALL {
            let n = self.refusals(r);
            let _ = writeln!(w, "pushbox_refusals_total{{reason=\"{}\"}} {n}", r.label());
        }
        self.render_memory(w);

        if let Some(c) = self.cluster() {
            let series: [(&str, &str, String); 4] = [
                (
                    "pushbox_cluster_redis_up",
                    "1 while Redis answers this node, 0 when it is lost.",
                    u8::from(c.redis_up).to_string(),
                ),
                (
                    "pushbox_cluster_bus_lag_seconds",
                    "How long this node has been behind the cluster's bus (0 while caught up); /up answers 503 past cluster.max_lag.",
                    format!("{:.3}", c.lag_seconds),
                ),
                (
                    "pushbox_cluster_bus_lag_entries",
                    "Bus entries read and not yet delivered by this node. Entries still waiting in Redis (a slow link) are not counted: watch bus_lag_seconds for that.",
                    c.lag_entries.to_string(),
                ),
                (
                    "pushbox_cluster_nodes",
                    "Nodes holding a lease in the cluster.",
                    c.nodes.to_string(),
                ),
            ];
            for (name, help, v) in series {
                header(w, name, "gauge", help);
                let _ = writeln!(w, "{name} {v}");
            }
        }

        render_resume(w, hub);

        if let Some(s) = self.webhooks() {
            let gauge = |w: &mut String, name: &str, kind: &str, help: &str, v: u64| {
                header(w, name, kind, help);
                let _ = writeln!(w, "{name} {v}");
            };
            gauge(
                w,
                "pushbox_webhook_deliveries_total",
                "counter",
                "Webhook batches delivered (2xx).",
                s.delivered,
            );
            gauge(
                w,
                "pushbox_webhook_failures_total",
                "counter",
                "Failed webhook delivery attempts.",
                s.failed_attempts,
            );
            gauge(
                w,
                "pushbox_webhook_queue_depth",
                "gauge",
                "Webhook batches waiting for delivery.",
                s.queue_depth,
            );
            gauge(
                w,
                "pushbox_webhook_dead_letters",
                "gauge",
                "Webhook batches parked as dead letters.",
                s.dead_letters,
            );
            gauge(
                w,
                "pushbox_webhook_events_dropped_total",
                "counter",
                "Hub events dropped because the webhook pipeline was full.",
                s.events_dropped,
            );
        }
        if let Some(s) = self.spool() {
            header(
                w,
                "pushbox_spool_bytes",
                "gauge",
                "Bytes on disk, by spool.",
            );
            for (name, bytes) in &s.bytes {
                let _ = writeln!(
                    w,
                    "pushbox_spool_bytes{{spool=\"{}\"}} {bytes}",
                    escape(name)
                );
            }
            spool_conditions(w, &s.conditions);
        }
        out
    }
}

impl Metrics {
    fn render_memory(&self, w: &mut String) {
        header(
            w,
            "pushbox_memory_pressure",
            "gauge",
            "1 while memory use is past server.memory_pressure_percent of the cgroup's limit: new connections are refused with 4100.",
        );
        let _ = writeln!(
            w,
            "pushbox_memory_pressure {}",
            u8::from(self.memory_pressure())
        );
        let (used, limit) = self.memory();
        if limit > 0 {
            header(
                w,
                "pushbox_memory_cgroup_bytes",
                "gauge",
                "The cgroup's memory in use (without reclaimable file cache) and its limit.",
            );
            let _ = writeln!(w, "pushbox_memory_cgroup_bytes{{kind=\"used\"}} {used}");
            let _ = writeln!(w, "pushbox_memory_cgroup_bytes{{kind=\"limit\"}} {limit}");
        }
    }
}

/// The memory watch's last reading (`server` runs the watch).
#[derive(Debug, Default)]
struct Memory {
    used: AtomicU64,
    limit: AtomicU64,
    pressure: std::sync::atomic::AtomicBool,
}

/// Why a scrape was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Disabled,
    Address,
    Token,
}

impl Refusal {
    pub fn status(self) -> u16 {
        match self {
            Refusal::Disabled => 404,
            Refusal::Address => 403,
            Refusal::Token => 401,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::Disabled => "Not found: /metrics is disabled ([metrics] enabled = false)",
            Refusal::Address => {
                "Forbidden: this address is not in [metrics] allow; scrape from an allowed network"
            }
            Refusal::Token => {
                "Unauthorized: send Authorization: Bearer <[metrics] token / PUSHBOX_METRICS_TOKEN>"
            }
        }
    }
}

/// `pushbox_spool_writable` (alert on 0) and `pushbox_spool_state` (1 for the current state).
fn spool_conditions(w: &mut String, conditions: &[(&'static str, Condition)]) {
    if conditions.is_empty() {
        return;
    }
    header(
        w,
        "pushbox_spool_writable",
        "gauge",
        "1 while the spool takes records, 0 while it refuses them (the API answers 503).",
    );
    for (name, c) in conditions {
        let up = u8::from(*c == Condition::Writable);
        let _ = writeln!(
            w,
            "pushbox_spool_writable{{spool=\"{}\"}} {up}",
            escape(name)
        );
    }
    header(
        w,
        "pushbox_spool_state",
        "gauge",
        "The spool's state: writable, disk_full, io_error or directory_lost (1 for the current one).",
    );
    for (name, c) in conditions {
        for state in Condition::ALL {
            let _ = writeln!(
                w,
                "pushbox_spool_state{{spool=\"{}\",state=\"{}\"}} {}",
                escape(name),
                state.label(),
                u8::from(*c == state)
            );
        }
    }
}

fn header(w: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(w, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The resume counters, summed over the apps that have resume on (nothing when none has).
fn render_resume(w: &mut String, hub: &Hub) {
    let apps: Vec<_> = hub.apps().iter().filter_map(|a| a.resume()).collect();
    if apps.is_empty() {
        return;
    }
    let sum = |get: &dyn Fn(&crate::resume::Stats) -> u64| -> u64 {
        apps.iter().map(|r| get(&r.stats)).sum()
    };
    let counter = |w: &mut String, name: &str, help: &str, v: u64| {
        header(w, name, "counter", help);
        let _ = writeln!(w, "{name} {v}");
    };
    counter(
        w,
        "pushbox_resume_attempts_total",
        "Channels a reconnecting client asked to resume (token or signed user matched).",
        sum(&|s| s.attempts.load(Relaxed)),
    );
    counter(
        w,
        "pushbox_resume_succeeded_total",
        "Channel resumes that replayed every missed event (maybe none).",
        sum(&|s| s.succeeded.load(Relaxed)),
    );
    header(
        w,
        "pushbox_resume_failed_total",
        "counter",
        "Channel resumes that replayed nothing (all or nothing), by reason.",
    );
    for (i, f) in crate::resume::Failure::ALL.iter().enumerate() {
        let n = sum(&|s| s.failed[i].load(Relaxed));
        let _ = writeln!(
            w,
            "pushbox_resume_failed_total{{reason=\"{}\"}} {n}",
            f.label()
        );
    }
    counter(
        w,
        "pushbox_resume_replayed_events_total",
        "Missed events replayed to reconnecting clients.",
        sum(&|s| s.replayed.load(Relaxed)),
    );
    let (mut events, mut bytes, mut lineages) = (0, 0, 0);
    for r in &apps {
        let (_, e, b, t, u) = r.size();
        events += e;
        bytes += b;
        lineages += t + u;
    }
    for (name, help, v) in [
        (
            "pushbox_resume_kept_events",
            "Recent events kept in memory for resumes.",
            events,
        ),
        (
            "pushbox_resume_kept_bytes",
            "Bytes of the recent events kept for resumes.",
            bytes,
        ),
        (
            "pushbox_resume_lineages",
            "Connections (open or ended within the window) a client may resume.",
            lineages,
        ),
    ] {
        header(w, name, "gauge", help);
        let _ = writeln!(w, "{name} {v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AppConfig;

    fn config() -> Config {
        Config {
            state_dir: std::env::temp_dir(),
            user: None,
            server: Default::default(),
            tls: None,
            spool: Default::default(),
            webhooks: Default::default(),
            console: None,
            metrics: MetricsConfig {
                enabled: true,
                token: Some("s3cret".into()),
                allow: vec!["127.0.0.0/8".into()],
            },
            cluster: Default::default(),
            resume: Default::default(),
            apps: vec![AppConfig::with_defaults("1", "k", "s")],
            source: "test".into(),
        }
    }

    #[test]
    fn guards_count_and_render() {
        let c = config();
        let m = Metrics::new(&c);
        let hub = Hub::new(c.apps.clone(), Arc::new(crate::hub::NoObserver));
        let g = m.connection_opened("1", Transport::WebSocket);
        g.frame_in(10);
        g.frame_out(7);
        let h = m.connection_opened("1", Transport::Http);
        assert_eq!(m.open_connections(Transport::WebSocket), 1);
        drop(h);
        assert_eq!(m.open_connections(Transport::Http), 0);
        m.api_request(200);
        m.api_request(401);
        m.api_request(401);
        m.api_request(9999);
        m.connection_rejected(4001);
        m.connection_rejected(1008);
        m.refused(Reason::LoginThrottled);
        let text = m.render(&hub);
        for line in [
            "pushbox_connections{app=\"1\",transport=\"websocket\"} 1",
            "pushbox_connections{app=\"1\",transport=\"http\"} 0",
            "pushbox_connections_opened_total{app=\"1\",transport=\"http\"} 1",
            "pushbox_bytes_in_total{app=\"1\",transport=\"websocket\"} 10",
            "pushbox_bytes_out_total{app=\"1\",transport=\"websocket\"} 7",
            "pushbox_http_api_requests_total{status=\"401\"} 2",
            "pushbox_connections_rejected_total{code=\"4001\",reason=\"app_not_found\"} 1",
            "pushbox_connections_rejected_total{code=\"other\",reason=\"other\"} 1",
            "pushbox_channels{app=\"1\"} 0",
            "pushbox_refusals_total{reason=\"login_throttled\"} 1",
            "pushbox_refusals_total{reason=\"fd_reserve\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        assert!(
            !text.contains("webhook"),
            "no provider, no webhook families"
        );
        m.set_webhooks(|| WebhookSnapshot {
            queue_depth: 3,
            ..Default::default()
        });
        m.set_spool(|| SpoolSnapshot {
            bytes: vec![("events", 99)],
            conditions: vec![("events", Condition::DiskFull)],
        });
        let text = m.render(&hub);
        assert!(text.contains("pushbox_webhook_queue_depth 3"), "{text}");
        for line in [
            "pushbox_spool_bytes{spool=\"events\"} 99",
            "pushbox_spool_writable{spool=\"events\"} 0",
            "pushbox_spool_state{spool=\"events\",state=\"disk_full\"} 1",
            "pushbox_spool_state{spool=\"events\",state=\"writable\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        drop(g);
    }

    #[test]
    fn access_rules() {
        let m = Metrics::new(&config());
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let lan: IpAddr = "192.168.1.9".parse().unwrap();
        assert_eq!(m.check_access(local, Some("Bearer s3cret")), Ok(()));
        assert_eq!(
            m.check_access(local, Some("Bearer nope")),
            Err(Refusal::Token)
        );
        assert_eq!(m.check_access(local, None), Err(Refusal::Token));
        assert_eq!(
            m.check_access(lan, Some("Bearer s3cret")),
            Err(Refusal::Address)
        );
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
