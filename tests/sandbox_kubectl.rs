//! `calico-migrate sandbox` as a process: its kubeconfig works for kube-rs, it
//! stops cleanly on SIGTERM, and the installed kubectl passes tests/kubectl/sandbox.sh.

mod kubectl_client;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};

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
