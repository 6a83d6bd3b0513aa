//! OpenAPI v3 as kubectl reads it: `/openapi/v3` lists a document per group version, and each document
//! names the paths of the kinds served with their `x-kubernetes-group-version-kind` and the
//! `fieldValidation` query parameter on create, update and patch. Finding it, kubectl leaves field
//! validation to the server (`fieldValidation=Strict`, which [`unknown_fields`] answers) instead of
//! downloading schemas to validate on its own side. The documents hold paths only, no schemas.

use serde_json::{Map, Value, json};

use crate::resources::{ALL, ResourceDef};

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

fn operation(def: &ResourceDef, action: &str, validated: bool) -> Value {
    let mut parameters =
        vec![json!({"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}})];
    if validated {
        parameters.push(validation_parameter());
    }
    json!({
        "operationId": format!("{action}{}", def.kind),
        "parameters": parameters,
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": def.group, "version": def.version, "kind": def.kind},
    })
}

/// `GET /openapi/v3/api/v1` or `/openapi/v3/apis/<group>/<version>`; `None` for a group version not served.
pub fn document(path: &str) -> Option<Value> {
    let defs: Vec<&ResourceDef> =
        ALL.iter().copied().filter(|d| group_version_path(d) == path.trim_matches('/')).collect();
    let first = defs.first()?;
    let mut paths = Map::new();
    for def in &defs {
        let base = format!("/{}", group_version_path(def));
        let collection = if def.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", def.plural)
        } else {
            format!("{base}/{}", def.plural)
        };
        paths.insert(
            collection.clone(),
            json!({"get": operation(def, "list", false), "post": operation(def, "post", true),
                "delete": operation(def, "deletecollection", false)}),
        );
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({"get": operation(def, "get", false), "put": operation(def, "put", true),
                "patch": operation(def, "patch", true), "delete": operation(def, "delete", false)}),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("{} {}", first.group, first.version).trim().to_owned()},
        "paths": paths,
        "components": {"schemas": {}},
    }))
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
            let doc = document(&path).expect("a document");
            let patched = doc["paths"].as_object().expect("paths").values().any(|item| {
                item["patch"]["x-kubernetes-group-version-kind"]["kind"] == def.kind
                    && item["patch"]["parameters"]
                        .as_array()
                        .is_some_and(|p| p.iter().any(|p| p["name"] == "fieldValidation"))
            });
            assert!(patched, "{} has a validated patch", def.kind);
        }
        assert!(document("apis/nothing/v9").is_none());
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
