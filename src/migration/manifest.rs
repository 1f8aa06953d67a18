//! The operator manifest as a file: read, checked and placed (document, line, object)
//! the same way by `plan --operator-manifest`, by apply's session and by the
//! install-operator step, and compared with the APIs a cluster serves. Shared by the
//! plan and the step, so it lives beside them rather than in the step.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value;

use crate::cluster::objects::{ObjRef, ObjectError, Objects};
use crate::migration::refs::CALICO_GROUP;

/// Where an object is in a manifest file: its document (counting, from 1, the
/// documents that hold more than comments), the line that document starts on, and
/// for a `kind: List` document the item (from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub doc: usize,
    pub line: usize,
    pub item: Option<usize>,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.item {
            Some(i) => write!(f, "document {} item {i} (line {})", self.doc, self.line),
            None => write!(f, "document {} (line {})", self.doc, self.line),
        }
    }
}

/// One object of the operator manifest, with where it is in the file (None for
/// objects that did not come from a file).
#[derive(Debug, Clone)]
pub struct ManifestObject {
    pub place: Option<Place>,
    pub r: ObjRef,
    pub obj: Value,
}

impl ManifestObject {
    /// `document 19 (line 4634), PodSecurityPolicy tigera-operator (policy/v1beta1)`.
    pub fn describe(&self) -> String {
        at(self.place, Some(self.r.describe()))
    }
}

fn at(place: Option<Place>, object: Option<String>) -> String {
    match (place, object) {
        (Some(p), Some(o)) => format!("{p}, {o}"),
        (Some(p), None) => p.to_string(),
        (None, Some(o)) => o,
        (None, None) => "an object".into(),
    }
}

/// Why an operator manifest cannot be used, whatever the cluster: the file, the
/// document and the object, what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "{file} is not UTF-8 text (invalid byte at offset {offset}); an operator manifest is \
         YAML: give the tigera-operator.yaml itself, not an archive or a web page"
    )]
    NotText { file: String, offset: usize },
    #[error(
        "{file} ends in the middle of a line, in {at}: the file is truncated (an interrupted \
         download or copy); download it again. A complete manifest ends with a newline: if \
         you edited the file and it is whole, add the final newline"
    )]
    Truncated { file: String, at: String },
    #[error("{file}, {at}: not valid YAML: {problem}; fix the file or download it again")]
    Yaml {
        file: String,
        at: String,
        problem: String,
    },
    #[error("{file}, {at}: {problem}; {fix}")]
    Invalid {
        file: String,
        at: String,
        problem: String,
        fix: String,
    },
    #[error(
        "{file} holds no Kubernetes object; give the reviewed tigera-operator.yaml with \
         `--operator-manifest FILE`"
    )]
    Empty { file: String },
}

const FIX_FILE: &str = "fix the file or download it again";

/// The one reader of an operator manifest, for `plan --operator-manifest` and for
/// apply's install-operator step alike: multi-document YAML (duplicate keys refused),
/// every document an object (or a `kind: List` of them) with apiVersion, kind and
/// metadata.name, the fields the API server requires of the kinds a truncated file
/// cuts short, a file that ends mid-line refused as truncated, and the objects this
/// step refuses to apply ([`check_object`]). `file` names the file in messages.
/// The operator release a manifest installs: the image tag of Deployment
/// tigera-operator/tigera-operator's `tigera-operator` container
/// (`quay.io/tigera/operator:v1.38.6` -> `v1.38.6`), with the object it was read from.
/// None when the file holds no such Deployment (or its image has no tag).
pub fn operator_version(objects: &[ManifestObject]) -> Option<(String, &ManifestObject)> {
    let d = objects.iter().find(|o| {
        o.r.kind == "Deployment"
            && o.r.name == "tigera-operator"
            && o.r.namespace.as_deref() == Some("tigera-operator")
    })?;
    let image = d
        .obj
        .pointer("/spec/template/spec/containers")?
        .as_array()?
        .iter()
        .find(|c| c["name"] == "tigera-operator")?["image"]
        .as_str()?;
    let (_, tag) = image
        .rsplit_once('/')
        .unwrap_or(("", image))
        .1
        .split_once(':')?;
    let tag = tag.split('@').next().unwrap_or(tag);
    Some((tag.to_string(), d))
}

pub fn read_manifest(file: &str, bytes: &[u8]) -> Result<Vec<ManifestObject>, ManifestError> {
    let objects = read_objects(file, bytes)?;
    for o in &objects {
        check_object(&o.r, &o.obj).map_err(|(problem, fix)| ManifestError::Invalid {
            file: file.to_string(),
            at: o.describe(),
            problem,
            fix,
        })?;
    }
    if objects.is_empty() {
        return Err(ManifestError::Empty { file: file.into() });
    }
    Ok(objects)
}

/// [`read_manifest`] without the operator-specific refusals and without requiring
/// an object: any multi-document Kubernetes YAML file.
pub fn read_objects(file: &str, bytes: &[u8]) -> Result<Vec<ManifestObject>, ManifestError> {
    let (text, cut) = match std::str::from_utf8(bytes) {
        Ok(t) => (t, false),
        // A multi-byte character cut at the very end: a truncated file.
        Err(e) if e.error_len().is_none() => (
            std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
            true,
        ),
        Err(e) => {
            return Err(ManifestError::NotText {
                file: file.into(),
                offset: e.valid_up_to(),
            });
        }
    };
    let truncated = cut || !(text.is_empty() || text.ends_with('\n'));
    let docs = documents(text);
    let mut out = Vec::new();
    for (i, (line, chunk)) in docs.iter().enumerate() {
        let place = Place {
            doc: i + 1,
            line: *line,
            item: None,
        };
        let last = i + 1 == docs.len();
        let parsed = serde_saphyr::from_str::<Value>(chunk);
        if last && truncated {
            let object = match &parsed {
                Ok(v) => ObjRef::of(v).map(|r| r.describe()),
                Err(_) => guess_object(chunk),
            };
            return Err(ManifestError::Truncated {
                file: file.into(),
                at: at(Some(place), object),
            });
        }
        let value = parsed.map_err(|e| {
            let mut opts = serde_saphyr::render_options! {
                formatter: &serde_saphyr::UserMessageFormatter,
                snippets: serde_saphyr::SnippetMode::Off,
            };
            opts.line_offset = (*line as u64).saturating_sub(1);
            ManifestError::Yaml {
                file: file.into(),
                at: at(Some(place), guess_object(chunk)),
                problem: e.render_with_options(opts),
            }
        })?;
        let items: Vec<(Option<usize>, Value)> = match value {
            Value::Null => continue,
            Value::Object(ref m)
                if m.get("kind").and_then(Value::as_str) == Some("List")
                    && m.get("items").is_some_and(Value::is_array) =>
            {
                let items = m
                    .get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                items
                    .into_iter()
                    .enumerate()
                    .map(|(j, v)| (Some(j + 1), v))
                    .collect()
            }
            v => vec![(None, v)],
        };
        for (item, obj) in items {
            let place = Place { item, ..place };
            let invalid = |object: Option<String>, problem: String| ManifestError::Invalid {
                file: file.into(),
                at: at(Some(place), object),
                problem,
                fix: FIX_FILE.into(),
            };
            if !obj.is_object() {
                return Err(invalid(
                    None,
                    "is not a Kubernetes object (a mapping with apiVersion, kind and metadata)"
                        .into(),
                ));
            }
            let missing: Vec<&str> = [
                ("apiVersion", "/apiVersion"),
                ("kind", "/kind"),
                ("metadata.name", "/metadata/name"),
            ]
            .into_iter()
            .filter(|(_, p)| {
                obj.pointer(p)
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
            })
            .map(|(name, _)| name)
            .collect();
            let Some(r) = ObjRef::of(&obj).filter(|_| missing.is_empty()) else {
                return Err(invalid(
                    partial_object(&obj),
                    format!("has no {}", missing.join(", ")),
                ));
            };
            let absent = required_fields(&r, &obj);
            if !absent.is_empty() {
                return Err(invalid(
                    Some(r.describe()),
                    format!(
                        "lacks {} that the API server requires of a {} (is the file cut short?)",
                        absent.join(", "),
                        r.kind
                    ),
                ));
            }
            out.push(ManifestObject {
                place: Some(place),
                r,
                obj,
            });
        }
    }
    Ok(out)
}

/// The documents of a YAML stream: (line it starts on, text), documents holding only
/// comments left out. A `---` or `...` line at column 0 always ends a document, even
/// inside a block scalar (YAML 1.2 §9.1.4, `c-forbidden`), so splitting on those
/// lines gives the parser's documents, each parsed with its own line numbers.
fn documents(text: &str) -> Vec<(usize, &str)> {
    fn marker(line: &str, m: &str) -> bool {
        line.strip_prefix(m)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
    }
    let mut out = Vec::new();
    let (mut start, mut start_line, mut pos) = (0, 1, 0);
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if marker(line, "---") && pos > start {
            out.push((start_line, &text[start..pos]));
            (start, start_line) = (pos, n + 1);
        }
        pos += line.len();
        if marker(line, "...") {
            out.push((start_line, &text[start..pos]));
            (start, start_line) = (pos, n + 2);
        }
    }
    if pos > start {
        out.push((start_line, &text[start..pos]));
    }
    out.retain(|(_, d)| {
        d.lines().any(|l| {
            let l = l.trim_end();
            let rest = ["---", "..."]
                .iter()
                .find_map(|m| marker(l, m).then(|| &l[3..]))
                .unwrap_or(l)
                .trim();
            !rest.is_empty() && !rest.starts_with('#')
        })
    });
    out
}

/// The object a document that does not parse seems to hold, from its top-level
/// `apiVersion:` and `kind:` lines and the `name:`/`namespace:` under `metadata:`.
fn guess_object(doc: &str) -> Option<String> {
    let value = |l: &str, key: &str| {
        l.strip_prefix(key)
            .and_then(|v| v.strip_prefix(':'))
            .map(|v| v.trim().trim_matches(['"', '\'']).to_string())
            .filter(|v| !v.is_empty())
    };
    let (mut api, mut kind, mut name, mut ns) = (None, None, None, None);
    let mut in_metadata = false;
    for l in doc.lines() {
        if !l.starts_with([' ', '\t']) {
            in_metadata = l.trim_end() == "metadata:";
            api = api.or_else(|| value(l, "apiVersion"));
            kind = kind.or_else(|| value(l, "kind"));
        } else if in_metadata && l.starts_with("  ") && !l.starts_with("   ") {
            name = name.or_else(|| value(l.trim_start(), "name"));
            ns = ns.or_else(|| value(l.trim_start(), "namespace"));
        }
    }
    let r = ObjRef::new(api.as_deref().unwrap_or("?"), &kind?, ns.as_deref(), &name?);
    Some(format!("apparently {}", r.describe()))
}

/// What an object without apiVersion, kind or name shows of itself.
fn partial_object(obj: &Value) -> Option<String> {
    let s = |p: &str| {
        obj.pointer(p)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    match (s("/kind"), s("/metadata/name")) {
        (Some(k), Some(n)) => Some(format!("{k} {n}")),
        (Some(k), None) => Some(format!("a {k}")),
        (None, Some(n)) => Some(format!("an object named {n}")),
        (None, None) => None,
    }
}

/// Fields the API server requires of the kinds an operator manifest holds, missing
/// from `obj` (a file cut at a line boundary leaves these out before anything else).
/// Modelled on upstream's validation, which answers 422 Invalid without them:
/// k8s.io/apiextensions-apiserver pkg/apis/apiextensions/validation/validation.go
/// (group, names, scope, versions; "must have exactly one version marked as storage
/// version"; v1 schemas required), kubernetes pkg/apis/apps/validation (selector,
/// template) and pkg/apis/core/validation (containers with name and image),
/// pkg/apis/rbac/validation (roleRef).
fn required_fields(r: &ObjRef, obj: &Value) -> Vec<String> {
    let has = |v: &Value, p: &str| v.pointer(p).is_some_and(|x| !x.is_null());
    let nonempty = |v: &Value, p: &str| {
        v.pointer(p)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    };
    let mut out: Vec<String> = Vec::new();
    match (r.api_version.as_str(), r.kind.as_str()) {
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            for p in [
                "/spec/group",
                "/spec/names/plural",
                "/spec/names/kind",
                "/spec/scope",
            ] {
                if !has(obj, p) {
                    out.push(p[1..].replace('/', "."));
                }
            }
            match obj.pointer("/spec/versions").and_then(Value::as_array) {
                Some(vs) if !vs.is_empty() => {
                    for (i, v) in vs.iter().enumerate() {
                        for f in ["/name", "/served", "/storage", "/schema/openAPIV3Schema"] {
                            if !has(v, f) {
                                out.push(format!("spec.versions[{i}]{}", f.replace('/', ".")));
                            }
                        }
                    }
                    let storage = vs
                        .iter()
                        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                        .count();
                    if out.is_empty() && storage != 1 {
                        out.push("exactly one spec.versions[] with storage: true".into());
                    }
                }
                _ => out.push("spec.versions".into()),
            }
        }
        ("apps/v1", "Deployment" | "DaemonSet" | "StatefulSet") => {
            if !has(obj, "/spec/selector") {
                out.push("spec.selector".into());
            }
            match obj
                .pointer("/spec/template/spec/containers")
                .and_then(Value::as_array)
            {
                Some(cs) if nonempty(obj, "/spec/template/spec/containers") => {
                    for (i, c) in cs.iter().enumerate() {
                        for f in ["name", "image"] {
                            if !has(c, &format!("/{f}")) {
                                out.push(format!("spec.template.spec.containers[{i}].{f}"));
                            }
                        }
                    }
                }
                _ => out.push("spec.template.spec.containers".into()),
            }
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding" | "RoleBinding") => {
            for p in ["/roleRef/kind", "/roleRef/name"] {
                if !has(obj, p) {
                    out.push(p[1..].replace('/', "."));
                }
            }
        }
        _ => {}
    }
    out
}

/// The objects this step never applies, whatever the cluster: (problem, fix).
pub fn check_object(r: &ObjRef, obj: &Value) -> Result<(), (String, String)> {
    if r.kind == "Installation" {
        return Err((
            "an Installation in the operator manifest would start the migration at once, \
             before calico-migrate can check each node"
                .into(),
            "use a manifest without an Installation (Helm chart value installation.enabled=false)"
                .into(),
        ));
    }
    if r.kind == "CustomResourceDefinition"
        && obj.pointer("/spec/group").and_then(Value::as_str) == Some("projectcalico.org")
    {
        return Err((
            format!(
                "a projectcalico.org/v3 CRD is never applied on a cluster that keeps its policies \
                 in {CALICO_GROUP}/v1 CRDs (docs/upstream.md)"
            ),
            "use the manifest of the operator release that matches the running Calico".into(),
        ));
    }
    Ok(())
}

/// What the cluster serves at each apiVersion the manifest uses: its kinds, or None
/// when it does not serve that group/version.
pub type ServedApis = BTreeMap<String, Option<BTreeSet<String>>>;

/// Ask discovery about every apiVersion the manifest's objects use.
pub async fn served_apis(
    objects: &Objects,
    manifest: &[ManifestObject],
) -> Result<ServedApis, ObjectError> {
    let mut out = ServedApis::new();
    for o in manifest {
        if !out.contains_key(&o.r.api_version) {
            let kinds = objects.served_kinds(&o.r.api_version).await?;
            out.insert(o.r.api_version.clone(), kinds);
        }
    }
    Ok(out)
}

/// Kinds the manifest's own CRDs define, by apiVersion (their served versions): once
/// the step has applied the CRDs, the cluster serves these too.
fn defined_by_crds(manifest: &[ManifestObject]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for o in manifest
        .iter()
        .filter(|o| o.r.kind == "CustomResourceDefinition")
    {
        let s = |p: &str| o.obj.pointer(p).and_then(Value::as_str);
        let (Some(group), Some(kind)) = (s("/spec/group"), s("/spec/names/kind")) else {
            continue;
        };
        let mut versions: Vec<&str> = o
            .obj
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .map(|vs| {
                vs.iter()
                    .filter(|v| v.get("served").and_then(Value::as_bool) != Some(false))
                    .filter_map(|v| v.get("name").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default();
        // apiextensions.k8s.io/v1beta1 CRDs may name a single `spec.version`.
        versions.extend(s("/spec/version"));
        for v in versions {
            out.entry(format!("{group}/{v}"))
                .or_default()
                .insert(kind.to_string());
        }
    }
    out
}

/// The objects whose API the cluster does not serve (neither discovery nor a CRD of
/// the manifest knows their apiVersion): `apply` would stop on the first of them.
/// A kind that an apiVersion the cluster or the manifest serves does not have is an
/// error in the file (a misspelt kind), not in the cluster.
pub fn unserved<'a>(
    file: &str,
    manifest: &'a [ManifestObject],
    served: &ServedApis,
) -> Result<Vec<&'a ManifestObject>, ManifestError> {
    let defined = defined_by_crds(manifest);
    let mut out = Vec::new();
    for o in manifest {
        let (av, kind) = (&o.r.api_version, &o.r.kind);
        let by_crd = defined.get(av);
        let by_cluster = served.get(av).and_then(Option::as_ref);
        if by_crd.is_some_and(|k| k.contains(kind)) || by_cluster.is_some_and(|k| k.contains(kind))
        {
            continue;
        }
        if by_crd.is_none() && by_cluster.is_none() {
            out.push(o);
            continue;
        }
        let known: BTreeSet<&String> = by_crd.into_iter().chain(by_cluster).flatten().collect();
        return Err(ManifestError::Invalid {
            file: file.into(),
            at: o.describe(),
            problem: format!(
                "{av} has no kind {kind} (it has {})",
                known
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            fix: "fix the kind or the apiVersion, or download the file again".into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(text: &str) -> String {
        read_manifest("op.yaml", text.as_bytes())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| panic!("read without an error: {text}"))
    }

    const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: tigera-operator\n";

    #[test]
    fn the_operator_release_is_the_tag_of_the_operator_container() {
        let deployment = |image: &str| {
            format!(
                "{NS}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: tigera-operator, namespace: tigera-operator}}\nspec:\n  selector: {{matchLabels: {{name: tigera-operator}}}}\n  template:\n    metadata: {{labels: {{name: tigera-operator}}}}\n    spec:\n      containers:\n      - {{name: sidecar, image: \"x/y:v0\"}}\n      - {{name: tigera-operator, image: \"{image}\"}}\n"
            )
        };
        let version = |text: &str| {
            let objs = read_manifest("op.yaml", text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
            operator_version(&objs).map(|(v, o)| (v, o.place.map(|p| p.doc)))
        };
        assert_eq!(
            version(&deployment("quay.io/tigera/operator:v1.38.6")),
            Some(("v1.38.6".to_string(), Some(2)))
        );
        assert_eq!(
            version(&deployment(
                "registry.local:5000/tigera/operator:v1.17.4@sha256:ab"
            )),
            Some(("v1.17.4".to_string(), Some(2)))
        );
        assert_eq!(version(&deployment("quay.io/tigera/operator")), None);
        assert_eq!(version(NS), None);
    }

    #[test]
    fn documents_are_numbered_with_their_first_line() {
        let text = format!(
            "# a comment only\n---\n{NS}---\n# Source: x\n---\napiVersion: v1\nkind: List\nitems:\n- {{apiVersion: v1, kind: ServiceAccount, metadata: {{name: a, namespace: tigera-operator}}}}\n...\n"
        );
        let objs = read_manifest("op.yaml", text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let places: Vec<String> = objs.iter().map(ManifestObject::describe).collect();
        assert_eq!(
            places,
            [
                "document 1 (line 2), Namespace tigera-operator (v1)",
                "document 2 item 1 (line 9), ServiceAccount tigera-operator/a (v1)",
            ]
        );
    }

    #[test]
    fn duplicate_keys_name_the_document_the_line_and_the_object() {
        let e = err(&format!(
            "{NS}---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: a\n  name: b\n  namespace: tigera-operator\n"
        ));
        assert!(e.starts_with("op.yaml, document 2 (line 5), apparently ServiceAccount tigera-operator/a (v1): not valid YAML: duplicate mapping key `name`"), "{e}");
        assert!(e.contains("line 10, column 3"), "{e}");
    }

    #[test]
    fn a_file_cut_mid_line_is_truncated_and_one_cut_at_a_line_misses_fields() {
        let dep = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: tigera-operator\n  namespace: tigera-operator\nspec:\n  selector:\n    matchLabels: {name: tigera-operator}\n  template:\n    spec:\n      containers:\n      - name: tigera-operator\n        image: quay.io/tigera/operator:v1.38.6\n";
        let whole = format!("{NS}---\n{dep}");
        assert_eq!(
            read_manifest("op.yaml", whole.as_bytes())
                .map(|o| o.len())
                .ok(),
            Some(2)
        );
        let mid = &whole[..whole.len() - 10];
        let e = err(mid);
        assert!(e.starts_with("op.yaml ends in the middle of a line, in document 2 (line 5), Deployment tigera-operator/tigera-operator (apps/v1): the file is truncated"), "{e}");
        let at_line = whole.trim_end_matches(|c| c != '\n').trim_end_matches('\n');
        let at_line = &at_line[..=at_line.rfind('\n').unwrap_or(0)];
        let e = err(at_line);
        assert!(e.contains("document 2 (line 5), Deployment tigera-operator/tigera-operator (apps/v1): lacks spec.template.spec.containers[0].image"), "{e}");
        // A multi-byte character cut in two at the end is a truncation, not binary.
        let mut bytes = format!("{NS}# é").into_bytes();
        bytes.pop();
        let e = read_manifest("op.yaml", &bytes)
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("truncated")));
        let e = read_manifest("op.yaml", b"\x1f\x8b\x08\x00")
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("not UTF-8")));
    }

    #[test]
    fn crds_need_what_the_api_server_requires() {
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "tiers.crd.projectcalico.org"},
            "spec": {"group": "crd.projectcalico.org", "scope": "Cluster",
                     "names": {"kind": "Tier", "plural": "tiers"},
                     "versions": [{"name": "v1", "served": true, "storage": true,
                                   "schema": {"openAPIV3Schema": {"type": "object"}}}]}});
        let r = ObjRef::of(&crd).unwrap_or_else(|| panic!("ref"));
        assert!(required_fields(&r, &crd).is_empty());
        let mut cut = crd.clone();
        cut["spec"]["versions"][0] = json!({"name": "v1", "schema": {"openAPIV3Schema": {}}});
        assert_eq!(
            required_fields(&r, &cut),
            ["spec.versions[0].served", "spec.versions[0].storage"]
        );
        let mut two = crd.clone();
        two["spec"]["versions"] = json!([crd["spec"]["versions"][0], crd["spec"]["versions"][0]]);
        assert_eq!(
            required_fields(&r, &two),
            ["exactly one spec.versions[] with storage: true"]
        );
    }

    #[test]
    fn what_the_step_never_applies_is_refused_at_read() {
        let e = err(
            "apiVersion: operator.tigera.io/v1\nkind: Installation\nmetadata:\n  name: default\n",
        );
        assert!(
            e.contains(
                "document 1 (line 1), Installation default (operator.tigera.io/v1): an Installation"
            ),
            "{e}"
        );
        assert!(e.contains("installation.enabled=false"), "{e}");
        assert!(err("# nothing\n").contains("holds no Kubernetes object"));
        assert!(err("- a\n- b\n").contains("is not a Kubernetes object"));
    }

    #[test]
    fn the_sandbox_operator_manifest_reads() {
        let yaml = crate::sandbox::scenario::operator::operator_manifest_yaml(
            "quay.io/tigera/operator:v1.17.4",
        );
        let objs = read_manifest("sandbox", yaml.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            objs.len(),
            crate::sandbox::scenario::operator::operator_manifest("x").len()
        );
    }

    #[test]
    fn unserved_apis_are_listed_and_unknown_kinds_are_errors() {
        let text = format!(
            "{NS}---\napiVersion: policy/v1beta1\nkind: PodSecurityPolicy\nmetadata:\n  name: tigera-operator\n---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: tigerastatuses.operator.tigera.io\nspec:\n  group: operator.tigera.io\n  scope: Cluster\n  names: {{kind: TigeraStatus, plural: tigerastatuses}}\n  versions:\n  - {{name: v1, served: true, storage: true, schema: {{openAPIV3Schema: {{type: object}}}}}}\n---\napiVersion: operator.tigera.io/v1\nkind: TigeraStatus\nmetadata:\n  name: calico\n"
        );
        let objs = read_manifest("op.yaml", text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let kinds = |k: &[&str]| Some(k.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>());
        let served: ServedApis = [
            ("v1".to_string(), kinds(&["Namespace", "ServiceAccount"])),
            ("policy/v1beta1".to_string(), None),
            (
                "apiextensions.k8s.io/v1".to_string(),
                kinds(&["CustomResourceDefinition"]),
            ),
            ("operator.tigera.io/v1".to_string(), None),
        ]
        .into_iter()
        .collect();
        let missing = unserved("op.yaml", &objs, &served).unwrap_or_else(|e| panic!("{e}"));
        let named: Vec<String> = missing.iter().map(|o| o.describe()).collect();
        assert_eq!(
            named,
            ["document 2 (line 5), PodSecurityPolicy tigera-operator (policy/v1beta1)"]
        );
        let typo = text.replace("kind: Namespace", "kind: Namespaces");
        let objs = read_manifest("op.yaml", typo.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let e = unserved("op.yaml", &objs, &served)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some(
                "op.yaml, document 1 (line 1), Namespaces tigera-operator (v1): v1 has no kind \
                 Namespaces (it has Namespace, ServiceAccount); fix the kind or the apiVersion, \
                 or download the file again"
            )
        );
    }
}
