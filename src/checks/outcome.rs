//! Result classes of a probe, comparison with the engine's expectation and with a
//! baseline round, and the round report (pure).
//!
//! agnhost `connect` (kubernetes `test/images/agnhost/connect/connect.go`) exits 0 when
//! connected and otherwise 1 with a fixed prefix on stderr: `TIMEOUT`, `REFUSED`,
//! `DNS: ...`, `UNKNOWN: ...`, `OTHER: ...`. Anything else (exec refused, a missing
//! binary, a pod that is not running) is a failure of the check itself and is never
//! read as a block: that is the upstream e2e suite's weakness this avoids.

use serde::{Deserialize, Serialize};

use super::plan::{Expected, Probe, ProbeKind, RoundPlan};

/// What a probe observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultClass {
    Allowed,
    /// The connection timed out: dropped by policy.
    Blocked,
    /// Reached the destination, nothing listened.
    Refused,
    DnsFailure,
    /// The probe could not run or its pod is broken: says nothing about policy.
    CheckFailed,
}

/// What a failed probe means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// Policy says blocked, the node let it through.
    NotEnforced,
    /// Policy says allowed, the connection did not get through.
    NotConnected,
    DnsFailure,
    CheckFailed,
}

/// The raw outcome of one exec.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecResult {
    /// The command ran: its exit code and stderr.
    Exited { code: i32, stderr: String },
    /// The exec itself failed (API error, pod not running, stream broken).
    Error(String),
}

/// Class an exec result as agnhost connect reports it.
pub fn classify(r: &ExecResult) -> (ResultClass, String) {
    match r {
        ExecResult::Error(e) => (ResultClass::CheckFailed, e.clone()),
        ExecResult::Exited { code: 0, .. } => (ResultClass::Allowed, String::new()),
        ExecResult::Exited { code: 1, stderr } => {
            let s = stderr.trim();
            let class = if s.starts_with("TIMEOUT") {
                ResultClass::Blocked
            } else if s.starts_with("REFUSED") || s == "OTHER: connection refused" {
                ResultClass::Refused
            } else if s.starts_with("DNS:") {
                ResultClass::DnsFailure
            } else {
                ResultClass::CheckFailed
            };
            (class, s.to_string())
        }
        ExecResult::Exited { code, stderr } => (
            ResultClass::CheckFailed,
            format!("exit code {code}: {}", stderr.trim()),
        ),
    }
}

/// Whether an observation matches the expectation; `None` when it does.
pub fn judge(probe: &Probe, observed: ResultClass) -> Option<FailureClass> {
    match (probe.expected, observed) {
        (_, ResultClass::CheckFailed) => Some(FailureClass::CheckFailed),
        (Expected::Allowed, ResultClass::Allowed) => None,
        // An address outside the pod network that refuses was still reached.
        (Expected::Allowed, ResultClass::Refused) if probe.external => None,
        // Policies that block DNS make the lookup time out: that is what they say.
        (Expected::Blocked, ResultClass::DnsFailure) if probe.kind == ProbeKind::Dns => None,
        (_, ResultClass::DnsFailure) => Some(FailureClass::DnsFailure),
        (Expected::Allowed, _) => Some(FailureClass::NotConnected),
        (Expected::Blocked, ResultClass::Blocked) => None,
        (Expected::Blocked, _) => Some(FailureClass::NotEnforced),
    }
}

/// One probe's record in a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeRecord {
    #[serde(flatten)]
    pub probe: Probe,
    pub observed: ResultClass,
    pub detail: String,
    pub attempts: u32,
    pub millis: u64,
}

/// A failure as the CLI's JSON contract gives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: String,
    pub expected: Expected,
    pub observed: ResultClass,
    pub class: FailureClass,
    /// The node whose enforcement decides this pair.
    pub node: String,
    pub detail: String,
}

/// A pair whose observation differs from the stored baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineChange {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub baseline: ResultClass,
    pub observed: ResultClass,
}

/// The outcome of one round.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundReport {
    pub passed: bool,
    pub probes: usize,
    pub nodes: usize,
    pub failures: Vec<Failure>,
    /// Nodes named by at least one failure.
    pub failed_nodes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub baseline_changes: Vec<BaselineChange>,
    pub millis: u64,
    pub records: Vec<ProbeRecord>,
}

/// Compare a round's records with the engine's expectations. Probe pods the plan could
/// not use count as check failures on their node.
pub fn compare(plan: &RoundPlan, records: Vec<ProbeRecord>, millis: u64) -> RoundReport {
    let mut failures: Vec<Failure> = records
        .iter()
        .filter_map(|r| {
            judge(&r.probe, r.observed).map(|class| Failure {
                from: r.probe.from.clone(),
                to: r.probe.to.clone(),
                port: r.probe.port,
                protocol: r.probe.protocol.clone(),
                expected: r.probe.expected,
                observed: r.observed,
                class,
                node: r.probe.node.clone(),
                detail: r.detail.clone(),
            })
        })
        .collect();
    for u in &plan.unplanned {
        failures.push(Failure {
            from: u.pod.clone(),
            to: String::new(),
            port: 0,
            protocol: "TCP".into(),
            expected: Expected::Allowed,
            observed: ResultClass::CheckFailed,
            class: FailureClass::CheckFailed,
            node: u.node.clone(),
            detail: u.reason.clone(),
        });
    }
    let mut failed_nodes: Vec<String> = failures.iter().map(|f| f.node.clone()).collect();
    failed_nodes.sort();
    failed_nodes.dedup();
    RoundReport {
        passed: failures.is_empty(),
        probes: records.len(),
        nodes: plan.nodes.len(),
        failures,
        failed_nodes,
        baseline_changes: Vec::new(),
        millis,
        records,
    }
}

/// Record where this round observed something else than the baseline for the same pair.
pub fn compare_with_baseline(report: &mut RoundReport, baseline: &RoundReport) {
    let before: std::collections::HashMap<_, _> = baseline
        .records
        .iter()
        .map(|r| {
            (
                (r.probe.from.as_str(), r.probe.to.as_str(), r.probe.port),
                r.observed,
            )
        })
        .collect();
    report.baseline_changes = report
        .records
        .iter()
        .filter_map(|r| {
            let b = *before.get(&(r.probe.from.as_str(), r.probe.to.as_str(), r.probe.port))?;
            (b != r.observed).then(|| BaselineChange {
                from: r.probe.from.clone(),
                to: r.probe.to.clone(),
                port: r.probe.port,
                baseline: b,
                observed: r.observed,
            })
        })
        .collect();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::plan::ProbeKind;

    fn exited(code: i32, e: &str) -> ExecResult {
        ExecResult::Exited {
            code,
            stderr: e.into(),
        }
    }

    fn probe(expected: Expected, external: bool) -> Probe {
        Probe {
            from: "a/c".into(),
            to: "b/s".into(),
            target: "10.0.0.1:8080".into(),
            port: 8080,
            protocol: "TCP".into(),
            kind: ProbeKind::CrossNamespace,
            expected,
            node: "n1".into(),
            src_node: "n0".into(),
            dst_node: Some("n1".into()),
            external,
        }
    }

    #[test]
    fn agnhost_outputs_map_to_classes() {
        assert_eq!(classify(&exited(0, "")).0, ResultClass::Allowed);
        assert_eq!(classify(&exited(1, "TIMEOUT\n")).0, ResultClass::Blocked);
        assert_eq!(
            classify(&exited(1, "TIMEOUT: read udp 1:2->3:4: i/o timeout")).0,
            ResultClass::Blocked
        );
        assert_eq!(classify(&exited(1, "REFUSED\n")).0, ResultClass::Refused);
        assert_eq!(
            classify(&exited(1, "OTHER: connection refused\n")).0,
            ResultClass::Refused
        );
        assert_eq!(
            classify(&exited(1, "DNS: lookup x: no such host")).0,
            ResultClass::DnsFailure
        );
        assert_eq!(
            classify(&exited(1, "UNKNOWN: boom")).0,
            ResultClass::CheckFailed
        );
        assert_eq!(
            classify(&exited(1, "Error: unknown flag: --x")).0,
            ResultClass::CheckFailed
        );
        assert_eq!(
            classify(&exited(127, "exec: not found")).0,
            ResultClass::CheckFailed
        );
        assert_eq!(
            classify(&ExecResult::Error("container not found".into())).0,
            ResultClass::CheckFailed
        );
    }

    #[test]
    fn a_check_failure_is_never_a_block() {
        let p = probe(Expected::Blocked, false);
        assert_eq!(
            judge(&p, ResultClass::CheckFailed),
            Some(FailureClass::CheckFailed)
        );
        assert_eq!(judge(&p, ResultClass::Blocked), None);
        assert_eq!(
            judge(&p, ResultClass::Allowed),
            Some(FailureClass::NotEnforced)
        );
        assert_eq!(
            judge(&p, ResultClass::Refused),
            Some(FailureClass::NotEnforced)
        );
        let a = probe(Expected::Allowed, false);
        assert_eq!(
            judge(&a, ResultClass::Refused),
            Some(FailureClass::NotConnected)
        );
        assert_eq!(
            judge(&a, ResultClass::Blocked),
            Some(FailureClass::NotConnected)
        );
        assert_eq!(
            judge(&probe(Expected::Allowed, true), ResultClass::Refused),
            None
        );
    }

    #[test]
    fn report_names_the_deciding_node_and_baseline_changes() {
        let plan = RoundPlan {
            probes: vec![],
            nodes: vec!["n0".into(), "n1".into()],
            unplanned: vec![],
        };
        let rec = |obs| ProbeRecord {
            probe: probe(Expected::Blocked, false),
            observed: obs,
            detail: String::new(),
            attempts: 1,
            millis: 1,
        };
        let good = compare(&plan, vec![rec(ResultClass::Blocked)], 5);
        assert!(good.passed);
        let mut bad = compare(&plan, vec![rec(ResultClass::Allowed)], 5);
        assert!(!bad.passed);
        assert_eq!(bad.failed_nodes, vec!["n1".to_string()]);
        compare_with_baseline(&mut bad, &good);
        assert_eq!(bad.baseline_changes.len(), 1);
        assert_eq!(bad.baseline_changes[0].baseline, ResultClass::Blocked);
    }
}
