//! Connections to Redis/Valkey, each with a deadline on every answer.
//!
//! * [`Pool`]: one shared multiplexed connection for scripts and reads (concurrent callers
//!   pipeline on it). Any error drops it and the next caller connects again: a connection
//!   that stopped answering (a cut cable, a blackholed route) is never reused, because its
//!   answers would never come.
//! * [`Redis::dedicated`]: a connection of its own for a blocking read (`XREAD BLOCK`,
//!   `XREADGROUP BLOCK`), which would hold up every other command on a shared one. Its response
//!   timeout is a little above the block time: a missed deadline means a dead connection (the
//!   silent-subscriber stall of centrifugo#1189), never "wait forever".
//!
//! Also the few helpers that read Redis's answers ([`Value`]) without trusting their shape.

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError, Value};

use crate::config::ClusterConfig;

/// How long a script or a read may take to answer before its connection is taken for dead.
/// Scripts take microseconds; a second means the network or Redis is in trouble.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the cluster cannot start (a bad URL, an unreadable CA file).
#[derive(Debug)]
pub enum OpenError {
    Url { url: String, error: String },
    CaFile { path: String, error: String },
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Url { url, error } => write!(
                f,
                "cluster.redis_url {url}: {error}; use redis://[user:password@]host:port[/db] or rediss://…"
            ),
            OpenError::CaFile { path, error } => write!(
                f,
                "cluster.ca_file {path}: {error}; give the PEM file of the CA that signed Redis's certificate"
            ),
        }
    }
}

impl std::error::Error for OpenError {}

/// Where Redis is, and how to reach it.
pub struct Redis {
    client: Client,
    /// The URL without its password, for the log.
    pub shown: String,
}

impl Redis {
    pub fn open(cfg: &ClusterConfig) -> Result<Redis, OpenError> {
        let url = cfg.redis_url.clone().unwrap_or_default();
        let shown = crate::config::redact(&url);
        let client = match &cfg.ca_file {
            None => Client::open(url.as_str()),
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| OpenError::CaFile {
                    path: path.display().to_string(),
                    error: e.to_string(),
                })?;
                Client::build_with_tls(
                    url.as_str(),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
            }
        }
        .map_err(|e| OpenError::Url {
            url: shown.clone(),
            error: e.to_string(),
        })?;
        Ok(Redis { client, shown })
    }

    /// A new connection whose answers must come within `response_timeout`.
    pub async fn dedicated(
        &self,
        response_timeout: Duration,
    ) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(response_timeout));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }
}

/// The shared connection for scripts and reads (see the module doc).
pub struct Pool {
    pub redis: Redis,
    conn: Mutex<Option<MultiplexedConnection>>,
}

impl Pool {
    pub fn new(redis: Redis) -> Pool {
        Pool {
            redis,
            conn: Mutex::new(None),
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<MultiplexedConnection>> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The shared connection, connecting if there is none.
    pub async fn conn(&self) -> Result<MultiplexedConnection, RedisError> {
        if let Some(c) = self.slot().clone() {
            return Ok(c);
        }
        let c = self.redis.dedicated(COMMAND_TIMEOUT).await?;
        *self.slot() = Some(c.clone());
        Ok(c)
    }

    /// Runs `script` with `KEYS[1] = base` and `args`; an error drops the connection.
    pub async fn script(
        &self,
        script: &redis::Script,
        base: &str,
        args: &[&str],
    ) -> Result<Value, RedisError> {
        let mut c = self.conn().await?;
        let mut inv = script.key(base);
        for a in args {
            inv.arg(*a);
        }
        let r = inv.invoke_async::<Value>(&mut c).await;
        self.check(r)
    }

    /// Runs one command; an error drops the connection.
    pub async fn query(&self, cmd: &redis::Cmd) -> Result<Value, RedisError> {
        let mut c = self.conn().await?;
        let r = cmd.query_async::<Value>(&mut c).await;
        self.check(r)
    }

    /// Runs a pipeline (its commands in order, one round trip); an error drops the connection.
    pub async fn pipeline(&self, pipe: &redis::Pipeline) -> Result<Vec<Value>, RedisError> {
        let mut c = self.conn().await?;
        let r = pipe.query_async::<Vec<Value>>(&mut c).await;
        self.check(r)
    }

    fn check<T>(&self, r: Result<T, RedisError>) -> Result<T, RedisError> {
        if let Err(e) = &r {
            // A script error (a bug, a full Redis refusing writes) leaves the connection
            // usable; anything else may mean it is dead.
            if !matches!(e.kind(), redis::ErrorKind::Server(_)) {
                *self.slot() = None;
            }
        }
        r
    }
}

/// A string answer (bulk or simple), if it is one.
pub fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// An integer answer (or a string holding one).
pub fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other).and_then(|s| s.trim().parse().ok()),
    }
}

/// The items of an array answer (empty for anything else, nil included).
pub fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}

/// A flat `[k1, v1, k2, v2, …]` answer as pairs of strings.
pub fn pairs(v: &Value) -> Vec<(String, String)> {
    items(v)
        .chunks(2)
        .filter_map(|kv| match kv {
            [k, v] => Some((text(k)?, text(v)?)),
            _ => None,
        })
        .collect()
}
