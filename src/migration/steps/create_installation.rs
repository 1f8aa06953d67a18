//! `create-installation`: create Installation `default` for EKS + AmazonVPC, which
//! starts the operator's migration (it labels every node `pre-operator` first).

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::cluster::objects::{ObjRef, contains};
use crate::engine::{Step, StepFuture, Verification};
use crate::kinds::{self, daemonset_rolled_out, deployment_ready};
use crate::migration::descriptor::{Checks, StepContext, StepPlan, change, lines};
use crate::migration::facts::int_at;
use crate::migration::nodes::list_nodes;
use crate::migration::operator::{
    OPERATOR_WORDS, current_degraded, degraded, freeze_operator, refusals, run_operator,
};
use crate::migration::pre_operator::PreOperator;
use crate::migration::refs::{
    CALICO_SYSTEM, MIGRATED, MIGRATION_LABEL, calico_system_node, installation_ref,
    kube_system_node, operator_ref, tigera_status_ref,
};
use crate::migration::wait::{wait_until, wait_while_progressing};
use crate::migration::way_back::{restore_agent_rbac, return_to_kube_system};
use crate::migration::world::World;

pub const ID: &str = "create-installation";

pub fn describe(ctx: &StepContext) -> StepPlan {
    let spec = ctx.profile.installation.to_string();
    StepPlan {
        id: ID,
        title: "Create Installation default (EKS, AmazonVPC CNI)".into(),
        changes: vec![
            change(
                "Installation default (operator.tigera.io/v1)",
                "create",
                &[&format!("spec {spec}")],
            ),
            change(
                "Node (every node, by the operator)",
                "label",
                &["projectcalico.org/operator-node-migration=pre-operator"],
            ),
            change(
                "DaemonSet kube-system/calico-node (by the operator)",
                "patch",
                &[
                    "spec.template.spec.nodeSelector: projectcalico.org/operator-node-migration=pre-operator",
                ],
            ),
            change(
                "Deployment kube-system/calico-typha-horizontal-autoscaler (by the operator)",
                "delete",
                &["the autoscaler; kube-system typha scaled down as calico-system typha comes up"],
            ),
        ],
        checks: Checks {
            before: lines(&[
                "the converter prediction has no refusal left",
                "tigera-operator Available",
            ]),
            after: lines(&[
                "TigeraStatus calico not Degraded (no MigrationError)",
                "every node labelled pre-operator; kube-system calico-node Ready on every node with the new nodeSelector",
                "calico-system typha Ready; probe matrix equals the baseline",
            ]),
        },
        rollback: lines(&[
            "scale the operator to 0; move migrated nodes back one at a time; delete Installation default and run the operator until it releases its finalizer (calico issue 6629)",
            "restore kube-system calico-node, typha and the autoscaler from the snapshot; remove the node labels",
        ]),
        gate: None,
    }
}

fn installation(world: &World) -> Value {
    json!({
        "apiVersion": "operator.tigera.io/v1",
        "kind": "Installation",
        "metadata": {"name": "default"},
        "spec": world.profile.installation,
    })
}

fn deleting(o: &Value) -> bool {
    o.pointer("/metadata/deletionTimestamp").is_some()
}

/// Whether the operator has taken the first steps: every node labelled, the
/// kube-system DaemonSet on the migration nodeSelector and rolled out (or the
/// operator went further). `Some(what)` while it has not.
async fn operator_started(world: &World) -> anyhow::Result<Option<String>> {
    // Only a Degraded whose cause is still true stops here; one left from a cause
    // fixed since is judged by what the operator does (operator::current_degraded).
    if let Some(d) = current_degraded(world).await? {
        bail!("{d}");
    }
    let waiting = started_or_waiting(world).await?;
    Ok(match (waiting, degraded(world).await?) {
        (Some(w), Some(d)) => Some(format!("{w}; it still reports {d}")),
        (w, _) => w,
    })
}

async fn started_or_waiting(world: &World) -> anyhow::Result<Option<String>> {
    if world.objects.get(&tigera_status_ref()).await?.is_none() {
        return Ok(Some(
            "no TigeraStatus calico yet: the operator has not reconciled the Installation".into(),
        ));
    }
    if world.objects.get(&calico_system_node()).await?.is_some() {
        return Ok(None);
    }
    let Some(ds) = world.objects.get(&kube_system_node()).await? else {
        return Ok(None);
    };
    let unlabelled = list_nodes(&world.objects)
        .await?
        .iter()
        .filter(|n| n.label.is_none())
        .count();
    if unlabelled > 0 {
        return Ok(Some(format!(
            "{unlabelled} node(s) not labelled by the operator yet"
        )));
    }
    let selector = ds
        .pointer("/spec/template/spec/nodeSelector")
        .and_then(|s| s.get(MIGRATION_LABEL))
        .is_some();
    if !selector {
        return Ok(Some(
            "kube-system calico-node not on the migration nodeSelector yet".into(),
        ));
    }
    if !kinds::is(&ds, daemonset_rolled_out) {
        return Ok(Some(format!(
            "kube-system calico-node rolling out with the migration nodeSelector ({} of {} Ready)",
            int_at(&ds, "/status/numberReady").unwrap_or(0),
            int_at(&ds, "/status/desiredNumberScheduled").unwrap_or(0)
        )));
    }
    Ok(None)
}

/// The step.
pub struct CreateInstallation;

impl CreateInstallation {
    async fn create(world: &World) -> anyhow::Result<()> {
        let Some(ds) = world.objects.get(&kube_system_node()).await? else {
            bail!(
                "DaemonSet kube-system/calico-node is missing: nothing for the operator to migrate; check the cluster against the plan"
            );
        };
        let refused = refusals(world, &ds).await?;
        if !refused.is_empty() {
            bail!(
                "the operator would refuse this DaemonSet (\"{OPERATOR_WORDS}: ...\"): {}; run the earlier steps (`calico-migrate apply --resume`) or fix it, then try again",
                refused.join("; ")
            );
        }
        match world.objects.get(&operator_ref()).await? {
            Some(d) if kinds::is(&d, deployment_ready) => {}
            _ => bail!(
                "tigera-operator is not Ready: an Installation without a running operator is never migrated and cannot be deleted (calico issue 6629); run `calico-migrate apply --resume` once it is Ready"
            ),
        }
        let obj = installation(world);
        world
            .objects
            .create(&obj)
            .await
            .context("creating Installation default")?;
        tracing::info!("created Installation default: the operator starts the migration");
        Ok(())
    }
}

impl Step<World> for CreateInstallation {
    fn id(&self) -> &str {
        ID
    }

    fn title(&self) -> &str {
        "Create Installation default (EKS, AmazonVPC CNI)"
    }

    fn capture<'a>(&'a self, world: &'a World) -> StepFuture<'a, Value> {
        Box::pin(async move {
            let pre = PreOperator::capture(world).await?;
            // The takeover starts after the operator changed these objects: it reads
            // this copy for its own rollback.
            pre.save_file(&world.state_dir)?;
            Ok(serde_json::to_value(pre)?)
        })
    }

    fn ensure<'a>(&'a self, world: &'a World) -> StepFuture<'a, ()> {
        Box::pin(async move {
            match world.objects.get(&installation_ref()).await? {
                Some(i) if deleting(&i) => bail!(
                    "Installation default is being deleted; wait until it is gone (the operator must run to release it), then `calico-migrate apply --resume`"
                ),
                Some(i) => {
                    let want = installation(world);
                    if !contains(&i["spec"], &want["spec"]) {
                        bail!(
                            "Installation default exists with a spec calico-migrate did not write ({}); the profile wants {}; delete it or align the profile",
                            i["spec"],
                            want["spec"]
                        );
                    }
                }
                None => Self::create(world).await?,
            }
            // The operator first rolls the kube-system calico-node onto the migration
            // nodeSelector, every node's agent once: on a large cluster that takes many
            // node_ready_timeouts, so the wait ends only when it stops progressing.
            wait_while_progressing(
                world,
                "the operator to start the migration",
                world.options.node_ready_timeout,
                || operator_started(world),
            )
            .await?;
            // From here the operator would move nodes on its own: takeover runs it
            // node by node, with checks in between.
            freeze_operator(world).await?;
            world
                .check_round(ID, "after the operator's nodeSelector change")
                .await?;
            Ok(())
        })
    }

    fn verify<'a>(&'a self, world: &'a World) -> StepFuture<'a, Verification> {
        Box::pin(async move {
            let Some(i) = world.objects.get(&installation_ref()).await? else {
                return Ok(Verification::failed("no Installation default"));
            };
            if deleting(&i) {
                return Ok(Verification::failed(
                    "Installation default is being deleted",
                ));
            }
            if let Some(d) = current_degraded(world).await? {
                return Ok(Verification::failed(d));
            }
            if world.objects.get(&tigera_status_ref()).await?.is_none() {
                return Ok(Verification::failed(
                    "no TigeraStatus calico yet: the operator has not reconciled the Installation",
                ));
            }
            Ok(match operator_started(world).await {
                Ok(None) => Verification::passed(
                    "Installation default exists, TigeraStatus calico not Degraded, the operator has started the migration",
                ),
                Ok(Some(w)) => Verification::failed(w),
                Err(e) => Verification::failed(format!("{e:#}")),
            })
        })
    }

    fn rollback<'a>(&'a self, world: &'a World, saved: &'a Value) -> StepFuture<'a, ()> {
        Box::pin(async move {
            let pre: PreOperator = serde_json::from_value(saved.clone())
                .context("create-installation's rollback data is not what this version wrote")?;
            // Nodes back first, the operator frozen (no-op when the takeover's
            // rollback already did it).
            return_to_kube_system(world, ID, &pre).await?;
            if let Some(nodes) = Some(list_nodes(&world.objects).await?)
                && nodes.iter().any(|n| n.label.as_deref() == Some(MIGRATED))
            {
                bail!("a node is still labelled {MIGRATED}; run `calico-migrate rollback` again");
            }
            // Delete the Installation while the operator is frozen, so that it
            // cannot start migrating again; then run the operator, which on a
            // deleting Installation only releases its finalizer (calico issue
            // 6629; src/sandbox/controllers/operator/migration.rs models this).
            if let Some(i) = world.objects.get(&installation_ref()).await? {
                if !deleting(&i) {
                    world.objects.delete(&installation_ref()).await?;
                    tracing::info!("deleting Installation default");
                }
                if world.objects.get(&operator_ref()).await?.is_some() {
                    run_operator(world, pre.operator_replicas.unwrap_or(1)).await?;
                }
                wait_until(
                    world,
                    "Installation default to be gone (the operator releases its finalizer)",
                    world.options.node_ready_timeout,
                    || async {
                        Ok(world.objects.get(&installation_ref()).await?.map(|i| {
                            format!(
                                "finalizers {}",
                                i.pointer("/metadata/finalizers")
                                    .cloned()
                                    .unwrap_or(Value::Null)
                            )
                        }))
                    },
                )
                .await?;
            }
            // The Installation is gone: calico-node's role and binding back as they were
            // (the operator owned its own versions of them), and checked.
            restore_agent_rbac(world, &pre).await?;
            // The operator as it was before the Installation.
            match pre.operator_replicas {
                Some(0) => {
                    freeze_operator(world).await?;
                }
                Some(n) => run_operator(world, n).await?,
                None => {}
            }
            if !pre.tigera_status_existed && world.objects.delete(&tigera_status_ref()).await? {
                tracing::info!("deleted TigeraStatus calico");
            }
            if !pre.calico_system_existed {
                let ns = ObjRef::new("v1", "Namespace", None, CALICO_SYSTEM);
                if world.objects.delete(&ns).await? {
                    tracing::info!("deleting namespace {CALICO_SYSTEM}");
                }
                wait_until(
                    world,
                    "namespace calico-system to be gone",
                    world.options.node_ready_timeout,
                    || {
                        let ns = ns.clone();
                        async move {
                            Ok(world
                                .objects
                                .get(&ns)
                                .await?
                                .map(|_| "terminating".to_string()))
                        }
                    },
                )
                .await?;
            }
            Ok(())
        })
    }

    fn preview<'a>(&'a self, world: &'a World) -> StepFuture<'a, Vec<String>> {
        Box::pin(async move {
            if world.objects.get(&installation_ref()).await?.is_some() {
                return Ok(Vec::new());
            }
            let mut out = vec![format!(
                "create Installation default with spec {}",
                world.profile.installation
            )];
            if let Some(ds) = world.objects.get(&kube_system_node()).await? {
                out.extend(
                    refusals(world, &ds)
                        .await?
                        .into_iter()
                        .map(|r| format!("(refused now) {r}")),
                );
            }
            out.push("then the operator labels every node pre-operator and moves kube-system calico-node onto that nodeSelector".into());
            Ok(out)
        })
    }
}
