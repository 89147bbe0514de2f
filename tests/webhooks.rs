//! Webhooks end to end on 127.0.0.1: a raw TCP (and TLS) receiver (`common::webhook`) records
//! exactly what went over the wire; the service runs on a real state directory (spool files on
//! disk).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use pushbox::config::{AppConfig, Config};
use pushbox::hub::{HubEvent, HubObserver};
use pushbox::protocol::auth::sign;
use pushbox::webhooks::requeue::{self, Request, Retried};
use pushbox::webhooks::Webhooks;

use common::webhook::{Hit, Receiver};
use common::{APP_ID as APP, KEY, SECRET};

// ---------------------------------------------------------------- config and helpers

/// A config loaded from a real TOML file in `dir` (the state directory is `dir/state`).
/// `targets`: (url, event_types).
fn config(dir: &Path, targets: &[(&str, &[&str])], extra_webhooks: &str) -> Config {
    let mut toml = format!(
        "state_dir = {:?}\n[webhooks]\nbatch_ms = 20\nbackoff_initial_ms = 50\nbackoff_max_ms = 200\n{extra_webhooks}\n[[apps]]\nid = \"{APP}\"\nkey = \"{KEY}\"\nsecret = \"{SECRET}\"\n",
        dir.join("state").display().to_string()
    );
    for (url, kinds) in targets {
        let kinds: Vec<String> = kinds.iter().map(|k| format!("{k:?}")).collect();
        toml.push_str(&format!(
            "[[apps.webhooks]]\nurl = {url:?}\nevent_types = [{}]\n",
            kinds.join(", ")
        ));
    }
    let path = dir.join("pushbox.toml");
    std::fs::write(&path, toml).unwrap();
    pushbox::config::load(Some(&path), &HashMap::<String, String>::new()).expect("config loads")
}

fn app(cfg: &Config) -> AppConfig {
    cfg.apps[0].clone()
}

fn occupied(ch: &str) -> HubEvent {
    HubEvent::ChannelOccupied { channel: ch.into() }
}

async fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_signed(h: &Hit) {
    assert_eq!(
        h.header("X-Pusher-Signature").as_deref(),
        Some(sign(SECRET, &h.body).as_str()),
        "signature over the exact body bytes"
    );
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn body_headers_and_signature_on_the_wire() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &[(&rx.url("http", "/pusher/webhook?x=1"), &[])],
        "",
    );
    let wh = Webhooks::start(&cfg).unwrap();
    let a = app(&cfg);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    wh.on_event(&a, occupied("presence-room"));
    wh.on_event(
        &a,
        HubEvent::ClientEvent {
            channel: "presence-room".into(),
            event: "client-typing".into(),
            data: Some("{\"t\":1}".into()),
            socket_id: "123.456".into(),
            user_id: Some("u1".into()),
        },
    );
    wh.on_event(
        &a,
        HubEvent::ClientEvent {
            channel: "private-x".into(),
            event: "client-y".into(),
            data: Some("\"s\"".into()),
            socket_id: "1.2".into(),
            user_id: Some("u1".into()),
        },
    );
    let hits = rx.wait_hits(1, Duration::from_secs(5)).await;
    let h = &hits[0];
    // Exact title case on the wire (PHP reads these array keys verbatim).
    assert!(
        h.head.starts_with("POST /pusher/webhook?x=1 HTTP/1.1\r\n"),
        "{}",
        h.head
    );
    assert!(
        h.head.contains("\r\nContent-Type: application/json\r\n"),
        "{}",
        h.head
    );
    assert!(
        h.head.contains(&format!("\r\nX-Pusher-Key: {KEY}\r\n")),
        "{}",
        h.head
    );
    assert!(h.head.contains("\r\nX-Pusher-Signature: "), "{}", h.head);
    assert!(h.head.contains("\r\nX-Pushbox-Batch-Id: "), "{}", h.head);
    assert!(
        h.head.contains(&format!("\r\nHost: {}\r\n", rx.addr)),
        "{}",
        h.head
    );
    assert!(
        !h.head.contains("x-pusher"),
        "lowercase header names: {}",
        h.head
    );
    assert_signed(h);
    let v = h.json();
    let time_ms = v["time_ms"].as_u64().expect("time_ms number");
    assert!(time_ms >= before && time_ms < before + 5000);
    assert_eq!(
        v["events"],
        serde_json::json!([
            {"name":"channel_occupied","channel":"presence-room"},
            {"name":"client_event","channel":"presence-room","event":"client-typing",
             "data":"{\"t\":1}","socket_id":"123.456","user_id":"u1"},
            {"name":"client_event","channel":"private-x","event":"client-y",
             "data":"\"s\"","socket_id":"1.2"},
        ])
    );
    wait_for("delivered stat", Duration::from_secs(2), || {
        wh.stats().delivered == 1
    })
    .await;
    let s = wh.stats();
    assert_eq!(s.queue_depth, 0);
    assert_eq!(s.oldest_pending_age_ms, None);
    wh.shutdown().await;
}

#[tokio::test]
async fn batching_and_event_type_filters() {
    let all = Receiver::start().await;
    let occ = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &[
            (&all.url("http", "/all"), &[]),
            (&occ.url("http", "/occ"), &["channel_occupied"]),
        ],
        "batch_max_events = 3\n",
    );
    let mut cfg = cfg;
    cfg.webhooks.batch_window = Duration::from_millis(300);
    let wh = Webhooks::start(&cfg).unwrap();
    let a = app(&cfg);
    wh.on_event(&a, occupied("a"));
    wh.on_event(
        &a,
        HubEvent::ChannelVacated {
            channel: "a".into(),
        },
    );
    wh.on_event(&a, occupied("b"));
    wh.on_event(
        &a,
        HubEvent::SubscriptionCount {
            channel: "b".into(),
            count: 2,
        },
    );
    wh.on_event(
        &a,
        HubEvent::MemberAdded {
            channel: "presence-c".into(),
            user_id: "7".into(),
        },
    );
    // The first three fill a batch at once; the other two wait for the window.
    let hits = all.wait_hits(1, Duration::from_millis(250)).await;
    assert_eq!(
        hits[0].names(),
        ["channel_occupied", "channel_vacated", "channel_occupied"]
    );
    let hits = all.wait_hits(2, Duration::from_secs(3)).await;
    assert_eq!(hits[1].names(), ["subscription_count", "member_added"]);
    assert_ne!(
        hits[0].header("X-Pushbox-Batch-Id"),
        hits[1].header("X-Pushbox-Batch-Id")
    );
    // The filtered receiver gets only its kind, signed over its own (filtered) body.
    let o = occ.wait_hits(1, Duration::from_secs(3)).await;
    assert_eq!(o[0].names(), ["channel_occupied", "channel_occupied"]);
    for h in hits.iter().chain(o.iter()) {
        assert_signed(h);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(all.hits().len(), 2);
    assert_eq!(occ.hits().len(), 1);
    wh.shutdown().await;
}

#[tokio::test]
async fn retries_after_500_with_the_same_batch() {
    let rx = Receiver::start().await;
    rx.script.lock().unwrap().extend([500, 503]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &[(&rx.url("http", "/h"), &[])], "");
    let wh = Webhooks::start(&cfg).unwrap();
    wh.on_event(&app(&cfg), occupied("r"));
    let hits = rx.wait_hits(3, Duration::from_secs(5)).await;
    for h in &hits {
        assert_eq!(
            h.body, hits[0].body,
            "same bytes (and time_ms) on every retry"
        );
        assert_eq!(
            h.header("X-Pushbox-Batch-Id"),
            hits[0].header("X-Pushbox-Batch-Id")
        );
        assert_signed(h);
    }
    wait_for("delivered", Duration::from_secs(2), || {
        wh.stats().delivered == 1
    })
    .await;
    let s = wh.stats();
    assert_eq!(s.failed_attempts, 2);
    assert_eq!(s.dead_letters, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.hits().len(), 3, "nothing sent after the 2xx");
    wh.shutdown().await;
}

#[tokio::test]
async fn receiver_down_then_up() {
    // A port with nobody listening (bound, then released).
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &[(&format!("http://{addr}/h"), &[])], "");
    let wh = Webhooks::start(&cfg).unwrap();
    wh.on_event(&app(&cfg), occupied("d"));
    wait_for("failed attempts", Duration::from_secs(5), || {
        wh.stats().failed_attempts >= 2
    })
    .await;
    let s = wh.stats();
    assert_eq!(s.queue_depth, 1);
    assert!(s.oldest_pending_age_ms.is_some());
    assert_eq!(s.in_flight, 1);
    let rx = Receiver::start_on(TcpListener::bind(addr).await.unwrap(), None).await;
    let hits = rx.wait_hits(1, Duration::from_secs(5)).await;
    assert_eq!(hits[0].names(), ["channel_occupied"]);
    wait_for("delivered", Duration::from_secs(2), || {
        wh.stats().delivered == 1
    })
    .await;
    wh.shutdown().await;
}

#[tokio::test]
async fn a_hanging_receiver_does_not_hold_up_another() {
    let slow = Receiver::start().await;
    slow.hang.store(true, Ordering::SeqCst);
    let fast = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(
        dir.path(),
        &[
            (&slow.url("http", "/slow"), &[]),
            (&fast.url("http", "/fast"), &[]),
        ],
        "",
    );
    cfg.webhooks.timeout = Duration::from_millis(10_000);
    let wh = Webhooks::start(&cfg).unwrap();
    let a = app(&cfg);
    wh.on_event(&a, occupied("one"));
    slow.wait_hits(1, Duration::from_secs(3)).await;
    // The slow lane is stuck in its first request; the fast lane keeps going.
    for i in 0..3 {
        wh.on_event(&a, occupied(&format!("more-{i}")));
        fast.wait_hits(i + 2, Duration::from_secs(3)).await;
    }
    assert_eq!(slow.hits().len(), 1, "one request at a time per receiver");
    wh.shutdown().await;
}

#[tokio::test]
async fn dead_letters_and_requeue_through_a_running_server() {
    let rx = Receiver::start().await;
    rx.default.store(500, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &[(&rx.url("http", "/h"), &[])],
        "max_age_secs = 1\n",
    );
    let wh = Webhooks::start(&cfg).unwrap();
    wh.on_event(&app(&cfg), occupied("dead"));
    wait_for("dead letter", Duration::from_secs(6), || {
        wh.stats().dead_letters == 1
    })
    .await;
    let s = wh.stats();
    assert_eq!(s.dead_lettered, 1);
    assert_eq!(s.queue_depth, 0);
    assert!(s.failed_attempts >= 2);
    let id = rx.hits()[0].header("X-Pushbox-Batch-Id").unwrap();

    // The CLI lists it (read-only, while the server holds the lock).
    let out = cli(dir.path(), &["queue", "dead"]);
    assert!(out.contains(&id) && out.contains("HTTP 500"), "{out}");
    let out = cli(dir.path(), &["queue", "status"]);
    assert!(out.contains("dead letters:    1"), "{out}");
    let body = rx.hits()[0].body.len();
    assert!(
        out.contains(&format!(" {body} in dead letters")),
        "{body}: {out}"
    );

    // Unknown id: a clear error from the server.
    let c = cfg.clone();
    let r = tokio::task::spawn_blocking(move || {
        requeue::retry(
            &c,
            &Request {
                id: Some("nope".into()),
                all: false,
            },
            Duration::from_secs(5),
        )
    })
    .await
    .unwrap();
    assert!(r.is_err_and(|e| e.to_string().contains("no dead letter")));

    // Requeue while the server runs: handed over through webhooks-retry/.
    rx.default.store(200, Ordering::SeqCst);
    let n = rx.hits().len();
    let c = cfg.clone();
    let r = tokio::task::spawn_blocking(move || {
        requeue::retry(
            &c,
            &Request {
                id: Some(id.clone()),
                all: false,
            },
            Duration::from_secs(5),
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert!(matches!(r, Retried::Done(1)));
    let hits = rx.wait_hits(n + 1, Duration::from_secs(5)).await;
    assert_eq!(
        hits[n].header("X-Pushbox-Batch-Id"),
        hits[0].header("X-Pushbox-Batch-Id")
    );
    assert_eq!(hits[n].body, hits[0].body);
    wait_for("delivered", Duration::from_secs(2), || {
        wh.stats().delivered == 1
    })
    .await;
    assert_eq!(wh.stats().dead_letters, 0);
    wh.shutdown().await;
    let out = cli(dir.path(), &["queue", "dead"]);
    assert!(out.contains("no dead letters"), "{out}");
}

#[tokio::test]
async fn requeue_without_a_server_then_start() {
    let rx = Receiver::start().await;
    rx.default.store(500, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &[(&rx.url("http", "/h"), &[])],
        "max_age_secs = 1\n",
    );
    let wh = Webhooks::start(&cfg).unwrap();
    wh.on_event(&app(&cfg), occupied("x"));
    wh.on_event(&app(&cfg), occupied("y"));
    wait_for("dead letter", Duration::from_secs(6), || {
        wh.stats().dead_letters == 1
    })
    .await;
    wh.shutdown().await;
    drop(wh);

    // No server: the CLI binary takes the lock and requeues itself.
    let out = cli(dir.path(), &["queue", "retry", "--all"]);
    assert!(out.contains("requeued 1 dead letter"), "{out}");
    let out = cli(dir.path(), &["queue", "status"]);
    assert!(
        out.contains("pending batches: 1") && out.contains("dead letters:    0"),
        "{out}"
    );
    // The bytes waiting are the batch's body, not the spool's headers.
    let body = rx.hits()[0].body.len();
    assert!(
        out.contains(&format!(
            "queued bytes:    {body} pending, 0 in dead letters"
        )),
        "{body}: {out}"
    );

    rx.default.store(200, Ordering::SeqCst);
    let n = rx.hits().len();
    let wh = Webhooks::start(&cfg).unwrap();
    let hits = rx.wait_hits(n + 1, Duration::from_secs(5)).await;
    assert_eq!(hits[n].body, hits[0].body);
    wait_for("delivered", Duration::from_secs(2), || {
        wh.stats().delivered == 1
    })
    .await;
    wh.shutdown().await;
}

#[tokio::test]
async fn pending_batches_survive_a_restart() {
    let rx = Receiver::start().await;
    rx.default.store(500, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &[(&rx.url("http", "/h"), &[])], "");
    let wh = Webhooks::start(&cfg).unwrap();
    wh.on_event(&app(&cfg), occupied("p"));
    rx.wait_hits(1, Duration::from_secs(5)).await;
    wh.shutdown().await;
    drop(wh);
    let first = rx.hits()[0].clone();

    // Shutdown flushes open batches: a long window, then stop right away.
    let mut long = cfg.clone();
    long.webhooks.batch_window = Duration::from_millis(60_000);
    let wh = Webhooks::start(&long).unwrap();
    wh.on_event(&app(&cfg), occupied("flushed"));
    wh.shutdown().await;
    drop(wh);

    rx.default.store(200, Ordering::SeqCst);
    let n = rx.hits().len();
    let started = Instant::now();
    let wh = Webhooks::start(&cfg).unwrap();
    let hits = rx.wait_hits(n + 2, Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "pending batches are sent promptly"
    );
    let again: Vec<&Hit> = hits[n..].iter().collect();
    assert_eq!(
        again[0].header("X-Pushbox-Batch-Id"),
        first.header("X-Pushbox-Batch-Id")
    );
    assert_eq!(again[0].body, first.body);
    assert_eq!(again[1].json()["events"][0]["channel"], "flushed");
    wait_for("delivered", Duration::from_secs(2), || {
        wh.stats().delivered == 2
    })
    .await;
    wh.shutdown().await;
    drop(wh);

    // Nothing is sent a third time: the cursor moved past both.
    let n = rx.hits().len();
    let wh = Webhooks::start(&cfg).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.hits().len(), n);
    assert_eq!(wh.stats().queue_depth, 0);
    wh.shutdown().await;
}

#[tokio::test]
async fn https_receiver_with_a_private_ca() {
    let pki = common::pki::ca_and_leaf();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![pki.leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(pki.leaf_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let rx = Receiver::start_on(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        Some(acceptor),
    )
    .await;

    // Without the CA: the receiver's certificate is refused, nothing is sent.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &[(&rx.url("https", "/tls"), &[])], "");
    let wh = Webhooks::start(&cfg).unwrap();
    wh.on_event(&app(&cfg), occupied("t"));
    wait_for("a refused TLS handshake", Duration::from_secs(5), || {
        wh.stats().failed_attempts >= 1
    })
    .await;
    assert!(rx.hits().is_empty());
    wh.shutdown().await;
    drop(wh);

    // With ca_file: verified and delivered (the batch left pending above, too).
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, pki.ca.pem()).unwrap();
    let mut cfg = cfg;
    cfg.webhooks.ca_file = Some(ca_path);
    let wh = Webhooks::start(&cfg).unwrap();
    wh.on_event(&app(&cfg), occupied("t2"));
    let hits = rx.wait_hits(2, Duration::from_secs(5)).await;
    for h in &hits {
        assert!(h.head.contains("\r\nX-Pusher-Signature: "));
        assert_signed(h);
    }
    wh.shutdown().await;

    // A ca_file that is not PEM is a clear start-up error.
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "hello").unwrap();
    cfg.webhooks.ca_file = Some(bad);
    let err = Webhooks::start(&cfg).err().expect("bad ca_file refused");
    assert!(err.to_string().contains("webhooks.ca_file"), "{err}");
}

#[tokio::test]
async fn apps_without_receivers_and_unwanted_kinds_cost_nothing() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &[(&rx.url("http", "/h"), &["member_added"])],
        "",
    );
    let wh = Webhooks::start(&cfg).unwrap();
    let mut other = app(&cfg);
    other.id = "other".into();
    wh.on_event(&other, occupied("x"));
    wh.on_event(&app(&cfg), occupied("x"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = wh.stats();
    assert_eq!(s.batches_enqueued, 0);
    assert_eq!(s.events_dropped, 0);
    assert!(rx.hits().is_empty());
    wh.shutdown().await;
    // After shutdown events are dropped and counted, never blocking.
    wh.on_event(
        &app(&cfg),
        HubEvent::MemberAdded {
            channel: "presence-x".into(),
            user_id: "1".into(),
        },
    );
    assert_eq!(wh.stats().events_dropped, 1);
}

/// Run the `pushbox` binary with the test's config file; returns stdout + stderr.
fn cli(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(common::BIN)
        .args(args)
        .arg("--config")
        .arg(dir.join("pushbox.toml"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("run pushbox");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pushbox {args:?} failed: {text}");
    text
}

/// Child half of `sigkill_with_pending_batches`: runs only when re-executed by it.
#[tokio::test]
async fn sigkill_child() {
    let Ok(dir) = std::env::var("PUSHBOX_WEBHOOK_CHILD_DIR") else {
        return;
    };
    let cfg = pushbox::config::load(
        Some(&Path::new(&dir).join("pushbox.toml")),
        &HashMap::<String, String>::new(),
    )
    .expect("config loads");
    let wh = Webhooks::start(&cfg).unwrap();
    wh.on_event(&app(&cfg), occupied("before-the-crash"));
    wait_for("enqueued", Duration::from_secs(5), || {
        wh.stats().batches_enqueued == 1
    })
    .await;
    println!("ENQUEUED");
    tokio::time::sleep(Duration::from_secs(60)).await;
}

#[tokio::test]
async fn sigkill_with_pending_batches() {
    let rx = Receiver::start().await;
    rx.default.store(500, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &[(&rx.url("http", "/h"), &[])], "");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigkill_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PUSHBOX_WEBHOOK_CHILD_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("re-run this test binary");
    // The child enqueued the batch and tried it at least once (it got a 500).
    rx.wait_hits(1, Duration::from_secs(20)).await;
    child.kill().expect("SIGKILL the child");
    let _ = child.wait();
    let first = rx.hits()[0].clone();

    rx.default.store(200, Ordering::SeqCst);
    let n = rx.hits().len();
    let started = Instant::now();
    let wh = Webhooks::start(&cfg).expect("the lock died with the child");
    let hits = rx.wait_hits(n + 1, Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "pending batches are sent promptly"
    );
    assert_eq!(
        hits[n].header("X-Pushbox-Batch-Id"),
        first.header("X-Pushbox-Batch-Id")
    );
    assert_eq!(hits[n].body, first.body);
    assert_eq!(hits[n].json()["events"][0]["channel"], "before-the-crash");
    wh.shutdown().await;
}
