//! The XML encoding, for integrators whose tools speak XML. Elements carry the same names and
//! values as the JSON encoding; the schema gives the types, so conforming documents need no type
//! annotations and validate against the exported XSD.
//!
//! The rules, exactly:
//! - The root is `<document>` with children `<header>` and `<body>`; a map is an element whose
//!   children are its fields; a list is an element whose children are `<item>` elements.
//! - Null is `xsi:nil="true"` (prefix `xsi`); an absent field has no element; an empty string is
//!   an empty element.
//! - Where a value's type differs from the one the schema gives (or the schema does not know
//!   the field and the value is not text or a non-empty map) the element carries
//!   `t="integer|decimal|boolean|string|date|timestamp|binary|list|map"`.
//! - Text is exact: leaf content is never trimmed; `<`, `>`, `&`, quotes are escaped and CR is
//!   written as `&#13;` so that XML end-of-line normalisation cannot change it.
//! - Refused: a DOCTYPE (so no DTD, no entity declarations, no entity expansion), entities other
//!   than the five predefined ones, encodings other than UTF-8, mixed content, characters XML
//!   1.0 cannot carry, nesting deeper than [`Limits::max_depth`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use quick_xml::Reader;
use quick_xml::escape::{escape, resolve_predefined_entity};
use quick_xml::events::{BytesStart, Event};

use crate::codec::Tree;
use crate::document::{child_pointer, untyped_header_shape};
use crate::error::DecodeError;
use crate::shape::Shape;
use crate::value::{Kind, Value, check_field_name, check_text};
use crate::{Document, Limits, Registry};

/// The XML Schema instance namespace, bound to the `xsi` prefix on the root element.
pub const XSI_NAMESPACE: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// An element as parsed, before the schema types it.
#[derive(Debug)]
pub(crate) struct Node {
    name: String,
    nil: bool,
    t: Option<Kind>,
    text: String,
    children: Vec<Node>,
}

fn xml_error(position: u64, message: impl Into<String>) -> DecodeError {
    DecodeError::Xml {
        position,
        message: message.into(),
    }
}

impl Node {
    fn open(e: &BytesStart<'_>, position: u64) -> Result<Node, DecodeError> {
        let name = e.name().as_ref().to_owned();
        let mut node = Node {
            name,
            nil: false,
            t: None,
            text: String::new(),
            children: Vec::new(),
        };
        for attr in e.attributes() {
            let attr = attr.map_err(|err| xml_error(position, err.to_string()))?;
            let key: &str = attr.key.as_ref();
            match key {
                "xsi:nil" => {
                    node.nil = match attr.value.as_ref() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        other => return Err(xml_error(position, format!("xsi:nil={other:?} is not a boolean"))),
                    }
                }
                "t" => {
                    node.t = Some(Kind::from_name(&attr.value).ok_or_else(|| {
                        xml_error(position, format!("t={:?} is not a type (integer, decimal, boolean, string, date, timestamp, binary, list, map)", attr.value))
                    })?)
                }
                k if k == "xmlns" || k.starts_with("xmlns:") => {}
                other => {
                    return Err(xml_error(
                        position,
                        format!("attribute {other:?} on <{}> is not allowed (only t and xsi:nil)", node.name),
                    ));
                }
            }
        }
        Ok(node)
    }

    fn only_elements(&self, pointer: &str) -> Result<(), DecodeError> {
        if self.text.chars().all(char::is_whitespace) {
            Ok(())
        } else {
            Err(DecodeError::Invalid {
                pointer: pointer.to_owned(),
                message: format!("<{}> mixes text with elements", self.name),
            })
        }
    }
}

/// Parses `text` into a [`Node`] tree within `limits`.
pub(crate) fn parse(text: &str, limits: &Limits) -> Result<Node, DecodeError> {
    let mut reader = Reader::from_str(text);
    reader.config_mut().expand_empty_elements = true;
    reader.config_mut().trim_text(false);
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    loop {
        let position = reader.buffer_position();
        let event = reader
            .read_event()
            .map_err(|e| xml_error(reader.error_position(), e.to_string()))?;
        let append = |stack: &mut Vec<Node>, s: &str| match stack.last_mut() {
            Some(node) => {
                node.text.push_str(s);
                Ok(())
            }
            None if s.chars().all(char::is_whitespace) => Ok(()),
            None => Err(xml_error(position, "text outside the root element")),
        };
        match event {
            Event::Decl(decl) => {
                let version = decl.version().map_err(|e| xml_error(position, e.to_string()))?;
                if version != "1.0" {
                    return Err(xml_error(position, "only XML 1.0 is accepted"));
                }
                if let Some(enc) = decl.encoding() {
                    let enc = enc.map_err(|e| xml_error(position, e.to_string()))?;
                    if !enc.eq_ignore_ascii_case("utf-8") {
                        return Err(xml_error(
                            position,
                            format!("encoding {:?} is refused: documents are UTF-8", enc),
                        ));
                    }
                }
            }
            Event::DocType(_) => {
                return Err(xml_error(
                    position,
                    "DOCTYPE is refused: exchange documents may not declare a DTD or entities",
                ));
            }
            Event::PI(_) | Event::Comment(_) => {}
            Event::Start(e) => {
                if root.is_some() {
                    return Err(xml_error(position, "a second root element"));
                }
                if stack.len() + 1 > limits.max_depth {
                    return Err(DecodeError::TooDeep {
                        limit: limits.max_depth,
                    });
                }
                stack.push(Node::open(&e, position)?);
            }
            Event::Empty(e) => {
                // Not produced with expand_empty_elements, handled for completeness.
                let node = Node::open(&e, position)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => root = Some(node),
                }
            }
            Event::End(_) => {
                let node = stack.pop().ok_or_else(|| xml_error(position, "unbalanced end tag"))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => root = Some(node),
                }
            }
            Event::Text(t) => append(&mut stack, &t.xml10_content())?,
            Event::CData(c) => append(&mut stack, &c.xml10_content())?,
            Event::GeneralRef(r) => {
                let resolved = if r.is_char_ref() {
                    match r.resolve_char_ref() {
                        Ok(Some(c)) => c.to_string(),
                        _ => {
                            return Err(xml_error(
                                position,
                                format!("bad character reference &{};", r.xml10_content()),
                            ));
                        }
                    }
                } else {
                    let name = r.xml10_content();
                    resolve_predefined_entity(&name)
                        .ok_or_else(|| {
                            xml_error(position, format!("unknown entity &{name}; (only &lt; &gt; &amp; &apos; &quot; and character references)"))
                        })?
                        .to_owned()
                };
                append(&mut stack, &resolved)?;
            }
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(xml_error(
            text.len() as u64,
            "unexpected end of document (unclosed elements)",
        ));
    }
    root.ok_or_else(|| xml_error(0, "no root element"))
}

/// Splits a parsed document into its header and body elements.
pub(crate) fn split(root: Node) -> Result<(Node, Node), DecodeError> {
    let invalid = |pointer: &str, message: &str| DecodeError::Invalid {
        pointer: pointer.into(),
        message: message.into(),
    };
    if root.name != "document" {
        return Err(invalid("/", "the root element must be <document>"));
    }
    root.only_elements("/")?;
    let (mut header, mut body) = (None, None);
    for child in root.children {
        let slot = match child.name.as_str() {
            "header" => &mut header,
            "body" => &mut body,
            other => {
                return Err(invalid(
                    &child_pointer("", other),
                    "is not part of a document (only header and body)",
                ));
            }
        };
        if slot.is_some() {
            return Err(invalid(&child_pointer("", &child.name), "appears twice"));
        }
        *slot = Some(child);
    }
    Ok((
        header.ok_or_else(|| invalid("/header", "is required"))?,
        body.ok_or_else(|| invalid("/body", "is required"))?,
    ))
}

impl Tree for Node {
    fn typed(&self, shape: &Shape, pointer: &str) -> Result<Value, DecodeError> {
        let invalid = |message: String| DecodeError::Invalid {
            pointer: pointer.to_owned(),
            message,
        };
        if self.nil {
            if !self.children.is_empty() || !self.text.is_empty() {
                return Err(invalid("an element with xsi:nil=\"true\" must be empty".into()));
            }
            return Ok(Value::Null);
        }
        let kind = match self.t {
            Some(Kind::Null) => return Err(invalid("null is written xsi:nil=\"true\", not t=\"null\"".into())),
            Some(k) => k,
            None => shape.kind().unwrap_or(if self.children.is_empty() {
                Kind::String
            } else {
                Kind::Map
            }),
        };
        match kind {
            Kind::List => {
                self.only_elements(pointer)?;
                let mut items = Vec::with_capacity(self.children.len());
                for (i, child) in self.children.iter().enumerate() {
                    let p = format!("{pointer}/{i}");
                    if child.name != "item" {
                        return Err(DecodeError::Invalid {
                            pointer: p,
                            message: format!("a list holds <item> elements, not <{}>", child.name),
                        });
                    }
                    items.push(child.typed(shape.child(""), &p)?);
                }
                Ok(Value::List(items))
            }
            Kind::Map => {
                self.only_elements(pointer)?;
                let mut map = BTreeMap::new();
                for child in &self.children {
                    let p = child_pointer(pointer, &child.name);
                    check_field_name(&child.name).map_err(|message| DecodeError::Invalid {
                        pointer: p.clone(),
                        message,
                    })?;
                    let value = child.typed(shape.child(&child.name), &p)?;
                    if map.insert(child.name.clone(), value).is_some() {
                        return Err(DecodeError::Invalid {
                            pointer: p,
                            message: "appears twice".into(),
                        });
                    }
                }
                Ok(Value::Map(map))
            }
            scalar => {
                if !self.children.is_empty() {
                    return Err(invalid(format!("a {scalar} value cannot contain elements")));
                }
                check_text(&self.text).map_err(invalid)?;
                match (Value::parse_scalar(scalar, &self.text), self.t) {
                    (Some(v), _) => Ok(v),
                    (None, None) => Ok(Value::Text(self.text.clone())),
                    (None, Some(_)) => Err(invalid(format!("{:?} is not a valid {scalar}", self.text))),
                }
            }
        }
    }
}

/// Whether the XML must say the value's type because the shape does not imply it.
fn needs_annotation(value: &Value, shape: &Shape) -> bool {
    match (shape.kind(), value) {
        (_, Value::Null) => false,
        (Some(k), v) => k != v.kind(),
        (None, Value::Text(_)) => false,
        (None, Value::Map(m)) => m.is_empty(),
        (None, _) => true,
    }
}

fn write_element(out: &mut String, name: &str, value: &Value, shape: &Shape, level: usize) {
    let indent = "  ".repeat(level);
    let _ = write!(out, "{indent}<{name}");
    if matches!(value, Value::Null) {
        out.push_str(" xsi:nil=\"true\"/>\n");
        return;
    }
    if needs_annotation(value, shape) {
        let _ = write!(out, " t=\"{}\"", value.kind());
    }
    let children: Vec<(&str, &Value)> = match value {
        Value::List(items) => items.iter().map(|v| ("item", v)).collect(),
        Value::Map(map) => map.iter().map(|(k, v)| (k.as_str(), v)).collect(),
        scalar => {
            let text = scalar.scalar_text().unwrap_or_default();
            let _ = writeln!(out, ">{}</{name}>", escape(text.as_str()).replace('\r', "&#13;"));
            return;
        }
    };
    if children.is_empty() {
        out.push_str("/>\n");
        return;
    }
    out.push_str(">\n");
    for (child_name, child) in children {
        write_element(out, child_name, child, shape.child(child_name), level + 1);
    }
    let _ = writeln!(out, "{indent}</{name}>");
}

/// Encodes a document as XML. The registry supplies the schema so that conforming values need
/// no type annotations; for a doc type it does not know, every non-text value is annotated.
pub fn encode(doc: &Document, registry: &Registry) -> String {
    let schema = registry.get(&doc.header.doc_type, doc.header.schema_version);
    let any = Shape::Any;
    let (header_shape, body_shape) = match schema {
        Some(s) => (s.header_shape(), s.body_shape()),
        None => (untyped_header_shape(), &any),
    };
    let mut out = String::with_capacity(1024);
    let _ = writeln!(
        out,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<document xmlns:xsi=\"{XSI_NAMESPACE}\">"
    );
    write_element(&mut out, "header", &doc.header.to_value(), header_shape, 1);
    write_element(&mut out, "body", &Value::Map(doc.body.clone()), body_shape, 1);
    out.push_str("</document>\n");
    out
}
