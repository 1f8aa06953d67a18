//! `calico-migrate sandbox --data-dir DIR` as a process: the cluster outlives the
//! process; started again at the same minor it restarts, at the next minor its control
//! plane is upgraded (as EKS does it, one minor at a time). A skip, a downgrade, a
//! locked, damaged or foreign DIR are refused with a sentence, exit 2, DIR unchanged.
//! Real helm 3 installs the published aws-calico 0.3.10 chart at 1.21 and still reads
//! the release at every minor up to 1.29; kubectl reads the chart's v1beta1 CRDs as v1,
//! the PDB through policy/v1, the pods and nodes as they were.

use crate::helm_client;
use crate::kubectl_client;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_calico-migrate");
const RELEASE: &str = "aws-calico";
const RELEASE_NS: &str = "kube-system";

/// `calico-migrate sandbox --data-dir <data> <args>` running, ready once it printed its
/// kubeconfig's path. Stopped with SIGTERM by [`Running::stop`]; killed when dropped.
struct Running {
    child: Option<Child>,
    kubeconfig: PathBuf,
    /// HOME and kubectl's discovery cache: one per run, as the served APIs change.
    home: tempfile::TempDir,
}

impl Running {
    async fn start(data: &Path, args: &[&str]) -> Result<Running> {
        let home = tempfile::tempdir()?;
        let kubeconfig = home.path().join("kubeconfig");
        let mut child = Command::new(BIN)
            .arg("sandbox")
            .args(args)
            .arg("--data-dir")
            .arg(data)
            .arg("--kubeconfig-out")
            .arg(&kubeconfig)
            .arg("--state-dir")
            .arg(home.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let first = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        });
        let line = tokio::time::timeout(Duration::from_secs(30), first).await???;
        let run = Running {
            child: Some(child),
            kubeconfig,
            home,
        };
        ensure!(
            line.trim() == run.kubeconfig.display().to_string(),
            "the sandbox printed {line:?}"
        );
        Ok(run)
    }

    /// SIGTERM, then its exit: 0, and the stderr it wrote.
    fn stop(mut self) -> Result<String> {
        let child = self.child.take().context("running")?;
        let pid = child.id().to_string();
        ensure!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()?
                .success()
        );
        let out = child.wait_with_output()?;
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        ensure!(
            out.status.success(),
            "exit {:?} after SIGTERM: {err}",
            out.status
        );
        Ok(err)
    }

    /// SIGKILL: no clean stop, no last save.
    fn kill(mut self) -> Result<()> {
        let mut child = self.child.take().context("running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    fn kubectl(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new("kubectl")
            .args(args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--request-timeout=20s")
            .env_remove("KUBECONFIG")
            .env("HOME", self.home.path())
            .env("KUBECACHEDIR", self.home.path().join("cache"))
            .stdin(Stdio::null())
            .output()?)
    }

    fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl(args)?;
        ensure!(
            out.status.success(),
            "kubectl {args:?} exited {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    fn json(&self, args: &[&str]) -> Result<Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        Ok(serde_json::from_str(&self.ok(&a)?)?)
    }

    async fn client(&self) -> Result<kube::Client> {
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&self.kubeconfig)?,
            &Default::default(),
        )
        .await?;
        Ok(kube::Client::try_from(config)?)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `sandbox <args> --data-dir <data>`, which must stop on its own within 30 s (a refusal):
/// its exit code and stderr.
async fn refused(data: &Path, args: &[&str]) -> Result<(Option<i32>, String)> {
    let scratch = tempfile::tempdir()?;
    let mut child = Command::new(BIN)
        .arg("sandbox")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .arg("--kubeconfig-out")
        .arg(scratch.path().join("kubeconfig"))
        .arg("--state-dir")
        .arg(scratch.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    for _ in 0..300 {
        if child.try_wait()?.is_some() {
            let out = child.wait_with_output()?;
            return Ok((
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    anyhow::bail!(
        "sandbox {args:?} on {} started instead of refusing",
        data.display()
    )
}

/// Every file under `dir` (or `dir` itself, a file) with its bytes and mode.
fn contents(dir: &Path) -> Result<BTreeMap<String, (Vec<u8>, u32)>> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let meta = std::fs::metadata(dir)?;
    if meta.is_file() {
        out.insert(
            String::new(),
            (std::fs::read(dir)?, meta.permissions().mode()),
        );
        return Ok(out);
    }
    out.insert(".".into(), (Vec::new(), meta.permissions().mode()));
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        out.insert(
            e.file_name().to_string_lossy().into_owned(),
            (std::fs::read(e.path())?, m.permissions().mode()),
        );
    }
    Ok(out)
}

/// The stored image's Kubernetes minor and resourceVersion counter.
fn stored(data: &Path) -> Result<(String, u64)> {
    let v: Value = serde_json::from_slice(&std::fs::read(data.join("store.json"))?)?;
    Ok((
        v["kubernetes"].as_str().unwrap_or_default().to_string(),
        v["resource_version"].as_u64().unwrap_or_default(),
    ))
}

/// A skip and a downgrade are refused with the sentence, exit 2, and the dir as it was;
/// so is a second sandbox on a dir in use. The stored minor follows the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skips_downgrades_and_a_dir_in_use_are_refused_and_change_nothing() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("cluster");
    let base = ["--empty", "--no-controllers"];
    let first = Running::start(
        &data,
        &[&base[..], &["--kubernetes-version", "1.21"]].concat(),
    )
    .await?;
    first.stop()?;
    assert_eq!(stored(&data)?.0, "1.21");
    let up = Running::start(
        &data,
        &[&base[..], &["--kubernetes-version", "1.22"]].concat(),
    )
    .await?;
    let err = up.stop()?;
    assert!(
        err.contains("upgrading the cluster of") && err.contains("from Kubernetes 1.21 to 1.22"),
        "{err}"
    );
    assert_eq!(stored(&data)?.0, "1.22");

    let before = contents(&data)?;
    let cases = [
        (
            "1.24",
            "the cluster in the data dir runs Kubernetes 1.22, and 1.24 skips 1.23: a control \
             plane is upgraded one minor at a time, as on EKS; start it at 1.23 first",
        ),
        (
            "1.21",
            "the cluster in the data dir runs Kubernetes 1.22, and 1.21 would downgrade it, \
             which EKS cannot do either: start it at 1.22 (a restart) or at the next minor \
             (an upgrade), or use another --data-dir",
        ),
    ];
    for (minor, sentence) in cases {
        let (code, err) = refused(
            &data,
            &[&base[..], &["--kubernetes-version", minor]].concat(),
        )
        .await?;
        assert_eq!(code, Some(2), "{minor}: {err}");
        assert!(
            err.contains(&format!(
                "cannot start the cluster stored in {}: {sentence}",
                data.display()
            )),
            "{minor}: {err}"
        );
        assert_eq!(contents(&data)?, before, "{minor} changed the data dir");
    }

    // One sandbox per dir: the second is refused while the first runs.
    let holder = Running::start(&data, &base).await?;
    let (code, err) = refused(&data, &base).await?;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "another sandbox is using --data-dir {}: stop it first, or choose another directory",
            data.display()
        )),
        "{err}"
    );
    let err = holder.stop()?;
    assert!(
        err.contains("restarting the Kubernetes 1.22 cluster"),
        "{err}"
    );
    Ok(())
}

/// A dir that is a file, holds other files, or holds a damaged store is refused with
/// what is wrong and what to do, exit 2, unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_data_dirs_are_refused_and_left_as_they_were() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "not a dir")?;
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign)?;
    std::fs::write(foreign.join("notes.txt"), "mine")?;
    let damaged = tmp.path().join("damaged");
    std::fs::create_dir(&damaged)?;
    std::fs::write(
        damaged.join("store.json"),
        "{\"format\": \"calico-migrate-sandbox-store/1\"",
    )?;
    let other = tmp.path().join("other-format");
    std::fs::create_dir(&other)?;
    std::fs::write(
        other.join("store.json"),
        json!({"format": "something-else/9", "kubernetes": "1.21", "resource_version": 1, "objects": []})
            .to_string(),
    )?;
    let cases = [
        (
            &file,
            format!(
                "--data-dir {} is not a directory: name a directory, or a path that does not exist yet",
                file.display()
            ),
        ),
        (
            &foreign,
            format!(
                "--data-dir {} holds notes.txt but no sandbox store (store.json): choose an \
                 empty or new directory",
                foreign.display()
            ),
        ),
        (
            &damaged,
            format!(
                "{} is not a sandbox store: it is not the JSON of a store (",
                damaged.join("store.json").display()
            ),
        ),
        (
            &other,
            format!(
                "{} is not a sandbox store: it is format \"something-else/9\", not \
                 calico-migrate-sandbox-store/1: it was written by another program or version; \
                 move it away or choose another --data-dir",
                other.join("store.json").display()
            ),
        ),
    ];
    for (dir, sentence) in cases {
        let before = contents(dir)?;
        let (code, err) = refused(dir, &["--empty", "--no-controllers"]).await?;
        assert_eq!(code, Some(2), "{}: {err}", dir.display());
        assert!(err.contains(&sentence), "{}: {err}", dir.display());
        assert!(!err.contains("Error {") && !err.contains("Os {"), "{err}");
        assert_eq!(contents(dir)?, before, "{} changed", dir.display());
    }
    Ok(())
}

/// What was written a second before a SIGKILL is there after a restart, with its
/// resourceVersion; the counter continues after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sandbox_keeps_what_was_written_a_second_before() -> Result<()> {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, PostParams};
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("cluster");
    let args = [
        "--empty",
        "--no-controllers",
        "--kubernetes-version",
        "1.30",
        "--fault",
        "lapse:node-a",
    ];
    let run = Running::start(&data, &args).await?;
    // The faults in force are the command line's: this run's, not a stored run's.
    let lapses = |client: kube::Client| async move {
        let cm = Api::<ConfigMap>::namespaced(client, "sandbox-system")
            .get("dataplane-faults")
            .await?;
        anyhow::Ok(
            cm.data
                .unwrap_or_default()
                .values()
                .any(|v| v.contains("node-a")),
        )
    };
    assert!(lapses(run.client().await?).await?, "lapse:node-a in force");
    let api: Api<ConfigMap> = Api::namespaced(run.client().await?, "default");
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "kept"}, "data": {"written": "before the kill"}
    }))?;
    let made = api.create(&PostParams::default(), &cm).await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    run.kill()?;

    let run = Running::start(&data, &["--empty", "--no-controllers"]).await?;
    assert!(
        !lapses(run.client().await?).await?,
        "a restart without --fault runs without the stored lapse"
    );
    let api: Api<ConfigMap> = Api::namespaced(run.client().await?, "default");
    let got = api.get("kept").await?;
    assert_eq!(
        got.data
            .as_ref()
            .and_then(|d| d.get("written"))
            .map(String::as_str),
        Some("before the kill")
    );
    assert_eq!(got.metadata.uid, made.metadata.uid);
    assert_eq!(
        got.metadata.resource_version,
        made.metadata.resource_version
    );
    let next = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "after"}}))?,
        )
        .await?;
    let rv = |c: &ConfigMap| -> u64 {
        c.metadata
            .resource_version
            .as_deref()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0)
    };
    assert!(
        rv(&next) > rv(&made),
        "{:?} after {:?}",
        next.metadata,
        made.metadata
    );
    let err = run.stop()?;
    assert!(
        err.contains("restarting the Kubernetes 1.30 cluster"),
        "{err}"
    );
    assert_eq!(stored(&data)?.0, "1.30");
    Ok(())
}

/// (namespace/name) -> what must not change across a control-plane upgrade.
fn pods(run: &Running) -> Result<BTreeMap<String, Value>> {
    let list = run.json(&["get", "pods", "-A"])?;
    Ok(list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let key = format!(
                "{}/{}",
                p["metadata"]["namespace"].as_str().unwrap_or(""),
                p["metadata"]["name"].as_str().unwrap_or("")
            );
            let ready = p["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .map(|c| c["status"].clone());
            (
                key,
                json!({
                    "uid": p["metadata"]["uid"],
                    "node": p["spec"]["nodeName"],
                    "phase": p["status"]["phase"],
                    "ready": ready,
                    "images": p["spec"]["containers"].as_array().map(|cs| cs.iter().map(|c| c["image"].clone()).collect::<Vec<_>>()),
                }),
            )
        })
        .collect())
}

fn nodes(run: &Running) -> Result<BTreeMap<String, Value>> {
    let list = run.json(&["get", "nodes"])?;
    Ok(list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|n| {
            let ready = n["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .map(|c| c["status"].clone());
            (
                n["metadata"]["name"].as_str().unwrap_or("").to_string(),
                json!({
                    "uid": n["metadata"]["uid"],
                    "labels": n["metadata"]["labels"],
                    "taints": n["spec"]["taints"],
                    "ready": ready,
                    "kubelet": n["status"]["nodeInfo"]["kubeletVersion"],
                }),
            )
        })
        .collect())
}

/// Ready calico-node pods, until `want` of them are or 60 s pass.
async fn calico_nodes_ready(run: &Running, want: usize) -> Result<()> {
    let mut seen = 0;
    for _ in 0..120 {
        seen = pods(run)?
            .iter()
            .filter(|(k, v)| k.starts_with("kube-system/calico-node-") && v["ready"] == "True")
            .count();
        if seen == want {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("{seen} of {want} calico-node pods Ready after 60 s")
}

/// Real helm 3 installs the published aws-calico 0.3.10 chart at 1.21 (controllers on:
/// calico-node and typha run); the cluster is then stopped and upgraded one minor at a
/// time up to 1.29. At every minor: `/version`, helm reads the release (`list`, `status`,
/// `get manifest` and `get values` as at 1.21), kubectl reads the 12 crds/ CRDs (created
/// as apiextensions v1beta1) as v1 with upstream's conversion, the PDB through policy/v1
/// (and policy/v1beta1 only up to 1.24), the PodSecurityPolicy until 1.24 and no such type
/// from 1.25, and the pods and nodes as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm3_release_of_0_3_10_reads_back_after_upgrades_from_1_21_to_1_29() -> Result<()> {
    const TEST: &str =
        "sandbox_upgrade::helm3_release_of_0_3_10_reads_back_after_upgrades_from_1_21_to_1_29";
    let Some(helm_path) = helm_client::find_or_skip(3)? else {
        return Ok(());
    };
    if let Err(why) = kubectl_client::usable() {
        eprintln!("SKIPPED {TEST}: {why}");
        return Ok(());
    }
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/real/aws-calico-0.3.10.tgz");
    if !chart.is_file() {
        eprintln!(
            "SKIPPED {TEST}: {} is absent (see ../shared/real/PROVENANCE.md)",
            chart.display()
        );
        return Ok(());
    }
    let chart = chart.display().to_string();
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("cluster");
    let seed = [
        "--no-calico",
        "--nodes",
        "2",
        "--namespaces",
        "2",
        "--time-scale",
        "100",
    ];
    let run = Running::start(
        &data,
        &[&seed[..], &["--kubernetes-version", "1.21"]].concat(),
    )
    .await?;
    let helm = helm_client::Helm::new(helm_path.clone(), &run.kubeconfig)?;
    let out = helm.ok(&["install", RELEASE, &chart, "-n", RELEASE_NS])?;
    assert!(out.contains("STATUS: deployed"), "helm install:\n{out}");
    let psp = tmp.path().join("psp.yaml");
    std::fs::write(
        &psp,
        "apiVersion: policy/v1beta1\nkind: PodSecurityPolicy\nmetadata:\n  name: kept-in-etcd\n\
         spec:\n  privileged: false\n  seLinux: {rule: RunAsAny}\n  runAsUser: {rule: RunAsAny}\n  \
         supplementalGroups: {rule: RunAsAny}\n  fsGroup: {rule: RunAsAny}\n  volumes: ['*']\n",
    )?;
    run.ok(&["apply", "-f", &psp.display().to_string()])?;
    calico_nodes_ready(&run, 2).await?;

    let manifest = helm.ok(&["get", "manifest", RELEASE, "-n", RELEASE_NS])?;
    let values = helm.ok(&[
        "get", "values", RELEASE, "-n", RELEASE_NS, "--all", "-o", "json",
    ])?;
    let pods_before = pods(&run)?;
    let nodes_before = nodes(&run)?;
    assert_eq!(nodes_before.len(), 2, "{nodes_before:?}");
    let mut crds: Vec<String> = run
        .ok(&["get", "crd", "-o", "name"])?
        .lines()
        .map(String::from)
        .collect();
    crds.sort();
    assert_eq!(crds.len(), 12, "{crds:?}");
    let crd_v1beta1 = run.json(&[
        "get",
        "customresourcedefinitions.v1beta1.apiextensions.k8s.io",
        "felixconfigurations.crd.projectcalico.org",
    ])?;
    let pdb_name = run
        .ok(&["get", "pdb", "-n", RELEASE_NS, "-o", "name"])?
        .trim()
        .to_string();
    let pdb_name = pdb_name
        .strip_prefix("poddisruptionbudget.policy/")
        .context("one PDB")?
        .to_string();
    let pdb_before = run.json(&[
        "get",
        "poddisruptionbudgets.v1.policy",
        "-n",
        RELEASE_NS,
        &pdb_name,
    ])?;
    let err = run.stop()?;
    assert!(err.contains("sandbox stopping"), "{err}");

    for minor in 22..=29u32 {
        let v = format!("1.{minor}");
        let run =
            Running::start(&data, &["--kubernetes-version", &v, "--time-scale", "100"]).await?;
        let version = run.json(&["version"])?;
        assert_eq!(
            version["serverVersion"]["minor"],
            json!(minor.to_string()),
            "{v}"
        );
        let helm = helm_client::Helm::new(helm_path.clone(), &run.kubeconfig)?;
        let list: Value =
            serde_json::from_str(&helm.ok(&["list", "-n", RELEASE_NS, "-o", "json"])?)?;
        assert_eq!(list.as_array().map(Vec::len), Some(1), "{v}: {list}");
        assert_eq!(list[0]["status"], json!("deployed"), "{v}: {list}");
        assert_eq!(list[0]["revision"], json!("1"), "{v}: {list}");
        assert_eq!(list[0]["chart"], json!("aws-calico-0.3.10"), "{v}: {list}");
        let status = helm.ok(&["status", RELEASE, "-n", RELEASE_NS])?;
        assert!(status.contains("STATUS: deployed"), "{v}: {status}");
        assert_eq!(
            helm.ok(&["get", "manifest", RELEASE, "-n", RELEASE_NS])?,
            manifest,
            "{v}: helm get manifest"
        );
        assert_eq!(
            helm.ok(&[
                "get", "values", RELEASE, "-n", RELEASE_NS, "--all", "-o", "json"
            ])?,
            values,
            "{v}: helm get values"
        );

        // The CRDs, created at v1beta1, read as v1 (v1beta1 is gone from 1.22).
        let mut now: Vec<String> = run
            .ok(&["get", "crd", "-o", "name"])?
            .lines()
            .map(String::from)
            .collect();
        now.sort();
        assert_eq!(now, crds, "{v}");
        let crd = run.json(&["get", "crd", "felixconfigurations.crd.projectcalico.org"])?;
        assert_eq!(crd["apiVersion"], json!("apiextensions.k8s.io/v1"), "{v}");
        assert_eq!(
            crd["metadata"]["uid"], crd_v1beta1["metadata"]["uid"],
            "{v}"
        );
        // v1beta1 decode defaults, then conversion to v1 (convert.rs cites both).
        assert_eq!(crd["spec"]["preserveUnknownFields"], json!(true), "{v}");
        assert!(crd["spec"].get("version").is_none(), "{v}: {crd}");
        assert!(crd["spec"].get("validation").is_none(), "{v}: {crd}");
        let versions = crd["spec"]["versions"].as_array().context("versions")?;
        assert_eq!(versions.len(), 1, "{v}: {crd}");
        assert_eq!(versions[0]["name"], crd_v1beta1["spec"]["version"], "{v}");
        assert_eq!(
            (
                versions[0]["served"].clone(),
                versions[0]["storage"].clone()
            ),
            (json!(true), json!(true))
        );
        assert_eq!(
            versions[0]["schema"], crd_v1beta1["spec"]["validation"],
            "{v}: the top-level validation is the version's schema"
        );
        assert_eq!(crd["spec"]["scope"], crd_v1beta1["spec"]["scope"], "{v}");
        let beta = run.kubectl(&[
            "get",
            "customresourcedefinitions.v1beta1.apiextensions.k8s.io",
        ])?;
        assert!(
            !beta.status.success(),
            "{v}: apiextensions v1beta1 still served"
        );

        // The PDB through policy/v1; policy/v1beta1 only up to 1.24.
        let pdb = run.json(&[
            "get",
            "poddisruptionbudgets.v1.policy",
            "-n",
            RELEASE_NS,
            &pdb_name,
        ])?;
        assert_eq!(pdb["apiVersion"], json!("policy/v1"), "{v}");
        assert_eq!(pdb["spec"], pdb_before["spec"], "{v}");
        assert_eq!(pdb["metadata"]["uid"], pdb_before["metadata"]["uid"], "{v}");
        let beta = run.kubectl(&[
            "get",
            "poddisruptionbudgets.v1beta1.policy",
            "-n",
            RELEASE_NS,
        ])?;
        assert_eq!(
            beta.status.success(),
            minor <= 24,
            "{v}: policy/v1beta1 PDBs"
        );

        // The PSP, kept in the store, is unreachable once the kind is gone.
        let psps = run.kubectl(&["get", "psp", "-o", "name"])?;
        if minor <= 24 {
            assert_eq!(
                String::from_utf8_lossy(&psps.stdout).trim(),
                "podsecuritypolicy.policy/kept-in-etcd",
                "{v}"
            );
        } else {
            assert!(!psps.status.success(), "{v}");
            let err = String::from_utf8_lossy(&psps.stderr);
            assert!(
                err.contains("the server doesn't have a resource type \"psp\""),
                "{v}: {err}"
            );
        }

        assert_eq!(nodes(&run)?, nodes_before, "{v}: nodes");
        assert_eq!(pods(&run)?, pods_before, "{v}: pods");
        let err = run.stop()?;
        assert!(
            err.contains(&format!("from Kubernetes 1.{} to {v}", minor - 1)),
            "{v}: {err}"
        );
        assert_eq!(stored(&data)?.0, v);
    }
    Ok(())
}

/// `calico-migrate <args>` against the sandbox of `kubeconfig`, state in `state`.
fn migrate(kubeconfig: &Path, state: &Path, args: &[&str]) -> Result<Output> {
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

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The cluster real helm 3 made at 1.21 (aws-calico 0.3.10), upgraded one minor at a
/// time to 1.33, is migrated by the tool with the real v3.30.3 manifests: plan picks
/// the current path with no blocker its steps do not fix (calico-node's startup made
/// FelixConfiguration `default`, as on a real cluster), apply, rollback (helm reads
/// the release as before) and apply again exit 0 with every check passed on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm3_install_upgraded_to_1_33_is_migrated_rolled_back_and_migrated_again() -> Result<()> {
    const TEST: &str = "sandbox_upgrade::helm3_install_upgraded_to_1_33_is_migrated_rolled_back_and_migrated_again";
    let Some(helm_path) = helm_client::find_or_skip(3)? else {
        return Ok(());
    };
    let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/real");
    let files = [
        "aws-calico-0.3.10.tgz",
        "calico-v3.30.3-operator-crds-and-operator.yaml",
        "calico-v3.30.3-policy-only.yaml",
    ];
    if let Some(missing) = files.iter().find(|f| !real.join(f).is_file()) {
        eprintln!(
            "SKIPPED {TEST}: {} is absent (see ../shared/real/PROVENANCE.md)",
            real.join(missing).display()
        );
        return Ok(());
    }
    let path = |f: &str| real.join(f).display().to_string();
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("cluster");
    let state = tmp.path().join("state");
    let scale = ["--time-scale", "100"];
    let seed = [
        "--no-calico",
        "--nodes",
        "2",
        "--namespaces",
        "2",
        "--kubernetes-version",
        "1.21",
    ];
    let run = Running::start(&data, &[&seed[..], &scale[..]].concat()).await?;
    let helm = helm_client::Helm::new(helm_path.clone(), &run.kubeconfig)?;
    helm.ok(&["install", RELEASE, &path(files[0]), "-n", RELEASE_NS])?;
    let manifest = helm.ok(&["get", "manifest", RELEASE, "-n", RELEASE_NS])?;
    let client = run.client().await?;
    wait_calico_nodes_ready(&client, 2).await?;
    run.stop()?;
    for minor in 22..=33u32 {
        let v = format!("1.{minor}");
        Running::start(
            &data,
            &[&["--kubernetes-version", v.as_str()][..], &scale[..]].concat(),
        )
        .await?
        .stop()?;
    }
    let run = Running::start(&data, &scale).await?;
    let client = run.client().await?;
    let nodes: Vec<String> = nodes(&run)?.into_keys().collect();
    assert_eq!(nodes.len(), 2, "{nodes:?}");

    let kc = run.kubeconfig.clone();
    let helm = helm_client::Helm::new(helm_path, &kc)?;
    let o = migrate(
        &kc,
        &state,
        &[
            "plan",
            "-o",
            "json",
            "--operator-manifest",
            &path(files[1]),
            "--calico-manifest",
            &path(files[2]),
        ],
    )?;
    assert_eq!(o.status.code(), Some(0), "plan: {}", text(&o));
    let plan: Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(plan["profile"], "aws-calico-0.3.10-v3.30", "{plan:#}");
    let blockers: Vec<&str> = plan["blockers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["code"].as_str())
        .collect();
    assert!(
        !blockers.contains(&"CONVERTER_FELIX_CONFIGURATION"),
        "calico-node's startup should have created FelixConfiguration default: {blockers:?}"
    );

    let every_node_checked = |o: &Output, what: &str| {
        let out = text(o);
        assert_eq!(o.status.code(), Some(0), "{what}: {out}");
        for n in &nodes {
            assert!(
                out.contains(&format!("node {n}: ")),
                "{what}: {n} not checked\n{out}"
            );
        }
        // Every check round passed, and every node's probes too.
        let checks: Vec<&str> = out
            .lines()
            .filter(|l| l.trim_start().starts_with("check "))
            .collect();
        assert!(!checks.is_empty(), "{what}: {out}");
        for l in checks {
            assert!(l.contains(": passed ("), "{what}: {l}");
        }
        for l in out.lines().filter(|l| l.contains(" failed")) {
            assert!(l.contains(" 0 failed"), "{what}: {l}");
        }
    };
    let o = migrate(
        &kc,
        &state,
        &["apply", "--yes", "--sandbox-time-scale", "100"],
    )?;
    every_node_checked(&o, "apply");
    assert!(
        helm.fails(&["status", RELEASE, "-n", RELEASE_NS])?
            .contains("release: not found"),
        "detach-helm removed the release record"
    );
    wait_calico_nodes_ready_in(&client, "calico-system", 2).await?;

    let o = migrate(
        &kc,
        &state,
        &["rollback", "--yes", "--sandbox-time-scale", "100"],
    )?;
    every_node_checked(&o, "rollback");
    assert_eq!(
        helm.ok(&["get", "manifest", RELEASE, "-n", RELEASE_NS])?,
        manifest
    );
    assert!(
        helm.ok(&["status", RELEASE, "-n", RELEASE_NS])?
            .contains("STATUS: deployed")
    );
    wait_calico_nodes_ready(&client, 2).await?;

    let o = migrate(
        &kc,
        &state,
        &["apply", "--yes", "--sandbox-time-scale", "100"],
    )?;
    every_node_checked(&o, "second apply");
    wait_calico_nodes_ready_in(&client, "calico-system", 2).await?;
    run.stop()?;
    Ok(())
}

/// `want` Ready calico-node pods in kube-system, within 60 s.
async fn wait_calico_nodes_ready(client: &kube::Client, want: usize) -> Result<()> {
    wait_calico_nodes_ready_in(client, "kube-system", want).await
}

/// `want` Ready calico-node pods in `ns`, within 60 s.
async fn wait_calico_nodes_ready_in(client: &kube::Client, ns: &str, want: usize) -> Result<()> {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, ListParams};
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut seen = 0;
    for _ in 0..120 {
        seen = api
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|p| {
                p.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("calico-node-"))
            })
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        if seen == want {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("{seen} of {want} calico-node pods Ready in {ns} after 60 s")
}
