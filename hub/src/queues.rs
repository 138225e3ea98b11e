//! The broker's queue depths as metrics: every [`EVERY`], the hub asks RabbitMQ how many
//! messages and consumers each of the exchange's queues holds (a passive declare, which needs
//! no management API and no login beyond the hub's own) and sets the gauges
//! `exhub_queue_messages` and `exhub_queue_consumers`. A subscriber whose queue grows or has no
//! consumer is the first thing a supervisor looks for.

use std::sync::Arc;
use std::time::Duration;

use exhub_connect::Topology;
use exhub_connect::amqp::{self, AmqpError};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio_util::sync::CancellationToken;

use crate::alerts::{Metric, Readings};
use crate::metrics::{Metrics, QueueLabels, Sampled};

/// How often the depths are read.
pub const EVERY: Duration = Duration::from_secs(10);

/// Every queue of the exchange, with its labels: the ingress, the hub's DLQ, and each
/// subscriber's queue and DLQ.
pub fn queues(topology: &Topology, subscribers: &[String]) -> Vec<(QueueLabels, String)> {
    let label = |queue: &str, subscriber: &str| QueueLabels {
        queue: queue.to_owned(),
        subscriber: subscriber.to_owned(),
    };
    let mut out = vec![
        (label("ingress", ""), topology.ingress_queue()),
        (label("hub_dlq", ""), topology.hub_dlq()),
    ];
    for s in subscribers {
        out.push((label("subscriber", s), topology.subscriber_queue(s)));
        out.push((label("subscriber_dlq", s), topology.subscriber_dlq(s)));
    }
    out
}

/// Reads the depths every [`EVERY`] until `shutdown`. A failure (the broker restarting) is
/// logged, the gauges are cleared (no figure rather than an old one), and the next round
/// connects again; a queue not declared yet has no figure.
pub async fn sample(
    url: String,
    queues: Vec<(QueueLabels, String)>,
    metrics: Arc<Metrics>,
    readings: Arc<Readings>,
    shutdown: CancellationToken,
) {
    let mut depths = Depths {
        url,
        name: format!("exhub-hub-{}-queues", std::process::id()),
        conn: None,
        queues,
        metrics,
        readings,
    };
    crate::metrics::sample_every(EVERY, &mut depths, &shutdown).await;
    if let Some(c) = depths.conn {
        let _ = c.close(200, "shutdown".into()).await;
    }
}

/// The queues' depths, read on a connection of their own.
struct Depths {
    url: String,
    /// The connection's name.
    name: String,
    conn: Option<Connection>,
    queues: Vec<(QueueLabels, String)>,
    metrics: Arc<Metrics>,
    readings: Arc<Readings>,
}

impl Sampled for Depths {
    type Error = AmqpError;
    const WHAT: &'static str = "queue depths";

    async fn read(&mut self) -> Result<(), AmqpError> {
        let c = match self.conn.take() {
            Some(c) if c.status().connected() => c,
            _ => amqp::connect(&self.url, &self.name).await?,
        };
        let read = read(&c, &self.queues, &self.metrics, &self.readings).await;
        if read.is_ok() {
            self.conn = Some(c);
        }
        read
    }

    fn clear(&self) {
        self.metrics.queue_messages.clear();
        self.metrics.queue_consumers.clear();
        self.readings.clear(&[Metric::QueueMessages, Metric::DeadLetters]);
    }
}

/// The early warning's reading of a queue's depth: a subscriber's queue, and the DLQs.
fn watched(labels: &QueueLabels) -> Option<(Metric, String)> {
    let subscriber = || format!("subscriber:{}", labels.subscriber);
    match labels.queue.as_str() {
        "subscriber" => Some((Metric::QueueMessages, subscriber())),
        "subscriber_dlq" => Some((Metric::DeadLetters, subscriber())),
        "hub_dlq" => Some((Metric::DeadLetters, "hub".to_owned())),
        _ => None,
    }
}

/// One round: each queue's depth and consumers into the gauges.
async fn read(
    conn: &Connection,
    queues: &[(QueueLabels, String)],
    metrics: &Metrics,
    readings: &Readings,
) -> Result<(), AmqpError> {
    let mut channel: Option<Channel> = None;
    for (labels, queue) in queues {
        let ch = match &channel {
            Some(ch) => ch.clone(),
            None => {
                let ch = conn.create_channel().await?;
                channel = Some(ch.clone());
                ch
            }
        };
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match ch
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
        {
            Ok(q) => {
                metrics
                    .queue_messages
                    .get_or_create(labels)
                    .set(i64::from(q.message_count()));
                metrics
                    .queue_consumers
                    .get_or_create(labels)
                    .set(i64::from(q.consumer_count()));
                if let Some((metric, scope)) = watched(labels) {
                    readings.set(metric, &scope, f64::from(q.message_count()));
                }
            }
            // Not declared (yet): no figure; the broker closed the channel, so the next queue
            // gets a new one.
            Err(_) => {
                metrics.queue_messages.remove(labels);
                metrics.queue_consumers.remove(labels);
                if let Some((metric, scope)) = watched(labels) {
                    readings.remove(metric, &scope);
                }
                channel = None;
            }
        }
    }
    if let Some(ch) = channel {
        let _ = ch.close(200, "done".into()).await;
    }
    Ok(())
}
