//! pushbox: a Pusher-compatible real-time server appliance.
pub mod protocol;
