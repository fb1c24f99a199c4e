//! A bounded cache of parsed User-Agents: two generations per shard. Lookups look in
//! the current generation, then in the previous one (and move a hit forward); when the
//! current one is full it becomes the previous one and the oldest is dropped. What is
//! used stays, what is not ages out, and memory stays under the bound, without the
//! bookkeeping of an exact LRU.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

const SHARDS: usize = 16;

struct Generations<V> {
    current: HashMap<String, Arc<V>>,
    previous: HashMap<String, Arc<V>>,
}

pub struct Cache<V> {
    shards: Vec<Mutex<Generations<V>>>,
    /// Entries per generation per shard.
    per_generation: usize,
    hasher: RandomState,
}

impl<V> Cache<V> {
    /// A cache of at most about `capacity` entries (0: nothing is kept).
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Generations {
                        current: HashMap::new(),
                        previous: HashMap::new(),
                    })
                })
                .collect(),
            per_generation: capacity / SHARDS / 2,
            hasher: RandomState::new(),
        }
    }

    /// The value for `key`, made by `make` when it is not cached.
    pub fn get_or_insert_with(&self, key: &str, make: impl FnOnce() -> V) -> Arc<V> {
        if self.per_generation == 0 {
            return Arc::new(make());
        }
        let shard = &self.shards[self.hasher.hash_one(key) as usize % SHARDS];
        if let Ok(mut generations) = shard.lock() {
            if let Some(found) = generations.current.get(key) {
                return found.clone();
            }
            if let Some(found) = generations.previous.remove(key) {
                if generations.current.len() >= self.per_generation {
                    generations.previous = std::mem::take(&mut generations.current);
                }
                generations.current.insert(key.to_string(), found.clone());
                return found;
            }
        }
        // Parsed outside the lock: another thread may parse the same key meanwhile.
        let value = Arc::new(make());
        if let Ok(mut generations) = shard.lock() {
            if generations.current.len() >= self.per_generation {
                generations.previous = std::mem::take(&mut generations.current);
            }
            generations.current.insert(key.to_string(), value.clone());
        }
        value
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .filter_map(|shard| shard.lock().ok())
            .map(|generations| generations.current.len() + generations.previous.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_stays_under_its_bound_and_keeps_what_is_used() {
        let cache = Cache::new(320);
        let mut made = 0;
        for n in 0..5_000 {
            // One key used all the time, between keys seen once.
            cache.get_or_insert_with("hot", || {
                made += 1;
                0
            });
            cache.get_or_insert_with(&format!("cold-{n}"), || 1);
        }
        assert!(cache.len() <= 320, "{}", cache.len());
        assert_eq!(made, 1, "the hot key was parsed again");
    }

    #[test]
    fn hits_on_old_entries_do_not_grow_the_cache() {
        let cache = Cache::new(320);
        // Keys seen twice in a row, round after round, move between generations.
        for round in 0..50 {
            for n in 0..400 {
                cache.get_or_insert_with(&format!("k{}", (round * 37 + n) % 1000), || 0);
            }
        }
        assert!(cache.len() <= 320, "{}", cache.len());
    }

    #[test]
    fn a_zero_sized_cache_keeps_nothing() {
        let cache = Cache::new(0);
        assert_eq!(*cache.get_or_insert_with("a", || 7), 7);
        assert!(cache.is_empty());
    }
}
