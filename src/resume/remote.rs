//! A clustered node's token lineages in Redis, so a client that reconnects to another node
//! resumes there. The cluster keeps each token's lineage under `{prefix}:v1:{<app>}:lin:{token}`
//! with an owner (the socket id of the connection that holds it) and a time to live of twice
//! the window, like a lineage kept here. This module owns what is written and when; the
//! cluster writes it (in order, through its worker) and the session claims it at connect.
//!
//! - Written when a channel is added or left, when the connection ends, and when its proof
//!   moves, at most every [`SAVE_EVERY`]: a node that dies loses at most that much proof, and
//!   the client then gets those events once more (never fewer).
//! - Claimed at connect by the node the client reaches, in one round trip bounded by
//!   [`CLAIM_WAIT`]: the claim makes that connection the owner, so a late write of the old
//!   connection (its node saw it end only now) cannot overwrite what the new one inherited.
//! - Replayed from the claiming node's own rings, all or nothing: a node that started after
//!   the client's position has no ring that far back and answers `resume_failed`.

use std::time::Duration;

use super::lineage::Lineage;

/// How long a connect waits for Redis's copy of its token's lineage before it goes on with
/// what this node knows (a reconnect is not held up by a slow Redis for longer).
pub const CLAIM_WAIT: Duration = Duration::from_millis(500);

/// The least time between two writes of one connection's lineage for its proof alone: a
/// connection receiving events all the time proves four times a second (`PROOF_EVERY`), and
/// ten thousand of them must not become forty thousand Redis writes a second.
pub const SAVE_EVERY: Duration = Duration::from_secs(1);

/// The text stored in Redis.
pub fn encode(l: &Lineage) -> Option<String> {
    serde_json::to_string(l).ok()
}

/// A lineage read back from Redis; `None` when it is not one (another version wrote it).
pub fn decode(text: &str) -> Option<Lineage> {
    serde_json::from_str(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resume::{Mark, Token};

    #[test]
    fn a_lineage_goes_to_redis_and_back_whole() {
        let l = Lineage {
            token: Some(Token([3; 16])),
            users: vec!["u".into()],
            socket_ids: vec!["1.1".into(), "2.2".into()],
            proven: 77,
            channels: vec![Mark {
                channel: "orders".into(),
                from: 70,
                inherited: true,
                since: 0,
            }],
            ..Lineage::default()
        };
        let back = decode(&encode(&l).unwrap()).unwrap();
        assert_eq!(back.token, l.token);
        assert_eq!(back.socket_ids, l.socket_ids);
        assert_eq!(back.channels, l.channels);
        assert_eq!(back.proven, 77);
        assert!(decode("{\"token\":\"zz\"}").is_none());
    }
}
