//! Validation reports every violation with its JSON Pointer.

use exhub_schemas::{Op, Value};

use crate::common::{decode_ok, example, registry};

fn violations(json: &str) -> Vec<String> {
    let r = registry();
    let d = decode_ok(json.as_bytes(), &r);
    r.validate(&d).iter().map(ToString::to_string).collect()
}

fn tax() -> String {
    String::from_utf8(example("tax.registration.json")).unwrap()
}

fn has(vs: &[String], pointer: &str, needle: &str) -> bool {
    vs.iter()
        .any(|v| v.starts_with(&format!("{pointer}: ")) && v.contains(needle))
}

#[test]
fn examples_are_valid() {
    assert_eq!(violations(&tax()), Vec::<String>::new());
}

#[test]
fn every_violation_is_reported_with_its_pointer() {
    let bad = tax()
        .replace(
            "\"taxpayer_id\": \"91440605MA4W0XNF3H\",",
            "\"taxpayer_id\": \"91440605MA4W0XNF3J\",",
        )
        .replace("\"registered_at\": \"2019-03-01\"", "\"registered_at\": \"2019-02-30\"")
        .replace("\"capital\": \"1200000.00\"", "\"capital\": \"1,200,000\"")
        .replace(
            "\"taxpayer_status\": \"normal\",",
            "\"taxpayer_status\": \"正常\", \"nickname\": \"x\",",
        )
        .replace("\"district\": \"南海\",", "");
    let vs = violations(&bad);
    assert!(has(&vs, "/body/taxpayer_id", "uscc"), "{vs:#?}");
    assert!(has(&vs, "/body/registered_at", "date"), "{vs:#?}");
    assert!(has(&vs, "/body/capital", "decimal"), "{vs:#?}");
    assert!(has(&vs, "/body/taxpayer_status", "正常"), "{vs:#?}");
    assert!(has(&vs, "/body", "nickname"), "{vs:#?}");
    assert!(has(&vs, "/body", "district"), "{vs:#?}");
    assert!(has(&vs, "/header/key/taxpayer_id", "differs from body"), "{vs:#?}");
    assert!(vs.len() >= 7, "{vs:#?}");
}

#[test]
fn binary_must_be_base64() {
    let text = String::from_utf8(example("approval.request.json"))
        .unwrap()
        .replace("JVBERi0xLjQKJcfsj6IK", "not base64!");
    let vs = violations(&text);
    assert!(has(&vs, "/body/attachments/0/content", "expected a binary"), "{vs:#?}");
}

#[test]
fn a_delete_may_carry_only_the_key() {
    let r = registry();
    let mut d = decode_ok(&example("tax.registration.json"), &r);
    d.header.op = Op::Delete;
    d.body.retain(|k, _| k == "taxpayer_id");
    assert_eq!(r.validate(&d), vec![]);
    d.header.op = Op::Upsert;
    assert!(!r.validate(&d).is_empty(), "an upsert needs the required fields");
}

#[test]
fn xml_typed_as_text_where_the_schema_wants_a_date() {
    let r = registry();
    let d = decode_ok(&example("tax.registration.json"), &r);
    let x = exhub_schemas::xml::encode(&d, &r).replace("<registered_at>", "<registered_at t=\"string\">");
    let d2 = decode_ok(x.as_bytes(), &r);
    assert_eq!(d2.body["registered_at"], Value::Text("2019-03-01".into()));
    let vs: Vec<String> = r.validate(&d2).iter().map(ToString::to_string).collect();
    assert!(has(&vs, "/body/registered_at", "expected a date"), "{vs:#?}");
}

#[test]
fn unknown_key_field() {
    let vs = violations(&tax().replace("\"key\": {", "\"key\": {\"nsrsbh\": \"1\", "));
    assert!(
        has(&vs, "/header/key/nsrsbh", "is not a field of tax.registration v1"),
        "{vs:#?}"
    );
}
