//! An in-memory [`Store`] for unit tests of the store's users. It keeps the
//! encoded bytes, not the records, so the codec, the versioned keys and the
//! corrupt-record handling behave exactly as they do on disk.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::record::{self, TASK_KEY_PREFIX, TaskRecord, task_key};
use super::{Listing, SkippedRecord, Store, StoreError, warn_skipped};

/// A [`Store`] held in process memory.
///
/// # Guarantees
/// The same observable semantics as [`SledStore`](super::SledStore), except
/// that "durable" means "until the value is dropped". Never panics: a poisoned
/// lock is taken over, since every write replaces whole entries and leaves
/// the map consistent.
#[derive(Debug, Default)]
pub struct MemoryStore {
    entries: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn entries(&self) -> MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn task_entries(map: &BTreeMap<String, Vec<u8>>) -> impl Iterator<Item = (&String, &Vec<u8>)> {
        map.range(TASK_KEY_PREFIX.to_owned()..)
            .take_while(|(k, _)| k.starts_with(TASK_KEY_PREFIX))
    }
}

impl Store for MemoryStore {
    fn put(&self, rec: &TaskRecord) -> Result<(), StoreError> {
        let bytes = record::encode(rec)?;
        self.entries().insert(rec.key(), bytes);
        Ok(())
    }

    fn get(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        let key = task_key(task_id);
        let bytes = self.entries().get(&key).cloned();
        bytes.map(|b| record::decode(&key, &b)).transpose()
    }

    fn delete(&self, task_id: &str) -> Result<(), StoreError> {
        self.entries().remove(&task_key(task_id));
        Ok(())
    }

    fn list(&self) -> Result<Listing, StoreError> {
        let mut listing = Listing::default();
        let map = self.entries();
        for (key, bytes) in Self::task_entries(&map) {
            match record::decode(key, bytes) {
                Ok(rec) => listing.records.push(rec),
                Err(error) => {
                    let skipped = SkippedRecord {
                        key: key.clone(),
                        error,
                    };
                    warn_skipped(&skipped);
                    listing.skipped.push(skipped);
                }
            }
        }
        Ok(listing)
    }

    fn len(&self) -> Result<usize, StoreError> {
        Ok(Self::task_entries(&self.entries()).count())
    }

    /// The bytes of all keys and values held (not on any disk, but the same
    /// measure of how much the records weigh).
    fn size_on_disk(&self) -> u64 {
        let total: usize = self.entries().iter().map(|(k, v)| k.len() + v.len()).sum();
        u64::try_from(total).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::super::conformance::{RawAccess, store_conformance_tests};
    use super::super::record::fixture::intent_to_run;
    use super::*;

    impl RawAccess for MemoryStore {
        fn put_raw(&self, key: &str, bytes: &[u8]) {
            self.entries().insert(key.to_owned(), bytes.to_vec());
        }
    }

    fn fresh() -> ((), MemoryStore) {
        ((), MemoryStore::new())
    }

    store_conformance_tests!(fresh);

    #[test]
    fn size_grows_with_the_records_held() {
        let store = MemoryStore::new();
        assert_eq!(store.size_on_disk(), 0);
        store.put(&intent_to_run("a1/server/01")).unwrap();
        let one = store.size_on_disk();
        assert!(one > 0);
        store.put(&intent_to_run("a1/server/02")).unwrap();
        assert!(store.size_on_disk() > one);
    }

    #[test]
    fn a_poisoned_lock_does_not_make_the_store_panic() {
        let store = std::sync::Arc::new(MemoryStore::new());
        store.put(&intent_to_run("a1/server/01")).unwrap();
        let s = store.clone();
        let _ = std::thread::spawn(move || {
            let _guard = s.entries.lock().unwrap();
            panic!("poison the lock");
        })
        .join();
        assert!(store.entries.is_poisoned());
        assert!(store.get("a1/server/01").unwrap().is_some());
        store.put(&intent_to_run("a1/server/02")).unwrap();
        assert_eq!(store.len().unwrap(), 2);
    }
}
