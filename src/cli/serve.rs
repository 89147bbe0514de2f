//! `pushbox serve`: load the configuration, bind, run until SIGTERM/SIGINT, stop gracefully.

use std::process::ExitCode;
use std::sync::Arc;

use std::time::Duration;

use crate::config::{Config, ConfigError};
use crate::eventlog::EventLog;
use crate::server;
use crate::webhooks::Webhooks;

use super::ConfigArgs;

fn init_logging() {
    // Compact on a terminal, journald-friendly under systemd (see metrics::logfmt).
    let env = crate::config::ProcessEnv::default();
    crate::metrics::logfmt::init(&crate::config::LogConfig::from_env(&env));
}

/// `pushbox serve [--dev]`.
pub fn run(args: &ConfigArgs) -> ExitCode {
    init_logging();
    let cfg = match load(args) {
        Ok(c) => c,
        Err(e) => return super::config_failure(e),
    };
    for app in &cfg.apps {
        if let Some(w) = app.credential_warning() {
            tracing::warn!(app = %app.id, "{w}");
        }
    }
    // Before any thread exists: take systemd's sockets and raise the open-files limit.
    let activated = match crate::sys::activation::take_listeners() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("pushbox: socket activation: {e}");
            return ExitCode::FAILURE;
        }
    };
    match crate::sys::limits::raise_nofile_limit() {
        Ok((soft, _hard)) => {
            let wanted: u64 = cfg
                .apps
                .iter()
                .map(|a| a.max_connections as u64)
                .sum::<u64>()
                + 64;
            if soft < wanted {
                tracing::warn!(limit = soft, wanted, "open-files limit is below the configured connection limits: raise LimitNOFILE or lower max_connections");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
    // One CPU (a single-core board, or a server pinned to one core): the current-thread
    // scheduler does the same work without cross-thread wake-ups and atomics.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pushbox: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(serve(cfg, activated))
}

fn load(args: &ConfigArgs) -> Result<Config, ConfigError> {
    if args.dev {
        return crate::dev::config(&super::process_env(args)?);
    }
    super::load_config(args)
}

async fn serve(cfg: Config, activated: Vec<crate::sys::activation::ActivatedListener>) -> ExitCode {
    let notifier = crate::sys::notify::Notifier::from_env().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "systemd notification disabled");
        crate::sys::notify::Notifier::disabled()
    });

    // 1. Listeners: inherited from systemd (socket activation) or bound here.
    let mut plain = None;
    let mut secure = None;
    for a in activated {
        let is_tls = a.name.as_deref() == Some("https");
        match tokio::net::TcpListener::from_std(a.listener) {
            Ok(l) if is_tls => secure = Some(l),
            Ok(l) => plain = plain.or(Some(l)),
            Err(e) => tracing::warn!(error = %e, "cannot use an inherited listener"),
        }
    }
    let tls = match &cfg.tls {
        Some(t) => match server::tls::Tls::new(&t.cert, &t.key) {
            Ok(tls) => Some(Arc::new(tls)),
            Err(e) => {
                eprintln!("pushbox: config error: [tls] / PUSHBOX_TLS_CERT, PUSHBOX_TLS_KEY: {e}");
                return ExitCode::from(crate::config::EXIT_CONFIG as u8);
            }
        },
        None => None,
    };
    if plain.is_none() && cfg.server.plain {
        match server::bind(&cfg).await {
            Ok(l) => plain = Some(l),
            Err(e) => {
                eprintln!("pushbox: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let (Some(t), None) = (&cfg.tls, &secure) {
        match server::bind_addr(&t.host, t.port).await {
            Ok(l) => secure = Some(l),
            Err(e) => {
                eprintln!("pushbox: {e} (the [tls] listener)");
                return ExitCode::FAILURE;
            }
        }
    }

    // 2. Ports are bound: drop root if asked to.
    if let Some(user) = &cfg.user {
        if nix::unistd::geteuid().is_root() {
            match crate::sys::privilege::drop_to_user(user) {
                Ok(d) => tracing::info!(user = %user, uid = d.uid, "dropped privileges"),
                Err(e) => {
                    eprintln!("pushbox: cannot run as user {user:?}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }

    // 3. State: the event log (recovered after a crash).
    let (eventlog, report) = match EventLog::open(&cfg) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("pushbox: {e}");
            return ExitCode::FAILURE;
        }
    };
    if report.is_clean() {
        tracing::debug!(%report, "event log opened");
    } else {
        tracing::warn!(%report, "event log recovered after an unclean stop");
    }
    let _retention = eventlog.spawn_retention(Duration::from_secs(60));
    // Webhooks: a durable queue in {state_dir}/webhooks, pending batches retried promptly.
    let webhooks = match Webhooks::start(&cfg) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("pushbox: {e}");
            return ExitCode::FAILURE;
        }
    };

    let apps: Vec<String> = cfg.apps.iter().map(|a| a.id.clone()).collect();
    let plain_addr = plain.as_ref().and_then(|l| l.local_addr().ok());
    let tls_addr = secure.as_ref().and_then(|l| l.local_addr().ok());
    let (state, handle) = server::State::new(
        cfg,
        webhooks.clone(),
        Some(eventlog.clone() as Arc<dyn crate::api::EventLog>),
    );
    {
        // /metrics and the console: spool sizes, and the webhook queue when an app has receivers.
        let (log, wh) = (eventlog.clone(), webhooks.clone());
        state.metrics.set_spool(move || {
            let w = wh.stats();
            crate::metrics::SpoolSnapshot {
                bytes: vec![
                    ("events", log.spool().stats().total_bytes),
                    ("webhooks", w.queue_bytes),
                    ("webhooks-dead", w.dead_bytes),
                ],
            }
        });
        if state
            .config
            .apps
            .iter()
            .any(|a| !a.webhook_targets().is_empty())
        {
            let wh = webhooks.clone();
            state.metrics.set_webhooks(move || {
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
    let mut servers = Vec::new();
    if let Some(l) = plain {
        servers.push(tokio::spawn(server::serve(state.clone(), l)));
    }
    if let (Some(l), Some(t)) = (secure, tls.clone()) {
        servers.push(tokio::spawn(server::serve_tls(state.clone(), l, t)));
    }
    tracing::info!(plain = ?plain_addr, tls = ?tls_addr, apps = ?apps, "pushbox listening");
    let _ = notifier.ready();
    let _ = notifier.status(&format!(
        "serving: plain {plain_addr:?}, tls {tls_addr:?}, apps {apps:?}"
    ));
    let _watchdog = notifier.spawn_watchdog_from_env();

    // 4. Signals: HUP reloads the certificate, TERM/INT stop.
    wait_for_stop(tls.as_deref(), &notifier).await;
    tracing::info!("shutting down: telling clients to reconnect (4200)");
    let _ = notifier.stopping();
    handle.shutdown();
    for s in servers {
        let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
    }
    // Connection tasks send their 4200 close frames; give them a bounded moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline
        && state.hub.apps().iter().any(|a| {
            a.counters
                .connections
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        })
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Closing sockets' channel_vacated / member_removed go into the queue before it closes.
    webhooks.shutdown().await;
    drop(state);
    // The last handle to the event log finishes queued appends and fsyncs.
    drop(eventlog);
    ExitCode::SUCCESS
}

async fn wait_for_stop(tls: Option<&server::tls::Tls>, notifier: &crate::sys::notify::Notifier) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
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
