//! Minimal HTTP responder (issue 8's HTTP-publish reference): keep-alive HTTP/1.1, reads each
//! request's head and its Content-Length body, answers `200 {}`. Nothing else: no routing, no
//! signature check, no JSON. One thread (the server is pinned to one core anyway).

use pushbox_bench_reference::{exit_on_signal, listen, parse_head, port_arg, HTTP_200};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn main() {
    let port = port_arg();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let l = listen(port).expect("bind");
        tokio::spawn(exit_on_signal());
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(conn(s));
        }
    });
}

async fn conn(mut s: TcpStream) {
    let mut buf: Vec<u8> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    loop {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut used = 0;
        let mut close = false;
        while let Some(h) = parse_head(&buf[used..]) {
            let total = h.len + h.content_length;
            if buf.len() - used < total {
                break;
            }
            close |= h.close;
            used += total;
            out.extend_from_slice(HTTP_200);
        }
        buf.drain(..used);
        if !out.is_empty() {
            if s.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if close {
            return;
        }
    }
}
