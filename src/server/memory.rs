//! The memory watch: under a cgroup memory limit (systemd's `MemoryMax=`), reads how much of it
//! the process uses every [`EVERY`] and, past `server.memory_pressure_percent`, marks the box
//! under pressure: new WebSocket and fallback connections are then refused with 4100 (pusher-js
//! backs off and reconnects) instead of growing until the kernel's OOM killer ends every
//! connection at once. `/up` and `/metrics` (`pushbox_memory_pressure`) say so, and each change
//! is logged once.
//!
//! The reading is a timer's job, never a connection's: admission reads one atomic
//! ([`crate::metrics::Metrics::memory_pressure`]). Without a limit (or without cgroups) the
//! watch does not run and nothing is ever refused for memory.

use std::sync::Arc;
use std::time::Duration;

use crate::context::Shared;
use crate::sys::memory::{CgroupMemory, Usage};

/// How often the cgroup's files are read: three small reads from kernel memory. A second is
/// far shorter than it takes connections to fill the last tenth of a limit.
pub const EVERY: Duration = Duration::from_secs(1);

/// Pressure ends this many percentage points below where it began, so a box hovering at the
/// threshold does not flip (and log) every second.
const HYSTERESIS: u64 = 5;

/// Starts the watch if there is a limit to watch and `server.memory_pressure_percent` is not 0.
pub(super) fn spawn(shared: &Arc<Shared>) {
    let percent = u64::from(shared.config.server.memory_pressure_percent);
    if percent == 0 {
        return;
    }
    let Some(cgroup) = CgroupMemory::locate() else {
        tracing::debug!("no memory cgroup found: memory pressure is not watched");
        return;
    };
    match cgroup.read() {
        Ok(Some(u)) => tracing::info!(
            cgroup = %cgroup.dir().map(|d| d.display().to_string()).unwrap_or_default(),
            limit = u.limit,
            used = u.used,
            "memory limit found: new connections are refused past {percent} % of it"
        ),
        Ok(None) => tracing::debug!("the memory cgroup has no limit (yet): watching it anyway"),
        Err(e) => tracing::warn!(error = %e, "cannot read the memory cgroup: watching it anyway"),
    }
    crate::shutdown::spawn_periodic(
        shared,
        EVERY,
        shared.shutdown_signal(),
        move |s: &Shared| {
            let reading = cgroup.read();
            watch_once(s, percent, reading);
        },
    );
}

/// One reading: updates the metrics, logs a change of state.
fn watch_once(shared: &Shared, percent: u64, reading: std::io::Result<Option<Usage>>) {
    let metrics = &shared.metrics;
    let was = metrics.memory_pressure();
    let Ok(reading) = reading else {
        return; // a transient read error keeps the last state
    };
    let Some(u) = reading else {
        metrics.set_memory(0, 0, false);
        if was {
            tracing::info!("memory limit removed: accepting new connections again");
        }
        return;
    };
    let now = if was {
        u.percent() + HYSTERESIS >= percent
    } else {
        u.percent() >= percent
    };
    metrics.set_memory(u.used, u.limit, now);
    match (was, now) {
        (false, true) => tracing::warn!(
            used = u.used,
            limit = u.limit,
            "memory pressure: {} % of the cgroup's limit in use (server.memory_pressure_percent = {percent}): refusing new connections with 4100 until it falls",
            u.percent()
        ),
        (true, false) => tracing::info!(
            used = u.used,
            limit = u.limit,
            "memory pressure over ({} % in use): accepting new connections again",
            u.percent()
        ),
        _ => {}
    }
}

/// What `/up` says about memory while under pressure.
pub(super) fn up_note(shared: &Shared) -> Option<String> {
    let m = &shared.metrics;
    m.memory_pressure().then(|| {
        let (used, limit) = m.memory();
        format!(
            "memory pressure: {used} of {limit} bytes of the cgroup's limit in use; new connections are refused with 4100 until it falls (server.memory_pressure_percent)"
        )
    })
}
