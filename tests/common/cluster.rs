//! A test cluster: a private `redis-server` (or whatever `PUSHBOX_TEST_REDIS_SERVER` names,
//! e.g. `valkey-server`) on a free port in a temp dir, without persistence, and `pushbox serve`
//! nodes on it ([`Cluster`], [`Node`]), each with its own state directory and port; the
//! subscribing clients the cluster tests use, and reading a client until it goes quiet.
//!
//! `redis-server` must be installed (`scripts/setup.sh` runs `apt-get install -y
//! redis-server`); without it [`Redis::start`] fails and says so: a cluster test never passes
//! silently.

use std::net::SocketAddr;
use std::ops::{Index, IndexMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{api, config_toml, free_port, serve_in, trigger, Client, Ready, Served, APP_ID};

/// The redis-server binary the tests run (`PUSHBOX_TEST_REDIS_SERVER`, else `redis-server`).
pub fn redis_bin() -> String {
    std::env::var("PUSHBOX_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

/// A private redis-server, killed when dropped.
pub struct Redis {
    pub child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Redis {
    pub fn start() -> Redis {
        let dir = tempfile::tempdir().expect("a temp dir");
        let port = free_port();
        let child = Redis::spawn(dir.path(), port);
        let r = Redis { child, port, dir };
        r.wait_ready();
        r
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `kill -9` (what comes back on [`revive`](Self::revive) is empty: no persistence).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A new, empty redis-server on the same port.
    pub fn revive(&mut self) {
        self.child = Redis::spawn(self.dir.path(), self.port);
        self.wait_ready();
    }

    /// Sends one inline command and returns its first answer line.
    pub fn cmd(&self, cmd: &str) -> String {
        use std::io::{BufRead, Write};
        let mut s =
            std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line).unwrap();
        line
    }

    /// `kill <sig>` (`-STOP`, `-CONT`) to the server.
    pub fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }

    fn spawn(dir: &Path, port: u16) -> Child {
        let bin = redis_bin();
        Command::new(&bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {bin} ({e}): the cluster tests need it; run scripts/setup.sh (it runs `apt-get install -y redis-server`)")
            })
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }
}

/// `kill <sig> <pid>`, which must succeed.
pub fn signal(pid: u32, sig: &str) {
    let pid = pid.to_string();
    let ok = Command::new("kill")
        .args([sig, &pid])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// How a node is configured beyond the test app and `[cluster]` on the test Redis. The default
/// is a 3 s lease and a heartbeat every second (a node is reaped within seconds).
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub lease: String,
    pub heartbeat: String,
    /// Sections after `[cluster]` (`[console]`, `[resume]` …).
    pub more: String,
    /// Further keys of the test app (`webhook_url = …`, `client_events = true` …).
    pub app_more: String,
    /// Environment variables of the node (`PUSHBOX_RESUME_*` …).
    pub env: Vec<(String, String)>,
}

impl Default for NodeConfig {
    fn default() -> NodeConfig {
        NodeConfig {
            lease: "3s".into(),
            heartbeat: "1s".into(),
            more: String::new(),
            app_more: String::new(),
            env: Vec::new(),
        }
    }
}

impl NodeConfig {
    /// The default with the test app's further keys `app_more`.
    pub fn app(app_more: &str) -> NodeConfig {
        NodeConfig {
            app_more: app_more.into(),
            ..NodeConfig::default()
        }
    }

    /// The config file of node `name` on `redis`, listening on `port`.
    pub fn toml(&self, redis: &Redis, name: &str, port: u16) -> String {
        let cluster = format!(
            "[cluster]\nredis_url = \"{}\"\nnode_name = \"{name}\"\nlease = \"{}\"\nheartbeat = \"{}\"\n{}",
            redis.url(),
            self.lease,
            self.heartbeat,
            self.more
        );
        config_toml(port, &cluster, &self.app_more)
    }
}

/// A pushbox node of the test cluster: killed when dropped, its directory (config, `state/`,
/// `stderr.log`) removed with it.
pub struct Node {
    pub served: Served,
    pub dir: tempfile::TempDir,
}

impl Node {
    /// Node `name` in a new directory on a free port; returns once `/up` answers 200 (the
    /// event log is open and Redis answered: `/up` is 503 until then).
    pub fn start(redis: &Redis, name: &str, config: &NodeConfig) -> Node {
        let dir = tempfile::tempdir().expect("a temp dir");
        Node::start_in(redis, name, config, dir, free_port())
    }

    /// [`start`](Self::start) in `dir` on `port`: a node restarted with its state.
    pub fn start_in(
        redis: &Redis,
        name: &str,
        config: &NodeConfig,
        dir: tempfile::TempDir,
        port: u16,
    ) -> Node {
        let toml = config.toml(redis, name, port);
        Node::launch(&toml, &config.env, dir, port, Ready::Up)
    }

    /// `pushbox serve` on the config file `toml` in `dir` (any `[cluster]`, even none), its
    /// stderr in `dir/stderr.log`, started when `ready`.
    pub fn launch(
        toml: &str,
        env: &[(String, String)],
        dir: tempfile::TempDir,
        port: u16,
        ready: Ready,
    ) -> Node {
        let mut cmd = serve_in(dir.path(), toml);
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let log = dir.path().join("stderr.log");
        let served =
            tokio::task::block_in_place(|| Served::start_logged(&mut cmd, port, ready, log));
        Node { served, dir }
    }

    pub fn addr(&self) -> SocketAddr {
        self.served.addr()
    }

    pub fn port(&self) -> u16 {
        self.served.port
    }

    /// Its config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("pushbox.toml")
    }

    /// Its state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// What it wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// `kill <sig>` (`-STOP`, `-CONT`, `-TERM`) to the node.
    pub fn signal(&self, sig: &str) {
        signal(self.served.child.id(), sig);
    }

    /// `kill -9`; the directory and the port, to start it again with its state
    /// ([`start_in`](Self::start_in)).
    pub fn crash(self) -> (tempfile::TempDir, u16) {
        let Node { mut served, dir } = self;
        served.child.kill().expect("kill -9 the node");
        let _ = served.child.wait();
        let port = served.port;
        drop(served);
        (dir, port)
    }

    /// A client connected to this node.
    pub async fn client(&self) -> Client {
        Client::connect(self.addr()).await
    }

    /// A client subscribed to `channel` (public or cache).
    pub async fn subscriber(&self, channel: &str) -> Client {
        let mut c = self.client().await;
        subscribed(&mut c, channel).await;
        c
    }

    /// A client that joined the presence channel `channel` as `user`, and its
    /// `subscribe_presence` answer.
    pub async fn member_ack(&self, channel: &str, user: &str) -> (Client, Value) {
        let mut c = self.client().await;
        let ack = c.subscribe_presence(channel, &presence_data(user)).await;
        (c, ack)
    }

    /// [`member_ack`](Self::member_ack) without the answer.
    pub async fn member(&self, channel: &str, user: &str) -> Client {
        self.member_ack(channel, user).await.0
    }

    /// A signed `POST /apps/{id}/events` of one event through this node, answered 200.
    pub async fn publish(&self, channel: &str, name: &str, data: &str) {
        assert_eq!(trigger(self.addr(), channel, name, data).await.0, 200);
    }

    /// The ids `GET /apps/{id}/channels/{channel}/users` lists on this node, sorted.
    pub async fn users(&self, channel: &str) -> Vec<String> {
        let (st, v) = api(
            self.addr(),
            "GET",
            &format!("/apps/{APP_ID}/channels/{channel}/users"),
            "",
            &[],
        )
        .await;
        assert_eq!(st, 200, "{v}");
        let mut users: Vec<String> = v["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["id"].as_str().unwrap().to_owned())
            .collect();
        users.sort_unstable();
        users
    }
}

/// A test Redis and nodes on it (`cluster[i]` is the i-th node).
pub struct Cluster {
    pub redis: Redis,
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// Redis and one node per name, each with the test app's further keys `app_more`.
    pub fn start(names: &[&str], app_more: &str) -> Cluster {
        Cluster::start_with(names, &NodeConfig::app(app_more))
    }

    /// Redis and one node per name, each configured by `config`.
    pub fn start_with(names: &[&str], config: &NodeConfig) -> Cluster {
        let redis = Redis::start();
        let nodes = names
            .iter()
            .map(|n| Node::start(&redis, n, config))
            .collect();
        Cluster { redis, nodes }
    }

    /// One client per node, each subscribed to `channel`, in node order.
    pub async fn subscribers(&self, channel: &str) -> Vec<Client> {
        let mut subs = Vec::new();
        for node in &self.nodes {
            subs.push(node.subscriber(channel).await);
        }
        subs
    }
}

impl Index<usize> for Cluster {
    type Output = Node;
    fn index(&self, i: usize) -> &Node {
        &self.nodes[i]
    }
}

impl IndexMut<usize> for Cluster {
    fn index_mut(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i]
    }
}

/// Subscribes `c` to `channel` and asserts it succeeded.
pub async fn subscribed(c: &mut Client, channel: &str) {
    let ack = c.subscribe(channel).await;
    assert_eq!(
        ack["event"], "pusher_internal:subscription_succeeded",
        "{ack}"
    );
}

/// The `channel_data` of presence member `user`.
pub fn presence_data(user: &str) -> String {
    json!({"user_id": user, "user_info": {"name": user}}).to_string()
}

/// The frames of `frames` whose event is `name`.
pub fn events_named<'a>(frames: &'a [Value], name: &str) -> Vec<&'a Value> {
    frames.iter().filter(|f| f["event"] == name).collect()
}

/// The next frame that is not a `subscription_count`, within `ms` (None: silence).
pub async fn next_within(c: &mut Client, ms: u64) -> Option<Value> {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    loop {
        match tokio::time::timeout_at(deadline, c.ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).expect("JSON frames");
                if v["event"] == "pusher_internal:subscription_count" {
                    continue;
                }
                return Some(v);
            }
            Ok(Some(Ok(_))) => continue,
            Ok(_) | Err(_) => return None,
        }
    }
}

/// Frames until `ms` of silence, `subscription_count` left out.
pub async fn drain(c: &mut Client, ms: u64) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(v) = next_within(c, ms).await {
        out.push(v);
    }
    out
}
