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
//! - writes of roles and bindings are held to RBAC's privilege-escalation prevention
//!   (kubernetes pkg/registry/rbac escalation_check.go and the policybased storages):
//!   see [`check_escalation`].
//!
//! The sandbox has no bootstrap ClusterRoles stored, so the few grants every real
//! cluster gives to `system:authenticated` (system:discovery, system:basic-user,
//! system:public-info-viewer in plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go)
//! are built in: see [`bootstrap_rules`].

use std::collections::BTreeSet;

use serde_json::Value;

use super::error::ApiError;
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

// ---------------------------------------------------------------------------
// Privilege-escalation prevention on writes of roles and bindings.
//
// The real API server checks these in the RBAC storage, after the object to store is
// known (kubernetes pkg/registry/rbac/{role,clusterrole,rolebinding,clusterrolebinding}/
// policybased/storage.go); the sandbox checks them in the same place of its request
// path (authz_http::escalation_gate), on the object the write would store. Line numbers
// are those of stored copies of the current kubernetes/kubernetes files: no tree of a
// release tag could be fetched here, except that rule.go's ConfirmNoEscalation is lines
// 53-89 at tag v1.36.2 (docs/sandbox.md, "Authorization", says how they were read).

/// The API group of Roles, ClusterRoles and their bindings.
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// The four RBAC resources whose writes are checked.
const RBAC_WRITES: [&str; 4] = [
    "roles",
    "clusterroles",
    "rolebindings",
    "clusterrolebindings",
];

/// Whether `a` is a write the escalation check covers: create, update or patch of a
/// Role, ClusterRole, RoleBinding or ClusterRoleBinding (delete is never checked, as
/// the policybased storages only wrap Create and Update).
pub fn escalation_checked(a: &Attributes) -> bool {
    a.path.is_none()
        && a.group == RBAC_GROUP
        && a.subresource.is_empty()
        && RBAC_WRITES.contains(&a.resource.as_str())
        && matches!(a.verb.as_str(), "create" | "update" | "patch")
}

/// `EscalationAllowed` (pkg/registry/rbac/escalation_check.go:31-47): members of
/// system:masters skip the check.
fn escalation_allowed(user: &UserInfo) -> bool {
    user.groups.iter().any(|g| g == MASTERS)
}

/// `RoleEscalationAuthorized` (escalation_check.go:55-98): the `escalate` verb on the
/// role the request names. The name is the request's (the URL's), so a create (POST to
/// the collection, no name) only matches an `escalate` rule without resourceNames
/// (escalation_check.go:85 `Name: requestInfo.Name`).
fn role_escalation_authorized(store: &Store, user: &UserInfo, a: &Attributes) -> bool {
    let escalate = Attributes {
        verb: "escalate".into(),
        ..a.clone()
    };
    authorize(store, user, &escalate).allowed
}

/// `BindingAuthorized` (escalation_check.go:101-146): the `bind` verb on the role the
/// binding refers to, by its name, in the binding's namespace ("" for a
/// ClusterRoleBinding).
fn binding_authorized(store: &Store, user: &UserInfo, role_ref: &Value, ns: &str) -> bool {
    let field = |k: &str| role_ref.get(k).and_then(Value::as_str).unwrap_or_default();
    let resource = match field("kind") {
        "ClusterRole" => "clusterroles",
        "Role" => "roles",
        _ => return false,
    };
    let bind = Attributes::resource("bind", field("apiGroup"), resource, ns).named(field("name"));
    authorize(store, user, &bind).allowed
}

/// `IsOnlyMutatingGCFields` (pkg/registry/rbac/helpers.go): the write changes nothing
/// but ownerReferences, finalizers (and the server-managed selfLink, managedFields and
/// resourceVersion), so the garbage collector can always finish a deletion.
fn only_gc_fields(new: &Value, old: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in [
                "ownerReferences",
                "finalizers",
                "selfLink",
                "managedFields",
                "resourceVersion",
            ] {
                m.remove(k);
            }
        }
        v
    };
    strip(new) == strip(old)
}

/// `BreakdownRule` (k8s.io/component-helpers auth/rbac/validation/policy_comparator.go:58-82):
/// one rule per (group, resource, verb[, name]) and per (URL, verb).
fn breakdown(rule: &PolicyRule) -> Vec<PolicyRule> {
    let one = |s: &String| vec![s.clone()];
    let mut out = Vec::new();
    for group in &rule.api_groups {
        for resource in &rule.resources {
            for verb in &rule.verbs {
                let base = PolicyRule {
                    verbs: one(verb),
                    api_groups: one(group),
                    resources: one(resource),
                    ..Default::default()
                };
                if rule.resource_names.is_empty() {
                    out.push(base);
                } else {
                    out.extend(rule.resource_names.iter().map(|n| PolicyRule {
                        resource_names: one(n),
                        ..base.clone()
                    }));
                }
            }
        }
    }
    for url in &rule.non_resource_urls {
        for verb in &rule.verbs {
            out.push(PolicyRule {
                verbs: one(verb),
                non_resource_urls: one(url),
                ..Default::default()
            });
        }
    }
    out
}

fn has_all(set: &[String], wanted: &[String]) -> bool {
    wanted.iter().all(|w| set.contains(w))
}

/// `resourceCoversAll` (policy_comparator.go:106-129): `*`, the exact resources, or
/// `*/sub` for a subresource.
fn resources_cover_all(owner: &[String], wanted: &[String]) -> bool {
    if owner.iter().any(|r| r == "*") || has_all(owner, wanted) {
        return true;
    }
    wanted.iter().all(|path| {
        owner.contains(path)
            || path
                .split_once('/')
                .is_some_and(|(_, sub)| owner.contains(&format!("*/{sub}")))
    })
}

/// `nonResourceURLsCoversAll` and `nonResourceURLCovers` (policy_comparator.go:131-152).
fn urls_cover_all(owner: &[String], wanted: &[String]) -> bool {
    wanted.iter().all(|path| {
        owner.iter().any(|o| {
            o == path
                || o.strip_suffix('*')
                    .is_some_and(|_| path.starts_with(o.trim_end_matches('*')))
        })
    })
}

/// `ruleCovers` (policy_comparator.go:156-171): whether `owner` grants all of `sub`
/// (a rule from [`breakdown`]).
fn rule_covers(owner: &PolicyRule, sub: &PolicyRule) -> bool {
    let star_or_all =
        |set: &[String], wanted: &[String]| set.iter().any(|s| s == "*") || has_all(set, wanted);
    let names = if sub.resource_names.is_empty() {
        owner.resource_names.is_empty()
    } else {
        owner.resource_names.is_empty() || has_all(&owner.resource_names, &sub.resource_names)
    };
    star_or_all(&owner.verbs, &sub.verbs)
        && star_or_all(&owner.api_groups, &sub.api_groups)
        && resources_cover_all(&owner.resources, &sub.resources)
        && urls_cover_all(&owner.non_resource_urls, &sub.non_resource_urls)
        && names
}

/// `Covers` (policy_comparator.go:27-54): the parts of `servant` that no rule of
/// `owner` grants (empty: covered).
pub fn uncovered(owner: &[PolicyRule], servant: &[PolicyRule]) -> Vec<PolicyRule> {
    servant
        .iter()
        .flat_map(breakdown)
        .filter(|sub| !owner.iter().any(|o| rule_covers(o, sub)))
        .collect()
}

/// `CompactRules` (pkg/registry/rbac/validation/policy_compact.go): rules of one group
/// and one resource, differing only by verb, merged into one.
fn compact(rules: Vec<PolicyRule>) -> Vec<PolicyRule> {
    let mut out: Vec<PolicyRule> = Vec::new();
    let mut simple: Vec<PolicyRule> = Vec::new();
    for r in rules {
        let is_simple = r.resource_names.is_empty()
            && r.non_resource_urls.is_empty()
            && r.api_groups.len() == 1
            && r.resources.len() == 1;
        if !is_simple {
            out.push(r);
            continue;
        }
        match simple
            .iter_mut()
            .find(|s| s.api_groups == r.api_groups && s.resources == r.resources)
        {
            Some(s) => s.verbs.extend(r.verbs),
            None => simple.push(r),
        }
    }
    out.extend(simple);
    out
}

/// Go's `%q` of a []string: `["a" "b"]`.
fn go_quoted(xs: &[String]) -> String {
    let q: Vec<String> = xs.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", q.join(" "))
}

/// `CompactString` (pkg/apis/rbac/v1/evaluation_helpers.go): how an escalation error
/// names a missing rule, e.g. `{APIGroups:["*"], Resources:["*"], Verbs:["*"]}`.
pub fn compact_string(r: &PolicyRule) -> String {
    let parts: Vec<String> = [
        ("APIGroups", &r.api_groups),
        ("Resources", &r.resources),
        ("NonResourceURLs", &r.non_resource_urls),
        ("ResourceNames", &r.resource_names),
        ("Verbs", &r.verbs),
    ]
    .iter()
    .filter(|(_, xs)| !xs.is_empty())
    .map(|(k, xs)| format!("{k}:{}", go_quoted(xs)))
    .collect();
    format!("{{{}}}", parts.join(", "))
}

/// The rules `user` holds in `namespace` ("" = cluster scope), as `RulesFor` resolves
/// them, with the bootstrap grants every real cluster binds to system:authenticated.
fn owner_rules(store: &Store, user: &UserInfo, namespace: &str) -> (Vec<PolicyRule>, Vec<String>) {
    let (found, errors) = rules_for(store, user, namespace);
    let mut rules: Vec<PolicyRule> = found.into_iter().map(|r| r.rule).collect();
    if user.groups.iter().any(|g| g == AUTHENTICATED) {
        rules.extend(bootstrap_rules());
    }
    (rules, errors)
}

/// The refusal of [`confirm_no_escalation`]: upstream's sentence, with the missing
/// rules compacted, sorted and one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "user {:?} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}{}",
    .user,
    go_quoted(.groups),
    .missing.join("\n"),
    resolution_suffix(.resolution_errors)
)]
pub struct EscalationError {
    pub user: String,
    pub groups: Vec<String>,
    /// The rules `user` lacks, compacted and sorted (`CompactString` of each).
    pub missing: Vec<String>,
    /// The errors met while resolving the rules `user` holds.
    pub resolution_errors: Vec<String>,
}

/// `%v` of []error{utilerrors.NewAggregate(errs)}: one error as is, several as [a, b].
fn resolution_suffix(errors: &[String]) -> String {
    match errors {
        [] => String::new(),
        [one] => format!("; resolution errors: [{one}]"),
        many => format!("; resolution errors: [[{}]]", many.join(", ")),
    }
}

/// `ConfirmNoEscalation` (pkg/registry/rbac/validation/rule.go:53-89 at v1.36.2): every
/// permission of `rules` must already be held by `user` in `namespace`.
pub fn confirm_no_escalation(
    store: &Store,
    user: &UserInfo,
    namespace: &str,
    rules: &[PolicyRule],
) -> Result<(), EscalationError> {
    let (owner, errors) = owner_rules(store, user, namespace);
    let missing = uncovered(&owner, rules);
    if missing.is_empty() {
        return Ok(());
    }
    let lines: BTreeSet<String> = compact(missing).iter().map(compact_string).collect();
    Err(EscalationError {
        user: user.name.clone(),
        groups: user.groups.clone(),
        missing: lines.into_iter().collect(),
        resolution_errors: errors,
    })
}

/// `apierrors.NewForbidden(groupResource, name, err)` (k8s.io/apimachinery
/// pkg/api/errors/errors.go): `clusterroles.rbac.authorization.k8s.io "x" is forbidden: ...`.
fn forbidden(resource: &str, name: &str, why: &str) -> ApiError {
    let qualified = format!("{resource}.{RBAC_GROUP}");
    let message = if name.is_empty() {
        format!("{qualified} is forbidden: {why}")
    } else {
        format!("{qualified} {name:?} is forbidden: {why}")
    };
    ApiError {
        details: Some(serde_json::json!({"name": name, "group": RBAC_GROUP, "kind": resource})),
        ..ApiError::forbidden(message)
    }
}

/// The 404 `GetRoleReferenceRules` answers for a binding to a missing role: the
/// getter's NotFound is returned as is (clusterrolebinding/policybased/storage.go:69-72).
fn role_not_found(resource: &str, name: &str) -> ApiError {
    ApiError {
        details: Some(serde_json::json!({"name": name, "group": RBAC_GROUP, "kind": resource})),
        ..ApiError::new(
            404,
            "NotFound",
            format!("{resource}.{RBAC_GROUP} {name:?} not found"),
        )
    }
}

/// The rules of the role a binding refers to (`GetRoleReferenceRules`, rule.go): a
/// ClusterRole (with what it aggregates), or a Role of the binding's namespace.
fn role_ref_rules(store: &Store, role_ref: &Value, ns: &str) -> Result<Vec<PolicyRule>, ApiError> {
    let field = |k: &str| role_ref.get(k).and_then(Value::as_str).unwrap_or_default();
    let name = field("name");
    match field("kind") {
        "ClusterRole" => cluster_role_rules(&list(store, "clusterroles", None), name)
            .ok_or_else(|| role_not_found("clusterroles", name)),
        "Role" if !ns.is_empty() => store
            .get(&rbac("roles"), ns, name)
            .map(|r| strings_rules(&r))
            .map_err(|_| role_not_found("roles", name)),
        "Role" => Err(role_not_found("roles", name)),
        other => Err(ApiError::bad_request(format!(
            "unsupported role reference kind: {other:?}"
        ))),
    }
}

fn has_aggregation_rule(role: &Value) -> bool {
    role.pointer("/aggregationRule/clusterRoleSelectors")
        .and_then(Value::as_array)
        .is_some_and(|s| !s.is_empty())
}

/// `fullAuthority` (clusterrole/policybased/storage.go:53-56): what an aggregationRule
/// needs, since it can gather anything.
fn full_authority() -> Vec<PolicyRule> {
    vec![
        PolicyRule::from_json(
            &serde_json::json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}),
        ),
        PolicyRule::from_json(&serde_json::json!({"verbs": ["*"], "nonResourceURLs": ["*"]})),
    ]
}

/// A Role or ClusterRole write (role/policybased/storage.go:62-96,
/// clusterrole/policybased/storage.go:58-107): allowed with `escalate` on the role,
/// for a change of GC fields only, or when the writer holds every rule; an
/// aggregationRule (new or old) needs full authority.
fn check_role(
    store: &Store,
    user: &UserInfo,
    a: &Attributes,
    new: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    if role_escalation_authorized(store, user, a) {
        return Ok(());
    }
    if old.is_some_and(|o| only_gc_fields(new, o)) {
        return Ok(());
    }
    let name = meta(new, "name");
    confirm_no_escalation(store, user, &a.namespace, &strings_rules(new))
        .map_err(|why| forbidden(&a.resource, name, &why.to_string()))?;
    let aggregates = has_aggregation_rule(new) || old.is_some_and(has_aggregation_rule);
    if a.resource == "clusterroles" && aggregates {
        confirm_no_escalation(store, user, "", &full_authority()).map_err(|_| {
            forbidden(
                &a.resource,
                name,
                "must have cluster-admin privileges to use the aggregationRule",
            )
        })?;
    }
    Ok(())
}

/// A RoleBinding or ClusterRoleBinding write (rolebinding/policybased/storage.go,
/// clusterrolebinding/policybased/storage.go:54-114): allowed for a change of GC fields
/// only, with `bind` on the role it refers to, or when the writer holds every rule of
/// that role.
fn check_binding(
    store: &Store,
    user: &UserInfo,
    a: &Attributes,
    new: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    if old.is_some_and(|o| only_gc_fields(new, o)) {
        return Ok(());
    }
    let empty = Value::Null;
    let role_ref = new.get("roleRef").unwrap_or(&empty);
    if binding_authorized(store, user, role_ref, &a.namespace) {
        return Ok(());
    }
    let rules = role_ref_rules(store, role_ref, &a.namespace)?;
    confirm_no_escalation(store, user, &a.namespace, &rules)
        .map_err(|why| forbidden(&a.resource, meta(new, "name"), &why.to_string()))
}

/// RBAC's privilege-escalation prevention for the write `a` of `new` (over `old`, None
/// for a create) by `user`. Members of system:masters always pass.
pub fn check_escalation(
    store: &Store,
    user: &UserInfo,
    a: &Attributes,
    new: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    if escalation_allowed(user) || !escalation_checked(a) {
        return Ok(());
    }
    match a.resource.as_str() {
        "roles" | "clusterroles" => check_role(store, user, a, new, old),
        _ => check_binding(store, user, a, new, old),
    }
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

    #[test]
    fn covers_follows_policy_comparator() {
        let owner = [
            rule(json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]})),
            rule(json!({"verbs": ["*"], "apiGroups": ["apps"], "resources": ["*/scale"]})),
            rule(
                json!({"verbs": ["bind"], "apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "resourceNames": ["a"]}),
            ),
            rule(json!({"verbs": ["get"], "nonResourceURLs": ["/metrics*"]})),
        ];
        let held = |r: Value| uncovered(&owner, &[rule(r)]).is_empty();
        assert!(held(
            json!({"verbs": ["list"], "apiGroups": [""], "resources": ["pods"]})
        ));
        assert!(!held(
            json!({"verbs": ["watch"], "apiGroups": [""], "resources": ["pods"]})
        ));
        assert!(held(
            json!({"verbs": ["update"], "apiGroups": ["apps"], "resources": ["deployments/scale"]})
        ));
        assert!(!held(
            json!({"verbs": ["update"], "apiGroups": ["extensions"], "resources": ["deployments/scale"]})
        ));
        assert!(held(
            json!({"verbs": ["bind"], "apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "resourceNames": ["a"]})
        ));
        assert!(
            !held(
                json!({"verbs": ["bind"], "apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"]})
            ),
            "a name-limited rule never covers an unnamed one"
        );
        assert!(held(
            json!({"verbs": ["get"], "nonResourceURLs": ["/metrics/x"]})
        ));
        assert!(!held(
            json!({"verbs": ["get"], "nonResourceURLs": ["/healthz"]})
        ));
        let missing = compact(uncovered(
            &owner,
            &[rule(
                json!({"verbs": ["get", "watch", "delete"], "apiGroups": ["", "apps"], "resources": ["pods"]}),
            )],
        ));
        let lines: Vec<String> = missing.iter().map(compact_string).collect();
        assert_eq!(
            lines,
            [
                r#"{APIGroups:[""], Resources:["pods"], Verbs:["watch" "delete"]}"#,
                r#"{APIGroups:["apps"], Resources:["pods"], Verbs:["get" "watch" "delete"]}"#,
            ]
        );
    }

    fn rbac_sandbox(objects: Vec<Value>) -> crate::sandbox::Sandbox {
        let sb = crate::sandbox::Sandbox::new(crate::sandbox::SandboxOptions::default());
        if let Err(e) = sb.load(objects) {
            panic!("test objects load: {e}");
        }
        sb
    }

    fn bound_role(rules: Value) -> Vec<Value> {
        vec![
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                   "metadata": {"name": "writer"}, "rules": rules}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                   "metadata": {"name": "writer"},
                   "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": "writer"},
                   "subjects": [{"kind": "User", "name": "alice"}]}),
        ]
    }

    #[test]
    fn escalation_check_on_roles() {
        let sb = rbac_sandbox(bound_role(json!([
            {"verbs": ["create", "update", "patch"], "apiGroups": [RBAC_GROUP], "resources": ["clusterroles"]},
            {"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]},
            {"verbs": ["escalate"], "apiGroups": [RBAC_GROUP], "resources": ["clusterroles"], "resourceNames": ["named"]},
        ])));
        let alice = UserInfo::impersonated("alice", &[]);
        let role = |name: &str, rules: Value| {
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                   "metadata": {"name": name, "resourceVersion": "5"}, "rules": rules})
        };
        let pods_list = json!([{"verbs": ["list"], "apiGroups": [""], "resources": ["pods"]}]);
        let create = Attributes::resource("create", RBAC_GROUP, "clusterroles", "");
        let check = |a: &Attributes, new: &Value, old: Option<&Value>| {
            check_escalation(sb.store(), &alice, a, new, old)
        };
        let Err(e) = check(&create, &role("x", pods_list.clone()), None) else {
            panic!("list pods is not held");
        };
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "clusterroles.rbac.authorization.k8s.io \"x\" is forbidden: user \"alice\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"list\"]}"
        );
        let get = json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]);
        assert!(check(&create, &role("x", get), None).is_ok(), "held");
        // `escalate` on "named" answers requests naming it, never a create.
        let patch = Attributes::resource("patch", RBAC_GROUP, "clusterroles", "").named("named");
        assert!(check(&patch, &role("named", pods_list.clone()), None).is_ok());
        assert!(check(&create, &role("named", pods_list.clone()), None).is_err());
        // An update of GC fields only passes; any other change is checked.
        let old = role("x", pods_list.clone());
        let mut gc = old.clone();
        gc["metadata"]["finalizers"] = json!(["f"]);
        gc["metadata"]["resourceVersion"] = json!("6");
        let update = Attributes::resource("update", RBAC_GROUP, "clusterroles", "").named("x");
        assert!(check(&update, &gc, Some(&old)).is_ok());
        let mut labelled = old.clone();
        labelled["metadata"]["labels"] = json!({"a": "b"});
        assert!(check(&update, &labelled, Some(&old)).is_err());
        // An aggregationRule needs everything.
        let mut agg = role("agg", json!([]));
        agg["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels": {"x": "y"}}]});
        let Err(e) = check(&create, &agg, None) else {
            panic!("aggregation without cluster-admin");
        };
        assert!(
            e.message
                .ends_with("must have cluster-admin privileges to use the aggregationRule"),
            "{}",
            e.message
        );
        // system:masters is never checked.
        let all = json!([{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}]);
        assert!(
            check_escalation(
                sb.store(),
                &UserInfo::admin(),
                &create,
                &role("y", all),
                None
            )
            .is_ok()
        );
    }

    #[test]
    fn escalation_check_on_bindings() {
        let mut objects = bound_role(json!([
            {"verbs": ["create"], "apiGroups": [RBAC_GROUP], "resources": ["clusterrolebindings", "rolebindings"]},
            {"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]},
            {"verbs": ["bind"], "apiGroups": [RBAC_GROUP], "resources": ["clusterroles"], "resourceNames": ["bindable"]},
        ]));
        for (name, verbs) in [
            ("bindable", json!(["delete"])),
            ("held", json!(["get"])),
            ("big", json!(["*"])),
        ] {
            objects.push(
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": name},
                "rules": [{"verbs": verbs, "apiGroups": [""], "resources": ["pods"]}]}),
            );
        }
        let sb = rbac_sandbox(objects);
        let alice = UserInfo::impersonated("alice", &[]);
        let binding = |role: &str| {
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                   "metadata": {"name": format!("b-{role}")},
                   "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
                   "subjects": [{"kind": "User", "name": "bob"}]})
        };
        let create = Attributes::resource("create", RBAC_GROUP, "clusterrolebindings", "");
        let check =
            |role: &str| check_escalation(sb.store(), &alice, &create, &binding(role), None);
        assert!(check("bindable").is_ok(), "bind on it");
        assert!(check("held").is_ok(), "holds its rules");
        let Err(e) = check("big") else {
            panic!("neither bind nor its rules");
        };
        assert_eq!(e.code, 403);
        assert!(
            e.message.starts_with(
                "clusterrolebindings.rbac.authorization.k8s.io \"b-big\" is forbidden: user \"alice\""
            ),
            "{}",
            e.message
        );
        let Err(e) = check("missing") else {
            panic!("a missing role");
        };
        assert_eq!((e.code, e.reason), (404, "NotFound"));
        // In a namespace, `bind` and the rules are looked up there.
        let rb = Attributes::resource("create", RBAC_GROUP, "rolebindings", "ns1");
        let mut b = binding("bindable");
        b["kind"] = json!("RoleBinding");
        assert!(check_escalation(sb.store(), &alice, &rb, &b, None).is_ok());
    }
}
