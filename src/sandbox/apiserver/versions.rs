//! Which Kubernetes minor the sandbox claims to be, and which API versions of its
//! built-in kinds that minor serves.
//!
//! The table [`WINDOWS`] holds one row per API version of a built-in kind the sandbox
//! serves that is not served over the whole supported range (1.21 to 1.34); every other
//! version named in `types::builtins()` is served at every minor. Each row cites the
//! section of the upstream deprecation guide,
//! <https://kubernetes.io/docs/reference/using-api/deprecation-guide/>, that removed it
//! (or, for additions, the release that first served it).

use std::fmt;
use std::str::FromStr;

/// A Kubernetes minor of the 1.x line the sandbox can claim to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KubernetesVersion {
    minor: u32,
}

/// A Kubernetes version the sandbox cannot serve, or one it cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("\"{0}\" is not a Kubernetes version: write it as 1.MINOR, for example 1.29 or v1.29")]
    Unreadable(String),
    #[error(
        "the sandbox serves Kubernetes 1.{oldest} to 1.{newest}, not {given}: choose a minor in that range",
        oldest = KubernetesVersion::OLDEST,
        newest = KubernetesVersion::NEWEST
    )]
    OutOfRange { given: String },
}

impl KubernetesVersion {
    /// The oldest minor served: the first to serve policy/v1 PodDisruptionBudget and the
    /// last to serve the v1beta1 APIs removed in 1.22.
    pub const OLDEST: u32 = 21;
    /// The newest minor served, and the default: the newest EKS offers.
    pub const NEWEST: u32 = 34;

    /// 1.`minor`, refused outside [`Self::OLDEST`]..=[`Self::NEWEST`].
    pub fn new(minor: u32) -> Result<Self, VersionError> {
        if (Self::OLDEST..=Self::NEWEST).contains(&minor) {
            Ok(Self { minor })
        } else {
            Err(VersionError::OutOfRange {
                given: format!("1.{minor}"),
            })
        }
    }

    /// From `1.21` or `v1.21` (a patch part such as `1.21.3` is accepted and ignored).
    pub fn parse(s: &str) -> Result<Self, VersionError> {
        let t = s.trim();
        let t = t.strip_prefix('v').unwrap_or(t);
        let unreadable = || VersionError::Unreadable(s.to_string());
        let mut parts = t.split('.');
        let major = parts.next().ok_or_else(unreadable)?;
        let minor = parts.next().ok_or_else(unreadable)?;
        let patch = parts.next();
        if parts.next().is_some()
            || patch.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(unreadable());
        }
        let num = |x: &str| -> Result<u32, VersionError> {
            if x.is_empty() || !x.bytes().all(|b| b.is_ascii_digit()) {
                return Err(unreadable());
            }
            x.parse().map_err(|_| unreadable())
        };
        let (major, minor) = (num(major)?, num(minor)?);
        if major != 1 {
            return Err(VersionError::OutOfRange {
                given: s.trim().to_string(),
            });
        }
        Self::new(minor)
    }

    pub fn minor(self) -> u32 {
        self.minor
    }

    /// `/version`'s `gitVersion`: `v1.N.0-sandbox`.
    pub fn git_version(self) -> String {
        format!("v1.{}.0-sandbox", self.minor)
    }
}

impl Default for KubernetesVersion {
    fn default() -> Self {
        Self {
            minor: Self::NEWEST,
        }
    }
}

impl fmt::Display for KubernetesVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "1.{}", self.minor)
    }
}

impl FromStr for KubernetesVersion {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The minors at which one API version of a built-in resource is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub group: &'static str,
    pub version: &'static str,
    pub resource: &'static str,
    /// First minor serving it (`None`: before the supported range).
    pub first: Option<u32>,
    /// Last minor serving it (`None`: still served at the newest).
    pub last: Option<u32>,
    /// Where upstream says so.
    pub source: &'static str,
}

const GUIDE: &str = "https://kubernetes.io/docs/reference/using-api/deprecation-guide/";

macro_rules! removed_in {
    ($group:literal, $version:literal, $resource:literal, $removed:literal, $anchor:literal) => {
        Window {
            group: $group,
            version: $version,
            resource: $resource,
            first: None,
            last: Some($removed - 1),
            source: concat!(
                "https://kubernetes.io/docs/reference/using-api/deprecation-guide/#",
                $anchor
            ),
        }
    };
}

/// Every API version of a built-in kind that is not served across 1.21..=1.34.
pub const WINDOWS: &[Window] = &[
    // v1.22: "The apiextensions.k8s.io/v1beta1 API version of CustomResourceDefinition
    // will no longer be served in v1.22" (v1 available since v1.16).
    removed_in!(
        "apiextensions.k8s.io",
        "v1beta1",
        "customresourcedefinitions",
        22,
        "customresourcedefinition-v122"
    ),
    // v1.22: "The rbac.authorization.k8s.io/v1beta1 API version of ClusterRole,
    // ClusterRoleBinding, Role, and RoleBinding will no longer be served in v1.22".
    removed_in!(
        "rbac.authorization.k8s.io",
        "v1beta1",
        "clusterroles",
        22,
        "rbac-resources-v122"
    ),
    removed_in!(
        "rbac.authorization.k8s.io",
        "v1beta1",
        "clusterrolebindings",
        22,
        "rbac-resources-v122"
    ),
    removed_in!(
        "rbac.authorization.k8s.io",
        "v1beta1",
        "roles",
        22,
        "rbac-resources-v122"
    ),
    removed_in!(
        "rbac.authorization.k8s.io",
        "v1beta1",
        "rolebindings",
        22,
        "rbac-resources-v122"
    ),
    // v1.22: "The coordination.k8s.io/v1beta1 API version of Lease will no longer be
    // served in v1.22".
    removed_in!("coordination.k8s.io", "v1beta1", "leases", 22, "lease-v122"),
    // v1.25: "The policy/v1beta1 API version of PodDisruptionBudget will no longer be
    // served in v1.25" (policy/v1 available since v1.21).
    removed_in!(
        "policy",
        "v1beta1",
        "poddisruptionbudgets",
        25,
        "poddisruptionbudget-v125"
    ),
    // v1.25: "PodSecurityPolicy in the policy/v1beta1 API version will no longer be
    // served in v1.25"; the kind has no successor.
    removed_in!("policy", "v1beta1", "podsecuritypolicies", 25, "psp-v125"),
    // v1.25: "The events.k8s.io/v1beta1 API version of Event will no longer be served
    // in v1.25".
    removed_in!("events.k8s.io", "v1beta1", "events", 25, "event-v125"),
    // policy/v1 PodDisruptionBudget: "available since v1.21" (the v1.25 section above).
    Window {
        group: "policy",
        version: "v1",
        resource: "poddisruptionbudgets",
        first: Some(21),
        last: None,
        source: "https://kubernetes.io/docs/reference/using-api/deprecation-guide/#poddisruptionbudget-v125",
    },
];

/// Whether `group/version` `resource` is served at `kv`: its [`WINDOWS`] row decides,
/// and a version without one is served at every supported minor.
pub fn served(group: &str, version: &str, resource: &str, kv: KubernetesVersion) -> bool {
    match WINDOWS
        .iter()
        .find(|w| w.group == group && w.version == version && w.resource == resource)
    {
        Some(w) => w.first.is_none_or(|f| kv.minor >= f) && w.last.is_none_or(|l| kv.minor <= l),
        None => true,
    }
}

/// The deprecation guide every row of [`WINDOWS`] points into.
pub fn guide() -> &'static str {
    GUIDE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(minor: u32) -> KubernetesVersion {
        KubernetesVersion::new(minor).unwrap()
    }

    #[test]
    fn parses_both_spellings_and_refuses_outside_the_range() {
        assert_eq!(KubernetesVersion::parse("1.21"), Ok(kv(21)));
        assert_eq!(KubernetesVersion::parse("v1.34"), Ok(kv(34)));
        assert_eq!(KubernetesVersion::parse("1.28.3"), Ok(kv(28)));
        assert_eq!(KubernetesVersion::default(), kv(34));
        let e = KubernetesVersion::parse("1.20").unwrap_err().to_string();
        assert_eq!(
            e,
            "the sandbox serves Kubernetes 1.21 to 1.34, not 1.20: choose a minor in that range"
        );
        assert!(matches!(
            KubernetesVersion::parse("1.35"),
            Err(VersionError::OutOfRange { .. })
        ));
        assert!(matches!(
            KubernetesVersion::parse("2.21"),
            Err(VersionError::OutOfRange { .. })
        ));
        for bad in ["", "1", "1.x", "v", "1.21.", "1.21.0.1", "one.two", "1.-3"] {
            assert!(
                matches!(
                    KubernetesVersion::parse(bad),
                    Err(VersionError::Unreadable(_))
                ),
                "{bad:?}"
            );
        }
        assert_eq!(kv(29).to_string(), "1.29");
        assert_eq!(kv(29).git_version(), "v1.29.0-sandbox");
    }

    #[test]
    fn the_table_follows_the_deprecation_guide() {
        let at = |g, v, r, m| served(g, v, r, kv(m));
        for r in [
            "clusterroles",
            "clusterrolebindings",
            "roles",
            "rolebindings",
        ] {
            assert!(at("rbac.authorization.k8s.io", "v1beta1", r, 21));
            assert!(!at("rbac.authorization.k8s.io", "v1beta1", r, 22));
            assert!(at("rbac.authorization.k8s.io", "v1", r, 21));
            assert!(at("rbac.authorization.k8s.io", "v1", r, 34));
        }
        let crd = "customresourcedefinitions";
        assert!(at("apiextensions.k8s.io", "v1beta1", crd, 21));
        assert!(!at("apiextensions.k8s.io", "v1beta1", crd, 22));
        assert!(at("apiextensions.k8s.io", "v1", crd, 21));
        for r in ["poddisruptionbudgets", "podsecuritypolicies"] {
            assert!(at("policy", "v1beta1", r, 24), "{r}");
            assert!(!at("policy", "v1beta1", r, 25), "{r}");
        }
        assert!(at("policy", "v1", "poddisruptionbudgets", 21));
        assert!(at("policy", "v1", "poddisruptionbudgets", 34));
        assert!(at("coordination.k8s.io", "v1beta1", "leases", 21));
        assert!(!at("coordination.k8s.io", "v1beta1", "leases", 22));
        assert!(at("events.k8s.io", "v1beta1", "events", 24));
        assert!(!at("events.k8s.io", "v1beta1", "events", 25));
        // Versions without a row are served over the whole range.
        for m in KubernetesVersion::OLDEST..=KubernetesVersion::NEWEST {
            assert!(at("networking.k8s.io", "v1", "networkpolicies", m));
            assert!(at("batch", "v1", "jobs", m));
        }
        for w in WINDOWS {
            assert!(w.source.starts_with(guide()), "{w:?}");
        }
    }
}
