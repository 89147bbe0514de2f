//! `pushbox serve`: the command line's part only — logging, the configuration (or the `--dev`
//! app's), then [`crate::server::run`], which owns everything from socket activation to the
//! graceful stop.

use std::process::ExitCode;

use crate::config::{Config, ConfigError};

use super::ConfigArgs;

fn init_logging() {
    // Compact on a terminal, journald-friendly under systemd (see metrics::logfmt).
    let env = crate::config::ProcessEnv::default();
    crate::metrics::logfmt::init(&crate::config::LogConfig::from_env(&env));
}

/// `pushbox serve [--dev]`.
pub fn run(args: &ConfigArgs) -> ExitCode {
    init_logging();
    match load(args) {
        Ok(cfg) => crate::server::run(cfg),
        Err(e) => super::config_failure(e),
    }
}

fn load(args: &ConfigArgs) -> Result<Config, ConfigError> {
    if args.dev {
        return crate::dev::config(&super::process_env(args)?);
    }
    super::load_config(args)
}
