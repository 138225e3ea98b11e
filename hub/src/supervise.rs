//! Supervision's one watcher: of all the hub processes of an exchange, one weighs the readings
//! ([`crate::alerts`]) and says when an alert's level changes — so that a change is said once,
//! not once per process. The watcher is whichever process holds the exclusive queue
//! `<p>.supervisor` (RabbitMQ gives an exclusive queue to one connection and deletes it when that
//! connection dies; another process then takes it within [`RETRY`]).
//!
//! Each change is logged, set in `exhub_alert_level`, and published to the hub's own ingress as a
//! `supervision.alert` document of org [`HUB_ORG`] with the broker's confirm: the hub archives
//! and audits it and routes it like any other document (to the supervision office's feed, a
//! database, a webhook gateway). A new watcher starts from the levels those documents left in
//! the archive (the last 30 days), so a change of watcher neither repeats an open alert nor
//! leaves one open whose cause was put right meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use exhub_connect::amqp::{self, AmqpError, Backoff};
use exhub_connect::publisher::Declare;
use exhub_connect::{Outgoing, Publisher, Topology, wire};
use exhub_schemas::{Classification, Decimal, Document, Encoding, Header, Op, Sender, Timestamp, Value};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

use crate::alerts::{ALERT_DOC_TYPE, Alerts, HUB_ORG, Level, Metric, Readings, Rules, Transition};
use crate::metrics::{AlertLabels, Metrics};

/// How often the readings are weighed.
pub const EVERY: Duration = Duration::from_secs(1);
/// How often a process that is not the watcher tries to become it.
pub const RETRY: Duration = Duration::from_secs(5);

/// What the watcher needs.
pub struct Watcher {
    /// The hub's AMQP URL (its own login).
    pub url: String,
    /// The exchange's names.
    pub topology: Topology,
    /// The hub's AMQP user (`user_id` of its alerts).
    pub user: String,
    /// The thresholds.
    pub rules: Rules,
    /// What is read.
    pub readings: Arc<Readings>,
    /// `exhub_alert_level`.
    pub metrics: Arc<Metrics>,
    /// The archive, where a new watcher reads the levels its predecessor left.
    pub archive_url: String,
}

/// Why this process is not (or no longer) the watcher.
#[derive(Debug, thiserror::Error)]
enum NotWatching {
    #[error("another hub process watches")]
    Taken,
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error("the connection was lost")]
    Lost,
}

/// Watches until `shutdown`, whenever this process holds the watch.
pub async fn watch(w: Watcher, shutdown: CancellationToken) {
    let name = format!("exhub-hub-{}-supervisor", std::process::id());
    let mut backoff = Backoff::default();
    let mut said = None::<String>;
    loop {
        let result = watch_once(&w, &name, &shutdown).await;
        let text = match &result {
            Ok(()) => return,
            Err(NotWatching::Taken) => "taken".to_owned(),
            Err(e) => e.to_string(),
        };
        if said.as_deref() != Some(text.as_str()) {
            match result {
                Err(NotWatching::Taken) => tracing::info!("another hub process watches the alerts; this one stands by"),
                _ => tracing::warn!(error = %text, "the alerts are not watched from this process until it reconnects"),
            }
            said = Some(text);
        }
        let waited = if matches!(result, Err(NotWatching::Taken)) {
            backoff = Backoff::default();
            tokio::select! {
                () = shutdown.cancelled() => Err(AmqpError::Cancelled),
                () = tokio::time::sleep(RETRY) => Ok(()),
            }
        } else {
            backoff.wait(&shutdown).await
        };
        if waited.is_err() {
            return;
        }
    }
}

async fn watch_once(w: &Watcher, name: &str, shutdown: &CancellationToken) -> Result<(), NotWatching> {
    let conn = amqp::connect(&w.url, name).await?;
    let channel = conn.create_channel().await.map_err(AmqpError::from)?;
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    if let Err(e) = channel
        .queue_declare(
            w.topology.supervisor_queue().as_str().into(),
            options,
            FieldTable::default(),
        )
        .await
    {
        let _ = conn.close(200, "standing by".into()).await;
        return Err(if amqp::is_resource_locked(&e) {
            NotWatching::Taken
        } else {
            AmqpError::from(e).into()
        });
    }
    tracing::info!("this hub process watches the alerts");
    let mut publisher = Publisher::new(w.url.clone(), format!("{name}-alerts"), Declare::Nothing);
    let mut alerts = Alerts::new();
    seed(&mut alerts, w).await;
    let mut ticks = tokio::time::interval(EVERY);
    let result = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            _ = ticks.tick() => {}
        }
        if !conn.status().connected() {
            break Err(NotWatching::Lost);
        }
        let changes = alerts.step(&w.readings.all(), &w.rules, Instant::now());
        if changes.is_empty() {
            continue;
        }
        let mut out = Vec::with_capacity(changes.len());
        for t in &changes {
            say(t);
            let labels = AlertLabels {
                metric: t.metric.name().to_owned(),
                scope: t.scope.clone(),
            };
            w.metrics.alert_level.get_or_create(&labels).set(t.to as i64);
            out.push(alert_message(t, &w.topology, &w.user));
        }
        if let Err(e) = publisher.publish(&out, shutdown).await {
            tracing::warn!(error = %e, alerts = out.len(), "supervision.alert documents not published (logged above)");
        }
    };
    let _ = conn.close(200, "done".into()).await;
    result
}

/// Takes the open alerts' levels from the archive (the last 30 days), so that a new watcher
/// neither raises again what is still open nor leaves open what was put right meanwhile. An
/// archive that cannot be read leaves every alert clear (what is wrong is raised again).
async fn seed(alerts: &mut Alerts, w: &Watcher) {
    let since = exhub_schemas::time::unix_micros_now() - 30 * 86_400_000_000;
    let read = async {
        let archive = crate::archive::Archive::open(&w.archive_url).await?;
        let rows = crate::alerts::history(&archive, since, 100_000).await;
        archive.close().await;
        rows
    };
    match read.await {
        Ok(rows) => {
            for row in crate::alerts::open(rows) {
                if let (Some(metric), Some(level)) = (Metric::parse(&row.metric), Level::parse(&row.level)) {
                    alerts.seed(metric, &row.scope, level);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "the open alerts cannot be read; they start clear"),
    }
}

/// Logs a change: red as an error, yellow as a warning, a clearing as information.
fn say(t: &Transition) {
    let (alert, message) = (t.alert_id(), t.message());
    match t.to {
        Level::Red => tracing::error!(%alert, level = "red", %message, "告警 alert"),
        Level::Yellow => tracing::warn!(%alert, level = "yellow", %message, "预警 alert"),
        Level::Clear => tracing::info!(%alert, level = "clear", %message, "alert cleared"),
    }
}

/// A change as a `supervision.alert` message to the ingress, as the hub's user.
pub fn alert_message(t: &Transition, topology: &Topology, user: &str) -> Outgoing {
    let doc = alert_document(t, Timestamp::now());
    let payload = exhub_schemas::json::encode(&doc);
    Outgoing {
        exchange: topology.ingress_exchange(),
        routing_key: String::new(),
        properties: wire::document_properties(&doc, Encoding::Json, user),
        payload,
    }
}

/// The document of a change at `at`.
pub fn alert_document(t: &Transition, at: Timestamp) -> Document {
    let id = t.alert_id();
    let text = |s: &str| Value::Text(s.to_owned());
    let mut body = std::collections::BTreeMap::new();
    body.insert("alert".to_owned(), text(&id));
    body.insert("rule".to_owned(), t.rule.as_deref().map_or(Value::Null, text));
    body.insert("metric".to_owned(), text(t.metric.name()));
    body.insert("scope".to_owned(), text(&t.scope));
    body.insert("level".to_owned(), text(t.to.as_str()));
    body.insert("previous".to_owned(), text(t.from.as_str()));
    body.insert("value".to_owned(), decimal(t.value));
    body.insert("threshold".to_owned(), decimal(t.threshold));
    body.insert("at".to_owned(), Value::Timestamp(at.clone()));
    body.insert("message".to_owned(), text(&t.message()));
    Document {
        header: Header {
            id: uuid::Uuid::now_v7(),
            doc_type: ALERT_DOC_TYPE.to_owned(),
            schema_version: 1,
            op: Op::Upsert,
            sender: Sender {
                org: HUB_ORG.to_owned(),
                system: Some("supervision".to_owned()),
            },
            key: [("alert".to_owned(), text(&id))].into(),
            source: None,
            conversation_id: None,
            in_reply_to: None,
            created_at: at,
            classification: Classification::Internal,
            test: false,
            content_hash: None,
            signature: None,
        },
        body,
    }
}

/// `value` as a decimal of at most three places (a value that is not a number as 0).
fn decimal(value: f64) -> Value {
    let v = if value.is_finite() { value } else { 0.0 };
    let text = format!("{v:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    let text = if text == "-0" || text.is_empty() { "0" } else { text };
    Decimal::parse(text).map_or(Value::Null, Value::Decimal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::Metric;

    #[test]
    fn an_alert_document_passes_its_schema() {
        let registry = exhub_schemas::Registry::builtin().unwrap();
        let t = Transition {
            metric: Metric::QueueMessages,
            scope: "subscriber:tax-mirror".into(),
            from: Level::Clear,
            to: Level::Yellow,
            value: 12.0,
            threshold: 10.0,
            rule: None,
        };
        let doc = alert_document(&t, Timestamp::now());
        assert!(registry.validate(&doc).is_empty(), "{:?}", registry.validate(&doc));
        let raw = exhub_schemas::json::encode(&doc);
        let back = exhub_schemas::decode(&raw, &registry, &exhub_schemas::Limits::default()).unwrap();
        assert_eq!(back.body["value"], Value::Decimal(Decimal::parse("12").unwrap()));
        assert_eq!(back.header.sender.org, HUB_ORG);
        assert_eq!(decimal(0.1234), Value::Decimal(Decimal::parse("0.123").unwrap()));
        assert_eq!(decimal(-0.0001), Value::Decimal(Decimal::parse("0").unwrap()));
        assert_eq!(decimal(f64::NAN), Value::Decimal(Decimal::parse("0").unwrap()));
    }
}
