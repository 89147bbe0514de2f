//! The hub: per-app channel registry, presence membership (by user, not by connection),
//! signed-in users and watchlists, the cache of cache channels, and fan-out. An event is
//! serialised once and the same `Frame` is pushed to every subscriber's bounded `Outbox`.
//! Occupancy, membership and client events are reported to a `HubObserver` (webhooks) after the
//! lock is released. Every frame the hub sends, a publish's or a `member_added`, is written by
//! the [`Flusher`] after the lock is released: no socket write runs under the app's lock. The
//! hub knows nothing of transports or HTTP.

mod cache;
mod link;
mod outbox;

pub use cache::CACHE_TTL;
pub use link::{ClusterLink, LinkError, LinkFuture};
pub use outbox::{CloseRequest, DirectWrite, Flusher, Outbox, Pushed, Wrote};

use std::collections::HashMap;

use indexmap::IndexMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::config::{AppConfig, ResumeConfig};
use crate::protocol::{message, presence, ChannelKind, Frame};
use crate::resume::{self, AppResume};

/// Something the hub reports for webhooks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HubEvent {
    ChannelOccupied {
        channel: String,
    },
    ChannelVacated {
        channel: String,
    },
    MemberAdded {
        channel: String,
        user_id: String,
    },
    MemberRemoved {
        channel: String,
        user_id: String,
    },
    ClientEvent {
        channel: String,
        event: String,
        data: Option<String>,
        socket_id: String,
        user_id: Option<String>,
    },
    CacheMiss {
        channel: String,
    },
    SubscriptionCount {
        channel: String,
        count: usize,
    },
}

/// Receives hub events (after the hub's lock is released). Must not block.
pub trait HubObserver: Send + Sync {
    fn on_event(&self, app: &AppConfig, event: HubEvent);
}

/// An observer that ignores everything.
pub struct NoObserver;
impl HubObserver for NoObserver {
    fn on_event(&self, _app: &AppConfig, _event: HubEvent) {}
}

/// A presence member as given by the auth endpoint or signin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub user_id: String,
    /// Raw JSON text of `user_info`, if any.
    pub user_info: Option<String>,
}

/// Why a subscription was refused by the hub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubscribeError {
    MemberLimit { max: usize },
}

struct Subscriber {
    outbox: Arc<Outbox>,
    user_id: Option<String>,
}

struct MemberEntry {
    info: Option<String>,
    sockets: usize,
}

#[derive(Default)]
struct Channel {
    /// In subscription order: a fan-out walks the outboxes in the order they were allocated.
    subscribers: IndexMap<u64, Subscriber>,
    members: HashMap<String, MemberEntry>,
}

#[derive(Default)]
struct AppState {
    channels: HashMap<String, Channel>,
    caches: cache::Caches,
    /// Signed-in user id → that user's connections.
    users: HashMap<String, Vec<Arc<Outbox>>>,
    /// Watched user id → connections watching it.
    watchers: HashMap<String, Vec<Arc<Outbox>>>,
}

/// Counters for one app (read by metrics and the console).
#[derive(Default)]
pub struct AppCounters {
    pub connections: AtomicUsize,
    pub messages_out: AtomicU64,
    pub messages_in: AtomicU64,
    pub api_events: AtomicU64,
}

/// One app's live state.
pub struct App {
    pub config: AppConfig,
    /// `config.secret`'s HMAC key, computed once for the signature checks (HTTP API, channel auth).
    pub mac_key: crate::protocol::auth::MacKey,
    state: RwLock<AppState>,
    pub counters: AppCounters,
    observer: Arc<dyn HubObserver>,
    /// Writes the fan-out's frames to idle sockets once the publisher yields.
    flusher: Arc<Flusher>,
    /// The cluster, when `[cluster]` is configured: presence, occupancy and the order of
    /// deliveries are then decided there (see `link`).
    cluster: Option<Arc<dyn ClusterLink>>,
    /// Positions, recent events and lineages when `[resume]` is enabled.
    resume: Option<Arc<AppResume>>,
}

/// What [`App::subscribe_with`] did besides subscribing.
#[derive(Debug, Default)]
pub struct Subscribed {
    /// The app's head at the subscribe: every later event reaches the socket live.
    pub head: u64,
    /// The replay's outcome, when one was asked for.
    pub resumed: Option<resume::Outcome>,
}

/// An API event as the cluster's bus carries it (one frame per channel is built from it).
#[derive(Clone, Copy, Debug)]
pub struct BusEvent<'a> {
    pub name: &'a str,
    pub data: &'a str,
    /// The socket id the publisher excluded (`toOthers`).
    pub except: Option<&'a str>,
}

impl BusEvent<'_> {
    fn frame(&self, channel: &str) -> Frame {
        Frame::from(message::frame(
            self.name,
            Some(channel),
            Some(self.data),
            None,
        ))
    }
}

/// Occupancy of a channel, for the HTTP API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelInfo {
    pub name: String,
    pub subscription_count: usize,
    /// Distinct users on presence channels.
    pub user_count: Option<usize>,
}

impl App {
    pub fn new(config: AppConfig, observer: Arc<dyn HubObserver>) -> App {
        App::with_link(config, observer, None)
    }

    /// An app that is part of a cluster when `cluster` is given.
    pub fn with_link(
        config: AppConfig,
        observer: Arc<dyn HubObserver>,
        cluster: Option<Arc<dyn ClusterLink>>,
    ) -> App {
        App {
            mac_key: crate::protocol::auth::MacKey::new(&config.secret),
            config,
            state: RwLock::new(AppState::default()),
            counters: AppCounters::default(),
            observer,
            flusher: Arc::default(),
            cluster,
            resume: None,
        }
    }

    /// The cluster this app is part of, if any.
    pub fn cluster(&self) -> Option<&Arc<dyn ClusterLink>> {
        self.cluster.as_ref()
    }

    /// The app's resume state, when `[resume]` is enabled.
    pub fn resume(&self) -> Option<&Arc<AppResume>> {
        self.resume.as_ref()
    }

    fn read(&self) -> RwLockReadGuard<'_, AppState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, AppState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn emit(&self, events: Vec<HubEvent>) {
        for e in events {
            self.observer.on_event(&self.config, e);
        }
    }

    /// Counts a new connection; `false` when the app is at `max_connections`.
    pub fn try_connect(&self) -> bool {
        let mut max = self.config.max_connections;
        if let Some(link) = &self.cluster {
            // The other nodes' share, as of their last heartbeat (a few seconds old at most).
            max = max.saturating_sub(link.remote_connections(&self.config.id));
        }
        self.counters
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn disconnected(&self) {
        let _ = self
            .counters
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            });
    }

    /// Queues `frame` for each outbox in `to`; returns how many accepted it. Every hub frame
    /// goes this way, and the hub calls it under the app's lock: the socket writes are deferred
    /// to the [`Flusher`], which runs once the lock is released and the caller yields (a slow
    /// `writev` never holds up the app's other connections).
    fn send_to<'a>(&self, to: impl Iterator<Item = &'a Arc<Outbox>>, frame: &Frame) -> usize {
        let n = self.flusher.fan_out(to, frame);
        self.counters
            .messages_out
            .fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// [`send_to`](Self::send_to) one outbox.
    fn send(&self, outbox: &Arc<Outbox>, frame: Frame) {
        self.send_to(std::iter::once(outbox), &frame);
    }

    /// Subscribes `outbox`; pushes `subscription_succeeded` (and the cached event or
    /// `pusher:cache_miss`) to it, `member_added` to the others. Idempotent per connection.
    pub fn subscribe(
        &self,
        outbox: &Arc<Outbox>,
        channel: &str,
        member: Option<Member>,
    ) -> Result<(), SubscribeError> {
        self.subscribe_with(outbox, channel, member, None).map(drop)
    }

    /// [`subscribe`](Self::subscribe) for a resumable connection (`plan`): its channel's events
    /// are kept from now on, and the events it missed (`plan.from`) go right after
    /// `subscription_succeeded`. The app's lock is the gate: no publish runs while it is held,
    /// so the missed events end exactly where the live ones begin, none twice, none out of order.
    pub fn subscribe_with(
        &self,
        outbox: &Arc<Outbox>,
        channel: &str,
        member: Option<Member>,
        plan: Option<&resume::Plan>,
    ) -> Result<Subscribed, SubscribeError> {
        if let Some(link) = &self.cluster {
            // The cluster sends subscription_succeeded once its scripts decided, attaches the
            // socket and replays what a resumable one missed (`cluster::deliver`); the head
            // now is where its mark starts until the attach says exactly.
            let resume = plan.filter(|_| self.resume.is_some()).cloned();
            link.subscribe(&self.config.id, outbox, channel, member, resume);
            return Ok(Subscribed {
                head: self.resume.as_ref().map_or(0, |r| r.head()),
                resumed: None,
            });
        }
        let kind = ChannelKind::of(channel);
        let mut events = Vec::new();
        let mut subscribed = Subscribed::default();
        {
            let mut st = self.write();
            let st = &mut *st;
            if let (Some(m), Some(ch)) = (&member, st.channels.get(channel)) {
                let full = !ch.members.contains_key(&m.user_id)
                    && ch.members.len() >= self.config.max_presence_members;
                if full && !ch.subscribers.contains_key(&outbox.conn_id) {
                    return Err(SubscribeError::MemberLimit {
                        max: self.config.max_presence_members,
                    });
                }
            } else if member.is_some() && self.config.max_presence_members == 0 {
                return Err(SubscribeError::MemberLimit { max: 0 });
            }
            let ch = st.channels.entry(channel.to_owned()).or_default();
            let already = ch.subscribers.contains_key(&outbox.conn_id);
            if !already {
                let occupied = ch.subscribers.is_empty();
                ch.subscribers.insert(
                    outbox.conn_id,
                    Subscriber {
                        outbox: outbox.clone(),
                        user_id: member.as_ref().map(|m| m.user_id.clone()),
                    },
                );
                if occupied {
                    events.push(HubEvent::ChannelOccupied {
                        channel: channel.to_owned(),
                    });
                }
                if let Some(m) = &member {
                    let entry = ch.members.entry(m.user_id.clone()).or_insert(MemberEntry {
                        info: m.user_info.clone(),
                        sockets: 0,
                    });
                    entry.sockets += 1;
                    if entry.sockets == 1 {
                        let frame = Frame::from(message::member_added(
                            channel,
                            &m.user_id,
                            m.user_info.as_deref(),
                        ));
                        let others = ch
                            .subscribers
                            .values()
                            .filter(|s| s.user_id.as_deref() != Some(m.user_id.as_str()))
                            .map(|s| &s.outbox);
                        self.send_to(others, &frame);
                        events.push(HubEvent::MemberAdded {
                            channel: channel.to_owned(),
                            user_id: m.user_id.clone(),
                        });
                    }
                }
            }
            let data = if kind.is_presence() {
                presence_data(ch)
            } else {
                "{}".to_owned()
            };
            self.send(
                outbox,
                Frame::from(message::subscription_succeeded(channel, &data)),
            );
            if let Some(r) = &self.resume {
                // Under the write lock no fan-out runs: every later event reaches this socket
                // live. Kept for a signin that comes after the subscribe (`resume_late`).
                subscribed.head = r.head();
                if let Some(plan) = plan {
                    subscribed = self.replay(r, outbox, channel, plan, already);
                }
            }
            if !already && !kind.is_presence() {
                self.subscription_count_changed(channel, ch, &mut events);
            }
            if kind.is_cache() {
                match st.caches.get(channel, Instant::now()) {
                    Some((frame, _)) => self.send(outbox, frame.clone()),
                    _ => {
                        self.send(outbox, Frame::from(message::cache_miss(channel)));
                        events.push(HubEvent::CacheMiss {
                            channel: channel.to_owned(),
                        });
                    }
                }
            }
        }
        self.emit(events);
        Ok(subscribed)
    }

    /// Under the app's write lock: keeps `channel`'s events for a resumable subscriber and
    /// queues what it missed, all or nothing (or the failure event, when configured).
    fn replay(
        &self,
        r: &AppResume,
        outbox: &Arc<Outbox>,
        channel: &str,
        plan: &resume::Plan,
        already: bool,
    ) -> Subscribed {
        let mut index = r.index();
        if !already {
            index.interest(channel);
        }
        let head = index.head();
        let resumed = plan.from.map(|from| {
            let missed = index.missed(channel, from, &plan.chain, r.caps(), resume::now_ms());
            self.queue_replay(r, outbox, channel, missed)
        });
        Subscribed { head, resumed }
    }

    /// Queues a replay, all or nothing: one that would overflow the queue (4100) is not sent,
    /// and a failure sends the failure event when configured.
    pub fn queue_replay(
        &self,
        r: &AppResume,
        outbox: &Arc<Outbox>,
        channel: &str,
        missed: Result<Vec<Frame>, resume::Failure>,
    ) -> resume::Outcome {
        let missed = missed.and_then(|frames| {
            if frames.len() < outbox.room() {
                Ok(frames)
            } else {
                Err(resume::Failure::QueueFull)
            }
        });
        match missed {
            Ok(frames) => {
                let n = frames.len();
                for f in frames {
                    self.send(outbox, f);
                }
                resume::Outcome::Replayed(n)
            }
            Err(f) => {
                if let Some(frame) = r.failure_frame(channel, f) {
                    self.send(outbox, frame);
                }
                resume::Outcome::Failed(f)
            }
        }
    }

    /// A connection became resumable after it subscribed to `channel` at position
    /// `subscribed_at` (its `pusher:signin` came after the subscribe, as pusher-js sends them on
    /// a reconnect): the channel's events are kept for it from now on, and what it missed after
    /// `from` is queued now, if nothing of the channel reached it live since the subscribe.
    /// Then the missed events end where the live ones begin, as with a replay at the
    /// subscribe; otherwise they would come after later events, and nothing is sent
    /// (`overtaken`). The index's lock is the gate: no fan-out runs while it is held.
    pub fn resume_late(
        &self,
        outbox: &Arc<Outbox>,
        channel: &str,
        subscribed_at: u64,
        plan: &resume::Plan,
    ) -> Option<resume::Outcome> {
        // Clustered, the socket may not be attached yet (its gate is the deliverer's): a
        // signin after the subscribe does not replay there (README "Resume", cluster).
        let r = self.resume.as_ref().filter(|_| self.cluster.is_none())?;
        let mut index = r.index();
        index.interest(channel);
        let from = plan.from?;
        let missed = if index.has_after(channel, subscribed_at) {
            Err(resume::Failure::Overtaken)
        } else {
            index.missed(channel, from, &plan.chain, r.caps(), resume::now_ms())
        };
        Some(self.queue_replay(r, outbox, channel, missed))
    }

    fn subscription_count_changed(&self, channel: &str, ch: &Channel, events: &mut Vec<HubEvent>) {
        if !self.config.subscription_count {
            return;
        }
        let count = ch.subscribers.len();
        let frame = Frame::from(message::subscription_count(channel, count));
        self.send_to(ch.subscribers.values().map(|s| &s.outbox), &frame);
        events.push(HubEvent::SubscriptionCount {
            channel: channel.to_owned(),
            count,
        });
    }

    /// Removes `outbox` from `channel`; unknown channels are ignored.
    pub fn unsubscribe(&self, outbox: &Outbox, channel: &str) {
        let mut events = Vec::new();
        {
            let mut st = self.write();
            self.unsubscribe_locked(&mut st, outbox, channel, &mut events);
        }
        self.emit(events);
    }

    fn unsubscribe_locked(
        &self,
        st: &mut AppState,
        outbox: &Outbox,
        channel: &str,
        events: &mut Vec<HubEvent>,
    ) {
        let conn_id = outbox.conn_id;
        if let Some(link) = &self.cluster {
            Self::detach_locked(st, conn_id, channel);
            link.unsubscribe(&self.config.id, outbox, channel);
            return;
        }
        let Some(ch) = st.channels.get_mut(channel) else {
            return;
        };
        let Some(sub) = ch.subscribers.swap_remove(&conn_id) else {
            return;
        };
        if let Some(user_id) = sub.user_id {
            let gone = match ch.members.get_mut(&user_id) {
                Some(m) => {
                    m.sockets -= 1;
                    m.sockets == 0
                }
                None => false,
            };
            if gone {
                ch.members.remove(&user_id);
                let frame = Frame::from(message::member_removed(channel, &user_id));
                self.send_to(ch.subscribers.values().map(|s| &s.outbox), &frame);
                events.push(HubEvent::MemberRemoved {
                    channel: channel.to_owned(),
                    user_id,
                });
            }
        }
        if ch.subscribers.is_empty() {
            st.channels.remove(channel);
            events.push(HubEvent::ChannelVacated {
                channel: channel.to_owned(),
            });
        } else if !ChannelKind::of(channel).is_presence() {
            self.subscription_count_changed(channel, ch, events);
        }
    }

    /// Everything a closing connection leaves: its channels, its signed-in user, its watchlist.
    pub fn remove_connection(
        &self,
        outbox: &Outbox,
        channels: &[String],
        user_id: Option<&str>,
        watchlist: &[String],
    ) {
        let mut events = Vec::new();
        {
            let mut st = self.write();
            for c in channels {
                self.unsubscribe_locked(&mut st, outbox, c, &mut events);
            }
            Self::unwatch_locked(&mut st, outbox.conn_id, watchlist);
            if let (Some(link), Some(_)) = (&self.cluster, user_id) {
                // Online and offline are decided cluster-wide (`watch_event` delivers them);
                // the local list of the user's connections stays for terminate_connections.
                Self::forget_user(&mut st, outbox, user_id);
                if self.config.watchlist {
                    link.signout(&self.config.id, outbox, watchlist);
                }
            } else if let Some(uid) = user_id {
                let offline = match st.users.get_mut(uid) {
                    Some(v) => {
                        v.retain(|o| o.conn_id != outbox.conn_id);
                        v.is_empty()
                    }
                    None => false,
                };
                if offline {
                    st.users.remove(uid);
                    if self.config.watchlist {
                        if let Some(ws) = st.watchers.get(uid) {
                            let frame = Frame::from(message::watchlist_events(&[(
                                "offline",
                                vec![uid.to_owned()],
                            )]));
                            self.send_to(ws.iter(), &frame);
                        }
                    }
                }
            }
        }
        self.emit(events);
    }

    /// Publishes a prebuilt frame on `channel`, skipping the connection with `except` socket id.
    /// Stores it as the cached event of a cache channel. Returns how many sockets got it.
    pub fn publish(&self, channel: &str, frame: &Frame, except: Option<&str>) -> usize {
        self.publish_with(channel, || frame.clone(), except)
    }

    /// Like [`publish`](Self::publish), building the frame only when someone will get it (or
    /// a cache channel keeps it): an event for an empty channel is not serialised at all.
    pub fn publish_with(
        &self,
        channel: &str,
        frame: impl FnOnce() -> Frame,
        except: Option<&str>,
    ) -> usize {
        self.publish_at(channel, frame, except).0
    }

    /// [`publish_with`](Self::publish_with), also saying the event's position when resume is
    /// on (cache channels are never replayed and get none).
    pub fn publish_at(
        &self,
        channel: &str,
        frame: impl FnOnce() -> Frame,
        except: Option<&str>,
    ) -> (usize, Option<u64>) {
        let frame = std::cell::LazyCell::new(frame);
        let cache = ChannelKind::of(channel).is_cache();
        if cache {
            self.write()
                .caches
                .insert(channel, Frame::clone(&frame), Instant::now());
        }
        // Clustered, positions come from the bus (`publish_entry`).
        if let Some(r) = self
            .resume
            .as_ref()
            .filter(|_| !cache && self.cluster.is_none())
        {
            return self.publish_positioned(r, channel, frame, except);
        }
        let st = self.read();
        let Some(ch) = st.channels.get(channel) else {
            return (0, None);
        };
        let to = ch
            .subscribers
            .values()
            .map(|s| &s.outbox)
            .filter(|o| except.is_none_or(|e| e != o.socket_id.as_str()));
        (self.send_to(to, &frame), None)
    }

    /// The resume path of a publish: the position is assigned and the event kept under the
    /// index's lock, held through the fan-out, so every socket gets positions in order and the
    /// head only moves once a fan-out is complete.
    fn publish_positioned(
        &self,
        r: &AppResume,
        channel: &str,
        frame: std::cell::LazyCell<Frame, impl FnOnce() -> Frame>,
        except: Option<&str>,
    ) -> (usize, Option<u64>) {
        let st = self.read();
        let mut index = r.index();
        let pos = index.next_position();
        let ch = st.channels.get(channel);
        if index.wants(channel) {
            let entry = resume::Entry {
                pos,
                at_ms: resume::now_ms(),
                except: except.map(Into::into),
                frame: Frame::clone(&frame),
            };
            index.record(channel, entry, r.caps());
        }
        let n = ch.map_or(0, |ch| {
            let to = ch
                .subscribers
                .values()
                .map(|s| &s.outbox)
                .filter(|o| except.is_none_or(|e| e != o.socket_id.as_str()));
            self.send_to(to, &frame)
        });
        r.published(pos);
        (n, Some(pos))
    }

    /// Cluster: delivers the API event of one bus entry, at resume position `pos`, on each of
    /// `channels`. With resume on, it goes into the rings and to the sockets under the index's
    /// lock, and the head moves to `pos` only once every channel's fan-out is complete: a
    /// proof ping queued after that has all of them ahead of it. `pos` is `None` for an event
    /// delivered before it reached the bus (it is kept at its position when it comes back,
    /// [`keep_entry`](Self::keep_entry)).
    pub fn publish_entry(&self, pos: Option<u64>, channels: &[String], event: BusEvent<'_>) {
        let Some(pos) = pos.filter(|_| self.resume.is_some()) else {
            // As on one box: a frame is built only for a channel someone here is on.
            for c in channels {
                self.publish_with(c, || event.frame(c), event.except);
            }
            return;
        };
        for c in channels.iter().filter(|c| ChannelKind::of(c).is_cache()) {
            self.publish_with(c, || event.frame(c), event.except);
        }
        self.record_entry(pos, resume::now_ms(), channels, event, true);
    }

    /// Cluster: keeps an API event published at `at_ms` for resume at bus position `pos`
    /// without delivering it: one this node had delivered on its own while Redis was
    /// unreachable and that came back from the bus, or one of the bus's recent history read
    /// when this node started.
    pub fn keep_entry(&self, pos: u64, at_ms: u64, channels: &[String], event: BusEvent<'_>) {
        self.record_entry(pos, at_ms, channels, event, false);
    }

    fn record_entry(
        &self,
        pos: u64,
        at_ms: u64,
        channels: &[String],
        event: BusEvent<'_>,
        fan_out: bool,
    ) {
        let Some(r) = &self.resume else { return };
        let st = self.read();
        let mut index = r.index();
        for c in channels.iter().filter(|c| !ChannelKind::of(c).is_cache()) {
            let frame = event.frame(c);
            let entry = resume::Entry {
                pos,
                at_ms,
                except: event.except.map(Into::into),
                frame: frame.clone(),
            };
            index.record(c, entry, r.caps());
            if let Some(ch) = st.channels.get(c.as_str()).filter(|_| fan_out) {
                let to = ch
                    .subscribers
                    .values()
                    .map(|s| &s.outbox)
                    .filter(|o| event.except.is_none_or(|e| e != o.socket_id.as_str()));
                self.send_to(to, &frame);
            }
        }
        index.advance(pos);
        r.published(index.head());
    }

    /// Relays a client event to every other subscriber of `channel`.
    pub fn client_event(
        &self,
        from: &Outbox,
        channel: &str,
        event: &str,
        data: Option<&str>,
        user_id: Option<&str>,
    ) -> usize {
        let frame = Frame::from(message::frame(event, Some(channel), data, user_id));
        if let Some(link) = &self.cluster {
            // Through the bus: the others on every node get it in the bus's order.
            link.client_event(&self.config.id, from, channel, frame);
            self.emit_client_event(from, channel, event, data, user_id);
            return 0;
        }
        let n = {
            let st = self.read();
            let Some(ch) = st.channels.get(channel) else {
                return 0;
            };
            let to = ch
                .subscribers
                .values()
                .map(|s| &s.outbox)
                .filter(|o| o.conn_id != from.conn_id);
            self.send_to(to, &frame)
        };
        self.emit_client_event(from, channel, event, data, user_id);
        n
    }

    fn emit_client_event(
        &self,
        from: &Outbox,
        channel: &str,
        event: &str,
        data: Option<&str>,
        user_id: Option<&str>,
    ) {
        self.emit(vec![HubEvent::ClientEvent {
            channel: channel.to_owned(),
            event: event.to_owned(),
            data: data.map(str::to_owned),
            socket_id: from.socket_id.to_string(),
            user_id: user_id.map(str::to_owned),
        }]);
    }

    /// Cluster: adds `outbox` to `channel`'s local sockets as `user_id`, with no frame and no
    /// event (the cluster decided those and sent the socket its snapshot). Idempotent.
    pub fn attach(&self, outbox: &Arc<Outbox>, channel: &str, user_id: Option<String>) {
        let mut st = self.write();
        let ch = st.channels.entry(channel.to_owned()).or_default();
        ch.subscribers.insert(
            outbox.conn_id,
            Subscriber {
                outbox: outbox.clone(),
                user_id,
            },
        );
    }

    /// Cluster: removes connection `conn_id` from `channel`'s local sockets, with no event.
    pub fn detach(&self, conn_id: u64, channel: &str) {
        Self::detach_locked(&mut self.write(), conn_id, channel);
    }

    fn detach_locked(st: &mut AppState, conn_id: u64, channel: &str) {
        if let Some(ch) = st.channels.get_mut(channel) {
            ch.subscribers.swap_remove(&conn_id);
            if ch.subscribers.is_empty() {
                st.channels.remove(channel);
            }
        }
    }

    /// Cluster: closes every connection subscribed to a channel of this app or watching a user
    /// with `code` (this node missed bus entries for good; the clients subscribe and sign in
    /// again and get fresh state).
    pub fn close_subscribers(&self, code: u16, reason: &str) {
        let st = self.read();
        for ch in st.channels.values() {
            for s in ch.subscribers.values() {
                s.outbox.close(code, reason, true);
            }
        }
        for o in st.watchers.values().flatten() {
            o.close(code, reason, true);
        }
    }

    /// Cluster: `outbox` watches `watchlist` from now on (the cluster sent it the initial
    /// state and what changed since). Idempotent.
    pub fn watch_attach(&self, outbox: &Arc<Outbox>, watchlist: &[String]) {
        let mut st = self.write();
        for w in watchlist {
            let v = st.watchers.entry(w.clone()).or_default();
            if !v.iter().any(|o| o.conn_id == outbox.conn_id) {
                v.push(outbox.clone());
            }
        }
    }

    /// Cluster: connection `conn_id` no longer watches `watchlist`. Idempotent.
    pub fn watch_detach(&self, conn_id: u64, watchlist: &[String]) {
        Self::unwatch_locked(&mut self.write(), conn_id, watchlist);
    }

    fn unwatch_locked(st: &mut AppState, conn_id: u64, watchlist: &[String]) {
        for w in watchlist {
            if let Some(v) = st.watchers.get_mut(w) {
                v.retain(|o| o.conn_id != conn_id);
                if v.is_empty() {
                    st.watchers.remove(w);
                }
            }
        }
    }

    /// Cluster: `user` went online or offline somewhere in the cluster (decided once there);
    /// tells this node's watchers of `user`. Returns how many got it.
    pub fn watch_event(&self, user: &str, online: bool) -> usize {
        let st = self.read();
        let Some(ws) = st.watchers.get(user) else {
            return 0;
        };
        let name = if online { "online" } else { "offline" };
        let frame = Frame::from(message::watchlist_events(&[(name, vec![user.to_owned()])]));
        self.send_to(ws.iter(), &frame)
    }

    /// Removes `outbox` from `user_id`'s signed-in connections.
    fn forget_user(st: &mut AppState, outbox: &Outbox, user_id: Option<&str>) {
        let Some(uid) = user_id else { return };
        if let Some(v) = st.users.get_mut(uid) {
            v.retain(|o| o.conn_id != outbox.conn_id);
            if v.is_empty() {
                st.users.remove(uid);
            }
        }
    }

    /// Cluster: queues `frame` for one outbox, through the flusher like every hub frame (so
    /// it stays in order with the fan-out that follows).
    pub fn deliver_to(&self, outbox: &Arc<Outbox>, frame: Frame) {
        self.send(outbox, frame);
    }

    /// Registers a signed-in connection and its watchlist; sends the watchlist's online subset to
    /// it and `online` to the user's watchers when this is the user's first connection.
    pub fn signin(&self, outbox: &Arc<Outbox>, user_id: &str, watchlist: &[String]) {
        let mut st = self.write();
        let first = {
            let v = st.users.entry(user_id.to_owned()).or_default();
            let first = v.is_empty();
            if !v.iter().any(|o| o.conn_id == outbox.conn_id) {
                v.push(outbox.clone());
            }
            first
        };
        if !self.config.watchlist {
            return;
        }
        if let Some(link) = &self.cluster {
            // Whether this is the user's first connection anywhere, and which watched users
            // are online, is the cluster's to say; it sends the initial state when its
            // answer is consistent with the bus (see `cluster::watchlist`).
            drop(st);
            link.signin(&self.config.id, outbox, user_id, watchlist);
            return;
        }
        if first {
            if let Some(ws) = st.watchers.get(user_id) {
                let frame = Frame::from(message::watchlist_events(&[(
                    "online",
                    vec![user_id.to_owned()],
                )]));
                self.send_to(ws.iter().filter(|o| o.conn_id != outbox.conn_id), &frame);
            }
        }
        if !watchlist.is_empty() {
            for w in watchlist {
                let v = st.watchers.entry(w.clone()).or_default();
                if !v.iter().any(|o| o.conn_id == outbox.conn_id) {
                    v.push(outbox.clone());
                }
            }
            let online: Vec<String> = watchlist
                .iter()
                .filter(|w| st.users.contains_key(*w))
                .cloned()
                .collect();
            let offline: Vec<String> = watchlist
                .iter()
                .filter(|w| !st.users.contains_key(*w))
                .cloned()
                .collect();
            let mut evs = vec![("online", online)];
            if !offline.is_empty() {
                evs.push(("offline", offline));
            }
            self.send(outbox, Frame::from(message::watchlist_events(&evs)));
        }
    }

    /// Closes every connection signed in as `user_id` with 4009; returns how many. Nothing of
    /// the user is resumed afterwards.
    pub fn terminate_user(&self, user_id: &str) -> usize {
        if let Some(r) = &self.resume {
            r.terminate(user_id);
        }
        let st = self.read();
        let Some(v) = st.users.get(user_id) else {
            return 0;
        };
        for o in v {
            o.close(
                crate::protocol::CloseCode::Unauthorized.code(),
                "Connection terminated by the app (terminate_connections)",
                true,
            );
        }
        v.len()
    }

    /// Occupied channels whose name starts with `prefix`.
    pub fn channels(&self, prefix: &str) -> Vec<ChannelInfo> {
        let st = self.read();
        let mut v: Vec<ChannelInfo> = st
            .channels
            .iter()
            .filter(|(name, ch)| name.starts_with(prefix) && !ch.subscribers.is_empty())
            .map(|(name, ch)| info_of(name, ch))
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn channel(&self, name: &str) -> Option<ChannelInfo> {
        self.read().channels.get(name).map(|ch| info_of(name, ch))
    }

    /// Distinct user ids on a presence channel.
    pub fn users(&self, channel: &str) -> Vec<String> {
        let st = self.read();
        let mut v: Vec<String> = st
            .channels
            .get(channel)
            .map(|ch| ch.members.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The cached event of a cache channel with its remaining TTL.
    pub fn cached(&self, channel: &str) -> Option<(Frame, Duration)> {
        let st = self.read();
        let (f, left) = st.caches.get(channel, Instant::now())?;
        Some((f.clone(), left))
    }

    /// Total subscriptions over all channels (for metrics).
    pub fn subscription_total(&self) -> (usize, usize) {
        let st = self.read();
        (
            st.channels.len(),
            st.channels.values().map(|c| c.subscribers.len()).sum(),
        )
    }
}

fn info_of(name: &str, ch: &Channel) -> ChannelInfo {
    ChannelInfo {
        name: name.to_owned(),
        subscription_count: ch.subscribers.len(),
        user_count: ChannelKind::of(name)
            .is_presence()
            .then_some(ch.members.len()),
    }
}

/// The presence payload of `subscription_succeeded` for the channel's members.
fn presence_data(ch: &Channel) -> String {
    presence::subscription_data(
        ch.members
            .iter()
            .map(|(id, m)| (id.as_str(), m.info.as_deref())),
    )
}

/// All apps, by id and by key.
pub struct Hub {
    apps: Vec<Arc<App>>,
    by_id: HashMap<String, Arc<App>>,
    by_key: HashMap<String, Arc<App>>,
    next_conn: AtomicU64,
}

impl Hub {
    pub fn new(apps: Vec<AppConfig>, observer: Arc<dyn HubObserver>) -> Hub {
        Hub::build(apps, observer, None, None)
    }

    /// A hub whose apps are part of the cluster `link`, when given.
    pub fn with_link(
        apps: Vec<AppConfig>,
        observer: Arc<dyn HubObserver>,
        link: Option<Arc<dyn ClusterLink>>,
    ) -> Hub {
        Hub::build(apps, observer, link, None)
    }

    /// A hub whose apps keep resume state when `resume` is given (and enabled).
    pub fn with_resume(
        apps: Vec<AppConfig>,
        observer: Arc<dyn HubObserver>,
        resume: Option<&ResumeConfig>,
    ) -> Hub {
        Hub::build(apps, observer, None, resume)
    }

    /// The hub of a box: clustered when `link` is given, resumable when `resume` is given and
    /// enabled. Clustered, resume positions are the bus's (`cluster::deliver` assigns them)
    /// and every channel's events are kept (`resume::index`).
    pub fn build(
        apps: Vec<AppConfig>,
        observer: Arc<dyn HubObserver>,
        link: Option<Arc<dyn ClusterLink>>,
        resume: Option<&ResumeConfig>,
    ) -> Hub {
        let resume = resume.filter(|r| r.enabled);
        let clustered = link.is_some();
        let apps: Vec<Arc<App>> = apps
            .into_iter()
            .map(|a| {
                let max = a.max_connections;
                let mut app = App::with_link(a, observer.clone(), link.clone());
                app.resume = resume.map(|r| Arc::new(AppResume::new(r, max, clustered)));
                Arc::new(app)
            })
            .collect();
        let by_id = apps
            .iter()
            .map(|a| (a.config.id.clone(), a.clone()))
            .collect();
        let by_key = apps
            .iter()
            .map(|a| (a.config.key.clone(), a.clone()))
            .collect();
        Hub {
            apps,
            by_id,
            by_key,
            next_conn: AtomicU64::new(1),
        }
    }

    pub fn app_by_id(&self, id: &str) -> Option<&Arc<App>> {
        self.by_id.get(id)
    }

    pub fn app_by_key(&self, key: &str) -> Option<&Arc<App>> {
        self.by_key.get(key)
    }

    pub fn apps(&self) -> &[Arc<App>] {
        &self.apps
    }

    /// A process-unique connection number.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
