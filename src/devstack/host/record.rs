//! An append-only, awaitable record of what arrived on one stream (a pipe or
//! a gRPC server stream), shared between the task pumping the stream and the
//! tests reading it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How a recorded stream ended.
#[derive(Debug, Clone)]
pub enum StreamEnd {
    /// Clean end: EOF on a pipe, end-of-stream on a gRPC stream.
    Closed,
    /// The gRPC stream (or the call opening it) failed with this status.
    Failed(tonic::Status),
    /// Reading a pipe failed.
    ReadFailed(String),
}

/// Why a wait on a [`Recording`] returned without an item.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WaitError {
    /// Nothing matching arrived in time.
    #[error("nothing matching arrived within {waited:?} ({seen} items recorded)")]
    Timeout {
        /// How long the wait lasted.
        waited: Duration,
        /// Items recorded when it gave up.
        seen: usize,
    },
    /// The stream ended before anything matching arrived.
    #[error("stream ended ({end:?}) after {seen} items, before anything matching arrived")]
    Ended {
        /// How it ended.
        end: StreamEnd,
        /// Items recorded in total.
        seen: usize,
    },
}

/// A shared, append-only record of one stream's items. Cloning shares it.
///
/// # Guarantees
///
/// Items are kept in arrival order and never dropped; the end, once set,
/// never changes. Waits observe every item pushed after they start.
#[derive(Debug)]
pub struct Recording<T> {
    inner: Arc<Shared<T>>,
}

impl<T> Clone for Recording<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

#[derive(Debug)]
struct Shared<T> {
    state: Mutex<State<T>>,
    /// Bumped after every push or end, so waiters re-check the state.
    version: watch::Sender<u64>,
}

#[derive(Debug)]
struct State<T> {
    items: Vec<T>,
    end: Option<StreamEnd>,
}

impl<T: Clone> Default for Recording<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone> Recording<T> {
    /// An empty, open recording.
    #[must_use]
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Shared {
                state: Mutex::new(State {
                    items: Vec::new(),
                    end: None,
                }),
                version: watch::Sender::new(0),
            }),
        }
    }

    /// Appends one item and wakes waiters.
    pub(crate) fn push(&self, item: T) {
        self.lock().items.push(item);
        self.inner.version.send_modify(|v| *v += 1);
    }

    /// Records the end of the stream (the first end wins) and wakes waiters.
    pub(crate) fn finish(&self, end: StreamEnd) {
        self.lock().end.get_or_insert(end);
        self.inner.version.send_modify(|v| *v += 1);
    }

    /// Every item so far, in arrival order.
    #[must_use]
    pub fn snapshot(&self) -> Vec<T> {
        self.lock().items.clone()
    }

    /// The item at `index`, if it has arrived.
    #[must_use]
    pub fn get(&self, index: usize) -> Option<T> {
        self.lock().items.get(index).cloned()
    }

    /// How many items have arrived.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Whether nothing has arrived yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How the stream ended, or `None` while it is open.
    #[must_use]
    pub fn end(&self) -> Option<StreamEnd> {
        self.lock().end.clone()
    }

    /// Waits for the item at `index` (0-based, counting from the first item
    /// ever recorded).
    ///
    /// # Errors
    ///
    /// [`WaitError::Ended`] if the stream ends with fewer items,
    /// [`WaitError::Timeout`] after `timeout`.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only reads.
    pub async fn wait_for_index(&self, index: usize, timeout: Duration) -> Result<T, WaitError> {
        self.wait_from(index, timeout, |_| true)
            .await
            .map(|(_, item)| item)
    }

    /// Waits for the first item (already recorded or arriving later) for
    /// which `matches` returns true.
    ///
    /// # Errors
    ///
    /// As [`Recording::wait_for_index`].
    pub async fn wait_for(
        &self,
        matches: impl FnMut(&T) -> bool,
        timeout: Duration,
    ) -> Result<T, WaitError> {
        self.wait_from(0, timeout, matches)
            .await
            .map(|(_, item)| item)
    }

    /// Waits for the first matching item at index `start` or later and
    /// returns it with its index.
    ///
    /// # Errors
    ///
    /// As [`Recording::wait_for_index`].
    pub async fn wait_from(
        &self,
        start: usize,
        timeout: Duration,
        mut matches: impl FnMut(&T) -> bool,
    ) -> Result<(usize, T), WaitError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribing before the first look means any push after that look
        // bumps a version this receiver has not seen: no lost wake-up.
        let mut changes = self.inner.version.subscribe();
        let mut cursor = start;
        loop {
            {
                let state = self.lock();
                while let Some(item) = state.items.get(cursor) {
                    if matches(item) {
                        return Ok((cursor, item.clone()));
                    }
                    cursor += 1;
                }
                if let Some(end) = &state.end {
                    return Err(WaitError::Ended {
                        end: end.clone(),
                        seen: state.items.len(),
                    });
                }
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                // A sender error cannot happen: `self` keeps the sender alive.
                Ok(_) => {}
                Err(_) => {
                    return Err(WaitError::Timeout {
                        waited: timeout,
                        seen: self.len(),
                    });
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding the lock cannot leave a Vec half-pushed, so a
        // poisoned state is still consistent.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Records a gRPC server stream's messages until it ends, then its end.
pub(crate) async fn record_stream<T: Clone>(mut stream: tonic::Streaming<T>, record: Recording<T>) {
    loop {
        match stream.message().await {
            Ok(Some(message)) => record.push(message),
            Ok(None) => return record.finish(StreamEnd::Closed),
            Err(status) => return record.finish(StreamEnd::Failed(status)),
        }
    }
}

/// Aborts the task it holds when dropped, so background streams never
/// outlive their owner.
#[derive(Debug)]
pub(crate) struct TaskGuard(JoinHandle<()>);

impl TaskGuard {
    pub(crate) fn spawn(task: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(tokio::spawn(task))
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn wait_sees_an_item_pushed_later() {
        let record = Recording::new();
        let writer = record.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            writer.push("late");
        });
        assert_eq!(record.wait_for_index(0, WAIT).await.unwrap(), "late");
    }

    #[tokio::test(start_paused = true)]
    async fn wait_times_out_when_nothing_matches() {
        let record = Recording::new();
        record.push(1);
        let err = record.wait_for(|n| *n > 1, WAIT).await.unwrap_err();
        assert!(matches!(err, WaitError::Timeout { seen: 1, .. }), "{err:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn items_before_the_end_are_still_found_and_later_waits_end() {
        let record = Recording::new();
        record.push("a");
        record.push("b");
        record.finish(StreamEnd::Closed);
        record.finish(StreamEnd::ReadFailed("ignored: the first end wins".into()));
        assert_eq!(record.wait_from(1, WAIT, |_| true).await.unwrap(), (1, "b"));
        let err = record.wait_for_index(2, WAIT).await.unwrap_err();
        assert!(
            matches!(
                err,
                WaitError::Ended {
                    end: StreamEnd::Closed,
                    seen: 2
                }
            ),
            "{err:?}"
        );
        assert_eq!(record.snapshot(), vec!["a", "b"]);
    }
}
