//! The presence worker of one app: runs this node's subscribes, unsubscribes and client events
//! against Redis one at a time, in the order the connections made them (an unsubscribe never
//! overtakes its subscribe), and hands each joined socket to the deliverer with its snapshot.
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
use super::scripts::{MAXLEN, SUBSCRIBE_SCRIPT, UNSUBSCRIBE_SCRIPT};
use super::status::Status;
use crate::config::AppConfig;
use crate::hub::{HubEvent, HubObserver, Member, Outbox};
use crate::protocol::{message, presence, ChannelKind, Frame};

pub enum Op {
    Subscribe {
        outbox: Arc<Outbox>,
        channel: String,
        member: Option<Member>,
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
    /// Compare what Redis says this node holds with what it holds, and put Redis right
    /// through the normal scripts (after Redis was lost: a lease that expired, data Redis
    /// lost, a script whose effect was in the last second before a crash).
    Reconcile,
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
}

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
        }
    }

    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Op>) {
        while let Some(op) = rx.recv().await {
            match op {
                Op::Subscribe {
                    outbox,
                    channel,
                    member,
                } => self.subscribe(outbox, channel, member).await,
                Op::Unsubscribe {
                    conn_id,
                    socket_id,
                    channel,
                } => self.unsubscribe(conn_id, socket_id, channel).await,
                Op::ClientEvent {
                    channel,
                    socket_id,
                    frame,
                } => self.client_event(&channel, &socket_id, &frame).await,
                Op::Reconcile => self.reconcile().await,
            }
        }
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

    /// Runs the subscribe script until it answers (or the connection is gone).
    async fn join(
        &self,
        outbox: Option<&Outbox>,
        socket_id: &str,
        channel: &str,
        member: Option<&Member>,
    ) -> Option<Joined> {
        let user = member.map_or("", |m| m.user_id.as_str());
        let info = member.and_then(|m| m.user_info.as_deref()).unwrap_or("");
        let max = self.app.max_presence_members.to_string();
        let cache = ChannelKind::of(channel).is_cache();
        let args = [
            self.node.as_str(),
            channel,
            socket_id,
            user,
            info,
            max.as_str(),
            Self::flag(self.counts_frames(channel)),
            Self::flag(cache),
        ];
        let mut backoff = Duration::from_millis(50);
        loop {
            if outbox.is_some_and(Outbox::is_closing) {
                return None;
            }
            match self
                .pool
                .script(&SUBSCRIBE_SCRIPT, self.keys.base(), &args)
                .await
            {
                Ok(v) => {
                    self.status.ok();
                    return Some(parse_joined(&v));
                }
                Err(e) => self.status.failed("a subscribe", &e),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    async fn subscribe(&mut self, outbox: Arc<Outbox>, channel: String, member: Option<Member>) {
        let sid = outbox.socket_id.as_str().to_owned();
        let Some(joined) = self
            .join(Some(&outbox), &sid, &channel, member.as_ref())
            .await
        else {
            return;
        };
        let (gate, members, cache) = match joined {
            Joined::Full => {
                let max = self.app.max_presence_members;
                outbox.push(Frame::from(message::subscription_error(
                    &channel,
                    "LimitReached",
                    &format!("Presence channel is full: {max} members (max_presence_members)"),
                    400,
                )));
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
            }))
            .await;
    }

    async fn unsubscribe(&mut self, conn_id: u64, socket_id: String, channel: String) {
        let scf = Self::flag(self.counts_frames(&channel));
        let args = [
            self.node.as_str(),
            channel.as_str(),
            socket_id.as_str(),
            scf,
        ];
        let mut backoff = Duration::from_millis(50);
        loop {
            match self
                .pool
                .script(&UNSUBSCRIBE_SCRIPT, self.keys.base(), &args)
                .await
            {
                Ok(_) => {
                    self.status.ok();
                    break;
                }
                Err(e) => self.status.failed("an unsubscribe", &e),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
        self.held.remove(&(socket_id, channel.clone()));
        let _ = self.deliver.send(Msg::Detach { conn_id, channel }).await;
    }

    /// Client events are best effort, like on one box: a few tries, then dropped (logged).
    async fn client_event(&self, channel: &str, socket_id: &str, frame: &Frame) {
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
        for attempt in 0..3u32 {
            match self.pool.query(&cmd).await {
                Ok(_) => return,
                Err(e) if attempt == 2 => {
                    self.status.failed("a client event", &e);
                    tracing::warn!(%channel, "cluster: client event dropped: Redis does not answer");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
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
        let missing: Vec<((String, String), Option<Member>)> = self
            .held
            .iter()
            .filter(|(k, _)| !owned.contains(*k))
            .map(|(k, m)| (k.clone(), m.clone()))
            .collect();
        let extra: Vec<&(String, String)> = owned
            .iter()
            .filter(|k| !self.held.contains_key(*k))
            .collect();
        if missing.is_empty() && extra.is_empty() {
            return;
        }
        tracing::warn!(
            missing = missing.len(),
            extra = extra.len(),
            "cluster: Redis and this node disagreed on what it holds (its lease expired while it was cut off, or Redis lost data): putting Redis right"
        );
        for ((sid, channel), member) in missing {
            // No snapshot needed: the socket is attached and saw the bus meanwhile.
            let _ = self.join(None, &sid, &channel, member.as_ref()).await;
        }
        for (sid, channel) in extra {
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
