//! `detach-helm`: take the chart's objects away from Helm without deleting anything:
//! back up and remove the release records, strip the Helm labels and annotations the
//! converter refuses, so no later `helm uninstall` can delete RBAC, CRDs or policies.

use anyhow::Context as _;
use serde_json::{Map, Value, json};

use crate::cluster::objects::{ObjRef, strip_server_fields};
use crate::engine::{Step, StepFuture, Verification};
use crate::migration::capture::{forget_capture, keep_capture, stored_capture};
use crate::migration::converter::{ConverterLine, Existing, Refusal, predict};
use crate::migration::descriptor::{Checks, StepContext, StepPlan, change, lines};
use crate::migration::refs::{KUBE_SYSTEM, kube_system_node};
use crate::migration::release::{DETACH_HELM_STEP, chart_objects_live, release_secrets};
use crate::migration::rollout::{paused, roll_paced, strategy_left, update_strategy};
use crate::migration::world::World;

pub const ID: &str = DETACH_HELM_STEP;

pub fn describe(ctx: &StepContext) -> Option<StepPlan> {
    let rel = ctx.source.release.as_deref()?;
    let ns = ctx.source.namespace.as_deref().unwrap_or("kube-system");
    let rev = ctx.source.release_revision.unwrap_or(0);
    let records: Vec<String> = ctx
        .inv
        .list("helm3_secrets")
        .iter()
        .filter(|s| {
            crate::migration::facts::str_at(s, "/metadata/labels/name") == Some(rel)
                && crate::migration::facts::str_at(s, "/metadata/namespace") == Some(ns)
        })
        .map(|s| format!("Secret {ns}/{}", crate::migration::facts::name_of(s)))
        .collect();
    let mut changes: Vec<_> = records
        .iter()
        .map(|r| {
            change(
                r.clone(),
                "delete",
                &["after backup to the journal (data, labels, type)"],
            )
        })
        .collect();
    let objs = crate::migration::facts::helm_releases(ctx.inv, &ctx.profile.source.chart)
        .ok()
        .and_then(|rs| rs.into_iter().next())
        .map(|r| crate::helm::uninstall_plan(&r))
        .unwrap_or_default();
    for o in objs {
        let obj = match &o.namespace {
            Some(n) => format!("{} {n}/{}", o.kind, o.name),
            None => format!("{} {}", o.kind, o.name),
        };
        changes.push(change(
            obj,
            "patch",
            &[
                "remove metadata.annotations meta.helm.sh/release-name, meta.helm.sh/release-namespace",
                "remove metadata.labels app.kubernetes.io/managed-by, helm.sh/chart",
            ],
        ));
    }
    Some(StepPlan {
        id: ID,
        title: format!(
            "Detach release {ns}/{rel} (revision {rev}) from Helm without deleting anything"
        ),
        changes,
        checks: Checks {
            before: lines(&[
                "release records readable and backed up (decoded release JSON stored in the journal)",
            ]),
            after: lines(&[
                "`helm list` would no longer show the release; no chart object carries meta.helm.sh/* annotations",
                "the converter prediction for kube-system calico-node has no annotation refusal",
                "every object of the release still exists (none deleted)",
            ]),
        },
        rollback: lines(&[
            "re-create the release Secrets from the backup (same name, type, labels, data)",
            "restore the Helm labels and annotations on every chart object",
        ]),
        gate: None,
    })
}

// ---------------------------------------------------------------------------
// apply / rollback

/// Annotation prefix Helm 3.2+ writes on every object of a release.
const HELM_ANNOTATION_PREFIX: &str = "meta.helm.sh/";
/// Labels the chart's `_helpers.tpl` puts on every object and Helm uses to claim it.
const HELM_CHART_LABEL: &str = "helm.sh/chart";
const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// Runs the `detach-helm` step.
pub struct DetachHelm;

impl Step<World> for DetachHelm {
    fn id(&self) -> &str {
        ID
    }

    fn title(&self) -> &str {
        "Detach the release from Helm without deleting anything"
    }

    /// The release Secrets (whole) and every live object the release manifest lists.
    fn capture<'a>(&'a self, world: &'a World) -> StepFuture<'a, Value> {
        Box::pin(async move {
            if let Some(earlier) = stored_capture(world, ID)? {
                return Ok(earlier);
            }
            let secrets: Vec<Value> = release_secrets(world)
                .await?
                .iter()
                .map(strip_server_fields)
                .collect();
            let objects: Vec<Value> = chart_objects_live(world)
                .await?
                .into_iter()
                .map(|(_, o)| strip_server_fields(&o))
                .collect();
            keep_capture(world, ID, json!({"secrets": secrets, "objects": objects}))
        })
    }

    fn ensure<'a>(&'a self, world: &'a World) -> StepFuture<'a, ()> {
        Box::pin(async move {
            // Read the manifest before the records go: ensure may run again after a
            // crash that deleted some of them, so the capture is the fallback.
            let objects = chart_objects_live(world).await?;
            // Probes in place before a pod template changes (see rollout::follow_rollout).
            let prober = world.prober().await?;
            let mut template_changed = false;
            for (r, live) in &objects {
                if let Some(mut patch) = strip_patch(live, world.converter_line()) {
                    tracing::info!("removing Helm metadata from {r}");
                    if patch.pointer("/spec/template").is_some() {
                        // calico-node's pod template: replaced at calico-migrate's pace.
                        template_changed = true;
                        patch = paused(&patch);
                    }
                    world.objects.merge(r, &patch).await?;
                }
            }
            for s in release_secrets(world).await? {
                if let Some(r) = ObjRef::of(&s) {
                    tracing::info!("deleting Helm release record {r} (backed up in the journal)");
                    world.objects.delete(&r).await?;
                }
            }
            if template_changed || paused_here(world).await? {
                let restore = strategy_before(world)?;
                roll_paced(world, ID, &kube_system_node(), None, &restore, &prober).await?;
            }
            Ok(())
        })
    }

    fn verify<'a>(&'a self, world: &'a World) -> StepFuture<'a, Verification> {
        Box::pin(async move {
            let Some((name, ns, _)) = world.release() else {
                return Ok(Verification::failed("the plan names no Helm release"));
            };
            let left = release_secrets(world).await?;
            if !left.is_empty() {
                let names: Vec<&str> = left.iter().map(crate::migration::facts::name_of).collect();
                return Ok(Verification::failed(format!(
                    "release records of {ns}/{name} remain: {}",
                    names.join(", ")
                )));
            }
            let expected: Vec<ObjRef> = stored_capture(world, ID)?
                .and_then(|c| c.get("objects").and_then(Value::as_array).cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(ObjRef::of)
                .collect();
            let mut missing = Vec::new();
            let mut labelled = Vec::new();
            for r in &expected {
                match world.objects.get(r).await? {
                    None => missing.push(r.to_string()),
                    Some(o) if strip_patch(&o, world.converter_line()).is_some() => {
                        labelled.push(r.to_string())
                    }
                    Some(_) => {}
                }
            }
            if !missing.is_empty() {
                return Ok(Verification::failed(format!(
                    "objects of the release are gone: {}",
                    missing.join(", ")
                )));
            }
            if !labelled.is_empty() {
                return Ok(Verification::failed(format!(
                    "objects still carry Helm metadata: {}",
                    labelled.join(", ")
                )));
            }
            if let Some(ds) = world.objects.get(&kube_system_node()).await? {
                if let Some(why) = strategy_left(&ds, &strategy_before(world)?) {
                    return Ok(Verification::failed(why));
                }
                let refused: Vec<String> =
                    predict(&Existing::daemonset(&ds), world.converter_line())
                        .into_iter()
                        .filter_map(|r| match r {
                            Refusal::Annotations { on, keys } => {
                                Some(format!("{on}: {}", keys.join(", ")))
                            }
                            _ => None,
                        })
                        .collect();
                if !refused.is_empty() {
                    return Ok(Verification::failed(format!(
                        "the operator's converter would refuse annotations of kube-system calico-node ({})",
                        refused.join("; ")
                    )));
                }
            }
            Ok(Verification::passed(format!(
                "no release record of {ns}/{name} is left; {} objects of the release exist without Helm metadata",
                expected.len()
            )))
        })
    }

    fn rollback<'a>(&'a self, world: &'a World, saved: &'a Value) -> StepFuture<'a, ()> {
        Box::pin(async move {
            let list = |k: &str| {
                saved
                    .get(k)
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            };
            let prober = world.prober().await?;
            let mut template_changed = false;
            for want in list("objects") {
                let Some(r) = ObjRef::of(&want) else { continue };
                let Some(live) = world.objects.get(&r).await? else {
                    // Gone since: a later step's rollback re-creates what it deleted.
                    tracing::warn!("{r} no longer exists; its Helm metadata is not restored");
                    continue;
                };
                if let Some(mut patch) = restore_patch(&want, &live, world.converter_line()) {
                    tracing::info!("restoring Helm metadata on {r}");
                    if patch.pointer("/spec/template").is_some() {
                        template_changed = true;
                        patch = paused(&patch);
                    }
                    world.objects.merge(&r, &patch).await?;
                }
            }
            for secret in list("secrets") {
                if world
                    .objects
                    .restore(&secret)
                    .await
                    .with_context(|| "re-creating a Helm release record")?
                {
                    tracing::info!(
                        "re-created Helm release record {}",
                        crate::migration::facts::name_of(&secret)
                    );
                }
            }
            if template_changed || paused_here(world).await? {
                let restore = strategy_before(world)?;
                roll_paced(world, ID, &kube_system_node(), None, &restore, &prober).await?;
            }
            forget_capture(world, ID)
        })
    }

    fn preview<'a>(&'a self, world: &'a World) -> StepFuture<'a, Vec<String>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for (r, live) in chart_objects_live(world).await? {
                if let Some(patch) = strip_patch(&live, world.converter_line()) {
                    let rolls = if patch.pointer("/spec/template").is_some() {
                        " (pod template: calico-node replaced node by node, each node probed)"
                    } else {
                        ""
                    };
                    out.push(format!("patch {r}: {patch}{rolls}"));
                }
            }
            for s in release_secrets(world).await? {
                if let Some(r) = ObjRef::of(&s) {
                    out.push(format!("delete {r} (backed up in the journal first)"));
                }
            }
            if out.is_empty() {
                out.push("nothing to change: no release record and no Helm metadata left".into());
            }
            Ok(out)
        })
    }
}

/// kube-system calico-node's update strategy before the step (from its capture): what
/// its paced rollout puts back.
fn strategy_before(world: &World) -> anyhow::Result<Value> {
    let captured = stored_capture(world, ID)?;
    let ds = captured
        .as_ref()
        .and_then(|c| c.get("objects"))
        .and_then(Value::as_array)
        .and_then(|objects| objects.iter().find(|o| is_calico_node_ds(o)));
    Ok(update_strategy(ds.unwrap_or(&json!({}))))
}

/// Whether kube-system calico-node is left paused by an earlier run of this step (its
/// template already written when the run stopped): the paced rollout goes on.
async fn paused_here(world: &World) -> anyhow::Result<bool> {
    let Some(ds) = world.objects.get(&kube_system_node()).await? else {
        return Ok(false);
    };
    Ok(strategy_left(&ds, &strategy_before(world)?).is_some())
}

fn is_calico_node_ds(o: &Value) -> bool {
    ObjRef::of(o).is_some_and(|r| {
        r.kind == "DaemonSet"
            && r.name == "calico-node"
            && r.namespace.as_deref() == Some(KUBE_SYSTEM)
    })
}

/// Where an annotation sits, for what the converter accepts there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum On {
    /// Any chart object but kube-system calico-node.
    Other,
    CalicoNode,
    CalicoNodeTemplate,
}

/// Annotations this step removes: Helm's everywhere; on kube-system calico-node and its
/// pod template every one the target operator's converter refuses
/// ([`ConverterLine::ignores_annotation`]).
fn stripped_annotation(key: &str, value: &str, on: On, line: ConverterLine) -> bool {
    key.starts_with(HELM_ANNOTATION_PREFIX)
        || match on {
            On::Other => false,
            On::CalicoNode => !line.ignores_annotation(key, value, false),
            On::CalicoNodeTemplate => !line.ignores_annotation(key, value, true),
        }
}

fn stripped_label(key: &str, value: &str) -> bool {
    key == HELM_CHART_LABEL || (key == MANAGED_BY_LABEL && value == "Helm")
}

fn string_map<'a>(o: &'a Value, ptr: &str) -> Vec<(&'a String, &'a str)> {
    o.pointer(ptr)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k, v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default()
}

/// The merge patch that removes Helm's metadata, and on calico-node what the converter
/// of `line` refuses, from `live` (None: nothing to remove).
pub fn strip_patch(live: &Value, line: ConverterLine) -> Option<Value> {
    let ds = is_calico_node_ds(live);
    let on = if ds { On::CalicoNode } else { On::Other };
    let nulls = |keys: Vec<&String>| -> Option<Value> {
        (!keys.is_empty())
            .then(|| Value::Object(keys.into_iter().map(|k| (k.clone(), Value::Null)).collect()))
    };
    let annotations = nulls(
        string_map(live, "/metadata/annotations")
            .into_iter()
            .filter(|(k, v)| stripped_annotation(k, v, on, line))
            .map(|(k, _)| k)
            .collect(),
    );
    let labels = nulls(
        string_map(live, "/metadata/labels")
            .into_iter()
            .filter(|(k, v)| stripped_label(k, v))
            .map(|(k, _)| k)
            .collect(),
    );
    let template = if ds {
        nulls(
            string_map(live, "/spec/template/metadata/annotations")
                .into_iter()
                .filter(|(k, v)| stripped_annotation(k, v, On::CalicoNodeTemplate, line))
                .map(|(k, _)| k)
                .collect(),
        )
    } else {
        None
    };
    assemble(annotations, labels, template)
}

/// The merge patch that puts back what [`strip_patch`] removed from `saved`.
pub fn restore_patch(saved: &Value, live: &Value, line: ConverterLine) -> Option<Value> {
    let ds = is_calico_node_ds(saved);
    let on = if ds { On::CalicoNode } else { On::Other };
    let back = |ptr: &str, keep: &dyn Fn(&str, &str) -> bool| -> Option<Value> {
        let now: Map<String, Value> = live
            .pointer(ptr)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let m: Map<String, Value> = string_map(saved, ptr)
            .into_iter()
            .filter(|(k, v)| keep(k, v) && now.get(*k).and_then(Value::as_str) != Some(*v))
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        (!m.is_empty()).then_some(Value::Object(m))
    };
    let annotations = back("/metadata/annotations", &|k, v| {
        stripped_annotation(k, v, on, line)
    });
    let labels = back("/metadata/labels", &stripped_label);
    let template = if ds {
        back("/spec/template/metadata/annotations", &|k, v| {
            stripped_annotation(k, v, On::CalicoNodeTemplate, line)
        })
    } else {
        None
    };
    assemble(annotations, labels, template)
}

fn assemble(
    annotations: Option<Value>,
    labels: Option<Value>,
    template: Option<Value>,
) -> Option<Value> {
    if annotations.is_none() && labels.is_none() && template.is_none() {
        return None;
    }
    let mut patch = json!({"metadata": {}});
    if let Some(a) = annotations {
        patch["metadata"]["annotations"] = a;
    }
    if let Some(l) = labels {
        patch["metadata"]["labels"] = l;
    }
    if let Some(t) = template {
        patch["spec"] = json!({"template": {"metadata": {"annotations": t}}});
    }
    Some(patch)
}

#[cfg(test)]
mod apply_tests {
    use super::*;

    fn line() -> ConverterLine {
        ConverterLine::of("v1.17.4")
    }

    fn ds(ann: Value, tpl: Value, labels: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
               "metadata": {"name": "calico-node", "namespace": "kube-system",
                            "annotations": ann, "labels": labels},
               "spec": {"template": {"metadata": {"annotations": tpl}}}})
    }

    #[test]
    fn strips_helm_and_refused_metadata_and_restores_it() {
        let saved = ds(
            json!({"meta.helm.sh/release-name": "aws-calico", "deprecated.daemonset.template.generation": "1"}),
            json!({"prometheus.io/scrape": "true"}),
            json!({"app.kubernetes.io/managed-by": "Helm", "helm.sh/chart": "aws-calico-0.3.10",
                   "app.kubernetes.io/name": "calico-node"}),
        );
        let patch = strip_patch(&saved, line()).unwrap_or_else(|| panic!("a patch"));
        assert_eq!(
            patch,
            json!({"metadata": {"annotations": {"meta.helm.sh/release-name": null},
                                "labels": {"app.kubernetes.io/managed-by": null, "helm.sh/chart": null}},
                   "spec": {"template": {"metadata": {"annotations": {"prometheus.io/scrape": null}}}}})
        );
        let stripped = ds(
            json!({"deprecated.daemonset.template.generation": "1"}),
            json!({}),
            json!({"app.kubernetes.io/name": "calico-node"}),
        );
        assert_eq!(strip_patch(&stripped, line()), None);
        let back = restore_patch(&saved, &stripped, line()).unwrap_or_else(|| panic!("a patch"));
        assert_eq!(
            back["metadata"]["annotations"],
            json!({"meta.helm.sh/release-name": "aws-calico"})
        );
        assert_eq!(
            back["spec"]["template"]["metadata"]["annotations"],
            json!({"prometheus.io/scrape": "true"})
        );
        assert_eq!(restore_patch(&saved, &saved, line()), None);
    }

    #[test]
    fn other_objects_keep_foreign_annotations_and_managed_by_values() {
        let svc = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "calico-typha", "namespace": "kube-system",
                         "annotations": {"team": "net"},
                         "labels": {"app.kubernetes.io/managed-by": "terraform"}}});
        assert_eq!(strip_patch(&svc, line()), None);
    }
}
