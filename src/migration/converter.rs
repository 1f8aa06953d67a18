//! A prediction of what the Tigera Operator's migration converter refuses, applied to
//! the live kube-system `calico-node` DaemonSet. Source: tigera/operator
//! `pkg/controller/migration/convert/*` (annotations, nodeSelector, affinity, env
//! checks; `convert.go` ends with "unexpected env var" for any env var no handler
//! checked) as docs/upstream.md, "Converter refusals" lists them; what is marked
//! "inferred" there is predicted conservatively (refused), because a refusal found
//! mid-window costs more than a false alarm in the plan.

use serde_json::Value;

use super::facts::str_at;

/// Annotations the converter ignores on calico-node and its pod template: tigera/operator
/// `pkg/controller/migration/convert/core.go` `removeExpectedAnnotations` (v1.17.4 and
/// v1.20.4 core.go:258-275: these four by name; v1.38.6 core.go:298-325 the first
/// three by name and every key matching `^kubectl\.kubernetes\.io`, core.go:34). Any
/// other annotation is refused (`handleAnnotations`, v1.17.4 core.go:219-232, v1.38.6
/// core.go:261-274), Helm's `meta.helm.sh/*` included, on every line: no release copies
/// annotations into the Installation. Other `kubectl.kubernetes.io/*` keys (the
/// `restartedAt` of `kubectl rollout restart`) are predicted refused, as v1.17 and
/// v1.20 do.
pub const ALLOWED_ANNOTATIONS: [&str; 4] = [
    "deprecated.daemonset.template.generation",
    "deployment.kubernetes.io/revision",
    "scheduler.alpha.kubernetes.io/critical-pod",
    "kubectl.kubernetes.io/last-applied-configuration",
];
/// Pod-template annotations ignored with exactly this value (core.go:228-230 at
/// v1.17.4, 270-272 at v1.38.6: "some orchestrators explicitly denote it").
pub const ALLOWED_TEMPLATE_ANNOTATION: (&str, &str) =
    ("cluster-autoscaler.kubernetes.io/daemonset-pod", "true");
/// nodeSelector keys the converter accepts (OS selectors only).
pub const ALLOWED_NODE_SELECTORS: [&str; 2] = ["kubernetes.io/os", "beta.kubernetes.io/os"];
/// Env vars the converter understands for a kdd + AmazonVPC install; FELIX_* vars
/// are carried into FelixConfiguration `default` and are not refused.
pub const KNOWN_ENV: [&str; 12] = [
    "DATASTORE_TYPE",
    "WAIT_FOR_DATASTORE",
    "NODENAME",
    "CALICO_NETWORKING_BACKEND",
    "CLUSTER_TYPE",
    "IP",
    "IP6",
    "NO_DEFAULT_POOLS",
    "CALICO_DISABLE_FILE_LOGGING",
    "CALICO_MANAGE_CNI",
    "TYPHA_K8SSERVICENAME",
    "USE_POD_CIDR",
];
/// Values the AmazonVPC mapping requires (docs/upstream.md, "Converter refusals";
/// the chart's rendered env).
pub const REQUIRED_ENV: [(&str, &str); 4] = [
    ("DATASTORE_TYPE", "kubernetes"),
    ("FELIX_INTERFACEPREFIX", "eni"),
    ("CALICO_NETWORKING_BACKEND", "none"),
    ("NO_DEFAULT_POOLS", "true"),
];

/// One predicted refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Annotations outside the allow-list, on the object or the pod template.
    Annotations { on: &'static str, keys: Vec<String> },
    /// The EKS Fargate exclusion (required node affinity NotIn [fargate]).
    FargateAffinity,
    /// Some other node affinity.
    NodeAffinity,
    /// nodeSelector keys other than the OS.
    NodeSelector { keys: Vec<String> },
    /// Env vars the converter does not know.
    UnexpectedEnv { names: Vec<String> },
    /// Env values the AmazonVPC mapping cannot accept.
    EnvValue {
        name: String,
        found: String,
        want: String,
    },
    /// The addon-manager label.
    AddonManager,
}

/// Predict every refusal for the live DaemonSet.
pub fn predict(ds: &Value) -> Vec<Refusal> {
    let mut out = Vec::new();
    for (on, ptr) in [
        ("DaemonSet", "/metadata/annotations"),
        ("pod template", "/spec/template/metadata/annotations"),
    ] {
        let template = on == "pod template";
        let (allowed_key, allowed_value) = ALLOWED_TEMPLATE_ANNOTATION;
        let keys: Vec<String> = ds
            .pointer(ptr)
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| !ALLOWED_ANNOTATIONS.contains(&k.as_str()))
                    .filter(|(k, v)| !(template && *k == allowed_key && *v == allowed_value))
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        if !keys.is_empty() {
            out.push(Refusal::Annotations { on, keys });
        }
    }
    let affinity = ds.pointer("/spec/template/spec/affinity/nodeAffinity");
    if let Some(a) = affinity.filter(|a| a.as_object().is_some_and(|m| !m.is_empty())) {
        out.push(if is_fargate_exclusion(a) {
            Refusal::FargateAffinity
        } else {
            Refusal::NodeAffinity
        });
    }
    let sel: Vec<String> = ds
        .pointer("/spec/template/spec/nodeSelector")
        .and_then(Value::as_object)
        .map(|m| {
            m.keys()
                .filter(|k| !ALLOWED_NODE_SELECTORS.contains(&k.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    if !sel.is_empty() {
        out.push(Refusal::NodeSelector { keys: sel });
    }
    let env = calico_node_env(ds);
    let unexpected: Vec<String> = env
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| !n.starts_with("FELIX_") && !KNOWN_ENV.contains(&n.as_str()))
        .collect();
    if !unexpected.is_empty() {
        out.push(Refusal::UnexpectedEnv { names: unexpected });
    }
    for (name, want) in REQUIRED_ENV {
        let found = env
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "(unset)".into());
        if !found.eq_ignore_ascii_case(want) {
            out.push(Refusal::EnvValue {
                name: name.into(),
                found,
                want: want.into(),
            });
        }
    }
    let addon = |p: &str| {
        ds.pointer(p)
            .and_then(Value::as_object)
            .is_some_and(|m| m.contains_key("addonmanager.kubernetes.io/mode"))
    };
    if addon("/metadata/labels") || addon("/spec/template/metadata/labels") {
        out.push(Refusal::AddonManager);
    }
    out
}

/// The chart's exclusion: one required term, one expression `compute-type NotIn [fargate]`.
fn is_fargate_exclusion(a: &Value) -> bool {
    let terms = a
        .pointer("/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
        .and_then(Value::as_array);
    let preferred = a.get("preferredDuringSchedulingIgnoredDuringExecution");
    terms.is_some_and(|ts| {
        ts.len() == 1
            && ts[0]
                .pointer("/matchExpressions")
                .and_then(Value::as_array)
                .is_some_and(|es| {
                    es.len() == 1
                        && str_at(&es[0], "/key") == Some(crate::kinds::FARGATE_LABEL)
                        && str_at(&es[0], "/operator") == Some("NotIn")
                })
    }) && preferred.is_none()
}

/// (name, literal value) of the calico-node container's env; valueFrom reads as "(from ...)".
pub fn calico_node_env(ds: &Value) -> Vec<(String, String)> {
    let containers = ds
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let c = containers
        .iter()
        .find(|c| str_at(c, "/name") == Some("calico-node"))
        .or(containers.first());
    c.and_then(|c| c.get("env"))
        .and_then(Value::as_array)
        .map(|env| {
            env.iter()
                .filter_map(|e| {
                    let name = str_at(e, "/name")?.to_string();
                    let value = match e.get("value") {
                        Some(v) => v.as_str().unwrap_or("").to_string(),
                        None if e.get("valueFrom").is_some() => "(from reference)".into(),
                        None => String::new(),
                    };
                    Some((name, value))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ds(extra_env: Value, annotations: Value) -> Value {
        let mut env = vec![
            json!({"name": "DATASTORE_TYPE", "value": "kubernetes"}),
            json!({"name": "FELIX_INTERFACEPREFIX", "value": "eni"}),
            json!({"name": "CALICO_NETWORKING_BACKEND", "value": "none"}),
            json!({"name": "NO_DEFAULT_POOLS", "value": "true"}),
            json!({"name": "NODENAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}),
        ];
        if let Some(a) = extra_env.as_array() {
            env.extend(a.iter().cloned());
        }
        json!({"metadata": {"annotations": annotations},
               "spec": {"template": {"spec": {"containers": [{"name": "calico-node", "env": env}]}}}})
    }

    #[test]
    fn clean_daemonset_passes() {
        let d = ds(
            json!([]),
            json!({"deprecated.daemonset.template.generation": "1"}),
        );
        assert_eq!(predict(&d), vec![]);
    }

    #[test]
    fn refusals_are_found() {
        let mut d = ds(
            json!([{"name": "MY_FLAG", "value": "1"}, {"name": "FELIX_LOGSEVERITYSCREEN", "value": "info"}]),
            json!({"meta.helm.sh/release-name": "calico"}),
        );
        d["spec"]["template"]["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "eks.amazonaws.com/compute-type", "operator": "NotIn", "values": ["fargate"]}]}]}}});
        d["spec"]["template"]["spec"]["nodeSelector"] =
            json!({"kubernetes.io/os": "linux", "team": "a"});
        let r = predict(&d);
        assert!(r.contains(&Refusal::FargateAffinity));
        assert!(r.contains(&Refusal::UnexpectedEnv {
            names: vec!["MY_FLAG".into()]
        }));
        assert!(r.contains(&Refusal::NodeSelector {
            keys: vec!["team".into()]
        }));
        assert!(r.iter().any(|x| matches!(
            x,
            Refusal::Annotations {
                on: "DaemonSet",
                ..
            }
        )));
    }

    #[test]
    fn wrong_interface_prefix_is_refused() {
        let mut d = ds(json!([]), json!({}));
        d["spec"]["template"]["spec"]["containers"][0]["env"][1]["value"] = json!("cali");
        assert!(predict(&d).iter().any(
            |r| matches!(r, Refusal::EnvValue { name, .. } if name == "FELIX_INTERFACEPREFIX")
        ));
    }

    #[test]
    fn the_autoscaler_daemonset_pod_annotation_passes_only_on_the_template_as_true() {
        let mut d = ds(json!([]), json!({}));
        let key = "cluster-autoscaler.kubernetes.io/daemonset-pod";
        d["spec"]["template"]["metadata"] = json!({"annotations": {key: "true"}});
        assert_eq!(predict(&d), vec![]);
        d["spec"]["template"]["metadata"]["annotations"][key] = json!("false");
        assert_eq!(
            predict(&d),
            vec![Refusal::Annotations {
                on: "pod template",
                keys: vec![key.into()]
            }]
        );
        let on_object = ds(json!([]), json!({key: "true"}));
        assert_eq!(
            predict(&on_object),
            vec![Refusal::Annotations {
                on: "DaemonSet",
                keys: vec![key.into()]
            }]
        );
    }
}
