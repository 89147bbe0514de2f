//! Transports move a session's frames over the wire and hold no protocol logic: WebSocket
//! (`ws`) and, later, pusher-js's HTTP fallbacks.

pub mod fallback;
pub mod ws;
pub mod wsframe;
