//! A webhook receiver on 127.0.0.1 for the tests that need one (`tests/webhooks.rs`,
//! `tests/cluster.rs`): a raw TCP (or TLS) listener that records exactly what went over the
//! wire, one request per connection, and answers each with the next status of its script
//! (then its default, 200 unless a test sets it), or never (`hang`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as received: its head (request line and headers) and its body.
#[derive(Debug, Clone)]
pub struct Hit {
    pub head: String,
    pub body: Vec<u8>,
}

impl Hit {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("body is JSON")
    }
    pub fn names(&self) -> Vec<String> {
        self.json()["events"]
            .as_array()
            .expect("events array")
            .iter()
            .map(|e| e["name"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub hits: Arc<Mutex<Vec<Hit>>>,
    /// Statuses to answer, in order; then `default`.
    pub script: Arc<Mutex<VecDeque<u16>>>,
    pub default: Arc<AtomicU16>,
    /// Never answer (a receiver that hangs).
    pub hang: Arc<AtomicBool>,
}

impl Receiver {
    /// A receiver on a free port of 127.0.0.1 answering 200.
    pub async fn start() -> Receiver {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), None).await
    }

    /// A receiver on `listener`, over TLS when `tls` is given.
    pub async fn start_on(
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Receiver {
        let r = Receiver {
            addr: listener.local_addr().unwrap(),
            hits: Default::default(),
            script: Default::default(),
            default: Arc::new(AtomicU16::new(200)),
            hang: Default::default(),
        };
        let rr = r.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let rr = rr.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acc) => {
                            if let Ok(s) = acc.accept(s).await {
                                rr.serve(s).await
                            }
                        }
                        None => rr.serve(s).await,
                    }
                });
            }
        });
        r
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(&self, mut s: S) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end - 4]).to_string();
        let len: usize = head
            .split("\r\n")
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + len {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[head_end..head_end + len].to_vec();
        self.hits.lock().unwrap().push(Hit { head, body });
        if self.hang.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return;
        }
        let status = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(self.default.load(Ordering::SeqCst));
        let resp =
            format!("HTTP/1.1 {status} X\r\nContent-Length: 5\r\nConnection: close\r\n\r\nnope!");
        let _ = s.write_all(resp.as_bytes()).await;
        let _ = s.shutdown().await;
    }

    pub fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://{}{path}", self.addr)
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    pub async fn wait_hits(&self, n: usize, within: Duration) -> Vec<Hit> {
        let until = Instant::now() + within;
        loop {
            let h = self.hits();
            if h.len() >= n {
                return h;
            }
            assert!(
                Instant::now() < until,
                "expected {n} webhook requests within {within:?}, got {}: {h:#?}",
                h.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Receiver {
    /// Every event of every batch received, each with its batch's `time_ms` as `_time_ms`,
    /// in the order their batches were made (batches from two nodes may arrive in either
    /// order: their times say which came first).
    pub fn events(&self) -> Vec<Value> {
        let mut events: Vec<Value> = Vec::new();
        for h in self.hits() {
            let body: Value = serde_json::from_slice(&h.body).unwrap_or(Value::Null);
            if let Some(evs) = body["events"].as_array() {
                let t = body["time_ms"].clone();
                events.extend(evs.iter().map(|e| {
                    let mut e = e.clone();
                    e["_time_ms"] = t.clone();
                    e
                }));
            }
        }
        events.sort_by_key(|e| e["_time_ms"].as_u64().unwrap_or(0));
        events
    }

    /// (name, user id) of every event, in the order their batches were made.
    pub fn names(&self) -> Vec<(String, String)> {
        self.events()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap_or("").to_owned(),
                    e["user_id"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }
}
