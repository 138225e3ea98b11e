//! Dead letters (the documents the hub or a subscriber could not take), for `exhub dlq` and the
//! console alike: [`list`] shows a DLQ without consuming it (messages are fetched unacknowledged
//! and returned; DLQs have no delivery limit, so looking does not wear them out), [`retry`]
//! sends the hub DLQ's messages back through the hub, acknowledging each only after the ingress
//! confirmed its copy. Whoever calls `retry` records it in the audit log.

use exhub_connect::Topology;
use exhub_connect::amqp::{self, AmqpError};
use exhub_connect::wire::{self, header};
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use serde::Serialize;

/// One dead letter as people read it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Its message id (the document's id when it was one).
    pub id: String,
    /// Its AMQP type (the doc type, `exhub.batch`, …).
    pub kind: String,
    /// The reason code (`schema`, `unauthenticated`, … or RabbitMQ's, e.g. `delivery_limit`).
    pub reason: String,
    /// Who published it first (its AMQP user).
    pub sender: String,
    /// What exactly was wrong.
    pub detail: String,
    /// Its size in bytes.
    pub bytes: usize,
}

/// What a retry did.
#[derive(Debug, Default, Serialize)]
pub struct Retried {
    /// Sent back through the hub: (message id, its first publisher).
    pub sent: Vec<(String, Option<String>)>,
    /// Left in the DLQ (not chosen, or not confirmed by the ingress).
    pub kept: usize,
}

/// Fetches up to `limit` messages of `queue` without acknowledging them.
async fn fetch(channel: &Channel, queue: &str, limit: usize) -> Result<Vec<BasicGetMessage>, AmqpError> {
    let mut messages = Vec::new();
    while messages.len() < limit {
        match channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await?
        {
            Some(m) => messages.push(m),
            None => break,
        }
    }
    Ok(messages)
}

/// Up to `limit` dead letters of `queue`, left in it.
pub async fn list(conn: &Connection, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, AmqpError> {
    let channel = conn.create_channel().await?;
    let messages = fetch(&channel, queue, limit).await;
    let out = messages.map(|ms| {
        ms.iter()
            .map(|m| {
                let p = &m.delivery.properties;
                DeadLetter {
                    id: p.message_id().as_ref().map_or("-", |s| s.as_str()).to_owned(),
                    kind: p.kind().as_ref().map_or("-", |s| s.as_str()).to_owned(),
                    reason: reason(p),
                    sender: wire::header_str(p, header::USER).unwrap_or_else(|| "-".into()),
                    detail: wire::header_str(p, header::DETAIL).unwrap_or_default(),
                    bytes: m.delivery.data.len(),
                }
            })
            .collect()
    });
    // Closing without acknowledging returns every fetched message to the queue.
    let _ = channel.close(200, "listed".into()).await;
    out
}

/// The reason code: exhub's own header, or RabbitMQ's when the broker dead-lettered it.
fn reason(p: &BasicProperties) -> String {
    if let Some(r) = wire::header_str(p, header::REASON) {
        return r;
    }
    let death = p
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-first-death-reason").cloned());
    match death {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        _ => "-".into(),
    }
}

/// Returns a fetched message to its queue.
async fn requeue(channel: &Channel, tag: u64) -> Result<(), AmqpError> {
    let options = BasicNackOptions {
        multiple: false,
        requeue: true,
    };
    channel.basic_nack(tag, options).await?;
    Ok(())
}

/// Sends the hub DLQ's messages back through the hub as the hub's user `user`: the one with
/// message id `id`, or all that are there now (a retried document that fails again does not
/// loop). Each keeps its first publisher in `x-exhub-user` (empty when unknown: a retried
/// message never passes for the hub's own) and its signature, which the hub checks again.
pub async fn retry(conn: &Connection, topology: &Topology, user: &str, id: Option<&str>) -> Result<Retried, AmqpError> {
    let queue = topology.hub_dlq();
    let channel = conn.create_channel().await?;
    let publish = amqp::confirmed_channel(conn).await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let waiting = channel
        .queue_declare(queue.as_str().into(), passive, FieldTable::default())
        .await?
        .message_count();
    let messages = fetch(&channel, &queue, waiting as usize).await?;
    let mut done = Retried::default();
    for m in &messages {
        let p = &m.delivery.properties;
        let matches = id.is_none_or(|id| p.message_id().as_ref().is_some_and(|m| m.as_str() == id));
        if !matches {
            requeue(&channel, m.delivery.delivery_tag).await?;
            done.kept += 1;
            continue;
        }
        // Who published it first: `x-exhub-user` only on a message the hub itself wrote
        // (RabbitMQ verified its user_id); on anything else, its own verified user_id.
        let verified = p.user_id().as_ref().map(|u| u.as_str().to_owned());
        let original = if verified.as_deref() == Some(user) {
            wire::header_str(p, header::USER)
        } else {
            verified
        };
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_user_id(user.into());
        if let Some(ct) = p.content_type() {
            props = props.with_content_type(ct.clone());
        }
        if let Some(mid) = p.message_id() {
            props = props.with_message_id(mid.clone());
        }
        if let Some(t) = p.kind() {
            props = props.with_type(t.clone());
        }
        props = wire::with_header(props, header::USER, original.as_deref().unwrap_or(""));
        if let Some(signature) = wire::header_str(p, exhub_connect::sign::HEADER) {
            props = wire::with_header(props, exhub_connect::sign::HEADER, &signature);
        }
        let mandatory = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let confirm = publish
            .basic_publish(
                topology.ingress_exchange().as_str().into(),
                "".into(),
                mandatory,
                &m.delivery.data,
                props,
            )
            .await?
            .await?;
        if confirm.is_ack() && confirm.take_message().is_none() {
            channel
                .basic_ack(m.delivery.delivery_tag, BasicAckOptions::default())
                .await?;
            let mid = p.message_id().as_ref().map(|m| m.to_string()).unwrap_or_default();
            done.sent.push((mid, original));
        } else {
            requeue(&channel, m.delivery.delivery_tag).await?;
            done.kept += 1;
        }
    }
    let _ = channel.close(200, "retried".into()).await;
    let _ = publish.close(200, "retried".into()).await;
    Ok(done)
}
