//! The object store: one ordered collection per resource, a cluster-wide revision counter (the
//! `resourceVersion`), and per-resource watch history with compaction, like the apiserver's watch cache.
//!
//! Objects are kept as compact JSON bytes plus the few fields selectors need, so that a list or a watch
//! fan-out copies bytes instead of re-serialising, and a pod costs little more than its JSON.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::{
    api_error::ApiError,
    resources::{self, ResourceDef},
    selectors::{FieldSelector, LabelSelector},
};

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects. Ordered like etcd keys.
pub type ObjectKey = (String, String);

/// One stored object.
#[derive(Debug)]
pub struct StoredObject {
    /// Namespace (empty for cluster-scoped objects).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.resourceVersion`.
    pub resource_version: u64,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// Values of the selectable fields of this kind.
    fields: Vec<(&'static str, String)>,
    /// `metadata.ownerReferences`, read once when the object is written (controllers route every
    /// change by its owner; re-parsing a 10 KiB pod for that costs more than the change itself).
    pub owners: Vec<OwnerLink>,
    /// The object as compact JSON.
    pub json: Bytes,
}

/// One `metadata.ownerReferences` entry, as far as controllers and garbage collection read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerLink {
    /// Owner kind.
    pub kind: String,
    /// Owner name.
    pub name: String,
    /// Owner uid.
    pub uid: String,
    /// Whether this owner is the managing controller.
    pub controller: bool,
}

impl StoredObject {
    /// The managing controller's kind and name, if any.
    pub fn controller(&self) -> Option<(&str, &str)> {
        self.owners.iter().find(|o| o.controller).map(|o| (o.kind.as_str(), o.name.as_str()))
    }

    /// Whether an owner reference names `owner_uid`.
    pub fn is_owned_by(&self, owner_uid: &str) -> bool {
        self.owners.iter().any(|o| o.uid == owner_uid)
    }

    /// The object as a JSON value.
    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.json).unwrap_or(Value::Null)
    }

    /// The object as a typed value.
    pub fn typed<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        serde_json::from_slice(&self.json).map_err(ApiError::internal)
    }

    /// The value of a selectable field.
    pub fn field(&self, label: &str) -> Option<String> {
        match label {
            "metadata.name" => Some(self.name.clone()),
            "metadata.namespace" => Some(self.namespace.clone()),
            _ => self.fields.iter().find(|(l, _)| *l == label).map(|(_, v)| v.clone()),
        }
    }
}

/// What a watch event says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

impl EventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in the watch history and fanned out to watchers.
#[derive(Debug)]
pub struct WatchRecord {
    /// What happened.
    pub event: EventType,
    /// The object after the change (for DELETED: its last state, at the deletion's revision).
    pub object: Arc<StoredObject>,
    /// The object before the change, for MODIFIED (so selector transitions can be computed).
    pub previous: Option<Arc<StoredObject>>,
}

/// Which objects a list or watch selects.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this namespace, if set.
    pub namespace: Option<String>,
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
}

impl Filter {
    /// Whether `object` is selected.
    pub fn matches(&self, object: &StoredObject) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == object.namespace)
            && self.labels.matches(&object.labels)
            && self.fields.matches(&|f| object.field(f))
    }
}

/// A change to make under the collection's lock.
#[derive(Debug)]
pub enum Mutation {
    /// Store this object (create or replace).
    Put(Value),
    /// Store an object serialised ahead of time (create or replace); see [`PreparedObject`].
    PutPrepared(Arc<PreparedObject>),
    /// Remove the object.
    Delete,
    /// Leave everything as it is.
    Unchanged,
}

/// A page of a list.
#[derive(Debug)]
pub struct ListPage {
    /// The selected objects in key order.
    pub items: Vec<Arc<StoredObject>>,
    /// The list's `metadata.resourceVersion`.
    pub resource_version: u64,
    /// `metadata.continue`, when more items remain.
    pub continue_token: Option<String>,
    /// `metadata.remainingItemCount`, when known.
    pub remaining: Option<u64>,
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchStart {
    /// Every change after this resourceVersion.
    After(u64),
    /// A synthetic ADDED for every existing object, then every change.
    InitialEvents,
}

/// A registered watch: what to send first, then the live feed.
pub struct WatchSubscription {
    /// Events to send before any live one.
    pub initial: Vec<Arc<WatchRecord>>,
    /// Live changes of the whole collection (filtering is the watcher's job).
    pub live: broadcast::Receiver<Arc<WatchRecord>>,
    /// The revision the watch is known to be current at once `initial` is sent.
    pub start_revision: u64,
}

/// Tunables of the store.
#[derive(Debug, Clone, Copy)]
pub struct StoreConfig {
    /// Watch events retained per resource; older resourceVersions get 410 Expired.
    pub history_per_resource: usize,
    /// Live events buffered per watcher before a slow watcher is disconnected.
    pub watch_buffer: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { history_per_resource: 10_000, watch_buffer: 16_384 }
    }
}

struct Collection {
    objects: BTreeMap<ObjectKey, Arc<StoredObject>>,
    /// The objects naming each owner uid in their owner references (an informer's index: a controller
    /// finds its pods without reading every pod of the namespace).
    by_owner: HashMap<String, BTreeSet<ObjectKey>>,
    history: VecDeque<Arc<WatchRecord>>,
    /// The newest revision dropped from `history`; watches from before it have expired.
    compacted_through: u64,
    live: broadcast::Sender<Arc<WatchRecord>>,
}

/// The simulated etcd.
pub struct Store {
    revision: AtomicU64,
    collections: HashMap<(&'static str, &'static str), Mutex<Collection>>,
    config: StoreConfig,
}

#[derive(Serialize, Deserialize)]
struct ContinueToken {
    rv: u64,
    start: String,
}

impl Collection {
    /// Moves `key` in the owner index from `before`'s owners to `after`'s.
    fn index(&mut self, key: &ObjectKey, before: Option<&StoredObject>, after: Option<&StoredObject>) {
        for owner in before.map(|b| b.owners.as_slice()).unwrap_or_default() {
            if let Some(keys) = self.by_owner.get_mut(&owner.uid) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_owner.remove(&owner.uid);
                }
            }
        }
        for owner in after.map(|a| a.owners.as_slice()).unwrap_or_default() {
            self.by_owner.entry(owner.uid.clone()).or_default().insert(key.clone());
        }
    }
}

impl Store {
    /// An empty store serving every resource of [`resources::ALL`].
    pub fn new(config: StoreConfig) -> Self {
        let collections = resources::ALL
            .iter()
            .map(|def| {
                let (live, _) = broadcast::channel(config.watch_buffer.max(16));
                let collection = Collection {
                    objects: BTreeMap::new(),
                    by_owner: HashMap::new(),
                    history: VecDeque::new(),
                    compacted_through: 0,
                    live,
                };
                ((def.group, def.plural), Mutex::new(collection))
            })
            .collect();
        Self { revision: AtomicU64::new(1), collections, config }
    }

    fn collection(&self, def: &ResourceDef) -> MutexGuard<'_, Collection> {
        let mutex = self.collections.get(&(def.group, def.plural)).unwrap_or_else(|| {
            // NB: every ResourceDef comes from resources::ALL, which built this map.
            unreachable!("resource {} is not registered", def.plural)
        });
        mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The newest revision of the whole store.
    pub fn current_revision(&self) -> u64 {
        self.revision.load(Ordering::SeqCst)
    }

    /// One object.
    pub fn get(&self, def: &ResourceDef, namespace: &str, name: &str) -> Result<Arc<StoredObject>, ApiError> {
        let collection = self.collection(def);
        collection
            .objects
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(def, name))
    }

    /// Number of objects of a resource.
    pub fn count(&self, def: &ResourceDef) -> usize {
        self.collection(def).objects.len()
    }

    /// A page of selected objects in key order.
    pub fn list(
        &self,
        def: &ResourceDef,
        filter: &Filter,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<ListPage, ApiError> {
        let token = match continue_token {
            Some(text) => Some(decode_continue(text)?),
            None => None,
        };
        let collection = self.collection(def);
        let resource_version = match &token {
            Some(t) if t.rv < collection.compacted_through => return Err(ApiError::expired_continue()),
            Some(t) => t.rv,
            None => self.current_revision(),
        };
        let start_key: Option<ObjectKey> = token.map(|t| match t.start.split_once('/') {
            Some((ns, name)) => (ns.to_owned(), name.to_owned()),
            None => (String::new(), t.start),
        });
        let range = match (&start_key, &filter.namespace) {
            (Some(k), _) => collection
                .objects
                .range::<ObjectKey, _>((std::ops::Bound::Excluded(k), std::ops::Bound::Unbounded)),
            (None, Some(ns)) => collection.objects.range::<ObjectKey, _>((ns.clone(), String::new())..),
            (None, None) => collection.objects.range::<ObjectKey, _>(..),
        };
        let limit = limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut last_key = None;
        let mut more = false;
        for (key, object) in range {
            if filter.namespace.as_ref().is_some_and(|ns| *ns != key.0) {
                if filter.namespace.as_ref().is_some_and(|ns| key.0 > *ns) {
                    break;
                }
                continue;
            }
            if !filter.matches(object) {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(object.clone());
            last_key = Some(key.clone());
        }
        let continue_token = match (more, last_key) {
            (true, Some((ns, name))) => {
                Some(encode_continue(&ContinueToken { rv: resource_version, start: format!("{ns}/{name}") }))
            }
            _ => None,
        };
        Ok(ListPage { items, resource_version, continue_token, remaining: None })
    }

    /// Reads, decides and writes one object atomically: `decide` sees the current object (if any)
    /// and returns the change. Returns the object after the change (for a delete: its final state),
    /// or `None` when nothing changed and nothing existed.
    pub fn mutate(
        &self,
        def: &ResourceDef,
        namespace: &str,
        name: &str,
        decide: impl FnOnce(Option<&Arc<StoredObject>>) -> Result<Mutation, ApiError>,
    ) -> Result<Option<Arc<StoredObject>>, ApiError> {
        let result = self.mutate_one(def, namespace, name, decide)?;
        // An Event is one object served by two APIs: its twin follows every write.
        if def == &crate::resources::EVENTS || def == &crate::resources::EVENTS_V1 {
            self.mirror_event(def, namespace, name);
        }
        Ok(result)
    }

    /// Writes (or removes) the twin of Event `name` in the other Events API (see [`crate::event_views`]).
    fn mirror_event(&self, def: &ResourceDef, namespace: &str, name: &str) {
        use crate::{
            event_views,
            resources::{EVENTS, EVENTS_V1},
        };
        let (twin_def, convert): (&ResourceDef, fn(&Value) -> Value) = if def == &EVENTS {
            (&EVENTS_V1, event_views::to_events_v1)
        } else {
            (&EVENTS, event_views::to_core)
        };
        let written = self.collection(def).objects.get(&(namespace.to_owned(), name.to_owned())).cloned();
        let _ = self.mutate_one(twin_def, namespace, name, |current| {
            Ok(match (written, current) {
                (None, None) => Mutation::Unchanged,
                (None, Some(_)) => Mutation::Delete,
                (Some(event), current) => {
                    let twin = convert(&event.value());
                    if current.is_some_and(|c| event_views::same_content(&c.value(), &twin)) {
                        Mutation::Unchanged
                    } else {
                        Mutation::Put(twin)
                    }
                }
            })
        });
    }

    fn mutate_one(
        &self,
        def: &ResourceDef,
        namespace: &str,
        name: &str,
        decide: impl FnOnce(Option<&Arc<StoredObject>>) -> Result<Mutation, ApiError>,
    ) -> Result<Option<Arc<StoredObject>>, ApiError> {
        let key = (namespace.to_owned(), name.to_owned());
        let mut collection = self.collection(def);
        let current = collection.objects.get(&key).cloned();
        match decide(current.as_ref())? {
            Mutation::Unchanged => Ok(current),
            Mutation::Put(mut value) => {
                let rv = self.revision.fetch_add(1, Ordering::SeqCst) + 1;
                let object = Arc::new(build_object(def, namespace, name, rv, &mut value)?);
                collection.index(&key, current.as_deref(), Some(&object));
                collection.objects.insert(key, object.clone());
                let event = if current.is_some() { EventType::Modified } else { EventType::Added };
                self.record(
                    &mut collection,
                    WatchRecord { event, object: object.clone(), previous: current },
                );
                Ok(Some(object))
            }
            Mutation::PutPrepared(prepared) => {
                let rv = self.revision.fetch_add(1, Ordering::SeqCst) + 1;
                let object = Arc::new(prepared.at_revision(rv));
                collection.index(&key, current.as_deref(), Some(&object));
                collection.objects.insert(key, object.clone());
                let event = if current.is_some() { EventType::Modified } else { EventType::Added };
                self.record(
                    &mut collection,
                    WatchRecord { event, object: object.clone(), previous: current },
                );
                Ok(Some(object))
            }
            Mutation::Delete => {
                let Some(previous) = current else { return Err(ApiError::not_found(def, name)) };
                collection.index(&key, Some(&previous), None);
                collection.objects.remove(&key);
                let rv = self.revision.fetch_add(1, Ordering::SeqCst) + 1;
                let mut value = previous.value();
                let object = Arc::new(build_object(def, namespace, name, rv, &mut value)?);
                self.record(
                    &mut collection,
                    WatchRecord { event: EventType::Deleted, object: object.clone(), previous: None },
                );
                Ok(Some(object))
            }
        }
    }

    fn record(&self, collection: &mut Collection, record: WatchRecord) {
        let record = Arc::new(record);
        collection.history.push_back(record.clone());
        while collection.history.len() > self.config.history_per_resource {
            if let Some(dropped) = collection.history.pop_front() {
                collection.compacted_through = dropped.object.resource_version;
            }
        }
        // No receivers is fine: nobody is watching this resource.
        let _ = collection.live.send(record);
    }

    /// Drops all retained watch history of a resource, as an etcd compaction would.
    pub fn compact(&self, def: &ResourceDef) {
        let mut collection = self.collection(def);
        collection.history.clear();
        collection.compacted_through = self.current_revision();
    }

    /// Registers a watch. Watches from a compacted revision fail with 410 Expired.
    pub fn watch(
        &self,
        def: &ResourceDef,
        filter: &Filter,
        start: WatchStart,
    ) -> Result<WatchSubscription, ApiError> {
        let collection = self.collection(def);
        let live = collection.live.subscribe();
        let start_revision = self.current_revision();
        let initial = match start {
            WatchStart::After(rv) => {
                if rv < collection.compacted_through {
                    let oldest =
                        collection.history.front().map_or(start_revision, |r| r.object.resource_version);
                    return Err(ApiError::expired_watch(rv, oldest.saturating_sub(1)));
                }
                let from = collection.history.partition_point(|r| r.object.resource_version <= rv);
                collection.history.range(from..).cloned().collect()
            }
            WatchStart::InitialEvents => collection
                .objects
                .values()
                .filter(|o| filter.matches(o))
                .map(|o| Arc::new(WatchRecord { event: EventType::Added, object: o.clone(), previous: None }))
                .collect(),
        };
        Ok(WatchSubscription { initial, live, start_revision })
    }

    /// The live change feed of a resource (for in-process controllers).
    pub fn subscribe(&self, def: &ResourceDef) -> broadcast::Receiver<Arc<WatchRecord>> {
        self.collection(def).live.subscribe()
    }

    /// The objects of a resource in one namespace, without paging (for in-process use).
    pub fn in_namespace(&self, def: &ResourceDef, namespace: &str) -> Vec<Arc<StoredObject>> {
        let collection = self.collection(def);
        collection
            .objects
            .range::<ObjectKey, _>((namespace.to_owned(), String::new())..)
            .take_while(|((ns, _), _)| ns == namespace)
            .map(|(_, object)| object.clone())
            .collect()
    }

    /// The objects of a resource in one namespace whose owner references name `owner_uid` (for in-process
    /// controllers and garbage collection), from the owner index.
    pub fn owned_by(&self, def: &ResourceDef, namespace: &str, owner_uid: &str) -> Vec<Arc<StoredObject>> {
        let collection = self.collection(def);
        let Some(keys) = collection.by_owner.get(owner_uid) else { return Vec::new() };
        keys.iter()
            .filter(|(ns, _)| ns == namespace)
            .filter_map(|key| collection.objects.get(key).cloned())
            .collect()
    }

    /// All objects of a resource, without paging (for in-process use).
    pub fn all(&self, def: &ResourceDef) -> Vec<Arc<StoredObject>> {
        self.collection(def).objects.values().cloned().collect()
    }
}

fn encode_continue(token: &ContinueToken) -> String {
    base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(token).unwrap_or_default())
}

fn decode_continue(text: &str) -> Result<ContinueToken, ApiError> {
    let bad = || ApiError::bad_request(format!("invalid continue token {text:?}"));
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).map_err(|_| bad())?;
    serde_json::from_slice(&bytes).map_err(|_| bad())
}

/// Stamps kind, apiVersion and resourceVersion on `value` and indexes it.
/// An object serialised once, written many times: only the `resourceVersion` is filled in per write,
/// as etcd keeps objects without it and the apiserver sets it on the way out. Load generators use it
/// so that writing a 10 KiB pod costs a copy instead of a serialisation, and the machine's CPU goes
/// to the component under test.
#[derive(Debug)]
pub struct PreparedObject {
    template: StoredObject,
    /// Where the resourceVersion goes in `template.json`.
    rv_at: usize,
}

/// Stands in for the resourceVersion in a prepared object's JSON; cannot occur in serialised JSON
/// otherwise (a raw control character is always escaped).
const RV_PLACEHOLDER: &str = r"\u0000rv\u0000";

impl PreparedObject {
    /// Serialises `value` as `def` at `namespace/name`, with the resourceVersion left to each write.
    pub fn new(def: &ResourceDef, namespace: &str, name: &str, mut value: Value) -> Result<Self, ApiError> {
        let mut template = build_object_at(def, namespace, name, 0, "\0rv\0", &mut value)?;
        let needle = format!("\"resourceVersion\":\"{RV_PLACEHOLDER}\"");
        let at = find_bytes(&template.json, needle.as_bytes())
            .ok_or_else(|| ApiError::internal("resourceVersion placeholder not found"))?;
        let rv_at = at + "\"resourceVersion\":\"".len();
        let mut json = template.json.to_vec();
        json.drain(rv_at..rv_at + RV_PLACEHOLDER.len());
        template.json = Bytes::from(json);
        Ok(PreparedObject { template, rv_at })
    }

    fn at_revision(&self, rv: u64) -> StoredObject {
        let template = &self.template;
        let rv_text = rv.to_string();
        let mut json = Vec::with_capacity(template.json.len() + rv_text.len());
        json.extend_from_slice(&template.json[..self.rv_at]);
        json.extend_from_slice(rv_text.as_bytes());
        json.extend_from_slice(&template.json[self.rv_at..]);
        StoredObject {
            namespace: template.namespace.clone(),
            name: template.name.clone(),
            uid: template.uid.clone(),
            resource_version: rv,
            labels: template.labels.clone(),
            fields: template.fields.clone(),
            owners: template.owners.clone(),
            json: Bytes::from(json),
        }
    }
}

fn find_bytes(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn build_object(
    def: &ResourceDef,
    namespace: &str,
    name: &str,
    rv: u64,
    value: &mut Value,
) -> Result<StoredObject, ApiError> {
    build_object_at(def, namespace, name, rv, &rv.to_string(), value)
}

fn build_object_at(
    def: &ResourceDef,
    namespace: &str,
    name: &str,
    rv: u64,
    rv_text: &str,
    value: &mut Value,
) -> Result<StoredObject, ApiError> {
    let object =
        value.as_object_mut().ok_or_else(|| ApiError::bad_request("object must be a JSON object"))?;
    object.insert("kind".into(), Value::String(def.kind.to_owned()));
    object.insert("apiVersion".into(), Value::String(def.api_version()));
    let metadata = object
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()))
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
    metadata.insert("resourceVersion".into(), Value::String(rv_text.to_owned()));
    let uid = metadata.get("uid").and_then(Value::as_str).unwrap_or_default().to_owned();
    let labels: BTreeMap<String, String> = metadata
        .get("labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
        .unwrap_or_default();
    let owners = metadata
        .get("ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .map(|o| {
                    let text = |key: &str| o.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
                    OwnerLink {
                        kind: text("kind"),
                        name: text("name"),
                        uid: text("uid"),
                        controller: o.get("controller").and_then(Value::as_bool) == Some(true),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let fields = def.field_labels.iter().map(|label| (*label, field_value(value, label))).collect();
    Ok(StoredObject {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        uid,
        resource_version: rv,
        labels,
        fields,
        owners,
        json: Bytes::from(serde_json::to_vec(value).map_err(ApiError::internal)?),
    })
}

/// The string value of a selectable field, as the apiserver's field set would hold it.
fn field_value(object: &Value, label: &str) -> String {
    let path = match label {
        "source" => "/source/component".to_owned(),
        other => format!("/{}", other.replace('.', "/")),
    };
    match object.pointer(&path) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ if label == "spec.hostNetwork" => "false".to_owned(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::PODS;
    use serde_json::json;

    fn put(store: &Store, ns: &str, name: &str, labels: Value) -> Arc<StoredObject> {
        store
            .mutate(&PODS, ns, name, |_| {
                Ok(Mutation::Put(json!({"metadata": {"name": name, "namespace": ns, "labels": labels}})))
            })
            .expect("put")
            .expect("object")
    }

    #[test]
    fn every_write_gets_a_new_increasing_resource_version() {
        let store = Store::new(StoreConfig::default());
        let a = put(&store, "shop", "a", json!({}));
        let b = put(&store, "shop", "a", json!({}));
        assert!(b.resource_version > a.resource_version);
        assert_eq!(b.value()["metadata"]["resourceVersion"], b.resource_version.to_string());
    }

    #[test]
    fn a_prepared_object_is_stored_as_the_same_write_of_its_value_would_be() {
        let store = Store::new(StoreConfig::default());
        let value = json!({"metadata": {"name": "a", "namespace": "shop", "labels": {"app": "x"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "x-1", "uid": "u1", "controller": true}]},
            "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let prepared = Arc::new(PreparedObject::new(&PODS, "shop", "a", value.clone()).expect("prepared"));
        let first = store
            .mutate(&PODS, "shop", "a", |_| Ok(Mutation::PutPrepared(prepared.clone())))
            .expect("write")
            .expect("object");
        let second = store
            .mutate(&PODS, "shop", "a", |_| Ok(Mutation::PutPrepared(prepared.clone())))
            .expect("write")
            .expect("object");
        let plain =
            store.mutate(&PODS, "shop", "b", |_| Ok(Mutation::Put(value))).expect("write").expect("object");
        assert!(second.resource_version > first.resource_version);
        for object in [&first, &second] {
            let mut expected = plain.value();
            expected["metadata"]["resourceVersion"] = json!(object.resource_version.to_string());
            assert_eq!(object.value(), expected);
            assert_eq!(object.labels, plain.labels);
            assert_eq!(object.field("spec.nodeName"), Some("n1".to_owned()));
            assert_eq!(object.controller(), Some(("ReplicaSet", "x-1")));
        }
    }

    #[test]
    fn the_owner_index_follows_adoption_release_and_deletion() {
        let store = Store::new(StoreConfig::default());
        let owned = |uid: &str| json!([{"kind": "ReplicaSet", "name": "rs", "uid": uid, "controller": true}]);
        let write = |ns: &str, name: &str, owners: Value| {
            store
                .mutate(&PODS, ns, name, |_| {
                    Ok(Mutation::Put(
                        json!({"metadata": {"name": name, "namespace": ns, "ownerReferences": owners}}),
                    ))
                })
                .expect("put");
        };
        let names = |ns: &str, uid: &str| {
            store.owned_by(&PODS, ns, uid).iter().map(|o| o.name.clone()).collect::<Vec<_>>()
        };
        write("shop", "b", owned("u1"));
        write("shop", "a", owned("u1"));
        write("other", "c", owned("u1"));
        write("shop", "d", json!([]));
        assert_eq!(names("shop", "u1"), ["a", "b"], "in key order, this namespace only");
        write("shop", "b", owned("u2"));
        assert_eq!(names("shop", "u1"), ["a"]);
        assert_eq!(names("shop", "u2"), ["b"]);
        store.mutate(&PODS, "shop", "a", |_| Ok(Mutation::Delete)).expect("deleted");
        assert!(names("shop", "u1").is_empty());
        assert_eq!(names("other", "u1"), ["c"]);
    }

    #[test]
    fn paging_with_continue_visits_every_object_once() {
        let store = Store::new(StoreConfig::default());
        for i in 0..7 {
            put(&store, if i % 2 == 0 { "a" } else { "b" }, &format!("p{i}"), json!({}));
        }
        let mut seen = Vec::new();
        let mut token = None;
        loop {
            let page = store.list(&PODS, &Filter::default(), Some(3), token.as_deref()).expect("page");
            seen.extend(page.items.iter().map(|o| o.name.clone()));
            match page.continue_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        seen.sort();
        assert_eq!(seen, ["p0", "p1", "p2", "p3", "p4", "p5", "p6"]);
    }

    #[test]
    fn a_watch_from_a_compacted_revision_is_expired() {
        let store = Store::new(StoreConfig { history_per_resource: 2, watch_buffer: 16 });
        let first = put(&store, "shop", "a", json!({}));
        for _ in 0..3 {
            put(&store, "shop", "a", json!({}));
        }
        let err = store.watch(&PODS, &Filter::default(), WatchStart::After(first.resource_version)).err();
        assert_eq!(err.map(|e| e.code), Some(410));
        let recent = store.current_revision() - 1;
        let sub =
            store.watch(&PODS, &Filter::default(), WatchStart::After(recent)).expect("recent rv is fine");
        assert_eq!(sub.initial.len(), 1);
    }
}
