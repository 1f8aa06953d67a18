//! `install-operator`: apply the operator's CRDs and the operator, without an
//! Installation (which would start the migration at once). Also the helpers the
//! later operator steps share: freezing and resuming the operator, waits, and a
//! "does the live object already hold these fields" test. And the one reader of the
//! operator manifest ([`read_manifest`]) and its check against the APIs the cluster
//! serves ([`unserved`]), which `plan --operator-manifest` uses too.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Checks, StepContext, StepPlan, change, lines};
use crate::cluster::objects::{ObjRef, strip_server_fields};
use crate::engine::{Step, StepFuture, Verification};
use crate::migration::manifest::{ManifestObject, check_object, served_apis, unserved};
use crate::migration::profile::OperatorInstall;
use crate::migration::world::Cluster;

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
        rollback: lines(&["delete the operator Deployment, its RBAC and namespace, and the operator.tigera.io CRDs (only what it created; never a Calico CRD)"]),
        gate: external.then(|| format!(
            "install tigera-operator {} with Helm/Terraform WITHOUT an Installation (chart value installation.enabled=false), then run `calico-migrate apply --resume`",
            p.target.operator_version
        )),
    }
}

/// Where the manifest installs the operator.
pub const OPERATOR_NAMESPACE: &str = "tigera-operator";
pub const OPERATOR_NAME: &str = "tigera-operator";

pub fn operator_ref() -> ObjRef {
    ObjRef::new(
        "apps/v1",
        "Deployment",
        Some(OPERATOR_NAMESPACE),
        OPERATOR_NAME,
    )
}

pub fn installation_ref() -> ObjRef {
    ObjRef::new("operator.tigera.io/v1", "Installation", None, "default")
}

pub fn tigera_status_ref() -> ObjRef {
    ObjRef::new("operator.tigera.io/v1", "TigeraStatus", None, "calico")
}

pub(crate) fn int_at(v: &Value, p: &str) -> Option<i64> {
    v.pointer(p).and_then(Value::as_i64)
}

/// Every desired replica Ready (and at least one desired).
pub fn deployment_ready(d: &Value) -> bool {
    let want = int_at(d, "/spec/replicas").unwrap_or(1);
    want >= 1 && int_at(d, "/status/readyReplicas").unwrap_or(0) >= want
}

/// Whether `live` already holds every field of `want` (maps: each key, recursively;
/// lists and scalars: equal). Server-side apply of `want` would change nothing then.
pub fn contains(live: &Value, want: &Value) -> bool {
    match (live, want) {
        (Value::Object(l), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| l.get(k).is_some_and(|lv| contains(lv, wv))),
        (Value::Array(l), Value::Array(w)) => {
            l.len() == w.len() && l.iter().zip(w).all(|(a, b)| contains(a, b))
        }
        _ => live == want,
    }
}

/// Poll `probe` every `world.options.poll` until it answers `None` (done); `Some(text)`
/// says what is still awaited (logged when it changes). Fails after `timeout`.
pub(crate) async fn wait_until<F, Fut>(
    world: &Cluster,
    what: &str,
    timeout: Duration,
    mut probe: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<String>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match probe().await? {
            None => return Ok(()),
            Some(waiting) => {
                if waiting != last {
                    tracing::info!("waiting for {what}: {waiting}");
                    last = waiting;
                }
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "gave up after {} s waiting for {what}: {last}",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(world.options.poll).await;
    }
}

/// Wait (at most `node_ready_timeout`) until none of `refs` exists any more.
pub(crate) async fn wait_gone(world: &Cluster, what: &str, refs: &[ObjRef]) -> anyhow::Result<()> {
    wait_until(world, what, world.options.node_ready_timeout, || async {
        for r in refs {
            if world.objects.get(r).await?.is_some() {
                return Ok(Some(format!("{r} still exists")));
            }
        }
        Ok(None)
    })
    .await
}

/// Wait (at most `node_ready_timeout`) until the operator Deployment is Ready.
async fn wait_operator_ready(world: &Cluster) -> anyhow::Result<()> {
    wait_until(
        world,
        "the operator to be Ready",
        world.options.node_ready_timeout,
        || async {
            Ok(match world.objects.get(&operator_ref()).await? {
                Some(d) if deployment_ready(&d) => None,
                Some(d) => Some(format!(
                    "{} of {} replica(s) Ready",
                    int_at(&d, "/status/readyReplicas").unwrap_or(0),
                    int_at(&d, "/spec/replicas").unwrap_or(1)
                )),
                None => Some("no Deployment tigera-operator/tigera-operator".into()),
            })
        },
    )
    .await
}

fn match_labels(d: &Value) -> Option<String> {
    let m = d.pointer("/spec/selector/matchLabels")?.as_object()?;
    let parts: Vec<String> = m
        .iter()
        .filter_map(|(k, v)| Some(format!("{k}={}", v.as_str()?)))
        .collect();
    (!parts.is_empty()).then(|| parts.join(","))
}

/// Scale the operator to 0 and wait until no operator pod runs: it then changes
/// nothing more (docs/upstream.md, "The operator's migration": every action is
/// chosen from the live state, so scaling it back resumes where it stopped).
/// Returns false when there is no operator.
pub(crate) async fn freeze_operator(world: &Cluster) -> anyhow::Result<bool> {
    let r = operator_ref();
    let Some(d) = world.objects.get(&r).await? else {
        return Ok(false);
    };
    if int_at(&d, "/spec/replicas").unwrap_or(1) != 0 {
        tracing::info!("freezing the operator: scaling {r} to 0");
        world.objects.scale(&r, 0).await?;
    }
    let selector = match_labels(&d);
    wait_until(
        world,
        "the operator to stop",
        world.options.node_ready_timeout,
        || {
            let selector = selector.clone();
            let r = r.clone();
            async move {
                let Some(d) = world.objects.get(&r).await? else {
                    return Ok(None);
                };
                let ready = int_at(&d, "/status/readyReplicas").unwrap_or(0);
                let pods = match &selector {
                    Some(s) => {
                        world
                            .objects
                            .list("v1", "Pod", Some(OPERATOR_NAMESPACE), Some(s))
                            .await?
                    }
                    None => Vec::new(),
                };
                Ok((ready > 0 || !pods.is_empty()).then(|| {
                    format!(
                        "{ready} ready replica(s), {} operator pod(s) left",
                        pods.len()
                    )
                }))
            }
        },
    )
    .await?;
    Ok(true)
}

/// Scale the operator to `replicas` (at least 1) and wait until it is Ready.
pub(crate) async fn run_operator(world: &Cluster, replicas: i64) -> anyhow::Result<()> {
    let r = operator_ref();
    let Some(d) = world.objects.get(&r).await? else {
        bail!(
            "the operator Deployment {r} is missing; run `calico-migrate apply --resume` so install-operator installs it again"
        );
    };
    let replicas = replicas.max(1);
    if int_at(&d, "/spec/replicas").unwrap_or(1) != replicas {
        tracing::info!("starting the operator: scaling {r} to {replicas}");
        world.objects.scale(&r, replicas).await?;
    }
    wait_operator_ready(world).await
}

/// What install-operator's rollback needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Saved {
    /// The operator was installed outside calico-migrate: nothing to undo.
    external: bool,
    /// Manifest objects that existed before, as they were.
    existed: Vec<Value>,
    /// Manifest objects that did not exist: rollback deletes these (never a Calico CRD).
    created: Vec<ObjRef>,
}

fn is_calico_crd(r: &ObjRef) -> bool {
    r.kind == "CustomResourceDefinition" && r.name.ends_with("projectcalico.org")
}

fn gate_message(world: &Cluster, found: &str) -> String {
    format!(
        "waiting for the operator: install tigera-operator {} with your Helm/Terraform, without an Installation (Helm chart value installation.enabled=false), then run `calico-migrate apply --resume` ({found})",
        world.profile.target.operator_version
    )
}

/// The manifest's objects with their references, CRDs and namespaces first so the
/// objects after them resolve.
fn manifest_in_order(world: &Cluster) -> anyhow::Result<Vec<(ObjRef, &Value)>> {
    let mut out = Vec::new();
    for obj in &world.operator_manifest {
        let r = ObjRef::of(obj).with_context(|| {
            format!(
                "an object of the operator manifest has no apiVersion, kind or name: {}",
                obj.to_string().chars().take(120).collect::<String>()
            )
        })?;
        if let Err((problem, fix)) = check_object(&r, obj) {
            bail!(
                "the operator manifest holds {}: {problem}; {fix}",
                r.describe()
            );
        }
        out.push((r, obj));
    }
    let rank = |r: &ObjRef| match r.kind.as_str() {
        "Namespace" => 0,
        "CustomResourceDefinition" => 1,
        _ => 2,
    };
    out.sort_by_key(|(r, _)| rank(r));
    Ok(out)
}

/// The step.
pub struct InstallOperator;

impl InstallOperator {
    fn external(world: &Cluster) -> bool {
        world.profile.operator.install == OperatorInstall::External
    }

    async fn refuse_installation(world: &Cluster) -> anyhow::Result<()> {
        if world.objects.get(&installation_ref()).await?.is_some() {
            bail!(
                "Installation default already exists, so the operator starts migrating on its own before calico-migrate can check each node (the tigera-operator Helm chart creates one unless installation.enabled=false); run `calico-migrate rollback`, or delete that Installation while the operator still runs and `calico-migrate apply --resume`"
            );
        }
        Ok(())
    }

    async fn ensure_external(world: &Cluster) -> anyhow::Result<()> {
        Self::refuse_installation(world).await?;
        match world.objects.get(&operator_ref()).await? {
            Some(d) if deployment_ready(&d) => Ok(()),
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

    /// Refuse, before anything is written, a manifest with objects of APIs the cluster
    /// does not serve (the check and the words of plan's
    /// `OPERATOR_MANIFEST_API_NOT_SERVED`): the cluster may have been upgraded since
    /// the plan, and applying half of the manifest helps nobody.
    async fn refuse_unserved(world: &Cluster) -> anyhow::Result<()> {
        let file = "the pinned operator manifest";
        let manifest: Vec<ManifestObject> = world
            .operator_manifest
            .iter()
            .filter_map(|obj| {
                Some(ManifestObject {
                    place: None,
                    r: ObjRef::of(obj)?,
                    obj: obj.clone(),
                })
            })
            .collect();
        let served = served_apis(&world.objects, &manifest).await?;
        let missing = unserved(file, &manifest, &served)?;
        if missing.is_empty() {
            return Ok(());
        }
        let version = world
            .objects
            .client()
            .apiserver_version()
            .await
            .map(|v| v.git_version)
            .unwrap_or_else(|_| "of unknown version".into());
        let f = crate::migration::rules::manifest_api_not_served(file, &version, &missing);
        bail!("{}; {}", f.message, f.fix)
    }

    async fn ensure_manifest(world: &Cluster) -> anyhow::Result<()> {
        Self::refuse_installation(world).await?;
        let objects = manifest_in_order(world)?;
        if objects.is_empty() {
            bail!(
                "the operator manifest is empty; give the reviewed file with `--operator-manifest FILE`"
            );
        }
        Self::refuse_unserved(world).await?;
        let mut applied = 0;
        for (i, (r, obj)) in objects.iter().enumerate() {
            let live = world.objects.get(r).await?;
            if live.is_some_and(|l| contains(&l, &strip_server_fields(obj))) {
                continue;
            }
            // The error names the verb, the object and the API server's answer.
            world.objects.apply(obj).await?;
            tracing::info!("applied {r}");
            applied += 1;
            // New CRDs: resolve kinds again before the objects that follow.
            if r.kind == "CustomResourceDefinition"
                && objects.get(i + 1).is_none_or(|(n, _)| n.kind != r.kind)
            {
                world.objects.forget_kinds();
            }
        }
        world.objects.forget_kinds();
        tracing::info!(
            "operator manifest: {applied} object(s) applied, {} already in place",
            objects.len() - applied
        );
        wait_operator_ready(world).await
    }
}

impl Step<Cluster> for InstallOperator {
    fn id(&self) -> &str {
        ID
    }

    fn title(&self) -> &str {
        "Install the Tigera Operator without an Installation"
    }

    fn capture<'a>(&'a self, world: &'a Cluster) -> StepFuture<'a, Value> {
        Box::pin(async move {
            if Self::external(world) {
                return Ok(serde_json::to_value(Saved {
                    external: true,
                    ..Saved::default()
                })?);
            }
            let mut saved = Saved::default();
            for (r, _) in manifest_in_order(world)? {
                match world.objects.get(&r).await? {
                    Some(live) => saved.existed.push(strip_server_fields(&live)),
                    None => saved.created.push(r),
                }
            }
            Ok(serde_json::to_value(saved)?)
        })
    }

    fn ensure<'a>(&'a self, world: &'a Cluster) -> StepFuture<'a, ()> {
        Box::pin(async move {
            if Self::external(world) {
                Self::ensure_external(world).await
            } else {
                Self::ensure_manifest(world).await
            }
        })
    }

    fn verify<'a>(&'a self, world: &'a Cluster) -> StepFuture<'a, Verification> {
        Box::pin(async move {
            if world.objects.get(&installation_ref()).await?.is_some() {
                return Ok(Verification::failed(
                    "Installation default exists: the operator would migrate without calico-migrate's checks",
                ));
            }
            Ok(match world.objects.get(&operator_ref()).await? {
                Some(d) if deployment_ready(&d) => Verification::passed(format!(
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

    fn rollback<'a>(&'a self, world: &'a Cluster, saved: &'a Value) -> StepFuture<'a, ()> {
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
            for r in saved.created.iter().rev() {
                if is_calico_crd(r) {
                    tracing::info!("keeping {r}: a Calico CRD is never deleted");
                    continue;
                }
                if world.objects.delete(r).await? {
                    tracing::info!("deleted {r}");
                }
            }
            let gone: Vec<ObjRef> = saved
                .created
                .iter()
                .filter(|r| !is_calico_crd(r))
                .cloned()
                .collect();
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

    fn preview<'a>(&'a self, world: &'a Cluster) -> StepFuture<'a, Vec<String>> {
        Box::pin(async move {
            if Self::external(world) {
                return Ok(match world.objects.get(&operator_ref()).await? {
                    Some(d) if deployment_ready(&d) => Vec::new(),
                    _ => vec![gate_message(world, "gate: not installed yet")],
                });
            }
            let mut out = Vec::new();
            for (r, obj) in manifest_in_order(world)? {
                match world.objects.get(&r).await? {
                    None => out.push(format!("create {r}")),
                    Some(l) if !contains(&l, &strip_server_fields(obj)) => {
                        out.push(format!("server-side apply {r} (fields differ)"))
                    }
                    Some(_) => {}
                }
            }
            Ok(out)
        })
    }
}
