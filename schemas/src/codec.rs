//! The one entry point for reading documents: size check, UTF-8 check, encoding detection, then
//! the shared assembly that types the header and body by their schema. JSON and XML differ only
//! in how they parse into a tree ([`Tree`]).

use std::collections::BTreeMap;

use crate::document::{Document, Header, Limits, untyped_header_shape};
use crate::error::DecodeError;
use crate::registry::Registry;
use crate::shape::Shape;
use crate::value::Value;
use crate::{json, xml};

/// A parsed but untyped tree (JSON or XML) that can be typed by a [`Shape`].
pub(crate) trait Tree {
    /// Types this tree by `shape`; `pointer` is where it is, for errors.
    fn typed(&self, shape: &Shape, pointer: &str) -> Result<Value, DecodeError>;
}

/// The two encodings of a document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `application/json`
    Json,
    /// `application/xml`
    Xml,
}

impl Encoding {
    /// Detects the encoding from the first non-whitespace character: `{` is JSON, `<` is XML.
    pub fn detect(bytes: &[u8]) -> Option<Encoding> {
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF".as_slice()).unwrap_or(bytes);
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => Some(Encoding::Json),
            Some(b'<') => Some(Encoding::Xml),
            _ => None,
        }
    }

    /// The MIME type, as used in AMQP `content_type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => "application/json",
            Encoding::Xml => "application/xml",
        }
    }

    /// Parses `json` or `xml`.
    pub fn parse(name: &str) -> Option<Encoding> {
        match name {
            "json" => Some(Encoding::Json),
            "xml" => Some(Encoding::Xml),
            _ => None,
        }
    }
}

/// Decodes a document in either encoding, typed by its schema in `registry`.
///
/// Never panics on input: every problem is a [`DecodeError`].
pub fn decode(bytes: &[u8], registry: &Registry, limits: &Limits) -> Result<Document, DecodeError> {
    if bytes.len() > limits.max_bytes {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        DecodeError::Encoding(format!(
            "document is not UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    match Encoding::detect(text.as_bytes()) {
        Some(Encoding::Json) => {
            let (header, body) = json::split(json::parse(text, limits)?)?;
            assemble(&header, &body, registry)
        }
        Some(Encoding::Xml) => {
            let (header, body) = xml::split(xml::parse(text, limits)?)?;
            assemble(&header, &body, registry)
        }
        None => Err(DecodeError::Encoding(
            "neither JSON nor XML: a document starts with '{' (JSON) or '<' (XML)".into(),
        )),
    }
}

fn as_map(value: Value, pointer: &str) -> Result<BTreeMap<String, Value>, DecodeError> {
    match value {
        Value::Map(m) => Ok(m),
        other => Err(DecodeError::Invalid {
            pointer: pointer.into(),
            message: format!("must be an object, not a {}", other.kind()),
        }),
    }
}

fn assemble<T: Tree>(header: &T, body: &T, registry: &Registry) -> Result<Document, DecodeError> {
    // First pass: the doc type and version, to find the schema that types everything else.
    let first = as_map(header.typed(untyped_header_shape(), "/header")?, "/header")?;
    let (doc_type, version) = match (first.get("doc_type"), first.get("schema_version")) {
        (Some(Value::Text(t)), Some(Value::Int(v))) => (t.clone(), *v),
        _ => {
            // Let the header reader explain what is missing or mistyped.
            Header::from_value(first)?;
            return Err(DecodeError::Invalid {
                pointer: "/header/doc_type".into(),
                message: "is required".into(),
            });
        }
    };
    let schema = u32::try_from(version)
        .ok()
        .and_then(|v| registry.get(&doc_type, v))
        .ok_or_else(|| DecodeError::UnknownDocType {
            doc_type: doc_type.clone(),
            version: u32::try_from(version).unwrap_or(0),
            known: registry.list().join(", "),
        })?;
    let header = Header::from_value(as_map(header.typed(schema.header_shape(), "/header")?, "/header")?)?;
    let body = as_map(body.typed(schema.body_shape(), "/body")?, "/body")?;
    Ok(Document { header, body })
}
