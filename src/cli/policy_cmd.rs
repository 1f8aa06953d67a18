//! `calico-migrate policy`: expected reachability, policy-set diff, explain.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use super::{GlobalOpts, OutputFormat, output::print_json};
use crate::policy::{
    Caveat, CidrVerdict, ClusterModel, Peer, PolicyIndex, Protocol, Reason, SideDecision, Verdict,
    diff,
};

/// Compute what the policies allow (matrix), compare two policy sets (diff),
/// or explain one verdict.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Expected reachability between all pods (and external addresses) on one port.
    #[command(
        after_help = "Example:\n  calico-migrate policy matrix -f cluster.yaml --port 80 --external 169.254.169.254 -o json"
    )]
    Matrix(MatrixArgs),
    /// Compare two policy sets over the same pods; exit 0 when equivalent, 1 when not.
    #[command(
        after_help = "Example:\n  calico-migrate policy diff -f pods.yaml --before old.yaml --after new.yaml"
    )]
    Diff(DiffArgs),
    /// Show which policy and rule decide one connection, on the egress and ingress side.
    #[command(
        after_help = "Examples:\n  calico-migrate policy explain -f cluster.yaml --from x/a --to y/b --port 80\n  \
                      calico-migrate policy explain -f cluster.yaml --from x/a --to 10.0.0.0/16 --port 443\n  \
                      calico-migrate policy explain -f cluster.yaml --from node:ip-10-0-1-5 --to x/a --port 8080\n\n\
                      A node's traffic to a pod on that node is never policed by Calico; a pod's\n\
                      traffic to its own node meets the pod's egress policy. Node addresses come\n\
                      from Node objects (status.addresses) or hostNetwork pods in the input."
    )]
    Explain(ExplainArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProtocolArg {
    #[value(name = "TCP", alias = "tcp")]
    Tcp,
    #[value(name = "UDP", alias = "udp")]
    Udp,
    #[value(name = "SCTP", alias = "sctp")]
    Sctp,
}

impl From<ProtocolArg> for Protocol {
    fn from(p: ProtocolArg) -> Protocol {
        match p {
            ProtocolArg::Tcp => Protocol::Tcp,
            ProtocolArg::Udp => Protocol::Udp,
            ProtocolArg::Sctp => Protocol::Sctp,
        }
    }
}

#[derive(Debug, Args)]
pub struct MatrixArgs {
    /// Multi-document YAML with Namespaces, Pods and policies (repeatable).
    #[arg(short = 'f', long = "filename", required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Destination port (repeatable: one matrix per port).
    #[arg(long, default_value = "80", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Vec<u16>,
    #[arg(long, value_enum, default_value = "TCP")]
    pub protocol: ProtocolArg,
    /// External destination address (repeatable), e.g. 169.254.169.254.
    #[arg(long, value_name = "IP")]
    pub external: Vec<String>,
    /// Only these pods (`namespace/name`, repeatable) instead of all.
    #[arg(long, value_name = "NS/NAME")]
    pub pod: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Files holding the first policy set.
    #[arg(long, required = true, num_args = 1.., value_name = "FILE")]
    pub before: Vec<PathBuf>,
    /// Files holding the second policy set.
    #[arg(long, required = true, num_args = 1.., value_name = "FILE")]
    pub after: Vec<PathBuf>,
    /// Files read into both sets (Namespaces and Pods, usually).
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub common: Vec<PathBuf>,
    /// Print at most this many differing cells in text output.
    #[arg(long, default_value_t = 200)]
    pub limit: usize,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[arg(short = 'f', long = "filename", required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Source: a pod (`namespace/name`), a node (`node:NAME`) or an IP address.
    #[arg(long, value_name = "NS/NAME|node:NAME|IP")]
    pub from: String,
    /// Destination: a pod, a node, an IP address, or (from a pod) a CIDR, whose
    /// addresses are listed in ranges of one verdict.
    #[arg(long, value_name = "NS/NAME|node:NAME|IP|CIDR")]
    pub to: String,
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    #[arg(long, value_enum, default_value = "TCP")]
    pub protocol: ProtocolArg,
}

pub fn run(args: &PolicyArgs, global: &GlobalOpts) -> anyhow::Result<ExitCode> {
    match &args.command {
        PolicyCommand::Matrix(a) => matrix(a, global.output),
        PolicyCommand::Diff(a) => run_diff(a, global.output),
        PolicyCommand::Explain(a) => explain(a, global.output),
    }
}

fn load(files: &[PathBuf]) -> anyhow::Result<PolicyIndex> {
    let mut model = ClusterModel::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        model.add_yaml(&text, &f.display().to_string())?;
    }
    Ok(PolicyIndex::build(model)?)
}

fn pod(index: &PolicyIndex, key: &str) -> anyhow::Result<usize> {
    index
        .pod_index(key)
        .with_context(|| format!("no pod {key:?} in the input; name pods as namespace/name"))
}

fn matrix(a: &MatrixArgs, output: OutputFormat) -> anyhow::Result<ExitCode> {
    let index = load(&a.files)?;
    let externals = a
        .external
        .iter()
        .map(|s| {
            s.parse::<IpAddr>()
                .map(|ip| (s.clone(), ip))
                .with_context(|| format!("--external {s:?} is not an IP address"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let chosen = if a.pod.is_empty() {
        None
    } else {
        Some(
            a.pod
                .iter()
                .map(|k| pod(&index, k))
                .collect::<anyhow::Result<Vec<_>>>()?,
        )
    };
    let matrices: Vec<_> = a
        .port
        .iter()
        .map(|&p| index.matrix(chosen.as_deref(), &externals, p, a.protocol.into()))
        .collect();
    match output {
        OutputFormat::Json => {
            let docs: Vec<_> = matrices.iter().map(|m| m.to_json(&index)).collect();
            if docs.len() == 1 {
                print_json(&docs[0])?
            } else {
                print_json(&docs)?
            }
        }
        OutputFormat::Text | OutputFormat::Markdown => {
            for m in &matrices {
                let text = m.to_text(&index);
                if output == OutputFormat::Markdown {
                    println!("```\n{text}```");
                } else {
                    print!("{text}");
                }
            }
        }
        OutputFormat::Junit => {
            bail!("-o junit is for `check`; use -o text or -o json with `policy matrix`")
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_diff(a: &DiffArgs, output: OutputFormat) -> anyhow::Result<ExitCode> {
    let before: Vec<PathBuf> = a.common.iter().chain(&a.before).cloned().collect();
    let after: Vec<PathBuf> = a.common.iter().chain(&a.after).cloned().collect();
    let (b, af) = (load(&before)?, load(&after)?);
    let d = diff(&b, &af)?;
    match output {
        OutputFormat::Json => print_json(&json!({
            "equivalent": d.equivalent(),
            "added": d.added, "removed": d.removed, "changed": d.changed,
            "cells": d.cells,
            "ports_probed": d.ports_probed, "externals_probed": d.externals_probed,
        }))?,
        OutputFormat::Junit => {
            bail!("-o junit is for `check`; use -o text or -o json with `policy diff`")
        }
        OutputFormat::Text | OutputFormat::Markdown => {
            for (label, list) in [
                ("added", &d.added),
                ("removed", &d.removed),
                ("changed", &d.changed),
            ] {
                for k in list {
                    println!("{label}: {k}");
                }
            }
            if d.equivalent() {
                println!(
                    "equivalent: every pod pair and external address allows the same traffic \
                     ({} ports x 3 protocols, {} address ranges checked)",
                    d.ports_probed, d.externals_probed
                );
            } else {
                println!("NOT equivalent: {} differing cells", d.cells.len());
                for c in d.cells.iter().take(a.limit) {
                    let word = |x: bool| if x { "allowed" } else { "blocked" };
                    println!(
                        "  {} -> {} {}/{}: before {}, after {} ({} pod pairs like this)",
                        c.src,
                        c.dst,
                        c.port,
                        c.protocol,
                        word(c.before),
                        word(c.after),
                        c.pod_pairs
                    );
                }
                if d.cells.len() > a.limit {
                    println!(
                        "  ... {} more (raise --limit or use -o json)",
                        d.cells.len() - a.limit
                    );
                }
            }
        }
    }
    Ok(if d.equivalent() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `namespace/name`, `node:NAME` or an IP address.
fn peer(index: &PolicyIndex, s: &str) -> anyhow::Result<Peer> {
    if let Some(name) = s.strip_prefix("node:") {
        return index
            .hosts()
            .node_index(name)
            .map(Peer::Node)
            .with_context(|| {
                format!(
                    "no node {name:?} in the input; nodes come from Node objects and from pods' \
                 spec.nodeName"
                )
            });
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Peer::Address(ip));
    }
    pod(index, s).map(Peer::Pod)
}

fn explain(a: &ExplainArgs, output: OutputFormat) -> anyhow::Result<ExitCode> {
    let index = load(&a.files)?;
    let protocol: Protocol = a.protocol.into();
    let src = peer(&index, &a.from)?;
    if let Ok(net) = a.to.parse::<ipnet::IpNet>() {
        let Peer::Pod(src) = src else {
            bail!(
                "--to {} is a CIDR: name a pod as --from (namespace/name)",
                a.to
            )
        };
        let v = index.verdict_cidr(src, net, a.port, protocol);
        return explain_output(a, output, protocol, "cidr", &v, || {
            cidr_text(a, protocol, &v)
        });
    }
    let dst = peer(&index, &a.to)?;
    let verdict = index
        .verdict_between(src, dst, a.port, protocol)
        .with_context(|| format!("cannot judge {} -> {}", a.from, a.to))?;
    explain_output(a, output, protocol, "verdict", &verdict, || {
        explain_text(a, protocol, &verdict)
    })
}

fn explain_output(
    a: &ExplainArgs,
    output: OutputFormat,
    protocol: Protocol,
    field: &str,
    value: &impl serde::Serialize,
    text: impl FnOnce() -> String,
) -> anyhow::Result<ExitCode> {
    match output {
        OutputFormat::Json => print_json(&json!({
            "from": a.from, "to": a.to, "port": a.port, "protocol": protocol.to_string(), field: value,
        }))?,
        OutputFormat::Junit => {
            bail!("-o junit is for `check`; use -o text or -o json with `policy explain`")
        }
        OutputFormat::Text | OutputFormat::Markdown => print!("{}", text()),
    }
    Ok(ExitCode::SUCCESS)
}

fn cidr_text(a: &ExplainArgs, protocol: Protocol, v: &CidrVerdict) -> String {
    let mut out = format!(
        "{} -> {} {}/{}: {}\n",
        a.from,
        v.net,
        a.port,
        protocol,
        match v.allowed {
            crate::policy::Coverage::All => "ALLOWED to every address",
            crate::policy::Coverage::None => "BLOCKED to every address",
            crate::policy::Coverage::Partly => "allowed to some addresses only",
        }
    );
    for r in &v.ranges {
        let span = if r.first == r.last {
            r.first.to_string()
        } else {
            format!("{} - {}", r.first, r.last)
        };
        let who = r
            .pod
            .as_ref()
            .map_or(String::new(), |p| format!(" (pod {p})"));
        let decided = match (&r.verdict.egress.reason, &r.verdict.ingress) {
            (_, Some(ing)) if r.verdict.egress.allowed => format!("ingress: {}", ing.reason),
            (eg, _) => format!("egress: {eg}"),
        };
        out.push_str(&format!(
            "  {span}{who}: {}; {decided}\n",
            if r.verdict.allowed {
                "allowed"
            } else {
                "blocked"
            }
        ));
    }
    out
}

fn explain_text(a: &ExplainArgs, protocol: Protocol, v: &Verdict) -> String {
    let mut out = format!(
        "{} -> {} {}/{}: {}\n",
        a.from,
        a.to,
        a.port,
        protocol,
        if v.allowed { "ALLOWED" } else { "BLOCKED" }
    );
    let side = |name: &str, who: &str, s: &SideDecision| {
        let mut t = format!(
            "  {name} of {who}: {}\n",
            if s.allowed { "allowed" } else { "blocked" }
        );
        t.push_str(&format!("    {}\n", s.reason));
        for r in &s.logged {
            t.push_str(&format!("    matched on the way: {r}\n"));
        }
        t
    };
    out.push_str(&side("egress", &a.from, &v.egress));
    match &v.ingress {
        Some(s) => out.push_str(&side("ingress", &a.to, s)),
        None => out.push_str("  ingress: not a pod, no ingress policy evaluated\n"),
    }
    for c in &v.caveats {
        let note = match c {
            Caveat::OwnNode => "a pod and its own node: Kubernetes always allows this traffic; \
                                the answer above is Calico's (the node reaches its pods without \
                                policy, the pod reaches its node through its egress policy)"
                .to_string(),
            c => format!(
                "implementation-defined case ({c:?}); the answer above is what the policies say"
            ),
        };
        out.push_str(&format!("  note: {note}\n"));
    }
    if matches!(v.egress.reason, Reason::NoPolicy)
        && v.ingress
            .as_ref()
            .is_some_and(|s| matches!(s.reason, Reason::NoPolicy))
    {
        out.push_str("  (no policy selects either pod)\n");
    }
    out
}
