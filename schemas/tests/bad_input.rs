//! Bad input gets a clear error, never a panic.

use exhub_schemas::{DecodeError, Limits, decode};

use crate::common::{example, registry};

fn decode_err(bytes: &[u8]) -> DecodeError {
    decode_err_with(bytes, &Limits::default())
}

fn decode_err_with(bytes: &[u8], limits: &Limits) -> DecodeError {
    match decode(bytes, &registry(), limits) {
        Ok(d) => panic!("accepted: {d:?}"),
        Err(e) => e,
    }
}

fn tax_json() -> String {
    String::from_utf8(example("tax.registration.json")).unwrap()
}

fn tax_xml() -> String {
    let r = registry();
    let d = decode(&example("tax.registration.json"), &r, &Limits::default()).unwrap();
    exhub_schemas::xml::encode(&d, &r)
}

#[test]
fn malformed_json_names_line_and_column() {
    let e = decode_err(b"{\n  \"header\": {\"id\": }\n}");
    assert!(matches!(e, DecodeError::Json { line: 2, .. }), "{e:?}");
    assert_eq!(e.reason(), "malformed");
    let e = decode_err(b"{\"header\": {}, \"body\": {}} trailing");
    assert!(e.to_string().contains("trailing"), "{e}");
}

#[test]
fn malformed_xml() {
    for (x, needle) in [
        ("<document><header></document>", "malformed XML"),
        ("<document><header>", "unclosed"),
        ("<document/><document/>", "second root"),
        ("<document a=\"1\"/>", "attribute \"a\""),
        ("<document><body t=\"float\"/></document>", "not a type"),
    ] {
        let e = decode_err(x.as_bytes());
        assert!(e.to_string().contains(needle), "{x}: {e}");
    }
}

#[test]
fn too_large() {
    let limits = Limits {
        max_bytes: 1000,
        ..Limits::default()
    };
    let e = decode_err_with(tax_json().as_bytes(), &limits);
    assert!(matches!(e, DecodeError::TooLarge { limit: 1000, .. }), "{e:?}");
    assert_eq!(e.reason(), "too_large");
    // The default is 4 MiB.
    let big = format!(
        "{{\"header\": {{}}, \"body\": {{\"s\": \"{}\"}}}}",
        "x".repeat(4 * 1024 * 1024)
    );
    assert!(matches!(decode_err(big.as_bytes()), DecodeError::TooLarge { .. }));
}

#[test]
fn doctype_and_entities_are_refused() {
    let billion_laughs = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<document><header/><body><s>&lol2;</s></body></document>"#;
    let e = decode_err(billion_laughs.as_bytes());
    assert!(e.to_string().contains("DOCTYPE is refused"), "{e}");
    let xxe = "<!DOCTYPE d [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><document/>";
    assert!(decode_err(xxe.as_bytes()).to_string().contains("DOCTYPE"));
    let undeclared = tax_xml().replace("<district>南海</district>", "<district>&nanhai;</district>");
    let e = decode_err(undeclared.as_bytes());
    assert!(e.to_string().contains("unknown entity &nanhai;"), "{e}");
}

#[test]
fn nesting_deeper_than_the_limit() {
    let deep_json = format!(
        "{{\"header\": {{}}, \"body\": {{\"x\": {}1{}}}}}",
        "[".repeat(40),
        "]".repeat(40)
    );
    let e = decode_err(deep_json.as_bytes());
    assert_eq!(e, DecodeError::TooDeep { limit: 32 });
    assert_eq!(e.reason(), "too_deep");
    let deep_xml = format!(
        "<document><header/><body>{}{}</body></document>",
        "<x>".repeat(40),
        "</x>".repeat(40)
    );
    assert_eq!(decode_err(deep_xml.as_bytes()), DecodeError::TooDeep { limit: 32 });
    // Far deeper than any stack could take recursively.
    let very_deep = "[".repeat(100_000);
    assert!(matches!(
        decode_err(format!("{{\"a\":{very_deep}").as_bytes()),
        DecodeError::TooDeep { .. }
    ));
    let limits = Limits {
        max_depth: 2,
        ..Limits::default()
    };
    assert!(matches!(
        decode_err_with(tax_json().as_bytes(), &limits),
        DecodeError::TooDeep { limit: 2 }
    ));
}

#[test]
fn unknown_doc_type_or_version() {
    let e = decode_err(tax_json().replace("\"tax.registration\"", "\"tax.refund\"").as_bytes());
    assert!(
        matches!(&e, DecodeError::UnknownDocType { doc_type, version: 1, .. } if doc_type == "tax.refund"),
        "{e:?}"
    );
    assert!(e.to_string().contains("known: "), "{e}");
    assert_eq!(e.reason(), "unknown_doc_type");
    let e = decode_err(
        tax_json()
            .replace("\"schema_version\": 1", "\"schema_version\": 9")
            .as_bytes(),
    );
    assert!(matches!(e, DecodeError::UnknownDocType { version: 9, .. }), "{e:?}");
    let e = decode_err(tax_xml().replace("<schema_version>1<", "<schema_version>9<").as_bytes());
    assert!(matches!(e, DecodeError::UnknownDocType { version: 9, .. }), "{e:?}");
}

#[test]
fn floats_and_huge_integers_are_refused() {
    let e = decode_err(tax_json().replace("\"1200000.00\"", "1200000.00").as_bytes());
    assert!(e.to_string().contains("no floats"), "{e}");
    let e = decode_err(
        tax_json()
            .replace("\"seq\": 0", "\"seq\": 18446744073709551615")
            .as_bytes(),
    );
    assert!(e.to_string().contains("does not fit in 64 bits"), "{e}");
}

#[test]
fn duplicate_keys_are_refused() {
    let e = decode_err(
        tax_json()
            .replace(
                "\"district\": \"南海\"",
                "\"district\": \"南海\", \"district\": \"顺德\"",
            )
            .as_bytes(),
    );
    assert!(e.to_string().contains("duplicate key \"district\""), "{e}");
    let e = decode_err(
        tax_xml()
            .replace(
                "<district>南海</district>",
                "<district>南海</district><district>顺德</district>",
            )
            .as_bytes(),
    );
    assert!(e.to_string().contains("/body/district: appears twice"), "{e}");
}

#[test]
fn characters_xml_cannot_carry_are_refused_in_both_encodings() {
    let e = decode_err(tax_json().replace("陈志强", "陈志\\u0001强").as_bytes());
    assert!(
        matches!(&e, DecodeError::Invalid { pointer, message } if pointer == "/body/legal_representative" && message.contains("U+0001")),
        "{e:?}"
    );
    let e = decode_err(tax_xml().replace("陈志强", "陈志&#1;强").as_bytes());
    assert!(e.to_string().contains("U+0001"), "{e}");
    let e = decode_err(tax_xml().replace("陈志强", "陈志\u{1}强").as_bytes());
    assert!(e.to_string().contains("U+0001"), "{e}");
}

#[test]
fn not_utf8_or_not_a_document() {
    assert!(decode_err(b"{\"a\": \"\xff\"}").to_string().contains("not UTF-8"));
    assert!(decode_err(b"").to_string().contains("neither JSON nor XML"));
    assert!(decode_err(b"hello").to_string().contains("neither JSON nor XML"));
    let latin1 = tax_xml().replace("encoding=\"UTF-8\"", "encoding=\"ISO-8859-1\"");
    assert!(decode_err(latin1.as_bytes()).to_string().contains("refused"));
    assert!(decode_err(b"[1,2]").to_string().contains("neither JSON nor XML"));
    assert!(decode_err(b"{}").to_string().contains("/header: is required"));
}

#[test]
fn bad_header_fields_are_named() {
    for (from, to, needle) in [
        (
            "\"op\": \"upsert\"",
            "\"op\": \"merge\"",
            "/header/op: \"merge\" is not one of",
        ),
        (
            "\"created_at\": \"2026-11-22T08:00:00.123Z\"",
            "\"created_at\": \"2026-11-22 08:00\"",
            "/header/created_at: must be a timestamp",
        ),
        (
            "\"id\": \"0193b4c2-5a1e-7c3d-9f10-2b4e6a8c0d12\"",
            "\"id\": \"42\"",
            "/header/id: \"42\" is not a UUID",
        ),
        (
            "\"test\": false",
            "\"test\": false, \"priority\": 1",
            "/header/priority: is not a header field",
        ),
        (
            "\"key\": {",
            "\"key\": {\"x\": [1], ",
            "/header/key/x: a key value must be a non-null scalar",
        ),
        (
            "\"sender\": { \"org\": \"nanhai.tax\",",
            "\"sender\": {",
            "/header/sender/org: is required",
        ),
    ] {
        let text = tax_json();
        assert!(text.contains(from), "fixture lacks {from}");
        let e = decode_err(text.replace(from, to).as_bytes());
        assert!(e.to_string().contains(needle), "{to}: {e}");
    }
}
