//! # exhub-schemas — the exchange standard
//!
//! Everything two parties need to agree on to exchange records, and nothing about how the
//! records travel (no network, no async):
//!
//! - the document model ([`Document`], [`Header`], typed [`Value`]s),
//! - its two lossless encodings, JSON ([`json`]) and XML ([`xml`]), read through one
//!   [`decode`] entry point that enforces [`Limits`],
//! - the canonical form and `content_hash` ([`canonical`]),
//! - the JSON Schemas of the standard's document types and their validation ([`Registry`]),
//! - XSD export for XML integrators ([`xsd`]).
//!
//! ```
//! use exhub_schemas::{Registry, Limits, decode, json, xml};
//! let registry = Registry::builtin()?;
//! let doc = decode(include_bytes!("../../examples/documents/tax.registration.json"), &registry, &Limits::default())?;
//! assert!(registry.validate(&doc).is_empty());
//! let as_xml = xml::encode(&doc, &registry);
//! let back = decode(as_xml.as_bytes(), &registry, &Limits::default())?;
//! assert_eq!(json::encode(&back), json::encode(&doc));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod canonical;
mod codec;
mod document;
mod error;
pub mod formats;
pub mod json;
mod registry;
#[cfg(any(test, feature = "samples"))]
pub mod samples;
pub mod shape;
pub mod time;
pub mod value;
pub mod xml;
pub mod xsd;

pub use codec::{Encoding, decode};
pub use document::{Classification, Document, Header, Limits, Op, Sender, Signature, SourceInfo};
pub use error::{DecodeError, excerpt};
pub use registry::{Registry, Schema, SchemaError, Violation, valid_doc_type};
pub use value::{Date, Decimal, Kind, Timestamp, Value};
