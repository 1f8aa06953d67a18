//! Retries for transient failures: exponential backoff with jitter, bounded by
//! a total deadline. What counts as transient is the caller's to say (the
//! cluster layer classes Kubernetes errors; see `cluster::errors`).

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

/// How hard to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First delay.
    pub min_delay: Duration,
    /// Longest single delay.
    pub max_delay: Duration,
    /// The sum of the delays never exceeds this; then the last error is returned.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            deadline: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_total_delay(Some(self.deadline))
            .without_max_times()
    }
}

/// Run `op` until it succeeds, fails with an error `is_transient` rejects, or
/// the policy's deadline is spent.
pub async fn retry<T, E, Op, Fut>(
    policy: &RetryPolicy,
    is_transient: impl Fn(&E) -> bool,
    op: Op,
) -> Result<T, E>
where
    Op: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    op.retry(policy.backoff())
        .when(|e| is_transient(e))
        .notify(|e, delay| tracing::debug!("transient error, retrying in {delay:?}: {e}"))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A stand-in for a layer's error: which one is transient is the test's to say.
    #[derive(Debug, PartialEq, Eq, thiserror::Error)]
    enum TestError {
        #[error("busy #{0}")]
        Busy(u32),
        #[error("forbidden")]
        Forbidden,
        #[error("still busy")]
        StillBusy,
    }

    fn quick() -> RetryPolicy {
        RetryPolicy {
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
            deadline: Duration::from_millis(200),
        }
    }

    #[tokio::test]
    async fn retries_transient_errors_until_success() {
        let calls = AtomicU32::new(0);
        let out: Result<u32, TestError> = retry(
            &quick(),
            |_| true,
            || async {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                if n < 4 {
                    Err(TestError::Busy(n))
                } else {
                    Ok(n)
                }
            },
        )
        .await;
        assert_eq!(out, Ok(4));
    }

    #[tokio::test]
    async fn permanent_errors_are_returned_at_once() {
        let calls = AtomicU32::new(0);
        let out: Result<(), TestError> = retry(
            &quick(),
            |e: &TestError| *e != TestError::Forbidden,
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(TestError::Forbidden)
            },
        )
        .await;
        assert_eq!(out, Err(TestError::Forbidden));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn gives_up_when_the_deadline_is_spent() {
        let calls = AtomicU32::new(0);
        let out: Result<(), TestError> = retry(
            &quick(),
            |_| true,
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(TestError::StillBusy)
            },
        )
        .await;
        assert!(out.is_err());
        let n = calls.load(Ordering::SeqCst);
        // 200 ms of delays at <= 4 ms each: many tries, but a bounded number.
        assert!(n > 3 && n < 500, "{n} attempts");
    }
}
