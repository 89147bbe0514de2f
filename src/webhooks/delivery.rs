//! Delivery: the dispatcher reads the webhook spool from its `delivery` cursor, routes each
//! batch to the lane of its (app, URL), runs at most one send task per lane (retrying with
//! backoff and jitter until a 2xx or the age limit, then parking the batch in the dead-letter
//! spool), and moves the cursor past the finished prefix. See the module doc of `webhooks` for
//! the ordering and at-least-once guarantees.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::client::{Client, Headers};
use super::job::{DeadRecord, Job};
use super::{now_ms, Counters, CURSOR, MAX_TRACKED};
use crate::config::WebhooksConfig;
use crate::protocol::auth::sign;
use crate::spool::{Record, Spool};

/// What the send tasks share.
pub(crate) struct Ctx {
    /// app id → (key, secret), from the configuration at start.
    pub secrets: HashMap<String, (String, String)>,
    pub client: Client,
    pub dead: Spool,
    pub config: WebhooksConfig,
    pub counters: Arc<Counters>,
    pub rng: ring::rand::SystemRandom,
}

/// How a batch finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Finish {
    Delivered,
    /// Parked in the dead-letter spool, with the last error.
    Dead(String),
}

type LaneKey = (String, String);

#[derive(Default)]
struct Lane {
    /// Seqs waiting behind the one being sent.
    waiting: VecDeque<u64>,
    busy: bool,
    /// Set when the lane's previous batch was dead-lettered (cleared by a delivery).
    failing: Option<String>,
}

struct Dispatcher {
    spool: Spool,
    ctx: Arc<Ctx>,
    lanes: HashMap<LaneKey, Lane>,
    /// Unfinished batches: seq → commit time (ms).
    outstanding: BTreeMap<u64, u64>,
    /// The last seq routed.
    read_upto: u64,
    /// The cursor as last saved.
    saved: u64,
    tasks: JoinSet<(LaneKey, u64, Finish)>,
}

/// How often the cursor is saved at most (each save is a small file write and fsync).
const CURSOR_EVERY: Duration = Duration::from_millis(200);

pub(crate) async fn run(spool: Spool, ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let saved = spool.cursor(CURSOR).unwrap_or(0);
    let mut d = Dispatcher {
        spool: spool.clone(),
        ctx,
        lanes: HashMap::new(),
        outstanding: BTreeMap::new(),
        read_upto: saved,
        saved,
        tasks: JoinSet::new(),
    };
    let mut committed = spool.subscribe();
    let mut tick = tokio::time::interval(CURSOR_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        d.route().await;
        d.publish_stats();
        tokio::select! {
            _ = super::stopped(&mut stop) => break,
            r = committed.changed() => if r.is_err() { break },
            Some(done) = d.tasks.join_next(), if !d.tasks.is_empty() => {
                if let Ok((lane, seq, finish)) = done {
                    d.finished(lane, seq, finish).await;
                }
            }
            _ = tick.tick() => d.save_cursor().await,
        }
    }
    // Stop: unfinished sends are abandoned (they stay in the spool and are sent again at the
    // next start); the cursor keeps what is finished.
    d.tasks.abort_all();
    while let Some(done) = d.tasks.join_next().await {
        if let Ok((lane, seq, finish)) = done {
            d.finished(lane, seq, finish).await;
        }
    }
    d.save_cursor().await;
}

impl Dispatcher {
    async fn read(&self, from: u64, max: usize) -> Vec<Record> {
        let spool = self.spool.clone();
        match tokio::task::spawn_blocking(move || spool.read_from(from, max)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the webhook queue");
                Vec::new()
            }
            Err(_) => Vec::new(),
        }
    }

    /// Route every committed record not routed yet (bounded by MAX_TRACKED).
    async fn route(&mut self) {
        loop {
            let last = self.spool.last_seq();
            if self.read_upto >= last || self.outstanding.len() >= MAX_TRACKED {
                return;
            }
            let want = (MAX_TRACKED - self.outstanding.len()).min(512);
            let records = self.read(self.read_upto + 1, want).await;
            if records.is_empty() {
                // Retired or lost to damage: nothing there to send.
                self.read_upto = last;
                return;
            }
            for r in records {
                self.read_upto = r.seq;
                let Some(job) = Job::decode(&r.payload) else {
                    tracing::warn!(seq = r.seq, "skipping an unreadable webhook queue record");
                    continue;
                };
                self.outstanding.insert(r.seq, r.timestamp_ms);
                let key = (job.app.clone(), job.url.clone());
                let lane = self.lanes.entry(key.clone()).or_default();
                if lane.busy {
                    lane.waiting.push_back(r.seq);
                } else {
                    self.start(key, r.seq, job);
                }
            }
        }
    }

    fn start(&mut self, key: LaneKey, seq: u64, job: Job) {
        let lane = self.lanes.entry(key.clone()).or_default();
        lane.busy = true;
        let failing = lane.failing.clone();
        self.ctx.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        let ctx = self.ctx.clone();
        self.tasks.spawn(async move {
            let finish = deliver(&ctx, &job, failing).await;
            (key, seq, finish)
        });
    }

    async fn finished(&mut self, key: LaneKey, seq: u64, finish: Finish) {
        self.ctx.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.outstanding.remove(&seq);
        let next = {
            let lane = self.lanes.entry(key.clone()).or_default();
            lane.busy = false;
            lane.failing = match finish {
                Finish::Delivered => None,
                Finish::Dead(e) => Some(e),
            };
            lane.waiting.pop_front()
        };
        let mut next = next;
        while let Some(s) = next {
            let job = self
                .read(s, 1)
                .await
                .into_iter()
                .find(|r| r.seq == s)
                .and_then(|r| Job::decode(&r.payload));
            match job {
                Some(job) => {
                    self.start(key.clone(), s, job);
                    break;
                }
                None => {
                    // Retired or unreadable: nothing to send.
                    self.outstanding.remove(&s);
                    next = self.lanes.get_mut(&key).and_then(|l| l.waiting.pop_front());
                }
            }
        }
        if let Some(l) = self.lanes.get(&key) {
            if !l.busy && l.waiting.is_empty() && l.failing.is_none() {
                self.lanes.remove(&key);
            }
        }
    }

    /// The cursor may move past every seq below the oldest unfinished one.
    fn finished_upto(&self) -> u64 {
        match self.outstanding.keys().next() {
            Some(first) => first - 1,
            None => self.read_upto,
        }
    }

    async fn save_cursor(&mut self) {
        let to = self.finished_upto();
        if to <= self.saved {
            return;
        }
        let spool = self.spool.clone();
        match tokio::task::spawn_blocking(move || spool.advance_cursor(CURSOR, to)).await {
            Ok(Ok(())) => self.saved = to,
            Ok(Err(e)) => tracing::error!(error = %e, "cannot save the webhook queue cursor"),
            Err(_) => {}
        }
    }

    fn publish_stats(&self) {
        let c = &self.ctx.counters;
        let unread = self.spool.last_seq().saturating_sub(self.read_upto);
        c.depth
            .store(self.outstanding.len() as u64 + unread, Ordering::Relaxed);
        let oldest = self.outstanding.values().next().copied().unwrap_or(0);
        c.oldest_pending_ms.store(oldest, Ordering::Relaxed);
    }
}

/// The retry interval after `failures` failed attempts: `initial * 2^(failures-1)` capped at
/// `max`, with "equal jitter" (uniform in [d/2, d]) so receivers coming back are not hit by
/// every lane at once.
pub(crate) fn backoff(
    config: &WebhooksConfig,
    failures: u32,
    rng: &ring::rand::SystemRandom,
) -> Duration {
    use ring::rand::SecureRandom;
    let max = (config.backoff_max.as_millis() as u64).max(1);
    let base = (config.backoff_initial.as_millis() as u64)
        .max(1)
        .saturating_mul(1u64 << failures.saturating_sub(1).min(32))
        .min(max);
    let mut b = [0u8; 8];
    let r = if rng.fill(&mut b).is_ok() {
        u64::from_le_bytes(b)
    } else {
        now_ms()
    };
    let half = base / 2;
    Duration::from_millis(half + r % (base - half + 1))
}

/// Send one batch until it is delivered or too old; park it as a dead letter then.
async fn deliver(ctx: &Ctx, job: &Job, lane_failing: Option<String>) -> Finish {
    let deadline = job
        .age_start_ms()
        .saturating_add(ctx.config.max_age.as_millis() as u64);
    if let Some(prev) = lane_failing {
        if now_ms() >= deadline {
            let e =
                format!("not attempted: past the age limit behind a batch that failed ({prev})");
            return park(ctx, job, 0, e).await;
        }
    }
    let Some((key, secret)) = ctx.secrets.get(&job.app) else {
        let e = format!(
            "app {:?} is no longer in the configuration, so the batch cannot be signed",
            job.app
        );
        return park(ctx, job, 0, e).await;
    };
    let signature = sign(secret, job.body.as_bytes());
    let headers = Headers {
        key,
        signature: &signature,
        batch_id: &job.id,
    };
    let body = Bytes::from(job.body.clone());
    let mut failures: u32 = 0;
    loop {
        match ctx.client.post(&job.url, &headers, body.clone()).await {
            Ok(()) => {
                ctx.counters.delivered.fetch_add(1, Ordering::Relaxed);
                if failures > 0 {
                    tracing::info!(batch = %job.id, url = %job.url, failures, "webhook delivered after retrying");
                }
                return Finish::Delivered;
            }
            Err(e) => {
                failures += 1;
                ctx.counters.failed_attempts.fetch_add(1, Ordering::Relaxed);
                let now = now_ms();
                if now >= deadline {
                    return park(ctx, job, failures, e).await;
                }
                let wait = backoff(&ctx.config, failures, &ctx.rng)
                    .min(Duration::from_millis(deadline - now));
                if failures == 1 {
                    tracing::warn!(batch = %job.id, app = %job.app, url = %job.url, error = %e,
                        "webhook delivery failed; retrying with backoff");
                } else {
                    tracing::debug!(batch = %job.id, url = %job.url, error = %e, failures, ?wait, "webhook retry failed");
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Append the batch to the dead-letter spool (retrying until it is written: the batch must not
/// be lost, and the cursor waits for it).
async fn park(ctx: &Ctx, job: &Job, attempts: u32, last_error: String) -> Finish {
    let rec = DeadRecord::Dead {
        job: job.clone(),
        dead_ms: now_ms(),
        attempts,
        last_error: last_error.clone(),
    }
    .encode();
    loop {
        match ctx.dead.append(rec.clone()).await {
            Ok(_) => break,
            Err(e) => {
                tracing::error!(error = %e, batch = %job.id, "cannot park a webhook batch as a dead letter; retrying in 5 s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
    ctx.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
    ctx.counters.dead_letters.fetch_add(1, Ordering::Relaxed);
    tracing::error!(batch = %job.id, app = %job.app, url = %job.url, events = job.events, attempts,
        error = %last_error, "webhook batch parked as a dead letter (`pushbox queue dead`, `pushbox queue retry`)");
    Finish::Dead(last_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let rng = ring::rand::SystemRandom::new();
        let c = WebhooksConfig {
            backoff_initial: Duration::from_millis(1000),
            backoff_max: Duration::from_millis(8000),
            ..WebhooksConfig::default()
        };
        for (failures, base) in [
            (1u32, 1000u64),
            (2, 2000),
            (3, 4000),
            (4, 8000),
            (5, 8000),
            (60, 8000),
        ] {
            for _ in 0..50 {
                let d = backoff(&c, failures, &rng).as_millis() as u64;
                assert!(
                    d >= base / 2 && d <= base,
                    "failures {failures}: {d} not in [{}, {base}]",
                    base / 2
                );
            }
        }
        let tiny = WebhooksConfig {
            backoff_initial: Duration::ZERO,
            backoff_max: Duration::ZERO,
            ..WebhooksConfig::default()
        };
        assert!(backoff(&tiny, 3, &rng) <= Duration::from_millis(1));
    }
}
