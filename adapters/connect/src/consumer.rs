//! Taking messages in batches: wait for one, then keep taking what is already there (or arrives
//! within a short linger) up to a count and a byte budget. The hub and the sinks both work this
//! way, so that one transaction, one round of confirms and one `ack multiple` cover many
//! messages.

use std::time::Duration;

use futures_util::StreamExt as _;
use lapin::Consumer;
use lapin::message::Delivery;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::amqp::AmqpError;

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
