//! Which of the verbs the migration needs the current identity lacks, asked with
//! SelfSubjectAccessReview (authorization.k8s.io/v1), one review per verb, a few
//! at a time. A server that does not serve the review API (404) cannot be
//! checked: that is reported as "could not verify", never as "allowed".

use futures::{StreamExt, TryStreamExt, stream};
use serde::Serialize;
use serde_json::{Value, json};

use super::errors::{Conflicts, with_retry};
use crate::engine::RetryPolicy;

/// One permission: `verb` on `group/resource`, in `namespace` (None = cluster-wide).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Permission {
    pub verb: &'static str,
    pub group: &'static str,
    pub resource: &'static str,
    pub namespace: Option<&'static str>,
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let res = if self.group.is_empty() {
            self.resource.to_string()
        } else {
            format!("{}.{}", self.resource, self.group)
        };
        match self.namespace {
            Some(ns) => write!(f, "{} {res} in {ns}", self.verb),
            None => write!(f, "{} {res} (cluster-wide)", self.verb),
        }
    }
}

/// Result of the access check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AccessReport {
    /// Every permission was reviewed; `missing` lists the denied ones.
    Checked { missing: Vec<Permission> },
    /// The server does not answer SelfSubjectAccessReview (`reason` says why).
    Unverifiable { reason: String },
}

/// Review every permission, `concurrency` at a time.
pub async fn review(
    client: &kube::Client,
    needed: &[Permission],
    concurrency: usize,
    retry: &RetryPolicy,
) -> Result<AccessReport, kube::Error> {
    let answers: Vec<(Permission, Option<bool>)> = stream::iter(needed.iter().cloned())
        .map(|p| async move {
            let allowed = review_one(client, &p, retry).await?;
            Ok::<_, kube::Error>((p, allowed))
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    if answers.iter().any(|(_, a)| a.is_none()) {
        return Ok(AccessReport::Unverifiable {
            reason: "the API server does not serve selfsubjectaccessreviews \
                     (authorization.k8s.io/v1): 404"
                .into(),
        });
    }
    let mut missing: Vec<Permission> = answers
        .into_iter()
        .filter(|(_, a)| *a == Some(false))
        .map(|(p, _)| p)
        .collect();
    missing.sort();
    Ok(AccessReport::Checked { missing })
}

/// `Some(allowed)`, or `None` when the review API is not served.
async fn review_one(
    client: &kube::Client,
    p: &Permission,
    retry: &RetryPolicy,
) -> Result<Option<bool>, kube::Error> {
    let mut attrs = json!({"verb": p.verb, "group": p.group, "resource": p.resource});
    if let Some(ns) = p.namespace {
        attrs["namespace"] = json!(ns);
    }
    let body = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": attrs},
    });
    let bytes = serde_json::to_vec(&body).map_err(kube::Error::SerdeError)?;
    let res = with_retry(retry, Conflicts::Fail, || {
        let bytes = bytes.clone();
        async move {
            let req = http::Request::post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(bytes)
                .map_err(kube::Error::HttpError)?;
            client.request::<Value>(req).await
        }
    })
    .await;
    match res {
        Ok(v) => Ok(Some(
            v.pointer("/status/allowed")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        )),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 405 => Ok(None),
        Err(e) => Err(e),
    }
}
