//! Migration profiles (plans/*.yaml): the target versions, the operator manifest pin,
//! the Installation spec, pacing and check thresholds, as data.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The profile shipped with the tool, used when `--profile` is not given.
pub const DEFAULT_PROFILE: &str = "aws-calico-0.3.10";
/// The profile's text, embedded so the binary works outside the repository.
const BUILTIN: &[(&str, &str)] = &[(
    "aws-calico-0.3.10",
    include_str!("../../plans/aws-calico-0.3.10.yaml"),
)];
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
    pub calico_version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    pub calico_version: String,
    pub operator_version: String,
    #[serde(default)]
    pub align_versions: bool,
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
    /// verified; a full round over every node runs after this many swapped nodes and
    /// at the end (a full round is O(nodes) probes, so one after every node would
    /// make a takeover O(nodes²)).
    #[serde(default = "default_full_round_every")]
    pub full_round_every_nodes: u64,
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

impl Profile {
    /// A built-in profile by name, or a YAML file by path.
    pub fn load(spec: Option<&str>) -> Result<Profile, ProfileError> {
        let spec = spec.unwrap_or(DEFAULT_PROFILE);
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
        if self.checks.full_round_every_nodes == 0 {
            return Err(bad(
                "checks.full_round_every_nodes must be at least 1".into()
            ));
        }
        if self.pacing.nodes_at_a_time == 0 {
            return Err(bad("pacing.nodes_at_a_time must be at least 1".into()));
        }
        let pin = &self.operator.sha256;
        if !pin.is_empty() && (pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(bad("operator.sha256 must be 64 hex digits".into()));
        }
        if !self.installation.is_object() {
            return Err(bad(
                "installation must be a mapping (the Installation spec)".into(),
            ));
        }
        Ok(())
    }
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
        let p = Profile::load(None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.source.chart_versions, vec!["0.3.10".to_string()]);
        let rows = version_table().unwrap_or_else(|e| panic!("{e}"));
        assert!(rows.iter().all(|r| !r.source.is_empty()));
        assert!(rows.iter().any(|r| r.operator == p.target.operator_version));
    }

    #[test]
    fn bad_profiles_name_the_problem() {
        let text = VERSION_TABLE;
        assert!(Profile::parse(text, "x").is_err());
        let good = BUILTIN[0].1;
        let bad = good.replace("nodes_at_a_time: 1", "nodes_at_a_time: 0");
        let err = Profile::parse(&bad, "x").err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("nodes_at_a_time")));
        assert!(Profile::load(Some("no-such-profile")).is_err());
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("v3.19.1"), Some((3, 19, 1)));
        assert_eq!(parse_version("3.20"), Some((3, 20, 0)));
        assert_eq!(parse_version("latest"), None);
    }
}
