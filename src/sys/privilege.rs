//! Dropping root privileges after the listeners are bound.
//!
//! Under the shipped systemd unit pushbox already starts as the `pushbox` user (and binds low
//! ports through `AmbientCapabilities=CAP_NET_BIND_SERVICE`), so this is for the other ways of
//! running it: started as root by hand, by a container entrypoint, or as PID 1 of a tiny image.
//! The order is: supplementary groups cleared, then real/effective/saved gid, then uid, then
//! a check that root cannot be regained.
//!
//! The libc wrappers used here apply the change to every thread of the process, so calling it
//! after the tokio runtime started is fine; calling it before is simpler to reason about.
//!
//! Note for the armv7 static-glibc build: resolving a *name* goes through glibc's NSS, which in
//! a static binary may `dlopen` the box's `libnss_*.so`. With the default `files` source this is
//! built in; otherwise prefer [`drop_to_ids`] with numeric ids. The musl builds read
//! `/etc/passwd` directly and have no such caveat.

use std::fmt;

use nix::unistd::{
    getegid, geteuid, getgid, getgroups, getuid, setgroups, setresgid, setresuid, setuid, Gid, Uid,
    User,
};

/// Where the process ended up after a successful drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedTo {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// False when the process already ran as that user and nothing had to change.
    pub changed: bool,
}

/// Why the privilege drop did not happen. Until the step named in the variant, nothing was
/// changed; after `SetGroups`, treat the process as in an unknown state and exit.
#[derive(Debug)]
pub enum PrivilegeError {
    /// No such user in the user database.
    UnknownUser { name: String },
    /// The user database could not be read.
    Lookup { name: String, source: nix::Error },
    /// The named user is root (uid 0): dropping to it would drop nothing.
    TargetIsRoot { name: String },
    /// Not running as root, and not already the target user: changing identity needs root.
    NotRoot { name: String, current_uid: u32 },
    /// A system call of the drop itself failed.
    Syscall {
        step: &'static str,
        source: nix::Error,
    },
    /// After the drop, the ids are not what was asked for or root could be regained.
    Verify { detail: String },
}

impl fmt::Display for PrivilegeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrivilegeError::UnknownUser { name } => write!(
                f,
                "user {name:?} does not exist; create it (the package ships a sysusers.d entry: \
                 `systemd-sysusers`) or set `user` in the config to an existing account"
            ),
            PrivilegeError::Lookup { name, source } => write!(
                f,
                "cannot look up user {name:?}: {source}; check that /etc/passwd is readable"
            ),
            PrivilegeError::TargetIsRoot { name } => write!(
                f,
                "refusing to \"drop\" privileges to {name:?}, which is root (uid 0); set `user` in \
                 the config to an unprivileged account such as \"pushbox\""
            ),
            PrivilegeError::NotRoot { name, current_uid } => write!(
                f,
                "cannot switch to user {name:?}: pushbox runs as uid {current_uid}, not root; either \
                 start it as root, or remove `user` from the config and start it as {name:?} \
                 directly (the systemd unit does this with User=)"
            ),
            PrivilegeError::Syscall { step, source } => write!(
                f,
                "privilege drop failed at {step}: {source}; pushbox must not keep running with \
                 partial privileges, exit and check the service's capabilities/seccomp settings"
            ),
            PrivilegeError::Verify { detail } => write!(
                f,
                "privilege drop did not take effect: {detail}; refusing to continue"
            ),
        }
    }
}

impl std::error::Error for PrivilegeError {}

/// Switches the whole process to `name`, its primary group, and no supplementary groups.
/// Succeeds without changing anything when the process already runs as that user.
pub fn drop_to_user(name: &str) -> Result<DroppedTo, PrivilegeError> {
    let user = match User::from_name(name) {
        Ok(Some(u)) => u,
        Ok(None) => {
            return Err(PrivilegeError::UnknownUser {
                name: name.to_owned(),
            })
        }
        Err(source) => {
            return Err(PrivilegeError::Lookup {
                name: name.to_owned(),
                source,
            })
        }
    };
    drop_to(name, user.uid, user.gid)
}

/// Like [`drop_to_user`] with numeric ids, so no user database is consulted.
pub fn drop_to_ids(uid: u32, gid: u32) -> Result<DroppedTo, PrivilegeError> {
    drop_to(
        &format!("uid {uid}"),
        Uid::from_raw(uid),
        Gid::from_raw(gid),
    )
}

fn drop_to(name: &str, uid: Uid, gid: Gid) -> Result<DroppedTo, PrivilegeError> {
    if uid.is_root() {
        return Err(PrivilegeError::TargetIsRoot {
            name: name.to_owned(),
        });
    }
    let done = |changed| DroppedTo {
        user: name.to_owned(),
        uid: uid.as_raw(),
        gid: gid.as_raw(),
        changed,
    };
    if !geteuid().is_root() {
        if getuid() == uid && geteuid() == uid {
            return Ok(done(false));
        }
        return Err(PrivilegeError::NotRoot {
            name: name.to_owned(),
            current_uid: geteuid().as_raw(),
        });
    }
    let step = |step| move |source| PrivilegeError::Syscall { step, source };
    setgroups(&[]).map_err(step("setgroups([])"))?;
    setresgid(gid, gid, gid).map_err(step("setresgid"))?;
    setresuid(uid, uid, uid).map_err(step("setresuid"))?;

    let ids = (getuid(), geteuid(), getgid(), getegid());
    if ids != (uid, uid, gid, gid) {
        return Err(PrivilegeError::Verify {
            detail: format!("ids are now {ids:?}, wanted uid {uid} gid {gid}"),
        });
    }
    match getgroups() {
        Ok(groups) if groups.iter().all(|g| *g == gid) => {}
        Ok(groups) => {
            return Err(PrivilegeError::Verify {
                detail: format!("supplementary groups {groups:?} remain"),
            })
        }
        Err(source) => return Err(step("getgroups")(source)),
    }
    if setuid(Uid::from_raw(0)).is_ok() {
        return Err(PrivilegeError::Verify {
            detail: "setuid(0) still succeeds".to_owned(),
        });
    }
    Ok(done(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHILD_ENV: &str = "PUSHBOX_SYS_TEST_DROP_TO";

    #[test]
    fn unknown_user_is_an_actionable_error() {
        let err = drop_to_user("pushbox-no-such-user-xyz").unwrap_err();
        assert!(matches!(err, PrivilegeError::UnknownUser { .. }), "{err}");
        assert!(err.to_string().contains("sysusers"));
    }

    #[test]
    fn root_as_target_is_refused_before_any_change() {
        let err = drop_to_user("root").unwrap_err();
        assert!(matches!(err, PrivilegeError::TargetIsRoot { .. }), "{err}");
        assert!(matches!(
            drop_to_ids(0, 0),
            Err(PrivilegeError::TargetIsRoot { .. })
        ));
    }

    /// Runs the real drop in a child process (it is irreversible and process-wide).
    #[test]
    fn drop_to_nobody_really_drops() {
        if !geteuid().is_root() {
            let err = drop_to_user("nobody").unwrap_err();
            assert!(matches!(err, PrivilegeError::NotRoot { .. }), "{err}");
            assert!(err.to_string().contains("not root"));
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let module = module_path!();
        let test = format!(
            "{}::child_drops_privileges",
            module.split_once("::").map_or(module, |(_, rest)| rest)
        );
        let out = std::process::Command::new(exe)
            .args([test.as_str(), "--exact", "--ignored", "--nocapture"])
            .env(CHILD_ENV, "nobody")
            .output();
        let out = match out {
            Ok(o) => o,
            // Under qemu-user without binfmt the child cannot be exec'ed; nothing to check.
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOEXEC) => {
                eprintln!("skipped: cannot re-exec the test binary here ({e})");
                return;
            }
            Err(e) => panic!("spawn child: {e}"),
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // glibc's posix_spawn under qemu-user reports a failed exec only as exit status 127.
        if out.status.code() == Some(127) && out.stdout.is_empty() && out.stderr.is_empty() {
            eprintln!("skipped: cannot re-exec the test binary here (exit status 127)");
            return;
        }
        assert!(
            out.status.success(),
            "child failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        assert!(
            stdout.contains("PUSHBOX_DROP_OK"),
            "child did not run the drop:\n{stdout}\n{stderr}"
        );
    }

    #[test]
    #[ignore = "run only as the child of drop_to_nobody_really_drops"]
    fn child_drops_privileges() {
        let Some(name) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        let name = name.to_str().unwrap().to_owned();
        let user = User::from_name(&name).unwrap().expect("user exists");
        let dropped = drop_to_user(&name).unwrap();
        assert!(dropped.changed);
        assert_eq!(
            (dropped.uid, dropped.gid),
            (user.uid.as_raw(), user.gid.as_raw())
        );
        assert_eq!((getuid(), geteuid()), (user.uid, user.uid));
        assert_eq!((getgid(), getegid()), (user.gid, user.gid));
        assert!(getgroups().unwrap().iter().all(|g| *g == user.gid));
        assert!(setuid(Uid::from_raw(0)).is_err());
        // A second call is a no-op, and any other target is now NotRoot.
        assert!(!drop_to_user(&name).unwrap().changed);
        assert!(matches!(
            drop_to_ids(user.uid.as_raw() + 1, user.gid.as_raw()),
            Err(PrivilegeError::NotRoot { .. })
        ));
        println!("PUSHBOX_DROP_OK uid={} gid={}", dropped.uid, dropped.gid);
    }
}
