//! `adopt-into-release` (`plan --adopt-into-release NAMESPACE/NAME`): hand the operator's
//! objects to a Helm release of the projectcalico tigera-operator chart the team installs
//! next. `helm install` refuses to take over an object that exists without the ownership
//! metadata of the release it installs (helm pkg/action/validate.go
//! `existingResourceConflict` / `checkOwnership`: label `app.kubernetes.io/managed-by:
//! Helm`, annotations `meta.helm.sh/release-name` and `meta.helm.sh/release-namespace`);
//! with it, the install adopts the object instead of failing ("invalid ownership
//! metadata"). The objects are those the chart templates and the cluster already holds:
//! the operator manifest is that chart rendered without hooks, Installation, APIServer,
//! Goldmane and Whisker (projectcalico/calico v3.30.3 manifests/generate.sh:24-42), so its
//! objects other than the Namespace and the CRDs (the chart's `crds/`, which Helm skips
//! when they exist), plus Installation `default`.

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cluster::objects::ObjRef;
use crate::engine::{Step, StepFuture, Verification};
use crate::migration::capture::{forget_capture, keep_capture, stored_capture};
use crate::migration::descriptor::{Checks, StepContext, StepPlan, change, lines};
use crate::migration::profile::{OperatorInstall, Profile};
use crate::migration::refs::{OPERATOR_NAMESPACE, installation_ref};
use crate::migration::world::World;

pub const ID: &str = "adopt-into-release";

const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
const RELEASE_NAME: &str = "meta.helm.sh/release-name";
const RELEASE_NAMESPACE: &str = "meta.helm.sh/release-namespace";

/// `NAMESPACE/NAME` as `--adopt-into-release` takes it: the namespace must be the
/// operator's (the chart renders its namespaced objects into the release namespace, so
/// a release elsewhere would install a second operator), the name a Helm release name
/// (helm pkg/chartutil/validate_name.go: at most 53 characters, lowercase RFC 1123).
pub fn parse_release(spec: &str) -> Result<(String, String), String> {
    let Some((ns, name)) = spec.split_once('/') else {
        return Err(format!(
            "--adopt-into-release {spec:?} is not NAMESPACE/NAME; give e.g. tigera-operator/calico"
        ));
    };
    if ns != OPERATOR_NAMESPACE {
        return Err(format!(
            "--adopt-into-release names namespace {ns:?}, but the operator runs in \
             {OPERATOR_NAMESPACE} and the tigera-operator chart installs into its release's \
             namespace (another one would get a second operator); use {OPERATOR_NAMESPACE}/{name}"
        ));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 53 || !name.split('.').all(label_ok) {
        return Err(format!(
            "--adopt-into-release: {name:?} is not a Helm release name (lowercase letters, \
             digits, '-' and '.', at most 53 characters, starting and ending alphanumeric)"
        ));
    }
    Ok((ns.to_string(), name.to_string()))
}

/// The `helm install` that adopts the objects: the tigera-operator chart of the target
/// Calico, the Installation the profile describes as its values, and no component the
/// migration did not have (the chart enables the API server, Goldmane and Whisker by
/// default: v3.30.3 charts/tigera-operator/values.yaml).
pub fn helm_install_command(profile: &Profile, namespace: &str, name: &str) -> String {
    format!(
        "helm install {name} projectcalico/tigera-operator --version {} -n {namespace} \
         --set-json 'installation={}' --set apiServer.enabled=false \
         --set goldmane.enabled=false --set whisker.enabled=false",
        profile.target.calico_version, profile.installation
    )
}

pub fn describe(ctx: &StepContext) -> Option<StepPlan> {
    let (ns, name) = parse_release(ctx.adopt_into?).ok()?;
    if ctx.profile.operator.install != OperatorInstall::Manifest {
        return None;
    }
    let target = &ctx.profile.target.calico_version;
    Some(StepPlan {
        id: ID,
        title: format!(
            "Hand the operator's objects to Helm release {ns}/{name} (chart tigera-operator {target})"
        ),
        changes: vec![
            change(
                "the operator manifest's objects but the Namespace and CRDs (ServiceAccount, ClusterRoles, bindings, Deployment), Installation default",
                "label",
                &[
                    "metadata.labels app.kubernetes.io/managed-by: Helm",
                    &format!("metadata.annotations meta.helm.sh/release-name: {name}"),
                    &format!("metadata.annotations meta.helm.sh/release-namespace: {ns}"),
                ],
            ),
            change(
                "by the team, after apply",
                "run",
                &[
                    &helm_install_command(ctx.profile, &ns, &name),
                    "(helm repo add projectcalico https://docs.tigera.io/calico/charts): it adopts these objects instead of failing",
                ],
            ),
        ],
        checks: Checks {
            before: lines(&["the operator and its Installation exist"]),
            after: lines(&["every object carries the ownership metadata `helm install` checks"]),
        },
        rollback: lines(&["the three keys as they were on each object"]),
        gate: None,
    })
}

/// One object and the ownership keys it had.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Owned {
    object: ObjRef,
    managed_by: Option<String>,
    release_name: Option<String>,
    release_namespace: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Saved {
    objects: Vec<Owned>,
}

fn key(o: &Value, map: &str, k: &str) -> Option<String> {
    o.pointer(&format!("/metadata/{map}"))
        .and_then(|m| m.get(k))
        .and_then(Value::as_str)
        .map(String::from)
}

fn patch(managed_by: Option<&str>, name: Option<&str>, namespace: Option<&str>) -> Value {
    json!({"metadata": {
        "labels": {MANAGED_BY: managed_by},
        "annotations": {RELEASE_NAME: name, RELEASE_NAMESPACE: namespace},
    }})
}

/// The release asked for in the saved plan.
fn release(world: &World) -> anyhow::Result<(String, String)> {
    let spec = world
        .plan
        .get("adopt_into_release")
        .and_then(Value::as_str)
        .context("the plan names no release to hand the operator to")?;
    parse_release(spec).map_err(anyhow::Error::msg)
}

/// The objects the chart templates that the cluster holds: the operator manifest's but
/// the Namespace and CRDs, and Installation `default`.
fn adopted(world: &World) -> Vec<ObjRef> {
    let mut refs: Vec<ObjRef> = world
        .operator_manifest
        .iter()
        .filter_map(ObjRef::of)
        .filter(|r| r.kind != "Namespace" && r.kind != "CustomResourceDefinition")
        .collect();
    refs.push(installation_ref());
    refs
}

async fn saved(world: &World) -> anyhow::Result<Saved> {
    let Some(v) = stored_capture(world, ID)? else {
        return Ok(Saved::default());
    };
    serde_json::from_value(v).context("adopt-into-release's capture is not what this version wrote")
}

fn owned_by(o: &Value, ns: &str, name: &str) -> bool {
    key(o, "labels", MANAGED_BY).as_deref() == Some("Helm")
        && key(o, "annotations", RELEASE_NAME).as_deref() == Some(name)
        && key(o, "annotations", RELEASE_NAMESPACE).as_deref() == Some(ns)
}

/// Runs the `adopt-into-release` step.
pub struct AdoptIntoRelease;

impl Step<World> for AdoptIntoRelease {
    fn id(&self) -> &str {
        ID
    }

    fn title(&self) -> &str {
        "Hand the operator's objects to a Helm release"
    }

    fn capture<'a>(&'a self, world: &'a World) -> StepFuture<'a, Value> {
        Box::pin(async move {
            if let Some(earlier) = stored_capture(world, ID)? {
                return Ok(earlier);
            }
            let mut objects = Vec::new();
            for r in adopted(world) {
                if let Some(live) = world.objects.get(&r).await? {
                    objects.push(Owned {
                        managed_by: key(&live, "labels", MANAGED_BY),
                        release_name: key(&live, "annotations", RELEASE_NAME),
                        release_namespace: key(&live, "annotations", RELEASE_NAMESPACE),
                        object: r,
                    });
                }
            }
            keep_capture(world, ID, serde_json::to_value(Saved { objects })?)
        })
    }

    fn ensure<'a>(&'a self, world: &'a World) -> StepFuture<'a, ()> {
        Box::pin(async move {
            let (ns, name) = release(world)?;
            let saved = saved(world).await?;
            if saved.objects.is_empty() {
                bail!(
                    "none of the operator's objects exists: there is nothing to hand to release {ns}/{name}"
                );
            }
            for o in &saved.objects {
                let Some(live) = world.objects.get(&o.object).await? else {
                    bail!("{} no longer exists; run `calico-migrate status`", o.object);
                };
                if !owned_by(&live, &ns, &name) {
                    world
                        .objects
                        .merge(&o.object, &patch(Some("Helm"), Some(&name), Some(&ns)))
                        .await?;
                    tracing::info!("{} now belongs to Helm release {ns}/{name}", o.object);
                }
            }
            tracing::info!(
                "next, the team: {}",
                helm_install_command(&world.profile, &ns, &name)
            );
            Ok(())
        })
    }

    fn verify<'a>(&'a self, world: &'a World) -> StepFuture<'a, Verification> {
        Box::pin(async move {
            let (ns, name) = release(world)?;
            let saved = saved(world).await?;
            let mut missing = Vec::new();
            for o in &saved.objects {
                match world.objects.get(&o.object).await? {
                    Some(l) if owned_by(&l, &ns, &name) => {}
                    _ => missing.push(o.object.to_string()),
                }
            }
            Ok(if missing.is_empty() {
                Verification::passed(format!(
                    "{} objects carry the ownership metadata of Helm release {ns}/{name}; next: {}",
                    saved.objects.len(),
                    helm_install_command(&world.profile, &ns, &name)
                ))
            } else {
                Verification::failed(format!(
                    "objects without the ownership metadata of {ns}/{name}: {}",
                    missing.join(", ")
                ))
            })
        })
    }

    fn rollback<'a>(&'a self, world: &'a World, captured: &'a Value) -> StepFuture<'a, ()> {
        Box::pin(async move {
            let saved: Saved = serde_json::from_value(captured.clone())
                .context("adopt-into-release's rollback data is not what this version wrote")?;
            for o in &saved.objects {
                if world.objects.get(&o.object).await?.is_none() {
                    continue;
                }
                world
                    .objects
                    .merge(
                        &o.object,
                        &patch(
                            o.managed_by.as_deref(),
                            o.release_name.as_deref(),
                            o.release_namespace.as_deref(),
                        ),
                    )
                    .await?;
                tracing::info!("restored the Helm ownership keys of {}", o.object);
            }
            forget_capture(world, ID)
        })
    }

    fn preview<'a>(&'a self, world: &'a World) -> StepFuture<'a, Vec<String>> {
        Box::pin(async move {
            let (ns, name) = release(world)?;
            let mut out = Vec::new();
            for r in adopted(world) {
                if let Some(l) = world.objects.get(&r).await?
                    && !owned_by(&l, &ns, &name)
                {
                    out.push(format!("label {r} as owned by Helm release {ns}/{name}"));
                }
            }
            out.push(format!(
                "then the team runs: {}",
                helm_install_command(&world.profile, &ns, &name)
            ));
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_is_namespace_slash_name_in_the_operators_namespace() {
        assert_eq!(
            parse_release("tigera-operator/calico"),
            Ok(("tigera-operator".into(), "calico".into()))
        );
        for (bad, says) in [
            ("calico", "is not NAMESPACE/NAME"),
            ("kube-system/calico", "use tigera-operator/calico"),
            ("tigera-operator/Calico", "is not a Helm release name"),
            ("tigera-operator/", "is not a Helm release name"),
            ("tigera-operator/-x", "is not a Helm release name"),
            (&format!("tigera-operator/{}", "a".repeat(54)), "at most 53"),
        ] {
            let e = parse_release(bad).err().unwrap_or_default();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn the_helm_command_installs_the_target_chart_with_the_profiles_installation() {
        let p = Profile::load(crate::migration::profile::OPERATOR_CHART_PROFILE)
            .unwrap_or_else(|e| panic!("{e}"));
        let c = helm_install_command(&p, "tigera-operator", "calico");
        assert_eq!(
            c,
            "helm install calico projectcalico/tigera-operator --version v3.30.3 -n tigera-operator \
             --set-json 'installation={\"cni\":{\"type\":\"AmazonVPC\"}}' --set apiServer.enabled=false \
             --set goldmane.enabled=false --set whisker.enabled=false"
        );
    }
}
