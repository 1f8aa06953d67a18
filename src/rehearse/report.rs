//! The rehearsal report: phases with step durations, probes run, the longest
//! window without verified enforcement per node, faults and how each was handled,
//! and every interval the sandbox's enforcement monitor recorded.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::engine::Outcome;
use crate::migration::world::Observation;
use crate::sandbox::dataplane::monitor::{DivergenceReason, Interval};

#[derive(Debug, Clone, Serialize)]
pub struct StepTiming {
    pub step: String,
    pub millis: u64,
    /// The last journal event of the step in this phase (verified, rolled back, failed).
    pub ended: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub phase: String,
    pub outcome: Outcome,
    pub millis: u64,
    pub steps: Vec<StepTiming>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    /// The step the run stopped at.
    pub stopped_at: String,
    /// What calico-migrate said.
    pub message: String,
    pub resolution: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeWindow {
    pub swaps: u32,
    pub longest_unverified_ms: u64,
    /// A probe pass failed on this node's enforcement at the end of a watch (its own
    /// swap, or another node's whose probes it decided).
    pub failed: bool,
}

/// Established connections held across the swaps.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HeldConnections {
    /// Reports taken (one after each node's swap, one after the last rollout).
    pub reports: usize,
    /// The most connections one report covered.
    pub largest: usize,
    /// `from -> to (why)` of every connection that broke, with the swap it broke in.
    pub broken: Vec<String>,
    /// Connections that could not be followed (exec failed): never read as broken.
    pub check_failed: usize,
}

impl HeldConnections {
    /// One line for the report; `None` when no connection was held.
    pub fn line(&self) -> Option<String> {
        if self.reports == 0 {
            return None;
        }
        let mut s = format!(
            "Established connections: up to {} held, checked after {} swap(s): ",
            self.largest, self.reports
        );
        if self.broken.is_empty() {
            s.push_str("every one survived");
        } else {
            s.push_str(&format!("BROKEN {}", self.broken.join("; ")));
        }
        if self.check_failed > 0 {
            s.push_str(&format!(
                " ({} could not be followed: check failed, not a break)",
                self.check_failed
            ));
        }
        Some(s)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MonitorInterval {
    pub node: String,
    pub reason: String,
    pub detail: String,
    pub millis: Option<u64>,
    /// On a node where a lapse was injected on purpose.
    pub injected: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub passed: bool,
    pub nodes: usize,
    /// `--from-cluster`: what was copied from the live cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copied_from_cluster: Option<String>,
    pub seed: u64,
    pub millis: u64,
    pub faults_injected: Vec<String>,
    pub planned_steps: Vec<String>,
    pub phases: Vec<PhaseReport>,
    pub check_rounds: usize,
    pub probes: usize,
    pub node_windows: BTreeMap<String, NodeWindow>,
    pub held_connections: HeldConnections,
    pub faults: Vec<FaultReport>,
    pub verification_passed: bool,
    pub rollback_differences: Vec<String>,
    pub monitor: Vec<MonitorInterval>,
    pub problems: Vec<String>,
}

impl Report {
    pub fn new(nodes: usize, seed: u64, faults: Vec<String>) -> Self {
        Report {
            passed: false,
            nodes,
            copied_from_cluster: None,
            seed,
            millis: 0,
            faults_injected: faults,
            planned_steps: Vec::new(),
            phases: Vec::new(),
            check_rounds: 0,
            probes: 0,
            node_windows: BTreeMap::new(),
            held_connections: HeldConnections::default(),
            faults: Vec::new(),
            verification_passed: false,
            rollback_differences: Vec::new(),
            monitor: Vec::new(),
            problems: Vec::new(),
        }
    }

    pub fn add_observations(&mut self, obs: &[Observation]) {
        for o in obs {
            match o {
                Observation::Round { probes, .. } => {
                    self.check_rounds += 1;
                    self.probes += probes;
                }
                Observation::NodeSwap { watch, .. } => {
                    let w = self.node_windows.entry(watch.node.clone()).or_default();
                    w.swaps += 1;
                    w.longest_unverified_ms =
                        w.longest_unverified_ms.max(watch.longest_unverified_ms);
                    if !watch.verified_at_end {
                        // Blame the nodes whose enforcement decided the failing pairs.
                        let mut blamed: Vec<&str> = watch
                            .last_failures
                            .iter()
                            .map(|f| f.node.as_str())
                            .collect();
                        if blamed.is_empty() {
                            blamed.push(&watch.node);
                        }
                        for n in blamed {
                            self.node_windows.entry(n.to_string()).or_default().failed = true;
                        }
                    }
                }
                Observation::HeldConnections { report, .. } => {
                    let h = &mut self.held_connections;
                    h.reports += 1;
                    h.largest = h.largest.max(report.connections.len());
                    h.check_failed += report.check_failed;
                    if report.broken > 0 {
                        h.broken.push(format!(
                            "after {}'s swap: {}",
                            report.node,
                            report.broken_list(usize::MAX)
                        ));
                    }
                }
                Observation::Note { .. } => {}
            }
        }
    }

    /// Record the monitor's intervals; any not explained by an injected lapse is a problem.
    /// `lapsed` are the nodes of `lapse:` faults; `agentless` those of
    /// `agent-not-ready:` faults, where a node with no Ready agent is the injected
    /// failure itself, so pods that land there fail closed (a real consequence the
    /// checks stop on, not a lapse of the tool's).
    pub fn add_intervals(
        &mut self,
        intervals: &[Interval],
        lapsed: &[String],
        agentless: &[String],
    ) {
        for iv in intervals {
            let on = |nodes: &[String]| nodes.iter().any(|n| n == &iv.node);
            let injected = match iv.reason {
                DivergenceReason::Lapse => on(lapsed),
                DivergenceReason::FailClosed | DivergenceReason::NoAgent => on(agentless),
                DivergenceReason::StaleRules => false,
            };
            let millis = iv
                .end
                .map(|e| e.duration_since(iv.start).as_millis().max(0) as u64);
            if !injected {
                self.problems.push(format!(
                    "enforcement diverged on {} ({:?}): {}",
                    iv.node, iv.reason, iv.detail
                ));
            }
            self.monitor.push(MonitorInterval {
                node: iv.node.clone(),
                reason: format!("{:?}", iv.reason),
                detail: iv.detail.clone(),
                millis,
                injected,
            });
        }
        self.passed = self.problems.is_empty() && self.verification_passed;
    }

    /// The phases side by side, a row per step: one table a terminal shows whole.
    fn phase_table(&self) -> String {
        const CELL: usize = 22;
        let mut s = String::new();
        for p in &self.phases {
            let _ = writeln!(
                s,
                "{}: {} in {:.1}s",
                p.phase,
                outcome_word(&p.outcome),
                p.millis as f64 / 1000.0
            );
        }
        let mut steps: Vec<&str> = Vec::new();
        for t in self.phases.iter().flat_map(|p| &p.steps) {
            if !steps.contains(&t.step.as_str()) {
                steps.push(&t.step);
            }
        }
        let _ = write!(s, "  {:<22}", "step");
        for p in &self.phases {
            let _ = write!(s, " {:<CELL$}", p.phase);
        }
        s.push('\n');
        for step in steps {
            let _ = write!(s, "  {step:<22}");
            for p in &self.phases {
                let cell = p.steps.iter().find(|t| t.step == step).map_or_else(
                    || "-".to_string(),
                    |t| format!("{:>6.2}s {}", t.millis as f64 / 1000.0, t.ended),
                );
                let _ = write!(s, " {cell:<CELL$}");
            }
            let _ = writeln!(s);
        }
        s
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Rehearsal on {} sandbox nodes (seed {}) in {:.1}s: {}",
            self.nodes,
            self.seed,
            self.millis as f64 / 1000.0,
            if self.passed { "PASSED" } else { "FAILED" }
        );
        if let Some(c) = &self.copied_from_cluster {
            let _ = writeln!(s, "Seeded from the live cluster: {c}");
        }
        if !self.faults_injected.is_empty() {
            let _ = writeln!(
                s,
                "Faults injected after the baseline: {}",
                self.faults_injected.join(", ")
            );
        }
        s.push_str(&self.phase_table());
        let _ = writeln!(
            s,
            "\nChecks: {} rounds, {} probes; verification round {}",
            self.check_rounds,
            self.probes,
            if self.verification_passed {
                "passed"
            } else {
                "FAILED"
            }
        );
        if !self.node_windows.is_empty() {
            let _ = writeln!(s, "Longest window without verified enforcement, per node:");
            let width = self.node_windows.keys().map(String::len).max().unwrap_or(0);
            for (node, w) in &self.node_windows {
                let _ = writeln!(
                    s,
                    "  {node:<width$} {:>6} ms over {} swap(s){}",
                    w.longest_unverified_ms,
                    w.swaps,
                    if w.failed { "  FAILED A CHECK" } else { "" }
                );
            }
        }
        if let Some(line) = self.held_connections.line() {
            let _ = writeln!(s, "{line}");
        }
        for f in &self.faults {
            let _ = writeln!(
                s,
                "Fault handled: stopped at `{}`: {}\n  then: {}",
                f.stopped_at, f.message, f.resolution
            );
        }
        let _ = writeln!(
            s,
            "Rollback: {}",
            if self.rollback_differences.is_empty() {
                "the cluster equals the baseline, object by object".to_string()
            } else {
                format!(
                    "{} object(s) differ from the baseline",
                    self.rollback_differences.len()
                )
            }
        );
        let _ = writeln!(
            s,
            "Enforcement monitor: {} interval(s){}",
            self.monitor.len(),
            if self.monitor.iter().all(|m| m.injected) && !self.monitor.is_empty() {
                " (all on nodes lapsed on purpose)"
            } else {
                ""
            }
        );
        for m in &self.monitor {
            let _ = writeln!(
                s,
                "  {} {} {}{}",
                m.node,
                m.reason,
                m.millis.map_or("open".to_string(), |ms| format!("{ms} ms")),
                if m.injected { " (injected)" } else { "" }
            );
        }
        for p in &self.problems {
            let _ = writeln!(s, "PROBLEM: {p}");
        }
        s
    }

    pub fn markdown(&self) -> String {
        let held = self.held_connections.line();
        let mut s = String::new();
        let _ = writeln!(s, "# calico-migrate rehearsal\n");
        let _ = writeln!(
            s,
            "**Result:** {} — {} sandbox nodes, seed {}, {:.1} s\n",
            if self.passed { "passed" } else { "FAILED" },
            self.nodes,
            self.seed,
            self.millis as f64 / 1000.0
        );
        if let Some(c) = &self.copied_from_cluster {
            let _ = writeln!(s, "**Seeded from the live cluster:** {c}\n");
        }
        if !self.faults_injected.is_empty() {
            let _ = writeln!(
                s,
                "**Faults injected:** {}\n",
                self.faults_injected.join(", ")
            );
        }
        let _ = writeln!(s, "| Phase | Step | Seconds | Ended |\n|---|---|---:|---|");
        for p in &self.phases {
            for t in &p.steps {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.2} | {} |",
                    p.phase,
                    t.step,
                    t.millis as f64 / 1000.0,
                    t.ended
                );
            }
        }
        let _ = writeln!(
            s,
            "\n**Checks:** {} rounds, {} probes; verification {}.\n",
            self.check_rounds,
            self.probes,
            if self.verification_passed {
                "passed"
            } else {
                "failed"
            }
        );
        if let Some(line) = &held {
            let _ = writeln!(s, "**{line}**\n");
        }
        if !self.node_windows.is_empty() {
            let _ = writeln!(
                s,
                "| Node | Swaps | Longest unverified (ms) |\n|---|---:|---:|"
            );
            for (node, w) in &self.node_windows {
                let _ = writeln!(s, "| {node} | {} | {} |", w.swaps, w.longest_unverified_ms);
            }
        }
        for f in &self.faults {
            let _ = writeln!(
                s,
                "\n- Stopped at `{}`: {} — {}",
                f.stopped_at, f.message, f.resolution
            );
        }
        let _ = writeln!(
            s,
            "\n**Rollback:** {} object(s) differ from the baseline. **Monitor:** {} interval(s).",
            self.rollback_differences.len(),
            self.monitor.len()
        );
        for p in &self.problems {
            let _ = writeln!(s, "\n- PROBLEM: {p}");
        }
        s
    }
}

fn outcome_word(o: &Outcome) -> String {
    match o {
        Outcome::Completed => "completed".into(),
        Outcome::Stopped { step, .. } => format!("stopped at {step}"),
        Outcome::Refused { reason } => format!("refused: {reason}"),
        Outcome::Paused { step } => format!("paused before {step}"),
    }
}
