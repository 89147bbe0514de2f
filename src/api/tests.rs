//! API tests: signed requests against a real hub, status codes and JSON bodies.

use super::*;
use crate::config::AppConfig;
use crate::hub::{NoObserver, Outbox};
use crate::protocol::signing::sign_query;

const KEY: &str = "key";
const SECRET: &str = "secret";

fn setup(configure: impl FnOnce(&mut AppConfig)) -> (Api, Arc<Hub>) {
    let mut c = AppConfig::with_defaults("7", KEY, SECRET);
    configure(&mut c);
    let hub = Arc::new(Hub::new(vec![c], Arc::new(NoObserver)));
    (Api::new(hub.clone(), None), hub)
}

async fn call(
    api: &Api,
    method: &str,
    path: &str,
    body: &str,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let q = sign_query(
        method,
        path,
        KEY,
        SECRET,
        now_secs(),
        body.as_bytes(),
        extra,
    );
    let r = api
        .handle(ApiRequest {
            method,
            path,
            query: &q,
            body: body.as_bytes(),
        })
        .await;
    let v: Value = serde_json::from_str(&r.body).expect("every answer is JSON");
    assert!(v.is_object(), "every answer is a JSON object: {}", r.body);
    (r.status, v)
}

fn subscriber(hub: &Hub, n: u64, channel: &str) -> Arc<Outbox> {
    let app = hub.app_by_id("7").unwrap();
    let o = Arc::new(Outbox::new(
        n,
        SocketId::parse(&format!("{n}.{n}")).unwrap(),
        64,
    ));
    app.subscribe(&o, channel, None).unwrap();
    let mut v = Vec::new();
    o.drain(&mut v);
    o
}

fn received(o: &Outbox) -> Vec<Value> {
    let mut v = Vec::new();
    o.drain(&mut v);
    v.iter()
        .map(|f| serde_json::from_str(f.as_str()).unwrap())
        .collect()
}

#[tokio::test]
async fn trigger_with_channels_or_channel_and_exclusion() {
    let (api, hub) = setup(|_| {});
    let a = subscriber(&hub, 1, "orders");
    let b = subscriber(&hub, 2, "orders");
    let (s, v) = call(
        &api,
        "POST",
        "/apps/7/events",
        r#"{"name":"created","channels":["orders"],"data":"{\"id\":1}"}"#,
        &[],
    )
    .await;
    assert_eq!((s, v), (200, json!({})));
    assert_eq!(received(&a)[0]["data"], "{\"id\":1}");
    received(&b);
    // PHP SDK ≥ 7.2: single `channel`; Laravel's toOthers(): socket_id
    let body = r#"{"name":"App\\Events\\MarketplaceSyncProgress","channel":"orders","data":"{\"progress\":50}","socket_id":"1.1"}"#;
    let (s, _) = call(&api, "POST", "/apps/7/events", body, &[]).await;
    assert_eq!(s, 200);
    assert!(received(&a).is_empty());
    let f = received(&b);
    assert_eq!(f[0]["event"], "App\\Events\\MarketplaceSyncProgress");
    assert_eq!(f[0]["data"], "{\"progress\":50}");
    // data as a JSON value is accepted and relayed as its JSON text
    let (s, _) = call(
        &api,
        "POST",
        "/apps/7/events",
        r#"{"name":"x","channel":"orders","data":{"a":1}}"#,
        &[],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(received(&b)[0]["data"], "{\"a\":1}");
}

#[tokio::test]
async fn trigger_info_and_batch() {
    let (api, hub) = setup(|_| {});
    let _a = subscriber(&hub, 1, "orders");
    let (s, v) = call(&api, "POST", "/apps/7/events", r#"{"name":"e","channels":["orders","empty"],"data":"x","info":"subscription_count,user_count"}"#, &[]).await;
    assert_eq!(s, 200);
    assert_eq!(
        v,
        json!({"channels":{"orders":{"subscription_count":1},"empty":{"subscription_count":0}}})
    );
    let body = r#"{"batch":[{"channel":"orders","name":"a","data":"1"},{"channel":"presence-x","name":"b","data":"2","info":"user_count"}]}"#;
    let (s, v) = call(&api, "POST", "/apps/7/batch_events", body, &[]).await;
    assert_eq!(s, 200);
    assert_eq!(v, json!({"batch":[{}, {"user_count":0}]}));
    let (s, v) = call(
        &api,
        "POST",
        "/apps/7/batch_events",
        r#"{"batch":[{"channel":"orders","name":"a","data":"1"}]}"#,
        &[],
    )
    .await;
    assert_eq!((s, v), (200, json!({})));
}

#[tokio::test]
async fn limits_and_bad_bodies() {
    let (api, hub) = setup(|c| c.max_batch_events = 2);
    let a = subscriber(&hub, 1, "orders");
    let big = format!(
        r#"{{"name":"e","channel":"orders","data":"{}"}}"#,
        "x".repeat(10 * 1024 + 1)
    );
    assert_eq!(call(&api, "POST", "/apps/7/events", &big, &[]).await.0, 413);
    let chans: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    let many = json!({"name":"e","channels":chans,"data":"x"}).to_string();
    assert_eq!(
        call(&api, "POST", "/apps/7/events", &many, &[]).await.0,
        400
    );
    for bad in [
        "not json",
        "[]",
        r#"{"channels":["a"],"data":"x"}"#,
        r#"{"name":"e","data":"x"}"#,
        r#"{"name":"e","channels":[],"data":"x"}"#,
        r#"{"name":"e","channels":["a"]}"#,
        r#"{"name":"e","channels":["bad name"],"data":"x"}"#,
        r#"{"name":"e","channels":["a"],"data":"x","socket_id":"nope"}"#,
        r#"{"name":"e","channels":"a","data":"x"}"#,
    ] {
        let (s, v) = call(&api, "POST", "/apps/7/events", bad, &[]).await;
        assert_eq!(s, 400, "{bad}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    // a batch is validated whole before anything is delivered
    let body =
        r#"{"batch":[{"channel":"orders","name":"a","data":"1"},{"channel":"orders","data":"2"}]}"#;
    let (s, v) = call(&api, "POST", "/apps/7/batch_events", body, &[]).await;
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().starts_with("batch[1]"));
    assert!(received(&a).is_empty());
    let body = r#"{"batch":[{"channel":"a","name":"a","data":"1"},{"channel":"a","name":"a","data":"1"},{"channel":"a","name":"a","data":"1"}]}"#;
    assert_eq!(
        call(&api, "POST", "/apps/7/batch_events", body, &[])
            .await
            .0,
        400
    );
    assert_eq!(
        call(&api, "POST", "/apps/7/batch_events", "{}", &[])
            .await
            .0,
        400
    );
}

#[tokio::test]
async fn signing_failures_and_routing() {
    let (api, _hub) = setup(|_| {});
    let body = r#"{"name":"e","channel":"a","data":"x"}"#;
    let q = sign_query(
        "POST",
        "/apps/7/events",
        KEY,
        "wrong-secret",
        now_secs(),
        body.as_bytes(),
        &[],
    );
    let r = api
        .handle(ApiRequest {
            method: "POST",
            path: "/apps/7/events",
            query: &q,
            body: body.as_bytes(),
        })
        .await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("Invalid signature"));
    let q = sign_query(
        "POST",
        "/apps/7/events",
        KEY,
        SECRET,
        now_secs() - 601,
        body.as_bytes(),
        &[],
    );
    let r = api
        .handle(ApiRequest {
            method: "POST",
            path: "/apps/7/events",
            query: &q,
            body: body.as_bytes(),
        })
        .await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("Timestamp expired"));
    let r = api
        .handle(ApiRequest {
            method: "POST",
            path: "/apps/8/events",
            query: "",
            body: b"",
        })
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(call(&api, "GET", "/apps/7/nope", "", &[]).await.0, 404);
    assert_eq!(call(&api, "DELETE", "/apps/7/events", "", &[]).await.0, 405);
    // More segments than any endpoint has: still a clear 404, never a shorter route's match.
    assert_eq!(
        call(
            &api,
            "POST",
            "/apps/7/users/u/terminate_connections/x/y/z",
            "",
            &[]
        )
        .await
        .0,
        404
    );
    assert_eq!(
        call(&api, "GET", "/apps/7/channels/a/users/b/c/d", "", &[])
            .await
            .0,
        405
    );
    let (api, _) = setup(|c| c.enabled = false);
    assert_eq!(call(&api, "POST", "/apps/7/events", body, &[]).await.0, 403);
}

#[tokio::test]
async fn channel_queries() {
    let (api, hub) = setup(|_| {});
    let _a = subscriber(&hub, 1, "orders");
    let app = hub.app_by_id("7").unwrap();
    let p = Arc::new(Outbox::new(5, SocketId::parse("5.5").unwrap(), 64));
    app.subscribe(
        &p,
        "presence-room",
        Some(crate::hub::Member {
            user_id: "10".into(),
            user_info: None,
        }),
    )
    .unwrap();
    let (s, v) = call(&api, "GET", "/apps/7/channels", "", &[]).await;
    assert_eq!(
        (s, v),
        (200, json!({"channels":{"orders":{},"presence-room":{}}}))
    );
    let (s, v) = call(
        &api,
        "GET",
        "/apps/7/channels",
        "",
        &[("filter_by_prefix", "presence-"), ("info", "user_count")],
    )
    .await;
    assert_eq!(
        (s, v),
        (200, json!({"channels":{"presence-room":{"user_count":1}}}))
    );
    assert_eq!(
        call(
            &api,
            "GET",
            "/apps/7/channels",
            "",
            &[("info", "user_count")]
        )
        .await
        .0,
        400
    );
    let (_, v) = call(
        &api,
        "GET",
        "/apps/7/channels",
        "",
        &[("info", "subscription_count")],
    )
    .await;
    assert_eq!(v["channels"]["orders"]["subscription_count"], 1);
    let (s, v) = call(
        &api,
        "GET",
        "/apps/7/channels/presence-room",
        "",
        &[("info", "user_count,subscription_count")],
    )
    .await;
    assert_eq!(
        (s, v),
        (
            200,
            json!({"occupied":true,"user_count":1,"subscription_count":1})
        )
    );
    let (_, v) = call(&api, "GET", "/apps/7/channels/empty", "", &[]).await;
    assert_eq!(v, json!({"occupied":false}));
    assert_eq!(
        call(
            &api,
            "GET",
            "/apps/7/channels/orders",
            "",
            &[("info", "user_count")]
        )
        .await
        .0,
        400
    );
    let (s, v) = call(&api, "GET", "/apps/7/channels/presence-room/users", "", &[]).await;
    assert_eq!((s, v), (200, json!({"users":[{"id":"10"}]})));
    assert_eq!(
        call(&api, "GET", "/apps/7/channels/orders/users", "", &[])
            .await
            .0,
        400
    );
    let (s, v) = call(
        &api,
        "POST",
        "/apps/7/users/10/terminate_connections",
        "{}",
        &[],
    )
    .await;
    assert_eq!((s, v), (200, json!({})));
}

#[tokio::test]
async fn errors_keep_their_status_and_exact_message() {
    let (api, _hub) = setup(|c| c.max_event_data_bytes = 4);
    // A refused event inside a batch keeps that event's status and names its index.
    let body = r#"{"batch":[{"channel":"a","name":"a","data":"1"},{"channel":"a","name":"a","data":"12345"}]}"#;
    let (s, v) = call(&api, "POST", "/apps/7/batch_events", body, &[]).await;
    assert_eq!(s, 413);
    assert_eq!(
        v["error"],
        "batch[1]: Event data too large: 5 bytes, the limit is 4 (max_event_data_bytes)"
    );
    let r = ApiResponse::from(ApiError::MissingBatch);
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            400,
            r#"{"error":"Missing \"batch\": expected {\"batch\":[{\"channel\":…,\"name\":…,\"data\":…}]}"}"#
        )
    );
    let r = ApiResponse::from(ApiError::NotApiPath);
    assert_eq!(
        r.body,
        r#"{"error":"Not found: HTTP API paths start with /apps/{app_id}/"}"#
    );
    let r = ApiResponse::from(ApiError::BodyTooLarge { max: 10 });
    assert_eq!(r.status, 413);
    assert!(r.body.contains("server.max_request_bytes"));
}

/// An event log that is full, refuses (a full disk), or whose writes fail, as the spool's can.
#[derive(Clone, Copy, PartialEq)]
enum Failure {
    Cap,
    DiskFull,
    WriteFails,
}

struct FailingLog(Failure);

const LOG_DIR: &str = "/var/lib/pushbox/events";

impl EventLog for FailingLog {
    fn check_capacity(&self, _: &[AcceptedEvent]) -> Result<super::Room, AppendError> {
        match self.0 {
            Failure::Cap => Err(AppendError::Full {
                dir: LOG_DIR.into(),
                used_bytes: 10,
                max_bytes: 10,
            }),
            Failure::DiskFull => Err(AppendError::Refused(crate::spool::SpoolError::DiskFull {
                path: LOG_DIR.into(),
                source: std::io::Error::from_raw_os_error(28),
            })),
            Failure::WriteFails => Ok(super::Room::default()),
        }
    }

    fn append(&self, _: Vec<AcceptedEvent>) -> super::LogFuture<'_> {
        Box::pin(async {
            Err(AppendError::NotDurable(crate::spool::SpoolError::Closed {
                dir: LOG_DIR.into(),
            }))
        })
    }
}

#[tokio::test]
async fn event_log_failures_answer_503() {
    for (failure, subscribed) in [
        (Failure::Cap, true),
        (Failure::DiskFull, true),
        (Failure::WriteFails, true),
        (Failure::WriteFails, false),
    ] {
        let c = AppConfig::with_defaults("7", KEY, SECRET);
        let hub = Arc::new(Hub::new(vec![c], Arc::new(NoObserver)));
        let channel = if subscribed { "orders" } else { "nobody" };
        let sub = subscriber(&hub, 1, "orders");
        let api = Api::new(hub, Some(Arc::new(FailingLog(failure))));
        let body = format!(r#"{{"name":"e","channel":"{channel}","data":"x"}}"#);
        let (s, v) = call(&api, "POST", "/apps/7/events", &body, &[]).await;
        assert_eq!(s, 503);
        let msg = v["error"].as_str().unwrap();
        match failure {
            Failure::Cap => {
                assert!(
                    msg.starts_with("The event log is full (10 of 10 bytes"),
                    "{msg}"
                );
                assert!(msg.ends_with("nothing was published"), "{msg}");
            }
            Failure::DiskFull => {
                assert!(msg.contains("Free space"), "{msg}");
                assert!(
                    msg.ends_with("The event was not stored and not delivered to anyone: send it again once that is fixed"),
                    "{msg}"
                );
            }
            Failure::WriteFails if subscribed => assert!(
                msg.ends_with("It was already delivered to 1 live connection(s): sending it again delivers it to them twice"),
                "{msg}"
            ),
            Failure::WriteFails => assert!(
                msg.ends_with("It reached no live connection: sending it again is safe"),
                "{msg}"
            ),
        }
        let delivered = received(&sub).len();
        match failure {
            Failure::WriteFails if subscribed => {
                assert_eq!(delivered, 1, "delivered before the log failed")
            }
            _ => assert_eq!(delivered, 0, "refused before delivery"),
        }
    }
}
