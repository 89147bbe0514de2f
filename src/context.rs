//! What the server hands the modules that serve its requests (the WebSocket and HTTP fallback
//! transports, the console): the configuration, the hub, the counters, the liveness timings,
//! the shutdown signal and where socket ids come from.
//!
//! Narrow on purpose. Those modules see this and nothing else of the running server, so they
//! never import `server` (which imports them): the server builds one `Shared` at start-up and
//! keeps what only it needs (the HTTP API, the console's state) to itself.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::{AddressSlot, ConnectionGuard, Metrics, Reason, Transport};
use crate::protocol::{CloseCode, SocketId};
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

    /// Counts a connection about to be admitted to `app_id` against its source address's
    /// share (`server.max_connections_per_ip`); refused with 4100 past it. pusher-js backs off
    /// and reconnects on a 41xx code (4004 would make it give up for good), which is right for
    /// a real client behind a busy NAT and costs nothing against a stranger.
    pub fn admit_address(&self, app_id: &str, peer: SocketAddr) -> Result<AddressSlot, CloseCode> {
        self.metrics.address_slot(app_id, peer.ip()).ok_or_else(|| {
            self.metrics.refused(Reason::PerAddress);
            tracing::warn!(
                %peer,
                app = app_id,
                limit = self.config.server.max_connections_per_ip,
                "connection refused: this address holds server.max_connections_per_ip connections"
            );
            CloseCode::OverCapacity
        })
    }

    /// Refuses a new connection while the process is near its cgroup's memory limit (the
    /// server's memory watch sets the flag; one atomic load here): 4100, on which pusher-js
    /// backs off and reconnects, to this box once it has room. Logged once per change of
    /// state by the watch, not per refused connection; counted here.
    pub fn admit_memory(&self) -> Result<(), CloseCode> {
        if !self.metrics.memory_pressure() {
            return Ok(());
        }
        self.metrics.refused(Reason::MemoryPressure);
        Err(CloseCode::OverCapacity)
    }

    /// Counts an accepted connection (admitted with `slot`) in `/metrics` until the returned
    /// guard drops, and makes a graceful shutdown wait for it: the transport keeps the guard
    /// for the connection's life; it gives the address's slot back too.
    pub fn connection_opened(&self, slot: AddressSlot, transport: Transport) -> ConnectionGuard {
        self.metrics
            .connection_opened_from(slot, transport)
            .with_done(self.shutdown.guard())
    }
}
