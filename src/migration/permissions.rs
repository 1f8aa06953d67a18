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
    for verb in ["get", "list", "create", "delete", "patch"] {
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
    for verb in ["get", "list", "create", "patch", "delete"] {
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
    ] {
        v.push(p("list", "crd.projectcalico.org", res, None));
    }
    v.push(p(
        "patch",
        "crd.projectcalico.org",
        "felixconfigurations",
        None,
    ));
    v.push(p("get", "operator.tigera.io", "tigerastatuses", None));
    v.push(p("create", "", "pods/exec", None));
    v.sort();
    v.dedup();
    v
}
