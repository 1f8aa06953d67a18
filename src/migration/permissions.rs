//! The permissions apply and rollback need, checked by `plan` up front.

use crate::cluster::access::Permission;

const fn p(
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    namespace: Option<&'static str>,
) -> Permission {
    Permission {
        verb,
        group,
        resource,
        namespace,
    }
}

const KS: Option<&str> = Some("kube-system");

/// Every verb the migration uses, by resource.
pub fn needed() -> Vec<Permission> {
    let mut v = Vec::new();
    for verb in ["get", "list", "patch", "update", "delete", "create"] {
        v.push(p(verb, "apps", "daemonsets", KS));
        v.push(p(verb, "apps", "deployments", KS));
    }
    // `update`: rollback restores objects whole (a replace).
    for verb in ["get", "list", "create", "delete", "patch", "update"] {
        v.push(p(verb, "", "secrets", KS));
        v.push(p(verb, "", "configmaps", KS));
        v.push(p(verb, "", "services", KS));
        v.push(p(verb, "policy", "poddisruptionbudgets", KS));
    }
    for verb in ["get", "create", "update"] {
        v.push(p(verb, "coordination.k8s.io", "leases", KS));
    }
    for verb in ["get", "list", "patch"] {
        v.push(p(verb, "", "nodes", None));
    }
    for verb in ["get", "list", "create", "patch", "update", "delete"] {
        v.push(p(
            verb,
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            None,
        ));
        v.push(p(verb, "operator.tigera.io", "installations", None));
        v.push(p(verb, "rbac.authorization.k8s.io", "clusterroles", None));
        v.push(p(
            verb,
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            None,
        ));
        v.push(p(verb, "", "namespaces", None));
    }
    v.push(p("list", "networking.k8s.io", "networkpolicies", None));
    for res in [
        "networkpolicies",
        "globalnetworkpolicies",
        "globalnetworksets",
        "networksets",
        "hostendpoints",
        "felixconfigurations",
        "ippools",
        // The checks' policy engine reads Tiers where Calico serves them.
        "tiers",
    ] {
        v.push(p("list", "crd.projectcalico.org", res, None));
    }
    v.push(p(
        "patch",
        "crd.projectcalico.org",
        "felixconfigurations",
        None,
    ));
    // align-versions' rollback deletes a CRD it created only when no object of it
    // exists: it lists the kinds Calico v3.30 adds (migration::calico_manifest).
    for res in [
        "bgpfilters",
        "caliconodestatuses",
        "ipamconfigs",
        "ipamhandles",
        "ipreservations",
        "kubecontrollersconfigurations",
        "stagedglobalnetworkpolicies",
        "stagedkubernetesnetworkpolicies",
        "stagednetworkpolicies",
    ] {
        v.push(p("list", "crd.projectcalico.org", res, None));
    }
    for res in ["adminnetworkpolicies", "baselineadminnetworkpolicies"] {
        v.push(p("list", "policy.networking.k8s.io", res, None));
    }
    // TigeraStatus: plan lists it; create-installation's rollback deletes the one the
    // operator made.
    for verb in ["get", "list", "delete"] {
        v.push(p(verb, "operator.tigera.io", "tigerastatuses", None));
    }
    v.push(p("list", "policy", "podsecuritypolicies", None));
    // calico-system and tigera-operator do not exist before the operator runs, so no
    // Role can be bound there in advance: the operator's calico-system DaemonSet (put
    // back on the migration selector and deleted by a rollback), the PDBs and
    // ConfigMaps plan reads there, and the operator's scale subresource (frozen and
    // started again) are granted cluster-wide.
    for verb in ["get", "list", "patch", "delete"] {
        v.push(p(verb, "apps", "daemonsets", None));
    }
    v.push(p("list", "policy", "poddisruptionbudgets", None));
    v.push(p("list", "", "configmaps", None));
    // Which calico-node pods are up to date: the DaemonSet's current revision names
    // them (rollout.rs).
    v.push(p("list", "apps", "controllerrevisions", None));
    for verb in ["get", "patch"] {
        v.push(p(verb, "apps", "deployments/scale", None));
    }
    // The chart's autoscaler Role and RoleBinding: detach-helm strips their Helm
    // metadata, cleanup-leftovers deletes them, rollback re-creates them.
    for verb in ["get", "create", "patch", "update", "delete"] {
        v.push(p(verb, "rbac.authorization.k8s.io", "roles", KS));
        v.push(p(verb, "rbac.authorization.k8s.io", "rolebindings", KS));
    }
    v.push(p("create", "", "pods/exec", None));
    v.sort();
    v.dedup();
    v
}
