//! The operator as the steps drive it: frozen (scaled to 0, no pod left) while a
//! node is checked, run again afterwards, and what it reports in TigeraStatus.

use anyhow::bail;
use serde_json::Value;

use super::facts::int_at;
use super::refs::{OPERATOR_NAMESPACE, operator_ref, tigera_status_ref};
use super::wait::wait_until;
use super::world::World;
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

pub async fn progressing_message(world: &World) -> String {
    match world.objects.get(&tigera_status_ref()).await {
        Ok(Some(ts)) => match condition(&ts, "Progressing") {
            Some((true, _, m)) if !m.is_empty() => format!("the operator says \"{m}\""),
            _ => "the operator reports no progress message".into(),
        },
        _ => "no TigeraStatus calico".into(),
    }
}
