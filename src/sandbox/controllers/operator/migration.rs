//! The migration, one action per call, in namespace_migration.go's order:
//! kube-controllers deleted, nodes labelled `pre-operator`, kube-system
//! calico-node's nodeSelector patched to that label and its rollout awaited,
//! typha autoscaler deleted, kube-system typha scaled down, calico-system
//! typha/calico-node (nodeSelector `migrated`) created and typha awaited,
//! nodes relabelled `migrated` one at a time (each waiting for its new
//! calico-node to be ready; nodes that join are picked up), calico-system
//! rollout awaited, kube-system calico-node / calico-typha / ConfigMap
//! kubernetes-services-endpoint deleted; later the migration nodeSelector and
//! the node labels are removed.

use serde_json::{Value, json};

use super::super::faults::ControllerFaults;
use super::super::nodes::MIGRATION_LABEL;
use super::super::{
    delete, deleting, deploy_gvr, ds_gvr, get, gvr, label, list, merge, name, nodes_gvr, owned_by,
    pod_ready, pods_gvr, uid, wopts,
};
use super::status::{Health, report};
use super::{FINALIZER, MANAGER, installations, operator_version};
use crate::sandbox::scenario::operator::{
    OPERATOR_CALICO_VERSION, calico_of_operator, calico_system_workloads, calico_typha_rbac,
    operator_calico_node_rbac,
};
use crate::sandbox::{Sandbox, Subresource};

const KS: &str = "kube-system";
const CS: &str = "calico-system";

/// common.GetExpectedTyphaScale: one per 200 nodes plus one spare, at least 3, at most the nodes.
pub fn expected_typha_replicas(nodes: usize) -> usize {
    ((nodes / 200) + 2).max(3).min(nodes.max(1))
}

/// What kube-system typha is scaled to before calico-system typha starts
/// (docs/upstream.md, "The operator's migration", step 4).
pub fn kube_system_typha_target(nodes: usize, current: usize) -> usize {
    match nodes {
        0 | 1 => 0,
        2 | 3 => 1,
        n => current.min(n.saturating_sub(expected_typha_replicas(n))),
    }
}

fn replicas(d: &Value) -> usize {
    d.pointer("/spec/replicas")
        .and_then(Value::as_u64)
        .unwrap_or(1) as usize
}

fn ds_ready(ds: &Value) -> bool {
    let n = |k: &str| {
        ds.pointer(&format!("/status/{k}"))
            .and_then(Value::as_i64)
            .unwrap_or(-1)
    };
    let generation_now = ds
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    n("observedGeneration") == generation_now
        && n("desiredNumberScheduled") == n("numberReady")
        && n("desiredNumberScheduled") == n("updatedNumberScheduled")
}

pub fn act(sb: &Sandbox, op: &Value, install: &Value, f: &ControllerFaults) {
    // The operator is the release its image says; it installs that release's Calico.
    let tag = operator_version(op);
    let Some(version) = calico_of_operator(&tag) else {
        let message = format!(
            "the sandbox does not model tigera-operator {tag}: it knows the releases of \
             plans/versions.yaml that a profile can pin (v1.17.x, v1.20.x, v1.38.6)"
        );
        let degraded = Health::Degraded {
            reason: "ResourceRenderingError",
            message,
        };
        report(sb, &degraded, install, OPERATOR_CALICO_VERSION);
        return;
    };
    let ig = installations();
    if deleting(install) {
        // v1.38.6 deletes ClusterRole and ClusterRoleBinding calico-node by name once the
        // Installation terminates (pkg/render/node.go:235-245: with CanRemoveCNIFinalizer
        // every object it renders is deleted, the calico-node role and binding included),
        // whoever they belong to by then. The older lines leave that to the garbage
        // collector (the ownerReferences).
        if version.starts_with("v3.30.") {
            for plural in ["clusterroles", "clusterrolebindings"] {
                let g = gvr("rbac.authorization.k8s.io", "v1", plural);
                if get(sb, &g, "", "calico-node").is_some() {
                    let _ = sb
                        .store()
                        .delete(&g, "", "calico-node", &Default::default());
                }
            }
        }
        // calico issue 6629: only a running operator releases its finalizer.
        let rest: Vec<Value> = install
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .map(|v| {
                v.iter()
                    .filter(|x| x.as_str() != Some(FINALIZER))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let _ = merge(
            sb,
            &ig,
            "",
            "default",
            Subresource::Main,
            &json!({"metadata": {"finalizers": rest}}),
            MANAGER,
        );
        return;
    }
    let has_finalizer = install
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|v| v.iter().any(|x| x.as_str() == Some(FINALIZER)));
    if !has_finalizer {
        let mut fins = install
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        fins.push(json!(FINALIZER));
        let _ = merge(
            sb,
            &ig,
            "",
            "default",
            Subresource::Main,
            &json!({"metadata": {"finalizers": fins}}),
            MANAGER,
        );
        return;
    }
    let old_ds = get(sb, &ds_gvr(), KS, "calico-node").filter(|d| !deleting(d));
    match old_ds {
        Some(ds) => {
            let typha = get(sb, &deploy_gvr(), KS, "calico-typha");
            if let Err(e) =
                super::convert::check_daemonset(&ds, typha.as_ref(), &operator_version(op))
            {
                let message = format!("{}: {e}", super::DEGRADED_PREFIX);
                report(
                    sb,
                    &Health::Degraded {
                        reason: "MigrationError",
                        message,
                    },
                    install,
                    version,
                );
                return;
            }
            let waiting = migrate_one(sb, &ds, install, f, version);
            report(sb, &Health::Progressing(waiting), install, version);
        }
        None => {
            let h = finish(sb, install, version);
            report(sb, &h, install, version);
        }
    }
}

fn nodes(sb: &Sandbox) -> Vec<Value> {
    list(sb, &nodes_gvr(), None)
        .into_iter()
        .filter(|n| !deleting(n))
        .collect()
}

fn set_node_label(sb: &Sandbox, node: &str, value: Option<&str>) -> bool {
    merge(
        sb,
        &nodes_gvr(),
        "",
        node,
        Subresource::Main,
        &json!({"metadata": {"labels": {MIGRATION_LABEL: value}}}),
        MANAGER,
    )
    .is_ok()
}

/// One migration action; returns what the operator is waiting for (the Progressing message).
fn migrate_one(
    sb: &Sandbox,
    ds: &Value,
    install: &Value,
    f: &ControllerFaults,
    calico_version: &str,
) -> String {
    let dg = deploy_gvr();
    if get(sb, &dg, KS, "calico-kube-controllers").is_some() {
        delete(sb, &dg, KS, "calico-kube-controllers");
        return "Deleting kube-system calico-kube-controllers".into();
    }
    let all = nodes(sb);
    let unlabelled: Vec<&Value> = all
        .iter()
        .filter(|n| label(n, MIGRATION_LABEL).is_none())
        .collect();
    let started = ds
        .pointer(&format!(
            "/spec/template/spec/nodeSelector/{}",
            MIGRATION_LABEL.replace('/', "~1")
        ))
        .is_some();
    if !started && !unlabelled.is_empty() {
        for n in unlabelled {
            set_node_label(sb, name(n), Some("pre-operator"));
        }
        return "Labelling nodes for migration".into();
    }
    if !started {
        let _ = merge(
            sb,
            &ds_gvr(),
            KS,
            "calico-node",
            Subresource::Main,
            &json!({"spec": {"template": {"spec": {"nodeSelector": {MIGRATION_LABEL: "pre-operator"}}}}}),
            MANAGER,
        );
        return "Waiting for kube-system calico-node with the updated nodeSelector".into();
    }
    // Nodes that joined since: into the kube-system DaemonSet first.
    for n in &unlabelled {
        set_node_label(sb, name(n), Some("pre-operator"));
    }
    let calico_system_exists = get(sb, &ds_gvr(), CS, "calico-node").is_some();
    if !calico_system_exists && !ds_ready(ds) {
        // tigera/operator issue 1564.
        return "kube-system node DaemonSet is not ready with the updated nodeSelector".into();
    }
    if get(sb, &dg, KS, "calico-typha-horizontal-autoscaler").is_some() {
        delete(sb, &dg, KS, "calico-typha-horizontal-autoscaler");
        return "Deleting the typha autoscaler".into();
    }
    if let Some(t) = get(sb, &dg, KS, "calico-typha") {
        let target = kube_system_typha_target(all.len(), replicas(&t));
        if replicas(&t) > target && !calico_system_exists {
            let _ = merge(
                sb,
                &dg,
                KS,
                "calico-typha",
                Subresource::Main,
                &json!({"spec": {"replicas": target}}),
                MANAGER,
            );
            return "Scaling down kube-system typha".into();
        }
    }
    if !calico_system_exists {
        create_calico_system(sb, install, all.len(), calico_version);
        return "Waiting for calico-system typha".into();
    }
    let typha_ready = get(sb, &dg, CS, "calico-typha")
        .and_then(|t| t.pointer("/status/readyReplicas").and_then(Value::as_u64))
        .unwrap_or(0)
        >= 1;
    if !typha_ready {
        return "Waiting for calico-system typha".into();
    }
    let new_ds = get(sb, &ds_gvr(), CS, "calico-node");
    let cs_uid = new_ds
        .as_ref()
        .map(|d| uid(d).to_string())
        .unwrap_or_default();
    let pods = list(sb, &pods_gvr(), Some(CS));
    let new_ready_on = |node: &str| {
        pods.iter().any(|p| {
            owned_by(p, &cs_uid)
                && !deleting(p)
                && p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
                && pod_ready(p)
        })
    };
    let mut sorted: Vec<&Value> = all.iter().collect();
    sorted.sort_by_key(|n| name(n).to_string());
    // Only nodes the calico-system DaemonSet runs on can wait for its pod: the operator
    // counts the DaemonSets' desired and Ready pods (v1.38.6 namespace_migration.go:654
    // `waitUntilNodeCanBeMigrated`), so a Fargate node it excludes is labelled and passed.
    let tpl = new_ds
        .as_ref()
        .and_then(|d| d.pointer("/spec/template/spec"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    if let Some(n) = sorted.iter().find(|n| {
        label(n, MIGRATION_LABEL) == Some("migrated")
            && super::super::sched::fits(&tpl, n)
            && !new_ready_on(name(n))
    }) {
        return format!("Waiting for calico-node on node {} to be ready", name(n));
    }
    if let Some(next) = sorted
        .iter()
        .find(|n| label(n, MIGRATION_LABEL) != Some("migrated"))
    {
        if f.operator_stall.as_deref() == Some(name(next)) {
            return format!("Waiting to migrate node {}", name(next));
        }
        set_node_label(sb, name(next), Some("migrated"));
        return format!("Migrating node {}", name(next));
    }
    if !new_ds.as_ref().is_some_and(ds_ready) {
        return "Waiting for calico-system calico-node rollout".into();
    }
    delete(sb, &ds_gvr(), KS, "calico-node");
    delete(sb, &dg, KS, "calico-typha");
    delete(
        sb,
        &gvr("", "v1", "configmaps"),
        KS,
        "kubernetes-services-endpoint",
    );
    "Removing the kube-system install".into()
}

/// Whether the operator renders calico-node with the EKS Fargate exclusion: from
/// tigera/operator v1.25.0 (commit c80107f7, "Do not run calico-node on AWS EKS Fargate
/// nodes"; v1.38.6 pkg/render/node.go:942-956) when the provider is EKS; v1.17.4
/// (pkg/render/node.go:598-613) renders an affinity for AKS only. Of the releases the
/// sandbox knows (`calico_of_operator`), only v1.38.6 (Calico v3.30.x) is that recent.
/// The provider is EKS unless the Installation names another (the sandbox is EKS, which
/// the operator's autodetection finds).
fn renders_eks_fargate_exclusion(install: &Value, calico_version: &str) -> bool {
    let provider = install
        .pointer("/spec/kubernetesProvider")
        .and_then(Value::as_str)
        .unwrap_or("EKS");
    provider == "EKS"
        && !calico_version.starts_with("v3.19.")
        && !calico_version.starts_with("v3.20.")
}

fn eks_fargate_exclusion() -> Value {
    json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": crate::kinds::FARGATE_LABEL, "operator": "NotIn", "values": ["fargate"]}]}]}}})
}

fn owner(install: &Value) -> Value {
    json!([{"apiVersion": "operator.tigera.io/v1", "kind": "Installation", "name": "default",
            "uid": uid(install), "controller": true, "blockOwnerDeletion": true}])
}

/// calico-system namespace, workloads and typha's ClusterRole and binding (owned by
/// the Installation), and the operator's subject on ClusterRoleBinding calico-node.
fn create_calico_system(sb: &Sandbox, install: &Value, node_count: usize, calico_version: &str) {
    let ns = gvr("", "v1", "namespaces");
    if get(sb, &ns, "", CS).is_none() {
        let _ = sb.store().create(
            &ns,
            "",
            json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": CS, "labels": {"name": CS}}}),
            &wopts(MANAGER),
        );
    }
    for mut o in calico_system_workloads(expected_typha_replicas(node_count), calico_version) {
        o["metadata"]["ownerReferences"] = owner(install);
        let g = if o["kind"] == "DaemonSet" {
            if renders_eks_fargate_exclusion(install, calico_version) {
                o["spec"]["template"]["spec"]["affinity"] = eks_fargate_exclusion();
            }
            o["spec"]["template"]["spec"]["nodeSelector"][MIGRATION_LABEL] = json!("migrated");
            ds_gvr()
        } else {
            deploy_gvr()
        };
        let _ = sb.store().create(&g, CS, o, &wopts(MANAGER));
    }
    // Typha's own ClusterRole and binding (tigera/operator v1.20.1 pkg/render/typha.go).
    for mut o in calico_typha_rbac(calico_version) {
        o["metadata"]["ownerReferences"] = owner(install);
        let g = if o["kind"] == "ClusterRole" {
            gvr("rbac.authorization.k8s.io", "v1", "clusterroles")
        } else {
            gvr("rbac.authorization.k8s.io", "v1", "clusterrolebindings")
        };
        let _ = sb.store().create(&g, "", o, &wopts(MANAGER));
    }
    // calico-node's ClusterRole and binding: the operator's own rendering replaces the
    // chart's, owned by the Installation (tigera/operator pkg/render/node.go and
    // pkg/controller/utils/component.go:87 at every line); labels replaced, annotations
    // merged (component.go:196-217). A rollback that deletes the Installation without
    // taking them back loses kube-system calico-node's RBAC to the garbage collector.
    for mut o in operator_calico_node_rbac(calico_version) {
        let plural = if o["kind"] == "ClusterRole" {
            "clusterroles"
        } else {
            "clusterrolebindings"
        };
        let g = gvr("rbac.authorization.k8s.io", "v1", plural);
        let live = get(sb, &g, "", "calico-node");
        let owned = live
            .as_ref()
            .and_then(|l| l.pointer("/metadata/ownerReferences"))
            .is_some_and(|r| *r == owner(install));
        if owned {
            continue;
        }
        o["metadata"]["ownerReferences"] = owner(install);
        if let Some(annotations) = live
            .as_ref()
            .and_then(|l| l.pointer("/metadata/annotations"))
        {
            o["metadata"]["annotations"] = annotations.clone();
        }
        match live {
            Some(l) => {
                o["metadata"]["resourceVersion"] = l["metadata"]["resourceVersion"].clone();
                let _ = sb.store().update(&g, "", "calico-node", o, &wopts(MANAGER));
            }
            None => {
                let _ = sb.store().create(&g, "", o, &wopts(MANAGER));
            }
        }
    }
}

/// After the kube-system install is gone: drop the migration nodeSelector,
/// then the node labels; report Available once calico-system is ready.
fn finish(sb: &Sandbox, install: &Value, calico_version: &str) -> Health {
    let Some(ds) = get(sb, &ds_gvr(), CS, "calico-node") else {
        create_calico_system(sb, install, nodes(sb).len(), calico_version);
        // A fresh install needs no migration selector.
        let _ = merge(
            sb,
            &ds_gvr(),
            CS,
            "calico-node",
            Subresource::Main,
            &json!({"spec": {"template": {"spec": {"nodeSelector": {MIGRATION_LABEL: null}}}}}),
            MANAGER,
        );
        return Health::Progressing("Creating calico-system".into());
    };
    if ds
        .pointer(&format!(
            "/spec/template/spec/nodeSelector/{}",
            MIGRATION_LABEL.replace('/', "~1")
        ))
        .is_some()
    {
        let _ = merge(
            sb,
            &ds_gvr(),
            CS,
            "calico-node",
            Subresource::Main,
            &json!({"spec": {"template": {"spec": {"nodeSelector": {MIGRATION_LABEL: null}}}}}),
            MANAGER,
        );
        return Health::Progressing("Removing the migration nodeSelector".into());
    }
    let labelled: Vec<String> = nodes(sb)
        .iter()
        .filter(|n| label(n, MIGRATION_LABEL).is_some())
        .map(|n| name(n).to_string())
        .collect();
    if !labelled.is_empty() {
        for n in &labelled {
            set_node_label(sb, n, None);
        }
        return Health::Progressing("Removing the migration node labels".into());
    }
    let typha_ready = get(sb, &deploy_gvr(), CS, "calico-typha")
        .and_then(|t| t.pointer("/status/readyReplicas").and_then(Value::as_u64))
        .unwrap_or(0)
        >= 1;
    if ds_ready(&ds) && typha_ready {
        Health::Available
    } else {
        Health::Progressing("Waiting for calico-system to be ready".into())
    }
}
