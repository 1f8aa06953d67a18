//! When a calico-node pod turns Ready under the realistic timings
//! ([`super::ControllerOptions::agent_readiness_probe`]): the kubelet marks a container
//! ready only when its readiness probe succeeds, and its prober runs that probe on a
//! ticker of `periodSeconds` (kubernetes pkg/kubelet/prober/worker.go `run` at commit
//! 00421113e1c6: `doProbe`, then wait for the next tick), whatever felix is doing.
//! calico-node's probe (`calico-node -felix-ready`) fails until felix has synced with
//! the datastore and programmed the data plane, so the first success is the first tick
//! after that: between felix's own start-up time and that plus one period. The sandbox
//! takes one period after the container starts, the bound when felix is ready within
//! one period.
//!
//! The periods, read from each pod's own probe:
//! - aws-calico chart 0.3.10 (kube-system): `periodSeconds: 10`, `timeoutSeconds: 5`
//!   (templates/daemon-set.yaml:119-125, embedded under scenario/data).
//! - tigera/operator v1.17.4 and v1.20.1 (calico-system): `PeriodSeconds: 10`,
//!   `TimeoutSeconds: 5` (pkg/render/node.go:1260-1266 and :1334-1340).
//! - tigera/operator v1.38.6: the render sets `TimeoutSeconds: 10` only
//!   (pkg/render/node.go:1728-1733) and `setProbeTimeouts` fills `PeriodSeconds: 30`
//!   (pkg/controller/utils/component.go:125 and :729-787).
//!
//! The sandbox models less: felix's start-up time is not drawn (one period covers it),
//! there is no jitter of the ticker, and image pulls are not modelled.

use serde_json::Value;

/// The period of a probe that names none: k8s.io/api v0.34.9 core/v1/types.go:2718
/// (`periodSeconds`: "Default to 10 seconds").
pub const DEFAULT_PERIOD_SECONDS: f64 = 10.0;

/// Simulated seconds from the calico-node container's start to its readiness probe's
/// first success: one period of its own probe; zero without a probe, since the kubelet
/// counts a container without one ready as soon as it runs.
pub fn first_success_after_start(pod: &Value) -> f64 {
    probe_period(pod, "calico-node").unwrap_or(0.0)
}

/// The period of `container`'s readiness probe, [`DEFAULT_PERIOD_SECONDS`] when the
/// container names none or has no probe (a held agent is looked at again then).
pub fn period(pod: &Value, container: &str) -> f64 {
    probe_period(pod, container).unwrap_or(DEFAULT_PERIOD_SECONDS)
}

/// `None` when the container has no readiness probe.
fn probe_period(pod: &Value, container: &str) -> Option<f64> {
    let probe = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["name"] == container))
        .and_then(|c| c.get("readinessProbe"))?;
    Some(
        probe
            .get("periodSeconds")
            .and_then(Value::as_f64)
            .filter(|s| *s >= 1.0)
            .unwrap_or(DEFAULT_PERIOD_SECONDS),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_period_of_the_pods_own_probe() {
        let pod = |probe: Value| json!({"spec": {"containers": [{"name": "calico-node", "readinessProbe": probe}]}});
        assert_eq!(
            first_success_after_start(&pod(json!({"periodSeconds": 30}))),
            30.0
        );
        assert_eq!(first_success_after_start(&pod(json!({"exec": {}}))), 10.0);
        let none = json!({"spec": {"containers": [{"name": "calico-node"}]}});
        assert_eq!(first_success_after_start(&none), 0.0);
    }
}
