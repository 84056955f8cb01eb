//! One script run's view of shared state: reads go to the store once per key and are
//! remembered with their version; writes are buffered on top of them. Nothing reaches the
//! store until [`Txn::into_commit`] hands the read versions and final values to
//! `StateStore::commit`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::backend::{
    BackendError, Commit, StateStore, StoredValue, Versioned, Write, MAX_NAME_LEN,
};

use crate::script::StateOp;

#[derive(Clone)]
struct Slot {
    read_version: Option<u64>,
    value: Option<StoredValue>,
    dirty: bool,
    ttl: Option<Duration>,
}

/// The state of a transaction at one point, to return to (see [`Txn::savepoint`]).
pub struct Savepoint {
    slots: HashMap<String, Slot>,
    write_order: Vec<String>,
}

pub struct Txn {
    store: Arc<dyn StateStore>,
    /// Scripts run on blocking threads; this runtime handle lets them await the store.
    runtime: tokio::runtime::Handle,
    slots: HashMap<String, Slot>,
    /// Keys written in first-write order, so commits apply deterministically.
    write_order: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("{0}")]
    Usage(String),
}

impl Txn {
    pub fn new(store: Arc<dyn StateStore>, runtime: tokio::runtime::Handle) -> Self {
        Self {
            store,
            runtime,
            slots: HashMap::new(),
            write_order: Vec::new(),
        }
    }

    /// Read several keys in one round trip before the script starts (declared `keys`).
    pub fn prefetch(&mut self, keys: Vec<String>) -> Result<(), TxnError> {
        let keys: Vec<String> = keys
            .into_iter()
            .filter(|k| !self.slots.contains_key(k))
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let values = self.runtime.block_on(self.store.read(keys.clone()))?;
        for (key, versioned) in keys.into_iter().zip(values) {
            self.remember(key, versioned);
        }
        Ok(())
    }

    fn remember(&mut self, key: String, versioned: Versioned) {
        self.slots.insert(
            key,
            Slot {
                read_version: Some(versioned.version),
                value: versioned.value,
                dirty: false,
                ttl: None,
            },
        );
    }

    fn slot(&mut self, key: &str) -> Result<&mut Slot, TxnError> {
        if key.is_empty() || key.len() > MAX_NAME_LEN {
            return Err(TxnError::Usage(format!(
                "state keys must be 1 to {MAX_NAME_LEN} bytes long"
            )));
        }
        if !self.slots.contains_key(key) {
            let mut values = self
                .runtime
                .block_on(self.store.read(vec![key.to_string()]))?;
            let versioned = values.pop().unwrap_or_default();
            self.remember(key.to_string(), versioned);
        }
        self.slots
            .get_mut(key)
            .ok_or_else(|| TxnError::Usage("state slot vanished".into()))
    }

    fn current(&mut self, key: &str) -> Result<Option<&StoredValue>, TxnError> {
        Ok(self.slot(key)?.value.as_ref())
    }

    fn write(
        &mut self,
        key: &str,
        value: Option<StoredValue>,
        ttl: Option<Duration>,
    ) -> Result<(), TxnError> {
        let slot = self.slot(key)?;
        slot.value = value;
        slot.ttl = ttl;
        if !slot.dirty {
            slot.dirty = true;
            self.write_order.push(key.to_string());
        }
        Ok(())
    }

    fn wrong_type(key: &str, expected: &'static str) -> TxnError {
        TxnError::Backend(BackendError::WrongType {
            key: key.to_string(),
            expected,
        })
    }

    fn hash(&mut self, key: &str) -> Result<BTreeMap<String, Value>, TxnError> {
        match self.current(key)? {
            None => Ok(BTreeMap::new()),
            Some(StoredValue::Hash(h)) => Ok(h.clone()),
            Some(_) => Err(Self::wrong_type(key, "a hash")),
        }
    }

    fn set(&mut self, key: &str) -> Result<BTreeSet<String>, TxnError> {
        match self.current(key)? {
            None => Ok(BTreeSet::new()),
            Some(StoredValue::Set(s)) => Ok(s.clone()),
            Some(_) => Err(Self::wrong_type(key, "a set")),
        }
    }

    fn list(&mut self, key: &str) -> Result<VecDeque<Value>, TxnError> {
        match self.current(key)? {
            None => Ok(VecDeque::new()),
            Some(StoredValue::List(l)) => Ok(l.clone()),
            Some(_) => Err(Self::wrong_type(key, "a list")),
        }
    }

    /// Empty collections do not exist in Redis; mirror that so both backends agree.
    fn write_collection(&mut self, key: &str, value: StoredValue) -> Result<(), TxnError> {
        let empty = match &value {
            StoredValue::Hash(h) => h.is_empty(),
            StoredValue::Set(s) => s.is_empty(),
            StoredValue::List(l) => l.is_empty(),
            StoredValue::Json(_) => false,
        };
        self.write(key, (!empty).then_some(value), None)
    }

    pub fn apply(&mut self, op: StateOp) -> Result<Value, TxnError> {
        match op {
            // `get` reads any shape as JSON (a hash as an object, a list as an array).
            StateOp::Get(k) => Ok(self.current(&k)?.map_or(Value::Null, StoredValue::to_json)),
            StateOp::Set(k, v, ttl) => {
                self.write(&k, Some(StoredValue::Json(v)), ttl)?;
                Ok(Value::Null)
            }
            StateOp::Del(k) => {
                let existed = self.current(&k)?.is_some();
                if existed {
                    self.write(&k, None, None)?;
                }
                Ok(Value::Bool(existed))
            }
            StateOp::Incr(k, by) => {
                let current = match self.current(&k)? {
                    None => Value::from(0),
                    Some(StoredValue::Json(v @ Value::Number(_))) => v.clone(),
                    Some(_) => return Err(Self::wrong_type(&k, "a number")),
                };
                let next = match (current.as_i64(), by.as_i64()) {
                    (Some(a), Some(b)) => Value::from(
                        a.checked_add(b)
                            .ok_or_else(|| TxnError::Usage(format!("incr of `{k}` overflows")))?,
                    ),
                    _ => serde_json::Number::from_f64(
                        current.as_f64().unwrap_or(0.0) + by.as_f64().unwrap_or(0.0),
                    )
                    .map(Value::Number)
                    .ok_or_else(|| TxnError::Usage(format!("incr of `{k}` is not finite")))?,
                };
                // Keep an existing TTL-less value TTL-less; incr never sets one.
                self.write(&k, Some(StoredValue::Json(next.clone())), None)?;
                Ok(next)
            }
            StateOp::HGet(k, f) => Ok(self.hash(&k)?.remove(&f).unwrap_or(Value::Null)),
            StateOp::HSet(k, f, v) => {
                let mut h = self.hash(&k)?;
                let added = h.insert(f, v).is_none();
                self.write_collection(&k, StoredValue::Hash(h))?;
                Ok(Value::from(added as i64))
            }
            StateOp::HDel(k, f) => {
                let mut h = self.hash(&k)?;
                let removed = h.remove(&f).is_some();
                if removed {
                    self.write_collection(&k, StoredValue::Hash(h))?;
                }
                Ok(Value::from(removed as i64))
            }
            StateOp::HGetAll(k) => Ok(StoredValue::Hash(self.hash(&k)?).to_json()),
            StateOp::SAdd(k, m) => {
                let mut s = self.set(&k)?;
                let added = s.insert(m.to_string());
                if added {
                    self.write_collection(&k, StoredValue::Set(s))?;
                }
                Ok(Value::from(added as i64))
            }
            StateOp::SRem(k, m) => {
                let mut s = self.set(&k)?;
                let removed = s.remove(&m.to_string());
                if removed {
                    self.write_collection(&k, StoredValue::Set(s))?;
                }
                Ok(Value::from(removed as i64))
            }
            StateOp::SMembers(k) => Ok(StoredValue::Set(self.set(&k)?).to_json()),
            StateOp::SCard(k) => Ok(Value::from(self.set(&k)?.len() as i64)),
            StateOp::LPush(k, v) => {
                let mut l = self.list(&k)?;
                l.push_front(v);
                let len = l.len();
                self.write_collection(&k, StoredValue::List(l))?;
                Ok(Value::from(len as i64))
            }
            StateOp::RPush(k, v) => {
                let mut l = self.list(&k)?;
                l.push_back(v);
                let len = l.len();
                self.write_collection(&k, StoredValue::List(l))?;
                Ok(Value::from(len as i64))
            }
            StateOp::LRange(k, start, stop) => {
                let l = self.list(&k)?;
                let range = redis_range(l.len(), start, stop);
                Ok(Value::Array(
                    range
                        .map(|r| l.range(r).cloned().collect())
                        .unwrap_or_default(),
                ))
            }
            StateOp::LTrim(k, start, stop) => {
                let l = self.list(&k)?;
                let kept: VecDeque<Value> = redis_range(l.len(), start, stop)
                    .map(|r| l.range(r).cloned().collect())
                    .unwrap_or_default();
                if kept.len() != l.len() {
                    self.write_collection(&k, StoredValue::List(kept))?;
                }
                Ok(Value::Null)
            }
        }
    }

    /// Whether the script touched state at all (a script that did not needs no commit).
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Mark the current writes, to take back those of a script that then fails.
    pub fn savepoint(&self) -> Savepoint {
        Savepoint {
            slots: self.slots.clone(),
            write_order: self.write_order.clone(),
        }
    }

    /// Forget everything since `savepoint`: the writes of a script that failed, and its
    /// reads (a failed script has no effects, so like a lone failed run its answer
    /// reflects the state it read, not the state at commit).
    pub fn rollback_to(&mut self, savepoint: Savepoint) {
        self.slots = savepoint.slots;
        self.write_order = savepoint.write_order;
    }

    /// Every key this transaction read or wrote.
    pub fn keys(&self) -> Vec<String> {
        self.slots.keys().cloned().collect()
    }

    pub fn into_commit(mut self) -> Commit {
        let reads = self
            .slots
            .iter()
            .filter_map(|(k, s)| s.read_version.map(|v| (k.clone(), v)))
            .collect();
        let writes = self
            .write_order
            .iter()
            .filter_map(|k| {
                let slot = self.slots.remove(k)?;
                Some(Write {
                    key: k.clone(),
                    value: slot.value,
                    ttl: slot.ttl,
                })
            })
            .collect();
        Commit {
            reads,
            writes,
            publish: Vec::new(),
        }
    }
}

/// Redis `LRANGE`/`LTRIM` index rules: inclusive, negative counts from the end, clamped.
fn redis_range(len: usize, start: i64, stop: i64) -> Option<std::ops::Range<usize>> {
    let len = len as i64;
    let norm = |i: i64| if i < 0 { len + i } else { i };
    let start = norm(start).max(0);
    let stop = norm(stop).min(len - 1);
    if start > stop || start >= len {
        return None;
    }
    Some(start as usize..stop as usize + 1)
}

#[cfg(test)]
mod tests {
    use super::redis_range;

    #[test]
    fn ranges_follow_redis() {
        assert_eq!(redis_range(5, 0, -1), Some(0..5));
        assert_eq!(redis_range(5, -2, -1), Some(3..5));
        assert_eq!(redis_range(5, 3, 100), Some(3..5));
        assert_eq!(redis_range(5, 4, 2), None);
        assert_eq!(redis_range(0, 0, -1), None);
    }
}
