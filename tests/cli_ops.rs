//! The operator's commands end to end through the real binary: `keygen`, `env`, `check`,
//! `trigger` and `cert self-signed`, each with its output, failure messages and exit status.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{free_port, pushbox, Ready, Served};

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(c: &mut Command) -> Out {
    let o: Output = c.output().expect("run pushbox");
    Out {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `serve` (logs at warn, output discarded), once it accepts on `port`.
fn served(mut serve: Command, port: u16) -> Served {
    serve
        .env("PUSHBOX_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    tokio::task::block_in_place(|| Served::start(&mut serve, port, Ready::Listening))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `[[apps]]` with the integration tests' credentials (or another secret).
fn app_toml(secret: &str) -> String {
    format!(
        "[[apps]]\nid = \"{}\"\nkey = \"{}\"\nsecret = \"{secret}\"\n",
        common::APP_ID,
        common::KEY
    )
}

/// Makes `pushbox.key` / `pushbox.crt` in `dir` with the binary itself.
fn make_cert(dir: &Path, host: &str) -> (PathBuf, PathBuf) {
    let out = run(pushbox(&[
        "cert",
        "self-signed",
        "--host",
        host,
        "--ip",
        "127.0.0.1",
        "--out",
    ])
    .arg(dir));
    assert_eq!(out.code, Some(0), "{out}");
    (dir.join("pushbox.crt"), dir.join("pushbox.key"))
}

#[test]
fn keygen_prints_reverb_variables_and_a_toml_app_new_each_time() {
    let parse = |o: &Out| {
        let vars = pushbox::config::parse_env_file(&o.stdout);
        (
            vars["REVERB_APP_ID"].clone(),
            vars["REVERB_APP_KEY"].clone(),
            vars["REVERB_APP_SECRET"].clone(),
        )
    };
    let a = run(&mut pushbox(&["keygen"]));
    assert_eq!(a.code, Some(0), "{a}");
    let (id, key, secret) = parse(&a);
    assert!(
        id.len() >= 6 && id.bytes().all(|b| b.is_ascii_digit()),
        "{a}"
    );
    assert_eq!(key.len(), 20, "{a}");
    assert_eq!(secret.len(), 32, "{a}");
    assert!(key
        .bytes()
        .chain(secret.bytes())
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    // The TOML snippet is a valid [[apps]] entry with the same values.
    let toml_part = &a.stdout[a.stdout.find("[[apps]]").expect("[[apps]] snippet")..];
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "p.toml", toml_part);
    let cfg = pushbox::config::load(Some(&cfg), &std::collections::HashMap::new()).unwrap();
    assert_eq!(
        (cfg.apps[0].id.as_str(), cfg.apps[0].key.as_str()),
        (id.as_str(), key.as_str())
    );
    assert_eq!(cfg.apps[0].secret, secret);

    let b = run(&mut pushbox(&["keygen"]));
    let (_, key2, secret2) = parse(&b);
    assert_ne!(key, key2);
    assert_ne!(secret, secret2);
}

#[test]
fn env_prints_the_laravel_block_for_how_the_box_is_reached() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            "[server]\nhost = \"0.0.0.0\"\nport = 8090\n{}",
            app_toml("s3cret-s3cret-s3cret-s3cret-1234")
        ),
    );
    // Every address: --host names the box, HTTP on the server port.
    let out = run(pushbox(&["env", "--host", "box.lan", "--config"]).arg(&cfg));
    assert_eq!(out.code, Some(0), "{out}");
    let vars = pushbox::config::parse_env_file(&out.stdout);
    assert_eq!(vars["BROADCAST_CONNECTION"], "reverb");
    assert_eq!(vars["REVERB_APP_ID"], common::APP_ID);
    assert_eq!(vars["REVERB_APP_KEY"], common::KEY);
    assert_eq!(
        vars["REVERB_APP_SECRET"],
        "s3cret-s3cret-s3cret-s3cret-1234"
    );
    assert_eq!(vars["REVERB_HOST"], "box.lan");
    assert_eq!(vars["REVERB_PORT"], "8090");
    assert_eq!(vars["REVERB_SCHEME"], "http");
    assert_eq!(vars["VITE_REVERB_APP_KEY"], common::KEY);
    assert_eq!(vars["VITE_REVERB_HOST"], "box.lan");

    // Without --host on 0.0.0.0: this machine's name, and it says so.
    let out = run(pushbox(&["env", "--config"]).arg(&cfg));
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stderr.contains("--host"), "{out}");
    assert!(!pushbox::config::parse_env_file(&out.stdout)["REVERB_HOST"].is_empty());

    // With [tls]: https on the TLS port. The app comes from REVERB_* variables here.
    let tls = write(
        dir.path(),
        "tls.toml",
        "[tls]\ncert = \"/etc/pushbox/pushbox.crt\"\nkey = \"/etc/pushbox/pushbox.key\"\nport = 8443\n",
    );
    let out = run(
        pushbox(&["env", "--host", "box.lan", "--app", "777", "--config"])
            .arg(&tls)
            .env("REVERB_APP_ID", "777")
            .env("REVERB_APP_KEY", "envkey")
            .env("REVERB_APP_SECRET", "envsecret"),
    );
    assert_eq!(out.code, Some(0), "{out}");
    let vars = pushbox::config::parse_env_file(&out.stdout);
    assert_eq!(vars["REVERB_APP_KEY"], "envkey");
    assert_eq!(vars["REVERB_PORT"], "8443");
    assert_eq!(vars["REVERB_SCHEME"], "https");
    assert_eq!(vars["VITE_REVERB_SCHEME"], "https");

    // Unknown app: exit 2 naming the apps there are.
    let out = run(pushbox(&["env", "--app", "nope", "--config"]).arg(&cfg));
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr.contains("\"nope\"") && out.stderr.contains(common::APP_ID),
        "{out}"
    );
    assert!(out.stdout.is_empty(), "{out}");

    // A broken config: 78.
    let out = run(pushbox(&["env", "--config"]).arg(dir.path().join("missing.toml")));
    assert_eq!(out.code, Some(78), "{out}");
}

/// A config with a plain port, a TLS port with a fresh certificate, and a state dir.
fn check_setup(dir: &Path, port: u16, tls_port: u16) -> PathBuf {
    let (crt, key) = make_cert(dir, "box.lan");
    write(
        dir,
        "p.toml",
        &format!(
            "state_dir = \"{}\"\n[server]\nhost = \"127.0.0.1\"\nport = {port}\n[tls]\nhost = \"127.0.0.1\"\nport = {tls_port}\ncert = \"{}\"\nkey = \"{}\"\n{}",
            dir.join("state").display(),
            crt.display(),
            key.display(),
            app_toml("0123456789abcdefghijklmnopqrstuv")
        ),
    )
}

#[test]
fn check_passes_on_a_good_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("state")).unwrap();
    let cfg = check_setup(dir.path(), free_port(), free_port());
    let out = run(pushbox(&["check", "--config"]).arg(&cfg));
    assert_eq!(out.code, Some(0), "{out}");
    for what in [
        "config",
        "port",
        "tls port",
        "tls key",
        "certificate",
        "state dir",
    ] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with("ok") && l[4..].trim_start().starts_with(what)),
            "no ok line for {what}: {out}"
        );
    }
    assert!(out.stdout.contains("valid for 82"), "{out}");
    assert!(!out.stdout.contains("FAIL"), "{out}");
    // No probe file left behind.
    assert_eq!(
        std::fs::read_dir(dir.path().join("state")).unwrap().count(),
        0
    );
}

#[test]
fn check_fails_naming_a_port_another_program_holds() {
    let dir = tempfile::tempdir().unwrap();
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    // Answer HTTP like something that is not pushbox.
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut s in squatter.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
            );
        }
    });
    let cfg = check_setup(dir.path(), port, free_port());
    let out = run(pushbox(&["check", "--config"]).arg(&cfg));
    assert_eq!(out.code, Some(1), "{out}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("FAIL"))
        .expect("a FAIL line");
    assert!(
        line.contains(&format!("port {port}")) && line.contains("another program"),
        "{out}"
    );
    // The state dir did not exist: it can be created, which is fine.
    assert!(out.stdout.contains("will create it"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_accepts_a_port_held_by_a_running_pushbox() {
    let server = common::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = check_setup(dir.path(), server.addr.port(), free_port());
    let out = tokio::task::spawn_blocking(move || run(pushbox(&["check", "--config"]).arg(&cfg)))
        .await
        .unwrap();
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("held by a running pushbox"), "{out}");
    // ... and a Pusher client with the app's key really connects to it.
    let connects = format!(
        "a client connects to ws://127.0.0.1:{}/app/{} (pusher:connection_established, socket ",
        server.addr.port(),
        common::KEY
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with(&format!("ok    ws {} ", common::APP_ID))
                && l.contains(&connects)),
        "{out}"
    );

    // The config was edited (a new key) but the server not restarted: the running one refuses
    // the key, and check says so instead of "all checks passed".
    let edited = std::fs::read_to_string(dir.path().join("p.toml"))
        .unwrap()
        .replace(
            &format!("key = \"{}\"", common::KEY),
            "key = \"rotatedkey123456\"",
        );
    let cfg = write(dir.path(), "edited.toml", &edited);
    let out = tokio::task::spawn_blocking(move || run(pushbox(&["check", "--config"]).arg(&cfg)))
        .await
        .unwrap();
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stdout.contains(&format!("FAIL  ws {}", common::APP_ID))
            && out
                .stdout
                .contains("does not know key rotatedkey123456: 4001")
            && out.stdout.contains("restart it"),
        "{out}"
    );
}

#[test]
fn check_fails_when_the_key_does_not_match_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = check_setup(dir.path(), free_port(), free_port());
    // Another pair's key in place of this one.
    let other = dir.path().join("other");
    let (_, other_key) = make_cert(&other, "box.lan");
    std::fs::copy(other_key, dir.path().join("pushbox.key")).unwrap();
    let out = run(pushbox(&["check", "--config"]).arg(&cfg));
    assert_eq!(out.code, Some(1), "{out}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("FAIL"))
        .expect("a FAIL line");
    assert!(
        line.contains("tls key") && line.contains("does not belong"),
        "{out}"
    );

    // An unreadable certificate path fails too, naming it.
    let broken = write(
        dir.path(),
        "broken.toml",
        &format!(
            "[server]\nport = {}\n[tls]\nport = {}\ncert = \"/nonexistent/pushbox.crt\"\nkey = \"/nonexistent/pushbox.key\"\n{}",
            free_port(),
            free_port(),
            app_toml("0123456789abcdefghijklmnopqrstuv")
        ),
    );
    let out = run(pushbox(&["check", "--config"])
        .arg(&broken)
        .env("PUSHBOX_STATE_DIR", dir.path()));
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stdout
            .contains("FAIL  certificate  cannot read /nonexistent/pushbox.crt"),
        "{out}"
    );
}

#[test]
fn check_exits_78_on_a_config_missing_a_key_and_warns_on_weak_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "p.toml", "[[apps]]\nid = \"1\"\nkey = \"k\"\n");
    let out = run(pushbox(&["check", "--config"]).arg(&cfg));
    assert_eq!(out.code, Some(78), "{out}");
    assert!(
        out.stdout.starts_with("FAIL  config") && out.stdout.contains("secret"),
        "{out}"
    );

    let weak = write(
        dir.path(),
        "weak.toml",
        &format!(
            "state_dir = \"{}\"\n[server]\nport = {}\n{}",
            dir.path().display(),
            free_port(),
            app_toml("secret")
        ),
    );
    let out = run(pushbox(&["check", "--config"]).arg(&weak));
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stdout.contains("warn") && out.stdout.contains("weak"),
        "{out}"
    );

    // The seed runbook's .env, pasted without generating keys: long enough, but known to all.
    let env = write(
        dir.path(),
        ".env",
        &format!(
            "REVERB_APP_ID=sellermind\nREVERB_APP_KEY=your-generated-key-here\nREVERB_APP_SECRET=your-generated-secret-here\nREVERB_SERVER_HOST=127.0.0.1\nREVERB_SERVER_PORT={}\nPUSHBOX_STATE_DIR={}\n",
            free_port(),
            dir.path().display()
        ),
    );
    let out = run(pushbox(&["check", "--config", "/dev/null", "--env-file"]).arg(&env));
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stdout.contains("warn  app sellermind")
            && out.stdout.contains("key and the secret look")
            && out.stdout.contains("pushbox keygen"),
        "{out}"
    );
}

fn trigger_config(dir: &Path, port: u16, secret: &str) -> PathBuf {
    write(
        dir,
        "p.toml",
        &format!(
            "[server]\nhost = \"127.0.0.1\"\nport = {port}\n{}",
            app_toml(secret)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_reaches_a_websocket_subscriber() {
    let server = common::start(|_| {}).await;
    let mut client = common::Client::connect(server.addr).await;
    let ack = client.subscribe("company.1").await;
    assert_eq!(
        ack["event"], "pusher_internal:subscription_succeeded",
        "{ack}"
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = trigger_config(dir.path(), server.addr.port(), common::SECRET);
    let out = tokio::task::spawn_blocking(move || {
        run(pushbox(&[
            "trigger",
            "--channel",
            "company.1",
            "--event",
            "MarketplaceSyncProgress",
            "--data",
            r#"{"status":"progress","progress":50}"#,
            "--config",
        ])
        .arg(&cfg))
    })
    .await
    .unwrap();
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("200"), "{out}");
    let ev = client.recv_event("MarketplaceSyncProgress").await;
    assert_eq!(ev["channel"], "company.1");
    let data: serde_json::Value = serde_json::from_str(ev["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["progress"], 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_with_a_wrong_secret_prints_the_401() {
    let server = common::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = trigger_config(dir.path(), server.addr.port(), "not-the-secret");
    let out = tokio::task::spawn_blocking(move || {
        run(pushbox(&["trigger", "--channel", "c", "--event", "e", "--config"]).arg(&cfg))
    })
    .await
    .unwrap();
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr.contains("401") && out.stderr.contains("secret"),
        "{out}"
    );
    // The server's own error message is passed on.
    assert!(out.stderr.to_lowercase().contains("signature"), "{out}");
}

#[test]
fn trigger_to_a_closed_port_asks_whether_pushbox_runs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = trigger_config(dir.path(), free_port(), common::SECRET);
    let out = run(pushbox(&["trigger", "--channel", "c", "--event", "e", "--config"]).arg(&cfg));
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr
            .contains("is pushbox running? (systemctl status pushbox)"),
        "{out}"
    );
    // Unknown app: exit 2; a bad URL: exit 2.
    let out = run(pushbox(&[
        "trigger",
        "--channel",
        "c",
        "--event",
        "e",
        "--app",
        "9",
        "--config",
    ])
    .arg(&cfg));
    assert_eq!(out.code, Some(2), "{out}");
    let out = run(pushbox(&[
        "trigger",
        "--channel",
        "c",
        "--event",
        "e",
        "--url",
        "ftp://x",
        "--config",
    ])
    .arg(&cfg));
    assert_eq!(out.code, Some(2), "{out}");
}

/// A real `pushbox serve` with plain and TLS listeners; trigger over https with `--ca`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_over_https_trusting_the_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = make_cert(dir.path(), "box.lan");
    let (port, tls_port) = (free_port(), free_port());
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            "state_dir = \"{}\"\n[server]\nhost = \"127.0.0.1\"\nport = {port}\n[tls]\nhost = \"127.0.0.1\"\nport = {tls_port}\ncert = \"{}\"\nkey = \"{}\"\n{}",
            dir.path().join("state").display(),
            crt.display(),
            key.display(),
            app_toml(common::SECRET)
        ),
    );
    let mut serve = pushbox(&["serve", "--config"]);
    serve.arg(&cfg);
    let _served = served(serve, tls_port);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut client = common::Client::connect(addr).await;
    client.subscribe("company.1").await;

    // check's client probe on both listeners: ws on the plain port, wss on the TLS one.
    let cfg3 = cfg.clone();
    let out = tokio::task::spawn_blocking(move || run(pushbox(&["check", "--config"]).arg(&cfg3)))
        .await
        .unwrap();
    for url in [
        format!("ws://127.0.0.1:{port}/app/{}", common::KEY),
        format!("wss://127.0.0.1:{tls_port}/app/{}", common::KEY),
    ] {
        assert!(
            out.stdout.lines().any(|l| l.starts_with("ok    ws ")
                && l.contains(&format!(
                    "a client connects to {url} (pusher:connection_established"
                ))),
            "{url}\n{out}"
        );
    }

    let url = format!("https://127.0.0.1:{tls_port}");
    let (cfg2, crt2, url2) = (cfg.clone(), crt.clone(), url.clone());
    let out = tokio::task::spawn_blocking(move || {
        run(pushbox(&[
            "trigger",
            "--channel",
            "company.1",
            "--event",
            "tls-test",
            "--url",
            &url2,
            "--ca",
        ])
        .arg(&crt2)
        .arg("--config")
        .arg(&cfg2))
    })
    .await
    .unwrap();
    assert_eq!(out.code, Some(0), "{out}");
    client.recv_event("tls-test").await;

    // A name the certificate does not carry: a TLS error with advice, exit 1.
    let out = tokio::task::spawn_blocking(move || {
        run(pushbox(&[
            "trigger",
            "--channel",
            "c",
            "--event",
            "e",
            "--url",
            &format!("https://localhost:{tls_port}"),
            "--ca",
        ])
        .arg(&crt)
        .arg("--config")
        .arg(&cfg))
    })
    .await
    .unwrap();
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr.contains("TLS handshake") && out.stderr.contains("--url https://NAME:PORT"),
        "{out}"
    );
}

#[test]
fn cert_self_signed_writes_a_private_key_and_a_certificate_for_every_name() {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("tls");
    let out = run(pushbox(&[
        "cert",
        "self-signed",
        "--host",
        "box.lan",
        "--host",
        "pushbox.local",
        "--ip",
        "192.168.1.10",
        "--days",
        "90",
        "--out",
    ])
    .arg(&out_dir));
    assert_eq!(out.code, Some(0), "{out}");
    for needle in [
        "update-ca-certificates",
        "/usr/local/share/ca-certificates",
        "NODE_EXTRA_CA_CERTS=",
        "REQUESTS_CA_BUNDLE=",
        "SSL_CERT_FILE=",
        "PUSHBOX_TLS_CERT=",
        "PUSHBOX_TLS_KEY=",
        "[tls]",
    ] {
        assert!(out.stdout.contains(needle), "missing {needle}: {out}");
    }
    let key_path = out_dir.join("pushbox.key");
    let crt_path = out_dir.join("pushbox.crt");
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Parseable PEM; the key belongs to the certificate.
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&crt_path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(certs.len(), 1);
    let key = PrivateKeyDer::from_pem_file(&key_path).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::sign::CertifiedKey::from_der(certs.clone(), key, &provider)
        .expect("key matches certificate");

    // A client trusting the certificate accepts it for every name (SAN + serverAuth), and only those.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certs[0].clone()).unwrap();
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
    let verify = |name: &str| {
        verifier.verify_server_cert(
            &certs[0],
            &[],
            &ServerName::try_from(name.to_owned()).unwrap(),
            &[],
            UnixTime::now(),
        )
    };
    for name in ["box.lan", "pushbox.local", "192.168.1.10"] {
        verify(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(verify("other.lan").is_err());
    // Valid for --days, not longer.
    let in_91_days = UnixTime::since_unix_epoch(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            + Duration::from_secs(91 * 86_400),
    );
    assert!(verifier
        .verify_server_cert(
            &certs[0],
            &[],
            &ServerName::try_from("box.lan").unwrap(),
            &[],
            in_91_days
        )
        .is_err());

    // Refuses to overwrite; --force replaces both files.
    let before = std::fs::read(&key_path).unwrap();
    let again = run(pushbox(&["cert", "self-signed", "--host", "box.lan", "--out"]).arg(&out_dir));
    assert_eq!(again.code, Some(1), "{again}");
    assert!(
        again.stderr.contains("already exists") && again.stderr.contains("--force"),
        "{again}"
    );
    assert_eq!(std::fs::read(&key_path).unwrap(), before);
    let forced = run(pushbox(&[
        "cert",
        "self-signed",
        "--host",
        "box.lan",
        "--force",
        "--out",
    ])
    .arg(&out_dir));
    assert_eq!(forced.code, Some(0), "{forced}");
    assert_ne!(std::fs::read(&key_path).unwrap(), before);
    assert_eq!(
        std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Bad input: exit 2 with a message.
    let bad = run(pushbox(&[
        "cert",
        "self-signed",
        "--host",
        "box.lan",
        "--ip",
        "not-an-ip",
        "--out",
    ])
    .arg(dir.path()));
    assert_eq!(bad.code, Some(2), "{bad}");
    assert!(bad.stderr.contains("not-an-ip"), "{bad}");
}

#[test]
fn check_warns_when_the_certificate_expires_within_30_days() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = check_setup(dir.path(), free_port(), free_port());
    let out = run(pushbox(&[
        "cert",
        "self-signed",
        "--host",
        "box.lan",
        "--days",
        "10",
        "--force",
        "--out",
    ])
    .arg(dir.path()));
    assert_eq!(out.code, Some(0), "{out}");
    let out = run(pushbox(&["check", "--config"]).arg(&cfg));
    assert_eq!(out.code, Some(0), "{out}");
    let line = out
        .stdout
        .lines()
        .find(|l| {
            l.get(4..)
                .is_some_and(|r| r.trim_start().starts_with("certificate"))
        })
        .expect("a certificate line");
    assert!(
        line.starts_with("warn") && line.contains("expires in 8 days") && line.contains("renew"),
        "{out}"
    );
}

/// The README's first command, then the operator's commands against it with `--dev`: they use
/// the app `serve --dev` saved, never a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_commands_use_the_app_serve_dev_saved() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let dev = |args: &[&str]| {
        let mut c = pushbox(args);
        c.current_dir(dir.path())
            .env("REVERB_SERVER_PORT", port.to_string());
        c
    };
    let banner = dir.path().join("banner.txt");
    let mut serve = dev(&["serve", "--dev"]);
    serve
        .env("PUSHBOX_LOG", "warn")
        .stdout(std::fs::File::create(&banner).unwrap())
        .stderr(Stdio::null());
    let served = tokio::task::block_in_place(|| Served::start(&mut serve, port, Ready::Up));
    let saved = std::fs::read_to_string(dir.path().join(".pushbox-dev/dev-app.toml")).unwrap();
    let saved: toml::Table = toml::from_str(&saved).unwrap();
    let (id, key, password) = (
        saved["id"].as_str().unwrap().to_owned(),
        saved["key"].as_str().unwrap().to_owned(),
        saved["console_password"].as_str().unwrap().to_owned(),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // The console is on, with the password printed beside the keys (and saved with them).
    let banner = std::fs::read_to_string(&banner).unwrap();
    assert!(
        banner.contains(&format!("REVERB_APP_KEY={key}")),
        "{banner}"
    );
    assert!(
        banner.contains(&format!("console: http://127.0.0.1:{port}/console"))
            && banner.contains(&format!("admin password: {password}")),
        "{banner}"
    );
    let (status, body) = common::http_blocking(addr, "GET", "/console", "").unwrap();
    assert_eq!(status, 200, "{body}");
    let login = serde_json::json!({ "password": password }).to_string();
    let (status, body) = common::http_blocking(addr, "POST", "/console/login", &login).unwrap();
    assert_eq!(status, 200, "{body}");

    // A second dev server on the port says a pushbox serves there, before printing any keys.
    let out = run(&mut dev(&["serve", "--dev"]));
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr
            .contains(&format!("a pushbox already serves on 127.0.0.1:{port}")),
        "{out}"
    );
    assert!(out.stdout.is_empty(), "{out}");
    let mut client = common::Client::connect_key(addr, &key).await;
    client.subscribe("orders").await;

    let trigger = dev(&[
        "trigger",
        "--dev",
        "--channel",
        "orders",
        "--event",
        "OrderShipped",
        "--data",
        r#"{"id":7}"#,
    ]);
    let out = tokio::task::spawn_blocking(move || run(&mut { trigger }))
        .await
        .unwrap();
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains(&format!("(app {id})")), "{out}");
    let ev = client.recv_event("OrderShipped").await;
    assert_eq!(ev["data"], r#"{"id":7}"#);

    // The event log of the dev state directory has it, with the one socket it reached.
    let out = run(&mut dev(&["events", "tail", "--dev", "-n", "1"]));
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stdout.contains("OrderShipped") && out.stdout.contains("orders→1"),
        "{out}"
    );
    let out = run(&mut dev(&["check", "--dev"]));
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("held by a running pushbox"), "{out}");
    let out = run(&mut dev(&["env", "--dev"]));
    assert!(
        out.stdout.contains(&format!("REVERB_APP_KEY={key}")),
        "{out}"
    );
    assert!(out.stdout.contains(&format!("REVERB_PORT={port}")), "{out}");
    // Dev-mode advice: how to let a phone in, not which config file to edit.
    assert!(
        out.stderr.contains("pushbox serve --dev --host 0.0.0.0")
            && !out.stderr.contains("[server]"),
        "{out}"
    );
    // An empty queue has nothing queued (its spool headers are not queued bytes).
    let out = run(&mut dev(&["queue", "status", "--dev"]));
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stdout
            .contains("queued bytes:    0 pending, 0 in dead letters"),
        "{out}"
    );
    drop(served);

    // The dev server stopped: trigger says to start it, not to ask systemd.
    let out = run(&mut dev(&[
        "trigger",
        "--dev",
        "--channel",
        "c",
        "--event",
        "e",
    ]));
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr.contains("start `pushbox serve --dev`") && !out.stderr.contains("systemctl"),
        "{out}"
    );

    // Where `serve --dev` never ran: exit 78, saying what to do, and no keys are made.
    let empty = tempfile::tempdir().unwrap();
    let out = run(
        pushbox(&["trigger", "--dev", "--channel", "c", "--event", "e"]).current_dir(empty.path()),
    );
    assert_eq!(out.code, Some(78), "{out}");
    assert!(
        out.stderr.contains("no dev app") && out.stderr.contains("pushbox serve --dev"),
        "{out}"
    );
    assert!(!empty.path().join(".pushbox-dev").exists());
    // --dev and --config name two different configurations: refused, saying what to do.
    for cmd in [&["queue", "status"][..], &["serve"][..]] {
        let mut c = pushbox(cmd);
        c.args(["--dev", "--config", "/nonexistent.toml"]);
        let out = run(&mut c);
        assert_eq!(out.code, Some(2), "{out}");
        assert!(
            out.stderr.contains("cannot be used together") && out.stderr.contains("drop one"),
            "{out}"
        );
    }
}

/// `pushbox … | head`: when the reader has gone, a command ends quietly by SIGPIPE like any Unix
/// tool, instead of panicking with "failed printing to stdout: Broken pipe".
#[test]
fn a_command_whose_reader_went_away_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    for args in [&["keygen"][..], &["version"][..], &["env", "--dev"][..]] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".pushbox-dev")).unwrap();
        write(
            &dir.path().join(".pushbox-dev"),
            "dev-app.toml",
            "id = \"1\"\nkey = \"k\"\nsecret = \"s\"\n",
        );
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = pushbox(args)
            .current_dir(dir.path())
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(
            out.status.signal(),
            Some(nix::sys::signal::Signal::SIGPIPE as i32),
            "{args:?}: {:?} {stderr}",
            out.status
        );
    }
}
