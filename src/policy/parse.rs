//! Objects (as `serde_json::Value`) -> model. Kubernetes kinds go through k8s-openapi;
//! Calico kinds through the structs below, which accept both `crd.projectcalico.org/v1`
//! (what the cluster stores) and `projectcalico.org/v3` (what calicoctl and the docs use).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde_json::Value;

use super::error::{InputError, Origin};
use super::model::*;
use super::selector::{Labels, Selector};

const CALICO_API_VERSIONS: [&str; 2] = ["crd.projectcalico.org/v1", "projectcalico.org/v3"];

/// One parsed object.
#[derive(Debug, Clone)]
pub enum Parsed {
    Namespace(Namespace),
    Pod(Pod),
    Node(Node),
    NetworkSet(NetworkSet),
    Tier(Tier),
    /// A policy, or `None` for a Calico policy that only concerns host endpoints
    /// (`doNotTrack`/`preDNAT`), kept so policy-set diffs still see the object.
    Policy(Option<Policy>),
}

/// Identity and spec of a policy-like object, for policy-set comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectRecord {
    /// API group and kind with the version dropped, so v1 and v3 spellings compare equal.
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub spec: Value,
    pub origin: Origin,
}

impl ObjectRecord {
    pub fn key(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

/// Parse one object. `List` objects are expanded by the caller via [`list_items`].
pub fn parse_object(
    obj: &Value,
    origin: &Origin,
) -> Result<(Parsed, Option<ObjectRecord>), InputError> {
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind.is_empty() {
        return Err(InputError::new(
            origin,
            "kind",
            "missing; every document needs apiVersion and kind",
        ));
    }
    let calico = CALICO_API_VERSIONS.contains(&api_version);
    match (api_version, kind) {
        ("v1", "Namespace") => parse_namespace(obj, origin).map(|n| (Parsed::Namespace(n), None)),
        ("v1", "Pod") => parse_pod(obj, origin).map(|p| (Parsed::Pod(p), None)),
        ("v1", "Node") => parse_node(obj, origin).map(|n| (Parsed::Node(n), None)),
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            let p = parse_k8s_policy(obj, origin)?;
            let rec = record(
                obj,
                origin,
                "networking.k8s.io/NetworkPolicy",
                p.namespace.clone(),
                &p.id.name,
            );
            Ok((Parsed::Policy(Some(p)), Some(rec)))
        }
        (_, "NetworkPolicy" | "GlobalNetworkPolicy") if calico => {
            let namespaced = kind == "NetworkPolicy";
            let (name, ns) = meta_name(obj, origin, namespaced)?;
            let p = parse_calico_policy(obj, origin, &name, ns.clone())?;
            let rec = record(obj, origin, &format!("projectcalico.org/{kind}"), ns, &name);
            Ok((Parsed::Policy(p), Some(rec)))
        }
        (_, "GlobalNetworkSet") if calico => {
            let s = parse_network_set(obj, origin)?;
            let rec = record(
                obj,
                origin,
                "projectcalico.org/GlobalNetworkSet",
                None,
                &s.name,
            );
            Ok((Parsed::NetworkSet(s), Some(rec)))
        }
        (_, "Tier") if calico => {
            let t = parse_tier(obj, origin)?;
            let rec = record(obj, origin, "projectcalico.org/Tier", None, &t.name);
            Ok((Parsed::Tier(t), Some(rec)))
        }
        _ => Err(InputError::new(
            origin,
            "kind",
            format!(
                "unsupported object {api_version}/{kind}; expected v1 Namespace, Pod or Node, \
                 networking.k8s.io/v1 NetworkPolicy, or a Calico NetworkPolicy, \
                 GlobalNetworkPolicy, GlobalNetworkSet or Tier \
                 (crd.projectcalico.org/v1 or projectcalico.org/v3)"
            ),
        )),
    }
}

/// The items of a `kind: List` (what `kubectl get -o yaml` prints), else `None`.
pub fn list_items(obj: &Value) -> Option<&Vec<Value>> {
    if obj.get("kind").and_then(Value::as_str)?.ends_with("List") {
        obj.get("items").and_then(Value::as_array)
    } else {
        None
    }
}

fn record(
    obj: &Value,
    origin: &Origin,
    kind: &str,
    namespace: Option<String>,
    name: &str,
) -> ObjectRecord {
    ObjectRecord {
        kind: kind.into(),
        namespace,
        name: name.into(),
        spec: obj.get("spec").cloned().unwrap_or(Value::Null),
        origin: origin.clone(),
    }
}

fn typed<T: for<'de> Deserialize<'de>>(
    obj: &Value,
    origin: &Origin,
    what: &str,
) -> Result<T, InputError> {
    serde_json::from_value(obj.clone())
        .map_err(|e| InputError::new(origin, "spec", format!("not a valid {what}: {e}")))
}

fn meta_name(
    obj: &Value,
    origin: &Origin,
    namespaced: bool,
) -> Result<(String, Option<String>), InputError> {
    let meta = obj.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if name.is_empty() {
        return Err(InputError::new(origin, "metadata.name", "missing"));
    }
    let ns = if namespaced {
        Some(
            meta.and_then(|m| m.get("namespace"))
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string(),
        )
    } else {
        None
    };
    Ok((name.to_string(), ns))
}

fn labels_of(obj: &Value, origin: &Origin) -> Result<Labels, InputError> {
    match obj.get("metadata").and_then(|m| m.get("labels")) {
        None | Some(Value::Null) => Ok(Labels::new()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
            InputError::new(
                origin,
                "metadata.labels",
                format!("must map strings to strings: {e}"),
            )
        }),
    }
}

fn parse_namespace(obj: &Value, origin: &Origin) -> Result<Namespace, InputError> {
    let _: core::Namespace = typed(obj, origin, "Namespace")?;
    let (name, _) = meta_name(obj, origin, false)?;
    Ok(Namespace::new(&name, labels_of(obj, origin)?))
}

/// A Node's InternalIP and ExternalIP addresses; other address types (Hostname,
/// InternalDNS) name no packet source.
fn parse_node(obj: &Value, origin: &Origin) -> Result<Node, InputError> {
    let node: core::Node = typed(obj, origin, "Node")?;
    let (name, _) = meta_name(obj, origin, false)?;
    let mut addresses = Vec::new();
    let listed = node.status.and_then(|s| s.addresses).unwrap_or_default();
    for (i, a) in listed.iter().enumerate() {
        if a.type_ != "InternalIP" && a.type_ != "ExternalIP" {
            continue;
        }
        let ip = a.address.parse::<IpAddr>().map_err(|_| {
            InputError::new(
                origin,
                format!("status.addresses[{i}].address"),
                format!("{:?} is not an IP address", a.address),
            )
        })?;
        addresses.push(ip);
    }
    Ok(Node { name, addresses })
}

fn parse_pod(obj: &Value, origin: &Origin) -> Result<Pod, InputError> {
    let pod: core::Pod = typed(obj, origin, "Pod")?;
    let (name, ns) = meta_name(obj, origin, true)?;
    let spec = pod.spec.unwrap_or_default();
    let ip = match pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()) {
        None | Some("") => None,
        Some(s) => Some(s.parse::<IpAddr>().map_err(|_| {
            InputError::new(
                origin,
                "status.podIP",
                format!("{s:?} is not an IP address"),
            )
        })?),
    };
    let mut named_ports = Vec::new();
    for (ci, c) in spec.containers.iter().enumerate() {
        for (pi, p) in c.ports.iter().flatten().enumerate() {
            let field = format!("spec.containers[{ci}].ports[{pi}]");
            let Some(port_name) = p.name.clone() else {
                continue;
            };
            let port = u16::try_from(p.container_port)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    InputError::new(origin, format!("{field}.containerPort"), "must be 1-65535")
                })?;
            let protocol =
                parse_protocol_name(p.protocol.as_deref(), origin, &format!("{field}.protocol"))?;
            named_ports.push(NamedPort {
                name: port_name,
                port,
                protocol,
            });
        }
    }
    Ok(Pod {
        namespace: ns.unwrap_or_default(),
        name,
        labels: labels_of(obj, origin)?,
        ip,
        node: spec.node_name.clone(),
        host_network: spec.host_network.unwrap_or(false),
        service_account: spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into()),
        named_ports,
    })
}

fn parse_protocol_name(
    p: Option<&str>,
    origin: &Origin,
    field: &str,
) -> Result<Protocol, InputError> {
    match p {
        None => Ok(Protocol::Tcp),
        Some(s) => Protocol::parse(s).ok_or_else(|| {
            InputError::new(origin, field, format!("{s:?} is not TCP, UDP or SCTP"))
        }),
    }
}

fn parse_net(s: &str, origin: &Origin, field: &str) -> Result<IpNet, InputError> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            InputError::new(
                origin,
                field,
                format!("{s:?} is not a CIDR (like 10.0.0.0/8) or an IP address"),
            )
        })
}

fn parse_selector(s: &str, origin: &Origin, field: &str) -> Result<Selector, InputError> {
    Selector::parse(s).map_err(|e| InputError::new(origin, field, e.to_string()))
}

// ---- Kubernetes NetworkPolicy ----

/// Translate a Kubernetes label selector into a Calico selector tree.
pub fn label_selector(
    sel: &LabelSelector,
    origin: &Origin,
    field: &str,
) -> Result<Selector, InputError> {
    let mut parts = Vec::new();
    for (k, v) in sel.match_labels.iter().flatten() {
        parts.push(Selector::Eq(k.clone(), v.clone()));
    }
    for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
        let values = e.values.clone().unwrap_or_default();
        parts.push(match e.operator.as_str() {
            "In" => Selector::In(e.key.clone(), values),
            "NotIn" => Selector::NotIn(e.key.clone(), values),
            "Exists" => Selector::Has(e.key.clone()),
            "DoesNotExist" => Selector::Not(Box::new(Selector::Has(e.key.clone()))),
            other => {
                return Err(InputError::new(
                    origin,
                    format!("{field}.matchExpressions[{i}].operator"),
                    format!("{other:?} is not In, NotIn, Exists or DoesNotExist"),
                ));
            }
        });
    }
    Ok(Selector::and(parts))
}

fn parse_k8s_policy(obj: &Value, origin: &Origin) -> Result<Policy, InputError> {
    let np: net::NetworkPolicy = typed(obj, origin, "NetworkPolicy")?;
    let (name, ns) = meta_name(obj, origin, true)?;
    let ns = ns.unwrap_or_default();
    let spec = np.spec.unwrap_or_default();
    let selector = label_selector(
        &spec.pod_selector.unwrap_or_default(),
        origin,
        "spec.podSelector",
    )?;
    let has_egress_rules = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
    // An empty list is defaulted like a missing one, as the API server does.
    let types: Vec<String> = spec
        .policy_types
        .clone()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| {
            let mut t = vec!["Ingress".to_string()];
            if has_egress_rules {
                t.push("Egress".into());
            }
            t
        });
    for (i, t) in types.iter().enumerate() {
        if t != "Ingress" && t != "Egress" {
            return Err(InputError::new(
                origin,
                format!("spec.policyTypes[{i}]"),
                format!("{t:?} is not Ingress or Egress"),
            ));
        }
    }
    let ingress = if types.iter().any(|t| t == "Ingress") {
        let mut rules = Vec::new();
        for (i, r) in spec.ingress.iter().flatten().enumerate() {
            let field = format!("spec.ingress[{i}]");
            k8s_rule(
                i,
                r.from.as_deref(),
                r.ports.as_deref(),
                Direction::Ingress,
                &ns,
                origin,
                &field,
                &mut rules,
            )?;
        }
        Some(rules)
    } else {
        None
    };
    let egress = if types.iter().any(|t| t == "Egress") {
        let mut rules = Vec::new();
        for (i, r) in spec.egress.iter().flatten().enumerate() {
            let field = format!("spec.egress[{i}]");
            k8s_rule(
                i,
                r.to.as_deref(),
                r.ports.as_deref(),
                Direction::Egress,
                &ns,
                origin,
                &field,
                &mut rules,
            )?;
        }
        Some(rules)
    } else {
        None
    };
    Ok(Policy {
        id: PolicyId {
            kind: PolicyKind::KubernetesNetworkPolicy,
            namespace: Some(ns.clone()),
            name: name.clone(),
        },
        tier: "default".into(),
        order: Some(K8S_POLICY_ORDER),
        sort_name: format!("{ns}/knp.default.{name}"),
        namespace: Some(ns),
        selector,
        namespace_selector: None,
        service_account_selector: None,
        ingress,
        egress,
    })
}

/// Expand one Kubernetes rule into Allow rules, one per (peer, port) as Calico does.
#[allow(clippy::too_many_arguments)]
fn k8s_rule(
    index: usize,
    peers: Option<&[net::NetworkPolicyPeer]>,
    ports: Option<&[net::NetworkPolicyPort]>,
    dir: Direction,
    ns: &str,
    origin: &Origin,
    field: &str,
    out: &mut Vec<Rule>,
) -> Result<(), InputError> {
    let peer_field = if dir == Direction::Ingress {
        "from"
    } else {
        "to"
    };
    let mut peer_entities = Vec::new();
    match peers {
        None | Some([]) => peer_entities.push(EntityMatch::default()),
        Some(list) => {
            for (pi, p) in list.iter().enumerate() {
                let f = format!("{field}.{peer_field}[{pi}]");
                peer_entities.push(k8s_peer(p, ns, origin, &f)?);
            }
        }
    }
    let mut port_matches: Vec<(Option<Protocol>, Vec<PortSpec>)> = Vec::new();
    match ports {
        None | Some([]) => port_matches.push((None, Vec::new())),
        Some(list) => {
            for (pi, p) in list.iter().enumerate() {
                let f = format!("{field}.ports[{pi}]");
                let proto =
                    parse_protocol_name(p.protocol.as_deref(), origin, &format!("{f}.protocol"))?;
                let specs = match (&p.port, p.end_port) {
                    (None, None) => Vec::new(),
                    (None, Some(_)) => {
                        return Err(InputError::new(
                            origin,
                            format!("{f}.endPort"),
                            "endPort needs port",
                        ));
                    }
                    (Some(IntOrString::Int(n)), end) => {
                        let start = port_number(i64::from(*n), origin, &format!("{f}.port"))?;
                        let end = match end {
                            Some(e) => port_number(i64::from(e), origin, &format!("{f}.endPort"))?,
                            None => start,
                        };
                        if end < start {
                            return Err(InputError::new(
                                origin,
                                format!("{f}.endPort"),
                                "must not be below port",
                            ));
                        }
                        vec![PortSpec::Range(start, end)]
                    }
                    (Some(IntOrString::String(s)), None) => vec![PortSpec::Named(s.clone())],
                    (Some(IntOrString::String(_)), Some(_)) => {
                        return Err(InputError::new(
                            origin,
                            format!("{f}.endPort"),
                            "endPort needs a numeric port",
                        ));
                    }
                };
                port_matches.push((Some(proto), specs));
            }
        }
    }
    for peer in &peer_entities {
        for (proto, specs) in &port_matches {
            let mut local = EntityMatch {
                ports: specs.clone(),
                ..EntityMatch::default()
            };
            let (source, destination) = match dir {
                Direction::Ingress => (peer.clone(), local),
                Direction::Egress => {
                    local.ports.clear();
                    let mut remote = peer.clone();
                    remote.ports = specs.clone();
                    (local, remote)
                }
            };
            out.push(Rule {
                index,
                action: Action::Allow,
                protocol: proto.map(ProtocolMatch::Known),
                not_protocol: None,
                ip_version: None,
                source,
                destination,
            });
        }
    }
    Ok(())
}

fn port_number(n: i64, origin: &Origin, field: &str) -> Result<u16, InputError> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| InputError::new(origin, field, format!("{n} is not a port (1-65535)")))
}

fn k8s_peer(
    p: &net::NetworkPolicyPeer,
    ns: &str,
    origin: &Origin,
    field: &str,
) -> Result<EntityMatch, InputError> {
    let mut e = EntityMatch::default();
    if let Some(block) = &p.ip_block {
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            return Err(InputError::new(
                origin,
                field,
                "ipBlock cannot be combined with podSelector or namespaceSelector",
            ));
        }
        e.nets.push(parse_net(
            &block.cidr,
            origin,
            &format!("{field}.ipBlock.cidr"),
        )?);
        for (i, x) in block.except.iter().flatten().enumerate() {
            e.not_nets.push(parse_net(
                x,
                origin,
                &format!("{field}.ipBlock.except[{i}]"),
            )?);
        }
        return Ok(e);
    }
    match (&p.pod_selector, &p.namespace_selector) {
        (None, None) => {
            return Err(InputError::new(
                origin,
                field,
                "a peer needs podSelector, namespaceSelector or ipBlock",
            ));
        }
        (pods, Some(nss)) => {
            e.namespace_selector = Some(label_selector(
                nss,
                origin,
                &format!("{field}.namespaceSelector"),
            )?);
            if let Some(ps) = pods {
                e.selector = Some(label_selector(ps, origin, &format!("{field}.podSelector"))?);
            }
        }
        (Some(ps), None) => {
            e.selector = Some(label_selector(ps, origin, &format!("{field}.podSelector"))?);
            e.home_namespace = Some(ns.to_string());
        }
    }
    Ok(e)
}

// ---- Calico policies ----

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CalicoPolicySpec {
    tier: Option<String>,
    order: Option<f64>,
    selector: Option<String>,
    namespace_selector: Option<String>,
    service_account_selector: Option<String>,
    types: Option<Vec<String>>,
    ingress: Option<Vec<CalicoRule>>,
    egress: Option<Vec<CalicoRule>>,
    #[serde(default)]
    do_not_track: bool,
    #[serde(rename = "preDNAT", default)]
    pre_dnat: bool,
    #[serde(default)]
    apply_on_forward: bool,
    performance_hints: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CalicoRule {
    action: String,
    protocol: Option<NumOrString>,
    not_protocol: Option<NumOrString>,
    ip_version: Option<u8>,
    icmp: Option<Value>,
    #[serde(rename = "notICMP")]
    not_icmp: Option<Value>,
    source: Option<CalicoEntity>,
    destination: Option<CalicoEntity>,
    http: Option<Value>,
    metadata: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CalicoEntity {
    nets: Option<Vec<String>>,
    not_nets: Option<Vec<String>>,
    selector: Option<String>,
    not_selector: Option<String>,
    namespace_selector: Option<String>,
    ports: Option<Vec<NumOrString>>,
    not_ports: Option<Vec<NumOrString>>,
    service_accounts: Option<CalicoServiceAccounts>,
    services: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CalicoServiceAccounts {
    names: Option<Vec<String>>,
    selector: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum NumOrString {
    Num(i64),
    Str(String),
}

fn parse_calico_policy(
    obj: &Value,
    origin: &Origin,
    name: &str,
    ns: Option<String>,
) -> Result<Option<Policy>, InputError> {
    let spec_value = obj
        .get("spec")
        .cloned()
        .unwrap_or(Value::Object(Default::default()));
    let spec: CalicoPolicySpec = serde_json::from_value(spec_value)
        .map_err(|e| InputError::new(origin, "spec", e.to_string()))?;
    let _ = (spec.apply_on_forward, &spec.performance_hints);
    let selector = match spec.selector.as_deref() {
        Some(s) => parse_selector(s, origin, "spec.selector")?,
        None => Selector::All,
    };
    let namespace_selector = match spec.namespace_selector.as_deref() {
        Some(s) if ns.is_some() => {
            let _ = s;
            return Err(InputError::new(
                origin,
                "spec.namespaceSelector",
                "only GlobalNetworkPolicy has namespaceSelector",
            ));
        }
        Some(s) => Some(parse_selector(s, origin, "spec.namespaceSelector")?),
        None => None,
    };
    if spec.service_account_selector.is_some() {
        return Err(InputError::new(
            origin,
            "spec.serviceAccountSelector",
            "not supported: the input has no ServiceAccount labels; select on projectcalico.org/serviceaccount instead",
        ));
    }
    let has_in = spec.ingress.as_ref().is_some_and(|r| !r.is_empty());
    let has_eg = spec.egress.as_ref().is_some_and(|r| !r.is_empty());
    // Calico's default types: from the rules present; no rules at all means Ingress.
    let types = match spec.types.as_ref().filter(|t| !t.is_empty()) {
        Some(t) => t.clone(),
        None => match (has_in, has_eg) {
            (_, false) => vec!["Ingress".into()],
            (false, true) => vec!["Egress".into()],
            (true, true) => vec!["Ingress".into(), "Egress".into()],
        },
    };
    for (i, t) in types.iter().enumerate() {
        if t != "Ingress" && t != "Egress" {
            return Err(InputError::new(
                origin,
                format!("spec.types[{i}]"),
                format!("{t:?} is not Ingress or Egress"),
            ));
        }
    }
    let mut sides = [None, None];
    for (slot, dir, rules) in [
        (0, Direction::Ingress, &spec.ingress),
        (1, Direction::Egress, &spec.egress),
    ] {
        let wanted = types
            .iter()
            .any(|t| t.eq_ignore_ascii_case(&dir.to_string()));
        let mut out = Vec::new();
        for (i, r) in rules.iter().flatten().enumerate() {
            let field = format!("spec.{dir}[{i}]");
            out.push(calico_rule(i, r, ns.as_deref(), origin, &field)?);
        }
        if wanted {
            sides[slot] = Some(out);
        }
    }
    if spec.do_not_track || spec.pre_dnat {
        // These policies are only programmed for host endpoints, never for pods.
        return Ok(None);
    }
    let tier = spec
        .tier
        .clone()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "default".into());
    let [ingress, egress] = sides;
    let kind = if ns.is_some() {
        PolicyKind::CalicoNetworkPolicy
    } else {
        PolicyKind::GlobalNetworkPolicy
    };
    Ok(Some(Policy {
        id: PolicyId {
            kind,
            namespace: ns.clone(),
            name: name.into(),
        },
        tier,
        order: spec.order,
        sort_name: match &ns {
            Some(n) => format!("{n}/{name}"),
            None => name.into(),
        },
        namespace: ns,
        selector,
        namespace_selector,
        service_account_selector: None,
        ingress,
        egress,
    }))
}

fn calico_rule(
    index: usize,
    r: &CalicoRule,
    ns: Option<&str>,
    origin: &Origin,
    field: &str,
) -> Result<Rule, InputError> {
    let action = match r.action.to_ascii_lowercase().as_str() {
        "allow" => Action::Allow,
        "deny" => Action::Deny,
        "log" => Action::Log,
        "pass" => Action::Pass,
        other => {
            return Err(InputError::new(
                origin,
                format!("{field}.action"),
                format!("{other:?} is not Allow, Deny, Log or Pass"),
            ));
        }
    };
    if r.http.is_some() {
        return Err(InputError::new(
            origin,
            format!("{field}.http"),
            "HTTP match rules need an application layer and are not supported",
        ));
    }
    let _ = (&r.icmp, &r.not_icmp, &r.metadata);
    if let Some(v) = r.ip_version
        && v != 4
        && v != 6
    {
        return Err(InputError::new(
            origin,
            format!("{field}.ipVersion"),
            "must be 4 or 6",
        ));
    }
    Ok(Rule {
        index,
        action,
        protocol: r
            .protocol
            .as_ref()
            .map(|p| protocol_match(p, origin, &format!("{field}.protocol")))
            .transpose()?,
        not_protocol: r
            .not_protocol
            .as_ref()
            .map(|p| protocol_match(p, origin, &format!("{field}.notProtocol")))
            .transpose()?,
        ip_version: r.ip_version,
        source: calico_entity(r.source.as_ref(), ns, origin, &format!("{field}.source"))?,
        destination: calico_entity(
            r.destination.as_ref(),
            ns,
            origin,
            &format!("{field}.destination"),
        )?,
    })
}

fn protocol_match(
    p: &NumOrString,
    origin: &Origin,
    field: &str,
) -> Result<ProtocolMatch, InputError> {
    match p {
        NumOrString::Num(n) => {
            let n = u8::try_from(*n).ok().filter(|n| *n > 0).ok_or_else(|| {
                InputError::new(
                    origin,
                    field,
                    format!("{n} is not a protocol number (1-255)"),
                )
            })?;
            Ok([Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
                .into_iter()
                .find(|p| p.number() == n)
                .map(ProtocolMatch::Known)
                .unwrap_or(ProtocolMatch::Other(n.to_string())))
        }
        NumOrString::Str(s) => Ok(match Protocol::parse(s) {
            Some(p) => ProtocolMatch::Known(p),
            None => match s.to_ascii_uppercase().as_str() {
                "ICMP" | "ICMPV6" | "UDPLITE" => ProtocolMatch::Other(s.clone()),
                _ => {
                    return Err(InputError::new(
                        origin,
                        field,
                        format!("{s:?} is not a protocol Calico knows"),
                    ));
                }
            },
        }),
    }
}

fn calico_ports(
    list: Option<&Vec<NumOrString>>,
    origin: &Origin,
    field: &str,
) -> Result<Vec<PortSpec>, InputError> {
    let mut out = Vec::new();
    for (i, p) in list.into_iter().flatten().enumerate() {
        let f = format!("{field}[{i}]");
        out.push(match p {
            NumOrString::Num(n) => {
                let n = port_or_zero(*n, origin, &f)?;
                PortSpec::Range(n, n)
            }
            NumOrString::Str(s) => match s.split_once(':') {
                Some((a, b)) => {
                    let a = parse_port_str(a, origin, &f)?;
                    let b = parse_port_str(b, origin, &f)?;
                    if b < a {
                        return Err(InputError::new(
                            origin,
                            f,
                            format!("range {s:?} ends below its start"),
                        ));
                    }
                    PortSpec::Range(a, b)
                }
                None if s.chars().all(|c| c.is_ascii_digit()) && !s.is_empty() => {
                    let n = parse_port_str(s, origin, &f)?;
                    PortSpec::Range(n, n)
                }
                None if !s.is_empty() => PortSpec::Named(s.clone()),
                None => return Err(InputError::new(origin, f, "empty port")),
            },
        });
    }
    Ok(out)
}

fn port_or_zero(n: i64, origin: &Origin, field: &str) -> Result<u16, InputError> {
    u16::try_from(n)
        .map_err(|_| InputError::new(origin, field, format!("{n} is not a port (0-65535)")))
}

fn parse_port_str(s: &str, origin: &Origin, field: &str) -> Result<u16, InputError> {
    s.trim().parse::<u16>().map_err(|_| {
        InputError::new(
            origin,
            field,
            format!("{s:?} is not a port number (0-65535)"),
        )
    })
}

fn calico_entity(
    e: Option<&CalicoEntity>,
    ns: Option<&str>,
    origin: &Origin,
    field: &str,
) -> Result<EntityMatch, InputError> {
    let Some(e) = e else {
        return Ok(EntityMatch::default());
    };
    if e.services.is_some() {
        return Err(InputError::new(
            origin,
            format!("{field}.services"),
            "Service matches are not supported",
        ));
    }
    let mut out = EntityMatch::default();
    for (i, n) in e.nets.iter().flatten().enumerate() {
        out.nets
            .push(parse_net(n, origin, &format!("{field}.nets[{i}]"))?);
    }
    for (i, n) in e.not_nets.iter().flatten().enumerate() {
        out.not_nets
            .push(parse_net(n, origin, &format!("{field}.notNets[{i}]"))?);
    }
    if let Some(s) = &e.selector {
        out.selector = Some(parse_selector(s, origin, &format!("{field}.selector"))?);
    }
    if let Some(s) = &e.not_selector {
        out.not_selector = Some(parse_selector(s, origin, &format!("{field}.notSelector"))?);
    }
    if let Some(s) = &e.namespace_selector {
        out.namespace_selector = Some(parse_selector(
            s,
            origin,
            &format!("{field}.namespaceSelector"),
        )?);
    }
    out.home_namespace = ns.map(str::to_string);
    out.ports = calico_ports(e.ports.as_ref(), origin, &format!("{field}.ports"))?;
    out.not_ports = calico_ports(e.not_ports.as_ref(), origin, &format!("{field}.notPorts"))?;
    if let Some(sa) = &e.service_accounts {
        if sa.selector.is_some() {
            return Err(InputError::new(
                origin,
                format!("{field}.serviceAccounts.selector"),
                "not supported: the input has no ServiceAccount labels; use serviceAccounts.names",
            ));
        }
        out.service_account_names = sa.names.clone().unwrap_or_default();
    }
    Ok(out)
}

// ---- GlobalNetworkSet, Tier ----

fn parse_network_set(obj: &Value, origin: &Origin) -> Result<NetworkSet, InputError> {
    let (name, _) = meta_name(obj, origin, false)?;
    let mut nets = Vec::new();
    let list = obj.get("spec").and_then(|s| s.get("nets"));
    match list {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, v) in items.iter().enumerate() {
                let f = format!("spec.nets[{i}]");
                let s = v
                    .as_str()
                    .ok_or_else(|| InputError::new(origin, &f, "must be a string"))?;
                nets.push(parse_net(s, origin, &f)?);
            }
        }
        Some(_) => {
            return Err(InputError::new(
                origin,
                "spec.nets",
                "must be a list of CIDRs",
            ));
        }
    }
    Ok(NetworkSet {
        name,
        labels: labels_of(obj, origin)?,
        nets,
    })
}

fn parse_tier(obj: &Value, origin: &Origin) -> Result<Tier, InputError> {
    let (name, _) = meta_name(obj, origin, false)?;
    let order = match obj.get("spec").and_then(|s| s.get("order")) {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_f64()
                .ok_or_else(|| InputError::new(origin, "spec.order", "must be a number"))?,
        ),
    };
    let default_action = match obj.get("spec").and_then(|s| s.get("defaultAction")) {
        None | Some(Value::Null) => Action::Deny,
        Some(v) => match v.as_str() {
            Some("Deny") => Action::Deny,
            Some("Pass") => Action::Pass,
            _ => {
                return Err(InputError::new(
                    origin,
                    "spec.defaultAction",
                    "must be Deny or Pass",
                ));
            }
        },
    };
    Ok(Tier {
        name,
        order,
        default_action,
    })
}

/// Labels of every namespace referenced, for callers that want them by name.
pub fn namespace_map(nss: &[Namespace]) -> BTreeMap<&str, &Namespace> {
    nss.iter().map(|n| (n.name.as_str(), n)).collect()
}
