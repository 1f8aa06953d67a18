//! The three patch formats of PATCH requests: JSON merge patch (RFC 7386),
//! JSON patch (RFC 6902) and strategic merge patch (the subset kubectl uses;
//! k8s.io/apimachinery pkg/util/strategicpatch/patch.go).

use serde_json::{Map, Value};

/// Merge keys of the associative lists of the built-in kinds
/// (`patchMergeKey` / `listMapKeys` in k8s.io/api). `ports` depends on the item.
pub fn merge_key(field: &str, item: &Value) -> Option<&'static str> {
    let k = match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets" => "name",
        "volumeMounts" | "volumeDevices" => "mountPath",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "hostAliases" => "ip",
        "ports" if item.get("containerPort").is_some() => "containerPort",
        "ports" => "port",
        _ => return None,
    };
    item.get(k).is_some().then_some(k)
}

/// Lists merged as sets of scalars (`patchStrategy: merge` on a []string).
pub fn is_set_list(field: &str) -> bool {
    field == "finalizers"
}

/// RFC 7386.
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    let Value::Object(p) = patch else {
        return patch.clone();
    };
    let mut out = match target {
        Value::Object(t) => t.clone(),
        _ => Map::new(),
    };
    for (k, v) in p {
        if v.is_null() {
            out.remove(k);
        } else {
            let merged = merge_patch(out.get(k).unwrap_or(&Value::Null), v);
            out.insert(k.clone(), merged);
        }
    }
    Value::Object(out)
}

/// Why a JSON patch or strategic merge patch cannot be applied; the text is
/// what the real API server puts after "error in our request: ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("invalid JSON pointer \"{ptr}\": must start with '/'")]
    InvalidPointer { ptr: String },
    #[error("doc is missing path: \"{ptr}\"")]
    MissingPath { ptr: String },
    #[error("invalid array index \"{index}\" in \"{ptr}\"")]
    InvalidIndex { index: String, ptr: String },
    #[error("array index {index} out of bounds in \"{ptr}\"")]
    IndexOutOfBounds { index: usize, ptr: String },
    #[error("cannot remove the whole document")]
    RemoveWholeDocument,
    #[error("unable to remove nonexistent key: {key}: missing value")]
    RemoveMissing { key: String },
    #[error("a JSON patch must be a list of operations")]
    NotAList,
    #[error("operation {n} ({op}) has no \"{field}\"")]
    MissingField {
        n: usize,
        op: String,
        field: &'static str,
    },
    #[error("testing value {path} failed")]
    TestFailed { path: String },
    #[error("unexpected kind: \"{op}\" in operation {n}")]
    UnknownOp { op: String, n: usize },
    #[error("unknown patch type: {kind}")]
    UnknownPatchType { kind: String },
    #[error("unknown directive {key}")]
    UnknownDirective { key: String },
}

fn missing_path(ptr: &str) -> PatchError {
    PatchError::MissingPath {
        ptr: ptr.to_string(),
    }
}

fn unescape(tok: &str) -> String {
    tok.replace("~1", "/").replace("~0", "~")
}

fn tokens(ptr: &str) -> Result<Vec<String>, PatchError> {
    if ptr.is_empty() {
        return Ok(vec![]);
    }
    let rest = ptr
        .strip_prefix('/')
        .ok_or_else(|| PatchError::InvalidPointer {
            ptr: ptr.to_string(),
        })?;
    Ok(rest.split('/').map(unescape).collect())
}

fn parent_mut<'a>(
    doc: &'a mut Value,
    toks: &[String],
    ptr: &str,
) -> Result<&'a mut Value, PatchError> {
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| missing_path(ptr))?;
    }
    Ok(cur)
}

fn add(doc: &mut Value, ptr: &str, value: Value) -> Result<(), PatchError> {
    let toks = tokens(ptr)?;
    let Some((last, parents)) = toks.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, parents, ptr)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .map_err(|_| PatchError::InvalidIndex {
                        index: last.clone(),
                        ptr: ptr.to_string(),
                    })?
            };
            if i > a.len() {
                return Err(PatchError::IndexOutOfBounds {
                    index: i,
                    ptr: ptr.to_string(),
                });
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err(missing_path(ptr)),
    }
}

fn remove(doc: &mut Value, ptr: &str) -> Result<Value, PatchError> {
    let toks = tokens(ptr)?;
    let (last, parents) = toks.split_last().ok_or(PatchError::RemoveWholeDocument)?;
    let missing = || PatchError::RemoveMissing { key: last.clone() };
    match parent_mut(doc, parents, ptr)? {
        Value::Object(m) => m.remove(last).ok_or_else(missing),
        Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => Ok(a.remove(i)),
            _ => Err(missing()),
        },
        _ => Err(missing()),
    }
}

fn get<'a>(doc: &'a Value, ptr: &str) -> Result<&'a Value, PatchError> {
    doc.pointer(ptr).ok_or_else(|| missing_path(ptr))
}

/// RFC 6902. The error names the failing operation.
pub fn json_patch(target: &Value, ops: &Value) -> Result<Value, PatchError> {
    let ops = ops.as_array().ok_or(PatchError::NotAList)?;
    let mut doc = target.clone();
    for (n, op) in ops.iter().enumerate() {
        let name = op.get("op").and_then(Value::as_str).unwrap_or_default();
        let no = |field| PatchError::MissingField {
            n,
            op: name.to_string(),
            field,
        };
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| no("path"))?;
        let value = || op.get("value").cloned().ok_or_else(|| no("value"));
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| no("from"))
        };
        match name {
            "add" => add(&mut doc, path, value()?)?,
            "remove" => {
                remove(&mut doc, path)?;
            }
            "replace" => {
                remove(&mut doc, path)?;
                add(&mut doc, path, value()?)?;
            }
            "move" => {
                let v = remove(&mut doc, from()?)?;
                add(&mut doc, path, v)?;
            }
            "copy" => {
                let v = get(&doc, from()?)?.clone();
                add(&mut doc, path, v)?;
            }
            "test" => {
                if *get(&doc, path)? != value()? {
                    return Err(PatchError::TestFailed {
                        path: path.to_string(),
                    });
                }
            }
            other => {
                return Err(PatchError::UnknownOp {
                    op: other.to_string(),
                    n,
                });
            }
        }
    }
    Ok(doc)
}

/// Strategic merge patch: merge patch plus keyed list merging and the
/// `$patch`, `$retainKeys`, `$deleteFromPrimitiveList` and `$setElementOrder` directives.
pub fn strategic_merge(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    merge_map(target, patch)
}

fn merge_map(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    let Value::Object(p) = patch else {
        return Ok(patch.clone());
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut m = p.clone();
            m.remove("$patch");
            return Ok(Value::Object(m));
        }
        Some("delete") => return Ok(Value::Null),
        Some(other) => {
            return Err(PatchError::UnknownPatchType {
                kind: other.to_string(),
            });
        }
        None => {}
    }
    let mut out = match target {
        Value::Object(t) => t.clone(),
        _ => Map::new(),
    };
    if let Some(Value::Array(keep)) = p.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, v) in p {
        if k.starts_with("$setElementOrder/") || k == "$retainKeys" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(del)) = (out.get_mut(field), v) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            return Err(PatchError::UnknownDirective { key: k.clone() });
        }
        match v {
            Value::Null => {
                out.remove(k);
            }
            Value::Object(_) => {
                let merged = merge_map(out.get(k).unwrap_or(&Value::Null), v)?;
                if merged.is_null() {
                    out.remove(k);
                } else {
                    out.insert(k.clone(), merged);
                }
            }
            Value::Array(items) => {
                let merged = merge_list(k, out.get(k), items)?;
                out.insert(k.clone(), merged);
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(Value::Object(out))
}

fn merge_list(field: &str, target: Option<&Value>, items: &[Value]) -> Result<Value, PatchError> {
    let current: Vec<Value> = target
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if items.iter().any(|i| {
        i.get("$patch").and_then(Value::as_str) == Some("replace")
            && i.as_object().is_some_and(|m| m.len() == 1)
    }) {
        let rest: Vec<Value> = items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .cloned()
            .collect();
        return Ok(Value::Array(rest));
    }
    if is_set_list(field) {
        let mut out = current;
        for i in items {
            if !out.contains(i) {
                out.push(i.clone());
            }
        }
        return Ok(Value::Array(out));
    }
    let keyed = items.first().and_then(|i| merge_key(field, i));
    let Some(key) = keyed else {
        return Ok(Value::Array(items.to_vec()));
    };
    let mut out = current;
    for item in items {
        let kv = item.get(key);
        let pos = out.iter().position(|o| o.get(key) == kv);
        if item.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(i) = pos {
                out.remove(i);
            }
            continue;
        }
        match pos {
            Some(i) => {
                let merged = merge_map(&out[i], item)?;
                out[i] = merged;
            }
            None => out.push(merge_map(&Value::Null, item)?),
        }
    }
    Ok(Value::Array(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_removes_nulls() {
        let t = json!({"a": {"b": 1, "c": 2}, "d": [1]});
        let p = json!({"a": {"b": null, "e": 3}, "d": [2]});
        assert_eq!(
            merge_patch(&t, &p),
            json!({"a": {"c": 2, "e": 3}, "d": [2]})
        );
    }

    #[test]
    fn json_patch_ops() {
        let t = json!({"a": [1, 2], "b": {"c~/": 1}});
        let ops = json!([
            {"op": "add", "path": "/a/-", "value": 3},
            {"op": "replace", "path": "/b/c~0~1", "value": 2},
            {"op": "test", "path": "/a/0", "value": 1},
            {"op": "copy", "from": "/a/2", "path": "/x"},
            {"op": "remove", "path": "/a/0"}
        ]);
        assert_eq!(
            json_patch(&t, &ops),
            Ok(json!({"a": [2, 3], "b": {"c~/": 2}, "x": 3}))
        );
        assert!(json_patch(&t, &json!([{"op": "remove", "path": "/nope"}])).is_err());
        assert!(json_patch(&t, &json!([{"op": "test", "path": "/a/0", "value": 9}])).is_err());
    }

    #[test]
    fn strategic_merges_containers_by_name() {
        let t = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]},
                       "metadata": {"finalizers": ["f1"]}});
        let p = json!({"spec": {"containers": [{"name": "b", "image": "z"}, {"name": "a", "$patch": "delete"}]},
                       "metadata": {"finalizers": ["f2"]}});
        let out = strategic_merge(&t, &p).ok();
        assert_eq!(
            out,
            Some(
                json!({"spec": {"containers": [{"name": "b", "image": "z"}]},
                        "metadata": {"finalizers": ["f1", "f2"]}})
            )
        );
    }

    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-5i64..5).prop_map(|n| json!(n)),
            "[a-c]{0,2}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[a-d]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn merge_patch_is_idempotent(t in json_value(), p in json_value()) {
            let once = merge_patch(&t, &p);
            prop_assert_eq!(merge_patch(&once, &p), once);
        }

        #[test]
        fn strategic_merge_without_lists_or_directives_is_merge_patch(
            t in prop::collection::btree_map("[a-d]", "[a-c]{0,2}", 0..4),
            p in prop::collection::btree_map("[a-d]", prop::option::of("[a-c]{0,2}"), 0..4),
        ) {
            let t = json!(t);
            let p: Value = json!(p);
            prop_assert_eq!(strategic_merge(&t, &p).ok(), Some(merge_patch(&t, &p)));
        }

        #[test]
        fn json_patch_add_then_remove_restores(t in prop::collection::btree_map("[a-d]", json_value(), 0..4), v in json_value()) {
            let t = json!(t);
            if t.get("new").is_none() {
                let ops = json!([{"op": "add", "path": "/new", "value": v}, {"op": "remove", "path": "/new"}]);
                prop_assert_eq!(json_patch(&t, &ops), Ok(t.clone()));
            }
        }
    }
}
