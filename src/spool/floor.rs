//! The hand-over floor: a seq below which records may have left this process before they were
//! durable, so that no later record ever takes one of those seqs.
//!
//! A consumer that follows the head ([`Spool::hand_over`](super::Spool::hand_over), the
//! cluster's forwarder) gets each record as soon as it is written, while its `fdatasync` is
//! still running: the cluster's bus then no longer waits for the disk (measured: the fsync was
//! +0.5–0.7 ms of the bus's p99). Such a record can be lost after it left: the fsync fails, or
//! power goes before the data reached the disk. Its seq must then never be reused, because the
//! consumer already used it as an identity (the bus skips a seq it has seen from this node).
//!
//! So before a record leaves, the writer makes sure this file says a seq above it
//! ([`STEP`] at a time: one small durable write per million records), and recovery never
//! starts below it. A clean shutdown, with everything synced, sets it back to the next seq, so
//! only a crash (or a failed fsync) leaves a gap in the seqs. One text line, as a cursor:
//! `<seq> <crc32c>`, written atomically (temp file, fsync, rename, directory fsync).

use std::fs;
use std::path::{Path, PathBuf};

use super::cursor;
use super::error::SpoolError;

/// The file's name in the spool directory.
pub(crate) const FILE: &str = "HANDED";
/// Its temp file while it is being replaced (removed by recovery).
pub(crate) const TEMP_FILE: &str = "HANDED.tmp";

/// How far ahead of the records handed over the floor is moved each time.
pub(crate) const STEP: u64 = 1 << 20;

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The floor saved in `dir`: the first seq no record handed over can have. `Ok(None)` when there
/// is none (never handed over); an unreadable file is an error, since guessing low would reuse
/// seqs that left (the operator can delete it knowingly: see the error's message).
pub(crate) fn read(dir: &Path) -> Result<Option<u64>, SpoolError> {
    let path = path(dir);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SpoolError::io(&path, "read", e)),
    };
    // A bare number is taken too: it is what the error message asks an operator to write.
    let bare = || std::str::from_utf8(&bytes).ok()?.trim().parse::<u64>().ok();
    match cursor::decode(&bytes) {
        Ok(seq) => Ok(Some(seq)),
        Err(why) => bare().map(Some).ok_or_else(|| SpoolError::BadFloor {
            path,
            reason: why.to_string(),
        }),
    }
}

/// Durably replace the floor with `seq`.
pub(crate) fn write(dir: &Path, seq: u64) -> Result<(), SpoolError> {
    cursor::write_file(dir, FILE, seq)
}
