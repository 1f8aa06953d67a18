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

/// `calico-migrate sandbox --empty --no-controllers` with `extra` flags, as a process:
/// ready once it printed its kubeconfig's path; killed when dropped.
struct SandboxProcess {
    child: std::process::Child,
    dir: tempfile::TempDir,
    kubeconfig: std::path::PathBuf,
}

impl SandboxProcess {
    async fn start(extra: &[&str]) -> Result<SandboxProcess> {
        let dir = tempfile::tempdir()?;
        let kubeconfig = dir.path().join("kubeconfig");
        let mut child = Command::new(BIN)
            .args(["sandbox", "--empty", "--no-controllers", "--kubeconfig-out"])
            .arg(&kubeconfig)
            .arg("--state-dir")
            .arg(dir.path())
            .args(extra)
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
    fn kubectl(&self, args: &[&str]) -> Result<std::process::Output> {
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
    fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl(args)?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl {args:?} exited {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// A file in this sandbox's temp dir.
    fn write(&self, name: &str, text: &str) -> Result<String> {
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

/// Real helm 3 installs the aws-calico 0.3.10 chart into an empty sandbox: at 1.21 it
/// gets past the CRD stage (its 12 apiextensions v1beta1 CRDs are created) and stops
/// where the sandbox stops, at the release Secret helm's storage driver sends as
/// protobuf; at 1.22 helm refuses the CRDs itself, as on a real cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm3_installs_the_0_3_10_crds_at_1_21_and_not_at_1_22() -> Result<()> {
    const TEST: &str = "sandbox_kubectl::helm3_installs_the_0_3_10_crds_at_1_21_and_not_at_1_22";
    let Some(path) = helm_client::find_or_skip(3)? else {
        return Ok(());
    };
    if kubectl_client::usable().is_err() || support::real_chart_crds(TEST)?.is_none() {
        eprintln!("SKIPPED {TEST}: kubectl or ../shared/real/aws-calico-0.3.10.tgz is missing");
        return Ok(());
    }
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/real/aws-calico-0.3.10.tgz");
    let chart = chart.display().to_string();
    let install = ["install", "aws-calico", chart.as_str(), "-n", "kube-system"];

    let sp = SandboxProcess::start(&["--kubernetes-version", "1.21"]).await?;
    let helm = helm_client::Helm::new(path.clone(), &sp.kubeconfig)?;
    let err = helm.fails(&install)?;
    let crds = sp.ok(&["get", "crd", "-o", "name"])?;
    assert_eq!(
        crds.lines()
            .filter(|l| l.ends_with(".crd.projectcalico.org"))
            .count(),
        12,
        "helm created the chart's CRDs:\n{crds}\nhelm: {err}"
    );
    // Where it stops: the release record, a Secret helm creates with protobuf.
    assert!(
        err.contains("INSTALLATION FAILED: create: failed to create:")
            && err.contains("application/vnd.kubernetes.protobuf"),
        "{err}"
    );
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
