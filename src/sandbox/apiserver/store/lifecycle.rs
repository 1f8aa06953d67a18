//! Deletion and what follows it: finalizers and `deletionTimestamp`,
//! `propagationPolicy` (Background / Foreground / Orphan, as the garbage
//! collector does it: k8s.io/kubernetes pkg/controller/garbagecollector),
//! namespace termination (pkg/controller/namespace/deletion), and CRDs that
//! stop being served with their objects when deleted (see [`CRD_CLEANUP`]). All of it
//! runs synchronously inside the store.

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

/// The finalizer the API server puts on a CRD being deleted, held until every object of
/// it is gone. As k8s.io/apiextensions-apiserver v0.34.10 does it:
/// `pkg/registry/customresourcedefinition/etcd.go` lines 118-161 (the first DELETE adds
/// this finalizer and condition `Terminating` True, reason `InstanceDeletionPending`),
/// `pkg/controller/finalizer/crd_finalizer.go` lines 112-175 (`sync`: condition
/// `InstanceDeletionInProgress`, every instance deleted, then the finalizer removed) and
/// 181-263 (`deleteInstances`: a DeleteCollection per namespace, through the normal
/// delete path, so an object's own finalizers hold it and with it the CRD; once none is
/// left, `InstanceDeletionCompleted`). The constant is
/// `pkg/apis/apiextensions/v1/types.go` line 381. While the CRD is terminating, creates
/// of its objects are refused (`pkg/apiserver/customresource_handler.go` lines 391-393,
/// 1476: 403 "create not allowed while custom resource definition is terminating").
pub const CRD_CLEANUP: &str = "customresourcecleanup.apiextensions.k8s.io";

fn is_crd_type(rt: &ResourceType) -> bool {
    rt.group == "apiextensions.k8s.io" && rt.resource == "customresourcedefinitions"
}

pub(super) fn crds() -> GroupResource {
    GroupResource {
        group: "apiextensions.k8s.io".into(),
        resource: "customresourcedefinitions".into(),
    }
}

/// Set the CRD's `Terminating` condition, as `SetCRDCondition` does.
fn set_terminating(crd: &mut Value, status: &str, reason: &str, message: &str) {
    if !crd["status"].is_object() {
        crd["status"] = json!({});
    }
    let cond = json!({"type": "Terminating", "status": status, "reason": reason,
                      "message": message, "lastTransitionTime": now()});
    let conds = &mut crd["status"]["conditions"];
    if !conds.is_array() {
        *conds = json!([]);
    }
    if let Some(list) = conds.as_array_mut() {
        match list.iter_mut().find(|c| c["type"] == "Terminating") {
            Some(c) if c["status"] == status => {
                c["reason"] = json!(reason);
                c["message"] = json!(message);
            }
            Some(c) => *c = cond,
            None => list.push(cond),
        }
    }
}

/// The CRD of custom type `rt` when it is being deleted: objects of it may not be created.
pub(super) fn terminating_crd(st: &State, rt: &ResourceType) -> bool {
    rt.custom
        && st
            .get_obj(&crds(), "", &format!("{}.{}", rt.resource, rt.group))
            .is_some_and(|c| !meta_str(c, "deletionTimestamp").is_empty())
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
        // The last object of a terminating CRD frees it.
        if rt.custom {
            self.finish_crd_cleanup(&format!("{}.{}", rt.resource, rt.group));
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

    /// The CRD finalizer's work on CRD `name` once it is marked for deletion: delete
    /// every object of it (each through the normal delete path), then finish.
    fn clean_up_crd(&mut self, name: &str) {
        let Some(mut crd) = self.get_obj(&crds(), "", name).cloned() else {
            return;
        };
        if meta_str(&crd, "deletionTimestamp").is_empty()
            || !finalizers(&crd).iter().any(|f| f == CRD_CLEANUP)
        {
            return;
        }
        let old = crd.clone();
        set_terminating(
            &mut crd,
            "True",
            "InstanceDeletionInProgress",
            "CustomResource deletion is in progress",
        );
        self.commit(&crds(), EventType::Modified, crd.clone(), Some(old));
        if let Ok(t) = from_crd(&crd)
            && let Some(crt) = self.registry.get(&t.gr()).cloned()
        {
            let keys: Vec<Key> = self
                .objects
                .get(&t.gr())
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            for k in keys {
                let _ = self.delete(&crt, &k.0, &k.1, &DeleteOptions::default());
            }
        }
        self.finish_crd_cleanup(name);
    }

    /// Drop [`CRD_CLEANUP`] from terminating CRD `name` once no object of it is left,
    /// and remove the CRD when no other finalizer holds it.
    fn finish_crd_cleanup(&mut self, name: &str) {
        let Some(crd) = self.get_obj(&crds(), "", name).cloned() else {
            return;
        };
        let mut fins = finalizers(&crd);
        if meta_str(&crd, "deletionTimestamp").is_empty() || !fins.iter().any(|f| f == CRD_CLEANUP)
        {
            return;
        }
        let left = from_crd(&crd)
            .ok()
            .and_then(|t| self.objects.get(&t.gr()).map(|m| m.len()))
            .unwrap_or(0);
        if left > 0 {
            return;
        }
        let Some(rt) = self.registry.get(&crds()).cloned() else {
            return;
        };
        let mut next = crd.clone();
        set_terminating(
            &mut next,
            "False",
            "InstanceDeletionCompleted",
            "removed all instances",
        );
        fins.retain(|f| f != CRD_CLEANUP);
        set_finalizers(&mut next, &fins);
        if fins.is_empty() {
            self.remove(&rt, next);
        } else {
            self.commit(&crds(), EventType::Modified, next, Some(crd));
        }
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
        let is_crd = is_crd_type(rt);
        if is_crd && !fins.iter().any(|x| x == CRD_CLEANUP) {
            fins.push(CRD_CLEANUP.to_string());
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
        if is_crd {
            set_terminating(
                &mut marked,
                "True",
                "InstanceDeletionPending",
                "CustomResourceDefinition marked for deletion; CustomResource deletion will begin soon",
            );
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
            if is_crd {
                self.clean_up_crd(name);
            }
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
