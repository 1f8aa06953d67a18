//! `calico-migrate plan` on large sandboxes (100 nodes with 1,500 user namespaces, 700
//! nodes with 15,000) over HTTP, beside `kubectl get` of the same resources in the same
//! run. Prints wall time and peak RSS (from /usr/bin/time -f %M) of each.
//! Run: `cargo bench --bench plan` (PLAN_BENCH_SIZES=100x1500 for one size).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use calico_migrate::sandbox::scenario::{self, ScenarioConfig};
use calico_migrate::sandbox::{Sandbox, SandboxOptions};

const RUNS: usize = 3;

/// What `plan` LISTs, as kubectl resource names (all namespaces where plan reads all).
const KUBECTL_SETS: &[&[&str]] = &[
    &[
        "get",
        "nodes,namespaces,customresourcedefinitions",
        "-o",
        "json",
    ],
    &[
        "get",
        "networkpolicies.networking.k8s.io",
        "-A",
        "-o",
        "json",
    ],
    &["get", "secrets", "-A", "-l", "owner=helm", "-o", "json"],
    &[
        "get",
        "configmaps",
        "-A",
        "-l",
        "OWNER=TILLER",
        "-o",
        "json",
    ],
    &[
        "get",
        "networkpolicies.crd.projectcalico.org,globalnetworkpolicies.crd.projectcalico.org,globalnetworksets.crd.projectcalico.org,hostendpoints.crd.projectcalico.org,felixconfigurations.crd.projectcalico.org,ippools.crd.projectcalico.org",
        "-A",
        "-o",
        "json",
    ],
    &[
        "get",
        "daemonsets,deployments,poddisruptionbudgets,configmaps",
        "-n",
        "kube-system",
        "-o",
        "json",
    ],
    &[
        "get",
        "pods",
        "-n",
        "kube-system",
        "-l",
        "app.kubernetes.io/name=calico-node",
        "-o",
        "json",
    ],
];

/// Run a command under /usr/bin/time; (wall, peak RSS KiB, stdout bytes).
fn timed(cmd: &str, args: &[String]) -> anyhow::Result<(Duration, u64, usize)> {
    let start = Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("MAXRSS %M")
        .arg(cmd)
        .args(args)
        .output()?;
    let wall = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let rss = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("MAXRSS "))
        .filter_map(|v| v.trim().parse().ok())
        .next_back()
        .unwrap_or(0);
    if !matches!(out.status.code(), Some(0) | Some(3)) {
        anyhow::bail!("{cmd} failed: {stderr}");
    }
    Ok((wall, rss, out.stdout.len()))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// (nodes, namespaces) to measure; PLAN_BENCH_SIZES="100x1500,700x15000" by default.
fn sizes() -> Vec<(usize, usize)> {
    std::env::var("PLAN_BENCH_SIZES")
        .unwrap_or_else(|_| "100x1500,700x15000".into())
        .split(',')
        .filter_map(|s| {
            let (n, ns) = s.trim().split_once('x')?;
            Some((n.parse().ok()?, ns.parse().ok()?))
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    for (nodes, namespaces) in sizes() {
        one(nodes, namespaces)?;
    }
    Ok(())
}

fn one(nodes: usize, namespaces: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        // Ten pods a namespace, fewer where the scenario's pod limit requires.
        let pods_per_namespace = (scenario::MAX_PODS / namespaces.max(1)).clamp(1, 10);
        let cfg = ScenarioConfig {
            nodes,
            namespaces,
            pods_per_namespace,
            ..ScenarioConfig::default()
        };
        let objs = scenario::build(&cfg)?;
        let count = |kind: &str| objs.iter().filter(|o| o["kind"] == kind).count();
        println!(
            "scenario: {} nodes, {} namespaces, {} NetworkPolicies, {} pods, {} objects",
            count("Node"),
            count("Namespace"),
            count("NetworkPolicy"),
            count("Pod"),
            objs.len()
        );
        let sb = Sandbox::new(SandboxOptions::default());
        sb.load(objs).map_err(|e| anyhow::anyhow!("load: {e:?}"))?;
        let handle = sb.serve("127.0.0.1:0").await?;
        let dir = tempfile::tempdir()?;
        let kc = dir.path().join("kubeconfig");
        handle.write_kubeconfig(&kc)?;
        let manifest = dir.path().join("operator.yaml");
        // plan refuses a manifest with no object; one Namespace stands in for the
        // reviewed tigera-operator.yaml (the manifest is not what is measured).
        std::fs::write(
            &manifest,
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: tigera-operator\n",
        )?;
        let bin = env!("CARGO_BIN_EXE_calico-migrate").to_string();
        let kc_s = kc.to_string_lossy().to_string();
        let plan_args: Vec<String> = [
            "--kubeconfig",
            &kc_s,
            "--state-dir",
            &dir.path().join("state").to_string_lossy(),
            "-o",
            "json",
            "plan",
            "--operator-manifest",
            &manifest.to_string_lossy(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (mut plan_t, mut kubectl_t) = (Vec::new(), Vec::new());
        let (mut plan_rss, mut kubectl_rss) = (0u64, 0u64);
        for _ in 0..RUNS {
            let (bin2, args) = (bin.clone(), plan_args.clone());
            let (t, rss, bytes) = tokio::task::spawn_blocking(move || timed(&bin2, &args)).await??;
            plan_t.push(t);
            plan_rss = plan_rss.max(rss);
            if bytes == 0 {
                anyhow::bail!("plan printed nothing");
            }
            let kc2 = kc_s.clone();
            let (t, rss) = tokio::task::spawn_blocking(move || kubectl_all(&kc2)).await??;
            kubectl_t.push(t);
            kubectl_rss = kubectl_rss.max(rss);
        }
        let (p, k) = (median(plan_t), median(kubectl_t));
        println!(
            "calico-migrate plan (inventory + access review + plan + save): median {} ms over {RUNS} runs, peak RSS {} MiB",
            p.as_millis(),
            plan_rss / 1024
        );
        println!(
            "kubectl get of the same collections ({} invocations, sequential): median {} ms, peak RSS {} MiB",
            KUBECTL_SETS.len(),
            k.as_millis(),
            kubectl_rss / 1024
        );
        println!("ratio plan / kubectl: {:.2}", p.as_secs_f64() / k.as_secs_f64());
        handle.shutdown().await;
        Ok(())
    })
}

fn kubectl_all(kc: &str) -> anyhow::Result<(Duration, u64)> {
    let start = Instant::now();
    let mut rss = 0;
    for set in KUBECTL_SETS {
        let mut args: Vec<String> = vec!["--kubeconfig".into(), kc.into()];
        args.extend(set.iter().map(|s| s.to_string()));
        let (_, r, _) = timed(kubectl(), &args)?;
        rss = rss.max(r);
    }
    Ok((start.elapsed(), rss))
}

fn kubectl() -> &'static str {
    if Path::new("/usr/bin/kubectl").exists() {
        "/usr/bin/kubectl"
    } else {
        "kubectl"
    }
}
