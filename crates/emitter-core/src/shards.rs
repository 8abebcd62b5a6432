//! A map split into independently locked shards, so that threads looking up different keys rarely meet on one lock.
//!
//! The message path looks a connection up by id, and `send` a linked user by name, on every call; with one lock
//! around the whole map every core would take turns on it.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};

use crate::sync::RwLock;

/// Shards per map: enough that 16 threads rarely pick the same one.
const SHARDS: usize = 64;

/// Keeps each shard's lock on a cache line of its own, so that two cores writing neighbouring locks do not slow each
/// other down.
#[repr(align(128))]
struct Padded<T>(T);

type Shard<K, V> = Padded<RwLock<HashMap<K, V>>>;

pub(crate) struct Shards<K, V> {
    shards: Box<[Shard<K, V>]>,
    hasher: RandomState,
}

impl<K: Hash + Eq, V> Default for Shards<K, V> {
    fn default() -> Self {
        Shards {
            shards: (0..SHARDS).map(|_| Padded(RwLock::new(HashMap::new()))).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl<K: Hash + Eq, V> Shards<K, V> {
    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &RwLock<HashMap<K, V>> {
        let index = self.hasher.hash_one(key) as usize % SHARDS;
        &self.shards[index].0
    }

    /// Calls `f` with the value for `key`, if any, while its shard is read-locked: a writer of that key waits until
    /// `f` returns.
    pub(crate) fn with<Q, R>(&self, key: &Q, f: impl FnOnce(Option<&V>) -> R) -> R
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        f(self.shard(key).read().get(key))
    }

    pub(crate) fn insert(&self, key: K, value: V) {
        self.shard(&key).write().insert(key, value);
    }

    pub(crate) fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shard(key).write().remove(key)
    }

    /// Every value, shard by shard (a snapshot per shard, not of the whole map).
    pub(crate) fn values(&self) -> Vec<V>
    where
        V: Clone,
    {
        let mut values = Vec::new();
        for shard in self.shards.iter() {
            values.extend(shard.0.read().values().cloned());
        }
        values
    }
}

#[cfg(test)]
mod tests {
    use super::Shards;

    #[test]
    fn insert_look_up_remove() {
        let map: Shards<String, u32> = Shards::default();
        for i in 0..200 {
            map.insert(format!("user{i}"), i);
        }
        assert_eq!(map.with("user7", |v| v.copied()), Some(7));
        assert_eq!(map.remove("user7"), Some(7));
        assert_eq!(map.with("user7", |v| v.copied()), None);
        assert_eq!(map.values().len(), 199);
    }
}
