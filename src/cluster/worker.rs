//! The presence worker of one app: runs this node's subscribes, unsubscribes, client events,
//! signins and signouts (watchlists, see `watchlist`) against Redis one at a time, in the order
//! the connections made them (an unsubscribe never overtakes its subscribe), and hands each
//! joined socket (and each watcher) to the deliverer with its snapshot.
//!
//! While Redis does not answer, an operation is retried (backoff up to a second) and the ones
//! behind it wait: joins are late, never lost or reordered. A connection that closed meanwhile
//! is skipped. It also keeps what this node holds, so that a node whose lease expired (cut off
//! longer than the lease, or Redis lost its data) can put Redis right ([`Op::Reconcile`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::bus::StreamId;
use super::conn::{items, pairs, text, Pool};
use super::deliver::{Activation, Msg};
use super::keys::Keys;
use super::scripts::{
    LINEAGE_SAVE_SCRIPT, MAXLEN, SIGNIN_SCRIPT, SIGNOUT_SCRIPT, SUBSCRIBE_SCRIPT,
    UNSUBSCRIBE_SCRIPT,
};
use super::status::Status;
use super::watchlist::{self, WatchJoin};

/// Operations sent in one pipeline at most: a burst of joins costs a round trip per this many.
const BATCH_OPS: usize = 64;
use crate::config::AppConfig;
use crate::hub::{HubEvent, HubObserver, Member, Outbox};
use crate::protocol::{message, presence, ChannelKind, Frame};
use crate::resume::Plan;

pub enum Op {
    Subscribe {
        outbox: Arc<Outbox>,
        channel: String,
        member: Option<Member>,
        /// A resumable subscribe: the deliverer replays what it missed at the attach.
        resume: Option<Plan>,
    },
    Unsubscribe {
        conn_id: u64,
        socket_id: String,
        channel: String,
    },
    ClientEvent {
        channel: String,
        socket_id: String,
        frame: Frame,
    },
    /// A connection signed in as `user` watching `watchlist` (apps with `watchlist` on).
    Signin {
        outbox: Arc<Outbox>,
        user: String,
        watchlist: Vec<String>,
    },
    /// That signin went (the connection closed or signed in again).
    Signout {
        conn_id: u64,
        socket_id: String,
        watchlist: Vec<String>,
    },
    /// Resume: a token's lineage (`resume::remote`), in order with this node's other writes.
    SaveLineage {
        token: String,
        owner: String,
        lineage: String,
        ttl_ms: u64,
    },
    /// Compare what Redis says this node holds with what it holds, and put Redis right
    /// through the normal scripts (after Redis was lost: a lease that expired, data Redis
    /// lost, a script whose effect was in the last second before a crash).
    Reconcile,
}

impl Op {
    /// The script this operation runs, if any.
    fn script(&self) -> Option<&'static redis::Script> {
        match self {
            Op::Subscribe { .. } => Some(&SUBSCRIBE_SCRIPT),
            Op::Unsubscribe { .. } => Some(&UNSUBSCRIBE_SCRIPT),
            Op::Signin { .. } => Some(&SIGNIN_SCRIPT),
            Op::Signout { .. } => Some(&SIGNOUT_SCRIPT),
            Op::SaveLineage { .. } => Some(&LINEAGE_SAVE_SCRIPT),
            Op::ClientEvent { .. } | Op::Reconcile => None,
        }
    }
}

pub struct Worker {
    pub pool: Arc<Pool>,
    pub keys: Keys,
    pub node: String,
    pub app: AppConfig,
    pub status: Arc<Status>,
    pub observer: Arc<dyn HubObserver>,
    pub deliver: mpsc::Sender<Msg>,
    /// (socket id, channel) → member, of this node's subscriptions that reached Redis.
    held: HashMap<(String, String), Option<Member>>,
    /// socket id → its signin, of this node's signins that reached Redis.
    signed: HashMap<String, Signed>,
}

/// A signin this node holds, to put back in Redis after its lease was lost.
struct Signed {
    outbox: Arc<Outbox>,
    user: String,
    watchlist: Vec<String>,
}

/// A subscribe Redis answered: the socket, its channel, member and resume plan.
type Join = (Arc<Outbox>, String, Option<Member>, Option<Plan>);

/// What a subscribe script answered.
enum Joined {
    Ok {
        gate: StreamId,
        members: Vec<(String, String)>,
        cache: Option<(String, String)>,
    },
    Full,
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: Arc<Pool>,
        keys: Keys,
        node: String,
        app: AppConfig,
        status: Arc<Status>,
        observer: Arc<dyn HubObserver>,
        deliver: mpsc::Sender<Msg>,
    ) -> Worker {
        Worker {
            pool,
            keys,
            node,
            app,
            status,
            observer,
            deliver,
            held: HashMap::new(),
            signed: HashMap::new(),
        }
    }

    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Op>) {
        while let Some(op) = rx.recv().await {
            // What queued up meanwhile goes in the same round trip (a pipeline runs in order).
            let mut ops = vec![op];
            while ops.len() < BATCH_OPS {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            let mut run = Vec::with_capacity(ops.len());
            for op in ops {
                if matches!(op, Op::Reconcile) {
                    self.pipelined(std::mem::take(&mut run)).await;
                    self.reconcile().await;
                    self.reconcile_signins().await;
                } else {
                    run.push(op);
                }
            }
            self.pipelined(run).await;
        }
    }

    /// Runs `ops` in one pipeline, in order, until Redis answers: each script is atomic and
    /// idempotent (a subscribe or unsubscribe done twice is done once), so a retry after a lost
    /// answer changes nothing. Client events go only on the first try (best effort, never
    /// twice); subscribes of connections closed meanwhile are left out.
    async fn pipelined(&mut self, ops: Vec<Op>) {
        let mut first_try = true;
        let mut backoff = Duration::from_millis(50);
        loop {
            let live: Vec<&Op> = ops
                .iter()
                .filter(|op| match op {
                    Op::Subscribe { outbox, .. } | Op::Signin { outbox, .. } => {
                        !outbox.is_closing()
                    }
                    Op::ClientEvent { .. } => first_try,
                    _ => true,
                })
                .collect();
            if live.is_empty() {
                return;
            }
            let mut pipe = redis::pipe();
            // SCRIPT LOAD is idempotent: after a Redis restart the scripts are there again.
            // Only the scripts this batch runs: a signin alone measured 4 loads and 1 EVALSHA
            // with all four loaded (tests/cluster_watchlist.rs prints the commands).
            let mut loaded: Vec<&redis::Script> = Vec::with_capacity(4);
            for script in live.iter().filter_map(|op| op.script()) {
                if !loaded.iter().any(|l| std::ptr::eq(*l, script)) {
                    pipe.load_script(script).ignore();
                    loaded.push(script);
                }
            }
            for op in &live {
                self.add(&mut pipe, op);
            }
            match self.pool.pipeline(&pipe).await {
                Ok(results) => {
                    self.status.ok();
                    for (op, v) in live.into_iter().zip(results.iter()) {
                        self.done(op, v).await;
                    }
                    return;
                }
                Err(e) => self.status.failed("presence changes", &e),
            }
            first_try = false;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// The command of one operation.
    fn add(&self, pipe: &mut redis::Pipeline, op: &Op) {
        match op {
            Op::Subscribe {
                outbox,
                channel,
                member,
                ..
            } => {
                let args = self.join_args(outbox.socket_id.as_str(), channel, member.as_ref());
                let mut inv = SUBSCRIBE_SCRIPT.key(self.keys.base());
                for a in &args {
                    inv.arg(a.as_str());
                }
                pipe.invoke_script(&inv);
            }
            Op::Unsubscribe {
                socket_id, channel, ..
            } => {
                let scf = Self::flag(self.counts_frames(channel));
                let mut inv = UNSUBSCRIBE_SCRIPT.key(self.keys.base());
                inv.arg(&self.node).arg(channel).arg(socket_id).arg(scf);
                pipe.invoke_script(&inv);
            }
            Op::ClientEvent {
                channel,
                socket_id,
                frame,
            } => {
                pipe.add_command(self.client_event_cmd(channel, socket_id, frame));
            }
            Op::Signin {
                outbox,
                user,
                watchlist,
            } => {
                pipe.invoke_script(&self.signin_inv(outbox.socket_id.as_str(), user, watchlist));
            }
            Op::Signout { socket_id, .. } => {
                let mut inv = SIGNOUT_SCRIPT.key(self.keys.base());
                inv.arg(&self.node).arg(socket_id);
                pipe.invoke_script(&inv);
            }
            Op::SaveLineage {
                token,
                owner,
                lineage,
                ttl_ms,
            } => {
                let mut inv = LINEAGE_SAVE_SCRIPT.key(self.keys.base());
                inv.arg(token).arg(owner).arg(lineage).arg(ttl_ms);
                pipe.invoke_script(&inv);
            }
            Op::Reconcile => {}
        }
    }

    /// SIGNIN's invocation (see `scripts`): the distinct watched users.
    fn signin_inv(
        &self,
        socket_id: &str,
        user: &str,
        watchlist: &[String],
    ) -> redis::ScriptInvocation<'static> {
        let mut inv = SIGNIN_SCRIPT.key(self.keys.base());
        inv.arg(&self.node).arg(socket_id).arg(user);
        for w in watchlist::distinct(watchlist) {
            inv.arg(w);
        }
        inv
    }

    /// What follows an operation Redis answered.
    async fn done(&mut self, op: &Op, v: &redis::Value) {
        match op {
            Op::Subscribe {
                outbox,
                channel,
                member,
                resume,
            } => {
                let joined = parse_joined(v);
                let join = (
                    outbox.clone(),
                    channel.clone(),
                    member.clone(),
                    resume.clone(),
                );
                self.joined(join, joined).await;
            }
            Op::Unsubscribe {
                conn_id,
                socket_id,
                channel,
            } => {
                self.held.remove(&(socket_id.clone(), channel.clone()));
                let _ = self
                    .deliver
                    .send(Msg::Detach {
                        conn_id: *conn_id,
                        channel: channel.clone(),
                    })
                    .await;
            }
            Op::Signin {
                outbox,
                user,
                watchlist,
            } => {
                self.signed.insert(
                    outbox.socket_id.as_str().to_owned(),
                    Signed {
                        outbox: outbox.clone(),
                        user: user.clone(),
                        watchlist: watchlist.clone(),
                    },
                );
                self.watch_join(outbox, watchlist, v).await;
            }
            Op::Signout {
                conn_id,
                socket_id,
                watchlist,
            } => {
                self.signed.remove(socket_id);
                let _ = self
                    .deliver
                    .send(Msg::Unwatch {
                        conn_id: *conn_id,
                        watchlist: watchlist.clone(),
                    })
                    .await;
            }
            Op::ClientEvent { .. } | Op::SaveLineage { .. } | Op::Reconcile => {}
        }
    }

    /// A signin Redis answered: a watcher's initial state goes to the deliverer, which
    /// attaches it once past the gate.
    async fn watch_join(&self, outbox: &Arc<Outbox>, watchlist: &[String], v: &redis::Value) {
        if watchlist.is_empty() {
            return;
        }
        let a = items(v);
        let gate = a
            .first()
            .and_then(text)
            .and_then(|s| StreamId::parse(&s))
            .unwrap_or(StreamId::ZERO);
        let online: Vec<String> = a
            .get(1)
            .map(items)
            .unwrap_or(&[])
            .iter()
            .filter_map(text)
            .collect();
        let _ = self
            .deliver
            .send(Msg::Watch(WatchJoin {
                outbox: outbox.clone(),
                watchlist: watchlist.to_vec(),
                gate,
                first: watchlist::initial_frame(watchlist, &online),
            }))
            .await;
    }

    fn flag(b: bool) -> &'static str {
        if b {
            "1"
        } else {
            "0"
        }
    }

    fn counts_frames(&self, channel: &str) -> bool {
        self.app.subscription_count && !ChannelKind::of(channel).is_presence()
    }

    /// SUBSCRIBE's arguments (see `scripts`).
    fn join_args(&self, socket_id: &str, channel: &str, member: Option<&Member>) -> Vec<String> {
        let user = member.map_or("", |m| m.user_id.as_str());
        let info = member.and_then(|m| m.user_info.as_deref()).unwrap_or("");
        let cache = ChannelKind::of(channel).is_cache();
        vec![
            self.node.clone(),
            channel.to_owned(),
            socket_id.to_owned(),
            user.to_owned(),
            info.to_owned(),
            self.app.max_presence_members.to_string(),
            Self::flag(self.counts_frames(channel)).to_owned(),
            Self::flag(cache).to_owned(),
        ]
    }

    /// Runs the subscribe script once for a socket that is attached already (reconcile).
    async fn rejoin(
        &self,
        socket_id: &str,
        channel: &str,
        member: Option<&Member>,
    ) -> Result<(), redis::RedisError> {
        let args = self.join_args(socket_id, channel, member);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.pool
            .script(&SUBSCRIBE_SCRIPT, self.keys.base(), &args)
            .await
            .map(drop)
    }

    /// A subscribe Redis answered: the socket's snapshot goes to the deliverer, or the refusal
    /// to the socket.
    async fn joined(&mut self, join: Join, joined: Joined) {
        let (outbox, channel, member, resume) = join;
        let sid = outbox.socket_id.as_str().to_owned();
        let (gate, members, cache) = match joined {
            Joined::Full => {
                let max = self.app.max_presence_members;
                outbox.push(Frame::from(message::subscription_error(
                    &channel,
                    "LimitReached",
                    &format!("Presence channel is full: {max} members (max_presence_members)"),
                    400,
                )));
                if let Some(plan) = &resume {
                    crate::resume::lineage::unclaim(plan, &channel);
                }
                return;
            }
            Joined::Ok {
                gate,
                members,
                cache,
            } => (gate, members, cache),
        };
        let kind = ChannelKind::of(&channel);
        let data = if kind.is_presence() {
            presence::subscription_data(
                members
                    .iter()
                    .map(|(id, info)| (id.as_str(), Some(info.as_str()).filter(|i| !i.is_empty()))),
            )
        } else {
            "{}".to_owned()
        };
        let mut first = vec![Frame::from(message::subscription_succeeded(
            &channel, &data,
        ))];
        if kind.is_cache() {
            match cache {
                Some((name, data)) => first.push(Frame::from(message::frame(
                    &name,
                    Some(&channel),
                    Some(&data),
                    None,
                ))),
                None => {
                    first.push(Frame::from(message::cache_miss(&channel)));
                    self.observer.on_event(
                        &self.app,
                        HubEvent::CacheMiss {
                            channel: channel.clone(),
                        },
                    );
                }
            }
        }
        self.held.insert((sid, channel.clone()), member.clone());
        let _ = self
            .deliver
            .send(Msg::Activate(Activation {
                outbox,
                channel,
                user_id: member.map(|m| m.user_id),
                gate,
                first,
                resume,
            }))
            .await;
    }

    /// A client event's XADD: best effort, like on one box.
    fn client_event_cmd(&self, channel: &str, socket_id: &str, frame: &Frame) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.keys.bus())
            .arg("MAXLEN")
            .arg("~")
            .arg(MAXLEN)
            .arg("*")
            .arg("k")
            .arg("f")
            .arg("c")
            .arg(channel)
            .arg("x")
            .arg(socket_id)
            .arg("f")
            .arg(frame.as_str());
        cmd
    }

    /// What Redis holds for this node: (socket id, channel) pairs.
    async fn owned(&self) -> Result<HashSet<(String, String)>, redis::RedisError> {
        let key = format!("{}own:{}", self.keys.base(), self.node);
        let v = self.pool.query(redis::cmd("SMEMBERS").arg(key)).await?;
        Ok(items(&v)
            .iter()
            .filter_map(text)
            .filter_map(|t| {
                // cjson's ["s", channel, socket]: JSON (its "\/" is JSON too).
                let (kind, channel, socket): (String, String, String) =
                    serde_json::from_str(&t).ok()?;
                (kind == "s").then_some((socket, channel))
            })
            .collect())
    }

    async fn reconcile(&mut self) {
        let owned = match self.owned().await {
            Ok(o) => o,
            Err(e) => {
                // The next heartbeat that reaches Redis asks again.
                self.status.failed("reading this node's subscriptions", &e);
                return;
            }
        };
        let (missing, extra) = disagreement(&self.held, owned, |k, m| Some((k.clone(), m.clone())));
        if !disagreed(missing.len(), extra.len(), "what it holds") {
            return;
        }
        for ((sid, channel), member) in missing {
            // No snapshot needed: the socket is attached and saw the bus meanwhile.
            if let Err(e) = self.rejoin(&sid, &channel, member.as_ref()).await {
                // Lost again: the next heartbeat that gets through asks for this again.
                self.status
                    .failed("putting this node's subscriptions back", &e);
                return;
            }
        }
        for (sid, channel) in &extra {
            let scf = Self::flag(self.counts_frames(channel));
            let args = [self.node.as_str(), channel.as_str(), sid.as_str(), scf];
            if let Err(e) = self
                .pool
                .script(&UNSUBSCRIBE_SCRIPT, self.keys.base(), &args)
                .await
            {
                self.status.failed("an unsubscribe", &e);
                return;
            }
        }
    }
}

impl Worker {
    /// [`reconcile`](Self::reconcile) for signins: the ones Redis lost go back through SIGNIN
    /// (its watchers see the user come back, once), and this node's watchers among them get
    /// their watchlist's state again (while the node was reaped nobody counted them as
    /// watchers, so transitions meanwhile were not on the bus). Ones Redis holds that this
    /// node does not go through SIGNOUT.
    async fn reconcile_signins(&mut self) {
        let key = format!("{}wo:{}", self.keys.base(), self.node);
        let owned: HashSet<String> = match self.pool.query(redis::cmd("HKEYS").arg(key)).await {
            Ok(v) => items(&v).iter().filter_map(text).collect(),
            Err(e) => {
                self.status.failed("reading this node's signins", &e);
                return;
            }
        };
        let (missing, extra) = disagreement(&self.signed, owned, |_, s| {
            (!s.outbox.is_closing())
                .then(|| (s.outbox.clone(), s.user.clone(), s.watchlist.clone()))
        });
        if !disagreed(missing.len(), extra.len(), "who is signed in here") {
            return;
        }
        for sid in &extra {
            let args = [self.node.as_str(), sid.as_str()];
            if let Err(e) = self
                .pool
                .script(&SIGNOUT_SCRIPT, self.keys.base(), &args)
                .await
            {
                self.status.failed("a signout", &e);
                return;
            }
        }
        for (outbox, user, watchlist) in missing {
            let inv = self.signin_inv(outbox.socket_id.as_str(), &user, &watchlist);
            let mut pipe = redis::pipe();
            pipe.load_script(&SIGNIN_SCRIPT).ignore();
            pipe.invoke_script(&inv);
            match self.pool.pipeline(&pipe).await {
                Ok(v) => {
                    let v = v.first().cloned().unwrap_or(redis::Value::Nil);
                    self.watch_join(&outbox, &watchlist, &v).await;
                }
                Err(e) => {
                    // Lost again: the next heartbeat that gets through asks for this again.
                    self.status.failed("putting this node's signins back", &e);
                    return;
                }
            }
        }
    }
}

/// Where Redis and this node disagree after Redis lost data or reaped this node: what the node
/// holds that Redis does not (`missing`, as `keep` maps it; `None` leaves one out) and what
/// Redis holds that the node does not (`extra`). One rule for subscriptions and signins.
fn disagreement<K: std::hash::Hash + Eq, V, T>(
    held: &HashMap<K, V>,
    owned: HashSet<K>,
    keep: impl Fn(&K, &V) -> Option<T>,
) -> (Vec<T>, Vec<K>) {
    let missing = held
        .iter()
        .filter(|(k, _)| !owned.contains(*k))
        .filter_map(|(k, v)| keep(k, v))
        .collect();
    let extra = owned
        .into_iter()
        .filter(|k| !held.contains_key(k))
        .collect();
    (missing, extra)
}

/// Logs a disagreement of `what` (if any) and says whether there is one to put right.
fn disagreed(missing: usize, extra: usize, what: &str) -> bool {
    if missing == 0 && extra == 0 {
        return false;
    }
    tracing::warn!(
        missing,
        extra,
        "cluster: Redis and this node disagreed on {what} (its lease expired while it was cut off, or Redis lost data): putting Redis right"
    );
    true
}

fn parse_joined(v: &redis::Value) -> Joined {
    let a = items(v);
    if a.first().and_then(text).as_deref() != Some("ok") {
        return Joined::Full;
    }
    let gate = a
        .get(1)
        .and_then(text)
        .and_then(|s| StreamId::parse(&s))
        .unwrap_or(StreamId::ZERO);
    let members = a.get(2).map(pairs).unwrap_or_default();
    let cache = a.get(3).map(items).and_then(|c| match c {
        [n, d] => Some((text(n)?, text(d)?)),
        _ => None,
    });
    Joined::Ok {
        gate,
        members,
        cache,
    }
}
