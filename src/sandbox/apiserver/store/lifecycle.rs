//! Deletion and what follows it: finalizers and `deletionTimestamp`,
//! `propagationPolicy` (Background / Foreground / Orphan, as the garbage
//! collector does it: k8s.io/kubernetes pkg/controller/garbagecollector),
//! namespace termination (pkg/controller/namespace/deletion), and CRDs that
//! stop being served with their objects when deleted (apiextensions-apiserver
//! pkg/controller/finalizer). All of it runs synchronously inside the store.

use serde_json::{Value, json};

use super::{
    EventType, Key, ListOptions, State, Store, meta_mut, meta_str, namespaces, now, present,
};
use crate::sandbox::apiserver::error::ApiError;
use crate::sandbox::apiserver::types::{GroupResource, Gvr, ResourceType, from_crd};

/// Options of a delete (query parameters or a `DeleteOptions` body).
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// "Background" (default), "Foreground" or "Orphan".
    pub propagation: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_resource_version: Option<String>,
    pub dry_run: bool,
}

/// The outcome of a delete: `deleted` is false while finalizers hold the object (HTTP 202).
#[derive(Debug, Clone)]
pub struct Deleted {
    pub deleted: bool,
    pub object: Value,
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn set_finalizers(obj: &mut Value, f: &[String]) {
    let meta = meta_mut(obj);
    if f.is_empty() {
        meta.remove("finalizers");
    } else {
        meta.insert("finalizers".into(), json!(f));
    }
}

fn owner_uids(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str).map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

impl State {
    /// Serve (or re-serve) the type a CRD defines.
    pub fn serve_crd(&mut self, crd: &Value) -> Result<(), ApiError> {
        let name = meta_str(crd, "name").to_string();
        let t = from_crd(crd).map_err(|errs| {
            ApiError::invalid(
                "CustomResourceDefinition",
                &name,
                &errs
                    .iter()
                    .map(|(f, m)| (*f, m.clone()))
                    .collect::<Vec<_>>(),
            )
        })?;
        self.registry.insert(t);
        Ok(())
    }

    /// Objects (group/resource, key) whose ownerReferences name `uid`.
    fn dependents(&self, uid: &str, ns: &str) -> Vec<(GroupResource, Key)> {
        let mut out = Vec::new();
        for (gr, map) in &self.objects {
            for (k, v) in map {
                if !ns.is_empty() && k.0 != ns {
                    continue;
                }
                if owner_uids(v).iter().any(|u| u == uid) {
                    out.push((gr.clone(), k.clone()));
                }
            }
        }
        out
    }

    fn find_uid(&self, uid: &str) -> Option<(GroupResource, Key)> {
        self.objects.iter().find_map(|(gr, map)| {
            map.iter()
                .find(|(_, v)| meta_str(v, "uid") == uid)
                .map(|(k, _)| (gr.clone(), k.clone()))
        })
    }

    /// Take an object out of the store and run what its removal triggers.
    pub fn remove(&mut self, rt: &ResourceType, obj: Value) -> Value {
        let gr = rt.gr();
        let ns = meta_str(&obj, "namespace").to_string();
        let uid = meta_str(&obj, "uid").to_string();
        let owners = owner_uids(&obj);
        let gone = self.commit(&gr, EventType::Deleted, obj, None);
        if rt.group == "apiextensions.k8s.io"
            && rt.resource == "customresourcedefinitions"
            && let Ok(t) = from_crd(&gone)
        {
            let cr = t.gr();
            let keys: Vec<Key> = self
                .objects
                .get(&cr)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            for k in keys {
                if let Some(o) = self.get_obj(&cr, &k.0, &k.1).cloned() {
                    self.commit(&cr, EventType::Deleted, o, None);
                }
            }
            self.objects.remove(&cr);
            self.registry.remove(&cr);
        }
        // Background garbage collection of dependents.
        let scope = if rt.namespaced { ns.as_str() } else { "" };
        for (dgr, key) in self.dependents(&uid, scope) {
            if let Some(drt) = self.registry.get(&dgr).cloned() {
                let _ = self.delete(&drt, &key.0, &key.1, &DeleteOptions::default());
            }
        }
        // An owner waiting in foreground deletion may now be free to go.
        for o in owners {
            if let Some((ogr, key)) = self.find_uid(&o)
                && let Some(ort) = self.registry.get(&ogr).cloned()
            {
                self.run_gc_finalizers(&ort, &key.0, &key.1);
            }
        }
        if !ns.is_empty() {
            self.finish_namespace(&ns);
        }
        gone
    }

    /// The garbage collector's part of finalizers `orphan` and `foregroundDeletion`.
    fn run_gc_finalizers(&mut self, rt: &ResourceType, ns: &str, name: &str) {
        let gr = rt.gr();
        let Some(obj) = self.get_obj(&gr, ns, name).cloned() else {
            return;
        };
        if meta_str(&obj, "deletionTimestamp").is_empty() {
            return;
        }
        let uid = meta_str(&obj, "uid").to_string();
        let scope = if rt.namespaced { ns } else { "" };
        let mut fins = finalizers(&obj);
        if fins.iter().any(|f| f == "orphan") {
            for (dgr, key) in self.dependents(&uid, scope) {
                if let Some(mut d) = self.get_obj(&dgr, &key.0, &key.1).cloned() {
                    let old = d.clone();
                    if let Some(Value::Array(refs)) = d.pointer_mut("/metadata/ownerReferences") {
                        refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid.as_str()));
                    }
                    self.commit(&dgr, EventType::Modified, d, Some(old));
                }
            }
            fins.retain(|f| f != "orphan");
        }
        if fins.iter().any(|f| f == "foregroundDeletion") {
            for (dgr, key) in self.dependents(&uid, scope) {
                if let Some(drt) = self.registry.get(&dgr).cloned() {
                    let _ = self.delete(&drt, &key.0, &key.1, &DeleteOptions::default());
                }
            }
            if self.dependents(&uid, scope).is_empty() {
                fins.retain(|f| f != "foregroundDeletion");
            }
        }
        let Some(current) = self.get_obj(&gr, ns, name).cloned() else {
            return;
        };
        if finalizers(&current) == fins {
            return;
        }
        let mut next = current.clone();
        set_finalizers(&mut next, &fins);
        if fins.is_empty() {
            self.remove(rt, next);
        } else {
            self.commit(&gr, EventType::Modified, next, Some(current));
        }
    }

    /// Remove a terminating namespace once it is empty and has no finalizers.
    fn finish_namespace(&mut self, ns: &str) {
        let nsgr = namespaces();
        let Some(n) = self.get_obj(&nsgr, "", ns).cloned() else {
            return;
        };
        if meta_str(&n, "deletionTimestamp").is_empty() || !finalizers(&n).is_empty() {
            return;
        }
        let occupied = self.objects.iter().any(|(gr, m)| {
            *gr != nsgr
                && m.range((ns.to_string(), String::new())..)
                    .next()
                    .is_some_and(|(k, _)| k.0 == ns)
        });
        if !occupied {
            self.commit(&nsgr, EventType::Deleted, n, None);
        }
    }

    pub fn delete(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Deleted, ApiError> {
        let gr = rt.gr();
        let old = self
            .get_obj(&gr, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        if let Some(uid) = &opts.precondition_uid
            && uid != meta_str(&old, "uid")
        {
            return Err(ApiError::conflict(
                rt,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&old, "uid")
                ),
            ));
        }
        if let Some(rv) = &opts.precondition_resource_version
            && rv != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::conflict(
                rt,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta_str(&old, "resourceVersion")
                ),
            ));
        }
        let policy = opts.propagation.as_deref().unwrap_or("Background");
        if !matches!(policy, "Background" | "Foreground" | "Orphan") {
            return Err(ApiError::invalid(
                "DeleteOptions",
                "",
                &[(
                    "propagationPolicy",
                    format!(
                        "Unsupported value: \"{policy}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
                    ),
                )],
            ));
        }
        if opts.dry_run {
            return Ok(Deleted {
                deleted: true,
                object: old,
            });
        }
        if !meta_str(&old, "deletionTimestamp").is_empty() {
            return Ok(Deleted {
                deleted: false,
                object: old,
            });
        }
        let mut fins = finalizers(&old);
        let gc = match policy {
            "Foreground" => Some("foregroundDeletion"),
            "Orphan" => Some("orphan"),
            _ => None,
        };
        if let Some(f) = gc
            && !fins.iter().any(|x| x == f)
        {
            fins.push(f.to_string());
        }
        let is_ns = gr == namespaces();
        if fins.is_empty() && !is_ns {
            return Ok(Deleted {
                deleted: true,
                object: self.remove(rt, old),
            });
        }
        let mut marked = old.clone();
        set_finalizers(&mut marked, &fins);
        {
            let meta = meta_mut(&mut marked);
            meta.insert("deletionTimestamp".into(), json!(now()));
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
        }
        if is_ns {
            marked["status"] = json!({"phase": "Terminating"});
        }
        let marked = self.commit(&gr, EventType::Modified, marked, Some(old));
        if is_ns {
            let contents: Vec<(GroupResource, Key)> = self
                .objects
                .iter()
                .filter(|(g, _)| **g != gr)
                .flat_map(|(g, m)| {
                    m.range((name.to_string(), String::new())..)
                        .take_while(|(k, _)| k.0 == name)
                        .map(|(k, _)| (g.clone(), k.clone()))
                        .collect::<Vec<_>>()
                })
                .collect();
            for (g, k) in contents {
                if let Some(crt) = self.registry.get(&g).cloned() {
                    let _ = self.delete(&crt, &k.0, &k.1, &DeleteOptions::default());
                }
            }
            self.finish_namespace(name);
        } else {
            self.run_gc_finalizers(rt, ns, name);
        }
        match self.get_obj(&gr, ns, name) {
            Some(o) => Ok(Deleted {
                deleted: false,
                object: o.clone(),
            }),
            None => Ok(Deleted {
                deleted: true,
                object: marked,
            }),
        }
    }
}

impl Store {
    pub fn delete(
        &self,
        gvr: &Gvr,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Deleted, ApiError> {
        let mut st = self.lock();
        let rt = st.rt(gvr)?;
        let ns = if rt.namespaced { ns } else { "" };
        let mut d = st.delete(&rt, ns, name, opts)?;
        d.object = present(d.object, &rt, &gvr.version);
        Ok(d)
    }

    /// DELETE on a collection: every object matching the selectors.
    pub fn delete_collection(
        &self,
        gvr: &Gvr,
        ns: Option<&str>,
        list: &ListOptions,
        opts: &DeleteOptions,
    ) -> Result<Vec<Value>, ApiError> {
        let mut st = self.lock();
        let rt = st.rt(gvr)?;
        let ns = if rt.namespaced {
            ns.filter(|n| !n.is_empty())
        } else {
            None
        };
        let all = ListOptions {
            limit: None,
            continue_token: None,
            ..list.clone()
        };
        let page = st.list(&rt, &gvr.version, ns, &all)?;
        let mut out = Vec::new();
        for item in page.items {
            let (n, name) = (
                meta_str(&item, "namespace").to_string(),
                meta_str(&item, "name").to_string(),
            );
            if let Ok(d) = st.delete(&rt, &n, &name, opts) {
                out.push(present(d.object, &rt, &gvr.version));
            }
        }
        Ok(out)
    }
}
