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

/// A duration written as `"120s"`, `"500ms"`, `"2m"`, `"1h"`, or a whole number of seconds.
pub fn human_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

/// A size written as `"1MiB"`, `"512KiB"`, `"64KB"`, `"2000"`, or a whole number of bytes.
pub fn human_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Bytes(b) => Ok(b),
        Raw::Text(t) => parse_bytes(&t).map_err(serde::de::Error::custom),
    }
}

/// `"120s"`, `"500ms"`, `"2m"`, `"1h"`, `"90"` (seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let bad = || {
        format!("{text:?} is not a duration: write it like \"120s\", \"500ms\", \"2m\" or \"1h\"")
    };
    let n: u64 = n.parse().map_err(|_| bad())?;
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(bad()),
    };
    Ok(d)
}

/// `"1MiB"`, `"512KiB"`, `"64KB"`, `"1MB"`, `"2000"` (bytes).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let bad = || {
        format!("{text:?} is not a size: write it like \"1MiB\", \"512KiB\" or a number of bytes")
    };
    let n: u64 = n.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}
