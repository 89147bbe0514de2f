//! What this node knows of its own health in the cluster, for `/up` and `/metrics`: whether
//! Redis answers, how far behind the bus the node is (in time and in entries read but not yet
//! delivered), how many nodes hold a lease. Atomics only: the readers and writers are tasks.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::metrics::ClusterSnapshot;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One app's reader.
#[derive(Default)]
pub struct Reader {
    /// The last `XREAD` came back with less than a full batch: nothing was waiting.
    caught_up: AtomicBool,
    /// When the reader was last known caught up (ms).
    caught_up_at: AtomicU64,
    /// Entries read and not yet delivered.
    pub queued: AtomicI64,
}

impl Reader {
    pub fn read(&self, full_batch: bool) {
        if full_batch {
            self.caught_up.store(false, Relaxed);
        } else {
            self.caught_up.store(true, Relaxed);
            self.caught_up_at.store(now_ms(), Relaxed);
        }
    }

    /// The connection failed: how far behind we are is unknown from now on, and grows.
    pub fn lost(&self) {
        self.caught_up.store(false, Relaxed);
    }

    pub fn started(&self) {
        self.caught_up_at.store(now_ms(), Relaxed);
    }

    pub fn lag(&self) -> Duration {
        if self.caught_up.load(Relaxed) {
            return Duration::ZERO;
        }
        Duration::from_millis(now_ms().saturating_sub(self.caught_up_at.load(Relaxed)))
    }
}

/// The node's status.
pub struct Status {
    redis_up: AtomicBool,
    /// When Redis was last seen answering (ms).
    last_ok: AtomicU64,
    nodes: AtomicU64,
    pub readers: Vec<Reader>,
    max_lag: Duration,
    shown: String,
}

impl Status {
    pub fn new(apps: usize, max_lag: Duration, shown: String) -> Status {
        Status {
            redis_up: AtomicBool::new(false),
            last_ok: AtomicU64::new(now_ms()),
            nodes: AtomicU64::new(0),
            readers: (0..apps).map(|_| Reader::default()).collect(),
            max_lag,
            shown,
        }
    }

    pub fn ok(&self) {
        self.last_ok.store(now_ms(), Relaxed);
        if !self.redis_up.swap(true, Relaxed) {
            tracing::info!(redis = %self.shown, "cluster: Redis answers");
        }
    }

    pub fn failed(&self, what: &str, error: &dyn std::fmt::Display) {
        if self.redis_up.swap(false, Relaxed) {
            let error = error.to_string();
            let fix = if error.contains("OOM") {
                "Redis is out of memory and refuses writes: raise its maxmemory (keep maxmemory-policy noeviction) or free memory"
            } else {
                "Check that Redis runs and that this box reaches it"
            };
            tracing::error!(redis = %self.shown, %error, "cluster: lost Redis ({what}): this node now delivers only the events published on it; the others get them when Redis is back. {fix}");
        } else {
            tracing::debug!(%error, "cluster: {what} failed");
        }
    }

    pub fn set_nodes(&self, n: u64) {
        self.nodes.store(n, Relaxed);
    }

    fn lag(&self) -> Duration {
        self.readers
            .iter()
            .map(Reader::lag)
            .max()
            .unwrap_or_default()
    }

    /// `Err(reason)` while Redis is lost or the node is behind the bus by more than `max_lag`.
    pub fn health(&self) -> Result<(), String> {
        if !self.redis_up.load(Relaxed) {
            let secs = now_ms().saturating_sub(self.last_ok.load(Relaxed)) / 1000;
            return Err(format!(
                "Redis ({}) has not answered for {secs} s: this node only delivers its own events",
                self.shown
            ));
        }
        let lag = self.lag();
        if lag > self.max_lag {
            return Err(format!(
                "{:.1} s behind the cluster's bus (cluster.max_lag is {:?})",
                lag.as_secs_f64(),
                self.max_lag
            ));
        }
        Ok(())
    }

    pub fn snapshot(&self) -> ClusterSnapshot {
        ClusterSnapshot {
            redis_up: self.redis_up.load(Relaxed),
            lag_seconds: self.lag().as_secs_f64(),
            lag_entries: self
                .readers
                .iter()
                .map(|r| r.queued.load(Relaxed).max(0) as u64)
                .sum(),
            nodes: self.nodes.load(Relaxed),
        }
    }
}
