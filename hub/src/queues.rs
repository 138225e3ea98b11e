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

use crate::metrics::{Metrics, QueueLabels};

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
    shutdown: CancellationToken,
) {
    let name = format!("exhub-hub-{}-queues", std::process::id());
    let mut conn: Option<Connection> = None;
    let mut failing = false;
    let mut every = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = every.tick() => {}
        }
        if conn.as_ref().is_none_or(|c| !c.status().connected()) {
            conn = amqp::connect(&url, &name)
                .await
                .inspect_err(|e| failed(&metrics, &mut failing, e))
                .ok();
        }
        let Some(c) = &conn else { continue };
        match read(c, &queues, &metrics).await {
            Ok(()) if failing => {
                tracing::info!("queue depths are read again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) => {
                failed(&metrics, &mut failing, &e);
                conn = None;
            }
        }
    }
    if let Some(c) = conn {
        let _ = c.close(200, "shutdown".into()).await;
    }
}

/// A round failed: the gauges are cleared, and the first failure in a row is logged.
fn failed(metrics: &Metrics, failing: &mut bool, e: &AmqpError) {
    metrics.queue_messages.clear();
    metrics.queue_consumers.clear();
    if !*failing {
        tracing::warn!(error = %e, "queue depths cannot be read; the gauges are empty until they can");
        *failing = true;
    }
}

/// One round: each queue's depth and consumers into the gauges.
async fn read(conn: &Connection, queues: &[(QueueLabels, String)], metrics: &Metrics) -> Result<(), AmqpError> {
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
            }
            // Not declared (yet): no figure; the broker closed the channel, so the next queue
            // gets a new one.
            Err(_) => {
                metrics.queue_messages.remove(labels);
                metrics.queue_consumers.remove(labels);
                channel = None;
            }
        }
    }
    if let Some(ch) = channel {
        let _ = ch.close(200, "done".into()).await;
    }
    Ok(())
}
