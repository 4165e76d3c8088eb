//! Plugin settings: the schema a package's manifest declares under `[settings]` (a documented
//! subset of JSON Schema), the one validator that API saves and UI saves go through, the
//! defaults, and the write-only handling of secret fields.
//!
//! A leaf: imports nothing from the crate, does no I/O and never logs (secret values pass through
//! it). The package service parses a manifest's schema with [`Schema::parse`] (a [`SchemaError`]
//! refuses the package); the settings handlers answer a read with [`Schema::redact`] and a save
//! with [`Schema::merge_secrets`] then [`Schema::validate`]; the UI draws its form from
//! [`Schema::as_json`] (`src/http/ui/settings.js`). `docs/SETTINGS.md` says the same for plugin
//! authors.
//!
//! ## The subset
//! ```text
//! type        object | string | integer | number | boolean | array   every node has one; the root is an object
//! object      properties (field name → schema), required (names of properties)
//! string      pattern, minLength, maxLength, format = "secret", enum
//! integer     minimum, maximum (whole numbers), enum
//! number      minimum, maximum, enum
//! array       items (the items' schema; required), minItems, maxItems
//! everywhere  title, description (text), default (must itself be valid)
//! ```
//! Anything else — an unknown keyword, a keyword of another type, a keyword holding the wrong
//! kind of value, a bound below its partner, an enum value or default its own node refuses — is a
//! [`SchemaError`] naming its path in the schema, e.g. `properties.mqtt.properties.port.maximum`
//! (relative to the schema: the manifest's key is `settings.` followed by it). Field names are 1 to
//! 64 ASCII letters, digits, `_` or `-`, so error paths are unambiguous. Nodes nest at most
//! [`MAX_DEPTH`] levels (the root is level 1).
//!
//! ## Values
//! - `pattern` matches anywhere in the string unless anchored (`^…$`), as in JSON Schema. Its
//!   syntax is regex-lite's, which agrees with ECMA-262 on the usual patterns (classes, `\d`,
//!   anchors, groups, repetition) but has no look-around and no backreferences (such a pattern is a
//!   schema error). Patterns are compiled once, at most 1000 characters and a bounded compiled size.
//! - Lengths count characters (Unicode scalar values), not bytes.
//! - `integer` takes whole numbers from −2⁶³ to 2⁶³−1 (`5.0` is read as `5`); `number` takes any
//!   JSON number.
//! - `null` is the same as absent. A missing field takes its default; a missing object is read as
//!   `{}`, so its fields' defaults fill in and its required fields are reported by their own paths
//!   (objects are never absent from a valid value); any other missing field is left out, or is
//!   reported "required".
//! - Fields the schema does not name are refused ("unknown setting").
//! - Every error is reported (up to [`MAX_FIELD_ERRORS`], then one more saying how many were left
//!   out), each with the field's path: `mqtt.brokers[2].port`; the root is `""`.
//! - A value is walked only as deep as the schema goes (deeper nesting is a type error at the
//!   schema's leaf), so the work is bounded by the value's size times a constant.
//! - Validation normalises: the result has defaults filled, nulls and `5.0`s gone, and validates
//!   again to itself.
//!
//! ## Secrets
//! A `format = "secret"` string is write-only. [`Schema::redact`] replaces every secret of every
//! object in a value by `null` and lists the paths of those that are set (a non-empty string).
//! [`Schema::merge_secrets`] lets a save leave secrets out: a secret absent or `null` in the new
//! value keeps its stored value (and stays absent when none is stored). Inside an array, items are
//! matched by index, and only when the new array has as many items as the stored one — after
//! items were added or removed, the secrets of that array's items must be given again. A secret
//! has no default, and no default may hold a secret: the schema is public.

use std::collections::BTreeMap;

use regex_lite::{Regex, RegexBuilder};
use serde::Serialize;
use serde_json::{Map, Number, Value};

/// Levels of nested schema nodes allowed, the root being level 1.
pub const MAX_DEPTH: usize = 16;
/// Field errors reported by one [`Schema::validate`]; the rest are counted in one more error.
pub const MAX_FIELD_ERRORS: usize = 100;
/// Length of a `pattern`, in characters.
const MAX_PATTERN_CHARS: usize = 1000;
/// regex-lite's limit on a compiled pattern (its default is 10 MiB). Bounds the matching work,
/// which is proportional to the compiled size times the text's length.
const PATTERN_SIZE_LIMIT_BYTES: usize = 256 * 1024;
/// Length of a field name, in characters.
const MAX_NAME_CHARS: usize = 64;
/// Enum values listed in a "must be one of" message.
const MAX_CHOICES_SHOWN: usize = 20;

/// The settings schema is not one this host accepts. `path` is where in the schema (keywords and
/// field names joined by `.`, list positions as `[i]`; `""` is the root).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", located(.path, .message))]
pub struct SchemaError {
    /// Where in the schema, e.g. `properties.port.maximum`.
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

/// One reason a settings value is refused: the field's path (`mqtt.brokers[2].port`, `""` for
/// the root) and a sentence a device owner understands (`must be at most 65535`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}", located(.path, .message))]
pub struct FieldError {
    /// The field, e.g. `mqtt.port`.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

fn located(path: &str, message: &str) -> String {
    if path.is_empty() {
        message.to_owned()
    } else {
        format!("{path}: {message}")
    }
}

/// A parsed settings schema: checked once, patterns compiled, defaults normalised.
#[derive(Debug, Clone)]
pub struct Schema {
    root: Node,
    json: Value,
}

#[derive(Debug, Clone)]
struct Node {
    /// Normalised (valid for this node).
    default: Option<Value>,
    /// Whether this node or one below it is a secret.
    secrets: bool,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Object {
        /// In the schema's order.
        properties: Vec<Property>,
        /// Name → index in `properties`.
        by_name: BTreeMap<String, usize>,
    },
    String {
        pattern: Option<Regex>,
        min_length: Option<u64>,
        max_length: Option<u64>,
        secret: bool,
        choices: Option<Choices>,
    },
    Integer {
        minimum: Option<i64>,
        maximum: Option<i64>,
        choices: Option<Choices>,
    },
    Number {
        minimum: Option<Bound>,
        maximum: Option<Bound>,
        choices: Option<Choices>,
    },
    Boolean,
    Array {
        items: Box<Node>,
        min_items: Option<u64>,
        max_items: Option<u64>,
    },
}

#[derive(Debug, Clone)]
struct Property {
    name: String,
    required: bool,
    node: Node,
}

/// A `number` bound and its text as the schema wrote it (for messages).
#[derive(Debug, Clone)]
struct Bound {
    value: f64,
    text: String,
}

/// An enum's values (normalised) and the list shown in the message.
#[derive(Debug, Clone)]
struct Choices {
    values: Vec<Value>,
    text: String,
}

impl Node {
    fn is_secret(&self) -> bool {
        matches!(self.kind, Kind::String { secret: true, .. })
    }
}

const TYPES: &[&str] = &["object", "string", "integer", "number", "boolean", "array"];

/// Whether `keyword` belongs to nodes of type `ty` (`None`: not a keyword of the subset).
fn keyword_applies(keyword: &str, ty: &str) -> Option<bool> {
    Some(match keyword {
        "type" | "title" | "description" | "default" => true,
        "properties" | "required" => ty == "object",
        "pattern" | "minLength" | "maxLength" | "format" => ty == "string",
        "minimum" | "maximum" => matches!(ty, "integer" | "number"),
        "enum" => matches!(ty, "string" | "integer" | "number"),
        "items" | "minItems" | "maxItems" => ty == "array",
        _ => return None,
    })
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn schema_error(path: impl Into<String>, message: impl Into<String>) -> SchemaError {
    SchemaError {
        path: path.into(),
        message: message.into(),
    }
}

fn plural(n: u64, one: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {one}s")
    }
}

/// Why a JSON number is not an `integer`.
enum NotWhole {
    Fraction,
    OutOfRange,
}

/// A JSON number as an i64, if it is a whole number in range (`5.0` is 5).
fn whole(n: &Number) -> Result<i64, NotWhole> {
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    if n.is_u64() {
        return Err(NotWhole::OutOfRange);
    }
    let f = n.as_f64().unwrap_or(f64::NAN);
    if f.fract() != 0.0 || !f.is_finite() {
        return Err(NotWhole::Fraction);
    }
    // -2^63 is exactly representable; 2^63 is the first value past i64::MAX.
    if (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f) {
        Ok(f as i64) // whole and in range: exact
    } else {
        Err(NotWhole::OutOfRange)
    }
}

impl Schema {
    /// Check a schema (the manifest's `[settings]` as JSON) and prepare it for validation.
    pub fn parse(schema: &Value) -> Result<Schema, SchemaError> {
        let root = parse_node(schema, "", 1)?;
        if !matches!(root.kind, Kind::Object { .. }) {
            return Err(schema_error(
                "type",
                "the settings schema's root must be of type \"object\"",
            ));
        }
        Ok(Schema {
            root,
            json: schema.clone(),
        })
    }

    /// The schema as given, for the UI to draw its form from.
    pub fn as_json(&self) -> &Value {
        &self.json
    }

    /// Whether any field is a secret.
    pub fn has_secrets(&self) -> bool {
        self.root.secrets
    }

    /// The settings of a plugin nobody configured: an object with every default filled in,
    /// nested objects included (a field without default is absent). Valid unless a required
    /// field has no default.
    pub fn defaults(&self) -> Value {
        default_of(&self.root).unwrap_or_else(|| Value::Object(Map::new()))
    }

    /// Check `values` against the schema. Valid: the normalised value (defaults filled, nulls
    /// left out, whole floats as integers). Invalid: every error (up to [`MAX_FIELD_ERRORS`]
    /// and one counting the rest), each naming its field.
    pub fn validate(&self, values: &Value) -> Result<Value, Vec<FieldError>> {
        let mut errors = Errors::default();
        let out = validate_node(&self.root, values, "", &mut errors);
        if errors.list.is_empty() {
            Ok(out)
        } else {
            Err(errors.finish())
        }
    }

    /// `values` with every secret replaced by `null`, and the paths of the secrets that are set
    /// (a non-empty string), e.g. `["mqtt.password", "brokers[1].token"]`. Secrets are found by
    /// the schema: every secret field of every object the value holds where the schema has an
    /// object is `null` in the result, whether it was set or not.
    pub fn redact(&self, values: &Value) -> (Value, Vec<String>) {
        let mut out = values.clone();
        let mut set = Vec::new();
        redact_node(&self.root, &mut out, "", &mut set);
        (out, set)
    }

    /// A save (`new`) with the secrets it left out (absent or `null`) taken from `stored`. A
    /// secret with nothing stored stays absent. Array items are matched by index, and only when
    /// `new` has as many items as `stored` there; an object missing from `new` is created when a
    /// stored secret belongs in it. Validate the result.
    pub fn merge_secrets(&self, new: &Value, stored: &Value) -> Value {
        let mut out = new.clone();
        merge_node(&self.root, &mut out, Some(stored));
        out
    }
}

// ---------------------------------------------------------------------------------- parsing

fn parse_node(v: &Value, path: &str, depth: usize) -> Result<Node, SchemaError> {
    if depth > MAX_DEPTH {
        return Err(schema_error(
            path,
            format!("nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    let Value::Object(map) = v else {
        return Err(schema_error(
            path,
            "must be a table of keywords (a JSON object)",
        ));
    };
    for key in map.keys() {
        if keyword_applies(key, "").is_none() {
            return Err(schema_error(join(path, key), "unknown keyword"));
        }
    }
    let ty = match map.get("type") {
        Some(Value::String(t)) if TYPES.contains(&t.as_str()) => t.as_str(),
        Some(_) => {
            return Err(schema_error(
                join(path, "type"),
                format!("must be one of: {}", TYPES.join(", ")),
            ));
        }
        None => return Err(schema_error(path, "has no \"type\"")),
    };
    for key in map.keys() {
        if keyword_applies(key, ty) == Some(false) {
            return Err(schema_error(
                join(path, key),
                format!("is not a keyword of type {ty}"),
            ));
        }
    }
    for key in ["title", "description"] {
        if map.get(key).is_some_and(|t| !t.is_string()) {
            return Err(schema_error(join(path, key), "must be text (a string)"));
        }
    }
    let kind = match ty {
        "object" => parse_object(map, path, depth)?,
        "string" => parse_string(map, path)?,
        "integer" => Kind::Integer {
            minimum: integer_bound(map, path, "minimum")?,
            maximum: integer_bound(map, path, "maximum")?,
            choices: None,
        },
        "number" => Kind::Number {
            minimum: number_bound(map, path, "minimum")?,
            maximum: number_bound(map, path, "maximum")?,
            choices: None,
        },
        "boolean" => Kind::Boolean,
        _ => parse_array(map, path, depth)?,
    };
    let secrets = match &kind {
        Kind::Object { properties, .. } => properties.iter().any(|p| p.node.secrets),
        Kind::String { secret, .. } => *secret,
        Kind::Array { items, .. } => items.secrets,
        _ => false,
    };
    let mut node = Node {
        default: None,
        secrets,
        kind,
    };
    check_bounds(&node, path)?;
    if let Some(list) = map.get("enum") {
        let choices = parse_enum(&node, list, &join(path, "enum"))?;
        match &mut node.kind {
            Kind::String { choices: c, .. }
            | Kind::Integer { choices: c, .. }
            | Kind::Number { choices: c, .. } => *c = Some(choices),
            _ => {}
        }
    }
    if let Some(default) = map.get("default") {
        node.default = Some(parse_default(&node, default, &join(path, "default"))?);
    }
    Ok(node)
}

fn field_name_ok(name: &str) -> bool {
    (1..=MAX_NAME_CHARS).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn parse_object(map: &Map<String, Value>, path: &str, depth: usize) -> Result<Kind, SchemaError> {
    let mut properties = Vec::new();
    let mut by_name = BTreeMap::new();
    if let Some(props) = map.get("properties") {
        let at = join(path, "properties");
        let Value::Object(props) = props else {
            return Err(schema_error(
                at,
                "must be a table of fields (a JSON object)",
            ));
        };
        for (name, sub) in props {
            let child = join(&at, name);
            if !field_name_ok(name) {
                return Err(schema_error(
                    child,
                    format!(
                        "a field name is 1 to {MAX_NAME_CHARS} ASCII letters, digits, `_` or `-`"
                    ),
                ));
            }
            let node = parse_node(sub, &child, depth + 1)?;
            by_name.insert(name.clone(), properties.len());
            properties.push(Property {
                name: name.clone(),
                required: false,
                node,
            });
        }
    }
    if let Some(required) = map.get("required") {
        let at = join(path, "required");
        let Value::Array(names) = required else {
            return Err(schema_error(at, "must be a list of field names"));
        };
        for (i, name) in names.iter().enumerate() {
            let Value::String(name) = name else {
                return Err(schema_error(
                    index(&at, i),
                    "must be a field name (a string)",
                ));
            };
            let Some(&p) = by_name.get(name) else {
                return Err(schema_error(
                    index(&at, i),
                    format!("names no field of \"properties\": {name}"),
                ));
            };
            if properties[p].required {
                return Err(schema_error(index(&at, i), format!("names {name} twice")));
            }
            properties[p].required = true;
        }
    }
    Ok(Kind::Object {
        properties,
        by_name,
    })
}

fn parse_string(map: &Map<String, Value>, path: &str) -> Result<Kind, SchemaError> {
    let secret = match map.get("format") {
        None => false,
        Some(Value::String(f)) if f == "secret" => true,
        Some(_) => {
            return Err(schema_error(
                join(path, "format"),
                "the only format is \"secret\"",
            ));
        }
    };
    let pattern = match map.get("pattern") {
        None => None,
        Some(Value::String(p)) => Some(compile_pattern(p, &join(path, "pattern"))?),
        Some(_) => {
            return Err(schema_error(
                join(path, "pattern"),
                "must be a regular expression (a string)",
            ));
        }
    };
    Ok(Kind::String {
        pattern,
        min_length: count(map, path, "minLength")?,
        max_length: count(map, path, "maxLength")?,
        secret,
        choices: None,
    })
}

fn compile_pattern(pattern: &str, path: &str) -> Result<Regex, SchemaError> {
    if pattern.chars().count() > MAX_PATTERN_CHARS {
        return Err(schema_error(
            path,
            format!("is longer than {MAX_PATTERN_CHARS} characters"),
        ));
    }
    RegexBuilder::new(pattern)
        .size_limit(PATTERN_SIZE_LIMIT_BYTES)
        .build()
        .map_err(|e| {
            schema_error(
                path,
                format!("is not a regular expression this host understands: {e}"),
            )
        })
}

fn parse_array(map: &Map<String, Value>, path: &str, depth: usize) -> Result<Kind, SchemaError> {
    let Some(items) = map.get("items") else {
        return Err(schema_error(
            path,
            "an array needs \"items\" (the schema of its items)",
        ));
    };
    Ok(Kind::Array {
        items: Box::new(parse_node(items, &join(path, "items"), depth + 1)?),
        min_items: count(map, path, "minItems")?,
        max_items: count(map, path, "maxItems")?,
    })
}

/// A length or item count keyword: a whole number ≥ 0.
fn count(map: &Map<String, Value>, path: &str, key: &str) -> Result<Option<u64>, SchemaError> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
        Some(_) => Err(schema_error(
            join(path, key),
            "must be a whole number, 0 or more",
        )),
    }
}

fn integer_bound(
    map: &Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<Option<i64>, SchemaError> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::Number(n)) => match whole(n) {
            Ok(i) => Ok(Some(i)),
            Err(_) => Err(schema_error(
                join(path, key),
                "must be a whole number from -9223372036854775808 to 9223372036854775807",
            )),
        },
        Some(_) => Err(schema_error(join(path, key), "must be a whole number")),
    }
}

fn number_bound(
    map: &Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<Option<Bound>, SchemaError> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64().map(|value| Bound {
            value,
            text: n.to_string(),
        })),
        Some(_) => Err(schema_error(join(path, key), "must be a number")),
    }
}

/// Lower bounds may not exceed upper ones (nothing could be valid).
fn check_bounds(node: &Node, path: &str) -> Result<(), SchemaError> {
    let crossed = |upper: &str, lower: &str| {
        schema_error(
            join(path, upper),
            format!("is less than \"{lower}\": no value could be valid"),
        )
    };
    match &node.kind {
        Kind::String {
            min_length: Some(min),
            max_length: Some(max),
            ..
        } if max < min => Err(crossed("maxLength", "minLength")),
        Kind::Array {
            min_items: Some(min),
            max_items: Some(max),
            ..
        } if max < min => Err(crossed("maxItems", "minItems")),
        Kind::Integer {
            minimum: Some(min),
            maximum: Some(max),
            ..
        } if max < min => Err(crossed("maximum", "minimum")),
        Kind::Number {
            minimum: Some(min),
            maximum: Some(max),
            ..
        } if max.value < min.value => Err(crossed("maximum", "minimum")),
        _ => Ok(()),
    }
}

/// An enum: a non-empty list of values each valid for the node (its other keywords apply).
fn parse_enum(node: &Node, list: &Value, path: &str) -> Result<Choices, SchemaError> {
    let Value::Array(list) = list else {
        return Err(schema_error(path, "must be a list of values"));
    };
    if list.is_empty() {
        return Err(schema_error(path, "must list at least one value"));
    }
    let mut values = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let mut errors = Errors::default();
        let normalised = validate_node(node, v, "", &mut errors);
        if let Some(e) = errors.list.first() {
            return Err(schema_error(index(path, i), e.message.clone()));
        }
        values.push(normalised);
    }
    let mut shown: Vec<String> = values
        .iter()
        .take(MAX_CHOICES_SHOWN)
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    if values.len() > MAX_CHOICES_SHOWN {
        shown.push(format!("… ({} values)", values.len()));
    }
    Ok(Choices {
        values,
        text: shown.join(", "),
    })
}

/// A default: valid for its node (normalised), holding no secret.
fn parse_default(node: &Node, default: &Value, path: &str) -> Result<Value, SchemaError> {
    if node.is_secret() {
        return Err(schema_error(
            path,
            "a secret has no default (the schema is public)",
        ));
    }
    if default.is_null() {
        return Err(schema_error(
            path,
            "must be a value (null means no default)",
        ));
    }
    let mut errors = Errors::default();
    let normalised = validate_node(node, default, "", &mut errors);
    if let Some(e) = errors.list.first() {
        return Err(schema_error(path, format!("is not valid: {e}")));
    }
    let mut secrets = Vec::new();
    redact_node(node, &mut normalised.clone(), "", &mut secrets);
    if let Some(secret) = secrets.first() {
        return Err(schema_error(
            path,
            format!("sets the secret {secret}: a default holds no secret (the schema is public)"),
        ));
    }
    Ok(normalised)
}

// ---------------------------------------------------------------------------------- values

/// The errors of one validation: the first [`MAX_FIELD_ERRORS`], and how many more there were.
#[derive(Default)]
struct Errors {
    list: Vec<FieldError>,
    more: usize,
}

impl Errors {
    fn add(&mut self, path: &str, message: impl Into<String>) {
        if self.list.len() < MAX_FIELD_ERRORS {
            self.list.push(FieldError {
                path: path.to_owned(),
                message: message.into(),
            });
        } else {
            self.more += 1;
        }
    }

    fn finish(mut self) -> Vec<FieldError> {
        if self.more > 0 {
            self.list.push(FieldError {
                path: String::new(),
                message: format!(
                    "and {} more {} (only the first {MAX_FIELD_ERRORS} are listed)",
                    self.more,
                    if self.more == 1 { "error" } else { "errors" }
                ),
            });
        }
        self.list
    }
}

/// The value a missing field takes: its default; for an object, `{}` filled with its fields'
/// defaults.
fn default_of(node: &Node) -> Option<Value> {
    if let Some(d) = &node.default {
        return Some(d.clone());
    }
    let Kind::Object { properties, .. } = &node.kind else {
        return None;
    };
    let mut out = Map::new();
    for p in properties {
        if let Some(d) = default_of(&p.node) {
            out.insert(p.name.clone(), d);
        }
    }
    Some(Value::Object(out))
}

fn one_of(choices: &Option<Choices>, value: &Value, same: impl Fn(&Value, &Value) -> bool) -> bool {
    choices
        .as_ref()
        .is_none_or(|c| c.values.iter().any(|v| same(v, value)))
}

/// Check `value` against `node`, adding an error for each problem; the normalised value (only
/// meaningful when no error was added).
fn validate_node(node: &Node, value: &Value, path: &str, errors: &mut Errors) -> Value {
    match &node.kind {
        Kind::Object {
            properties,
            by_name,
        } => {
            let Value::Object(map) = value else {
                errors.add(path, "must be an object");
                return Value::Null;
            };
            let mut out = Map::new();
            for p in properties {
                let child = join(path, &p.name);
                match map.get(&p.name) {
                    Some(v) if !v.is_null() => {
                        out.insert(p.name.clone(), validate_node(&p.node, v, &child, errors));
                    }
                    _ => {
                        let filled = match &p.node.default {
                            Some(d) => Some(d.clone()),
                            // A missing object is `{}`: its fields speak for themselves.
                            None if matches!(p.node.kind, Kind::Object { .. }) => Some(
                                validate_node(&p.node, &Value::Object(Map::new()), &child, errors),
                            ),
                            None => None,
                        };
                        match filled {
                            Some(v) => {
                                out.insert(p.name.clone(), v);
                            }
                            None if p.required => errors.add(&child, "required"),
                            None => {}
                        }
                    }
                }
            }
            for (key, v) in map {
                if !v.is_null() && !by_name.contains_key(key) {
                    errors.add(&join(path, key), "unknown setting");
                }
            }
            Value::Object(out)
        }
        Kind::String {
            pattern,
            min_length,
            max_length,
            secret: _,
            choices,
        } => {
            let Value::String(s) = value else {
                errors.add(path, "must be text");
                return Value::Null;
            };
            if min_length.is_some() || max_length.is_some() {
                let n = s.chars().count() as u64;
                if let Some(min) = *min_length
                    && n < min
                {
                    errors.add(
                        path,
                        format!("must be at least {}", plural(min, "character")),
                    );
                }
                if let Some(max) = *max_length
                    && n > max
                {
                    errors.add(
                        path,
                        format!("must be at most {}", plural(max, "character")),
                    );
                }
            }
            if let Some(re) = pattern
                && !re.is_match(s)
            {
                errors.add(path, format!("must match {}", re.as_str()));
            }
            if !one_of(choices, value, |a, b| a == b) {
                errors.add(path, must_be_one_of(choices));
            }
            value.clone()
        }
        Kind::Integer {
            minimum,
            maximum,
            choices,
        } => {
            let i = match value {
                Value::Number(n) => match whole(n) {
                    Ok(i) => i,
                    Err(NotWhole::Fraction) => {
                        errors.add(path, "must be a whole number");
                        return Value::Null;
                    }
                    Err(NotWhole::OutOfRange) => {
                        errors.add(
                            path,
                            "must be a whole number from -9223372036854775808 to 9223372036854775807",
                        );
                        return Value::Null;
                    }
                },
                _ => {
                    errors.add(path, "must be a whole number");
                    return Value::Null;
                }
            };
            if let Some(min) = *minimum
                && i < min
            {
                errors.add(path, format!("must be at least {min}"));
            }
            if let Some(max) = *maximum
                && i > max
            {
                errors.add(path, format!("must be at most {max}"));
            }
            let out = Value::from(i);
            if !one_of(choices, &out, |a, b| a == b) {
                errors.add(path, must_be_one_of(choices));
            }
            out
        }
        Kind::Number {
            minimum,
            maximum,
            choices,
        } => {
            let Some(f) = value.as_f64() else {
                errors.add(path, "must be a number");
                return Value::Null;
            };
            if let Some(min) = minimum
                && f < min.value
            {
                errors.add(path, format!("must be at least {}", min.text));
            }
            if let Some(max) = maximum
                && f > max.value
            {
                errors.add(path, format!("must be at most {}", max.text));
            }
            if !one_of(choices, value, |a, b| a.as_f64() == b.as_f64()) {
                errors.add(path, must_be_one_of(choices));
            }
            value.clone()
        }
        Kind::Boolean => {
            if !value.is_boolean() {
                errors.add(path, "must be true or false");
                return Value::Null;
            }
            value.clone()
        }
        Kind::Array {
            items,
            min_items,
            max_items,
        } => {
            let Value::Array(list) = value else {
                errors.add(path, "must be a list");
                return Value::Null;
            };
            let n = list.len() as u64;
            if let Some(min) = *min_items
                && n < min
            {
                errors.add(path, format!("must have at least {}", plural(min, "item")));
            }
            if let Some(max) = *max_items
                && n > max
            {
                errors.add(path, format!("must have at most {}", plural(max, "item")));
            }
            Value::Array(
                list.iter()
                    .enumerate()
                    .map(|(i, v)| validate_node(items, v, &index(path, i), errors))
                    .collect(),
            )
        }
    }
}

fn must_be_one_of(choices: &Option<Choices>) -> String {
    let text = choices.as_ref().map_or("", |c| c.text.as_str());
    format!("must be one of: {text}")
}

/// Set every secret of every object in `value` (where the schema has objects) to `null`,
/// recording the paths of those that were set.
fn redact_node(node: &Node, value: &mut Value, path: &str, set: &mut Vec<String>) {
    if !node.secrets {
        return;
    }
    match (&node.kind, value) {
        (Kind::Object { properties, .. }, Value::Object(map)) => {
            for p in properties.iter().filter(|p| p.node.secrets) {
                let child = join(path, &p.name);
                if p.node.is_secret() {
                    let old = map.insert(p.name.clone(), Value::Null);
                    if old.is_some_and(|v| !v.is_null() && v.as_str() != Some("")) {
                        set.push(child);
                    }
                } else if let Some(v) = map.get_mut(&p.name) {
                    redact_node(&p.node, v, &child, set);
                }
            }
        }
        (Kind::Array { items, .. }, Value::Array(list)) => {
            for (i, v) in list.iter_mut().enumerate() {
                redact_node(items, v, &index(path, i), set);
            }
        }
        _ => {}
    }
}

/// Fill the secrets `new` leaves out (absent or `null`) from `stored`; see
/// [`Schema::merge_secrets`].
fn merge_node(node: &Node, new: &mut Value, stored: Option<&Value>) {
    if !node.secrets {
        return;
    }
    match (&node.kind, new) {
        (Kind::Object { properties, .. }, Value::Object(map)) => {
            for p in properties.iter().filter(|p| p.node.secrets) {
                let old = stored.and_then(|s| s.get(&p.name)).filter(|v| !v.is_null());
                let left_out = map.get(&p.name).is_none_or(Value::is_null);
                if p.node.is_secret() {
                    if left_out {
                        match old {
                            Some(o) => map.insert(p.name.clone(), o.clone()),
                            None => map.remove(&p.name),
                        };
                    }
                } else if left_out {
                    // A missing object is read as `{}`: create it if a stored secret belongs in it.
                    if matches!(p.node.kind, Kind::Object { .. }) {
                        let mut fresh = Value::Object(Map::new());
                        merge_node(&p.node, &mut fresh, old);
                        if fresh.as_object().is_some_and(|m| !m.is_empty()) {
                            map.insert(p.name.clone(), fresh);
                        }
                    }
                } else if let Some(v) = map.get_mut(&p.name) {
                    merge_node(&p.node, v, old);
                }
            }
        }
        (Kind::Array { items, .. }, Value::Array(list)) => {
            if let Some(Value::Array(olds)) = stored
                && olds.len() == list.len()
            {
                for (v, o) in list.iter_mut().zip(olds) {
                    merge_node(items, v, Some(o));
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
