//! What the cluster looked like before Installation `default` existed, captured by
//! create-installation and kept in the state dir: the takeover starts after the
//! operator has changed these objects, and the way back restores them from here.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::facts::int_at;
use super::nodes::list_nodes;
use super::refs::{
    CALICO_SYSTEM, calico_node_binding, calico_node_role, kube_system, kube_system_node,
    kube_system_typha, operator_ref, tigera_status_ref,
};
use super::world::World;
use crate::cluster::objects::{ObjRef, strip_server_fields};
use crate::engine::state_dir::{read_json, write_atomic};

/// create-installation's capture, kept in the state dir for the takeover's rollback
/// (the takeover starts after the operator has changed these objects).
pub const PRE_OPERATOR_FILE: &str = "pre-operator-state.json";

/// Objects the operator's migration changes or deletes (docs/upstream.md, "The
/// operator's migration"), in the order they are restored: the DaemonSet last.
pub fn operator_touched() -> Vec<ObjRef> {
    vec![
        kube_system("v1", "ConfigMap", "kubernetes-services-endpoint"),
        kube_system_typha(),
        kube_system(
            "apps/v1",
            "Deployment",
            "calico-typha-horizontal-autoscaler",
        ),
        kube_system("apps/v1", "Deployment", "calico-kube-controllers"),
        // The operator replaces both with its own, owned by the Installation.
        calico_node_role(),
        calico_node_binding(),
        kube_system_node(),
    ]
}

/// One object as it was before the operator ran (None: it did not exist).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedObject {
    pub object: ObjRef,
    pub live: Option<Value>,
}

/// What the cluster looked like before Installation `default` existed: everything
/// the operator's migration changes, so that the way back can restore it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PreOperator {
    pub objects: Vec<SavedObject>,
    /// Each node's migration label (None: unlabelled, the normal case).
    pub node_labels: BTreeMap<String, Option<String>>,
    pub calico_system_existed: bool,
    pub tigera_status_existed: bool,
    /// The operator Deployment's replicas (None: no operator).
    pub operator_replicas: Option<i64>,
}

impl PreOperator {
    /// Read it from the cluster (changes nothing).
    pub async fn capture(world: &World) -> anyhow::Result<Self> {
        let mut objects = Vec::new();
        for r in operator_touched() {
            let live = world
                .objects
                .get(&r)
                .await?
                .map(|v| strip_server_fields(&v));
            objects.push(SavedObject { object: r, live });
        }
        let node_labels = list_nodes(&world.objects)
            .await?
            .into_iter()
            .map(|n| (n.name, n.label))
            .collect();
        let ns = ObjRef::new("v1", "Namespace", None, CALICO_SYSTEM);
        Ok(PreOperator {
            objects,
            node_labels,
            calico_system_existed: world.objects.get(&ns).await?.is_some(),
            tigera_status_existed: world.objects.get(&tigera_status_ref()).await?.is_some(),
            operator_replicas: world
                .objects
                .get(&operator_ref())
                .await?
                .map(|d| int_at(&d, "/spec/replicas").unwrap_or(1)),
        })
    }

    pub fn saved(&self, r: &ObjRef) -> Option<&Value> {
        self.objects
            .iter()
            .find(|s| &s.object == r)
            .and_then(|s| s.live.as_ref())
    }

    /// Keep it in the state dir.
    pub fn save_file(&self, dir: &Path) -> anyhow::Result<()> {
        Ok(write_atomic(
            &dir.join(PRE_OPERATOR_FILE),
            &serde_json::to_vec(self)?,
        )?)
    }

    pub fn load_file(dir: &Path) -> anyhow::Result<Option<Self>> {
        Ok(read_json(
            &dir.join(PRE_OPERATOR_FILE),
            "it is create-installation's capture",
        )?)
    }
}
