//! `exhub dlq list` and `exhub dlq retry`: the documents the hub (or a subscriber) could not
//! take, with their reasons, and sending them back through the hub once the cause is fixed.
//!
//! Listing does not consume: messages are fetched unacknowledged and returned to the queue
//! (DLQs have no delivery limit, so looking does not wear them out). Retry acknowledges a
//! message only after the ingress exchange confirmed its copy.

use std::path::Path;

use anyhow::{Context as _, Result};
use exhub_connect::wire::{self, header};
use exhub_connect::{Topology, amqp};
use exhub_hub::router::Router;
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};

use super::load;

async fn open(path: &Path) -> Result<(Connection, Channel, Topology, String, String)> {
    let loaded = load(path)?;
    let config = &loaded.config;
    let router = Router::new(config)?;
    let topology = config.hub.topology();
    let conn = amqp::connect(config.hub.amqp.expose(), "exhub-dlq")
        .await
        .with_context(|| format!("connecting to {}", config.hub.amqp))?;
    let channel = conn.create_channel().await?;
    topology.declare_all(&channel, &router.subscribers()).await?;
    let user = config.hub.user();
    let queue = topology.hub_dlq();
    Ok((conn, channel, topology, user, queue))
}

/// Fetches up to `limit` messages of `queue` without acknowledging them.
async fn fetch(channel: &Channel, queue: &str, limit: usize) -> Result<Vec<BasicGetMessage>> {
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

/// Shows up to `limit` dead-lettered documents of the hub DLQ (or of `subscriber`'s DLQ).
pub async fn list(path: &Path, subscriber: Option<&str>, limit: usize) -> Result<()> {
    let (conn, channel, topology, _, hub_dlq) = open(path).await?;
    let queue = subscriber.map_or(hub_dlq, |s| topology.subscriber_dlq(s));
    let messages = fetch(&channel, &queue, limit).await?;
    for m in &messages {
        let p = &m.delivery.properties;
        println!(
            "{}\t{}\t{}\t{}\t{}",
            p.message_id().as_ref().map_or("-", |s| s.as_str()),
            p.kind().as_ref().map_or("-", |s| s.as_str()),
            reason(p),
            wire::header_str(p, header::USER).unwrap_or_else(|| "-".into()),
            wire::header_str(p, header::DETAIL).unwrap_or_default(),
        );
    }
    println!("{} dead-lettered document(s) shown from {queue}", messages.len());
    // Closing without acknowledging returns every fetched message to the queue.
    let _ = channel.close(200, "listed".into()).await;
    let _ = conn.close(200, "listed".into()).await;
    Ok(())
}

/// The reason code: exhub's own header, or RabbitMQ's when the broker dead-lettered it
/// (e.g. `delivery_limit` for a message nobody could take).
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
async fn requeue(channel: &Channel, tag: u64) -> Result<()> {
    let options = BasicNackOptions {
        multiple: false,
        requeue: true,
    };
    channel.basic_nack(tag, options).await?;
    Ok(())
}

/// Sends dead-lettered documents of the hub DLQ back through the hub: the one with message id
/// `id`, or all of them.
pub async fn retry(path: &Path, id: Option<&str>) -> Result<()> {
    let (conn, channel, topology, user, queue) = open(path).await?;
    let publish = amqp::confirmed_channel(&conn).await?;
    let waiting = channel
        .queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?
        .message_count();
    // Only what is there now: a retried document that fails again must not loop.
    let messages = fetch(&channel, &queue, waiting as usize).await?;
    let (mut retried, mut kept) = (0usize, 0usize);
    let mut ids: Vec<(String, Option<String>)> = Vec::new();
    for m in &messages {
        let p = &m.delivery.properties;
        let matches = id.is_none_or(|id| p.message_id().as_ref().is_some_and(|m| m.as_str() == id));
        if !matches {
            requeue(&channel, m.delivery.delivery_tag).await?;
            kept += 1;
            continue;
        }
        // Who published it first: `x-exhub-user` only on a message the hub itself wrote
        // (RabbitMQ verified its user_id); on anything else, its own verified user_id.
        let verified = p.user_id().as_ref().map(|u| u.as_str().to_owned());
        let original = if verified.as_deref() == Some(user.as_str()) {
            wire::header_str(p, header::USER)
        } else {
            verified
        };
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_user_id(user.as_str().into());
        if let Some(ct) = p.content_type() {
            props = props.with_content_type(ct.clone());
        }
        if let Some(mid) = p.message_id() {
            props = props.with_message_id(mid.clone());
        }
        if let Some(t) = p.kind() {
            props = props.with_type(t.clone());
        }
        // Always set, empty when unknown: a retried message must never pass for the hub's own.
        props = wire::with_header(props, header::USER, original.as_deref().unwrap_or(""));
        // The sender's signature, when the hub kept it: the hub checks it again.
        if let Some(signature) = wire::header_str(p, exhub_connect::sign::HEADER) {
            props = wire::with_header(props, exhub_connect::sign::HEADER, &signature);
        }
        let confirm = publish
            .basic_publish(
                topology.ingress_exchange().as_str().into(),
                "".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &m.delivery.data,
                props,
            )
            .await?
            .await?;
        if confirm.is_ack() && confirm.take_message().is_none() {
            channel
                .basic_ack(m.delivery.delivery_tag, BasicAckOptions::default())
                .await?;
            retried += 1;
            let mid = p.message_id().as_ref().map(|m| m.to_string()).unwrap_or_default();
            ids.push((mid, original.clone()));
        } else {
            requeue(&channel, m.delivery.delivery_tag).await?;
            kept += 1;
        }
    }
    if retried > 0 {
        let archive = super::open_archive(&load(path)?).await?;
        let record = exhub_hub::archive::AuditEntry::new(
            &super::operator(),
            "dlq-retried",
            format!("{retried} from {queue}"),
            serde_json::json!({ "queue": queue, "documents": ids }),
        );
        archive.audit(&[record]).await?;
        archive.close().await;
    }
    println!("{retried} document(s) sent back through the hub; {kept} left in {queue}");
    let _ = conn.close(200, "retried".into()).await;
    Ok(())
}
