//! The fallback session registry: every live HTTP fallback session keyed by
//! `{app key}/{server}/{session}` (the pusher-js URL segments), the cap on how many may exist,
//! the timings they run with, and a janitor that forgets sessions whose task has ended.
//!
//! One registry per running server, made with it at start-up ([`Registry::start`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::driver::Cmd;
use crate::config::Config;

/// How fallback sessions behave. `Options::from_config` gives the production values; tests
/// shorten them.
#[derive(Clone, Debug)]
pub struct Options {
    /// Idle streaming responses get an `h` line this often (must stay under pusher-js's 30 s
    /// pong wait).
    pub heartbeat: Duration,
    /// A poll with nothing to deliver is answered with `h` after this long.
    pub poll_hold: Duration,
    /// A session with no receive request attached and no `xhr_send` for this long is destroyed
    /// (the same cleanup as a WebSocket close). Defaults to `server.pong_timeout`: a peer that
    /// showed no sign of life for that long is gone whatever its transport.
    pub session_timeout: Duration,
    /// pusher-js aborts a streaming response and resumes the session on a new one once it has
    /// read more than this many characters (256 KiB); the server stops writing past it so no
    /// frame is lost in the aborted response.
    pub stream_limit: usize,
    /// A stream past `stream_limit` whose client never rolls over is ended after this long.
    pub rollover_grace: Duration,
    /// A session whose client never came back after its first receive request (no second
    /// receive, no `xhr_send`) is destroyed after this instead of `session_timeout`. pusher-js
    /// polls again at once and sends its subscriptions within milliseconds; an abandoned
    /// session (thousands of them, from a stranger) holds the app's quota this long only.
    pub first_poll_timeout: Duration,
    /// Total fallback sessions on this server; more are refused with 4100.
    pub max_sessions: usize,
    /// Send the 2 KiB `h` prelude at the start of every streaming response.
    pub prelude: bool,
}

/// Ten seconds: a real client's second request comes within milliseconds, a phone on a poor
/// Wi-Fi within a few seconds; a third of the default `session_timeout` (30 s).
const FIRST_POLL_TIMEOUT: Duration = Duration::from_secs(10);

impl Options {
    pub fn from_config(config: &Config) -> Options {
        Options {
            heartbeat: Duration::from_secs(25),
            poll_hold: Duration::from_secs(25),
            session_timeout: config
                .server
                .fallback_session_timeout
                .unwrap_or(config.server.pong_timeout)
                .max(Duration::from_secs(1)),
            stream_limit: 256 * 1024,
            rollover_grace: Duration::from_secs(10),
            first_poll_timeout: FIRST_POLL_TIMEOUT,
            max_sessions: config.server.max_fallback_sessions,
            prelude: true,
        }
    }
}

/// The registry's handle on one session's task.
#[derive(Clone)]
pub(super) struct Handle {
    pub tx: mpsc::Sender<Cmd>,
    id: u64,
}

/// Why a new session could not be registered.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum OpenError {
    /// `max_sessions` reached.
    Full,
}

pub struct Registry {
    pub(super) options: Options,
    sessions: Mutex<HashMap<String, Handle>>,
    next_id: AtomicU64,
}

/// Commands a session's task may have queued before it notices anything.
const CMD_QUEUE: usize = 8;

impl Registry {
    /// An empty registry, with its janitor running until `shutdown` changes.
    pub fn start(options: Options, shutdown: watch::Receiver<bool>) -> Arc<Registry> {
        let registry = Arc::new(Registry {
            options,
            sessions: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        });
        spawn_janitor(&registry, shutdown);
        registry
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Handle>> {
        // The map stays consistent whatever panicked while holding it.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live session at `key`, if any.
    pub(super) fn get(&self, key: &str) -> Option<Handle> {
        self.lock().get(key).filter(|h| !h.tx.is_closed()).cloned()
    }

    /// Registers a new session at `key` unless one is there already (`Ok((handle, None))`).
    /// `admit` runs under the registry lock once the cap allows a new session (it counts the
    /// connection against the app's quota, or refuses); on success the new session's command
    /// queue and what `admit` returned are handed back for its task.
    #[allow(clippy::type_complexity)]
    pub(super) fn open<T, E>(
        &self,
        key: &str,
        admit: impl FnOnce() -> Result<T, E>,
    ) -> Result<(Handle, Option<(u64, mpsc::Receiver<Cmd>, T)>), Result<OpenError, E>> {
        let mut map = self.lock();
        if let Some(h) = map.get(key).filter(|h| !h.tx.is_closed()) {
            return Ok((h.clone(), None));
        }
        // Entries of ended tasks are few (each task removes its own); the janitor drops them.
        if map.len() >= self.options.max_sessions {
            return Err(Ok(OpenError::Full));
        }
        let admitted = admit().map_err(Err)?;
        let (tx, rx) = mpsc::channel(CMD_QUEUE);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let handle = Handle { tx, id };
        map.insert(key.to_owned(), handle.clone());
        Ok((handle, Some((id, rx, admitted))))
    }

    /// Forgets the session `id` at `key` (a newer session under the same key is kept).
    pub(super) fn remove(&self, key: &str, id: u64) {
        let mut map = self.lock();
        if map.get(key).is_some_and(|h| h.id == id) {
            map.remove(key);
        }
    }

    /// Number of registered sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops entries whose task is gone (it removes itself on every normal exit; this catches
    /// the rest) and gives back memory after a burst.
    fn sweep(&self) {
        let mut map = self.lock();
        map.retain(|_, h| !h.tx.is_closed());
        if map.capacity() > 64 && map.capacity() > map.len() * 4 {
            map.shrink_to_fit();
        }
    }
}

fn spawn_janitor(registry: &Arc<Registry>, shutdown: watch::Receiver<bool>) {
    let every = (registry.options.session_timeout / 2)
        .clamp(Duration::from_secs(1), Duration::from_secs(15));
    crate::shutdown::spawn_periodic(registry, every, shutdown, Registry::sweep);
}
