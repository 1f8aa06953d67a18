//! Migration profiles (plans/*.yaml): the target versions, the operator manifest pin,
//! the Installation spec, pacing and check thresholds, as data.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The same-version path: operator v1.17.4 takes over the Calico v3.19.1 that runs
/// (Kubernetes up to 1.24).
pub const SAME_VERSION_PROFILE: &str = "aws-calico-0.3.10-v3.19";
/// The current path: the install aligned to Calico v3.30.3, then operator v1.38.6.
pub const CURRENT_PROFILE: &str = "aws-calico-0.3.10-v3.30";
/// The operator-based chart 0.3.11 moved to a standalone operator v1.38.6.
pub const OPERATOR_CHART_PROFILE: &str = "aws-calico-0.3.11-v3.30";
/// The built-in profiles' text, embedded so the binary works outside the repository,
/// in the order [`Profile::pick`] prefers them (fewest changes first).
const BUILTIN: &[(&str, &str)] = &[
    (
        SAME_VERSION_PROFILE,
        include_str!("../../plans/aws-calico-0.3.10-v3.19.yaml"),
    ),
    (
        CURRENT_PROFILE,
        include_str!("../../plans/aws-calico-0.3.10-v3.30.yaml"),
    ),
    (
        OPERATOR_CHART_PROFILE,
        include_str!("../../plans/aws-calico-0.3.11-v3.30.yaml"),
    ),
];
/// The chart every built-in profile migrates from (aws/eks-charts `aws-calico`).
pub const SOURCE_CHART: &str = "aws-calico";
/// The Calico <-> operator version table (plans/versions.yaml).
pub const VERSION_TABLE: &str = include_str!("../../plans/versions.yaml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub source: SourceSpec,
    pub target: TargetSpec,
    pub kubernetes: KubernetesRange,
    /// The target Calico's own manifest install, read by align-versions (required when
    /// `target.align_versions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calico_manifest: Option<ManifestPin>,
    pub operator: OperatorSpec,
    pub installation: Value,
    pub pacing: Pacing,
    pub checks: Thresholds,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub chart: String,
    pub chart_versions: Vec<String>,
    /// How the source chart runs Calico: a kube-system manifest install (<= 0.3.10) or
    /// the Tigera Operator (0.3.11).
    #[serde(default)]
    pub install: SourceInstall,
    pub calico_version: String,
}

/// How a source chart runs Calico.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceInstall {
    /// calico-node and typha in kube-system (aws-calico <= 0.3.10): the operator's
    /// migration takes them over.
    #[default]
    Manifest,
    /// tigera-operator and calico-system (aws-calico 0.3.11): the operator is upgraded.
    Operator,
}

impl SourceSpec {
    /// Whether this profile migrates a cluster whose release is chart `version` (None:
    /// no Helm release, a kube-system install applied by hand).
    pub fn accepts(&self, chart_version: Option<&str>) -> bool {
        match chart_version {
            Some(v) => self.chart_versions.iter().any(|c| c == v),
            None => self.install == SourceInstall::Manifest,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    pub calico_version: String,
    pub operator_version: String,
    #[serde(default)]
    pub align_versions: bool,
}

impl TargetSpec {
    /// Whether the target operator ends its takeover by restarting every calico-system
    /// calico-node at once: before v1.35.0 it removes the migration node labels in the
    /// reconcile that drops the migration nodeSelector, without waiting for the rollout
    /// (tigera/operator v1.17.4 and v1.20.1 pkg/controller/installation/
    /// core_controller.go:1092-1108, pkg/controller/migration/namespace_migration.go:344-356);
    /// v1.35.0 waits first (PR 3157, "to avoid mass restart").
    pub fn restarts_every_agent_at_the_end(&self) -> bool {
        parse_version(&self.operator_version).is_some_and(|v| v < (1, 35, 0))
    }

    /// Whether the target operator keeps its calico-system calico-node off Fargate nodes:
    /// from v1.25.0 it renders the required node affinity
    /// `eks.amazonaws.com/compute-type NotIn [fargate]` for an EKS Installation (commit
    /// c80107f7; v1.38.6 pkg/render/node.go:942-956, the provider autodetected on EKS);
    /// before, calico-node tolerates every taint with no such affinity (v1.17.4
    /// pkg/render/node.go:598-613), so its pods would wait on Fargate nodes for ever.
    pub fn keeps_calico_node_off_fargate(&self) -> bool {
        parse_version(&self.operator_version).is_some_and(|v| v >= (1, 25, 0))
    }
}

/// The Kubernetes minors the target operator runs on, and why the bounds are there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesRange {
    /// Oldest minor, "1.21".
    pub min: String,
    /// Newest minor, when the operator cannot run on later ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
    /// The reason for the bounds, with its upstream reference: quoted in the plan.
    pub why: String,
}

impl KubernetesRange {
    /// Whether `minor` (1, N) lies in the range.
    pub fn admits(&self, minor: (u32, u32)) -> bool {
        let min = parse_minor(&self.min).unwrap_or((1, 0));
        let max = self.max.as_deref().and_then(parse_minor);
        minor >= min && max.is_none_or(|m| minor <= m)
    }

    /// "1.21 to 1.24", "1.21 or later".
    pub fn describe(&self) -> String {
        match &self.max {
            Some(max) => format!("{} to {max}", self.min),
            None => format!("{} or later", self.min),
        }
    }
}

/// A manifest the plan pins by sha256 (the file itself is given to `plan`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestPin {
    #[serde(default)]
    pub manifest_url: String,
    #[serde(default)]
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperatorInstall {
    /// calico-migrate applies the pinned manifest.
    Manifest,
    /// Someone else installs the operator; the plan waits at a gate.
    External,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorSpec {
    pub install: OperatorInstall,
    #[serde(default)]
    pub manifest_url: String,
    #[serde(default)]
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pacing {
    pub nodes_at_a_time: u32,
    pub pause_seconds: u64,
    pub node_ready_timeout_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    pub max_swap_seconds: u64,
    /// Every node is probed through its own swap (as source and destination) until
    /// verified; a bounded round over `round_sample_nodes` nodes runs after this many
    /// swapped nodes, and a full round over every node at the end (a full round is
    /// O(nodes) probes, so one every K nodes would make a takeover O(nodes²/K)).
    #[serde(default = "default_full_round_every")]
    pub full_round_every_nodes: u64,
    /// How many nodes a bounded round between swaps probes (as source and
    /// destination): a sample seeded by the round's number, so every round looks at
    /// other nodes and the cost per moved node does not grow with the cluster.
    #[serde(default = "default_round_sample_nodes")]
    pub round_sample_nodes: u64,
    pub probe_timeout_seconds: u64,
    /// Hold one established connection per node (to the next node's probe server) open
    /// across the whole takeover, and stop when one breaks: what Calico promises is
    /// that an agent swap keeps established flows (conntrack), which new-connection
    /// probes cannot see.
    #[serde(default = "default_hold_connections")]
    pub hold_connections: bool,
}

fn default_hold_connections() -> bool {
    true
}

fn default_full_round_every() -> u64 {
    10
}

fn default_round_sample_nodes() -> u64 {
    8
}

/// One row of the version table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionRow {
    pub operator: String,
    pub calico: String,
    pub verified: String,
    pub source: String,
}

#[derive(Debug, Deserialize)]
struct VersionTable {
    rows: Vec<VersionRow>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("profile {0:?} is neither a built-in profile ({1}) nor a readable file")]
    NotFound(String, String),
    #[error("cannot read profile {path}: {problem}")]
    Read { path: PathBuf, problem: String },
    #[error("profile {name}: {problem}")]
    Invalid { name: String, problem: String },
}

/// The profile `plan` chose for a cluster, and why.
#[derive(Debug, Clone)]
pub struct Picked {
    pub profile: Profile,
    pub reason: String,
}

impl Profile {
    /// The built-in profile for the operator release a reviewed manifest installs, when
    /// one is written for that release and runs on this Kubernetes version; otherwise
    /// the one [`Profile::pick`] chooses by Kubernetes version (a manifest of another
    /// release is then a blocker, `OPERATOR_MANIFEST_VERSION_MISMATCH`).
    pub fn pick_for(
        kubernetes_version: &str,
        manifest_operator: Option<&str>,
        source_chart: Option<&str>,
    ) -> Result<Picked, ProfileError> {
        let by_version = Profile::pick(kubernetes_version, source_chart);
        if let (Some(op), Some(minor)) = (manifest_operator, parse_minor(kubernetes_version)) {
            for (name, text) in BUILTIN {
                let profile = Profile::parse(text, name)?;
                if profile.target.operator_version != op
                    || !profile.kubernetes.admits(minor)
                    || !profile.source.accepts(source_chart)
                {
                    continue;
                }
                let reason = match &by_version {
                    Ok(p) if p.profile.name == profile.name => format!(
                        "{}; the operator manifest installs that operator ({op})",
                        p.reason
                    ),
                    other => format!(
                        "profile {name} chosen for the operator manifest's operator {op}, which \
                         runs on Kubernetes {} (this cluster: {}.{}){}",
                        profile.kubernetes.describe(),
                        minor.0,
                        minor.1,
                        match other {
                            Ok(p) => format!(
                                "; by Kubernetes version alone plan would take {}",
                                p.profile.name
                            ),
                            Err(_) => String::new(),
                        }
                    ),
                };
                return Ok(Picked { profile, reason });
            }
        }
        by_version
    }

    /// The built-in profile written for operator release `version`, if any.
    pub fn builtin_for_operator(version: &str) -> Option<&'static str> {
        BUILTIN.iter().find_map(|(name, text)| {
            Profile::parse(text, name)
                .ok()
                .filter(|p| p.target.operator_version == version)
                .map(|_| *name)
        })
    }

    /// The built-in profile for a cluster of this Kubernetes version (`v1.33.2-eks-…`)
    /// whose release is chart `source_chart` (None: no release, a kube-system install):
    /// the first, in [`BUILTIN`]'s order, written for that chart version whose operator
    /// runs on it; the reason names the profiles passed over and why.
    pub fn pick(
        kubernetes_version: &str,
        source_chart: Option<&str>,
    ) -> Result<Picked, ProfileError> {
        let minor = parse_minor(kubernetes_version).ok_or_else(|| ProfileError::Invalid {
            name: "(chosen by Kubernetes version)".into(),
            problem: format!(
                "the cluster's Kubernetes version {kubernetes_version:?} does not read as 1.N;                  choose a profile with --profile"
            ),
        })?;
        let shown = format!("{}.{}", minor.0, minor.1);
        let mut passed = Vec::new();
        for (name, text) in BUILTIN {
            let profile = Profile::parse(text, name)?;
            if !profile.source.accepts(source_chart) {
                continue;
            }
            if profile.kubernetes.admits(minor) {
                let chart = source_chart
                    .map(|v| format!("chart {} {v} on ", profile.source.chart))
                    .unwrap_or_default();
                let mut reason = format!(
                    "profile {name} chosen for {chart}Kubernetes {shown}: operator {} runs on Kubernetes {}",
                    profile.target.operator_version,
                    profile.kubernetes.describe()
                );
                if !passed.is_empty() {
                    reason.push_str(&format!("; not {}", passed.join("; not ")));
                }
                return Ok(Picked { profile, reason });
            }
            passed.push(format!(
                "{name}: it runs on Kubernetes {} only, {}",
                profile.kubernetes.describe(),
                profile.kubernetes.why
            ));
        }
        Err(ProfileError::Invalid {
            name: "(chosen by Kubernetes version)".into(),
            problem: format!(
                "no built-in profile runs on Kubernetes {shown}: {}",
                passed.join("; ")
            ),
        })
    }

    /// A built-in profile by name, or a YAML file by path.
    pub fn load(spec: &str) -> Result<Profile, ProfileError> {
        let name = spec.trim_end_matches(".yaml");
        let name = name.strip_prefix("plans/").unwrap_or(name);
        if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name) {
            return Profile::parse(text, name);
        }
        let path = Path::new(spec);
        if !path.is_file() {
            let known = BUILTIN
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(ProfileError::NotFound(spec.into(), known));
        }
        let text = std::fs::read_to_string(path).map_err(|e| ProfileError::Read {
            path: path.into(),
            problem: e.to_string(),
        })?;
        Profile::parse(&text, spec)
    }

    pub fn parse(text: &str, name: &str) -> Result<Profile, ProfileError> {
        let p: Profile = serde_saphyr::from_str(text).map_err(|e| ProfileError::Invalid {
            name: name.into(),
            problem: e.to_string(),
        })?;
        p.validate()?;
        Ok(p)
    }

    fn validate(&self) -> Result<(), ProfileError> {
        let bad = |problem: String| ProfileError::Invalid {
            name: self.name.clone(),
            problem,
        };
        for (field, v) in [
            ("source.calico_version", &self.source.calico_version),
            ("target.calico_version", &self.target.calico_version),
            ("target.operator_version", &self.target.operator_version),
        ] {
            if parse_version(v).is_none() {
                return Err(bad(format!("{field} {v:?} is not a version like v3.19.1")));
            }
        }
        if self.checks.round_sample_nodes == 0 {
            return Err(bad("checks.round_sample_nodes must be at least 1".into()));
        }
        if self.checks.full_round_every_nodes == 0 {
            return Err(bad(
                "checks.full_round_every_nodes must be at least 1".into()
            ));
        }
        if self.pacing.nodes_at_a_time == 0 {
            return Err(bad("pacing.nodes_at_a_time must be at least 1".into()));
        }
        let hex64 = |pin: &str| pin.len() == 64 && pin.bytes().all(|b| b.is_ascii_hexdigit());
        let pin = &self.operator.sha256;
        if !pin.is_empty() && !hex64(pin) {
            return Err(bad("operator.sha256 must be 64 hex digits".into()));
        }
        if let Some(m) = &self.calico_manifest
            && !m.sha256.is_empty()
            && !hex64(&m.sha256)
        {
            return Err(bad("calico_manifest.sha256 must be 64 hex digits".into()));
        }
        if self.target.align_versions && self.calico_manifest.is_none() {
            return Err(bad(
                "target.align_versions needs calico_manifest (the target Calico's manifest \
                 install, whose CRDs, RBAC and images the alignment applies)"
                    .into(),
            ));
        }
        let k = &self.kubernetes;
        for (field, v) in [
            ("kubernetes.min", Some(&k.min)),
            ("kubernetes.max", k.max.as_ref()),
        ] {
            if let Some(v) = v
                && parse_minor(v).is_none()
            {
                return Err(bad(format!(
                    "{field} {v:?} is not a Kubernetes minor like 1.24"
                )));
            }
        }
        if !self.installation.is_object() {
            return Err(bad(
                "installation must be a mapping (the Installation spec)".into(),
            ));
        }
        Ok(())
    }
}

/// The names of the built-in profiles, in the order `pick` tries them.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|(n, _)| *n)
}

/// The shipped version table.
pub fn version_table() -> Result<Vec<VersionRow>, ProfileError> {
    let t: VersionTable =
        serde_saphyr::from_str(VERSION_TABLE).map_err(|e| ProfileError::Invalid {
            name: "plans/versions.yaml".into(),
            problem: e.to_string(),
        })?;
    Ok(t.rows)
}

/// `1.24`, `v1.33.2-eks-…` -> (1, 24): the Kubernetes minor.
pub fn parse_minor(v: &str) -> Option<(u32, u32)> {
    let v = v.trim().trim_start_matches('v');
    let mut it = v.split(['.', '-', '+']);
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.trim_end_matches('+').parse().ok()?;
    Some((major, minor))
}

/// `v3.19.1` or `3.19.1` -> (3, 19, 1).
pub fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let v = v.trim().trim_start_matches('v');
    let core = v.split(['-', '+']).next()?;
    let mut it = core.split('.');
    let a = it.next()?.parse().ok()?;
    let b = it.next()?.parse().ok()?;
    let c = it.next().map_or(Some(0), |s| s.parse().ok())?;
    Some((a, b, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profile_and_table_parse() {
        let rows = version_table().unwrap_or_else(|e| panic!("{e}"));
        assert!(rows.iter().all(|r| !r.source.is_empty()));
        for (name, _) in BUILTIN {
            let p = Profile::load(name).unwrap_or_else(|e| panic!("{e}"));
            let chart = match p.source.install {
                SourceInstall::Manifest => "0.3.10",
                SourceInstall::Operator => "0.3.11",
            };
            assert_eq!(p.source.chart_versions, vec![chart.to_string()], "{name}");
            assert_eq!(p.source.chart, SOURCE_CHART, "{name}");
            // Every profile's pair is a row of the table: the operator installs that Calico.
            assert!(
                rows.iter().any(|r| r.operator == p.target.operator_version
                    && r.calico == p.target.calico_version),
                "{name}"
            );
        }
    }

    #[test]
    fn the_profile_is_picked_by_the_clusters_kubernetes_version() {
        let pick = |v: &str| Profile::pick(v, Some("0.3.10")).map(|p| (p.profile.name, p.reason));
        let (name, reason) = pick("v1.24.17-eks-1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(name, SAME_VERSION_PROFILE);
        assert!(
            reason.contains("Kubernetes 1.24") && reason.contains("v1.17.4"),
            "{reason}"
        );
        for v in ["v1.25.0", "1.33", "v1.34.1-eks-abc"] {
            let (name, reason) = pick(v).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(name, CURRENT_PROFILE, "{v}");
            assert!(
                reason.contains(&format!("not {SAME_VERSION_PROFILE}"))
                    && reason.contains("PodSecurityPolicies"),
                "{reason}"
            );
        }
        assert!(pick("v1.15.0").is_err_and(|e| e.to_string().contains("no built-in profile")));
        assert!(pick("latest").is_err());
        // A kube-system install without a release: the manifest-style profiles.
        let unmanaged = Profile::pick("v1.24.1", None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(unmanaged.profile.name, SAME_VERSION_PROFILE);
        // The operator-based chart has its own profile, on every minor it runs on.
        for v in ["v1.24.17", "v1.29.0", "v1.33.1"] {
            let p = Profile::pick(v, Some("0.3.11")).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(p.profile.name, OPERATOR_CHART_PROFILE, "{v}");
            assert!(
                p.reason.contains("chart aws-calico 0.3.11 on Kubernetes"),
                "{}",
                p.reason
            );
        }
        assert_eq!(parse_minor("v1.33.2-eks-113cf36"), Some((1, 33)));
        assert_eq!(parse_minor("1.21+"), Some((1, 21)));
    }

    #[test]
    fn a_reviewed_manifest_picks_the_profile_of_its_operator_where_it_runs() {
        let pick = |v: &str, op: Option<&str>| {
            Profile::pick_for(v, op, Some("0.3.10"))
                .map(|p| (p.profile.name, p.reason))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        // v1.38.6 runs on 1.24 too: the team's manifest decides.
        let (name, reason) = pick("v1.24.17", Some("v1.38.6"));
        assert_eq!(name, CURRENT_PROFILE);
        assert!(
            reason.contains("operator manifest's operator v1.38.6")
                && reason.contains(&format!("alone plan would take {SAME_VERSION_PROFILE}")),
            "{reason}"
        );
        let (_, reason) = pick("v1.33.0", Some("v1.38.6"));
        assert!(
            reason.contains(&format!("not {SAME_VERSION_PROFILE}"))
                && reason.ends_with("the operator manifest installs that operator (v1.38.6)"),
            "{reason}"
        );
        assert_eq!(pick("v1.24.17", Some("v1.17.4")).0, SAME_VERSION_PROFILE);
        // v1.17.4 cannot run on 1.25: picked by Kubernetes version (and the manifest is
        // then a blocker); an operator no profile is written for, the same.
        assert_eq!(pick("v1.29.1", Some("v1.17.4")).0, CURRENT_PROFILE);
        assert_eq!(pick("v1.24.1", Some("v1.99.0")).0, SAME_VERSION_PROFILE);
        assert_eq!(pick("v1.24.1", None).0, SAME_VERSION_PROFILE);
        // The operator-based chart: its own profile whatever the manifest's operator.
        for op in [Some("v1.38.6"), Some("v1.17.4"), None] {
            let p =
                Profile::pick_for("v1.24.17", op, Some("0.3.11")).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(p.profile.name, OPERATOR_CHART_PROFILE, "{op:?}");
        }
        assert_eq!(
            Profile::builtin_for_operator("v1.17.4"),
            Some(SAME_VERSION_PROFILE)
        );
        assert_eq!(Profile::builtin_for_operator("v1.99.0"), None);
    }

    #[test]
    fn bad_profiles_name_the_problem() {
        let text = VERSION_TABLE;
        assert!(Profile::parse(text, "x").is_err());
        let good = BUILTIN[0].1;
        let bad = good.replace("nodes_at_a_time: 1", "nodes_at_a_time: 0");
        let err = Profile::parse(&bad, "x").err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("nodes_at_a_time")));
        assert!(Profile::load("no-such-profile").is_err());
        let bad = good.replace("max: \"1.24\"", "max: \"soon\"");
        let err = Profile::parse(&bad, "x").err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("kubernetes.max")));
        let current = BUILTIN[1].1;
        let cut = current
            .split("calico_manifest:")
            .next()
            .unwrap_or_default()
            .to_string()
            + "operator:"
            + current.split("\noperator:").nth(1).unwrap_or_default();
        let err = Profile::parse(&cut, "x").err().map(|e| e.to_string());
        assert!(
            err.is_some_and(|e| e.contains("needs calico_manifest")),
            "{cut}"
        );
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("v3.19.1"), Some((3, 19, 1)));
        assert_eq!(parse_version("3.20"), Some((3, 20, 0)));
        assert_eq!(parse_version("latest"), None);
    }
}
