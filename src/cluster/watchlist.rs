//! Watchlists across the cluster: a signed-in connection that watches users gets, as on one
//! box, the current `online` / `offline` state of its watchlist right after its signin, then
//! every `online` (a watched user's first signed-in connection anywhere) and `offline` (the
//! last one anywhere gone, a dead node's included) exactly once.
//!
//! The SIGNIN script (`scripts`, watchlist section) decides the transitions and answers the
//! watchlist's state with the bus id it is consistent with (the gate), as SUBSCRIBE does for a
//! channel. The deliverer attaches the watcher to the hub only once it has passed the gate: the
//! state first, then the `on`/`off` entries after the gate it already delivered to others (from
//! its ring), then live ones. So a watcher sees no transition twice and misses none, in the
//! bus's order.

use std::collections::VecDeque;
use std::sync::Arc;

use super::bus::{Entry, Kind, StreamId};
use crate::hub::{App, Outbox};
use crate::protocol::{message, CloseCode, Frame};

/// A watcher to attach once the deliverer reaches `gate`.
pub struct WatchJoin {
    pub outbox: Arc<Outbox>,
    /// The watchlist as the signin gave it.
    pub watchlist: Vec<String>,
    pub gate: StreamId,
    /// `pusher_internal:watchlist_events` with the state at `gate`.
    pub first: Frame,
}

/// The initial `watchlist_events` frame for `watchlist`, `online` being the watched users the
/// SIGNIN script found signed in: the same frame one box sends (online always, offline when
/// some are, in the watchlist's order).
pub fn initial_frame(watchlist: &[String], online: &[String]) -> Frame {
    let (on, off): (Vec<String>, Vec<String>) =
        watchlist.iter().cloned().partition(|w| online.contains(w));
    let mut evs = vec![("online", on)];
    if !off.is_empty() {
        evs.push(("offline", off));
    }
    Frame::from(message::watchlist_events(&evs))
}

/// The frame of an `on`/`off` entry for the watchers of its user.
fn event_frame(user: &str, online: bool) -> Frame {
    let name = if online { "online" } else { "offline" };
    Frame::from(message::watchlist_events(&[(name, vec![user.to_owned()])]))
}

/// Attaches `join` now that the deliverer is past its gate: its state, the watchlist's
/// entries in `ring` after the gate, then the hub's live deliveries. A gate older than the
/// ring (`floor`) closes the connection with 4200: pusher-js reconnects and signs in again.
pub fn activate(app: &App, join: WatchJoin, ring: &VecDeque<Arc<Entry>>, floor: StreamId) {
    if join.outbox.is_closing() {
        return;
    }
    if join.gate < floor {
        join.outbox.close(
            CloseCode::ReconnectNow.code(),
            "This node fell behind the cluster: reconnect",
            false,
        );
        return;
    }
    app.deliver_to(&join.outbox, join.first);
    for e in ring.iter().filter(|e| e.id > join.gate) {
        if let Kind::Watch { user, online } = &e.kind {
            if join.watchlist.contains(user) {
                app.deliver_to(&join.outbox, event_frame(user, *online));
            }
        }
    }
    app.watch_attach(&join.outbox, &join.watchlist);
}

/// The distinct users of `watchlist`, in order (what the script counts: a user listed twice
/// is watched once by this connection).
pub fn distinct(watchlist: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(watchlist.len());
    for w in watchlist {
        if !out.contains(w) {
            out.push(w.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AppConfig;
    use crate::hub::NoObserver;
    use crate::protocol::SocketId;

    fn events(f: &Frame) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(f.as_str()).unwrap();
        assert_eq!(v["event"], "pusher_internal:watchlist_events");
        let d: serde_json::Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        d["events"].clone()
    }

    #[test]
    fn the_initial_frame_is_the_one_a_single_box_sends() {
        let wl: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let f = initial_frame(&wl, &["c".into(), "a".into()]);
        assert_eq!(
            events(&f),
            serde_json::json!([
                {"name": "online", "user_ids": ["a", "c"]},
                {"name": "offline", "user_ids": ["b"]}
            ])
        );
        // Everyone online: no offline item; nobody: an empty online item, as on one box.
        let f = initial_frame(&wl[..1], &["a".into()]);
        assert_eq!(
            events(&f),
            serde_json::json!([{"name": "online", "user_ids": ["a"]}])
        );
        let f = initial_frame(&wl[..1], &[]);
        assert_eq!(
            events(&f),
            serde_json::json!([
                {"name": "online", "user_ids": []},
                {"name": "offline", "user_ids": ["a"]}
            ])
        );
        assert_eq!(distinct(&["x".into(), "y".into(), "x".into()]), ["x", "y"]);
    }

    #[test]
    fn a_watcher_gets_its_state_then_exactly_the_entries_after_its_gate_then_live_ones() {
        let app = App::new(
            AppConfig::with_defaults("1", "k", "s"),
            Arc::new(NoObserver),
        );
        let id = |ms| StreamId { ms, seq: 0 };
        let watch = |ms, user: &str, online| {
            Arc::new(Entry {
                id: id(ms),
                kind: Kind::Watch {
                    user: user.into(),
                    online,
                },
            })
        };
        let ring: VecDeque<Arc<Entry>> = [
            watch(5, "u", true),
            watch(6, "u", false),
            watch(7, "v", true),
            watch(8, "u", true),
        ]
        .into();
        let o = Arc::new(Outbox::new(1, SocketId::parse("1.1").unwrap(), 64));
        let join = WatchJoin {
            outbox: o.clone(),
            watchlist: vec!["u".into()],
            gate: id(6),
            first: initial_frame(&["u".into()], &[]),
        };
        activate(&app, join, &ring, id(2));
        assert_eq!(app.watch_event("u", false), 1);
        assert_eq!(app.watch_event("v", true), 0);
        let mut frames = Vec::new();
        o.drain(&mut frames);
        let got: Vec<serde_json::Value> = frames.iter().map(events).collect();
        assert_eq!(
            got,
            [
                serde_json::json!([{"name":"online","user_ids":[]},{"name":"offline","user_ids":["u"]}]),
                serde_json::json!([{"name":"online","user_ids":["u"]}]),
                serde_json::json!([{"name":"offline","user_ids":["u"]}]),
            ]
        );
    }

    #[test]
    fn a_gate_older_than_the_ring_closes_with_4200() {
        let app = App::new(
            AppConfig::with_defaults("1", "k", "s"),
            Arc::new(NoObserver),
        );
        let o = Arc::new(Outbox::new(1, SocketId::parse("1.1").unwrap(), 64));
        let join = WatchJoin {
            outbox: o.clone(),
            watchlist: vec!["u".into()],
            gate: StreamId { ms: 1, seq: 0 },
            first: initial_frame(&["u".into()], &[]),
        };
        activate(&app, join, &VecDeque::new(), StreamId { ms: 3, seq: 0 });
        let mut frames = Vec::new();
        assert_eq!(o.drain(&mut frames).map(|c| c.code), Some(4200));
        assert!(frames.is_empty());
        assert_eq!(app.watch_event("u", true), 0);
    }
}
