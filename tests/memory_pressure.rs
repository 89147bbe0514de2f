//! Memory pressure under a real cgroup memory limit, as systemd's `MemoryMax=` sets one: the
//! real `pushbox serve` runs in a child cgroup this test creates (as root) under its own, with
//! `server.memory_pressure_percent = 80`. Without a limit everything connects; once the limit
//! is lowered to put the server at ~85 % of it, new WebSocket and fallback connections are
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
    let config = common::config_toml(port, "memory_pressure_percent = 80\n", "");
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

    // A limit that puts the server at ~85 % of it (the threshold is 80 %).
    let used = cg.used();
    let limit = (used * 100 / 85).div_ceil(4096) * 4096;
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
