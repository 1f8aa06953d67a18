//! The I/O of a round: remove leftovers, create the probe workload, wait for it, read
//! the policies in force, exec the planned probes with bounded concurrency (retrying
//! only Check failed), compare, and remove the workload again.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tracing::Instrument as _;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, AttachParams, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;
use tokio::io::AsyncReadExt;

use super::outcome::{ExecResult, ProbeRecord, RoundReport, classify, compare};
use super::plan::{Probe, RoundPlan, plan_round};
use super::workload::{self, NAMESPACE_A, NAMESPACE_B, PROBE_LABEL, ProbePod};
use crate::cluster::errors::{Permission, Scope, answer};
use crate::policy::{InputError, PolicyIndex};

/// How a round runs.
#[derive(Debug, Clone)]
pub struct RoundOptions {
    /// Probe image (must provide `/agnhost connect` and `netexec`).
    pub image: String,
    /// Probes in flight at once.
    pub concurrency: usize,
    /// agnhost `--timeout`: how long a connection may take before it counts as blocked.
    pub connect_timeout: Duration,
    /// Extra attempts for a probe that ends Check failed (never for other classes).
    pub retries: u32,
    /// How long to wait for the probe pods to run.
    pub ready_timeout: Duration,
    /// A namespace the GlobalNetworkPolicies exempt, where one client per node probes IMDS.
    pub exempt_namespace: Option<String>,
    /// `host:port` resolved through cluster DNS by one probe per node.
    pub dns_target: Option<String>,
    /// Only these nodes (default: every node that runs Calico, i.e. not Fargate).
    pub nodes: Option<Vec<String>>,
}

impl Default for RoundOptions {
    fn default() -> Self {
        Self {
            image: workload::DEFAULT_IMAGE.to_string(),
            concurrency: 32,
            connect_timeout: Duration::from_secs(1),
            retries: 2,
            ready_timeout: Duration::from_secs(180),
            exempt_namespace: Some("kube-system".to_string()),
            dns_target: None,
            nodes: None,
        }
    }
}

/// Why a round could not run at all (individual probe failures are in the report).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// An API call the server refused (after the retries, for a transient answer) or
    /// never answered, as one sentence: verb, object, what the API server answered and
    /// what to do (on a 403, the permission to grant). The Kubernetes error is not the
    /// `source`: its text is already in the sentence, and the CLI prints every source.
    #[error("{action} {object}: {}; {}", answer(.error), .permission.advice(.error))]
    Api {
        /// What was being done, as a gerund: `listing`, `creating`, `deleting`.
        action: &'static str,
        /// The object or collection: `Pod calico-migrate-probe-a/x (v1)`,
        /// `NetworkPolicies (networking.k8s.io/v1) in all namespaces`.
        object: String,
        /// What the call needs, named on a 403.
        permission: Permission,
        error: kube::Error,
    },
    #[error(
        "no node to probe: the cluster has no EC2 node running Calico (Fargate nodes are skipped)"
    )]
    NoNodes,
    #[error("cannot evaluate the cluster's policies: {0}")]
    Policy(#[from] InputError),
    #[error("{0}")]
    Timeout(String),
    /// Options or a probe manifest the API types reject (e.g. `--image` with a bad value).
    #[error("{0}")]
    Invalid(String),
}

/// A call of a round, for its error: `verb` (as RBAC names it) on `resource` of
/// `group_version`, on `object` (as the sentence names it) in `scope`.
struct Call {
    verb: &'static str,
    resource: &'static str,
    group_version: String,
    scope: Scope,
    object: String,
}

impl Call {
    /// LIST `kind`s (plural in `kinds`) across the cluster: namespaced ones in all
    /// namespaces, those `labelled` a selector when given.
    fn list(
        kinds: &str,
        resource: &'static str,
        group_version: &str,
        namespaced: bool,
        labelled: Option<&str>,
    ) -> Self {
        let (scope, place) = if namespaced {
            (Scope::AllNamespaces, " in all namespaces")
        } else {
            (Scope::Cluster, "")
        };
        let selector = labelled
            .map(|l| format!(" labelled {l}"))
            .unwrap_or_default();
        Call {
            verb: "list",
            resource,
            group_version: group_version.to_string(),
            scope,
            object: format!("{kinds} ({group_version}){selector}{place}"),
        }
    }

    /// A LIST of the probe workload's objects: `Pods (v1) labelled
    /// calico-migrate.io/probe=true in all namespaces`.
    fn probes(kinds: &str, resource: &'static str, namespaced: bool) -> Self {
        let selector = format!("{PROBE_LABEL}=true");
        Call::list(kinds, resource, "v1", namespaced, Some(&selector))
    }

    /// `verb` on the object `kind` named `name` (in `namespace` when namespaced).
    fn one(
        verb: &'static str,
        kind: &str,
        resource: &'static str,
        group_version: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Self {
        let (scope, object) = match namespace {
            Some(ns) => (
                Scope::Namespace(ns.to_string()),
                format!("{kind} {ns}/{name} ({group_version})"),
            ),
            None => (Scope::Cluster, format!("{kind} {name} ({group_version})")),
        };
        Call {
            verb,
            resource,
            group_version: group_version.to_string(),
            scope,
            object,
        }
    }

    fn error(self, error: kube::Error) -> CheckError {
        let action = match self.verb {
            "list" => "listing",
            "create" => "creating",
            "delete" => "deleting",
            "get" => "reading",
            _ => "calling the API for",
        };
        CheckError::Api {
            action,
            object: self.object,
            permission: Permission::new(self.verb, self.resource, &self.group_version, self.scope),
            error,
        }
    }
}

fn api(call: Call) -> impl FnOnce(kube::Error) -> CheckError {
    move |error| call.error(error)
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

fn probe_selector() -> ListParams {
    ListParams::default().labels(&format!("{PROBE_LABEL}=true"))
}

/// Remove every probe namespace and probe pod (found by label) and wait until they are
/// gone. Idempotent: safe at the start of a round, at its end and after a crash.
pub async fn cleanup(client: &kube::Client, timeout: Duration) -> Result<(), CheckError> {
    remove_leftovers(client, timeout, true).await
}

/// Remove the probe pods of an earlier run but keep the probe namespaces and their
/// NetworkPolicy where they stand (waiting out any namespace already being deleted).
/// A migration resumed after a crash sets its probes up this way: deleting and
/// re-creating the NetworkPolicy is a policy change, and the operator, which went on
/// without the tool, may be replacing a node's calico-node at that moment: that node's
/// frozen rules would then miss the change.
pub async fn cleanup_keeping_policies(
    client: &kube::Client,
    timeout: Duration,
) -> Result<(), CheckError> {
    remove_leftovers(client, timeout, false).await
}

async fn remove_leftovers(
    client: &kube::Client,
    timeout: Duration,
    namespaces_too: bool,
) -> Result<(), CheckError> {
    let nss: Api<Namespace> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let dp = DeleteParams::background().grace_period(0);
    let deadline = Instant::now() + timeout;
    loop {
        let sel = probe_selector();
        let ns_list = retried(|| nss.list(&sel)).await.map_err(api(Call::probes(
            "Namespaces",
            "namespaces",
            false,
        )))?;
        let pod_list = retried(|| pods.list(&sel))
            .await
            .map_err(api(Call::probes("Pods", "pods", true)))?;
        let terminating = ns_list
            .items
            .iter()
            .any(|n| n.metadata.deletion_timestamp.is_some());
        let namespaces_left = namespaces_too && !ns_list.items.is_empty();
        if !namespaces_left && !terminating && pod_list.items.is_empty() {
            return Ok(());
        }
        for ns in ns_list.items.iter().filter(|_| namespaces_too) {
            let Some(name) = ns.metadata.name.as_deref() else {
                continue;
            };
            if ns.metadata.deletion_timestamp.is_none() {
                match retried(|| nss.delete(name, &dp)).await {
                    Ok(_) => {}
                    Err(e) if is_status(&e, 404) => {}
                    Err(e) => {
                        return Err(Call::one(
                            "delete",
                            "Namespace",
                            "namespaces",
                            "v1",
                            None,
                            name,
                        )
                        .error(e));
                    }
                }
            }
        }
        for p in &pod_list.items {
            let (Some(ns), Some(name)) =
                (p.metadata.namespace.as_deref(), p.metadata.name.as_deref())
            else {
                continue;
            };
            if p.metadata.deletion_timestamp.is_none() {
                let api_ns: Api<Pod> = Api::namespaced(client.clone(), ns);
                match retried(|| api_ns.delete(name, &dp)).await {
                    Ok(_) => {}
                    Err(e) if is_status(&e, 404) => {}
                    Err(e) => {
                        return Err(
                            Call::one("delete", "Pod", "pods", "v1", Some(ns), name).error(e)
                        );
                    }
                }
            }
        }
        if Instant::now() > deadline {
            return Err(CheckError::Timeout(format!(
                "probe namespaces/pods labelled {PROBE_LABEL}=true are still being deleted after {}s; \
                 look for finalizers on them and run `calico-migrate check` again to finish the cleanup",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The nodes that run Calico, sorted: Fargate nodes have no calico-node.
async fn probe_nodes(
    client: &kube::Client,
    only: Option<&[String]>,
) -> Result<Vec<String>, CheckError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let lp = ListParams::default();
    let list = retried(|| nodes.list(&lp))
        .await
        .map_err(api(Call::list("Nodes", "nodes", "v1", false, None)))?;
    let mut out: Vec<String> = list
        .items
        .iter()
        .filter(|n| !crate::kinds::is_fargate(n))
        .filter_map(|n| n.metadata.name.clone())
        .filter(|n| only.is_none_or(|o| o.contains(n)))
        .collect();
    out.sort();
    out.dedup();
    if out.is_empty() {
        return Err(CheckError::NoNodes);
    }
    Ok(out)
}

async fn create_ignoring_exists<K>(api: &Api<K>, obj: &Value, call: Call) -> Result<(), CheckError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let typed: K = serde_json::from_value(obj.clone()).map_err(|e| {
        CheckError::Invalid(format!(
            "creating {}: the manifest is not valid: {e}",
            call.object
        ))
    })?;
    let pp = PostParams::default();
    match retried(|| api.create(&pp, &typed)).await {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 409) => Ok(()),
        Err(e) => Err(call.error(e)),
    }
}

/// An API call retried while its errors are transient (429, 5xx, timeouts), with the
/// engine's backoff: the checks run during maintenance windows on busy API servers.
async fn retried<T, Op, Fut>(op: Op) -> Result<T, kube::Error>
where
    Op: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    crate::cluster::errors::with_retry(
        &crate::engine::RetryPolicy::default(),
        crate::cluster::errors::Conflicts::Fail,
        op,
    )
    .await
}

/// The cluster objects the policy engine needs, as JSON with apiVersion and kind.
async fn policy_objects(client: &kube::Client) -> Result<Vec<Value>, CheckError> {
    // group, version, kind, its plural, resource, whether namespaced
    type Kind = (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        bool,
    );
    let kinds: [Kind; 7] = [
        ("", "v1", "Namespace", "Namespaces", "namespaces", false),
        ("", "v1", "Pod", "Pods", "pods", true),
        (
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "NetworkPolicies",
            "networkpolicies",
            true,
        ),
        (
            "crd.projectcalico.org",
            "v1",
            "NetworkPolicy",
            "NetworkPolicies",
            "networkpolicies",
            true,
        ),
        (
            "crd.projectcalico.org",
            "v1",
            "GlobalNetworkPolicy",
            "GlobalNetworkPolicies",
            "globalnetworkpolicies",
            false,
        ),
        (
            "crd.projectcalico.org",
            "v1",
            "GlobalNetworkSet",
            "GlobalNetworkSets",
            "globalnetworksets",
            false,
        ),
        (
            "crd.projectcalico.org",
            "v1",
            "Tier",
            "Tiers",
            "tiers",
            false,
        ),
    ];
    let mut out = Vec::new();
    for (group, version, kind, kinds, plural, namespaced) in kinds {
        let ar =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        let dyn_api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let lp = ListParams::default();
        let list = match retried(|| dyn_api.list(&lp)).await {
            Ok(l) => l,
            // Calico's CRDs may be absent (or Tier not served by older Calico).
            Err(e) if group == "crd.projectcalico.org" && is_status(&e, 404) => continue,
            Err(e) => {
                return Err(Call::list(kinds, plural, &ar.api_version, namespaced, None).error(e));
            }
        };
        for item in list.items {
            let mut v = serde_json::to_value(&item).unwrap_or(Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.insert("apiVersion".into(), Value::String(ar.api_version.clone()));
                o.insert("kind".into(), Value::String(kind.into()));
                out.push(v);
            }
        }
    }
    Ok(out)
}

fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// Exec `/agnhost connect` once in `ns/pod`.
pub async fn exec_connect(
    client: &kube::Client,
    from: &str,
    target: &str,
    protocol: &str,
    timeout: Duration,
) -> ExecResult {
    let Some((ns, name)) = from.split_once('/') else {
        return ExecResult::Error(format!("bad pod key {from}"));
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let cmd = [
        "/agnhost".to_string(),
        "connect".into(),
        target.to_string(),
        format!("--timeout={}", go_duration(timeout)),
        format!("--protocol={}", protocol.to_lowercase()),
    ];
    let ap = AttachParams::default()
        .container("agnhost")
        .stdin(false)
        .stdout(true)
        .stderr(true);
    let run = async {
        let mut p = pods
            .exec(name, cmd, &ap)
            .await
            .map_err(|e| format!("exec in {from}: {}", answer(&e)))?;
        let mut stderr = String::new();
        if let Some(mut e) = p.stderr() {
            let _ = e.read_to_string(&mut stderr).await;
        }
        if let Some(mut o) = p.stdout() {
            let mut sink = String::new();
            let _ = o.read_to_string(&mut sink).await;
        }
        let status = match p.take_status() {
            Some(s) => s.await,
            None => None,
        };
        let Some(status) = status else {
            return Err(format!(
                "exec in {from}: the stream ended without an exit status"
            ));
        };
        if status.status.as_deref() == Some("Success") {
            return Ok((0, stderr));
        }
        let code = status
            .details
            .as_ref()
            .and_then(|d| d.causes.as_ref())
            .and_then(|c| c.iter().find(|c| c.reason.as_deref() == Some("ExitCode")))
            .and_then(|c| c.message.as_deref()?.parse::<i32>().ok());
        match code {
            Some(code) => Ok((code, stderr)),
            None => Err(format!(
                "exec in {from}: {}",
                status.message.unwrap_or_default()
            )),
        }
    };
    // The probe's own timeout plus room for the API round trips.
    match tokio::time::timeout(timeout + Duration::from_secs(30), run).await {
        Ok(Ok((code, stderr))) => ExecResult::Exited { code, stderr },
        Ok(Err(e)) => ExecResult::Error(e),
        Err(_) => ExecResult::Error(format!(
            "exec in {from}: no answer within {}s",
            timeout.as_secs() + 30
        )),
    }
}

/// A probe workload in place; runs rounds and continuous probes until torn down.
pub struct Prober {
    client: kube::Client,
    opts: RoundOptions,
    nodes: Vec<String>,
    pods: Vec<ProbePod>,
    /// The last plan made (see [`Prober::recent_plan`]).
    recent: std::sync::Mutex<Option<std::sync::Arc<RoundPlan>>>,
}

impl Prober {
    /// Remove leftovers, then create the probe workload and wait (at most
    /// `ready_timeout`) for its pods to run. Pods that never run are reported by
    /// rounds as Check failed on their node.
    pub async fn setup(client: &kube::Client, opts: &RoundOptions) -> Result<Prober, CheckError> {
        Self::setup_after(client, opts, true).await
    }

    /// Like [`Prober::setup`], but the probe namespaces and their NetworkPolicy of an
    /// earlier run are kept (see [`cleanup_keeping_policies`]): no policy object changes.
    pub async fn setup_keeping_policies(
        client: &kube::Client,
        opts: &RoundOptions,
    ) -> Result<Prober, CheckError> {
        Self::setup_after(client, opts, false).await
    }

    /// Leftovers removed (the probe namespaces too, or only their pods), then created.
    async fn setup_after(
        client: &kube::Client,
        opts: &RoundOptions,
        namespaces_too: bool,
    ) -> Result<Prober, CheckError> {
        if opts.concurrency == 0 {
            return Err(CheckError::Invalid("concurrency must be at least 1".into()));
        }
        remove_leftovers(client, opts.ready_timeout, namespaces_too).await?;
        Self::create(client, opts).await
    }

    /// The workload for the nodes there are now, keeping the probe pods that exist
    /// (for a node that joined since `setup`: only its pods are created).
    pub async fn extend(client: &kube::Client, opts: &RoundOptions) -> Result<Prober, CheckError> {
        Self::create(client, opts).await
    }

    async fn create(client: &kube::Client, opts: &RoundOptions) -> Result<Prober, CheckError> {
        let nodes = probe_nodes(client, opts.nodes.as_deref()).await?;
        let pods = workload::probe_pods(&nodes, opts.exempt_namespace.as_deref());
        let nss: Api<Namespace> = Api::all(client.clone());
        for ns in [NAMESPACE_A, NAMESPACE_B] {
            create_ignoring_exists(
                &nss,
                &workload::namespace_manifest(ns),
                Call::one("create", "Namespace", "namespaces", "v1", None, ns),
            )
            .await?;
            let np: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
            create_ignoring_exists(
                &np,
                &workload::default_policy_manifest(ns),
                Call::one(
                    "create",
                    "NetworkPolicy",
                    "networkpolicies",
                    "networking.k8s.io/v1",
                    Some(ns),
                    "default",
                ),
            )
            .await?;
        }
        let image = opts.image.clone();
        // Built eagerly so the stream owns its items: a closure over `&ProbePod`
        // would make this future's Send-ness unprovable where callers box it.
        let creates: Vec<_> = pods
            .iter()
            .map(|p| {
                let api: Api<Pod> = Api::namespaced(client.clone(), &p.namespace);
                let manifest = workload::pod_manifest(p, &image);
                let call = Call::one("create", "Pod", "pods", "v1", Some(&p.namespace), &p.name);
                async move { create_ignoring_exists(&api, &manifest, call).await }
            })
            .collect();
        let results: Vec<Result<(), CheckError>> = futures::stream::iter(creates)
            .buffer_unordered(opts.concurrency)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        let prober = Prober {
            client: client.clone(),
            opts: opts.clone(),
            nodes,
            pods,
            recent: std::sync::Mutex::new(None),
        };
        prober.wait_running().await?;
        Ok(prober)
    }

    async fn wait_running(&self) -> Result<(), CheckError> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let want: BTreeSet<String> = self.pods.iter().map(ProbePod::key).collect();
        let deadline = Instant::now() + self.opts.ready_timeout;
        loop {
            let sel = probe_selector();
            let list = retried(|| pods.list(&sel))
                .await
                .map_err(api(Call::probes("Pods", "pods", true)))?;
            let running = list
                .items
                .iter()
                .filter(|p| {
                    let st = p.status.as_ref();
                    st.and_then(|s| s.phase.as_deref()) == Some("Running")
                        && st.and_then(|s| s.pod_ip.as_deref()).is_some()
                })
                .filter_map(|p| {
                    Some(format!(
                        "{}/{}",
                        p.metadata.namespace.as_deref()?,
                        p.metadata.name.as_deref()?
                    ))
                })
                .filter(|k| want.contains(k))
                .count();
            if running == want.len() || Instant::now() > deadline {
                if running < want.len() {
                    tracing::warn!(
                        "{} of {} probe pods are running after the wait",
                        running,
                        want.len()
                    );
                }
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The nodes probed.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Read the policies in force and plan the probes (kept as the recent plan).
    pub async fn plan(&self) -> Result<std::sync::Arc<RoundPlan>, CheckError> {
        let objects = policy_objects(&self.client).await?;
        let index = PolicyIndex::from_objects(&objects)?;
        let plan = std::sync::Arc::new(plan_round(
            &self.nodes,
            &self.pods,
            &index,
            self.opts.exempt_namespace.as_deref(),
            self.opts.dns_target.as_deref(),
        ));
        *self.recent.lock().unwrap_or_else(|e| e.into_inner()) = Some(plan.clone());
        Ok(plan)
    }

    /// The plan made last, or a new one. Planning reads every Namespace, Pod and
    /// policy of the cluster: a takeover that planned on each pass of each node's
    /// watch paid O(cluster) per pass, O(nodes²) in all. An expectation that no longer
    /// holds fails its probe, so a caller judging with this plan plans again before it
    /// reports a failure; what it cannot see is a policy added since that the data plane
    /// does not enforce, until the next fresh plan (every round makes one).
    pub async fn recent_plan(&self) -> Result<std::sync::Arc<RoundPlan>, CheckError> {
        let recent = self
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match recent {
            Some(p) => Ok(p),
            None => self.plan().await,
        }
    }

    /// Run probes with bounded concurrency; Check failed is retried, nothing else.
    pub async fn execute(&self, probes: &[Probe]) -> Vec<ProbeRecord> {
        self.execute_counted(probes, false).await
    }

    /// `execute`, advancing the current progress bar once per probe when `counted`.
    async fn execute_counted(&self, probes: &[Probe], counted: bool) -> Vec<ProbeRecord> {
        let client = &self.client;
        let opts = &self.opts;
        futures::stream::iter(probes.iter().cloned().map(|probe| async move {
            let started = Instant::now();
            let mut attempts = 0;
            loop {
                attempts += 1;
                let r = exec_connect(
                    client,
                    &probe.from,
                    &probe.target,
                    &probe.protocol,
                    opts.connect_timeout,
                )
                .await;
                let (observed, detail) = classify(&r);
                if observed != super::ResultClass::CheckFailed || attempts > opts.retries {
                    if counted {
                        crate::progress::inc();
                    }
                    return ProbeRecord {
                        probe,
                        observed,
                        detail,
                        attempts,
                        millis: started.elapsed().as_millis() as u64,
                    };
                }
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempts))).await;
            }
        }))
        .buffer_unordered(opts.concurrency)
        .collect()
        .await
    }

    /// One full round over every node.
    pub async fn round(&self) -> Result<RoundReport, CheckError> {
        let started = Instant::now();
        let plan = self.plan().await?;
        self.run_planned(&plan, started).await
    }

    /// A round over the probes touching `nodes` and none of `skipped` (nodes whose
    /// agent is being swapped, which their own watch covers): a bounded round
    /// between two nodes of a takeover. Planned afresh.
    pub async fn round_touching(
        &self,
        nodes: &BTreeSet<String>,
        skipped: &BTreeSet<String>,
    ) -> Result<RoundReport, CheckError> {
        let started = Instant::now();
        let full = self.plan().await?;
        let mut plan = RoundPlan::clone(&full);
        let touches = |n: &str| nodes.contains(n);
        let skips = |n: Option<&str>| n.is_some_and(|n| skipped.contains(n));
        plan.probes.retain(|p| {
            (touches(&p.src_node) || p.dst_node.as_deref().is_some_and(touches))
                && !skips(Some(&p.src_node))
                && !skips(p.dst_node.as_deref())
        });
        plan.unplanned
            .retain(|u| touches(&u.node) && !skipped.contains(&u.node));
        plan.nodes.retain(|n| touches(n));
        self.run_planned(&plan, started).await
    }

    async fn run_planned(
        &self,
        plan: &RoundPlan,
        started: Instant,
    ) -> Result<RoundReport, CheckError> {
        let bar = crate::progress::bar("check round", plan.probes.len() as u64, "probes");
        let mut records = self
            .execute_counted(&plan.probes, true)
            .instrument(bar)
            .await;
        records.sort_by(|a, b| {
            (&a.probe.node, &a.probe.from, &a.probe.to, a.probe.port).cmp(&(
                &b.probe.node,
                &b.probe.from,
                &b.probe.to,
                b.probe.port,
            ))
        });
        Ok(compare(plan, records, started.elapsed().as_millis() as u64))
    }

    /// Remove the probe workload.
    pub async fn teardown(self) -> Result<(), CheckError> {
        cleanup(&self.client, self.opts.ready_timeout).await
    }
}

/// Set up, run one round, and always remove the probe workload again.
pub async fn run_round(
    client: &kube::Client,
    opts: &RoundOptions,
) -> Result<RoundReport, CheckError> {
    let prober = match Prober::setup(client, opts).await {
        Ok(p) => p,
        Err(e) => {
            let _ = cleanup(client, opts.ready_timeout).await;
            return Err(e);
        }
    };
    let report = prober.round().await;
    let cleaned = prober.teardown().await;
    let report = report?;
    cleaned?;
    Ok(report)
}
