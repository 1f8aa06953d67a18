//! [`ClusterModel`]: the objects the evaluator reads, collected from JSON values or YAML.

use std::collections::HashSet;

use serde_json::Value;

use super::error::{InputError, Origin};
use super::model::{Namespace, NetworkSet, Node, Pod, Policy, Tier};
use super::parse::{ObjectRecord, Parsed, list_items, parse_object};

/// Namespaces, pods, nodes, network sets, tiers and policies, plus the raw records of
/// policy-like objects (for policy-set comparison).
#[derive(Debug, Clone, Default)]
pub struct ClusterModel {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub nodes: Vec<Node>,
    pub network_sets: Vec<NetworkSet>,
    pub tiers: Vec<Tier>,
    pub policies: Vec<Policy>,
    /// Where each entry of `policies` came from (same index).
    pub policy_origins: Vec<Origin>,
    pub records: Vec<ObjectRecord>,
    seen: HashSet<(String, Option<String>, String)>,
}

impl ClusterModel {
    pub fn new() -> ClusterModel {
        ClusterModel::default()
    }

    /// Build from objects as the sandbox stores them; errors name `objects[i]`.
    pub fn from_values(objects: &[Value]) -> Result<ClusterModel, InputError> {
        let mut m = ClusterModel::new();
        for (i, obj) in objects.iter().enumerate() {
            m.add_value(
                obj,
                &Origin {
                    source: "objects".into(),
                    document: i,
                },
            )?;
        }
        Ok(m)
    }

    /// Add every document of a multi-document YAML text. `source` names it in errors.
    pub fn add_yaml(&mut self, text: &str, source: &str) -> Result<(), InputError> {
        // YAML 1.2 booleans: a label value like `y` or `on` stays a string.
        // Limits scale with the text (already in memory): a cluster dump holds tens of
        // thousands of documents; the alias limits still stop expansion bombs.
        let size = text.len().max(1024);
        let options = serde_saphyr::options! {
            strict_booleans: true,
            budget: serde_saphyr::budget! { max_documents: size, max_nodes: size, max_events: 4 * size },
        };
        let docs: Vec<Value> =
            serde_saphyr::from_multiple_with_options(text, options).map_err(|e| InputError {
                origin: Origin {
                    source: source.into(),
                    document: 0,
                },
                field: "(document)".into(),
                message: format!("not valid YAML: {e}"),
            })?;
        let mut index = 0;
        for doc in docs {
            if doc.is_null() {
                continue;
            }
            self.add_value(
                &doc,
                &Origin {
                    source: source.into(),
                    document: index,
                },
            )?;
            index += 1;
        }
        Ok(())
    }

    /// Add one object (a `List` adds its items).
    pub fn add_value(&mut self, obj: &Value, origin: &Origin) -> Result<(), InputError> {
        if !obj.is_object() {
            return Err(InputError::new(
                origin,
                "(document)",
                "expected a Kubernetes object (a mapping)",
            ));
        }
        if let Some(items) = list_items(obj) {
            for item in items {
                self.add_value(item, origin)?;
            }
            return Ok(());
        }
        let (parsed, record) = parse_object(obj, origin)?;
        let (kind, ns, name) = match &parsed {
            Parsed::Namespace(n) => ("Namespace".to_string(), None, n.name.clone()),
            Parsed::Pod(p) => ("Pod".to_string(), Some(p.namespace.clone()), p.name.clone()),
            Parsed::Node(n) => ("Node".to_string(), None, n.name.clone()),
            _ => match &record {
                Some(r) => (r.kind.clone(), r.namespace.clone(), r.name.clone()),
                None => return Err(InputError::new(origin, "kind", "object without identity")),
            },
        };
        if !self.seen.insert((kind.clone(), ns.clone(), name.clone())) {
            let what = match ns {
                Some(ns) => format!("{ns}/{name}"),
                None => name,
            };
            return Err(InputError::new(
                origin,
                "metadata.name",
                format!("duplicate {kind} {what}; each object may appear once"),
            ));
        }
        match parsed {
            Parsed::Namespace(n) => self.namespaces.push(n),
            Parsed::Pod(p) => self.pods.push(p),
            Parsed::Node(n) => self.nodes.push(n),
            Parsed::NetworkSet(s) => self.network_sets.push(s),
            Parsed::Tier(t) => self.tiers.push(t),
            Parsed::Policy(Some(p)) => {
                self.policies.push(p);
                self.policy_origins.push(origin.clone());
            }
            Parsed::Policy(None) => {}
        }
        if let Some(r) = record {
            self.records.push(r);
        }
        Ok(())
    }

    /// Checks that need every object: policies name existing tiers.
    pub fn validate(&self) -> Result<(), InputError> {
        for (p, origin) in self.policies.iter().zip(&self.policy_origins) {
            if p.tier != "default" && !self.tiers.iter().any(|t| t.name == p.tier) {
                return Err(InputError::new(
                    origin,
                    "spec.tier",
                    format!(
                        "tier {:?} is not defined; add its Tier object to the input",
                        p.tier
                    ),
                ));
            }
        }
        Ok(())
    }
}
