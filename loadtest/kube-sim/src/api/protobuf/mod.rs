//! Request bodies in the Kubernetes protobuf encoding (`application/vnd.kubernetes.protobuf`), which
//! kubectl's typed clients send (`kubectl create namespace|deployment|configmap|secret|job`), decoded to
//! the JSON form the rest of kube-sim handles, as the apiserver's protobuf codec decodes them to the same
//! Go structs its JSON codec fills.
//!
//! The encoding: the four bytes `k8s\0`, then a `runtime.Unknown` message whose `typeMeta` names the
//! apiVersion and kind and whose `raw` holds the object's own message. Field numbers and JSON names are
//! in the generated [`schema`] table. The Go side writes every non-pointer field, zero or not, so empty
//! strings and the zero time are dropped here as the JSON codec's `omitempty` would drop them.

mod schema;

use base64::Engine;
use serde_json::{Map, Value};

use crate::resources::ResourceDef;

/// The media type of the Kubernetes protobuf encoding.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";
/// `time.Time{}` in seconds since the Unix epoch: what Go writes for a time never set.
const GO_ZERO_TIME_SECONDS: i64 = -62_135_596_800;

/// A message of the table: its full proto name (without `io.k8s.`) and fields.
pub(crate) struct Message {
    pub(crate) name: &'static str,
    pub(crate) fields: &'static [Field],
}

/// One field of a message.
pub(crate) struct Field {
    tag: u32,
    pub(crate) json: &'static str,
    pub(crate) shape: Shape,
    pub(crate) ty: Type,
    /// The Go struct tags for patches and lists, comma-separated (`patchMergeKey=name,listType=map`).
    pub(crate) ext: &'static str,
}

/// A field with no struct tags, for the table's `..F`.
const F: Field = Field { tag: 0, json: "", shape: Shape::One, ty: Type::String, ext: "" };

/// How a field's values are laid out.
pub(crate) enum Shape {
    /// One value.
    One,
    /// A repeated field: a JSON array.
    List,
    /// A `map<string, …>`: a JSON object.
    Map,
    /// A Go struct embedded in its parent: its fields are the parent's in JSON.
    Inline,
}

/// What a field holds.
pub(crate) enum Type {
    String,
    Bool,
    Int,
    /// Bytes: base64 in JSON.
    Bytes,
    /// Another message of the table.
    Msg(&'static str),
    /// `meta/v1.Time`: RFC 3339, seconds.
    Time,
    /// `meta/v1.MicroTime`: RFC 3339, microseconds.
    MicroTime,
    /// `runtime.RawExtension`, `meta/v1.FieldsV1`: JSON held as bytes.
    RawJson,
    /// `resource.Quantity`: its text.
    Quantity,
    /// `intstr.IntOrString`: a number or a string.
    IntOrString,
}

/// Why a protobuf body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn error(message: impl Into<String>) -> DecodeError {
    DecodeError(message.into())
}

/// The proto message of a served kind: `api.<group>.<version>.<Kind>`.
pub(crate) fn message_name(def: &ResourceDef) -> String {
    let group = if def.group.is_empty() { "core" } else { def.group.split('.').next().unwrap_or(def.group) };
    format!("api.{group}.{}.{}", def.version, def.kind)
}

/// The message of the table with this proto name.
pub(crate) fn message(name: &str) -> Result<&'static Message, DecodeError> {
    schema::MESSAGES
        .binary_search_by(|m| m.name.cmp(name))
        .map(|i| &schema::MESSAGES[i])
        .map_err(|_| error(format!("no protobuf message io.k8s.{name}")))
}

/// Decodes a protobuf request body for `def` to its JSON form, with `apiVersion` and `kind` set from the
/// envelope (which must name `def`'s kind).
pub fn decode(def: &ResourceDef, body: &[u8]) -> Result<Value, DecodeError> {
    decode_as(&def.api_version(), def.kind, &message_name(def), body)
}

/// Decodes a `policy/v1` Eviction (the body of `pods/eviction`, which `kubectl drain` sends).
pub fn decode_eviction(body: &[u8]) -> Result<Value, DecodeError> {
    decode_as("policy/v1", "Eviction", "api.policy.v1.Eviction", body)
}

fn decode_as(
    want_version: &str,
    want_kind: &str,
    message_name: &str,
    body: &[u8],
) -> Result<Value, DecodeError> {
    let envelope = body.strip_prefix(MAGIC).ok_or_else(|| error("provided object is not protobuf"))?;
    let (mut api_version, mut kind, mut raw, mut encoding) =
        (String::new(), String::new(), None, String::new());
    let mut reader = Reader::new(envelope);
    while let Some((tag, wire)) = reader.key()? {
        match tag {
            1 => {
                let mut meta = Reader::new(reader.len_delimited(wire)?);
                while let Some((tag, wire)) = meta.key()? {
                    match tag {
                        1 => api_version = meta.string(wire)?,
                        2 => kind = meta.string(wire)?,
                        _ => meta.skip(wire)?,
                    }
                }
            }
            2 => raw = Some(reader.len_delimited(wire)?),
            3 => encoding = reader.string(wire)?,
            _ => reader.skip(wire)?,
        }
    }
    if !encoding.is_empty() {
        return Err(error(format!("unsupported content encoding {encoding:?}")));
    }
    if api_version != want_version || kind != want_kind {
        return Err(error(format!(
            "the object provided is unrecognized (must be of type {want_kind}): {api_version}, Kind={kind}"
        )));
    }
    let mut object = decode_message(raw.unwrap_or_default(), message(message_name)?)?;
    object.insert("apiVersion".into(), Value::String(api_version));
    object.insert("kind".into(), Value::String(kind));
    Ok(Value::Object(object))
}

fn decode_message(bytes: &[u8], message: &Message) -> Result<Map<String, Value>, DecodeError> {
    let mut object = Map::new();
    decode_into(bytes, message, &mut object)?;
    Ok(object)
}

fn decode_into(bytes: &[u8], message: &Message, object: &mut Map<String, Value>) -> Result<(), DecodeError> {
    let mut reader = Reader::new(bytes);
    while let Some((tag, wire)) = reader.key()? {
        let Some(field) = message.fields.iter().find(|f| f.tag == tag) else {
            reader.skip(wire)?;
            continue;
        };
        let at = || format!("{}.{}", message.name, field.json);
        match field.shape {
            Shape::One => {
                if let Some(value) = value(&field.ty, wire, &mut reader).map_err(|e| in_field(e, &at()))? {
                    object.insert(field.json.into(), value);
                }
            }
            Shape::List => {
                let list = object.entry(field.json).or_insert_with(|| Value::Array(Vec::new()));
                let Value::Array(list) = list else { return Err(error(format!("{} repeated", at()))) };
                if wire == WIRE_LEN && field.ty.is_packable() {
                    let mut packed = Reader::new(reader.len_delimited(wire)?);
                    while !packed.done() {
                        let item =
                            value(&field.ty, field.ty.wire(), &mut packed).map_err(|e| in_field(e, &at()))?;
                        list.extend(item);
                    }
                } else {
                    let item = value(&field.ty, wire, &mut reader).map_err(|e| in_field(e, &at()))?;
                    // An empty string in a list is an item, not an unset field.
                    list.push(item.unwrap_or_else(|| Value::String(String::new())));
                }
            }
            Shape::Map => {
                let mut entry = Reader::new(reader.len_delimited(wire)?);
                let (mut key, mut item) = (String::new(), None);
                while let Some((tag, wire)) = entry.key()? {
                    match tag {
                        1 => key = entry.string(wire)?,
                        2 => item = value(&field.ty, wire, &mut entry).map_err(|e| in_field(e, &at()))?,
                        _ => entry.skip(wire)?,
                    }
                }
                let map = object.entry(field.json).or_insert_with(|| Value::Object(Map::new()));
                let Value::Object(map) = map else { return Err(error(format!("{} map", at()))) };
                // A map's empty value is a value (`data: {key: ""}`).
                map.insert(key, item.unwrap_or_else(|| Value::String(String::new())));
            }
            Shape::Inline => {
                let Type::Msg(name) = field.ty else { return Err(error(format!("{} inline", at()))) };
                decode_into(reader.len_delimited(wire)?, self::message(name)?, object)?;
            }
        }
    }
    Ok(())
}

fn in_field(e: DecodeError, at: &str) -> DecodeError {
    error(format!("{at}: {e}"))
}

impl Type {
    fn is_packable(&self) -> bool {
        matches!(self, Type::Bool | Type::Int)
    }

    fn wire(&self) -> u8 {
        match self {
            Type::Bool | Type::Int => WIRE_VARINT,
            _ => WIRE_LEN,
        }
    }
}

/// One value of type `ty`; `None` for what JSON leaves out (an empty string, the zero time).
fn value(ty: &Type, wire: u8, reader: &mut Reader<'_>) -> Result<Option<Value>, DecodeError> {
    let value = match ty {
        Type::String => Some(reader.string(wire)?).filter(|s| !s.is_empty()).map(Value::String),
        Type::Bytes => {
            Some(Value::String(base64::engine::general_purpose::STANDARD.encode(reader.len_delimited(wire)?)))
        }
        Type::Bool => Some(Value::Bool(reader.varint_of(wire)? != 0)),
        // int32 and int64 alike: a negative int32 is sign-extended to ten bytes on the wire.
        Type::Int => Some(Value::from(reader.varint_of(wire)? as i64)),
        Type::Msg(name) => Some(Value::Object(decode_message(reader.len_delimited(wire)?, message(name)?)?)),
        Type::Time | Type::MicroTime => {
            let (seconds, nanos) = ints(reader.len_delimited(wire)?)?;
            time(seconds, nanos, matches!(ty, Type::MicroTime))?.map(Value::String)
        }
        Type::RawJson => {
            let raw = first_bytes(reader.len_delimited(wire)?)?;
            if raw.is_empty() {
                None
            } else {
                Some(serde_json::from_slice(raw).map_err(|e| error(format!("raw JSON: {e}")))?)
            }
        }
        Type::Quantity => {
            let text = first_bytes(reader.len_delimited(wire)?)?;
            Some(Value::String(String::from_utf8(text.to_vec()).map_err(|_| error("invalid UTF-8"))?))
        }
        Type::IntOrString => {
            let mut inner = Reader::new(reader.len_delimited(wire)?);
            let (mut kind, mut int, mut text) = (0u64, 0i64, String::new());
            while let Some((tag, wire)) = inner.key()? {
                match tag {
                    1 => kind = inner.varint_of(wire)?,
                    2 => int = inner.varint_of(wire)? as i64,
                    3 => text = inner.string(wire)?,
                    _ => inner.skip(wire)?,
                }
            }
            Some(if kind == 1 { Value::String(text) } else { Value::from(int) })
        }
    };
    Ok(value)
}

/// Fields 1 and 2 of a message as integers (Time's seconds and nanos).
fn ints(bytes: &[u8]) -> Result<(i64, i64), DecodeError> {
    let mut reader = Reader::new(bytes);
    let (mut first, mut second) = (0, 0);
    while let Some((tag, wire)) = reader.key()? {
        match tag {
            1 => first = reader.varint_of(wire)? as i64,
            2 => second = reader.varint_of(wire)? as i64,
            _ => reader.skip(wire)?,
        }
    }
    Ok((first, second))
}

/// Field 1 of a message as bytes (RawExtension's raw, FieldsV1's Raw, Quantity's string).
fn first_bytes(bytes: &[u8]) -> Result<&[u8], DecodeError> {
    let mut reader = Reader::new(bytes);
    let mut first: &[u8] = &[];
    while let Some((tag, wire)) = reader.key()? {
        match tag {
            1 => first = reader.len_delimited(wire)?,
            _ => reader.skip(wire)?,
        }
    }
    Ok(first)
}

fn time(seconds: i64, nanos: i64, micro: bool) -> Result<Option<String>, DecodeError> {
    if seconds == GO_ZERO_TIME_SECONDS && nanos == 0 {
        return Ok(None);
    }
    let nanos = i32::try_from(nanos).map_err(|_| error("time nanos out of range"))?;
    let at = jiff::Timestamp::new(seconds, nanos).map_err(|e| error(format!("time out of range: {e}")))?;
    let whole = at.strftime("%Y-%m-%dT%H:%M:%S");
    Ok(Some(if micro { format!("{whole}.{:06}Z", nanos / 1000) } else { format!("{whole}Z") }))
}

/// Writes protobuf wire data (for kube-sim's own protobuf answers and the tests' bodies).
#[derive(Default)]
pub(crate) struct Writer(pub(crate) Vec<u8>);

impl Writer {
    fn varint(&mut self, mut value: u64) -> &mut Self {
        while value >= 0x80 {
            self.0.push((value as u8) | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
        self
    }

    /// Field `tag` as a varint (a negative value sign-extended, as Go writes int32 and int64).
    #[cfg(test)]
    pub(crate) fn int(&mut self, tag: u32, value: i64) -> &mut Self {
        self.varint(u64::from(tag) << 3).varint(value as u64)
    }

    /// Field `tag` as length-delimited bytes.
    pub(crate) fn bytes(&mut self, tag: u32, bytes: &[u8]) -> &mut Self {
        self.varint(u64::from(tag) << 3 | u64::from(WIRE_LEN)).varint(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
        self
    }

    /// Field `tag` as a string.
    pub(crate) fn str(&mut self, tag: u32, text: &str) -> &mut Self {
        self.bytes(tag, text.as_bytes())
    }

    /// Field `tag` as an embedded message.
    pub(crate) fn msg(&mut self, tag: u32, message: &Writer) -> &mut Self {
        self.bytes(tag, &message.0)
    }
}

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

/// A cursor over protobuf wire data.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn done(&self) -> bool {
        self.bytes.is_empty()
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for i in 0..10 {
            let (&byte, rest) = self.bytes.split_first().ok_or_else(|| error("truncated varint"))?;
            self.bytes = rest;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(error("varint longer than ten bytes"))
    }

    fn varint_of(&mut self, wire: u8) -> Result<u64, DecodeError> {
        if wire != WIRE_VARINT {
            return Err(error(format!("expected a varint, got wire type {wire}")));
        }
        self.varint()
    }

    /// The next field's number and wire type; `None` at the end.
    fn key(&mut self) -> Result<Option<(u32, u8)>, DecodeError> {
        if self.done() {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3).map_err(|_| error("field number out of range"))?;
        if tag == 0 {
            return Err(error("field number 0"));
        }
        Ok(Some((tag, (key & 7) as u8)))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.bytes.len() {
            return Err(error("truncated message"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn len_delimited(&mut self, wire: u8) -> Result<&'a [u8], DecodeError> {
        if wire != WIRE_LEN {
            return Err(error(format!("expected a length-delimited field, got wire type {wire}")));
        }
        let len = usize::try_from(self.varint()?).map_err(|_| error("length out of range"))?;
        self.take(len)
    }

    fn string(&mut self, wire: u8) -> Result<String, DecodeError> {
        String::from_utf8(self.len_delimited(wire)?.to_vec()).map_err(|_| error("invalid UTF-8 in a string"))
    }

    fn skip(&mut self, wire: u8) -> Result<(), DecodeError> {
        match wire {
            WIRE_VARINT => self.varint().map(drop),
            WIRE_FIXED64 => self.take(8).map(drop),
            WIRE_LEN => self.len_delimited(wire).map(drop),
            WIRE_FIXED32 => self.take(4).map(drop),
            other => Err(error(format!("unsupported wire type {other}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{CONFIGMAPS, DEPLOYMENTS, NAMESPACES, SECRETS};

    fn envelope(api_version: &str, kind: &str, raw: &Writer) -> Vec<u8> {
        let mut type_meta = Writer::default();
        type_meta.str(1, api_version).str(2, kind);
        let mut unknown = Writer::default();
        unknown.msg(1, &type_meta).msg(2, raw).str(3, "").str(4, "");
        [MAGIC, &unknown.0].concat()
    }

    fn go_zero_time() -> Writer {
        let mut t = Writer::default();
        t.int(1, GO_ZERO_TIME_SECONDS).int(2, 0);
        t
    }

    fn metadata(name: &str) -> Writer {
        let mut meta = Writer::default();
        // As Go writes ObjectMeta: every non-pointer field, empty or not.
        meta.str(1, name)
            .str(2, "")
            .str(3, "")
            .str(4, "")
            .str(5, "")
            .str(6, "")
            .int(7, 0)
            .msg(8, &go_zero_time());
        meta
    }

    #[test]
    fn a_namespace_as_kubectl_create_sends_it_decodes_without_the_go_zero_values() {
        let mut ns = Writer::default();
        // An empty spec and status, as Go writes structs never set.
        ns.msg(1, &metadata("shop")).msg(2, &Writer::default()).msg(3, &Writer::default());
        let value = decode(&NAMESPACES, &envelope("v1", "Namespace", &ns)).expect("decodes");
        assert_eq!(
            value,
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "generation": 0},
                "spec": {}, "status": {}})
        );
    }

    #[test]
    fn a_deployment_keeps_its_replicas_labels_quantities_ports_and_selector() {
        let mut labels = Writer::default();
        labels.str(1, "app").str(2, "web");
        let mut meta = metadata("web");
        meta.msg(11, &labels);
        let mut selector = Writer::default();
        selector.msg(1, &labels);
        let mut quantity = Writer::default();
        quantity.str(1, "256Mi");
        let mut limit = Writer::default();
        limit.str(1, "memory").msg(2, &quantity);
        let mut resources = Writer::default();
        resources.msg(1, &limit);
        let mut port = Writer::default();
        port.int(3, 8080).str(4, "TCP");
        let mut container = Writer::default();
        container
            .str(1, "web")
            .str(2, "nginx:1.27")
            .str(3, "sleep")
            .str(3, "")
            .msg(6, &port)
            .msg(8, &resources);
        let mut pod_spec = Writer::default();
        pod_spec.msg(2, &container);
        let mut template = Writer::default();
        template.msg(1, &meta).msg(2, &pod_spec);
        let mut spec = Writer::default();
        spec.int(1, 3).msg(2, &selector).msg(3, &template).msg(4, &Writer::default());
        let mut deployment = Writer::default();
        deployment.msg(1, &meta).msg(2, &spec);
        let value = decode(&DEPLOYMENTS, &envelope("apps/v1", "Deployment", &deployment)).expect("decodes");
        assert_eq!(value["spec"]["replicas"], 3);
        assert_eq!(value["spec"]["selector"]["matchLabels"]["app"], "web");
        let container = &value["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["image"], "nginx:1.27");
        assert_eq!(container["command"], serde_json::json!(["sleep", ""]));
        assert_eq!(container["ports"][0]["containerPort"], 8080);
        assert_eq!(container["resources"]["limits"]["memory"], "256Mi");
        assert_eq!(value["spec"]["strategy"], serde_json::json!({}));
    }

    #[test]
    fn secret_data_is_base64_and_configmap_values_may_be_empty() {
        let mut entry = Writer::default();
        entry.str(1, "password").bytes(2, b"s3cr\xff");
        let mut secret = Writer::default();
        secret.msg(1, &metadata("db")).msg(2, &entry).str(3, "Opaque");
        let value = decode(&SECRETS, &envelope("v1", "Secret", &secret)).expect("decodes");
        assert_eq!(value["data"]["password"], "czNjcv8=");
        let mut empty = Writer::default();
        empty.str(1, "flag").str(2, "");
        let mut config_map = Writer::default();
        config_map.msg(1, &metadata("cfg")).msg(2, &empty);
        let value = decode(&CONFIGMAPS, &envelope("v1", "ConfigMap", &config_map)).expect("decodes");
        assert_eq!(value["data"], serde_json::json!({"flag": ""}));
    }

    #[test]
    fn a_body_for_another_kind_or_broken_bytes_is_an_error_not_a_panic() {
        let ns = Writer::default();
        let wrong = decode(&DEPLOYMENTS, &envelope("v1", "Namespace", &ns)).expect_err("wrong kind");
        assert!(wrong.0.contains("must be of type Deployment"), "{wrong}");
        assert!(decode(&NAMESPACES, b"{\"kind\":\"Namespace\"}").is_err());
        let mut body = envelope("v1", "Namespace", &Writer::default());
        for cut in 0..body.len() {
            let _ = decode(&NAMESPACES, &body[..cut]);
        }
        body.extend_from_slice(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(decode(&NAMESPACES, &body).is_err());
    }

    #[test]
    fn every_message_named_in_the_table_is_in_the_table_and_it_is_sorted() {
        assert!(schema::MESSAGES.windows(2).all(|w| w[0].name < w[1].name));
        for m in schema::MESSAGES {
            for f in m.fields {
                if let Type::Msg(name) = f.ty {
                    assert!(message(name).is_ok(), "{}.{} names {name}", m.name, f.json);
                }
            }
        }
        for def in crate::resources::ALL.iter().filter(|d| !d.is_custom()) {
            assert!(message(&message_name(def)).is_ok(), "{}", def.kind);
        }
    }
}
