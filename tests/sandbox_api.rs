//! The sandbox API server driven by kube 5 clients, each case run twice: against
//! the router in-process and over HTTP on 127.0.0.1.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use calico_migrate::sandbox::scenario::{self, ScenarioConfig};
use calico_migrate::sandbox::{
    FaultConfig, Gvr, KubernetesVersion, Sandbox, SandboxOptions, ServeHandle,
};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::Client;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, PropagationPolicy, WatchEvent, WatchParams,
};
use serde_json::{Value, json};

use crate::support;

struct Target {
    sb: Sandbox,
    client: Client,
    how: &'static str,
    _server: Option<ServeHandle>,
}

/// A fresh sandbox reached in-process, and another reached over HTTP.
async fn targets() -> Result<Vec<Target>> {
    let a = Sandbox::new(SandboxOptions::default());
    let b = Sandbox::new(SandboxOptions::default());
    let server = b.serve("127.0.0.1:0").await?;
    let http = server.client()?;
    Ok(vec![
        Target {
            client: a.client(),
            sb: a,
            how: "in-process",
            _server: None,
        },
        Target {
            client: http,
            sb: b,
            how: "http",
            _server: Some(server),
        },
    ])
}

fn api_err(e: kube::Error) -> Result<kube::core::Status> {
    match e {
        kube::Error::Api(s) => Ok(*s),
        other => Err(anyhow!("expected an API error, got {other}")),
    }
}

fn cm(name: &str, data: Value) -> Result<ConfigMap> {
    Ok(serde_json::from_value(
        json!({"metadata": {"name": name}, "data": data}),
    )?)
}

async fn ensure_ns(client: &Client, name: &str) -> Result<()> {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(())
}

#[tokio::test]
async fn crud_versions_conflicts_and_errors() -> Result<()> {
    for t in targets().await? {
        let cms: Api<ConfigMap> = Api::namespaced(t.client.clone(), "default");
        let created = cms
            .create(&PostParams::default(), &cm("a", json!({"k": "v"}))?)
            .await?;
        let rv1: u64 = created
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default()
            .parse()?;
        assert!(created.metadata.uid.is_some(), "{}: uid set", t.how);
        assert!(
            created.metadata.creation_timestamp.is_some(),
            "{}: creationTimestamp set",
            t.how
        );

        let dup = api_err(
            cms.create(&PostParams::default(), &cm("a", json!({}))?)
                .await
                .err()
                .context("duplicate create")?,
        )?;
        assert_eq!(
            (dup.code, dup.reason.as_str()),
            (409, "AlreadyExists"),
            "{}",
            t.how
        );
        assert_eq!(dup.message, "configmaps \"a\" already exists");

        let mut next = created.clone();
        next.data = Some([("k".to_string(), "w".to_string())].into());
        let updated = cms.replace("a", &PostParams::default(), &next).await?;
        let rv2: u64 = updated
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default()
            .parse()?;
        assert!(rv2 > rv1, "{}: resourceVersion grows", t.how);
        // `next` still carries the old resourceVersion: stale.
        let stale = api_err(
            cms.replace("a", &PostParams::default(), &next)
                .await
                .err()
                .context("stale update")?,
        )?;
        assert_eq!(
            (stale.code, stale.reason.as_str()),
            (409, "Conflict"),
            "{}",
            t.how
        );
        assert!(
            stale.message.contains("the object has been modified"),
            "{}",
            stale.message
        );

        let missing = api_err(cms.get("nope").await.err().context("get missing")?)?;
        assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
        assert_eq!(missing.message, "configmaps \"nope\" not found");

        let in_missing_ns: Api<ConfigMap> = Api::namespaced(t.client.clone(), "ghost");
        let e = api_err(
            in_missing_ns
                .create(&PostParams::default(), &cm("x", json!({}))?)
                .await
                .err()
                .context("create in missing ns")?,
        )?;
        assert_eq!(e.message, "namespaces \"ghost\" not found");

        let bad_name = api_err(
            cms.create(&PostParams::default(), &cm("Bad_Name", json!({}))?)
                .await
                .err()
                .context("bad name")?,
        )?;
        assert_eq!((bad_name.code, bad_name.reason.as_str()), (422, "Invalid"));

        let gen_named: ConfigMap =
            serde_json::from_value(json!({"metadata": {"generateName": "gen-"}}))?;
        let g = cms.create(&PostParams::default(), &gen_named).await?;
        assert!(g.metadata.name.unwrap_or_default().starts_with("gen-"));
        assert!(t.sb.store().resource_version() >= rv2);
    }
    Ok(())
}

async fn raw(
    client: &Client,
    method: &str,
    uri: &str,
    ct: &str,
    body: Vec<u8>,
) -> Result<(u16, Value)> {
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", ct)
        .body(kube::client::Body::from(body))?;
    let resp = client.send(req).await?;
    let code = resp.status().as_u16();
    let bytes = axum::body::to_bytes(axum::body::Body::new(resp.into_body()), usize::MAX).await?;
    Ok((code, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

/// (method, uri, content-type, body, expected code, expected reason)
type Case = (
    &'static str,
    &'static str,
    &'static str,
    Vec<u8>,
    u16,
    &'static str,
);

#[tokio::test]
async fn bad_input_gets_status_errors() -> Result<()> {
    for t in targets().await? {
        let c = &t.client;
        let cases: Vec<Case> = vec![
            (
                "POST",
                "/api/v1/namespaces/default/configmaps",
                "application/json",
                b"{not json".to_vec(),
                400,
                "BadRequest",
            ),
            (
                "POST",
                "/api/v1/namespaces/default/configmaps",
                "application/json",
                b"[1,2]".to_vec(),
                400,
                "BadRequest",
            ),
            (
                "POST",
                "/api/v1/namespaces/default/configmaps",
                "application/yaml",
                b"a: [unclosed".to_vec(),
                400,
                "BadRequest",
            ),
            (
                "POST",
                "/api/v1/namespaces/default/configmaps",
                "application/json",
                br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"}}"#.to_vec(),
                400,
                "BadRequest",
            ),
            (
                "POST",
                "/api/v1/namespaces/default/configmaps",
                "application/json",
                br#"{"apiVersion":"apps/v1","kind":"ConfigMap","metadata":{"name":"x"}}"#.to_vec(),
                400,
                "BadRequest",
            ),
            (
                "POST",
                "/api/v1/namespaces/other/configmaps",
                "application/json",
                br#"{"metadata":{"name":"x","namespace":"default"}}"#.to_vec(),
                400,
                "BadRequest",
            ),
            (
                "GET",
                "/api/v1/namespaces/default/widgets",
                "application/json",
                vec![],
                404,
                "NotFound",
            ),
            (
                "GET",
                "/apis/nope.example.com/v1/things",
                "application/json",
                vec![],
                404,
                "NotFound",
            ),
            (
                "GET",
                "/api/v1/namespaces/default/configmaps/x/bogus",
                "application/json",
                vec![],
                404,
                "NotFound",
            ),
            (
                "POST",
                "/api/v1/namespaces/default/configmaps",
                "application/json",
                vec![b' '; 3 * 1024 * 1024 + 10],
                413,
                "RequestEntityTooLarge",
            ),
            (
                "PATCH",
                "/api/v1/namespaces/default/configmaps/x",
                "text/plain",
                b"{}".to_vec(),
                415,
                "UnsupportedMediaType",
            ),
            (
                "GET",
                "/api/v1/namespaces/default/configmaps?labelSelector=a%20in%20b",
                "application/json",
                vec![],
                400,
                "BadRequest",
            ),
            (
                "GET",
                "/api/v1/namespaces/default/configmaps?continue=garbage",
                "application/json",
                vec![],
                400,
                "BadRequest",
            ),
            (
                "PUT",
                "/api/v1/namespaces/default/configmaps",
                "application/json",
                b"{}".to_vec(),
                405,
                "MethodNotAllowed",
            ),
        ];
        for (m, uri, ct, body, code, reason) in cases {
            let (got, status) = raw(c, m, uri, ct, body).await?;
            assert_eq!(got, code, "{}: {m} {uri} answered {status}", t.how);
            assert_eq!(status["kind"], "Status", "{}: {m} {uri}", t.how);
            assert_eq!(status["reason"], reason, "{}: {m} {uri}: {status}", t.how);
            assert_eq!(status["code"], code);
        }
        // Patches that do not apply are refused, and the object is unchanged.
        Api::<ConfigMap>::namespaced(c.clone(), "default")
            .create(&PostParams::default(), &cm("x", json!({"a": "1"}))?)
            .await?;
        let (code, s) = raw(
            c,
            "PATCH",
            "/api/v1/namespaces/default/configmaps/x",
            "application/json-patch+json",
            br#"[{"op":"remove","path":"/data/zz"}]"#.to_vec(),
        )
        .await?;
        assert_eq!((code, s["reason"].as_str()), (422, Some("Invalid")), "{s}");
        let (code, _) = raw(
            c,
            "PATCH",
            "/api/v1/namespaces/default/configmaps/x",
            "application/merge-patch+json",
            b"{oops".to_vec(),
        )
        .await?;
        assert_eq!(code, 400);
        let (code, s) = raw(
            c,
            "PATCH",
            "/api/v1/namespaces/default/configmaps/x?fieldManager=m",
            "application/apply-patch+yaml",
            b"data: {a: '2'}".to_vec(),
        )
        .await?;
        assert_eq!(code, 400, "apply without apiVersion/kind: {s}");
    }
    Ok(())
}

fn crd(group: &str, plural: &str, kind: &str, scope: &str) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}")},
        "spec": {
            "group": group, "scope": scope,
            "names": {"plural": plural, "singular": kind.to_lowercase(), "kind": kind, "listKind": format!("{kind}List")},
            "versions": [{"name": "v1", "served": true, "storage": true,
                          "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                          "subresources": {"status": {}}}]
        }
    })
}

#[tokio::test]
async fn crds_are_served_at_once_and_removed_with_their_objects() -> Result<()> {
    for t in targets().await? {
        let crd_api: Api<DynamicObject> = Api::all_with(
            t.client.clone(),
            &ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
                "customresourcedefinitions",
            ),
        );
        let gnp = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("crd.projectcalico.org", "v1", "GlobalNetworkPolicy"),
            "globalnetworkpolicies",
        );
        let gnps: Api<DynamicObject> = Api::all_with(t.client.clone(), &gnp);
        let before = api_err(
            gnps.list(&ListParams::default())
                .await
                .err()
                .context("list before CRD")?,
        )?;
        assert_eq!(before.code, 404, "{}", t.how);

        let def: DynamicObject = serde_json::from_value(crd(
            "crd.projectcalico.org",
            "globalnetworkpolicies",
            "GlobalNetworkPolicy",
            "Cluster",
        ))?;
        let created = crd_api.create(&PostParams::default(), &def).await?;
        let established = created.data["status"]["conditions"]
            .as_array()
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Established" && c["status"] == "True")
            });
        assert!(established, "{}: CRD is Established", t.how);

        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "crd.projectcalico.org/v1", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": "deny-aws-imds"}, "spec": {"selector": "all()", "types": ["Egress"]}}))?;
        gnps.create(&PostParams::default(), &obj).await?;
        assert_eq!(gnps.list(&ListParams::default()).await?.items.len(), 1);
        // Custom resources take no strategic merge patch, as on a real server.
        let e = api_err(
            gnps.patch(
                "deny-aws-imds",
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {"order": 1}})),
            )
            .await
            .err()
            .context("SMP on CR")?,
        )?;
        assert_eq!(e.code, 415, "{}", t.how);
        let patched = gnps
            .patch(
                "deny-aws-imds",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"order": 1}})),
            )
            .await?;
        assert_eq!(
            patched.metadata.generation,
            Some(2),
            "{}: spec change bumps generation",
            t.how
        );

        let wrong: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "wrong.name"}, "spec": crd("x.io", "things", "Thing", "Namespaced")["spec"]}))?;
        let e = api_err(
            crd_api
                .create(&PostParams::default(), &wrong)
                .await
                .err()
                .context("misnamed CRD")?,
        )?;
        assert_eq!(e.code, 422, "{}: {}", t.how, e.message);

        crd_api
            .delete(
                "globalnetworkpolicies.crd.projectcalico.org",
                &DeleteParams::default(),
            )
            .await?;
        let after = api_err(
            gnps.list(&ListParams::default())
                .await
                .err()
                .context("list after CRD delete")?,
        )?;
        assert_eq!(after.code, 404, "{}", t.how);
        // Re-creating the CRD does not bring the old objects back.
        crd_api.create(&PostParams::default(), &def).await?;
        assert!(
            gnps.list(&ListParams::default()).await?.items.is_empty(),
            "{}",
            t.how
        );
    }
    Ok(())
}

/// As the real API server's CRD finalizer (`customresourcecleanup.apiextensions.k8s.io`):
/// a deleted CRD deletes its objects through the normal delete path, so one held by its
/// own finalizer holds the CRD (Terminating, no new objects) until it goes too.
#[tokio::test]
async fn a_deleted_crd_waits_for_its_objects_finalizers() -> Result<()> {
    for t in targets().await? {
        let crd_api: Api<DynamicObject> = Api::all_with(
            t.client.clone(),
            &ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
                "customresourcedefinitions",
            ),
        );
        let inst = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("operator.tigera.io", "v1", "Installation"),
            "installations",
        );
        let insts: Api<DynamicObject> = Api::all_with(t.client.clone(), &inst);
        let name = "installations.operator.tigera.io";
        let def: DynamicObject = serde_json::from_value(crd(
            "operator.tigera.io",
            "installations",
            "Installation",
            "Cluster",
        ))?;
        crd_api.create(&PostParams::default(), &def).await?;
        // What the Tigera operator puts on its Installation.
        let held: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "operator.tigera.io/v1", "kind": "Installation",
            "metadata": {"name": "default", "finalizers": ["tigera.io/operator-cleanup"]},
            "spec": {"cni": {"type": "AmazonVPC"}}}))?;
        insts.create(&PostParams::default(), &held).await?;
        let free: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "operator.tigera.io/v1", "kind": "Installation",
            "metadata": {"name": "spare"}, "spec": {}}))?;
        insts.create(&PostParams::default(), &free).await?;

        crd_api.delete(name, &DeleteParams::default()).await?;
        let terminating = crd_api.get(name).await?;
        assert!(
            terminating.metadata.deletion_timestamp.is_some(),
            "{}",
            t.how
        );
        assert_eq!(
            terminating.metadata.finalizers,
            Some(vec![
                "customresourcecleanup.apiextensions.k8s.io".to_string()
            ]),
            "{}",
            t.how
        );
        let cond = terminating.data["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Terminating").cloned())
            .unwrap_or_default();
        assert_eq!(
            (cond["status"].as_str(), cond["reason"].as_str()),
            (Some("True"), Some("InstanceDeletionInProgress")),
            "{}: {cond}",
            t.how
        );
        // The free object is gone, the held one waits with a deletionTimestamp.
        let left = insts.list(&ListParams::default()).await?.items;
        assert_eq!(left.len(), 1, "{}", t.how);
        assert!(left[0].metadata.deletion_timestamp.is_some(), "{}", t.how);
        let e = api_err(
            insts
                .create(&PostParams::default(), &free)
                .await
                .err()
                .context("create while terminating")?,
        )?;
        assert_eq!(e.code, 403, "{}", t.how);
        assert_eq!(
            e.message,
            "installations.operator.tigera.io \"spare\" is forbidden: create not allowed while \
             custom resource definition is terminating",
            "{}",
            t.how
        );

        // The operator lets go: the object goes, and with it the CRD and its endpoints.
        insts
            .patch(
                "default",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await?;
        let e = api_err(crd_api.get(name).await.err().context("CRD after")?)?;
        assert_eq!(e.code, 404, "{}", t.how);
        let e = api_err(
            insts
                .list(&ListParams::default())
                .await
                .err()
                .context("list after")?,
        )?;
        assert_eq!(e.code, 404, "{}", t.how);
        assert!(
            t.sb.store()
                .resource_type(&Gvr::new("operator.tigera.io", "v1", "installations"))
                .is_none(),
            "{}",
            t.how
        );
    }
    Ok(())
}

fn pod(name: &str, node: &str, app: &str) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}
    }))?)
}

#[tokio::test]
async fn selectors_and_pagination() -> Result<()> {
    for t in targets().await? {
        ensure_ns(&t.client, "apps").await?;
        let pods: Api<Pod> = Api::namespaced(t.client.clone(), "apps");
        for i in 0..25 {
            let p = pod(
                &format!("p{i:02}"),
                if i % 5 == 0 { "node-a" } else { "node-b" },
                if i % 2 == 0 { "even" } else { "odd" },
            )?;
            pods.create(&PostParams::default(), &p).await?;
        }
        let mut names = Vec::new();
        let mut lp = ListParams::default().limit(10);
        let mut pages = 0;
        loop {
            let page = pods.list(&lp).await?;
            pages += 1;
            names.extend(page.items.iter().filter_map(|p| p.metadata.name.clone()));
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(c) => lp = ListParams::default().limit(10).continue_token(&c),
                None => break,
            }
        }
        assert_eq!(pages, 3, "{}", t.how);
        let expected: Vec<String> = (0..25).map(|i| format!("p{i:02}")).collect();
        assert_eq!(names, expected, "{}: every pod once, in order", t.how);

        let on_a = pods
            .list(&ListParams::default().fields("spec.nodeName=node-a"))
            .await?;
        assert_eq!(on_a.items.len(), 5, "{}", t.how);
        let odd_b = pods
            .list(
                &ListParams::default()
                    .labels("app=odd")
                    .fields("spec.nodeName!=node-a"),
            )
            .await?;
        assert_eq!(
            odd_b.items.len(),
            10,
            "{}: odd pods minus p05 and p15 on node-a",
            t.how
        );
        let set = pods
            .list(&ListParams::default().labels("app in (even,none)"))
            .await?;
        assert_eq!(set.items.len(), 13, "{}", t.how);
        let by_name = Api::<Pod>::all(t.client.clone())
            .list(&ListParams::default().fields("metadata.name=p07,metadata.namespace=apps"))
            .await?;
        assert_eq!(by_name.items.len(), 1, "{}", t.how);
    }
    Ok(())
}

#[tokio::test]
async fn watch_streams_and_resumes() -> Result<()> {
    for t in targets().await? {
        let cms: Api<ConfigMap> = Api::namespaced(t.client.clone(), "default");
        let first = cms
            .create(&PostParams::default(), &cm("w1", json!({}))?)
            .await?;
        let rv = first.metadata.resource_version.clone().unwrap_or_default();
        cms.create(&PostParams::default(), &cm("w2", json!({}))?)
            .await?;
        // Resume after w1: replays w2, then streams what happens next.
        let stream = cms.watch(&WatchParams::default().timeout(10), &rv).await?;
        futures::pin_mut!(stream);
        let writer = cms.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = writer
                .patch(
                    "w1",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": {"x": "1"}})),
                )
                .await;
            let _ = writer.delete("w2", &DeleteParams::default()).await;
        });
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let ev = tokio::time::timeout(Duration::from_secs(5), stream.try_next())
                .await
                .context("watch event in time")??;
            match ev {
                Some(WatchEvent::Added(o)) => {
                    seen.push(format!("ADDED {}", o.metadata.name.unwrap_or_default()))
                }
                Some(WatchEvent::Modified(o)) => {
                    seen.push(format!("MODIFIED {}", o.metadata.name.unwrap_or_default()))
                }
                Some(WatchEvent::Deleted(o)) => {
                    seen.push(format!("DELETED {}", o.metadata.name.unwrap_or_default()))
                }
                Some(other) => bail!("{}: unexpected {other:?}", t.how),
                None => bail!("{}: watch ended early", t.how),
            }
        }
        assert_eq!(seen, ["ADDED w2", "MODIFIED w1", "DELETED w2"], "{}", t.how);

        // A selector watch sees an object leave its selector as DELETED.
        let now = t.sb.store().resource_version().to_string();
        let sel = cms
            .watch(&WatchParams::default().labels("team=a").timeout(10), &now)
            .await?;
        futures::pin_mut!(sel);
        cms.patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "a"}}})),
        )
        .await?;
        cms.patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "b"}}})),
        )
        .await?;
        let a = tokio::time::timeout(Duration::from_secs(5), sel.try_next()).await??;
        let b = tokio::time::timeout(Duration::from_secs(5), sel.try_next()).await??;
        assert!(matches!(a, Some(WatchEvent::Added(_))), "{}: {a:?}", t.how);
        assert!(
            matches!(b, Some(WatchEvent::Deleted(_))),
            "{}: {b:?}",
            t.how
        );
    }
    Ok(())
}

#[tokio::test]
async fn too_old_resource_version_is_gone() -> Result<()> {
    let sb = Sandbox::new(SandboxOptions {
        history: 5,
        ..Default::default()
    });
    let cms: Api<ConfigMap> = Api::namespaced(sb.client(), "default");
    for i in 0..10 {
        cms.create(&PostParams::default(), &cm(&format!("c{i}"), json!({}))?)
            .await?;
    }
    let stream = cms.watch(&WatchParams::default(), "1").await?;
    futures::pin_mut!(stream);
    match stream.next().await {
        Some(Ok(WatchEvent::Error(e))) => assert_eq!(e.code, 410),
        Some(Err(kube::Error::Api(s))) => assert_eq!(s.code, 410),
        other => bail!("expected 410 Gone, got {other:?}"),
    }
    Ok(())
}

fn deployment(name: &str, replicas: i32) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "main", "image": "nginx:1"}, {"name": "side", "image": "envoy:1"}]}}}
    }))?)
}

#[tokio::test]
async fn patches_and_server_side_apply() -> Result<()> {
    for t in targets().await? {
        let deps: Api<Deployment> = Api::namespaced(t.client.clone(), "default");
        let d = deployment("web", 1)?;
        deps.patch("web", &PatchParams::apply("team-a"), &Patch::Apply(&d))
            .await?;
        // Strategic merge: containers merge by name; `$patch: delete` removes one.
        let smp = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "main", "image": "nginx:2"}, {"name": "side", "$patch": "delete"}]}}}});
        let out = deps
            .patch("web", &PatchParams::default(), &Patch::Strategic(smp))
            .await?;
        let containers = out
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .map(|s| s.containers.clone())
            .unwrap_or_default();
        assert_eq!(containers.len(), 1, "{}", t.how);
        assert_eq!(containers[0].image.as_deref(), Some("nginx:2"));
        assert_eq!(out.metadata.generation, Some(2), "{}", t.how);
        // JSON patch and merge patch.
        // The json-patch type is reached through kube's `Patch::Json` by inference.
        let jp = Patch::Json::<()>(serde_json::from_value(
            json!([{"op": "replace", "path": "/spec/replicas", "value": 4}]),
        )?);
        let out = deps.patch("web", &PatchParams::default(), &jp).await?;
        assert_eq!(out.spec.as_ref().and_then(|s| s.replicas), Some(4));
        let out = deps
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"tier": "front"}}})),
            )
            .await?;
        assert_eq!(
            out.metadata
                .labels
                .unwrap_or_default()
                .get("tier")
                .map(String::as_str),
            Some("front")
        );

        // replicas was changed by an Update manager: team-a re-applying 1 conflicts with it.
        let e = api_err(
            deps.patch("web", &PatchParams::apply("team-a"), &Patch::Apply(&d))
                .await
                .err()
                .context("apply conflict")?,
        )?;
        assert_eq!(e.code, 409, "{}: {}", t.how, e.message);
        assert!(e.message.contains(".spec.replicas"), "{}", e.message);
        // Another appliers' conflict names the manager.
        let other = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 5}});
        let forced = deps
            .patch(
                "web",
                &PatchParams::apply("team-b").force(),
                &Patch::Apply(&other),
            )
            .await?;
        assert_eq!(forced.spec.as_ref().and_then(|s| s.replicas), Some(5));
        let third = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 6}});
        let e = api_err(
            deps.patch("web", &PatchParams::apply("team-c"), &Patch::Apply(&third))
                .await
                .err()
                .context("conflict with team-b")?,
        )?;
        assert!(
            e.message.contains("conflict with \"team-b\""),
            "{}: {}",
            t.how,
            e.message
        );
        let managers: Vec<String> = forced
            .metadata
            .managed_fields
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| m.manager)
            .collect();
        assert!(
            managers.contains(&"team-a".to_string()) && managers.contains(&"team-b".to_string()),
            "{managers:?}"
        );

        // A manager that stops applying a label removes it; re-applying the same is a no-op.
        let cms: Api<ConfigMap> = Api::namespaced(t.client.clone(), "default");
        let v1 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa", "labels": {"a": "1", "b": "2"}}, "data": {"k": "v"}});
        let c1 = cms
            .patch("ssa", &PatchParams::apply("mgr"), &Patch::Apply(&v1))
            .await?;
        let c1b = cms
            .patch("ssa", &PatchParams::apply("mgr"), &Patch::Apply(&v1))
            .await?;
        assert_eq!(
            c1.metadata.resource_version, c1b.metadata.resource_version,
            "{}: no-op apply writes nothing",
            t.how
        );
        let v2 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa", "labels": {"a": "1"}}, "data": {"k": "v"}});
        let c2 = cms
            .patch("ssa", &PatchParams::apply("mgr"), &Patch::Apply(&v2))
            .await?;
        assert_eq!(c2.metadata.labels.unwrap_or_default().len(), 1, "{}", t.how);
    }
    Ok(())
}

#[tokio::test]
async fn status_and_scale_subresources() -> Result<()> {
    for t in targets().await? {
        let deps: Api<Deployment> = Api::namespaced(t.client.clone(), "default");
        let mut d = deployment("api", 2)?;
        d.status = serde_json::from_value(json!({"replicas": 9}))?;
        let created = deps.create(&PostParams::default(), &d).await?;
        assert!(
            created.status.is_none(),
            "{}: status is dropped on create",
            t.how
        );
        let st = deps.patch_status("api", &PatchParams::default(), &Patch::Merge(json!({
            "spec": {"replicas": 7},
            "status": {"replicas": 2, "readyReplicas": 2, "conditions": [{"type": "Available", "status": "True"}]}}))).await?;
        assert_eq!(st.status.as_ref().and_then(|s| s.ready_replicas), Some(2));
        assert_eq!(
            st.spec.as_ref().and_then(|s| s.replicas),
            Some(2),
            "{}: status writes leave spec alone",
            t.how
        );
        assert_eq!(st.metadata.generation, Some(1));
        // A main-resource write cannot change status.
        let out = deps
            .patch(
                "api",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"readyReplicas": 0}})),
            )
            .await?;
        assert_eq!(
            out.status.as_ref().and_then(|s| s.ready_replicas),
            Some(2),
            "{}",
            t.how
        );

        let scale = deps.get_scale("api").await?;
        assert_eq!(scale.spec.and_then(|s| s.replicas), Some(2));
        assert_eq!(
            scale.status.map(|s| s.selector),
            Some(Some("app=api".into()))
        );
        deps.patch_scale(
            "api",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await?;
        let after = deps.get("api").await?;
        assert_eq!(
            after.spec.as_ref().and_then(|s| s.replicas),
            Some(3),
            "{}",
            t.how
        );
        assert_eq!(after.metadata.generation, Some(2));
    }
    Ok(())
}

#[tokio::test]
async fn finalizers_propagation_and_namespace_deletion() -> Result<()> {
    for t in targets().await? {
        ensure_ns(&t.client, "team").await?;
        let cms: Api<ConfigMap> = Api::namespaced(t.client.clone(), "team");
        let held: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}),
        )?;
        cms.create(&PostParams::default(), &held).await?;
        let r = cms.delete("held", &DeleteParams::default()).await?;
        assert!(
            r.is_left(),
            "{}: still there while a finalizer holds it",
            t.how
        );
        let pending = cms.get("held").await?;
        assert!(pending.metadata.deletion_timestamp.is_some());
        // No new finalizers on an object being deleted.
        let e = api_err(
            cms.patch(
                "held",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold", "x/y"]}})),
            )
            .await
            .err()
            .context("add finalizer")?,
        )?;
        assert_eq!(e.code, 403, "{}", t.how);
        cms.patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await?;
        assert_eq!(
            api_err(cms.get("held").await.err().context("gone")?)?.code,
            404,
            "{}",
            t.how
        );

        // Owner references: Background deletes dependents, Orphan keeps them.
        let owner = cms
            .create(&PostParams::default(), &cm("owner", json!({}))?)
            .await?;
        let uid = owner.metadata.uid.clone().unwrap_or_default();
        let dep: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": "dep", "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]}}))?;
        cms.create(&PostParams::default(), &dep).await?;
        cms.delete(
            "owner",
            &DeleteParams {
                propagation_policy: Some(PropagationPolicy::Orphan),
                ..Default::default()
            },
        )
        .await?;
        let kept = cms.get("dep").await?;
        assert!(
            kept.metadata
                .owner_references
                .unwrap_or_default()
                .is_empty(),
            "{}: orphaned",
            t.how
        );
        let owner2 = cms
            .create(&PostParams::default(), &cm("owner2", json!({}))?)
            .await?;
        let dep2: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": "dep2", "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner2", "uid": owner2.metadata.uid}]}}),
        )?;
        cms.create(&PostParams::default(), &dep2).await?;
        cms.delete("owner2", &DeleteParams::foreground()).await?;
        assert!(
            cms.get_opt("dep2").await?.is_none(),
            "{}: foreground removed the dependent",
            t.how
        );
        assert!(
            cms.get_opt("owner2").await?.is_none(),
            "{}: then the owner",
            t.how
        );

        // Namespace deletion removes what it holds.
        let nss: Api<Namespace> = Api::all(t.client.clone());
        nss.delete("team", &DeleteParams::default()).await?;
        assert!(nss.get_opt("team").await?.is_none(), "{}", t.how);
        assert!(
            cms.list(&ListParams::default()).await?.items.is_empty(),
            "{}",
            t.how
        );
    }
    Ok(())
}

#[tokio::test]
async fn terminating_namespace_refuses_new_objects() -> Result<()> {
    let sb = Sandbox::new(SandboxOptions::default());
    let c = sb.client();
    ensure_ns(&c, "t").await?;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "t");
    let held: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}),
    )?;
    cms.create(&PostParams::default(), &held).await?;
    Api::<Namespace>::all(c.clone())
        .delete("t", &DeleteParams::default())
        .await?;
    let ns = Api::<Namespace>::all(c.clone()).get("t").await?;
    assert_eq!(
        ns.status.and_then(|s| s.phase).as_deref(),
        Some("Terminating")
    );
    let e = api_err(
        cms.create(&PostParams::default(), &cm("new", json!({}))?)
            .await
            .err()
            .context("create in terminating")?,
    )?;
    assert_eq!(e.code, 403);
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await?;
    assert!(
        Api::<Namespace>::all(c).get_opt("t").await?.is_none(),
        "namespace goes once empty"
    );
    Ok(())
}

#[tokio::test]
async fn faults_are_injected_and_can_be_turned_off_through_the_api() -> Result<()> {
    let sb = Sandbox::new(SandboxOptions {
        faults: FaultConfig::parse_specs(&["api-errors:1".into()])?,
        ..Default::default()
    });
    let server = sb.serve("127.0.0.1:0").await?;
    for c in [sb.client(), server.client()?] {
        let e = api_err(
            Api::<ConfigMap>::namespaced(c.clone(), "default")
                .list(&ListParams::default())
                .await
                .err()
                .context("fault")?,
        )?;
        assert!([429, 500, 503].contains(&e.code), "{e:?}");
    }
    // sandbox-system is never faulted: turn the knob down through the API.
    let faults: Api<ConfigMap> = Api::namespaced(server.client()?, "sandbox-system");
    faults
        .patch(
            "faults",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"api-errors": "0", "conflicts": "1"}})),
        )
        .await?;
    let cms: Api<ConfigMap> = Api::namespaced(sb.client(), "default");
    cms.list(&ListParams::default()).await?;
    let e = api_err(
        cms.create(&PostParams::default(), &cm("c", json!({}))?)
            .await
            .err()
            .context("conflict fault")?,
    )?;
    assert_eq!(e.code, 409);
    // An invalid setting is refused with the knob named.
    let e = api_err(
        faults
            .patch(
                "faults",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"latency": "soon"}})),
            )
            .await
            .err()
            .context("bad knob")?,
    )?;
    assert_eq!(e.code, 422);
    assert!(e.message.contains("latency"), "{}", e.message);
    faults
        .patch(
            "faults",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"conflicts": "0", "latency": "30"}})),
        )
        .await?;
    let t0 = std::time::Instant::now();
    cms.create(&PostParams::default(), &cm("c", json!({}))?)
        .await?;
    assert!(t0.elapsed() >= Duration::from_millis(30));
    assert_eq!(sb.fault_config().latency_ms, 30);
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn drop_watch_cuts_streams() -> Result<()> {
    let sb = Sandbox::new(SandboxOptions {
        faults: FaultConfig::parse_specs(&["drop-watch:1".into()])?,
        ..Default::default()
    });
    let cms: Api<ConfigMap> = Api::namespaced(sb.client(), "default");
    cms.create(&PostParams::default(), &cm("a", json!({}))?)
        .await?;
    cms.create(&PostParams::default(), &cm("b", json!({}))?)
        .await?;
    let events: Vec<_> = tokio::time::timeout(
        Duration::from_secs(5),
        cms.watch(&WatchParams::default(), "0")
            .await?
            .collect::<Vec<_>>(),
    )
    .await?;
    assert_eq!(events.len(), 1, "the stream ends after the first event");
    Ok(())
}

#[tokio::test]
async fn internal_api_and_change_feed() -> Result<()> {
    let sb = Sandbox::new(SandboxOptions::default());
    let store = sb.store().clone();
    let mut feed = store.subscribe();
    let gvr = Gvr::new("", "v1", "configmaps");
    store.create(
        &gvr,
        "default",
        json!({"metadata": {"name": "x"}, "data": {"a": "1"}}),
        &Default::default(),
    )?;
    let ev = tokio::time::timeout(Duration::from_secs(1), feed.recv()).await??;
    assert_eq!((ev.name.as_str(), ev.kind.as_str()), ("x", "ADDED"));
    // Visible to kube clients at once.
    let got = Api::<ConfigMap>::namespaced(sb.client(), "default")
        .get("x")
        .await?;
    assert_eq!(
        got.data.unwrap_or_default().get("a").map(String::as_str),
        Some("1")
    );
    Ok(())
}

#[tokio::test]
async fn seeds_from_the_scenario() -> Result<()> {
    let objects = scenario::build(&ScenarioConfig::default())?;
    let sb = Sandbox::new(SandboxOptions::default());
    let loaded = sb.load(objects.clone())?;
    assert_eq!(loaded, objects.len());
    let client = sb.client();
    // Every seeded object can be read back by kube through discovery of its type.
    for o in &objects {
        let av = o["apiVersion"].as_str().unwrap_or_default();
        let kind = o["kind"].as_str().unwrap_or_default();
        let rt = sb
            .store()
            .type_of_kind(av, kind)
            .with_context(|| format!("{av} {kind} is served"))?;
        let (g, v) = av.split_once('/').unwrap_or(("", av));
        let ar =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(g, v, kind), &rt.resource);
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        let api: Api<DynamicObject> = match o["metadata"]["namespace"].as_str() {
            Some(ns) if rt.namespaced => Api::namespaced_with(client.clone(), ns, &ar),
            _ => Api::all_with(client.clone(), &ar),
        };
        let back = api.get(name).await?;
        assert_eq!(
            back.data.get("status"),
            o.get("status"),
            "{kind} {name}: status kept as seeded"
        );
    }
    Ok(())
}

/// Seeded objects keep their uids, so deleting a seeded owner collects its
/// seeded dependents (the kube-system calico-node pods with their DaemonSet).
#[tokio::test]
async fn seeded_owners_collect_their_seeded_dependents() -> Result<()> {
    let objects = scenario::build(&ScenarioConfig::default())?;
    let seeded_uid = objects
        .iter()
        .find(|o| o["kind"] == "DaemonSet" && o["metadata"]["name"] == "calico-node")
        .and_then(|o| o["metadata"]["uid"].as_str())
        .context("the scenario seeds calico-node with a uid")?
        .to_string();
    let sb = Sandbox::new(SandboxOptions::default());
    sb.load(objects)?;
    let client = sb.client();
    let ds: Api<k8s_openapi::api::apps::v1::DaemonSet> =
        Api::namespaced(client.clone(), "kube-system");
    let live = ds.get("calico-node").await?;
    assert_eq!(live.metadata.uid.as_deref(), Some(seeded_uid.as_str()));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let selector = ListParams::default().labels("app.kubernetes.io/name=calico-node");
    assert!(!pods.list(&selector).await?.items.is_empty());
    ds.delete("calico-node", &DeleteParams::background())
        .await?;
    assert!(
        pods.list(&selector).await?.items.is_empty(),
        "calico-node pods outlived their DaemonSet"
    );
    Ok(())
}

#[tokio::test]
async fn discovery_tables_and_metadata() -> Result<()> {
    for t in targets().await? {
        let crds: Api<DynamicObject> = Api::all_with(
            t.client.clone(),
            &ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
                "customresourcedefinitions",
            ),
        );
        let def: DynamicObject = serde_json::from_value(crd(
            "crd.projectcalico.org",
            "felixconfigurations",
            "FelixConfiguration",
            "Cluster",
        ))?;
        crds.create(&PostParams::default(), &def).await?;
        let gvk = GroupVersionKind::gvk("crd.projectcalico.org", "v1", "FelixConfiguration");
        // Both discovery flavours kube offers see built-ins and the new CRD.
        for aggregated in [false, true] {
            let d = kube::Discovery::new(t.client.clone());
            let d = if aggregated {
                d.run_aggregated().await?
            } else {
                d.run().await?
            };
            let (ar, caps) = d.resolve_gvk(&gvk).with_context(|| {
                format!(
                    "{}: FelixConfiguration discovered (aggregated {aggregated})",
                    t.how
                )
            })?;
            assert_eq!(ar.plural, "felixconfigurations");
            assert_eq!(caps.scope, kube::discovery::Scope::Cluster);
            let (dep, caps) = d
                .resolve_gvk(&GroupVersionKind::gvk("apps", "v1", "Deployment"))
                .context("Deployment discovered")?;
            assert_eq!(dep.plural, "deployments");
            assert!(
                caps.subresources.iter().any(|(s, _)| s.plural == "scale"),
                "{}: scale subresource listed",
                t.how
            );
        }
        let (code, v) = raw(
            &t.client,
            "GET",
            "/apis/crd.projectcalico.org/v1",
            "application/json",
            vec![],
        )
        .await?;
        assert_eq!(
            (code, v["resources"][0]["kind"].as_str()),
            (200, Some("FelixConfiguration"))
        );

        // Table output as kubectl asks for it.
        let pods: Api<Pod> = Api::namespaced(t.client.clone(), "default");
        pods.create(&PostParams::default(), &pod("p1", "node-a", "web")?)
            .await?;
        let req = http::Request::builder()
            .uri("/api/v1/namespaces/default/pods")
            .header(
                "accept",
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            )
            .body(kube::client::Body::from(Vec::new()))?;
        let resp = t.client.send(req).await?;
        let bytes =
            axum::body::to_bytes(axum::body::Body::new(resp.into_body()), usize::MAX).await?;
        let table: Value = serde_json::from_slice(&bytes)?;
        assert_eq!(table["kind"], "Table", "{}", t.how);
        let cols: Vec<&str> = table["columnDefinitions"]
            .as_array()
            .map(|c| c.iter().filter_map(|c| c["name"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(cols, ["Name", "Ready", "Status", "Restarts", "Age"]);
        assert_eq!(table["rows"][0]["cells"][0], "p1");
        assert_eq!(
            table["rows"][0]["cells"][2], "Pending",
            "{}: a new pod is Pending",
            t.how
        );
        assert_eq!(
            table["rows"][0]["object"]["metadata"]["namespace"],
            "default"
        );

        // kube's metadata API.
        let meta = pods.list_metadata(&ListParams::default()).await?;
        assert_eq!(meta.items.len(), 1);
        assert_eq!(meta.items[0].metadata.name.as_deref(), Some("p1"));
    }
    Ok(())
}

#[tokio::test]
async fn extra_routes_come_before_the_generic_api() -> Result<()> {
    let sb = Sandbox::new(SandboxOptions::default());
    let (code, _) = raw(
        &sb.client(),
        "GET",
        "/api/v1/namespaces/default/pods/p/exec",
        "application/json",
        vec![],
    )
    .await?;
    assert_eq!(code, 404, "no exec until someone serves it");
    sb.add_routes(axum::Router::new().route(
        "/api/v1/namespaces/{ns}/pods/{name}/exec",
        axum::routing::get(|| async { axum::Json(json!({"exec": "served"})) }),
    ));
    let (code, body) = raw(
        &sb.client(),
        "GET",
        "/api/v1/namespaces/default/pods/p/exec",
        "application/json",
        vec![],
    )
    .await?;
    assert_eq!((code, body["exec"].as_str()), (200, Some("served")));
    let (code, _) = raw(
        &sb.client(),
        "GET",
        "/api/v1/namespaces/default/pods",
        "application/json",
        vec![],
    )
    .await?;
    assert_eq!(code, 200, "the generic API still answers");
    Ok(())
}

#[tokio::test]
async fn watches_that_allow_bookmarks_get_them() -> Result<()> {
    let sb = Sandbox::new(SandboxOptions {
        bookmark_interval: Duration::from_millis(100),
        ..Default::default()
    });
    let server = sb.serve("127.0.0.1:0").await?;
    for client in [sb.client(), server.client()?] {
        let cms: Api<ConfigMap> = Api::namespaced(client, "default");
        cms.create(
            &PostParams::default(),
            &cm(&format!("b{}", sb.store().resource_version()), json!({}))?,
        )
        .await?;
        let stream = cms
            .watch(
                &WatchParams {
                    bookmarks: true,
                    ..WatchParams::default()
                }
                .timeout(10),
                "0",
            )
            .await?;
        futures::pin_mut!(stream);
        let expected = sb.store().resource_version();
        loop {
            match tokio::time::timeout(Duration::from_secs(5), stream.try_next()).await?? {
                Some(WatchEvent::Added(_)) => {}
                Some(WatchEvent::Bookmark(b)) => {
                    let rv: u64 = b.metadata.resource_version.parse()?;
                    assert!(rv >= expected, "bookmark {rv} covers {expected}");
                    break;
                }
                other => bail!("unexpected {other:?}"),
            }
        }
    }
    Ok(())
}

/// Streaming lists (`sendInitialEvents=true`, what client-go 0.35 informers ask for):
/// every current object as ADDED, then a BOOKMARK annotated
/// `k8s.io/initial-events-end: "true"` before any later change; the options
/// upstream refuses together are refused with its 422.
#[tokio::test]
async fn watch_lists_end_their_initial_events_with_an_annotated_bookmark() -> Result<()> {
    for t in targets().await? {
        let cms: Api<ConfigMap> = Api::namespaced(t.client.clone(), "default");
        for n in ["a", "b"] {
            cms.create(&PostParams::default(), &cm(n, json!({}))?)
                .await?;
        }
        let at_start = t.sb.store().resource_version();
        let stream = cms
            .watch(&WatchParams::streaming_lists().timeout(10), "0")
            .await?;
        futures::pin_mut!(stream);
        let mut added = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(5), stream.try_next()).await?? {
                Some(WatchEvent::Added(o)) => added.push(o.metadata.name.unwrap_or_default()),
                Some(WatchEvent::Bookmark(b)) => {
                    assert_eq!(
                        b.metadata.annotations.get("k8s.io/initial-events-end"),
                        Some(&"true".to_string()),
                        "{}: {:?}",
                        t.how,
                        b.metadata.annotations
                    );
                    let rv: u64 = b.metadata.resource_version.parse()?;
                    assert!(rv >= at_start, "{}: {rv} covers {at_start}", t.how);
                    break;
                }
                other => bail!("{}: unexpected {other:?}", t.how),
            }
        }
        assert_eq!(added, ["a", "b"], "{}", t.how);
        cms.create(&PostParams::default(), &cm("c", json!({}))?)
            .await?;
        match tokio::time::timeout(Duration::from_secs(5), stream.try_next()).await?? {
            Some(WatchEvent::Added(o)) => assert_eq!(o.metadata.name.as_deref(), Some("c")),
            other => bail!("{}: unexpected {other:?}", t.how),
        }

        let (code, s) = raw(
            &t.client,
            "GET",
            "/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true",
            "application/json",
            vec![],
        )
        .await?;
        assert_eq!(code, 422, "{}: {s}", t.how);
        assert_eq!(
            s["message"],
            "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: \
             sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            "{}",
            t.how
        );
    }
    Ok(())
}

/// A sandbox serving Kubernetes 1.`minor`, nothing seeded.
fn at(minor: u32) -> Result<Sandbox> {
    Ok(Sandbox::new(SandboxOptions {
        kubernetes_version: KubernetesVersion::new(minor)?,
        ..SandboxOptions::default()
    }))
}

/// Every `group/version` the legacy `/apis` document lists.
async fn group_versions(client: &Client) -> Result<Vec<String>> {
    let (code, apis) = raw(client, "GET", "/apis", "application/json", vec![]).await?;
    anyhow::ensure!(code == 200, "GET /apis: {code} {apis}");
    Ok(apis["groups"]
        .as_array()
        .context("groups")?
        .iter()
        .flat_map(|g| g["versions"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v["groupVersion"].as_str().map(String::from))
        .collect())
}

#[tokio::test]
async fn version_and_discovery_follow_the_chosen_minor() -> Result<()> {
    let old = [
        "apiextensions.k8s.io/v1beta1",
        "rbac.authorization.k8s.io/v1beta1",
        "coordination.k8s.io/v1beta1",
    ];
    let until_1_24 = ["policy/v1beta1", "events.k8s.io/v1beta1"];
    for minor in [21, 22, 24, 25, 34] {
        let sb = at(minor)?;
        let server = sb.serve("127.0.0.1:0").await?;
        let client = server.client()?;
        let (_, v) = raw(&client, "GET", "/version", "application/json", vec![]).await?;
        assert_eq!(v["major"], json!("1"));
        assert_eq!(v["minor"], json!(minor.to_string()));
        assert_eq!(v["gitVersion"], json!(format!("v1.{minor}.0-sandbox")));
        assert_eq!(
            v["platform"],
            json!("linux/amd64"),
            "other fields kept: {v}"
        );
        assert_eq!(
            client.apiserver_version().await?.minor,
            minor.to_string(),
            "kube reads it"
        );

        let gvs = group_versions(&client).await?;
        for gv in [
            "policy/v1",
            "apiextensions.k8s.io/v1",
            "rbac.authorization.k8s.io/v1",
        ] {
            assert!(gvs.iter().any(|g| g == gv), "1.{minor}: {gv} in {gvs:?}");
        }
        for gv in old {
            assert_eq!(gvs.iter().any(|g| g == gv), minor <= 21, "1.{minor}: {gv}");
        }
        for gv in until_1_24 {
            assert_eq!(gvs.iter().any(|g| g == gv), minor <= 24, "1.{minor}: {gv}");
        }
        // The aggregated document (kubectl 1.32, kube's run_aggregated) says the same;
        // v1 is preferred where both are served.
        let d = kube::Discovery::new(client.clone())
            .run_aggregated()
            .await?;
        let policy = d.get("policy").context("policy group")?;
        let versions: Vec<&str> = policy.versions().collect();
        let want: &[&str] = if minor <= 24 {
            &["v1", "v1beta1"]
        } else {
            &["v1"]
        };
        assert_eq!(versions, want, "1.{minor}");
        assert_eq!(policy.preferred_version(), Some("v1"));
        let (code, group) = raw(&client, "GET", "/apis/policy", "application/json", vec![]).await?;
        assert_eq!(code, 200);
        assert_eq!(group["preferredVersion"]["version"], json!("v1"));

        // PodSecurityPolicy: cluster-scoped, short name psp, only while policy/v1beta1 is.
        let (code, list) = raw(
            &client,
            "GET",
            "/apis/policy/v1beta1",
            "application/json",
            vec![],
        )
        .await?;
        if minor <= 24 {
            assert_eq!(code, 200, "{list}");
            let psp = list["resources"]
                .as_array()
                .context("resources")?
                .iter()
                .find(|r| r["name"] == json!("podsecuritypolicies"))
                .context("podsecuritypolicies in policy/v1beta1")?;
            assert_eq!(psp["kind"], json!("PodSecurityPolicy"));
            assert_eq!(psp["namespaced"], json!(false));
            assert_eq!(psp["shortNames"], json!(["psp"]));
        } else {
            // An unserved group/version: the real server's 404 Status.
            assert_eq!(code, 404, "{list}");
            assert_eq!(list["kind"], json!("Status"));
            assert_eq!(list["reason"], json!("NotFound"));
            assert_eq!(
                list["message"],
                json!("the server could not find the requested resource")
            );
            let (code, _) = raw(
                &client,
                "GET",
                "/apis/policy/v1beta1/podsecuritypolicies",
                "application/json",
                vec![],
            )
            .await?;
            assert_eq!(code, 404);
        }
        let (code, _) = raw(
            &client,
            "GET",
            "/apis/apiextensions.k8s.io/v1beta1/customresourcedefinitions",
            "application/json",
            vec![],
        )
        .await?;
        assert_eq!(code, if minor <= 21 { 200 } else { 404 }, "1.{minor}");
        server.shutdown().await;
    }
    Ok(())
}

#[tokio::test]
async fn a_pdb_reads_at_both_policy_versions_with_its_selector_meaning_kept() -> Result<()> {
    let sb = at(24)?;
    let client = sb.client();
    let v1beta1 = "/apis/policy/v1beta1/namespaces/default/poddisruptionbudgets";
    let v1 = "/apis/policy/v1/namespaces/default/poddisruptionbudgets";
    // An empty selector in policy/v1beta1 selects no pods.
    let pdb = json!({"apiVersion": "policy/v1beta1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "none"}, "spec": {"minAvailable": 1, "selector": {}}});
    let (code, created) = raw(
        &client,
        "POST",
        v1beta1,
        "application/json",
        serde_json::to_vec(&pdb)?,
    )
    .await?;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["apiVersion"], json!("policy/v1beta1"));
    assert_eq!(created["spec"]["selector"], json!({}));
    let (_, at_v1) = raw(&client, "GET", &format!("{v1}/none"), "", vec![]).await?;
    assert_eq!(at_v1["apiVersion"], json!("policy/v1"));
    assert_eq!(
        at_v1["spec"]["selector"],
        json!({"matchExpressions": [{"key": "pdb.kubernetes.io/deprecated-v1beta1-empty-selector-match",
                                     "operator": "Exists"}]}),
        "the same object read at v1 still selects nothing"
    );
    assert_eq!(at_v1["metadata"]["uid"], created["metadata"]["uid"]);
    // Both versions list the one object, each with its own apiVersion.
    for (url, av) in [(v1, "policy/v1"), (v1beta1, "policy/v1beta1")] {
        let (_, list) = raw(&client, "GET", url, "", vec![]).await?;
        let items = list["items"].as_array().context("items")?;
        assert_eq!(items.len(), 1, "{list}");
        assert_eq!(items[0]["apiVersion"], json!(av));
    }
    // A body of one version sent to the other's URL is refused as upstream does.
    let mut other = pdb.clone();
    other["metadata"]["name"] = json!("other");
    let (code, status) = raw(
        &client,
        "POST",
        v1,
        "application/json",
        serde_json::to_vec(&other)?,
    )
    .await?;
    assert_eq!(code, 400, "{status}");
    assert_eq!(
        status["message"],
        json!(
            "the API version in the data (policy/v1beta1) does not match the expected API version (policy/v1)"
        )
    );

    // PodSecurityPolicy is served at 1.24 and gone at 1.25.
    let psp = json!({"apiVersion": "policy/v1beta1", "kind": "PodSecurityPolicy",
        "metadata": {"name": "calico-node"}, "spec": {"privileged": true}});
    let (code, made) = raw(
        &client,
        "POST",
        "/apis/policy/v1beta1/podsecuritypolicies",
        "application/json",
        serde_json::to_vec(&psp)?,
    )
    .await?;
    assert_eq!(code, 201, "{made}");
    assert!(made["metadata"].get("namespace").is_none());
    let newer = at(25)?;
    let (code, _) = raw(
        &newer.client(),
        "POST",
        "/apis/policy/v1beta1/podsecuritypolicies",
        "application/json",
        serde_json::to_vec(&psp)?,
    )
    .await?;
    assert_eq!(code, 404);
    // Seeded at 1.25, the PSP is kept as an upgrade from 1.24 leaves it in etcd: stored,
    // never served (its URL is still 404), and a GET of it by name is not found either.
    assert_eq!(newer.load(vec![psp]).map_err(|e| e.to_string()), Ok(1));
    let (code, _) = raw(
        &newer.client(),
        "GET",
        "/apis/policy/v1beta1/podsecuritypolicies/calico-node",
        "application/json",
        Vec::new(),
    )
    .await?;
    assert_eq!(code, 404);
    assert!(
        newer
            .store()
            .image()
            .objects
            .iter()
            .any(|o| o.resource == "podsecuritypolicies")
    );
    Ok(())
}

#[tokio::test]
async fn the_chart_crds_convert_between_apiextensions_versions() -> Result<()> {
    let Some(text) = support::real_chart_crds(
        "sandbox_api::the_chart_crds_convert_between_apiextensions_versions",
    )?
    else {
        return Ok(());
    };
    let crds = support::yaml_documents(&text)?;
    assert_eq!(crds.len(), 12);
    let sb = at(21)?;
    let server = sb.serve("127.0.0.1:0").await?;
    let client = server.client()?;
    let base = "/apis/apiextensions.k8s.io";
    for crd in &crds {
        assert_eq!(crd["apiVersion"], json!("apiextensions.k8s.io/v1beta1"));
        let name = crd["metadata"]["name"].as_str().context("name")?;
        let (code, created) = raw(
            &client,
            "POST",
            &format!("{base}/v1beta1/customresourcedefinitions"),
            "application/json",
            serde_json::to_vec(crd)?,
        )
        .await?;
        assert_eq!(code, 201, "{created}");
        let kind = crd["spec"]["names"]["kind"].as_str().context("kind")?;
        // Stored as v1: the defaults of a v1beta1 decode, version in versions[].
        let (_, v1) = raw(
            &client,
            "GET",
            &format!("{base}/v1/customresourcedefinitions/{name}"),
            "",
            vec![],
        )
        .await?;
        assert_eq!(v1["apiVersion"], json!("apiextensions.k8s.io/v1"));
        let spec = &v1["spec"];
        assert!(spec.get("version").is_none(), "{spec}");
        assert_eq!(
            spec["versions"],
            json!([{"name": "v1", "served": true, "storage": true}])
        );
        assert_eq!(spec["preserveUnknownFields"], json!(true));
        assert_eq!(spec["conversion"], json!({"strategy": "None"}));
        assert_eq!(spec["names"]["listKind"], json!(format!("{kind}List")));
        assert_eq!(v1["status"]["storedVersions"], json!(["v1"]));
        // Read back at v1beta1: what upstream's defaults make of the chart's document.
        let (_, old) = raw(
            &client,
            "GET",
            &format!("{base}/v1beta1/customresourcedefinitions/{name}"),
            "",
            vec![],
        )
        .await?;
        let mut want = crd["spec"].clone();
        want["version"] = json!("v1");
        want["names"]["listKind"] = json!(format!("{kind}List"));
        want["conversion"] = json!({"strategy": "None"});
        want["preserveUnknownFields"] = json!(true);
        assert_eq!(old["spec"], want, "{name}");
        assert_eq!(old["apiVersion"], json!("apiextensions.k8s.io/v1beta1"));
    }
    // Their custom resources are served at once.
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("crd.projectcalico.org", "v1", "FelixConfiguration"),
        "felixconfigurations",
    );
    let felix: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "crd.projectcalico.org/v1", "kind": "FelixConfiguration",
        "metadata": {"name": "default"}, "spec": {"logSeverityScreen": "Info"}}))?;
    felix.create(&PostParams::default(), &obj).await?;
    assert_eq!(felix.list(&ListParams::default()).await?.items.len(), 1);
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_scenario_loads_at_every_minor() -> Result<()> {
    let cfg = ScenarioConfig {
        nodes: 2,
        namespaces: 1,
        pods_per_namespace: 1,
        ..ScenarioConfig::default()
    };
    let objects = scenario::build(&cfg)?;
    for minor in KubernetesVersion::OLDEST..=KubernetesVersion::NEWEST {
        let sb = at(minor)?;
        assert_eq!(sb.load(objects.clone())?, objects.len(), "1.{minor}");
        // The chart's PDB, seeded at policy/v1, reads at policy/v1beta1 while it is served.
        let v1beta1 = Gvr::new("policy", "v1beta1", "poddisruptionbudgets");
        let got = sb.store().get(&v1beta1, "kube-system", "calico-typha");
        if minor <= 24 {
            let pdb = got?;
            assert_eq!(pdb["apiVersion"], json!("policy/v1beta1"));
        } else {
            assert_eq!(got.err().map(|e| e.code), Some(404), "1.{minor}");
        }
    }
    Ok(())
}

/// The request log counts what the server served while recording, by time window, with
/// each request's verb, resource and user agent; nothing before `start`.
#[tokio::test]
async fn the_request_log_counts_a_known_sequence() -> Result<()> {
    let sb = Sandbox::new(SandboxOptions::default());
    let server = sb.serve("127.0.0.1:0").await?;
    let client = server.client()?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.list(&ListParams::default()).await?;
    assert!(sb.requests().records().is_empty(), "recorded before start");
    let before = jiff::Timestamp::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    sb.requests().start(100);
    let from = jiff::Timestamp::now();
    cms.create(&PostParams::default(), &cm("counted", json!({"a": "1"}))?)
        .await?;
    cms.get("counted").await?;
    cms.list(&ListParams::default()).await?;
    cms.patch(
        "counted",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"a": "2"}})),
    )
    .await?;
    cms.delete("counted", &DeleteParams::default()).await?;
    let to = jiff::Timestamp::now();
    let verbs: Vec<(String, String)> = sb
        .requests()
        .records()
        .into_iter()
        .map(|r| (r.verb, r.resource))
        .collect();
    let want = ["create", "get", "list", "patch", "delete"]
        .map(|v| (v.to_string(), "configmaps".to_string()));
    assert_eq!(verbs, want);
    assert_eq!(sb.requests().count(from, to, |_| true)?, 5);
    assert_eq!(sb.requests().count(from, to, |r| r.verb == "list")?, 1);
    // The user agent as sent (kube's client here sends none; a raw request names one).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(server.local_addr()).await?;
        s.write_all(
            b"GET /version HTTP/1.1\r\nHost: sandbox\r\nUser-Agent: counted/1.0\r\nConnection: close\r\n\r\n",
        )
        .await?;
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).await?;
    }
    let last = sb
        .requests()
        .records()
        .pop()
        .context("no record of /version")?;
    assert_eq!(
        (
            last.verb.as_str(),
            last.resource.as_str(),
            last.user_agent.as_str()
        ),
        ("get", "/version", "counted/1.0")
    );
    // A window that starts before the recording is refused, not undercounted.
    let err = sb.requests().count(before, to, |_| true);
    assert!(err.is_err(), "{err:?}");
    // Beyond its capacity the ring drops the oldest, and says so for a window it no
    // longer covers.
    sb.requests().start(2);
    let from = jiff::Timestamp::now();
    for _ in 0..3 {
        cms.list(&ListParams::default()).await?;
    }
    let to = jiff::Timestamp::now();
    assert_eq!(sb.requests().records().len(), 2);
    let err = sb.requests().count(from, to, |_| true);
    assert!(
        err.as_ref()
            .is_err_and(|e| e.to_string().contains("dropped 1")),
        "{err:?}"
    );
    sb.requests().stop();
    cms.list(&ListParams::default()).await?;
    assert_eq!(sb.requests().records().len(), 2, "recorded after stop");
    Ok(())
}
