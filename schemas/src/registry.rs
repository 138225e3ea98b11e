//! The schema registry: every document type and version the exchange knows, its JSON Schema,
//! the shape read from it, and the compiled validators. The standard's own schemas are built
//! in (the `*.json` files beside `src/`); a deployment may add its own from a directory.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde_json::Value as Json;

use crate::document::{Document, Op, child_pointer, header_shape};
use crate::json::map_to_json;
use crate::shape::{Object, Shape, read_object};
use crate::value::{Kind, Value, is_decimal_text};

/// The built-in schemas: (file name, text).
const BUILTIN: &[(&str, &str)] = &[
    ("tax.registration.v1.json", include_str!("../tax.registration.v1.json")),
    (
        "commerce.business_license.v1.json",
        include_str!("../commerce.business_license.v1.json"),
    ),
    (
        "social_security.enrollment.v1.json",
        include_str!("../social_security.enrollment.v1.json"),
    ),
    ("approval.request.v1.json", include_str!("../approval.request.v1.json")),
    (
        "approval.decision.v1.json",
        include_str!("../approval.decision.v1.json"),
    ),
    ("approval.outcome.v1.json", include_str!("../approval.outcome.v1.json")),
    (
        "supervision.alert.v1.json",
        include_str!("../supervision.alert.v1.json"),
    ),
];

/// A schema file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("schema {origin}: {message}")]
pub struct SchemaError {
    /// Which file (or `builtin:<name>`).
    pub origin: String,
    /// What is wrong.
    pub message: String,
}

/// One violation of a document against its schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// JSON Pointer into the document, e.g. `/body/registered_at`.
    pub pointer: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.pointer, self.message)
    }
}

/// A document type at one version.
pub struct Schema {
    doc_type: String,
    version: u32,
    origin: String,
    json: Json,
    body: Shape,
    header: Shape,
    validator: jsonschema::Validator,
    /// For `delete`: the same schema without `required`, since a delete may carry only the key.
    delete_validator: jsonschema::Validator,
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schema({} v{} from {})", self.doc_type, self.version, self.origin)
    }
}

impl Schema {
    /// The document type, e.g. `tax.registration`.
    pub fn doc_type(&self) -> &str {
        &self.doc_type
    }
    /// The version.
    pub fn version(&self) -> u32 {
        self.version
    }
    /// Where it was loaded from.
    pub fn origin(&self) -> &str {
        &self.origin
    }
    /// The JSON Schema itself.
    pub fn json(&self) -> &Json {
        &self.json
    }
    /// The body's fields.
    pub fn body(&self) -> &Object {
        match &self.body {
            Shape::Map(o) => o,
            // read_object only ever returns maps; keep an empty answer rather than panic.
            _ => empty_object(),
        }
    }
    /// The body's shape (a map).
    pub fn body_shape(&self) -> &Shape {
        &self.body
    }
    /// The header's shape with the key typed by the body.
    pub(crate) fn header_shape(&self) -> &Shape {
        &self.header
    }
    /// The schema's `title`, if any.
    pub fn title(&self) -> Option<&str> {
        self.json.get("title").and_then(Json::as_str)
    }
}

fn empty_object() -> &'static Object {
    static EMPTY: std::sync::OnceLock<Object> = std::sync::OnceLock::new();
    EMPTY.get_or_init(Object::default)
}

/// All known document types and versions.
#[derive(Debug, Default)]
pub struct Registry {
    schemas: BTreeMap<(String, u32), Schema>,
}

fn compile(schema: &Json) -> Result<jsonschema::Validator, String> {
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .with_format("decimal", is_decimal_text)
        .with_format("uscc", crate::formats::is_uscc)
        .with_format("cn-resident-id", crate::formats::is_cn_resident_id)
        .build(schema)
        .map_err(|e| e.to_string())
}

fn strip_required(schema: &mut Json) {
    match schema {
        Json::Object(map) => {
            map.remove("required");
            map.values_mut().for_each(strip_required);
        }
        Json::Array(items) => items.iter_mut().for_each(strip_required),
        _ => {}
    }
}

/// Splits `tax.registration.v1.json` into (`tax.registration`, 1).
fn parse_file_name(name: &str) -> Option<(String, u32)> {
    let stem = name.strip_suffix(".json")?;
    let (doc_type, version) = stem.rsplit_once(".v")?;
    let version: u32 = version.parse().ok().filter(|v| *v >= 1)?;
    valid_doc_type(doc_type).then(|| (doc_type.to_owned(), version))
}

/// A doc type is dot-separated lowercase segments: `[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+`.
pub fn valid_doc_type(doc_type: &str) -> bool {
    let segments: Vec<&str> = doc_type.split('.').collect();
    segments.len() >= 2
        && segments.iter().all(|s| {
            let mut c = s.chars();
            c.next().is_some_and(|c| c.is_ascii_lowercase())
                && c.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
}

impl Registry {
    /// A registry with the standard's built-in schemas.
    pub fn builtin() -> Result<Registry, SchemaError> {
        let mut r = Registry::default();
        for (name, text) in BUILTIN {
            r.add(name, &format!("builtin:{name}"), text)?;
        }
        Ok(r)
    }

    /// Adds one schema; `file_name` must be `<doc_type>.v<N>.json`.
    pub fn add(&mut self, file_name: &str, origin: &str, text: &str) -> Result<(), SchemaError> {
        let err = |message: String| SchemaError {
            origin: origin.to_owned(),
            message,
        };
        let (doc_type, version) = parse_file_name(file_name).ok_or_else(|| {
            err(format!(
                "file name {file_name:?} is not <doc_type>.v<N>.json (doc type like tax.registration)"
            ))
        })?;
        let json: Json = serde_json::from_str(text).map_err(|e| err(format!("not JSON: {e}")))?;
        let expected_id = format!("urn:exhub:schema:{doc_type}:v{version}");
        match json.get("$id").and_then(Json::as_str) {
            Some(id) if id == expected_id => {}
            other => return Err(err(format!("\"$id\" must be {expected_id:?}, found {other:?}"))),
        }
        let object = read_object(&json).map_err(|e| err(e.to_string()))?;
        let validator = compile(&json).map_err(|e| err(format!("invalid JSON Schema: {e}")))?;
        let mut relaxed = json.clone();
        strip_required(&mut relaxed);
        let delete_validator = compile(&relaxed).map_err(|e| err(format!("invalid JSON Schema: {e}")))?;
        let key = (doc_type.clone(), version);
        if let Some(existing) = self.schemas.get(&key) {
            return Err(err(format!(
                "{doc_type} v{version} is already defined by {}",
                existing.origin
            )));
        }
        let header = header_shape(Some(&object));
        self.schemas.insert(
            key,
            Schema {
                doc_type,
                version,
                origin: origin.to_owned(),
                json,
                body: Shape::Map(object),
                header,
                validator,
                delete_validator,
            },
        );
        Ok(())
    }

    /// Adds every `*.json` file of `dir`; returns how many.
    pub fn load_dir(&mut self, dir: &Path) -> Result<usize, SchemaError> {
        let err = |message: String| SchemaError {
            origin: dir.display().to_string(),
            message,
        };
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| err(format!("cannot read directory: {e}")))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        for path in &paths {
            let origin = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| SchemaError {
                origin: origin.clone(),
                message: format!("cannot read: {e}"),
            })?;
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            self.add(name, &origin, &text)?;
        }
        Ok(paths.len())
    }

    /// The schema of `doc_type` at `version`.
    pub fn get(&self, doc_type: &str, version: u32) -> Option<&Schema> {
        self.schemas.get(&(doc_type.to_owned(), version))
    }

    /// The newest version of `doc_type`.
    pub fn latest(&self, doc_type: &str) -> Option<&Schema> {
        self.schemas
            .range((doc_type.to_owned(), 0)..=(doc_type.to_owned(), u32::MAX))
            .next_back()
            .map(|(_, s)| s)
    }

    /// Every schema, by doc type then version.
    pub fn iter(&self) -> impl Iterator<Item = &Schema> {
        self.schemas.values()
    }

    /// `doc_type vN` for every schema.
    pub fn list(&self) -> Vec<String> {
        self.iter().map(|s| format!("{} v{}", s.doc_type, s.version)).collect()
    }

    /// Every violation of `doc` against its schema (empty when valid), each with a JSON Pointer.
    /// A document whose doc type is unknown gets one violation saying so.
    pub fn validate(&self, doc: &Document) -> Vec<Violation> {
        let h = &doc.header;
        let Some(schema) = self.get(&h.doc_type, h.schema_version) else {
            return vec![Violation {
                pointer: "/header/doc_type".into(),
                message: format!(
                    "unknown doc type {:?} version {} (known: {})",
                    h.doc_type,
                    h.schema_version,
                    self.list().join(", ")
                ),
            }];
        };
        let body = map_to_json(&doc.body);
        let validator = if h.op == Op::Delete {
            &schema.delete_validator
        } else {
            &schema.validator
        };
        // `is_valid` stops at nothing and builds no errors: the common case is cheap.
        let mut out: Vec<Violation> = if validator.is_valid(&body) {
            Vec::new()
        } else {
            validator
                .iter_errors(&body)
                .map(|e| Violation {
                    pointer: format!("/body{}", e.instance_path()),
                    message: echo_cut(&e),
                })
                .collect()
        };
        // Types the JSON view cannot show (e.g. an XML value annotated as text where the schema
        // wants a date) and binary fields, which JSON Schema only annotates.
        let mut typing = Vec::new();
        for (name, value) in &doc.body {
            check_kinds(
                value,
                schema.body_shape().child(name),
                &child_pointer("/body", name),
                &mut typing,
            );
        }
        for (name, value) in &h.key {
            let pointer = child_pointer("/header/key", name);
            match schema.body().properties.get(name) {
                None => typing.push(Violation {
                    pointer,
                    message: format!("{name:?} is not a field of {} v{}", h.doc_type, h.schema_version),
                }),
                Some(field) => {
                    check_kinds(value, &field.shape, &pointer, &mut typing);
                    if let Some(in_body) = doc.body.get(name).filter(|v| *v != value) {
                        typing.push(Violation {
                            pointer,
                            message: format!("key {} differs from body value {}", show(value), show(in_body)),
                        });
                    }
                }
            }
        }
        for v in typing {
            if !out.iter().any(|o| o.pointer == v.pointer) {
                out.push(v);
            }
        }
        out
    }
}

fn show(v: &Value) -> String {
    v.scalar_text()
        .map_or_else(|| v.kind().to_string(), |t| format!("{t:?}"))
}

fn check_kinds(value: &Value, shape: &Shape, pointer: &str, out: &mut Vec<Violation>) {
    match (shape, value) {
        (_, Value::Null) | (Shape::Any, _) => {}
        (Shape::List(item), Value::List(items)) => {
            for (i, v) in items.iter().enumerate() {
                check_kinds(v, &item.shape, &format!("{pointer}/{i}"), out);
            }
        }
        (Shape::Map(_), Value::Map(map)) => {
            for (name, v) in map {
                check_kinds(v, shape.child(name), &child_pointer(pointer, name), out);
            }
        }
        (shape, value) => {
            if let Some(expected) = shape.kind().filter(|k| *k != value.kind()) {
                let hint = match expected {
                    Kind::Binary => " (base64, standard alphabet, padded)",
                    Kind::Decimal => " (like 1200000.00)",
                    Kind::Date => " (YYYY-MM-DD)",
                    Kind::Timestamp => " (RFC 3339 with offset)",
                    _ => "",
                };
                out.push(Violation {
                    pointer: pointer.to_owned(),
                    message: format!("expected a {expected}{hint}, got {}", show(value)),
                });
            }
        }
    }
}

/// How long a value from the document may be where a violation message echoes it.
const ECHO_MAX: usize = 64;

/// A validator's message with the value it echoes cut to [`ECHO_MAX`] bytes: a 12,000-character
/// name must not make a 12,000-character refusal.
fn echo_cut(e: &jsonschema::ValidationError<'_>) -> String {
    let message = e.to_string();
    let shown = e.instance().to_string();
    if shown.len() <= ECHO_MAX {
        return message;
    }
    let cut = message.replace(&shown, &crate::excerpt(&shown, ECHO_MAX));
    crate::excerpt(&cut, 4 * ECHO_MAX).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_schemas_load() {
        let r = Registry::builtin().unwrap();
        assert_eq!(r.list().len(), BUILTIN.len());
        assert!(r.get("tax.registration", 1).is_some());
        assert_eq!(r.latest("tax.registration").map(Schema::version), Some(1));
        assert!(r.get("tax.registration", 2).is_none());
    }

    #[test]
    fn file_names_and_ids_must_agree() {
        let mut r = Registry::default();
        let e = r.add("x.json", "t", "{}").unwrap_err();
        assert!(e.message.contains("<doc_type>.v<N>.json"), "{e}");
        let e = r
            .add(
                "a.b.v1.json",
                "t",
                r#"{"$id": "urn:exhub:schema:a.b:v2", "type": "object"}"#,
            )
            .unwrap_err();
        assert!(e.message.contains("urn:exhub:schema:a.b:v1"), "{e}");
        r.add(
            "a.b.v1.json",
            "t",
            r#"{"$id": "urn:exhub:schema:a.b:v1", "type": "object"}"#,
        )
        .unwrap();
        let e = r
            .add(
                "a.b.v1.json",
                "u",
                r#"{"$id": "urn:exhub:schema:a.b:v1", "type": "object"}"#,
            )
            .unwrap_err();
        assert!(e.message.contains("already defined by t"), "{e}");
    }
}
