//! The cluster: several pushbox boxes as one, on the shop's Redis or Valkey. Built only when
//! `[cluster] redis_url` is set; a single box never links it into its hot path (the hub holds
//! an `Option` of the [`ClusterLink`] this implements, `None` there).
//!
//! | file | owns |
//! | --- | --- |
//! | `keys.rs` | key names: `{prefix}:v1:{<app id>}:…`, every key of an app in one hash slot |
//! | `scripts.rs` | the Lua scripts, the only writers of the shared state (atomic transitions) |
//! | `conn.rs` | connections with a deadline on every answer; reading Redis's answers |
//! | `bus.rs` | the bus: entry kinds, stream ids, parsing `XREAD` answers |
//! | `forward.rs` | event log → bus (idempotent FORWARD), degraded local delivery |
//! | `reader.rs` | bus → deliverer (`XREAD BLOCK` on a connection of its own, resume from the cursor) |
//! | `deliver.rs` | bus → this node's sockets, in bus order: dedupe, gates of joining sockets |
//! | `worker.rs` | this node's subscribes, unsubscribes, client events, signins and signouts, in order |
//! | `watchlist.rs` | watchlists: a watcher's initial state, attached past its gate like a subscribe |
//! | `lease.rs` | heartbeats, connection counts, the janitor that reaps dead nodes |
//! | `hooks.rs` | webhook jobs taken once cluster-wide into the webhook spool |
//! | `status.rs` | Redis up, bus lag, nodes: `/up` and `/metrics` |
//! | `probe.rs` | `pushbox check`: reach Redis, its settings, the nodes with a lease |
//!
//! Per app, a node runs a reader, a deliverer, a worker, a lease task and a hook taker; per
//! node, one forwarder. Accepted still means durable on this node (the event log answers the
//! 200); the bus carries it to every node, this one included, in one order.

mod bus;
mod conn;
mod deliver;
mod forward;
mod hooks;
mod keys;
mod lease;
mod probe;
mod reader;
mod scripts;
mod status;
mod watchlist;
mod worker;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::config::{ClusterConfig, Config};
use crate::hub::{
    ChannelInfo, ClusterLink, Hub, HubObserver, LinkError, LinkFuture, Member, Outbox,
};
use crate::protocol::{message, ChannelKind, Frame};
use crate::resume::Plan;
use crate::spool::Spool;

pub use conn::OpenError;
pub use keys::Keys;
pub use probe::{probe, Probe};

use conn::{int, items, text, Pool, Redis};
use deliver::Msg;
use worker::Op;

/// Bus entries (in batches) and joins waiting for a deliverer.
const DELIVER_QUEUE: usize = 1024;

/// One app's part of the link.
struct AppLink {
    index: usize,
    keys: Keys,
    ops: mpsc::UnboundedSender<Op>,
    remote: Arc<AtomicUsize>,
    deliver_tx: mpsc::Sender<Msg>,
    /// Taken by [`Cluster::start`].
    parts: Mutex<Option<(mpsc::UnboundedReceiver<Op>, mpsc::Receiver<Msg>)>>,
}

/// This node's membership in the cluster.
pub struct Cluster {
    config: ClusterConfig,
    /// This run of this node: `name:boot-id` (a restarted node never inherits its old rows).
    node: String,
    /// This node's name on the bus for its forwarded events (stable across restarts while the
    /// event log is the same).
    origin: String,
    pool: Arc<Pool>,
    redis: Arc<Redis>,
    apps: HashMap<String, AppLink>,
    status: Arc<status::Status>,
    observer: Arc<dyn HubObserver>,
    stop: watch::Sender<bool>,
    /// Set by a heartbeat that finds Redis back after it was lost; read by the forwarder.
    recheck: Arc<forward::Recheck>,
    /// The next event-log seq the forwarder will forward (0: not started).
    forwarded: Arc<std::sync::atomic::AtomicU64>,
    /// The event log, once started: a clean stop waits until it is forwarded.
    events: Mutex<Option<Spool>>,
    /// Where the forwarder saves how far it got.
    saved: std::path::PathBuf,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Channel `name` from the counts a channel script answers for it (`CHANNELS_SCRIPT` per
/// channel after its name, `CHANNEL_SCRIPT` alone): sockets subscribed, then users (kept for
/// a presence channel only); a missing or negative count reads as 0.
fn channel_info(name: String, counts: &[redis::Value]) -> ChannelInfo {
    let count = |i: usize| counts.get(i).and_then(int).unwrap_or(0).max(0) as usize;
    let presence = ChannelKind::of(&name).is_presence();
    ChannelInfo {
        subscription_count: count(0),
        user_count: presence.then_some(count(1)),
        name,
    }
}

pub(super) fn random_hex(bytes: usize) -> String {
    use ring::rand::SecureRandom;
    let mut b = vec![0u8; bytes];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The id of this state directory's event log, created once: with the node name it names this
/// node's events on the bus. A wiped state directory is a new origin (its seqs start again).
fn origin_id(state_dir: &Path) -> String {
    let path = state_dir.join("cluster-origin");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim();
        if !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return s.to_owned();
        }
    }
    let id = random_hex(8);
    if let Err(e) = std::fs::write(&path, format!("{id}\n")) {
        tracing::warn!(path = %path.display(), error = %e, "cluster: cannot save this node's origin id: after a restart its events could be forwarded twice");
    }
    id
}

fn machine_hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "pushbox".into())
}

impl Cluster {
    /// The link for `config`'s apps; opens no connection yet (see [`start`](Self::start)).
    pub fn new(config: &Config, observer: Arc<dyn HubObserver>) -> Result<Arc<Cluster>, OpenError> {
        let cfg = config.cluster.clone();
        let redis = Arc::new(Redis::open(&cfg)?);
        let pool = Arc::new(Pool::new(Redis::open(&cfg)?));
        let name = cfg.node_name.clone().unwrap_or_else(machine_hostname);
        let node = format!("{name}:{}", random_hex(6));
        let origin = format!("{name}.{}", origin_id(&config.state_dir));
        let mut apps = HashMap::new();
        for (index, a) in config.apps.iter().enumerate() {
            let (ops, ops_rx) = mpsc::unbounded_channel();
            let (deliver_tx, deliver_rx) = mpsc::channel(DELIVER_QUEUE);
            apps.insert(
                a.id.clone(),
                AppLink {
                    index,
                    keys: Keys::new(&cfg.key_prefix, &a.id),
                    ops,
                    remote: Arc::default(),
                    deliver_tx,
                    parts: Mutex::new(Some((ops_rx, deliver_rx))),
                },
            );
        }
        let status = Arc::new(status::Status::new(
            config.apps.len(),
            cfg.max_lag,
            redis.shown.clone(),
        ));
        let (stop, _) = watch::channel(false);
        Ok(Arc::new(Cluster {
            config: cfg,
            node,
            origin,
            pool,
            redis,
            apps,
            status,
            observer,
            stop,
            recheck: Arc::default(),
            forwarded: Arc::default(),
            events: Mutex::new(None),
            saved: config.state_dir.join("cluster-forwarded"),
            tasks: Mutex::new(Vec::new()),
        }))
    }

    /// This run's node id (`name:boot-id`).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Starts the tasks: per app a reader, a deliverer, a worker, a lease and a hook taker;
    /// one forwarder of `events` (the event log's spool).
    pub fn start(self: &Arc<Self>, hub: &Arc<Hub>, events: Spool) {
        let mut tasks = Vec::new();
        let mut targets = HashMap::new();
        for app in hub.apps() {
            let Some(link) = self.apps.get(&app.config.id) else {
                continue;
            };
            let Some((ops_rx, deliver_rx)) = link.parts.lock().ok().and_then(|mut p| p.take())
            else {
                continue;
            };
            let deliverer = deliver::Deliverer::new(
                app.clone(),
                self.origin.clone(),
                self.status.clone(),
                link.index,
            );
            tasks.push(tokio::spawn(deliverer.run(deliver_rx)));
            let reader = reader::Reader {
                redis: self.redis.clone(),
                stream: link.keys.bus(),
                app: link.index,
                status: self.status.clone(),
                to: link.deliver_tx.clone(),
                history: app
                    .resume()
                    .map(|r| std::time::Duration::from_millis(r.window_ms())),
            };
            tasks.push(tokio::spawn(reader.run(self.stop.subscribe())));
            let worker = worker::Worker::new(
                self.pool.clone(),
                link.keys.clone(),
                self.node.clone(),
                app.config.clone(),
                self.status.clone(),
                self.observer.clone(),
                link.deliver_tx.clone(),
            );
            tasks.push(tokio::spawn(worker.run(ops_rx)));
            let lease = lease::Lease {
                pool: self.pool.clone(),
                keys: link.keys.clone(),
                node: self.node.clone(),
                app: app.clone(),
                lease: self.config.lease,
                every: self.config.heartbeat,
                status: self.status.clone(),
                remote: link.remote.clone(),
                ops: link.ops.clone(),
                recheck: self.recheck.clone(),
            };
            tasks.push(tokio::spawn(lease.run(self.stop.subscribe())));
            let hooks = hooks::Hooks {
                redis: self.redis.clone(),
                pool: self.pool.clone(),
                keys: link.keys.clone(),
                node: self.node.clone(),
                app: app.clone(),
                observer: self.observer.clone(),
                status: self.status.clone(),
            };
            tasks.push(tokio::spawn(hooks.run(self.stop.subscribe())));
            targets.insert(
                app.config.id.clone(),
                forward::Target {
                    keys: link.keys.clone(),
                    deliver: link.deliver_tx.clone(),
                },
            );
        }
        if let Ok(mut e) = self.events.lock() {
            *e = Some(events.clone());
        }
        let forwarder = forward::Forwarder {
            pool: self.pool.clone(),
            spool: events,
            origin: self.origin.clone(),
            apps: targets,
            status: self.status.clone(),
            recheck: self.recheck.clone(),
            next: self.forwarded.clone(),
            saved: self.saved.clone(),
        };
        tasks.push(tokio::spawn(forwarder.run(self.stop.subscribe())));
        tracing::info!(node = %self.node, redis = %self.redis.shown, "cluster: joining");
        if let Ok(mut t) = self.tasks.lock() {
            t.extend(tasks);
        }
    }

    /// A clean stop: this node's lease ends now, so its connections leave their channels at
    /// once (each transition firing once) instead of after the lease. Bounded in time.
    pub async fn shutdown(&self, hub: &Hub) {
        self.flush_forwarder().await;
        let _ = self.stop.send(true);
        for app in hub.apps() {
            let Some(link) = self.apps.get(&app.config.id) else {
                continue;
            };
            let leave = lease::reap(&self.pool, &link.keys, app, Some(&self.node));
            match tokio::time::timeout(Duration::from_secs(3), leave).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cluster: could not leave cleanly: the other nodes remove this node's members when its lease ends"),
                Err(_) => tracing::warn!("cluster: Redis did not answer in time to leave cleanly: the other nodes remove this node's members when its lease ends"),
            }
        }
        let tasks = self
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for t in tasks {
            t.abort();
        }
    }

    /// Waits (a bounded while) until every event this node accepted is on the bus, so a box
    /// that is stopped for good leaves none behind in its event log.
    async fn flush_forwarder(&self) {
        let Some(last) = self
            .events
            .lock()
            .ok()
            .and_then(|e| e.as_ref().map(Spool::last_seq))
        else {
            return;
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while self.forwarded.load(Relaxed) <= last {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("cluster: stopping with events not yet on the bus: they are in the event log and go out when this node starts again");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// For `/metrics`.
    pub fn snapshot(&self) -> crate::metrics::ClusterSnapshot {
        self.status.snapshot()
    }

    fn app(&self, app_id: &str) -> Result<&AppLink, LinkError> {
        self.apps
            .get(app_id)
            .ok_or_else(|| LinkError(format!("app {app_id} is not part of the cluster")))
    }

    async fn script(
        &self,
        app_id: &str,
        script: &redis::Script,
        args: &[&str],
    ) -> Result<redis::Value, LinkError> {
        let link = self.app(app_id)?;
        self.pool
            .script(script, link.keys.base(), args)
            .await
            .map_err(|e| self.lost(e))
    }

    fn lost(&self, e: redis::RedisError) -> LinkError {
        self.status.failed("an HTTP API call", &e);
        LinkError(format!(
            "Redis ({}) did not answer: {e}; try again once it is reachable",
            self.redis.shown
        ))
    }
}

impl ClusterLink for Cluster {
    fn subscribe(
        &self,
        app_id: &str,
        outbox: &Arc<Outbox>,
        channel: &str,
        member: Option<Member>,
        resume: Option<Plan>,
    ) {
        if let Some(link) = self.apps.get(app_id) {
            let _ = link.ops.send(Op::Subscribe {
                outbox: outbox.clone(),
                channel: channel.to_owned(),
                member,
                resume,
            });
        }
    }

    fn save_lineage(&self, app_id: &str, token: &str, owner: &str, lineage: String, ttl: Duration) {
        if let Some(link) = self.apps.get(app_id) {
            let _ = link.ops.send(Op::SaveLineage {
                token: token.to_owned(),
                owner: owner.to_owned(),
                lineage,
                ttl_ms: ttl.as_millis().max(1) as u64,
            });
        }
    }

    fn claim_lineage<'a>(
        &'a self,
        app_id: &'a str,
        token: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> LinkFuture<'a, Option<String>> {
        Box::pin(async move {
            let ttl = ttl.as_millis().max(1).to_string();
            let v = self
                .script(
                    app_id,
                    &scripts::LINEAGE_CLAIM_SCRIPT,
                    &[token, owner, &ttl],
                )
                .await?;
            Ok(text(&v))
        })
    }

    fn unsubscribe(&self, app_id: &str, outbox: &Outbox, channel: &str) {
        if let Some(link) = self.apps.get(app_id) {
            let _ = link.ops.send(Op::Unsubscribe {
                conn_id: outbox.conn_id,
                socket_id: outbox.socket_id.as_str().to_owned(),
                channel: channel.to_owned(),
            });
        }
    }

    fn signin(&self, app_id: &str, outbox: &Arc<Outbox>, user_id: &str, watchlist: &[String]) {
        if let Some(link) = self.apps.get(app_id) {
            let _ = link.ops.send(Op::Signin {
                outbox: outbox.clone(),
                user: user_id.to_owned(),
                watchlist: watchlist.to_vec(),
            });
        }
    }

    fn signout(&self, app_id: &str, outbox: &Outbox, watchlist: &[String]) {
        if let Some(link) = self.apps.get(app_id) {
            let _ = link.ops.send(Op::Signout {
                conn_id: outbox.conn_id,
                socket_id: outbox.socket_id.as_str().to_owned(),
                watchlist: watchlist.to_vec(),
            });
        }
    }

    fn client_event(&self, app_id: &str, from: &Outbox, channel: &str, frame: Frame) {
        if let Some(link) = self.apps.get(app_id) {
            let _ = link.ops.send(Op::ClientEvent {
                channel: channel.to_owned(),
                socket_id: from.socket_id.as_str().to_owned(),
                frame,
            });
        }
    }

    fn remote_connections(&self, app_id: &str) -> usize {
        self.apps.get(app_id).map_or(0, |l| l.remote.load(Relaxed))
    }

    fn terminate_user<'a>(&'a self, app_id: &'a str, user_id: &'a str) -> LinkFuture<'a, ()> {
        Box::pin(async move {
            let link = self.app(app_id)?;
            let mut cmd = redis::cmd("XADD");
            cmd.arg(link.keys.bus())
                .arg("MAXLEN")
                .arg("~")
                .arg(scripts::MAXLEN)
                .arg("*")
                .arg("k")
                .arg("t")
                .arg("u")
                .arg(user_id);
            self.pool.query(&cmd).await.map_err(|e| self.lost(e))?;
            Ok(())
        })
    }

    fn channels<'a>(
        &'a self,
        app_id: &'a str,
        prefix: &'a str,
    ) -> LinkFuture<'a, Vec<ChannelInfo>> {
        Box::pin(async move {
            let v = self
                .script(app_id, &scripts::CHANNELS_SCRIPT, &[prefix])
                .await?;
            let mut out: Vec<ChannelInfo> = items(&v)
                .iter()
                .filter_map(|c| {
                    let (name, counts) = items(c).split_first()?;
                    Some(channel_info(text(name)?, counts))
                })
                .collect();
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
    }

    fn channel<'a>(
        &'a self,
        app_id: &'a str,
        name: &'a str,
    ) -> LinkFuture<'a, Option<ChannelInfo>> {
        Box::pin(async move {
            let v = self
                .script(app_id, &scripts::CHANNEL_SCRIPT, &[name])
                .await?;
            let info = channel_info(name.to_owned(), items(&v));
            Ok((info.subscription_count > 0).then_some(info))
        })
    }

    fn users<'a>(&'a self, app_id: &'a str, name: &'a str) -> LinkFuture<'a, Vec<String>> {
        Box::pin(async move {
            let link = self.app(app_id)?;
            let v = self
                .pool
                .query(redis::cmd("HKEYS").arg(link.keys.users(name)))
                .await
                .map_err(|e| self.lost(e))?;
            let mut ids: Vec<String> = items(&v).iter().filter_map(text).collect();
            ids.sort();
            Ok(ids)
        })
    }

    fn cached<'a>(
        &'a self,
        app_id: &'a str,
        name: &'a str,
    ) -> LinkFuture<'a, Option<(Frame, Duration)>> {
        Box::pin(async move {
            let v = self
                .script(app_id, &scripts::CACHED_SCRIPT, &[name])
                .await?;
            let a = items(&v);
            let (Some(event), Some(data)) = (a.first().and_then(text), a.get(1).and_then(text))
            else {
                return Ok(None);
            };
            let ttl = a.get(2).and_then(int).unwrap_or(0).max(0) as u64;
            let frame = Frame::from(message::frame(&event, Some(name), Some(&data), None));
            Ok(Some((frame, Duration::from_millis(ttl))))
        })
    }

    fn health(&self) -> Result<(), String> {
        self.status.health()
    }
}
