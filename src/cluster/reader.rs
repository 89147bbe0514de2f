//! The bus reader of one app: `XREAD COUNT 512 BLOCK 5000` on a connection of its own whose
//! answers must come within 7 s. A missed deadline or any error drops the connection; the
//! reader connects again and resumes from its cursor in memory, so nothing is skipped and
//! nothing read twice (a stream, unlike pub/sub, keeps what was added meanwhile).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::bus::{self, StreamId};
use super::conn::{items, text, Redis};
use super::deliver::{History, Msg};
use super::status::Status;

/// Entries per read: a burst is delivered in batches this large.
pub const BATCH: usize = 512;
/// How long one read blocks when there is nothing to read.
pub const BLOCK: Duration = Duration::from_secs(5);
/// How long a read may take to answer: the block plus slack. Past it, the connection is dead.
pub const READ_TIMEOUT: Duration = Duration::from_secs(7);

/// At most this many entries of history are read at start (the newest ones): ten thousand
/// events of up to the bus's entry size is one bounded read of a few MB.
pub const HISTORY_MAX: usize = 10_000;

pub struct Reader {
    pub redis: Arc<Redis>,
    pub stream: String,
    pub app: usize,
    pub status: Arc<Status>,
    pub to: mpsc::Sender<Msg>,
    /// With resume on, its window: at first contact the entries of the last window are read
    /// too, so that a node that (re)starts can replay them to clients that resume on it.
    pub history: Option<Duration>,
}

impl Reader {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        tokio::select! {
            _ = self.read_forever() => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }

    async fn read_forever(&self) {
        let mut cursor: Option<StreamId> = None;
        let mut backoff = Duration::from_millis(100);
        self.status.readers[self.app].started();
        loop {
            match self.read_until_error(&mut cursor).await {
                Ok(()) => return,
                Err(e) => {
                    self.status.readers[self.app].lost();
                    self.status.failed("reading the bus", &e);
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Checks that no entry after `cursor` was trimmed away (a node cut off for longer than
    /// the bus keeps, or far behind). If some were, its sockets cannot be made right: the
    /// deliverer closes them with 4200 so their clients subscribe again. `false`: the
    /// deliverer is gone.
    async fn no_gap(&self, conn: &mut redis::aio::MultiplexedConnection, cursor: StreamId) -> bool {
        let info: Result<redis::Value, _> = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(&self.stream)
            .query_async(conn)
            .await;
        let Ok(info) = info else {
            // No stream yet, or an older server: nothing to compare.
            return true;
        };
        let trimmed_past = trimmed_past(&info, cursor);
        match trimmed_past {
            Some(d) => {
                tracing::error!(cursor = %cursor, first = %d, "cluster: bus entries this node had not delivered were trimmed (it was cut off or behind for longer than the bus keeps): closing its subscribed connections with 4200 so their clients subscribe again");
                self.to.send(Msg::Gap).await.is_ok()
            }
            _ => true,
        }
    }

    /// The bus's entries of the last `window` up to `start`, at most [`HISTORY_MAX`] (the newest),
    /// and the position from which they are complete.
    async fn history(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        start: StreamId,
        window: Duration,
    ) -> Result<History, redis::RedisError> {
        let since_ms = super::status::now_ms().saturating_sub(window.as_millis() as u64);
        let since = StreamId {
            ms: since_ms,
            seq: 0,
        };
        if start < since {
            return Ok(History::complete_after(since, Vec::new()));
        }
        let newest_first: redis::Value = redis::cmd("XREVRANGE")
            .arg(&self.stream)
            .arg(start.to_string())
            .arg(since.to_string())
            .arg("COUNT")
            .arg(HISTORY_MAX)
            .query_async(conn)
            .await?;
        let mut entries = bus::range_entries(&newest_first);
        entries.reverse();
        Ok(match entries.first() {
            // Cut at the count: complete only from the oldest one read.
            Some(first) if entries.len() >= HISTORY_MAX => {
                let from = first.id;
                History::complete_after(from, entries)
            }
            _ => History::complete_after(since, entries),
        })
    }

    /// Reads until the connection fails; `Ok` only when the deliverer is gone.
    async fn read_until_error(
        &self,
        cursor: &mut Option<StreamId>,
    ) -> Result<(), redis::RedisError> {
        let mut conn = self.redis.dedicated(READ_TIMEOUT).await?;
        if cursor.is_none() {
            // First contact: start at the end of the stream (what came before is history).
            let last: redis::Value = redis::cmd("XREVRANGE")
                .arg(&self.stream)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await?;
            let start = items(&last)
                .first()
                .and_then(|e| items(e).first().and_then(text))
                .and_then(|id| StreamId::parse(&id))
                .unwrap_or(StreamId::ZERO);
            *cursor = Some(start);
            let history = match self.history {
                Some(window) => Some(self.history(&mut conn, start, window).await?),
                None => None,
            };
            if self
                .to
                .send(Msg::Start { at: start, history })
                .await
                .is_err()
            {
                return Ok(());
            }
        } else if !self
            .no_gap(&mut conn, cursor.unwrap_or(StreamId::ZERO))
            .await
        {
            return Ok(());
        }
        loop {
            let from = cursor.unwrap_or(StreamId::ZERO);
            let reply: redis::Value = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(BATCH)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.stream)
                .arg(from.to_string())
                .query_async(&mut conn)
                .await?;
            self.status.ok();
            let entries = bus::entries(&reply);
            let reader = &self.status.readers[self.app];
            let behind = entries.len() >= BATCH;
            reader.read(behind);
            // Behind by a full batch: the stream may have been trimmed past the cursor.
            if behind && !self.no_gap(&mut conn, from).await {
                return Ok(());
            }
            let Some(last) = entries.last() else {
                continue;
            };
            *cursor = Some(last.id);
            reader
                .queued
                .fetch_add(entries.len() as i64, std::sync::atomic::Ordering::Relaxed);
            if self.to.send(Msg::Entries(entries)).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// From `XINFO STREAM`: the first entry left, when entries after `cursor` were trimmed away.
///
/// Redis 7.0 does not count trimming in `max-deleted-entry-id`, so: something was removed
/// (`entries-added` > `length`; a stream Redis lost and started again has removed nothing) and
/// the oldest entry left is after the cursor (or none is left, though newer ones were added).
/// The one case taken for a gap that is none: the cursor's own entry was the last one trimmed.
fn trimmed_past(info: &redis::Value, cursor: StreamId) -> Option<StreamId> {
    use super::conn::{int, items};
    let mut length = None;
    let mut added = None;
    let mut last = None;
    let mut first = None;
    for kv in items(info).chunks(2) {
        let [k, v] = kv else { continue };
        match text(k).as_deref() {
            Some("length") => length = int(v),
            Some("entries-added") => added = int(v),
            Some("last-generated-id") => last = text(v).and_then(|s| StreamId::parse(&s)),
            Some("first-entry") => {
                first = items(v)
                    .first()
                    .and_then(text)
                    .and_then(|s| StreamId::parse(&s))
            }
            _ => {}
        }
    }
    let removed = matches!((added, length), (Some(a), Some(l)) if a > l);
    match (removed, first, last) {
        (true, Some(f), _) if f > cursor => Some(f),
        (true, None, Some(l)) if l > cursor => Some(l),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn info(length: i64, added: i64, first: Option<&str>, last: &str) -> Value {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let first = match first {
            Some(id) => Value::Array(vec![b(id), Value::Array(vec![b("k"), b("z")])]),
            None => Value::Nil,
        };
        Value::Array(vec![
            b("length"),
            Value::Int(length),
            b("last-generated-id"),
            b(last),
            b("entries-added"),
            Value::Int(added),
            b("first-entry"),
            first,
        ])
    }

    #[test]
    fn a_gap_is_entries_after_the_cursor_trimmed_away() {
        let at = |s: &str| StreamId::parse(s).unwrap();
        // Trimmed, but only older entries: no gap.
        assert_eq!(
            trimmed_past(&info(10, 50, Some("5-0"), "20-0"), at("12-0")),
            None
        );
        // The oldest left is after the cursor: entries in between are gone.
        assert_eq!(
            trimmed_past(&info(10, 50, Some("15-0"), "20-0"), at("12-0")),
            Some(at("15-0"))
        );
        // Everything trimmed, newer entries were added.
        assert_eq!(
            trimmed_past(&info(0, 50, None, "20-0"), at("12-0")),
            Some(at("20-0"))
        );
        // A stream Redis lost and started again: nothing removed, no gap.
        assert_eq!(
            trimmed_past(&info(3, 3, Some("15-0"), "20-0"), at("12-0")),
            None
        );
    }
}
