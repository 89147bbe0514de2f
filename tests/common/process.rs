//! The real `pushbox` binary as a child process: a clean command line, a free port, a config
//! file, and [`Served`], a `pushbox serve` that is killed when the test ends (panics included).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{APP_ID, KEY, SECRET};

/// The binary cargo built for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_pushbox");

/// How long a server may take to start before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// `pushbox args…` with none of the caller's pushbox, Laravel or systemd variables leaking in
/// (a developer's shell may well have `REVERB_APP_ID` or `NOTIFY_SOCKET` set).
pub fn pushbox(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if ["PUSHBOX_", "REVERB_", "PUSHER_"]
            .iter()
            .any(|p| k.starts_with(p))
        {
            c.env_remove(k.as_ref());
        }
    }
    c.env_remove("NOTIFY_SOCKET").env_remove("LISTEN_FDS");
    c
}

/// `pushbox serve` on the configuration `config`, written to `dir/pushbox.toml`, with its state
/// in `dir/state` and warnings only in its log; stdout and stderr as the caller sets them.
pub fn serve_in(dir: &Path, config: &str) -> Command {
    let cfg = dir.join("pushbox.toml");
    std::fs::write(&cfg, config).expect("write the config file");
    let mut serve = pushbox(&["serve", "--config"]);
    serve
        .arg(&cfg)
        .env("PUSHBOX_STATE_DIR", dir.join("state"))
        .env("PUSHBOX_LOG", "warn");
    serve
}

/// A port that is free on 127.0.0.1 now (another test may still take it before the server
/// binds it: [`Served::start`] notices when the child exits).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A config file's text: `[server]` on 127.0.0.1:`port` followed by `more` (further `[server]`
/// keys, then other sections), then the test app followed by `app_more` (its further keys).
pub fn config_toml(port: u16, more: &str, app_more: &str) -> String {
    format!(
        "[server]\nhost = \"127.0.0.1\"\nport = {port}\n{more}\
         [[apps]]\nid = \"{APP_ID}\"\nkey = \"{KEY}\"\nsecret = \"{SECRET}\"\n{app_more}"
    )
}

/// What "started" means for [`Served::start`].
#[derive(Clone, Copy, Debug)]
pub enum Ready {
    /// The port accepts TCP connections (enough for a TLS port).
    Listening,
    /// `GET /up` answers 200: the event log and the webhook queue are open, recovery is done.
    Up,
}

/// A `pushbox serve` child process, killed (and reaped) when dropped.
pub struct Served {
    pub child: Child,
    pub port: u16,
    /// The file its stderr goes to, if the test keeps it.
    stderr: Option<PathBuf>,
}

impl Served {
    /// Spawns `cmd` (stdout and stderr as the caller set them) and waits until `port` is
    /// `ready`; panics if the process exits first or takes longer than 20 s.
    ///
    /// It blocks: from async code run it in `tokio::task::block_in_place`.
    pub fn start(cmd: &mut Command, port: u16, ready: Ready) -> Served {
        let child = cmd.spawn().expect("spawn pushbox");
        let mut served = Served {
            child,
            port,
            stderr: None,
        };
        served.wait_for(port, ready);
        served
    }

    /// [`start`](Self::start) with stdout discarded and stderr kept in the file `stderr`
    /// (read it with [`log`](Self::log)).
    pub fn start_logged(cmd: &mut Command, port: u16, ready: Ready, stderr: PathBuf) -> Served {
        let file = std::fs::File::create(&stderr).expect("create the stderr log");
        let child = cmd
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn pushbox");
        let mut served = Served {
            child,
            port,
            stderr: Some(stderr),
        };
        served.wait_for(port, ready);
        served
    }

    /// Waits until `port` (the server's or another of its listeners) is `ready`.
    pub fn wait_for(&mut self, port: u16, ready: Ready) {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "pushbox exited with {st} instead of serving on {port} (was the port taken by another test?):\n{}",
                    self.log()
                );
            }
            let ok = match ready {
                Ready::Listening => TcpStream::connect(addr).is_ok(),
                Ready::Up => matches!(http_blocking(addr, "GET", "/up", ""), Ok((200, _))),
            };
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pushbox did not serve on {port} within {START_TIMEOUT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// 127.0.0.1 and the server's port.
    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// A signed `POST /apps/{id}/events` of one event, as an SDK sends it; (status, body).
    pub fn trigger(&self, name: &str, channel: &str, data: &str) -> (u16, String) {
        let body = serde_json::json!({"name": name, "channel": channel, "data": data}).to_string();
        let signed = super::signed("POST", &format!("/apps/{APP_ID}/events"), &body, &[]);
        http_blocking(self.addr(), "POST", &signed, &body).expect("the server answers")
    }

    /// Panics if the server's log says it panicked.
    pub fn assert_no_panic(&self) {
        let log = self.log();
        assert!(!log.contains("panicked"), "the server panicked:\n{log}");
    }

    /// SIGTERM and wait: the stop must be graceful (exit 0), and nothing panicked.
    pub fn stop(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("signal the server");
        let st = self.child.wait().expect("wait for the server");
        assert!(st.success(), "graceful stop failed ({st}):\n{}", self.log());
        self.assert_no_panic();
    }

    /// SIGKILL and wait.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.assert_no_panic();
    }

    /// What the server wrote to stderr so far (empty unless started with `start_logged`).
    pub fn log(&self) -> String {
        self.stderr
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking HTTP/1.1 request with `Connection: close`; (status, body). For code outside a
/// runtime; async tests use [`super::http`].
pub fn http_blocking(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(super::status_and_body(&out))
}
