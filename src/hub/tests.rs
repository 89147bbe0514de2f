//! Hub tests: presence by user, occupancy events, fan-out, exclusion, caches, watchlists.

use super::*;
use crate::protocol::SocketId;
use std::sync::Mutex;

#[derive(Default)]
struct Recorder(Mutex<Vec<HubEvent>>);
impl HubObserver for Recorder {
    fn on_event(&self, _app: &AppConfig, event: HubEvent) {
        self.0.lock().unwrap().push(event);
    }
}
impl Recorder {
    fn take(&self) -> Vec<HubEvent> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn app(configure: impl FnOnce(&mut AppConfig)) -> (App, Arc<Recorder>) {
    let mut c = AppConfig::with_defaults("1", "key", "secret");
    configure(&mut c);
    let rec = Arc::new(Recorder::default());
    (App::new(c, rec.clone()), rec)
}

fn conn(n: u64) -> Arc<Outbox> {
    Arc::new(Outbox::new(
        n,
        SocketId::parse(&format!("{n}.{n}")).unwrap(),
        64,
    ))
}

fn frames(o: &Outbox) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    o.drain(&mut out);
    out.iter()
        .map(|f| serde_json::from_str(f.as_str()).unwrap())
        .collect()
}

fn member(id: &str) -> Option<Member> {
    Some(Member {
        user_id: id.into(),
        user_info: Some(format!("{{\"name\":\"{id}\"}}")),
    })
}

#[test]
fn presence_is_by_user_not_by_connection() {
    let (app, rec) = app(|_| {});
    let (a1, a2, b) = (conn(1), conn(2), conn(3));
    app.subscribe(&a1, "presence-room", member("alice"))
        .unwrap();
    let f = frames(&a1);
    assert_eq!(f[0]["event"], "pusher_internal:subscription_succeeded");
    let d: serde_json::Value = serde_json::from_str(f[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(d["presence"]["count"], 1);
    assert_eq!(d["presence"]["hash"]["alice"]["name"], "alice");
    assert_eq!(
        rec.take(),
        vec![
            HubEvent::ChannelOccupied {
                channel: "presence-room".into()
            },
            HubEvent::MemberAdded {
                channel: "presence-room".into(),
                user_id: "alice".into()
            },
        ]
    );

    app.subscribe(&b, "presence-room", member("bob")).unwrap();
    let fa = frames(&a1);
    assert_eq!(fa.len(), 1);
    assert_eq!(fa[0]["event"], "pusher_internal:member_added");
    frames(&b);

    // Alice's second tab: no member_added for anyone, count stays 2.
    app.subscribe(&a2, "presence-room", member("alice"))
        .unwrap();
    assert!(frames(&a1).is_empty());
    assert!(frames(&b).is_empty());
    let f = frames(&a2);
    let d: serde_json::Value = serde_json::from_str(f[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(d["presence"]["count"], 2);
    assert_eq!(d["presence"]["ids"], serde_json::json!(["alice", "bob"]));
    rec.take();

    // Repeated subscribe: answered again, no duplicate membership.
    app.subscribe(&a2, "presence-room", member("alice"))
        .unwrap();
    assert_eq!(frames(&a2).len(), 1);
    assert!(rec.take().is_empty());

    app.unsubscribe(&a1, "presence-room");
    assert!(frames(&b).is_empty(), "alice still has a tab open");
    app.remove_connection(&a2, &["presence-room".into()], None, &[]);
    let fb = frames(&b);
    assert_eq!(fb[0]["event"], "pusher_internal:member_removed");
    assert_eq!(
        rec.take(),
        vec![HubEvent::MemberRemoved {
            channel: "presence-room".into(),
            user_id: "alice".into()
        }]
    );
    assert_eq!(app.users("presence-room"), vec!["bob".to_string()]);
    app.unsubscribe(&b, "presence-room");
    assert!(app.channel("presence-room").is_none());
    assert_eq!(
        rec.take(),
        vec![
            HubEvent::MemberRemoved {
                channel: "presence-room".into(),
                user_id: "bob".into()
            },
            HubEvent::ChannelVacated {
                channel: "presence-room".into()
            },
        ]
    );
}

#[test]
fn member_limit() {
    let (app, _) = app(|c| c.max_presence_members = 1);
    let (a, a2, b) = (conn(1), conn(2), conn(3));
    app.subscribe(&a, "presence-x", member("a")).unwrap();
    app.subscribe(&a2, "presence-x", member("a")).unwrap();
    assert_eq!(
        app.subscribe(&b, "presence-x", member("b")),
        Err(SubscribeError::MemberLimit { max: 1 })
    );
    assert_eq!(app.channel("presence-x").unwrap().subscription_count, 2);
    let (app, _) = app_with_limit_zero();
    assert!(app.subscribe(&b, "presence-y", member("b")).is_err());
    assert!(
        app.channel("presence-y").is_none(),
        "a refused subscribe leaves no empty channel"
    );
}

fn app_with_limit_zero() -> (App, Arc<Recorder>) {
    app(|c| c.max_presence_members = 0)
}

#[test]
fn publish_shares_one_frame_and_honours_socket_exclusion() {
    let (app, _) = app(|_| {});
    let cs: Vec<_> = (1..=3).map(conn).collect();
    for c in &cs {
        app.subscribe(c, "orders", None).unwrap();
        frames(c);
    }
    let frame = Frame::from(message::frame(
        "created",
        Some("orders"),
        Some("{\"id\":1}"),
        None,
    ));
    assert_eq!(app.publish("orders", &frame, Some("2.2")), 2);
    assert_eq!(frames(&cs[0])[0]["data"], "{\"id\":1}");
    assert!(frames(&cs[1]).is_empty());
    assert_eq!(app.publish("nobody-here", &frame, None), 0);
}

#[test]
fn an_event_nobody_receives_is_not_serialised_unless_a_cache_channel_keeps_it() {
    let (app, _) = app(|_| {});
    let built = std::cell::Cell::new(0);
    let make = || {
        built.set(built.get() + 1);
        Frame::from(message::frame("e", Some("x"), Some("1"), None))
    };
    assert_eq!(app.publish_with("nobody-here", make, None), 0);
    assert_eq!(built.get(), 0, "no subscriber, no frame");
    assert_eq!(app.publish_with("cache-empty", make, None), 0);
    assert_eq!(
        built.get(),
        1,
        "a cache channel keeps the event for later subscribers"
    );
    let c = conn(1);
    app.subscribe(&c, "orders", None).unwrap();
    frames(&c);
    assert_eq!(app.publish_with("orders", make, None), 1);
    assert_eq!(built.get(), 2, "built once for the subscriber");
    assert_eq!(frames(&c)[0]["event"], "e");
}

#[test]
fn client_events_are_not_echoed() {
    let (app, rec) = app(|_| {});
    let (a, b) = (conn(1), conn(2));
    app.subscribe(&a, "private-chat", None).unwrap();
    app.subscribe(&b, "private-chat", None).unwrap();
    frames(&a);
    frames(&b);
    rec.take();
    assert_eq!(
        app.client_event(&a, "private-chat", "client-typing", Some("{}"), None),
        1
    );
    assert!(frames(&a).is_empty());
    assert_eq!(frames(&b)[0]["event"], "client-typing");
    assert!(
        matches!(&rec.take()[0], HubEvent::ClientEvent { socket_id, .. } if socket_id == "1.1")
    );
}

#[test]
fn cache_channels_replay_or_miss() {
    let (app, rec) = app(|_| {});
    let a = conn(1);
    app.subscribe(&a, "cache-prices", None).unwrap();
    let f = frames(&a);
    assert_eq!(f[1]["event"], "pusher:cache_miss");
    assert!(rec.take().contains(&HubEvent::CacheMiss {
        channel: "cache-prices".into()
    }));
    let frame = Frame::from(message::frame(
        "price",
        Some("cache-prices"),
        Some("42"),
        None,
    ));
    app.publish("cache-prices", &frame, None);
    let b = conn(2);
    app.subscribe(&b, "cache-prices", None).unwrap();
    let f = frames(&b);
    assert_eq!(f[1]["event"], "price");
    assert_eq!(f[1]["data"], "42");
    assert!(app.cached("cache-prices").is_some());
}

#[test]
fn subscription_count_when_enabled() {
    let (app, rec) = app(|c| c.subscription_count = true);
    let (a, b) = (conn(1), conn(2));
    app.subscribe(&a, "news", None).unwrap();
    app.subscribe(&b, "news", None).unwrap();
    let fa = frames(&a);
    let counts: Vec<_> = fa
        .iter()
        .filter(|f| f["event"] == "pusher_internal:subscription_count")
        .collect();
    assert_eq!(counts.len(), 2);
    assert_eq!(counts[1]["data"], "{\"subscription_count\":2}");
    assert!(rec.take().contains(&HubEvent::SubscriptionCount {
        channel: "news".into(),
        count: 2
    }));
    app.unsubscribe(&b, "news");
    assert_eq!(frames(&a)[0]["data"], "{\"subscription_count\":1}");
}

#[test]
fn signin_watchlist_and_terminate() {
    let (app, _) = app(|_| {});
    let (w, u1, u2) = (conn(1), conn(2), conn(3));
    app.signin(&w, "watcher", &["42".into(), "43".into()]);
    let f = frames(&w);
    let d: serde_json::Value = serde_json::from_str(f[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(
        d["events"][0],
        serde_json::json!({"name":"online","user_ids":[]})
    );
    app.signin(&u1, "42", &[]);
    let d: serde_json::Value =
        serde_json::from_str(frames(&w)[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(
        d["events"][0],
        serde_json::json!({"name":"online","user_ids":["42"]})
    );
    app.signin(&u2, "42", &[]);
    assert!(
        frames(&w).is_empty(),
        "second connection of 42: no new online"
    );
    app.remove_connection(&u1, &[], Some("42"), &[]);
    assert!(frames(&w).is_empty());
    assert_eq!(app.terminate_user("42"), 1);
    let mut out = Vec::new();
    assert_eq!(u2.drain(&mut out).unwrap().code, 4009);
    app.remove_connection(&u2, &[], Some("42"), &[]);
    let d: serde_json::Value =
        serde_json::from_str(frames(&w)[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(d["events"][0]["name"], "offline");
}

#[test]
fn connection_quota() {
    let (app, _) = app(|c| c.max_connections = 2);
    assert!(app.try_connect());
    assert!(app.try_connect());
    assert!(!app.try_connect());
    app.disconnected();
    assert!(app.try_connect());
}

/// Records which connection each direct write went to.
struct Order {
    conn: u64,
    log: Arc<Mutex<Vec<u64>>>,
}
impl DirectWrite for Order {
    fn try_write(&self, frames: &std::collections::VecDeque<Frame>) -> Wrote {
        self.log.lock().unwrap().push(self.conn);
        Wrote {
            frames: frames.len(),
            unfinished: false,
        }
    }
}

#[test]
fn fan_out_walks_subscribers_in_subscription_order_and_survives_unsubscribes() {
    let (app, _) = app(|_| {});
    let log = Arc::new(Mutex::new(Vec::new()));
    // Connection numbers out of any hash order; they subscribe in this order.
    let ids: Vec<u64> = (0..300u64).map(|i| (i * 7919) % 1000 + 1).collect();
    let cs: Vec<_> = ids
        .iter()
        .map(|&n| {
            let c = conn(n);
            app.subscribe(&c, "orders", None).unwrap();
            frames(&c);
            c.set_direct(Arc::new(Order {
                conn: n,
                log: log.clone(),
            }));
            // The transport has written what it took and goes idle: direct writes may go.
            let idle = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(c.poll_drain(&idle, |_| {}).is_pending());
            c
        })
        .collect();
    let frame = Frame::from(message::frame("created", Some("orders"), Some("{}"), None));
    assert_eq!(app.publish("orders", &frame, None), ids.len());
    assert_eq!(
        *log.lock().unwrap(),
        ids,
        "one write each, in subscription order"
    );
    // Unsubscribing one in the middle leaves every other subscriber written exactly once.
    app.unsubscribe(&cs[100], "orders");
    log.lock().unwrap().clear();
    assert_eq!(app.publish("orders", &frame, None), ids.len() - 1);
    let mut got = log.lock().unwrap().clone();
    got.sort_unstable();
    let mut want: Vec<u64> = ids.iter().copied().filter(|&n| n != ids[100]).collect();
    want.sort_unstable();
    assert_eq!(got, want);
}

/// A socket that notes, on every write, whether the app's lock was held, and the events it got.
#[derive(Default)]
struct LockProbe {
    app: std::sync::OnceLock<Arc<App>>,
    under_lock: std::sync::atomic::AtomicBool,
    events: Mutex<Vec<String>>,
}
impl DirectWrite for LockProbe {
    fn try_write(&self, frames: &std::collections::VecDeque<Frame>) -> Wrote {
        if self.app.get().unwrap().state.try_write().is_err() {
            self.under_lock.store(true, Ordering::SeqCst);
        }
        let mut events = self.events.lock().unwrap();
        for f in frames {
            let v: serde_json::Value = serde_json::from_str(f.as_str()).unwrap();
            events.push(v["event"].as_str().unwrap().to_owned());
        }
        Wrote {
            frames: frames.len(),
            ..Wrote::default()
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn no_socket_write_runs_under_the_apps_lock() {
    let (app, _) = app(|c| {
        c.subscription_count = true;
        c.watchlist = true;
    });
    let app = Arc::new(app);
    let probe = Arc::new(LockProbe::default());
    probe.app.set(app.clone()).ok();
    let a = conn(1);
    a.set_direct(probe.clone());
    let idle = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(a.poll_drain(&idle, |_| {}).is_pending());
    let b = conn(2);
    app.signin(&a, "alice", &["bob".to_owned()]);
    app.subscribe(&a, "presence-room", member("alice")).unwrap();
    app.subscribe(&a, "room", None).unwrap();
    tokio::task::yield_now().await;
    probe.events.lock().unwrap().clear();
    // Everything the others' comings and goings send to `a`.
    app.subscribe(&b, "presence-room", member("bob")).unwrap();
    app.subscribe(&b, "room", None).unwrap();
    app.signin(&b, "bob", &[]);
    app.remove_connection(
        &b,
        &["presence-room".into(), "room".into()],
        Some("bob"),
        &[],
    );
    assert!(
        probe.events.lock().unwrap().is_empty(),
        "deferred until the caller yields"
    );
    tokio::task::yield_now().await;
    assert_eq!(
        *probe.events.lock().unwrap(),
        [
            "pusher_internal:member_added",
            "pusher_internal:subscription_count",
            "pusher_internal:watchlist_events",
            "pusher_internal:member_removed",
            "pusher_internal:subscription_count",
            "pusher_internal:watchlist_events",
        ]
    );
    assert!(!probe.under_lock.load(Ordering::SeqCst));
}
