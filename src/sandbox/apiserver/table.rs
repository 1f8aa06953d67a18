//! `meta.k8s.io/v1` Table answers for `kubectl get`'s default output, with the
//! columns of the real printers (k8s.io/kubernetes pkg/printers/internalversion/printers.go)
//! for the kinds this project shows, CRD additionalPrinterColumns otherwise.

use serde_json::{Value, json};

use super::types::ResourceType;

fn at<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    obj.pointer(&format!(
        "/{}",
        path.trim_start_matches('.').replace('.', "/")
    ))
}

fn num(obj: &Value, path: &str) -> i64 {
    at(obj, path).and_then(Value::as_i64).unwrap_or(0)
}

fn text(obj: &Value, path: &str) -> String {
    match at(obj, path) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    }
}

/// kubectl's short ages: 45s, 3m12s, 5h, 12d.
pub fn age(ts: &str) -> String {
    let Ok(t) = ts.parse::<jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let s = jiff::Timestamp::now().as_second() - t.as_second();
    let s = s.max(0);
    match s {
        0..120 => format!("{s}s"),
        120..600 => format!("{}m{}s", s / 60, s % 60),
        600..10800 => format!("{}m", s / 60),
        10800..28800 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        28800..172800 => format!("{}h", s / 3600),
        172800..691200 => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn col(name: &str, type_: &str) -> Value {
    json!({"name": name, "type": type_, "format": if name == "Name" { "name" } else { "" }, "description": "", "priority": 0})
}

fn selector(obj: &Value, path: &str) -> String {
    at(obj, path)
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty())
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_else(|| "<none>".into())
}

fn condition(obj: &Value, type_: &str) -> Option<String> {
    at(obj, "status.conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
        .and_then(|c| c.get("status").and_then(Value::as_str).map(String::from))
}

fn pod_cells(o: &Value) -> Vec<Value> {
    let statuses = at(o, "status.containerStatuses").and_then(Value::as_array);
    let total = at(o, "spec.containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let ready = statuses.map_or(0, |s| {
        s.iter()
            .filter(|c| c.get("ready") == Some(&json!(true)))
            .count()
    });
    let restarts: i64 = statuses.map_or(0, |s| {
        s.iter()
            .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
            .sum()
    });
    let mut status = text(o, "status.phase");
    if !text(o, "metadata.deletionTimestamp").is_empty() {
        status = "Terminating".into();
    }
    vec![
        json!(format!("{ready}/{total}")),
        json!(status),
        json!(restarts),
        json!(age(&text(o, "metadata.creationTimestamp"))),
    ]
}

/// Column definitions and a cell function for a type.
type Cells = Box<dyn Fn(&Value) -> Vec<Value>>;

fn layout(rt: &ResourceType) -> (Vec<Value>, Cells) {
    let age_col = col("Age", "string");
    match (rt.group.as_str(), rt.resource.as_str()) {
        ("", "pods") => (
            vec![
                col("Ready", "string"),
                col("Status", "string"),
                col("Restarts", "string"),
                age_col,
            ],
            Box::new(pod_cells),
        ),
        ("", "nodes") => (
            vec![
                col("Status", "string"),
                col("Roles", "string"),
                age_col,
                col("Version", "string"),
            ],
            Box::new(|o| {
                let ready = if condition(o, "Ready").as_deref() == Some("True") {
                    "Ready"
                } else {
                    "NotReady"
                };
                vec![
                    json!(ready),
                    json!("<none>"),
                    json!(age(&text(o, "metadata.creationTimestamp"))),
                    json!(text(o, "status.nodeInfo.kubeletVersion")),
                ]
            }),
        ),
        ("", "namespaces") => (
            vec![col("Status", "string"), age_col],
            Box::new(|o| {
                vec![
                    json!(text(o, "status.phase")),
                    json!(age(&text(o, "metadata.creationTimestamp"))),
                ]
            }),
        ),
        ("apps", "daemonsets") => (
            vec![
                col("Desired", "integer"),
                col("Current", "integer"),
                col("Ready", "integer"),
                col("Up-to-date", "integer"),
                col("Available", "integer"),
                col("Node Selector", "string"),
                age_col,
            ],
            Box::new(|o| {
                vec![
                    json!(num(o, "status.desiredNumberScheduled")),
                    json!(num(o, "status.currentNumberScheduled")),
                    json!(num(o, "status.numberReady")),
                    json!(num(o, "status.updatedNumberScheduled")),
                    json!(num(o, "status.numberAvailable")),
                    json!(selector(o, "spec.template.spec.nodeSelector")),
                    json!(age(&text(o, "metadata.creationTimestamp"))),
                ]
            }),
        ),
        ("apps", "deployments") => (
            vec![
                col("Ready", "string"),
                col("Up-to-date", "string"),
                col("Available", "string"),
                age_col,
            ],
            Box::new(|o| {
                vec![
                    json!(format!(
                        "{}/{}",
                        num(o, "status.readyReplicas"),
                        num(o, "spec.replicas")
                    )),
                    json!(num(o, "status.updatedReplicas")),
                    json!(num(o, "status.availableReplicas")),
                    json!(age(&text(o, "metadata.creationTimestamp"))),
                ]
            }),
        ),
        ("", "services") => (
            vec![
                col("Type", "string"),
                col("Cluster-IP", "string"),
                col("Port(s)", "string"),
                age_col,
            ],
            Box::new(|o| {
                let ports = at(o, "spec.ports").and_then(Value::as_array).map(|ps| {
                    ps.iter()
                        .map(|p| {
                            format!(
                                "{}/{}",
                                text(p, "port"),
                                p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                });
                vec![
                    json!(
                        at(o, "spec.type")
                            .and_then(Value::as_str)
                            .unwrap_or("ClusterIP")
                    ),
                    json!(text(o, "spec.clusterIP")),
                    json!(ports.unwrap_or_else(|| "<none>".into())),
                    json!(age(&text(o, "metadata.creationTimestamp"))),
                ]
            }),
        ),
        ("", "secrets") => (
            vec![col("Type", "string"), col("Data", "integer"), age_col],
            Box::new(|o| {
                let n = at(o, "data")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len());
                vec![
                    json!(at(o, "type").and_then(Value::as_str).unwrap_or("Opaque")),
                    json!(n),
                    json!(age(&text(o, "metadata.creationTimestamp"))),
                ]
            }),
        ),
        ("", "configmaps") => (
            vec![col("Data", "integer"), age_col],
            Box::new(|o| {
                let n = ["data", "binaryData"]
                    .iter()
                    .filter_map(|k| at(o, k).and_then(Value::as_object).map(|m| m.len()))
                    .sum::<usize>();
                vec![json!(n), json!(age(&text(o, "metadata.creationTimestamp")))]
            }),
        ),
        ("networking.k8s.io", "networkpolicies") => (
            vec![col("Pod-Selector", "string"), age_col],
            Box::new(|o| {
                let sel = selector(o, "spec.podSelector.matchLabels");
                let sel = if sel == "<none>" { String::new() } else { sel };
                vec![
                    json!(sel),
                    json!(age(&text(o, "metadata.creationTimestamp"))),
                ]
            }),
        ),
        ("policy", "poddisruptionbudgets") => (
            vec![
                col("Min Available", "string"),
                col("Max Unavailable", "string"),
                col("Allowed Disruptions", "integer"),
                age_col,
            ],
            Box::new(|o| {
                let or_na = |p: &str| {
                    let t = text(o, p);
                    if t.is_empty() { "N/A".to_string() } else { t }
                };
                vec![
                    json!(or_na("spec.minAvailable")),
                    json!(or_na("spec.maxUnavailable")),
                    json!(num(o, "status.disruptionsAllowed")),
                    json!(age(&text(o, "metadata.creationTimestamp"))),
                ]
            }),
        ),
        ("apiextensions.k8s.io", "customresourcedefinitions") => (
            vec![col("Created At", "date")],
            Box::new(|o| vec![json!(text(o, "metadata.creationTimestamp"))]),
        ),
        _ if !rt.columns.is_empty() => {
            let cols = rt.columns.clone();
            let defs = cols
                .iter()
                .map(|c| json!({"name": c.name, "type": c.type_, "format": "", "description": "", "priority": c.priority}))
                .collect();
            (
                defs,
                Box::new(move |o| {
                    cols.iter()
                        .map(|c| {
                            if c.type_ == "date" {
                                json!(age(&text(o, &c.json_path)))
                            } else {
                                at(o, &c.json_path).cloned().unwrap_or(Value::Null)
                            }
                        })
                        .collect()
                }),
            )
        }
        _ => (
            vec![age_col],
            Box::new(|o| vec![json!(age(&text(o, "metadata.creationTimestamp")))]),
        ),
    }
}

/// The metadata-only form of an object (`includeObject=Metadata`, the default).
pub fn partial(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
    })
}

/// A Table of `items`. `include` is the `includeObject` parameter (None, Metadata, Object).
pub fn table(rt: &ResourceType, items: &[&Value], include: &str, list_meta: Value) -> Value {
    let (cols, cells) = layout(rt);
    let mut defs = vec![col("Name", "string")];
    defs.extend(cols);
    let rows: Vec<Value> = items
        .iter()
        .map(|&o| {
            let mut c = vec![json!(text(o, "metadata.name"))];
            c.extend(cells(o));
            let object = match include {
                "None" => Value::Null,
                "Object" => o.clone(),
                _ => partial(o),
            };
            json!({"cells": c, "object": object})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": defs,
        "rows": rows,
    })
}
