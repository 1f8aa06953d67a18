//! `verify-completion`: the operator finished: TigeraStatus Available, kube-system
//! agents gone, every node migrated, the policy set unchanged.

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::{Step, StepFuture, Verification};
use crate::migration::capture::remove_file;
use crate::migration::descriptor::{Checks, StepContext, StepPlan, change, lines};
use crate::migration::facts::int_at;
use crate::migration::nodes::{agents_ready, list_nodes};
use crate::migration::operator::condition;
use crate::migration::policies::{BASELINE_POLICIES_FILE, BaselinePolicies, live_policies};
use crate::migration::refs::{
    CALICO_SYSTEM, calico_system_typha, kube_system_node, kube_system_typha, operator_ref,
    tigera_status_ref,
};
use crate::migration::wait::wait_until;
use crate::migration::world::World;

pub const ID: &str = "verify-completion";

pub fn describe(ctx: &StepContext) -> StepPlan {
    let s = ctx.summary;
    StepPlan {
        id: ID,
        title: "Verify the operator completed the migration".into(),
        changes: vec![change("(none)", "read", &["read-only step"])],
        checks: Checks {
            before: lines(&["takeover done on every node"]),
            after: vec![
                "TigeraStatus calico Available; Installation status mirrors it".into(),
                "kube-system DaemonSet calico-node and Deployment calico-typha deleted by the operator".into(),
                "every node's calico-node runs from calico-system; node migration labels removed".into(),
                format!(
                    "policy set unchanged: {} NetworkPolicies, {} Calico NetworkPolicies, {} GlobalNetworkPolicies, same digests as the baseline",
                    s.network_policies, s.calico_network_policies, s.global_network_policies
                ),
                "probe matrix equals the baseline".into(),
            ],
        },
        rollback: lines(&["nothing to undo (read-only)"]),
        gate: None,
    }
}

// ---------------------------------------------------------------------------
// apply / rollback

/// What `ensure` measured, kept in the state dir: `verify` is read-only and
/// cannot run probes, so it reads this record of the last passing round.
pub const RECORD_FILE: &str = "verify-completion.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    probes: usize,
    nodes: usize,
    policies_checked: usize,
    policies_added: Vec<String>,
}

/// Everything the operator's finished migration leaves, or what is still missing.
async fn unfinished(world: &World) -> anyhow::Result<Vec<String>> {
    let mut missing = Vec::new();
    if world
        .objects
        .get(&operator_ref())
        .await?
        .is_some_and(|d| int_at(&d, "/spec/replicas") == Some(0))
    {
        missing.push("the operator is frozen (Deployment tigera-operator scaled to 0)".into());
    }
    match world.objects.get(&tigera_status_ref()).await? {
        None => missing.push("no TigeraStatus calico".to_string()),
        Some(ts) => {
            if let Some((true, reason, message)) = condition(&ts, "Degraded") {
                missing.push(format!(
                    "TigeraStatus calico Degraded ({reason}): {message}"
                ));
            }
            if !matches!(condition(&ts, "Available"), Some((true, _, _))) {
                let why = match condition(&ts, "Progressing") {
                    Some((true, _, m)) if !m.is_empty() => format!(" (progressing: {m})"),
                    _ => String::new(),
                };
                missing.push(format!("TigeraStatus calico not Available{why}"));
            }
        }
    }
    for r in [kube_system_node(), kube_system_typha()] {
        if world.objects.get(&r).await?.is_some() {
            missing.push(format!("{r} still exists"));
        }
    }
    let agents = agents_ready(&world.objects, CALICO_SYSTEM).await?;
    let nodes = list_nodes(&world.objects).await?;
    let without: Vec<&str> = nodes
        .iter()
        .filter(|n| !n.fargate && !agents.contains(&n.name))
        .map(|n| n.name.as_str())
        .collect();
    if !without.is_empty() {
        missing.push(format!(
            "no Ready calico-system calico-node on {}",
            without.join(", ")
        ));
    }
    let labelled: Vec<&str> = nodes
        .iter()
        .filter(|n| n.label.is_some())
        .map(|n| n.name.as_str())
        .collect();
    if !labelled.is_empty() {
        missing.push(format!(
            "node migration label still on {}",
            labelled.join(", ")
        ));
    }
    Ok(missing)
}

/// Every policy object of the baseline still there and unchanged; objects added
/// since are returned (teams may add policies during the window; none may vanish).
async fn policies_unchanged(world: &World) -> anyhow::Result<(usize, Vec<String>)> {
    let Some(base) = BaselinePolicies::load(&world.state_dir)? else {
        anyhow::bail!(
            "the baseline's policy objects are not in the state dir ({}); run `calico-migrate apply --resume` from the state dir the baseline step used",
            world.state_dir.display()
        );
    };
    let live = live_policies(world).await?;
    let diff = base.compare(&live);
    if !diff.removed.is_empty() || !diff.changed.is_empty() {
        anyhow::bail!(
            "the policy set changed since the baseline: removed {}; changed {}. calico-migrate never deletes or rewrites a policy object: find who did (the API server's audit log); the baseline's copies are in {} (`kubectl apply -f` it restores them), then `calico-migrate apply --resume`",
            list_or_none(&diff.removed),
            list_or_none(&diff.changed),
            world.state_dir.join(BASELINE_POLICIES_FILE).display()
        );
    }
    Ok((base.objects.len(), diff.added))
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn record_path(world: &World) -> std::path::PathBuf {
    world.state_dir.join(RECORD_FILE)
}

/// The step (read-only on the cluster).
pub struct VerifyCompletion;

impl Step<World> for VerifyCompletion {
    fn id(&self) -> &str {
        ID
    }

    fn title(&self) -> &str {
        "Verify the operator completed the migration"
    }

    fn capture<'a>(&'a self, _world: &'a World) -> StepFuture<'a, Value> {
        Box::pin(async { Ok(Value::Null) })
    }

    fn ensure<'a>(&'a self, world: &'a World) -> StepFuture<'a, ()> {
        Box::pin(async move {
            // The operator removes the node labels and reports Available on later
            // reconciles: give it the time one node's swap is allowed.
            wait_until(
                world,
                "the operator to finish",
                world.options.node_ready_timeout,
                || async {
                    let m = unfinished(world).await?;
                    if m.iter().any(|w| w.starts_with("the operator is frozen")) {
                        anyhow::bail!(
                            "the operator is frozen (Deployment tigera-operator/tigera-operator scaled to 0), so it cannot finish: start it again (`kubectl -n tigera-operator scale deployment tigera-operator --replicas=1`) and `calico-migrate apply --resume`"
                        );
                    }
                    Ok((!m.is_empty()).then(|| m.join("; ")))
                },
            )
            .await?;
            let (checked, added) = policies_unchanged(world).await?;
            if !added.is_empty() {
                tracing::info!(
                    "{} policy object(s) added since the baseline (kept): {}",
                    added.len(),
                    added.join(", ")
                );
            }
            let round = world.check_round(ID, "after the operator finished").await?;
            let record = Record {
                probes: round.probes,
                nodes: round.nodes,
                policies_checked: checked,
                policies_added: added,
            };
            crate::engine::state_dir::write_atomic(
                &record_path(world),
                &serde_json::to_vec(&record)?,
            )?;
            Ok(())
        })
    }

    fn verify<'a>(&'a self, world: &'a World) -> StepFuture<'a, Verification> {
        Box::pin(async move {
            let missing = unfinished(world).await?;
            if !missing.is_empty() {
                return Ok(Verification::failed(missing.join("; ")));
            }
            let record: Option<Record> = match std::fs::read(record_path(world)) {
                Ok(b) => serde_json::from_slice(&b).ok(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot read {}", record_path(world).display()));
                }
            };
            let Some(record) = record else {
                return Ok(Verification::failed(
                    "no check round has passed since the operator finished",
                ));
            };
            if let Err(e) = policies_unchanged(world).await {
                return Ok(Verification::failed(format!("{e:#}")));
            }
            let typha = world
                .objects
                .get(&calico_system_typha())
                .await?
                .and_then(|d| int_at(&d, "/status/readyReplicas"))
                .unwrap_or(0);
            Ok(Verification::passed(format!(
                "TigeraStatus calico Available; kube-system agents gone; every node on calico-system ({typha} typha Ready); {} policy object(s) unchanged{}; {} probes passed on {} node(s)",
                record.policies_checked,
                if record.policies_added.is_empty() {
                    String::new()
                } else {
                    format!(", {} added", record.policies_added.len())
                },
                record.probes,
                record.nodes
            )))
        })
    }

    fn rollback<'a>(&'a self, world: &'a World, _saved: &'a Value) -> StepFuture<'a, ()> {
        Box::pin(async move { remove_file(&record_path(world)) })
    }

    fn preview<'a>(&'a self, world: &'a World) -> StepFuture<'a, Vec<String>> {
        Box::pin(async move {
            let _ = world;
            Ok(vec![
                "read-only: wait for TigeraStatus calico Available, compare the policy set with the baseline, run a check round".into(),
            ])
        })
    }
}
