//! The batcher task: groups hub events per (app, receiver URL), filtered by each receiver's
//! `event_types`, closes a batch `batch_ms` after its first event or at `batch_max_events`,
//! and appends one spool record ([`Job`]) per batch. On shutdown it drains its queue and
//! flushes every open batch before it returns.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::job::{self, Job, JOB_VERSION};
use super::{now_ms, AppTargets, Counters, Msg};
use crate::config::WebhooksConfig;
use crate::spool::Spool;

struct Open {
    key: String,
    events: Vec<String>,
    time_ms: u64,
    deadline: Instant,
}

struct Batcher {
    apps: Arc<HashMap<String, AppTargets>>,
    spool: Spool,
    config: WebhooksConfig,
    counters: Arc<Counters>,
    rng: ring::rand::SystemRandom,
    open: HashMap<(String, String), Open>,
}

pub(crate) async fn run(
    mut rx: mpsc::Receiver<Msg>,
    apps: Arc<HashMap<String, AppTargets>>,
    spool: Spool,
    config: WebhooksConfig,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let mut b = Batcher {
        apps,
        spool,
        config,
        counters,
        rng: ring::rand::SystemRandom::new(),
        open: HashMap::new(),
    };
    loop {
        let next = b.open.values().map(|o| o.deadline).min();
        tokio::select! {
            biased;
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                let now = Instant::now();
                b.flush(|o| o.deadline <= now).await;
            }
            _ = super::stopped(&mut stop) => break,
            m = rx.recv() => match m {
                Some(m) => b.add(m).await,
                None => break,
            },
        }
    }
    // Shutdown: what is already queued still becomes batches.
    rx.close();
    while let Ok(m) = rx.try_recv() {
        b.add(m).await;
    }
    b.flush(|_| true).await;
}

impl Batcher {
    async fn add(&mut self, m: Msg) {
        let Some(app) = self.apps.get(&m.app) else {
            return;
        };
        let kind = job::kind(&m.event);
        let json = job::event_json(&m.event);
        let window = self.config.batch_window;
        let max = self.config.batch_max_events.max(1);
        let mut full = Vec::new();
        for t in &app.targets {
            if !job::wanted(&t.event_types, kind) {
                continue;
            }
            let k = (m.app.clone(), t.url.clone());
            let o = self.open.entry(k.clone()).or_insert_with(|| Open {
                key: app.key.clone(),
                events: Vec::new(),
                time_ms: now_ms(),
                deadline: Instant::now() + window,
            });
            o.events.push(json.clone());
            if o.events.len() >= max {
                full.push(k);
            }
        }
        if !full.is_empty() {
            let jobs: Vec<Job> = full
                .into_iter()
                .filter_map(|k| self.open.remove(&k).map(|o| self.job(k, o)))
                .collect();
            self.append(jobs).await;
        }
    }

    fn job(&self, (app, url): (String, String), o: Open) -> Job {
        Job {
            v: JOB_VERSION,
            id: job::new_batch_id(&self.rng),
            app,
            key: o.key,
            url,
            created_ms: o.time_ms,
            requeued_ms: None,
            events: o.events.len(),
            body: job::body(o.time_ms, &o.events),
        }
    }

    /// Close and append every open batch for which `due` says so.
    async fn flush(&mut self, due: impl Fn(&Open) -> bool) {
        let keys: Vec<(String, String)> = self
            .open
            .iter()
            .filter(|(_, o)| due(o))
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            return;
        }
        let jobs: Vec<Job> = keys
            .into_iter()
            .filter_map(|k| self.open.remove(&k).map(|o| self.job(k, o)))
            .collect();
        self.append(jobs).await;
    }

    /// Append the jobs (concurrently, so they share a group commit), retrying a failed append a
    /// few times (a full disk may clear) before giving the batch up with an error in the log.
    async fn append(&self, jobs: Vec<Job>) {
        let appends = jobs.into_iter().map(|j| async move {
            let payload = j.encode();
            let mut wait = Duration::from_millis(100);
            for attempt in 1..=5 {
                match self.spool.append(payload.clone()).await {
                    Ok(_) => {
                        self.counters
                            .batches_enqueued
                            .fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(e) if attempt < 5 => {
                        tracing::warn!(error = %e, batch = %j.id, "cannot queue a webhook batch; retrying");
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                    Err(e) => {
                        self.counters.batches_lost.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            error = %e, batch = %j.id, app = %j.app, url = %j.url, events = j.events,
                            "webhook batch lost: it could not be written to the queue"
                        );
                    }
                }
            }
        });
        futures_util::future::join_all(appends).await;
    }
}
