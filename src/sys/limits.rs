//! Resource limits: every connection is a file descriptor, and the default soft limit
//! (often 1024) is far below what a LAN box with many idle browsers needs.

use std::fmt;

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

/// Why the descriptor limit could not be read or raised.
#[derive(Debug)]
pub enum LimitsError {
    Get(nix::Error),
    Set {
        wanted: u64,
        hard: u64,
        source: nix::Error,
    },
}

impl fmt::Display for LimitsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitsError::Get(e) => {
                write!(f, "cannot read the open-file limit (RLIMIT_NOFILE): {e}")
            }
            LimitsError::Set {
                wanted,
                hard,
                source,
            } => write!(
                f,
                "cannot raise the open-file soft limit to {wanted} (hard limit {hard}): {source}; \
                 raise it with LimitNOFILE= in the systemd unit or `ulimit -n` before starting"
            ),
        }
    }
}

impl std::error::Error for LimitsError {}

/// Raises the `RLIMIT_NOFILE` soft limit to the hard limit and returns the resulting
/// `(soft, hard)`. Compare `soft` with the configured connection limit and warn if it is lower.
///
/// An unlimited hard limit is capped at the kernel's `fs.nr_open` (the most `setrlimit`
/// accepts), or 1,048,576 if that cannot be read.
pub fn raise_nofile_limit() -> Result<(u64, u64), LimitsError> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(LimitsError::Get)?;
    let (soft, hard) = (to_u64(soft), to_u64(hard));
    let wanted = target_soft_limit(soft, hard, read_nr_open());
    if wanted > soft {
        setrlimit(Resource::RLIMIT_NOFILE, from_u64(wanted), from_u64(hard)).map_err(|source| {
            LimitsError::Set {
                wanted,
                hard,
                source,
            }
        })?;
    }
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(LimitsError::Get)?;
    Ok((to_u64(soft), to_u64(hard)))
}

/// The open-files soft limit in force now (after [`raise_nofile_limit`]), if it can be read;
/// `None` when unlimited.
pub fn nofile_soft() -> Option<u64> {
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    let soft = to_u64(soft);
    (soft != to_u64(RLIM_INFINITY)).then_some(soft)
}

/// The soft limit to ask for: the hard limit, capped by `nr_open` when the hard limit is
/// unlimited; never lower than the current soft limit.
pub fn target_soft_limit(soft: u64, hard: u64, nr_open: Option<u64>) -> u64 {
    let ceiling = if hard == to_u64(RLIM_INFINITY) {
        nr_open.unwrap_or(1 << 20)
    } else {
        hard
    };
    ceiling.max(soft)
}

fn read_nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
}

// `rlim_t` is u64 on 64-bit targets and on musl, but u32 on 32-bit glibc (armv7).
#[allow(clippy::useless_conversion)]
fn to_u64(v: nix::libc::rlim_t) -> u64 {
    u64::from(v)
}

#[allow(clippy::unnecessary_fallible_conversions)]
fn from_u64(v: u64) -> nix::libc::rlim_t {
    nix::libc::rlim_t::try_from(v).unwrap_or(RLIM_INFINITY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_is_hard_limit_or_nr_open_when_unlimited() {
        assert_eq!(target_soft_limit(1024, 524_288, Some(1 << 20)), 524_288);
        let inf = to_u64(RLIM_INFINITY);
        assert_eq!(target_soft_limit(1024, inf, Some(1_048_576)), 1_048_576);
        assert_eq!(target_soft_limit(1024, inf, None), 1 << 20);
        assert_eq!(target_soft_limit(4096, 4096, None), 4096);
    }

    #[test]
    fn raise_sets_soft_to_hard_for_real() {
        let (soft, hard) = raise_nofile_limit().expect("raise RLIMIT_NOFILE");
        let (now_soft, now_hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!((soft, hard), (to_u64(now_soft), to_u64(now_hard)));
        assert!(soft <= hard);
        if hard != to_u64(RLIM_INFINITY) {
            assert_eq!(soft, hard);
        }
        // Idempotent.
        assert_eq!(raise_nofile_limit().unwrap(), (soft, hard));
    }
}
