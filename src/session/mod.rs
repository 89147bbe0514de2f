//! One connection's protocol state machine, whatever the transport: the handshake frame,
//! subscriptions and their auth checks, presence membership, client events and their rate
//! limit, signin, liveness (activity timeout, server ping, pong timeout). It reads text frames
//! and writes into the connection's `Outbox`; the transport only moves bytes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::hub::{App, Member, Outbox, SubscribeError};
use crate::protocol::auth;
use crate::protocol::{channel, message, ChannelKind, ClientMessage, CloseCode, Frame, SocketId};
use crate::resume::{self, Origin};

/// Timers shared by every session of a server.
#[derive(Clone, Copy, Debug)]
pub struct Liveness {
    /// Advertised in `connection_established`; a client idle this long gets a server ping.
    pub activity_timeout: Duration,
    /// After a server ping, how long to wait for any frame before closing with 4201.
    pub pong_timeout: Duration,
}

/// What the transport should do when the session's timer fires.
#[derive(Debug, PartialEq, Eq)]
pub enum Tick {
    /// Nothing to do until this instant.
    Wait(Instant),
    /// Send a ping (a `pusher:ping` frame, or a WebSocket ping for peers that only speak control frames).
    Ping,
    /// Close with 4201: no pong came.
    Close,
}

/// Who may open a session, whatever the transport: a known app key, an enabled app, a
/// supported protocol version, an allowed `Origin` (the connection quota is counted when the
/// transport takes the connection: `App::try_connect`).
pub fn admit(
    hub: &crate::hub::Hub,
    app_key: &str,
    query: &str,
    origin: Option<&str>,
) -> Result<Arc<App>, CloseCode> {
    let app = hub.app_by_key(app_key).ok_or(CloseCode::AppNotFound)?;
    if !app.config.enabled {
        return Err(CloseCode::AppDisabled);
    }
    check_protocol(query)?;
    if !app.config.origin_allowed(origin) {
        return Err(CloseCode::Unauthorized);
    }
    Ok(app.clone())
}

/// `protocol`: missing is accepted (like Reverb and soketi); not a number → 4006; outside 5–7
/// → 4007.
pub fn check_protocol(query: &str) -> Result<(), CloseCode> {
    let Some((_, v)) = crate::protocol::signing::query_pairs(query).find(|(k, _)| k == "protocol")
    else {
        return Ok(());
    };
    match v.trim().parse::<u32>() {
        Ok(5..=7) => Ok(()),
        Ok(_) => Err(CloseCode::UnsupportedProtocol),
        Err(_) => Err(CloseCode::InvalidVersion),
    }
}

/// A connection that was refused before its session started: send the error frame, then close.
pub fn refusal(code: CloseCode) -> (Frame, u16, &'static str) {
    (
        Frame::from(message::error(Some(code.code()), code.message())),
        code.code(),
        code.message(),
    )
}

struct SignedIn {
    id: String,
    /// Raw JSON of `user_data.user_info`: the presence info when a presence subscribe comes
    /// without `channel_data`.
    user_info: Option<String>,
    watchlist: Vec<String>,
}

struct Subscription {
    channel: String,
    /// The presence user id this connection joined as.
    user_id: Option<String>,
    /// The app's resume head at the subscribe (0 with resume off): a signin that comes later
    /// may still replay what was missed before it (`Session::resume_subscribed`).
    head: u64,
}

pub struct Session {
    app: Arc<App>,
    outbox: Arc<Outbox>,
    liveness: Liveness,
    subscriptions: Vec<Subscription>,
    user: Option<SignedIn>,
    rate_window: Instant,
    rate_count: u32,
    last_seen: Instant,
    ping_sent: Option<Instant>,
    /// Resume state, allocated only for a connection with a token or a signed user (resume on).
    resume: Option<Box<Resumable>>,
    /// A hash of the client's address and user agent, for zero-change resume (32 bits: it
    /// sits beside `rate_count`, in what was padding).
    peer: u32,
}

/// A resumable connection's state: its lineage (shared with the app's store) and its proof.
struct Resumable {
    lineage: resume::Shared,
    proof: resume::Proof,
    /// The close code the client sent, if it sent one (1001: a page unload).
    close_code: Option<u16>,
    /// The server queued a Close (4200, shutdown) with every event up to this position ahead
    /// of it: the client's answering Close proves them delivered (`close_answered`).
    close_head: Option<u64>,
    /// Clustered: when the lineage last went to Redis (`save_remote`).
    saved_at: Option<Instant>,
}

impl Resumable {
    fn new(lineage: resume::Shared) -> Box<Resumable> {
        Box::new(Resumable {
            lineage,
            proof: resume::Proof::default(),
            close_code: None,
            close_head: None,
            saved_at: None,
        })
    }
}

impl Session {
    /// Starts a session on an accepted connection (the app has already counted it) and queues
    /// `pusher:connection_established`.
    pub fn open(app: Arc<App>, outbox: Arc<Outbox>, liveness: Liveness) -> Session {
        Session::open_from(app, outbox, liveness, Origin::default())
    }

    /// [`open_from`](Self::open_from) for a new connection from either transport: clustered, a
    /// token's lineage is first claimed from Redis (the client may have been on another node
    /// since; a bounded wait, see `resumable::claim_remote`).
    pub async fn connect(
        app: Arc<App>,
        outbox: Arc<Outbox>,
        liveness: Liveness,
        origin: Origin,
    ) -> Session {
        resumable::claim_remote(&app, &origin, outbox.socket_id.as_str()).await;
        Session::open_from(app, outbox, liveness, origin)
    }

    /// [`open`](Self::open) for a client that may resume: a token claims what the token's
    /// previous connection left (what this node knows: [`connect`](Self::connect) asks the
    /// cluster first).
    pub fn open_from(
        app: Arc<App>,
        outbox: Arc<Outbox>,
        liveness: Liveness,
        origin: Origin,
    ) -> Session {
        let now = Instant::now();
        outbox.push(Frame::from(message::connection_established(
            outbox.socket_id.as_str(),
            liveness.activity_timeout.as_secs().max(1),
        )));
        let resume = match (app.resume(), origin.token) {
            (Some(r), Some(token)) => {
                let (lineage, _) = r.open_token(token, outbox.socket_id.as_str(), origin.peer);
                outbox.disable_direct();
                Some(Resumable::new(lineage))
            }
            _ => None,
        };
        Session {
            app,
            outbox,
            liveness,
            subscriptions: Vec::new(),
            user: None,
            rate_window: now,
            rate_count: 0,
            last_seen: now,
            ping_sent: None,
            resume,
            peer: origin.peer,
        }
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    pub fn socket_id(&self) -> &SocketId {
        &self.outbox.socket_id
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    fn send(&self, frame: String) {
        self.outbox.push(Frame::from(frame));
    }

    fn error(&self, code: Option<u16>, msg: &str) {
        self.send(message::error(code, msg));
    }

    fn sub_error(&self, channel: &str, kind: &str, msg: &str, status: u16) {
        self.send(message::subscription_error(channel, kind, msg, status));
    }

    /// Any frame from the peer (text or control) counts as activity.
    pub fn activity(&mut self) {
        self.last_seen = Instant::now();
        self.ping_sent = None;
    }

    /// The liveness timer.
    pub fn tick(&mut self, now: Instant) -> Tick {
        if let Some(sent) = self.ping_sent {
            let deadline = sent + self.liveness.pong_timeout;
            return if now >= deadline {
                Tick::Close
            } else {
                Tick::Wait(deadline)
            };
        }
        let due = self.last_seen + self.liveness.activity_timeout;
        if now >= due {
            self.ping_sent = Some(now);
            self.ping_queued();
            Tick::Ping
        } else {
            Tick::Wait(due)
        }
    }

    /// Handles one text frame from the client.
    pub fn handle_text(&mut self, text: &str) {
        self.activity();
        self.app
            .counters
            .messages_in
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let max = self.app.config.max_message_bytes;
        if text.len() > max {
            self.error(
                None,
                &format!(
                    "Message too large: {} bytes, the limit is {max} (max_message_bytes)",
                    text.len()
                ),
            );
            return;
        }
        match ClientMessage::parse(text) {
            Err(e) => self.error(None, &e.to_string()),
            Ok(ClientMessage::Ping) => self.send(message::pong().to_owned()),
            Ok(ClientMessage::Pong) => self.pong(),
            Ok(ClientMessage::UnknownPusher(_)) => {}
            Ok(ClientMessage::Subscribe {
                channel,
                auth,
                channel_data,
            }) => self.subscribe(&channel, auth.as_deref(), channel_data.as_deref()),
            Ok(ClientMessage::Unsubscribe { channel }) => self.unsubscribe(&channel),
            Ok(ClientMessage::Signin { auth, user_data }) => self.signin(&auth, &user_data),
            Ok(ClientMessage::ClientEvent {
                event,
                channel,
                data,
            }) => self.client_event(&event, &channel, data.as_deref()),
        }
    }

    fn subscribe(&mut self, name: &str, auth_value: Option<&str>, channel_data: Option<&str>) {
        let cfg = &self.app.config;
        if let Err(e) = channel::validate(name, cfg.max_channel_name_length) {
            self.sub_error(name, "InvalidChannel", &e.to_string(), 400);
            return;
        }
        let already = self.subscriptions.iter().any(|s| s.channel == name);
        if !already && self.subscriptions.len() >= cfg.max_channels_per_connection {
            let msg = format!(
                "Too many channels: this connection is on {} already (max_channels_per_connection)",
                self.subscriptions.len()
            );
            self.sub_error(name, "LimitReached", &msg, 400);
            return;
        }
        let sid = self.outbox.socket_id.as_str().to_owned();
        let kind = ChannelKind::of(name);
        let mut member = None;
        if kind == ChannelKind::ServerToUser {
            let want = name.trim_start_matches("#server-to-user-");
            if self.user.as_ref().map(|u| u.id.as_str()) != Some(want) {
                self.sub_error(name, "AuthError", "Only the connection signed in as this user may subscribe (call pusher.signin() first)", 401);
                return;
            }
        } else if kind.is_presence() {
            let result = match channel_data {
                Some(cd) => auth::verify_auth(&cfg.key, &self.app.mac_key, auth_value, &auth::presence_string(&sid, name, cd))
                    .map_err(|e| e.describe(&auth::presence_string(&sid, name, cd)))
                    .and_then(|()| parse_channel_data(cd, cfg.max_presence_user_id_length, cfg.max_presence_user_info_bytes)),
                None => match &self.user {
                    Some(u) => {
                        let s = auth::private_string(&sid, name);
                        auth::verify_auth(&cfg.key, &self.app.mac_key, auth_value, &s)
                            .map_err(|e| e.describe(&s))
                            .map(|()| Member { user_id: u.id.clone(), user_info: u.user_info.clone() })
                    }
                    None => Err("Presence subscription needs channel_data from the auth endpoint (or a signed-in connection)".to_owned()),
                },
            };
            match result {
                Ok(m) => member = Some(m),
                Err(msg) => {
                    self.sub_error(name, "AuthError", &msg, 401);
                    return;
                }
            }
        } else if kind.needs_auth() {
            let s = auth::private_string(&sid, name);
            if let Err(e) = auth::verify_auth(&cfg.key, &self.app.mac_key, auth_value, &s) {
                self.sub_error(name, "AuthError", &e.describe(&s), 401);
                return;
            }
        }
        let user_id = member.as_ref().map(|m| m.user_id.clone());
        if let Some(existing) = self.subscriptions.iter().find(|s| s.channel == name) {
            if existing.user_id != user_id {
                // Re-subscribing as another user: leave as the old one first.
                self.app.unsubscribe(&self.outbox, name);
                self.subscriptions.retain(|s| s.channel != name);
                self.resume_left(name);
            }
        }
        let plan = self.resume_plan(name, kind, member.as_ref());
        match self
            .app
            .subscribe_with(&self.outbox, name, member, plan.as_ref().map(|(p, _)| p))
        {
            Ok(subscribed) => {
                let head = subscribed.head;
                if let Some((plan, how)) = plan {
                    self.resumed(name, &plan, how, subscribed);
                }
                if !self.subscriptions.iter().any(|s| s.channel == name) {
                    // Grow one at a time: most connections hold one or two channels.
                    self.subscriptions.reserve_exact(1);
                    self.subscriptions.push(Subscription {
                        channel: name.to_owned(),
                        user_id,
                        head,
                    });
                }
            }
            Err(SubscribeError::MemberLimit { max }) => {
                if let Some((plan, _)) = &plan {
                    self.resume_unclaim(name, plan);
                }
                self.sub_error(
                    name,
                    "LimitReached",
                    &format!("Presence channel is full: {max} members (max_presence_members)"),
                    400,
                );
            }
        }
    }

    fn unsubscribe(&mut self, name: &str) {
        if let Some(i) = self.subscriptions.iter().position(|s| s.channel == name) {
            self.subscriptions.swap_remove(i);
            self.app.unsubscribe(&self.outbox, name);
            self.resume_left(name);
        }
    }

    fn signin(&mut self, auth_value: &str, user_data: &str) {
        let cfg = &self.app.config;
        if !cfg.user_authentication {
            self.error(None, "User authentication (pusher:signin) is disabled for this app (user_authentication = false)");
            return;
        }
        let s = auth::signin_string(self.outbox.socket_id.as_str(), user_data);
        let parsed = auth::verify_auth(&cfg.key, &self.app.mac_key, Some(auth_value), &s)
            .map_err(|e| e.describe(&s))
            .and_then(|()| {
                parse_user_data(
                    user_data,
                    cfg.max_presence_user_id_length,
                    cfg.max_presence_user_info_bytes,
                )
            });
        match parsed {
            Ok(UserData {
                id,
                user_info,
                watchlist,
            }) => {
                if let Some(old) = self.user.take() {
                    self.app
                        .remove_connection(&self.outbox, &[], Some(&old.id), &old.watchlist);
                }
                self.send(message::signin_success(user_data));
                self.app.signin(&self.outbox, &id, &watchlist);
                self.signed_user(&id);
                self.user = Some(SignedIn {
                    id,
                    user_info,
                    watchlist,
                });
            }
            Err(msg) => {
                let code = CloseCode::Unauthorized.code();
                self.outbox
                    .close(code, &format!("Signin failed: {msg}"), true);
            }
        }
    }

    fn client_event(&mut self, event: &str, name: &str, data: Option<&str>) {
        let cfg = &self.app.config;
        if !cfg.client_events {
            self.error(
                None,
                "Client events are disabled for this app (client_events = false)",
            );
            return;
        }
        if event.len() > cfg.max_event_name_length {
            self.error(
                None,
                &format!(
                    "Event name too long: the limit is {} characters",
                    cfg.max_event_name_length
                ),
            );
            return;
        }
        let kind = ChannelKind::of(name);
        if !kind.allows_client_events() {
            self.error(None, &format!("Client event rejected: {name} is not a private or presence channel (encrypted channels don't take client events)"));
            return;
        }
        let Some(sub) = self.subscriptions.iter().find(|s| s.channel == name) else {
            self.error(
                None,
                &format!("Client event rejected: this connection is not subscribed to {name}"),
            );
            return;
        };
        let user_id = sub.user_id.clone();
        let now = Instant::now();
        if now.duration_since(self.rate_window) >= Duration::from_secs(1) {
            self.rate_window = now;
            self.rate_count = 0;
        }
        self.rate_count += 1;
        if self.rate_count > cfg.client_event_rate {
            // 4301 as a frame only: closing with 43xx would stop pusher-js reconnecting for good.
            self.error(
                Some(CloseCode::RateLimited.code()),
                &format!(
                    "Client event rejected due to rate limit ({} per second)",
                    cfg.client_event_rate
                ),
            );
            return;
        }
        self.app
            .client_event(&self.outbox, name, event, data, user_id.as_deref());
    }

    /// The channels this connection is on.
    pub fn channels(&self) -> impl Iterator<Item = &str> {
        self.subscriptions.iter().map(|s| s.channel.as_str())
    }
}

impl Drop for Session {
    /// Leaving is the same whatever ended the connection: channels, presence, signin, quota.
    /// A resumable connection leaves its lineage for the window.
    fn drop(&mut self) {
        if let Some(r) = self.app.resume().cloned() {
            if let Some(rs) = &self.resume {
                r.end(&rs.lineage, rs.close_code);
            }
            // Clustered: the ended lineage is what the client's next node inherits.
            self.save_remote(true);
            self.resume = None;
        }
        let channels: Vec<String> = self.subscriptions.drain(..).map(|s| s.channel).collect();
        let user = self.user.take();
        self.app.remove_connection(
            &self.outbox,
            &channels,
            user.as_ref().map(|u| u.id.as_str()),
            user.as_ref().map(|u| u.watchlist.as_slice()).unwrap_or(&[]),
        );
        self.app.disconnected();
    }
}

/// `channel_data`: `{"user_id": string|number, "user_info"?: any}`.
fn parse_channel_data(cd: &str, max_id: usize, max_info: usize) -> Result<Member, String> {
    #[derive(serde::Deserialize)]
    struct ChannelData<'a> {
        #[serde(borrow)]
        user_id: Option<&'a serde_json::value::RawValue>,
        #[serde(borrow)]
        user_info: Option<&'a serde_json::value::RawValue>,
    }
    let invalid = || "Invalid channel_data: expected a JSON object with user_id".to_owned();
    if !crate::protocol::message::is_json_object(cd.as_bytes()) {
        return Err(invalid());
    }
    let parsed: ChannelData<'_> = serde_json::from_str(cd).map_err(|_| invalid())?;
    let user_id = parsed
        .user_id
        .and_then(id_string)
        .ok_or("Invalid channel_data: user_id (a string or number) is missing")?;
    if user_id.len() > max_id {
        return Err(format!(
            "Presence user_id is longer than {max_id} characters"
        ));
    }
    let user_info = parsed
        .user_info
        .map(|r| r.get().to_owned())
        .filter(|s| s != "null");
    if user_info.as_ref().is_some_and(|i| i.len() > max_info) {
        return Err(format!(
            "Presence user_info is larger than {max_info} bytes (max_presence_user_info_bytes)"
        ));
    }
    Ok(Member { user_id, user_info })
}

/// A user id that may be a JSON string or number, as a non-empty string.
fn id_string(raw: &serde_json::value::RawValue) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(raw.get()).ok()?;
    let s = match v {
        serde_json::Value::String(s) => s,
        serde_json::Value::Number(n) => n.to_string(),
        _ => return None,
    };
    (!s.is_empty()).then_some(s)
}

/// signin `user_data`: an object with a non-empty string `id`, optional `watchlist`.
/// What a signin's `user_data` says: id, raw `user_info`, watchlist.
struct UserData {
    id: String,
    user_info: Option<String>,
    watchlist: Vec<String>,
}

fn parse_user_data(user_data: &str, max_id: usize, max_info: usize) -> Result<UserData, String> {
    let v: serde_json::Value =
        serde_json::from_str(user_data).map_err(|_| "user_data is not JSON".to_owned())?;
    let id = match v.get("id") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err("user_data must be a JSON object with a non-empty string \"id\"".into()),
    };
    if id.len() > max_id {
        return Err(format!("user id is longer than {max_id} characters"));
    }
    let watchlist = match v.get("watchlist") {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| match x {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .take(100)
            .collect(),
        _ => Vec::new(),
    };
    // Keep user_info's JSON text as the app wrote it (key order, escapes).
    #[derive(serde::Deserialize)]
    struct Raw<'a> {
        #[serde(borrow)]
        user_info: Option<&'a serde_json::value::RawValue>,
    }
    let user_info = serde_json::from_str::<Raw<'_>>(user_data)
        .ok()
        .and_then(|r| r.user_info.map(|i| i.get().to_owned()))
        .filter(|i| i != "null");
    if user_info.as_ref().is_some_and(|i| i.len() > max_info) {
        return Err(format!(
            "user_info is larger than {max_info} bytes (max_presence_user_info_bytes)"
        ));
    }
    Ok(UserData {
        id,
        user_info,
        watchlist,
    })
}

mod resumable;

#[cfg(test)]
mod tests;
