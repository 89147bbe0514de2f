//! Memory pressure under a real cgroup memory limit, as systemd's `MemoryMax=` sets one: the
//! real `pushbox serve` runs in a child cgroup this test creates (as root) under its own, with
//! `server.memory_pressure_percent = 50`. Without a limit everything connects; once the limit
//! is lowered to put the server at ~60 % of it, new WebSocket and fallback connections are
//! refused with 4100 (the server stays alive, nothing is OOM-killed, connected clients keep
//! receiving), `/up` and `/metrics` say so, the journal says it once; raising the limit ends it.
//!
//! cgroup v1 (`memory.limit_in_bytes`, this machine's hybrid hierarchy) and v2 (`memory.max`)
//! are both handled. Where no memory cgroup can be created (not root, no memory controller, a
//! v2 parent that does not delegate `memory` to children) the test prints `SKIPPED: …`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, http_blocking, next_json, Ready, Served, BIN, KEY};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

/// The files of one cgroup version: (limit, usage, reclaimable cache in `memory.stat`).
struct Files {
    limit: &'static str,
    usage: &'static str,
    cache: &'static str,
}

const V1: Files = Files {
    limit: "memory.limit_in_bytes",
    usage: "memory.usage_in_bytes",
    cache: "total_inactive_file",
};
const V2: Files = Files {
    limit: "memory.max",
    usage: "memory.current",
    cache: "inactive_file",
};

/// A child cgroup of this process's memory cgroup, removed on drop (once its process is gone).
struct Cgroup {
    dir: PathBuf,
    files: &'static Files,
}

impl Cgroup {
    fn create() -> Result<Cgroup, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("not running as root, cannot create a cgroup".into());
        }
        let own = pushbox::sys::memory::CgroupMemory::locate()
            .ok_or("no memory cgroup controller (neither v2 memory.max nor v1 memory)")?;
        let parent = own.dir().ok_or("no cgroup directory")?.to_path_buf();
        let files = if parent.join(V2.usage).exists() {
            &V2
        } else {
            &V1
        };
        let dir = parent.join(format!("pushbox-memtest-{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let cg = Cgroup { dir, files };
        if !cg.dir.join(files.limit).exists() {
            return Err(format!(
                "{} has no {} (the parent does not delegate the memory controller)",
                cg.dir.display(),
                files.limit
            ));
        }
        Ok(cg)
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    /// Bytes in use, as the server counts them: the charge less inactive file cache.
    fn used(&self) -> u64 {
        let usage: u64 = self.read(self.files.usage).trim().parse().unwrap();
        let cache = self
            .read("memory.stat")
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == self.files.cache).then(|| v.trim().parse::<u64>().ok())?
            })
            .unwrap_or(0);
        usage.saturating_sub(cache)
    }

    fn set_limit(&self, bytes: u64) {
        std::fs::write(self.dir.join(self.files.limit), bytes.to_string())
            .unwrap_or_else(|e| panic!("set {} to {bytes}: {e}", self.files.limit));
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // The server has exited by now (Served is dropped first); an empty cgroup can go.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `pushbox serve` started inside `cg`: the shell moves itself there, then execs the server
/// (same pid), so every byte the server allocates is charged to `cg`.
fn serve_in_cgroup(cg: &Cgroup, work: &Path, port: u16) -> Served {
    // 50 %, not the default 90: a debug server here charges only ~2.5 MB to a fresh cgroup
    // (the binary's pages were charged to whoever read them first), and at 85 % of such a limit
    // the 0.4 MB left was once used up by paging in /up's code before the watch's next
    // one-second read: the kernel OOM-killed it (seen in dmesg). 40 % of room keeps the test
    // about the refusal, not about a race with the OOM killer.
    let config = common::config_toml(port, "memory_pressure_percent = 50\n", "");
    std::fs::write(work.join("pushbox.toml"), config).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("echo $$ > \"$0\" && exec \"$@\"")
        .arg(cg.dir.join("cgroup.procs"))
        .arg(BIN)
        .args(["serve", "--config"])
        .arg(work.join("pushbox.toml"))
        .env("PUSHBOX_STATE_DIR", work.join("state"))
        .env("PUSHBOX_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS");
    Served::start_logged(&mut cmd, port, Ready::Up, work.join("serve.log"))
}

/// What a new WebSocket connection got: `Ok(stream)` once established, or the close code.
async fn connect(addr: SocketAddr) -> Result<common::WsStream, Option<u16>> {
    let mut ws = common::connect_raw(addr, &format!("/app/{KEY}?protocol=7")).await;
    let first = next_json(&mut ws).await.expect("a first frame");
    if first["event"] == "pusher:connection_established" {
        return Ok(ws);
    }
    assert_eq!(first["event"], "pusher:error", "{first}");
    let code = first["data"]["code"].as_u64();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => {
                let close = f.map(|f| u16::from(f.code));
                assert_eq!(close.map(u64::from), code, "close code = error code");
                return Err(close);
            }
            Ok(Some(Ok(_))) => continue,
            _ => return Err(None),
        }
    }
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_blocking(addr, "GET", path, "").expect("the server answers")
}

/// Polls `/up` until `done` holds for its body (at most 10 s: the watch reads every second).
fn wait_up(addr: SocketAddr, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = get(addr, "/up");
        if done(&body) || Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn metric(addr: SocketAddr, name: &str) -> Option<String> {
    let (_, text) = get(addr, "/metrics");
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_owned)
}

#[test]
fn near_its_cgroup_memory_limit_the_box_refuses_new_connections_with_4100_instead_of_dying() {
    let cg = match Cgroup::create() {
        Ok(cg) => cg,
        Err(why) => {
            println!("SKIPPED memory pressure test: {why}");
            return;
        }
    };
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut s = serve_in_cgroup(&cg, work.path(), port);
    let addr = s.addr();
    let procs = cg.read("cgroup.procs");
    assert!(
        procs.lines().any(|p| p.trim() == s.child.id().to_string()),
        "the server runs in the test's cgroup: {procs}"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // No limit: clients connect, nothing is said about memory.
    let mut connected: Vec<common::WsStream> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..20 {
            let mut ws = connect(addr).await.expect("connects without a limit");
            let sub = r#"{"event":"pusher:subscribe","data":{"channel":"orders"}}"#;
            futures_util::SinkExt::send(&mut ws, Message::Text(sub.into()))
                .await
                .unwrap();
            let ok = next_json(&mut ws).await.unwrap();
            assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
            v.push(ws);
        }
        v
    });
    assert_eq!(get(addr, "/up"), (200, "{\"status\":\"ok\"}".to_owned()));
    assert_eq!(
        metric(addr, "pushbox_memory_pressure ").as_deref(),
        Some("0")
    );

    // A limit that puts the server at ~60 % of it (the threshold is 50 %).
    let used = cg.used();
    let limit = (used * 100 / 60).div_ceil(4096) * 4096;
    cg.set_limit(limit);
    println!("server uses {used} bytes; limit set to {limit}");
    let up = wait_up(addr, |b| b.contains("memory"));
    assert!(up.contains("memory pressure"), "/up says so: {up}");
    assert!(
        up.contains("\"status\":\"ok\""),
        "still up for those connected: {up}"
    );
    assert_eq!(
        metric(addr, "pushbox_memory_pressure ").as_deref(),
        Some("1")
    );
    assert_eq!(
        metric(addr, "pushbox_memory_cgroup_bytes{kind=\"limit\"}").as_deref(),
        Some(limit.to_string().as_str())
    );

    // New connections are refused with 4100, as many as come; the server stays alive.
    rt.block_on(async {
        for i in 0..100 {
            match connect(addr).await {
                Ok(_) => panic!("connection {i} accepted under memory pressure"),
                Err(code) => assert_eq!(code, Some(4100), "connection {i}"),
            }
        }
    });
    let (status, body) = http_blocking(
        addr,
        "POST",
        &format!("/pusher/app/{KEY}/123/abcdefgh/xhr_streaming"),
        "",
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("c[4100,"),
        "the fallback is refused with 4100: {body}"
    );
    let refused: u64 = metric(addr, "pushbox_refusals_total{reason=\"memory_pressure\"}")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(refused >= 101, "{refused} refusals counted");

    // Those connected keep receiving.
    assert_eq!(s.trigger("e", "orders", "still here").0, 200);
    rt.block_on(async {
        for ws in &mut connected {
            let v = next_json(ws).await.expect("an event");
            assert_eq!(v["data"], "still here");
        }
    });
    assert!(s.child.try_wait().unwrap().is_none(), "not OOM-killed");
    let log = s.log();
    assert_eq!(
        log.matches("memory pressure:").count(),
        1,
        "said once, not per connection:\n{log}"
    );

    // Room again: the pressure ends, new clients connect.
    cg.set_limit(limit * 4);
    let up = wait_up(addr, |b| !b.contains("memory"));
    assert_eq!(up, "{\"status\":\"ok\"}");
    rt.block_on(async {
        connect(addr)
            .await
            .expect("connects once the pressure is over")
    });
    assert!(s.log().contains("memory pressure over"), "{}", s.log());
    drop(connected);
    s.stop();
}

/// The unified (v2) hierarchy, where this machine has one: its mount point, from mountinfo.
fn unified_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let point = left.split(' ').nth(4)?;
        (right.split(' ').next()? == "cgroup2").then(|| PathBuf::from(point))
    })
}

/// The cgroup v2 path, as far as this machine lets it be real. Here the memory controller is
/// bound to the v1 hierarchy (a hybrid host), so no v2 cgroup can carry `memory.max`: the
/// server runs in a real v2 cgroup (its `/proc/self/cgroup` `0::` line and the real
/// `mountinfo` are what it locates by), and only the three `memory.*` files are stand-ins,
/// bind-mounted over that cgroup's directory in the server's own mount namespace. What this
/// proves: the v2 files are found, read (`max`, `memory.current` less `inactive_file`) and acted
/// on. What it cannot: the kernel's own v2 accounting (the v1 test above covers a real charge).
/// On a host whose v2 tree has the memory controller the v1 test already runs on v2 and this one
/// is not needed; it says SKIPPED.
#[test]
fn on_cgroup_v2_the_box_reads_memory_max_and_refuses_with_4100() {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED cgroup v2 test: not running as root");
        return;
    }
    let Some(unified) = unified_mount() else {
        println!("SKIPPED cgroup v2 test: no cgroup2 mount on this machine");
        return;
    };
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/");
    let parent = unified.join(own.trim_start_matches('/'));
    if parent.join("memory.max").exists() || parent.join("memory.current").exists() {
        println!("SKIPPED cgroup v2 test: v2 has the memory controller here; the real-limit test covers it");
        return;
    }
    let cgdir = parent.join(format!("pushbox-v2test-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir(&cgdir) {
        println!("SKIPPED cgroup v2 test: mkdir {}: {e}", cgdir.display());
        return;
    }
    let _cg = Cgroup {
        dir: cgdir.clone(),
        files: &V2,
    };

    // The stand-in files: 40 MiB in use of which 8 MiB inactive file cache, no limit yet.
    let work = tempfile::tempdir().unwrap();
    let files = work.path().join("memory");
    std::fs::create_dir(&files).unwrap();
    let write = |name: &str, v: &str| std::fs::write(files.join(name), v).unwrap();
    write("memory.max", "max\n");
    write("memory.current", &format!("{}\n", 40 << 20));
    write(
        "memory.stat",
        &format!("anon 33554432\ninactive_file {}\n", 8 << 20),
    );

    // The shell moves itself into the v2 cgroup, then `unshare -m` (same pid) takes a private
    // mount namespace where the stand-ins cover the cgroup's directory, then execs the server.
    let port = free_port();
    let config = common::config_toml(port, "memory_pressure_percent = 80\n", "");
    std::fs::write(work.path().join("pushbox.toml"), config).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(
            "echo $$ > \"$1/cgroup.procs\" && exec unshare -m --propagation private \
             sh -c 'mount --bind \"$0\" \"$1\" && shift && exec \"$@\"' \"$0\" \"$@\"",
        )
        .arg(&files)
        .arg(&cgdir)
        .arg(BIN)
        .args(["serve", "--config"])
        .arg(work.path().join("pushbox.toml"))
        .env("PUSHBOX_STATE_DIR", work.path().join("state"))
        .env("PUSHBOX_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS");
    let s = Served::start_logged(&mut cmd, port, Ready::Up, work.path().join("serve.log"));
    let addr = s.addr();
    let procs = std::fs::read_to_string(cgdir.join("cgroup.procs")).unwrap_or_default();
    assert!(
        procs.lines().any(|p| p.trim() == s.child.id().to_string()),
        "the server runs in the v2 cgroup: {procs}"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { connect(addr).await.expect("connects without a limit") });
    assert_eq!(get(addr, "/up"), (200, "{\"status\":\"ok\"}".to_owned()));

    // 32 MiB counted (40 less the 8 of cache) against 36 MiB: 88 %, past the 80 % threshold.
    write("memory.max", &format!("{}\n", 36 << 20));
    let up = wait_up(addr, |b| b.contains("memory"));
    assert!(up.contains("memory pressure"), "/up says so: {up}");
    assert_eq!(
        metric(addr, "pushbox_memory_cgroup_bytes{kind=\"limit\"}").as_deref(),
        Some((36u64 << 20).to_string().as_str())
    );
    assert_eq!(
        metric(addr, "pushbox_memory_cgroup_bytes{kind=\"used\"}").as_deref(),
        Some((32u64 << 20).to_string().as_str()),
        "inactive_file is not pressure"
    );
    rt.block_on(async {
        assert_eq!(connect(addr).await.err(), Some(Some(4100)), "refused");
    });

    // `max` again: no limit, no pressure, new clients connect.
    write("memory.max", "max\n");
    let up = wait_up(addr, |b| !b.contains("memory"));
    assert_eq!(up, "{\"status\":\"ok\"}");
    rt.block_on(async {
        connect(addr)
            .await
            .expect("connects once the limit is gone")
    });
    s.stop();
}
