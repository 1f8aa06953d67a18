//! TigeraStatus `calico` and the Installation's status, as the operator's
//! status manager writes them (conditions Available / Progressing / Degraded).

use serde_json::{Value, json};

use super::super::{get, merge, wopts};
use super::{MANAGER, installations, tigerastatuses};
use crate::sandbox::{Sandbox, Subresource};

/// What the operator reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Health {
    Progressing(String),
    Available,
    Degraded { reason: String, message: String },
}

fn conditions(h: &Health, existing: Option<&Value>) -> Value {
    let (avail, prog, degr, reason, msg) = match h {
        Health::Available => (true, false, false, "AllObjectsAvailable", String::new()),
        Health::Progressing(m) => (false, true, false, "ResourceNotReady", m.clone()),
        Health::Degraded { reason, message } => {
            (false, false, true, reason.as_str(), message.clone())
        }
    };
    let now = crate::sandbox::apiserver::store::now();
    let cond = |t: &str, s: bool| {
        // Keep lastTransitionTime while the status of a condition does not change.
        let prev = existing
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == t))
            .filter(|c| c["status"] == if s { "True" } else { "False" })
            .and_then(|c| c.get("lastTransitionTime").cloned());
        json!({"type": t, "status": if s { "True" } else { "False" },
               "reason": if s { reason } else { "" }, "message": if s { msg.as_str() } else { "" },
               "lastTransitionTime": prev.unwrap_or_else(|| json!(now))})
    };
    json!([
        cond("Available", avail),
        cond("Progressing", prog),
        cond("Degraded", degr)
    ])
}

fn same(a: Option<&Value>, b: &Value) -> bool {
    let strip = |v: &Value| {
        v.as_array()
            .map(|cs| {
                cs.iter()
                    .map(|c| {
                        (
                            c["type"].clone(),
                            c["status"].clone(),
                            c["reason"].clone(),
                            c["message"].clone(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    a.is_some_and(|a| strip(a) == strip(b))
}

/// Write TigeraStatus `calico` and Installation `default` status (only on change).
/// `calico_version` is what an Available operator writes to `status.calicoVersion`:
/// None for a release whose InstallationStatus has no such field (before v1.29.0; see
/// `Line::writes_calico_version`).
pub fn report(sb: &Sandbox, h: &Health, install: &Value, calico_version: Option<&str>) {
    let ts = tigerastatuses();
    if sb.store().resource_type(&ts).is_some() {
        let existing = match get(sb, &ts, "", "calico") {
            Some(o) => Some(o),
            None => sb
                .store()
                .create(
                    &ts,
                    "",
                    json!({"apiVersion": "operator.tigera.io/v1", "kind": "TigeraStatus",
                                        "metadata": {"name": "calico"}, "spec": {}}),
                    &wopts(MANAGER),
                )
                .ok(),
        };
        if let Some(cur) = existing {
            let old = cur.pointer("/status/conditions");
            let new = conditions(h, old);
            if !same(old, &new) {
                let _ = merge(
                    sb,
                    &ts,
                    "",
                    "calico",
                    Subresource::Status,
                    &json!({"status": {"conditions": new}}),
                    MANAGER,
                );
            }
        }
    }
    let old = install.pointer("/status/conditions");
    let new = conditions(h, old);
    let mut st = json!({"conditions": new});
    if *h == Health::Available {
        st["variant"] = json!("Calico");
        if let Some(v) = calico_version {
            st["calicoVersion"] = json!(v);
        }
        st["computed"] = install.get("spec").cloned().unwrap_or_else(|| json!({}));
    }
    let unchanged = same(old, &new)
        && (*h != Health::Available
            || calico_version.is_none()
            || install.pointer("/status/calicoVersion") == st.get("calicoVersion"));
    if !unchanged {
        let _ = merge(
            sb,
            &installations(),
            "",
            "default",
            Subresource::Status,
            &json!({"status": st}),
            MANAGER,
        );
    }
}
