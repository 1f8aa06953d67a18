//! Preflight rules: every reason the migration would stop or do harm, found before
//! anything is touched. Each finding has a stable code, a severity, a message and
//! the fix (applied by a named step, or to be made by the user).

use serde::Serialize;
use serde_json::Value;

use super::converter::{self, Refusal, TyphaRefusal};
use super::facts::{self, Generation, Source, Summary, name_of, str_at};
use super::manifest::ManifestObject;
use super::profile::{OperatorInstall, Profile, SourceInstall, parse_version};
use super::refs::{CALICO_GROUP, MIGRATION_LABEL};
use crate::cluster::access::AccessReport;
use crate::cluster::inventory::Inventory;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Blocker,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub code: &'static str,
    #[serde(skip)]
    pub severity: Severity,
    pub message: String,
    pub fix: String,
    /// The plan step that removes this blocker, when the plan has it; a blocker
    /// with a fixing step does not stop `apply`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed_by: Option<&'static str>,
}

/// The step that fixes a finding, by code.
pub fn fixing_step(code: &str) -> Option<&'static str> {
    use super::steps::{align_versions, detach_helm, fargate_affinity};
    match code {
        // detach-helm strips every annotation the converter refuses on calico-node,
        // Helm's and others (backed up, restored on rollback).
        "CONVERTER_HELM_ANNOTATIONS" | "CONVERTER_ANNOTATIONS" => Some(detach_helm::ID),
        "CONVERTER_FARGATE_AFFINITY" => Some(fargate_affinity::ID),
        "CALICO_VERSION_ALIGN" => Some(align_versions::ID),
        _ => None,
    }
}

/// Everything the rules look at.
pub struct RuleInput<'a> {
    pub inv: &'a Inventory,
    pub source: &'a Source,
    pub summary: &'a Summary,
    pub profile: &'a Profile,
    pub access: &'a AccessReport,
    /// sha256 of the operator manifest the plan will apply, if pinned.
    pub manifest_sha256: Option<&'a str>,
    /// sha256 of the target Calico's manifest align-versions reads, if pinned.
    pub calico_manifest_sha256: Option<&'a str>,
}

fn f(code: &'static str, severity: Severity, message: String, fix: impl Into<String>) -> Finding {
    Finding {
        code,
        severity,
        message,
        fix: fix.into(),
        fixed_by: None,
    }
}
use Severity::{Blocker, Warning};

/// Run every rule, in a stable order.
pub fn evaluate(i: &RuleInput) -> Vec<Finding> {
    let mut out = Vec::new();
    kubernetes_version(i, &mut out);
    helm2(i, &mut out);
    generation(i, &mut out);
    if matches!(
        i.source.generation,
        Generation::ManifestChart | Generation::ManifestUnmanaged
    ) {
        chart_version(i, &mut out);
        calico_version(i, &mut out);
        converter_prediction(i, &mut out);
        agent_health(i, &mut out);
        helm_uninstall(i, &mut out);
        end_of_migration_restart(i, &mut out);
    }
    nodes(i, &mut out);
    crds(i, &mut out);
    psp_and_pdb(i, &mut out);
    operator_manifest(i, &mut out);
    calico_manifest(i, &mut out);
    access(i, &mut out);
    out
}

/// The operator-based chart 0.3.11 under its own profile: the chart version, what
/// `helm uninstall` would do now, and whether the chart's operator can still render.
fn operator_chart(i: &RuleInput, out: &mut Vec<Finding>) {
    chart_version(i, out);
    let s = i.source;
    let release = format!(
        "{}/{}",
        s.namespace.as_deref().unwrap_or("?"),
        s.release.as_deref().unwrap_or("?")
    );
    out.push(f(
        "RELEASE_OWNS_CRDS",
        Warning,
        format!(
            "release {release} holds every Calico and operator CRD as a Helm template \
             (aws-calico 0.3.11 templates/crds/): until the release is detached, `helm \
             uninstall` deletes the CRDs and with them every Calico policy, and `helm upgrade` \
             rewrites them"
        ),
        "run neither before apply: keep-release marks every object of the release \
         `helm.sh/resource-policy: keep`, then detach-helm removes the release records",
    ));
    let tag = facts::operator_tag(i.inv);
    let minor = super::profile::parse_minor(&i.inv.server_version);
    if let (Some(tag), Some(minor)) = (tag, minor)
        && facts::operator_renders_v1beta1(&tag)
        && minor >= (1, 25)
    {
        out.push(f(
            "SOURCE_OPERATOR_CANNOT_RENDER",
            Warning,
            format!(
                "tigera-operator {tag} runs on Kubernetes {}.{}, which no longer serves \
                 policy/v1beta1: its render stops at the typha PodDisruptionBudget \
                 (tigera/operator v1.20.1 pkg/render/typha.go:117-140), so it reconciles \
                 nothing and TigeraStatus calico is Degraded; calico-node keeps enforcing the \
                 configuration it last got",
                minor.0, minor.1
            ),
            format!(
                "none needed to go forward: upgrade-operator moves it to {}, which renders here; \
                 the way back past upgrade-operator is closed on this cluster ({tag} cannot \
                 render on it)",
                i.profile.target.operator_version
            ),
        ));
    }
}

/// `KUBERNETES_VERSION_UNSUPPORTED`: the profile's operator cannot run on this
/// cluster's Kubernetes (e.g. operator v1.17.4 on 1.25+, whose render needs
/// policy/v1beta1): it would go Degraded before migrating anything.
fn kubernetes_version(i: &RuleInput, out: &mut Vec<Finding>) {
    let k = &i.profile.kubernetes;
    let Some(minor) = super::profile::parse_minor(&i.inv.server_version) else {
        out.push(f(
            "KUBERNETES_VERSION_UNKNOWN",
            Warning,
            format!(
                "the cluster's Kubernetes version {:?} does not read as 1.N, so plan cannot tell \
                 whether operator {} (Kubernetes {}) runs on it",
                i.inv.server_version,
                i.profile.target.operator_version,
                k.describe()
            ),
            "check the cluster's version (`kubectl version`) against the profile's kubernetes range",
        ));
        return;
    };
    if k.admits(minor) {
        return;
    }
    let others: Vec<String> = super::profile::builtin_names()
        .filter(|n| *n != i.profile.name)
        .map(String::from)
        .collect();
    out.push(f(
        "KUBERNETES_VERSION_UNSUPPORTED",
        Blocker,
        format!(
            "profile {} targets operator {}, which runs on Kubernetes {} only, and this cluster \
             runs Kubernetes {}.{}: {}",
            i.profile.name,
            i.profile.target.operator_version,
            k.describe(),
            minor.0,
            minor.1,
            k.why
        ),
        format!(
            "run plan without --profile to get the profile for this Kubernetes version{}",
            if others.is_empty() {
                String::new()
            } else {
                format!(" (built in: {})", others.join(", "))
            }
        ),
    ));
}

fn helm2(i: &RuleInput, out: &mut Vec<Finding>) {
    let recs = facts::helm2_records(i.inv);
    if !recs.is_empty() {
        out.push(f(
            "HELM2_RELEASE",
            Blocker,
            format!(
                "Helm 2 (Tiller) release records found: {}. Helm 3 cannot read them and calico-migrate \
                 cannot back them up or restore them",
                recs.join(", ")
            ),
            "convert the release with `helm 2to3 convert <release>` (and `helm 2to3 cleanup` once \
             verified), then run plan again",
        ));
    }
}

fn generation(i: &RuleInput, out: &mut Vec<Finding>) {
    let s = i.source;
    match s.generation {
        Generation::ManifestChart => {}
        Generation::ManifestUnmanaged => out.push(f(
            "NO_HELM_RELEASE",
            Warning,
            format!(
                "kube-system calico-node exists but no Helm 3 release of chart {} was found",
                i.profile.source.chart
            ),
            "none needed: the detach-helm step is left out of the plan",
        )),
        Generation::OperatorChart if i.profile.source.install == SourceInstall::Operator => {
            operator_chart(i, out)
        }
        Generation::OperatorChart => out.push(f(
            "CHART_OPERATOR_BASED",
            Blocker,
            format!(
                "release {}/{} is chart {} {}, which already installs the Tigera Operator; profile \
                 {} migrates the manifest-style chart (<= 0.3.10) and does not apply. Its Calico \
                 CRDs are Helm templates, so `helm uninstall` of this release would delete every \
                 Calico policy",
                s.namespace.as_deref().unwrap_or("?"),
                s.release.as_deref().unwrap_or("?"),
                s.chart.as_deref().unwrap_or("?"),
                s.chart_version.as_deref().unwrap_or("?"),
                i.profile.name,
            ),
            format!(
                "do not run `helm uninstall`; plan again without --profile, or with --profile {}",
                crate::migration::profile::OPERATOR_CHART_PROFILE
            ),
        )),
        Generation::OperatorInstalled => out.push(f(
            "ALREADY_OPERATOR",
            Blocker,
            "Calico already runs under the Tigera Operator (calico-system calico-node or the \
             tigera-operator Deployment) and there is no kube-system calico-node to migrate"
                .into(),
            "nothing to migrate; if a previous attempt stopped half-way, use `calico-migrate \
             status` and `calico-migrate rollback` from its state dir",
        )),
        Generation::None => out.push(f(
            "NO_CALICO",
            Blocker,
            "no Calico found: no calico-node DaemonSet in kube-system or calico-system and no \
             tigera-operator"
                .into(),
            "check --context points at the right cluster; there is nothing to migrate",
        )),
    }
    if i.profile.source.install == SourceInstall::Operator
        && matches!(
            s.generation,
            Generation::ManifestChart | Generation::ManifestUnmanaged
        )
    {
        out.push(f(
            "PROFILE_FOR_OPERATOR_CHART",
            Blocker,
            format!(
                "profile {} moves the operator-based chart 0.3.11, but kube-system runs \
                 calico-node from a manifest-style install",
                i.profile.name
            ),
            "plan again without --profile: plan picks the profile for this install",
        ));
    }
    helm_configmap_driver(i, out);
    let labelled = migration_labelled_nodes(i.inv);
    let half = i.summary.operator_present || i.summary.installation_present || !labelled.is_empty();
    if half
        && matches!(
            s.generation,
            Generation::ManifestChart | Generation::ManifestUnmanaged
        )
    {
        out.push(f(
            "OPERATOR_PRESENT",
            Blocker,
            format!(
                "the Tigera Operator is already present beside kube-system calico-node \
                 (operator Deployment: {}, Installation: {}, nodes labelled {MIGRATION_LABEL}: {}): \
                 a previous attempt was left half-way, and an Installation would start the \
                 operator's migration at once",
                yes(i.summary.operator_present),
                yes(i.summary.installation_present),
                if labelled.is_empty() { "none".to_string() } else { labelled.join(", ") }
            ),
            "resume or roll back that attempt (`calico-migrate status`, `calico-migrate rollback` \
             with its state dir), or remove the operator and its Installation, then plan again",
        ));
    }
}

fn migration_labelled_nodes(inv: &Inventory) -> Vec<String> {
    inv.list("nodes")
        .iter()
        .filter(|n| {
            n.pointer("/metadata/labels")
                .and_then(Value::as_object)
                .is_some_and(|l| l.contains_key(MIGRATION_LABEL))
        })
        .map(|n| name_of(n).to_string())
        .collect()
}

fn helm_configmap_driver(i: &RuleInput, out: &mut Vec<Finding>) {
    let recs: Vec<String> = i
        .inv
        .list("helm3_configmaps")
        .iter()
        .filter_map(|o| match crate::helm::detect_release_record(o) {
            Some(crate::helm::ReleaseRecord::Helm3ConfigMap { release, .. }) => Some(format!(
                "{}/{} ({release})",
                str_at(o, "/metadata/namespace").unwrap_or(""),
                name_of(o)
            )),
            _ => None,
        })
        .filter(|r| r.contains("calico"))
        .collect();
    if !recs.is_empty() {
        out.push(f(
            "HELM_CONFIGMAP_DRIVER",
            Blocker,
            format!(
                "Helm 3 release records stored as ConfigMaps (HELM_DRIVER=configmap): {}; \
                 calico-migrate backs up and restores only Secret records",
                recs.join(", ")
            ),
            "migrate the release to the secrets driver (helm-driver-migrate) or remove the \
             records after backing them up yourself, then plan again",
        ));
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn chart_version(i: &RuleInput, out: &mut Vec<Finding>) {
    if let Some(v) = &i.source.chart_version
        && !i.profile.source.chart_versions.contains(v)
    {
        out.push(f(
            "CHART_VERSION_UNSUPPORTED",
            Blocker,
            format!(
                "chart {} {v} is not one profile {} was written for ({})",
                i.profile.source.chart,
                i.profile.name,
                i.profile.source.chart_versions.join(", ")
            ),
            "choose a profile for this chart version (--profile) or write one under plans/",
        ));
    }
}

fn calico_version(i: &RuleInput, out: &mut Vec<Finding>) {
    let running = i.source.calico_version.as_deref().unwrap_or("");
    let target = &i.profile.target.calico_version;
    let (Some(r), Some(t)) = (parse_version(running), parse_version(target)) else {
        out.push(f(
            "CALICO_VERSION_UNKNOWN",
            Blocker,
            format!(
                "cannot read the running Calico version from the calico-node image ({running:?})"
            ),
            "make sure kube-system calico-node runs a calico/node:vX.Y.Z image",
        ));
        return;
    };
    if (r.0, r.1) == (t.0, t.1) {
        if r != t {
            out.push(f(
                "CALICO_PATCH_DIFFERS",
                Warning,
                format!(
                    "running Calico {running}, the operator installs {target} (same minor line)"
                ),
                "none needed: the operator upgrades the patch release as it takes over each node",
            ));
        }
        return;
    }
    if i.profile.target.align_versions {
        out.push(f(
            "CALICO_VERSION_ALIGN",
            Warning,
            format!("running Calico {running}, the operator installs {target}"),
            "the align-versions step brings the kube-system install to the target version in place \
             before the operator is installed: that version's CRDs and RBAC from its manifest \
             (--calico-manifest) first, then the images, node by node",
        ));
    } else {
        out.push(f(
            "CALICO_VERSION_MISMATCH",
            Blocker,
            format!(
                "running Calico {running}, but operator {} installs {target}; the operator's \
                 migration is supported only from the Calico version it installs",
                i.profile.target.operator_version
            ),
            "pick the operator release that matches the running Calico (plans/versions.yaml), or \
             set target.align_versions: true in the profile",
        ));
    }
}

fn converter_prediction(i: &RuleInput, out: &mut Vec<Finding>) {
    let line = converter::ConverterLine::of(&i.profile.target.operator_version);
    // getComponents refuses Canal before any conversion (v1.17.4 components.go:31-39,
    // v1.38.6 :45-53), as a plain error: "Error checking for existing installation".
    if i.inv
        .find("daemonsets", "kube-system", "canal-node")
        .is_some()
    {
        out.push(f(
            "CONVERTER_CANAL",
            Blocker,
            format!(
                "kube-system DaemonSet canal-node exists; the operator's converter refuses a \
                 cluster with Canal (\"detected existing canal installation\", {})",
                line.cite("components.go:31-39", "components.go:45-53")
            ),
            "this profile does not cover Canal clusters",
        ));
    }
    let Some(ds) = i.inv.find("daemonsets", "kube-system", "calico-node") else {
        return;
    };
    let config_maps: Vec<Value> = i
        .inv
        .list("configmaps")
        .iter()
        .filter(|c| str_at(c, "/metadata/namespace") == Some("kube-system"))
        .cloned()
        .collect();
    let ex = converter::Existing {
        node: ds,
        typha: i.inv.find("deployments", "kube-system", "calico-typha"),
        cluster: Some(converter::Cluster {
            config_maps: &config_maps,
            ip_pools: i.inv.list("ip_pools"),
            felix_configuration: i
                .inv
                .list("felix_configurations")
                .iter()
                .find(|o| name_of(o) == "default"),
        }),
    };
    for r in converter::predict(&ex, line) {
        out.push(converter_finding(i, line, r));
    }
    for r in converter::predict_typha(&ex, line) {
        out.push(typha_finding(i, line, r));
    }
}

/// The Degraded a refusal leaves: every refusal stops the takeover before it starts.
const REFUSED: &str =
    "the operator reports it as TigeraStatus calico Degraded and the takeover never starts";

/// How to change an env var of kube-system calico-node.
const EDIT_ENV: &str = "edit the env of kube-system DaemonSet calico-node (`kubectl -n kube-system \
     set env ds/calico-node ...`, or the chart's calico.node.extraEnv and `helm upgrade` while \
     the release exists), then plan again";

/// A predicted converter refusal on calico-node as a finding, citing the upstream lines.
fn converter_finding(i: &RuleInput, line: converter::ConverterLine, r: Refusal) -> Finding {
    let src = r.source(line);
    let op = &i.profile.target.operator_version;
    match r {
        Refusal::Annotations { on, keys } => {
            let helm_only = keys.iter().all(|k| k.starts_with("meta.helm.sh/"));
            f(
                if helm_only {
                    "CONVERTER_HELM_ANNOTATIONS"
                } else {
                    "CONVERTER_ANNOTATIONS"
                },
                Blocker,
                format!(
                    "kube-system calico-node carries {on} annotations {} that the operator's \
                     converter does not ignore: it refuses them (TigeraStatus calico Degraded, \
                     MigrationError) and the takeover never starts ({src})",
                    keys.join(", ")
                ),
                if i.source.release.is_some() {
                    "the detach-helm step removes them with the Helm labels (after backing up \
                     the release records and the metadata; rollback restores them)"
                        .to_string()
                } else if helm_only {
                    "no Helm 3 release record exists to detach: remove the meta.helm.sh/* \
                     annotations from the DaemonSet yourself"
                        .to_string()
                } else {
                    format!(
                        "remove the annotations {} from the DaemonSet",
                        keys.join(", ")
                    )
                },
            )
        }
        Refusal::FargateAffinity => f(
            "CONVERTER_FARGATE_AFFINITY",
            Blocker,
            format!(
                "the operator's converter refuses the node affinity on kube-system calico-node \
                 (eks.amazonaws.com/compute-type NotIn [fargate], chart >= 0.3.3; calico issue \
                 6357) on every release: its EKS exception needs the Installation's provider, \
                 and Convert checks an empty Installation ({src})"
            ),
            "the fargate-affinity step removes the affinity just before the takeover (Fargate \
             nodes never run DaemonSet pods) and restores it on rollback",
        ),
        Refusal::NodeAffinity => f(
            "CONVERTER_NODE_AFFINITY",
            Blocker,
            format!(
                "the operator's converter refuses any affinity on kube-system calico-node, and \
                 it has one other than the chart's Fargate exclusion ({src})"
            ),
            "remove the affinity from the DaemonSet (the Installation's \
             spec.controlPlaneNodeSelector does not cover calico-node)",
        ),
        Refusal::NodeSelector { keys } => f(
            "CONVERTER_NODE_SELECTOR",
            Blocker,
            format!(
                "the operator's converter refuses nodeSelector keys {} on kube-system \
                 calico-node ({src})",
                keys.join(", ")
            ),
            "remove those nodeSelector keys (only [beta.]kubernetes.io/os=linux and the \
             migration label are accepted)",
        ),
        Refusal::UnexpectedEnv { names } => f(
            "CONVERTER_UNEXPECTED_ENV",
            Blocker,
            format!(
                "env vars no handler of operator {op}'s converter consumes: {} (\"unexpected \
                 env vars\"; {REFUSED}; {src})",
                names.join(", ")
            ),
            format!(
                "remove them: {EDIT_ENV}; settings Calico still needs go into the Installation \
                 or FelixConfiguration default after the migration"
            ),
        ),
        Refusal::EnvValue { name, found, want } => {
            let crash = found == "(unset)" && !line.ipv6_only_for_calico_cni;
            let want_text = if name == "DATASTORE_TYPE" || found == "(unset)" {
                format!("{want:?}")
            } else {
                format!("{want:?} (compared lower-cased) or unset")
            };
            f(
                "CONVERTER_ENV_VALUE",
                Blocker,
                if crash {
                    format!(
                        "calico-node env {name} is unset, and with FELIX_INTERFACEPREFIX set \
                         operator {op} requires it to be {want:?}: it does not refuse but \
                         dereferences the unset value and crashes, restarting without end and \
                         writing no status ({src}; the dereference at k8s.go:112)"
                    )
                } else {
                    format!(
                        "calico-node env {name}={found}, but operator {op}'s converter accepts \
                         only {want_text} ({REFUSED}; {src})"
                    )
                },
                format!("set {name}={want}: {EDIT_ENV}"),
            )
        }
        Refusal::EnvSource { container, name } => f(
            "CONVERTER_ENV_SOURCE",
            Blocker,
            format!(
                "{container} env {name} comes from a valueFrom other than a configMapKeyRef; \
                 the converter reads only values and kube-system ConfigMaps (\"only \
                 configMapRef & explicit values supported for env vars at this time\"; \
                 {REFUSED}; {src})"
            ),
            format!("give {name} a literal value or a configMapKeyRef: {EDIT_ENV}"),
        ),
        Refusal::EnvConfigMap { name, config_map } => f(
            "CONVERTER_ENV_CONFIGMAP",
            Blocker,
            format!(
                "calico-node env {name} refers to ConfigMap {config_map}, which kube-system does \
                 not have: the converter reads every configMapKeyRef in kube-system and fails \
                 (\"Error converting existing installation: configmaps {config_map:?} not \
                 found\"; {src})"
            ),
            format!(
                "create ConfigMap kube-system/{config_map} with the key, or give {name} a literal \
                 value: {EDIT_ENV}"
            ),
        ),
        Refusal::NodeName { container, name } => f(
            "CONVERTER_NODENAME",
            Blocker,
            format!(
                "{container} env {name} is not a fieldRef to spec.nodeName, which the converter \
                 requires ({REFUSED}; {src})"
            ),
            format!(
                "remove {name} or set it to valueFrom.fieldRef.fieldPath: spec.nodeName: \
                 {EDIT_ENV}"
            ),
        ),
        Refusal::AddonManager => f(
            "CONVERTER_ADDON_MANAGER",
            Blocker,
            format!(
                "kube-system calico-node carries addonmanager.kubernetes.io/mode; the converter \
                 refuses addon-managed components (\"can't modify components managed by \
                 addon-manager\"; {src})"
            ),
            "stop the addon manager from owning calico-node and remove the label",
        ),
        Refusal::MissingContainer => f(
            "CONVERTER_CONTAINER",
            Blocker,
            format!(
                "kube-system calico-node has no container named calico-node: the converter \
                 refuses (\"couldn't find container 'calico-node'\"; {REFUSED}; {src})"
            ),
            "restore the calico-node container name in the DaemonSet",
        ),
        Refusal::Volume { detail } => f(
            "CONVERTER_VOLUMES",
            Blocker,
            format!(
                "kube-system calico-node's volumes are not what the converter expects: \
                 {detail} ({REFUSED}; {src})"
            ),
            "restore the chart's hostPath volumes lib-modules, var-run-calico, var-lib-calico \
             and xtables-lock, and keep the flexvol-driver-host volume and flexvol-driver init \
             container together or neither",
        ),
        Refusal::MetricsPort { value } => f(
            "CONVERTER_METRICS_PORT",
            Blocker,
            format!(
                "calico-node env FELIX_PROMETHEUSMETRICSPORT={value} is no port in 1-65535 while \
                 FELIX_PROMETHEUSMETRICSENABLED is true ({REFUSED}; {src})"
            ),
            format!("set FELIX_PROMETHEUSMETRICSPORT to a port or remove it: {EDIT_ENV}"),
        ),
        Refusal::InterfacePrefix { found } => f(
            "CONVERTER_INTERFACE_PREFIX",
            Blocker,
            match found {
                Some(p) if p != "cali" => format!(
                    "calico-node env FELIX_INTERFACEPREFIX={p} is none of eni, azv, gke, cali, \
                     which the converter refuses ({REFUSED}; {src})"
                ),
                f => format!(
                    "calico-node env FELIX_INTERFACEPREFIX is {}: the converter takes it for \
                     Calico CNI and finds no CNI config to convert (the chart has no \
                     install-cni container), so it refuses ({REFUSED}; {src})",
                    f.map_or("unset".to_string(), |p| format!("{p:?}"))
                ),
            },
            format!(
                "set FELIX_INTERFACEPREFIX=eni (the AmazonVPC CNI the chart runs with): {EDIT_ENV}"
            ),
        ),
        Refusal::Mtu { detail } => f(
            "CONVERTER_MTU",
            Blocker,
            format!("calico-node's MTU env: {detail} ({REFUSED}; {src})"),
            format!("give the MTU vars one integer value, or remove them: {EDIT_ENV}"),
        ),
        Refusal::IpPool { name, detail } => f(
            "CONVERTER_IPPOOL",
            Blocker,
            format!(
                "IPPool {name}, which the converter copies into the Installation: {detail} \
                 ({REFUSED} or fails; {src})"
            ),
            format!(
                "fix or disable IPPool {name} (`kubectl patch ippools.crd.projectcalico.org \
                 {name} --type merge -p '{{\"spec\":{{\"disabled\":true}}}}'` if nothing \
                 allocates from it), then plan again"
            ),
        ),
        Refusal::Bpf { detail } => f(
            "CONVERTER_BPF",
            Blocker,
            format!(
                "{detail}: operator {op}'s converter fails (\"Error converting existing \
                 installation\"; {src})"
            ),
            "create ConfigMap kube-system/kubernetes-services-endpoint with \
             KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT (the API server's address), \
             then plan again",
        ),
        Refusal::FelixConfigurationMissing => f(
            "CONVERTER_FELIX_CONFIGURATION",
            Blocker,
            format!(
                "FelixConfiguration default does not exist: the converter reads or patches it \
                 and fails (\"Error converting existing installation: \
                 felixconfigurations.crd.projectcalico.org \\\"default\\\" not found\"; {src})"
            ),
            "create FelixConfiguration default (calico-node creates it on its first start: \
             check that calico-node runs), then plan again",
        ),
        Refusal::FelixEnv { name, value, error } => f(
            "CONVERTER_FELIX_ENV",
            Blocker,
            format!(
                "calico-node env {name}={value} is left for FelixConfiguration default, and \
                 operator {op}'s converter cannot patch it: {} (\"Error converting existing \
                 installation\"; {src})",
                if error.is_empty() {
                    "its value does not convert (an error without text)".to_string()
                } else {
                    error
                }
            ),
            format!(
                "remove {name}, or give it a value of its FelixConfiguration field's type: \
                 {EDIT_ENV}; after the migration set the field in FelixConfiguration default"
            ),
        ),
    }
}

/// A predicted refusal on kube-system calico-typha (the converter checks it too).
fn typha_finding(i: &RuleInput, line: converter::ConverterLine, r: TyphaRefusal) -> Finding {
    let src = r.source(line);
    match r {
        TyphaRefusal::Annotations { on, keys } => {
            let helm_only = keys.iter().all(|k| k.starts_with("meta.helm.sh/"));
            let message = format!(
                "kube-system calico-typha carries {on} annotations {} that the operator's \
                 converter does not ignore: it refuses them and the takeover never starts ({src})",
                keys.join(", ")
            );
            if helm_only && i.source.release.is_some() {
                // detach-helm strips Helm's annotations from every object of the release.
                f(
                    "CONVERTER_HELM_ANNOTATIONS",
                    Blocker,
                    message,
                    "the detach-helm step removes them with the Helm labels (after backing up the \
                     release records and the metadata; rollback restores them)",
                )
            } else {
                f(
                    "CONVERTER_TYPHA_ANNOTATIONS",
                    Blocker,
                    message,
                    format!(
                        "remove the annotations {} from the Deployment",
                        keys.join(", ")
                    ),
                )
            }
        }
        TyphaRefusal::Affinity { what } => f(
            "CONVERTER_TYPHA_AFFINITY",
            Blocker,
            format!(
                "kube-system calico-typha has {what}, which the target operator's converter \
                 refuses ({src})"
            ),
            "remove it from the Deployment (a preferred node affinity is carried over)",
        ),
        TyphaRefusal::NodeSelector { keys } => f(
            "CONVERTER_TYPHA_NODE_SELECTOR",
            Blocker,
            format!(
                "the operator's converter refuses nodeSelector keys {} on kube-system \
                 calico-typha ({src})",
                keys.join(", ")
            ),
            "remove those nodeSelector keys (only [beta.]kubernetes.io/os=linux is accepted)",
        ),
        TyphaRefusal::AddonManager => f(
            "CONVERTER_ADDON_MANAGER",
            Blocker,
            format!(
                "kube-system calico-typha carries addonmanager.kubernetes.io/mode; the converter \
                 refuses addon-managed components (\"can't modify components managed by \
                 addon-manager\"; {src})"
            ),
            "stop the addon manager from owning calico-typha and remove the label",
        ),
        TyphaRefusal::MissingContainer => f(
            "CONVERTER_CONTAINER",
            Blocker,
            format!(
                "kube-system calico-typha has no container named calico-typha, where the \
                 converter reads the metrics env: it refuses ({REFUSED}; {src})"
            ),
            "restore the calico-typha container name in the Deployment",
        ),
        TyphaRefusal::Metrics { detail } => f(
            "CONVERTER_METRICS_PORT",
            Blocker,
            format!("kube-system calico-typha's metrics env: {detail} ({REFUSED}; {src})"),
            "set TYPHA_PROMETHEUSMETRICSPORT to a literal port in 1-65535, or remove it, in the \
             calico-typha Deployment, then plan again",
        ),
    }
}

/// `END_OF_MIGRATION_RESTART`: the target operator restarts every calico-node at
/// once at the end of its takeover ([`super::profile::TargetSpec::restarts_every_agent_at_the_end`]).
fn end_of_migration_restart(i: &RuleInput, out: &mut Vec<Finding>) {
    if !i.profile.target.restarts_every_agent_at_the_end() {
        return;
    }
    let target = &i.profile.target.operator_version;
    out.push(f(
        "END_OF_MIGRATION_RESTART",
        Warning,
        format!(
            "operator {target} ends its takeover by restarting every calico-node at once (it \
             removes the migration node labels while calico-system calico-node still selects \
             them; fixed in v1.35.0, tigera/operator PR 3157): the rules already in place keep \
             enforcing policy while the agents start again, but until each node's agent is Ready \
             no new pod there gets its network or policy, and no policy change is programmed"
        ),
        "takeover follows that restart like any rollout, probing every node and checking the \
         held connections through it; keep deployments and policy changes out of the window",
    ));
}

fn agent_health(i: &RuleInput, out: &mut Vec<Finding>) {
    let Some(ds) = i.inv.find("daemonsets", "kube-system", "calico-node") else {
        return;
    };
    let n = |p: &str| ds.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    let (ready, want) = (
        n("/status/numberReady"),
        n("/status/desiredNumberScheduled"),
    );
    let mut unready: Vec<String> = i
        .inv
        .list("calico_node_pods")
        .iter()
        .filter(|p| {
            !p.pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        str_at(c, "/type") == Some("Ready") && str_at(c, "/status") == Some("True")
                    })
                })
        })
        .map(|p| {
            format!(
                "{} on {}",
                name_of(p),
                str_at(p, "/spec/nodeName").unwrap_or("?")
            )
        })
        .collect();
    unready.sort();
    if ready < want || !unready.is_empty() {
        out.push(f(
            "CALICO_NODE_NOT_READY",
            Blocker,
            format!(
                "kube-system calico-node has {ready}/{want} pods ready{}",
                if unready.is_empty() {
                    String::new()
                } else {
                    format!("; not ready: {}", unready.join(", "))
                }
            ),
            "repair the unready calico-node pods first: the takeover needs every node enforcing",
        ));
    }
}

fn helm_uninstall(i: &RuleInput, out: &mut Vec<Finding>) {
    let Ok(rels) = facts::helm_releases(i.inv, &i.profile.source.chart) else {
        return;
    };
    let Some(rel) = rels.first() else { return };
    let minor = i.inv.minor().unwrap_or(0);
    let blockers = crate::helm::uninstall_blockers(rel, minor);
    if !blockers.is_empty() {
        let list: Vec<String> = blockers
            .iter()
            .map(|o| format!("{} {} ({})", o.kind, o.name, o.api_version))
            .collect();
        out.push(f(
            "HELM_REMOVED_APIS",
            Warning,
            format!(
                "the stored release manifest lists APIs this Kubernetes (1.{minor}) no longer serves: \
                 {}; `helm uninstall` of release {} would fail",
                list.join(", "),
                rel.name
            ),
            "none needed: detach-helm removes the release records instead of running `helm \
             uninstall`; never run `helm uninstall` on this release",
        ));
    }
    let rbac: Vec<String> = crate::helm::uninstall_plan(rel)
        .iter()
        .filter(|o| o.kind.starts_with("ClusterRole") || o.kind == "ServiceAccount")
        .map(|o| format!("{} {}", o.kind, o.name))
        .collect();
    if !rbac.is_empty() {
        out.push(f(
            "HELM_OWNS_RBAC",
            Warning,
            format!(
                "`helm uninstall {}` would delete {} which the operator keeps using after the migration",
                rel.name,
                rbac.join(", ")
            ),
            "detach-helm backs up and removes the release records and strips Helm metadata, so no \
             later `helm uninstall` can delete them",
        ));
    }
    let crd_files: Vec<String> = rel
        .chart
        .crd_files()
        .filter(|c| c.text().contains("apiextensions.k8s.io/v1beta1"))
        .map(|c| c.name.clone())
        .collect();
    if !crd_files.is_empty() {
        out.push(f(
            "CHART_CRDS_V1BETA1",
            Warning,
            format!(
                "the chart ships its CRDs as apiextensions.k8s.io/v1beta1 ({}); Helm never upgrades \
                 or deletes crds/, and this API is gone since Kubernetes 1.22",
                crd_files.join(", ")
            ),
            "none needed: the live CRDs are read through apiextensions.k8s.io/v1 and left in place",
        ));
    }
}

fn nodes(i: &RuleInput, out: &mut Vec<Finding>) {
    let s = i.summary;
    if !s.nodes_not_ready.is_empty() {
        out.push(f(
            "NODES_NOT_READY",
            Blocker,
            format!(
                "{} node(s) not Ready: {}",
                s.nodes_not_ready.len(),
                s.nodes_not_ready.join(", ")
            ),
            "repair or drain and delete them (kubectl cordon/drain, then remove from the node group) \
             before the window; the takeover waits for a Ready agent on every node",
        ));
    }
    if s.fargate_nodes.is_empty() {
        return;
    }
    // No release's converter accepts the chart's Fargate exclusion (Convert checks an
    // empty Installation, so core.go's EKS exception never holds), and every release
    // labels every node, Fargate ones too (namespace_migration.go labelUnmigratedNodes:
    // v1.17.4 :409-423, v1.38.6 :489-503). fargate-affinity keeps kube-system calico-node
    // off them by their taint once the exclusion is gone (src/migration/tolerations.rs).
    // What it cannot change is the operator's own calico-system calico-node: before
    // v1.25.0 it tolerates every taint with no Fargate exclusion, so its pods would wait
    // on Fargate nodes for ever and the operator with them (waitUntilNodeCanBeMigrated
    // counts them desired, never Ready).
    if !i.profile.target.keeps_calico_node_off_fargate() {
        out.push(f(
            "FARGATE_NODES_UNSUPPORTED",
            Blocker,
            format!(
                "{} Fargate node(s) ({}) and target operator {}: before v1.25.0 its \
                 calico-system calico-node tolerates every taint with no Fargate exclusion \
                 (tigera/operator v1.17.4 pkg/render/node.go:598-613), and it labels every node \
                 for the migration, Fargate ones too (pkg/controller/migration/\
                 namespace_migration.go:409-423), so calico-system pods would wait on Fargate \
                 nodes for ever and the takeover with them",
                s.fargate_nodes.len(),
                s.fargate_nodes.join(", "),
                i.profile.target.operator_version,
            ),
            "use a profile whose operator is v1.25.0 or later (on Kubernetes 1.25+ the \
             default, aws-calico-0.3.10-v3.30), or move the Fargate workloads off Fargate for \
             the window (delete the Fargate profile's pods until the migration is done; their \
             nodes go with them), then plan again",
        ));
        return;
    }
    out.push(f(
        "FARGATE_NODES",
        Warning,
        format!(
            "{} Fargate node(s) run no Calico agent and are not migrated: {}",
            s.fargate_nodes.len(),
            s.fargate_nodes.join(", ")
        ),
        "none needed: NetworkPolicy is not enforced by Calico on Fargate before or after; \
         fargate-affinity keeps kube-system calico-node off them by their taint, the \
         operator's calico-system calico-node by its own Fargate exclusion",
    ));
}

fn crds(i: &RuleInput, out: &mut Vec<Finding>) {
    if matches!(i.source.generation, Generation::None) {
        return;
    }
    let s = i.summary;
    if !s.crds_missing.is_empty() {
        out.push(f(
            "CALICO_CRDS_MISSING",
            Blocker,
            format!("Calico CRDs missing: {}", s.crds_missing.join(", ")),
            "apply the v1 Calico CRDs of the running version before the migration",
        ));
    }
    for crd in i.inv.list("crds") {
        if str_at(crd, "/spec/group") != Some(CALICO_GROUP) {
            continue;
        }
        let versions = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let v1_served = versions.iter().any(|v| {
            str_at(v, "/name") == Some("v1") && v.get("served") == Some(&Value::Bool(true))
        });
        let non_structural = crd
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    str_at(c, "/type") == Some("NonStructuralSchema")
                        && str_at(c, "/status") == Some("True")
                })
            });
        if !v1_served {
            out.push(f(
                "CALICO_CRD_NOT_V1",
                Blocker,
                format!(
                    "CRD {} does not serve version v1; the operator reads crd.projectcalico.org/v1",
                    name_of(crd)
                ),
                "re-apply the CRD with version v1 served and stored (Calico's v1 CRD manifest)",
            ));
        } else if non_structural {
            out.push(f(
                "CALICO_CRD_LEGACY_SCHEMA",
                Warning,
                format!(
                    "CRD {} was created through apiextensions.k8s.io/v1beta1 and has a non-structural \
                     schema (NonStructuralSchema=True)",
                    name_of(crd)
                ),
                "the install-operator step replaces the Calico CRDs with the operator's v1 copies \
                 (same group and version, so no object is touched)",
            ));
        }
    }
}

fn psp_and_pdb(i: &RuleInput, out: &mut Vec<Finding>) {
    let psps: Vec<String> = i
        .inv
        .list("pod_security_policies")
        .iter()
        .map(|p| name_of(p).to_string())
        .filter(|n| n.contains("calico"))
        .collect();
    if !psps.is_empty() {
        out.push(f(
            "PSP_PRESENT",
            Warning,
            format!("PodSecurityPolicies for Calico exist: {}", psps.join(", ")),
            "the operator does not use them; calico-migrate leaves them in place: delete them after \
             the migration (Kubernetes 1.25 and later no longer serve PodSecurityPolicies)",
        ));
    }
    if i.inv.find("pdbs", "kube-system", "calico-typha").is_some()
        && matches!(i.source.generation, Generation::ManifestChart)
    {
        out.push(f(
            "TYPHA_PDB",
            Warning,
            "PodDisruptionBudget kube-system/calico-typha is left behind by the operator's migration"
                .into(),
            "cleanup-leftovers deletes it after verify-completion (snapshot kept for rollback)",
        ));
    }
}

fn operator_manifest(i: &RuleInput, out: &mut Vec<Finding>) {
    if i.profile.operator.install == OperatorInstall::External {
        return;
    }
    if i.manifest_sha256.is_none() {
        out.push(f(
            "OPERATOR_MANIFEST_UNPINNED",
            Blocker,
            format!(
                "profile {} installs the operator from a manifest, but no manifest is pinned (empty \
                 operator.sha256 and no --operator-manifest)",
                i.profile.name
            ),
            format!(
                "download {} once, review it, and pass --operator-manifest FILE (its sha256 is stored \
                 in the plan), or set operator.install: external",
                i.profile.operator.manifest_url
            ),
        ));
    }
}

/// The Kubernetes minor that stopped serving an API version (upstream's "Deprecated
/// API Migration Guide", https://kubernetes.io/docs/reference/using-api/deprecation-guide/),
/// for the versions an old operator manifest or chart may hold.
fn removed_in(api_version: &str) -> Option<&'static str> {
    Some(match api_version {
        "apps/v1beta1" | "apps/v1beta2" => "1.16",
        "apiextensions.k8s.io/v1beta1"
        | "rbac.authorization.k8s.io/v1beta1"
        | "admissionregistration.k8s.io/v1beta1"
        | "networking.k8s.io/v1beta1"
        | "extensions/v1beta1" => "1.22",
        "policy/v1beta1" | "batch/v1beta1" | "discovery.k8s.io/v1beta1" => "1.25",
        _ => return None,
    })
}

/// `OPERATOR_MANIFEST_VERSION_MISMATCH`: the manifest installs another operator release
/// than the one the profile is written for. What plan predicts (the converter's
/// refusals, how the operator moves nodes and ends the takeover, the Calico version it
/// brings) holds for the profile's release only.
pub fn manifest_operator_mismatch(
    file: &str,
    found: &str,
    place: Option<super::manifest::Place>,
    profile: &Profile,
) -> Finding {
    let at = place.map(|p| format!("{p}, ")).unwrap_or_default();
    let other = match Profile::builtin_for_operator(found) {
        Some(name) => format!(
            "; or, for operator {found}, the built-in profile {name} (plan without --profile \
             picks it when it runs on this cluster's Kubernetes)"
        ),
        None => String::new(),
    };
    f(
        "OPERATOR_MANIFEST_VERSION_MISMATCH",
        Blocker,
        format!(
            "{file} installs operator {found} ({at}Deployment tigera-operator/tigera-operator), \
             but profile {} is written for operator {}: its steps, checks and the converter's \
             predictions hold for that release only",
            profile.name, profile.target.operator_version
        ),
        format!(
            "pass the manifest of operator {} ({}){other}",
            profile.target.operator_version, profile.operator.manifest_url
        ),
    )
}

/// `OPERATOR_MANIFEST_API_NOT_SERVED`: objects of the operator manifest whose API the
/// cluster does not serve (manifest::unserved). `apply` would stop at
/// install-operator; both plan and that step say it in these words.
pub fn manifest_api_not_served(
    file: &str,
    server_version: &str,
    unserved: &[&ManifestObject],
) -> Finding {
    let named: Vec<String> = unserved
        .iter()
        .map(|o| {
            let place = o.place.map(|p| format!("{p}, ")).unwrap_or_default();
            let removed = removed_in(&o.r.api_version)
                .map(|minor| format!(", no longer served since Kubernetes {minor}"))
                .unwrap_or_default();
            format!("{place}{} ({}{removed})", o.r, o.r.api_version)
        })
        .collect();
    let minor = server_version
        .trim_start_matches('v')
        .split(['.', '-', '+'])
        .take(2)
        .collect::<Vec<_>>()
        .join(".");
    let psp = unserved
        .iter()
        .any(|o| o.r.api_version == "policy/v1beta1" && o.r.kind == "PodSecurityPolicy");
    f(
        "OPERATOR_MANIFEST_API_NOT_SERVED",
        Blocker,
        format!(
            "{file} holds {} object(s) of APIs this cluster (Kubernetes {server_version}) does \
             not serve, so install-operator cannot apply it: {}",
            named.len(),
            named.join("; ")
        ),
        format!(
            "use the manifest of an operator release that supports Kubernetes {minor}, with a \
             profile for that line (for example Calico v3.30.3's manifests/operator-crds.yaml \
             followed by manifests/tigera-operator.yaml, operator v1.38.6, in one file){}",
            if psp {
                // tigera/operator v1.17.4 pkg/render/node.go:174-176, typha.go:125-127;
                // PSPs became conditional in v1.28.0 (utils/discovery.go).
                "; deleting the PodSecurityPolicy from the file does not help: the operators \
                 of Calico v3.19 and v3.20 (v1.17, v1.20) create policy/v1beta1 \
                 PodSecurityPolicies themselves and cannot run on Kubernetes 1.25 or later"
            } else {
                ""
            }
        ),
    )
}

/// `CALICO_MANIFEST_UNPINNED`: the alignment applies the target Calico's manifest
/// install (CRDs, RBAC, images); without the reviewed file there is nothing to apply.
fn calico_manifest(i: &RuleInput, out: &mut Vec<Finding>) {
    let Some(pin) = &i.profile.calico_manifest else {
        return;
    };
    let aligning = i.profile.target.align_versions
        && i.source
            .calico_version
            .as_deref()
            .and_then(parse_version)
            .map(|v| (v.0, v.1))
            != parse_version(&i.profile.target.calico_version).map(|v| (v.0, v.1));
    if aligning && i.calico_manifest_sha256.is_none() {
        out.push(f(
            "CALICO_MANIFEST_UNPINNED",
            Blocker,
            format!(
                "profile {} brings the kube-system install to Calico {} first, from that \
                 version's own manifest, but none is pinned (empty calico_manifest.sha256 and no \
                 --calico-manifest)",
                i.profile.name, i.profile.target.calico_version
            ),
            format!(
                "download {} once, review it, and pass --calico-manifest FILE (its sha256 is \
                 stored in the plan)",
                pin.manifest_url
            ),
        ));
    }
}

fn access(i: &RuleInput, out: &mut Vec<Finding>) {
    match i.access {
        AccessReport::Checked { missing } if !missing.is_empty() => {
            let list: Vec<String> = missing.iter().map(ToString::to_string).collect();
            out.push(f(
                "RBAC_MISSING",
                Blocker,
                format!(
                    "the current identity lacks {} permission(s) the migration needs: {}",
                    list.len(),
                    list.join("; ")
                ),
                "grant them to this identity (kubectl auth can-i shows each), or use a context that has them",
            ));
        }
        AccessReport::Checked { .. } => {}
        AccessReport::Unverifiable { reason } => out.push(f(
            "RBAC_UNVERIFIED",
            Warning,
            format!("could not verify permissions: {reason}"),
            "check with `kubectl auth can-i --list` that the identity may change kube-system \
             Calico objects, CRDs, nodes and operator.tigera.io objects",
        )),
    }
}
