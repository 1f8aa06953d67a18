//! Field ownership (`metadata.managedFields`, FieldsV1) and server-side apply:
//! conflicts between managers, `force`, and removal of fields a manager stops
//! applying (k8s.io/apiserver pkg/endpoints/handlers/fieldmanager,
//! sigs.k8s.io/structured-merge-diff merge/update.go). Associative lists use the
//! merge keys of `patch::merge_key`; every other list is atomic.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::patch::{is_set_list, merge_key};
use super::types::Subresource;

/// A field path in FieldsV1 element syntax: `f:name`, `k:{"name":"x"}`, `v:"x"`, `.`.
pub type Path = Vec<String>;
pub type FieldSet = BTreeSet<Path>;

/// The fields a value sets, as leaf paths.
pub fn fields_of(obj: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    let Value::Object(m) = obj else { return out };
    for (k, v) in m {
        match k.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                if let Value::Object(meta) = v {
                    for key in ["labels", "annotations", "finalizers", "ownerReferences"] {
                        if let Some(x) = meta.get(key) {
                            walk(
                                &mut vec!["f:metadata".into(), format!("f:{key}")],
                                key,
                                x,
                                &mut out,
                            );
                        }
                    }
                }
            }
            _ => walk(&mut vec![format!("f:{k}")], k, v, &mut out),
        }
    }
    out
}

fn walk(path: &mut Path, field: &str, v: &Value, out: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                path.push(format!("f:{k}"));
                walk(path, k, x, out);
                path.pop();
            }
        }
        Value::Array(items) if is_set_list(field) => {
            for i in items {
                path.push(format!("v:{i}"));
                out.insert(path.clone());
                path.pop();
            }
        }
        Value::Array(items)
            if !items.is_empty() && items.iter().all(|i| merge_key(field, i).is_some()) =>
        {
            for i in items {
                let Some(key) = merge_key(field, i) else {
                    continue;
                };
                let kv = json!({ key: i.get(key).cloned().unwrap_or(Value::Null) });
                path.push(format!("k:{kv}"));
                path.push(".".into());
                out.insert(path.clone());
                path.pop();
                if let Value::Object(im) = i {
                    for (k, x) in im {
                        path.push(format!("f:{k}"));
                        walk(path, k, x, out);
                        path.pop();
                    }
                }
                path.pop();
            }
        }
        _ => {
            out.insert(path.clone());
        }
    }
}

fn step<'a>(cur: &'a Value, elem: &str) -> Option<&'a Value> {
    if let Some(f) = elem.strip_prefix("f:") {
        return cur.get(f);
    }
    if elem == "." {
        return Some(cur);
    }
    let items = cur.as_array()?;
    if let Some(k) = elem.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(k).ok()?;
        return items
            .iter()
            .find(|i| key.iter().all(|(kk, kv)| i.get(kk) == Some(kv)));
    }
    let want: Value = serde_json::from_str(elem.strip_prefix("v:")?).ok()?;
    items.iter().find(|i| **i == want)
}

pub fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(obj, |cur, e| step(cur, e))
}

fn step_mut<'a>(cur: &'a mut Value, elem: &str) -> Option<&'a mut Value> {
    if let Some(f) = elem.strip_prefix("f:") {
        return cur.get_mut(f);
    }
    let items = cur.as_array_mut()?;
    let key: Map<String, Value> = serde_json::from_str(elem.strip_prefix("k:")?).ok()?;
    items
        .iter_mut()
        .find(|i| key.iter().all(|(kk, kv)| i.get(kk) == Some(kv)))
}

/// Remove the field (or list item for `.` / `v:` paths) at `path`.
pub fn remove_path(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let (target, parents) = if last == "." {
        match parents.split_last() {
            Some((item, pp)) => (item.as_str(), pp),
            None => return,
        }
    } else {
        (last.as_str(), parents)
    };
    let mut cur = obj;
    for e in parents {
        match step_mut(cur, e) {
            Some(c) => cur = c,
            None => return,
        }
    }
    if let Some(f) = target.strip_prefix("f:") {
        if let Value::Object(m) = cur {
            m.remove(f);
        }
    } else if let Value::Array(items) = cur {
        let found = step(&Value::Array(items.clone()), target).cloned();
        if let Some(found) = found {
            items.retain(|i| *i != found);
        }
    }
}

/// `.spec.containers[name="a"].image`: how conflicts name a field.
pub fn display(path: &[String]) -> String {
    let mut s = String::new();
    for e in path {
        if let Some(f) = e.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = e.strip_prefix("k:") {
            let inner = serde_json::from_str::<Map<String, Value>>(k)
                .map(|m| {
                    m.iter()
                        .map(|(a, b)| format!("{a}={b}"))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            s.push_str(&format!("[{inner}]"));
        } else if let Some(v) = e.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        }
    }
    s
}

pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for p in set {
        let mut cur = &mut root;
        for e in p {
            let next = cur.entry(e.clone()).or_insert_with(|| json!({}));
            match next {
                Value::Object(m) => cur = m,
                _ => break,
            }
        }
    }
    Value::Object(root)
}

pub fn from_fields_v1(v: &Value) -> FieldSet {
    fn rec(v: &Value, path: &mut Path, out: &mut FieldSet) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, x) in m {
                    path.push(k.clone());
                    rec(x, path, out);
                    path.pop();
                }
            }
            _ => {
                if !path.is_empty() {
                    out.insert(path.clone());
                }
            }
        }
    }
    let mut out = FieldSet::new();
    rec(v, &mut Vec::new(), &mut out);
    out
}

/// One `managedFields` entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: String,
    pub fields: FieldSet,
}

pub fn read_managed(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| {
                    let s = |k: &str| {
                        e.get(k)
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string()
                    };
                    Entry {
                        manager: s("manager"),
                        operation: s("operation"),
                        api_version: s("apiVersion"),
                        time: s("time"),
                        subresource: s("subresource"),
                        fields: e.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn write_managed(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.fields),
            });
            if !e.subresource.is_empty() {
                v["subresource"] = json!(e.subresource);
            }
            v
        })
        .collect();
    if let Some(Value::Object(meta)) = obj.get_mut("metadata") {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Who is writing, and how.
#[derive(Debug, Clone)]
pub struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    pub subresource: Subresource,
    pub time: &'a str,
}

fn entry_mut<'e>(entries: &'e mut Vec<Entry>, w: &Writer, op: &str) -> &'e mut Entry {
    let pos = entries.iter().position(|e| {
        e.manager == w.manager && e.operation == op && e.subresource == w.subresource.as_str()
    });
    let i = match pos {
        Some(i) => i,
        None => {
            entries.push(Entry {
                manager: w.manager.into(),
                operation: op.into(),
                api_version: w.api_version.into(),
                time: w.time.into(),
                subresource: w.subresource.as_str().into(),
                fields: FieldSet::new(),
            });
            entries.len() - 1
        }
    };
    let e = &mut entries[i];
    e.time = w.time.into();
    e.api_version = w.api_version.into();
    e
}

/// Record a non-apply write (create, update, patch): the writer owns what it changed.
pub fn record_update(old: &Value, new: &mut Value, w: &Writer) {
    let mut entries = read_managed(old);
    let new_set = fields_of(new);
    let old_set = fields_of(old);
    let changed: FieldSet = new_set
        .iter()
        .filter(|p| value_at(old, p) != value_at(new, p))
        .cloned()
        .collect();
    let removed: FieldSet = old_set.difference(&new_set).cloned().collect();
    if changed.is_empty() && removed.is_empty() {
        write_managed(new, &entries);
        return;
    }
    for e in entries.iter_mut() {
        e.fields
            .retain(|p| !changed.contains(p) && !removed.contains(p));
    }
    entry_mut(&mut entries, w, "Update").fields.extend(changed);
    write_managed(new, &entries);
}

/// Merge an applied configuration into the live object: maps recursively,
/// associative lists by key, set lists as unions, atomic lists replaced.
fn merge_applied(live: &Value, applied: &Value, field: &str) -> Value {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            let mut out = l.clone();
            for (k, v) in a {
                let merged = merge_applied(l.get(k).unwrap_or(&Value::Null), v, k);
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(l), Value::Array(a)) if is_set_list(field) => {
            let mut out = l.clone();
            for i in a {
                if !out.contains(i) {
                    out.push(i.clone());
                }
            }
            Value::Array(out)
        }
        (Value::Array(l), Value::Array(a)) if a.iter().all(|i| merge_key(field, i).is_some()) => {
            let mut out = l.clone();
            for i in a {
                let Some(key) = merge_key(field, i) else {
                    continue;
                };
                match out.iter().position(|o| o.get(key) == i.get(key)) {
                    Some(p) => out[p] = merge_applied(&out[p], i, ""),
                    None => out.push(i.clone()),
                }
            }
            Value::Array(out)
        }
        _ => applied.clone(),
    }
}

/// Server-side apply of `applied` onto `live` (Null when creating). Returns the
/// new object, or the (manager, field) conflicts when `force` is false.
pub fn apply(
    live: &Value,
    applied: &Value,
    w: &Writer,
    force: bool,
) -> Result<Value, Vec<(String, String)>> {
    let mut entries = read_managed(live);
    let applied_set = fields_of(applied);
    let mut conflicts = Vec::new();
    let mut conflicting = FieldSet::new();
    for e in &entries {
        if e.manager == w.manager {
            continue;
        }
        for p in e.fields.intersection(&applied_set) {
            if p.last().is_some_and(|l| l == ".") {
                continue;
            }
            if value_at(live, p) != value_at(applied, p) {
                conflicts.push((e.manager.clone(), display(p)));
                conflicting.insert(p.clone());
            }
        }
    }
    if !conflicts.is_empty() && !force {
        conflicts.sort();
        conflicts.dedup();
        return Err(conflicts);
    }
    for e in entries.iter_mut().filter(|e| e.manager != w.manager) {
        e.fields.retain(|p| !conflicting.contains(p));
    }
    let previous: FieldSet = entries
        .iter()
        .filter(|e| {
            e.manager == w.manager
                && e.operation == "Apply"
                && e.subresource == w.subresource.as_str()
        })
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    let others: FieldSet = entries
        .iter()
        .filter(|e| !(e.manager == w.manager && e.operation == "Apply"))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    let mut new = if live.is_null() {
        json!({})
    } else {
        live.clone()
    };
    // Deepest first, so removing an item does not hide the removal of its fields.
    let mut gone: Vec<&Path> = previous
        .iter()
        .filter(|p| !applied_set.contains(*p) && !others.contains(*p))
        .collect();
    gone.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in gone {
        remove_path(&mut new, p);
    }
    let mut new = merge_applied(&new, applied, "");
    entry_mut(&mut entries, w, "Apply").fields = applied_set;
    write_managed(&mut new, &entries);
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(m: &str) -> Writer<'_> {
        Writer {
            manager: m,
            api_version: "apps/v1",
            subresource: Subresource::Main,
            time: "t",
        }
    }

    #[test]
    fn fieldsv1_round_trip() {
        let o = json!({"metadata": {"labels": {"a": "1"}, "finalizers": ["x"]},
                       "spec": {"containers": [{"name": "c", "image": "i"}], "replicas": 2}});
        let set = fields_of(&o);
        assert!(set.contains(&vec!["f:spec".to_string(), "f:replicas".to_string()]));
        assert_eq!(from_fields_v1(&to_fields_v1(&set)), set);
    }

    #[test]
    fn apply_conflicts_force_and_removal() {
        let a1 = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 1}});
        let live = apply(&Value::Null, &a1, &w("one"), false).unwrap_or_default();
        let a2 = json!({"spec": {"replicas": 3}});
        let err = apply(&live, &a2, &w("two"), false)
            .err()
            .unwrap_or_default();
        assert_eq!(err, vec![("one".to_string(), ".spec.replicas".to_string())]);
        let forced = apply(&live, &a2, &w("two"), true).unwrap_or_default();
        assert_eq!(forced.pointer("/spec/replicas"), Some(&json!(3)));
        // "one" drops label b and replicas (now owned by "two"): b goes, replicas stays.
        let a3 = json!({"metadata": {"labels": {"a": "1"}}});
        let after = apply(&forced, &a3, &w("one"), false).unwrap_or_default();
        assert_eq!(after.pointer("/metadata/labels"), Some(&json!({"a": "1"})));
        assert_eq!(after.pointer("/spec/replicas"), Some(&json!(3)));
    }
}
