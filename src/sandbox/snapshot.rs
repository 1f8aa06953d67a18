//! The sandbox's objects as a comparable snapshot: "the cluster equals the
//! baseline, object by object, ignoring server-managed fields" for rollback tests
//! and rehearsals.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{ApiError, Gvr, ListOptions, Sandbox};
use crate::cluster::objects::strip_server_fields;

/// Resources a snapshot leaves out: what controllers and the tool's checks create and
/// remove on their own (pods, events, leases, endpoints, replica sets, a DaemonSet's
/// revisions).
const VOLATILE: &[&str] = &[
    "pods",
    "events",
    "leases",
    "endpoints",
    "endpointslices",
    "replicasets",
    "controllerrevisions",
];

/// Namespaces left out: the probe workload and the sandbox's own control objects.
fn ignored_namespace(ns: &str) -> bool {
    crate::checks::workload::is_probe_namespace(ns) || ns == "sandbox-system"
}

/// Every stored object except volatile ones, keyed `resource.group namespace/name`,
/// without server-managed metadata or status.
pub fn snapshot(sb: &Sandbox) -> Result<BTreeMap<String, Value>, ApiError> {
    let mut out = BTreeMap::new();
    for rt in sb.store().types() {
        if VOLATILE.contains(&rt.resource.as_str()) {
            continue;
        }
        let Some(version) = rt.versions.first() else {
            continue;
        };
        let gvr = Gvr::new(&rt.group, version, &rt.resource);
        for o in sb.store().list(&gvr, None, &ListOptions::default())?.items {
            let ns = o
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("");
            let name = o
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            if ignored_namespace(ns) || (rt.resource == "namespaces" && ignored_namespace(name)) {
                continue;
            }
            out.insert(
                format!("{}.{} {ns}/{name}", rt.resource, rt.group),
                strip_server_fields(&o),
            );
        }
    }
    Ok(out)
}

/// Keys whose objects differ between two snapshots (added, removed or changed).
pub fn differences(a: &BTreeMap<String, Value>, b: &BTreeMap<String, Value>) -> Vec<String> {
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}
