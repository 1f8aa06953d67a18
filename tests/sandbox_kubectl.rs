//! `calico-migrate sandbox` as a process: its kubeconfig works for kube-rs, it
//! stops cleanly on SIGTERM, and the installed kubectl passes tests/kubectl/sandbox.sh.
//! Real helm 3 and 4 (scripts/install-helm.sh) read the seeded aws-calico release, find
//! it gone after `apply` and read it back byte for byte after `rollback`.

use crate::helm_client;
use crate::kubectl_client;
use crate::support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_calico-migrate");

#[tokio::test]
async fn sandbox_command_serves_its_kubeconfig_and_stops_on_sigterm() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let kc = dir.path().join("kc.yaml");
    let mut child = Command::new(BIN)
        .args(["sandbox", "--kubeconfig-out"])
        .arg(&kc)
        .args(["--state-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(Duration::from_secs(20), first).await???;
    assert_eq!(
        line.trim(),
        kc.display().to_string(),
        "prints the kubeconfig path once ready"
    );

    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kc)?,
        &Default::default(),
    )
    .await?;
    let client = kube::Client::try_from(config)?;
    let names: Vec<String> = Api::<Namespace>::all(client)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    for want in ["default", "kube-system", "sandbox-system"] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }

    let pid = child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status()?;
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait()).await??;
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    Ok(())
}

#[test]
fn bad_flags_are_refused_with_a_clear_message() -> Result<()> {
    let out = Command::new(BIN)
        .args(["sandbox", "--fault", "api-errors:7"])
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("api-errors") && err.contains("outside 0..1"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args(["sandbox", "--listen", "0.0.0.0:0"])
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
    Ok(())
}

#[test]
fn kubectl_script_passes() -> Result<()> {
    if let Err(why) = kubectl_client::usable() {
        eprintln!("SKIPPED kubectl_script_passes: {why}");
        return Ok(());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kubectl/sandbox.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("CALICO_MIGRATE", BIN)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{stdout}\n{stderr}",
            script.display(),
            out.status
        );
    }
    assert!(stdout.contains("all steps passed"));
    Ok(())
}

const RELEASE: &str = "aws-calico";
const RELEASE_NS: &str = "kube-system";
/// `helm list` of releases in any state, in every namespace (helm 4 dropped 3's `--all`).
const LIST_EVERY: [&str; 8] = [
    "list",
    "-A",
    "--deployed",
    "--failed",
    "--pending",
    "--superseded",
    "--uninstalled",
    "--uninstalling",
];

/// What helm shows of the release, command by command; after rollback every one must
/// print the same bytes as on the seeded sandbox.
fn reads(major: u32) -> Vec<Vec<&'static str>> {
    let mut r = vec![
        vec!["get", "manifest", RELEASE, "-n", RELEASE_NS],
        vec!["get", "values", RELEASE, "-n", RELEASE_NS],
        vec![
            "get", "values", RELEASE, "-n", RELEASE_NS, "--all", "-o", "json",
        ],
        vec!["get", "all", RELEASE, "-n", RELEASE_NS],
        vec!["history", RELEASE, "-n", RELEASE_NS],
        vec!["history", RELEASE, "-n", RELEASE_NS, "-o", "json"],
        vec!["list", "-A"],
        [&LIST_EVERY[..], &["-o", "json"]].concat(),
    ];
    if major == 3 {
        r.push(vec!["status", RELEASE, "-n", RELEASE_NS]);
        r.push(vec!["status", RELEASE, "-n", RELEASE_NS, "-o", "json"]);
    }
    r
}

/// `calico-migrate <args>` against the served sandbox, as tests/apply.rs runs it; must exit 0.
fn migrate(env: &support::Env, kubeconfig: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new(BIN)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--state-dir")
        .arg(env.state_dir())
        .arg("--no-progress")
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("CALICO_MIGRATE_STATE_DIR")
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "calico-migrate {args:?} exited {:?}:\n{}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Where `after` first differs from `before`, line by line; None when byte-identical.
fn first_difference(before: &str, after: &str) -> Option<String> {
    if before == after {
        return None;
    }
    let (mut b, mut a) = (before.split_inclusive('\n'), after.split_inclusive('\n'));
    for line in 1.. {
        match (b.next(), a.next()) {
            (x, y) if x == y && x.is_some() => continue,
            (x, y) => return Some(format!("line {line}: {x:?} became {y:?}")),
        }
    }
    None
}

/// (kind, name) of the objects the sandbox holds with the release's ownership annotation.
fn owned_by_release(env: &support::Env) -> Result<Vec<(String, String)>> {
    let mut owned: Vec<(String, String)> = support::snapshot(&env.sb)?
        .into_values()
        .filter(|o| {
            o.pointer("/metadata/annotations/meta.helm.sh~1release-name") == Some(&json!(RELEASE))
        })
        .map(|o| {
            (
                o["kind"].as_str().unwrap_or("").to_string(),
                o["metadata"]["name"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    owned.sort();
    Ok(owned)
}

/// Helm `major` against the seeded sandbox (served on 127.0.0.1), then `apply` and
/// `rollback` through the binary at the sandbox's time scale.
async fn helm_sees_apply_and_rollback(major: u32) -> Result<()> {
    let Some(path) = helm_client::find_or_skip(major)? else {
        return Ok(());
    };
    let env = support::env(2).await?;
    let kc = env.state_dir().join("kubeconfig");
    env.server.write_kubeconfig(&kc)?;
    support::plan(&env).await?;
    let helm = helm_client::Helm::new(path, &kc)?;

    // The seeded release, read by helm.
    let list: Value = serde_json::from_str(&helm.ok(&["list", "-A", "-o", "json"])?)?;
    let rows = list.as_array().context("helm list -o json is an array")?;
    assert_eq!(rows.len(), 1, "{list}");
    for (k, want) in [
        ("name", "aws-calico"),
        ("namespace", "kube-system"),
        ("revision", "1"),
        ("status", "deployed"),
        ("chart", "aws-calico-0.3.10"),
        ("app_version", "3.19.1"),
    ] {
        assert_eq!(rows[0][k], json!(want), "helm list: {k} in {list}");
    }
    let history: Value =
        serde_json::from_str(&helm.ok(&["history", RELEASE, "-n", RELEASE_NS, "-o", "json"])?)?;
    let history = history
        .as_array()
        .context("helm history -o json is an array")?;
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0]["revision"], json!(1));
    assert_eq!(history[0]["status"], json!("deployed"));
    assert_eq!(history[0]["description"], json!("Install complete"));

    // The manifest names exactly the objects the sandbox holds for the release.
    let manifest = helm.ok(&["get", "manifest", RELEASE, "-n", RELEASE_NS])?;
    let mut listed: Vec<(String, String)> = calico_migrate::helm::manifest_objects(&manifest)?
        .into_iter()
        .map(|o| (o.kind, o.name))
        .collect();
    listed.sort();
    assert!(
        listed.contains(&("DaemonSet".into(), "calico-node".into())),
        "{listed:?}"
    );
    assert_eq!(
        listed,
        owned_by_release(&env)?,
        "helm get manifest vs the sandbox"
    );
    assert!(manifest.contains("apiVersion: policy/v1beta1\nkind: PodDisruptionBudget"));

    // The user-supplied values are the ones stored in the release record.
    let secret = env.sb.store().get(
        &support::gvr("", "v1", "secrets"),
        RELEASE_NS,
        "sh.helm.release.v1.aws-calico.v1",
    )?;
    let stored = calico_migrate::helm::decode_release_secret(&secret)?;
    let values: Value = serde_json::from_str(
        &helm.ok(&["get", "values", RELEASE, "-n", RELEASE_NS, "-o", "json"])?,
    )?;
    assert_eq!(values, Value::Object(stored.config), "helm get values");
    assert_eq!(
        values["calico"]["node"]["resources"]["limits"]["memory"],
        json!("256Mi")
    );

    if major == 3 {
        let status: Value =
            serde_json::from_str(&helm.ok(&["status", RELEASE, "-n", RELEASE_NS, "-o", "json"])?)?;
        assert_eq!(status["info"]["status"], json!("deployed"), "{status}");
        assert_eq!(status["version"], json!(1), "{status}");
    } else {
        // Helm 4 maps every manifest object to a served API even for `status`
        // (helm v4.1.4 pkg/action/status.go:62-73 calls KubeClient.Build always; 3.17
        // only with --show-resources). The release, installed when Kubernetes still
        // served policy/v1beta1, holds a PodDisruptionBudget of that version, removed
        // in 1.25: on this 1.33 sandbox, as on a real EKS 1.25+ cluster, helm 4 says so.
        let err = helm.fails(&["status", RELEASE, "-n", RELEASE_NS])?;
        assert!(
            err.contains(r#"resource mapping not found for name: "calico-typha""#)
                && err.contains(
                    r#"no matches for kind "PodDisruptionBudget" in version "policy/v1beta1""#
                ),
            "{err}"
        );
    }

    let before: Vec<String> = reads(major)
        .iter()
        .map(|a| helm.ok(a))
        .collect::<Result<_>>()?;

    // After apply (detach-helm), helm knows no such release.
    migrate(
        &env,
        &kc,
        &["apply", "--yes", "--sandbox-time-scale", "100"],
    )?;
    let table = helm.ok(&["list", "-A"])?;
    assert!(
        !table.contains(RELEASE),
        "helm list -A after apply:\n{table}"
    );
    let every = [&LIST_EVERY[..], &["-o", "json"]].concat();
    let rows: Value = serde_json::from_str(&helm.ok(&every)?)?;
    assert_eq!(rows, json!([]), "helm list after apply");
    for args in [
        ["status", RELEASE, "-n", RELEASE_NS],
        ["history", RELEASE, "-n", RELEASE_NS],
    ] {
        let err = helm.fails(&args)?;
        assert_eq!(
            err.trim(),
            "Error: release: not found",
            "helm {args:?} after apply"
        );
    }

    // After rollback, every read prints what it printed on the seeded sandbox.
    migrate(
        &env,
        &kc,
        &["rollback", "--yes", "--sandbox-time-scale", "100"],
    )?;
    for (args, want) in reads(major).iter().zip(&before) {
        let got = helm.ok(args)?;
        if let Some(d) = first_difference(want, &got) {
            panic!("helm {args:?} after rollback differs from the seeded release: {d}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm3_reads_the_release_apply_removes_it_rollback_restores_it_byte_for_byte() -> Result<()>
{
    helm_sees_apply_and_rollback(3).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm4_reads_the_release_apply_removes_it_rollback_restores_it_byte_for_byte() -> Result<()>
{
    helm_sees_apply_and_rollback(4).await
}
