//! Resume across a graceful restart: at start-up, the state file the last shutdown left
//! (`resume::persist`) gives each app its last position and the lineages still within the
//! window, and the event log's tail gives back the events those lineages may miss (each record
//! carries its positions); at shutdown, once every connection has ended, the lineages are
//! written for the next start. Failures are logged, never fatal: resume is a convenience.

use std::collections::HashMap;
use std::path::Path;

use crate::eventlog::{EventLog, EventRecord};
use crate::hub::Hub;
use crate::protocol::{message, Frame};
use crate::resume::{self, persist, Entry};
use crate::spool::Spool;

/// Records read per batch from the event log's tail.
const BATCH: usize = 1000;

/// Restores every app's resume state (call before serving).
pub(super) fn load(hub: &Hub, state_dir: &Path, eventlog: &EventLog) {
    let Some(window) = hub
        .apps()
        .iter()
        .find_map(|a| a.resume())
        .map(|r| r.caps().window)
    else {
        return;
    };
    let mut lineages = 0;
    match persist::take(state_dir) {
        Ok(Some(file)) => {
            for (id, state) in file.apps {
                if let Some(r) = hub.app_by_id(&id).and_then(|a| a.resume()) {
                    lineages += r.restore(state);
                }
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "resume state not loaded"),
    }
    // Lineages live up to twice the window after their connection ended, and their watermark
    // may be a little older still: reading three windows back puts every event they may ask
    // for in the rings (the index itself refuses what is older than the window), so a channel
    // that simply had no events is not taken for one whose events are gone.
    let since = resume::now_ms().saturating_sub(3 * window.as_millis() as u64);
    match read_tail(eventlog.spool(), since) {
        Ok(records) => {
            let events = records.len();
            restore_events(hub, records);
            if lineages > 0 || events > 0 {
                tracing::info!(lineages, events, "resume: state of the last run restored");
            }
        }
        Err(e) => tracing::warn!(error = %e, "resume: the event log's recent events not read"),
    }
}

/// The event log's records committed at or after `since_ms` (unix ms), oldest first.
fn read_tail(spool: &Spool, since_ms: u64) -> Result<Vec<(u64, EventRecord)>, String> {
    let stats = spool.stats();
    let Some(first) = stats.first_seq else {
        return Ok(Vec::new());
    };
    // The first record at or after `since_ms`: records are in commit order.
    let (mut lo, mut hi) = (first, stats.last_seq + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let r = spool.read_from(mid, 1).map_err(|e| e.to_string())?;
        match r.first() {
            Some(r) if r.timestamp_ms < since_ms => lo = r.seq + 1,
            _ => hi = mid,
        }
    }
    let mut out = Vec::new();
    let mut next = lo;
    loop {
        let batch = spool.read_from(next, BATCH).map_err(|e| e.to_string())?;
        let Some(last) = batch.last().map(|r| r.seq) else {
            break;
        };
        for r in batch {
            // Records of older versions (or resume off) carry no positions: nothing to restore.
            if let Ok(rec) = serde_json::from_slice::<EventRecord>(&r.payload) {
                if !rec.positions.is_empty() {
                    out.push((r.timestamp_ms, rec));
                }
            }
        }
        next = last + 1;
    }
    Ok(out)
}

/// One app's events read back: the first position found, and (channel, event) pairs.
type Restored = (Option<u64>, Vec<(String, Entry)>);

/// Hands each app its events back, with the first position found for it.
fn restore_events(hub: &Hub, records: Vec<(u64, EventRecord)>) {
    let mut per_app: HashMap<String, Restored> = HashMap::new();
    for (at_ms, rec) in records {
        let (first, events) = per_app.entry(rec.app.clone()).or_default();
        for (channel, &pos) in rec.channels.iter().zip(&rec.positions) {
            if pos == 0 {
                continue;
            }
            *first = Some(first.map_or(pos, |f: u64| f.min(pos)));
            let frame = Frame::from(message::frame(
                &rec.name,
                Some(channel),
                Some(&rec.data),
                None,
            ));
            events.push((
                channel.clone(),
                Entry {
                    pos,
                    at_ms,
                    except: rec.socket_id.as_deref().map(Into::into),
                    frame,
                },
            ));
        }
    }
    for (id, (first, mut events)) in per_app {
        if let Some(r) = hub.app_by_id(&id).and_then(|a| a.resume()) {
            events.sort_by_key(|(_, e)| e.pos);
            r.restore_events(first, events);
        }
    }
}

/// Writes every app's lineages for the next start (call once every connection has ended).
pub(super) fn save(hub: &Hub, state_dir: &Path) {
    let mut file = persist::StateFile {
        version: 1,
        saved_ms: resume::now_ms(),
        apps: HashMap::new(),
    };
    for app in hub.apps() {
        if let Some(r) = app.resume() {
            file.apps.insert(app.config.id.clone(), r.snapshot());
        }
    }
    if file.apps.is_empty() {
        return;
    }
    let lineages: usize = file.apps.values().map(|a| a.lineages.len()).sum();
    match persist::save(state_dir, &file) {
        Ok(()) => tracing::info!(lineages, "resume: state saved for the next start"),
        Err(e) => {
            tracing::warn!(error = %e, "resume: state not saved; clients will not resume after this restart")
        }
    }
}
