//! Retention: deleting whole segments from the front of the spool once they are no longer
//! needed: every registered cursor has passed them, or (optionally) the spool is over
//! `retain_bytes`, or their newest record is older than `retain_age`. The segment being
//! written is never deleted.

use std::fs;
use std::path::PathBuf;

use super::cursor;
use super::error::SpoolError;
use super::{lock, now_ms, Shared};

/// What a retention pass deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// The segment files deleted.
    pub deleted_segments: Vec<PathBuf>,
    /// Bytes freed.
    pub freed_bytes: u64,
    /// Records deleted.
    pub deleted_records: u64,
}

/// Run a retention pass. With `consumed_only`, only the cursor rule applies (cheap to call
/// after every cursor move).
pub(crate) fn retire(shared: &Shared, consumed_only: bool) -> Result<RetentionReport, SpoolError> {
    let min_cursor = lock(&shared.cursors).values().min().copied();
    let max_age_ms = shared.opts.retain_age.map(|d| d.as_millis() as u64);
    let retain_bytes = shared.opts.retain_bytes;
    let size_or_age = !consumed_only && (max_age_ms.is_some() || retain_bytes.is_some());
    if min_cursor.is_none() && !size_or_age {
        return Ok(RetentionReport::default());
    }
    let now = now_ms();
    let mut report = RetentionReport::default();
    {
        let mut idx = lock(&shared.index);
        while idx.segs.len() > 1 {
            let (s, next) = (&idx.segs[0], &idx.segs[1]);
            // Segment 0 holds seqs below next.base.
            let consumed = min_cursor.is_some_and(|c| c.saturating_add(1) >= next.base);
            let too_big = !consumed_only && retain_bytes.is_some_and(|m| idx.total_bytes > m);
            let too_old = !consumed_only
                && max_age_ms
                    .is_some_and(|age| s.newest_ts.is_none_or(|t| now.saturating_sub(t) > age));
            if !(consumed || too_big || too_old) {
                break;
            }
            let s = idx.segs.remove(0);
            idx.total_bytes = idx.total_bytes.saturating_sub(s.disk_len);
            report.freed_bytes += s.disk_len;
            report.deleted_records += s.records;
            report.deleted_segments.push(s.path);
        }
    }
    if report.deleted_segments.is_empty() {
        return Ok(report);
    }
    let mut first_err = None;
    for path in &report.deleted_segments {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                first_err.get_or_insert(SpoolError::io(path, "delete segment", e));
            }
        }
    }
    cursor::sync_dir(&shared.dir)?;
    match first_err {
        Some(e) => Err(e),
        None => Ok(report),
    }
}
