//! The read side of the state machine's storage, as a trait, so that `apply` and the
//! queries are pure functions testable against a `BTreeMap`.

use std::collections::BTreeMap;

/// A failure of the underlying store; fatal for the state machine.
#[derive(Debug, thiserror::Error)]
#[error("state machine storage: {0}")]
pub struct KvError(pub String);

/// Ordered key-value reads.
pub trait KvRead {
    /// The value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;

    /// Visits the pairs with `start <= key < end` in key order until `visit` returns false.
    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), KvError>;
}

/// One change `apply` asks the store to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Set a key.
    Put(Vec<u8>, Vec<u8>),
    /// Remove a key.
    Delete(Vec<u8>),
}

/// An in-memory store: for tests, and the simulation tier.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemKv {
    /// The pairs.
    pub map: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl MemKv {
    /// Applies mutations in order.
    pub fn write(&mut self, mutations: Vec<Mutation>) {
        for m in mutations {
            match m {
                Mutation::Put(k, v) => {
                    self.map.insert(k, v);
                }
                Mutation::Delete(k) => {
                    self.map.remove(&k);
                }
            }
        }
    }
}

impl KvRead for MemKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.map.get(key).cloned())
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), KvError> {
        if start >= end {
            return Ok(());
        }
        for (k, v) in self.map.range(start.to_vec()..end.to_vec()) {
            if !visit(k, v) {
                break;
            }
        }
        Ok(())
    }
}
