//! The session's side of resume (see `crate::resume`): which subscribes replay what, the
//! lineage a resumable connection keeps up to date, and the proof pings. A connection becomes
//! resumable when it opens with a token, or (zero-change mode) when a signed user is proven on
//! it; any other connection never allocates any of this.

use std::sync::Arc;
use std::time::Instant;

use super::{Resumable, Session};
use crate::hub::App;
use crate::hub::{Member, Subscribed};
use crate::protocol::ChannelKind;
use crate::resume::{lineage, remote, AppResume, Mark, Origin, Plan, ProofTick};

/// Clustered, before a token connection's session opens: the token's lineage as Redis has
/// it (the client may have been on another node since), claimed for `socket_id` in one round
/// trip of at most [`remote::CLAIM_WAIT`]. Without an answer in time the connection goes on
/// with what this node knows.
pub(super) async fn claim_remote(app: &App, origin: &Origin, socket_id: &str) {
    let (Some(r), Some(link), Some(token)) = (app.resume(), app.cluster(), origin.token) else {
        return;
    };
    let ttl = std::time::Duration::from_millis(2 * r.window_ms());
    let token = token.to_hex();
    let claim = link.claim_lineage(&app.config.id, &token, socket_id, ttl);
    match tokio::time::timeout(remote::CLAIM_WAIT, claim).await {
        Ok(Ok(Some(text))) => match remote::decode(&text) {
            Some(l) => r.adopt(l),
            None => tracing::warn!(
                socket_id,
                "resume: the token's lineage in Redis is unreadable (another pushbox version wrote it?): this connection resumes only what this node knows"
            ),
        },
        Ok(Ok(None)) => {}
        Ok(Err(e)) => tracing::warn!(socket_id, error = %e, "resume: the token's lineage could not be read from Redis: this connection resumes only what this node knows"),
        Err(_) => tracing::warn!(
            socket_id,
            wait_ms = remote::CLAIM_WAIT.as_millis() as u64,
            "resume: Redis did not give the token's lineage in time: this connection resumes only what this node knows"
        ),
    }
}

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
        self.resume = Some(Resumable::new(lineage));
        true
    }

    /// A signin succeeded: the user is one this connection's lineage may be claimed by, and
    /// the channels it subscribed to before are resumable from now on.
    pub(super) fn signed_user(&mut self, id: &str) {
        if self.app.resume().is_some() && self.track_user() {
            self.add_user(id);
            self.resume_subscribed(id);
        }
    }

    /// The channels this connection subscribed to before its signin (pusher-js sends its
    /// subscribes at once on a reconnect and the signin after its auth round trip): each
    /// becomes resumable from its subscribe on, and gets what an ended connection of the same
    /// user left, if nothing of it went out live since (`Hub::resume_late`).
    fn resume_subscribed(&mut self, user: &str) {
        let (Some(rs), Some(r)) = (&self.resume, self.app.resume()) else {
            return;
        };
        let (rs, r) = (rs.lineage.clone(), r.clone());
        let late: Vec<(String, u64)> = {
            let l = lineage::lock(&rs);
            self.subscriptions
                .iter()
                .filter(|s| !ChannelKind::of(&s.channel).is_cache())
                .filter(|s| !l.channels.iter().any(|m| m.channel == s.channel))
                .map(|s| (s.channel.clone(), s.head))
                .collect()
        };
        for (channel, head) in late {
            let tokenless = lineage::lock(&rs).token.is_none();
            // The store locks lineages: claimed without this one's lock held.
            let claim = tokenless
                .then(|| r.claim_user(user, self.peer, &channel))
                .flatten();
            let plan = {
                let mut l = lineage::lock(&rs);
                l.channels.push(Mark {
                    channel: channel.clone(),
                    from: head,
                    inherited: false,
                    since: 0,
                });
                claim.map(|c| {
                    for id in c.socket_ids {
                        if !l.socket_ids.contains(&id) {
                            l.socket_ids.push(id);
                        }
                    }
                    lineage::cap_chain(&mut l.socket_ids);
                    Plan {
                        from: Some(c.from),
                        chain: l.socket_ids.clone(),
                        ..Plan::default()
                    }
                })
            };
            let plan = plan.unwrap_or_default();
            let outcome = self.app.resume_late(&self.outbox, &channel, head, &plan);
            if let (Some(from), Some(outcome)) = (plan.from, outcome) {
                r.report(
                    self.outbox.socket_id.as_str(),
                    &channel,
                    "user",
                    from,
                    &outcome,
                );
            }
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
    /// Clustered, the plan also carries the lineage and `how` to the deliverer, which attaches
    /// the socket and replays there.
    pub(super) fn resume_plan(
        &mut self,
        name: &str,
        kind: ChannelKind,
        member: Option<&Member>,
    ) -> Option<(Plan, &'static str)> {
        let (mut plan, how) = self.plan_for(name, kind, member)?;
        if self.app.cluster().is_some() {
            plan.lineage = self.resume.as_ref().map(|rs| rs.lineage.clone());
            plan.how = how;
        }
        Some((plan, how))
    }

    fn plan_for(
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
                        ..Plan::default()
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
                        ..Plan::default()
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
                    since: 0,
                });
            }
        }
        if let (Some(from), Some(outcome)) = (plan.from, &subscribed.resumed) {
            r.report(self.outbox.socket_id.as_str(), name, how, from, outcome);
        }
        self.save_remote(true);
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
            self.save_remote(true);
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
                since: 0,
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
                if head > l.proven {
                    l.proven = head;
                    drop(l);
                    self.save_remote(false);
                }
            }
        }
    }

    /// Clustered, a token connection's lineage goes to Redis (`resume::remote`), so the
    /// client resumes on whichever node it reaches next: at once when its channels change or
    /// it ends (`force`), for a moved proof at most every [`remote::SAVE_EVERY`] (a later
    /// pong or the end writes what was held back).
    pub(super) fn save_remote(&mut self, force: bool) {
        let (Some(rs), Some(link), Some(r)) =
            (&mut self.resume, self.app.cluster(), self.app.resume())
        else {
            return;
        };
        let now = Instant::now();
        if !force && rs.saved_at.is_some_and(|t| now < t + remote::SAVE_EVERY) {
            return;
        }
        let (token, text) = {
            let l = lineage::lock(&rs.lineage);
            let Some(token) = l.token else { return };
            (token, remote::encode(&l))
        };
        let Some(text) = text else { return };
        rs.saved_at = Some(now);
        // Twice the window, like a lineage kept on the node (`lineage::Lineage::expired`).
        let ttl = std::time::Duration::from_millis(2 * r.window_ms());
        link.save_lineage(
            &self.app.config.id,
            &token.to_hex(),
            self.outbox.socket_id.as_str(),
            text,
            ttl,
        );
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

    /// For a resumable connection, the app's resume state: at shutdown the transport holds its
    /// index lock while it takes the last frames before its Close (see [`close_queued`]).
    ///
    /// [`close_queued`]: Self::close_queued
    pub fn resume_app(&self) -> Option<Arc<AppResume>> {
        self.resume.as_ref().and(self.app.resume()).cloned()
    }

    /// The server queued its Close (4200: shutdown) with every event up to `head` ahead of it
    /// in this connection's stream. The transport took the last frames with the index locked,
    /// so no fan-out was half done: nothing at or below `head` is left behind the Close.
    pub fn close_queued(&mut self, head: u64) {
        if let Some(rs) = &mut self.resume {
            rs.close_head = Some(head);
        }
    }

    /// Whether the client's answer to the server's Close would prove something.
    pub fn awaits_close_answer(&self) -> bool {
        self.resume
            .as_ref()
            .is_some_and(|rs| rs.close_head.is_some())
    }

    /// The client answered the server's Close with its own: WebSocket clients (browsers,
    /// pusher-js on Node) read frames in order and answer a Close only once they read it, so
    /// every frame before it was read, and the watermark moves to the head the Close carried.
    /// This is what makes a graceful restart exact: without it, what was delivered since the
    /// last pong was replayed once more after the restart.
    pub fn close_answered(&mut self) {
        if let Some(rs) = &mut self.resume {
            if let Some(head) = rs.close_head.take() {
                let mut l = lineage::lock(&rs.lineage);
                l.proven = l.proven.max(head);
            }
            self.save_remote(true);
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
