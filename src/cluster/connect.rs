//! Build a `kube::Client` the way kubectl finds its cluster: `--kubeconfig`, else
//! `$KUBECONFIG` (a colon-separated list merged first-wins, like kubectl), else
//! `~/.kube/config`; `--context` or the current context. Errors name the file or
//! the context, and the first request is bounded so an unreachable API server
//! fails within seconds instead of hanging.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};

/// Longest wait for the TCP/TLS connection to the API server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the first request (`/version`) to answer.
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "no kubeconfig found: pass --kubeconfig PATH, set KUBECONFIG, or create ~/.kube/config"
    )]
    NoKubeconfig,
    #[error("cannot read kubeconfig {path}: {problem}")]
    Unreadable { path: PathBuf, problem: String },
    #[error("kubeconfig {files}: {problem}")]
    Invalid { files: String, problem: String },
    #[error("context {context:?} is not in kubeconfig {files}; contexts there: {known}")]
    UnknownContext {
        context: String,
        files: String,
        known: String,
    },
    #[error(
        "API server {server} (context {context}) did not answer within {secs} s: {problem}. \
         Check the network path (VPN, bastion) and that the context points at the right cluster"
    )]
    Unreachable {
        server: String,
        context: String,
        secs: u64,
        problem: String,
    },
}

/// A connected client and where it points, for messages and the saved plan.
#[derive(Clone)]
pub struct Connection {
    pub client: kube::Client,
    pub context: String,
    pub server: String,
    /// `gitVersion` of the API server, e.g. `v1.29.15-eks-473151a`.
    pub server_version: String,
}

/// The kubeconfig files to read, in kubectl's order of precedence.
pub fn kubeconfig_paths(
    explicit: Option<&Path>,
    env: Option<&str>,
    home: Option<&Path>,
) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        // clap fills `--kubeconfig` from $KUBECONFIG too, so it may hold a list.
        return split_list(&p.to_string_lossy());
    }
    if let Some(list) = env.filter(|s| !s.is_empty()) {
        return split_list(list);
    }
    home.map(|h| vec![h.join(".kube").join("config")])
        .unwrap_or_default()
}

fn split_list(list: &str) -> Vec<PathBuf> {
    std::env::split_paths(list)
        .filter(|p| !p.as_os_str().is_empty())
        .collect()
}

/// Read and merge the files (the first file to set a value wins, as in kubectl).
/// Missing files in a list are skipped like kubectl does, unless none exists.
pub fn load_kubeconfig(paths: &[PathBuf]) -> Result<Kubeconfig, ConnectError> {
    let mut merged: Option<Kubeconfig> = None;
    for path in paths {
        if !path.exists() && paths.len() > 1 {
            continue;
        }
        let kc = Kubeconfig::read_from(path).map_err(|e| ConnectError::Unreadable {
            path: path.clone(),
            problem: e.to_string(),
        })?;
        merged = Some(match merged {
            None => kc,
            Some(m) => m.merge(kc).map_err(|e| ConnectError::Invalid {
                files: describe(paths),
                problem: e.to_string(),
            })?,
        });
    }
    merged.ok_or(ConnectError::NoKubeconfig)
}

fn describe(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// Build the client and prove the server answers (GET /version) within bounded time.
pub async fn connect(
    explicit: Option<&Path>,
    context: Option<&str>,
) -> Result<Connection, ConnectError> {
    let env = std::env::var("KUBECONFIG").ok();
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let paths = kubeconfig_paths(explicit, env.as_deref(), home.as_deref());
    if paths.is_empty() {
        return Err(ConnectError::NoKubeconfig);
    }
    let kc = load_kubeconfig(&paths)?;
    let files = describe(&paths);
    let chosen = context
        .map(str::to_string)
        .or_else(|| kc.current_context.clone())
        .ok_or_else(|| ConnectError::Invalid {
            files: files.clone(),
            problem: "no current-context is set; pass --context NAME".into(),
        })?;
    if !kc.contexts.iter().any(|c| c.name == chosen) {
        let known = kc
            .contexts
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(ConnectError::UnknownContext {
            context: chosen,
            files,
            known: if known.is_empty() {
                "(none)".into()
            } else {
                known
            },
        });
    }
    let opts = KubeConfigOptions {
        context: Some(chosen.clone()),
        ..KubeConfigOptions::default()
    };
    let mut config = kube::Config::from_custom_kubeconfig(kc, &opts)
        .await
        .map_err(|e| ConnectError::Invalid {
            files: files.clone(),
            problem: format!("context {chosen}: {e}"),
        })?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(Duration::from_secs(60));
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).map_err(|e| ConnectError::Invalid {
        files: files.clone(),
        problem: format!("context {chosen}: {e}"),
    })?;
    let unreachable = |problem: String| ConnectError::Unreachable {
        server: server.clone(),
        context: chosen.clone(),
        secs: FIRST_REQUEST_TIMEOUT.as_secs(),
        problem,
    };
    let version = tokio::time::timeout(FIRST_REQUEST_TIMEOUT, client.apiserver_version())
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    Ok(Connection {
        client,
        context: chosen,
        server,
        server_version: version.git_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_path_wins_and_lists_split() {
        let p = kubeconfig_paths(Some(Path::new("/a:/b")), Some("/c"), Some(Path::new("/h")));
        assert_eq!(p, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        let p = kubeconfig_paths(None, Some("/c::/d"), Some(Path::new("/h")));
        assert_eq!(p, vec![PathBuf::from("/c"), PathBuf::from("/d")]);
        let p = kubeconfig_paths(None, None, Some(Path::new("/h")));
        assert_eq!(p, vec![PathBuf::from("/h/.kube/config")]);
    }

    #[test]
    fn merge_first_wins_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(
            &a,
            crate::sandbox::serve::kubeconfig_for("http://127.0.0.1:1"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            &b,
            "apiVersion: v1\nkind: Config\ncurrent-context: other\ncontexts:\n- name: other\n  context:\n    cluster: sandbox\n    user: sandbox\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let kc = load_kubeconfig(&[a.clone(), b.clone()]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kc.current_context.as_deref(), Some("sandbox"));
        assert_eq!(kc.contexts.len(), 2);
        std::fs::write(&b, "{not yaml: [").unwrap_or_else(|e| panic!("{e}"));
        let err = load_kubeconfig(std::slice::from_ref(&b))
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains(&b.display().to_string())));
    }
}
