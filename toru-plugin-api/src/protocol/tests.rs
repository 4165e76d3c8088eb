//! Protocol unit tests: every vector decodes to its intended meaning and every message round-trips.

use super::*;

fn vector(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn vector_host_init() {
    let f = decode_host_frame(&vector("host-init.json")).unwrap();
    assert_eq!(f.request_id, None);
    let HostMessage::Init(init) = f.message else {
        panic!("{:?}", f.message)
    };
    assert_eq!(init.instance_id, "5f0c6c2e-8a3b-4d7e-9c1a-2b3c4d5e6f70");
    assert_eq!(
        init.plugin_socket,
        "/run/toru/plugins/hello-plugin-python.sock"
    );
    assert_eq!(init.log_path, "/run/toru/logs/hello-plugin-python.log");
    assert_eq!(init.protocol, None);
    // The original host sent no settings: read as none.
    assert_eq!(init.config, serde_json::json!({}));
}

#[test]
fn vector_host_shutdown() {
    let f = decode_host_frame(&vector("host-shutdown.json")).unwrap();
    assert_eq!(f.message, HostMessage::Shutdown);
    assert_eq!(f.timestamp.to_rfc3339(), "2025-12-30T12:05:00+00:00");
}

#[test]
fn vector_host_http_request() {
    let f = decode_host_frame(&vector("host-http-request.json")).unwrap();
    assert_eq!(
        f.request_id.as_deref(),
        Some("7d9f2a10-3b4c-4e5f-8a6b-1c2d3e4f5a6b")
    );
    let HostMessage::Http(req) = f.message else {
        panic!()
    };
    assert_eq!(req.method, "GET");
    assert_eq!(req.path, "/");
    assert_eq!(req.header("accept"), Some("application/json"));
    assert_eq!(
        req.headers.get("Host").map(String::as_str),
        Some("toru.local:8080")
    );
    assert_eq!(req.body, None);
}

#[test]
fn vector_plugin_http_reply_documented() {
    let f = decode_plugin_frame(&vector("plugin-http-response-documented.json")).unwrap();
    assert_eq!(
        f.request_id.as_deref(),
        Some("7d9f2a10-3b4c-4e5f-8a6b-1c2d3e4f5a6b")
    );
    let PluginMessage::HttpReply(r) = f.message else {
        panic!()
    };
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["Content-Type"], "application/json");
    let body: serde_json::Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
    assert_eq!(body["message"], "Hello from Python plugin!");
    assert_eq!(f.timestamp.timestamp_subsec_micros(), 50213);
}

#[test]
fn vector_plugin_http_reply_legacy_rust() {
    let f = decode_plugin_frame(&vector("plugin-http-response-legacy-rust.json")).unwrap();
    let PluginMessage::HttpReply(r) = f.message else {
        panic!()
    };
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["Content-Type"], "application/json");
    assert_eq!(
        r.body.as_deref(),
        Some("{\"message\":\"Hello from Rust plugin!\"}")
    );
}

#[test]
fn vector_metadata_pretty() {
    let m = PluginMetadata::parse(&vector("plugin-metadata-pretty.txt")).unwrap();
    assert_eq!(m.id, "hello-plugin-python");
    assert_eq!(m.icon, "🐍");
    assert_eq!(m.route, "/hello-python");
    assert_eq!(m.validate().unwrap(), ProtocolVersion::V1_0);
}

#[test]
fn host_frames_encode_like_the_vectors() {
    // Our encoder produces the same JSON value as the recorded frames; init adds `config`, the
    // plugin's settings (`{}` here), which the original plugins ignore as an unknown field.
    for name in [
        "host-init.json",
        "host-shutdown.json",
        "host-http-request.json",
    ] {
        let bytes = vector(name);
        let f = decode_host_frame(&bytes).unwrap();
        let ours = f.to_value();
        let mut theirs: Value = serde_json::from_slice(&bytes).unwrap();
        if name == "host-init.json" {
            theirs["payload"]["config"] = serde_json::json!({});
        }
        assert_eq!(ours, theirs, "{name}");
    }
}

#[test]
fn typed_fast_path_encodes_like_the_value_path() {
    // HTTP requests and replies skip the intermediate Value; the bytes must mean the same.
    let bytes = vector("host-http-request.json");
    let f = decode_host_frame(&bytes).unwrap();
    let fast: Value = serde_json::from_slice(&f.encode()).unwrap();
    let theirs: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(fast, theirs);
    let reply = Frame::new(
        Some("h1".into()),
        PluginMessage::HttpReply(HttpResponse::json(200, &serde_json::json!({"a": 1}))),
    );
    let fast: Value = serde_json::from_slice(&reply.encode()).unwrap();
    assert_eq!(fast, reply.to_value());
}

fn round_trip_host(m: HostMessage, id: Option<&str>) {
    let f = Frame::new(id.map(String::from), m);
    let back = decode_host_frame(&f.encode()).unwrap();
    assert_eq!(back.message, f.message);
    assert_eq!(back.request_id, f.request_id);
    assert_eq!(back.timestamp, f.timestamp);
}

fn round_trip_plugin(m: PluginMessage, id: Option<&str>) {
    let f = Frame::new(id.map(String::from), m);
    let back = decode_plugin_frame(&f.encode()).unwrap();
    assert_eq!(back.message, f.message);
    assert_eq!(back.request_id, f.request_id);
}

#[test]
fn every_message_round_trips() {
    let init = Init {
        instance_id: "i".into(),
        plugin_socket: "/run/toru/p.sock".into(),
        log_path: "/run/toru/p.log".into(),
        protocol: Some("1.1".into()),
        heartbeat_interval_ms: Some(5000),
        max_frame_len: Some(8 << 20),
        config: serde_json::json!({"greeting": "hi", "mqtt": {"port": 1883, "tls": true}}),
        license: None,
    };
    round_trip_host(HostMessage::Init(init.clone()), Some("h1"));
    // 1.1 addition: the verified licence; absent (older hosts, unlicensed plugins) reads as None.
    let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc();
    let licensed = Init {
        license: Some(crate::protocol::License {
            plugin: "p".into(),
            publisher: "8E2C1D4B6A0F3E57".into(),
            instance: "0123456789abcdef0123456789abcdef".into(),
            features: vec!["pro".into()],
            not_before: at("2025-01-01T00:00:00Z"),
            expires: None,
            issued_at: at("2025-01-01T00:00:00Z"),
        }),
        ..init.clone()
    };
    assert!(licensed.license.as_ref().unwrap().has_feature("pro"));
    round_trip_host(HostMessage::Init(licensed), Some("h2"));
    let mut without = serde_json::to_value(&init).unwrap();
    without.as_object_mut().unwrap().remove("license");
    let back: Init = serde_json::from_value(without).unwrap();
    assert_eq!(back.license, None);
    round_trip_host(
        HostMessage::Config(serde_json::json!({"greeting": "hello", "list": [1, 2.5, null]})),
        Some("h7"),
    );
    round_trip_host(HostMessage::Config(serde_json::json!({})), Some("h8"));
    round_trip_host(HostMessage::Shutdown, Some("h2"));
    round_trip_host(HostMessage::Ping { seq: 9 }, Some("h3"));
    let mut headers = BTreeMap::new();
    headers.insert("X-Toru-User".to_string(), "admin".to_string());
    round_trip_host(
        HostMessage::Http(HttpRequest {
            method: "POST".into(),
            path: "/a?b=c".into(),
            headers,
            body: Some("aGk=".into()),
            body_encoding: BodyEncoding::Base64,
        }),
        Some("h4"),
    );
    for reply in [
        KvReply::Get {
            key: "k".into(),
            value: Some("v".into()),
        },
        KvReply::Get {
            key: "k".into(),
            value: None,
        },
        KvReply::Set { key: "k".into() },
        KvReply::Delete {
            key: "k".into(),
            existed: true,
        },
        KvReply::List {
            keys: vec!["a".into()],
            truncated: false,
        },
    ] {
        round_trip_host(HostMessage::Kv(KvPayload::from_reply(&reply)), Some("p1"));
        let f = Frame::new(
            Some("p1".into()),
            HostMessage::Kv(KvPayload::from_reply(&reply)),
        );
        let HostMessage::Kv(p) = decode_host_frame(&f.encode()).unwrap().message else {
            panic!()
        };
        assert_eq!(p.into_reply().unwrap(), reply);
    }
    round_trip_host(
        HostMessage::Error(ErrorReply::new(ErrorCode::QuotaExceeded, "full")),
        Some("p2"),
    );

    round_trip_plugin(PluginMessage::Ready, Some("h1"));
    round_trip_plugin(PluginMessage::ShutdownAck, Some("h2"));
    round_trip_plugin(PluginMessage::Pong { seq: 9 }, Some("h3"));
    round_trip_plugin(
        PluginMessage::HttpReply(HttpResponse::json(201, &serde_json::json!({"a": 1}))),
        Some("h4"),
    );
    round_trip_plugin(
        PluginMessage::HttpReply(HttpResponse::bytes(200, "image/png", &[0, 159, 255])),
        Some("h5"),
    );
    for req in [
        KvRequest::Get { key: "k".into() },
        KvRequest::Set {
            key: "k".into(),
            value: "v".into(),
        },
        KvRequest::Delete { key: "k".into() },
        KvRequest::List {
            prefix: "a/".into(),
            start_after: Some("a/1".into()),
            limit: Some(5),
        },
    ] {
        round_trip_plugin(PluginMessage::Kv(req), Some("p1"));
    }
    round_trip_plugin(
        PluginMessage::Log(LogRecord {
            level: LogLevel::Warn,
            message: "m".into(),
        }),
        None,
    );
    round_trip_plugin(
        PluginMessage::Error(ErrorReply::new(ErrorCode::NotFound, "no")),
        Some("h6"),
    );
    round_trip_plugin(PluginMessage::ConfigOk, Some("h7"));
    for req in [
        MqttRequest::Publish {
            topic: "temp/kitchen".into(),
            payload: "21.5".into(),
            retain: true,
            qos: Some(0),
        },
        MqttRequest::Publish {
            topic: "t".into(),
            payload: String::new(),
            retain: false,
            qos: None,
        },
        MqttRequest::Subscribe {
            filter: "cmd/#".into(),
        },
    ] {
        round_trip_plugin(PluginMessage::Mqtt(req), Some("p3"));
    }
    round_trip_host(HostMessage::MqttOk, Some("p3"));
    round_trip_host(
        HostMessage::MqttMessage(MqttDelivery {
            topic: "cmd/go".into(),
            payload: "{\"a\":1}".into(),
        }),
        None,
    );
}

/// The `mqtt` messages as PROTOCOL.md shows them: requests need an id, a delivery needs none.
#[test]
fn mqtt_messages_on_the_wire() {
    let f = br#"{"type":"mqtt","timestamp":"2025-12-30T12:00:00Z","request_id":"p1","payload":{"type":"mqtt","action":"publish","topic":"temp","payload":"21.5"}}"#;
    let m = decode_plugin_frame(f).unwrap();
    assert_eq!(
        m.message,
        PluginMessage::Mqtt(MqttRequest::Publish {
            topic: "temp".into(),
            payload: "21.5".into(),
            retain: false,
            qos: None
        })
    );
    let f = br#"{"type":"mqtt","timestamp":"2025-12-30T12:00:00Z","payload":{"action":"subscribe","filter":"cmd/#"}}"#;
    assert!(matches!(
        decode_plugin_frame(f),
        Err(DecodeError::Invalid { .. })
    ));
    let f = br#"{"type":"mqtt","timestamp":"2025-12-30T12:00:00Z","request_id":"p2","payload":{"action":"publish","topic":"t"}}"#;
    let e = decode_plugin_frame(f).unwrap_err();
    assert_eq!(e.request_id(), Some("p2"));
    let f = br#"{"type":"mqtt","timestamp":"2025-12-30T12:00:00Z","payload":{"type":"mqtt","action":"message","topic":"cmd/go","payload":"x"}}"#;
    assert_eq!(
        decode_host_frame(f).unwrap().message,
        HostMessage::MqttMessage(MqttDelivery {
            topic: "cmd/go".into(),
            payload: "x".into()
        })
    );
}

/// The `config` request and its answer, as PROTOCOL.md §5.3 shows them.
#[test]
fn config_request_and_answer_on_the_wire() {
    let f = br#"{"type":"config","timestamp":"2025-12-30T12:00:00Z","request_id":"h7","payload":{"type":"config","action":"set","config":{"greeting":"Hi","type":"x"}}}"#;
    let got = decode_host_frame(f).unwrap();
    assert_eq!(got.request_id.as_deref(), Some("h7"));
    // A setting may be called `type`: the settings sit one level down, under `config`.
    assert_eq!(
        got.message,
        HostMessage::Config(serde_json::json!({"greeting": "Hi", "type": "x"}))
    );
    let theirs: Value = serde_json::from_slice(f).unwrap();
    assert_eq!(got.to_value(), theirs);

    let ok = Frame::new(Some("h7".into()), PluginMessage::ConfigOk).to_value();
    assert_eq!(ok["type"], "config");
    assert_eq!(ok["request_id"], "h7");
    assert_eq!(
        ok["payload"],
        serde_json::json!({"type": "config", "action": "ok"})
    );
}

#[test]
fn config_must_be_an_object_and_a_request() {
    let frame = |payload: &str, id: &str| {
        format!(
            r#"{{"type":"config","timestamp":"2025-12-30T12:00:00Z","request_id":{id},"payload":{payload}}}"#
        )
    };
    // Not an object, missing: a payload error that keeps the id, so it is answered bad_request.
    for payload in [
        r#"{"action":"set","config":[1]}"#,
        r#"{"action":"set","config":"greeting=hi"}"#,
        r#"{"action":"set","config":null}"#,
        r#"{"action":"set"}"#,
    ] {
        let e = decode_host_frame(frame(payload, r#""h1""#).as_bytes()).unwrap_err();
        assert_eq!(e.request_id(), Some("h1"), "{payload}");
        assert_eq!(e.to_reply().code, ErrorCode::BadRequest, "{payload}");
    }
    // A request needs an id; an unknown action is unsupported, in both directions.
    let e = decode_host_frame(frame(r#"{"action":"set","config":{}}"#, "null").as_bytes());
    assert!(matches!(e, Err(DecodeError::Invalid { .. })), "{e:?}");
    let e = decode_host_frame(frame(r#"{"action":"merge","config":{}}"#, r#""h2""#).as_bytes());
    assert!(
        matches!(
            e,
            Err(DecodeError::Unsupported {
                field: "action",
                ..
            })
        ),
        "{e:?}"
    );
    let e = decode_plugin_frame(frame(r#"{"action":"set","config":{}}"#, r#""h3""#).as_bytes());
    assert!(
        matches!(
            e,
            Err(DecodeError::Unsupported {
                field: "action",
                ..
            })
        ),
        "{e:?}"
    );
    // An init's settings are an object too.
    let init = br#"{"type":"lifecycle","timestamp":"2025-12-30T12:00:00Z","request_id":"h1","payload":{"type":"lifecycle","action":"init","instance_id":"i","plugin_socket":"s","log_path":"l","config":7}}"#;
    let e = decode_host_frame(init).unwrap_err();
    assert_eq!(e.to_reply().code, ErrorCode::BadRequest);
}

#[test]
fn binary_body_decodes() {
    let r = HttpResponse::bytes(200, "application/octet-stream", &[0, 1, 255]);
    assert_eq!(r.body_bytes().unwrap(), vec![0, 1, 255]);
}

#[test]
fn unknown_fields_are_ignored() {
    let f = br#"{"type":"heartbeat","timestamp":"2025-12-30T12:00:00Z","request_id":"h1","extra":1,
                 "payload":{"type":"heartbeat","action":"pong","seq":3,"more":[1,2]}}"#;
    assert_eq!(
        decode_plugin_frame(f).unwrap().message,
        PluginMessage::Pong { seq: 3 }
    );
}

#[test]
fn unknown_type_is_unsupported_and_keeps_request_id() {
    let f =
        br#"{"type":"teleport","timestamp":"2025-12-30T12:00:00Z","request_id":"h7","payload":{}}"#;
    let e = decode_host_frame(f).unwrap_err();
    assert!(
        matches!(e, DecodeError::Unsupported { field: "type", .. }),
        "{e:?}"
    );
    assert_eq!(e.request_id(), Some("h7"));
    assert_eq!(e.to_reply().code, ErrorCode::Unsupported);
}

#[test]
fn unknown_action_and_level_are_rejected() {
    let f = br#"{"type":"lifecycle","timestamp":"2025-12-30T12:00:00Z","request_id":"h1","payload":{"action":"reboot"}}"#;
    assert!(matches!(
        decode_host_frame(f),
        Err(DecodeError::Unsupported {
            field: "action",
            ..
        })
    ));
    let f = br#"{"type":"kv","timestamp":"2025-12-30T12:00:00Z","request_id":"p1","payload":{"action":"drop","key":"k"}}"#;
    assert!(matches!(
        decode_plugin_frame(f),
        Err(DecodeError::Unsupported {
            field: "action",
            ..
        })
    ));
    let f = br#"{"type":"log","timestamp":"2025-12-30T12:00:00Z","payload":{"level":"loud","message":"x"}}"#;
    assert!(matches!(
        decode_plugin_frame(f),
        Err(DecodeError::Unsupported { field: "level", .. })
    ));
}

#[test]
fn envelope_rules() {
    // Not JSON, not an object, no payload.
    assert!(matches!(
        decode_host_frame(b"{nope"),
        Err(DecodeError::Envelope(_))
    ));
    assert!(matches!(
        decode_host_frame(b"[1,2]"),
        Err(DecodeError::Envelope(_))
    ));
    assert!(matches!(
        decode_host_frame(br#"{"type":"lifecycle","timestamp":"2025-12-30T12:00:00Z"}"#),
        Err(DecodeError::Envelope(_))
    ));
    // Bad timestamp.
    let f = br#"{"type":"lifecycle","timestamp":"yesterday","request_id":"h1","payload":{"action":"shutdown"}}"#;
    let e = decode_host_frame(f).unwrap_err();
    assert!(matches!(e, DecodeError::Timestamp { .. }));
    assert_eq!(e.request_id(), Some("h1"));
    // payload.type must match type.
    let f = br#"{"type":"lifecycle","timestamp":"2025-12-30T12:00:00Z","payload":{"type":"http","action":"shutdown"}}"#;
    assert!(matches!(
        decode_host_frame(f),
        Err(DecodeError::Invalid { .. })
    ));
    // http and kv requests need a request_id.
    let f =
        br#"{"type":"kv","timestamp":"2025-12-30T12:00:00Z","payload":{"action":"get","key":"k"}}"#;
    assert!(matches!(
        decode_plugin_frame(f),
        Err(DecodeError::Invalid { .. })
    ));
    // Over-long request ids.
    let long = "x".repeat(MAX_REQUEST_ID_LEN + 1);
    let f = format!(
        r#"{{"type":"lifecycle","timestamp":"2025-12-30T12:00:00Z","request_id":"{long}","payload":{{"action":"ready"}}}}"#
    );
    assert!(matches!(
        decode_plugin_frame(f.as_bytes()),
        Err(DecodeError::Invalid { .. })
    ));
    // A kv request missing its key is a payload error that keeps the id.
    let f = br#"{"type":"kv","timestamp":"2025-12-30T12:00:00Z","request_id":"p9","payload":{"action":"get"}}"#;
    let e = decode_plugin_frame(f).unwrap_err();
    assert_eq!(e.request_id(), Some("p9"));
    assert_eq!(e.to_reply().code, ErrorCode::BadRequest);
}

#[test]
fn http_reply_without_status_or_legacy_body_is_rejected() {
    let f = br#"{"type":"http","timestamp":"2025-12-30T12:00:00Z","request_id":"h1","payload":{"headers":{}}}"#;
    assert!(decode_plugin_frame(f).is_err());
}

#[test]
fn metadata_validation() {
    let ok = PluginMetadata {
        id: "hello-1".into(),
        name: "Hello".into(),
        version: "1".into(),
        author: None,
        icon: String::new(),
        route: "/hello".into(),
        protocol: Some("1.1".into()),
    };
    assert_eq!(ok.validate().unwrap(), ProtocolVersion::V1_1);
    let bad = |f: &dyn Fn(&mut PluginMetadata)| {
        let mut m = ok.clone();
        f(&mut m);
        m.validate().unwrap_err()
    };
    assert!(matches!(
        bad(&|m| m.id = "Hello".into()),
        MetadataError::Id(_)
    ));
    assert!(matches!(bad(&|m| m.id = "-x".into()), MetadataError::Id(_)));
    assert!(matches!(
        bad(&|m| m.id = "a".repeat(64)),
        MetadataError::Id(_)
    ));
    assert!(matches!(
        bad(&|m| m.id = String::new()),
        MetadataError::Id(_)
    ));
    assert!(matches!(
        bad(&|m| m.route = "hello".into()),
        MetadataError::Route(_)
    ));
    assert!(matches!(
        bad(&|m| m.route = "/..".into()),
        MetadataError::Route(_)
    ));
    assert!(matches!(
        bad(&|m| m.route = "/a..b".into()),
        MetadataError::Route(_)
    ));
    assert!(matches!(
        bad(&|m| m.route = "/a/b".into()),
        MetadataError::Route(_)
    ));
    assert!(matches!(
        bad(&|m| m.route = "/".into()),
        MetadataError::Route(_)
    ));
    assert!(matches!(
        bad(&|m| m.name = "n".repeat(100)),
        MetadataError::Name
    ));
    assert!(matches!(
        bad(&|m| m.author = Some("a".repeat(100))),
        MetadataError::Author
    ));
    let e = bad(&|m| m.protocol = Some("2.0".into()));
    assert_eq!(
        e.to_string(),
        "plugin speaks protocol 2.0, this host speaks 1.0 and 1.1"
    );
    assert!(matches!(
        bad(&|m| m.protocol = Some("banana".into())),
        MetadataError::Protocol { .. }
    ));
    let mut future = ok.clone();
    future.protocol = Some("1.7".into());
    assert_eq!(future.validate().unwrap(), ProtocolVersion::V1_1);
}

#[test]
fn query_parsing() {
    let req = HttpRequest {
        method: "GET".into(),
        path: "/items?x=1&name=a%20b+c&flag&bad=%zz".into(),
        headers: BTreeMap::new(),
        body: None,
        body_encoding: BodyEncoding::Utf8,
    };
    assert_eq!(req.path_only(), "/items");
    assert_eq!(req.query_param("x").as_deref(), Some("1"));
    assert_eq!(req.query_param("name").as_deref(), Some("a b c"));
    assert_eq!(req.query_param("flag").as_deref(), Some(""));
    assert_eq!(req.query_param("bad").as_deref(), Some("%zz"));
    assert_eq!(percent_decode("%41%4"), "A%4");
    // Found by fuzzing the host's path check: `u8::from_str_radix` takes a sign, so `%+5` was
    // decoded as byte 5. An escape is `%` and two hex digits; anything else stays as written.
    assert_eq!(
        percent_decode("%+5%-1%2b"),
        "% 5%-1+",
        "`+` is a space, `%2b` a `+`"
    );
}

/// Found by fuzz target `envelope`: a KV payload is passed on raw, and a float in it with a long
/// decimal part (`1044444444444444.444…`) re-encoded to a string that decoded to a neighbouring
/// float, because serde_json's default parser may be one ULP off. The workspace enables its
/// `float_roundtrip` parser.
#[test]
fn a_float_in_a_raw_payload_survives_a_round_trip() {
    let frame = br#"{"type":"kv","timestamp":"2025-12-30T12:00:01Z","request_id":"k1","payload":{"type":"kv","action":"list","x":1044444444444444.444444444444444444444444444444444444,"y":0.1,"z":1e-320}}"#;
    let f = decode_host_frame(frame).expect("decodes");
    let again = decode_host_frame(&f.encode()).expect("re-encoded frame decodes");
    assert_eq!(again, f);
    let HostMessage::Kv(KvPayload(m)) = &f.message else {
        panic!("{f:?}")
    };
    assert_eq!(m["x"].as_f64(), Some(1_044_444_444_444_444.5));
}
