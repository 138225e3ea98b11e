//! The shape of a document body, read out of its JSON Schema: which exchange type each field
//! has. Decoders use it to type the strings of JSON (`"1200000.00"` is a decimal because the
//! schema says so) and the text of XML; the XML encoder uses it to leave type annotations out
//! where the schema already implies them; `exhub check` and the XSD export use it too.
//!
//! The mapping from JSON Schema to exchange types:
//!
//! | JSON Schema                                      | exchange type |
//! |--------------------------------------------------|---------------|
//! | `"type": "string"`                               | string        |
//! | `"type": "string", "format": "decimal"`          | decimal       |
//! | `"type": "string", "format": "date"`             | date          |
//! | `"type": "string", "format": "date-time"`        | timestamp     |
//! | `"type": "string", "contentEncoding": "base64"`  | binary        |
//! | `"type": "integer"`                              | integer       |
//! | `"type": "boolean"`                              | boolean       |
//! | `"type": "array"` with `items`                   | list          |
//! | `"type": "object"` with `properties`             | map           |
//!
//! `"null"` may be added to any `type` to allow null. `"type": "number"` is refused: the standard
//! has no floats. Local `$ref`s (`#/$defs/...`) are followed.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value as Json;

use crate::value::Kind;

/// The exchange type of one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shape {
    /// The schema does not say (e.g. a field it does not know): the encodings' own types apply.
    Any,
    /// A scalar of this kind (never `List`, `Map` or `Null`).
    Scalar(Kind),
    /// A list whose items have this shape.
    List(Box<Field>),
    /// A map with these fields.
    Map(Object),
}

/// A field: its shape and what the schema says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// The exchange type.
    pub shape: Shape,
    /// Whether null is allowed.
    pub nullable: bool,
    /// The allowed values, when the schema enumerates them (as their text).
    pub enumeration: Vec<String>,
    /// The schema's `description`, if any.
    pub description: Option<String>,
}

/// The fields of a map (and of a document body).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Object {
    /// Known fields by name.
    pub properties: BTreeMap<String, Field>,
    /// Names of the fields that must be present.
    pub required: BTreeSet<String>,
}

impl Shape {
    /// The kind a value at this place has when no annotation says otherwise, if the schema
    /// fixes one.
    pub fn kind(&self) -> Option<Kind> {
        match self {
            Shape::Any => None,
            Shape::Scalar(k) => Some(*k),
            Shape::List(_) => Some(Kind::List),
            Shape::Map(_) => Some(Kind::Map),
        }
    }

    /// The shape of a child: a map's field or a list's item (`Any` when unknown).
    pub fn child(&self, name: &str) -> &Shape {
        static ANY: Shape = Shape::Any;
        match self {
            Shape::Map(o) => o.properties.get(name).map_or(&ANY, |f| &f.shape),
            Shape::List(item) => &item.shape,
            _ => &ANY,
        }
    }
}

/// A JSON Schema the shape reader does not understand.
#[derive(Debug, thiserror::Error)]
#[error("{pointer}: {message}")]
pub struct ShapeError {
    /// Where in the schema (a JSON pointer).
    pub pointer: String,
    /// What is wrong.
    pub message: String,
}

/// Reads the shape of the object schema `root` (a document body schema).
pub fn read_object(root: &Json) -> Result<Object, ShapeError> {
    match read_field(root, root, "", 0)?.shape {
        Shape::Map(o) => Ok(o),
        _ => Err(ShapeError {
            pointer: "/".into(),
            message: "a body schema must be of \"type\": \"object\"".into(),
        }),
    }
}

fn err(pointer: &str, message: impl Into<String>) -> ShapeError {
    ShapeError {
        pointer: if pointer.is_empty() { "/".into() } else { pointer.into() },
        message: message.into(),
    }
}

fn read_field(root: &Json, schema: &Json, pointer: &str, refs: usize) -> Result<Field, ShapeError> {
    let Some(obj) = schema.as_object() else {
        return Ok(Field {
            shape: Shape::Any,
            nullable: true,
            enumeration: vec![],
            description: None,
        });
    };
    if let Some(r) = obj.get("$ref").and_then(Json::as_str) {
        if refs > 32 {
            return Err(err(pointer, "$ref chain too long (a cycle?)"));
        }
        let target = r
            .strip_prefix('#')
            .and_then(|p| root.pointer(p))
            .ok_or_else(|| err(pointer, format!("$ref {r:?} does not resolve to a local definition")))?;
        let mut field = read_field(root, target, pointer, refs + 1)?;
        if let Some(d) = obj.get("description").and_then(Json::as_str) {
            field.description = Some(d.to_owned());
        }
        return Ok(field);
    }
    let types: Vec<&str> = match obj.get("type") {
        None => vec![],
        Some(Json::String(t)) => vec![t.as_str()],
        Some(Json::Array(ts)) => ts.iter().filter_map(Json::as_str).collect(),
        Some(_) => return Err(err(pointer, "\"type\" must be a string or a list of strings")),
    };
    let nullable = types.is_empty() || types.contains(&"null");
    let non_null: Vec<&str> = types.iter().copied().filter(|t| *t != "null").collect();
    let format = obj.get("format").and_then(Json::as_str);
    let shape = match non_null.as_slice() {
        [] => Shape::Any,
        ["string"] => Shape::Scalar(match (format, obj.get("contentEncoding").and_then(Json::as_str)) {
            (_, Some("base64")) => Kind::Binary,
            (Some("decimal"), _) => Kind::Decimal,
            (Some("date"), _) => Kind::Date,
            (Some("date-time"), _) => Kind::Timestamp,
            _ => Kind::String,
        }),
        ["integer"] => Shape::Scalar(Kind::Integer),
        ["boolean"] => Shape::Scalar(Kind::Boolean),
        ["number"] => {
            return Err(err(
                pointer,
                "\"type\": \"number\" is not allowed (no floats): use \"type\": \"string\", \"format\": \"decimal\" or \"type\": \"integer\"",
            ));
        }
        ["array"] => {
            let items = obj.get("items").unwrap_or(&Json::Bool(true));
            Shape::List(Box::new(read_field(root, items, &format!("{pointer}/items"), refs)?))
        }
        ["object"] => {
            let mut o = Object::default();
            if let Some(props) = obj.get("properties").and_then(Json::as_object) {
                for (name, sub) in props {
                    let p = format!("{pointer}/properties/{name}");
                    crate::value::check_field_name(name).map_err(|m| err(&p, m))?;
                    o.properties.insert(name.clone(), read_field(root, sub, &p, refs)?);
                }
            }
            if let Some(req) = obj.get("required").and_then(Json::as_array) {
                o.required = req.iter().filter_map(Json::as_str).map(str::to_owned).collect();
            }
            Shape::Map(o)
        }
        other => {
            return Err(err(
                pointer,
                format!("unsupported \"type\" {other:?} (one type, optionally with \"null\")"),
            ));
        }
    };
    let enumeration = obj
        .get("enum")
        .and_then(Json::as_array)
        .map(|vs| {
            vs.iter()
                .filter_map(|v| match v {
                    Json::String(s) => Some(s.clone()),
                    Json::Number(n) => Some(n.to_string()),
                    Json::Bool(b) => Some(b.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Field {
        shape,
        nullable,
        enumeration,
        description: obj.get("description").and_then(Json::as_str).map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_types_refs_and_required() {
        let schema = json!({
            "type": "object",
            "required": ["id"],
            "$defs": { "uscc": { "type": "string", "pattern": "^[0-9A-Z]{18}$" } },
            "properties": {
                "id": { "$ref": "#/$defs/uscc" },
                "capital": { "type": ["string", "null"], "format": "decimal" },
                "born": { "type": "string", "format": "date" },
                "at": { "type": "string", "format": "date-time" },
                "photo": { "type": "string", "contentEncoding": "base64" },
                "n": { "type": "integer" },
                "tags": { "type": "array", "items": { "type": "string", "enum": ["a", "b"] } }
            }
        });
        let o = read_object(&schema).unwrap();
        assert_eq!(o.required, BTreeSet::from(["id".to_owned()]));
        let kind = |n: &str| o.properties[n].shape.kind();
        assert_eq!(kind("id"), Some(Kind::String));
        assert_eq!(kind("capital"), Some(Kind::Decimal));
        assert!(o.properties["capital"].nullable);
        assert!(!o.properties["born"].nullable);
        assert_eq!(kind("born"), Some(Kind::Date));
        assert_eq!(kind("at"), Some(Kind::Timestamp));
        assert_eq!(kind("photo"), Some(Kind::Binary));
        assert_eq!(kind("n"), Some(Kind::Integer));
        let Shape::List(item) = &o.properties["tags"].shape else {
            panic!()
        };
        assert_eq!(item.enumeration, vec!["a", "b"]);
    }

    #[test]
    fn refuses_floats_and_broken_refs() {
        let e = read_object(&json!({"type": "object", "properties": {"x": {"type": "number"}}})).unwrap_err();
        assert_eq!(e.pointer, "/properties/x");
        assert!(e.message.contains("no floats"));
        let e = read_object(&json!({"type": "object", "properties": {"x": {"$ref": "#/$defs/nope"}}})).unwrap_err();
        assert!(e.message.contains("does not resolve"));
    }
}
