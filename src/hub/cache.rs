//! `Caches`: the last event of each cache channel (`cache-*`), replayed to whoever subscribes
//! within [`CACHE_TTL`]. Bounded in time and in count: expired entries are swept on insert (at
//! most once a [`SWEEP_EVERY`]), and past [`MAX_CACHED`] channels the oldest quarter goes, so
//! channel names published once and never again don't stay in memory for the process's life.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::protocol::Frame;

/// How long a cache channel keeps its last event (Pusher: 30 minutes).
pub const CACHE_TTL: Duration = Duration::from_secs(30 * 60);

/// Least time between two sweeps of expired entries: a sweep walks every entry, so a busy
/// publisher pays for it once a minute, not on every event.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Most cache channels kept per app. An evicted channel's next subscriber gets
/// `pusher:cache_miss` (and the app its `cache_miss` webhook), as after the TTL.
pub const MAX_CACHED: usize = 10_000;

#[derive(Default)]
pub struct Caches {
    entries: HashMap<String, (Frame, Instant)>,
    /// When the next insert sweeps expired entries (`None`: at the first).
    next_sweep: Option<Instant>,
}

impl Caches {
    /// Keeps `frame` as `channel`'s last event, published at `now`.
    pub fn insert(&mut self, channel: &str, frame: Frame, now: Instant) {
        if self.next_sweep.is_none_or(|t| now >= t) {
            self.sweep(now);
        }
        if let Some(entry) = self.entries.get_mut(channel) {
            *entry = (frame, now);
            return;
        }
        if self.entries.len() >= MAX_CACHED {
            self.sweep(now);
            if self.entries.len() >= MAX_CACHED {
                self.evict_oldest_quarter();
            }
        }
        self.entries.insert(channel.to_owned(), (frame, now));
    }

    /// `channel`'s last event, if younger than the TTL, and how long it has left.
    pub fn get(&self, channel: &str, now: Instant) -> Option<(&Frame, Duration)> {
        let (frame, at) = self.entries.get(channel)?;
        let left = CACHE_TTL.checked_sub(now.saturating_duration_since(*at))?;
        (!left.is_zero()).then_some((frame, left))
    }

    /// Drops entries older than the TTL.
    fn sweep(&mut self, now: Instant) {
        self.entries
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < CACHE_TTL);
        self.next_sweep = Some(now + SWEEP_EVERY);
    }

    /// Drops the oldest quarter at once: the next `MAX_CACHED / 4` new channels insert without
    /// another walk over the map.
    fn evict_oldest_quarter(&mut self) {
        let mut ages: Vec<Instant> = self.entries.values().map(|(_, at)| *at).collect();
        let (_, cutoff, _) = ages.select_nth_unstable(self.entries.len() / 4);
        let cutoff = *cutoff;
        self.entries.retain(|_, (_, at)| *at > cutoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_lives_for_the_ttl_and_is_swept_after_it() {
        let t0 = Instant::now();
        let mut c = Caches::default();
        c.insert("cache-a", Frame::from("a"), t0);
        let (f, left) = c.get("cache-a", t0 + Duration::from_secs(60)).unwrap();
        assert_eq!(f.as_str(), "a");
        assert_eq!(left, CACHE_TTL - Duration::from_secs(60));
        assert!(c.get("cache-a", t0 + CACHE_TTL).is_none(), "expired");
        assert_eq!(c.entries.len(), 1, "kept until a sweep");
        // An insert within a minute of the last sweep doesn't walk the map.
        c.insert("cache-b", Frame::from("b"), t0 + Duration::from_secs(1));
        assert_eq!(c.entries.len(), 2);
        c.insert("cache-c", Frame::from("c"), t0 + CACHE_TTL);
        assert!(c.get("cache-a", t0).is_none(), "swept");
        assert_eq!(
            c.entries.len(),
            2,
            "b (published a second later) lives on, c is new"
        );
        // Publishing again renews an entry.
        c.insert("cache-b", Frame::from("b2"), t0 + CACHE_TTL);
        let later = t0 + CACHE_TTL + Duration::from_secs(10);
        assert_eq!(c.get("cache-b", later).unwrap().0.as_str(), "b2");
    }

    #[test]
    fn past_the_cap_the_oldest_quarter_goes() {
        let t0 = Instant::now();
        let mut c = Caches::default();
        for i in 0..MAX_CACHED {
            c.insert(
                &format!("cache-{i}"),
                Frame::from("x"),
                t0 + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(c.entries.len(), MAX_CACHED);
        let now = t0 + Duration::from_secs(20);
        c.insert("cache-new", Frame::from("n"), now);
        assert!(c.entries.len() <= MAX_CACHED - MAX_CACHED / 4 + 1);
        assert!(c.get("cache-0", now).is_none(), "the oldest went");
        assert!(c.get(&format!("cache-{}", MAX_CACHED - 1), now).is_some());
        assert!(c.get("cache-new", now).is_some());
    }
}
