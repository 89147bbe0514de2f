//! `pushbox queue status|dead|retry`: the webhook queue, safe against a running server.

use std::process::ExitCode;

use super::{unfinished, ConfigArgs};

pub fn status(_config: &ConfigArgs) -> ExitCode {
    unfinished("queue status")
}

pub fn dead(_config: &ConfigArgs) -> ExitCode {
    unfinished("queue dead")
}

pub fn retry(_config: &ConfigArgs, _id: Option<&str>, _all: bool) -> ExitCode {
    unfinished("queue retry")
}
