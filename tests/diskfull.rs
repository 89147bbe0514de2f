//! Disk full, end to end with the real `pushbox serve` binary on a small filesystem the test
//! mounts itself (a 2 MiB tmpfs; as root). Two ways to run out of room:
//!
//! * `enospc_…`: `spool.max_bytes` is far above the filesystem's size, so the OS's ENOSPC is
//!   what stops the event log. A filler file taken up front is deleted to free space.
//! * `disk_cap_…`: `spool.max_bytes` is small, so the cap answers first (this one also runs
//!   on a plain temp directory where mounting is refused: it needs no small filesystem).
//!
//! In both: the API answers 503 with a JSON object whose `error` says what to do; nothing that
//! got a 200 is lost and nothing that got a 503 is in the log, nor was it delivered to a
//! subscriber (the log finds out the disk is full before the fan-out: it keeps space reserved
//! ahead); the server restarts on the full disk and recovers cleanly (no torn tail to cut: the
//! failed write was cut back); once there is room again publishing works. Where mounting is
//! refused (not root, no CAP_SYS_ADMIN) the ENOSPC cases print `SKIPPED: …` and pass.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::Duration;

use common::{free_port, http_blocking as request, pushbox, Ready, Served, Subscriber};

// ---------------------------------------------------------------- a small filesystem

/// A tmpfs mounted on a temp directory; unmounted (lazily if busy) on drop, panics included.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `Err` says why mounting is not possible here.
    fn mount(size: &str) -> Result<Tmpfs, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("not running as root, cannot mount a tmpfs".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs refused: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Free bytes on the filesystem holding `p`.
fn free_bytes(p: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(p).unwrap();
    s.blocks_available() as u64 * s.fragment_size() as u64
}

// ---------------------------------------------------------------- the server

/// `work` holds the config and the logs (on the normal disk); `state` is the state directory.
fn write_config(work: &Path, port: u16, max_bytes: u64) {
    std::fs::write(
        work.join("pushbox.toml"),
        common::config_toml(
            port,
            &format!("[spool]\nmax_bytes = {max_bytes}\n"),
            "max_event_data_bytes = 10240\n",
        ),
    )
    .unwrap();
}

fn start(work: &Path, state: &Path, port: u16, run: &str) -> Served {
    let mut serve = pushbox(&["serve", "--config"]);
    serve
        .arg(work.join("pushbox.toml"))
        .env("PUSHBOX_STATE_DIR", state)
        .env("PUSHBOX_LOG", "warn");
    let stderr = work.join(format!("stderr-{run}.log"));
    Served::start_logged(&mut serve, port, Ready::Up, stderr)
}

/// A signed publish of one event with `data` to `orders`.
fn publish(s: &Served, data: &str) -> (u16, String) {
    s.trigger("disk-test", "orders", data)
}

/// `data` of every record in the event log, read from outside the server; seqs contiguous.
fn logged(state: &Path) -> Vec<String> {
    let reader = pushbox::spool::Spool::open_read_only(pushbox::eventlog::dir(state)).unwrap();
    let records = reader.read_from(1, usize::MAX).unwrap();
    let mut out = Vec::new();
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1, "event log seqs are contiguous from 1");
        let e: pushbox::eventlog::EventRecord =
            serde_json::from_slice(&r.payload).expect("every record is an EventRecord");
        out.push(e.data);
    }
    out
}

/// The log holds exactly the acknowledged events, in order (the publisher is sequential, so
/// an event that got a 503 must not be there either).
fn assert_log_is(state: &Path, acked: &[String]) {
    let log = logged(state);
    assert_eq!(
        log.len(),
        acked.len(),
        "the log holds exactly the acknowledged events"
    );
    assert!(
        log == acked,
        "the log holds the acknowledged events in order"
    );
}

fn payload(i: usize) -> String {
    format!("{i:06}-{}", "x".repeat(1000))
}

/// Publishes until the first 503 (asserting every other answer is 200); returns the 503's body.
fn publish_until_503(s: &Served, acked: &mut Vec<String>, limit: usize) -> String {
    for _ in 0..limit {
        let data = payload(acked.len());
        match publish(s, &data) {
            (200, _) => acked.push(data),
            (503, body) => return body,
            (st, body) => panic!("unexpected {st} after {} events: {body}", acked.len()),
        }
    }
    panic!("still accepting after {limit} events of 1 KB: the disk never filled");
}

/// The 503 body is a JSON object with an `error` a person can act on; returns the message.
fn assert_actionable_503(body: &str, hints: &[&str]) -> String {
    let v: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("503 body is not JSON ({e}): {body:?}"));
    let msg = v
        .as_object()
        .and_then(|o| o.get("error"))
        .and_then(|e| e.as_str())
        .unwrap_or_else(|| panic!("503 body is not an object with an `error` string: {body}"))
        .to_string();
    assert!(
        hints.iter().any(|h| msg.contains(h)),
        "the error says what to do (one of {hints:?}): {msg}"
    );
    msg
}

/// A 2 MiB tmpfs with most of it taken by a filler file (deleted later to free space), a
/// work directory with a config capped far above the filesystem (only ENOSPC can stop the
/// log) and a free port; `None` (after saying SKIPPED) where a tmpfs can't be mounted.
struct FullDisk {
    fs: Tmpfs,
    work: tempfile::TempDir,
    state: PathBuf,
    port: u16,
    filler: PathBuf,
}

fn full_disk(test: &str) -> Option<FullDisk> {
    let fs = match Tmpfs::mount("2m") {
        Ok(fs) => fs,
        Err(why) => {
            println!("SKIPPED {test}: {why} (run as root to mount a 2 MiB tmpfs)");
            return None;
        }
    };
    let work = tempfile::tempdir().unwrap();
    let state = fs.path().join("state");
    let port = free_port();
    write_config(work.path(), port, 1 << 30);
    let filler = fs.path().join("filler");
    std::fs::write(&filler, vec![0xa5u8; 1536 * 1024]).unwrap();
    Some(FullDisk {
        fs,
        work,
        state,
        port,
        filler,
    })
}

// ---------------------------------------------------------------- the tests

#[test]
fn enospc_answers_503_keeps_the_log_intact_and_publishing_resumes_once_space_is_freed() {
    let Some(FullDisk {
        fs,
        work,
        state,
        port,
        filler,
    }) = full_disk("enospc test")
    else {
        return;
    };

    let s = start(work.path(), &state, port, "fill");
    let mut acked = Vec::new();
    let body = publish_until_503(&s, &mut acked, 5000);
    let msg = assert_actionable_503(&body, &["Free space", "free space"]);
    println!(
        "ENOSPC after {} events ({} bytes free): {msg}",
        acked.len(),
        free_bytes(fs.path())
    );
    assert!(
        acked.len() > 50,
        "the log took events before the disk filled"
    );
    assert!(msg.contains("full"), "{msg}");
    // Still refusing (not crashing, not hanging), and the refusals left nothing behind.
    // (Same size as the refused one: a smaller record may still fit in the last page.)
    for _ in 0..5 {
        let (st, b) = publish(&s, &payload(acked.len()));
        assert_eq!(st, 503, "{b}");
    }
    assert_eq!(request(s.addr(), "GET", "/up", "").unwrap().0, 200);
    assert_log_is(&state, &acked);

    // A restart on the full disk: graceful stop, start, still a clean 503.
    s.stop();
    let s = start(work.path(), &state, port, "restart-full");
    let (st, b) = publish(&s, &payload(acked.len()));
    assert_eq!(st, 503, "{b}");
    assert_actionable_503(&b, &["Free space", "free space"]);
    assert_log_is(&state, &acked);

    // Free the space: publishing resumes at once, in the same process.
    std::fs::remove_file(&filler).unwrap();
    for _ in 0..50 {
        let data = payload(acked.len());
        let (st, b) = publish(&s, &data);
        assert_eq!(st, 200, "publishing resumes once space is freed: {b}");
        acked.push(data);
    }
    assert_log_is(&state, &acked);

    // SIGKILL and restart: recovery finds nothing to cut (the failed writes were cut back).
    s.kill();
    let s = start(work.path(), &state, port, "after");
    let log = s.log();
    assert!(
        !log.contains("recovered"),
        "the event log needed recovery after the disk-full episode:\n{log}"
    );
    let data = payload(acked.len());
    assert_eq!(publish(&s, &data).0, 200);
    acked.push(data);
    s.stop();
    assert_log_is(&state, &acked);
    for run in ["fill", "restart-full", "after"] {
        let log = std::fs::read_to_string(work.path().join(format!("stderr-{run}.log"))).unwrap();
        assert!(!log.contains("panicked"), "{run}: {log}");
    }
}

#[test]
fn enospc_refuses_before_delivery_so_subscribers_get_exactly_the_accepted_events() {
    let Some(FullDisk {
        fs: _mounted,
        work,
        state,
        port,
        filler,
    }) = full_disk("enospc delivery test")
    else {
        return;
    };

    let s = start(work.path(), &state, port, "deliver");
    let sub = Subscriber::start(s.addr(), "orders");
    let mut acked = Vec::new();
    let body = publish_until_503(&s, &mut acked, 5000);
    let msg = assert_actionable_503(&body, &["Free space", "free space"]);
    assert!(
        msg.contains("not delivered"),
        "the 503 says nothing was delivered: {msg}"
    );
    assert!(
        !msg.contains("twice"),
        "a refused event reached nobody: {msg}"
    );
    let refused = payload(acked.len());
    for _ in 0..3 {
        assert_eq!(publish(&s, &refused).0, 503);
    }
    let got = sub.received(Duration::from_millis(500));
    assert!(
        !got.contains(&refused),
        "an event answered 503 was delivered to a subscriber"
    );
    assert_eq!(
        got.len(),
        acked.len(),
        "every accepted event, and only those"
    );
    assert!(
        got == acked,
        "the subscriber got the accepted events in order"
    );
    assert_log_is(&state, &acked);

    // Room again: the same event is accepted and delivered once.
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(publish(&s, &refused).0, 200);
    assert_eq!(sub.received(Duration::from_millis(300)), vec![refused]);
    s.stop();
}

#[test]
fn disk_cap_answers_503_before_the_disk_fills_and_a_raised_cap_takes_events_again() {
    // On the small filesystem where possible; the cap needs none, so a plain temp dir otherwise.
    let fs = Tmpfs::mount("2m")
        .map_err(|why| println!("note: {why}; running the cap test on a plain temp directory"))
        .ok();
    let plain = tempfile::tempdir().unwrap();
    let root = fs.as_ref().map_or(plain.path(), |f| f.path());
    let work = tempfile::tempdir().unwrap();
    let state = root.join("state");
    let port = free_port();
    let cap = 64 * 1024;
    write_config(work.path(), port, cap);

    let s = start(work.path(), &state, port, "cap");
    let mut acked = Vec::new();
    let body = publish_until_503(&s, &mut acked, 1000);
    let msg = assert_actionable_503(&body, &["spool.max_bytes"]);
    println!(
        "cap of {cap} bytes reached after {} events: {msg}",
        acked.len()
    );
    let disk = pushbox::spool::Spool::open_read_only(pushbox::eventlog::dir(&state))
        .unwrap()
        .stats()
        .unwrap()
        .total_bytes;
    assert!(disk <= cap, "the log stays within its cap: {disk} > {cap}");
    assert!(
        disk + 2 * 1024 > cap,
        "the cap was nearly used before refusing: {disk} of {cap}"
    );
    if fs.is_some() {
        assert!(
            free_bytes(root) > 1024 * 1024,
            "the cap answered, not the disk"
        );
    }
    for _ in 0..3 {
        assert_eq!(publish(&s, &payload(acked.len())).0, 503);
    }
    assert_log_is(&state, &acked);

    // Raise the cap and restart: publishing works again; nothing was lost or left over.
    s.stop();
    write_config(work.path(), port, 1024 * 1024);
    let s = start(work.path(), &state, port, "raised");
    assert!(!s.log().contains("recovered"), "{}", s.log());
    for _ in 0..20 {
        let data = payload(acked.len());
        let (st, b) = publish(&s, &data);
        assert_eq!(st, 200, "{b}");
        acked.push(data);
    }
    s.stop();
    assert_log_is(&state, &acked);
}

#[test]
fn an_event_crossing_the_cap_is_refused_before_delivery() {
    // The cap, not the disk: a plain temp directory will do. The log holds less than its cap
    // when the event that would cross it comes: that one must reach nobody.
    let plain = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let state = plain.path().join("state");
    let port = free_port();
    let cap = 48 * 1024;
    write_config(work.path(), port, cap);

    let s = start(work.path(), &state, port, "cap-delivery");
    let sub = Subscriber::start(s.addr(), "orders");
    let mut acked = Vec::new();
    let body = publish_until_503(&s, &mut acked, 1000);
    let msg = assert_actionable_503(&body, &["spool.max_bytes"]);
    assert!(msg.contains("nothing was published"), "{msg}");
    let used = pushbox::spool::Spool::open_read_only(pushbox::eventlog::dir(&state))
        .unwrap()
        .stats()
        .unwrap()
        .total_bytes;
    assert!(
        used < cap,
        "refused before the log reached its cap ({used} of {cap}): the refused event would \
         have crossed it"
    );
    let refused = payload(acked.len());
    for _ in 0..3 {
        assert_eq!(publish(&s, &refused).0, 503);
    }
    let got = sub.received(Duration::from_millis(500));
    assert!(
        !got.contains(&refused),
        "an event answered 503 was delivered to a subscriber"
    );
    assert!(
        got == acked,
        "the subscriber got exactly the accepted events, in order"
    );
    // A smaller event still fits under the cap and is taken.
    let small = "s".to_owned();
    let (st, b) = publish(&s, &small);
    if used + 300 < cap {
        assert_eq!(st, 200, "{b}");
        acked.push(small);
    }
    s.stop();
    assert_log_is(&state, &acked);
}

#[test]
fn concurrent_publishes_crossing_the_cap_together_are_refused_before_delivery_too() {
    // Eight publishers at once near the cap: each event passes the check on its own, but not
    // all of them fit together. The log sets room aside for those on their way, so the ones
    // that don't fit are refused before anyone gets them, like a lone publisher's.
    let plain = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let state = plain.path().join("state");
    let port = free_port();
    write_config(work.path(), port, 48 * 1024);
    let s = start(work.path(), &state, port, "cap-concurrent");
    let sub = Subscriber::start(s.addr(), "orders");
    let addr = s.addr();
    let publishers: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let (mut acked, mut refused) = (Vec::new(), Vec::new());
                for i in 0..200 {
                    let data = format!("{t}-{i:04}-{}", "x".repeat(1000));
                    let body =
                        serde_json::json!({"name": "disk-test", "channel": "orders", "data": data})
                            .to_string();
                    let path = format!("/apps/{}/events", common::APP_ID);
                    let signed = common::signed("POST", &path, &body, &[]);
                    match request(addr, "POST", &signed, &body).unwrap() {
                        (200, _) => acked.push(data),
                        (503, answer) => {
                            refused.push(answer);
                            break;
                        }
                        (st, answer) => panic!("unexpected {st}: {answer}"),
                    }
                }
                (acked, refused)
            })
        })
        .collect();
    let (mut acked, mut refusals) = (Vec::new(), Vec::new());
    for p in publishers {
        let (a, r) = p.join().unwrap();
        acked.extend(a);
        refusals.extend(r);
    }
    assert!(!refusals.is_empty(), "the cap was reached");
    for answer in &refusals {
        let msg = assert_actionable_503(answer, &["spool.max_bytes"]);
        assert!(
            msg.contains("nothing was published"),
            "a 503 after delivery: {msg}"
        );
    }
    let mut got = sub.received(Duration::from_millis(500));
    got.sort();
    acked.sort();
    assert_eq!(
        got.len(),
        acked.len(),
        "every accepted event, and only those"
    );
    assert!(
        got == acked,
        "the subscriber got exactly the accepted events"
    );
    s.stop();
    let mut log = logged(&state);
    log.sort();
    assert!(log == acked, "the log holds exactly the accepted events");
}
