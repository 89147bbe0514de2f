//! Close and error codes (PUSHER.md §6) and what pusher-js does with each.

/// A Pusher close/error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    TlsOnly = 4000,
    AppNotFound = 4001,
    AppDisabled = 4003,
    OverQuota = 4004,
    PathNotFound = 4005,
    InvalidVersion = 4006,
    UnsupportedProtocol = 4007,
    NoProtocol = 4008,
    Unauthorized = 4009,
    OverCapacity = 4100,
    ReconnectNow = 4200,
    PongTimeout = 4201,
    Inactivity = 4202,
    RateLimited = 4301,
}

impl CloseCode {
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The default human message for this code.
    pub fn message(self) -> &'static str {
        match self {
            CloseCode::TlsOnly => "Application only accepts TLS connections (use wss://)",
            CloseCode::AppNotFound => "Application does not exist: check the app key",
            CloseCode::AppDisabled => "Application disabled",
            CloseCode::OverQuota => "Application is over its connection quota",
            CloseCode::PathNotFound => "Path not found: connect to /app/{key}",
            CloseCode::InvalidVersion => "Invalid version string format",
            CloseCode::UnsupportedProtocol => "Unsupported protocol version (supported: 5 to 7)",
            CloseCode::NoProtocol => "No protocol version supplied",
            CloseCode::Unauthorized => "Connection unauthorized",
            CloseCode::OverCapacity => "Over capacity: reconnect later",
            CloseCode::ReconnectNow => "Server restarting: reconnect",
            CloseCode::PongTimeout => "Pong reply not received",
            CloseCode::Inactivity => "Closed after inactivity",
            CloseCode::RateLimited => "Client event rejected due to rate limit",
        }
    }
}
