//! Shared fixtures: the example documents and a test schema with a field of every type.

use std::path::PathBuf;

use exhub_schemas::{Document, Limits, Registry, decode};

pub fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/documents")
}

/// The sample documents of examples/documents, one per department plus an approval request.
pub const EXAMPLES: [&str; 4] = [
    "tax.registration.json",
    "commerce.business_license.xml",
    "social_security.enrollment.json",
    "approval.request.json",
];

pub fn example(name: &str) -> Vec<u8> {
    std::fs::read(examples_dir().join(name)).unwrap()
}

/// A schema with a field of every exchange type, all nullable, and a nested map and list.
pub const ALL_TYPES: &str = r##"{
  "$id": "urn:exhub:schema:test.all_types:v1",
  "type": "object",
  "properties": {
    "s": { "type": ["string", "null"] },
    "i": { "type": ["integer", "null"] },
    "d": { "type": ["string", "null"], "format": "decimal" },
    "b": { "type": ["boolean", "null"] },
    "dt": { "type": ["string", "null"], "format": "date" },
    "ts": { "type": ["string", "null"], "format": "date-time" },
    "bin": { "type": ["string", "null"], "contentEncoding": "base64" },
    "amounts": { "type": ["array", "null"], "items": { "type": ["string", "null"], "format": "decimal" } },
    "nested": {
      "type": ["object", "null"],
      "properties": {
        "when": { "type": ["string", "null"], "format": "date-time" },
        "tags": { "type": "array", "items": { "type": "string" } }
      }
    }
  }
}"##;

pub fn registry() -> Registry {
    let mut r = Registry::builtin().unwrap();
    r.add("test.all_types.v1.json", "test", ALL_TYPES).unwrap();
    r
}

pub fn decode_ok(bytes: &[u8], registry: &Registry) -> Document {
    decode(bytes, registry, &Limits::default()).unwrap_or_else(|e| panic!("{e}\n{}", String::from_utf8_lossy(bytes)))
}
