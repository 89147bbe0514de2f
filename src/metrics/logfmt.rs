//! The log format: `tracing-subscriber` with an env filter (`PUSHBOX_LOG`, else `RUST_LOG`,
//! else `info`), written to stderr as
//!
//! * a compact, coloured, timestamped line on a terminal, or
//! * under systemd (`JOURNAL_STREAM` set, or stderr not a terminal) one line per event with a
//!   `<N>` syslog priority prefix (journald turns it into `PRIORITY=`), no colours and no
//!   timestamp (journald adds its own): `<4>pushbox::server: api request refused status=401 …`.
//!
//! `PUSHBOX_LOG_FORMAT=journald|terminal` forces one. Newlines inside messages and fields are
//! flattened so one event is one journal entry. Callers log no secrets: request queries, bodies
//! and auth signatures are never passed to `tracing`. `config::LogConfig` reads the variables.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

/// Which format [`init`] picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Terminal,
    Journald,
}

/// The format for this process: forced by `PUSHBOX_LOG_FORMAT`, else journald under systemd
/// or when stderr is not a terminal.
pub fn choose(forced: Option<&str>, journal_stream: bool, stderr_is_terminal: bool) -> LogFormat {
    match forced.map(str::trim) {
        Some("journald") | Some("journal") | Some("systemd") => LogFormat::Journald,
        Some("terminal") | Some("compact") | Some("human") => LogFormat::Terminal,
        _ if journal_stream || !stderr_is_terminal => LogFormat::Journald,
        _ => LogFormat::Terminal,
    }
}

/// Installs the global subscriber (a second call does nothing). `log` is what the environment
/// says (`config::LogConfig`): this module reads no variable itself.
pub fn init(log: &LogConfig) {
    // An invalid `PUSHBOX_LOG` falls back to `RUST_LOG`, then to `info`.
    let parse = |dirs: &Option<String>| dirs.as_deref().and_then(|d| EnvFilter::try_new(d).ok());
    let filter = parse(&log.filter)
        .or_else(|| parse(&log.rust_log))
        .unwrap_or_else(|| EnvFilter::new("info"));
    let format = choose(
        log.format.as_deref(),
        log.journal_stream,
        std::io::stderr().is_terminal(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Journald => builder.with_ansi(false).event_format(Journald).try_init(),
        LogFormat::Terminal => builder.compact().with_ansi(true).try_init(),
    };
}

/// The syslog priority of a level (sd-daemon(3) prefixes).
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// One line per event: `<N>target: message field=value …`.
pub struct Journald;

impl<S, N> FormatEvent<S, N> for Journald
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = String::new();
        ctx.format_fields(Writer::new(&mut fields), event)?;
        let fields = fields.replace(['\n', '\r'], " ");
        writeln!(
            writer,
            "<{}>{}: {}",
            priority(meta.level()),
            meta.target(),
            fields
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_journald_under_systemd() {
        assert_eq!(choose(None, true, true), LogFormat::Journald);
        assert_eq!(choose(None, false, false), LogFormat::Journald);
        assert_eq!(choose(None, false, true), LogFormat::Terminal);
        assert_eq!(choose(Some("terminal"), true, false), LogFormat::Terminal);
        assert_eq!(choose(Some("journald"), false, true), LogFormat::Journald);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::TRACE), 7);
    }
}
