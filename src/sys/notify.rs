//! The systemd notification protocol (`sd_notify`) and the service watchdog.
//!
//! systemd passes `NOTIFY_SOCKET` to a `Type=notify` service: either a filesystem path or, when
//! it starts with `@`, a Linux abstract socket name. Each notification is one datagram of
//! newline-separated `KEY=value` assignments. When the variable is unset (not run by systemd,
//! or `Type=simple`), every call here is a silent no-op, so the caller never needs to check.
//!
//! The watchdog (`WatchdogSec=` in the unit) is fed from a tokio task, not a thread: if the
//! runtime wedges, the pings stop and systemd restarts the service, which is the point.
//!
//! Errors here are for logging: a notification that cannot be sent must not stop the server
//! (systemd will time the start out or restart it, and say so in `systemctl status`).

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

/// Name of the environment variable systemd uses to hand over the notification socket.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";
/// Watchdog timeout in microseconds, set by systemd when the unit has `WatchdogSec=`.
pub const WATCHDOG_USEC_ENV: &str = "WATCHDOG_USEC";
/// The process the watchdog timeout is meant for; when set and not us, the watchdog is not ours.
pub const WATCHDOG_PID_ENV: &str = "WATCHDOG_PID";

/// Why a notification could not be set up or sent.
#[derive(Debug)]
pub enum NotifyError {
    /// `NOTIFY_SOCKET` is set but is neither an absolute path nor an `@abstract` name.
    InvalidSocketAddress { value: String, reason: &'static str },
    /// The local datagram socket could not be created.
    CreateSocket(io::Error),
    /// Sending a datagram to the notification socket failed.
    Send { socket: String, source: io::Error },
    /// `WATCHDOG_USEC` or `WATCHDOG_PID` is not a positive decimal number.
    InvalidWatchdogValue {
        variable: &'static str,
        value: String,
    },
    /// `spawn_watchdog` was called outside a tokio runtime.
    NoRuntime,
}

impl fmt::Display for NotifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotifyError::InvalidSocketAddress { value, reason } => write!(
                f,
                "NOTIFY_SOCKET={value:?} is not usable ({reason}); it must be an absolute socket \
                 path or an @abstract name. Unset it, or run pushbox from a Type=notify systemd unit"
            ),
            NotifyError::CreateSocket(e) => write!(
                f,
                "cannot create a datagram socket to talk to systemd: {e}; check that AF_UNIX is \
                 allowed (RestrictAddressFamilies=) and the file descriptor limit is not exhausted"
            ),
            NotifyError::Send { socket, source } => write!(
                f,
                "cannot send a notification to systemd at {socket:?}: {source}; check that the unit \
                 has NotifyAccess=main (or all) and that the socket is reachable from the service"
            ),
            NotifyError::InvalidWatchdogValue { variable, value } => write!(
                f,
                "{variable}={value:?} is not a positive whole number; it is normally set by systemd \
                 from WatchdogSec=; fix or unset it"
            ),
            NotifyError::NoRuntime => write!(
                f,
                "the watchdog task must be started from inside the tokio runtime (a bug in pushbox)"
            ),
        }
    }
}

impl std::error::Error for NotifyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NotifyError::CreateSocket(e) => Some(e),
            NotifyError::Send { source, .. } => Some(source),
            _ => None,
        }
    }
}

struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// The `NOTIFY_SOCKET` value, for error messages.
    display: String,
}

/// A handle for sending notifications to systemd. Cheap to clone; a disabled notifier
/// (no `NOTIFY_SOCKET`) accepts every call and does nothing.
#[derive(Clone, Default)]
pub struct Notifier {
    target: Option<Arc<Target>>,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Some(t) => write!(f, "Notifier({:?})", t.display),
            None => write!(f, "Notifier(disabled)"),
        }
    }
}

impl Notifier {
    /// A notifier that does nothing.
    pub fn disabled() -> Self {
        Notifier { target: None }
    }

    /// Builds a notifier from the process's `NOTIFY_SOCKET`. Unset means disabled.
    pub fn from_env() -> Result<Self, NotifyError> {
        Self::from_env_value(std::env::var_os(NOTIFY_SOCKET_ENV).as_deref())
    }

    /// Builds a notifier from a `NOTIFY_SOCKET` value (`None` or empty means disabled).
    pub fn from_env_value(value: Option<&OsStr>) -> Result<Self, NotifyError> {
        let value = match value {
            None => return Ok(Self::disabled()),
            Some(v) if v.is_empty() => return Ok(Self::disabled()),
            Some(v) => v,
        };
        let display = value.to_string_lossy().into_owned();
        let bytes = value.as_bytes();
        let invalid = |reason| NotifyError::InvalidSocketAddress {
            value: display.clone(),
            reason,
        };
        let addr = match bytes.first() {
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..])
                .map_err(|_| invalid("abstract name too long"))?,
            Some(b'/') => SocketAddr::from_pathname(value).map_err(|_| invalid("path too long"))?,
            _ => return Err(invalid("neither an absolute path nor @abstract")),
        };
        let socket = UnixDatagram::unbound().map_err(NotifyError::CreateSocket)?;
        // Never block the runtime: a full receive queue drops a ping instead of stalling.
        socket
            .set_nonblocking(true)
            .map_err(NotifyError::CreateSocket)?;
        Ok(Notifier {
            target: Some(Arc::new(Target {
                socket,
                addr,
                display,
            })),
        })
    }

    /// True when notifications actually go somewhere.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends raw newline-separated `KEY=value` assignments in one datagram.
    pub fn notify(&self, state: &str) -> Result<(), NotifyError> {
        let Some(t) = &self.target else {
            return Ok(());
        };
        t.socket
            .send_to_addr(state.as_bytes(), &t.addr)
            .map(|_| ())
            .map_err(|source| NotifyError::Send {
                socket: t.display.clone(),
                source,
            })
    }

    /// `READY=1`: start-up finished, the listeners accept. systemd considers the unit started.
    pub fn ready(&self) -> Result<(), NotifyError> {
        self.notify("READY=1")
    }

    /// `STATUS=…`: a one-line human status shown by `systemctl status`. Newlines become spaces.
    pub fn status(&self, text: &str) -> Result<(), NotifyError> {
        let line: String = text
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        self.notify(&format!("STATUS={line}"))
    }

    /// `STOPPING=1`: graceful shutdown has begun.
    pub fn stopping(&self) -> Result<(), NotifyError> {
        self.notify("STOPPING=1")
    }

    /// `RELOADING=1`: a reload (SIGHUP) has begun; send [`Notifier::ready`] when it is done.
    pub fn reloading(&self) -> Result<(), NotifyError> {
        self.notify("RELOADING=1")
    }

    /// `WATCHDOG=1`: one keep-alive ping.
    pub fn watchdog(&self) -> Result<(), NotifyError> {
        self.notify("WATCHDOG=1")
    }

    /// Starts the watchdog task if systemd asked for one: a no-op (`Ok(None)`) when this
    /// notifier is disabled or `WATCHDOG_USEC` is unset or meant for another process.
    /// Call from inside the tokio runtime.
    pub fn spawn_watchdog_from_env(
        &self,
    ) -> Result<Option<tokio::task::JoinHandle<()>>, NotifyError> {
        if !self.is_enabled() {
            return Ok(None);
        }
        match watchdog_timeout()? {
            Some(timeout) => self.spawn_watchdog(timeout).map(Some),
            None => Ok(None),
        }
    }

    /// Spawns a tokio task on the current runtime that sends `WATCHDOG=1` every `timeout / 2`,
    /// starting immediately. Abort the returned handle to stop it. A failed ping is logged and
    /// retried at the next tick. Returns `NoRuntime` when called outside a tokio runtime.
    pub fn spawn_watchdog(
        &self,
        timeout: Duration,
    ) -> Result<tokio::task::JoinHandle<()>, NotifyError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| NotifyError::NoRuntime)?;
        let period = (timeout / 2).max(Duration::from_millis(1));
        let notifier = self.clone();
        Ok(handle.spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if let Err(e) = notifier.watchdog() {
                    tracing::warn!("watchdog ping failed: {e}");
                }
            }
        }))
    }
}

/// Reads `WATCHDOG_USEC`/`WATCHDOG_PID` from the environment: see [`watchdog_timeout_from`].
pub fn watchdog_timeout() -> Result<Option<Duration>, NotifyError> {
    watchdog_timeout_from(
        std::env::var_os(WATCHDOG_USEC_ENV).as_deref(),
        std::env::var_os(WATCHDOG_PID_ENV).as_deref(),
        std::process::id(),
    )
}

/// The watchdog timeout systemd expects pings within, or `None` when there is no watchdog for
/// this process: `WATCHDOG_USEC` unset, or `WATCHDOG_PID` set to another process's id.
pub fn watchdog_timeout_from(
    usec: Option<&OsStr>,
    pid: Option<&OsStr>,
    my_pid: u32,
) -> Result<Option<Duration>, NotifyError> {
    let Some(usec) = usec else {
        return Ok(None);
    };
    if let Some(pid) = pid {
        let pid = parse_positive(WATCHDOG_PID_ENV, pid)?;
        if pid != u64::from(my_pid) {
            return Ok(None);
        }
    }
    let usec = parse_positive(WATCHDOG_USEC_ENV, usec)?;
    Ok(Some(Duration::from_micros(usec)))
}

fn parse_positive(variable: &'static str, value: &OsStr) -> Result<u64, NotifyError> {
    value
        .to_str()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| NotifyError::InvalidWatchdogValue {
            variable,
            value: value.to_string_lossy().into_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::path::PathBuf;
    use std::time::Instant;

    /// A fresh private directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p =
                std::env::temp_dir().join(format!("pushbox-sys-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("create temp dir");
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn receiver(dir: &TempDir) -> (UnixDatagram, OsString) {
        let path = dir.0.join("notify.sock");
        let rx = UnixDatagram::bind(&path).expect("bind receiver");
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (rx, path.into_os_string())
    }

    fn recv_string(rx: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = rx.recv(&mut buf).expect("datagram within timeout");
        String::from_utf8(buf[..n].to_vec()).expect("utf-8")
    }

    #[test]
    fn unset_or_empty_socket_is_a_silent_noop() {
        for v in [None, Some(OsStr::new(""))] {
            let n = Notifier::from_env_value(v).unwrap();
            assert!(!n.is_enabled());
            n.ready().unwrap();
            n.status("x").unwrap();
            n.stopping().unwrap();
            n.watchdog().unwrap();
        }
    }

    #[test]
    fn relative_socket_path_is_rejected_with_a_clear_error() {
        let err = Notifier::from_env_value(Some(OsStr::new("run/notify"))).unwrap_err();
        assert!(matches!(err, NotifyError::InvalidSocketAddress { .. }));
        assert!(err.to_string().contains("NOTIFY_SOCKET"));
    }

    #[test]
    fn path_socket_receives_ready_status_stopping_watchdog() {
        let dir = TempDir::new("path");
        let (rx, path) = receiver(&dir);
        let n = Notifier::from_env_value(Some(&path)).unwrap();
        assert!(n.is_enabled());
        n.ready().unwrap();
        assert_eq!(recv_string(&rx), "READY=1");
        n.status("serving 3 apps\non :8080").unwrap();
        assert_eq!(recv_string(&rx), "STATUS=serving 3 apps on :8080");
        n.watchdog().unwrap();
        assert_eq!(recv_string(&rx), "WATCHDOG=1");
        n.reloading().unwrap();
        assert_eq!(recv_string(&rx), "RELOADING=1");
        n.stopping().unwrap();
        assert_eq!(recv_string(&rx), "STOPPING=1");
    }

    #[test]
    fn abstract_socket_receives_ready() {
        let name = format!("pushbox-test-notify-{}-abstract", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).expect("bind abstract receiver");
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let value = OsString::from(format!("@{name}"));
        let n = Notifier::from_env_value(Some(&value)).unwrap();
        n.ready().unwrap();
        assert_eq!(recv_string(&rx), "READY=1");
        n.status("abstract ok").unwrap();
        assert_eq!(recv_string(&rx), "STATUS=abstract ok");
    }

    #[test]
    fn send_to_missing_socket_reports_the_path() {
        let dir = TempDir::new("missing");
        let path = dir.0.join("nobody-listens.sock").into_os_string();
        let n = Notifier::from_env_value(Some(&path)).unwrap();
        let err = n.ready().unwrap_err();
        assert!(matches!(err, NotifyError::Send { .. }));
        assert!(err.to_string().contains("nobody-listens.sock"));
    }

    #[test]
    fn watchdog_env_parsing() {
        let us = Some(OsStr::new("30000000"));
        assert_eq!(
            watchdog_timeout_from(us, None, 42).unwrap(),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_timeout_from(us, Some(OsStr::new("42")), 42).unwrap(),
            Some(Duration::from_secs(30))
        );
        // Meant for another process (e.g. inherited from a parent): not ours.
        assert_eq!(
            watchdog_timeout_from(us, Some(OsStr::new("41")), 42).unwrap(),
            None
        );
        assert_eq!(watchdog_timeout_from(None, None, 42).unwrap(), None);
        for bad in ["", "0", "-5", "abc", "1.5"] {
            let err = watchdog_timeout_from(Some(OsStr::new(bad)), None, 42).unwrap_err();
            assert!(
                err.to_string().contains("WATCHDOG_USEC"),
                "{bad:?} -> {err}"
            );
        }
        let err = watchdog_timeout_from(us, Some(OsStr::new("x")), 42).unwrap_err();
        assert!(err.to_string().contains("WATCHDOG_PID"));
    }

    #[test]
    fn spawn_watchdog_outside_runtime_is_an_error_not_a_panic() {
        let n = Notifier::disabled();
        assert!(matches!(
            n.spawn_watchdog(Duration::from_secs(1)),
            Err(NotifyError::NoRuntime)
        ));
    }

    #[tokio::test]
    async fn disabled_notifier_starts_no_watchdog() {
        assert!(Notifier::disabled()
            .spawn_watchdog_from_env()
            .unwrap()
            .is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watchdog_task_pings_every_half_interval() {
        let dir = TempDir::new("wd");
        let (rx, path) = receiver(&dir);
        let n = Notifier::from_env_value(Some(&path)).unwrap();
        let timeout = watchdog_timeout_from(Some(OsStr::new("200000")), None, 1)
            .unwrap()
            .unwrap();
        let started = Instant::now();
        let task = n.spawn_watchdog(timeout).unwrap();
        let got = tokio::task::spawn_blocking(move || {
            let mut pings = 0;
            while pings < 3 {
                assert_eq!(recv_string(&rx), "WATCHDOG=1");
                pings += 1;
            }
            pings
        })
        .await
        .unwrap();
        let elapsed = started.elapsed();
        task.abort();
        // Immediately, then at 100 ms and 200 ms.
        assert_eq!(got, 3);
        assert!(elapsed >= Duration::from_millis(180), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    }
}
