//! pushbox's one HTTP/1.1 client: a fresh connection per exchange (hyper's client connection),
//! over TCP or over TLS (tokio-rustls with the ring provider). Webhook delivery POSTs batches with
//! it; the CLI's `trigger` posts events, and `check` asks a port's owner for `/up` and opens a
//! WebSocket through it. This module owns connecting, the TLS handshake, the HTTP handshake and
//! the errors an operator can act on; callers choose what to trust (public roots, the system
//! bundle, a CA file), what to send and how long to wait.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};

/// Where a request goes: scheme, host and port of an `http://` or `https://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    /// Without IPv6 brackets.
    pub host: String,
    pub port: u16,
}

impl Target {
    /// The target of `uri`; why not when its scheme is not http(s) or it has no host.
    pub fn from_uri(uri: &hyper::Uri) -> Result<Target, &'static str> {
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err("the scheme must be http or https"),
        };
        let host = uri
            .host()
            .ok_or("no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(Target { https, host, port })
    }

    /// `host:port`, with brackets around an IPv6 address.
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

/// Why an exchange failed, so callers can give the right advice.
#[derive(Debug)]
pub enum ClientError {
    /// Nothing listens there.
    Refused(String),
    /// The TLS handshake failed (untrusted or misnamed certificate, not TLS).
    Tls(String),
    Timeout,
    Other(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Refused(e) | ClientError::Tls(e) | ClientError::Other(e) => f.write_str(e),
            ClientError::Timeout => f.write_str("no answer within the timeout"),
        }
    }
}

/// A connection's byte stream, plain TCP or TLS.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Aborts the spawned connection task when the exchange is finished or abandoned.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An open HTTP/1.1 connection; dropping it closes the connection.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    _driver: AbortOnDrop,
}

impl Connection {
    /// Connects to `target` (with a TLS handshake under `tls` for https) and starts HTTP/1.1.
    /// `title_case_headers` writes `Content-Type` rather than `content-type`, for receivers
    /// that match header names case-sensitively (PUSHER.md §11 trap 13). The connection
    /// allows an upgrade ([`hyper::upgrade::on`]).
    pub async fn open(
        target: &Target,
        tls: Option<Arc<rustls::ClientConfig>>,
        title_case_headers: bool,
    ) -> Result<Connection, ClientError> {
        let stream = connect(target, tls).await?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .title_case_headers(title_case_headers)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Other(format!("HTTP handshake failed: {e}")))?;
        let driver = tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(Connection {
            sender,
            _driver: AbortOnDrop(driver),
        })
    }

    /// Sends `req` and waits for the response head (the body is the caller's to read).
    pub async fn send(
        &mut self,
        req: hyper::Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        self.sender.send_request(req).await.map_err(|e| {
            ClientError::Other(format!(
                "the server closed the connection without an HTTP answer: {e}"
            ))
        })
    }
}

/// Connects to `target`, with a TLS handshake for https.
async fn connect(
    target: &Target,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Box<dyn Io>, ClientError> {
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => ClientError::Refused(format!(
                "cannot connect to {}: connection refused",
                target.url()
            )),
            _ => ClientError::Other(format!("cannot connect to {}: {e}", target.url())),
        })?;
    let _ = tcp.set_nodelay(true);
    if !target.https {
        return Ok(Box::new(tcp));
    }
    let config =
        tls.ok_or_else(|| ClientError::Other("no TLS settings for an https URL".into()))?;
    let name = ServerName::try_from(target.host.clone()).map_err(|_| {
        ClientError::Other(format!("{:?} is not a valid TLS server name", target.host))
    })?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| {
            ClientError::Tls(format!("TLS handshake with {} failed: {e}", target.url()))
        })?;
    Ok(Box::new(stream))
}

/// The ring provider with pushbox's protocol versions.
fn builder() -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, String> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))
}

/// A TLS client config that trusts `roots` and offers HTTP/1.1 by ALPN.
pub fn tls_config(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut config = builder()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TLS client config that accepts any certificate. Only for `check` asking a local port "are
/// you pushbox?": nothing secret is sent and nothing received is trusted.
pub fn accept_any_config() -> Result<Arc<rustls::ClientConfig>, String> {
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
    fn targets_of_urls() {
        let t = Target::from_uri(&"https://box.lan".parse().unwrap()).unwrap();
        assert_eq!((t.https, t.host.as_str(), t.port), (true, "box.lan", 443));
        let t = Target::from_uri(&"http://[::1]:8080/x".parse().unwrap()).unwrap();
        assert_eq!(
            (t.host.as_str(), t.authority(), t.url()),
            (
                "::1",
                "[::1]:8080".to_owned(),
                "http://[::1]:8080".to_owned()
            )
        );
        assert!(Target::from_uri(&"ftp://x".parse().unwrap()).is_err());
        assert!(Target::from_uri(&"/path".parse().unwrap()).is_err());
    }

    #[tokio::test]
    async fn a_closed_port_is_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let target = Target {
            https: false,
            host: "127.0.0.1".into(),
            port,
        };
        let err = Connection::open(&target, None, false).await.err().unwrap();
        assert!(matches!(err, ClientError::Refused(_)), "{err}");
    }
}
