//! The release record as Helm 3 serialises it (field names and order follow
//! helm/helm `pkg/release/release.go`, `pkg/release/info.go`,
//! `pkg/chart/chart.go`, `pkg/chart/metadata.go`), so that what we encode is
//! what `helm` decodes and the reverse.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Release statuses Helm writes (helm/helm `pkg/release/status.go`).
pub mod status {
    pub const DEPLOYED: &str = "deployed";
    pub const SUPERSEDED: &str = "superseded";
    pub const FAILED: &str = "failed";
    pub const UNINSTALLING: &str = "uninstalling";
    pub const PENDING_INSTALL: &str = "pending-install";
    pub const PENDING_UPGRADE: &str = "pending-upgrade";
    pub const PENDING_ROLLBACK: &str = "pending-rollback";
    pub const UNINSTALLED: &str = "uninstalled";
}

/// One revision of a Helm release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub info: Info,
    #[serde(default)]
    pub chart: Chart,
    /// The user-supplied values (`helm get values`), not the chart defaults.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub config: Map<String, Value>,
    /// The rendered templates, `---`-separated with `# Source:` comments.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub manifest: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<Value>,
    /// The revision number N of `sh.helm.release.v1.<name>.vN`.
    #[serde(default)]
    pub version: u32,
    #[serde(default)]
    pub namespace: String,
}

impl Release {
    /// The status label value (`deployed`, `superseded`, ...).
    pub fn status(&self) -> &str {
        &self.info.status
    }
}

/// Release info; timestamps are kept as the RFC 3339 strings Go wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Info {
    #[serde(default = "zero_time")]
    pub first_deployed: String,
    #[serde(default = "zero_time")]
    pub last_deployed: String,
    /// Go writes the zero time here when the release was never deleted.
    #[serde(default = "zero_time")]
    pub deleted: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub notes: String,
}

impl Default for Info {
    fn default() -> Self {
        Self {
            first_deployed: zero_time(),
            last_deployed: zero_time(),
            deleted: zero_time(),
            description: String::new(),
            status: String::new(),
            notes: String::new(),
        }
    }
}

/// Go's zero `time.Time` as encoding/json writes it.
fn zero_time() -> String {
    "0001-01-01T00:00:00Z".to_string()
}

/// The chart as stored in the release (Helm drops `Raw`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Chart {
    #[serde(default)]
    pub metadata: ChartMetadata,
    #[serde(default)]
    pub lock: Option<Value>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub templates: Vec<ChartFile>,
    /// The chart's own values.yaml.
    #[serde(default, deserialize_with = "null_as_default")]
    pub values: Map<String, Value>,
    /// values.schema.json (a Go []byte: base64 in JSON, null when absent).
    #[serde(default)]
    pub schema: Option<String>,
    /// Every other file of the chart, `crds/*` included.
    #[serde(default, deserialize_with = "null_as_default")]
    pub files: Vec<ChartFile>,
}

impl Chart {
    /// The files under `crds/`, which Helm installs once and never upgrades or deletes.
    pub fn crd_files(&self) -> impl Iterator<Item = &ChartFile> {
        self.files.iter().filter(|f| f.name.starts_with("crds/"))
    }
}

/// Chart.yaml as stored in the release.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChartMetadata {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub home: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keywords: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub icon: String,
    #[serde(
        rename = "apiVersion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub api_version: String,
    #[serde(
        rename = "appVersion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub app_version: String,
    /// Fields we do not interpret (maintainers, annotations, dependencies, ...), kept as read.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A file of the chart; `data` is a Go []byte, hence base64 in JSON.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChartFile {
    pub name: String,
    #[serde(with = "go_bytes")]
    pub data: Vec<u8>,
}

impl ChartFile {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            data: text.into().into_bytes(),
        }
    }

    /// The file as text (lossy for non-UTF-8 content).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// encoding/json's []byte: standard base64, `null` for nil.
mod go_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(Vec::new()),
            Some(s) => STANDARD
                .decode(s.as_bytes())
                .map_err(|e| serde::de::Error::custom(format!("file data is not base64: {e}"))),
        }
    }
}
