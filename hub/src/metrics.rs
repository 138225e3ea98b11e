//! The hub's metrics, in the Prometheus text format (OpenMetrics), that `GET /metrics` on the
//! admin address serves ([`crate::admin`]). The workers count here what they do; the names and
//! labels are listed in README.md ("Metrics"), and a test holds that table to the code. Every label takes its values
//! from a bounded set: orgs, doc types and subscribers of routes.toml, and reason codes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A publishing org and a doc type.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DocLabels {
    /// The sender org (`header.sender.org`).
    pub org: String,
    /// The doc type.
    pub doc_type: String,
}

/// Why the hub refused a document, and whose it was.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// The org of the AMQP user that published it (empty when the user is none of the orgs').
    pub org: String,
    /// The reason code (`malformed`, `schema`, `unauthorized`, …).
    pub reason: String,
}

/// A subscriber.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriberLabels {
    /// The subscriber's name in routes.toml.
    pub subscriber: String,
}

/// A subscriber's dead letters, by reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLetterLabels {
    /// The subscriber whose DLQ it went to.
    pub subscriber: String,
    /// The reason code the subscriber gave (`apply`, `malformed`, `unauthenticated`, …).
    pub reason: String,
}

/// A subscriber and what became of documents: what its receipts say, or what its sink counted.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReceiptLabels {
    /// The subscriber's name in routes.toml.
    pub subscriber: String,
    /// `applied` or `refused`.
    pub outcome: String,
}

/// A part of the exchange that reports heartbeats.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartLabels {
    /// `source` or `sink`.
    pub role: String,
    /// Its name in routes.toml.
    pub part: String,
}

/// A source.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// Its name in routes.toml.
    pub source: String,
}

/// Why something was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The reason code.
    pub reason: String,
}

/// An alert.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    /// The metric watched (`queue_messages`, …).
    pub metric: String,
    /// What it is about (`subscriber:<name>`, `source:<name>`, `hub`, …).
    pub scope: String,
}

/// A route and one of its subscribers.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route's name in routes.toml.
    pub route: String,
    /// The subscriber it sent the document to.
    pub subscriber: String,
}

/// A gauge of a fractional value.
pub type FloatGauge = Gauge<f64, AtomicU64>;

/// One of the exchange's queues.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// `ingress`, `hub_dlq`, `subscriber` or `subscriber_dlq`.
    pub queue: String,
    /// The subscriber whose queue it is (empty for the hub's).
    pub subscriber: String,
}

/// What the hub's workers count. Cheap to update from every worker (atomics behind a lock
/// taken only to add a label set not seen before).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `exhub_documents_received_total{org, doc_type}`: documents admitted and archived for
    /// the first time.
    pub received: Family<DocLabels, Counter>,
    /// `exhub_documents_duplicate_total{org, doc_type}`: documents whose id was archived
    /// before (a redelivery, or a sender sending again).
    pub duplicates: Family<DocLabels, Counter>,
    /// `exhub_documents_refused_total{org, reason}`: documents and messages sent to the hub's
    /// DLQ.
    pub refused: Family<RefusedLabels, Counter>,
    /// `exhub_documents_routed_total{route, subscriber}`: new documents each route sent to each
    /// of its subscribers.
    pub routed: Family<RouteLabels, Counter>,
    /// `exhub_copies_published_total{subscriber}`: copies the broker confirmed in a
    /// subscriber's queue.
    pub published: Family<SubscriberLabels, Counter>,
    /// `exhub_receipts_total{subscriber, outcome}`: documents named in subscribers' receipts.
    pub receipts: Family<ReceiptLabels, Counter>,
    /// `exhub_dead_letters_total{subscriber, reason}`: what subscribers could not take, filed
    /// by the hub into their DLQs.
    pub dead_letters: Family<DeadLetterLabels, Counter>,
    /// `exhub_archive_write_seconds`: one batch's durable write to the archive.
    pub archive_write: Histogram,
    /// `exhub_archived_after_seconds`: from a document's `header.created_at` (its source read
    /// the change) to the hub archiving it.
    pub archived_after: Histogram,
    /// `exhub_queue_messages{queue, subscriber}`: messages in each of the exchange's queues, as
    /// the broker last said ([`crate::queues`]).
    pub queue_messages: Family<QueueLabels, Gauge>,
    /// `exhub_queue_consumers{queue, subscriber}`: consumers of each queue.
    pub queue_consumers: Family<QueueLabels, Gauge>,
    /// `exhub_unapplied_copies{subscriber}`: copies routed to a database subscriber in the last
    /// day with no receipt yet ([`crate::deliveries`]).
    pub unapplied: Family<SubscriberLabels, Gauge>,
    /// `exhub_oldest_unapplied_copy_seconds{subscriber}`: how long the oldest of them has
    /// waited (0 when none).
    pub oldest_unapplied: Family<SubscriberLabels, FloatGauge>,
    /// `exhub_part_up{role, part}`: 1 while a part's heartbeats come, 0 once it is silent,
    /// stopped or never heard from ([`crate::parts`]).
    pub part_up: Family<PartLabels, Gauge>,
    /// `exhub_part_silent_seconds{role, part}`: since its last heartbeat.
    pub part_silent: Family<PartLabels, FloatGauge>,
    /// `exhub_source_lag_seconds{source}`: how far it reads behind its database.
    pub source_lag: Family<SourceLabels, FloatGauge>,
    /// `exhub_source_events_per_second{source}`: changes read per second.
    pub source_events_per_second: Family<SourceLabels, FloatGauge>,
    /// `exhub_source_log_retained_bytes{source}`: log its database keeps for it.
    pub log_retained: Family<SourceLabels, FloatGauge>,
    /// `exhub_source_log_headroom_seconds{source}`: before its oldest needed change expires.
    pub log_headroom_seconds: Family<SourceLabels, FloatGauge>,
    /// `exhub_source_log_headroom_bytes{source}`: WAL before its slot is lost.
    pub log_headroom_bytes: Family<SourceLabels, FloatGauge>,
    /// `exhub_snapshot_rows_done{source}`: rows of the table being snapshotted read so far.
    pub snapshot_rows_done: Family<SourceLabels, FloatGauge>,
    /// `exhub_snapshot_rows_total{source}`: that table's estimated rows.
    pub snapshot_rows_total: Family<SourceLabels, FloatGauge>,
    /// `exhub_sink_documents{subscriber, outcome}`: applied and refused since the sink started.
    pub sink_documents: Family<ReceiptLabels, Gauge>,
    /// `exhub_sink_applied_after_seconds{subscriber}`: created → applied, its last batch.
    pub sink_applied_after: Family<SubscriberLabels, FloatGauge>,
    /// `exhub_status_refused_total{reason}`: heartbeats dropped.
    pub status_refused: Family<ReasonLabels, Counter>,
    /// `exhub_alert_level{metric, scope}`: 0 clear, 1 yellow, 2 red (alerts raised since this
    /// process began watching).
    pub alert_level: Family<AlertLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric registered, at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("exhub");
        let received = Family::<DocLabels, Counter>::default();
        let duplicates = Family::<DocLabels, Counter>::default();
        let refused = Family::<RefusedLabels, Counter>::default();
        let published = Family::<SubscriberLabels, Counter>::default();
        let routed = Family::<RouteLabels, Counter>::default();
        let receipts = Family::<ReceiptLabels, Counter>::default();
        let dead_letters = Family::<DeadLetterLabels, Counter>::default();
        let queue_messages = Family::<QueueLabels, Gauge>::default();
        let queue_consumers = Family::<QueueLabels, Gauge>::default();
        let unapplied = Family::<SubscriberLabels, Gauge>::default();
        let oldest_unapplied = Family::<SubscriberLabels, FloatGauge>::default();
        let part_up = Family::<PartLabels, Gauge>::default();
        let part_silent = Family::<PartLabels, FloatGauge>::default();
        let source_lag = Family::<SourceLabels, FloatGauge>::default();
        let source_events_per_second = Family::<SourceLabels, FloatGauge>::default();
        let log_retained = Family::<SourceLabels, FloatGauge>::default();
        let log_headroom_seconds = Family::<SourceLabels, FloatGauge>::default();
        let log_headroom_bytes = Family::<SourceLabels, FloatGauge>::default();
        let snapshot_rows_done = Family::<SourceLabels, FloatGauge>::default();
        let snapshot_rows_total = Family::<SourceLabels, FloatGauge>::default();
        let sink_documents = Family::<ReceiptLabels, Gauge>::default();
        let sink_applied_after = Family::<SubscriberLabels, FloatGauge>::default();
        let status_refused = Family::<ReasonLabels, Counter>::default();
        let alert_level = Family::<AlertLabels, Gauge>::default();
        // 0.5 ms to ~33 s, doubling.
        let archive_write = Histogram::new(exponential_buckets(0.0005, 2.0, 17));
        // 1 ms to ~65 s, doubling.
        let archived_after = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "documents_received",
            "Documents admitted and archived for the first time",
            received.clone(),
        );
        registry.register(
            "documents_duplicate",
            "Documents whose id was archived before",
            duplicates.clone(),
        );
        registry.register(
            "documents_refused",
            "Documents and messages the hub sent to its dead-letter queue",
            refused.clone(),
        );
        registry.register(
            "documents_routed",
            "New documents each route sent to each of its subscribers",
            routed.clone(),
        );
        registry.register(
            "copies_published",
            "Copies the broker confirmed in a subscriber's queue",
            published.clone(),
        );
        registry.register(
            "receipts",
            "Documents named in subscribers' receipts, by outcome",
            receipts.clone(),
        );
        registry.register(
            "dead_letters",
            "What subscribers could not take, filed into their dead-letter queues",
            dead_letters.clone(),
        );
        registry.register_with_unit(
            "archive_write",
            "One batch's durable write to the archive",
            Unit::Seconds,
            archive_write.clone(),
        );
        registry.register_with_unit(
            "archived_after",
            "From a document's created_at (its source read the change) to the hub archiving it",
            Unit::Seconds,
            archived_after.clone(),
        );
        registry.register(
            "queue_messages",
            "Messages in each of the exchange's queues, as the broker last said",
            queue_messages.clone(),
        );
        registry.register(
            "queue_consumers",
            "Consumers of each of the exchange's queues",
            queue_consumers.clone(),
        );
        registry.register(
            "unapplied_copies",
            "Copies routed to a database subscriber in the last day with no receipt yet",
            unapplied.clone(),
        );
        registry.register_with_unit(
            "oldest_unapplied_copy",
            "How long the oldest copy without a receipt has waited",
            Unit::Seconds,
            oldest_unapplied.clone(),
        );
        registry.register("part_up", "1 while a part's heartbeats come", part_up.clone());
        registry.register_with_unit(
            "part_silent",
            "Since a part's last heartbeat",
            Unit::Seconds,
            part_silent.clone(),
        );
        registry.register_with_unit(
            "source_lag",
            "How far a source reads behind its database",
            Unit::Seconds,
            source_lag.clone(),
        );
        registry.register(
            "source_events_per_second",
            "Changes a source read per second",
            source_events_per_second.clone(),
        );
        registry.register_with_unit(
            "source_log_retained",
            "Log the database keeps for a source (slot WAL, binlog)",
            Unit::Bytes,
            log_retained.clone(),
        );
        registry.register_with_unit(
            "source_log_headroom",
            "Before the oldest change a source needs expires",
            Unit::Seconds,
            log_headroom_seconds.clone(),
        );
        registry.register_with_unit(
            "source_log_headroom",
            "WAL before a source's slot is lost (max_slot_wal_keep_size)",
            Unit::Bytes,
            log_headroom_bytes.clone(),
        );
        registry.register(
            "snapshot_rows_done",
            "Rows of the table being snapshotted read so far",
            snapshot_rows_done.clone(),
        );
        registry.register(
            "snapshot_rows_total",
            "Estimated rows of the table being snapshotted",
            snapshot_rows_total.clone(),
        );
        registry.register(
            "sink_documents",
            "Documents a sink applied or refused since it started",
            sink_documents.clone(),
        );
        registry.register_with_unit(
            "sink_applied_after",
            "From created_at to applied, a sink's last batch",
            Unit::Seconds,
            sink_applied_after.clone(),
        );
        registry.register(
            "status_refused",
            "Heartbeats dropped, by reason",
            status_refused.clone(),
        );
        registry.register(
            "alert_level",
            "Each alert's level: 0 clear, 1 yellow, 2 red",
            alert_level.clone(),
        );
        Metrics {
            registry,
            received,
            duplicates,
            refused,
            routed,
            published,
            receipts,
            dead_letters,
            archive_write,
            archived_after,
            queue_messages,
            queue_consumers,
            unapplied,
            oldest_unapplied,
            part_up,
            part_silent,
            source_lag,
            source_events_per_second,
            log_retained,
            log_headroom_seconds,
            log_headroom_bytes,
            snapshot_rows_done,
            snapshot_rows_total,
            sink_documents,
            sink_applied_after,
            status_refused,
            alert_level,
        }
    }

    /// The text a scrape gets (OpenMetrics, which Prometheus reads).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Gauges the hub reads from outside itself (the broker's queues, the archive), a round at a
/// time ([`sample_every`]).
pub(crate) trait Sampled {
    /// Why a round failed.
    type Error: std::fmt::Display;
    /// What the gauges show, for the log.
    const WHAT: &'static str;
    /// Reads every figure into the gauges; after a failure the next round starts afresh
    /// (connects again).
    fn read(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Empties the gauges.
    fn clear(&self);
}

/// Runs `gauges`' rounds every `every` until `shutdown`. When a round fails its gauges are
/// cleared (no figure rather than an old one) and the first failure in a row is logged; so is
/// the first success after one.
pub(crate) async fn sample_every<S: Sampled>(every: Duration, gauges: &mut S, shutdown: &CancellationToken) {
    let what = S::WHAT;
    let mut failing = false;
    let mut ticks = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match gauges.read().await {
            Ok(()) if failing => {
                tracing::info!("{what} are read again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) => {
                gauges.clear();
                if !failing {
                    tracing::warn!(error = %e, "{what} cannot be read; the gauges are empty until they can");
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_in_the_text_under_their_documented_names() {
        let m = Metrics::new();
        let doc = DocLabels {
            org: "nanhai.tax".into(),
            doc_type: "tax.registration".into(),
        };
        m.received.get_or_create(&doc).inc_by(3);
        m.archive_write.observe(0.002);
        let text = m.encode().unwrap();
        assert!(
            text.contains(r#"exhub_documents_received_total{org="nanhai.tax",doc_type="tax.registration"} 3"#),
            "{text}"
        );
        assert!(text.contains("# TYPE exhub_archive_write_seconds histogram"), "{text}");
        assert!(text.contains("exhub_archive_write_seconds_count 1"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn the_readme_lists_every_metric_and_only_those() {
        let m = Metrics::new();
        // A sample in every family: an empty family is not written.
        let doc = DocLabels {
            org: "o".into(),
            doc_type: "d".into(),
        };
        let queue = QueueLabels {
            queue: "ingress".into(),
            subscriber: String::new(),
        };
        m.received.get_or_create(&doc).inc();
        m.duplicates.get_or_create(&doc).inc();
        m.refused
            .get_or_create(&RefusedLabels {
                org: "o".into(),
                reason: "malformed".into(),
            })
            .inc();
        m.published
            .get_or_create(&SubscriberLabels { subscriber: "s".into() })
            .inc();
        m.routed
            .get_or_create(&RouteLabels {
                route: "r".into(),
                subscriber: "s".into(),
            })
            .inc();
        m.receipts
            .get_or_create(&ReceiptLabels {
                subscriber: "s".into(),
                outcome: "applied".into(),
            })
            .inc();
        m.dead_letters
            .get_or_create(&DeadLetterLabels {
                subscriber: "s".into(),
                reason: "apply".into(),
            })
            .inc();
        m.queue_messages.get_or_create(&queue).set(1);
        let sub = SubscriberLabels { subscriber: "s".into() };
        m.unapplied.get_or_create(&sub).set(1);
        m.oldest_unapplied.get_or_create(&sub).set(1.5);
        m.queue_consumers.get_or_create(&queue).set(1);
        let part = PartLabels {
            role: "source".into(),
            part: "p".into(),
        };
        let src = SourceLabels { source: "p".into() };
        m.part_up.get_or_create(&part).set(1);
        m.part_silent.get_or_create(&part).set(1.0);
        for f in [
            &m.source_lag,
            &m.source_events_per_second,
            &m.log_retained,
            &m.log_headroom_seconds,
            &m.log_headroom_bytes,
            &m.snapshot_rows_done,
            &m.snapshot_rows_total,
        ] {
            f.get_or_create(&src).set(1.0);
        }
        m.sink_documents
            .get_or_create(&ReceiptLabels {
                subscriber: "s".into(),
                outcome: "applied".into(),
            })
            .set(1);
        m.sink_applied_after.get_or_create(&sub).set(0.5);
        m.status_refused
            .get_or_create(&ReasonLabels {
                reason: "malformed".into(),
            })
            .inc();
        m.alert_level
            .get_or_create(&AlertLabels {
                metric: "queue_messages".into(),
                scope: "subscriber:s".into(),
            })
            .set(1);
        let text = m.encode().unwrap();
        let encoded: std::collections::BTreeSet<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| match l.split_once(' ') {
                Some((name, "counter")) => format!("{name}_total"),
                Some((name, _)) => name.to_owned(),
                None => l.to_owned(),
            })
            .collect();
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let documented: std::collections::BTreeSet<String> = readme
            .lines()
            .filter_map(|l| l.strip_prefix("| `exhub_"))
            .filter_map(|rest| rest.split('`').next())
            .map(|name| format!("exhub_{name}"))
            .collect();
        assert_eq!(encoded, documented, "README.md's metrics table and the metrics differ");
    }
}
