//! Our HCL schemas: one description yields the hclspec sent to Nomad and the tolerant decoder.
//!
//! A schema is an [`Object`] of named fields, each an attribute, a single block or a list of
//! blocks ([`Node`]). [`Object::to_spec`] renders it as the `hclspec::Spec` returned from
//! `ConfigSchema` / `TaskConfigSchema`; the Nomad client parses the user's HCL with that spec
//! and sends the result as cty-msgpack. [`Object::decode`] then turns the decoded
//! [`cty::Value`](crate::cty::Value) into JSON that serde (or figment) can deserialise into the
//! config structs, checking it against the same description.
//!
//! The decoder is deliberately tolerant of encoders other than go-cty (protocol doc §5.1): keys
//! may come in any order or be absent, numbers may arrive in any int width, as floats or as
//! decimal strings, and nulls are dropped so serde defaults apply. It is strict about what would
//! hide a mistake: unknown keys, wrong types, missing required fields and unknown values are
//! errors naming the full path of the field.
//!
//! ```
//! use nomad_driver_ecs::schema::{Object, Ty};
//!
//! let schema = Object::new()
//!     .required_attr("cluster", Ty::String)
//!     .attr_default("enabled", Ty::Bool, "false")
//!     .block("task", Object::new().attr("launch_type", Ty::String));
//! let spec = schema.to_spec();
//! # let _ = spec;
//! ```

use std::collections::HashSet;
use std::fmt;

use serde_json::{Map as JsonMap, Number as JsonNumber, Value as Json};

use crate::cty::{Number, Value};
use crate::proto::hclspec;

/// The type of an attribute, rendered as an HCL type expression by its `Display`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ty {
    /// `string`
    String,
    /// `number`
    Number,
    /// `bool`
    Bool,
    /// `list(T)`
    List(Box<Ty>),
    /// `set(T)`
    Set(Box<Ty>),
    /// `map(T)`
    Map(Box<Ty>),
    /// `any`: whatever the user wrote, passed through as JSON.
    Any,
}

impl Ty {
    /// `list(elem)`.
    #[must_use]
    pub fn list(elem: Ty) -> Ty {
        Ty::List(Box::new(elem))
    }

    /// `set(elem)`.
    #[must_use]
    pub fn set(elem: Ty) -> Ty {
        Ty::Set(Box::new(elem))
    }

    /// `map(elem)`.
    #[must_use]
    pub fn map(elem: Ty) -> Ty {
        Ty::Map(Box::new(elem))
    }
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ty::String => f.write_str("string"),
            Ty::Number => f.write_str("number"),
            Ty::Bool => f.write_str("bool"),
            Ty::List(elem) => write!(f, "list({elem})"),
            Ty::Set(elem) => write!(f, "set({elem})"),
            Ty::Map(elem) => write!(f, "map({elem})"),
            Ty::Any => f.write_str("any"),
        }
    }
}

/// A block body (or the root of a config): named fields in declaration order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Object {
    /// The fields; names are unique.
    pub fields: Vec<(&'static str, Node)>,
}

/// One field of an [`Object`].
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// An attribute `name = value`.
    Attr {
        /// Its type.
        ty: Ty,
        /// Whether Nomad rejects the config when it is absent.
        required: bool,
        /// An HCL literal expression Nomad substitutes when the attribute is absent, e.g.
        /// `"false"`, `"30"`, `"\"FARGATE\""` (strings need their inner quotes).
        default: Option<&'static str>,
    },
    /// A single `name { ... }` block.
    Block {
        /// Whether Nomad rejects the config when it is absent.
        required: bool,
        /// The block's body.
        body: Object,
    },
    /// Repeated `name { ... }` blocks.
    BlockList {
        /// Fewest blocks allowed.
        min_items: u64,
        /// Most blocks allowed; 0 means no limit.
        max_items: u64,
        /// Each block's body.
        body: Object,
    },
}

/// Why a decoded config value does not fit its schema.
///
/// Paths are dotted for attributes and blocks, with `[i]` for list elements and `["k"]` for
/// map entries, e.g. `task.network_configuration.aws_vpc_configuration.subnets[1]`; `(root)`
/// is the config itself. Messages name kinds, never values, so secrets are not echoed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// The value has the wrong type.
    #[error("invalid value for `{path}`: expected {expected}, found {found}")]
    WrongType {
        /// Where.
        path: String,
        /// What the schema wants, e.g. `list(string)` or `block`.
        expected: String,
        /// What arrived, e.g. `bool` or `non-numeric string`.
        found: String,
    },
    /// A required attribute or block is null or absent.
    #[error("missing required {what} `{path}`")]
    Missing {
        /// Where.
        path: String,
        /// `attribute` or `block`.
        what: &'static str,
    },
    /// A key the schema does not declare.
    #[error("unknown key `{path}`; {}", allowed_keys(allowed))]
    UnknownKey {
        /// The unknown key's path.
        path: String,
        /// The keys allowed at that level.
        allowed: Vec<&'static str>,
    },
    /// A value is cty-unknown (not yet computed).
    #[error("value of `{path}` is not known")]
    NotKnown {
        /// Where.
        path: String,
    },
    /// The same key appears twice in one map.
    #[error("key `{path}` appears more than once")]
    DuplicateKey {
        /// The repeated key's path.
        path: String,
    },
    /// A block list has too few or too many blocks.
    #[error("`{path}` has {count} block(s), expected {}", block_bounds(*min, *max))]
    BlockCount {
        /// Where.
        path: String,
        /// How many arrived.
        count: usize,
        /// The schema's `min_items`.
        min: u64,
        /// The schema's `max_items` (0: no limit).
        max: u64,
    },
}

impl SchemaError {
    /// The path of the field at fault.
    #[must_use]
    pub fn path(&self) -> &str {
        match self {
            SchemaError::WrongType { path, .. }
            | SchemaError::Missing { path, .. }
            | SchemaError::UnknownKey { path, .. }
            | SchemaError::NotKnown { path }
            | SchemaError::DuplicateKey { path }
            | SchemaError::BlockCount { path, .. } => path,
        }
    }
}

fn allowed_keys(allowed: &[&'static str]) -> String {
    if allowed.is_empty() {
        return "no keys are allowed here".to_owned();
    }
    let listed: Vec<String> = allowed.iter().map(|key| format!("`{key}`")).collect();
    format!("allowed keys are {}", listed.join(", "))
}

/// "at least N", "exactly N" or "between N and M" block(s), for messages.
pub(crate) fn block_bounds(min: u64, max: u64) -> String {
    match max {
        0 => format!("at least {min}"),
        _ if min == max => format!("exactly {min}"),
        _ => format!("between {min} and {max}"),
    }
}

impl Object {
    /// An object with no fields.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a field.
    ///
    /// # Panics
    ///
    /// If `name` is already a field: schemas are fixed in code, so this is a programming error.
    #[must_use]
    pub fn field(mut self, name: &'static str, node: Node) -> Self {
        assert!(
            self.fields.iter().all(|(existing, _)| *existing != name),
            "schema field `{name}` declared twice"
        );
        self.fields.push((name, node));
        self
    }

    /// Adds an optional attribute with no default.
    #[must_use]
    pub fn attr(self, name: &'static str, ty: Ty) -> Self {
        self.field(
            name,
            Node::Attr {
                ty,
                required: false,
                default: None,
            },
        )
    }

    /// Adds an attribute Nomad requires the user to set.
    #[must_use]
    pub fn required_attr(self, name: &'static str, ty: Ty) -> Self {
        self.field(
            name,
            Node::Attr {
                ty,
                required: true,
                default: None,
            },
        )
    }

    /// Adds an optional attribute whose absence Nomad fills with the HCL literal `default`.
    #[must_use]
    pub fn attr_default(self, name: &'static str, ty: Ty, default: &'static str) -> Self {
        self.field(
            name,
            Node::Attr {
                ty,
                required: false,
                default: Some(default),
            },
        )
    }

    /// Adds an optional single block.
    #[must_use]
    pub fn block(self, name: &'static str, body: Object) -> Self {
        self.field(
            name,
            Node::Block {
                required: false,
                body,
            },
        )
    }

    /// Adds a single block Nomad requires.
    #[must_use]
    pub fn required_block(self, name: &'static str, body: Object) -> Self {
        self.field(
            name,
            Node::Block {
                required: true,
                body,
            },
        )
    }

    /// Adds a repeatable block with no count limits.
    #[must_use]
    pub fn block_list(self, name: &'static str, body: Object) -> Self {
        self.block_list_bounded(name, 0, 0, body)
    }

    /// Adds a repeatable block allowed `min_items..=max_items` times (`max_items` 0: no limit).
    #[must_use]
    pub fn block_list_bounded(
        self,
        name: &'static str,
        min_items: u64,
        max_items: u64,
        body: Object,
    ) -> Self {
        self.field(
            name,
            Node::BlockList {
                min_items,
                max_items,
                body,
            },
        )
    }

    /// The hclspec for this object, as a root `Object` spec.
    ///
    /// # Guarantees
    ///
    /// Every `Attr`, `Block` and `BlockList` carries its `name` explicitly (hcldec only infers
    /// names for direct children of an `Object`, not inside `Default` or `nested`). An attribute
    /// with a default becomes `Default { primary: Attr, default: Literal }`.
    #[must_use]
    pub fn to_spec(&self) -> hclspec::Spec {
        let attributes = self
            .fields
            .iter()
            .map(|(name, node)| ((*name).to_owned(), node.to_spec(name)))
            .collect();
        spec(hclspec::spec::Block::Object(hclspec::Object { attributes }))
    }

    /// Checks a decoded config against this schema and converts it to JSON for serde.
    ///
    /// The result is a JSON object holding only the fields that have a non-null value, so
    /// serde defaults apply to the rest; a null root counts as an empty object. Numbers become
    /// JSON integers when integral and within `i64` (uint64 above that stays a `u64`), otherwise
    /// `f64`; a number may arrive as decimal text (`"0.1"`, `"30"`). A `[type-json, value]`
    /// dynamic wrapper is unwrapped where the schema says [`Ty::Any`]; elsewhere `Any` values
    /// pass through as plain JSON. Null elements inside lists and maps stay JSON `null`.
    ///
    /// # Errors
    ///
    /// A [`SchemaError`] naming the path when a key is not in the schema or repeated, a value
    /// has the wrong type (including a non-numeric string or an out-of-range number where a
    /// number is expected), a required attribute or block is null or absent, a block list has
    /// a count outside its bounds, or a value is unknown.
    pub fn decode(&self, value: &Value) -> Result<Json, SchemaError> {
        match value {
            Value::Null => self.decode_fields(&[], ""),
            other => self.decode_body(other, "", "object"),
        }
        .map(Json::Object)
    }

    fn decode_body(
        &self,
        value: &Value,
        path: &str,
        expected: &str,
    ) -> Result<JsonMap<String, Json>, SchemaError> {
        match value {
            Value::Map(entries) => self.decode_fields(entries, path),
            Value::Unknown => Err(not_known(path)),
            other => Err(wrong_type(path, expected, other.kind())),
        }
    }

    fn decode_fields(
        &self,
        entries: &[(String, Value)],
        path: &str,
    ) -> Result<JsonMap<String, Json>, SchemaError> {
        check_unique(entries, path)?;
        if let Some((key, _)) = entries
            .iter()
            .find(|(key, _)| !self.fields.iter().any(|(name, _)| name == key))
        {
            return Err(SchemaError::UnknownKey {
                path: child(path, key),
                allowed: self.fields.iter().map(|(name, _)| *name).collect(),
            });
        }
        let mut out = JsonMap::new();
        for (name, node) in &self.fields {
            let value = entries
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value);
            if let Some(json) = node.decode(value.unwrap_or(&Value::Null), &child(path, name))? {
                out.insert((*name).to_owned(), json);
            }
        }
        Ok(out)
    }
}

impl Node {
    fn to_spec(&self, name: &str) -> hclspec::Spec {
        use hclspec::spec::Block as B;
        match self {
            Node::Attr {
                ty,
                required,
                default,
            } => {
                let attr = spec(B::Attr(hclspec::Attr {
                    name: name.to_owned(),
                    r#type: ty.to_string(),
                    required: *required,
                }));
                match default {
                    None => attr,
                    Some(literal) => spec(B::Default(Box::new(hclspec::Default {
                        primary: Some(Box::new(attr)),
                        default: Some(Box::new(spec(B::Literal(hclspec::Literal {
                            value: (*literal).to_owned(),
                        })))),
                    }))),
                }
            }
            Node::Block { required, body } => spec(B::BlockValue(Box::new(hclspec::Block {
                name: name.to_owned(),
                required: *required,
                nested: Some(Box::new(body.to_spec())),
            }))),
            Node::BlockList {
                min_items,
                max_items,
                body,
            } => spec(B::BlockList(Box::new(hclspec::BlockList {
                name: name.to_owned(),
                min_items: *min_items,
                max_items: *max_items,
                nested: Some(Box::new(body.to_spec())),
            }))),
        }
    }

    /// The JSON for this field, or `None` when it is to be left out.
    fn decode(&self, value: &Value, path: &str) -> Result<Option<Json>, SchemaError> {
        if matches!(value, Value::Unknown) {
            return Err(not_known(path));
        }
        match self {
            Node::Attr { required: true, .. } | Node::Block { required: true, .. }
                if matches!(value, Value::Null) =>
            {
                let what = if matches!(self, Node::Attr { .. }) {
                    "attribute"
                } else {
                    "block"
                };
                Err(SchemaError::Missing {
                    path: path.to_owned(),
                    what,
                })
            }
            Node::BlockList { min_items, .. } if *min_items > 0 && matches!(value, Value::Null) => {
                Err(SchemaError::Missing {
                    path: path.to_owned(),
                    what: "block",
                })
            }
            _ if matches!(value, Value::Null) => Ok(None),
            Node::Attr { ty, .. } => decode_ty(ty, value, path).map(Some),
            Node::Block { body, .. } => body
                .decode_body(value, path, "block")
                .map(|map| Some(Json::Object(map))),
            Node::BlockList {
                min_items,
                max_items,
                body,
            } => {
                let Value::List(items) = value else {
                    return Err(wrong_type(path, "list of blocks", value.kind()));
                };
                let count = items.len();
                let too_many =
                    *max_items > 0 && u64::try_from(count).unwrap_or(u64::MAX) > *max_items;
                if u64::try_from(count).unwrap_or(u64::MAX) < *min_items || too_many {
                    return Err(SchemaError::BlockCount {
                        path: path.to_owned(),
                        count,
                        min: *min_items,
                        max: *max_items,
                    });
                }
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        body.decode_body(item, &index(path, i), "block")
                            .map(Json::Object)
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(|blocks| Some(Json::Array(blocks)))
            }
        }
    }
}

fn spec(block: hclspec::spec::Block) -> hclspec::Spec {
    hclspec::Spec { block: Some(block) }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{}[{i}]", shown(path))
}

fn map_key(path: &str, key: &str) -> String {
    format!("{}[{key:?}]", shown(path))
}

fn shown(path: &str) -> &str {
    if path.is_empty() { "(root)" } else { path }
}

fn wrong_type(path: &str, expected: impl fmt::Display, found: &str) -> SchemaError {
    SchemaError::WrongType {
        path: shown(path).to_owned(),
        expected: expected.to_string(),
        found: found.to_owned(),
    }
}

fn not_known(path: &str) -> SchemaError {
    SchemaError::NotKnown {
        path: shown(path).to_owned(),
    }
}

fn check_unique(entries: &[(String, Value)], path: &str) -> Result<(), SchemaError> {
    let mut seen = HashSet::new();
    match entries.iter().find(|(key, _)| !seen.insert(key.as_str())) {
        Some((key, _)) => Err(SchemaError::DuplicateKey {
            path: child(path, key),
        }),
        None => Ok(()),
    }
}

/// Converts a map's entries with `convert`, refusing repeated keys.
fn json_object(
    entries: &[(String, Value)],
    path: &str,
    mut convert: impl FnMut(&str, &Value, &str) -> Result<Json, SchemaError>,
) -> Result<Json, SchemaError> {
    check_unique(entries, path)?;
    entries
        .iter()
        .map(|(key, value)| Ok((key.clone(), convert(key, value, &map_key(path, key))?)))
        .collect::<Result<JsonMap<_, _>, _>>()
        .map(Json::Object)
}

fn json_array(
    items: &[Value],
    path: &str,
    mut convert: impl FnMut(usize, &Value, &str) -> Result<Json, SchemaError>,
) -> Result<Json, SchemaError> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| convert(i, item, &index(path, i)))
        .collect::<Result<Vec<_>, _>>()
        .map(Json::Array)
}

fn decode_ty(ty: &Ty, value: &Value, path: &str) -> Result<Json, SchemaError> {
    let found = match (ty, value) {
        (_, Value::Unknown) => return Err(not_known(path)),
        (_, Value::Null) => return Ok(Json::Null),
        (Ty::Any, _) => return decode_any(value, path),
        (Ty::String, Value::String(text)) => return Ok(Json::String(text.clone())),
        (Ty::Number, Value::Number(number)) => number_json(number),
        (Ty::Number, Value::String(text)) => text_json(text),
        (Ty::Bool, Value::Bool(flag)) => return Ok(Json::Bool(*flag)),
        (Ty::List(elem) | Ty::Set(elem), Value::List(items)) => {
            return json_array(items, path, |_, item, path| decode_ty(elem, item, path));
        }
        (Ty::Map(elem), Value::Map(entries)) => {
            return json_object(entries, path, |_, item, path| decode_ty(elem, item, path));
        }
        _ => Err(value.kind()),
    };
    found.map_err(|found| wrong_type(path, ty, found))
}

/// Under `any`: unwraps a go-cty dynamic wrapper when there is one, else passes the value on.
///
/// A wrapper is a two-element list whose first element is cty's JSON type description (sent
/// as bin, decoded as a string). Nomad never sends wrappers (§5.1), and a user list shaped
/// exactly like one is implausible, so recognising them by shape is safe.
fn decode_any(value: &Value, path: &str) -> Result<Json, SchemaError> {
    if let Value::List(items) = value
        && let [Value::String(type_json), inner] = items.as_slice()
        && let Some(ty) = CtyType::from_json_text(type_json)
    {
        return decode_typed(&ty, inner, path);
    }
    decode_plain(value, path)
}

/// Any value as JSON, with no type to check against.
fn decode_plain(value: &Value, path: &str) -> Result<Json, SchemaError> {
    match value {
        Value::Null => Ok(Json::Null),
        Value::Unknown => Err(not_known(path)),
        Value::Bool(flag) => Ok(Json::Bool(*flag)),
        Value::Number(number) => {
            number_json(number).map_err(|found| wrong_type(path, "number", found))
        }
        Value::String(text) => Ok(Json::String(text.clone())),
        Value::List(items) => json_array(items, path, |_, item, path| decode_plain(item, path)),
        Value::Map(entries) => json_object(entries, path, |_, item, path| decode_plain(item, path)),
    }
}

/// A cty type as described by the type JSON inside a dynamic wrapper.
#[derive(Debug, Clone, PartialEq)]
enum CtyType {
    String,
    Number,
    Bool,
    Dynamic,
    /// Lists and sets alike.
    List(Box<CtyType>),
    Map(Box<CtyType>),
    Object(Vec<(String, CtyType)>),
    Tuple(Vec<CtyType>),
}

impl CtyType {
    fn from_json_text(text: &str) -> Option<CtyType> {
        // serde_json's own recursion limit bounds hostile nesting here.
        Self::from_json(&serde_json::from_str(text).ok()?)
    }

    fn from_json(json: &Json) -> Option<CtyType> {
        match json {
            Json::String(name) => match name.as_str() {
                "string" => Some(CtyType::String),
                "number" => Some(CtyType::Number),
                "bool" => Some(CtyType::Bool),
                "dynamic" => Some(CtyType::Dynamic),
                _ => None,
            },
            Json::Array(parts) => match (parts.first()?.as_str()?, &parts[1..]) {
                ("list" | "set", [elem]) => Some(CtyType::List(Box::new(Self::from_json(elem)?))),
                ("map", [elem]) => Some(CtyType::Map(Box::new(Self::from_json(elem)?))),
                // The optional third element lists optional attributes; it changes nothing here.
                ("object", [Json::Object(attrs)] | [Json::Object(attrs), Json::Array(_)]) => attrs
                    .iter()
                    .map(|(name, ty)| Some((name.clone(), Self::from_json(ty)?)))
                    .collect::<Option<_>>()
                    .map(CtyType::Object),
                ("tuple", [Json::Array(elems)]) => elems
                    .iter()
                    .map(Self::from_json)
                    .collect::<Option<_>>()
                    .map(CtyType::Tuple),
                _ => None,
            },
            _ => None,
        }
    }
}

impl fmt::Display for CtyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CtyType::String => f.write_str("string"),
            CtyType::Number => f.write_str("number"),
            CtyType::Bool => f.write_str("bool"),
            CtyType::Dynamic => f.write_str("any"),
            CtyType::List(elem) => write!(f, "list({elem})"),
            CtyType::Map(elem) => write!(f, "map({elem})"),
            CtyType::Object(_) => f.write_str("object"),
            CtyType::Tuple(elems) => write!(f, "tuple of {} elements", elems.len()),
        }
    }
}

/// Decodes the value of a dynamic wrapper against the type it declares.
fn decode_typed(ty: &CtyType, value: &Value, path: &str) -> Result<Json, SchemaError> {
    let found = match (ty, value) {
        (_, Value::Unknown) => return Err(not_known(path)),
        (_, Value::Null) => return Ok(Json::Null),
        (CtyType::Dynamic, _) => return decode_plain(value, path),
        (CtyType::String, Value::String(text)) => return Ok(Json::String(text.clone())),
        (CtyType::Number, Value::Number(number)) => number_json(number),
        (CtyType::Number, Value::String(text)) => text_json(text),
        (CtyType::Bool, Value::Bool(flag)) => return Ok(Json::Bool(*flag)),
        (CtyType::List(elem), Value::List(items)) => {
            return json_array(items, path, |_, item, path| decode_typed(elem, item, path));
        }
        (CtyType::Map(elem), Value::Map(entries)) => {
            return json_object(entries, path, |_, item, path| {
                decode_typed(elem, item, path)
            });
        }
        (CtyType::Object(attrs), Value::Map(entries)) => {
            return json_object(entries, path, |key, item, path| {
                let attr = attrs
                    .iter()
                    .find(|(name, _)| name == key)
                    .map_or(&CtyType::Dynamic, |(_, ty)| ty);
                decode_typed(attr, item, path)
            });
        }
        (CtyType::Tuple(elems), Value::List(items)) if elems.len() == items.len() => {
            return json_array(items, path, |i, item, path| {
                decode_typed(&elems[i], item, path)
            });
        }
        _ => Err(value.kind()),
    };
    found.map_err(|found| wrong_type(path, ty, found))
}

/// A number as JSON, or what to report as found when it has no JSON form.
fn number_json(number: &Number) -> Result<Json, &'static str> {
    match number {
        Number::Int(int) => Ok(Json::from(*int)),
        Number::UInt(uint) => Ok(Json::from(*uint)),
        Number::Float(float) => float_json(*float),
        Number::Text(text) => text_json(text),
    }
}

/// Decimal text (cty's form for numbers that are not exact int64/float64) as a JSON number.
fn text_json(text: &str) -> Result<Json, &'static str> {
    match Number::from_decimal(text) {
        None => Err("non-numeric string"),
        Some(Number::Text(plain)) => {
            let float: f64 = plain.parse().map_err(|_| "non-numeric string")?;
            // `from_decimal` turns zero into Int, so 0.0 here is an underflow.
            if float == 0.0 {
                return Err("number outside the float64 range");
            }
            float_json(float)
        }
        Some(exact) => number_json(&exact),
    }
}

fn float_json(float: f64) -> Result<Json, &'static str> {
    // 2^63 is exactly representable; the i64 range is [-2^63, 2^63).
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    if !float.is_finite() {
        return Err(if float.is_nan() {
            "NaN"
        } else {
            "number outside the float64 range"
        });
    }
    if float.fract() == 0.0 && (-LIMIT..LIMIT).contains(&float) {
        #[allow(clippy::cast_possible_truncation)] // integral and in range: exact
        return Ok(Json::from(float as i64));
    }
    JsonNumber::from_f64(float).map(Json::Number).ok_or("NaN")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;
    use crate::cty;

    fn s(text: &str) -> Value {
        Value::String(text.to_owned())
    }

    fn int(int: i64) -> Value {
        Value::Number(Number::Int(int))
    }

    fn map(entries: &[(&str, Value)]) -> Value {
        Value::Map(
            entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        )
    }

    fn list(items: &[Value]) -> Value {
        Value::List(items.to_vec())
    }

    /// The task schema of protocol doc §5.1, vector 2.
    fn sleep_task_schema() -> Object {
        Object::new()
            .required_attr("command", Ty::String)
            .attr("args", Ty::list(Ty::String))
            .attr("env_map", Ty::map(Ty::String))
            .attr_default("privileged", Ty::Bool, "false")
            .attr_default("timeout", Ty::Number, "30")
            .block_list(
                "mount",
                Object::new()
                    .attr("source", Ty::String)
                    .attr("readonly", Ty::Bool),
            )
    }

    fn ecs_task_schema() -> Object {
        let vpc = Object::new()
            .attr("assign_public_ip", Ty::Bool)
            .attr("subnets", Ty::list(Ty::String));
        Object::new().block(
            "task",
            Object::new()
                .attr("launch_type", Ty::String)
                .attr("desired_count", Ty::Number)
                .block(
                    "network_configuration",
                    Object::new().block("aws_vpc_configuration", vpc),
                ),
        )
    }

    fn hex(text: &str) -> Vec<u8> {
        text.split_whitespace()
            .map(|pair| u8::from_str_radix(pair, 16).expect("test hex"))
            .collect()
    }

    const VECTOR_2: &str = "86 a4 61 72 67 73 91 a2 31 30 a7 63 6f 6d 6d 61 6e 64 aa 2f 62 69 \
        6e 2f 73 6c 65 65 70 a7 65 6e 76 5f 6d 61 70 c0 a5 6d 6f 75 6e 74 91 82 a8 72 65 61 64 \
        6f 6e 6c 79 c0 a6 73 6f 75 72 63 65 a2 2f 61 aa 70 72 69 76 69 6c 65 67 65 64 c2 a7 74 \
        69 6d 65 6f 75 74 1e";

    fn attr_spec(name: &str, ty: &str, required: bool) -> hclspec::Spec {
        spec(hclspec::spec::Block::Attr(hclspec::Attr {
            name: name.into(),
            r#type: ty.into(),
            required,
        }))
    }

    fn object_spec(fields: Vec<(&str, hclspec::Spec)>) -> hclspec::Spec {
        let attributes: HashMap<String, hclspec::Spec> =
            fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        spec(hclspec::spec::Block::Object(hclspec::Object { attributes }))
    }

    #[test]
    fn types_render_as_hcl_type_expressions() {
        assert_eq!(Ty::String.to_string(), "string");
        assert_eq!(Ty::list(Ty::String).to_string(), "list(string)");
        assert_eq!(Ty::set(Ty::Bool).to_string(), "set(bool)");
        assert_eq!(Ty::map(Ty::Number).to_string(), "map(number)");
        assert_eq!(Ty::map(Ty::list(Ty::Any)).to_string(), "map(list(any))");
    }

    #[test]
    fn to_spec_names_every_node_and_wraps_defaults() {
        let schema = Object::new()
            .required_attr("cluster", Ty::String)
            .attr_default("launch_type", Ty::String, "\"FARGATE\"")
            .required_block("task", Object::new().attr("subnets", Ty::list(Ty::String)))
            .block_list_bounded(
                "sidecar",
                1,
                3,
                Object::new().attr_default("essential", Ty::Bool, "true"),
            );
        let default = |primary: hclspec::Spec, literal: &str| {
            spec(hclspec::spec::Block::Default(Box::new(hclspec::Default {
                primary: Some(Box::new(primary)),
                default: Some(Box::new(spec(hclspec::spec::Block::Literal(
                    hclspec::Literal {
                        value: literal.into(),
                    },
                )))),
            })))
        };
        let expected = object_spec(vec![
            ("cluster", attr_spec("cluster", "string", true)),
            (
                "launch_type",
                default(attr_spec("launch_type", "string", false), "\"FARGATE\""),
            ),
            (
                "task",
                spec(hclspec::spec::Block::BlockValue(Box::new(hclspec::Block {
                    name: "task".into(),
                    required: true,
                    nested: Some(Box::new(object_spec(vec![(
                        "subnets",
                        attr_spec("subnets", "list(string)", false),
                    )]))),
                }))),
            ),
            (
                "sidecar",
                spec(hclspec::spec::Block::BlockList(Box::new(
                    hclspec::BlockList {
                        name: "sidecar".into(),
                        min_items: 1,
                        max_items: 3,
                        nested: Some(Box::new(object_spec(vec![(
                            "essential",
                            default(attr_spec("essential", "bool", false), "true"),
                        )]))),
                    },
                ))),
            ),
        ]);
        assert_eq!(schema.to_spec(), expected);
    }

    #[test]
    fn an_empty_schema_is_still_an_object_spec() {
        assert_eq!(Object::new().to_spec(), object_spec(vec![]));
    }

    #[test]
    #[should_panic(expected = "declared twice")]
    fn declaring_a_field_twice_is_a_programming_error() {
        let _ = Object::new().attr("a", Ty::String).attr("a", Ty::Bool);
    }

    #[test]
    fn vector_2_bytes_decode_to_the_expected_json() {
        let value = cty::decode(&hex(VECTOR_2)).unwrap();
        let decoded = sleep_task_schema().decode(&value).unwrap();
        assert_eq!(
            decoded,
            json!({
                "args": ["10"],
                "command": "/bin/sleep",
                "mount": [{"source": "/a"}],
                "privileged": false,
                "timeout": 30,
            })
        );
    }

    #[test]
    fn keys_in_any_order_and_absent_optionals_are_accepted() {
        let value = map(&[("timeout", int(5)), ("command", s("/bin/true"))]);
        assert_eq!(
            sleep_task_schema().decode(&value).unwrap(),
            json!({"command": "/bin/true", "timeout": 5})
        );
    }

    #[test]
    fn numbers_arrive_in_any_form() {
        let schema = Object::new().attr("n", Ty::Number);
        let cases: Vec<(Value, Json)> = vec![
            (Value::Number(Number::Int(-7)), json!(-7)),
            (Value::Number(Number::UInt(u64::MAX)), json!(u64::MAX)),
            (Value::Number(Number::Float(2.5)), json!(2.5)),
            (Value::Number(Number::Float(30.0)), json!(30)),
            (Value::Number(Number::Text("0.1".into())), json!(0.1)),
            (s("0.1"), json!(0.1)),
            (s("30"), json!(30)),
            (s("1e3"), json!(1000)),
            (s("-2.50"), json!(-2.5)),
            (s("123456789012345678901234"), json!(1.2345678901234568e23)),
        ];
        for (value, expected) in cases {
            let decoded = schema.decode(&map(&[("n", value.clone())])).unwrap();
            assert_eq!(decoded, json!({ "n": expected }), "decoding {value:?}");
            assert_eq!(
                decoded["n"].is_i64(),
                expected.is_i64(),
                "integer-ness of {value:?}"
            );
        }
    }

    #[test]
    fn a_non_numeric_string_where_a_number_is_expected_names_the_field() {
        let err = ecs_task_schema()
            .decode(&map(&[("task", map(&[("desired_count", s("three"))]))]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value for `task.desired_count`: expected number, found non-numeric string"
        );
    }

    #[test]
    fn numeric_strings_beyond_float64_are_rejected() {
        let schema = Object::new().attr("n", Ty::Number);
        for text in ["1e400", "-1e400", "1e-400"] {
            let err = schema.decode(&map(&[("n", s(text))])).unwrap_err();
            assert_eq!(
                err,
                SchemaError::WrongType {
                    path: "n".into(),
                    expected: "number".into(),
                    found: "number outside the float64 range".into(),
                },
                "{text}"
            );
        }
        let err = schema
            .decode(&map(&[("n", Value::Number(Number::Float(f64::INFINITY)))]))
            .unwrap_err();
        assert!(matches!(err, SchemaError::WrongType { .. }));
    }

    #[test]
    fn nulls_are_omitted_so_serde_defaults_apply() {
        let value = map(&[
            ("command", s("x")),
            ("args", Value::Null),
            ("env_map", Value::Null),
            ("privileged", Value::Null),
            ("timeout", Value::Null),
            ("mount", Value::Null),
        ]);
        assert_eq!(
            sleep_task_schema().decode(&value).unwrap(),
            json!({"command": "x"})
        );
    }

    #[test]
    fn nulls_inside_collections_stay_null() {
        let value = map(&[("command", s("x")), ("args", list(&[s("a"), Value::Null]))]);
        assert_eq!(
            sleep_task_schema().decode(&value).unwrap(),
            json!({"command": "x", "args": ["a", null]})
        );
    }

    #[test]
    fn a_null_root_is_an_empty_object() {
        assert_eq!(ecs_task_schema().decode(&Value::Null).unwrap(), json!({}));
    }

    #[test]
    fn a_null_or_missing_required_attribute_is_an_error() {
        for value in [map(&[]), map(&[("command", Value::Null)]), Value::Null] {
            let err = sleep_task_schema().decode(&value).unwrap_err();
            assert_eq!(err.to_string(), "missing required attribute `command`");
        }
    }

    #[test]
    fn a_missing_required_block_is_an_error() {
        let schema = Object::new().required_block("task", Object::new().attr("x", Ty::String));
        assert_eq!(
            schema.decode(&map(&[])).unwrap_err(),
            SchemaError::Missing {
                path: "task".into(),
                what: "block"
            }
        );
    }

    #[test]
    fn unknown_keys_are_named_with_the_allowed_ones() {
        let value = map(&[("task", map(&[("launch_typo", s("FARGATE"))]))]);
        let err = ecs_task_schema().decode(&value).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown key `task.launch_typo`; allowed keys are `launch_type`, `desired_count`, `network_configuration`"
        );
    }

    #[test]
    fn repeated_keys_are_an_error() {
        let value = map(&[("command", s("a")), ("command", s("b"))]);
        assert_eq!(
            sleep_task_schema().decode(&value).unwrap_err(),
            SchemaError::DuplicateKey {
                path: "command".into()
            }
        );
    }

    #[test]
    fn wrong_types_name_the_full_path() {
        let value = map(&[(
            "task",
            map(&[(
                "network_configuration",
                map(&[(
                    "aws_vpc_configuration",
                    map(&[("subnets", list(&[s("subnet-1"), Value::Bool(true)]))]),
                )]),
            )]),
        )]);
        let err = ecs_task_schema().decode(&value).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value for `task.network_configuration.aws_vpc_configuration.subnets[1]`: expected string, found bool"
        );
        let err = ecs_task_schema()
            .decode(&map(&[(
                "task",
                map(&[("launch_type", Value::Bool(true))]),
            )]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value for `task.launch_type`: expected string, found bool"
        );
    }

    #[test]
    fn wrong_container_types_name_what_was_expected() {
        let schema = sleep_task_schema();
        let cases = [
            (
                map(&[("command", s("x")), ("args", s("a b"))]),
                "args",
                "list(string)",
                "string",
            ),
            (
                map(&[("command", s("x")), ("env_map", list(&[]))]),
                "env_map",
                "map(string)",
                "list",
            ),
            (
                map(&[("command", s("x")), ("mount", map(&[]))]),
                "mount",
                "list of blocks",
                "map",
            ),
            (
                map(&[("command", s("x")), ("mount", list(&[s("a")]))]),
                "mount[0]",
                "block",
                "string",
            ),
            (
                map(&[("command", s("x")), ("env_map", map(&[("A", int(1))]))]),
                "env_map[\"A\"]",
                "string",
                "number",
            ),
            (
                map(&[
                    ("command", s("x")),
                    ("mount", list(&[map(&[("readonly", s("yes"))])])),
                ]),
                "mount[0].readonly",
                "bool",
                "string",
            ),
            (list(&[]), "(root)", "object", "list"),
        ];
        for (value, path, expected, found) in cases {
            assert_eq!(
                schema.decode(&value).unwrap_err(),
                SchemaError::WrongType {
                    path: path.into(),
                    expected: expected.into(),
                    found: found.into()
                }
            );
        }
        let err = ecs_task_schema()
            .decode(&map(&[("task", Value::Bool(true))]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value for `task`: expected block, found bool"
        );
    }

    #[test]
    fn unknown_values_are_errors_wherever_they_appear() {
        let schema = sleep_task_schema();
        let cases = [
            (map(&[("command", Value::Unknown)]), "command"),
            (
                map(&[("command", s("x")), ("args", list(&[Value::Unknown]))]),
                "args[0]",
            ),
            (
                map(&[("command", s("x")), ("mount", Value::Unknown)]),
                "mount",
            ),
            (
                map(&[
                    ("command", s("x")),
                    ("mount", list(&[map(&[("source", Value::Unknown)])])),
                ]),
                "mount[0].source",
            ),
            (Value::Unknown, "(root)"),
        ];
        for (value, path) in cases {
            let err = schema.decode(&value).unwrap_err();
            assert_eq!(err.to_string(), format!("value of `{path}` is not known"));
        }
    }

    #[test]
    fn block_list_counts_are_checked_against_the_bounds() {
        let schema =
            Object::new().block_list_bounded("port", 1, 2, Object::new().attr("n", Ty::Number));
        let port = map(&[("n", int(1))]);
        assert_eq!(
            schema
                .decode(&map(&[("port", list(&[]))]))
                .unwrap_err()
                .to_string(),
            "`port` has 0 block(s), expected between 1 and 2"
        );
        assert!(matches!(
            schema.decode(&map(&[(
                "port",
                list(&[port.clone(), port.clone(), port.clone()])
            )])),
            Err(SchemaError::BlockCount { count: 3, .. })
        ));
        assert_eq!(
            schema.decode(&map(&[])).unwrap_err(),
            SchemaError::Missing {
                path: "port".into(),
                what: "block"
            }
        );
        assert_eq!(
            schema.decode(&map(&[("port", list(&[port]))])).unwrap(),
            json!({"port": [{"n": 1}]})
        );
    }

    #[test]
    fn dynamic_wrappers_are_unwrapped_under_any() {
        let schema = Object::new()
            .attr("extra", Ty::Any)
            .attr("names", Ty::list(Ty::String));
        let string_wrapper = cty::decode(&hex("92 c4 08 22 73 74 72 69 6e 67 22 a1 78")).unwrap();
        let list_wrapper = cty::decode(&hex(
            "92 c4 11 5b 22 6c 69 73 74 22 2c 22 73 74 72 69 6e 67 22 5d 91 a1 61",
        ))
        .unwrap();
        assert_eq!(
            schema.decode(&map(&[("extra", string_wrapper)])).unwrap(),
            json!({"extra": "x"})
        );
        assert_eq!(
            schema
                .decode(&map(&[("extra", list_wrapper.clone())]))
                .unwrap(),
            json!({"extra": ["a"]})
        );
        // Where the schema gives a concrete type, a wrapper is just a wrong-shaped list.
        let err = schema.decode(&map(&[("names", list_wrapper)])).unwrap_err();
        assert_eq!(err.path(), "names[1]");
    }

    #[test]
    fn wrapped_values_are_checked_against_their_declared_type() {
        let schema = Object::new().attr("extra", Ty::Any);
        let wrapped = |ty: &str, value: Value| map(&[("extra", list(&[s(ty), value]))]);
        assert_eq!(
            schema.decode(&wrapped("\"number\"", s("0.5"))).unwrap(),
            json!({"extra": 0.5})
        );
        assert_eq!(
            schema
                .decode(&wrapped(
                    r#"["object",{"a":"number","b":"string"}]"#,
                    map(&[("a", s("2")), ("b", s("2"))])
                ))
                .unwrap(),
            json!({"extra": {"a": 2, "b": "2"}})
        );
        assert_eq!(
            schema
                .decode(&wrapped(
                    r#"["tuple",["string","bool"]]"#,
                    list(&[s("a"), Value::Bool(true)])
                ))
                .unwrap(),
            json!({"extra": ["a", true]})
        );
        assert_eq!(
            schema
                .decode(&wrapped(r#"["map","bool"]"#, map(&[("k", s("no"))])))
                .unwrap_err(),
            SchemaError::WrongType {
                path: "extra[\"k\"]".into(),
                expected: "bool".into(),
                found: "string".into()
            }
        );
    }

    #[test]
    fn any_passes_plain_values_through() {
        let schema = Object::new().attr("extra", Ty::Any);
        let value = map(&[(
            "extra",
            map(&[
                ("list", list(&[s("not a wrapper"), int(1)])),
                ("n", Value::Number(Number::Float(0.25))),
            ]),
        )]);
        assert_eq!(
            schema.decode(&value).unwrap(),
            json!({"extra": {"list": ["not a wrapper", 1], "n": 0.25}})
        );
        let unknown_inside = map(&[("extra", list(&[Value::Unknown]))]);
        assert_eq!(
            schema.decode(&unknown_inside).unwrap_err(),
            SchemaError::NotKnown {
                path: "extra[0]".into()
            }
        );
    }

    #[test]
    fn decoded_json_deserialises_into_a_config_struct_with_defaults() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Sleep {
            command: String,
            #[serde(default)]
            args: Vec<String>,
            #[serde(default)]
            privileged: bool,
            #[serde(default = "thirty")]
            timeout: u64,
        }
        fn thirty() -> u64 {
            30
        }
        let json = sleep_task_schema()
            .decode(&map(&[("command", s("/bin/sleep")), ("timeout", s("45"))]))
            .unwrap();
        let parsed: Sleep = serde_json::from_value(json).unwrap();
        assert_eq!(
            parsed,
            Sleep {
                command: "/bin/sleep".into(),
                args: vec![],
                privileged: false,
                timeout: 45
            }
        );
    }
}
