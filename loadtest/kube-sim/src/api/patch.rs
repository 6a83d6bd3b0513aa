//! The three PATCH flavours kube-rs and kubectl send: JSON merge patch (RFC 7386), strategic merge
//! patch (merge keys of the core and apps types), and JSON patch (RFC 6902).

use serde_json::{Map, Value};

use crate::api_error::ApiError;

/// A patch body and its flavour, from the request's `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`
    Merge,
    /// `application/strategic-merge-patch+json`
    Strategic,
    /// `application/json-patch+json`
    Json,
    /// `application/apply-patch+yaml` (server-side apply)
    Apply,
}

impl PatchType {
    /// The flavour named by a `Content-Type` header.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        match content_type.split(';').next().map(str::trim) {
            Some("application/merge-patch+json") => Some(Self::Merge),
            Some("application/strategic-merge-patch+json") => Some(Self::Strategic),
            Some("application/json-patch+json") => Some(Self::Json),
            Some("application/apply-patch+yaml") | Some("application/apply-patch+cbor") => Some(Self::Apply),
            _ => None,
        }
    }
}

/// Applies `patch` of flavour `kind` to `target`.
pub fn apply(kind: PatchType, target: &Value, patch: &Value) -> Result<Value, ApiError> {
    match kind {
        PatchType::Merge => Ok(merge_patch(target, patch)),
        PatchType::Strategic => strategic_merge(target, patch, ""),
        PatchType::Json => json_patch(target, patch),
        // NB: server-side apply is approximated as a merge patch: field ownership is not tracked.
        PatchType::Apply => Ok(merge_patch(target, patch)),
    }
}

/// RFC 7386: objects merge, `null` deletes, everything else replaces.
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    match patch {
        Value::Object(patch_map) => {
            let mut out = match target {
                Value::Object(m) => m.clone(),
                _ => Map::new(),
            };
            for (key, value) in patch_map {
                if value.is_null() {
                    out.remove(key);
                } else {
                    let merged = merge_patch(out.get(key).unwrap_or(&Value::Null), value);
                    out.insert(key.clone(), merged);
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// The merge key of a list field in the core/apps/admissionregistration types, by field name.
pub(crate) fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "hostAliases"
        | "readinessGates"
        | "webhooks" => match field {
            "hostAliases" => "ip",
            "readinessGates" => "conditionType",
            _ => "name",
        },
        "ports" => "containerPort",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ownerReferences" => "uid",
        "conditions" => "type",
        "resizePolicy" => "resourceName",
        "topologySpreadConstraints" => "topologyKey",
        _ => return None,
    })
}

/// Lists of scalars that merge as sets.
fn is_set_list(field: &str) -> bool {
    field == "finalizers"
}

fn strategic_merge(target: &Value, patch: &Value, field: &str) -> Result<Value, ApiError> {
    match patch {
        Value::Object(patch_map) => {
            if patch_map.get("$patch").and_then(Value::as_str) == Some("replace") {
                let mut replaced = patch_map.clone();
                replaced.remove("$patch");
                return Ok(Value::Object(replaced));
            }
            let mut out = match target {
                Value::Object(m) => m.clone(),
                _ => Map::new(),
            };
            for (key, value) in patch_map {
                if key.starts_with('$') {
                    if key.starts_with("$setElementOrder/") || key == "$retainKeys" {
                        continue;
                    }
                    if let Some(list_field) = key.strip_prefix("$deleteFromPrimitiveList/") {
                        if let (Some(Value::Array(current)), Value::Array(remove)) =
                            (out.get_mut(list_field), value)
                        {
                            current.retain(|v| !remove.contains(v));
                        }
                        continue;
                    }
                    return Err(ApiError::bad_request(format!("unknown patch directive {key:?}")));
                }
                if value.is_null() {
                    out.remove(key);
                    continue;
                }
                let current = out.get(key).cloned().unwrap_or(Value::Null);
                let merged = match (value, merge_key(key)) {
                    (Value::Array(items), Some(merge_key)) => {
                        merge_keyed_list(&current, items, merge_key, key)?
                    }
                    (Value::Array(items), None) if is_set_list(key) => {
                        let mut list = current.as_array().cloned().unwrap_or_default();
                        for item in items {
                            if !list.contains(item) {
                                list.push(item.clone());
                            }
                        }
                        Value::Array(list)
                    }
                    (Value::Array(_), None) => value.clone(),
                    _ => strategic_merge(&current, value, key)?,
                };
                out.insert(key.clone(), merged);
            }
            Ok(Value::Object(out))
        }
        other => {
            let _ = field;
            Ok(other.clone())
        }
    }
}

fn merge_keyed_list(
    current: &Value,
    items: &[Value],
    merge_key: &str,
    field: &str,
) -> Result<Value, ApiError> {
    let mut list = current.as_array().cloned().unwrap_or_default();
    for item in items {
        let Some(key_value) = item.get(merge_key) else {
            return Err(ApiError::bad_request(format!(
                "map: {item} does not contain declared merge key: {merge_key}"
            )));
        };
        let position = list.iter().position(|existing| existing.get(merge_key) == Some(key_value));
        let directive = item.get("$patch").and_then(Value::as_str);
        match (position, directive) {
            (Some(i), Some("delete")) => {
                list.remove(i);
            }
            (None, Some("delete")) => {}
            (Some(i), _) => list[i] = strategic_merge(&list[i], item, field)?,
            (None, _) => {
                let mut fresh = item.clone();
                if let Some(obj) = fresh.as_object_mut() {
                    obj.remove("$patch");
                }
                list.push(strategic_merge(&Value::Null, &fresh, field)?);
            }
        }
    }
    Ok(Value::Array(list))
}

/// RFC 6902 JSON patch.
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, ApiError> {
    let ops =
        patch.as_array().ok_or_else(|| ApiError::bad_request("json patch must be an array of operations"))?;
    let mut doc = target.clone();
    for op in ops {
        let name = op.get("op").and_then(Value::as_str).unwrap_or("");
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_request("json patch operation without path"))?;
        let value = op.get("value").cloned();
        match name {
            "add" => add(&mut doc, path, value.ok_or_else(|| missing_value(name))?)?,
            "remove" => {
                remove(&mut doc, path)?;
            }
            "replace" => {
                remove(&mut doc, path)?;
                add(&mut doc, path, value.ok_or_else(|| missing_value(name))?)?;
            }
            "test" => {
                if doc.pointer(path) != value.as_ref() {
                    return Err(ApiError::invalid_patch(format!("testing value {path} failed")));
                }
            }
            "move" | "copy" => {
                let from = op
                    .get("from")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ApiError::bad_request("move/copy without from"))?;
                let moved = if name == "move" {
                    remove(&mut doc, from)?
                } else {
                    doc.pointer(from)
                        .cloned()
                        .ok_or_else(|| ApiError::invalid_patch(format!("missing value at {from}")))?
                };
                add(&mut doc, path, moved)?;
            }
            other => return Err(ApiError::bad_request(format!("Unexpected kind: {other}"))),
        }
    }
    Ok(doc)
}

fn missing_value(op: &str) -> ApiError {
    ApiError::bad_request(format!("json patch {op} operation does not have a value"))
}

fn split_pointer(path: &str) -> Result<(String, String), ApiError> {
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or_else(|| ApiError::bad_request(format!("invalid json pointer {path:?}")))?;
    Ok((parent.to_owned(), last.replace("~1", "/").replace("~0", "~")))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), ApiError> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    let container = doc
        .pointer_mut(&parent)
        .ok_or_else(|| ApiError::invalid_patch(format!("doc is missing path: {path}")))?;
    match container {
        Value::Object(map) => {
            map.insert(last, value);
            Ok(())
        }
        Value::Array(list) => {
            let index = if last == "-" {
                list.len()
            } else {
                last.parse::<usize>().map_err(|_| ApiError::invalid_patch(format!("invalid index {last}")))?
            };
            if index > list.len() {
                return Err(ApiError::invalid_patch(format!("index out of bounds at {path}")));
            }
            list.insert(index, value);
            Ok(())
        }
        _ => Err(ApiError::invalid_patch(format!("doc is missing path: {path}"))),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, ApiError> {
    let (parent, last) = split_pointer(path)?;
    let missing = || ApiError::invalid_patch(format!("doc is missing path: {path}"));
    match doc.pointer_mut(&parent).ok_or_else(missing)? {
        Value::Object(map) => map.remove(&last).ok_or_else(missing),
        Value::Array(list) => {
            let index = last.parse::<usize>().map_err(|_| missing())?;
            if index < list.len() { Ok(list.remove(index)) } else { Err(missing()) }
        }
        _ => Err(missing()),
    }
}

impl ApiError {
    /// 422 for a JSON patch that cannot be applied, as the apiserver reports it.
    pub fn invalid_patch(detail: String) -> Self {
        let mut e = ApiError::bad_request(detail);
        e.code = 422;
        e.reason = "Invalid";
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_merges_objects_and_deletes_nulls() {
        let doc = json!({"a": {"b": 1, "c": 2}, "d": [1, 2]});
        let out = merge_patch(&doc, &json!({"a": {"b": null, "e": 3}, "d": [3]}));
        assert_eq!(out, json!({"a": {"c": 2, "e": 3}, "d": [3]}));
    }

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let doc = json!({"spec": {"containers": [
            {"name": "app", "image": "a:1", "resources": {"limits": {"memory": "128Mi"}}},
            {"name": "side", "image": "s:1"}
        ]}});
        let patch =
            json!({"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "256Mi"}}}]}});
        let out = apply(PatchType::Strategic, &doc, &patch).expect("applies");
        assert_eq!(out["spec"]["containers"][0]["resources"]["limits"]["memory"], "256Mi");
        assert_eq!(out["spec"]["containers"][0]["image"], "a:1");
        assert_eq!(out["spec"]["containers"][1]["name"], "side");
    }

    #[test]
    fn strategic_merge_deletes_list_items_by_directive() {
        let doc = json!({"metadata": {"finalizers": ["a", "b"]}, "spec": {"containers": [{"name": "x"}, {"name": "y"}]}});
        let patch = json!({"spec": {"containers": [{"name": "x", "$patch": "delete"}]},
            "metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}});
        let out = apply(PatchType::Strategic, &doc, &patch).expect("applies");
        assert_eq!(out["spec"]["containers"], json!([{"name": "y"}]));
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn json_patch_supports_add_replace_remove_and_test() {
        let doc = json!({"a": [1, 2], "b": "x"});
        let patch = json!([
            {"op": "add", "path": "/a/-", "value": 3},
            {"op": "replace", "path": "/b", "value": "y"},
            {"op": "test", "path": "/b", "value": "y"},
            {"op": "remove", "path": "/a/0"}
        ]);
        assert_eq!(json_patch(&doc, &patch).expect("applies"), json!({"a": [2, 3], "b": "y"}));
        let failing = json!([{"op": "test", "path": "/b", "value": "z"}]);
        assert_eq!(json_patch(&doc, &failing).expect_err("fails").code, 422);
    }
}
