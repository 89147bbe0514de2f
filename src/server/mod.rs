//! Wiring: what a running pushbox is made of and how it starts and stops. It owns the
//! listeners (plain and TLS, bound or inherited from systemd), the HTTP/1.1 connection loop
//! (hyper), routing each request to the WebSocket transport, the fallback transports, the HTTP
//! API, the console, `/metrics` and the health check, and the shutdown sequence. No business
//! logic: every answer comes from the module a request is routed to.
//!
//! Nothing it wires imports it: the transports and the console are handed the narrow
//! [`Shared`] context (the fallback transports also their [`Registry`]); `cli` parses the
//! command line and calls [`run`].
//!
//! - `listen`: binding, the accept loops, one hyper connection per socket;
//! - `conns`: the open HTTP connections, their deadlines and the open-files reserve;
//! - `resume_state`: resume's state across a graceful restart (state file, event log tail);
//! - `route`: which module answers a request, and the two small endpoints kept here;
//! - `run`: `pushbox serve` from the loaded configuration to exit;
//! - `tls`: the certificate, reloadable on SIGHUP.

mod conns;
mod listen;
mod resume_state;
mod route;
mod run;
pub mod tls;

use std::sync::Arc;

use crate::api::{Api, EventLog};
use crate::config::Config;
use crate::console::Console;
use crate::context::Shared;
use crate::hub::{ClusterLink, Hub, HubObserver};
use crate::metrics::Metrics;
use crate::transport::fallback::{self, Registry};

pub use crate::shutdown::ShutdownHandle;
pub use listen::{bind, bind_addr, serve, serve_tls};
pub use run::run;

/// Shared state of a running server: the context its transports and console are handed, and
/// what only the server itself uses.
pub struct State {
    pub shared: Arc<Shared>,
    /// The same hub and counters as in `shared`, at hand for the wiring and the tests.
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub api: Api,
    /// The HTTP fallback sessions.
    pub fallback: Arc<Registry>,
    /// The web console, when `[console]` is configured.
    pub console: Option<Console>,
    /// The open HTTP connections (deadlines, the open-files reserve).
    conns: Arc<conns::Conns>,
    /// The cluster this box is part of (`[cluster]`), for `/up`.
    pub cluster: Option<Arc<dyn ClusterLink>>,
}

impl State {
    /// A server with `config`'s apps, reporting hub events to `observer` and keeping accepted
    /// events in `log`. Call it inside the runtime: the fallback registry's janitor starts now.
    pub fn new(
        config: Config,
        observer: Arc<dyn HubObserver>,
        log: Option<Arc<dyn EventLog>>,
    ) -> (Arc<State>, ShutdownHandle) {
        let options = fallback::Options::from_config(&config);
        State::with_fallback(config, observer, log, options)
    }

    /// As [`State::new`], with the fallback transports' timings given (tests shorten them).
    pub fn with_fallback(
        config: Config,
        observer: Arc<dyn HubObserver>,
        log: Option<Arc<dyn EventLog>>,
        fallback: fallback::Options,
    ) -> (Arc<State>, ShutdownHandle) {
        State::build(config, observer, log, fallback, None)
    }

    /// As [`State::new`], for a box that is part of the cluster `link`.
    pub fn clustered(
        config: Config,
        observer: Arc<dyn HubObserver>,
        log: Option<Arc<dyn EventLog>>,
        link: Arc<dyn ClusterLink>,
    ) -> (Arc<State>, ShutdownHandle) {
        let options = fallback::Options::from_config(&config);
        State::build(config, observer, log, options, Some(link))
    }

    fn build(
        config: Config,
        observer: Arc<dyn HubObserver>,
        log: Option<Arc<dyn EventLog>>,
        fallback: fallback::Options,
        cluster: Option<Arc<dyn ClusterLink>>,
    ) -> (Arc<State>, ShutdownHandle) {
        let handle = ShutdownHandle::new();
        let hub = Arc::new(Hub::build(
            config.apps.clone(),
            observer,
            cluster.clone(),
            Some(&config.resume),
        ));
        let console = Console::new(&config);
        let mut api = Api::new(hub.clone(), log);
        // The console shows what the API accepted: a lossy tap, never a brake on publishing.
        api.tap = console.as_ref().map(|c| c.tap());
        let fallback = Registry::start(fallback, handle.subscribe().signal());
        let shared = Arc::new(Shared::new(config, hub.clone(), handle.subscribe()));
        let conns = conns::Conns::start(
            shared.config.server.request_timeout,
            crate::sys::limits::nofile_soft(),
            shared.metrics.clone(),
            handle.subscribe().signal(),
        );
        let state = State {
            conns,
            metrics: shared.metrics.clone(),
            shared,
            hub,
            api,
            fallback,
            console,
            cluster,
        };
        (Arc::new(state), handle)
    }
}
