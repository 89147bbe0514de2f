//! Shared bits of the two reference servers: argument parsing, the listener, SIGTERM, HTTP/1.1
//! request framing and a minimal JSON scanner. Deliberately small: these servers are the
//! "nothing else" baselines that pushbox is measured against (issue 8), not products.

use std::io;
use tokio::net::{TcpListener, TcpSocket};

/// `--port N` (default 6200).
pub fn port_arg() -> u16 {
    let mut args = std::env::args().skip(1);
    let mut port = 6200;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().and_then(|p| p.parse().ok()).expect("--port N"),
            s if s.starts_with("--port=") => port = s[7..].parse().expect("--port=N"),
            "-h" | "--help" => {
                println!(
                    "usage: {} [--port N]",
                    std::env::args().next().unwrap_or_default()
                );
                std::process::exit(0);
            }
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    port
}

/// Listen on 127.0.0.1:port with a deep accept backlog, print `listening`.
pub fn listen(port: u16) -> io::Result<TcpListener> {
    let s = TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind(([127, 0, 0, 1], port).into())?;
    let l = s.listen(4096)?;
    use std::io::Write;
    println!("listening");
    let _ = std::io::stdout().flush();
    Ok(l)
}

/// Exits the process on SIGTERM or SIGINT.
pub async fn exit_on_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    std::process::exit(0);
}

/// One parsed HTTP/1.1 request head.
pub struct Head<'a> {
    pub method: &'a [u8],
    pub path: &'a [u8],
    /// Length of the head including the blank line.
    pub len: usize,
    pub content_length: usize,
    pub ws_key: Option<&'a [u8]>,
    pub close: bool,
}

/// Parses a request head if `buf` holds a complete one.
pub fn parse_head(buf: &[u8]) -> Option<Head<'_>> {
    let end = find(buf, b"\r\n\r\n")? + 4;
    let head = &buf[..end];
    let line_end = find(head, b"\r\n")?;
    let mut parts = head[..line_end].split(|&c| c == b' ');
    let method = parts.next()?;
    let path = parts.next()?;
    let mut h = Head {
        method,
        path,
        len: end,
        content_length: 0,
        ws_key: None,
        close: false,
    };
    for line in head[line_end + 2..end - 2].split(|&c| c == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"content-length") {
            h.content_length = std::str::from_utf8(value).ok()?.parse().ok()?;
        } else if name.eq_ignore_ascii_case(b"sec-websocket-key") {
            h.ws_key = Some(value);
        } else if name.eq_ignore_ascii_case(b"connection") && value.eq_ignore_ascii_case(b"close") {
            h.close = true;
        }
    }
    Some(h)
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub const HTTP_200: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";

/// A JSON value found by [`fields`]: a string's raw (still escaped) contents, or any other value's
/// raw text.
#[derive(Debug, PartialEq, Clone, Copy)]
pub enum Val<'a> {
    Str(&'a [u8]),
    Raw(&'a [u8]),
}

/// Calls `f(key, value)` for each member of the top-level JSON object in `b` (keys raw, values
/// unparsed). Stops at the first syntax it does not expect. Minimal by design.
pub fn fields<'a>(b: &'a [u8], mut f: impl FnMut(&'a [u8], Val<'a>)) {
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return;
    }
    i += 1;
    loop {
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b'"') => {}
            _ => return,
        }
        let Some(kend) = str_end(b, i + 1) else {
            return;
        };
        let key = &b[i + 1..kend];
        i = skip_ws(b, kend + 1);
        if b.get(i) != Some(&b':') {
            return;
        }
        i = skip_ws(b, i + 1);
        let start = i;
        let val = if b.get(i) == Some(&b'"') {
            let Some(e) = str_end(b, i + 1) else { return };
            i = e + 1;
            Val::Str(&b[start + 1..e])
        } else {
            let Some(e) = value_end(b, i) else { return };
            i = e;
            Val::Raw(&b[start..e])
        };
        f(key, val);
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b',') => i += 1,
            _ => return,
        }
    }
}

/// Calls `f` with each string element (raw) of a JSON array's text.
pub fn array_strings<'a>(b: &'a [u8], mut f: impl FnMut(&'a [u8])) {
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'[') {
        return;
    }
    i += 1;
    loop {
        i = skip_ws(b, i);
        if b.get(i) != Some(&b'"') {
            return;
        }
        let Some(e) = str_end(b, i + 1) else { return };
        f(&b[i + 1..e]);
        i = skip_ws(b, e + 1);
        match b.get(i) {
            Some(b',') => i += 1,
            _ => return,
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\r' | b'\n')) {
        i += 1;
    }
    i
}

/// Index of the closing quote of a string whose contents start at `i`.
fn str_end(b: &[u8], mut i: usize) -> Option<usize> {
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// End (exclusive) of a non-string value starting at `i`: nested objects/arrays balanced.
fn value_end(b: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    while i < b.len() {
        match b[i] {
            b'"' => i = str_end(b, i + 1)?,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                if depth == 0 {
                    return Some(i);
                }
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            b',' if depth == 0 => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_fields() {
        let body = br#"{"name":"ev","channels":["a","b\"c"], "data":"x\"y","n":{"k":[1,2]},"z":3}"#;
        let mut got = vec![];
        fields(body, |k, v| got.push((k.to_vec(), v)));
        assert_eq!(got.len(), 5);
        assert_eq!(got[0].1, Val::Str(b"ev"));
        let Val::Raw(ch) = got[1].1 else { panic!() };
        let mut chans = vec![];
        array_strings(ch, |c| chans.push(c.to_vec()));
        assert_eq!(chans, vec![b"a".to_vec(), br#"b\"c"#.to_vec()]);
        assert_eq!(got[2].1, Val::Str(br#"x\"y"#));
        assert_eq!(got[3].1, Val::Raw(br#"{"k":[1,2]}"#));
        assert_eq!(got[4].1, Val::Raw(b"3"));
    }

    #[test]
    fn parses_head() {
        let r = b"POST /apps/1/events?x HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\nbody";
        let h = parse_head(r).unwrap();
        assert_eq!(h.method, b"POST");
        assert_eq!(h.content_length, 12);
        assert_eq!(h.len, r.len() - 4);
        assert!(parse_head(b"GET / HTTP/1.1\r\n").is_none());
    }
}
