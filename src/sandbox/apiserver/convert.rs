//! Conversion between the served versions of one built-in kind. Objects are stored
//! in one shape (the type's storage version, `ResourceType::storage_version`) and
//! converted on the way in ([`to_storage`]) and out ([`to_version`]).
//!
//! Kinds with real conversion:
//! - CustomResourceDefinition, apiextensions.k8s.io/v1beta1 <-> v1: upstream decodes a
//!   v1beta1 CRD with its defaults (k8s.io/apiextensions-apiserver v0.21.0
//!   pkg/apis/apiextensions/v1beta1/defaults.go:42-75), converts it to the internal
//!   type (the v1beta1 shape) and from there to v1, pushing the top-level
//!   `validation`, `subresources` and `additionalPrinterColumns` down into every
//!   version (v0.34.0 pkg/apis/apiextensions/v1/conversion.go:73-125); read at v1beta1,
//!   `spec.version` is the first version and per-version fields that are identical
//!   in every version move back to the top level (same file, 127-194). Conversion
//!   webhooks move between `spec.conversion.{webhookClientConfig,
//!   conversionReviewVersions}` and `spec.conversion.webhook.{clientConfig,
//!   conversionReviewVersions}` (196-232). Printer columns rename `JSONPath` to
//!   `jsonPath` (v1beta1/types.go:286-288 against v1/types.go).
//! - PodDisruptionBudget, policy/v1beta1 <-> v1: the same fields, but an empty
//!   selector means "no pods" in v1beta1 and "every pod" in v1; upstream swaps in
//!   selectors on the label `pdb.kubernetes.io/deprecated-v1beta1-empty-selector-match`
//!   so each reads as meant (kubernetes v1.24.0 pkg/apis/policy/v1beta1/conversion.go,
//!   pkg/apis/policy/helper.go).
//!
//! Every other multi-version built-in here (RBAC, Lease, events.k8s.io Event) is the
//! same object at both versions ("No notable changes" in the deprecation guide for
//! RBAC and Lease; events.k8s.io/v1beta1 already used the `deprecated*` field names).

use serde_json::{Map, Value, json};

use super::types::{ResourceType, api_version};

const CRD_GROUP: &str = "apiextensions.k8s.io";

/// `obj`, written at `version`, in the shape and apiVersion the store keeps.
pub fn to_storage(rt: &ResourceType, version: &str, obj: Value) -> Value {
    let storage = rt.storage_version().to_string();
    let mut out = if version == storage {
        obj
    } else {
        match (rt.group.as_str(), rt.resource.as_str(), version) {
            (CRD_GROUP, "customresourcedefinitions", "v1beta1") => crd_v1beta1_to_v1(obj),
            ("policy", "poddisruptionbudgets", "v1beta1") => pdb_v1beta1_to_v1(obj),
            _ => obj,
        }
    };
    if out.is_object() {
        out["apiVersion"] = json!(api_version(&rt.group, &storage));
        out["kind"] = json!(rt.kind);
    }
    out
}

/// A stored object as it reads at `version`.
pub fn to_version(rt: &ResourceType, version: &str, obj: Value) -> Value {
    let mut out = if version == rt.storage_version() {
        obj
    } else {
        match (rt.group.as_str(), rt.resource.as_str(), version) {
            (CRD_GROUP, "customresourcedefinitions", "v1beta1") => crd_v1_to_v1beta1(obj),
            ("policy", "poddisruptionbudgets", "v1beta1") => pdb_v1_to_v1beta1(obj),
            _ => obj,
        }
    };
    if out.is_object() {
        out["apiVersion"] = json!(api_version(&rt.group, version));
        out["kind"] = json!(rt.kind);
    }
    out
}

fn spec_mut(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    obj.get_mut("spec").and_then(Value::as_object_mut)
}

/// Printer columns with their JSONPath field renamed (`from` -> `to`).
fn rename_column_paths(cols: &Value, from: &str, to: &str) -> Value {
    match cols {
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|c| match c {
                    Value::Object(m) => {
                        let mut m = m.clone();
                        if let Some(p) = m.remove(from) {
                            m.insert(to.into(), p);
                        }
                        Value::Object(m)
                    }
                    other => other.clone(),
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The defaults upstream gives a v1beta1 CRD as it decodes one
/// (v0.21.0 pkg/apis/apiextensions/v1beta1/defaults.go:42-75).
pub fn crd_v1beta1_defaults(mut crd: Value) -> Value {
    let Some(spec) = spec_mut(&mut crd) else {
        return crd;
    };
    if spec
        .get("scope")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        spec.insert("scope".into(), json!("Namespaced"));
    }
    if let Some(Value::Object(names)) = spec.get_mut("names") {
        let kind = names
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if names
            .get("singular")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            names.insert("singular".into(), json!(kind.to_lowercase()));
        }
        if names
            .get("listKind")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
            && !kind.is_empty()
        {
            names.insert("listKind".into(), json!(format!("{kind}List")));
        }
    }
    let version = spec
        .get("version")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let no_versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    if no_versions && !version.is_empty() {
        spec.insert(
            "versions".into(),
            json!([{"name": version, "served": true, "storage": true}]),
        );
    }
    if version.is_empty()
        && let Some(first) = spec
            .get("versions")
            .and_then(|v| v.get(0))
            .and_then(|v| v.get("name"))
            .cloned()
    {
        spec.insert("version".into(), first);
    }
    match spec.get_mut("conversion") {
        Some(Value::Object(c)) => {
            if c.get("strategy").and_then(Value::as_str) == Some("Webhook")
                && c.get("conversionReviewVersions")
                    .and_then(Value::as_array)
                    .is_none_or(Vec::is_empty)
            {
                c.insert("conversionReviewVersions".into(), json!(["v1beta1"]));
            }
        }
        _ => {
            spec.insert("conversion".into(), json!({"strategy": "None"}));
        }
    }
    if !spec
        .get("preserveUnknownFields")
        .is_some_and(Value::is_boolean)
    {
        spec.insert("preserveUnknownFields".into(), json!(true));
    }
    crd
}

/// A v1beta1 CRD (defaults applied) in the v1 shape
/// (v0.34.0 pkg/apis/apiextensions/v1/conversion.go:73-125, 215-232).
pub fn crd_v1beta1_to_v1(crd: Value) -> Value {
    let mut crd = crd_v1beta1_defaults(crd);
    let Some(spec) = spec_mut(&mut crd) else {
        return crd;
    };
    spec.remove("version");
    let validation = spec.remove("validation");
    let subresources = spec.remove("subresources");
    let columns = spec.remove("additionalPrinterColumns");
    let selectable = spec.remove("selectableFields");
    if let Some(Value::Array(versions)) = spec.get_mut("versions") {
        for v in versions.iter_mut() {
            let Value::Object(v) = v else { continue };
            if let Some(c) = v.get("additionalPrinterColumns").cloned() {
                v.insert(
                    "additionalPrinterColumns".into(),
                    rename_column_paths(&c, "JSONPath", "jsonPath"),
                );
            }
            if let Some(s) = &subresources {
                v.insert("subresources".into(), s.clone());
            }
            if let Some(s) = &validation {
                v.insert("schema".into(), s.clone());
            }
            if let Some(c) = &columns {
                v.insert(
                    "additionalPrinterColumns".into(),
                    rename_column_paths(c, "JSONPath", "jsonPath"),
                );
            }
            if let Some(f) = &selectable {
                v.insert("selectableFields".into(), f.clone());
            }
        }
    }
    if let Some(Value::Object(c)) = spec.get_mut("conversion") {
        let client = c.remove("webhookClientConfig");
        let review = c.remove("conversionReviewVersions");
        if client.is_some() || review.is_some() {
            let mut hook = Map::new();
            if let Some(r) = review {
                hook.insert("conversionReviewVersions".into(), r);
            }
            if let Some(cc) = client {
                hook.insert("clientConfig".into(), cc);
            }
            c.insert("webhook".into(), Value::Object(hook));
        }
    }
    // v1 `preserveUnknownFields` is a plain bool with omitempty: false is not written.
    if spec.get("preserveUnknownFields") == Some(&json!(false)) {
        spec.remove("preserveUnknownFields");
    }
    crd
}

/// A stored (v1) CRD as apiextensions.k8s.io/v1beta1 shows it
/// (v0.34.0 pkg/apis/apiextensions/v1/conversion.go:127-213).
pub fn crd_v1_to_v1beta1(mut crd: Value) -> Value {
    let Some(spec) = spec_mut(&mut crd) else {
        return crd;
    };
    // v1's bool is always set on the internal *bool, so v1beta1 shows it.
    let keep = spec
        .get("preserveUnknownFields")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    spec.insert("preserveUnknownFields".into(), json!(keep));
    if let Some(Value::Object(c)) = spec.get_mut("conversion")
        && let Some(Value::Object(hook)) = c.remove("webhook")
    {
        if let Some(r) = hook.get("conversionReviewVersions") {
            c.insert("conversionReviewVersions".into(), r.clone());
        }
        if let Some(cc) = hook.get("clientConfig") {
            c.insert("webhookClientConfig".into(), cc.clone());
        }
    }
    let Some(Value::Array(versions)) = spec.get_mut("versions") else {
        return crd;
    };
    if versions.is_empty() {
        return crd;
    }
    for v in versions.iter_mut() {
        if let Value::Object(v) = v
            && let Some(c) = v.get("additionalPrinterColumns").cloned()
        {
            v.insert(
                "additionalPrinterColumns".into(),
                rename_column_paths(&c, "jsonPath", "JSONPath"),
            );
        }
    }
    let first_name = versions[0].get("name").cloned();
    // (v1 field, v1beta1 top-level field): hoisted when every version has the same
    // value, absent ones included (Semantic.DeepEqual of two nils).
    let mut hoisted = Vec::new();
    for (per_version, top) in [
        ("subresources", "subresources"),
        ("schema", "validation"),
        ("additionalPrinterColumns", "additionalPrinterColumns"),
        ("selectableFields", "selectableFields"),
    ] {
        let first = versions[0].get(per_version).cloned();
        if versions
            .iter()
            .all(|v| v.get(per_version).cloned() == first)
        {
            for v in versions.iter_mut() {
                if let Value::Object(v) = v {
                    v.remove(per_version);
                }
            }
            if let Some(f) = first {
                hoisted.push((top, f));
            }
        }
    }
    for (top, value) in hoisted {
        spec.insert(top.into(), value);
    }
    if let Some(name) = first_name {
        spec.insert("version".into(), name);
    }
    crd
}

/// `pdb.kubernetes.io/deprecated-v1beta1-empty-selector-match`
/// (kubernetes pkg/apis/policy/helper.go, `PDBV1beta1Label`).
pub const PDB_V1BETA1_LABEL: &str = "pdb.kubernetes.io/deprecated-v1beta1-empty-selector-match";

/// A label selector that selects everything: no requirements at all (empty and
/// absent lists compare equal, as apimachinery's Semantic.DeepEqual has them).
fn empty_selector(s: &Value) -> bool {
    s.as_object().is_some_and(|m| {
        m.iter().all(|(k, v)| match k.as_str() {
            "matchLabels" => v.as_object().is_none_or(Map::is_empty),
            "matchExpressions" => v.as_array().is_none_or(Vec::is_empty),
            _ => v.is_null(),
        })
    })
}

/// The selector `{matchExpressions: [{key: PDB_V1BETA1_LABEL, operator: op}]}`.
fn label_selector(op: &str) -> Value {
    json!({"matchExpressions": [{"key": PDB_V1BETA1_LABEL, "operator": op}]})
}

fn is_label_selector(s: &Value, op: &str) -> bool {
    let Some(m) = s.as_object() else {
        return false;
    };
    let labels_empty = m
        .get("matchLabels")
        .is_none_or(|l| l.as_object().is_none_or(Map::is_empty));
    let exprs = m.get("matchExpressions").and_then(Value::as_array);
    labels_empty
        && exprs.is_some_and(|e| {
            e.len() == 1
                && e[0].get("key").and_then(Value::as_str) == Some(PDB_V1BETA1_LABEL)
                && e[0].get("operator").and_then(Value::as_str) == Some(op)
                && e[0]
                    .get("values")
                    .is_none_or(|v| v.as_array().is_none_or(Vec::is_empty))
        })
}

/// policy/v1beta1 -> storage (v1.24.0 pkg/apis/policy/v1beta1/conversion.go,
/// `Convert_v1beta1_PodDisruptionBudget_To_policy_PodDisruptionBudget`): `{}` selects no
/// pods, so it becomes the match-none selector; the v1beta1 match-all selector becomes
/// `{}`; otherwise requirements on the label are stripped.
fn pdb_v1beta1_to_v1(mut pdb: Value) -> Value {
    let Some(sel) = pdb.pointer_mut("/spec/selector") else {
        return pdb;
    };
    if empty_selector(sel) {
        *sel = label_selector("Exists");
    } else if is_label_selector(sel, "DoesNotExist") {
        *sel = json!({});
    } else if let Some(Value::Array(e)) = sel.get_mut("matchExpressions") {
        e.retain(|x| x.get("key").and_then(Value::as_str) != Some(PDB_V1BETA1_LABEL));
    }
    pdb
}

/// storage -> policy/v1beta1 (`Convert_policy_PodDisruptionBudget_To_v1beta1_...`,
/// same file): the match-none selector reads `{}`, `{}` reads as the match-all one.
fn pdb_v1_to_v1beta1(mut pdb: Value) -> Value {
    let Some(sel) = pdb.pointer_mut("/spec/selector") else {
        return pdb;
    };
    if is_label_selector(sel, "Exists") {
        *sel = json!({});
    } else if empty_selector(sel) {
        *sel = label_selector("DoesNotExist");
    }
    pdb
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::apiserver::types::builtins;

    fn crd_type() -> ResourceType {
        builtins()
            .into_iter()
            .find(|t| t.resource == "customresourcedefinitions")
            .unwrap()
    }

    fn pdb_type() -> ResourceType {
        builtins()
            .into_iter()
            .find(|t| t.resource == "poddisruptionbudgets")
            .unwrap()
    }

    /// The chart's first CRD (aws-calico 0.3.10 crds/crds.yaml), as written.
    fn felix() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1beta1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "felixconfigurations.crd.projectcalico.org"},
            "spec": {
                "scope": "Cluster",
                "group": "crd.projectcalico.org",
                "versions": [{"name": "v1", "served": true, "storage": true}],
                "names": {"kind": "FelixConfiguration", "plural": "felixconfigurations",
                          "singular": "felixconfiguration"}
            }
        })
    }

    #[test]
    fn a_v1beta1_crd_is_stored_as_v1_with_upstreams_defaults() {
        let v1 = to_storage(&crd_type(), "v1beta1", felix());
        assert_eq!(
            v1,
            json!({
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": "felixconfigurations.crd.projectcalico.org"},
                "spec": {
                    "scope": "Cluster",
                    "group": "crd.projectcalico.org",
                    "versions": [{"name": "v1", "served": true, "storage": true}],
                    "names": {"kind": "FelixConfiguration", "plural": "felixconfigurations",
                              "singular": "felixconfiguration", "listKind": "FelixConfigurationList"},
                    "conversion": {"strategy": "None"},
                    "preserveUnknownFields": true
                }
            })
        );
    }

    #[test]
    fn the_chart_crds_round_trip_to_upstreams_defaults() {
        let rt = crd_type();
        let yaml = crate::sandbox::scenario::calico::calico_crds_v1beta1_yaml();
        let mut n = 0;
        for doc in yaml.split("---\n").filter(|d| !d.trim().is_empty()) {
            let crd: Value = serde_saphyr::from_str(doc).unwrap();
            n += 1;
            let back = to_version(&rt, "v1beta1", to_storage(&rt, "v1beta1", crd.clone()));
            let mut want = crd_v1beta1_defaults(crd);
            // The top-level `version` the chart names stays; versions[] is made from it.
            want["apiVersion"] = json!("apiextensions.k8s.io/v1beta1");
            assert_eq!(back, want);
            assert_eq!(back["spec"]["version"], json!("v1"));
            assert_eq!(back["spec"]["versions"][0]["served"], json!(true));
        }
        assert_eq!(n, 12);
    }

    #[test]
    fn top_level_fields_go_down_to_every_version_and_come_back_up() {
        let schema = json!({"openAPIV3Schema": {"type": "object"}});
        let crd = json!({
            "apiVersion": "apiextensions.k8s.io/v1beta1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "version": "v1",
                "versions": [{"name": "v1", "served": true, "storage": true},
                             {"name": "v2", "served": true, "storage": false}],
                "names": {"kind": "Widget", "plural": "widgets"},
                "validation": schema,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [{"name": "Size", "type": "integer", "JSONPath": ".spec.size"}],
                "conversion": {"strategy": "Webhook", "webhookClientConfig": {"url": "https://x"}},
                "preserveUnknownFields": false
            }
        });
        let rt = crd_type();
        let v1 = to_storage(&rt, "v1beta1", crd);
        let s = &v1["spec"];
        assert_eq!(s["scope"], json!("Namespaced"));
        assert!(s.get("version").is_none() && s.get("validation").is_none());
        assert!(s.get("preserveUnknownFields").is_none(), "{s}");
        for v in s["versions"].as_array().unwrap() {
            assert_eq!(v["schema"], schema);
            assert_eq!(v["subresources"], json!({"status": {}}));
            assert_eq!(
                v["additionalPrinterColumns"],
                json!([{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}])
            );
        }
        assert_eq!(
            s["conversion"],
            json!({"strategy": "Webhook", "webhook": {"clientConfig": {"url": "https://x"},
                   "conversionReviewVersions": ["v1beta1"]}})
        );
        let back = to_version(&rt, "v1beta1", v1.clone());
        let b = &back["spec"];
        assert_eq!(b["version"], json!("v1"));
        assert_eq!(b["validation"], schema);
        assert_eq!(b["subresources"], json!({"status": {}}));
        assert_eq!(
            b["additionalPrinterColumns"],
            json!([{"name": "Size", "type": "integer", "JSONPath": ".spec.size"}])
        );
        assert_eq!(b["preserveUnknownFields"], json!(false));
        assert_eq!(
            b["conversion"],
            json!({"strategy": "Webhook", "webhookClientConfig": {"url": "https://x"},
                   "conversionReviewVersions": ["v1beta1"]})
        );
        for v in b["versions"].as_array().unwrap() {
            assert!(
                v.get("schema").is_none() && v.get("subresources").is_none(),
                "{v}"
            );
        }

        // Versions that differ keep their own fields; only the identical ones move up.
        let mut v1 = v1;
        v1["spec"]["versions"][1]["schema"] = json!({"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}});
        let back = to_version(&rt, "v1beta1", v1);
        let b = &back["spec"];
        assert!(b.get("validation").is_none(), "{b}");
        assert_eq!(b["versions"][0]["schema"], schema);
        assert_eq!(b["subresources"], json!({"status": {}}));
    }

    #[test]
    fn pdb_empty_selectors_keep_their_meaning_across_versions() {
        let rt = pdb_type();
        let pdb = |sel: Value| {
            json!({"apiVersion": "policy/v1beta1", "kind": "PodDisruptionBudget",
                                       "metadata": {"name": "p"}, "spec": {"selector": sel}})
        };
        // v1beta1 {} selects nothing: stored as the match-none selector, read back as {}.
        let stored = to_storage(&rt, "v1beta1", pdb(json!({})));
        assert_eq!(stored["apiVersion"], json!("policy/v1"));
        assert_eq!(stored["spec"]["selector"], label_selector("Exists"));
        assert_eq!(
            to_version(&rt, "v1beta1", stored.clone())["spec"]["selector"],
            json!({})
        );
        // v1 {} selects everything: read at v1beta1 as the match-all selector.
        let mut all = pdb(json!({}));
        all["apiVersion"] = json!("policy/v1");
        let stored = to_storage(&rt, "v1", all);
        assert_eq!(stored["spec"]["selector"], json!({}));
        let old = to_version(&rt, "v1beta1", stored);
        assert_eq!(old["spec"]["selector"], label_selector("DoesNotExist"));
        assert_eq!(old["apiVersion"], json!("policy/v1beta1"));
        assert_eq!(
            to_storage(&rt, "v1beta1", old)["spec"]["selector"],
            json!({})
        );
        // A real selector passes unchanged, minus any requirement on the label.
        let sel = json!({"matchLabels": {"k8s-app": "calico-typha"},
                         "matchExpressions": [{"key": PDB_V1BETA1_LABEL, "operator": "Exists"}]});
        let stored = to_storage(&rt, "v1beta1", pdb(sel));
        assert_eq!(
            stored["spec"]["selector"],
            json!({"matchLabels": {"k8s-app": "calico-typha"}, "matchExpressions": []})
        );
        // No selector stays none in both versions.
        let none = json!({"apiVersion": "policy/v1beta1", "kind": "PodDisruptionBudget",
                          "metadata": {"name": "p"}, "spec": {"minAvailable": 1}});
        assert!(
            to_storage(&rt, "v1beta1", none)["spec"]
                .get("selector")
                .is_none()
        );
    }
}
