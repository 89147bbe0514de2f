//! `pushbox events tail`: the event log, read while the server runs.

use std::process::ExitCode;

use super::{unfinished, ConfigArgs};

pub fn tail(
    _config: &ConfigArgs,
    _channel: Option<&str>,
    _lines: usize,
    _follow: bool,
) -> ExitCode {
    unfinished("events tail")
}
