//! The policy objects the migration must never lose: which kinds, how they are
//! read from the cluster, the copy the baseline keeps in the state dir and how a
//! live set is compared with it.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::facts;
use super::world::World;
use crate::cluster::objects::{ObjRef, strip_server_fields};
use crate::engine::state_dir::{read_json, write_atomic};

/// The policy kinds the migration must never lose: (apiVersion, kind).
pub const POLICY_KINDS: [(&str, &str); 6] = [
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("crd.projectcalico.org/v1", "NetworkPolicy"),
    ("crd.projectcalico.org/v1", "GlobalNetworkPolicy"),
    ("crd.projectcalico.org/v1", "GlobalNetworkSet"),
    ("crd.projectcalico.org/v1", "NetworkSet"),
    ("crd.projectcalico.org/v1", "HostEndpoint"),
];

/// Every policy object of the kinds the migration must never lose, stripped; the
/// probe workload's own policies are not the cluster's.
pub async fn live_policies(world: &World) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for (api, kind) in POLICY_KINDS {
        let list = world.objects.list(api, kind, None, None).await?;
        out.extend(
            list.iter()
                .filter(|o| {
                    !facts::str_at(o, "/metadata/namespace")
                        .is_some_and(crate::checks::workload::is_probe_namespace)
                })
                .map(strip_server_fields),
        );
    }
    Ok(out)
}

/// File in the state dir holding the baseline's policy objects.
pub const BASELINE_POLICIES_FILE: &str = "apply-baseline-policies.json";

/// The policy objects as the baseline saw them; kept as a `v1 List`, so that
/// `kubectl apply -f` of the file restores them.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BaselinePolicies {
    #[serde(default = "list_api_version")]
    pub api_version: String,
    #[serde(default = "list_kind")]
    pub kind: String,
    #[serde(rename = "items")]
    pub objects: Vec<Value>,
}

fn list_api_version() -> String {
    "v1".into()
}

fn list_kind() -> String {
    "List".into()
}

/// How a live policy set differs from the baseline's, by `Kind namespace/name`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyChanges {
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub added: Vec<String>,
}

impl BaselinePolicies {
    pub fn new(objects: Vec<Value>) -> Self {
        BaselinePolicies {
            api_version: list_api_version(),
            kind: list_kind(),
            objects,
        }
    }

    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        Ok(write_atomic(
            &dir.join(BASELINE_POLICIES_FILE),
            &serde_json::to_vec(self)?,
        )?)
    }

    pub fn load(dir: &Path) -> anyhow::Result<Option<Self>> {
        Ok(read_json(
            &dir.join(BASELINE_POLICIES_FILE),
            "it is the baseline's copy of the policy objects",
        )?)
    }

    /// Compare with `live` (stripped objects), ignoring server-managed fields.
    pub fn compare(&self, live: &[Value]) -> PolicyChanges {
        let key = |o: &Value| ObjRef::of(o).map(|r| format!("{} {r}", r.api_version));
        let index = |objs: &[Value]| -> BTreeMap<String, Value> {
            objs.iter()
                .filter_map(|o| Some((key(o)?, strip_server_fields(o))))
                .collect()
        };
        let (base, now) = (index(&self.objects), index(live));
        let mut out = PolicyChanges::default();
        for (k, v) in &base {
            match now.get(k) {
                None => out.removed.push(k.clone()),
                Some(l) if l != v => out.changed.push(k.clone()),
                Some(_) => {}
            }
        }
        out.added = now
            .keys()
            .filter(|k| !base.contains_key(*k))
            .cloned()
            .collect();
        out
    }
}

/// sha256 over the sorted policy objects without server fields: equal digests,
/// same policy set.
pub fn policy_digest(policies: &[Value]) -> String {
    let mut parts: Vec<Value> = policies.iter().map(strip_server_fields).collect();
    parts.sort_by_key(|p| p.to_string());
    facts::digest(&Value::Array(parts))
}
