//! The production [`Store`]: a sled 0.34 database in `<state_dir>/db`.
//!
//! sled fsyncs on its own only every 500 ms, so every `put` and `delete`
//! makes its write durable before it returns; that is what makes "intent
//! written before the ECS call" true.
//!
//! # Why `flush()` is not enough on Linux
//!
//! sled 0.34.7's `Db::flush` writes its log buffers with `pwrite` and then
//! calls `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` on Linux, not
//! `fsync` (`pagecache/iobuf.rs`). That survives a killed process (the data
//! is in the kernel's page cache), but the man page is explicit that it
//! neither flushes the disk's write cache nor writes the file's metadata, so
//! a power loss or kernel crash could still drop a write that `flush`
//! reported done. Only sled's background thread calls `fsync`, every 500 ms.
//! This store therefore keeps its own descriptor of sled's log file
//! (`<db>/db`) and calls `fdatasync` on it after every `flush`: `fsync`
//! applies to the file, whichever descriptor it is called through.
//! Records are far below sled's blob threshold (about 128 KiB), so they
//! always live in that log file and never in `blobs/`.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::record::{self, TASK_KEY_PREFIX, TaskRecord, task_key};
use super::{Listing, SkippedRecord, Store, StoreError, warn_skipped};

/// Name of the database directory inside the state directory.
pub const DB_DIR: &str = "db";

/// sled's log file inside the database directory (`Config::db_path` in
/// sled 0.34).
const LOG_FILE: &str = "db";

/// Upper bound of sled's page cache. sled's own default is 1 GiB; a record is
/// well under 1 KiB, so this holds tens of thousands of tasks.
const CACHE_CAPACITY_BYTES: u64 = 32 * 1024 * 1024;

/// A [`Store`] backed by sled.
#[derive(Debug)]
pub struct SledStore {
    db: ::sled::Db,
    /// A descriptor of sled's log file, only for `fdatasync`.
    log: File,
    path: PathBuf,
}

impl SledStore {
    /// Open (creating if needed) the database in `<dir>/db`. `dir` must be
    /// the directory held by a [`StateDir`](super::StateDir): sled's own
    /// lock only guards against a second opener, the state-dir lock also
    /// names it.
    ///
    /// # Errors
    /// [`StoreError::DbOpenFailed`] when sled cannot open or recover the
    /// database (including when another process has it open), or when its
    /// log file is not where this sled version keeps it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(DB_DIR);
        let open_failed = |source| StoreError::DbOpenFailed {
            path: path.clone(),
            source,
        };
        let db = ::sled::Config::new()
            .path(&path)
            .cache_capacity(CACHE_CAPACITY_BYTES)
            .open()
            .map_err(open_failed)?;
        let log = File::open(path.join(LOG_FILE)).map_err(|e| open_failed(::sled::Error::Io(e)))?;
        Ok(Self { db, log, path })
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Make every write so far durable: sled's flush puts its buffers in
    /// the file, `fdatasync` puts the file on the disk (see the module docs).
    fn flush(&self, key: &str) -> Result<(), StoreError> {
        let failed = |source| StoreError::FlushFailed {
            key: key.to_owned(),
            source,
        };
        self.db.flush().map_err(failed)?;
        self.log
            .sync_data()
            .map_err(|e| failed(::sled::Error::Io(e)))?;
        crate::telemetry::store_size(|| self.db.size_on_disk().ok());
        Ok(())
    }

    fn scan_failed(source: ::sled::Error) -> StoreError {
        StoreError::ScanFailed {
            prefix: TASK_KEY_PREFIX,
            source,
        }
    }
}

impl Store for SledStore {
    fn put(&self, rec: &TaskRecord) -> Result<(), StoreError> {
        let _write = crate::telemetry::store_write(crate::telemetry::StoreOp::Put);
        let bytes = record::encode(rec)?;
        let key = rec.key();
        self.db
            .insert(key.as_bytes(), bytes)
            .map_err(|source| StoreError::PutFailed {
                key: key.clone(),
                source,
            })?;
        self.flush(&key)
    }

    fn get(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        let key = task_key(task_id);
        let bytes = self
            .db
            .get(key.as_bytes())
            .map_err(|source| StoreError::GetFailed {
                key: key.clone(),
                source,
            })?;
        bytes.map(|b| record::decode(&key, &b)).transpose()
    }

    fn delete(&self, task_id: &str) -> Result<(), StoreError> {
        let _write = crate::telemetry::store_write(crate::telemetry::StoreOp::Delete);
        let key = task_key(task_id);
        self.db
            .remove(key.as_bytes())
            .map_err(|source| StoreError::DeleteFailed {
                key: key.clone(),
                source,
            })?;
        // Flush even when nothing was removed: an earlier delete whose flush
        // failed may have left the removal only in memory.
        self.flush(&key)
    }

    fn list(&self) -> Result<Listing, StoreError> {
        let mut listing = Listing::default();
        for item in self.db.scan_prefix(TASK_KEY_PREFIX) {
            let (raw_key, bytes) = item.map_err(Self::scan_failed)?;
            let key = String::from_utf8_lossy(&raw_key);
            match record::decode(&key, &bytes) {
                Ok(rec) => listing.records.push(rec),
                Err(error) => {
                    let skipped = SkippedRecord {
                        key: key.into_owned(),
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
        let mut n = 0;
        for key in self.db.scan_prefix(TASK_KEY_PREFIX).keys() {
            key.map_err(Self::scan_failed)?;
            n += 1;
        }
        Ok(n)
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or_else(|error| {
            tracing::warn!(store.path = %self.path.display(), %error, "cannot size the task store");
            0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::conformance::{RawAccess, store_conformance_tests};
    use super::super::record::fixture::{exited, intent_to_run};
    use super::*;

    impl RawAccess for SledStore {
        fn put_raw(&self, key: &str, bytes: &[u8]) {
            self.db.insert(key.as_bytes(), bytes).unwrap();
            self.db.flush().unwrap();
        }
    }

    fn fresh() -> (tempfile::TempDir, SledStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        (dir, store)
    }

    store_conformance_tests!(fresh);

    #[test]
    fn the_database_lives_in_db_under_the_state_directory() {
        let (dir, store) = fresh();
        assert_eq!(store.path(), dir.path().join("db"));
        assert!(dir.path().join("db").is_dir());
    }

    #[test]
    fn records_survive_closing_and_reopening_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.put(&exited("a1/server/01")).unwrap();
        store.put(&intent_to_run("a1/server/02")).unwrap();
        store.put(&intent_to_run("a1/server/03")).unwrap();
        store.delete("a1/server/03").unwrap();
        drop(store);

        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            store.get("a1/server/01").unwrap(),
            Some(exited("a1/server/01"))
        );
        assert_eq!(
            store.get("a1/server/02").unwrap(),
            Some(intent_to_run("a1/server/02"))
        );
        assert_eq!(store.get("a1/server/03").unwrap(), None);
        assert_eq!(store.len().unwrap(), 2);
    }

    /// Set in the child process of the kill -9 test: the state directory.
    const CRASH_CHILD_ENV: &str = "NOMAD_ECS_TEST_STORE_CRASH_DIR";

    #[test]
    fn writes_survive_a_kill_9_right_after_they_return() {
        if let Some(dir) = std::env::var_os(CRASH_CHILD_ENV) {
            // Child: write, then die before sled's own 500 ms flusher or any
            // Drop could save an unflushed write.
            let store = SledStore::open(Path::new(&dir)).unwrap();
            store.put(&exited("a1/server/01")).unwrap();
            store.put(&intent_to_run("a1/server/02")).unwrap();
            store.delete("a1/server/01").unwrap();
            // SAFETY: signalling our own pid; nothing runs afterwards.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            unreachable!("SIGKILL is not survivable");
        }
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::sled::tests::writes_survive_a_kill_9_right_after_they_return",
                "--test-threads=1",
            ])
            .env(CRASH_CHILD_ENV, dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "child: {status:?}");

        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            store.get("a1/server/02").unwrap(),
            Some(intent_to_run("a1/server/02"))
        );
        assert_eq!(store.get("a1/server/01").unwrap(), None);
    }

    #[test]
    fn a_corrupt_record_on_disk_does_not_stop_a_reopened_store_listing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.put(&intent_to_run("a1/server/01")).unwrap();
        store.put_raw("v1/task/b1/server/01", b"garbage");
        drop(store);

        let listing = SledStore::open(dir.path()).unwrap().list().unwrap();
        assert_eq!(listing.records, [intent_to_run("a1/server/01")]);
        assert_eq!(listing.skipped.len(), 1);
        assert_eq!(listing.skipped[0].key, "v1/task/b1/server/01");
    }

    #[test]
    fn a_second_open_of_an_open_database_fails_naming_the_path() {
        let (dir, _store) = fresh();
        let err = SledStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::DbOpenFailed { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains(&dir.path().join("db").display().to_string())
        );
    }

    #[test]
    fn size_on_disk_is_reported() {
        let (_dir, store) = fresh();
        store.put(&exited("a1/server/01")).unwrap();
        assert!(store.size_on_disk() > 0);
    }
}
