//! Channel names and kinds (PUSHER.md §4): prefixes matched with their dash, longest first.

use std::fmt;

/// What a channel name's prefix makes of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelKind {
    Public,
    Private,
    PrivateEncrypted,
    Presence,
    Cache,
    PrivateCache,
    PrivateEncryptedCache,
    PresenceCache,
    /// `#server-to-user-{id}`: only the connection signed in as `{id}` may subscribe.
    ServerToUser,
}

impl ChannelKind {
    pub fn of(name: &str) -> ChannelKind {
        if name.starts_with("#server-to-user-") {
            ChannelKind::ServerToUser
        } else if name.starts_with("private-encrypted-cache-") {
            ChannelKind::PrivateEncryptedCache
        } else if name.starts_with("private-encrypted-") {
            ChannelKind::PrivateEncrypted
        } else if name.starts_with("private-cache-") {
            ChannelKind::PrivateCache
        } else if name.starts_with("private-") {
            ChannelKind::Private
        } else if name.starts_with("presence-cache-") {
            ChannelKind::PresenceCache
        } else if name.starts_with("presence-") {
            ChannelKind::Presence
        } else if name.starts_with("cache-") {
            ChannelKind::Cache
        } else {
            ChannelKind::Public
        }
    }

    pub fn is_presence(self) -> bool {
        matches!(self, ChannelKind::Presence | ChannelKind::PresenceCache)
    }

    /// Private-style auth (`socket_id:channel`) on subscribe.
    pub fn needs_auth(self) -> bool {
        !matches!(
            self,
            ChannelKind::Public | ChannelKind::Cache | ChannelKind::ServerToUser
        )
    }

    pub fn is_cache(self) -> bool {
        matches!(
            self,
            ChannelKind::Cache
                | ChannelKind::PrivateCache
                | ChannelKind::PrivateEncryptedCache
                | ChannelKind::PresenceCache
        )
    }

    /// Client events are allowed on private and presence channels, never on encrypted ones.
    pub fn allows_client_events(self) -> bool {
        matches!(
            self,
            ChannelKind::Private
                | ChannelKind::PrivateCache
                | ChannelKind::Presence
                | ChannelKind::PresenceCache
        )
    }
}

/// Why a channel name was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelNameError {
    Empty,
    TooLong { len: usize, max: usize },
    BadCharacter(char),
    ReservedHash,
}

impl fmt::Display for ChannelNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelNameError::Empty => write!(f, "Channel name is empty"),
            ChannelNameError::TooLong { len, max } => {
                write!(
                    f,
                    "Channel name is {len} characters long, the limit is {max}"
                )
            }
            ChannelNameError::BadCharacter(c) => write!(
                f,
                "Channel name contains {c:?}: only A-Z a-z 0-9 _ - = @ , . ; are allowed"
            ),
            ChannelNameError::ReservedHash => write!(
                f,
                "Channel names starting with '#' are reserved (only #server-to-user-{{id}})"
            ),
        }
    }
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '=' | '@' | ',' | '.' | ';')
}

/// Checks a channel name: `[A-Za-z0-9_\-=@,.;]`, at most `max_len` bytes, and `#` only as
/// `#server-to-user-`.
pub fn validate(name: &str, max_len: usize) -> Result<(), ChannelNameError> {
    if name.is_empty() {
        return Err(ChannelNameError::Empty);
    }
    if name.len() > max_len {
        return Err(ChannelNameError::TooLong {
            len: name.len(),
            max: max_len,
        });
    }
    let rest = if let Some(rest) = name.strip_prefix("#server-to-user-") {
        if rest.is_empty() {
            return Err(ChannelNameError::Empty);
        }
        rest
    } else if name.starts_with('#') {
        return Err(ChannelNameError::ReservedHash);
    } else {
        name
    };
    match rest.chars().find(|c| !allowed(*c)) {
        Some(c) => Err(ChannelNameError::BadCharacter(c)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_longest_prefix_with_dash() {
        use ChannelKind::*;
        let cases = [
            ("orders", Public),
            ("company.1", Public),
            ("cachefoo", Public),
            ("privatefoo", Public),
            ("presencefoo", Public),
            ("private-orders.1", Private),
            ("private-App.Models.User.1", Private),
            ("private-encrypted-x", PrivateEncrypted),
            ("private-encrypted-cache-x", PrivateEncryptedCache),
            ("private-cache-x", PrivateCache),
            ("presence-room.1", Presence),
            ("presence-cache-x", PresenceCache),
            ("cache-prices", Cache),
            ("#server-to-user-12", ServerToUser),
        ];
        for (name, kind) in cases {
            assert_eq!(ChannelKind::of(name), kind, "{name}");
        }
    }

    #[test]
    fn client_event_rules() {
        assert!(ChannelKind::Private.allows_client_events());
        assert!(ChannelKind::PresenceCache.allows_client_events());
        assert!(!ChannelKind::Public.allows_client_events());
        assert!(!ChannelKind::Cache.allows_client_events());
        assert!(!ChannelKind::PrivateEncrypted.allows_client_events());
        assert!(!ChannelKind::ServerToUser.allows_client_events());
    }

    #[test]
    fn names() {
        assert!(validate("private-App.Models.User.1", 200).is_ok());
        assert!(validate("a_b-c=d@e,f.g;h", 200).is_ok());
        assert!(validate("#server-to-user-42", 200).is_ok());
        assert_eq!(validate("", 200), Err(ChannelNameError::Empty));
        assert_eq!(
            validate("#server-to-user-", 200),
            Err(ChannelNameError::Empty)
        );
        assert_eq!(validate("#other", 200), Err(ChannelNameError::ReservedHash));
        assert_eq!(
            validate("a b", 200),
            Err(ChannelNameError::BadCharacter(' '))
        );
        assert_eq!(validate("ü", 200), Err(ChannelNameError::BadCharacter('ü')));
        assert_eq!(
            validate("a/b", 200),
            Err(ChannelNameError::BadCharacter('/'))
        );
        assert_eq!(
            validate("a:b", 200),
            Err(ChannelNameError::BadCharacter(':'))
        );
        assert_eq!(
            validate(&"x".repeat(201), 200),
            Err(ChannelNameError::TooLong { len: 201, max: 200 })
        );
        assert!(validate(&"x".repeat(200), 200).is_ok());
        assert!(validate("x", 1).is_ok());
        // Every message reads as a sentence a person can act on.
        assert!(ChannelNameError::BadCharacter('/')
            .to_string()
            .contains("allowed"));
    }
}
