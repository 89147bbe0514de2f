//! `ConfigError`: every way the configuration can be wrong, each shown as one line that names
//! the file or variable and says what to do (`pushbox` prints it and exits with `EXIT_CONFIG`).

use std::fmt;
use std::path::PathBuf;

/// A configuration problem, one line, naming where it is and what to do.
#[derive(Debug)]
pub enum ConfigError {
    Read {
        path: PathBuf,
        error: String,
    },
    Parse {
        path: PathBuf,
        error: String,
    },
    Invalid {
        source: String,
        message: String,
    },
    Env {
        var: String,
        message: String,
    },
    NoApps {
        path: PathBuf,
    },
    /// `--dev` on a command other than `serve`, with no dev app saved yet.
    NoDevApp {
        dir: PathBuf,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, error } => write!(f, "{}: cannot read the config file ({error}); create it or pass --config PATH", path.display()),
            // toml's errors span several lines (a caret under the source line); a config error
            // is one line, so a journal entry or a terminal shows all of it.
            ConfigError::Parse { path, error } => write!(f, "{}: {}", path.display(), error.trim().replace('\n', " ")),
            ConfigError::Invalid { source, message } => write!(f, "{source}: {message}"),
            ConfigError::Env { var, message } => write!(f, "environment variable {var}: {message}"),
            ConfigError::NoApps { path } => write!(
                f,
                "no app configured: add an [[apps]] table to {} or set REVERB_APP_ID, REVERB_APP_KEY and REVERB_APP_SECRET (or, to develop, run `pushbox serve --dev` and pass --dev to the other commands)",
                path.display()
            ),
            ConfigError::NoDevApp { dir } => write!(
                f,
                "no dev app in {}: start `pushbox serve --dev` in this directory first (it saves its keys there), or set PUSHBOX_STATE_DIR to the dev state directory it printed",
                dir.display()
            ),
        }
    }
}

impl std::error::Error for ConfigError {}
