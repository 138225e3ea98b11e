//! A source adapter's way out: mapped rows become documents, published to the ingress exchange in
//! the batch form with the broker's confirms; rows that cannot be mapped go, through the hub
//! (a participant writes only to the ingress exchange), to the hub's DLQ with reason `mapping`. Shared by every source adapter, so that they all keep the same
//! delivery contract: a position may be checkpointed once [`Outbox::flush`] returned.

use std::time::{Duration, Instant};

use exhub_schemas::{Encoding, Op};
use lapin::BasicProperties;
use tokio_util::sync::CancellationToken;

use crate::mapping::{Origin, RowPosition};
use crate::wire::{self, Reason};
use crate::{AmqpError, Cell, Mapper, MappingError, Outgoing, Publisher, Topology};

/// Documents per published AMQP message (the batch form).
const DOCS_PER_MESSAGE: usize = 100;
/// Bytes per published batch message, about (a bigger document goes alone): well under the
/// hub's `max_batch_bytes`, whatever the rows' width.
const BYTES_PER_MESSAGE: usize = 1 << 20;
/// How long a document waits for others before it is published anyway.
const LINGER: Duration = Duration::from_millis(20);
/// Documents a source should hold at most before it flushes (bounds memory whatever the
/// transaction size).
pub const FLUSH_DOCS: usize = 2000;

/// Who publishes: what goes into every document's header and every message's properties.
#[derive(Debug, Clone)]
pub struct SourceIdentity {
    /// The source's name (`header.sender.system`).
    pub name: String,
    /// The publishing org.
    pub org: String,
    /// `header.source.kind`: `mysql`, `postgres`, `sqlserver`.
    pub kind: &'static str,
    /// The legacy database's name (`header.source.db`).
    pub db: String,
    /// The AMQP user the source logs in as (`user_id` of every message).
    pub amqp_user: String,
    /// The exchange's AMQP names.
    pub topology: Topology,
    /// The org's signing key, if it signs.
    pub signer: Option<std::sync::Arc<crate::sign::SigningKey>>,
}

/// Documents on their way to the broker, with the mapping failures that go to the DLQ.
pub struct Outbox<'a> {
    source: SourceIdentity,
    publisher: &'a mut Publisher,
    docs: Vec<Vec<u8>>,
    dead: Vec<Outgoing>,
    first_at: Option<Instant>,
}

impl<'a> Outbox<'a> {
    /// An empty outbox publishing through `publisher`.
    pub fn new(source: SourceIdentity, publisher: &'a mut Publisher) -> Self {
        Outbox {
            source,
            publisher,
            docs: Vec::new(),
            dead: Vec::new(),
            first_at: None,
        }
    }

    /// Documents and dead letters not yet published.
    pub fn pending(&self) -> usize {
        self.docs.len() + self.dead.len()
    }

    /// How long until the oldest pending document must go.
    pub fn linger_left(&self) -> Option<Duration> {
        self.first_at
            .map(|t| LINGER.saturating_sub(t.elapsed()).max(Duration::from_millis(1)))
    }

    /// Whether the oldest pending document has waited long enough.
    pub fn due(&self) -> bool {
        self.first_at.is_some_and(|t| t.elapsed() >= LINGER)
    }

    /// Maps one row and queues its document, or its mapping failure for the DLQ.
    pub fn row(&mut self, mapper: &Mapper, op: Op, cell: impl FnMut(&str) -> Option<Cell>, position: &RowPosition) {
        let s = &self.source;
        let origin = Origin {
            kind: s.kind,
            source: &s.name,
            org: &s.org,
            db: &s.db,
        };
        match mapper.document(op, cell, &origin, position) {
            Ok(doc) => self.docs.push(exhub_schemas::json::encode(&doc)),
            Err(e) => self.dead.push(self.dead_letter(&e, position)),
        }
        self.first_at.get_or_insert_with(Instant::now);
    }

    fn dead_letter(&self, e: &MappingError, position: &RowPosition) -> Outgoing {
        let s = &self.source;
        tracing::error!(
            source = %s.name,
            table = %e.table,
            field = %e.field,
            column = %e.column,
            position = %position.position,
            seq = position.seq,
            error = %e.message,
            "row cannot be mapped; sent to the DLQ with reason `mapping`, the stream goes on"
        );
        let body = serde_json::json!({
            "source": s.name,
            "org": s.org,
            "table": e.table,
            "position": position.position,
            "seq": position.seq,
            "field": e.field,
            "column": e.column,
        });
        let properties = BasicProperties::default().with_app_id(s.org.as_str().into());
        let payload = body.to_string().into_bytes();
        let detail = e.to_string();
        let letter = wire::DeadLetter {
            reason: Reason::Mapping,
            detail: &detail,
            subscriber: None,
        };
        wire::participant_dead_letter(&s.topology, &properties, &payload, &s.amqp_user, &letter)
    }

    /// Publishes everything pending and waits for the broker's confirms. On an error nothing
    /// is forgotten: documents and dead letters stay pending.
    pub async fn flush(&mut self, cancel: &CancellationToken) -> Result<(), AmqpError> {
        if self.pending() == 0 {
            return Ok(());
        }
        let s = &self.source;
        let mut messages: Vec<Outgoing> = self.dead.clone();
        for chunk in batches(&self.docs, DOCS_PER_MESSAGE, BYTES_PER_MESSAGE) {
            let properties = wire::batch_properties(Encoding::Json, chunk.len(), &s.amqp_user);
            messages.push(Outgoing {
                exchange: s.topology.ingress_exchange(),
                routing_key: String::new(),
                payload: wire::encode_batch(Encoding::Json, chunk),
                properties: wire::signed(properties, s.signer.as_deref(), chunk),
            });
        }
        self.publisher.publish(&messages, cancel).await?;
        tracing::debug!(source = %s.name, documents = self.docs.len(), messages = messages.len(), "published");
        self.docs.clear();
        self.dead.clear();
        self.first_at = None;
        Ok(())
    }
}

/// `docs` cut into runs of at most `max_docs` documents and about `max_bytes` bytes (a run
/// closes before the document that would cross it; a bigger document is a run of its own).
fn batches<D: AsRef<[u8]>>(docs: &[D], max_docs: usize, max_bytes: usize) -> Vec<&[D]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, d) in docs.iter().enumerate() {
        let len = d.as_ref().len();
        if i > start && (i - start == max_docs || bytes + len > max_bytes) {
            out.push(&docs[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += len;
    }
    if start < docs.len() {
        out.push(&docs[start..]);
    }
    out
}

/// A progress bar for a table snapshot: rows done of the server's estimate (drawn only when
/// stderr is a terminal).
pub fn snapshot_progress(estimated: u64, table: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(estimated.max(1));
    if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/~{len} rows {per_sec} eta {eta}") {
        bar.set_style(style);
    }
    bar.set_message(format!("snapshot {table}"));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flush that fails forgets nothing: an unmappable row's dead letter stays pending, so
    /// the position cannot move past it (a source that stops then reads the row again).
    #[tokio::test]
    async fn a_failed_flush_keeps_the_dead_letters() {
        let registry = exhub_schemas::Registry::builtin().unwrap();
        let mapping: crate::TableMapping = toml::from_str(
            r#"
            table = "nsr_djxx"
            doc_type = "tax.registration"
            key = ["nsrsbh"]
            fields = { taxpayer_id = "nsrsbh", name = "nsrmc", registered_at = "djrq", registration_type = "djzclx", taxpayer_status = "nsrzt", district = "ssqx", capital = "zczb", updated_at = "xgsj" }
            "#,
        )
        .unwrap();
        let mapper = Mapper::new(&mapping, &registry, 0).unwrap();
        let identity = SourceIdentity {
            name: "legacy".into(),
            org: "nanhai.tax".into(),
            kind: "mysql",
            db: "ctais".into(),
            amqp_user: "nanhai.tax".into(),
            topology: Topology::new("t"),
            signer: None,
        };
        // Nothing listens there; the token is cancelled: the publish gives up at once.
        let mut publisher = Publisher::new("amqp://u@127.0.0.1:1/%2f", "test", crate::publisher::Declare::Nothing);
        let mut out = Outbox::new(identity, &mut publisher);
        let position = RowPosition {
            position: "mysql-bin.000001:4".into(),
            tx: "mysql-bin.000001:4".into(),
            seq: 1,
            committed_micros: 0,
        };
        out.row(&mapper, Op::Upsert, |_| None, &position);
        assert_eq!(out.pending(), 1, "the row became a dead letter");
        let cancel = CancellationToken::new();
        cancel.cancel();
        assert!(out.flush(&cancel).await.is_err());
        assert_eq!(out.pending(), 1, "the dead letter is still pending");
    }

    #[test]
    fn batches_are_cut_by_count_and_by_bytes() {
        let docs: Vec<Vec<u8>> = [3, 3, 3, 10, 1, 1].iter().map(|n| vec![0u8; *n]).collect();
        let sizes = |runs: Vec<&[Vec<u8>]>| runs.iter().map(|r| r.len()).collect::<Vec<_>>();
        assert_eq!(sizes(super::batches(&docs, 2, 100)), [2, 2, 2]);
        assert_eq!(sizes(super::batches(&docs, 100, 7)), [2, 1, 1, 2]);
        assert!(super::batches::<Vec<u8>>(&[], 2, 7).is_empty());
    }
}
