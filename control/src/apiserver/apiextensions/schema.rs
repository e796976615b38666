//! A CustomResourceDefinition version's `openAPIV3Schema`, compiled once into the tree the
//! validator, the pruner and the defaulter walk (apiextensions-apiserver's
//! `pkg/apiserver/schema`: `Structural`).
//!
//! Only structural schemas are accepted (apiextensions/v1 requires them): every node says its
//! `type` (unless `x-kubernetes-int-or-string` or `x-kubernetes-preserve-unknown-fields`
//! stands in), `properties` and `additionalProperties` exclude each other, and the logical
//! junctors (`allOf`, `anyOf`, `oneOf`, `not`) only add value validations to what the
//! structural part already declares. [`Schema::compile`] reports every rule broken as the
//! field causes Kubernetes gives, under the path of the definition.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use serde_json::Value;

use crate::apiserver::error::FieldError;

/// The most nodes one schema may have: schemas are user input, and each node is walked for
/// every object written.
pub const MAX_NODES: usize = 10_000;

/// How deep a schema may nest.
pub const MAX_DEPTH: usize = 64;

/// The JSON types of a schema node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// `object`.
    Object,
    /// `array`.
    Array,
    /// `string`.
    String,
    /// `integer`.
    Integer,
    /// `number` (integers are numbers too).
    Number,
    /// `boolean`.
    Boolean,
}

impl Type {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "object" => Self::Object,
            "array" => Self::Array,
            "string" => Self::String,
            "integer" => Self::Integer,
            "number" => Self::Number,
            "boolean" => Self::Boolean,
            _ => return None,
        })
    }

    /// The name the schema and the error messages use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Object => "object",
            Self::Array => "array",
            Self::String => "string",
            Self::Integer => "integer",
            Self::Number => "number",
            Self::Boolean => "boolean",
        }
    }
}

/// `x-kubernetes-list-type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListType {
    /// The list is replaced whole (the default).
    Atomic,
    /// Items are unique scalars.
    Set,
    /// Items are objects unique by these keys.
    Map(Vec<String>),
}

/// What a node allows besides its declared properties.
#[derive(Debug, Clone)]
pub enum Additional {
    /// Nothing: unknown fields are pruned (or kept under preserve-unknown-fields).
    None,
    /// A map: every value follows this schema.
    Schema(Box<Node>),
    /// `additionalProperties: true`: any values, kept.
    Any,
}

/// One compiled schema node.
#[derive(Debug, Clone)]
pub struct Node {
    /// The declared type; `None` with int-or-string or preserve-unknown-fields.
    pub ty: Option<Type>,
    /// `format` (int32, int64, date-time, ...).
    pub format: Option<String>,
    /// `nullable`: null is kept and allowed.
    pub nullable: bool,
    /// `x-kubernetes-int-or-string`.
    pub int_or_string: bool,
    /// `x-kubernetes-preserve-unknown-fields`.
    pub preserve_unknown: bool,
    /// `x-kubernetes-embedded-resource`: an object with apiVersion, kind and metadata.
    pub embedded: bool,
    /// `properties`.
    pub properties: BTreeMap<String, Node>,
    /// `additionalProperties`.
    pub additional: Additional,
    /// `items`.
    pub items: Option<Box<Node>>,
    /// `required`.
    pub required: Vec<String>,
    /// `enum`.
    pub enumeration: Vec<Value>,
    /// `pattern`, compiled.
    pub pattern: Option<(String, regex::Regex)>,
    /// `minimum` and whether it is exclusive.
    pub minimum: Option<(f64, bool)>,
    /// `maximum` and whether it is exclusive.
    pub maximum: Option<(f64, bool)>,
    /// `multipleOf`.
    pub multiple_of: Option<f64>,
    /// `minLength`.
    pub min_length: Option<i64>,
    /// `maxLength`.
    pub max_length: Option<i64>,
    /// `minItems`.
    pub min_items: Option<i64>,
    /// `maxItems`.
    pub max_items: Option<i64>,
    /// `uniqueItems`.
    pub unique_items: bool,
    /// `minProperties`.
    pub min_properties: Option<i64>,
    /// `maxProperties`.
    pub max_properties: Option<i64>,
    /// `default`.
    pub default: Option<Value>,
    /// `x-kubernetes-list-type`.
    pub list_type: Option<ListType>,
    /// `x-kubernetes-map-type: atomic`: server-side apply replaces the map whole.
    pub map_atomic: bool,
    /// `allOf`, `anyOf`, `oneOf`, `not`: value validations only.
    pub all_of: Vec<Node>,
    /// `anyOf`.
    pub any_of: Vec<Node>,
    /// `oneOf`.
    pub one_of: Vec<Node>,
    /// `not`.
    pub not: Option<Box<Node>>,
    /// `x-kubernetes-validations`, compiled.
    pub rules: Vec<super::cel::Rule>,
}

impl Node {
    fn empty() -> Self {
        Self {
            ty: None,
            format: None,
            nullable: false,
            int_or_string: false,
            preserve_unknown: false,
            embedded: false,
            properties: BTreeMap::new(),
            additional: Additional::None,
            items: None,
            required: Vec::new(),
            enumeration: Vec::new(),
            pattern: None,
            minimum: None,
            maximum: None,
            multiple_of: None,
            min_length: None,
            max_length: None,
            min_items: None,
            max_items: None,
            unique_items: false,
            min_properties: None,
            max_properties: None,
            default: None,
            list_type: None,
            map_atomic: false,
            all_of: Vec::new(),
            any_of: Vec::new(),
            one_of: Vec::new(),
            not: None,
            rules: Vec::new(),
        }
    }
}

/// A compiled, structural schema of one custom resource version.
#[derive(Debug, Clone)]
pub struct Schema {
    /// The root (the whole object).
    pub root: Node,
    /// Whether any node has a default (objects are walked for defaults only then).
    pub has_defaults: bool,
    /// Whether any node has CEL rules (objects are walked for them only then).
    pub has_rules: bool,
    /// Where the defaults are, to tell whether a stored object needs them on read.
    pub read_defaults: Option<super::read_defaults::DefaultsTree>,
}

/// Compiles `props`, collecting every structural rule broken under `path`.
struct Compiler {
    errors: Vec<FieldError>,
    nodes: usize,
    has_defaults: bool,
    rules: usize,
}

impl Schema {
    /// Compiles a version's `openAPIV3Schema` (at `path` in the definition, for the error
    /// causes). The root must be an object; `metadata` may only restrict `name` and
    /// `generateName`, as Kubernetes allows.
    pub fn compile(props: &JSONSchemaProps, path: &str) -> Result<Self, Vec<FieldError>> {
        let mut c = Compiler {
            errors: Vec::new(),
            nodes: 0,
            has_defaults: false,
            rules: 0,
        };
        let root = c.node(props, path, 0, false);
        if root.ty != Some(Type::Object) {
            c.errors.push(FieldError::invalid(
                format!("{path}.type"),
                props.type_.as_deref().unwrap_or(""),
                "must be object at the root",
            ));
        }
        if let Some(meta) = props.properties.as_ref().and_then(|p| p.get("metadata")) {
            let allowed = |k: &String| k == "name" || k == "generateName";
            if meta.type_.as_deref() != Some("object") {
                c.errors.push(FieldError::invalid(
                    format!("{path}.properties[metadata].type"),
                    meta.type_.as_deref().unwrap_or(""),
                    "must be object",
                ));
            }
            if meta
                .properties
                .as_ref()
                .is_some_and(|p| p.keys().any(|k| !allowed(k)))
                || meta.default.is_some()
                || meta.additional_properties.is_some()
            {
                c.errors.push(FieldError::forbidden(
                    format!("{path}.properties[metadata]"),
                    "must not specify anything other than name and generateName, but metadata is implicitly specified",
                ));
            }
        }
        if c.errors.is_empty() {
            let read_defaults = if c.has_defaults {
                super::read_defaults::DefaultsTree::of(&root)
            } else {
                None
            };
            Ok(Self {
                root,
                has_defaults: c.has_defaults,
                has_rules: c.rules > 0,
                read_defaults,
            })
        } else {
            Err(c.errors)
        }
    }
}

impl Compiler {
    fn node(&mut self, p: &JSONSchemaProps, path: &str, depth: usize, in_junctor: bool) -> Node {
        let mut n = Node::empty();
        self.nodes += 1;
        if self.nodes == MAX_NODES + 1 {
            self.errors.push(FieldError::forbidden(
                path,
                format!("the schema has more than {MAX_NODES} nodes"),
            ));
        }
        if depth > MAX_DEPTH {
            self.errors.push(FieldError::forbidden(
                path,
                format!("the schema nests deeper than {MAX_DEPTH} levels"),
            ));
            return n;
        }
        for (name, set) in [
            ("$ref", p.ref_path.is_some()),
            ("additionalItems", p.additional_items.is_some()),
            ("patternProperties", p.pattern_properties.is_some()),
            ("dependencies", p.dependencies.is_some()),
            ("definitions", p.definitions.is_some()),
            ("id", p.id.is_some()),
            ("$schema", p.schema.is_some()),
        ] {
            if set {
                self.errors.push(FieldError::forbidden(
                    format!("{path}.{name}"),
                    format!("{name} is not supported"),
                ));
            }
        }
        n.int_or_string = p.x_kubernetes_int_or_string == Some(true);
        n.preserve_unknown = p.x_kubernetes_preserve_unknown_fields == Some(true);
        n.embedded = p.x_kubernetes_embedded_resource == Some(true);
        n.nullable = p.nullable == Some(true);
        n.format = p.format.clone();
        match p.type_.as_deref() {
            None | Some("") => {
                if !in_junctor && !n.int_or_string && !n.preserve_unknown {
                    self.errors.push(FieldError::required(format!("{path}.type")).with_message(
                        "must not be empty for specified object fields",
                    ));
                }
            }
            Some(t) => match Type::parse(t) {
                Some(ty) => n.ty = Some(ty),
                None => self.errors.push(FieldError {
                    reason: "FieldValueNotSupported",
                    field: format!("{path}.type"),
                    message: format!(
                        "Unsupported value: {t:?}: supported values: \"array\", \"boolean\", \"integer\", \"number\", \"object\", \"string\""
                    ),
                }),
            },
        }
        if in_junctor && (p.type_.is_some() || p.default.is_some() || p.nullable.is_some()) {
            for (name, set) in [
                ("type", p.type_.is_some()),
                ("default", p.default.is_some()),
                ("nullable", p.nullable.is_some()),
            ] {
                if set {
                    self.errors.push(FieldError::forbidden(
                        format!("{path}.{name}"),
                        "must be empty to be structural",
                    ));
                }
            }
        }
        if n.int_or_string && !matches!(p.type_.as_deref(), None | Some("")) {
            self.errors.push(FieldError::invalid(
                format!("{path}.type"),
                p.type_.as_deref().unwrap_or(""),
                "must be empty if x-kubernetes-int-or-string is true",
            ));
        }
        if n.embedded && n.ty != Some(Type::Object) {
            self.errors.push(FieldError::invalid(
                format!("{path}.type"),
                p.type_.as_deref().unwrap_or(""),
                "must be object if x-kubernetes-embedded-resource is true",
            ));
        }
        if let Some(props) = &p.properties {
            if n.ty.is_some() && n.ty != Some(Type::Object) {
                self.errors.push(FieldError::forbidden(
                    format!("{path}.properties"),
                    "must be empty for types other than object",
                ));
            }
            for (name, child) in props {
                let child_path = format!("{path}.properties[{name}]");
                let compiled = self.node(child, &child_path, depth + 1, in_junctor);
                n.properties.insert(name.clone(), compiled);
            }
        }
        match &p.additional_properties {
            None => {}
            Some(JSONSchemaPropsOrBool::Bool(allow)) => {
                if p.properties.is_some() {
                    self.errors.push(FieldError::forbidden(
                        format!("{path}.additionalProperties"),
                        "additionalProperties and properties are mutual exclusive",
                    ));
                } else if *allow {
                    n.additional = Additional::Any;
                } else {
                    self.errors.push(FieldError::forbidden(
                        format!("{path}.additionalProperties"),
                        "must not be false: unknown fields are pruned instead",
                    ));
                }
            }
            Some(JSONSchemaPropsOrBool::Schema(schema)) => {
                if p.properties.is_some() {
                    self.errors.push(FieldError::forbidden(
                        format!("{path}.additionalProperties"),
                        "additionalProperties and properties are mutual exclusive",
                    ));
                }
                let child_path = format!("{path}.additionalProperties");
                n.additional = Additional::Schema(Box::new(self.node(
                    schema,
                    &child_path,
                    depth + 1,
                    in_junctor,
                )));
            }
        }
        match &p.items {
            None => {
                if n.ty == Some(Type::Array) && !in_junctor {
                    self.errors.push(
                        FieldError::required(format!("{path}.items"))
                            .with_message("must be specified"),
                    );
                }
            }
            Some(JSONSchemaPropsOrArray::Schema(items)) => {
                let child_path = format!("{path}.items");
                n.items = Some(Box::new(self.node(
                    items,
                    &child_path,
                    depth + 1,
                    in_junctor,
                )));
            }
            Some(JSONSchemaPropsOrArray::Schemas(_)) => {
                self.errors.push(FieldError::forbidden(
                    format!("{path}.items"),
                    "items must be a schema object and not an array",
                ));
            }
        }
        n.required = p.required.clone().unwrap_or_default();
        n.enumeration = p.enum_.iter().flatten().map(|v| v.0.clone()).collect();
        if let Some(pattern) = &p.pattern {
            // Kubernetes compiles patterns with Go's RE2 syntax, which the regex crate follows.
            match regex::RegexBuilder::new(pattern)
                .size_limit(1 << 20)
                .build()
            {
                Ok(re) => n.pattern = Some((pattern.clone(), re)),
                Err(e) => self.errors.push(FieldError::invalid(
                    format!("{path}.pattern"),
                    pattern,
                    format!("must be a valid regular expression, but isn't: {e}"),
                )),
            }
        }
        n.minimum = p.minimum.map(|m| (m, p.exclusive_minimum == Some(true)));
        n.maximum = p.maximum.map(|m| (m, p.exclusive_maximum == Some(true)));
        n.multiple_of = p.multiple_of;
        if n.multiple_of.is_some_and(|m| m <= 0.0) {
            self.errors.push(FieldError::invalid(
                format!("{path}.multipleOf"),
                &format!("{}", p.multiple_of.unwrap_or_default()),
                "must be greater than zero",
            ));
        }
        n.min_length = p.min_length;
        n.max_length = p.max_length;
        n.min_items = p.min_items;
        n.max_items = p.max_items;
        n.unique_items = p.unique_items == Some(true);
        n.min_properties = p.min_properties;
        n.max_properties = p.max_properties;
        for (name, v) in [
            ("minLength", n.min_length),
            ("maxLength", n.max_length),
            ("minItems", n.min_items),
            ("maxItems", n.max_items),
            ("minProperties", n.min_properties),
            ("maxProperties", n.max_properties),
        ] {
            if v.is_some_and(|v| v < 0) {
                self.errors.push(FieldError::invalid(
                    format!("{path}.{name}"),
                    &v.unwrap_or_default().to_string(),
                    "must be greater than or equal to 0",
                ));
            }
        }
        if n.unique_items {
            // Kubernetes forbids uniqueItems (quadratic); list-type set says the same.
            self.errors.push(FieldError::forbidden(
                format!("{path}.uniqueItems"),
                "uniqueItems cannot be set to true since the runtime complexity becomes quadratic; use x-kubernetes-list-type: set instead",
            ));
        }
        n.list_type = match p.x_kubernetes_list_type.as_deref() {
            None => None,
            Some("atomic") => Some(ListType::Atomic),
            Some("set") => Some(ListType::Set),
            Some("map") => Some(ListType::Map(
                p.x_kubernetes_list_map_keys.clone().unwrap_or_default(),
            )),
            Some(other) => {
                self.errors.push(FieldError {
                    reason: "FieldValueNotSupported",
                    field: format!("{path}.x-kubernetes-list-type"),
                    message: format!(
                        "Unsupported value: {other:?}: supported values: \"atomic\", \"map\", \"set\""
                    ),
                });
                None
            }
        };
        if n.list_type.is_some() && n.ty != Some(Type::Array) {
            self.errors.push(FieldError::invalid(
                format!("{path}.x-kubernetes-list-type"),
                p.x_kubernetes_list_type.as_deref().unwrap_or(""),
                "must only be used if type == array",
            ));
        }
        match &n.list_type {
            Some(ListType::Map(keys)) => {
                if keys.is_empty() {
                    self.errors.push(
                        FieldError::required(format!("{path}.x-kubernetes-list-map-keys"))
                            .with_message("must not be empty if x-kubernetes-list-type is map"),
                    );
                }
                match n.items.as_deref() {
                    Some(items) if items.ty == Some(Type::Object) => {
                        for key in keys {
                            match items.properties.get(key) {
                                None => self.errors.push(FieldError::invalid(
                                    format!("{path}.x-kubernetes-list-map-keys"),
                                    key,
                                    "entries must all be names of item properties",
                                )),
                                Some(k) if !matches!(k.ty, Some(Type::String | Type::Integer | Type::Number | Type::Boolean)) => {
                                    self.errors.push(FieldError::invalid(
                                        format!("{path}.items.properties[{key}].type"),
                                        k.ty.map(Type::name).unwrap_or(""),
                                        "must be a scalar type if parent array's x-kubernetes-list-type is map",
                                    ))
                                }
                                Some(_) => {}
                            }
                        }
                    }
                    _ => self.errors.push(FieldError::invalid(
                        format!("{path}.items.type"),
                        "",
                        "must be object if parent array's x-kubernetes-list-type is map",
                    )),
                }
            }
            Some(ListType::Set) => {
                if n.items
                    .as_deref()
                    .is_some_and(|i| matches!(i.ty, Some(Type::Object | Type::Array)))
                {
                    self.errors.push(FieldError::invalid(
                        format!("{path}.items.type"),
                        "",
                        "must be a scalar type if parent array's x-kubernetes-list-type is set",
                    ));
                }
            }
            _ => {
                if p.x_kubernetes_list_map_keys.is_some() {
                    self.errors.push(FieldError::invalid(
                        format!("{path}.x-kubernetes-list-map-keys"),
                        "",
                        "must only be used if x-kubernetes-list-type == map",
                    ));
                }
            }
        }
        if let Some(map_type) = p.x_kubernetes_map_type.as_deref() {
            if !matches!(map_type, "granular" | "atomic") {
                self.errors.push(FieldError {
                    reason: "FieldValueNotSupported",
                    field: format!("{path}.x-kubernetes-map-type"),
                    message: format!(
                        "Unsupported value: {map_type:?}: supported values: \"atomic\", \"granular\""
                    ),
                });
            } else if n.ty != Some(Type::Object) {
                self.errors.push(FieldError::invalid(
                    format!("{path}.x-kubernetes-map-type"),
                    map_type,
                    "must only be used if type == object",
                ));
            }
            n.map_atomic = map_type == "atomic";
        }
        for (name, list, into) in [
            ("allOf", &p.all_of, 0),
            ("anyOf", &p.any_of, 1),
            ("oneOf", &p.one_of, 2),
        ] {
            for (i, child) in list.iter().flatten().enumerate() {
                let compiled = self.node(child, &format!("{path}.{name}[{i}]"), depth + 1, true);
                match into {
                    0 => n.all_of.push(compiled),
                    1 => n.any_of.push(compiled),
                    _ => n.one_of.push(compiled),
                }
            }
        }
        if let Some(rules) = &p.x_kubernetes_validations {
            if in_junctor {
                self.errors.push(FieldError::forbidden(
                    format!("{path}.x-kubernetes-validations"),
                    "must be empty to be structural",
                ));
            } else {
                self.rules += rules.len();
                if self.rules > super::cel::MAX_RULES {
                    self.errors.push(FieldError::forbidden(
                        format!("{path}.x-kubernetes-validations"),
                        format!("a schema may have at most {} rules", super::cel::MAX_RULES),
                    ));
                } else {
                    n.rules = super::cel::compile(rules, path, &mut self.errors);
                }
            }
        }
        if let Some(not) = &p.not {
            n.not = Some(Box::new(self.node(
                not,
                &format!("{path}.not"),
                depth + 1,
                true,
            )));
        }
        if let Some(default) = &p.default {
            if in_junctor {
                // reported above
            } else {
                self.has_defaults = true;
                let mut value = default.0.clone();
                // A default must itself be valid and pruned (Kubernetes checks both).
                let mut errs = Vec::new();
                super::validate::value(&n, &value, &format!("{path}.default"), &mut errs);
                super::prune::prune(&n, &mut value, "", &mut Vec::new());
                if value != default.0 {
                    self.errors.push(FieldError::invalid(
                        format!("{path}.default"),
                        &default.0.to_string(),
                        "must not have unknown fields",
                    ));
                }
                self.errors.extend(errs);
                n.default = Some(value);
            }
        }
        n
    }
}
