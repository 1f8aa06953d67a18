//! The HTTP face of the store: URL parsing, verbs, content negotiation (JSON,
//! Table, PartialObjectMetadata), watch streaming, error Status bodies and the
//! fault layer. Layout of paths as in k8s.io/apiserver pkg/endpoints/installer.go.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::discovery;
use super::error::ApiError;
use super::faults::FaultConfig;
use super::openapi;
use super::protobuf::{self, ProtoError};
use super::select::{FieldSelector, LabelSelector};
use super::store::apply::PatchKind;
use super::store::lifecycle::DeleteOptions;
use super::store::watch::parse_rv;
use super::store::{ListOptions, WriteOptions, meta_str};
use super::table;
use super::types::{Gvr, ResourceType, Subresource};
use crate::sandbox::Sandbox;
use crate::sandbox::faults;

/// The real server's request body limit (k8s.io/apiserver pkg/server/config.go: 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

pub(super) fn json_response(code: u16, v: &impl serde::Serialize) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    // A Value, or a struct of Values, always serialises.
    let body = serde_json::to_string(v).unwrap_or_default();
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A LIST's answer, its items borrowed from the store: serialised from the store's own
/// copies rather than copied into a body first (a list of every node, polled each
/// period, was a tenth of the sandbox's CPU in a 500-node takeover).
#[derive(serde::Serialize)]
struct List<T> {
    kind: String,
    #[serde(rename = "apiVersion")]
    api_version: String,
    metadata: Value,
    items: Vec<T>,
}

/// An item of a `PartialObjectMetadataList`, borrowing the stored object's metadata
/// (what [`table::partial`] copies). The real server's answer has the same shape:
/// k8s.io/apiserver pkg/endpoints/handlers/response.go `asPartialObjectMetadataList`
/// turns each listed object into its metadata with kind `PartialObjectMetadata` of the
/// asked meta.k8s.io version, and keeps the list's resourceVersion, continue and
/// remainingItemCount.
#[derive(serde::Serialize)]
struct Partial<'a> {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    metadata: &'a Value,
}

fn accept(headers: &HeaderMap) -> &str {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn aggregated_response(v: &Value) -> Response {
    let mut r = json_response(200, v);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(discovery::AGGREGATED),
    );
    r
}

/// An error as the real server answers it: a Status body, and on a 429 the Retry-After
/// of its throttling filters, "1" (kubernetes/kubernetes at e4b6dc5,
/// staging/src/k8s.io/apiserver/pkg/server/filters/maxinflight.go:37 `retryAfter`, set
/// by `tooManyRequests` there and in priority-and-fairness.go), which client-go reads
/// before it retries (rest/request.go `retryAfterSeconds`). The access-review paths
/// answer through it too.
pub(super) fn error_response(e: &ApiError) -> Response {
    let mut r = json_response(e.code, &e.to_status());
    if e.code == 429 {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

pub fn router(sb: Sandbox) -> Router {
    Router::new()
        .route(
            "/version",
            get(|State(sb): State<Sandbox>| async move {
                json_response(200, &discovery::version(sb.store().kubernetes_version()))
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route(
            "/api",
            get(|State(sb): State<Sandbox>, headers: HeaderMap| async move {
                if discovery::wants_aggregated(accept(&headers)) {
                    return aggregated_response(&discovery::aggregated(&sb.store().types(), true));
                }
                json_response(200, &discovery::core_versions())
            }),
        )
        .route(
            "/apis",
            get(|State(sb): State<Sandbox>, headers: HeaderMap| async move {
                if discovery::wants_aggregated(accept(&headers)) {
                    return aggregated_response(&discovery::aggregated(&sb.store().types(), false));
                }
                json_response(200, &discovery::group_list(&sb.store().types()))
            }),
        )
        .route(
            "/openapi/v2",
            get(|State(sb): State<Sandbox>, headers: HeaderMap| async move {
                let kv = sb.store().kubernetes_version();
                let accept = headers
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if accept.contains("protobuf") {
                    let mut r = openapi::v2_protobuf(kv).into_response();
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(
                            "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                        ),
                    );
                    return r;
                }
                json_response(200, &openapi::v2(kv))
            }),
        )
        .route(
            "/openapi/v3",
            get(|State(sb): State<Sandbox>| async move {
                json_response(200, &openapi::root(&sb.store().types()))
            }),
        )
        .route(
            "/openapi/v3/{*rest}",
            get(
                |State(sb): State<Sandbox>,
                 axum::extract::Path(rest): axum::extract::Path<String>| async move {
                    match openapi::group_version(&sb.store().types(), &rest) {
                        Some(doc) => json_response(200, &doc),
                        None => error_response(&ApiError::no_route()),
                    }
                },
            ),
        )
        .route(
            super::authz_http::ACCESS_REVIEWS,
            axum::routing::post(super::authz_http::access_review),
        )
        .route(
            super::authz_http::RULES_REVIEWS,
            axum::routing::post(super::authz_http::rules_review),
        )
        .fallback(dispatch)
        .with_state(sb)
}

/// What a resource URL addresses.
struct Target {
    gvr: Gvr,
    rt: ResourceType,
    ns: Option<String>,
    name: Option<String>,
    sub: Subresource,
}

enum Route {
    Group(String),
    Resources(String, String),
    Resource(Box<Target>),
}

fn route(sb: &Sandbox, path: &str) -> Result<Route, ApiError> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g] => return Ok(Route::Group(g.to_string())),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::no_route()),
    };
    if rest.is_empty() {
        return Ok(Route::Resources(group.into(), version.into()));
    }
    let store = sb.store();
    let namespaced = |r: &str| {
        store
            .resource_type(&Gvr::new(group, version, r))
            .is_some_and(|t| t.namespaced)
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, r, more @ ..] if namespaced(r) => (Some(ns.to_string()), {
            let mut v = vec![*r];
            v.extend_from_slice(more);
            v
        }),
        _ => (None, rest.to_vec()),
    };
    if rest.len() > 3 {
        return Err(ApiError::no_route());
    }
    let gvr = Gvr::new(group, version, rest[0]);
    let rt = store.resource_type(&gvr).ok_or_else(ApiError::no_route)?;
    let name = rest.get(1).map(|s| s.to_string());
    let sub = match Subresource::from_segment(rest.get(2).copied().unwrap_or_default()) {
        Some(Subresource::Main) => Subresource::Main,
        Some(Subresource::Status) if rt.status => Subresource::Status,
        Some(Subresource::Scale) if rt.scale.is_some() => Subresource::Scale,
        _ => return Err(ApiError::no_route()),
    };
    if rt.namespaced && ns.is_none() && name.is_some() {
        return Err(ApiError::no_route());
    }
    Ok(Route::Resource(Box::new(Target {
        gvr,
        rt,
        ns,
        name,
        sub,
    })))
}

async fn dispatch(State(sb): State<Sandbox>, req: Request) -> Response {
    match handle(sb, req).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

struct Params(HashMap<String, String>);

impl Params {
    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }
    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true") | Some("1"))
    }
    fn write_options(&self, headers: &HeaderMap, subresource: Subresource) -> WriteOptions {
        let manager = self.get("fieldManager").map(String::from).or_else(|| {
            // The real server names an unnamed writer after its user agent's first word.
            headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|ua| ua.split('/').next().unwrap_or(ua).to_string())
        });
        WriteOptions {
            field_manager: manager,
            force: self.flag("force"),
            dry_run: self.get("dryRun") == Some("All"),
            subresource,
        }
    }
    fn list_options(&self) -> Result<ListOptions, ApiError> {
        let limit = match self.get("limit") {
            None | Some("") => None,
            Some(l) => Some(l.parse::<usize>().map_err(|_| {
                ApiError::bad_request(format!(
                    "invalid limit \"{l}\": must be a non-negative integer"
                ))
            })?),
        };
        Ok(ListOptions {
            label_selector: LabelSelector::parse(self.get("labelSelector").unwrap_or_default())?,
            field_selector: FieldSelector::parse(self.get("fieldSelector").unwrap_or_default())?,
            limit,
            continue_token: self.get("continue").map(String::from),
        })
    }
}

/// How the client wants objects rendered.
#[derive(Clone, Copy, PartialEq)]
enum Render {
    Json,
    Table,
    Metadata,
}

fn render_of(headers: &HeaderMap) -> Render {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    // Accept lists alternatives in preference order; the first we can serve wins.
    for alt in accept.split(',') {
        if alt.contains("as=Table") {
            return Render::Table;
        }
        if alt.contains("as=PartialObjectMetadata") {
            return Render::Metadata;
        }
        if alt.contains("application/json") || alt.contains("*/*") {
            return Render::Json;
        }
    }
    Render::Json
}

async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::too_large(MAX_BODY))
}

fn decode_object(bytes: &[u8], ct: &str, kind: &str) -> Result<Value, ApiError> {
    let unrecognized = |e: String| {
        ApiError::bad_request(format!(
            "the object provided is unrecognized (must be of type {kind}): couldn't get version/kind; json parse error: {e}"
        ))
    };
    if ct.contains("protobuf") {
        // Decoded to the JSON the same request would carry (apiserver/protobuf.rs).
        let v = protobuf::decode(bytes).map_err(|e| match e {
            ProtoError::UnsupportedKind(got) => ApiError::unsupported_media(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml \
                 (got {ct} for kind {got:?}: the sandbox decodes protobuf bodies of {} only; send JSON or YAML, \
                 e.g. `kubectl create -f` or `kubectl apply`)",
                protobuf::OBJECT_KINDS.join(", ")
            )),
            e => ApiError::bad_request(format!(
                "the object provided is unrecognized (must be of type {kind}): {e}"
            )),
        })?;
        return Ok(v);
    }
    if ct.contains("cbor") {
        return Err(ApiError::unsupported_media(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, \
             {} (got {ct})",
            protobuf::MEDIA_TYPE
        )));
    }
    let v: Value = if ct.contains("yaml") {
        let text =
            std::str::from_utf8(bytes).map_err(|_| unrecognized("the body is not UTF-8".into()))?;
        serde_saphyr::from_str(text).map_err(|e| unrecognized(e.to_string()))?
    } else {
        serde_json::from_slice(bytes).map_err(|e| unrecognized(e.to_string()))?
    };
    if !v.is_object() {
        return Err(unrecognized("the body is not a JSON object".into()));
    }
    Ok(v)
}

fn faults_exempt(path: &str) -> bool {
    path.contains(&format!("/namespaces/{}/", faults::NAMESPACE))
        || path.ends_with(&format!("/namespaces/{}", faults::NAMESPACE))
}

async fn handle(sb: Sandbox, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let exempt = faults_exempt(&path);
    let fc = if exempt {
        FaultConfig::default()
    } else {
        sb.fault_config()
    };
    if fc.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(fc.latency_ms)).await;
    }
    let r = route(&sb, &path)?;
    let t = match r {
        Route::Group(g) => {
            return discovery::group(&sb.store().types(), &g)
                .map(|v| json_response(200, &v))
                .ok_or_else(ApiError::no_route);
        }
        Route::Resources(g, v) => {
            return discovery::resource_list(&sb.store().types(), &g, &v)
                .map(|v| json_response(200, &v))
                .ok_or_else(ApiError::no_route);
        }
        Route::Resource(t) => t,
    };
    if sb.dice().hit(fc.api_errors) {
        let (code, reason, msg) = sb.dice().pick(&[
            (429u16, "TooManyRequests", "the server has received too many requests and has asked us to try again later (injected fault)"),
            (500, "InternalError", "an error on the server (\"injected fault\") has prevented the request from succeeding"),
            (503, "ServiceUnavailable", "the server is currently unable to handle the request (injected fault)"),
        ]).unwrap_or((500, "InternalError", "injected fault"));
        return Err(ApiError::new(code, reason, msg));
    }
    let is_write = matches!(
        parts.method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if is_write && sb.dice().hit(fc.conflicts) {
        return Err(ApiError::stale(
            &t.rt,
            t.name.as_deref().unwrap_or_default(),
        ));
    }
    let params = Params(
        Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
            .map(|q| q.0)
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?,
    );
    let headers = &parts.headers;
    let render = render_of(headers);
    let store = sb.store();
    let ns = t.ns.as_deref().unwrap_or_default();
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let present = |v: Value| -> Value {
        match render {
            Render::Table => table::table(
                &t.rt,
                &[&v],
                params.get("includeObject").unwrap_or("Metadata"),
                json!({"resourceVersion": meta_str(&v, "resourceVersion")}),
            ),
            Render::Metadata => table::partial(&v),
            Render::Json => v,
        }
    };
    match (parts.method.clone(), t.name.as_deref()) {
        (Method::GET, None) if params.flag("watch") => {
            watch(&sb, &t, &params, render, fc.drop_watch).await
        }
        (Method::GET, None) => {
            let page = store.list_page_shared(&t.gvr, t.ns.as_deref(), &params.list_options()?)?;
            let mut meta = json!({"resourceVersion": page.resource_version.to_string()});
            if let Some(c) = &page.continue_token {
                meta["continue"] = json!(c);
            }
            if let Some(r) = page.remaining {
                meta["remainingItemCount"] = json!(r);
            }
            let items: Vec<&Value> = page.items.iter().map(|o| &**o).collect();
            Ok(match render {
                Render::Table => json_response(
                    200,
                    &table::table(
                        &t.rt,
                        &items,
                        params.get("includeObject").unwrap_or("Metadata"),
                        meta,
                    ),
                ),
                Render::Metadata => {
                    let empty = json!({});
                    let items = items
                        .iter()
                        .map(|o| Partial {
                            kind: "PartialObjectMetadata",
                            api_version: "meta.k8s.io/v1",
                            metadata: o.get("metadata").unwrap_or(&empty),
                        })
                        .collect();
                    json_response(
                        200,
                        &List {
                            kind: "PartialObjectMetadataList".into(),
                            api_version: "meta.k8s.io/v1".into(),
                            metadata: meta,
                            items,
                        },
                    )
                }
                Render::Json => json_response(
                    200,
                    &List {
                        kind: format!("{}List", t.rt.kind),
                        api_version: t.gvr.api_version(),
                        metadata: meta,
                        items,
                    },
                ),
            })
        }
        (Method::GET, Some(name)) if t.sub == Subresource::Scale => {
            Ok(json_response(200, &store.get_scale(&t.gvr, ns, name)?))
        }
        (Method::GET, Some(name)) => Ok(json_response(200, &present(store.get(&t.gvr, ns, name)?))),
        (Method::POST, None) => {
            let bytes = read_body(body).await?;
            let obj = decode_object(&bytes, &ct, &t.rt.kind)?;
            let created = store.create(&t.gvr, ns, obj, &params.write_options(headers, t.sub))?;
            Ok(json_response(201, &present(created)))
        }
        (Method::PUT, Some(name)) => {
            let bytes = read_body(body).await?;
            let kind = if t.sub == Subresource::Scale {
                "Scale"
            } else {
                t.rt.kind.as_str()
            };
            let obj = decode_object(&bytes, &ct, kind)?;
            let opts = params.write_options(headers, t.sub);
            if t.sub == Subresource::Scale {
                return Ok(json_response(
                    200,
                    &store.update_scale(&t.gvr, ns, name, &obj, &opts)?,
                ));
            }
            Ok(json_response(
                200,
                &present(store.update(&t.gvr, ns, name, obj, &opts)?),
            ))
        }
        (Method::PATCH, Some(name)) => {
            let kind = PatchKind::from_content_type(&ct).ok_or_else(|| {
                ApiError::unsupported_media(format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, \
                     application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {ct})"
                ))
            })?;
            let bytes = read_body(body).await?;
            let existed = store.get(&t.gvr, ns, name).is_ok();
            let out = store.patch(
                &t.gvr,
                ns,
                name,
                kind,
                &bytes,
                &params.write_options(headers, t.sub),
            )?;
            let code = if existed { 200 } else { 201 };
            if t.sub == Subresource::Scale {
                return Ok(json_response(code, &out));
            }
            Ok(json_response(code, &present(out)))
        }
        (Method::DELETE, name) => {
            let bytes = read_body(body).await?;
            let mut opts = DeleteOptions {
                propagation: params.get("propagationPolicy").map(String::from),
                dry_run: params.get("dryRun") == Some("All"),
                ..Default::default()
            };
            if !bytes.is_empty() {
                let decode_error =
                    |e: String| ApiError::bad_request(format!("error decoding DeleteOptions: {e}"));
                let b: Value = if ct.contains("protobuf") {
                    // client-go's typed Delete (helm's release storage) sends protobuf.
                    let b = protobuf::decode(&bytes).map_err(|e| decode_error(e.to_string()))?;
                    if b["kind"] != "DeleteOptions" {
                        return Err(decode_error(format!("got kind {}", b["kind"])));
                    }
                    b
                } else {
                    serde_json::from_slice(&bytes).map_err(|e| decode_error(e.to_string()))?
                };
                if let Some(p) = b.get("propagationPolicy").and_then(Value::as_str) {
                    opts.propagation = Some(p.into());
                }
                if b.get("orphanDependents") == Some(&json!(true)) && opts.propagation.is_none() {
                    opts.propagation = Some("Orphan".into());
                }
                opts.precondition_uid = b
                    .pointer("/preconditions/uid")
                    .and_then(Value::as_str)
                    .map(String::from);
                opts.precondition_resource_version = b
                    .pointer("/preconditions/resourceVersion")
                    .and_then(Value::as_str)
                    .map(String::from);
                if b.get("dryRun")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.contains(&json!("All")))
                {
                    opts.dry_run = true;
                }
            }
            let Some(name) = name else {
                let items = store.delete_collection(
                    &t.gvr,
                    t.ns.as_deref(),
                    &params.list_options()?,
                    &opts,
                )?;
                let body = json!({"kind": format!("{}List", t.rt.kind), "apiVersion": t.gvr.api_version(), "metadata": {}, "items": items});
                return Ok(json_response(200, &body));
            };
            let d = store.delete(&t.gvr, ns, name, &opts)?;
            if !d.deleted {
                return Ok(json_response(202, &d.object));
            }
            // Pods and custom resources answer with the object; other built-ins with a Status
            // (`ReturnDeletedObject` in k8s.io/kubernetes pkg/registry/*/storage).
            if t.rt.custom || (t.rt.group.is_empty() && t.rt.resource == "pods") {
                return Ok(json_response(200, &d.object));
            }
            Ok(json_response(
                200,
                &json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": name, "group": t.rt.group, "kind": t.rt.resource, "uid": meta_str(&d.object, "uid")}
                }),
            ))
        }
        (m, _) => Err(ApiError::method_not_allowed(m.as_str(), &t.rt)),
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

/// The annotation of the BOOKMARK that ends a watch-list's initial events
/// (k8s.io/apimachinery v0.34.10 pkg/apis/meta/v1/types.go `InitialEventsAnnotationKey`).
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// A watch's `sendInitialEvents` (streaming lists, KEP-3157: what client-go 0.35's
/// informers ask for first, helm 4's among them), checked with `resourceVersionMatch` as
/// k8s.io/apimachinery v0.34.10 pkg/apis/meta/internalversion/validation/validation.go
/// lines 53-76 check them, with the WatchList feature on.
fn send_initial_events(params: &Params) -> Result<Option<bool>, ApiError> {
    let send = match params.get("sendInitialEvents") {
        None => None,
        Some("true") | Some("1") => Some(true),
        Some("false") | Some("0") => Some(false),
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "invalid value for sendInitialEvents: {v:?}: must be true or false"
            )));
        }
    };
    let matched = params.get("resourceVersionMatch").unwrap_or_default();
    let mut causes = Vec::new();
    if send.is_some() && matched != "NotOlderThan" {
        causes.push((
            "resourceVersionMatch",
            "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"
                .to_string(),
        ));
    }
    if !matched.is_empty() {
        if send.is_none() {
            causes.push((
                "resourceVersionMatch",
                "Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided".into(),
            ));
        }
        if matched != "NotOlderThan" {
            causes.push((
                "resourceVersionMatch",
                format!("Unsupported value: \"{matched}\": supported values: \"NotOlderThan\""),
            ));
        }
    }
    if causes.is_empty() {
        Ok(send)
    } else {
        Err(ApiError::invalid("ListOptions.meta.k8s.io", "", &causes))
    }
}

/// Stream watch events as newline-delimited JSON until the timeout, the client
/// leaving, or an injected drop. With `sendInitialEvents=true` the current objects come
/// first as ADDED, then a BOOKMARK annotated `k8s.io/initial-events-end: "true"` (at the
/// resourceVersion they are the state of), then the changes.
async fn watch(
    sb: &Sandbox,
    t: &Target,
    params: &Params,
    render: Render,
    drop_rate: f64,
) -> Result<Response, ApiError> {
    let opts = params.list_options()?;
    let send_initial = send_initial_events(params)?;
    let rv = parse_rv(params.get("resourceVersion"))?;
    let rv = match send_initial {
        // The current state, which is at least as new as any resourceVersion given.
        Some(true) => None,
        // No initial events: from `rv`, or from now.
        Some(false) => Some(rv.unwrap_or_else(|| sb.store().resource_version())),
        None => rv,
    };
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    match sb.store().watch(
        &t.gvr,
        t.ns.as_deref(),
        rv,
        opts.label_selector,
        opts.field_selector,
    ) {
        Err(e) if e.code == 410 => {
            // Expired watches are reported in-stream, as the real server does.
            let _ = tx.send(event_line("ERROR", &e.to_status())).await;
        }
        Err(e) => return Err(e),
        Ok(mut w) => {
            let rt = t.rt.clone();
            let dice = sb.dice();
            let include = params
                .get("includeObject")
                .unwrap_or("Metadata")
                .to_string();
            let bookmarks = params.flag("allowWatchBookmarks");
            let every = sb.bookmark_interval().max(Duration::from_millis(10));
            let api_version = t.gvr.api_version();
            tokio::spawn(async move {
                let deadline = tokio::time::sleep(Duration::from_secs(timeout));
                tokio::pin!(deadline);
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                let mut end_of_initial_events = send_initial == Some(true);
                loop {
                    if end_of_initial_events && let Some(rv) = w.bookmark() {
                        // Every initial event is sent: the bookmark a watch-list client
                        // waits for before it treats its cache as synced.
                        end_of_initial_events = false;
                        let mark = json!({"kind": rt.kind, "apiVersion": api_version,
                            "metadata": {"resourceVersion": rv.to_string(), "creationTimestamp": null,
                                         "annotations": {INITIAL_EVENTS_END: "true"}}});
                        if tx.send(event_line("BOOKMARK", &mark)).await.is_err() {
                            break;
                        }
                    }
                    let ev = tokio::select! {
                        ev = w.next() => ev,
                        _ = tick.tick(), if bookmarks => {
                            if let Some(rv) = w.bookmark() {
                                let mark = json!({"kind": rt.kind, "apiVersion": api_version,
                                    "metadata": {"resourceVersion": rv.to_string(), "creationTimestamp": null}});
                                if tx.send(event_line("BOOKMARK", &mark)).await.is_err() {
                                    break;
                                }
                            }
                            continue;
                        }
                        _ = &mut deadline => None,
                        _ = tx.closed() => None,
                    };
                    let Some((kind, obj)) = ev else { break };
                    let obj = match render {
                        Render::Table => table::table(
                            &rt,
                            &[&obj],
                            &include,
                            json!({"resourceVersion": meta_str(&obj, "resourceVersion")}),
                        ),
                        Render::Metadata => table::partial(&obj),
                        Render::Json => obj,
                    };
                    if tx.send(event_line(kind.as_str(), &obj)).await.is_err()
                        || dice.hit(drop_rate)
                    {
                        break;
                    }
                }
            });
        }
    }
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(r)
}
