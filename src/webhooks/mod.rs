//! Webhooks (PUSHER.md §8): turning hub events into signed webhook batches and delivering
//! them, at least once, through a durable spool.
//!
//! # Pipeline
//!
//! ```text
//! hub ──on_event──► bounded channel ──► batcher ──append──► spool {state_dir}/webhooks
//!   (never blocks)   (EVENT_QUEUE)      per (app, url)        one record = one batch (Job)
//!                                       batch_ms / batch_max_events
//!        spool ──read from cursor──► dispatcher ──► one lane per (app, url) ──POST──► receiver
//!                                        │                     │ failed for max_age_secs
//!                                        └─ cursor "delivery"   └──► {state_dir}/webhooks-dead
//! ```
//!
//! * **The hub is never blocked.** [`Webhooks::on_event`] does a `try_send` into a bounded
//!   channel of [`EVENT_QUEUE`] events. If the batcher cannot keep up (the disk stalls), new
//!   events are dropped, counted in [`WebhookStats::events_dropped`] and logged (at most one
//!   warning per 10 s) rather than slowing down WebSocket traffic. Events of apps without
//!   receivers, or of kinds no receiver wants, are discarded right there.
//! * **Batching.** Events of one app go, per receiver URL and filtered by that receiver's
//!   `event_types`, into a batch that is closed `webhooks.batch_ms` after its first event or at
//!   `webhooks.batch_max_events`. The body `{"time_ms":…,"events":[…]}` is built once, when the
//!   batch closes, and stored verbatim in the spool record ([`job::Job`]) with the app id, the
//!   URL, a batch id and the creation time. The signature is computed when the request is sent,
//!   over exactly those stored bytes, with the app's current secret (secrets never reach the
//!   disk). `time_ms` is the creation time and stays the same on every retry (Pusher's rule).
//! * **Delivery and ordering.** The dispatcher reads the spool in order and routes each batch
//!   to the *lane* of its (app, URL). A lane sends one batch at a time, in spool order, and
//!   retries its head with exponential backoff and jitter (`backoff_initial_ms`, doubling, capped
//!   at `backoff_max_ms`) until a 2xx or until `max_age_secs` after creation (or requeue), when
//!   the batch is parked in the dead-letter spool. So: **batches to one receiver arrive in the
//!   order their events happened** (no pipelining, no reordering, except that a dead-lettered
//!   batch that is requeued later arrives late); **receivers are independent**: a slow or
//!   dead receiver only holds up its own lane. A batch that reaches the head of a lane already
//!   past its age limit, right after the batch before it failed for good, is parked without
//!   another attempt (so a lane drains quickly after a long outage). The dispatcher keeps
//!   only sequence numbers of waiting batches in memory (at most [`MAX_TRACKED`]).
//! * **At least once.** The spool cursor `delivery` only moves past batches that are finished
//!   (delivered or dead-lettered), and only past a contiguous prefix of them. After a crash
//!   (or SIGKILL) every unfinished batch is sent again promptly at start; a batch that finished
//!   out of order above the cursor may be sent twice. Every request carries
//!   `X-Pushbox-Batch-Id` (stable across retries and requeues) so receivers can drop duplicates.
//! * **Requests.** `POST` with exactly `Content-Type: application/json`, `X-Pusher-Key`,
//!   `X-Pusher-Signature` (title case on the wire), `X-Pushbox-Batch-Id`; `webhooks.timeout_ms`
//!   for the whole exchange; any 2xx is success. HTTPS receivers are verified with rustls against
//!   the public roots plus `webhooks.ca_file` ([`client`]).
//!
//! # Requeueing dead letters (`pushbox queue retry`) without a second writer
//!
//! A spool has exactly one writer: whoever holds its `LOCK`. `pushbox queue retry` first tries
//! to open the webhook spool itself. If that succeeds no server is running, and the CLI
//! requeues directly (appends the jobs to the queue, then a `requeued` marker to the
//! dead-letter spool). If the spool is locked, a server is running: the CLI drops a request
//! file into `{state_dir}/webhooks-retry/` (written to a temp name and renamed, so it is never
//! seen half-written) and waits for the answer file the server writes back. The server polls
//! that directory every [`requeue::POLL`] and also handles requests left there while it was down
//! when it starts. See [`requeue`].
//!
//! `pushbox queue status` and `pushbox queue dead` only read, through `SpoolReader`, and are
//! safe at any time.

mod batcher;
pub mod client;
mod delivery;
mod error;
pub mod job;
pub mod requeue;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use error::WebhookError;

use crate::config::{AppConfig, Config, WebhookTarget, WebhooksConfig};
use crate::hub::{HubEvent, HubObserver};
use crate::spool::{self, Condition, Spool, SpoolOptions};

/// How many hub events may wait for the batcher before new ones are dropped.
pub const EVENT_QUEUE: usize = 16_384;

/// At most this many unfinished batches are tracked in memory; past it the dispatcher stops
/// reading ahead until some finish (they stay safe in the spool).
pub const MAX_TRACKED: usize = 100_000;

/// The name of the delivery cursor in the webhook spool.
pub const CURSOR: &str = "delivery";

/// The dead-letter spool keeps at most this many bytes (the oldest dead letters go first).
pub const DEAD_RETAIN_BYTES: u64 = 64 * 1024 * 1024;

/// The webhook queue: `{state_dir}/webhooks`.
pub fn queue_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("webhooks")
}

/// The dead letters: `{state_dir}/webhooks-dead`.
pub fn dead_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("webhooks-dead")
}

/// Where `pushbox queue retry` leaves requests for a running server.
pub fn retry_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("webhooks-retry")
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Spool options of the webhook queue.
pub fn queue_options(config: &Config) -> SpoolOptions {
    SpoolOptions {
        segment_bytes: 1024 * 1024,
        max_bytes: Some(config.spool.max_bytes),
        durability: match config.spool.durability {
            crate::config::Durability::Fsync => spool::Durability::Fsync,
            crate::config::Durability::Memory => spool::Durability::Memory,
        },
        retain_bytes: None,
        retain_age: None,
        // Nothing reserved: the webhook queue is fed after the event log refused or took it.
        reserve_bytes: 0,
    }
}

/// Spool options of the dead-letter spool.
pub fn dead_options(config: &Config) -> SpoolOptions {
    SpoolOptions {
        retain_bytes: Some(DEAD_RETAIN_BYTES),
        ..queue_options(config)
    }
}

/// Counters shared by the service's tasks.
#[derive(Default)]
pub(crate) struct Counters {
    pub events_dropped: AtomicU64,
    pub batches_enqueued: AtomicU64,
    pub batches_lost: AtomicU64,
    pub delivered: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub dead_letters: AtomicU64,
    pub depth: AtomicU64,
    pub oldest_pending_ms: AtomicU64,
    pub in_flight: AtomicU64,
    pub last_drop_log_ms: AtomicU64,
}

impl Counters {
    pub fn dead_letters_sub(&self, n: u64) {
        let _ = self
            .dead_letters
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }
}

/// A snapshot for `/metrics`, the console and the CLI.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// Batches in the spool not yet delivered or dead-lettered.
    pub queue_depth: u64,
    /// Age of the oldest of those, in ms (`None` when the queue is empty).
    pub oldest_pending_age_ms: Option<u64>,
    /// Batches being sent or waiting to retry right now (busy lanes).
    pub in_flight: u64,
    /// Batches written to the spool since start.
    pub batches_enqueued: u64,
    /// Batches that could not be written to the spool (disk full; logged) since start.
    pub batches_lost: u64,
    /// Hub events dropped because the batcher's queue was full, since start.
    pub events_dropped: u64,
    /// Batches delivered (2xx) since start.
    pub delivered: u64,
    /// Failed attempts (non-2xx, connection errors, timeouts) since start.
    pub failed_attempts: u64,
    /// Batches parked as dead letters since start.
    pub dead_lettered: u64,
    /// Dead letters parked now (not requeued).
    pub dead_letters: u64,
    /// Bytes the webhook spool occupies.
    pub queue_bytes: u64,
    /// Bytes the dead-letter spool occupies.
    pub dead_bytes: u64,
}

/// Per app: the key (for display in jobs) and its receivers.
pub(crate) struct AppTargets {
    pub key: String,
    pub targets: Vec<WebhookTarget>,
}

/// A hub event on its way to the batcher.
pub(crate) struct Msg {
    pub app: String,
    pub event: HubEvent,
}

/// The webhook service. Use it as the hub's observer; call [`shutdown`](Self::shutdown) on the
/// way out.
pub struct Webhooks {
    tx: mpsc::Sender<Msg>,
    apps: Arc<HashMap<String, AppTargets>>,
    counters: Arc<Counters>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    spools: Mutex<Option<(Spool, Spool)>>,
}

impl Webhooks {
    /// Open `{state_dir}/webhooks` and `{state_dir}/webhooks-dead` (recovering from a crash),
    /// and start the batcher, the dispatcher and the retry-request watcher on the current tokio
    /// runtime. Batches left pending by a previous run are sent right away.
    pub fn start(config: &Config) -> Result<Arc<Webhooks>, WebhookError> {
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|e| WebhookError::Runtime(e.to_string()))?;
        let client = client::Client::new(
            config.webhooks.ca_file.as_deref(),
            config.webhooks.timeout.max(Duration::from_millis(1)),
        )?;
        let (queue, report) = Spool::open(queue_dir(&config.state_dir), queue_options(config))?;
        if !report.is_clean() {
            tracing::warn!(%report, "webhook queue recovered after a crash");
        }
        let (dead, report) = Spool::open(dead_dir(&config.state_dir), dead_options(config))?;
        if !report.is_clean() {
            tracing::warn!(%report, "dead-letter spool recovered after a crash");
        }
        // Register the cursor now, so retention never deletes unsent batches.
        queue.cursor(CURSOR)?;

        let counters = Arc::new(Counters::default());
        let live = requeue::read_dead_letters(&dead)?.len() as u64;
        counters.dead_letters.store(live, Ordering::Relaxed);

        let apps: HashMap<String, AppTargets> = config
            .apps
            .iter()
            .filter_map(|a| {
                let targets = a.webhook_targets();
                (!targets.is_empty()).then(|| {
                    (
                        a.id.clone(),
                        AppTargets {
                            key: a.key.clone(),
                            targets,
                        },
                    )
                })
            })
            .collect();
        let apps = Arc::new(apps);
        let secrets: HashMap<String, (String, String)> = config
            .apps
            .iter()
            .map(|a| (a.id.clone(), (a.key.clone(), a.secret.clone())))
            .collect();

        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let (stop, stop_rx) = watch::channel(false);
        let wh: WebhooksConfig = config.webhooks.clone();
        let ctx = Arc::new(delivery::Ctx {
            secrets,
            client,
            dead: dead.clone(),
            config: wh.clone(),
            counters: counters.clone(),
            rng: ring::rand::SystemRandom::new(),
        });
        let tasks = vec![
            rt.spawn(batcher::run(
                rx,
                apps.clone(),
                queue.clone(),
                wh,
                counters.clone(),
                stop_rx.clone(),
            )),
            rt.spawn(delivery::run(queue.clone(), ctx, stop_rx.clone())),
            rt.spawn(requeue::watch(
                retry_dir(&config.state_dir),
                queue.clone(),
                dead.clone(),
                counters.clone(),
                stop_rx,
            )),
        ];
        let pending = queue
            .last_seq()
            .saturating_sub(queue.cursor(CURSOR).unwrap_or(0));
        tracing::info!(
            "webhooks: {}; {pending} batch(es) pending, {live} dead letter(s)",
            receivers_line(apps.len(), config.apps.len())
        );
        Ok(Arc::new(Webhooks {
            tx,
            apps,
            counters,
            stop,
            tasks: Mutex::new(tasks),
            spools: Mutex::new(Some((queue, dead))),
        }))
    }

    /// Flush the batcher into the spool, stop sending (unfinished batches stay in the spool for
    /// the next start), save the cursor and release the spools' locks. Idempotent. Hub events
    /// that arrive afterwards are dropped (and counted).
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *spool_lock(&self.tasks));
        for t in tasks {
            let _ = t.await;
        }
        spool_lock(&self.spools).take();
    }

    /// Counters and queue sizes.
    pub fn stats(&self) -> WebhookStats {
        let c = &self.counters;
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (queue_bytes, dead_bytes) = match &*spool_lock(&self.spools) {
            Some((q, d)) => (q.stats().total_bytes, d.stats().total_bytes),
            None => (0, 0),
        };
        let oldest = ld(&c.oldest_pending_ms);
        WebhookStats {
            queue_depth: ld(&c.depth),
            oldest_pending_age_ms: (oldest > 0).then(|| now_ms().saturating_sub(oldest)),
            in_flight: ld(&c.in_flight),
            batches_enqueued: ld(&c.batches_enqueued),
            batches_lost: ld(&c.batches_lost),
            events_dropped: ld(&c.events_dropped),
            delivered: ld(&c.delivered),
            failed_attempts: ld(&c.failed_attempts),
            dead_lettered: ld(&c.dead_lettered),
            dead_letters: ld(&c.dead_letters),
            queue_bytes,
            dead_bytes,
        }
    }

    /// The queue and the dead-letter spool, while the service runs.
    fn spools(&self) -> Option<(Spool, Spool)> {
        spool_lock(&self.spools).clone()
    }

    /// What each of the two spools can do now, for `/metrics`: `("webhooks", …)`,
    /// `("webhooks-dead", …)`; empty once the service stopped.
    pub fn conditions(&self) -> Vec<(&'static str, Condition)> {
        self.spools().map_or_else(Vec::new, |(q, d)| {
            vec![
                ("webhooks", q.condition()),
                ("webhooks-dead", d.condition()),
            ]
        })
    }

    /// Why the webhook queue cannot keep batches until someone acts (its directory removed or
    /// replaced, an I/O error), for `/up`; `None` while it can, or only waits for disk space.
    pub fn lost(&self) -> Option<String> {
        let (q, d) = self.spools()?;
        [q, d].into_iter().find_map(|s| match s.condition() {
            Condition::IoError | Condition::DirectoryLost => Some(
                s.refusal()
                    .map_or_else(|| s.condition().label().to_owned(), |e| e.to_string()),
            ),
            Condition::Writable | Condition::DiskFull => None,
        })
    }

    /// Checks the queue's and the dead letters' directories every
    /// [`crate::eventlog::WATCH_EVERY`], as the event log does its own, and logs each change of
    /// their condition: a removed `{state_dir}/webhooks` would otherwise take batches into
    /// unlinked files, gone at the next start.
    pub fn spawn_watch(self: &Arc<Self>) -> JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::eventlog::WATCH_EVERY);
            let mut was = [Condition::Writable; 2];
            loop {
                tick.tick().await;
                let Some((q, d)) = me.spools() else {
                    return;
                };
                for (i, (name, spool)) in [("webhook queue", q), ("dead-letter spool", d)]
                    .into_iter()
                    .enumerate()
                {
                    let s = spool.clone();
                    // A stat on a failing card may block: not on a runtime thread.
                    let _ = tokio::task::spawn_blocking(move || s.check_directory()).await;
                    let now = spool.condition();
                    if now != was[i] {
                        log_condition(name, now, spool.refusal());
                        was[i] = now;
                    }
                }
            }
        })
    }

    fn dropped(&self, why: &str) {
        let n = self.counters.events_dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let now = now_ms();
        let last = self.counters.last_drop_log_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 10_000
            && self
                .counters
                .last_drop_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                dropped_total = n,
                "webhook event dropped: {why} (the hub is never slowed down for webhooks; check \
                 the disk holding the state directory)"
            );
        }
    }
}

fn log_condition(name: &str, now: Condition, why: Option<spool::SpoolError>) {
    let why = why.map(|e| e.to_string()).unwrap_or_default();
    match now {
        Condition::Writable => tracing::info!("{name} writable again: webhooks are queued again"),
        Condition::DiskFull => {
            tracing::warn!(error = %why, "{name}: disk full, webhook batches are lost meanwhile")
        }
        Condition::IoError | Condition::DirectoryLost => tracing::error!(
            error = %why,
            "{name} cannot write: webhook batches are lost until pushbox is restarted"
        ),
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn spool_lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HubObserver for Webhooks {
    /// Cheap and non-blocking: a lookup, then `try_send` (dropped and counted when full).
    fn on_event(&self, app: &AppConfig, event: HubEvent) {
        let Some(t) = self.apps.get(&app.id) else {
            return;
        };
        let kind = job::kind(&event);
        if !t.targets.iter().any(|t| job::wanted(&t.event_types, kind)) {
            return;
        }
        match self.tx.try_send(Msg {
            app: app.id.clone(),
            event,
        }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.dropped("the batcher's queue is full"),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.dropped("the webhook service has stopped")
            }
        }
    }
}

/// How many of the configured apps have webhook receivers, for the start-up line:
/// `1 of 1 app has receivers`, `no app has receivers (…)`.
fn receivers_line(with_receivers: usize, apps: usize) -> String {
    match (with_receivers, apps) {
        (0, _) => {
            "off, no app has a receiver (set PUSHBOX_WEBHOOK_URL or [[apps.webhooks]])".into()
        }
        (n, 1) => format!("{n} of 1 app has receivers"),
        (1, total) => format!("1 of {total} apps has receivers"),
        (n, total) => format!("{n} of {total} apps have receivers"),
    }
}

#[cfg(test)]
mod start_line_tests {
    use super::receivers_line;

    #[test]
    fn the_start_line_counts_apps_with_receivers_among_all_apps() {
        assert!(receivers_line(0, 1).starts_with("off, no app has a receiver"));
        assert_eq!(receivers_line(1, 1), "1 of 1 app has receivers");
        assert_eq!(receivers_line(1, 3), "1 of 3 apps has receivers");
        assert_eq!(receivers_line(2, 3), "2 of 3 apps have receivers");
    }
}
