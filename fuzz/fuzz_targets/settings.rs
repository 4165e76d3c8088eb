//! The plugin settings schema and its validator (`src/settings.rs`) on any schema and any value.
//! Properties:
//! - `Schema::parse` and everything after it never panic; a refused schema names a path that
//!   exists in it (a keyword or field it holds, or the node that lacks one);
//! - a schema that parses is kept as given (`as_json`), and its defaults are complete or
//!   incomplete only by required fields without default: `validate(defaults())` is `defaults()`
//!   itself, or only "required" errors;
//! - `validate` is idempotent: a value it accepts comes back normalised, and the normalised value
//!   validates to itself; a refusal lists at least one error and at most `MAX_FIELD_ERRORS` + 1;
//! - secrets survive the API's round trip: `merge_secrets(redact(v), v) == v` for every valid `v`,
//!   and a redacted value holds no set secret.
//!
//! Input: text starting with `[` is JSON `[schema, value]` (the seeds are real schemas); anything
//! else drives a generator that builds a schema from the subset's keywords (now and then an
//! unknown one, a misplaced one or one of the wrong kind; levels past the depth limit) and a value
//! shaped like it (now and then off the schema), so most inputs reach the validator.
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use toru::internals::settings::{MAX_FIELD_ERRORS, Schema};

const TYPES: &[&str] = &["object", "string", "integer", "number", "boolean", "array"];
const NAMES: &[&str] = &["a", "b", "host", "port", "pass", "list", "x-y", "_1"];
const PATTERNS: &[&str] = &[
    "^[a-z]+$",
    "[0-9]",
    "^a",
    "b$",
    "^$",
    "\\d{2,4}",
    ".",
    "",
    "(",
    "(?=x)",
    "a{100}{100}{100}",
    "^(a|b)*c$",
    "[[:alpha:]]",
    "\\p{L}",
];
const WORDS: &[&str] = &[
    "", "a", "abc", "b", "12", "123", "c", "ab", "日本", "x\u{0}y",
];
const KEYWORDS: &[&str] = &[
    "type",
    "properties",
    "required",
    "pattern",
    "minLength",
    "maxLength",
    "format",
    "minimum",
    "maximum",
    "enum",
    "items",
    "minItems",
    "maxItems",
    "title",
    "description",
    "default",
    "additionalProperties",
    "const",
    "$ref",
];

fn pick<'a>(u: &mut Unstructured, list: &[&'a str]) -> Result<&'a str> {
    Ok(*u.choose(list)?)
}

/// True once in `n`; false when the input is used up (then the rare cases stay rare).
fn one_in(u: &mut Unstructured, n: u8) -> Result<bool> {
    Ok(u.int_in_range(0..=n - 1)? == n - 1)
}

fn string(u: &mut Unstructured) -> Result<String> {
    if u.arbitrary()? {
        Ok(pick(u, WORDS)?.to_owned())
    } else {
        let mut s: String = u.arbitrary()?;
        s.truncate(s.char_indices().nth(12).map_or(s.len(), |(i, _)| i));
        Ok(s)
    }
}

fn integer(u: &mut Unstructured) -> Result<Value> {
    Ok(match u.int_in_range(0..=5)? {
        0 => json!(u.int_in_range(-3i64..=3)?),
        1 => json!(u.arbitrary::<i64>()?),
        2 => json!(u.arbitrary::<u64>()?),
        3 => json!(*u.choose(&[i64::MIN, i64::MAX, 65535, 65536, -1])?),
        4 => json!(*u.choose(&[1.5, 5.0, -0.0, 9.3e18, -(2f64.powi(63)), 1e300])?),
        _ => json!(u.int_in_range(0i64..=100)?),
    })
}

fn number(u: &mut Unstructured) -> Result<Value> {
    if u.arbitrary()? {
        integer(u)
    } else {
        // Not finite → null: also a case.
        Ok(json!(u.arbitrary::<f64>()?))
    }
}

/// Any JSON value, small.
fn any(u: &mut Unstructured, depth: u32) -> Result<Value> {
    let kinds = if depth == 0 { 5 } else { 7 };
    Ok(match u.int_in_range(0..=kinds - 1)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => number(u)?,
        3 | 4 => Value::String(string(u)?),
        5 => Value::Array(
            (0..u.int_in_range(0..=3)?)
                .map(|_| any(u, depth - 1))
                .collect::<Result<_>>()?,
        ),
        _ => {
            let mut m = Map::new();
            for _ in 0..u.int_in_range(0..=3)? {
                m.insert(pick(u, NAMES)?.to_owned(), any(u, depth - 1)?);
            }
            Value::Object(m)
        }
    })
}

/// A value shaped like `schema`, off it at one node in `chaos`: what a form or an API client
/// might send.
fn value_for(u: &mut Unstructured, schema: &Value, depth: u32, chaos: u8) -> Result<Value> {
    if depth == 0 || one_in(u, chaos)? {
        return any(u, depth.min(2));
    }
    if let Some(Value::Array(choices)) = schema.get("enum")
        && !choices.is_empty()
        && !one_in(u, 4)?
    {
        return Ok(u.choose(choices)?.clone());
    }
    if let Some(d) = schema.get("default")
        && one_in(u, 4)?
    {
        return Ok(d.clone());
    }
    Ok(match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let mut m = Map::new();
            let required = |name: &str| {
                schema
                    .get("required")
                    .and_then(Value::as_array)
                    .is_some_and(|r| r.iter().any(|n| n == name))
            };
            if let Some(Value::Object(props)) = schema.get("properties") {
                for (name, sub) in props {
                    let given = required(name) && !one_in(u, chaos)?;
                    match if given { 5 } else { u.int_in_range(0..=5)? } {
                        0 => {}
                        1 => {
                            m.insert(name.clone(), Value::Null);
                        }
                        _ => {
                            m.insert(name.clone(), value_for(u, sub, depth - 1, chaos)?);
                        }
                    }
                }
            }
            if one_in(u, 8)? {
                m.insert(string(u)?, any(u, 1)?);
            }
            Value::Object(m)
        }
        Some("array") => {
            let items = schema.get("items").cloned().unwrap_or(Value::Null);
            Value::Array(
                (0..u.int_in_range(0..=4)?)
                    .map(|_| value_for(u, &items, depth - 1, chaos))
                    .collect::<Result<_>>()?,
            )
        }
        Some("string") => {
            let mut s = string(u)?;
            let len = |key| {
                schema
                    .get(key)
                    .and_then(Value::as_u64)
                    .map(|n| n.min(64) as usize)
            };
            if let Some(max) = len("maxLength") {
                s = s.chars().take(max).collect();
            }
            if let Some(min) = len("minLength") {
                while s.chars().count() < min {
                    s.push('a');
                }
            }
            Value::String(s)
        }
        Some(ty @ ("integer" | "number")) => {
            let bound = |key| schema.get(key).and_then(Value::as_i64);
            match (bound("minimum"), bound("maximum")) {
                (Some(min), Some(max)) if min <= max && u.arbitrary()? => {
                    json!(u.int_in_range(min..=max)?)
                }
                (Some(min), _) if u.arbitrary()? => json!(min),
                (_, Some(max)) if u.arbitrary()? => json!(max),
                _ if ty == "integer" => integer(u)?,
                _ => number(u)?,
            }
        }
        Some("boolean") => Value::Bool(u.arbitrary()?),
        _ => any(u, 2)?,
    })
}

/// A count keyword's value: mostly small whole numbers, sometimes of the wrong kind.
fn count(u: &mut Unstructured) -> Result<Value> {
    Ok(if one_in(u, 20)? {
        any(u, 0)?
    } else {
        json!(u.int_in_range(0u64..=5)?)
    })
}

/// A schema node from the subset; `level` 1 is the root. Now and then off the subset.
fn schema(u: &mut Unstructured, level: u32) -> Result<Value> {
    let ty = if level == 1 && !one_in(u, 16)? {
        "object"
    } else if level >= 18 {
        "boolean"
    } else {
        pick(u, TYPES)?
    };
    let mut m = Map::new();
    if !one_in(u, 64)? {
        m.insert("type".into(), json!(ty));
    }
    // Deeper levels have fewer fields, yet a chain past the limit is possible.
    let fan_out = if level >= 4 { 1 } else { 4 };
    match ty {
        "object" => {
            let mut props = Map::new();
            for _ in 0..u.int_in_range(0..=fan_out)? {
                let name = if one_in(u, 16)? {
                    string(u)?
                } else {
                    pick(u, NAMES)?.to_owned()
                };
                props.insert(name, schema(u, level + 1)?);
            }
            let names: Vec<String> = props.keys().cloned().collect();
            if !names.is_empty() && u.arbitrary()? {
                let mut required = Vec::new();
                for name in &names {
                    if u.arbitrary()? {
                        required.push(json!(name));
                    }
                }
                if one_in(u, 16)? {
                    required.push(json!(u.choose(&names)?)); // twice, or once more
                }
                m.insert("required".into(), Value::Array(required));
            }
            if !props.is_empty() || u.arbitrary()? {
                m.insert("properties".into(), Value::Object(props));
            }
        }
        "string" => {
            if one_in(u, 3)? {
                m.insert("pattern".into(), json!(pick(u, PATTERNS)?));
            }
            if one_in(u, 3)? {
                m.insert("minLength".into(), count(u)?);
            }
            if one_in(u, 3)? {
                m.insert("maxLength".into(), count(u)?);
            }
            if one_in(u, 3)? {
                m.insert(
                    "format".into(),
                    json!(if one_in(u, 16)? { "email" } else { "secret" }),
                );
            }
        }
        "integer" | "number" => {
            for key in ["minimum", "maximum"] {
                if one_in(u, 2)? {
                    let bound = if ty == "integer" {
                        integer(u)?
                    } else {
                        number(u)?
                    };
                    m.insert(key.into(), bound);
                }
            }
        }
        "array" => {
            if !one_in(u, 16)? {
                m.insert("items".into(), schema(u, level + 1)?);
            }
            if one_in(u, 3)? {
                m.insert("minItems".into(), count(u)?);
            }
            if one_in(u, 3)? {
                m.insert("maxItems".into(), count(u)?);
            }
        }
        _ => {}
    }
    if one_in(u, 4)? {
        m.insert("title".into(), json!(string(u)?));
    }
    if one_in(u, 6)? {
        let text = if one_in(u, 16)? {
            any(u, 0)?
        } else {
            json!(string(u)?)
        };
        m.insert("description".into(), text);
    }
    // Enum and default drawn from what the node accepts (mostly): often valid.
    let shape = Value::Object(m.clone());
    if matches!(ty, "string" | "integer" | "number") && one_in(u, 4)? {
        let n = if one_in(u, 16)? {
            0
        } else {
            u.int_in_range(1..=3)?
        };
        let values = (0..n)
            .map(|_| value_for(u, &shape, 2, 16))
            .collect::<Result<_>>()?;
        m.insert("enum".into(), Value::Array(values));
    }
    if one_in(u, 3)? {
        let shape = Value::Object(m.clone());
        m.insert("default".into(), value_for(u, &shape, 6, 48)?);
    }
    // Off the subset: an unknown, misplaced or mistyped keyword.
    if one_in(u, 48)? {
        m.insert(pick(u, KEYWORDS)?.to_owned(), any(u, 1)?);
    }
    Ok(Value::Object(m))
}

/// Whether `path` (as `SchemaError` writes it) leads somewhere in `v`. Keys may hold `.` or
/// `[` (an unknown keyword or a refused field name), so every key that fits is tried.
fn resolves(v: &Value, path: &str) -> bool {
    if path.is_empty() {
        return true;
    }
    let by_index = path
        .strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .and_then(|(i, after)| Some((v.get(i.parse::<usize>().ok()?)?, after)))
        .is_some_and(|(item, after)| then(item, after));
    let by_key = || {
        let Value::Object(m) = v else { return false };
        m.iter().any(|(k, child)| {
            path.strip_prefix(k.as_str())
                .is_some_and(|after| then(child, after))
        })
    };
    by_index || by_key()
}

fn then(v: &Value, after: &str) -> bool {
    match after.as_bytes().first() {
        None => true,
        Some(b'.') => resolves(v, &after[1..]),
        Some(b'[') => resolves(v, after),
        Some(_) => false,
    }
}

fn check(schema_json: &Value, value: &Value) {
    let s = match Schema::parse(schema_json) {
        Ok(s) => s,
        Err(e) => {
            assert!(!e.message.is_empty());
            assert!(
                resolves(schema_json, &e.path),
                "the error names no place in the schema: {e}\n{schema_json}"
            );
            return;
        }
    };
    assert_eq!(s.as_json(), schema_json);

    let defaults = s.defaults();
    match s.validate(&defaults) {
        Ok(v) => assert_eq!(
            v, defaults,
            "the defaults change when validated\n{schema_json}"
        ),
        Err(errors) => {
            for e in &errors {
                assert!(
                    e.message == "required" || e.message.starts_with("and "),
                    "the defaults are refused for more than a missing field: {e}\n{schema_json}\n{defaults}"
                );
            }
        }
    }

    match s.validate(value) {
        Ok(v) => {
            match s.validate(&v) {
                Ok(again) => assert_eq!(again, v, "not idempotent\n{schema_json}\n{value}"),
                Err(e) => {
                    panic!("the normalised value is refused: {e:?}\n{schema_json}\n{value}\n{v}")
                }
            }
            let (shown, set) = s.redact(&v);
            assert!(set.is_empty() || s.has_secrets());
            assert!(
                s.redact(&shown).1.is_empty(),
                "a redacted value holds a secret"
            );
            assert_eq!(
                s.merge_secrets(&shown, &v),
                v,
                "a secret is lost\n{schema_json}\n{v}"
            );
            let _ = s.merge_secrets(value, &v);
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            assert!(errors.len() <= MAX_FIELD_ERRORS + 1);
            let _ = s.redact(value);
            let _ = s.merge_secrets(value, &defaults);
        }
    }
}

fn generated(data: &[u8]) -> Result<(Value, Value)> {
    let mut u = Unstructured::new(data);
    let schema_json = schema(&mut u, 1)?;
    let value = value_for(&mut u, &schema_json, 20, 12)?;
    Ok((schema_json, value))
}

fuzz_target!(|data: &[u8]| {
    if data.first() == Some(&b'[') {
        if let Ok(Value::Array(pair)) = serde_json::from_slice::<Value>(data)
            && let [schema_json, value] = pair.as_slice()
        {
            check(schema_json, value);
        }
        return;
    }
    if let Ok((schema_json, value)) = generated(data) {
        check(&schema_json, &value);
    }
});
