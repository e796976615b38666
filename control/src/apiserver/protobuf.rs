//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`) decoded into the
//! JSON form the server stores and speaks.
//!
//! kubectl sends built-in types as protobuf: the magic `k8s\0`, then a `runtime.Unknown`
//! envelope whose `typeMeta` names the object's apiVersion and kind and whose `raw` holds the
//! object message of the Kubernetes `generated.proto` files.
//!
//! Where the knowledge comes from:
//! * Messages and their fields (tag, wire type, cardinality) are read at build time from the
//!   prost structs of the `k8s-pb` crate (see `control/build.rs`), as are the resource kinds
//!   it knows (apiVersion + kind -> message).
//! * JSON field names come from k8s-openapi's schemars schemas: schema
//!   `io.k8s.api.core.v1.Pod` describes message `k8s.io.api.core.v1.Pod`, and a property
//!   matches the prost field whose name is the same once case and separators are dropped
//!   (`podIP` ~ `pod_ip`, `$ref` ~ `ref`). The join is done once, on first use.
//! * A message field with no matching property, most of whose own fields are properties of
//!   the parent, is a Go struct embedded with `json:",inline"` (`Probe.handler`,
//!   `Volume.volumeSource`, `ConfigMapVolumeSource.localObjectReference`, ...): its fields are
//!   merged into the parent. Embedded messages without a schema are named from the parent's.
//!
//! Go's encoders write non-pointer fields even when empty, where JSON's `omitempty` drops them.
//! So an empty string is dropped unless the schema lists the field as required; zero numbers
//! and `false` are kept, since optional numbers and booleans are mostly pointers in the
//! Kubernetes API, whose zero is meaningful (`replicas: 0`). A zero `Time` (an empty message,
//! as Go writes it) is `null`, as Go's JSON encoder writes it.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use base64::Engine as _;
use serde_json::{Map, Number, Value};

/// The media type of Kubernetes protobuf bodies.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The four bytes every Kubernetes protobuf body starts with.
const MAGIC: &[u8; 4] = b"k8s\0";

/// How deeply messages may nest (objects, embedded envelopes, groups) before input is refused.
const MAX_DEPTH: u32 = 100;

/// Go's zero `time.Time` (0001-01-01T00:00:00Z) as Unix seconds: encoded as JSON `null`.
const GO_ZERO_TIME_SECONDS: i64 = -62_135_596_800;

/// Errors decoding a Kubernetes protobuf body.
#[derive(Debug, thiserror::Error)]
pub enum ProtobufError {
    /// The body does not start with the `k8s\0` magic bytes.
    #[error("not a Kubernetes protobuf body: missing the \"k8s\\0\" prefix")]
    MissingMagic,
    /// The input ends in the middle of a field.
    #[error("truncated protobuf input")]
    Truncated,
    /// A varint runs past ten bytes.
    #[error("malformed protobuf varint")]
    MalformedVarint,
    /// A field key with field number 0, a field number out of range, or an unknown wire type.
    #[error("invalid protobuf field key (field {field}, wire type {wire_type})")]
    InvalidKey {
        /// The field number read.
        field: u64,
        /// The wire type read.
        wire_type: u8,
    },
    /// A known field arrived with a wire type its declared type cannot have.
    #[error("field {field} of {message} has unexpected wire type {wire_type}")]
    WireTypeMismatch {
        /// The message's protobuf name.
        message: String,
        /// The field's name.
        field: String,
        /// The wire type read.
        wire_type: u8,
    },
    /// Messages are nested deeper than the decoder allows.
    #[error("protobuf messages nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// The envelope carries no apiVersion or no kind.
    #[error("protobuf envelope has no apiVersion and kind")]
    MissingTypeMeta,
    /// No protobuf message is known for the envelope's apiVersion and kind.
    #[error("no protobuf message is known for {api_version}, Kind={kind}")]
    UnknownKind {
        /// The envelope's apiVersion.
        api_version: String,
        /// The envelope's kind.
        kind: String,
    },
    /// The envelope's content encoding or content type is not supported.
    #[error("unsupported protobuf envelope content: {0}")]
    UnsupportedContent(String),
    /// Embedded JSON (a RawExtension, FieldsV1, ...) is not valid JSON.
    #[error("{message}: embedded JSON is invalid: {source}")]
    InvalidJson {
        /// The message holding the JSON.
        message: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A value with no JSON form (a non-finite number, a time out of range, ...).
    #[error("{message}: {detail}")]
    InvalidValue {
        /// The message holding the value.
        message: String,
        /// What is wrong with it.
        detail: String,
    },
}

type Result<T, E = ProtobufError> = std::result::Result<T, E>;

/// Decodes a `application/vnd.kubernetes.protobuf` body (magic "k8s\0" + runtime.Unknown envelope) into the object's JSON form, including "apiVersion" and "kind" from the envelope's typeMeta.
pub fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    Decoder { names: names() }.envelope(body, 0)
}

// ---------------------------------------------------------------------------------------------
// The generated tables

/// A field's protobuf type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(
    dead_code,
    reason = "the generated tables use only some of protobuf's scalar types"
)]
enum Ty {
    Double,
    Float,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Bool,
    String,
    Bytes,
    /// A message: its index in `MESSAGES`.
    Message(usize),
}

/// A field's cardinality.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Card {
    /// `optional`: at most one value (the last one wins; messages merge).
    Single,
    /// `repeated` (packed or not).
    Repeated,
    /// `map<key, ty>`: the key's type.
    Map(Ty),
}

/// A message field.
#[derive(Debug)]
struct FieldDesc {
    tag: u32,
    /// The prost (snake_case) field name.
    name: &'static str,
    ty: Ty,
    card: Card,
}

/// A message: package relative to `k8s.io` (as `api.core.v1`), name as prost spells it.
#[derive(Debug)]
struct MessageDesc {
    package: &'static str,
    name: &'static str,
    /// Sorted by tag.
    fields: &'static [FieldDesc],
}

/// A resource kind and its message.
#[derive(Debug)]
struct ResourceDesc {
    api_version: &'static str,
    kind: &'static str,
    message: usize,
}

mod generated {
    use super::{Card, FieldDesc, MessageDesc, ResourceDesc, Ty};
    include!(concat!(env!("OUT_DIR"), "/k8s_protobuf_messages.rs"));
    include!(concat!(env!("OUT_DIR"), "/k8s_openapi_types.rs"));
}
use generated::{MESSAGES, RESOURCES};

// ---------------------------------------------------------------------------------------------
// JSON names, joined once from the k8s-openapi schemas

/// Messages whose JSON form is not an object of their fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Special {
    /// `meta.v1.Time`: RFC 3339 in seconds, or null for Go's zero time.
    Time,
    /// `meta.v1.MicroTime`: RFC 3339 with microseconds, or null for Go's zero time.
    MicroTime,
    /// `meta.v1.Duration`: a Go duration string.
    Duration,
    /// `resource.Quantity`: its string.
    Quantity,
    /// `intstr.IntOrString`: a number or a string.
    IntOrString,
    /// `runtime.RawExtension`, `meta.v1.FieldsV1`, apiextensions `JSON`: the bytes, as JSON.
    RawJson,
    /// A wrapper of a single repeated `items` field with no schema (`ExtraValue`, `Verbs`).
    ItemsArray,
    /// apiextensions `JSONSchemaPropsOrArray`: a schema or an array of them.
    PropsOrArray,
    /// apiextensions `JSONSchemaPropsOrBool`: a schema or a boolean.
    PropsOrBool,
    /// apiextensions `JSONSchemaPropsOrStringArray`: a schema or an array of strings.
    PropsOrStringArray,
}

/// How one field appears in JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
enum JsonField {
    /// Under this name; `required` fields keep empty strings.
    Named { name: String, required: bool },
    /// An embedded struct whose fields are merged into the parent object.
    Inline,
}

#[derive(Debug, Default)]
struct MessageNames {
    special: Option<Special>,
    /// Parallel to the message's `fields`.
    fields: Vec<JsonField>,
}

#[derive(Debug)]
struct Names {
    messages: Vec<MessageNames>,
    /// `runtime.Unknown`, the envelope.
    unknown: usize,
    /// `runtime.TypeMeta`, the envelope's typeMeta.
    type_meta: usize,
    /// API group -> message packages (without the version) serving it.
    group_packages: HashMap<&'static str, Vec<&'static str>>,
}

/// Property names and required properties of one schema.
#[derive(Debug, Default)]
struct SchemaInfo {
    properties: Vec<String>,
    required: HashSet<String>,
}

fn names() -> &'static Names {
    static NAMES: OnceLock<Names> = OnceLock::new();
    NAMES.get_or_init(build_names)
}

/// Lowercase, without separators: `podIP`, `pod_ip` and `PodIp` all become `podip`.
fn normalize(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// A message's key for matching schema names: `api.core.v1.awselasticblockstorevolumesource`.
fn message_key(m: &MessageDesc) -> String {
    normalize(&format!("{}.{}", m.package, m.name))
}

/// `pod_ip` -> `podIp`: only for fields no schema names.
fn lower_camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = !out.is_empty();
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn load_schemas() -> HashMap<String, SchemaInfo> {
    let mut generator =
        schemars::SchemaGenerator::new(schemars::generate::SchemaSettings::default());
    generated::register_openapi_types(&mut generator);
    let mut schemas = HashMap::new();
    for (name, schema) in generator.take_definitions(false) {
        let Some(rest) = name.strip_prefix("io.k8s.") else {
            continue;
        };
        let properties = schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        let required = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| {
                r.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        schemas.insert(
            normalize(rest),
            SchemaInfo {
                properties,
                required,
            },
        );
    }
    schemas
}

fn special_of(m: &MessageDesc, has_schema: bool) -> Option<Special> {
    let package = m.package;
    let name = m.name.to_ascii_lowercase();
    let special = match (package, name.as_str()) {
        ("apimachinery.pkg.apis.meta.v1", "time") => Special::Time,
        ("apimachinery.pkg.apis.meta.v1", "microtime") => Special::MicroTime,
        ("apimachinery.pkg.apis.meta.v1", "duration") => Special::Duration,
        ("apimachinery.pkg.apis.meta.v1", "fieldsv1") => Special::RawJson,
        ("apimachinery.pkg.api.resource", "quantity" | "quantityvalue") => Special::Quantity,
        ("apimachinery.pkg.util.intstr", "intorstring") => Special::IntOrString,
        ("apimachinery.pkg.runtime", "rawextension") => Special::RawJson,
        (p, "json") if p.starts_with("apiextensions") => Special::RawJson,
        (p, "jsonschemapropsorarray") if p.starts_with("apiextensions") => Special::PropsOrArray,
        (p, "jsonschemapropsorbool") if p.starts_with("apiextensions") => Special::PropsOrBool,
        (p, "jsonschemapropsorstringarray") if p.starts_with("apiextensions") => {
            Special::PropsOrStringArray
        }
        _ => match m.fields {
            [f] if !has_schema && f.name == "items" && f.card == Card::Repeated => {
                Special::ItemsArray
            }
            _ => return None,
        },
    };
    Some(special)
}

/// Names `m`'s fields from `schema`; returns them with the messages found embedded inline.
fn name_fields(
    m: &MessageDesc,
    schema: Option<&SchemaInfo>,
    schemas: &HashMap<String, SchemaInfo>,
) -> (Vec<JsonField>, Vec<usize>) {
    let empty = SchemaInfo::default();
    let schema = schema.unwrap_or(&empty);
    let by_norm: HashMap<String, &String> = schema
        .properties
        .iter()
        .map(|p| (normalize(p), p))
        .collect();
    let mut inline = Vec::new();
    let fields = m
        .fields
        .iter()
        .map(|f| {
            if let Some(p) = by_norm.get(&normalize(f.name)) {
                return JsonField::Named {
                    name: (*p).clone(),
                    required: schema.required.contains(*p),
                };
            }
            if let (Ty::Message(child), Card::Single) = (f.ty, f.card) {
                // Embedded: most of the child's fields are properties of this message.
                let c = &MESSAGES[child];
                let shared = c
                    .fields
                    .iter()
                    .filter(|cf| by_norm.contains_key(&normalize(cf.name)))
                    .count();
                let has_schema = schemas.contains_key(&message_key(c));
                if shared > 0 && shared * 2 >= c.fields.len() && special_of(c, has_schema).is_none()
                {
                    inline.push(child);
                    return JsonField::Inline;
                }
            }
            JsonField::Named {
                name: lower_camel(f.name),
                required: false,
            }
        })
        .collect();
    (fields, inline)
}

fn build_names() -> Names {
    let schemas = load_schemas();
    let mut messages: Vec<MessageNames> =
        MESSAGES.iter().map(|_| MessageNames::default()).collect();
    // Messages with a schema first; then messages embedded inline in them, named from the
    // embedding message's schema (and so on, for embeddings of embeddings).
    let mut named = vec![false; MESSAGES.len()];
    let mut queue: Vec<(usize, String)> = Vec::new();
    for (i, m) in MESSAGES.iter().enumerate() {
        let key = message_key(m);
        if schemas.contains_key(&key) {
            queue.push((i, key));
        }
    }
    while let Some((i, key)) = queue.pop() {
        if named[i] {
            continue;
        }
        named[i] = true;
        let m = &MESSAGES[i];
        // A message with a schema of its own is named from it, even where it is embedded.
        let own_key = message_key(m);
        let own = schemas.contains_key(&own_key);
        let key = if own { own_key } else { key };
        let (fields, inline) = name_fields(m, schemas.get(&key), &schemas);
        messages[i] = MessageNames {
            special: special_of(m, own),
            fields,
        };
        queue.extend(inline.into_iter().map(|c| (c, key.clone())));
    }
    for (i, m) in MESSAGES.iter().enumerate() {
        if !named[i] {
            let (fields, _) = name_fields(m, None, &schemas);
            messages[i] = MessageNames {
                special: special_of(m, false),
                fields,
            };
        }
    }

    let find = |package: &str, name: &str| {
        MESSAGES
            .iter()
            .position(|m| m.package == package && m.name == name)
            .unwrap_or_else(|| panic!("k8s-pb has no message {package}.{name}"))
    };
    let mut group_packages: HashMap<&'static str, Vec<&'static str>> = HashMap::new();
    for r in RESOURCES {
        let group = r.api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let package = MESSAGES[r.message].package;
        let Some((base, _version)) = package.rsplit_once('.') else {
            continue;
        };
        let packages = group_packages.entry(group).or_default();
        if !packages.contains(&base) {
            packages.push(base);
        }
    }
    Names {
        messages,
        unknown: find("apimachinery.pkg.runtime", "Unknown"),
        type_meta: find("apimachinery.pkg.runtime", "TypeMeta"),
        group_packages,
    }
}

/// The message for an apiVersion and kind.
fn find_kind(names: &Names, api_version: &str, kind: &str) -> Option<usize> {
    if let Some(r) = RESOURCES
        .iter()
        .find(|r| r.api_version == api_version && r.kind == kind)
    {
        return Some(r.message);
    }
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let kind_norm = normalize(kind);
    let matches = |m: &MessageDesc| normalize(m.name) == kind_norm;
    // A kind of a known group (Eviction, Scale, TokenRequest, ...).
    for base in names.group_packages.get(group).into_iter().flatten() {
        let package = format!("{base}.{version}");
        if let Some(i) = MESSAGES
            .iter()
            .position(|m| m.package == package && matches(m))
        {
            return Some(i);
        }
    }
    // A meta kind every group version serves (DeleteOptions, ...).
    if let Some(i) = MESSAGES
        .iter()
        .position(|m| m.package == "apimachinery.pkg.apis.meta.v1" && matches(m))
    {
        return Some(i);
    }
    // Any single message of that name and version.
    let mut candidates = MESSAGES
        .iter()
        .enumerate()
        .filter(|(_, m)| m.package.rsplit('.').next() == Some(version) && matches(m));
    match (candidates.next(), candidates.next()) {
        (Some((i, _)), None) => Some(i),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The wire format

/// One field value as it is on the wire.
#[derive(Clone, Copy, Debug)]
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Len(&'a [u8]),
    Fixed32(u32),
    /// A (skipped) proto2 group.
    Group,
}

impl Wire<'_> {
    fn wire_type(&self) -> u8 {
        match self {
            Wire::Varint(_) => 0,
            Wire::Fixed64(_) => 1,
            Wire::Len(_) => 2,
            Wire::Group => 3,
            Wire::Fixed32(_) => 5,
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(ProtobufError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some((&b, rest)) = self.buf.split_first() else {
                return Err(ProtobufError::Truncated);
            };
            self.buf = rest;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ProtobufError::MalformedVarint)
    }

    fn fixed32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn fixed64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]))
    }

    /// A field key: (field number, wire type).
    fn key(&mut self) -> Result<(u32, u8)> {
        let key = self.varint()?;
        let field = key >> 3;
        let wire_type = (key & 7) as u8;
        if field == 0 || field > (1 << 29) - 1 || matches!(wire_type, 6 | 7) {
            return Err(ProtobufError::InvalidKey { field, wire_type });
        }
        Ok((field as u32, wire_type))
    }

    /// The value of a field of this wire type; a group is skipped up to its end.
    fn value(&mut self, field: u32, wire_type: u8, depth: u32) -> Result<Wire<'a>> {
        Ok(match wire_type {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed64(self.fixed64()?),
            2 => {
                let len = self.varint()?;
                let len = usize::try_from(len).map_err(|_| ProtobufError::Truncated)?;
                Wire::Len(self.take(len)?)
            }
            3 => {
                if depth > MAX_DEPTH {
                    return Err(ProtobufError::TooDeep);
                }
                loop {
                    let (f, wt) = self.key()?;
                    if wt == 4 {
                        if f != field {
                            return Err(ProtobufError::InvalidKey {
                                field: f.into(),
                                wire_type: wt,
                            });
                        }
                        break Wire::Group;
                    }
                    self.value(f, wt, depth + 1)?;
                }
            }
            5 => Wire::Fixed32(self.fixed32()?),
            _ => {
                return Err(ProtobufError::InvalidKey {
                    field: field.into(),
                    wire_type,
                })
            }
        })
    }

    /// The next field, or `None` at the end of the buffer.
    fn next(&mut self, depth: u32) -> Result<Option<(u32, Wire<'a>)>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let (field, wire_type) = self.key()?;
        Ok(Some((field, self.value(field, wire_type, depth)?)))
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// What has been read of one field of a message.
enum Acc<'a> {
    Absent,
    Scalar(Value),
    /// A singular message (its index) and its occurrences, merged by concatenation.
    Message(usize, Vec<&'a [u8]>),
    List(Vec<Value>),
    Map(Map<String, Value>),
}

/// How to name the fields of a decoded object.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Naming {
    /// By JSON name, applying inline embedding and dropping empty optional strings.
    Json,
    /// By prost name, as they are (for the special messages' own decoding).
    Prost,
}

struct Decoder {
    names: &'static Names,
}

fn mismatch(m: &MessageDesc, f: &FieldDesc, wire: &Wire<'_>) -> ProtobufError {
    ProtobufError::WireTypeMismatch {
        message: format!("{}.{}", m.package, m.name),
        field: f.name.to_string(),
        wire_type: wire.wire_type(),
    }
}

fn invalid(m: &MessageDesc, detail: impl Into<String>) -> ProtobufError {
    ProtobufError::InvalidValue {
        message: format!("{}.{}", m.package, m.name),
        detail: detail.into(),
    }
}

fn float(m: &MessageDesc, f: f64) -> Result<Value> {
    Number::from_f64(f)
        .map(Value::Number)
        .ok_or_else(|| invalid(m, format!("{f} has no JSON form")))
}

/// A scalar value of type `ty` from its wire form; `None` if the wire type does not fit.
fn scalar(m: &MessageDesc, ty: Ty, wire: Wire<'_>) -> Result<Option<Value>> {
    // Truncations and sign reinterpretations below are protobuf's own conversions.
    let value = match (ty, wire) {
        (Ty::Int32, Wire::Varint(v)) => Value::from(v as i32),
        (Ty::Int64, Wire::Varint(v)) => Value::from(v as i64),
        (Ty::Uint32, Wire::Varint(v)) => Value::from(v as u32),
        (Ty::Uint64, Wire::Varint(v)) => Value::from(v),
        (Ty::Sint32, Wire::Varint(v)) => {
            let v = v as u32;
            Value::from(((v >> 1) as i32) ^ -((v & 1) as i32))
        }
        (Ty::Sint64, Wire::Varint(v)) => Value::from(((v >> 1) as i64) ^ -((v & 1) as i64)),
        (Ty::Bool, Wire::Varint(v)) => Value::Bool(v != 0),
        (Ty::Fixed32, Wire::Fixed32(v)) => Value::from(v),
        (Ty::Sfixed32, Wire::Fixed32(v)) => Value::from(v as i32),
        (Ty::Float, Wire::Fixed32(v)) => float(m, f64::from(f32::from_bits(v)))?,
        (Ty::Fixed64, Wire::Fixed64(v)) => Value::from(v),
        (Ty::Sfixed64, Wire::Fixed64(v)) => Value::from(v as i64),
        (Ty::Double, Wire::Fixed64(v)) => float(m, f64::from_bits(v))?,
        // Go's JSON encoder writes invalid UTF-8 as U+FFFD, as this does.
        (Ty::String, Wire::Len(b)) => Value::String(String::from_utf8_lossy(b).into_owned()),
        (Ty::Bytes, Wire::Len(b)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        _ => return Ok(None),
    };
    Ok(Some(value))
}

/// The zero value of a scalar type (a map entry without its key or value).
fn zero(ty: Ty) -> Value {
    match ty {
        Ty::String | Ty::Bytes => Value::String(String::new()),
        Ty::Bool => Value::Bool(false),
        Ty::Double | Ty::Float => Value::from(0.0),
        _ => Value::from(0),
    }
}

impl Decoder {
    /// `k8s\0` + runtime.Unknown -> the object with apiVersion and kind.
    fn envelope(&self, body: &[u8], depth: u32) -> Result<Value> {
        let rest = body
            .strip_prefix(MAGIC)
            .ok_or(ProtobufError::MissingMagic)?;
        let unknown = &MESSAGES[self.names.unknown];
        let name_of = |tag: u32| {
            unknown
                .fields
                .iter()
                .find(|f| f.tag == tag)
                .map(|f| (f, f.name))
        };
        let mut type_meta: Vec<&[u8]> = Vec::new();
        let (mut raw, mut encoding, mut content_type): (&[u8], &[u8], &[u8]) = (&[], &[], &[]);
        let mut reader = Reader::new(rest);
        while let Some((tag, wire)) = reader.next(depth)? {
            let Some((f, name)) = name_of(tag) else {
                continue;
            };
            let Wire::Len(b) = wire else {
                return Err(mismatch(unknown, f, &wire));
            };
            match name {
                "type_meta" => type_meta.push(b),
                "raw" => raw = b,
                "content_encoding" => encoding = b,
                "content_type" => content_type = b,
                _ => {}
            }
        }
        if !encoding.is_empty() {
            return Err(ProtobufError::UnsupportedContent(format!(
                "encoding {:?}",
                String::from_utf8_lossy(encoding)
            )));
        }
        let type_meta = self.object(
            self.names.type_meta,
            &type_meta.concat(),
            depth + 1,
            Naming::Prost,
        )?;
        let string = |k: &str| {
            type_meta
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let (api_version, kind) = (string("api_version"), string("kind"));
        if api_version.is_empty() || kind.is_empty() {
            return Err(ProtobufError::MissingTypeMeta);
        }
        let mut out = Map::new();
        out.insert("apiVersion".into(), Value::String(api_version.clone()));
        out.insert("kind".into(), Value::String(kind.clone()));
        let object = match &*String::from_utf8_lossy(content_type) {
            "" | CONTENT_TYPE => {
                let message = find_kind(self.names, &api_version, &kind)
                    .ok_or(ProtobufError::UnknownKind { api_version, kind })?;
                self.object(message, raw, depth + 1, Naming::Json)?
            }
            "application/json" => match serde_json::from_slice(raw) {
                Ok(Value::Object(object)) => object,
                Ok(_) => {
                    return Err(ProtobufError::UnsupportedContent(
                        "JSON that is not an object".into(),
                    ))
                }
                Err(source) => {
                    return Err(ProtobufError::InvalidJson {
                        message: "runtime.Unknown".into(),
                        source,
                    })
                }
            },
            other => return Err(ProtobufError::UnsupportedContent(format!("type {other:?}"))),
        };
        for (k, v) in object {
            out.entry(k).or_insert(v);
        }
        Ok(Value::Object(out))
    }

    /// A message's JSON value.
    fn message(&self, index: usize, buf: &[u8], depth: u32) -> Result<Value> {
        if depth > MAX_DEPTH {
            return Err(ProtobufError::TooDeep);
        }
        let Some(special) = self.names.messages[index].special else {
            return Ok(Value::Object(self.object(
                index,
                buf,
                depth,
                Naming::Json,
            )?));
        };
        let m = &MESSAGES[index];
        let fields = |naming| self.object(index, buf, depth, naming);
        let int = |o: &Map<String, Value>, k: &str| o.get(k).and_then(Value::as_i64).unwrap_or(0);
        Ok(match special {
            // Go writes a zero Time as an empty message (and reads an empty one as zero).
            Special::Time | Special::MicroTime if buf.is_empty() => Value::Null,
            Special::Time => {
                let o = fields(Naming::Prost)?;
                // Go keeps only the seconds of a Time it decodes from protobuf.
                format_time(m, int(&o, "seconds"), None)?
            }
            Special::MicroTime => {
                let o = fields(Naming::Prost)?;
                format_time(m, int(&o, "seconds"), Some(int(&o, "nanos")))?
            }
            Special::Duration => {
                Value::String(go_duration(int(&fields(Naming::Prost)?, "duration")))
            }
            Special::Quantity => {
                let mut o = fields(Naming::Prost)?;
                match o.remove("string") {
                    Some(Value::String(s)) => Value::String(s),
                    _ => Value::String("0".into()),
                }
            }
            Special::IntOrString => {
                let mut o = fields(Naming::Prost)?;
                match int(&o, "type") {
                    0 => Value::from(int(&o, "int_val")),
                    1 => o
                        .remove("str_val")
                        .unwrap_or_else(|| Value::String(String::new())),
                    t => return Err(invalid(m, format!("IntOrString type {t}"))),
                }
            }
            Special::RawJson => {
                let field = m
                    .fields
                    .iter()
                    .find(|f| f.ty == Ty::Bytes)
                    .map_or("raw", |f| f.name);
                match last_bytes(m, field, buf, depth)? {
                    None | Some([]) => Value::Null,
                    Some(raw) if raw.starts_with(MAGIC) => self.envelope(raw, depth + 1)?,
                    Some(raw) => serde_json::from_slice(raw).map_err(|source| {
                        ProtobufError::InvalidJson {
                            message: format!("{}.{}", m.package, m.name),
                            source,
                        }
                    })?,
                }
            }
            Special::ItemsArray => fields(Naming::Prost)?
                .remove("items")
                .unwrap_or_else(|| Value::Array(Vec::new())),
            // Go writes the list (or the boolean) when it is set, else the schema.
            Special::PropsOrArray | Special::PropsOrBool | Special::PropsOrStringArray => {
                let mut o = fields(Naming::Prost)?;
                let field = |wanted: fn(&FieldDesc) -> bool| {
                    m.fields.iter().find(|f| wanted(f)).map_or("", |f| f.name)
                };
                let schema = field(|f| matches!((f.card, f.ty), (Card::Single, Ty::Message(_))));
                let alternative = field(|f| f.card == Card::Repeated || f.ty == Ty::Bool);
                match special {
                    Special::PropsOrBool => o
                        .remove(schema)
                        .or_else(|| o.remove(alternative))
                        .unwrap_or(Value::Bool(false)),
                    _ => o
                        .remove(alternative)
                        .or_else(|| o.remove(schema))
                        .unwrap_or(Value::Null),
                }
            }
        })
    }

    /// A message's fields as an object.
    fn object(
        &self,
        index: usize,
        buf: &[u8],
        depth: u32,
        naming: Naming,
    ) -> Result<Map<String, Value>> {
        if depth > MAX_DEPTH {
            return Err(ProtobufError::TooDeep);
        }
        let m = &MESSAGES[index];
        let mut acc: Vec<Acc<'_>> = m.fields.iter().map(|_| Acc::Absent).collect();
        let mut reader = Reader::new(buf);
        while let Some((tag, wire)) = reader.next(depth)? {
            let Ok(i) = m.fields.binary_search_by_key(&tag, |f| f.tag) else {
                continue; // unknown fields are skipped
            };
            let f = &m.fields[i];
            match f.card {
                Card::Single => match (f.ty, wire) {
                    (Ty::Message(child), Wire::Len(b)) => match &mut acc[i] {
                        Acc::Message(_, parts) => parts.push(b),
                        slot => *slot = Acc::Message(child, vec![b]),
                    },
                    (ty, wire) => {
                        let v = scalar(m, ty, wire)?.ok_or_else(|| mismatch(m, f, &wire))?;
                        acc[i] = Acc::Scalar(v);
                    }
                },
                Card::Repeated => {
                    let mut values = Vec::new();
                    match (f.ty, wire) {
                        (Ty::Message(child), Wire::Len(b)) => {
                            values.push(self.message(child, b, depth + 1)?)
                        }
                        (Ty::String | Ty::Bytes, wire) => {
                            values
                                .push(scalar(m, f.ty, wire)?.ok_or_else(|| mismatch(m, f, &wire))?);
                        }
                        (ty, Wire::Len(packed)) => {
                            let mut r = Reader::new(packed);
                            while !r.buf.is_empty() {
                                let w = match ty {
                                    Ty::Double | Ty::Fixed64 | Ty::Sfixed64 => {
                                        Wire::Fixed64(r.fixed64()?)
                                    }
                                    Ty::Float | Ty::Fixed32 | Ty::Sfixed32 => {
                                        Wire::Fixed32(r.fixed32()?)
                                    }
                                    _ => Wire::Varint(r.varint()?),
                                };
                                values
                                    .push(scalar(m, ty, w)?.ok_or_else(|| mismatch(m, f, &wire))?);
                            }
                        }
                        (ty, wire) => {
                            values.push(scalar(m, ty, wire)?.ok_or_else(|| mismatch(m, f, &wire))?)
                        }
                    }
                    match &mut acc[i] {
                        Acc::List(list) => list.extend(values),
                        slot => *slot = Acc::List(values),
                    }
                }
                Card::Map(key_ty) => {
                    let Wire::Len(entry) = wire else {
                        return Err(mismatch(m, f, &wire));
                    };
                    let (k, v) = self.map_entry(m, f, key_ty, entry, depth + 1)?;
                    match &mut acc[i] {
                        Acc::Map(map) => {
                            map.insert(k, v);
                        }
                        slot => *slot = Acc::Map(Map::from_iter([(k, v)])),
                    }
                }
            }
        }

        let names = &self.names.messages[index];
        let mut out = Map::new();
        for ((f, a), json) in m.fields.iter().zip(acc).zip(&names.fields) {
            let (name, required) = match (naming, json) {
                (Naming::Prost, _) => (f.name, false),
                (Naming::Json, JsonField::Named { name, required }) => (name.as_str(), *required),
                (Naming::Json, JsonField::Inline) => ("", false),
            };
            let value = match a {
                Acc::Absent => continue,
                Acc::Scalar(Value::String(s))
                    if s.is_empty() && naming == Naming::Json && !required =>
                {
                    continue
                }
                Acc::Scalar(v) => v,
                Acc::Message(child, parts) => {
                    let joined;
                    let bytes = match parts.as_slice() {
                        [one] => *one,
                        many => {
                            joined = many.concat();
                            joined.as_slice()
                        }
                    };
                    let v = self.message(child, bytes, depth + 1)?;
                    if naming == Naming::Json && *json == JsonField::Inline {
                        if let Value::Object(embedded) = v {
                            out.extend(embedded);
                            continue;
                        }
                    }
                    v
                }
                Acc::List(values) if values.is_empty() => continue,
                Acc::List(values) => Value::Array(values),
                Acc::Map(map) if map.is_empty() => continue,
                Acc::Map(map) => Value::Object(map),
            };
            out.insert(name.to_string(), value);
        }
        Ok(out)
    }

    /// One `map<K, V>` entry: field 1 is the key, field 2 the value (protobuf's map encoding).
    fn map_entry(
        &self,
        m: &MessageDesc,
        f: &FieldDesc,
        key_ty: Ty,
        entry: &[u8],
        depth: u32,
    ) -> Result<(String, Value)> {
        let mut key = None;
        let mut value = None;
        let mut reader = Reader::new(entry);
        while let Some((tag, wire)) = reader.next(depth)? {
            match tag {
                1 => key = Some(scalar(m, key_ty, wire)?.ok_or_else(|| mismatch(m, f, &wire))?),
                2 => {
                    value = Some(match (f.ty, wire) {
                        (Ty::Message(child), Wire::Len(b)) => self.message(child, b, depth + 1)?,
                        (ty, wire) => scalar(m, ty, wire)?.ok_or_else(|| mismatch(m, f, &wire))?,
                    })
                }
                _ => {}
            }
        }
        let key = match key.unwrap_or_else(|| zero(key_ty)) {
            Value::String(s) => s,
            other => other.to_string(),
        };
        let value = match (value, f.ty) {
            (Some(v), _) => v,
            (None, Ty::Message(child)) => self.message(child, &[], depth + 1)?,
            (None, ty) => zero(ty),
        };
        Ok((key, value))
    }
}

/// The last occurrence of bytes field `name` of message `m` in `buf` (validating all of `buf`).
fn last_bytes<'a>(
    m: &MessageDesc,
    name: &str,
    buf: &'a [u8],
    depth: u32,
) -> Result<Option<&'a [u8]>> {
    let Some(tag) = m.fields.iter().find(|f| f.name == name).map(|f| f.tag) else {
        return Ok(None);
    };
    let mut found = None;
    let mut reader = Reader::new(buf);
    while let Some((t, wire)) = reader.next(depth)? {
        if t == tag {
            match wire {
                Wire::Len(b) => found = Some(b),
                other => {
                    return Err(ProtobufError::WireTypeMismatch {
                        message: format!("{}.{}", m.package, m.name),
                        field: name.to_string(),
                        wire_type: other.wire_type(),
                    })
                }
            }
        }
    }
    Ok(found)
}

/// A Kubernetes `Time` (`nanos: None`, RFC 3339 in seconds) or `MicroTime` (six fractional
/// digits), in UTC; Go's zero time is `null`.
fn format_time(m: &MessageDesc, seconds: i64, nanos: Option<i64>) -> Result<Value> {
    let micro = nanos.is_some();
    // Go normalizes nanoseconds outside [0, 1e9) into the seconds.
    let (seconds, nanos) = match nanos {
        Some(n) => (
            seconds.checked_add(n.div_euclid(1_000_000_000)),
            n.rem_euclid(1_000_000_000),
        ),
        None => (Some(seconds), 0),
    };
    let seconds = seconds.ok_or_else(|| invalid(m, "time out of range"))?;
    if seconds == GO_ZERO_TIME_SECONDS && nanos == 0 {
        return Ok(Value::Null);
    }
    // Go refuses to write years outside 0000..=9999 as JSON.
    const MIN: i64 = -62_167_219_200; // 0000-01-01T00:00:00Z
    const MAX: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    if !(MIN..=MAX).contains(&seconds) {
        return Err(invalid(
            m,
            format!("time {seconds}s is outside years 0000-9999"),
        ));
    }
    let (days, secs_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let mut text = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60
    );
    if micro {
        text.push_str(&format!(".{:06}", nanos / 1000));
    }
    text.push('Z');
    Ok(Value::String(text))
}

/// Days since 1970-01-01 -> (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    // Count from 0000-03-01 so that leap days end each 4/100/400-year cycle.
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Go's `time.Duration.String()`: `1h0m0s`, `1.5s`, `300ms`, `0s`.
fn go_duration(nanos: i64) -> String {
    /// `v / 10^prec` with its fraction, trailing zeros (and a bare point) dropped.
    fn with_fraction(v: u64, prec: u32) -> (u64, String) {
        let div = 10u64.pow(prec);
        let frac = v % div;
        if frac == 0 {
            return (v / div, String::new());
        }
        let digits = format!("{frac:0width$}", width = prec as usize);
        (v / div, format!(".{}", digits.trim_end_matches('0')))
    }
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let u = nanos.unsigned_abs();
    if u < 1_000 {
        return format!("{sign}{u}ns");
    }
    if u < 1_000_000 {
        let (whole, frac) = with_fraction(u, 3);
        return format!("{sign}{whole}{frac}µs");
    }
    if u < 1_000_000_000 {
        let (whole, frac) = with_fraction(u, 6);
        return format!("{sign}{whole}{frac}ms");
    }
    let (total_seconds, frac) = with_fraction(u, 9);
    let (h, m, s) = (
        total_seconds / 3600,
        total_seconds / 60 % 60,
        total_seconds % 60,
    );
    if h > 0 {
        format!("{sign}{h}h{m}m{s}{frac}s")
    } else if m > 0 {
        format!("{sign}{m}m{s}{frac}s")
    } else {
        format!("{sign}{s}{frac}s")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_pb::api::apps::v1 as apps;
    use k8s_pb::api::core::v1 as core;
    use k8s_pb::apimachinery::pkg::api::resource::Quantity;
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
    use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
    use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
    use prost::Message as _;
    use serde_json::json;

    use super::*;

    /// A body as kubectl sends it: magic + runtime.Unknown around the encoded object.
    fn body(api_version: &str, kind: &str, object: &impl prost::Message) -> Vec<u8> {
        let unknown = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(object.encode_to_vec()),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut out = MAGIC.to_vec();
        out.extend(unknown.encode_to_vec());
        out
    }

    fn s(v: &str) -> Option<String> {
        Some(v.into())
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// ObjectMeta as Go's encoder writes it: every non-pointer field, even when empty, and a
    /// zero creationTimestamp (an empty message).
    fn go_meta(name: &str) -> meta::ObjectMeta {
        meta::ObjectMeta {
            name: s(name),
            generate_name: s(""),
            namespace: s(""),
            self_link: s(""),
            uid: s(""),
            resource_version: s(""),
            generation: Some(0),
            creation_timestamp: Some(meta::Time::default()),
            ..Default::default()
        }
    }

    fn int_or_string_int(i: i32) -> IntOrString {
        IntOrString {
            r#type: Some(0),
            int_val: Some(i),
            str_val: s(""),
        }
    }

    #[test]
    fn namespace() {
        let ns = core::Namespace {
            metadata: Some(go_meta("demo")),
            spec: Some(core::NamespaceSpec::default()),
            status: Some(core::NamespaceStatus {
                phase: s(""),
                conditions: vec![],
            }),
        };
        let json = decode(&body("v1", "Namespace", &ns)).unwrap();
        assert_eq!(
            json,
            json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                // generation: Go's non-pointer zero numbers cannot be told from pointers.
                "metadata": {"name": "demo", "creationTimestamp": null, "generation": 0},
                "spec": {},
                "status": {},
            })
        );
        serde_json::from_value::<k8s_openapi::api::core::v1::Namespace>(json).unwrap();
    }

    #[test]
    fn configmap_and_secret() {
        let mut meta = go_meta("cfg");
        meta.namespace = s("default");
        let cm = core::ConfigMap {
            metadata: Some(meta.clone()),
            immutable: None,
            data: map(&[("a", "1"), ("empty", "")]),
            binary_data: [("bin".to_string(), vec![0u8, 1, 2, 255])].into(),
        };
        let json = decode(&body("v1", "ConfigMap", &cm)).unwrap();
        assert_eq!(
            json,
            json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "cfg", "namespace": "default", "creationTimestamp": null, "generation": 0},
                "data": {"a": "1", "empty": ""},
                "binaryData": {"bin": "AAEC/w=="},
            })
        );
        serde_json::from_value::<k8s_openapi::api::core::v1::ConfigMap>(json).unwrap();

        let secret = core::Secret {
            metadata: Some(meta),
            data: [("password".to_string(), b"hunter2".to_vec())].into(),
            r#type: s("Opaque"),
            string_data: BTreeMap::new(),
            immutable: Some(false),
        };
        let json = decode(&body("v1", "Secret", &secret)).unwrap();
        assert_eq!(json["data"], json!({"password": "aHVudGVyMg=="}));
        assert_eq!(json["type"], "Opaque");
        assert_eq!(json["immutable"], false);
        assert!(json.get("stringData").is_none());
        let typed: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json).unwrap();
        assert_eq!(typed.data.unwrap()["password"].0, b"hunter2");
    }

    fn web_container() -> core::Container {
        core::Container {
            name: s("web"),
            image: s("nginx:1.27"),
            ports: vec![core::ContainerPort {
                name: s(""),
                host_port: Some(0),
                container_port: Some(80),
                protocol: s("TCP"),
                host_ip: s(""),
            }],
            env: vec![core::EnvVar {
                name: s("GREETING"),
                value: s("hello"),
                value_from: None,
            }],
            resources: Some(core::ResourceRequirements {
                limits: [
                    ("cpu".to_string(), Quantity { string: s("500m") }),
                    ("memory".to_string(), Quantity { string: s("128Mi") }),
                ]
                .into(),
                requests: [("cpu".to_string(), Quantity { string: s("250m") })].into(),
                claims: vec![],
            }),
            readiness_probe: Some(core::Probe {
                handler: Some(core::ProbeHandler {
                    http_get: Some(core::HttpGetAction {
                        path: s("/healthz"),
                        port: Some(int_or_string_int(80)),
                        host: s(""),
                        scheme: s("HTTP"),
                        http_headers: vec![],
                    }),
                    ..Default::default()
                }),
                period_seconds: Some(5),
                ..Default::default()
            }),
            volume_mounts: vec![core::VolumeMount {
                name: s("cfg"),
                mount_path: s("/etc/cfg"),
                read_only: Some(true),
                ..Default::default()
            }],
            working_dir: s(""),
            image_pull_policy: s("IfNotPresent"),
            stdin: Some(false),
            ..Default::default()
        }
    }

    #[test]
    fn pod() {
        let mut meta = go_meta("web");
        meta.namespace = s("default");
        meta.labels = map(&[("run", "web")]);
        meta.creation_timestamp = Some(meta::Time {
            seconds: Some(1_700_000_000),
            nanos: Some(123),
        });
        let pod = core::Pod {
            metadata: Some(meta),
            spec: Some(core::PodSpec {
                containers: vec![web_container()],
                volumes: vec![core::Volume {
                    name: s("cfg"),
                    volume_source: Some(core::VolumeSource {
                        config_map: Some(core::ConfigMapVolumeSource {
                            local_object_reference: Some(core::LocalObjectReference {
                                name: s("cfg"),
                            }),
                            default_mode: Some(420),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                }],
                restart_policy: s("Always"),
                termination_grace_period_seconds: Some(30),
                dns_policy: s("ClusterFirst"),
                host_network: Some(false),
                security_context: Some(core::PodSecurityContext {
                    run_as_user: Some(0),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(core::PodStatus::default()),
        };
        let json = decode(&body("v1", "Pod", &pod)).unwrap();
        assert_eq!(
            json,
            json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "web",
                    "namespace": "default",
                    "labels": {"run": "web"},
                    "creationTimestamp": "2023-11-14T22:13:20Z",
                    "generation": 0,
                },
                "spec": {
                    "containers": [{
                        "name": "web",
                        "image": "nginx:1.27",
                        "ports": [{"containerPort": 80, "hostPort": 0, "protocol": "TCP"}],
                        "env": [{"name": "GREETING", "value": "hello"}],
                        "resources": {
                            "limits": {"cpu": "500m", "memory": "128Mi"},
                            "requests": {"cpu": "250m"},
                        },
                        "readinessProbe": {
                            "httpGet": {"path": "/healthz", "port": 80, "scheme": "HTTP"},
                            "periodSeconds": 5,
                        },
                        "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg", "readOnly": true}],
                        "imagePullPolicy": "IfNotPresent",
                        "stdin": false,
                    }],
                    "volumes": [{"name": "cfg", "configMap": {"name": "cfg", "defaultMode": 420}}],
                    "restartPolicy": "Always",
                    "terminationGracePeriodSeconds": 30,
                    "dnsPolicy": "ClusterFirst",
                    "hostNetwork": false,
                    "securityContext": {"runAsUser": 0},
                },
                "status": {},
            })
        );
        let typed: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json).unwrap();
        let spec = typed.spec.unwrap();
        assert_eq!(
            spec.containers[0]
                .resources
                .as_ref()
                .unwrap()
                .limits
                .as_ref()
                .unwrap()["memory"]
                .0,
            "128Mi"
        );
        assert_eq!(
            spec.volumes.unwrap()[0].config_map.as_ref().unwrap().name,
            "cfg"
        );
    }

    #[test]
    fn deployment() {
        let mut template_meta = go_meta("");
        template_meta.labels = map(&[("app", "web")]);
        let mut meta = go_meta("web");
        meta.namespace = s("default");
        meta.labels = map(&[("app", "web")]);
        let deployment = apps::Deployment {
            metadata: Some(meta),
            spec: Some(apps::DeploymentSpec {
                replicas: Some(3),
                selector: Some(meta::LabelSelector {
                    match_labels: map(&[("app", "web")]),
                    match_expressions: vec![],
                }),
                template: Some(core::PodTemplateSpec {
                    metadata: Some(template_meta),
                    spec: Some(core::PodSpec {
                        containers: vec![core::Container {
                            name: s("nginx"),
                            image: s("nginx"),
                            resources: Some(core::ResourceRequirements::default()),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                }),
                strategy: Some(apps::DeploymentStrategy {
                    r#type: s("RollingUpdate"),
                    rolling_update: Some(apps::RollingUpdateDeployment {
                        max_unavailable: Some(int_or_string_int(1)),
                        max_surge: Some(IntOrString {
                            r#type: Some(1),
                            int_val: Some(0),
                            str_val: s("25%"),
                        }),
                    }),
                }),
                min_ready_seconds: Some(0),
                paused: Some(false),
                ..Default::default()
            }),
            status: Some(apps::DeploymentStatus::default()),
        };
        let json = decode(&body("apps/v1", "Deployment", &deployment)).unwrap();
        assert_eq!(
            json,
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    "name": "web",
                    "namespace": "default",
                    "labels": {"app": "web"},
                    "creationTimestamp": null,
                    "generation": 0,
                },
                "spec": {
                    "replicas": 3,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}, "creationTimestamp": null, "generation": 0},
                        "spec": {"containers": [{"name": "nginx", "image": "nginx", "resources": {}}]},
                    },
                    "strategy": {
                        "type": "RollingUpdate",
                        "rollingUpdate": {"maxUnavailable": 1, "maxSurge": "25%"},
                    },
                    "minReadySeconds": 0,
                    "paused": false,
                },
                "status": {},
            })
        );
        let typed: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json).unwrap();
        assert_eq!(typed.spec.replicas, Some(3));
    }

    #[test]
    fn replicas_zero_is_kept() {
        let deployment = apps::Deployment {
            metadata: Some(go_meta("web")),
            spec: Some(apps::DeploymentSpec {
                replicas: Some(0),
                ..Default::default()
            }),
            status: None,
        };
        let json = decode(&body("apps/v1", "Deployment", &deployment)).unwrap();
        assert_eq!(json["spec"], json!({"replicas": 0}));
    }

    #[test]
    fn times_durations_and_raw_json() {
        let names = names();
        let decoder = Decoder { names };
        let index = |package: &str, name: &str| {
            MESSAGES
                .iter()
                .position(|m| m.package == package && m.name == name)
                .unwrap()
        };
        let micro = meta::MicroTime {
            seconds: Some(1_700_000_000),
            nanos: Some(123_456_789),
        };
        let i = index("apimachinery.pkg.apis.meta.v1", "MicroTime");
        assert_eq!(
            decoder.message(i, &micro.encode_to_vec(), 0).unwrap(),
            json!("2023-11-14T22:13:20.123456Z")
        );
        let zero = meta::MicroTime {
            seconds: Some(GO_ZERO_TIME_SECONDS),
            nanos: Some(0),
        };
        assert_eq!(
            decoder.message(i, &zero.encode_to_vec(), 0).unwrap(),
            Value::Null
        );

        let i = index("apimachinery.pkg.apis.meta.v1", "Time");
        let early = meta::Time {
            seconds: Some(GO_ZERO_TIME_SECONDS + 1),
            nanos: None,
        };
        assert_eq!(
            decoder.message(i, &early.encode_to_vec(), 0).unwrap(),
            json!("0001-01-01T00:00:01Z")
        );
        let first = meta::Time {
            seconds: Some(-62_167_219_200),
            nanos: None,
        };
        assert_eq!(
            decoder.message(i, &first.encode_to_vec(), 0).unwrap(),
            json!("0000-01-01T00:00:00Z")
        );
        let last = meta::Time {
            seconds: Some(253_402_300_799),
            nanos: Some(999_999_999),
        };
        assert_eq!(
            decoder.message(i, &last.encode_to_vec(), 0).unwrap(),
            json!("9999-12-31T23:59:59Z")
        );
        let far = meta::Time {
            seconds: Some(i64::MAX),
            nanos: None,
        };
        assert!(decoder.message(i, &far.encode_to_vec(), 0).is_err());

        let i = index("apimachinery.pkg.apis.meta.v1", "Duration");
        let d = meta::Duration {
            duration: Some(3_600_000_000_000),
        };
        assert_eq!(
            decoder.message(i, &d.encode_to_vec(), 0).unwrap(),
            json!("1h0m0s")
        );

        let i = index("apimachinery.pkg.runtime", "RawExtension");
        let raw = k8s_pb::apimachinery::pkg::runtime::RawExtension {
            raw: Some(br#"{"a":[1,2]}"#.to_vec()),
        };
        assert_eq!(
            decoder.message(i, &raw.encode_to_vec(), 0).unwrap(),
            json!({"a": [1, 2]})
        );
        let bad = k8s_pb::apimachinery::pkg::runtime::RawExtension {
            raw: Some(b"{nope".to_vec()),
        };
        assert!(matches!(
            decoder.message(i, &bad.encode_to_vec(), 0),
            Err(ProtobufError::InvalidJson { .. })
        ));
        // A RawExtension may hold a nested protobuf object.
        let nested = k8s_pb::apimachinery::pkg::runtime::RawExtension {
            raw: Some(body("v1", "Namespace", &core::Namespace::default())),
        };
        assert_eq!(
            decoder.message(i, &nested.encode_to_vec(), 0).unwrap(),
            json!({"apiVersion": "v1", "kind": "Namespace"})
        );

        let i = index("apimachinery.pkg.apis.meta.v1", "FieldsV1");
        let fields = meta::FieldsV1 {
            raw: Some(br#"{"f:metadata":{}}"#.to_vec()),
        };
        assert_eq!(
            decoder.message(i, &fields.encode_to_vec(), 0).unwrap(),
            json!({"f:metadata": {}})
        );
    }

    #[test]
    fn civil_dates() {
        for (days, date) in [
            (0, (1970, 1, 1)),
            (-1, (1969, 12, 31)),
            (59, (1970, 3, 1)),
            (11_016, (2000, 2, 29)),
            (19_675, (2023, 11, 14)),
            (-719_528, (0, 1, 1)),
            (-719_162, (1, 1, 1)),
            (2_932_896, (9999, 12, 31)),
        ] {
            assert_eq!(civil_from_days(days), date, "{days}");
        }
    }

    #[test]
    fn go_durations() {
        for (nanos, text) in [
            (0, "0s"),
            (1, "1ns"),
            (999, "999ns"),
            (1_500, "1.5µs"),
            (1_500_000, "1.5ms"),
            (1_000_000_000, "1s"),
            (1_500_000_000, "1.5s"),
            (90_000_000_000, "1m30s"),
            (3_600_000_000_000, "1h0m0s"),
            (3_723_500_000_000, "1h2m3.5s"),
            (-1_000_000_000, "-1s"),
            (i64::MIN, "-2562047h47m16.854775808s"),
        ] {
            assert_eq!(go_duration(nanos), text, "{nanos}");
        }
    }

    #[test]
    fn kinds_resolve() {
        let names = names();
        for (api_version, kind, package, name) in [
            ("v1", "Pod", "api.core.v1", "Pod"),
            ("apps/v1", "Deployment", "api.apps.v1", "Deployment"),
            ("batch/v1", "CronJob", "api.batch.v1", "CronJob"),
            ("policy/v1", "Eviction", "api.policy.v1", "Eviction"),
            ("autoscaling/v1", "Scale", "api.autoscaling.v1", "Scale"),
            (
                "autoscaling/v2",
                "HorizontalPodAutoscaler",
                "api.autoscaling.v2",
                "HorizontalPodAutoscaler",
            ),
            (
                "authentication.k8s.io/v1",
                "TokenRequest",
                "api.authentication.v1",
                "TokenRequest",
            ),
            (
                "authorization.k8s.io/v1",
                "SelfSubjectAccessReview",
                "api.authorization.v1",
                "SelfSubjectAccessReview",
            ),
            (
                "rbac.authorization.k8s.io/v1",
                "ClusterRoleBinding",
                "api.rbac.v1",
                "ClusterRoleBinding",
            ),
            (
                "networking.k8s.io/v1",
                "Ingress",
                "api.networking.v1",
                "Ingress",
            ),
            (
                "apiregistration.k8s.io/v1",
                "APIService",
                "kube_aggregator.pkg.apis.apiregistration.v1",
                "APIService",
            ),
            (
                "v1",
                "DeleteOptions",
                "apimachinery.pkg.apis.meta.v1",
                "DeleteOptions",
            ),
        ] {
            let i = find_kind(names, api_version, kind)
                .unwrap_or_else(|| panic!("{api_version} {kind}"));
            assert_eq!((MESSAGES[i].package, MESSAGES[i].name), (package, name));
        }
        assert_eq!(find_kind(names, "v1", "NoSuchKind"), None);
        let err = decode(&body(
            "example.com/v1",
            "Widget",
            &core::Namespace::default(),
        ))
        .unwrap_err();
        assert!(matches!(err, ProtobufError::UnknownKind { .. }), "{err}");
    }

    #[test]
    fn specials_are_recognized() {
        let names = names();
        let special = |package: &str, name: &str| {
            let i = MESSAGES
                .iter()
                .position(|m| m.package == package && m.name == name)
                .unwrap();
            names.messages[i].special
        };
        let meta = "apimachinery.pkg.apis.meta.v1";
        assert_eq!(special(meta, "Time"), Some(Special::Time));
        assert_eq!(special(meta, "MicroTime"), Some(Special::MicroTime));
        assert_eq!(special(meta, "Duration"), Some(Special::Duration));
        assert_eq!(special(meta, "FieldsV1"), Some(Special::RawJson));
        assert_eq!(special(meta, "Verbs"), Some(Special::ItemsArray));
        assert_eq!(special(meta, "ObjectMeta"), None);
        assert_eq!(
            special("apimachinery.pkg.api.resource", "Quantity"),
            Some(Special::Quantity)
        );
        assert_eq!(
            special("apimachinery.pkg.util.intstr", "IntOrString"),
            Some(Special::IntOrString)
        );
        assert_eq!(
            special("apimachinery.pkg.runtime", "RawExtension"),
            Some(Special::RawJson)
        );
        assert_eq!(
            special("api.authentication.v1", "ExtraValue"),
            Some(Special::ItemsArray)
        );
        let crd = "apiextensions_apiserver.pkg.apis.apiextensions.v1";
        assert_eq!(special(crd, "Json"), Some(Special::RawJson));
        assert_eq!(
            special(crd, "JsonSchemaPropsOrArray"),
            Some(Special::PropsOrArray)
        );
        assert_eq!(
            special(crd, "JsonSchemaPropsOrBool"),
            Some(Special::PropsOrBool)
        );
        assert_eq!(
            special(crd, "JsonSchemaPropsOrStringArray"),
            Some(Special::PropsOrStringArray)
        );
    }

    /// Every field of a message with a schema maps to a schema property or is embedded inline,
    /// except fields k8s-pb's protos have that the k8s-openapi version in use no longer has.
    #[test]
    fn field_names_come_from_schemas() {
        let names = names();
        let schemas = load_schemas();
        let mut unmatched = Vec::new();
        let mut with_schema = 0;
        for (m, n) in MESSAGES.iter().zip(&names.messages) {
            let Some(schema) = schemas.get(&message_key(m)) else {
                continue;
            };
            if n.special.is_some() {
                continue;
            }
            with_schema += 1;
            for (f, j) in m.fields.iter().zip(&n.fields) {
                if let JsonField::Named { name, .. } = j {
                    if !schema.properties.contains(name) {
                        unmatched.push(format!("{}.{}.{} -> {name}", m.package, m.name, f.name));
                    }
                }
            }
        }
        assert!(
            with_schema > 500,
            "only {with_schema} messages have schemas"
        );
        // Alpha fields of k8s-pb's Kubernetes version that the k8s-openapi version in use dropped.
        let dropped = ["api.core.v1.PodSpec.workload_ref -> workloadRef"];
        unmatched.retain(|u| !dropped.contains(&u.as_str()));
        assert!(unmatched.is_empty(), "{unmatched:#?}");
    }

    #[test]
    fn inline_embeddings() {
        let names = names();
        let inline = |package: &str, name: &str, field: &str| {
            let i = MESSAGES
                .iter()
                .position(|m| m.package == package && m.name == name)
                .unwrap();
            let f = MESSAGES[i]
                .fields
                .iter()
                .position(|f| f.name == field)
                .unwrap();
            names.messages[i].fields[f] == JsonField::Inline
        };
        assert!(inline("api.core.v1", "Probe", "handler"));
        assert!(inline("api.core.v1", "Volume", "volume_source"));
        assert!(inline(
            "api.core.v1",
            "PersistentVolumeSpec",
            "persistent_volume_source"
        ));
        assert!(inline(
            "api.core.v1",
            "EphemeralContainer",
            "ephemeral_container_common"
        ));
        assert!(inline(
            "api.core.v1",
            "ConfigMapVolumeSource",
            "local_object_reference"
        ));
        assert!(inline(
            "api.core.v1",
            "SecretKeySelector",
            "local_object_reference"
        ));
        assert!(!inline("api.core.v1", "PodSpec", "security_context"));
        assert!(!inline("api.core.v1", "Pod", "metadata"));
    }

    #[test]
    fn bad_envelopes_are_errors() {
        assert!(matches!(decode(b""), Err(ProtobufError::MissingMagic)));
        assert!(matches!(
            decode(b"{\"kind\":\"Pod\"}"),
            Err(ProtobufError::MissingMagic)
        ));
        assert!(matches!(
            decode(b"k8s\0"),
            Err(ProtobufError::MissingTypeMeta)
        ));
        assert!(matches!(
            decode(b"k8s\0\x0a"),
            Err(ProtobufError::Truncated)
        ));
        assert!(matches!(
            decode(b"k8s\0\x0a\xff"),
            Err(ProtobufError::Truncated)
        ));
        assert!(matches!(
            decode(b"k8s\0\x00"),
            Err(ProtobufError::InvalidKey { .. })
        ));
        assert!(matches!(
            decode(b"k8s\0\x0f"),
            Err(ProtobufError::InvalidKey { .. })
        ));
        assert!(matches!(
            decode(b"k8s\0\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"),
            Err(ProtobufError::MalformedVarint)
        ));
        // raw given as a varint.
        assert!(matches!(
            decode(b"k8s\0\x10\x01"),
            Err(ProtobufError::WireTypeMismatch { .. })
        ));
        let gzip = Unknown {
            type_meta: Some(TypeMeta {
                api_version: s("v1"),
                kind: s("Pod"),
            }),
            raw: Some(vec![]),
            content_encoding: s("gzip"),
            content_type: None,
        };
        let mut b = MAGIC.to_vec();
        b.extend(gzip.encode_to_vec());
        assert!(matches!(
            decode(&b),
            Err(ProtobufError::UnsupportedContent(_))
        ));
    }

    #[test]
    fn unknown_fields_and_groups_are_skipped() {
        let ns = core::Namespace {
            metadata: Some(go_meta("demo")),
            ..Default::default()
        };
        let mut raw = ns.encode_to_vec();
        // Field 99 as varint, fixed64, bytes, fixed32, and a group with a nested field.
        raw.extend([0x98, 0x06, 0x01]);
        raw.extend([0x99, 0x06, 1, 2, 3, 4, 5, 6, 7, 8]);
        raw.extend([0x9a, 0x06, 0x02, b'h', b'i']);
        raw.extend([0x9d, 0x06, 1, 2, 3, 4]);
        raw.extend([0x9b, 0x06, 0x08, 0x01, 0x9c, 0x06]);
        let unknown = Unknown {
            type_meta: Some(TypeMeta {
                api_version: s("v1"),
                kind: s("Namespace"),
            }),
            raw: Some(raw),
            ..Default::default()
        };
        let mut b = MAGIC.to_vec();
        b.extend(unknown.encode_to_vec());
        assert_eq!(
            decode(&b).unwrap(),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo", "creationTimestamp": null, "generation": 0}})
        );
    }

    #[test]
    fn deep_nesting_is_an_error() {
        // Groups nested far deeper than allowed, in an unknown field.
        let mut raw = Vec::new();
        for _ in 0..10_000 {
            raw.extend([0x9b, 0x06]);
        }
        let unknown = Unknown {
            type_meta: Some(TypeMeta {
                api_version: s("v1"),
                kind: s("Namespace"),
            }),
            raw: Some(raw),
            ..Default::default()
        };
        let mut b = MAGIC.to_vec();
        b.extend(unknown.encode_to_vec());
        assert!(matches!(decode(&b), Err(ProtobufError::TooDeep)));

        // Recursive messages nested far deeper than allowed.
        use k8s_pb::apiextensions_apiserver::pkg::apis::apiextensions::v1 as crd;
        let mut props = crd::JsonSchemaProps::default();
        for _ in 0..300 {
            props = crd::JsonSchemaProps {
                items: Some(Box::new(crd::JsonSchemaPropsOrArray {
                    schema: Some(Box::new(props)),
                    j_son_schemas: vec![],
                })),
                ..Default::default()
            };
        }
        let i = MESSAGES
            .iter()
            .position(|m| m.name == "JsonSchemaProps" && m.package.ends_with("apiextensions.v1"))
            .unwrap();
        let decoder = Decoder { names: names() };
        assert!(matches!(
            decoder.message(i, &props.encode_to_vec(), 0),
            Err(ProtobufError::TooDeep)
        ));
    }

    /// Bodies real kubectl (v1.32.4) sent for `kubectl <command>` (namespaced ones with
    /// `-n default`), with what `--dry-run=client -o json` printed for the same command.
    const KUBECTL_BODIES: &[(&str, &str, &str)] = &[
        (
            "create namespace demo",
            "6b3873000a0f0a02763112094e616d657370616365121c0a140a0464656d6f12001a0022002a0032003800420012001a020a001a002200",
            r#"{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"demo","creationTimestamp":null},"spec":{},"status":{}}"#,
        ),
        (
            "create configmap cfg --from-literal=a=1",
            "6b3873000a0f0a0276311209436f6e6669674d617012240a1a0a0363666712001a0764656661756c7422002a0032003800420012060a01611201311a002200",
            r#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"cfg","namespace":"default","creationTimestamp":null},"data":{"a":"1"}}"#,
        ),
        (
            "create deployment web --image=nginx --replicas=3",
            "6b3873000a150a07617070732f7631120a4465706c6f796d656e7412b2010a260a0377656212001a0764656661756c7422002a003200380042005a0a0a036170701203776562127a0803120c0a0a0a0361707012037765621a600a1c0a0012001a0022002a003200380042005a0a0a036170701203776562124012220a056e67696e7812056e67696e782a0042006a007200800100880100900100a201001a00320042004a0052005800600068008201008a01009a0100c2010022020a00280038001a0c0800100018002000280038001a002200",
            r#"{"kind":"Deployment","apiVersion":"apps/v1","metadata":{"name":"web","namespace":"default","creationTimestamp":null,"labels":{"app":"web"}},"spec":{"replicas":3,"selector":{"matchLabels":{"app":"web"}},"template":{"metadata":{"creationTimestamp":null,"labels":{"app":"web"}},"spec":{"containers":[{"name":"nginx","image":"nginx","resources":{}}]}},"strategy":{}},"status":{}}"#,
        ),
        (
            "create secret generic s1 --from-literal=p=hunter2",
            "6b3873000a0c0a0276311206536563726574122b0a190a02733112001a0764656661756c7422002a00320038004200120c0a0170120768756e746572321a001a002200",
            r#"{"kind":"Secret","apiVersion":"v1","metadata":{"name":"s1","namespace":"default","creationTimestamp":null},"data":{"p":"aHVudGVyMg=="}}"#,
        ),
        (
            "create job j1 --image=busybox -- echo hi",
            "6b3873000a0f0a0862617463682f763112034a6f62128b010a190a026a3112001a0764656661756c7422002a00320038004200126432620a100a0012001a0022002a00320038004200124e122b0a026a31120762757379626f781a046563686f1a0268692a0042006a007200800100880100900100a201001a054e65766572320042004a0052005800600068008201008a01009a0100c201001a082000280030003a001a002200",
            r#"{"kind":"Job","apiVersion":"batch/v1","metadata":{"name":"j1","namespace":"default","creationTimestamp":null},"spec":{"template":{"metadata":{"creationTimestamp":null},"spec":{"containers":[{"name":"j1","image":"busybox","command":["echo","hi"],"resources":{}}],"restartPolicy":"Never"}}},"status":{}}"#,
        ),
        (
            "create cronjob c1 --image=busybox --schedule='*/5 * * * *' -- date",
            "6b3873000a130a0862617463682f7631120743726f6e4a6f6212ab010a190a02633112001a0764656661756c7422002a00320038004200128b010a0b2a2f35202a202a202a202a1a002a7a0a120a02633112001a0022002a00320038004200126432620a100a0012001a0022002a00320038004200124e12270a026331120762757379626f781a04646174652a0042006a007200800100880100900100a201001a094f6e4661696c757265320042004a0052005800600068008201008a01009a0100c201001a001a002200",
            r#"{"kind":"CronJob","apiVersion":"batch/v1","metadata":{"name":"c1","namespace":"default","creationTimestamp":null},"spec":{"schedule":"*/5 * * * *","jobTemplate":{"metadata":{"name":"c1","creationTimestamp":null},"spec":{"template":{"metadata":{"creationTimestamp":null},"spec":{"containers":[{"name":"c1","image":"busybox","command":["date"],"resources":{}}],"restartPolicy":"OnFailure"}}}}},"status":{}}"#,
        ),
        (
            "create service clusterip svc1 --tcp=80:8080",
            "6b3873000a0d0a02763112075365727669636512730a280a047376633112001a0764656661756c7422002a003200380042005a0b0a0361707012047376633112430a1b0a0738302d38303830120354435018502207080010903f1a002800120b0a036170701204737663311a002209436c757374657249503a00420052005a00600068001a020a001a002200",
            r#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"svc1","namespace":"default","creationTimestamp":null,"labels":{"app":"svc1"}},"spec":{"ports":[{"name":"80-8080","protocol":"TCP","port":80,"targetPort":8080}],"selector":{"app":"svc1"},"type":"ClusterIP"},"status":{"loadBalancer":{}}}"#,
        ),
        (
            "create role r1 --verb=get,list --resource=pods",
            "6b3873000a240a1c726261632e617574686f72697a6174696f6e2e6b38732e696f2f76311204526f6c6512300a190a02723112001a0764656661756c7422002a0032003800420012130a036765740a046c69737412001a04706f64731a002200",
            r#"{"kind":"Role","apiVersion":"rbac.authorization.k8s.io/v1","metadata":{"name":"r1","namespace":"default","creationTimestamp":null},"rules":[{"verbs":["get","list"],"apiGroups":[""],"resources":["pods"]}]}"#,
        ),
        (
            "create rolebinding rb1 --role=r1 --user=alice --serviceaccount=default:sa1",
            "6b3873000a2b0a1c726261632e617574686f72697a6174696f6e2e6b38732e696f2f7631120b526f6c6542696e64696e671291010a1a0a0372623112001a0764656661756c7422002a00320038004200122a0a04557365721219726261632e617574686f72697a6174696f6e2e6b38732e696f1a05616c696365220012200a0e536572766963654163636f756e7412001a03736131220764656661756c741a250a19726261632e617574686f72697a6174696f6e2e6b38732e696f1204526f6c651a0272311a002200",
            r#"{"kind":"RoleBinding","apiVersion":"rbac.authorization.k8s.io/v1","metadata":{"name":"rb1","namespace":"default","creationTimestamp":null},"subjects":[{"kind":"User","apiGroup":"rbac.authorization.k8s.io","name":"alice"},{"kind":"ServiceAccount","name":"sa1","namespace":"default"}],"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":"r1"}}"#,
        ),
        (
            "create quota q1 --hard=cpu=1,memory=1G,pods=10",
            "6b3873000a130a027631120d5265736f7572636551756f746112490a190a02713112001a0764656661756c7422002a00320038004200122a0a0a0a0363707512030a01310a0e0a066d656d6f727912040a0231470a0c0a04706f647312040a0231301a001a002200",
            r#"{"kind":"ResourceQuota","apiVersion":"v1","metadata":{"name":"q1","namespace":"default","creationTimestamp":null},"spec":{"hard":{"cpu":"1","memory":"1G","pods":"10"}},"status":{}}"#,
        ),
        (
            "create pdb pdb1 --selector=app=web --min-available=50%",
            "6b3873000a200a09706f6c6963792f76311213506f6444697372757074696f6e42756467657412440a1b0a047064623112001a0764656661756c7422002a0032003800420012190a09080110001a03353025120c0a0a0a0361707012037765621a0a080018002000280030001a002200",
            r#"{"kind":"PodDisruptionBudget","apiVersion":"policy/v1","metadata":{"name":"pdb1","namespace":"default","creationTimestamp":null},"spec":{"minAvailable":"50%","selector":{"matchLabels":{"app":"web"}}},"status":{"disruptionsAllowed":0,"currentHealthy":0,"desiredHealthy":0,"expectedPods":0}}"#,
        ),
        (
            "create priorityclass pc1 --value=1000 --description=hi",
            "6b3873000a250a147363686564756c696e672e6b38732e696f2f7631120d5072696f72697479436c61737312340a130a0370633112001a0022002a0032003800420010e8071800220268692a14507265656d70744c6f7765725072696f726974791a002200",
            r#"{"kind":"PriorityClass","apiVersion":"scheduling.k8s.io/v1","metadata":{"name":"pc1","creationTimestamp":null},"value":1000,"description":"hi","preemptionPolicy":"PreemptLowerPriority"}"#,
        ),
        (
            "create ingress ing1 --rule=foo.com/bar=svc1:80",
            "6b3873000a1f0a146e6574776f726b696e672e6b38732e696f2f76311207496e677265737312510a1b0a04696e673112001a0764656661756c7422002a00320038004200122e1a2c0a07666f6f2e636f6d12210a1f0a1d0a042f626172120e220c0a047376633112040a0010501a0545786163741a020a001a002200",
            r#"{"kind":"Ingress","apiVersion":"networking.k8s.io/v1","metadata":{"name":"ing1","namespace":"default","creationTimestamp":null},"spec":{"rules":[{"host":"foo.com","http":{"paths":[{"path":"/bar","pathType":"Exact","backend":{"service":{"name":"svc1","port":{"number":80}}}}]}}]},"status":{"loadBalancer":{}}}"#,
        ),
        (
            "create serviceaccount sa1",
            "6b3873000a140a027631120e536572766963654163636f756e74121c0a1a0a0373613112001a0764656661756c7422002a003200380042001a002200",
            r#"{"kind":"ServiceAccount","apiVersion":"v1","metadata":{"name":"sa1","namespace":"default","creationTimestamp":null}}"#,
        ),
        (
            "create configmap bincm --from-file=bin.dat (bytes 00 01 02 ff)",
            "6b3873000a0f0a0276311209436f6e6669674d6170122f0a1c0a0562696e636d12001a0764656661756c7422002a003200380042001a0f0a0762696e2e6461741204000102ff1a002200",
            r#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"bincm","namespace":"default","creationTimestamp":null},"binaryData":{"bin.dat":"AAEC/w=="}}"#,
        ),
        (
            "create deployment web2 --image=nginx --port=8080",
            "6b3873000a150a07617070732f7631120a4465706c6f796d656e7412c4010a280a047765623212001a0764656661756c7422002a003200380042005a0b0a036170701204776562321289010801120d0a0b0a036170701204776562321a6e0a1d0a0012001a0022002a003200380042005a0b0a03617070120477656232124d122f0a056e67696e7812056e67696e782a00320b0a00100018903f22002a0042006a007200800100880100900100a201001a00320042004a0052005800600068008201008a01009a0100c2010022020a00280038001a0c0800100018002000280038001a002200",
            r#"{"kind":"Deployment","apiVersion":"apps/v1","metadata":{"name":"web2","namespace":"default","creationTimestamp":null,"labels":{"app":"web2"}},"spec":{"replicas":1,"selector":{"matchLabels":{"app":"web2"}},"template":{"metadata":{"creationTimestamp":null,"labels":{"app":"web2"}},"spec":{"containers":[{"name":"nginx","image":"nginx","ports":[{"containerPort":8080}],"resources":{}}]}},"strategy":{}},"status":{}}"#,
        ),
        (
            "create secret docker-registry reg --docker-server=r.io --docker-username=u --docker-password=p",
            "6b3873000a0c0a02763112065365637265741293010a1a0a0372656712001a0764656661756c7422002a0032003800420012550a112e646f636b6572636f6e6669676a736f6e12407b226175746873223a7b22722e696f223a7b22757365726e616d65223a2275222c2270617373776f7264223a2270222c2261757468223a2264547077227d7d7d1a1e6b756265726e657465732e696f2f646f636b6572636f6e6669676a736f6e1a002200",
            r#"{"kind":"Secret","apiVersion":"v1","metadata":{"name":"reg","namespace":"default","creationTimestamp":null},"data":{".dockerconfigjson":"eyJhdXRocyI6eyJyLmlvIjp7InVzZXJuYW1lIjoidSIsInBhc3N3b3JkIjoicCIsImF1dGgiOiJkVHB3In19fQ=="},"type":"kubernetes.io/dockerconfigjson"}"#,
        ),
    ];

    fn unhex(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    /// `decoded` equals kubectl's JSON wherever that has a value; anything more is a zero
    /// number or `false`: Go's non-pointer fields, which its protobuf encoder writes and its
    /// JSON encoder omits when empty.
    fn assert_like_kubectl_json(decoded: &Value, expected: &Value, path: &str) {
        match (decoded, expected) {
            (Value::Object(d), Value::Object(e)) => {
                for (k, ev) in e {
                    let dv = d.get(k).unwrap_or_else(|| panic!("{path}.{k} is missing"));
                    assert_like_kubectl_json(dv, ev, &format!("{path}.{k}"));
                }
                for (k, dv) in d.iter().filter(|(k, _)| !e.contains_key(*k)) {
                    assert!(
                        *dv == Value::Bool(false) || dv.as_f64() == Some(0.0),
                        "{path}.{k}: unexpected {dv}"
                    );
                }
            }
            (Value::Array(d), Value::Array(e)) => {
                assert_eq!(d.len(), e.len(), "{path}");
                for (i, (dv, ev)) in d.iter().zip(e).enumerate() {
                    assert_like_kubectl_json(dv, ev, &format!("{path}[{i}]"));
                }
            }
            _ => assert_eq!(decoded, expected, "{path}"),
        }
    }

    /// Whether k8s-openapi accepts the object as its kind.
    fn typed_ok(object: &Value) -> bool {
        use k8s_openapi::api::{apps, batch, core, networking, policy, rbac, scheduling};
        fn ok<T: serde::de::DeserializeOwned>(v: &Value) -> bool {
            serde_json::from_value::<T>(v.clone()).is_ok()
        }
        match object["kind"].as_str().unwrap_or_default() {
            "Namespace" => ok::<core::v1::Namespace>(object),
            "ConfigMap" => ok::<core::v1::ConfigMap>(object),
            "Secret" => ok::<core::v1::Secret>(object),
            "Service" => ok::<core::v1::Service>(object),
            "ServiceAccount" => ok::<core::v1::ServiceAccount>(object),
            "ResourceQuota" => ok::<core::v1::ResourceQuota>(object),
            "Deployment" => ok::<apps::v1::Deployment>(object),
            "Job" => ok::<batch::v1::Job>(object),
            "CronJob" => ok::<batch::v1::CronJob>(object),
            "Role" => ok::<rbac::v1::Role>(object),
            "RoleBinding" => ok::<rbac::v1::RoleBinding>(object),
            "PodDisruptionBudget" => ok::<policy::v1::PodDisruptionBudget>(object),
            "PriorityClass" => ok::<scheduling::v1::PriorityClass>(object),
            "Ingress" => ok::<networking::v1::Ingress>(object),
            other => panic!("no typed check for {other}"),
        }
    }

    #[test]
    fn real_kubectl_bodies() {
        for (command, hex, expected) in KUBECTL_BODIES {
            let decoded = decode(&unhex(hex)).unwrap_or_else(|e| panic!("{command}: {e}"));
            let expected: Value = serde_json::from_str(expected).unwrap();
            assert_like_kubectl_json(&decoded, &expected, command);
            assert!(typed_ok(&decoded), "{command}: {decoded}");
        }
    }

    /// A small deterministic generator for the garbage tests.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn sample_bodies() -> Vec<Vec<u8>> {
        let pod = core::Pod {
            metadata: Some(go_meta("web")),
            spec: Some(core::PodSpec {
                containers: vec![web_container()],
                ..Default::default()
            }),
            status: None,
        };
        let cm = core::ConfigMap {
            metadata: Some(go_meta("cfg")),
            data: map(&[("a", "1")]),
            binary_data: [("b".to_string(), vec![1u8, 2])].into(),
            immutable: None,
        };
        let mut bodies = vec![body("v1", "Pod", &pod), body("v1", "ConfigMap", &cm)];
        bodies.extend(KUBECTL_BODIES.iter().map(|(_, hex, _)| unhex(hex)));
        bodies
    }

    #[test]
    fn truncated_input_never_panics() {
        for full in sample_bodies() {
            assert!(decode(&full).is_ok());
            let mut errors = 0;
            for len in 0..full.len() {
                if decode(&full[..len]).is_err() {
                    errors += 1;
                }
            }
            // Cut inside the envelope's raw field, every prefix is malformed.
            assert!(errors > full.len() * 9 / 10, "{errors} of {}", full.len());
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let bodies = sample_bodies();
        for round in 0..3_000 {
            let mut b = bodies[round % bodies.len()].clone();
            match round % 3 {
                // Flip a few bytes.
                0 => {
                    for _ in 0..1 + rng.next() % 4 {
                        let i = (rng.next() as usize) % b.len();
                        b[i] = rng.next() as u8;
                    }
                }
                // Random bytes after the magic.
                1 => {
                    let len = (rng.next() % 64) as usize;
                    b.truncate(4);
                    b.extend((0..len).map(|_| rng.next() as u8));
                }
                // Splice random bytes into the middle.
                _ => {
                    let at = 4 + (rng.next() as usize) % (b.len() - 4);
                    let junk: Vec<u8> = (0..1 + rng.next() % 8).map(|_| rng.next() as u8).collect();
                    b.splice(at..at, junk);
                }
            }
            let _ = decode(&b);
        }
    }
}
