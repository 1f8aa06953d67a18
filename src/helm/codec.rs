//! Release Secrets: the storage format of Helm 3's default `secrets` driver.
//!
//! helm/helm `pkg/storage/driver/util.go`: `encodeRelease` gzips the release
//! JSON at `gzip.BestCompression` and base64s it; `decodeRelease` base64-decodes
//! and gunzips only when the gzip magic `1f 8b 08` is present (releases stored
//! before compression existed are plain JSON). `pkg/storage/driver/secrets.go`
//! puts that string in `Data["release"]`, a []byte, so the Secret's JSON carries
//! it base64-encoded a second time.

use std::io::{Read, Write};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use flate2::{Compression, GzBuilder};
use serde_json::{Value, json};

use super::{HelmError, Release};

/// Secret type of Helm 3 release records.
pub const RELEASE_SECRET_TYPE: &str = "helm.sh/release.v1";
/// Label Tiller (Helm 2) put on its release ConfigMaps, value `TILLER`.
pub const HELM2_OWNER_LABEL: &str = "OWNER";

const MAGIC_GZIP: [u8; 3] = [0x1f, 0x8b, 0x08];
/// A release JSON larger than this is refused rather than inflated (Secrets are
/// limited to 1 MiB, so a real release is far smaller).
const MAX_RELEASE_JSON: u64 = 64 << 20;

/// `sh.helm.release.v1.<name>.v<revision>`.
pub fn secret_name(release: &str, revision: u32) -> String {
    format!("sh.helm.release.v1.{release}.v{revision}")
}

/// base64(gzip(JSON)) exactly as Helm's `encodeRelease` builds it: gzip header
/// with mtime 0, XFL 2 (best compression) and OS 255, as Go's compress/gzip writes.
pub fn encode_release_payload(rel: &Release) -> String {
    // Serialising plain data structures to a Vec cannot fail.
    let body = serde_json::to_vec(rel).unwrap_or_default();
    let mut gz = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), Compression::best());
    // Writing to a Vec cannot fail.
    let _ = gz.write_all(&body);
    let zipped = gz.finish().unwrap_or_default();
    STANDARD.encode(zipped)
}

/// Decode the `release` string (after the Secret's own base64 is removed).
pub fn decode_release_payload(payload: &str, secret: &str) -> Result<Release, HelmError> {
    let corrupt = |problem: String| HelmError::Corrupt {
        secret: secret.to_string(),
        problem,
    };
    let raw = STANDARD.decode(payload.trim().as_bytes()).map_err(|e| {
        corrupt(format!(
            "the release payload is not base64 ({e}); it should be base64(gzip(JSON))"
        ))
    })?;
    let json = if raw.starts_with(&MAGIC_GZIP) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .take(MAX_RELEASE_JSON + 1)
            .read_to_end(&mut out)
            .map_err(|e| corrupt(format!("the gzip stream is damaged ({e})")))?;
        if out.len() as u64 > MAX_RELEASE_JSON {
            return Err(corrupt(format!(
                "the release JSON inflates past {MAX_RELEASE_JSON} bytes; refusing to read it"
            )));
        }
        out
    } else {
        raw
    };
    serde_json::from_slice(&json).map_err(|e| {
        corrupt(format!(
            "the release JSON does not parse as a Helm release ({e})"
        ))
    })
}

/// The Secret Helm 3 writes for one revision.
pub fn encode_release_secret(rel: &Release) -> Value {
    let payload = encode_release_payload(rel);
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret_name(&rel.name, rel.version),
            "namespace": rel.namespace,
            "labels": {
                "name": rel.name,
                "owner": "helm",
                "status": rel.info.status,
                "version": rel.version.to_string(),
            },
        },
        "type": RELEASE_SECRET_TYPE,
        "data": { "release": STANDARD.encode(payload.as_bytes()) },
    })
}

/// `secret` (a live release record) holding `rel` instead: the same name, labels and
/// type, the payload encoded as Helm encodes it.
pub fn with_release(secret: &Value, rel: &Release) -> Value {
    let mut out = secret.clone();
    out["data"]["release"] = json!(STANDARD.encode(encode_release_payload(rel).as_bytes()));
    out
}

/// Read a release back from its Secret as the API serves it.
pub fn decode_release_secret(secret: &Value) -> Result<Release, HelmError> {
    let name = secret
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
        .to_string();
    if let Some(kind) = secret.get("kind").and_then(Value::as_str)
        && kind != "Secret"
    {
        return Err(HelmError::NotARelease(format!(
            "{name} is a {kind}, not a Secret"
        )));
    }
    match secret.get("type").and_then(Value::as_str) {
        Some(RELEASE_SECRET_TYPE) => {}
        other => {
            return Err(HelmError::NotARelease(format!(
                "Secret {name} has type {:?}, expected {RELEASE_SECRET_TYPE:?}",
                other.unwrap_or("")
            )));
        }
    }
    let outer = secret
        .pointer("/data/release")
        .and_then(Value::as_str)
        .ok_or_else(|| HelmError::Corrupt {
            secret: name.clone(),
            problem: "data.release is missing".into(),
        })?;
    let inner = STANDARD
        .decode(outer.as_bytes())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| HelmError::Corrupt {
            secret: name.clone(),
            problem: "data.release is not base64 of a text payload".into(),
        })?;
    decode_release_payload(&inner, &name)
}

/// A Helm release record recognised among Secrets and ConfigMaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseRecord {
    /// Helm 3, secrets driver (the default).
    Helm3Secret {
        release: String,
        revision: u32,
        status: String,
    },
    /// Helm 3, configmap driver (`HELM_DRIVER=configmap`): labels owner=helm.
    Helm3ConfigMap {
        release: String,
        revision: u32,
        status: String,
    },
    /// Helm 2 (Tiller): ConfigMap labelled OWNER=TILLER, NAME, VERSION, STATUS.
    Helm2ConfigMap {
        release: String,
        revision: u32,
        status: String,
    },
    /// Helm 2 with Tiller's secrets storage: same labels on a Secret.
    Helm2Secret {
        release: String,
        revision: u32,
        status: String,
    },
}

impl ReleaseRecord {
    /// True for Tiller's records: Helm 3 cannot read them without `helm 2to3`.
    pub fn is_helm2(&self) -> bool {
        matches!(self, Self::Helm2ConfigMap { .. } | Self::Helm2Secret { .. })
    }
}

/// Recognise a release record by its kind, type and labels; `None` for anything else.
pub fn detect_release_record(obj: &Value) -> Option<ReleaseRecord> {
    let kind = obj.get("kind").and_then(Value::as_str)?;
    let label = |k: &str| {
        obj.pointer("/metadata/labels")
            .and_then(|l| l.get(k))
            .and_then(Value::as_str)
    };
    let revision = |k: &str| label(k).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
    let tiller = label(HELM2_OWNER_LABEL) == Some("TILLER");
    let helm2 = || {
        Some((
            label("NAME")?.to_string(),
            revision("VERSION"),
            label("STATUS").unwrap_or_default().to_lowercase(),
        ))
    };
    match kind {
        "Secret" if tiller => {
            let (release, revision, status) = helm2()?;
            Some(ReleaseRecord::Helm2Secret {
                release,
                revision,
                status,
            })
        }
        "Secret" if obj.get("type").and_then(Value::as_str) == Some(RELEASE_SECRET_TYPE) => {
            Some(ReleaseRecord::Helm3Secret {
                release: label("name")?.to_string(),
                revision: revision("version"),
                status: label("status").unwrap_or_default().to_string(),
            })
        }
        "ConfigMap" if tiller => {
            let (release, revision, status) = helm2()?;
            Some(ReleaseRecord::Helm2ConfigMap {
                release,
                revision,
                status,
            })
        }
        "ConfigMap" if label("owner") == Some("helm") => Some(ReleaseRecord::Helm3ConfigMap {
            release: label("name")?.to_string(),
            revision: revision("version"),
            status: label("status").unwrap_or_default().to_string(),
        }),
        _ => None,
    }
}

/// The release Helm considers current among the stored records of `release`:
/// like `helm status`, the highest revision whose status is `deployed`, or,
/// when none is, the highest revision (a failed or pending release).
/// Records of other releases and non-Helm objects are ignored.
pub fn current_release(records: &[Value], release: &str) -> Result<Option<Release>, HelmError> {
    let mut best: Option<(bool, u32, &Value)> = None;
    for r in records {
        let Some(ReleaseRecord::Helm3Secret {
            release: name,
            revision,
            status,
        }) = detect_release_record(r)
        else {
            continue;
        };
        if name != release {
            continue;
        }
        let key = (status == super::status::DEPLOYED, revision);
        if best.is_none_or(|(d, v, _)| key > (d, v)) {
            best = Some((key.0, key.1, r));
        }
    }
    best.map(|(_, _, r)| decode_release_secret(r)).transpose()
}
