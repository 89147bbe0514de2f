//! `ClusterLink`: the one point where a clustered hub hands its decisions to the cluster (the
//! `cluster` module implements it on Redis/Valkey). A single box has none, and each hub method
//! that would consult it pays one `if let` on an `Option` that is `None`.
//!
//! What moves behind it, when it is set: whether a subscribe is the first of a user or of a
//! channel anywhere (presence, occupancy, `subscription_count`), the member list a joining
//! socket gets, whether a signin is a user's first connection anywhere (watchlist `online` /
//! `offline`), the order events reach sockets (every node delivers from one bus), the cluster's
//! connection count, and the reads of the HTTP API. The hub keeps only its local sockets: the
//! cluster attaches a socket ([`App::attach`](super::App::attach)) once its snapshot is out,
//! and delivers the bus with [`App::publish_with`](super::App::publish_with).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::{ChannelInfo, Member, Outbox};
use crate::protocol::Frame;
use crate::resume::Plan;

/// A cluster read or write that could not be done (Redis unreachable, a script failed): the
/// message says what to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkError(pub String);

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LinkError {}

/// A boxed future of the link (the trait is used as `dyn ClusterLink`).
pub type LinkFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, LinkError>> + Send + 'a>>;

/// The cluster, as the hub and the HTTP API see it. Must not block: the hub calls the
/// synchronous methods from a connection's task, and they only queue work.
pub trait ClusterLink: Send + Sync {
    /// `outbox` joins `channel` of app `app_id` (as `member` on a presence channel). The link
    /// sends `subscription_succeeded` (or the error) later and attaches the outbox to the hub;
    /// a resumable subscribe (`resume`) gets its missed events right after the answer.
    fn subscribe(
        &self,
        app_id: &str,
        outbox: &Arc<Outbox>,
        channel: &str,
        member: Option<Member>,
        resume: Option<Plan>,
    );
    /// `outbox` left `channel` (the hub has already detached it).
    fn unsubscribe(&self, app_id: &str, outbox: &Outbox, channel: &str);
    /// `outbox` signed in as `user_id` watching `watchlist` (apps with `watchlist` on). The
    /// link decides whether this is the user's first connection anywhere (`online` for its
    /// watchers on every node), sends `outbox` the initial state of its watchlist and then
    /// attaches it as a watcher ([`App::watch_attach`](super::App::watch_attach)).
    fn signin(&self, app_id: &str, outbox: &Arc<Outbox>, user_id: &str, watchlist: &[String]);
    /// `outbox`'s signed-in user left it (closed, or signed in again); `watchlist` is the one it
    /// signed in with. The link decides whether that was the user's last connection anywhere.
    fn signout(&self, app_id: &str, outbox: &Outbox, watchlist: &[String]);
    /// A client event from `from` on `channel`, for every other subscriber on every node.
    fn client_event(&self, app_id: &str, from: &Outbox, channel: &str, frame: Frame);
    /// Connections of app `app_id` on the other nodes (as of their last heartbeat), for
    /// `max_connections` across the cluster.
    fn remote_connections(&self, app_id: &str) -> usize;
    /// Closes user `user_id`'s connections on every node.
    fn terminate_user<'a>(&'a self, app_id: &'a str, user_id: &'a str) -> LinkFuture<'a, ()>;
    /// Occupied channels whose name starts with `prefix`, with their counts.
    fn channels<'a>(&'a self, app_id: &'a str, prefix: &'a str)
        -> LinkFuture<'a, Vec<ChannelInfo>>;
    /// One channel's counts; `None` when nobody is subscribed anywhere.
    fn channel<'a>(&'a self, app_id: &'a str, name: &'a str)
        -> LinkFuture<'a, Option<ChannelInfo>>;
    /// Distinct user ids on a presence channel, sorted.
    fn users<'a>(&'a self, app_id: &'a str, name: &'a str) -> LinkFuture<'a, Vec<String>>;
    /// The cached event of a cache channel and its remaining time to live.
    fn cached<'a>(
        &'a self,
        app_id: &'a str,
        name: &'a str,
    ) -> LinkFuture<'a, Option<(Frame, Duration)>>;
    /// Resume: writes the lineage of token `token` (hex) held by connection `owner`, kept for
    /// `ttl`, unless another connection claimed the token since. In order with this node's
    /// other writes; never blocks.
    fn save_lineage(&self, app_id: &str, token: &str, owner: &str, lineage: String, ttl: Duration);
    /// Resume: makes connection `owner` the holder of token `token`'s lineage and returns it,
    /// if the cluster keeps one.
    fn claim_lineage<'a>(
        &'a self,
        app_id: &'a str,
        token: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> LinkFuture<'a, Option<String>>;
    /// `Err(reason)` while this node cannot serve as part of the cluster (Redis lost, too far
    /// behind the bus), for `/up`.
    fn health(&self) -> Result<(), String>;
}
