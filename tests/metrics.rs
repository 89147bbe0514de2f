//! `/metrics` over real sockets: values that match what the test did, checked with the
//! reference Prometheus text parser (`prometheus_client` from PyPI, in a venv under the cargo
//! target dir); the token and peer-address restrictions; and the journald log format of the real
//! binary, which must never contain an auth signature or a password.

mod common;

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The `prometheus_client` release the parser check uses.
const PROMETHEUS_CLIENT: &str = "prometheus-client==0.21.1";

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("timeout")
        .expect("read");
    common::status_and_body(&String::from_utf8_lossy(&out))
}

/// A Python with `prometheus_client`: `PUSHBOX_TEST_PYTHON`, or a venv made (once) under the
/// cargo target dir.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("PUSHBOX_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("prometheus-venv");
    let py = venv.join("bin/python");
    let stamp = venv.join(".installed");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(PROMETHEUS_CLIENT) {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "python3 -m venv failed: install python3 and python3-venv"
        );
        let ok = Command::new(&py)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                PROMETHEUS_CLIENT,
            ])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "pip install {PROMETHEUS_CLIENT} failed (PyPI reachable?)"
        );
        std::fs::write(&stamp, PROMETHEUS_CLIENT).unwrap();
    }
    py
}

const PARSER: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append({"family": fam.name, "type": fam.type, "name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;

/// Parses the exposition with `prometheus_client`; (sample name + sorted labels) → value.
fn parse_with_prometheus_client(text: &str) -> (HashMap<String, f64>, Vec<Value>) {
    let mut child = Command::new(python())
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client could not parse /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut map = HashMap::new();
    for s in &samples {
        let mut labels: Vec<String> = s["labels"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
            .collect();
        labels.sort();
        map.insert(
            format!("{}{{{}}}", s["name"].as_str().unwrap(), labels.join(",")),
            s["value"].as_f64().unwrap(),
        );
    }
    (map, samples)
}

#[tokio::test]
async fn metrics_match_what_the_test_did() {
    let srv = common::start(|_| {}).await;
    let a = srv.addr;
    let mut one = common::Client::connect(a).await;
    let mut two = common::Client::connect(a).await;
    one.subscribe("company.1").await;
    one.subscribe("orders").await;
    two.subscribe("company.1").await;
    for i in 0..3 {
        let (status, _) =
            common::trigger(a, "company.1", "Progress", &format!("{{\"p\":{i}}}")).await;
        assert_eq!(status, 200);
    }
    for c in [&mut one, &mut two] {
        for _ in 0..3 {
            c.recv_event("Progress").await;
        }
    }
    // A request with a wrong signature (401) and a connection to an unknown app (4001).
    let (status, _) = common::http(
        a,
        "POST",
        &format!("/apps/{}/events?auth_key={}&auth_timestamp={}&auth_version=1.0&body_md5=x&auth_signature=0000", common::APP_ID, common::KEY, common::now()),
        b"{}",
    )
    .await;
    assert_eq!(status, 401);
    let mut ws = common::connect_raw(a, "/app/no-such-key?protocol=7").await;
    let _ = common::next_json(&mut ws).await;

    let (status, text) = get(a, "/metrics", &[]).await;
    assert_eq!(status, 200);
    let (m, samples) = parse_with_prometheus_client(&text);
    let v = |k: &str| {
        *m.get(k)
            .unwrap_or_else(|| panic!("no sample {k} in\n{text}"))
    };
    let app = format!("app={}", common::APP_ID);
    assert_eq!(
        v(&format!("pushbox_connections{{{app},transport=websocket}}")),
        2.0
    );
    assert_eq!(
        v(&format!("pushbox_connections{{{app},transport=http}}")),
        0.0
    );
    assert_eq!(
        v(&format!(
            "pushbox_connections_opened_total{{{app},transport=websocket}}"
        )),
        2.0
    );
    assert_eq!(v(&format!("pushbox_channels{{{app}}}")), 2.0);
    assert_eq!(v(&format!("pushbox_subscriptions{{{app}}}")), 3.0);
    assert_eq!(v(&format!("pushbox_api_events_total{{{app}}}")), 3.0);
    assert_eq!(v(&format!("pushbox_messages_in_total{{{app}}}")), 3.0);
    // 3 subscription_succeeded + 3 events x 2 subscribers.
    assert_eq!(v(&format!("pushbox_messages_out_total{{{app}}}")), 9.0);
    assert_eq!(
        v(&format!(
            "pushbox_frames_in_total{{{app},transport=websocket}}"
        )),
        3.0
    );
    // ...plus the two connection_established frames.
    assert_eq!(
        v(&format!(
            "pushbox_frames_out_total{{{app},transport=websocket}}"
        )),
        11.0
    );
    assert!(
        v(&format!(
            "pushbox_bytes_out_total{{{app},transport=websocket}}"
        )) > 11.0 * 30.0
    );
    assert!(
        v(&format!(
            "pushbox_bytes_in_total{{{app},transport=websocket}}"
        )) > 3.0 * 30.0
    );
    assert_eq!(v("pushbox_http_api_requests_total{status=200}"), 3.0);
    assert_eq!(v("pushbox_http_api_requests_total{status=401}"), 1.0);
    assert_eq!(
        v("pushbox_connections_rejected_total{code=4001,reason=app_not_found}"),
        1.0
    );
    assert_eq!(
        v(&format!(
            "pushbox_build_info{{version={}}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    // Types as Prometheus sees them.
    let kind = |fam: &str| {
        samples
            .iter()
            .find(|s| s["family"] == fam)
            .map(|s| s["type"].as_str().unwrap().to_owned())
    };
    assert_eq!(kind("pushbox_connections").as_deref(), Some("gauge"));
    assert_eq!(
        kind("pushbox_http_api_requests").as_deref(),
        Some("counter")
    );
    assert!(
        kind("pushbox_webhook_queue_depth").is_none(),
        "no webhooks plugged in"
    );

    // Providers plugged in by the wiring show up.
    srv.state
        .metrics
        .set_webhooks(|| pushbox::metrics::WebhookSnapshot {
            queue_depth: 4,
            dead_letters: 1,
            delivered: 9,
            failed_attempts: 2,
            ..Default::default()
        });
    srv.state
        .metrics
        .set_spool(|| pushbox::metrics::SpoolSnapshot {
            bytes: vec![("events", 4096)],
            ..Default::default()
        });
    one.ws.close(None).await.unwrap();
    drop(one);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, text) = get(a, "/metrics", &[]).await;
        let (m, _) = parse_with_prometheus_client(&text);
        if m.get(&format!("pushbox_connections{{{app},transport=websocket}}")) == Some(&1.0) {
            assert_eq!(m["pushbox_webhook_queue_depth{}"], 4.0);
            assert_eq!(m["pushbox_webhook_dead_letters{}"], 1.0);
            assert_eq!(m["pushbox_webhook_deliveries_total{}"], 9.0);
            assert_eq!(m["pushbox_webhook_failures_total{}"], 2.0);
            assert_eq!(m["pushbox_spool_bytes{spool=events}"], 4096.0);
            assert_eq!(m[&format!("pushbox_subscriptions{{{app}}}")], 1.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "closed connection still counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_token_and_allow_restrictions() {
    let srv = common::start(|c| c.metrics.token = Some("scrape-me".into())).await;
    let (status, body) = get(srv.addr, "/metrics", &[]).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Bearer"), "{body}");
    let (status, _) = get(srv.addr, "/metrics", &[("Authorization", "Bearer wrong")]).await;
    assert_eq!(status, 401);
    let (status, body) = get(
        srv.addr,
        "/metrics",
        &[("Authorization", "Bearer scrape-me")],
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("pushbox_connections{"));

    let srv = common::start(|c| c.metrics.allow = vec!["10.0.0.0/8".into()]).await;
    let (status, body) = get(srv.addr, "/metrics", &[]).await;
    assert_eq!(status, 403, "{body}");
    let srv =
        common::start(|c| c.metrics.allow = vec!["10.0.0.0/8".into(), "127.0.0.1/32".into()]).await;
    let (status, _) = get(srv.addr, "/metrics", &[]).await;
    assert_eq!(status, 200);
    let srv = common::start(|c| c.metrics.enabled = false).await;
    let (status, _) = get(srv.addr, "/metrics", &[]).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn journald_logs_have_priorities_and_no_secrets() {
    let port = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pushbox.toml");
    let password = "console-password-do-not-log";
    std::fs::write(
        &cfg,
        common::config_toml(port, &format!("[console]\npassword = \"{password}\"\n"), ""),
    )
    .unwrap();
    let mut serve = common::pushbox(&["serve", "--config"]);
    serve
        .arg(&cfg)
        .env("PUSHBOX_STATE_DIR", dir.path().join("state"))
        .env("PUSHBOX_LOG", "debug")
        .env("JOURNAL_STREAM", "8:12345")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // Blocks this current-thread runtime until the server listens: nothing else runs on it yet.
    let mut served = common::Served::start(&mut serve, port, common::Ready::Listening);
    let addr = served.addr();
    // A correctly formed request signed with the wrong secret: 401.
    let body = r#"{"name":"e","channel":"c","data":"{}"}"#;
    let q = pushbox::protocol::signing::sign_query(
        "POST",
        &format!("/apps/{}/events", common::APP_ID),
        common::KEY,
        "wrong-secret",
        common::now(),
        body.as_bytes(),
        &[],
    );
    let signature = q
        .split('&')
        .find_map(|p| p.strip_prefix("auth_signature="))
        .unwrap()
        .to_owned();
    let (status, _) = common::http(
        addr,
        "POST",
        &format!("/apps/{}/events?{q}", common::APP_ID),
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = common::http(
        addr,
        "POST",
        "/console/login",
        format!("{{\"password\":\"{password}x\"}}").as_bytes(),
    )
    .await;
    assert_eq!(status, 401);
    let mut ws = common::connect_raw(addr, "/app/no-such-key?protocol=7").await;
    let _ = common::next_json(&mut ws).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = served.child.kill();
    let _ = served.child.wait();
    let mut stderr = Vec::new();
    std::io::Read::read_to_end(&mut served.child.stderr.take().unwrap(), &mut stderr).unwrap();
    let log = String::from_utf8_lossy(&stderr);
    assert!(
        !log.contains(&signature),
        "auth_signature value logged:\n{log}"
    );
    assert!(!log.contains(password), "console password logged:\n{log}");
    assert!(!log.contains(common::SECRET), "app secret logged:\n{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI colours in journald output:\n{log}"
    );
    for line in log.lines() {
        let b = line.as_bytes();
        assert!(
            b.len() > 3 && b[0] == b'<' && b[1].is_ascii_digit() && b[2] == b'>',
            "no <N> priority prefix: {line:?}"
        );
        assert!(
            !b[3].is_ascii_digit(),
            "timestamp in journald output: {line:?}"
        );
    }
    let refused = log
        .lines()
        .find(|l| l.contains("api request refused"))
        .unwrap_or_else(|| panic!("no api refusal line:\n{log}"));
    assert!(
        refused.starts_with("<6>") && refused.contains("status=401"),
        "{refused}"
    );
    let ws_line = log
        .lines()
        .find(|l| l.contains("websocket connection refused"))
        .unwrap_or_else(|| panic!("no refusal line:\n{log}"));
    assert!(
        ws_line.contains("code=4001") && ws_line.contains("peer="),
        "{ws_line}"
    );
    assert!(log.contains("console sign-in refused"), "{log}");
}
