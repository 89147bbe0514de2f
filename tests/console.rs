//! The web console over real sockets on 127.0.0.1: off unless configured, sign-in refusals
//! (wrong password, missing / tampered / expired cookie), app-scoped sign-in, live state, the
//! event stream, the CSRF-protected test-event form, and the Secure cookie plus certificate
//! expiry over TLS.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::TcpStream;

use common::console::{cookie_pair, exchange, req, set_cookie};
use pushbox::config::ConsoleConfig;

const PASSWORD: &str = "correct horse battery";

fn console(session_secs: u64) -> impl FnOnce(&mut pushbox::config::Config) {
    move |c| {
        c.console = Some(ConsoleConfig {
            password: Some(PASSWORD.into()),
            app_login: true,
            session_lifetime: Duration::from_secs(session_secs),
        })
    }
}

/// Signs in with the admin password: (cookie pair, csrf token).
async fn login(addr: SocketAddr) -> (String, String) {
    common::console::login(addr, PASSWORD).await
}

#[tokio::test]
async fn console_not_configured_is_404() {
    let srv = common::start(|_| {}).await;
    for path in [
        "/console",
        "/console/",
        "/console/app.js",
        "/console/pusher.min.js",
        "/console/api/state",
    ] {
        let (status, _, body) = req(srv.addr, "GET", path, &[], "").await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (status, _, _) = req(
        srv.addr,
        "POST",
        "/console/login",
        &[],
        &json!({ "password": PASSWORD }).to_string(),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn page_and_assets_are_served_with_a_strict_policy() {
    let srv = common::start(console(60)).await;
    let (status, head, body) = req(srv.addr, "GET", "/console", &[], "").await;
    assert_eq!(status, 200);
    assert!(body.contains("pushbox console"));
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("content-security-policy: default-src 'none'; script-src 'self'"));
    assert!(lower.contains("x-frame-options: deny"));
    let (status, _, body) = req(srv.addr, "GET", "/console/pusher.min.js", &[], "").await;
    assert_eq!(status, 200);
    assert!(body.starts_with("/*!\n * Pusher JavaScript Library v8"));
    let (status, _, _) = req(srv.addr, "GET", "/console/nope", &[], "").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn wrong_password_missing_and_tampered_cookie_are_refused() {
    let srv = common::start(console(60)).await;
    let a = srv.addr;
    let (status, head, body) = req(
        a,
        "POST",
        "/console/login",
        &[],
        &json!({ "password": "wrong password" }).to_string(),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(
        set_cookie(&head).is_none(),
        "no cookie for a wrong password"
    );
    assert!(body.contains("Wrong password"), "{body}");
    let (status, _, _) = req(
        a,
        "POST",
        "/console/login",
        &[],
        &json!({ "key": common::KEY, "secret": "not-the-secret" }).to_string(),
    )
    .await;
    assert_eq!(status, 401);

    let (status, _, body) = req(a, "GET", "/console/api/state", &[], "").await;
    assert_eq!(status, 401, "missing cookie: {body}");
    assert!(body.contains("Not signed in"), "{body}");
    let (status, _, _) = req(a, "GET", "/console/api/events", &[], "").await;
    assert_eq!(status, 401);

    let (cookie, csrf) = login(a).await;
    let (status, _, _) = req(a, "GET", "/console/api/state", &[("Cookie", &cookie)], "").await;
    assert_eq!(status, 200);
    // Change one character of the signed payload, then of the signature.
    for at in [cookie.find('=').unwrap() + 5, cookie.len() - 3] {
        let mut b = cookie.clone().into_bytes();
        b[at] = if b[at] == b'a' { b'b' } else { b'a' };
        let tampered = String::from_utf8(b).unwrap();
        let (status, _, body) =
            req(a, "GET", "/console/api/state", &[("Cookie", &tampered)], "").await;
        assert_eq!(status, 401, "tampered cookie accepted: {body}");
    }
    // A cookie from another server process (another key) is refused too.
    let other = common::start(console(60)).await;
    let (status, _, _) = req(
        other.addr,
        "GET",
        "/console/api/state",
        &[("Cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(status, 401);
    // Publishing needs the cookie and the CSRF header.
    let ev = json!({"channel":"c","event":"e","data":"x"}).to_string();
    let (status, _, _) = req(
        a,
        "POST",
        "/console/api/publish",
        &[("X-Pushbox-Csrf", &csrf)],
        &ev,
    )
    .await;
    assert_eq!(status, 401, "no cookie");
    let (status, _, body) = req(
        a,
        "POST",
        "/console/api/publish",
        &[("Cookie", &cookie)],
        &ev,
    )
    .await;
    assert_eq!(status, 403, "no CSRF header: {body}");
    let (status, _, _) = req(
        a,
        "POST",
        "/console/api/publish",
        &[("Cookie", &cookie), ("X-Pushbox-Csrf", "0000")],
        &ev,
    )
    .await;
    assert_eq!(status, 403, "wrong CSRF header");
}

#[tokio::test]
async fn expired_cookie_is_refused() {
    let srv = common::start(console(1)).await;
    let (cookie, _) = login(srv.addr).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, _, body) = req(
        srv.addr,
        "GET",
        "/console/api/state",
        &[("Cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(status, 401);
    assert!(body.contains("expired"), "{body}");
}

#[tokio::test]
async fn live_state_event_stream_and_test_event() {
    let srv = common::start(console(600)).await;
    let a = srv.addr;
    let (cookie, csrf) = login(a).await;
    let h = [("Cookie", cookie.as_str())];

    let mut client = common::Client::connect(a).await;
    let ok = client.subscribe("company.1").await;
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
    let mut member = common::Client::connect(a).await;
    let ok = member
        .subscribe_presence(
            "presence-shop",
            r#"{"user_id":"u-7","user_info":{"name":"Ann"}}"#,
        )
        .await;
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");

    let (status, _, body) = req(a, "GET", "/console/api/state", &h, "").await;
    assert_eq!(status, 200, "{body}");
    let st: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st["connections"]["websocket"], 2, "{st}");
    assert_eq!(st["connections"]["http"], 0);
    assert_eq!(st["scope"], "admin");
    assert_eq!(st["webhooks"], Value::Null, "webhooks: not configured");
    assert_eq!(st["tls"]["configured"], false);
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
    let chans = st["apps"][0]["channels"].as_array().unwrap();
    let company = chans.iter().find(|c| c["name"] == "company.1").unwrap();
    assert_eq!(company["subscribers"], 1);
    let shop = chans.iter().find(|c| c["name"] == "presence-shop").unwrap();
    assert_eq!(shop["members"], json!(["u-7"]));

    // The test-event form: published through the API path, seen by the client and the stream.
    let data = r#"{"status":"progress","message":"<script>alert(1)</script>","progress":50}"#;
    let ev = json!({"app": common::APP_ID, "channel":"company.1","event":"MarketplaceSyncProgress","data": data}).to_string();
    let (status, _, body) = req(
        a,
        "POST",
        "/console/api/publish",
        &[("Cookie", &cookie), ("X-Pushbox-Csrf", &csrf)],
        &ev,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let got = client.recv_event("MarketplaceSyncProgress").await;
    assert_eq!(got["channel"], "company.1");
    assert_eq!(got["data"], data);
    // An event from the signed HTTP API shows up too.
    let (status, _) = common::trigger(a, "company.1", "OrderCreated", "{\"id\":5}").await;
    assert_eq!(status, 200);
    let (status, _, body) = req(a, "GET", "/console/api/events?after=0", &h, "").await;
    assert_eq!(status, 200);
    let evs: Value = serde_json::from_str(&body).unwrap();
    let list = evs["events"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{evs}");
    assert_eq!(list[0]["name"], "MarketplaceSyncProgress");
    assert_eq!(list[0]["data"], data);
    assert_eq!(list[0]["delivered"], json!([1]));
    assert_eq!(list[1]["name"], "OrderCreated");
    let next = evs["next"].as_u64().unwrap();
    let (_, _, body) = req(
        a,
        "GET",
        &format!("/console/api/events?after={next}"),
        &h,
        "",
    )
    .await;
    let evs: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(evs["events"], json!([]));

    // Invalid input gets the API's own answer.
    let bad = json!({"channel":"bad channel!","event":"e","data":"x"}).to_string();
    let (status, _, body) = req(
        a,
        "POST",
        "/console/api/publish",
        &[("Cookie", &cookie), ("X-Pushbox-Csrf", &csrf)],
        &bad,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Invalid channel"), "{body}");
}

#[tokio::test]
async fn app_key_sign_in_sees_only_its_app() {
    let srv = common::start(|c| {
        c.apps.push(pushbox::config::AppConfig::with_defaults(
            "7",
            "other-key",
            "other-secret",
        ));
        c.console = Some(ConsoleConfig {
            password: None,
            app_login: true,
            session_lifetime: Duration::from_secs(60),
        });
    })
    .await;
    let a = srv.addr;
    // No admin password configured: a password never signs in.
    let (status, _, _) = req(
        a,
        "POST",
        "/console/login",
        &[],
        &json!({"password": ""}).to_string(),
    )
    .await;
    assert_eq!(status, 401);
    let (status, head, body) = req(
        a,
        "POST",
        "/console/login",
        &[],
        &json!({"key":"other-key","secret":"other-secret"}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let cookie = cookie_pair(&set_cookie(&head).unwrap());
    let csrf: Value = serde_json::from_str(&body).unwrap();
    let csrf = csrf["csrf"].as_str().unwrap().to_owned();
    let (_, _, body) = req(a, "GET", "/console/api/state", &[("Cookie", &cookie)], "").await;
    let st: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st["scope"], "app 7");
    let ids: Vec<&str> = st["apps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["id"].as_str())
        .collect();
    assert_eq!(ids, ["7"]);
    let ev = json!({"app": common::APP_ID, "channel":"c","event":"e","data":"x"}).to_string();
    let (status, _, _) = req(
        a,
        "POST",
        "/console/api/publish",
        &[("Cookie", &cookie), ("X-Pushbox-Csrf", &csrf)],
        &ev,
    )
    .await;
    assert_eq!(status, 403, "an app session may not publish to another app");
}

#[tokio::test]
async fn over_tls_the_cookie_is_secure_and_the_certificate_expiry_shows() {
    let dir = tempfile::tempdir().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    params.not_after = rcgen::date_time_ymd(2035, 1, 2);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();

    let cfg = common::config(|c| {
        console(60)(c);
        c.tls = Some(pushbox::config::TlsConfig {
            cert: cert_path.clone(),
            key: key_path.clone(),
            host: "127.0.0.1".into(),
            port: 0,
        });
    });
    let tls = Arc::new(pushbox::server::tls::Tls::new(&cert_path, &key_path).unwrap());
    let listener = pushbox::server::bind_addr("127.0.0.1", 0).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (state, _handle) =
        pushbox::server::State::new(cfg, Arc::new(pushbox::hub::NoObserver), None);
    tokio::spawn(pushbox::server::serve_tls(state, listener, tls));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let connect = || async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        connector.connect(name, tcp).await.expect("TLS handshake")
    };
    let (status, head, body) = exchange(
        connect().await,
        addr,
        "POST",
        "/console/login",
        &[],
        &json!({ "password": PASSWORD }).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sc = set_cookie(&head).unwrap();
    for attr in [
        "HttpOnly",
        "SameSite=Strict",
        "Secure",
        "Max-Age=60",
        "Path=/console",
    ] {
        assert!(sc.contains(attr), "{attr} missing in {sc}");
    }
    let (status, _, body) = exchange(
        connect().await,
        addr,
        "GET",
        "/console/api/state",
        &[("Cookie", &cookie_pair(&sc))],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let st: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st["tls"]["configured"], true, "{st}");
    // 2035-01-02T00:00:00Z
    assert_eq!(st["tls"]["not_after"], 2051308800i64, "{st}");
    assert_eq!(st["tls"]["expired"], false);
}

#[tokio::test]
async fn guessing_from_one_address_is_throttled_with_429_and_retry_after() {
    let srv = common::start(console(60)).await;
    let a = srv.addr;
    let guess = json!({ "password": "guess guess" }).to_string();
    // 25 parallel guesses, as the attack ran them: a few are checked, the rest refused unchecked.
    let guesses: Vec<_> = (0..25)
        .map(|_| {
            let g = guess.clone();
            tokio::spawn(async move { req(a, "POST", "/console/login", &[], &g).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for g in guesses {
        statuses.push(g.await.unwrap().0);
    }
    let checked = statuses.iter().filter(|&&s| s == 401).count();
    let throttled = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!(checked + throttled, 25, "{statuses:?}");
    assert!(
        checked <= 4,
        "only the free mistakes are checked: {statuses:?}"
    );
    // Even the right password waits now, told for how long.
    let right = json!({ "password": PASSWORD }).to_string();
    let (status, head, body) = req(a, "POST", "/console/login", &[], &right).await;
    assert_eq!(status, 429, "{body}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: "),
        "{head}"
    );
    assert!(body.contains("Too many failed sign-ins"), "{body}");
    // Another address on the LAN signs in as usual.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(([127, 0, 0, 2], 0).into()).unwrap();
    let s = sock.connect(a).await.unwrap();
    let (status, _, body) = exchange(s, a, "POST", "/console/login", &[], &right).await;
    assert_eq!(status, 200, "{body}");
    let m = &srv.state.metrics;
    assert_eq!(
        m.refusals(pushbox::metrics::Reason::LoginThrottled),
        throttled as u64 + 1
    );
}
