//! The open HTTP connections: what phase each is in, the deadlines on those phases, and the
//! reserve of file descriptors that keeps the box answering new clients when a crowd (or a
//! stranger) holds many sockets open.
//!
//! Deadlines, all from `server.request_timeout` (T):
//! - the head, and an idle keep-alive connection waiting for the next head: hyper's header
//!   timer, T;
//! - the body: `http::read_body` gives up after T and the client gets 408;
//! - everything else (a handler that never finishes, a response the client stops reading):
//!   the janitor here closes a connection whose phase has not moved for 2T. A response body
//!   waiting for *our* data (a fallback stream between events) is "quiet" and never times
//!   out: its session has its own liveness.
//!
//! The reserve: every socket is a file descriptor, and when the process runs out `accept`
//! fails and new clients wait in the kernel's backlog for as long as the old ones are held
//! (1,100 bodiless requests on a 1,024-fd limit locked everyone out). So the box counts its
//! sockets (HTTP connections here, WebSockets in the metrics) against the open-files limit
//! less `server.open_files_reserve` (64 by default: an idle server holds 18 descriptors, webhook
//! deliveries and segment rollover a few more at peaks), and past that a new connection makes room by closing the HTTP
//! connection that has waited longest on its client (head, body or idle: never a WebSocket,
//! never a quiet stream); when there is none it gets a quick 503 and is closed, instead of
//! hanging in the backlog.
//!
//! Per connection this costs an entry here (an `Arc` of a timestamp and a `Notify`) while it
//! speaks HTTP: an upgraded WebSocket leaves the table, so its budget is untouched.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::metrics::{Metrics, Reason};

/// `since` of a response waiting for our data: no deadline.
const QUIET: u64 = u64::MAX;
/// `since` of a connection told to close: skipped by eviction and the janitor.
const DOOMED: u64 = u64::MAX - 1;

/// One HTTP connection's phase: when it last moved (ms since the table's epoch), or
/// [`QUIET`] / [`DOOMED`]; and how its task is told to close.
pub struct Conn {
    since: AtomicU64,
    epoch: Instant,
    kill: Notify,
}

impl Conn {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(DOOMED - 1)
    }

    /// The connection moved on (a request arrived, an answer or a chunk of one was handed
    /// to hyper): its deadline starts again.
    pub fn busy(&self) {
        let now = self.now();
        let _ = self
            .since
            .fetch_update(Relaxed, Relaxed, |s| (s != DOOMED).then_some(now));
    }

    /// The response waits for data of ours, not for the client: no deadline meanwhile.
    pub fn quiet(&self) {
        let _ = self
            .since
            .fetch_update(Relaxed, Relaxed, |s| (s != DOOMED).then_some(QUIET));
    }

    /// Resolves when the connection is to be closed (a deadline passed, or it was evicted).
    pub async fn closed(&self) {
        self.kill.notified().await
    }

    fn doom(&self) {
        self.since.store(DOOMED, Relaxed);
        self.kill.notify_one();
    }
}

/// What the accept loop does with a new socket.
pub enum Admission {
    /// Serve it; dropping the handle takes it out of the table.
    Serve(ConnHandle),
    /// No descriptor to spare and no slow connection to close: answer 503 and close it.
    Refuse,
}

/// A connection's place in the table, for as long as it speaks HTTP.
pub struct ConnHandle {
    pub conn: Arc<Conn>,
    id: u64,
    table: Weak<Conns>,
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        if let Some(t) = self.table.upgrade() {
            t.lock().remove(&self.id);
        }
    }
}

/// Every open HTTP connection of a server.
pub struct Conns {
    table: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    epoch: Instant,
    /// Sockets this server may hold: the open-files limit less the reserve.
    budget: u64,
    /// `server.request_timeout`.
    pub timeout: Duration,
}

impl Conns {
    /// A table for a process whose open-files limit is `nofile` (`None`: unlimited), `reserve`
    /// of them kept back, with the janitor running (and counting what it closes in `metrics`)
    /// until `shutdown` changes. Call it inside the runtime.
    pub fn start(
        timeout: Duration,
        nofile: Option<u64>,
        reserve: u64,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Conns> {
        let conns = Arc::new(Conns {
            table: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            epoch: Instant::now(),
            budget: nofile.map_or(u64::MAX, |n| n.saturating_sub(reserve).max(1)),
            timeout,
        });
        spawn_janitor(&conns, metrics, shutdown);
        conns
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        // Entries stay consistent whatever panicked while holding the lock.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A socket was accepted while `others` sockets outside this table (WebSockets) are
    /// open. Past the budget the slowest HTTP connection is told to close first; `evicted`
    /// says whether one was.
    pub fn admit(self: &Arc<Conns>, others: u64) -> (Admission, bool) {
        let mut table = self.lock();
        let mut evicted = false;
        if table.len() as u64 + others >= self.budget {
            match slowest(&table) {
                Some(c) => {
                    c.doom();
                    evicted = true;
                }
                None => return (Admission::Refuse, false),
            }
        }
        let id = self.next_id.fetch_add(1, Relaxed);
        let conn = Arc::new(Conn {
            since: AtomicU64::new(0),
            epoch: self.epoch,
            kill: Notify::new(),
        });
        conn.busy();
        table.insert(id, conn.clone());
        let handle = ConnHandle {
            conn,
            id,
            table: Arc::downgrade(self),
        };
        (Admission::Serve(handle), evicted)
    }

    /// `accept` itself failed for want of descriptors (something outside the budget took
    /// them): close the slowest connection so the next `accept` succeeds.
    pub fn evict_one(&self) -> bool {
        let table = self.lock();
        slowest(&table).map(|c| c.doom()).is_some()
    }

    /// Open HTTP connections.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Closes every connection whose phase has not moved for twice the request timeout;
    /// returns how many.
    fn sweep(&self) -> u64 {
        let limit = u64::try_from(2 * self.timeout.as_millis()).unwrap_or(u64::MAX);
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let table = self.lock();
        let mut n = 0;
        for c in table.values() {
            let since = c.since.load(Relaxed);
            if since < DOOMED && now.saturating_sub(since) > limit {
                c.doom();
                n += 1;
            }
        }
        n
    }
}

/// The connection that has waited longest on its client (quiet and doomed ones excepted).
/// A scan, only when the box is at its limit: 20,000 entries take well under a millisecond.
fn slowest(table: &HashMap<u64, Arc<Conn>>) -> Option<&Arc<Conn>> {
    table
        .values()
        .filter(|c| c.since.load(Relaxed) < DOOMED)
        .min_by_key(|c| c.since.load(Relaxed))
}

/// Every half timeout (at most once a second), closes what overstayed.
fn spawn_janitor(conns: &Arc<Conns>, metrics: Arc<Metrics>, shutdown: watch::Receiver<bool>) {
    let every = (conns.timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(1));
    crate::shutdown::spawn_periodic(conns, every, shutdown, move |c: &Conns| {
        let n = c.sweep();
        for _ in 0..n {
            metrics.refused(Reason::HttpTimeout);
        }
        if n > 0 {
            tracing::info!(
                connections = n,
                "closed HTTP connections that overstayed request_timeout"
            );
        }
    });
}

/// The whole answer to a connection refused for want of descriptors, written without
/// waiting (a socket that just connected takes it at once).
pub const REFUSAL_503: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 5\r\nConnection: close\r\nContent-Length: 88\r\n\r\n{\"error\":\"Server busy: too many open connections, retry in a few seconds (Retry-After)\"}";

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Arc<Metrics> {
        use crate::config::{AppConfig, Config, DevApp};
        let env = std::collections::HashMap::new();
        let app = DevApp::new(AppConfig::with_defaults("1", "k", "s"), None);
        let config = Config::dev(std::env::temp_dir(), app, &env).expect("a dev config");
        Arc::new(Metrics::new(&config))
    }

    #[test]
    fn refusal_length_matches() {
        let text = std::str::from_utf8(REFUSAL_503).unwrap();
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
    }

    #[tokio::test]
    async fn past_the_budget_the_slowest_goes_then_new_ones_are_refused() {
        let (_tx, rx) = watch::channel(false);
        let conns = Conns::start(Duration::from_secs(30), Some(200 + 3), 200, metrics(), rx);
        let serve = |a: (Admission, bool)| match a {
            (Admission::Serve(h), evicted) => (h, evicted),
            (Admission::Refuse, _) => panic!("refused"),
        };
        let (old, _) = serve(conns.admit(0));
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (stream, _) = serve(conns.admit(0));
        stream.conn.quiet();
        let (_young, evicted) = serve(conns.admit(0));
        assert!(!evicted);
        // At the budget (3): the oldest busy one is told to close, not the quiet stream.
        let (_new, evicted) = serve(conns.admit(0));
        assert!(evicted);
        assert_eq!(old.conn.since.load(Relaxed), DOOMED);
        assert_ne!(stream.conn.since.load(Relaxed), DOOMED);
        tokio::time::timeout(Duration::from_secs(1), old.conn.closed())
            .await
            .expect("the evicted connection's task is told");
        // WebSockets count too; when only quiet or doomed ones are left: refuse.
        _young.conn.quiet();
        _new.conn.quiet();
        assert!(matches!(conns.admit(10).0, Admission::Refuse));
        drop(old);
        assert_eq!(conns.len(), 3);
    }

    #[tokio::test]
    async fn the_janitor_closes_what_overstayed() {
        let (_tx, rx) = watch::channel(false);
        let conns = Conns::start(Duration::from_millis(100), None, 64, metrics(), rx);
        let Admission::Serve(h) = conns.admit(0).0 else {
            panic!("refused")
        };
        tokio::time::timeout(Duration::from_secs(2), h.conn.closed())
            .await
            .expect("closed after 2 × request_timeout");
    }
}
