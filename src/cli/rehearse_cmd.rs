//! `calico-migrate rehearse`: the whole job against an embedded sandbox.

use std::process::ExitCode;

use super::output::print_json;
use super::{GlobalOpts, OutputFormat, RehearseArgs};
use crate::cluster::connect::connect;
use crate::cluster::objects::Objects;
use crate::engine::RetryPolicy;
use crate::rehearse::{RehearseOptions, from_cluster, rehearse};

pub async fn run(args: &RehearseArgs, g: &GlobalOpts) -> anyhow::Result<ExitCode> {
    let quiet = g.quiet || g.output == OutputFormat::Json;
    let progress = move |line: &str| {
        if !quiet {
            crate::progress::say(format_args!("rehearse: {line}"));
        }
    };
    let cluster = if args.from_cluster {
        let conn = connect(g.kubeconfig.as_deref(), g.context.as_deref()).await?;
        progress(&format!(
            "reading nodes, namespaces and policies of context {} (read only)",
            conn.context
        ));
        let objects = Objects::new(conn.client, RetryPolicy::default());
        let copy = from_cluster::read(&objects).await?;
        progress(&format!(
            "{} node(s), {} namespace(s), {} policy object(s) copied",
            copy.nodes.len(),
            copy.namespaces.len(),
            copy.policies.len()
        ));
        Some(copy)
    } else {
        None
    };
    let opts = RehearseOptions {
        nodes: args.nodes as usize,
        fargate_nodes: args.fargate_nodes as usize,
        namespaces: args.namespaces as usize,
        seed: args.seed,
        faults: args.faults.clone(),
        time_scale: args.time_scale,
        pause_seconds: args.pause_seconds,
        kubernetes_version: args.kubernetes_version,
        cluster,
    };
    let report = rehearse(&opts, &progress).await?;
    match g.output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Markdown => print!("{}", report.markdown()),
        OutputFormat::Text | OutputFormat::Junit => print!("{}", report.text()),
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
