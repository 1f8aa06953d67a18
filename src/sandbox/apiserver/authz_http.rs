//! The HTTP face of [`super::authz`]: who a request acts as (impersonation
//! headers), the self reviews kubectl and `cluster::access` send, and the 403 an
//! impersonated request gets when RBAC does not allow it.
//!
//! Without impersonation headers a request acts as the sandbox admin (group
//! `system:masters`) and passes untouched, so every existing client keeps working.
//! `kubectl --as=system:serviceaccount:NS:NAME` (header `Impersonate-User`, plus
//! `Impersonate-Group` per `--as-group`) acts as that user for every request.
//!
//! An impersonated write of a Role, ClusterRole or binding that RBAC allows is then
//! held to RBAC's privilege-escalation prevention ([`authz::check_escalation`]), on
//! the object the write would store.

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{Value, json};

use super::authz::{self, Attributes, MASTERS, PolicyRule, UserInfo};
use super::error::ApiError;
use super::http::{MAX_BODY, error_response, json_response};
use super::protobuf;
use super::store::WriteOptions;
use super::store::apply::PatchKind;
use super::types::{Gvr, Subresource};
use crate::sandbox::Sandbox;

pub const ACCESS_REVIEWS: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
pub const RULES_REVIEWS: &str = "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews";

/// The user a request acts as: the impersonated one, or the sandbox admin.
pub fn requester(headers: &HeaderMap) -> Result<UserInfo, ApiError> {
    let text = |v: &HeaderValue, what: &str| {
        v.to_str()
            .map(String::from)
            .map_err(|_| ApiError::bad_request(format!("the {what} header is not valid text")))
    };
    let user = headers
        .get("impersonate-user")
        .map(|v| text(v, "Impersonate-User"))
        .transpose()?;
    let groups = headers
        .get_all("impersonate-group")
        .iter()
        .map(|v| text(v, "Impersonate-Group"))
        .collect::<Result<Vec<_>, _>>()?;
    match user {
        Some(u) if u.is_empty() => Err(ApiError::bad_request(
            "the Impersonate-User header is empty: name a user, e.g. system:serviceaccount:NS:NAME",
        )),
        Some(u) => Ok(UserInfo::impersonated(&u, &groups)),
        None if groups.is_empty() => Ok(UserInfo::admin()),
        // impersonation.go refuses groups without a user.
        None => Err(ApiError::bad_request(format!(
            "requested groups {groups:?} without impersonating a user: add Impersonate-User (kubectl --as)"
        ))),
    }
}

/// What a request asks to do, from its method and path (a subset of k8s.io/apiserver
/// pkg/endpoints/request/requestinfo.go: resource paths under /api and /apis, the
/// namespace, name and subresource, list/watch/deletecollection for collections).
pub fn request_attributes(method: &Method, path: &str, query: Option<&str>) -> Attributes {
    let mut verb = match *method {
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "get",
    };
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let rest = match parts.as_slice() {
        ["api", _v, rest @ ..] if !rest.is_empty() => rest,
        ["apis", _g, _v, rest @ ..] if !rest.is_empty() => rest,
        _ => return Attributes::non_resource(&method.as_str().to_lowercase(), path),
    };
    let group = match parts.as_slice() {
        ["apis", g, ..] => *g,
        _ => "",
    };
    let mut namespace = "";
    let mut rest = rest;
    if rest[0] == "namespaces" && rest.len() > 1 {
        namespace = rest[1];
        // namespaces/NS/status and /finalize are subresources of the namespace itself.
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        }
    }
    let name = rest.get(1).copied().unwrap_or_default();
    let subresource = rest.get(2).copied().unwrap_or_default();
    let watch = query.is_some_and(|q| {
        q.split('&')
            .any(|kv| matches!(kv, "watch=true" | "watch=1"))
    });
    if name.is_empty() {
        verb = match verb {
            "get" if watch => "watch",
            "get" => "list",
            "delete" => "deletecollection",
            v => v,
        };
    }
    Attributes {
        verb: verb.into(),
        namespace: namespace.into(),
        group: group.into(),
        resource: rest[0].into(),
        subresource: subresource.into(),
        name: name.into(),
        path: None,
    }
}

/// Middleware: an impersonated request passes only if RBAC allows it (403 otherwise).
pub async fn enforce(State(sb): State<Sandbox>, req: Request, next: Next) -> Response {
    let user = match requester(req.headers()) {
        Ok(u) => u,
        Err(e) => return error_response(&e),
    };
    if user.groups.iter().any(|g| g == MASTERS) {
        return next.run(req).await;
    }
    let a = request_attributes(req.method(), req.uri().path(), req.uri().query());
    if authz::authorize(sb.store(), &user, &a).allowed {
        return match escalation_gate(&sb, &user, &a, req).await {
            Ok(req) => next.run(req).await,
            Err(e) => error_response(&e),
        };
    }
    let mut e = ApiError::forbidden(format!(
        "{}: {}",
        if a.path.is_some() { "forbidden" } else { "" },
        authz::forbidden_message(&user, &a)
    ));
    if a.path.is_none() {
        // resource "x" is forbidden: User "u" cannot ... (responsewriters.ForbiddenStatusError)
        let res = if a.group.is_empty() {
            a.resource.clone()
        } else {
            format!("{}.{}", a.resource, a.group)
        };
        let named = if a.name.is_empty() {
            String::new()
        } else {
            format!(" \"{}\"", a.name)
        };
        e = ApiError::forbidden(format!(
            "{res}{named} is forbidden: {}",
            authz::forbidden_message(&user, &a)
        ));
    }
    error_response(&e)
}

/// RBAC's privilege-escalation check on an allowed write of a Role, ClusterRole or
/// binding (see [`authz::check_escalation`]): the body is read, the object the write
/// would store is worked out (the body of a create or replace; a patch applied as a
/// dry run), and the request goes on with its body only if the check passes. A body
/// the server cannot read is left to the handler, which refuses it the same way.
async fn escalation_gate(
    sb: &Sandbox,
    user: &UserInfo,
    a: &Attributes,
    req: Request,
) -> Result<Request, ApiError> {
    if !authz::escalation_checked(a) {
        return Ok(req);
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::too_large(MAX_BODY))?;
    if let Some((new, old)) = would_store(sb, &parts, a, &bytes) {
        authz::check_escalation(sb.store(), user, a, &new, old.as_ref())?;
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// The object a write would store and the one it replaces (None for a create), or
/// None when the request is malformed (the handler then answers it).
fn would_store(
    sb: &Sandbox,
    parts: &Parts,
    a: &Attributes,
    body: &[u8],
) -> Option<(Value, Option<Value>)> {
    let version = parts.uri.path().split('/').nth(3)?;
    let gvr = Gvr::new(&a.group, version, &a.resource);
    let old = (!a.name.is_empty())
        .then(|| sb.store().get(&gvr, &a.namespace, &a.name).ok())
        .flatten();
    let ct = content_type(&parts.headers);
    let new = match parts.method {
        Method::POST | Method::PUT => decode_object(body, &ct)?,
        Method::PATCH => {
            let kind = PatchKind::from_content_type(&ct)?;
            let opts = WriteOptions {
                dry_run: true,
                ..write_options(parts)
            };
            sb.store()
                .patch(&gvr, &a.namespace, &a.name, kind, body, &opts)
                .ok()?
        }
        _ => return None,
    };
    Some((new, old))
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string()
}

/// A JSON, YAML or protobuf object body (what the handler accepts for create and replace).
fn decode_object(body: &[u8], ct: &str) -> Option<Value> {
    let v: Value = if ct.contains("protobuf") {
        protobuf::decode(body).ok()?
    } else if ct.contains("yaml") {
        serde_saphyr::from_str(std::str::from_utf8(body).ok()?).ok()?
    } else {
        serde_json::from_slice(body).ok()?
    };
    v.is_object().then_some(v)
}

/// The field manager and force of a write, as the handler reads them (`fieldManager`,
/// else the user agent's first word; `force`), so the dry run matches the write.
fn write_options(parts: &Parts) -> WriteOptions {
    let query = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let param = |k: &str| query.get(k).map(String::as_str);
    let manager = param("fieldManager").map(String::from).or_else(|| {
        parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.split('/').next().unwrap_or(ua).to_string())
    });
    WriteOptions {
        field_manager: manager,
        force: matches!(param("force"), Some("true") | Some("1")),
        dry_run: false,
        subresource: Subresource::Main,
    }
}

/// A review body: JSON, YAML, or the protobuf kubectl's typed client sends.
fn decode_review(headers: &HeaderMap, body: &[u8], kind: &str) -> Result<Value, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let bad = |m: String| {
        ApiError::bad_request(format!(
            "the object provided is unrecognized (must be of type {kind}): {m}"
        ))
    };
    let v: Value = if ct.contains("protobuf") {
        protobuf::decode(body).map_err(|e| bad(e.to_string()))?
    } else if ct.contains("yaml") {
        let text = std::str::from_utf8(body).map_err(|_| bad("the body is not UTF-8".into()))?;
        serde_saphyr::from_str(text).map_err(|e| bad(e.to_string()))?
    } else {
        serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?
    };
    let got = v.get("kind").and_then(Value::as_str).unwrap_or(kind);
    if got != kind {
        return Err(bad(format!("got kind {got}")));
    }
    Ok(v)
}

fn attrs_of(spec: &Value) -> Result<Attributes, ApiError> {
    let s = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    match (spec.get("resourceAttributes"), spec.get("nonResourceAttributes")) {
        (Some(r), None) => Ok(Attributes {
            verb: s(r, "verb"),
            namespace: s(r, "namespace"),
            group: s(r, "group"),
            resource: s(r, "resource"),
            subresource: s(r, "subresource"),
            name: s(r, "name"),
            path: None,
        }),
        (None, Some(n)) => Ok(Attributes::non_resource(&s(n, "verb"), &s(n, "path"))),
        _ => Err(ApiError::invalid(
            "SelfSubjectAccessReview",
            "",
            &[(
                "spec.resourceAttributes",
                "Invalid value: exactly one of nonResourceAttributes or resourceAttributes must be specified".into(),
            )],
        )),
    }
}

/// `POST .../selfsubjectaccessreviews`: may the requester do this?
pub async fn access_review(State(sb): State<Sandbox>, headers: HeaderMap, body: Bytes) -> Response {
    let run = || -> Result<Value, ApiError> {
        let user = requester(&headers)?;
        let review = decode_review(&headers, &body, "SelfSubjectAccessReview")?;
        let spec = review.get("spec").cloned().unwrap_or_else(|| json!({}));
        let d = authz::authorize(sb.store(), &user, &attrs_of(&spec)?);
        let mut status = json!({"allowed": d.allowed});
        if !d.reason.is_empty() {
            status["reason"] = json!(d.reason);
        }
        if !d.evaluation_error.is_empty() {
            status["evaluationError"] = json!(d.evaluation_error);
        }
        Ok(json!({
            "kind": "SelfSubjectAccessReview",
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": spec,
            "status": status,
        }))
    };
    match run() {
        Ok(v) => json_response(201, &v),
        Err(e) => error_response(&e),
    }
}

fn rule_json(r: &PolicyRule) -> (bool, Value) {
    if !r.non_resource_urls.is_empty() {
        return (
            false,
            json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}),
        );
    }
    let mut v = json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources});
    if !r.resource_names.is_empty() {
        v["resourceNames"] = json!(r.resource_names);
    }
    (true, v)
}

/// `POST .../selfsubjectrulesreviews`: what may the requester do in a namespace
/// (`kubectl auth can-i --list`)?
pub async fn rules_review(State(sb): State<Sandbox>, headers: HeaderMap, body: Bytes) -> Response {
    let run = || -> Result<Value, ApiError> {
        let user = requester(&headers)?;
        let review = decode_review(&headers, &body, "SelfSubjectRulesReview")?;
        let ns = review
            .pointer("/spec/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if ns.is_empty() {
            return Err(ApiError::bad_request("no namespace on request"));
        }
        let mut rules: Vec<PolicyRule> = Vec::new();
        if user.groups.iter().any(|g| g == MASTERS) {
            // What cluster-admin's rules say.
            rules.push(PolicyRule::from_json(
                &json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}),
            ));
            rules.push(PolicyRule::from_json(
                &json!({"verbs": ["*"], "nonResourceURLs": ["*"]}),
            ));
        }
        if user.groups.iter().any(|g| g == authz::AUTHENTICATED) {
            rules.extend(authz::bootstrap_rules());
        }
        let (found, errors) = authz::rules_for(sb.store(), &user, ns);
        rules.extend(found.into_iter().map(|r| r.rule));
        let (resource, non_resource): (Vec<_>, Vec<_>) =
            rules.iter().map(rule_json).partition(|(res, _)| *res);
        let mut status = json!({
            "resourceRules": resource.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
            "nonResourceRules": non_resource.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
            "incomplete": !errors.is_empty(),
        });
        if !errors.is_empty() {
            status["evaluationError"] = json!(errors.join("; "));
        }
        Ok(json!({
            "kind": "SelfSubjectRulesReview",
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": {"namespace": ns},
            "status": status,
        }))
    };
    match run() {
        Ok(v) => json_response(201, &v),
        Err(e) => error_response(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_paths_map_to_rbac_attributes() {
        let a = request_attributes(
            &Method::GET,
            "/apis/apps/v1/namespaces/kube-system/daemonsets",
            None,
        );
        assert_eq!(
            (
                a.verb.as_str(),
                a.group.as_str(),
                a.resource.as_str(),
                a.namespace.as_str()
            ),
            ("list", "apps", "daemonsets", "kube-system")
        );
        let a = request_attributes(
            &Method::GET,
            "/api/v1/nodes",
            Some("watch=true&labelSelector=x"),
        );
        assert_eq!(a.verb, "watch");
        let a = request_attributes(&Method::PATCH, "/api/v1/nodes/n1/status", None);
        assert_eq!(
            (a.verb.as_str(), a.name.as_str(), a.subresource.as_str()),
            ("patch", "n1", "status")
        );
        let a = request_attributes(&Method::DELETE, "/api/v1/namespaces/x/configmaps", None);
        assert_eq!(a.verb, "deletecollection");
        let a = request_attributes(&Method::GET, "/api/v1/namespaces/x", None);
        assert_eq!(
            (a.resource.as_str(), a.name.as_str(), a.namespace.as_str()),
            ("namespaces", "x", "x")
        );
        let a = request_attributes(&Method::GET, "/apis/apps/v1", None);
        assert_eq!(a.path.as_deref(), Some("/apis/apps/v1"));
    }
}
