//! The migration converter of the Tigera operator (tigera/operator
//! `pkg/controller/migration/convert/`), as the operator release of the Deployment's
//! image tag runs it on an unmanaged kube-system Calico: `NeedsConversion` reads the
//! components (components.go), then `Convert` runs the handlers in handler.go's fixed
//! order, patches the leftover `FELIX_*` vars into FelixConfiguration `default`
//! (felix_vars.go) and refuses any env var no handler consumed (convert.go). The first
//! error wins. Errors keep upstream's words: `ErrIncompatibleCluster` formats
//! "<err>. To fix it, <fix> on <component>", or "<err> on <component>" without a fix
//! (errors.go, v1.17.4 :16-21, v1.38.6 :30-35).
//!
//! Lines: v1.17.x and v1.20.x run the same converter (v1.20.0 changed one type name in
//! core.go:338); line numbers cited "v1.17.4" hold for both. v1.38.x is cited at
//! v1.38.6. Where a behaviour changed in between, the first release that has the change
//! is the threshold (named with its commit), so a version between the lines reads as
//! the nearer line in that respect. What the sandbox does not model is listed in
//! docs/sandbox-behaviour.md ("Converter checks").

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::felix_env::{self, Version, go_quote};

pub const DEGRADED_PREFIX: &str = "Existing Calico installation can not be managed by Tigera Operator as it is configured in a way that Operator does not currently support. Please update your existing Calico install config";

const COMPONENT: &str = "daemonset/calico-node";
const TYPHA: &str = "deployment/calico-typha";
const CNI_CONFIG: &str = "cni-config";
const IPPOOLS: &str = "ippools";
const NODE: &str = "calico-node";
const INSTALL_CNI: &str = "install-cni";
const MIGRATION_LABEL: &str = super::super::nodes::MIGRATION_LABEL;

/// How the operator reports a converter error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// `ErrIncompatibleCluster` from `Convert`: Degraded with [`DEGRADED_PREFIX`], requeued
    /// every 15 s (v1.17.4 core_controller.go:680-688, v1.38.6 :804-811).
    Incompatible,
    /// Any other error of `Convert`: Degraded "Error converting existing installation"
    /// (v1.17.4 core_controller.go:689, v1.38.6 :813).
    Convert,
    /// An error of `NeedsConversion` (getComponents): Degraded "Error checking for existing
    /// installation" (v1.17.4 core_controller.go:675-678, v1.38.6 :799-802).
    Check,
    /// A nil pointer dereference: the operator process panics and restarts, writing no
    /// status (v1.17.4 k8s.go:110-112 formats `*value` of an unset env var).
    Crash,
}

/// A converter error, in the operator's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OperatorRefusal {
    pub kind: RefusalKind,
    pub message: String,
}

impl OperatorRefusal {
    fn new(kind: RefusalKind, message: impl Into<String>) -> Self {
        OperatorRefusal {
            kind,
            message: message.into(),
        }
    }

    /// The TigeraStatus Degraded (reason, message) the operator sets, None for a crash.
    /// The sandbox words every line as v1.38.6 does, reason first then
    /// `<what>: <error>` (v1.38.6 pkg/controller/status/status.go:355-366); v1.17.x and
    /// v1.20.x put `<what>` in the reason and the error alone in the message.
    pub fn degraded(&self) -> Option<(&'static str, String)> {
        let (reason, what) = match self.kind {
            RefusalKind::Incompatible => ("MigrationError", DEGRADED_PREFIX),
            RefusalKind::Convert => ("MigrationError", "Error converting existing installation"),
            RefusalKind::Check => (
                "ResourceValidationError",
                "Error checking for existing installation",
            ),
            RefusalKind::Crash => return None,
        };
        Some((reason, format!("{what}: {}", self.message)))
    }
}

/// `ErrIncompatibleCluster{err, fix, component}.Error()`.
fn incompatible(err: impl AsRef<str>, fix: &str, component: &str) -> OperatorRefusal {
    let err = err.as_ref();
    let message = if fix.is_empty() {
        format!("{err} on {component}")
    } else {
        format!("{err}. To fix it, {fix} on {component}")
    };
    OperatorRefusal::new(RefusalKind::Incompatible, message)
}

fn plain(message: impl Into<String>) -> OperatorRefusal {
    OperatorRefusal::new(RefusalKind::Convert, message)
}

/// What the converter reads from the cluster.
#[derive(Debug, Clone, Copy)]
pub struct Existing<'a> {
    /// DaemonSet kube-system/calico-node.
    pub node: &'a Value,
    /// Deployment kube-system/calico-typha, when there is one.
    pub typha: Option<&'a Value>,
    /// Whether DaemonSet kube-system/canal-node exists.
    pub canal: bool,
    /// The ConfigMaps of kube-system (where every configMapKeyRef is read).
    pub config_maps: &'a [Value],
    /// Every crd.projectcalico.org IPPool.
    pub ip_pools: &'a [Value],
    /// FelixConfiguration `default`, when it exists.
    pub felix_configuration: Option<&'a Value>,
}

/// `(major, minor, patch)` of an operator image tag such as `v1.38.6`; a tag that does
/// not parse is the oldest line.
pub fn version_of(tag: &str) -> Version {
    let mut it = tag
        .trim_start_matches('v')
        .split(['-', '+'])
        .next()
        .unwrap_or("")
        .split('.')
        .map(|p| p.parse::<u32>().ok());
    match (
        it.next().flatten(),
        it.next().flatten(),
        it.next().flatten(),
    ) {
        (Some(a), Some(b), c) => (a, b, c.unwrap_or(0)),
        _ => (0, 0, 0),
    }
}

/// Go's `%v` of a map[string]string: `map[k1:v1 k2:v2]`, keys sorted.
fn go_map(m: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = m.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    format!("map[{}]", inner.join(" "))
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn set(v: Option<&Value>) -> bool {
    v.is_some_and(|v| !v.is_null())
}

fn str_of<'v>(v: &'v Value, ptr: &str) -> Option<&'v str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn items<'v>(v: &'v Value, ptr: &str) -> &'v [Value] {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// `getContainer` (utils.go): the containers, then the init containers, by name.
fn container<'v>(pod: &'v Value, name: &str) -> Option<&'v Value> {
    items(pod, "/containers")
        .iter()
        .chain(items(pod, "/initContainers"))
        .find(|c| c["name"] == name)
}

/// The first env entry named `key` of a container, as Go's loop finds it.
fn env_entry<'v>(c: &'v Value, key: &str) -> Option<&'v Value> {
    items(c, "/env").iter().find(|e| e["name"] == key)
}

/// Reads env vars as k8s.go does, and keeps the set `CheckedDaemonSet` marks.
struct Reader<'a> {
    ex: &'a Existing<'a>,
    /// `(container, var)` pairs a handler read or ignored (k8s.go `checkedVars`).
    checked: BTreeSet<(String, String)>,
}

impl<'a> Reader<'a> {
    fn pod(&self) -> &'a Value {
        self.ex
            .node
            .pointer("/spec/template/spec")
            .unwrap_or(&Value::Null)
    }

    /// `ignoreEnv` (v1.17.4 k8s.go:143-150).
    fn ignore(&mut self, container: &str, key: &str) {
        self.checked.insert((container.into(), key.into()));
    }

    /// The package-level `getEnv` (v1.17.4 k8s.go:153-189, v1.38.6 :171-207): the value,
    /// a configMapKeyRef read from kube-system (a missing key reads as ""), or a refusal
    /// for any other valueFrom.
    fn env_of(
        &self,
        pod: &Value,
        component: &str,
        name: &str,
        key: &str,
    ) -> Result<Option<String>, OperatorRefusal> {
        let Some(c) = container(pod, name) else {
            return Err(incompatible(
                format!("couldn't find container '{name}' in {component}"),
                &format!("restore the {name} container if you've renamed or removed it"),
                component,
            ));
        };
        let Some(e) = env_entry(c, key) else {
            return Ok(None);
        };
        let Some(from) = e.get("valueFrom").filter(|v| !v.is_null()) else {
            return Ok(Some(str_of(e, "/value").unwrap_or_default().to_string()));
        };
        if let Some(r) = from.get("configMapKeyRef").filter(|v| !v.is_null()) {
            let cm_name = str_of(r, "/name").unwrap_or_default();
            let Some(cm) = self
                .ex
                .config_maps
                .iter()
                .find(|cm| str_of(cm, "/metadata/name") == Some(cm_name))
            else {
                // The client's NotFound, a plain error.
                return Err(plain(format!("configmaps {} not found", go_quote(cm_name))));
            };
            let k = str_of(r, "/key").unwrap_or_default();
            return Ok(Some(
                cm.pointer("/data")
                    .and_then(|d| d.get(k))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            ));
        }
        Err(incompatible(
            format!(
                "failed to read {name}/{key}: only configMapRef & explicit values supported for env vars at this time"
            ),
            &format!("adjust {key} to be an explicit value or configMapRef"),
            "",
        ))
    }

    /// `CheckedDaemonSet.getEnv`: read from calico-node's DaemonSet, then marked.
    fn get(&mut self, name: &str, key: &str) -> Result<Option<String>, OperatorRefusal> {
        let v = self.env_of(self.pod(), COMPONENT, name, key)?;
        self.ignore(name, key);
        Ok(v)
    }

    /// `assertEnv` (v1.17.4 k8s.go:75-90, v1.38.6 :89-104): if set, lower-cased, `want`.
    fn assert(&mut self, name: &str, key: &str, want: &str) -> Result<(), OperatorRefusal> {
        if let Some(v) = self.get(name, key)?
            && v.to_lowercase() != want
        {
            return Err(incompatible(
                format!("{key}={v} is not supported"),
                &format!("remove the {key} env var or set it to '{want}'"),
                COMPONENT,
            ));
        }
        Ok(())
    }

    /// `assertEnvIsSet` (v1.17.4 k8s.go:104-119; v1.38.6 :118-137 from v1.27.0, commit
    /// 2ec95c7c): set and, lower-cased, `want`. Before v1.27.0 an unset var panics: the
    /// message formats `*value` of a nil pointer (k8s.go:112).
    fn assert_set(
        &mut self,
        name: &str,
        key: &str,
        want: &str,
        version: Version,
    ) -> Result<(), OperatorRefusal> {
        let v = self.get(name, key)?;
        if v.as_ref().is_some_and(|v| v.to_lowercase() == want) {
            return Ok(());
        }
        if version >= (1, 27, 0) {
            return Err(incompatible(
                format!(
                    "{key}={} is not supported",
                    v.as_deref().unwrap_or("<undefined>")
                ),
                &format!("set the {key} env var to '{want}'"),
                COMPONENT,
            ));
        }
        match v {
            Some(v) => Err(incompatible(
                format!("{key}={v} is not supported"),
                &format!("remove the {key} env var or set it to '{want}'"),
                COMPONENT,
            )),
            None => Err(OperatorRefusal::new(
                RefusalKind::Crash,
                format!(
                    "panic: runtime error: invalid memory address or nil pointer dereference ({key} unset, convert/k8s.go:112)"
                ),
            )),
        }
    }

    /// `getEnvVar` (v1.17.4 k8s.go:122-139): the raw entry, marked, not resolved.
    fn entry(&mut self, name: &str, key: &str) -> Result<Option<&'a Value>, OperatorRefusal> {
        let Some(c) = container(self.pod(), name) else {
            return Err(incompatible(
                format!("couldn't find {name} container in daemonset"),
                &format!("restore the {name} container if you've renamed or removed it"),
                COMPONENT,
            ));
        };
        self.ignore(name, key);
        Ok(env_entry(c, key))
    }

    /// `uncheckedVars` (v1.17.4 k8s.go:30-50): `container/VAR` of every env entry not
    /// marked, containers first, then init containers.
    fn unchecked(&self) -> Vec<String> {
        let pod = self.pod();
        items(pod, "/containers")
            .iter()
            .chain(items(pod, "/initContainers"))
            .flat_map(|c| {
                let cname = c["name"].as_str().unwrap_or_default();
                items(c, "/env").iter().filter_map(move |e| {
                    let v = e["name"].as_str().unwrap_or_default();
                    (!self.checked.contains(&(cname.to_string(), v.to_string())))
                        .then(|| format!("{cname}/{v}"))
                })
            })
            .collect()
    }
}

/// `removeExpectedAnnotations` (core.go): the annotations the converter drops before
/// it refuses what is left. v1.17.4 core.go:258-275: four keys by name, and keys of
/// `ignore_with_value` when the value matches. From v1.22.0 (commit ae31dec1; v1.38.6
/// core.go:34 and 298-325) kubectl's last-applied key gives way to every key matching
/// `^kubectl\.kubernetes\.io`.
fn unexpected_annotations(
    v: Option<&Value>,
    ignore_with_value: &[(&str, &str)],
    version: Version,
) -> BTreeMap<String, String> {
    let mut m = string_map(v);
    let kubectl_prefix = version >= (1, 22, 0);
    m.retain(|k, val| {
        let by_name = k == "deprecated.daemonset.template.generation"
            || k == "deployment.kubernetes.io/revision"
            || k == "scheduler.alpha.kubernetes.io/critical-pod"
            || (!kubectl_prefix && k == "kubectl.kubernetes.io/last-applied-configuration");
        let with_value = ignore_with_value
            .iter()
            .any(|(ik, iv)| k == ik && val == iv);
        let kubectl = kubectl_prefix && k.starts_with("kubectl.kubernetes.io");
        !(by_name || with_value || kubectl)
    });
    m
}

/// `removeOSNodeSelectors`: `[beta.]kubernetes.io/os` dropped when it says `linux`.
fn non_os_selectors(v: Option<&Value>) -> BTreeMap<String, String> {
    let mut m = string_map(v);
    m.retain(|k, v| !((k == "kubernetes.io/os" || k == "beta.kubernetes.io/os") && v == "linux"));
    m
}

fn annotation_refusal(a: &BTreeMap<String, String>, component: &str) -> OperatorRefusal {
    // errors.go `ErrIncompatibleAnnotation` (v1.17.4 :39-45, v1.38.6 :53-59).
    incompatible(
        format!("unexpected annotation '{}'", go_map(a)),
        "remove the annotation from the component",
        component,
    )
}

/// handleAddonManager (v1.17.4 addon_manager.go:5-32, v1.38.6 :19-46): the label on the
/// calico-node DaemonSet, then on typha (kube-controllers: the chart has none).
fn handle_addon_manager(ex: &Existing) -> Result<(), OperatorRefusal> {
    let labelled = |o: &Value| {
        o.pointer("/metadata/labels")
            .and_then(Value::as_object)
            .is_some_and(|m| m.contains_key("addonmanager.kubernetes.io/mode"))
    };
    for (o, component) in [(Some(ex.node), COMPONENT), (ex.typha, TYPHA)] {
        if o.is_some_and(labelled) {
            return Err(incompatible(
                "can't modify components managed by addon-manager",
                "",
                component,
            ));
        }
    }
    Ok(())
}

/// handleNetwork (v1.17.4 network.go:22-29, v1.38.6 :38-45).
fn handle_network(r: &mut Reader) -> Result<(), OperatorRefusal> {
    r.assert(NODE, "FELIX_DEFAULTENDPOINTTOHOSTACTION", "accept")
}

/// handleIPv6, v1.17.x and v1.20.x only (v1.17.4 network.go:151-163); v1.27.0 (commit
/// 2ec95c7c) moved IPv6 into handleCalicoCNI, which an AmazonVPC install never reaches.
fn handle_ipv6(r: &mut Reader) -> Result<(), OperatorRefusal> {
    r.assert(NODE, "FELIX_IPV6SUPPORT", "false")?;
    r.assert(NODE, "IP6", "none")?;
    r.ignore(NODE, "IP6_AUTODETECTION_METHOD");
    Ok(())
}

/// `checkNodeHostPathVolume` (v1.17.4 core.go:170-180, v1.38.6 :212-222).
fn host_path_volume(pod: &Value, name: &str, path: &str) -> Result<(), OperatorRefusal> {
    let v = items(pod, "/volumes").iter().find(|v| v["name"] == name);
    if v.and_then(|v| str_of(v, "/hostPath/path")) != Some(path) {
        return Err(incompatible(
            format!("missing expected volume '{name}' with hostPath '{path}'"),
            &format!("add the expected volume to {COMPONENT}"),
            COMPONENT,
        ));
    }
    Ok(())
}

/// A fieldRef to spec.nodeName, or unset (v1.17.4 core.go:126 and 139).
fn node_name_ref(e: Option<&Value>) -> bool {
    e.is_none_or(|e| str_of(e, "/valueFrom/fieldRef/fieldPath") == Some("spec.nodeName"))
}

/// handleCore (v1.17.4 core.go:13-167, v1.38.6 :44-209). Resources never refuse here
/// (the Installation being built has none to differ from); kube-controllers' env is
/// checked only when kube-system has calico-kube-controllers, which the chart does not
/// install.
fn handle_core(r: &mut Reader, version: Version) -> Result<(), OperatorRefusal> {
    if let Some(t) = r.get(NODE, "DATASTORE_TYPE")?
        && t != "kubernetes"
    {
        return Err(incompatible(
            "only DATASTORE_TYPE=kubernetes is supported",
            "",
            COMPONENT,
        ));
    }
    let pod = r.pod();
    // v1.17.4 core.go:66-97, v1.38.6 :106-137: flexvol volume and init container together.
    match items(pod, "/volumes")
        .iter()
        .find(|v| v["name"] == "flexvol-driver-host")
    {
        Some(v) if !set(v.get("hostPath")) => {
            return Err(incompatible(
                "volume 'flexvol-driver-host' must be a HostPath",
                "remove the 'flexvol-driver-host' volume or convert it to type hostPath",
                COMPONENT,
            ));
        }
        Some(_) if container(pod, "flexvol-driver").is_none() => {
            return Err(incompatible(
                "detected 'flexvol-driver-host' volume but no 'flexvol-driver' init container",
                "remove the 'flexvol-driver-host' volume or restore the 'flexvol-driver' init container",
                COMPONENT,
            ));
        }
        None if container(pod, "flexvol-driver").is_some() => {
            return Err(incompatible(
                "detected 'flexvol-driver' init container but no 'flexvol-driver-host' volume",
                "restore the 'flexvol-driver-host' volume or remove the 'flexvol-driver' init container",
                COMPONENT,
            ));
        }
        _ => {}
    }
    // v1.17.4 core.go:100-111, v1.38.6 :140-151 (cni-bin-dir and cni-net-dir only with a
    // Calico CNI config, which the sandbox never parses).
    for (name, path) in [
        ("lib-modules", "/lib/modules"),
        ("var-run-calico", "/var/run/calico"),
        ("var-lib-calico", "/var/lib/calico"),
        ("xtables-lock", "/run/xtables.lock"),
    ] {
        host_path_volume(pod, name, path)?;
    }
    // v1.17.4 core.go:121-132, v1.38.6 :161-172.
    if !node_name_ref(r.entry(NODE, "NODENAME")?) {
        return Err(incompatible(
            "NODENAME on 'calico-node' container must be unset or be a FieldRef to 'spec.nodeName'",
            "remove the NODENAME env var or convert it to a fieldRef with value 'spec.nodeName'",
            COMPONENT,
        ));
    }
    // v1.17.4 core.go:134-150, v1.38.6 :174-190.
    if container(pod, INSTALL_CNI).is_some() {
        if !node_name_ref(r.entry(INSTALL_CNI, "KUBERNETES_NODE_NAME")?) {
            return Err(incompatible(
                "KUBERNETES_NODE_NAME on 'install-cni' container must be unset or be a FieldRef to 'spec.nodeName'",
                "remove the KUBERNETES_NODE_NAME env var or convert it to a fieldRef with value 'spec.nodeName'",
                COMPONENT,
            ));
        }
        r.assert(INSTALL_CNI, "CNI_CONF_NAME", "10-calico.conflist")?;
    }
    // v1.17.4 core.go:152-164, v1.38.6 :192-206 (two IPv6 pool vars added at v1.27.0,
    // which handleIPPools ignores on every line anyway).
    for key in [
        "WAIT_FOR_DATASTORE",
        "CLUSTER_TYPE",
        "CALICO_DISABLE_FILE_LOGGING",
        "CALICO_IPV4POOL_IPIP",
        "CALICO_IPV4POOL_VXLAN",
        "FELIX_LOGSEVERITYSCREEN",
        "FELIX_HEALTHENABLED",
        "FELIX_USAGEREPORTINGENABLED",
        "FELIX_TYPHAK8SSERVICENAME",
        "FELIX_LOGSEVERITYSYS",
    ] {
        r.ignore(NODE, key);
    }
    if version >= (1, 27, 0) {
        r.ignore(NODE, "CALICO_IPV6POOL_CIDR");
        r.ignore(NODE, "CALICO_IPV6POOL_VXLAN");
    }
    r.ignore("upgrade-ipam", "KUBERNETES_NODE_NAME");
    r.ignore("upgrade-ipam", "CALICO_NETWORKING_BACKEND");
    r.ignore(INSTALL_CNI, "SLEEP");
    Ok(())
}

/// handleAnnotations (v1.17.4 core.go:219-254, v1.38.6 :261-296): calico-node, its pod
/// template, then typha and its pod template.
fn handle_annotations(ex: &Existing, version: Version) -> Result<(), OperatorRefusal> {
    let a = unexpected_annotations(ex.node.pointer("/metadata/annotations"), &[], version);
    if !a.is_empty() {
        return Err(annotation_refusal(&a, COMPONENT));
    }
    // "some orchestrators explicitly denote it anyways" (v1.17.4 core.go:224-230).
    let a = unexpected_annotations(
        ex.node.pointer("/spec/template/metadata/annotations"),
        &[("cluster-autoscaler.kubernetes.io/daemonset-pod", "true")],
        version,
    );
    if !a.is_empty() {
        return Err(annotation_refusal(
            &a,
            &format!("{COMPONENT} podTemplateSpec"),
        ));
    }
    if let Some(t) = ex.typha {
        let a = unexpected_annotations(t.pointer("/metadata/annotations"), &[], version);
        if !a.is_empty() {
            return Err(annotation_refusal(&a, TYPHA));
        }
        let a = unexpected_annotations(
            t.pointer("/spec/template/metadata/annotations"),
            &[("cluster-autoscaler.kubernetes.io/safe-to-evict", "true")],
            version,
        );
        if !a.is_empty() {
            return Err(annotation_refusal(&a, &format!("{TYPHA} podTemplateSpec")));
        }
    }
    Ok(())
}

/// handleNodeSelectors (v1.17.4 core.go:281-372, v1.38.6 :331-434).
///
/// Any calico-node affinity is refused on every line. The exceptions in the source
/// (AKS's virtual-kubelet exclusion, v1.17.4 core.go:284-296; from v1.25.0, commit
/// c80107f7, EKS's `eks.amazonaws.com/compute-type NotIn [fargate]`, v1.38.6
/// core.go:346-358) hold only when the Installation passed in names that provider, and
/// `Convert` passes the empty Installation it builds (v1.17.4 convert.go:43-48, v1.38.6
/// :58-63): no handler sets `KubernetesProvider`, so neither exception is ever taken.
fn handle_node_selectors(ex: &Existing, version: Version) -> Result<(), OperatorRefusal> {
    let pod = ex
        .node
        .pointer("/spec/template/spec")
        .unwrap_or(&Value::Null);
    if set(pod.get("affinity")) {
        return Err(incompatible(
            "node affinity not supported for calico-node daemonset",
            "remove the affinity",
            COMPONENT,
        ));
    }
    let mut sel = non_os_selectors(pod.get("nodeSelector"));
    sel.remove(MIGRATION_LABEL);
    if !sel.is_empty() {
        return Err(incompatible(
            format!(
                "unsupported nodeSelector for calico-node daemonset: {}",
                go_map(&sel)
            ),
            "remove the nodeSelector",
            COMPONENT,
        ));
    }
    let Some(t) = ex.typha else {
        return Ok(());
    };
    let aff = t.pointer("/spec/template/spec/affinity");
    // v1.17.4 core.go:322-328; from v1.31.0 (commit 0ec197d1, v1.38.6 :380-389) carried
    // into the Installation.
    if version < (1, 31, 0)
        && (set(aff.and_then(|a| a.get("podAffinity")))
            || set(aff.and_then(|a| a.get("podAntiAffinity"))))
    {
        return Err(incompatible(
            "pod affinity and antiAffinity not supported for typha deployment",
            "remove the affinity",
            TYPHA,
        ));
    }
    if set(
        aff.and_then(|a| a.pointer("/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution"))
    ) {
        // The error ends with a period before ". To fix it" (v1.17.4 core.go:332).
        return Err(incompatible(
            "nodeAffinity 'RequiredDuringSchedulingIgnoredDuringExecution' not supported on Typha.",
            "remove the affinity",
            TYPHA,
        ));
    }
    let sel = non_os_selectors(t.pointer("/spec/template/spec/nodeSelector"));
    if !sel.is_empty() {
        return Err(incompatible(
            format!(
                "invalid nodeSelector for typha deployment: {}",
                go_map(&sel)
            ),
            "remove the nodeSelector",
            TYPHA,
        ));
    }
    Ok(())
}

/// A metrics port as core.go and typha.go parse it: `ParseInt(s, 10, 32)` in 1..=65535.
fn valid_port(p: &str) -> bool {
    felix_env::parse_int("ParseInt", p, 32).is_ok_and(|p| (1..=65535).contains(&p))
}

/// handleFelixNodeMetrics (v1.17.4 core.go:389-419, v1.38.6 :451-481).
fn handle_felix_node_metrics(r: &mut Reader) -> Result<(), OperatorRefusal> {
    let enabled = r.get(NODE, "FELIX_PROMETHEUSMETRICSENABLED")?;
    if enabled.is_some_and(|e| e.to_lowercase() == "true") {
        if let Some(p) = r.get(NODE, "FELIX_PROMETHEUSMETRICSPORT")?
            && !valid_port(&p)
        {
            return Err(incompatible(
                format!("invalid port defined in FELIX_PROMETHEUSMETRICSPORT={p}"),
                "adjust it to be within the range of 1-65535 or remove the env var",
                COMPONENT,
            ));
        }
    } else {
        r.ignore(NODE, "FELIX_PROMETHEUSMETRICSPORT");
    }
    Ok(())
}

/// handleTyphaMetrics (v1.17.4 typha.go:22-52, v1.38.6 :36-66): typha's env is read
/// with the package-level getEnv, so it is never "unexpected".
fn handle_typha_metrics(r: &Reader) -> Result<(), OperatorRefusal> {
    let Some(t) = r.ex.typha else {
        return Ok(());
    };
    let pod = t.pointer("/spec/template/spec").unwrap_or(&Value::Null);
    let enabled = r.env_of(pod, TYPHA, "calico-typha", "TYPHA_PROMETHEUSMETRICSENABLED")?;
    if enabled.is_some_and(|e| e.to_lowercase() == "true")
        && let Some(p) = r.env_of(pod, TYPHA, "calico-typha", "TYPHA_PROMETHEUSMETRICSPORT")?
        && !valid_port(&p)
    {
        return Err(incompatible(
            format!("invalid port defined in TYPHA_PROMETHEUSMETRICSPORT={p}"),
            "adjust it to be within the range of 1-65535 or remove the env var",
            TYPHA,
        ));
    }
    Ok(())
}

/// The CNI plugin `getCNIPlugin` reads from FELIX_INTERFACEPREFIX (v1.17.4
/// network.go:434-458, v1.38.6 :591-615).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plugin {
    Calico,
    AmazonVpc,
    AzureVnet,
    Gke,
}

fn cni_plugin(r: &mut Reader) -> Result<Plugin, OperatorRefusal> {
    match r.get(NODE, "FELIX_INTERFACEPREFIX")?.as_deref() {
        None | Some("cali") => Ok(Plugin::Calico),
        Some("eni") => Ok(Plugin::AmazonVpc),
        Some("azv") => Ok(Plugin::AzureVnet),
        Some("gke") => Ok(Plugin::Gke),
        Some(p) => Err(incompatible(
            format!(
                "unexpected FELIX_INTERFACEPREFIX value: '{p}'. Only 'eni, azv, gke, cali' are supported."
            ),
            "",
            COMPONENT,
        )),
    }
}

/// handleCalicoCNI (v1.17.4 network.go:33-147, v1.38.6 :49-273). The sandbox never
/// parses a CNI config (the chart has no install-cni container), so Calico CNI always
/// finds none: the handler's first refusal.
fn handle_calico_cni(r: &mut Reader) -> Result<(), OperatorRefusal> {
    if cni_plugin(r)? != Plugin::Calico {
        return Ok(());
    }
    Err(incompatible(
        "detected Calico CNI but couldn't find any CNI plugin with type=calico",
        "ensure CNI config contains a plugin with type=calico, or if not using Calico CNI, ensure FELIX_INTERFACEPREFIX is set correctly on calico-node",
        CNI_CONFIG,
    ))
}

/// handleNonCalicoCNI (v1.17.4 network.go:312-379, v1.38.6 :426-493).
fn handle_non_calico_cni(r: &mut Reader, version: Version) -> Result<(), OperatorRefusal> {
    let plugin = cni_plugin(r)?;
    if plugin == Plugin::Calico {
        return Ok(());
    }
    r.assert_set(NODE, "CALICO_NETWORKING_BACKEND", "none", version)?;
    match plugin {
        Plugin::AmazonVpc => {
            r.assert_set(NODE, "FELIX_IPTABLESMANGLEALLOWACTION", "return", version)?
        }
        Plugin::Gke => {
            r.assert_set(NODE, "FELIX_IPTABLESMANGLEALLOWACTION", "return", version)?;
            r.assert_set(NODE, "FELIX_IPTABLESFILTERALLOWACTION", "return", version)?;
        }
        Plugin::AzureVnet | Plugin::Calico => {}
    }
    r.assert(NODE, "IP", "")?;
    r.assert(NODE, "NO_DEFAULT_POOLS", "true")
}

/// handleMTU (v1.17.4 mtu.go:11-96, v1.38.6 :25-110): every MTU var set must parse and
/// agree; the IPv6 ones from v1.29.0 (commit 75f32767).
fn handle_mtu(r: &mut Reader, version: Version) -> Result<(), OperatorRefusal> {
    let sources: &[&str] = if version >= (1, 29, 0) {
        &[
            "FELIX_IPINIPMTU",
            "FELIX_VXLANMTU",
            "FELIX_VXLANMTUV6",
            "FELIX_WIREGUARDMTU",
            "FELIX_WIREGUARDMTUV6",
        ]
    } else {
        &["FELIX_IPINIPMTU", "FELIX_VXLANMTU", "FELIX_WIREGUARDMTU"]
    };
    let mut current: Option<(i64, &str)> = None;
    for src in sources {
        // getMTU (mtu.go:101-117): getEnv, then ParseInt(s, 10, 32).
        let parsed = match r.get(NODE, src) {
            Ok(None) => continue,
            Ok(Some(m)) => felix_env::parse_int("ParseInt", &m, 32)
                .map_err(|e| format!("couldn't convert {m} to integer: {e}")),
            Err(e) => Err(e.message),
        };
        let mtu = parsed.map_err(|e| {
            incompatible(
                format!("failed to parse mtu from {src}: {e}"),
                &format!("adjust {src} to a valid integer or unset the env var"),
                COMPONENT,
            )
        })?;
        if let Some((cur, cur_src)) = current
            && cur != mtu
        {
            return Err(incompatible(
                format!("mtu {src}={mtu} does not match mtu {cur_src}={cur}"),
                &format!("adjust {src} and {cur_src} to match or unset one of them"),
                COMPONENT,
            ));
        }
        current = Some((mtu, src));
    }
    Ok(())
}

fn ip_version_of(cidr: &str) -> Option<bool> {
    cidr.parse::<ipnet::IpNet>()
        .ok()
        .map(|n| matches!(n, ipnet::IpNet::V4(_)))
}

/// handleIPPools (v1.17.4 ippools.go:20-124, v1.38.6 :34-150): of the enabled pools
/// (store order, by name), the first `default-ipv*` pool of each IP version, else the
/// first of that version, is converted; a CIDR that does not parse fails the selection.
fn handle_ip_pools(r: &mut Reader, version: Version) -> Result<(), OperatorRefusal> {
    let mut pools: Vec<&Value> =
        r.ex.ip_pools
            .iter()
            .filter(|p| p.pointer("/spec/disabled") != Some(&Value::Bool(true)))
            .collect();
    pools.sort_by_key(|p| str_of(p, "/metadata/name").unwrap_or_default().to_string());
    let name = |p: &Value| str_of(p, "/metadata/name").unwrap_or_default().to_string();
    // selectInitialPool (v1.17.4 ippools.go:162-198) for IPv4, then IPv6, before any
    // pool is converted: each pass parses the pools up to its match.
    let mut chosen = Vec::new();
    for v4 in [true, false] {
        let mut found = None;
        'passes: for default_only in [true, false] {
            for p in &pools {
                let cidr = str_of(p, "/spec/cidr").unwrap_or_default();
                let Some(is_v4) = ip_version_of(cidr) else {
                    return Err(plain(format!(
                        "failed to parse IPPool {} in datastore: invalid CIDR address: {cidr}",
                        name(p)
                    )));
                };
                if is_v4 == v4 && (!default_only || name(p).starts_with("default-ipv")) {
                    found = Some(*p);
                    break 'passes;
                }
            }
        }
        chosen.extend(found.map(|p| (v4, p)));
    }
    // convertPool (v1.17.4 ippools.go:201-240, v1.38.6 :228-269).
    for (v4, p) in chosen {
        let mode = |k: &str| match str_of(p, k).unwrap_or_default() {
            "" => "Never".to_string(),
            m => m.to_string(),
        };
        let (ipip, vxlan) = (mode("/spec/ipipMode"), mode("/spec/vxlanMode"));
        let encapsulating = |m: &str| matches!(m, "Always" | "CrossSubnet");
        let fine = (ipip == "Never" && (vxlan == "Never" || encapsulating(&vxlan)))
            || (vxlan == "Never" && encapsulating(&ipip));
        if !fine {
            // Upstream prints the whole pool with Go's %+v; the sandbox abbreviates it.
            let dump = format!("{{Name:{} IPIPMode:{ipip} VXLANMode:{vxlan} ...}}", name(p));
            let err = format!("unexpected encapsulation combination for pool {dump}");
            // The IPv6 message has "%s " (v1.17.4 ippools.go:61): a space before " on".
            let sep = if v4 { "" } else { " " };
            return Err(incompatible(
                format!("failed to convert IPPool {}, {err}{sep}", name(p)),
                "",
                IPPOOLS,
            ));
        }
    }
    for ip in ["IPV4", "IPV6"] {
        for key in [
            "CIDR",
            "BLOCK_SIZE",
            "IPIP",
            "VXLAN",
            "NAT_OUTGOING",
            "NODE_SELECTOR",
        ] {
            r.ignore(NODE, &format!("CALICO_{ip}POOL_{key}"));
        }
        // v1.38.6 ippools.go:139 and 147, from v1.28.0 (commit a18ec554).
        if version >= (1, 28, 0) {
            r.ignore(NODE, &format!("CALICO_{ip}POOL_DISABLE_BGP_EXPORT"));
        }
    }
    Ok(())
}

fn felix_configuration_not_found() -> String {
    "felixconfigurations.crd.projectcalico.org \"default\" not found".into()
}

/// handleBPF, from v1.27.0 (commit 8deb3489; v1.38.6 bpf.go:62-90): FelixConfiguration
/// `default` must exist; with BPF on (its `bpfEnabled` or FELIX_BPFENABLED) ConfigMap
/// kube-system/kubernetes-services-endpoint is read (and copied to tigera-operator,
/// which the sandbox does not do).
fn handle_bpf(r: &mut Reader) -> Result<(), OperatorRefusal> {
    let Some(fc) = r.ex.felix_configuration else {
        return Err(plain(format!(
            "error reading felixconfiguration {}",
            felix_configuration_not_found()
        )));
    };
    let env = r.get(NODE, "FELIX_BPFENABLED").map_err(|e| {
        // Wrapped with %w: still an ErrIncompatibleCluster when it was one.
        OperatorRefusal::new(
            e.kind,
            format!("error reading FELIX_BPFENABLED env var {}", e.message),
        )
    })?;
    let on = fc.pointer("/spec/bpfEnabled") == Some(&Value::Bool(true))
        || env.is_some_and(|v| v.to_lowercase() == "true");
    let cm = "kubernetes-services-endpoint";
    if on
        && !r
            .ex
            .config_maps
            .iter()
            .any(|c| str_of(c, "/metadata/name") == Some(cm))
    {
        return Err(plain(format!(
            "failed read to configMap {}: configmaps {} not found",
            go_quote(cm),
            go_quote(cm)
        )));
    }
    Ok(())
}

/// handleFelixVars (v1.17.4 felix_vars.go:38-75, v1.38.6 :59-108): every calico-node
/// `FELIX_*` var no handler consumed is read and converted (crate::felix_env), then the
/// patch is sent to FelixConfiguration `default` (which the sandbox does not apply).
fn handle_felix_vars(r: &mut Reader, version: Version) -> Result<(), OperatorRefusal> {
    let Some(c) = container(r.pod(), NODE) else {
        return Err(plain("missing calico-node container"));
    };
    for e in items(c, "/env") {
        let name = e["name"].as_str().unwrap_or_default();
        if !name.starts_with("FELIX_") || r.checked.contains(&(NODE.into(), name.into())) {
            continue;
        }
        let value = r.get(NODE, name)?.unwrap_or_default();
        felix_env::patch_error(name, &value, version).map_err(plain)?;
    }
    if r.ex.felix_configuration.is_none() {
        return Err(plain(felix_configuration_not_found()));
    }
    Ok(())
}

/// Run the converter of the operator at image tag `operator_tag` on an EKS cluster's
/// kube-system Calico; Err is the first error, in the operator's words.
pub fn convert(ex: &Existing, operator_tag: &str) -> Result<(), OperatorRefusal> {
    let version = version_of(operator_tag);
    let mut r = Reader {
        ex,
        checked: BTreeSet::new(),
    };
    // getComponents (v1.17.4 components.go:28-90, v1.38.6 :42-104), in NeedsConversion.
    if ex.canal {
        return Err(OperatorRefusal::new(
            RefusalKind::Check,
            "detected existing canal installation",
        ));
    }
    // loadCNI (v1.17.4 components.go:94-112) reads install-cni's CNI_NETWORK_CONFIG; the
    // sandbox does not parse it.
    if container(r.pod(), INSTALL_CNI).is_some() {
        r.get(INSTALL_CNI, "CNI_NETWORK_CONFIG")
            .map_err(|e| OperatorRefusal::new(RefusalKind::Check, e.message))?;
    }
    // handler.go (v1.17.4 :14-28, v1.38.6 :28-42); checkTypha does nothing.
    handle_addon_manager(ex)?;
    handle_network(&mut r)?;
    if version < (1, 27, 0) {
        handle_ipv6(&mut r)?;
    }
    handle_core(&mut r, version)?;
    handle_annotations(ex, version)?;
    handle_node_selectors(ex, version)?;
    handle_felix_node_metrics(&mut r)?;
    handle_typha_metrics(&r)?;
    handle_calico_cni(&mut r)?;
    handle_non_calico_cni(&mut r, version)?;
    handle_mtu(&mut r, version)?;
    handle_ip_pools(&mut r, version)?;
    if version >= (1, 27, 0) {
        handle_bpf(&mut r)?;
    }
    // convert.go (v1.17.4 :50-63, v1.38.6 :65-78).
    handle_felix_vars(&mut r, version)?;
    let unchecked = r.unchecked();
    if !unchecked.is_empty() {
        return Err(incompatible(
            format!("unexpected env vars: [{}]", unchecked.join(" ")),
            // "daemonest" is upstream's spelling.
            "remove these environment variables from the calico-node daemonest",
            COMPONENT,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::scenario::calico::felix_configuration_default;
    use crate::sandbox::scenario::chart::{ChartValues, calico_node_daemonset, typha_deployment};
    use serde_json::json;

    const LINES: [&str; 3] = ["v1.17.4", "v1.20.1", "v1.38.6"];
    const OLD: [&str; 2] = ["v1.17.4", "v1.20.1"];

    fn values() -> ChartValues {
        ChartValues::seed_organisation("aws-calico")
    }

    /// The chart's DaemonSet as the API server holds it after detach-helm and
    /// fargate-affinity: Helm's annotations and the Fargate exclusion gone, the
    /// migration label in the nodeSelector.
    fn prepared() -> Value {
        let mut ds = calico_node_daemonset(&values());
        ds["metadata"]["annotations"] = json!({"deprecated.daemonset.template.generation": "1"});
        let spec = &mut ds["spec"]["template"]["spec"];
        if let Some(m) = spec.as_object_mut() {
            m.remove("affinity");
        }
        spec["nodeSelector"][MIGRATION_LABEL] = json!("pre-operator");
        ds
    }

    fn typha() -> Value {
        let mut t = typha_deployment(&values());
        t["metadata"]["annotations"] = json!({"deployment.kubernetes.io/revision": "1"});
        t
    }

    fn check_with(
        ds: &Value,
        typha: Option<&Value>,
        config_maps: &[Value],
        ip_pools: &[Value],
        tag: &str,
    ) -> Result<(), OperatorRefusal> {
        let fc = felix_configuration_default();
        convert(
            &Existing {
                node: ds,
                typha,
                canal: false,
                config_maps,
                ip_pools,
                felix_configuration: Some(&fc),
            },
            tag,
        )
    }

    fn check(ds: &Value, tag: &str) -> Result<(), OperatorRefusal> {
        check_with(ds, Some(&typha()), &[], &[], tag)
    }

    fn refused(message: &str) -> Result<(), OperatorRefusal> {
        Err(OperatorRefusal::new(RefusalKind::Incompatible, message))
    }

    fn failed(message: &str) -> Result<(), OperatorRefusal> {
        Err(OperatorRefusal::new(RefusalKind::Convert, message))
    }

    fn env(ds: &mut Value) -> &mut Vec<Value> {
        ds["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array_mut()
            .unwrap_or_else(|| panic!("calico-node has env"))
    }

    fn set_env(ds: &Value, name: &str, value: &str) -> Value {
        set_entry(ds, json!({"name": name, "value": value}))
    }

    fn set_entry(ds: &Value, entry: Value) -> Value {
        let mut ds = ds.clone();
        let e = env(&mut ds);
        match e.iter_mut().find(|v| v["name"] == entry["name"]) {
            Some(slot) => *slot = entry,
            None => e.push(entry),
        }
        ds
    }

    fn unset_env(ds: &Value, name: &str) -> Value {
        let mut ds = ds.clone();
        env(&mut ds).retain(|v| v["name"] != name);
        ds
    }

    #[test]
    fn the_chart_passes_every_line_once_helm_and_fargate_are_handled() {
        for tag in LINES {
            assert_eq!(check(&prepared(), tag), Ok(()), "{tag}");
        }
        // As installed: Helm's annotations first, then the Fargate exclusion, on every
        // line (Convert passes an empty Installation: no provider, no exception).
        let mut ds = calico_node_daemonset(&values());
        ds["metadata"]["annotations"] = json!({"meta.helm.sh/release-name": "aws-calico",
            "meta.helm.sh/release-namespace": "kube-system"});
        for tag in LINES {
            assert_eq!(
                check(&ds, tag),
                refused(
                    "unexpected annotation 'map[meta.helm.sh/release-name:aws-calico meta.helm.sh/release-namespace:kube-system]'. To fix it, remove the annotation from the component on daemonset/calico-node"
                ),
                "{tag}"
            );
        }
        ds["metadata"]["annotations"] = json!({});
        for tag in LINES.into_iter().chain(["v1.25.0"]) {
            assert_eq!(
                check(&ds, tag),
                refused(
                    "node affinity not supported for calico-node daemonset. To fix it, remove the affinity on daemonset/calico-node"
                ),
                "{tag}"
            );
        }
    }

    #[test]
    fn canal_is_refused_before_conversion() {
        let ds = prepared();
        let fc = felix_configuration_default();
        let ex = Existing {
            node: &ds,
            typha: None,
            canal: true,
            config_maps: &[],
            ip_pools: &[],
            felix_configuration: Some(&fc),
        };
        let e = convert(&ex, "v1.38.6").expect_err("canal");
        assert_eq!(e.kind, RefusalKind::Check);
        assert_eq!(
            e.degraded(),
            Some((
                "ResourceValidationError",
                "Error checking for existing installation: detected existing canal installation"
                    .into()
            ))
        );
    }

    #[test]
    fn addon_manager_label_on_calico_node_or_typha() {
        let mut ds = prepared();
        ds["metadata"]["labels"]["addonmanager.kubernetes.io/mode"] = json!("Reconcile");
        for tag in LINES {
            assert_eq!(
                check(&ds, tag),
                refused(
                    "can't modify components managed by addon-manager on daemonset/calico-node"
                )
            );
        }
        let mut t = typha();
        t["metadata"]["labels"]["addonmanager.kubernetes.io/mode"] = json!("EnsureExists");
        assert_eq!(
            check_with(&prepared(), Some(&t), &[], &[], "v1.38.6"),
            refused("can't modify components managed by addon-manager on deployment/calico-typha")
        );
    }

    #[test]
    fn a_renamed_calico_node_container_is_refused_first_by_handle_network() {
        let mut ds = prepared();
        ds["spec"]["template"]["spec"]["containers"][0]["name"] = json!("node");
        for tag in LINES {
            assert_eq!(
                check(&ds, tag),
                refused(
                    "couldn't find container 'calico-node' in daemonset/calico-node. To fix it, restore the calico-node container if you've renamed or removed it on daemonset/calico-node"
                )
            );
        }
    }

    #[test]
    fn default_endpoint_to_host_action_must_be_accept() {
        let ds = set_env(&prepared(), "FELIX_DEFAULTENDPOINTTOHOSTACTION", "Drop");
        for tag in LINES {
            assert_eq!(
                check(&ds, tag),
                refused(
                    "FELIX_DEFAULTENDPOINTTOHOSTACTION=Drop is not supported. To fix it, remove the FELIX_DEFAULTENDPOINTTOHOSTACTION env var or set it to 'accept' on daemonset/calico-node"
                )
            );
        }
    }

    #[test]
    fn ipv6_is_checked_up_to_v1_20_and_left_to_felix_vars_after() {
        let ds = set_env(&prepared(), "FELIX_IPV6SUPPORT", "true");
        for tag in OLD {
            assert_eq!(
                check(&ds, tag),
                refused(
                    "FELIX_IPV6SUPPORT=true is not supported. To fix it, remove the FELIX_IPV6SUPPORT env var or set it to 'false' on daemonset/calico-node"
                )
            );
        }
        // v1.38.6: no IPv6 check outside Calico CNI; patched into FelixConfiguration.
        assert_eq!(check(&ds, "v1.38.6"), Ok(()));
        let ds = set_env(&prepared(), "IP6", "autodetect");
        for tag in OLD {
            assert_eq!(
                check(&ds, tag),
                refused(
                    "IP6=autodetect is not supported. To fix it, remove the IP6 env var or set it to 'none' on daemonset/calico-node"
                )
            );
        }
        assert_eq!(
            check(&ds, "v1.38.6"),
            refused(
                "unexpected env vars: [calico-node/IP6]. To fix it, remove these environment variables from the calico-node daemonest on daemonset/calico-node"
            )
        );
        // IP6=none passes v1.20; on v1.38.6 nothing consumes it.
        let ds = set_env(&prepared(), "IP6", "none");
        assert_eq!(check(&ds, "v1.20.1"), Ok(()));
        assert!(check(&ds, "v1.38.6").is_err());
    }

    #[test]
    fn datastore_type_other_than_kubernetes() {
        let ds = set_env(&prepared(), "DATASTORE_TYPE", "etcdv3");
        for tag in LINES {
            assert_eq!(
                check(&ds, tag),
                refused("only DATASTORE_TYPE=kubernetes is supported on daemonset/calico-node")
            );
        }
    }

    #[test]
    fn flexvol_volume_and_init_container_go_together() {
        let mut ds = prepared();
        match ds["spec"]["template"]["spec"]["volumes"].as_array_mut() {
            Some(list) => list.push(json!({"name": "flexvol-driver-host", "hostPath": {"path": "/usr/libexec/kubernetes/kubelet-plugins/volume/exec/nodeagent~uds"}})),
            None => panic!("the chart has volumes"),
        }
        assert_eq!(
            check(&ds, "v1.38.6"),
            refused(
                "detected 'flexvol-driver-host' volume but no 'flexvol-driver' init container. To fix it, remove the 'flexvol-driver-host' volume or restore the 'flexvol-driver' init container on daemonset/calico-node"
            )
        );
        ds["spec"]["template"]["spec"]["initContainers"] =
            json!([{"name": "flexvol-driver", "image": "calico/pod2daemon-flexvol"}]);
        assert_eq!(check(&ds, "v1.38.6"), Ok(()));
        ds["spec"]["template"]["spec"]["volumes"][4] =
            json!({"name": "flexvol-driver-host", "emptyDir": {}});
        assert_eq!(
            check(&ds, "v1.17.4"),
            refused(
                "volume 'flexvol-driver-host' must be a HostPath. To fix it, remove the 'flexvol-driver-host' volume or convert it to type hostPath on daemonset/calico-node"
            )
        );
        let mut ds = prepared();
        ds["spec"]["template"]["spec"]["initContainers"] =
            json!([{"name": "flexvol-driver", "image": "calico/pod2daemon-flexvol"}]);
        assert_eq!(
            check(&ds, "v1.20.1"),
            refused(
                "detected 'flexvol-driver' init container but no 'flexvol-driver-host' volume. To fix it, restore the 'flexvol-driver-host' volume or remove the 'flexvol-driver' init container on daemonset/calico-node"
            )
        );
    }

    #[test]
    fn the_host_path_volumes_must_be_there() {
        let mut ds = prepared();
        ds["spec"]["template"]["spec"]["volumes"][2]["hostPath"]["path"] = json!("/data/calico");
        for tag in LINES {
            assert_eq!(
                check(&ds, tag),
                refused(
                    "missing expected volume 'var-lib-calico' with hostPath '/var/lib/calico'. To fix it, add the expected volume to daemonset/calico-node on daemonset/calico-node"
                )
            );
        }
    }

    #[test]
    fn nodename_must_be_a_field_ref_to_spec_node_name() {
        let ds = set_env(&prepared(), "NODENAME", "ip-10-0-0-1");
        for tag in LINES {
            assert_eq!(
                check(&ds, tag),
                refused(
                    "NODENAME on 'calico-node' container must be unset or be a FieldRef to 'spec.nodeName'. To fix it, remove the NODENAME env var or convert it to a fieldRef with value 'spec.nodeName' on daemonset/calico-node"
                )
            );
        }
        assert_eq!(
            check(&unset_env(&prepared(), "NODENAME"), "v1.38.6"),
            Ok(())
        );
        let mut ds = prepared();
        ds["spec"]["template"]["spec"]["initContainers"] = json!([{"name": "install-cni",
            "env": [{"name": "KUBERNETES_NODE_NAME", "value": "x"}]}]);
        assert_eq!(
            check(&ds, "v1.17.4"),
            refused(
                "KUBERNETES_NODE_NAME on 'install-cni' container must be unset or be a FieldRef to 'spec.nodeName'. To fix it, remove the KUBERNETES_NODE_NAME env var or convert it to a fieldRef with value 'spec.nodeName' on daemonset/calico-node"
            )
        );
        ds["spec"]["template"]["spec"]["initContainers"] = json!([{"name": "install-cni",
            "env": [{"name": "CNI_CONF_NAME", "value": "05-x.conf"}]}]);
        for tag in LINES {
            assert_eq!(
                check(&ds, tag),
                refused(
                    "CNI_CONF_NAME=05-x.conf is not supported. To fix it, remove the CNI_CONF_NAME env var or set it to '10-calico.conflist' on daemonset/calico-node"
                )
            );
        }
    }

    #[test]
    fn annotations_follow_the_line() {
        let mut ds = prepared();
        ds["spec"]["template"]["metadata"]["annotations"] = json!({
            "kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z",
            "cluster-autoscaler.kubernetes.io/daemonset-pod": "true"
        });
        assert_eq!(check(&ds, "v1.38.6"), Ok(()));
        for tag in OLD {
            assert_eq!(
                check(&ds, tag),
                refused(
                    "unexpected annotation 'map[kubectl.kubernetes.io/restartedAt:2026-01-01T00:00:00Z]'. To fix it, remove the annotation from the component on daemonset/calico-node podTemplateSpec"
                )
            );
        }
    }

    #[test]
    fn affinity_and_node_selector_on_calico_node() {
        let mut ds = prepared();
        ds["spec"]["template"]["spec"]["affinity"] = json!({});
        assert_eq!(
            check(&ds, "v1.38.6"),
            refused(
                "node affinity not supported for calico-node daemonset. To fix it, remove the affinity on daemonset/calico-node"
            ),
            "an empty affinity is a non-nil *Affinity"
        );
        let mut ds = prepared();
        ds["spec"]["template"]["spec"]["nodeSelector"]["team"] = json!("a");
        for tag in LINES {
            assert_eq!(
                check(&ds, tag),
                refused(
                    "unsupported nodeSelector for calico-node daemonset: map[team:a]. To fix it, remove the nodeSelector on daemonset/calico-node"
                )
            );
        }
    }

    #[test]
    fn typha_is_checked_like_the_tags_do() {
        let ds = prepared();
        let mut t = typha();
        t["metadata"]["annotations"]["meta.helm.sh/release-name"] = json!("aws-calico");
        assert_eq!(
            check_with(&ds, Some(&t), &[], &[], "v1.20.1"),
            refused(
                "unexpected annotation 'map[meta.helm.sh/release-name:aws-calico]'. To fix it, remove the annotation from the component on deployment/calico-typha"
            )
        );
        let mut t = typha();
        t["spec"]["template"]["spec"]["affinity"] = json!({"podAntiAffinity": {}});
        for tag in OLD {
            assert_eq!(
                check_with(&ds, Some(&t), &[], &[], tag),
                refused(
                    "pod affinity and antiAffinity not supported for typha deployment. To fix it, remove the affinity on deployment/calico-typha"
                )
            );
        }
        assert_eq!(check_with(&ds, Some(&t), &[], &[], "v1.38.6"), Ok(()));
        t["spec"]["template"]["spec"]["affinity"] = json!({"nodeAffinity":
            {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}});
        assert_eq!(
            check_with(&ds, Some(&t), &[], &[], "v1.38.6"),
            refused(
                "nodeAffinity 'RequiredDuringSchedulingIgnoredDuringExecution' not supported on Typha.. To fix it, remove the affinity on deployment/calico-typha"
            )
        );
        let mut t = typha();
        t["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/os"] = json!("windows");
        assert_eq!(
            check_with(&ds, Some(&t), &[], &[], "v1.38.6"),
            refused(
                "invalid nodeSelector for typha deployment: map[kubernetes.io/os:windows]. To fix it, remove the nodeSelector on deployment/calico-typha"
            )
        );
    }

    #[test]
    fn metrics_ports_must_be_ports() {
        let ds = set_env(&prepared(), "FELIX_PROMETHEUSMETRICSPORT", "0");
        for tag in LINES {
            assert_eq!(
                check(&ds, tag),
                refused(
                    "invalid port defined in FELIX_PROMETHEUSMETRICSPORT=0. To fix it, adjust it to be within the range of 1-65535 or remove the env var on daemonset/calico-node"
                )
            );
        }
        // Metrics off: the port is ignored, whatever it says.
        let off = set_env(&ds, "FELIX_PROMETHEUSMETRICSENABLED", "false");
        assert_eq!(check(&off, "v1.38.6"), Ok(()));
        let mut t = typha();
        t["spec"]["template"]["spec"]["containers"][0]["env"][6] =
            json!({"name": "TYPHA_PROMETHEUSMETRICSPORT", "value": "70000"});
        assert_eq!(
            check_with(&prepared(), Some(&t), &[], &[], "v1.17.4"),
            refused(
                "invalid port defined in TYPHA_PROMETHEUSMETRICSPORT=70000. To fix it, adjust it to be within the range of 1-65535 or remove the env var on deployment/calico-typha"
            )
        );
        t["spec"]["template"]["spec"]["containers"][0]["name"] = json!("typha");
        assert_eq!(
            check_with(&prepared(), Some(&t), &[], &[], "v1.38.6"),
            refused(
                "couldn't find container 'calico-typha' in deployment/calico-typha. To fix it, restore the calico-typha container if you've renamed or removed it on deployment/calico-typha"
            )
        );
    }

    #[test]
    fn the_interface_prefix_picks_the_cni_plugin() {
        let ds = set_env(&prepared(), "FELIX_INTERFACEPREFIX", "veth");
        for tag in LINES {
            assert_eq!(
                check(&ds, tag),
                refused(
                    "unexpected FELIX_INTERFACEPREFIX value: 'veth'. Only 'eni, azv, gke, cali' are supported. on daemonset/calico-node"
                )
            );
        }
        let calico = refused(
            "detected Calico CNI but couldn't find any CNI plugin with type=calico. To fix it, ensure CNI config contains a plugin with type=calico, or if not using Calico CNI, ensure FELIX_INTERFACEPREFIX is set correctly on calico-node on cni-config",
        );
        for ds in [
            set_env(&prepared(), "FELIX_INTERFACEPREFIX", "cali"),
            unset_env(&prepared(), "FELIX_INTERFACEPREFIX"),
        ] {
            for tag in LINES {
                assert_eq!(check(&ds, tag), calico, "{tag}");
            }
        }
        // Azure's prefix converts (as AzureVNET): no refusal.
        assert_eq!(
            check(
                &set_env(&prepared(), "FELIX_INTERFACEPREFIX", "azv"),
                "v1.38.6"
            ),
            Ok(())
        );
        let gke = set_env(&prepared(), "FELIX_INTERFACEPREFIX", "gke");
        assert_eq!(
            check(&gke, "v1.38.6"),
            refused(
                "FELIX_IPTABLESFILTERALLOWACTION=<undefined> is not supported. To fix it, set the FELIX_IPTABLESFILTERALLOWACTION env var to 'return' on daemonset/calico-node"
            )
        );
        assert_eq!(
            check(&gke, "v1.20.1").map_err(|e| e.kind),
            Err(RefusalKind::Crash)
        );
    }

    #[test]
    fn amazon_vpc_values_are_worded_per_line() {
        let ds = set_env(&prepared(), "CALICO_NETWORKING_BACKEND", "bird");
        for tag in OLD {
            assert_eq!(
                check(&ds, tag),
                refused(
                    "CALICO_NETWORKING_BACKEND=bird is not supported. To fix it, remove the CALICO_NETWORKING_BACKEND env var or set it to 'none' on daemonset/calico-node"
                )
            );
        }
        assert_eq!(
            check(&ds, "v1.38.6"),
            refused(
                "CALICO_NETWORKING_BACKEND=bird is not supported. To fix it, set the CALICO_NETWORKING_BACKEND env var to 'none' on daemonset/calico-node"
            )
        );
        // Unset: v1.17/v1.20 dereference a nil value (k8s.go:112) and panic.
        let ds = unset_env(&prepared(), "CALICO_NETWORKING_BACKEND");
        for tag in OLD {
            let e = check(&ds, tag).expect_err("unset backend");
            assert_eq!(e.kind, RefusalKind::Crash);
            assert_eq!(e.degraded(), None);
        }
        assert_eq!(
            check(&ds, "v1.38.6"),
            refused(
                "CALICO_NETWORKING_BACKEND=<undefined> is not supported. To fix it, set the CALICO_NETWORKING_BACKEND env var to 'none' on daemonset/calico-node"
            )
        );
        assert_eq!(
            check(
                &set_env(&prepared(), "FELIX_IPTABLESMANGLEALLOWACTION", "RETURN"),
                "v1.17.4"
            ),
            Ok(()),
            "compared lower-cased"
        );
        let ds = set_env(&prepared(), "FELIX_IPTABLESMANGLEALLOWACTION", "Accept");
        assert_eq!(
            check(&ds, "v1.17.4"),
            refused(
                "FELIX_IPTABLESMANGLEALLOWACTION=Accept is not supported. To fix it, remove the FELIX_IPTABLESMANGLEALLOWACTION env var or set it to 'return' on daemonset/calico-node"
            )
        );
        assert_eq!(
            check(&ds, "v1.38.6"),
            refused(
                "FELIX_IPTABLESMANGLEALLOWACTION=Accept is not supported. To fix it, set the FELIX_IPTABLESMANGLEALLOWACTION env var to 'return' on daemonset/calico-node"
            )
        );
        let ds = set_env(&prepared(), "IP", "autodetect");
        for tag in LINES {
            assert_eq!(
                check(&ds, tag),
                refused(
                    "IP=autodetect is not supported. To fix it, remove the IP env var or set it to '' on daemonset/calico-node"
                )
            );
        }
        let ds = set_env(&prepared(), "NO_DEFAULT_POOLS", "false");
        for tag in LINES {
            assert_eq!(
                check(&ds, tag),
                refused(
                    "NO_DEFAULT_POOLS=false is not supported. To fix it, remove the NO_DEFAULT_POOLS env var or set it to 'true' on daemonset/calico-node"
                )
            );
        }
        assert_eq!(
            check(&unset_env(&prepared(), "NO_DEFAULT_POOLS"), "v1.38.6"),
            Ok(())
        );
    }

    #[test]
    fn mtu_vars_must_parse_and_agree() {
        let ds = set_env(&prepared(), "FELIX_VXLANMTU", "jumbo");
        for tag in LINES {
            assert_eq!(
                check(&ds, tag),
                refused(
                    "failed to parse mtu from FELIX_VXLANMTU: couldn't convert jumbo to integer: strconv.ParseInt: parsing \"jumbo\": invalid syntax. To fix it, adjust FELIX_VXLANMTU to a valid integer or unset the env var on daemonset/calico-node"
                )
            );
        }
        let ds = set_env(
            &set_env(&prepared(), "FELIX_IPINIPMTU", "1440"),
            "FELIX_VXLANMTU",
            "1410",
        );
        assert_eq!(
            check(&ds, "v1.38.6"),
            refused(
                "mtu FELIX_VXLANMTU=1410 does not match mtu FELIX_IPINIPMTU=1440. To fix it, adjust FELIX_VXLANMTU and FELIX_IPINIPMTU to match or unset one of them on daemonset/calico-node"
            )
        );
        // FELIX_VXLANMTUV6: an MTU from v1.29.0; before, no FelixConfiguration field.
        let ds = set_env(&prepared(), "FELIX_VXLANMTUV6", "1430");
        assert_eq!(check(&ds, "v1.38.6"), Ok(()));
        assert_eq!(
            check(&ds, "v1.17.4"),
            failed("unrecognized felix config setting: vxlanmtuv6")
        );
    }

    #[test]
    fn the_chosen_ip_pools_must_convert() {
        let pool = |name: &str, cidr: &str, ipip: &str, vxlan: &str| {
            json!({"metadata": {"name": name},
                   "spec": {"cidr": cidr, "ipipMode": ipip, "vxlanMode": vxlan}})
        };
        let both = [pool(
            "default-ipv4-ippool",
            "192.168.0.0/16",
            "Always",
            "Always",
        )];
        assert_eq!(
            check_with(&prepared(), Some(&typha()), &[], &both, "v1.38.6"),
            refused(
                "failed to convert IPPool default-ipv4-ippool, unexpected encapsulation combination for pool {Name:default-ipv4-ippool IPIPMode:Always VXLANMode:Always ...} on ippools"
            )
        );
        // Only the chosen pool of each version is converted.
        let two = [
            pool("default-ipv4-ippool", "192.168.0.0/16", "Never", "Always"),
            pool("extra", "10.9.0.0/16", "Always", "Always"),
        ];
        assert_eq!(
            check_with(&prepared(), Some(&typha()), &[], &two, "v1.17.4"),
            Ok(())
        );
        // The IPv6 message has a space before " on" (v1.17.4 ippools.go:61).
        let v6 = [pool(
            "default-ipv6-ippool",
            "fd00::/48",
            "CrossSubnet",
            "Always",
        )];
        assert_eq!(
            check_with(&prepared(), Some(&typha()), &[], &v6, "v1.17.4"),
            refused(
                "failed to convert IPPool default-ipv6-ippool, unexpected encapsulation combination for pool {Name:default-ipv6-ippool IPIPMode:CrossSubnet VXLANMode:Always ...}  on ippools"
            )
        );
        let bad = [pool("broken", "10.9.0.0", "", "")];
        assert_eq!(
            check_with(&prepared(), Some(&typha()), &[], &bad, "v1.17.4"),
            failed("failed to parse IPPool broken in datastore: invalid CIDR address: 10.9.0.0")
        );
    }

    #[test]
    fn felix_configuration_and_bpf() {
        let ds = prepared();
        let t = typha();
        let without = |tag| {
            convert(
                &Existing {
                    node: &ds,
                    typha: Some(&t),
                    canal: false,
                    config_maps: &[],
                    ip_pools: &[],
                    felix_configuration: None,
                },
                tag,
            )
        };
        assert_eq!(
            without("v1.38.6"),
            failed(
                "error reading felixconfiguration felixconfigurations.crd.projectcalico.org \"default\" not found"
            )
        );
        assert_eq!(
            without("v1.17.4"),
            failed("felixconfigurations.crd.projectcalico.org \"default\" not found")
        );
        let bpf = set_env(&prepared(), "FELIX_BPFENABLED", "true");
        assert_eq!(
            check(&bpf, "v1.38.6"),
            failed(
                "failed read to configMap \"kubernetes-services-endpoint\": configmaps \"kubernetes-services-endpoint\" not found"
            )
        );
        let ep = [json!({"metadata": {"name": "kubernetes-services-endpoint"},
            "data": {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}})];
        assert_eq!(
            check_with(&bpf, Some(&typha()), &ep, &[], "v1.38.6"),
            Ok(())
        );
        assert_eq!(check(&bpf, "v1.17.4"), Ok(()), "a felix var before v1.27.0");
    }

    #[test]
    fn leftover_felix_vars_must_be_fields_that_parse() {
        let ds = set_env(&prepared(), "FELIX_FOO", "1");
        for tag in LINES {
            assert_eq!(
                check(&ds, tag),
                failed("unrecognized felix config setting: foo")
            );
        }
        let ds = set_env(&prepared(), "FELIX_HEALTHPORT", "nine");
        assert_eq!(
            check(&ds, "v1.38.6").map_err(|e| e.degraded()),
            Err(Some((
                "MigrationError",
                "Error converting existing installation: strconv.Atoi: parsing \"nine\": invalid syntax"
                    .into()
            )))
        );
        // No release checks FELIX_ROUTESOURCE: the chart's value is patched.
        let ds = set_env(&prepared(), "FELIX_ROUTESOURCE", "CalicoIPAM");
        assert_eq!(check(&ds, "v1.20.1"), Ok(()));
    }

    #[test]
    fn env_sources_other_than_config_maps_are_refused_and_config_maps_are_read() {
        let secret = json!({"name": "FELIX_DEFAULTENDPOINTTOHOSTACTION",
            "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}});
        let ds = set_entry(&prepared(), secret);
        for tag in LINES {
            assert_eq!(
                check(&ds, tag),
                refused(
                    "failed to read calico-node/FELIX_DEFAULTENDPOINTTOHOSTACTION: only configMapRef & explicit values supported for env vars at this time. To fix it, adjust FELIX_DEFAULTENDPOINTTOHOSTACTION to be an explicit value or configMapRef on "
                )
            );
        }
        let from_cm = json!({"name": "CALICO_NETWORKING_BACKEND",
            "valueFrom": {"configMapKeyRef": {"name": "calico-config", "key": "calico_backend"}}});
        let ds = set_entry(&prepared(), from_cm);
        let cm = |v: &str| {
            [json!({"metadata": {"name": "calico-config"}, "data": {"calico_backend": v}})]
        };
        assert_eq!(
            check_with(&ds, Some(&typha()), &cm("none"), &[], "v1.38.6"),
            Ok(())
        );
        assert_eq!(
            check_with(&ds, Some(&typha()), &cm("bird"), &[], "v1.17.4"),
            refused(
                "CALICO_NETWORKING_BACKEND=bird is not supported. To fix it, remove the CALICO_NETWORKING_BACKEND env var or set it to 'none' on daemonset/calico-node"
            )
        );
        assert_eq!(
            check(&ds, "v1.38.6"),
            failed("configmaps \"calico-config\" not found")
        );
    }

    #[test]
    fn env_no_handler_consumes_is_refused_in_any_container() {
        let message = |vars: &str| {
            refused(&format!(
                "unexpected env vars: [{vars}]. To fix it, remove these environment variables from the calico-node daemonest on daemonset/calico-node"
            ))
        };
        for name in [
            "MY_VAR",
            "IP_AUTODETECTION_METHOD",
            "CALICO_MANAGE_CNI",
            "USE_POD_CIDR",
            "TYPHA_K8SSERVICENAME",
            "CALICO_ROUTER_ID",
        ] {
            let ds = set_env(&prepared(), name, "x");
            for tag in LINES {
                assert_eq!(
                    check(&ds, tag),
                    message(&format!("calico-node/{name}")),
                    "{tag}"
                );
            }
        }
        let ds = set_env(&prepared(), "CALICO_IPV4POOL_DISABLE_BGP_EXPORT", "true");
        assert_eq!(check(&ds, "v1.38.6"), Ok(()));
        assert_eq!(
            check(&ds, "v1.17.4"),
            message("calico-node/CALICO_IPV4POOL_DISABLE_BGP_EXPORT")
        );
        let mut ds = prepared();
        match ds["spec"]["template"]["spec"]["containers"].as_array_mut() {
            Some(list) => {
                list.push(json!({"name": "sidecar", "env": [{"name": "FELIX_X", "value": "1"}]}))
            }
            None => panic!("the chart has containers"),
        }
        ds["spec"]["template"]["spec"]["initContainers"] = json!([{"name": "upgrade-ipam", "env": [
                {"name": "KUBERNETES_NODE_NAME", "value": "n"}, {"name": "EXTRA", "value": "1"}]}]);
        let ds = set_env(&ds, "MY_VAR", "1");
        assert_eq!(
            check(&ds, "v1.38.6"),
            message("calico-node/MY_VAR sidecar/FELIX_X upgrade-ipam/EXTRA")
        );
    }

    #[test]
    fn the_first_handler_in_order_wins() {
        // handleNetwork, then handleCore, then handleAnnotations, then the env catch-all.
        let mut ds = set_env(&prepared(), "MY_VAR", "1");
        ds["metadata"]["annotations"]["team"] = json!("net");
        assert!(
            check(&ds, "v1.38.6").is_err_and(|e| e.message.starts_with("unexpected annotation"))
        );
        let ds = set_env(&ds, "DATASTORE_TYPE", "etcdv3");
        assert!(check(&ds, "v1.38.6").is_err_and(|e| e.message.starts_with("only DATASTORE_TYPE")));
        let ds = set_env(&ds, "FELIX_DEFAULTENDPOINTTOHOSTACTION", "Drop");
        assert!(check(&ds, "v1.38.6").is_err_and(|e| {
            e.message
                .starts_with("FELIX_DEFAULTENDPOINTTOHOSTACTION=Drop")
        }));
    }

    #[test]
    fn refusals_report_as_the_operator_does() {
        let e = OperatorRefusal::new(RefusalKind::Incompatible, "x on y");
        assert_eq!(
            e.degraded(),
            Some(("MigrationError", format!("{DEGRADED_PREFIX}: x on y")))
        );
        assert_eq!(version_of("v1.38.6"), (1, 38, 6));
        assert_eq!(version_of("latest"), (0, 0, 0));
    }
}
