//! Failed console sign-ins, per source address: a few mistakes are free, then each further
//! attempt must wait twice as long as the last, and past [`LOCKOUT_AFTER`] failures the
//! address is locked out for [`LOCKOUT`]. A refused attempt is answered 429 with
//! `Retry-After` *before* the password is looked at, so parallel connections gain nothing:
//! with 25 of them a fixed 300 ms delay still let ~80 guesses a second through; now one
//! address gets [`LOCKOUT_AFTER`] guesses per [`LOCKOUT`].
//!
//! An attempt is counted as a failure when it starts (so racing requests see it) and forgiven
//! when it succeeds. The table is bounded: past [`MAX_ADDRESSES`] the entries whose wait is
//! over go first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Mistakes an address may make without waiting (typos, a caps-lock key).
pub const FREE_FAILURES: u32 = 3;
/// Failures after which the address is locked out.
pub const LOCKOUT_AFTER: u32 = 10;
/// How long a lockout lasts.
pub const LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// The first wait after the free failures; it doubles each time (1, 2, 4 … 32 s).
const FIRST_WAIT: Duration = Duration::from_secs(1);
/// Addresses remembered at most (a LAN has far fewer; a bound against spoofed floods).
const MAX_ADDRESSES: usize = 10_000;

#[derive(Clone, Copy, Debug)]
struct Entry {
    failures: u32,
    /// No attempt from this address before then.
    not_before: Instant,
}

/// Why an attempt is refused unchecked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Throttled {
    /// Seconds until the next attempt may be made (`Retry-After`).
    pub retry_after: u64,
    /// The address is locked out (not just backing off).
    pub locked: bool,
}

impl Throttled {
    /// What to tell the person at the keyboard.
    pub fn message(&self) -> String {
        if self.locked {
            format!(
                "Too many failed sign-ins from this address: locked out for {} minutes. Check the console password ([console] password / PUSHBOX_CONSOLE_PASSWORD) and try again later, or restart pushbox to clear it",
                self.retry_after.div_ceil(60)
            )
        } else {
            format!(
                "Too many failed sign-ins from this address: wait {} s before trying again",
                self.retry_after
            )
        }
    }
}

#[derive(Default)]
pub struct LoginThrottle {
    table: Mutex<HashMap<IpAddr, Entry>>,
}

impl LoginThrottle {
    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, Entry>> {
        // Entries stay consistent whatever panicked while holding the lock.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An attempt from `ip` starts now: refused while the address must wait, else counted as
    /// a failure until [`succeeded`](Self::succeeded) forgives it. Returns the failures so far.
    pub fn attempt(&self, ip: IpAddr, now: Instant) -> Result<u32, Throttled> {
        let mut table = self.lock();
        if table.len() >= MAX_ADDRESSES && !table.contains_key(&ip) {
            table.retain(|_, e| e.not_before > now);
        }
        let e = table.entry(ip).or_insert(Entry {
            failures: 0,
            not_before: now,
        });
        if e.not_before > now {
            let wait = e.not_before - now;
            return Err(Throttled {
                retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                locked: e.failures >= LOCKOUT_AFTER,
            });
        }
        e.failures = if e.failures >= LOCKOUT_AFTER {
            // A lockout served: start over, with one mistake less to spare.
            FREE_FAILURES + 1
        } else {
            e.failures + 1
        };
        e.not_before = now + wait_after(e.failures);
        Ok(e.failures)
    }

    /// The attempt from `ip` was right: its failures are forgiven.
    pub fn succeeded(&self, ip: IpAddr) {
        self.lock().remove(&ip);
    }
}

/// How long an address waits after its `failures`-th failure.
fn wait_after(failures: u32) -> Duration {
    match failures {
        n if n >= LOCKOUT_AFTER => LOCKOUT,
        n if n <= FREE_FAILURES => Duration::ZERO,
        n => FIRST_WAIT * (1 << (n - FREE_FAILURES - 1).min(16)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_mistakes_then_doubling_waits_then_a_lockout() {
        let t = LoginThrottle::default();
        let ip: IpAddr = "192.168.1.50".parse().unwrap();
        let other: IpAddr = "192.168.1.51".parse().unwrap();
        let mut now = Instant::now();
        for n in 1..=FREE_FAILURES {
            assert_eq!(t.attempt(ip, now), Ok(n));
        }
        assert_eq!(t.attempt(ip, now), Ok(FREE_FAILURES + 1));
        let refused = t.attempt(ip, now).unwrap_err();
        assert_eq!((refused.retry_after, refused.locked), (1, false));
        assert!(t.attempt(other, now).is_ok(), "per address");
        for n in FREE_FAILURES + 2..=LOCKOUT_AFTER {
            now += Duration::from_secs(3600);
            assert_eq!(t.attempt(ip, now), Ok(n));
        }
        let locked = t.attempt(ip, now).unwrap_err();
        assert!(locked.locked && locked.retry_after == LOCKOUT.as_secs());
        assert!(locked.message().contains("locked out for 15 minutes"));
        now += LOCKOUT;
        assert_eq!(
            t.attempt(ip, now),
            Ok(FREE_FAILURES + 1),
            "after the lockout"
        );
        t.succeeded(ip);
        assert_eq!(t.attempt(ip, now), Ok(1), "a success forgives");
        assert_eq!(wait_after(FREE_FAILURES + 2), Duration::from_secs(2));
    }
}
