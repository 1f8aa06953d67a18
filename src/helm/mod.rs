//! Helm release records, read and written without a cluster.
//!
//! Helm 3 stores every revision of a release as a Secret
//! `sh.helm.release.v1.<name>.v<N>` (type `helm.sh/release.v1`) whose data key
//! `release` holds base64(gzip(JSON of the release)); the API server base64s
//! that string once more in JSON. Sources: helm/helm
//! `pkg/storage/driver/util.go` (encodeRelease/decodeRelease),
//! `pkg/storage/driver/secrets.go` (newSecretsObject, labels),
//! `pkg/release/release.go`, `pkg/release/info.go`, `pkg/chart/chart.go`,
//! `pkg/chart/metadata.go` (the JSON field names).
//!
//! This module is pure: it turns JSON objects into [`Release`] values and back,
//! splits rendered manifests, and predicts what `helm uninstall` deletes.

mod codec;
mod manifest;
mod model;
#[cfg(test)]
mod tests;

pub use codec::{
    HELM2_OWNER_LABEL, RELEASE_SECRET_TYPE, ReleaseRecord, current_release, decode_release_payload,
    decode_release_secret, detect_release_record, encode_release_payload, encode_release_secret,
    secret_name, with_release,
};
pub use manifest::{
    KEEP_POLICY, ManifestObject, ObjectRef, RESOURCE_POLICY, is_cluster_scoped, manifest_objects,
    removed_api, uninstall_blockers, uninstall_plan, with_keep_policy,
};
pub use model::{Chart, ChartFile, ChartMetadata, Info, Release, status};

/// What can go wrong reading a release record or a manifest.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HelmError {
    #[error("not a Helm 3 release Secret: {0}")]
    NotARelease(String),
    #[error("release Secret {secret}: {problem}")]
    Corrupt { secret: String, problem: String },
    #[error("manifest document {index} ({source_path}): {problem}")]
    Manifest {
        index: usize,
        source_path: String,
        problem: String,
    },
}
