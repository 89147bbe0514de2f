//! The OS edge: everything pushbox asks of the operating system rather than of the network.
//!
//! This module owns:
//! * [`notify`]: the systemd notification protocol (`READY=1`, `STATUS=`, `STOPPING=1`) over
//!   `$NOTIFY_SOCKET`, and the watchdog task that pings `WATCHDOG=1` from inside the runtime;
//! * [`activation`]: systemd socket activation (`LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES`),
//!   turning inherited file descriptors into `std::net::TcpListener`s;
//! * [`limits`]: raising `RLIMIT_NOFILE` so that many idle connections fit;
//! * [`memory`]: the memory limit of the process's cgroup (`MemoryMax=`) and the use against it;
//! * [`privilege`]: dropping from root to an unprivileged user after the listeners are bound;
//! * [`pipe`]: the default `SIGPIPE` action for the commands that print (`… | head` ends them
//!   quietly instead of a panic); never for `serve`.
//!
//! Every function here is a no-op or a clear error when the OS feature is absent, never a panic.
//! Protocol, hub and session code must not call into this module; only `main`/`server` wiring does.
//!
//! Typical start-up order in `main`:
//! 1. [`activation::take_listeners`] and [`limits::raise_nofile_limit`], before any thread is
//!    spawned (they read and clear process-global environment variables);
//! 2. bind configured listeners, then [`privilege::drop_to_user`] if configured and running as root;
//! 3. inside the tokio runtime: [`notify::Notifier::from_env`], `spawn_watchdog`, and `ready()`
//!    once the listeners accept; `stopping()` at the start of graceful shutdown.

pub mod activation;
pub mod limits;
pub mod memory;
pub mod notify;
pub mod pipe;
pub mod privilege;
