//! `calico-migrate rehearse`: the whole job against an embedded sandbox.

use std::process::ExitCode;

use super::output::print_json;
use super::{GlobalOpts, OutputFormat, RehearseArgs};
use crate::rehearse::{RehearseOptions, rehearse};

pub async fn run(args: &RehearseArgs, g: &GlobalOpts) -> anyhow::Result<ExitCode> {
    let opts = RehearseOptions {
        nodes: args.nodes as usize,
        namespaces: args.namespaces as usize,
        seed: args.seed,
        faults: args.faults.clone(),
        time_scale: args.time_scale,
        ..RehearseOptions::default()
    };
    let quiet = g.quiet || g.output == OutputFormat::Json;
    let progress = move |line: &str| {
        if !quiet {
            eprintln!("rehearse: {line}");
        }
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
