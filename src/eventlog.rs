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
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::{
    AcceptedEvent, AppendError, EventLog as EventLogTrait, LogFuture, LogStatus, Room, RoomFuture,
};
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
    /// Bytes set aside for events that passed the cap check and are not appended yet
    /// ([`Room`]s alive).
    pending: Arc<AtomicU64>,
    /// `durability = "memory"`: appends are queued without waiting for the write.
    detached: bool,
    /// Resume is on: every record carries its positions (see [`record_bound`]).
    positions: bool,
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
        let log = EventLog {
            spool,
            pending: Arc::new(AtomicU64::new(0)),
            detached,
            // The hub keeps resume state (and the API records positions) on the same switch;
            // a cluster has it off already (`config::validate`).
            positions: config.resume.enabled,
        };
        Ok((Arc::new(log), report))
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

/// The length of `s` as serde_json writes it as a JSON string: quotes, and the escapes of
/// `"`, `\` and control characters.
fn json_str_len(s: &str) -> u64 {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<u64>()
}

/// At most the bytes `e`'s record takes in the spool, before it is delivered (so before its
/// `delivered` counts are known: 20 digits each, the most a `usize` has): the record header,
/// a segment header if it starts a new segment, the JSON's keys and punctuation, the escaped
/// strings. Exact but for those digits; counted in one pass over the strings, no allocation.
///
/// `positions`: resume is on, so the record will carry `,"positions":[…]`, one per channel,
/// assigned at delivery (after this check): counted at 20 digits each, the most a `u64` has.
pub fn record_bound(e: &AcceptedEvent, positions: bool) -> u64 {
    const RECORD_HEADER: u64 = 24;
    const SEGMENT_HEADER: u64 = 8;
    // {"app":,"name":,"channels":[],"data":,"socket_id":,"delivered":[]}
    const KEYS: u64 = 66;
    let channels: u64 = e.channels.iter().map(|c| json_str_len(c) + 1).sum();
    RECORD_HEADER
        + SEGMENT_HEADER
        + KEYS
        + json_str_len(&e.app_id)
        + json_str_len(&e.name)
        + channels
        + json_str_len(&e.data)
        + e.socket_id.as_deref().map_or(0, json_str_len)
        + 21 * e.channels.len() as u64
        // ,"positions":[…] when resume is on: up to 20 digits and a comma each.
        + if positions { 15 + 21 * e.channels.len() as u64 } else { 0 }
}

impl EventLog {
    /// Refuses while the spool refuses anything, and when `needed` more bytes, on top of what
    /// it holds and what other publishes set aside, would cross `spool.max_bytes` (the spool's
    /// writer would refuse them after they were delivered); otherwise sets `needed` aside.
    fn reserve(&self, needed: u64) -> Result<Room, AppendError> {
        if let Some(e) = self.spool.refusal() {
            return Err(AppendError::Refused(e));
        }
        let Some(max_bytes) = self.spool.max_bytes() else {
            return Ok(Room::default());
        };
        let (room, pending) = Room::take(&self.pending, needed);
        let used_bytes = self.spool.stats().total_bytes;
        if used_bytes >= max_bytes || used_bytes.saturating_add(pending) > max_bytes {
            return Err(AppendError::Full {
                dir: self.spool.dir().to_owned(),
                used_bytes,
                max_bytes,
            });
        }
        Ok(room)
    }
}

impl EventLogTrait for EventLog {
    fn check_capacity(&self, events: &[AcceptedEvent]) -> Result<Room, AppendError> {
        let bound = |e| record_bound(e, self.positions);
        self.reserve(events.iter().map(bound).sum())
    }

    fn recheck<'a>(&'a self, refused: AppendError, events: &'a [AcceptedEvent]) -> RoomFuture<'a> {
        Box::pin(async move {
            match refused {
                AppendError::Refused(_) => match self.spool.probe().await {
                    Some(e) => Err(AppendError::Refused(e)),
                    None => self.check_capacity(events),
                },
                AppendError::Full { .. } if self.spool.stats().segments > 1 => {
                    // Size or age retention may free whole old segments (the writer would try
                    // that too before refusing): once, off the runtime's threads.
                    let spool = self.spool.clone();
                    let _ = tokio::task::spawn_blocking(move || spool.run_retention()).await;
                    self.check_capacity(events)
                }
                other => Err(other),
            }
        })
    }

    fn status(&self) -> LogStatus {
        if let Some(e) = self.spool.refusal() {
            let why = AppendError::Refused(e).to_string();
            return match self.spool.condition() {
                Condition::IoError | Condition::DirectoryLost => LogStatus::Down(why),
                Condition::Writable | Condition::DiskFull => LogStatus::Full(why),
            };
        }
        let used_bytes = self.spool.stats().total_bytes;
        match self.spool.max_bytes() {
            Some(max_bytes) if used_bytes >= max_bytes => LogStatus::Full(
                AppendError::Full {
                    dir: self.spool.dir().to_owned(),
                    used_bytes,
                    max_bytes,
                }
                .to_string(),
            ),
            _ => LogStatus::Ok,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_bound_covers_the_record_and_little_more() {
        for (data, socket_id, channels) in [
            ("", None, vec!["a"]),
            ("plain text", Some("1.2"), vec!["orders", "presence-x"]),
            (
                "quotes \" back\\slash \n\t\u{1}\u{1f} é 😀",
                None,
                vec!["c"; 7],
            ),
        ] {
            let e = AcceptedEvent {
                app_id: "145840".into(),
                name: "order \"shipped\"".into(),
                channels: channels.iter().map(|c| (*c).to_owned()).collect(),
                data: data.into(),
                socket_id: socket_id.map(str::to_owned),
                delivered: vec![usize::MAX; channels.len()],
                // Not assigned yet when the bound is taken.
                positions: Vec::new(),
            };
            // Resume on in one case of two.
            let resume = socket_id.is_some();
            let record = EventRecord {
                app: e.app_id.clone(),
                name: e.name.clone(),
                channels: e.channels.clone(),
                data: e.data.clone(),
                socket_id: e.socket_id.clone(),
                delivered: e.delivered.clone(),
                positions: if resume {
                    vec![u64::MAX; channels.len()]
                } else {
                    Vec::new()
                },
            };
            // The largest record this event can make (every count at usize::MAX digits).
            let most = serde_json::to_vec(&record).unwrap().len() as u64 + 24;
            let bound = record_bound(&e, resume);
            assert!(bound >= most, "{bound} < {most} for {data:?}");
            // Slack: a segment header, two commas, an absent socket_id's key.
            assert!(bound <= most + 8 + 2 + 13, "{bound} ≫ {most}");
        }
    }
}
