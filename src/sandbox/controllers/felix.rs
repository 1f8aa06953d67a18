//! What a calico-node (felix) or calico-typha of a Calico version reads before it
//! reports Ready, and whether the store gives it that: the data is
//! `src/sandbox/scenario/data/calico-versions.yaml` (embedded; each entry cites the
//! upstream file and line it comes from), the evaluation reuses the sandbox's RBAC
//! evaluator (`apiserver::authz`).
//!
//! The rule, from libcalico-go (docs/sandbox-behaviour.md, "Calico agents and their
//! version's API"):
//! - a startup write (v3.30: Tier `default`) the agent may do but whose CRD is not
//!   served fails the start; a forbidden one is tolerated (clientv3 `ensureTierExists`);
//! - a syncer list the ServiceAccount may not do never succeeds, so the syncer never
//!   reports in sync and the readiness probe fails;
//! - a syncer list of a CRD that is not served fails only for the typed clients
//!   (`not_found: error`); the custom-resource client reads a 404 as an empty list.
//!
//! The pod controller asks once per tick per (version line, namespace, service
//! account) through [`Gates`].

use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::Value;

use super::{gvr, list, name};
use crate::sandbox::Sandbox;
use crate::sandbox::apiserver::authz::{self, Attributes, SourcedRule, UserInfo};

/// The embedded data file.
pub const DATA: &str = include_str!("../scenario/data/calico-versions.yaml");

/// Every version line the sandbox knows.
#[derive(Debug, Clone, Deserialize)]
pub struct Catalogue {
    pub versions: Vec<VersionData>,
}

/// One Calico version line (`v3.19`) and the release its data was read from.
#[derive(Debug, Clone, Deserialize)]
pub struct VersionData {
    pub line: String,
    pub release: String,
    pub crds: CrdList,
    #[serde(default)]
    pub cluster_role: Option<RoleData>,
    #[serde(default)]
    pub startup: Vec<StartupWrite>,
    pub syncer: Syncer,
}

/// The CRDs the release ships, `plural.group`.
#[derive(Debug, Clone, Deserialize)]
pub struct CrdList {
    pub source: String,
    pub names: Vec<String>,
}

/// The rules of the release's ClusterRole calico-node.
#[derive(Debug, Clone, Deserialize)]
pub struct RoleData {
    pub source: String,
    pub rules: Vec<RuleData>,
}

/// One PolicyRule, as the manifests write it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleData {
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    #[serde(default)]
    pub resource_names: Vec<String>,
    pub verbs: Vec<String>,
}

impl RuleData {
    /// The rule as the Kubernetes JSON of a PolicyRule.
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::json!({
            "apiGroups": self.api_groups, "resources": self.resources, "verbs": self.verbs,
        });
        if !self.resource_names.is_empty() {
            v["resourceNames"] = serde_json::json!(self.resource_names);
        }
        v
    }
}

/// A write the agent does at start (before its syncer runs).
#[derive(Debug, Clone, Deserialize)]
pub struct StartupWrite {
    /// The key libcalico-go names in its error, e.g. `Tier(default)`.
    pub key: String,
    pub at: String,
    pub group: String,
    pub resource: String,
    pub verb: String,
}

/// What felix's syncer lists.
#[derive(Debug, Clone, Deserialize)]
pub struct Syncer {
    pub source: String,
    pub lists: Vec<Listed>,
}

/// How a list of a CRD that is not served ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotFound {
    /// Read as an empty list (the custom-resource client).
    Empty,
    /// An error: the list is retried and the syncer never gets in sync.
    Error,
}

/// One list of the syncer.
#[derive(Debug, Clone, Deserialize)]
pub struct Listed {
    /// The libcalico-go kind, e.g. `Tier`.
    pub kind: String,
    pub at: String,
    pub group: String,
    pub resource: String,
    /// The resource is a CustomResourceDefinition's (else built in, always served).
    #[serde(default)]
    pub crd: bool,
    #[serde(default)]
    pub not_found: Option<NotFound>,
    /// The ListRoot the watcher cache logs.
    pub root: String,
}

impl Listed {
    /// `plural.group`, the CRD's name.
    pub fn qualified(&self) -> String {
        qualified(&self.group, &self.resource)
    }
}

fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

impl Catalogue {
    /// The data of a version line (`v3.30`).
    pub fn line(&self, line: &str) -> Option<&VersionData> {
        self.versions.iter().find(|v| v.line == line)
    }
}

/// The embedded catalogue, parsed once.
pub fn catalogue() -> Result<&'static Catalogue, &'static str> {
    static CAT: OnceLock<Result<Catalogue, String>> = OnceLock::new();
    CAT.get_or_init(|| {
        serde_saphyr::from_str(DATA).map_err(|e| {
            format!("The sandbox's embedded Calico version data (calico-versions.yaml) does not parse: {e}.")
        })
    })
    .as_ref()
    .map_err(String::as_str)
}

/// Which agent a pod runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Agent {
    Node,
    Typha,
}

impl Agent {
    /// The container the agent runs in (calico-node's DaemonSet and typha's Deployment).
    pub fn container(self) -> &'static str {
        match self {
            Agent::Node => "calico-node",
            Agent::Typha => "calico-typha",
        }
    }
}

/// The version line of a Calico image (`quay.io/calico/node:v3.30.3` -> `v3.30`), for
/// the repository `calico/node` or `calico/typha` of any registry. `None` for another
/// image, a digest (`@sha256:...`) or a tag that is not `vMAJOR.MINOR[.PATCH...]`:
/// the sandbox then cannot tell the version and does not gate the pod.
pub fn image_line(image: &str, agent: Agent) -> Option<String> {
    if image.contains('@') {
        return None;
    }
    let (repo, tag) = image.rsplit_once(':')?;
    if tag.contains('/') {
        return None;
    }
    let want = match agent {
        Agent::Node => "calico/node",
        Agent::Typha => "calico/typha",
    };
    if !(repo == want || repo.ends_with(&format!("/{want}"))) {
        return None;
    }
    let mut parts = tag.strip_prefix('v')?.split(['.', '-']);
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    Some(format!("v{major}.{minor}"))
}

/// The agent a pod runs and the image of its container, if it is a Calico agent.
pub fn agent_of(p: &Value) -> Option<(Agent, &str)> {
    let agent = if super::pods::is_calico_node(p) {
        Agent::Node
    } else if super::pods::is_calico_typha(p) {
        Agent::Typha
    } else {
        return None;
    };
    let image = p
        .pointer("/spec/containers")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["name"] == agent.container())
        .and_then(|c| c["image"].as_str())?;
    Some((agent, image))
}

/// Why an agent is not ready: one thing the API server refuses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A startup write answered 404: its CRD is not served.
    StartupNotFound {
        key: String,
        verb: String,
        qualified: String,
    },
    /// A syncer list answered 403.
    ListForbidden {
        root: String,
        qualified: String,
        message: String,
    },
    /// A syncer list of a typed client answered 404.
    ListNotFound {
        root: String,
        kind: String,
        qualified: String,
    },
}

/// The verb client-go writes in a 404's "(get ...)" / "(post ...)".
fn http_verb(verb: &str) -> &str {
    match verb {
        "create" => "post",
        "update" => "put",
        "list" | "get" | "watch" => "get",
        other => other,
    }
}

impl Problem {
    /// The line the agent logs (without timestamp and pid), in libcalico-go's words.
    pub fn log_line(&self, agent: Agent) -> String {
        match self {
            // clientv3 client.go ensureTierExists -> K8sErrorToCalico (errors.go:39-43,
            // errors/errors.go:64-66); node startup.go:205, typha daemon.go:317.
            Problem::StartupNotFound {
                key,
                verb,
                qualified,
            } => {
                let err = format!(
                    "resource does not exist: {key} with error: the server could not find the requested resource ({} {qualified})",
                    http_verb(verb)
                );
                match agent {
                    Agent::Node => {
                        format!(
                            "[ERROR] startup.go 205: Unable to set global default configuration error={err}"
                        )
                    }
                    Agent::Typha => {
                        format!("[ERROR] daemon.go 317: Failed to initialize datastore error={err}")
                    }
                }
            }
            // watchercache.go "Failed to perform list of current data during resync".
            Problem::ListForbidden {
                root,
                qualified,
                message,
            } => format!(
                "[INFO] watchercache.go: Failed to perform list of current data during resync ListRoot=\"{root}\" error=connection is unauthorized: {qualified} is forbidden: {message}"
            ),
            Problem::ListNotFound {
                root,
                kind,
                qualified,
            } => format!(
                "[INFO] watchercache.go: Failed to perform list of current data during resync ListRoot=\"{root}\" error=resource does not exist: {kind} with error: the server could not find the requested resource (get {qualified})"
            ),
        }
    }
}

/// What the store gives one (version line, service account), and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ready,
    NotReady(Vec<Problem>),
}

/// The served CRDs: `plural.group` of every CRD whose Established condition is True
/// and that is not being deleted (a CRD that is not Established is not served).
pub fn served_crds(sb: &Sandbox) -> BTreeSet<String> {
    let g = gvr("apiextensions.k8s.io", "v1", "customresourcedefinitions");
    list(sb, &g, None)
        .iter()
        .filter(|c| !super::deleting(c))
        .filter(|c| {
            c.pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Established" && c["status"] == "True")
                })
        })
        .map(|c| name(c).to_string())
        .collect()
}

/// Evaluate one version line for one service account against the store.
pub fn evaluate(
    sb: &Sandbox,
    v: &VersionData,
    namespace: &str,
    service_account: &str,
    served: &BTreeSet<String>,
) -> Verdict {
    let user = UserInfo::service_account(namespace, service_account);
    // Cluster scope: the syncer lists across all namespaces, so only
    // ClusterRoleBindings count (rule.go VisitRulesFor with namespace "").
    let (rules, _) = authz::rules_for(sb.store(), &user, "");
    let allowed = |a: &Attributes| rules.iter().any(|r: &SourcedRule| r.rule.allows(a));
    let mut problems = Vec::new();
    for w in &v.startup {
        let a = Attributes::resource(&w.verb, &w.group, &w.resource, "");
        let q = qualified(&w.group, &w.resource);
        // Authorization comes before the 404 (the API server's filter chain): a
        // forbidden create is ErrorConnectionUnauthorized, which ensureTierExists tolerates.
        if allowed(&a) && !served.contains(&q) {
            problems.push(Problem::StartupNotFound {
                key: w.key.clone(),
                verb: w.verb.clone(),
                qualified: q,
            });
        }
    }
    for l in &v.syncer.lists {
        let a = Attributes::resource("list", &l.group, &l.resource, "");
        let q = l.qualified();
        if !allowed(&a) {
            problems.push(Problem::ListForbidden {
                root: l.root.clone(),
                qualified: q,
                message: authz::forbidden_message(&user, &a),
            });
        } else if l.crd && l.not_found == Some(NotFound::Error) && !served.contains(&q) {
            problems.push(Problem::ListNotFound {
                root: l.root.clone(),
                kind: l.kind.clone(),
                qualified: q,
            });
        }
    }
    if problems.is_empty() {
        Verdict::Ready
    } else {
        Verdict::NotReady(problems)
    }
}

/// Verdicts of one tick, computed once per (line, namespace, service account).
#[derive(Default)]
pub struct Gates {
    at: Option<f64>,
    served: BTreeSet<String>,
    verdicts: HashMap<(String, String, String), Verdict>,
}

impl Gates {
    /// Forget the verdicts: the store may have changed since they were reached (a
    /// client's write between two ticks, read by the next settle).
    pub fn forget(&mut self) {
        self.at = None;
    }

    /// Why the agent in `p` may not be Ready now (`None`: nothing keeps it unready:
    /// not an agent, version unknown, or everything it reads is there).
    pub fn blocked(&mut self, sb: &Sandbox, now: f64, p: &Value) -> Option<(Agent, String)> {
        let (agent, image) = agent_of(p)?;
        let cat = match catalogue() {
            Ok(c) => c,
            Err(e) => return Some((agent, e.to_string())),
        };
        let v = cat.line(&image_line(image, agent)?)?;
        if self.at != Some(now) {
            self.at = Some(now);
            self.served = served_crds(sb);
            self.verdicts.clear();
        }
        let ns = super::namespace(p).to_string();
        let sa = p
            .pointer("/spec/serviceAccountName")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let served = &self.served;
        let verdict = self
            .verdicts
            .entry((v.line.clone(), ns.clone(), sa.clone()))
            .or_insert_with(|| evaluate(sb, v, &ns, &sa, served));
        match verdict {
            Verdict::Ready => None,
            Verdict::NotReady(problems) => Some((
                agent,
                problems
                    .iter()
                    .map(|p| p.log_line(agent))
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_data_parses_and_names_three_lines() {
        let cat = catalogue().unwrap();
        let lines: Vec<&str> = cat.versions.iter().map(|v| v.line.as_str()).collect();
        assert_eq!(lines, ["v3.19", "v3.20", "v3.30"]);
        assert_eq!(cat.line("v3.19").unwrap().crds.names.len(), 12);
        assert_eq!(cat.line("v3.30").unwrap().crds.names.len(), 24);
        assert_eq!(
            cat.line("v3.19")
                .unwrap()
                .cluster_role
                .as_ref()
                .unwrap()
                .rules
                .len(),
            15
        );
    }

    #[test]
    fn every_listed_crd_is_one_the_release_ships() {
        for v in &catalogue().unwrap().versions {
            for l in v.syncer.lists.iter().filter(|l| l.crd) {
                assert!(
                    v.crds.names.contains(&l.qualified()),
                    "{} lists {} which its release does not ship",
                    v.release,
                    l.qualified()
                );
                assert!(
                    l.not_found.is_some(),
                    "{} {} has no not_found",
                    v.line,
                    l.kind
                );
            }
        }
    }

    /// Each release's own ClusterRole grants every list its syncer does: the real
    /// install is Ready.
    #[test]
    fn each_release_role_grants_its_syncer_lists() {
        for v in &catalogue().unwrap().versions {
            let Some(role) = &v.cluster_role else {
                continue;
            };
            let rules: Vec<authz::PolicyRule> = role
                .rules
                .iter()
                .map(|r| authz::PolicyRule::from_json(&r.to_json()))
                .collect();
            for l in &v.syncer.lists {
                let a = Attributes::resource("list", &l.group, &l.resource, "");
                assert!(
                    rules.iter().any(|r| r.allows(&a)),
                    "{} does not grant list {}",
                    v.release,
                    l.qualified()
                );
            }
        }
    }

    #[test]
    fn image_lines() {
        let n = |i: &str| image_line(i, Agent::Node);
        assert_eq!(n("quay.io/calico/node:v3.30.3").as_deref(), Some("v3.30"));
        assert_eq!(n("docker.io/calico/node:v3.30.3").as_deref(), Some("v3.30"));
        assert_eq!(n("calico/node:v3.19.1").as_deref(), Some("v3.19"));
        assert_eq!(
            n("localhost:5000/calico/node:v3.20.0").as_deref(),
            Some("v3.20")
        );
        assert_eq!(n("calico/node@sha256:0123abcd"), None);
        assert_eq!(n("calico/node:latest"), None);
        assert_eq!(n("calico/typha:v3.30.3"), None);
        assert_eq!(
            image_line("docker.io/calico/typha:v3.30.3", Agent::Typha).as_deref(),
            Some("v3.30")
        );
        assert_eq!(n("example.com/notcalico/node:v3.30.3"), None);
    }

    #[test]
    fn log_lines_read_as_libcalico_go_writes_them() {
        let p = Problem::StartupNotFound {
            key: "Tier(default)".into(),
            verb: "create".into(),
            qualified: "tiers.crd.projectcalico.org".into(),
        };
        assert_eq!(
            p.log_line(Agent::Node),
            "[ERROR] startup.go 205: Unable to set global default configuration error=resource does not exist: Tier(default) with error: the server could not find the requested resource (post tiers.crd.projectcalico.org)"
        );
        assert!(
            p.log_line(Agent::Typha)
                .contains("Failed to initialize datastore")
        );
    }
}
