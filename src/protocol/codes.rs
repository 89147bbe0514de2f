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
    pub const ALL: [CloseCode; 14] = [
        CloseCode::TlsOnly,
        CloseCode::AppNotFound,
        CloseCode::AppDisabled,
        CloseCode::OverQuota,
        CloseCode::PathNotFound,
        CloseCode::InvalidVersion,
        CloseCode::UnsupportedProtocol,
        CloseCode::NoProtocol,
        CloseCode::Unauthorized,
        CloseCode::OverCapacity,
        CloseCode::ReconnectNow,
        CloseCode::PongTimeout,
        CloseCode::Inactivity,
        CloseCode::RateLimited,
    ];

    pub fn code(self) -> u16 {
        self as u16
    }

    /// The Pusher code `code` names, if it is one of ours.
    pub fn from_code(code: u16) -> Option<CloseCode> {
        CloseCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// A short snake_case name, for metrics labels (`reason="app_not_found"`).
    pub fn label(self) -> &'static str {
        match self {
            CloseCode::TlsOnly => "tls_only",
            CloseCode::AppNotFound => "app_not_found",
            CloseCode::AppDisabled => "app_disabled",
            CloseCode::OverQuota => "over_quota",
            CloseCode::PathNotFound => "path_not_found",
            CloseCode::InvalidVersion => "invalid_version",
            CloseCode::UnsupportedProtocol => "unsupported_protocol",
            CloseCode::NoProtocol => "no_protocol",
            CloseCode::Unauthorized => "unauthorized",
            CloseCode::OverCapacity => "over_capacity",
            CloseCode::ReconnectNow => "reconnect",
            CloseCode::PongTimeout => "pong_timeout",
            CloseCode::Inactivity => "inactivity",
            CloseCode::RateLimited => "rate_limited",
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_and_has_a_distinct_label() {
        for c in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(c.code()), Some(c));
        }
        let mut labels: Vec<_> = CloseCode::ALL.iter().map(|c| c.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), CloseCode::ALL.len());
        assert_eq!(CloseCode::from_code(4002), None);
        assert_eq!(
            CloseCode::from_code(4001).map(CloseCode::label),
            Some("app_not_found")
        );
    }
}
