//! The signed HTTP API (`/apps/{id}/…`, PUSHER.md §7): trigger, batch trigger, channel queries,
//! presence users and terminate connections. Every request is signature-checked before
//! anything else; answers are `200` with a JSON object, or the status the SDKs understand with
//! `{"error": "…"}` (one [`ApiError`] variant per failure). It works on plain request parts,
//! not on an HTTP library's types.

mod error;
mod log;

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::hub::{App, ChannelInfo, Hub};
use crate::protocol::{channel, message, signing, ChannelKind, Frame, SocketId};

pub use error::ApiError;
pub use log::{
    AcceptedEvent, AppendError, EventLog, EventTap, LogFuture, LogStatus, Room, RoomFuture,
};

/// The parts of an HTTP request the API needs.
pub struct ApiRequest<'a> {
    pub method: &'a str,
    /// The raw request path (not decoded), e.g. `/apps/1/events`.
    pub path: &'a str,
    /// The raw query string (without `?`).
    pub query: &'a str,
    pub body: &'a [u8],
}

/// An answer: status and JSON body.
#[derive(Debug)]
pub struct ApiResponse {
    pub status: u16,
    pub body: String,
}

impl ApiResponse {
    /// `200 {}`, the answer of most calls.
    fn empty() -> ApiResponse {
        ApiResponse {
            status: 200,
            body: "{}".to_owned(),
        }
    }

    fn ok(v: Value) -> ApiResponse {
        ApiResponse {
            status: 200,
            body: v.to_string(),
        }
    }
}

pub struct Api {
    hub: Arc<Hub>,
    log: Option<Arc<dyn EventLog>>,
    /// A path prefix a reverse proxy adds that the SDK did not sign (stripped before routing).
    pub strip_prefix: String,
    /// Where accepted events are also shown (the console), if anywhere.
    pub tap: Option<EventTap>,
}

#[derive(Deserialize)]
struct EventBody<'a> {
    name: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    channels: Option<Vec<String>>,
    channel: Option<String>,
    socket_id: Option<String>,
    info: Option<String>,
}

#[derive(Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow)]
    batch: Option<Vec<&'a RawValue>>,
}

/// A body (or one event of a batch) as `T`, if it is a JSON object: serde's derived structs
/// would also take a JSON array field by field, a shape no SDK sends.
fn json_object<'a, T: Deserialize<'a>>(json: &'a [u8]) -> Result<T, ApiError> {
    if !message::is_json_object(json) {
        return Err(ApiError::InvalidJson(serde::de::Error::custom(
            "expected a JSON object {…}, not an array or a single value",
        )));
    }
    serde_json::from_slice(json).map_err(ApiError::InvalidJson)
}

/// A validated event ready to publish.
struct Validated {
    name: String,
    channels: Vec<String>,
    data: String,
    socket_id: Option<String>,
    info: Vec<String>,
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Api {
    pub fn new(hub: Arc<Hub>, log: Option<Arc<dyn EventLog>>) -> Api {
        Api {
            hub,
            log,
            strip_prefix: String::new(),
            tap: None,
        }
    }

    /// Triggers an event (`POST /apps/{id}/events` body) on behalf of an already authenticated
    /// operator (the console): the same validation, delivery and event log, no signature.
    pub async fn trigger_trusted(&self, app_id: &str, body: &[u8]) -> ApiResponse {
        let Some(app) = self.hub.app_by_id(app_id).cloned() else {
            return ApiError::UnknownTrustedApp {
                app_id: app_id.to_owned(),
            }
            .into();
        };
        if !app.config.enabled {
            return ApiError::AppDisabled.into();
        }
        self.trigger(&app, body).await.unwrap_or_else(Into::into)
    }

    /// Whether accepted events can be stored (for `/up`).
    pub fn log_status(&self) -> LogStatus {
        self.log.as_ref().map_or(LogStatus::Ok, |l| l.status())
    }

    /// Handles one request under `/apps/`.
    pub async fn handle(&self, req: ApiRequest<'_>) -> ApiResponse {
        self.route(req).await.unwrap_or_else(Into::into)
    }

    async fn route(&self, req: ApiRequest<'_>) -> Result<ApiResponse, ApiError> {
        let path = req
            .path
            .strip_prefix(self.strip_prefix.as_str())
            .unwrap_or(req.path);
        let rest = path.strip_prefix("/apps/").ok_or(ApiError::NotApiPath)?;
        let (app_id, route) = rest.split_once('/').unwrap_or((rest, ""));
        let app = self
            .hub
            .app_by_id(app_id)
            .cloned()
            .ok_or_else(|| ApiError::UnknownApp {
                app_id: app_id.to_owned(),
            })?;
        let signed = signing::SignedRequest {
            method: req.method,
            path,
            query: req.query,
            body: req.body,
        };
        signing::verify(&signed, &app.config.key, &app.mac_key, now_secs())?;
        if !app.config.enabled {
            return Err(ApiError::AppDisabled);
        }
        // Only the GET endpoints read query parameters: publishing doesn't decode them twice.
        let param = |k: &str| {
            signing::query_pairs(req.query)
                .find(|(n, _)| n == k)
                .map(|(_, v)| v)
        };
        // At most four segments (`users/{id}/terminate_connections` has three): no allocation.
        let mut parts = [""; 5];
        let mut n = 0;
        for part in route.split('/') {
            if n == parts.len() {
                break;
            }
            parts[n] = part;
            n += 1;
        }
        Ok(match (req.method, &parts[..n]) {
            ("POST", ["events"]) => self.trigger(&app, req.body).await?,
            ("POST", ["batch_events"]) => self.batch(&app, req.body).await?,
            ("GET", ["channels"]) => {
                channels(
                    &app,
                    param("filter_by_prefix").as_deref().unwrap_or(""),
                    param("info").as_deref().unwrap_or(""),
                )
                .await?
            }
            ("GET", ["channels", name]) => {
                channel_info(
                    &app,
                    &signing::percent_decode(name),
                    param("info").as_deref().unwrap_or(""),
                )
                .await?
            }
            ("GET", ["channels", name, "users"]) => {
                users(&app, &signing::percent_decode(name)).await?
            }
            ("POST", ["users", user, "terminate_connections"]) => {
                let user = signing::percent_decode(user);
                match app.cluster() {
                    Some(link) => link
                        .terminate_user(&app.config.id, &user)
                        .await
                        .map_err(ApiError::Cluster)?,
                    None => drop(app.terminate_user(&user)),
                }
                ApiResponse::empty()
            }
            ("GET", ["connections"]) => {
                // In a cluster, the other nodes' as of their last heartbeat.
                let remote = app
                    .cluster()
                    .map_or(0, |l| l.remote_connections(&app.config.id));
                let local = app
                    .counters
                    .connections
                    .load(std::sync::atomic::Ordering::Relaxed);
                ApiResponse::ok(json!({ "connections": local + remote }))
            }
            (
                _,
                ["events"]
                | ["batch_events"]
                | ["channels", ..]
                | ["users", _, "terminate_connections"]
                | ["connections"],
            ) => {
                return Err(ApiError::MethodNotAllowed {
                    method: req.method.to_owned(),
                    path: path.to_owned(),
                })
            }
            _ => {
                return Err(ApiError::NoEndpoint {
                    path: path.to_owned(),
                })
            }
        })
    }

    async fn trigger(&self, app: &Arc<App>, body: &[u8]) -> Result<ApiResponse, ApiError> {
        let parsed: EventBody<'_> = json_object(body)?;
        let v = validate(app, parsed)?;
        // What the answer needs after the event moved on (usually nothing: no `info` asked).
        let wanted = (!v.info.is_empty()).then(|| (v.channels.clone(), v.info.clone()));
        self.publish(app, vec![v]).await?;
        let Some((channels, info)) = wanted else {
            return Ok(ApiResponse::empty());
        };
        let mut out = Map::new();
        for c in &channels {
            out.insert(c.clone(), Value::Object(info_attrs(app, c, &info).await?));
        }
        Ok(ApiResponse::ok(json!({ "channels": out })))
    }

    async fn batch(&self, app: &Arc<App>, body: &[u8]) -> Result<ApiResponse, ApiError> {
        let parsed: BatchBody<'_> = json_object(body)?;
        let batch = parsed.batch.ok_or(ApiError::MissingBatch)?;
        let max = app.config.max_batch_events;
        if batch.len() > max {
            return Err(ApiError::BatchTooLarge {
                len: batch.len(),
                max,
            });
        }
        // Every event is validated before any is delivered: a bad one refuses the whole batch.
        let items = batch
            .into_iter()
            .enumerate()
            .map(|(index, b)| {
                json_object(b.get().as_bytes())
                    .and_then(|b| validate(app, b))
                    .map_err(|e| ApiError::InBatch {
                        index,
                        error: Box::new(e),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let infos: Vec<(Vec<String>, Vec<String>)> = items
            .iter()
            .map(|v| (v.channels.clone(), v.info.clone()))
            .collect();
        self.publish(app, items).await?;
        if infos.iter().all(|(_, i)| i.is_empty()) {
            return Ok(ApiResponse::empty());
        }
        let mut batch: Vec<Value> = Vec::with_capacity(infos.len());
        for (chs, info) in &infos {
            let attrs = match chs.first() {
                Some(c) => info_attrs(app, c, info).await?,
                None => Map::new(),
            };
            batch.push(Value::Object(attrs));
        }
        Ok(ApiResponse::ok(json!({ "batch": batch })))
    }

    /// Delivers validated events, then records them in the event log before the answer.
    ///
    /// Delivery comes first so that the subscribers don't wait for the fsync (the group commit
    /// overlaps it with the fan-out) and so the record says how many sockets each channel
    /// reached. A 503 must still mean "not delivered": the log says up front whether it can
    /// take these events (they fit under its cap, it keeps disk space reserved ahead and
    /// watches its directory), so a cap, a full disk or a removed directory refuses the event
    /// here, before anyone got it.
    async fn publish(&self, app: &Arc<App>, items: Vec<Validated>) -> Result<(), ApiError> {
        // A cluster delivers from its bus, on every node in one order: the event goes there from
        // the event log (the forwarder), not to this node's sockets first.
        let clustered = app.cluster().is_some();
        let resumable = app.resume().is_some();
        let mut accepted: Vec<AcceptedEvent> = items
            .into_iter()
            .map(|v| AcceptedEvent {
                app_id: app.config.id.clone(),
                name: v.name,
                // Assigned at delivery, below; the cap check counts them while resume is on
                // (`eventlog::record_bound`).
                positions: Vec::new(),
                channels: v.channels,
                data: v.data,
                socket_id: v.socket_id,
                delivered: Vec::new(),
            })
            .collect();
        // Held until the events are appended: concurrent publishes see each other's room.
        let _room = match &self.log {
            Some(log) => match log.check_capacity(&accepted) {
                Ok(room) => room,
                // Only now, never on the hot path: a disk with room again is noticed here.
                Err(refused) => log
                    .recheck(refused, &accepted)
                    .await
                    .map_err(ApiError::LogRefused)?,
            },
            None => Room::default(),
        };
        for event in &mut accepted {
            let mut delivered = Vec::with_capacity(event.channels.len());
            let mut positions =
                Vec::with_capacity(if resumable { event.channels.len() } else { 0 });
            for c in &event.channels {
                if clustered {
                    delivered.push(0);
                    continue;
                }
                let frame = || {
                    Frame::from(message::frame(
                        &event.name,
                        Some(c),
                        Some(&event.data),
                        None,
                    ))
                };
                let (n, pos) = app.publish_at(c, frame, event.socket_id.as_deref());
                delivered.push(n);
                if resumable {
                    // 0: a cache channel, never replayed.
                    positions.push(pos.unwrap_or(0));
                }
            }
            event.delivered = delivered;
            event.positions = positions;
            app.counters
                .api_events
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(tap) = &self.tap {
                let ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                let _ = tap.send((ms, Arc::new(event.clone())));
            }
        }
        if let Some(log) = &self.log {
            let reached: usize = accepted.iter().flat_map(|e| e.delivered.iter()).sum();
            // The check above refuses before delivering; a write that still fails after it (an
            // I/O error, more events on their way than the disk space reserved ahead) comes
            // after delivery, and the sender must know whether a retry delivers twice.
            log.append(accepted)
                .await
                .map_err(|error| match clustered {
                    true => ApiError::NotStoredClustered(error),
                    false => ApiError::NotStored { error, reached },
                })?;
        }
        Ok(())
    }
}

fn validate(app: &App, b: EventBody<'_>) -> Result<Validated, ApiError> {
    let cfg = &app.config;
    let name = b
        .name
        .filter(|n| !n.is_empty())
        .ok_or(ApiError::MissingName)?;
    if name.len() > cfg.max_event_name_length {
        return Err(ApiError::NameTooLong {
            len: name.len(),
            max: cfg.max_event_name_length,
        });
    }
    let raw = b.data.ok_or(ApiError::MissingData)?;
    let data = if raw.get().starts_with('"') {
        serde_json::from_str::<String>(raw.get()).map_err(ApiError::InvalidData)?
    } else {
        raw.get().to_owned()
    };
    if data.len() > cfg.max_event_data_bytes {
        return Err(ApiError::DataTooLarge {
            len: data.len(),
            max: cfg.max_event_data_bytes,
        });
    }
    let channels = match (b.channels, b.channel) {
        (Some(c), _) if !c.is_empty() => c,
        (_, Some(c)) => vec![c],
        _ => return Err(ApiError::MissingChannels),
    };
    if channels.len() > cfg.max_channels_per_event {
        return Err(ApiError::TooManyChannels {
            len: channels.len(),
            max: cfg.max_channels_per_event,
        });
    }
    for c in &channels {
        channel::validate(c, cfg.max_channel_name_length).map_err(|reason| {
            ApiError::InvalidChannel {
                channel: c.clone(),
                reason,
            }
        })?;
    }
    let socket_id = match b.socket_id.filter(|s| !s.is_empty()) {
        Some(s) if SocketId::parse(&s).is_none() => return Err(ApiError::InvalidSocketId(s)),
        s => s,
    };
    let info: Vec<String> = b
        .info
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    Ok(Validated {
        name,
        channels,
        data,
        socket_id,
        info,
    })
}

/// One channel's counts: from the hub, or from the cluster's shared state.
async fn one_channel(app: &App, name: &str) -> Result<Option<ChannelInfo>, ApiError> {
    match app.cluster() {
        Some(link) => link
            .channel(&app.config.id, name)
            .await
            .map_err(ApiError::Cluster),
        None => Ok(app.channel(name)),
    }
}

async fn info_attrs(
    app: &App,
    channel: &str,
    info: &[String],
) -> Result<Map<String, Value>, ApiError> {
    let ci = one_channel(app, channel).await?;
    let mut m = Map::new();
    if info.iter().any(|i| i == "subscription_count") {
        m.insert(
            "subscription_count".into(),
            json!(ci.as_ref().map_or(0, |c| c.subscription_count)),
        );
    }
    if info.iter().any(|i| i == "user_count") && ChannelKind::of(channel).is_presence() {
        m.insert(
            "user_count".into(),
            json!(ci.as_ref().and_then(|c| c.user_count).unwrap_or(0)),
        );
    }
    Ok(m)
}

fn info_list(info: &str) -> Vec<&str> {
    info.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

async fn channels(app: &App, prefix: &str, info: &str) -> Result<ApiResponse, ApiError> {
    let info = info_list(info);
    if info.contains(&"user_count") && !prefix.starts_with("presence-") {
        return Err(ApiError::UserCountNeedsPresencePrefix);
    }
    let list = match app.cluster() {
        Some(link) => link
            .channels(&app.config.id, prefix)
            .await
            .map_err(ApiError::Cluster)?,
        None => app.channels(prefix),
    };
    let mut out = Map::new();
    for c in list {
        let mut m = Map::new();
        if info.contains(&"user_count") {
            if let Some(u) = c.user_count {
                m.insert("user_count".into(), json!(u));
            }
        }
        if info.contains(&"subscription_count") {
            m.insert("subscription_count".into(), json!(c.subscription_count));
        }
        out.insert(c.name, Value::Object(m));
    }
    Ok(ApiResponse::ok(json!({ "channels": out })))
}

async fn channel_info(app: &App, name: &str, info: &str) -> Result<ApiResponse, ApiError> {
    channel::validate(name, app.config.max_channel_name_length)
        .map_err(ApiError::InvalidChannelName)?;
    let info = info_list(info);
    let presence = ChannelKind::of(name).is_presence();
    if info.contains(&"user_count") && !presence {
        return Err(ApiError::UserCountNeedsPresenceChannel);
    }
    let ci = one_channel(app, name).await?;
    let mut m = Map::new();
    m.insert("occupied".into(), json!(ci.is_some()));
    if info.contains(&"user_count") {
        m.insert(
            "user_count".into(),
            json!(ci.as_ref().and_then(|c| c.user_count).unwrap_or(0)),
        );
    }
    if info.contains(&"subscription_count") {
        m.insert(
            "subscription_count".into(),
            json!(ci.as_ref().map_or(0, |c| c.subscription_count)),
        );
    }
    if info.contains(&"cache") && ChannelKind::of(name).is_cache() {
        let cached = match app.cluster() {
            Some(link) => link
                .cached(&app.config.id, name)
                .await
                .map_err(ApiError::Cluster)?,
            None => app.cached(name),
        };
        if let Some((frame, ttl)) = cached {
            let event: Value = serde_json::from_str(frame.as_str()).unwrap_or(Value::Null);
            m.insert(
                "cache".into(),
                json!({ "event": event["event"], "data": event["data"], "ttl": ttl.as_secs() }),
            );
        }
    }
    Ok(ApiResponse::ok(Value::Object(m)))
}

async fn users(app: &App, name: &str) -> Result<ApiResponse, ApiError> {
    if !ChannelKind::of(name).is_presence() {
        return Err(ApiError::NotPresence {
            channel: name.to_owned(),
        });
    }
    let ids = match app.cluster() {
        Some(link) => link
            .users(&app.config.id, name)
            .await
            .map_err(ApiError::Cluster)?,
        None => app.users(name),
    };
    let users: Vec<Value> = ids.into_iter().map(|id| json!({ "id": id })).collect();
    Ok(ApiResponse::ok(json!({ "users": users })))
}

#[cfg(test)]
mod tests;
