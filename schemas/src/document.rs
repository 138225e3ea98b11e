//! The exchange document: a header that says what the record is, who sent it and where it came
//! from, and a typed body. This module owns the header's fields and their one mapping to and
//! from a [`Value`] tree, which both encodings share.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use uuid::Uuid;

use crate::error::DecodeError;
use crate::shape::{Field, Object, Shape};
use crate::value::{Kind, Timestamp, Value};

/// A whole exchange document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    /// What, who, where from.
    pub header: Header,
    /// The record itself, typed by its schema.
    pub body: BTreeMap<String, Value>,
}

/// What a document is and where it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Set by the publisher (UUIDv7 recommended); the hub deduplicates on it.
    pub id: Uuid,
    /// Names a schema, e.g. `tax.registration`.
    pub doc_type: String,
    /// The schema version the body follows.
    pub schema_version: u32,
    /// What the document does to the record.
    pub op: Op,
    /// The publishing organisation and system.
    pub sender: Sender,
    /// The business key of the record (scalar values, typed like the body fields of the same name).
    pub key: BTreeMap<String, Value>,
    /// Where in the source system's change log the record came from, if from one.
    pub source: Option<SourceInfo>,
    /// Groups documents of one exchange (e.g. an approval flow).
    pub conversation_id: Option<Uuid>,
    /// The document this one answers.
    pub in_reply_to: Option<Uuid>,
    /// When the publisher made the document.
    pub created_at: Timestamp,
    /// Handling class.
    pub classification: Classification,
    /// A test document: routed like any other, but marked.
    pub test: bool,
    /// `sha256:<hex>` of the canonical form (see [`crate::canonical`]).
    pub content_hash: Option<String>,
    /// The sender's signature over the canonical form.
    pub signature: Option<Signature>,
}

/// The publishing side of a document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sender {
    /// Organisation id as configured in routes.toml, e.g. `nanhai.tax`.
    pub org: String,
    /// The sending system inside the organisation, e.g. `ctais`.
    pub system: Option<String>,
}

/// The change-log position a document was made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceInfo {
    /// `mysql`, `postgres`, `mssql`, …
    pub kind: String,
    /// Database name.
    pub db: Option<String>,
    /// Table name.
    pub table: Option<String>,
    /// Position in the change log (binlog file:pos, LSN, …), as text.
    pub position: Option<String>,
    /// When the source transaction committed.
    pub committed_at: Option<Timestamp>,
    /// Source transaction id.
    pub tx: Option<String>,
    /// Sequence of this row inside its transaction, from 0.
    pub seq: Option<u64>,
}

/// A detached signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// Algorithm, e.g. `ed25519`.
    pub alg: String,
    /// Which key signed, e.g. `nanhai.tax#2026`.
    pub key_id: String,
    /// The signature, base64.
    pub value: String,
}

macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl $name {
            /// All values, in order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The wire text.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
            /// The inverse of `as_str`.
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(
    /// What a document does to the record it carries.
    Op {
        /// Insert or replace the record.
        Upsert = "upsert",
        /// Remove the record; the body holds the key (and the last known row if the source has it).
        Delete = "delete",
        /// A row of an initial snapshot: applied like an upsert.
        Snapshot = "snapshot",
        /// A business event, not a table row.
        Event = "event",
    }
);

text_enum!(
    /// Handling class of a document.
    Classification {
        /// May be published.
        Public = "public",
        /// Government internal (the default).
        Internal = "internal",
        /// Restricted to named recipients.
        Confidential = "confidential",
    }
);

/// Size and nesting limits that decoders enforce before doing any work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted document, in bytes (default 4 MiB).
    pub max_bytes: usize,
    /// Deepest accepted nesting of objects/elements, counting the document root as 1
    /// (default 32).
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 4 * 1024 * 1024,
            max_depth: 32,
        }
    }
}

/// The JSON Pointer of a child: `/header/key` + `taxpayer_id`.
pub(crate) fn child_pointer(parent: &str, name: &str) -> String {
    let mut pointer = String::with_capacity(parent.len() + 1 + name.len());
    pointer.push_str(parent);
    pointer.push('/');
    if name.contains(['~', '/']) {
        pointer.push_str(&name.replace('~', "~0").replace('/', "~1"));
    } else {
        pointer.push_str(name);
    }
    pointer
}

fn field(shape: Shape) -> Field {
    Field {
        shape,
        nullable: true,
        enumeration: vec![],
        description: None,
    }
}

fn object(fields: &[(&str, Shape)]) -> Shape {
    Shape::Map(Object {
        properties: fields
            .iter()
            .map(|(n, s)| ((*n).to_owned(), field(s.clone())))
            .collect(),
        required: Default::default(),
    })
}

/// The shape of a header whose business key fields are typed like the body fields of `body`.
pub(crate) fn header_shape(body: Option<&Object>) -> Shape {
    let text = Shape::Scalar(Kind::String);
    let key = Shape::Map(Object {
        properties: body.map(|b| b.properties.clone()).unwrap_or_default(),
        required: Default::default(),
    });
    object(&[
        ("id", text.clone()),
        ("doc_type", text.clone()),
        ("schema_version", Shape::Scalar(Kind::Integer)),
        ("op", text.clone()),
        ("sender", object(&[("org", text.clone()), ("system", text.clone())])),
        ("key", key),
        (
            "source",
            object(&[
                ("kind", text.clone()),
                ("db", text.clone()),
                ("table", text.clone()),
                ("position", text.clone()),
                ("committed_at", Shape::Scalar(Kind::Timestamp)),
                ("tx", text.clone()),
                ("seq", Shape::Scalar(Kind::Integer)),
            ]),
        ),
        ("conversation_id", text.clone()),
        ("in_reply_to", text.clone()),
        ("created_at", Shape::Scalar(Kind::Timestamp)),
        ("classification", text.clone()),
        ("test", Shape::Scalar(Kind::Boolean)),
        ("content_hash", text.clone()),
        (
            "signature",
            object(&[("alg", text.clone()), ("key_id", text.clone()), ("value", text)]),
        ),
    ])
}

/// The header shape for the first decoding pass, before the doc type is known.
pub(crate) fn untyped_header_shape() -> &'static Shape {
    static SHAPE: OnceLock<Shape> = OnceLock::new();
    SHAPE.get_or_init(|| header_shape(None))
}

/// Reads fields out of a header map, remembering which were taken so that unknown ones can be
/// reported.
struct Fields<'a> {
    map: BTreeMap<String, Value>,
    pointer: &'a str,
}

impl Fields<'_> {
    fn invalid(&self, name: &str, message: impl Into<String>) -> DecodeError {
        DecodeError::Invalid {
            pointer: child_pointer(self.pointer, name),
            message: message.into(),
        }
    }

    /// A field that may be absent; explicit null counts as absent in the header.
    fn optional(&mut self, name: &str) -> Option<Value> {
        match self.map.remove(name) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    fn required(&mut self, name: &str) -> Result<Value, DecodeError> {
        self.optional(name).ok_or_else(|| self.invalid(name, "is required"))
    }

    fn text(&mut self, name: &str) -> Result<Option<String>, DecodeError> {
        match self.optional(name) {
            None => Ok(None),
            Some(Value::Text(s)) => Ok(Some(s)),
            Some(v) => Err(self.invalid(name, format!("must be a string, not a {}", v.kind()))),
        }
    }

    fn required_text(&mut self, name: &str) -> Result<String, DecodeError> {
        self.text(name)?.ok_or_else(|| self.invalid(name, "is required"))
    }

    fn uuid(&mut self, name: &str) -> Result<Option<Uuid>, DecodeError> {
        match self.text(name)? {
            None => Ok(None),
            Some(s) => Uuid::try_parse(&s)
                .map(Some)
                .map_err(|_| self.invalid(name, format!("{s:?} is not a UUID"))),
        }
    }

    fn timestamp(&mut self, name: &str) -> Result<Option<Timestamp>, DecodeError> {
        match self.optional(name) {
            None => Ok(None),
            Some(Value::Timestamp(t)) => Ok(Some(t)),
            Some(v) => Err(self.invalid(
                name,
                format!(
                    "must be a timestamp with zone like 2026-11-22T08:00:00+08:00, got {}",
                    describe(&v)
                ),
            )),
        }
    }

    fn map(&mut self, name: &str) -> Result<Option<BTreeMap<String, Value>>, DecodeError> {
        match self.optional(name) {
            None => Ok(None),
            Some(Value::Map(m)) => Ok(Some(m)),
            Some(v) => Err(self.invalid(name, format!("must be an object, not a {}", v.kind()))),
        }
    }

    /// Reads the object field `name` with `read`, then refuses any field `read` did not take.
    fn object<T>(
        &mut self,
        name: &str,
        read: impl FnOnce(&mut Fields<'_>) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        let Some(map) = self.map(name)? else {
            return Ok(None);
        };
        let pointer = child_pointer(self.pointer, name);
        let mut fields = Fields { map, pointer: &pointer };
        let value = read(&mut fields)?;
        fields.finish()?;
        Ok(Some(value))
    }

    fn finish(self) -> Result<(), DecodeError> {
        match self.map.into_keys().next() {
            None => Ok(()),
            Some(unknown) => Err(DecodeError::Invalid {
                pointer: child_pointer(self.pointer, &unknown),
                message: "is not a header field".into(),
            }),
        }
    }
}

fn describe(v: &Value) -> String {
    match v.scalar_text() {
        Some(t) => format!("{} {t:?}", v.kind()),
        None => v.kind().to_string(),
    }
}

impl Header {
    /// Reads a header from its typed tree (as decoded from JSON or XML).
    pub(crate) fn from_value(map: BTreeMap<String, Value>) -> Result<Header, DecodeError> {
        let mut f = Fields {
            map,
            pointer: "/header",
        };
        let id = f.uuid("id")?.ok_or_else(|| f.invalid("id", "is required"))?;
        let doc_type = f.required_text("doc_type")?;
        let schema_version = match f.required("schema_version")? {
            Value::Int(v) if v >= 1 && v <= i64::from(u32::MAX) => v as u32,
            v => {
                return Err(f.invalid(
                    "schema_version",
                    format!("must be a positive integer, got {}", describe(&v)),
                ));
            }
        };
        let op_text = f.required_text("op")?;
        let op = Op::parse(&op_text).ok_or_else(|| {
            f.invalid(
                "op",
                format!("{op_text:?} is not one of upsert, delete, snapshot, event"),
            )
        })?;
        let sender = f
            .object("sender", |s| {
                Ok(Sender {
                    org: s.required_text("org")?,
                    system: s.text("system")?,
                })
            })?
            .ok_or_else(|| f.invalid("sender", "is required"))?;
        let key = f.map("key")?.unwrap_or_default();
        for (name, v) in &key {
            if matches!(v, Value::List(_) | Value::Map(_) | Value::Null) {
                return Err(DecodeError::Invalid {
                    pointer: child_pointer("/header/key", name),
                    message: format!("a key value must be a non-null scalar, not a {}", v.kind()),
                });
            }
        }
        let source = f.object("source", |s| {
            Ok(SourceInfo {
                kind: s.required_text("kind")?,
                db: s.text("db")?,
                table: s.text("table")?,
                position: s.text("position")?,
                committed_at: s.timestamp("committed_at")?,
                tx: s.text("tx")?,
                seq: match s.optional("seq") {
                    None => None,
                    Some(Value::Int(n)) if n >= 0 => Some(n as u64),
                    Some(v) => {
                        return Err(s.invalid("seq", format!("must be a non-negative integer, got {}", describe(&v))));
                    }
                },
            })
        })?;
        let conversation_id = f.uuid("conversation_id")?;
        let in_reply_to = f.uuid("in_reply_to")?;
        let created_at = f
            .timestamp("created_at")?
            .ok_or_else(|| f.invalid("created_at", "is required"))?;
        let classification = match f.text("classification")? {
            None => Classification::Internal,
            Some(c) => Classification::parse(&c).ok_or_else(|| {
                f.invalid(
                    "classification",
                    format!("{c:?} is not one of public, internal, confidential"),
                )
            })?,
        };
        let test = match f.optional("test") {
            None => false,
            Some(Value::Bool(b)) => b,
            Some(v) => return Err(f.invalid("test", format!("must be true or false, got {}", describe(&v)))),
        };
        let content_hash = f.text("content_hash")?;
        let signature = f.object("signature", |s| {
            Ok(Signature {
                alg: s.required_text("alg")?,
                key_id: s.required_text("key_id")?,
                value: s.required_text("value")?,
            })
        })?;
        f.finish()?;
        Ok(Header {
            id,
            doc_type,
            schema_version,
            op,
            sender,
            key,
            source,
            conversation_id,
            in_reply_to,
            created_at,
            classification,
            test,
            content_hash,
            signature,
        })
    }

    /// The header as a typed tree; `None` fields are left out.
    pub(crate) fn to_value(&self) -> Value {
        let mut m = BTreeMap::new();
        let text = |s: &str| Value::Text(s.to_owned());
        m.insert("id".into(), text(&self.id.to_string()));
        m.insert("doc_type".into(), text(&self.doc_type));
        m.insert("schema_version".into(), Value::Int(i64::from(self.schema_version)));
        m.insert("op".into(), text(self.op.as_str()));
        let mut sender = BTreeMap::from([("org".to_owned(), text(&self.sender.org))]);
        if let Some(s) = &self.sender.system {
            sender.insert("system".into(), text(s));
        }
        m.insert("sender".into(), Value::Map(sender));
        if !self.key.is_empty() {
            m.insert("key".into(), Value::Map(self.key.clone()));
        }
        if let Some(src) = &self.source {
            let mut s = BTreeMap::from([("kind".to_owned(), text(&src.kind))]);
            let opt = [
                ("db", &src.db),
                ("table", &src.table),
                ("position", &src.position),
                ("tx", &src.tx),
            ];
            for (name, v) in opt {
                if let Some(v) = v {
                    s.insert(name.into(), text(v));
                }
            }
            if let Some(t) = &src.committed_at {
                s.insert("committed_at".into(), Value::Timestamp(t.clone()));
            }
            if let Some(n) = src.seq {
                // Positions beyond i64 cannot occur in practice; saturate rather than wrap.
                s.insert("seq".into(), Value::Int(i64::try_from(n).unwrap_or(i64::MAX)));
            }
            m.insert("source".into(), Value::Map(s));
        }
        for (name, v) in [
            ("conversation_id", self.conversation_id),
            ("in_reply_to", self.in_reply_to),
        ] {
            if let Some(id) = v {
                m.insert(name.into(), text(&id.to_string()));
            }
        }
        m.insert("created_at".into(), Value::Timestamp(self.created_at.clone()));
        m.insert("classification".into(), text(self.classification.as_str()));
        m.insert("test".into(), Value::Bool(self.test));
        if let Some(h) = &self.content_hash {
            m.insert("content_hash".into(), text(h));
        }
        if let Some(sig) = &self.signature {
            m.insert(
                "signature".into(),
                Value::Map(BTreeMap::from([
                    ("alg".to_owned(), text(&sig.alg)),
                    ("key_id".to_owned(), text(&sig.key_id)),
                    ("value".to_owned(), text(&sig.value)),
                ])),
            );
        }
        Value::Map(m)
    }
}
