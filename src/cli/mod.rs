//! The `pushbox` command line: argument parsing and dispatch. Each command lives in its own
//! file: `serve`, the operator's tools (`ops`: keygen, env, check, trigger, cert), the event log
//! (`events`) and the webhook queue (`queue`).

mod events;
mod ops;
mod queue;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pushbox",
    version,
    about = "A Pusher-compatible real-time server appliance"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where the configuration comes from (shared by every command that reads it).
#[derive(Args, Clone, Debug, Default)]
pub struct ConfigArgs {
    /// The TOML config file [default: /etc/pushbox/pushbox.toml].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// A Laravel .env file to read REVERB_* / PUSHER_* variables from.
    #[arg(long, value_name = "PATH")]
    pub env_file: Option<PathBuf>,
    /// Development mode: 127.0.0.1:8080, the console on, and the dev app whose keys `serve
    /// --dev` keeps in ./.pushbox-dev (or $PUSHBOX_STATE_DIR); the other commands use that
    /// saved app. PUSHBOX_* variables apply; a config file does not (not with --config).
    #[arg(long)]
    pub dev: bool,
}

/// Why `--dev` and `--config` are refused together, and what to do instead.
const DEV_AND_CONFIG: &str = "--dev and --config cannot be used together: --dev runs the dev app \
saved in ./.pushbox-dev with built-in defaults (set PUSHBOX_WEBHOOK_URL, PUSHBOX_TLS_CERT / \
PUSHBOX_TLS_KEY, PUSHBOX_CONSOLE_PASSWORD… for more), while --config runs the apps of a config \
file; drop one of them (`pushbox keygen` prints an [[apps]] entry for a config file)";

#[derive(Subcommand)]
pub enum Command {
    /// Run the server.
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        /// The address to listen on instead of [server] host / REVERB_SERVER_HOST (with --dev,
        /// instead of 127.0.0.1): 0.0.0.0 lets phones and other computers on the LAN connect.
        #[arg(long, value_name = "ADDRESS")]
        host: Option<String>,
    },
    /// Print a new app id, key and secret (in the shape REVERB_* expects).
    Keygen,
    /// Print the Laravel .env block for an app of this box.
    Env {
        #[command(flatten)]
        config: ConfigArgs,
        /// The app id (default: the only or first app).
        #[arg(long)]
        app: Option<String>,
        /// The host name clients use to reach this box (default: the configured host).
        #[arg(long)]
        host: Option<String>,
    },
    /// Check the configuration, keys, ports, certificate and state directory.
    Check {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Publish a test event through the signed HTTP API of a running server.
    Trigger {
        #[command(flatten)]
        config: ConfigArgs,
        /// The channel to publish on (e.g. orders, private-company.1, presence-room.2).
        #[arg(long)]
        channel: String,
        /// The event name Echo / pusher-js listeners bind to (e.g. OrderShipped).
        #[arg(long)]
        event: String,
        /// The event data (usually JSON).
        #[arg(long, default_value = "{}")]
        data: String,
        /// The app id to publish as (default: the only or first app).
        #[arg(long)]
        app: Option<String>,
        /// Base URL of the server (default: from the config, http://127.0.0.1:PORT).
        #[arg(long)]
        url: Option<String>,
        /// A PEM certificate to trust for an https URL (the box's self-signed certificate).
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
    },
    /// Certificates for a LAN box.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// The event log: what the shop published, when, and to how many sockets.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// The webhook queue.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
pub enum CertCommand {
    /// Write a self-signed key and certificate for this box.
    SelfSigned {
        /// Host name (repeatable).
        #[arg(long, required = true)]
        host: Vec<String>,
        /// IP address (repeatable).
        #[arg(long)]
        ip: Vec<String>,
        /// Output directory.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 825)]
        days: u32,
        /// Replace an existing pushbox.key / pushbox.crt in the output directory.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub enum EventsCommand {
    /// Show recent events (works while the server runs).
    Tail {
        #[command(flatten)]
        config: ConfigArgs,
        /// Only this channel.
        #[arg(long)]
        channel: Option<String>,
        /// How many recent events to show.
        #[arg(long, short = 'n', default_value_t = 20)]
        lines: usize,
        /// Keep printing new events.
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

#[derive(Subcommand)]
pub enum QueueCommand {
    /// Depth, oldest age, dead letters, disk use.
    Status {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// List dead letters.
    Dead {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Requeue dead letters.
    Retry {
        #[command(flatten)]
        config: ConfigArgs,
        /// The dead letter id.
        id: Option<String>,
        /// Requeue every dead letter.
        #[arg(long)]
        all: bool,
    },
}

impl Command {
    /// The configuration options of a command that reads the configuration.
    fn config_args(&self) -> Option<&ConfigArgs> {
        match self {
            Command::Serve { config, .. }
            | Command::Env { config, .. }
            | Command::Check { config }
            | Command::Trigger { config, .. }
            | Command::Events {
                command: EventsCommand::Tail { config, .. },
            }
            | Command::Queue {
                command:
                    QueueCommand::Status { config }
                    | QueueCommand::Dead { config }
                    | QueueCommand::Retry { config, .. },
            } => Some(config),
            Command::Keygen | Command::Cert { .. } | Command::Version => None,
        }
    }
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli
        .command
        .config_args()
        .is_some_and(|c| c.dev && c.config.is_some())
    {
        use clap::CommandFactory;
        Cli::command()
            .error(clap::error::ErrorKind::ArgumentConflict, DEV_AND_CONFIG)
            .exit();
    }
    if !matches!(cli.command, Command::Serve { .. }) {
        crate::sys::pipe::die_quietly_on_closed_stdout();
    }
    match cli.command {
        Command::Serve { config, host } => serve::run(&config, host.as_deref()),
        Command::Keygen => ops::keygen(),
        Command::Env { config, app, host } => ops::env(&config, app.as_deref(), host.as_deref()),
        Command::Check { config } => ops::check(&config),
        Command::Trigger {
            config,
            channel,
            event,
            data,
            app,
            url,
            ca,
        } => ops::trigger(
            &config,
            &ops::TriggerArgs {
                channel: &channel,
                event: &event,
                data: &data,
                app: app.as_deref(),
                url: url.as_deref(),
                ca: ca.as_deref(),
            },
        ),
        Command::Cert {
            command:
                CertCommand::SelfSigned {
                    host,
                    ip,
                    out,
                    days,
                    force,
                },
        } => ops::cert_self_signed(&host, &ip, &out, days, force),
        Command::Events {
            command:
                EventsCommand::Tail {
                    config,
                    channel,
                    lines,
                    follow,
                },
        } => events::tail(&config, channel.as_deref(), lines, follow),
        Command::Queue { command } => match command {
            QueueCommand::Status { config } => queue::status(&config),
            QueueCommand::Dead { config } => queue::dead(&config),
            QueueCommand::Retry { config, id, all } => queue::retry(&config, id.as_deref(), all),
        },
        Command::Version => {
            println!("pushbox {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}

/// Loads the configuration the way `serve` does (file, `.env` file, environment); with `--dev`,
/// the saved dev app of `serve --dev`.
pub fn load_config(args: &ConfigArgs) -> Result<crate::config::Config, crate::config::ConfigError> {
    let env = process_env(args)?;
    if args.dev {
        return crate::dev::existing(&env);
    }
    crate::config::load(args.config.as_deref(), &env)
}

/// The process environment overlaid on `--env-file`.
pub fn process_env(
    args: &ConfigArgs,
) -> Result<crate::config::ProcessEnv, crate::config::ConfigError> {
    let file = match &args.env_file {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(text) => crate::config::parse_env_file(&text),
            Err(e) => {
                return Err(crate::config::ConfigError::Read {
                    path: p.clone(),
                    error: e.to_string(),
                })
            }
        },
        None => Default::default(),
    };
    Ok(crate::config::ProcessEnv { file })
}

/// Prints a config error and returns exit status 78.
pub fn config_failure(e: crate::config::ConfigError) -> ExitCode {
    eprintln!("pushbox: config error: {e}");
    ExitCode::from(crate::config::EXIT_CONFIG as u8)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every flag and argument of every command says what it is for in `--help`.
    #[test]
    fn every_argument_of_every_command_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} --{}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(format!("{path} {} (the command itself)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut cmd = super::Cli::command();
        // Builds the generated --help / --version arguments too, so they are checked as well.
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "pushbox", &mut missing);
        assert!(
            missing.is_empty(),
            "arguments without help text: {missing:?}"
        );
    }
}
