//! The bus reader of one app: `XREAD COUNT 512 BLOCK 5000` on a connection of its own whose
//! answers must come within 7 s. A missed deadline or any error drops the connection; the
//! reader connects again and resumes from its cursor in memory, so nothing is skipped and
//! nothing read twice (a stream, unlike pub/sub, keeps what was added meanwhile).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::bus::{self, StreamId};
use super::conn::{items, text, Redis};
use super::deliver::Msg;
use super::status::Status;

/// Entries per read: a burst is delivered in batches this large.
pub const BATCH: usize = 512;
/// How long one read blocks when there is nothing to read.
pub const BLOCK: Duration = Duration::from_secs(5);
/// How long a read may take to answer: the block plus slack. Past it, the connection is dead.
pub const READ_TIMEOUT: Duration = Duration::from_secs(7);

pub struct Reader {
    pub redis: Arc<Redis>,
    pub stream: String,
    pub app: usize,
    pub status: Arc<Status>,
    pub to: mpsc::Sender<Msg>,
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
            if self.to.send(Msg::Start(start)).await.is_err() {
                return Ok(());
            }
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
            reader.read(entries.len() >= BATCH);
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
