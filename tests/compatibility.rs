//! The outcome table of docs/compatibility.md is made here, not written by hand: for
//! each published aws-calico chart, each Kubernetes minor of interest and each real
//! operator manifest (../shared/real), what `calico-migrate plan` says, run as a user
//! runs it against a sandbox serving that minor and seeded with that chart's release.
//!
//! The test fails when the table in the document differs from what plan says now;
//! `CALICO_MIGRATE_UPDATE_DOCS=1 cargo test --test integration compatibility::` writes
//! the table instead.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result};
use assert_cmd::Command;
use calico_migrate::sandbox::scenario::{self, ChartGeneration, ScenarioConfig};
use calico_migrate::sandbox::{KubernetesVersion, Sandbox, SandboxOptions};
use serde_json::Value;

use crate::support::real;

const BEGIN: &str = "<!-- table made by tests/compatibility.rs: begin -->";
const END: &str = "<!-- table made by tests/compatibility.rs: end -->";

const CHARTS: [(ChartGeneration, &str); 2] = [
    (ChartGeneration::V0_3_10, "aws-calico 0.3.10"),
    (ChartGeneration::V0_3_11, "aws-calico 0.3.11"),
];
/// The oldest minor served, the last with the policy/v1beta1 APIs, the first without
/// them, a middle one and the newest.
const MINORS: [u32; 5] = [21, 24, 25, 29, 34];
const MANIFESTS: [&str; 2] = [
    "calico-v3.19.1-tigera-operator.rendered.yaml",
    "calico-v3.30.3-operator-crds-and-operator.yaml",
];

/// One row: what plan says for one (chart, minor, manifest).
struct Row {
    chart: &'static str,
    minor: u32,
    manifest: &'static str,
    profile: String,
    outcome: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compatibility_table_is_what_plan_says() -> Result<()> {
    let mut rows = Vec::new();
    for (chart, chart_name) in CHARTS {
        for minor in MINORS {
            let served = Served::start(chart, KubernetesVersion::new(minor)?).await?;
            for manifest in MANIFESTS {
                let (profile, outcome) = served.plan(&real(manifest)).await?;
                rows.push(Row {
                    chart: chart_name,
                    minor,
                    manifest,
                    profile,
                    outcome,
                });
            }
        }
    }
    let table = render(&rows);
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/compatibility.md");
    let doc = std::fs::read_to_string(&doc_path)?;
    let (before, rest) = doc
        .split_once(BEGIN)
        .context("docs/compatibility.md has no table marker")?;
    let (current, after) = rest
        .split_once(END)
        .context("docs/compatibility.md has no end marker")?;
    let made = format!("\n{table}");
    if std::env::var_os("CALICO_MIGRATE_UPDATE_DOCS").is_some() {
        std::fs::write(&doc_path, format!("{before}{BEGIN}{made}{END}{after}"))?;
        return Ok(());
    }
    assert_eq!(
        current, made,
        "docs/compatibility.md's table is not what plan says now; \
         `CALICO_MIGRATE_UPDATE_DOCS=1 cargo test --test integration compatibility::` writes it"
    );
    Ok(())
}

/// The rows as a Markdown table.
fn render(rows: &[Row]) -> String {
    let mut t = String::from(
        "| Chart | Kubernetes | Operator manifest | Path plan takes | What plan says |\n|---|---|---|---|---|\n",
    );
    for r in rows {
        t.push_str(&format!(
            "| {} | 1.{} | `{}` | {} | {} |\n",
            r.chart, r.minor, r.manifest, r.profile, r.outcome
        ));
    }
    t
}

/// A sandbox serving one minor, seeded with one chart's release, over HTTP.
struct Served {
    _sb: Sandbox,
    _handle: calico_migrate::sandbox::serve::ServeHandle,
    dir: tempfile::TempDir,
}

impl Served {
    async fn start(chart: ChartGeneration, kv: KubernetesVersion) -> Result<Served> {
        let sb = Sandbox::new(SandboxOptions {
            kubernetes_version: kv,
            ..SandboxOptions::default()
        });
        sb.load(scenario::build(&ScenarioConfig {
            nodes: 3,
            namespaces: 4,
            pods_per_namespace: 1,
            chart,
            ..ScenarioConfig::default()
        })?)?;
        let handle = sb.serve("127.0.0.1:0").await?;
        let dir = tempfile::tempdir()?;
        handle.write_kubeconfig(&dir.path().join("kubeconfig"))?;
        Ok(Served {
            _sb: sb,
            _handle: handle,
            dir,
        })
    }

    /// `plan --operator-manifest MANIFEST` (with the v3.30.3 policy-only manifest the
    /// current path also takes): the profile it picked and its outcome in words.
    async fn plan(&self, manifest: &Path) -> Result<(String, String)> {
        let kc = self.dir.path().join("kubeconfig");
        let state: PathBuf = tempfile::tempdir_in(self.dir.path())?.keep();
        let manifest = manifest.to_path_buf();
        let out = tokio::task::spawn_blocking(move || {
            Command::cargo_bin("calico-migrate")?
                .env_remove("KUBECONFIG")
                .arg("--kubeconfig")
                .arg(&kc)
                .arg("--state-dir")
                .arg(&state)
                .args(["-o", "json", "plan", "--operator-manifest"])
                .arg(&manifest)
                .arg("--calico-manifest")
                .arg(real("calico-v3.30.3-policy-only.yaml"))
                .timeout(Duration::from_secs(120))
                .output()
                .context("running plan")
        })
        .await??;
        let said = || {
            format!(
                "stdout {} stderr {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        };
        let p: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("plan wrote no JSON plan: {}", said()))?;
        // Findings of one kind, those a step fixes (`fixed_by`) or the others.
        // (A code found on several objects is named once.)
        let codes = |k: &str, fixed: bool| -> Vec<String> {
            let mut out: Vec<String> = Vec::new();
            for f in p[k].as_array().into_iter().flatten() {
                let code = f["code"].as_str().map(|c| format!("`{c}`"));
                if let Some(c) = code.filter(|c| !out.contains(c))
                    && f["fixed_by"].is_string() == fixed
                {
                    out.push(c);
                }
            }
            out
        };
        let (blockers, by_steps, warnings) = (
            codes("blockers", false),
            codes("blockers", true),
            codes("warnings", false),
        );
        let code = out.status.code();
        let mut outcome = if blockers.is_empty() {
            anyhow::ensure!(code == Some(0), "no blocker but exit {code:?}: {}", said());
            let steps = p["steps"].as_array().map_or(0, Vec::len);
            format!("ready: {steps} steps")
        } else {
            anyhow::ensure!(code == Some(3), "blockers but exit {code:?}: {}", said());
            format!("blocked (exit 3): {}", blockers.join(", "))
        };
        if !by_steps.is_empty() {
            outcome.push_str(&format!("; fixed by steps: {}", by_steps.join(", ")));
        }
        if !warnings.is_empty() {
            outcome.push_str(&format!("; warnings: {}", warnings.join(", ")));
        }
        let profile = p["profile"]["name"]
            .as_str()
            .or_else(|| p["profile"].as_str())
            .map_or_else(|| "none".to_string(), |n| format!("`{n}`"));
        Ok((profile, outcome))
    }
}
