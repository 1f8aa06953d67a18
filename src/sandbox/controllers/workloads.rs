//! DaemonSet and Deployment controllers.
//!
//! DaemonSet: one pod per node the template fits (sched.rs), pods deleted from nodes
//! its node affinity or an untolerated NoExecute taint excludes, RollingUpdate bounded by
//! `maxUnavailable` (an up-to-date pod names the current ControllerRevision or the
//! template generation: history.rs), status counts as k8s.io/kubernetes
//! pkg/controller/daemon/daemon_controller.go `updateDaemonSetStatus` computes them.
//!
//! Deployment: a ReplicaSet-free simplification. Pods matching the selector
//! are counted unless another kind of controller controls them (so seeded
//! ReplicaSet pods count, a DaemonSet's never do); missing
//! pods are created owned by the Deployment itself; extra pods are deleted
//! (not ready first, then newest). Template changes do not roll pods.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Value, json};

use super::{
    delete, deleting, deploy_gvr, ds_gvr, history, list_shared, merge, name, namespace, owner_ref,
    pod_ready, pods_gvr, sched, selector_matches, uid, wopts,
};
use crate::sandbox::{Sandbox, Subresource};

const MANAGER: &str = "sandbox-controllers";

/// One pass over every DaemonSet and Deployment with a snapshot of nodes and
/// pods; true if pods were created or deleted (status writes do not count).
pub fn reconcile(sb: &Sandbox, nodes: &[Arc<Value>], pods: &[Arc<Value>]) -> bool {
    Workloads::default().reconcile(sb, nodes, pods)
}

/// What the DaemonSet and Deployment controllers read of a pod, read once per version
/// of it.
struct PodFacts {
    deleting: bool,
    namespace: String,
    node: String,
    ready: bool,
    /// The uids its ownerReferences name.
    owners: Vec<String>,
    /// Controlled by a kind other than ReplicaSet or Deployment.
    other_controller: bool,
    revision_hash: Option<String>,
    template_generation: Option<String>,
}

impl PodFacts {
    fn read(p: &Value) -> Self {
        let owners = p
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        PodFacts {
            deleting: deleting(p),
            namespace: namespace(p).to_string(),
            node: p
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            ready: pod_ready(p),
            owners: owners
                .iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str).map(String::from))
                .collect(),
            // A ReplicaSet claims only pods no other controller controls (kubernetes
            // pkg/controller/controller_ref_manager.go `ClaimObject`: another
            // controllerRef means ignore), so a DaemonSet's pods are never a Deployment's.
            other_controller: owners.iter().any(|r| {
                r.get("controller") == Some(&json!(true))
                    && !matches!(
                        r.get("kind").and_then(Value::as_str),
                        Some("ReplicaSet" | "Deployment")
                    )
            }),
            revision_hash: super::label(p, history::REVISION_HASH).map(String::from),
            template_generation: super::label(p, history::POD_TEMPLATE_GENERATION)
                .map(String::from),
        }
    }

    /// `IsPodUpdated` ([`history::pod_updated`]).
    fn updated(&self, hash: &str, template_generation: Option<i64>) -> bool {
        history::labels_updated(
            self.revision_hash.as_deref(),
            self.template_generation.as_deref(),
            hash,
            template_generation,
        )
    }
}

/// The controllers' memory between passes: each pod's facts, by the address of the
/// store's shared copy of it. The store shares an object until it is written (a write
/// stores a new copy), so a copy seen before has the facts read then; holding it keeps
/// its address from being reused. At hundreds of nodes, reading every pod's fields on
/// every pass (a JSON pointer each) was a third of the sandbox's CPU and kept its clock
/// behind real time. An optimisation with no behaviour of its own, like the settle skip
/// (`Controllers::settle`): the real controllers read their informers' caches, updated
/// per event, not the API server on every sync (kubernetes
/// pkg/controller/daemon/daemon_controller.go at commit 0033f658085b: `podLister`).
///
/// Beside the pods' facts, which nodes each DaemonSet's template fits ([`Placement`]).
#[derive(Default)]
pub struct Workloads {
    facts: HashMap<usize, (Arc<Value>, Arc<PodFacts>)>,
    placement: HashMap<String, Placement>,
}

impl Workloads {
    /// See [`reconcile`].
    pub fn reconcile(&mut self, sb: &Sandbox, nodes: &[Arc<Value>], pods: &[Arc<Value>]) -> bool {
        let mut known = std::mem::take(&mut self.facts);
        for p in pods {
            let key = Arc::as_ptr(p) as usize;
            let facts = match known.remove(&key) {
                Some((seen, f)) if Arc::ptr_eq(&seen, p) => f,
                _ => Arc::new(PodFacts::read(p)),
            };
            self.facts.insert(key, (p.clone(), facts));
        }
        let facts: Vec<(&Value, &PodFacts)> = pods
            .iter()
            .map(|p| (&**p, &*self.facts[&(Arc::as_ptr(p) as usize)].1))
            .collect();
        pass(sb, nodes, &facts, &mut self.placement)
    }
}

/// Which nodes a DaemonSet's pod template fits, for one version of the template: by the
/// address of the store's copy of each node (held, as the pods are), whether a new pod
/// fits it and whether a running one may stay ([`sched::fits`], [`sched::may_continue`]).
/// Both read only the template and the node, so a node copy seen before under the same
/// template has the same answers. At 500 nodes, asking them of every node for every
/// DaemonSet on every pass was a tenth of the sandbox's CPU; the real controller too
/// asks it again only on a node's events (daemon_controller.go at commit 0033f658085b:
/// `updateNode` ignores an update that changed nothing but the resourceVersion and the
/// conditions' details, `shouldIgnoreNodeUpdate`, and enqueues only the DaemonSets for
/// which `NodeShouldRunDaemonPod` answers differently for the old and the new node).
struct Placement {
    template: Value,
    /// The nodes of the last pass, in its order, with their fit.
    nodes: Vec<(Arc<Value>, Fit)>,
}

#[derive(Clone, Copy)]
struct Fit {
    fits: bool,
    may_continue: bool,
}

impl Placement {
    fn new(template: Value) -> Self {
        Placement {
            template,
            nodes: Vec::new(),
        }
    }

    /// Each node's fit, read again only for node copies not seen under this template
    /// (none, on most passes: the same copies in the same order as the last).
    fn of<'n>(&mut self, nodes: &[&'n Arc<Value>]) -> Vec<(&'n Value, Fit)> {
        let unchanged = nodes.len() == self.nodes.len()
            && nodes
                .iter()
                .zip(&self.nodes)
                .all(|(n, (seen, _))| Arc::ptr_eq(n, seen));
        if !unchanged {
            let mut known: HashMap<usize, (Arc<Value>, Fit)> = std::mem::take(&mut self.nodes)
                .into_iter()
                .map(|(n, fit)| (Arc::as_ptr(&n) as usize, (n, fit)))
                .collect();
            self.nodes = nodes
                .iter()
                .map(|&n| match known.remove(&(Arc::as_ptr(n) as usize)) {
                    Some((seen, fit)) if Arc::ptr_eq(&seen, n) => (seen, fit),
                    _ => {
                        let fit = Fit {
                            fits: sched::fits(&self.template, n),
                            may_continue: sched::may_continue(&self.template, n),
                        };
                        (n.clone(), fit)
                    }
                })
                .collect();
        }
        nodes
            .iter()
            .zip(&self.nodes)
            .map(|(&n, &(_, fit))| (&**n, fit))
            .collect()
    }
}

fn pass(
    sb: &Sandbox,
    nodes: &[Arc<Value>],
    pods: &[(&Value, &PodFacts)],
    placements: &mut HashMap<String, Placement>,
) -> bool {
    let nodes: Vec<&Arc<Value>> = nodes.iter().filter(|n| !deleting(n)).collect();
    // Every controller looks only at its own pods: the pods not being deleted, grouped
    // once per pass by each owner they name (a DaemonSet's) and, for the Deployments, by
    // namespace. A pass then costs O(pods + workloads) rather than O(pods x workloads),
    // which at hundreds of nodes kept the sandbox's clock behind real time: a JSON
    // pointer per pod per workload was most of a pass.
    let mut by_namespace: HashMap<&str, Vec<&Value>> = HashMap::new();
    let mut by_owner: HashMap<&str, Vec<(&Value, &PodFacts)>> = HashMap::new();
    for &(p, f) in pods {
        if f.deleting {
            continue;
        }
        for owner in &f.owners {
            by_owner.entry(owner).or_default().push((p, f));
        }
        if !f.other_controller {
            by_namespace.entry(&f.namespace).or_default().push(p);
        }
    }
    let of = |o: &Value| {
        by_namespace
            .get(namespace(o))
            .map_or(&[][..], Vec::as_slice)
    };
    let owned = |o: &Value| by_owner.get(uid(o)).map_or(&[][..], Vec::as_slice);
    // The workloads and revisions as the store shares them (read only, as the pods).
    let revisions = list_shared(sb, &history::revisions_gvr());
    let mut revisions_by_namespace: HashMap<&str, Vec<&Value>> = HashMap::new();
    for r in &revisions {
        revisions_by_namespace
            .entry(namespace(r))
            .or_default()
            .push(r);
    }
    let mut changed = false;
    let daemonsets = list_shared(sb, &ds_gvr());
    let mut known = std::mem::take(placements);
    for ds in daemonsets.iter().filter(|ds| !deleting(ds)) {
        let template = ds.get("spec").and_then(|s| s.get("template")?.get("spec"));
        let mut placement = match known.remove(uid(ds)) {
            Some(p) if Some(&p.template) == template => p,
            _ => Placement::new(template.cloned().unwrap_or_else(|| json!({}))),
        };
        let revisions = revisions_by_namespace
            .get(namespace(ds))
            .map_or(&[][..], Vec::as_slice);
        let fit = placement.of(&nodes);
        changed |= daemonset(sb, ds, &fit, owned(ds), revisions);
        placements.insert(uid(ds).to_string(), placement);
    }
    for d in list_shared(sb, &deploy_gvr()) {
        if !deleting(&d) {
            changed |= deployment(sb, &d, of(&d));
        }
    }
    changed
}

fn generation(o: &Value) -> i64 {
    o.pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1)
}

/// `maxUnavailable` (int or percentage of `total`, rounded down but at least 1 for DaemonSets).
pub fn max_unavailable(v: Option<&Value>, total: usize, default: usize, round_up: bool) -> usize {
    match v {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(default as u64) as usize,
        Some(Value::String(s)) if s.ends_with('%') => {
            let pct: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
            let x = pct * total as f64 / 100.0;
            if round_up {
                x.ceil() as usize
            } else {
                x.floor() as usize
            }
        }
        Some(Value::String(s)) => s.parse().unwrap_or(default),
        _ => default,
    }
}

fn new_pod(
    owner: &Value,
    kind: &str,
    generate: String,
    extra_labels: &[(&str, String)],
    node: Option<&str>,
) -> Value {
    let tpl = &owner["spec"]["template"];
    let mut labels = tpl
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or_else(|| json!({}));
    for (k, v) in extra_labels {
        labels[*k] = json!(v);
    }
    let mut spec = tpl.get("spec").cloned().unwrap_or_else(|| json!({}));
    if let Some(n) = node {
        spec["nodeName"] = json!(n);
    }
    let mut meta = json!({
        "generateName": generate,
        "namespace": namespace(owner),
        "labels": labels,
        "ownerReferences": owner_ref("apps/v1", kind, owner),
    });
    if let Some(a) = tpl.pointer("/metadata/annotations") {
        meta["annotations"] = a.clone();
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
}

fn write_status(sb: &Sandbox, g: &crate::sandbox::Gvr, o: &Value, status: Value) -> bool {
    let current = o.get("status").cloned().unwrap_or_else(|| json!({}));
    let differs = status
        .as_object()
        .is_some_and(|m| m.iter().any(|(k, v)| current.get(k) != Some(v)));
    differs
        && merge(
            sb,
            g,
            namespace(o),
            name(o),
            Subresource::Status,
            &json!({"status": status}),
            MANAGER,
        )
        .is_ok()
}

/// `nodes`: the nodes not being deleted, with how the DaemonSet's template fits each;
/// `owned_pods`: the pods not being deleted that name the DaemonSet an owner;
/// `revisions`: the ControllerRevisions of its namespace.
fn daemonset(
    sb: &Sandbox,
    ds: &Value,
    nodes: &[(&Value, Fit)],
    owned_pods: &[(&Value, &PodFacts)],
    revisions: &[&Value],
) -> bool {
    let ns = namespace(ds);
    let generation_now = generation(ds);
    let hash = history::current_hash(sb, ds, revisions);
    let template_generation = history::template_generation(ds);
    let eligible: Vec<&Value> = nodes
        .iter()
        .filter(|(_, fit)| fit.fits)
        .map(|&(n, _)| n)
        .collect();
    let mut by_node: BTreeMap<&str, Vec<(&Value, &PodFacts)>> = BTreeMap::new();
    for &(p, f) in owned_pods {
        if f.namespace == ns {
            by_node.entry(&f.node).or_default().push((p, f));
        }
    }
    let mut changed = false;
    let pods_gvr = pods_gvr();
    // Nodes by name, looked up once per placed pod rather than searched (a pass over
    // 500 nodes would otherwise compare names 125,000 times per DaemonSet).
    let node_named: HashMap<&str, Fit> = nodes.iter().map(|&(n, fit)| (name(n), fit)).collect();
    let eligible_names: HashSet<&str> = eligible.iter().map(|n| name(n)).collect();
    // Pods on nodes that are gone or that the DaemonSet must leave (node affinity, or an
    // untolerated NoExecute taint: `shouldContinueRunning` in daemon_controller.go); a
    // NoSchedule taint added under a running pod does not evict it.
    for (node, ps) in &by_node {
        let stays = node_named.get(*node).is_some_and(|fit| fit.may_continue);
        if !stays {
            for (p, _) in ps {
                changed |= delete(sb, &pods_gvr, ns, name(p));
            }
        }
    }
    let current = |f: &PodFacts| f.updated(&hash, template_generation);
    let mut pod_labels = vec![(history::REVISION_HASH, hash.clone())];
    if let Some(g) = template_generation {
        pod_labels.push((history::POD_TEMPLATE_GENERATION, g.to_string()));
    }
    // Missing pods.
    for n in &eligible {
        if by_node.get(name(n)).is_none_or(|v| v.is_empty()) {
            let pod = new_pod(
                ds,
                "DaemonSet",
                format!("{}-", name(ds)),
                &pod_labels,
                Some(name(n)),
            );
            changed |= sb
                .store()
                .create(&pods_gvr, ns, pod, &wopts(MANAGER))
                .is_ok();
        }
    }
    // Rolling update of outdated pods, bounded by maxUnavailable.
    let strategy = ds
        .pointer("/spec/updateStrategy/type")
        .and_then(Value::as_str)
        .unwrap_or("RollingUpdate");
    let desired = eligible.len();
    let on_eligible = |node: &str| eligible_names.contains(node);
    let placed: Vec<(&Value, &PodFacts)> = by_node
        .iter()
        .filter(|(n, _)| on_eligible(n))
        .filter_map(|(_, ps)| ps.first().copied())
        .collect();
    let ready = placed.iter().filter(|(_, f)| f.ready).count();
    if strategy == "RollingUpdate" {
        let max = max_unavailable(
            ds.pointer("/spec/updateStrategy/rollingUpdate/maxUnavailable"),
            desired,
            1,
            true,
        )
        .max(1);
        let mut budget = max as i64 - (desired as i64 - ready as i64);
        let mut outdated: Vec<&(&Value, &PodFacts)> =
            placed.iter().filter(|(_, f)| !current(f)).collect();
        // Not-ready pods first: replacing them costs no availability.
        outdated.sort_by_key(|(_, f)| f.ready);
        for (p, f) in outdated {
            if !f.ready {
                changed |= delete(sb, &pods_gvr, ns, name(p));
            } else if budget > 0 {
                budget -= 1;
                changed |= delete(sb, &pods_gvr, ns, name(p));
            }
        }
    }
    let updated = placed.iter().filter(|(_, f)| current(f)).count();
    let misscheduled = by_node
        .iter()
        .filter(|(n, _)| !on_eligible(n))
        .map(|(_, v)| v.len())
        .sum::<usize>();
    let status = json!({
        "desiredNumberScheduled": desired,
        "currentNumberScheduled": placed.len(),
        "numberMisscheduled": misscheduled,
        "numberReady": ready,
        "updatedNumberScheduled": updated,
        "numberAvailable": ready,
        "numberUnavailable": desired.saturating_sub(ready),
        "observedGeneration": generation_now,
    });
    write_status(sb, &ds_gvr(), ds, status);
    changed
}

/// `ns_pods`: the pods of the Deployment's namespace not being deleted and not controlled
/// by anything but a ReplicaSet or a Deployment.
fn deployment(sb: &Sandbox, d: &Value, ns_pods: &[&Value]) -> bool {
    let ns = namespace(d);
    let want = d
        .pointer("/spec/replicas")
        .and_then(Value::as_u64)
        .unwrap_or(1) as usize;
    let selector = d
        .pointer("/spec/selector")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let empty = json!({});
    let mut pods: Vec<&Value> = ns_pods
        .iter()
        .copied()
        .filter(|_| selector.as_object().is_some_and(|s| !s.is_empty()))
        .filter(|p| {
            let labels = p.get("metadata").and_then(|m| m.get("labels"));
            selector_matches(&selector, labels.unwrap_or(&empty))
        })
        .filter(|p| {
            let phase = p.get("status").and_then(|s| s.get("phase"));
            !matches!(phase.and_then(Value::as_str), Some("Succeeded" | "Failed"))
        })
        .collect();
    let pods_gvr = pods_gvr();
    let mut changed = false;
    if pods.len() < want {
        let hash = history::template_hash(d);
        for _ in pods.len()..want {
            let pod = new_pod(
                d,
                "Deployment",
                format!("{}-{}-", name(d), &hash[..hash.len().min(10)]),
                &[("pod-template-hash", hash.clone())],
                None,
            );
            changed |= sb
                .store()
                .create(&pods_gvr, ns, pod, &wopts(MANAGER))
                .is_ok();
        }
    } else if pods.len() > want {
        let rv = |p: &Value| {
            p.pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // Not ready first, then newest first (k8s ActivePodsWithRanks, simplified).
        pods.sort_by_key(|p| (pod_ready(p), std::cmp::Reverse(rv(p))));
        for p in pods.drain(..pods.len() - want).collect::<Vec<_>>() {
            changed |= delete(sb, &pods_gvr, ns, name(p));
        }
    }
    let ready = pods.iter().filter(|p| pod_ready(p)).count();
    let total = pods.len();
    let max_unavail = max_unavailable(
        d.pointer("/spec/strategy/rollingUpdate/maxUnavailable"),
        want,
        want / 4,
        false,
    );
    let available = ready >= want.saturating_sub(max_unavail);
    let progressing_done = total == want && ready == want;
    let cond = |t: &str, s: bool, reason: &str, msg: String| json!({"type": t, "status": if s { "True" } else { "False" }, "reason": reason, "message": msg});
    let conditions = json!([
        if available {
            cond(
                "Available",
                true,
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
            )
        } else {
            cond(
                "Available",
                false,
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            )
        },
        if progressing_done {
            cond(
                "Progressing",
                true,
                "NewReplicaSetAvailable",
                format!("Deployment \"{}\" has successfully progressed.", name(d)),
            )
        } else {
            cond(
                "Progressing",
                true,
                "ReplicaSetUpdated",
                format!("Deployment \"{}\" is progressing.", name(d)),
            )
        },
    ]);
    let status = json!({
        "observedGeneration": generation(d),
        "replicas": total,
        "updatedReplicas": total,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": want.saturating_sub(ready),
        "conditions": conditions,
    });
    write_status(sb, &deploy_gvr(), d, status);
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::controllers::{get, list, list_shared, nodes_gvr};

    fn ready_agents(sb: &Sandbox) -> Vec<i64> {
        list(sb, &ds_gvr(), Some("kube-system"))
            .iter()
            .filter(|d| name(d) == "calico-node")
            .filter_map(|d| d.pointer("/status/numberReady").and_then(Value::as_i64))
            .collect()
    }

    /// One pass over every node and pod of the store.
    fn pass_over_the_store(sb: &Sandbox, w: &mut Workloads) {
        let nodes = list_shared(sb, &nodes_gvr());
        let pods = list_shared(sb, &pods_gvr());
        w.reconcile(sb, &nodes, &pods);
    }

    /// The facts remembered between passes are of the copy they were read from: a pod
    /// written since is read again.
    #[test]
    fn a_pass_reads_again_a_pod_written_since_the_last() {
        let sb = super::super::small_seeded_sandbox(3);
        let mut w = Workloads::default();
        let pass = |w: &mut Workloads| pass_over_the_store(&sb, w);
        pass(&mut w);
        assert_eq!(ready_agents(&sb), vec![3]);
        let agent = list(&sb, &pods_gvr(), Some("kube-system"))
            .into_iter()
            .find(super::super::pods::is_calico_node)
            .expect("a calico-node pod");
        merge(
            &sb,
            &pods_gvr(),
            "kube-system",
            name(&agent),
            Subresource::Status,
            &json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
            "test",
        )
        .expect("the pod's status is written");
        pass(&mut w);
        assert_eq!(ready_agents(&sb), vec![2], "the unready agent was not seen");
        assert!(get(&sb, &pods_gvr(), "kube-system", name(&agent)).is_some());
    }

    fn desired_agents(sb: &Sandbox) -> i64 {
        get(sb, &ds_gvr(), "kube-system", "calico-node")
            .and_then(|d| {
                d.pointer("/status/desiredNumberScheduled")
                    .and_then(Value::as_i64)
            })
            .expect("calico-node's status")
    }

    /// Where a DaemonSet's pods go is remembered by node copy and template: a node
    /// relabelled since the last pass, and a template changed since, are looked at again.
    #[test]
    fn a_pass_places_again_on_a_relabelled_node_and_a_changed_template() {
        let sb = super::super::small_seeded_sandbox(3);
        let mut w = Workloads::default();
        let pass = |w: &mut Workloads| pass_over_the_store(&sb, w);
        pass(&mut w);
        assert_eq!(desired_agents(&sb), 3);
        let ds = get(&sb, &ds_gvr(), "kube-system", "calico-node").expect("calico-node");
        let (key, _) = ds
            .pointer("/spec/template/spec/nodeSelector")
            .and_then(Value::as_object)
            .and_then(|m| m.iter().next())
            .expect("the chart's agents select nodes by label");
        let node = list(&sb, &nodes_gvr(), None).remove(0);
        let patch = |g: &crate::sandbox::Gvr, ns: &str, n: &str, body: Value| {
            merge(&sb, g, ns, n, Subresource::Main, &body, "test").expect("the patch");
        };
        patch(
            &nodes_gvr(),
            "",
            name(&node),
            json!({"metadata": {"labels": {(key.as_str()): "elsewhere"}}}),
        );
        pass(&mut w);
        assert_eq!(desired_agents(&sb), 2, "the relabelled node still counted");
        let on_node = list(&sb, &pods_gvr(), Some("kube-system"))
            .into_iter()
            .filter(super::super::pods::is_calico_node)
            .filter(|p| p.pointer("/spec/nodeName") == node.pointer("/metadata/name"))
            .filter(|p| !deleting(p))
            .count();
        assert_eq!(
            on_node, 0,
            "the agent stayed on a node it no longer selects"
        );
        patch(
            &ds_gvr(),
            "kube-system",
            "calico-node",
            json!({"spec": {"template": {"spec": {"nodeSelector": {(key.as_str()): "elsewhere"}}}}}),
        );
        pass(&mut w);
        assert_eq!(
            desired_agents(&sb),
            1,
            "the changed template was not placed again"
        );
    }
}
