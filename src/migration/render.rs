//! The plan as text (for a change ticket) and Markdown.

use std::fmt::Write;

use super::plan::Plan;
use super::rules::Finding;

fn opt(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

pub fn text(p: &Plan) -> String {
    let mut o = String::new();
    let s = &p.source;
    let i = &p.inventory;
    let _ = writeln!(o, "calico-migrate plan (profile {})", p.profile);
    if let Some(why) = &p.profile_reason {
        let _ = writeln!(o, "{why}");
    }
    let _ = writeln!(o, "fingerprint {}", p.fingerprint);
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "Source: chart {} {} (release {}/{}), Calico {}, install {:?}",
        opt(&s.chart),
        opt(&s.chart_version),
        opt(&s.namespace),
        opt(&s.release),
        opt(&s.calico_version),
        s.generation
    );
    let _ = writeln!(
        o,
        "Cluster: Kubernetes {}, {} nodes ({} not ready, {} Fargate), {} namespaces, {} Calico CRDs",
        i.kubernetes_version,
        i.nodes,
        i.nodes_not_ready.len(),
        i.fargate_nodes.len(),
        i.namespaces,
        i.crds
    );
    let _ = writeln!(
        o,
        "Policies: {} NetworkPolicies, {} Calico NetworkPolicies, {} GlobalNetworkPolicies, {} GlobalNetworkSets, {} NetworkSets, {} HostEndpoints",
        i.network_policies,
        i.calico_network_policies,
        i.global_network_policies,
        i.global_network_sets,
        i.network_sets,
        i.host_endpoints
    );
    findings_text(&mut o, "BLOCKERS", &p.blockers);
    findings_text(&mut o, "WARNINGS", &p.warnings);
    let _ = writeln!(o, "\nSTEPS ({})", p.steps.len());
    for (n, st) in p.steps.iter().enumerate() {
        let _ = writeln!(o, "\n{}. [{}] {}", n + 1, st.id, st.title);
        if let Some(g) = &st.gate {
            let _ = writeln!(o, "   GATE: {g}");
        }
        let _ = writeln!(o, "   changes:");
        for c in &st.changes {
            let _ = writeln!(
                o,
                "     - {} {}: {}",
                c.action,
                c.object,
                c.fields.join("; ")
            );
        }
        for (label, list) in [
            ("checks before", &st.checks.before),
            ("checks after", &st.checks.after),
            ("rollback", &st.rollback),
        ] {
            let _ = writeln!(o, "   {label}:");
            for l in list {
                let _ = writeln!(o, "     - {l}");
            }
        }
    }
    let _ = writeln!(
        o,
        "\n{}",
        if p.ready() {
            "Ready to apply: every blocker is fixed by a step of this plan."
        } else if p.steps.is_empty() {
            "Nothing to apply."
        } else {
            "NOT ready to apply: resolve the blockers that no step fixes, then plan again."
        }
    );
    o
}

fn findings_text(o: &mut String, title: &str, fs: &[Finding]) {
    let _ = writeln!(o, "\n{title} ({})", fs.len());
    for f in fs {
        let by = f
            .fixed_by
            .map(|id| format!(" (step {id})"))
            .unwrap_or_default();
        let _ = writeln!(o, "  [{}] {}\n      fix{by}: {}", f.code, f.message, f.fix);
    }
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

pub fn markdown(p: &Plan) -> String {
    let mut o = String::new();
    let s = &p.source;
    let i = &p.inventory;
    let _ = writeln!(o, "# Calico migration plan\n");
    let _ = writeln!(
        o,
        "Profile `{}`, fingerprint `{}`\n",
        p.profile, p.fingerprint
    );
    if let Some(why) = &p.profile_reason {
        let _ = writeln!(o, "{why}.\n");
    }
    let _ = writeln!(o, "## Source\n");
    let _ = writeln!(
        o,
        "| Chart | Version | Release | Calico | Install |\n|---|---|---|---|---|"
    );
    let _ = writeln!(
        o,
        "| {} | {} | {}/{} | {} | {:?} |\n",
        opt(&s.chart),
        opt(&s.chart_version),
        opt(&s.namespace),
        opt(&s.release),
        opt(&s.calico_version),
        s.generation
    );
    let _ = writeln!(o, "## Inventory\n");
    let _ = writeln!(o, "| What | Count |\n|---|---|");
    for (k, v) in [
        ("Nodes", i.nodes),
        ("Nodes not ready", i.nodes_not_ready.len()),
        ("Fargate nodes", i.fargate_nodes.len()),
        ("Namespaces", i.namespaces),
        ("NetworkPolicies", i.network_policies),
        ("Calico NetworkPolicies", i.calico_network_policies),
        ("GlobalNetworkPolicies", i.global_network_policies),
        ("GlobalNetworkSets", i.global_network_sets),
        ("HostEndpoints", i.host_endpoints),
        ("Calico CRDs", i.crds),
    ] {
        let _ = writeln!(o, "| {k} | {v} |");
    }
    for (title, fs) in [("Blockers", &p.blockers), ("Warnings", &p.warnings)] {
        let _ = writeln!(o, "\n## {title} ({})\n", fs.len());
        if !fs.is_empty() {
            let _ = writeln!(o, "| Code | Finding | Fix |\n|---|---|---|");
            for f in fs.iter() {
                let by = f
                    .fixed_by
                    .map(|id| format!(" (step `{id}`)"))
                    .unwrap_or_default();
                let _ = writeln!(
                    o,
                    "| `{}` | {} | {}{by} |",
                    f.code,
                    cell(&f.message),
                    cell(&f.fix)
                );
            }
        }
    }
    let _ = writeln!(o, "\n## Steps\n");
    for (n, st) in p.steps.iter().enumerate() {
        let _ = writeln!(o, "### {}. `{}` {}\n", n + 1, st.id, st.title);
        if let Some(g) = &st.gate {
            let _ = writeln!(o, "> **Gate:** {g}\n");
        }
        let _ = writeln!(o, "| Action | Object | Fields |\n|---|---|---|");
        for c in &st.changes {
            let _ = writeln!(
                o,
                "| {} | {} | {} |",
                c.action,
                cell(&c.object),
                cell(&c.fields.join("; "))
            );
        }
        for (label, list) in [
            ("Checks before", &st.checks.before),
            ("Checks after", &st.checks.after),
            ("Rollback", &st.rollback),
        ] {
            let _ = writeln!(o, "\n**{label}**\n");
            for l in list {
                let _ = writeln!(o, "- {l}");
            }
        }
        let _ = writeln!(o);
    }
    o
}
