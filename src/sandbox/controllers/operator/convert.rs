//! The converter's refusals, in the operator's words (tigera/operator
//! pkg/controller/migration/convert: errors.go `ErrIncompatibleCluster`
//! formats "<err>. To fix it, <fix> on <component>"; core_metadata.go
//! allow-list of annotations; the nodeSelector/affinity handler; convert.go
//! "unexpected env var"; cni.go / network.go for the AmazonVPC values).
//! installation/core_controller.go reports them as Degraded/MigrationError
//! with [`DEGRADED_PREFIX`] + ": " + the error.

use std::collections::BTreeMap;

use serde_json::Value;

pub const DEGRADED_PREFIX: &str = "Existing Calico installation can not be managed by Tigera Operator as it is configured in a way that Operator does not currently support. Please update your existing Calico install config";

const COMPONENT: &str = "daemonset/calico-node";

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

/// core_metadata.go `removeKubernetesAnnotations`: what the operator tolerates.
fn unexpected_annotations(v: Option<&Value>) -> BTreeMap<String, String> {
    let mut m = string_map(v);
    m.retain(|k, _| {
        !(k == "deprecated.daemonset.template.generation"
            || k == "deployment.kubernetes.io/revision"
            || k == "scheduler.alpha.kubernetes.io/critical-pod"
            || k.starts_with("kubectl.kubernetes.io"))
    });
    m
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

/// Run the checks on the kube-system calico-node DaemonSet; Err is the operator's error text.
pub fn check_daemonset(ds: &Value) -> Result<(), OperatorRefusal> {
    let labels = string_map(ds.pointer("/metadata/labels"));
    if let Some(mode) = labels.get("addonmanager.kubernetes.io/mode") {
        return Err(incompatible(
            format!("'addonmanager.kubernetes.io/mode' label is set to '{mode}'"),
            "remove the addonmanager.kubernetes.io/mode label",
            COMPONENT,
        ));
    }
    let a = unexpected_annotations(ds.pointer("/metadata/annotations"));
    if !a.is_empty() {
        return Err(incompatible(
            format!("unexpected annotation '{}'", go_map(&a)),
            "remove the annotation from the component",
            COMPONENT,
        ));
    }
    let a = unexpected_annotations(ds.pointer("/spec/template/metadata/annotations"));
    if !a.is_empty() {
        return Err(incompatible(
            format!("unexpected annotation '{}'", go_map(&a)),
            "remove the annotation from the component",
            &format!("{COMPONENT} podTemplateSpec"),
        ));
    }
    let spec = ds
        .pointer("/spec/template/spec")
        .cloned()
        .unwrap_or(Value::Null);
    if spec.get("affinity").is_some_and(|a| !a.is_null()) {
        return Err(OperatorRefusal(
            "node affinity not supported for calico-node daemonset".into(),
        ));
    }
    let mut sel = string_map(spec.get("nodeSelector"));
    sel.retain(|k, _| {
        k != "kubernetes.io/os"
            && k != "beta.kubernetes.io/os"
            && k != super::super::nodes::MIGRATION_LABEL
    });
    if !sel.is_empty() {
        return Err(OperatorRefusal(format!(
            "unsupported nodeSelector for calico-node daemonset: {}",
            go_map(&sel)
        )));
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
            check_daemonset(&ds),
            Err(OperatorRefusal("unexpected annotation 'map[meta.helm.sh/release-name:aws-calico meta.helm.sh/release-namespace:kube-system]'. To fix it, remove the annotation from the component on daemonset/calico-node".into()))
        );
        ds["metadata"]["annotations"] =
            serde_json::json!({"deprecated.daemonset.template.generation": "1"});
        assert_eq!(
            check_daemonset(&ds),
            Err(OperatorRefusal(
                "node affinity not supported for calico-node daemonset".into()
            ))
        );
        if let Some(m) = ds["spec"]["template"]["spec"].as_object_mut() {
            m.remove("affinity");
        }
        assert_eq!(check_daemonset(&ds), Ok(()));
        if let Some(e) = ds["spec"]["template"]["spec"]["containers"][0]["env"].as_array_mut() {
            e.push(serde_json::json!({"name": "MY_VAR", "value": "1"}));
        }
        assert_eq!(
            check_daemonset(&ds),
            Err(OperatorRefusal(
                "unexpected env var: [calico-node/MY_VAR]".into()
            ))
        );
        if let Some(e) = ds["spec"]["template"]["spec"]["containers"][0]["env"].as_array_mut() {
            e.retain(|v| v["name"] != "MY_VAR");
        }
        set_env(&mut ds, "FELIX_ROUTESOURCE", "CalicoIPAM");
        assert_eq!(
            check_daemonset(&ds),
            Ok(()),
            "no release checks FELIX_ROUTESOURCE"
        );
        set_env(&mut ds, "FELIX_IPTABLESMANGLEALLOWACTION", "RETURN");
        assert_eq!(check_daemonset(&ds), Ok(()), "compared lower-cased");
        set_env(&mut ds, "FELIX_IPTABLESMANGLEALLOWACTION", "Accept");
        assert_eq!(
            check_daemonset(&ds),
            Err(OperatorRefusal("FELIX_IPTABLESMANGLEALLOWACTION=Accept is not supported. To fix it, remove the FELIX_IPTABLESMANGLEALLOWACTION env var or set it to 'return' on daemonset/calico-node".into()))
        );
        set_env(&mut ds, "FELIX_IPTABLESMANGLEALLOWACTION", "Return");
        ds["spec"]["template"]["spec"]["nodeSelector"] =
            serde_json::json!({"team": "a", "kubernetes.io/os": "linux"});
        assert_eq!(
            check_daemonset(&ds),
            Err(OperatorRefusal(
                "unsupported nodeSelector for calico-node daemonset: map[team:a]".into()
            ))
        );
    }
}
