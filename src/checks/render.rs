//! Round reports as text, JSON (the CLI contract) and JUnit XML (pure).

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::outcome::RoundReport;

/// The CLI's JSON document: `{"passed", "probes", "nodes", "failures": [{"from", "to",
/// "port", "protocol", "expected", "observed", "class", "node"}]}` plus details.
pub fn json(report: &RoundReport, with_records: bool) -> Value {
    let mut v = json!({
        "passed": report.passed,
        "probes": report.probes,
        "nodes": report.nodes,
        "failures": report.failures,
        "failed_nodes": report.failed_nodes,
        "baseline_changes": report.baseline_changes,
        "millis": report.millis,
    });
    if with_records {
        v["records"] = json!(report.records);
    }
    v
}

fn label<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A short human summary: verdict, counts, then one line per failure.
pub fn text(report: &RoundReport) -> String {
    let mut out = String::new();
    let verdict = if report.passed { "PASS" } else { "FAIL" };
    let _ = writeln!(
        out,
        "{verdict}: {} probes on {} nodes in {} ms, {} failed",
        report.probes,
        report.nodes,
        report.millis,
        report.failures.len()
    );
    if !report.failed_nodes.is_empty() {
        let _ = writeln!(out, "nodes failing: {}", report.failed_nodes.join(", "));
    }
    for f in &report.failures {
        let _ = writeln!(
            out,
            "  [{}] node {}: {} -> {}:{}/{} expected {}, observed {}{}",
            label(&f.class),
            f.node,
            f.from,
            f.to,
            f.port,
            f.protocol,
            label(&f.expected),
            label(&f.observed),
            if f.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", f.detail)
            }
        );
    }
    for c in &report.baseline_changes {
        let _ = writeln!(
            out,
            "  baseline changed: {} -> {}:{} was {}, now {}",
            c.from,
            c.to,
            c.port,
            label(&c.baseline),
            label(&c.observed)
        );
    }
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// JUnit XML: one test suite per node, one test case per probe deciding on that node.
pub fn junit(report: &RoundReport) -> String {
    let mut by_node: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    let mut failures_per_node: std::collections::BTreeMap<&str, usize> = Default::default();
    for r in &report.records {
        let name = format!(
            "{} -> {}:{}/{}",
            r.probe.from, r.probe.to, r.probe.port, r.probe.protocol
        );
        let mut case = format!(
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\">",
            xml_escape(&r.probe.node),
            xml_escape(&name),
            r.millis as f64 / 1000.0
        );
        if let Some(class) = super::outcome::judge(&r.probe, r.observed) {
            *failures_per_node.entry(&r.probe.node).or_default() += 1;
            let _ = write!(
                case,
                "<failure type=\"{}\" message=\"expected {}, observed {}\">{}</failure>",
                label(&class),
                label(&r.probe.expected),
                label(&r.observed),
                xml_escape(&r.detail)
            );
        }
        case.push_str("</testcase>");
        by_node.entry(&r.probe.node).or_default().push(case);
    }
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"calico-migrate check\" tests=\"{}\" failures=\"{}\">",
        report.records.len(),
        report.failures.len()
    );
    for (node, cases) in by_node {
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\">",
            xml_escape(node),
            cases.len(),
            failures_per_node.get(node).copied().unwrap_or(0)
        );
        for c in cases {
            let _ = writeln!(out, "{c}");
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::outcome::{ProbeRecord, ResultClass, compare};
    use crate::checks::plan::{Expected, Probe, ProbeKind, RoundPlan};

    fn report(observed: ResultClass) -> RoundReport {
        let probe = Probe {
            from: "a/c".into(),
            to: "b/<s>".into(),
            target: "10.0.0.1:8080".into(),
            port: 8080,
            protocol: "TCP".into(),
            kind: ProbeKind::CrossNamespace,
            expected: Expected::Blocked,
            node: "n1".into(),
            src_node: "n0".into(),
            dst_node: Some("n1".into()),
            external: false,
        };
        let plan = RoundPlan {
            probes: vec![probe.clone()],
            nodes: vec!["n0".into(), "n1".into()],
            unplanned: vec![],
        };
        compare(
            &plan,
            vec![ProbeRecord {
                probe,
                observed,
                detail: String::new(),
                attempts: 1,
                millis: 3,
            }],
            10,
        )
    }

    #[test]
    fn json_follows_the_contract() {
        let v = json(&report(ResultClass::Allowed), false);
        assert_eq!(v["passed"], false);
        assert_eq!(v["probes"], 1);
        assert_eq!(v["nodes"], 2);
        let f = &v["failures"][0];
        for k in [
            "from", "to", "port", "protocol", "expected", "observed", "class", "node",
        ] {
            assert!(f.get(k).is_some(), "{k}");
        }
        assert_eq!(f["expected"], "blocked");
        assert_eq!(f["observed"], "allowed");
        assert_eq!(f["class"], "not_enforced");
        assert_eq!(f["node"], "n1");
        assert!(v.get("records").is_none());
    }

    #[test]
    fn text_and_junit_name_node_and_pair() {
        let r = report(ResultClass::Allowed);
        let t = text(&r);
        assert!(t.starts_with("FAIL"));
        assert!(t.contains("node n1: a/c -> b/<s>:8080/TCP expected blocked, observed allowed"));
        let x = junit(&r);
        assert!(x.contains("<testsuite name=\"n1\" tests=\"1\" failures=\"1\">"));
        assert!(x.contains("b/&lt;s&gt;"));
        assert!(junit(&report(ResultClass::Blocked)).contains("failures=\"0\""));
        assert!(text(&report(ResultClass::Blocked)).starts_with("PASS"));
    }
}
