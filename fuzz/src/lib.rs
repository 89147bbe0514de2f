//! What the cargo-fuzz targets share: the session model and checks of the stable driver
//! (`tests/fuzz/`), included as they are so both kinds of fuzzing check the same invariants,
//! and the signing a raw fuzz input cannot do for itself.

#[allow(dead_code)]
#[path = "../../tests/fuzz/api.rs"]
pub mod api;
#[allow(dead_code)]
#[path = "../../tests/fuzz/driver.rs"]
pub mod driver;
#[allow(dead_code)]
#[path = "../../tests/fuzz/message.rs"]
pub mod message;
#[allow(dead_code)]
#[path = "../../tests/fuzz/wsframe.rs"]
pub mod wsframe;

use std::sync::{Arc, OnceLock};

use pushbox::hub::App;
use pushbox::protocol::auth::sign;
use serde_json::Value;

/// One app for the whole fuzzing process; sessions come and go.
pub fn app() -> &'static Arc<App> {
    static APP: OnceLock<Arc<App>> = OnceLock::new();
    APP.get_or_init(message::app)
}

/// `text` with a correct `auth` for socket `sid` when it is a subscribe (`data.channel`, with
/// `data.channel_data` if present) or a signin (`data.user_data`): a fuzzer cannot find an
/// HMAC, and without one it never gets past the auth check into presence and signin code.
pub fn with_auth(text: &str, sid: &str) -> Option<String> {
    let mut v: Value = serde_json::from_str(text).ok()?;
    let data = v.get_mut("data")?.as_object_mut()?;
    let signed = if let Some(user_data) = data.get("user_data").and_then(Value::as_str) {
        format!("{sid}::user::{user_data}")
    } else {
        let channel = data.get("channel")?.as_str()?;
        match data.get("channel_data").and_then(Value::as_str) {
            Some(cd) => format!("{sid}:{channel}:{cd}"),
            None => format!("{sid}:{channel}"),
        }
    };
    let auth = format!(
        "{}:{}",
        message::KEY,
        sign(message::SECRET, signed.as_bytes())
    );
    data.insert("auth".into(), Value::String(auth));
    Some(v.to_string())
}
