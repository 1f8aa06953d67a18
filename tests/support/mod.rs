//! A migration-ready sandbox for step, apply and rollback tests: aws-calico 0.3.10
//! seeded, controllers and data plane running at a fast time scale, served on
//! 127.0.0.1 (the library's `testkit` rig), a saved plan in a temp state dir, and
//! the steps' world built on it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use calico_migrate::checks::RoundOptions;
use calico_migrate::cluster::objects::Objects;
use calico_migrate::engine::RetryPolicy;
use calico_migrate::migration::plan::SavedPlan;
use calico_migrate::migration::profile::Profile;
use calico_migrate::migration::world::{ApplyOptions, World};
use calico_migrate::sandbox::controllers::ControllersHandle;
use calico_migrate::sandbox::dataplane::DataPlane;
use calico_migrate::sandbox::scenario::{self, ScenarioConfig};
use calico_migrate::sandbox::{Gvr, Sandbox, ServeHandle};
use calico_migrate::testkit::{Rig, RigOptions};
use serde_json::Value;

pub struct Env {
    pub sb: Sandbox,
    /// Dropped with the environment, which stops the controllers.
    pub controllers: ControllersHandle,
    pub dp: DataPlane,
    pub server: ServeHandle,
    pub client: kube::Client,
    pub state: tempfile::TempDir,
}

impl Env {
    pub fn state_dir(&self) -> PathBuf {
        self.state.path().to_path_buf()
    }
}

/// The sandbox at time scale 100 (a simulated second is 10 ms).
pub async fn env(nodes: usize) -> Result<Env> {
    env_with(
        ScenarioConfig {
            nodes,
            namespaces: 3,
            pods_per_namespace: 1,
            ..ScenarioConfig::default()
        },
        100.0,
    )
    .await
}

pub async fn env_with(cfg: ScenarioConfig, time_scale: f64) -> Result<Env> {
    env_at(cfg, time_scale, RigOptions::default().kubernetes_version).await
}

/// A sandbox of `nodes` nodes serving Kubernetes 1.24: the newest minor the
/// same-version path (operator v1.17.4) runs on.
pub async fn env_1_24(nodes: usize) -> Result<Env> {
    let cfg = ScenarioConfig {
        nodes,
        namespaces: 3,
        pods_per_namespace: 1,
        ..ScenarioConfig::default()
    };
    env_at(
        cfg,
        100.0,
        calico_migrate::sandbox::KubernetesVersion::new(24)?,
    )
    .await
}

pub async fn env_at(
    cfg: ScenarioConfig,
    time_scale: f64,
    kubernetes_version: calico_migrate::sandbox::KubernetesVersion,
) -> Result<Env> {
    let Rig {
        sb,
        controllers,
        dp,
        server,
        client,
    } = Rig::start_scenario(
        &cfg,
        &RigOptions {
            time_scale,
            kubernetes_version,
            ..RigOptions::default()
        },
    )
    .await?;
    Ok(Env {
        sb,
        controllers,
        dp,
        server,
        client,
        state: tempfile::tempdir()?,
    })
}

/// The operator manifest the sandbox's operator simulation answers to.
pub fn operator_manifest(profile: &Profile) -> Vec<Value> {
    scenario::operator::operator_manifest(&format!(
        "quay.io/tigera/operator:{}",
        profile.target.operator_version
    ))
}

/// Read the cluster, build the plan with the default profile and the sandbox's
/// operator manifest pinned, and save both in the state dir, as `calico-migrate plan
/// --operator-manifest` does.
pub async fn plan(env: &Env) -> Result<(SavedPlan, Profile)> {
    let saved = calico_migrate::rehearse::make_plan(&env.client, &env.state_dir()).await?;
    let profile: Profile = serde_json::from_value(
        saved
            .profile
            .clone()
            .context("the saved plan carries its profile")?,
    )?;
    Ok((saved, profile))
}

/// Options for the sandbox's time scale: no pauses, short polls, short timeouts.
pub fn fast_options(profile: &Profile) -> ApplyOptions {
    let mut o = ApplyOptions::from_profile(profile);
    o.pause = Duration::ZERO;
    o.poll = Duration::from_millis(50);
    o.node_ready_timeout = Duration::from_secs(30);
    o.max_swap = Duration::from_secs(20);
    o.round = RoundOptions {
        concurrency: 16,
        ready_timeout: Duration::from_secs(30),
        connect_timeout: Duration::from_millis(500),
        ..RoundOptions::default()
    };
    o
}

/// The steps' world on this sandbox and plan.
pub fn world(env: &Env, saved: &SavedPlan, profile: &Profile) -> World {
    World::new(
        Objects::new(env.client.clone(), RetryPolicy::default()),
        profile.clone(),
        saved.plan.clone(),
        &env.state_dir(),
        // The manifests the plan pinned, read back as apply reads them.
        calico_migrate::migration::session::manifests(&env.state_dir(), &saved.plan, profile)
            .unwrap_or_else(|e| panic!("the plan's manifests: {e:#}")),
        fast_options(profile),
    )
}

/// Every stored object except volatile ones and the probe workload, stripped of
/// server-managed fields: the "cluster equals the baseline" comparison.
pub fn snapshot(sb: &Sandbox) -> Result<BTreeMap<String, Value>> {
    Ok(calico_migrate::sandbox::snapshot::snapshot(sb)?)
}

/// Keys whose objects differ between two snapshots (added, removed or changed).
pub fn differences(a: &BTreeMap<String, Value>, b: &BTreeMap<String, Value>) -> Vec<String> {
    calico_migrate::sandbox::snapshot::differences(a, b)
}

pub fn gvr(group: &str, version: &str, resource: &str) -> Gvr {
    Gvr::new(group, version, resource)
}

/// A real artifact of ../shared/real (PROVENANCE.md there says where each comes from).
pub fn real(name: &str) -> std::path::PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/real")
        .join(name);
    assert!(
        p.is_file(),
        "{} is missing: the real charts and manifests live in ../shared/real next to the \
         repository (see its PROVENANCE.md); these tests need them",
        p.display()
    );
    p
}

/// The aws-calico 0.3.10 chart's `crds/crds.yaml` as it shipped (apiextensions
/// v1beta1), read from `../shared/real/aws-calico-0.3.10.tgz` next to the repository
/// with `tar`; None after one `SKIPPED` line when the chart is not there.
pub fn real_chart_crds(test: &str) -> Result<Option<String>> {
    let tgz = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/real/aws-calico-0.3.10.tgz");
    if !tgz.is_file() {
        eprintln!(
            "SKIPPED {test}: {} is absent (see ../shared/real/PROVENANCE.md)",
            tgz.display()
        );
        return Ok(None);
    }
    let out = std::process::Command::new("tar")
        .arg("-xzOf")
        .arg(&tgz)
        .arg("aws-calico/crds/crds.yaml")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "tar -xzOf {} aws-calico/crds/crds.yaml: {}",
        tgz.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(Some(String::from_utf8(out.stdout)?))
}

/// The YAML documents of a multi-document file, empty ones (comments only) left out.
pub fn yaml_documents(text: &str) -> Result<Vec<Value>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text)
        .map_err(|e| anyhow::anyhow!("the YAML does not parse: {e}"))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}
