//! The deliverer of one app: the only task that hands bus entries to this node's sockets, so
//! every node delivers in the bus's order.
//!
//! * **Dedupe.** An API event is skipped when its origin already delivered a seq at or above
//!   its own (a forward repeated after Redis lost data), or when this node delivered it itself
//!   while Redis was unreachable (degraded mode: [`Msg::Local`]).
//! * **Joining sockets, no hole and no overlap.** The subscribe script returns the bus id its
//!   snapshot is consistent with (the gate). A socket is attached only once the deliverer has
//!   passed the gate: its first frames (the snapshot) go out, then the entries after the gate
//!   that were already delivered to the others are replayed to it from a ring of recent
//!   entries, then it takes the live ones. A gate older than the ring (the node was far
//!   behind) closes the socket with 4200 so the client subscribes again.
//! * **Resume.** Every API event gets its bus position (`StreamId::position`, the same on
//!   every node) and goes into the app's resume rings before its fan-out, and the head moves
//!   once the fan-out is complete, as a single box does under its index lock. A resumable
//!   socket gets its missed events up to its gate from those rings, right after its snapshot
//!   and before the entries after the gate: all of them or none (`resume_failed`).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::bus::{Entry, Kind, StreamId};
use super::status::Status;
use super::watchlist::{self, WatchJoin};
use crate::hub::{App, BusEvent, Outbox};
use crate::protocol::{message, CloseCode, Frame};
use crate::resume::{self, AppResume, Plan};

/// Recent entries kept for sockets whose gate the deliverer has already passed. A subscribe
/// answers in well under a millisecond; 4,096 entries is seconds of a busy bus.
pub const RING: usize = 4096;

/// Own events delivered locally while Redis was unreachable, remembered until they come
/// back from the bus. Past this, the oldest are forgotten (and would be delivered twice).
pub const LOCAL_MAX: usize = 1_000_000;

/// A socket to attach once the deliverer reaches `gate`.
pub struct Activation {
    pub outbox: Arc<Outbox>,
    pub channel: String,
    pub user_id: Option<String>,
    pub gate: StreamId,
    /// `subscription_succeeded` (and the cached event of a cache channel).
    pub first: Vec<Frame>,
    /// A resumable subscribe: what it missed, replayed after `first`.
    pub resume: Option<Plan>,
}

/// The bus's entries of the last resume window before the reader's start, read once at start
/// so that a node that (re)starts can replay them to clients that resume on it (they are put
/// in the rings, not delivered).
pub struct History {
    /// Every entry at or after this position is in `entries`.
    pub cover: u64,
    pub entries: Vec<Entry>,
}

impl History {
    /// `entries`, which hold every bus entry from `from` on.
    pub fn complete_after(from: StreamId, entries: Vec<Entry>) -> History {
        History {
            cover: from.position().saturating_sub(1),
            entries,
        }
    }
}

pub enum Msg {
    /// Where the reader starts: every entry up to `at` is history; with resume on, the recent
    /// part of it.
    Start {
        at: StreamId,
        history: Option<History>,
    },
    Entries(Vec<Entry>),
    Activate(Activation),
    /// The socket left the channel (after the unsubscribe script ran).
    Detach {
        conn_id: u64,
        channel: String,
    },
    /// Degraded mode: an event of this node's, delivered here before it reached the bus.
    Local {
        q: u64,
        kind: Kind,
    },
    /// Entries after the cursor were trimmed away: the local sockets missed them for good.
    Gap,
    /// A signed-in connection to attach as a watcher once past its gate (`watch`).
    Watch(WatchJoin),
    /// The connection's signin went (after the signout script ran).
    Unwatch {
        conn_id: u64,
        watchlist: Vec<String>,
    },
}

pub struct Deliverer {
    pub app: Arc<App>,
    /// This node's origin name on the bus.
    pub origin: String,
    pub status: Arc<Status>,
    pub index: usize,
    cursor: StreamId,
    /// Delivered entries, newest last; entries at or below `floor` are gone from it.
    ring: VecDeque<Arc<Entry>>,
    floor: StreamId,
    seen: HashMap<String, u64>,
    local: BTreeSet<u64>,
    pending: Vec<Activation>,
    watches: Vec<WatchJoin>,
    /// The last resume position given (positions only go up, see [`Deliverer::position`]).
    last_pos: u64,
}

/// What the deliverer does with an entry.
#[derive(Debug, PartialEq, Eq)]
enum Fresh {
    Deliver,
    /// Delivered here already while Redis was unreachable: only kept for resume, at its bus
    /// position.
    Keep,
    Skip,
}

impl Deliverer {
    pub fn new(app: Arc<App>, origin: String, status: Arc<Status>, index: usize) -> Deliverer {
        Deliverer {
            app,
            origin,
            status,
            index,
            cursor: StreamId::ZERO,
            ring: VecDeque::new(),
            floor: StreamId::ZERO,
            seen: HashMap::new(),
            local: BTreeSet::new(),
            pending: Vec::new(),
            watches: Vec::new(),
            last_pos: 0,
        }
    }

    /// The resume position of bus entry `id`: its [`StreamId::position`], raised past the last
    /// one given in the case that id's sequence saturated.
    fn position(&mut self, id: StreamId) -> u64 {
        let pos = id.position().max(self.last_pos + 1);
        self.last_pos = pos;
        pos
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        while let Some(msg) = rx.recv().await {
            self.handle(msg);
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Start { at, history } => {
                if at > self.cursor {
                    self.cursor = at;
                    // Nothing before the start is in the ring.
                    self.floor = at;
                    self.last_pos = self.last_pos.max(at.position());
                }
                if let Some(r) = self.app.resume() {
                    match history {
                        Some(h) => self.restore(r, h),
                        None => r.start(self.last_pos),
                    }
                }
                self.activate_due();
            }
            Msg::Entries(entries) => {
                let n = entries.len() as i64;
                for e in entries {
                    self.entry(e);
                }
                self.status.readers[self.index].queued.fetch_sub(n, Relaxed);
            }
            Msg::Activate(a) => {
                self.pending.push(a);
                self.activate_due();
            }
            Msg::Detach { conn_id, channel } => {
                self.pending
                    .retain(|a| !(a.outbox.conn_id == conn_id && a.channel == channel));
                self.app.detach(conn_id, &channel);
            }
            Msg::Watch(w) => {
                self.watches.push(w);
                self.activate_due();
            }
            Msg::Unwatch { conn_id, watchlist } => {
                self.watches.retain(|w| w.outbox.conn_id != conn_id);
                self.app.watch_detach(conn_id, &watchlist);
            }
            Msg::Gap => {
                self.app.close_subscribers(
                    CloseCode::ReconnectNow.code(),
                    "This node missed part of the cluster's bus: reconnect",
                );
                self.ring.clear();
                self.floor = self.cursor;
                if let Some(r) = self.app.resume() {
                    // The rings miss those entries too: no replay may reach across the gap.
                    r.start(self.last_pos);
                }
            }
            Msg::Local { q, kind } => {
                if self.seen.get(&self.origin).is_some_and(|s| *s >= q) {
                    // Its forward did reach the bus (only the answer was lost): delivered.
                    return;
                }
                if self.local.len() >= LOCAL_MAX {
                    self.local.pop_first();
                }
                self.local.insert(q);
                let e = Entry {
                    id: self.cursor,
                    kind,
                };
                // No position yet: it is kept for resume when it comes back from the bus.
                self.fan_out(&e, None);
            }
        }
    }

    /// Puts the history's API events into the resume rings at their bus positions and times
    /// (not delivered: the sockets here are new), the rings complete from `cover` on.
    fn restore(&self, r: &AppResume, h: History) {
        r.start(h.cover.min(self.last_pos));
        let mut last = h.cover;
        for e in &h.entries {
            let pos = e.id.position().max(last + 1);
            last = pos;
            if let Some((channels, event)) = bus_event(&e.kind) {
                self.app.keep_entry(pos, e.id.ms, channels, event);
            }
        }
    }

    fn entry(&mut self, e: Entry) {
        if e.id <= self.cursor {
            return;
        }
        self.cursor = e.id;
        let fresh = self.fresh(&e.kind);
        let pos = self.position(e.id);
        if let (Fresh::Keep, Some((channels, event))) = (&fresh, bus_event(&e.kind)) {
            self.app.keep_entry(pos, resume::now_ms(), channels, event);
        }
        if fresh == Fresh::Deliver {
            self.fan_out(&e, Some(pos));
            if self.ring.len() >= RING {
                if let Some(old) = self.ring.pop_front() {
                    self.floor = old.id;
                }
            }
            self.ring.push_back(Arc::new(e));
        }
        self.activate_due();
    }

    /// Whether an entry is delivered at all (see the module doc, dedupe).
    fn fresh(&mut self, kind: &Kind) -> Fresh {
        let Kind::Event { origin, q, .. } = kind else {
            return Fresh::Deliver;
        };
        let seen = self.seen.entry(origin.clone()).or_insert(0);
        if *q <= *seen {
            return Fresh::Skip;
        }
        *seen = *q;
        if origin == &self.origin && self.local.remove(q) {
            Fresh::Keep
        } else {
            Fresh::Deliver
        }
    }

    /// Delivers an entry to this node's sockets; an API event at `pos` also goes into the
    /// resume rings (see [`App::publish_entry`]).
    fn fan_out(&self, e: &Entry, pos: Option<u64>) {
        match &e.kind {
            Kind::Terminate { user } => {
                self.app.terminate_user(user);
            }
            Kind::Watch { user, online } => {
                self.app.watch_event(user, *online);
            }
            Kind::Event { .. } => {
                if let Some((channels, event)) = bus_event(&e.kind) {
                    self.app.publish_entry(pos, channels, event);
                }
            }
            kind => {
                for (channel, frame, except) in frames(kind) {
                    self.app.publish(&channel, &frame, except);
                }
            }
        }
    }

    fn activate_due(&mut self) {
        let cursor = self.cursor;
        if !self.watches.is_empty() {
            let (due, wait): (Vec<WatchJoin>, Vec<WatchJoin>) = std::mem::take(&mut self.watches)
                .into_iter()
                .partition(|w| w.gate <= cursor);
            self.watches = wait;
            for w in due {
                watchlist::activate(&self.app, w, &self.ring, self.floor);
            }
        }
        if self.pending.is_empty() {
            return;
        }
        let (due, wait): (Vec<Activation>, Vec<Activation>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|a| a.gate <= cursor);
        self.pending = wait;
        for a in due {
            self.activate(a);
        }
    }

    fn activate(&self, mut a: Activation) {
        if a.outbox.is_closing() {
            return;
        }
        if a.gate < self.floor {
            // The entries between its snapshot and now are no longer here: start over.
            a.outbox.close(
                CloseCode::ReconnectNow.code(),
                "This node fell behind the cluster: reconnect",
                false,
            );
            return;
        }
        for f in std::mem::take(&mut a.first) {
            self.app.deliver_to(&a.outbox, f);
        }
        let sid = a.outbox.socket_id.as_str();
        // The client's own earlier sockets are skipped too (toOthers across a reconnect).
        let chain: &[String] = a.resume.as_ref().map_or(&[], |p| p.chain.as_slice());
        let resumed = a.resume.as_ref().and_then(|plan| self.resume(&a, plan));
        let mine =
            |x: Option<&str>| x == Some(sid) || x.is_some_and(|x| chain.iter().any(|c| c == x));
        let mut caught_up = 0;
        for e in self.ring.iter().filter(|e| e.id > a.gate) {
            for (channel, frame, except) in frames(&e.kind) {
                if channel == a.channel && !mine(except) {
                    self.app.deliver_to(&a.outbox, frame);
                    caught_up += 1;
                }
            }
        }
        self.app.attach(&a.outbox, &a.channel, a.user_id.clone());
        if let (Some(plan), Some(r)) = (&a.resume, self.app.resume()) {
            let at = self.last_pos;
            if let Some(l) = &plan.lineage {
                // Every event after the gate went out now, ahead of any later proof ping.
                resume::lineage::lock(l).attached(&a.channel, a.gate.position(), at);
            }
            if let (Some(from), Some(outcome)) = (plan.from, resumed) {
                r.report(sid, &a.channel, plan.how, from, &outcome);
            }
        }
        tracing::trace!(caught_up, "cluster: socket attached");
    }

    /// Resume at the attach: the socket's missed events up to its gate, from this node's
    /// rings, all or nothing (what came after the gate follows from the deliverer's ring).
    fn resume(&self, a: &Activation, plan: &Plan) -> Option<resume::Outcome> {
        let r = self.app.resume()?;
        let from = plan.from?;
        // No `interest` needed: a clustered index keeps every channel (see `resume::index`).
        let missed = {
            let index = r.index();
            index.missed_until(
                &a.channel,
                from,
                a.gate.position(),
                &plan.chain,
                r.caps(),
                resume::now_ms(),
            )
        };
        Some(self.app.queue_replay(r, &a.outbox, &a.channel, missed))
    }
}

/// An API event's channels and the rest of it, as the hub takes them.
fn bus_event(kind: &Kind) -> Option<(&[String], BusEvent<'_>)> {
    let Kind::Event {
        except,
        name,
        data,
        channels,
        ..
    } = kind
    else {
        return None;
    };
    let event = BusEvent {
        name,
        data,
        except: except.as_deref(),
    };
    Some((channels.as_slice(), event))
}

/// The frames an entry sends: (channel, frame, socket id to skip).
fn frames(kind: &Kind) -> Vec<(String, Frame, Option<&str>)> {
    match kind {
        Kind::Event {
            except,
            name,
            data,
            channels,
            ..
        } => channels
            .iter()
            .map(|c| {
                let f = Frame::from(message::frame(name, Some(c), Some(data), None));
                (c.clone(), f, except.as_deref())
            })
            .collect(),
        Kind::Client {
            channel,
            except,
            frame,
        } => vec![(
            channel.clone(),
            Frame::from(frame.clone()),
            Some(except.as_str()),
        )],
        Kind::MemberAdded {
            channel,
            user,
            info,
            except,
        } => vec![(
            channel.clone(),
            Frame::from(message::member_added(channel, user, info.as_deref())),
            Some(except.as_str()),
        )],
        Kind::MemberRemoved { channel, user } => vec![(
            channel.clone(),
            Frame::from(message::member_removed(channel, user)),
            None,
        )],
        Kind::Count { channel, n } => vec![(
            channel.clone(),
            Frame::from(message::subscription_count(channel, *n)),
            None,
        )],
        Kind::Terminate { .. } | Kind::Watch { .. } | Kind::Unknown => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AppConfig;
    use crate::hub::NoObserver;
    use crate::protocol::SocketId;
    use std::time::Duration;

    fn id(ms: u64) -> StreamId {
        StreamId { ms, seq: 0 }
    }

    fn event(ms: u64, origin: &str, q: u64, data: &str) -> Entry {
        Entry {
            id: id(ms),
            kind: Kind::Event {
                origin: origin.into(),
                q,
                except: None,
                name: "e".into(),
                data: data.into(),
                channels: vec!["c".into()],
            },
        }
    }

    fn outbox(n: u64) -> Arc<Outbox> {
        let sid = SocketId::parse(&format!("{n}.{n}")).unwrap();
        Arc::new(Outbox::new(n, sid, 64))
    }

    /// The `data` of the events an outbox got (and the snapshot marker).
    fn got(o: &Outbox) -> Vec<String> {
        let mut frames = Vec::new();
        o.drain(&mut frames);
        frames
            .iter()
            .map(|f| {
                let v: serde_json::Value = serde_json::from_str(f.as_str()).unwrap();
                match v["event"].as_str() {
                    Some("e") => v["data"].as_str().unwrap().to_owned(),
                    other => other.unwrap_or("?").to_owned(),
                }
            })
            .collect()
    }

    fn deliverer() -> Deliverer {
        let app = Arc::new(App::new(
            AppConfig::with_defaults("1", "k", "s"),
            Arc::new(NoObserver),
        ));
        let status = Arc::new(Status::new(1, Duration::from_secs(10), String::new()));
        Deliverer::new(app, "me".into(), status, 0)
    }

    fn activate(o: &Arc<Outbox>, gate: u64) -> Msg {
        Msg::Activate(Activation {
            outbox: o.clone(),
            channel: "c".into(),
            user_id: None,
            gate: id(gate),
            first: vec![Frame::from("{\"event\":\"snapshot\"}")],
            resume: None,
        })
    }

    #[test]
    fn a_joining_socket_gets_its_snapshot_then_exactly_the_entries_after_its_gate() {
        let mut d = deliverer();
        d.handle(Msg::Start {
            at: id(10),
            history: None,
        });
        d.handle(Msg::Entries(vec![
            event(11, "x", 1, "11"),
            event(12, "x", 2, "12"),
        ]));
        // The deliverer is past the gate: the entry after it is replayed from the ring.
        let early = outbox(1);
        d.handle(activate(&early, 11));
        assert_eq!(got(&early), ["snapshot", "12"]);
        // Not there yet: attached once the gate goes by, nothing before it.
        let late = outbox(2);
        d.handle(activate(&late, 14));
        d.handle(Msg::Entries(vec![
            event(13, "x", 3, "13"),
            event(14, "x", 4, "14"),
        ]));
        assert_eq!(got(&late), ["snapshot"]);
        d.handle(Msg::Entries(vec![event(15, "x", 5, "15")]));
        assert_eq!(got(&early), ["13", "14", "15"]);
        assert_eq!(got(&late), ["15"]);
    }

    #[test]
    fn an_event_is_delivered_once_whichever_way_it_comes() {
        let mut d = deliverer();
        d.handle(Msg::Start {
            at: id(10),
            history: None,
        });
        let o = outbox(1);
        d.handle(activate(&o, 10));
        assert_eq!(got(&o), ["snapshot"]);
        // Forwarded twice (Redis lost its data): once.
        d.handle(Msg::Entries(vec![
            event(11, "x", 5, "a"),
            event(12, "x", 5, "a"),
        ]));
        // Delivered here while Redis was away, then back from the bus: once.
        let e = event(0, "me", 9, "b");
        d.handle(Msg::Local { q: 9, kind: e.kind });
        d.handle(Msg::Entries(vec![event(13, "me", 9, "b")]));
        assert_eq!(got(&o), ["a", "b"]);
    }

    #[test]
    fn a_gate_older_than_the_ring_closes_the_socket_with_4200() {
        let mut d = deliverer();
        d.handle(Msg::Start {
            at: id(1),
            history: None,
        });
        let entries: Vec<Entry> = (0..RING as u64 + 10)
            .map(|i| event(2 + i, "x", 1 + i, "."))
            .collect();
        d.handle(Msg::Entries(entries));
        let o = outbox(1);
        d.handle(activate(&o, 3));
        let mut frames = Vec::new();
        let close = o.drain(&mut frames).expect("closed");
        assert_eq!(close.code, 4200);
        assert!(frames.is_empty());
    }
}
