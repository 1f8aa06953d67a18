//! Data-plane faults: `lapse:NODE`, `agent-not-ready:NODE` and `conn-reset:NODE`, set
//! at start (`--fault SPEC`) and changed while running through ConfigMap
//! `sandbox-system/dataplane-faults` (keys `lapse`, `agent-not-ready` and `conn-reset`,
//! values comma-separated node names). They live apart from the API faults of
//! `sandbox::apiserver::faults` so that each ConfigMap only holds the knobs its
//! reader knows; the shape all share is `sandbox::faults`.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::sandbox::Store;
use crate::sandbox::faults::{FaultKnobs, NAMESPACE, configmaps, knob_of};

/// The ConfigMap holding the live data-plane faults (in `sandbox-system`).
pub const CONFIGMAP: &str = "dataplane-faults";
/// The knobs of ConfigMap `dataplane-faults`.
pub const KNOBS: [&str; 3] = ["lapse", "agent-not-ready", "conn-reset"];
/// The `--fault` knobs routed to the data plane by `calico-migrate sandbox`;
/// `agent-not-ready` there belongs to the controllers, which keep the pod unready.
pub const CLI_KNOBS: [&str; 2] = ["lapse", "conn-reset"];
/// The controllers' fault ConfigMap (`sandbox-system/controller-faults`): its
/// `agent-not-ready` key (comma-separated nodes) is honoured here too.
pub const CONTROLLER_CONFIGMAP: &str = "controller-faults";

/// Nodes under each data-plane fault.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataPlaneFaults {
    /// Nodes whose enforcement lapses to allow-all.
    pub lapse: BTreeSet<String>,
    /// Nodes where a new calico-node never becomes ready (the enforcing one, if any, stays).
    pub agent_not_ready: BTreeSet<String>,
    /// Nodes whose next agent resets the established flows through them when it takes
    /// over (a data plane that keeps no conntrack state across the swap): held
    /// connections there end `BROKEN n closed`. New connections are unaffected.
    pub conn_reset: BTreeSet<String>,
}

/// Whether a `--fault` spec (`KNOB:VALUE`) is routed to the data plane by the CLI.
pub fn is_dataplane_spec(spec: &str) -> bool {
    CLI_KNOBS.contains(&knob_of(spec))
}

/// Nodes named by the controllers' `agent-not-ready` knob (unreadable values: none).
pub fn controller_blocked(configmap_data: Option<&Value>) -> BTreeSet<String> {
    configmap_data
        .and_then(|d| d.get("agent-not-ready"))
        .and_then(Value::as_str)
        .and_then(|v| node_list("agent-not-ready", v).ok())
        .unwrap_or_default()
}

/// A data-plane fault spec or ConfigMap value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataPlaneFaultError {
    #[error("fault {knob}: \"{node}\" is not a node name; give {knob}:NODE[,NODE...]")]
    NotANodeName { knob: String, node: String },
    #[error("fault {knob}: no node given; use {knob}:NODE")]
    NoNode { knob: String },
    #[error(
        "unknown data-plane fault \"{knob}\": the knobs are lapse:NODE, agent-not-ready:NODE and conn-reset:NODE"
    )]
    UnknownKnob { knob: String },
    #[error("fault \"{spec}\" is not KNOB:NODE, e.g. lapse:NODE")]
    NotKnobNode { spec: String },
    #[error(
        "ConfigMap {NAMESPACE}/{CONFIGMAP}: unknown key \"{key}\"; the keys are lapse, agent-not-ready and conn-reset"
    )]
    UnknownKey { key: String },
}

fn node_list(knob: &str, v: &str) -> Result<BTreeSet<String>, DataPlaneFaultError> {
    let mut out = BTreeSet::new();
    for n in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if n.contains(char::is_whitespace) || n.contains(':') {
            return Err(DataPlaneFaultError::NotANodeName {
                knob: knob.to_string(),
                node: n.to_string(),
            });
        }
        out.insert(n.to_string());
    }
    Ok(out)
}

impl DataPlaneFaults {
    /// Parse specs such as `lapse:ip-10-0-0-10.eu-west-1.compute.internal`.
    pub fn parse_specs(specs: &[String]) -> Result<Self, DataPlaneFaultError> {
        let mut f = Self::default();
        for s in specs {
            let (k, v) = s
                .split_once(':')
                .ok_or_else(|| DataPlaneFaultError::NotKnobNode { spec: s.clone() })?;
            f.set(k, v)?;
        }
        Ok(f)
    }
}

impl FaultKnobs for DataPlaneFaults {
    const CONFIGMAP: &'static str = CONFIGMAP;
    type Error = DataPlaneFaultError;

    /// Add one `knob:NODE[,NODE...]` setting.
    fn set(&mut self, knob: &str, value: &str) -> Result<(), DataPlaneFaultError> {
        let nodes = node_list(knob.trim(), value)?;
        if nodes.is_empty() {
            return Err(DataPlaneFaultError::NoNode {
                knob: knob.trim().to_string(),
            });
        }
        match knob.trim() {
            "lapse" => self.lapse.extend(nodes),
            "agent-not-ready" => self.agent_not_ready.extend(nodes),
            "conn-reset" => self.conn_reset.extend(nodes),
            other => {
                return Err(DataPlaneFaultError::UnknownKnob {
                    knob: other.to_string(),
                });
            }
        }
        Ok(())
    }

    /// From the ConfigMap's `data` (empty values mean no node).
    fn from_data(data: Option<&Value>) -> Result<Self, DataPlaneFaultError> {
        let mut f = Self::default();
        if let Some(Value::Object(m)) = data {
            for (k, v) in m {
                let v = v.as_str().unwrap_or_default();
                match k.as_str() {
                    "lapse" => f.lapse = node_list(k, v)?,
                    "agent-not-ready" => f.agent_not_ready = node_list(k, v)?,
                    "conn-reset" => f.conn_reset = node_list(k, v)?,
                    other => {
                        return Err(DataPlaneFaultError::UnknownKey {
                            key: other.to_string(),
                        });
                    }
                }
            }
        }
        Ok(f)
    }

    fn to_data(&self) -> Value {
        let join = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(",");
        json!({"lapse": join(&self.lapse), "agent-not-ready": join(&self.agent_not_ready),
               "conn-reset": join(&self.conn_reset)})
    }
}

/// Whether a new calico-node on `node` must never report Ready (`agent-not-ready:NODE`).
/// Controllers that set pod readiness read this; the data plane honours it either way.
/// Both this module's ConfigMap and the controllers' are read.
pub fn agent_blocked(store: &Store, node: &str) -> bool {
    let by_controllers = store
        .get(&configmaps(), NAMESPACE, CONTROLLER_CONFIGMAP)
        .ok()
        .is_some_and(|cm| controller_blocked(cm.get("data")).contains(node));
    by_controllers || DataPlaneFaults::read(store).agent_not_ready.contains(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip_through_the_configmap() {
        let f = DataPlaneFaults::parse_specs(&["lapse:a,b".into(), "agent-not-ready:c".into()])
            .unwrap();
        assert_eq!(f.lapse.len(), 2);
        let cm = f.to_configmap();
        assert_eq!(DataPlaneFaults::from_data(cm.get("data")).unwrap(), f);
    }

    #[test]
    fn bad_specs_are_explained() {
        assert!(DataPlaneFaults::parse_specs(&["lapse".into()]).is_err());
        assert!(DataPlaneFaults::parse_specs(&["lapse:".into()]).is_err());
        let e = DataPlaneFaults::parse_specs(&["stall:a".into()]).unwrap_err();
        assert!(e.to_string().contains("lapse:NODE"), "{e}");
        assert!(is_dataplane_spec("lapse:x") && !is_dataplane_spec("latency:5"));
        assert!(
            !is_dataplane_spec("agent-not-ready:x"),
            "the controllers' knob on the CLI"
        );
        let data = json!({"agent-not-ready": "a, b", "typha-stuck": "true"});
        assert_eq!(controller_blocked(Some(&data)).len(), 2);
    }
}
