//! Lineages: what a resumable connection leaves behind for the client's next connection. A
//! connection's lineage lives from its first subscribe (shared between its session and the
//! store, so a reconnect that arrives before the old socket is seen dead still finds it) and is
//! kept for the window after the connection ends: its token, its signed users, where it came
//! from, how it ended, the socket ids of the chain of connections it continues, and per channel
//! the position after which its events are not proven delivered.
//!
//! A new connection claims a lineage by token (exact: one Pusher instance), or — zero-change
//! mode, no token — by a signed user proven again on the new socket, from the same address and
//! user agent, when the old connection did not end with 1001 (a page unload: the tab is gone,
//! and a new page must not get its events). Several such candidates (tabs of one user that
//! dropped together) replay from the lowest watermark: duplicates possible, never a loss.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::token::Token;

/// A channel of a lineage: where its unproven events start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub channel: String,
    /// The head when this connection subscribed (or replayed up to), or the inherited
    /// watermark of a channel not yet re-subscribed.
    pub from: u64,
    /// Inherited from a previous connection and not yet claimed: `from` is final (this
    /// connection's own proofs say nothing about it).
    #[serde(default)]
    pub inherited: bool,
    /// Clustered: the position the deliverer was at when it attached the socket (and sent it
    /// the events after `from`); only a proof of a ping queued after that, one carrying a
    /// later head, says anything about this channel.
    #[serde(default)]
    pub since: u64,
}

/// One connection's resume state (see the module doc).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Lineage {
    #[serde(default, with = "token_hex")]
    pub token: Option<Token>,
    /// Signed user ids: the signin id and presence `user_id`s.
    #[serde(default)]
    pub users: Vec<String>,
    /// A hash of the client's address and user agent (zero-change matching only).
    #[serde(default)]
    pub peer: u32,
    #[serde(default)]
    pub close_code: Option<u16>,
    /// Unix ms the connection started (a `terminate_connections` after it discards it).
    #[serde(default)]
    pub started_ms: u64,
    /// Unix ms the connection ended; `None` while it is open.
    #[serde(default)]
    pub ended_ms: Option<u64>,
    /// This connection's socket id and those of the connections it continues.
    #[serde(default)]
    pub socket_ids: Vec<String>,
    /// Every event up to this position sent to the connection is proven delivered.
    #[serde(default)]
    pub proven: u64,
    #[serde(default)]
    pub channels: Vec<Mark>,
    /// A newer connection took this lineage over (same token): it is nobody's to claim now.
    #[serde(skip)]
    pub superseded: bool,
}

impl Lineage {
    /// Where channel `m`'s missed events start: after what the connection subscribed at, or
    /// what it is proven to have received, whichever is later.
    pub fn watermark(&self, m: &Mark) -> u64 {
        if m.inherited || self.proven <= m.since {
            m.from
        } else {
            m.from.max(self.proven)
        }
    }

    /// Clustered: the deliverer attached this connection to `channel` with every event after
    /// `gate` sent to it, at position `at`.
    pub fn attached(&mut self, channel: &str, gate: u64, at: u64) {
        match self
            .channels
            .iter_mut()
            .find(|m| m.channel == channel && !m.inherited)
        {
            Some(m) => {
                m.from = gate;
                m.since = at;
            }
            None => self.channels.push(Mark {
                channel: channel.to_owned(),
                from: gate,
                inherited: false,
                since: at,
            }),
        }
    }

    /// What a new connection inherits: every channel's watermark, fixed, and the socket ids.
    fn inherit(&self) -> (Vec<Mark>, Vec<String>) {
        let marks = self
            .channels
            .iter()
            .map(|m| Mark {
                channel: m.channel.clone(),
                from: self.watermark(m),
                inherited: true,
                since: 0,
            })
            .collect();
        (marks, self.socket_ids.clone())
    }

    /// Kept twice the window: a client back a little late then learns that its events are
    /// gone (the failure event; the index refuses events older than the window) instead of
    /// silently getting nothing.
    fn expired(&self, now_ms: u64, window_ms: u64) -> bool {
        self.ended_ms.is_some_and(|e| e + 2 * window_ms < now_ms)
    }
}

/// Socket ids a lineage remembers: a client that reconnects in a loop must not grow it without
/// bound, and an event it published with `toOthers` more than this many connections ago is far
/// out of the window anyway.
pub const MAX_CHAIN: usize = 16;

/// Keeps the newest [`MAX_CHAIN`] socket ids.
pub fn cap_chain(ids: &mut Vec<String>) {
    if ids.len() > MAX_CHAIN {
        ids.drain(..ids.len() - MAX_CHAIN);
    }
}

/// A lineage shared by its connection and the store.
pub type Shared = Arc<Mutex<Lineage>>;

/// A subscribe whose missed events were claimed was refused (a full presence channel): they
/// stay the connection's to claim on a later subscribe.
pub fn unclaim(plan: &super::Plan, channel: &str) {
    let (Some(l), Some(from)) = (&plan.lineage, plan.from) else {
        return;
    };
    let mut l = lock(l);
    if !l.channels.iter().any(|m| m.channel == channel) {
        l.channels.push(Mark {
            channel: channel.to_owned(),
            from,
            inherited: true,
            since: 0,
        });
    }
}

pub fn lock(l: &Shared) -> MutexGuard<'_, Lineage> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}

/// Browsers close with 1001 when a page is unloaded or navigated away: that tab is gone, and
/// a connection of another page from the same user must not get its events.
pub const GOING_AWAY: u16 = 1001;

/// An app's lineages.
#[derive(Default)]
pub struct Store {
    by_token: HashMap<Token, Shared>,
    /// Ended lineages without a token but with a signed user (zero-change mode).
    by_user: Vec<Shared>,
    /// User id → unix ms of its last `terminate_connections`.
    terminated: HashMap<String, u64>,
    last_sweep_ms: u64,
}

/// How often ended lineages are swept: not at every end, which would make ten thousand
/// connections ending together (a restart) cost ten thousand sweeps of ten thousand.
const SWEEP_EVERY_MS: u64 = 1000;

/// What a zero-change claim found for one channel.
#[derive(Debug, PartialEq, Eq)]
pub struct UserClaim {
    pub from: u64,
    pub socket_ids: Vec<String>,
    pub candidates: usize,
}

impl Store {
    /// Registers `new` (a connection with `token`) and hands it what the token's previous
    /// connection left: its channels' watermarks and socket ids.
    pub fn claim_token(&mut self, token: Token, new: &Shared, now_ms: u64, window_ms: u64) -> bool {
        let Some(old) = self.by_token.insert(token, new.clone()) else {
            return false;
        };
        let mut old = lock(&old);
        old.superseded = true;
        if old.expired(now_ms, window_ms) || self.was_terminated(&old) {
            return false;
        }
        let (marks, ids) = old.inherit();
        drop(old);
        let mut new = lock(new);
        new.channels.extend(marks);
        let own = std::mem::take(&mut new.socket_ids);
        new.socket_ids = ids;
        new.socket_ids.extend(own);
        cap_chain(&mut new.socket_ids);
        true
    }

    /// Zero-change mode: the ended, tokenless lineages of `user` from the same `peer`, not
    /// closed with 1001, that hold `channel`: the lowest watermark among them, and their
    /// socket ids. The channel is claimed from each of them.
    pub fn claim_user(
        &mut self,
        user: &str,
        peer: u32,
        channel: &str,
        now_ms: u64,
        window_ms: u64,
    ) -> Option<UserClaim> {
        self.sweep(now_ms, window_ms);
        let mut claim: Option<UserClaim> = None;
        for l in &self.by_user {
            let mut l = lock(l);
            if l.peer != peer
                || l.expired(now_ms, window_ms)
                || l.close_code == Some(GOING_AWAY)
                || !l.users.iter().any(|u| u == user)
                || self
                    .terminated
                    .get(user)
                    .is_some_and(|t| *t >= l.started_ms)
            {
                continue;
            }
            let Some(i) = l.channels.iter().position(|m| m.channel == channel) else {
                continue;
            };
            let w = l.watermark(&l.channels[i]);
            l.channels.swap_remove(i);
            let c = claim.get_or_insert(UserClaim {
                from: w,
                socket_ids: Vec::new(),
                candidates: 0,
            });
            c.from = c.from.min(w);
            c.candidates += 1;
            c.socket_ids.extend(l.socket_ids.iter().cloned());
            cap_chain(&mut c.socket_ids);
        }
        claim
    }

    /// A connection ended: a tokenless lineage with a signed user becomes matchable; a token
    /// lineage that holds no channel is forgotten (there is nothing to resume). Past `cap`
    /// lineages, the oldest ended ones go first: a client opening and dropping connections in
    /// a loop with fresh tokens must not grow the box's memory for two windows.
    pub fn ended(&mut self, l: &Shared, now_ms: u64, window_ms: u64, cap: usize) {
        let (token, matchable, empty) = {
            let g = lock(l);
            let empty = g.channels.is_empty();
            (
                g.token,
                g.token.is_none() && !g.users.is_empty() && !empty,
                empty,
            )
        };
        if matchable {
            self.by_user.push(l.clone());
        }
        if let (Some(t), true) = (token, empty) {
            if self.by_token.get(&t).is_some_and(|x| Arc::ptr_eq(x, l)) {
                self.by_token.remove(&t);
            }
        }
        self.sweep(now_ms, window_ms);
        if self.by_token.len() + self.by_user.len() > cap {
            self.shed(cap);
        }
    }

    /// Drops the oldest ended lineages until a tenth below `cap` (so shedding is rare).
    fn shed(&mut self, cap: usize) {
        let keep = cap - cap / 10;
        let mut ended: Vec<u64> = self
            .by_token
            .values()
            .chain(self.by_user.iter())
            .filter_map(|l| lock(l).ended_ms)
            .collect();
        let total = self.by_token.len() + self.by_user.len();
        let excess = total.saturating_sub(keep).min(ended.len());
        if excess == 0 {
            return;
        }
        ended.sort_unstable();
        let cutoff = ended[excess - 1];
        let old = |l: &Shared| lock(l).ended_ms.is_some_and(|e| e <= cutoff);
        self.by_user.retain(|l| !old(l));
        self.by_token.retain(|_, l| !old(l));
        tracing::warn!(
            cap,
            dropped = total - self.by_token.len() - self.by_user.len(),
            "resume: too many ended connections kept; the oldest can no longer be resumed"
        );
    }

    /// `terminate_connections` for `user`: its lineages are discarded, and so is the lineage of
    /// any connection of it still open now (it ends after this).
    pub fn terminate(&mut self, user: &str, now_ms: u64) {
        self.terminated.insert(user.to_owned(), now_ms);
        self.by_user
            .retain(|l| !lock(l).users.iter().any(|u| u == user));
        self.by_token
            .retain(|_, l| !lock(l).users.iter().any(|u| u == user));
    }

    fn was_terminated(&self, l: &Lineage) -> bool {
        l.users
            .iter()
            .any(|u| self.terminated.get(u).is_some_and(|t| *t >= l.started_ms))
    }

    /// Drops lineages (and terminations) older than twice the window, at most once a second.
    pub fn sweep(&mut self, now_ms: u64, window_ms: u64) {
        if now_ms < self.last_sweep_ms + SWEEP_EVERY_MS {
            return;
        }
        self.last_sweep_ms = now_ms;
        self.by_user.retain(|l| {
            let l = lock(l);
            !l.expired(now_ms, window_ms) && !l.channels.is_empty()
        });
        self.by_token
            .retain(|_, l| !lock(l).expired(now_ms, window_ms));
        self.terminated.retain(|_, t| *t + 2 * window_ms >= now_ms);
    }

    /// Every ended lineage, for the state file at shutdown.
    pub fn ended_lineages(&self) -> Vec<Lineage> {
        let mut out: Vec<Lineage> = self
            .by_token
            .values()
            .chain(self.by_user.iter())
            .map(|l| lock(l).clone())
            .filter(|l| l.ended_ms.is_some())
            .collect();
        out.dedup_by(|a, b| a.token.is_some() && a.token == b.token);
        out
    }

    /// Clustered: the token's lineage as Redis had it, claimed at connect. The local one is
    /// kept when it is the same connection's (same newest socket id: this node saw it last
    /// and holds its freshest proof); otherwise the client was elsewhere since, and Redis's
    /// copy replaces it.
    pub fn adopt(&mut self, l: Lineage) {
        let Some(t) = l.token else { return };
        if let Some(local) = self.by_token.get(&t) {
            if lock(local).socket_ids.last() == l.socket_ids.last() {
                return;
            }
        }
        self.by_token.insert(t, Arc::new(Mutex::new(l)));
    }

    /// A lineage read back from the state file.
    pub fn load(&mut self, l: Lineage) {
        let shared = Arc::new(Mutex::new(l));
        let token = lock(&shared).token;
        match token {
            Some(t) => {
                self.by_token.insert(t, shared);
            }
            None => self.by_user.push(shared),
        }
    }

    /// (lineages by token, lineages by user), for the metrics.
    pub fn size(&self) -> (usize, usize) {
        (self.by_token.len(), self.by_user.len())
    }
}

/// The token as hex in the state file.
mod token_hex {
    use super::Token;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<Token>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&t.to_hex()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Token>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| Token::parse(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 120_000;

    fn ended(
        users: &[&str],
        peer: u32,
        close: u16,
        channels: &[(&str, u64)],
        proven: u64,
    ) -> Shared {
        Arc::new(Mutex::new(Lineage {
            users: users.iter().map(|u| u.to_string()).collect(),
            peer,
            close_code: Some(close),
            started_ms: 1,
            ended_ms: Some(1000),
            socket_ids: vec![format!("{peer}.{proven}")],
            proven,
            channels: channels
                .iter()
                .map(|(c, from)| Mark {
                    channel: c.to_string(),
                    from: *from,
                    inherited: false,
                    since: 0,
                })
                .collect(),
            ..Lineage::default()
        }))
    }

    #[test]
    fn a_page_unload_1001_is_never_matched_by_user() {
        let mut s = Store::default();
        s.ended(
            &ended(&["u"], 7, GOING_AWAY, &[("presence-a", 3)], 5),
            1000,
            W,
            100,
        );
        assert_eq!(s.claim_user("u", 7, "presence-a", 2000, W), None);
        s.ended(
            &ended(&["u"], 7, 1000, &[("presence-a", 3)], 5),
            1000,
            W,
            100,
        );
        let c = s.claim_user("u", 7, "presence-a", 2000, W).unwrap();
        assert_eq!((c.from, c.candidates), (5, 1));
        assert_eq!(
            s.claim_user("u", 7, "presence-a", 2000, W),
            None,
            "claimed once"
        );
    }

    #[test]
    fn user_matching_needs_the_same_peer_and_user_and_takes_the_lowest_watermark() {
        let mut s = Store::default();
        s.ended(
            &ended(&["u"], 7, 1006, &[("presence-a", 3)], 9),
            1000,
            W,
            100,
        );
        s.ended(
            &ended(&["u"], 7, 1000, &[("presence-a", 4)], 0),
            1000,
            W,
            100,
        );
        s.ended(
            &ended(&["u"], 8, 1000, &[("presence-a", 1)], 0),
            1000,
            W,
            100,
        );
        s.ended(
            &ended(&["v"], 7, 1000, &[("presence-a", 1)], 0),
            1000,
            W,
            100,
        );
        let c = s.claim_user("u", 7, "presence-a", 2000, W).unwrap();
        assert_eq!(c.from, 4, "min over both tabs: max(3, 9) and max(4, 0)");
        assert_eq!(c.candidates, 2);
        assert_eq!(c.socket_ids.len(), 2);
        assert_eq!(
            s.claim_user("u", 7, "presence-a", 1000 + 2 * W + 1, W),
            None
        );
    }

    #[test]
    fn past_the_cap_the_oldest_ended_lineages_go_and_empty_token_lineages_are_not_kept() {
        let mut s = Store::default();
        let empty: Shared = Arc::new(Mutex::new(Lineage {
            token: Some(Token([9; 16])),
            ended_ms: Some(10),
            ..Lineage::default()
        }));
        s.by_token.insert(Token([9; 16]), empty.clone());
        s.ended(&empty, 10, W, 100);
        assert_eq!(s.size(), (0, 0), "nothing to resume: forgotten");
        for i in 0..12u64 {
            let l = ended(&["u"], 7, 1000, &[("presence-a", 1)], 0);
            lock(&l).ended_ms = Some(100 + i);
            s.ended(&l, 200, W, 10);
        }
        let (t, u) = s.size();
        assert!(t + u <= 10, "{t} + {u}");
        let oldest = s
            .by_user
            .iter()
            .map(|l| lock(l).ended_ms.unwrap())
            .min()
            .unwrap();
        assert!(oldest > 100, "the oldest went first: {oldest}");
    }

    #[test]
    fn the_watermark_is_the_later_of_subscribe_and_proof_unless_inherited() {
        let l = Lineage {
            proven: 10,
            ..Lineage::default()
        };
        let m = |from, inherited| Mark {
            channel: "c".into(),
            from,
            inherited,
            since: 0,
        };
        assert_eq!(l.watermark(&m(4, false)), 10);
        assert_eq!(l.watermark(&m(12, false)), 12);
        assert_eq!(l.watermark(&m(4, true)), 4);
        let attached_late = Mark {
            since: 10,
            ..m(4, false)
        };
        assert_eq!(
            l.watermark(&attached_late),
            4,
            "a ping queued before the attach proves nothing of it"
        );
    }

    #[test]
    fn a_token_claim_inherits_watermarks_and_socket_ids_and_terminate_discards() {
        let t = Token([1; 16]);
        let mut s = Store::default();
        let old = ended(&["u"], 7, 1000, &[("c", 3)], 5);
        lock(&old).token = Some(t);
        s.by_token.insert(t, old.clone());
        let new: Shared = Arc::new(Mutex::new(Lineage {
            token: Some(t),
            socket_ids: vec!["9.9".into()],
            ..Lineage::default()
        }));
        assert!(s.claim_token(t, &new, 2000, W));
        {
            let n = lock(&new);
            assert_eq!(
                n.channels,
                vec![Mark {
                    channel: "c".into(),
                    from: 5,
                    inherited: true,
                    since: 0,
                }]
            );
            assert_eq!(n.socket_ids, vec!["7.5".to_string(), "9.9".to_string()]);
        }
        assert!(lock(&old).superseded);
        // terminate_connections: the new one (user u after it signs in) is dropped.
        lock(&new).users.push("u".into());
        s.terminate("u", 3000);
        let again: Shared = Arc::new(Mutex::new(Lineage::default()));
        assert!(!s.claim_token(t, &again, 3001, W));
    }
}
