use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::*;

fn sample() -> Release {
    Release {
        name: "aws-calico".into(),
        info: Info {
            first_deployed: "2022-01-10T09:00:00.123456789Z".into(),
            last_deployed: "2022-01-10T09:00:00.123456789Z".into(),
            description: "Install complete".into(),
            status: status::DEPLOYED.into(),
            ..Info::default()
        },
        chart: Chart {
            metadata: ChartMetadata {
                name: "aws-calico".into(),
                version: "0.3.10".into(),
                app_version: "3.19.1".into(),
                api_version: "v1".into(),
                ..ChartMetadata::default()
            },
            files: vec![ChartFile::new(
                "crds/crds.yaml",
                "kind: CustomResourceDefinition\n",
            )],
            ..Chart::default()
        },
        config: json!({"calico": {"node": {"resources": {"limits": {"cpu": "200m"}}}}})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        manifest: MANIFEST.into(),
        version: 1,
        namespace: "kube-system".into(),
        ..sample_empty()
    }
}

fn sample_empty() -> Release {
    Release {
        name: String::new(),
        info: Info::default(),
        chart: Chart::default(),
        config: Default::default(),
        manifest: String::new(),
        hooks: Vec::new(),
        version: 0,
        namespace: String::new(),
    }
}

const MANIFEST: &str = "---
# Source: aws-calico/templates/service-accounts.yaml
apiVersion: v1
kind: ServiceAccount
metadata:
  name: calico-node
---
# Source: aws-calico/templates/pod-disruption-budget.yaml
apiVersion: policy/v1beta1
kind: PodDisruptionBudget
metadata:
  name: calico-typha
spec:
  maxUnavailable: 1
---
# Source: aws-calico/templates/rbac.yaml
kind: ClusterRole
apiVersion: rbac.authorization.k8s.io/v1
metadata:
  name: calico-node
  annotations:
    helm.sh/resource-policy: keep
---
# Source: aws-calico/templates/daemon-set.yaml
kind: DaemonSet
apiVersion: apps/v1
metadata:
  name: calico-node
  namespace: kube-system
";

#[test]
fn secret_round_trip_keeps_every_field() {
    let rel = sample();
    let secret = encode_release_secret(&rel);
    assert_eq!(
        secret["metadata"]["name"],
        "sh.helm.release.v1.aws-calico.v1"
    );
    assert_eq!(secret["type"], RELEASE_SECRET_TYPE);
    let labels = &secret["metadata"]["labels"];
    assert_eq!(labels["owner"], "helm");
    assert_eq!(labels["name"], "aws-calico");
    assert_eq!(labels["status"], "deployed");
    assert_eq!(labels["version"], "1");
    assert_eq!(decode_release_secret(&secret), Ok(rel));
}

#[test]
fn payload_is_double_base64_of_gzip_with_go_header() {
    let secret = encode_release_secret(&sample());
    let outer = secret["data"]["release"].as_str().unwrap_or_default();
    let inner = STANDARD.decode(outer).unwrap_or_default();
    let zipped = STANDARD.decode(&inner).unwrap_or_default();
    // Go's compress/gzip at BestCompression: magic, CM=8, FLG=0, MTIME=0, XFL=2, OS=255.
    assert_eq!(&zipped[..10], &[0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 2, 0xff]);
}

/// A gzip stream assembled by hand (stored deflate block), as any conforming
/// gzip writer may produce it, around JSON written in Go's field order with
/// Go's HTML escaping; decoding must not depend on our own encoder.
fn go_style_secret(json_text: &str, gzip: bool) -> Value {
    let body = json_text.as_bytes();
    let payload = if gzip {
        let mut crc = flate2::Crc::new();
        crc.update(body);
        let mut z = vec![0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 2, 0xff];
        let len = body.len() as u16;
        z.push(0x01); // final stored block
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(!len).to_le_bytes());
        z.extend_from_slice(body);
        z.extend_from_slice(&crc.sum().to_le_bytes());
        z.extend_from_slice(&(body.len() as u32).to_le_bytes());
        z
    } else {
        body.to_vec()
    };
    let inner = STANDARD.encode(payload);
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "sh.helm.release.v1.calico.v3", "namespace": "kube-system",
                     "labels": {"name": "calico", "owner": "helm", "status": "deployed", "version": "3"}},
        "type": "helm.sh/release.v1",
        "data": {"release": STANDARD.encode(inner)}
    })
}

const GO_JSON: &str = r#"{"name":"calico","info":{"first_deployed":"2021-06-01T08:00:00.5Z","last_deployed":"2022-01-10T09:00:00Z","deleted":"0001-01-01T00:00:00Z","description":"Upgrade complete","status":"deployed"},"chart":{"metadata":{"name":"aws-calico","home":"https://github.com/aws/eks-charts","version":"0.3.10","description":"A Helm chart for installing Calico on AWS","icon":"https://x/y.png","apiVersion":"v1","appVersion":"3.19.1","maintainers":[{"name":"x"}]},"lock":null,"templates":[{"name":"templates/service.yaml","data":"a2luZDogU2VydmljZQo="}],"values":{"fullnameOverride":"calico"},"schema":null,"files":[{"name":"crds/crds.yaml","data":"a2luZDogQ3VzdG9tUmVzb3VyY2VEZWZpbml0aW9uCg=="}]},"config":{"calico":{"node":{"extraEnv":[{"name":"A","value":"\u003cb\u003e"}]}}},"manifest":"---\n# Source: aws-calico/templates/service.yaml\nkind: Service\napiVersion: v1\nmetadata:\n  name: calico-typha\n","version":3,"namespace":"kube-system"}"#;

#[test]
fn decodes_a_release_in_helms_own_byte_format() {
    let rel = decode_release_secret(&go_style_secret(GO_JSON, true));
    let rel = match rel {
        Ok(r) => r,
        Err(e) => panic!("decode failed: {e}"),
    };
    assert_eq!(rel.name, "calico");
    assert_eq!(rel.version, 3);
    assert_eq!(rel.status(), "deployed");
    assert_eq!(rel.chart.metadata.version, "0.3.10");
    assert_eq!(rel.chart.metadata.app_version, "3.19.1");
    assert!(rel.chart.metadata.extra.contains_key("maintainers"));
    assert_eq!(rel.config["calico"]["node"]["extraEnv"][0]["value"], "<b>");
    let crds: Vec<_> = rel.chart.crd_files().map(|f| f.text()).collect();
    assert_eq!(crds, vec!["kind: CustomResourceDefinition\n".to_string()]);
    assert_eq!(rel.chart.templates[0].text(), "kind: Service\n");
    let objs = manifest_objects(&rel.manifest).unwrap_or_default();
    assert_eq!(objs.len(), 1);
    assert_eq!(objs[0].kind, "Service");
}

#[test]
fn accepts_uncompressed_payloads_like_helm() {
    let rel = decode_release_secret(&go_style_secret(GO_JSON, false));
    assert_eq!(rel.map(|r| r.version), Ok(3));
}

#[test]
fn corrupt_records_give_clear_errors() {
    let mut s = go_style_secret(GO_JSON, true);
    s["data"]["release"] = json!("!!!not base64");
    let e = decode_release_secret(&s)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("sh.helm.release.v1.calico.v3") && e.contains("base64"),
        "{e}"
    );

    // Valid base64 of a truncated gzip stream.
    let mut z = vec![0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 2, 0xff, 0x01, 0x05];
    z.truncate(12);
    s["data"]["release"] = json!(STANDARD.encode(STANDARD.encode(z)));
    let e = decode_release_secret(&s)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("gzip"), "{e}");

    s["data"]["release"] = json!(STANDARD.encode(STANDARD.encode("{\"name\": 5")));
    let e = decode_release_secret(&s)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("JSON"), "{e}");

    s["data"] = json!({});
    let e = decode_release_secret(&s)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("data.release is missing"), "{e}");

    s["type"] = json!("Opaque");
    assert!(matches!(
        decode_release_secret(&s),
        Err(HelmError::NotARelease(_))
    ));
}

#[test]
fn manifest_documents_carry_source_and_keep() {
    let objs = manifest_objects(MANIFEST).unwrap_or_default();
    let kinds: Vec<_> = objs.iter().map(|o| o.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "PodDisruptionBudget",
            "ClusterRole",
            "DaemonSet"
        ]
    );
    assert_eq!(
        objs[1].source,
        "aws-calico/templates/pod-disruption-budget.yaml"
    );
    assert_eq!(objs[1].api_version, "policy/v1beta1");
    assert!(objs[2].keep && !objs[0].keep);
    assert_eq!(objs[3].namespace.as_deref(), Some("kube-system"));
    assert_eq!(objs[0].namespace, None);
}

#[test]
fn bad_manifest_names_the_document() {
    let e = manifest_objects("---\n# Source: c/templates/x.yaml\nkind: [\n")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("c/templates/x.yaml"), "{e}");
    let e = manifest_objects("---\nkind: Service\nmetadata: {name: a}\n")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("apiVersion is missing"), "{e}");
}

#[test]
fn uninstall_plan_follows_the_stored_manifest() {
    let rel = sample();
    let plan = uninstall_plan(&rel);
    let names: Vec<_> = plan
        .iter()
        .map(|r| format!("{}/{}", r.kind, r.name))
        .collect();
    // Helm's uninstall order; the kept ClusterRole is not deleted.
    assert_eq!(
        names,
        [
            "DaemonSet/calico-node",
            "ServiceAccount/calico-node",
            "PodDisruptionBudget/calico-typha"
        ]
    );
    assert_eq!(plan[1].namespace.as_deref(), Some("kube-system"));
    let blockers = uninstall_blockers(&rel, 29);
    assert_eq!(blockers.len(), 1);
    assert_eq!(blockers[0].removed_in, Some(25));
    assert!(uninstall_blockers(&rel, 24).is_empty());
}

#[test]
fn recognises_release_records() {
    let s = encode_release_secret(&sample());
    assert_eq!(
        detect_release_record(&s),
        Some(ReleaseRecord::Helm3Secret {
            release: "aws-calico".into(),
            revision: 1,
            status: "deployed".into()
        })
    );
    let tiller = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "calico.v2", "namespace": "kube-system",
            "labels": {"NAME": "calico", "OWNER": "TILLER", "STATUS": "DEPLOYED", "VERSION": "2"}}});
    assert_eq!(
        detect_release_record(&tiller),
        Some(ReleaseRecord::Helm2ConfigMap {
            release: "calico".into(),
            revision: 2,
            status: "deployed".into()
        })
    );
    let mut tiller_secret = tiller.clone();
    tiller_secret["kind"] = json!("Secret");
    let rec = detect_release_record(&tiller_secret);
    assert!(matches!(
        &rec,
        Some(ReleaseRecord::Helm2Secret { revision: 2, .. })
    ));
    assert!(rec.is_some_and(|r| r.is_helm2()));
    let plain = json!({"kind": "ConfigMap", "metadata": {"name": "x"}});
    assert_eq!(detect_release_record(&plain), None);
}

#[test]
fn current_release_prefers_the_latest_deployed_revision() {
    let mut v1 = sample();
    v1.info.status = status::SUPERSEDED.into();
    let mut v2 = sample();
    v2.version = 2;
    v2.info.status = status::DEPLOYED.into();
    let mut v3 = sample();
    v3.version = 3;
    v3.info.status = status::FAILED.into();
    let mut other = sample();
    other.name = "other".into();
    other.version = 9;
    let records: Vec<Value> = [&v1, &v3, &v2, &other]
        .iter()
        .map(|r| encode_release_secret(r))
        .collect();
    assert_eq!(current_release(&records, "aws-calico"), Ok(Some(v2)));
    // With no deployed revision, the newest one (as helm status shows it).
    let no_deployed = vec![records[0].clone(), records[1].clone()];
    assert_eq!(
        current_release(&no_deployed, "aws-calico").map(|r| r.map(|r| r.version)),
        Ok(Some(3))
    );
    assert_eq!(current_release(&records, "missing"), Ok(None));
}

proptest::proptest! {
    #[test]
    fn any_release_survives_the_secret_round_trip(
        name in "[a-z][a-z0-9-]{0,20}",
        status in "[a-z-]{0,12}",
        version in 0u32..1000,
        manifest in "\\PC{0,200}",
        data in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        key in "[a-zA-Z]{1,8}",
        value in "\\PC{0,20}",
    ) {
        let mut rel = sample();
        rel.name = name;
        rel.info.status = status;
        rel.version = version;
        rel.manifest = manifest;
        rel.chart.files.push(ChartFile { name: "files/blob".into(), data });
        rel.config.insert(key, json!(value));
        let back = decode_release_secret(&encode_release_secret(&rel));
        proptest::prop_assert_eq!(back, Ok(rel));
    }
}

#[test]
fn comment_only_documents_are_skipped() {
    let m = "---\n# Source: c/templates/empty.yaml\n---\n# Source: c/templates/cm.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\r\n---\n\n";
    let objs = manifest_objects(m).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(objs.len(), 1);
    assert_eq!(objs[0].source, "c/templates/cm.yaml");
}
