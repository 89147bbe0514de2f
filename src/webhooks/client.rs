//! POSTing one webhook batch through [`crate::http_client`]: a fresh HTTP/1.1 connection per
//! request with title-case header names (PUSHER.md §11 trap 13), TLS trusting the compiled-in
//! public roots (webpki-roots) plus an optional PEM file of private CAs. The whole exchange
//! (connect, TLS, request, status line) is bounded by one timeout.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri};

use super::WebhookError;
use crate::http_client::{tls_config, Connection, Target};
use crate::x509;

/// Sends webhook requests. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct Client {
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

/// The headers of one webhook request (besides `Host`, `Content-Length` and `User-Agent`).
pub struct Headers<'a> {
    pub key: &'a str,
    pub signature: &'a str,
    pub batch_id: &'a str,
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
            for cert in x509::pem_certs(path).map_err(|e| ca_err(e.to_string()))? {
                roots
                    .add(cert)
                    .map_err(|e| ca_err(format!("a certificate in it is not usable: {e}")))?;
            }
        }
        Ok(Client {
            tls: tls_config(roots).map_err(WebhookError::Tls)?,
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
        let target = Target::from_uri(&uri).map_err(|why| format!("webhook url {url:?}: {why}"))?;
        // The host as the URL writes it, with the port only when the URL names one.
        let host = uri.host().unwrap_or_default();
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
        let mut conn = Connection::open(&target, Some(self.tls.clone()), true)
            .await
            .map_err(|e| e.to_string())?;
        let resp = conn.send(req).await.map_err(|e| e.to_string())?;
        answer(resp).await
    }
}

/// `Ok(())` for a 2xx answer, else the status and the start of the body.
async fn answer(resp: hyper::Response<hyper::body::Incoming>) -> Result<(), String> {
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
