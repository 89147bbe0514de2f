//! Putting dead letters back on the queue (`pushbox queue retry ID|--all`) without ever having
//! two writers on one spool.
//!
//! * **No server running** (the CLI can take the webhook spool's `LOCK`): the CLI calls
//!   [`requeue`] itself: each chosen dead letter is appended to the queue again (same batch id,
//!   `requeued_ms` set so the age limit starts over), then a `requeued` marker is appended to
//!   the dead-letter spool. A crash between the two leaves the batch both queued and listed as
//!   dead: at worst it is sent twice, never lost.
//! * **A server is running** (the lock is taken): the CLI writes a [`Request`] as
//!   `{state_dir}/webhooks-retry/{name}.json` (temp file + rename, so the server never reads
//!   half a request) and waits for `{name}.done`, which the server's [`watch`] task writes after
//!   doing the same [`requeue`] with its own spool handles. The server polls the directory every
//!   [`POLL`] and handles requests left over from while it was down as soon as it starts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch as tokio_watch;

use super::job::{live_dead_letters, DeadLetter, DeadRecord};
use super::{now_ms, Counters, WebhookError};
use crate::config::Config;
use crate::spool::{Record, Spool, SpoolError, SpoolReader};

/// How often a running server looks for retry requests.
pub const POLL: Duration = Duration::from_millis(500);

/// Which dead letters to requeue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// One dead letter by batch id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Every dead letter.
    #[serde(default)]
    pub all: bool,
}

/// The server's answer to a [`Request`] (`{name}.done`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// How many dead letters went back on the queue.
    pub requeued: usize,
    /// Why the request failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn read_all(
    mut read: impl FnMut(u64) -> Result<Vec<Record>, crate::spool::SpoolError>,
) -> Result<Vec<Record>, crate::spool::SpoolError> {
    let mut out = Vec::new();
    let mut next = 1;
    loop {
        let batch = read(next)?;
        let Some(last) = batch.last() else {
            return Ok(out);
        };
        next = last.seq + 1;
        out.extend(batch);
    }
}

/// Every record of a spool opened for writing.
pub fn read_spool(spool: &Spool) -> Result<Vec<Record>, WebhookError> {
    Ok(read_all(|s| spool.read_from(s, 1024))?)
}

/// Every record of a spool opened read-only.
pub fn read_reader(reader: &SpoolReader) -> Result<Vec<Record>, WebhookError> {
    Ok(read_all(|s| reader.read_from(s, 1024))?)
}

/// The parked dead letters of the dead-letter spool.
pub fn read_dead_letters(dead: &Spool) -> Result<Vec<DeadLetter>, WebhookError> {
    Ok(live_dead_letters(&read_spool(dead)?))
}

/// Requeue the dead letters `req` names; returns how many. Needs the spools open for writing
/// (the server's handles, or the CLI's when no server runs).
pub async fn requeue(queue: &Spool, dead: &Spool, req: &Request) -> Result<usize, WebhookError> {
    let live = read_dead_letters(dead)?;
    let chosen: Vec<DeadLetter> = match (&req.id, req.all) {
        (_, true) => live,
        (Some(id), false) => {
            let v: Vec<DeadLetter> = live.into_iter().filter(|d| &d.job.id == id).collect();
            if v.is_empty() {
                return Err(WebhookError::NoSuchDeadLetter { id: id.clone() });
            }
            v
        }
        (None, false) => Vec::new(),
    };
    let mut n = 0;
    for d in chosen {
        let mut job = d.job;
        let now = now_ms();
        job.requeued_ms = Some(now);
        queue.append(job.encode()).await?;
        dead.append(
            DeadRecord::Requeued {
                id: job.id.clone(),
                at_ms: now,
            }
            .encode(),
        )
        .await?;
        tracing::info!(batch = %job.id, app = %job.app, url = %job.url, "dead letter requeued");
        n += 1;
    }
    Ok(n)
}

fn rr_err(path: &Path, e: impl std::fmt::Display) -> WebhookError {
    WebhookError::RetryRequest {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// CLI side: leave `req` for the running server. Returns the request file's path; the answer
/// will appear beside it with the extension `.done` ([`wait_answer`]).
pub fn submit(dir: &Path, req: &Request) -> Result<PathBuf, WebhookError> {
    std::fs::create_dir_all(dir).map_err(|e| rr_err(dir, e))?;
    let mut rnd = [0u8; 6];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut rnd);
    let name = format!("{}-{}", now_ms(), crate::protocol::hex(&rnd));
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(format!("{name}.json"));
    let body = serde_json::to_vec(req).map_err(|e| rr_err(&tmp, e))?;
    std::fs::write(&tmp, body).map_err(|e| rr_err(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| rr_err(&path, e))?;
    Ok(path)
}

/// CLI side: wait up to `timeout` for the server's answer to the request at `path`; `None` if
/// it did not come (the request stays and is handled when the server next looks).
pub fn wait_answer(path: &Path, timeout: Duration) -> Option<Answer> {
    let done = path.with_extension("done");
    let until = std::time::Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read(&done) {
            if let Ok(a) = serde_json::from_slice::<Answer>(&text) {
                let _ = std::fs::remove_file(&done);
                return Some(a);
            }
        }
        if std::time::Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Server side: handle every pending request in `dir` once.
pub(crate) async fn handle_pending(dir: &Path, queue: &Spool, dead: &Spool, counters: &Counters) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return; // no directory: no requests
    };
    let mut reqs: Vec<PathBuf> = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            reqs.push(p);
        } else if p.extension().is_some_and(|x| x == "done") {
            // Answers nobody collected (the CLI gave up waiting) go after an hour.
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(3600));
            if old {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    reqs.sort();
    for path in reqs {
        let answer = match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Request>(&b).map_err(|e| e.to_string()))
        {
            Err(e) => Answer {
                requeued: 0,
                error: Some(format!("unreadable request {}: {e}", path.display())),
            },
            Ok(req) => match requeue(queue, dead, &req).await {
                Ok(n) => {
                    counters.dead_letters_sub(n as u64);
                    Answer {
                        requeued: n,
                        error: None,
                    }
                }
                Err(e) => Answer {
                    requeued: 0,
                    error: Some(e.to_string()),
                },
            },
        };
        let done = path.with_extension("done");
        let text = serde_json::to_vec(&answer).unwrap_or_default();
        if let Err(e) = std::fs::write(&done, text) {
            tracing::warn!(path = %done.display(), error = %e, "cannot answer a webhook retry request");
        }
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a handled webhook retry request");
        }
    }
}

/// Server side: poll `dir` for requests until stopped.
pub(crate) async fn watch(
    dir: PathBuf,
    queue: Spool,
    dead: Spool,
    counters: Arc<Counters>,
    mut stop: tokio_watch::Receiver<bool>,
) {
    loop {
        handle_pending(&dir, &queue, &dead, &counters).await;
        tokio::select! {
            _ = super::stopped(&mut stop) => return,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// How a retry went.
pub enum Retried {
    /// This many dead letters are back on the queue.
    Done(usize),
    /// A running server has the request but has not answered yet.
    Pending(std::path::PathBuf),
}

/// `pushbox queue retry`: requeue directly when no server holds the queue's lock (blocking;
/// call it outside a tokio runtime), else through the running server, waiting up to `timeout`
/// for its answer.
pub fn retry(cfg: &Config, req: &Request, timeout: Duration) -> Result<Retried, WebhookError> {
    match Spool::open(super::queue_dir(&cfg.state_dir), super::queue_options(cfg)) {
        Ok((queue, _)) => {
            let (dead, _) = Spool::open(super::dead_dir(&cfg.state_dir), super::dead_options(cfg))?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| WebhookError::Runtime(e.to_string()))?;
            let n = rt.block_on(requeue(&queue, &dead, req))?;
            Ok(Retried::Done(n))
        }
        Err(SpoolError::Locked { .. }) => {
            let path = submit(&super::retry_dir(&cfg.state_dir), req)?;
            match wait_answer(&path, timeout) {
                Some(a) => match a.error {
                    Some(e) => Err(WebhookError::RetryRequest {
                        path,
                        reason: format!("the server answered: {e}"),
                    }),
                    None => Ok(Retried::Done(a.requeued)),
                },
                None => Ok(Retried::Pending(path)),
            }
        }
        Err(e) => Err(e.into()),
    }
}
