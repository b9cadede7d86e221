//! The driver's state directory. Opened only once the plugin is configured
//! for real (Nomad's validation launches never touch it), locked for the
//! process's life, and released when the process ends, however it ends.

use std::fs::File;
use std::io::{Read as _, Seek as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

/// Name of the lock file inside the state directory; it holds the owner's pid.
pub const LOCK_FILE: &str = "LOCK";

/// Failures opening the state directory.
#[derive(Debug, Error)]
pub enum StoreError {
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
