//! XSD export: an XML Schema (1.0) for one document type, for integrators whose legacy tools
//! want one. It describes exactly the XML that [`crate::xml::encode`] writes for conforming
//! documents: `<document>` with `<header>` then `<body>`, fields in any order (`xs:all`),
//! optional fields `minOccurs="0"`, nullable fields `nillable="true"`, enumerations, and the
//! exchange types mapped to XSD types restricted to the standard's stricter grammars.

use std::fmt::Write as _;

use crate::Schema;
use crate::shape::{Field, Object, Shape};
use crate::value::Kind;

fn escape_attr(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// The XSD of `schema`.
pub fn export(schema: &Schema) -> String {
    let mut out = String::new();
    let title = schema.title().unwrap_or("");
    let _ = write!(
        out,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- exhub exchange document: {doc_type} version {version}. Generated from {id}. -->
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" elementFormDefault="unqualified">
  <xs:annotation><xs:documentation>{title}</xs:documentation></xs:annotation>
  <xs:element name="document">
    <xs:complexType>
      <xs:sequence>
        <xs:element name="header" type="Header"/>
        <xs:element name="body" type="Body"/>
      </xs:sequence>
    </xs:complexType>
  </xs:element>
  <xs:complexType name="Header">
    <xs:all>
      <xs:element name="id" type="Uuid"/>
      <xs:element name="doc_type" type="xs:string" fixed="{doc_type}"/>
      <xs:element name="schema_version" type="xs:unsignedInt" fixed="{version}"/>
      <xs:element name="op" type="Op"/>
      <xs:element name="sender" type="Sender"/>
      <xs:element name="key" type="Key" minOccurs="0"/>
      <xs:element name="source" type="Source" minOccurs="0"/>
      <xs:element name="conversation_id" type="Uuid" minOccurs="0"/>
      <xs:element name="in_reply_to" type="Uuid" minOccurs="0"/>
      <xs:element name="created_at" type="Timestamp"/>
      <xs:element name="classification" type="Classification" minOccurs="0"/>
      <xs:element name="test" type="xs:boolean" minOccurs="0"/>
      <xs:element name="content_hash" type="xs:string" minOccurs="0"/>
      <xs:element name="signature" type="Signature" minOccurs="0"/>
    </xs:all>
  </xs:complexType>
  <xs:complexType name="Sender">
    <xs:all>
      <xs:element name="org" type="xs:string"/>
      <xs:element name="system" type="xs:string" minOccurs="0"/>
    </xs:all>
  </xs:complexType>
  <xs:complexType name="Source">
    <xs:all>
      <xs:element name="kind" type="xs:string"/>
      <xs:element name="db" type="xs:string" minOccurs="0"/>
      <xs:element name="table" type="xs:string" minOccurs="0"/>
      <xs:element name="position" type="xs:string" minOccurs="0"/>
      <xs:element name="committed_at" type="Timestamp" minOccurs="0"/>
      <xs:element name="tx" type="xs:string" minOccurs="0"/>
      <xs:element name="seq" type="xs:long" minOccurs="0"/>
    </xs:all>
  </xs:complexType>
  <xs:complexType name="Signature">
    <xs:all>
      <xs:element name="alg" type="xs:string"/>
      <xs:element name="key_id" type="xs:string"/>
      <xs:element name="value" type="xs:string"/>
    </xs:all>
  </xs:complexType>
  <xs:simpleType name="Uuid">
    <xs:restriction base="xs:string"><xs:pattern value="[0-9a-f]{{8}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{12}}"/></xs:restriction>
  </xs:simpleType>
  <xs:simpleType name="Op">
    <xs:restriction base="xs:string">
      <xs:enumeration value="upsert"/><xs:enumeration value="delete"/><xs:enumeration value="snapshot"/><xs:enumeration value="event"/>
    </xs:restriction>
  </xs:simpleType>
  <xs:simpleType name="Classification">
    <xs:restriction base="xs:string">
      <xs:enumeration value="public"/><xs:enumeration value="internal"/><xs:enumeration value="confidential"/>
    </xs:restriction>
  </xs:simpleType>
  <xs:simpleType name="Decimal">
    <xs:restriction base="xs:decimal"><xs:pattern value="-?(0|[1-9][0-9]*)(\.[0-9]+)?"/></xs:restriction>
  </xs:simpleType>
  <xs:simpleType name="Timestamp">
    <xs:restriction base="xs:dateTime"><xs:pattern value=".+T.+(Z|[+\-][0-9]{{2}}:[0-9]{{2}})"/></xs:restriction>
  </xs:simpleType>
"#,
        doc_type = schema.doc_type(),
        version = schema.version(),
        id = escape_attr(schema.json().get("$id").and_then(|v| v.as_str()).unwrap_or("")),
        title = escape_attr(title),
    );
    // The key holds (some of) the body's scalar fields, all optional, none nullable.
    out.push_str("  <xs:complexType name=\"Key\">\n    <xs:all>\n");
    for (name, field) in &schema.body().properties {
        if let Shape::Scalar(kind) = field.shape {
            let _ = writeln!(
                out,
                "      <xs:element name=\"{name}\" type=\"{}\" minOccurs=\"0\"/>",
                scalar_type(kind)
            );
        }
    }
    out.push_str("    </xs:all>\n  </xs:complexType>\n");
    out.push_str("  <xs:complexType name=\"Body\">\n");
    write_object(&mut out, schema.body(), 2);
    out.push_str("  </xs:complexType>\n</xs:schema>\n");
    out
}

fn scalar_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Boolean => "xs:boolean",
        Kind::Integer => "xs:long",
        Kind::Decimal => "Decimal",
        Kind::Date => "xs:date",
        Kind::Timestamp => "Timestamp",
        Kind::Binary => "xs:base64Binary",
        _ => "xs:string",
    }
}

fn write_object(out: &mut String, object: &Object, level: usize) {
    let pad = "  ".repeat(level);
    let _ = writeln!(out, "{pad}<xs:all>");
    for (name, field) in &object.properties {
        let min = if object.required.contains(name) {
            ""
        } else {
            " minOccurs=\"0\""
        };
        write_element(out, name, field, min, level + 1);
    }
    let _ = writeln!(out, "{pad}</xs:all>");
}

fn write_element(out: &mut String, name: &str, field: &Field, occurs: &str, level: usize) {
    let pad = "  ".repeat(level);
    let nil = if field.nullable { " nillable=\"true\"" } else { "" };
    let doc = field
        .description
        .as_deref()
        .map(|d| {
            format!(
                "{pad}  <xs:annotation><xs:documentation>{}</xs:documentation></xs:annotation>\n",
                escape_attr(d)
            )
        })
        .unwrap_or_default();
    match &field.shape {
        Shape::Scalar(kind) if field.enumeration.is_empty() => {
            if doc.is_empty() {
                let _ = writeln!(
                    out,
                    "{pad}<xs:element name=\"{name}\" type=\"{}\"{occurs}{nil}/>",
                    scalar_type(*kind)
                );
            } else {
                let _ = write!(
                    out,
                    "{pad}<xs:element name=\"{name}\" type=\"{}\"{occurs}{nil}>\n{doc}{pad}</xs:element>\n",
                    scalar_type(*kind)
                );
            }
        }
        Shape::Scalar(kind) => {
            let _ = write!(
                out,
                "{pad}<xs:element name=\"{name}\"{occurs}{nil}>\n{doc}{pad}  <xs:simpleType>\n{pad}    <xs:restriction base=\"{}\">\n",
                scalar_type(*kind)
            );
            for value in &field.enumeration {
                let _ = writeln!(out, "{pad}      <xs:enumeration value=\"{}\"/>", escape_attr(value));
            }
            let _ = write!(
                out,
                "{pad}    </xs:restriction>\n{pad}  </xs:simpleType>\n{pad}</xs:element>\n"
            );
        }
        Shape::List(item) => {
            let _ = write!(
                out,
                "{pad}<xs:element name=\"{name}\"{occurs}{nil}>\n{doc}{pad}  <xs:complexType>\n{pad}    <xs:sequence>\n"
            );
            write_element(out, "item", item, " minOccurs=\"0\" maxOccurs=\"unbounded\"", level + 3);
            let _ = write!(
                out,
                "{pad}    </xs:sequence>\n{pad}  </xs:complexType>\n{pad}</xs:element>\n"
            );
        }
        Shape::Map(object) => {
            let _ = write!(
                out,
                "{pad}<xs:element name=\"{name}\"{occurs}{nil}>\n{doc}{pad}  <xs:complexType>\n"
            );
            write_object(out, object, level + 2);
            let _ = write!(out, "{pad}  </xs:complexType>\n{pad}</xs:element>\n");
        }
        Shape::Any => {
            let _ = writeln!(
                out,
                "{pad}<xs:element name=\"{name}\" type=\"xs:anyType\"{occurs}{nil}/>"
            );
        }
    }
}
