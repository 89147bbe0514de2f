//! Room reserved on disk ahead of the writer, so that a full disk shows up *before* an event is
//! delivered rather than in the write after it: `fallocate(FALLOC_FL_KEEP_SIZE)` allocates the
//! blocks past the end of the segment without changing its length (recovery and readers still
//! see only the records), and a later write into them cannot fail with ENOSPC.
//!
//! One call reserves a whole chunk (the event log's is 256 KiB), so the cost is one syscall per
//! chunk of records, not per record. A filesystem without `fallocate` (EOPNOTSUPP) is told
//! apart: the spool then works as before and learns of a full disk from a failed write.

use std::fs::File;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{fallocate, FallocateFlags};

use super::error::SpoolError;

/// What a reservation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reserved {
    /// The bytes `from..to` of the file are allocated.
    Done,
    /// The filesystem does not support it; nothing was reserved.
    Unsupported,
}

/// Allocates bytes `from..to` of `file` (at `path`) without changing its length.
pub(crate) fn reserve(
    file: &File,
    path: &Path,
    from: u64,
    to: u64,
) -> Result<Reserved, SpoolError> {
    if to <= from {
        return Ok(Reserved::Done);
    }
    let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else {
        return Ok(Reserved::Unsupported);
    };
    match fallocate(file, FallocateFlags::FALLOC_FL_KEEP_SIZE, offset, len) {
        Ok(()) => Ok(Reserved::Done),
        Err(Errno::EOPNOTSUPP | Errno::ENOSYS) => Ok(Reserved::Unsupported),
        Err(e) => Err(SpoolError::io(path, "reserve space", e.into())),
    }
}
