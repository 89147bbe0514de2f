//! `SpoolError`: everything that can go wrong in the spool, with messages that say what to do.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// An error from the spool. Every message names the path involved and, where there is one,
/// the operator's next step.
#[derive(Debug)]
pub enum SpoolError {
    /// Another process holds the spool directory's `LOCK` file.
    Locked {
        /// The spool directory.
        dir: PathBuf,
        /// The holder's pid, if it wrote one into `LOCK`.
        pid: Option<u32>,
    },
    /// The append would push the spool past its configured `max_bytes` cap. Nothing was written.
    Full {
        /// The spool directory.
        dir: PathBuf,
        /// The configured cap.
        max_bytes: u64,
        /// Bytes the spool occupies now.
        used_bytes: u64,
        /// Bytes the rejected record needed.
        needed_bytes: u64,
    },
    /// The filesystem ran out of space (ENOSPC/EDQUOT). Nothing was acknowledged; the partial
    /// write was cut back and the spool keeps working once space is freed.
    DiskFull {
        /// The file being written.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Any other I/O failure.
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What the spool was doing ("write", "fsync", "open", ...).
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// A record bigger than the spool accepts.
    RecordTooLarge {
        /// Payload length requested.
        len: usize,
        /// The maximum payload length.
        max: usize,
    },
    /// A record that recovery had validated no longer reads back correctly (bit rot, or the
    /// file was changed behind the spool's back).
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the bad record.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// The path exists but is not a directory.
    NotADirectory {
        /// The path.
        dir: PathBuf,
    },
    /// A read-only open of a directory that does not exist.
    NotFound {
        /// The path.
        dir: PathBuf,
    },
    /// A cursor name outside `[A-Za-z0-9_-]{1,64}`.
    InvalidCursorName {
        /// The name given.
        name: String,
    },
    /// An attempt to move a cursor past the last committed record.
    CursorOutOfRange {
        /// The cursor.
        name: String,
        /// The requested position.
        seq: u64,
        /// The last committed seq.
        last_seq: u64,
    },
    /// The spool directory was removed or replaced while the spool was open: records written
    /// since went into files nobody can open again. The spool refuses everything from then on.
    DirectoryLost {
        /// The spool directory.
        dir: PathBuf,
        /// What was found ("the directory was removed", …).
        what: String,
    },
    /// The next record would need a seq past [`MAX_SEQ`](super::MAX_SEQ): only a damaged
    /// segment or cursor file claiming records near the end of the range gets here (a real
    /// spool would need billions of years). Nothing was written.
    SeqExhausted {
        /// The spool directory.
        dir: PathBuf,
    },
    /// The hand-over floor file (`HANDED`, see `floor.rs`) cannot be read: recovery does not
    /// guess, since a guess too low would give new records the seqs of records that already
    /// left this process (the cluster's bus would skip them).
    BadFloor {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The writer thread is gone (the spool is shutting down, or it crashed).
    Closed {
        /// The spool directory.
        dir: PathBuf,
    },
}

impl SpoolError {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: io::Error) -> Self {
        let path = path.into();
        if is_disk_full(&source) {
            SpoolError::DiskFull { path, source }
        } else {
            SpoolError::Io { path, op, source }
        }
    }

    /// A copy of this error (io::Error is not Clone; the copy keeps kind and message). Used to
    /// answer every waiter of a failed group commit.
    pub(crate) fn duplicate(&self) -> Self {
        fn dup(e: &io::Error) -> io::Error {
            match e.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(e.kind(), e.to_string()),
            }
        }
        match self {
            SpoolError::Locked { dir, pid } => SpoolError::Locked {
                dir: dir.clone(),
                pid: *pid,
            },
            SpoolError::Full {
                dir,
                max_bytes,
                used_bytes,
                needed_bytes,
            } => SpoolError::Full {
                dir: dir.clone(),
                max_bytes: *max_bytes,
                used_bytes: *used_bytes,
                needed_bytes: *needed_bytes,
            },
            SpoolError::DiskFull { path, source } => SpoolError::DiskFull {
                path: path.clone(),
                source: dup(source),
            },
            SpoolError::Io { path, op, source } => SpoolError::Io {
                path: path.clone(),
                op,
                source: dup(source),
            },
            SpoolError::RecordTooLarge { len, max } => SpoolError::RecordTooLarge {
                len: *len,
                max: *max,
            },
            SpoolError::Corrupt {
                path,
                offset,
                reason,
            } => SpoolError::Corrupt {
                path: path.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            SpoolError::NotADirectory { dir } => SpoolError::NotADirectory { dir: dir.clone() },
            SpoolError::NotFound { dir } => SpoolError::NotFound { dir: dir.clone() },
            SpoolError::InvalidCursorName { name } => {
                SpoolError::InvalidCursorName { name: name.clone() }
            }
            SpoolError::CursorOutOfRange {
                name,
                seq,
                last_seq,
            } => SpoolError::CursorOutOfRange {
                name: name.clone(),
                seq: *seq,
                last_seq: *last_seq,
            },
            SpoolError::DirectoryLost { dir, what } => SpoolError::DirectoryLost {
                dir: dir.clone(),
                what: what.clone(),
            },
            SpoolError::SeqExhausted { dir } => SpoolError::SeqExhausted { dir: dir.clone() },
            SpoolError::BadFloor { path, reason } => SpoolError::BadFloor {
                path: path.clone(),
                reason: reason.clone(),
            },
            SpoolError::Closed { dir } => SpoolError::Closed { dir: dir.clone() },
        }
    }
}

/// ENOSPC or EDQUOT.
pub(crate) fn is_disk_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(28) | Some(122))
}

impl fmt::Display for SpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpoolError::Locked { dir, pid } => {
                write!(f, "another pushbox is using {}", dir.display())?;
                if let Some(pid) = pid {
                    write!(f, " (pid {pid})")?;
                }
                write!(
                    f,
                    " (stop it first, or point this one at a different spool directory)"
                )
            }
            SpoolError::Full {
                dir,
                max_bytes,
                used_bytes,
                needed_bytes,
            } => write!(
                f,
                "spool {} is full: it holds {used_bytes} bytes and the cap spool.max_bytes is \
                 {max_bytes}; a record of {needed_bytes} bytes does not fit. Raise \
                 spool.max_bytes (and make sure the disk has room), or let consumers catch up \
                 so old segments can be retired",
                dir.display()
            ),
            SpoolError::DiskFull { path, source } => write!(
                f,
                "the disk holding {} is full ({source}); nothing was written. Free space on that \
                 filesystem (or lower spool.max_bytes below the free space); the spool resumes \
                 by itself",
                path.display()
            ),
            SpoolError::Io { path, op, source } => write!(
                f,
                "spool I/O error: {op} {}: {source}. Check the disk (dmesg) and that it is \
                 mounted read-write; the spool retries by itself",
                path.display()
            ),
            SpoolError::RecordTooLarge { len, max } => write!(
                f,
                "spool record of {len} bytes is larger than the maximum of {max} bytes; split it"
            ),
            SpoolError::Corrupt {
                path,
                offset,
                reason,
            } => write!(
                f,
                "spool segment {} is damaged at byte {offset}: {reason}. Restart pushbox so \
                 recovery can cut the damage out, and check the disk",
                path.display()
            ),
            SpoolError::NotADirectory { dir } => write!(
                f,
                "spool path {} exists but is not a directory; point spool.dir somewhere else or \
                 move that file away",
                dir.display()
            ),
            SpoolError::NotFound { dir } => write!(
                f,
                "no spool at {}: the directory does not exist (has pushbox run with this \
                 spool.dir yet?)",
                dir.display()
            ),
            SpoolError::InvalidCursorName { name } => write!(
                f,
                "invalid spool cursor name {name:?}: use 1 to 64 characters from A-Z a-z 0-9 _ -"
            ),
            SpoolError::CursorOutOfRange {
                name,
                seq,
                last_seq,
            } => write!(
                f,
                "cannot move spool cursor {name:?} to {seq}: the last record is {last_seq}"
            ),
            SpoolError::DirectoryLost { dir, what } => write!(
                f,
                "the spool directory {} is gone ({what}) while pushbox was running: nothing \
                 more can be stored there. Restart pushbox (systemctl restart pushbox); it \
                 creates the directory again and starts a new log",
                dir.display()
            ),
            SpoolError::SeqExhausted { dir } => write!(
                f,
                "spool {} has used up its sequence numbers: a segment or cursor file there \
                 claims records near the end of the range, so it was damaged or written by \
                 something else. Stop pushbox, move the directory aside (keep it to look at) \
                 and start again with an empty one",
                dir.display()
            ),
            SpoolError::BadFloor { path, reason } => write!(
                f,
                "{} is unreadable ({reason}): it holds the first seq this log may give a new \
                 record. Write one number into it, well above the log's last seq (`pushbox \
                 events tail` shows it; e.g. that plus 1048576), and start pushbox again",
                path.display()
            ),
            SpoolError::Closed { dir } => write!(
                f,
                "the spool writer for {} has stopped (shutting down, or it failed: see the log); \
                 restart pushbox",
                dir.display()
            ),
        }
    }
}

impl std::error::Error for SpoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SpoolError::DiskFull { source, .. } | SpoolError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
