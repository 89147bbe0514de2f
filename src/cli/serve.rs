//! `pushbox serve`: load the configuration, bind, run until SIGTERM/SIGINT, stop gracefully.

use std::process::ExitCode;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::hub::NoObserver;
use crate::server;

use super::ConfigArgs;

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PUSHBOX_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// `pushbox serve [--dev]`.
pub fn run(args: &ConfigArgs, dev: bool) -> ExitCode {
    init_logging();
    let cfg = match load(args, dev) {
        Ok(c) => c,
        Err(e) => return super::config_failure(e),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pushbox: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(serve(cfg))
}

fn load(args: &ConfigArgs, dev: bool) -> Result<Config, ConfigError> {
    if dev {
        return crate::dev::config(&super::process_env(args)?);
    }
    super::load_config(args)
}

async fn serve(cfg: Config) -> ExitCode {
    let listener = match server::bind(&cfg).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("pushbox: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let apps: Vec<String> = cfg.apps.iter().map(|a| a.id.clone()).collect();
    let (state, handle) = server::State::new(cfg, Arc::new(NoObserver), None);
    tracing::info!(%addr, apps = ?apps, "pushbox listening");
    let server = tokio::spawn(server::serve(state, listener));
    wait_for_signal().await;
    tracing::info!("shutting down: telling clients to reconnect (4200)");
    handle.shutdown();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
    // Give connection tasks a moment to send their close frames.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
