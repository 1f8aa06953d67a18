//! Which Kubernetes API errors are worth retrying, and how one reads in a message.

use super::connect::ConnectFailure;
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

/// What the API server answered, as part of a sentence and without a Debug dump:
/// `the API server answered 404 Not Found (the server could not find the requested
/// resource)`. The `Status` reason is named when it says more than the HTTP reason
/// phrase (`422 Unprocessable Entity, reason Invalid (...)`). A request that got no
/// answer says why, in [`ConnectFailure`]'s words.
pub fn answer(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(s) => {
            let phrase = http::StatusCode::from_u16(s.code)
                .ok()
                .and_then(|c| c.canonical_reason())
                .unwrap_or("");
            let mut out = match (s.code, phrase) {
                (0, _) => "the API server answered an error".to_string(),
                (code, "") => format!("the API server answered HTTP {code}"),
                (code, phrase) => format!("the API server answered {code} {phrase}"),
            };
            if !s.reason.is_empty() && s.reason != phrase.replace(' ', "") {
                out.push_str(&format!(", reason {}", s.reason));
            }
            if !s.message.is_empty() {
                out.push_str(&format!(" ({})", s.message.trim_end_matches('.')));
            }
            out
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            format!(
                "no answer from the API server: {}",
                ConnectFailure::classify(err)
            )
        }
        other => {
            // The client's own error (a body it could not decode, a request it could
            // not build): its message and causes once each, never a Debug dump.
            let mut parts: Vec<String> = Vec::new();
            let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(other);
            while let Some(e) = cur {
                let text = e.to_string();
                if !parts.iter().any(|p| p.contains(&text)) {
                    parts.push(text);
                }
                cur = e.source();
            }
            format!("the request failed: {}", parts.join(": "))
        }
    }
}

/// What to do about `err`, by HTTP status (the API conventions' meaning of each,
/// k8s.io/apimachinery pkg/api/errors/errors.go).
pub fn advice(err: &kube::Error) -> &'static str {
    let kube::Error::Api(s) = err else {
        return match err {
            kube::Error::HyperError(_) | kube::Error::Service(_) => {
                "run the command again once the API server answers"
            }
            _ => "run the command again; if it fails the same way, report it with the full log",
        };
    };
    match s.code {
        400 => "the request was malformed: check the object's fields, then run the command again",
        401 => {
            "the API server refused the credentials: refresh them (on EKS `aws eks \
             update-kubeconfig`) and run the command again"
        }
        403 => {
            "the current identity lacks this permission: grant it (`kubectl auth can-i` \
             checks it) or use a context that has it, then run the command again"
        }
        404 => {
            "the object or its API is not there: check that the cluster serves this API \
             (`kubectl api-resources`), then run the command again"
        }
        409 => "someone else changed it at the same time: run the command again",
        410 => "the server's view moved on: run the command again",
        413 => "the object is larger than the API server accepts (3 MiB): make it smaller",
        422 => {
            "the API server refused the object as invalid: fix the field it names, then run \
             the command again"
        }
        429 | 500..=599 => {
            "the API server is overloaded or failing and the retries did not get through: \
             wait until it recovers and run the command again"
        }
        _ => "run the command again once the cause is fixed",
    }
}

/// Where an RBAC permission applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// A cluster-scoped resource (nodes, namespaces, CRDs).
    Cluster,
    /// A namespaced resource, in every namespace at once.
    AllNamespaces,
    /// A namespaced resource in one namespace.
    Namespace(String),
}

/// A permission as RBAC names it: `list` on `networkpolicies.networking.k8s.io` in all
/// namespaces. An error that carries one says, on a 403, exactly what to grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    pub verb: &'static str,
    /// `RESOURCE.GROUP`, or `RESOURCE` for the core group, as `kubectl auth can-i` takes it.
    pub resource: String,
    pub scope: Scope,
}

impl Permission {
    /// `verb` on `resource` of the API group/version `group_version` (`v1`, `apps/v1`).
    pub fn new(verb: &'static str, resource: &str, group_version: &str, scope: Scope) -> Self {
        let resource = match group_version.split_once('/') {
            Some((group, _)) if !group.is_empty() => format!("{resource}.{group}"),
            _ => resource.to_string(),
        };
        Permission {
            verb,
            resource,
            scope,
        }
    }

    /// What to do about `err`: on a 403 the permission to grant and how to check it;
    /// otherwise [`advice`].
    pub fn advice(&self, err: &kube::Error) -> String {
        if !matches!(err, kube::Error::Api(s) if s.code == 403) {
            return advice(err).to_string();
        }
        let Permission {
            verb,
            resource,
            scope,
        } = self;
        let (place, flag) = match scope {
            Scope::Cluster => (String::new(), String::new()),
            Scope::AllNamespaces => (
                " in all namespaces".to_string(),
                " --all-namespaces".to_string(),
            ),
            Scope::Namespace(ns) => (format!(" in {ns}"), format!(" -n {ns}")),
        };
        format!(
            "grant {verb} on {resource}{place} to the identity the kubeconfig names \
             (`kubectl auth can-i {verb} {resource}{flag}` checks it), then run the command again"
        )
    }
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

    #[test]
    fn an_answer_is_status_reason_and_message_without_a_debug_dump() {
        let e = kube::Error::Api(Box::new(
            kube::core::Status::failure(
                "the server could not find the requested resource",
                "NotFound",
            )
            .with_code(404),
        ));
        assert_eq!(
            answer(&e),
            "the API server answered 404 Not Found (the server could not find the requested resource)"
        );
        let e = kube::Error::Api(Box::new(
            kube::core::Status::failure(
                "Deployment.apps \"x\" is invalid: spec.selector: Required value",
                "Invalid",
            )
            .with_code(422),
        ));
        let a = answer(&e);
        assert_eq!(
            a,
            "the API server answered 422 Unprocessable Entity, reason Invalid (Deployment.apps \"x\" is invalid: spec.selector: Required value)"
        );
        assert!(advice(&e).contains("invalid"));
        assert!(!a.contains("Status {") && !a.contains("Some("), "{a}");
    }

    #[test]
    fn a_403_names_the_permission_to_grant() {
        let forbidden = kube::Error::Api(Box::new(
            kube::core::Status::failure("no", "Forbidden").with_code(403),
        ));
        let p = Permission::new(
            "list",
            "networkpolicies",
            "networking.k8s.io/v1",
            Scope::AllNamespaces,
        );
        assert_eq!(
            p.advice(&forbidden),
            "grant list on networkpolicies.networking.k8s.io in all namespaces to the identity \
             the kubeconfig names (`kubectl auth can-i list networkpolicies.networking.k8s.io \
             --all-namespaces` checks it), then run the command again"
        );
        let p = Permission::new(
            "get",
            "leases",
            "coordination.k8s.io/v1",
            Scope::Namespace("kube-system".into()),
        );
        assert!(
            p.advice(&forbidden)
                .contains("grant get on leases.coordination.k8s.io in kube-system")
        );
        let p = Permission::new("list", "nodes", "v1", Scope::Cluster);
        assert!(
            p.advice(&forbidden)
                .starts_with("grant list on nodes to the identity")
        );
        // Any other answer: the advice by status.
        assert_eq!(p.advice(&api(503)), advice(&api(503)));
    }
}
