//! Every way an HTTP API request can fail, as one enum: each variant knows its HTTP status and
//! its message, and [`ApiResponse::from`] turns it into the `{"error": "…"}` body the Pusher
//! SDKs read. Messages say what to change; the status is the one Pusher's own API answers.

use std::fmt;

use serde_json::json;

use super::{ApiResponse, AppendError};
use crate::protocol::channel::ChannelNameError;
use crate::protocol::signing::SigningError;

/// Why the API refused a request.
#[derive(Debug)]
pub enum ApiError {
    /// The path does not start with `/apps/` (after any proxy prefix).
    NotApiPath,
    /// No app with this id is configured.
    UnknownApp { app_id: String },
    /// The console published to an app id that is not configured.
    UnknownTrustedApp { app_id: String },
    /// The request's signature, key, timestamp or body MD5 is wrong.
    Signature(SigningError),
    /// The app exists but `enabled = false`.
    AppDisabled,
    /// A known endpoint called with the wrong method.
    MethodNotAllowed { method: String, path: String },
    /// No endpoint at this path.
    NoEndpoint { path: String },
    /// The request body is larger than `server.max_request_bytes`.
    BodyTooLarge { max: usize },
    /// The request body could not be read from the connection.
    UnreadableBody,
    /// The body is not the JSON object the endpoint expects.
    InvalidJson(serde_json::Error),
    /// A batch body without its `batch` array.
    MissingBatch,
    /// More events in one batch than `max_batch_events`.
    BatchTooLarge { len: usize, max: usize },
    /// One event of a batch was refused (so none was delivered).
    InBatch { index: usize, error: Box<ApiError> },
    /// An event without a `name`.
    MissingName,
    /// An event name longer than `max_event_name_length`.
    NameTooLong { len: usize, max: usize },
    /// An event without `data`.
    MissingData,
    /// `data` is a JSON string that does not decode.
    InvalidData(serde_json::Error),
    /// `data` larger than `max_event_data_bytes`.
    DataTooLarge { len: usize, max: usize },
    /// An event with neither `channels` nor `channel`.
    MissingChannels,
    /// More channels in one event than `max_channels_per_event`.
    TooManyChannels { len: usize, max: usize },
    /// A channel an event is published to has an invalid name.
    InvalidChannel {
        channel: String,
        reason: ChannelNameError,
    },
    /// A channel queried by name (`GET /channels/{name}`) has an invalid name.
    InvalidChannelName(ChannelNameError),
    /// A `socket_id` to exclude that is not `digits.digits`.
    InvalidSocketId(String),
    /// `info=user_count` on a channel list not restricted to presence channels.
    UserCountNeedsPresencePrefix,
    /// `info=user_count` on one channel that is not a presence channel.
    UserCountNeedsPresenceChannel,
    /// `users` asked of a channel that is not a presence channel.
    NotPresence { channel: String },
    /// The event log refused before anything was delivered (it is full, or cannot write).
    LogRefused(AppendError),
    /// The event log failed after the event was delivered to `reached` sockets.
    NotStored { error: AppendError, reached: usize },
    /// `[cluster]`: the event log failed while the event was being written; it may have gone to
    /// the bus already (the forwarder takes it before its fsync).
    NotStoredClustered(AppendError),
    /// `[cluster]`: the shared state in Redis could not be read or written.
    Cluster(crate::hub::LinkError),
}

impl ApiError {
    /// The HTTP status Pusher's API answers for this failure.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::InBatch { error, .. } => error.status(),
            ApiError::Signature(_) => 401,
            ApiError::AppDisabled => 403,
            ApiError::NotApiPath
            | ApiError::UnknownApp { .. }
            | ApiError::UnknownTrustedApp { .. }
            | ApiError::NoEndpoint { .. } => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::BodyTooLarge { .. } | ApiError::DataTooLarge { .. } => 413,
            // The event log is the one place the API says "not now": the sender retries later.
            ApiError::LogRefused(_)
            | ApiError::NotStored { .. }
            | ApiError::NotStoredClustered(_)
            | ApiError::Cluster(_) => 503,
            ApiError::UnreadableBody
            | ApiError::InvalidJson(_)
            | ApiError::MissingBatch
            | ApiError::BatchTooLarge { .. }
            | ApiError::MissingName
            | ApiError::NameTooLong { .. }
            | ApiError::MissingData
            | ApiError::InvalidData(_)
            | ApiError::MissingChannels
            | ApiError::TooManyChannels { .. }
            | ApiError::InvalidChannel { .. }
            | ApiError::InvalidChannelName(_)
            | ApiError::InvalidSocketId(_)
            | ApiError::UserCountNeedsPresencePrefix
            | ApiError::UserCountNeedsPresenceChannel
            | ApiError::NotPresence { .. } => 400,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::NotApiPath => {
                write!(f, "Not found: HTTP API paths start with /apps/{{app_id}}/")
            }
            ApiError::UnknownApp { app_id } => write!(
                f,
                "Unknown app id {app_id:?}: check PUSHER_APP_ID / REVERB_APP_ID"
            ),
            ApiError::UnknownTrustedApp { app_id } => write!(f, "Unknown app id {app_id:?}"),
            ApiError::Signature(e) => write!(f, "{e}"),
            ApiError::AppDisabled => write!(f, "Application disabled"),
            ApiError::MethodNotAllowed { method, path } => {
                write!(f, "Method {method} not allowed on {path}")
            }
            ApiError::NoEndpoint { path } => {
                write!(f, "Not found: {path} is not an HTTP API endpoint")
            }
            ApiError::BodyTooLarge { max } => write!(
                f,
                "Request body larger than {max} bytes (server.max_request_bytes)"
            ),
            ApiError::UnreadableBody => write!(f, "Could not read the request body"),
            ApiError::InvalidJson(e) => write!(f, "Invalid JSON body: {e}"),
            ApiError::MissingBatch => write!(
                f,
                "Missing \"batch\": expected {{\"batch\":[{{\"channel\":…,\"name\":…,\"data\":…}}]}}"
            ),
            ApiError::BatchTooLarge { len, max } => {
                write!(f, "Batch too large: {len} events, the limit is {max}")
            }
            ApiError::InBatch { index, error } => write!(f, "batch[{index}]: {error}"),
            ApiError::MissingName => write!(f, "Missing event \"name\""),
            ApiError::NameTooLong { len, max } => write!(
                f,
                "Event name too long: {len} characters, the limit is {max}"
            ),
            ApiError::MissingData => {
                write!(f, "Missing \"data\" (a string, usually JSON-encoded)")
            }
            ApiError::InvalidData(e) => write!(f, "Invalid \"data\": {e}"),
            ApiError::DataTooLarge { len, max } => write!(
                f,
                "Event data too large: {len} bytes, the limit is {max} (max_event_data_bytes)"
            ),
            ApiError::MissingChannels => write!(
                f,
                "Missing \"channels\" (an array) or \"channel\" (a string)"
            ),
            ApiError::TooManyChannels { len, max } => write!(
                f,
                "Too many channels: {len}, the limit is {max} per event"
            ),
            ApiError::InvalidChannel { channel, reason } => {
                write!(f, "Invalid channel {channel:?}: {reason}")
            }
            ApiError::InvalidChannelName(reason) => write!(f, "Invalid channel name: {reason}"),
            ApiError::InvalidSocketId(s) => {
                write!(f, "Invalid socket_id {s:?}: expected digits.digits")
            }
            ApiError::UserCountNeedsPresencePrefix => write!(
                f,
                "info=user_count is only available with filter_by_prefix=presence-"
            ),
            ApiError::UserCountNeedsPresenceChannel => write!(
                f,
                "info=user_count is only available for presence channels"
            ),
            ApiError::NotPresence { channel } => write!(
                f,
                "{channel} is not a presence channel: users are only listed for presence-… channels"
            ),
            ApiError::LogRefused(e) => write!(f, "{e}"),
            ApiError::Cluster(e) => write!(f, "The cluster's shared state is unavailable: {e}"),
            // Refusals before delivery are `LogRefused`; this write failed after delivery, so
            // say whether anyone has the event (and whether a retry would deliver it twice).
            ApiError::NotStored { error, reached: 0 } => write!(
                f,
                "{error}. It reached no live connection: sending it again is safe"
            ),
            ApiError::NotStored { error, reached } => write!(
                f,
                "{error}. It was already delivered to {reached} live connection(s): sending it \
                 again delivers it to them twice"
            ),
            ApiError::NotStoredClustered(error) => write!(
                f,
                "{error}. It may have reached the cluster's bus before the write failed: \
                 sending it again may deliver it twice"
            ),
        }
    }
}

impl std::error::Error for ApiError {}

impl From<SigningError> for ApiError {
    fn from(e: SigningError) -> ApiError {
        ApiError::Signature(e)
    }
}

impl From<ApiError> for ApiResponse {
    /// `{status} {"error": "<message>"}`.
    fn from(e: ApiError) -> ApiResponse {
        ApiResponse {
            status: e.status(),
            body: json!({ "error": e.to_string() }).to_string(),
        }
    }
}
