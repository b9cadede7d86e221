//! Client-side token buckets, one per ECS throttling category, so the driver
//! stays inside the account's published ECS rate limits instead of tripping
//! them. Each bucket gets `api_budget` (a share) of the published burst and
//! sustained rate.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// ECS throttling categories (published per account and Region).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Category {
    /// DescribeClusters, ListClusters: burst 50, 20/s.
    ClusterRead,
    /// DescribeTasks, ListTasks: burst 100, 20/s.
    ResourceRead,
    /// RunTask, StopTask: burst 100, 40/s.
    ResourceModify,
    /// TagResource, UntagResource: burst 20, 10/s.
    TagModify,
}

impl Category {
    /// (burst, sustained per second) as AWS publishes them.
    pub fn published(self) -> (f64, f64) {
        match self {
            Self::ClusterRead => (50.0, 20.0),
            Self::ResourceRead => (100.0, 20.0),
            Self::ResourceModify => (100.0, 40.0),
            Self::TagModify => (20.0, 10.0),
        }
    }
}

/// One token bucket.
#[derive(Debug)]
pub struct Bucket {
    capacity: f64,
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    /// A full bucket of `capacity` tokens refilled at `rate` per second.
    pub fn new(capacity: f64, rate: f64) -> Self {
        let capacity = capacity.max(1.0);
        Self {
            capacity,
            rate: rate.max(0.01),
            state: Mutex::new((capacity, Instant::now())),
        }
    }

    /// Take one token, waiting as long as the refill needs. Returns how long
    /// it waited.
    ///
    /// # Cancel safety
    /// Cancelling while waiting takes no token.
    pub async fn acquire(&self) -> Duration {
        let started = Instant::now();
        loop {
            let wait = {
                let mut st = self.state.lock().await;
                let now = Instant::now();
                let refill = now.duration_since(st.1).as_secs_f64() * self.rate;
                st.0 = (st.0 + refill).min(self.capacity);
                st.1 = now;
                if st.0 >= 1.0 {
                    st.0 -= 1.0;
                    return started.elapsed();
                }
                Duration::from_secs_f64((1.0 - st.0) / self.rate)
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Sustained rate, tokens per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }
}

/// The buckets of one driver.
#[derive(Debug)]
pub struct Budget {
    cluster_read: Bucket,
    resource_read: Bucket,
    resource_modify: Bucket,
    tag_modify: Bucket,
}

impl Budget {
    /// Buckets at `share` (0, 1] of the published limits.
    pub fn new(share: f64) -> Self {
        let make = |c: Category| {
            let (burst, rate) = c.published();
            Bucket::new(burst * share, rate * share)
        };
        Self {
            cluster_read: make(Category::ClusterRead),
            resource_read: make(Category::ResourceRead),
            resource_modify: make(Category::ResourceModify),
            tag_modify: make(Category::TagModify),
        }
    }

    /// The bucket of a category.
    pub fn bucket(&self, c: Category) -> &Bucket {
        match c {
            Category::ClusterRead => &self.cluster_read,
            Category::ResourceRead => &self.resource_read,
            Category::ResourceModify => &self.resource_modify,
            Category::TagModify => &self.tag_modify,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_full_bucket_serves_its_burst_then_paces_at_the_refill_rate() {
        let b = Bucket::new(5.0, 2.0);
        for _ in 0..5 {
            assert_eq!(b.acquire().await, Duration::ZERO);
        }
        let waited = b.acquire().await;
        assert!(
            waited >= Duration::from_millis(490) && waited <= Duration::from_millis(510),
            "{waited:?}"
        );
    }

    #[test]
    fn the_budget_is_a_share_of_the_published_limits() {
        let b = Budget::new(0.5);
        assert!((b.bucket(Category::ResourceRead).rate() - 10.0).abs() < 1e-9);
        assert!((b.bucket(Category::ResourceModify).rate() - 20.0).abs() < 1e-9);
    }
}
