//! Discovery: `/version`, `/api`, `/apis`, `/apis/G`, `/api/v1`, `/apis/G/V`.
//! Answered as plain `application/json` (the legacy documents): kubectl 1.32 asks
//! for aggregated discovery first and falls back to these when the answer is not
//! an `APIGroupDiscoveryList` (k8s.io/client-go discovery/discovery_client.go).

use serde_json::{Value, json};

use std::cmp::Ordering;

use super::types::{ResourceType, api_version};
use super::versions::KubernetesVersion;

/// `/version`: the Kubernetes minor the sandbox serves (`SandboxOptions::kubernetes_version`).
pub fn version(kv: KubernetesVersion) -> Value {
    json!({
        "major": "1",
        "minor": kv.minor().to_string(),
        "gitVersion": kv.git_version(),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

pub fn core_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    })
}

/// Groups in the order the real server lists the built-ins, CRD groups after.
const ORDER: &[&str] = &[
    "apps",
    "events.k8s.io",
    "authorization.k8s.io",
    "batch",
    "policy",
    "rbac.authorization.k8s.io",
    "networking.k8s.io",
    "coordination.k8s.io",
    "apiextensions.k8s.io",
];

/// Kubernetes' version priority: GA before beta before alpha, higher numbers first,
/// anything else last in lexical order (k8s.io/apimachinery v0.34.0
/// pkg/version/helpers.go `CompareKubeAwareVersionStrings`, which CRD groups are sorted
/// by in apiextensions-apiserver pkg/apiserver/customresource_discovery_controller.go;
/// the built-in groups here list theirs in the same order: v1, then v1beta1).
pub fn kube_aware(a: &str, b: &str) -> Ordering {
    fn parse(v: &str) -> Option<(u32, u8, u32)> {
        let rest = v.strip_prefix('v')?;
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let major: u32 = rest[..digits].parse().ok()?;
        let tail = &rest[digits..];
        if tail.is_empty() {
            return Some((major, 2, 0));
        }
        let (kind, n) = if let Some(n) = tail.strip_prefix("beta") {
            (1, n)
        } else if let Some(n) = tail.strip_prefix("alpha") {
            (0, n)
        } else {
            return None;
        };
        Some((major, kind, n.parse().ok()?))
    }
    match (parse(a), parse(b)) {
        (Some((ma, ka, na)), Some((mb, kb, nb))) => kb.cmp(&ka).then(mb.cmp(&ma)).then(nb.cmp(&na)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

/// Every version some type of `group` serves, in priority order (preferred first).
fn group_versions(group: &str, types: &[ResourceType]) -> Vec<String> {
    let mut versions: Vec<String> = Vec::new();
    for t in types.iter().filter(|t| t.group == group) {
        for v in &t.versions {
            if !versions.contains(v) {
                versions.push(v.clone());
            }
        }
    }
    versions.sort_by(|a, b| kube_aware(a, b));
    versions
}

fn group_doc(group: &str, types: &[ResourceType]) -> Value {
    let versions = group_versions(group, types);
    let preferred = versions.first().cloned().unwrap_or_default();
    let gv = |v: &str| json!({"groupVersion": api_version(group, v), "version": v});
    json!({
        "name": group,
        "versions": versions.iter().map(|v| gv(v)).collect::<Vec<_>>(),
        "preferredVersion": gv(&preferred),
    })
}

fn groups_of(types: &[ResourceType]) -> Vec<String> {
    let mut groups: Vec<String> = ORDER
        .iter()
        .map(|s| s.to_string())
        .filter(|g| types.iter().any(|t| t.group == *g))
        .collect();
    let mut extra: Vec<String> = types
        .iter()
        .map(|t| t.group.clone())
        .filter(|g| !g.is_empty() && !ORDER.contains(&g.as_str()))
        .collect();
    extra.sort();
    extra.dedup();
    groups.extend(extra);
    groups
}

pub fn group_list(types: &[ResourceType]) -> Value {
    let groups: Vec<Value> = groups_of(types)
        .iter()
        .map(|g| group_doc(g, types))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/G`, or None when no type has that group.
pub fn group(types: &[ResourceType], group: &str) -> Option<Value> {
    types.iter().any(|t| t.group == group).then(|| {
        let mut g = group_doc(group, types);
        g["kind"] = json!("APIGroup");
        g["apiVersion"] = json!("v1");
        g
    })
}

fn verbs(t: &ResourceType) -> Vec<&'static str> {
    // Reviews are create-only (served by authz_http, never stored).
    if t.group == "authorization.k8s.io" {
        return vec!["create"];
    }
    vec![
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    ]
    .into_iter()
    .filter(|v| !(t.group.is_empty() && t.resource == "namespaces" && *v == "deletecollection"))
    .collect()
}

/// `/api/v1` or `/apis/G/V`, or None when nothing is served there.
pub fn resource_list(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for t in types
        .iter()
        .filter(|t| t.group == group && t.serves(version))
    {
        let mut r = json!({
            "name": t.resource,
            "singularName": t.singular,
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": verbs(t),
        });
        if !t.short_names.is_empty() {
            r["shortNames"] = json!(t.short_names);
        }
        if !t.categories.is_empty() {
            r["categories"] = json!(t.categories);
        }
        resources.push(r);
        if t.status {
            resources.push(json!({
                "name": format!("{}/status", t.resource), "singularName": "", "namespaced": t.namespaced,
                "kind": t.kind, "verbs": ["get", "patch", "update"],
            }));
        }
        if t.scale.is_some() {
            resources.push(json!({
                "name": format!("{}/scale", t.resource), "singularName": "", "namespaced": t.namespaced,
                "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": api_version(group, version),
        "resources": resources,
    }))
}

/// The media type of aggregated discovery (apidiscovery.k8s.io/v2), which kubectl 1.32
/// and kube's `Discovery::run_aggregated` ask for first.
pub const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether an Accept header asks for aggregated discovery v2 before plain JSON.
pub fn wants_aggregated(accept: &str) -> bool {
    for alt in accept.split(',') {
        let alt = alt.replace(' ', "");
        if alt.contains("as=APIGroupDiscoveryList")
            && alt.contains("v=v2")
            && !alt.contains("v=v2beta1")
        {
            return true;
        }
        if alt.starts_with("application/json") && !alt.contains("as=") {
            return false;
        }
    }
    false
}

fn aggregated_resource(t: &ResourceType, version: &str) -> Value {
    let kind = |g: &str, v: &str, k: &str| json!({"group": g, "version": v, "kind": k});
    let mut subs = Vec::new();
    if t.status {
        subs.push(json!({"subresource": "status", "responseKind": kind(&t.group, version, &t.kind), "verbs": ["get", "patch", "update"]}));
    }
    if t.scale.is_some() {
        subs.push(json!({"subresource": "scale", "responseKind": kind("autoscaling", "v1", "Scale"), "verbs": ["get", "patch", "update"]}));
    }
    let mut r = json!({
        "resource": t.resource,
        "responseKind": kind(&t.group, version, &t.kind),
        "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": t.singular,
        "verbs": verbs(t),
    });
    if !t.short_names.is_empty() {
        r["shortNames"] = json!(t.short_names);
    }
    if !t.categories.is_empty() {
        r["categories"] = json!(t.categories);
    }
    if !subs.is_empty() {
        r["subresources"] = json!(subs);
    }
    r
}

/// `/api` (core = true) or `/apis` as an APIGroupDiscoveryList
/// (k8s.io/api apidiscovery/v2 types.go).
pub fn aggregated(types: &[ResourceType], core: bool) -> Value {
    let groups: Vec<String> = if core {
        vec![String::new()]
    } else {
        groups_of(types)
    };
    let items: Vec<Value> = groups
        .iter()
        .map(|g| {
            let versions: Vec<Value> = group_versions(g, types)
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = types
                        .iter()
                        .filter(|t| t.group == *g && t.serves(v))
                        .map(|t| aggregated_resource(t, v))
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}
