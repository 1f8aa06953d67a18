//! The converter's refusals, in the operator's words (tigera/operator
//! pkg/controller/migration/convert: errors.go `ErrIncompatibleCluster`
//! formats "<err>. To fix it, <fix> on <component>"; core.go
//! `removeExpectedAnnotations` and `handleNodeSelectors`, which differ by operator
//! line (the version is the operator Deployment's image tag); convert.go
//! "unexpected env var"; cni.go / network.go for the AmazonVPC values).
//! installation/core_controller.go reports them as Degraded/MigrationError
//! with [`DEGRADED_PREFIX`] + ": " + the error.

use std::collections::BTreeMap;

use serde_json::Value;

pub const DEGRADED_PREFIX: &str = "Existing Calico installation can not be managed by Tigera Operator as it is configured in a way that Operator does not currently support. Please update your existing Calico install config";

const COMPONENT: &str = "daemonset/calico-node";
const TYPHA: &str = "deployment/calico-typha";

/// The migration converter's refusal, as the real Tigera operator words it
/// (tigera/operator pkg/controller/migration/convert). The text is upstream's and
/// reproduced verbatim (the operator reports it in its TigeraStatus), so it is
/// carried as is rather than split into variants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OperatorRefusal(pub String);

/// `ErrIncompatibleCluster`: `<err>. To fix it, <fix> on <component>`.
fn incompatible(err: String, fix: &str, component: &str) -> OperatorRefusal {
    OperatorRefusal(format!("{err}. To fix it, {fix} on {component}"))
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

/// `(major, minor, patch)` of an operator image tag such as `v1.38.6`; a tag that does
/// not parse is the oldest line.
pub(super) fn version_of(tag: &str) -> (u32, u32, u32) {
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

/// `removeExpectedAnnotations` (core.go): the annotations the converter drops before
/// it refuses what is left. v1.17.4 and v1.20.4 core.go:258-275: four keys by name,
/// and keys of `ignore_with_value` when the value matches. From v1.22.0 (commit
/// ae31dec1; v1.38.6 core.go:34 and 298-325) kubectl's last-applied key gives way to
/// every key matching `^kubectl\.kubernetes\.io`.
fn unexpected_annotations(
    v: Option<&Value>,
    ignore_with_value: &[(&str, &str)],
    version: (u32, u32, u32),
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

/// The affinity v1.25.0 on accepts on calico-node for an EKS Installation (commit
/// c80107f7; v1.38.6 core.go:346-357, compared with `reflect.DeepEqual`): exactly the
/// required node affinity `eks.amazonaws.com/compute-type NotIn [fargate]`.
fn is_eks_fargate_exclusion(affinity: &Value) -> bool {
    let term = serde_json::json!({"matchExpressions": [
        {"key": "eks.amazonaws.com/compute-type", "operator": "NotIn", "values": ["fargate"]}
    ]});
    let Some(a) = affinity.as_object() else {
        return false;
    };
    let set: Vec<(&String, &Value)> = a.iter().filter(|(_, v)| !v.is_null()).collect();
    let Some(node) = set
        .iter()
        .find(|(k, _)| *k == "nodeAffinity")
        .map(|(_, v)| *v)
        .filter(|_| set.len() == 1)
        .and_then(Value::as_object)
    else {
        return false;
    };
    let node: Vec<(&String, &Value)> = node.iter().filter(|(_, v)| !v.is_null()).collect();
    node.len() == 1
        && node[0].0 == "requiredDuringSchedulingIgnoredDuringExecution"
        && node[0].1.get("nodeSelectorTerms") == Some(&serde_json::json!([term]))
}

/// Non-FELIX env vars the converter understands or ignores (core.go, network.go, cni.go).
const KNOWN_ENV: &[&str] = &[
    "DATASTORE_TYPE",
    "CALICO_NETWORKING_BACKEND",
    "CLUSTER_TYPE",
    "CALICO_DISABLE_FILE_LOGGING",
    "WAIT_FOR_DATASTORE",
    "NO_DEFAULT_POOLS",
    "NODENAME",
    "IP",
    "IP6",
    "IP_AUTODETECTION_METHOD",
    "IP6_AUTODETECTION_METHOD",
    "CALICO_IPV4POOL_IPIP",
    "CALICO_IPV4POOL_VXLAN",
    "CALICO_IPV4POOL_CIDR",
    "CALICO_IPV6POOL_CIDR",
    "CALICO_IPV6POOL_VXLAN",
    "CALICO_MANAGE_CNI",
    "CALICO_ROUTER_ID",
];

/// AmazonVPC (FELIX_INTERFACEPREFIX=eni): values that must hold, compared lower-cased
/// (tigera/operator v1.17.4 pkg/controller/migration/convert/network.go:329 and :343,
/// `assertEnvIsSet` in k8s.go:104-118; the same at v1.20.1). No release checks
/// FELIX_ROUTESOURCE: a leftover FELIX_* goes into FelixConfiguration (felix_vars.go).
const AMAZON_VPC_ENV: &[(&str, &str)] = &[
    ("CALICO_NETWORKING_BACKEND", "none"),
    ("FELIX_IPTABLESMANGLEALLOWACTION", "return"),
];

/// `handleAnnotations` and `handleNodeSelectors` for the kube-system calico-typha
/// Deployment (v1.17.4 core.go:243-252 and 318-351; v1.38.6 core.go:285-296 and 373-410):
/// annotations as for calico-node (its template may say
/// `cluster-autoscaler.kubernetes.io/safe-to-evict: "true"`); pod (anti-)affinity refused
/// before v1.31.0 (commit 0ec197d1 carries it into the Installation); a required node
/// affinity refused on every line; nodeSelector keys other than `[beta.]kubernetes.io/os`
/// = linux refused. `annotations` picks which half runs: the converter checks every
/// component's annotations before any nodeSelector.
fn check_typha(
    typha: &Value,
    version: (u32, u32, u32),
    annotations: bool,
) -> Result<(), OperatorRefusal> {
    if annotations {
        let a = unexpected_annotations(typha.pointer("/metadata/annotations"), &[], version);
        if !a.is_empty() {
            return Err(incompatible(
                format!("unexpected annotation '{}'", go_map(&a)),
                "remove the annotation from the component",
                TYPHA,
            ));
        }
        let a = unexpected_annotations(
            typha.pointer("/spec/template/metadata/annotations"),
            &[("cluster-autoscaler.kubernetes.io/safe-to-evict", "true")],
            version,
        );
        if !a.is_empty() {
            return Err(incompatible(
                format!("unexpected annotation '{}'", go_map(&a)),
                "remove the annotation from the component",
                &format!("{TYPHA} podTemplateSpec"),
            ));
        }
        return Ok(());
    }
    let affinity = typha.pointer("/spec/template/spec/affinity");
    let set = |k: &str| {
        affinity
            .and_then(|a| a.get(k))
            .is_some_and(|v| !v.is_null())
    };
    if version < (1, 31, 0) && (set("podAffinity") || set("podAntiAffinity")) {
        return Err(incompatible(
            "pod affinity and antiAffinity not supported for typha deployment".into(),
            "remove the affinity",
            TYPHA,
        ));
    }
    if affinity
        .and_then(|a| a.pointer("/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution"))
        .is_some_and(|v| !v.is_null())
    {
        return Err(incompatible(
            "nodeAffinity 'RequiredDuringSchedulingIgnoredDuringExecution' not supported on Typha"
                .into(),
            "remove the affinity",
            TYPHA,
        ));
    }
    let sel = non_os_selectors(typha.pointer("/spec/template/spec/nodeSelector"));
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

/// `removeOSNodeSelectors`: `[beta.]kubernetes.io/os` dropped when it says `linux`.
fn non_os_selectors(v: Option<&Value>) -> BTreeMap<String, String> {
    let mut m = string_map(v);
    m.retain(|k, v| !((k == "kubernetes.io/os" || k == "beta.kubernetes.io/os") && v == "linux"));
    m
}

/// Run the checks of the operator at image tag `operator_tag` on the kube-system
/// calico-node DaemonSet (and typha, when there is one) of an EKS cluster; Err is the
/// operator's error text.
pub fn check_daemonset(
    ds: &Value,
    typha: Option<&Value>,
    operator_tag: &str,
) -> Result<(), OperatorRefusal> {
    let version = version_of(operator_tag);
    let labels = string_map(ds.pointer("/metadata/labels"));
    if let Some(mode) = labels.get("addonmanager.kubernetes.io/mode") {
        return Err(incompatible(
            format!("'addonmanager.kubernetes.io/mode' label is set to '{mode}'"),
            "remove the addonmanager.kubernetes.io/mode label",
            COMPONENT,
        ));
    }
    let a = unexpected_annotations(ds.pointer("/metadata/annotations"), &[], version);
    if !a.is_empty() {
        return Err(incompatible(
            format!("unexpected annotation '{}'", go_map(&a)),
            "remove the annotation from the component",
            COMPONENT,
        ));
    }
    // "some orchestrators explicitly denote it anyways" (core.go:224-230 at v1.17.4).
    let a = unexpected_annotations(
        ds.pointer("/spec/template/metadata/annotations"),
        &[("cluster-autoscaler.kubernetes.io/daemonset-pod", "true")],
        version,
    );
    if !a.is_empty() {
        return Err(incompatible(
            format!("unexpected annotation '{}'", go_map(&a)),
            "remove the annotation from the component",
            &format!("{COMPONENT} podTemplateSpec"),
        ));
    }
    if let Some(t) = typha {
        check_typha(t, version, true)?;
    }
    let spec = ds
        .pointer("/spec/template/spec")
        .cloned()
        .unwrap_or(Value::Null);
    let accepted = |a: &Value| version >= (1, 25, 0) && is_eks_fargate_exclusion(a);
    if spec
        .get("affinity")
        .is_some_and(|a| !a.is_null() && !accepted(a))
    {
        return Err(incompatible(
            "node affinity not supported for calico-node daemonset".into(),
            "remove the affinity",
            COMPONENT,
        ));
    }
    let mut sel = non_os_selectors(spec.get("nodeSelector"));
    sel.remove(super::super::nodes::MIGRATION_LABEL);
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
    if let Some(t) = typha {
        check_typha(t, version, false)?;
    }
    let containers = spec
        .get("containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let Some(node) = containers.iter().find(|c| c["name"] == "calico-node") else {
        return Err(incompatible(
            format!("couldn't find container 'calico-node' in {COMPONENT}"),
            "restore the calico-node container if you've renamed or removed it",
            COMPONENT,
        ));
    };
    let env: Vec<(String, Option<String>)> = node["env"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or_default().to_string(),
                e["value"].as_str().map(String::from),
            )
        })
        .collect();
    let val = |k: &str| {
        env.iter()
            .find(|(n, _)| n == k)
            .and_then(|(_, v)| v.clone())
    };
    if val("DATASTORE_TYPE").is_some_and(|t| t != "kubernetes") {
        return Err(OperatorRefusal(
            "only DATASTORE_TYPE=kubernetes is supported".into(),
        ));
    }
    if val("FELIX_INTERFACEPREFIX").as_deref() == Some("eni") {
        for (k, want) in AMAZON_VPC_ENV {
            let have = val(k);
            if have.as_deref().map(str::to_lowercase).as_deref() != Some(*want) {
                return Err(incompatible(
                    format!(
                        "{k}={} is not supported",
                        have.unwrap_or_else(|| "<undefined>".into())
                    ),
                    // k8s.go:112-116: "remove the %s env var or set it to '%s'".
                    &format!("remove the {k} env var or set it to '{want}'"),
                    COMPONENT,
                ));
            }
        }
    }
    let unexpected: Vec<String> = env
        .iter()
        .filter(|(n, _)| !n.starts_with("FELIX_") && !KNOWN_ENV.contains(&n.as_str()))
        .map(|(n, _)| format!("calico-node/{n}"))
        .collect();
    if !unexpected.is_empty() {
        return Err(OperatorRefusal(format!(
            "unexpected env var: [{}]",
            unexpected.join(" ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::scenario::chart::{ChartValues, calico_node_daemonset};

    fn chart_ds() -> Value {
        let mut ds = calico_node_daemonset(&ChartValues::seed_organisation("aws-calico"));
        ds["metadata"]["annotations"] = serde_json::json!({
            "meta.helm.sh/release-name": "aws-calico", "meta.helm.sh/release-namespace": "kube-system",
            "deprecated.daemonset.template.generation": "1"});
        ds
    }

    fn set_env(ds: &mut Value, name: &str, value: &str) {
        if let Some(env) = ds["spec"]["template"]["spec"]["containers"][0]["env"].as_array_mut() {
            env.retain(|v| v["name"] != name);
            env.push(serde_json::json!({"name": name, "value": value}));
        }
    }

    #[test]
    fn refusals_in_order() {
        let mut ds = chart_ds();
        assert_eq!(
            check_daemonset(&ds, None, "v1.20.1"),
            Err(OperatorRefusal("unexpected annotation 'map[meta.helm.sh/release-name:aws-calico meta.helm.sh/release-namespace:kube-system]'. To fix it, remove the annotation from the component on daemonset/calico-node".into()))
        );
        ds["metadata"]["annotations"] =
            serde_json::json!({"deprecated.daemonset.template.generation": "1"});
        assert_eq!(
            check_daemonset(&ds, None, "v1.20.1"),
            Err(OperatorRefusal(
                "node affinity not supported for calico-node daemonset. To fix it, remove the affinity on daemonset/calico-node".into()
            ))
        );
        if let Some(m) = ds["spec"]["template"]["spec"].as_object_mut() {
            m.remove("affinity");
        }
        assert_eq!(check_daemonset(&ds, None, "v1.20.1"), Ok(()));
        if let Some(e) = ds["spec"]["template"]["spec"]["containers"][0]["env"].as_array_mut() {
            e.push(serde_json::json!({"name": "MY_VAR", "value": "1"}));
        }
        assert_eq!(
            check_daemonset(&ds, None, "v1.20.1"),
            Err(OperatorRefusal(
                "unexpected env var: [calico-node/MY_VAR]".into()
            ))
        );
        if let Some(e) = ds["spec"]["template"]["spec"]["containers"][0]["env"].as_array_mut() {
            e.retain(|v| v["name"] != "MY_VAR");
        }
        set_env(&mut ds, "FELIX_ROUTESOURCE", "CalicoIPAM");
        assert_eq!(
            check_daemonset(&ds, None, "v1.20.1"),
            Ok(()),
            "no release checks FELIX_ROUTESOURCE"
        );
        set_env(&mut ds, "FELIX_IPTABLESMANGLEALLOWACTION", "RETURN");
        assert_eq!(
            check_daemonset(&ds, None, "v1.20.1"),
            Ok(()),
            "compared lower-cased"
        );
        set_env(&mut ds, "FELIX_IPTABLESMANGLEALLOWACTION", "Accept");
        assert_eq!(
            check_daemonset(&ds, None, "v1.20.1"),
            Err(OperatorRefusal("FELIX_IPTABLESMANGLEALLOWACTION=Accept is not supported. To fix it, remove the FELIX_IPTABLESMANGLEALLOWACTION env var or set it to 'return' on daemonset/calico-node".into()))
        );
        set_env(&mut ds, "FELIX_IPTABLESMANGLEALLOWACTION", "Return");
        ds["spec"]["template"]["spec"]["nodeSelector"] =
            serde_json::json!({"team": "a", "kubernetes.io/os": "linux"});
        assert_eq!(
            check_daemonset(&ds, None, "v1.20.1"),
            Err(OperatorRefusal(
                "unsupported nodeSelector for calico-node daemonset: map[team:a]. To fix it, remove the nodeSelector on daemonset/calico-node".into()
            ))
        );
    }

    #[test]
    fn the_line_decides_kubectl_annotations_and_the_fargate_exclusion() {
        let mut ds = chart_ds();
        ds["metadata"]["annotations"] =
            serde_json::json!({"deprecated.daemonset.template.generation": "1"});
        ds["spec"]["template"]["metadata"]["annotations"] = serde_json::json!({
            "kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z",
            "cluster-autoscaler.kubernetes.io/daemonset-pod": "true"
        });
        // v1.38.6: restartedAt ignored (^kubectl\.kubernetes\.io), the chart's
        // Fargate exclusion accepted on EKS.
        assert_eq!(check_daemonset(&ds, None, "v1.38.6"), Ok(()));
        // v1.20.4: only last-applied is ignored.
        assert_eq!(
            check_daemonset(&ds, None, "v1.20.4"),
            Err(OperatorRefusal("unexpected annotation 'map[kubectl.kubernetes.io/restartedAt:2026-01-01T00:00:00Z]'. To fix it, remove the annotation from the component on daemonset/calico-node podTemplateSpec".into()))
        );
        ds["spec"]["template"]["metadata"]["annotations"] =
            serde_json::json!({"cluster-autoscaler.kubernetes.io/daemonset-pod": "true"});
        assert_eq!(
            check_daemonset(&ds, None, "v1.24.0"),
            Err(OperatorRefusal(
                "node affinity not supported for calico-node daemonset. To fix it, remove the affinity on daemonset/calico-node".into()
            ))
        );
        // Anything beside the exclusion: refused on every line.
        ds["spec"]["template"]["spec"]["affinity"]["podAffinity"] = serde_json::json!({});
        assert_eq!(
            check_daemonset(&ds, None, "v1.38.6"),
            Err(OperatorRefusal(
                "node affinity not supported for calico-node daemonset. To fix it, remove the affinity on daemonset/calico-node".into()
            ))
        );
        assert_eq!(version_of("v1.38.6"), (1, 38, 6));
        assert_eq!(version_of("latest"), (0, 0, 0));
    }

    #[test]
    fn typha_is_checked_like_the_tags_do() {
        let mut ds = chart_ds();
        ds["metadata"]["annotations"] = serde_json::json!({});
        if let Some(m) = ds["spec"]["template"]["spec"].as_object_mut() {
            m.remove("affinity");
        }
        let chart_typha = serde_json::json!({"metadata": {"annotations":
                {"meta.helm.sh/release-name": "aws-calico"}},
            "spec": {"template": {
                "metadata": {"annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "true"}},
                "spec": {"nodeSelector": {"beta.kubernetes.io/os": "linux"}}}}});
        assert_eq!(
            check_daemonset(&ds, Some(&chart_typha), "v1.20.1"),
            Err(OperatorRefusal("unexpected annotation 'map[meta.helm.sh/release-name:aws-calico]'. To fix it, remove the annotation from the component on deployment/calico-typha".into()))
        );
        let mut t = chart_typha;
        t["metadata"]["annotations"] = serde_json::json!({});
        assert_eq!(check_daemonset(&ds, Some(&t), "v1.20.1"), Ok(()));
        t["spec"]["template"]["spec"]["affinity"] = serde_json::json!({"podAntiAffinity": {}});
        assert_eq!(
            check_daemonset(&ds, Some(&t), "v1.20.1"),
            Err(OperatorRefusal("pod affinity and antiAffinity not supported for typha deployment. To fix it, remove the affinity on deployment/calico-typha".into()))
        );
        assert_eq!(check_daemonset(&ds, Some(&t), "v1.38.6"), Ok(()));
        t["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/os"] =
            serde_json::json!("windows");
        assert_eq!(
            check_daemonset(&ds, Some(&t), "v1.38.6"),
            Err(OperatorRefusal("invalid nodeSelector for typha deployment: map[kubernetes.io/os:windows]. To fix it, remove the nodeSelector on deployment/calico-typha".into()))
        );
    }
}
