//! Which Kubernetes API errors are worth retrying.

use crate::engine::RetryPolicy;

/// Whether a 409 Conflict may be retried: only when the operation re-reads the
/// object before writing again, so the retry does not overwrite someone else's change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflicts {
    Retry,
    Fail,
}

/// Transient: throttling (429), server errors (5xx), timeouts and broken
/// connections, and 409 Conflict when the caller re-reads before writing.
pub fn is_transient(err: &kube::Error, conflicts: Conflicts) -> bool {
    match err {
        kube::Error::Api(status) => match status.code {
            429 | 500..=599 => true,
            409 => conflicts == Conflicts::Retry,
            _ => false,
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// Retry a Kubernetes call through transient errors under `policy`.
pub async fn with_retry<T, Op, Fut>(
    policy: &RetryPolicy,
    conflicts: Conflicts,
    op: Op,
) -> Result<T, kube::Error>
where
    Op: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    crate::engine::retry(policy, |e| is_transient(e, conflicts), op).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure("x", "Reason").with_code(code),
        ))
    }

    #[test]
    fn classes_api_errors() {
        for code in [429, 500, 502, 503, 504] {
            assert!(is_transient(&api(code), Conflicts::Fail), "{code}");
        }
        for code in [400, 401, 403, 404, 410, 422] {
            assert!(!is_transient(&api(code), Conflicts::Retry), "{code}");
        }
        assert!(is_transient(&api(409), Conflicts::Retry));
        assert!(!is_transient(&api(409), Conflicts::Fail));
    }
}
