//! What the server hands the modules that serve its requests (the WebSocket and HTTP fallback
//! transports, the console): the configuration, the hub, the counters, the liveness timings,
//! the shutdown signal and where socket ids come from.
//!
//! Narrow on purpose. Those modules see this and nothing else of the running server, so they
//! never import `server` (which imports them): the server builds one `Shared` at start-up and
//! keeps what only it needs (the HTTP API, the console's state) to itself.

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::{ConnectionGuard, Metrics, Transport};
use crate::protocol::SocketId;
use crate::session::Liveness;
use crate::shutdown::Shutdown;

pub struct Shared {
    pub config: Config,
    pub hub: Arc<Hub>,
    /// Lock-free counters for `/metrics` and the console.
    pub metrics: Arc<Metrics>,
    /// Activity timeout and pong wait, the same for every connection.
    pub liveness: Liveness,
    shutdown: Shutdown,
    /// The system's CSPRNG: socket ids must not be guessable (they sign private channels).
    rng: ring::rand::SystemRandom,
}

impl Shared {
    pub fn new(config: Config, hub: Arc<Hub>, shutdown: Shutdown) -> Shared {
        let liveness = Liveness {
            activity_timeout: config.server.activity_timeout,
            pong_timeout: config.server.pong_timeout,
        };
        Shared {
            metrics: Arc::new(Metrics::new(&config)),
            config,
            hub,
            liveness,
            shutdown,
            rng: ring::rand::SystemRandom::new(),
        }
    }

    /// A fresh `digits.digits` socket id.
    pub fn new_socket_id(&self) -> SocketId {
        SocketId::random(&self.rng)
    }

    /// Changes to `true` when the server shuts down (connections send 4200 and close).
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.signal()
    }

    /// Counts an accepted connection in `/metrics` until the returned guard drops, and makes a
    /// graceful shutdown wait for it: the transport keeps the guard for the connection's life.
    pub fn connection_opened(&self, app_id: &str, transport: Transport) -> ConnectionGuard {
        self.metrics
            .connection_opened(app_id, transport)
            .with_done(self.shutdown.guard())
    }
}
