//! The canonical form of a document and its `content_hash`.
//!
//! **Canonical form**: the document's JSON encoding with `header.content_hash` and
//! `header.signature` removed, serialized per RFC 8785 (JSON Canonicalization Scheme): object
//! members sorted by the UTF-16 code units of their names, no insignificant whitespace, strings
//! escaped minimally (`"` `\` and U+0000–U+001F only, the latter as `\b \t \n \f \r` or
//! lowercase `\u00xx`), everything else as literal UTF-8. The exchange has no floats, so JCS's
//! number rules reduce to plain integers.
//!
//! **content_hash**: `sha256:` followed by the lowercase hex SHA-256 of the canonical form.
//! Both encodings decode to the same model, so the hash is the same whichever carried it; it is
//! what signatures sign and what the archive stores beside each document.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::{Document, Value};

/// The canonical bytes of `doc` (see the module docs).
///
/// Written straight from the document's values, without building its JSON tree first (the
/// hub hashes every document it admits: the tree cost a tenth of its CPU). The same bytes as
/// [`write_jcs`] of the JSON encoding without the two header fields; a property test holds
/// the two together.
pub fn canonical_bytes(doc: &Document) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(b"{\"body\":");
    write_map(&doc.body, &[], &mut out);
    out.extend_from_slice(b",\"header\":");
    match doc.header.to_value() {
        Value::Map(header) => write_map(&header, &["content_hash", "signature"], &mut out),
        other => write_value(&other, &mut out),
    }
    out.push(b'}');
    out
}

/// Writes a value of the document model in RFC 8785 form, as its JSON encoding would be.
fn write_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Value::List(items) => write_items(items, out, write_value),
        Value::Map(map) => write_map(map, &[], out),
        Value::Text(s) => write_string(s, out),
        Value::Decimal(d) => write_string(d.as_str(), out),
        Value::Date(d) => write_string(d.as_str(), out),
        Value::Timestamp(t) => write_string(t.as_str(), out),
        binary => write_string(&binary.scalar_text().unwrap_or_default(), out),
    }
}

/// Writes a map without the members named in `skip`, its members in RFC 8785 order: by the
/// UTF-16 code units of their names. A `BTreeMap` holds them by UTF-8 bytes, which is the same
/// order unless a name has a character above U+D7FF; only then are they sorted again.
fn write_map(map: &BTreeMap<String, Value>, skip: &[&str], out: &mut Vec<u8>) {
    let members = map.iter().filter(|(k, _)| !skip.contains(&k.as_str())).collect();
    let utf8_order_is_utf16_order = map.keys().all(|k| k.chars().all(|c| c <= '\u{d7ff}'));
    write_members(members, utf8_order_is_utf16_order, out, write_value);
}

/// `{"name":value,…}`, sorted by the UTF-16 code units of the names unless `sorted` says they
/// already are; each value written by `value`.
fn write_members<V>(mut members: Vec<(&String, &V)>, sorted: bool, out: &mut Vec<u8>, value: fn(&V, &mut Vec<u8>)) {
    if !sorted {
        members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
    }
    out.push(b'{');
    for (i, (k, v)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(k, out);
        out.push(b':');
        value(v, out);
    }
    out.push(b'}');
}

/// `[value,…]`, each written by `value`.
fn write_items<V>(items: &[V], out: &mut Vec<u8>, value: fn(&V, &mut Vec<u8>)) {
    out.push(b'[');
    for (i, v) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        value(v, out);
    }
    out.push(b']');
}

/// `sha256:<hex>` of the canonical form.
pub fn content_hash(doc: &Document) -> String {
    let digest = Sha256::digest(canonical_bytes(doc));
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

/// Writes `value` in RFC 8785 form. Floats cannot occur in exchange documents; should one be
/// given here it is written as serde_json writes it.
pub fn write_jcs(value: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value as J;
    match value {
        J::Object(map) => write_members(map.iter().collect(), false, out, write_jcs),
        J::Array(items) => write_items(items, out, write_jcs),
        J::String(s) => write_string(s, out),
        // Writing to a Vec cannot fail.
        scalar => {
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

/// serde_json escapes exactly what RFC 8785 requires (and in lowercase hex).
fn write_string(s: &str, out: &mut Vec<u8>) {
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jcs(v: serde_json::Value) -> String {
        let mut out = Vec::new();
        write_jcs(&v, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// RFC 8785 §3.2.3: sorting by UTF-16 code units, not by code points or UTF-8 bytes.
    #[test]
    fn rfc8785_sorting_vector() {
        let input: serde_json::Value = serde_json::from_str(
            r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#,
        )
        .unwrap();
        assert_eq!(
            jcs(input),
            "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\"ö\":\"Latin Small Letter O With Diaeresis\",\"€\":\"Euro Sign\",\"😀\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}"
        );
    }

    /// The typed writer sorts the RFC's vector the same way (its map holds UTF-8 order).
    #[test]
    fn typed_maps_sort_by_utf16_too() {
        let names = ["\u{20ac}", "\r", "\u{fb33}", "1", "\u{1f600}", "\u{80}", "\u{f6}"];
        let map: BTreeMap<String, Value> = names
            .iter()
            .map(|n| (n.to_string(), Value::Text(n.to_string())))
            .collect();
        let mut typed = Vec::new();
        write_map(&map, &[], &mut typed);
        let json = serde_json::Value::Object(names.iter().map(|n| (n.to_string(), serde_json::json!(n))).collect());
        assert_eq!(String::from_utf8(typed).unwrap(), jcs(json));
    }

    /// RFC 8785 §3.2.2.2: string escaping.
    #[test]
    fn rfc8785_string_vector() {
        let v = serde_json::json!({"s": "\u{1f}\u{1}\u{8}\t\n\u{c}\r\"\\/\u{7f}€"});
        assert_eq!(jcs(v), "{\"s\":\"\\u001f\\u0001\\b\\t\\n\\f\\r\\\"\\\\/\u{7f}€\"}");
    }
}
