//! `baseline`: snapshot every object the migration may touch, and every policy object,
//! into the journal; deploy probe workloads and record the reachability baseline.

use super::{Checks, StepContext, StepPlan, change, lines};

pub const ID: &str = "baseline";

pub fn describe(ctx: &StepContext) -> StepPlan {
    let s = ctx.summary;
    StepPlan {
        id: ID,
        title: "Snapshot the Calico install and every policy object; record the probe baseline"
            .into(),
        changes: vec![
            change(
                "journal (state dir)",
                "backup",
                &[
                    "kube-system calico-node, calico-typha, autoscaler, Service, PDB, ConfigMaps, ServiceAccounts",
                    "ClusterRoles/ClusterRoleBindings/Role/RoleBinding of the chart",
                    "Helm release records",
                    "Calico CRDs, FelixConfiguration, IPPools",
                    "every NetworkPolicy, Calico NetworkPolicy, GlobalNetworkPolicy, GlobalNetworkSet, NetworkSet, HostEndpoint",
                ],
            ),
            change(
                "Namespaces calico-migrate-probe-* (labelled calico-migrate.io/probe=true)",
                "create",
                &["client and server probe pods pinned to each node"],
            ),
        ],
        checks: Checks {
            before: vec![
                "the journal belongs to this cluster (kube-system UID) and this plan's fingerprint"
                    .into(),
                format!(
                    "policy counts compared with the plan's ({} NetworkPolicies, {} Calico NetworkPolicies, {} GlobalNetworkPolicies); a difference is reported, the baseline taken then is what later checks use",
                    s.network_policies, s.calico_network_policies, s.global_network_policies
                ),
            ],
            after: lines(&[
                "snapshot stored and flushed; digests of the policy objects recorded",
                "a probe pod Ready on every non-Fargate node; the probe matrix equals the policy engine's expectation",
            ]),
        },
        rollback: lines(&["delete the probe namespace (the snapshot stays in the journal)"]),
        gate: None,
    }
}

// ---------------------------------------------------------------------------
// apply / rollback

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::cluster::objects::{ObjRef, strip_server_fields};
use crate::engine::{Step, StepFuture, Verification};
use crate::migration::facts::{self, CALICO_GROUP, FARGATE_LABEL};
use crate::migration::world::{BASELINE_ROUND_FILE, Cluster, Observation, write_atomically};

/// Node label the operator's takeover moves nodes with.
pub const MIGRATION_LABEL: &str = "projectcalico.org/operator-node-migration";
pub(crate) const KUBE_SYSTEM: &str = "kube-system";

/// The policy kinds the migration must never lose: (apiVersion, kind).
pub const POLICY_KINDS: [(&str, &str); 6] = [
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("crd.projectcalico.org/v1", "NetworkPolicy"),
    ("crd.projectcalico.org/v1", "GlobalNetworkPolicy"),
    ("crd.projectcalico.org/v1", "GlobalNetworkSet"),
    ("crd.projectcalico.org/v1", "NetworkSet"),
    ("crd.projectcalico.org/v1", "HostEndpoint"),
];

/// kube-system objects of the chart that exist whatever the release manifest says
/// (a manifest install without Helm has no manifest to read them from).
const KNOWN_OBJECTS: [(&str, &str, &str); 9] = [
    ("apps/v1", "DaemonSet", "calico-node"),
    ("apps/v1", "Deployment", "calico-typha"),
    (
        "apps/v1",
        "Deployment",
        "calico-typha-horizontal-autoscaler",
    ),
    ("v1", "ConfigMap", "calico-typha-horizontal-autoscaler"),
    ("v1", "Service", "calico-typha"),
    ("policy/v1", "PodDisruptionBudget", "calico-typha"),
    ("v1", "ServiceAccount", "calico-node"),
    ("v1", "ServiceAccount", "calico-typha-cpha"),
    ("v1", "ConfigMap", "kubernetes-services-endpoint"),
];

/// Runs the `baseline` step.
pub struct Baseline;

impl Step<Cluster> for Baseline {
    fn id(&self) -> &str {
        ID
    }

    fn title(&self) -> &str {
        "Snapshot the Calico install and every policy object; record the probe baseline"
    }

    fn capture<'a>(&'a self, world: &'a Cluster) -> StepFuture<'a, Value> {
        Box::pin(async move {
            let snap = snapshot(world).await?;
            // verify-completion compares the policy set with this copy (the journal's
            // rollback data is the engine's, not the steps').
            BaselinePolicies {
                api_version: list_api_version(),
                kind: list_kind(),
                objects: snap["policies"].as_array().cloned().unwrap_or_default(),
            }
            .save(&world.state_dir)?;
            note_policy_counts(world, &snap);
            Ok(snap)
        })
    }

    fn ensure<'a>(&'a self, world: &'a Cluster) -> StepFuture<'a, ()> {
        Box::pin(async move {
            if let Some(r) = world.baseline_round()?
                && r.passed
            {
                tracing::info!("baseline round already recorded ({} probes)", r.probes);
                return Ok(());
            }
            tracing::info!("setting up the probe workload and running the baseline round");
            let report = world
                .check_round(ID, "baseline")
                .await
                .context("the baseline check did not pass, so the migration does not start")?;
            world.save_baseline_round(&report)?;
            tracing::info!(
                "baseline round passed: {} probes over {} nodes in {} ms",
                report.probes,
                report.nodes,
                report.millis
            );
            Ok(())
        })
    }

    fn verify<'a>(&'a self, world: &'a Cluster) -> StepFuture<'a, Verification> {
        Box::pin(async move {
            let Some(round) = world.baseline_round()? else {
                return Ok(Verification::failed("no baseline round is recorded yet"));
            };
            if !round.passed {
                return Ok(Verification::failed(format!(
                    "the recorded baseline round failed on node(s) {}",
                    round.failed_nodes.join(", ")
                )));
            }
            let missing = nodes_without_ready_agent(world).await?;
            if !missing.is_empty() {
                return Ok(Verification::failed(format!(
                    "no Ready calico-node on node(s) {}",
                    missing.join(", ")
                )));
            }
            Ok(Verification::passed(format!(
                "baseline round passed ({} probes, {} nodes); every node has a Ready calico-node",
                round.probes, round.nodes
            )))
        })
    }

    fn rollback<'a>(&'a self, world: &'a Cluster, _saved: &'a Value) -> StepFuture<'a, ()> {
        Box::pin(async move {
            world.remove_probes().await?;
            remove_file(&world.state_dir.join(BASELINE_ROUND_FILE))?;
            remove_file(&world.state_dir.join(BASELINE_POLICIES_FILE))?;
            Ok(())
        })
    }

    fn preview<'a>(&'a self, world: &'a Cluster) -> StepFuture<'a, Vec<String>> {
        Box::pin(async move {
            if world.baseline_round()?.is_some_and(|r| r.passed) {
                return Ok(vec![
                    "baseline round already recorded: nothing to do".into(),
                ]);
            }
            Ok(vec![
                "store a snapshot of the Calico install and every policy object in the journal"
                    .into(),
                "create the probe workload (namespaces calico-migrate-probe-*, one pod per node)"
                    .into(),
                "run the baseline check round and store it in the state dir".into(),
            ])
        })
    }
}

pub(crate) fn remove_file(path: &std::path::Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// The snapshot `baseline` journals: every object the migration may touch and
/// every policy object (stripped of server fields), node migration labels, and a
/// digest of the policy set.
pub async fn snapshot(world: &Cluster) -> anyhow::Result<Value> {
    let mut objects: BTreeMap<String, Value> = BTreeMap::new();
    let mut keep = |o: Value| {
        if let Some(r) = ObjRef::of(&o) {
            objects.insert(r.to_string(), strip_server_fields(&o));
        }
    };
    for (api, kind, name) in KNOWN_OBJECTS {
        let r = ObjRef::new(api, kind, Some(KUBE_SYSTEM), name);
        if let Some(o) = world.objects.get(&r).await? {
            keep(o);
        }
    }
    for s in super::detach_helm::release_secrets(world).await? {
        keep(s);
    }
    for (_, live) in super::detach_helm::chart_objects_live(world).await? {
        keep(live);
    }
    for crd in world
        .objects
        .list(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            None,
            None,
        )
        .await?
    {
        if facts::str_at(&crd, "/spec/group") == Some(CALICO_GROUP) {
            keep(crd);
        }
    }
    for kind in ["FelixConfiguration", "IPPool"] {
        for o in world
            .objects
            .list("crd.projectcalico.org/v1", kind, None, None)
            .await?
        {
            keep(o);
        }
    }
    let mut node_labels = serde_json::Map::new();
    for n in world.objects.list("v1", "Node", None, None).await? {
        let label = n
            .pointer(&format!(
                "/metadata/labels/{}",
                MIGRATION_LABEL.replace('/', "~1")
            ))
            .cloned()
            .unwrap_or(Value::Null);
        node_labels.insert(facts::name_of(&n).to_string(), label);
    }
    let policies = live_policies(world).await?;
    let mut counts = serde_json::Map::new();
    for (api, kind) in POLICY_KINDS {
        let n = policies
            .iter()
            .filter(|p| p["apiVersion"] == api && p["kind"] == kind)
            .count();
        counts.insert(format!("{api} {kind}"), json!(n));
    }
    let digest = policy_digest(&policies);
    world.observe(Observation::Note {
        step: ID.into(),
        text: format!(
            "snapshot: {} objects of the install, {} policy objects (digest {})",
            objects.len(),
            policies.len(),
            &digest[..12]
        ),
    });
    Ok(json!({
        "objects": objects.into_values().collect::<Vec<_>>(),
        "node_migration_labels": node_labels,
        "policies": policies,
        "policy_counts": counts,
        "policy_digest": digest,
    }))
}

/// The plan's policy counts beside the baseline's: teams change policies every day,
/// so a difference is reported, not refused (the baseline is what later checks use).
fn note_policy_counts(world: &Cluster, snap: &Value) {
    let plan_inv = world.plan.get("inventory");
    let count = |api: &str, kind: &str| {
        snap["policy_counts"][format!("{api} {kind}")]
            .as_u64()
            .unwrap_or(0)
    };
    let pairs = [
        ("network_policies", "networking.k8s.io/v1", "NetworkPolicy"),
        ("calico_network_policies", CALICO_V1, "NetworkPolicy"),
        ("global_network_policies", CALICO_V1, "GlobalNetworkPolicy"),
        ("global_network_sets", CALICO_V1, "GlobalNetworkSet"),
        ("network_sets", CALICO_V1, "NetworkSet"),
        ("host_endpoints", CALICO_V1, "HostEndpoint"),
    ];
    let changed: Vec<String> = pairs
        .iter()
        .filter_map(|(key, api, kind)| {
            let planned = plan_inv?.get(*key)?.as_u64()?;
            let now = count(api, kind);
            (planned != now).then(|| format!("{kind} ({api}) {planned} -> {now}"))
        })
        .collect();
    let text = if changed.is_empty() {
        "policy counts as in the plan".to_string()
    } else {
        format!(
            "policy counts changed since the plan: {}; the baseline taken now is what later checks compare with",
            changed.join(", ")
        )
    };
    tracing::info!("{text}");
    world.observe(Observation::Note {
        step: ID.into(),
        text,
    });
}

const CALICO_V1: &str = "crd.projectcalico.org/v1";

/// Every policy object of the kinds the migration must never lose, stripped; the
/// probe workload's own policies are not the cluster's.
pub async fn live_policies(world: &Cluster) -> anyhow::Result<Vec<Value>> {
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
    pub fn save(&self, dir: &std::path::Path) -> anyhow::Result<()> {
        write_atomically(
            &dir.join(BASELINE_POLICIES_FILE),
            &serde_json::to_vec(self)?,
        )
    }

    pub fn load(dir: &std::path::Path) -> anyhow::Result<Option<Self>> {
        let path = dir.join(BASELINE_POLICIES_FILE);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .with_context(|| format!("{} is damaged", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
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

/// Non-Fargate nodes with no Ready calico-node pod (kube-system or calico-system).
pub async fn nodes_without_ready_agent(world: &Cluster) -> anyhow::Result<Vec<String>> {
    let mut ready: std::collections::BTreeSet<String> = Default::default();
    for (ns, sel) in [
        (KUBE_SYSTEM, "app.kubernetes.io/name=calico-node"),
        (KUBE_SYSTEM, "k8s-app=calico-node"),
        ("calico-system", "k8s-app=calico-node"),
    ] {
        for p in world.objects.list("v1", "Pod", Some(ns), Some(sel)).await? {
            if pod_ready(&p)
                && let Some(n) = facts::str_at(&p, "/spec/nodeName")
            {
                ready.insert(n.to_string());
            }
        }
    }
    Ok(worker_nodes(world)
        .await?
        .into_iter()
        .filter(|n| !ready.contains(facts::name_of(n)))
        .map(|n| facts::name_of(&n).to_string())
        .collect())
}

/// Nodes that run DaemonSet pods: every node except Fargate ones.
pub async fn worker_nodes(world: &Cluster) -> anyhow::Result<Vec<Value>> {
    Ok(world
        .objects
        .list("v1", "Node", None, None)
        .await?
        .into_iter()
        .filter(|n| !is_fargate(n))
        .filter(|n| n.pointer("/metadata/deletionTimestamp").is_none())
        .collect())
}

pub fn is_fargate(node: &Value) -> bool {
    node.pointer(&format!(
        "/metadata/labels/{}",
        FARGATE_LABEL.replace('/', "~1")
    ))
    .and_then(Value::as_str)
        == Some("fargate")
}

/// Ready condition True and not being deleted.
pub fn pod_ready(p: &Value) -> bool {
    p.pointer("/metadata/deletionTimestamp").is_none()
        && p.pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
}

// -- rollback data kept in the state dir ------------------------------------
//
// The engine captures again when a failed step is attempted again, after that
// step may already have changed the cluster (deleted a Secret, removed an
// affinity). Steps whose changes destroy what their rollback needs keep their
// first capture in the state dir and return it from every later capture, until
// their rollback finishes.

fn capture_path(world: &Cluster, step: &str) -> PathBuf {
    world.state_dir.join(format!("capture-{step}.json"))
}

/// The capture an earlier attempt of `step` stored, if any.
pub(crate) fn stored_capture(world: &Cluster, step: &str) -> anyhow::Result<Option<Value>> {
    let path = capture_path(world, step);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("{} is not valid JSON; remove it only if no attempt of `{step}` changed the cluster", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Keep `data` as the first capture of `step` (atomically), and return it.
pub(crate) fn keep_capture(world: &Cluster, step: &str, data: Value) -> anyhow::Result<Value> {
    write_atomically(&capture_path(world, step), &serde_json::to_vec(&data)?)?;
    Ok(data)
}

/// Forget the first capture of `step` once its rollback is complete.
pub(crate) fn forget_capture(world: &Cluster, step: &str) -> anyhow::Result<()> {
    remove_file(&capture_path(world, step))
}
