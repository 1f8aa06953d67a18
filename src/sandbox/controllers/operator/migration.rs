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

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Value, json};

use super::super::faults::ControllerFaults;
use super::super::nodes::MIGRATION_LABEL;
use super::super::{
    delete, deleting, deploy_gvr, ds_gvr, get, gvr, label, list, list_shared, merge, name,
    nodes_gvr, owned_by, pod_ready, pods_gvr, uid, wopts,
};
use super::status::{Health, report};
use super::{FINALIZER, MANAGER, StatusMemory, installations, operator_version};
use crate::sandbox::apiserver::versions::served;
use crate::sandbox::scenario::operator::{
    calico_of_operator, calico_system_workloads, calico_typha_rbac, operator_calico_node_rbac,
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

/// The reason core_controller.go gives a failed create/update of a rendered object
/// (v1.17.4 pkg/controller/installation/core_controller.go:1073-1077, v1.20.1 :1108-1112).
pub const RENDER_REASON: &str = "Error creating / updating resource";

/// Why the operator's render fails on this API server, if it does: the v1.17 and
/// v1.20 lines always render a policy/v1beta1 PodDisruptionBudget for typha (v1.17.4
/// pkg/render/typha.go:117-139, v1.20.1 :117-140) and policy/v1beta1
/// PodSecurityPolicies (typha.go:125-127, node.go:174-176); the typha component comes
/// before the node one (pkg/render/render.go:252-253, v1.20.1 :262-263) and the PDB
/// before typha's PSP, so the PDB is the first object the API server has no kind for.
/// The error is controller-runtime's Get through its REST mapper
/// (pkg/controller/utils/component.go:115-119), apimachinery's NoKindMatchError
/// (k8s.io/apimachinery v0.19.2 pkg/api/meta/errors.go). v1.38.6 renders policy/v1
/// (pkg/render/typha.go:143) and no PodSecurityPolicy: it renders on every minor.
pub fn render_failure(operator_tag: &str, sb: &Sandbox) -> Option<String> {
    let old_line = operator_tag.starts_with("v1.17.") || operator_tag.starts_with("v1.20.");
    let kv = sb.store().kubernetes_version();
    (old_line && !served("policy", "v1beta1", "poddisruptionbudgets", kv)).then(|| {
        "no matches for kind \"PodDisruptionBudget\" in version \"policy/v1beta1\"".to_string()
    })
}

/// What the status manager reports: the explicit Degraded while it is set, else `h`.
fn report_with(
    sb: &Sandbox,
    mem: &StatusMemory,
    h: Health,
    install: &Value,
    version: Option<&str>,
) {
    let h = match mem.degraded() {
        Some((reason, message)) => Health::Degraded {
            reason: reason.clone(),
            message: message.clone(),
        },
        None => h,
    };
    report(sb, &h, install, version);
}

/// The migration behaviours that differ between the operator lines the sandbox knows,
/// from the operator's image tag (tigera/operator `pkg/controller/migration/
/// namespace_migration.go` at each tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    /// v1.35.0 on (PR 3157, "Wait for calico-node DaemonSet rollout to avoid mass restart
    /// during manifest-to-operator migration"; v1.38.6 :294-298 and :411-415): the
    /// calico-system rollout is awaited before kube-system calico-node is deleted and
    /// again before the node labels are removed. Before (v1.17.4 and v1.20.1 :238-244 and
    /// :344-356) kube-system calico-node goes right after the last label and the labels go
    /// in the reconcile that drops the migration nodeSelector.
    pub waits_for_rollout: bool,
    /// v1.27.0 on (v1.38.6 :307-309, :426-438): ConfigMap kube-system
    /// kubernetes-services-endpoint is deleted at the end.
    pub deletes_services_endpoint: bool,
    /// v1.35.0 on (PR 3188; v1.38.6 :685-690): one node with no calico-system pod yet
    /// may be migrated whatever the kube-system pod's readiness.
    pub single_node_exception: bool,
    /// v1.26.0 on (commit 766d1651 "set maxunavailble to 1 if calc against available
    /// nodes resolves to 0"; v1.38.6 :670-682): a maxUnavailable that rounds down to 0
    /// counts as 1.
    pub max_unavailable_at_least_one: bool,
    /// v1.29.0 on: InstallationStatus has `calicoVersion`, written once every component
    /// is available (v1.38.6 pkg/controller/installation/core_controller.go:1589-1602);
    /// v1.20.1's InstallationStatus has no such field.
    pub writes_calico_version: bool,
}

impl Line {
    pub fn of(operator_tag: &str) -> Self {
        let v = super::convert::version_of(operator_tag);
        Line {
            waits_for_rollout: v >= (1, 35, 0),
            deletes_services_endpoint: v >= (1, 27, 0),
            single_node_exception: v >= (1, 35, 0),
            max_unavailable_at_least_one: v >= (1, 26, 0),
            writes_calico_version: v >= (1, 29, 0),
        }
    }
}

/// What one operator process remembers between reconciles beside its status: when its
/// wait for calico-system typha began (`waitForOperatorTyphaDeploymentReady` polls for
/// 10 minutes, v1.17.4 namespace_migration.go:391-405, v1.38.6 :471-487).
#[derive(Debug, Default)]
pub struct RunMemory {
    typha_wait_since: Option<f64>,
}

/// How long the operator waits for calico-system typha before its migration run fails.
pub const TYPHA_WAIT_SECONDS: f64 = 600.0;

/// The Degraded reason of a failed migration run (v1.17.4 core_controller.go:1094-1100,
/// v1.38.6 :1513-1519) and the error of a typha wait that timed out (Run wraps
/// migrateEachNode's error, :238-240; apimachinery's ErrWaitTimeout text).
pub const MIGRATION_ERROR_REASON: &str = "error migrating resources to calico-system";
pub const TYPHA_TIMEOUT: &str = "failed to migrate all nodes: failed to wait for operator typha deployment to be ready: timed out waiting for the condition";

pub fn act(
    sb: &Sandbox,
    op: &Value,
    install: &Value,
    f: &ControllerFaults,
    mem: &mut StatusMemory,
    run: &mut RunMemory,
    now: f64,
) {
    // The operator is the release its image says; it installs that release's Calico.
    let tag = operator_version(op);
    let Some(version) = calico_of_operator(&tag) else {
        let message = format!(
            "the sandbox does not model tigera-operator {tag}: it knows the releases of \
             plans/versions.yaml that a profile can pin (v1.17.x, v1.20.x, v1.38.6)"
        );
        let degraded = Health::Degraded {
            reason: "ResourceRenderingError".into(),
            message,
        };
        report(sb, &degraded, install, None);
        return;
    };
    let status_version = Line::of(&tag).writes_calico_version.then_some(version);
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
    // The converter runs first, until it succeeds once in this process (v1.17.4
    // core_controller.go:672-693 and :739), then the render (:1073-1077), then the
    // migration (:1094-1100).
    let old_ds = get(sb, &ds_gvr(), KS, "calico-node").filter(|d| !deleting(d));
    if let Some(ds) = old_ds.as_ref().filter(|_| !mem.migration_checked()) {
        let typha = get(sb, &deploy_gvr(), KS, "calico-typha");
        let config_maps = list(sb, &gvr("", "v1", "configmaps"), Some(KS));
        let ip_pools = list(sb, &gvr("crd.projectcalico.org", "v1", "ippools"), None);
        let felix = get(
            sb,
            &gvr("crd.projectcalico.org", "v1", "felixconfigurations"),
            "",
            "default",
        );
        let existing = super::convert::Existing {
            node: ds,
            typha: typha.as_ref(),
            canal: get(sb, &ds_gvr(), KS, "canal-node").is_some(),
            config_maps: &config_maps,
            ip_pools: &ip_pools,
            felix_configuration: felix.as_ref(),
        };
        match super::convert::convert(&existing, &tag) {
            Ok(()) => mem.set_migration_checked(),
            Err(e) => {
                // A crash writes nothing: the process dies before its status manager does.
                if let Some((reason, message)) = e.degraded() {
                    mem.set_degraded(reason, message);
                    report_with(sb, mem, Health::Available, install, status_version);
                }
                return;
            }
        }
    }
    if let Some(e) = render_failure(&tag, sb) {
        render_until_pdb(sb, install, nodes(sb).len(), version);
        mem.set_degraded(RENDER_REASON, e);
        report_with(sb, mem, Health::Available, install, status_version);
        return;
    }
    match old_ds {
        Some(ds) => {
            // A migration that goes on keeps an earlier Degraded: only the end of a
            // reconcile without migration clears it (v1.17.4 core_controller.go:1094-1100
            // returns before :1156; v1.20.1 :1129-1135 / :1194; v1.38.6 :1513-1519 / :1587).
            let line = Line::of(&tag);
            let waiting = match migrate_one(sb, &ds, install, f, version, line) {
                Next::Acted(m) => {
                    run.typha_wait_since = None;
                    m
                }
                Next::WaitingForTypha(m) => {
                    let since = *run.typha_wait_since.get_or_insert(now);
                    if now - since >= TYPHA_WAIT_SECONDS {
                        // The run fails; the next reconcile starts it again, waiting anew,
                        // and the Degraded stays (above).
                        mem.set_degraded(MIGRATION_ERROR_REASON, TYPHA_TIMEOUT.into());
                        run.typha_wait_since = None;
                    }
                    m
                }
            };
            report_with(
                sb,
                mem,
                Health::Progressing(waiting),
                install,
                status_version,
            );
        }
        None => {
            mem.clear_degraded();
            let h = finish(sb, install, version, Line::of(&tag));
            report_with(sb, mem, h, install, status_version);
        }
    }
}

/// What CreateOrUpdateOrDelete has created before the typha PodDisruptionBudget fails
/// (v1.17.4 pkg/render/render.go:248-252, typha.go:117-123; component.go:84-127 creates
/// in order and returns at the first error): namespace calico-system, typha's
/// ClusterRole and binding and its Deployment, owned by the Installation. (The
/// PriorityClass, ConfigMaps, Secrets, ServiceAccount and Service the sandbox does not
/// render on any path.)
fn render_until_pdb(sb: &Sandbox, install: &Value, node_count: usize, calico_version: &str) {
    if get(sb, &deploy_gvr(), CS, "calico-typha").is_some() {
        return;
    }
    ensure_namespace(sb);
    for mut o in calico_system_workloads(expected_typha_replicas(node_count), calico_version) {
        if o["kind"] == "Deployment" && o["metadata"]["name"] == "calico-typha" {
            o["metadata"]["ownerReferences"] = owner(install);
            let _ = sb.store().create(&deploy_gvr(), CS, o, &wopts(MANAGER));
        }
    }
    create_typha_rbac(sb, install, calico_version);
}

fn ensure_namespace(sb: &Sandbox) {
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
}

fn create_typha_rbac(sb: &Sandbox, install: &Value, calico_version: &str) {
    // Typha's own ClusterRole and binding (tigera/operator v1.20.1 pkg/render/typha.go).
    for mut o in calico_typha_rbac(calico_version) {
        o["metadata"]["ownerReferences"] = owner(install);
        let g = if o["kind"] == "ClusterRole" {
            gvr("rbac.authorization.k8s.io", "v1", "clusterroles")
        } else {
            gvr("rbac.authorization.k8s.io", "v1", "clusterrolebindings")
        };
        let name = o["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if get(sb, &g, "", &name).is_none() {
            let _ = sb.store().create(&g, "", o, &wopts(MANAGER));
        }
    }
}

/// The nodes not being deleted, as the store shares them (read only: the operator
/// steps on every tick, and a copy of every node each time was most of its cost).
fn nodes(sb: &Sandbox) -> Vec<Arc<Value>> {
    list_shared(sb, &nodes_gvr())
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

/// What one migration action did or waits for (the Progressing message).
enum Next {
    Acted(String),
    /// Waiting for calico-system typha: the operator's 10-minute wait runs.
    WaitingForTypha(String),
}

impl From<&str> for Next {
    fn from(m: &str) -> Self {
        Next::Acted(m.into())
    }
}

/// `waitForOperatorTyphaDeploymentReady` (v1.17.4 namespace_migration.go:391-405,
/// v1.38.6 :471-487): status availableReplicas equal to status replicas.
fn typha_available(sb: &Sandbox) -> bool {
    get(sb, &deploy_gvr(), CS, "calico-typha").is_some_and(|t| {
        let n = |k: &str| t.pointer(&format!("/status/{k}")).and_then(Value::as_u64);
        n("availableReplicas").unwrap_or(0) == n("replicas").unwrap_or(0)
    })
}

/// `getNumPodsDesiredAndReady`: a DaemonSet's desiredNumberScheduled and numberReady.
fn desired_and_ready(ds: Option<&Value>) -> (i64, i64) {
    let n = |k: &str| {
        ds.and_then(|d| d.pointer(&format!("/status/{k}")))
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    (n("desiredNumberScheduled"), n("numberReady"))
}

/// `waitUntilNodeCanBeMigrated` (v1.17.4 namespace_migration.go:574-604, v1.38.6
/// :654-704): the next node may move when the Ready calico-node pods of both
/// DaemonSets plus calico-system's maxUnavailable (an int or a percentage of both
/// DaemonSets' desired pods, rounded down; from v1.26.0 a result below 1 counts as 1)
/// exceed the desired pods.
fn node_can_be_migrated(ks: &Value, cs: Option<&Value>, line: Line) -> bool {
    let (ks_d, ks_r) = desired_and_ready(Some(ks));
    let (cs_d, cs_r) = desired_and_ready(cs);
    let total = ks_d + cs_d;
    let max_unavailable =
        match cs.and_then(|d| d.pointer("/spec/updateStrategy/rollingUpdate/maxUnavailable")) {
            Some(Value::Number(n)) => n.as_i64().unwrap_or(1),
            Some(Value::String(p)) => p
                .strip_suffix('%')
                .and_then(|p| p.parse::<i64>().ok())
                .map(|p| p * total / 100)
                .unwrap_or(1),
            _ => 1,
        };
    let max_unavailable = if line.max_unavailable_at_least_one {
        max_unavailable.max(1)
    } else {
        max_unavailable
    };
    if line.single_node_exception && ks_d == 1 && cs_d == 0 {
        return true;
    }
    ks_r + cs_r + max_unavailable > total
}

/// The order in which the operator takes nodes: `m.indexer.List()` of a client-go
/// cache, a Go map iterated afresh on every call (v1.17.4 namespace_migration.go:561-570,
/// v1.38.6 :641-652), so no fixed order, by name or otherwise. The sandbox draws it
/// from its seed: the same seed, the same order.
fn operator_order<'a>(sb: &Sandbox, nodes: &'a [Arc<Value>]) -> Vec<&'a Value> {
    let mut v: Vec<&Value> = nodes.iter().map(|n| &**n).collect();
    v.sort_by_cached_key(|n| crate::sandbox::scenario::ids::hash(sb.seed(), name(n)));
    v
}

/// One migration action, in namespace_migration.go `Run`'s order.
fn migrate_one(
    sb: &Sandbox,
    ds: &Value,
    install: &Value,
    f: &ControllerFaults,
    calico_version: &str,
    line: Line,
) -> Next {
    let dg = deploy_gvr();
    if get(sb, &dg, KS, "calico-kube-controllers").is_some() {
        delete(sb, &dg, KS, "calico-kube-controllers");
        return "Deleting kube-system calico-kube-controllers".into();
    }
    let all = nodes(sb);
    let unlabelled: Vec<&Value> = all
        .iter()
        .map(|n| &**n)
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
    if !typha_available(sb) {
        return Next::WaitingForTypha("Waiting for calico-system typha".into());
    }
    let new_ds = get(sb, &ds_gvr(), CS, "calico-node");
    let cs_uid = new_ds
        .as_ref()
        .map(|d| uid(d).to_string())
        .unwrap_or_default();
    let pods = sb
        .store()
        .list_shared(&pods_gvr(), Some(CS))
        .unwrap_or_default();
    // The nodes with a Ready calico-system agent, gathered once rather than searched
    // for each migrated node.
    let ready_agents: HashSet<&str> = pods
        .iter()
        .filter(|p| owned_by(p, &cs_uid) && !deleting(p) && pod_ready(p))
        .filter_map(|p| p.get("spec")?.get("nodeName")?.as_str())
        .collect();
    let new_ready_on = |node: &str| ready_agents.contains(node);
    let order = operator_order(sb, &all);
    let to_migrate: Vec<&&Value> = order
        .iter()
        .filter(|n| label(n, MIGRATION_LABEL) != Some("migrated"))
        .collect();
    if let Some(next) = to_migrate.first() {
        if !node_can_be_migrated(ds, new_ds.as_ref(), line) {
            // Name a migrated node still without its new calico-node, when there is one
            // (a Fargate node the calico-system DaemonSet excludes has none to wait for).
            let tpl = new_ds
                .as_ref()
                .and_then(|d| d.pointer("/spec/template/spec"))
                .cloned()
                .unwrap_or_else(|| json!({}));
            return Next::Acted(
                match order.iter().find(|n| {
                    label(n, MIGRATION_LABEL) == Some("migrated")
                        && super::super::sched::fits(&tpl, n)
                        && !new_ready_on(name(n))
                }) {
                    Some(n) => format!("Waiting for calico-node on node {} to be ready", name(n)),
                    None => "Waiting for calico-node pods to be ready before the next node".into(),
                },
            );
        }
        if f.operator_stall.as_deref() == Some(name(next)) {
            return Next::Acted(format!("Waiting to migrate node {}", name(next)));
        }
        set_node_label(sb, name(next), Some("migrated"));
        return Next::Acted(format!("Migrating node {}", name(next)));
    }
    if line.waits_for_rollout && !new_ds.as_ref().is_some_and(ds_ready) {
        return "Waiting for calico-system calico-node rollout".into();
    }
    delete(sb, &ds_gvr(), KS, "calico-node");
    delete(sb, &dg, KS, "calico-typha");
    if line.deletes_services_endpoint {
        delete(
            sb,
            &gvr("", "v1", "configmaps"),
            KS,
            "kubernetes-services-endpoint",
        );
    }
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

fn drop_migration_selector(sb: &Sandbox) {
    let _ = merge(
        sb,
        &ds_gvr(),
        CS,
        "calico-node",
        Subresource::Main,
        &json!({"spec": {"template": {"spec": {"nodeSelector": {MIGRATION_LABEL: null}}}}}),
        MANAGER,
    );
}

fn remove_labels(sb: &Sandbox, nodes: &[String]) {
    for n in nodes {
        set_node_label(sb, n, None);
    }
}

fn eks_fargate_exclusion() -> Value {
    json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": crate::kinds::FARGATE_LABEL, "operator": "NotIn", "values": ["fargate"]}]}]}}})
}

fn owner(install: &Value) -> Value {
    json!([{"apiVersion": "operator.tigera.io/v1", "kind": "Installation", "name": "default",
            "uid": uid(install), "controller": true, "blockOwnerDeletion": true}])
}

/// calico-node's update strategy as rendered: the Installation's `nodeUpdateStrategy`,
/// by default RollingUpdate with maxUnavailable 1 (tigera/operator v1.38.6
/// pkg/controller/installation/core_controller.go:709-719, pkg/render/node.go:989).
fn rendered_update_strategy() -> Value {
    json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}})
}

/// The Calico version of calico-system calico-node's pod template (its image tag).
fn rendered_version(ds: &Value) -> Option<String> {
    ds.pointer("/spec/template/spec/containers/0/image")
        .and_then(Value::as_str)
        .and_then(|i| i.rsplit_once(':'))
        .map(|(_, t)| t.to_string())
}

/// An operator of another Calico line than the one calico-system runs renders its own
/// version over it: every reconcile writes the components it renders whole
/// (CreateOrUpdateOrDelete, tigera/operator v1.38.6 pkg/controller/utils/component.go:
/// the desired pod template replaces the live one), so a new operator image upgrades
/// calico-system and an old one, put back, downgrades it. The DaemonSet controller then
/// replaces calico-node one node at a time (the rendered RollingUpdate, maxUnavailable 1)
/// and the Deployment controller rolls typha and kube-controllers. calico-node's
/// ClusterRole gets the rules of the new line; its binding names calico-system's account
/// only, as no kube-system agent runs (`AddBindingForKubeSystemNode` is for a migration,
/// v1.38.6 pkg/controller/migration/namespace_migration.go:172-190).
fn upgrade_calico_system(sb: &Sandbox, install: &Value, node_count: usize, calico_version: &str) {
    for mut o in calico_system_workloads(expected_typha_replicas(node_count), calico_version) {
        let daemonset = o["kind"] == "DaemonSet";
        let g = if daemonset { ds_gvr() } else { deploy_gvr() };
        if daemonset && renders_eks_fargate_exclusion(install, calico_version) {
            o["spec"]["template"]["spec"]["affinity"] = eks_fargate_exclusion();
        }
        let Some(mut live) = get(sb, &g, CS, name(&o)) else {
            continue;
        };
        live["spec"]["template"] = o["spec"]["template"].take();
        for k in ["updateStrategy", "replicas"] {
            if let Some(v) = o["spec"].get(k) {
                live["spec"][k] = v.clone();
            }
        }
        let n = name(&live).to_string();
        let _ = sb.store().update(&g, CS, &n, live, &wopts(MANAGER));
    }
    let [mut role, mut binding] = operator_calico_node_rbac(calico_version);
    binding["subjects"] =
        json!([{"kind": "ServiceAccount", "name": "calico-node", "namespace": CS}]);
    for (plural, o) in [
        ("clusterroles", &mut role),
        ("clusterrolebindings", &mut binding),
    ] {
        let g = gvr("rbac.authorization.k8s.io", "v1", plural);
        o["metadata"]["ownerReferences"] = owner(install);
        match get(sb, &g, "", "calico-node") {
            Some(l) => {
                o["metadata"]["resourceVersion"] = l["metadata"]["resourceVersion"].clone();
                if let Some(a) = l.pointer("/metadata/annotations") {
                    o["metadata"]["annotations"] = a.clone();
                }
                let _ = sb
                    .store()
                    .update(&g, "", "calico-node", o.clone(), &wopts(MANAGER));
            }
            None => {
                let _ = sb.store().create(&g, "", o.clone(), &wopts(MANAGER));
            }
        }
    }
}

/// calico-system namespace, workloads and typha's ClusterRole and binding (owned by
/// the Installation), and the operator's subject on ClusterRoleBinding calico-node.
fn create_calico_system(sb: &Sandbox, install: &Value, node_count: usize, calico_version: &str) {
    ensure_namespace(sb);
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
    create_typha_rbac(sb, install, calico_version);
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

/// After the kube-system install is gone: the render drops the migration
/// nodeSelector, `CleanupMigration` removes the node labels; Available once
/// calico-system is ready.
///
/// v1.35.0 on waits for the calico-node rollout in between (PR 3157). Before, both
/// happen in one reconcile (v1.17.4 core_controller.go:1092-1108: the render writes the
/// DaemonSet, then namespace_migration.go:344-356 removes the labels without waiting),
/// and the DaemonSet controller can see the labels gone while its cache still holds
/// the DaemonSet with the selector: it then deletes every calico-system calico-node pod
/// at once, the mass restart PR 3157 reports ("the migration take down ALL Calico node
/// pods ... 0/1 ready status at the same time"). The sandbox takes that outcome: labels
/// first, the selector in the next action.
fn finish(sb: &Sandbox, install: &Value, calico_version: &str, line: Line) -> Health {
    let Some(ds) = get(sb, &ds_gvr(), CS, "calico-node") else {
        create_calico_system(sb, install, nodes(sb).len(), calico_version);
        // A fresh install needs no migration selector.
        drop_migration_selector(sb);
        return Health::Progressing("Creating calico-system".into());
    };
    let migrating = ds
        .pointer(&format!(
            "/spec/template/spec/nodeSelector/{}",
            MIGRATION_LABEL.replace('/', "~1")
        ))
        .is_some();
    if rendered_version(&ds).as_deref() != Some(calico_version) {
        upgrade_calico_system(sb, install, nodes(sb).len(), calico_version);
        return Health::Progressing(format!("Upgrading calico-system to {calico_version}"));
    }
    if !migrating && ds.pointer("/spec/updateStrategy") != Some(&rendered_update_strategy()) {
        // The render writes the DaemonSet whole on every reconcile: a strategy changed
        // by hand (OnDelete while the operator was stopped) is put back.
        upgrade_calico_system(sb, install, nodes(sb).len(), calico_version);
        return Health::Progressing("Rendering calico-node's update strategy".into());
    }
    let has_selector = ds
        .pointer(&format!(
            "/spec/template/spec/nodeSelector/{}",
            MIGRATION_LABEL.replace('/', "~1")
        ))
        .is_some();
    let labelled: Vec<String> = nodes(sb)
        .iter()
        .filter(|n| label(n, MIGRATION_LABEL).is_some())
        .map(|n| name(n).to_string())
        .collect();
    if line.waits_for_rollout {
        if has_selector {
            drop_migration_selector(sb);
            return Health::Progressing("Removing the migration nodeSelector".into());
        }
        if !labelled.is_empty() {
            if !ds_ready(&ds) {
                return Health::Progressing(
                    "Waiting for calico-system calico-node rollout before removing the node labels"
                        .into(),
                );
            }
            remove_labels(sb, &labelled);
            return Health::Progressing("Removing the migration node labels".into());
        }
    } else {
        if !labelled.is_empty() {
            remove_labels(sb, &labelled);
            return Health::Progressing("Removing the migration node labels".into());
        }
        if has_selector {
            drop_migration_selector(sb);
            return Health::Progressing("Removing the migration nodeSelector".into());
        }
    }
    // The status manager watches calico-node and calico-kube-controllers only (v1.38.6
    // pkg/controller/installation/core_controller.go:1507-1508; a Deployment is ready
    // when every replica is available, pkg/controller/status/status.go).
    let kube_controllers_ready =
        get(sb, &deploy_gvr(), CS, "calico-kube-controllers").is_some_and(|d| {
            let n = |k: &str| d.pointer(k).and_then(Value::as_u64).unwrap_or(0);
            n("/status/availableReplicas") >= replicas(&d) as u64
        });
    if ds_ready(&ds) && kube_controllers_ready {
        Health::Available
    } else {
        Health::Progressing("Waiting for calico-system to be ready".into())
    }
}
