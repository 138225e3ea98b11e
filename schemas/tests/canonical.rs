//! The canonical form and content hash against fixed vectors, whichever encoding carried them.

use exhub_schemas::{canonical, json, xml};

use crate::common::{decode_ok, registry};

const VECTOR_DOC: &str = r#"{"body":{"b":true,"d":"1.50","s":"南海 \"<&>\"\n","dt":"2019-03-01","bin":"AAH/","i":-7,"amounts":[null,"0.1"]},
 "header":{"test":false,"id":"0193b4c2-5a1e-7c3d-9f10-2b4e6a8c0d12","doc_type":"test.all_types","schema_version":1,"op":"upsert",
 "sender":{"org":"nanhai.tax"},"created_at":"2026-11-22T08:00:00Z","classification":"internal",
 "content_hash":"sha256:ignored","signature":{"alg":"ed25519","key_id":"k","value":"ignored"}}}"#;

/// Computed independently (Python: json.dumps(sort_keys=True, separators=(",", ":"),
/// ensure_ascii=False) without content_hash and signature, then hashlib.sha256).
const VECTOR_CANONICAL: &str = r#"{"body":{"amounts":[null,"0.1"],"b":true,"bin":"AAH/","d":"1.50","dt":"2019-03-01","i":-7,"s":"南海 \"<&>\"\n"},"header":{"classification":"internal","created_at":"2026-11-22T08:00:00Z","doc_type":"test.all_types","id":"0193b4c2-5a1e-7c3d-9f10-2b4e6a8c0d12","op":"upsert","schema_version":1,"sender":{"org":"nanhai.tax"},"test":false}}"#;
const VECTOR_HASH: &str = "sha256:9665f6499c97eea2da69be38ab654b9ca7b7c81f01488275f249d8d4709e305d";

#[test]
fn fixed_vector() {
    let r = registry();
    let d = decode_ok(VECTOR_DOC.as_bytes(), &r);
    assert_eq!(
        String::from_utf8(canonical::canonical_bytes(&d)).unwrap(),
        VECTOR_CANONICAL
    );
    assert_eq!(canonical::content_hash(&d), VECTOR_HASH);
}

#[test]
fn same_hash_whichever_encoding_carried_it() {
    let r = registry();
    let d = decode_ok(VECTOR_DOC.as_bytes(), &r);
    let via_xml = decode_ok(xml::encode(&d, &r).as_bytes(), &r);
    let via_pretty = decode_ok(json::encode_pretty(&d).as_bytes(), &r);
    assert_eq!(canonical::content_hash(&via_xml), VECTOR_HASH);
    assert_eq!(canonical::content_hash(&via_pretty), VECTOR_HASH);
}

#[test]
fn hash_covers_body_and_header_but_not_itself() {
    let r = registry();
    let d = decode_ok(VECTOR_DOC.as_bytes(), &r);
    let mut other = d.clone();
    other.header.content_hash = None;
    other.header.signature = None;
    assert_eq!(canonical::content_hash(&other), VECTOR_HASH);
    other
        .body
        .insert("s".into(), exhub_schemas::Value::Text("南海 \"<&>\"".into()));
    assert_ne!(canonical::content_hash(&other), VECTOR_HASH, "body change");
    let mut other = d.clone();
    other.header.test = true;
    assert_ne!(canonical::content_hash(&other), VECTOR_HASH, "header change");
}
