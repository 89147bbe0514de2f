//! What a webhook spool record means: the [`Job`] (one batch for one receiver, with the exact
//! body bytes that will be signed and sent), the dead-letter spool's [`DeadRecord`]s, the
//! JSON of each webhook event (PUSHER.md §8.2) and the batch body `{"time_ms":…,"events":[…]}`.
//! Pure functions and serde types; no I/O.

use serde::{Deserialize, Serialize};

use crate::hub::HubEvent;
use crate::protocol::{push_json_str, ChannelKind};
use crate::spool::Record;

/// Format version of [`Job`] records.
pub const JOB_VERSION: u8 = 1;

/// One webhook batch for one receiver: the payload of one record in `{state_dir}/webhooks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Record format version ([`JOB_VERSION`]).
    pub v: u8,
    /// The batch id, sent as `X-Pushbox-Batch-Id` (the same on every retry and requeue, so a
    /// receiver can drop duplicates).
    pub id: String,
    /// The app id (its current key and secret are looked up when the batch is sent).
    pub app: String,
    /// The app key when the batch was made (for display; the header uses the current key).
    pub key: String,
    /// The receiver.
    pub url: String,
    /// Unix ms when the batch was made (it is also the body's `time_ms`).
    pub created_ms: u64,
    /// Unix ms when an operator requeued it from the dead letters (the age limit restarts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requeued_ms: Option<u64>,
    /// How many events the body holds.
    pub events: usize,
    /// The exact body: the bytes that are signed and sent.
    pub body: String,
}

impl Job {
    /// When the age limit for this batch started.
    pub fn age_start_ms(&self) -> u64 {
        self.requeued_ms
            .unwrap_or(self.created_ms)
            .max(self.created_ms)
    }

    /// The record payload.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parse a record payload (`None` for anything that is not a job of a known version).
    pub fn decode(payload: &[u8]) -> Option<Job> {
        serde_json::from_slice::<Job>(payload)
            .ok()
            .filter(|j| j.v == JOB_VERSION)
    }
}

/// One record of the dead-letter spool `{state_dir}/webhooks-dead`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DeadRecord {
    /// A batch that failed for longer than `webhooks.max_age_secs`.
    Dead {
        job: Job,
        /// Unix ms when it was parked.
        dead_ms: u64,
        /// Delivery attempts made (since the last start or requeue).
        attempts: u32,
        /// The last failure (HTTP status, connection error, timeout).
        last_error: String,
    },
    /// The dead letter `id` was put back on the queue; it no longer counts as dead.
    Requeued {
        id: String,
        /// Unix ms of the requeue.
        at_ms: u64,
    },
}

impl DeadRecord {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A dead letter still parked (not requeued since it died).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub job: Job,
    pub dead_ms: u64,
    pub attempts: u32,
    pub last_error: String,
}

/// The parked dead letters, oldest first, from every record of the dead-letter spool. A batch
/// that died, was requeued and died again appears once, with its latest failure.
pub fn live_dead_letters(records: &[Record]) -> Vec<DeadLetter> {
    let mut live: Vec<DeadLetter> = Vec::new();
    for r in records {
        match serde_json::from_slice::<DeadRecord>(&r.payload) {
            Ok(DeadRecord::Dead {
                job,
                dead_ms,
                attempts,
                last_error,
            }) => {
                live.retain(|d| d.job.id != job.id);
                live.push(DeadLetter {
                    job,
                    dead_ms,
                    attempts,
                    last_error,
                });
            }
            Ok(DeadRecord::Requeued { id, .. }) => live.retain(|d| d.job.id != id),
            Err(e) => {
                tracing::warn!(seq = r.seq, error = %e, "skipping an unreadable dead-letter record")
            }
        }
    }
    live
}

/// The webhook kind of a hub event (PUSHER.md §8.2 `name`).
pub fn kind(event: &HubEvent) -> &'static str {
    match event {
        HubEvent::ChannelOccupied { .. } => "channel_occupied",
        HubEvent::ChannelVacated { .. } => "channel_vacated",
        HubEvent::MemberAdded { .. } => "member_added",
        HubEvent::MemberRemoved { .. } => "member_removed",
        HubEvent::ClientEvent { .. } => "client_event",
        HubEvent::CacheMiss { .. } => "cache_miss",
        HubEvent::SubscriptionCount { .. } => "subscription_count",
    }
}

/// One element of the body's `events` array, as JSON text. `client_event` carries `data` as a
/// string (omitted when the client sent none) and `user_id` only on presence channels.
pub fn event_json(event: &HubEvent) -> String {
    let mut s = String::with_capacity(96);
    s.push_str("{\"name\":");
    push_json_str(&mut s, kind(event));
    let field = |s: &mut String, name: &str, value: &str| {
        s.push_str(",\"");
        s.push_str(name);
        s.push_str("\":");
        push_json_str(s, value);
    };
    match event {
        HubEvent::ChannelOccupied { channel }
        | HubEvent::ChannelVacated { channel }
        | HubEvent::CacheMiss { channel } => field(&mut s, "channel", channel),
        HubEvent::MemberAdded { channel, user_id }
        | HubEvent::MemberRemoved { channel, user_id } => {
            field(&mut s, "channel", channel);
            field(&mut s, "user_id", user_id);
        }
        HubEvent::ClientEvent {
            channel,
            event,
            data,
            socket_id,
            user_id,
        } => {
            field(&mut s, "channel", channel);
            field(&mut s, "event", event);
            if let Some(d) = data {
                field(&mut s, "data", d);
            }
            field(&mut s, "socket_id", socket_id);
            if let Some(u) = user_id
                .as_deref()
                .filter(|_| ChannelKind::of(channel).is_presence())
            {
                field(&mut s, "user_id", u);
            }
        }
        HubEvent::SubscriptionCount { channel, count } => {
            field(&mut s, "channel", channel);
            s.push_str(",\"subscription_count\":");
            s.push_str(&count.to_string());
        }
    }
    s.push('}');
    s
}

/// The request body: `{"time_ms":T,"events":[e1,e2,…]}` (each `e` from [`event_json`]).
pub fn body(time_ms: u64, events: &[String]) -> String {
    let len: usize = events.iter().map(|e| e.len() + 1).sum();
    let mut s = String::with_capacity(32 + len);
    s.push_str("{\"time_ms\":");
    s.push_str(&time_ms.to_string());
    s.push_str(",\"events\":[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(e);
    }
    s.push_str("]}");
    s
}

/// Whether a receiver with filter `event_types` (empty: every kind) gets `kind`.
pub fn wanted(event_types: &[String], kind: &str) -> bool {
    event_types.is_empty() || event_types.iter().any(|t| t == kind)
}

/// A new batch id: 24 lowercase hex digits (96 random bits).
pub fn new_batch_id(rng: &ring::rand::SystemRandom) -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 12];
    if rng.fill(&mut b).is_err() {
        // The OS RNG failing is near impossible; fall back to time and a counter, still unique
        // within this process.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        b[..8].copy_from_slice(&super::now_ms().to_be_bytes());
        b[8..].copy_from_slice(&(n as u32).to_be_bytes());
    }
    crate::protocol::hex(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::auth::sign;

    #[test]
    fn body_matches_the_pusher_vector() {
        let b = body(
            1327078148132,
            &[event_json(&HubEvent::ChannelOccupied {
                channel: "test_channel".into(),
            })],
        );
        assert_eq!(
            b,
            r#"{"time_ms":1327078148132,"events":[{"name":"channel_occupied","channel":"test_channel"}]}"#
        );
        assert_eq!(
            sign("7ad3773142a6692b25b8", b.as_bytes()),
            "709fdb84c03664445f7698120b0edf0acc1ab1c8c6e93a0368c61841d6b998aa"
        );
    }

    #[test]
    fn every_kind_has_its_fields() {
        let cases = [
            (
                HubEvent::ChannelVacated {
                    channel: "c".into(),
                },
                r#"{"name":"channel_vacated","channel":"c"}"#,
            ),
            (
                HubEvent::MemberAdded {
                    channel: "presence-p".into(),
                    user_id: "u\"1".into(),
                },
                r#"{"name":"member_added","channel":"presence-p","user_id":"u\"1"}"#,
            ),
            (
                HubEvent::MemberRemoved {
                    channel: "presence-p".into(),
                    user_id: "7".into(),
                },
                r#"{"name":"member_removed","channel":"presence-p","user_id":"7"}"#,
            ),
            (
                HubEvent::CacheMiss {
                    channel: "cache-x".into(),
                },
                r#"{"name":"cache_miss","channel":"cache-x"}"#,
            ),
            (
                HubEvent::SubscriptionCount {
                    channel: "c".into(),
                    count: 3,
                },
                r#"{"name":"subscription_count","channel":"c","subscription_count":3}"#,
            ),
            (
                HubEvent::ClientEvent {
                    channel: "presence-p".into(),
                    event: "client-typing".into(),
                    data: Some("{\"t\":1}".into()),
                    socket_id: "1.2".into(),
                    user_id: Some("u1".into()),
                },
                r#"{"name":"client_event","channel":"presence-p","event":"client-typing","data":"{\"t\":1}","socket_id":"1.2","user_id":"u1"}"#,
            ),
            (
                // user_id only on presence channels; no data when the client sent none.
                HubEvent::ClientEvent {
                    channel: "private-p".into(),
                    event: "client-x".into(),
                    data: None,
                    socket_id: "1.2".into(),
                    user_id: Some("u1".into()),
                },
                r#"{"name":"client_event","channel":"private-p","event":"client-x","socket_id":"1.2"}"#,
            ),
        ];
        for (e, want) in cases {
            let got = event_json(&e);
            assert_eq!(got, want);
            let v: serde_json::Value = serde_json::from_str(&got).unwrap();
            assert_eq!(v["name"], kind(&e));
        }
    }

    #[test]
    fn filter() {
        assert!(wanted(&[], "client_event"));
        let only = vec!["channel_occupied".to_string()];
        assert!(wanted(&only, "channel_occupied"));
        assert!(!wanted(&only, "channel_vacated"));
    }

    fn job(id: &str) -> Job {
        Job {
            v: JOB_VERSION,
            id: id.into(),
            app: "1".into(),
            key: "k".into(),
            url: "http://x/".into(),
            created_ms: 5,
            requeued_ms: None,
            events: 1,
            body: "{}".into(),
        }
    }

    #[test]
    fn job_round_trip_and_unknown_payloads() {
        let j = job("a");
        assert_eq!(Job::decode(&j.encode()), Some(j));
        assert_eq!(Job::decode(b"garbage"), None);
        assert_eq!(Job::decode(br#"{"v":9}"#), None);
    }

    #[test]
    fn dead_letters_respect_requeues() {
        let rec = |seq, d: DeadRecord| Record {
            seq,
            timestamp_ms: 0,
            payload: d.encode(),
        };
        let dead = |j: Job, e: &str| DeadRecord::Dead {
            job: j,
            dead_ms: 10,
            attempts: 3,
            last_error: e.into(),
        };
        let records = vec![
            rec(1, dead(job("a"), "500")),
            rec(2, dead(job("b"), "refused")),
            rec(
                3,
                DeadRecord::Requeued {
                    id: "a".into(),
                    at_ms: 11,
                },
            ),
            rec(4, dead(job("c"), "timeout")),
            rec(5, dead(job("a"), "again")),
            Record {
                seq: 6,
                timestamp_ms: 0,
                payload: b"not json".to_vec(),
            },
        ];
        let live = live_dead_letters(&records);
        let ids: Vec<_> = live.iter().map(|d| d.job.id.as_str()).collect();
        assert_eq!(ids, ["b", "c", "a"]);
        assert_eq!(live[2].last_error, "again");
    }

    #[test]
    fn batch_ids_are_distinct_hex() {
        let rng = ring::rand::SystemRandom::new();
        let a = new_batch_id(&rng);
        assert_eq!(a.len(), 24);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, new_batch_id(&rng));
    }
}
