//! Opening a spool directory for writing: take the lock, read every segment, validate every
//! record, cut a torn or corrupt tail off the last segment, and say what was found in a
//! [`RecoveryReport`]. Nothing read from disk is trusted; nothing here panics on it.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::cursor;
use super::error::SpoolError;
use super::floor;
use super::format::{self, ScanEnd, SEGMENT_HEADER_LEN, SEGMENT_MAGIC};
use super::reserve::{self, Reserved};
use super::{Index, SegMeta};

/// A segment that is damaged somewhere other than a clean tail cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentDamage {
    /// The segment file.
    pub path: PathBuf,
    /// Valid records kept from the start of the segment.
    pub kept_records: u64,
    /// Byte offset where the damage starts.
    pub offset: u64,
    /// Bytes from there to the end of the file.
    pub damaged_bytes: u64,
    /// What was wrong.
    pub reason: String,
}

/// What recovery found and did. Log it when it is not [`clean`](Self::is_clean).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The spool directory did not exist and was created.
    pub created: bool,
    /// Segments in the spool after recovery.
    pub segments: usize,
    /// Valid records in the spool after recovery.
    pub records: u64,
    /// Bytes cut off the end of the last segment (a torn or corrupt tail).
    pub truncated_bytes: u64,
    /// Records (complete or partial, best estimate) in those bytes.
    pub dropped_records: u64,
    /// The last segment's cut, if there was one.
    pub tail_damage: Option<SegmentDamage>,
    /// Segments before the last one whose end is unreadable; their valid prefix is kept and
    /// the damaged bytes are left on disk (retention removes the file later).
    pub damaged_segments: Vec<SegmentDamage>,
    /// Seq ranges `[from, to)` missing between segments (lost to damage or deleted files).
    pub seq_gaps: Vec<(u64, u64)>,
    /// Seqs `[from, to)` skipped: records with them may have been handed over (to the cluster's
    /// bus) before a crash or a failed fsync lost them, so no new record takes them
    /// (`floor.rs`). Nothing acknowledged is missing.
    pub skipped_seqs: Option<(u64, u64)>,
    /// A last segment with a foreign header, renamed aside to this path.
    pub quarantined: Vec<PathBuf>,
    /// Zero-length segments before the last one, removed.
    pub removed_empty_segments: Vec<PathBuf>,
    /// Leftover `*.cursor.tmp` files of an interrupted cursor write, removed.
    pub removed_temp_files: Vec<PathBuf>,
    /// Cursor files that could not be parsed; each was reset to 0 (the start).
    pub bad_cursors: Vec<(String, String)>,
    /// Files in the directory that are not the spool's; left alone.
    pub stray_files: Vec<PathBuf>,
}

impl RecoveryReport {
    /// True when nothing was damaged, dropped, reset or removed.
    pub fn is_clean(&self) -> bool {
        self.truncated_bytes == 0
            && self.tail_damage.is_none()
            && self.damaged_segments.is_empty()
            && self.seq_gaps.is_empty()
            && self.skipped_seqs.is_none()
            && self.quarantined.is_empty()
            && self.removed_empty_segments.is_empty()
            && self.bad_cursors.is_empty()
    }
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} segments, {} records", self.segments, self.records)?;
        if self.created {
            write!(f, "; created the directory")?;
        }
        if let Some(d) = &self.tail_damage {
            write!(
                f,
                "; cut {} bytes (~{} records) off {} at byte {} ({})",
                self.truncated_bytes,
                self.dropped_records,
                d.path.display(),
                d.offset,
                d.reason
            )?;
        }
        for d in &self.damaged_segments {
            write!(
                f,
                "; {} is damaged at byte {} ({}): kept its first {} records, {} bytes unreadable",
                d.path.display(),
                d.offset,
                d.reason,
                d.kept_records,
                d.damaged_bytes
            )?;
        }
        for (from, to) in &self.seq_gaps {
            write!(f, "; records {from}..{to} are missing")?;
        }
        if let Some((from, to)) = self.skipped_seqs {
            write!(
                f,
                "; the next record is {to}, not {from}: records from {from} on were handed to \
                 the cluster before they were durable and then lost (a crash), and their seqs \
                 are not reused"
            )?;
        }
        for p in &self.quarantined {
            write!(f, "; moved a damaged segment aside to {}", p.display())?;
        }
        for p in &self.removed_empty_segments {
            write!(f, "; removed empty segment {}", p.display())?;
        }
        for p in &self.removed_temp_files {
            write!(f, "; removed interrupted cursor write {}", p.display())?;
        }
        for (name, why) in &self.bad_cursors {
            write!(
                f,
                "; cursor {name:?} was unreadable ({why}) and restarts from the beginning"
            )?;
        }
        for p in &self.stray_files {
            write!(f, "; ignored stray file {}", p.display())?;
        }
        Ok(())
    }
}

/// The segment the writer appends to.
pub(crate) struct Active {
    pub file: File,
    pub path: PathBuf,
    pub base: u64,
    pub len: u64,
    pub records: u64,
    /// Bytes up to which the file's blocks are known to be allocated (`len` if none past it).
    pub reserved: u64,
}

pub(crate) struct Recovered {
    pub index: Index,
    pub cursors: BTreeMap<String, u64>,
    pub lock: File,
    pub active: Active,
    pub report: RecoveryReport,
}

/// Create `<dir>/<base>.seg` with its header, durably, with its first `reserve` bytes
/// allocated (see `reserve.rs`; 0: none). A segment whose room cannot be reserved is not left
/// behind. Says whether the filesystem could reserve at all.
pub(crate) fn create_segment(
    dir: &Path,
    base: u64,
    reserve: u64,
) -> Result<(File, PathBuf, Reserved), SpoolError> {
    let path = format::segment_path(dir, base);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| SpoolError::io(&path, "create segment", e))?;
    let result = reserve::reserve(&file, &path, 0, reserve).and_then(|reserved| {
        file.write_all_at(SEGMENT_MAGIC, 0)
            .and_then(|()| file.sync_all())
            .map_err(|e| SpoolError::io(&path, "write segment header", e))
            .map(|()| reserved)
    });
    let reserved = match result {
        Ok(r) => r,
        Err(e) => {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(e);
        }
    };
    cursor::sync_dir(dir)?;
    Ok((file, path, reserved))
}

fn read_pid(lock: &mut File) -> Option<u32> {
    let mut s = String::new();
    lock.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

pub(crate) fn recover(dir: &Path) -> Result<Recovered, SpoolError> {
    let mut report = RecoveryReport::default();

    // The directory.
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(SpoolError::NotADirectory {
                dir: dir.to_path_buf(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(|e| SpoolError::io(dir, "create directory", e))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                cursor::sync_dir(parent)?;
            }
            report.created = true;
        }
        Err(e) => return Err(SpoolError::io(dir, "stat", e)),
    }

    // The lock.
    let lock_path = dir.join("LOCK");
    let mut lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| SpoolError::io(&lock_path, "open", e))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(SpoolError::Locked {
                dir: dir.to_path_buf(),
                pid: read_pid(&mut lock),
            });
        }
        Err(TryLockError::Error(e)) => return Err(SpoolError::io(&lock_path, "lock", e)),
    }
    // Best effort: the pid helps the next process's "Locked" message.
    let _ = lock
        .set_len(0)
        .and_then(|()| lock.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0));

    // The entries.
    let mut segs: Vec<(u64, PathBuf)> = Vec::new();
    let mut cursor_files: Vec<(String, PathBuf)> = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| SpoolError::io(dir, "list", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| SpoolError::io(dir, "list", e))?;
        let path = entry.path();
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            report.stray_files.push(path);
            continue;
        };
        if name == "LOCK" || name == floor::FILE {
            continue;
        }
        if !is_file {
            report.stray_files.push(path);
        } else if let Some(base) = format::parse_segment_name(&name) {
            segs.push((base, path));
        } else if name.ends_with(cursor::TEMP_SUFFIX) || name == floor::TEMP_FILE {
            fs::remove_file(&path).map_err(|e| SpoolError::io(&path, "remove", e))?;
            report.removed_temp_files.push(path);
        } else if let Some(c) = cursor::parse_cursor_name(&name) {
            cursor_files.push((c.to_string(), path));
        } else {
            report.stray_files.push(path);
        }
    }
    segs.sort();
    report.stray_files.sort();
    // Zero-length segments before the last hold nothing (a crash right after creating one).
    let last_base = segs.last().map(|s| s.0);
    let mut kept_segs = Vec::with_capacity(segs.len());
    for (base, path) in segs {
        let empty = fs::metadata(&path).map(|m| m.len() == 0).unwrap_or(false);
        if empty && Some(base) != last_base {
            fs::remove_file(&path).map_err(|e| SpoolError::io(&path, "remove", e))?;
            report.removed_empty_segments.push(path);
        } else {
            kept_segs.push((base, path));
        }
    }
    let segs = kept_segs;
    if !report.removed_temp_files.is_empty() || !report.removed_empty_segments.is_empty() {
        cursor::sync_dir(dir)?;
    }

    // Cursors.
    let mut cursors = BTreeMap::new();
    for (name, path) in cursor_files {
        let seq = match cursor::read(&path)? {
            Ok(seq) => seq,
            Err(why) => {
                report.bad_cursors.push((name.clone(), why.to_string()));
                cursor::write(dir, &name, 0)?;
                0
            }
        };
        cursors.insert(name, seq);
    }
    let min_next = cursors.values().max().map_or(1, |m| m.saturating_add(1));

    // Segments.
    let mut metas: Vec<SegMeta> = Vec::new();
    let mut next_seq = min_next;
    let n = segs.len();
    for (i, (base, path)) in segs.iter().enumerate() {
        let (base, is_last) = (*base, i + 1 == n);
        let data = fs::read(path).map_err(|e| SpoolError::io(path, "read segment", e))?;
        let scan = format::scan_segment(&data, base, segs.get(i + 1).map(|s| s.0));
        next_seq = next_seq.max(base + scan.records);
        let disk_len = data.len() as u64;
        let mut meta = SegMeta {
            base,
            path: path.clone(),
            len: scan.valid_len,
            disk_len,
            records: scan.records,
            first_ts: scan.first_ts,
            newest_ts: scan.newest_ts,
            sparse: scan.sparse,
        };
        let (offset, reason) = match scan.end {
            ScanEnd::Clean => {
                metas.push(meta);
                continue;
            }
            ScanEnd::Torn { offset } => (offset, "incomplete record (torn write)"),
            ScanEnd::Corrupt { offset, reason } => (offset, reason),
        };
        let damage = SegmentDamage {
            path: path.clone(),
            kept_records: scan.records,
            offset,
            damaged_bytes: disk_len - offset,
            reason: reason.to_string(),
        };
        if !is_last {
            report.damaged_segments.push(damage);
            metas.push(meta);
            continue;
        }
        // The last segment: cut the damage off so appends continue after the valid prefix.
        if scan.valid_len == 0 && !data.is_empty() && !SEGMENT_MAGIC.starts_with(&data) {
            // A foreign or mangled header: nothing in it can be trusted or appended to.
            let aside = quarantine_path(path);
            fs::rename(path, &aside).map_err(|e| SpoolError::io(path, "rename", e))?;
            cursor::sync_dir(dir)?;
            report.quarantined.push(aside);
            report.tail_damage = Some(damage);
            continue;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| SpoolError::io(path, "open segment", e))?;
        let keep = if scan.valid_len == 0 {
            // Torn inside the segment header: rewrite it.
            file.set_len(0)
                .and_then(|()| file.write_all_at(SEGMENT_MAGIC, 0))
                .map_err(|e| SpoolError::io(path, "rewrite segment header", e))?;
            SEGMENT_HEADER_LEN
        } else {
            file.set_len(scan.valid_len)
                .map_err(|e| SpoolError::io(path, "truncate", e))?;
            scan.valid_len
        };
        file.sync_all()
            .map_err(|e| SpoolError::io(path, "fsync", e))?;
        if scan.valid_len > 0 && disk_len > keep {
            // (A torn segment header loses nothing: no record was in it yet.)
            report.truncated_bytes = disk_len - keep;
            report.dropped_records = format::estimate_records(&data, scan.valid_len as usize);
            report.tail_damage = Some(damage);
        }
        meta.len = keep;
        meta.disk_len = keep;
        metas.push(meta);
    }

    // The last segment kept can be a damaged one when the one after it was moved aside (or is
    // removed below): cut its damage too. Its damage may be records past the next segment's
    // base, and with that segment gone the next open would take them back ("revived"), or the
    // writer would append over them and leave old records after the new ones. Found by cargo
    // fuzz (target spool).
    if let Some(last) = metas.last_mut() {
        cut_damage(last)?;
    }

    // Gaps between segments.
    for w in metas.windows(2) {
        if w[0].end_seq() < w[1].base {
            report.seq_gaps.push((w[0].end_seq(), w[1].base));
        }
    }

    // Seqs that may have been handed over before a crash lost them are never given again.
    let lost_next = next_seq;
    if let Some(f) = floor::read(dir)?.filter(|&f| f > next_seq) {
        report.skipped_seqs = Some((next_seq, f));
        next_seq = f;
    }

    // The active segment: the last one, if the next seq continues it; else a new one.
    let reuse = metas
        .last()
        .filter(|m| m.end_seq() == next_seq && m.len >= SEGMENT_HEADER_LEN)
        .map(|m| (m.path.clone(), m.base, m.len, m.records));
    let active = if let Some((path, base, len, records)) = reuse {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| SpoolError::io(&path, "open segment", e))?;
        Active {
            file,
            path,
            base,
            len,
            records,
            reserved: len,
        }
    } else {
        if metas
            .last()
            .is_some_and(|m| m.records == 0 && m.base < next_seq)
        {
            // An empty last segment that cannot take `next_seq`: replace it.
            if let Some(last) = metas.pop() {
                fs::remove_file(&last.path).map_err(|e| SpoolError::io(&last.path, "remove", e))?;
            }
            if let Some(last) = metas.last_mut() {
                cut_damage(last)?;
            }
        }
        if let Some(last) = metas.last().filter(|m| m.end_seq() < lost_next) {
            // Records past the last one on disk were lost (a cursor had already passed them).
            report.seq_gaps.push((last.end_seq(), lost_next));
        }
        let (file, path, _) = create_segment(dir, next_seq, 0)?;
        metas.push(SegMeta {
            base: next_seq,
            path: path.clone(),
            len: SEGMENT_HEADER_LEN,
            disk_len: SEGMENT_HEADER_LEN,
            records: 0,
            first_ts: None,
            newest_ts: None,
            sparse: Vec::new(),
        });
        Active {
            file,
            path,
            base: next_seq,
            len: SEGMENT_HEADER_LEN,
            records: 0,
            reserved: SEGMENT_HEADER_LEN,
        }
    };

    report.segments = metas.len();
    report.records = metas.iter().map(|m| m.records).sum();
    let total_bytes = metas.iter().map(|m| m.disk_len).sum();
    let index = Index {
        segs: metas,
        total_bytes,
        last_seq: next_seq - 1,
    };
    Ok(Recovered {
        index,
        cursors,
        lock,
        active,
        report,
    })
}

/// Cuts a segment's file back to its valid records (nothing if it has no damage).
fn cut_damage(meta: &mut SegMeta) -> Result<(), SpoolError> {
    if meta.disk_len <= meta.len || meta.len < SEGMENT_HEADER_LEN {
        return Ok(());
    }
    let path = &meta.path;
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| SpoolError::io(path, "open segment", e))?;
    file.set_len(meta.len)
        .and_then(|()| file.sync_all())
        .map_err(|e| SpoolError::io(path, "truncate", e))?;
    meta.disk_len = meta.len;
    Ok(())
}

fn quarantine_path(path: &Path) -> PathBuf {
    let mut n = 0u32;
    loop {
        let mut name = path.as_os_str().to_owned();
        if n == 0 {
            name.push(".corrupt");
        } else {
            name.push(format!(".corrupt.{n}"));
        }
        let p = PathBuf::from(name);
        if !p.exists() {
            return p;
        }
        n += 1;
    }
}
