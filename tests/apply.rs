//! apply and rollback against the sandbox through the real binary: refusals that
//! change nothing, a full migration with no lapse, rollback from every step back to
//! the baseline, the Lease, and a SIGKILL campaign.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use calico_migrate::cluster::lease::{LEASE_NAME, LEASE_NAMESPACE};
use calico_migrate::engine::Journal;
use calico_migrate::sandbox::dataplane::DataPlaneFaults;
use futures::StreamExt;
use serde_json::{Value, json};

fn cli(env: &support::Env, kubeconfig: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_calico-migrate"));
    c.arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--state-dir")
        .arg(env.state_dir())
        .arg("--no-progress")
        .env_remove("KUBECONFIG")
        .env_remove("CALICO_MIGRATE_STATE_DIR")
        .stdin(Stdio::null());
    c
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A served sandbox with a kubeconfig for it, a saved plan and the pinned manifest.
async fn ready(nodes: usize) -> Result<(support::Env, PathBuf)> {
    let env = support::env(nodes).await?;
    let kc = env.state_dir().join("kubeconfig");
    env.server.write_kubeconfig(&kc)?;
    support::plan(&env).await?;
    Ok((env, kc))
}

fn step_ids(env: &support::Env) -> Result<Vec<String>> {
    let saved: Value = serde_json::from_slice(&std::fs::read(env.state_dir().join("plan.json"))?)?;
    Ok(saved["plan"]["steps"]
        .as_array()
        .context("steps")?
        .iter()
        .filter_map(|s| s["id"].as_str().map(str::to_string))
        .collect())
}

async fn no_lapse(env: &support::Env) -> Result<()> {
    let iv = env.dp.intervals().await;
    anyhow::ensure!(iv.is_empty(), "enforcement diverged: {iv:?}");
    Ok(())
}

/// `rollback --yes` succeeds, the cluster equals `before` object for object, and the
/// monitor saw no divergence.
async fn rolled_back_to(
    env: &support::Env,
    kc: &Path,
    before: &std::collections::BTreeMap<String, Value>,
) -> Result<()> {
    let o = run(cli(env, kc).args(["rollback", "--yes", "--sandbox-time-scale", "100"]))?;
    assert_eq!(o.status.code(), Some(0), "rollback: {}", text(&o));
    let diff: Vec<String> = support::differences(before, &support::snapshot(&env.sb)?);
    assert!(diff.is_empty(), "after rollback: {diff:?}");
    no_lapse(env).await
}

/// Run a command; with CALICO_MIGRATE_TEST_TRACE set, print what it said (to read a
/// failure against the sandbox monitor's timestamps).
fn run(c: &mut Command) -> Result<Output> {
    let o = c.output()?;
    if std::env::var_os("CALICO_MIGRATE_TEST_TRACE").is_some() {
        eprintln!("{c:?}\n{}", text(&o));
    }
    Ok(o)
}

/// `plan -o json` of the current path: the real operator manifest and `calico_manifest`.
fn plan_current_path(env: &support::Env, kc: &Path, calico_manifest: &Path) -> Result<Value> {
    let o = run(cli(env, kc)
        .args(["plan", "-o", "json", "--operator-manifest"])
        .arg(support::real(
            "calico-v3.30.3-operator-crds-and-operator.yaml",
        ))
        .arg("--calico-manifest")
        .arg(calico_manifest))?;
    assert_eq!(o.status.code(), Some(0), "plan: {}", text(&o));
    Ok(serde_json::from_slice(&o.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_change_nothing() -> Result<()> {
    let env = support::env(2).await?;
    let kc = env.state_dir().join("kubeconfig");
    env.server.write_kubeconfig(&kc)?;
    let before = support::snapshot(&env.sb)?;

    // No plan yet.
    let o = run(cli(&env, &kc).args(["apply", "--yes"]))?;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("calico-migrate plan"), "{}", text(&o));
    assert!(!Journal::exists(&env.state_dir()));

    // Nothing to resume.
    support::plan(&env).await?;
    let o = run(cli(&env, &kc).args(["apply", "--resume", "--yes"]))?;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("nothing to resume"), "{}", text(&o));

    // No --yes without a terminal.
    let o = run(cli(&env, &kc).arg("apply"))?;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--yes"), "{}", text(&o));
    assert!(!Journal::exists(&env.state_dir()));

    // A plan for another cluster.
    let path = env.state_dir().join("plan.json");
    let good = std::fs::read(&path)?;
    let mut other: Value = serde_json::from_slice(&good)?;
    other["cluster_uid"] = json!("00000000-0000-0000-0000-000000000000");
    std::fs::write(&path, serde_json::to_vec(&other)?)?;
    let o = run(cli(&env, &kc).args(["apply", "--yes"]))?;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("kube-system UID"), "{}", text(&o));
    std::fs::write(&path, &good)?;

    // A manifest changed after planning.
    let manifest = std::fs::read_dir(env.state_dir())?
        .filter_map(|e| e.ok())
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("operator-manifest-")
        })
        .context("manifest")?
        .path();
    let original = std::fs::read(&manifest)?;
    std::fs::write(&manifest, b"kind: Namespace\n")?;
    let o = run(cli(&env, &kc).args(["apply", "--yes"]))?;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("changed after planning"), "{}", text(&o));
    std::fs::write(&manifest, &original)?;

    // The cluster changed since the plan (kube-system calico-node's update strategy).
    let ds_api: kube::Api<k8s_openapi::api::apps::v1::DaemonSet> =
        kube::Api::namespaced(env.client.clone(), "kube-system");
    let original_ds = ds_api.get("calico-node").await?;
    let patch = json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": 7}}}});
    ds_api
        .patch(
            "calico-node",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await?;
    let o = run(cli(&env, &kc).args(["apply", "--yes"]))?;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("changed since the plan"), "{}", text(&o));
    assert!(!Journal::exists(&env.state_dir()));
    calico_migrate::cluster::objects::Objects::new(env.client.clone(), Default::default())
        .restore(&serde_json::to_value(&original_ds)?)
        .await?;

    // A gate before the first step: the journal is created, nothing else happens.
    let o = run(cli(&env, &kc).args(["apply", "--yes", "--pause-before", "baseline"]))?;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("paused before step `baseline`"),
        "{}",
        text(&o)
    );

    // Another holder's Lease.
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": LEASE_NAME, "namespace": LEASE_NAMESPACE},
        "spec": {"holderIdentity": "laptop-of-someone:/state#42", "leaseDurationSeconds": 600,
                 "renewTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()}});
    env.sb.load(vec![lease])?;
    let o = run(cli(&env, &kc).args(["apply", "--resume", "--yes"]))?;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("laptop-of-someone"), "{}", text(&o));

    let after = support::snapshot(&env.sb)?;
    let diff: Vec<String> = support::differences(&before, &after)
        .into_iter()
        .filter(|k| !k.starts_with("leases."))
        .collect();
    assert!(diff.is_empty(), "refused runs changed {diff:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_changes_nothing() -> Result<()> {
    let (env, kc) = ready(3).await?;
    let before = support::snapshot(&env.sb)?;
    let o = run(cli(&env, &kc).args(["apply", "--dry-run", "-o", "json"]))?;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let previews: Value = serde_json::from_slice(&o.stdout)?;
    let ids = step_ids(&env)?;
    assert_eq!(
        previews.as_array().map(Vec::len),
        Some(ids.len()),
        "{previews}"
    );
    let changes: usize = previews
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p["changes"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(changes > 0, "a dry run names what would change: {previews}");
    assert!(!Journal::exists(&env.state_dir()));
    let after = support::snapshot(&env.sb)?;
    assert!(support::differences(&before, &after).is_empty());
    Ok(())
}

/// The policy objects (any group), stripped, by key.
fn policies(env: &support::Env) -> Result<Vec<(String, Value)>> {
    Ok(support::snapshot(&env.sb)?
        .into_iter()
        .filter(|(k, _)| {
            k.starts_with("networkpolicies.")
                || k.starts_with("globalnetworkpolicies.")
                || k.starts_with("globalnetworksets.")
                || k.starts_with("networksets.")
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_apply_on_twenty_nodes_without_a_lapse_then_rollback_to_the_baseline() -> Result<()> {
    let (env, kc) = ready(20).await?;
    let before = support::snapshot(&env.sb)?;
    let policies_before = policies(&env)?;
    // The sandbox's clock runs 100 times faster: so do apply's pauses and waits.
    let o = run(cli(&env, &kc).args([
        "apply",
        "--yes",
        "--sandbox-time-scale",
        "100",
        "-o",
        "json",
    ]))?;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let report: Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(report["outcome"], "completed", "{report}");
    let swaps = report["observations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["kind"] == "node_swap")
        .count();
    assert!(swaps >= 20, "every node's swap is watched: {swaps}");
    no_lapse(&env).await?;
    assert_eq!(
        policies(&env)?,
        policies_before,
        "the policy set is unchanged"
    );
    let ds = env.sb.store().get(
        &support::gvr("apps", "v1", "daemonsets"),
        "kube-system",
        "calico-node",
    );
    assert!(
        ds.is_err(),
        "kube-system calico-node is gone after the takeover"
    );

    let o = run(cli(&env, &kc).args(["rollback", "--yes", "--sandbox-time-scale", "100"]))?;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    no_lapse(&env).await?;
    let after = support::snapshot(&env.sb)?;
    let diff = support::differences(&before, &after);
    assert!(
        diff.is_empty(),
        "after rollback the cluster differs: {diff:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_after_every_step_returns_to_the_baseline() -> Result<()> {
    let (env, kc) = ready(3).await?;
    let before = support::snapshot(&env.sb)?;
    let ids = step_ids(&env)?;
    for (k, id) in ids.iter().enumerate() {
        // Apply up to and including step k, then roll everything back.
        let mut c = cli(&env, &kc);
        c.args(["apply", "--yes", "--sandbox-time-scale", "100"]);
        if let Some(next) = ids.get(k + 1) {
            c.args(["--pause-before", next]);
        }
        let o = run(&mut c)?;
        assert_eq!(o.status.code(), Some(0), "apply to {id}: {}", text(&o));
        let o = run(cli(&env, &kc).args(["rollback", "--yes", "--sandbox-time-scale", "100"]))?;
        assert_eq!(
            o.status.code(),
            Some(0),
            "rollback after {id}: {}",
            text(&o)
        );
        let diff = support::differences(&before, &support::snapshot(&env.sb)?);
        assert!(diff.is_empty(), "after rollback from {id}: {diff:?}");
        no_lapse(&env).await?;
        // The next round starts from a fresh journal.
        std::fs::remove_dir_all(env.state_dir().join("journal"))?;
        let _ = std::fs::remove_file(env.state_dir().join("calico-migrate.head"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_from_the_middle_of_the_takeover() -> Result<()> {
    let (env, kc) = ready(6).await?;
    let before = support::snapshot(&env.sb)?;
    let mut child = cli(&env, &kc)
        .args(["apply", "--yes", "--sandbox-time-scale", "100"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // Wait until some nodes are migrated, then kill the run mid-takeover.
    let nodes = support::gvr("", "v1", "nodes");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while migrated(&env) < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(migrated(&env) >= 2, "the takeover reached two nodes");
    // The way back holds established connections too: an agent that resets them when
    // it takes a node back stops the rollback at the first node moved back.
    let mut reset = DataPlaneFaults::default();
    reset.conn_reset.extend(
        env.sb
            .store()
            .list(&nodes, None, &Default::default())?
            .items
            .iter()
            .filter_map(|n| {
                n.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            }),
    );
    env.dp.set_faults(&reset).await?;
    let o = run(cli(&env, &kc).args(["rollback", "--yes", "--sandbox-time-scale", "100"]))?;
    let said = text(&o);
    assert_ne!(o.status.code(), Some(0), "{said}");
    assert!(
        said.contains("running the kube-system calico-node"),
        "{said}"
    );
    // It moved one node back (the killed apply left the operator running, so how many
    // nodes were migrated when the rollback froze it is not known beforehand) and
    // stopped naming that node.
    let moves: Vec<&str> = said
        .lines()
        .filter_map(|l| {
            l.split_once("moving node ")?
                .1
                .split_once(" back to the kube-system calico-node")
        })
        .map(|(node, _)| node)
        .collect();
    assert_eq!(moves.len(), 1, "{said}");
    assert!(
        said.contains(&format!(
            "moving node {} back: after node {}'s swap",
            moves[0], moves[0]
        )) && said.contains("BROKE"),
        "{said}"
    );
    // Once the cause is gone, rollback runs again from where it stopped.
    env.dp.set_faults(&DataPlaneFaults::default()).await?;
    let o = run(cli(&env, &kc).args(["rollback", "--yes", "--sandbox-time-scale", "100"]))?;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let diff = support::differences(&before, &support::snapshot(&env.sb)?);
    assert!(diff.is_empty(), "after rollback mid-takeover: {diff:?}");
    no_lapse(&env).await?;
    Ok(())
}

/// How many nodes the operator has labelled `migrated`.
fn migrated(env: &support::Env) -> usize {
    migrated_nodes(&env.sb).len()
}

/// Probe namespaces and pods left in the sandbox.
fn probe_leftovers(env: &support::Env) -> Result<usize> {
    let mut n = 0;
    for r in ["namespaces", "pods"] {
        n += env
            .sb
            .store()
            .list(&support::gvr("", "v1", r), None, &Default::default())?
            .items
            .iter()
            .filter(|o| {
                o.pointer("/metadata/labels/calico-migrate.io~1probe")
                    .is_some()
            })
            .count();
    }
    Ok(n)
}

/// Run `args` and SIGKILL it after `after` (if it has not ended by then).
fn run_killed(mut c: Command, after: Duration) -> Result<()> {
    let mut child = c.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    let deadline = std::time::Instant::now() + after;
    while std::time::Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill()?;
    child.wait()?;
    Ok(())
}

/// One trial: apply killed at `kill_apply`, resumed to completion; rollback killed at
/// `kill_rollback`, run again to completion. Asserts the end states and no divergence.
async fn crash_trial(seed: u64, kill_apply: Duration, kill_rollback: Duration) -> Result<()> {
    let (env, kc) = ready(3).await?;
    let before = support::snapshot(&env.sb)?;
    let policies_before = policies(&env)?;
    let trial =
        format!("trial {seed} (apply killed at {kill_apply:?}, rollback at {kill_rollback:?})");

    let mut c = cli(&env, &kc);
    c.args(["apply", "--yes", "--sandbox-time-scale", "100"]);
    let run1 = tokio::task::spawn_blocking(move || run_killed(c, kill_apply));
    run1.await??;
    let resume = if Journal::exists(&env.state_dir()) {
        vec![
            "apply",
            "--resume",
            "--yes",
            "--pause-seconds",
            "0",
            "-o",
            "json",
        ]
    } else {
        vec![
            "apply",
            "--yes",
            "--sandbox-time-scale",
            "100",
            "-o",
            "json",
        ]
    };
    let mut c = cli(&env, &kc);
    c.args(&resume);
    let o = tokio::task::spawn_blocking(move || c.output()).await??;
    anyhow::ensure!(o.status.code() == Some(0), "{trial}: resume: {}", text(&o));
    let report: Value = serde_json::from_slice(&o.stdout)?;
    anyhow::ensure!(report["outcome"] == "completed", "{trial}: {report}");
    no_lapse(&env)
        .await
        .with_context(|| format!("{trial}: apply"))?;
    anyhow::ensure!(
        policies(&env)? == policies_before,
        "{trial}: the policy set changed"
    );
    anyhow::ensure!(
        probe_leftovers(&env)? == 0,
        "{trial}: probe objects left after apply"
    );
    anyhow::ensure!(
        env.sb
            .store()
            .get(
                &support::gvr("apps", "v1", "daemonsets"),
                "kube-system",
                "calico-node"
            )
            .is_err(),
        "{trial}: kube-system calico-node is still there"
    );

    let mut c = cli(&env, &kc);
    c.args(["rollback", "--yes", "--sandbox-time-scale", "100"]);
    tokio::task::spawn_blocking(move || run_killed(c, kill_rollback)).await??;
    let mut c = cli(&env, &kc);
    c.args(["rollback", "--yes", "--sandbox-time-scale", "100"]);
    let o = tokio::task::spawn_blocking(move || c.output()).await??;
    anyhow::ensure!(
        o.status.code() == Some(0),
        "{trial}: rollback: {}",
        text(&o)
    );
    no_lapse(&env)
        .await
        .with_context(|| format!("{trial}: rollback"))?;
    let diff = support::differences(&before, &support::snapshot(&env.sb)?);
    anyhow::ensure!(diff.is_empty(), "{trial}: after rollback: {diff:?}");
    anyhow::ensure!(
        probe_leftovers(&env)? == 0,
        "{trial}: probe objects left after rollback"
    );
    env.server.shutdown().await;
    Ok(())
}

/// SIGKILL at seeded random moments of apply and of rollback: every resume finishes
/// the migration and every second rollback returns the cluster to its baseline, with
/// no divergence in the sandbox's enforcement monitor. CALICO_MIGRATE_CRASH_TRIALS
/// sets the number of trials (default 30; scripts/campaign.sh runs 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_campaign_apply_and_rollback_always_finish() -> Result<()> {
    let trials: u64 = std::env::var("CALICO_MIGRATE_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    // One unbroken run measures how long apply and rollback take here, so the kills
    // land anywhere inside them.
    let (env, kc) = ready(3).await?;
    let started = std::time::Instant::now();
    let o = run(cli(&env, &kc).args(["apply", "--yes", "--sandbox-time-scale", "100"]))?;
    anyhow::ensure!(o.status.code() == Some(0), "{}", text(&o));
    let apply_time = started.elapsed();
    let started = std::time::Instant::now();
    let o = run(cli(&env, &kc).args(["rollback", "--yes", "--sandbox-time-scale", "100"]))?;
    anyhow::ensure!(o.status.code() == Some(0), "{}", text(&o));
    let rollback_time = started.elapsed();
    env.server.shutdown().await;

    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let plans: Vec<(u64, Duration, Duration)> = (0..trials)
        .map(|seed| {
            (
                seed,
                apply_time.mul_f64(rng.f64()),
                rollback_time.mul_f64(rng.f64()),
            )
        })
        .collect();
    // Two trials at a time, each on its own sandbox.
    // A line per trial, so a campaign stopped early still says how far it got.
    let results: Vec<Result<()>> =
        futures::stream::iter(plans.into_iter().map(|(seed, a, r)| async move {
            let result = crash_trial(seed, a, r).await;
            let verdict = if result.is_ok() { "passed" } else { "FAILED" };
            eprintln!("trial {seed}: {verdict}");
            result
        }))
        .buffer_unordered(2)
        .collect()
        .await;
    let failed: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("{e:#}")))
        .collect();
    eprintln!(
        "{} passed, {} failed (apply {apply_time:?}, rollback {rollback_time:?})",
        trials as usize - failed.len(),
        failed.len()
    );
    anyhow::ensure!(failed.is_empty(), "{failed:#?}");
    Ok(())
}

/// The Job identity deploy/ creates (ServiceAccount calico-migrate/calico-migrate and its
/// least-privilege RBAC) can plan, apply and roll back: the sandbox holds impersonated
/// requests to RBAC, so a verb the steps use and deploy/ does not grant fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_identity_of_deploy_plans_applies_and_rolls_back() -> Result<()> {
    let env = support::env(3).await?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&repo)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut objects = Vec::new();
    for path in files {
        {
            objects.extend(calico_migrate::migration::session::parse_manifest(
                &std::fs::read_to_string(&path)?,
            )?);
        }
    }
    env.sb.load(objects)?;
    let before = support::snapshot(&env.sb)?;
    // The admin's kubeconfig, acting as the Job's ServiceAccount.
    let kc = env.state_dir().join("kubeconfig-job");
    std::fs::write(
        &kc,
        env.server.kubeconfig().replace(
            "user: {}",
            "user:\n    as: system:serviceaccount:calico-migrate:calico-migrate",
        ),
    )?;
    // The current path (the sandbox serves 1.34): the operator and Calico manifests the
    // sandbox stands in for, as the team would give the reviewed files.
    let manifest = env.state_dir().join("tigera-operator.yaml");
    let profile = calico_migrate::migration::profile::Profile::load(
        calico_migrate::migration::profile::CURRENT_PROFILE,
    )?;
    write_operator_manifest(&manifest, &profile)?;
    let calico = env.state_dir().join("calico-policy-only.yaml");
    std::fs::write(
        &calico,
        calico_migrate::sandbox::scenario::policy_only::yaml(),
    )?;
    let o = run(cli(&env, &kc)
        .args(["plan", "-o", "json", "--operator-manifest"])
        .arg(&manifest)
        .arg("--calico-manifest")
        .arg(&calico))?;
    assert_eq!(o.status.code(), Some(0), "plan as the Job: {}", text(&o));
    let plan: Value = serde_json::from_slice(&o.stdout)?;
    assert!(
        !plan["blockers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|b| b["code"] == "RBAC_MISSING"),
        "{plan:#}"
    );
    let o = run(cli(&env, &kc).args(["apply", "--yes", "--sandbox-time-scale", "100"]))?;
    assert_eq!(o.status.code(), Some(0), "apply as the Job: {}", text(&o));
    let o = run(cli(&env, &kc).args(["rollback", "--yes", "--sandbox-time-scale", "100"]))?;
    assert_eq!(
        o.status.code(),
        Some(0),
        "rollback as the Job: {}",
        text(&o)
    );
    let diff: Vec<String> = support::differences(&before, &support::snapshot(&env.sb)?);
    assert!(diff.is_empty(), "after rollback: {diff:?}");
    no_lapse(&env).await?;
    Ok(())
}

/// `--pause-before` with a step the plan does not have, and a new plan over the
/// journal of a migration, are refused without writing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_pause_step_and_a_plan_over_a_journal_are_refused() -> Result<()> {
    let (env, kc) = ready(2).await?;
    let o = run(cli(&env, &kc).args(["apply", "--yes", "--pause-before", "no-such-step"]))?;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no step `no-such-step`"), "{}", text(&o));
    assert!(
        text(&o).contains("baseline, "),
        "the error lists the steps: {}",
        text(&o)
    );
    assert!(!Journal::exists(&env.state_dir()));

    let o = run(cli(&env, &kc).args(["apply", "--yes", "--pause-before", "baseline"]))?;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let plan_path = env.state_dir().join("plan.json");
    let saved = std::fs::read(&plan_path)?;
    let o = run(cli(&env, &kc).arg("plan"))?;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("holds the journal"), "{}", text(&o));
    assert_eq!(
        std::fs::read(&plan_path)?,
        saved,
        "the saved plan is untouched"
    );
    Ok(())
}

/// A profile given as a file is saved with the plan: apply needs no file later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_file_travels_with_the_plan() -> Result<()> {
    // The same-version profile, edited: on the newest Kubernetes it runs on.
    let env = support::env_1_24(2).await?;
    let kc = env.state_dir().join("kubeconfig");
    env.server.write_kubeconfig(&kc)?;
    let dir = tempfile::tempdir()?;
    let (profile_path, o) = plan_with_a_profile_file(&env, &kc, dir.path(), |t| {
        t.replace("pause_seconds: 10", "pause_seconds: 3")
    })?;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    std::fs::remove_file(&profile_path)?;
    let o = run(cli(&env, &kc).args(["apply", "--dry-run"]))?;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let saved: Value = serde_json::from_slice(&std::fs::read(env.state_dir().join("plan.json"))?)?;
    assert_eq!(saved["profile"]["name"], "our-shop");
    assert_eq!(saved["profile"]["pacing"]["pause_seconds"], 3);
    Ok(())
}

/// The sandbox operator's manifest for `profile`, as the file `plan --operator-manifest` reads.
/// `plan --profile FILE --operator-manifest FILE` with the same-version profile renamed
/// `our-shop` and edited by `edit`, written in `dir`: the profile's path and plan's output.
fn plan_with_a_profile_file(
    env: &support::Env,
    kc: &Path,
    dir: &Path,
    edit: impl Fn(String) -> String,
) -> Result<(PathBuf, Output)> {
    let builtin = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("plans/aws-calico-0.3.10-v3.19.yaml"),
    )?;
    let profile_path = dir.join("our-profile.yaml");
    std::fs::write(
        &profile_path,
        edit(builtin.replace("name: aws-calico-0.3.10-v3.19", "name: our-shop")),
    )?;
    let profile =
        calico_migrate::migration::profile::Profile::load(profile_path.to_string_lossy().as_ref())?;
    let manifest = dir.join("tigera-operator.yaml");
    write_operator_manifest(&manifest, &profile)?;
    let o = run(cli(env, kc)
        .args(["plan", "--profile"])
        .arg(&profile_path)
        .arg("--operator-manifest")
        .arg(&manifest))?;
    Ok((profile_path, o))
}

fn write_operator_manifest(
    path: &Path,
    profile: &calico_migrate::migration::profile::Profile,
) -> Result<()> {
    std::fs::write(
        path,
        calico_migrate::sandbox::scenario::operator::operator_manifest_yaml(&format!(
            "quay.io/tigera/operator:{}",
            profile.target.operator_version
        )),
    )?;
    Ok(())
}

/// The current path with the real artifacts: on Kubernetes 1.25+ plan picks operator
/// v1.38.6 and Calico v3.30.3 by itself, the real operator and policy-only manifests
/// drive install-operator and align-versions, apply completes with every check passing,
/// and rollback returns the cluster to the 3.19.1 baseline object for object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_current_path_with_the_real_manifests_applies_and_rolls_back() -> Result<()> {
    let env = support::env(4).await?;
    let kc = env.state_dir().join("kubeconfig");
    env.server.write_kubeconfig(&kc)?;
    let before = support::snapshot(&env.sb)?;
    let plan = plan_current_path(&env, &kc, &support::real("calico-v3.30.3-policy-only.yaml"))?;
    assert_eq!(plan["profile"], "aws-calico-0.3.10-v3.30", "{plan:#}");
    let why = plan["profile_reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("not aws-calico-0.3.10-v3.19") && why.contains("PodSecurityPolicies"),
        "{why}"
    );
    assert!(step_ids(&env)?.contains(&"align-versions".to_string()));

    let o = run(cli(&env, &kc).args(["apply", "--yes", "--sandbox-time-scale", "100"]))?;
    assert_eq!(o.status.code(), Some(0), "apply: {}", text(&o));
    // Every CRD of the v3.30.3 manifest was there before its agents ran, and the
    // ClusterRole kept what the v3.19.1 agents read.
    let crds = env.sb.store().list(
        &calico_migrate::sandbox::Gvr::new(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
        ),
        None,
        &Default::default(),
    )?;
    for name in [
        "tiers.crd.projectcalico.org",
        "adminnetworkpolicies.policy.networking.k8s.io",
    ] {
        assert!(
            crds.items.iter().any(|c| c["metadata"]["name"] == name),
            "{name} missing after apply"
        );
    }
    no_lapse(&env).await?;

    rolled_back_to(&env, &kc, &before).await
}

/// The same-version path with the real artifact: on Kubernetes 1.24 plan picks operator
/// v1.17.4 by itself, the published Calico v3.19.1 `tigera-operator.yaml` (its
/// policy/v1beta1 PodSecurityPolicies still served) drives install-operator, apply
/// completes with every check passing, and rollback returns to the baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_version_path_with_the_real_v3_19_1_manifest_applies_and_rolls_back() -> Result<()>
{
    let env = support::env_1_24(3).await?;
    let kc = env.state_dir().join("kubeconfig");
    env.server.write_kubeconfig(&kc)?;
    let before = support::snapshot(&env.sb)?;
    let o = run(cli(&env, &kc)
        .args(["plan", "-o", "json", "--operator-manifest"])
        .arg(support::real(
            "calico-v3.19.1-tigera-operator.rendered.yaml",
        )))?;
    assert_eq!(o.status.code(), Some(0), "plan: {}", text(&o));
    let plan: Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(plan["profile"], "aws-calico-0.3.10-v3.19", "{plan:#}");
    assert!(!step_ids(&env)?.contains(&"align-versions".to_string()));

    let o = run(cli(&env, &kc).args(["apply", "--yes", "--sandbox-time-scale", "100"]))?;
    assert_eq!(o.status.code(), Some(0), "apply: {}", text(&o));
    let psps = env.sb.store().list(
        &calico_migrate::sandbox::Gvr::new("policy", "v1beta1", "podsecuritypolicies"),
        None,
        &Default::default(),
    )?;
    assert!(
        psps.items
            .iter()
            .any(|p| p["metadata"]["name"] == "tigera-operator"),
        "the manifest's PodSecurityPolicy was applied"
    );
    no_lapse(&env).await?;

    rolled_back_to(&env, &kc, &before).await
}

/// The same-version profile named on a cluster its operator cannot run on is a
/// blocker that names the reason; plan exits 3 and apply has nothing to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_version_profile_on_kubernetes_1_25_or_later_is_a_blocker() -> Result<()> {
    let env = support::env(2).await?;
    let kc = env.state_dir().join("kubeconfig");
    env.server.write_kubeconfig(&kc)?;
    let o =
        run(cli(&env, &kc).args(["plan", "-o", "json", "--profile", "aws-calico-0.3.10-v3.19"]))?;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let plan: Value = serde_json::from_slice(&o.stdout)?;
    let blocker = plan["blockers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["code"] == "KUBERNETES_VERSION_UNSUPPORTED")
        .with_context(|| format!("{plan:#}"))?;
    let message = blocker["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("v1.17.4")
            && message.contains("1.16 to 1.24")
            && message.contains("policy/v1beta1"),
        "{message}"
    );
    assert!(
        blocker["fix"]
            .as_str()
            .unwrap_or_default()
            .contains("without --profile"),
        "{blocker}"
    );
    Ok(())
}

/// An alignment that moves images only (the manifest given keeps the v3.19.1 CRDs and
/// grants no new rule) stops at the first node: its v3.30.3 calico-node is not Ready,
/// and the error names the node and what felix cannot list. Rollback from there puts
/// the old images back and returns the cluster to the baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_only_alignment_stops_at_the_first_node_and_rolls_back() -> Result<()> {
    let env = support::env(3).await?;
    let kc = env.state_dir().join("kubeconfig");
    env.server.write_kubeconfig(&kc)?;
    let before = support::snapshot(&env.sb)?;
    // The chart's 12 CRDs (v3.19.1): the ones an image-only upgrade leaves in place.
    let chart_crds: Vec<String> = calico_migrate::sandbox::scenario::calico::CALICO_CRDS
        .iter()
        .map(|(plural, _, _)| format!("{plural}.crd.projectcalico.org"))
        .collect();
    let real = std::fs::read_to_string(support::real("calico-v3.30.3-policy-only.yaml"))?;
    let mut images_only = String::new();
    for mut obj in calico_migrate::migration::session::parse_manifest(&real)? {
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let keep = match kind.as_str() {
            "CustomResourceDefinition" => chart_crds.contains(&name),
            "ClusterRole" if name == "calico-node" => {
                obj["rules"] = json!([]);
                true
            }
            "ClusterRole" | "ClusterRoleBinding" => false,
            _ => true,
        };
        if keep {
            images_only.push_str("---\n");
            images_only.push_str(&serde_json::to_string(&obj)?);
            images_only.push('\n');
        }
    }
    let manifest = env.state_dir().join("images-only.yaml");
    std::fs::write(&manifest, images_only)?;
    plan_current_path(&env, &kc, &manifest)?;

    let o = run(cli(&env, &kc).args(["apply", "--yes", "--sandbox-time-scale", "100"]))?;
    let said = text(&o);
    assert_eq!(o.status.code(), Some(1), "apply: {said}");
    assert!(said.contains("STOPPED at step `align-versions`"), "{said}");
    let node = said
        .split("stopped at node ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .with_context(|| format!("no node named: {said}"))?;
    assert!(node.starts_with("ip-10-"), "{said}");
    assert!(
        said.contains("cannot list resource \"tiers\""),
        "the reason names what felix cannot list: {said}"
    );
    // The stop left the other nodes on v3.19.1: only the named node was replaced.
    let pods = env.sb.store().list(
        &calico_migrate::sandbox::Gvr::new("", "v1", "pods"),
        Some("kube-system"),
        &Default::default(),
    )?;
    let new_agents: Vec<&Value> = pods
        .items
        .iter()
        .filter(|p| {
            p["spec"]["containers"][0]["image"]
                .as_str()
                .is_some_and(|i| i.ends_with("calico/node:v3.30.3"))
        })
        .collect();
    assert_eq!(new_agents.len(), 1, "{new_agents:?}");
    assert_eq!(new_agents[0]["spec"]["nodeName"], node);

    let o = run(cli(&env, &kc).args(["rollback", "--yes", "--sandbox-time-scale", "100"]))?;
    assert_eq!(o.status.code(), Some(0), "rollback: {}", text(&o));
    let diff: Vec<String> = support::differences(&before, &support::snapshot(&env.sb)?);
    assert!(diff.is_empty(), "after rollback: {diff:?}");
    Ok(())
}

/// A profile file pinning operator v1.17.4 with a Kubernetes range that admits 1.25:
/// the operator's render fails there (tigera/operator v1.17.4 pkg/render/typha.go:117-139,
/// core_controller.go:1073-1077), it goes Degraded and never migrates. The run stops at
/// create-installation with one sentence saying so, and rollback returns to the baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_that_cannot_run_on_this_kubernetes_stops_at_create_installation() -> Result<()>
{
    let cfg = calico_migrate::sandbox::scenario::ScenarioConfig {
        nodes: 2,
        namespaces: 2,
        pods_per_namespace: 1,
        ..Default::default()
    };
    let env = support::env_at(
        cfg,
        100.0,
        calico_migrate::sandbox::KubernetesVersion::new(25)?,
    )
    .await?;
    let kc = env.state_dir().join("kubeconfig");
    env.server.write_kubeconfig(&kc)?;
    let dir = tempfile::tempdir()?;
    let (_, o) = plan_with_a_profile_file(&env, &kc, dir.path(), |t| {
        t.replace("max: \"1.24\"", "max: \"1.34\"")
    })?;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let before = support::snapshot(&env.sb)?;
    let o = run(cli(&env, &kc).args(["apply", "--yes", "--sandbox-time-scale", "100"]))?;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        err.contains("STOPPED at step `create-installation`"),
        "{}",
        text(&o)
    );
    assert!(
        err.contains("tigera-operator v1.17.4 cannot run on this Kubernetes: it creates a PodDisruptionBudget at policy/v1beta1, which this API server no longer serves"),
        "{}",
        text(&o)
    );
    assert!(err.contains("calico-migrate rollback"), "{}", text(&o));
    assert!(!err.contains("{\""), "no Debug dump: {}", text(&o));
    let o = run(cli(&env, &kc).args(["rollback", "--yes", "--sandbox-time-scale", "100"]))?;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let after = support::snapshot(&env.sb)?;
    let diff = support::differences(&before, &after);
    assert!(
        diff.is_empty(),
        "after rollback the cluster differs: {diff:?}"
    );
    Ok(())
}

/// apply and rollback with 2 Fargate nodes among 8 on the current path (operator
/// v1.38.6). No release accepts calico-node's Fargate exclusion and every one labels
/// Fargate nodes for the migration, so fargate-affinity replaces the exclusion and the
/// catch-all NoSchedule toleration (Fargate's taint keeps calico-node off); the whole
/// job passes, and a watch on the store's change feed for the whole run sees no
/// calico-node pod (kube-system or calico-system) bound to a Fargate node, Pending or
/// otherwise, and none left Pending unplaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fargate_nodes_never_get_a_calico_node() -> Result<()> {
    use calico_migrate::sandbox::EventType;
    let env = support::env_with(
        calico_migrate::sandbox::scenario::ScenarioConfig {
            nodes: 6,
            fargate_nodes: 2,
            namespaces: 3,
            pods_per_namespace: 1,
            ..Default::default()
        },
        100.0,
    )
    .await?;
    let fargate: Vec<String> = env
        .sb
        .store()
        .list(&support::gvr("", "v1", "nodes"), None, &Default::default())?
        .items
        .into_iter()
        .filter(|n| {
            n.pointer("/metadata/labels/eks.amazonaws.com~1compute-type") == Some(&json!("fargate"))
        })
        .filter_map(|n| {
            n.pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .collect();
    assert_eq!(fargate.len(), 2, "{fargate:?}");
    let mut feed = env.sb.store().subscribe();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let watcher = {
        let (seen, fargate) = (seen.clone(), fargate.clone());
        tokio::spawn(async move {
            while let Ok(ev) = feed.recv().await {
                if ev.gr.resource != "pods" || ev.kind == EventType::Deleted {
                    continue;
                }
                let p = &ev.object;
                let label = |k: &str| {
                    p.pointer(&format!("/metadata/labels/{k}"))
                        .and_then(Value::as_str)
                };
                if label("k8s-app") != Some("calico-node")
                    && label("app.kubernetes.io~1name") != Some("calico-node")
                {
                    continue;
                }
                let node = p
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let unplaced = node.is_empty()
                    && p.pointer("/status/conditions/0/reason") == Some(&json!("Unschedulable"));
                if fargate.iter().any(|f| f == node) || unplaced {
                    seen.lock()
                        .map(|mut s| {
                            s.push(format!(
                                "{}/{} on {node:?}: {}",
                                ev.namespace,
                                ev.name,
                                p.pointer("/status/phase")
                                    .and_then(Value::as_str)
                                    .unwrap_or("-")
                            ))
                        })
                        .ok();
                }
            }
        })
    };
    let kc = env.state_dir().join("kubeconfig");
    env.server.write_kubeconfig(&kc)?;
    let (saved, _) = support::plan(&env).await?;
    assert_eq!(
        saved.plan["inventory"]["fargate_nodes"]
            .as_array()
            .map(Vec::len),
        Some(2),
        "{:#}",
        saved.plan["inventory"]
    );
    let steps: Vec<&str> = saved.plan["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert!(steps.contains(&"fargate-affinity"), "{steps:?}");
    let before = support::snapshot(&env.sb)?;
    let o = run(cli(&env, &kc).args(["apply", "--yes", "--sandbox-time-scale", "100"]))?;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    no_lapse(&env).await?;
    // The operator labelled the Fargate nodes too (it labels every node).
    for f in &fargate {
        let n = env
            .sb
            .store()
            .get(&support::gvr("", "v1", "nodes"), "", f)?;
        assert!(
            n.pointer("/metadata/labels/projectcalico.org~1operator-node-migration")
                .is_none(),
            "labels removed at the end: {}",
            n["metadata"]["labels"]
        );
    }
    let during_apply = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert!(
        during_apply.is_empty(),
        "calico-node pods on or waiting for Fargate nodes during apply: {during_apply:?}"
    );
    let cs = env.sb.store().get(
        &support::gvr("apps", "v1", "daemonsets"),
        "calico-system",
        "calico-node",
    )?;
    assert_eq!(
        cs.pointer("/status/desiredNumberScheduled"),
        Some(&json!(6)),
        "{cs:#}"
    );
    let o = run(cli(&env, &kc).args(["rollback", "--yes", "--sandbox-time-scale", "100"]))?;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    no_lapse(&env).await?;
    let after = support::snapshot(&env.sb)?;
    let diff = support::differences(&before, &after);
    assert!(diff.is_empty(), "rollback left differences: {diff:?}");
    watcher.abort();
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert!(
        seen.is_empty(),
        "calico-node pods on or waiting for Fargate nodes: {seen:?}"
    );
    Ok(())
}

/// A converter refusal that appears mid-takeover (someone annotates kube-system
/// calico-node) stops the run with the operator frozen and TigeraStatus Degraded. Once
/// the annotation is gone that Degraded is stale: the frozen operator cannot rewrite it
/// (tigera/operator keeps it in its status manager's memory, core_controller.go:1094-1100,
/// status.go). `apply --resume` must see that its cause is gone, start the operator
/// (a new process, a fresh status) and finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_goes_on_after_a_stale_degraded() -> Result<()> {
    let (env, kc) = ready(4).await?;
    let child = cli(&env, &kc)
        .args(["apply", "--yes", "--sandbox-time-scale", "100"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while migrated(&env) < 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::ensure!(migrated(&env) >= 1, "the takeover reached a node");
    let ds = support::gvr("apps", "v1", "daemonsets");
    let annotate = |value: Value| {
        env.sb.store().patch(
            &ds,
            "kube-system",
            "calico-node",
            calico_migrate::sandbox::PatchKind::Merge,
            json!({"metadata": {"annotations": {"example.com/owner": value}}})
                .to_string()
                .as_bytes(),
            &Default::default(),
        )
    };
    annotate(json!("team-a"))?;
    let o = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    let said = text(&o);
    assert_ne!(o.status.code(), Some(0), "{said}");
    assert!(
        said.contains("the operator refuses the migration") && said.contains("example.com/owner"),
        "{said}"
    );
    let op = env
        .sb
        .store()
        .get(
            &support::gvr("apps", "v1", "deployments"),
            "tigera-operator",
            "tigera-operator",
        )
        .context("operator")?;
    assert_eq!(op["spec"]["replicas"], 0, "frozen at the stop");
    // With no operator pod left, the lock the last one kept is released.
    let lock = env.sb.store().get(
        &support::gvr("coordination.k8s.io", "v1", "leases"),
        "tigera-operator",
        "operator-lock",
    )?;
    assert_eq!(lock["spec"]["holderIdentity"], "", "{lock}");
    let degraded = |env: &support::Env| -> Option<String> {
        let ts = env
            .sb
            .store()
            .get(
                &support::gvr("operator.tigera.io", "v1", "tigerastatuses"),
                "",
                "calico",
            )
            .ok()?;
        ts["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Degraded" && c["status"] == "True")
            .map(|c| c["message"].as_str().unwrap_or_default().to_string())
    };
    // The cause goes; the frozen operator's Degraded stays.
    annotate(Value::Null)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stale = degraded(&env).unwrap_or_default();
    assert!(stale.contains("example.com/owner"), "stale: {stale:?}");
    let o =
        run(cli(&env, &kc).args(["apply", "--resume", "--yes", "--sandbox-time-scale", "100"]))?;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        env.sb
            .store()
            .get(&ds, "kube-system", "calico-node")
            .is_err(),
        "the takeover finished"
    );
    assert_eq!(degraded(&env), None, "the new operator process cleared it");
    no_lapse(&env).await?;
    Ok(())
}

/// Nodes labelled `migrated` now.
fn migrated_nodes(sb: &calico_migrate::sandbox::Sandbox) -> std::collections::BTreeSet<String> {
    sb.store()
        .list(&support::gvr("", "v1", "nodes"), None, &Default::default())
        .map(|l| {
            l.items
                .iter()
                .filter(|n| {
                    n.pointer("/metadata/labels/projectcalico.org~1operator-node-migration")
                        == Some(&json!("migrated"))
                })
                .filter_map(|n| n.pointer("/metadata/name")?.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// With no pause the operator runs on while the last node is checked, and no node
/// is ever verified with more than `nodes_at_a_time` (1) other nodes relabelled and
/// unverified: read at each "verified" line the tool prints, from the sandbox itself.
/// The sandbox runs at time scale 20, where a node's swap (3 simulated seconds) takes
/// 150 ms, three of apply's 50 ms polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_pause_the_operator_runs_on_and_never_gets_two_nodes_ahead() -> Result<()> {
    use std::io::BufRead as _;
    let cfg = calico_migrate::sandbox::scenario::ScenarioConfig {
        nodes: 6,
        namespaces: 3,
        pods_per_namespace: 1,
        ..Default::default()
    };
    let env = support::env_with(cfg, 20.0).await?;
    let kc = env.state_dir().join("kubeconfig");
    env.server.write_kubeconfig(&kc)?;
    support::plan(&env).await?;
    let mut c = cli(&env, &kc);
    c.args([
        "apply",
        "--yes",
        "--sandbox-time-scale",
        "20",
        "--pause-seconds",
        "0",
    ])
    .stderr(Stdio::piped())
    .stdout(Stdio::null());
    let sb = env.sb.clone();
    let (lines, ahead, code) = tokio::task::spawn_blocking(move || -> Result<_> {
        let mut child = c.spawn()?;
        let stderr = child.stderr.take().context("stderr")?;
        let mut lines = Vec::new();
        // (verified node, nodes relabelled and not yet verified besides it)
        let mut ahead: Vec<(String, Vec<String>)> = Vec::new();
        let mut verified = std::collections::BTreeSet::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line?;
            if let Some(rest) = line.split("node ").nth(1)
                && let Some((node, _)) = rest.split_once(" verified on calico-system")
            {
                let now = migrated_nodes(&sb);
                verified.insert(node.to_string());
                let open: Vec<String> = now.difference(&verified).cloned().collect();
                ahead.push((node.to_string(), open));
            }
            lines.push(line);
        }
        Ok((lines, ahead, child.wait()?.code()))
    })
    .await??;
    let log = lines.join("\n");
    if std::env::var_os("CALICO_MIGRATE_TEST_TRACE").is_some() {
        eprintln!("{log}\n{ahead:?}");
    }
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(ahead.len(), 6, "every node verified once: {ahead:?}\n{log}");
    for (node, open) in &ahead {
        assert!(
            open.len() <= 1,
            "node {node} verified with {open:?} relabelled and unverified\n{log}"
        );
    }
    // The operator did run on: some node was relabelled before the one before it was
    // verified (else this is the paced path with a pause of zero).
    assert!(
        ahead.iter().any(|(_, open)| !open.is_empty()),
        "no node moved while another was checked: {ahead:?}\n{log}"
    );
    no_lapse(&env).await
}

/// kube-system calico-node's pods not being deleted, as (node, image, pod name), by node.
fn agents(env: &support::Env) -> Result<Vec<(String, String, String)>> {
    let field = |p: &Value, at: &str| {
        p.pointer(at)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let mut out: Vec<(String, String, String)> = env
        .sb
        .store()
        .list(
            &support::gvr("", "v1", "pods"),
            Some("kube-system"),
            &Default::default(),
        )?
        .items
        .iter()
        .filter(|p| p["metadata"]["labels"]["app.kubernetes.io/name"] == "calico-node")
        .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
        .map(|p| {
            (
                field(p, "/spec/nodeName"),
                field(p, "/spec/containers/0/image"),
                field(p, "/metadata/name"),
            )
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The image calico-node runs on each node, by node name.
fn agent_images(env: &support::Env) -> Result<Vec<(String, String)>> {
    Ok(agents(env)?.into_iter().map(|(n, i, _)| (n, i)).collect())
}

/// align-versions replaces kube-system calico-node itself, one node at a time, with the
/// DaemonSet on OnDelete meanwhile: at the first node whose swap is not verified it
/// stops and no other node moves, where a RollingUpdate would go on to the next node
/// as soon as the failed one's agent is Ready. `apply --resume` finishes once the cause
/// is gone and puts the RollingUpdate back without restarting any agent; rollback
/// returns to the baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn align_versions_stops_at_the_first_failed_node_and_moves_no_other() -> Result<()> {
    let env = support::env(4).await?;
    let kc = env.state_dir().join("kubeconfig");
    env.server.write_kubeconfig(&kc)?;
    let before = support::snapshot(&env.sb)?;
    plan_current_path(&env, &kc, &support::real("calico-v3.30.3-policy-only.yaml"))?;
    assert!(step_ids(&env)?.contains(&"align-versions".to_string()));
    let o = run(cli(&env, &kc).args([
        "apply",
        "--yes",
        "--sandbox-time-scale",
        "100",
        "--pause-before",
        "align-versions",
    ]))?;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let nodes: Vec<String> = agent_images(&env)?.into_iter().map(|(n, _)| n).collect();
    // calico-migrate replaces nodes in name order: this one first.
    let first = nodes.first().context("a node")?.clone();
    let ds_gvr = support::gvr("apps", "v1", "daemonsets");
    let mut child = cli(&env, &kc)
        .args(["apply", "--resume", "--yes", "--sandbox-time-scale", "100"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // As soon as the new template is written, enforcement lapses on the node replaced
    // first: its swap cannot be verified.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let ds = env.sb.store().get(&ds_gvr, "kube-system", "calico-node")?;
        let image = ds["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if image.ends_with(":v3.30.3") {
            assert_eq!(ds["spec"]["updateStrategy"]["type"], "OnDelete", "{ds}");
            let mut lapse = DataPlaneFaults::default();
            lapse.lapse.insert(first.clone());
            env.dp.set_faults(&lapse).await?;
            break;
        }
        if std::time::Instant::now() > deadline || child.try_wait()?.is_some() {
            let _ = child.kill();
            let o = child.wait_with_output()?;
            anyhow::bail!("align-versions never started (image {image}): {}", text(&o));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let o = child.wait_with_output()?;
    let said = text(&o);
    assert_eq!(o.status.code(), Some(1), "{said}");
    assert!(
        said.contains("STOPPED at step `align-versions`") && said.contains(&first),
        "{said}"
    );
    let moved = |images: &[(String, String)]| {
        images
            .iter()
            .filter(|(_, i)| i.ends_with(":v3.30.3"))
            .count()
    };
    let at_stop = agent_images(&env)?;
    assert!(
        moved(&at_stop) <= 1 && at_stop[1..].iter().all(|(_, i)| !i.ends_with(":v3.30.3")),
        "no node but the failed one moved: {at_stop:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(agent_images(&env)?, at_stop, "nothing moves while stopped");
    let ds = env.sb.store().get(&ds_gvr, "kube-system", "calico-node")?;
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "OnDelete", "{ds}");

    env.dp.set_faults(&DataPlaneFaults::default()).await?;
    let o = run(cli(&env, &kc).args([
        "apply",
        "--resume",
        "--yes",
        "--sandbox-time-scale",
        "100",
        "--pause-before",
        "detach-helm",
    ]))?;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let done = agent_images(&env)?;
    assert_eq!(moved(&done), nodes.len(), "{done:?}");
    let ds = env.sb.store().get(&ds_gvr, "kube-system", "calico-node")?;
    assert_eq!(
        ds["spec"]["updateStrategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}),
        "the chart's strategy is back"
    );
    // Putting the strategy back restarted nothing.
    let pods = |env: &support::Env| -> Result<Vec<String>> {
        Ok(agents(env)?.into_iter().map(|(_, _, name)| name).collect())
    };
    let settled = pods(&env)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pods(&env)?, settled);
    // (The monitor recorded the lapse the test made, so only the objects are compared.)
    let o = run(cli(&env, &kc).args(["rollback", "--yes", "--sandbox-time-scale", "100"]))?;
    assert_eq!(o.status.code(), Some(0), "rollback: {}", text(&o));
    let diff: Vec<String> = support::differences(&before, &support::snapshot(&env.sb)?);
    assert!(diff.is_empty(), "after rollback: {diff:?}");
    Ok(())
}
