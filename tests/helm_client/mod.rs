//! Real Helm (3 and 4, installed by scripts/install-helm.sh) as an independent client of
//! the sandbox: where the binaries are, whether a test runs, skips or fails without
//! them, and a runner that keeps Helm on the sandbox and out of the user's home.
//!
//! Where helm N is: `$CALICO_MIGRATE_HELM<N>` when set (.ci/run sets it from the
//! script's output; set but not a helm N binary is an error), else the script's cache,
//! `${CALICO_MIGRATE_HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/calico-migrate/helm}/<N>/helm`.
//! A `helm` on PATH is never used: its version is whatever the machine has.
//! Missing: the test prints one `SKIPPED:` line and passes, unless CI=true, where it fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail, ensure};

/// The install script's cache dir for helm `major`, as scripts/install-helm.sh computes it.
fn cached(major: u32) -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let root = env("CALICO_MIGRATE_HELM_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|c| c.join("calico-migrate/helm")))
        .or_else(|| env("HOME").map(|h| h.join(".cache/calico-migrate/helm")))?;
    Some(root.join(major.to_string()).join("helm"))
}

/// `helm version` of the binary at `path`, e.g. `v3.17.3`.
fn version(path: &Path) -> Result<String> {
    let tmp = tempfile::tempdir()?;
    let out = Command::new(path)
        .args(["version", "--template", "{{.Version}}"])
        .env_clear()
        .env("HOME", tmp.path())
        .env("HELM_CACHE_HOME", tmp.path())
        .env("HELM_CONFIG_HOME", tmp.path())
        .env("HELM_DATA_HOME", tmp.path())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", path.display()))?;
    ensure!(
        out.status.success(),
        "{} version: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The helm `major` binary to test with; `Ok(None)` after printing the one SKIPPED line
/// when it is not installed and CI is not `true`.
pub fn find_or_skip(major: u32) -> Result<Option<PathBuf>> {
    let var = format!("CALICO_MIGRATE_HELM{major}");
    let (path, named) = match std::env::var_os(&var).filter(|v| !v.is_empty()) {
        Some(p) => (PathBuf::from(p), true),
        None => match cached(major) {
            Some(p) if p.is_file() => (p, false),
            _ => {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    bail!(
                        "helm {major} not found and CI=true: .ci/run installs it with \
                         scripts/install-helm.sh and sets {var}"
                    );
                }
                // Straight to the process's stderr, past the test harness's capture, so
                // the line shows in a plain `cargo test`.
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: helm {major} not found; run scripts/install-helm.sh"
                );
                return Ok(None);
            }
        },
    };
    let v = version(&path).with_context(|| {
        format!(
            "{} ({}) is not a working helm",
            path.display(),
            if named {
                var.as_str()
            } else {
                "the install cache"
            }
        )
    })?;
    ensure!(
        v.starts_with(&format!("v{major}.")),
        "{} is helm {v}, not helm {major}: run scripts/install-helm.sh",
        path.display()
    );
    Ok(Some(path))
}

/// One helm binary bound to one sandbox: `--kubeconfig` the test wrote, nothing from the
/// environment (no KUBECONFIG, proxy or HELM_* of the user's), HOME and Helm's cache,
/// config and data homes in a temp dir dropped with it (kubectl-style discovery caches
/// go under HOME/.kube).
pub struct Helm {
    path: PathBuf,
    kubeconfig: PathBuf,
    home: tempfile::TempDir,
}

impl Helm {
    /// Refuses a kubeconfig whose server is not the sandbox on 127.0.0.1.
    pub fn new(path: PathBuf, kubeconfig: &Path) -> Result<Helm> {
        let kc = std::fs::read_to_string(kubeconfig)
            .with_context(|| format!("reading {}", kubeconfig.display()))?;
        let servers: Vec<&str> = kc
            .lines()
            .filter_map(|l| l.trim().strip_prefix("server:"))
            .map(str::trim)
            .collect();
        ensure!(
            !servers.is_empty() && servers.iter().all(|s| s.starts_with("http://127.0.0.1:")),
            "helm only talks to the sandbox on 127.0.0.1; {} names {servers:?}",
            kubeconfig.display()
        );
        Ok(Helm {
            path,
            kubeconfig: kubeconfig.to_path_buf(),
            home: tempfile::tempdir()?,
        })
    }

    /// `helm <args>` with its exit status, stdout and stderr.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        let h = self.home.path();
        Command::new(&self.path)
            .args(args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .env_clear()
            .env("HOME", h)
            .env("HELM_CACHE_HOME", h.join("cache"))
            .env("HELM_CONFIG_HOME", h.join("config"))
            .env("HELM_DATA_HOME", h.join("data"))
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {} {args:?}", self.path.display()))
    }

    /// `helm <args>`, which must succeed: its stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        ensure!(
            out.status.success(),
            "helm {args:?} exited {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).with_context(|| format!("helm {args:?}: stdout not UTF-8"))
    }

    /// `helm <args>`, which must fail: its stderr.
    pub fn fails(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        ensure!(
            !out.status.success(),
            "helm {args:?} succeeded, printing:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
