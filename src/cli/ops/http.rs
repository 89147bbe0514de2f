//! One HTTP/1.1 request from the command line (hyper's client connection), over TCP or over TLS
//! (tokio-rustls, ring): `trigger` posts events with it and `check` asks a port's owner for `/up`,
//! then opens `/app/{key}` as a Pusher client would and reads the first frame
//! ([`websocket_probe`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};

/// Where a request goes: parsed from `http://host:port` / `https://host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    /// Without IPv6 brackets.
    pub host: String,
    pub port: u16,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let bad =
            |why: &str| format!("--url {url:?}: {why} (use http://HOST:PORT or https://HOST:PORT)");
        let uri: hyper::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let host = uri
            .host()
            .ok_or_else(|| bad("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad(
                "give only the server's address; pushbox adds /apps/ID/events",
            ));
        }
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(Target { https, host, port })
    }

    /// The `Host` header value.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.https { "https" } else { "http" },
            self.authority()
        )
    }
}

/// Why a request failed, so commands can give the right advice.
#[derive(Debug)]
pub enum HttpError {
    /// Nothing listens there.
    Refused(String),
    /// The TLS handshake failed (untrusted or misnamed certificate, not TLS).
    Tls(String),
    Timeout,
    Other(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Refused(e) | HttpError::Tls(e) | HttpError::Other(e) => f.write_str(e),
            HttpError::Timeout => f.write_str("no answer within the timeout"),
        }
    }
}

/// A response: status, reason phrase and body.
pub struct Reply {
    pub status: u16,
    pub reason: String,
    pub body: Bytes,
}

/// Sends one request and reads the whole answer, within `timeout`.
pub async fn request(
    target: &Target,
    tls: Option<Arc<rustls::ClientConfig>>,
    method: &str,
    path_and_query: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Reply, HttpError> {
    tokio::time::timeout(
        timeout,
        request_inner(target, tls, method, path_and_query, body),
    )
    .await
    .unwrap_or(Err(HttpError::Timeout))
}

/// A connection's byte stream, plain TCP or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

async fn request_inner(
    target: &Target,
    tls: Option<Arc<rustls::ClientConfig>>,
    method: &str,
    path_and_query: &str,
    body: Vec<u8>,
) -> Result<Reply, HttpError> {
    let req = hyper::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(hyper::header::HOST, target.authority())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("pushbox-cli/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| HttpError::Other(format!("cannot build the request: {e}")))?;
    send(open(target, tls).await?, req).await
}

/// Connects to `target`, with a TLS handshake for https.
async fn open(
    target: &Target,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Box<dyn Io>, HttpError> {
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => HttpError::Refused(format!(
                "cannot connect to {}: connection refused",
                target.url()
            )),
            _ => HttpError::Other(format!("cannot connect to {}: {e}", target.url())),
        })?;
    if target.https {
        let config =
            tls.ok_or_else(|| HttpError::Other("no TLS settings for an https URL".into()))?;
        let name = ServerName::try_from(target.host.clone()).map_err(|_| {
            HttpError::Other(format!("{:?} is not a valid TLS server name", target.host))
        })?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| {
                HttpError::Tls(format!("TLS handshake with {} failed: {e}", target.url()))
            })?;
        Ok(Box::new(stream))
    } else {
        Ok(Box::new(tcp))
    }
}

async fn send<S>(stream: S, req: hyper::Request<Full<Bytes>>) -> Result<Reply, HttpError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| HttpError::Other(format!("HTTP handshake failed: {e}")))?;
    let driver = tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| {
        HttpError::Other(format!(
            "the server closed the connection without an HTTP answer: {e}"
        ))
    })?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| HttpError::Other(format!("cannot read the answer: {e}")))?
        .to_bytes();
    driver.abort();
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
) -> Result<WsProbe, HttpError> {
    tokio::time::timeout(timeout, probe_inner(target, tls, key))
        .await
        .unwrap_or(Err(HttpError::Timeout))
}

async fn probe_inner(
    target: &Target,
    tls: Option<Arc<rustls::ClientConfig>>,
    key: &str,
) -> Result<WsProbe, HttpError> {
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
        .header(
            hyper::header::USER_AGENT,
            concat!("pushbox-cli/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::new()))
        .map_err(|e| HttpError::Other(format!("cannot build the request: {e}")))?;
    let stream = open(target, tls).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| HttpError::Other(format!("HTTP handshake failed: {e}")))?;
    let driver = tokio::spawn(conn.with_upgrades());
    let resp = sender.send_request(req).await.map_err(|e| {
        HttpError::Other(format!(
            "the server closed the connection without an HTTP answer: {e}"
        ))
    })?;
    if resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status().as_u16();
        let body = match resp.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => Bytes::new(),
        };
        driver.abort();
        return Ok(WsProbe::NotUpgraded {
            status,
            body: String::from_utf8_lossy(&body).chars().take(200).collect(),
        });
    }
    let upgraded = hyper::upgrade::on(resp)
        .await
        .map_err(|e| HttpError::Other(format!("the WebSocket upgrade failed: {e}")))?;
    let mut io = TokioIo::new(upgraded);
    let (opcode, payload) = read_server_frame(&mut io).await?;
    // A masked close frame, 1000: a polite goodbye (the answer is not waited for).
    let _ = io.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]).await;
    driver.abort();
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

/// Reads one unmasked server frame (a first frame is small: at most 64 KiB is accepted).
async fn read_server_frame<R: tokio::io::AsyncRead + Unpin>(
    io: &mut R,
) -> Result<(u8, Vec<u8>), HttpError> {
    use tokio::io::AsyncReadExt;
    let broken = |e: std::io::Error| {
        HttpError::Other(format!(
            "the connection ended before the first WebSocket frame: {e}"
        ))
    };
    let mut head = [0u8; 2];
    io.read_exact(&mut head).await.map_err(broken)?;
    if head[1] & 0x80 != 0 {
        return Err(HttpError::Other("the server sent a masked frame".into()));
    }
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            io.read_exact(&mut b).await.map_err(broken)?;
            usize::from(u16::from_be_bytes(b))
        }
        127 => return Err(HttpError::Other("the first frame is over 64 KiB".into())),
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    io.read_exact(&mut payload).await.map_err(broken)?;
    Ok((head[0] & 0x0f, payload))
}

/// The ring provider with pushbox's protocol versions.
fn builder() -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, String> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))
}

/// The system bundle Debian's `update-ca-certificates` maintains.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A client config trusting the system bundle (when present) and every certificate in `extra`
/// (`--ca`, or the server's own certificate).
pub fn client_config(extra: &[&Path]) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    if let Ok(certs) = crate::x509::read_pem(Path::new(SYSTEM_BUNDLE)) {
        roots.add_parsable_certificates(certs);
    }
    for path in extra {
        for cert in crate::x509::read_pem(path)? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: cannot trust this certificate: {e}", path.display()))?;
        }
    }
    let mut config = builder()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client config that accepts any certificate. Only for `check` asking a local port "are you
/// pushbox?" (`GET /up`): nothing secret is sent and nothing received is trusted.
pub fn probe_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = builder()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("https://box.lan").unwrap();
        assert_eq!((t.https, t.host.as_str(), t.port), (true, "box.lan", 443));
        let t = Target::parse("http://[::1]:8080/").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.url()),
            ("::1", 8080, "http://[::1]:8080".to_owned())
        );
        assert!(Target::parse("ftp://x").unwrap_err().contains("scheme"));
        assert!(Target::parse("http://x/apps/1/events").is_err());
        assert!(Target::parse("nonsense").is_err());
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
