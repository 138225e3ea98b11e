//! The exchanges and queues of one exchange (DESIGN §5), their names, and their idempotent
//! declaration. Every participant declares what it uses with the same arguments, so whoever
//! starts first creates it and nobody's declaration contradicts another's.
//!
//! ```text
//! <p>.in  (fanout)  ──▶ <p>.ingress           quorum, delivery limit, dead-letters to <p>.dlq
//! <p>.out (direct, routing key = subscriber) ──▶ <p>.sub.<name>   quorum, delivery limit,
//!                                                                 dead-letters to <p>.dlq.<name>
//! <p>.dlx (direct) ──▶ <p>.dlq, <p>.dlq.<name>   quorum, no limit: what nobody could take
//! <p>.status (fanout) ──▶ each hub process's own exclusive queue: heartbeats (transient)
//! ```
//!
//! Dead-lettering is at-least-once (`x-dead-letter-strategy`, with `x-overflow =
//! reject-publish`), so a message the broker dead-letters is never lost on the way.
//!
//! `<p>.out` routes by subscriber name rather than by doc type: the hub has already decided who
//! gets a document and tailored each copy (mask, encoding) for its one subscriber. A tap such as
//! `exhub tail` binds its own queue with the same key and sees exactly what the subscriber gets.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use crate::amqp::AmqpError;

/// How many times a message may be delivered and returned before RabbitMQ dead-letters it.
pub const DELIVERY_LIMIT: i64 = 10;

/// Names and declarations of one exchange's AMQP resources, all under one prefix (default
/// `exhub`; tests use a random one so that they run side by side on one broker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
}

impl Default for Topology {
    fn default() -> Self {
        Topology::new("exhub")
    }
}

impl Topology {
    /// The topology under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Topology { prefix: prefix.into() }
    }

    /// The prefix of every name.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Where publishers send documents.
    pub fn ingress_exchange(&self) -> String {
        format!("{}.in", self.prefix)
    }

    /// The queue hub workers consume.
    pub fn ingress_queue(&self) -> String {
        format!("{}.ingress", self.prefix)
    }

    /// Where the hub publishes routed documents, routing key = subscriber name.
    pub fn out_exchange(&self) -> String {
        format!("{}.out", self.prefix)
    }

    /// A subscriber's queue.
    pub fn subscriber_queue(&self, subscriber: &str) -> String {
        format!("{}.sub.{subscriber}", self.prefix)
    }

    /// The exchange dead letters go through.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    /// Documents the hub refused, each with `x-exhub-reason` and `x-exhub-detail`.
    pub fn hub_dlq(&self) -> String {
        format!("{}.dlq", self.prefix)
    }

    /// Documents a subscriber could not take.
    pub fn subscriber_dlq(&self, subscriber: &str) -> String {
        format!("{}.dlq.{subscriber}", self.prefix)
    }

    /// Where sources and sinks send their heartbeats ([`crate::status`]); each hub process
    /// binds a queue of its own.
    pub fn status_exchange(&self) -> String {
        format!("{}.status", self.prefix)
    }

    /// The exclusive queue whose holder is the hub process that watches the alerts (it carries
    /// no messages).
    pub fn supervisor_queue(&self) -> String {
        format!("{}.supervisor", self.prefix)
    }

    /// Declares the ingress exchange and queue, and the hub DLQ the queue dead-letters to.
    async fn declare_ingress(&self, channel: &Channel) -> Result<(), AmqpError> {
        self.declare_exchange(channel, &self.dead_letter_exchange(), ExchangeKind::Direct)
            .await?;
        self.declare_dlq(channel, &self.hub_dlq()).await?;
        self.declare_exchange(channel, &self.ingress_exchange(), ExchangeKind::Fanout)
            .await?;
        self.declare_work_queue(channel, &self.ingress_queue(), &self.hub_dlq())
            .await?;
        self.bind(channel, &self.ingress_queue(), &self.ingress_exchange(), "")
            .await
    }

    /// What the hub's own user may do: configure, write and read everything of this topology,
    /// and the server-named exclusive queues of taps (`exhub tail`, `amq.gen-…`).
    pub fn hub_permissions(&self) -> Permissions {
        let all = format!("^({}\\.|amq\\.gen-)", regex_escape(&self.prefix));
        Permissions {
            configure: all.clone(),
            write: all.clone(),
            read: all,
        }
    }

    /// What an organisation's user may do: configure nothing, write only to the ingress and
    /// status exchanges, read only its own subscribers' queues and their DLQs.
    pub fn org_permissions<S: AsRef<str>>(&self, subscribers: &[S]) -> Permissions {
        let read = if subscribers.is_empty() {
            NOTHING.to_owned()
        } else {
            let names: Vec<String> = subscribers.iter().map(|s| regex_escape(s.as_ref())).collect();
            format!("^{}\\.(sub|dlq)\\.({})$", regex_escape(&self.prefix), names.join("|"))
        };
        Permissions {
            configure: NOTHING.to_owned(),
            write: format!(
                "^({}|{})$",
                regex_escape(&self.ingress_exchange()),
                regex_escape(&self.status_exchange())
            ),
            read,
        }
    }

    /// Checks that the ingress exchange exists, without declaring it (a passive declare needs no
    /// permission; participants may not configure anything).
    pub async fn expect_ingress(&self, channel: &Channel) -> Result<(), AmqpError> {
        let options = ExchangeDeclareOptions {
            passive: true,
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                self.ingress_exchange().as_str().into(),
                ExchangeKind::Fanout,
                options,
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// Declares everything: ingress, the out exchange, a queue and DLQ per subscriber, and the
    /// status exchange.
    pub async fn declare_all<S: AsRef<str>>(&self, channel: &Channel, subscribers: &[S]) -> Result<(), AmqpError> {
        self.declare_ingress(channel).await?;
        self.declare_exchange(channel, &self.status_exchange(), ExchangeKind::Fanout)
            .await?;
        self.declare_exchange(channel, &self.out_exchange(), ExchangeKind::Direct)
            .await?;
        for name in subscribers {
            let name = name.as_ref();
            let dlq = self.subscriber_dlq(name);
            self.declare_dlq(channel, &dlq).await?;
            let queue = self.subscriber_queue(name);
            self.declare_work_queue(channel, &queue, &dlq).await?;
            self.bind(channel, &queue, &self.out_exchange(), name).await?;
        }
        Ok(())
    }

    /// Deletes every queue and exchange of this topology (for tests and retired exchanges).
    pub async fn delete_all<S: AsRef<str>>(&self, channel: &Channel, subscribers: &[S]) -> Result<(), AmqpError> {
        let mut queues = vec![self.ingress_queue(), self.hub_dlq()];
        for name in subscribers {
            queues.push(self.subscriber_queue(name.as_ref()));
            queues.push(self.subscriber_dlq(name.as_ref()));
        }
        for queue in queues {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        for exchange in [
            self.ingress_exchange(),
            self.out_exchange(),
            self.dead_letter_exchange(),
            self.status_exchange(),
        ] {
            channel
                .exchange_delete(exchange.as_str().into(), Default::default())
                .await?;
        }
        Ok(())
    }

    async fn declare_exchange(&self, channel: &Channel, name: &str, kind: ExchangeKind) -> Result<(), AmqpError> {
        let options = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(name.into(), kind, options, FieldTable::default())
            .await?;
        Ok(())
    }

    /// A quorum queue with a delivery limit whose dead letters go, at least once, to `dlq`.
    async fn declare_work_queue(&self, channel: &Channel, name: &str, dlq: &str) -> Result<(), AmqpError> {
        let mut args = quorum();
        args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(DELIVERY_LIMIT));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_letter_exchange().as_str().into()),
        );
        args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(dlq.into()));
        args.insert(
            "x-dead-letter-strategy".into(),
            AMQPValue::LongString("at-least-once".into()),
        );
        args.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
        declare_queue(channel, name, args).await
    }

    /// A quorum queue without a delivery limit (browsing it must not wear its messages out),
    /// bound to the dead-letter exchange under its own name.
    async fn declare_dlq(&self, channel: &Channel, name: &str) -> Result<(), AmqpError> {
        declare_queue(channel, name, quorum()).await?;
        self.bind(channel, name, &self.dead_letter_exchange(), name).await
    }

    async fn bind(&self, channel: &Channel, queue: &str, exchange: &str, key: &str) -> Result<(), AmqpError> {
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }
}

/// A user's RabbitMQ permissions in a vhost: regular expressions over resource names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Resources the user may declare, delete or bind to.
    pub configure: String,
    /// Exchanges it may publish to (and queues it may bind).
    pub write: String,
    /// Queues it may consume from (and exchanges it may bind from).
    pub read: String,
}

/// The permission regex that matches no resource name.
pub const NOTHING: &str = "^$";

/// `text` with every regular-expression metacharacter escaped.
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        if "\\.^$|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    args
}

async fn declare_queue(channel: &Channel, name: &str, args: FieldTable) -> Result<(), AmqpError> {
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel.queue_declare(name.into(), options, args).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_org_may_write_the_ingress_exchange_and_read_its_own_queues_only() {
        let t = Topology::new("exhub");
        let p = t.org_permissions(&["tax-mirror", "a.b"]);
        assert_eq!(p.configure, "^$");
        assert_eq!(p.write, "^(exhub\\.in|exhub\\.status)$");
        assert_eq!(p.read, "^exhub\\.(sub|dlq)\\.(tax-mirror|a\\.b)$");
        assert_eq!(t.org_permissions::<&str>(&[]).read, "^$");
        assert_eq!(t.hub_permissions().configure, "^(exhub\\.|amq\\.gen-)");
    }
}
