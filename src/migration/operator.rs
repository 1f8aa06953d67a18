//! The operator as the steps drive it: frozen (scaled to 0, no pod left) while a
//! node is checked, run again afterwards, and what it reports in TigeraStatus.

use std::time::Duration;

use anyhow::bail;
use serde_json::Value;

use super::converter::{self, Refusal, TyphaRefusal};
use super::facts::int_at;
use super::refs::{
    OPERATOR_NAMESPACE, kube_system_node, kube_system_typha, operator_ref, tigera_status_ref,
};
use super::wait::{wait_until, wait_until_every};
use super::world::World;
use crate::cluster::objects::Objects;
use crate::kinds::{self, deployment_ready};

/// Wait (at most `node_ready_timeout`) until the operator Deployment is Ready.
pub async fn wait_operator_ready(world: &World) -> anyhow::Result<()> {
    wait_until(
        world,
        "the operator to be Ready",
        world.options.node_ready_timeout,
        || async {
            Ok(match world.objects.get(&operator_ref()).await? {
                Some(d) if kinds::is(&d, deployment_ready) => None,
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
pub async fn freeze_operator(world: &World) -> anyhow::Result<bool> {
    let stopped = stop_operator(
        &world.objects,
        world.options.poll,
        world.options.node_ready_timeout,
    )
    .await?;
    // No operator pod is left (the wait saw them go): free the lock the last one
    // kept, so the next start leads at once.
    if stopped == Some(true) {
        super::leader_lock::release(world).await;
    }
    Ok(stopped.is_some())
}

/// [`freeze_operator`] but for the leader lock, with only a client (the takeover's
/// guard runs on a task of its own): scale to 0, then poll every `period` until no
/// operator pod is left (at most `timeout`). None when there is no operator;
/// Some(true) when its pods were waited for (its Deployment selects them).
pub async fn stop_operator(
    objects: &Objects,
    period: Duration,
    timeout: Duration,
) -> anyhow::Result<Option<bool>> {
    let r = operator_ref();
    let Some(d) = objects.get(&r).await? else {
        return Ok(None);
    };
    if int_at(&d, "/spec/replicas").unwrap_or(1) != 0 {
        tracing::info!("freezing the operator: scaling {r} to 0");
        objects.scale(&r, 0).await?;
    }
    let selector = match_labels(&d);
    wait_until_every(period, "the operator to stop", timeout, || {
        let selector = selector.clone();
        let r = r.clone();
        async move {
            let Some(d) = objects.get(&r).await? else {
                return Ok(None);
            };
            let ready = int_at(&d, "/status/readyReplicas").unwrap_or(0);
            let pods = match &selector {
                Some(s) => {
                    objects
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
    })
    .await?;
    Ok(Some(selector.is_some()))
}

/// Scale the operator to `replicas` (at least 1) and wait until it is Ready.
pub async fn run_operator(world: &World, replicas: i64) -> anyhow::Result<()> {
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

/// Condition `t` of TigeraStatus calico: (status is True, reason, message).
pub fn condition(ts: &Value, t: &str) -> Option<(bool, String, String)> {
    let c = ts
        .pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == t)?;
    let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    Some((s("status") == "True", s("reason"), s("message")))
}

/// The operator's Degraded message, if it reports one.
pub async fn degraded(world: &World) -> anyhow::Result<Option<String>> {
    Ok(world
        .objects
        .get(&tigera_status_ref())
        .await?
        .and_then(|ts| condition(&ts, "Degraded"))
        .filter(|(on, _, _)| *on)
        .map(|(_, reason, message)| format!("TigeraStatus calico Degraded ({reason}): {message}")))
}

/// What the operator says it is doing, for a stall's message: its Progressing
/// message, else its Degraded (a migration run that failed, e.g. its 10-minute wait
/// for calico-system typha, reports only that until a run succeeds).
pub async fn progressing_message(world: &World) -> String {
    match world.objects.get(&tigera_status_ref()).await {
        Ok(Some(ts)) => match (condition(&ts, "Progressing"), condition(&ts, "Degraded")) {
            (Some((true, _, m)), _) if !m.is_empty() => format!("the operator says \"{m}\""),
            (_, Some((true, reason, m))) => {
                format!("the operator reports TigeraStatus calico Degraded ({reason}): {m}")
            }
            _ => "the operator reports no progress message".into(),
        },
        _ => "no TigeraStatus calico".into(),
    }
}

/// The operator's preamble of its refusals (tigera/operator
/// pkg/controller/migration/convert, as the sandbox reproduces it).
pub const OPERATOR_WORDS: &str = "Existing Calico installation can not be managed by Tigera Operator as it is configured in a way that Operator does not currently support. Please update your existing Calico install config";

/// The words of the operator's Degraded for a converter error that is not an
/// `ErrIncompatibleCluster` (v1.17.4 core_controller.go:689, v1.38.6 :813).
pub const CONVERT_ERROR_WORDS: &str = "Error converting existing installation";

fn refusal_text(r: &Refusal) -> String {
    match r {
        Refusal::Annotations { on, keys } => format!(
            "unexpected annotation(s) {} on the {on} of daemonset/calico-node; remove them (detach-helm does)",
            keys.join(", ")
        ),
        Refusal::FargateAffinity | Refusal::NodeAffinity => {
            "node affinity not supported for calico-node daemonset (fargate-affinity removes the Fargate exclusion)".into()
        }
        Refusal::NodeSelector { keys } => format!(
            "nodeSelector key(s) {} on daemonset/calico-node are not supported (only the OS)",
            keys.join(", ")
        ),
        Refusal::UnexpectedEnv { names } => {
            format!("unexpected env var(s) {}", names.join(", "))
        }
        Refusal::EnvValue { name, found, want } => {
            format!("env {name} is {found:?}, the converter needs {want:?}")
        }
        Refusal::AddonManager => {
            "the addonmanager.kubernetes.io/mode label on daemonset/calico-node".into()
        }
        Refusal::MissingContainer => "daemonset/calico-node has no calico-node container".into(),
        Refusal::EnvSource { container, name } => {
            format!("{container} env {name} is read from neither a value nor a configMapKeyRef")
        }
        Refusal::EnvConfigMap { name, config_map } => {
            format!("env {name} refers to the missing ConfigMap kube-system/{config_map}")
        }
        Refusal::NodeName { container, name } => {
            format!("{container} env {name} is not a fieldRef to spec.nodeName")
        }
        Refusal::Volume { detail } => format!("daemonset/calico-node volumes: {detail}"),
        Refusal::MetricsPort { value } => {
            format!("FELIX_PROMETHEUSMETRICSPORT={value} is no port")
        }
        Refusal::InterfacePrefix { found } => format!(
            "FELIX_INTERFACEPREFIX {} is not eni (AmazonVPC)",
            found.as_deref().unwrap_or("unset")
        ),
        Refusal::Mtu { detail } => format!("MTU env: {detail}"),
        Refusal::IpPool { name, detail } => format!("IPPool {name}: {detail}"),
        Refusal::Bpf { detail } => detail.clone(),
        Refusal::FelixConfigurationMissing => "FelixConfiguration default does not exist".into(),
        Refusal::FelixEnv { name, value, error } => {
            format!("{name}={value} cannot be patched into FelixConfiguration ({error})")
        }
    }
}

fn typha_refusal_text(r: &TyphaRefusal) -> String {
    match r {
        TyphaRefusal::Annotations { on, keys } => format!(
            "unexpected annotation(s) {} on the {on} of deployment/calico-typha; remove them",
            keys.join(", ")
        ),
        TyphaRefusal::Affinity { what } => {
            format!("{what} on deployment/calico-typha is not supported; remove it")
        }
        TyphaRefusal::NodeSelector { keys } => format!(
            "nodeSelector key(s) {} on deployment/calico-typha are not supported (only the OS)",
            keys.join(", ")
        ),
        TyphaRefusal::AddonManager => {
            "the addonmanager.kubernetes.io/mode label on deployment/calico-typha".into()
        }
        TyphaRefusal::MissingContainer => {
            "deployment/calico-typha has no calico-typha container".into()
        }
        TyphaRefusal::Metrics { detail } => format!("deployment/calico-typha: {detail}"),
    }
}

/// What the converter would refuse on the live DaemonSet (its own migration
/// label aside, which the operator sets itself), typha, and what else it reads: the
/// kube-system ConfigMaps, the IPPools and FelixConfiguration default.
pub async fn refusals(world: &World, ds: &Value) -> anyhow::Result<Vec<String>> {
    let line = world.converter_line();
    let typha = world.objects.get(&kube_system_typha()).await?;
    let config_maps = world
        .objects
        .list("v1", "ConfigMap", Some("kube-system"), None)
        .await?;
    let ip_pools = world
        .objects
        .list("crd.projectcalico.org/v1", "IPPool", None, None)
        .await?;
    // Listed, not read by name: the Job identity of deploy/ lists FelixConfigurations
    // (plan does) and needs no `get` of them (migration::permissions).
    let felix = world
        .objects
        .list("crd.projectcalico.org/v1", "FelixConfiguration", None, None)
        .await?
        .into_iter()
        .find(|o| o.pointer("/metadata/name").and_then(Value::as_str) == Some("default"));
    let ex = converter::Existing {
        node: ds,
        typha: typha.as_ref(),
        cluster: Some(converter::Cluster {
            config_maps: &config_maps,
            ip_pools: &ip_pools,
            felix_configuration: felix.as_ref(),
        }),
    };
    let typha = converter::predict_typha(&ex, line)
        .iter()
        .map(typha_refusal_text)
        .collect::<Vec<_>>();
    Ok(converter::predict(&ex, line)
        .iter()
        .map(refusal_text)
        .chain(typha)
        .collect())
}

/// The kind and API version in apimachinery's NoKindMatchError text
/// (`no matches for kind "K" in version "G/V"`).
fn no_kind_match(message: &str) -> Option<(String, String)> {
    let rest = message.split("no matches for kind \"").nth(1)?;
    let (kind, rest) = rest.split_once('"')?;
    let rest = rest.strip_prefix(" in version \"")?;
    let (version, _) = rest.split_once('"')?;
    Some((kind.to_string(), version.to_string()))
}

/// The Degraded that stops the migration, as a sentence: only one whose cause is
/// still true now. The operator's status manager keeps an explicit Degraded until a
/// reconcile needs no migration (tigera/operator v1.17.4
/// pkg/controller/installation/core_controller.go:1094-1100 and :1156, v1.20.1
/// :1129-1135 and :1194, v1.38.6 :1513-1519 and :1587) or until its process ends
/// (pkg/controller/status/status.go: in memory), and a frozen operator writes nothing,
/// so TigeraStatus may name a cause that is gone. The rule (docs/sandbox-behaviour.md,
/// "Degraded"):
/// - a converter refusal (OPERATOR_WORDS) is current while the converter's prediction
///   on the live kube-system DaemonSet and typha still refuses something;
/// - a render failure for a kind the API server lacks is current while discovery
///   still does not serve that kind at that version;
/// - any other Degraded (a migration error) is judged by what the operator does: it
///   does not stop the migration here; a wait for the operator's progress that times
///   out names it (`degraded`).
pub async fn current_degraded(world: &World) -> anyhow::Result<Option<String>> {
    let Some(ts) = world.objects.get(&tigera_status_ref()).await? else {
        return Ok(None);
    };
    let Some((true, reason, message)) = condition(&ts, "Degraded") else {
        return Ok(None);
    };
    if let Some((kind, version)) = no_kind_match(&message) {
        let served = world.objects.served_kinds(&version).await?;
        if served.is_some_and(|k| k.contains(&kind)) {
            return Ok(None);
        }
        let tag = match world.objects.get(&operator_ref()).await? {
            Some(d) => d
                .pointer("/spec/template/spec/containers/0/image")
                .and_then(Value::as_str)
                .and_then(|i| i.rsplit_once(':'))
                .map(|(_, t)| format!("tigera-operator {t}"))
                .unwrap_or_else(|| "the tigera-operator".into()),
            None => "the tigera-operator".into(),
        };
        return Ok(Some(format!(
            "{tag} cannot run on this Kubernetes: it creates a {kind} at {version}, which this API server no longer serves (TigeraStatus calico Degraded, {reason}: {message}), so it will never migrate a node; run `calico-migrate rollback`, then plan again with a profile whose operator release supports this Kubernetes (the built-in profiles' preflight names it, KUBERNETES_VERSION_UNSUPPORTED)"
        )));
    }
    let converter = [OPERATOR_WORDS, CONVERT_ERROR_WORDS];
    if converter
        .iter()
        .any(|w| reason.contains(w) || message.contains(w))
    {
        let still = match world.objects.get(&kube_system_node()).await? {
            Some(ds) => refusals(world, &ds).await?,
            None => Vec::new(),
        };
        if still.is_empty() {
            return Ok(None);
        }
        return Ok(Some(format!(
            "the operator refuses the migration (TigeraStatus calico Degraded, \"{message}\"), and it still would: {}; fix what it names, then run `calico-migrate apply --resume`, or run `calico-migrate rollback`",
            still.join("; ")
        )));
    }
    Ok(None)
}
