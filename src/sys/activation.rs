//! systemd socket activation: listeners inherited from a `.socket` unit.
//!
//! systemd passes `LISTEN_FDS` sockets starting at file descriptor 3, names them in
//! `LISTEN_FDNAMES` (colon-separated, from `FileDescriptorName=`), and sets `LISTEN_PID` to the
//! process they are meant for. We take them only when `LISTEN_PID` is our pid, check that each
//! is a listening TCP socket, make it non-blocking and close-on-exec, and clear the variables so
//! that no child process believes the sockets are its own.

use std::ffi::OsStr;
use std::fmt;
use std::net::TcpListener;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{
    getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage,
};

/// The first inherited descriptor (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;
/// Environment variables of the socket-activation protocol.
pub const LISTEN_PID_ENV: &str = "LISTEN_PID";
pub const LISTEN_FDS_ENV: &str = "LISTEN_FDS";
pub const LISTEN_FDNAMES_ENV: &str = "LISTEN_FDNAMES";

/// Refuse absurd counts rather than walking the whole descriptor table.
const MAX_LISTEN_FDS: u32 = 4096;

/// One inherited listener and the name systemd gave it (`FileDescriptorName=`, or the socket
/// unit's name when unset), if `LISTEN_FDNAMES` was passed.
#[derive(Debug)]
pub struct ActivatedListener {
    pub name: Option<String>,
    pub listener: TcpListener,
}

/// Why the inherited sockets could not be used.
#[derive(Debug)]
pub enum ActivationError {
    /// `LISTEN_PID` or `LISTEN_FDS` is not a whole number in range.
    InvalidValue {
        variable: &'static str,
        value: String,
    },
    /// `LISTEN_FDNAMES` has a different number of names than `LISTEN_FDS`.
    NameCountMismatch { fds: u32, names: usize },
    /// Descriptor `fd` is not open.
    BadDescriptor { fd: RawFd, source: nix::Error },
    /// Descriptor `fd` is open but not a listening TCP (IPv4/IPv6 stream) socket.
    NotATcpListener { fd: RawFd, what: String },
}

impl fmt::Display for ActivationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActivationError::InvalidValue { variable, value } => write!(
                f,
                "socket activation: {variable}={value:?} is not a valid number; these variables \
                 are set by systemd, so unset them when starting pushbox by hand"
            ),
            ActivationError::NameCountMismatch { fds, names } => write!(
                f,
                "socket activation: LISTEN_FDS={fds} but LISTEN_FDNAMES has {names} names; \
                 check the FileDescriptorName= settings of the .socket unit"
            ),
            ActivationError::BadDescriptor { fd, source } => write!(
                f,
                "socket activation: inherited file descriptor {fd} is not open ({source}); \
                 LISTEN_FDS does not match what was passed, start pushbox through its .socket unit"
            ),
            ActivationError::NotATcpListener { fd, what } => write!(
                f,
                "socket activation: inherited file descriptor {fd} is {what}, but pushbox needs \
                 listening TCP sockets; use ListenStream= with a port or address in pushbox.socket"
            ),
        }
    }
}

impl std::error::Error for ActivationError {}

/// Takes the listeners systemd passed to this process and unsets `LISTEN_PID`, `LISTEN_FDS`
/// and `LISTEN_FDNAMES` (whether or not they were valid). Returns an empty vec when the
/// process was not socket-activated.
///
/// Call it once, early in `main`, before any other thread exists: it modifies the environment.
pub fn take_listeners() -> Result<Vec<ActivatedListener>, ActivationError> {
    let pid = std::env::var_os(LISTEN_PID_ENV);
    let fds = std::env::var_os(LISTEN_FDS_ENV);
    let names = std::env::var_os(LISTEN_FDNAMES_ENV);
    std::env::remove_var(LISTEN_PID_ENV);
    std::env::remove_var(LISTEN_FDS_ENV);
    std::env::remove_var(LISTEN_FDNAMES_ENV);
    // SAFETY: systemd (the only party that sets LISTEN_PID to our pid) passes these descriptors
    // to us for our exclusive use, and the variables are now cleared, so nothing else in this
    // process takes ownership of them a second time.
    unsafe {
        listeners_from(
            pid.as_deref(),
            fds.as_deref(),
            names.as_deref(),
            std::process::id(),
            LISTEN_FDS_START,
        )
    }
}

/// The core of [`take_listeners`] with the environment passed in: takes ownership of
/// descriptors `start_fd .. start_fd + LISTEN_FDS` when `listen_pid` equals `my_pid`.
///
/// Every descriptor is validated before any is taken: on error, none is closed.
///
/// # Safety
/// When `listen_pid` matches, the descriptors in that range must be open sockets that nothing
/// else owns; the returned listeners close them on drop.
pub unsafe fn listeners_from(
    listen_pid: Option<&OsStr>,
    listen_fds: Option<&OsStr>,
    fdnames: Option<&OsStr>,
    my_pid: u32,
    start_fd: RawFd,
) -> Result<Vec<ActivatedListener>, ActivationError> {
    let (Some(listen_pid), Some(listen_fds)) = (listen_pid, listen_fds) else {
        return Ok(Vec::new());
    };
    let pid = parse_number(LISTEN_PID_ENV, listen_pid)?;
    if pid != my_pid {
        return Ok(Vec::new());
    }
    let count = parse_number(LISTEN_FDS_ENV, listen_fds)?;
    if count > MAX_LISTEN_FDS {
        return Err(invalid(LISTEN_FDS_ENV, listen_fds));
    }
    if count == 0 {
        return Ok(Vec::new());
    }
    let names: Option<Vec<String>> =
        fdnames.map(|n| n.to_string_lossy().split(':').map(str::to_owned).collect());
    if let Some(names) = &names {
        if names.len() != count as usize {
            return Err(ActivationError::NameCountMismatch {
                fds: count,
                names: names.len(),
            });
        }
    }
    let Some(end) = start_fd.checked_add(count as RawFd) else {
        return Err(invalid(LISTEN_FDS_ENV, listen_fds));
    };

    for fd in start_fd..end {
        // SAFETY: only borrowed for the duration of the checks; `fcntl(F_GETFD)` first
        // establishes that the descriptor is open.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        validate_tcp_listener(fd, borrowed)?;
    }

    let mut out = Vec::with_capacity(count as usize);
    for (i, fd) in (start_fd..end).enumerate() {
        // SAFETY: the caller guarantees exclusive ownership; validated above as an open socket.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // Cannot fail on a descriptor that was just shown to be open; ignoring is harmless.
        let _ = fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
        let listener = TcpListener::from(owned);
        if let Err(source) = listener.set_nonblocking(true) {
            return Err(ActivationError::NotATcpListener {
                fd,
                what: format!("a socket that cannot be made non-blocking ({source})"),
            });
        }
        out.push(ActivatedListener {
            name: names.as_ref().and_then(|n| n.get(i).cloned()),
            listener,
        });
    }
    Ok(out)
}

fn validate_tcp_listener(fd: RawFd, borrowed: BorrowedFd<'_>) -> Result<(), ActivationError> {
    fcntl(borrowed, FcntlArg::F_GETFD)
        .map_err(|source| ActivationError::BadDescriptor { fd, source })?;
    let not = |what: String| ActivationError::NotATcpListener { fd, what };
    let kind =
        getsockopt(&borrowed, sockopt::SockType).map_err(|e| not(format!("not a socket ({e})")))?;
    if kind != SockType::Stream {
        return Err(not(format!("a {kind:?} socket (from ListenDatagram=?)")));
    }
    let addr: SockaddrStorage =
        getsockname(fd).map_err(|e| not(format!("a socket without an address ({e})")))?;
    match addr.family() {
        Some(AddressFamily::Inet) | Some(AddressFamily::Inet6) => {}
        other => return Err(not(format!("a {other:?} stream socket"))),
    }
    let listening = getsockopt(&borrowed, sockopt::AcceptConn)
        .map_err(|e| not(format!("a socket whose state cannot be read ({e})")))?;
    if !listening {
        return Err(not("a TCP socket that is not listening".to_owned()));
    }
    Ok(())
}

fn invalid(variable: &'static str, value: &OsStr) -> ActivationError {
    ActivationError::InvalidValue {
        variable,
        value: value.to_string_lossy().into_owned(),
    }
}

fn parse_number(variable: &'static str, value: &OsStr) -> Result<u32, ActivationError> {
    value
        .to_str()
        .and_then(|s| s.parse::<u32>().ok())
        .ok_or_else(|| invalid(variable, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::os::fd::{AsFd, AsRawFd, IntoRawFd};

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    /// Duplicates `fd` to the lowest free descriptor ≥ `min` and leaks it to the caller.
    fn dup_at_least(fd: impl AsFd, min: RawFd) -> RawFd {
        fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(min)).expect("dup")
    }

    fn call(
        pid: Option<&str>,
        fds: Option<&str>,
        names: Option<&str>,
        start: RawFd,
    ) -> Result<Vec<ActivatedListener>, ActivationError> {
        // SAFETY: tests only pass descriptors they dup'ed for this purpose (or none at all).
        unsafe { listeners_from(pid.map(os), fds.map(os), names.map(os), 1234, start) }
    }

    #[test]
    fn not_activated_returns_empty() {
        assert!(call(None, None, None, 9999).unwrap().is_empty());
        assert!(call(Some("1234"), None, None, 9999).unwrap().is_empty());
        // Meant for another process (inherited through a fork): ignore.
        assert!(call(Some("99"), Some("2"), None, 9999).unwrap().is_empty());
        assert!(call(Some("1234"), Some("0"), None, 9999)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn bad_values_are_errors_not_panics() {
        for (pid, fds) in [
            ("abc", "1"),
            ("", "1"),
            ("1234", "x"),
            ("1234", "-1"),
            ("1234", "99999999999"),
            ("1234", "100000"),
        ] {
            let err = call(Some(pid), Some(fds), None, 9999).unwrap_err();
            assert!(
                matches!(err, ActivationError::InvalidValue { .. }),
                "{pid} {fds}: {err}"
            );
            assert!(err.to_string().contains("LISTEN_"));
        }
        let err = call(Some("1234"), Some("2"), Some("http"), 9999).unwrap_err();
        assert!(matches!(
            err,
            ActivationError::NameCountMismatch { fds: 2, names: 1 }
        ));
    }

    #[test]
    fn closed_descriptor_is_reported() {
        // Far above any descriptor this test process has open.
        let err = call(Some("1234"), Some("1"), None, 1 << 20).unwrap_err();
        assert!(
            matches!(err, ActivationError::BadDescriptor { .. }),
            "{err}"
        );
    }

    #[test]
    fn non_listening_descriptors_are_rejected_and_left_open() {
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let fd = dup_at_least(&file, 700);
        let err = call(Some("1234"), Some("1"), None, fd).unwrap_err();
        assert!(
            matches!(err, ActivationError::NotATcpListener { .. }),
            "{err}"
        );
        // Still open (validation failed before taking ownership); now close it ourselves.
        // SAFETY: `fd` was dup'ed above and is owned by this test.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let connected = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let fd = dup_at_least(&connected, 710);
        let err = call(Some("1234"), Some("1"), None, fd).unwrap_err();
        assert!(err.to_string().contains("not listening"), "{err}");
        // SAFETY: as above.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });

        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = dup_at_least(&a, 720);
        let err = call(Some("1234"), Some("1"), None, fd).unwrap_err();
        assert!(err.to_string().contains("Unix"), "{err}");
        // SAFETY: as above.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }

    #[test]
    fn inherited_listeners_accept_connections_with_names() {
        let l1 = TcpListener::bind("127.0.0.1:0").unwrap();
        let l2 = TcpListener::bind("[::1]:0")
            .or_else(|_| TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let (a1, a2) = (l1.local_addr().unwrap(), l2.local_addr().unwrap());
        // Place them at two consecutive descriptors, as systemd would at 3 and 4.
        // Other tests in the same process open descriptors too: retry until two are adjacent.
        let mut base = 600;
        let first = loop {
            let first = dup_at_least(&l1, base);
            let second = dup_at_least(&l2, first + 1);
            if second == first + 1 {
                break first;
            }
            // SAFETY: both were dup'ed just above and are owned by this test.
            drop(unsafe { (OwnedFd::from_raw_fd(first), OwnedFd::from_raw_fd(second)) });
            base = second + 1;
        };
        drop((l1, l2));
        // systemd passes descriptors without FD_CLOEXEC; check that we set it.
        // SAFETY: `first` was dup'ed above and is owned by this test until handed over.
        let b = unsafe { BorrowedFd::borrow_raw(first) };
        fcntl(b, FcntlArg::F_SETFD(FdFlag::empty())).unwrap();

        let got = call(Some("1234"), Some("2"), Some("http:https"), first).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].name.as_deref(), Some("http"));
        assert_eq!(got[1].name.as_deref(), Some("https"));
        assert_eq!(got[0].listener.local_addr().unwrap(), a1);
        assert_eq!(got[1].listener.local_addr().unwrap(), a2);
        let flags = fcntl(got[0].listener.as_fd(), FcntlArg::F_GETFD).unwrap();
        assert!(FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC));
        // Non-blocking: accept with nothing pending returns WouldBlock instead of hanging.
        let e = got[0].listener.accept().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);

        let mut client = TcpStream::connect(a1).unwrap();
        client.write_all(b"ping").unwrap();
        let mut accepted = loop {
            match got[0].listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        accepted.set_nonblocking(false).unwrap();
        let mut buf = [0u8; 4];
        accepted.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");

        // Without LISTEN_FDNAMES the names are None.
        let [l0, _] = <[ActivatedListener; 2]>::try_from(got).unwrap();
        let fd = l0.listener.into_raw_fd();
        let again = call(Some("1234"), Some("1"), None, fd).unwrap();
        assert_eq!(again[0].name, None);
        assert_eq!(again[0].listener.as_raw_fd(), fd);
    }

    #[tokio::test]
    async fn inherited_listener_works_with_tokio() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let fd = dup_at_least(&l, 800);
        drop(l);
        let mut got = call(Some("1234"), Some("1"), None, fd).unwrap();
        let std_listener = got.remove(0).listener;
        let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
        let client = tokio::spawn(async move { tokio::net::TcpStream::connect(addr).await });
        let (_s, peer) = listener.accept().await.unwrap();
        assert!(peer.ip().is_loopback());
        client.await.unwrap().unwrap();
    }
}
