//! The operator's tools: `keygen`, `env`, `check`, `trigger`, `cert self-signed`.

use std::path::Path;
use std::process::ExitCode;

use super::{unfinished, ConfigArgs};

pub fn keygen() -> ExitCode {
    unfinished("keygen")
}

pub fn env(_config: &ConfigArgs, _app: Option<&str>, _host: Option<&str>) -> ExitCode {
    unfinished("env")
}

pub fn check(_config: &ConfigArgs) -> ExitCode {
    unfinished("check")
}

pub fn trigger(
    _config: &ConfigArgs,
    _channel: &str,
    _event: &str,
    _data: &str,
    _app: Option<&str>,
    _url: Option<&str>,
) -> ExitCode {
    unfinished("trigger")
}

pub fn cert_self_signed(_hosts: &[String], _ips: &[String], _out: &Path, _days: u32) -> ExitCode {
    unfinished("cert self-signed")
}
