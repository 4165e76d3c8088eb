//! The verification without a host: real keys, real signatures, each refusal by name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use toru_test_kit::TempDir;

use super::*;

const INSTANCE: &str = "0123456789abcdef0123456789abcdef";

fn t(s: &str) -> DateTime<Utc> {
    parse_date(s).unwrap()
}

struct Keys {
    _dir: TempDir,
    alice: PathBuf,
    alice_pub: PublicKey,
    mallory: PathBuf,
}

fn keys() -> Keys {
    let dir = TempDir::new("lic").unwrap();
    let (alice, pk) = sign::generate("alice", &dir.0).unwrap();
    let (mallory, _) = sign::generate("mallory", &dir.0).unwrap();
    let alice_pub = PublicKey::parse(&std::fs::read_to_string(pk).unwrap()).unwrap();
    Keys {
        _dir: dir,
        alice,
        alice_pub,
        mallory,
    }
}

fn request(plugin: &str) -> Issue {
    Issue {
        plugin: plugin.into(),
        instance: INSTANCE.to_uppercase(),
        features: vec!["pro".into(), "export".into()],
        not_before: Some(t("2025-01-01")),
        expires: Some(t("2026-01-01")),
    }
}

fn expected<'a>(k: &'a Keys, now: &str) -> Expected<'a> {
    Expected {
        plugin: "hello",
        instance: INSTANCE,
        publisher: Publisher::Trusted(&k.alice_pub),
        now: t(now),
    }
}

fn check(text: &str, want: &Expected<'_>) -> Result<Claims, Refusal> {
    Document::parse(text)?.verify(want)
}

#[test]
fn an_issued_licence_verifies_and_carries_its_claims() {
    let k = keys();
    let (text, claims) = issue(&k.alice, &request("hello"), t("2025-03-01")).unwrap();
    assert_eq!(text.lines().count(), 5, "{text}");
    let got = check(&text, &expected(&k, "2025-06-01")).unwrap();
    assert_eq!(got, claims);
    assert_eq!(got.instance, INSTANCE, "normalised to lowercase");
    assert_eq!(got.publisher, k.alice_pub.key_id);
    assert_eq!(got.features, vec!["pro", "export"]);
    let api = got.to_api();
    assert!(api.has_feature("pro"));
}

#[test]
fn each_refusal_is_named() {
    let k = keys();
    let (text, _) = issue(&k.alice, &request("hello"), t("2025-03-01")).unwrap();
    let code = |r: Result<Claims, Refusal>| r.unwrap_err().code();

    // Dates: before not_before, at expiry (exclusive), after.
    assert_eq!(
        code(check(&text, &expected(&k, "2024-12-31"))),
        "not_yet_valid"
    );
    assert_eq!(code(check(&text, &expected(&k, "2026-01-01"))), "expired");
    let e = check(&text, &expected(&k, "2027-01-01")).unwrap_err();
    assert!(
        e.to_string().contains("expired at 2026-01-01T00:00:00Z"),
        "{e}"
    );

    // Another device.
    let mut want = expected(&k, "2025-06-01");
    want.instance = "ffffffffffffffffffffffffffffffff";
    let e = check(&text, &want).unwrap_err();
    assert_eq!(e.code(), "wrong_instance");
    assert!(e.to_string().contains("not this one (ffff"), "{e}");

    // Another plugin.
    let mut want = expected(&k, "2025-06-01");
    want.plugin = "other";
    assert_eq!(code(check(&text, &want)), "other_plugin");

    // A byte changed in the claims (the feature list grows).
    let tampered = text.replacen("\"pro\"", "\"prO\"", 1);
    assert_eq!(
        code(check(&tampered, &expected(&k, "2025-06-01"))),
        "bad_signature"
    );

    // Signed by another key than the package's, trusted or not.
    let (forged, _) = issue(&k.mallory, &request("hello"), t("2025-03-01")).unwrap();
    let e = check(&forged, &expected(&k, "2025-06-01")).unwrap_err();
    assert_eq!(e.code(), "other_publisher");
    assert!(e.to_string().contains(&k.alice_pub.key_id), "{e}");

    // The package's own key, no longer trusted.
    let mut want = expected(&k, "2025-06-01");
    let id = k.alice_pub.key_id.clone();
    want.publisher = Publisher::Untrusted(&id);
    assert_eq!(code(check(&text, &want)), "untrusted_publisher");

    // An unsigned package has no publisher to check against.
    let mut want = expected(&k, "2025-06-01");
    want.publisher = Publisher::Unsigned;
    assert_eq!(code(check(&text, &want)), "unsigned_package");
}

#[test]
fn malformed_documents_say_what_is_wrong() {
    let k = keys();
    let (text, _) = issue(&k.alice, &request("hello"), t("2025-03-01")).unwrap();
    let (line, sig) = text.split_once('\n').unwrap();
    let cases = [
        ("", "one line of JSON"),
        ("garbage\n", "not the JSON claims"),
        (&format!("{line}\n"), "not a minisign signature"),
        (
            &format!("{}\n{sig}", line.replace("\"format\":1", "\"format\":2")),
            "format 2",
        ),
        (
            &format!(
                "{}\n{sig}",
                line.replace("\"features\"", "\"seats\":3,\"features\"")
            ),
            "unknown field",
        ),
        (
            &format!("{}\n{sig}", line.replace(INSTANCE, "abc")),
            "not a licensing id",
        ),
    ];
    for (doc, want) in cases {
        let e = Document::parse(doc).unwrap_err();
        assert_eq!(e.code(), "malformed", "{doc:?}");
        assert!(e.to_string().contains(want), "{doc:?}: {e}");
    }
    assert!(Document::parse(&"x".repeat(MAX_LICENSE_BYTES + 1)).is_err());
}

/// The claims naming another publisher than the signing key: refused even though the signature
/// itself is good (a publisher cannot sign claims in another's name).
#[test]
fn claims_must_name_the_key_that_signed_them() {
    let k = keys();
    let claims = Claims {
        format: FORMAT,
        plugin: "hello".into(),
        publisher: "0000000000000000".into(),
        instance: INSTANCE.into(),
        features: vec![],
        not_before: t("2025-01-01"),
        expires: None,
        issued_at: t("2025-01-01"),
    };
    let line = format!("{}\n", serde_json::to_string(&claims).unwrap());
    let (sig, _) = sign::sign_bytes(line.as_bytes(), &k.alice, "c").unwrap();
    let e = check(&format!("{line}{sig}"), &expected(&k, "2025-06-01")).unwrap_err();
    assert_eq!(e.code(), "malformed");
    assert!(e.to_string().contains("claims name publisher"), "{e}");
}

/// A licence made the way docs/LICENSES.md tells a publisher without Toru: the claims file signed
/// as a file (`minisign -S` does what `sign_file` does), then the two concatenated.
#[test]
fn a_licence_made_from_a_signed_claims_file_verifies() {
    let k = keys();
    let dir = TempDir::new("lic-by-hand").unwrap();
    let line = format!(
        r#"{{"format":1,"plugin":"hello","publisher":"{}","instance":"{INSTANCE}","features":[],"not_before":"2025-01-01T00:00:00Z","expires":null,"issued_at":"2025-01-01T00:00:00Z"}}"#,
        k.alice_pub.key_id
    );
    let claims_file = dir.join("claims");
    std::fs::write(&claims_file, format!("{line}\n")).unwrap();
    let sig = sign::sign_file(&claims_file, &k.alice, "by hand").unwrap();
    let text = format!("{line}\n{}", std::fs::read_to_string(sig).unwrap());
    let c = check(&text, &expected(&k, "2099-01-01")).unwrap();
    assert_eq!(c.expires, None, "never expires");
}

#[test]
fn the_clock_never_goes_back_and_ids_are_normalised() {
    let (early, late) = (t("2020-01-01"), t("2030-01-01"));
    assert_eq!(effective_now(early, Some(late)), late);
    assert_eq!(effective_now(late, Some(early)), late);
    assert_eq!(effective_now(early, None), early);
    assert_eq!(
        parse_licensing_id("0123-4567-89AB-CDEF-0123-4567-89ab-cdef").as_deref(),
        Some(INSTANCE)
    );
    assert_eq!(parse_licensing_id("0123"), None);
    assert_eq!(parse_licensing_id(&"g".repeat(32)), None);
    assert!(parse_date("tomorrow").is_err());
    assert_eq!(
        parse_date("2025-01-02T03:04:05+01:00").unwrap(),
        t("2025-01-02T02:04:05Z")
    );
}

#[test]
fn licensing_ids_are_stable_per_key_and_differ_between_keys() {
    let (a_text, a) = sign::generate_in_memory().unwrap();
    let (_, b) = sign::generate_in_memory().unwrap();
    let id = licensing_id(&a);
    assert_eq!(id.len(), 32);
    assert!(
        id.bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert_eq!(
        licensing_id(&sign::public_key_of_text(&a_text).unwrap()),
        id
    );
    assert_ne!(licensing_id(&b), id);
}

#[test]
fn issuing_refuses_what_would_never_verify() {
    let k = keys();
    let mut bad = request("hello");
    bad.instance = "not an id".into();
    let e = issue(&k.alice, &bad, t("2025-03-01")).unwrap_err();
    assert!(e.to_string().contains("toru instance id"), "{e}");
    let mut bad = request("Hello World");
    bad.instance = INSTANCE.into();
    assert!(issue(&k.alice, &bad, t("2025-03-01")).is_err());
    let mut bad = request("hello");
    bad.expires = Some(t("2024-01-01"));
    let e = issue(&k.alice, &bad, t("2025-03-01")).unwrap_err();
    assert!(e.to_string().contains("expires before it begins"), "{e}");
    // Without --not-before: the start of the issuing day.
    let mut req = request("hello");
    req.not_before = None;
    let (_, c) = issue(&k.alice, &req, t("2025-03-01T15:00:00Z")).unwrap();
    assert_eq!(c.not_before, t("2025-03-01"));
}
