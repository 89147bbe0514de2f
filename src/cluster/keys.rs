//! Key names. Every key of an app shares one hash tag, `{<app id>}`, so an app's keys sit in
//! one hash slot and a script may touch all of them even on a Redis Cluster or a managed
//! service that runs in cluster mode; `v1` is the schema version, so a rolling upgrade never
//! has two versions reading each other's keys.

/// The keys of one app: `{prefix}:v1:{<app id>}:…`.
#[derive(Clone, Debug)]
pub struct Keys {
    base: String,
}

impl Keys {
    pub fn new(prefix: &str, app_id: &str) -> Keys {
        Keys {
            base: format!("{prefix}:v1:{{{app_id}}}:"),
        }
    }

    /// The common start, `KEYS[1]` of every script (which appends the rest).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The bus: one stream per app, read by every node.
    pub fn bus(&self) -> String {
        format!("{}bus", self.base)
    }

    /// Webhook jobs, taken once by a consumer group.
    pub fn hooks(&self) -> String {
        format!("{}hooks", self.base)
    }

    /// Presence: user id → connections, anywhere.
    pub fn users(&self, channel: &str) -> String {
        format!("{}pu:{channel}", self.base)
    }

    /// Resume: the lineage of token `token` (hex), written by `scripts::LINEAGE_SAVE`.
    pub fn lineage(&self, token: &str) -> String {
        format!("{}lin:{token}", self.base)
    }

    /// The node leases (incarnation → expiry, ms of Redis's clock).
    pub fn nodes(&self) -> String {
        format!("{}nodes", self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::Keys;

    #[test]
    fn every_key_of_an_app_has_the_app_as_its_hash_tag() {
        let k = Keys::new("pb", "42");
        assert_eq!(k.bus(), "pb:v1:{42}:bus");
        assert_eq!(k.hooks(), "pb:v1:{42}:hooks");
        assert_eq!(k.users("presence-a"), "pb:v1:{42}:pu:presence-a");
        assert_eq!(k.nodes(), "pb:v1:{42}:nodes");
        assert_eq!(k.lineage("ab12"), "pb:v1:{42}:lin:ab12");
        assert_eq!(k.base(), "pb:v1:{42}:");
    }
}
