//! The Lease `kube-system/calico-migrate`, held while apply or rollback runs, so two
//! people on two machines cannot change the cluster at once. Renewed in the
//! background, released on exit; a stale one (not renewed within its duration) is
//! taken over and reported with its holder.
//!
//! The holder is `HOST:STATE_DIR#PID`. A new process with the same host and state dir
//! may take the Lease at once: sled's file lock already proves the old one is dead,
//! so a resume after a crash does not wait for expiry.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::errors::{Permission, Scope, answer};

pub const LEASE_NAME: &str = "calico-migrate";
pub const LEASE_NAMESPACE: &str = "kube-system";

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "another calico-migrate holds Lease {LEASE_NAMESPACE}/{LEASE_NAME}: {holder}, renewed {age}s ago \
         (expires after {duration}s without renewal). Wait for it to finish; if that run is gone, \
         wait for the Lease to expire or delete it: kubectl -n {LEASE_NAMESPACE} delete lease {LEASE_NAME}"
    )]
    Held {
        holder: String,
        age: i64,
        duration: i32,
    },
    /// A call on the Lease the API server refused or never answered, as one sentence:
    /// verb, the Lease, what the API server answered and what to do (on a 403, the
    /// permission to grant). The Kubernetes error is not the `source`: its text is
    /// already in the sentence, and the CLI prints every source after it.
    #[error(
        "{} Lease {LEASE_NAMESPACE}/{LEASE_NAME} (coordination.k8s.io/v1): {}; {}",
        gerund(.verb), answer(.error), permission(.verb).advice(.error)
    )]
    Api {
        /// The verb as RBAC names it: `get`, `create`, `update`, `delete`.
        verb: &'static str,
        error: kube::Error,
    },
}

fn gerund(verb: &str) -> &'static str {
    match verb {
        "get" => "reading",
        "create" => "creating",
        "update" => "updating",
        "delete" => "deleting",
        _ => "calling the API for",
    }
}

/// `verb` on Leases in kube-system.
fn permission(verb: &'static str) -> Permission {
    Permission::new(
        verb,
        "leases",
        "coordination.k8s.io/v1",
        Scope::Namespace(LEASE_NAMESPACE.to_string()),
    )
}

/// The error of `verb` on the Lease.
fn failed(verb: &'static str) -> impl FnOnce(kube::Error) -> LeaseError {
    move |error| LeaseError::Api { verb, error }
}

/// Who we are, as the Lease records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// `HOST:STATE_DIR`, the part that survives a restart.
    pub run: String,
    pub pid: u32,
}

impl Holder {
    pub fn for_state_dir(state_dir: &Path) -> Self {
        let dir = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
        Holder {
            run: format!("{}:{}", hostname(), dir.display()),
            pid: std::process::id(),
        }
    }

    pub fn identity(&self) -> String {
        format!("{}#{}", self.run, self.pid)
    }

    fn same_run(&self, identity: &str) -> bool {
        identity
            .rsplit_once('#')
            .is_some_and(|(run, _)| run == self.run)
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown-host".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// A held Lease; renewal stops and the Lease is released by [`HeldLease::release`].
pub struct HeldLease {
    api: Api<Lease>,
    holder: Holder,
    stop: watch::Sender<bool>,
    renewer: JoinHandle<()>,
    /// Set by the renewer when it lost the Lease (someone else took it).
    lost: Arc<std::sync::atomic::AtomicBool>,
    /// The previous holder when a stale Lease was taken over.
    pub took_over_from: Option<String>,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn age_seconds(l: &Lease) -> i64 {
    l.spec
        .as_ref()
        .and_then(|s| s.renew_time.as_ref().or(s.acquire_time.as_ref()))
        .map(|t| Timestamp::now().as_second() - t.0.as_second())
        .unwrap_or(i64::MAX / 2)
}

fn spec(holder: &Holder, duration: Duration, acquired: Option<MicroTime>) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(holder.identity()),
        lease_duration_seconds: Some(duration.as_secs().clamp(1, i32::MAX as u64) as i32),
        acquire_time: Some(acquired.unwrap_or_else(now)),
        renew_time: Some(now()),
        ..LeaseSpec::default()
    }
}

/// Take the Lease, or say who holds it.
pub async fn acquire(
    client: &kube::Client,
    holder: Holder,
    duration: Duration,
) -> Result<HeldLease, LeaseError> {
    let api: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let mut took_over_from = None;
    loop {
        match api.get_opt(LEASE_NAME).await.map_err(failed("get"))? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(LEASE_NAME.into()),
                        namespace: Some(LEASE_NAMESPACE.into()),
                        labels: Some(
                            [(
                                "app.kubernetes.io/managed-by".to_string(),
                                LEASE_NAME.to_string(),
                            )]
                            .into(),
                        ),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec(&holder, duration, None)),
                };
                match api.create(&PostParams::default(), &lease).await {
                    Ok(_) => break,
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => return Err(failed("create")(e)),
                }
            }
            Some(mut lease) => {
                let current = lease
                    .spec
                    .as_ref()
                    .and_then(|s| s.holder_identity.clone())
                    .unwrap_or_default();
                let dur = lease
                    .spec
                    .as_ref()
                    .and_then(|s| s.lease_duration_seconds)
                    .unwrap_or(0);
                let age = age_seconds(&lease);
                let free = current.is_empty() || holder.same_run(&current);
                let stale = age > i64::from(dur);
                if !free && !stale {
                    return Err(LeaseError::Held {
                        holder: current,
                        age,
                        duration: dur,
                    });
                }
                if !current.is_empty() && current != holder.identity() {
                    took_over_from = Some(current);
                }
                lease.spec = Some(spec(&holder, duration, None));
                match api
                    .replace(LEASE_NAME, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => break,
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => return Err(failed("update")(e)),
                }
            }
        }
    }
    let (stop, stop_rx) = watch::channel(false);
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let renewer = tokio::spawn(renew_loop(
        api.clone(),
        holder.clone(),
        duration,
        stop_rx,
        lost.clone(),
    ));
    Ok(HeldLease {
        api,
        holder,
        stop,
        renewer,
        lost,
        took_over_from,
    })
}

async fn renew_loop(
    api: Api<Lease>,
    holder: Holder,
    duration: Duration,
    mut stop: watch::Receiver<bool>,
    lost: Arc<std::sync::atomic::AtomicBool>,
) {
    let every = (duration / 3).max(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        match api.get_opt(LEASE_NAME).await {
            Ok(Some(mut lease)) => {
                let ours = lease
                    .spec
                    .as_ref()
                    .and_then(|s| s.holder_identity.as_deref())
                    == Some(holder.identity().as_str());
                if !ours {
                    tracing::error!(
                        "Lease {LEASE_NAMESPACE}/{LEASE_NAME} was taken by someone else; stopping renewal"
                    );
                    lost.store(true, std::sync::atomic::Ordering::SeqCst);
                    return;
                }
                if let Some(s) = lease.spec.as_mut() {
                    s.renew_time = Some(now());
                }
                if let Err(e) = api
                    .replace(LEASE_NAME, &PostParams::default(), &lease)
                    .await
                {
                    tracing::warn!(
                        "renewing Lease {LEASE_NAMESPACE}/{LEASE_NAME}: {}; trying again",
                        answer(&e)
                    );
                }
            }
            Ok(None) => {
                tracing::error!("Lease {LEASE_NAMESPACE}/{LEASE_NAME} was deleted while held");
                lost.store(true, std::sync::atomic::Ordering::SeqCst);
                return;
            }
            Err(e) => {
                tracing::warn!(
                    "renewing Lease {LEASE_NAMESPACE}/{LEASE_NAME}: {}; trying again",
                    answer(&e)
                )
            }
        }
    }
}

impl HeldLease {
    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    /// Whether the Lease was lost while held (deleted or taken by another holder).
    pub fn lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stop renewing and delete the Lease if it is still ours.
    pub async fn release(self) -> Result<(), LeaseError> {
        let _ = self.stop.send(true);
        let _ = self.renewer.await;
        if let Some(lease) = self.api.get_opt(LEASE_NAME).await.map_err(failed("get"))? {
            let ours = lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(self.holder.identity().as_str());
            if ours {
                let dp = kube::api::DeleteParams {
                    preconditions: lease.metadata.resource_version.clone().map(|rv| {
                        kube::api::Preconditions {
                            resource_version: Some(rv),
                            uid: None,
                        }
                    }),
                    ..Default::default()
                };
                match self.api.delete(LEASE_NAME, &dp).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                    Err(e) => return Err(failed("delete")(e)),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_run_ignores_the_pid() {
        let h = Holder {
            run: "host:/s".into(),
            pid: 7,
        };
        assert!(h.same_run("host:/s#123"));
        assert!(!h.same_run("other:/s#7"));
        assert!(!h.same_run("host:/s"));
        assert_eq!(h.identity(), "host:/s#7");
    }

    /// The user-facing text of `e` as the CLI prints it (`report_error`): the error,
    /// then each source.
    fn as_printed(e: LeaseError) -> String {
        let e = anyhow::Error::new(e);
        e.chain()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(": ")
    }

    fn assert_one_sentence(text: &str) {
        assert!(!text.contains('\n'), "{text}");
        for residue in ["Status {", "ErrorResponse {", "Some(", "ApiError"] {
            assert!(!text.contains(residue), "Debug residue {residue:?}: {text}");
        }
        // Nothing printed twice: a chained source would repeat a clause (the server's
        // message, or the sentence).
        let clauses = text.replace("; ", ": ");
        for part in clauses.split(": ").map(|p| p.trim_matches([' ', '(', ')'])) {
            if part.len() > 12 {
                assert_eq!(text.matches(part).count(), 1, "{part:?} twice: {text}");
            }
        }
    }

    #[tokio::test]
    async fn a_forbidden_lease_reads_as_one_sentence_naming_the_grant() {
        let sb = crate::sandbox::Sandbox::new(crate::sandbox::SandboxOptions::default());
        let server = sb
            .serve("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("serve: {e}"));
        let mut cfg = kube::Config::new(server.url().parse().unwrap_or_else(|e| panic!("{e}")));
        cfg.auth_info.impersonate = Some("nobody".into());
        let nobody = kube::Client::try_from(cfg).unwrap_or_else(|e| panic!("client: {e}"));
        let holder = Holder {
            run: "host:/s".into(),
            pid: 1,
        };
        let err = match acquire(&nobody, holder, Duration::from_secs(30)).await {
            Err(e) => e,
            Ok(_) => panic!("took the Lease without permission"),
        };
        let text = as_printed(err);
        assert!(
            text.starts_with(
                "reading Lease kube-system/calico-migrate (coordination.k8s.io/v1): the API \
                 server answered 403 Forbidden ("
            ),
            "{text}"
        );
        assert!(
            text.ends_with(
                "; grant get on leases.coordination.k8s.io in kube-system to the identity the \
                 kubeconfig names (`kubectl auth can-i get leases.coordination.k8s.io -n \
                 kube-system` checks it), then run the command again"
            ),
            "{text}"
        );
        assert_one_sentence(&text);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn a_failing_api_server_reads_as_one_sentence_with_its_status() {
        let sb = crate::sandbox::Sandbox::new(crate::sandbox::SandboxOptions::default());
        let faults =
            crate::sandbox::apiserver::faults::FaultConfig::parse_specs(&["api-errors:1".into()])
                .unwrap_or_else(|e| panic!("{e}"));
        sb.set_faults(&faults).unwrap_or_else(|e| panic!("{e:?}"));
        let holder = Holder {
            run: "host:/s".into(),
            pid: 1,
        };
        let err = match acquire(&sb.client(), holder, Duration::from_secs(30)).await {
            Err(e) => e,
            Ok(_) => panic!("took the Lease from a failing API server"),
        };
        let text = as_printed(err);
        let answered = [
            "429 Too Many Requests",
            "500 Internal Server Error",
            "503 Service Unavailable",
        ];
        assert!(
            text.starts_with(
                "reading Lease kube-system/calico-migrate (coordination.k8s.io/v1): the API \
                 server answered "
            ) && answered.iter().any(|a| text.contains(a)),
            "{text}"
        );
        assert!(
            text.ends_with("wait until it recovers and run the command again"),
            "{text}"
        );
        assert_one_sentence(&text);
    }
}
