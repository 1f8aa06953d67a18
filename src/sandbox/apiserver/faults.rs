//! Fault injection for the HTTP API: set at start (`--fault SPEC`) and changed
//! while running through ConfigMap `sandbox-system/faults`, whose data keys are
//! the knob names (see [`FaultKnobs`]). Requests for `sandbox-system` itself are
//! never faulted, so a client can always turn the faults off again.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::sandbox::faults::FaultKnobs;

/// The ConfigMap (in `sandbox-system`) holding the live API fault settings.
pub const CONFIGMAP: &str = "faults";

/// Every knob; zero means off.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultConfig {
    /// `latency:MS`: delay before every API answer.
    pub latency_ms: u64,
    /// `api-errors:RATE`: share of resource requests answered 429, 500 or 503.
    pub api_errors: f64,
    /// `drop-watch:RATE`: chance, per event sent, that a watch stream is cut.
    pub drop_watch: f64,
    /// `conflicts:RATE`: share of writes answered with a spurious 409 Conflict.
    pub conflicts: f64,
}

/// A fault spec or ConfigMap value the API fault layer cannot use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultError {
    #[error(
        "fault {knob}: \"{value}\" is not a number; give a rate between 0 and 1, e.g. {knob}:0.1"
    )]
    NotARate { knob: &'static str, value: String },
    #[error("fault {knob}: rate {rate} is outside 0..1")]
    RateOutOfRange { knob: &'static str, rate: f64 },
    #[error("fault latency: \"{value}\" is not a whole number of milliseconds, e.g. latency:50")]
    NotMilliseconds { value: String },
    #[error(
        "unknown fault \"{knob}\": the knobs are latency:MS, api-errors:RATE, drop-watch:RATE, conflicts:RATE"
    )]
    UnknownKnob { knob: String },
    #[error("fault \"{spec}\" is not KNOB:VALUE, e.g. latency:50 or api-errors:0.1")]
    NotKnobValue { spec: String },
}

fn rate(knob: &'static str, v: &str) -> Result<f64, FaultError> {
    let r: f64 = v.trim().parse().map_err(|_| FaultError::NotARate {
        knob,
        value: v.to_string(),
    })?;
    if !(0.0..=1.0).contains(&r) {
        return Err(FaultError::RateOutOfRange { knob, rate: r });
    }
    Ok(r)
}

impl FaultConfig {
    /// Parse `--fault` specs such as `latency:50`, `api-errors:0.1`.
    pub fn parse_specs(specs: &[String]) -> Result<Self, FaultError> {
        let mut c = Self::default();
        for s in specs {
            let (k, v) = s
                .split_once(':')
                .ok_or_else(|| FaultError::NotKnobValue { spec: s.clone() })?;
            c.set(k, v)?;
        }
        Ok(c)
    }
}

impl FaultKnobs for FaultConfig {
    const CONFIGMAP: &'static str = CONFIGMAP;
    type Error = FaultError;

    fn set(&mut self, knob: &str, value: &str) -> Result<(), FaultError> {
        match knob.trim() {
            "latency" => {
                self.latency_ms = value
                    .trim()
                    .parse()
                    .map_err(|_| FaultError::NotMilliseconds {
                        value: value.to_string(),
                    })?
            }
            "api-errors" => self.api_errors = rate("api-errors", value)?,
            "drop-watch" => self.drop_watch = rate("drop-watch", value)?,
            "conflicts" => self.conflicts = rate("conflicts", value)?,
            other => {
                return Err(FaultError::UnknownKnob {
                    knob: other.to_string(),
                });
            }
        }
        Ok(())
    }

    fn to_data(&self) -> Value {
        json!({
            "latency": self.latency_ms.to_string(),
            "api-errors": self.api_errors.to_string(),
            "drop-watch": self.drop_watch.to_string(),
            "conflicts": self.conflicts.to_string(),
        })
    }
}

/// The random draws of the fault layer (seeded, so runs repeat).
#[derive(Clone)]
pub struct Dice(Arc<Mutex<fastrand::Rng>>);

impl Dice {
    pub fn new(seed: u64) -> Self {
        Self(Arc::new(Mutex::new(fastrand::Rng::with_seed(seed))))
    }

    /// True with probability `p`.
    pub fn hit(&self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        let mut r = self.0.lock().unwrap_or_else(|e| e.into_inner());
        r.f64() < p
    }

    pub fn pick<T: Copy>(&self, of: &[T]) -> Option<T> {
        if of.is_empty() {
            return None;
        }
        let mut r = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Some(of[r.usize(0..of.len())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_reject() {
        let c = FaultConfig::parse_specs(&["latency:5".into(), "api-errors:0.5".into()]);
        assert_eq!(
            c.as_ref().map(|c| (c.latency_ms, c.api_errors)).ok(),
            Some((5, 0.5))
        );
        assert!(FaultConfig::parse_specs(&["api-errors:2".into()]).is_err());
        assert!(FaultConfig::parse_specs(&["bogus:1".into()]).is_err());
        assert!(FaultConfig::parse_specs(&["latency".into()]).is_err());
        let cm = c.map(|c| c.to_configmap()).unwrap_or_default();
        assert_eq!(
            FaultConfig::from_data(cm.get("data")).map(|c| c.latency_ms),
            Ok(5)
        );
    }
}
