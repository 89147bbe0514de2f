//! Node leases and the janitor, per app. Every `heartbeat` a node renews its lease (expiry by
//! Redis's clock, so the nodes' clocks do not matter), reports its connection count and learns
//! the others' (for `max_connections` across the cluster). Every node also runs the REAP
//! script: nodes whose lease is past leave every channel they were on, each transition firing
//! once (the script re-checks the lease inside, so two janitors never reap twice).
//!
//! A node back in touch with Redis after losing it, or that finds its own lease gone (it was
//! cut off longer than the lease and reaped) or Redis's epoch changed (Redis lost its data),
//! compares what Redis says it holds with what it holds ([`Op::Reconcile`]): members it
//! still has come back with one `member_added` each.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::conn::{int, items, text, Pool};
use super::keys::Keys;
use super::scripts::{HEARTBEAT_SCRIPT, REAP_SCRIPT};
use super::status::Status;
use super::worker::Op;
use crate::hub::App;

pub struct Lease {
    pub pool: Arc<Pool>,
    pub keys: Keys,
    pub node: String,
    pub app: Arc<App>,
    pub lease: Duration,
    pub every: Duration,
    pub status: Arc<Status>,
    pub remote: Arc<AtomicUsize>,
    pub ops: mpsc::UnboundedSender<Op>,
    /// Tells the forwarder to check what Redis lost (the ms Redis was last seen before).
    pub recheck: Arc<super::forward::Recheck>,
}

impl Lease {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        tokio::select! {
            _ = self.beat_forever() => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }

    async fn beat_forever(&self) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut known_epoch: Option<String> = None;
        // Whether the last heartbeat failed: Redis may have lost or missed something since.
        let mut was_lost = false;
        // When a heartbeat last went through (ms).
        let mut last_ok = super::status::now_ms();
        loop {
            tick.tick().await;
            match self.beat().await {
                Ok((had, epoch)) => {
                    self.status.ok();
                    let epoch_changed = known_epoch.as_ref().is_some_and(|e| *e != epoch);
                    if epoch_changed || was_lost {
                        self.recheck.ask(last_ok);
                    }
                    last_ok = super::status::now_ms();
                    if epoch_changed {
                        tracing::warn!("cluster: Redis lost its data (a restart without persistence?): joins and leaves meanwhile send no webhook, and events in flight then may have missed a node");
                    }
                    let first = known_epoch.is_none();
                    if !first && (!had || epoch_changed || was_lost) {
                        let _ = self.ops.send(Op::Reconcile);
                    }
                    known_epoch = Some(epoch);
                    was_lost = false;
                }
                Err(e) => {
                    was_lost = true;
                    self.status.failed("renewing this node's lease", &e);
                }
            }
            if let Err(e) = self.reap(None).await {
                self.status.failed("reaping dead nodes", &e);
            }
        }
    }

    /// One heartbeat: `(this node still had a lease, Redis's epoch)`.
    async fn beat(&self) -> Result<(bool, String), redis::RedisError> {
        let lease = self.lease.as_millis().to_string();
        let conns = self.app.counters.connections.load(Relaxed).to_string();
        // A new epoch offered on every beat, not one per node: Redis back empty takes the first
        // offer it gets, and a node that offered the same value before (it set the epoch the
        // first time) would see nothing change. When another task already hit the dead pooled
        // connection and made a new one, its heartbeat does not fail either, so it would never
        // learn that Redis lost its data; for an idle forwarder that check is the only one (a
        // hole found while chasing issue 21's CI failure, by reading, not yet seen failing).
        let offer = super::random_hex(8);
        let v = self
            .pool
            .script(
                &HEARTBEAT_SCRIPT,
                self.keys.base(),
                &[&self.node, &lease, &conns, &offer],
            )
            .await?;
        let a = items(&v);
        let had = a.first().and_then(int) == Some(1);
        let nodes = a.get(1).and_then(int).unwrap_or(0);
        let others = a.get(2).and_then(int).unwrap_or(0);
        let epoch = a.get(3).and_then(text).unwrap_or_default();
        self.status.set_nodes(nodes.max(0) as u64);
        self.remote.store(others.max(0) as usize, Relaxed);
        Ok((had, epoch))
    }

    /// Reaps dead nodes (and `leaving`, a node shutting down cleanly).
    pub async fn reap(&self, leaving: Option<&str>) -> Result<(), redis::RedisError> {
        reap(&self.pool, &self.keys, &self.app, leaving).await
    }
}

/// Runs REAP until no dead node is left (it takes a few per call).
pub async fn reap(
    pool: &Pool,
    keys: &Keys,
    app: &App,
    leaving: Option<&str>,
) -> Result<(), redis::RedisError> {
    let scf = if app.config.subscription_count {
        "1"
    } else {
        "0"
    };
    let mut leaving = leaving;
    for _ in 0..64 {
        let v = pool
            .script(&REAP_SCRIPT, keys.base(), &[scf, leaving.unwrap_or("")])
            .await?;
        leaving = None;
        let dead: Vec<String> = items(&v).iter().filter_map(text).collect();
        if dead.is_empty() {
            return Ok(());
        }
        for d in &dead {
            tracing::info!(node = %d, app = %app.config.id, "cluster: node left (lease expired or shut down): its connections left their channels");
        }
    }
    Ok(())
}
