//! The event log: every event the HTTP API accepts is appended to a spool in
//! `{state_dir}/events` before the API answers (fsync'd with group commit unless
//! `durability = "memory"`), with the channels it went to and how many sockets each reached.
//! Retention by size and age keeps it within an SD card's budget. `pushbox events tail` reads
//! it from another process while the server runs.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::{AcceptedEvent, AppendError, EventLog as EventLogTrait};
use crate::config::{Config, Durability};
use crate::spool::{self, RecoveryReport, Spool, SpoolError, SpoolOptions};

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
}

impl EventLogTrait for EventLog {
    fn check_capacity(&self) -> Result<(), AppendError> {
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

    fn append(
        &self,
        events: Vec<AcceptedEvent>,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<(), AppendError>> + Send + '_>> {
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
                        + 21 * record.delivered.len(),
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
