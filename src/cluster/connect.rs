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
    #[error("cannot reach the API server {server} (context {context}): {failure}")]
    Unreachable {
        server: String,
        context: String,
        failure: ConnectFailure,
    },
}

/// Why the first request to the API server failed, in the words a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectFailure {
    #[error(
        "the connection was refused (nothing listens at that address and port, or a \
         firewall rejects it). Check the context's server address and that the cluster's \
         endpoint is up"
    )]
    Refused,
    #[error(
        "its host name does not resolve ({detail}). Check the server address in the \
         kubeconfig, and your DNS or VPN"
    )]
    Dns { detail: String },
    #[error(
        "the TLS handshake failed ({detail}). Check the cluster's CA data in the kubeconfig \
         and that the address is the API server's"
    )]
    Tls { detail: String },
    #[error(
        "no answer within {secs} s. Check the network path (VPN, bastion, security groups) \
         and that the context points at the right cluster"
    )]
    Timeout { secs: u64 },
    #[error("the connection was reset. Check proxies and load balancers on the way")]
    Reset,
    #[error("{detail}")]
    Other { detail: String },
}

impl ConnectFailure {
    /// Classify a client error by walking its causes: hyper-util names a DNS failure
    /// "dns error" (client/legacy/connect/http.rs `ConnectError::dns`), the socket's
    /// io::Error carries refusals, resets and timeouts, rustls' errors name the
    /// certificate or the handshake.
    pub fn classify(err: &(dyn std::error::Error + 'static)) -> ConnectFailure {
        let mut chain: Vec<&(dyn std::error::Error + 'static)> = vec![err];
        while let Some(next) = chain.last().and_then(|e| e.source()) {
            chain.push(next);
        }
        for (i, e) in chain.iter().enumerate() {
            if e.to_string() == "dns error" {
                let detail = chain
                    .get(i + 1)
                    .map_or_else(|| "dns error".to_string(), |c| c.to_string());
                return ConnectFailure::Dns { detail };
            }
        }
        for e in &chain {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => return ConnectFailure::Refused,
                    std::io::ErrorKind::ConnectionReset => return ConnectFailure::Reset,
                    std::io::ErrorKind::TimedOut => {
                        return ConnectFailure::Timeout {
                            secs: CONNECT_TIMEOUT.as_secs(),
                        };
                    }
                    _ => {}
                }
            }
        }
        let innermost = chain.last().map(|e| e.to_string()).unwrap_or_default();
        let lower = innermost.to_ascii_lowercase();
        if ["certificate", "handshake", "tls", "alert"]
            .iter()
            .any(|w| lower.contains(w))
        {
            return ConnectFailure::Tls { detail: innermost };
        }
        ConnectFailure::Other { detail: innermost }
    }
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
    let unreachable = |failure: ConnectFailure| ConnectError::Unreachable {
        server: server.clone(),
        context: chosen.clone(),
        failure,
    };
    let version = tokio::time::timeout(FIRST_REQUEST_TIMEOUT, client.apiserver_version())
        .await
        .map_err(|_| {
            unreachable(ConnectFailure::Timeout {
                secs: FIRST_REQUEST_TIMEOUT.as_secs(),
            })
        })?
        .map_err(|e| unreachable(ConnectFailure::classify(&e)))?;
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

    /// A cause chain as hyper-util and kube build it: a message and its source.
    #[derive(Debug)]
    struct Cause(
        &'static str,
        Option<Box<dyn std::error::Error + Send + Sync>>,
    );

    impl std::fmt::Display for Cause {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Cause {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_ref().map(|e| &**e as _)
        }
    }

    fn client_error(inner: Box<dyn std::error::Error + Send + Sync>) -> Cause {
        Cause(
            "ServiceError: client error (Connect)",
            Some(Box::new(Cause("client error (Connect)", Some(inner)))),
        )
    }

    #[test]
    fn connection_failures_are_named_by_what_happened() {
        use std::io::{Error, ErrorKind};
        let refused = client_error(Box::new(Cause(
            "tcp connect error",
            Some(Box::new(Error::from(ErrorKind::ConnectionRefused))),
        )));
        assert_eq!(ConnectFailure::classify(&refused), ConnectFailure::Refused);
        let dns = client_error(Box::new(Cause(
            "dns error",
            Some(Box::new(Error::other(
                "failed to lookup address information: Name or service not known",
            ))),
        )));
        let failure = ConnectFailure::classify(&dns);
        assert!(
            matches!(&failure, ConnectFailure::Dns { detail } if detail.contains("Name or service not known")),
            "{failure:?}"
        );
        assert!(failure.to_string().contains("does not resolve"));
        let tls = client_error(Box::new(Error::new(
            ErrorKind::InvalidData,
            "invalid peer certificate: UnknownIssuer",
        )));
        assert!(matches!(
            ConnectFailure::classify(&tls),
            ConnectFailure::Tls { .. }
        ));
        let timeout = client_error(Box::new(Error::from(ErrorKind::TimedOut)));
        assert_eq!(
            ConnectFailure::classify(&timeout),
            ConnectFailure::Timeout {
                secs: CONNECT_TIMEOUT.as_secs()
            }
        );
        let reset = client_error(Box::new(Error::from(ErrorKind::ConnectionReset)));
        assert_eq!(ConnectFailure::classify(&reset), ConnectFailure::Reset);
        let other = client_error(Box::new(Cause("something else", None)));
        assert_eq!(
            ConnectFailure::classify(&other),
            ConnectFailure::Other {
                detail: "something else".into()
            }
        );
        for f in [refused, dns, tls, timeout, reset] {
            let line = ConnectFailure::classify(&f).to_string();
            assert!(
                !line.contains('\n') && line.ends_with(|c: char| c.is_alphanumeric() || c == ')'),
                "{line}"
            );
        }
    }

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
