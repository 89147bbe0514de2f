//! The session's side of resume (see `crate::resume`): which subscribes replay what, the
//! lineage a resumable connection keeps up to date, and the proof pings. A connection becomes
//! resumable when it opens with a token, or (zero-change mode) when a signed user is proven on
//! it; any other connection never allocates any of this.

use std::time::Instant;

use super::{Resumable, Session};
use crate::hub::{Member, Subscribed};
use crate::protocol::ChannelKind;
use crate::resume::{self, lineage, Mark, Plan, ProofTick};

impl Session {
    /// The signed user of a subscribe: the presence member, else the signin id.
    fn identity<'a>(&'a self, member: Option<&'a Member>) -> Option<&'a str> {
        member
            .map(|m| m.user_id.as_str())
            .or(self.user.as_ref().map(|u| u.id.as_str()))
    }

    /// Makes this connection resumable for a signed user (zero-change mode), if it is not yet.
    fn track_user(&mut self) -> bool {
        if self.resume.is_some() {
            return true;
        }
        let Some(r) = self.app.resume().filter(|r| r.config.match_user) else {
            return false;
        };
        let lineage = r.open_user(self.outbox.socket_id.as_str(), self.peer);
        // Its transport must see what it writes to prove delivery: no direct writes.
        self.outbox.disable_direct();
        self.resume = Some(Box::new(Resumable {
            lineage,
            proof: resume::Proof::default(),
            close_code: None,
        }));
        true
    }

    /// A signin succeeded: the user is one this connection's lineage may be claimed by.
    pub(super) fn signed_user(&mut self, id: &str) {
        if self.app.resume().is_some() && self.track_user() {
            self.add_user(id);
        }
    }

    fn add_user(&self, id: &str) {
        if let Some(rs) = &self.resume {
            let mut l = lineage::lock(&rs.lineage);
            if !l.users.iter().any(|u| u == id) {
                l.users.push(id.to_owned());
            }
        }
    }

    /// Before a subscribe that passed its checks: what resume asks of the hub, and how the
    /// lineage was found (`token`, `user`) for the log. `None`: not a resumable subscribe.
    pub(super) fn resume_plan(
        &mut self,
        name: &str,
        kind: ChannelKind,
        member: Option<&Member>,
    ) -> Option<(Plan, &'static str)> {
        let r = self.app.resume()?.clone();
        // Cache channels keep Pusher's behaviour (the cached event on subscribe), no replay.
        if kind.is_cache() {
            return None;
        }
        let user = self.identity(member).map(str::to_owned);
        if self.resume.is_none() && (user.is_none() || !self.track_user()) {
            return None;
        }
        if let Some(m) = member {
            self.add_user(&m.user_id);
        }
        let rs = self.resume.as_ref()?;
        let (owned, tokenless) = {
            let mut l = lineage::lock(&rs.lineage);
            if let Some(i) = l
                .channels
                .iter()
                .position(|m| m.channel == name && m.inherited)
            {
                let from = l.channels.swap_remove(i).from;
                let chain = l.socket_ids.clone();
                return Some((
                    Plan {
                        from: Some(from),
                        chain,
                    },
                    "token",
                ));
            }
            (
                l.channels.iter().any(|m| m.channel == name),
                l.token.is_none(),
            )
        };
        // The store is locked without this lineage's lock held (the store locks lineages).
        if tokenless && !owned {
            if let Some(claim) = user.and_then(|u| r.claim_user(&u, self.peer, name)) {
                let mut l = lineage::lock(&rs.lineage);
                for id in claim.socket_ids {
                    if !l.socket_ids.contains(&id) {
                        l.socket_ids.push(id);
                    }
                }
                lineage::cap_chain(&mut l.socket_ids);
                let chain = l.socket_ids.clone();
                return Some((
                    Plan {
                        from: Some(claim.from),
                        chain,
                    },
                    "user",
                ));
            }
        }
        Some((Plan::default(), ""))
    }

    /// After a resumable subscribe: the channel's events reach this socket live from
    /// `subscribed.head` on; a replay is counted and logged.
    pub(super) fn resumed(&mut self, name: &str, plan: &Plan, how: &str, subscribed: Subscribed) {
        let (Some(rs), Some(r)) = (&self.resume, self.app.resume()) else {
            return;
        };
        {
            // A repeated subscribe of a channel this connection is on keeps its mark: the
            // events since then went out live and are only as delivered as the pongs say.
            let mut l = lineage::lock(&rs.lineage);
            if !l.channels.iter().any(|m| m.channel == name) {
                l.channels.push(Mark {
                    channel: name.to_owned(),
                    from: subscribed.head,
                    inherited: false,
                });
            }
        }
        if let (Some(from), Some(outcome)) = (plan.from, &subscribed.resumed) {
            r.report(self.outbox.socket_id.as_str(), name, how, from, outcome);
        }
    }

    /// This connection left `name`: its events need not be kept for it any more.
    pub(super) fn resume_left(&mut self, name: &str) {
        let (Some(rs), Some(r)) = (&self.resume, self.app.resume()) else {
            return;
        };
        let mut l = lineage::lock(&rs.lineage);
        if let Some(i) = l
            .channels
            .iter()
            .position(|m| m.channel == name && !m.inherited)
        {
            l.channels.swap_remove(i);
            drop(l);
            r.release(name);
        }
    }

    /// The hub refused a subscribe whose missed events were claimed (a full presence channel):
    /// they stay this connection's to claim on a later subscribe.
    pub(super) fn resume_unclaim(&mut self, name: &str, plan: &Plan) {
        let (Some(rs), Some(from)) = (&self.resume, plan.from) else {
            return;
        };
        let mut l = lineage::lock(&rs.lineage);
        if !l.channels.iter().any(|m| m.channel == name) {
            l.channels.push(Mark {
                channel: name.to_owned(),
                from,
                inherited: true,
            });
        }
    }

    /// A ping is being queued (liveness or proof): its pong will prove what went before it.
    pub(super) fn ping_queued(&mut self) {
        if let (Some(rs), Some(r)) = (&mut self.resume, self.app.resume()) {
            rs.proof.ping_sent(r.head());
        }
    }

    /// A pong came (a `pusher:pong` or a WebSocket pong).
    pub(super) fn pong(&mut self) {
        if let Some(rs) = &mut self.resume {
            if let Some(head) = rs.proof.pong() {
                let mut l = lineage::lock(&rs.lineage);
                l.proven = l.proven.max(head);
            }
        }
    }

    /// A WebSocket pong control frame.
    pub fn control_pong(&mut self) {
        self.activity();
        self.pong();
    }

    /// The transport wrote frames of this connection (resumable connections only care).
    pub fn wrote(&mut self) {
        if let Some(rs) = &mut self.resume {
            rs.proof.wrote();
        }
    }

    /// Whether to send a proof ping now (already counted when `PingNow`), or when to ask again.
    pub fn proof_tick(&mut self, now: Instant) -> ProofTick {
        match (&mut self.resume, self.app.resume()) {
            (Some(rs), Some(r)) => {
                let proven = lineage::lock(&rs.lineage).proven;
                rs.proof.tick(now, r.head(), proven)
            }
            _ => ProofTick::Idle,
        }
    }

    /// The client sent a close frame with `code` (1001: the page is going away).
    pub fn peer_closed(&mut self, code: Option<u16>) {
        if let Some(rs) = &mut self.resume {
            rs.close_code = code;
        }
    }

    /// Whether this connection keeps resume state (tests and the transports' timers).
    pub fn is_resumable(&self) -> bool {
        self.resume.is_some()
    }
}
