//! The event log: every event the HTTP API accepts is appended to a spool in
//! `{state_dir}/events` before the API answers (fsync'd with group commit unless
//! `durability = "memory"`), with the channels it went to and how many sockets each reached.
//! Retention by size and age keeps it within an SD card's budget. `pushbox events tail` reads
//! it from another process while the server runs.
//!
//! It says before an event is delivered whether it can keep it: disk space is reserved ahead
//! of the writer ([`RESERVE_BYTES`]), and a watcher checks every [`WATCH_EVERY`] that its
//! directory is still the one it opened. A full disk is refused until there is room again (no
//! restart); a removed directory or an I/O error until an operator acts (see README,
//! "Durability").

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::{AcceptedEvent, AppendError, EventLog as EventLogTrait, LogFuture, LogStatus};
use crate::config::{Config, Durability};
use crate::spool::{self, Condition, RecoveryReport, Spool, SpoolError, SpoolOptions};

/// Disk space kept allocated ahead of the writer. Half of it is what may be on its way when
/// the disk fills up (events that passed the check and are not yet written): 128 KiB is a
/// hundred 1 KB events, far more than a shop's publishers have in flight at once. One
/// `fallocate` per 128 KiB written; the rest of the disk stays usable down to this much.
pub const RESERVE_BYTES: u64 = 256 * 1024;

/// How often the directory's identity is checked (two `stat`s, a few microseconds). Events
/// accepted between an `rm -rf` and the next check are lost with the directory; a quarter
/// second bounds that without waking an idle box more than four times a second.
pub const WATCH_EVERY: Duration = Duration::from_millis(250);

/// One accepted event as stored (one JSON object per spool record).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventRecord {
    pub app: String,
    pub name: String,
    pub channels: Vec<String>,
    pub data: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_id: Option<String>,
    /// Sockets reached per channel, in `channels` order.
    pub delivered: Vec<usize>,
    /// The resume position per channel, in `channels` order (0: none, a cache channel); absent
    /// in records written with resume off or by older versions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub positions: Vec<u64>,
}

/// The directory of the event log under a state directory.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("events")
}

/// The event log of a running server.
pub struct EventLog {
    spool: Spool,
    /// `durability = "memory"`: appends are queued without waiting for the write.
    detached: bool,
}

impl EventLog {
    /// Opens (and recovers) the log; the report says what a crash left behind.
    pub fn open(config: &Config) -> Result<(Arc<EventLog>, RecoveryReport), SpoolError> {
        let options = SpoolOptions {
            max_bytes: Some(config.spool.max_bytes),
            durability: match config.spool.durability {
                Durability::Fsync => spool::Durability::Fsync,
                Durability::Memory => spool::Durability::Memory,
            },
            retain_bytes: Some(config.spool.events_retain_bytes),
            retain_age: Some(config.spool.events_retain_age),
            reserve_bytes: RESERVE_BYTES,
            ..SpoolOptions::default()
        };
        let (spool, report) = Spool::open(dir(&config.state_dir), options)?;
        let detached = config.spool.durability == Durability::Memory;
        Ok((Arc::new(EventLog { spool, detached }), report))
    }

    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Applies age retention every `every` (size retention also runs as segments roll).
    pub fn spawn_retention(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let spool = me.spool.clone();
                match tokio::task::spawn_blocking(move || spool.run_retention()).await {
                    Ok(Ok(r)) if r.freed_bytes > 0 => tracing::info!(
                        freed_bytes = r.freed_bytes,
                        records = r.deleted_records,
                        "event log retention"
                    ),
                    Ok(Err(e)) => tracing::warn!(error = %e, "event log retention failed"),
                    _ => {}
                }
            }
        })
    }

    /// Checks the directory every [`WATCH_EVERY`] and logs each change of the log's
    /// condition (a full disk, writable again, its directory lost).
    pub fn spawn_watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(WATCH_EVERY);
            let mut was = Condition::Writable;
            loop {
                tick.tick().await;
                let spool = me.spool.clone();
                // A stat on a failing card may block: not on a runtime thread.
                let _ = tokio::task::spawn_blocking(move || spool.check_directory()).await;
                let now = me.spool.condition();
                if now != was {
                    log_condition(now, me.spool.refusal());
                    was = now;
                }
            }
        })
    }
}

fn log_condition(now: Condition, why: Option<SpoolError>) {
    let why = why.map(|e| e.to_string()).unwrap_or_default();
    match now {
        Condition::Writable => tracing::info!("event log writable again: publishing resumes"),
        Condition::DiskFull => {
            tracing::warn!(error = %why, "event log: disk full, refusing publishes (503)")
        }
        Condition::IoError | Condition::DirectoryLost => {
            tracing::error!(error = %why, "event log cannot write, refusing publishes (503)")
        }
    }
}

impl EventLogTrait for EventLog {
    fn check_capacity(&self) -> Result<(), AppendError> {
        if let Some(e) = self.spool.refusal() {
            return Err(AppendError::Refused(e));
        }
        let stats = self.spool.stats();
        match self.spool.max_bytes() {
            Some(max_bytes) if stats.total_bytes >= max_bytes => Err(AppendError::Full {
                dir: self.spool.dir().to_owned(),
                used_bytes: stats.total_bytes,
                max_bytes,
            }),
            _ => Ok(()),
        }
    }

    fn recheck(&self, refused: AppendError) -> LogFuture<'_> {
        Box::pin(async move {
            match refused {
                AppendError::Refused(_) => match self.spool.probe().await {
                    Some(e) => Err(AppendError::Refused(e)),
                    None => self.check_capacity(),
                },
                other => Err(other),
            }
        })
    }

    fn status(&self) -> LogStatus {
        match (self.spool.condition(), self.check_capacity()) {
            (_, Ok(())) => LogStatus::Ok,
            (Condition::IoError | Condition::DirectoryLost, Err(e)) => {
                LogStatus::Down(e.to_string())
            }
            (_, Err(e)) => LogStatus::Full(e.to_string()),
        }
    }

    fn append(&self, events: Vec<AcceptedEvent>) -> LogFuture<'_> {
        Box::pin(async move {
            let mut waiting = Vec::new();
            for e in events {
                let record = EventRecord {
                    app: e.app_id,
                    name: e.name,
                    channels: e.channels,
                    data: e.data,
                    socket_id: e.socket_id,
                    delivered: e.delivered,
                    positions: e.positions,
                };
                // Sized for the record up front (the data's escaping included, roughly): a
                // default-sized Vec grew three or four times per event.
                let channels: usize = record.channels.iter().map(|c| c.len() + 3).sum();
                let mut bytes = Vec::with_capacity(
                    80 + record.app.len()
                        + record.name.len()
                        + channels
                        + record.data.len() * 5 / 4
                        + record.socket_id.as_ref().map_or(0, |s| s.len() + 16)
                        + 21 * record.delivered.len()
                        + 21 * record.positions.len(),
                );
                serde_json::to_writer(&mut bytes, &record).map_err(AppendError::Encode)?;
                if self.detached {
                    // durability = "memory": the answer doesn't wait for the write, so the
                    // writer thread batches many publishes per write and nobody is woken per event.
                    match self.spool.append_detached(bytes) {
                        Ok(None) => continue,
                        Ok(Some(back)) => bytes = back,
                        Err(e) => return Err(AppendError::NotQueued(e)),
                    }
                }
                // Queue every record of a batch before waiting: they share one commit.
                waiting.push(self.spool.append(bytes));
            }
            for r in futures_util::future::join_all(waiting).await {
                if let Err(e) = r {
                    tracing::error!(error = %e, "event log append failed");
                    return Err(AppendError::NotDurable(e));
                }
            }
            Ok(())
        })
    }
}
