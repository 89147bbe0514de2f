//! Whether the spool can take records now, and why not. The writer thread records what its
//! writes, syncs and space reservations found; [`Health::check_directory`] finds out that the
//! directory itself was removed or replaced (an operator's `rm -rf`, a card remounted
//! elsewhere), which no write would ever report: writes into an unlinked file succeed.
//!
//! Callers read the state with one atomic load ([`Health::refusal`] is free while writable),
//! so the event log can refuse an event *before* it is delivered to anyone.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

use super::error::SpoolError;
use super::lock;

/// What a spool can do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// It takes records.
    Writable,
    /// The filesystem has no room for what comes next (ENOSPC when reserving or writing).
    /// Cleared by itself once a reservation or a write succeeds again.
    DiskFull,
    /// A write, sync or reservation failed with another I/O error (EIO, a read-only remount).
    /// Cleared once one succeeds again.
    IoError,
    /// The directory was removed or replaced while the spool was open. Never cleared: the
    /// records and cursors it held are gone, and only a new open (a restart) starts a new log.
    DirectoryLost,
}

impl Condition {
    /// All of them, in the order `/metrics` lists them.
    pub const ALL: [Condition; 4] = [
        Condition::Writable,
        Condition::DiskFull,
        Condition::IoError,
        Condition::DirectoryLost,
    ];

    /// The label `/metrics` and logs use.
    pub fn label(self) -> &'static str {
        match self {
            Condition::Writable => "writable",
            Condition::DiskFull => "disk_full",
            Condition::IoError => "io_error",
            Condition::DirectoryLost => "directory_lost",
        }
    }

    fn from_u8(v: u8) -> Condition {
        match v {
            0 => Condition::Writable,
            1 => Condition::DiskFull,
            2 => Condition::IoError,
            _ => Condition::DirectoryLost,
        }
    }
}

/// A file's identity: (device, inode).
type Identity = (u64, u64);

fn identity(m: &fs::Metadata) -> Identity {
    (m.dev(), m.ino())
}

pub(crate) struct Health {
    /// A [`Condition`] as `u8`: the only thing the hot path reads.
    state: AtomicU8,
    /// The error behind a condition other than `Writable`.
    why: Mutex<Option<SpoolError>>,
    /// The spool directory as opened.
    dir: PathBuf,
    dir_id: Identity,
    /// The segment being written and its identity (the writer updates it on every roll).
    segment: Mutex<(PathBuf, Identity)>,
}

impl Health {
    /// The health of a spool just opened in `dir`, writing `segment` (open as `file`).
    pub(crate) fn new(dir: &Path, segment: &Path, file: &fs::File) -> Result<Health, SpoolError> {
        let dir_id = fs::metadata(dir)
            .map(|m| identity(&m))
            .map_err(|e| SpoolError::io(dir, "stat", e))?;
        let seg_id = file
            .metadata()
            .map(|m| identity(&m))
            .map_err(|e| SpoolError::io(segment, "stat", e))?;
        Ok(Health {
            state: AtomicU8::new(Condition::Writable as u8),
            why: Mutex::new(None),
            dir: dir.to_path_buf(),
            dir_id,
            segment: Mutex::new((segment.to_path_buf(), seg_id)),
        })
    }

    pub(crate) fn condition(&self) -> Condition {
        Condition::from_u8(self.state.load(Ordering::Acquire))
    }

    pub(crate) fn is_writable(&self) -> bool {
        self.state.load(Ordering::Acquire) == Condition::Writable as u8
    }

    /// Why the spool refuses records now (`None` while it is writable).
    pub(crate) fn refusal(&self) -> Option<SpoolError> {
        if self.is_writable() {
            return None;
        }
        lock(&self.why).as_ref().map(SpoolError::duplicate)
    }

    /// The error every record gets once the directory is lost.
    pub(crate) fn lost(&self) -> Option<SpoolError> {
        match self.condition() {
            Condition::DirectoryLost => self.refusal(),
            _ => None,
        }
    }

    /// A write, sync or reservation succeeded: writable again, unless the directory is lost.
    pub(crate) fn succeeded(&self) {
        if self.is_writable() {
            return;
        }
        let mut why = lock(&self.why);
        if self.condition() != Condition::DirectoryLost {
            *why = None;
            self.state
                .store(Condition::Writable as u8, Ordering::Release);
        }
    }

    /// A write, sync or reservation failed with `e`.
    pub(crate) fn failed(&self, e: &SpoolError) {
        let condition = match e {
            SpoolError::DiskFull { .. } => Condition::DiskFull,
            SpoolError::DirectoryLost { .. } => Condition::DirectoryLost,
            _ => Condition::IoError,
        };
        self.set(condition, e.duplicate());
    }

    fn set(&self, condition: Condition, e: SpoolError) {
        let mut why = lock(&self.why);
        // Lost stays lost: a later ENOSPC must not make it look recoverable.
        if self.condition() != Condition::DirectoryLost {
            *why = Some(e);
            self.state.store(condition as u8, Ordering::Release);
        }
    }

    /// The writer started a new segment.
    pub(crate) fn rolled(&self, segment: &Path, file: &fs::File) {
        if let Ok(m) = file.metadata() {
            *lock(&self.segment) = (segment.to_path_buf(), identity(&m));
        }
    }

    /// Checks that the directory and the segment being written are still the ones the spool
    /// opened (two `stat`s); marks the spool lost if not. Other stat errors are left to the
    /// writes to report (they fail too if the disk is gone).
    pub(crate) fn check_directory(&self) -> Result<(), SpoolError> {
        if self.condition() == Condition::DirectoryLost {
            return Err(self.lost_error());
        }
        let lost = match fs::metadata(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Some("the directory was removed".to_owned())
            }
            Ok(m) if identity(&m) != self.dir_id => {
                Some("another directory was created in its place".to_owned())
            }
            _ => self.segment_lost(),
        };
        if let Some(what) = lost {
            self.set(
                Condition::DirectoryLost,
                SpoolError::DirectoryLost {
                    dir: self.dir.clone(),
                    what,
                },
            );
            return Err(self.lost_error());
        }
        Ok(())
    }

    /// The segment being written was deleted or replaced.
    fn segment_lost(&self) -> Option<String> {
        let (path, id) = lock(&self.segment).clone();
        let what = match fs::metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => "was deleted",
            Ok(m) if identity(&m) != id => "was replaced",
            _ => return None,
        };
        // The writer may have rolled meanwhile (and retention removed this one): not a loss.
        if lock(&self.segment).0 != path {
            return None;
        }
        Some(format!(
            "the segment being written, {}, {what}",
            path.display()
        ))
    }

    fn lost_error(&self) -> SpoolError {
        self.refusal().unwrap_or_else(|| SpoolError::DirectoryLost {
            dir: self.dir.clone(),
            what: "the directory was removed".to_owned(),
        })
    }
}
