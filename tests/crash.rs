//! Crash loop: SIGKILL the real `pushbox serve` binary again and again on one state directory
//! while the shop publishes durably over the HTTP API, WebSocket clients come and go (so the
//! hub emits `channel_occupied`, `channel_vacated`, `member_added` and `member_removed`
//! webhooks) and the webhook receiver is down for part of the run.
//!
//! After every kill, and again after the last (graceful) run:
//! * every event the API answered 200 for is in the event log (read from outside the server
//!   with `Spool::open_read_only`), the log's seqs are contiguous, and no other status than 200
//!   ever came back;
//! * every restart comes up (`GET /up` answers 200) whatever recovery found, and no server's
//!   stderr holds a panic;
//! * every webhook for activity the hub saw at least `WINDOW` (batch window + fsync margin)
//!   before a kill reaches the receiver at least once (deduplicated by `X-Pushbox-Batch-Id`),
//!   and nothing was dead-lettered. Activity younger than that at the kill may legitimately be
//!   lost (it was still in the batcher's memory or in an un-fsynced group commit); it is only
//!   counted.
//!
//! Default: 20 cycles (about half a minute). Long mode:
//! `PUSHBOX_CRASH_CYCLES=100 cargo test --test crash -- --nocapture`
//! (`PUSHBOX_CRASH_SEED=N` replays a run's kill timings; the seed is printed.)

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use common::{free_port, pushbox, Ready, Served, APP_ID, KEY, SECRET};

/// `webhooks.batch_ms` of the server under test.
const BATCH_MS: u64 = 20;
/// Activity acknowledged at least this long before a SIGKILL must produce its webhook: the
/// batching window plus a generous margin for the group commit's fdatasync on a busy VM disk.
const WINDOW: Duration = Duration::from_millis(BATCH_MS + 480);
/// Concurrent publishers.
const PUBLISHERS: usize = 4;

/// A tiny deterministic PRNG (xorshift64*), so a failing run can be replayed with its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

// ---------------------------------------------------------------- the webhook receiver

/// batch id -> (deliveries, events as (name, channel, user_id)).
type Seen = Arc<Mutex<HashMap<String, (usize, Vec<Activity>)>>>;

/// A raw HTTP receiver on a fixed port that can be taken down (the port refuses connections)
/// and brought back up. Records each request's batch id and events.
struct Receiver {
    port: u16,
    /// batch id -> (deliveries, events as (name, channel, user_id)).
    seen: Seen,
    requests: Arc<AtomicU64>,
    unsigned: Arc<AtomicU64>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    fn new() -> Receiver {
        Receiver {
            port: free_port(),
            seen: Default::default(),
            requests: Default::default(),
            unsigned: Default::default(),
            task: None,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    async fn up(&mut self) {
        if self.task.is_some() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot rebind the receiver port {}: {e}", self.port),
            }
        };
        let (seen, requests, unsigned) = (
            self.seen.clone(),
            self.requests.clone(),
            self.unsigned.clone(),
        );
        self.task = Some(tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let (seen, requests, unsigned) = (seen.clone(), requests.clone(), unsigned.clone());
                tokio::spawn(async move {
                    let _ = serve_hook(s, seen, requests, unsigned).await;
                });
            }
        }));
    }

    /// Stop listening: new connections are refused (the port is closed).
    async fn down(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

async fn serve_hook(
    mut s: TcpStream,
    seen: Seen,
    requests: Arc<AtomicU64>,
    unsigned: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body: Value = serde_json::from_slice(&buf[head_end..head_end + len])
        .unwrap_or_else(|e| panic!("webhook body is not JSON: {e}"));
    let id = header("x-pushbox-batch-id").expect("every webhook carries X-Pushbox-Batch-Id");
    if header("x-pusher-signature").is_none() || header("x-pusher-key").as_deref() != Some(KEY) {
        unsigned.fetch_add(1, Ordering::Relaxed);
    }
    let events: Vec<Activity> = body["events"]
        .as_array()
        .expect("events array")
        .iter()
        .map(|e| Activity {
            kind: e["name"].as_str().unwrap_or("").to_string(),
            channel: e["channel"].as_str().unwrap_or("").to_string(),
            user_id: e["user_id"].as_str().map(str::to_string),
        })
        .collect();
    requests.fetch_add(1, Ordering::Relaxed);
    {
        let mut seen = seen.lock().unwrap();
        let e = seen.entry(id).or_insert((0, events));
        e.0 += 1;
    }
    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        .await?;
    s.shutdown().await
}

// ---------------------------------------------------------------- what the shop and the clients did

/// One webhook event, as the hub should report it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Activity {
    kind: String,
    channel: String,
    user_id: Option<String>,
}

fn act(kind: &str, channel: &str, user_id: Option<&str>) -> Activity {
    Activity {
        kind: kind.into(),
        channel: channel.into(),
        user_id: user_id.map(str::to_string),
    }
}

#[derive(Default)]
struct Record {
    /// `data` of every event the API answered 200 for, per cycle.
    acked: Mutex<Vec<(usize, String)>>,
    /// Non-200 answers (a bug: the server never had a reason to refuse).
    refused: Mutex<Vec<(u16, String)>>,
    /// Requests that failed at the connection level (the kill).
    conn_errors: AtomicU64,
    /// Activity and when its acknowledgement (a later subscription_succeeded on the same
    /// connection) arrived: the hub had emitted the event by then.
    activity: Mutex<Vec<(Activity, Instant)>>,
}

/// One signed `POST /apps/{id}/events`, tolerant of the server dying under it.
async fn publish(addr: SocketAddr, data: &str) -> Result<(u16, String), String> {
    let body =
        serde_json::json!({"name": "crash-test", "channel": "orders", "data": data}).to_string();
    let signed = common::signed("POST", &format!("/apps/{APP_ID}/events"), &body, &[]);
    let req = format!(
        "POST {signed} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status: u16 = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status line in {text:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "timeout".to_string())?
}

async fn publisher(
    addr: SocketAddr,
    cycle: usize,
    id: usize,
    rec: Arc<Record>,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let data = format!("c{cycle}-p{id}-{n}");
        n += 1;
        match publish(addr, &data).await {
            Ok((200, _)) => rec.acked.lock().unwrap().push((cycle, data)),
            Ok((st, body)) => rec.refused.lock().unwrap().push((st, body)),
            Err(_) => {
                rec.conn_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn send(ws: &mut Ws, v: Value) -> Result<(), ()> {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .map_err(|_| ())
}

/// Waits for `pusher_internal:subscription_succeeded` on `channel`.
async fn acked(ws: &mut Ws, channel: &str) -> Result<Instant, ()> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .map_err(|_| ())?;
        match m {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).map_err(|_| ())?;
                if v["event"] == "pusher_internal:subscription_succeeded" && v["channel"] == channel
                {
                    return Ok(Instant::now());
                }
                if v["event"] == "pusher:error" {
                    panic!("subscribe to {channel} refused: {v}");
                }
            }
            Some(Ok(_)) => continue,
            _ => return Err(()),
        }
    }
}

/// A WebSocket client that subscribes to a fresh channel, unsubscribes, subscribes to the next
/// one, ... until the server dies or `stop`. Because a connection's messages are handled in
/// order, the acknowledgement of subscription k+1 proves the hub has handled the unsubscribe of
/// channel k too (and emitted its webhooks).
async fn churner(
    addr: SocketAddr,
    cycle: usize,
    presence: bool,
    rec: Arc<Record>,
    stop: Arc<AtomicBool>,
) {
    let url = format!("ws://{addr}/app/{KEY}?protocol=7&client=js&version=8.6.0");
    let Ok(Ok((mut ws, _))) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await
    else {
        return;
    };
    let socket_id = loop {
        let Ok(Some(Ok(Message::Text(t)))) =
            tokio::time::timeout(Duration::from_secs(5), ws.next()).await
        else {
            return;
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["event"] == "pusher:connection_established" {
            let d: Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
            break d["socket_id"].as_str().unwrap().to_string();
        }
    };
    let mut prev: Option<(String, Option<String>)> = None;
    let mut k = 0;
    while !stop.load(Ordering::SeqCst) {
        let (channel, user) = if presence {
            (
                format!("presence-c{cycle}-{k}"),
                Some(format!("u-c{cycle}-{k}")),
            )
        } else {
            (format!("room-c{cycle}-{k}"), None)
        };
        k += 1;
        if let Some((ch, _)) = &prev {
            if send(
                &mut ws,
                serde_json::json!({"event":"pusher:unsubscribe","data":{"channel":ch}}),
            )
            .await
            .is_err()
            {
                return;
            }
        }
        let sub = match &user {
            Some(u) => {
                let channel_data =
                    serde_json::json!({"user_id": u, "user_info": {"n": k}}).to_string();
                let sig = pushbox::protocol::auth::sign(
                    SECRET,
                    format!("{socket_id}:{channel}:{channel_data}").as_bytes(),
                );
                serde_json::json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":format!("{KEY}:{sig}"),"channel_data":channel_data}})
            }
            None => {
                serde_json::json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":""}})
            }
        };
        if send(&mut ws, sub).await.is_err() {
            return;
        }
        let Ok(at) = acked(&mut ws, &channel).await else {
            return;
        };
        {
            let mut a = rec.activity.lock().unwrap();
            if let Some((ch, u)) = prev.take() {
                if let Some(u) = &u {
                    a.push((act("member_removed", &ch, Some(u)), at));
                }
                a.push((act("channel_vacated", &ch, None), at));
            }
            a.push((act("channel_occupied", &channel, None), at));
            if let Some(u) = &user {
                a.push((act("member_added", &channel, Some(u)), at));
            }
        }
        prev = Some((channel, user));
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

// ---------------------------------------------------------------- the server

fn config_toml(port: u16, webhook_url: &str) -> String {
    common::config_toml(
        port,
        &format!("[webhooks]\nbatch_ms = {BATCH_MS}\nbackoff_initial_ms = 20\nbackoff_max_ms = 150\ntimeout_ms = 2000\n"),
        &format!("webhook_url = \"{webhook_url}\"\n"),
    )
}

/// Start `pushbox serve` on `dir` and wait until `GET /up` answers 200 (the event log and the
/// webhook queue are open by then: the listener is served only after recovery).
fn start(dir: &Path, port: u16, run: usize) -> Served {
    let mut serve = pushbox(&["serve", "--config"]);
    serve
        .arg(dir.join("pushbox.toml"))
        .env("PUSHBOX_STATE_DIR", dir.join("state"))
        .env("PUSHBOX_LOG", "warn");
    let stderr = dir.join(format!("stderr-{run}.log"));
    tokio::task::block_in_place(|| Served::start_logged(&mut serve, port, Ready::Up, stderr))
}

/// Panics if a server's stderr shows a panic; returns whether it reported a recovery.
fn check_stderr(server: &Served, run: usize) -> bool {
    let text = server.log();
    assert!(
        !text.contains("panicked") && !text.contains("RUST_BACKTRACE"),
        "run {run}: the server panicked:\n{text}"
    );
    text.contains("recovered")
}

/// Every record of the event log, read from outside the server (no lock, no recovery: a torn
/// tail left by the kill is simply not returned). Asserts the seqs are contiguous.
fn read_log(state: &Path) -> Vec<pushbox::eventlog::EventRecord> {
    let reader = pushbox::spool::Spool::open_read_only(pushbox::eventlog::dir(state))
        .expect("open the event log read-only");
    let records = reader.read_from(1, usize::MAX).expect("read the event log");
    let mut out = Vec::with_capacity(records.len());
    let first = records.first().map(|r| r.seq).unwrap_or(1);
    assert_eq!(first, 1, "nothing was retired, so the log starts at seq 1");
    for (expect, r) in (first..).zip(records) {
        assert_eq!(r.seq, expect, "event log seqs are contiguous");
        out.push(serde_json::from_slice(&r.payload).expect("every record is an EventRecord"));
    }
    out
}

fn assert_acked_in_log(state: &Path, rec: &Record, upto_cycle: usize) -> usize {
    let log = read_log(state);
    let logged: HashSet<&str> = log
        .iter()
        .filter(|r| r.name == "crash-test" && r.channels == ["orders"] && r.app == APP_ID)
        .map(|r| r.data.as_str())
        .collect();
    let acked = rec.acked.lock().unwrap();
    let missing: Vec<&(usize, String)> = acked
        .iter()
        .filter(|(c, d)| *c <= upto_cycle && !logged.contains(d.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events are missing from the event log (of {} acknowledged, {} logged), e.g. {:?}",
        missing.len(),
        acked.len(),
        log.len(),
        &missing[..missing.len().min(10)]
    );
    log.len()
}

/// Appends `bytes` to the newest segment file of the spool in `dir` (a torn write).
fn append_to_last_segment(dir: &Path, bytes: &[u8]) {
    use std::io::Write;
    let last = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max()
        .expect("a segment file");
    std::fs::OpenOptions::new()
        .append(true)
        .open(last)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

// ---------------------------------------------------------------- the test

#[test]
fn sigkill_loop_keeps_every_acknowledged_event_and_enqueued_webhook() {
    let cycles: usize = std::env::var("PUSHBOX_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("PUSHBOX_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("crash loop: {cycles} cycles, PUSHBOX_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let state = dir.join("state");
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let rec = Arc::new(Record::default());
    let started = Instant::now();

    rt.block_on(async {
        let mut receiver = Receiver::new();
        std::fs::write(dir.join("pushbox.toml"), config_toml(port, &receiver.url())).unwrap();
        let mut recoveries = 0;
        let mut must_arrive: HashSet<Activity> = HashSet::new();
        // Activity younger than WINDOW at its kill, with its age then (not required to arrive).
        let mut young: Vec<(Activity, Duration)> = Vec::new();
        let mut torn = 0;
        let mut down_cycles = 0;

        for cycle in 0..cycles {
            // The receiver: down for three cycles, up for three, ... (up at the end).
            if (cycle / 3) % 2 == 0 {
                receiver.down().await;
                down_cycles += 1;
            } else {
                receiver.up().await;
            }
            let server = start(dir, port, cycle);
            let stop = Arc::new(AtomicBool::new(false));
            let mut tasks = Vec::new();
            for p in 0..PUBLISHERS {
                tasks.push(tokio::spawn(publisher(addr, cycle, p, rec.clone(), stop.clone())));
            }
            for presence in [false, true] {
                tasks.push(tokio::spawn(churner(addr, cycle, presence, rec.clone(), stop.clone())));
            }
            tokio::time::sleep(Duration::from_millis(rng.range(600, 1300))).await;

            // SIGKILL: whatever the writer threads, the batcher and the lanes were doing.
            let killed_at = Instant::now();
            let mut server = server;
            server.child.kill().expect("SIGKILL");
            let _ = server.child.wait();
            stop.store(true, Ordering::SeqCst);
            for t in tasks {
                t.await.expect("a client task panicked");
            }
            if check_stderr(&server, cycle) {
                recoveries += 1;
            }
            drop(server);
            for (a, at) in rec.activity.lock().unwrap().drain(..) {
                if at + WINDOW <= killed_at {
                    must_arrive.insert(a);
                } else {
                    young.push((a, killed_at.saturating_duration_since(at)));
                }
            }
            // Acknowledged means on disk: check before anything recovers.
            let refused = rec.refused.lock().unwrap();
            assert!(refused.is_empty(), "the API refused events: {:?}", &refused[..refused.len().min(5)]);
            drop(refused);
            assert_acked_in_log(&state, &rec, cycle);
            // A SIGKILL cannot tear a write (the page cache survives it); every 4th cycle also
            // leave what a power cut could: garbage after the last record of both queues.
            if cycle % 4 == 3 {
                for spool in ["events", "webhooks"] {
                    let garbage: Vec<u8> = (0..rng.range(1, 64)).map(|_| rng.next() as u8).collect();
                    append_to_last_segment(&state.join(spool), &garbage);
                }
                torn += 1;
            }
        }

        // The last run: receiver up, graceful stop.
        receiver.up().await;
        let mut server = start(dir, port, cycles);
        if check_stderr(&server, cycles) {
            recoveries += 1;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let missing = loop {
            let arrived: HashSet<Activity> = receiver
                .seen
                .lock()
                .unwrap()
                .values()
                .flat_map(|(_, evs)| evs.iter().cloned())
                .collect();
            let missing: Vec<&Activity> = must_arrive.iter().filter(|a| !arrived.contains(a)).collect();
            if missing.is_empty() || Instant::now() > deadline {
                break missing.into_iter().cloned().collect::<Vec<_>>();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // One more publish after all the crashes: the log still takes events.
        let (st, body) = publish(addr, "after-the-crashes").await.expect("publish");
        assert_eq!(st, 200, "{body}");
        rec.acked.lock().unwrap().push((cycles, "after-the-crashes".into()));

        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(server.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = server.child.wait().unwrap();
        assert!(status.success(), "graceful stop: {status}");
        check_stderr(&server, cycles);
        let logged = assert_acked_in_log(&state, &rec, cycles);

        let seen = receiver.seen.lock().unwrap();
        let arrived: HashSet<&Activity> = seen.values().flat_map(|(_, e)| e.iter()).collect();
        let lost: Vec<&(Activity, Duration)> = young.iter().filter(|(a, _)| !arrived.contains(a)).collect();
        let oldest_lost = lost.iter().map(|(_, age)| *age).max().unwrap_or_default();
        let deliveries: usize = seen.values().map(|(n, _)| n).sum();
        let dupes = seen.values().filter(|(n, _)| *n > 1).count();
        let arrived_events: usize = seen.values().map(|(_, e)| e.len()).sum();
        let dead = pushbox::spool::Spool::open_read_only(state.join("webhooks-dead"))
            .map(|r| r.read_from(1, usize::MAX).map(|v| v.len()).unwrap_or(0))
            .unwrap_or(0);
        println!(
            "crash loop done in {:.1}s: {cycles} SIGKILLs ({down_cycles} with the receiver down), {recoveries} runs logged a recovery; \
             events: {} acknowledged, {} connection errors, {logged} in the log; \
             webhooks: {} events that had to arrive, {} younger than {:?} at a kill (not required; {} of them lost, the oldest {:?} before its kill), \
             {} batches / {arrived_events} events arrived in {deliveries} requests ({dupes} batches more than once), {dead} dead letters",
            started.elapsed().as_secs_f64(),
            rec.acked.lock().unwrap().len(),
            rec.conn_errors.load(Ordering::Relaxed),
            must_arrive.len(),
            young.len(),
            WINDOW,
            lost.len(),
            oldest_lost,
            seen.len(),
        );
        assert!(
            missing.is_empty(),
            "{} of {} webhook events for activity older than {WINDOW:?} at a kill never arrived, e.g. {:?}",
            missing.len(),
            must_arrive.len(),
            &missing[..missing.len().min(10)]
        );
        assert_eq!(receiver.unsigned.load(Ordering::Relaxed), 0, "every webhook is signed");
        assert_eq!(dead, 0, "no batch was dead-lettered");
        assert!(rec.acked.lock().unwrap().len() > cycles * 10, "the shop published during the run");
        assert!(must_arrive.len() > cycles * 10, "the clients generated webhook activity");
        assert!(recoveries >= torn, "{torn} runs started on a torn tail, only {recoveries} logged a recovery");
        drop(seen);
        drop(receiver);
    });
}
