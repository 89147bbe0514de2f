//! The CLI's HTTP: one request to a pushbox (`trigger` posts events with it, `check` asks a port's
//! owner for `/up`), and opening `/app/{key}` as a Pusher client would to read the first frame
//! ([`websocket_probe`]). Connections come from [`crate::http_client`], WebSocket frames from
//! [`crate::transport::wsframe`]; this file adds the CLI's URL rules, trust and reading.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::http_client::{tls_config, ClientError, Connection, Target};
use crate::transport::wsframe;
use crate::x509;

/// The target of `--url`: only `http://host:port` or `https://host:port`.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let bad =
        |why: &str| format!("--url {url:?}: {why} (use http://HOST:PORT or https://HOST:PORT)");
    let uri: hyper::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    let target = Target::from_uri(&uri).map_err(bad)?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad(
            "give only the server's address; pushbox adds /apps/ID/events",
        ));
    }
    Ok(target)
}

/// A response: status, reason phrase and body.
pub struct Reply {
    pub status: u16,
    pub reason: String,
    pub body: Bytes,
}

/// The `User-Agent` of the CLI's requests.
const USER_AGENT: &str = concat!("pushbox-cli/", env!("CARGO_PKG_VERSION"));

/// Sends one request and reads the whole answer, within `timeout`.
pub async fn request(
    target: &Target,
    tls: Option<Arc<rustls::ClientConfig>>,
    method: &str,
    path_and_query: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Reply, ClientError> {
    tokio::time::timeout(
        timeout,
        request_inner(target, tls, method, path_and_query, body),
    )
    .await
    .unwrap_or(Err(ClientError::Timeout))
}

async fn request_inner(
    target: &Target,
    tls: Option<Arc<rustls::ClientConfig>>,
    method: &str,
    path_and_query: &str,
    body: Vec<u8>,
) -> Result<Reply, ClientError> {
    let req = hyper::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(hyper::header::HOST, target.authority())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, USER_AGENT)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| ClientError::Other(format!("cannot build the request: {e}")))?;
    let mut conn = Connection::open(target, tls, false).await?;
    let resp = conn.send(req).await?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Other(format!("cannot read the answer: {e}")))?
        .to_bytes();
    Ok(Reply {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("").to_owned(),
        body,
    })
}

/// What a Pusher client is told when it opens `/app/{key}`.
#[derive(Debug, PartialEq, Eq)]
pub enum WsProbe {
    /// `pusher:connection_established`, with the socket id it was given.
    Connected { socket_id: String },
    /// `pusher:error` (or a close frame) instead: the server refused this key or client.
    Refused { code: u64, message: String },
    /// No WebSocket upgrade: the HTTP status and the start of the body.
    NotUpgraded { status: u16, body: String },
}

/// Opens `/app/{key}` at `target` as pusher-js does (protocol 7), reads the first frame the server
/// sends and closes with 1000; within `timeout`.
pub async fn websocket_probe(
    target: &Target,
    tls: Option<Arc<rustls::ClientConfig>>,
    key: &str,
    timeout: Duration,
) -> Result<WsProbe, ClientError> {
    tokio::time::timeout(timeout, probe_inner(target, tls, key))
        .await
        .unwrap_or(Err(ClientError::Timeout))
}

async fn probe_inner(
    target: &Target,
    tls: Option<Arc<rustls::ClientConfig>>,
    key: &str,
) -> Result<WsProbe, ClientError> {
    use tokio::io::AsyncWriteExt;
    let key: String = form_urlencoded::byte_serialize(key.as_bytes()).collect();
    let req = hyper::Request::builder()
        .method("GET")
        .uri(format!(
            "/app/{key}?protocol=7&client=pushbox-check&version={}",
            env!("CARGO_PKG_VERSION")
        ))
        .header(hyper::header::HOST, target.authority())
        .header(hyper::header::CONNECTION, "Upgrade")
        .header(hyper::header::UPGRADE, "websocket")
        .header(hyper::header::SEC_WEBSOCKET_VERSION, "13")
        .header(hyper::header::SEC_WEBSOCKET_KEY, "cHVzaGJveCBjaGVjayEhIQ==")
        .header(hyper::header::USER_AGENT, USER_AGENT)
        .body(Full::new(Bytes::new()))
        .map_err(|e| ClientError::Other(format!("cannot build the request: {e}")))?;
    let mut conn = Connection::open(target, tls, false).await?;
    let resp = conn.send(req).await?;
    if resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status().as_u16();
        let body = match resp.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => Bytes::new(),
        };
        return Ok(WsProbe::NotUpgraded {
            status,
            body: String::from_utf8_lossy(&body).chars().take(200).collect(),
        });
    }
    let upgraded = hyper::upgrade::on(resp)
        .await
        .map_err(|e| ClientError::Other(format!("the WebSocket upgrade failed: {e}")))?;
    let mut io = TokioIo::new(upgraded);
    let (opcode, payload) = read_server_frame(&mut io).await?;
    // A masked close frame, 1000: a polite goodbye (the answer is not waited for).
    let close = wsframe::encode_masked(wsframe::OP_CLOSE, &1000u16.to_be_bytes(), [0; 4]);
    let _ = io.write_all(&close).await;
    Ok(first_frame(opcode, &payload))
}

/// What the first frame says: `pusher:connection_established`, `pusher:error`, or a close.
fn first_frame(opcode: u8, payload: &[u8]) -> WsProbe {
    if opcode == 0x8 {
        let code = match payload {
            [a, b, ..] => u64::from(u16::from_be_bytes([*a, *b])),
            _ => 1005,
        };
        let message = String::from_utf8_lossy(payload.get(2..).unwrap_or_default()).into_owned();
        return WsProbe::Refused { code, message };
    }
    let frame: serde_json::Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(_) => {
            return WsProbe::Refused {
                code: 0,
                message: format!(
                    "not a Pusher frame: {}",
                    String::from_utf8_lossy(payload)
                        .chars()
                        .take(200)
                        .collect::<String>()
                ),
            }
        }
    };
    // `data` is a JSON string in connection_established and an object in pusher:error.
    let data = match &frame["data"] {
        serde_json::Value::String(s) => serde_json::from_str(s).unwrap_or_default(),
        other => other.clone(),
    };
    match frame["event"].as_str() {
        Some("pusher:connection_established") => WsProbe::Connected {
            socket_id: data["socket_id"].as_str().unwrap_or("?").to_owned(),
        },
        Some("pusher:error") => WsProbe::Refused {
            code: data["code"].as_u64().unwrap_or(0),
            message: data["message"].as_str().unwrap_or("").to_owned(),
        },
        other => WsProbe::Refused {
            code: 0,
            message: format!("unexpected first event {other:?}"),
        },
    }
}

/// The largest first frame accepted (a `connection_established` or `pusher:error` is small).
const FIRST_FRAME_LIMIT: usize = u16::MAX as usize;

/// Reads one unmasked server frame: `(opcode, payload)`.
async fn read_server_frame<R: tokio::io::AsyncRead + Unpin>(
    io: &mut R,
) -> Result<(u8, Vec<u8>), ClientError> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::with_capacity(256);
    loop {
        match wsframe::decode_server_frame(&buf, FIRST_FRAME_LIMIT) {
            Ok(Some(f)) => return Ok((f.opcode, f.payload.to_vec())),
            Ok(None) => {}
            Err(e) => {
                return Err(ClientError::Other(format!(
                    "the first WebSocket frame is not one a server sends: {e}"
                )))
            }
        }
        match io.read_buf(&mut buf).await {
            Ok(0) => {
                return Err(ClientError::Other(
                    "the connection ended before the first WebSocket frame".into(),
                ))
            }
            Ok(_) => {}
            Err(e) => {
                return Err(ClientError::Other(format!(
                    "the connection ended before the first WebSocket frame: {e}"
                )))
            }
        }
    }
}

/// The system bundle Debian's `update-ca-certificates` maintains.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A client config trusting the system bundle (when present) and every certificate in `extra`
/// (`--ca`, or the server's own certificate).
pub fn client_config(extra: &[&Path]) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    if let Ok(certs) = x509::read_pem(Path::new(SYSTEM_BUNDLE)) {
        roots.add_parsable_certificates(certs);
    }
    for path in extra {
        for cert in x509::read_pem(path)? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: cannot trust this certificate: {e}", path.display()))?;
        }
    }
    tls_config(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("https://box.lan").unwrap();
        assert_eq!((t.https, t.host.as_str(), t.port), (true, "box.lan", 443));
        let t = parse_url("http://[::1]:8080/").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.url()),
            ("::1", 8080, "http://[::1]:8080".to_owned())
        );
        assert!(parse_url("ftp://x").unwrap_err().contains("scheme"));
        assert!(parse_url("http://x/apps/1/events").is_err());
        assert!(parse_url("nonsense").is_err());
    }

    #[tokio::test]
    async fn server_frames_from_the_wire_and_what_is_refused() {
        let mut ok: &[u8] = &[0x81, 2, b'h', b'i', 0xff];
        assert_eq!(
            read_server_frame(&mut ok).await.unwrap(),
            (0x1, b"hi".to_vec())
        );
        let mut long = vec![0x81, 126, 0x01, 0x00];
        long.extend(std::iter::repeat_n(b'x', 256));
        assert_eq!(
            read_server_frame(&mut &long[..]).await.unwrap().1.len(),
            256
        );
        for bad in [
            &[0x81, 0x82, 1, 2, 3, 4, b'h', b'i'][..], // masked
            &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0][..],  // 64-bit length
            &[0x81, 5, b'h'][..],                      // cut short
            &[0x81][..],
        ] {
            assert!(read_server_frame(&mut &bad[..]).await.is_err(), "{bad:?}");
        }
    }

    #[test]
    fn first_frames_as_pusher_servers_send_them() {
        assert_eq!(
            first_frame(
                0x1,
                br#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"12.34\",\"activity_timeout\":30}"}"#
            ),
            WsProbe::Connected {
                socket_id: "12.34".into()
            }
        );
        assert_eq!(
            first_frame(
                0x1,
                br#"{"event":"pusher:error","data":{"code":4001,"message":"App key nope does not exist"}}"#
            ),
            WsProbe::Refused {
                code: 4001,
                message: "App key nope does not exist".into()
            }
        );
        let mut close = 4003u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"App disabled");
        assert_eq!(
            first_frame(0x8, &close),
            WsProbe::Refused {
                code: 4003,
                message: "App disabled".into()
            }
        );
        assert!(matches!(
            first_frame(0x8, &[]),
            WsProbe::Refused { code: 1005, .. }
        ));
        assert!(matches!(
            first_frame(0x1, b"<html>"),
            WsProbe::Refused { code: 0, .. }
        ));
        assert!(matches!(
            first_frame(0x1, br#"{"event":"hello"}"#),
            WsProbe::Refused { code: 0, .. }
        ));
    }
}
