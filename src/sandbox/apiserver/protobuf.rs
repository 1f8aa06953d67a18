//! Protobuf request bodies, as client-go's typed clients send them
//! (`Content-Type: application/vnd.kubernetes.protobuf`): Helm's release storage
//! (Secrets and ConfigMaps, created and replaced), kubectl's typed generators
//! (`kubectl create secret|configmap|namespace|serviceaccount`), the self reviews kubectl sends, and the
//! DeleteOptions a typed client's DELETE carries. Each body is decoded into the JSON
//! object the same request would carry as JSON, so the handlers and the store downstream
//! see no difference. Any other kind is refused by the caller (415, naming the kind).
//!
//! The wire format, as k8s.io/apimachinery v0.34.10 defines it:
//! - the 4-byte prefix `k8s\0` (`protoEncodingPrefix`,
//!   pkg/runtime/serializer/protobuf/protobuf.go line 45), then a `runtime.Unknown`:
//!   typeMeta = 1 (TypeMeta: apiVersion = 1, kind = 2), raw = 2 (the object's own
//!   message), contentEncoding = 3, contentType = 4 (pkg/runtime/generated.proto lines
//!   100-106 and 118-133);
//! - `ObjectMeta` (pkg/apis/meta/v1/generated.proto lines 710-871): name = 1,
//!   generateName = 2, namespace = 3, selfLink = 4, uid = 5, resourceVersion = 6,
//!   generation = 7, creationTimestamp = 8, deletionTimestamp = 9,
//!   deletionGracePeriodSeconds = 10, labels = 11, annotations = 12, ownerReferences = 13,
//!   finalizers = 14, managedFields = 17;
//! - `Time` (lines 1133-1144): seconds = 1, nanos = 2. A zero time is written as an empty
//!   message and read back as zero; a reader keeps whole seconds only, as JSON does
//!   (pkg/apis/meta/v1/time_proto.go lines 61-75);
//! - `OwnerReference` (lines 877-907), `ManagedFieldsEntry` (650-688), `FieldsV1`
//!   (373-376), `DeleteOptions` (278-333), `Preconditions` (984-992);
//! - a `map<K, V>` field is a repeated message of key = 1, value = 2.
//!
//! The kinds, from k8s.io/api v0.34.10: core/v1/generated.proto `Secret` (lines
//! 5709-5741: metadata = 1, data = 2 `map<string, bytes>`, type = 3, stringData = 4,
//! immutable = 5), `ConfigMap` (522-552: metadata = 1, data = 2, binaryData = 3
//! `map<string, bytes>`, immutable = 4), `Namespace` (2554-2569: metadata = 1, spec = 2,
//! status = 3; `NamespaceSpec` finalizers = 1, 2605-2611; `NamespaceStatus` phase = 1,
//! conditions = 2, 2614-2627; `NamespaceCondition` 2572-2590), `ServiceAccount`
//! (5986-6018: metadata = 1, secrets = 2, imagePullSecrets = 3,
//! automountServiceAccountToken = 4; `ObjectReference` 3069-3109, `LocalObjectReference`
//! 2489-2500); authorization/v1
//! generated.proto `SelfSubjectAccessReview` (206-218, spec = 2), its spec (222-230),
//! `ResourceAttributes` (137-176), `NonResourceAttributes` (113-121),
//! `SelfSubjectRulesReviewSpec` (253-256).
//!
//! client-go (gogo-generated marshallers) writes every non-pointer field, empty strings
//! and zero integers included, and pointer fields only when set; JSON omits the empty
//! ones (`omitempty`). So an empty string or a zero of a non-pointer field is left out of
//! the JSON, and a pointer field is kept whenever it is on the wire. Unknown field
//! numbers are skipped, as gogo's readers do.

use base64::Engine;
use serde_json::{Map, Value, json};

/// The media type of client-go's protobuf bodies.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The kinds of object bodies (create and replace) the sandbox reads as protobuf.
pub const OBJECT_KINDS: [&str; 4] = ["Secret", "ConfigMap", "Namespace", "ServiceAccount"];

/// `k8s\0`, the magic number of a Kubernetes protobuf body.
const PREFIX: &[u8] = b"k8s\0";

/// Why a protobuf body cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("truncated varint")]
    TruncatedVarint,
    #[error("varint too long")]
    VarintTooLong,
    #[error("truncated fixed field")]
    TruncatedFixedField,
    #[error("length too big")]
    LengthTooBig,
    #[error("truncated field")]
    TruncatedField,
    #[error("unsupported protobuf wire type {0}")]
    WireType(u64),
    #[error("field {field} has wire type {got}, expected {want}")]
    WrongWireType { field: u64, got: u64, want: u64 },
    #[error("field {0} is not UTF-8")]
    NotUtf8(u64),
    #[error("field {0} holds invalid JSON")]
    NotJson(u64),
    #[error("time {0} seconds is out of range")]
    BadTime(i64),
    #[error("not a Kubernetes protobuf envelope (no k8s\\0 prefix)")]
    NoEnvelope,
    #[error("content encoding {0:?} is not supported")]
    ContentEncoding(String),
    /// A well-formed envelope of a kind the sandbox has no decoder for.
    #[error("the sandbox does not decode protobuf bodies of kind {0:?}")]
    UnsupportedKind(String),
}

/// One field's value, by wire type (0 varint; 1 and 5 fixed; 2 length-delimited).
#[derive(Debug, Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    /// 64- or 32-bit fixed: no field read here has one, so the value is skipped.
    Fixed,
    Bytes(&'a [u8]),
}

impl Wire<'_> {
    fn wire_type(&self) -> u64 {
        match self {
            Wire::Varint(_) => 0,
            Wire::Fixed => 1,
            Wire::Bytes(_) => 2,
        }
    }
}

fn varint(buf: &mut &[u8]) -> Result<u64, ProtoError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first().ok_or(ProtoError::TruncatedVarint)?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(ProtoError::VarintTooLong)
}

/// The fields of one message, in wire order.
#[derive(Debug, Default)]
struct Message<'a> {
    fields: Vec<(u64, Wire<'a>)>,
}

impl<'a> Message<'a> {
    fn parse(mut buf: &'a [u8]) -> Result<Self, ProtoError> {
        let mut fields = Vec::new();
        while !buf.is_empty() {
            let key = varint(&mut buf)?;
            let value = match key & 7 {
                0 => Wire::Varint(varint(&mut buf)?),
                1 | 5 => {
                    let n = if key & 7 == 1 { 8 } else { 4 };
                    buf = buf.get(n..).ok_or(ProtoError::TruncatedFixedField)?;
                    Wire::Fixed
                }
                2 => {
                    let len =
                        usize::try_from(varint(&mut buf)?).map_err(|_| ProtoError::LengthTooBig)?;
                    let data = buf.get(..len).ok_or(ProtoError::TruncatedField)?;
                    buf = &buf[len..];
                    Wire::Bytes(data)
                }
                w => return Err(ProtoError::WireType(w)),
            };
            fields.push((key >> 3, value));
        }
        Ok(Message { fields })
    }

    /// Every value of field `n`, each checked to be of wire type `want`.
    fn all(&self, n: u64, want: u64) -> Result<Vec<Wire<'a>>, ProtoError> {
        self.fields
            .iter()
            .filter(|(f, _)| *f == n)
            .map(|(_, w)| {
                if w.wire_type() == want {
                    Ok(*w)
                } else {
                    Err(ProtoError::WrongWireType {
                        field: n,
                        got: w.wire_type(),
                        want,
                    })
                }
            })
            .collect()
    }

    /// Every occurrence of length-delimited field `n` (a repeated field, a map).
    fn repeated(&self, n: u64) -> Result<Vec<&'a [u8]>, ProtoError> {
        Ok(self
            .all(n, 2)?
            .into_iter()
            .filter_map(|w| match w {
                Wire::Bytes(b) => Some(b),
                _ => None,
            })
            .collect())
    }

    /// Length-delimited field `n`, None when absent (the last occurrence wins).
    fn bytes(&self, n: u64) -> Result<Option<&'a [u8]>, ProtoError> {
        Ok(self.repeated(n)?.pop())
    }

    fn message(&self, n: u64) -> Result<Option<Message<'a>>, ProtoError> {
        self.bytes(n)?.map(Message::parse).transpose()
    }

    /// Varint field `n`, None when absent.
    fn varint(&self, n: u64) -> Result<Option<u64>, ProtoError> {
        Ok(self.all(n, 0)?.into_iter().rev().find_map(|w| match w {
            Wire::Varint(v) => Some(v),
            _ => None,
        }))
    }

    /// String field `n`, None when absent (a pointer field's "not set").
    fn string(&self, n: u64) -> Result<Option<String>, ProtoError> {
        self.bytes(n)?.map(|b| utf8(b, n)).transpose()
    }

    /// String field `n` of a non-pointer field: None when absent or empty.
    fn text(&self, n: u64) -> Result<Option<String>, ProtoError> {
        Ok(self.string(n)?.filter(|s| !s.is_empty()))
    }

    /// Repeated string field `n`.
    fn strings(&self, n: u64) -> Result<Vec<String>, ProtoError> {
        self.repeated(n)?.into_iter().map(|b| utf8(b, n)).collect()
    }

    /// Map field `n` as (key, value bytes) entries.
    fn entries(&self, n: u64) -> Result<Vec<(String, &'a [u8])>, ProtoError> {
        self.repeated(n)?
            .into_iter()
            .map(|e| {
                let e = Message::parse(e)?;
                Ok((
                    e.string(1)?.unwrap_or_default(),
                    e.bytes(2)?.unwrap_or_default(),
                ))
            })
            .collect()
    }

    /// A `map<string, string>`, None when it has no entries.
    fn string_map(&self, n: u64) -> Result<Option<Value>, ProtoError> {
        let mut m = Map::new();
        for (k, v) in self.entries(n)? {
            m.insert(k, json!(utf8(v, n)?));
        }
        Ok((!m.is_empty()).then_some(Value::Object(m)))
    }

    /// A `map<string, bytes>` as JSON has it (values in standard base64), None when empty.
    fn bytes_map(&self, n: u64) -> Result<Option<Value>, ProtoError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let m: Map<String, Value> = self
            .entries(n)?
            .into_iter()
            .map(|(k, v)| (k, json!(b64.encode(v))))
            .collect();
        Ok((!m.is_empty()).then_some(Value::Object(m)))
    }

    /// A bool field (wire varint), None when absent.
    fn boolean(&self, n: u64) -> Result<Option<bool>, ProtoError> {
        Ok(self.varint(n)?.map(|v| v != 0))
    }

    /// An int64 field, None when absent.
    fn int64(&self, n: u64) -> Result<Option<i64>, ProtoError> {
        // Two's complement on the wire, as Go's int64 -> uint64 conversion writes it.
        Ok(self.varint(n)?.map(|v| v as i64))
    }

    /// A `Time` field as JSON writes it (RFC 3339, whole seconds), None when absent or zero.
    fn time(&self, n: u64) -> Result<Option<String>, ProtoError> {
        let Some(b) = self.bytes(n)? else {
            return Ok(None);
        };
        if b.is_empty() {
            return Ok(None);
        }
        let secs = Message::parse(b)?.int64(1)?.unwrap_or(0);
        let t = jiff::Timestamp::from_second(secs).map_err(|_| ProtoError::BadTime(secs))?;
        Ok(Some(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()))
    }
}

fn utf8(b: &[u8], n: u64) -> Result<String, ProtoError> {
    String::from_utf8(b.to_vec()).map_err(|_| ProtoError::NotUtf8(n))
}

/// Insert `v` under `k` when it is Some.
fn put(m: &mut Map<String, Value>, k: &str, v: Option<Value>) {
    if let Some(v) = v {
        m.insert(k.to_string(), v);
    }
}

fn object_meta(m: &Message) -> Result<Value, ProtoError> {
    let mut out = Map::new();
    for (n, k) in [
        (1, "name"),
        (2, "generateName"),
        (3, "namespace"),
        (4, "selfLink"),
        (5, "uid"),
        (6, "resourceVersion"),
    ] {
        put(&mut out, k, m.text(n)?.map(Value::from));
    }
    put(
        &mut out,
        "generation",
        m.int64(7)?.filter(|g| *g != 0).map(Value::from),
    );
    put(&mut out, "creationTimestamp", m.time(8)?.map(Value::from));
    put(&mut out, "deletionTimestamp", m.time(9)?.map(Value::from));
    put(
        &mut out,
        "deletionGracePeriodSeconds",
        m.int64(10)?.map(Value::from),
    );
    put(&mut out, "labels", m.string_map(11)?);
    put(&mut out, "annotations", m.string_map(12)?);
    let owners = m
        .repeated(13)?
        .into_iter()
        .map(|b| owner_reference(&Message::parse(b)?))
        .collect::<Result<Vec<_>, _>>()?;
    if !owners.is_empty() {
        out.insert("ownerReferences".into(), Value::Array(owners));
    }
    let finalizers = m.strings(14)?;
    if !finalizers.is_empty() {
        out.insert("finalizers".into(), json!(finalizers));
    }
    let managed = m
        .repeated(17)?
        .into_iter()
        .map(|b| managed_fields_entry(&Message::parse(b)?))
        .collect::<Result<Vec<_>, _>>()?;
    if !managed.is_empty() {
        out.insert("managedFields".into(), Value::Array(managed));
    }
    Ok(Value::Object(out))
}

fn owner_reference(m: &Message) -> Result<Value, ProtoError> {
    let mut out = Map::new();
    // Not omitempty in JSON: always written.
    for (n, k) in [(5, "apiVersion"), (1, "kind"), (3, "name"), (4, "uid")] {
        out.insert(k.into(), json!(m.string(n)?.unwrap_or_default()));
    }
    put(&mut out, "controller", m.boolean(6)?.map(Value::from));
    put(
        &mut out,
        "blockOwnerDeletion",
        m.boolean(7)?.map(Value::from),
    );
    Ok(Value::Object(out))
}

fn managed_fields_entry(m: &Message) -> Result<Value, ProtoError> {
    let mut out = Map::new();
    for (n, k) in [
        (1, "manager"),
        (2, "operation"),
        (3, "apiVersion"),
        (6, "fieldsType"),
        (8, "subresource"),
    ] {
        put(&mut out, k, m.text(n)?.map(Value::from));
    }
    put(&mut out, "time", m.time(4)?.map(Value::from));
    if let Some(f) = m.message(7)? {
        let raw = f.bytes(1)?.unwrap_or_default();
        if !raw.is_empty() {
            let v: Value = serde_json::from_slice(raw).map_err(|_| ProtoError::NotJson(7))?;
            out.insert("fieldsV1".into(), v);
        }
    }
    Ok(Value::Object(out))
}

fn secret(m: &Message) -> Result<Map<String, Value>, ProtoError> {
    let mut out = Map::new();
    put(&mut out, "data", m.bytes_map(2)?);
    put(&mut out, "stringData", m.string_map(4)?);
    put(&mut out, "type", m.text(3)?.map(Value::from));
    put(&mut out, "immutable", m.boolean(5)?.map(Value::from));
    Ok(out)
}

fn config_map(m: &Message) -> Result<Map<String, Value>, ProtoError> {
    let mut out = Map::new();
    put(&mut out, "data", m.string_map(2)?);
    put(&mut out, "binaryData", m.bytes_map(3)?);
    put(&mut out, "immutable", m.boolean(4)?.map(Value::from));
    Ok(out)
}

fn namespace(m: &Message) -> Result<Map<String, Value>, ProtoError> {
    let mut out = Map::new();
    if let Some(spec) = m.message(2)? {
        let mut s = Map::new();
        let finalizers = spec.strings(1)?;
        if !finalizers.is_empty() {
            s.insert("finalizers".into(), json!(finalizers));
        }
        out.insert("spec".into(), Value::Object(s));
    }
    if let Some(status) = m.message(3)? {
        let mut s = Map::new();
        put(&mut s, "phase", status.text(1)?.map(Value::from));
        let conditions = status
            .repeated(2)?
            .into_iter()
            .map(|b| {
                let c = Message::parse(b)?;
                let mut o = Map::new();
                for (n, k) in [(1, "type"), (2, "status"), (5, "reason"), (6, "message")] {
                    put(&mut o, k, c.text(n)?.map(Value::from));
                }
                put(&mut o, "lastTransitionTime", c.time(4)?.map(Value::from));
                Ok(Value::Object(o))
            })
            .collect::<Result<Vec<_>, ProtoError>>()?;
        if !conditions.is_empty() {
            s.insert("conditions".into(), Value::Array(conditions));
        }
        out.insert("status".into(), Value::Object(s));
    }
    Ok(out)
}

fn service_account(m: &Message) -> Result<Map<String, Value>, ProtoError> {
    let mut out = Map::new();
    let refs = |n: u64, fields: &[(u64, &str)]| -> Result<Option<Value>, ProtoError> {
        let list = m
            .repeated(n)?
            .into_iter()
            .map(|b| {
                let r = Message::parse(b)?;
                let mut o = Map::new();
                for (f, k) in fields {
                    put(&mut o, k, r.text(*f)?.map(Value::from));
                }
                Ok(Value::Object(o))
            })
            .collect::<Result<Vec<_>, ProtoError>>()?;
        Ok((!list.is_empty()).then_some(Value::Array(list)))
    };
    let object_reference = [
        (1, "kind"),
        (2, "namespace"),
        (3, "name"),
        (4, "uid"),
        (5, "apiVersion"),
        (6, "resourceVersion"),
        (7, "fieldPath"),
    ];
    put(&mut out, "secrets", refs(2, &object_reference)?);
    put(&mut out, "imagePullSecrets", refs(3, &[(1, "name")])?);
    put(
        &mut out,
        "automountServiceAccountToken",
        m.boolean(4)?.map(Value::from),
    );
    Ok(out)
}

fn delete_options(m: &Message) -> Result<Map<String, Value>, ProtoError> {
    let mut out = Map::new();
    put(&mut out, "gracePeriodSeconds", m.int64(1)?.map(Value::from));
    if let Some(p) = m.message(2)? {
        let mut pre = Map::new();
        put(&mut pre, "uid", p.string(1)?.map(Value::from));
        put(&mut pre, "resourceVersion", p.string(2)?.map(Value::from));
        out.insert("preconditions".into(), Value::Object(pre));
    }
    put(&mut out, "orphanDependents", m.boolean(3)?.map(Value::from));
    put(&mut out, "propagationPolicy", m.string(4)?.map(Value::from));
    let dry_run = m.strings(5)?;
    if !dry_run.is_empty() {
        out.insert("dryRun".into(), json!(dry_run));
    }
    put(
        &mut out,
        "ignoreStoreReadErrorWithClusterBreakingPotential",
        m.boolean(6)?.map(Value::from),
    );
    Ok(out)
}

fn self_subject_access_review_spec(spec: &Message) -> Result<Value, ProtoError> {
    let mut s = json!({});
    if let Some(r) = spec.message(1)? {
        let names = [
            "namespace",
            "verb",
            "group",
            "version",
            "resource",
            "subresource",
            "name",
        ];
        let mut attrs = Map::new();
        for (i, k) in names.iter().enumerate() {
            put(&mut attrs, k, r.text(i as u64 + 1)?.map(Value::from));
        }
        s["resourceAttributes"] = Value::Object(attrs);
    }
    if let Some(n) = spec.message(2)? {
        s["nonResourceAttributes"] = json!({
            "path": n.string(1)?.unwrap_or_default(),
            "verb": n.string(2)?.unwrap_or_default(),
        });
    }
    Ok(s)
}

/// A protobuf body as the JSON object the same request would send: `apiVersion` and
/// `kind` from the envelope, then the kind's fields. Kinds: [`OBJECT_KINDS`],
/// DeleteOptions, SelfSubjectAccessReview and SelfSubjectRulesReview (their spec only);
/// any other is [`ProtoError::UnsupportedKind`].
pub fn decode(body: &[u8]) -> Result<Value, ProtoError> {
    let unknown = body.strip_prefix(PREFIX).ok_or(ProtoError::NoEnvelope)?;
    let unknown = Message::parse(unknown)?;
    let type_meta = unknown.message(1)?.unwrap_or_default();
    let api_version = type_meta.string(1)?.unwrap_or_default();
    let kind = type_meta.string(2)?.unwrap_or_default();
    if let Some(enc) = unknown.text(3)? {
        return Err(ProtoError::ContentEncoding(enc));
    }
    let raw = Message::parse(unknown.bytes(2)?.unwrap_or_default())?;
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!(api_version));
    out.insert("kind".into(), json!(kind));
    let metadata =
        || -> Result<Value, ProtoError> { object_meta(&raw.message(1)?.unwrap_or_default()) };
    let fields = match kind.as_str() {
        "Secret" | "ConfigMap" | "Namespace" | "ServiceAccount" => {
            out.insert("metadata".into(), metadata()?);
            match kind.as_str() {
                "Secret" => secret(&raw)?,
                "ConfigMap" => config_map(&raw)?,
                "Namespace" => namespace(&raw)?,
                _ => service_account(&raw)?,
            }
        }
        "DeleteOptions" => delete_options(&raw)?,
        "SelfSubjectAccessReview" => {
            let spec = raw.message(2)?.unwrap_or_default();
            Map::from_iter([("spec".into(), self_subject_access_review_spec(&spec)?)])
        }
        "SelfSubjectRulesReview" => {
            let spec = raw.message(2)?.unwrap_or_default();
            let ns = spec.string(1)?.unwrap_or_default();
            Map::from_iter([("spec".into(), json!({"namespace": ns}))])
        }
        _ => return Err(ProtoError::UnsupportedKind(kind)),
    };
    out.extend(fields);
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny encoder writing what client-go's gogo marshallers write.
    mod enc {
        pub fn varint(mut v: u64, out: &mut Vec<u8>) {
            while v >= 0x80 {
                out.push((v as u8) | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
        }
        /// Length-delimited field `n`.
        pub fn ld(n: u64, data: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            varint(n << 3 | 2, &mut out);
            varint(data.len() as u64, &mut out);
            out.extend_from_slice(data);
            out
        }
        /// Varint field `n`.
        pub fn vi(n: u64, v: u64) -> Vec<u8> {
            let mut out = Vec::new();
            varint(n << 3, &mut out);
            varint(v, &mut out);
            out
        }
        /// One map entry of field `n`.
        pub fn entry(n: u64, k: &str, v: &[u8]) -> Vec<u8> {
            ld(n, &[ld(1, k.as_bytes()), ld(2, v)].concat())
        }
        /// `k8s\0` + runtime.Unknown{typeMeta, raw, contentEncoding "", contentType ""}.
        pub fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
            let type_meta = [ld(1, api_version.as_bytes()), ld(2, kind.as_bytes())].concat();
            [
                b"k8s\0".to_vec(),
                ld(1, &type_meta),
                ld(2, raw),
                ld(3, b""),
                ld(4, b""),
            ]
            .concat()
        }
        /// ObjectMeta as gogo writes it: every non-pointer field, empty or not, a zero
        /// creationTimestamp as an empty message, maps as entries.
        pub fn object_meta(name: &str, ns: &str, labels: &[(&str, &str)]) -> Vec<u8> {
            let mut m = [
                ld(1, name.as_bytes()),
                ld(2, b""),
                ld(3, ns.as_bytes()),
                ld(4, b""),
                ld(5, b""),
                ld(6, b""),
                vi(7, 0),
                ld(8, b""),
            ]
            .concat();
            for (k, v) in labels {
                m.extend(entry(11, k, v.as_bytes()));
            }
            m
        }
    }

    fn decoded(body: &[u8]) -> Value {
        decode(body).unwrap_or_else(|e| json!({"error": e.to_string()}))
    }

    #[test]
    fn a_helm_release_secret_decodes_to_its_json() {
        // What helm's Secrets driver creates (pkg/storage/driver/secrets.go
        // newSecretsObject): four labels, one data key `release`, type helm.sh/release.v1.
        let release = b"H4sIAAAAAAAC/+x9";
        let meta = enc::object_meta(
            "sh.helm.release.v1.aws-calico.v1",
            "kube-system",
            &[
                ("name", "aws-calico"),
                ("owner", "helm"),
                ("status", "pending-install"),
                ("version", "1"),
            ],
        );
        let secret = [
            enc::ld(1, &meta),
            enc::entry(2, "release", release),
            enc::ld(3, b"helm.sh/release.v1"),
        ]
        .concat();
        let v = decoded(&enc::envelope("v1", "Secret", &secret));
        assert_eq!(
            v,
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {
                    "name": "sh.helm.release.v1.aws-calico.v1", "namespace": "kube-system",
                    "labels": {"name": "aws-calico", "owner": "helm", "status": "pending-install", "version": "1"},
                },
                "data": {"release": "SDRzSUFBQUFBQUFDLyt4OQ=="},
                "type": "helm.sh/release.v1",
            })
        );
        // The same object as serde reads its JSON form: what the JSON path hands on.
        let json_body: Value = serde_json::from_str(
            r#"{"kind":"Secret","apiVersion":"v1","metadata":{"name":"sh.helm.release.v1.aws-calico.v1",
            "namespace":"kube-system","labels":{"name":"aws-calico","owner":"helm","status":"pending-install","version":"1"}},
            "data":{"release":"SDRzSUFBQUFBQUFDLyt4OQ=="},"type":"helm.sh/release.v1"}"#,
        )
        .unwrap_or_default();
        assert_eq!(v, json_body);
    }

    #[test]
    fn a_secret_update_keeps_every_metadata_field_and_pointer() {
        // An update carries what a GET returned: uid, resourceVersion, creationTimestamp,
        // annotations, owner references, finalizers, managedFields; stringData and immutable.
        let time = [enc::vi(1, 1_709_542_800), enc::vi(2, 0)].concat();
        let owner = [
            enc::ld(1, b"Deployment"),
            enc::ld(3, b"web"),
            enc::ld(4, b"uid-1"),
            enc::ld(5, b"apps/v1"),
            enc::vi(6, 1),
            enc::vi(7, 0),
        ]
        .concat();
        let managed = [
            enc::ld(1, b"helm"),
            enc::ld(2, b"Update"),
            enc::ld(3, b"v1"),
            enc::ld(4, &time),
            enc::ld(6, b"FieldsV1"),
            enc::ld(7, &enc::ld(1, br#"{"f:data":{".":{}}}"#)),
            enc::ld(8, b""),
        ]
        .concat();
        let meta = [
            enc::ld(1, b"s"),
            enc::ld(2, b""),
            enc::ld(3, b"default"),
            enc::ld(4, b""),
            enc::ld(5, b"0b6f-uid"),
            enc::ld(6, b"42"),
            enc::vi(7, 0),
            enc::ld(8, &time),
            enc::entry(12, "note", b"x"),
            enc::ld(13, &owner),
            enc::ld(14, b"example.com/hold"),
            enc::ld(17, &managed),
        ]
        .concat();
        let secret = [
            enc::ld(1, &meta),
            enc::entry(2, "empty", b""),
            enc::entry(2, "bin", &[0, 255, 10]),
            enc::ld(3, b""),
            enc::entry(4, "plain", b"text"),
            enc::vi(5, 1),
        ]
        .concat();
        let v = decoded(&enc::envelope("v1", "Secret", &secret));
        assert_eq!(
            v["metadata"],
            json!({
                "name": "s", "namespace": "default", "uid": "0b6f-uid", "resourceVersion": "42",
                "creationTimestamp": "2024-03-04T09:00:00Z",
                "annotations": {"note": "x"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                     "uid": "uid-1", "controller": true, "blockOwnerDeletion": false}],
                "finalizers": ["example.com/hold"],
                "managedFields": [{"manager": "helm", "operation": "Update", "apiVersion": "v1",
                                   "time": "2024-03-04T09:00:00Z", "fieldsType": "FieldsV1",
                                   "fieldsV1": {"f:data": {".": {}}}}],
            }),
            "{v}"
        );
        assert_eq!(v["data"], json!({"empty": "", "bin": "AP8K"}));
        assert_eq!(v["stringData"], json!({"plain": "text"}));
        assert!(v.get("type").is_none(), "an empty type is left out: {v}");
        assert_eq!(v["immutable"], json!(true));
    }

    #[test]
    fn a_config_map_decodes_to_its_json() {
        // helm's ConfigMaps driver (HELM_DRIVER=configmap) and `kubectl create configmap`.
        let meta = enc::object_meta("cm", "default", &[("owner", "helm")]);
        let cm = [
            enc::ld(1, &meta),
            enc::entry(2, "a.conf", b"x=1\n"),
            enc::entry(2, "b", b""),
            enc::entry(3, "blob", b"\x01\x02"),
        ]
        .concat();
        let v = decoded(&enc::envelope("v1", "ConfigMap", &cm));
        assert_eq!(
            v,
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "cm", "namespace": "default", "labels": {"owner": "helm"}},
                "data": {"a.conf": "x=1\n", "b": ""},
                "binaryData": {"blob": "AQI="},
            })
        );
        // An empty ConfigMap (metadata only): no data keys at all, as in JSON.
        let v = decoded(&enc::envelope(
            "v1",
            "ConfigMap",
            &enc::ld(1, &enc::object_meta("e", "", &[])),
        ));
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "e"}})
        );
    }

    #[test]
    fn a_namespace_a_service_account_and_delete_options_decode() {
        let ns = [
            enc::ld(1, &enc::object_meta("team-a", "", &[])),
            enc::ld(2, b""),
            enc::ld(3, &enc::ld(1, b"")),
        ]
        .concat();
        assert_eq!(
            decoded(&enc::envelope("v1", "Namespace", &ns)),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"},
                   "spec": {}, "status": {}})
        );
        // `kubectl create serviceaccount robot`, plus a pull secret and the automount pointer.
        let sa = [
            enc::ld(1, &enc::object_meta("robot", "default", &[])),
            enc::ld(3, &enc::ld(1, b"ecr")),
            enc::vi(4, 0),
        ]
        .concat();
        assert_eq!(
            decoded(&enc::envelope("v1", "ServiceAccount", &sa)),
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": "robot", "namespace": "default"},
                   "imagePullSecrets": [{"name": "ecr"}], "automountServiceAccountToken": false})
        );
        // client-go's typed Delete sends its (here: empty) DeleteOptions as protobuf.
        assert_eq!(
            decoded(&enc::envelope("v1", "DeleteOptions", b"")),
            json!({"apiVersion": "v1", "kind": "DeleteOptions"})
        );
        let opts = [
            enc::vi(1, 0),
            enc::ld(2, &[enc::ld(1, b"u-1")].concat()),
            enc::ld(4, b"Foreground"),
            enc::ld(5, b"All"),
        ]
        .concat();
        assert_eq!(
            decoded(&enc::envelope("v1", "DeleteOptions", &opts)),
            json!({"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                   "preconditions": {"uid": "u-1"}, "propagationPolicy": "Foreground",
                   "dryRun": ["All"]})
        );
    }

    #[test]
    fn other_kinds_and_broken_bodies_are_refused() {
        let deploy = enc::envelope("apps/v1", "Deployment", &enc::ld(1, b""));
        assert_eq!(
            decode(&deploy),
            Err(ProtoError::UnsupportedKind("Deployment".into()))
        );
        assert_eq!(decode(b"{}"), Err(ProtoError::NoEnvelope));
        assert_eq!(decode(b"k8s\0\x0a\xff"), Err(ProtoError::TruncatedVarint));
        // A string field sent as a varint.
        let bad = enc::envelope("v1", "Secret", &enc::ld(1, &enc::vi(1, 7)));
        assert_eq!(
            decode(&bad),
            Err(ProtoError::WrongWireType {
                field: 1,
                got: 0,
                want: 2
            })
        );
        let gzip = [
            b"k8s\0".to_vec(),
            enc::ld(1, &[enc::ld(1, b"v1"), enc::ld(2, b"Secret")].concat()),
            enc::ld(3, b"gzip"),
        ]
        .concat();
        assert_eq!(
            decode(&gzip),
            Err(ProtoError::ContentEncoding("gzip".into()))
        );
    }

    #[test]
    fn kubectl_protobuf_review_decodes() {
        // `kubectl auth can-i create pods/exec -n kube-system` as kubectl 1.32 sends it.
        let hex = "6b3873000a320a17617574686f72697a6174696f6e2e6b38732e696f2f763112\
                   1753656c665375626a6563744163636573735265766965771247\
                   0a100a0012001a0022002a00320038004200\
                   12290a270a0b6b7562652d73797374656d1206637265617465\
                   1a0022002a04706f647332003a0465786563\
                   1a08080012001a0020001a002200";
        let hex: String = hex.chars().filter(|c| !c.is_whitespace()).collect();
        let Ok(bytes) = hex::decode(&hex) else {
            panic!("bad test hex")
        };
        let v = decoded(&bytes);
        assert_eq!(v["kind"], "SelfSubjectAccessReview", "{v}");
        assert_eq!(v["apiVersion"], "authorization.k8s.io/v1", "{v}");
        let r = &v["spec"]["resourceAttributes"];
        assert_eq!(r["namespace"], "kube-system");
        assert_eq!(r["verb"], "create");
        assert_eq!(r["resource"], "pods");
        assert_eq!(
            r["name"], "exec",
            "TYPE/NAME: kubectl reads pods/exec as a name"
        );
        assert!(r.get("group").is_none(), "empty fields are left out: {r}");
    }
}
