//! The state directory removed while `pushbox serve` runs (an operator's `rm -rf`, a card that
//! went away): writes into the unlinked segment would still succeed, so the event log watches
//! its directory's identity. Once it is gone the API answers 503 before delivering anything,
//! `/up` answers 503 with the reason, `/metrics` shows the spool as `directory_lost`, the log
//! says so, and a directory created again does not bring it back: a restart does (it starts
//! a new event log there).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{free_port, http_blocking, pushbox, Ready, Served, Subscriber};

fn start(work: &Path, state: &Path, port: u16, run: &str) -> Served {
    std::fs::write(work.join("pushbox.toml"), common::config_toml(port, "", "")).unwrap();
    let mut serve = pushbox(&["serve", "--config"]);
    serve
        .arg(work.join("pushbox.toml"))
        .env("PUSHBOX_STATE_DIR", state)
        .env("PUSHBOX_LOG", "warn");
    Served::start_logged(&mut serve, port, Ready::Up, work.join(format!("{run}.log")))
}

/// `GET path`; (status, body).
fn get(s: &Served, path: &str) -> (u16, String) {
    http_blocking(s.addr(), "GET", path, "").expect("the server answers")
}

/// The `error` of a JSON error body.
fn error_of(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    v["error"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn a_removed_state_directory_refuses_publishing_says_so_on_up_and_metrics_until_a_restart() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let port = free_port();
    let s = start(work.path(), &state, port, "first");
    let sub = Subscriber::start(s.addr(), "orders");
    assert_eq!(s.trigger("e", "orders", "before").0, 200);
    assert_eq!(sub.received(Duration::from_millis(200)), vec!["before"]);

    std::fs::remove_dir_all(&state).unwrap();
    // The watcher notices within its cadence (a quarter second).
    let deadline = Instant::now() + Duration::from_secs(5);
    let (status, up) = loop {
        let (status, body) = get(&s, "/up");
        if status != 200 || Instant::now() > deadline {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status, 503, "/up reports the lost event log: {up}");
    assert!(up.contains("removed"), "{up}");
    assert!(up.contains("Restart pushbox"), "{up}");

    let (status, body) = s.trigger("e", "orders", "after");
    assert_eq!(status, 503, "{body}");
    let msg = error_of(&body);
    assert!(
        msg.contains(&state.join("events").display().to_string()),
        "{msg}"
    );
    assert!(msg.contains("not delivered"), "{msg}");
    assert!(msg.contains("Restart pushbox"), "{msg}");
    assert!(
        sub.received(Duration::from_millis(300)).is_empty(),
        "an event answered 503 was delivered"
    );

    let (_, metrics) = get(&s, "/metrics");
    for line in [
        "pushbox_spool_writable{spool=\"events\"} 0",
        "pushbox_spool_state{spool=\"events\",state=\"directory_lost\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line}");
    }
    assert!(s.log().contains("event log cannot write"), "{}", s.log());

    // Created again, the directory is a new one: still refused, until a restart.
    std::fs::create_dir_all(state.join("events")).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(s.trigger("e", "orders", "again").0, 503);
    assert_eq!(get(&s, "/up").0, 503);
    s.stop();

    let s = start(work.path(), &state, port, "restarted");
    let sub = Subscriber::start(s.addr(), "orders");
    assert_eq!(s.trigger("e", "orders", "restarted").0, 200);
    assert_eq!(sub.received(Duration::from_millis(200)), vec!["restarted"]);
    assert_eq!(get(&s, "/up"), (200, "{\"status\":\"ok\"}".to_owned()));
    s.stop();
}

#[test]
fn a_removed_webhook_queue_is_reported_on_up_metrics_the_log_and_by_pushbox_check() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let port = free_port();
    let s = start(work.path(), &state, port, "webhooks");
    assert_eq!(get(&s, "/up").0, 200);

    // Only the webhook queue's directory: the event log is fine.
    std::fs::remove_dir_all(state.join("webhooks")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let (status, up) = loop {
        let (status, body) = get(&s, "/up");
        if status != 200 || Instant::now() > deadline {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status, 503, "/up reports the lost webhook queue: {up}");
    assert!(
        up.contains("webhook_queue") && up.contains("removed"),
        "{up}"
    );
    let (_, metrics) = get(&s, "/metrics");
    let line = "pushbox_spool_state{spool=\"webhooks\",state=\"directory_lost\"} 1";
    assert!(metrics.lines().any(|l| l == line), "missing {line}");
    assert!(
        s.log().contains("webhook queue cannot write"),
        "{}",
        s.log()
    );
    assert_eq!(
        s.trigger("e", "orders", "still").0,
        200,
        "publishing goes on"
    );

    // `pushbox check` on the same config says the port is held by an unhealthy pushbox.
    let out = pushbox(&["check", "--config"])
        .arg(work.path().join("pushbox.toml"))
        .env("PUSHBOX_STATE_DIR", &state)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("FAIL") && l.contains("running pushbox"))
        .unwrap_or_else(|| panic!("no FAIL line naming the running pushbox:\n{stdout}"));
    assert!(
        line.contains("not healthy") && line.contains("webhook_queue"),
        "{line}"
    );
    s.stop();
}
