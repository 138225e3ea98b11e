//! Consuming a queue in batches, for the hub and the sinks alike: a [`Subscription`] (connect,
//! declare, prefetch, consume; stop taking and close), and [`next_batch`]: wait for one
//! message, then keep taking what is already there (or arrives within a short linger) up to a
//! count and a byte budget, so that one transaction, one round of confirms and one
//! `ack multiple` cover many messages. And [`tap`]: a queue of one's own on an exchange, for
//! what is only looked at (a subscriber's feed in `exhub tail`, heartbeats in the hub).

use std::time::Duration;

use futures_util::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::amqp::{self, AmqpError};
use crate::publisher::Declare;

/// A server-named queue of this channel's own (exclusive, deleted with its connection, with
/// `args`), bound to `exchange` with `key`, consumed without acknowledgements as `tag`: what is
/// delivered is only looked at, and lost with the connection by design.
pub async fn tap(
    channel: &Channel,
    exchange: &str,
    key: &str,
    args: FieldTable,
    tag: &str,
) -> Result<Consumer, AmqpError> {
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let queue = channel.queue_declare("".into(), options, args).await?;
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consume = BasicConsumeOptions {
        no_ack: true,
        exclusive: true,
        ..Default::default()
    };
    Ok(channel
        .basic_consume(queue.name().clone(), tag.into(), consume, FieldTable::default())
        .await?)
}

/// One consumer of one queue on its own connection.
pub struct Subscription {
    conn: Connection,
    channel: Channel,
    consumer: Consumer,
    tag: String,
}

impl Subscription {
    /// Connects to `url` as `name` (retrying until `cancel`), declares what `declare` says,
    /// sets the prefetch and consumes `queue` (its consumer tag is `name`). A queue not yet
    /// declared fails as NOT_FOUND, a passing failure.
    pub async fn open(
        url: &str,
        name: &str,
        declare: &Declare,
        queue: &str,
        prefetch: u16,
        cancel: &CancellationToken,
    ) -> Result<Subscription, AmqpError> {
        let conn = amqp::connect_with_retry(url, name, cancel).await?;
        let channel = conn.create_channel().await.map_err(AmqpError::from)?;
        declare.on(&channel).await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(AmqpError::from)?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                name.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(AmqpError::from)?;
        Ok(Subscription {
            conn,
            channel,
            consumer,
            tag: name.to_owned(),
        })
    }

    /// The channel (acknowledgements go on it).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The next batch (see [`next_batch`]).
    pub async fn next(
        &mut self,
        limits: BatchLimits,
        cancel: &CancellationToken,
    ) -> Result<Option<Vec<Delivery>>, AmqpError> {
        next_batch(&mut self.consumer, limits, cancel).await
    }

    /// Stops taking messages and closes the connection: what was taken and not acknowledged
    /// goes back to the queue.
    pub async fn close(self, reason: &str) {
        let _ = self
            .channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
            .await;
        let _ = self.conn.close(200, reason.into()).await;
    }
}

/// How big a batch may grow.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Most messages.
    pub messages: usize,
    /// About the most bytes (the message that crosses it is still taken).
    pub bytes: usize,
    /// How long to wait for more once the first message is in.
    pub linger: Duration,
}

/// The next batch: `Ok(None)` when `cancel` fired before a first message came; an error when
/// the consumer broke (the connection or channel closed).
pub async fn next_batch(
    consumer: &mut Consumer,
    limits: BatchLimits,
    cancel: &CancellationToken,
) -> Result<Option<Vec<Delivery>>, AmqpError> {
    let first = tokio::select! {
        biased;
        () = cancel.cancelled() => return Ok(None),
        next = consumer.next() => delivered(next)?,
    };
    let mut bytes = first.data.len();
    let mut batch = vec![first];
    let deadline = Instant::now() + limits.linger;
    while batch.len() < limits.messages && bytes < limits.bytes {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(next) => {
                let d = delivered(next)?;
                bytes += d.data.len();
                batch.push(d);
            }
            Err(_) => break,
        }
    }
    Ok(Some(batch))
}

fn delivered(next: Option<lapin::Result<Delivery>>) -> Result<Delivery, AmqpError> {
    match next {
        Some(Ok(d)) => Ok(d),
        Some(Err(e)) => Err(AmqpError::from(e)),
        None => Err(AmqpError::Broken(lapin::Error::from(lapin::ErrorKind::FutureCompleted))),
    }
}
