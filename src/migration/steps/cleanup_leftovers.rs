//! `cleanup-leftovers`: remove what the operator's migration leaves behind from the
//! chart, never RBAC the operator now uses, never a policy object or a CRD.

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::cluster::objects::{ObjRef, strip_server_fields};
use crate::engine::{Step, StepFuture, Verification};
use crate::migration::descriptor::{Checks, StepContext, StepPlan, change, lines};
use crate::migration::operator::condition;
use crate::migration::refs::{KUBE_SYSTEM, tigera_status_ref};
use crate::migration::wait::wait_gone;
use crate::migration::world::World;

pub const ID: &str = "cleanup-leftovers";

/// Chart objects the operator leaves behind and does not use (docs/upstream.md,
/// "The operator's migration").
pub const LEFTOVERS: [&str; 5] = [
    "Service kube-system/calico-typha",
    "PodDisruptionBudget kube-system/calico-typha",
    "ConfigMap kube-system/calico-typha-horizontal-autoscaler",
    "ServiceAccount kube-system/calico-typha-cpha",
    "Role/RoleBinding kube-system/calico-typha-cpha, ClusterRole/ClusterRoleBinding calico-typha-cpha",
];

pub fn describe(_ctx: &StepContext) -> StepPlan {
    StepPlan {
        id: ID,
        title: "Delete the chart's leftovers the operator does not use".into(),
        changes: LEFTOVERS
            .iter()
            .map(|o| change(*o, "delete", &["after snapshot (already in the baseline)"]))
            .collect(),
        checks: Checks {
            before: lines(&[
                "verify-completion passed",
                "kept: ClusterRole/ClusterRoleBinding calico-node and ServiceAccount calico-node (the operator took them over), all CRDs, all policy objects",
            ]),
            after: lines(&[
                "TigeraStatus calico still Available; probe matrix equals the baseline",
            ]),
        },
        rollback: lines(&["re-create the deleted objects from the snapshot"]),
        gate: None,
    }
}

// ---------------------------------------------------------------------------
// apply / rollback

/// The autoscaler's ServiceAccount: the only subject the cpha bindings may name.
const CPHA: &str = "calico-typha-cpha";

/// The leftover objects, each at the API versions it may be served at (the chart's
/// policy/v1beta1 PodDisruptionBudget is policy/v1 on Kubernetes 1.25+).
fn leftover_refs() -> Vec<Vec<ObjRef>> {
    let ks = |api: &str, kind: &str, name: &str| ObjRef::new(api, kind, Some(KUBE_SYSTEM), name);
    let rbac = "rbac.authorization.k8s.io/v1";
    vec![
        vec![ks("v1", "Service", "calico-typha")],
        vec![
            ks("policy/v1", "PodDisruptionBudget", "calico-typha"),
            ks("policy/v1beta1", "PodDisruptionBudget", "calico-typha"),
        ],
        vec![ks("v1", "ConfigMap", "calico-typha-horizontal-autoscaler")],
        vec![ks(rbac, "RoleBinding", CPHA)],
        vec![ks(rbac, "Role", CPHA)],
        vec![ObjRef::new(rbac, "ClusterRoleBinding", None, CPHA)],
        vec![ObjRef::new(rbac, "ClusterRole", None, CPHA)],
        vec![ks("v1", "ServiceAccount", CPHA)],
    ]
}

/// The leftovers that exist now, live.
async fn present(world: &World) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for candidates in leftover_refs() {
        for r in candidates {
            if let Some(o) = world.objects.get(&r).await? {
                out.push(o);
                break;
            }
        }
    }
    Ok(out)
}

/// Reasons not to delete `o`: something still uses it, or it grants more than the
/// chart's autoscaler (someone bound other subjects to it).
async fn in_use(world: &World, o: &Value) -> anyhow::Result<Option<String>> {
    let Some(r) = ObjRef::of(o) else {
        return Ok(None);
    };
    match r.kind.as_str() {
        "ClusterRoleBinding" | "RoleBinding" => {
            let others: Vec<String> = o
                .get("subjects")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|s| {
                    !(s["kind"] == "ServiceAccount"
                        && s["name"] == CPHA
                        && s["namespace"] == KUBE_SYSTEM)
                })
                .map(|s| {
                    format!(
                        "{} {}/{}",
                        s["kind"].as_str().unwrap_or("?"),
                        s["namespace"].as_str().unwrap_or(""),
                        s["name"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            Ok((!others.is_empty()).then(|| format!("{r} also binds {}: kept", others.join(", "))))
        }
        "ServiceAccount" => {
            let users: Vec<String> = world
                .objects
                .list("v1", "Pod", Some(KUBE_SYSTEM), None)
                .await?
                .iter()
                .filter(|p| {
                    p.pointer("/spec/serviceAccountName")
                        .and_then(Value::as_str)
                        == Some(CPHA)
                })
                .filter_map(|p| p.pointer("/metadata/name").and_then(Value::as_str))
                .map(str::to_string)
                .collect();
            Ok((!users.is_empty())
                .then(|| format!("{r} is used by pod(s) {}: kept", users.join(", "))))
        }
        _ => Ok(None),
    }
}

fn available(ts: &Value) -> bool {
    matches!(condition(ts, "Available"), Some((true, _, _)))
}

/// The step.
pub struct CleanupLeftovers;

impl Step<World> for CleanupLeftovers {
    fn id(&self) -> &str {
        ID
    }

    fn title(&self) -> &str {
        "Delete the chart's leftovers the operator does not use"
    }

    fn capture<'a>(&'a self, world: &'a World) -> StepFuture<'a, Value> {
        Box::pin(async move {
            let objects: Vec<Value> = present(world)
                .await?
                .iter()
                .map(strip_server_fields)
                .collect();
            Ok(serde_json::json!({ "objects": objects }))
        })
    }

    fn ensure<'a>(&'a self, world: &'a World) -> StepFuture<'a, ()> {
        Box::pin(async move {
            match world.objects.get(&tigera_status_ref()).await? {
                Some(ts) if available(&ts) => {}
                _ => bail!(
                    "TigeraStatus calico is not Available: the chart's leftovers stay until the operator runs Calico (`calico-migrate status`, then `calico-migrate apply --resume`)"
                ),
            }
            let mut deleted = Vec::new();
            for o in present(world).await? {
                let Some(r) = ObjRef::of(&o) else { continue };
                if let Some(why) = in_use(world, &o).await? {
                    tracing::warn!("{why}");
                    continue;
                }
                if world.objects.delete(&r).await? {
                    tracing::info!("deleted {r} (a leftover of the chart)");
                }
                deleted.push(r);
            }
            wait_gone(world, "the chart's leftovers to be gone", &deleted).await?;
            world
                .check_round(ID, "after removing the chart's leftovers")
                .await?;
            Ok(())
        })
    }

    fn verify<'a>(&'a self, world: &'a World) -> StepFuture<'a, Verification> {
        Box::pin(async move {
            let mut left = Vec::new();
            for o in present(world).await? {
                if in_use(world, &o).await?.is_none() {
                    left.push(ObjRef::of(&o).map(|r| r.to_string()).unwrap_or_default());
                }
            }
            if !left.is_empty() {
                return Ok(Verification::failed(format!(
                    "still present: {}",
                    left.join(", ")
                )));
            }
            Ok(match world.objects.get(&tigera_status_ref()).await? {
                Some(ts) if available(&ts) => Verification::passed(
                    "the chart's unused leftovers are gone; TigeraStatus calico Available",
                ),
                _ => Verification::failed("TigeraStatus calico is not Available"),
            })
        })
    }

    fn rollback<'a>(&'a self, world: &'a World, saved: &'a Value) -> StepFuture<'a, ()> {
        Box::pin(async move {
            let objects = saved
                .get("objects")
                .and_then(Value::as_array)
                .context("cleanup-leftovers' rollback data is not what this version wrote")?;
            // ServiceAccount and roles before the bindings that name them.
            for o in objects.iter().rev() {
                if world.objects.restore(o).await? {
                    tracing::info!(
                        "re-created {}",
                        ObjRef::of(o).map(|r| r.to_string()).unwrap_or_default()
                    );
                }
            }
            Ok(())
        })
    }

    fn preview<'a>(&'a self, world: &'a World) -> StepFuture<'a, Vec<String>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for o in present(world).await? {
                let r = ObjRef::of(&o).map(|r| r.to_string()).unwrap_or_default();
                match in_use(world, &o).await? {
                    Some(why) => out.push(format!("keep {r}: {why}")),
                    None => out.push(format!("delete {r}")),
                }
            }
            Ok(out)
        })
    }
}
