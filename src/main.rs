//! The `pushbox` command line: `serve` (with `--dev`), and the operator's commands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use pushbox::config::{self, Config, ConfigError, ProcessEnv};
use pushbox::hub::NoObserver;
use pushbox::server;

#[derive(Parser)]
#[command(
    name = "pushbox",
    version,
    about = "A Pusher-compatible real-time server appliance"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// The TOML config file.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// A Laravel .env file to read REVERB_* / PUSHER_* variables from.
        #[arg(long, value_name = "PATH")]
        env_file: Option<PathBuf>,
        /// Development mode: 127.0.0.1:8080, a dev app whose keys are kept in ./.pushbox-dev.
        #[arg(long)]
        dev: bool,
    },
    /// Print the version.
    Version,
}

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

fn fail_config(e: ConfigError) -> ExitCode {
    eprintln!("pushbox: config error: {e}");
    ExitCode::from(config::EXIT_CONFIG as u8)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("pushbox {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Serve {
            config,
            env_file,
            dev,
        } => {
            init_logging();
            let cfg = match load_serve_config(config.as_deref(), env_file.as_deref(), dev) {
                Ok(c) => c,
                Err(e) => return fail_config(e),
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
    }
}

fn load_serve_config(
    path: Option<&Path>,
    env_file: Option<&Path>,
    dev: bool,
) -> Result<Config, ConfigError> {
    let file_vars = match env_file {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(text) => config::parse_env_file(&text),
            Err(e) => {
                return Err(ConfigError::Read {
                    path: p.to_path_buf(),
                    error: e.to_string(),
                })
            }
        },
        None => Default::default(),
    };
    let env = ProcessEnv { file: file_vars };
    if dev {
        return pushbox::dev::config(&env);
    }
    config::load(path, &env)
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
