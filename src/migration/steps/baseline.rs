//! `baseline`: snapshot every object the migration may touch, and every policy object,
//! into the journal; deploy probe workloads and record the reachability baseline.

use std::collections::BTreeMap;

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::cluster::objects::{ObjRef, strip_server_fields};
use crate::engine::{Step, StepFuture, Verification};
use crate::migration::capture::remove_file;
use crate::migration::descriptor::{Checks, StepContext, StepPlan, change, lines};
use crate::migration::facts;
use crate::migration::nodes::nodes_without_ready_agent;
use crate::migration::policies::{
    BASELINE_POLICIES_FILE, BaselinePolicies, POLICY_KINDS, live_policies, policy_digest,
};
use crate::migration::refs::{CALICO_GROUP, KUBE_SYSTEM, MIGRATION_LABEL};
use crate::migration::release::{chart_objects_live, release_secrets};
use crate::migration::world::{BASELINE_ROUND_FILE, Observation, World};

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

impl Step<World> for Baseline {
    fn id(&self) -> &str {
        ID
    }

    fn title(&self) -> &str {
        "Snapshot the Calico install and every policy object; record the probe baseline"
    }

    fn capture<'a>(&'a self, world: &'a World) -> StepFuture<'a, Value> {
        Box::pin(async move {
            let snap = snapshot(world).await?;
            // verify-completion compares the policy set with this copy (the journal's
            // rollback data is the engine's, not the steps').
            BaselinePolicies::new(snap["policies"].as_array().cloned().unwrap_or_default())
                .save(&world.state_dir)?;
            note_policy_counts(world, &snap);
            Ok(snap)
        })
    }

    fn ensure<'a>(&'a self, world: &'a World) -> StepFuture<'a, ()> {
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

    fn verify<'a>(&'a self, world: &'a World) -> StepFuture<'a, Verification> {
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
            let missing = nodes_without_ready_agent(&world.objects).await?;
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

    fn rollback<'a>(&'a self, world: &'a World, _saved: &'a Value) -> StepFuture<'a, ()> {
        Box::pin(async move {
            world.remove_probes().await?;
            remove_file(&world.state_dir.join(BASELINE_ROUND_FILE))?;
            remove_file(&world.state_dir.join(BASELINE_POLICIES_FILE))?;
            Ok(())
        })
    }

    fn preview<'a>(&'a self, world: &'a World) -> StepFuture<'a, Vec<String>> {
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

/// The snapshot `baseline` journals: every object the migration may touch and
/// every policy object (stripped of server fields), node migration labels, and a
/// digest of the policy set.
pub async fn snapshot(world: &World) -> anyhow::Result<Value> {
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
    for s in release_secrets(world).await? {
        keep(s);
    }
    for (_, live) in chart_objects_live(world).await? {
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
fn note_policy_counts(world: &World, snap: &Value) {
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

// -- rollback data kept in the state dir ------------------------------------
//
// The engine captures again when a failed step is attempted again, after that
// step may already have changed the cluster (deleted a Secret, removed an
// affinity). Steps whose changes destroy what their rollback needs keep their
// first capture in the state dir and return it from every later capture, until
// their rollback finishes.
