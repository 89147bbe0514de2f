//! `Frame`: one serialised server message (its JSON text), encoded once and shared. A published
//! event becomes one `Frame`; every subscriber's queue holds a refcounted clone of the same
//! bytes, so fan-out costs a queue push per subscriber, not a `serde_json` call (a queue entry
//! is two words). How a transport puts it on the wire (a WebSocket text frame, a SockJS array)
//! is the transport's business.

use std::sync::Arc;

/// A serialised frame: a refcounted JSON string, encoded once and shared by every subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame(Arc<str>);

impl Frame {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Frame {
    fn from(s: String) -> Frame {
        Frame(Arc::from(s))
    }
}

impl From<&str> for Frame {
    fn from(s: &str) -> Frame {
        Frame(Arc::from(s))
    }
}

impl std::ops::Deref for Frame {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}
