//! The operator-based aws-calico 0.3.11 as real Helm installs it from the published
//! tarball, moved by plan and apply to the current operator line (the real v3.30.3
//! operator manifest) and back by rollback, with real Helm reading the release before
//! and after.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::helm_client::Helm;
use crate::sandbox_kubectl::{
    CALICO_POLICIES, RELEASE, RELEASE_NS, SandboxProcess, crd_names, helm_and_chart, real_chart,
};

const BIN: &str = env!("CARGO_BIN_EXE_calico-migrate");
/// The sandbox's simulated seconds per real second, told to the tool as well.
const SCALE: &str = "20";
const OPERATOR_MANIFEST: &str = "calico-v3.30.3-operator-crds-and-operator.yaml";

/// `calico-migrate <args>` against the sandbox with its own state dir.
fn tool(sp: &SandboxProcess, state: &Path, args: &[&str]) -> Result<Output> {
    tool_at(&sp.kubeconfig, state, args)
}

/// `calico-migrate <args>` with only this kubeconfig and state dir, whatever its exit.
fn tool_at(kubeconfig: &Path, state: &Path, args: &[&str]) -> Result<Output> {
    Ok(Command::new(BIN)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--state-dir")
        .arg(state)
        .arg("--no-progress")
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("CALICO_MIGRATE_STATE_DIR")
        .stdin(Stdio::null())
        .output()?)
}

/// `tool`, which must exit 0: its stdout.
fn tool_ok(sp: &SandboxProcess, state: &Path, args: &[&str]) -> Result<String> {
    let out = tool(sp, state, args)?;
    if !out.status.success() {
        bail!(
            "calico-migrate {args:?} exited {:?}:\n{}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn json_of(sp: &SandboxProcess, args: &[&str]) -> Result<Value> {
    Ok(serde_json::from_str(&sp.ok(args)?)?)
}

/// The image of the first container of `kind/name` in `ns`.
fn image(sp: &SandboxProcess, kind: &str, ns: &str, name: &str) -> Result<String> {
    let o = json_of(sp, &["get", kind, name, "-n", ns, "-o", "json"])?;
    Ok(o.pointer("/spec/template/spec/containers/0/image")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string())
}

/// Installation `default` as kubectl reads it.
fn installation(sp: &SandboxProcess) -> Result<Value> {
    json_of(
        sp,
        &[
            "get",
            "installations.operator.tigera.io",
            "default",
            "-o",
            "json",
        ],
    )
}

/// The operator's image tag and calico-system calico-node's.
fn versions(sp: &SandboxProcess) -> Result<(String, String)> {
    let tag = |i: String| i.rsplit_once(':').map_or(i.clone(), |(_, t)| t.to_string());
    Ok((
        tag(image(
            sp,
            "deployment",
            "tigera-operator",
            "tigera-operator",
        )?),
        tag(image(sp, "daemonset", "calico-system", "calico-node")?),
    ))
}

fn condition(ts: &Value, t: &str) -> bool {
    ts.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == t && c["status"] == "True"))
}

/// Wait (60 s at most) until TigeraStatus calico says `t` (Available, Degraded).
async fn wait_status(sp: &SandboxProcess, t: &str) -> Result<Value> {
    let start = Instant::now();
    loop {
        let out = sp.kubectl(&["get", "tigerastatus", "calico", "-o", "json"])?;
        if out.status.success() {
            let ts: Value = serde_json::from_slice(&out.stdout)?;
            if condition(&ts, t) {
                return Ok(ts);
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("TigeraStatus calico is not {t} after 60 s: {ts}");
            }
        } else if start.elapsed() > Duration::from_secs(60) {
            bail!("no TigeraStatus calico after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What must survive anything Helm does after the release is detached: the CRDs, the
/// policies, the operator and its Installation.
fn calico_needs(sp: &SandboxProcess) -> Result<Vec<String>> {
    let mut out = crd_names(sp)?;
    for args in [
        &[
            "get",
            "globalnetworkpolicies.crd.projectcalico.org",
            "-o",
            "name",
        ][..],
        &[
            "get",
            "networkpolicies.crd.projectcalico.org",
            "-A",
            "-o",
            "name",
        ],
        &["get", "installations.operator.tigera.io", "-o", "name"],
        &["get", "deployment", "-n", "tigera-operator", "-o", "name"],
        &["get", "daemonset", "-n", "calico-system", "-o", "name"],
    ] {
        out.extend(sp.ok(args)?.lines().map(String::from));
    }
    Ok(out)
}

/// The helm reads that must print the same before apply and after rollback.
fn helm_reads(helm: &Helm) -> Result<Vec<String>> {
    [
        &["get", "manifest", RELEASE, "-n", RELEASE_NS][..],
        &["get", "values", RELEASE, "-n", RELEASE_NS, "-o", "json"],
        &["get", "hooks", RELEASE, "-n", RELEASE_NS],
        &["history", RELEASE, "-n", RELEASE_NS, "-o", "json"],
    ]
    .iter()
    .map(|a| helm.ok(a))
    .collect()
}

/// The sandbox at 1.24 with real helm `major`'s install of the published 0.3.11, the
/// simulated v1.20.1 operator's calico-system Available, and a Calico policy of each
/// kind; None when helm, kubectl or an artifact is missing (skipped).
async fn installed(
    test: &str,
    major: u32,
    extra: &[&str],
) -> Result<Option<(SandboxProcess, Helm, PathBuf)>> {
    let Some((path, chart)) = helm_and_chart(test, major, "aws-calico-0.3.11.tgz")? else {
        return Ok(None);
    };
    let Some(manifest) = real_chart(test, OPERATOR_MANIFEST) else {
        return Ok(None);
    };
    let base = [
        "--nodes",
        "3",
        "--namespaces",
        "2",
        "--no-calico",
        "--kubernetes-version",
        "1.24",
        "--time-scale",
        SCALE,
    ];
    let sp = SandboxProcess::spawn(&[&base[..], extra].concat()).await?;
    let helm = Helm::new(path, &sp.kubeconfig)?;
    let out = helm.ok(&["install", RELEASE, chart.as_str(), "-n", RELEASE_NS])?;
    assert!(out.contains("STATUS: deployed"), "helm install:\n{out}");
    wait_status(&sp, "Available").await?;
    assert_eq!(
        image(&sp, "daemonset", "calico-system", "calico-node")?,
        "docker.io/calico/node:v3.20.0"
    );
    let file = sp.write("policies.yaml", CALICO_POLICIES)?;
    sp.ok(&["create", "-f", &file])?;
    Ok(Some((sp, helm, PathBuf::from(manifest))))
}

/// Issue 23's first must-show: real helm installs the published 0.3.11 at 1.24; plan and
/// apply move it to operator v1.38.6 (Calico v3.30.3); the real `helm uninstall` then
/// deletes nothing Calico needs and every node passes a probe round; rollback returns to
/// the release, which real helm reads back as it was.
async fn a_real_0_3_11_release_moves_to_the_current_operator_and_back(major: u32) -> Result<()> {
    let test = format!(
        "operator_chart::helm{major}_0_3_11_release_moves_to_the_current_operator_and_back"
    );
    let Some((sp, helm, manifest)) = installed(&test, major, &[]).await? else {
        return Ok(());
    };
    let state = tempfile::tempdir()?;
    let st = state.path();
    let templated = crd_names(&sp)?;
    assert_eq!(templated.len(), 19, "{templated:?}");
    let before = helm_reads(&helm)?;

    let plan = tool_ok(
        &sp,
        st,
        &[
            "plan",
            "--operator-manifest",
            &manifest.display().to_string(),
        ],
    )?;
    assert!(
        plan.contains("profile aws-calico-0.3.11-v3.30 chosen for chart aws-calico 0.3.11"),
        "{plan}"
    );
    for step in [
        "keep-release",
        "detach-helm",
        "upgrade-operator",
        "verify-completion",
    ] {
        assert!(plan.contains(&format!("[{step}]")), "{step} in:\n{plan}");
    }
    assert!(!plan.contains("[SOURCE_OPERATOR_CANNOT_RENDER]"), "{plan}");
    tool_ok(&sp, st, &["apply", "--yes", "--sandbox-time-scale", SCALE])?;

    assert_eq!(versions(&sp)?, ("v1.38.6".into(), "v3.30.3".into()));
    let inst = installation(&sp)?;
    assert_eq!(inst["status"]["calicoVersion"], json!("v3.30.3"), "{inst}");
    let now = crd_names(&sp)?;
    assert!(templated.iter().all(|c| now.contains(c)), "{now:?}");
    for crd in &templated {
        let o = json_of(&sp, &["get", "crd", crd, "-o", "json"])?;
        assert_eq!(
            o.pointer("/metadata/annotations/helm.sh~1resource-policy"),
            Some(&json!("keep")),
            "{crd}"
        );
    }

    // Helm knows no such release now; its uninstall deletes nothing.
    let kept = calico_needs(&sp)?;
    assert!(
        kept.iter().any(|o| o.ends_with("/deny-aws-imds")),
        "{kept:?}"
    );
    let err = helm.fails(&["uninstall", RELEASE, "-n", RELEASE_NS])?;
    assert!(err.contains("release: not found"), "helm uninstall: {err}");
    assert_eq!(calico_needs(&sp)?, kept, "helm uninstall deleted something");
    // Without --adopt-into-release the projectcalico chart refuses the operator's objects.
    if let Some(tgz) = real_chart(&test, "tigera-operator-v3.30.3.tgz") {
        let err = helm.fails(&["install", "calico", &tgz, "-n", "tigera-operator"])?;
        assert!(
            err.contains("invalid ownership metadata")
                && err.contains("cannot be imported into the current release"),
            "helm install of the tigera-operator chart: {err}"
        );
        assert_eq!(
            calico_needs(&sp)?,
            kept,
            "the refused install changed something"
        );
    }
    let check = tool(&sp, st, &["check"])?;
    assert!(
        check.status.success(),
        "check after apply: {}\n{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    tool_ok(
        &sp,
        st,
        &["rollback", "--yes", "--sandbox-time-scale", SCALE],
    )?;
    assert_eq!(versions(&sp)?, ("v1.20.1".into(), "v3.20.0".into()));
    assert_eq!(
        crd_names(&sp)?,
        templated,
        "the manifest's new CRDs are gone"
    );
    wait_status(&sp, "Available").await?;
    let status: Value =
        serde_json::from_str(&helm.ok(&["status", RELEASE, "-n", RELEASE_NS, "-o", "json"])?)?;
    assert_eq!(status["info"]["status"], json!("deployed"), "{status}");
    let after = helm_reads(&helm)?;
    for (want, got) in before.iter().zip(&after) {
        assert_eq!(got, want, "helm reads the release back as it was");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm3_0_3_11_release_moves_to_the_current_operator_and_back() -> Result<()> {
    a_real_0_3_11_release_moves_to_the_current_operator_and_back(3).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm4_0_3_11_release_moves_to_the_current_operator_and_back() -> Result<()> {
    a_real_0_3_11_release_moves_to_the_current_operator_and_back(4).await
}

/// Issue 23's second must-show: the release installed at 1.24 and the control plane
/// upgraded one minor at a time to 1.29 before plan, as EKS does. There the v1.20.1
/// operator cannot render (policy/v1beta1) and TigeraStatus is Degraded; plan says so,
/// apply moves it to the current line, and rollback past upgrade-operator is refused
/// with the reason, since the operator it would put back cannot run there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_0_3_11_release_on_1_29_moves_to_the_current_operator() -> Result<()> {
    let test = "operator_chart::a_0_3_11_release_on_1_29_moves_to_the_current_operator";
    let data = tempfile::tempdir()?;
    let dir = data.path().display().to_string();
    let Some((sp, _helm, manifest)) = installed(test, 3, &["--data-dir", &dir]).await? else {
        return Ok(());
    };
    sp.stop()?;
    let mut sp = None;
    for minor in 25..=29 {
        if let Some(running) = sp.take() {
            SandboxProcess::stop(running)?;
        }
        let version = format!("1.{minor}");
        sp = Some(
            SandboxProcess::spawn(&[
                "--data-dir",
                &dir,
                "--kubernetes-version",
                &version,
                "--time-scale",
                SCALE,
            ])
            .await?,
        );
    }
    let sp = sp.context("running at 1.29")?;
    let ts = wait_status(&sp, "Degraded").await?;
    assert!(
        ts.to_string().contains(
            r#"no matches for kind \"PodDisruptionBudget\" in version \"policy/v1beta1\""#
        ),
        "{ts}"
    );

    let state = tempfile::tempdir()?;
    let st = state.path();
    let plan = tool_ok(
        &sp,
        st,
        &[
            "plan",
            "--operator-manifest",
            &manifest.display().to_string(),
        ],
    )?;
    assert!(
        plan.contains(
            "[SOURCE_OPERATOR_CANNOT_RENDER] tigera-operator v1.20.1 runs on Kubernetes 1.29"
        ),
        "{plan}"
    );
    assert!(plan.contains("BLOCKERS (0)"), "{plan}");
    tool_ok(&sp, st, &["apply", "--yes", "--sandbox-time-scale", SCALE])?;
    assert_eq!(versions(&sp)?, ("v1.38.6".into(), "v3.30.3".into()));
    wait_status(&sp, "Available").await?;

    let out = tool(
        &sp,
        st,
        &["rollback", "--yes", "--sandbox-time-scale", SCALE],
    )?;
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("upgrade-operator cannot be rolled back on Kubernetes v1.29")
            && err.contains("roll forward instead"),
        "{err}"
    );
    assert_eq!(
        image(&sp, "deployment", "tigera-operator", "tigera-operator")?,
        "quay.io/tigera/operator:v1.38.6",
        "the refused rollback left the operator as it was"
    );
    Ok(())
}

/// keep-release on its own makes the real `helm uninstall` of the 0.3.11 release delete
/// nothing Calico needs: helm keeps every object marked `helm.sh/resource-policy: keep`
/// and removes only its records (compare
/// sandbox_kubectl::helm3_uninstall_of_0_3_11_deletes_its_crds_and_every_calico_policy,
/// the same uninstall without it). apply then resumes with nothing left to detach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_keep_release_the_real_helm_uninstall_deletes_nothing_calico_needs() -> Result<()> {
    let test =
        "operator_chart::after_keep_release_the_real_helm_uninstall_deletes_nothing_calico_needs";
    let Some((sp, helm, manifest)) = installed(test, 3, &[]).await? else {
        return Ok(());
    };
    let state = tempfile::tempdir()?;
    let st = state.path();
    tool_ok(
        &sp,
        st,
        &[
            "plan",
            "--operator-manifest",
            &manifest.display().to_string(),
        ],
    )?;
    tool_ok(
        &sp,
        st,
        &[
            "apply",
            "--yes",
            "--pause-before",
            "detach-helm",
            "--sandbox-time-scale",
            SCALE,
        ],
    )?;
    let before = calico_needs(&sp)?;
    assert_eq!(crd_names(&sp)?.len(), 19);
    let out = helm.ok(&["uninstall", RELEASE, "-n", RELEASE_NS])?;
    assert!(
        out.contains("These resources were kept due to the resource policy")
            && out
                .contains("[CustomResourceDefinition] globalnetworkpolicies.crd.projectcalico.org"),
        "helm uninstall:\n{out}"
    );
    assert_eq!(
        calico_needs(&sp)?,
        before,
        "helm uninstall deleted something"
    );
    assert_eq!(helm.ok(&["list", "-A", "-q"])?.trim(), "");

    tool_ok(
        &sp,
        st,
        &["apply", "--resume", "--yes", "--sandbox-time-scale", SCALE],
    )?;
    assert_eq!(
        image(&sp, "daemonset", "calico-system", "calico-node")?,
        "docker.io/calico/node:v3.30.3"
    );
    Ok(())
}

/// The plan's `helm install` of a shell-quoted command line: words, with '…' kept whole.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '\'' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Issue 23's third must-show: with `--adopt-into-release tigera-operator/calico` the
/// real `helm install` of the projectcalico tigera-operator chart v3.30.3 — the command
/// the plan prints, with the published tarball for the repository's chart — adopts the
/// operator's objects instead of failing, and changes neither the operator nor the
/// Installation.
async fn the_tigera_operator_chart_adopts_the_objects(major: u32) -> Result<()> {
    let test = format!(
        "operator_chart::helm{major}_install_of_the_tigera_operator_chart_adopts_the_objects"
    );
    let Some(tgz) = real_chart(&test, "tigera-operator-v3.30.3.tgz") else {
        return Ok(());
    };
    let Some((sp, helm, manifest)) = installed(&test, major, &[]).await? else {
        return Ok(());
    };
    let state = tempfile::tempdir()?;
    let st = state.path();
    let plan = tool_ok(
        &sp,
        st,
        &[
            "plan",
            "--operator-manifest",
            &manifest.display().to_string(),
            "--adopt-into-release",
            "tigera-operator/calico",
        ],
    )?;
    assert!(plan.contains("[adopt-into-release]"), "{plan}");
    let command = plan
        .lines()
        .find_map(|l| l.trim().strip_prefix("- run by the team, after apply: "))
        .and_then(|l| l.split(';').next())
        .map(String::from)
        .context("the plan prints the helm install")?;
    let mut args = words(&command);
    assert_eq!(args[..3], ["helm", "install", "calico"], "{command}");
    assert_eq!(args[3], "projectcalico/tigera-operator", "{command}");
    args[3] = tgz;
    let version = args
        .iter()
        .position(|a| a == "--version")
        .context("--version")?;
    assert_eq!(args[version + 1], "v3.30.3", "{command}");
    args.drain(version..version + 2);
    tool_ok(&sp, st, &["apply", "--yes", "--sandbox-time-scale", SCALE])?;
    let spec = installation(&sp)?["spec"].clone();

    let arg_refs: Vec<&str> = args[1..].iter().map(String::as_str).collect();
    let out = helm.ok(&arg_refs)?;
    assert!(out.contains("STATUS: deployed"), "helm install:\n{out}");
    let rows: Value =
        serde_json::from_str(&helm.ok(&["list", "-n", "tigera-operator", "-o", "json"])?)?;
    assert_eq!(rows[0]["name"], json!("calico"), "{rows}");
    assert_eq!(rows[0]["chart"], json!("tigera-operator-v3.30.3"), "{rows}");
    assert_eq!(
        image(&sp, "deployment", "tigera-operator", "tigera-operator")?,
        "quay.io/tigera/operator:v1.38.6"
    );
    let after = installation(&sp)?["spec"].clone();
    assert_eq!(
        after["cni"], spec["cni"],
        "the Installation's CNI as it was"
    );
    for kind in [
        "apiservers.operator.tigera.io",
        "whiskers.operator.tigera.io",
        "goldmanes.operator.tigera.io",
    ] {
        assert_eq!(
            sp.ok(&["get", kind, "-o", "name"])?.trim(),
            "",
            "{kind}: nothing added"
        );
    }
    wait_status(&sp, "Available").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm3_install_of_the_tigera_operator_chart_adopts_the_objects() -> Result<()> {
    the_tigera_operator_chart_adopts_the_objects(3).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm4_install_of_the_tigera_operator_chart_adopts_the_objects() -> Result<()> {
    the_tigera_operator_chart_adopts_the_objects(4).await
}

/// `calico-migrate <args>` against an in-process sandbox `env`, whatever its exit.
fn tool_env(env: &crate::support::Env, kc: &Path, args: &[&str]) -> Result<Output> {
    tool_at(kc, &env.state_dir(), args)
}

fn said(o: &Output) -> String {
    format!(
        "exit {:?}\n{}\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// calico-system calico-node pods by their image's tag.
fn pod_versions(env: &crate::support::Env) -> Result<Vec<String>> {
    let pods = env.sb.store().list(
        &crate::support::gvr("", "v1", "pods"),
        Some("calico-system"),
        &Default::default(),
    )?;
    Ok(pods
        .items
        .iter()
        .filter(|p| p.pointer("/metadata/labels/k8s-app") == Some(&json!("calico-node")))
        .filter_map(|p| {
            p.pointer("/spec/containers/0/image")
                .and_then(Value::as_str)
        })
        .map(|i| i.rsplit_once(':').map_or(i, |(_, t)| t).to_string())
        .collect())
}

/// The operator's upgrade of calico-system stops at the first node that fails its
/// checks, as the takeover does: agents that reset established connections when they
/// are replaced break the connections held across the rollout at the first node; the
/// step freezes the operator and sets calico-node to OnDelete, so at most one node more
/// runs the new agent and none after; once the cause is gone, `apply --resume` starts
/// the operator again, which renders its RollingUpdate back, and finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_upgrade_stops_at_the_first_node_that_fails() -> Result<()> {
    let test = "operator_chart::the_operators_upgrade_stops_at_the_first_node_that_fails";
    let Some(manifest) = real_chart(test, OPERATOR_MANIFEST) else {
        return Ok(());
    };
    let cfg = calico_migrate::sandbox::scenario::ScenarioConfig {
        nodes: 5,
        namespaces: 2,
        pods_per_namespace: 1,
        chart: calico_migrate::sandbox::scenario::ChartGeneration::V0_3_11,
        ..Default::default()
    };
    // Time scale 10: a new agent is Ready 300 ms after its pod is created, longer than
    // the tool takes from seeing the render to halting the rollout.
    let env = crate::support::env_at(
        cfg,
        10.0,
        calico_migrate::sandbox::KubernetesVersion::new(24)?,
    )
    .await?;
    let kc = env.state_dir().join("kubeconfig");
    env.server.write_kubeconfig(&kc)?;
    let o = tool_env(&env, &kc, &["plan", "--operator-manifest", &manifest])?;
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));

    let nodes: Vec<String> = env
        .sb
        .store()
        .list(
            &crate::support::gvr("", "v1", "nodes"),
            None,
            &Default::default(),
        )?
        .items
        .iter()
        .filter_map(|n| {
            n.pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .collect();
    let mut reset = calico_migrate::sandbox::dataplane::DataPlaneFaults::default();
    reset.conn_reset.extend(nodes.iter().cloned());
    env.dp.set_faults(&reset).await?;
    let o = tool_env(
        &env,
        &kc,
        &["apply", "--yes", "--sandbox-time-scale", "100"],
    )?;
    let text = said(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("upgrade-operator")
            && text.contains("BROKE")
            && text.contains("keeps the operator frozen and calico-system calico-node on OnDelete"),
        "{text}"
    );
    let ds = env.sb.store().get(
        &crate::support::gvr("apps", "v1", "daemonsets"),
        "calico-system",
        "calico-node",
    )?;
    assert_eq!(
        ds["spec"]["updateStrategy"]["type"],
        json!("OnDelete"),
        "{ds}"
    );
    let op = env.sb.store().get(
        &crate::support::gvr("apps", "v1", "deployments"),
        "tigera-operator",
        "tigera-operator",
    )?;
    assert_eq!(op["spec"]["replicas"], json!(0), "the operator is frozen");
    let moved = |v: &[String]| v.iter().filter(|t| *t == "v3.30.3").count();
    let at_stop = pod_versions(&env)?;
    // The takeover's promise: a failed check never finds more than nodes_at_a_time (1)
    // node moved past the one that failed (here the first, replaced by the DaemonSet
    // controller before the halt).
    assert!(
        (1..=2).contains(&moved(&at_stop)),
        "the failed node and at most one more run the new agent: {at_stop:?}"
    );
    // Nothing moves while it is stopped.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        moved(&pod_versions(&env)?),
        moved(&at_stop),
        "a node moved after the stop"
    );

    env.dp
        .set_faults(&calico_migrate::sandbox::dataplane::DataPlaneFaults::default())
        .await?;
    let o = tool_env(
        &env,
        &kc,
        &["apply", "--resume", "--yes", "--sandbox-time-scale", "100"],
    )?;
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    let done = pod_versions(&env)?;
    assert_eq!(moved(&done), nodes.len(), "{done:?}");
    Ok(())
}
