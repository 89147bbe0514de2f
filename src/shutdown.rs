//! Graceful shutdown, the way tokio's mini-redis does it: one signal tells every task to stop,
//! and every task that must finish before the process exits holds a completion guard
//! ([`Done`]). The server waits for the last guard to drop (or for a deadline), not for a
//! counter it would have to poll.
//!
//! A connection's guard is dropped as its task ends, after its session has left its channels:
//! once the last one is gone every client has had its 4200 close frame and every leave event
//! (`member_removed`, `channel_vacated`) is in the webhook queue, so the server may close that
//! queue and the event log behind it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// The server's side: starts the shutdown, then waits for it to complete.
pub struct ShutdownHandle {
    signal: watch::Sender<bool>,
    /// The one strong sender besides the guards: dropped by [`ShutdownHandle::wait`], so the
    /// channel closes when the last guard goes.
    done_tx: Option<mpsc::Sender<()>>,
    done_rx: mpsc::Receiver<()>,
}

/// What a task is handed: the stop signal, and guards for the work it starts.
#[derive(Clone)]
pub struct Shutdown {
    signal: watch::Receiver<bool>,
    /// Weak, because long-lived holders of a `Shutdown` (the shared context, which every open
    /// HTTP connection keeps) must not keep the server waiting; only the guards count.
    done: mpsc::WeakSender<()>,
}

/// Held by a task until it ends; the shutdown waits until every `Done` is dropped.
/// `Done::default()` is a guard nothing waits for. One pointer wide: it sits in every
/// connection.
#[derive(Debug, Default)]
pub struct Done {
    // Never sent on: its drop is the message. `None` when taken after the wait began (the
    // task then stops at once on the signal anyway).
    _tx: Option<mpsc::Sender<()>>,
}

impl ShutdownHandle {
    pub fn new() -> ShutdownHandle {
        let (signal, _) = watch::channel(false);
        // Nothing is ever sent: capacity 1 is the smallest channel there is.
        let (done_tx, done_rx) = mpsc::channel(1);
        ShutdownHandle {
            signal,
            done_tx: Some(done_tx),
            done_rx,
        }
    }

    /// A task's view of this shutdown. Call it before [`ShutdownHandle::wait`]: guards taken
    /// from a view made later count for nothing.
    pub fn subscribe(&self) -> Shutdown {
        let done = match &self.done_tx {
            Some(tx) => tx.downgrade(),
            // Already waiting: a sender of a closed channel, whose guards are empty.
            None => mpsc::channel(1).0.downgrade(),
        };
        Shutdown {
            signal: self.signal.subscribe(),
            done,
        }
    }

    /// Tells every task to stop: connections are told to reconnect (4200).
    pub fn shutdown(&self) {
        self.signal.send_replace(true);
    }

    /// Waits until every [`Done`] handed out is dropped, or `deadline` passes; `true` when all
    /// tasks finished in time. Call it after [`ShutdownHandle::shutdown`] (before, it only
    /// says whether anything is still running). No guard is handed out once it was called.
    pub async fn wait(&mut self, deadline: tokio::time::Instant) -> bool {
        self.done_tx = None;
        // `recv` answers `None` once no sender is left; nothing is ever sent.
        tokio::time::timeout_at(deadline, self.done_rx.recv())
            .await
            .is_ok()
    }
}

impl Default for ShutdownHandle {
    fn default() -> Self {
        ShutdownHandle::new()
    }
}

impl Shutdown {
    /// Changes to `true` when the server shuts down (a dropped handle reads as a change too).
    pub fn signal(&self) -> watch::Receiver<bool> {
        self.signal.clone()
    }

    /// A guard the shutdown will wait for.
    pub fn guard(&self) -> Done {
        Done {
            _tx: self.done.upgrade(),
        }
    }
}

/// Runs `tick` on `target` every `every` until `shutdown` changes or `target` is dropped: the
/// janitors of the server's long-lived tables (fallback sessions, HTTP connections).
pub fn spawn_periodic<T: Send + Sync + 'static>(
    target: &Arc<T>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
    tick: impl Fn(&T) + Send + 'static,
) {
    let weak = Arc::downgrade(target);
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = interval.tick() => {}
            }
            match weak.upgrade() {
                Some(t) => tick(&t),
                None => break,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::Instant;

    #[tokio::test]
    async fn waits_for_every_guard() {
        let mut handle = ShutdownHandle::new();
        let shutdown = handle.subscribe();
        let mut signal = shutdown.signal();
        let guard = shutdown.guard();
        let task = tokio::spawn(async move {
            let _ = signal.changed().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(guard);
        });
        handle.shutdown();
        let start = Instant::now();
        assert!(handle.wait(start + Duration::from_secs(5)).await);
        assert!(start.elapsed() >= Duration::from_millis(50));
        task.await.unwrap();
        // Holding a `Shutdown` (as the shared context does) never delays the wait.
        drop(shutdown);
    }

    #[test]
    fn a_guard_is_one_pointer() {
        assert_eq!(std::mem::size_of::<Done>(), std::mem::size_of::<usize>());
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline() {
        let mut handle = ShutdownHandle::new();
        let _stuck = handle.subscribe().guard();
        handle.shutdown();
        let deadline = Instant::now() + Duration::from_millis(50);
        assert!(!handle.wait(deadline).await);
    }
}
