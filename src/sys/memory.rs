//! The memory limit of this process's own cgroup, as systemd's `MemoryMax=` (cgroup v2,
//! `memory.max`) or `MemoryLimit=` on a v1 hierarchy (`memory.limit_in_bytes`) sets it, and
//! how much of it is in use. The kernel OOM-kills a process that goes past it; reading how
//! close we are lets the server refuse new connections first.
//!
//! "In use" is the cgroup's charge less its inactive file cache: the spool's writes fill the
//! page cache, which counts against the limit but is reclaimed before any OOM kill, so it
//! must not count as pressure. A limit set on a parent cgroup (a slice) binds too: the level
//! closest to its limit is reported.
//!
//! Found once at start ([`CgroupMemory::locate`]), then read on a timer (three small files
//! per level, no allocation worth the name): never per connection.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Limits at or above this are "no limit" (cgroup v1 writes `PAGE_COUNTER_MAX` pages as
/// 9223372036854771712; nobody configures 4 EiB).
const NO_LIMIT: u64 = 1 << 62;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    /// The unified hierarchy: `memory.max`, `memory.current`, `inactive_file`.
    V2,
    /// The v1 memory controller: `memory.limit_in_bytes`, `memory.usage_in_bytes`,
    /// `total_inactive_file`.
    V1,
}

/// The memory controller's directories for this process: its own cgroup first, then each
/// parent up to the hierarchy's root.
#[derive(Debug, Clone)]
pub struct CgroupMemory {
    version: Version,
    levels: Vec<PathBuf>,
}

/// One reading: bytes in use and the limit they are measured against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub used: u64,
    pub limit: u64,
}

impl Usage {
    /// `used` as a percentage of `limit`.
    pub fn percent(&self) -> u64 {
        (u128::from(self.used) * 100 / u128::from(self.limit.max(1))) as u64
    }
}

impl CgroupMemory {
    /// This process's memory cgroup, from `/proc/self/cgroup` and `/proc/self/mountinfo`;
    /// `None` when there is no memory controller to read (no cgroups, not Linux).
    pub fn locate() -> Option<CgroupMemory> {
        let cgroup = fs::read_to_string("/proc/self/cgroup").ok()?;
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
        Self::from_proc(&cgroup, &mountinfo)
    }

    /// [`locate`](Self::locate) on the two files' contents.
    fn from_proc(cgroup: &str, mountinfo: &str) -> Option<CgroupMemory> {
        // v2 first; on a hybrid system the unified tree has no memory controller, then v1's.
        let unified = cgroup.lines().find_map(|l| l.strip_prefix("0::"));
        if let Some(path) = unified {
            if let Some(dir) = mount_dir(mountinfo, path, |fstype, _| fstype == "cgroup2") {
                if dir.join("memory.max").exists() || dir.join("memory.current").exists() {
                    return Some(Self::at(Version::V2, dir, mountinfo, |t, _| t == "cgroup2"));
                }
            }
        }
        let v1 = cgroup.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then_some(path)
        })?;
        let is_memory =
            |fstype: &str, opts: &str| fstype == "cgroup" && opts.split(',').any(|o| o == "memory");
        let dir = mount_dir(mountinfo, v1, is_memory)?;
        dir.join("memory.limit_in_bytes")
            .exists()
            .then(|| Self::at(Version::V1, dir, mountinfo, is_memory))
    }

    fn at(
        version: Version,
        dir: PathBuf,
        mountinfo: &str,
        is_ours: impl Fn(&str, &str) -> bool,
    ) -> CgroupMemory {
        let root = mounts(mountinfo)
            .filter(|m| is_ours(m.fstype, m.options))
            .map(|m| PathBuf::from(m.point))
            .find(|p| dir.starts_with(p))
            .unwrap_or_else(|| dir.clone());
        let levels = dir
            .ancestors()
            .take_while(|p| p.starts_with(&root))
            .map(Path::to_path_buf)
            .collect();
        CgroupMemory { version, levels }
    }

    /// The directory of this process's own cgroup (for logs and tests).
    pub fn dir(&self) -> Option<&Path> {
        self.levels.first().map(PathBuf::as_path)
    }

    /// The level closest to its limit; `Ok(None)` when no level has one.
    pub fn read(&self) -> io::Result<Option<Usage>> {
        let mut worst: Option<Usage> = None;
        for dir in &self.levels {
            let Some(u) = self.read_level(dir)? else {
                continue;
            };
            if worst.is_none_or(|w| u.percent() > w.percent()) {
                worst = Some(u);
            }
        }
        Ok(worst)
    }

    fn read_level(&self, dir: &Path) -> io::Result<Option<Usage>> {
        let (limit_file, usage_file, inactive) = match self.version {
            Version::V2 => ("memory.max", "memory.current", "inactive_file"),
            Version::V1 => (
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
                "total_inactive_file",
            ),
        };
        // The hierarchy's root has no limit file: no limit there.
        let limit = match fs::read_to_string(dir.join(limit_file)) {
            Ok(s) => parse_limit(&s),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let Some(limit) = limit else {
            return Ok(None);
        };
        let current = parse_number(&fs::read_to_string(dir.join(usage_file))?)
            .ok_or_else(|| io::Error::other(format!("{usage_file} is not a number")))?;
        let stat = fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
        let cache = stat_field(&stat, inactive).unwrap_or(0);
        Ok(Some(Usage {
            used: current.saturating_sub(cache),
            limit,
        }))
    }
}

/// A limit file's value: `max` (v2) or an absurdly large number (v1) is no limit.
fn parse_limit(s: &str) -> Option<u64> {
    parse_number(s).filter(|&n| n < NO_LIMIT)
}

fn parse_number(s: &str) -> Option<u64> {
    s.trim().parse().ok()
}

/// `name value` from a `memory.stat`.
fn stat_field(stat: &str, name: &str) -> Option<u64> {
    stat.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| parse_number(v)).flatten()
    })
}

/// One line of `/proc/self/mountinfo`.
struct Mount<'a> {
    /// The path inside the filesystem that is mounted (`/` for a whole cgroup hierarchy).
    root: &'a str,
    point: &'a str,
    fstype: &'a str,
    /// The super options (for cgroup v1: the controllers).
    options: &'a str,
}

fn mounts(mountinfo: &str) -> impl Iterator<Item = Mount<'_>> {
    mountinfo.lines().filter_map(|l| {
        let (fields, rest) = l.split_once(" - ")?;
        let mut f = fields.split(' ');
        let (root, point) = (f.nth(3)?, f.next()?);
        let mut r = rest.split(' ');
        let (fstype, _source, options) = (r.next()?, r.next()?, r.next().unwrap_or(""));
        Some(Mount {
            root,
            point,
            fstype,
            options,
        })
    })
}

/// Where cgroup `path` (as `/proc/self/cgroup` names it) is on a mount `is_ours` accepts.
fn mount_dir(mountinfo: &str, path: &str, is_ours: impl Fn(&str, &str) -> bool) -> Option<PathBuf> {
    mounts(mountinfo)
        .filter(|m| is_ours(m.fstype, m.options))
        .find_map(|m| {
            // A namespaced mount shows only part of the tree: its root is a prefix of `path`.
            let rel = if m.root == "/" {
                path
            } else {
                path.strip_prefix(m.root)?
            };
            Some(Path::new(m.point).join(rel.trim_start_matches('/')))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_CGROUP: &str = "9:name=systemd:/\n4:memory:/process_api/abc\n0::/\n";
    const HYBRID_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn mountinfo_and_cgroup_paths() {
        let dir = mount_dir(HYBRID_MOUNTS, "/process_api/abc", |t, o| {
            t == "cgroup" && o.split(',').any(|o| o == "memory")
        });
        assert_eq!(
            dir.as_deref(),
            Some(Path::new("/sys/fs/cgroup/memory/process_api/abc"))
        );
        let v2 = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            mount_dir(v2, "/system.slice/pushbox.service", |t, _| t == "cgroup2").as_deref(),
            Some(Path::new("/sys/fs/cgroup/system.slice/pushbox.service"))
        );
        // A container's namespaced view: the mount's root is our cgroup's prefix.
        let ns = "29 23 0:26 /docker/x /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            mount_dir(ns, "/docker/x/app", |t, _| t == "cgroup2").as_deref(),
            Some(Path::new("/sys/fs/cgroup/app"))
        );
        // No memory controller anywhere: nothing to watch.
        assert!(CgroupMemory::from_proc("0::/\n", "").is_none());
        assert!(CgroupMemory::from_proc(HYBRID_CGROUP, "").is_none());
    }

    #[test]
    fn limits_and_stats() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("268435456\n"), Some(268_435_456));
        let stat = "anon 100\nfile 50\ninactive_file 40\ntotal_inactive_file 30\n";
        assert_eq!(stat_field(stat, "inactive_file"), Some(40));
        assert_eq!(stat_field(stat, "total_inactive_file"), Some(30));
        assert_eq!(stat_field(stat, "active_file"), None);
        let u = Usage {
            used: 95,
            limit: 100,
        };
        assert_eq!(u.percent(), 95);
        assert_eq!(Usage { used: 1, limit: 0 }.percent(), 100);
    }

    #[test]
    fn levels_walk_up_to_the_hierarchy_root() {
        let m = CgroupMemory::at(
            Version::V1,
            PathBuf::from("/sys/fs/cgroup/memory/a/b"),
            HYBRID_MOUNTS,
            |t, o| t == "cgroup" && o.split(',').any(|o| o == "memory"),
        );
        assert_eq!(
            m.levels,
            [
                "/sys/fs/cgroup/memory/a/b",
                "/sys/fs/cgroup/memory/a",
                "/sys/fs/cgroup/memory"
            ]
            .map(PathBuf::from)
        );
    }
}
