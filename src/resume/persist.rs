//! The state file a graceful shutdown leaves in the state directory (`resume.json`) so that a
//! `systemctl restart` resumes: every app's last position and its ended lineages still within
//! the window. The events themselves are not in it: they are in the event log, whose records
//! carry their positions, and are read back from there at start-up. A crash leaves no file
//! (nothing is resumed after one); a file older than the window holds nothing useful.
//! Written to a temporary file, fsynced and renamed: a stop half-way never leaves a torn file.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::lineage::Lineage;

/// The file's name under the state directory.
pub const FILE: &str = "resume.json";

/// One app's part of the file.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AppState {
    /// The last position the app assigned: positions continue after it.
    pub head: u64,
    pub lineages: Vec<Lineage>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StateFile {
    pub version: u32,
    /// Unix ms the file was written.
    pub saved_ms: u64,
    /// By app id.
    pub apps: HashMap<String, AppState>,
}

/// Why the state file could not be read or written (the server logs it and goes on: resume
/// is a convenience, never a reason not to start).
#[derive(Debug)]
pub enum PersistError {
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    Format {
        path: PathBuf,
        error: serde_json::Error,
    },
}

impl std::fmt::Display for PersistError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PersistError::Io { path, error } => write!(f, "{}: {error} (check the state directory's permissions and free space)", path.display()),
            PersistError::Format { path, error } => write!(f, "{}: not a resume state file ({error}); it is ignored and replaced at the next shutdown", path.display()),
        }
    }
}

impl std::error::Error for PersistError {}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// Writes `file` atomically (temporary file, fsync, rename).
pub fn save(state_dir: &Path, file: &StateFile) -> Result<(), PersistError> {
    let target = path(state_dir);
    let tmp = state_dir.join(format!("{FILE}.tmp"));
    let io = |error| PersistError::Io {
        path: tmp.clone(),
        error,
    };
    let bytes = serde_json::to_vec(file).map_err(|error| PersistError::Format {
        path: tmp.clone(),
        error,
    })?;
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &target).map_err(|error| PersistError::Io {
        path: target.clone(),
        error,
    })
}

/// Reads and removes the file (it describes one shutdown; a later crash must not reuse it).
/// `Ok(None)` when there is none.
pub fn take(state_dir: &Path) -> Result<Option<StateFile>, PersistError> {
    let p = path(state_dir);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(PersistError::Io { path: p, error }),
    };
    let _ = std::fs::remove_file(&p);
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|error| PersistError::Format { path: p, error })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resume::{Mark, Token};

    #[test]
    fn a_saved_file_reads_back_once() {
        let dir = std::env::temp_dir().join(format!("pushbox-resume-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut file = StateFile {
            version: 1,
            saved_ms: 5,
            apps: HashMap::new(),
        };
        file.apps.insert(
            "1".into(),
            AppState {
                head: 42,
                lineages: vec![Lineage {
                    token: Some(Token([7; 16])),
                    ended_ms: Some(4),
                    channels: vec![Mark {
                        channel: "c".into(),
                        from: 40,
                        inherited: false,
                        since: 0,
                    }],
                    proven: 41,
                    ..Lineage::default()
                }],
            },
        );
        save(&dir, &file).unwrap();
        let back = take(&dir).unwrap().unwrap();
        let app = &back.apps["1"];
        assert_eq!(app.head, 42);
        assert_eq!(app.lineages[0].token, Some(Token([7; 16])));
        assert_eq!(app.lineages[0].watermark(&app.lineages[0].channels[0]), 41);
        assert!(take(&dir).unwrap().is_none(), "taken once");
        std::fs::write(path(&dir), b"nonsense").unwrap();
        assert!(matches!(take(&dir), Err(PersistError::Format { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
