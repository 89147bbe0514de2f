//! `WebhookError`: what can stop the webhook service or a `pushbox queue` command, with
//! messages that say what to do.

use std::fmt;
use std::path::PathBuf;

use crate::spool::SpoolError;

/// An error from the webhook service or the queue CLI.
#[derive(Debug)]
pub enum WebhookError {
    /// The webhook spool or the dead-letter spool could not be opened or written.
    Spool(SpoolError),
    /// `webhooks.ca_file` could not be read or holds no usable certificate.
    CaFile {
        /// The configured path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The TLS client could not be built (a rustls configuration problem).
    Tls(String),
    /// A file under `{state_dir}/webhooks-retry/` could not be written or read.
    RetryRequest {
        /// The file or directory.
        path: PathBuf,
        /// The OS error or what was wrong with the file.
        reason: String,
    },
    /// `pushbox queue retry ID`: no dead letter has that id.
    NoSuchDeadLetter {
        /// The id given.
        id: String,
    },
    /// The service could not start a task (no tokio runtime).
    Runtime(String),
}

impl From<SpoolError> for WebhookError {
    fn from(e: SpoolError) -> Self {
        WebhookError::Spool(e)
    }
}

impl fmt::Display for WebhookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WebhookError::Spool(e) => write!(f, "webhook queue: {e}"),
            WebhookError::CaFile { path, reason } => write!(
                f,
                "webhooks.ca_file {}: {reason}. Point it at a PEM file holding the CA \
                 certificate(s) that signed your webhook receiver's certificate, or remove the \
                 setting to trust only public CAs",
                path.display()
            ),
            WebhookError::Tls(e) => write!(
                f,
                "cannot build the TLS client for HTTPS webhooks: {e} (this is a bug; please \
                 report it)"
            ),
            WebhookError::RetryRequest { path, reason } => write!(
                f,
                "webhook retry request {}: {reason}. Check that the state directory is writable \
                 by the user running this command (the same user as the server)",
                path.display()
            ),
            WebhookError::NoSuchDeadLetter { id } => write!(
                f,
                "no dead letter with id {id:?}; `pushbox queue dead` lists the ids there are"
            ),
            WebhookError::Runtime(e) => write!(
                f,
                "the webhook service must be started inside the tokio runtime: {e}"
            ),
        }
    }
}

impl std::error::Error for WebhookError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WebhookError::Spool(e) => Some(e),
            _ => None,
        }
    }
}
