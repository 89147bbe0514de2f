//! The `pushbox serve` binary end to end: config errors, the event log, TLS with SIGHUP reload,
//! and graceful stop with 4200. Real processes, real sockets on 127.0.0.1, real files.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use common::{free_port, pushbox, serve_in, Ready, Served, BIN};

/// A `pushbox serve` on its own state directory (`dir/state`), killed when dropped.
struct Server {
    served: Served,
    dir: tempfile::TempDir,
}

fn spawn(dir: tempfile::TempDir, config: &str, port: u16) -> Server {
    let mut serve = serve_in(dir.path(), config);
    serve.stdout(Stdio::null()).stderr(Stdio::piped());
    let served = Served::start(&mut serve, port, Ready::Listening);
    let mut s = Server { served, dir };
    // The port answered; make sure it is this server (another test may have taken the port
    // between free_port() and the bind) and that it holds its state directory.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.dir.path().join("state/events/LOCK").exists() {
        assert!(
            Instant::now() < deadline,
            "the server did not open its state directory"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Ok(Some(status)) = s.served.child.try_wait() {
        panic!("the server exited at start ({status}); was port {port} taken by another test?");
    }
    s
}

/// Runs a command that must exit by itself within `secs`.
fn output_within(cmd: &mut Command, secs: u64) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {secs} s: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn app_toml(port: u16) -> String {
    common::config_toml(port, "", "")
}

#[test]
fn config_errors_exit_78_with_one_line_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pushbox.toml");
    std::fs::write(&cfg, "[[apps]]\nid = \"1\"\nkey = \"k\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .env_remove("REVERB_APP_ID")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("pushbox.toml") && err.contains("secret"),
        "{err}"
    );

    let out = Command::new(BIN)
        .args(["serve", "--config", "/nonexistent/pushbox.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/pushbox.toml"));

    let out = Command::new(BIN)
        .args(["serve"])
        .env("REVERB_APP_ID", "1")
        .env_remove("REVERB_APP_KEY")
        .env_remove("REVERB_APP_SECRET")
        .env_remove("PUSHER_APP_KEY")
        .env_remove("PUSHER_APP_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("REVERB_APP_KEY"));

    // A broken certificate is a config error too.
    std::fs::write(
        &cfg,
        format!(
            "{}[tls]\ncert = \"/nonexistent.crt\"\nkey = \"/nonexistent.key\"\nport = {}\n",
            app_toml(free_port()),
            free_port()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .env_remove("REVERB_APP_ID")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonexistent.crt"));
}

/// Runs `pushbox serve --config cfg` (with no env app) to its exit: status and stderr.
fn serve_once(cfg: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(cfg)
        .env_remove("REVERB_APP_ID")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), err)
}

/// A timeout too large to add to a clock (it used to panic every connection task) is refused at
/// start like any other config error: exit 78, one line naming the key and the allowed range.
#[test]
fn too_large_timeouts_exit_78_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pushbox.toml");
    for (server, key) in [
        (
            "activity_timeout = 18446744073709551615",
            "server.activity_timeout",
        ),
        ("pong_timeout = 9223372036854775807", "server.pong_timeout"),
        (
            "fallback_session_timeout = 86401",
            "server.fallback_session_timeout",
        ),
    ] {
        std::fs::write(
            &cfg,
            app_toml(free_port()).replace("[[apps]]", &format!("{server}\n[[apps]]")),
        )
        .unwrap();
        let (status, err) = serve_once(&cfg);
        assert_eq!(status, Some(78), "{server}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains("pushbox.toml") && err.contains(key) && err.contains("86400"),
            "{err}"
        );
    }
}

#[test]
fn laravel_env_file_with_references() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let env = dir.path().join(".env");
    std::fs::write(&env, format!("REVERB_APP_ID=77\nREVERB_APP_KEY=envkey\nREVERB_APP_SECRET=\"${{SECRET_PART}}-x\"\nSECRET_PART=late\nREVERB_SERVER_HOST=127.0.0.1\nREVERB_SERVER_PORT={port}\n")).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config", "/nonexistent-default-is-not-used"])
        .arg("--env-file")
        .arg(&env)
        .output();
    // An explicit --config that doesn't exist is an error even with an env app.
    assert_eq!(child.as_mut().unwrap().status.code(), Some(78));
    let mut serve = pushbox(&["serve", "--env-file"]);
    serve
        .arg(&env)
        .env("PUSHBOX_STATE_DIR", dir.path().join("state"))
        .stderr(Stdio::null());
    let served = Served::start(&mut serve, port, Ready::Listening);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut ws = common::connect_raw(
            format!("127.0.0.1:{port}").parse().unwrap(),
            "/app/envkey?protocol=7",
        )
        .await;
        assert_eq!(
            common::next_json(&mut ws).await.unwrap()["event"],
            "pusher:connection_established"
        );
    });
    drop(served);
}

#[test]
fn accepted_events_are_in_the_event_log_and_sigterm_sends_4200() {
    let port = free_port();
    let s = spawn(tempfile::tempdir().unwrap(), &app_toml(port), port);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut client = rt.block_on(async {
        let mut c = common::Client::connect(addr).await;
        c.subscribe("orders").await;
        let (st, _) =
            common::trigger(addr, "orders", "App\\Events\\OrderShipped", "{\"id\":7}").await;
        assert_eq!(st, 200);
        assert_eq!(c.recv().await["data"], "{\"id\":7}");
        c
    });
    // The 200 means it is on disk: read the log from another process' point of view.
    let reader = pushbox::spool::Spool::open_read_only(s.dir.path().join("state/events")).unwrap();
    let records = reader.read_from(1, 10).unwrap();
    assert_eq!(records.len(), 1);
    let rec: pushbox::eventlog::EventRecord = serde_json::from_slice(&records[0].payload).unwrap();
    assert_eq!(rec.name, "App\\Events\\OrderShipped");
    assert_eq!(rec.channels, vec!["orders"]);
    assert_eq!(rec.delivered, vec![1]);

    let pid = nix::unistd::Pid::from_raw(s.served.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    rt.block_on(async {
        assert_eq!(client.recv().await["data"]["code"], 4200);
        assert_eq!(client.closed_with().await, Some(4200));
    });
    let mut s = s;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = s.served.child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pushbox did not exit within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut err = String::new();
    if let Some(e) = s.served.child.stderr.take() {
        for line in BufReader::new(e).lines().map_while(Result::ok) {
            err.push_str(&line);
        }
    }
    assert!(!err.contains("panicked"), "{err}");
    // The test app's secret is weak: said once at start (without the secret), like `check` says it.
    assert!(err.contains("the secret is weak (11 characters"), "{err}");
    assert!(!err.contains(common::SECRET), "{err}");
}

#[test]
fn a_second_server_on_the_same_state_dir_is_refused() {
    let port = free_port();
    let s = spawn(tempfile::tempdir().unwrap(), &app_toml(port), port);
    let port2 = free_port();
    let cfg = s.dir.path().join("second.toml");
    std::fs::write(&cfg, app_toml(port2)).unwrap();
    let out = output_within(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("PUSHBOX_STATE_DIR", s.dir.path().join("state"))
            .env_remove("REVERB_APP_ID"),
        15,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another pushbox"), "{err}");
}

struct Pki {
    ca_pem: String,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
}

fn pki() -> Pki {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pushbox test CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Pki {
        ca_pem: cert.pem(),
        ca: rcgen::Issuer::new(params, key),
    }
}

fn leaf(pki: &Pki, cn: &str, dir: &Path) -> (PathBuf, PathBuf) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &pki.ca).unwrap();
    let (c, k) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

type TlsWs =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A wss:// client trusting only `ca_pem`; returns the socket and the CN of the served cert.
async fn wss(port: u16, ca_pem: &str) -> Result<(TlsWs, String), String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let cn = {
        let (_, conn) = tls.get_ref();
        assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        let der = conn.peer_certificates().unwrap()[0].as_ref().to_vec();
        ["first-cert", "second-cert"]
            .iter()
            .find(|n| der.windows(n.len()).any(|w| w == n.as_bytes()))
            .unwrap()
            .to_string()
    };
    let url = format!("wss://localhost:{port}/app/{}?protocol=7", common::KEY);
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .map_err(|e| e.to_string())?;
    let first = tls_json(&mut ws).await;
    assert_eq!(first["event"], "pusher:connection_established");
    Ok((ws, cn))
}

async fn tls_json(ws: &mut TlsWs) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("frame within 5 s")
        {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("connection ended: {other:?}"),
        }
    }
}

async fn tls_subscribe(ws: &mut TlsWs, channel: &str) {
    use futures_util::SinkExt;
    ws.send(Message::Text(
        serde_json::json!({"event":"pusher:subscribe","data":{"channel":channel}})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    assert_eq!(
        tls_json(ws).await["event"],
        "pusher_internal:subscription_succeeded"
    );
}

#[test]
fn tls_serves_wss_and_sighup_reloads_without_dropping_connections() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = leaf(&pki, "first-cert", dir.path());
    let (port, tls_port) = (free_port(), free_port());
    let config = format!(
        "{}[tls]\nhost = \"127.0.0.1\"\nport = {tls_port}\ncert = \"{}\"\nkey = \"{}\"\n",
        app_toml(port),
        cert.display(),
        key.display()
    );
    let mut s = spawn(dir, &config, port);
    s.served.wait_for(tls_port, Ready::Listening);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let pid = nix::unistd::Pid::from_raw(s.served.child.id() as i32);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (mut before, cn) = wss(tls_port, &pki.ca_pem).await.unwrap();
        assert_eq!(cn, "first-cert");
        tls_subscribe(&mut before, "orders").await;

        // New certificate on disk, SIGHUP: new clients get it, the old connection stays.
        leaf(&pki, "second-cert", s.dir.path());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
        let mut reloaded = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Ok((_, cn)) = wss(tls_port, &pki.ca_pem).await {
                if cn == "second-cert" {
                    reloaded = true;
                    break;
                }
            }
        }
        assert!(reloaded, "new clients see the new certificate");
        assert_eq!(
            common::trigger(addr, "orders", "after-reload", "1").await.0,
            200
        );
        assert_eq!(tls_json(&mut before).await["event"], "after-reload");

        // A broken certificate is refused; the previous one keeps serving.
        std::fs::write(
            s.dir.path().join("tls.crt"),
            "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (_, cn) = wss(tls_port, &pki.ca_pem).await.unwrap();
        assert_eq!(cn, "second-cert");
        assert_eq!(common::trigger(addr, "orders", "still", "2").await.0, 200);
        assert_eq!(tls_json(&mut before).await["event"], "still");

        // Plain TCP to the TLS port, or old protocol versions, never get a session.
        let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
            .await
            .unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        raw.write_all(b"GET /up HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut buf)).await;
        assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    });
}

#[test]
fn mismatched_key_is_a_config_error() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = leaf(&pki, "first-cert", dir.path());
    let other = rcgen::KeyPair::generate().unwrap();
    let key = dir.path().join("other.key");
    std::fs::write(&key, other.serialize_pem()).unwrap();
    let cfg = dir.path().join("pushbox.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[tls]\nport = {}\ncert = \"{}\"\nkey = \"{}\"\n",
            app_toml(free_port()),
            free_port(),
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .env_remove("REVERB_APP_ID")
        .env("PUSHBOX_STATE_DIR", dir.path().join("s"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not belong"), "{err}");
}

/// systemd's socket activation and notification with the real binary: `systemd-socket-activate`
/// (the tool systemd ships for this) holds the listening socket and execs pushbox on the first
/// connection with `LISTEN_FDS`; pushbox serves on the inherited socket (not its config port),
/// says `READY=1` on `NOTIFY_SOCKET`, and keeps the watchdog fed.
#[test]
fn socket_activation_notify_and_watchdog_with_systemd_tools() {
    let Some(activate) = [
        "/usr/bin/systemd-socket-activate",
        "/bin/systemd-socket-activate",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists()) else {
        println!("SKIPPED: systemd-socket-activate is not installed (apt-get install systemd)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (activated_port, config_port) = (free_port(), free_port());
    let cfg = dir.path().join("pushbox.toml");
    std::fs::write(&cfg, app_toml(config_port)).unwrap();
    let mut activated = Command::new(activate);
    activated
        .arg(format!("--listen=127.0.0.1:{activated_port}"))
        .arg("--fdname=http")
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
        .arg("--setenv=WATCHDOG_USEC=400000")
        .arg(format!(
            "--setenv=PUSHBOX_STATE_DIR={}",
            dir.path().join("state").display()
        ))
        .arg("--setenv=PUSHBOX_LOG=warn")
        .arg(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .env_remove("REVERB_APP_ID")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut guard = Served::start(&mut activated, activated_port, Ready::Listening);
    assert!(
        guard.child.try_wait().unwrap().is_none(),
        "systemd-socket-activate is running"
    );

    // The first connection makes the tool exec pushbox with the socket; it answers on it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{activated_port}").parse().unwrap();
    let (status, body) = rt.block_on(common::http(addr, "GET", "/up", b""));
    assert_eq!((status, body.as_str()), (200, "{\"status\":\"ok\"}"));
    // The config's own port is not bound: the inherited listener replaced it.
    assert!(std::net::TcpStream::connect(("127.0.0.1", config_port)).is_err());

    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 512];
    while Instant::now() < deadline
        && !(got.iter().any(|m: &String| m.contains("READY=1"))
            && got.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2)
    {
        if let Ok(n) = notify.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    assert!(got.iter().any(|m| m.contains("READY=1")), "{got:?}");
    assert!(got.iter().any(|m| m.contains("STATUS=")), "{got:?}");
    assert!(
        got.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2,
        "{got:?}"
    );

    // SIGTERM: STOPPING=1, then a clean exit.
    let pid = nix::unistd::Pid::from_raw(guard.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut stopping = false;
    while Instant::now() < deadline + Duration::from_secs(5) {
        match notify.recv(&mut buf) {
            Ok(n) if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") => {
                stopping = true;
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(stopping, "STOPPING=1 on SIGTERM");
}

/// A one-shot webhook receiver on 127.0.0.1: the body of the first POST it gets, answered 200.
fn webhook_receiver() -> (String, std::sync::mpsc::Receiver<String>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let body = loop {
            let Ok(n) = s.read(&mut chunk) else { return };
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            let Some(end) = text.find("\r\n\r\n") else {
                continue;
            };
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                break text[end + 4..].to_owned();
            }
        };
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let _ = tx.send(body);
    });
    (url, rx)
}

/// `serve --dev --host 0.0.0.0` for a phone on the LAN: `env --dev` then prints a host that
/// reaches it (not 0.0.0.0), `PUSHBOX_WEBHOOK_URL` gets the dev app's webhooks, and the
/// start-up log reads as sentences with plain values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_on_every_address_with_webhooks() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (url, bodies) = webhook_receiver();
    let mut serve = pushbox(&["serve", "--dev", "--host", "0.0.0.0"]);
    serve
        .current_dir(dir.path())
        .env("REVERB_SERVER_PORT", port.to_string())
        .env("PUSHBOX_WEBHOOK_URL", &url)
        .env("PUSHBOX_LOG", "info")
        .env("PUSHBOX_LOG_FORMAT", "journald");
    let log = dir.path().join("serve.log");
    let served =
        tokio::task::block_in_place(|| Served::start_logged(&mut serve, port, Ready::Up, log));

    let saved = std::fs::read_to_string(dir.path().join(".pushbox-dev/dev-app.toml")).unwrap();
    let saved: toml::Table = toml::from_str(&saved).unwrap();
    let key = saved["key"].as_str().unwrap().to_owned();
    let mut client = common::Client::connect_key(served.addr(), &key).await;
    client.subscribe("orders").await;
    let body = tokio::task::spawn_blocking(move || bodies.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("a webhook at PUSHBOX_WEBHOOK_URL");
    assert!(
        body.contains("channel_occupied") && body.contains("orders"),
        "{body}"
    );

    // The other --dev commands know where the dev server listens (no REVERB_SERVER_PORT here).
    let out = pushbox(&["env", "--dev"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains(&format!("REVERB_PORT={port}")), "{stdout}");
    let host = stdout
        .lines()
        .find_map(|l| l.strip_prefix("REVERB_HOST="))
        .unwrap()
        .trim_matches('"');
    assert!(
        !["0.0.0.0", "127.0.0.1", "localhost", ""].contains(&host),
        "a host another machine can use: {stdout}"
    );

    let log = served.log();
    let app = saved["id"].as_str().unwrap();
    assert!(
        log.contains(&format!("serving http://0.0.0.0:{port} for app {app}")),
        "{log}"
    );
    assert!(log.contains("webhooks: 1 of 1 app has receivers"), "{log}");
    assert!(!log.contains("Some(") && !log.contains("[\""), "{log}");
}

/// A port another program holds is named before anything else, not as a bind error.
#[test]
fn serve_on_a_port_another_program_holds_says_so() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let out = output_within(
        pushbox(&["serve", "--dev"])
            .current_dir(dir.path())
            .env("REVERB_SERVER_PORT", port.to_string()),
        15,
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "port {port} (127.0.0.1:{port}) is in use by another program"
        )) && stderr.contains("REVERB_SERVER_PORT="),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "no keys printed: {stdout}");
}
