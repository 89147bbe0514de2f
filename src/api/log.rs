//! What the API hands on after it accepted an event: the event log (durable, before the
//! answer) and the console's tap (lossy, for display). The log's failures are typed
//! ([`AppendError`]) so the API maps them to its `503` in one place ([`super::ApiError`]).
//! The log also says whether it can take events at all ([`LogStatus`], for `/up`).

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::spool::SpoolError;

/// An accepted event, as handed to the event log.
#[derive(Clone, Debug)]
pub struct AcceptedEvent {
    pub app_id: String,
    pub name: String,
    pub channels: Vec<String>,
    pub data: String,
    pub socket_id: Option<String>,
    /// Sockets reached, per channel (same order as `channels`).
    pub delivered: Vec<usize>,
    /// The event's resume position per channel (same order; assigned at delivery: empty before
    /// it, and when resume is off).
    pub positions: Vec<u64>,
}

/// A boxed future of the event log (the trait is used as `dyn EventLog`).
pub type LogFuture<'a> = Pin<Box<dyn Future<Output = Result<(), AppendError>> + Send + 'a>>;

/// A boxed future of [`EventLog::recheck`].
pub type RoomFuture<'a> = Pin<Box<dyn Future<Output = Result<Room, AppendError>> + Send + 'a>>;

/// Room an event log set aside under its cap for events on their way to it (see
/// [`EventLog::check_capacity`]), so that concurrent publishes cannot each pass the check and
/// together cross the cap after they were delivered. Given back when dropped: once the events
/// are appended (they count in the log's size then), or when the publish ended without them.
#[derive(Debug, Default)]
pub struct Room(Option<(Arc<AtomicU64>, u64)>);

impl Room {
    /// `bytes` added to `pending` now, taken off again when the room is dropped.
    pub fn take(pending: &Arc<AtomicU64>, bytes: u64) -> (Room, u64) {
        let now = pending.fetch_add(bytes, Ordering::SeqCst) + bytes;
        (Room(Some((pending.clone(), bytes))), now)
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        if let Some((pending, bytes)) = self.0.take() {
            pending.fetch_sub(bytes, Ordering::SeqCst);
        }
    }
}

/// Where accepted events go before the API answers (the spool's event log).
pub trait EventLog: Send + Sync {
    /// Refuses `events` up front (they would cross its cap, a full disk, its directory gone)
    /// so nothing is delivered that can't be kept; otherwise sets room aside for them until
    /// the returned [`Room`] is dropped (keep it until they are appended). Called for every
    /// publish (their `delivered` and `positions` are still empty): no I/O while healthy.
    fn check_capacity(&self, events: &[AcceptedEvent]) -> Result<Room, AppendError> {
        let _ = events;
        Ok(Room::default())
    }
    /// After [`check_capacity`](Self::check_capacity) refused `events` with `refused`: looks
    /// once more (a disk may have room again, retention may free some) and says whether they
    /// may be taken now.
    fn recheck<'a>(&'a self, refused: AppendError, events: &'a [AcceptedEvent]) -> RoomFuture<'a> {
        let _ = events;
        Box::pin(std::future::ready(Err(refused)))
    }
    /// Whether the log takes events, for `/up`.
    fn status(&self) -> LogStatus {
        LogStatus::Ok
    }
    /// Records the events; the API answers 200 only after this returns `Ok`.
    fn append(&self, events: Vec<AcceptedEvent>) -> LogFuture<'_>;
}

/// Whether the event log takes events (what `/up` reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogStatus {
    Ok,
    /// Refusing events until it has room again (its cap, a full disk); that needs no restart.
    Full(String),
    /// Refusing events until someone acts (an I/O error, its directory removed).
    Down(String),
}

/// Why the event log did not take an event.
#[derive(Debug)]
pub enum AppendError {
    /// The event would cross the log's cap (`spool.max_bytes`): refused before anything was
    /// published.
    Full {
        /// The event log's directory.
        dir: PathBuf,
        /// Bytes it holds now.
        used_bytes: u64,
        /// The cap.
        max_bytes: u64,
    },
    /// The event could not be encoded as a log record.
    Encode(serde_json::Error),
    /// The log refuses events now (a full disk, an I/O error, its directory removed): said
    /// before anything was delivered.
    Refused(SpoolError),
    /// `durability = "memory"`: the record could not even be queued (the writer is gone).
    NotQueued(SpoolError),
    /// The write or its fsync failed: the disk is full (ENOSPC), the spool's cap was hit
    /// mid-batch, an I/O error, or the writer stopped.
    NotDurable(SpoolError),
}

impl fmt::Display for AppendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppendError::Full {
                dir,
                used_bytes,
                max_bytes,
            } => write!(
                f,
                "The event log is full ({used_bytes} of {max_bytes} bytes in {}): raise spool.max_bytes or lower spool.events_retain_bytes; nothing was published",
                dir.display()
            ),
            AppendError::Refused(e) => write!(
                f,
                "The event log cannot take events: {e}. The event was not stored and not \
                 delivered to anyone: send it again once that is fixed"
            ),
            AppendError::Encode(e) => write!(f, "cannot encode the event for the log: {e}"),
            AppendError::NotQueued(e) => write!(f, "The event was not stored: {e}"),
            AppendError::NotDurable(e) => write!(f, "The event was not stored durably: {e}"),
        }
    }
}

impl std::error::Error for AppendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AppendError::Full { .. } => None,
            AppendError::Encode(e) => Some(e),
            AppendError::Refused(e) | AppendError::NotQueued(e) | AppendError::NotDurable(e) => {
                Some(e)
            }
        }
    }
}

/// A lossy, bounded feed of accepted events with their time (Unix ms) for the console: a
/// `send` never blocks and never fails the publish; a slow reader loses the oldest.
pub type EventTap = tokio::sync::broadcast::Sender<(u64, Arc<AcceptedEvent>)>;
