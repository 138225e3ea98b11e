//! How documents travel over AMQP.
//!
//! **A single document** is one message: the document's bytes (JSON or XML), with properties
//! that mirror its header — `message_id` = id, `type` = doc type, `app_id` = sender org,
//! `content_type`, persistent delivery — and `user_id` = the AMQP user, which RabbitMQ itself
//! checks against the connection's login.
//!
//! **A batch** carries many documents in one message, because one broker hop with confirms
//! tops out near 10–14 k messages/s on two cores, under what a change feed needs. A batch has
//! `type` = [`BATCH_TYPE`], header [`header::COUNT`], and a body in one of the two encodings:
//!
//! - JSON: an array of documents, `[{"header":…,"body":…}, …]`;
//! - XML: `<batch count="N">` holding `<document>` elements (no declaration inside).
//!
//! Every document inside a batch is still validated, archived, routed and deduplicated on its
//! own id; a bad one is dead-lettered alone, as a single message.

use exhub_schemas::{Document, Encoding};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use quick_xml::events::Event;

/// The `type` property of a batch message.
pub const BATCH_TYPE: &str = "exhub.batch";

/// Header names exhub sets on messages.
pub mod header {
    /// Why a document was dead-lettered: a short machine-readable code.
    pub const REASON: &str = "x-exhub-reason";
    /// Why a document was dead-lettered: human text.
    pub const DETAIL: &str = "x-exhub-detail";
    /// The AMQP user that originally published a document, kept when the hub moves it (to a
    /// DLQ and back), since only the publisher's own connection may set `user_id`.
    pub const USER: &str = "x-exhub-user";
    /// Set on documents sent again from the archive by `exhub replay`.
    pub const REPLAY: &str = "x-exhub-replay";
    /// Number of documents in a batch.
    pub const COUNT: &str = "x-exhub-count";
    /// On a participant's dead letter (type [`super::DEAD_LETTER_TYPE`]): the subscriber whose
    /// DLQ it belongs in (a sink's refusal); absent for the hub DLQ (a source's mapping failure).
    pub const SUBSCRIBER: &str = "x-exhub-subscriber";
}

/// The `type` property of a dead letter a participant hands to the hub: a source's unmappable
/// row or a sink's refused document. Participants may write only to the ingress exchange, so
/// their dead letters travel through the hub, which checks who sent them and files them.
pub const DEAD_LETTER_TYPE: &str = "exhub.dead-letter";

/// The `type` property of a receipt: a sink's word, after it committed, of what it did with the
/// documents of one batch ([`Receipt`]), sent to the hub through the ingress exchange and
/// signed by the subscriber's org when it has a key.
pub const RECEIPT_TYPE: &str = "exhub.receipt";

/// What a subscriber did with documents: applied (committed to its database, or already newer
/// there) or refused (dead-lettered with a reason).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The subscriber.
    pub subscriber: String,
    /// Ids of the documents applied.
    pub applied: Vec<String>,
    /// Documents refused.
    #[serde(default)]
    pub refused: Vec<Refused>,
}

/// A document a subscriber refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refused {
    /// Its id.
    pub id: String,
    /// The reason code.
    pub reason: String,
}

impl Receipt {
    /// The receipt as a message to the ingress exchange, published by `user`, signed by
    /// `signer` when there is one.
    pub fn message(
        &self,
        topology: &crate::Topology,
        user: &str,
        signer: Option<&crate::sign::SigningKey>,
    ) -> crate::Outgoing {
        let payload = serde_json::to_vec(self).unwrap_or_default();
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_type(RECEIPT_TYPE.into())
            .with_user_id(user.into())
            .with_timestamp(unix_seconds());
        crate::Outgoing {
            exchange: topology.ingress_exchange(),
            routing_key: String::new(),
            properties: signed(properties, signer, &[&payload]),
            payload,
        }
    }
}

/// Whether a message is a receipt ([`RECEIPT_TYPE`]).
pub fn is_receipt(props: &BasicProperties) -> bool {
    props.kind().as_ref().is_some_and(|t| t.as_str() == RECEIPT_TYPE)
}

/// The most bytes of a header value exhub writes ([`with_header`] cuts longer ones). AMQP puts
/// all properties in one frame (32 KiB here): a header built from input must never fill it.
pub const HEADER_MAX: usize = 1024;

pub use exhub_schemas::excerpt;

/// Why a document or message was refused: the DLQ's `x-exhub-reason`, one code each. The
/// one list of reasons, for the hub, the sources and the sinks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not a document: bad JSON/XML, bad UTF-8, DOCTYPE, a malformed batch.
    Malformed,
    /// Bigger than `max_document_bytes` (or a batch over its limits).
    TooLarge,
    /// Nested deeper than the limit.
    TooDeep,
    /// A header field or typed value is wrong.
    Invalid,
    /// No schema for the doc type and version.
    UnknownDocType,
    /// The body breaks its schema.
    Schema,
    /// The publishing AMQP user does not belong to the sender org (or the org is unknown); at a
    /// sink, a copy not published by the hub.
    Unauthenticated,
    /// The sender org may not publish this doc type.
    Unauthorized,
    /// `content_hash` does not match the content.
    Integrity,
    /// The id was archived before with different content.
    Conflict,
    /// A source could not map a row to a document (hub DLQ).
    Mapping,
    /// A sink's target database refused the document (subscriber DLQ).
    Apply,
    /// The message's signature is missing where required, names a key the signer does not
    /// have, or does not match the documents.
    Signature,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 13] = [
        Reason::Malformed,
        Reason::TooLarge,
        Reason::TooDeep,
        Reason::Invalid,
        Reason::UnknownDocType,
        Reason::Schema,
        Reason::Unauthenticated,
        Reason::Unauthorized,
        Reason::Integrity,
        Reason::Conflict,
        Reason::Mapping,
        Reason::Apply,
        Reason::Signature,
    ];

    /// Its code, as the DLQ header and the archive write it.
    pub const fn code(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::TooLarge => "too_large",
            Reason::TooDeep => "too_deep",
            Reason::Invalid => "invalid",
            Reason::UnknownDocType => "unknown_doc_type",
            Reason::Schema => "schema",
            Reason::Unauthenticated => "unauthenticated",
            Reason::Unauthorized => "unauthorized",
            Reason::Integrity => "integrity",
            Reason::Conflict => "conflict",
            Reason::Mapping => "mapping",
            Reason::Apply => "apply",
            Reason::Signature => "signature",
        }
    }

    /// The reason with code `code`.
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }

    /// Whether a participant (a source or a sink) may give its own dead letters this reason;
    /// the others are the hub's to give.
    pub const fn from_participants(self) -> bool {
        matches!(
            self,
            Reason::Mapping | Reason::Apply | Reason::Malformed | Reason::Unauthenticated | Reason::Signature
        )
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// A malformed batch.
#[derive(Debug, thiserror::Error)]
#[error("malformed batch: {0}")]
pub struct BatchError(String);

/// Properties for one document, sent as `encoding` by AMQP user `user`.
pub fn document_properties(doc: &Document, encoding: Encoding, user: &str) -> BasicProperties {
    let h = &doc.header;
    BasicProperties::default()
        .with_content_type(encoding.content_type().into())
        .with_delivery_mode(2)
        .with_message_id(h.id.to_string().as_str().into())
        .with_type(h.doc_type.as_str().into())
        .with_app_id(h.sender.org.as_str().into())
        .with_user_id(user.into())
        .with_timestamp(unix_seconds())
}

/// Properties for a batch of `count` documents, sent as `encoding` by AMQP user `user`.
pub fn batch_properties(encoding: Encoding, count: usize, user: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(header::COUNT.into(), AMQPValue::LongLongInt(count as i64));
    BasicProperties::default()
        .with_content_type(encoding.content_type().into())
        .with_delivery_mode(2)
        .with_message_id(uuid::Uuid::now_v7().to_string().as_str().into())
        .with_type(BATCH_TYPE.into())
        .with_user_id(user.into())
        .with_timestamp(unix_seconds())
        .with_headers(headers)
}

/// Whether a message is a batch.
pub fn is_batch(props: &BasicProperties) -> bool {
    props.kind().as_ref().is_some_and(|t| t.as_str() == BATCH_TYPE)
}

/// Joins encoded documents (each a whole JSON or XML document in `encoding`) into a batch body.
pub fn encode_batch<D: AsRef<[u8]>>(encoding: Encoding, docs: &[D]) -> Vec<u8> {
    let size: usize = docs.iter().map(|d| d.as_ref().len() + 1).sum();
    let mut out = Vec::with_capacity(size + 64);
    match encoding {
        Encoding::Json => {
            out.push(b'[');
            for (i, doc) in docs.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(doc.as_ref());
            }
            out.push(b']');
        }
        Encoding::Xml => {
            out.extend_from_slice(
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<batch count=\"{}\">",
                    docs.len()
                )
                .as_bytes(),
            );
            for doc in docs {
                out.extend_from_slice(strip_declaration(doc.as_ref()));
            }
            out.extend_from_slice(b"</batch>\n");
        }
    }
    out
}

/// Splits a batch body into its documents' bytes, which [`exhub_schemas::decode`] then reads
/// one by one.
pub fn split_batch(payload: &[u8]) -> Result<Vec<&[u8]>, BatchError> {
    match Encoding::detect_any(payload) {
        Some(Encoding::Json) => {
            let items: Vec<&serde_json::value::RawValue> = serde_json::from_slice(payload)
                .map_err(|e| BatchError(format!("not a JSON array of documents: {e}")))?;
            Ok(items.into_iter().map(|raw| raw.get().as_bytes()).collect())
        }
        Some(Encoding::Xml) => split_xml(payload),
        None => Err(BatchError("neither a JSON array nor an XML <batch>".into())),
    }
}

fn split_xml(payload: &[u8]) -> Result<Vec<&[u8]>, BatchError> {
    let mut reader = quick_xml::Reader::from_reader(payload);
    let mut depth = 0usize;
    let mut start = 0usize;
    let mut docs = Vec::new();
    let pos = |p: u64| usize::try_from(p).unwrap_or(usize::MAX);
    loop {
        let before = pos(reader.buffer_position());
        let event = reader.read_event().map_err(|e| BatchError(format!("XML: {e}")))?;
        match event {
            Event::Start(e) => {
                depth += 1;
                if depth == 1 && e.name().as_ref() != "batch" {
                    return Err(BatchError("the root element must be <batch>".into()));
                }
                if depth == 2 {
                    start = before;
                }
            }
            Event::End(_) => {
                if depth == 2 {
                    docs.push(payload.get(start..pos(reader.buffer_position())).unwrap_or_default());
                }
                depth = depth.saturating_sub(1);
            }
            Event::Empty(_) if depth == 1 => {
                docs.push(payload.get(before..pos(reader.buffer_position())).unwrap_or_default());
            }
            Event::Empty(_) if depth == 0 => return Err(BatchError("the root element must be <batch>".into())),
            Event::Text(t) if depth <= 1 && !AsRef::<str>::as_ref(&t).trim().is_empty() => {
                return Err(BatchError("text outside the documents of a <batch>".into()));
            }
            Event::DocType(_) => return Err(BatchError("DOCTYPE is not allowed".into())),
            Event::Eof => break,
            _ => {}
        }
    }
    if depth != 0 {
        return Err(BatchError("unclosed element".into()));
    }
    Ok(docs)
}

/// The document without its leading XML declaration (and byte order mark).
fn strip_declaration(doc: &[u8]) -> &[u8] {
    let doc = doc.strip_prefix(b"\xEF\xBB\xBF".as_slice()).unwrap_or(doc);
    let trimmed = doc.trim_ascii_start();
    if trimmed.starts_with(b"<?xml")
        && let Some(end) = trimmed.windows(2).position(|w| w == b"?>")
    {
        return trimmed[end + 2..].trim_ascii_start();
    }
    doc
}

trait DetectAny {
    fn detect_any(bytes: &[u8]) -> Option<Encoding>;
}

impl DetectAny for Encoding {
    /// Like [`Encoding::detect`], but a JSON array counts as JSON.
    fn detect_any(bytes: &[u8]) -> Option<Encoding> {
        match bytes.trim_ascii_start().first() {
            Some(b'[') => Some(Encoding::Json),
            _ => Encoding::detect(bytes),
        }
    }
}

/// A string header of a message, if present.
pub fn header_str(props: &BasicProperties, name: &str) -> Option<String> {
    let value = props.headers().as_ref()?.inner().get(name)?.clone();
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        AMQPValue::LongInt(n) => Some(n.to_string()),
        AMQPValue::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `props` with string header `name` set to `value`, cut to [`HEADER_MAX`] bytes.
pub fn with_header(props: BasicProperties, name: &str, value: &str) -> BasicProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    let value = excerpt(value, HEADER_MAX);
    headers.insert(ShortString::from(name), AMQPValue::LongString(value.as_ref().into()));
    props.with_headers(headers)
}

/// `props` with the signature of `documents` (the message's documents, as sent) by `signer`
/// in [`crate::sign::HEADER`]; unchanged without a signer.
pub fn signed<D: AsRef<[u8]>>(
    props: BasicProperties,
    signer: Option<&crate::sign::SigningKey>,
    documents: &[D],
) -> BasicProperties {
    match signer {
        Some(key) => with_header(props, crate::sign::HEADER, &key.sign_documents(documents)),
        None => props,
    }
}

/// The documents a message carries, as sent: a batch's parts, or the one document.
pub fn documents_of<'a>(props: &BasicProperties, payload: &'a [u8]) -> Result<Vec<&'a [u8]>, BatchError> {
    if is_batch(props) {
        split_batch(payload)
    } else {
        Ok(vec![payload])
    }
}

/// Whether a message is a participant's dead letter ([`DEAD_LETTER_TYPE`]).
pub fn is_dead_letter(props: &BasicProperties) -> bool {
    props.kind().as_ref().is_some_and(|t| t.as_str() == DEAD_LETTER_TYPE)
}

/// What a dead letter says: why, in a code and in words (both cut to [`HEADER_MAX`]), and the
/// subscriber whose DLQ it belongs in (none: the hub's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter<'a> {
    /// The reason code (`mapping`, `apply`, `schema`, …).
    pub reason: Reason,
    /// What exactly is wrong.
    pub detail: &'a str,
    /// The subscriber's DLQ, or `None` for the hub DLQ.
    pub subscriber: Option<&'a str>,
}

/// Properties of a dead letter for a message whose properties were `original` and whose body is
/// `payload`: persistent, the original's message id and type (a batch's type is dropped: a dead
/// letter is one document or one whole message), the reason headers, and `user_id` = `user`
/// (the AMQP user publishing the dead letter).
pub fn dead_letter_properties(
    original: &BasicProperties,
    payload: &[u8],
    user: &str,
    letter: &DeadLetter<'_>,
) -> BasicProperties {
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_user_id(user.into())
        .with_timestamp(unix_seconds())
        .with_content_type(
            Encoding::detect(payload)
                .map_or("application/octet-stream", Encoding::content_type)
                .into(),
        );
    if let Some(id) = original.message_id() {
        properties = properties.with_message_id(id.clone());
    }
    if let Some(t) = original.kind()
        && !is_batch(original)
        && !is_dead_letter(original)
    {
        properties = properties.with_type(t.clone());
    }
    properties = with_header(properties, header::REASON, letter.reason.code());
    properties = with_header(properties, header::DETAIL, letter.detail);
    if let Some(s) = letter.subscriber {
        properties = with_header(properties, header::SUBSCRIBER, s);
    }
    properties
}

/// A participant's dead letter on its way to the hub: published to the ingress exchange (the only
/// one a participant may write to) with type [`DEAD_LETTER_TYPE`]; the hub checks who sent it
/// and files it in the DLQ it names.
pub fn participant_dead_letter(
    topology: &crate::Topology,
    original: &BasicProperties,
    payload: &[u8],
    user: &str,
    letter: &DeadLetter<'_>,
) -> crate::Outgoing {
    let properties = dead_letter_properties(original, payload, user, letter).with_type(DEAD_LETTER_TYPE.into());
    crate::Outgoing {
        exchange: topology.ingress_exchange(),
        routing_key: String::new(),
        payload: payload.to_vec(),
        properties,
    }
}

/// The `content_type` of a message as an [`Encoding`], if it names one.
pub fn encoding_of(props: &BasicProperties) -> Option<Encoding> {
    match props.content_type().as_ref()?.as_str() {
        "application/json" => Some(Encoding::Json),
        "application/xml" | "text/xml" => Some(Encoding::Xml),
        _ => None,
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_reason_has_one_code() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_code(r.code()), Some(r));
        }
        let codes: std::collections::HashSet<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), Reason::ALL.len());
        assert_eq!(Reason::from_code("apply"), Some(Reason::Apply));
        assert!(Reason::Apply.from_participants() && !Reason::Conflict.from_participants());
        assert_eq!(Reason::from_code("nonsense"), None);
    }

    use super::*;

    #[test]
    fn json_batches_split_back_into_their_documents() {
        let docs = [br#"{"a":1}"#.as_slice(), br#"{"b":[1,2]}"#.as_slice()];
        let batch = encode_batch(Encoding::Json, &docs);
        assert_eq!(split_batch(&batch).unwrap(), docs);
        assert_eq!(split_batch(b"[]").unwrap().len(), 0);
        assert!(split_batch(b"[1,").is_err());
        assert!(split_batch(b"{}").is_err());
    }

    #[test]
    fn xml_batches_split_back_into_their_documents() {
        let a = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<document><header/><body><document>x</document></body></document>";
        let b = "<document><header/><body/></document>";
        let batch = encode_batch(Encoding::Xml, &[a, b]);
        let parts = split_batch(&batch).unwrap();
        assert_eq!(parts, [&a.as_bytes()[39..], b.as_bytes()]);
        assert!(split_batch(b"<other/>").is_err());
        assert!(split_batch(b"<batch>text</batch>").is_err());
        assert!(split_batch(b"<batch><document>").is_err());
    }
}
