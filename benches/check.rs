//! Figures for one `check` round against the sandbox (HTTP on loopback, workload
//! controllers, data plane): probe count and wall time for 10, 100 and 500 nodes, and
//! the ratio to the ideal (probes / concurrency x mean probe latency).
//! Run: `cargo bench --bench check` (CHECK_BENCH_NODES=10,100 to choose sizes).
//! Prints figures; asserts only that every round passed.

use std::time::{Duration, Instant};

use calico_migrate::checks::{Prober, RoundOptions};
use calico_migrate::sandbox::scenario::ScenarioConfig;
use calico_migrate::testkit::{Rig, RigOptions};

const CONCURRENCY: usize = 32;

async fn one(nodes: usize) -> anyhow::Result<()> {
    // A blocked probe waits 10% of agnhost's 1 s timeout.
    let rig = Rig::start_scenario(
        &ScenarioConfig {
            nodes,
            namespaces: 8,
            pods_per_namespace: 2,
            ..ScenarioConfig::default()
        },
        &RigOptions {
            time_scale: 100.0,
            probe_timeout_scale: 0.1,
            ..RigOptions::default()
        },
    )
    .await?;
    let opts = RoundOptions {
        concurrency: CONCURRENCY,
        ready_timeout: Duration::from_secs(600),
        ..RoundOptions::default()
    };
    let t = Instant::now();
    let prober = Prober::setup(&rig.client, &opts).await?;
    let setup = t.elapsed();
    let report = prober.round().await?;
    let t = Instant::now();
    prober.teardown().await?;
    let teardown = t.elapsed();
    anyhow::ensure!(
        report.passed,
        "round failed: {:?}",
        &report.failures[..report.failures.len().min(5)]
    );
    let mean_ms = report.records.iter().map(|r| r.millis as f64).sum::<f64>()
        / report.records.len().max(1) as f64;
    let ideal_ms = report.probes as f64 / CONCURRENCY as f64 * mean_ms;
    println!(
        "| {nodes} | {} | {:.1} | {:.2} | {:.1} | {:.1} | {:.2} | {:.1} |",
        report.probes,
        setup.as_secs_f64(),
        report.millis as f64 / 1000.0,
        mean_ms,
        ideal_ms / 1000.0,
        report.millis as f64 / ideal_ms.max(1.0),
        teardown.as_secs_f64(),
    );
    rig.shutdown().await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::var("CHECK_BENCH_NODES")
        .unwrap_or_else(|_| "10,100,500".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "| nodes | probes | setup (s) | round wall (s) | mean probe latency (ms) | ideal (s) | wall / ideal | teardown (s) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for n in sizes {
        rt.block_on(one(n))?;
    }
    Ok(())
}
