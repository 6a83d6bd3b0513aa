//! The HTTP front: path routing like the apiserver's, the verbs, watch streaming, and the request log.

use std::{collections::BTreeMap, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use bytes::{BufMut, Bytes, BytesMut};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::{
    actor::Actor,
    api::patch::PatchType,
    api::{DeleteOptions, Deleted},
    api::{scale, table},
    api_error::{ApiError, FieldError},
    faults::Decision,
    pods::LogOptions,
    resources::{self, PODS, ResourceDef},
    selectors::{FieldSelector, LabelSelector},
    state::SimState,
    store::{EventType, Filter, WatchRecord, WatchStart},
};

/// Watch timeout when the client sends none (the apiserver picks 30–60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// The simulator's router.
pub fn router(state: Arc<SimState>) -> Router {
    Router::new().fallback(handle).with_state(state)
}

async fn handle(
    State(state): State<Arc<SimState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if uri.path().starts_with("/_sim/") {
        return crate::admin::handle(&state, &method, uri.path(), &body);
    }
    let client = client_key(&headers);
    state.faults.wait_while_partitioned(&client).await;
    let response = match state.faults.decide(uri.path()) {
        Decision::Respond(delay, response) => {
            tokio::time::sleep(delay).await;
            response
        }
        Decision::Serve(delay) => {
            tokio::time::sleep(delay).await;
            match dispatch(&state, &method, &uri, &headers, body, &client) {
                Ok(response) => response,
                Err(error) => error.into_response(),
            }
        }
    };
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    state.log_request(&method, &uri, response.status().as_u16(), &client, content_type);
    response
}

/// Whether a client with this `Accept` takes JSON, the one encoding kube-sim writes. A client that asks
/// for protobuf only (an OpenAPI v2 client asks for its protobuf form first) gets the 406 the apiserver
/// gives for a type it has no protobuf for, and client-go asks again for JSON.
fn answers_in_json(accept: &str) -> bool {
    accept.trim().is_empty()
        || accept.split(',').any(|range| {
            let media = range.split(';').next().unwrap_or_default().trim();
            matches!(media, "application/json" | "application/*" | "*/*" | "")
        })
}

/// Who is asking: the bearer token, else the User-Agent.
fn client_key(headers: &HeaderMap) -> String {
    let header = |name| headers.get(name).and_then(|v: &axum::http::HeaderValue| v.to_str().ok());
    header(header::AUTHORIZATION)
        .and_then(|a| a.strip_prefix("Bearer "))
        .or_else(|| header(header::USER_AGENT))
        .unwrap_or("anonymous")
        .to_owned()
}

/// The RBAC verb of a request.
fn verb(method: &Method, has_name: bool, watch: bool) -> &'static str {
    match (method.as_str(), has_name) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

/// What a path addresses.
#[derive(Debug, PartialEq)]
enum Route {
    Version,
    OpenApiIndex,
    OpenApiDocument(String),
    OpenApiV2,
    CoreVersions,
    GroupList,
    ResourceList(String, String),
    Resource {
        def: &'static ResourceDef,
        namespace: Option<String>,
        name: Option<String>,
        subresource: Option<String>,
    },
}

fn route(path: &str) -> Option<Route> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["version"] => Some(Route::Version),
        ["openapi", "v3"] => Some(Route::OpenApiIndex),
        ["openapi", "v2"] => Some(Route::OpenApiV2),
        ["openapi", "v3", rest @ ..] => Some(Route::OpenApiDocument(rest.join("/"))),
        ["api"] => Some(Route::CoreVersions),
        ["apis"] => Some(Route::GroupList),
        ["api", version] => Some(Route::ResourceList(String::new(), (*version).to_owned())),
        ["apis", group, version] => Some(Route::ResourceList((*group).to_owned(), (*version).to_owned())),
        ["api", version, rest @ ..] => resource_route("", version, rest),
        ["apis", group, version, rest @ ..] => resource_route(group, version, rest),
        _ => None,
    }
}

fn resource_route(group: &str, version: &str, rest: &[&str]) -> Option<Route> {
    let owned = |s: &&str| (*s).to_owned();
    if let ["namespaces", namespace, plural, tail @ ..] = rest
        && let Some(def) = resources::lookup(group, version, plural).filter(|d| d.namespaced)
        && tail.len() <= 2
    {
        return Some(Route::Resource {
            def,
            namespace: Some((*namespace).to_owned()),
            name: tail.first().map(owned),
            subresource: tail.get(1).map(owned),
        });
    }
    let [plural, tail @ ..] = rest else { return None };
    let def = resources::lookup(group, version, plural)?;
    if def.namespaced {
        // All-namespaces collection only: `/api/v1/pods`.
        return tail.is_empty().then_some(Route::Resource {
            def,
            namespace: None,
            name: None,
            subresource: None,
        });
    }
    (tail.len() <= 2).then(|| Route::Resource {
        def,
        namespace: None,
        name: tail.first().map(owned),
        subresource: tail.get(1).map(owned),
    })
}

fn query_map(uri: &Uri) -> BTreeMap<String, String> {
    form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect()
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn bytes_response(status: StatusCode, body: Bytes) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn dispatch(
    state: &Arc<SimState>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
    client: &str,
) -> Result<Response, ApiError> {
    let query = query_map(uri);
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let user = state.rbac.authenticate(authorization)?;
    let route = route(uri.path()).ok_or_else(ApiError::no_route)?;
    if let (Some(user), Route::Resource { def, namespace, name, subresource }) = (&user, &route) {
        let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
        let attributes = crate::rbac::Attributes {
            verb: verb(method, name.is_some(), watch),
            def,
            subresource: subresource.clone(),
            namespace: namespace.clone(),
            name: name.clone(),
        };
        state.rbac.authorize(&state.store, user, &attributes)?;
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if matches!(route, Route::OpenApiV2) && super::openapi::wants_v2_protobuf(accept) {
        // What kubectl asks for, and all it takes.
        let body = super::openapi::document_v2_protobuf(state.config.kubernetes_minor);
        return Ok(
            (StatusCode::OK, [(header::CONTENT_TYPE, super::openapi::V2_PROTOBUF)], body).into_response()
        );
    }
    if !answers_in_json(accept) {
        return Err(ApiError::not_acceptable());
    }
    let wants_table = accept.split(',').next().is_some_and(|first| first.contains("as=Table"));
    match route {
        Route::OpenApiIndex => Ok(json_response(StatusCode::OK, &super::openapi::index())),
        Route::OpenApiV2 => {
            Ok(json_response(StatusCode::OK, &super::openapi::document_v2(state.config.kubernetes_minor)))
        }
        Route::OpenApiDocument(path) => super::openapi::document(&path, state.config.kubernetes_minor)
            .map(|doc| json_response(StatusCode::OK, &doc))
            .ok_or_else(ApiError::no_route),
        Route::Version => {
            Ok(json_response(StatusCode::OK, &resources::version_info(state.config.kubernetes_minor)))
        }
        Route::CoreVersions => {
            let address = state.server_address.lock().unwrap_or_else(|p| p.into_inner()).clone();
            Ok(json_response(StatusCode::OK, &resources::core_versions(&address)))
        }
        Route::GroupList => Ok(json_response(StatusCode::OK, &resources::group_list())),
        Route::ResourceList(group, version) => resources::resource_list(&group, &version)
            .map(|doc| json_response(StatusCode::OK, &doc))
            .ok_or_else(ApiError::no_route),
        Route::Resource { def, namespace, name, subresource } => {
            if let Some(sub) = &subresource
                && (!def.subresources.contains(&sub.as_str())
                    || (sub == "resize"
                        && state.config.kubernetes_minor < crate::resize::FIRST_MINOR_WITH_RESIZE))
            {
                return Err(ApiError::no_route());
            }
            if let Some(ns) = &namespace
                && !kubesent_proto::is_dns_label(ns)
            {
                return Err(ApiError::invalid(
                    &resources::NAMESPACES,
                    ns,
                    &[FieldError::invalid(
                        "metadata.name",
                        ns,
                        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
                    )],
                ));
            }
            let ns = namespace.clone().unwrap_or_default();
            let user_agent =
                headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default();
            let actor =
                Actor::of_request(user.as_ref(), query.get("fieldManager").map(String::as_str), user_agent);
            let ctx = Ctx { state, def, namespace, query: &query, headers, wants_table, client, actor };
            match (method.clone(), name, subresource.as_deref()) {
                (Method::GET, None, None) => {
                    if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
                        ctx.watch()
                    } else {
                        ctx.list()
                    }
                }
                (Method::POST, None, None) => ctx.create(&ns, &body),
                (Method::POST, Some(name), Some("eviction")) => ctx.evict(&ns, &name, &body),
                (Method::DELETE, None, None) => ctx.delete_collection(&ns),
                (Method::GET, Some(name), Some("log")) => ctx.logs(&ns, &name),
                (Method::GET, Some(name), Some("scale")) => {
                    let object = state.store.get(def, &ns, &name)?;
                    Ok(json_response(StatusCode::OK, &scale::of(&object.value())))
                }
                (Method::PUT | Method::PATCH, Some(name), Some("scale")) => {
                    ctx.scale(&ns, &name, method == Method::PUT, &body)
                }
                (Method::GET, Some(name), _) => {
                    let object = state.store.get(def, &ns, &name)?;
                    if wants_table {
                        return Ok(json_response(
                            StatusCode::OK,
                            &table::table(def, &[object], state.store.current_revision(), None),
                        ));
                    }
                    Ok(bytes_response(StatusCode::OK, object.json.clone()))
                }
                (Method::PUT, Some(name), sub) => ctx.replace(&ns, &name, sub, &body),
                (Method::PATCH, Some(name), sub) => ctx.patch(&ns, &name, sub, &body),
                (Method::DELETE, Some(name), None) => ctx.delete(&ns, &name, &body),
                (method, _, _) => Err(ApiError::method_not_supported(def, method.as_str())),
            }
        }
    }
}

/// `response` with a `Warning: 299 - "<text>"` header per warning, as the apiserver sends them.
fn with_warnings(mut response: Response, warnings: &[String]) -> Response {
    for warning in warnings {
        let text = format!("299 - \"{}\"", warning.replace('"', "\\\""));
        if let Ok(value) = axum::http::HeaderValue::from_str(&text) {
            response.headers_mut().append("Warning", value);
        }
    }
    response
}

struct Ctx<'a> {
    state: &'a Arc<SimState>,
    def: &'static ResourceDef,
    namespace: Option<String>,
    query: &'a BTreeMap<String, String>,
    headers: &'a HeaderMap,
    wants_table: bool,
    client: &'a str,
    /// Who writes (the user and the field manager).
    actor: Actor,
}

fn parse_body(def: &ResourceDef, body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the object provided is unrecognized (must be of type {}): couldn't get version/kind; json parse error: {e}",
            def.kind
        ))
    })
}

impl Ctx<'_> {
    fn filter(&self) -> Result<Filter, ApiError> {
        Ok(Filter {
            namespace: self.namespace.clone(),
            labels: LabelSelector::parse(self.query.get("labelSelector").map_or("", String::as_str))?,
            fields: FieldSelector::parse(
                self.query.get("fieldSelector").map_or("", String::as_str),
                self.def,
            )?,
        })
    }

    fn list(&self) -> Result<Response, ApiError> {
        let filter = self.filter()?;
        let limit = match self.query.get("limit") {
            Some(l) => {
                Some(l.parse::<usize>().map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?)
            }
            None => None,
        };
        let page = self.state.store.list(
            self.def,
            &filter,
            limit,
            self.query.get("continue").map(String::as_str),
        )?;
        if self.wants_table {
            return Ok(json_response(
                StatusCode::OK,
                &table::table(self.def, &page.items, page.resource_version, page.continue_token.as_deref()),
            ));
        }
        let mut metadata = json!({"resourceVersion": page.resource_version.to_string()});
        if let Some(token) = &page.continue_token {
            metadata["continue"] = json!(token);
        }
        if let Some(remaining) = page.remaining {
            metadata["remainingItemCount"] = json!(remaining);
        }
        let mut out =
            BytesMut::with_capacity(64 + page.items.iter().map(|o| o.json.len() + 1).sum::<usize>());
        out.put_slice(
            format!(
                "{{\"kind\":\"{}\",\"apiVersion\":\"{}\",\"metadata\":{metadata},\"items\":[",
                self.def.list_kind(),
                self.def.api_version()
            )
            .as_bytes(),
        );
        for (i, item) in page.items.iter().enumerate() {
            if i > 0 {
                out.put_u8(b',');
            }
            out.put_slice(&item.json);
        }
        out.put_slice(b"]}");
        Ok(bytes_response(StatusCode::OK, out.freeze()))
    }

    fn watch(&self) -> Result<Response, ApiError> {
        let filter = self.filter()?;
        let flag = |key: &str| self.query.get(key).is_some_and(|v| v == "true" || v == "1");
        let bookmarks = flag("allowWatchBookmarks");
        let send_initial = flag("sendInitialEvents");
        let rv = self.query.get("resourceVersion").filter(|v| !v.is_empty());
        if send_initial && self.query.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan")
        {
            return Err(ApiError::invalid(
                self.def,
                "",
                &[FieldError::forbidden(
                    "resourceVersionMatch",
                    "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                )],
            ));
        }
        let start = match rv {
            _ if send_initial => WatchStart::InitialEvents,
            None => WatchStart::InitialEvents,
            Some(v) if v == "0" => WatchStart::InitialEvents,
            Some(v) => WatchStart::After(
                v.parse::<u64>()
                    .map_err(|_| ApiError::bad_request(format!("invalid resource version: {v}")))?,
            ),
        };
        let timeout = match self.query.get("timeoutSeconds") {
            Some(t) => Duration::from_secs(
                t.parse::<u64>()
                    .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
            ),
            None => DEFAULT_WATCH_TIMEOUT,
        };
        let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(256);
        match self.state.store.watch(self.def, &filter, start) {
            Ok(subscription) => {
                let task = WatchTask {
                    def: self.def,
                    table: self.wants_table,
                    filter,
                    bookmarks,
                    initial_events_end: send_initial && bookmarks,
                    timeout,
                    bookmark_interval: self.state.bookmark_interval,
                    shutdown: self.state.shutdown.clone(),
                    dropped: self.state.faults.watch_token(self.client),
                    tx,
                };
                tokio::spawn(task.run(subscription.initial, subscription.live, subscription.start_revision));
            }
            Err(error) => {
                // An expired resourceVersion is an in-stream ERROR event on a 200, as the watch cache sends it.
                let line = watch_line("ERROR", &serde_json::to_vec(&error.to_status()).unwrap_or_default());
                let _ = tx.try_send(Ok(line));
            }
        }
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response())
    }

    /// The `fieldValidation` warnings for `value` (a refusal under `Strict`).
    fn field_warnings(&self, value: &Value) -> Result<Vec<String>, ApiError> {
        if self.state.config.kubernetes_minor < super::openapi::FIELD_VALIDATION_SINCE_MINOR {
            return Ok(Vec::new());
        }
        let mode = super::FieldValidation::parse(self.query.get("fieldValidation").map(String::as_str))?;
        super::field_validation(self.def, value, mode)
    }

    /// The request body as JSON: JSON, YAML or the Kubernetes protobuf encoding (what kubectl's typed
    /// clients send), decoded as the apiserver decodes each; any other media type is refused with the 415
    /// an apiserver gives a body it has no decoder for.
    fn body_value(&self, body: &[u8]) -> Result<Value, ApiError> {
        let content_type =
            self.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let media = content_type.split(';').next().unwrap_or_default().trim();
        match media {
            "" | "application/json" | "*/*" => parse_body(self.def, body),
            "application/yaml" => serde_saphyr::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!(
                    "the object provided is unrecognized (must be of type {}): yaml: {e}",
                    self.def.kind
                ))
            }),
            super::protobuf::MEDIA_TYPE => super::protobuf::decode(self.def, body)
                .map_err(|e| ApiError::bad_request(format!("error decoding protobuf body: {e}"))),
            _ => Err(ApiError::undecodable_body(content_type)),
        }
    }

    fn create(&self, ns: &str, body: &[u8]) -> Result<Response, ApiError> {
        let value = self.body_value(body)?;
        let warnings = self.field_warnings(&value)?;
        let dry_run = self.query.get("dryRun").is_some_and(|d| d == "All");
        let created = self.state.create(self.def, ns, value, dry_run, &self.actor)?;
        Ok(with_warnings(json_response(StatusCode::CREATED, &created), &warnings))
    }

    fn replace(
        &self,
        ns: &str,
        name: &str,
        subresource: Option<&str>,
        body: &[u8],
    ) -> Result<Response, ApiError> {
        if subresource == Some("resize") {
            return Err(ApiError::method_not_supported(self.def, "update"));
        }
        let new = self.body_value(body)?;
        let warnings = self.field_warnings(&new)?;
        let (stored, created) = self.state.replace(self.def, ns, name, subresource, new, &self.actor)?;
        let status = if created { StatusCode::CREATED } else { StatusCode::OK };
        Ok(with_warnings(bytes_response(status, stored.json.clone()), &warnings))
    }

    /// A write of the `scale` subresource (`kubectl scale`): the autoscaling/v1 Scale is patched or
    /// replaced, and its `spec.replicas` becomes the object's (guarded by a resourceVersion it names).
    fn scale(&self, ns: &str, name: &str, replace: bool, body: &[u8]) -> Result<Response, ApiError> {
        let current = scale::of(&self.state.store.get(self.def, ns, name)?.value());
        let given: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding the Scale: {e}")))?;
        let wanted = if replace {
            given
        } else {
            let content_type =
                self.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
            let kind = PatchType::from_content_type(content_type)
                .ok_or_else(|| ApiError::unsupported_media_type(content_type))?;
            crate::api::patch::apply(kind, &current, &given)?
        };
        let replicas = wanted.pointer("/spec/replicas").and_then(Value::as_i64).ok_or_else(|| {
            ApiError::invalid(self.def, name, &[FieldError::required("spec.replicas", "Required value")])
        })?;
        if replicas < 0 {
            return Err(ApiError::invalid(
                self.def,
                name,
                &[FieldError::invalid(
                    "spec.replicas",
                    &replicas.to_string(),
                    "must be greater than or equal to 0",
                )],
            ));
        }
        let mut change = json!({"spec": {"replicas": replicas}});
        if let Some(rv) = wanted
            .pointer("/metadata/resourceVersion")
            .filter(|rv| rv.as_str().is_some_and(|s| !s.is_empty()))
        {
            change["metadata"] = json!({"resourceVersion": rv});
        }
        let stored =
            self.state.patch(self.def, ns, name, None, PatchType::Merge, &change, false, &self.actor)?;
        Ok(json_response(StatusCode::OK, &scale::of(&stored.value())))
    }

    fn patch(
        &self,
        ns: &str,
        name: &str,
        subresource: Option<&str>,
        body: &[u8],
    ) -> Result<Response, ApiError> {
        let content_type =
            self.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let kind = PatchType::from_content_type(content_type)
            .ok_or_else(|| ApiError::unsupported_media_type(content_type))?;
        let patch_body: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
        let force = self.patch_options(kind)?;
        let exists = kind != PatchType::Apply || self.state.store.get(self.def, ns, name).is_ok();
        // Validated as the object the patch makes (an apply that creates the object: as applied).
        let warnings = match self.query.get("fieldValidation").map(String::as_str) {
            None | Some("" | "Ignore") => Vec::new(),
            _ if !exists => self.field_warnings(&patch_body)?,
            _ => {
                let current = self.state.store.get(self.def, ns, name)?.value();
                self.field_warnings(&super::patch::apply(kind, &current, &patch_body)?)?
            }
        };
        let stored =
            self.state.patch(self.def, ns, name, subresource, kind, &patch_body, force, &self.actor)?;
        let status = if exists { StatusCode::OK } else { StatusCode::CREATED };
        Ok(with_warnings(bytes_response(status, stored.json.clone()), &warnings))
    }

    /// The PatchOptions checks of the apiserver: an apply names its field manager, and only an apply
    /// may be forced. Returns whether it is forced.
    fn patch_options(&self, kind: PatchType) -> Result<bool, ApiError> {
        let force = self.query.get("force");
        // Refused as `PatchOptions.meta.k8s.io "" is invalid: …`.
        const PATCH_OPTIONS: ResourceDef = ResourceDef {
            group: "meta.k8s.io",
            version: "v1",
            plural: "patchoptions",
            singular: "patchoptions",
            kind: "PatchOptions",
            namespaced: false,
            short_names: &[],
            subresources: &[],
            unconditional_update: false,
            create_on_update: false,
            field_labels: &[],
        };
        let fail = |cause: FieldError| ApiError::invalid(&PATCH_OPTIONS, "", &[cause]);
        if kind == PatchType::Apply {
            if self.query.get("fieldManager").is_none_or(String::is_empty) {
                return Err(fail(FieldError::required("fieldManager", "is required for apply patch")));
            }
        } else if force.is_some() {
            return Err(fail(FieldError::forbidden("force", "may not be specified for non-apply patch")));
        }
        Ok(force.is_some_and(|f| f == "true" || f == "1"))
    }

    /// `POST pods/<name>/eviction`: 201 with a Success Status, as the apiserver answers an allowed eviction.
    fn evict(&self, ns: &str, name: &str, body: &[u8]) -> Result<Response, ApiError> {
        let content_type =
            self.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let eviction: Value = if content_type.starts_with(super::protobuf::MEDIA_TYPE) {
            super::protobuf::decode_eviction(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding protobuf body: {e}")))?
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding Eviction: {e}")))?
        };
        if let Some(given) = eviction.pointer("/metadata/name").and_then(Value::as_str)
            && given != name
        {
            return Err(ApiError::bad_request("name in URL does not match name in Eviction object"));
        }
        let options = match eviction.get("deleteOptions") {
            Some(options) if !options.is_null() => DeleteOptions::from_value(options)?,
            _ => DeleteOptions::default(),
        };
        self.state.evict(ns, name, &options, &self.actor)?;
        Ok(json_response(
            StatusCode::CREATED,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        ))
    }

    fn delete(&self, ns: &str, name: &str, body: &[u8]) -> Result<Response, ApiError> {
        let mut options = DeleteOptions::parse(body)?;
        if self.query.get("propagationPolicy").is_some_and(|p| p == "Orphan") {
            options.orphan = true;
        }
        if options.grace_period_seconds.is_none()
            && let Some(q) = self.query.get("gracePeriodSeconds")
        {
            options.grace_period_seconds =
                Some(q.parse().map_err(|_| ApiError::bad_request("gracePeriodSeconds must be an integer"))?);
        }
        match self.state.delete(self.def, ns, name, &options, &self.actor)? {
            // Pods return the object (ReturnDeletedObject), never a Status.
            Deleted::Pod(stored) => Ok(bytes_response(StatusCode::OK, stored.json.clone())),
            Deleted::Other(stored) => {
                let mut details = self.def.error_details(name);
                details["uid"] = json!(stored.uid);
                Ok(json_response(
                    StatusCode::OK,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
                ))
            }
        }
    }

    fn delete_collection(&self, ns: &str) -> Result<Response, ApiError> {
        let filter = self.filter()?;
        let page = self.state.store.list(self.def, &filter, None, None)?;
        for object in &page.items {
            match self.state.delete(
                self.def,
                &object.namespace,
                &object.name,
                &DeleteOptions::default(),
                &self.actor,
            ) {
                Ok(_) => {}
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let _ = ns;
        Ok(json_response(
            StatusCode::OK,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
        ))
    }

    fn logs(&self, ns: &str, name: &str) -> Result<Response, ApiError> {
        let pod: Pod = self.state.store.get(&PODS, ns, name)?.typed()?;
        let options = LogOptions::parse(self.query, name)?;
        let text = self.state.kubelet.logs(&pod, &options)?;
        Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], text).into_response())
    }
}

fn watch_line(event_type: &str, object: &[u8]) -> Bytes {
    let mut line = BytesMut::with_capacity(object.len() + 32);
    line.put_slice(b"{\"type\":\"");
    line.put_slice(event_type.as_bytes());
    line.put_slice(b"\",\"object\":");
    line.put_slice(object);
    line.put_slice(b"}\n");
    line.freeze()
}

struct WatchTask {
    def: &'static ResourceDef,
    filter: Filter,
    /// `kubectl get -w`: each event's object is a one-row Table.
    table: bool,
    bookmarks: bool,
    initial_events_end: bool,
    timeout: Duration,
    bookmark_interval: Duration,
    shutdown: CancellationToken,
    dropped: CancellationToken,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
}

impl WatchTask {
    fn bookmark(&self, rv: u64, initial_events_end: bool) -> Bytes {
        let mut object = json!({"kind": self.def.kind, "apiVersion": self.def.api_version(),
            "metadata": {"resourceVersion": rv.to_string(), "creationTimestamp": null}});
        if initial_events_end {
            object["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        if self.def == &PODS {
            object["spec"] = json!({"containers": null});
            object["status"] = json!({});
        }
        watch_line("BOOKMARK", &serde_json::to_vec(&object).unwrap_or_default())
    }

    /// The line to send for a change, taking selector transitions into account.
    fn line_for(&self, record: &WatchRecord) -> Option<Bytes> {
        let now = self.filter.matches(&record.object);
        let before = record.previous.as_ref().map(|p| self.filter.matches(p));
        let event = match (record.event, before, now) {
            (EventType::Added, _, true) => "ADDED",
            (EventType::Modified, Some(true), true) => "MODIFIED",
            (EventType::Modified, Some(false) | None, true) => "ADDED",
            (EventType::Modified, Some(true), false) => "DELETED",
            (EventType::Deleted, _, true) => "DELETED",
            _ => return None,
        };
        if self.table {
            let row = table::table(
                self.def,
                std::slice::from_ref(&record.object),
                record.object.resource_version,
                None,
            );
            return Some(watch_line(event, &serde_json::to_vec(&row).unwrap_or_default()));
        }
        Some(watch_line(event, &record.object.json))
    }

    async fn run(
        self,
        initial: Vec<Arc<WatchRecord>>,
        mut live: broadcast::Receiver<Arc<WatchRecord>>,
        start_revision: u64,
    ) {
        let mut last_rv = start_revision;
        for record in &initial {
            last_rv = last_rv.max(record.object.resource_version);
            if let Some(line) = self.line_for(record)
                && self.tx.send(Ok(line)).await.is_err()
            {
                return;
            }
        }
        // Live records at or below what the initial events covered are duplicates.
        let covered =
            initial.iter().map(|r| r.object.resource_version).max().unwrap_or(0).max(start_revision);
        if self.initial_events_end && self.tx.send(Ok(self.bookmark(last_rv, true))).await.is_err() {
            return;
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut ticker = tokio::time::interval(self.bookmark_interval.max(Duration::from_millis(10)));
        ticker.tick().await;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    if self.bookmarks {
                        let _ = self.tx.send(Ok(self.bookmark(last_rv, false))).await;
                    }
                    return;
                }
                () = self.shutdown.cancelled() => return,
                () = self.dropped.cancelled() => return,
                () = self.tx.closed() => return,
                _ = ticker.tick(), if self.bookmarks => {
                    if self.tx.send(Ok(self.bookmark(last_rv, false))).await.is_err() {
                        return;
                    }
                }
                received = live.recv() => match received {
                    Ok(record) => {
                        let rv = record.object.resource_version;
                        if rv <= covered {
                            continue;
                        }
                        last_rv = last_rv.max(rv);
                        if let Some(line) = self.line_for(&record)
                            && self.tx.send(Ok(line)).await.is_err()
                        {
                            return;
                        }
                    }
                    // A watcher that cannot keep up is closed; it resumes from its last resourceVersion.
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_like_the_apiserver() {
        let r = route("/api/v1/namespaces/shop/pods/web-1/log").expect("routes");
        assert_eq!(
            r,
            Route::Resource {
                def: &PODS,
                namespace: Some("shop".into()),
                name: Some("web-1".into()),
                subresource: Some("log".into())
            }
        );
        let r = route("/api/v1/pods").expect("routes");
        assert_eq!(r, Route::Resource { def: &PODS, namespace: None, name: None, subresource: None });
        let r = route("/api/v1/namespaces/shop").expect("routes");
        assert!(
            matches!(r, Route::Resource { def, name: Some(n), .. } if def.plural == "namespaces" && n == "shop")
        );
        assert!(route("/apis/coordination.k8s.io/v1/namespaces/kubesent/leases/detector").is_some());
        assert!(route("/api/v1/namespaces/shop/widgets/a/b").is_none());
        assert!(route("/api/v1/pods/x").is_none());
    }
}
