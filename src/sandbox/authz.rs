//! RBAC authorization over the Role, ClusterRole, RoleBinding and
//! ClusterRoleBinding objects in the store, following Kubernetes:
//! - which rules apply to a user: kubernetes pkg/registry/rbac/validation/rule.go
//!   (`VisitRulesFor`, `appliesToUser`): every ClusterRoleBinding, then the
//!   RoleBindings of the request's namespace; a RoleBinding may point at a Role of
//!   its namespace or at a ClusterRole;
//! - whether a rule allows a request: kubernetes plugin/pkg/auth/authorizer/rbac/rbac.go
//!   (`RuleAllows`) and pkg/apis/rbac/v1/evaluation_helpers.go (`VerbMatches`,
//!   `APIGroupMatches`, `ResourceMatches` with `*/subresource`, `ResourceNameMatches`,
//!   `NonResourceURLMatches` with a trailing `*`);
//! - members of `system:masters` may do anything (kubernetes pkg/kubeapiserver/authorizer
//!   config.go puts a privileged-groups authorizer before RBAC);
//! - aggregated ClusterRoles (`aggregationRule.clusterRoleSelectors`) get the rules of
//!   every ClusterRole their selectors match, as the aggregation controller
//!   (pkg/controller/clusterroleaggregation) would have written them.
//!
//! The sandbox has no bootstrap ClusterRoles stored, so the few grants every real
//! cluster gives to `system:authenticated` (system:discovery, system:basic-user,
//! system:public-info-viewer in plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go)
//! are built in: see [`bootstrap_rules`].

use std::collections::BTreeSet;

use serde_json::Value;

use super::store::{ListOptions, Store};
use super::types::Gvr;

/// Group of every authenticated user.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The group that bypasses RBAC.
pub const MASTERS: &str = "system:masters";

/// Who asks: a user name and its groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
}

impl UserInfo {
    /// The sandbox's own user (its kubeconfig has no credentials): a cluster admin.
    pub fn admin() -> Self {
        Self {
            name: "sandbox-admin".into(),
            groups: vec![MASTERS.into(), AUTHENTICATED.into()],
        }
    }

    /// The user a request impersonates, with the groups the real server adds
    /// (k8s.io/apiserver pkg/endpoints/filters/impersonation.go): a service account
    /// given no groups gets `system:serviceaccounts` and `system:serviceaccounts:NS`;
    /// every user but `system:anonymous` gets `system:authenticated` unless the
    /// groups already name it or `system:unauthenticated`.
    pub fn impersonated(name: &str, groups: &[String]) -> Self {
        let mut groups = groups.to_vec();
        if groups.is_empty()
            && let Some((ns, _)) = split_service_account(name)
        {
            groups = vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
            ];
        }
        if name != "system:anonymous"
            && !groups
                .iter()
                .any(|g| g == AUTHENTICATED || g == "system:unauthenticated")
        {
            groups.push(AUTHENTICATED.into());
        }
        Self {
            name: name.into(),
            groups,
        }
    }

    /// `system:serviceaccount:NS:NAME` for a service account.
    pub fn service_account(namespace: &str, name: &str) -> Self {
        Self::impersonated(&format!("system:serviceaccount:{namespace}:{name}"), &[])
    }
}

/// (namespace, name) of a `system:serviceaccount:NS:NAME` user name.
pub fn split_service_account(user: &str) -> Option<(&str, &str)> {
    let rest = user.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains(':')).then_some((ns, name))
}

/// What a request asks to do (k8s.io/apiserver pkg/authorization/authorizer Attributes).
/// `path` set means a non-resource request (`/version`, `/apis`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    pub namespace: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
    pub path: Option<String>,
}

impl Attributes {
    /// A resource request; `namespace` empty for cluster scope or "all namespaces".
    pub fn resource(verb: &str, group: &str, resource: &str, namespace: &str) -> Self {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        Self {
            verb: verb.into(),
            namespace: namespace.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            ..Default::default()
        }
    }

    pub fn non_resource(verb: &str, path: &str) -> Self {
        Self {
            verb: verb.into(),
            path: Some(path.into()),
            ..Default::default()
        }
    }

    pub fn named(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }
}

/// One rule of a Role or ClusterRole (rbac.authorization.k8s.io/v1 PolicyRule).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

impl PolicyRule {
    pub fn from_json(v: &Value) -> Self {
        Self {
            verbs: strings(v, "verbs"),
            api_groups: strings(v, "apiGroups"),
            resources: strings(v, "resources"),
            resource_names: strings(v, "resourceNames"),
            non_resource_urls: strings(v, "nonResourceURLs"),
        }
    }

    /// `RuleAllows` (rbac.go).
    pub fn allows(&self, a: &Attributes) -> bool {
        let verb = self.verbs.iter().any(|v| v == "*" || *v == a.verb);
        match &a.path {
            Some(path) => verb && self.non_resource_url_matches(path),
            None => {
                let combined = if a.subresource.is_empty() {
                    a.resource.clone()
                } else {
                    format!("{}/{}", a.resource, a.subresource)
                };
                verb && self.api_groups.iter().any(|g| g == "*" || *g == a.group)
                    && self.resource_matches(&combined, &a.subresource)
                    && (self.resource_names.is_empty() || self.resource_names.contains(&a.name))
            }
        }
    }

    /// `ResourceMatches`: `*`, the exact resource (with its subresource), or `*/sub`.
    fn resource_matches(&self, combined: &str, subresource: &str) -> bool {
        self.resources.iter().any(|r| {
            r == "*"
                || r == combined
                || (!subresource.is_empty()
                    && r.len() == subresource.len() + 2
                    && r.starts_with("*/")
                    && r.ends_with(subresource))
        })
    }

    /// `NonResourceURLMatches`: `*`, the exact path, or a prefix ending in `*`.
    fn non_resource_url_matches(&self, path: &str) -> bool {
        self.non_resource_urls.iter().any(|u| {
            u == "*"
                || u == path
                || u.strip_suffix('*')
                    .is_some_and(|prefix| path.starts_with(prefix))
        })
    }
}

/// The outcome of a review, worded as the real authorizer words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Which binding allowed it (empty when denied without a reason).
    pub reason: String,
    /// Bindings that point at missing roles, as the real server reports them.
    pub evaluation_error: String,
}

/// Grants every real cluster gives to `system:authenticated` through its bootstrap
/// ClusterRoles: discovery and health paths (system:discovery,
/// system:public-info-viewer) and the self reviews (system:basic-user).
pub fn bootstrap_rules() -> Vec<PolicyRule> {
    let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        PolicyRule {
            verbs: v(&["get"]),
            non_resource_urls: v(&[
                "/api",
                "/api/*",
                "/apis",
                "/apis/*",
                "/openapi",
                "/openapi/*",
                "/version",
                "/version/",
                "/healthz",
                "/livez",
                "/readyz",
            ]),
            ..Default::default()
        },
        PolicyRule {
            verbs: v(&["create"]),
            api_groups: v(&["authorization.k8s.io"]),
            resources: v(&["selfsubjectaccessreviews", "selfsubjectrulesreviews"]),
            ..Default::default()
        },
    ]
}

/// A rule with where it came from, e.g. `ClusterRoleBinding "x" of ClusterRole "y" to Group "z"`.
#[derive(Debug, Clone)]
pub struct SourcedRule {
    pub source: String,
    pub rule: PolicyRule,
}

fn rbac(resource: &str) -> Gvr {
    Gvr::new("rbac.authorization.k8s.io", "v1", resource)
}

fn list(store: &Store, resource: &str, ns: Option<&str>) -> Vec<Value> {
    store
        .list(&rbac(resource), ns, &ListOptions::default())
        .map(|p| p.items)
        .unwrap_or_default()
}

fn meta<'a>(v: &'a Value, key: &str) -> &'a str {
    v.pointer(&format!("/metadata/{key}"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// `appliesToUser` (rule.go): the first subject naming this user, as `Kind "name"`.
fn subject_for(user: &UserInfo, binding: &Value, binding_ns: &str) -> Option<String> {
    let subjects = binding.get("subjects").and_then(Value::as_array)?;
    subjects.iter().find_map(|s| {
        let kind = s.get("kind").and_then(Value::as_str).unwrap_or_default();
        let name = s.get("name").and_then(Value::as_str).unwrap_or_default();
        let applies = match kind {
            "User" => user.name == name,
            "Group" => user.groups.iter().any(|g| g == name),
            "ServiceAccount" => {
                let ns = s
                    .get("namespace")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                    .unwrap_or(binding_ns);
                !ns.is_empty() && user.name == format!("system:serviceaccount:{ns}:{name}")
            }
            _ => false,
        };
        // `describeSubject` (rule.go): service accounts as "name/namespace".
        applies.then(|| match kind {
            "ServiceAccount" => {
                let ns = s
                    .get("namespace")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty());
                format!("ServiceAccount \"{name}/{}\"", ns.unwrap_or(binding_ns))
            }
            _ => format!("{kind} \"{name}\""),
        })
    })
}

/// Whether a metav1.LabelSelector (matchLabels, matchExpressions) matches `labels`.
/// An empty selector matches everything, as in labels.SelectorFromSet.
fn selector_matches(sel: &Value, labels: &serde_json::Map<String, Value>) -> bool {
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    let by_labels = sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .is_none_or(|m| m.iter().all(|(k, v)| label(k) == v.as_str()));
    let by_exprs = sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .is_none_or(|exprs| {
            exprs.iter().all(|e| {
                let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
                let values = strings(e, "values");
                let has = |v: &str| values.iter().any(|x| x == v);
                match e
                    .get("operator")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                {
                    "In" => label(key).is_some_and(has),
                    "NotIn" => !label(key).is_some_and(has),
                    "Exists" => label(key).is_some(),
                    "DoesNotExist" => label(key).is_none(),
                    _ => false,
                }
            })
        });
    by_labels && by_exprs
}

/// Rules of a ClusterRole, with those it aggregates (transitively).
fn cluster_role_rules(all: &[Value], name: &str) -> Option<Vec<PolicyRule>> {
    let role = all.iter().find(|r| meta(r, "name") == name)?;
    let mut seen = BTreeSet::from([name.to_string()]);
    let mut todo = vec![role];
    let mut rules = Vec::new();
    while let Some(r) = todo.pop() {
        rules.extend(
            r.get("rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(PolicyRule::from_json),
        );
        let selectors = r
            .pointer("/aggregationRule/clusterRoleSelectors")
            .and_then(Value::as_array);
        for sel in selectors.into_iter().flatten() {
            for other in all {
                let empty = serde_json::Map::new();
                let labels = other
                    .pointer("/metadata/labels")
                    .and_then(Value::as_object)
                    .unwrap_or(&empty);
                if selector_matches(sel, labels) && seen.insert(meta(other, "name").to_string()) {
                    todo.push(other);
                }
            }
        }
    }
    Some(rules)
}

/// Every rule that applies to `user` in `namespace` ("" = cluster scope only), with
/// its source, and the errors of bindings whose role is missing (`VisitRulesFor`).
pub fn rules_for(
    store: &Store,
    user: &UserInfo,
    namespace: &str,
) -> (Vec<SourcedRule>, Vec<String>) {
    let cluster_roles = list(store, "clusterroles", None);
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut add =
        |binding_kind: &str, binding: &Value, subject: String, role_ref: &Value, ns: &str| {
            let kind = role_ref
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let role = role_ref
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let rules = match kind {
                "ClusterRole" => cluster_role_rules(&cluster_roles, role),
                "Role" if !ns.is_empty() => store
                    .get(&rbac("roles"), ns, role)
                    .ok()
                    .map(|r| strings_rules(&r)),
                _ => None,
            };
            // Binding names as the describers in rule.go print them: "name" or "name/namespace".
            let bname = match ns {
                "" => meta(binding, "name").to_string(),
                _ => format!("{}/{ns}", meta(binding, "name")),
            };
            match rules {
                Some(rules) => out.extend(rules.into_iter().map(|rule| SourcedRule {
                    source: format!("{binding_kind} \"{bname}\" of {kind} \"{role}\" to {subject}"),
                    rule,
                })),
                None => errors.push(format!(
                    "{binding_kind} \"{bname}\" refers to {kind} \"{role}\", which was not found"
                )),
            }
        };
    for b in list(store, "clusterrolebindings", None) {
        if let (Some(subject), Some(role_ref)) = (subject_for(user, &b, ""), b.get("roleRef")) {
            add("ClusterRoleBinding", &b, subject, role_ref, "");
        }
    }
    if !namespace.is_empty() {
        for b in list(store, "rolebindings", Some(namespace)) {
            if let (Some(subject), Some(role_ref)) =
                (subject_for(user, &b, namespace), b.get("roleRef"))
            {
                add("RoleBinding", &b, subject, role_ref, namespace);
            }
        }
    }
    (out, errors)
}

fn strings_rules(role: &Value) -> Vec<PolicyRule> {
    role.get("rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(PolicyRule::from_json)
        .collect()
}

/// Decide whether `user` may do `a` (`RBACAuthorizer.Authorize`, behind the
/// privileged-groups authorizer).
pub fn authorize(store: &Store, user: &UserInfo, a: &Attributes) -> Decision {
    if user.groups.iter().any(|g| g == MASTERS) {
        return Decision {
            allowed: true,
            reason: format!("the group \"{MASTERS}\" may do anything"),
            evaluation_error: String::new(),
        };
    }
    if user.groups.iter().any(|g| g == AUTHENTICATED)
        && bootstrap_rules().iter().any(|r| r.allows(a))
    {
        return Decision {
            allowed: true,
            reason: format!("RBAC: allowed by the bootstrap grants to Group \"{AUTHENTICATED}\""),
            evaluation_error: String::new(),
        };
    }
    let (rules, errors) = rules_for(store, user, &a.namespace);
    let evaluation_error = errors.join("; ");
    match rules.iter().find(|r| r.rule.allows(a)) {
        Some(r) => Decision {
            allowed: true,
            reason: format!("RBAC: allowed by {}", r.source),
            evaluation_error,
        },
        None => Decision {
            allowed: false,
            reason: String::new(),
            evaluation_error,
        },
    }
}

/// The message of the 403 a denied request gets (k8s.io/apiserver
/// pkg/endpoints/handlers/responsewriters/errors.go `forbiddenMessage`).
pub fn forbidden_message(user: &UserInfo, a: &Attributes) -> String {
    let who = format!("User \"{}\"", user.name);
    if let Some(path) = &a.path {
        return format!("{who} cannot {} path \"{path}\"", a.verb);
    }
    let mut res = a.resource.clone();
    if !a.subresource.is_empty() {
        res = format!("{res}/{}", a.subresource);
    }
    let group = if a.group.is_empty() {
        String::new()
    } else {
        format!(" in API group \"{}\"", a.group)
    };
    let scope = if a.namespace.is_empty() {
        " at the cluster scope".to_string()
    } else {
        format!(" in the namespace \"{}\"", a.namespace)
    };
    format!("{who} cannot {} resource \"{res}\"{group}{scope}", a.verb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(v: Value) -> PolicyRule {
        PolicyRule::from_json(&v)
    }

    #[test]
    fn rule_matching_follows_evaluation_helpers() {
        let r = rule(
            json!({"verbs": ["get", "list"], "apiGroups": ["apps"], "resources": ["daemonsets", "deployments/scale"]}),
        );
        assert!(r.allows(&Attributes::resource(
            "get",
            "apps",
            "daemonsets",
            "kube-system"
        )));
        assert!(!r.allows(&Attributes::resource("delete", "apps", "daemonsets", "")));
        assert!(
            !r.allows(&Attributes::resource("get", "", "daemonsets", "")),
            "group must match"
        );
        assert!(
            !r.allows(&Attributes::resource(
                "get",
                "apps",
                "daemonsets/status",
                ""
            )),
            "a subresource needs its own grant"
        );
        assert!(r.allows(&Attributes::resource(
            "get",
            "apps",
            "deployments/scale",
            ""
        )));
        assert!(!r.allows(&Attributes::resource("get", "apps", "deployments", "")));
        let star = rule(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*/exec"]}));
        assert!(star.allows(&Attributes::resource("create", "", "pods/exec", "x")));
        assert!(!star.allows(&Attributes::resource("create", "", "pods", "x")));
        assert!(!star.allows(&Attributes::resource("create", "", "pods/attach", "x")));
        let named = rule(
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"]}),
        );
        assert!(named.allows(&Attributes::resource("get", "", "configmaps", "n").named("a")));
        assert!(!named.allows(&Attributes::resource("get", "", "configmaps", "n").named("b")));
        assert!(
            !named.allows(&Attributes::resource("get", "", "configmaps", "n")),
            "unnamed request needs an unrestricted rule"
        );
        let urls = rule(json!({"verbs": ["get"], "nonResourceURLs": ["/healthz", "/apis/*"]}));
        assert!(urls.allows(&Attributes::non_resource("get", "/apis/apps/v1")));
        assert!(urls.allows(&Attributes::non_resource("get", "/healthz")));
        assert!(!urls.allows(&Attributes::non_resource("get", "/healthz/etcd")));
        assert!(!urls.allows(&Attributes::resource("get", "", "healthz", "")));
    }

    #[test]
    fn impersonated_service_accounts_get_their_groups() {
        let u = UserInfo::service_account("calico-migrate", "runner");
        assert_eq!(u.name, "system:serviceaccount:calico-migrate:runner");
        assert_eq!(
            u.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:calico-migrate",
                AUTHENTICATED
            ]
        );
        let u = UserInfo::impersonated("alice", &["ops".into()]);
        assert_eq!(u.groups, ["ops", AUTHENTICATED]);
        assert_eq!(
            UserInfo::impersonated("system:anonymous", &[]).groups,
            Vec::<String>::new()
        );
        assert_eq!(split_service_account("system:serviceaccount:ns"), None);
    }

    #[test]
    fn selectors_of_aggregated_roles() {
        let labels = json!({"a": "1", "b": "2"});
        let labels = labels.as_object().cloned().unwrap_or_default();
        assert!(selector_matches(
            &json!({"matchLabels": {"a": "1"}}),
            &labels
        ));
        assert!(!selector_matches(
            &json!({"matchLabels": {"a": "2"}}),
            &labels
        ));
        assert!(selector_matches(
            &json!({"matchExpressions": [{"key": "b", "operator": "In", "values": ["2", "3"]}]}),
            &labels
        ));
        assert!(selector_matches(
            &json!({"matchExpressions": [{"key": "c", "operator": "DoesNotExist"}]}),
            &labels
        ));
        assert!(!selector_matches(
            &json!({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}),
            &labels
        ));
    }
}
