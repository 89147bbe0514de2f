//! The forwarder: tails this node's event log (what the HTTP API accepted, durable before its
//! 200) and appends each event to its app's bus with the idempotent FORWARD script. The script
//! keeps, per origin, the highest seq it added, so a retry after a lost answer, a reconnect or
//! a restart adds nothing twice; after a restart the forwarder resumes from that mark, read
//! back from Redis (no local state can get ahead of Redis).
//!
//! Degraded mode: while Redis does not take the events, this node delivers its own events to
//! its own sockets at once ([`Msg::Local`]) and keeps retrying; when the bus catches up, the
//! deliverer skips them. The other nodes get them late, complete and in order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::bus::Kind;
use super::conn::{int, Pool};
use super::deliver::Msg;
use super::keys::Keys;
use super::scripts::FORWARD_SCRIPT;
use super::status::Status;
use crate::eventlog::EventRecord;
use crate::protocol::ChannelKind;
use crate::spool::{Record, Spool};

/// Records read from the event log per round.
const BATCH: usize = 128;

/// After Redis lost its data, the events of this last while are forwarded again: some may have
/// been on the lost stream before every node read them. Readers skip what they already have.
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
    /// Set (by a heartbeat) when Redis's epoch changed: forward [`REWIND`] again.
    pub rewind: Arc<AtomicBool>,
    /// The next seq to forward, for a clean shutdown that waits for the forwarder.
    pub next: Arc<AtomicU64>,
}

impl Forwarder {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        tokio::select! {
            _ = self.forward_forever() => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }

    async fn forward_forever(&self) {
        let at_start = self.spool.last_seq();
        let mut next = self.start(at_start).await;
        self.next.store(next, Relaxed);
        // Records below this were delivered here (through the bus or, degraded, directly).
        let mut local_next = next;
        let mut committed = self.spool.subscribe();
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.rewind.swap(false, Relaxed) {
                next = self.rewound(next).await;
            }
            let last = self.spool.last_seq();
            if next > last {
                backoff = Duration::from_millis(100);
                if committed.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let records = self.read(next).await;
            let Some(end) = records.last().map(|r| r.seq + 1) else {
                // Retention took them (a very long outage): go on from what is there.
                next = self
                    .spool
                    .stats()
                    .first_seq
                    .unwrap_or(last + 1)
                    .max(next + 1);
                continue;
            };
            match self.forward(&records).await {
                Ok(()) => {
                    self.status.ok();
                    next = end;
                    self.next.store(next, Relaxed);
                    local_next = local_next.max(next);
                }
                Err(e) => {
                    self.status.failed("forwarding events to the bus", &e);
                    // Degraded: this node's sockets get this node's events now.
                    local_next = self.deliver_locally(local_next, last).await;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = committed.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// The first seq to forward: after the lowest mark any app's bus holds for this origin; from
    /// now on when an app's bus has none (a new cluster, or Redis lost its data).
    async fn start(&self, at_start: u64) -> u64 {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.marks().await {
                Ok(marks) => {
                    self.status.ok();
                    // An app without a mark has had nothing forwarded yet (or Redis lost it): the
                    // others' marks still say where this node stopped.
                    let lowest = marks.into_iter().flatten().min();
                    let first = self.spool.stats().first_seq.unwrap_or(at_start + 1);
                    return match lowest {
                        Some(m) => (m + 1).max(first),
                        None => at_start + 1,
                    };
                }
                Err(e) => self.status.failed("reading the forward marks", &e),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// The first seq committed within [`REWIND`] of now, if earlier than `next`.
    async fn rewound(&self, next: u64) -> u64 {
        let since = super::status::now_ms().saturating_sub(REWIND.as_millis() as u64);
        let first = self.spool.stats().first_seq.unwrap_or(next);
        let mut from = next.saturating_sub(10_000).max(first);
        while from < next {
            let records = self.read(from).await;
            if let Some(r) = records.iter().find(|r| r.timestamp_ms >= since) {
                let to = r.seq.min(next);
                tracing::info!(
                    events = next - to,
                    "cluster: forwarding the last {REWIND:?} of events again (Redis lost its data)"
                );
                return to;
            }
            match records.last() {
                Some(r) => from = r.seq + 1,
                None => break,
            }
        }
        next
    }

    async fn marks(&self) -> Result<Vec<Option<u64>>, redis::RedisError> {
        let mut out = Vec::new();
        for t in self.apps.values() {
            let v = self
                .pool
                .query(
                    redis::cmd("HGET")
                        .arg(format!("{}fwd", t.keys.base()))
                        .arg(&self.origin),
                )
                .await?;
            out.push(int(&v).map(|n| n.max(0) as u64));
        }
        Ok(out)
    }

    async fn read(&self, from: u64) -> Vec<Record> {
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
    async fn forward(&self, records: &[Record]) -> Result<(), redis::RedisError> {
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
            let mut all: Vec<&str> = Vec::with_capacity(args.len() + 1);
            all.push(&self.origin);
            all.extend(args.iter().map(String::as_str));
            self.pool
                .script(&FORWARD_SCRIPT, t.keys.base(), &all)
                .await?;
        }
        Ok(())
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
