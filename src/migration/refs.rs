//! The names the migration shares: namespaces, labels and the references of the
//! objects more than one step (or a step and the plan) reads or writes. Defined once
//! here so that two parts can never disagree on which object they mean.

use crate::cluster::objects::ObjRef;

/// Where the aws-calico chart installs Calico.
pub const KUBE_SYSTEM: &str = "kube-system";
/// Where the operator renders Calico.
pub const CALICO_SYSTEM: &str = "calico-system";
/// Where the operator manifest installs the operator.
pub const OPERATOR_NAMESPACE: &str = "tigera-operator";
pub const OPERATOR_NAME: &str = "tigera-operator";

/// API group of the Calico CRDs (the `crd.projectcalico.org/v1` policies, pools...).
pub const CALICO_GROUP: &str = "crd.projectcalico.org";

/// The node label the operator's migration moves nodes with (tigera/operator
/// `pkg/controller/migration/namespace_migration.go`, `nodeSelectorKey`).
pub const MIGRATION_LABEL: &str = "projectcalico.org/operator-node-migration";
/// Its value for a node on the kube-system calico-node (`nodeSelectorValuePre`).
pub const PRE_OPERATOR: &str = "pre-operator";
/// Its value for a node on the calico-system calico-node (`nodeSelectorValuePost`).
pub const MIGRATED: &str = "migrated";

/// An object of the aws-calico install in kube-system.
pub fn kube_system(api_version: &str, kind: &str, name: &str) -> ObjRef {
    ObjRef::new(api_version, kind, Some(KUBE_SYSTEM), name)
}

/// The aws-calico DaemonSet.
pub fn kube_system_node() -> ObjRef {
    kube_system("apps/v1", "DaemonSet", "calico-node")
}

/// The aws-calico typha.
pub fn kube_system_typha() -> ObjRef {
    kube_system("apps/v1", "Deployment", "calico-typha")
}

/// The ClusterRole both installs' calico-node run under: the operator replaces it with its
/// own rendering, owned by the Installation (so deleting the Installation deletes it).
pub fn calico_node_role() -> ObjRef {
    ObjRef::new(
        "rbac.authorization.k8s.io/v1",
        "ClusterRole",
        None,
        "calico-node",
    )
}

/// The binding both installs' calico-node run under (the operator takes it over).
pub fn calico_node_binding() -> ObjRef {
    ObjRef::new(
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        None,
        "calico-node",
    )
}

/// The operator's DaemonSet.
pub fn calico_system_node() -> ObjRef {
    ObjRef::new("apps/v1", "DaemonSet", Some(CALICO_SYSTEM), "calico-node")
}

/// The operator's typha.
pub fn calico_system_typha() -> ObjRef {
    ObjRef::new("apps/v1", "Deployment", Some(CALICO_SYSTEM), "calico-typha")
}

/// What the operator creates in calico-system for the takeover (owned by the Installation).
pub fn calico_system_workloads() -> [ObjRef; 3] {
    [
        calico_system_node(),
        calico_system_typha(),
        ObjRef::new(
            "apps/v1",
            "Deployment",
            Some(CALICO_SYSTEM),
            "calico-kube-controllers",
        ),
    ]
}

/// The operator Deployment.
pub fn operator_ref() -> ObjRef {
    ObjRef::new(
        "apps/v1",
        "Deployment",
        Some(OPERATOR_NAMESPACE),
        OPERATOR_NAME,
    )
}

/// The Installation whose creation starts the operator's migration.
pub fn installation_ref() -> ObjRef {
    ObjRef::new("operator.tigera.io/v1", "Installation", None, "default")
}

/// Where the operator reports on Calico.
pub fn tigera_status_ref() -> ObjRef {
    ObjRef::new("operator.tigera.io/v1", "TigeraStatus", None, "calico")
}
