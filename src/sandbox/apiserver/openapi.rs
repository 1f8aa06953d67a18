//! The part of OpenAPI v3 kubectl reads before it writes: for each
//! group/version, the PATCH operations and their `fieldValidation` parameter, so
//! kubectl leaves validation to the server instead of needing schemas
//! (k8s.io/cli-runtime pkg/resource/query_param_verifier_v3.go). No schemas
//! are published: `kubectl explain` and client-side validation are out of scope.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::types::{ResourceType, api_version};
use super::versions::KubernetesVersion;

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn gvs(types: &[ResourceType]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = types
        .iter()
        .flat_map(|t| t.versions.iter().map(|v| (t.group.clone(), v.clone())))
        .collect();
    out.sort();
    out.dedup();
    out
}

fn hash(types: &[ResourceType], group: &str, version: &str) -> String {
    let mut h = Sha256::new();
    for t in types
        .iter()
        .filter(|t| t.group == group && t.serves(version))
    {
        h.update(t.kind.as_bytes());
        h.update(t.resource.as_bytes());
        h.update([u8::from(t.namespaced)]);
    }
    hex::encode(&h.finalize()[..16]).to_uppercase()
}

/// `/openapi/v3`: one entry per served group/version.
pub fn root(types: &[ResourceType]) -> Value {
    let mut paths = serde_json::Map::new();
    for (g, v) in gvs(types) {
        let p = gv_path(&g, &v);
        let url = format!("/openapi/v3/{p}?hash={}", hash(types, &g, &v));
        paths.insert(p, json!({"serverRelativeURL": url}));
    }
    json!({"paths": paths})
}

/// `/openapi/v3/api/v1`, `/openapi/v3/apis/G/V`, or None.
pub fn group_version(types: &[ResourceType], rest: &str) -> Option<Value> {
    let (group, version) = match rest.split('/').collect::<Vec<_>>().as_slice() {
        ["api", v] => (String::new(), v.to_string()),
        ["apis", g, v] => (g.to_string(), v.to_string()),
        _ => return None,
    };
    let mut paths = serde_json::Map::new();
    for t in types
        .iter()
        .filter(|t| t.group == group && t.serves(&version))
    {
        let base = if t.namespaced {
            format!(
                "/{}/namespaces/{{namespace}}/{}/{{name}}",
                gv_path(&group, &version),
                t.resource
            )
        } else {
            format!("/{}/{}/{{name}}", gv_path(&group, &version), t.resource)
        };
        let op = json!({
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": t.kind},
            "parameters": [
                {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
                {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                {"name": "force", "in": "query", "schema": {"type": "boolean"}}
            ],
            "responses": {"200": {"description": "OK"}}
        });
        paths.insert(base, json!({"patch": op}));
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": api_version(&group, &version)},
        "paths": paths,
        "components": {"schemas": {}}
    }))
}

/// `/openapi/v2` without definitions: kubectl falls back to it for kinds missing
/// from the v3 root it fetched before a CRD was created, and skips validation of
/// kinds it finds no schema for.
pub fn v2(kv: KubernetesVersion) -> Value {
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{}.0", kv.minor())},
        "paths": {},
        "definitions": {}
    })
}

/// The same document in the protobuf encoding kubectl asks for
/// (gnostic openapi_v2.Document: field 1 `swagger`, field 2 `info` {1 title, 2 version}).
pub fn v2_protobuf(kv: KubernetesVersion) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, num: u8, bytes: &[u8]) {
        out.push((num << 3) | 2);
        // Every field here is shorter than 128 bytes: one-byte varint length.
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    }
    let version = format!("v1.{}.0", kv.minor());
    let mut info = Vec::new();
    field(&mut info, 1, b"Kubernetes");
    field(&mut info, 2, version.as_bytes());
    let mut doc = Vec::new();
    field(&mut doc, 1, b"2.0");
    field(&mut doc, 2, &info);
    doc
}
