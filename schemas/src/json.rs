//! The JSON encoding: plain JSON that any subscriber can read without exhub. Decimals, dates,
//! timestamps and binary travel as strings; the schema types them on the way in. Floats,
//! integers beyond 64 bits, duplicate keys and over-deep nesting are refused while parsing.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};

use crate::codec::Tree;
use crate::document::child_pointer;
use crate::error::DecodeError;
use crate::shape::Shape;
use crate::value::{Kind, Value, check_field_name, check_text};
use crate::{Document, Limits};

/// JSON as parsed, before the schema types its strings.
#[derive(Debug)]
pub(crate) enum Raw {
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
    List(Vec<Raw>),
    Map(BTreeMap<String, Raw>),
}

/// Parses `text` into a [`Raw`] tree within `limits`.
pub(crate) fn parse(text: &str, limits: &Limits) -> Result<Raw, DecodeError> {
    let too_deep = Cell::new(false);
    let mut de = serde_json::Deserializer::from_str(text);
    let seed = Seed {
        depth: 1,
        max: limits.max_depth,
        too_deep: &too_deep,
    };
    let result = seed.deserialize(&mut de).and_then(|raw| de.end().map(|()| raw));
    result.map_err(|e| {
        if too_deep.get() {
            DecodeError::TooDeep {
                limit: limits.max_depth,
            }
        } else {
            let full = e.to_string();
            // serde_json appends " at line L column C"; we report those separately.
            let message = full
                .rsplit_once(" at line ")
                .map_or(full.as_str(), |(m, _)| m)
                .to_owned();
            DecodeError::Json {
                line: e.line(),
                column: e.column(),
                message,
            }
        }
    })
}

#[derive(Clone, Copy)]
struct Seed<'a> {
    depth: usize,
    max: usize,
    too_deep: &'a Cell<bool>,
}

impl Seed<'_> {
    fn nested<E: serde::de::Error>(self) -> Result<Self, E> {
        if self.depth > self.max {
            self.too_deep.set(true);
            return Err(E::custom("nesting too deep"));
        }
        Ok(Seed {
            depth: self.depth + 1,
            ..self
        })
    }
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Raw;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Int(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Raw, E> {
        i64::try_from(v).map(Raw::Int).map_err(|_| {
            E::custom(format!(
                "integer {v} does not fit in 64 bits: send it as a decimal string"
            ))
        })
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Raw, E> {
        Err(E::custom(format!(
            "number {v} is not an integer: the exchange has no floats, send decimals as strings such as \"1200000.00\""
        )))
    }
    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let child = self.nested()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(child)? {
            items.push(item);
        }
        Ok(Raw::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let child = self.nested()?;
        let mut out = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(child)?;
            if out.contains_key(&key) {
                return Err(A::Error::custom(format!("duplicate key {key:?}")));
            }
            out.insert(key, value);
        }
        Ok(Raw::Map(out))
    }
}

impl Tree for Raw {
    fn typed(&self, shape: &Shape, pointer: &str) -> Result<Value, DecodeError> {
        let invalid = |message: String| DecodeError::Invalid {
            pointer: pointer.to_owned(),
            message,
        };
        Ok(match self {
            Raw::Null => Value::Null,
            Raw::Bool(b) => Value::Bool(*b),
            Raw::Int(i) => Value::Int(*i),
            Raw::Str(s) => {
                check_text(s).map_err(invalid)?;
                match shape.kind() {
                    Some(k @ (Kind::Decimal | Kind::Date | Kind::Timestamp | Kind::Binary)) => {
                        // Text outside the type's grammar stays text; validation reports it.
                        Value::parse_scalar(k, s).unwrap_or_else(|| Value::Text(s.clone()))
                    }
                    _ => Value::Text(s.clone()),
                }
            }
            Raw::List(items) => Value::List(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| item.typed(shape.child(""), &format!("{pointer}/{i}")))
                    .collect::<Result<_, _>>()?,
            ),
            Raw::Map(map) => {
                let mut out = BTreeMap::new();
                for (name, raw) in map {
                    let p = child_pointer(pointer, name);
                    check_field_name(name).map_err(|message| DecodeError::Invalid {
                        pointer: p.clone(),
                        message,
                    })?;
                    out.insert(name.clone(), raw.typed(shape.child(name), &p)?);
                }
                Value::Map(out)
            }
        })
    }
}

/// Splits a parsed document into its header and body trees.
pub(crate) fn split(raw: Raw) -> Result<(Raw, Raw), DecodeError> {
    let Raw::Map(mut root) = raw else {
        return Err(DecodeError::Invalid {
            pointer: "/".into(),
            message: "a document is an object with \"header\" and \"body\"".into(),
        });
    };
    let mut take = |name: &str| {
        root.remove(name).ok_or_else(|| DecodeError::Invalid {
            pointer: format!("/{name}"),
            message: "is required".into(),
        })
    };
    let header = take("header")?;
    let body = take("body")?;
    if let Some(extra) = root.keys().next() {
        return Err(DecodeError::Invalid {
            pointer: child_pointer("", extra),
            message: "is not part of a document (only header and body)".into(),
        });
    }
    Ok((header, body))
}

/// A value as `serde_json` sees it (decimals, dates, timestamps as strings, binary as base64).
pub fn to_json_value(value: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::Number((*i).into()),
        Value::List(items) => J::Array(items.iter().map(to_json_value).collect()),
        Value::Map(map) => map_to_json(map),
        scalar => J::String(scalar.scalar_text().unwrap_or_default()),
    }
}

/// A map (such as a document body) as a JSON object.
pub fn map_to_json(map: &BTreeMap<String, Value>) -> serde_json::Value {
    serde_json::Value::Object(map.iter().map(|(k, v)| (k.clone(), to_json_value(v))).collect())
}

/// A whole document as a JSON object `{header, body}`.
pub fn document_to_json(doc: &Document) -> serde_json::Value {
    // Inserted in name order, so the output is the same whether or not serde_json keeps order.
    let mut root = serde_json::Map::new();
    root.insert("body".into(), map_to_json(&doc.body));
    root.insert("header".into(), to_json_value(&doc.header.to_value()));
    serde_json::Value::Object(root)
}

/// Encodes a document as compact JSON (fields in name order).
pub fn encode(doc: &Document) -> Vec<u8> {
    // Serializing a serde_json::Value into memory cannot fail.
    serde_json::to_vec(&document_to_json(doc)).unwrap_or_default()
}

/// Encodes a document as indented JSON, for people.
pub fn encode_pretty(doc: &Document) -> String {
    serde_json::to_string_pretty(&document_to_json(doc)).unwrap_or_default()
}
