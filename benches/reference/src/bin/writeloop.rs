//! The write-loop reference (issue 8's "kernel's limit"): a Pusher-shaped WebSocket server that
//! does only what a fan-out needs and nothing else.
//!
//! * `GET /app/{any key}` with `Sec-WebSocket-Key` → 101 + `pusher:connection_established`.
//! * `pusher:subscribe` → joins the channel, `pusher_internal:subscription_succeeded` (`"{}"`).
//! * `pusher:ping` → `pusher:pong`; WebSocket ping → pong; close → close.
//! * `POST /apps/{id}/events` (keep-alive HTTP/1.1, Content-Length; no signature check): reads
//!   `name`, `channels`/`channel`, `data` with a minimal JSON scan, builds ONE frame per channel
//!   (`{"event":…,"channel":…,"data":"…"}` with its WebSocket header) as a refcounted `Bytes`, and
//!   appends a clone to every subscriber's queue; answers `200 {}`.
//! * Each socket's task writes its whole backlog with one `writev` (no per-frame copy);
//!   `TCP_NODELAY` is on, so nothing wins by Nagle.
//!
//! One thread, no locks (`Rc`/`RefCell` on a current-thread runtime): the server under test is
//! pinned to one core anyway.

use bytes::{Buf, Bytes};
use pushbox_bench_reference::{
    array_strings, exit_on_signal, fields, listen, parse_head, port_arg, Val, HTTP_200,
};
use sha1::{Digest, Sha1};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::rc::Rc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// One socket's outbound queue.
struct Out {
    q: RefCell<VecDeque<Bytes>>,
    wake: Notify,
}

impl Out {
    fn push(&self, f: Bytes) {
        let mut q = self.q.borrow_mut();
        let was_empty = q.is_empty();
        q.push_back(f);
        if was_empty {
            self.wake.notify_one();
        }
    }
}

/// Channel name → the queues of its subscribers.
type Channels = HashMap<Box<[u8]>, Vec<Rc<Out>>>;

#[derive(Default)]
struct Hub {
    channels: RefCell<Channels>,
    next_id: Cell<u64>,
}

fn main() {
    let port = port_arg();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let l = listen(port).expect("bind");
        tokio::task::spawn_local(exit_on_signal());
        let hub = Rc::new(Hub::default());
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::task::spawn_local(conn(s, hub.clone()));
        }
    });
}

async fn conn(mut s: TcpStream, hub: Rc<Hub>) {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let (ws_key, head_len) = loop {
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(4096);
        }
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if let Some(h) = parse_head(&buf) {
            let ws = h.method == b"GET" && h.path.starts_with(b"/app/");
            break (
                if ws {
                    h.ws_key.map(|k| k.to_vec())
                } else {
                    None
                },
                h.len,
            );
        }
        if buf.len() > 65536 {
            return;
        }
    };
    match ws_key {
        Some(key) => {
            let rest = buf[head_len..].to_vec();
            drop(buf);
            let _ = ws(s, &key, rest, hub).await;
        }
        None => {
            let _ = http(s, buf, &hub).await;
        }
    }
}

// ---------------------------------------------------------------- WebSocket side

fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64(&h.finalize())
}

fn base64(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut o = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        o.push(A[(n >> 18) as usize & 63] as char);
        o.push(A[(n >> 12) as usize & 63] as char);
        o.push(if c.len() > 1 {
            A[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        o.push(if c.len() > 2 {
            A[n as usize & 63] as char
        } else {
            '='
        });
    }
    o
}

/// A server frame (FIN, unmasked) around `payload`.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 10);
    push_header(&mut v, opcode, payload.len());
    v.extend_from_slice(payload);
    v
}

fn push_header(v: &mut Vec<u8>, opcode: u8, len: usize) {
    v.push(0x80 | opcode);
    if len < 126 {
        v.push(len as u8);
    } else if len < 65536 {
        v.push(126);
        v.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        v.push(127);
        v.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Parses one masked client frame at the start of `b`, unmasking it in place.
/// Returns (opcode, payload range, frame length).
fn client_frame(b: &mut [u8]) -> Option<(u8, std::ops::Range<usize>, usize)> {
    if b.len() < 2 {
        return None;
    }
    let opcode = b[0] & 0x0f;
    let masked = b[1] & 0x80 != 0;
    let mut len = (b[1] & 0x7f) as usize;
    let mut i = 2;
    if len == 126 {
        if b.len() < 4 {
            return None;
        }
        len = u16::from_be_bytes([b[2], b[3]]) as usize;
        i = 4;
    } else if len == 127 {
        if b.len() < 10 {
            return None;
        }
        len = u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize;
        i = 10;
    }
    let mask = if masked {
        if b.len() < i + 4 {
            return None;
        }
        let m = [b[i], b[i + 1], b[i + 2], b[i + 3]];
        i += 4;
        Some(m)
    } else {
        None
    };
    if b.len() < i + len {
        return None;
    }
    if let Some(m) = mask {
        for (k, c) in b[i..i + len].iter_mut().enumerate() {
            *c ^= m[k & 3];
        }
    }
    Some((opcode, i..i + len, i + len))
}

struct Session {
    out: Rc<Out>,
    channels: Vec<Box<[u8]>>,
    closing: bool,
}

impl Session {
    /// Handles every complete frame at the start of `b`; returns how many bytes were used.
    fn on_bytes(&mut self, b: &mut [u8], hub: &Hub) -> usize {
        let mut used = 0;
        while !self.closing {
            let Some((op, p, n)) = client_frame(&mut b[used..]) else {
                break;
            };
            let payload = &b[used..][p];
            match op {
                1 => self.on_text(payload, hub),
                8 => {
                    let code = payload.get(..2).unwrap_or(&[0x03, 0xe8]).to_vec();
                    self.out.push(Bytes::from(frame(8, &code)));
                    self.closing = true;
                }
                9 => self.out.push(Bytes::from(frame(10, payload))),
                _ => {}
            }
            used += n;
        }
        used
    }

    fn on_text(&mut self, msg: &[u8], hub: &Hub) {
        let (mut event, mut data) = (None, None);
        fields(msg, |k, v| match (k, v) {
            (b"event", Val::Str(e)) => event = Some(e),
            (b"data", v) => data = Some(v),
            _ => {}
        });
        match event {
            Some(b"pusher:ping") => self.out.push(Bytes::from_static(PONG)),
            Some(b"pusher:subscribe") => {
                let mut channel = None;
                if let Some(Val::Raw(d)) = data {
                    fields(d, |k, v| {
                        if let (b"channel", Val::Str(c)) = (k, v) {
                            channel = Some(c)
                        }
                    });
                }
                let Some(ch) = channel else { return };
                if self.channels.iter().any(|c| &c[..] == ch) {
                    return;
                }
                let ch: Box<[u8]> = ch.into();
                hub.channels
                    .borrow_mut()
                    .entry(ch.clone())
                    .or_default()
                    .push(self.out.clone());
                let mut p = Vec::with_capacity(96 + ch.len());
                p.extend_from_slice(
                    br#"{"event":"pusher_internal:subscription_succeeded","channel":""#,
                );
                p.extend_from_slice(&ch);
                p.extend_from_slice(br#"","data":"{}"}"#);
                self.out.push(Bytes::from(frame(1, &p)));
                self.channels.push(ch);
            }
            _ => {}
        }
    }

    fn leave(&mut self, hub: &Hub) {
        let mut chans = hub.channels.borrow_mut();
        for ch in self.channels.drain(..) {
            if let Some(v) = chans.get_mut(&ch) {
                if let Some(i) = v.iter().position(|o| Rc::ptr_eq(o, &self.out)) {
                    v.swap_remove(i);
                }
                if v.is_empty() {
                    chans.remove(&ch);
                }
            }
        }
    }
}

static PONG: &[u8] = b"\x81\x21{\"event\":\"pusher:pong\",\"data\":{}}";

async fn ws(mut s: TcpStream, key: &[u8], mut pending: Vec<u8>, hub: Rc<Hub>) -> io::Result<()> {
    let id = hub.next_id.get() + 1;
    hub.next_id.set(id);
    let mut hello = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    )
    .into_bytes();
    let est = format!(
        r#"{{"event":"pusher:connection_established","data":"{{\"socket_id\":\"{}.{}\",\"activity_timeout\":120}}"}}"#,
        std::process::id(),
        id
    );
    push_header(&mut hello, 1, est.len());
    hello.extend_from_slice(est.as_bytes());
    s.write_all(&hello).await?;
    drop(hello);

    let mut sess = Session {
        out: Rc::new(Out {
            q: RefCell::new(VecDeque::new()),
            wake: Notify::new(),
        }),
        channels: Vec::new(),
        closing: false,
    };
    let r = ws_loop(&s, &mut sess, &mut pending, &hub).await;
    sess.leave(&hub);
    r
}

async fn ws_loop(
    s: &TcpStream,
    sess: &mut Session,
    pending: &mut Vec<u8>,
    hub: &Hub,
) -> io::Result<()> {
    if !pending.is_empty() {
        let used = sess.on_bytes(pending, hub);
        pending.drain(..used);
    }
    loop {
        flush(s, &sess.out).await?;
        if sess.closing {
            return Ok(());
        }
        tokio::select! {
            r = s.readable() => {
                r?;
                // The read buffer lives only for this synchronous block (never across an await),
                // so it is not part of the connection's future: idle connections hold no buffer.
                let mut tmp = [0u8; 4096];
                match s.try_read(&mut tmp) {
                    Ok(0) => return Ok(()),
                    Ok(n) => {
                        if pending.is_empty() {
                            let used = sess.on_bytes(&mut tmp[..n], hub);
                            pending.extend_from_slice(&tmp[used..n]);
                        } else {
                            pending.extend_from_slice(&tmp[..n]);
                            let used = sess.on_bytes(pending, hub);
                            pending.drain(..used);
                        }
                        if pending.is_empty() {
                            *pending = Vec::new();
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            _ = sess.out.wake.notified() => {}
        }
    }
}

/// Writes the whole queue, one `writev` per attempt (up to IOV_MAX frames), no copies.
async fn flush(s: &TcpStream, out: &Out) -> io::Result<()> {
    const IOV_MAX: usize = 1024;
    loop {
        let r = {
            let q = out.q.borrow();
            if q.is_empty() {
                return Ok(());
            }
            let mut iov = [IoSlice::new(&[]); IOV_MAX];
            let n = q.len().min(IOV_MAX);
            for (slot, f) in iov.iter_mut().zip(q.iter()) {
                *slot = IoSlice::new(f);
            }
            s.try_write_vectored(&iov[..n])
        };
        match r {
            Ok(mut n) => {
                let mut q = out.q.borrow_mut();
                while n > 0 {
                    let f = q.front_mut().expect("wrote more than queued");
                    if n >= f.len() {
                        n -= f.len();
                        q.pop_front();
                    } else {
                        f.advance(n);
                        n = 0;
                    }
                }
                if q.is_empty() && q.capacity() > 64 {
                    *q = VecDeque::new();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => s.writable().await?,
            Err(e) => return Err(e),
        }
    }
}

// ---------------------------------------------------------------- HTTP side

async fn http(mut s: TcpStream, mut buf: Vec<u8>, hub: &Hub) -> io::Result<()> {
    let mut out: Vec<u8> = Vec::new();
    loop {
        let mut used = 0;
        let mut close = false;
        while let Some(h) = parse_head(&buf[used..]) {
            let total = h.len + h.content_length;
            if buf.len() - used < total {
                break;
            }
            close |= h.close;
            if h.method == b"POST" && h.path.starts_with(b"/apps/") {
                publish(&buf[used + h.len..used + total], hub);
            }
            used += total;
            out.extend_from_slice(HTTP_200);
        }
        buf.drain(..used);
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
        }
        if close {
            return Ok(());
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        if s.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

fn publish(body: &[u8], hub: &Hub) {
    let (mut name, mut channels, mut channel, mut data) = (None, None, None, None);
    fields(body, |k, v| match (k, v) {
        (b"name", Val::Str(n)) => name = Some(n),
        (b"channels", Val::Raw(c)) => channels = Some(c),
        (b"channel", Val::Str(c)) => channel = Some(c),
        (b"data", v) => data = Some(v),
        _ => {}
    });
    let (Some(name), Some(data)) = (name, data) else {
        return;
    };
    let escaped;
    let data: &[u8] = match data {
        Val::Str(d) => d,
        Val::Raw(r) => {
            escaped = escape(r);
            &escaped
        }
    };
    let chans = hub.channels.borrow();
    let mut send = |ch: &[u8]| {
        let Some(subs) = chans.get(ch) else { return };
        let len = 35 + name.len() + ch.len() + data.len();
        let mut f = Vec::with_capacity(len + 4);
        push_header(&mut f, 1, len);
        f.extend_from_slice(br#"{"event":""#);
        f.extend_from_slice(name);
        f.extend_from_slice(br#"","channel":""#);
        f.extend_from_slice(ch);
        f.extend_from_slice(br#"","data":""#);
        f.extend_from_slice(data);
        f.extend_from_slice(br#""}"#);
        debug_assert_eq!(f.len(), len + if len < 126 { 2 } else { 4 });
        let f = Bytes::from(f);
        for o in subs {
            o.push(f.clone());
        }
    };
    if let Some(c) = channels {
        array_strings(c, &mut send);
    } else if let Some(c) = channel {
        send(c);
    }
}

fn escape(r: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(r.len() + 8);
    for &c in r {
        if c == b'"' || c == b'\\' {
            v.push(b'\\');
        }
        v.push(c);
    }
    v
}
