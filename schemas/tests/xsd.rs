//! The exported XSD accepts what the XML encoder writes (checked with xmllint, an independent
//! validator) and refuses what the schema refuses.

use std::process::Command;

use exhub_schemas::{Value, xml, xsd};

use crate::common::{EXAMPLES, decode_ok, example, registry};

fn xmllint(xsd_text: &str, xml_text: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("exhub-xsd-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("s.xsd"), xsd_text).unwrap();
    std::fs::write(dir.join("d.xml"), xml_text).unwrap();
    let out = Command::new("xmllint")
        .args(["--noout", "--schema"])
        .arg(dir.join("s.xsd"))
        .arg(dir.join("d.xml"))
        .output()
        .expect("xmllint is needed for this test: run scripts/services.sh (installs libxml2-utils)");
    std::fs::remove_dir_all(&dir).ok();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn examples_validate_against_their_exported_xsd() {
    let r = registry();
    for name in EXAMPLES {
        let d = decode_ok(&example(name), &r);
        let schema = r.get(&d.header.doc_type, d.header.schema_version).unwrap();
        let (ok, err) = xmllint(&xsd::export(schema), &xml::encode(&d, &r));
        assert!(ok, "{name}: {err}");
    }
}

#[test]
fn xsd_refuses_what_the_schema_refuses() {
    let r = registry();
    let mut d = decode_ok(&example("tax.registration.json"), &r);
    d.body.insert("taxpayer_status".into(), Value::Text("正常".into()));
    let schema = r.get("tax.registration", 1).unwrap();
    let (ok, err) = xmllint(&xsd::export(schema), &xml::encode(&d, &r));
    assert!(!ok, "enumeration not enforced");
    assert!(err.contains("taxpayer_status"), "{err}");
    let mut d = decode_ok(&example("tax.registration.json"), &r);
    d.body.remove("name");
    let (ok, _) = xmllint(&xsd::export(schema), &xml::encode(&d, &r));
    assert!(!ok, "required field not enforced");
}
