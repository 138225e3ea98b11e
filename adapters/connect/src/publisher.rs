//! A confirmed publisher: [`Publisher::publish`] returns only when the broker has confirmed
//! every message of the call. When the connection breaks (a broker restart, a network cut) it
//! reconnects with backoff, re-declares what it publishes to, and republishes exactly the
//! messages not yet confirmed. Duplicates are therefore possible after a failure (the broker may
//! have taken a message whose confirm was lost) and the hub deduplicates on document id.

use futures_util::future::join_all;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Connection};
use tokio_util::sync::CancellationToken;

use crate::amqp::{self, AmqpError, Backoff};
use crate::topology::Topology;

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Exchange to publish to.
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// The message body.
    pub payload: Vec<u8>,
    /// Its properties.
    pub properties: BasicProperties,
}

/// What a publisher declares after each (re)connect, so that its messages are routable.
#[derive(Debug, Clone)]
pub enum Declare {
    /// Nothing (the caller guarantees the topology exists).
    Nothing,
    /// Nothing, but the ingress exchange must exist: checked passively, since a participant (a
    /// source, a sink, `exhub publish`) has no right to declare. Until the hub has declared it,
    /// the check fails as NOT_FOUND and publishing waits and retries.
    Ingress(Topology),
    /// The whole topology with these subscribers (the hub).
    All(Topology, Vec<String>),
}

/// A publisher with confirms and recovery. Not shared between tasks: each task that publishes
/// owns one (one connection and channel each, so one task's failure never stalls another).
pub struct Publisher {
    url: String,
    name: String,
    declare: Declare,
    live: Option<(Connection, Channel)>,
    backoff: Backoff,
}

impl Declare {
    /// Declares (or checks) on `channel` what this says.
    pub async fn on(&self, channel: &Channel) -> Result<(), AmqpError> {
        match self {
            Declare::Nothing => Ok(()),
            Declare::Ingress(t) => t.expect_ingress(channel).await,
            Declare::All(t, subscribers) => t.declare_all(channel, subscribers).await,
        }
    }
}

impl Publisher {
    /// A publisher to the broker at `url`; `name` names its connection; `declare` says what it
    /// declares on every connect. Connects lazily, on the first publish.
    pub fn new(url: impl Into<String>, name: impl Into<String>, declare: Declare) -> Self {
        Publisher {
            url: url.into(),
            name: name.into(),
            declare,
            live: None,
            backoff: Backoff::default(),
        }
    }

    /// Publishes every message and waits until the broker confirmed each one, retrying (with
    /// reconnects) whatever failed, until done, a fatal error, or `cancel`.
    ///
    /// On `Ok`, every message is durably with the broker (persistent messages in durable
    /// queues). On `Err`, some may be and some may not: the caller must not treat any as sent.
    pub async fn publish(&mut self, messages: &[Outgoing], cancel: &CancellationToken) -> Result<(), AmqpError> {
        let mut pending: Vec<&Outgoing> = messages.iter().collect();
        while !pending.is_empty() {
            match self.try_publish(&pending, cancel).await {
                Ok(failed) if failed.is_empty() => {
                    self.backoff.reset();
                    return Ok(());
                }
                Ok(failed) => {
                    tracing::warn!(
                        connection = %self.name,
                        unconfirmed = failed.len(),
                        "broker did not confirm some messages; republishing"
                    );
                    pending = failed.into_iter().map(|i| pending[i]).collect();
                }
                Err(e) if e.is_passing() => {
                    tracing::warn!(connection = %self.name, error = %e, pending = pending.len(), "publishing failed; reconnecting");
                    self.live = None;
                }
                Err(e) => return Err(e),
            }
            self.backoff.wait(cancel).await?;
        }
        Ok(())
    }

    /// One attempt: publishes all of `pending`, then awaits every confirm. Returns the indexes
    /// (into `pending`) of the messages that were nacked or returned.
    async fn try_publish(
        &mut self,
        pending: &[&Outgoing],
        cancel: &CancellationToken,
    ) -> Result<Vec<usize>, AmqpError> {
        let channel = self.channel(cancel).await?;
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let mut confirms = Vec::with_capacity(pending.len());
        for m in pending {
            let confirm = channel
                .basic_publish(
                    m.exchange.as_str().into(),
                    m.routing_key.as_str().into(),
                    options,
                    &m.payload,
                    m.properties.clone(),
                )
                .await?;
            confirms.push(confirm);
        }
        let mut failed = Vec::new();
        for (i, confirmation) in join_all(confirms).await.into_iter().enumerate() {
            let confirmation = confirmation?;
            if confirmation.is_nack() {
                failed.push(i);
            } else if let Some(returned) = confirmation.take_message() {
                tracing::warn!(
                    connection = %self.name,
                    exchange = %returned.delivery.exchange,
                    routing_key = %returned.delivery.routing_key,
                    "message returned as unroutable"
                );
                failed.push(i);
            }
        }
        if !failed.is_empty() {
            // Unroutable usually means a queue went missing: declare again on the next attempt.
            self.live = None;
        }
        Ok(failed)
    }

    /// The live channel, connecting (and declaring) first if there is none.
    async fn channel(&mut self, cancel: &CancellationToken) -> Result<Channel, AmqpError> {
        if let Some((conn, channel)) = &self.live
            && conn.status().connected()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        self.live = None;
        let conn = amqp::connect_with_retry(&self.url, &self.name, cancel).await?;
        let channel = amqp::confirmed_channel(&conn).await?;
        self.declare.on(&channel).await?;
        self.live = Some((conn, channel.clone()));
        Ok(channel)
    }
}
