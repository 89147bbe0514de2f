//! Resume: a client that reconnects gets the events it missed, with pusher-js and Laravel Echo
//! unchanged (README "Resume", RESUME.md B4). This module owns the state; the hub calls it to
//! give each fanned-out event a position and keep it ([`index`]), the session to claim what a
//! previous connection left ([`lineage`]) and to prove what this one received ([`proof`]).
//!
//! - `token`: the 128-bit token in `{path_prefix}/{token}/app/{key}`;
//! - `index`: positions and the per-channel rings of recent events;
//! - `lineage`: what an ended connection leaves, and who may claim it;
//! - `proof`: the ping/pong proof of delivery;
//! - `persist`: the state file a graceful restart leaves for the next start;
//! - `remote`: a clustered node's lineages in Redis, so a token resumes on another node.
//!
//! Nothing here exists for an app with `[resume] enabled = false`, and nothing is allocated
//! for a connection that carries neither a token nor a signed user.

pub mod index;
pub mod lineage;
pub mod persist;
pub mod proof;
pub mod remote;
pub mod token;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::ResumeConfig;
use crate::protocol::{message, Frame};

pub use index::{Caps, Entry, Failure, Index};
pub use lineage::{Lineage, Mark, Shared, Store};
pub use proof::{Proof, ProofTick, PROOF_EVERY};
pub use token::{BadToken, Token};

/// The event sent on a channel whose missed events could not all be replayed, when
/// `failure_event` is on: a non-internal name, so `channel.bind` / Echo's
/// `.listen('.pushbox:resume_failed')` get it.
pub const FAILURE_EVENT: &str = "pushbox:resume_failed";

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a connection brings to resume from its handshake: its token, and a hash of its
/// address and user agent for zero-change matching.
#[derive(Clone, Copy, Debug, Default)]
pub struct Origin {
    pub token: Option<Token>,
    pub peer: u32,
}

/// FNV-1a over the client's address and user agent: stable across restarts (the hash goes
/// into the state file), and only ever compared among one user's lineages, so 32 bits are
/// plenty — and a `u32` fits in the padding of every `Session`, costing idle connections nothing.
pub fn peer_hash(ip: &str, user_agent: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in ip.bytes().chain([0u8]).chain(user_agent.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Stats {
    pub attempts: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: [AtomicU64; 5],
    pub replayed: AtomicU64,
}

/// The outcome of one channel's resume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything missed was sent (maybe nothing).
    Replayed(usize),
    Failed(Failure),
}

/// What a subscribe asks of resume, decided by the session before the hub's lock.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Replay the events after this position, skipping those excluded for `chain`.
    pub from: Option<u64>,
    pub chain: Vec<String>,
    /// Clustered: the connection's lineage, which the deliverer marks when it attaches the
    /// socket (the subscribe's answer comes from there, not from the hub's lock).
    pub lineage: Option<Shared>,
    /// How the lineage was found (`token`, `user`), for the log.
    pub how: &'static str,
}

/// One app's resume state.
pub struct AppResume {
    pub config: ResumeConfig,
    caps: Caps,
    /// Most lineages kept (open and ended): twice the app's `max_connections`, at least 1,000.
    max_lineages: usize,
    index: Mutex<Index>,
    /// The index's head, readable without its lock: every fan-out up to it is complete.
    head: AtomicU64,
    store: Mutex<Store>,
    pub stats: Stats,
}

impl AppResume {
    /// An app's resume state; `clustered`: positions come from the bus and every channel's
    /// events are kept (see [`index`]).
    pub fn new(config: &ResumeConfig, max_connections: usize, clustered: bool) -> AppResume {
        AppResume {
            max_lineages: max_connections.saturating_mul(2).max(1000),
            caps: Caps {
                window: config.window,
                max_events: config.max_events,
                max_bytes: config.max_bytes,
            },
            config: config.clone(),
            index: Mutex::new(if clustered {
                Index::clustered()
            } else {
                Index::default()
            }),
            head: AtomicU64::new(0),
            store: Mutex::default(),
            stats: Stats::default(),
        }
    }

    pub fn caps(&self) -> &Caps {
        &self.caps
    }

    pub fn window_ms(&self) -> u64 {
        self.caps.window.as_millis() as u64
    }

    /// The index, locked. A publisher holds it through its fan-out (see [`index`]).
    pub fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fan-out up to `pos` is complete (called with the index still locked).
    pub fn published(&self, pos: u64) {
        self.head.store(pos, Ordering::Release);
    }

    /// The last position whose fan-out is complete.
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Clustered: the deliverer starts at bus position `pos` (or starts over after a gap).
    pub fn start(&self, pos: u64) {
        let mut index = self.index();
        index.start(pos);
        self.head.store(index.head(), Ordering::Release);
    }

    /// Clustered: the token's lineage as Redis had it (see [`Store::adopt`]).
    pub fn adopt(&self, lineage: Lineage) {
        self.store().adopt(lineage);
    }

    /// A connection with a token opens: its lineage, holding what the token's previous
    /// connection left.
    pub fn open_token(&self, token: Token, socket_id: &str, peer: u32) -> (Shared, bool) {
        let now = now_ms();
        let lineage = Arc::new(Mutex::new(Lineage {
            token: Some(token),
            peer,
            started_ms: now,
            socket_ids: vec![socket_id.to_owned()],
            ..Lineage::default()
        }));
        let inherited = self
            .store()
            .claim_token(token, &lineage, now, self.window_ms());
        (lineage, inherited)
    }

    /// A connection without a token becomes resumable (a signed user on it).
    pub fn open_user(&self, socket_id: &str, peer: u32) -> Shared {
        Arc::new(Mutex::new(Lineage {
            peer,
            started_ms: now_ms(),
            socket_ids: vec![socket_id.to_owned()],
            ..Lineage::default()
        }))
    }

    /// Zero-change mode: where `channel`'s missed events start for a reconnect of `user` from
    /// `peer`, if an ended connection of that user may be resumed.
    pub fn claim_user(&self, user: &str, peer: u32, channel: &str) -> Option<lineage::UserClaim> {
        if !self.config.match_user {
            return None;
        }
        self.store()
            .claim_user(user, peer, channel, now_ms(), self.window_ms())
    }

    /// A resumable connection left `channel`.
    pub fn release(&self, channel: &str) {
        let until = now_ms() + self.window_ms();
        self.index().release(channel, until);
    }

    /// A resumable connection ended: its lineage is kept for the window, and so are the
    /// events of its channels (those it inherited and did not re-subscribe included).
    pub fn end(&self, lineage: &Shared, close_code: Option<u16>) {
        let now = now_ms();
        let channels: Vec<(String, bool)> = {
            let mut l = lineage::lock(lineage);
            l.ended_ms = Some(now);
            l.close_code = close_code;
            l.channels
                .iter()
                .map(|m| (m.channel.clone(), m.inherited))
                .collect()
        };
        {
            let until = now + self.window_ms();
            let mut index = self.index();
            for (c, inherited) in &channels {
                if *inherited {
                    index.extend(c, until);
                } else {
                    index.release(c, until);
                }
            }
        }
        self.store()
            .ended(lineage, now, self.window_ms(), self.max_lineages);
    }

    /// `terminate_connections` for `user`: nothing of it is resumed.
    pub fn terminate(&self, user: &str) {
        self.store().terminate(user, now_ms());
    }

    /// The frame that tells the app a channel's missed events were not replayed, when asked for.
    pub fn failure_frame(&self, channel: &str, failure: Failure) -> Option<Frame> {
        self.config.failure_event.then(|| {
            let data = format!("{{\"reason\":\"{}\"}}", failure.label());
            Frame::from(message::frame(
                FAILURE_EVENT,
                Some(channel),
                Some(&data),
                None,
            ))
        })
    }

    /// Counts and logs one channel's resume.
    pub fn report(&self, socket_id: &str, channel: &str, how: &str, from: u64, outcome: &Outcome) {
        let s = &self.stats;
        s.attempts.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::Replayed(n) => {
                s.succeeded.fetch_add(1, Ordering::Relaxed);
                s.replayed.fetch_add(*n as u64, Ordering::Relaxed);
                tracing::info!(
                    socket_id,
                    channel,
                    by = how,
                    after = from,
                    events = n,
                    "resume: missed events replayed"
                );
            }
            Outcome::Failed(f) => {
                let i = Failure::ALL.iter().position(|x| x == f).unwrap_or(0);
                s.failed[i].fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    socket_id,
                    channel,
                    by = how,
                    after = from,
                    reason = f.label(),
                    "resume: missed events not replayed (all or nothing)"
                );
            }
        }
    }

    /// (channels with a ring, events kept, bytes kept, lineages by token, lineages by user).
    pub fn size(&self) -> (usize, usize, usize, usize, usize) {
        let (c, e, b) = self.index().size();
        let (t, u) = self.store().size();
        (c, e, b, t, u)
    }

    /// What a graceful shutdown leaves for the next start.
    pub fn snapshot(&self) -> persist::AppState {
        persist::AppState {
            head: self.head().max(self.index().head()),
            lineages: self.store().ended_lineages(),
        }
    }

    /// Takes back what the previous run left (lineages still within the window) and keeps
    /// their channels' rings; returns how many lineages came back.
    pub fn restore(&self, state: persist::AppState) -> usize {
        let now = now_ms();
        let window = self.window_ms();
        let mut index = self.index();
        index.raise_head(state.head);
        self.head.store(index.head(), Ordering::Release);
        let mut store = self.store();
        let mut n = 0;
        for l in state.lineages {
            let Some(ended) = l.ended_ms else { continue };
            if ended + 2 * window < now {
                continue;
            }
            let head = index.head();
            for m in &l.channels {
                index.keep(&m.channel, head, ended + window);
            }
            store.load(l);
            n += 1;
        }
        n
    }

    /// Puts back the events the event log kept (read at start-up, oldest first): `first` is the
    /// first position the read found for this app, so every kept channel's events after
    /// `first - 1` are back in its ring.
    pub fn restore_events(&self, first: Option<u64>, events: Vec<(String, Entry)>) {
        let now = now_ms();
        let mut index = self.index();
        if let Some(first) = first {
            index.set_empty_floors(first.saturating_sub(1));
        }
        for (channel, e) in events {
            index.restore(&channel, e, &self.caps, now);
        }
        self.head.store(index.head(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_hash_tells_address_and_agent_apart() {
        assert_eq!(peer_hash("10.0.0.1", "UA"), peer_hash("10.0.0.1", "UA"));
        assert_ne!(peer_hash("10.0.0.1", "UA"), peer_hash("10.0.0.2", "UA"));
        assert_ne!(peer_hash("10.0.0.1", "UA"), peer_hash("10.0.0.1", "UB"));
        assert_ne!(peer_hash("1", "0UA"), peer_hash("10", "UA"));
    }
}
