//! The forwarder: tails this node's event log (what the HTTP API accepted, durable before its
//! 200) and appends each event to its app's bus with the idempotent FORWARD script. The script
//! keeps, per origin, the highest seq it added, so a retry after a lost answer, a reconnect or
//! a restart adds nothing twice; after a restart the forwarder resumes from that mark, read
//! back from Redis (no local state can get ahead of Redis). Only when Redis has no mark at all
//! (it lost its data) does it go on from the position it saves locally about once a second.
//! The records come straight from the spool's writer as soon as they are written, while their
//! fsync runs (`Spool::hand_over`: the bus no longer waits for the disk, measured in
//! BENCHMARKS.md), older ones (catching up) from the file. A record handed over can still be
//! lost to a failed fsync or a power cut; the spool never gives its seq to another record, so
//! FORWARD's mark never hides a later event.
//!
//! Redis losing data under a running forwarder (a restart without persistence, or with AOF
//! losing its last second) takes with it the bus entries not every node had read yet. The
//! forwarder then goes back (to the mark Redis kept, or [`REWIND`] before Redis was last seen,
//! counted both in acceptance time and in the time it forwarded them: a backlog accepted long
//! ago may have gone out just before) and forwards them again; readers skip what they have.
//! Each FORWARD call carries the mark this run left, and the script refuses to add anything
//! on a lower or missing one: the forwarder must notice the loss on its own first call to the
//! new Redis, not through the heartbeat, which may come after that call has already raised
//! the mark past the lost entries (CI, issue 21: event 66 of 269 never reached node C on
//! Valkey restarted without persistence).
//!
//! Degraded mode: while Redis does not take the events, this node delivers its own events to
//! its own sockets at once ([`Msg::Local`]) and keeps retrying; when the bus catches up, the
//! deliverer skips them. The other nodes get them late, complete and in order.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::bus::Kind;
use super::conn::{int, Pool};
use super::deliver::Msg;
use super::keys::Keys;
use super::scripts::FORWARD_SCRIPT;
use super::status::now_ms;
use super::status::Status;
use crate::eventlog::EventRecord;
use crate::protocol::ChannelKind;
use crate::spool::{Record, Spool};

/// When each recent batch went out: (ms it was forwarded, its first seq), the newest last,
/// covering [`REWIND`] of forwarding time before the newest. After Redis lost its data, what a
/// reader may have missed is what was *forwarded* shortly before, which is not what was
/// *accepted* shortly before when the forwarder was catching up: a backlog of 30 s of events
/// forwarded in one second would have gone back only a third of the way by acceptance time.
#[derive(Default)]
struct ForwardLog {
    batches: VecDeque<(u64, u64)>,
}

impl ForwardLog {
    fn push(&mut self, at_ms: u64, first_seq: u64) {
        self.batches.push_back((at_ms, first_seq));
        // Trimmed against the newest entry, not the clock: while Redis is away nothing is
        // forwarded, and the batches just before it went away are the ones a recheck wants.
        let keep_from = at_ms.saturating_sub(REWIND.as_millis() as u64);
        while self.batches.front().is_some_and(|&(t, _)| t < keep_from) {
            self.batches.pop_front();
        }
    }

    /// The first seq of the first batch forwarded at or after `since_ms`.
    fn first_since(&self, since_ms: u64) -> Option<u64> {
        self.batches
            .iter()
            .find(|&&(t, _)| t >= since_ms)
            .map(|&(_, seq)| seq)
    }
}

/// Records read from the event log per round.
const BATCH: usize = 128;

/// After Redis lost all of this node's marks, the events of this while before Redis was last
/// seen are forwarded again: some may have been on the lost stream before every node read
/// them. Readers skip what they already have.
pub const REWIND: Duration = Duration::from_secs(10);

/// One app as the forwarder sees it.
pub struct Target {
    pub keys: Keys,
    pub deliver: mpsc::Sender<Msg>,
}

pub struct Forwarder {
    pub pool: Arc<Pool>,
    pub spool: Spool,
    pub origin: String,
    pub apps: HashMap<String, Target>,
    pub status: Arc<Status>,
    /// Set by a heartbeat when Redis is back after it was lost (ms of the last heartbeat before,
    /// 0: nothing to check): Redis may have lost what was forwarded last (a restart with AOF
    /// loses up to a second, one without persistence everything), so check the marks.
    pub recheck: Arc<Recheck>,
    /// The next seq to forward, for a clean shutdown that waits for the forwarder.
    pub next: Arc<AtomicU64>,
    /// `{state_dir}/cluster-forwarded`: the last seq forwarded, saved about once a second, for
    /// a start on a Redis that lost its marks (see [`Forwarder::start`]).
    pub saved: PathBuf,
}

/// "Redis is back: check what it lost", from the heartbeat to the forwarder (which may be idle).
#[derive(Default)]
pub struct Recheck {
    /// When Redis was last seen before it was lost (ms); 0: nothing to check.
    since: AtomicU64,
    wake: tokio::sync::Notify,
}

/// What one round of FORWARD calls did.
enum Forwarded {
    /// Every app's events are on its bus (or were already).
    Done,
    /// An app's mark in Redis is below what this run left there: Redis lost data. Nothing of
    /// that app was added; the forwarder must go back first ([`Forwarder::rechecked`]).
    MarkLost,
}

impl Recheck {
    pub fn ask(&self, since_ms: u64) {
        self.since.store(since_ms.max(1), Relaxed);
        self.wake.notify_one();
    }

    fn take(&self) -> u64 {
        self.since.swap(0, Relaxed)
    }
}

/// How often the forwarded position is saved locally.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// The seq saved in `path`, if any.
fn read_saved(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl Forwarder {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        tokio::select! {
            _ = self.forward_forever() => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }

    async fn forward_forever(&self) {
        // Records are handed over by the writer as they are written from now on (see `read`).
        self.spool.hand_over();
        let at_start = self.spool.last_seq();
        // Per app, the highest seq forwarded (the mark it left in Redis): a mark in Redis below
        // it was lost. Seeded with the marks Redis holds now.
        let mut sent: HashMap<String, u64> = HashMap::new();
        let mut next = self.start(at_start, &mut sent).await;
        self.next.store(next, Relaxed);
        // When a FORWARD last went through (ms): Redis held this node's entries then.
        let mut forwarded_ms = now_ms();
        let mut log = ForwardLog::default();
        // Records below this were delivered here (through the bus or, degraded, directly).
        let mut local_next = next;
        let mut handed = self.spool.subscribe_handed();
        let mut backoff = Duration::from_millis(100);
        let mut saved_at = Instant::now();
        let mut saved = next;
        loop {
            if saved != next && saved_at.elapsed() >= SAVE_EVERY {
                saved_at = Instant::now();
                saved = next;
                self.save(next).await;
            }
            let since = self.recheck.take();
            if since > 0 {
                next = self.rechecked(next, since, &mut sent, &log).await;
            }
            let last = self.spool.last_handed();
            if next > last {
                backoff = Duration::from_millis(100);
                if saved != next && saved_at.elapsed() >= SAVE_EVERY {
                    // Idle now: save where this burst ended (at most once a second: a stale
                    // position only means a little is forwarded twice, which readers skip).
                    saved_at = Instant::now();
                    saved = next;
                    self.save(next).await;
                }
                tokio::select! {
                    changed = handed.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    _ = self.recheck.wake.notified() => {}
                }
                continue;
            }
            let records = self.read(next).await;
            let Some(end) = records.last().map(|r| r.seq + 1) else {
                // Nothing from `next` on in memory or the file (the writer keeps every record
                // until it is committed or given up): retention took them (a very long
                // outage), or they are seqs a crash or a failed fsync gave up. Go on after.
                next = (self.spool.last_seq() + 1).max(next + 1);
                continue;
            };
            match self.forward(&records, &mut sent).await {
                Ok(Forwarded::Done) => {
                    self.status.ok();
                    forwarded_ms = now_ms();
                    log.push(forwarded_ms, next);
                    next = end;
                    self.next.store(next, Relaxed);
                    local_next = local_next.max(next);
                }
                Ok(Forwarded::MarkLost) => {
                    self.status.ok();
                    // Redis held this node's entries when a forward last went through (or
                    // earlier, when a heartbeat last saw it).
                    let since = match self.recheck.take() {
                        0 => forwarded_ms,
                        s => s.min(forwarded_ms),
                    };
                    next = self.rechecked(next, since, &mut sent, &log).await;
                    self.next.store(next, Relaxed);
                    if self.recheck.since.load(Relaxed) > 0 {
                        // The marks could not be read: wait, or this loop would spin on refusals.
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                }
                Err(e) => {
                    self.status.failed("forwarding events to the bus", &e);
                    // Degraded: this node's sockets get this node's events now.
                    local_next = self.deliver_locally(local_next, last).await;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = handed.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// The first seq to forward: after the lowest mark any app's bus holds for this origin; from
    /// now on when an app's bus has none (a new cluster, or Redis lost its data). Puts the
    /// marks it found in `sent`.
    async fn start(&self, at_start: u64, sent: &mut HashMap<String, u64>) -> u64 {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.marks_by_app().await {
                Ok(marks) => {
                    self.status.ok();
                    sent.extend(
                        marks
                            .iter()
                            .filter_map(|(app, m)| Some((app.clone(), (*m)?))),
                    );
                    let marks = marks.into_iter().map(|(_, m)| m);
                    // An app without a mark has had nothing forwarded yet (or Redis lost it): the
                    // others' marks still say where this node stopped. None at all (a new
                    // cluster, or a Redis that lost its data): where this node saved it stopped,
                    // so what it accepted while it could not forward still goes out.
                    let lowest = marks.flatten().min();
                    let first = self.spool.stats().first_seq.unwrap_or(at_start + 1);
                    let from = match lowest.or_else(|| read_saved(&self.saved)) {
                        Some(m) => (m + 1).max(first),
                        None => at_start + 1,
                    };
                    return from.min(at_start + 1);
                }
                Err(e) => self.status.failed("reading the forward marks", &e),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Saves `next - 1` as the last seq forwarded (best effort: a lost save only means a little
    /// is forwarded again, which readers skip).
    async fn save(&self, next: u64) {
        let path = self.saved.clone();
        let tmp = path.with_extension("tmp");
        let text = format!("{}\n", next.saturating_sub(1));
        let _ = tokio::task::spawn_blocking(move || {
            std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path))
        })
        .await;
    }

    /// Where to go on after Redis came back: from the lowest mark that Redis lost (below what this
    /// run forwarded for that app), or, for an app whose mark is gone altogether, from
    /// [`REWIND`] before Redis was last seen (`since_ms`), by acceptance time and by the time
    /// this run forwarded them (`log`), whichever goes further back. `next` when nothing was
    /// lost. `sent` takes the marks Redis has now, so FORWARD adds again from there.
    async fn rechecked(
        &self,
        next: u64,
        since_ms: u64,
        sent: &mut HashMap<String, u64>,
        log: &ForwardLog,
    ) -> u64 {
        let marks = match self.marks_by_app().await {
            Ok(m) => m,
            Err(_) => {
                // Not yet: the next round asks again.
                self.recheck.since.store(since_ms, Relaxed);
                return next;
            }
        };
        let mut from = next;
        let mut gone = false;
        for (app, mark) in marks {
            let Some(&high) = sent.get(&app) else {
                continue;
            };
            match mark {
                Some(m) if m >= high => {}
                Some(m) => {
                    from = from.min(m + 1);
                    sent.insert(app, m);
                }
                None => {
                    gone = true;
                    sent.remove(&app);
                }
            }
        }
        if gone {
            let window_start = since_ms.saturating_sub(REWIND.as_millis() as u64);
            from = from.min(self.first_since(window_start, next).await);
            if let Some(seq) = log.first_since(window_start) {
                from = from.min(seq);
            }
        }
        let first = self.spool.stats().first_seq.unwrap_or(from);
        let from = from.max(first).min(next);
        if from < next {
            tracing::warn!(
                events = next - from,
                "cluster: Redis lost events this node had forwarded (a restart): forwarding them again; nodes skip what they have"
            );
        }
        from
    }

    /// The first seq committed at or after `since_ms`, if earlier than `next`.
    async fn first_since(&self, since_ms: u64, next: u64) -> u64 {
        let since = since_ms;
        let first = self.spool.stats().first_seq.unwrap_or(next);
        let mut from = next.saturating_sub(10_000).max(first);
        while from < next {
            let records = self.read(from).await;
            if let Some(r) = records.iter().find(|r| r.timestamp_ms >= since) {
                return r.seq.min(next);
            }
            match records.last() {
                Some(r) => from = r.seq + 1,
                None => break,
            }
        }
        next
    }

    /// Each app's mark for this origin in Redis.
    async fn marks_by_app(&self) -> Result<Vec<(String, Option<u64>)>, redis::RedisError> {
        let mut out = Vec::new();
        for (app, t) in &self.apps {
            let v = self
                .pool
                .query(
                    redis::cmd("HGET")
                        .arg(format!("{}fwd", t.keys.base()))
                        .arg(&self.origin),
                )
                .await?;
            out.push((app.clone(), int(&v).map(|n| n.max(0) as u64)));
        }
        Ok(out)
    }

    /// Up to [`BATCH`] records from `from`: the ones just written straight from the writer
    /// (measured: forwarding no longer waits for the fsync, a blocking-pool hop and a
    /// `pread`), older ones from the file.
    async fn read(&self, from: u64) -> Vec<Record> {
        if let Some(r) = self.spool.read_recent(from, BATCH) {
            return r;
        }
        let spool = self.spool.clone();
        match tokio::task::spawn_blocking(move || spool.read_from(from, BATCH)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cluster: cannot read the event log to forward it");
                tokio::time::sleep(Duration::from_secs(1)).await;
                Vec::new()
            }
            Err(_) => Vec::new(),
        }
    }

    /// Forwards `records`, grouped per app, one script call per app.
    async fn forward(
        &self,
        records: &[Record],
        sent: &mut HashMap<String, u64>,
    ) -> Result<Forwarded, redis::RedisError> {
        let mut per_app: HashMap<&str, Vec<String>> = HashMap::new();
        let decoded: Vec<(u64, EventRecord)> = records
            .iter()
            .filter_map(|r| Some((r.seq, serde_json::from_slice(&r.payload).ok()?)))
            .collect();
        for (seq, e) in &decoded {
            if !self.apps.contains_key(e.app.as_str()) {
                continue;
            }
            let args = per_app.entry(e.app.as_str()).or_default();
            let cache: Vec<&String> = e
                .channels
                .iter()
                .filter(|c| ChannelKind::of(c).is_cache())
                .collect();
            args.push(seq.to_string());
            args.push(e.socket_id.clone().unwrap_or_default());
            args.push(e.name.clone());
            args.push(e.data.clone());
            args.push(serde_json::to_string(&e.channels).unwrap_or_else(|_| "[]".into()));
            args.push(serde_json::to_string(&cache).unwrap_or_else(|_| "[]".into()));
        }
        for (app, args) in per_app {
            let Some(t) = self.apps.get(app) else {
                continue;
            };
            let left = sent.get(app).map(u64::to_string).unwrap_or_default();
            let mut all: Vec<&str> = Vec::with_capacity(args.len() + 2);
            all.push(&self.origin);
            all.push(&left);
            all.extend(args.iter().map(String::as_str));
            let added = self
                .pool
                .script(&FORWARD_SCRIPT, t.keys.base(), &all)
                .await?;
            if int(&added) == Some(-1) {
                return Ok(Forwarded::MarkLost);
            }
            if let Some(q) = args.first().and(args.get(args.len().saturating_sub(6))) {
                if let Ok(q) = q.parse::<u64>() {
                    // A batch forwarded again after a rewind (all skipped) leaves the mark.
                    let high = sent.entry(app.to_owned()).or_insert(q);
                    *high = (*high).max(q);
                }
            }
        }
        Ok(Forwarded::Done)
    }

    /// Delivers records `from..=last` to this node's own sockets; returns the next seq.
    async fn deliver_locally(&self, mut from: u64, last: u64) -> u64 {
        while from <= last {
            let records = self.read(from).await;
            let Some(end) = records.last().map(|r| r.seq + 1) else {
                return last + 1;
            };
            for r in records {
                let Ok(e) = serde_json::from_slice::<EventRecord>(&r.payload) else {
                    continue;
                };
                let Some(t) = self.apps.get(&e.app) else {
                    continue;
                };
                let kind = Kind::Event {
                    origin: self.origin.clone(),
                    q: r.seq,
                    except: e.socket_id,
                    name: e.name,
                    data: e.data,
                    channels: e.channels,
                };
                let _ = t.deliver.send(Msg::Local { q: r.seq, kind }).await;
            }
            from = end;
        }
        from
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_goes_back_by_forwarding_time_and_keeps_only_the_rewind() {
        let mut log = ForwardLog::default();
        // A backlog caught up: seqs 1..=3000 forwarded in batches within one second at t=100 s.
        for (i, seq) in (1..=3000u64).step_by(128).enumerate() {
            log.push(100_000 + i as u64 * 40, seq);
        }
        // Redis last seen at 101 s: everything forwarded since 91 s goes again, from seq 1,
        // though those events were accepted long before.
        assert_eq!(log.first_since(91_000), Some(1));
        assert_eq!(log.first_since(100_040), Some(129));
        assert_eq!(log.first_since(200_000), None);
        // Thirty seconds later only what went out in the last REWIND is kept.
        log.push(130_000, 5000);
        log.push(131_000, 5100);
        assert_eq!(log.first_since(0), Some(5000));
        assert_eq!(log.batches.len(), 2);
    }
}
