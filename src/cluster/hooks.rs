//! Webhook jobs, once for the whole cluster. The scripts enqueue a job for each transition
//! they decide (occupied/vacated, member added/removed) in the app's `hooks` stream; every node
//! reads it in the consumer group `senders`, so each job goes to one node. A job with a delay
//! (vacated, member_removed: Pusher's 3 s) waits here until due, then CONFIRM says whether the
//! transition still stands (a quick rejoin cancels both). The job then goes to this node's
//! webhook pipeline (the existing durable spool) and is acknowledged (`XACK`). Jobs a dead node
//! took and never acknowledged are claimed by the others after [`CLAIM_IDLE`].
//!
//! Delivery is at least once (a crash between handing a job over and its `XACK` sends it
//! again), which is what Pusher promises; alternation per channel and per (channel, user) is
//! kept by the generations in the scripts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::bus::{parse_entries, StreamId};
use super::conn::{int, items, Pool, Redis};
use super::keys::Keys;
use super::scripts::CONFIRM_SCRIPT;
use super::status::{now_ms, Status};
use crate::hub::{App, HubEvent, HubObserver};

/// A job taken by a node that did not acknowledge it for this long is taken over.
pub const CLAIM_IDLE: Duration = Duration::from_secs(30);
const GROUP: &str = "senders";
const BLOCK_MAX_MS: u64 = 2000;

struct Job {
    id: StreamId,
    due: u64,
    event: Option<HubEvent>,
    confirm: Option<(String, String)>,
}

pub struct Hooks {
    pub redis: Arc<Redis>,
    pub pool: Arc<Pool>,
    pub keys: Keys,
    pub node: String,
    pub app: Arc<App>,
    pub observer: Arc<dyn HubObserver>,
    pub status: Arc<Status>,
}

impl Hooks {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        tokio::select! {
            _ = self.take_forever() => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }

    async fn take_forever(&self) {
        // Due time (ms, id) → job.
        let mut waiting: BTreeMap<(u64, StreamId), Job> = BTreeMap::new();
        let mut last_claim = 0u64;
        loop {
            if let Err(e) = self.round(&mut waiting, &mut last_claim).await {
                if matches!(e.kind(), redis::ErrorKind::Server(_)) {
                    // Redis answered (e.g. NOGROUP after it lost its data; the next round
                    // creates the group again): not a lost Redis.
                    tracing::debug!(error = %e, "cluster: webhook jobs: Redis refused a read");
                } else {
                    self.status.failed("taking webhook jobs", &e);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    async fn round(
        &self,
        waiting: &mut BTreeMap<(u64, StreamId), Job>,
        last_claim: &mut u64,
    ) -> Result<(), redis::RedisError> {
        let mut conn = self
            .redis
            .dedicated(Duration::from_millis(BLOCK_MAX_MS) + Duration::from_secs(2))
            .await?;
        let stream = self.keys.hooks();
        // Due times are Redis's clock (the scripts read TIME): compare them with this box's
        // clock corrected by the difference, so a skewed clock neither sends early nor late.
        let time: redis::Value = redis::cmd("TIME").query_async(&mut conn).await?;
        let t = items(&time);
        let redis_ms = t.first().and_then(int).unwrap_or(0) * 1000
            + t.get(1).and_then(int).unwrap_or(0) / 1000;
        let skew = redis_ms - now_ms() as i64;
        let redis_now = move || (now_ms() as i64 + skew).max(0) as u64;
        // From the start of the stream when the group is new: jobs enqueued before any node
        // read them are not lost. BUSYGROUP (it exists) is fine.
        let _: Result<redis::Value, _> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        loop {
            self.send_due(waiting, redis_now()).await?;
            let now = redis_now();
            if now.saturating_sub(*last_claim) > CLAIM_IDLE.as_millis() as u64 / 2 {
                *last_claim = now;
                let v: redis::Value = redis::cmd("XAUTOCLAIM")
                    .arg(&stream)
                    .arg(GROUP)
                    .arg(&self.node)
                    .arg(CLAIM_IDLE.as_millis() as u64)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(100)
                    .query_async(&mut conn)
                    .await?;
                let claimed = items(&v).get(1).cloned().unwrap_or(redis::Value::Nil);
                self.add(waiting, &claimed, false);
            }
            let next_due = waiting.keys().next().map(|(d, _)| *d);
            let block = next_due.map_or(BLOCK_MAX_MS, |d| {
                d.saturating_sub(now).clamp(1, BLOCK_MAX_MS)
            });
            let v: redis::Value = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(&self.node)
                .arg("COUNT")
                .arg(100)
                .arg("BLOCK")
                .arg(block)
                .arg("STREAMS")
                .arg(&stream)
                .arg(">")
                .query_async(&mut conn)
                .await?;
            self.status.ok();
            self.add(waiting, &v, true);
        }
    }

    fn add(&self, waiting: &mut BTreeMap<(u64, StreamId), Job>, v: &redis::Value, nested: bool) {
        for (id, f) in parse_entries(v, nested) {
            let due = f.get("due").and_then(|d| d.parse().ok()).unwrap_or(0);
            let channel = f.get("channel").cloned().unwrap_or_default();
            let user = f.get("user").cloned();
            let event = match (f.get("name").map(String::as_str), user) {
                (Some("channel_occupied"), _) => Some(HubEvent::ChannelOccupied { channel }),
                (Some("channel_vacated"), _) => Some(HubEvent::ChannelVacated { channel }),
                (Some("member_added"), Some(user_id)) => {
                    Some(HubEvent::MemberAdded { channel, user_id })
                }
                (Some("member_removed"), Some(user_id)) => {
                    Some(HubEvent::MemberRemoved { channel, user_id })
                }
                (Some("subscription_count"), _) => f
                    .get("count")
                    .and_then(|n| n.parse().ok())
                    .map(|count| HubEvent::SubscriptionCount { channel, count }),
                _ => None,
            };
            let confirm = match (f.get("key"), f.get("gen")) {
                (Some(k), Some(g)) => Some((k.clone(), g.clone())),
                _ => None,
            };
            waiting.insert(
                (due, id),
                Job {
                    id,
                    due,
                    event,
                    confirm,
                },
            );
        }
    }

    /// Sends the jobs due at `now` (Redis's clock).
    async fn send_due(
        &self,
        waiting: &mut BTreeMap<(u64, StreamId), Job>,
        now: u64,
    ) -> Result<(), redis::RedisError> {
        while let Some(entry) = waiting.first_entry() {
            if entry.get().due > now {
                break;
            }
            let job = entry.remove();
            let send = match &job.confirm {
                None => true,
                Some((k, g)) => {
                    let v = self
                        .pool
                        .script(&CONFIRM_SCRIPT, self.keys.base(), &[k, g])
                        .await;
                    match v {
                        Ok(v) => int(&v) == Some(1),
                        Err(e) => {
                            // Not acknowledged: taken again after CLAIM_IDLE.
                            waiting.insert((job.due, job.id), job);
                            return Err(e);
                        }
                    }
                }
            };
            if send {
                if let Some(e) = job.event {
                    self.observer.on_event(&self.app.config, e);
                }
            }
            self.pool
                .query(
                    redis::cmd("XACK")
                        .arg(self.keys.hooks())
                        .arg(GROUP)
                        .arg(job.id.to_string()),
                )
                .await?;
        }
        Ok(())
    }
}
