//! The shape every set of sandbox faults shares: the API server's
//! (`apiserver::faults`), the controllers' (`controllers::faults`) and the data
//! plane's (`dataplane::faults`). Each is set at start (`--fault KNOB:VALUE`) and
//! changed while running through its own ConfigMap in [`NAMESPACE`], whose data
//! keys are its knob names. Each ConfigMap holds only the knobs its reader
//! knows, so one reader never trips over another's keys.

use serde_json::{Value, json};

use super::{ApiError, Gvr, Store};

/// The namespace of every fault ConfigMap.
pub const NAMESPACE: &str = "sandbox-system";

/// One set of fault knobs and the ConfigMap that carries it.
pub trait FaultKnobs: Default + Sized {
    /// The ConfigMap in [`NAMESPACE`] holding the live settings.
    const CONFIGMAP: &'static str;
    /// A knob or value these faults cannot use.
    type Error: std::error::Error;

    /// Apply one `knob:value` setting.
    fn set(&mut self, knob: &str, value: &str) -> Result<(), Self::Error>;

    /// The ConfigMap's `data`: every knob, those that are off included.
    fn to_data(&self) -> Value;

    /// From the ConfigMap's `data`, each key set in turn.
    fn from_data(data: Option<&Value>) -> Result<Self, Self::Error> {
        let mut f = Self::default();
        if let Some(Value::Object(m)) = data {
            for (k, v) in m {
                f.set(k, v.as_str().unwrap_or_default())?;
            }
        }
        Ok(f)
    }

    /// The ConfigMap that carries these settings.
    fn to_configmap(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": Self::CONFIGMAP, "namespace": NAMESPACE},
            "data": self.to_data(),
        })
    }

    /// The settings in force in a store: none when the ConfigMap is absent or unreadable.
    fn read(store: &Store) -> Self {
        store
            .get(&configmaps(), NAMESPACE, Self::CONFIGMAP)
            .ok()
            .and_then(|cm| Self::from_data(cm.get("data")).ok())
            .unwrap_or_default()
    }

    /// Put these settings in force (create or replace the ConfigMap).
    fn write(&self, store: &Store) -> Result<(), ApiError> {
        store.load(vec![self.to_configmap()]).map(|_| ())
    }
}

/// The knob of a `--fault KNOB[:VALUE]` spec.
pub fn knob_of(spec: &str) -> &str {
    spec.split_once(':').map_or(spec, |(k, _)| k).trim()
}

pub(crate) fn configmaps() -> Gvr {
    Gvr::new("", "v1", "configmaps")
}
