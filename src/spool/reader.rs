//! `SpoolReader`: read a spool from another process while a server appends to it
//! (`pushbox events tail --follow`, `pushbox queue status`).
//!
//! It takes no lock and never writes: no recovery, no truncation, no cursor moves (a cursor
//! belongs to the process that owns the spool; a CLI that wants to move one must stop the
//! server or ask it). At the tail of a segment it stops quietly at the first incomplete or
//! invalid record: that is usually a write in progress. There is no cross-process wake-up;
//! a follower polls [`read_from`](SpoolReader::read_from). It may briefly see records the
//! writer has written but not yet fsynced.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::cursor;
use super::error::SpoolError;
use super::format::{self, Decoded, SEGMENT_HEADER_LEN, SEGMENT_MAGIC};
use super::{lock, Record, Stats};

/// A read-only view of a spool directory.
pub struct SpoolReader {
    dir: PathBuf,
    /// Where the last read stopped: (segment base, seq, offset), so a follower does not
    /// rescan the segment on every poll.
    hint: Mutex<Option<(u64, u64, u64)>>,
}

enum Bytes {
    Gone,
    Data(Vec<u8>),
}

fn read_file_from(path: &Path, offset: u64) -> Result<Bytes, SpoolError> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Bytes::Gone),
        Err(e) => return Err(SpoolError::io(path, "open", e)),
    };
    let mut data = Vec::new();
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.read_to_end(&mut data))
        .map_err(|e| SpoolError::io(path, "read", e))?;
    Ok(Bytes::Data(data))
}

impl SpoolReader {
    /// Open the spool in `dir` read-only. The directory must exist.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, SpoolError> {
        let dir = dir.as_ref().to_path_buf();
        match fs::metadata(&dir) {
            Ok(m) if m.is_dir() => Ok(SpoolReader {
                dir,
                hint: Mutex::new(None),
            }),
            Ok(_) => Err(SpoolError::NotADirectory { dir }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(SpoolError::NotFound { dir }),
            Err(e) => Err(SpoolError::io(&dir, "stat", e)),
        }
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn segments(&self) -> Result<Vec<(u64, PathBuf)>, SpoolError> {
        let mut segs = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(|e| SpoolError::io(&self.dir, "list", e))?;
        for entry in entries.flatten() {
            if let Some(base) = entry
                .file_name()
                .to_str()
                .and_then(format::parse_segment_name)
            {
                segs.push((base, entry.path()));
            }
        }
        segs.sort();
        Ok(segs)
    }

    /// Up to `max_records` valid records with seq >= `seq`, in order (see `Spool::read_from`).
    pub fn read_from(&self, seq: u64, max_records: usize) -> Result<Vec<Record>, SpoolError> {
        let mut out = Vec::new();
        let next = seq.max(1);
        let segs = self.segments()?;
        let i = segs.partition_point(|(b, _)| *b <= next).saturating_sub(1);
        for (k, (base, path)) in segs.iter().enumerate().skip(i) {
            // Records at or past the next segment's base overlap it: recovery treats them as
            // damage, so the reader must not return them either (a mangled segment made the
            // reader return seqs twice and out of order; found by cargo fuzz, target spool).
            let limit = segs.get(k + 1).map_or(u64::MAX, |(b, _)| *b);
            let want = max_records - out.len();
            if want == 0 {
                break;
            }
            let from = next.max(*base);
            let hint = *lock(&self.hint);
            let (cur, off) = match hint {
                Some((b, s, o)) if b == *base && s <= from => (s, o),
                _ => (*base, 0),
            };
            let data = match read_file_from(path, off)? {
                Bytes::Gone => continue,
                Bytes::Data(d) => d,
            };
            let (start, off) = if off == 0 {
                if !data.starts_with(SEGMENT_MAGIC) {
                    continue;
                }
                (SEGMENT_HEADER_LEN as usize, SEGMENT_HEADER_LEN)
            } else {
                (0, off)
            };
            let (cur, used) = decode_records(&data[start..], cur, from, limit, want, &mut out);
            *lock(&self.hint) = Some((*base, cur, off + used as u64));
        }
        Ok(out)
    }

    /// Cursor positions as saved by the owning process (an unreadable cursor file reads as 0).
    pub fn cursors(&self) -> Result<Vec<(String, u64)>, SpoolError> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(|e| SpoolError::io(&self.dir, "list", e))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str().and_then(cursor::parse_cursor_name) else {
                continue;
            };
            match cursor::read(&entry.path()) {
                Ok(v) => out.push((name.to_string(), v.unwrap_or(0))),
                Err(SpoolError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        out.sort();
        Ok(out)
    }

    /// Size and position, from the files (the counters of a live writer are not visible).
    pub fn stats(&self) -> Result<Stats, SpoolError> {
        let segs = self.segments()?;
        let mut stats = Stats {
            segments: segs.len(),
            ..Stats::default()
        };
        for (_, path) in &segs {
            stats.total_bytes += fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        }
        // Records at or past the next segment's base are damage (as in `read_from`).
        let next_base = |i: usize| segs.get(i + 1).map(|(b, _)| *b);
        for (i, (base, path)) in segs.iter().enumerate() {
            if let Bytes::Data(d) = read_file_from(path, 0)? {
                let scan = format::scan_segment(&d, *base, next_base(i));
                if scan.records > 0 {
                    stats.first_seq = Some(*base);
                    stats.oldest_timestamp_ms = scan.first_ts;
                    break;
                }
            }
        }
        for (i, (base, path)) in segs.iter().enumerate().rev() {
            if let Bytes::Data(d) = read_file_from(path, 0)? {
                let scan = format::scan_segment(&d, *base, next_base(i));
                if scan.records > 0 {
                    stats.last_seq = base + scan.records - 1;
                    stats.newest_timestamp_ms = scan.newest_ts;
                    break;
                }
                if stats.last_seq == 0 && scan.valid_len > 0 {
                    stats.last_seq = base.saturating_sub(1);
                }
            }
        }
        Ok(stats)
    }
}

/// Decode valid records from `data` starting at seq `cur` and below `limit` (the next
/// segment's base), keeping those >= `from`, at most `want`. Returns the seq after the last
/// record decoded and the bytes consumed.
fn decode_records(
    data: &[u8],
    mut cur: u64,
    from: u64,
    limit: u64,
    want: usize,
    out: &mut Vec<Record>,
) -> (u64, usize) {
    let mut off = 0;
    let mut got = 0;
    while got < want {
        match format::decode(&data[off..]) {
            Decoded::Record {
                header,
                payload,
                total,
            } if header.seq == cur && header.seq <= format::MAX_SEQ && header.seq < limit => {
                if header.seq >= from {
                    out.push(Record {
                        seq: header.seq,
                        timestamp_ms: header.timestamp_ms,
                        payload: payload.to_vec(),
                    });
                    got += 1;
                }
                cur += 1;
                off += total;
            }
            _ => break,
        }
    }
    (cur, off)
}
