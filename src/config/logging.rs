//! The logging settings, which come from the environment only (logging starts before the config
//! file is read, so a broken file can still be reported): `PUSHBOX_LOG` (else `RUST_LOG`) is the
//! filter, `PUSHBOX_LOG_FORMAT` forces a format, and systemd's `JOURNAL_STREAM` says stderr goes
//! to the journal. `metrics::logfmt` turns these into a subscriber.

use super::env::Env;

/// What `metrics::logfmt::init` needs to know about the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogConfig {
    /// `PUSHBOX_LOG`: a `tracing` filter (`info`, `pushbox::server=debug`).
    pub filter: Option<String>,
    /// `RUST_LOG`, used when `PUSHBOX_LOG` is unset or not a valid filter.
    pub rust_log: Option<String>,
    /// `PUSHBOX_LOG_FORMAT`: `journald` or `terminal` (and their aliases).
    pub format: Option<String>,
    /// `JOURNAL_STREAM` is set: systemd connected stderr to the journal.
    pub journal_stream: bool,
}

impl LogConfig {
    pub fn from_env(env: &dyn Env) -> LogConfig {
        LogConfig {
            filter: env.get("PUSHBOX_LOG"),
            rust_log: env.get("RUST_LOG"),
            format: env.get("PUSHBOX_LOG_FORMAT"),
            journal_stream: env.get("JOURNAL_STREAM").is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn reads_the_logging_variables() {
        let env: HashMap<String, String> = [
            ("PUSHBOX_LOG", "debug"),
            ("PUSHBOX_LOG_FORMAT", "journald"),
            ("JOURNAL_STREAM", "8:1234"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let log = LogConfig::from_env(&env);
        assert_eq!(log.filter.as_deref(), Some("debug"));
        assert_eq!(log.rust_log, None);
        assert_eq!(log.format.as_deref(), Some("journald"));
        assert!(log.journal_stream);
        assert_eq!(LogConfig::from_env(&HashMap::new()), LogConfig::default());
    }
}
