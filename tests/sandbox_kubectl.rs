//! `calico-migrate sandbox` as a process: its kubeconfig works for kube-rs, it
//! stops cleanly on SIGTERM, and the installed kubectl passes tests/kubectl/sandbox.sh.
//! Real helm 3 and 4 (scripts/install-helm.sh) read the seeded aws-calico release, find
//! it gone after `apply` and read it back byte for byte after `rollback`.

use crate::helm_client;
use crate::kubectl_client;
use crate::support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
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

pub(crate) const RELEASE: &str = "aws-calico";
pub(crate) const RELEASE_NS: &str = "kube-system";
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
        // in 1.25: on this 1.34 sandbox, as on a real EKS 1.25+ cluster, helm 4 says so.
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
    // And `helm uninstall` finds nothing to uninstall: it deletes nothing (unlike 0.3.11's,
    // helm_uninstall_of_0_3_11_deletes_its_crds_and_every_calico_policy).
    let before_uninstall = support::snapshot(&env.sb)?;
    let err = helm.fails(&["uninstall", RELEASE, "-n", RELEASE_NS])?;
    assert!(
        err.contains("release: not found"),
        "helm uninstall after apply: {err}"
    );
    let deleted = support::differences(&before_uninstall, &support::snapshot(&env.sb)?);
    assert!(deleted.is_empty(), "helm uninstall changed: {deleted:?}");

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

/// `calico-migrate sandbox` as a process: ready once it printed its kubeconfig's path;
/// killed when dropped.
pub(crate) struct SandboxProcess {
    child: std::process::Child,
    dir: tempfile::TempDir,
    pub(crate) kubeconfig: std::path::PathBuf,
}

impl SandboxProcess {
    /// `sandbox --empty --no-controllers` with `extra` flags.
    async fn start(extra: &[&str]) -> Result<SandboxProcess> {
        Self::spawn(&[&["--empty", "--no-controllers"], extra].concat()).await
    }

    /// The seeded EKS cluster (2 nodes, 2 user namespaces), no controllers, with `extra`
    /// flags (`--no-calico` for a cluster real helm installs the chart into).
    async fn seeded(extra: &[&str]) -> Result<SandboxProcess> {
        let base = ["--no-controllers", "--nodes", "2", "--namespaces", "2"];
        Self::spawn(&[&base[..], extra].concat()).await
    }

    /// `sandbox <args>`, plus its kubeconfig and state dir in a temp dir.
    pub(crate) async fn spawn(args: &[&str]) -> Result<SandboxProcess> {
        let dir = tempfile::tempdir()?;
        let kubeconfig = dir.path().join("kubeconfig");
        let mut child = Command::new(BIN)
            .arg("sandbox")
            .args(args)
            .arg("--kubeconfig-out")
            .arg(&kubeconfig)
            .arg("--state-dir")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let first = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        });
        let line = tokio::time::timeout(Duration::from_secs(20), first).await???;
        let sp = SandboxProcess {
            child,
            dir,
            kubeconfig,
        };
        anyhow::ensure!(
            line.trim() == sp.kubeconfig.display().to_string(),
            "the sandbox printed {line:?}"
        );
        Ok(sp)
    }

    /// kubectl with only this sandbox's kubeconfig and a discovery cache of its own.
    pub(crate) fn kubectl(&self, args: &[&str]) -> Result<std::process::Output> {
        Ok(Command::new("kubectl")
            .args(args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--request-timeout=20s")
            .env_remove("KUBECONFIG")
            .env("HOME", self.dir.path())
            .env("KUBECACHEDIR", self.dir.path().join("cache"))
            .stdin(Stdio::null())
            .output()?)
    }

    /// kubectl, which must succeed: its stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl(args)?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl {args:?} exited {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// SIGTERM, then its exit: a clean stop saves a `--data-dir` cluster to the last write.
    pub(crate) fn stop(mut self) -> Result<()> {
        let pid = self.child.id().to_string();
        anyhow::ensure!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()?
                .success()
        );
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "exit {status:?} after SIGTERM");
        Ok(())
    }

    /// A file in this sandbox's temp dir.
    pub(crate) fn write(&self, name: &str, text: &str) -> Result<String> {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text)?;
        Ok(p.display().to_string())
    }
}

impl Drop for SandboxProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_unserved_kubernetes_version_is_refused_with_the_range() -> Result<()> {
    for (given, named) in [("1.20", "1.20"), ("v1.35", "1.35")] {
        let out = Command::new(BIN)
            .args(["sandbox", "--kubernetes-version", given])
            .output()?;
        assert!(!out.status.success());
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "the sandbox serves Kubernetes 1.21 to 1.34, not {named}: choose a minor in that range"
            )),
            "{err}"
        );
    }
    let out = Command::new(BIN)
        .args(["sandbox", "--kubernetes-version", "latest"])
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"latest\" is not a Kubernetes version: write it as 1.MINOR"),
        "{err}"
    );
    let help = Command::new(BIN).args(["sandbox", "--help"]).output()?;
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--kubernetes-version") && help.contains("1.21 to 1.34"),
        "{help}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_sees_the_apis_of_the_chosen_minor() -> Result<()> {
    if let Err(why) = kubectl_client::usable() {
        eprintln!("SKIPPED kubectl_sees_the_apis_of_the_chosen_minor: {why}");
        return Ok(());
    }
    let removed = [
        "apiextensions.k8s.io/v1beta1",
        "policy/v1beta1",
        "rbac.authorization.k8s.io/v1beta1",
    ];
    for (flag, minor) in [("1.21", 21), ("v1.25", 25)] {
        let sp = SandboxProcess::start(&["--kubernetes-version", flag]).await?;
        let listed = sp.ok(&["api-versions"])?;
        let listed: Vec<&str> = listed.lines().collect();
        for gv in removed {
            assert_eq!(
                listed.contains(&gv),
                minor == 21,
                "1.{minor}: {gv} in {listed:?}"
            );
        }
        assert!(listed.contains(&"policy/v1"), "{listed:?}");
        let v: Value = serde_json::from_str(&sp.ok(&["version", "-o", "json"])?)?;
        assert_eq!(v["serverVersion"]["minor"], json!(minor.to_string()), "{v}");
        assert_eq!(
            v["serverVersion"]["gitVersion"],
            json!(format!("v1.{minor}.0-sandbox"))
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_the_v1beta1_chart_crds_only_while_they_are_served() -> Result<()> {
    const TEST: &str =
        "sandbox_kubectl::kubectl_applies_the_v1beta1_chart_crds_only_while_they_are_served";
    if let Err(why) = kubectl_client::usable() {
        eprintln!("SKIPPED {TEST}: {why}");
        return Ok(());
    }
    let Some(crds) = support::real_chart_crds(TEST)? else {
        return Ok(());
    };
    let felix = "felixconfigurations.crd.projectcalico.org";

    // 1.22: kubectl itself finds no such kind in discovery and refuses.
    let newer = SandboxProcess::start(&["--kubernetes-version", "1.22"]).await?;
    let file = newer.write("crds.yaml", &crds)?;
    let out = newer.kubectl(&["apply", "-f", &file])?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "resource mapping not found for name: \"{felix}\" namespace: \"\" from \"{file}\": \
             no matches for kind \"CustomResourceDefinition\" in version \"apiextensions.k8s.io/v1beta1\""
        )),
        "{err}"
    );
    assert_eq!(err.matches("no matches for kind").count(), 12, "{err}");
    assert!(newer.ok(&["get", "crd", "-o", "name"])?.trim().is_empty());
    drop(newer);

    // 1.21: created, stored as v1, readable at both versions.
    let sp = SandboxProcess::start(&["--kubernetes-version", "1.21"]).await?;
    let file = sp.write("crds.yaml", &crds)?;
    let applied = sp.ok(&["apply", "-f", &file])?;
    assert_eq!(
        applied.matches(" created").count(),
        12,
        "kubectl apply:\n{applied}"
    );
    let v1: Value = serde_json::from_str(&sp.ok(&["get", "crd", felix, "-o", "json"])?)?;
    assert_eq!(v1["apiVersion"], json!("apiextensions.k8s.io/v1"));
    assert!(v1["spec"].get("version").is_none(), "{v1}");
    assert_eq!(v1["spec"]["versions"][0]["name"], json!("v1"));
    let old: Value = serde_json::from_str(&sp.ok(&[
        "get",
        "customresourcedefinitions.v1beta1.apiextensions.k8s.io",
        felix,
        "-o",
        "json",
    ])?)?;
    assert_eq!(old["apiVersion"], json!("apiextensions.k8s.io/v1beta1"));
    assert_eq!(old["spec"]["version"], json!("v1"));
    assert_eq!(old["spec"]["preserveUnknownFields"], json!(true));

    // A v1beta1 CRD with the top-level fields the chart could have used.
    let widgets = r#"apiVersion: apiextensions.k8s.io/v1beta1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  version: v1
  scope: Namespaced
  names: {kind: Widget, plural: widgets}
  validation:
    openAPIV3Schema:
      type: object
      properties:
        spec: {type: object, properties: {size: {type: integer}}}
  subresources: {status: {}}
  additionalPrinterColumns:
  - {name: Size, type: integer, JSONPath: .spec.size}
"#;
    let file = sp.write("widgets.yaml", widgets)?;
    sp.ok(&["apply", "-f", &file])?;
    let yaml = sp.ok(&["get", "crd", "widgets.example.com", "-o", "yaml"])?;
    let v1: Value = serde_saphyr::from_str(&yaml)?;
    let version = &v1["spec"]["versions"][0];
    assert_eq!(
        version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["size"],
        json!({"type": "integer"}),
        "{yaml}"
    );
    assert_eq!(version["subresources"], json!({"status": {}}));
    assert_eq!(
        version["additionalPrinterColumns"],
        json!([{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}])
    );
    let yaml = sp.ok(&[
        "get",
        "customresourcedefinitions.v1beta1.apiextensions.k8s.io",
        "widgets.example.com",
        "-o",
        "yaml",
    ])?;
    let old: Value = serde_saphyr::from_str(&yaml)?;
    assert_eq!(old["spec"]["version"], json!("v1"), "{yaml}");
    assert_eq!(
        old["spec"]["validation"]["openAPIV3Schema"]["type"],
        json!("object")
    );
    assert_eq!(
        old["spec"]["additionalPrinterColumns"][0]["JSONPath"],
        json!(".spec.size")
    );
    assert!(old["spec"]["versions"][0].get("schema").is_none(), "{yaml}");

    // Objects of both CRDs, created and listed through kubectl.
    let objs = sp.write(
        "objects.yaml",
        r#"apiVersion: crd.projectcalico.org/v1
kind: FelixConfiguration
metadata: {name: default}
spec: {logSeverityScreen: Info}
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: w1, namespace: default}
spec: {size: 3}
"#,
    )?;
    sp.ok(&["create", "-f", &objs])?;
    let names = sp.ok(&["get", "felixconfigurations", "-o", "name"])?;
    assert_eq!(
        names.trim(),
        "felixconfiguration.crd.projectcalico.org/default"
    );
    let table = sp.ok(&["get", "widgets", "-n", "default"])?;
    assert!(
        table.lines().next().is_some_and(|h| h.contains("SIZE"))
            && table
                .lines()
                .nth(1)
                .is_some_and(|r| r.starts_with("w1") && r.contains('3')),
        "{table}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_lists_psps_at_1_24_and_knows_no_such_type_at_1_25() -> Result<()> {
    if let Err(why) = kubectl_client::usable() {
        eprintln!("SKIPPED kubectl_lists_psps_at_1_24_and_knows_no_such_type_at_1_25: {why}");
        return Ok(());
    }
    let psp = r#"apiVersion: policy/v1beta1
kind: PodSecurityPolicy
metadata:
  name: calico-node
spec:
  privileged: true
  seLinux: {rule: RunAsAny}
  runAsUser: {rule: RunAsAny}
  supplementalGroups: {rule: RunAsAny}
  fsGroup: {rule: RunAsAny}
  volumes: ['*']
"#;
    let sp = SandboxProcess::start(&["--kubernetes-version", "1.24"]).await?;
    let file = sp.write("psp.yaml", psp)?;
    sp.ok(&["create", "-f", &file])?;
    let names = sp.ok(&["get", "psp", "-o", "name"])?;
    assert_eq!(
        names.trim(),
        "podsecuritypolicy.policy/calico-node",
        "{names}"
    );
    drop(sp);

    let sp = SandboxProcess::start(&["--kubernetes-version", "1.25"]).await?;
    let out = sp.kubectl(&["get", "psp"])?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the server doesn't have a resource type \"psp\""),
        "{err}"
    );
    let file = sp.write("psp.yaml", psp)?;
    let out = sp.kubectl(&["create", "-f", &file])?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no matches for kind \"PodSecurityPolicy\" in version \"policy/v1beta1\""),
        "{err}"
    );
    Ok(())
}

/// `../shared/real/<file>` (a published chart) as a path for helm; None after one
/// `SKIPPED` line when it is absent.
pub(crate) fn real_chart(test: &str, file: &str) -> Option<String> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/real")
        .join(file);
    if !p.is_file() {
        eprintln!(
            "SKIPPED {test}: {} is absent (see ../shared/real/PROVENANCE.md)",
            p.display()
        );
        return None;
    }
    Some(p.display().to_string())
}

/// Helm `major` and the chart `file`, or None after one `SKIPPED` line when helm, kubectl
/// or the chart is missing.
pub(crate) fn helm_and_chart(
    test: &str,
    major: u32,
    file: &str,
) -> Result<Option<(PathBuf, String)>> {
    let Some(helm) = helm_client::find_or_skip(major)? else {
        return Ok(None);
    };
    if let Err(why) = kubectl_client::usable() {
        eprintln!("SKIPPED {test}: {why}");
        return Ok(None);
    }
    Ok(real_chart(test, file).map(|chart| (helm, chart)))
}

/// `kubectl get <types> -A -o json` items.
fn kubectl_items(sp: &SandboxProcess, types: &str) -> Result<Vec<Value>> {
    let list: Value = serde_json::from_str(&sp.ok(&["get", types, "-A", "-o", "json"])?)?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

/// Every kind the aws-calico charts render, as kubectl names them (at 1.21 to 1.24).
const CHART_TYPES: &str = "daemonsets,deployments,services,serviceaccounts,configmaps,\
    clusterroles,clusterrolebindings,roles,rolebindings,poddisruptionbudgets,\
    podsecuritypolicies,namespaces,customresourcedefinitions";

/// (kind, name) of what `kubectl` finds with the release's ownership annotation, sorted.
fn annotated_for_release(sp: &SandboxProcess) -> Result<Vec<(String, String)>> {
    let mut owned: Vec<(String, String)> = kubectl_items(sp, CHART_TYPES)?
        .into_iter()
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

/// (kind, name) of the objects of a stored manifest, sorted.
fn manifest_kinds_and_names(manifest: &str) -> Result<Vec<(String, String)>> {
    let mut listed: Vec<(String, String)> = calico_migrate::helm::manifest_objects(manifest)?
        .into_iter()
        .map(|o| (o.kind, o.name))
        .collect();
    listed.sort();
    Ok(listed)
}

/// Names of the CRDs kubectl lists, sorted.
pub(crate) fn crd_names(sp: &SandboxProcess) -> Result<Vec<String>> {
    let mut names: Vec<String> = sp
        .ok(&["get", "crd", "-o", "name"])?
        .lines()
        .filter_map(|l| l.strip_prefix("customresourcedefinition.apiextensions.k8s.io/"))
        .map(String::from)
        .collect();
    names.sort();
    Ok(names)
}

/// `sandbox --no-calico` seeds the EKS cluster (nodes, add-ons, user namespaces and
/// their NetworkPolicies) without anything of Calico; `--chart` with it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_no_calico_seeds_the_cluster_without_calico() -> Result<()> {
    const TEST: &str = "sandbox_kubectl::sandbox_no_calico_seeds_the_cluster_without_calico";
    let out = Command::new(BIN)
        .args(["sandbox", "--no-calico", "--chart", "0.3.11"])
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "--no-calico seeds no aws-calico release, so --chart 0.3.11 has no release to pick"
        ),
        "{err}"
    );
    let out = Command::new(BIN)
        .args(["sandbox", "--no-calico", "--empty"])
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    let help = Command::new(BIN).args(["sandbox", "--help"]).output()?;
    let help = String::from_utf8_lossy(&help.stdout);
    let words = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words.contains("--no-calico Seed the EKS cluster without Calico, for installing the real aws-calico chart with real Helm"),
        "{help}"
    );

    if let Err(why) = kubectl_client::usable() {
        eprintln!("SKIPPED {TEST}: {why}");
        return Ok(());
    }
    let plain = SandboxProcess::seeded(&[]).await?;
    let bare = SandboxProcess::seeded(&["--no-calico"]).await?;
    let names = |sp: &SandboxProcess, types: &str| -> Result<Vec<String>> {
        let mut n: Vec<String> = sp
            .ok(&["get", types, "-A", "-o", "name"])?
            .lines()
            .map(String::from)
            .collect();
        n.sort();
        Ok(n)
    };
    // The same EKS cluster...
    for types in ["nodes", "namespaces", "networkpolicies.networking.k8s.io"] {
        let (with, without) = (names(&plain, types)?, names(&bare, types)?);
        let without_calico: Vec<&String> = with
            .iter()
            .filter(|n| !n.ends_with("/calico-system") && !n.ends_with("/tigera-operator"))
            .collect();
        assert_eq!(
            without.iter().collect::<Vec<_>>(),
            without_calico,
            "{types}"
        );
        assert!(!without.is_empty(), "{types}");
    }
    let workloads = names(&bare, "daemonsets,deployments")?;
    for want in [
        "daemonset.apps/aws-node",
        "daemonset.apps/kube-proxy",
        "deployment.apps/coredns",
    ] {
        assert!(
            workloads.iter().any(|w| w == want),
            "{want} in {workloads:?}"
        );
    }
    // ...with nothing of Calico: no release, workloads, CRDs, RBAC or policies.
    assert!(
        workloads.iter().all(|w| !w.contains("calico")),
        "{workloads:?}"
    );
    assert!(crd_names(&bare)?.is_empty());
    assert!(!crd_names(&plain)?.is_empty());
    let secrets = names(&bare, "secrets")?;
    assert!(
        secrets.iter().all(|s| !s.contains("sh.helm.release")),
        "{secrets:?}"
    );
    let rbac = names(&bare, "clusterroles,clusterrolebindings")?;
    assert!(rbac.iter().all(|r| !r.contains("calico")), "{rbac:?}");
    assert!(
        names(&plain, "clusterroles")?
            .iter()
            .any(|r| r.contains("calico"))
    );
    Ok(())
}

/// kubectl's typed generators send protobuf: the sandbox reads Secret, ConfigMap,
/// Namespace and ServiceAccount bodies and names any other kind in its 415.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_typed_generators_send_protobuf_the_sandbox_reads() -> Result<()> {
    if let Err(why) = kubectl_client::usable() {
        eprintln!("SKIPPED kubectl_typed_generators_send_protobuf_the_sandbox_reads: {why}");
        return Ok(());
    }
    let sp = SandboxProcess::start(&[]).await?;
    // Not UTF-8, so kubectl puts it under binaryData.
    let blob = sp.dir.path().join("blob");
    std::fs::write(&blob, b"\xff\x00bin")?;
    let file = blob.display().to_string();
    sp.ok(&["create", "namespace", "team-a"])?;
    sp.ok(&[
        "create",
        "configmap",
        "cm",
        "-n",
        "team-a",
        "--from-literal=a=1",
        &format!("--from-file=blob={file}"),
    ])?;
    sp.ok(&[
        "create",
        "secret",
        "generic",
        "s",
        "-n",
        "team-a",
        "--from-literal=password=hunter2",
        "--type=example.com/token",
    ])?;
    sp.ok(&["create", "serviceaccount", "robot", "-n", "team-a"])?;
    let ns: Value = serde_json::from_str(&sp.ok(&["get", "ns", "team-a", "-o", "json"])?)?;
    assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]), "{ns}");
    let cm: Value =
        serde_json::from_str(&sp.ok(&["get", "cm", "cm", "-n", "team-a", "-o", "json"])?)?;
    assert_eq!(cm["data"], json!({"a": "1"}), "{cm}");
    assert_eq!(cm["binaryData"], json!({"blob": "/wBiaW4="}), "{cm}");
    let secret: Value =
        serde_json::from_str(&sp.ok(&["get", "secret", "s", "-n", "team-a", "-o", "json"])?)?;
    assert_eq!(
        secret["data"],
        json!({"password": "aHVudGVyMg=="}),
        "{secret}"
    );
    assert_eq!(secret["type"], json!("example.com/token"));
    sp.ok(&["get", "serviceaccount", "robot", "-n", "team-a"])?;

    let out = sp.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=nginx",
        "-n",
        "team-a",
    ])?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "got application/vnd.kubernetes.protobuf for kind \"Deployment\": the sandbox \
             decodes protobuf bodies of Secret, ConfigMap, Namespace, ServiceAccount only"
        ),
        "{err}"
    );
    Ok(())
}

/// Real helm `major` installs the aws-calico 0.3.10 chart into `sandbox --no-calico` at
/// 1.21: the release record is the Secret helm's storage driver creates and replaces
/// as protobuf; `list`, `status` and `get manifest` read it back and the manifest names
/// exactly the objects the sandbox holds for the release; `uninstall` removes them and
/// the record and keeps the CRDs of crds/ (helm never deletes those). At 1.22 helm
/// refuses the chart's apiextensions v1beta1 CRDs itself, as on a real cluster.
async fn helm_installs_the_0_3_10_chart_at_1_21_and_not_at_1_22(
    major: u32,
    test: &str,
) -> Result<()> {
    let Some((path, chart)) = helm_and_chart(test, major, "aws-calico-0.3.10.tgz")? else {
        return Ok(());
    };
    let install = ["install", RELEASE, chart.as_str(), "-n", RELEASE_NS];

    let sp = SandboxProcess::seeded(&["--no-calico", "--kubernetes-version", "1.21"]).await?;
    let helm = helm_client::Helm::new(path.clone(), &sp.kubeconfig)?;
    let out = helm.ok(&install)?;
    assert!(out.contains("STATUS: deployed"), "helm install:\n{out}");

    let list: Value = serde_json::from_str(&helm.ok(&["list", "-n", RELEASE_NS, "-o", "json"])?)?;
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
    // At 1.21 policy/v1beta1 is served, so helm 4's status maps the PDB too.
    let status: Value =
        serde_json::from_str(&helm.ok(&["status", RELEASE, "-n", RELEASE_NS, "-o", "json"])?)?;
    assert_eq!(status["info"]["status"], json!("deployed"), "{status}");
    assert_eq!(status["version"], json!(1), "{status}");
    let table = helm.ok(&["status", RELEASE, "-n", RELEASE_NS])?;
    assert!(table.contains("STATUS: deployed"), "{table}");

    let manifest = helm.ok(&["get", "manifest", RELEASE, "-n", RELEASE_NS])?;
    let listed = manifest_kinds_and_names(&manifest)?;
    assert_eq!(listed.len(), 14, "{listed:?}");
    assert!(
        listed.contains(&("DaemonSet".into(), "calico-node".into())),
        "{listed:?}"
    );
    assert_eq!(
        listed,
        annotated_for_release(&sp)?,
        "helm get manifest vs what kubectl finds with the release's annotation"
    );
    let crds = crd_names(&sp)?;
    assert_eq!(
        crds.iter()
            .filter(|c| c.ends_with(".crd.projectcalico.org"))
            .count(),
        12,
        "{crds:?}"
    );
    // The release record: one Secret, labelled as helm's storage driver labels it.
    let records = sp.ok(&[
        "get",
        "secrets",
        "-n",
        RELEASE_NS,
        "-l",
        "owner=helm,name=aws-calico,status=deployed,version=1",
        "-o",
        "name",
    ])?;
    assert_eq!(
        records.trim(),
        "secret/sh.helm.release.v1.aws-calico.v1",
        "{records}"
    );

    // Uninstall: the release's objects and its record go (the record's DELETE carries
    // protobuf DeleteOptions); the CRDs of crds/ stay, as helm documents.
    let out = helm.ok(&["uninstall", RELEASE, "-n", RELEASE_NS])?;
    assert!(out.contains("release \"aws-calico\" uninstalled"), "{out}");
    assert_eq!(annotated_for_release(&sp)?, Vec::<(String, String)>::new());
    assert!(
        sp.ok(&[
            "get",
            "secrets",
            "-n",
            RELEASE_NS,
            "-l",
            "owner=helm",
            "-o",
            "name"
        ])?
        .trim()
        .is_empty()
    );
    assert_eq!(crd_names(&sp)?, crds, "crds/ outlive the release");
    drop(sp);

    let sp = SandboxProcess::start(&["--kubernetes-version", "1.22"]).await?;
    let helm = helm_client::Helm::new(path, &sp.kubeconfig)?;
    let err = helm.fails(&install)?;
    assert!(
        err.contains(
            "no matches for kind \"CustomResourceDefinition\" in version \"apiextensions.k8s.io/v1beta1\""
        ),
        "{err}"
    );
    assert!(sp.ok(&["get", "crd", "-o", "name"])?.trim().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm3_installs_the_0_3_10_chart_at_1_21_and_not_at_1_22() -> Result<()> {
    helm_installs_the_0_3_10_chart_at_1_21_and_not_at_1_22(
        3,
        "sandbox_kubectl::helm3_installs_the_0_3_10_chart_at_1_21_and_not_at_1_22",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm4_installs_the_0_3_10_chart_at_1_21_and_not_at_1_22() -> Result<()> {
    helm_installs_the_0_3_10_chart_at_1_21_and_not_at_1_22(
        4,
        "sandbox_kubectl::helm4_installs_the_0_3_10_chart_at_1_21_and_not_at_1_22",
    )
    .await
}

/// Calico policies a user wrote after the install: one GlobalNetworkPolicy and one
/// namespaced NetworkPolicy (crd.projectcalico.org).
pub(crate) const CALICO_POLICIES: &str = r#"apiVersion: crd.projectcalico.org/v1
kind: GlobalNetworkPolicy
metadata: {name: deny-aws-imds}
spec:
  selector: all()
  types: [Egress]
  egress:
  - {action: Deny, destination: {nets: [169.254.169.254/32]}}
  - {action: Allow}
---
apiVersion: crd.projectcalico.org/v1
kind: NetworkPolicy
metadata: {name: allow-web, namespace: team-0001}
spec:
  selector: app == 'web'
  types: [Ingress]
  ingress:
  - {action: Allow, source: {namespaceSelector: "component == 'ingress-controllers'"}}
"#;

/// Real helm `major` installs the operator-based aws-calico 0.3.11 chart (tigera-operator,
/// its CRDs as templates, a policy/v1beta1 PodSecurityPolicy, the Installation as a
/// post-install hook) into `sandbox --no-calico` at 1.24; after a user adds Calico
/// policies, `helm uninstall` deletes the templated CRDs and, as the real API server's
/// CRD finalizer does, every custom resource of them: the policies and the Installation.
async fn helm_uninstall_of_0_3_11_deletes_its_crds_and_every_calico_policy(
    major: u32,
    test: &str,
) -> Result<()> {
    let Some((path, chart)) = helm_and_chart(test, major, "aws-calico-0.3.11.tgz")? else {
        return Ok(());
    };
    let sp = SandboxProcess::seeded(&["--no-calico", "--kubernetes-version", "1.24"]).await?;
    let helm = helm_client::Helm::new(path, &sp.kubeconfig)?;
    let out = helm.ok(&["install", RELEASE, chart.as_str(), "-n", RELEASE_NS])?;
    assert!(out.contains("STATUS: deployed"), "helm install:\n{out}");

    let manifest = helm.ok(&["get", "manifest", RELEASE, "-n", RELEASE_NS])?;
    let listed = manifest_kinds_and_names(&manifest)?;
    let mut templated: Vec<String> = listed
        .iter()
        .filter(|(k, _)| k == "CustomResourceDefinition")
        .map(|(_, n)| n.clone())
        .collect();
    templated.sort();
    assert_eq!(templated.len(), 19, "{listed:?}");
    assert_eq!(
        crd_names(&sp)?,
        templated,
        "the CRDs are the templated ones"
    );
    for want in [
        ("Deployment", "tigera-operator"),
        ("Namespace", "tigera-operator"),
        ("PodSecurityPolicy", "tigera-operator"),
    ] {
        assert!(
            listed.contains(&(want.0.into(), want.1.into())),
            "{want:?} in {listed:?}"
        );
    }
    assert_eq!(listed, annotated_for_release(&sp)?);
    // The post-install hook: the Installation, not part of the manifest.
    let inst: Value = serde_json::from_str(&sp.ok(&[
        "get",
        "installations.operator.tigera.io",
        "default",
        "-o",
        "json",
    ])?)?;
    assert_eq!(inst["spec"]["cni"]["type"], json!("AmazonVPC"), "{inst}");

    let file = sp.write("policies.yaml", CALICO_POLICIES)?;
    sp.ok(&["create", "-f", &file])?;
    let gnp = "globalnetworkpolicies.crd.projectcalico.org";
    let np = "networkpolicies.crd.projectcalico.org";
    assert_eq!(
        sp.ok(&["get", gnp, "-o", "name"])?.trim(),
        "globalnetworkpolicy.crd.projectcalico.org/deny-aws-imds"
    );
    assert_eq!(
        sp.ok(&["get", np, "-A", "-o", "name"])?.trim(),
        "networkpolicy.crd.projectcalico.org/allow-web"
    );
    // The GlobalNetworkPolicy CRD as helm created it, to create again afterwards.
    let gnp_crd = sp.ok(&["get", "crd", gnp, "-o", "yaml"])?;

    let out = helm.ok(&["uninstall", RELEASE, "-n", RELEASE_NS])?;
    assert!(out.contains("release \"aws-calico\" uninstalled"), "{out}");
    assert_eq!(crd_names(&sp)?, Vec::<String>::new(), "every CRD deleted");
    assert_eq!(annotated_for_release(&sp)?, Vec::<(String, String)>::new());
    for path in [
        "/apis/crd.projectcalico.org/v1/globalnetworkpolicies",
        "/apis/crd.projectcalico.org/v1/namespaces/team-0001/networkpolicies",
        "/apis/operator.tigera.io/v1/installations",
    ] {
        let out = sp.kubectl(&["get", "--raw", path])?;
        assert_eq!(out.status.code(), Some(1), "{path} still served");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("NotFound"), "{path}: {err}");
    }
    let out = sp.kubectl(&["get", gnp])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the server doesn't have a resource type \"globalnetworkpolicies\""),
        "{err}"
    );
    assert!(
        sp.ok(&[
            "get",
            "secrets",
            "-n",
            RELEASE_NS,
            "-l",
            "owner=helm",
            "-o",
            "name"
        ])?
        .trim()
        .is_empty()
    );
    assert_eq!(helm.ok(&["list", "-A", "-q"])?.trim(), "");

    // Gone, not hidden: the CRD created again serves no policy.
    let crd: Value = serde_saphyr::from_str(&gnp_crd)?;
    let mut crd = crd;
    for k in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "annotations",
        "labels",
    ] {
        crd["metadata"]
            .as_object_mut()
            .context("metadata")?
            .remove(k);
    }
    let file = sp.write("gnp-crd.json", &crd.to_string())?;
    sp.ok(&["create", "-f", &file])?;
    assert_eq!(sp.ok(&["get", gnp, "-o", "name"])?.trim(), "");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm3_uninstall_of_0_3_11_deletes_its_crds_and_every_calico_policy() -> Result<()> {
    helm_uninstall_of_0_3_11_deletes_its_crds_and_every_calico_policy(
        3,
        "sandbox_kubectl::helm3_uninstall_of_0_3_11_deletes_its_crds_and_every_calico_policy",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm4_uninstall_of_0_3_11_deletes_its_crds_and_every_calico_policy() -> Result<()> {
    helm_uninstall_of_0_3_11_deletes_its_crds_and_every_calico_policy(
        4,
        "sandbox_kubectl::helm4_uninstall_of_0_3_11_deletes_its_crds_and_every_calico_policy",
    )
    .await
}

/// `v` as (path, leaf) pairs: `spec.template.spec.containers[0].image` -> value.
fn flatten(prefix: &str, v: &Value, out: &mut std::collections::BTreeMap<String, Value>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, x, out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, x) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), x, out);
            }
        }
        _ => {
            out.insert(prefix.to_string(), v.clone());
        }
    }
}

/// Where `seed` and `helm` differ, one line per path.
fn field_differences(seed: &Value, helm: &Value) -> Vec<String> {
    let (mut a, mut b) = (Default::default(), Default::default());
    flatten("", seed, &mut a);
    flatten("", helm, &mut b);
    let mut out = Vec::new();
    for (k, x) in &a {
        match b.get(k) {
            None => out.push(format!("{k}: only in the seed ({x})")),
            Some(y) if y != x => out.push(format!("{k}: seed {x}, helm {y}")),
            Some(_) => {}
        }
    }
    for (k, y) in &b {
        if !a.contains_key(k) {
            out.push(format!("{k}: only from helm ({y})"));
        }
    }
    out
}

/// An object without what the API server and the controllers write: uid,
/// resourceVersion, creationTimestamp, generation, managedFields, status, the
/// revision annotations of the DaemonSet and Deployment controllers, a Service's
/// allocated cluster IPs, and calico-typha's replicas (the chart's deployment.yaml
/// sets none; its cluster-proportional-autoscaler writes them through the scale
/// subresource, which the seed shows as done).
fn without_server_fields(mut o: Value) -> Value {
    if let Some(m) = o["metadata"].as_object_mut() {
        for k in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "generation",
            "managedFields",
            "selfLink",
        ] {
            m.remove(k);
        }
    }
    if let Some(a) = o["metadata"]["annotations"].as_object_mut() {
        a.remove("deprecated.daemonset.template.generation");
        a.remove("deployment.kubernetes.io/revision");
    }
    if let Some(m) = o.as_object_mut() {
        m.remove("status");
    }
    if o["kind"] == "Service"
        && let Some(s) = o["spec"].as_object_mut()
    {
        s.remove("clusterIP");
        s.remove("clusterIPs");
    }
    if o["kind"] == "Deployment"
        && o["metadata"]["name"] == "calico-typha"
        && let Some(s) = o["spec"].as_object_mut()
    {
        s.remove("replicas");
    }
    o
}

/// The release's objects as kubectl reads them, by "Kind/name": those with the
/// release's annotation, and the Calico CRDs (of crds/, which Helm does not annotate).
fn release_objects(sp: &SandboxProcess) -> Result<std::collections::BTreeMap<String, Value>> {
    Ok(kubectl_items(sp, CHART_TYPES)?
        .into_iter()
        .filter(|o| {
            o.pointer("/metadata/annotations/meta.helm.sh~1release-name") == Some(&json!(RELEASE))
                || (o["kind"] == "CustomResourceDefinition"
                    && o["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| n.ends_with(".crd.projectcalico.org")))
        })
        .map(|o| {
            let key = format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or_default(),
                o["metadata"]["name"].as_str().unwrap_or_default()
            );
            (key, without_server_fields(o))
        })
        .collect())
}

/// A published aws-calico chart and the sandbox that seeds its release.
struct Published {
    tgz: &'static str,
    /// Flags of the seeded sandbox: the chart and the Kubernetes minor.
    seeded: &'static [&'static str],
    /// Flags of the bare sandbox helm installs into: `--no-calico`, the same minor.
    bare: &'static [&'static str],
    /// The release's objects (with 0.3.10 the 12 CRDs of crds/, which Helm does not
    /// annotate).
    objects: usize,
    /// Kinds of its hooks as kubectl names them, compared object for object.
    hook_types: Option<&'static str>,
}

const CHART_0_3_10: Published = Published {
    tgz: "aws-calico-0.3.10.tgz",
    seeded: &["--kubernetes-version", "1.21"],
    bare: &["--no-calico", "--kubernetes-version", "1.21"],
    objects: 14 + 12,
    hook_types: None,
};

/// Installed at 1.24, the last minor that serves its PodSecurityPolicy.
const CHART_0_3_11: Published = Published {
    tgz: "aws-calico-0.3.11.tgz",
    seeded: &["--chart", "0.3.11", "--kubernetes-version", "1.24"],
    bare: &["--no-calico", "--kubernetes-version", "1.24"],
    objects: 25,
    hook_types: Some("installations.operator.tigera.io"),
};

/// Where the seeded release and what real helm `major` installs from the published
/// chart (into a `--no-calico` sandbox at the same minor, with the values the seeded
/// release records) differ: the same objects (kind and name) must come out, and each
/// field that differs, server-managed fields aside, is one line; so for the hooks'
/// objects. With `record`, also `helm get manifest`, `helm get hooks`, `helm get values
/// --all`, the chart fields of `helm get metadata`, and the hook records of the release
/// Secret (their run times aside).
async fn seed_against_helm_install(
    test: &str,
    major: u32,
    record: bool,
    chart_of: &Published,
) -> Result<Option<Vec<String>>> {
    let Some((path, chart)) = helm_and_chart(test, major, chart_of.tgz)? else {
        return Ok(None);
    };
    let seeded = SandboxProcess::seeded(chart_of.seeded).await?;
    let bare = SandboxProcess::seeded(chart_of.bare).await?;
    let seeded_helm = helm_client::Helm::new(path.clone(), &seeded.kubeconfig)?;
    let helm = helm_client::Helm::new(path, &bare.kubeconfig)?;
    let values = seeded_helm.ok(&["get", "values", RELEASE, "-n", RELEASE_NS, "-o", "yaml"])?;
    let file = bare.write("values.yaml", &values)?;
    helm.ok(&["install", RELEASE, &chart, "-n", RELEASE_NS, "-f", &file])?;

    let (seed, made) = (release_objects(&seeded)?, release_objects(&bare)?);
    assert_eq!(
        seed.keys().collect::<Vec<_>>(),
        made.keys().collect::<Vec<_>>(),
        "the seeded release's objects vs what helm {major} installed"
    );
    assert_eq!(seed.len(), chart_of.objects, "{:?}", seed.keys());

    let mut report = Vec::new();
    for (key, o) in &seed {
        for d in field_differences(o, &made[key]) {
            report.push(format!("{key}: {d}"));
        }
    }
    if let Some(types) = chart_of.hook_types {
        let by_name = |sp: &SandboxProcess| -> Result<std::collections::BTreeMap<String, Value>> {
            Ok(kubectl_items(sp, types)?
                .into_iter()
                .map(|o| {
                    let name = o["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    (name, without_server_fields(o))
                })
                .collect())
        };
        let (seed_hooks, made_hooks) = (by_name(&seeded)?, by_name(&bare)?);
        assert_eq!(
            seed_hooks.keys().collect::<Vec<_>>(),
            made_hooks.keys().collect::<Vec<_>>(),
            "the seeded hooks' objects vs what helm {major}'s hooks created"
        );
        for (name, o) in &seed_hooks {
            for d in field_differences(o, &made_hooks[name]) {
                report.push(format!("hook {types}/{name}: {d}"));
            }
        }
    }
    if record {
        let all = [
            "get", "values", RELEASE, "-n", RELEASE_NS, "--all", "-o", "json",
        ];
        let (seed_values, helm_values): (Value, Value) = (
            serde_json::from_str(&seeded_helm.ok(&all)?)?,
            serde_json::from_str(&helm.ok(&all)?)?,
        );
        for d in field_differences(&seed_values, &helm_values) {
            report.push(format!("helm get values --all: {d}"));
        }
        for what in ["manifest", "hooks"] {
            let get = ["get", what, RELEASE, "-n", RELEASE_NS];
            let (seed_text, helm_text) = (seeded_helm.ok(&get)?, helm.ok(&get)?);
            let (seed_lines, helm_lines): (Vec<&str>, Vec<&str>) =
                (seed_text.lines().collect(), helm_text.lines().collect());
            for i in 0..seed_lines.len().max(helm_lines.len()) {
                let (x, y) = (seed_lines.get(i), helm_lines.get(i));
                if x != y {
                    report.push(format!(
                        "helm get {what}, line {}: seed {x:?}, helm {y:?}",
                        i + 1
                    ));
                }
            }
        }
        let hooks = |sp: &SandboxProcess| -> Result<Value> {
            let list: Value = serde_json::from_str(&sp.ok(&[
                "get",
                "secrets",
                "-n",
                RELEASE_NS,
                "-l",
                "owner=helm,name=aws-calico",
                "-o",
                "json",
            ])?)?;
            let secret = list["items"].get(0).cloned().unwrap_or(Value::Null);
            let rel = calico_migrate::helm::decode_release_secret(&secret)?;
            let mut hooks = Value::Array(rel.hooks);
            for h in hooks.as_array_mut().into_iter().flatten() {
                if let Some(run) = h["last_run"].as_object_mut() {
                    run.remove("started_at");
                    run.remove("completed_at");
                }
            }
            Ok(hooks)
        };
        for d in field_differences(&hooks(&seeded)?, &hooks(&bare)?) {
            report.push(format!("the release record's hooks: {d}"));
        }
        let meta = ["get", "metadata", RELEASE, "-n", RELEASE_NS, "-o", "json"];
        let (mut seed_meta, mut helm_meta): (Value, Value) = (
            serde_json::from_str(&seeded_helm.ok(&meta)?)?,
            serde_json::from_str(&helm.ok(&meta)?)?,
        );
        for m in [&mut seed_meta, &mut helm_meta] {
            if let Some(m) = m.as_object_mut() {
                m.remove("deployedAt");
            }
        }
        for d in field_differences(&seed_meta, &helm_meta) {
            report.push(format!("helm get metadata: {d}"));
        }
    }
    Ok(Some(report))
}

/// Runs [`seed_against_helm_install`] and fails listing every difference found.
async fn assert_seed_is_helm_install(
    test: &str,
    major: u32,
    record: bool,
    chart_of: &Published,
) -> Result<()> {
    let Some(report) = seed_against_helm_install(test, major, record, chart_of).await? else {
        return Ok(());
    };
    assert!(
        report.is_empty(),
        "{} differences between the seed and helm {major}'s install of {}:\n  {}",
        report.len(),
        chart_of.tgz,
        report.join("\n  ")
    );
    Ok(())
}

/// What real helm 3 makes of the published 0.3.10 chart, given the values the seeded
/// release records, is what the built-in seed holds for that release: the same
/// objects field for field (server-managed fields aside), the same stored manifest,
/// values and chart metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm3_0_3_10_install_makes_exactly_the_seeded_release() -> Result<()> {
    assert_seed_is_helm_install(
        "sandbox_kubectl::helm3_0_3_10_install_makes_exactly_the_seeded_release",
        3,
        true,
        &CHART_0_3_10,
    )
    .await
}

/// The same for helm 4, which creates the objects by server-side apply: the objects
/// it makes are the seeded release's, field for field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm4_0_3_10_install_makes_exactly_the_seeded_objects() -> Result<()> {
    assert_seed_is_helm_install(
        "sandbox_kubectl::helm4_0_3_10_install_makes_exactly_the_seeded_objects",
        4,
        false,
        &CHART_0_3_10,
    )
    .await
}

/// What real helm 3 makes of the published 0.3.11 chart at 1.24 is what `sandbox --chart
/// 0.3.11` holds for that release: the same 25 objects (the operator, its namespace,
/// PodSecurityPolicy and RBAC, the 19 templated CRDs) field for field, the same
/// Installation from the post-install hook, the same stored manifest, hooks, values and
/// chart metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm3_0_3_11_install_makes_exactly_the_seeded_release() -> Result<()> {
    assert_seed_is_helm_install(
        "sandbox_kubectl::helm3_0_3_11_install_makes_exactly_the_seeded_release",
        3,
        true,
        &CHART_0_3_11,
    )
    .await
}

/// The same objects from helm 4's install of 0.3.11.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm4_0_3_11_install_makes_exactly_the_seeded_objects() -> Result<()> {
    assert_seed_is_helm_install(
        "sandbox_kubectl::helm4_0_3_11_install_makes_exactly_the_seeded_objects",
        4,
        false,
        &CHART_0_3_11,
    )
    .await
}

/// `files` (a chart the seed embeds) are those of the published tarball `tgz`, byte for
/// byte, and nothing of the tarball is left out.
fn embedded_chart_is_the_published_tarball(
    test: &str,
    tgz: &str,
    files: &[(&str, &str)],
) -> Result<()> {
    let Some(chart) = real_chart(test, tgz) else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let out = Command::new("tar")
        .arg("xzf")
        .arg(&chart)
        .arg("-C")
        .arg(dir.path())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "tar could not unpack {chart}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = dir.path().join("aws-calico");
    let mut published = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(&root)?.display().to_string();
                published.push((rel, std::fs::read_to_string(&p)?));
            }
        }
    }
    published.sort();
    let mut embedded: Vec<(String, String)> = files
        .iter()
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .collect();
    embedded.sort();
    assert_eq!(
        embedded.iter().map(|(p, _)| p).collect::<Vec<_>>(),
        published.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    for ((path, mine), (_, theirs)) in embedded.iter().zip(&published) {
        assert!(
            mine == theirs,
            "{path} differs from the published tarball's"
        );
    }
    Ok(())
}

/// The 0.3.10 chart the seed embeds is the published tarball.
#[test]
fn embedded_0_3_10_chart_is_the_published_tarball() -> Result<()> {
    embedded_chart_is_the_published_tarball(
        "sandbox_kubectl::embedded_0_3_10_chart_is_the_published_tarball",
        "aws-calico-0.3.10.tgz",
        calico_migrate::sandbox::scenario::chart::CHART_FILES,
    )
}

/// So is the 0.3.11 chart.
#[test]
fn embedded_0_3_11_chart_is_the_published_tarball() -> Result<()> {
    embedded_chart_is_the_published_tarball(
        "sandbox_kubectl::embedded_0_3_11_chart_is_the_published_tarball",
        "aws-calico-0.3.11.tgz",
        calico_migrate::sandbox::scenario::operator_chart::CHART_FILES,
    )
}
