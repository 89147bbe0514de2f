//! Durations in the TOML file. The keys and their units are a contract with users' files
//! (`activity_timeout = 30` is seconds, `batch_ms = 10` is milliseconds), so the file keeps plain
//! integers while the Rust types hold `Duration`s: each field names its unit once, here, through
//! `#[serde(deserialize_with = "…")]`, and no consumer converts again.

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// A whole number of seconds.
pub fn secs<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_secs)
}

/// A whole number of milliseconds.
pub fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}

/// An optional whole number of seconds (absent: the section's default).
pub fn opt_secs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    secs(d).map(Some)
}

/// The unit a key is written in, to show a value back to the user as they wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Secs,
    Millis,
}

impl Unit {
    /// `d` as the integer the user would write for this key.
    pub fn count(self, d: Duration) -> u128 {
        match self {
            Unit::Secs => u128::from(d.as_secs()),
            Unit::Millis => d.as_millis(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Unit::Secs => "seconds",
            Unit::Millis => "milliseconds",
        }
    }
}

/// A span written as a string with a unit (`"15s"`, `"500ms"`, `"2m"`) or a whole number of
/// seconds (`15`), for the keys whose contract is written that way (`[cluster] lease`).
pub fn span<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Span {
        Secs(u64),
        Text(String),
    }
    match Span::deserialize(d)? {
        Span::Secs(s) => Ok(Duration::from_secs(s)),
        Span::Text(t) => parse_span(&t).map_err(serde::de::Error::custom),
    }
}

/// `"15s"`, `"500ms"`, `"2m"`, `"1h"` as a `Duration`; the error says what to write.
pub fn parse_span(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || format!("{text:?} is not a duration: write it like \"15s\", \"500ms\" or \"2m\"");
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(bad()),
    };
    Ok(d)
}
