//! The spool: pushbox's durable, append-only log on local disk.
//!
//! It owns one directory of segment files (byte layout in `format.rs`), and with it:
//! CRC32C per record, group commit (one writer thread, one `write` and one `fdatasync` per
//! batch of concurrent appends), named consumer cursors, recovery on open (a torn or corrupt
//! tail is cut off and reported, never panicked on), retention (segments every cursor has
//! passed, plus optional size and age limits), a disk cap (`max_bytes`, answered with
//! [`SpoolError::Full`]), space reserved ahead of the writer (`reserve_bytes`, so a full disk
//! is known before a record is sent), a [`Condition`] that says whether it takes records now
//! (a full disk, an I/O error, its directory removed) and a `LOCK` file so only one process
//! writes.
//!
//! It does not know what a record means: payloads are opaque bytes. The event log and the
//! webhook job queue are two spools in two directories.
//!
//! A [`SpoolReader`] opens the same directory read-only from another process (`pushbox events
//! tail --follow`, `pushbox queue status`): it takes no lock, changes nothing (it cannot move
//! cursors), and stops quietly at an incomplete record at the tail.

mod cursor;
mod error;
mod floor;
mod format;
mod health;
mod reader;
mod recovery;
mod reserve;
mod retention;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

pub use error::SpoolError;
pub use format::{MAX_RECORD_BYTES, MAX_SEQ};
pub use health::Condition;
pub use reader::SpoolReader;
pub use recovery::{RecoveryReport, SegmentDamage};
pub use retention::RetentionReport;

use format::{RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// After the batch is written and `fdatasync`ed (the default: accepted means durable).
    #[default]
    Fsync,
    /// After the batch is written to the OS; a power cut can lose the last acknowledged records.
    Memory,
}

/// How a spool behaves. `Default` gives 4 MiB segments, fsync, no caps, no size/age retention.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// A segment is closed and a new one started once it reaches this many bytes.
    pub segment_bytes: u64,
    /// Hard cap on the bytes the spool may occupy; appends past it fail with `Full`.
    pub max_bytes: Option<u64>,
    /// When appends are acknowledged.
    pub durability: Durability,
    /// Retention: delete the oldest whole segments while the spool is bigger than this.
    pub retain_bytes: Option<u64>,
    /// Retention: delete whole segments whose newest record is older than this.
    pub retain_age: Option<Duration>,
    /// Keep this much disk space allocated ahead of the writer (0: none). While it cannot be
    /// (the disk is full) the spool's [`Condition`] is `DiskFull` and [`Spool::refusal`] says so
    /// before anything is appended. Capped at a quarter of `segment_bytes`.
    pub reserve_bytes: u64,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            segment_bytes: 4 * 1024 * 1024,
            max_bytes: None,
            durability: Durability::Fsync,
            retain_bytes: None,
            retain_age: None,
            reserve_bytes: 0,
        }
    }
}

/// One record read back from the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Sequence number: starts at 1, +1 per record, never reused for an acknowledged record.
    pub seq: u64,
    /// Unix time in milliseconds when the record was committed.
    pub timestamp_ms: u64,
    /// The bytes that were appended.
    pub payload: Vec<u8>,
}

/// A snapshot of the spool's size and position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes the segment files occupy.
    pub total_bytes: u64,
    /// Number of segment files.
    pub segments: usize,
    /// Seq of the oldest record still on disk (`None` if there are none).
    pub first_seq: Option<u64>,
    /// Seq of the newest committed record (0 if nothing was ever written).
    pub last_seq: u64,
    /// Commit time of the oldest record on disk.
    pub oldest_timestamp_ms: Option<u64>,
    /// Commit time of the newest record on disk.
    pub newest_timestamp_ms: Option<u64>,
    /// Records appended since open.
    pub appends: u64,
    /// Group commits (batch writes) since open.
    pub commits: u64,
    /// `fdatasync` calls on record data since open.
    pub fsyncs: u64,
}

/// Lock a mutex, ignoring poisoning (a panicking holder cannot leave the index half-updated
/// in a way later code relies on).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// In-memory description of one segment file.
#[derive(Debug, Clone)]
pub(crate) struct SegMeta {
    /// Seq in the file name: the first seq the segment holds.
    pub base: u64,
    pub path: PathBuf,
    /// Bytes of valid (committed) data, header included.
    pub len: u64,
    /// Bytes the file occupies (more than `len` for a damaged middle segment).
    pub disk_len: u64,
    /// Valid records: seqs `base .. base + records`.
    pub records: u64,
    pub first_ts: Option<u64>,
    pub newest_ts: Option<u64>,
    /// (seq, offset) of every SPARSE_EVERY-th record.
    pub sparse: Vec<(u64, u64)>,
}

impl SegMeta {
    fn end_seq(&self) -> u64 {
        self.base + self.records
    }
}

#[derive(Debug)]
pub(crate) struct Index {
    pub segs: Vec<SegMeta>,
    pub total_bytes: u64,
    /// Newest committed seq (0 if none).
    pub last_seq: u64,
}

/// State shared by the handles, the writer thread and retention.
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub opts: SpoolOptions,
    /// `u64::MAX` means no cap.
    pub max_bytes: AtomicU64,
    pub index: Mutex<Index>,
    pub cursors: Mutex<BTreeMap<String, u64>>,
    pub committed: watch::Sender<u64>,
    /// The newest seq handed over to the consumer that follows the head ([`Spool::hand_over`]).
    pub handed: watch::Sender<u64>,
    pub appends: AtomicU64,
    pub commits: AtomicU64,
    pub fsyncs: AtomicU64,
    /// The records just written, for a consumer that follows the head (off by default).
    pub recent: Mutex<writer::Recent>,
    /// Whether records are taken now. Detached appends (nobody waits for their answer) are
    /// handed back while it is not writable.
    pub health: health::Health,
    /// Held (flock) for as long as the spool is open.
    pub _lock: File,
    /// Test hook: make the next batch write fail half way with ENOSPC.
    #[cfg(test)]
    pub inject_enospc: std::sync::atomic::AtomicBool,
    /// Test hook: make the next batch's fsync fail with EIO (after the write succeeded).
    #[cfg(test)]
    pub inject_fsync_error: std::sync::atomic::AtomicBool,
}

pub(crate) struct AppendReq {
    pub payload: Vec<u8>,
    pub reply: oneshot::Sender<Result<u64, SpoolError>>,
}

/// What the writer thread is asked to do.
pub(crate) enum Request {
    Append(AppendReq),
    /// Try again to reserve room (the disk may have room again); answer when done.
    Probe(oneshot::Sender<()>),
}

/// How many appends may wait for the writer before `append` itself waits.
const QUEUE_CAPACITY: usize = 4096;

/// A writable spool. Cheap to clone; the writer thread stops and the `LOCK` is released when
/// the last clone is dropped (after the queued appends are committed).
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Spool {
    /// Open (creating if needed) the spool in `dir` for writing, recovering from whatever a
    /// crash left behind. Log the [`RecoveryReport`] if it is not clean.
    pub fn open(
        dir: impl AsRef<Path>,
        options: SpoolOptions,
    ) -> Result<(Spool, RecoveryReport), SpoolError> {
        let dir = dir.as_ref().to_path_buf();
        let rec = recovery::recover(&dir)?;
        let max = options.max_bytes.unwrap_or(u64::MAX);
        let (committed, _) = watch::channel(rec.index.last_seq);
        let (handed, _) = watch::channel(rec.index.last_seq);
        let health = health::Health::new(&dir, &rec.active.path, &rec.active.file)?;
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            opts: options,
            max_bytes: AtomicU64::new(max),
            index: Mutex::new(rec.index),
            cursors: Mutex::new(rec.cursors),
            committed,
            handed,
            appends: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            recent: Mutex::default(),
            health,
            _lock: rec.lock,
            #[cfg(test)]
            inject_enospc: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            inject_fsync_error: std::sync::atomic::AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let w = writer::Writer::new(shared.clone(), rec.active);
        let thread = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|e| SpoolError::io(&dir, "start writer thread", e))?;
        let spool = Spool {
            inner: Arc::new(Inner {
                shared,
                tx: Some(tx),
                thread: Some(thread),
            }),
        };
        Ok((spool, rec.report))
    }

    /// Open `dir` read-only (no lock, no changes); see [`SpoolReader`].
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<SpoolReader, SpoolError> {
        SpoolReader::open(dir)
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }

    fn sender(&self, payload: &[u8]) -> Result<&mpsc::Sender<Request>, SpoolError> {
        if payload.len() > MAX_RECORD_BYTES {
            return Err(SpoolError::RecordTooLarge {
                len: payload.len(),
                max: MAX_RECORD_BYTES,
            });
        }
        self.inner.tx.as_ref().ok_or_else(|| self.closed())
    }

    fn closed(&self) -> SpoolError {
        SpoolError::Closed {
            dir: self.inner.shared.dir.clone(),
        }
    }

    /// Append one record; resolves with its seq once it is committed (fsynced, unless the
    /// durability is `Memory`). Concurrent appends share one write and one fsync.
    pub async fn append(&self, payload: impl Into<Vec<u8>>) -> Result<u64, SpoolError> {
        let payload = payload.into();
        let tx = self.sender(&payload)?;
        let (reply, rx) = oneshot::channel();
        tx.send(Request::Append(AppendReq { payload, reply }))
            .await
            .map_err(|_| self.closed())?;
        rx.await.map_err(|_| self.closed())?
    }

    /// Why the spool refuses records now, if it does (a full disk, an I/O error, its directory
    /// lost): one atomic load while it is writable. Appends made anyway get the same error.
    pub fn refusal(&self) -> Option<SpoolError> {
        self.inner.shared.health.refusal()
    }

    /// What the spool can do now.
    pub fn condition(&self) -> Condition {
        self.inner.shared.health.condition()
    }

    /// After a refusal: asks the writer to try reserving room again (one `fallocate`) and
    /// returns the refusal that still holds, if any. A disk that got room back is writable
    /// from here on.
    pub async fn probe(&self) -> Option<SpoolError> {
        if let Some(tx) = &self.inner.tx {
            let (reply, rx) = oneshot::channel();
            if tx.send(Request::Probe(reply)).await.is_ok() {
                let _ = rx.await;
            }
        }
        self.refusal()
    }

    /// Checks that the spool's directory and the segment being written are still the ones it
    /// opened (two `stat`s). Once they are not, the spool refuses every record for good:
    /// what it wrote since went into files nobody can open again. Call it at a steady cadence.
    pub fn check_directory(&self) -> Result<(), SpoolError> {
        self.inner.shared.health.check_directory()
    }

    /// Queues a record without waiting for its commit: for `Durability::Memory`, where the
    /// caller answers before the data reaches the disk anyway. Gives the payload back when it
    /// could not be queued that way (the queue is full, or the last write failed and the caller
    /// must learn how this one ends): then use [`append`](Self::append).
    pub fn append_detached(&self, payload: Vec<u8>) -> Result<Option<Vec<u8>>, SpoolError> {
        if !self.inner.shared.health.is_writable() {
            return Ok(Some(payload));
        }
        let tx = self.sender(&payload)?;
        let (reply, _) = oneshot::channel();
        match tx.try_send(Request::Append(AppendReq { payload, reply })) {
            Ok(()) => Ok(None),
            Err(mpsc::error::TrySendError::Full(Request::Append(req))) => Ok(Some(req.payload)),
            // Not sent here: only the append above was.
            Err(mpsc::error::TrySendError::Full(Request::Probe(_))) => Ok(None),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(self.closed()),
        }
    }

    /// Blocking [`append`](Self::append) for threads outside a tokio runtime (CLI, tests).
    /// Must not be called from async code (tokio panics if it is).
    pub fn append_blocking(&self, payload: impl Into<Vec<u8>>) -> Result<u64, SpoolError> {
        let payload = payload.into();
        let tx = self.sender(&payload)?;
        let (reply, rx) = oneshot::channel();
        tx.blocking_send(Request::Append(AppendReq { payload, reply }))
            .map_err(|_| self.closed())?;
        rx.blocking_recv().map_err(|_| self.closed())?
    }

    /// Up to `max_records` committed records with seq >= `seq`, in order. If `seq` was retired
    /// (or lost to damage) the result starts at the next record there is; check `Record::seq`.
    /// Blocking file I/O: from async code call it via `spawn_blocking` or accept a short block.
    pub fn read_from(&self, seq: u64, max_records: usize) -> Result<Vec<Record>, SpoolError> {
        let mut out = Vec::new();
        // Plan under the lock: (path, seq at offset, offset, valid len, first seq wanted).
        let plan: Vec<(PathBuf, u64, u64, u64, u64)> = {
            let idx = lock(&self.inner.shared.index);
            let next = seq.max(1);
            let mut budget = max_records as u64;
            let mut plan = Vec::new();
            let i = idx.segs.partition_point(|s| s.end_seq() <= next);
            for s in &idx.segs[i..] {
                if budget == 0 {
                    break;
                }
                if s.records == 0 {
                    continue;
                }
                let from = next.max(s.base);
                let j = s.sparse.partition_point(|(sq, _)| *sq <= from);
                let (cur, off) = if j == 0 {
                    (s.base, SEGMENT_HEADER_LEN)
                } else {
                    s.sparse[j - 1]
                };
                plan.push((s.path.clone(), cur, off, s.len, from));
                budget = budget.saturating_sub(s.end_seq() - from);
            }
            plan
        };
        // Read outside it.
        for (path, cur, off, len, from) in plan {
            let want = max_records - out.len();
            if want == 0 {
                break;
            }
            match read_segment_range(&path, off, len, cur, from, want, &mut out) {
                Ok(_) | Err(ReadErr::Gone) => {}
                Err(ReadErr::Spool(e)) => return Err(e),
            }
        }
        Ok(out)
    }

    /// From now on, hand every record to one consumer that follows the head as soon as it is
    /// written, before its fsync: [`Spool::read_recent`] holds the last 1,024 (at most 4 MiB)
    /// and [`Spool::subscribe_handed`] says when there are more. Such a record may still be
    /// lost (the fsync fails, or power goes first; its appender then never got an `Ok`), but
    /// its seq is never given to another record, across restarts too (the hand-over floor,
    /// `floor.rs`): the consumer may use seqs as identities.
    pub fn hand_over(&self) {
        lock(&self.inner.shared.recent).enable();
    }

    /// Like [`Spool::read_from`] without touching the file, if the records from `seq` on are
    /// among those handed over lately ([`Spool::hand_over`]); `None` otherwise (read the file,
    /// which has only the committed ones).
    pub fn read_recent(&self, seq: u64, max_records: usize) -> Option<Vec<Record>> {
        lock(&self.inner.shared.recent).from(seq, max_records)
    }

    /// Seq of the newest record handed over ([`Spool::hand_over`]); the newest committed one
    /// before any was.
    pub fn last_handed(&self) -> u64 {
        *self.inner.shared.handed.borrow()
    }

    /// A watch of [`Spool::last_handed`].
    pub fn subscribe_handed(&self) -> watch::Receiver<u64> {
        self.inner.shared.handed.subscribe()
    }

    /// Seq of the newest committed record (0 if none).
    pub fn last_seq(&self) -> u64 {
        *self.inner.shared.committed.borrow()
    }

    /// A watch of the newest committed seq, for consumers that wait instead of polling.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.shared.committed.subscribe()
    }

    /// Wait until a record with seq >= `seq` is committed; returns the newest committed seq.
    pub async fn wait_for(&self, seq: u64) -> Result<u64, SpoolError> {
        let mut rx = self.subscribe();
        let v = rx
            .wait_for(|last| *last >= seq)
            .await
            .map_err(|_| self.closed())?;
        Ok(*v)
    }

    /// The position of cursor `name` (the last seq its consumer finished with), registering it
    /// at 0 if it does not exist yet. Registered cursors hold back consumption retention.
    pub fn cursor(&self, name: &str) -> Result<u64, SpoolError> {
        cursor::check_name(name)?;
        let shared = &self.inner.shared;
        let mut cursors = lock(&shared.cursors);
        if let Some(v) = cursors.get(name) {
            return Ok(*v);
        }
        cursor::write(&shared.dir, name, 0)?;
        cursors.insert(name.to_string(), 0);
        Ok(0)
    }

    /// Move cursor `name` forward to `seq` (registering it if needed) and persist it. A seq at
    /// or behind the cursor leaves it where it is. Then retires segments every cursor passed.
    pub fn advance_cursor(&self, name: &str, seq: u64) -> Result<(), SpoolError> {
        cursor::check_name(name)?;
        let shared = &self.inner.shared;
        let last_seq = self.last_seq();
        if seq > last_seq {
            return Err(SpoolError::CursorOutOfRange {
                name: name.to_string(),
                seq,
                last_seq,
            });
        }
        {
            let mut cursors = lock(&shared.cursors);
            if cursors.get(name).is_some_and(|v| *v >= seq) {
                return Ok(());
            }
            cursor::write(&shared.dir, name, seq)?;
            cursors.insert(name.to_string(), seq);
        }
        retention::retire(shared, true).map(|_| ())
    }

    /// Forget cursor `name` and delete its file.
    pub fn remove_cursor(&self, name: &str) -> Result<(), SpoolError> {
        cursor::check_name(name)?;
        let shared = &self.inner.shared;
        let mut cursors = lock(&shared.cursors);
        cursor::remove(&shared.dir, name)?;
        cursors.remove(name);
        Ok(())
    }

    /// All registered cursors and their positions.
    pub fn cursors(&self) -> Vec<(String, u64)> {
        lock(&self.inner.shared.cursors)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Delete whole segments that every cursor has passed, or that the size/age retention
    /// options say are too many or too old. Never deletes the segment being written. The writer
    /// also runs this whenever it starts a new segment and before refusing an append as `Full`;
    /// call it periodically if you use `retain_age`.
    pub fn run_retention(&self) -> Result<RetentionReport, SpoolError> {
        retention::retire(&self.inner.shared, false)
    }

    /// Change the disk cap (`None`: no cap). Takes effect for the next append.
    pub fn set_max_bytes(&self, max_bytes: Option<u64>) {
        self.inner
            .shared
            .max_bytes
            .store(max_bytes.unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// The disk cap in force (`None`: no cap).
    pub fn max_bytes(&self) -> Option<u64> {
        match self.inner.shared.max_bytes.load(Ordering::SeqCst) {
            u64::MAX => None,
            m => Some(m),
        }
    }

    /// Size and position.
    pub fn stats(&self) -> Stats {
        let shared = &self.inner.shared;
        let idx = lock(&shared.index);
        let first = idx.segs.iter().find(|s| s.records > 0);
        Stats {
            total_bytes: idx.total_bytes,
            segments: idx.segs.len(),
            first_seq: first.map(|s| s.base),
            last_seq: idx.last_seq,
            oldest_timestamp_ms: first.and_then(|s| s.first_ts),
            newest_timestamp_ms: idx.segs.iter().rev().find_map(|s| s.newest_ts),
            appends: shared.appends.load(Ordering::Relaxed),
            commits: shared.commits.load(Ordering::Relaxed),
            fsyncs: shared.fsyncs.load(Ordering::Relaxed),
        }
    }

    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }
}

pub(crate) enum ReadErr {
    /// The segment file was deleted (retired) before we opened it.
    Gone,
    Spool(SpoolError),
}

/// Read records of one segment from byte `off` (where record `cur` starts) up to byte `len`,
/// pushing those with seq >= `from` into `out` until it holds `want` more. Every record is
/// re-validated. Returns the seq after the last record read.
fn read_segment_range(
    path: &Path,
    off: u64,
    len: u64,
    mut cur: u64,
    from: u64,
    want: usize,
    out: &mut Vec<Record>,
) -> Result<u64, ReadErr> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ReadErr::Gone),
        Err(e) => return Err(ReadErr::Spool(SpoolError::io(path, "open", e))),
    };
    let io = |e| ReadErr::Spool(SpoolError::io(path, "read", e));
    let mut r = BufReader::with_capacity(64 * 1024, file);
    r.seek(SeekFrom::Start(off)).map_err(io)?;
    let mut pos = off;
    let mut got = 0;
    let mut head = [0u8; RECORD_HEADER_LEN];
    while pos < len && got < want {
        let corrupt = |reason: &str| {
            ReadErr::Spool(SpoolError::Corrupt {
                path: path.to_path_buf(),
                offset: pos,
                reason: reason.to_string(),
            })
        };
        r.read_exact(&mut head).map_err(io)?;
        let h = format::parse_header(&head);
        if h.len > MAX_RECORD_BYTES || pos + format::record_len(h.len) > len {
            return Err(corrupt("record length out of range"));
        }
        let mut payload = vec![0u8; h.len];
        r.read_exact(&mut payload).map_err(io)?;
        if !format::crc_ok(&head, &payload, h.crc) {
            return Err(corrupt("CRC mismatch"));
        }
        if h.seq != cur || h.seq > format::MAX_SEQ {
            return Err(corrupt("unexpected sequence number"));
        }
        pos += format::record_len(h.len);
        cur += 1;
        if h.seq >= from {
            out.push(Record {
                seq: h.seq,
                timestamp_ms: h.timestamp_ms,
                payload,
            });
            got += 1;
        }
    }
    Ok(cur)
}
