//! One HTTP/1.1 request from the command line (hyper's client connection), over TCP or over TLS
//! (tokio-rustls, ring): `trigger` posts events with it and `check` asks a port's owner for `/up`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
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
    fn authority(&self) -> String {
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

async fn request_inner(
    target: &Target,
    tls: Option<Arc<rustls::ClientConfig>>,
    method: &str,
    path_and_query: &str,
    body: Vec<u8>,
) -> Result<Reply, HttpError> {
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => HttpError::Refused(format!(
                "cannot connect to {}: connection refused",
                target.url()
            )),
            _ => HttpError::Other(format!("cannot connect to {}: {e}", target.url())),
        })?;
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
        send(stream, req).await
    } else {
        send(tcp, req).await
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

/// The ring provider with pushbox's protocol versions.
fn builder() -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, String> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))
}

/// Reads every certificate of a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no \"BEGIN CERTIFICATE\" block in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// The system bundle Debian's `update-ca-certificates` maintains.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A client config trusting the system bundle (when present) and every certificate in `extra`
/// (`--ca`, or the server's own certificate).
pub fn client_config(extra: &[&Path]) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    if let Ok(certs) = read_certs(Path::new(SYSTEM_BUNDLE)) {
        roots.add_parsable_certificates(certs);
    }
    for path in extra {
        for cert in read_certs(path)? {
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
}
