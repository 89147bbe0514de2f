//! Loading the whole configuration: file, environment and validation together, and the bounds
//! and defaults each section promises.

use super::*;
use std::collections::HashMap;
use std::time::Duration;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn write(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("pushbox.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A directory removed when the test ends (pass or fail).
fn tmpdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("pushbox-config-{name}-"))
        .tempdir()
        .unwrap()
}

#[test]
fn laravel_env_defines_an_app() {
    let e = env(&[
        ("REVERB_APP_ID", "1"),
        ("REVERB_APP_KEY", "k"),
        ("REVERB_APP_SECRET", "s"),
        ("REVERB_SERVER_PORT", "8090"),
        ("PUSHBOX_STATE_DIR", "/tmp/x"),
    ]);
    let c = load(Some(Path::new("/nonexistent/pushbox.toml")), &e);
    assert!(
        matches!(c, Err(ConfigError::Read { .. })),
        "explicit missing file is an error"
    );
    let c = load(None, &e).unwrap();
    assert_eq!(c.apps.len(), 1);
    assert_eq!(c.apps[0].key, "k");
    assert!(c.apps[0].client_events && c.apps[0].user_authentication);
    assert_eq!(c.server.port, 8090);
    assert_eq!(c.server.host, "0.0.0.0");
    assert_eq!(c.state_dir, PathBuf::from("/tmp/x"));
    // Messages (and `pushbox check`) say where the app came from, not a file that isn't there.
    assert_eq!(
        c.source,
        format!("the environment (there is no {DEFAULT_CONFIG_PATH})")
    );
}

#[test]
fn pusher_aliases_and_partial_env() {
    let e = env(&[
        ("PUSHER_APP_ID", "1"),
        ("PUSHER_APP_KEY", "k"),
        ("PUSHER_APP_SECRET", "s"),
    ]);
    assert_eq!(load(None, &e).unwrap().apps[0].id, "1");
    let e = env(&[("REVERB_APP_ID", "1")]);
    let err = load(None, &e).unwrap_err().to_string();
    assert!(
        err.contains("REVERB_APP_KEY") && err.contains("REVERB_APP_SECRET"),
        "{err}"
    );
    let e = env(&[
        ("REVERB_APP_ID", "1"),
        ("REVERB_APP_KEY", "k"),
        ("REVERB_APP_SECRET", "s"),
        ("REVERB_SERVER_PORT", "http"),
    ]);
    assert!(load(None, &e)
        .unwrap_err()
        .to_string()
        .contains("REVERB_SERVER_PORT"));
    let err = load(None, &env(&[])).unwrap_err().to_string();
    assert!(err.contains("no app configured"), "{err}");
}

#[test]
fn toml_file_with_several_apps() {
    let tmp = tmpdir("apps");
    let d = tmp.path();
    let p = write(d, "state_dir = \"/srv/pb\"\n[server]\nport = 6001\nactivity_timeout = 120\n[[apps]]\nid = \"a\"\nkey = \"ka\"\nsecret = \"sa\"\nclient_events = false\nmax_presence_members = 2\n[[apps]]\nid = \"b\"\nkey = \"kb\"\nsecret = \"sb\"\nallowed_origins = [\"https://shop.example\"]\n");
    let c = load(Some(&p), &env(&[])).unwrap();
    assert_eq!(c.apps.len(), 2);
    assert!(!c.apps[0].client_events);
    assert_eq!(c.apps[0].max_presence_members, 2);
    assert_eq!(c.server.port, 6001);
    assert_eq!(c.state_dir, PathBuf::from("/srv/pb"));
    assert!(c.apps[1].origin_allowed(Some("https://shop.example")));
    assert!(!c.apps[1].origin_allowed(Some("https://evil.example")));
    assert!(c.apps[1].origin_allowed(None));
    assert!(c.apps[0].origin_allowed(Some("http://anything")));
}

#[test]
fn errors_name_the_file_and_the_key() {
    let tmp = tmpdir("errors");
    let d = tmp.path();
    let p = write(
        d,
        "[[apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"s\"\nclient_event = true\n",
    );
    let err = load(Some(&p), &env(&[])).unwrap_err().to_string();
    assert!(
        err.contains("pushbox.toml") && err.contains("client_event"),
        "{err}"
    );
    let p = write(d, "[server\n");
    let err = load(Some(&p), &env(&[])).unwrap_err().to_string();
    assert!(err.contains("pushbox.toml"), "{err}");
    assert!(!err.contains('\n'));
    let p = write(d, "[[apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"s\"\n[[apps]]\nid = \"b\"\nkey = \"k\"\nsecret = \"s\"\n");
    assert!(load(Some(&p), &env(&[]))
        .unwrap_err()
        .to_string()
        .contains("unique"));
    let p = write(
        d,
        "[server]\nactivity_timeout = 0\n[[apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"s\"\n",
    );
    assert!(load(Some(&p), &env(&[]))
        .unwrap_err()
        .to_string()
        .contains("activity_timeout"));
    let p = write(d, "[[apps]]\nid = \"a\"\nkey = \"k\"\n");
    assert!(load(Some(&p), &env(&[]))
        .unwrap_err()
        .to_string()
        .contains("secret"));
    let p = write(
        d,
        "[server]\ncoalesce_ms = 50\n[[apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"s\"\n",
    );
    assert!(load(Some(&p), &env(&[]))
        .unwrap_err()
        .to_string()
        .contains("coalesce_ms"));
    let p = write(d, "[server]\nport = 70000\n");
    assert!(load(Some(&p), &env(&[])).is_err());
}

#[test]
fn console_and_metrics_sections() {
    let tmp = tmpdir("console");
    let d = tmp.path();
    let app = "[[apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"s\"\n";
    let p = write(d, app);
    let c = load(Some(&p), &env(&[])).unwrap();
    assert!(c.console.is_none(), "no [console]: no console");
    assert!(c.metrics.enabled && c.metrics.token.is_none() && c.metrics.allow.is_empty());
    let p = write(d, &format!("[console]\npassword = \"correct horse\"\nsession_secs = 60\n[metrics]\ntoken = \"t0k\"\nallow = [\"127.0.0.1/32\", \"::1\"]\n{app}"));
    let c = load(Some(&p), &env(&[])).unwrap();
    let con = c.console.unwrap();
    assert_eq!(con.password.as_deref(), Some("correct horse"));
    assert!(con.app_login);
    assert_eq!(con.session_lifetime, Duration::from_secs(60));
    assert_eq!(c.metrics.token.as_deref(), Some("t0k"));
    let p = write(d, &format!("[console]\n{app}"));
    let c = load(
        Some(&p),
        &env(&[("PUSHBOX_CONSOLE_PASSWORD", "from-env-123")]),
    )
    .unwrap();
    assert_eq!(c.console.unwrap().password.as_deref(), Some("from-env-123"));
    for (bad, what) in [
        ("[console]\npassword = \"short\"\n", "console.password"),
        ("[console]\napp_login = false\n", "nobody could sign in"),
        ("[console]\nsession_secs = 0\n", "session_secs"),
        ("[metrics]\nallow = [\"10.0.0.0/33\"]\n", "metrics.allow"),
        ("[metrics]\nallow = [\"localhost\"]\n", "metrics.allow"),
        ("[metrics]\ntoken = \"\"\n", "metrics.token"),
    ] {
        let p = write(d, &format!("{bad}{app}"));
        let err = load(Some(&p), &env(&[])).unwrap_err().to_string();
        assert!(err.contains(what), "{bad}: {err}");
    }
}

const APP: &str = "[[apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"s\"\n";

/// The error `load` gives for `toml` (plus one app), as one line.
fn load_error(toml: &str) -> String {
    let tmp = tmpdir("bounds");
    let p = write(tmp.path(), &format!("{toml}{APP}"));
    load(Some(&p), &env(&[])).unwrap_err().to_string()
}

#[test]
fn a_file_with_only_an_app_takes_every_section_default() {
    let tmp = tmpdir("defaults");
    let p = write(tmp.path(), APP);
    let c = load(Some(&p), &env(&[])).unwrap();
    let s = &c.server;
    assert_eq!((s.host.as_str(), s.port), ("0.0.0.0", 8080));
    assert_eq!(s.activity_timeout, Duration::from_secs(30));
    assert_eq!(s.pong_timeout, Duration::from_secs(30));
    assert_eq!((s.ws_path.as_str(), s.http_path.as_str()), ("", "/pusher"));
    assert_eq!((s.max_request_bytes, s.outbound_queue), (1024 * 1024, 512));
    assert!(s.plain);
    assert_eq!(s.coalesce, Duration::ZERO);
    assert_eq!(s.fallback_session_timeout, None);
    assert_eq!(s.max_fallback_sessions, 10_000);
    assert_eq!(s.request_timeout, Duration::from_secs(30));
    assert_eq!(s.max_connections_per_ip, 1_000);
    assert_eq!(c.spool.durability, Durability::Fsync);
    assert_eq!(c.spool.max_bytes, 1 << 30);
    assert_eq!(c.spool.events_retain_bytes, 256 << 20);
    assert_eq!(c.spool.events_retain_age, Duration::from_secs(604_800));
    let w = &c.webhooks;
    assert_eq!(w.batch_window, Duration::from_millis(10));
    assert_eq!(w.batch_max_events, 20);
    assert_eq!(w.timeout, Duration::from_millis(4000));
    assert_eq!(w.backoff_initial, Duration::from_millis(1000));
    assert_eq!(w.backoff_max, Duration::from_millis(300_000));
    assert_eq!(w.max_age, Duration::from_secs(86_400));
    assert_eq!(w.ca_file, None);
    assert!(c.tls.is_none() && c.console.is_none() && c.user.is_none());
    assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    let a = &c.apps[0];
    assert!(a.enabled && a.client_events && a.user_authentication && a.watchlist);
    assert!(!a.subscription_count);
    assert_eq!(a.allowed_origins, vec!["*".to_string()]);
    assert_eq!((a.max_connections, a.max_message_bytes), (10_000, 10_240));
    assert_eq!(a.max_channels_per_connection, 100);
    assert_eq!(
        (a.max_presence_members, a.max_presence_user_info_bytes),
        (100, 1024)
    );
    assert_eq!(a.max_presence_user_id_length, 128);
    assert_eq!(
        (a.max_event_data_bytes, a.max_channels_per_event),
        (10_240, 100)
    );
    assert_eq!(a.max_batch_events, 10);
    assert_eq!(
        (a.max_event_name_length, a.max_channel_name_length),
        (200, 200)
    );
    assert_eq!(a.client_event_rate, 10);
    assert!(a.webhook_url.is_none() && a.webhooks.is_empty());
    // The env app and `--dev` get the same defaults as a file app.
    let built = AppConfig::with_defaults("a", "k", "s");
    assert_eq!(format!("{built:?}"), format!("{a:?}"));
}

#[test]
fn partial_sections_keep_their_other_defaults() {
    let tmp = tmpdir("partial");
    let p = write(
        tmp.path(),
        &format!("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n[console]\npassword = \"12345678\"\n[webhooks]\nbatch_ms = 25\n{APP}"),
    );
    let c = load(Some(&p), &env(&[])).unwrap();
    let tls = c.tls.unwrap();
    assert_eq!((tls.host.as_str(), tls.port), ("0.0.0.0", 443));
    let con = c.console.unwrap();
    assert!(con.app_login);
    assert_eq!(con.session_lifetime, Duration::from_secs(8 * 3600));
    assert_eq!(c.webhooks.batch_window, Duration::from_millis(25));
    assert_eq!(c.webhooks.timeout, Duration::from_millis(4000));
}

#[test]
fn durations_keep_their_units() {
    let tmp = tmpdir("units");
    let p = write(
        tmp.path(),
        &format!("[server]\nactivity_timeout = 120\npong_timeout = 7\ncoalesce_ms = 3\nfallback_session_timeout = 45\n[spool]\nevents_retain_secs = 60\n[webhooks]\ntimeout_ms = 1500\nbackoff_initial_ms = 50\nbackoff_max_ms = 200\nmax_age_secs = 90\n[console]\nsession_secs = 600\n{APP}"),
    );
    let c = load(Some(&p), &env(&[])).unwrap();
    assert_eq!(c.server.activity_timeout, Duration::from_secs(120));
    assert_eq!(c.server.pong_timeout, Duration::from_secs(7));
    assert_eq!(c.server.coalesce, Duration::from_millis(3));
    assert_eq!(
        c.server.fallback_session_timeout,
        Some(Duration::from_secs(45))
    );
    assert_eq!(c.spool.events_retain_age, Duration::from_secs(60));
    assert_eq!(c.webhooks.timeout, Duration::from_millis(1500));
    assert_eq!(c.webhooks.backoff_initial, Duration::from_millis(50));
    assert_eq!(c.webhooks.backoff_max, Duration::from_millis(200));
    assert_eq!(c.webhooks.max_age, Duration::from_secs(90));
    assert_eq!(
        c.console.unwrap().session_lifetime,
        Duration::from_secs(600)
    );
    // The Rust field names are not TOML keys: the file keeps its own.
    assert!(load_error("[server]\ncoalesce = 3\n").contains("coalesce"));
}

#[test]
fn durations_past_their_bounds_are_errors_naming_the_key_and_the_range() {
    let huge = i64::MAX; // the largest integer TOML has
    for (toml, key, range) in [
        (
            format!("[server]\nactivity_timeout = {huge}\n"),
            "server.activity_timeout",
            "1 to 86400 (seconds)",
        ),
        (
            "[server]\nactivity_timeout = 86401\n".into(),
            "server.activity_timeout",
            "1 to 86400 (seconds)",
        ),
        (
            format!("[server]\npong_timeout = {huge}\n"),
            "server.pong_timeout",
            "1 to 86400 (seconds)",
        ),
        (
            "[server]\npong_timeout = 0\n".into(),
            "server.pong_timeout",
            "1 to 86400 (seconds)",
        ),
        (
            format!("[server]\nfallback_session_timeout = {huge}\n"),
            "server.fallback_session_timeout",
            "0 to 86400 (seconds)",
        ),
        (
            "[server]\ncoalesce_ms = 21\n".into(),
            "server.coalesce_ms",
            "0 to 20 (milliseconds)",
        ),
        (
            format!("[spool]\nevents_retain_secs = {huge}\n"),
            "spool.events_retain_secs",
            "0 to 315360000 (seconds)",
        ),
        (
            format!("[webhooks]\nbatch_ms = {huge}\n"),
            "webhooks.batch_ms",
            "0 to 86400000 (milliseconds)",
        ),
        (
            "[webhooks]\ntimeout_ms = 0\n".into(),
            "webhooks.timeout_ms",
            "1 to 86400000 (milliseconds)",
        ),
        (
            format!("[webhooks]\nbackoff_initial_ms = {huge}\n"),
            "webhooks.backoff_initial_ms",
            "0 to 86400000 (milliseconds)",
        ),
        (
            format!("[webhooks]\nbackoff_max_ms = {huge}\n"),
            "webhooks.backoff_max_ms",
            "0 to 86400000 (milliseconds)",
        ),
        (
            format!("[webhooks]\nmax_age_secs = {huge}\n"),
            "webhooks.max_age_secs",
            "0 to 315360000 (seconds)",
        ),
        (
            format!("[console]\nsession_secs = {huge}\n"),
            "console.session_secs",
            "1 to 315360000 (seconds)",
        ),
    ] {
        let err = load_error(&toml);
        assert!(err.contains(key) && err.contains(range), "{toml}: {err}");
        assert!(!err.contains('\n'), "{err}");
    }
    // The largest allowed values load.
    let tmp = tmpdir("max");
    let p = write(
        tmp.path(),
        &format!("[server]\nactivity_timeout = 86400\npong_timeout = 86400\nfallback_session_timeout = 0\ncoalesce_ms = 20\n[webhooks]\nbackoff_max_ms = 86400000\n{APP}"),
    );
    assert!(load(Some(&p), &env(&[])).is_ok());
}

#[test]
fn a_number_too_large_for_toml_names_the_key() {
    let err = load_error("[server]\nactivity_timeout = 18446744073709551615\n");
    assert!(
        err.contains("pushbox.toml") && err.contains("activity_timeout"),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn apps_and_tls_need_their_credentials() {
    let err = load_error("[[apps]]\nid = \"b\"\nkey = \"kb\"\n");
    assert!(err.contains("app \"b\"") && err.contains("secret"), "{err}");
    let err = load_error("[tls]\ncert = \"c.pem\"\n");
    assert!(err.contains("[tls]") && err.contains("key"), "{err}");
}

#[test]
fn dev_config_is_every_default_on_localhost_with_the_console_on() {
    let app = AppConfig::with_defaults("1", "k", "s");
    let dev = |e: &HashMap<String, String>| {
        let dev = DevApp::new(app.clone(), Some("dev console pw".into()));
        Config::dev(PathBuf::from("/tmp/dev"), dev, e)
    };
    let c = dev(&env(&[])).unwrap();
    assert_eq!((c.server.host.as_str(), c.server.port), ("127.0.0.1", 8080));
    assert_eq!(c.state_dir, PathBuf::from("/tmp/dev"));
    assert_eq!(c.source, "pushbox serve --dev");
    assert!(c.tls.is_none() && c.metrics.enabled);
    let console = c.console.expect("the console is on in dev mode");
    assert_eq!(console.password.as_deref(), Some("dev console pw"));
    assert!(c.apps[0].webhook_targets().is_empty());
    let e = env(&[("REVERB_SERVER_PORT", "6001"), ("REVERB_APP_ID", "ignored")]);
    let c = dev(&e).unwrap();
    assert_eq!(c.server.port, 6001);
    assert_eq!(c.apps.len(), 1, "only the dev app");
    let bad = env(&[("REVERB_SERVER_PORT", "http")]);
    let err = dev(&bad).unwrap_err().to_string();
    assert!(err.contains("REVERB_SERVER_PORT"), "{err}");
    // Where the dev server last listened, for the other --dev commands; the variable wins.
    let last = DevApp {
        host: Some("0.0.0.0".into()),
        port: Some(9000),
        ..DevApp::new(app.clone(), None)
    };
    let c = Config::dev(PathBuf::from("/tmp/dev"), last.clone(), &env(&[])).unwrap();
    assert_eq!((c.server.host.as_str(), c.server.port), ("0.0.0.0", 9000));
    let c = Config::dev(PathBuf::from("/tmp/dev"), last, &e).unwrap();
    assert_eq!(c.server.port, 6001);
    assert_eq!(
        Config::dev_state_dir(&env(&[])),
        PathBuf::from(DEV_STATE_DIR)
    );
    let e = env(&[("PUSHBOX_STATE_DIR", "/srv/x")]);
    assert_eq!(Config::dev_state_dir(&e), PathBuf::from("/srv/x"));
}

/// pushbox's own variables apply to `--dev` as they do without it.
#[test]
fn dev_config_takes_the_pushbox_variables() {
    let app = AppConfig::with_defaults("1", "k", "s");
    let e = env(&[
        ("PUSHBOX_WEBHOOK_URL", "http://127.0.0.1:9/hooks"),
        ("PUSHBOX_CONSOLE_PASSWORD", "from the environment"),
        ("PUSHBOX_METRICS_TOKEN", "t0k"),
        ("PUSHBOX_TLS_CERT", "c.pem"),
        ("PUSHBOX_TLS_KEY", "k.pem"),
    ]);
    let dev = DevApp::new(app.clone(), Some("saved pw".into()));
    let c = Config::dev(PathBuf::from("/tmp/dev"), dev, &e).unwrap();
    let targets = c.apps[0].webhook_targets();
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0].url, "http://127.0.0.1:9/hooks");
    assert_eq!(
        c.console.and_then(|c| c.password).as_deref(),
        Some("from the environment")
    );
    assert_eq!(c.metrics.token.as_deref(), Some("t0k"));
    assert_eq!(c.tls.map(|t| t.cert), Some(PathBuf::from("c.pem")));
    // The same rules as without --dev: a short console password is refused, naming it.
    let short = env(&[("PUSHBOX_CONSOLE_PASSWORD", "short")]);
    let err = Config::dev(PathBuf::from("/tmp/dev"), DevApp::new(app, None), &short)
        .unwrap_err()
        .to_string();
    assert!(err.contains("console.password"), "{err}");
}

#[test]
fn per_address_limit_and_request_timeout_from_file_and_env() {
    let tmp = tmpdir("per-ip");
    let file = format!("[server]\nrequest_timeout = 5\nmax_connections_per_ip = 20\n{APP}");
    let p = write(tmp.path(), &file);
    let c = load(Some(&p), &env(&[])).unwrap();
    assert_eq!(c.server.request_timeout, Duration::from_secs(5));
    assert_eq!(c.server.max_connections_per_ip, 20);
    let c = load(Some(&p), &env(&[("PUSHBOX_MAX_CONNECTIONS_PER_IP", "0")])).unwrap();
    assert_eq!(
        c.server.max_connections_per_ip, 0,
        "the environment wins; 0 = no limit"
    );
    let err = load(
        Some(&p),
        &env(&[("PUSHBOX_MAX_CONNECTIONS_PER_IP", "lots")]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("PUSHBOX_MAX_CONNECTIONS_PER_IP"), "{err}");
    let zero = write(tmp.path(), &format!("[server]\nrequest_timeout = 0\n{APP}"));
    let err = load(Some(&zero), &env(&[])).unwrap_err().to_string();
    assert!(err.contains("server.request_timeout"), "{err}");
}

#[test]
fn cluster_is_off_by_default_and_its_keys_load_from_file_and_environment() {
    let tmp = tmpdir("cluster");
    let p = write(tmp.path(), APP);
    let c = load(Some(&p), &env(&[])).unwrap();
    assert!(!c.cluster.enabled(), "no redis_url: a single box");
    assert_eq!(c.cluster.key_prefix, "pb");
    assert_eq!(c.cluster.lease, Duration::from_secs(15));
    assert_eq!(c.cluster.heartbeat, Duration::from_secs(3));

    let p = write(
        tmp.path(),
        &format!("[cluster]\nredis_url = \"redis://u:pw@10.0.0.5:6379/2\"\nlease = \"20s\"\nheartbeat = \"500ms\"\nmax_lag = 30\nnode_name = \"box-1\"\n{APP}"),
    );
    let c = load(Some(&p), &env(&[])).unwrap();
    assert!(c.cluster.enabled());
    assert_eq!(c.cluster.lease, Duration::from_secs(20));
    assert_eq!(c.cluster.heartbeat, Duration::from_millis(500));
    assert_eq!(c.cluster.max_lag, Duration::from_secs(30));
    assert_eq!(c.cluster.node_name.as_deref(), Some("box-1"));

    let e = env(&[
        ("PUSHBOX_REDIS_URL", "rediss://redis.lan:6380"),
        ("PUSHBOX_CLUSTER_PREFIX", "shop2"),
        ("PUSHBOX_NODE_NAME", "box-2"),
    ]);
    let c = load(Some(&p), &e).unwrap();
    assert_eq!(
        c.cluster.redis_url.as_deref(),
        Some("rediss://redis.lan:6380")
    );
    assert_eq!(c.cluster.key_prefix, "shop2");
    assert_eq!(c.cluster.node_name.as_deref(), Some("box-2"));
}

#[test]
fn cluster_mistakes_name_the_key_and_hide_the_password() {
    let cases = [
        ("redis_url = \"http://u:hunter2@x\"\n", "redis://"),
        (
            "redis_url = \"redis://x\"\nkey_prefix = \"a b\"\n",
            "cluster.key_prefix",
        ),
        (
            "redis_url = \"redis://x\"\nnode_name = \"a|b\"\n",
            "cluster.node_name",
        ),
        (
            "redis_url = \"redis://x\"\nlease = \"2s\"\nheartbeat = \"1s\"\n",
            "three heartbeats",
        ),
        (
            "redis_url = \"redis://x\"\nheartbeat = \"10ms\"\n",
            "cluster.heartbeat",
        ),
        (
            "redis_url = \"redis://x\"\nlease = \"1h\"\n",
            "cluster.lease",
        ),
    ];
    for (keys, want) in cases {
        let e = load_error(&format!("[cluster]\n{keys}"));
        assert!(e.contains(want), "{keys}: {e}");
        assert!(!e.contains("hunter2"), "the password is not shown: {e}");
    }
    assert!(load_error("[cluster]\nlease = \"15 parsecs\"\n").contains("not a duration"));
}

#[test]
fn the_resume_section_takes_units_and_the_environment_overrides_it() {
    let dir = tmpdir("resume");
    let app = "[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n";
    let c = load(Some(&write(dir.path(), app)), &env(&[])).unwrap();
    assert!(c.resume.enabled && c.resume.match_user && !c.resume.failure_event);
    assert_eq!(c.resume.window, Duration::from_secs(120));
    assert_eq!((c.resume.max_events, c.resume.max_bytes), (300, 1 << 20));
    assert_eq!(c.resume.path_prefix, "/r");
    let text = format!(
        "[resume]\nwindow = \"2m\"\nmax_bytes = \"512KiB\"\nstall_guard = \"250ms\"\n{app}"
    );
    let c = load(Some(&write(dir.path(), &text)), &env(&[])).unwrap();
    assert_eq!(c.resume.window, Duration::from_secs(120));
    assert_eq!(c.resume.max_bytes, 512 * 1024);
    assert_eq!(c.resume.stall_guard, Duration::from_millis(250));
    let e = env(&[
        ("PUSHBOX_RESUME_ENABLED", "false"),
        ("PUSHBOX_RESUME_WINDOW", "30s"),
        ("PUSHBOX_RESUME_MAX_EVENTS", "50"),
        ("PUSHBOX_RESUME_FAILURE_EVENT", "1"),
    ]);
    let c = load(Some(&write(dir.path(), app)), &e).unwrap();
    assert!(!c.resume.enabled && c.resume.failure_event);
    assert_eq!(c.resume.window, Duration::from_secs(30));
    assert_eq!(c.resume.max_events, 50);
    let bad = load(
        Some(&write(dir.path(), app)),
        &env(&[("PUSHBOX_RESUME_WINDOW", "soon")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        bad.contains("PUSHBOX_RESUME_WINDOW") && bad.contains("120s"),
        "{bad}"
    );
    for (toml, key) in [
        ("[resume]\nwindow = \"0s\"\n", "resume.window"),
        ("[resume]\nmax_events = 100000\n", "resume.max_events"),
        ("[resume]\npath_prefix = \"r\"\n", "resume.path_prefix"),
    ] {
        let err = load(Some(&write(dir.path(), &format!("{toml}{app}"))), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{err}");
    }
}

#[test]
fn memory_pressure_and_open_files_reserve_from_file_with_bounds() {
    let tmp = tmpdir("memory");
    let c = load(Some(&write(tmp.path(), APP)), &env(&[])).unwrap();
    assert_eq!(
        (
            c.server.memory_pressure_percent,
            c.server.open_files_reserve
        ),
        (90, 64)
    );
    let file = format!("[server]\nmemory_pressure_percent = 80\nopen_files_reserve = 200\n{APP}");
    let c = load(Some(&write(tmp.path(), &file)), &env(&[])).unwrap();
    assert_eq!(
        (
            c.server.memory_pressure_percent,
            c.server.open_files_reserve
        ),
        (80, 200)
    );
    let off = format!("[server]\nmemory_pressure_percent = 0\n{APP}");
    assert!(load(Some(&write(tmp.path(), &off)), &env(&[])).is_ok());
    for (key, bad) in [
        ("memory_pressure_percent", "30"),
        ("memory_pressure_percent", "100"),
        ("open_files_reserve", "4"),
    ] {
        let file = format!("[server]\n{key} = {bad}\n{APP}");
        let err = load(Some(&write(tmp.path(), &file)), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("server.{key} = {bad}")), "{err}");
    }
}

#[test]
fn resume_stays_on_in_a_cluster_as_on_one_box() {
    let dir = tmpdir("resume-cluster");
    let app = "[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n";
    let one_box = load(Some(&write(dir.path(), app)), &env(&[])).unwrap();
    assert!(one_box.resume.enabled, "one box: resume on by default");
    let clustered = format!("[cluster]\nredis_url = \"redis://127.0.0.1:6379\"\n{app}");
    let c = load(Some(&write(dir.path(), &clustered)), &env(&[])).unwrap();
    assert!(c.cluster.enabled());
    assert!(
        c.resume.enabled,
        "a cluster resumes too (positions from the bus)"
    );
    let off = format!("{clustered}[resume]\nenabled = false\n");
    let off = load(Some(&write(dir.path(), &off)), &env(&[])).unwrap();
    assert!(
        !off.resume.enabled,
        "and [resume] enabled = false is still honoured"
    );
}
