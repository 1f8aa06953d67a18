//! `install-operator`: apply the operator's CRDs and the operator, without an
//! Installation (which would start the migration at once). Also the helpers the
//! later operator steps share: freezing and resuming the operator, waits, and a
//! "does the live object already hold these fields" test. And the one reader of the
//! operator manifest ([`read_manifest`]) and its check against the APIs the cluster
//! serves ([`unserved`]), which `plan --operator-manifest` uses too.

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cluster::objects::ObjRef;
use crate::engine::{Step, StepFuture, Verification};
use crate::kinds::{self, deployment_ready};
use crate::migration::crds::delete_created;
use crate::migration::descriptor::{Checks, StepContext, StepPlan, change, lines};
use crate::migration::facts::int_at;
use crate::migration::operator::wait_operator_ready;
use crate::migration::operator_manifest::{
    Order, apply_in_order, live_state, manifest_in_order, preview_in_order, refuse_unserved,
};
use crate::migration::profile::OperatorInstall;
use crate::migration::refs::{installation_ref, operator_ref};
use crate::migration::wait::wait_gone;
use crate::migration::world::World;

pub const ID: &str = "install-operator";

pub fn describe(ctx: &StepContext) -> StepPlan {
    let p = ctx.profile;
    let external = p.operator.install == OperatorInstall::External;
    let pin = ctx.manifest_sha256.unwrap_or("(not pinned)");
    StepPlan {
        id: ID,
        title: format!("Install the Tigera Operator {} without an Installation", p.target.operator_version),
        changes: if external {
            vec![change("tigera-operator (installed by Helm/Terraform)", "create", &["by the team, outside calico-migrate"])]
        } else {
            vec![
                change("CustomResourceDefinition *.operator.tigera.io", "create", &["from the pinned manifest"]),
                change("Namespace tigera-operator, ServiceAccount, ClusterRole, ClusterRoleBinding", "create", &["from the pinned manifest"]),
                change("Deployment tigera-operator/tigera-operator", "create", &[&format!("image quay.io/tigera/operator:{}", p.target.operator_version), &format!("manifest sha256 {pin}")]),
            ]
        },
        checks: Checks {
            before: lines(&[
                "no Installation exists (else the operator would start migrating at once)",
                "the Calico crd.projectcalico.org CRDs are v1; the projectcalico.org/v3 CRDs are never applied",
            ]),
            after: lines(&["tigera-operator Deployment Available", "kube-system calico-node untouched (same generation)"]),
        },
        rollback: lines(&["delete the operator Deployment, its RBAC and namespace, and the CRDs it created (a Calico CRD only while it holds no object)"]),
        gate: external.then(|| format!(
            "install tigera-operator {} with Helm/Terraform WITHOUT an Installation (chart value installation.enabled=false), then run `calico-migrate apply --resume`",
            p.target.operator_version
        )),
    }
}

/// What install-operator's rollback needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Saved {
    /// The operator was installed outside calico-migrate: nothing to undo.
    external: bool,
    /// Manifest objects that existed before, as they were.
    existed: Vec<Value>,
    /// Manifest objects that did not exist: rollback deletes these (a Calico CRD only
    /// while it holds no object).
    created: Vec<ObjRef>,
}

fn is_calico_crd(r: &ObjRef) -> bool {
    r.kind == "CustomResourceDefinition" && r.name.ends_with("projectcalico.org")
}

fn gate_message(world: &World, found: &str) -> String {
    format!(
        "waiting for the operator: install tigera-operator {} with your Helm/Terraform, without an Installation (Helm chart value installation.enabled=false), then run `calico-migrate apply --resume` ({found})",
        world.profile.target.operator_version
    )
}

/// The step.
pub struct InstallOperator;

impl InstallOperator {
    fn external(world: &World) -> bool {
        world.profile.operator.install == OperatorInstall::External
    }

    async fn refuse_installation(world: &World) -> anyhow::Result<()> {
        if world.objects.get(&installation_ref()).await?.is_some() {
            bail!(
                "Installation default already exists, so the operator starts migrating on its own before calico-migrate can check each node (the tigera-operator Helm chart creates one unless installation.enabled=false); run `calico-migrate rollback`, or delete that Installation while the operator still runs and `calico-migrate apply --resume`"
            );
        }
        Ok(())
    }

    async fn ensure_external(world: &World) -> anyhow::Result<()> {
        Self::refuse_installation(world).await?;
        match world.objects.get(&operator_ref()).await? {
            Some(d) if kinds::is(&d, deployment_ready) => Ok(()),
            Some(_) => bail!(
                "{}",
                gate_message(world, "its Deployment exists but is not Ready yet")
            ),
            None => bail!(
                "{}",
                gate_message(world, "no Deployment tigera-operator/tigera-operator yet")
            ),
        }
    }

    async fn ensure_manifest(world: &World) -> anyhow::Result<()> {
        Self::refuse_installation(world).await?;
        let objects = manifest_in_order(world, Order::Install)?;
        if objects.is_empty() {
            bail!(
                "the operator manifest is empty; give the reviewed file with `--operator-manifest FILE`"
            );
        }
        refuse_unserved(world).await?;
        apply_in_order(world, &objects).await?;
        wait_operator_ready(world).await
    }
}

impl Step<World> for InstallOperator {
    fn id(&self) -> &str {
        ID
    }

    fn title(&self) -> &str {
        "Install the Tigera Operator without an Installation"
    }

    fn capture<'a>(&'a self, world: &'a World) -> StepFuture<'a, Value> {
        Box::pin(async move {
            if Self::external(world) {
                return Ok(serde_json::to_value(Saved {
                    external: true,
                    ..Saved::default()
                })?);
            }
            let (existed, created) = live_state(world, Order::Install).await?;
            Ok(serde_json::to_value(Saved {
                external: false,
                existed,
                created,
            })?)
        })
    }

    fn ensure<'a>(&'a self, world: &'a World) -> StepFuture<'a, ()> {
        Box::pin(async move {
            if Self::external(world) {
                Self::ensure_external(world).await
            } else {
                Self::ensure_manifest(world).await
            }
        })
    }

    fn verify<'a>(&'a self, world: &'a World) -> StepFuture<'a, Verification> {
        Box::pin(async move {
            if world.objects.get(&installation_ref()).await?.is_some() {
                return Ok(Verification::failed(
                    "Installation default exists: the operator would migrate without calico-migrate's checks",
                ));
            }
            Ok(match world.objects.get(&operator_ref()).await? {
                Some(d) if kinds::is(&d, deployment_ready) => Verification::passed(format!(
                    "tigera-operator Ready ({} replica(s)), image {}; no Installation yet",
                    int_at(&d, "/status/readyReplicas").unwrap_or(0),
                    d.pointer("/spec/template/spec/containers/0/image")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                )),
                Some(d) => Verification::failed(format!(
                    "tigera-operator not Ready: {} of {} replica(s)",
                    int_at(&d, "/status/readyReplicas").unwrap_or(0),
                    int_at(&d, "/spec/replicas").unwrap_or(1)
                )),
                None => Verification::failed("no Deployment tigera-operator/tigera-operator"),
            })
        })
    }

    fn rollback<'a>(&'a self, world: &'a World, saved: &'a Value) -> StepFuture<'a, ()> {
        Box::pin(async move {
            let saved: Saved = serde_json::from_value(saved.clone())
                .context("install-operator's rollback data is not what this version wrote")?;
            if saved.external {
                tracing::info!(
                    "the operator was installed outside calico-migrate: uninstall it with the tool that installed it"
                );
                return Ok(());
            }
            if let Some(i) = world.objects.get(&installation_ref()).await? {
                let deleting = i.pointer("/metadata/deletionTimestamp").is_some();
                bail!(
                    "Installation default still exists{}: removing the operator now would leave its finalizer for ever (calico issue 6629); roll back create-installation first",
                    if deleting { " (being deleted)" } else { "" }
                );
            }
            // A Calico CRD the manifest brought is deleted only while empty (the v3.19.1
            // manifest adds ipamconfigs, ipamhandles and kubecontrollersconfigurations
            // to the chart's 12): one holding objects is kept, and said.
            let gone = delete_created(
                world,
                ID,
                &saved.created,
                is_calico_crd,
                "the operator manifest",
            )
            .await?;
            wait_gone(world, "the operator's objects to be gone", &gone).await?;
            world.objects.forget_kinds();
            for obj in &saved.existed {
                if world.objects.restore(obj).await? {
                    tracing::info!(
                        "restored {}",
                        ObjRef::of(obj).map(|r| r.to_string()).unwrap_or_default()
                    );
                }
            }
            Ok(())
        })
    }

    fn preview<'a>(&'a self, world: &'a World) -> StepFuture<'a, Vec<String>> {
        Box::pin(async move {
            if Self::external(world) {
                return Ok(match world.objects.get(&operator_ref()).await? {
                    Some(d) if kinds::is(&d, deployment_ready) => Vec::new(),
                    _ => vec![gate_message(world, "gate: not installed yet")],
                });
            }
            let objects = manifest_in_order(world, Order::Install)?;
            let out = preview_in_order(world, &objects).await?;
            Ok(out)
        })
    }
}
