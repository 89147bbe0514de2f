//! Transports move a session's frames over the wire and hold no protocol logic: WebSocket
//! (`ws`, framed by `wsframe`) and pusher-js's HTTP fallbacks (`fallback`: xhr_streaming,
//! xhr polling and xhr_send). What they need of the running server comes in the narrow
//! [`crate::context::Shared`]; they never import `server`.

pub mod fallback;
pub mod ws;
pub mod wsframe;
