//! `pushbox check` for `[cluster]`: can this box reach Redis, are its settings safe for the
//! cluster, and which nodes hold a lease now. Read only: it changes nothing in Redis.

use std::time::Duration;

use super::conn::{int, items, text, Redis};
use super::keys::Keys;
use crate::config::Config;

/// What `pushbox check` learns from Redis.
pub struct Probe {
    /// `redis_version` (or `valkey_version`) of the server.
    pub version: String,
    /// `appendonly`, `maxmemory-policy` as Redis reports them (`None`: `CONFIG` not allowed).
    pub appendonly: Option<String>,
    pub eviction: Option<String>,
    /// Per app: (app id, live nodes with the seconds left on their lease).
    pub nodes: Vec<(String, Vec<(String, f64)>)>,
}

/// Connects to `config`'s Redis and reads what [`Probe`] holds, within a few seconds.
pub async fn probe(config: &Config) -> Result<Probe, String> {
    let redis = Redis::open(&config.cluster).map_err(|e| e.to_string())?;
    let shown = redis.shown.clone();
    let fail = |e: redis::RedisError| format!("Redis at {shown} does not answer: {e}");
    let mut c = redis
        .dedicated(Duration::from_secs(3))
        .await
        .map_err(fail)?;
    let info: redis::Value = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut c)
        .await
        .map_err(fail)?;
    let info = text(&info).unwrap_or_default();
    let version = info
        .lines()
        .find_map(|l| {
            l.strip_prefix("valkey_version:")
                .map(|v| format!("Valkey {v}"))
                .or_else(|| {
                    l.strip_prefix("redis_version:")
                        .map(|v| format!("Redis {v}"))
                })
        })
        .unwrap_or_else(|| "an unknown server".into());
    let setting = |v: Result<redis::Value, redis::RedisError>| {
        v.ok().and_then(|v| items(&v).get(1).and_then(text))
    };
    let appendonly = setting(
        redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendonly")
            .query_async(&mut c)
            .await,
    );
    let eviction = setting(
        redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut c)
            .await,
    );
    let time: redis::Value = redis::cmd("TIME").query_async(&mut c).await.map_err(fail)?;
    let t = items(&time);
    let now_ms =
        t.first().and_then(int).unwrap_or(0) * 1000 + t.get(1).and_then(int).unwrap_or(0) / 1000;
    let mut nodes = Vec::new();
    for app in &config.apps {
        let keys = Keys::new(&config.cluster.key_prefix, &app.id);
        let v: redis::Value = redis::cmd("ZRANGEBYSCORE")
            .arg(keys.nodes())
            .arg(now_ms)
            .arg("+inf")
            .arg("WITHSCORES")
            .query_async(&mut c)
            .await
            .map_err(fail)?;
        let live = items(&v)
            .chunks(2)
            .filter_map(|p| match p {
                [n, s] => Some((text(n)?, (int(s)? - now_ms) as f64 / 1000.0)),
                _ => None,
            })
            .collect();
        nodes.push((app.id.clone(), live));
    }
    Ok(Probe {
        version,
        appendonly,
        eviction,
        nodes,
    })
}
