//! Who wrote what: `metadata.managedFields`, as the apiserver's field manager keeps it.
//!
//! Each write is recorded under its writer's entry (manager, operation, subresource) as a set of field
//! paths in the `FieldsV1` form: `f:<field>` for a struct or map member, `k:{"name":"app"}` for an item
//! of a list merged by key, `v:"x"` for a member of a set-like list (finalizers), `.` for a map or list
//! item itself. An update gives its writer the fields it set or changed and takes them from every other
//! manager; a field it removed leaves every set. Server-side apply ([`apply`]) gives its manager exactly
//! the fields of its configuration, refuses (409) to change a value another manager set unless forced,
//! and removes the fields the manager applied before and no longer applies, when nobody else owns them.
//!
//! kube-sim has no OpenAPI schemas to tell a struct from a map: the maps whose keys are data (labels,
//! annotations, resource lists, selectors, a ConfigMap's data) are named, and other lists than those with
//! a strategic merge key are atomic — as they are in the real schemas, near enough for a reader who asks
//! which manager last set a field.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::patch::{self, PatchType};
use crate::api_error::ApiError;

/// One field path: `["f:spec", "f:template", …]`.
pub type FieldPath = Vec<String>;

/// The operation an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A create, update or patch other than apply.
    Update,
    /// Server-side apply.
    Apply,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Self::Update => "Update",
            Self::Apply => "Apply",
        }
    }
}

/// Who writes: the entry of `managedFields` a write is recorded under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Writer<'a> {
    /// The field manager.
    pub manager: &'a str,
    /// Update or Apply.
    pub operation: Operation,
    /// `status`, `scale`, `resize`, or none for the object itself.
    pub subresource: Option<&'a str>,
    /// The API version written in (`apps/v1`).
    pub api_version: &'a str,
}

/// Maps whose keys are data, not field names: the map itself is a member (`.`) of the set.
const DATA_MAPS: [&str; 12] = [
    "labels",
    "annotations",
    "limits",
    "requests",
    "nodeSelector",
    "data",
    "binaryData",
    "stringData",
    "matchLabels",
    "hard",
    "capacity",
    "allocatable",
];

/// Metadata the server owns, never in a field set.
const SERVER_METADATA: [&str; 10] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// The fields of `object`, each with its value when it is a leaf (`None` for a map or list item
/// itself).
pub fn fields(object: &Value) -> BTreeMap<FieldPath, Option<&Value>> {
    let mut out = BTreeMap::new();
    if let Value::Object(map) = object {
        let mut path = Vec::new();
        for (key, value) in map {
            if key == "apiVersion" || key == "kind" || value.is_null() {
                continue;
            }
            path.push(format!("f:{key}"));
            if key == "metadata"
                && let Value::Object(meta) = value
            {
                for (field, value) in meta {
                    if SERVER_METADATA.contains(&field.as_str()) || value.is_null() {
                        continue;
                    }
                    path.push(format!("f:{field}"));
                    walk(value, field, &mut path, &mut out);
                    path.pop();
                }
            } else {
                walk(value, key, &mut path, &mut out);
            }
            path.pop();
        }
    }
    out
}

fn walk<'a>(
    value: &'a Value,
    field: &str,
    path: &mut FieldPath,
    out: &mut BTreeMap<FieldPath, Option<&'a Value>>,
) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            if DATA_MAPS.contains(&field) {
                out.insert(path.clone(), None);
            }
            for (key, child) in map {
                if child.is_null() {
                    continue;
                }
                path.push(format!("f:{key}"));
                walk(child, key, path, out);
                path.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => match list_elements(field, items) {
            Some(elements) => {
                for (element, item) in elements.into_iter().zip(items) {
                    path.push(element);
                    out.insert(path.clone(), None);
                    if let Value::Object(map) = item {
                        for (key, child) in map {
                            if child.is_null() {
                                continue;
                            }
                            path.push(format!("f:{key}"));
                            walk(child, key, path, out);
                            path.pop();
                        }
                    }
                    path.pop();
                }
            }
            None => {
                out.insert(path.clone(), Some(value));
            }
        },
        _ => {
            out.insert(path.clone(), Some(value));
        }
    }
}

/// The path elements of a keyed or set-like list's items, or `None` for an atomic list (or one whose
/// items do not all carry their key).
fn list_elements(field: &str, items: &[Value]) -> Option<Vec<String>> {
    if field == "finalizers" {
        return items.iter().map(|item| item.as_str().map(|s| format!("v:{}", json!(s)))).collect();
    }
    let key = patch::merge_key(field)?;
    items
        .iter()
        .map(|item| {
            let mut fields = Map::new();
            fields.insert(key.to_owned(), item.get(key)?.clone());
            // A container port is keyed by port and protocol, as in the real schema.
            if key == "containerPort"
                && let Some(protocol) = item.get("protocol")
            {
                fields.insert("protocol".into(), protocol.clone());
            }
            Some(format!("k:{}", Value::Object(fields)))
        })
        .collect()
}

/// A set of paths as a `FieldsV1` document.
pub fn to_fields_v1<'a>(set: impl IntoIterator<Item = &'a FieldPath>) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut node = &mut root;
        for element in path {
            let child = node.entry(element.clone()).or_insert_with(|| json!({}));
            node = match child {
                Value::Object(map) => map,
                _ => unreachable_object(child),
            };
        }
        // A path that is also a parent (a map or list item) is marked as a member itself.
        if !path.is_empty() && is_member_node(path) {
            node.insert(".".into(), json!({}));
        }
    }
    Value::Object(root)
}

/// Whether the path names a map or list item (whose membership `.` records) rather than a leaf.
fn is_member_node(path: &FieldPath) -> bool {
    path.last().is_some_and(|last| {
        last.starts_with("k:") || DATA_MAPS.iter().any(|m| last.strip_prefix("f:") == Some(*m))
    })
}

fn unreachable_object(value: &mut Value) -> &mut Map<String, Value> {
    *value = json!({});
    match value {
        Value::Object(map) => map,
        _ => unreachable!("just set to an object"),
    }
}

/// The paths of a `FieldsV1` document.
pub fn from_fields_v1(document: &Value) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    let mut path = Vec::new();
    collect(document, &mut path, &mut out);
    out
}

fn collect(node: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    let Value::Object(map) = node else { return };
    for (key, child) in map {
        if key == "." {
            out.insert(path.clone());
            continue;
        }
        path.push(key.clone());
        if child.as_object().is_some_and(Map::is_empty) {
            out.insert(path.clone());
        } else {
            collect(child, path, out);
        }
        path.pop();
    }
}

/// A path as the apiserver prints it in a conflict: `.spec.template.spec.containers[name="app"].image`.
pub fn display_path(path: &FieldPath) -> String {
    let mut out = String::new();
    for element in path {
        if let Some(field) = element.strip_prefix("f:") {
            out.push('.');
            out.push_str(field);
        } else if let Some(key) = element.strip_prefix("k:") {
            let fields: Map<String, Value> = serde_json::from_str(key).unwrap_or_default();
            let parts: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(value) = element.strip_prefix("v:") {
            out.push_str(&format!("[={value}]"));
        }
    }
    out
}

/// One parsed `managedFields` entry.
#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    subresource: String,
    api_version: String,
    time: Option<Value>,
    set: BTreeSet<FieldPath>,
}

impl Entry {
    fn is(&self, writer: &Writer<'_>) -> bool {
        self.manager == writer.manager
            && self.operation == writer.operation.as_str()
            && self.subresource == writer.subresource.unwrap_or_default()
    }

    fn parse(value: &Value) -> Option<Self> {
        let text = |key: &str| value.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
        Some(Self {
            manager: text("manager"),
            operation: value.get("operation")?.as_str()?.to_owned(),
            subresource: text("subresource"),
            api_version: text("apiVersion"),
            time: value.get("time").cloned(),
            set: value.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
        })
    }

    fn to_value(&self) -> Value {
        let mut entry = json!({"manager": self.manager, "operation": self.operation,
            "apiVersion": self.api_version, "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&self.set)});
        if let Some(time) = &self.time {
            entry["time"] = time.clone();
        }
        if !self.subresource.is_empty() {
            entry["subresource"] = json!(self.subresource);
        }
        entry
    }

    fn new(writer: &Writer<'_>) -> Self {
        Self {
            manager: writer.manager.to_owned(),
            operation: writer.operation.as_str().to_owned(),
            subresource: writer.subresource.unwrap_or_default().to_owned(),
            api_version: writer.api_version.to_owned(),
            time: None,
            set: BTreeSet::new(),
        }
    }
}

/// The entries a write starts from: those of the request when it sets `managedFields` to something
/// else than the stored object has (an empty list clears them, as with the real apiserver), otherwise
/// the stored object's.
fn entries_before(old: Option<&Value>, new: &Value) -> Vec<Entry> {
    let stored = old.and_then(|o| o.pointer("/metadata/managedFields"));
    let given = new.pointer("/metadata/managedFields").filter(|given| Some(*given) != stored);
    given
        .or(stored)
        .and_then(Value::as_array)
        .map(|list| list.iter().filter_map(Entry::parse).collect())
        .unwrap_or_default()
}

fn write_entries(object: &mut Value, entries: Vec<Entry>) {
    let list: Vec<Value> = entries.iter().filter(|e| !e.set.is_empty()).map(Entry::to_value).collect();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Records an update (a create when `old` is `None`) of `old` into `new` by `writer` at `now`: the
/// writer's entry gains every field it set or changed, every other entry loses them, and a removed
/// field leaves every entry.
pub fn record_update(old: Option<&Value>, new: &mut Value, writer: &Writer<'_>, now: &str) {
    let mut entries = entries_before(old, new);
    let before = old.map(fields).unwrap_or_default();
    let after = fields(new);
    let changed: BTreeSet<FieldPath> = after
        .iter()
        .filter(|(path, value)| before.get(*path) != Some(value))
        .map(|(p, _)| p.clone())
        .collect();
    let removed: BTreeSet<FieldPath> = before.keys().filter(|p| !after.contains_key(*p)).cloned().collect();
    drop(after);
    if changed.is_empty() && removed.is_empty() {
        write_entries(new, entries);
        return;
    }
    let mut mine = match entries.iter().position(|e| e.is(writer)) {
        Some(index) => entries.remove(index),
        None => Entry::new(writer),
    };
    for entry in &mut entries {
        entry.set.retain(|path| !changed.contains(path) && !removed.contains(path));
    }
    mine.set.retain(|path| !removed.contains(path));
    mine.set.extend(changed);
    mine.api_version = writer.api_version.to_owned();
    mine.time = Some(json!(now));
    entries.push(mine);
    write_entries(new, entries);
}

/// Records an update of a `def` object (a create when `old` is `None`) by `manager` through
/// `subresource`, now. A write without a manager name is not recorded.
pub(crate) fn record(
    def: &crate::resources::ResourceDef,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: Option<&str>,
) {
    if manager.is_empty() {
        return;
    }
    let api_version = def.api_version();
    let writer = Writer { manager, operation: Operation::Update, subresource, api_version: &api_version };
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    record_update(old, new, &writer, &now);
}

/// Server-side apply of `config` by `writer` over `current` (`None`: the object does not exist yet).
/// Returns the object to store, with its `managedFields`; the 409 of the apiserver when `config` would
/// change a value another manager set and `force` is not given.
pub fn apply(
    current: Option<&Value>,
    config: &Value,
    writer: &Writer<'_>,
    force: bool,
    now: &str,
) -> Result<Value, ApiError> {
    let empty = json!({});
    let live = current.unwrap_or(&empty);
    let live_fields = fields(live);
    let applied = fields(config);
    let mut entries = entries_before(current, live);
    let mut mine = match entries.iter().position(|e| e.is(writer)) {
        Some(index) => entries.remove(index),
        None => Entry::new(writer),
    };
    // A leaf another manager owns and the configuration gives another value: a conflict.
    let mut conflicts: Vec<(usize, FieldPath)> = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        for (path, value) in &applied {
            if value.is_some() && entry.set.contains(path) && live_fields.get(path) != Some(value) {
                conflicts.push((index, path.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflict_error(&entries, &conflicts));
    }
    let changed: BTreeSet<FieldPath> = applied
        .iter()
        .filter(|(path, value)| live_fields.get(*path) != Some(*value))
        .map(|(path, _)| path.clone())
        .collect();
    let mut object = patch::apply(PatchType::Strategic, live, config)?;
    // What this manager applied before and no longer applies goes, unless someone else owns it.
    let dropped: Vec<FieldPath> = mine
        .set
        .iter()
        .filter(|path| !applied.contains_key(*path))
        .filter(|path| !entries.iter().any(|e| e.set.contains(*path)))
        .cloned()
        .collect();
    for path in dropped.iter().rev() {
        remove_path(&mut object, path);
    }
    for entry in &mut entries {
        entry.set.retain(|path| !changed.contains(path));
    }
    mine.set = applied.into_keys().collect();
    mine.api_version = writer.api_version.to_owned();
    mine.time = Some(json!(now));
    entries.push(mine);
    write_entries(&mut object, entries);
    Ok(object)
}

/// The apiserver's 409 for apply conflicts, with a `FieldManagerConflict` cause per field.
fn conflict_error(entries: &[Entry], conflicts: &[(usize, FieldPath)]) -> ApiError {
    let manager = |index: usize| {
        let entry = &entries[index];
        let mut name = format!("{:?}", entry.manager);
        if !entry.subresource.is_empty() {
            name = format!("{name} with subresource {:?}", entry.subresource);
        }
        if entry.operation == Operation::Update.as_str() {
            name = match entry.time.as_ref().and_then(Value::as_str) {
                Some(time) => format!("{name} using {} at {time}", entry.api_version),
                None => format!("{name} using {}", entry.api_version),
            };
        }
        name
    };
    let message = match conflicts {
        [(index, path)] => {
            format!("Apply failed with 1 conflict: conflict with {}: {}", manager(*index), display_path(path))
        }
        many => {
            let mut by_manager: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (index, path) in many {
                by_manager.entry(manager(*index)).or_default().push(display_path(path));
            }
            let lines: Vec<String> = by_manager
                .into_iter()
                .flat_map(|(manager, paths)| {
                    std::iter::once(format!("conflicts with {manager}:"))
                        .chain(paths.into_iter().map(|p| format!("- {p}")))
                })
                .collect();
            format!("Apply failed with {} conflicts: {}", many.len(), lines.join("\n"))
        }
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(index, path)| {
            json!({"reason": "FieldManagerConflict", "message": format!("conflict with {}", manager(*index)),
                "field": display_path(path)})
        })
        .collect();
    ApiError::apply_conflict(message, causes)
}

/// Removes the field at `path` from `object` (a list item by its key or value).
fn remove_path(object: &mut Value, path: &FieldPath) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut node = object;
    for element in parents {
        let Some(next) = child_mut(node, element) else { return };
        node = next;
    }
    if let Some(field) = last.strip_prefix("f:") {
        if let Some(map) = node.as_object_mut() {
            map.remove(field);
        }
    } else if let Value::Array(items) = node {
        items.retain(|item| !item_matches(item, last));
    }
}

fn child_mut<'a>(node: &'a mut Value, element: &str) -> Option<&'a mut Value> {
    if let Some(field) = element.strip_prefix("f:") {
        return node.get_mut(field);
    }
    node.as_array_mut()?.iter_mut().find(|item| item_matches(item, element))
}

fn item_matches(item: &Value, element: &str) -> bool {
    if let Some(key) = element.strip_prefix("k:") {
        let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(key) else { return false };
        return fields.iter().all(|(k, v)| item.get(k) == Some(v));
    }
    if let Some(value) = element.strip_prefix("v:") {
        return serde_json::from_str::<Value>(value).is_ok_and(|v| &v == item);
    }
    false
}

/// The manager that last set the field at `pointer`-like `path` (`["spec", "replicas"]`), if any entry
/// owns it.
#[cfg(test)]
fn owner_of(object: &Value, path: &[&str]) -> Option<String> {
    let wanted: FieldPath = path
        .iter()
        .map(|p| if p.starts_with("k:") || p.starts_with("v:") { (*p).to_owned() } else { format!("f:{p}") })
        .collect();
    object
        .pointer("/metadata/managedFields")?
        .as_array()?
        .iter()
        .filter_map(Entry::parse)
        .find(|entry| entry.set.contains(&wanted))
        .map(|entry| entry.manager)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(manager: &str) -> Writer<'_> {
        Writer { manager, operation: Operation::Update, subresource: None, api_version: "apps/v1" }
    }

    fn applier(manager: &str) -> Writer<'_> {
        Writer { manager, operation: Operation::Apply, subresource: None, api_version: "apps/v1" }
    }

    fn deployment(memory: &str, replicas: i64) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1", "labels": {"app": "web"}},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "app", "image": "web:1",
                "resources": {"limits": {"memory": memory}}}]}}}})
    }

    #[test]
    fn a_created_object_records_every_field_in_the_fields_v1_form() {
        let mut object = deployment("128Mi", 2);
        record_update(None, &mut object, &writer("kubectl-client-side-apply"), "2026-12-05T10:00:00Z");
        let entries = object["metadata"]["managedFields"].as_array().expect("entries");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["manager"], "kubectl-client-side-apply");
        assert_eq!(entries[0]["operation"], "Update");
        assert_eq!(entries[0]["apiVersion"], "apps/v1");
        assert_eq!(entries[0]["time"], "2026-12-05T10:00:00Z");
        assert_eq!(
            entries[0]["fieldsV1"],
            json!({"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {
                    ".": {}, "f:image": {}, "f:name": {}, "f:resources": {"f:limits": {".": {}, "f:memory": {}}}}}}}}})
        );
    }

    #[test]
    fn an_update_moves_the_fields_it_changed_to_its_writer_and_leaves_the_rest() {
        let mut created = deployment("128Mi", 2);
        record_update(None, &mut created, &writer("kubectl-client-side-apply"), "t1");
        let mut raised = created.clone();
        raised["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = json!("256Mi");
        record_update(Some(&created), &mut raised, &writer("kubesent-remediator"), "t2");
        let memory = [
            "spec",
            "template",
            "spec",
            "containers",
            "k:{\"name\":\"app\"}",
            "resources",
            "limits",
            "memory",
        ];
        assert_eq!(owner_of(&raised, &memory).as_deref(), Some("kubesent-remediator"));
        assert_eq!(owner_of(&raised, &["spec", "replicas"]).as_deref(), Some("kubectl-client-side-apply"));
        // The same write again changes nothing, so nothing moves and no time changes.
        let mut again = raised.clone();
        record_update(Some(&raised), &mut again, &writer("someone-else"), "t3");
        assert_eq!(again["metadata"]["managedFields"], raised["metadata"]["managedFields"]);
        // A removed field leaves every set; an entry left with nothing is dropped.
        let mut removed = raised.clone();
        removed["spec"]["template"]["spec"]["containers"][0]["resources"] = json!({});
        record_update(Some(&raised), &mut removed, &writer("kubectl-edit"), "t4");
        let managers: Vec<&str> = removed["metadata"]["managedFields"]
            .as_array()
            .expect("entries")
            .iter()
            .filter_map(|e| e["manager"].as_str())
            .collect();
        assert_eq!(managers, ["kubectl-client-side-apply", "kubectl-edit"]);
    }

    #[test]
    fn an_apply_that_changes_another_managers_value_conflicts_unless_forced() {
        let mut live = deployment("128Mi", 2);
        record_update(None, &mut live, &writer("kubectl-client-side-apply"), "2026-12-05T10:00:00Z");
        let config = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 3}});
        let refused =
            apply(Some(&live), &config, &applier("argocd-controller"), false, "t2").expect_err("conflict");
        assert_eq!(refused.code, 409);
        assert_eq!(
            refused.message,
            "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1 at 2026-12-05T10:00:00Z: .spec.replicas"
        );
        let forced = apply(Some(&live), &config, &applier("argocd-controller"), true, "t2").expect("forced");
        assert_eq!(forced["spec"]["replicas"], 3);
        assert_eq!(owner_of(&forced, &["spec", "replicas"]).as_deref(), Some("argocd-controller"));
        // The same value is shared, not a conflict.
        let same = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 2}});
        let shared = apply(Some(&live), &same, &applier("flux"), false, "t3").expect("no conflict");
        assert_eq!(shared["metadata"]["managedFields"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn a_field_an_applier_stops_applying_is_removed_unless_another_manager_owns_it() {
        let first = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web", "tier": "front"}},
            "spec": {"replicas": 2}});
        let live = apply(None, &first, &applier("flux"), false, "t1").expect("created");
        let second = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}}});
        let next = apply(Some(&live), &second, &applier("flux"), false, "t2").expect("applied");
        assert_eq!(next["metadata"]["labels"], json!({"app": "web"}));
        assert!(next["spec"].get("replicas").is_none(), "no longer applied and nobody else's: {next}");
    }

    #[test]
    fn conflicts_with_several_fields_are_listed_by_manager_with_their_paths() {
        let mut live = deployment("128Mi", 2);
        record_update(None, &mut live, &writer("kubectl"), "2026-12-05T10:00:00Z");
        let config = json!({"spec": {"replicas": 5, "template": {"spec": {"containers": [{"name": "app", "image": "web:2"}]}}}});
        let refused = apply(Some(&live), &config, &applier("flux"), false, "t").expect_err("conflicts");
        assert_eq!(
            refused.message,
            "Apply failed with 2 conflicts: conflicts with \"kubectl\" using apps/v1 at 2026-12-05T10:00:00Z:\n- .spec.replicas\n- .spec.template.spec.containers[name=\"app\"].image"
        );
        let causes =
            refused.details.as_ref().and_then(|d| d["causes"].as_array().cloned()).unwrap_or_default();
        assert_eq!(causes.len(), 2);
        assert_eq!(causes[0]["reason"], "FieldManagerConflict");
    }

    #[test]
    fn fields_v1_round_trips_through_its_paths() {
        let object = deployment("1Gi", 1);
        let set: BTreeSet<FieldPath> = fields(&object).into_keys().collect();
        assert_eq!(from_fields_v1(&to_fields_v1(&set)), set);
    }
}
