//! Listed objects reduced, as each LIST page arrives, to what the plan reads of them.
//!
//! A large cluster holds tens of thousands of NetworkPolicies and Namespaces; kept whole
//! as JSON until the plan is built they dominated `plan`'s memory (docs/benchmarks.md,
//! "plan"). The plan only counts namespaces (and names the cluster by kube-system's UID)
//! and counts and digests policies, so those collections keep a small [`Reduced`] per
//! object and the page they came in is dropped at once.

use serde::Serialize;
use serde_json::Value;

/// Metadata fields the API server manages: left out of digests and drift, since they
/// move without anyone changing the object.
pub const SERVER_FIELDS: [&str; 6] = [
    "resourceVersion",
    "managedFields",
    "generation",
    "creationTimestamp",
    "uid",
    "selfLink",
];

/// Remove [`SERVER_FIELDS`] and `status` from `o`, in place.
pub fn strip_server_fields(o: &mut Value) {
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in SERVER_FIELDS {
            m.remove(k);
        }
        super::objects::drop_server_annotations(m);
    }
    if let Some(obj) = o.as_object_mut() {
        obj.remove("status");
    }
}

/// How much of each object of a collection the inventory keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The object as served (the few, small collections the rules read in depth).
    Whole,
    /// Namespace, name and the canonical JSON of the desired part (policies: the plan
    /// counts and digests them).
    Desired,
    /// Namespace, name and UID (namespaces: the plan counts them, and kube-system's
    /// UID identifies the cluster).
    Identity,
}

/// What the inventory keeps of one object of a [`Keep::Desired`] or [`Keep::Identity`]
/// collection. Boxed strings: no spare capacity per object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reduced {
    pub namespace: Box<str>,
    pub name: Box<str>,
    /// `metadata.uid`, kept under [`Keep::Identity`] only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<Box<str>>,
    /// Compact JSON of the object without [`SERVER_FIELDS`] and `status`, kept under
    /// [`Keep::Desired`] only. serde_json maps are sorted by key, so equal objects give
    /// equal text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desired: Option<Box<str>>,
}

/// Reduce one object, taken by value so its JSON is freed once reduced.
pub fn reduce(mut o: Value, keep: Keep) -> Reduced {
    let text = |o: &Value, p: &str| -> Box<str> {
        o.pointer(p).and_then(Value::as_str).unwrap_or("").into()
    };
    let namespace = text(&o, "/metadata/namespace");
    let name = text(&o, "/metadata/name");
    let uid = (keep == Keep::Identity).then(|| text(&o, "/metadata/uid"));
    let desired = (keep == Keep::Desired).then(|| {
        strip_server_fields(&mut o);
        o.to_string().into_boxed_str()
    });
    Reduced {
        namespace,
        name,
        uid,
        desired,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> Value {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "np", "namespace": "team", "uid": "u-1",
                "resourceVersion": "7", "labels": {"b": "2", "a": "1"}},
            "spec": {"podSelector": {}}, "status": {"x": 1}})
    }

    #[test]
    fn desired_keeps_the_object_without_what_the_server_manages() {
        let r = reduce(policy(), Keep::Desired);
        assert_eq!((&*r.namespace, &*r.name, r.uid), ("team", "np", None));
        let mut want = policy();
        strip_server_fields(&mut want);
        assert_eq!(r.desired.as_deref(), Some(want.to_string().as_str()));
        let text = r.desired.unwrap_or_default();
        assert!(!text.contains("u-1") && !text.contains("status"), "{text}");
        assert!(text.contains(r#""labels":{"a":"1","b":"2"}"#), "{text}");
    }

    #[test]
    fn identity_keeps_the_uid_and_no_body() {
        let r = reduce(policy(), Keep::Identity);
        assert_eq!(r.uid.as_deref(), Some("u-1"));
        assert_eq!(r.desired, None);
    }
}
