//! OpenAPI as kubectl reads it. `/openapi/v3` lists a document per group version; each names the paths
//! of the kinds served with their `x-kubernetes-group-version-kind` and the `fieldValidation` query
//! parameter on create, update and patch (finding it, kubectl leaves field validation to the server:
//! `fieldValidation=Strict`, which [`unknown_fields`] answers), and holds the kinds' schemas, with the
//! patch and list extensions kubectl's strategic merge patches and `kubectl explain` read.
//! `/openapi/v2` is the same in one Swagger 2.0 document, for older clients and
//! `kubectl explain --output=plaintext-openapiv2`.
//!
//! The schemas are built from the protobuf field table (field names, types, the Go struct tags), so
//! they carry no descriptions and no `required` lists, and a few definitions are named as k8s-pb names
//! them (`io.k8s.api.core.v1.HttpGetAction` for the apiserver's `HTTPGetAction`).

use serde_json::{Map, Value, json};

use super::protobuf::{self, Message, Shape, Type};
use crate::resources::{ALL, ResourceDef};

/// Which OpenAPI a schema is written for: where references point and how int-or-string is said.
#[derive(Clone, Copy, PartialEq)]
enum Dialect {
    V2,
    V3,
}

impl Dialect {
    fn reference(self, proto_name: &str) -> Value {
        let prefix = if self == Dialect::V2 { "#/definitions/" } else { "#/components/schemas/" };
        json!({"$ref": format!("{prefix}io.k8s.{proto_name}")})
    }
}

/// The definitions the apiserver names for its two scalar types written as strings; fields refer to
/// them, and `kubectl explain` prints a field's type from the name (`<IntOrString>`,
/// `<map[string]Quantity>`).
const QUANTITY: &str = "apimachinery.pkg.api.resource.Quantity";
const INT_OR_STRING: &str = "apimachinery.pkg.util.intstr.IntOrString";

/// The schema of a definition that is no message of the table. Version 3 says both as a choice of
/// types with no `type` of their own, so kubectl prints the definition's name.
fn scalar_definition(name: &str, dialect: Dialect) -> Option<Value> {
    match (name, dialect) {
        (QUANTITY, Dialect::V2) => Some(json!({"type": "string"})),
        (QUANTITY, Dialect::V3) => Some(json!({"oneOf": [{"type": "string"}, {"type": "number"}]})),
        (INT_OR_STRING, Dialect::V2) => Some(json!({"type": "string", "format": "int-or-string"})),
        (INT_OR_STRING, Dialect::V3) => Some(
            json!({"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]}),
        ),
        _ => None,
    }
}

fn type_schema(ty: &Type, dialect: Dialect) -> Value {
    match ty {
        Type::String => json!({"type": "string"}),
        Type::Bool => json!({"type": "boolean"}),
        Type::Int => json!({"type": "integer", "format": "int64"}),
        Type::Bytes => json!({"type": "string", "format": "byte"}),
        Type::Msg(name) => dialect.reference(name),
        Type::Time | Type::MicroTime => json!({"type": "string", "format": "date-time"}),
        Type::RawJson => json!({"type": "object"}),
        Type::Quantity => dialect.reference(QUANTITY),
        Type::IntOrString => dialect.reference(INT_OR_STRING),
    }
}

/// The properties of a message's JSON object (an embedded struct's fields are its parent's).
fn properties(message: &Message, dialect: Dialect, into: &mut Map<String, Value>) {
    for field in message.fields {
        let mut schema = match field.shape {
            Shape::One => type_schema(&field.ty, dialect),
            Shape::List => json!({"type": "array", "items": type_schema(&field.ty, dialect)}),
            Shape::Map => json!({"type": "object", "additionalProperties": type_schema(&field.ty, dialect)}),
            Shape::Inline => {
                if let Type::Msg(name) = field.ty
                    && let Ok(inner) = protobuf::message(name)
                {
                    properties(inner, dialect, into);
                }
                continue;
            }
        };
        for tag in field.ext.split(',').filter(|t| !t.is_empty()) {
            let Some((key, value)) = tag.split_once('=') else { continue };
            match key {
                "patchMergeKey" => schema["x-kubernetes-patch-merge-key"] = json!(value),
                "patchStrategy" => schema["x-kubernetes-patch-strategy"] = json!(value),
                "listType" => schema["x-kubernetes-list-type"] = json!(value),
                "listMapKey" => {
                    let keys = schema.get_mut("x-kubernetes-list-map-keys").and_then(Value::as_array_mut);
                    match keys {
                        Some(keys) => keys.push(json!(value)),
                        None => schema["x-kubernetes-list-map-keys"] = json!([value]),
                    }
                }
                _ => {}
            }
        }
        into.insert(field.json.to_owned(), schema);
    }
}

/// The schemas of `kinds` and of every message they reach, by definition name.
fn schemas<'a>(kinds: impl IntoIterator<Item = &'a ResourceDef>, dialect: Dialect) -> Map<String, Value> {
    let mut out = Map::new();
    let mut queue: Vec<(String, Option<&ResourceDef>)> =
        kinds.into_iter().map(|def| (protobuf::message_name(def), Some(def))).collect();
    while let Some((name, kind)) = queue.pop() {
        let key = format!("io.k8s.{name}");
        if out.contains_key(&key) {
            continue;
        }
        if let Some(schema) = scalar_definition(&name, dialect) {
            out.insert(key, schema);
            continue;
        }
        let Ok(message) = protobuf::message(&name) else {
            // A custom resource (the VerticalPodAutoscaler): no message of the table; its definition
            // keeps every field, as a CustomResourceDefinition's structural schema with
            // x-kubernetes-preserve-unknown-fields does.
            if let Some(def) = kind {
                out.insert(
                    key,
                    json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                        "x-kubernetes-group-version-kind": [{"group": def.group, "version": def.version, "kind": def.kind}]}),
                );
            }
            continue;
        };
        let mut props = Map::new();
        properties(message, dialect, &mut props);
        let mut schema = json!({"type": "object"});
        if let Some(def) = kind {
            props.insert("apiVersion".into(), json!({"type": "string"}));
            props.insert("kind".into(), json!({"type": "string"}));
            schema["x-kubernetes-group-version-kind"] =
                json!([{"group": def.group, "version": def.version, "kind": def.kind}]);
        }
        schema["properties"] = Value::Object(props);
        out.insert(key, schema);
        let mut reached = Vec::new();
        reachable(message, &mut reached);
        queue.extend(reached.into_iter().map(|n| (n.to_owned(), None)));
    }
    out
}

fn reachable(message: &Message, into: &mut Vec<&'static str>) {
    for field in message.fields {
        match (&field.ty, &field.shape) {
            (Type::Msg(name), Shape::Inline) => {
                if let Ok(inner) = protobuf::message(name) {
                    reachable(inner, into);
                }
            }
            (Type::Msg(name), _) => into.push(name),
            (Type::Quantity, _) => into.push(QUANTITY),
            (Type::IntOrString, _) => into.push(INT_OR_STRING),
            _ => {}
        }
    }
}

/// `api/v1` or `apis/<group>/<version>`.
fn group_version_path(def: &ResourceDef) -> String {
    if def.group.is_empty() {
        format!("api/{}", def.version)
    } else {
        format!("apis/{}/{}", def.group, def.version)
    }
}

/// A stable hash of the served resources, as the index's `?hash=` (clients cache by it).
fn hash() -> String {
    let names: String = ALL.iter().map(|d| format!("{}/{}/{};", d.group, d.version, d.plural)).collect();
    let value =
        names.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("{value:016X}")
}

/// `GET /openapi/v3`.
pub fn index() -> Value {
    let mut paths = Map::new();
    let hash = hash();
    for def in ALL {
        let path = group_version_path(def);
        paths
            .entry(path.clone())
            .or_insert_with(|| json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}));
    }
    json!({"paths": paths})
}

fn validation_parameter() -> Value {
    json!({"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true},
        "description": "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields: Ignore, Warn or Strict."})
}

fn operation(def: &ResourceDef, action: &str, validated: bool, dialect: Dialect) -> Value {
    let mut parameters =
        vec![json!({"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}})];
    if validated {
        parameters.push(validation_parameter());
    }
    if dialect == Dialect::V2 {
        // Swagger 2.0 types query parameters inline.
        for parameter in &mut parameters {
            if let Some(schema) = parameter.as_object_mut().and_then(|p| p.remove("schema")) {
                parameter["type"] = schema["type"].clone();
                parameter["uniqueItems"] = schema["uniqueItems"].clone();
            }
        }
    }
    let object = dialect.reference(&protobuf::message_name(def));
    let answer = match (action, dialect) {
        ("list" | "deletecollection", _) => json!({"description": "OK"}),
        (_, Dialect::V2) => json!({"description": "OK", "schema": object}),
        (_, Dialect::V3) => json!({"description": "OK", "content": {"application/json": {"schema": object}}}),
    };
    json!({
        "operationId": format!("{action}{}", def.kind),
        "parameters": parameters,
        "responses": {"200": answer},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": def.group, "version": def.version, "kind": def.kind},
    })
}

/// The first minor version whose apiserver validates fields (`fieldValidation`, beta and on by default
/// in 1.25). An older one neither advertises nor honours it, and kubectl validates on its own side.
pub const FIELD_VALIDATION_SINCE_MINOR: u32 = 25;

/// The path items of `defs`' collections and objects.
fn paths<'a>(
    defs: impl IntoIterator<Item = &'a ResourceDef>,
    dialect: Dialect,
    kubernetes_minor: u32,
) -> Map<String, Value> {
    let validates = kubernetes_minor >= FIELD_VALIDATION_SINCE_MINOR;
    let mut paths = Map::new();
    for def in defs {
        let base = format!("/{}", group_version_path(def));
        let collection = if def.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", def.plural)
        } else {
            format!("{base}/{}", def.plural)
        };
        let op = |action, validated| operation(def, action, validated && validates, dialect);
        paths.insert(
            collection.clone(),
            json!({"get": op("list", false), "post": op("post", true), "delete": op("deletecollection", false)}),
        );
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({"get": op("get", false), "put": op("put", true), "patch": op("patch", true),
                "delete": op("delete", false)}),
        );
    }
    paths
}

/// `GET /openapi/v3/api/v1` or `/openapi/v3/apis/<group>/<version>`; `None` for a group version not served.
pub fn document(path: &str, kubernetes_minor: u32) -> Option<Value> {
    let defs: Vec<&ResourceDef> =
        ALL.iter().copied().filter(|d| group_version_path(d) == path.trim_matches('/')).collect();
    let first = defs.first()?;
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("{} {}", first.group, first.version).trim().to_owned()},
        "paths": paths(defs.iter().copied(), Dialect::V3, kubernetes_minor),
        "components": {"schemas": schemas(defs.iter().copied(), Dialect::V3)},
    }))
}

/// `GET /openapi/v2`: every served kind in one Swagger 2.0 document.
pub fn document_v2(kubernetes_minor: u32) -> Value {
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{kubernetes_minor}.0")},
        "paths": paths(ALL.iter().copied(), Dialect::V2, kubernetes_minor),
        "definitions": schemas(ALL.iter().copied(), Dialect::V2),
    })
}

/// The media type of OpenAPI v2 in gnostic's protobuf form, the only one kubectl's v2 client takes. It
/// asks for `…spec.v2@v1.0+protobuf`; the apiserver answers with this dotted form, since Go's MIME
/// parser (in kubectl) refuses the `@`.
pub const V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// Whether an `Accept` asks for OpenAPI v2 as protobuf (in either spelling).
pub fn wants_v2_protobuf(accept: &str) -> bool {
    accept.contains("com.github.proto-openapi.spec.v2")
}

/// `GET /openapi/v2` in gnostic's `openapi.v2.Document` protobuf encoding (what kubectl reads for
/// client-side validation and `explain --output=plaintext-openapiv2`); vendor extensions as YAML text
/// (JSON is YAML), as gnostic carries them.
pub fn document_v2_protobuf(kubernetes_minor: u32) -> Vec<u8> {
    gnostic::document(&document_v2(kubernetes_minor))
}

/// The subset of gnostic's OpenAPI v2 messages that [`document_v2`] uses, by field number.
mod gnostic {
    use serde_json::Value;

    use super::protobuf::Writer;

    /// What gnostic's messages need beyond plain fields.
    trait GnosticFields {
        /// A string field taken from a JSON value, when it holds one.
        fn string(&mut self, tag: u32, value: Option<&Value>) -> &mut Self;
        /// A `NamedX { name = 1; value = 2 }` entry.
        fn named(&mut self, tag: u32, name: &str, value: Writer) -> &mut Self;
        /// `x-…` keys of `object` as `NamedAny { name, value: Any { yaml = 2 } }`.
        fn extensions(&mut self, tag: u32, object: &Value) -> &mut Self;
    }

    impl GnosticFields for Writer {
        fn string(&mut self, tag: u32, value: Option<&Value>) -> &mut Self {
            if let Some(text) = value.and_then(Value::as_str) {
                self.str(tag, text);
            }
            self
        }

        fn named(&mut self, tag: u32, name: &str, value: Writer) -> &mut Self {
            let mut entry = Writer::default();
            entry.str(1, name).msg(2, &value);
            self.msg(tag, &entry)
        }

        fn extensions(&mut self, tag: u32, object: &Value) -> &mut Self {
            for (key, value) in object.as_object().into_iter().flatten().filter(|(k, _)| k.starts_with("x-"))
            {
                let mut any = Writer::default();
                any.str(2, &value.to_string());
                self.named(tag, key, any);
            }
            self
        }
    }

    fn schema(value: &Value) -> Writer {
        let mut out = Writer::default();
        out.string(1, value.get("$ref")).string(2, value.get("format"));
        if let Some(additional) = value.get("additionalProperties") {
            let mut item = Writer::default();
            item.msg(1, &schema(additional));
            out.msg(21, &item);
        }
        if let Some(kind) = value.get("type") {
            let mut item = Writer::default();
            item.string(1, Some(kind));
            out.msg(22, &item);
        }
        if let Some(items) = value.get("items") {
            let mut item = Writer::default();
            item.msg(1, &schema(items));
            out.msg(23, &item);
        }
        if let Some(properties) = value.get("properties").and_then(Value::as_object) {
            let mut named = Writer::default();
            for (name, property) in properties {
                named.named(1, name, schema(property));
            }
            out.msg(25, &named);
        }
        out.extensions(31, value);
        out
    }

    fn operation(value: &Value) -> Writer {
        let mut out = Writer::default();
        out.string(5, value.get("operationId"));
        for parameter in value.get("parameters").and_then(Value::as_array).into_iter().flatten() {
            let mut query = Writer::default();
            query
                .string(2, parameter.get("in"))
                .string(4, parameter.get("name"))
                .string(6, parameter.get("type"));
            let (mut non_body, mut param, mut item) =
                (Writer::default(), Writer::default(), Writer::default());
            non_body.msg(3, &query);
            param.msg(2, &non_body);
            item.msg(1, &param);
            out.msg(8, &item);
        }
        let mut responses = Writer::default();
        for (code, answer) in value.get("responses").and_then(Value::as_object).into_iter().flatten() {
            let mut response = Writer::default();
            response.string(1, answer.get("description"));
            if let Some(body) = answer.get("schema") {
                let mut item = Writer::default();
                item.msg(1, &schema(body));
                response.msg(2, &item);
            }
            let mut value = Writer::default();
            value.msg(1, &response);
            responses.named(1, code, value);
        }
        out.msg(9, &responses);
        out.extensions(13, value);
        out
    }

    /// An `openapi.v2.Document`.
    pub(super) fn document(doc: &Value) -> Vec<u8> {
        let mut out = Writer::default();
        out.string(1, doc.get("swagger"));
        let mut info = Writer::default();
        info.string(1, doc.pointer("/info/title")).string(2, doc.pointer("/info/version"));
        out.msg(2, &info);
        let mut paths = Writer::default();
        for (path, item) in doc.get("paths").and_then(Value::as_object).into_iter().flatten() {
            let mut path_item = Writer::default();
            for (verb, tag) in [("get", 2), ("put", 3), ("post", 4), ("delete", 5), ("patch", 8)] {
                if let Some(op) = item.get(verb) {
                    path_item.msg(tag, &operation(op));
                }
            }
            paths.named(2, path, path_item);
        }
        out.msg(8, &paths);
        let mut definitions = Writer::default();
        for (name, definition) in doc.get("definitions").and_then(Value::as_object).into_iter().flatten() {
            definitions.named(1, name, schema(definition));
        }
        out.msg(9, &definitions);
        out.0
    }
}

/// The fields of `given` that the typed `round_trip` of it does not keep: what strict decoding calls
/// `unknown field "spec.foo"`. Nulls are absences, not unknown fields.
pub fn unknown_fields(given: &Value, round_trip: &Value) -> Vec<String> {
    fn walk(given: &Value, kept: &Value, path: &str, unknown: &mut Vec<String>) {
        match (given, kept) {
            (Value::Object(given), Value::Object(kept)) => {
                for (key, value) in given {
                    let here = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                    match kept.get(key) {
                        None if !value.is_null() => unknown.push(here),
                        Some(kept) => walk(value, kept, &here, unknown),
                        None => {}
                    }
                }
            }
            (Value::Array(given), Value::Array(kept)) => {
                for (index, (value, kept)) in given.iter().zip(kept).enumerate() {
                    walk(value, kept, &format!("{path}[{index}]"), unknown);
                }
            }
            _ => {}
        }
    }
    let mut unknown = Vec::new();
    walk(given, round_trip, "", &mut unknown);
    unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_kind_has_a_patch_with_field_validation_in_its_group_versions_document() {
        let index = index();
        for def in ALL {
            let path = group_version_path(def);
            assert!(index["paths"][&path]["serverRelativeURL"].as_str().is_some_and(|u| u.contains("hash=")));
            let doc = document(&path, 36).expect("a document");
            let patched = doc["paths"].as_object().expect("paths").values().any(|item| {
                item["patch"]["x-kubernetes-group-version-kind"]["kind"] == def.kind
                    && item["patch"]["parameters"]
                        .as_array()
                        .is_some_and(|p| p.iter().any(|p| p["name"] == "fieldValidation"))
            });
            assert!(patched, "{} has a validated patch", def.kind);
        }
        assert!(document("apis/nothing/v9", 36).is_none());
    }

    #[test]
    fn every_reference_resolves_and_lists_carry_their_patch_merge_keys() {
        fn refs(value: &Value, into: &mut Vec<String>) {
            match value {
                Value::Object(map) => {
                    if let Some(Value::String(r)) = map.get("$ref") {
                        into.push(r.clone());
                    }
                    map.values().for_each(|v| refs(v, into));
                }
                Value::Array(items) => items.iter().for_each(|v| refs(v, into)),
                _ => {}
            }
        }
        let v2 = document_v2(36);
        let mut all = Vec::new();
        refs(&v2, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let name = r.strip_prefix("#/definitions/").expect("a definitions reference");
            assert!(v2["definitions"].get(name).is_some(), "{r} resolves");
        }
        let containers = &v2["definitions"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
        let deployment = &v2["definitions"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(deployment["x-kubernetes-group-version-kind"][0]["kind"], "Deployment");
        // An embedded struct's fields are its parent's: a probe's httpGet, a volume's configMap.
        assert!(v2["definitions"]["io.k8s.api.core.v1.Probe"]["properties"].get("httpGet").is_some());
        assert!(v2["definitions"]["io.k8s.api.core.v1.Volume"]["properties"].get("configMap").is_some());
        let v3 = document("apis/apps/v1", 36).expect("apps/v1");
        assert!(v3["components"]["schemas"].get("io.k8s.api.apps.v1.Deployment").is_some());
        let old = document("apis/apps/v1", 24).expect("apps/v1");
        assert!(!old.to_string().contains("fieldValidation"), "1.24 does not advertise fieldValidation");
    }

    #[test]
    fn unknown_fields_are_named_by_their_path_and_nulls_are_not_unknown() {
        let given = json!({"spec": {"replicas": 1, "replica": 2, "template": {"spec": {"containers": [{"name": "a", "imagee": "x"}]}}}, "status": null});
        let kept = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "a"}]}}}});
        assert_eq!(
            unknown_fields(&given, &kept),
            ["spec.replica", "spec.template.spec.containers[0].imagee"]
        );
    }
}
