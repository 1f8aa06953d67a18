//! PATCH (merge, JSON, strategic, server-side apply) and the scale subresource,
//! on top of the store's update path so every write shares its semantics
//! (k8s.io/apiserver pkg/endpoints/handlers/patch.go).

use serde_json::{Value, json};

use super::{Origin, State, Store, Write, WriteOptions, meta_mut, meta_str, now, present};
use crate::sandbox::apiserver::error::ApiError;
use crate::sandbox::apiserver::patch;
use crate::sandbox::apiserver::ssa;
use crate::sandbox::apiserver::types::{Gvr, ResourceType, Subresource};

/// The patch formats, by Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// application/merge-patch+json
    Merge,
    /// application/json-patch+json
    Json,
    /// application/strategic-merge-patch+json
    Strategic,
    /// application/apply-patch+yaml (server-side apply)
    Apply,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let base = ct.split(';').next().unwrap_or_default().trim();
        match base {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/json-patch+json" => Some(Self::Json),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// The autoscaling/v1 Scale view of an object.
pub fn scale_of(rt: &ResourceType, obj: &Value) -> Value {
    let paths = rt
        .scale
        .clone()
        .unwrap_or_else(|| crate::sandbox::apiserver::types::ScalePaths {
            spec_replicas: ".spec.replicas".into(),
            status_replicas: ".status.replicas".into(),
            label_selector: None,
        });
    let at = |p: &str| obj.pointer(&p.replace('.', "/")).cloned();
    let selector = match &paths.label_selector {
        Some(p) => at(p).and_then(|v| v.as_str().map(String::from)),
        None => obj
            .pointer("/spec/selector/matchLabels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            }),
    };
    let mut meta = json!({});
    for k in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = obj.pointer(&format!("/metadata/{k}")) {
            meta[k] = v.clone();
        }
    }
    let mut status = json!({"replicas": at(&paths.status_replicas).unwrap_or(json!(0))});
    if let Some(s) = selector {
        status["selector"] = json!(s);
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": meta,
        "spec": {"replicas": at(&paths.spec_replicas).unwrap_or(json!(0))},
        "status": status,
    })
}

fn parse_patch(kind: PatchKind, body: &[u8]) -> Result<Value, ApiError> {
    match kind {
        PatchKind::Apply => {
            let text = std::str::from_utf8(body)
                .map_err(|_| ApiError::bad_request("error decoding YAML: the body is not UTF-8"))?;
            serde_saphyr::from_str::<Value>(text)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
        }
        _ => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}"))),
    }
}

fn apply_patch(kind: PatchKind, current: &Value, p: &Value) -> Result<Value, ApiError> {
    let out = match kind {
        PatchKind::Merge => {
            if !p.is_object() {
                return Err(ApiError::bad_request(
                    "error decoding patch: a merge patch must be a JSON object",
                ));
            }
            Ok(patch::merge_patch(current, p))
        }
        PatchKind::Json => patch::json_patch(current, p),
        PatchKind::Strategic => {
            if !p.is_object() {
                return Err(ApiError::bad_request(
                    "error decoding patch: a strategic merge patch must be a JSON object",
                ));
            }
            patch::strategic_merge(current, p)
        }
        PatchKind::Apply => unreachable!("apply is not a patch of the current object"),
    };
    out.map_err(|e| {
        ApiError::new(
            422,
            "Invalid",
            format!("the server rejected our request due to an error in our request: {e}"),
        )
    })
}

impl Store {
    /// PATCH `name`, or its status or scale as `opts.subresource` says.
    /// Server-side apply creates the object when it does not exist.
    pub fn patch(
        &self,
        gvr: &Gvr,
        ns: &str,
        name: &str,
        kind: PatchKind,
        body: &[u8],
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let rt = st.rt(gvr)?;
        let sub = opts.subresource;
        let served = match sub {
            Subresource::Main => true,
            Subresource::Status => rt.status,
            Subresource::Scale => rt.scale.is_some(),
        };
        if !served {
            return Err(ApiError::no_route());
        }
        if kind == PatchKind::Strategic && rt.custom {
            return Err(ApiError::unsupported_media(
                "the body of the request was in an unknown format - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            ));
        }
        let p = parse_patch(kind, body)?;
        let ns = if rt.namespaced { ns } else { "" };
        let ns_owned = if rt.namespaced && ns.is_empty() {
            "default".to_string()
        } else {
            ns.to_string()
        };
        let ns = ns_owned.as_str();
        let time = now();
        let av = gvr.api_version();
        let existing = st.get_obj(&rt.gr(), ns, name).cloned();
        if kind == PatchKind::Apply {
            if opts.field_manager.as_deref().unwrap_or_default().is_empty() {
                return Err(ApiError::bad_request(
                    "PATCH requests with apply patch type require a fieldManager",
                ));
            }
            if !p.is_object() {
                return Err(ApiError::bad_request(
                    "error decoding YAML: the applied configuration must be an object",
                ));
            }
            for field in ["apiVersion", "kind"] {
                if p.get(field)
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    return Err(ApiError::bad_request(format!(
                        "invalid object: {field} must be set in an applied configuration"
                    )));
                }
            }
            let applied_name = meta_str(&p, "name");
            if !applied_name.is_empty() && applied_name != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({applied_name}) does not match the name on the URL ({name})"
                )));
            }
            let mut applied = p.clone();
            if let Value::Object(m) = &mut applied {
                if sub == Subresource::Status {
                    m.retain(|k, _| {
                        k == "status" || k == "apiVersion" || k == "kind" || k == "metadata"
                    });
                } else if rt.status {
                    m.remove("status");
                }
            }
            let w = Write {
                origin: Origin::Applied,
                ..Write::client(opts, &av, sub, &time)
            };
            // Applied at the request's version: the live object as that version reads.
            let live = existing
                .clone()
                .map(|o| present(o, &rt, &gvr.version))
                .unwrap_or(Value::Null);
            let mut merged = ssa::apply(&live, &applied, &w.by, opts.force)
                .map_err(|c| ApiError::apply_conflicts(&rt, name, &c))?;
            meta_mut(&mut merged).insert("name".into(), json!(name));
            return match existing {
                None => {
                    if rt.namespaced {
                        meta_mut(&mut merged).insert("namespace".into(), json!(ns));
                    }
                    st.create(&rt, &gvr.version, ns, merged, &w)
                }
                Some(_) => {
                    meta_mut(&mut merged).remove("resourceVersion");
                    st.update(&rt, &gvr.version, ns, name, merged, &w)
                }
            };
        }
        let current = existing
            .ok_or_else(|| crate::sandbox::apiserver::error::ApiError::not_found(&rt, name))?;
        let w = Write::client(opts, &av, sub, &time);
        if sub == Subresource::Scale {
            let scale = scale_of(&rt, &current);
            let next = apply_patch(kind, &scale, &p)?;
            return st.write_scale(&rt, &gvr.version, ns, name, &next, &w);
        }
        let view = present(current, &rt, &gvr.version);
        let next = apply_patch(kind, &view, &p)?;
        st.update(&rt, &gvr.version, ns, name, next, &w)
    }

    pub fn get_scale(&self, gvr: &Gvr, ns: &str, name: &str) -> Result<Value, ApiError> {
        let st = self.lock();
        let rt = st.rt(gvr)?;
        if rt.scale.is_none() {
            return Err(ApiError::no_route());
        }
        let obj = st
            .get_obj(&rt.gr(), ns, name)
            .ok_or_else(|| ApiError::not_found(&rt, name))?;
        Ok(scale_of(&rt, obj))
    }

    /// PUT on the scale subresource.
    pub fn update_scale(
        &self,
        gvr: &Gvr,
        ns: &str,
        name: &str,
        scale: &Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let rt = st.rt(gvr)?;
        if rt.scale.is_none() {
            return Err(ApiError::no_route());
        }
        let time = now();
        let av = gvr.api_version();
        let w = Write::client(opts, &av, Subresource::Scale, &time);
        st.write_scale(&rt, &gvr.version, ns, name, scale, &w)
    }
}

impl State {
    /// Set the replicas a Scale asks for on the object it views (the write is
    /// recorded as one through `scale`, its effect is the object's).
    fn write_scale(
        &mut self,
        rt: &ResourceType,
        version: &str,
        ns: &str,
        name: &str,
        scale: &Value,
        w: &Write,
    ) -> Result<Value, ApiError> {
        let current = self
            .get_obj(&rt.gr(), ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        let replicas = scale
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .ok_or_else(|| {
                ApiError::invalid(
                    "Scale",
                    name,
                    &[(
                        "spec.replicas",
                        "Required value: must be a non-negative integer".into(),
                    )],
                )
            })?;
        if replicas < 0 {
            return Err(ApiError::invalid(
                "Scale",
                name,
                &[(
                    "spec.replicas",
                    format!("Invalid value: {replicas}: must be greater than or equal to 0"),
                )],
            ));
        }
        let rv = meta_str(scale, "resourceVersion");
        if !rv.is_empty() && rv != meta_str(&current, "resourceVersion") {
            return Err(crate::sandbox::apiserver::error::ApiError::stale(rt, name));
        }
        let path = rt
            .scale
            .as_ref()
            .map(|s| s.spec_replicas.clone())
            .unwrap_or_else(|| ".spec.replicas".into());
        let mut next = present(current, rt, version);
        let mut cur = &mut next;
        let parts: Vec<&str> = path.trim_start_matches('.').split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            if i + 1 == parts.len() {
                cur[*part] = json!(replicas);
            } else {
                if !cur.get(*part).is_some_and(Value::is_object) {
                    cur[*part] = json!({});
                }
                cur = &mut cur[*part];
            }
        }
        meta_mut(&mut next).remove("resourceVersion");
        let updated = self.update(rt, version, ns, name, next, w)?;
        Ok(scale_of(rt, &updated))
    }
}
