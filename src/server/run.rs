//! `pushbox serve` from a loaded configuration to exit, in the order the OS edge needs:
//!
//! 1. before any thread exists: take systemd's sockets, raise the open-files limit, start the
//!    runtime (current-thread on one CPU);
//! 2. listeners: inherited (socket activation) or bound here, then drop root if asked to;
//! 3. the event log (recovered after a crash) and the webhook queue, then the server state;
//! 4. serve, tell systemd we are ready, keep its watchdog fed;
//! 5. SIGHUP reloads the TLS certificate; SIGTERM/SIGINT stop: every client is told to
//!    reconnect (4200), the server waits for each connection to end (a bounded while), then
//!    closes the webhook queue and lets the event log finish its last fsync.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::{bind, bind_addr, serve, serve_tls, tls::Tls, ShutdownHandle, State};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::eventlog::EventLog;
use crate::sys::activation::ActivatedListener;
use crate::sys::notify::Notifier;
use crate::webhooks::Webhooks;

/// How long the accept loops, then the connections, may take to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the server until SIGTERM or SIGINT; the exit code says how it ended.
pub fn run(cfg: Config) -> ExitCode {
    for app in &cfg.apps {
        if let Some(w) = app.credential_warning() {
            tracing::warn!(app = %app.id, "{w}");
        }
    }
    // Before any thread exists: take systemd's sockets and raise the open-files limit.
    let activated = match crate::sys::activation::take_listeners() {
        Ok(l) => l,
        Err(e) => return fail(format_args!("socket activation: {e}")),
    };
    raise_open_files(&cfg);
    // One CPU (a single-core board, or a server pinned to one core): the current-thread
    // scheduler does the same work without cross-thread wake-ups and atomics.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    match builder.enable_all().build() {
        Ok(rt) => rt.block_on(serve_until_stopped(cfg, activated)),
        Err(e) => fail(format_args!("cannot start the runtime: {e}")),
    }
}

/// Says why start-up failed, on stderr (the journal shows it), and exits 1.
fn fail(why: impl std::fmt::Display) -> ExitCode {
    eprintln!("pushbox: {why}");
    ExitCode::FAILURE
}

fn raise_open_files(cfg: &Config) {
    match crate::sys::limits::raise_nofile_limit() {
        Ok((soft, _hard)) => {
            let wanted: u64 = cfg
                .apps
                .iter()
                .map(|a| a.max_connections as u64)
                .sum::<u64>()
                + cfg.server.open_files_reserve;
            if soft < wanted {
                tracing::warn!(limit = soft, wanted, "open-files limit is below the configured connection limits: raise LimitNOFILE or lower max_connections");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
}

async fn serve_until_stopped(cfg: Config, activated: Vec<ActivatedListener>) -> ExitCode {
    // Caught from the start, before the first connection is served: a SIGTERM that came after
    // the listeners started but before the wait for it took its default action and killed the
    // process uncleanly (tests/diskfull.rs under CPU load: "graceful stop failed (signal: 15)",
    // 3 of 8 runs; 0 of 24 since). One during start-up (a long recovery) stops the server
    // gracefully as soon as it serves.
    let signals = StopSignals::catch();
    let notifier = Notifier::from_env().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "systemd notification disabled");
        Notifier::disabled()
    });
    let listeners = match Listeners::open(&cfg, activated).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    // Ports are bound: drop root if asked to.
    if let Some(user) = &cfg.user {
        if nix::unistd::geteuid().is_root() {
            match crate::sys::privilege::drop_to_user(user) {
                Ok(d) => tracing::info!(
                    "running as user {user} (uid {}) now that the ports are bound",
                    d.uid
                ),
                Err(e) => return fail(format_args!("cannot run as user {user:?}: {e}")),
            }
        }
    }
    let (eventlog, webhooks) = match open_stores(&cfg) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let _retention = eventlog.spawn_retention(Duration::from_secs(60));
    let _watch = eventlog.spawn_watch();
    let _webhook_watch = webhooks.spawn_watch();
    let apps: Vec<String> = cfg.apps.iter().map(|a| a.id.clone()).collect();
    let log = Some(eventlog.clone() as Arc<dyn crate::api::EventLog>);
    // One branch: without `[cluster] redis_url` nothing of the cluster is built.
    let cluster = match cfg.cluster.enabled() {
        true => match Cluster::new(&cfg, webhooks.clone()) {
            Ok(c) => Some(c),
            Err(e) => return fail(e),
        },
        false => None,
    };
    let (state, handle) = match &cluster {
        Some(c) => State::clustered(cfg, webhooks.clone(), log, c.clone()),
        None => State::new(cfg, webhooks.clone(), log),
    };
    if let Some(c) = &cluster {
        c.start(&state.hub, eventlog.spool().clone());
        let status = c.clone();
        state.metrics.set_cluster(move || status.snapshot());
    }
    report_stores(&state, &eventlog, &webhooks);
    super::resume_state::load(&state.hub, &state.shared.config.state_dir, &eventlog);
    super::memory::spawn(&state.shared);
    let (plain_addr, tls_addr) = (listeners.plain_addr(), listeners.tls_addr());
    let tls = listeners.tls.clone();
    let servers = listeners.serve(&state);
    let serving = serving_line(plain_addr, tls_addr, &apps);
    tracing::info!("pushbox {} {serving}", env!("CARGO_PKG_VERSION"));
    let _ = notifier.ready();
    let _ = notifier.status(&serving);
    let _watchdog = notifier.spawn_watchdog_from_env();

    signals.wait(tls.as_deref(), &notifier).await;
    tracing::info!("shutting down: telling clients to reconnect (4200)");
    let _ = notifier.stopping();
    stop(handle, servers).await;
    // Every connection has ended and left its lineage: they go to the state directory.
    super::resume_state::save(&state.hub, &state.shared.config.state_dir);
    if let Some(c) = &cluster {
        // This node's members leave now, not when its lease ends.
        c.shutdown(&state.hub).await;
    }
    // Closing sockets' channel_vacated / member_removed went into the queue before it closes.
    webhooks.shutdown().await;
    drop(state);
    // The last handle to the event log finishes queued appends and fsyncs.
    drop(eventlog);
    ExitCode::SUCCESS
}

/// The start-up line (and systemd's status text) as a sentence with plain values:
/// `serving http://127.0.0.1:8080 and https://0.0.0.0:8443 for app 145840`.
fn serving_line(plain: Option<SocketAddr>, tls: Option<SocketAddr>, apps: &[String]) -> String {
    let urls: Vec<String> = [("http", plain), ("https", tls)]
        .into_iter()
        .filter_map(|(scheme, addr)| addr.map(|a| format!("{scheme}://{a}")))
        .collect();
    let urls = if urls.is_empty() {
        "no listener".to_owned()
    } else {
        urls.join(" and ")
    };
    let apps = match apps {
        [one] => format!("app {one}"),
        many => format!("{} apps: {}", many.len(), many.join(", ")),
    };
    format!("serving {urls} for {apps}")
}

/// The plain and TLS listeners, and the certificate the TLS one serves.
struct Listeners {
    plain: Option<TcpListener>,
    secure: Option<TcpListener>,
    tls: Option<Arc<Tls>>,
}

impl Listeners {
    /// Inherited from systemd (socket activation; the TLS one is named `https`) or bound here.
    async fn open(cfg: &Config, activated: Vec<ActivatedListener>) -> Result<Listeners, ExitCode> {
        let mut l = Listeners {
            plain: None,
            secure: None,
            tls: None,
        };
        for a in activated {
            let is_tls = a.name.as_deref() == Some("https");
            match TcpListener::from_std(a.listener) {
                Ok(t) if is_tls => l.secure = Some(t),
                Ok(t) => l.plain = l.plain.or(Some(t)),
                Err(e) => tracing::warn!(error = %e, "cannot use an inherited listener"),
            }
        }
        if let Some(t) = &cfg.tls {
            match Tls::new(&t.cert, &t.key) {
                Ok(tls) => l.tls = Some(Arc::new(tls)),
                Err(e) => {
                    eprintln!(
                        "pushbox: config error: [tls] / PUSHBOX_TLS_CERT, PUSHBOX_TLS_KEY: {e}"
                    );
                    return Err(ExitCode::from(crate::config::EXIT_CONFIG as u8));
                }
            }
        }
        if l.plain.is_none() && cfg.server.plain {
            l.plain = Some(bind(cfg).await.map_err(fail)?);
        }
        if let (Some(t), None) = (&cfg.tls, &l.secure) {
            let bound = bind_addr(&t.host, t.port).await;
            l.secure = Some(bound.map_err(|e| fail(format_args!("{e} (the [tls] listener)")))?);
        }
        Ok(l)
    }

    fn plain_addr(&self) -> Option<SocketAddr> {
        self.plain.as_ref().and_then(|l| l.local_addr().ok())
    }

    fn tls_addr(&self) -> Option<SocketAddr> {
        self.secure.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// An accept loop per listener, each ending on the shutdown signal.
    fn serve(self, state: &Arc<State>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut servers = Vec::new();
        if let Some(l) = self.plain {
            servers.push(tokio::spawn(serve(state.clone(), l)));
        }
        if let (Some(l), Some(t)) = (self.secure, self.tls) {
            servers.push(tokio::spawn(serve_tls(state.clone(), l, t)));
        }
        servers
    }
}

/// The event log (recovered after a crash) and the durable webhook queue in
/// `{state_dir}/webhooks`, whose pending batches are retried promptly.
fn open_stores(cfg: &Config) -> Result<(Arc<EventLog>, Arc<Webhooks>), ExitCode> {
    let (eventlog, report) = EventLog::open(cfg).map_err(fail)?;
    if report.is_clean() {
        tracing::debug!("event log opened: {report}");
    } else {
        tracing::warn!("event log recovered after an unclean stop: {report}");
    }
    let webhooks = Webhooks::start(cfg).map_err(fail)?;
    Ok((eventlog, webhooks))
}

/// `/metrics` and the console show spool sizes, and the webhook queue when an app has
/// receivers.
fn report_stores(state: &State, eventlog: &Arc<EventLog>, webhooks: &Arc<Webhooks>) {
    let metrics = &state.shared.metrics;
    let _ = state.webhooks.set(webhooks.clone());
    let (log, wh) = (eventlog.clone(), webhooks.clone());
    metrics.set_spool(move || {
        let w = wh.stats();
        crate::metrics::SpoolSnapshot {
            bytes: vec![
                ("events", log.spool().stats().total_bytes),
                ("webhooks", w.queue_bytes),
                ("webhooks-dead", w.dead_bytes),
            ],
            conditions: std::iter::once(("events", log.spool().condition()))
                .chain(wh.conditions())
                .collect(),
        }
    });
    let has_receivers = state
        .shared
        .config
        .apps
        .iter()
        .any(|a| !a.webhook_targets().is_empty());
    if has_receivers {
        let wh = webhooks.clone();
        metrics.set_webhooks(move || {
            let s = wh.stats();
            crate::metrics::WebhookSnapshot {
                queue_depth: s.queue_depth,
                oldest_pending_age_ms: s.oldest_pending_age_ms,
                delivered: s.delivered,
                failed_attempts: s.failed_attempts,
                dead_letters: s.dead_letters,
                events_dropped: s.events_dropped,
            }
        });
    }
}

/// Stops accepting, then waits for every connection to have sent its 4200 close frame and
/// left its channels, each step for a bounded while.
async fn stop(mut handle: ShutdownHandle, servers: Vec<tokio::task::JoinHandle<()>>) {
    handle.shutdown();
    for s in servers {
        let _ = tokio::time::timeout(STOP_TIMEOUT, s).await;
    }
    let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
    if !handle.wait(deadline).await {
        tracing::warn!("connections still open after the shutdown deadline: exiting anyway");
    }
}

/// The signals that stop (SIGTERM, SIGINT) or reload (SIGHUP) the server, caught from the
/// moment this is made (`None`: they could not be, and only Ctrl-C is waited for).
struct StopSignals(
    Option<(
        tokio::signal::unix::Signal,
        tokio::signal::unix::Signal,
        tokio::signal::unix::Signal,
    )>,
);

impl StopSignals {
    fn catch() -> StopSignals {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(int), Ok(hup)) => StopSignals(Some((term, int, hup))),
            _ => StopSignals(None),
        }
    }

    /// Returns on SIGTERM or SIGINT (also one that came before the wait); SIGHUP reloads the
    /// TLS certificate meanwhile.
    async fn wait(self, tls: Option<&Tls>, notifier: &Notifier) {
        let Some((mut term, mut int, mut hup)) = self.0 else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = int.recv() => return,
                _ = hup.recv() => {
                    let _ = notifier.reloading();
                    match tls {
                        Some(t) => match t.reload() {
                            Ok(()) => tracing::info!(cert = %t.cert_path().display(), "TLS certificate reloaded"),
                            Err(e) => tracing::error!(error = %e, "TLS reload failed: still serving the previous certificate"),
                        },
                        None => tracing::info!("SIGHUP: no TLS configured, nothing to reload"),
                    }
                    let _ = notifier.ready();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::serving_line;

    #[test]
    fn the_serving_line_is_a_sentence_with_plain_values() {
        let plain = Some(([127, 0, 0, 1], 8080).into());
        let tls = Some(([0, 0, 0, 0], 8443).into());
        assert_eq!(
            serving_line(plain, None, &["145840".into()]),
            "serving http://127.0.0.1:8080 for app 145840"
        );
        assert_eq!(
            serving_line(plain, tls, &["1".into(), "2".into()]),
            "serving http://127.0.0.1:8080 and https://0.0.0.0:8443 for 2 apps: 1, 2"
        );
    }
}
