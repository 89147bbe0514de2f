//! The writer thread: group commit. It takes every append that is queued, frames them into
//! one buffer, writes it with one `pwrite` at the end of the active segment, calls
//! `fdatasync` once (in `Fsync` durability), publishes the new records to readers and only
//! then answers each waiter. A batch never spans two segments.
//!
//! If the write or the sync fails (ENOSPC, EIO), the segment is cut back to the last committed
//! offset, every waiter of that batch gets the error, and the seqs are reused: nothing that
//! was not acknowledged is left behind, and the spool carries on with the next batch.
//!
//! With `reserve_bytes`, after each commit it keeps at least half a chunk of disk allocated
//! past the end of the segment (`reserve.rs`), starting the next segment early when this one
//! has less than that left. A reservation that fails marks the spool `DiskFull` while the
//! records already on their way still land in the half chunk left, so callers that ask
//! [`Spool::refusal`](super::Spool::refusal) first refuse *before* they act on a record.
//! A probe retries the reservation; the first one that succeeds makes the spool writable.
//!
//! With `Durability::Memory` it lingers before a write only under load (the previous batch
//! was less than [`MEMORY_LINGER`] ago): an isolated append is written at once.
//!
//! When a consumer asked for it ([`Spool::hand_over`](super::Spool::hand_over), the cluster's
//! forwarder), it hands each batch to that consumer as soon as it is written, before its
//! `fdatasync` ([`Recent`]): the consumer no longer waits for the disk, as the single box's
//! delivery does not. A record handed over may still be lost (the fsync fails, or power goes
//! first), so its seq must never be given again: the writer keeps the hand-over floor on disk
//! above every seq it hands over (`floor.rs`), and a batch that fails after it was handed over
//! gives up its seqs (the next batch starts a new segment past them) instead of reusing them.

use std::collections::VecDeque;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::error::SpoolError;
use super::floor;
use super::format::{self, SEGMENT_HEADER_LEN, SPARSE_EVERY};
use super::recovery::{self, Active};
use super::reserve::{self, Reserved};
use super::{lock, now_ms, retention, AppendReq, Durability, Record, Request, SegMeta, Shared};

/// At most this many appends or bytes go into one batch.
const MAX_BATCH_RECORDS: usize = 4096;
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// With `Durability::Memory`, how long the writer gathers appends before writing them, when
/// the previous batch was written less than this long ago (under load). Measured
/// (BENCHMARKS.md, cluster): a fixed 2 ms linger before every write made the cluster bus add
/// ~2.4 ms p50 to every event, because the forwarder sends only committed records; lingering
/// only under load keeps the batching (API publish rate unchanged) and an isolated event waits
/// for nothing.
const MEMORY_LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// [`Recent`] holds at most this many records and payload bytes: a consumer that follows the
/// head reads from it; one further behind reads the file.
const RECENT_RECORDS: usize = 1024;
const RECENT_BYTES: usize = 4 * 1024 * 1024;

/// The records handed over last, newest at the back, for a consumer that follows the head
/// (the cluster forwarder): it gets them as soon as they are written instead of reading them
/// back from the segment after the commit (a blocking-pool hop and a `pread` per round, after
/// the fsync). Off until a consumer asks. Seqs rise but may jump: a batch that failed after it
/// was handed over stays here, and the next one starts past it.
#[derive(Default)]
pub(crate) struct Recent {
    on: bool,
    records: VecDeque<Record>,
    bytes: usize,
}

impl Recent {
    pub(crate) fn enable(&mut self) {
        self.on = true;
    }

    /// Up to `max` records from `seq` on, if this holds what comes from `seq` (`None`: read
    /// the file).
    pub(crate) fn from(&self, seq: u64, max: usize) -> Option<Vec<Record>> {
        let first = self.records.front()?.seq;
        if seq < first || seq > self.records.back()?.seq {
            return None;
        }
        let skip = self.records.partition_point(|r| r.seq < seq);
        Some(self.records.iter().skip(skip).take(max).cloned().collect())
    }

    /// Adds a batch just written. What goes to make room is older than the batch only: a
    /// batch may be larger than the caps, and a record the consumer cannot find here must be
    /// committed (in the file) or given up, never still waiting for its fsync.
    fn push_batch(&mut self, batch: impl IntoIterator<Item = Record>) {
        let mut first = None;
        for r in batch {
            first.get_or_insert(r.seq);
            self.bytes += r.payload.len();
            self.records.push_back(r);
        }
        let Some(first) = first else { return };
        while self.records.len() > RECENT_RECORDS || self.bytes > RECENT_BYTES {
            match self.records.front().filter(|r| r.seq < first) {
                Some(_) => {
                    if let Some(old) = self.records.pop_front() {
                        self.bytes -= old.payload.len();
                    }
                }
                None => break,
            }
        }
    }
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    active: Active,
    next_seq: u64,
    /// The reservation chunk (0: none): `reserve_bytes`, at most a quarter of a segment so
    /// that starting a segment early wastes little of the one before.
    chunk: u64,
    /// When the last batch was written: lingering is for a writer under load.
    last_commit: Option<Instant>,
    /// The hand-over floor this run saved (`floor.rs`; 0: none yet): every seq below it may
    /// be handed over.
    floor: u64,
    /// A batch failed after it was handed over and gave up its seqs: the next record starts a
    /// new segment (seqs within one segment have no gaps).
    gap: bool,
}

struct Batch {
    buf: Vec<u8>,
    replies: Vec<(u64, oneshot::Sender<Result<u64, SpoolError>>)>,
    /// Offset of each record in `buf`.
    offsets: Vec<u64>,
    /// The payloads, kept for [`Recent`] when it is on (`keep`; else empty).
    payloads: Vec<Vec<u8>>,
    keep: bool,
    first_ts: u64,
    /// Retention already tried during this batch (before answering Full).
    retried: bool,
}

impl Writer {
    pub(crate) fn new(shared: Arc<Shared>, active: Active) -> Self {
        let next_seq = active.base + active.records;
        let chunk = shared.opts.reserve_bytes.min(shared.opts.segment_bytes / 4);
        Writer {
            shared,
            active,
            next_seq,
            chunk,
            last_commit: None,
            floor: 0,
            gap: false,
        }
    }

    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        // Room for the first records (and `DiskFull` from the start on a full disk).
        self.refresh();
        let mut pending: Option<AppendReq> = None;
        let mut probes = Vec::new();
        loop {
            let first = match pending.take() {
                Some(r) => r,
                None => match rx.blocking_recv() {
                    Some(Request::Probe(reply)) => {
                        self.probe();
                        let _ = reply.send(());
                        continue;
                    }
                    Some(Request::Append(r)) => {
                        if self.under_load() {
                            // Nobody waits for a Memory commit: let appends pile up for a
                            // moment so one write carries many, and senders meanwhile find no
                            // sleeping writer to wake.
                            std::thread::sleep(MEMORY_LINGER);
                        }
                        r
                    }
                    None => break,
                },
            };
            let mut batch = Batch {
                buf: Vec::new(),
                replies: Vec::new(),
                offsets: Vec::new(),
                payloads: Vec::new(),
                keep: lock(&self.shared.recent).on,
                first_ts: now_ms(),
                retried: false,
            };
            pending = self.consider(first, &mut batch);
            while pending.is_none()
                && batch.replies.len() < MAX_BATCH_RECORDS
                && batch.buf.len() < MAX_BATCH_BYTES
            {
                match rx.try_recv() {
                    Ok(Request::Append(r)) => pending = self.consider(r, &mut batch),
                    Ok(Request::Probe(reply)) => probes.push(reply),
                    Err(_) => break,
                }
            }
            self.commit(batch);
            if !probes.is_empty() {
                self.probe();
                for reply in probes.drain(..) {
                    let _ = reply.send(());
                }
            }
        }
        // Shutting down: make Memory-durability records durable too. Then every seq handed
        // over is on disk, and the next run can go on from the next one without a gap.
        if self.active.file.sync_data().is_ok() && self.floor > self.next_seq {
            let _ = floor::write(&self.shared.dir, self.next_seq);
        }
    }

    /// `Durability::Memory` and the previous batch was written less than [`MEMORY_LINGER`]
    /// ago: appends are coming in faster than one a linger, so gathering them pays.
    fn under_load(&self) -> bool {
        self.shared.opts.durability == Durability::Memory
            && self
                .last_commit
                .is_some_and(|t| t.elapsed() < MEMORY_LINGER)
    }

    /// Add `req` to the batch, answer it with an error, or hand it back for the next batch.
    fn consider(&mut self, req: AppendReq, batch: &mut Batch) -> Option<AppendReq> {
        if let Some(e) = self.shared.health.lost() {
            // Its directory is gone: whatever is written now is lost with it.
            let _ = req.reply.send(Err(e));
            return None;
        }
        if self.gap && batch.replies.is_empty() {
            if let Err(e) = self.past_gap() {
                let _ = req.reply.send(Err(e));
                return None;
            }
        }
        let Some(seq) = (self.next_seq)
            .checked_add(batch.replies.len() as u64)
            .filter(|&seq| seq <= format::MAX_SEQ)
        else {
            let _ = req.reply.send(Err(SpoolError::SeqExhausted {
                dir: self.shared.dir.clone(),
            }));
            return None;
        };
        let rec_len = format::record_len(req.payload.len());
        let seg_limit = self.shared.opts.segment_bytes;
        let in_batch = batch.buf.len() as u64;
        let mut roll = false;
        if self.active.len + in_batch + rec_len > seg_limit {
            if !batch.replies.is_empty() {
                return Some(req); // starts the next batch, in a new segment
            }
            roll = self.active.records > 0;
        }
        // The disk cap (checked before rolling, so a refused record leaves no new segment).
        let needed = rec_len + if roll { SEGMENT_HEADER_LEN } else { 0 };
        let max = self.shared.max_bytes.load(Ordering::SeqCst);
        let over = |w: &Self| {
            let used = lock(&w.shared.index).total_bytes + in_batch;
            (used.saturating_add(needed) > max).then_some(used)
        };
        let mut used = over(self);
        if used.is_some() && !batch.retried {
            batch.retried = true;
            let _ = retention::retire(&self.shared, false);
            used = over(self);
        }
        if let Some(used_bytes) = used {
            let _ = req.reply.send(Err(SpoolError::Full {
                dir: self.shared.dir.clone(),
                max_bytes: max,
                used_bytes,
                needed_bytes: needed,
            }));
            return None;
        }
        if roll {
            if let Err(e) = self.roll() {
                let _ = req.reply.send(Err(e));
                return None;
            }
        }
        batch.offsets.push(batch.buf.len() as u64);
        format::encode_record(&mut batch.buf, seq, batch.first_ts, &req.payload);
        batch.replies.push((seq, req.reply));
        if batch.keep {
            batch.payloads.push(req.payload);
        }
        None
    }

    fn write(&self, buf: &[u8]) -> io::Result<()> {
        #[cfg(test)]
        if self.shared.inject_enospc.swap(false, Ordering::SeqCst) {
            self.active
                .file
                .write_all_at(&buf[..buf.len() / 2], self.active.len)?;
            return Err(io::Error::from_raw_os_error(28));
        }
        self.active.file.write_all_at(buf, self.active.len)
    }

    fn sync(&self) -> io::Result<()> {
        #[cfg(test)]
        if self.shared.inject_fsync_error.swap(false, Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5));
        }
        self.active.file.sync_data()
    }

    fn commit(&mut self, mut batch: Batch) {
        if batch.replies.is_empty() {
            return;
        }
        self.last_commit = Some(Instant::now());
        let path = self.active.path.clone();
        let mut result = self
            .write(&batch.buf)
            .map_err(|e| SpoolError::io(&path, "write", e));
        let mut handed = false;
        if result.is_ok() && batch.keep {
            result = self.hand_over(&mut batch);
            handed = result.is_ok();
        }
        if result.is_ok() && self.shared.opts.durability == Durability::Fsync {
            self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
            result = self.sync().map_err(|e| SpoolError::io(&path, "fsync", e));
        }
        if let Err(e) = result {
            self.shared.health.failed(&e);
            // Cut back whatever part of the batch reached the file. The seqs are reused, unless
            // the batch was handed over: then the consumer used them already.
            // Shortening the file may free the blocks reserved past its end too.
            let _ = self.active.file.set_len(self.active.len);
            self.active.reserved = self.active.len;
            if handed {
                self.next_seq += batch.replies.len() as u64;
                self.gap = true;
            }
            for (_, reply) in batch.replies {
                let _ = reply.send(Err(e.duplicate()));
            }
            return;
        }
        let n = batch.replies.len() as u64;
        let first_seq = self.next_seq;
        let start_off = self.active.len;
        {
            let mut idx = lock(&self.shared.index);
            let bytes = batch.buf.len() as u64;
            idx.total_bytes += bytes;
            idx.last_seq = first_seq + n - 1;
            if let Some(seg) = idx.segs.last_mut().filter(|s| s.base == self.active.base) {
                // Sparse index entries for the new records.
                for (i, ((seq, _), off)) in batch.replies.iter().zip(&batch.offsets).enumerate() {
                    if (seg.records + i as u64).is_multiple_of(SPARSE_EVERY) {
                        seg.sparse.push((*seq, start_off + off));
                    }
                }
                seg.len += bytes;
                seg.disk_len += bytes;
                seg.records += n;
                seg.first_ts.get_or_insert(batch.first_ts);
                seg.newest_ts = Some(
                    seg.newest_ts
                        .map_or(batch.first_ts, |t| t.max(batch.first_ts)),
                );
            }
        }
        self.active.len += batch.buf.len() as u64;
        self.active.records += n;
        self.next_seq += n;
        self.shared.appends.fetch_add(n, Ordering::Relaxed);
        self.shared.commits.fetch_add(1, Ordering::Relaxed);
        self.shared.committed.send_replace(self.next_seq - 1);
        if self.chunk == 0 {
            // Cleared before anyone hears of the success, so a caller who saw it may detach
            // again. (With a reservation, `refresh` below decides.)
            self.shared.health.succeeded();
        }
        for (seq, reply) in batch.replies {
            let _ = reply.send(Ok(seq));
        }
        // After the answers: the waiters don't wait for the next chunk's reservation.
        self.refresh();
    }

    /// Hands the written batch to the consumer that follows the head, once the floor on disk
    /// is above its seqs (an `Err` hands nothing over: the batch fails as a failed write).
    fn hand_over(&mut self, batch: &mut Batch) -> Result<(), SpoolError> {
        let n = batch.replies.len() as u64;
        let last = self.next_seq + n - 1;
        if last >= self.floor {
            // One durable write per STEP seqs, not per batch (measured: a rename and two fsyncs,
            // ~2 ms here, once per million records).
            let to = last.saturating_add(1).saturating_add(floor::STEP);
            floor::write(&self.shared.dir, to)?;
            self.floor = to;
        }
        let (first, ts) = (self.next_seq, batch.first_ts);
        let records = std::mem::take(&mut batch.payloads)
            .into_iter()
            .zip(first..)
            .map(|(payload, seq)| Record {
                seq,
                timestamp_ms: ts,
                payload,
            });
        lock(&self.shared.recent).push_batch(records);
        self.shared.handed.send_replace(last);
        Ok(())
    }

    /// Starts a new segment at `next_seq`, past the seqs a failed batch gave up: a segment's
    /// seqs have no gaps. An empty active segment (it began at the seqs given up) goes.
    fn past_gap(&mut self) -> Result<(), SpoolError> {
        let empty = (self.active.records == 0).then(|| self.active.path.clone());
        self.roll()?;
        if let Some(path) = empty {
            let mut idx = lock(&self.shared.index);
            if let Some(i) = idx.segs.iter().position(|s| s.path == path) {
                let gone = idx.segs.remove(i);
                idx.total_bytes = idx.total_bytes.saturating_sub(gone.disk_len);
            }
            drop(idx);
            let _ = std::fs::remove_file(&path);
        }
        self.gap = false;
        Ok(())
    }

    /// Keeps room reserved ahead and says in the spool's health whether it could.
    fn refresh(&mut self) {
        if self.chunk == 0 {
            return;
        }
        match self.keep_room() {
            Ok(()) => self.shared.health.succeeded(),
            Err(e) => self.shared.health.failed(&e),
        }
    }

    /// Someone was refused: try the reservation again (a real `fallocate`, so that a disk with
    /// room again, or remounted read-write, is noticed).
    fn probe(&mut self) {
        if self.chunk == 0 || self.shared.health.is_writable() {
            return;
        }
        self.active.reserved = self.active.len;
        self.refresh();
    }

    /// At least half a chunk allocated past the end of the active segment: reserve another
    /// chunk when less is left, or start the next segment (reserved as it is created) when
    /// this one has no room for half a chunk more. One syscall per half chunk of records.
    fn keep_room(&mut self) -> Result<(), SpoolError> {
        let (len, half) = (self.active.len, self.chunk / 2);
        if self.active.reserved.saturating_sub(len) >= half {
            return Ok(());
        }
        let limit = self.shared.opts.segment_bytes;
        if limit.saturating_sub(len) < half && self.active.records > 0 {
            return self.roll();
        }
        let to = (len + self.chunk).min(limit.max(len + half));
        let a = &mut self.active;
        a.reserved = match reserve::reserve(&a.file, &a.path, len, to)? {
            Reserved::Done => to,
            // Nothing to keep: the spool learns of a full disk from a failed write instead.
            Reserved::Unsupported => u64::MAX,
        };
        Ok(())
    }

    /// Close the active segment and start a new one at `next_seq`; then run retention.
    fn roll(&mut self) -> Result<(), SpoolError> {
        // Never into a directory that replaced ours (or a removed one): checked once a segment.
        self.shared.health.check_directory()?;
        let (file, path, reserved) =
            recovery::create_segment(&self.shared.dir, self.next_seq, self.chunk)?;
        self.shared.health.rolled(&path, &file);
        {
            let mut idx = lock(&self.shared.index);
            idx.total_bytes += SEGMENT_HEADER_LEN;
            idx.segs.push(SegMeta {
                base: self.next_seq,
                path: path.clone(),
                len: SEGMENT_HEADER_LEN,
                disk_len: SEGMENT_HEADER_LEN,
                records: 0,
                first_ts: None,
                newest_ts: None,
                sparse: Vec::new(),
            });
        }
        let old = std::mem::replace(
            &mut self.active,
            Active {
                file,
                path,
                base: self.next_seq,
                len: SEGMENT_HEADER_LEN,
                records: 0,
                reserved: match reserved {
                    Reserved::Done => self.chunk.max(SEGMENT_HEADER_LEN),
                    Reserved::Unsupported => u64::MAX,
                },
            },
        );
        if self.shared.opts.durability == Durability::Memory {
            let _ = old.file.sync_data();
        }
        let _ = retention::retire(&self.shared, false);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(seqs: std::ops::Range<u64>) -> Vec<Record> {
        seqs.map(|seq| Record {
            seq,
            timestamp_ms: 0,
            payload: vec![b'x'; 10],
        })
        .collect()
    }

    #[test]
    fn a_batch_larger_than_the_caps_is_kept_whole_until_the_next_one() {
        let mut r = Recent::default();
        r.enable();
        // Larger than RECENT_RECORDS: none of it may go before it is committed.
        r.push_batch(records(1..3001));
        assert_eq!(r.records.len(), 3000);
        assert_eq!(r.from(1, 1).map(|v| v[0].seq), Some(1));
        // The next batch makes room from the older ones only.
        r.push_batch(records(3001..3011));
        assert_eq!(r.records.len(), RECENT_RECORDS);
        assert_eq!(r.from(3001, 100).map(|v| v.len()), Some(10));
        assert_eq!(r.from(1, 1), None, "older ones are read from the file");
    }
}
