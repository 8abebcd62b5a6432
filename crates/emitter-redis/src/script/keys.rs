//! The names of a cluster's keys and channels. Every key is `emitter:{<cluster>}:<what>`: the braces make `<cluster>`
//! the hash tag, so on Redis Cluster all of one cluster's keys live in one slot and its scripts may touch them all.
//! A cluster name cannot contain braces (see [`crate::is_valid_name`]), so two names never share a key.

/// The keys and channels of one cluster.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// In the order the scripts expect them in KEYS (see [`crate::script::scripts`]).
    all: [String; 11],
    pub(crate) seq_channel: String,
    pub(crate) broadcast_channel: String,
    node_channel_prefix: String,
    window_prefix: String,
}

impl Keys {
    pub(crate) fn new(cluster: &str) -> Keys {
        let key = |what: &str| format!("emitter:{{{cluster}}}:{what}");
        Keys {
            all: [
                key("epoch"),
                key("seq"),
                key("log"),
                key("users"),
                key("order"),
                key("links"),
                key("nodes"),
                key("generation"),
                key("connections"),
                key("unlinked"),
                key("head"),
            ],
            seq_channel: key("seq"),
            broadcast_channel: key("broadcast"),
            node_channel_prefix: key("node:"),
            window_prefix: key("out/"),
        }
    }

    pub(crate) fn all(&self) -> &[String; 11] {
        &self.all
    }

    pub(crate) fn epoch(&self) -> &str {
        &self.all[0]
    }

    pub(crate) fn seq(&self) -> &str {
        &self.all[1]
    }

    /// The log: a stream of the entries by seq (entry id `<seq>-0`).
    pub(crate) fn log(&self) -> &str {
        &self.all[2]
    }

    /// The hash of the nodes' leases.
    pub(crate) fn nodes(&self) -> &str {
        &self.all[6]
    }

    pub(crate) fn generation(&self) -> &str {
        &self.all[7]
    }

    /// The stream that keeps the newest messages `origin` (in `generation`) published, on any channel, by their
    /// `order`: its *window*. `/` separates the parts: it is not a name character, so two (origin, generation) never
    /// share a stream.
    pub(crate) fn window(&self, origin: &str, generation: u64) -> String {
        format!("{}{origin}/{generation}", self.window_prefix)
    }

    /// The hash of the newest log entry (see [`crate::chain`]).
    pub(crate) fn head(&self) -> &str {
        &self.all[10]
    }

    /// The channel of messages for users linked on `node`.
    pub(crate) fn node_channel(&self, node: &str) -> String {
        format!("{}{node}", self.node_channel_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::Keys;

    #[test]
    fn every_key_carries_the_cluster_hash_tag() {
        let keys = Keys::new("eu");
        for key in keys.all() {
            assert!(key.starts_with("emitter:{eu}:"), "{key}");
        }
        assert_eq!(keys.node_channel("n1"), "emitter:{eu}:node:n1");
        assert_eq!(keys.window("n:1", 7), "emitter:{eu}:out/n:1/7");
    }
}
