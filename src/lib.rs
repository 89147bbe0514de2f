//! pushbox: a Pusher-compatible real-time server appliance.
pub mod api;
pub mod cli;
pub mod config;
pub mod console;
pub mod date;
pub mod dev;
pub mod eventlog;
pub mod hub;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod session;
pub mod spool;
pub mod sys;
pub mod transport;
pub mod webhooks;
pub mod x509;
