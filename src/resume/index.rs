//! Positions and the per-channel index of recent events. Every event the HTTP API fans out
//! gets the app's next position, assigned under the index's lock, which the publisher holds
//! through its whole fan-out: each connection's queue sees positions in increasing order, and
//! [`Index::head`] — the last position whose fan-out is complete — tells a connection that every
//! event up to it is already in its queue or on the wire (the proof of delivery rests on that).
//!
//! A channel has a ring only while a resumable connection is subscribed to it or an ended one
//! may still come back for it (its `keep_until`): an app without resume clients keeps nothing.
//! A ring is bounded by the window, `max_events` and `max_bytes`; everything a replay within
//! those caps needs is in it by construction, so a replay never waits for the disk. The event
//! log on disk is read only at start-up, to rebuild the rings after a graceful restart.
//!
//! In a cluster ([`Index::clustered`]) positions come from the bus (`StreamId::position`) and
//! the cluster's deliverer records every event of every channel: the client that comes back
//! here may have been subscribed on another node, so this node cannot know in advance which
//! channels someone may come back for. Each node's rings then hold every event since the node
//! started delivering ([`Index::start`], the `cover`), in bus order, bounded per channel by the
//! same window and caps.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::protocol::Frame;

/// One recorded event of a channel.
#[derive(Clone, Debug)]
pub struct Entry {
    pub pos: u64,
    /// Unix milliseconds when it was published.
    pub at_ms: u64,
    /// The socket id the publisher excluded (Laravel's `toOthers()`).
    pub except: Option<Box<str>>,
    pub frame: Frame,
}

#[derive(Debug)]
struct Ring {
    entries: VecDeque<Entry>,
    bytes: usize,
    /// Every event of the channel after this position is in `entries`.
    floor: u64,
    /// Resumable connections subscribed now.
    subs: usize,
    /// Unix ms until which an ended connection may come back for this channel.
    keep_until_ms: u64,
    /// Why the events at or below `floor` are gone: too old, or pushed out by a cap. A replay
    /// from below the floor fails with it, so an operator reading the metric raises the
    /// setting that matters (`window`, `max_events`, `max_bytes`).
    lost: Failure,
    /// Unix ms of the last event recorded (clustered: how long the floor must be remembered).
    last_ms: u64,
}

impl Ring {
    fn new(floor: u64) -> Ring {
        Ring {
            entries: VecDeque::new(),
            bytes: 0,
            floor,
            subs: 0,
            keep_until_ms: 0,
            // Nothing before the ring began was kept: as good as expired.
            lost: Failure::Expired,
            last_ms: 0,
        }
    }
}

/// What a replay may send at most, and for how long events are kept.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    pub window: Duration,
    pub max_events: usize,
    pub max_bytes: u64,
}

/// Why a channel's missed events were not replayed (the metric's `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Some missed events are gone: older than the window, or pushed out by the caps.
    Expired,
    /// More missed events than `max_events`.
    TooMany,
    /// More missed bytes than `max_bytes`.
    TooLarge,
    /// The connection's queue has no room for them now (several channels resumed at once:
    /// their replays share `server.outbound_queue`).
    QueueFull,
    /// The user was proven only after the channel's subscribe (a `pusher:signin` that came
    /// after it), and live events of the channel reached the socket in between: the missed
    /// ones would come after them, out of order.
    Overtaken,
}

impl Failure {
    pub const ALL: [Failure; 5] = [
        Failure::Expired,
        Failure::TooMany,
        Failure::TooLarge,
        Failure::QueueFull,
        Failure::Overtaken,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Failure::Expired => "expired",
            Failure::TooMany => "too_many",
            Failure::TooLarge => "too_large",
            Failure::QueueFull => "queue_full",
            Failure::Overtaken => "overtaken",
        }
    }
}

/// An app's positions and rings (behind the app's resume lock).
#[derive(Debug, Default)]
pub struct Index {
    /// The last position assigned (and, while the lock is free, fanned out).
    head: u64,
    rings: HashMap<String, Ring>,
    last_sweep_ms: u64,
    /// Clustered: every channel's events are recorded, from `cover` on.
    clustered: bool,
    /// Clustered: every event after this position reached this node's rings (a channel
    /// without a ring had none since).
    cover: u64,
}

/// How often rings are swept of expired events and channels nobody may come back for.
const SWEEP_EVERY_MS: u64 = 1000;

impl Index {
    /// The index of a clustered node (see the module doc).
    pub fn clustered() -> Index {
        Index {
            clustered: true,
            ..Index::default()
        }
    }

    /// Clustered: the deliverer starts (or restarts after a gap) at bus position `pos`: what
    /// came before it was not recorded here, so no ring may claim to hold it.
    pub fn start(&mut self, pos: u64) {
        self.cover = self.cover.max(pos);
        self.head = self.head.max(pos);
        for ring in self.rings.values_mut() {
            if ring.floor < pos {
                ring.entries.retain(|e| e.pos > pos);
                ring.bytes = ring.entries.iter().map(|e| e.frame.len()).sum();
                ring.floor = pos;
                ring.lost = Failure::Expired;
            }
        }
    }

    /// Clustered: the deliverer fanned out everything up to bus position `pos`.
    pub fn advance(&mut self, pos: u64) {
        self.head = self.head.max(pos);
    }

    pub fn head(&self) -> u64 {
        self.head
    }

    /// Positions continue after a restart: never below what the previous run assigned.
    pub fn raise_head(&mut self, pos: u64) {
        self.head = self.head.max(pos);
    }

    /// The next position, for an event about to be fanned out.
    pub fn next_position(&mut self) -> u64 {
        self.head += 1;
        self.head
    }

    /// Whether events of `channel` are being kept.
    pub fn wants(&self, channel: &str) -> bool {
        self.clustered || self.rings.contains_key(channel)
    }

    /// Keeps `frame` for `channel` if it has a ring (clustered: always), evicting what the
    /// caps no longer allow.
    pub fn record(&mut self, channel: &str, entry: Entry, caps: &Caps) {
        let now = entry.at_ms;
        if self.clustered && !self.rings.contains_key(channel) {
            self.rings.insert(channel.to_owned(), Ring::new(self.cover));
        }
        if let Some(ring) = self.rings.get_mut(channel) {
            ring.last_ms = now;
            ring.bytes += entry.frame.len();
            ring.entries.push_back(entry);
            evict(ring, caps, now);
        }
        if now >= self.last_sweep_ms + SWEEP_EVERY_MS {
            self.sweep(caps, now);
        }
    }

    /// A resumable connection subscribed to `channel`: keep its events from now on.
    pub fn interest(&mut self, channel: &str) {
        // Clustered, every event since `cover` is recorded: a channel without a ring had none.
        let head = if self.clustered {
            self.cover
        } else {
            self.head
        };
        let ring = self
            .rings
            .entry(channel.to_owned())
            .or_insert_with(|| Ring::new(head));
        ring.subs += 1;
    }

    /// A resumable connection left `channel` (or ended): keep its events until `until_ms`, in
    /// case it comes back.
    pub fn release(&mut self, channel: &str, until_ms: u64) {
        if let Some(ring) = self.rings.get_mut(channel) {
            ring.subs = ring.subs.saturating_sub(1);
            ring.keep_until_ms = ring.keep_until_ms.max(until_ms);
        }
    }

    /// Keeps `channel`'s ring, if it still has one, until `until_ms` (a connection that
    /// inherited it and did not re-subscribe ended).
    pub fn extend(&mut self, channel: &str, until_ms: u64) {
        if let Some(ring) = self.rings.get_mut(channel) {
            ring.keep_until_ms = ring.keep_until_ms.max(until_ms);
        }
    }

    /// Keeps `channel`'s ring (created empty, with everything after `floor` to come) until
    /// `until_ms`: a lineage loaded at start-up may come back for it.
    pub fn keep(&mut self, channel: &str, floor: u64, until_ms: u64) {
        let ring = self
            .rings
            .entry(channel.to_owned())
            .or_insert_with(|| Ring::new(floor));
        ring.keep_until_ms = ring.keep_until_ms.max(until_ms);
    }

    /// The events of `channel` after position `from`, skipping those excluded for one of
    /// `chain` (the client's own socket ids): all of them or a [`Failure`].
    pub fn missed(
        &self,
        channel: &str,
        from: u64,
        chain: &[String],
        caps: &Caps,
        now_ms: u64,
    ) -> Result<Vec<Frame>, Failure> {
        self.missed_until(channel, from, u64::MAX, chain, caps, now_ms)
    }

    /// [`missed`](Self::missed) up to position `until` (clustered: a joining socket's gate;
    /// what came after it reaches the socket with the cluster's own catch-up).
    pub fn missed_until(
        &self,
        channel: &str,
        from: u64,
        until: u64,
        chain: &[String],
        caps: &Caps,
        now_ms: u64,
    ) -> Result<Vec<Frame>, Failure> {
        if from >= self.head || from >= until {
            return Ok(Vec::new());
        }
        let Some(ring) = self.rings.get(channel) else {
            // Clustered, no ring means no event since `cover`.
            return if self.clustered && from >= self.cover {
                Ok(Vec::new())
            } else {
                Err(Failure::Expired)
            };
        };
        if from < ring.floor {
            return Err(ring.lost);
        }
        let window = caps.window.as_millis() as u64;
        let mut out = Vec::new();
        let mut bytes = 0u64;
        let start = ring.entries.partition_point(|e| e.pos <= from);
        for e in ring.entries.range(start..).take_while(|e| e.pos <= until) {
            if e.at_ms + window < now_ms {
                return Err(Failure::Expired);
            }
            if e.except
                .as_deref()
                .is_some_and(|x| chain.iter().any(|s| s == x))
            {
                continue;
            }
            bytes += e.frame.len() as u64;
            out.push(e.frame.clone());
            if out.len() > caps.max_events {
                return Err(Failure::TooMany);
            }
            if bytes > caps.max_bytes {
                return Err(Failure::TooLarge);
            }
        }
        Ok(out)
    }

    /// Whether an event of `channel` after position `pos` is kept: one was fanned out since.
    pub fn has_after(&self, channel: &str, pos: u64) -> bool {
        self.rings
            .get(channel)
            .and_then(|r| r.entries.back())
            .is_some_and(|e| e.pos > pos)
    }

    /// Drops events past the window and rings nobody subscribes to or may come back for.
    /// Clustered, a ring is also kept three windows after its last event: its floor says that
    /// events were lost, and a lineage (kept two windows after its connection ended, which was
    /// at most a window after an event it did not prove) may still ask from below it.
    pub fn sweep(&mut self, caps: &Caps, now_ms: u64) {
        self.last_sweep_ms = now_ms;
        let three = 3 * caps.window.as_millis() as u64;
        let clustered = self.clustered;
        self.rings.retain(|_, ring| {
            evict(ring, caps, now_ms);
            ring.subs > 0
                || ring.keep_until_ms > now_ms
                || (clustered && (!ring.entries.is_empty() || ring.last_ms + three > now_ms))
        });
    }

    /// Puts back an event read from the event log at start-up (in position order per channel).
    pub fn restore(&mut self, channel: &str, entry: Entry, caps: &Caps, now_ms: u64) {
        self.head = self.head.max(entry.pos);
        if let Some(ring) = self.rings.get_mut(channel) {
            if entry.pos <= ring.floor || ring.entries.back().is_some_and(|e| e.pos >= entry.pos) {
                return;
            }
            ring.bytes += entry.frame.len();
            ring.entries.push_back(entry);
            evict(ring, caps, now_ms);
        }
    }

    /// Moves every ring's floor down to `floor` while it holds nothing: after a restart, the
    /// event log was read from the first event after `floor`.
    pub fn set_empty_floors(&mut self, floor: u64) {
        for ring in self.rings.values_mut() {
            if ring.entries.is_empty() {
                ring.floor = ring.floor.min(floor);
            }
        }
    }

    /// (channels with a ring, events kept, bytes kept), for the metrics.
    pub fn size(&self) -> (usize, usize, usize) {
        let events = self.rings.values().map(|r| r.entries.len()).sum();
        let bytes = self.rings.values().map(|r| r.bytes).sum();
        (self.rings.len(), events, bytes)
    }
}

/// Evicts from the front what the window or the caps no longer allow; the floor follows.
fn evict(ring: &mut Ring, caps: &Caps, now_ms: u64) {
    let window = caps.window.as_millis() as u64;
    // One more than a replay may send: a replay of exactly max_events is still whole.
    while let Some(front) = ring.entries.front() {
        let old = front.at_ms + window < now_ms;
        let over = ring.entries.len() > caps.max_events + 1
            || ring.bytes as u64 > caps.max_bytes + front.frame.len() as u64;
        if !(old || over) {
            break;
        }
        ring.lost = if old {
            Failure::Expired
        } else if ring.entries.len() > caps.max_events + 1 {
            Failure::TooMany
        } else {
            Failure::TooLarge
        };
        ring.floor = front.pos;
        ring.bytes -= front.frame.len();
        ring.entries.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> Caps {
        Caps {
            window: Duration::from_secs(120),
            max_events: 3,
            max_bytes: 1000,
        }
    }

    fn entry(pos: u64, at_ms: u64, except: Option<&str>) -> Entry {
        Entry {
            pos,
            at_ms,
            except: except.map(Into::into),
            frame: Frame::from(format!("e{pos}")),
        }
    }

    fn publish(ix: &mut Index, ch: &str, at_ms: u64, except: Option<&str>) -> u64 {
        let pos = ix.next_position();
        ix.record(ch, entry(pos, at_ms, except), &caps());
        pos
    }

    fn names(v: Vec<Frame>) -> Vec<String> {
        v.iter().map(|f| f.as_str().to_owned()).collect()
    }

    #[test]
    fn a_channel_is_kept_only_from_the_first_interest_on() {
        let mut ix = Index::default();
        publish(&mut ix, "c", 1000, None);
        assert!(!ix.wants("c"));
        ix.interest("c");
        let from = ix.head();
        publish(&mut ix, "c", 1001, None);
        publish(&mut ix, "other", 1002, None);
        publish(&mut ix, "c", 1003, Some("1.1"));
        let got = ix.missed("c", from, &[], &caps(), 1004).unwrap();
        assert_eq!(names(got), ["e2", "e4"]);
        let got = ix
            .missed("c", from, &["1.1".into()], &caps(), 1004)
            .unwrap();
        assert_eq!(
            names(got),
            ["e2"],
            "the client's own toOthers event is skipped"
        );
        assert_eq!(
            ix.missed("c", 0, &[], &caps(), 1004),
            Err(Failure::Expired),
            "before the ring began"
        );
        assert_eq!(ix.missed("c", 4, &[], &caps(), 1004), Ok(vec![]));
    }

    #[test]
    fn all_or_nothing_past_the_caps_and_the_window() {
        let mut ix = Index::default();
        ix.interest("c");
        for i in 0..4 {
            publish(&mut ix, "c", 1000 + i, None);
        }
        assert_eq!(ix.missed("c", 1, &[], &caps(), 2000).unwrap().len(), 3);
        assert_eq!(ix.missed("c", 0, &[], &caps(), 2000), Err(Failure::TooMany));
        publish(&mut ix, "c", 1005, None);
        assert_eq!(
            ix.missed("c", 0, &[], &caps(), 2000),
            Err(Failure::TooMany),
            "pushed out by max_events: the reason says which setting to raise (F3)"
        );
        let late = 1003 + 120_000;
        assert_eq!(ix.missed("c", 2, &[], &caps(), late), Err(Failure::Expired));
        let big = Caps {
            max_bytes: 5,
            ..caps()
        };
        assert_eq!(ix.missed("c", 2, &[], &big, 2000), Err(Failure::TooLarge));
    }

    #[test]
    fn events_pushed_out_say_which_cap_or_the_window() {
        let small = Caps {
            max_bytes: 4,
            ..caps()
        };
        let mut ix = Index::default();
        ix.interest("c");
        for i in 0..3 {
            publish(&mut ix, "c", 1000 + i, None);
        }
        let pos = ix.next_position();
        ix.record("c", entry(pos, 1003, None), &small);
        assert_eq!(
            ix.missed("c", 0, &[], &small, 2000),
            Err(Failure::TooLarge),
            "pushed out by max_bytes"
        );
        ix.sweep(&caps(), 1003 + 120_001);
        assert_eq!(
            ix.missed("c", 3, &[], &caps(), 1003 + 120_001),
            Err(Failure::Expired),
            "aged out of the window"
        );
    }

    #[test]
    fn clustered_every_channel_is_kept_from_the_start_on_and_replay_stops_at_the_gate() {
        let mut ix = Index::clustered();
        ix.start(10);
        let rec = |ix: &mut Index, ch: &str, pos: u64| {
            ix.record(ch, entry(pos, 1000, None), &caps());
            ix.advance(pos);
        };
        rec(&mut ix, "a", 11);
        rec(&mut ix, "b", 12);
        rec(&mut ix, "a", 13);
        assert_eq!(
            names(ix.missed("a", 10, &[], &caps(), 1001).unwrap()),
            ["e11", "e13"]
        );
        assert_eq!(
            names(ix.missed_until("a", 10, 12, &[], &caps(), 1001).unwrap()),
            ["e11"],
            "up to the gate only"
        );
        assert_eq!(ix.missed("quiet", 10, &[], &caps(), 1001), Ok(vec![]));
        assert_eq!(
            ix.missed("quiet", 9, &[], &caps(), 1001),
            Err(Failure::Expired),
            "before this node started: all or nothing"
        );
        assert_eq!(ix.missed("a", 5, &[], &caps(), 1001), Err(Failure::Expired));
        // A gap: nothing before it is trusted any more.
        ix.start(20);
        assert_eq!(
            ix.missed("a", 12, &[], &caps(), 1001),
            Err(Failure::Expired)
        );
        ix.sweep(&caps(), 1002);
        assert!(
            ix.wants("a") && ix.rings.contains_key("a"),
            "floor remembered"
        );
        ix.sweep(&caps(), 1000 + 3 * 120_000 + 1);
        assert!(!ix.rings.contains_key("a"));
    }

    #[test]
    fn rings_go_when_nobody_may_come_back() {
        let mut ix = Index::default();
        ix.interest("c");
        ix.release("c", 5000);
        ix.sweep(&caps(), 4000);
        assert!(ix.wants("c"));
        ix.sweep(&caps(), 5001);
        assert!(!ix.wants("c"));
    }
}
