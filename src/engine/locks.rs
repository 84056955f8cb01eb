//! Node-local per-key locks in front of optimistic commits.
//!
//! Optimistic commits are correct on their own, but when many connections of one node
//! hammer one key, most attempts would conflict in the backend and retry. Serializing
//! them here first leaves only cross-node contention to the version check (measured
//! before this project started: about 4.6× the throughput on one hot key).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use parking_lot::{Mutex, MutexGuard};

/// A fixed set of stripes: a key maps to one; unrelated keys rarely share one.
pub struct KeyLocks {
    stripes: Vec<Mutex<()>>,
}

impl KeyLocks {
    pub fn new(stripes: usize) -> Self {
        Self {
            stripes: (0..stripes.max(1)).map(|_| Mutex::new(())).collect(),
        }
    }

    /// Lock the stripes of `keys` in ascending order (so two runs never deadlock).
    /// Called on blocking threads only: it may wait.
    pub fn lock(&self, keys: &[String]) -> Vec<MutexGuard<'_, ()>> {
        let mut indexes: Vec<usize> = keys
            .iter()
            .map(|k| {
                let mut h = DefaultHasher::new();
                k.hash(&mut h);
                (h.finish() % self.stripes.len() as u64) as usize
            })
            .collect();
        indexes.sort_unstable();
        indexes.dedup();
        indexes
            .into_iter()
            .map(|i| self.stripes[i].lock())
            .collect()
    }
}
