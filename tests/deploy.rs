//! The tool as a platform team installs it: shell completions and man pages from
//! the binary, and the deploy/ manifests checked against the sandbox's RBAC with
//! `kubectl auth can-i`.

use crate::kubectl_client;

use std::process::Command;

use anyhow::Result;
use clap::CommandFactory;

const BIN: &str = env!("CARGO_BIN_EXE_calico-migrate");

fn run(args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(BIN).args(args).output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn bash_completion_offers_subcommands_and_global_flags() -> Result<()> {
    let (code, out, err) = run(&["completions", "bash"])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("apply"), "{out}");
    assert!(out.contains("--kubeconfig"), "{out}");
    assert!(
        out.contains("complete -F"),
        "a bash completion script: {out}"
    );
    for shell in ["zsh", "fish"] {
        let (code, out, err) = run(&["completions", shell])?;
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(
            out.contains("kubeconfig") && out.contains("rollback"),
            "{shell}: {out}"
        );
    }
    let (code, _, err) = run(&["completions", "tcsh"])?;
    assert_eq!(code, 2);
    assert!(err.contains("tcsh") && err.contains("bash"), "{err}");
    Ok(())
}

#[test]
fn man_page_names_every_subcommand_and_each_has_its_own_page() -> Result<()> {
    let (code, page, err) = run(&["man"])?;
    assert_eq!(code, 0, "{err}");
    assert!(page.contains(".TH calico-migrate 1"), "{page}");
    let cli = calico_migrate::cli::Cli::command();
    let subs: Vec<String> = cli
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    assert!(subs.len() >= 10, "{subs:?}");
    for name in &subs {
        // roff escapes '-' as '\-'.
        let entry = format!("calico\\-migrate\\-{}(1)", name.replace('-', "\\-"));
        assert!(page.contains(&entry), "{entry} missing from the man page");
        let (code, sub_page, err) = run(&["man", name])?;
        assert_eq!(code, 0, "{name}: {err}");
        assert!(
            sub_page.contains(&format!(".TH calico-migrate-{name} 1")),
            "{name}: {sub_page}"
        );
    }
    let (code, _, err) = run(&["man", "nope"])?;
    assert_eq!(code, 2);
    assert!(err.contains("\"nope\"") && err.contains("plan"), "{err}");
    Ok(())
}

// ---------------------------------------------------------------------------
// deploy/: RBAC derived from permissions::needed(), checked in-process and with kubectl

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use calico_migrate::cluster::access::{self, AccessReport, Permission};
use calico_migrate::engine::RetryPolicy;
use calico_migrate::migration::permissions::needed;
use calico_migrate::sandbox::apiserver::authz::{self, Attributes, UserInfo};
use calico_migrate::sandbox::scenario::{self, ScenarioConfig};
use calico_migrate::sandbox::{Sandbox, SandboxOptions};
use serde_json::Value;

const SA_NAMESPACE: &str = "calico-migrate";
const SA_NAME: &str = "calico-migrate";
const AS: &str = "--as=system:serviceaccount:calico-migrate:calico-migrate";
const LEASE: &str = "calico-migrate";

/// Grants deploy/ gives beyond needed(), each with why (see deploy/20-rbac.yaml):
/// (verb, group, resource, namespace or None for cluster-wide, reason).
const EXTRAS: &[(&str, &str, &str, Option<&str>, &str)] = &[
    (
        "get",
        "coordination.k8s.io",
        "leases",
        None,
        "the stopped operator's leader lock, released after a freeze (by name: operator-lock)",
    ),
    (
        "patch",
        "coordination.k8s.io",
        "leases",
        None,
        "the stopped operator's leader lock, released after a freeze (by name: operator-lock)",
    ),
    (
        "get",
        "",
        "configmaps",
        None,
        "the v1.17/v1.20 operator's ConfigMap lock, released after a freeze (by name: operator-lock)",
    ),
    (
        "patch",
        "",
        "configmaps",
        None,
        "the v1.17/v1.20 operator's ConfigMap lock, released after a freeze (by name: operator-lock)",
    ),
    (
        "get",
        "",
        "pods/exec",
        None,
        "WebSocket exec is an HTTP GET, authorized as get before Kubernetes 1.35",
    ),
    (
        "bind",
        "rbac.authorization.k8s.io",
        "clusterroles",
        None,
        "binding the operator's and the chart's ClusterRoles (limited to their names)",
    ),
    (
        "escalate",
        "rbac.authorization.k8s.io",
        "clusterroles",
        None,
        "writing the operator's and the chart's ClusterRoles (limited to their names)",
    ),
    (
        "watch",
        "",
        "nodes",
        None,
        "re-creating ClusterRole calico-typha-cpha (a create is not named, so the Job must hold its rules)",
    ),
    (
        "get",
        "apps",
        "deployments",
        None,
        "the operator Deployment in tigera-operator",
    ),
    (
        "list",
        "apps",
        "deployments",
        None,
        "the operator Deployment in tigera-operator",
    ),
    (
        "create",
        "apps",
        "deployments",
        None,
        "the operator Deployment in tigera-operator",
    ),
    (
        "patch",
        "apps",
        "deployments",
        None,
        "the operator Deployment in tigera-operator",
    ),
    (
        "delete",
        "apps",
        "deployments",
        None,
        "the operator Deployment in tigera-operator",
    ),
    (
        "get",
        "",
        "serviceaccounts",
        None,
        "the operator ServiceAccount in tigera-operator",
    ),
    (
        "create",
        "",
        "serviceaccounts",
        None,
        "the operator ServiceAccount in tigera-operator",
    ),
    (
        "patch",
        "",
        "serviceaccounts",
        None,
        "the operator ServiceAccount in tigera-operator",
    ),
    (
        "delete",
        "",
        "serviceaccounts",
        None,
        "the operator ServiceAccount in tigera-operator",
    ),
    (
        "update",
        "",
        "serviceaccounts",
        None,
        "the operator ServiceAccount in tigera-operator, and the chart's, restored whole",
    ),
    ("get", "", "pods", None, "probe pods"),
    ("list", "", "pods", None, "probe pods"),
    ("create", "", "pods", None, "probe pods"),
    ("delete", "", "pods", None, "probe pods"),
    (
        "get",
        "networking.k8s.io",
        "networkpolicies",
        None,
        "the probe namespaces' NetworkPolicy",
    ),
    (
        "create",
        "networking.k8s.io",
        "networkpolicies",
        None,
        "the probe namespaces' NetworkPolicy",
    ),
    (
        "delete",
        "coordination.k8s.io",
        "leases",
        Some("kube-system"),
        "releasing the Lease (limited to its name)",
    ),
    (
        "bind",
        "rbac.authorization.k8s.io",
        "roles",
        Some("kube-system"),
        "binding the chart's Roles on rollback (limited to their names)",
    ),
    (
        "escalate",
        "rbac.authorization.k8s.io",
        "roles",
        Some("kube-system"),
        "writing the chart's Roles (limited to their names)",
    ),
    (
        "get",
        "apps",
        "deployments/scale",
        Some("kube-system"),
        "re-creating Role kube-system/calico-typha-cpha (a create is not named)",
    ),
    (
        "update",
        "apps",
        "deployments/scale",
        Some("kube-system"),
        "re-creating Role kube-system/calico-typha-cpha (a create is not named)",
    ),
    (
        "get",
        "extensions",
        "deployments/scale",
        Some("kube-system"),
        "re-creating Role kube-system/calico-typha-cpha (a create is not named)",
    ),
    (
        "update",
        "extensions",
        "deployments/scale",
        Some("kube-system"),
        "re-creating Role kube-system/calico-typha-cpha (a create is not named)",
    ),
];

/// Verbs the Job's identity must never have: the tool never deletes or replaces a policy,
/// reads Secrets only in kube-system, and touches only its own Lease.
const FORBIDDEN: &[(&str, &str, &str, Option<&str>)] = &[
    (
        "delete",
        "networking.k8s.io",
        "networkpolicies",
        Some("default"),
    ),
    ("delete", "networking.k8s.io", "networkpolicies", None),
    (
        "update",
        "networking.k8s.io",
        "networkpolicies",
        Some("default"),
    ),
    (
        "patch",
        "networking.k8s.io",
        "networkpolicies",
        Some("kube-system"),
    ),
    (
        "deletecollection",
        "networking.k8s.io",
        "networkpolicies",
        Some("default"),
    ),
    (
        "delete",
        "crd.projectcalico.org",
        "globalnetworkpolicies",
        None,
    ),
    (
        "patch",
        "crd.projectcalico.org",
        "globalnetworkpolicies",
        None,
    ),
    (
        "update",
        "crd.projectcalico.org",
        "globalnetworkpolicies",
        None,
    ),
    (
        "delete",
        "crd.projectcalico.org",
        "networkpolicies",
        Some("default"),
    ),
    ("delete", "crd.projectcalico.org", "globalnetworksets", None),
    ("get", "", "secrets", Some("default")),
    ("list", "", "secrets", None),
    ("delete", "", "nodes", None),
    ("impersonate", "", "serviceaccounts", None),
    ("create", "", "pods/attach", Some("default")),
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every object of the YAML files in `dir` (not recursive, as `kubectl apply -f dir`).
fn manifests(dir: &Path) -> Result<Vec<Value>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f)?;
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .with_context(|| format!("{} is not valid YAML", f.display()))?;
        out.extend(docs.into_iter().filter(|d| d.is_object()));
    }
    Ok(out)
}

fn scenario_sandbox() -> Result<Sandbox> {
    let sb = Sandbox::new(SandboxOptions::default());
    let cfg = ScenarioConfig {
        nodes: 2,
        namespaces: 2,
        ..ScenarioConfig::default()
    };
    sb.load(scenario::build(&cfg)?)?;
    Ok(sb)
}

fn attrs(verb: &str, group: &str, resource: &str, ns: Option<&str>) -> Attributes {
    let a = Attributes::resource(verb, group, resource, ns.unwrap_or_default());
    // The Lease rules may be limited to the tool's own Lease: ask about that one.
    if group == "coordination.k8s.io" {
        a.named(LEASE)
    } else {
        a
    }
}

fn key(verb: &str, group: &str, resource: &str, ns: Option<&str>) -> String {
    format!("{verb} {group}/{resource} in {}", ns.unwrap_or("(cluster)"))
}

/// (verb, group, resource, namespace) of every rule deploy/ binds to the Job's identity.
fn granted(objects: &[Value]) -> Vec<String> {
    let s = |v: &Value, p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let list = |v: &Value, k: &str| -> Vec<String> {
        v.get(k)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(String::from))
            .collect()
    };
    let mut out = Vec::new();
    for b in objects
        .iter()
        .filter(|o| matches!(s(o, "/kind").as_str(), "ClusterRoleBinding" | "RoleBinding"))
    {
        let binds_sa = b
            .get("subjects")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|x| {
                s(x, "/kind") == "ServiceAccount"
                    && s(x, "/name") == SA_NAME
                    && s(x, "/namespace") == SA_NAMESPACE
            });
        if !binds_sa {
            continue;
        }
        let ns = s(b, "/metadata/namespace");
        let ns = (!ns.is_empty()).then_some(ns);
        let role = objects.iter().find(|r| {
            s(r, "/kind") == s(b, "/roleRef/kind")
                && s(r, "/metadata/name") == s(b, "/roleRef/name")
                && (s(r, "/kind") == "ClusterRole"
                    || s(r, "/metadata/namespace") == s(b, "/metadata/namespace"))
        });
        for rule in role
            .and_then(|r| r.get("rules"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for verb in list(rule, "verbs") {
                for group in list(rule, "apiGroups") {
                    for res in list(rule, "resources") {
                        out.push(key(&verb, &group, &res, ns.as_deref()));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn deploy_rbac_grants_every_needed_permission_and_nothing_unlisted() -> Result<()> {
    let objects = manifests(&repo().join("deploy"))?;
    let sb = scenario_sandbox()?;
    sb.load(objects.clone())?;
    let sa = UserInfo::service_account(SA_NAMESPACE, SA_NAME);
    let missing: Vec<String> = needed()
        .iter()
        .filter(|p| {
            !authz::authorize(
                sb.store(),
                &sa,
                &attrs(p.verb, p.group, p.resource, p.namespace),
            )
            .allowed
        })
        .map(ToString::to_string)
        .collect();
    assert!(
        missing.is_empty(),
        "deploy/ does not grant what permissions::needed() lists: {missing:#?}"
    );

    let mut allowed: Vec<String> = needed()
        .iter()
        .map(|p| key(p.verb, p.group, p.resource, p.namespace))
        .collect();
    allowed.extend(EXTRAS.iter().map(|(v, g, r, ns, _)| key(v, g, r, *ns)));
    let unlisted: Vec<String> = granted(&objects)
        .into_iter()
        .filter(|g| !allowed.contains(g))
        .collect();
    assert!(
        unlisted.is_empty(),
        "deploy/ grants what is neither in needed() nor in EXTRAS (add it to one, with a reason): {unlisted:#?}"
    );

    for (verb, group, res, ns) in FORBIDDEN {
        let mut a = attrs(verb, group, res, *ns);
        assert!(
            !authz::authorize(sb.store(), &sa, &a).allowed,
            "must not: {}",
            key(verb, group, res, *ns)
        );
        a.name = "kube-controller-manager".into();
        if *group == "coordination.k8s.io" {
            assert!(!authz::authorize(sb.store(), &sa, &a).allowed);
        }
    }
    // The operator's lock, by name only.
    for (group, res) in [("coordination.k8s.io", "leases"), ("", "configmaps")] {
        let lock =
            Attributes::resource("patch", group, res, "tigera-operator").named("operator-lock");
        assert!(
            authz::authorize(sb.store(), &sa, &lock).allowed,
            "{res}/operator-lock"
        );
        let other = Attributes::resource("patch", group, res, "tigera-operator").named("other");
        assert!(
            !authz::authorize(sb.store(), &sa, &other).allowed,
            "{res}/other"
        );
    }
    // Only its own Lease may be deleted (the control plane's leader election lives next to it).
    let other_lease =
        Attributes::resource("delete", "coordination.k8s.io", "leases", "kube-system")
            .named("kube-scheduler");
    assert!(!authz::authorize(sb.store(), &sa, &other_lease).allowed);
    Ok(())
}

// ---------------------------------------------------------------------------
// bind and escalate: limited by name to the roles the migration writes

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

const RBAC: &str = "rbac.authorization.k8s.io";
/// The Job's ServiceAccount as "namespace/name".
const JOB_SA: &str = "calico-migrate/calico-migrate";

/// (verb, resource, namespace) of a `bind`/`escalate` grant of deploy/ -> its
/// resourceNames; None when one rule grants it without names (any role).
type EscalationGrants = BTreeMap<(String, String, Option<String>), Option<BTreeSet<String>>>;

fn strs(v: &Value, k: &str) -> Vec<String> {
    v.get(k)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(String::from))
        .collect()
}

fn text_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or_default()
}

/// The `bind` and `escalate` grants of the roles deploy/ binds to the Job's identity.
fn escalation_grants(objects: &[Value]) -> EscalationGrants {
    let mut out = EscalationGrants::new();
    let bindings = objects
        .iter()
        .filter(|o| matches!(text_at(o, "/kind"), "ClusterRoleBinding" | "RoleBinding"))
        .filter(|b| {
            b["subjects"].as_array().into_iter().flatten().any(|x| {
                x["kind"] == "ServiceAccount"
                    && x["name"] == SA_NAME
                    && x["namespace"] == SA_NAMESPACE
            })
        });
    for b in bindings {
        let ns = Some(text_at(b, "/metadata/namespace").to_string()).filter(|n| !n.is_empty());
        let role = objects.iter().find(|r| {
            text_at(r, "/kind") == text_at(b, "/roleRef/kind")
                && text_at(r, "/metadata/name") == text_at(b, "/roleRef/name")
                && (text_at(r, "/kind") == "ClusterRole"
                    || text_at(r, "/metadata/namespace") == text_at(b, "/metadata/namespace"))
        });
        let rules = role
            .and_then(|r| r["rules"].as_array())
            .into_iter()
            .flatten();
        for rule in rules.filter(|r| strs(r, "apiGroups").iter().any(|g| g == RBAC || g == "*")) {
            let names: BTreeSet<String> = strs(rule, "resourceNames").into_iter().collect();
            let verbs = strs(rule, "verbs");
            let all = verbs.iter().any(|v| v == "*");
            for verb in ["bind", "escalate"]
                .map(String::from)
                .into_iter()
                .filter(|v| all || verbs.contains(v))
            {
                for res in strs(rule, "resources") {
                    let entry = out
                        .entry((verb.clone(), res, ns.clone()))
                        .or_insert_with(|| Some(BTreeSet::new()));
                    match (entry.as_mut(), names.is_empty()) {
                        (Some(set), false) => set.extend(names.iter().cloned()),
                        _ => *entry = None,
                    }
                }
            }
        }
    }
    out
}

/// ClusterRole names and (kube-system) Role names among `objects`: the roles
/// themselves and the roles their bindings name.
fn role_names(objects: &[Value], cluster: &mut BTreeSet<String>, roles: &mut BTreeSet<String>) {
    for o in objects {
        let name = text_at(o, "/metadata/name").to_string();
        match text_at(o, "/kind") {
            "ClusterRole" => {
                cluster.insert(name);
            }
            "Role" => {
                roles.insert(name);
            }
            "ClusterRoleBinding" | "RoleBinding" => {
                let target = text_at(o, "/roleRef/name").to_string();
                match text_at(o, "/roleRef/kind") {
                    "ClusterRole" => cluster.insert(target),
                    _ => roles.insert(target),
                };
            }
            _ => {}
        }
    }
}

/// The files of a .tgz (a Helm chart), by path: a gzip'd ustar archive.
fn untar_gz(path: &Path) -> Result<BTreeMap<String, String>> {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path)?).read_to_end(&mut raw)?;
    let mut files = BTreeMap::new();
    let mut at = 0;
    while at + 512 <= raw.len() && raw[at] != 0 {
        let field = |a: usize, b: usize| {
            String::from_utf8_lossy(&raw[at + a..at + b])
                .trim_matches(char::from(0))
                .trim()
                .to_string()
        };
        let name = field(0, 100);
        let size = usize::from_str_radix(&field(124, 136), 8)
            .with_context(|| format!("{}: a tar header has no size", path.display()))?;
        let body = raw
            .get(at + 512..at + 512 + size)
            .with_context(|| format!("{}: {name} is cut short", path.display()))?;
        files.insert(name, String::from_utf8_lossy(body).into_owned());
        at += 512 + size.div_ceil(512) * 512;
    }
    Ok(files)
}

/// The Roles and ClusterRoles a chart's RBAC templates render, named as Helm names them:
/// `{{ include "<chart>.fullname" . }}-x` with the chart's default fullnameOverride.
fn chart_role_names(
    files: &BTreeMap<String, String>,
    cluster: &mut BTreeSet<String>,
    roles: &mut BTreeSet<String>,
) -> Result<()> {
    let values = files
        .iter()
        .find(|(p, _)| p.ends_with("/values.yaml") && p.matches('/').count() == 1)
        .map(|(_, t)| t)
        .context("the chart has no values.yaml")?;
    let fullname = values
        .lines()
        .find_map(|l| l.strip_prefix("fullnameOverride:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .context("the chart's values.yaml sets no fullnameOverride")?;
    for (path, text) in files.iter().filter(|(p, _)| p.contains("/templates/")) {
        for doc in text.split("\n---") {
            let kind = doc
                .lines()
                .find_map(|l| l.trim().strip_prefix("kind:"))
                .map(str::trim);
            let Some(kind @ ("Role" | "ClusterRole")) = kind else {
                continue;
            };
            let name = doc
                .lines()
                .skip_while(|l| l.trim() != "metadata:")
                .find_map(|l| l.trim().strip_prefix("name:"))
                .and_then(|n| n.split("}}").nth(1))
                .map(|suffix| format!("{fullname}{}", suffix.trim().trim_matches('"')))
                .with_context(|| format!("{path}: a {kind} without a templated name"))?;
            match kind {
                "Role" => roles.insert(name),
                _ => cluster.insert(name),
            };
        }
    }
    Ok(())
}

/// The ClusterRoles and (kube-system) Roles the migration creates, updates or
/// re-creates, from the objects it writes: the operator manifests install-operator
/// applies (the sandbox's, and the real ones beside the repository in
/// shared/real/*operator*.yaml) and the chart's RBAC that detach-helm, cleanup-leftovers
/// and rollback write (the sandbox's render of chart 0.3.10 and the real chart's
/// templates, those behind podSecurityPolicy.create included).
fn roles_the_migration_writes() -> Result<(BTreeSet<String>, BTreeSet<String>)> {
    let (mut cluster, mut roles) = (BTreeSet::new(), BTreeSet::new());
    let operator = scenario::operator::operator_manifest("quay.io/tigera/operator:v1.17.4");
    role_names(&operator, &mut cluster, &mut roles);
    let chart: Vec<Value> = scenario::chart::rendered_objects(&Default::default())
        .into_iter()
        .map(|(_, o)| o)
        .collect();
    role_names(&chart, &mut cluster, &mut roles);
    let real = repo().join("../shared/real");
    let entries = std::fs::read_dir(&real).with_context(|| {
        format!(
            "{} (the real manifests and charts) is missing",
            real.display()
        )
    })?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        let file = p
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        if file.ends_with(".yaml") && file.contains("operator") {
            let text = std::fs::read_to_string(&p)?;
            let objects = calico_migrate::migration::session::parse_manifest(&text)?;
            role_names(&objects, &mut cluster, &mut roles);
        } else if file.starts_with("aws-calico-0.3.10") && file.ends_with(".tgz") {
            chart_role_names(&untar_gz(&p)?, &mut cluster, &mut roles)?;
        }
    }
    Ok((cluster, roles))
}

#[test]
fn bind_and_escalate_are_limited_to_the_roles_the_migration_writes() -> Result<()> {
    let grants = escalation_grants(&manifests(&repo().join("deploy"))?);
    let (cluster, roles) = roles_the_migration_writes()?;
    assert!(
        cluster.contains("tigera-operator") && cluster.contains("calico-node"),
        "the derivation found the operator's and the chart's ClusterRoles: {cluster:?}"
    );
    assert!(roles.contains("calico-typha-cpha"), "{roles:?}");
    let key =
        |v: &str, r: &str, ns: Option<&str>| (v.to_string(), r.to_string(), ns.map(String::from));
    let mut want = EscalationGrants::new();
    for verb in ["bind", "escalate"] {
        want.insert(key(verb, "clusterroles", None), Some(cluster.clone()));
        want.insert(key(verb, "roles", Some("kube-system")), Some(roles.clone()));
    }
    assert_eq!(
        grants, want,
        "deploy/ must grant bind and escalate on exactly the roles the migration writes, by name (None: any role)"
    );
    Ok(())
}

/// A real cluster's bootstrap ClusterRole `cluster-admin`
/// (plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go).
fn cluster_admin() -> Value {
    serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "cluster-admin"},
        "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                  {"nonResourceURLs": ["*"], "verbs": ["*"]}],
    })
}

/// A ClusterRoleBinding of `role` to the ServiceAccount `sa` ("namespace/name").
fn crb(name: &str, role: &str, sa: &str) -> Value {
    let (ns, sa) = sa.split_once('/').unwrap_or(("default", sa));
    serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
    })
}

fn cluster_role(name: &str, rules: Value) -> Value {
    serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name}, "rules": rules,
    })
}

/// The 403 message of a refused write, or why the write was not refused.
fn refusal<T: std::fmt::Debug>(r: kube::Result<T>) -> Result<String> {
    match r {
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(s.message.clone()),
        other => bail!("expected 403 Forbidden, got {other:?}"),
    }
}

#[tokio::test]
async fn the_job_cannot_bind_or_write_roles_beyond_its_own_permissions() -> Result<()> {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role};
    use kube::api::{Api, Patch, PatchParams, PostParams};
    let sb = scenario_sandbox()?;
    sb.load(manifests(&repo().join("deploy"))?)?;
    sb.load(vec![cluster_admin()])?;
    let server = sb.serve("127.0.0.1:0").await?;
    let mut cfg = kube::Config::new(server.url().parse()?);
    cfg.auth_info.impersonate = Some(format!("system:serviceaccount:{SA_NAMESPACE}:{SA_NAME}"));
    let job = kube::Client::try_from(cfg)?;
    let crbs: Api<ClusterRoleBinding> = Api::all(job.clone());
    let crs: Api<ClusterRole> = Api::all(job.clone());
    let pp = PostParams::default();

    // Binding cluster-admin to itself: no `bind` on it, and it does not hold `*` on `*`.
    let msg = refusal(
        crbs.create(
            &pp,
            &serde_json::from_value(crb("job-admin", "cluster-admin", JOB_SA))?,
        )
        .await,
    )?;
    assert!(
        msg.starts_with("clusterrolebindings.rbac.authorization.k8s.io \"job-admin\" is forbidden: user \"system:serviceaccount:calico-migrate:calico-migrate\" (groups=[\"system:serviceaccounts\" \"system:serviceaccounts:calico-migrate\" \"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:"),
        "{msg}"
    );
    assert!(
        msg.contains("{APIGroups:[\"*\"], Resources:[\"*\"], Verbs:[\"*\"]}"),
        "{msg}"
    );
    assert!(
        msg.contains("{NonResourceURLs:[\"*\"], Verbs:[\"*\"]}"),
        "{msg}"
    );

    // A ClusterRole broader than the ones it may escalate: refused created or applied.
    let all = serde_json::json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]);
    let x: ClusterRole = serde_json::from_value(cluster_role("x", all.clone()))?;
    let msg = refusal(crs.create(&pp, &x).await)?;
    assert!(
        msg.contains("clusterroles.rbac.authorization.k8s.io \"x\" is forbidden"),
        "{msg}"
    );
    assert!(
        msg.ends_with("not currently held:\n{APIGroups:[\"*\"], Resources:[\"*\"], Verbs:[\"*\"]}"),
        "{msg}"
    );
    let apply = PatchParams::apply("calico-migrate").force();
    refusal(crs.patch("x", &apply, &Patch::Apply(&x)).await)?;
    assert!(
        sb.store()
            .get(
                &calico_migrate::sandbox::Gvr::new(RBAC, "v1", "clusterroles"),
                "",
                "x"
            )
            .is_err()
    );

    // The operator's ClusterRole (`*` on `*` in the sandbox's manifest): applied by name
    // with `escalate` on it, and bound with `bind` on it.
    let operator =
        serde_json::from_value::<ClusterRole>(cluster_role("tigera-operator", all.clone()))?;
    crs.patch("tigera-operator", &apply, &Patch::Apply(&operator))
        .await?;
    crbs.create(
        &pp,
        &serde_json::from_value(crb(
            "tigera-operator",
            "tigera-operator",
            "tigera-operator/tigera-operator",
        ))?,
    )
    .await?;
    // A create names no role, so a name-limited `escalate` does not answer it: the same
    // role created by POST needs the permissions themselves.
    let secrets = cluster_role(
        "tigera-operator-secrets",
        serde_json::json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "update", "delete"]}]),
    );
    let msg = refusal(crs.create(&pp, &serde_json::from_value(secrets)?).await)?;
    assert!(
        msg.contains(
            "{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"create\" \"update\" \"delete\"]}"
        ),
        "{msg}"
    );
    // A role within its own permissions needs neither verb.
    let reader = cluster_role(
        "node-reader",
        serde_json::json!([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]}]),
    );
    crs.create(&pp, &serde_json::from_value(reader)?).await?;

    // What rollback re-creates by POST after cleanup-leftovers: the chart's autoscaler
    // ClusterRole and Role, and their bindings.
    let chart: Vec<Value> = scenario::chart::rendered_objects(&Default::default())
        .into_iter()
        .map(|(_, o)| o)
        .filter(|o| {
            text_at(o, "/metadata/name") == "calico-typha-cpha"
                && text_at(o, "/apiVersion").starts_with(RBAC)
        })
        .collect();
    assert_eq!(
        chart.len(),
        4,
        "ClusterRole, ClusterRoleBinding, Role, RoleBinding"
    );
    let roles: Api<Role> = Api::namespaced(job.clone(), "kube-system");
    let cpha = |kind: &str| {
        chart
            .iter()
            .find(|o| o["kind"] == kind)
            .cloned()
            .context("chart object")
    };
    crs.delete("calico-typha-cpha", &Default::default()).await?;
    roles
        .delete("calico-typha-cpha", &Default::default())
        .await?;
    crbs.delete("calico-typha-cpha", &Default::default())
        .await?;
    crs.create(&pp, &serde_json::from_value(strip(cpha("ClusterRole")?))?)
        .await?;
    roles
        .create(&pp, &serde_json::from_value(strip(cpha("Role")?))?)
        .await?;
    crbs.create(
        &pp,
        &serde_json::from_value(strip(cpha("ClusterRoleBinding")?))?,
    )
    .await?;

    // The admin (no impersonation, system:masters) is not held to the check.
    let admin: Api<ClusterRoleBinding> = Api::all(sb.client());
    admin
        .create(
            &pp,
            &serde_json::from_value(crb("admin-made", "cluster-admin", JOB_SA))?,
        )
        .await?;
    server.shutdown().await;
    Ok(())
}

/// `obj` without the server's fields, as a client would send it.
fn strip(mut obj: Value) -> Value {
    if let Some(m) = obj["metadata"].as_object_mut() {
        for k in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "managedFields",
        ] {
            m.remove(k);
        }
    }
    obj
}

#[test]
fn job_arguments_parse_and_pods_are_locked_down() -> Result<()> {
    use clap::Parser;
    let jobs = manifests(&repo().join("deploy/jobs"))?;
    assert_eq!(jobs.len(), 4, "plan, apply, resume, rollback");
    for job in &jobs {
        let name = job
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let spec = job.pointer("/spec/template/spec").context("pod spec")?;
        assert_eq!(spec["serviceAccountName"], SA_NAME, "{name}");
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{name}");
        let c = &spec["containers"][0];
        assert_eq!(
            c["securityContext"]["readOnlyRootFilesystem"], true,
            "{name}"
        );
        assert_eq!(
            c["securityContext"]["allowPrivilegeEscalation"], false,
            "{name}"
        );
        let args: Vec<String> = c["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(String::from))
            .collect();
        assert!(
            // A directory the tool creates (0700) on the volume: the volume's own root is
            // group-writable under fsGroup, and some provisioners make it 0777, which
            // the tool refuses for a state dir.
            args.windows(2)
                .any(|w| w == ["--state-dir", "/state/calico-migrate"]),
            "{name}: {args:?}"
        );
        if args[0] != "plan" {
            assert!(
                args.iter().any(|a| a == "--yes"),
                "{name}: no terminal to confirm on"
            );
        }
        let mut argv = vec!["calico-migrate".to_string()];
        argv.extend(args.iter().cloned());
        if let Err(e) = calico_migrate::cli::Cli::try_parse_from(&argv) {
            bail!("{name}: the Job's arguments do not parse: {e}");
        }
        let mounts = c["volumeMounts"].as_array().context("mounts")?;
        assert!(mounts.iter().any(|m| m["mountPath"] == "/state"), "{name}");
    }
    // The in-cluster kubeconfig is one kube-rs reads (tokenFile: the projected token).
    let cm = manifests(&repo().join("deploy"))?
        .into_iter()
        .find(|o| o["kind"] == "ConfigMap")
        .context("kubeconfig ConfigMap")?;
    let text = cm
        .pointer("/data/kubeconfig")
        .and_then(Value::as_str)
        .context("data.kubeconfig")?;
    let kc = kube::config::Kubeconfig::from_yaml(text)?;
    let user = kc
        .auth_infos
        .first()
        .and_then(|a| a.auth_info.as_ref())
        .context("user")?;
    assert_eq!(
        user.token_file.as_deref(),
        Some("/var/run/secrets/kubernetes.io/serviceaccount/token")
    );
    Ok(())
}

/// The access review `plan` runs (cluster::access) gets real answers from the sandbox.
#[tokio::test]
async fn access_review_answers_for_the_admin_and_for_the_job_identity() -> Result<()> {
    let sb = scenario_sandbox()?;
    let retry = RetryPolicy::default();
    let admin = access::review(&sb.client(), &needed(), 8, &retry).await?;
    assert_eq!(admin, AccessReport::Checked { missing: vec![] });

    let server = sb.serve("127.0.0.1:0").await?;
    let mut cfg = kube::Config::new(server.url().parse()?);
    cfg.auth_info.impersonate = Some(format!("system:serviceaccount:{SA_NAMESPACE}:{SA_NAME}"));
    let job = kube::Client::try_from(cfg)?;
    // Before deploy/ is applied the identity has nothing.
    let Ok(AccessReport::Checked { missing }) = access::review(&job, &needed(), 8, &retry).await
    else {
        bail!("the review was not answered");
    };
    assert_eq!(missing.len(), needed().len());
    sb.load(manifests(&repo().join("deploy"))?)?;
    let report = access::review(&job, &needed(), 8, &retry).await?;
    assert_eq!(report, AccessReport::Checked { missing: vec![] });
    // And the same identity is held to RBAC on real requests.
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(job.clone(), "default");
    match secrets.list(&Default::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => bail!("listing Secrets in default should be forbidden: {other:?}"),
    }
    let ks: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(job, "kube-system");
    ks.list(&Default::default())
        .await
        .context("kube-system Secrets are granted")?;
    server.shutdown().await;
    Ok(())
}

fn kubectl(kc: &Path, args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kc)
        .output()?)
}

/// `kubectl auth can-i` for one permission; `--as` the Job's identity when `as_job`.
fn can_i(kc: &Path, p: &Permission, name: Option<&str>, as_job: bool) -> Result<bool> {
    let (res, sub) = p.resource.split_once('/').unwrap_or((p.resource, ""));
    let mut target = if p.group.is_empty() {
        res.to_string()
    } else {
        format!("{res}.{}", p.group)
    };
    if let Some(n) = name {
        target = format!("{target}/{n}");
    }
    let mut args = vec!["auth".to_string(), "can-i".into(), p.verb.into(), target];
    if !sub.is_empty() {
        args.push(format!("--subresource={sub}"));
    }
    match p.namespace {
        Some(ns) => args.extend(["-n".to_string(), ns.to_string()]),
        None => args.push("--all-namespaces".into()),
    }
    if as_job {
        args.push(AS.into());
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = kubectl(kc, &argv)?;
    if String::from_utf8_lossy(&out.stderr).contains("doesn't have a resource type") {
        // A kind the server does not serve (Calico Tiers before v3.21, PodSecurityPolicies
        // from Kubernetes 1.25): `auth can-i` then asks about the bare resource string
        // with no group (kubectl auth/cani.go `resourceFor`). Ask the same API with the
        // group, through kubectl still.
        return review_with_kubectl(kc, p, name, as_job);
    }
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match (out.status.code(), said.as_str()) {
        (Some(0), "yes") => Ok(true),
        (Some(1), s) if s.starts_with("no") => Ok(false),
        _ => bail!(
            "kubectl {argv:?}: {said} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A SelfSubjectAccessReview sent with `kubectl create --raw`; its `status.allowed`.
fn review_with_kubectl(
    kc: &Path,
    p: &Permission,
    name: Option<&str>,
    as_job: bool,
) -> Result<bool> {
    let (res, sub) = p.resource.split_once('/').unwrap_or((p.resource, ""));
    let review = serde_json::json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"verb": p.verb, "group": p.group, "resource": res,
            "subresource": sub, "namespace": p.namespace.unwrap_or(""),
            "name": name.unwrap_or("")}}});
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("review.json");
    std::fs::write(&file, review.to_string())?;
    let file = file.to_string_lossy().to_string();
    let mut args = vec![
        "create",
        "--raw",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        "-f",
        &file,
    ];
    if as_job {
        args.push(AS);
    }
    let out = kubectl(kc, &args)?;
    if !out.status.success() {
        bail!("kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let answer: Value = serde_json::from_slice(&out.stdout)?;
    Ok(answer["status"]["allowed"] == true)
}

#[test]
fn kubectl_applies_deploy_and_auth_can_i_agrees() -> Result<()> {
    if let Err(why) = kubectl_client::usable() {
        eprintln!("SKIPPED kubectl_applies_deploy_and_auth_can_i_agrees: {why}");
        return Ok(());
    }
    let rt = tokio::runtime::Runtime::new()?;
    let sb = scenario_sandbox()?;
    let server = rt.block_on(sb.serve("127.0.0.1:0"))?;
    let dir = tempfile::tempdir()?;
    let kc = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kc)?;

    let sa_perm =
        |verb: &'static str, group: &'static str, resource: &'static str, namespace| Permission {
            verb,
            group,
            resource,
            namespace,
        };
    // Before deploy/: the admin may, the Job's identity may not.
    let probe = sa_perm("patch", "", "nodes", None);
    assert!(
        can_i(&kc, &probe, None, false)?,
        "the sandbox user is an admin"
    );
    assert!(
        !can_i(&kc, &probe, None, true)?,
        "no RBAC yet for the Job's identity"
    );

    for dir in ["deploy", "deploy/jobs"] {
        let path = repo().join(dir);
        let out = kubectl(&kc, &["apply", "-f", &path.to_string_lossy()])?;
        assert!(
            out.status.success(),
            "kubectl apply -f {dir}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // kubectl resolves `installations.operator.tigera.io` through discovery; for a
    // group the server does not serve yet it asks about the resource string with an
    // empty group (kubectl auth/cani.go `resourceFor`), which RBAC never grants. The
    // steps need those verbs once install-operator has created the CRDs, so ask then.
    sb.load(scenario::operator::operator_crds())?;
    let perms = needed();
    let answers: Vec<(String, Result<bool>)> = std::thread::scope(|s| {
        let chunks: Vec<_> = perms.chunks(perms.len().div_ceil(4).max(1)).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let kc = kc.clone();
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|p| {
                            let name = (p.group == "coordination.k8s.io").then_some(LEASE);
                            (p.to_string(), can_i(&kc, p, name, true))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    assert_eq!(answers.len(), perms.len(), "every kubectl call came back");
    let denied: Vec<String> = answers
        .into_iter()
        .filter_map(|(p, a)| match a {
            Ok(true) => None,
            Ok(false) => Some(format!("{p}: no")),
            Err(e) => Some(format!("{p}: {e}")),
        })
        .collect();
    assert!(
        denied.is_empty(),
        "kubectl auth can-i --as the Job: {denied:#?}"
    );

    for (verb, group, resource, namespace) in FORBIDDEN {
        let p = sa_perm(verb, group, resource, *namespace);
        assert!(!can_i(&kc, &p, None, true)?, "must not: {p}");
    }
    // bind and escalate answer only for the roles the migration writes.
    for (verb, resource, ns, name, want) in [
        ("bind", "clusterroles", None, "cluster-admin", false),
        ("escalate", "clusterroles", None, "cluster-admin", false),
        ("bind", "clusterroles", None, "admin", false),
        ("bind", "clusterroles", None, "tigera-operator", true),
        ("escalate", "clusterroles", None, "tigera-operator", true),
        ("bind", "clusterroles", None, "calico-node", true),
        (
            "bind",
            "roles",
            Some("kube-system"),
            "calico-typha-cpha",
            true,
        ),
        (
            "escalate",
            "roles",
            Some("kube-system"),
            "calico-typha-cpha",
            true,
        ),
        (
            "bind",
            "roles",
            Some("kube-system"),
            "system:controller:bootstrap-signer",
            false,
        ),
        ("bind", "roles", Some("default"), "calico-typha-cpha", false),
    ] {
        let p = sa_perm(verb, RBAC, resource, ns);
        assert_eq!(
            can_i(&kc, &p, Some(name), true)?,
            want,
            "kubectl auth can-i {verb} {resource}/{name}"
        );
    }
    // An unnamed `bind` (any role) is not granted either.
    assert!(!can_i(
        &kc,
        &sa_perm("bind", RBAC, "clusterroles", None),
        None,
        true
    )?);
    // And the API server refuses the binding itself with RBAC's escalation error.
    let file = dir.path().join("job-admin.json");
    std::fs::write(&file, crb("job-admin", "cluster-admin", JOB_SA).to_string())?;
    sb.load(vec![cluster_admin()])?;
    let out = kubectl(&kc, &["create", "-f", &file.to_string_lossy(), AS])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("is forbidden")
            && err.contains("is attempting to grant RBAC permissions not currently held"),
        "{err}"
    );
    // (a server-side dry run: the binding is not kept, the Job's rights stay as they are)
    let out = kubectl(
        &kc,
        &["create", "--dry-run=server", "-f", &file.to_string_lossy()],
    )?;
    assert!(
        out.status.success(),
        "the admin may: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let other_lease = sa_perm(
        "delete",
        "coordination.k8s.io",
        "leases",
        Some("kube-system"),
    );
    assert!(can_i(&kc, &other_lease, Some(LEASE), true)?);
    assert!(!can_i(
        &kc,
        &other_lease,
        Some("kube-controller-manager"),
        true
    )?);

    // kubectl itself is held to RBAC when it impersonates.
    let out = kubectl(&kc, &["get", "secrets", "-n", "default", AS])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("forbidden"),
        "{out:?}"
    );
    let out = kubectl(&kc, &["get", "configmaps", "-n", "kube-system", AS])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    rt.block_on(server.shutdown());
    Ok(())
}
