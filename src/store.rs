//! The driver's state directory and the task store inside it. The directory
//! is opened only once the plugin is configured for real (Nomad's validation
//! launches never touch it), locked for the process's life, and released when
//! the process ends, however it ends. The [`Store`] holds one [`TaskRecord`]
//! per Nomad task; every intent is durable before the ECS call it leads to.

use std::fs::File;
use std::io::{Read as _, Seek as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

pub mod memory;
pub mod record;
pub mod sled;

pub use self::memory::MemoryStore;
pub use self::record::{Desired, ExitRecord, Observation, RunParams, Slot, StartError, TaskRecord};
pub use self::sled::SledStore;

/// Name of the lock file inside the state directory; it holds the owner's pid.
pub const LOCK_FILE: &str = "LOCK";

/// Failures of the state directory and of the task store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A lock guarding in-memory state was poisoned by a panic.
    #[error("internal state lock poisoned")]
    Poisoned,
    /// The directory could not be created or the lock file opened.
    #[error("cannot open state directory {path}: {source}")]
    OpenFailed {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Another live process holds the lock.
    #[error(
        "state directory {path} is in use by another live nomad-driver-ecs process{}; \
         each plugin process needs its own state_dir (two Nomad clients on one machine need two)",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked {
        /// The directory.
        path: PathBuf,
        /// The pid recorded by the holder, when readable.
        pid: Option<u32>,
    },
    /// The sled database could not be opened.
    #[error("cannot open the task store at {path}: {source}")]
    DbOpenFailed {
        /// The database directory.
        path: PathBuf,
        /// The sled error.
        #[source]
        source: ::sled::Error,
    },
    /// Writing a record failed.
    #[error("cannot write task record {key}: {source}")]
    PutFailed {
        /// The record's key.
        key: String,
        /// The sled error.
        #[source]
        source: ::sled::Error,
    },
    /// Reading a record failed.
    #[error("cannot read task record {key}: {source}")]
    GetFailed {
        /// The record's key.
        key: String,
        /// The sled error.
        #[source]
        source: ::sled::Error,
    },
    /// Removing a record failed.
    #[error("cannot delete task record {key}: {source}")]
    DeleteFailed {
        /// The record's key.
        key: String,
        /// The sled error.
        #[source]
        source: ::sled::Error,
    },
    /// Making a write durable failed; the write may or may not survive a
    /// crash, so the caller must not act on it.
    #[error("cannot flush task record {key} to disk: {source}")]
    FlushFailed {
        /// The key whose write was being flushed.
        key: String,
        /// The sled error.
        #[source]
        source: ::sled::Error,
    },
    /// Scanning the records failed (an I/O error, not a bad record).
    #[error("cannot scan task records under {prefix}: {source}")]
    ScanFailed {
        /// The key prefix being scanned.
        prefix: &'static str,
        /// The sled error.
        #[source]
        source: ::sled::Error,
    },
    /// A record could not be serialized.
    #[error("cannot encode task record {key}: {source}")]
    EncodeFailed {
        /// The record's key.
        key: String,
        /// The codec error.
        #[source]
        source: serde_json::Error,
    },
    /// A record is not something this build can store.
    #[error("task record {key} is invalid: {reason}")]
    InvalidRecord {
        /// The record's key.
        key: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Stored bytes are not a record envelope this build understands.
    #[error("task record {key} is corrupt: {source}")]
    DecodeFailed {
        /// The record's key.
        key: String,
        /// The codec error.
        #[source]
        source: serde_json::Error,
    },
    /// A record was written by a build with a newer (or unknown) schema.
    #[error(
        "task record {key} has record version {version}, this build reads only version {}; \
         was the state directory used by a newer nomad-driver-ecs?",
        record::RECORD_VERSION
    )]
    UnsupportedVersion {
        /// The record's key.
        key: String,
        /// The version found in the envelope.
        version: u64,
    },
    /// A record decoded, but names a different task than its key.
    #[error("task record {key} holds the record of task {task_id}")]
    KeyMismatch {
        /// The key it was stored under.
        key: String,
        /// The task ID inside the record.
        task_id: String,
    },
}

/// An open, exclusively locked state directory.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    _lock: File,
}

impl StateDir {
    /// Create (mode 0700) and lock `path`. A holder that is on its way out
    /// (Nomad kills the previous launch up to 2 s before the next one) is
    /// waited for up to `wait`.
    ///
    /// # Errors
    /// [`StoreError::Locked`] when another live process keeps the lock past
    /// `wait`; [`StoreError::OpenFailed`] for I/O errors.
    pub async fn open(path: &Path, wait: Duration) -> Result<Self, StoreError> {
        let failed = |source| StoreError::OpenFailed {
            path: path.to_path_buf(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(failed)?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path.join(LOCK_FILE))
            .map_err(failed)?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // SAFETY: flock on a valid, owned descriptor.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(failed(err));
            }
            if tokio::time::Instant::now() >= deadline {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(StoreError::Locked {
                    path: path.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        file.set_len(0).map_err(failed)?;
        file.rewind().map_err(failed)?;
        writeln!(file, "{}", std::process::id()).map_err(failed)?;
        file.sync_all().map_err(failed)?;
        Ok(Self {
            path: path.to_path_buf(),
            _lock: file,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The task records that [`Store::list`] could read, and the ones it could
/// not.
#[derive(Debug, Default)]
pub struct Listing {
    /// Every record that decoded, in key order (byte order of task IDs),
    /// whatever order they were written in.
    pub records: Vec<TaskRecord>,
    /// Records that are stored but could not be decoded.
    pub skipped: Vec<SkippedRecord>,
}

/// A stored record that [`Store::list`] left out because it does not decode.
#[derive(Debug)]
pub struct SkippedRecord {
    /// Its key.
    pub key: String,
    /// Why it was left out ([`StoreError::DecodeFailed`],
    /// [`StoreError::UnsupportedVersion`] or [`StoreError::KeyMismatch`]).
    pub error: StoreError,
}

/// Durable storage of one [`TaskRecord`] per Nomad task, keyed by task ID.
///
/// The methods are synchronous: a write includes an fsync and may block the
/// calling thread for a few milliseconds. Callers on a tokio worker that
/// must not stall wrap calls in `tokio::task::spawn_blocking` (the trait is
/// object safe and `'static`, so an `Arc<dyn Store>` moves into the closure).
/// Never hold a lock across an ECS call while waiting on the store, and never
/// call the ECS API before the `put` that records the intent has returned.
///
/// # Guarantees
/// - `put` and `delete` are durable when they return `Ok`: a crash or kill
///   afterwards cannot lose them. This is the intent-before-act rule.
/// - A write that returned `Err` may or may not survive; do not act on it.
/// - No method panics on stored bytes; a corrupt record is an error for
///   `get` and a [`SkippedRecord`] for `list`, never a failed `list`.
pub trait Store: Send + Sync + 'static {
    /// Write `rec` under its task ID, replacing any previous record.
    ///
    /// # Errors
    /// [`StoreError::InvalidRecord`] (empty task ID),
    /// [`StoreError::EncodeFailed`], [`StoreError::PutFailed`],
    /// [`StoreError::FlushFailed`].
    ///
    /// # Guarantees
    /// Flushed to stable storage on `Ok`.
    fn put(&self, rec: &TaskRecord) -> Result<(), StoreError>;

    /// The record of `task_id`, if there is one.
    ///
    /// # Errors
    /// [`StoreError::GetFailed`] for I/O errors; [`StoreError::DecodeFailed`],
    /// [`StoreError::UnsupportedVersion`] or [`StoreError::KeyMismatch`]
    /// for a record that is stored but unreadable.
    fn get(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError>;

    /// Remove the record of `task_id`. Removing a record that is not there
    /// succeeds.
    ///
    /// # Errors
    /// [`StoreError::DeleteFailed`], [`StoreError::FlushFailed`].
    ///
    /// # Guarantees
    /// Flushed to stable storage on `Ok`.
    fn delete(&self, task_id: &str) -> Result<(), StoreError>;

    /// Every task record, in key order. Undecodable records are returned in
    /// [`Listing::skipped`] (and logged at WARN), not as an error.
    ///
    /// # Errors
    /// [`StoreError::ScanFailed`] only when the store itself cannot be read.
    fn list(&self) -> Result<Listing, StoreError>;

    /// How many task records are stored, undecodable ones included.
    ///
    /// # Errors
    /// [`StoreError::ScanFailed`] when the store cannot be read.
    fn len(&self) -> Result<usize, StoreError>;

    /// Whether no task record is stored.
    ///
    /// # Errors
    /// As [`Store::len`].
    fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }

    /// Bytes the store occupies on disk, for metrics; 0 when it cannot be
    /// determined (the failure is logged, a metric is not worth an error).
    fn size_on_disk(&self) -> u64;
}

/// Records a skipped record in the log; shared by the implementations.
fn warn_skipped(skipped: &SkippedRecord) {
    tracing::warn!(
        store.key = %skipped.key,
        error = %skipped.error,
        "skipping an unreadable task record"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_open_of_a_held_directory_says_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateDir::open(dir.path(), Duration::ZERO).await.unwrap();
        // flock locks belong to the open file description, so a second open in
        // the same process conflicts just as another process would.
        let err = StateDir::open(dir.path(), Duration::from_millis(200))
            .await
            .unwrap_err();
        match &err {
            StoreError::Locked { pid, .. } => assert_eq!(*pid, Some(std::process::id())),
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("in use by another live"));
        drop(first);
        StateDir::open(dir.path(), Duration::ZERO).await.unwrap();
    }

    #[tokio::test]
    async fn the_directory_is_created_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("state");
        let _d = StateDir::open(&path, Duration::ZERO).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}

/// The behaviour every [`Store`] must show, run against each implementation
/// by [`store_conformance_tests!`](conformance::store_conformance_tests).
#[cfg(test)]
pub(crate) mod conformance {
    use super::record::fixture::{exited, intent_to_run};
    use super::record::{self, task_key};
    use super::*;

    /// Test access below the codec, to plant bytes no `put` would write.
    pub(crate) trait RawAccess: Store {
        fn put_raw(&self, key: &str, bytes: &[u8]);
    }

    fn task_ids(listing: &Listing) -> Vec<&str> {
        listing.records.iter().map(|r| r.task_id.as_str()).collect()
    }

    pub(crate) fn a_put_record_reads_back_unchanged(s: &impl RawAccess) {
        let rec = exited("a1/server/01");
        s.put(&rec).unwrap();
        assert_eq!(s.get("a1/server/01").unwrap(), Some(rec));
    }

    pub(crate) fn an_unknown_task_reads_as_none(s: &impl RawAccess) {
        s.put(&intent_to_run("a1/server/01")).unwrap();
        assert_eq!(s.get("a1/server/02").unwrap(), None);
        // A prefix of a stored task ID is not that task.
        assert_eq!(s.get("a1/server/0").unwrap(), None);
    }

    pub(crate) fn records_are_stored_under_versioned_keys(s: &impl RawAccess) {
        // A record planted by hand under the documented key is what get sees.
        let rec = intent_to_run("a1/server/01");
        s.put_raw("v1/task/a1/server/01", &record::encode(&rec).unwrap());
        assert_eq!(s.get("a1/server/01").unwrap(), Some(rec));
        // Keys of other layouts or kinds are neither listed nor counted.
        s.put_raw("v2/task/a1/server/02", b"{}");
        s.put_raw("v1/meta/schema", b"1");
        assert_eq!(s.len().unwrap(), 1);
        assert_eq!(task_ids(&s.list().unwrap()), ["a1/server/01"]);
    }

    pub(crate) fn a_second_put_replaces_the_first(s: &impl RawAccess) {
        let intent = intent_to_run("a1/server/01");
        s.put(&intent).unwrap();
        let running = TaskRecord {
            arn: Some("arn:aws:ecs:us-east-1:1:task/c/x".into()),
            updated_ms: intent.updated_ms + 1,
            ..intent
        };
        s.put(&running).unwrap();
        assert_eq!(s.get("a1/server/01").unwrap(), Some(running));
        assert_eq!(s.len().unwrap(), 1);
    }

    pub(crate) fn delete_removes_the_record_and_repeats_harmlessly(s: &impl RawAccess) {
        s.put(&intent_to_run("a1/server/01")).unwrap();
        s.put(&intent_to_run("a1/server/02")).unwrap();
        s.delete("a1/server/01").unwrap();
        assert_eq!(s.get("a1/server/01").unwrap(), None);
        s.delete("a1/server/01").unwrap();
        s.delete("never/was/here").unwrap();
        assert_eq!(task_ids(&s.list().unwrap()), ["a1/server/02"]);
    }

    pub(crate) fn list_does_not_depend_on_write_order(s: &impl RawAccess) {
        let ids = ["b2/web/01", "a1/web/01", "c3/web/01", "a1/web/00"];
        for id in ids {
            s.put(&intent_to_run(id)).unwrap();
        }
        let first = s.list().unwrap();
        for id in ids {
            s.delete(id).unwrap();
        }
        assert!(s.is_empty().unwrap());
        for id in ids.iter().rev() {
            s.put(&intent_to_run(id)).unwrap();
        }
        let second = s.list().unwrap();
        assert_eq!(first.records, second.records);
        assert_eq!(
            task_ids(&second),
            ["a1/web/00", "a1/web/01", "b2/web/01", "c3/web/01"]
        );
    }

    pub(crate) fn corrupt_records_are_skipped_by_list_and_named(s: &impl RawAccess) {
        s.put(&intent_to_run("a1/server/01")).unwrap();
        s.put(&exited("z9/server/01")).unwrap();
        s.put_raw(&task_key("b1/server/01"), b"\x00\xffnot json");
        s.put_raw(&task_key("c1/server/01"), br#"{"v":99,"record":{}}"#);
        let elsewhere = record::encode(&intent_to_run("x1/server/01")).unwrap();
        s.put_raw(&task_key("d1/server/01"), &elsewhere);

        let listing = s.list().unwrap();
        assert_eq!(task_ids(&listing), ["a1/server/01", "z9/server/01"]);
        let skipped: Vec<_> = listing.skipped.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(
            skipped,
            [
                "v1/task/b1/server/01",
                "v1/task/c1/server/01",
                "v1/task/d1/server/01"
            ]
        );
        assert!(matches!(
            listing.skipped[0].error,
            StoreError::DecodeFailed { .. }
        ));
        assert!(matches!(
            listing.skipped[1].error,
            StoreError::UnsupportedVersion { version: 99, .. }
        ));
        assert!(matches!(
            listing.skipped[2].error,
            StoreError::KeyMismatch { .. }
        ));
        // get reports the damage instead of pretending the task is unknown.
        assert!(matches!(
            s.get("b1/server/01"),
            Err(StoreError::DecodeFailed { .. })
        ));
        assert_eq!(s.len().unwrap(), 5);
        // A corrupt record can still be deleted, clearing the damage.
        s.delete("b1/server/01").unwrap();
        assert_eq!(s.list().unwrap().skipped.len(), 2);
    }

    pub(crate) fn an_invalid_record_is_refused_and_nothing_is_written(s: &impl RawAccess) {
        let err = s.put(&intent_to_run("")).unwrap_err();
        assert!(matches!(err, StoreError::InvalidRecord { .. }), "{err:?}");
        assert!(s.is_empty().unwrap());
    }

    pub(crate) fn len_counts_the_stored_tasks(s: &impl RawAccess) {
        assert!(s.is_empty().unwrap());
        assert_eq!(s.len().unwrap(), 0);
        for i in 0..5 {
            s.put(&intent_to_run(&format!("a{i}/server/01"))).unwrap();
        }
        assert_eq!(s.len().unwrap(), 5);
        assert!(!s.is_empty().unwrap());
    }

    /// Expands to one `#[test]` per conformance check. `$fresh` is a
    /// function returning `(guard, store)`: the guard (a temp dir, say)
    /// lives as long as the test.
    macro_rules! store_conformance_tests {
        ($fresh:path) => {
            $crate::store::conformance::store_conformance_tests!(@each $fresh;
                a_put_record_reads_back_unchanged,
                an_unknown_task_reads_as_none,
                records_are_stored_under_versioned_keys,
                a_second_put_replaces_the_first,
                delete_removes_the_record_and_repeats_harmlessly,
                list_does_not_depend_on_write_order,
                corrupt_records_are_skipped_by_list_and_named,
                an_invalid_record_is_refused_and_nothing_is_written,
                len_counts_the_stored_tasks,
            );
        };
        (@each $fresh:path; $($name:ident),* $(,)?) => {
            $(
                #[test]
                fn $name() {
                    let (_guard, store) = $fresh();
                    $crate::store::conformance::$name(&store);
                }
            )*
        };
    }
    pub(crate) use store_conformance_tests;
}
