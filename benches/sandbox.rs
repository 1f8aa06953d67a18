//! Sandbox API server figures: LIST of 20,000 pods with pagination (in-process
//! and over HTTP), and watch fan-out. Run: `cargo bench --bench sandbox`.
//! Prints figures; asserts only that every object and event arrived.

use std::time::{Duration, Instant};

use calico_migrate::sandbox::{Gvr, ListOptions, Sandbox, SandboxOptions};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Client;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use serde_json::json;

const PODS: usize = 20_000;
const NAMESPACES: usize = 100;

fn pods() -> Vec<serde_json::Value> {
    let mut out: Vec<serde_json::Value> = (0..NAMESPACES)
        .map(|n| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("ns-{n:03}")}}))
        .collect();
    for i in 0..PODS {
        out.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("pod-{i:05}"), "namespace": format!("ns-{:03}", i % NAMESPACES),
                         "labels": {"app": format!("app-{}", i % 20), "tier": if i % 2 == 0 { "web" } else { "db" }}},
            "spec": {"nodeName": format!("node-{}", i % 50), "containers": [{"name": "main", "image": "nginx:1.27",
                     "ports": [{"containerPort": 80}], "env": [{"name": "A", "value": "1"}]}]},
            "status": {"phase": "Running", "podIP": format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }));
    }
    out
}

async fn list_all(
    client: &Client,
    limit: u32,
    labels: Option<&str>,
) -> anyhow::Result<(usize, usize)> {
    let api: Api<Pod> = Api::all(client.clone());
    let (mut n, mut pages) = (0, 0);
    let mut lp = ListParams::default().limit(limit);
    if let Some(l) = labels {
        lp = lp.labels(l);
    }
    loop {
        let page = api.list(&lp).await?;
        n += page.items.len();
        pages += 1;
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => break,
        }
    }
    Ok((n, pages))
}

fn report(what: &str, runs: &[Duration]) {
    let mut v = runs.to_vec();
    v.sort();
    let median = v[v.len() / 2];
    println!(
        "{what:<58} median {:>8.1} ms  (min {:.1}, max {:.1}, {} runs)",
        median.as_secs_f64() * 1e3,
        v[0].as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3,
        v.len()
    );
}

async fn bench_list(client: &Client, how: &str) -> anyhow::Result<()> {
    for (limit, labels) in [
        (500u32, None),
        (5000, None),
        (500, Some("app=app-3,tier=db")),
    ] {
        let mut runs = Vec::new();
        let mut expected = None;
        for _ in 0..5 {
            let t = Instant::now();
            let (n, pages) = list_all(client, limit, labels).await?;
            runs.push(t.elapsed());
            expected.get_or_insert((n, pages));
        }
        let (n, pages) = expected.unwrap_or_default();
        if labels.is_none() {
            assert_eq!(n, PODS, "every pod listed");
        }
        report(
            &format!(
                "{how}: LIST {n} pods, limit {limit}{} ({pages} pages)",
                labels.map(|l| format!(", {l}")).unwrap_or_default()
            ),
            &runs,
        );
    }
    Ok(())
}

async fn bench_fanout(
    sb: &Sandbox,
    client: &Client,
    how: &str,
    watchers: usize,
    events: usize,
) -> anyhow::Result<()> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let rv = sb.store().resource_version().to_string();
    let mut handles = Vec::new();
    for _ in 0..watchers {
        let stream = cms.watch(&WatchParams::default().timeout(120), &rv).await?;
        handles.push(tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut seen = 0;
            while seen < events {
                match stream.next().await {
                    Some(Ok(WatchEvent::Added(_) | WatchEvent::Modified(_))) => seen += 1,
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
            (seen, Instant::now())
        }));
    }
    let t = Instant::now();
    let store = sb.store().clone();
    let gvr = Gvr::new("", "v1", "configmaps");
    store.create(
        &gvr,
        "default",
        json!({"metadata": {"name": "fan"}, "data": {"n": "0"}}),
        &Default::default(),
    )?;
    for i in 1..events {
        store.patch(
            &gvr,
            "default",
            "fan",
            calico_migrate::sandbox::PatchKind::Merge,
            json!({"data": {"n": i.to_string()}}).to_string().as_bytes(),
            &Default::default(),
        )?;
    }
    let writes = t.elapsed();
    let mut last = t;
    for h in handles {
        let (seen, at) = h.await?;
        assert_eq!(seen, events, "every watcher saw every event");
        last = last.max(at);
    }
    let total = last - t;
    let delivered = watchers * events;
    println!(
        "{how}: watch fan-out {watchers} watchers x {events} events: writes {:.1} ms, all delivered in {:.1} ms ({:.0} events/s)",
        writes.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3,
        delivered as f64 / total.as_secs_f64()
    );
    store.delete(&gvr, "default", "fan", &Default::default())?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let sb = Sandbox::new(SandboxOptions::default());
        let t = Instant::now();
        let n = sb.load(pods())?;
        println!(
            "load {n} objects ({PODS} pods in {NAMESPACES} namespaces): {:.1} ms",
            t.elapsed().as_secs_f64() * 1e3
        );

        let t = Instant::now();
        let page = sb
            .store()
            .list(&Gvr::new("", "v1", "pods"), None, &ListOptions::default())?;
        println!(
            "store: LIST {} pods, no limit, no HTTP: {:.1} ms",
            page.items.len(),
            t.elapsed().as_secs_f64() * 1e3
        );

        bench_list(&sb.client(), "in-process kube client").await?;
        let server = sb.serve("127.0.0.1:0").await?;
        let http = server.client()?;
        bench_list(&http, "HTTP kube client").await?;

        for (w, e) in [(10, 1000), (100, 1000)] {
            bench_fanout(&sb, &sb.client(), "in-process", w, e).await?;
        }
        bench_fanout(&sb, &http, "HTTP", 100, 1000).await?;
        server.shutdown().await;
        Ok(())
    })
}
