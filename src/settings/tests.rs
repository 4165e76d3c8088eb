use serde_json::{Value, json};

use super::*;

fn schema(v: Value) -> Schema {
    match Schema::parse(&v) {
        Ok(s) => s,
        Err(e) => panic!("schema refused: {e}"),
    }
}

fn refused(v: Value) -> SchemaError {
    match Schema::parse(&v) {
        Ok(_) => panic!("schema accepted: {v}"),
        Err(e) => e,
    }
}

/// The errors, sorted: their order follows the schema's fields, which is alphabetical unless
/// serde_json keeps the order of object keys (its `preserve_order` feature).
fn errors(s: &Schema, v: Value) -> Vec<(String, String)> {
    match s.validate(&v) {
        Ok(ok) => panic!("value accepted: {v} → {ok}"),
        Err(list) => {
            let mut list: Vec<_> = list.into_iter().map(|e| (e.path, e.message)).collect();
            list.sort();
            list
        }
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut list: Vec<_> = list
        .iter()
        .map(|(p, m)| ((*p).to_owned(), (*m).to_owned()))
        .collect();
    list.sort();
    list
}

fn ok(s: &Schema, v: Value) -> Value {
    match s.validate(&v) {
        Ok(out) => out,
        Err(e) => panic!("value refused: {v}: {e:?}"),
    }
}

/// A plugin's settings as a manifest would declare them: nested groups, an array of objects
/// holding a secret, every kind of field.
fn mqtt() -> Schema {
    schema(json!({
        "type": "object",
        "title": "Settings",
        "properties": {
            "name": {"type": "string", "default": "kitchen", "minLength": 1, "maxLength": 20,
                     "pattern": "^[a-z]+$"},
            "interval": {"type": "number", "minimum": 0.5, "maximum": 60, "default": 5},
            "level": {"type": "string", "enum": ["debug", "info", "warn"], "default": "info"},
            "verbose": {"type": "boolean", "default": false},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
            "mqtt": {
                "type": "object",
                "description": "The broker",
                "required": ["host"],
                "properties": {
                    "host": {"type": "string", "minLength": 1},
                    "port": {"type": "integer", "minimum": 1, "maximum": 65535, "default": 1883},
                    "password": {"type": "string", "format": "secret"},
                    "tls": {"type": "object", "properties": {
                        "enabled": {"type": "boolean", "default": true},
                        "ca": {"type": "string"}
                    }},
                    "brokers": {
                        "type": "array",
                        "maxItems": 5,
                        "items": {
                            "type": "object",
                            "required": ["url"],
                            "properties": {
                                "url": {"type": "string", "pattern": "^mqtts?://"},
                                "port": {"type": "integer", "maximum": 65535, "default": 8883},
                                "token": {"type": "string", "format": "secret"}
                            }
                        }
                    }
                }
            }
        }
    }))
}

#[test]
fn defaults_fill_nested_objects() {
    let s = mqtt();
    assert_eq!(
        s.defaults(),
        json!({
            "name": "kitchen", "interval": 5, "level": "info", "verbose": false,
            "mqtt": {"port": 1883, "tls": {"enabled": true}}
        })
    );
    // The required host has no default: the defaults are incomplete, and say where.
    assert_eq!(
        errors(&s, s.defaults()),
        pairs(&[("mqtt.host", "required")])
    );
    let mut complete = s.defaults();
    complete["mqtt"]["host"] = json!("broker.lan");
    assert_eq!(ok(&s, complete.clone()), complete);
}

#[test]
fn validation_fills_defaults_and_keeps_given_values() {
    let s = mqtt();
    let out = ok(
        &s,
        json!({"mqtt": {"host": "h", "brokers": [{"url": "mqtt://a"}, {"url": "mqtts://b", "port": 1}]},
               "verbose": true, "tags": ["a", "b"], "interval": 0.5}),
    );
    assert_eq!(
        out,
        json!({
            "name": "kitchen", "interval": 0.5, "level": "info", "verbose": true, "tags": ["a", "b"],
            "mqtt": {"host": "h", "port": 1883, "tls": {"enabled": true},
                     "brokers": [{"url": "mqtt://a", "port": 8883}, {"url": "mqtts://b", "port": 1}]}
        })
    );
    // Idempotent: the normalised value validates to itself.
    assert_eq!(ok(&s, out.clone()), out);
}

#[test]
fn every_error_is_collected_with_its_path() {
    let s = mqtt();
    let got = errors(
        &s,
        json!({
            "name": "Kitchen!",
            "interval": 61,
            "level": "loud",
            "verbose": "yes",
            "tags": ["a", "b", "c", "toolongtag"],
            "colour": "red",
            "mqtt": {
                "port": 70000,
                "brokers": [
                    {"url": "mqtt://ok"},
                    {"url": "http://x", "port": 1.5},
                    {"port": 65536, "extra": 1}
                ]
            }
        }),
    );
    assert_eq!(
        got,
        pairs(&[
            ("name", "must match ^[a-z]+$"),
            ("interval", "must be at most 60"),
            ("level", "must be one of: debug, info, warn"),
            ("verbose", "must be true or false"),
            ("tags", "must have at most 3 items"),
            ("tags[3]", "must be at most 8 characters"),
            ("mqtt.host", "required"),
            ("mqtt.port", "must be at most 65535"),
            ("mqtt.brokers[1].url", "must match ^mqtts?://"),
            ("mqtt.brokers[1].port", "must be a whole number"),
            ("mqtt.brokers[2].url", "required"),
            ("mqtt.brokers[2].port", "must be at most 65535"),
            ("mqtt.brokers[2].extra", "unknown setting"),
            ("colour", "unknown setting"),
        ])
    );
}

#[test]
fn the_root_must_be_an_object_value() {
    let s = mqtt();
    assert_eq!(errors(&s, json!([])), pairs(&[("", "must be an object")]));
    assert_eq!(errors(&s, json!(null)), pairs(&[("", "must be an object")]));
}

#[test]
fn null_is_absent() {
    let s = mqtt();
    let out = ok(
        &s,
        json!({"name": null, "unknown": null, "mqtt": {"host": "h", "password": null, "tls": null}}),
    );
    assert_eq!(out["name"], json!("kitchen"));
    assert!(out.get("unknown").is_none());
    assert!(out["mqtt"].get("password").is_none());
    assert_eq!(out["mqtt"]["tls"], json!({"enabled": true}));
    let required = schema(json!({"type": "object", "required": ["a"],
        "properties": {"a": {"type": "integer"}}}));
    assert_eq!(
        errors(&required, json!({"a": null})),
        pairs(&[("a", "required")])
    );
}

#[test]
fn strings_count_characters_not_bytes() {
    let s = schema(json!({"type": "object", "properties": {
        "s": {"type": "string", "minLength": 2, "maxLength": 3}}}));
    ok(&s, json!({"s": "ßü"})); // 4 bytes, 2 characters
    ok(&s, json!({"s": "日本語"})); // 9 bytes
    assert_eq!(
        errors(&s, json!({"s": "日本語!"})),
        pairs(&[("s", "must be at most 3 characters")])
    );
    assert_eq!(
        errors(&s, json!({"s": "x"})),
        pairs(&[("s", "must be at least 2 characters")])
    );
    assert_eq!(errors(&s, json!({"s": 5})), pairs(&[("s", "must be text")]));
    let one = schema(json!({"type": "object", "properties": {
        "s": {"type": "string", "minLength": 1, "maxLength": 1}}}));
    assert_eq!(
        errors(&one, json!({"s": ""})),
        pairs(&[("s", "must be at least 1 character")])
    );
}

#[test]
fn patterns_match_anywhere_unless_anchored() {
    let s = schema(json!({"type": "object", "properties": {
        "free": {"type": "string", "pattern": "[0-9]"},
        "anchored": {"type": "string", "pattern": "^[0-9]+$"}}}));
    ok(&s, json!({"free": "abc1def", "anchored": "123"}));
    assert_eq!(
        errors(&s, json!({"free": "abc", "anchored": "12a"})),
        pairs(&[
            ("anchored", "must match ^[0-9]+$"),
            ("free", "must match [0-9]"),
        ])
    );
}

#[test]
fn integers_are_whole_and_in_range() {
    let s = schema(json!({"type": "object", "properties": {
        "i": {"type": "integer", "minimum": -5, "maximum": 5}, "big": {"type": "integer"}}}));
    // 5.0 is a whole number, read as 5.
    assert_eq!(ok(&s, json!({"i": 5.0})), json!({"i": 5}));
    assert_eq!(
        errors(&s, json!({"i": 1.5})),
        pairs(&[("i", "must be a whole number")])
    );
    assert_eq!(
        errors(&s, json!({"i": -6})),
        pairs(&[("i", "must be at least -5")])
    );
    assert_eq!(
        errors(&s, json!({"i": "3"})),
        pairs(&[("i", "must be a whole number")])
    );
    ok(&s, json!({"big": i64::MAX}));
    ok(&s, json!({"big": i64::MIN}));
    let range = "must be a whole number from -9223372036854775808 to 9223372036854775807";
    assert_eq!(
        errors(&s, json!({"big": u64::MAX})),
        pairs(&[("big", range)])
    );
    assert_eq!(errors(&s, json!({"big": 1e19})), pairs(&[("big", range)]));
    assert_eq!(errors(&s, json!({"big": -1e300})), pairs(&[("big", range)]));
    // -2^63 as a float is exactly i64::MIN.
    assert_eq!(
        ok(&s, json!({"big": -9_223_372_036_854_775_808.0_f64})),
        json!({"big": i64::MIN})
    );
}

#[test]
fn numbers_take_integers_and_fractions() {
    let s = schema(json!({"type": "object", "properties": {
        "n": {"type": "number", "minimum": -1.5, "maximum": 2.5}}}));
    assert_eq!(ok(&s, json!({"n": 2})), json!({"n": 2}));
    assert_eq!(ok(&s, json!({"n": -1.5})), json!({"n": -1.5}));
    assert_eq!(
        errors(&s, json!({"n": 2.51})),
        pairs(&[("n", "must be at most 2.5")])
    );
    assert_eq!(
        errors(&s, json!({"n": -2})),
        pairs(&[("n", "must be at least -1.5")])
    );
    assert_eq!(
        errors(&s, json!({"n": true})),
        pairs(&[("n", "must be a number")])
    );
}

#[test]
fn enums_of_each_type() {
    let s = schema(json!({"type": "object", "properties": {
        "i": {"type": "integer", "enum": [1, 2, 3]},
        "n": {"type": "number", "enum": [0.5, 1]},
        "s": {"type": "string", "enum": ["a", "b"]}}}));
    assert_eq!(
        ok(&s, json!({"i": 2.0, "n": 1.0, "s": "b"})),
        json!({"i": 2, "n": 1.0, "s": "b"})
    );
    assert_eq!(
        errors(&s, json!({"i": 4, "n": 0.25, "s": "c"})),
        pairs(&[
            ("i", "must be one of: 1, 2, 3"),
            ("n", "must be one of: 0.5, 1"),
            ("s", "must be one of: a, b"),
        ])
    );
    let many: Vec<String> = (0..30).map(|i| format!("v{i}")).collect();
    let long =
        schema(json!({"type": "object", "properties": {"e": {"type": "string", "enum": many}}}));
    let got = errors(&long, json!({"e": "x"}));
    assert!(got[0].1.ends_with("v19, … (30 values)"), "{got:?}");
}

#[test]
fn arrays_count_items_and_check_each() {
    let s = schema(json!({"type": "object", "properties": {
        "l": {"type": "array", "minItems": 1, "maxItems": 2, "items": {"type": "integer"}}}}));
    assert_eq!(
        errors(&s, json!({"l": []})),
        pairs(&[("l", "must have at least 1 item")])
    );
    assert_eq!(
        errors(&s, json!({"l": [1, "x", 3]})),
        pairs(&[
            ("l", "must have at most 2 items"),
            ("l[1]", "must be a whole number"),
        ])
    );
    assert_eq!(
        errors(&s, json!({"l": {"0": 1}})),
        pairs(&[("l", "must be a list")])
    );
    // A missing array without default stays missing.
    assert_eq!(ok(&s, json!({})), json!({}));
}

#[test]
fn arrays_of_arrays_of_objects() {
    let s = schema(json!({"type": "object", "properties": {
        "grid": {"type": "array", "default": [[{"on": true}]], "items": {
            "type": "array", "items": {"type": "object", "properties": {
                "on": {"type": "boolean"}, "label": {"type": "string", "default": "-"}}}}}}}));
    assert_eq!(
        s.defaults(),
        json!({"grid": [[{"on": true, "label": "-"}]]})
    );
    assert_eq!(
        errors(&s, json!({"grid": [[], [{"on": 1}, {"x": 1}]]})),
        pairs(&[
            ("grid[1][0].on", "must be true or false"),
            ("grid[1][1].x", "unknown setting"),
        ])
    );
}

#[test]
fn a_value_nested_deeper_than_the_schema_is_a_type_error() {
    let s = schema(json!({"type": "object", "properties": {"a": {"type": "string"}}}));
    let mut deep = json!("x");
    for _ in 0..100 {
        deep = json!([deep]);
    }
    assert_eq!(
        errors(&s, json!({"a": deep})),
        pairs(&[("a", "must be text")])
    );
}

#[test]
fn errors_are_capped_and_counted() {
    let s = schema(json!({"type": "object", "properties": {
        "l": {"type": "array", "items": {"type": "boolean"}}}}));
    let list: Vec<u32> = (0..250).collect();
    let Err(got) = s.validate(&json!({ "l": list })) else {
        panic!("accepted")
    };
    let got: Vec<_> = got.into_iter().map(|e| (e.path, e.message)).collect();
    assert_eq!(got.len(), MAX_FIELD_ERRORS + 1);
    assert_eq!(
        got[99],
        ("l[99]".to_owned(), "must be true or false".to_owned())
    );
    assert_eq!(
        got[100],
        (
            String::new(),
            "and 150 more errors (only the first 100 are listed)".to_owned()
        )
    );
}

#[test]
fn error_display_names_the_path() {
    let e = FieldError {
        path: "mqtt.port".into(),
        message: "must be at most 65535".into(),
    };
    assert_eq!(e.to_string(), "mqtt.port: must be at most 65535");
    let root = FieldError {
        path: String::new(),
        message: "must be an object".into(),
    };
    assert_eq!(root.to_string(), "must be an object");
    assert_eq!(
        serde_json::to_value(&e).ok(),
        Some(json!({"path": "mqtt.port", "message": "must be at most 65535"}))
    );
    let s = refused(json!({"type": "object", "properties": {"a": {"type": "strin"}}}));
    assert_eq!(
        s.to_string(),
        "properties.a.type: must be one of: object, string, integer, number, boolean, array"
    );
}

// ---------------------------------------------------------------------------------- schemas

fn refusal(v: Value) -> (String, String) {
    let e = refused(v);
    (e.path, e.message)
}

fn at(path: &str, message: &str) -> (String, String) {
    (path.to_owned(), message.to_owned())
}

#[test]
fn the_root_is_an_object() {
    assert_eq!(
        refusal(json!({"type": "string"})),
        at(
            "type",
            "the settings schema's root must be of type \"object\""
        )
    );
    assert_eq!(
        refusal(json!([])),
        at("", "must be a table of keywords (a JSON object)")
    );
    assert_eq!(refusal(json!({})), at("", "has no \"type\""));
    // The smallest schema: no fields at all.
    let empty = schema(json!({"type": "object"}));
    assert_eq!(empty.defaults(), json!({}));
    assert_eq!(ok(&empty, json!({})), json!({}));
    assert!(!empty.has_secrets());
}

#[test]
fn unknown_and_misplaced_keywords_are_refused() {
    assert_eq!(
        refusal(json!({"type": "object", "additionalProperties": false})),
        at("additionalProperties", "unknown keyword")
    );
    assert_eq!(
        refusal(
            json!({"type": "object", "properties": {"m": {"type": "object", "properties": {
            "p": {"type": "integer", "exclusiveMaximum": 3}}}}})
        ),
        at(
            "properties.m.properties.p.exclusiveMaximum",
            "unknown keyword"
        )
    );
    for (ty, keyword, value) in [
        ("integer", "pattern", json!("x")),
        ("string", "minimum", json!(1)),
        ("boolean", "enum", json!([true])),
        ("object", "items", json!({"type": "string"})),
        ("array", "properties", json!({})),
        ("number", "maxLength", json!(1)),
        ("string", "required", json!([])),
        ("array", "format", json!("secret")),
    ] {
        let mut node = json!({"type": ty});
        if ty == "array" {
            node["items"] = json!({"type": "string"});
        }
        node[keyword] = value;
        assert_eq!(
            refusal(json!({"type": "object", "properties": {"f": node}})),
            at(
                &format!("properties.f.{keyword}"),
                &format!("is not a keyword of type {ty}")
            )
        );
    }
}

#[test]
fn keywords_of_the_wrong_kind_are_refused() {
    let field = |node: Value| json!({"type": "object", "properties": {"f": node}});
    let cases = [
        (
            json!({"type": 3}),
            "properties.f.type",
            "must be one of: object, string, integer, number, boolean, array",
        ),
        (
            json!({"type": "string", "title": 1}),
            "properties.f.title",
            "must be text (a string)",
        ),
        (
            json!({"type": "string", "description": []}),
            "properties.f.description",
            "must be text (a string)",
        ),
        (
            json!({"type": "string", "pattern": 1}),
            "properties.f.pattern",
            "must be a regular expression (a string)",
        ),
        (
            json!({"type": "string", "minLength": -1}),
            "properties.f.minLength",
            "must be a whole number, 0 or more",
        ),
        (
            json!({"type": "string", "maxLength": 1.5}),
            "properties.f.maxLength",
            "must be a whole number, 0 or more",
        ),
        (
            json!({"type": "string", "format": "email"}),
            "properties.f.format",
            "the only format is \"secret\"",
        ),
        (
            json!({"type": "integer", "minimum": 0.5}),
            "properties.f.minimum",
            "must be a whole number from -9223372036854775808 to 9223372036854775807",
        ),
        (
            json!({"type": "integer", "maximum": "9"}),
            "properties.f.maximum",
            "must be a whole number",
        ),
        (
            json!({"type": "number", "maximum": "9"}),
            "properties.f.maximum",
            "must be a number",
        ),
        (
            json!({"type": "string", "enum": "a"}),
            "properties.f.enum",
            "must be a list of values",
        ),
        (
            json!({"type": "string", "enum": []}),
            "properties.f.enum",
            "must list at least one value",
        ),
        (
            json!({"type": "string", "enum": ["a", 1]}),
            "properties.f.enum[1]",
            "must be text",
        ),
        (
            json!({"type": "string", "maxLength": 1, "enum": ["a", "bb"]}),
            "properties.f.enum[1]",
            "must be at most 1 character",
        ),
        (
            json!({"type": "integer", "maximum": 2, "enum": [1, 3]}),
            "properties.f.enum[1]",
            "must be at most 2",
        ),
        (
            json!({"type": "array"}),
            "properties.f",
            "an array needs \"items\" (the schema of its items)",
        ),
        (
            json!({"type": "array", "items": "string"}),
            "properties.f.items",
            "must be a table of keywords (a JSON object)",
        ),
        (
            json!({"type": "array", "items": {"type": "string"}, "minItems": true}),
            "properties.f.minItems",
            "must be a whole number, 0 or more",
        ),
        (
            json!({"type": "object", "properties": []}),
            "properties.f.properties",
            "must be a table of fields (a JSON object)",
        ),
        (
            json!({"type": "object", "required": "a"}),
            "properties.f.required",
            "must be a list of field names",
        ),
        (
            json!({"type": "object", "required": [1]}),
            "properties.f.required[0]",
            "must be a field name (a string)",
        ),
        (
            json!({"type": "object", "required": ["a"]}),
            "properties.f.required[0]",
            "names no field of \"properties\": a",
        ),
        (
            json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a", "a"]}),
            "properties.f.required[1]",
            "names a twice",
        ),
        (
            json!({"type": "string", "minLength": 3, "maxLength": 2}),
            "properties.f.maxLength",
            "is less than \"minLength\": no value could be valid",
        ),
        (
            json!({"type": "integer", "minimum": 3, "maximum": 2}),
            "properties.f.maximum",
            "is less than \"minimum\": no value could be valid",
        ),
        (
            json!({"type": "number", "minimum": 0.3, "maximum": 0.2}),
            "properties.f.maximum",
            "is less than \"minimum\": no value could be valid",
        ),
        (
            json!({"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 2}),
            "properties.f.maxItems",
            "is less than \"minItems\": no value could be valid",
        ),
    ];
    for (node, path, message) in cases {
        assert_eq!(refusal(field(node.clone())), at(path, message), "{node}");
    }
}

#[test]
fn field_names_are_plain() {
    for bad in ["", "a.b", "a b", "a[0]", "ü", &"x".repeat(65)] {
        let e = refused(json!({"type": "object", "properties": {bad: {"type": "string"}}}));
        assert_eq!(e.path, format!("properties.{bad}"));
        assert!(e.message.starts_with("a field name is"), "{e}");
    }
    schema(json!({"type": "object", "properties": {"Snake_case-and-dash9": {"type": "string"}}}));
}

#[test]
fn patterns_are_checked_once() {
    let e = refused(json!({"type": "object", "properties": {
        "p": {"type": "string", "pattern": "(?=look)ahead"}}}));
    assert_eq!(e.path, "properties.p.pattern");
    assert!(
        e.message
            .starts_with("is not a regular expression this host understands"),
        "{e}"
    );
    let e = refused(json!({"type": "object", "properties": {
        "p": {"type": "string", "pattern": "a".repeat(1001)}}}));
    assert_eq!(e.message, "is longer than 1000 characters");
    // Counted repetitions expand: refused by the compiled-size limit, not by length.
    let e = refused(json!({"type": "object", "properties": {
        "p": {"type": "string", "pattern": "(\\w{100}){100}{100}"}}}));
    assert!(e.message.starts_with("is not a regular expression"), "{e}");
}

#[test]
fn defaults_must_be_valid() {
    let field = |node: Value| json!({"type": "object", "properties": {"f": node}});
    let cases = [
        (
            json!({"type": "integer", "maximum": 5, "default": 6}),
            "is not valid: must be at most 5",
        ),
        (
            json!({"type": "string", "default": 1}),
            "is not valid: must be text",
        ),
        (
            json!({"type": "string", "enum": ["a"], "default": "b"}),
            "is not valid: must be one of: a",
        ),
        (
            json!({"type": "string", "default": null}),
            "must be a value (null means no default)",
        ),
        (
            json!({"type": "array", "items": {"type": "integer"}, "maxItems": 1, "default": [1, 2]}),
            "is not valid: must have at most 1 item",
        ),
        (
            json!({"type": "array", "items": {"type": "object", "properties": {"p": {"type": "integer", "maximum": 9}}},
                "default": [{"p": 1}, {"p": 10}]}),
            "is not valid: [1].p: must be at most 9",
        ),
        (
            json!({"type": "object", "required": ["a"], "properties": {"a": {"type": "string"}}, "default": {}}),
            "is not valid: a: required",
        ),
        (
            json!({"type": "string", "format": "secret", "default": "hunter2"}),
            "a secret has no default (the schema is public)",
        ),
        (
            json!({"type": "object", "properties": {"k": {"type": "string", "format": "secret"}}, "default": {"k": "x"}}),
            "sets the secret k: a default holds no secret (the schema is public)",
        ),
    ];
    for (node, message) in cases {
        assert_eq!(
            refusal(field(node.clone())),
            at("properties.f.default", message),
            "{node}"
        );
    }
}

#[test]
fn defaults_are_normalised() {
    let s = schema(json!({"type": "object", "properties": {
        "whole": {"type": "integer", "default": 3.0},
        "group": {"type": "object", "default": {"a": 1}, "properties": {
            "a": {"type": "integer"}, "b": {"type": "string", "default": "x"}}},
        "list": {"type": "array", "default": [{}], "items": {"type": "object", "properties": {
            "c": {"type": "boolean", "default": true}}}}}}));
    let d = s.defaults();
    assert_eq!(
        d,
        json!({"whole": 3, "group": {"a": 1, "b": "x"}, "list": [{"c": true}]})
    );
    assert_eq!(ok(&s, d.clone()), d);
    // A missing group takes the group's own default rather than its fields'.
    assert_eq!(ok(&s, json!({}))["group"], json!({"a": 1, "b": "x"}));
}

#[test]
fn depth_is_bounded() {
    fn nested(levels: usize) -> Value {
        let mut node = json!({"type": "string", "default": "leaf"});
        for _ in 1..levels {
            node = json!({"type": "object", "properties": {"n": node}});
        }
        node
    }
    let s = schema(nested(MAX_DEPTH));
    let mut d = &s.defaults();
    for _ in 1..MAX_DEPTH - 1 {
        d = &d["n"];
    }
    assert_eq!(d, &json!({"n": "leaf"}));
    let e = refused(nested(MAX_DEPTH + 1));
    assert_eq!(e.message, "nested deeper than 16 levels");
    assert_eq!(e.path, ["properties.n"; MAX_DEPTH].join("."));
    // Array items count as a level too.
    let mut arrays = json!({"type": "integer"});
    for _ in 0..MAX_DEPTH {
        arrays = json!({"type": "array", "items": arrays});
    }
    let e = refused(json!({"type": "object", "properties": {"a": arrays}}));
    assert_eq!(e.message, "nested deeper than 16 levels");
    // Far deeper than the limit: refused at the limit, without walking further.
    assert!(Schema::parse(&nested(200)).is_err());
}

#[test]
fn as_json_is_the_schema_given() {
    let v = json!({"type": "object", "title": "T", "description": "D", "properties": {
        "a": {"type": "boolean", "title": "A", "description": "<b>html</b> is text"}}});
    assert_eq!(schema(v.clone()).as_json(), &v);
}

// ---------------------------------------------------------------------------------- secrets

#[test]
fn redact_replaces_secrets_and_lists_those_set() {
    let s = mqtt();
    assert!(s.has_secrets());
    let stored = ok(
        &s,
        json!({"mqtt": {"host": "h", "password": "hunter2", "brokers": [
            {"url": "mqtt://a", "token": "t0"}, {"url": "mqtt://b"}, {"url": "mqtt://c", "token": ""}]}}),
    );
    let (shown, mut set) = s.redact(&stored);
    set.sort();
    assert_eq!(set, ["mqtt.brokers[0].token", "mqtt.password"]);
    assert_eq!(shown["mqtt"]["password"], Value::Null);
    assert_eq!(shown["mqtt"]["host"], json!("h"));
    assert_eq!(
        shown["mqtt"]["brokers"],
        json!([{"url": "mqtt://a", "port": 8883, "token": null},
               {"url": "mqtt://b", "port": 8883, "token": null},
               {"url": "mqtt://c", "port": 8883, "token": null}])
    );
    let text = shown.to_string();
    assert!(!text.contains("hunter2") && !text.contains("t0"), "{text}");
    // Unset secrets read as null too; a schema without secrets leaves values alone.
    let (shown, set) = s.redact(&json!({"mqtt": {"host": "h"}}));
    assert_eq!(shown, json!({"mqtt": {"host": "h", "password": null}}));
    assert!(set.is_empty());
    let plain = schema(json!({"type": "object", "properties": {"a": {"type": "string"}}}));
    assert_eq!(
        plain.redact(&json!({"a": "x"})),
        (json!({"a": "x"}), vec![])
    );
}

#[test]
fn merge_keeps_secrets_left_out() {
    let s = mqtt();
    let stored = ok(
        &s,
        json!({"mqtt": {"host": "h", "password": "hunter2", "brokers": [
            {"url": "mqtt://a", "token": "t0"}, {"url": "mqtt://b", "token": "t1"}]}}),
    );
    // What the UI sends back after a read: every secret null.
    let (shown, _) = s.redact(&stored);
    assert_eq!(s.merge_secrets(&shown, &stored), stored);
    // Absent is the same as null; a given secret replaces the stored one.
    let mut edit = shown.clone();
    edit["mqtt"].as_object_mut().map(|m| m.remove("password"));
    edit["mqtt"]["brokers"][1]["token"] = json!("new");
    let merged = s.merge_secrets(&edit, &stored);
    assert_eq!(merged["mqtt"]["password"], json!("hunter2"));
    assert_eq!(merged["mqtt"]["brokers"][0]["token"], json!("t0"));
    assert_eq!(merged["mqtt"]["brokers"][1]["token"], json!("new"));
    // A removed broker: lengths differ, so the items' secrets are not matched (by index they
    // would land on the wrong broker).
    let mut fewer = shown.clone();
    fewer["mqtt"]["brokers"] = json!([{"url": "mqtt://b", "token": null}]);
    let merged = ok(&s, s.merge_secrets(&fewer, &stored));
    assert_eq!(
        merged["mqtt"]["brokers"],
        json!([{"url": "mqtt://b", "port": 8883}])
    );
    assert_eq!(merged["mqtt"]["password"], json!("hunter2"));
    // A missing object gets its stored secret back.
    let merged = s.merge_secrets(&json!({}), &stored);
    assert_eq!(merged, json!({"mqtt": {"password": "hunter2"}}));
    // Nothing stored: the null goes, absent it stays.
    let merged = s.merge_secrets(
        &json!({"mqtt": {"host": "h", "password": null}}),
        &json!({}),
    );
    assert_eq!(merged, json!({"mqtt": {"host": "h"}}));
    // Not an object where the schema has one: left for validation to refuse.
    assert_eq!(s.merge_secrets(&json!(3), &stored), json!(3));
    assert_eq!(
        s.merge_secrets(&json!({"mqtt": "x"}), &stored),
        json!({"mqtt": "x"})
    );
}

#[test]
fn a_required_secret_left_out_with_nothing_stored_is_required() {
    let s = schema(
        json!({"type": "object", "required": ["key"], "properties": {
        "key": {"type": "string", "format": "secret", "minLength": 8}}}),
    );
    let merged = s.merge_secrets(&json!({"key": null}), &json!({}));
    assert_eq!(errors(&s, merged), pairs(&[("key", "required")]));
    let merged = s.merge_secrets(&json!({"key": null}), &json!({"key": "12345678"}));
    assert_eq!(ok(&s, merged), json!({"key": "12345678"}));
}
