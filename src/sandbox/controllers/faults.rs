//! Faults of the simulated cluster behaviour (the API faults live in
//! `sandbox::apiserver::faults`, the shape all share in `sandbox::faults`).
//! Set at start with `--fault SPEC` and changed while running through ConfigMap `sandbox-system/controller-faults`, whose data
//! keys are the knobs. The controllers read it every tick; a knob whose value
//! does not parse counts as off and the error is reported in the ConfigMap's
//! annotation `sandbox.calico-migrate.io/error` (the store cannot refuse the write).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::wopts;
use crate::sandbox::faults::{FaultKnobs, NAMESPACE, configmaps, knob_of};
use crate::sandbox::{PatchKind, Store};

pub const CONFIGMAP: &str = "controller-faults";
pub const ERROR_ANNOTATION: &str = "sandbox.calico-migrate.io/error";

/// The knobs these controllers own.
pub const KNOBS: &[&str] = &[
    "operator-stall",
    "typha-stuck",
    "node-join",
    "agent-not-ready",
];

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ControllerFaults {
    /// `operator-stall:NODE`: the operator never relabels NODE `migrated` and stops there.
    pub operator_stall: Option<String>,
    /// `typha-stuck` (or `typha-stuck:true`): calico-system typha pods cannot be
    /// scheduled (host port 5473 still taken, calico issue 6810).
    pub typha_stuck: bool,
    /// `node-join:N`: one new node joins once N nodes are labelled `migrated`.
    pub node_join_after: Option<usize>,
    /// `agent-not-ready:NODE` (repeatable): the calico-system calico-node pod on NODE never becomes ready.
    pub agent_not_ready: BTreeSet<String>,
}

/// Whether a `--fault` spec belongs to these controllers (by its knob).
pub fn is_controller_fault(spec: &str) -> bool {
    KNOBS.contains(&knob_of(spec))
}

/// A controller fault spec or ConfigMap value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControllerFaultError {
    #[error(
        "fault typha-stuck: \"{value}\" is not true or false, e.g. typha-stuck or typha-stuck:false"
    )]
    NotABool { value: String },
    #[error(
        "fault node-join: \"{value}\" is not a whole number of migrated nodes, e.g. node-join:2"
    )]
    NotANodeCount { value: String },
    #[error(
        "unknown controller fault \"{knob}\": the knobs are operator-stall:NODE, typha-stuck, node-join:N, agent-not-ready:NODE"
    )]
    UnknownKnob { knob: String },
    #[error(
        "fault agent-not-ready needs a node name, e.g. agent-not-ready:ip-10-0-0-10.eu-west-1.compute.internal"
    )]
    NoNode,
    #[error("fault \"{spec}\" needs a value: operator-stall:NODE or node-join:N")]
    NoValue { spec: String },
}

impl ControllerFaults {
    /// Parse `--fault` specs (only those of [`KNOBS`]); `agent-not-ready` accumulates.
    pub fn parse_specs(specs: &[String]) -> Result<Self, ControllerFaultError> {
        let mut c = Self::default();
        for s in specs {
            let (k, v) = s.split_once(':').unwrap_or((s.as_str(), ""));
            if k.trim() == "agent-not-ready" {
                if v.trim().is_empty() {
                    return Err(ControllerFaultError::NoNode);
                }
                c.agent_not_ready.insert(v.trim().to_string());
                continue;
            }
            if matches!(k.trim(), "operator-stall" | "node-join") && v.trim().is_empty() {
                return Err(ControllerFaultError::NoValue { spec: s.clone() });
            }
            c.set(k, v)?;
        }
        Ok(c)
    }
}

impl FaultKnobs for ControllerFaults {
    const CONFIGMAP: &'static str = CONFIGMAP;
    type Error = ControllerFaultError;

    /// Apply one knob; an empty value turns it off.
    fn set(&mut self, knob: &str, value: &str) -> Result<(), ControllerFaultError> {
        let v = value.trim();
        match knob.trim() {
            "operator-stall" => {
                self.operator_stall = (!v.is_empty()).then(|| v.to_string());
            }
            "typha-stuck" => {
                self.typha_stuck = match v {
                    "" | "true" => true,
                    "false" | "0" | "off" => false,
                    _ => {
                        return Err(ControllerFaultError::NotABool {
                            value: v.to_string(),
                        });
                    }
                }
            }
            "node-join" => {
                self.node_join_after = if v.is_empty() {
                    None
                } else {
                    Some(v.parse().map_err(|_| ControllerFaultError::NotANodeCount {
                        value: v.to_string(),
                    })?)
                }
            }
            "agent-not-ready" => {
                self.agent_not_ready = v
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
            }
            other => {
                return Err(ControllerFaultError::UnknownKnob {
                    knob: other.to_string(),
                });
            }
        }
        Ok(())
    }

    fn to_data(&self) -> Value {
        json!({
            "operator-stall": self.operator_stall.clone().unwrap_or_default(),
            "typha-stuck": self.typha_stuck.to_string(),
            "node-join": self.node_join_after.map(|n| n.to_string()).unwrap_or_default(),
            "agent-not-ready": self.agent_not_ready.iter().cloned().collect::<Vec<_>>().join(","),
        })
    }

    /// The settings in force. An invalid ConfigMap keeps every knob that parses on
    /// its own (the others at their defaults) and reports the error in an
    /// annotation on the ConfigMap, cleared once it is valid again.
    fn read(store: &Store) -> Self {
        let g = configmaps();
        let Ok(cm) = store.get(&g, NAMESPACE, CONFIGMAP) else {
            return Self::default();
        };
        let reported = cm
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(ERROR_ANNOTATION))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let report = |error: Value| {
            let _ = store.patch(
                &g,
                NAMESPACE,
                CONFIGMAP,
                PatchKind::Merge,
                json!({"metadata": {"annotations": {ERROR_ANNOTATION: error}}})
                    .to_string()
                    .as_bytes(),
                &wopts("sandbox-controllers"),
            );
        };
        match Self::from_data(cm.get("data")) {
            Ok(f) => {
                if !reported.is_empty() {
                    report(Value::Null);
                }
                f
            }
            Err(e) => {
                let e = e.to_string();
                if reported != e {
                    report(json!(e));
                }
                // Keep what parses: each knob on its own.
                let mut c = Self::default();
                if let Some(Value::Object(m)) = cm.get("data") {
                    for (k, v) in m {
                        let _ = c.set(k, v.as_str().unwrap_or_default());
                    }
                }
                c
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_reject() {
        let f = ControllerFaults::parse_specs(&[
            "operator-stall:n1".into(),
            "typha-stuck".into(),
            "node-join:2".into(),
            "agent-not-ready:a".into(),
            "agent-not-ready:b".into(),
        ]);
        let f = f.unwrap_or_default();
        assert_eq!(f.operator_stall.as_deref(), Some("n1"));
        assert!(f.typha_stuck);
        assert_eq!(f.node_join_after, Some(2));
        assert_eq!(f.agent_not_ready.len(), 2);
        assert_eq!(ControllerFaults::from_data(Some(&f.to_data())), Ok(f));
        assert!(ControllerFaults::parse_specs(&["node-join:x".into()]).is_err());
        assert!(ControllerFaults::parse_specs(&["operator-stall".into()]).is_err());
        assert!(ControllerFaults::parse_specs(&["typha-stuck:maybe".into()]).is_err());
        assert!(is_controller_fault("typha-stuck"));
        assert!(!is_controller_fault("latency:5"));
        assert!(!is_controller_fault("lapse:n1"));
    }
}
