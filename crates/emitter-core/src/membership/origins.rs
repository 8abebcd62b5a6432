//! What a node of a cluster knows of the other nodes' generations: which ones the cluster fenced, and the newest one
//! seen of each node. A message from a generation that is over comes from a node that spoke past its lease (a pause,
//! a stall), maybe for a user linked elsewhere by now: it is not delivered.

use std::collections::HashMap;

/// The generations of the other nodes, as far as this node has seen (in the log and in their messages).
#[derive(Debug, Default)]
pub(crate) struct Origins {
    nodes: HashMap<String, Origin>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Origin {
    /// The newest generation seen, in the log or in a message: older ones are over.
    newest: u64,
    /// Every generation up to this one is fenced (the cluster unlinked its users: lease expired, registered anew,
    /// released).
    fenced_through: u64,
}

impl Origins {
    /// A generation of `node` linked a user: any older generation of that node is over.
    pub(crate) fn seen(&mut self, node: &str, generation: u64) {
        let origin = self.nodes.entry(node.to_owned()).or_default();
        origin.newest = origin.newest.max(generation);
    }

    /// The cluster fenced `generation` of `node` (and so every one before it).
    pub(crate) fn fenced(&mut self, node: &str, generation: u64) {
        let origin = self.nodes.entry(node.to_owned()).or_default();
        origin.fenced_through = origin.fenced_through.max(generation);
        origin.newest = origin.newest.max(generation);
    }

    /// Whether a message of `generation` of `node` may be delivered: not when that generation is fenced or older than
    /// one seen. A message admitted counts as seeing its generation.
    pub(crate) fn admits(&mut self, node: &str, generation: u64) -> bool {
        match self.nodes.get_mut(node) {
            Some(origin) if generation <= origin.fenced_through || generation < origin.newest => false,
            Some(origin) => {
                origin.newest = generation;
                true
            }
            None => {
                self.seen(node, generation);
                true
            }
        }
    }

    /// Forgets everything: the node starts over (in a new epoch, generations start again).
    pub(crate) fn clear(&mut self) {
        self.nodes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::Origins;

    #[test]
    fn an_origin_s_older_or_fenced_generations_are_not_admitted() {
        let mut origins = Origins::default();
        assert!(origins.admits("a", 3));
        assert!(!origins.admits("a", 2), "older than one seen");
        assert!(origins.admits("a", 3));
        origins.fenced("a", 3);
        assert!(!origins.admits("a", 3), "fenced");
        assert!(origins.admits("a", 4));
        origins.seen("b", 7);
        assert!(!origins.admits("b", 6));
        assert!(origins.admits("b", 7));
        origins.clear();
        assert!(origins.admits("a", 1), "a new start forgets");
    }
}
