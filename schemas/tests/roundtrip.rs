//! JSON → XML → JSON gives back the identical document, for fixed documents of every type and
//! for random ones (proptest).

use std::collections::BTreeMap;

use exhub_schemas::value::is_xml_char;
use exhub_schemas::{
    Classification, Date, Decimal, Document, Header, Limits, Op, Sender, Signature, SourceInfo, Timestamp, Value,
    canonical, decode, json, xml,
};
use proptest::prelude::*;

use crate::common::{EXAMPLES, decode_ok, example, registry};

/// JSON → model → XML → model → JSON: models equal, JSON bytes equal, hashes equal.
fn assert_round_trip(doc: &Document) {
    let r = registry();
    let as_json = json::encode(doc);
    let from_json = decode_ok(&as_json, &r);
    assert_eq!(&from_json, doc, "JSON round trip changed the document");
    let as_xml = xml::encode(&from_json, &r);
    let from_xml = decode_ok(as_xml.as_bytes(), &r);
    assert_eq!(from_xml, from_json, "XML round trip changed the document:\n{as_xml}");
    assert_eq!(json::encode(&from_xml), as_json);
    assert_eq!(canonical::content_hash(&from_xml), canonical::content_hash(doc));
}

fn header(doc_type: &str) -> Header {
    Header {
        id: "0193b4c2-5a1e-7c3d-9f10-2b4e6a8c0d12".parse().unwrap(),
        doc_type: doc_type.into(),
        schema_version: 1,
        op: Op::Upsert,
        sender: Sender {
            org: "nanhai.tax".into(),
            system: None,
        },
        key: BTreeMap::new(),
        source: None,
        conversation_id: None,
        in_reply_to: None,
        created_at: Timestamp::parse("2026-11-22T08:00:00.123Z").unwrap(),
        classification: Classification::Internal,
        test: false,
        content_hash: None,
        signature: None,
    }
}

fn doc(fields: &[(&str, Value)]) -> Document {
    Document {
        header: header("test.all_types"),
        body: fields.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect(),
    }
}

#[test]
fn every_type_in_a_fixed_document() {
    let d = doc(&[
        ("s", Value::Text("南海区 <税务> & \"局\" 'x'\r\n\ttab  ".into())),
        ("i", Value::Int(i64::MIN)),
        ("d", Value::Decimal(Decimal::parse("-1200000.0050").unwrap())),
        ("b", Value::Bool(false)),
        ("dt", Value::Date(Date::parse("2024-02-29").unwrap())),
        (
            "ts",
            Value::Timestamp(Timestamp::parse("2026-11-22T08:00:00.123456789+08:00").unwrap()),
        ),
        ("bin", Value::Binary(vec![0, 1, 2, 0xfe, 0xff])),
        (
            "amounts",
            Value::List(vec![Value::Decimal(Decimal::parse("1.50").unwrap()), Value::Null]),
        ),
        (
            "nested",
            Value::Map(BTreeMap::from([("tags".to_owned(), Value::List(vec![]))])),
        ),
    ]);
    assert_round_trip(&d);
}

#[test]
fn null_empty_and_absent_stay_distinct() {
    for d in [
        doc(&[("s", Value::Null)]),
        doc(&[("s", Value::Text(String::new()))]),
        doc(&[]),
        doc(&[("amounts", Value::List(vec![]))]),
        doc(&[("amounts", Value::Null)]),
        doc(&[("nested", Value::Map(BTreeMap::new()))]),
        doc(&[("s", Value::Text("   ".into()))]),
    ] {
        assert_round_trip(&d);
    }
    let r = registry();
    let null = xml::encode(&doc(&[("s", Value::Null)]), &r);
    assert!(null.contains("<s xsi:nil=\"true\"/>"), "{null}");
    let empty = xml::encode(&doc(&[("s", Value::Text(String::new()))]), &r);
    assert!(empty.contains("<s></s>"), "{empty}");
    let absent = xml::encode(&doc(&[]), &r);
    assert!(!absent.contains("<s>") && !absent.contains("<s "), "{absent}");
}

#[test]
fn wrong_and_unknown_types_are_annotated_in_xml() {
    let d = doc(&[
        ("i", Value::Text("not a number".into())),
        ("dt", Value::Int(20240229)),
        ("extra_date", Value::Date(Date::parse("2019-03-01").unwrap())),
        (
            "extra_map",
            Value::Map(BTreeMap::from([("x".to_owned(), Value::Bool(true))])),
        ),
        ("extra_empty", Value::Map(BTreeMap::new())),
    ]);
    let r = registry();
    let x = xml::encode(&d, &r);
    assert!(x.contains("<i t=\"string\">not a number</i>"), "{x}");
    assert!(x.contains("<dt t=\"integer\">20240229</dt>"), "{x}");
    assert!(x.contains("<extra_date t=\"date\">2019-03-01</extra_date>"), "{x}");
    assert!(x.contains("<extra_map>"), "{x}");
    assert!(x.contains("<x t=\"boolean\">true</x>"), "{x}");
    assert!(x.contains("<extra_empty t=\"map\"/>"), "{x}");
    // Conforming values carry no annotation.
    let plain = xml::encode(&doc(&[("dt", Value::Date(Date::parse("2019-03-01").unwrap()))]), &r);
    assert!(plain.contains("<dt>2019-03-01</dt>"), "{plain}");
    let back = decode_ok(x.as_bytes(), &r);
    assert_eq!(back, d);
}

#[test]
fn full_header_round_trips() {
    let mut d = doc(&[("s", Value::Text("x".into()))]);
    d.header.key = BTreeMap::from([("s".to_owned(), Value::Text("x".into()))]);
    d.header.source = Some(SourceInfo {
        kind: "mysql".into(),
        db: Some("ctais".into()),
        table: Some("nsr_djxx".into()),
        position: Some("mysql-bin.000003:81233".into()),
        committed_at: Some(Timestamp::parse("2026-11-22T08:00:00Z").unwrap()),
        tx: Some("0-1-4711".into()),
        seq: Some(3),
    });
    d.header.conversation_id = Some(uuid::Uuid::nil());
    d.header.in_reply_to = Some(uuid::Uuid::max());
    d.header.classification = Classification::Confidential;
    d.header.test = true;
    d.header.op = Op::Delete;
    d.header.sender.system = Some("ctais".into());
    d.header.content_hash = Some(canonical::content_hash(&d));
    d.header.signature = Some(Signature {
        alg: "ed25519".into(),
        key_id: "nanhai.tax#2026".into(),
        value: "c2ln".into(),
    });
    assert_round_trip(&d);
}

#[test]
fn example_documents_convert_both_ways() {
    let r = registry();
    for name in EXAMPLES {
        let d = decode_ok(&example(name), &r);
        assert!(r.validate(&d).is_empty(), "{name}: {:?}", r.validate(&d));
        assert_round_trip(&d);
    }
}

#[test]
fn foreign_xml_conventions_are_read() {
    // CRLF line ends, CDATA, character references, comments, attribute order, a BOM.
    let r = registry();
    let x = "\u{FEFF}<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<!-- from a legacy tool -->\r\n<document xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\r\n<header><id>0193b4c2-5a1e-7c3d-9f10-2b4e6a8c0d12</id><doc_type>test.all_types</doc_type><schema_version>1</schema_version><op>upsert</op><sender><org>nanhai.tax</org></sender><created_at>2026-11-22T08:00:00.123Z</created_at><classification>internal</classification><test>false</test></header>\r\n<body><s>a\r\nb<![CDATA[<&>]]>&#x5357;&#13;</s><d>1.0</d></body></document>";
    let d = decode_ok(x.as_bytes(), &r);
    assert_eq!(d.body["s"], Value::Text("a\nb<&>南\r".into()));
    assert_eq!(d.body["d"], Value::Decimal(Decimal::parse("1.0").unwrap()));
}

// ---- random documents ----

fn xml_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => any::<char>().prop_filter("XML 1.0 char", |c| is_xml_char(*c)),
            1 => prop::sample::select(vec!['<', '>', '&', '"', '\'', '\r', '\n', '\t', ' ', '南', '海', '😀', ']']),
        ],
        0..16,
    )
    .prop_map(|cs| cs.into_iter().collect())
}

fn decimal() -> impl Strategy<Value = Decimal> {
    (any::<i64>(), prop::option::of("[0-9]{1,6}")).prop_map(|(i, frac)| {
        let text = match frac {
            Some(f) => format!("{i}.{f}"),
            None => i.to_string(),
        };
        Decimal::parse(&text).unwrap()
    })
}

fn date_text() -> impl Strategy<Value = String> {
    (1u32..=9999, 1u32..=12, 1u32..=28).prop_map(|(y, m, d)| format!("{y:04}-{m:02}-{d:02}"))
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    (
        date_text(),
        0u32..24,
        0u32..60,
        0u32..60,
        prop::option::of("[0-9]{1,9}"),
        prop::option::of((any::<bool>(), 0u32..24, 0u32..60)),
    )
        .prop_map(|(d, h, mi, s, frac, zone)| {
            let frac = frac.map(|f| format!(".{f}")).unwrap_or_default();
            let zone = match zone {
                None => "Z".to_owned(),
                Some((neg, zh, zm)) => format!("{}{zh:02}:{zm:02}", if neg { '-' } else { '+' }),
            };
            Timestamp::parse(&format!("{d}T{h:02}:{mi:02}:{s:02}{frac}{zone}")).unwrap()
        })
}

fn name() -> impl Strategy<Value = String> {
    "[a-z_][a-z0-9_]{0,8}"
}

/// Values whose JSON form needs no schema to be read back (for fields the schema does not know).
fn json_native() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        xml_text().prop_map(Value::Text),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::List),
            prop::collection::btree_map(name(), inner, 0..4).prop_map(Value::Map),
        ]
    })
}

/// A value for a typed field: usually of its type, sometimes null, sometimes of a JSON-native
/// wrong type (which must survive too).
fn field(typed: BoxedStrategy<Value>) -> impl Strategy<Value = Option<Value>> {
    prop::option::of(prop_oneof![
        6 => typed,
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => any::<i64>().prop_map(Value::Int),
    ])
}

fn random_doc() -> impl Strategy<Value = Document> {
    let typed = (
        field(xml_text().prop_map(Value::Text).boxed()),
        field(any::<i64>().prop_map(Value::Int).boxed()),
        field(decimal().prop_map(Value::Decimal).boxed()),
        field(any::<bool>().prop_map(Value::Bool).boxed()),
        field(date_text().prop_map(|d| Value::Date(Date::parse(&d).unwrap())).boxed()),
        field(timestamp().prop_map(Value::Timestamp).boxed()),
        field(
            prop::collection::vec(any::<u8>(), 0..24)
                .prop_map(Value::Binary)
                .boxed(),
        ),
        field(
            prop::collection::vec(prop_oneof![decimal().prop_map(Value::Decimal), Just(Value::Null)], 0..4)
                .prop_map(Value::List)
                .boxed(),
        ),
        field(
            (prop::option::of(timestamp()), prop::collection::vec(xml_text(), 0..3))
                .prop_map(|(when, tags)| {
                    let mut m = BTreeMap::from([(
                        "tags".to_owned(),
                        Value::List(tags.into_iter().map(Value::Text).collect()),
                    )]);
                    if let Some(w) = when {
                        m.insert("when".into(), Value::Timestamp(w));
                    }
                    Value::Map(m)
                })
                .boxed(),
        ),
    );
    let extra = prop::collection::btree_map("x_[a-z0-9_]{1,6}", json_native(), 0..3);
    let head = (
        any::<u128>(),
        prop::sample::select(Op::ALL.to_vec()),
        prop::option::of(xml_text()),
        timestamp(),
        any::<bool>(),
        prop::option::of(any::<u128>()),
    );
    (typed, extra, head).prop_map(|(t, extra, (id, op, system, created, test, conv))| {
        let mut h = header("test.all_types");
        h.id = uuid::Uuid::from_u128(id);
        h.op = op;
        h.sender.system = system;
        h.created_at = created;
        h.test = test;
        h.conversation_id = conv.map(uuid::Uuid::from_u128);
        let names = ["s", "i", "d", "b", "dt", "ts", "bin", "amounts", "nested"];
        let values = [t.0, t.1, t.2, t.3, t.4, t.5, t.6, t.7, t.8];
        let mut body: BTreeMap<String, Value> = names
            .iter()
            .zip(values)
            .filter_map(|(n, v)| v.map(|v| ((*n).to_owned(), v)))
            .collect();
        body.extend(extra);
        if let Some(v @ (Value::Text(_) | Value::Int(_) | Value::Decimal(_))) = body.get("s").or(body.get("i")) {
            let k = if body.contains_key("s") { "s" } else { "i" };
            h.key.insert(k.to_owned(), v.clone());
        }
        Document { header: h, body }
    })
}

/// Any value at all, for fields the schema does not know: XML carries it through annotations.
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        decimal().prop_map(Value::Decimal),
        xml_text().prop_map(Value::Text),
        date_text().prop_map(|d| Value::Date(Date::parse(&d).unwrap())),
        timestamp().prop_map(Value::Timestamp),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(Value::Binary),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::List),
            prop::collection::btree_map(name(), inner, 0..4).prop_map(Value::Map),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_documents_round_trip_json_xml_json(d in random_doc()) {
        assert_round_trip(&d);
    }

    /// The canonical form, written straight from the document, is RFC 8785 of its JSON
    /// encoding without `content_hash` and `signature`.
    #[test]
    fn canonical_bytes_are_jcs_of_the_json_encoding(d in random_doc()) {
        let mut json = exhub_schemas::json::document_to_json(&d);
        if let Some(h) = json.get_mut("header").and_then(serde_json::Value::as_object_mut) {
            h.remove("content_hash");
            h.remove("signature");
        }
        let mut want = Vec::new();
        exhub_schemas::canonical::write_jcs(&json, &mut want);
        prop_assert_eq!(
            String::from_utf8(exhub_schemas::canonical::canonical_bytes(&d)).unwrap(),
            String::from_utf8(want).unwrap()
        );
    }

    #[test]
    fn any_value_survives_xml(values in prop::collection::btree_map("x_[a-z0-9_]{1,6}", any_value(), 0..4)) {
        let r = registry();
        let d = Document { header: header("test.all_types"), body: values };
        let back = decode_ok(xml::encode(&d, &r).as_bytes(), &r);
        prop_assert_eq!(back, d);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let r = registry();
        let _ = decode(&bytes, &r, &Limits::default());
        let mut json_like = b"{\"header\":".to_vec();
        json_like.extend_from_slice(&bytes);
        let _ = decode(&json_like, &r, &Limits::default());
        let mut xml_like = b"<document><header>".to_vec();
        xml_like.extend_from_slice(&bytes);
        let _ = decode(&xml_like, &r, &Limits::default());
    }
}
