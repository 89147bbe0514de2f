//! The HTTP(S) client that POSTs one webhook batch: a fresh HTTP/1.1 connection per request
//! (hyper's client connection with title-case header names, PUSHER.md §11 trap 13), TLS by
//! rustls with the ring provider, trusting the compiled-in public roots (webpki-roots) plus an
//! optional PEM file of private CAs. The whole exchange (connect, TLS, request, status line)
//! is bounded by one timeout.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use tokio::net::TcpStream;

use super::WebhookError;

/// Sends webhook requests. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct Client {
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
}

/// The headers of one webhook request (besides `Host`, `Content-Length` and `User-Agent`).
pub struct Headers<'a> {
    pub key: &'a str,
    pub signature: &'a str,
    pub batch_id: &'a str,
}

/// Aborts the spawned connection task when the request is finished or abandoned.
struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Client {
    /// A client trusting the public roots and, if given, the certificates in `ca_file` (PEM).
    pub fn new(ca_file: Option<&Path>, timeout: Duration) -> Result<Client, WebhookError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca_file {
            let ca_err = |reason: String| WebhookError::CaFile {
                path: path.to_path_buf(),
                reason,
            };
            let iter = CertificateDer::pem_file_iter(path)
                .map_err(|e| ca_err(format!("cannot read it: {e}")))?;
            let mut added = 0;
            for cert in iter {
                let cert = cert.map_err(|e| ca_err(format!("not valid PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| ca_err(format!("a certificate in it is not usable: {e}")))?;
                added += 1;
            }
            if added == 0 {
                return Err(ca_err("it holds no CERTIFICATE block".into()));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| WebhookError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Client {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            timeout,
        })
    }

    /// POST `body` to `url`. `Ok(())` for any 2xx answer; otherwise a one-line description of
    /// the failure (status and the start of the answer, connection error, or timeout).
    pub async fn post(&self, url: &str, headers: &Headers<'_>, body: Bytes) -> Result<(), String> {
        match tokio::time::timeout(self.timeout, self.exchange(url, headers, body)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no answer within {} ms from {url}",
                self.timeout.as_millis()
            )),
        }
    }

    async fn exchange(&self, url: &str, headers: &Headers<'_>, body: Bytes) -> Result<(), String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("invalid webhook url {url:?}: {e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(format!(
                    "webhook url {url:?} must start with http:// or https://"
                ))
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("webhook url {url:?} has no host"))?;
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let host_header = match uri.port_u16() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let req = Request::post(path)
            .header("host", host_header)
            .header("content-type", "application/json")
            .header("content-length", body.len())
            .header("x-pusher-key", headers.key)
            .header("x-pusher-signature", headers.signature)
            .header("x-pushbox-batch-id", headers.batch_id)
            .header(
                "user-agent",
                concat!("pushbox/", env!("CARGO_PKG_VERSION"), " (webhooks)"),
            )
            .body(Full::new(body))
            .map_err(|e| format!("cannot build the request for {url}: {e}"))?;

        let tcp = TcpStream::connect((bare_host, port))
            .await
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        if https {
            let name = ServerName::try_from(bare_host.to_string())
                .map_err(|e| format!("invalid TLS server name {bare_host:?}: {e}"))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake with {host}:{port} failed: {e}"))?;
            send(TokioIo::new(tls), req).await
        } else {
            send(TokioIo::new(tcp), req).await
        }
    }
}

async fn send<T>(io: T, req: Request<Full<Bytes>>) -> Result<(), String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .title_case_headers(true)
        .handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    // The start of the answer helps the operator (`pushbox queue dead` shows it); do not let
    // a receiver that never finishes its body turn a clear status into a timeout.
    let mut snippet = Vec::new();
    let mut body = resp.into_body();
    let read = async {
        while snippet.len() < 200 {
            match body.frame().await {
                Some(Ok(f)) => {
                    if let Some(d) = f.data_ref() {
                        snippet.extend_from_slice(d);
                    }
                }
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(300), read).await;
    snippet.truncate(200);
    let text = String::from_utf8_lossy(&snippet);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        Err(format!("HTTP {status}"))
    } else {
        Err(format!("HTTP {status}: {text}"))
    }
}
