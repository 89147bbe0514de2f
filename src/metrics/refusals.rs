//! What the box refused or cut off to protect itself, by reason: the counters behind
//! `pushbox_refusals_total{reason}`. Each one is a stranger (or a bad day) the box said no to;
//! a rising count says which defence is busy.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a request or connection was refused or closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A new connection answered 503 at once: the open-files reserve was reached and no slow
    /// HTTP connection could be closed to make room.
    FdReserve,
    /// A slow or idle HTTP connection closed to make room for a new one near the fd limit.
    Evicted,
    /// An HTTP connection closed at a deadline (head, body, idle, a response nobody reads).
    HttpTimeout,
    /// A WebSocket or fallback session refused: its address holds `max_connections_per_ip`.
    PerAddress,
    /// A console sign-in with a wrong password or app secret.
    LoginFailed,
    /// A console sign-in refused unchecked (429): too many failures from that address.
    LoginThrottled,
    /// A fallback session closed with 4100: its client did not keep up.
    SlowFallback,
    /// A new WebSocket or fallback session refused with 4100: the process is near its cgroup's
    /// memory limit (`server.memory_pressure_percent`).
    MemoryPressure,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::FdReserve,
        Reason::Evicted,
        Reason::HttpTimeout,
        Reason::PerAddress,
        Reason::LoginFailed,
        Reason::LoginThrottled,
        Reason::SlowFallback,
        Reason::MemoryPressure,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reason::FdReserve => "fd_reserve",
            Reason::Evicted => "evicted",
            Reason::HttpTimeout => "http_timeout",
            Reason::PerAddress => "per_address",
            Reason::LoginFailed => "login_failed",
            Reason::LoginThrottled => "login_throttled",
            Reason::SlowFallback => "slow_fallback",
            Reason::MemoryPressure => "memory_pressure",
        }
    }
}

/// One counter per [`Reason`].
#[derive(Debug, Default)]
pub struct Refusals([AtomicU64; Reason::ALL.len()]);

impl Refusals {
    pub fn count(&self, r: Reason) {
        self.0[r as usize].fetch_add(1, Relaxed);
    }

    pub fn get(&self, r: Reason) -> u64 {
        self.0[r as usize].load(Relaxed)
    }
}
